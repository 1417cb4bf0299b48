//! The engine: the daemon's networks and UDP sockets, and the control-plane operations
//! on them.
//!
//! The data path itself lives in [`crate::datapath`] (operating-system threads moving
//! frames between TAP queues and sockets); this module creates, starts, stops and
//! removes networks, runs each network's timer task (tokio: handshake retries,
//! keepalives, rekeys, expiry), and reports status. Every change goes through one async
//! mutex, so it is applied whole or not at all.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, info, info_span, warn};
use vpn_core::wire::Route;
use vpn_core::{Event, Network, PeerConfig, PeerId, Port, PrivateKey, PublicKey};

use vpnd_api::{
    ControlError, Counters, DaemonStatus, MacEntry, MacPort, NetworkSpec, NetworkStatus, PeerSpec,
    PeerStatus,
};

use crate::config::{ConfigError, NetworkSpecExt, read_key_file, resolve_endpoint};
use crate::datapath::{NetPath, PathCounters, Router, Sockets, Workers};
use crate::tap::Tap;
use crate::udp::Udp;

/// Space for one datagram (path MTUs above this are refused).
pub const MAX_DATAGRAM: usize = 9216;

impl From<ConfigError> for ControlError {
    fn from(e: ConfigError) -> Self {
        ControlError::Invalid(e.to_string())
    }
}

pub struct Daemon {
    private_key: PrivateKey,
    public_key: PublicKey,
    listen: Vec<SocketAddr>,
    sockets: Arc<Sockets>,
    workers: std::sync::OnceLock<Arc<Workers>>,
    options: DataPathOptions,
    by_id: DashMap<u32, Arc<NetPath>>,
    by_tag: DashMap<u16, Arc<NetPath>>,
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

/// A running network: its data path and its timer task. Dropping it takes its TAP queues
/// out of the workers and stops the timer; the TAP closes when the last worker lets go.
struct RunningHandle {
    net: Arc<NetPath>,
    timer: JoinHandle<()>,
    workers: Arc<Workers>,
}

impl RunningHandle {
    /// Stops the network and waits (briefly) until nothing holds it any more, so its TAP
    /// device is gone when this returns: a start right after reopens a fresh device.
    async fn close(self) {
        let weak = Arc::downgrade(&self.net);
        drop(self);
        let deadline = Instant::now() + Duration::from_secs(2);
        while weak.strong_count() > 0 {
            if Instant::now() >= deadline {
                warn!("a stopped network is still referenced after 2 s; its TAP lingers");
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

impl Drop for RunningHandle {
    fn drop(&mut self) {
        self.workers.remove(&self.net);
        self.timer.abort();
    }
}

/// How the daemon's data path is laid out.
#[derive(Clone, Copy, Debug)]
pub struct DataPathOptions {
    /// Threads (and TAP queues, and sockets per listen address) per direction.
    pub workers: usize,
    /// TAP segmentation and checksum offloads (TSO super-frames, coalesced writes).
    pub offload: bool,
    /// How long a worker keeps polling after input before it sleeps.
    pub busy_poll: Duration,
}

impl Default for DataPathOptions {
    fn default() -> Self {
        DataPathOptions {
            workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(8),
            offload: true,
            busy_poll: Duration::from_micros(200),
        }
    }
}

impl Router for Daemon {
    fn route(&self, route: Route) -> Option<Arc<NetPath>> {
        match route {
            Route::Network(id) => self.by_id.get(&id.0).map(|r| Arc::clone(&r)),
            Route::Index(index) => {
                let tag = (index >> (32 - vpn_core::config::INDEX_TAG_BITS)) as u16;
                self.by_tag.get(&tag).map(|r| Arc::clone(&r))
            }
        }
    }

    fn by_tag(&self, tag: u16) -> Option<Arc<NetPath>> {
        self.by_tag.get(&tag).map(|r| Arc::clone(&r))
    }

    fn unroutable(&self) {
        self.unroutable.fetch_add(1, Ordering::Relaxed);
    }
}

impl Daemon {
    /// Binds the UDP sockets: `workers` sockets per listen address sharing its port.
    /// Networks are added afterwards.
    pub fn bind(
        private_key: PrivateKey,
        listen: &[SocketAddr],
        options: DataPathOptions,
    ) -> io::Result<Arc<Daemon>> {
        let workers = options.workers.max(1);
        let mut all = Vec::with_capacity(listen.len() * workers);
        let mut bound = Vec::with_capacity(listen.len());
        for addr in listen {
            let first = Udp::bind(*addr)
                .map_err(|e| io::Error::new(e.kind(), format!("binding UDP {addr}: {e}")))?;
            // Port 0 picks a port: the other workers' sockets join that one.
            let actual = first.local_addr();
            bound.push(actual);
            all.push(Arc::new(first));
            for _ in 1..workers {
                let udp = Udp::bind(actual)
                    .map_err(|e| io::Error::new(e.kind(), format!("binding UDP {actual}: {e}")))?;
                all.push(Arc::new(udp));
            }
        }
        Ok(Arc::new(Daemon {
            public_key: private_key.public_key(),
            private_key,
            listen: bound,
            sockets: Arc::new(Sockets { all, workers }),
            workers: std::sync::OnceLock::new(),
            options,
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

    /// Starts the data-path workers (they run as long as the process). Networks can only
    /// start after this.
    pub fn start_workers(self: &Arc<Self>) -> io::Result<()> {
        let router: Arc<dyn Router> = Arc::clone(self) as Arc<dyn Router>;
        let workers = Workers::start(&self.sockets, router, self.options.busy_poll)?;
        let _ = self.workers.set(Arc::new(workers));
        Ok(())
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
            let field = format!("network {}: psk_file", spec.id);
            spec.psk = Some(read_key_file(&field, file)?);
        }
        spec.check_unique(networks.values().map(|e| &e.spec))?;
        let tag = (0..1u16 << vpn_core::config::INDEX_TAG_BITS)
            .find(|t| networks.values().all(|e| e.tag != *t))
            .ok_or_else(|| ControlError::Conflict("no free network slot (4096 networks)".into()))?;
        let id = spec.id.0;
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
        let mut entry = networks.remove(&id).ok_or_else(|| not_found(id))?;
        self.unroute(id, entry.tag);
        if let Some(run) = entry.running.take() {
            run.close().await;
        }
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
        if let Some(run) = entry.running.take() {
            self.unroute(id, entry.tag);
            run.close().await;
            info!(network = id, "network stopped");
        }
        Ok(self.network_status(entry, Instant::now()))
    }

    /// Stops every network (their TAP devices disappear).
    pub async fn shutdown(&self) {
        let mut networks = self.networks.lock().await;
        for (id, entry) in networks.iter_mut() {
            if let Some(run) = entry.running.take() {
                self.unroute(*id, entry.tag);
                run.close().await;
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
            run.net.timer.notify_one();
        }
        entry.spec.peers.push(peer.clone());
        let status = self
            .network_status(entry, Instant::now())
            .peers
            .into_iter()
            .find(|p| p.public_key == peer.public_key)
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
            public_key: self.public_key,
            listen: self.listen.clone(),
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

    pub async fn mac_table(&self, id: u32) -> Result<Vec<MacEntry>, ControlError> {
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
            .filter_map(|e| {
                let port = match e.port {
                    Port::Local => MacPort::Local,
                    // An address behind a peer that is gone is as good as forgotten.
                    Port::Peer(p) => MacPort::Peer(net.peer(p, now)?.public_key),
                };
                Some(MacEntry {
                    mac: e.mac,
                    port,
                    age_secs: now.saturating_duration_since(e.last_seen).as_secs_f64(),
                })
            })
            .collect())
    }

    fn network_status(&self, entry: &Entry, now: Instant) -> NetworkStatus {
        let mut status = NetworkStatus::configured(&entry.spec, entry.running.is_some());
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
            frames_to_tap: run.net.counters.frames_to_tap.load(Ordering::Relaxed),
            coalesced_segments: run.net.counters.coalesced.load(Ordering::Relaxed),
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
                    run.net.counters.tap_write_errors.load(Ordering::Relaxed),
                ),
                (
                    "udp_send".into(),
                    run.net.counters.send_errors.load(Ordering::Relaxed),
                ),
            ]),
        };
        for p in &mut status.peers {
            let Some(info) = net
                .peer_by_key(&p.public_key)
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
        let workers = self
            .workers
            .get()
            .cloned()
            .ok_or_else(|| ControlError::System("the data path is not started".into()))?;
        let tap = Tap::create(
            &spec.tap,
            spec.mtu,
            spec.bridge.as_deref(),
            self.sockets.workers,
            self.options.offload,
        )
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
        let path = Arc::new(NetPath {
            id: spec.id.0,
            tag,
            state: Mutex::new(net),
            tap,
            timer: tokio::sync::Notify::new(),
            timer_deadline: AtomicU64::new(0),
            epoch: now,
            counters: PathCounters::default(),
        });
        self.by_id.insert(spec.id.0, Arc::clone(&path));
        self.by_tag.insert(tag, Arc::clone(&path));
        if let Err(e) = workers.add(&path) {
            workers.remove(&path);
            self.unroute(spec.id.0, tag);
            return Err(ControlError::System(format!("network {}: {e}", spec.id)));
        }
        let span = info_span!("network", id = spec.id.0);
        let timer =
            tokio::spawn(timer_loop(Arc::clone(&path), Arc::clone(&self.sockets)).instrument(span));
        Ok(RunningHandle {
            net: path,
            timer,
            workers,
        })
    }

    fn unroute(&self, id: u32, tag: u16) {
        self.by_id.remove(&id);
        self.by_tag.remove(&tag);
    }
}

/// A network's timers: runs those that are due, sends what they (and anything before
/// them: the first handshakes of a network that just started) produced without blocking,
/// then sleeps until the next deadline or until the data path says it moved earlier.
async fn timer_loop(net: Arc<NetPath>, sockets: Arc<Sockets>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut events = Vec::new();
    loop {
        let deadline = {
            let now = Instant::now();
            let mut state = net.state.lock().expect("network lock");
            if state.poll_timeout().is_some_and(|t| t <= now) {
                state.handle_timeout(now);
            }
            while let Some(t) = state.poll_transmit(now, &mut buf) {
                let sent = sockets
                    .for_dest(t.destination, 0)
                    .map(|udp| udp.try_send(&buf[..t.len], t.destination));
                if !matches!(sent, Some(Ok(_))) {
                    net.counters.send_errors.fetch_add(1, Ordering::Relaxed);
                    debug!(network = net.id, dest = %t.destination, "timer send failed: {sent:?}");
                }
            }
            while let Some(e) = state.poll_event() {
                events.push(describe(&state, now, e));
            }
            state.poll_timeout()
        };
        for line in events.drain(..) {
            match &line.peer {
                Some(peer) => info!(network = net.id, %peer, "{}", line.what),
                None => info!(network = net.id, "{}", line.what),
            }
        }
        let far = Instant::now() + Duration::from_secs(3600);
        let at = deadline.unwrap_or(far).min(far);
        net.timer_deadline.store(
            at.saturating_duration_since(net.epoch).as_nanos() as u64,
            Ordering::Relaxed,
        );
        tokio::select! {
            _ = tokio::time::sleep_until(at.into()) => {}
            _ = net.timer.notified() => {}
        }
    }
}

/// A network event as it is logged: the peer it is about (name and key), if any, as a
/// field of its own, and what happened.
struct EventLine {
    peer: Option<String>,
    what: String,
}

fn describe(net: &Network, now: Instant, event: Event) -> EventLine {
    let who = |id: PeerId| {
        net.peer(id, now)
            .map(|p| match p.name {
                Some(name) => format!("{name} ({})", p.public_key),
                None => p.public_key.to_string(),
            })
            .unwrap_or_else(|| id.to_string())
    };
    let about = |peer: PeerId, what: String| EventLine {
        peer: Some(who(peer)),
        what,
    };
    match event {
        Event::SessionEstablished { peer, initiator } => about(
            peer,
            format!(
                "session established (we {})",
                if initiator { "initiated" } else { "responded" }
            ),
        ),
        Event::SessionExpired { peer } => about(peer, "session expired".into()),
        Event::EndpointChanged { peer, from, to } => match from {
            Some(from) => about(peer, format!("endpoint moved from {from} to {to}")),
            None => about(peer, format!("endpoint is {to}")),
        },
        Event::MacMoved { mac, from, to } => {
            let port = |p: Port| match p {
                Port::Local => "local".to_string(),
                Port::Peer(id) => who(id),
            };
            EventLine {
                peer: None,
                what: format!("MAC {mac} moved from {} to {}", port(from), port(to)),
            }
        }
        Event::MacTableFull { mac } => EventLine {
            peer: None,
            what: format!("MAC table full: {mac} not learned"),
        },
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
    ControlError::no_network(vpn_core::NetworkId(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits (up to 5 s) until the daemon's unroutable counter reaches `n`.
    async fn unroutable_reaches(daemon: &Daemon, n: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let seen = daemon.status().await.unroutable;
            if seen >= n || Instant::now() >= deadline {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn empty_datagrams_are_counted_with_the_other_unroutable_ones() {
        let options = DataPathOptions {
            workers: 1,
            offload: false,
            busy_poll: Duration::ZERO,
        };
        let listen = ["127.0.0.1:0".parse().unwrap()];
        let daemon = Daemon::bind(PrivateKey::from_bytes([7; 32]), &listen, options).unwrap();
        daemon.start_workers().unwrap();
        let to = daemon.listen_addrs()[0];
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.send_to(&[], to).unwrap();
        sock.send_to(&[0xff], to).unwrap();
        sock.send_to(&[], to).unwrap();
        assert_eq!(unroutable_reaches(&daemon, 3).await, 3);
    }
}
