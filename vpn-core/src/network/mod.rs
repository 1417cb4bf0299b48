//! [`Network`]: one overlay network (one virtual cluster's Ethernet segment) as a state
//! machine. It owns the peers, their sessions, the switch and the reassembly buffers.
//!
//! The driver feeds it input and polls it for output, quinn-proto style:
//! - `handle_local_frame`: an Ethernet frame read from the local port (the TAP);
//! - `handle_datagram`: a UDP datagram received from the WAN. A data message is opened in
//!   place and, when the switch sends it to the local port, handed straight back as a
//!   slice of the caller's buffer: the common receive path copies nothing;
//! - `handle_timeout`: the clock reached `poll_timeout`;
//! - `poll_transmit`: the next datagram to send, sealed into the caller's buffer;
//! - `poll_deliver`: the next frame for the local port that is not a plain received one
//!   (ARP replies of the switch, reassembled frames);
//! - `poll_event`: what happened, for logs and status.
//!
//! It never performs I/O, reads a clock or draws OS randomness: time is the `now` the
//! driver passes, randomness a ChaCha20 stream from the seed given to [`Network::new`].
//!
//! This file holds the types and the constructor; the methods live by kind, as the
//! driver meets them: `getters`, `peers` (mutators), `input` (`handle_*` for frames and
//! datagrams), `timers` (`poll_timeout`, `handle_timeout`, starting handshakes) and
//! `output` (`poll_*`).

mod getters;
mod input;
mod output;
mod peers;
mod timers;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

use crate::config::{ConfigError, INDEX_TAG_BITS, NetworkConfig};
use crate::cookie::{CookieSecret, MacKeys, mac2};
use crate::frag::Reassembler;
use crate::handshake::Noise;
use crate::key::PublicKey;
use crate::peer::Peer;
use crate::pool::{FramePool, FrameRef};
use crate::ratelimit::{SourceLimits, TokenBucket};
use crate::switch::Switch;
use crate::types::{MacAddr, NetworkId, PeerId, Port};
use crate::wire::{DATA_HEADER_LEN, DataHeader, INIT_LEN, WireError};

/// A datagram for the driver to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub destination: SocketAddr,
    /// Bytes written at the start of the caller's buffer.
    pub len: usize,
}

/// What happened, for the driver's logs and status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A handshake completed; `initiator` tells which side we were.
    SessionEstablished {
        peer: PeerId,
        initiator: bool,
    },
    /// The peer's last usable session expired and no new one was made in time.
    SessionExpired {
        peer: PeerId,
    },
    /// An authenticated message came from a new address.
    EndpointChanged {
        peer: PeerId,
        from: Option<SocketAddr>,
        to: SocketAddr,
    },
    MacMoved {
        mac: MacAddr,
        from: Port,
        to: Port,
    },
    MacTableFull {
        mac: MacAddr,
    },
}

/// Why a datagram was dropped. Every drop is also counted in [`Drops`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DatagramError {
    #[error("malformed: {0}")]
    Malformed(#[from] WireError),
    #[error("initiation for network {0}, this is another network")]
    WrongNetwork(NetworkId),
    #[error("handshake MAC does not verify")]
    BadMac,
    #[error("no session or handshake with index {0:#x}")]
    UnknownIndex(u32),
    #[error("replayed or too old counter")]
    Replay,
    #[error("authentication failed")]
    Auth,
    #[error("handshake failed to decrypt")]
    HandshakeFailed,
    #[error("handshake from a key that is not a peer of this network")]
    UnknownPeer,
    #[error("handshake initiation older than one already accepted")]
    ReplayedHandshake,
    #[error("handshake refused: over the rate limit")]
    RateLimited,
    #[error("under load: answered with a cookie")]
    UnderLoad,
    #[error("fragment could not be reassembled")]
    Reassembly,
}

/// Counters of dropped input, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drops {
    pub malformed: u64,
    pub wrong_network: u64,
    pub bad_mac: u64,
    pub unknown_index: u64,
    pub replay: u64,
    pub auth: u64,
    pub handshake_failed: u64,
    pub unknown_peer: u64,
    pub replayed_handshake: u64,
    pub rate_limited: u64,
    pub under_load: u64,
    pub reassembly: u64,
    /// Local frames longer than the overlay carries.
    pub oversize: u64,
    /// Frames dropped because a transmit or wait queue was full.
    pub queue_full: u64,
    /// Frames for a peer whose address is unknown and that has no session.
    pub no_endpoint: u64,
    /// Frames the switch decided not to forward (its own stats say why).
    pub switched: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetworkStats {
    pub rx_datagrams: u64,
    pub rx_bytes: u64,
    pub tx_datagrams: u64,
    pub tx_bytes: u64,
    pub local_frames: u64,
    pub frames_delivered: u64,
    pub keepalives_sent: u64,
    pub fragments_sent: u64,
    pub handshakes_initiated: u64,
    /// Initiations whose Diffie-Hellman work was done (bounded by the rate limits).
    pub initiations_processed: u64,
    pub sessions_established: u64,
    pub cookie_replies_sent: u64,
    pub drops: Drops,
}

#[derive(Clone, Copy)]
enum TxItem {
    Frame {
        peer: PeerId,
        frame: FrameRef,
        /// Set once the first fragment is sent: the session and first counter the
        /// remaining fragments must use.
        fragments: Option<(u32, u64, u8)>,
    },
    Keepalive {
        peer: PeerId,
    },
}

/// A handshake or cookie message waiting to be sent.
struct Control {
    destination: SocketAddr,
    len: usize,
    bytes: [u8; INIT_LEN],
}

pub struct Network {
    id: NetworkId,
    config: NetworkConfig,
    noise: Noise,
    /// Keys of our own public key: to check the mac1 of messages sent to us and to seal
    /// our cookie replies.
    own_mac_keys: MacKeys,
    cookie_secret: CookieSecret,
    rng: ChaCha20Rng,
    start: Instant,
    /// The latest `now` any call brought: `poll_timeout` computes deadlines against it.
    now_hint: Instant,
    unix_at_start: Duration,
    last_timestamp: u64,
    next_peer_id: u32,
    peers: BTreeMap<PeerId, Peer>,
    by_key: HashMap<PublicKey, PeerId, ahash::RandomState>,
    by_index: HashMap<u32, PeerId, ahash::RandomState>,
    switch: Switch,
    reassembly: Reassembler,
    pool: FramePool,
    transmit: VecDeque<TxItem>,
    control: VecDeque<Control>,
    deliver: VecDeque<FrameRef>,
    events: VecDeque<Event>,
    handshake_budget: TokenBucket,
    cookie_lane: TokenBucket,
    cookie_replies: TokenBucket,
    sources: SourceLimits,
    stats: NetworkStats,
}

/// Handshake and cookie messages queued at once; more are dropped (they are retried).
const CONTROL_QUEUE: usize = 256;

impl Network {
    /// A network with no peers yet. `unix_time` is the wall-clock time (since the Unix
    /// epoch) at `now`; it only orders this host's handshake initiations, so a peer can
    /// tell a replayed one from a new one even across restarts. `seed` seeds every random
    /// choice the network makes.
    pub fn new(
        config: NetworkConfig,
        now: Instant,
        unix_time: Duration,
        seed: [u8; 32],
    ) -> Result<Network, ConfigError> {
        config.validate()?;
        let mut rng = ChaCha20Rng::from_seed(seed);
        let mut hasher_seed = || {
            let mut s = [0u64; 4];
            for x in &mut s {
                *x = rng.next_u64();
            }
            s
        };
        let [a, b, c, d] = hasher_seed();
        let hasher = ahash::RandomState::with_seeds(a, b, c, d);
        let switch = Switch::new(config.switch.clone(), hasher_seed());
        let noise = Noise::new(
            config.id,
            config.cipher,
            config.private_key.clone(),
            config.psk.as_ref(),
        );
        let limits = &config.limits;
        Ok(Network {
            id: config.id,
            own_mac_keys: MacKeys::of(noise.public_key()),
            noise,
            cookie_secret: CookieSecret::new(),
            start: now,
            now_hint: now,
            unix_at_start: unix_time,
            last_timestamp: 0,
            next_peer_id: 1,
            peers: BTreeMap::new(),
            by_key: HashMap::with_hasher(hasher.clone()),
            by_index: HashMap::with_capacity_and_hasher(64, hasher.clone()),
            switch,
            reassembly: Reassembler::new(limits.reassembly_slots, limits.reassembly_timeout),
            pool: FramePool::new(limits.transmit_frames),
            transmit: VecDeque::with_capacity(limits.transmit_frames),
            control: VecDeque::with_capacity(CONTROL_QUEUE),
            deliver: VecDeque::with_capacity(64),
            events: VecDeque::with_capacity(limits.events.min(1024)),
            handshake_budget: TokenBucket::new(
                limits.handshakes_per_second,
                limits.handshake_burst,
            ),
            cookie_lane: TokenBucket::new(limits.handshakes_per_second, limits.handshake_burst),
            cookie_replies: TokenBucket::new(
                limits.cookie_replies_per_second,
                limits.cookie_replies_per_second,
            ),
            sources: SourceLimits::new(
                limits.handshakes_per_source_per_second,
                limits.cookie_replies_per_source_per_second,
                limits.sources_tracked,
                hasher,
            ),
            rng,
            stats: NetworkStats::default(),
            config,
        })
    }
}

/// Why a peer could not be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    #[error("peer {0} is already configured")]
    Duplicate(PublicKey),
    #[error("a network cannot have its own key as a peer")]
    OwnKey,
}

/// The ids of all peers, copied out so the peers can be mutated while iterating. Small
/// networks (the usual case) need no allocation.
enum PeerIds {
    Inline([PeerId; 16], usize),
    Heap(Vec<PeerId>),
}

impl PeerIds {
    fn of(peers: &BTreeMap<PeerId, Peer>) -> PeerIds {
        if peers.len() <= 16 {
            let mut ids = [PeerId(0); 16];
            for (slot, id) in ids.iter_mut().zip(peers.keys()) {
                *slot = *id;
            }
            PeerIds::Inline(ids, peers.len())
        } else {
            PeerIds::Heap(peers.keys().copied().collect())
        }
    }

    fn iter(&self) -> impl Iterator<Item = PeerId> + '_ {
        let slice = match self {
            PeerIds::Inline(ids, n) => &ids[..*n],
            PeerIds::Heap(ids) => &ids[..],
        };
        slice.iter().copied()
    }
}

#[inline]
fn write_header(buf: &mut [u8], header: &DataHeader) {
    let out: &mut [u8; DATA_HEADER_LEN] =
        (&mut buf[..DATA_HEADER_LEN]).try_into().expect("16 bytes");
    header.write(out);
}

/// Fills mac1 (and mac2 when a cookie is held) of a handshake message; returns mac1.
fn finish_macs(
    msg: &mut [u8],
    mac1_at: usize,
    keys: &MacKeys,
    cookie: Option<&[u8; 16]>,
) -> [u8; 16] {
    let mac1 = keys.mac1(&msg[..mac1_at]);
    msg[mac1_at..mac1_at + 16].copy_from_slice(&mac1);
    let mac2_at = mac1_at + 16;
    let m2 = cookie.map(|c| mac2(c, &msg[..mac2_at])).unwrap_or([0; 16]);
    msg[mac2_at..mac2_at + 16].copy_from_slice(&m2);
    mac1
}

fn random32(rng: &mut ChaCha20Rng) -> [u8; 32] {
    let mut out = [0u8; 32];
    rng.fill_bytes(&mut out);
    out
}

/// A session index that is free, carrying this network's tag in its top bits.
fn new_index(
    rng: &mut ChaCha20Rng,
    used: &HashMap<u32, PeerId, ahash::RandomState>,
    tag: u16,
) -> u32 {
    let shift = 32 - INDEX_TAG_BITS;
    loop {
        let index = (u32::from(tag) << shift) | (rng.next_u32() & ((1 << shift) - 1));
        if !used.contains_key(&index) {
            return index;
        }
    }
}

/// Updates a peer's endpoint after an authenticated message from `from`.
fn roam(events: &mut VecDeque<Event>, cap: usize, peer: &mut Peer, from: SocketAddr) {
    if peer.endpoint != Some(from) {
        let old = peer.endpoint.replace(from);
        let event = Event::EndpointChanged {
            peer: peer.id,
            from: old,
            to: from,
        };
        push_event(events, cap, event);
    }
}

fn push_event(events: &mut VecDeque<Event>, cap: usize, event: Event) {
    if events.len() >= cap.max(1) {
        events.pop_front();
    }
    events.push_back(event);
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("id", &self.id)
            .field("peers", &self.peers.len())
            .finish_non_exhaustive()
    }
}
