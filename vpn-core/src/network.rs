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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

use crate::config::{ConfigError, INDEX_TAG_BITS, NetworkConfig};
use crate::cookie::{CookieSecret, MacKeys, constant_time_eq, mac2};
use crate::frag::{FragmentPlan, FrameKey, Reassembler};
use crate::handshake::Noise;
use crate::key::PublicKey;
use crate::peer::{Peer, PeerConfig, PeerInfo, PendingHandshake, TimerAction};
use crate::pool::{FramePool, FrameRef};
use crate::ratelimit::{PerSourceLimiter, TokenBucket};
use crate::session::{OpenError, Session};
use crate::switch::{Forward, Switch, SwitchEvent, SwitchStats};
use crate::types::{MacAddr, NetworkId, PeerId, Port};
use crate::wire::{
    self, COOKIE_REPLY_LEN, CookieReply, DATA_HEADER_LEN, DATA_OVERHEAD, DataHeader, DataKind,
    HandshakeInit, HandshakeResponse, INIT_LEN, MAX_FRAME_LEN, Message, RESPONSE_LEN, WireError,
};

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
    per_source: PerSourceLimiter,
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
            per_source: PerSourceLimiter::new(
                limits.handshakes_per_source_per_second,
                limits.handshakes_per_source_per_second,
                4096,
                hasher,
            ),
            rng,
            stats: NetworkStats::default(),
            config,
        })
    }

    // ----- getters -------------------------------------------------------------------

    pub fn id(&self) -> NetworkId {
        self.id
    }

    pub fn public_key(&self) -> PublicKey {
        *self.noise.public_key()
    }

    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    pub fn stats(&self) -> &NetworkStats {
        &self.stats
    }

    pub fn switch(&self) -> &Switch {
        &self.switch
    }

    pub fn switch_stats(&self) -> &SwitchStats {
        self.switch.stats()
    }

    pub fn reassembly(&self) -> &Reassembler {
        &self.reassembly
    }

    pub fn peer(&self, id: PeerId, now: Instant) -> Option<PeerInfo> {
        self.peers.get(&id).map(|p| p.info(now))
    }

    pub fn peer_by_key(&self, key: &PublicKey) -> Option<PeerId> {
        self.by_key.get(key).copied()
    }

    pub fn peers(&self, now: Instant) -> impl Iterator<Item = PeerInfo> + '_ {
        self.peers.values().map(move |p| p.info(now))
    }

    /// The largest datagram this network sends; `poll_transmit` needs a buffer this big.
    pub fn max_datagram_len(&self) -> usize {
        usize::from(self.config.path_mtu)
    }

    /// Frames held in the network's buffers (queued for peers, or for local delivery).
    pub fn buffered_frames(&self) -> usize {
        self.pool.in_use()
    }

    // ----- peers ---------------------------------------------------------------------

    /// Adds a peer and, if its endpoint is known, starts a handshake with it.
    pub fn add_peer(&mut self, now: Instant, config: PeerConfig) -> Result<PeerId, PeerError> {
        self.touch(now);
        if config.public_key == self.public_key() {
            return Err(PeerError::OwnKey);
        }
        if self.by_key.contains_key(&config.public_key) {
            return Err(PeerError::Duplicate(config.public_key));
        }
        let id = PeerId(self.next_peer_id);
        self.next_peer_id += 1;
        self.by_key.insert(config.public_key, id);
        let peer = Peer::new(id, config, self.config.limits.queued_frames_per_peer);
        self.peers.insert(id, peer);
        if self.peers[&id].endpoint.is_some() {
            self.initiate(now, id);
        }
        Ok(id)
    }

    /// Removes a peer with its sessions, queued frames and learned MAC addresses.
    pub fn remove_peer(&mut self, id: PeerId) -> bool {
        let Some(mut peer) = self.peers.remove(&id) else {
            return false;
        };
        self.by_key.remove(&peer.public_key);
        for s in peer.sessions() {
            self.by_index.remove(&s.local_index);
        }
        if let Some(h) = &peer.handshake {
            self.by_index.remove(&h.local_index);
        }
        while let Some(f) = peer.waiting.pop_front() {
            self.pool.release(f);
        }
        let pool = &mut self.pool;
        self.transmit.retain(|item| match item {
            TxItem::Frame { peer: p, frame, .. } if *p == id => {
                pool.release(*frame);
                false
            }
            TxItem::Keepalive { peer: p } => *p != id,
            _ => true,
        });
        self.switch.forget_peer(id);
        self.reassembly.forget_peer(id);
        true
    }

    /// Sets (or forgets) where a peer is reached.
    pub fn set_endpoint(&mut self, now: Instant, id: PeerId, endpoint: Option<SocketAddr>) -> bool {
        let Some(peer) = self.peers.get_mut(&id) else {
            return false;
        };
        peer.endpoint = endpoint;
        if endpoint.is_some() && !peer.has_sending_session(now) {
            self.initiate(now, id);
        }
        true
    }

    // ----- input ---------------------------------------------------------------------

    /// An Ethernet frame from the local port.
    pub fn handle_local_frame(&mut self, now: Instant, frame: &[u8]) {
        self.touch(now);
        self.stats.local_frames += 1;
        if frame.len() > MAX_FRAME_LEN {
            self.stats.drops.oversize += 1;
            return;
        }
        let forward = self.switch.forward(now, Port::Local, frame);
        self.dispatch_local(now, frame, forward);
    }

    /// The fast path for a frame from the local port that the caller laid out for sealing
    /// in place: the frame is `buf[DATA_HEADER_LEN..DATA_HEADER_LEN + len]` and `buf`
    /// holds at least [`wire::TAG_LEN`] more bytes after it. When the frame goes to one
    /// peer, whole, on a usable session, with nothing queued ahead of it, it is sealed
    /// where it is and the datagram, `buf[..transmit.len]`, is returned to be sent now:
    /// no copy. Otherwise it is handled exactly as [`Network::handle_local_frame`]
    /// handles it (its datagrams come from `poll_transmit`) and `None` is returned.
    pub fn handle_local_frame_in_place(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        len: usize,
    ) -> Option<Transmit> {
        self.touch(now);
        self.stats.local_frames += 1;
        if len > MAX_FRAME_LEN || buf.len() < DATA_OVERHEAD + len {
            self.stats.drops.oversize += 1;
            return None;
        }
        let forward = self.switch.forward(
            now,
            Port::Local,
            &buf[DATA_HEADER_LEN..DATA_HEADER_LEN + len],
        );
        if let Forward::Peer(p) = forward
            && self.transmit.is_empty()
            && let Some(t) = self.seal_in_place(now, p, buf, len)
        {
            self.drain_switch_events();
            return Some(t);
        }
        self.dispatch_local(now, &buf[DATA_HEADER_LEN..DATA_HEADER_LEN + len], forward);
        None
    }

    /// Seals a frame laid out in `buf` for peer `id`, if it can go now, whole.
    fn seal_in_place(
        &mut self,
        now: Instant,
        id: PeerId,
        buf: &mut [u8],
        len: usize,
    ) -> Option<Transmit> {
        let path_mtu = usize::from(self.config.path_mtu);
        let peer = self.peers.get_mut(&id)?;
        let endpoint = peer.endpoint?;
        let ip_overhead = if endpoint.is_ipv4() { 28 } else { 48 };
        if len > path_mtu - ip_overhead - DATA_OVERHEAD {
            return None;
        }
        let session = peer.sending_session(now)?;
        let counter = session.take_counters(1)?;
        let header = DataHeader {
            kind: DataKind::Frame,
            receiver: session.remote_index,
            counter,
        };
        let total = DATA_OVERHEAD + len;
        write_header(buf, &header);
        session.seal(counter, &mut buf[..total]);
        peer.last_sent = Some(now);
        peer.last_sent_data = Some(now);
        peer.stats.tx_packets += 1;
        peer.stats.tx_bytes += total as u64;
        Some(self.sent(endpoint, total))
    }

    /// Queues a local frame where the switch sent it.
    fn dispatch_local(&mut self, now: Instant, frame: &[u8], forward: Forward) {
        match forward {
            Forward::Peer(p) => {
                if let Some(f) = self.store(frame) {
                    self.send_to(now, p, f);
                }
            }
            Forward::FloodPeers => {
                if self.peers.is_empty() {
                    return;
                }
                let Some(f) = self.store(frame) else { return };
                let ids: PeerIds = PeerIds::of(&self.peers);
                for (i, p) in ids.iter().enumerate() {
                    if i > 0 {
                        self.pool.retain(f);
                    }
                    self.send_to(now, p, f);
                }
            }
            Forward::ArpReply(reply) => {
                if let Some(f) = self.store(&reply) {
                    self.deliver.push_back(f);
                }
            }
            Forward::Local | Forward::Drop(_) => self.stats.drops.switched += 1,
        }
        self.drain_switch_events();
    }

    fn store(&mut self, frame: &[u8]) -> Option<FrameRef> {
        let f = self.pool.insert(frame);
        if f.is_none() {
            self.stats.drops.queue_full += 1;
        }
        f
    }

    /// Queues a stored frame (one reference, consumed) for a peer.
    fn send_to(&mut self, now: Instant, id: PeerId, frame: FrameRef) {
        let timers = &self.config.timers;
        let Some(peer) = self.peers.get_mut(&id) else {
            self.pool.release(frame);
            return;
        };
        peer.last_sent = Some(now);
        peer.last_sent_data = Some(now);
        if peer.has_sending_session(now) {
            if self.transmit.len() >= self.config.limits.transmit_frames {
                self.stats.drops.queue_full += 1;
                self.pool.release(frame);
                return;
            }
            self.transmit.push_back(TxItem::Frame {
                peer: id,
                frame,
                fragments: None,
            });
            return;
        }
        if peer.endpoint.is_none() && peer.handshake.is_none() {
            self.stats.drops.no_endpoint += 1;
        }
        if peer.waiting.len() >= self.config.limits.queued_frames_per_peer
            && let Some(oldest) = peer.waiting.pop_front()
        {
            self.pool.release(oldest);
            self.stats.drops.queue_full += 1;
        }
        peer.waiting.push_back(frame);
        // Outgoing data starts a handshake at once (at most once per minimum interval),
        // whatever the retry backoff says: traffic resumes as soon as the path does.
        let ready = peer
            .last_initiation_sent
            .is_none_or(|t| now.saturating_duration_since(t) >= timers.handshake_min_interval);
        if ready && peer.endpoint.is_some() {
            self.initiate(now, id);
        }
    }

    /// A datagram from the WAN. Returns the frame to deliver to the local port when the
    /// datagram carried one (decrypted in place: a slice of `datagram`).
    pub fn handle_datagram<'b>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &'b mut [u8],
    ) -> Result<Option<&'b [u8]>, DatagramError> {
        self.touch(now);
        self.stats.rx_datagrams += 1;
        self.stats.rx_bytes += datagram.len() as u64;
        let result = match wire::parse(datagram) {
            Err(e) => Err(DatagramError::Malformed(e)),
            Ok(Message::HandshakeInit(m)) => self.handle_initiation(now, from, m).map(|_| None),
            Ok(Message::HandshakeResponse(m)) => self.handle_response(now, from, m).map(|_| None),
            Ok(Message::CookieReply(m)) => self.handle_cookie_reply(now, m).map(|_| None),
            Ok(Message::Data(header)) => self.handle_data(now, from, header, datagram),
        };
        if let Err(e) = &result {
            self.count_drop(e);
        }
        self.drain_switch_events();
        result
    }

    fn count_drop(&mut self, e: &DatagramError) {
        let d = &mut self.stats.drops;
        *match e {
            DatagramError::Malformed(_) => &mut d.malformed,
            DatagramError::WrongNetwork(_) => &mut d.wrong_network,
            DatagramError::BadMac => &mut d.bad_mac,
            DatagramError::UnknownIndex(_) => &mut d.unknown_index,
            DatagramError::Replay => &mut d.replay,
            DatagramError::Auth => &mut d.auth,
            DatagramError::HandshakeFailed => &mut d.handshake_failed,
            DatagramError::UnknownPeer => &mut d.unknown_peer,
            DatagramError::ReplayedHandshake => &mut d.replayed_handshake,
            DatagramError::RateLimited => &mut d.rate_limited,
            DatagramError::UnderLoad => &mut d.under_load,
            DatagramError::Reassembly => &mut d.reassembly,
        } += 1;
    }

    fn handle_initiation(
        &mut self,
        now: Instant,
        from: SocketAddr,
        init: HandshakeInit<'_>,
    ) -> Result<(), DatagramError> {
        if init.network_id() != self.id {
            return Err(DatagramError::WrongNetwork(init.network_id()));
        }
        let bytes = init.bytes();
        if !self
            .own_mac_keys
            .verify_mac1(&bytes[..HandshakeInit::MAC1_AT], init.mac1())
        {
            return Err(DatagramError::BadMac);
        }
        if !self.handshake_budget.try_take(now) {
            // Under load: only initiators that proved their address may cost us work.
            let rng = &mut self.rng;
            let cookie = self.cookie_secret.cookie_for(now, || random32(rng), from);
            let expected = mac2(&cookie, &bytes[..HandshakeInit::MAC2_AT]);
            if !constant_time_eq(&expected, init.mac2()) {
                if self.cookie_replies.try_take(now) {
                    self.send_cookie_reply(from, init, &cookie);
                }
                return Err(DatagramError::UnderLoad);
            }
            if !self.per_source.try_take(now, from.ip()) || !self.cookie_lane.try_take(now) {
                return Err(DatagramError::RateLimited);
            }
        }
        self.stats.initiations_processed += 1;
        let read = self
            .noise
            .read_initiation(random32(&mut self.rng), init.noise())
            .map_err(|_| DatagramError::HandshakeFailed)?;
        let peer_id = *self
            .by_key
            .get(&read.remote)
            .ok_or(DatagramError::UnknownPeer)?;
        let peer = self.peers.get_mut(&peer_id).expect("indexed peer");
        if peer.last_timestamp.is_some_and(|t| read.timestamp <= t) {
            return Err(DatagramError::ReplayedHandshake);
        }
        peer.last_timestamp = Some(read.timestamp);

        let index = new_index(&mut self.rng, &self.by_index, self.config.index_tag);
        let mut msg = [0u8; INIT_LEN];
        HandshakeResponse::write_header(&mut msg, index, init.sender_index());
        let keys = self
            .noise
            .respond(
                read,
                &mut msg[HandshakeResponse::NOISE_AT..HandshakeResponse::MAC1_AT],
            )
            .map_err(|_| DatagramError::HandshakeFailed)?;
        finish_macs(
            &mut msg[..RESPONSE_LEN],
            HandshakeResponse::MAC1_AT,
            &peer.mac_keys,
            peer.fresh_cookie(now),
        );

        let session = Session::new(
            self.config.cipher,
            keys,
            false,
            index,
            init.sender_index(),
            now,
            self.config.timers.reject_after_time,
        );
        if let Some(old) = peer.next.replace(session) {
            self.by_index.remove(&old.local_index);
        }
        self.by_index.insert(index, peer_id);
        // The peer's initiation crossed ours. One side must yield or both would wait for
        // a confirmation of the session they answered: the smaller public key yields.
        if peer.handshake.is_some() && *self.noise.public_key() < peer.public_key {
            let ours = peer.handshake.take().expect("checked");
            self.by_index.remove(&ours.local_index);
            peer.retry_at = None;
        }
        // The session counts as established once the initiator confirms it by using it.
        peer.last_received = Some(now);
        roam(&mut self.events, self.config.limits.events, peer, from);
        self.push_control(from, &msg[..RESPONSE_LEN]);
        Ok(())
    }

    fn send_cookie_reply(&mut self, to: SocketAddr, init: HandshakeInit<'_>, cookie: &[u8; 16]) {
        let mut nonce = [0u8; 12];
        self.rng.fill_bytes(&mut nonce);
        let mut out = [0u8; COOKIE_REPLY_LEN];
        self.own_mac_keys.seal_cookie_reply(
            init.sender_index(),
            nonce,
            init.mac1(),
            cookie,
            &mut out,
        );
        self.stats.cookie_replies_sent += 1;
        self.push_control(to, &out);
    }

    fn handle_response(
        &mut self,
        now: Instant,
        from: SocketAddr,
        resp: HandshakeResponse<'_>,
    ) -> Result<(), DatagramError> {
        let index = resp.receiver_index();
        let peer_id = *self
            .by_index
            .get(&index)
            .ok_or(DatagramError::UnknownIndex(index))?;
        let bytes = resp.bytes();
        if !self
            .own_mac_keys
            .verify_mac1(&bytes[..HandshakeResponse::MAC1_AT], resp.mac1())
        {
            return Err(DatagramError::BadMac);
        }
        let peer = self.peers.get_mut(&peer_id).expect("indexed peer");
        let pending = peer
            .handshake
            .as_mut()
            .filter(|h| h.local_index == index)
            .ok_or(DatagramError::UnknownIndex(index))?;
        let keys = Noise::read_response(&mut pending.state, resp.noise())
            .map_err(|_| DatagramError::HandshakeFailed)?;
        peer.handshake = None;
        peer.retry_at = None;
        peer.backoff = Duration::ZERO;
        let session = Session::new(
            self.config.cipher,
            keys,
            true,
            index,
            resp.sender_index(),
            now,
            self.config.timers.reject_after_time,
        );
        if let Some(old) = peer.install(session) {
            self.by_index.remove(&old.local_index);
        }
        peer.last_received = Some(now);
        peer.last_handshake = Some(now);
        peer.stats.handshakes += 1;
        self.stats.sessions_established += 1;
        roam(&mut self.events, self.config.limits.events, peer, from);
        push_event(
            &mut self.events,
            self.config.limits.events,
            Event::SessionEstablished {
                peer: peer_id,
                initiator: true,
            },
        );
        // Waiting frames go now; if there are none, a keepalive confirms the session so
        // the responder starts using it.
        if !self.flush_waiting(now, peer_id) {
            self.queue_keepalive(now, peer_id);
        }
        Ok(())
    }

    fn handle_cookie_reply(
        &mut self,
        now: Instant,
        reply: CookieReply<'_>,
    ) -> Result<(), DatagramError> {
        let index = reply.receiver_index();
        let peer_id = *self
            .by_index
            .get(&index)
            .ok_or(DatagramError::UnknownIndex(index))?;
        let peer = self.peers.get_mut(&peer_id).expect("indexed peer");
        let pending = peer
            .handshake
            .as_ref()
            .filter(|h| h.local_index == index)
            .ok_or(DatagramError::UnknownIndex(index))?;
        let cookie = peer
            .mac_keys
            .open_cookie_reply(&reply, &pending.mac1)
            .ok_or(DatagramError::Auth)?;
        peer.cookie = Some((cookie, now));
        Ok(())
    }

    fn handle_data<'b>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        header: DataHeader,
        datagram: &'b mut [u8],
    ) -> Result<Option<&'b [u8]>, DatagramError> {
        let index = header.receiver;
        let peer_id = *self
            .by_index
            .get(&index)
            .ok_or(DatagramError::UnknownIndex(index))?;
        let peer = self.peers.get_mut(&peer_id).expect("indexed peer");
        let (session, is_next) = peer
            .session_mut(index)
            .ok_or(DatagramError::UnknownIndex(index))?;
        let len = session
            .open(now, header.counter, datagram)
            .map_err(|e| match e {
                OpenError::Replay(_) | OpenError::Exhausted => DatagramError::Replay,
                OpenError::Auth => DatagramError::Auth,
            })?;
        // Authenticated from here on.
        peer.last_received = Some(now);
        if header.kind != DataKind::Keepalive {
            peer.last_received_data = Some(now);
        }
        peer.stats.rx_packets += 1;
        peer.stats.rx_bytes += datagram.len() as u64;
        roam(&mut self.events, self.config.limits.events, peer, from);
        if is_next {
            // The initiator used the session we answered: it is confirmed.
            let next = peer.next.take().expect("next session");
            if let Some(old) = peer.install(next) {
                self.by_index.remove(&old.local_index);
            }
            peer.last_handshake = Some(now);
            peer.stats.handshakes += 1;
            self.stats.sessions_established += 1;
            push_event(
                &mut self.events,
                self.config.limits.events,
                Event::SessionEstablished {
                    peer: peer_id,
                    initiator: false,
                },
            );
            self.flush_waiting(now, peer_id);
        }
        let payload = DATA_HEADER_LEN..DATA_HEADER_LEN + len;
        match header.kind {
            DataKind::Keepalive => Ok(None),
            DataKind::Frame => {
                let datagram: &'b [u8] = datagram;
                let frame = &datagram[payload];
                match self.switch.forward(now, Port::Peer(peer_id), frame) {
                    Forward::Local => {
                        self.stats.frames_delivered += 1;
                        Ok(Some(frame))
                    }
                    _ => {
                        self.stats.drops.switched += 1;
                        Ok(None)
                    }
                }
            }
            DataKind::Fragment(info) => {
                let key = FrameKey {
                    peer: peer_id,
                    session: index,
                    first_counter: header.counter.wrapping_sub(u64::from(info.index)),
                };
                let frame = match self.reassembly.insert(now, key, info, &datagram[payload]) {
                    Ok(Some(frame)) => frame,
                    Ok(None) => return Ok(None),
                    Err(_) => return Err(DatagramError::Reassembly),
                };
                match self.switch.forward(now, Port::Peer(peer_id), frame) {
                    Forward::Local => match self.pool.insert(frame) {
                        Some(f) => self.deliver.push_back(f),
                        None => self.stats.drops.queue_full += 1,
                    },
                    _ => self.stats.drops.switched += 1,
                }
                Ok(None)
            }
        }
    }

    /// Moves a peer's waiting frames to the transmit queue. True if there were any.
    fn flush_waiting(&mut self, now: Instant, id: PeerId) -> bool {
        let Some(peer) = self.peers.get_mut(&id) else {
            return false;
        };
        if peer.waiting.is_empty() {
            return false;
        }
        peer.last_sent = Some(now);
        while let Some(frame) = peer.waiting.pop_front() {
            if self.transmit.len() >= self.config.limits.transmit_frames {
                self.pool.release(frame);
                self.stats.drops.queue_full += 1;
                continue;
            }
            self.transmit.push_back(TxItem::Frame {
                peer: id,
                frame,
                fragments: None,
            });
        }
        true
    }

    fn queue_keepalive(&mut self, now: Instant, id: PeerId) {
        if let Some(peer) = self.peers.get_mut(&id) {
            peer.last_sent = Some(now);
            self.transmit.push_back(TxItem::Keepalive { peer: id });
        }
    }

    // ----- timers --------------------------------------------------------------------

    /// When `handle_timeout` must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let now = self.now_hint;
        let peers = self
            .peers
            .values()
            .filter_map(|p| p.deadline(now, &self.config.timers).map(|(at, _)| at));
        peers
            .chain(self.switch.next_expiry())
            .chain(self.reassembly.next_expiry())
            .min()
    }

    fn touch(&mut self, now: Instant) {
        self.now_hint = self.now_hint.max(now);
    }

    /// Runs every timer that is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.touch(now);
        let ids = PeerIds::of(&self.peers);
        for id in ids.iter() {
            // A peer may have several timers due; handle them until none is.
            for _ in 0..4 {
                let Some(peer) = self.peers.get(&id) else {
                    break;
                };
                match peer.deadline(now, &self.config.timers) {
                    Some((at, action)) if at <= now => self.run_timer(now, id, action),
                    _ => break,
                }
            }
        }
        if self.switch.next_expiry().is_some_and(|t| t <= now) {
            self.switch.expire(now);
        }
        if self.reassembly.next_expiry().is_some_and(|t| t <= now) {
            self.reassembly.expire(now);
        }
        self.drain_switch_events();
    }

    fn run_timer(&mut self, now: Instant, id: PeerId, action: TimerAction) {
        match action {
            TimerAction::Handshake if self.pending_handshake_is_moot(now, id) => {
                // A session newer than our initiation exists (we answered the peer's
                // own): retrying would only make another one.
                let peer = self.peers.get_mut(&id).expect("timer of a known peer");
                let ours = peer.handshake.take().expect("moot implies pending");
                self.by_index.remove(&ours.local_index);
                peer.retry_at = None;
                peer.backoff = Duration::ZERO;
            }
            TimerAction::Handshake => self.initiate(now, id),
            TimerAction::Keepalive => self.queue_keepalive(now, id),
            TimerAction::Expire => self.expire_sessions(now, id),
        }
    }

    fn pending_handshake_is_moot(&self, now: Instant, id: PeerId) -> bool {
        let Some(peer) = self.peers.get(&id) else {
            return false;
        };
        let (Some(_), Some(sent)) = (&peer.handshake, peer.last_initiation_sent) else {
            return false;
        };
        peer.has_sending_session(now)
            && peer.current.as_ref().is_some_and(|c| c.established >= sent)
    }

    fn expire_sessions(&mut self, now: Instant, id: PeerId) {
        let reject = self.config.timers.reject_after_time;
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let had_current = peer.current.is_some();
        let [previous0, previous1] = &mut peer.previous;
        for slot in [&mut peer.current, previous0, previous1, &mut peer.next] {
            if slot
                .as_ref()
                .is_some_and(|s| now.saturating_duration_since(s.established) >= reject)
            {
                let s = slot.take().expect("checked");
                self.by_index.remove(&s.local_index);
            }
        }
        if had_current && peer.current.is_none() {
            push_event(
                &mut self.events,
                self.config.limits.events,
                Event::SessionExpired { peer: id },
            );
        }
    }

    /// Sends a (new) handshake initiation to a peer.
    fn initiate(&mut self, now: Instant, id: PeerId) {
        let timers = &self.config.timers;
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let Some(endpoint) = peer.endpoint else {
            return;
        };
        if let Some(old) = peer.handshake.take() {
            self.by_index.remove(&old.local_index);
        }
        let index = new_index(&mut self.rng, &self.by_index, self.config.index_tag);
        let timestamp = {
            let t = (self.unix_at_start + now.saturating_duration_since(self.start)).as_nanos();
            let t = u64::try_from(t)
                .unwrap_or(u64::MAX)
                .max(self.last_timestamp + 1);
            self.last_timestamp = t;
            t
        };
        let mut msg = [0u8; INIT_LEN];
        HandshakeInit::write_header(&mut msg, self.id, index);
        let state = match self.noise.initiate(
            random32(&mut self.rng),
            &peer.public_key,
            timestamp,
            &mut msg[HandshakeInit::NOISE_AT..HandshakeInit::MAC1_AT],
        ) {
            Ok(state) => state,
            // Only an invalid peer key can fail here; such a peer is never reachable.
            Err(_) => return,
        };
        let mac1 = finish_macs(
            &mut msg,
            HandshakeInit::MAC1_AT,
            &peer.mac_keys,
            peer.fresh_cookie(now),
        );
        peer.handshake = Some(PendingHandshake {
            state,
            local_index: index,
            mac1,
        });
        self.by_index.insert(index, id);
        peer.backoff = if peer.backoff.is_zero() {
            timers.handshake_retry_initial
        } else {
            (peer.backoff * 2).min(timers.handshake_retry_max)
        };
        let jitter_ns = self.rng.next_u64() % (peer.backoff.as_nanos() as u64 / 3 + 1);
        peer.retry_at = Some(now + peer.backoff + Duration::from_nanos(jitter_ns));
        peer.last_initiation_sent = Some(now);
        self.stats.handshakes_initiated += 1;
        self.push_control(endpoint, &msg);
    }

    fn push_control(&mut self, destination: SocketAddr, bytes: &[u8]) {
        if self.control.len() >= CONTROL_QUEUE {
            self.stats.drops.queue_full += 1;
            return;
        }
        let mut c = Control {
            destination,
            len: bytes.len(),
            bytes: [0; INIT_LEN],
        };
        c.bytes[..bytes.len()].copy_from_slice(bytes);
        self.control.push_back(c);
    }

    // ----- output --------------------------------------------------------------------

    /// The next datagram to send, written to the front of `buf` (which must hold
    /// [`Network::max_datagram_len`] bytes). Data is sealed here, as it leaves.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        self.touch(now);
        if let Some(c) = self.control.pop_front() {
            buf[..c.len].copy_from_slice(&c.bytes[..c.len]);
            return Some(self.sent(c.destination, c.len));
        }
        loop {
            let item = self.transmit.front_mut()?;
            match *item {
                TxItem::Keepalive { peer } => {
                    self.transmit.pop_front();
                    if let Some(t) = self.seal_keepalive(now, peer, buf) {
                        return Some(t);
                    }
                }
                TxItem::Frame {
                    peer,
                    frame,
                    fragments,
                } => match self.seal_frame(now, peer, frame, fragments, buf) {
                    Sealed::Done(t) => {
                        self.transmit.pop_front();
                        self.pool.release(frame);
                        return Some(t);
                    }
                    Sealed::Fragment(t, progress) => {
                        if let Some(TxItem::Frame { fragments, .. }) = self.transmit.front_mut() {
                            *fragments = Some(progress);
                        }
                        return Some(t);
                    }
                    Sealed::Requeued => {
                        self.transmit.pop_front();
                    }
                    Sealed::Dropped => {
                        self.transmit.pop_front();
                        self.pool.release(frame);
                    }
                },
            }
        }
    }

    fn sent(&mut self, destination: SocketAddr, len: usize) -> Transmit {
        self.stats.tx_datagrams += 1;
        self.stats.tx_bytes += len as u64;
        Transmit { destination, len }
    }

    fn seal_keepalive(&mut self, now: Instant, id: PeerId, buf: &mut [u8]) -> Option<Transmit> {
        let peer = self.peers.get_mut(&id)?;
        let endpoint = peer.endpoint?;
        let session = peer.sending_session(now)?;
        let counter = session.take_counters(1)?;
        let header = DataHeader {
            kind: DataKind::Keepalive,
            receiver: session.remote_index,
            counter,
        };
        write_header(buf, &header);
        session.seal(counter, &mut buf[..DATA_OVERHEAD]);
        peer.stats.tx_packets += 1;
        peer.stats.tx_bytes += DATA_OVERHEAD as u64;
        self.stats.keepalives_sent += 1;
        Some(self.sent(endpoint, DATA_OVERHEAD))
    }

    fn seal_frame(
        &mut self,
        now: Instant,
        id: PeerId,
        frame: FrameRef,
        fragments: Option<(u32, u64, u8)>,
        buf: &mut [u8],
    ) -> Sealed {
        let path_mtu = usize::from(self.config.path_mtu);
        let Some(peer) = self.peers.get_mut(&id) else {
            return Sealed::Dropped;
        };
        let Some(endpoint) = peer.endpoint else {
            self.stats.drops.no_endpoint += 1;
            return Sealed::Dropped;
        };
        let bytes = self.pool.get(frame);
        // IPv4 and UDP headers take 28 bytes of the path MTU, IPv6 and UDP 48.
        let ip_overhead = if endpoint.is_ipv4() { 28 } else { 48 };
        let max_piece = path_mtu - ip_overhead - DATA_OVERHEAD;

        let session = match fragments {
            // Later pieces go on the session that carried the first one.
            Some((index, _, _)) => match peer.session_mut(index) {
                Some((s, false)) => s,
                _ => return Sealed::Dropped,
            },
            None => match peer.sending_session(now) {
                Some(s) => s,
                None => {
                    // The session ended while the frame was queued: wait for a new one.
                    if peer.waiting.len() < self.config.limits.queued_frames_per_peer {
                        peer.waiting.push_back(frame);
                        return Sealed::Requeued;
                    }
                    self.stats.drops.queue_full += 1;
                    return Sealed::Dropped;
                }
            },
        };

        let (header, range, progress) = match FragmentPlan::new(bytes.len(), max_piece) {
            None => {
                if bytes.len() > max_piece {
                    // More pieces than the format allows: the path MTU is too small.
                    self.stats.drops.oversize += 1;
                    return Sealed::Dropped;
                }
                let Some(counter) = session.take_counters(1) else {
                    return Sealed::Dropped;
                };
                let header = DataHeader {
                    kind: DataKind::Frame,
                    receiver: session.remote_index,
                    counter,
                };
                (header, 0..bytes.len(), None)
            }
            Some(plan) => {
                let (first, next) = match fragments {
                    Some((_, first, next)) => (first, next),
                    None => match session.take_counters(u64::from(plan.count)) {
                        Some(first) => (first, 0),
                        None => return Sealed::Dropped,
                    },
                };
                let (info, range) = plan.piece(next);
                let header = DataHeader {
                    kind: DataKind::Fragment(info),
                    receiver: session.remote_index,
                    counter: first + u64::from(next),
                };
                let progress =
                    (next + 1 < plan.count).then_some((session.local_index, first, next + 1));
                (header, range, progress)
            }
        };
        let len = DATA_OVERHEAD + range.len();
        write_header(buf, &header);
        buf[DATA_HEADER_LEN..DATA_HEADER_LEN + range.len()].copy_from_slice(&bytes[range]);
        session.seal(header.counter, &mut buf[..len]);
        peer.stats.tx_packets += 1;
        peer.stats.tx_bytes += len as u64;
        if matches!(header.kind, DataKind::Fragment(_)) {
            self.stats.fragments_sent += 1;
        }
        let t = self.sent(endpoint, len);
        match progress {
            Some(p) => Sealed::Fragment(t, p),
            None => Sealed::Done(t),
        }
    }

    /// The next frame for the local port that was not returned by `handle_datagram`
    /// (ARP replies, reassembled frames), copied to the front of `buf` (at least
    /// [`MAX_FRAME_LEN`] bytes). Returns its length.
    pub fn poll_deliver(&mut self, buf: &mut [u8]) -> Option<usize> {
        let f = self.deliver.pop_front()?;
        let frame = self.pool.get(f);
        let len = frame.len();
        buf[..len].copy_from_slice(frame);
        self.pool.release(f);
        self.stats.frames_delivered += 1;
        Some(len)
    }

    /// Whether events wait to be polled (the switch's included).
    pub fn has_events(&self) -> bool {
        !self.events.is_empty() || self.switch.has_events()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.drain_switch_events();
        self.events.pop_front()
    }

    fn drain_switch_events(&mut self) {
        while let Some(e) = self.switch.poll_event() {
            let event = match e {
                SwitchEvent::MacMoved { mac, from, to } => Event::MacMoved { mac, from, to },
                SwitchEvent::MacTableFull { mac } => Event::MacTableFull { mac },
            };
            push_event(&mut self.events, self.config.limits.events, event);
        }
    }
}

enum Sealed {
    Done(Transmit),
    Fragment(Transmit, (u32, u64, u8)),
    Requeued,
    Dropped,
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
