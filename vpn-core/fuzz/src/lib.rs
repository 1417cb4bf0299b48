//! What the `datagram` and `local_frame` targets share: two networks with an established
//! session ([`vpn_core::sim::Pair`]), driven by hand so a target can tamper with what
//! travels between them, and the invariants every run must keep:
//! - no datagram is longer than the path allows (`path_mtu` less the IPv4 and UDP
//!   headers: the pair's endpoints are IPv4);
//! - no frame handed to a local port is longer than [`MAX_FRAME_LEN`], and every frame
//!   one side delivers is a frame that entered the other side (nothing forged, nothing
//!   garbled, nothing made up), apart from the 42-byte ARP replies a switch makes;
//! - garbage does not break the session: once everything is carried, a broadcast from
//!   `a` still reaches `b` whenever both still have a session.

use std::net::SocketAddr;
use std::time::Duration;

use vpn_core::sim::{Pair, Side};
use vpn_core::switch::ARP_REPLY_LEN;
use vpn_core::wire::MAX_FRAME_LEN;
use vpn_core::{Cipher, MacAddr};

/// IPv4 and UDP headers: what a datagram to an IPv4 endpoint adds to its length.
const IPV4_UDP: usize = 28;
/// Genuine datagrams kept for replaying and tampering.
const CAPTURE: usize = 64;

pub const MAC_A: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 0x0a]);
pub const MAC_B: MacAddr = MacAddr([0x52, 0x54, 0, 0, 1, 0x0b]);

/// A source address that is neither side's.
pub fn elsewhere() -> SocketAddr {
    SocketAddr::from(([198, 51, 100, 7], 40000))
}

pub struct Harness {
    pub pair: Pair,
    path_mtu: usize,
    /// Frames that entered `a`'s and `b`'s local ports.
    entered: [Vec<Vec<u8>>; 2],
    /// Genuine datagrams seen on the wire, oldest first.
    pub captured: Vec<Vec<u8>>,
    buf: Vec<u8>,
    frame: Vec<u8>,
}

fn index(side: Side) -> usize {
    match side {
        Side::A => 0,
        Side::B => 1,
    }
}

pub fn other(side: Side) -> Side {
    match side {
        Side::A => Side::B,
        Side::B => Side::A,
    }
}

impl Harness {
    /// A connected pair whose switches know `MAC_A` at `a` and `MAC_B` at `b`.
    pub fn new(path_mtu: u16, cipher: Cipher) -> Harness {
        let mut pair = Pair::new(|_, config| {
            config.path_mtu = path_mtu;
            config.cipher = cipher;
        });
        pair.learn_macs(MAC_A, MAC_B);
        let buf = vec![0u8; pair.a.max_datagram_len()];
        Harness {
            pair,
            path_mtu: usize::from(path_mtu),
            entered: [Vec::new(), Vec::new()],
            captured: Vec::new(),
            buf,
            frame: vec![0u8; MAX_FRAME_LEN],
        }
    }

    fn addr(&self, side: Side) -> SocketAddr {
        match side {
            Side::A => self.pair.addr_a,
            Side::B => self.pair.addr_b,
        }
    }

    /// A frame enters `side` from its local port. Whatever the switch answers locally (an
    /// ARP reply) is checked and dropped; datagrams stay queued.
    pub fn local_frame(&mut self, side: Side, frame: &[u8]) {
        if self.entered[index(side)].len() < 256 {
            self.entered[index(side)].push(frame.to_vec());
        }
        let now = self.pair.now;
        let net = self.pair.net(side);
        net.handle_local_frame(now, frame);
        while let Some(n) = net.poll_deliver(&mut self.frame) {
            assert_eq!(n, ARP_REPLY_LEN, "only ARP replies are made locally");
        }
    }

    /// Everything `side` has to send now, checked and captured.
    pub fn drain(&mut self, side: Side) -> Vec<(SocketAddr, Vec<u8>)> {
        let now = self.pair.now;
        let mut out = Vec::new();
        while let Some(t) = self.pair.net(side).poll_transmit(now, &mut self.buf) {
            assert!(t.len <= self.buf.len());
            assert!(
                t.len + IPV4_UDP <= self.path_mtu,
                "{} byte datagram on a {} byte path",
                t.len,
                self.path_mtu
            );
            let bytes = self.buf[..t.len].to_vec();
            if self.captured.len() < CAPTURE {
                self.captured.push(bytes.clone());
            }
            out.push((t.destination, bytes));
            assert!(out.len() < 4096, "a network that never stops sending");
        }
        out
    }

    /// `datagram` from `from` arrives at `side`; what it delivers is checked.
    pub fn receive(&mut self, side: Side, from: SocketAddr, datagram: &mut [u8]) {
        let now = self.pair.now;
        let delivered = match self.pair.net(side).handle_datagram(now, from, datagram) {
            Ok(Some(frame)) => Some(frame.to_vec()),
            _ => None,
        };
        if let Some(frame) = delivered {
            self.check_delivered(side, &frame);
        }
        while let Some(n) = self.pair.net(side).poll_deliver(&mut self.frame) {
            let frame = self.frame[..n].to_vec();
            self.check_delivered(side, &frame);
        }
    }

    fn check_delivered(&self, side: Side, frame: &[u8]) {
        assert!(frame.len() <= MAX_FRAME_LEN);
        assert!(
            self.entered[index(other(side))].iter().any(|f| f == frame),
            "{side:?} delivered a frame that never entered the other side"
        );
    }

    /// Carries datagrams both ways until neither side sends; datagrams addressed to
    /// neither side are lost.
    pub fn pump(&mut self) {
        for _ in 0..64 {
            let mut carried = 0;
            for side in [Side::A, Side::B] {
                let to = other(side);
                for (destination, mut bytes) in self.drain(side) {
                    if destination == self.addr(to) {
                        carried += 1;
                        let from = self.addr(side);
                        self.receive(to, from, &mut bytes);
                    }
                }
            }
            if carried == 0 {
                return;
            }
        }
        panic!("the two networks never stop talking");
    }

    /// Time passes; both networks run their timers and talk.
    pub fn advance(&mut self, by: Duration) {
        self.pair.now += by;
        let now = self.pair.now;
        self.pair.a.handle_timeout(now);
        self.pair.b.handle_timeout(now);
        self.pump();
    }

    /// After everything is carried, a broadcast from `a` still reaches `b` when both
    /// sides have a session.
    pub fn check_alive(&mut self) {
        self.pump();
        if !self.pair.connected() {
            return;
        }
        let mut frame = vec![0xff; 6];
        frame.extend_from_slice(&MAC_A.0);
        frame.extend_from_slice(&[0x88, 0xb5]);
        frame.extend_from_slice(b"still alive after all that");
        self.local_frame(Side::A, &frame);
        let to_b = self.addr(Side::B);
        let from = self.addr(Side::A);
        let mut arrived = false;
        for (destination, mut bytes) in self.drain(Side::A) {
            if destination != to_b {
                continue;
            }
            let now = self.pair.now;
            let is_data = bytes.get(1).is_some_and(|&t| t >= 4);
            match self.pair.b.handle_datagram(now, from, &mut bytes) {
                Ok(Some(f)) => arrived |= f == &frame[..],
                Ok(None) => {
                    while let Some(n) = self.pair.b.poll_deliver(&mut self.frame) {
                        arrived |= self.frame[..n] == frame[..];
                    }
                }
                // Handshakes may be refused (rate limits); data on a session may not.
                Err(e) if is_data => panic!("b refused a genuine data message: {e}"),
                Err(_) => {}
            }
        }
        assert!(arrived, "the session no longer carries frames");
    }
}

/// A frame of `len` bytes (at least a header) from `src` to `dst`, filled with `fill`.
pub fn ethernet(dst: MacAddr, src: MacAddr, ethertype: u16, len: usize, fill: u8) -> Vec<u8> {
    let mut f = Vec::with_capacity(len.max(14));
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.resize(len.max(14), fill);
    f
}

/// One of a few addresses: the two hosts, broadcast, multicast, zero or another.
pub fn mac(n: u8) -> MacAddr {
    match n % 6 {
        0 => MAC_B,
        1 => MAC_A,
        2 => MacAddr::BROADCAST,
        3 => MacAddr([0x33, 0x33, 0, 0, 0, 1]),
        4 => MacAddr::ZERO,
        _ => MacAddr([0x52, 0x54, 0, 0, 2, n]),
    }
}
