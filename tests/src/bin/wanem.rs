//! `wanem`: a transparent userspace WAN emulator for one Ethernet link.
//!
//! Run inside a network namespace that holds two interfaces, it forwards every frame
//! received on one to the other through AF_PACKET sockets, with per-direction delay,
//! jitter, loss, duplication, reordering, a rate-limited bottleneck queue and an outage
//! switch (the engine is `site_tests::wanem::pipeline`). Hosts on either side keep their
//! real addresses and see a plain L2 link. A Unix socket takes control requests at run
//! time (`site_tests::wanem::proto`). It never routes, bridges or answers anything
//! itself, and it never changes the interfaces' configuration: the caller brings them up
//! and switches offloads off (see docs/wanem.md, "Offloads").
//!
//! Threads: one per direction (read one socket, schedule, write the other) and one for
//! the control socket. Each direction's pipeline sits behind a mutex that the control
//! thread takes only for a request.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use site_tests::wanem::pipeline::Pipeline;
use site_tests::wanem::proto::{
    Direction, LinkConfig, LinkParams, LinkStats, Request, Response, apply_partial,
};

const USAGE: &str = "\
usage: wanem --a IFACE --b IFACE --control SOCKET [--seed N] [impairments]
       wanem ctl SOCKET 'JSON REQUEST'

Forwards Ethernet frames between IFACE a and IFACE b (run it in the namespace that holds
both) with per-direction impairments, controlled at run time through SOCKET.

impairments (applied to both directions at start; change them later over SOCKET):
  --delay-ms F  --jitter-ms F  --loss P  --duplicate P  --reorder P
  --reorder-delay-ms F  --rate-mbit F  --queue-bytes N  --outage

ctl sends one request and prints the answer, e.g.
  wanem ctl /run/wanem.sock '{\"cmd\":\"stats\"}'
  wanem ctl /run/wanem.sock '{\"cmd\":\"set\",\"dir\":\"a_to_b\",\"params\":{\"delay_us\":10000}}'
See docs/wanem.md for the protocol.";

// Linux uapi constants (linux/if_packet.h, linux/if_ether.h, linux/virtio_net.h).
const ETH_P_ALL: u16 = 0x0003;
const SOL_PACKET: libc::c_int = 263;
const PACKET_ADD_MEMBERSHIP: libc::c_int = 1;
const PACKET_MR_PROMISC: libc::c_ushort = 1;
const PACKET_STATISTICS: libc::c_int = 6;
const PACKET_VNET_HDR: libc::c_int = 15;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
const PACKET_OUTGOING: u8 = 4;
const VNET_HDR_LEN: usize = 10;
const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
/// Receive buffer: the vnet header plus the largest frame a packet socket can carry, so
/// an oversize frame is seen whole (and counted), never truncated.
const RX_BUF: usize = VNET_HDR_LEN + 65_536;
/// Frames read per wake-up before the scheduler gets a turn.
const RX_BATCH: usize = 64;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = if args.first().map(String::as_str) == Some("ctl") {
        ctl(&args[1..])
    } else {
        Config::parse(&args).and_then(run)
    };
    if let Err(e) = result {
        eprintln!("wanem: {e}");
        std::process::exit(2);
    }
}

struct Config {
    a: String,
    b: String,
    control: PathBuf,
    seed: u64,
    params: LinkParams,
}

impl Config {
    fn parse(args: &[String]) -> Result<Config, String> {
        let mut a = None;
        let mut b = None;
        let mut control = None;
        let mut seed = 0;
        let mut p = LinkParams::default();
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            if flag == "--help" || flag == "-h" {
                println!("{USAGE}");
                std::process::exit(0);
            }
            if flag == "--outage" {
                p.outage = true;
                continue;
            }
            let value = it
                .next()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
            let num = |v: &str| -> Result<f64, String> {
                v.parse::<f64>()
                    .map_err(|_| format!("{flag}: not a number: {v:?}"))
            };
            let ms = |v: &str| -> Result<Duration, String> {
                Ok(Duration::from_secs_f64(num(v)?.max(0.0) / 1000.0))
            };
            match flag.as_str() {
                "--a" => a = Some(value.clone()),
                "--b" => b = Some(value.clone()),
                "--control" => control = Some(PathBuf::from(value)),
                "--seed" => {
                    seed = value
                        .parse()
                        .map_err(|_| format!("--seed: not an integer: {value:?}"))?
                }
                "--delay-ms" => p.delay = ms(value)?,
                "--jitter-ms" => p.jitter = ms(value)?,
                "--reorder-delay-ms" => p.reorder_delay = ms(value)?,
                "--loss" => p.loss = num(value)?,
                "--duplicate" => p.duplicate = num(value)?,
                "--reorder" => p.reorder = num(value)?,
                "--rate-mbit" => p.rate_bps = (num(value)? * 1e6) as u64,
                "--queue-bytes" => p.queue_bytes = num(value)? as u64,
                _ => return Err(format!("unknown option {flag}\n{USAGE}")),
            }
        }
        p.validate()?;
        let missing = |what| format!("{what} is required\n{USAGE}");
        Ok(Config {
            a: a.ok_or_else(|| missing("--a"))?,
            b: b.ok_or_else(|| missing("--b"))?,
            control: control.ok_or_else(|| missing("--control"))?,
            seed,
            params: p,
        })
    }
}

fn ctl(args: &[String]) -> Result<(), String> {
    let [socket, request] = args else {
        return Err(format!("ctl needs SOCKET and a JSON request\n{USAGE}"));
    };
    let mut stream = UnixStream::connect(socket).map_err(|e| format!("connect {socket}: {e}"))?;
    stream
        .write_all(format!("{}\n", request.trim()).as_bytes())
        .map_err(|e| format!("write {socket}: {e}"))?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .map_err(|e| format!("read {socket}: {e}"))?;
    print!("{answer}");
    Ok(())
}

type Shared = Arc<[Mutex<Pipeline<Vec<u8>>>; 2]>;

fn run(cfg: Config) -> Result<(), String> {
    // Wake-ups at the requested instant, not up to 50 us later.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    let a_rx = PacketSocket::open(&cfg.a, true)?;
    let b_rx = PacketSocket::open(&cfg.b, true)?;
    let a_tx = PacketSocket::open(&cfg.a, false)?;
    let b_tx = PacketSocket::open(&cfg.b, false)?;
    let shared: Shared = Arc::new([
        Mutex::new(Pipeline::new(
            cfg.params,
            seed_for(cfg.seed, Direction::AToB),
        )),
        Mutex::new(Pipeline::new(
            cfg.params,
            seed_for(cfg.seed, Direction::BToA),
        )),
    ]);
    eprintln!(
        "wanem: forwarding {} (mtu {}) <-> {} (mtu {}), seed {}, params {:?}",
        cfg.a, a_rx.mtu, cfg.b, b_rx.mtu, cfg.seed, cfg.params
    );
    for (dir, rx, tx) in [(Direction::AToB, a_rx, b_tx), (Direction::BToA, b_rx, a_tx)] {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name(format!("wanem-{dir:?}"))
            .spawn(move || forward(dir, rx, tx, &shared[dir.index()]))
            .map_err(|e| format!("spawn thread: {e}"))?;
    }
    // The control socket opens last: a client that can connect finds the link running.
    let _ = std::fs::remove_file(&cfg.control);
    let listener = UnixListener::bind(&cfg.control)
        .map_err(|e| format!("bind control socket {}: {e}", cfg.control.display()))?;
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let shared = shared.clone();
        std::thread::spawn(move || serve(conn, &shared));
    }
    Ok(())
}

fn seed_for(seed: u64, dir: Direction) -> u64 {
    seed.wrapping_mul(2).wrapping_add(dir.index() as u64)
}

fn serve(conn: UnixStream, shared: &Shared) {
    let mut writer = match conn.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    for line in BufReader::new(conn).lines() {
        let Ok(line) = line else { return };
        if line.trim().is_empty() {
            continue;
        }
        let resp = match serde_json::from_str::<Request>(&line) {
            Ok(req) => handle(req, shared),
            Err(e) => Response::error(format!("bad request {line:?}: {e}")),
        };
        let mut out = serde_json::to_string(&resp).expect("responses serialize");
        out.push('\n');
        if writer.write_all(out.as_bytes()).is_err() {
            return;
        }
    }
}

fn handle(req: Request, shared: &Shared) -> Response {
    let lock = |d: Direction| shared[d.index()].lock().expect("pipeline lock");
    let config = || LinkConfig {
        a_to_b: *lock(Direction::AToB).params(),
        b_to_a: *lock(Direction::BToA).params(),
    };
    match req {
        Request::Get => Response {
            ok: true,
            params: Some(config()),
            ..Response::default()
        },
        Request::Set { dir, params } => {
            // Validate against every direction first so a bad request changes nothing.
            let mut new = Vec::new();
            for d in Direction::ALL.into_iter().filter(|d| dir.contains(*d)) {
                match apply_partial(lock(d).params(), &params) {
                    Ok(p) => new.push((d, p)),
                    Err(e) => return Response::error(e),
                }
            }
            for (d, p) in new {
                lock(d).set_params(p);
            }
            Response {
                ok: true,
                params: Some(config()),
                ..Response::default()
            }
        }
        Request::Outage { dir, on } => {
            for d in Direction::ALL.into_iter().filter(|d| dir.contains(*d)) {
                let mut pipe = lock(d);
                let mut p = *pipe.params();
                p.outage = on;
                pipe.set_params(p);
            }
            Response {
                ok: true,
                params: Some(config()),
                ..Response::default()
            }
        }
        Request::Stats => Response {
            ok: true,
            stats: Some(LinkStats {
                a_to_b: lock(Direction::AToB).stats(),
                b_to_a: lock(Direction::BToA).stats(),
            }),
            ..Response::default()
        },
        Request::Reset => {
            for d in Direction::ALL {
                lock(d).reset_stats();
            }
            Response {
                ok: true,
                ..Response::default()
            }
        }
        Request::Reseed { seed } => {
            for d in Direction::ALL {
                lock(d).reseed(seed_for(seed, d));
            }
            Response {
                ok: true,
                ..Response::default()
            }
        }
    }
}

/// The forwarding loop of one direction: wait for a frame or the next deadline, read a
/// batch, hand it to the pipeline, write whatever is due.
fn forward(dir: Direction, rx: PacketSocket, tx: PacketSocket, pipe: &Mutex<Pipeline<Vec<u8>>>) {
    set_priority(dir);
    let mut buf = vec![0u8; RX_BUF];
    let mut pool: Vec<Vec<u8>> = Vec::new();
    // Largest frame the egress takes: MTU + Ethernet header (+4 if 802.1Q tagged).
    let max_len = tx.mtu + 14;
    let mut warned_gso = false;
    let mut next_stats = Instant::now();
    loop {
        let deadline = pipe.lock().expect("pipeline lock").poll_timeout();
        if rx.wait_readable(deadline) {
            // An error on the socket (interface down or gone). Never spin on it, at
            // real-time priority least of all; a vanished interface ends the emulator.
            rx.check_error(dir);
        }
        let mut pipe = pipe.lock().expect("pipeline lock");
        for _ in 0..RX_BATCH {
            let Some(n) = rx.recv(&mut buf) else { break };
            let now = Instant::now();
            if n < VNET_HDR_LEN {
                continue;
            }
            let frame_len = n - VNET_HDR_LEN;
            if n > buf.len() {
                pipe.handle_oversize(frame_len);
                continue;
            }
            let hdr = &buf[..VNET_HDR_LEN];
            let (flags, gso_type) = (hdr[0], hdr[1]);
            if gso_type != VIRTIO_NET_HDR_GSO_NONE {
                // A super-frame from a sender with offloads on: forwarded whole with its
                // header, the kernel segments it on the way out.
                pipe.stats_mut().gso_frames += 1;
                if !warned_gso {
                    warned_gso = true;
                    eprintln!(
                        "wanem {dir:?}: GSO super-frame of {frame_len} bytes: the sender has \
                         segmentation offloads on; impairments then apply per super-frame \
                         (ethtool -K IFACE tso off gso off)"
                    );
                }
            } else {
                if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
                    let start = u16::from_le_bytes([hdr[6], hdr[7]]) as usize;
                    let offset = u16::from_le_bytes([hdr[8], hdr[9]]) as usize;
                    if complete_checksum(&mut buf[VNET_HDR_LEN..n], start, offset) {
                        buf[..VNET_HDR_LEN].fill(0);
                        pipe.stats_mut().csum_completed += 1;
                    }
                }
                let tagged = frame_len >= 16 && buf[VNET_HDR_LEN + 12..][..2] == [0x81, 0x00];
                if frame_len > max_len + if tagged { 4 } else { 0 } {
                    pipe.handle_oversize(frame_len);
                    continue;
                }
            }
            let mut frame = pool.pop().unwrap_or_default();
            frame.clear();
            frame.extend_from_slice(&buf[..n]);
            pipe.handle_frame(frame, frame_len, now);
        }
        let now = Instant::now();
        while let Some(due) = pipe.poll_transmit(now) {
            if !tx.send(&due.frame) {
                pipe.send_failed(due.len);
            } else if is_udp(&due.frame[VNET_HDR_LEN.min(due.frame.len())..]) {
                let s = pipe.stats_mut();
                s.tx_udp_frames += 1;
                s.tx_udp_bytes += due.len as u64;
            }
            if pool.len() < 1024 && due.frame.capacity() <= 4096 {
                pool.push(due.frame);
            }
        }
        if now >= next_stats {
            next_stats = now + Duration::from_millis(200);
            pipe.stats_mut().kernel_drops += rx.take_kernel_drops();
        }
    }
}

/// Whether an Ethernet frame (802.1Q tag or not) carries UDP over IPv4 or IPv6.
fn is_udp(frame: &[u8]) -> bool {
    let (ethertype, l3) = match frame.get(12..14) {
        Some([0x81, 0x00]) => (frame.get(16..18), 18),
        t => (t, 14),
    };
    match ethertype {
        Some([0x08, 0x00]) => frame.get(l3 + 9) == Some(&17),
        Some([0x86, 0xdd]) => frame.get(l3 + 6) == Some(&17),
        _ => false,
    }
}

/// Frames must leave on time even while the machine is busy compiling. `WANEM_PRIORITY`:
/// `rt` (SCHED_FIFO 10, the default: measured under load it keeps a 20 ms RTT within
/// 0.1 ms where nice -20 is off by several ms), `nice` (nice -20) or `normal`. The loop
/// blocks in ppoll whenever it is idle, and the kernel's RT throttling leaves others 5 %.
fn set_priority(dir: Direction) {
    let how = std::env::var("WANEM_PRIORITY").unwrap_or_else(|_| "rt".into());
    let ok = match how.as_str() {
        "rt" => {
            let param = libc::sched_param { sched_priority: 10 };
            unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) == 0 }
        }
        "nice" => unsafe {
            let tid = libc::gettid() as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, -20) == 0
        },
        _ => true,
    };
    if !ok {
        eprintln!(
            "wanem {dir:?}: cannot raise priority ({how}): {}; timing may suffer under load",
            std::io::Error::last_os_error()
        );
    }
}

/// Finishes a partial (offloaded) checksum: the field at `start + offset` holds the
/// pseudo-header sum; the checksum covers everything from `start` to the end.
fn complete_checksum(frame: &mut [u8], start: usize, offset: usize) -> bool {
    if start >= frame.len() || start + offset + 2 > frame.len() {
        return false;
    }
    let mut sum: u64 = 0;
    let mut chunks = frame[start..].chunks_exact(2);
    for c in &mut chunks {
        sum += u16::from_be_bytes([c[0], c[1]]) as u64;
    }
    if let [last] = chunks.remainder() {
        sum += (*last as u64) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let csum = !(sum as u16);
    frame[start + offset..start + offset + 2].copy_from_slice(&csum.to_be_bytes());
    true
}

/// An AF_PACKET socket bound to one interface, with virtio-net headers on every frame.
/// A receiving socket sees every frame arriving on the interface (promiscuous, frames it
/// or its twin sent are ignored); a sending socket (protocol 0) receives nothing.
struct PacketSocket {
    fd: OwnedFd,
    name: std::ffi::CString,
    mtu: usize,
}

impl PacketSocket {
    fn open(iface: &str, receive: bool) -> Result<PacketSocket, String> {
        let cname = std::ffi::CString::new(iface).map_err(|_| format!("bad name {iface:?}"))?;
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if ifindex == 0 {
            return Err(format!("no interface {iface:?} in this namespace"));
        }
        let proto = if receive { ETH_P_ALL.to_be() } else { 0 };
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                proto as libc::c_int,
            )
        };
        if raw < 0 {
            return Err(format!(
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            ));
        }
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let err = |what: &str| format!("{iface}: {what}: {}", std::io::Error::last_os_error());
        let one: libc::c_int = 1;
        setsockopt(&fd, SOL_PACKET, PACKET_VNET_HDR, &one).map_err(|_| err("PACKET_VNET_HDR"))?;
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex as i32;
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc < 0 {
            return Err(err("bind"));
        }
        let bufsize: libc::c_int = 16 << 20;
        if receive {
            setsockopt(&fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one)
                .map_err(|_| err("PACKET_IGNORE_OUTGOING"))?;
            let mreq = libc::packet_mreq {
                mr_ifindex: ifindex as i32,
                mr_type: PACKET_MR_PROMISC,
                mr_alen: 0,
                mr_address: [0; 8],
            };
            setsockopt(&fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mreq)
                .map_err(|_| err("promiscuous mode"))?;
            // Root may exceed net.core.rmem_max; absorb bursts instead of dropping them.
            if setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &bufsize).is_err() {
                let _ = setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &bufsize);
            }
        } else if setsockopt(&fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, &bufsize).is_err() {
            let _ = setsockopt(&fd, libc::SOL_SOCKET, libc::SO_SNDBUF, &bufsize);
        }
        let mtu = std::fs::read_to_string(format!("/sys/class/net/{iface}/mtu"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1500);
        Ok(PacketSocket {
            fd,
            name: cname,
            mtu,
        })
    }

    /// Blocks until a frame can be read or `deadline` passes.
    /// Blocks until a frame can be read or `deadline` passes; true if the socket
    /// reported an error instead.
    fn wait_readable(&self, deadline: Option<Instant>) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ts;
        let tsp = match deadline {
            None => std::ptr::null(),
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                ts = libc::timespec {
                    tv_sec: left.as_secs() as libc::time_t,
                    tv_nsec: left.subsec_nanos() as libc::c_long,
                };
                &ts as *const libc::timespec
            }
        };
        let n = unsafe { libc::ppoll(&mut pfd, 1, tsp, std::ptr::null()) };
        n > 0 && pfd.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0
    }

    /// Clears and logs a pending socket error; exits if the interface is gone, and
    /// otherwise pauses briefly so a persisting error cannot make the loop spin.
    fn check_error(&self, dir: Direction) {
        let mut err: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                &mut err as *mut _ as *mut libc::c_void,
                &mut len,
            )
        };
        let gone = unsafe { libc::if_nametoindex(self.name.as_ptr()) } == 0;
        eprintln!(
            "wanem {dir:?}: socket error on {}: {}{}",
            self.name.to_string_lossy(),
            std::io::Error::from_raw_os_error(err),
            if gone {
                "; interface gone, exiting"
            } else {
                ""
            }
        );
        if gone {
            std::process::exit(1);
        }
        std::thread::sleep(Duration::from_millis(10));
    }

    /// Reads one frame without blocking: its full length (vnet header included), which
    /// exceeds `buf.len()` if it did not fit; `None` if nothing is waiting.
    fn recv(&self, buf: &mut [u8]) -> Option<usize> {
        loop {
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut alen = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                    &mut sll as *mut _ as *mut libc::sockaddr,
                    &mut alen,
                )
            };
            if n < 0 {
                return None;
            }
            // Belt and braces for kernels without PACKET_IGNORE_OUTGOING.
            if sll.sll_pkttype == PACKET_OUTGOING {
                continue;
            }
            return Some(n as usize);
        }
    }

    fn send(&self, frame: &[u8]) -> bool {
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        n == frame.len() as isize
    }

    /// Frames the kernel dropped for want of buffer since the last call.
    fn take_kernel_drops(&self) -> u64 {
        let mut st = libc::tpacket_stats {
            tp_packets: 0,
            tp_drops: 0,
        };
        let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                SOL_PACKET,
                PACKET_STATISTICS,
                &mut st as *mut _ as *mut libc::c_void,
                &mut len,
            )
        };
        if rc == 0 { st.tp_drops as u64 } else { 0 }
    }
}

fn setsockopt<T>(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, val: &T) -> Result<(), ()> {
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            val as *const T as *const libc::c_void,
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(()) }
}

#[cfg(test)]
mod tests {
    use super::is_udp;

    fn frame(ethertype: [u8; 2], vlan: bool, l3: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        if vlan {
            f.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
        }
        f.extend_from_slice(&ethertype);
        f.extend_from_slice(l3);
        f
    }

    #[test]
    fn udp_is_told_from_tcp_over_both_ip_versions_tagged_or_not() {
        let mut v4 = [0u8; 20];
        v4[0] = 0x45;
        v4[9] = 17;
        let mut v6 = [0u8; 40];
        v6[0] = 0x60;
        v6[6] = 17;
        for vlan in [false, true] {
            assert!(is_udp(&frame([0x08, 0x00], vlan, &v4)));
            assert!(is_udp(&frame([0x86, 0xdd], vlan, &v6)));
        }
        v4[9] = 6;
        v6[6] = 6;
        assert!(!is_udp(&frame([0x08, 0x00], false, &v4)));
        assert!(!is_udp(&frame([0x86, 0xdd], true, &v6)));
        // ARP, and frames cut short, are not UDP (and never read out of bounds).
        assert!(!is_udp(&frame([0x08, 0x06], false, &[0u8; 28])));
        assert!(!is_udp(&frame([0x08, 0x00], false, &v4[..9])));
        assert!(!is_udp(&[0x00; 13]));
        assert!(!is_udp(&[]));
    }
}
