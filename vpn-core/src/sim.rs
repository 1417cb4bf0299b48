//! A deterministic in-memory overlay: several sites, each one [`Network`], joined by
//! simulated WAN links with latency, jitter, loss, duplication and outages, under a
//! simulated clock. Tests, benchmarks and the demo drive whole multi-site overlays
//! through it without a socket, a thread or a real second passing.
//!
//! Datagrams travel by destination address: site `i` lives at `192.0.2.<i+1>:51820`
//! (moveable, for roaming) and a datagram to an address nobody has is lost, unless a test
//! registered it as an outside host (an attacker's, a hand-made initiator's): then the
//! datagram waits there for the test to take it. The event
//! loop always advances to the earliest of the next datagram arrival and the earliest
//! network deadline, so time only moves when something happens.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

use crate::config::NetworkConfig;
use crate::key::PrivateKey;
use crate::network::{DatagramError, Network};
use crate::peer::PeerConfig;
use crate::types::{MacAddr, NetworkId, PeerId};
use crate::wire::MAX_FRAME_LEN;

/// Impairments of one direction of a link.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkParams {
    pub latency: Duration,
    /// Extra delay, uniform in `0..jitter`; datagrams may overtake each other.
    pub jitter: Duration,
    pub loss: f64,
    pub duplicate: f64,
    pub up: bool,
}

impl Default for LinkParams {
    fn default() -> Self {
        LinkParams {
            latency: Duration::from_millis(5),
            jitter: Duration::ZERO,
            loss: 0.0,
            duplicate: 0.0,
            up: true,
        }
    }
}

/// Counters of one direction of a link.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub datagrams: u64,
    pub bytes: u64,
    pub lost: u64,
    pub duplicated: u64,
}

pub struct SimSite {
    pub net: Network,
    pub addr: SocketAddr,
    pub key: PrivateKey,
    /// Frames the network delivered to this site's local port, in order.
    pub delivered: Vec<Vec<u8>>,
    /// Why datagrams arriving here were dropped.
    pub errors: Vec<DatagramError>,
    configure_seed: u64,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    arrival: Instant,
    seq: u64,
    from_site: usize,
    source: SocketAddrKey,
    destination: SocketAddrKey,
    bytes: Vec<u8>,
}

/// `SocketAddr` with an order, for the heap.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct SocketAddrKey(SocketAddr);

type Configure = Box<dyn FnMut(usize, &mut NetworkConfig)>;

pub struct Sim {
    pub now: Instant,
    start: Instant,
    sites: Vec<SimSite>,
    links: HashMap<(usize, usize), LinkParams>,
    stats: HashMap<(usize, usize), LinkStats>,
    in_flight: BinaryHeap<Reverse<InFlight>>,
    rng: ChaCha20Rng,
    seq: u64,
    configure: Configure,
    /// Every datagram put on the wire, when recording (for replay tests).
    pub recorded: Option<Vec<(usize, usize, Vec<u8>)>>,
    /// Mailboxes of outside hosts: datagrams sites sent them, with the sending site.
    outside: HashMap<SocketAddr, Vec<(usize, Vec<u8>)>>,
    buf: Vec<u8>,
}

/// The simulated wall clock at the start: 2026-01-01T00:00:00Z.
const UNIX_START: Duration = Duration::from_secs(1_767_225_600);

impl Sim {
    /// `n` sites in a full mesh on network 1. `configure` adjusts each site's network
    /// configuration (it is called again when a site restarts).
    pub fn new(
        n: usize,
        seed: u64,
        configure: impl FnMut(usize, &mut NetworkConfig) + 'static,
    ) -> Sim {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let start = Instant::now();
        let keys: Vec<PrivateKey> = (0..n).map(|_| PrivateKey::generate(&mut rng)).collect();
        let mut sim = Sim {
            now: start,
            start,
            sites: Vec::with_capacity(n),
            links: HashMap::new(),
            stats: HashMap::new(),
            in_flight: BinaryHeap::new(),
            rng,
            seq: 0,
            configure: Box::new(configure),
            recorded: None,
            outside: HashMap::new(),
            buf: vec![0u8; 65536],
        };
        for (i, key) in keys.into_iter().enumerate() {
            let configure_seed = sim.rng.next_u64();
            let net = sim.build_network(i, &key, configure_seed);
            sim.sites.push(SimSite {
                net,
                addr: Self::default_addr(i),
                key,
                delivered: Vec::new(),
                errors: Vec::new(),
                configure_seed,
            });
        }
        for i in 0..n {
            sim.connect_site(i);
        }
        sim
    }

    pub fn default_addr(site: usize) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::new(192, 0, 2, site as u8 + 1), 51820))
    }

    fn build_network(&mut self, site: usize, key: &PrivateKey, seed: u64) -> Network {
        let mut config = NetworkConfig::new(NetworkId(1), key.clone());
        (self.configure)(site, &mut config);
        let mut net_seed = [0u8; 32];
        ChaCha20Rng::seed_from_u64(seed ^ self.seq).fill_bytes(&mut net_seed);
        let unix = UNIX_START + self.now.saturating_duration_since(self.start);
        Network::new(config, self.now, unix, net_seed).expect("valid sim config")
    }

    /// Adds every other site as a peer of `site`, with its current address.
    fn connect_site(&mut self, site: usize) {
        let now = self.now;
        let others: Vec<(PeerConfig, usize)> = (0..self.sites.len())
            .filter(|&j| j != site)
            .map(|j| {
                (
                    PeerConfig {
                        public_key: self.sites[j].key.public_key(),
                        endpoint: Some(self.sites[j].addr),
                        name: Some(format!("site{j}")),
                    },
                    j,
                )
            })
            .collect();
        for (peer, _) in others {
            self.sites[site]
                .net
                .add_peer(now, peer)
                .expect("distinct keys");
        }
        self.flush(site);
    }

    pub fn site(&self, i: usize) -> &SimSite {
        &self.sites[i]
    }

    pub fn site_mut(&mut self, i: usize) -> &mut SimSite {
        &mut self.sites[i]
    }

    pub fn len(&self) -> usize {
        self.sites.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sites.is_empty()
    }

    /// The id site `at` gives site `of` among its peers.
    pub fn peer_id(&self, at: usize, of: usize) -> PeerId {
        self.sites[at]
            .net
            .peer_by_key(&self.sites[of].key.public_key())
            .expect("configured peer")
    }

    pub fn elapsed(&self) -> Duration {
        self.now.saturating_duration_since(self.start)
    }

    pub fn link(&mut self, from: usize, to: usize) -> &mut LinkParams {
        self.links.entry((from, to)).or_default()
    }

    /// Sets both directions of every link.
    pub fn set_all_links(&mut self, params: LinkParams) {
        for a in 0..self.sites.len() {
            for b in 0..self.sites.len() {
                if a != b {
                    *self.link(a, b) = params;
                }
            }
        }
    }

    pub fn link_stats(&self, from: usize, to: usize) -> LinkStats {
        self.stats.get(&(from, to)).copied().unwrap_or_default()
    }

    /// The sum over every link.
    pub fn wan_stats(&self) -> LinkStats {
        self.stats
            .values()
            .fold(LinkStats::default(), |a, s| LinkStats {
                datagrams: a.datagrams + s.datagrams,
                bytes: a.bytes + s.bytes,
                lost: a.lost + s.lost,
                duplicated: a.duplicated + s.duplicated,
            })
    }

    /// A frame enters `site` from its local port.
    pub fn send_frame(&mut self, site: usize, frame: &[u8]) {
        let now = self.now;
        self.sites[site].net.handle_local_frame(now, frame);
        self.flush(site);
    }

    /// A datagram arrives at `site` from `from`, off the simulated wire (an attacker's,
    /// or a recorded one replayed).
    pub fn inject(
        &mut self,
        site: usize,
        from: SocketAddr,
        datagram: &[u8],
    ) -> Result<(), DatagramError> {
        let mut bytes = datagram.to_vec();
        let result = self.receive(site, from, &mut bytes);
        self.flush(site);
        result
    }

    /// Makes `addr` an outside host: a host that is no site (its datagrams come through
    /// [`Sim::inject`]) but receives what sites send it, at once, for
    /// [`Sim::take_received`].
    pub fn add_outside_host(&mut self, addr: SocketAddr) {
        self.outside.entry(addr).or_default();
    }

    /// Takes the datagrams sites sent to outside host `addr` so far, each with the site
    /// that sent it.
    pub fn take_received(&mut self, addr: SocketAddr) -> Vec<(usize, Vec<u8>)> {
        self.outside
            .get_mut(&addr)
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Loses every datagram `site` has on the wire now; returns how many.
    pub fn lose_in_flight(&mut self, site: usize) -> usize {
        let before = self.in_flight.len();
        let kept: Vec<_> = std::mem::take(&mut self.in_flight)
            .into_iter()
            .filter(|Reverse(f)| f.from_site != site)
            .collect();
        self.in_flight = kept.into_iter().collect();
        before - self.in_flight.len()
    }

    /// Takes the frames delivered at `site` so far.
    pub fn take_delivered(&mut self, site: usize) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.sites[site].delivered)
    }

    /// Moves `site` to a new address (roaming): its datagrams come from there, and
    /// datagrams to its old address are lost.
    pub fn move_site(&mut self, site: usize, addr: SocketAddr) {
        self.sites[site].addr = addr;
    }

    /// Replaces `site`'s network by a fresh one with the same key, as a daemon restart
    /// does: sessions, tables and queues are lost; peers are configured again.
    pub fn restart_site(&mut self, site: usize) {
        self.seq += 1;
        let key = self.sites[site].key.clone();
        let seed = self.sites[site].configure_seed;
        let net = self.build_network(site, &key, seed);
        self.sites[site].net = net;
        self.connect_site(site);
    }

    /// Runs until nothing is due within `duration`.
    pub fn run_for(&mut self, duration: Duration) {
        let end = self.now + duration;
        while self.step(end) {}
        self.now = self.now.max(end);
    }

    /// Runs until `done` holds (checked after every event) or `limit` passes. Returns
    /// whether `done` held.
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&mut Sim) -> bool) -> bool {
        let end = self.now + limit;
        loop {
            if done(self) {
                return true;
            }
            if !self.step(end) {
                self.now = self.now.max(end);
                return done(self);
            }
        }
    }

    /// Processes the earliest event due no later than `end`. False if there is none.
    fn step(&mut self, end: Instant) -> bool {
        let next_arrival = self.in_flight.peek().map(|Reverse(f)| f.arrival);
        let next_timer = (0..self.sites.len())
            .filter_map(|i| self.sites[i].net.poll_timeout().map(|t| (t, i)))
            .min();
        let at = match (next_arrival, next_timer) {
            (None, None) => return false,
            (Some(a), None) => a,
            (None, Some((t, _))) => t,
            (Some(a), Some((t, _))) => a.min(t),
        };
        if at > end {
            return false;
        }
        self.now = self.now.max(at);
        let now = self.now;
        if next_arrival == Some(at) {
            let Reverse(f) = self.in_flight.pop().expect("peeked");
            let to = self.sites.iter().position(|s| s.addr == f.destination.0);
            if let Some(to) = to {
                let mut bytes = f.bytes;
                let _ = self.receive(to, f.source.0, &mut bytes);
                self.flush(to);
            }
        } else if let Some((_, site)) = next_timer {
            self.sites[site].net.handle_timeout(now);
            self.flush(site);
            // A network that reports a deadline it does not act on would spin forever.
            if let Some(t) = self.sites[site].net.poll_timeout() {
                assert!(
                    t > now,
                    "site {site} deadline {t:?} not advanced by handle_timeout at {now:?}"
                );
            }
        }
        true
    }

    fn receive(
        &mut self,
        site: usize,
        from: SocketAddr,
        bytes: &mut [u8],
    ) -> Result<(), DatagramError> {
        let now = self.now;
        let s = &mut self.sites[site];
        match s.net.handle_datagram(now, from, bytes) {
            Ok(Some(frame)) => {
                s.delivered.push(frame.to_vec());
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => {
                s.errors.push(e);
                Err(e)
            }
        }
    }

    /// Moves everything `site` wants to send onto the wire, and its deliveries to its
    /// local port.
    fn flush(&mut self, site: usize) {
        let now = self.now;
        let mut frame = [0u8; MAX_FRAME_LEN];
        while let Some(n) = self.sites[site].net.poll_deliver(&mut frame) {
            self.sites[site].delivered.push(frame[..n].to_vec());
        }
        while let Some(t) = self.sites[site].net.poll_transmit(now, &mut self.buf) {
            let bytes = self.buf[..t.len].to_vec();
            let to = self.sites.iter().position(|s| s.addr == t.destination);
            let source = self.sites[site].addr;
            let Some(to) = to else {
                if let Some(mailbox) = self.outside.get_mut(&t.destination) {
                    mailbox.push((site, bytes));
                }
                continue;
            };
            if let Some(rec) = &mut self.recorded {
                rec.push((site, to, bytes.clone()));
            }
            let params = self.links.get(&(site, to)).copied().unwrap_or_default();
            let stats = self.stats.entry((site, to)).or_default();
            stats.datagrams += 1;
            stats.bytes += bytes.len() as u64;
            if !params.up || self.rng.random_f64() < params.loss {
                stats.lost += 1;
                continue;
            }
            let copies = if self.rng.random_f64() < params.duplicate {
                stats.duplicated += 1;
                2
            } else {
                1
            };
            for _ in 0..copies {
                let jitter = if params.jitter.is_zero() {
                    Duration::ZERO
                } else {
                    Duration::from_nanos(self.rng.next_u64() % params.jitter.as_nanos() as u64)
                };
                self.seq += 1;
                self.in_flight.push(Reverse(InFlight {
                    arrival: now + params.latency + jitter,
                    seq: self.seq,
                    from_site: site,
                    source: SocketAddrKey(source),
                    destination: SocketAddrKey(t.destination),
                    bytes: bytes.clone(),
                }));
            }
        }
    }
}

/// Two networks joined back to back, with no simulated link, clock or loss between them:
/// what benchmarks, fuzz targets and allocation tests drive when they need an established
/// session and nothing else. Side `a` is site 0 at [`Sim::default_addr`]`(0)`, side `b`
/// site 1. Keys and seeds are fixed, so every `Pair` with the same configuration makes
/// the same handshake and seals the same bytes.
pub struct Pair {
    pub a: Network,
    pub b: Network,
    pub addr_a: SocketAddr,
    pub addr_b: SocketAddr,
    /// `b` as a peer of `a`, and `a` as a peer of `b`.
    pub peer_b: PeerId,
    pub peer_a: PeerId,
    /// The time every call is made at; tests may move it.
    pub now: Instant,
    buf: Vec<u8>,
    frame: Vec<u8>,
}

/// Which network of a [`Pair`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

impl Pair {
    /// Two connected networks: each is configured with the other as a peer, and `a`'s
    /// handshake is carried until both have a session. `configure` adjusts each side's
    /// configuration (0 is `a`, 1 is `b`).
    pub fn new(mut configure: impl FnMut(usize, &mut NetworkConfig)) -> Pair {
        let now = Instant::now();
        let keys = [
            PrivateKey::from_bytes([0x11; 32]),
            PrivateKey::from_bytes([0x22; 32]),
        ];
        let addrs = [Sim::default_addr(0), Sim::default_addr(1)];
        let mut nets = keys.iter().enumerate().map(|(i, key)| {
            let mut config = NetworkConfig::new(NetworkId(1), key.clone());
            configure(i, &mut config);
            Network::new(config, now, UNIX_START, [i as u8 + 1; 32]).expect("valid config")
        });
        let (mut a, mut b) = (nets.next().expect("a"), nets.next().expect("b"));
        let peer = |i: usize, endpoint| PeerConfig {
            public_key: keys[i].public_key(),
            endpoint,
            name: Some(format!("site{i}")),
        };
        // Only `a` knows where its peer is, so only `a` initiates: one handshake instead of
        // two crossing ones (fuzz targets make a pair for every input). `b` learns `a`'s
        // address from the authenticated initiation, as a roaming peer's.
        let peer_b = a
            .add_peer(now, peer(1, Some(addrs[1])))
            .expect("distinct keys");
        let peer_a = b.add_peer(now, peer(0, None)).expect("distinct keys");
        let mut pair = Pair {
            a,
            b,
            addr_a: addrs[0],
            addr_b: addrs[1],
            peer_b,
            peer_a,
            now,
            buf: vec![0u8; 65536],
            frame: vec![0u8; MAX_FRAME_LEN],
        };
        pair.pump(|_, _| {});
        assert!(pair.connected(), "handshake did not complete");
        pair
    }

    /// Whether both sides have a session to send on.
    pub fn connected(&self) -> bool {
        let has = |net: &Network, peer| net.peer(peer, self.now).is_some_and(|p| p.has_session);
        has(&self.a, self.peer_b) && has(&self.b, self.peer_a)
    }

    pub fn net(&mut self, side: Side) -> &mut Network {
        match side {
            Side::A => &mut self.a,
            Side::B => &mut self.b,
        }
    }

    /// Makes each switch learn the other side's host: a frame from `mac_a` to `mac_b`
    /// enters at `a` (flooded: `mac_b` is unknown), one back from `mac_b` to `mac_a`
    /// enters at `b`. Afterwards frames between the two go by unicast.
    pub fn learn_macs(&mut self, mac_a: MacAddr, mac_b: MacAddr) {
        let now = self.now;
        let hello = |dst: MacAddr, src: MacAddr| frames::ethernet(dst, src, 0x88b5, &[0; 46]);
        self.a.handle_local_frame(now, &hello(mac_b, mac_a));
        self.pump(|_, _| {});
        self.b.handle_local_frame(now, &hello(mac_a, mac_b));
        self.pump(|_, _| {});
    }

    /// Carries datagrams both ways until neither side has anything to send, handing
    /// every frame delivered to a local port to `delivered` (with the side it reached).
    /// Datagrams that are dropped are dropped silently. Returns how many were carried.
    pub fn pump(&mut self, mut delivered: impl FnMut(Side, &[u8])) -> usize {
        let mut carried = 0;
        loop {
            let before = carried;
            for (from, to) in [(Side::A, Side::B), (Side::B, Side::A)] {
                carried += self.carry(from, to, &mut delivered);
            }
            if carried == before {
                return carried;
            }
        }
    }

    /// Carries what `from` has to send now to `to`.
    fn carry(&mut self, from: Side, to: Side, delivered: &mut impl FnMut(Side, &[u8])) -> usize {
        let now = self.now;
        let source = match from {
            Side::A => self.addr_a,
            Side::B => self.addr_b,
        };
        let mut carried = 0;
        loop {
            let (tx, rx) = match from {
                Side::A => (&mut self.a, &mut self.b),
                Side::B => (&mut self.b, &mut self.a),
            };
            while let Some(n) = tx.poll_deliver(&mut self.frame) {
                delivered(from, &self.frame[..n]);
            }
            let Some(t) = tx.poll_transmit(now, &mut self.buf) else {
                return carried;
            };
            carried += 1;
            if let Ok(Some(frame)) = rx.handle_datagram(now, source, &mut self.buf[..t.len]) {
                delivered(to, frame);
            }
            while let Some(n) = rx.poll_deliver(&mut self.frame) {
                delivered(to, &self.frame[..n]);
            }
        }
    }
}

trait RandomF64 {
    fn random_f64(&mut self) -> f64;
}

impl RandomF64 for ChaCha20Rng {
    fn random_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Builders of the Ethernet frames tests and demos send: ARP, DHCP, plain IPv4/UDP.
pub mod frames {
    use std::net::Ipv4Addr;

    use etherparse::{SlicedPacket, TransportSlice};

    use crate::types::MacAddr;

    pub const ETHERTYPE_IPV4: u16 = 0x0800;
    pub const ETHERTYPE_ARP: u16 = 0x0806;

    pub fn ethernet(dst: MacAddr, src: MacAddr, ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::with_capacity(14 + payload.len());
        f.extend_from_slice(&dst.0);
        f.extend_from_slice(&src.0);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// An ARP packet (request: oper 1, reply: oper 2) in an Ethernet frame.
    pub fn arp(
        oper: u16,
        eth_dst: MacAddr,
        sender: (MacAddr, Ipv4Addr),
        target: (MacAddr, Ipv4Addr),
    ) -> Vec<u8> {
        let mut a = Vec::with_capacity(28);
        a.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4]);
        a.extend_from_slice(&oper.to_be_bytes());
        a.extend_from_slice(&sender.0.0);
        a.extend_from_slice(&sender.1.octets());
        a.extend_from_slice(&target.0.0);
        a.extend_from_slice(&target.1.octets());
        ethernet(eth_dst, sender.0, ETHERTYPE_ARP, &a)
    }

    pub fn arp_request(sender: (MacAddr, Ipv4Addr), target_ip: Ipv4Addr) -> Vec<u8> {
        arp(1, MacAddr::BROADCAST, sender, (MacAddr::ZERO, target_ip))
    }

    pub fn arp_reply(sender: (MacAddr, Ipv4Addr), target: (MacAddr, Ipv4Addr)) -> Vec<u8> {
        arp(2, target.0, sender, target)
    }

    /// An IPv4/UDP packet in an Ethernet frame (checksum left zero, as UDP over IPv4
    /// allows), padded with `payload`.
    pub fn udp(
        eth: (MacAddr, MacAddr),
        ip: (Ipv4Addr, Ipv4Addr),
        ports: (u16, u16),
        payload: &[u8],
    ) -> Vec<u8> {
        let udp_len = 8 + payload.len();
        let total = 20 + udp_len;
        let mut p = Vec::with_capacity(total);
        p.extend_from_slice(&[0x45, 0]);
        p.extend_from_slice(&(total as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
        p.extend_from_slice(&ip.0.octets());
        p.extend_from_slice(&ip.1.octets());
        let sum = ipv4_checksum(&p[..20]);
        p[10..12].copy_from_slice(&sum.to_be_bytes());
        p.extend_from_slice(&ports.0.to_be_bytes());
        p.extend_from_slice(&ports.1.to_be_bytes());
        p.extend_from_slice(&(udp_len as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(payload);
        ethernet(eth.1, eth.0, ETHERTYPE_IPV4, &p)
    }

    fn ipv4_checksum(header: &[u8]) -> u16 {
        let mut sum: u32 = header
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    /// DHCP message types (option 53).
    pub const DHCP_DISCOVER: u8 = 1;
    pub const DHCP_OFFER: u8 = 2;
    pub const DHCP_REQUEST: u8 = 3;
    pub const DHCP_ACK: u8 = 5;

    /// A DHCP message as a client (to port 67) or server (to port 68) broadcasts it.
    pub fn dhcp(
        msg_type: u8,
        xid: u32,
        client: MacAddr,
        from: (MacAddr, Ipv4Addr),
        yiaddr: Ipv4Addr,
    ) -> Vec<u8> {
        let op = if msg_type == DHCP_OFFER || msg_type == DHCP_ACK {
            2
        } else {
            1
        };
        let mut b = vec![0u8; 240];
        b[0] = op;
        b[1] = 1;
        b[2] = 6;
        b[4..8].copy_from_slice(&xid.to_be_bytes());
        b[10] = 0x80; // broadcast flag: answers are broadcast too
        b[16..20].copy_from_slice(&yiaddr.octets());
        b[28..34].copy_from_slice(&client.0);
        b[236..240].copy_from_slice(&[99, 130, 83, 99]);
        b.extend_from_slice(&[53, 1, msg_type, 255]);
        let ports = if op == 1 { (68, 67) } else { (67, 68) };
        udp(
            (from.0, MacAddr::BROADCAST),
            (from.1, Ipv4Addr::BROADCAST),
            ports,
            &b,
        )
    }

    /// The DHCP message type (option 53) and transaction id of a frame, if it is DHCP.
    pub fn dhcp_type(frame: &[u8]) -> Option<(u8, u32)> {
        let packet = SlicedPacket::from_ethernet(frame).ok()?;
        let Some(TransportSlice::Udp(udp)) = packet.transport else {
            return None;
        };
        if !matches!(udp.destination_port(), 67 | 68) {
            return None;
        }
        let b = udp.payload();
        if b.len() < 244 || b[236..240] != [99, 130, 83, 99] || b[240] != 53 {
            return None;
        }
        Some((b[242], u32::from_be_bytes([b[4], b[5], b[6], b[7]])))
    }
}
