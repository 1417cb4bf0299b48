//! The TAP offloads on one core, per segment: what [`Coalescer`] spends joining the
//! in-order segments of one flow that arrive from the overlay into a GSO super-frame for
//! the TAP (parsing each, verifying its checksum, appending it), and what [`Segmenter`]
//! spends cutting a TSO super-frame read from the TAP into wire frames (copying,
//! rewriting headers, computing checksums).
//!
//! Time is the thread's CPU time, so other processes on a shared machine do not count.
//! Many short repetitions of the cases alternate, so whatever else changes during the run
//! touches them alike. Printed: the median CPU nanoseconds per segment (or datagram) of
//! each case. Run: `cargo bench -p vpn-daemon --bench offload`; `OFFLOAD_REPS` sets the
//! number of repetitions (default 41). `vpnd`'s whole data path is measured by
//! `bench/overlay/cpu-ab` instead; this isolates the part a change to header parsing
//! touches, which is too small a share of the whole for that to show.

use std::hint::black_box;

use etherparse::{PacketBuilder, TcpOptionElement};

#[path = "../../vpn-core/benches/support/cpu_time.rs"]
mod cpu_time;
use cpu_time::cpu_time;
use vpn_daemon::offload::{
    Coalescer, F_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6, MAX_SUPER_FRAME, SegmentSink, Segmenter,
    Verdict, VnetHdr,
};

/// Linux's TCP payload per segment with timestamps on a 1500-byte path.
const MSS: usize = 1448;
/// Segments in one flow's run: as many as one super-frame holds.
const SEGMENTS: usize = 44;
/// UDP payload per datagram, and datagrams per run (the kernel's limit per GSO frame).
const DATAGRAM: usize = 1000;
const DATAGRAMS: usize = 64;
/// Runs per case per repetition.
const RUNS: usize = 200;

const MAC_A: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x0a];
const MAC_B: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x0b];
const IPV4_A: [u8; 4] = [10, 99, 0, 1];
const IPV4_B: [u8; 4] = [10, 99, 0, 2];
const IPV6_A: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const IPV6_B: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

fn main() {
    let reps = std::env::var("OFFLOAD_REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(41usize)
        .max(1);
    let mut cases: Vec<Box<dyn Case>> = vec![
        Box::new(Coalesce::tcp(false)),
        Box::new(Coalesce::tcp(true)),
        Box::new(Coalesce::udp()),
        Box::new(Segment::tcp(false)),
        Box::new(Segment::tcp(true)),
    ];
    println!("TAP offloads, one core: {RUNS} runs x {reps} repetitions, median CPU ns per segment");
    println!("{:<44} {:>10}", "case", "ns/segment");
    let mut times = vec![Vec::with_capacity(reps); cases.len()];
    for case in &mut cases {
        case.run(); // warm up, and check the case does what it says
    }
    for _ in 0..reps {
        for (case, t) in cases.iter_mut().zip(&mut times) {
            let start = cpu_time();
            for _ in 0..RUNS {
                case.run();
            }
            t.push(cpu_time() - start);
        }
    }
    for (case, t) in cases.iter().zip(&mut times) {
        t.sort();
        let ns = t[t.len() / 2].as_nanos() as f64 / (RUNS * case.segments()) as f64;
        println!("{:<44} {ns:>10.1}", case.name());
    }
}

trait Case {
    fn name(&self) -> String;
    /// Segments (or datagrams) one run handles.
    fn segments(&self) -> usize;
    fn run(&mut self);
}

/// One TCP frame of the benchmark's flow (timestamps on, as Linux sends them).
fn tcp_frame(v6: bool, seq: u32, psh: bool, payload: &[u8]) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(MAC_A, MAC_B);
    let builder = if v6 {
        builder.ipv6(IPV6_A, IPV6_B, 64)
    } else {
        builder.ipv4(IPV4_A, IPV4_B, 64)
    };
    let builder = builder.tcp(40000, 5201, seq, 502).ack(7);
    let builder = if psh { builder.psh() } else { builder };
    let builder = builder
        .options(&[
            TcpOptionElement::Noop,
            TcpOptionElement::Noop,
            TcpOptionElement::Timestamp(1, 2),
        ])
        .expect("12 bytes of options");
    let mut frame = Vec::new();
    builder.write(&mut frame, payload).expect("written");
    frame
}

/// A run of one flow's in-order segments through a coalescer: one super-frame written.
struct Coalesce {
    name: String,
    frames: Vec<Vec<u8>>,
    coalescer: Coalescer,
}

impl Coalesce {
    fn tcp(v6: bool) -> Coalesce {
        let frames = (0..SEGMENTS)
            .map(|i| {
                let seq = 1000 + (i * MSS) as u32;
                tcp_frame(v6, seq, false, &vec![i as u8; MSS])
            })
            .collect();
        Coalesce {
            name: format!(
                "coalesce TCP/{}, {SEGMENTS} x {MSS} B",
                if v6 { "IPv6" } else { "IPv4" }
            ),
            frames,
            coalescer: Coalescer::new(),
        }
    }

    fn udp() -> Coalesce {
        let frames = (0..DATAGRAMS)
            .map(|i| {
                let mut frame = Vec::new();
                PacketBuilder::ethernet2(MAC_A, MAC_B)
                    .ipv4(IPV4_A, IPV4_B, 64)
                    .udp(40000, 5201)
                    .write(&mut frame, &vec![i as u8; DATAGRAM])
                    .expect("written");
                frame
            })
            .collect();
        Coalesce {
            name: format!("coalesce UDP/IPv4, {DATAGRAMS} x {DATAGRAM} B"),
            frames,
            coalescer: Coalescer::new(),
        }
    }
}

impl Case for Coalesce {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn segments(&self) -> usize {
        self.frames.len()
    }

    fn run(&mut self) {
        let mut written = 0;
        let mut write = |f: &[u8]| {
            black_box(f);
            written += 1;
        };
        for frame in &self.frames {
            let verdict = self.coalescer.push(black_box(frame), &mut write);
            assert_eq!(verdict, Verdict::Held, "{}: not coalesced", self.name);
        }
        self.coalescer.flush(&mut write);
        assert_eq!(written, 1, "{}: not one super-frame", self.name);
    }
}

/// One TSO super-frame cut into wire frames.
struct Segment {
    name: String,
    hdr: VnetHdr,
    frame: Vec<u8>,
    segmenter: Segmenter,
    sink: Discard,
}

impl Segment {
    fn tcp(v6: bool) -> Segment {
        let payload: Vec<u8> = (0..SEGMENTS * MSS).map(|i| i as u8).collect();
        let frame = tcp_frame(v6, 1000, true, &payload);
        let l4 = 14 + if v6 { 40 } else { 20 };
        Segment {
            name: format!(
                "segment TSO TCP/{}, {SEGMENTS} x {MSS} B",
                if v6 { "IPv6" } else { "IPv4" }
            ),
            hdr: VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: if v6 { GSO_TCPV6 } else { GSO_TCPV4 },
                hdr_len: (l4 + 32) as u16,
                gso_size: MSS as u16,
                csum_start: l4 as u16,
                csum_offset: 16,
            },
            frame,
            segmenter: Segmenter::new(),
            sink: Discard {
                buf: vec![0; MAX_SUPER_FRAME],
            },
        }
    }
}

impl Case for Segment {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn segments(&self) -> usize {
        SEGMENTS
    }

    fn run(&mut self) {
        let made = self
            .segmenter
            .split(&self.hdr, black_box(&self.frame), &mut self.sink)
            .expect("segmented");
        assert_eq!(made, SEGMENTS, "{}", self.name);
    }
}

/// Builds each wire frame in one buffer and lets it go.
struct Discard {
    buf: Vec<u8>,
}

impl SegmentSink for Discard {
    fn room(&mut self, len: usize) -> &mut [u8] {
        &mut self.buf[..len]
    }

    fn done(&mut self, len: usize) {
        black_box(&self.buf[..len]);
    }
}
