//! The overlay's data path on one core, against the raw AEAD it is built on, for both
//! ciphers, measured in the same run:
//!
//! - overlay: a 1400-byte Ethernet frame enters network `a` from its local port
//!   (`handle_local_frame`), is switched by MAC (unicast to a learned address, so the MAC
//!   tables are really looked up), sealed as it leaves (`poll_transmit`), then opened,
//!   switched and handed to `b`'s local port (`handle_datagram`);
//! - raw: ring's AEAD seals the same 1400 bytes in place behind a 16-byte header (the
//!   associated data, as in a data message) and opens them again, with the same
//!   algorithm and key size and nothing else.
//!
//! Both report gigabits of frame payload per second of one core: time is the thread's CPU
//! time, so other processes on a shared machine do not count against either. Many short
//! repetitions of the two alternate, so whatever else changes during the run (cache
//! pollution by neighbours, clock speed) touches both alike. Printed: the median rate of
//! each, and the median over repetitions of the ratio of one to the other measured side
//! by side. Run: `cargo bench -p vpn-core --bench datapath`. `DATAPATH_REPS` sets the
//! number of repetitions (default 41).
//!
//! A second table times the switch alone ([`Switch::forward`], CPU nanoseconds per frame,
//! median over the same number of repetitions) for the frames it meets most: unicast to
//! and from a peer, a tagged frame, and an ARP request it answers. Its header parsing is a
//! few nanoseconds of the overlay's microsecond, too little for the first table to show.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ring::aead::{AES_256_GCM, Aad, Algorithm, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use vpn_core::sim::{Pair, frames};
use vpn_core::switch::{Forward, Switch};
use vpn_core::{Cipher, MacAddr, PeerId, Port, SwitchConfig};

#[path = "support/cpu_time.rs"]
mod cpu_time;
use cpu_time::cpu_time;

const FRAME_LEN: usize = 1400;
const HEADER_LEN: usize = 16;
const TAG_LEN: usize = 16;
/// Packets per repetition: long enough to dwarf the clock's cost and resolution, short
/// enough to repeat often.
const PACKETS: usize = 5_000;

const MAC_A: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 0x0a]);
const MAC_B: MacAddr = MacAddr([0x52, 0x54, 0, 0, 1, 0x0b]);

fn main() {
    let reps = std::env::var("DATAPATH_REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(41usize)
        .max(1);
    println!(
        "data path, one core: {FRAME_LEN}-byte frames, {PACKETS} packets x {reps} repetitions, median"
    );
    println!(
        "{:<18} {:>15} {:>15} {:>13} {:>13} {:>8}",
        "cipher", "overlay Gbit/s", "raw AEAD Gbit/s", "overlay ns/pkt", "raw ns/pkt", "ratio"
    );
    for (cipher, algorithm) in [
        (Cipher::Aes256Gcm, &AES_256_GCM),
        (Cipher::ChaCha20Poly1305, &CHACHA20_POLY1305),
    ] {
        let mut overlay = Overlay::new(cipher);
        let mut raw = RawAead::new(algorithm);
        // Warm up caches, the frame pool and the CPU's clock.
        overlay.run(PACKETS);
        raw.run(PACKETS);
        let mut overlay_times = Vec::with_capacity(reps);
        let mut raw_times = Vec::with_capacity(reps);
        for _ in 0..reps {
            overlay_times.push(overlay.run(PACKETS));
            raw_times.push(raw.run(PACKETS));
        }
        let mut ratios: Vec<f64> = overlay_times
            .iter()
            .zip(&raw_times)
            .map(|(o, r)| r.as_secs_f64() / o.as_secs_f64())
            .collect();
        ratios.sort_by(f64::total_cmp);
        let ratio = ratios[ratios.len() / 2];
        let o = median(&mut overlay_times);
        let r = median(&mut raw_times);
        let ns = |d: Duration| d.as_nanos() as f64 / PACKETS as f64;
        println!(
            "{:<18} {:>15.2} {:>15.2} {:>13.0} {:>13.0} {:>7.1}%",
            cipher.name(),
            gbits(o),
            gbits(r),
            ns(o),
            ns(r),
            100.0 * ratio
        );
    }
    println!();
    switch_alone(reps);
}

/// Frames [`Switch::forward`] is timed on, per repetition of each.
const SWITCH_FRAMES: usize = 100_000;

/// The switch's own cost per frame, for the kinds of frame it sees most.
fn switch_alone(reps: usize) {
    const IP_A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const IP_B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    let now = Instant::now();
    let mut switch = Switch::new(SwitchConfig::default(), [1, 2, 3, 4]);
    let peer = Port::Peer(PeerId(1));
    // A is on the local bridge; B, at the peer, announced 10.0.0.2 by asking for A.
    switch.forward(now, Port::Local, &frames::arp_request((MAC_A, IP_A), IP_B));
    switch.forward(now, peer, &frames::arp_request((MAC_B, IP_B), IP_A));
    let payload: Vec<u8> = (0..FRAME_LEN - 14).map(|i| i as u8).collect();
    let mut tagged = vec![0x00, 0x07, 0x08, 0x00];
    tagged.extend_from_slice(&payload[4..]);
    let case = |name, ingress, frame, expected| SwitchCase {
        name,
        ingress,
        frame,
        expected,
    };
    let cases = [
        case(
            "unicast to a peer",
            Port::Local,
            frames::ethernet(MAC_B, MAC_A, 0x0800, &payload),
            |f| *f == Forward::Peer(PeerId(1)),
        ),
        case(
            "unicast from a peer",
            peer,
            frames::ethernet(MAC_A, MAC_B, 0x0800, &payload),
            |f| *f == Forward::Local,
        ),
        case(
            "802.1Q, to a peer",
            Port::Local,
            frames::ethernet(MAC_B, MAC_A, 0x8100, &tagged),
            |f| *f == Forward::Peer(PeerId(1)),
        ),
        case(
            "ARP, answered",
            Port::Local,
            frames::arp_request((MAC_A, IP_A), IP_B),
            |f| matches!(f, Forward::ArpReply(_)),
        ),
    ];
    println!("switch alone, one core: {SWITCH_FRAMES} frames x {reps} repetitions, median");
    println!("{:<20} {:>10}", "frame", "ns/frame");
    let mut times = vec![Vec::with_capacity(reps); cases.len()];
    for c in &cases {
        let verdict = switch.forward(now, c.ingress, &c.frame);
        assert!((c.expected)(&verdict), "{}: verdict {verdict:?}", c.name);
    }
    for _ in 0..reps {
        for (c, t) in cases.iter().zip(&mut times) {
            let start = cpu_time();
            for _ in 0..SWITCH_FRAMES {
                black_box(switch.forward(now, c.ingress, black_box(&c.frame)));
            }
            t.push(cpu_time() - start);
        }
    }
    for (c, t) in cases.iter().zip(&mut times) {
        let ns = median(t).as_nanos() as f64 / SWITCH_FRAMES as f64;
        println!("{:<20} {ns:>10.1}", c.name);
    }
}

/// One kind of frame for [`switch_alone`], and the verdict it must get.
struct SwitchCase {
    name: &'static str,
    ingress: Port,
    frame: Vec<u8>,
    expected: fn(&Forward) -> bool,
}

fn gbits(d: Duration) -> f64 {
    (PACKETS * FRAME_LEN * 8) as f64 / d.as_secs_f64() / 1e9
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// Two connected networks, each side's host learned by the other's switch.
struct Overlay {
    pair: Pair,
    frame: Vec<u8>,
    buf: Vec<u8>,
}

impl Overlay {
    fn new(cipher: Cipher) -> Overlay {
        let mut pair = Pair::new(|_, config| config.cipher = cipher);
        pair.learn_macs(MAC_A, MAC_B);
        let payload: Vec<u8> = (0..FRAME_LEN - 14).map(|i| i as u8).collect();
        let frame = frames::ethernet(MAC_B, MAC_A, 0x0800, &payload);
        let buf = vec![0u8; pair.a.max_datagram_len()];
        let mut overlay = Overlay { pair, frame, buf };
        // The frame must arrive whole, by unicast, or the measurement means nothing.
        let p = &mut overlay.pair;
        p.a.handle_local_frame(p.now, &overlay.frame);
        let t = p.a.poll_transmit(p.now, &mut overlay.buf).expect("sealed");
        let got =
            p.b.handle_datagram(p.now, p.addr_a, &mut overlay.buf[..t.len]);
        assert_eq!(got, Ok(Some(&overlay.frame[..])));
        assert_eq!(
            p.a.poll_transmit(p.now, &mut overlay.buf),
            None,
            "not unicast"
        );
        overlay
    }

    fn run(&mut self, packets: usize) -> Duration {
        let p = &mut self.pair;
        let (now, from) = (p.now, p.addr_a);
        let start = cpu_time();
        for _ in 0..packets {
            p.a.handle_local_frame(now, black_box(&self.frame));
            let t = p.a.poll_transmit(now, &mut self.buf).expect("sealed");
            let frame = p.b.handle_datagram(now, from, &mut self.buf[..t.len]);
            black_box(frame.expect("opened").expect("delivered"));
        }
        cpu_time() - start
    }
}

/// Seal and open in place with ring alone.
struct RawAead {
    key: LessSafeKey,
    counter: u64,
    message: Vec<u8>,
}

impl RawAead {
    fn new(algorithm: &'static Algorithm) -> RawAead {
        let key = LessSafeKey::new(UnboundKey::new(algorithm, &[7u8; 32]).expect("32-byte key"));
        let mut message = vec![0u8; HEADER_LEN + FRAME_LEN + TAG_LEN];
        for (i, b) in message.iter_mut().enumerate() {
            *b = i as u8;
        }
        RawAead {
            key,
            counter: 0,
            message,
        }
    }

    fn nonce(counter: u64) -> Nonce {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&counter.to_be_bytes());
        Nonce::assume_unique_for_key(n)
    }

    fn run(&mut self, packets: usize) -> Duration {
        let start = cpu_time();
        for _ in 0..packets {
            self.counter += 1;
            let (header, rest) = self.message.split_at_mut(HEADER_LEN);
            let (payload, tag) = rest.split_at_mut(FRAME_LEN);
            let sealed = self
                .key
                .seal_in_place_separate_tag(Self::nonce(self.counter), Aad::from(&*header), payload)
                .expect("sealed");
            tag.copy_from_slice(sealed.as_ref());
            let opened = self
                .key
                .open_in_place(Self::nonce(self.counter), Aad::from(&*header), rest)
                .expect("opened");
            black_box(opened);
        }
        cpu_time() - start
    }
}
