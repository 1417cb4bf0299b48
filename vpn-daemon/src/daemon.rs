//! The engine: the daemon's networks, its UDP sockets, and the tasks that move bytes
//! between them and the `vpn-core` state machines.
//!
//! Data path. Each running network owns a [`vpn_core::Network`] behind a mutex, a TAP
//! device, a TAP-reader task and a timer task. One receive task per UDP socket serves every
//! network: it routes each datagram by the network id of an initiation or the network tag
//! in the top bits of a session index. Tasks take the mutex once per batch, never across an
//! `.await` or a system call: they hand input to the network, collect what it wants sent
//! into their own reusable [`Outbox`], release the lock, then do the I/O. The steady state
//! allocates nothing per packet, and the split (readers, timers, batched outboxes) is what
//! later multi-queue, multi-core work builds on.
//!
//! Control plane. Adding, removing, starting and stopping networks and peers go through
//! one async mutex, so every change is applied whole or not at all.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::net::UdpSocket;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, info, info_span, warn};
use vpn_core::wire::{self, MAX_FRAME_LEN, Route};
use vpn_core::{Event, Network, PeerConfig, PeerId, Port, PrivateKey, PublicKey};

use crate::config::{ConfigError, NetworkSpec, PeerSpec, read_key_file, resolve_endpoint};
use crate::netdev::Tap;
use crate::status::{Counters, DaemonStatus, MacEntryStatus, NetworkStatus, PeerStatus};

/// Datagrams collected per lock acquisition before they are sent.
const OUT_BATCH: usize = 64;
/// Space for one datagram in an outbox (path MTUs above this are refused).
pub const MAX_DATAGRAM: usize = 9216;
/// Frames read from a TAP per lock acquisition.
const TAP_BATCH: usize = 32;
const TAP_SLOT: usize = 2048;

/// Why a control-plane request failed; the control API maps these to status codes.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    System(String),
}

impl From<ConfigError> for ControlError {
    fn from(e: ConfigError) -> Self {
        ControlError::Invalid(e.to_string())
    }
}

pub struct Daemon {
    private_key: PrivateKey,
    public_key: PublicKey,
    listen: Vec<SocketAddr>,
    sockets: Vec<Arc<UdpSocket>>,
    by_id: DashMap<u32, Arc<Running>>,
    by_tag: DashMap<u16, Arc<Running>>,
    networks: tokio::sync::Mutex<BTreeMap<u32, Entry>>,
    unroutable: AtomicU64,
    random: SystemRandom,
}

/// A configured network, running or not.
struct Entry {
    spec: NetworkSpec,
    tag: u16,
    running: Option<RunningHandle>,
}

struct RunningHandle {
    net: Arc<Running>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for RunningHandle {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The data-path state of a running network.
struct Running {
    id: u32,
    state: Mutex<Network>,
    tap: Tap,
    /// Wakes the timer task when input may have moved the next deadline.
    wake: Notify,
    frames_to_tap: AtomicU64,
    tap_write_errors: AtomicU64,
    send_errors: AtomicU64,
}

impl Daemon {
    /// Binds the UDP sockets. Networks are added afterwards.
    pub fn bind(private_key: PrivateKey, listen: &[SocketAddr]) -> io::Result<Arc<Daemon>> {
        let mut sockets = Vec::with_capacity(listen.len());
        let mut bound = Vec::with_capacity(listen.len());
        for addr in listen {
            let socket = bind_udp(*addr)
                .map_err(|e| io::Error::new(e.kind(), format!("binding UDP {addr}: {e}")))?;
            bound.push(socket.local_addr()?);
            sockets.push(Arc::new(socket));
        }
        Ok(Arc::new(Daemon {
            public_key: private_key.public_key(),
            private_key,
            listen: bound,
            sockets,
            by_id: DashMap::new(),
            by_tag: DashMap::new(),
            networks: tokio::sync::Mutex::new(BTreeMap::new()),
            unroutable: AtomicU64::new(0),
            random: SystemRandom::new(),
        }))
    }

    pub fn public_key(&self) -> PublicKey {
        self.public_key
    }

    pub fn listen_addrs(&self) -> &[SocketAddr] {
        &self.listen
    }

    /// Starts one receive task per socket.
    pub fn spawn_receivers(self: &Arc<Self>) -> Vec<JoinHandle<()>> {
        self.sockets
            .iter()
            .map(|s| {
                let daemon = Arc::clone(self);
                let socket = Arc::clone(s);
                tokio::spawn(async move { daemon.receive_loop(socket).await })
            })
            .collect()
    }

    // ----- control plane ---------------------------------------------------------------

    /// Adds a network (and starts it if `spec.running`). Nothing is left behind if it
    /// cannot start.
    pub async fn add_network(
        self: &Arc<Self>,
        mut spec: NetworkSpec,
    ) -> Result<NetworkStatus, ControlError> {
        let mut networks = self.networks.lock().await;
        spec.validate(&self.public_key)?;
        if usize::from(spec.path_mtu) > MAX_DATAGRAM {
            return Err(ControlError::Invalid(format!(
                "network {}: path_mtu: {} is above the maximum {MAX_DATAGRAM}",
                spec.id, spec.path_mtu
            )));
        }
        if spec.psk.is_none()
            && let Some(file) = &spec.psk_file
        {
            spec.psk = Some(crate::config::Secret(read_key_file(file)?));
        }
        if networks.contains_key(&spec.id) {
            return Err(ControlError::Conflict(format!(
                "network {} already exists",
                spec.id
            )));
        }
        if let Some(other) = networks.values().find(|e| e.spec.tap == spec.tap) {
            return Err(ControlError::Conflict(format!(
                "TAP {:?} is used by network {}",
                spec.tap, other.spec.id
            )));
        }
        let tag = (0..1u16 << vpn_core::config::INDEX_TAG_BITS)
            .find(|t| networks.values().all(|e| e.tag != *t))
            .ok_or_else(|| ControlError::Conflict("no free network slot (4096 networks)".into()))?;
        let id = spec.id;
        let mut entry = Entry {
            spec,
            tag,
            running: None,
        };
        if entry.spec.running {
            entry.running = Some(self.start(&entry.spec, tag)?);
        }
        info!(network = id, tap = %entry.spec.tap, running = entry.running.is_some(), "network added");
        networks.insert(id, entry);
        Ok(self.network_status(&networks[&id], Instant::now()))
    }

    pub async fn remove_network(&self, id: u32) -> Result<(), ControlError> {
        let mut networks = self.networks.lock().await;
        let entry = networks.remove(&id).ok_or_else(|| not_found(id))?;
        self.unroute(id, entry.tag);
        drop(entry);
        info!(network = id, "network removed");
        Ok(())
    }

    pub async fn start_network(self: &Arc<Self>, id: u32) -> Result<NetworkStatus, ControlError> {
        let mut networks = self.networks.lock().await;
        let entry = networks.get_mut(&id).ok_or_else(|| not_found(id))?;
        if entry.running.is_none() {
            entry.running = Some(self.start(&entry.spec, entry.tag)?);
            info!(network = id, "network started");
        }
        Ok(self.network_status(entry, Instant::now()))
    }

    pub async fn stop_network(&self, id: u32) -> Result<NetworkStatus, ControlError> {
        let mut networks = self.networks.lock().await;
        let entry = networks.get_mut(&id).ok_or_else(|| not_found(id))?;
        if entry.running.take().is_some() {
            self.unroute(id, entry.tag);
            info!(network = id, "network stopped");
        }
        Ok(self.network_status(entry, Instant::now()))
    }

    /// Stops every network (their TAP devices disappear).
    pub async fn shutdown(&self) {
        let mut networks = self.networks.lock().await;
        for (id, entry) in networks.iter_mut() {
            if entry.running.take().is_some() {
                self.unroute(*id, entry.tag);
            }
        }
    }

    pub async fn add_peer(&self, id: u32, peer: PeerSpec) -> Result<PeerStatus, ControlError> {
        let mut networks = self.networks.lock().await;
        let entry = networks.get_mut(&id).ok_or_else(|| not_found(id))?;
        let mut candidate = entry.spec.clone();
        candidate.peers.push(peer.clone());
        candidate.validate(&self.public_key).map_err(|e| {
            if entry
                .spec
                .peers
                .iter()
                .any(|p| p.public_key == peer.public_key)
            {
                ControlError::Conflict(format!("network {id} already has peer {}", peer.public_key))
            } else {
                ControlError::from(e)
            }
        })?;
        if let Some(run) = &entry.running {
            let config = peer_config(&peer).map_err(ControlError::Invalid)?;
            let now = Instant::now();
            run.net
                .state
                .lock()
                .expect("network lock")
                .add_peer(now, config)
                .map_err(|e| ControlError::Conflict(e.to_string()))?;
            run.net.wake.notify_one();
        }
        entry.spec.peers.push(peer.clone());
        let status = self
            .network_status(entry, Instant::now())
            .peers
            .into_iter()
            .find(|p| p.public_key == peer.public_key.to_string())
            .expect("just added");
        info!(network = id, peer = %peer.public_key, "peer added");
        Ok(status)
    }

    pub async fn remove_peer(&self, id: u32, key: &PublicKey) -> Result<(), ControlError> {
        let mut networks = self.networks.lock().await;
        let entry = networks.get_mut(&id).ok_or_else(|| not_found(id))?;
        let at = entry
            .spec
            .peers
            .iter()
            .position(|p| p.public_key == *key)
            .ok_or_else(|| {
                ControlError::NotFound(format!("network {id} has no peer with public key {key}"))
            })?;
        if let Some(run) = &entry.running {
            let mut net = run.net.state.lock().expect("network lock");
            if let Some(pid) = net.peer_by_key(key) {
                net.remove_peer(pid);
            }
        }
        entry.spec.peers.remove(at);
        info!(network = id, peer = %key, "peer removed");
        Ok(())
    }

    pub async fn status(&self) -> DaemonStatus {
        let networks = self.networks.lock().await;
        let now = Instant::now();
        DaemonStatus {
            public_key: self.public_key.to_string(),
            listen: self.listen.iter().map(|a| a.to_string()).collect(),
            networks: networks
                .values()
                .map(|e| self.network_status(e, now))
                .collect(),
            unroutable: self.unroutable.load(Ordering::Relaxed),
        }
    }

    pub async fn network(&self, id: u32) -> Result<NetworkStatus, ControlError> {
        let networks = self.networks.lock().await;
        let entry = networks.get(&id).ok_or_else(|| not_found(id))?;
        Ok(self.network_status(entry, Instant::now()))
    }

    pub async fn mac_table(&self, id: u32) -> Result<Vec<MacEntryStatus>, ControlError> {
        let networks = self.networks.lock().await;
        let entry = networks.get(&id).ok_or_else(|| not_found(id))?;
        let Some(run) = &entry.running else {
            return Ok(Vec::new());
        };
        let net = run.net.state.lock().expect("network lock");
        let now = Instant::now();
        let ageing = net.config().switch.mac_ageing;
        Ok(net
            .switch()
            .mac_table()
            .filter(|e| now.saturating_duration_since(e.last_seen) < ageing)
            .map(|e| MacEntryStatus {
                mac: e.mac.to_string(),
                port: match e.port {
                    Port::Local => "local".to_string(),
                    Port::Peer(p) => net
                        .peer(p, now)
                        .map(|i| i.public_key.to_string())
                        .unwrap_or_else(|| p.to_string()),
                },
                age_secs: now.saturating_duration_since(e.last_seen).as_secs_f64(),
            })
            .collect())
    }

    fn network_status(&self, entry: &Entry, now: Instant) -> NetworkStatus {
        let spec = &entry.spec;
        let mut status = NetworkStatus {
            id: spec.id,
            name: spec.name.clone(),
            tap: spec.tap.clone(),
            bridge: spec.bridge.clone(),
            running: entry.running.is_some(),
            mtu: spec.mtu,
            path_mtu: spec.path_mtu,
            cipher: spec.cipher.to_string(),
            mac_table_size: 0,
            counters: Counters::default(),
            peers: spec
                .peers
                .iter()
                .map(|p| PeerStatus {
                    public_key: p.public_key.to_string(),
                    name: p.name.clone(),
                    endpoint: p.endpoint.clone(),
                    last_handshake_secs_ago: None,
                    session: false,
                    rx_bytes: 0,
                    tx_bytes: 0,
                    rx_packets: 0,
                    tx_packets: 0,
                    handshakes: 0,
                })
                .collect(),
        };
        let Some(run) = &entry.running else {
            return status;
        };
        let net = run.net.state.lock().expect("network lock");
        let s = net.stats();
        let sw = net.switch_stats();
        let r = net.reassembly().stats();
        status.mac_table_size = net.switch().len();
        status.counters = Counters {
            rx_bytes: s.rx_bytes,
            tx_bytes: s.tx_bytes,
            rx_datagrams: s.rx_datagrams,
            tx_datagrams: s.tx_datagrams,
            frames_from_tap: s.local_frames,
            frames_to_tap: run.net.frames_to_tap.load(Ordering::Relaxed),
            handshakes_initiated: s.handshakes_initiated,
            initiations_processed: s.initiations_processed,
            sessions_established: s.sessions_established,
            cookie_replies_sent: s.cookie_replies_sent,
            arp_replies: sw.arp_replies,
            site_local_kept: sw.site_local_kept,
            drops: BTreeMap::from([
                ("malformed".into(), s.drops.malformed),
                ("wrong_network".into(), s.drops.wrong_network),
                ("bad_mac".into(), s.drops.bad_mac),
                ("unknown_index".into(), s.drops.unknown_index),
                ("replay".into(), s.drops.replay),
                ("auth".into(), s.drops.auth),
                ("handshake_failed".into(), s.drops.handshake_failed),
                ("unknown_peer".into(), s.drops.unknown_peer),
                ("replayed_handshake".into(), s.drops.replayed_handshake),
                ("rate_limited".into(), s.drops.rate_limited),
                ("under_load".into(), s.drops.under_load),
                (
                    "reassembly".into(),
                    s.drops.reassembly + r.timed_out + r.evicted,
                ),
                ("oversize".into(), s.drops.oversize),
                ("queue_full".into(), s.drops.queue_full),
                ("no_endpoint".into(), s.drops.no_endpoint),
                ("split_horizon".into(), sw.split_horizon_drops),
                (
                    "tap_write".into(),
                    run.net.tap_write_errors.load(Ordering::Relaxed),
                ),
                (
                    "udp_send".into(),
                    run.net.send_errors.load(Ordering::Relaxed),
                ),
            ]),
        };
        for p in &mut status.peers {
            let Some(info) = net
                .peer_by_key(&p.public_key.parse().expect("our own key text"))
                .and_then(|id| net.peer(id, now))
            else {
                continue;
            };
            p.endpoint = info.endpoint.map(|e| e.to_string()).or(p.endpoint.take());
            p.last_handshake_secs_ago = info
                .last_handshake
                .map(|t| now.saturating_duration_since(t).as_secs_f64());
            p.session = info.has_session;
            p.rx_bytes = info.stats.rx_bytes;
            p.tx_bytes = info.stats.tx_bytes;
            p.rx_packets = info.stats.rx_packets;
            p.tx_packets = info.stats.tx_packets;
            p.handshakes = info.stats.handshakes;
        }
        status
    }

    /// Creates the TAP, the state machine and the tasks of a network.
    fn start(
        self: &Arc<Self>,
        spec: &NetworkSpec,
        tag: u16,
    ) -> Result<RunningHandle, ControlError> {
        let peers: Vec<PeerConfig> = spec
            .peers
            .iter()
            .map(peer_config)
            .collect::<Result<_, _>>()
            .map_err(|e| ControlError::Invalid(format!("network {}: {e}", spec.id)))?;
        let tap = Tap::create(&spec.tap, spec.mtu, spec.bridge.as_deref())
            .map_err(|e| ControlError::System(format!("network {}: {e}", spec.id)))?;
        let mut seed = [0u8; 32];
        self.random
            .fill(&mut seed)
            .map_err(|_| ControlError::System("the system random source failed".into()))?;
        let now = Instant::now();
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut net = Network::new(
            spec.core_config(self.private_key.clone(), tag),
            now,
            unix,
            seed,
        )
        .map_err(|e| ControlError::Invalid(format!("network {}: {e}", spec.id)))?;
        for peer in peers {
            net.add_peer(now, peer)
                .map_err(|e| ControlError::Invalid(format!("network {}: {e}", spec.id)))?;
        }
        let running = Arc::new(Running {
            id: spec.id,
            state: Mutex::new(net),
            tap,
            wake: Notify::new(),
            frames_to_tap: AtomicU64::new(0),
            tap_write_errors: AtomicU64::new(0),
            send_errors: AtomicU64::new(0),
        });
        let span = info_span!("network", id = spec.id);
        let tasks = vec![
            tokio::spawn(
                Arc::clone(self)
                    .tap_loop(Arc::clone(&running))
                    .instrument(span.clone()),
            ),
            tokio::spawn(
                Arc::clone(self)
                    .timer_loop(Arc::clone(&running))
                    .instrument(span),
            ),
        ];
        self.by_id.insert(spec.id, Arc::clone(&running));
        self.by_tag.insert(tag, Arc::clone(&running));
        // Handshakes queued by add_peer go out through the timer task.
        running.wake.notify_one();
        Ok(RunningHandle {
            net: running,
            tasks,
        })
    }

    fn unroute(&self, id: u32, tag: u16) {
        self.by_id.remove(&id);
        self.by_tag.remove(&tag);
    }

    // ----- data path -------------------------------------------------------------------

    async fn receive_loop(self: Arc<Self>, socket: Arc<UdpSocket>) {
        let mut buf = vec![0u8; 65536];
        let mut out = Outbox::new();
        loop {
            let (n, from) = match socket.recv_from(&mut buf).await {
                Ok(r) => r,
                Err(e) => {
                    // ICMP errors from earlier sends surface here; they are not fatal.
                    debug!("receive: {e}");
                    continue;
                }
            };
            let from = canonical(from);
            let net = match wire::route(&buf[..n]) {
                Ok(Route::Network(id)) => self.by_id.get(&id.0).map(|r| Arc::clone(&r)),
                Ok(Route::Index(index)) => {
                    let tag = (index >> (32 - vpn_core::config::INDEX_TAG_BITS)) as u16;
                    self.by_tag.get(&tag).map(|r| Arc::clone(&r))
                }
                Err(_) => None,
            };
            let Some(net) = net else {
                self.unroutable.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let now = Instant::now();
            let base = buf.as_ptr() as usize;
            let delivered: Option<Range<usize>> = {
                let mut state = net.state.lock().expect("network lock");
                let frame = match state.handle_datagram(now, from, &mut buf[..n]) {
                    Ok(Some(frame)) => {
                        let start = frame.as_ptr() as usize - base;
                        Some(start..start + frame.len())
                    }
                    Ok(None) => None,
                    Err(e) => {
                        debug!(network = net.id, %from, "dropped datagram: {e}");
                        None
                    }
                };
                out.collect(&mut state, now);
                frame
            };
            if let Some(range) = delivered {
                net.write_tap(&buf[range]).await;
            }
            self.flush(&net, &mut out).await;
            net.wake.notify_one();
        }
    }

    async fn tap_loop(self: Arc<Self>, net: Arc<Running>) {
        let mut frames = vec![0u8; TAP_BATCH * TAP_SLOT];
        let mut lens = [0usize; TAP_BATCH];
        let mut out = Outbox::new();
        loop {
            let first = match net.tap.recv(&mut frames[..TAP_SLOT]).await {
                Ok(n) => n,
                Err(e) => {
                    warn!(tap = net.tap.name(), "reading the TAP failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            lens[0] = first;
            let mut count = 1;
            while count < TAP_BATCH {
                let slot = &mut frames[count * TAP_SLOT..(count + 1) * TAP_SLOT];
                match net.tap.try_recv(slot) {
                    Ok(n) => {
                        lens[count] = n;
                        count += 1;
                    }
                    Err(_) => break,
                }
            }
            let now = Instant::now();
            {
                let mut state = net.state.lock().expect("network lock");
                for (i, len) in lens.iter().take(count).enumerate() {
                    state.handle_local_frame(now, &frames[i * TAP_SLOT..i * TAP_SLOT + len]);
                }
                out.collect(&mut state, now);
            }
            self.flush(&net, &mut out).await;
            net.wake.notify_one();
        }
    }

    async fn timer_loop(self: Arc<Self>, net: Arc<Running>) {
        let mut out = Outbox::new();
        loop {
            let deadline = net.state.lock().expect("network lock").poll_timeout();
            let sleep = match deadline {
                Some(at) => tokio::time::sleep_until(at.into()),
                None => tokio::time::sleep(std::time::Duration::from_secs(3600)),
            };
            tokio::select! {
                _ = sleep => {}
                _ = net.wake.notified() => {
                    // Input may have queued output (handshakes) or moved the deadline.
                }
            }
            let now = Instant::now();
            {
                let mut state = net.state.lock().expect("network lock");
                if state.poll_timeout().is_some_and(|t| t <= now) {
                    state.handle_timeout(now);
                }
                out.collect(&mut state, now);
            }
            self.flush(&net, &mut out).await;
        }
    }

    /// Sends what an outbox collected, writes its frames to the TAP, logs its events; and
    /// repeats while the network has more.
    async fn flush(&self, net: &Running, out: &mut Outbox) {
        loop {
            for i in 0..out.datagrams.len() {
                let (dest, len) = out.datagrams[i];
                let bytes = &out.buf[i * MAX_DATAGRAM..i * MAX_DATAGRAM + len];
                let Some(socket) = self.socket_for(dest) else {
                    net.send_errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                if let Err(e) = socket.send_to(bytes, dest).await {
                    net.send_errors.fetch_add(1, Ordering::Relaxed);
                    debug!(network = net.id, %dest, "send failed: {e}");
                }
            }
            for i in 0..out.frame_lens.len() {
                let len = out.frame_lens[i];
                net.write_tap(&out.frames[i * MAX_FRAME_LEN..i * MAX_FRAME_LEN + len])
                    .await;
            }
            for line in out.events.drain(..) {
                info!(network = net.id, "{line}");
            }
            let more = out.more;
            out.clear();
            if !more {
                return;
            }
            let now = Instant::now();
            let mut state = net.state.lock().expect("network lock");
            out.collect(&mut state, now);
        }
    }

    fn socket_for(&self, dest: SocketAddr) -> Option<&UdpSocket> {
        self.sockets
            .iter()
            .zip(&self.listen)
            .find(|(_, local)| local.is_ipv4() == dest.is_ipv4())
            .map(|(s, _)| s.as_ref())
    }
}

impl Running {
    async fn write_tap(&self, frame: &[u8]) {
        match self.tap.send(frame).await {
            Ok(_) => {
                self.frames_to_tap.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.tap_write_errors.fetch_add(1, Ordering::Relaxed);
                debug!(tap = self.tap.name(), "write failed: {e}");
            }
        }
    }
}

/// Output collected under a network's lock, sent after it is released. Its buffers are
/// allocated once and reused.
struct Outbox {
    buf: Vec<u8>,
    datagrams: Vec<(SocketAddr, usize)>,
    frames: Vec<u8>,
    frame_lens: Vec<usize>,
    events: Vec<String>,
    /// The network had more output than one batch holds.
    more: bool,
}

impl Outbox {
    fn new() -> Outbox {
        Outbox {
            buf: vec![0u8; OUT_BATCH * MAX_DATAGRAM],
            datagrams: Vec::with_capacity(OUT_BATCH),
            frames: vec![0u8; OUT_BATCH * MAX_FRAME_LEN],
            frame_lens: Vec::with_capacity(OUT_BATCH),
            events: Vec::new(),
            more: false,
        }
    }

    fn collect(&mut self, net: &mut Network, now: Instant) {
        while self.datagrams.len() < OUT_BATCH {
            let at = self.datagrams.len() * MAX_DATAGRAM;
            match net.poll_transmit(now, &mut self.buf[at..at + MAX_DATAGRAM]) {
                Some(t) => self.datagrams.push((t.destination, t.len)),
                None => break,
            }
        }
        while self.frame_lens.len() < OUT_BATCH {
            let at = self.frame_lens.len() * MAX_FRAME_LEN;
            match net.poll_deliver(&mut self.frames[at..at + MAX_FRAME_LEN]) {
                Some(n) => self.frame_lens.push(n),
                None => break,
            }
        }
        while let Some(e) = net.poll_event() {
            self.events.push(describe(net, now, e));
        }
        self.more = self.datagrams.len() == OUT_BATCH || self.frame_lens.len() == OUT_BATCH;
    }

    fn clear(&mut self) {
        self.datagrams.clear();
        self.frame_lens.clear();
        self.more = false;
    }
}

fn describe(net: &Network, now: Instant, event: Event) -> String {
    let who = |id: PeerId| {
        net.peer(id, now)
            .map(|p| match p.name {
                Some(name) => format!("{name} ({})", p.public_key),
                None => p.public_key.to_string(),
            })
            .unwrap_or_else(|| id.to_string())
    };
    match event {
        Event::SessionEstablished { peer, initiator } => format!(
            "session established with {} (we {})",
            who(peer),
            if initiator { "initiated" } else { "responded" }
        ),
        Event::SessionExpired { peer } => format!("session with {} expired", who(peer)),
        Event::EndpointChanged { peer, from, to } => match from {
            Some(from) => format!("peer {} moved from {from} to {to}", who(peer)),
            None => format!("peer {} is at {to}", who(peer)),
        },
        Event::MacMoved { mac, from, to } => {
            let port = |p: Port| match p {
                Port::Local => "local".to_string(),
                Port::Peer(id) => who(id),
            };
            format!("MAC {mac} moved from {} to {}", port(from), port(to))
        }
        Event::MacTableFull { mac } => format!("MAC table full: {mac} not learned"),
    }
}

fn peer_config(spec: &PeerSpec) -> Result<PeerConfig, String> {
    Ok(PeerConfig {
        public_key: spec.public_key,
        endpoint: spec.endpoint.as_deref().map(resolve_endpoint).transpose()?,
        name: spec.name.clone(),
    })
}

fn not_found(id: u32) -> ControlError {
    ControlError::NotFound(format!("no network with id {id}"))
}

/// IPv4-mapped IPv6 sources are IPv4 peers.
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => addr,
        },
        v4 => v4,
    }
}

fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Separate IPv4 and IPv6 sockets may share a port.
        socket.set_only_v6(true)?;
    }
    // Bursts of full-size datagrams must not overflow the default 208 KiB buffers.
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}
