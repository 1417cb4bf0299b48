//! [`udp_flow`]: a numbered, paced UDP stream from one namespace to another, measured
//! at both ends by this process, so one clock times it: loss, duplicates, reordering,
//! one-way latency and received rate, exactly, without a ping's small sample or a tool's
//! output to parse. Each datagram carries its sequence number in its first 4 bytes.
//! Arrival times are the kernel's receive timestamps, so a receiving thread scheduled
//! late does not skew them; send times are taken just before each `send`.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::NetNs;

/// Shape of the stream. Defaults: 1000 datagrams of 1000 bytes, 200 us apart, to port
/// 0 (any free one); the receiver stops 300 ms after the last datagram was sent.
#[derive(Clone, Debug)]
pub struct FlowOpts {
    pub count: u32,
    /// UDP payload bytes (at least 4).
    pub payload: usize,
    /// Gap between datagrams; zero sends as fast as the socket takes them.
    pub interval: Duration,
    pub port: u16,
    /// How long the receiver keeps listening after the sender is done.
    pub drain: Duration,
}

impl Default for FlowOpts {
    fn default() -> Self {
        FlowOpts {
            count: 1000,
            payload: 1000,
            interval: Duration::from_micros(200),
            port: 0,
            drain: Duration::from_millis(300),
        }
    }
}

impl FlowOpts {
    pub fn count(mut self, n: u32) -> Self {
        self.count = n;
        self
    }
    pub fn payload(mut self, bytes: usize) -> Self {
        assert!(bytes >= 4, "payload carries a 4-byte sequence number");
        self.payload = bytes;
        self
    }
    pub fn interval(mut self, d: Duration) -> Self {
        self.interval = d;
        self
    }
    /// Paces the stream at `bps` bits per second of UDP payload.
    pub fn rate_bps(mut self, bps: u64) -> Self {
        self.interval = Duration::from_nanos(self.payload as u64 * 8 * 1_000_000_000 / bps);
        self
    }
    pub fn drain(mut self, d: Duration) -> Self {
        self.drain = d;
        self
    }
}

/// One datagram received.
#[derive(Clone, Copy, Debug)]
pub struct Arrival {
    pub seq: u32,
    pub at: Instant,
    pub bytes: usize,
}

/// What the receiver saw, with the sender's send times.
#[derive(Clone, Debug)]
pub struct FlowReport {
    pub sent: u32,
    pub payload: usize,
    pub sent_at: Vec<Instant>,
    pub arrivals: Vec<Arrival>,
}

impl FlowReport {
    /// Distinct sequence numbers received.
    pub fn received(&self) -> u32 {
        let mut seen = vec![false; self.sent as usize];
        for a in &self.arrivals {
            if let Some(s) = seen.get_mut(a.seq as usize) {
                *s = true;
            }
        }
        seen.iter().filter(|s| **s).count() as u32
    }

    /// Sequence numbers never received, in order.
    pub fn lost(&self) -> Vec<u32> {
        let mut seen = vec![false; self.sent as usize];
        for a in &self.arrivals {
            if let Some(s) = seen.get_mut(a.seq as usize) {
                *s = true;
            }
        }
        (0..self.sent).filter(|s| !seen[*s as usize]).collect()
    }

    pub fn loss(&self) -> f64 {
        1.0 - self.received() as f64 / self.sent.max(1) as f64
    }

    /// Arrivals beyond the first of each sequence number.
    pub fn duplicates(&self) -> u32 {
        self.arrivals.len() as u32 - self.received()
    }

    /// First arrivals of a sequence number lower than one already seen.
    pub fn out_of_order(&self) -> u32 {
        let mut seen = vec![false; self.sent as usize];
        let mut max = None;
        let mut n = 0;
        for a in &self.arrivals {
            let Some(s) = seen.get_mut(a.seq as usize) else {
                continue;
            };
            if *s {
                continue;
            }
            *s = true;
            if max.is_some_and(|m| a.seq < m) {
                n += 1;
            }
            max = max.max(Some(a.seq));
        }
        n
    }

    /// One-way latency of each first arrival.
    pub fn latencies(&self) -> Vec<Duration> {
        let mut seen = vec![false; self.sent as usize];
        let mut v = Vec::new();
        for a in &self.arrivals {
            if let Some(s) = seen.get_mut(a.seq as usize)
                && !*s
            {
                *s = true;
                v.push(a.at.saturating_duration_since(self.sent_at[a.seq as usize]));
            }
        }
        v
    }

    /// Received rate in bits/s, from the first to the last arrival, counting each
    /// datagram as `payload + overhead` bytes (42 for UDP/IPv4/Ethernet frames).
    pub fn rate_bps(&self, overhead: usize) -> f64 {
        let (Some(first), Some(last)) = (self.arrivals.first(), self.arrivals.last()) else {
            return 0.0;
        };
        let span = (last.at - first.at).as_secs_f64();
        // The first arrival opens the interval; the bytes after it filled it.
        let bits = (self.arrivals.len() - 1) as f64 * (self.payload + overhead) as f64 * 8.0;
        if span > 0.0 { bits / span } else { 0.0 }
    }
}

/// UDP/IPv4/Ethernet header bytes around a datagram's payload.
pub const UDP_FRAME_OVERHEAD: usize = 8 + 20 + 14;

/// Sends `opts.count` numbered datagrams from namespace `src` to `dst_addr` (an address
/// in namespace `dst`) and reports what arrived.
pub fn udp_flow(src: &NetNs, dst: &NetNs, dst_addr: &str, opts: &FlowOpts) -> FlowReport {
    let rx = dst
        .in_ns(|| UdpSocket::bind((dst_addr, opts.port)))
        .unwrap_or_else(|e| panic!("bind {dst_addr}:{} in {}: {e}", opts.port, dst.name()));
    let to: SocketAddr = rx.local_addr().expect("local addr");
    let tx = src
        .in_ns(|| UdpSocket::bind("0.0.0.0:0"))
        .unwrap_or_else(|e| panic!("bind a UDP socket in {}: {e}", src.name()));
    rx.set_read_timeout(Some(Duration::from_millis(20)))
        .expect("read timeout");
    // Big buffers: a burst must not be lost at the receiving socket instead of the link.
    set_sockopt(&rx, libc::SO_RCVBUFFORCE, 8 << 20);
    // Arrival times from the kernel, not from when this thread got to run.
    set_sockopt(&rx, libc::SO_TIMESTAMPNS, 1);
    let clock = (Instant::now(), SystemTime::now());
    let done = AtomicBool::new(false);
    let drain = opts.drain;
    std::thread::scope(|s| {
        let receiver = s.spawn(|| {
            let mut arrivals = Vec::new();
            let mut buf = vec![0u8; 65_536];
            let mut quiet_since: Option<Instant> = None;
            loop {
                match recv_stamped(&rx, &mut buf, clock) {
                    Some((n, at)) if n >= 4 => {
                        let seq = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes"));
                        arrivals.push(Arrival { seq, at, bytes: n });
                        quiet_since = None;
                    }
                    _ => {
                        if done.load(Ordering::Acquire) {
                            let since = *quiet_since.get_or_insert_with(Instant::now);
                            if since.elapsed() >= drain {
                                return arrivals;
                            }
                        }
                    }
                }
            }
        });
        let mut sent_at = Vec::with_capacity(opts.count as usize);
        let mut payload = vec![0x5au8; opts.payload];
        let start = Instant::now();
        for seq in 0..opts.count {
            let target = start + opts.interval * seq;
            let now = Instant::now();
            if target > now {
                std::thread::sleep(target - now);
            }
            payload[..4].copy_from_slice(&seq.to_be_bytes());
            sent_at.push(Instant::now());
            // A full socket buffer is local loss, not the link's: retry until it fits.
            while let Err(e) = tx.send_to(&payload, to) {
                if e.raw_os_error() != Some(libc::ENOBUFS)
                    && e.kind() != std::io::ErrorKind::WouldBlock
                {
                    panic!("send to {to} from {}: {e}", src.name());
                }
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        done.store(true, Ordering::Release);
        let arrivals = receiver.join().expect("receiver thread");
        FlowReport {
            sent: opts.count,
            payload: opts.payload,
            sent_at,
            arrivals,
        }
    })
}

fn set_sockopt(sock: &UdpSocket, name: libc::c_int, value: libc::c_int) {
    use std::os::fd::AsRawFd;
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            &value as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// One datagram and the instant the kernel received it (SO_TIMESTAMPNS, a wall-clock
/// time, mapped onto `Instant` through `clock`, a pair of readings taken together).
fn recv_stamped(
    sock: &UdpSocket,
    buf: &mut [u8],
    clock: (Instant, SystemTime),
) -> Option<(usize, Instant)> {
    use std::os::fd::AsRawFd;
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cbuf = [0u64; 16];
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        return None;
    }
    let mut at = Instant::now();
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        let c = unsafe { &*cmsg };
        if c.cmsg_level == libc::SOL_SOCKET && c.cmsg_type == libc::SO_TIMESTAMPNS {
            let ts: libc::timespec =
                unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast()) };
            let wall = UNIX_EPOCH + Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
            at = match wall.duration_since(clock.1) {
                Ok(d) => clock.0 + d,
                Err(e) => clock.0.checked_sub(e.duration()).unwrap_or(clock.0),
            };
        }
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    Some((n as usize, at))
}
