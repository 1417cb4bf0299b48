//! An in-memory daemon for tests (feature `testing`): networks and peers kept in a map and
//! served through the real [`router`](crate::router), so a client under test meets the
//! same routes, bodies, status codes and error bodies as with `vpnd`. It moves no packets,
//! makes no TAP and checks only what needs no host: ids, TAP names and peer keys that are
//! already taken, and what does not exist.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use vpn_core::{NetworkId, PublicKey};

use crate::server::{Control, ControlError};
use crate::spec::{NetworkSpec, PeerSpec};
use crate::status::{DaemonStatus, MacEntry, NetworkStatus, PeerStatus};

/// One network of a [`MemoryVpnd`].
#[derive(Debug, Clone, PartialEq)]
pub struct MemNetwork {
    /// As added, with the peers added since.
    pub spec: NetworkSpec,
    pub running: bool,
    /// What `GET /v1/networks/{id}/macs` answers (see [`MemoryVpnd::learn`]).
    pub macs: Vec<MacEntry>,
}

impl MemNetwork {
    fn status(&self) -> NetworkStatus {
        NetworkStatus {
            mac_table_size: self.macs.len(),
            ..NetworkStatus::configured(&self.spec, self.running)
        }
    }
}

pub struct MemoryVpnd {
    public_key: PublicKey,
    listen: Vec<SocketAddr>,
    networks: Mutex<BTreeMap<NetworkId, MemNetwork>>,
}

impl MemoryVpnd {
    pub fn new(public_key: PublicKey, listen: SocketAddr) -> Arc<MemoryVpnd> {
        Arc::new(MemoryVpnd {
            public_key,
            listen: vec![listen],
            networks: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn public_key(&self) -> PublicKey {
        self.public_key
    }

    pub fn networks(&self) -> BTreeMap<NetworkId, MemNetwork> {
        self.lock().clone()
    }

    /// Puts `entry` in network `id`'s MAC table, as if its switch had learned it.
    pub fn learn(&self, id: NetworkId, entry: MacEntry) {
        if let Some(n) = self.lock().get_mut(&id) {
            n.macs.push(entry);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<NetworkId, MemNetwork>> {
        self.networks.lock().expect("memory vpnd lock")
    }

    fn with<T>(
        &self,
        id: NetworkId,
        f: impl FnOnce(&mut MemNetwork) -> Result<T, ControlError>,
    ) -> Result<T, ControlError> {
        f(self
            .lock()
            .get_mut(&id)
            .ok_or_else(|| ControlError::no_network(id))?)
    }

    fn set_running(&self, id: NetworkId, running: bool) -> Result<NetworkStatus, ControlError> {
        self.with(id, |n| {
            n.running = running;
            Ok(n.status())
        })
    }
}

impl Control for MemoryVpnd {
    async fn status(self: &Arc<Self>) -> DaemonStatus {
        DaemonStatus {
            public_key: self.public_key,
            listen: self.listen.clone(),
            networks: self.lock().values().map(MemNetwork::status).collect(),
            unroutable: 0,
        }
    }

    async fn network(self: &Arc<Self>, id: NetworkId) -> Result<NetworkStatus, ControlError> {
        self.with(id, |n| Ok(n.status()))
    }

    async fn add_network(
        self: &Arc<Self>,
        spec: NetworkSpec,
    ) -> Result<NetworkStatus, ControlError> {
        let mut networks = self.lock();
        spec.check_unique(networks.values().map(|n| &n.spec))?;
        for (i, p) in spec.peers.iter().enumerate() {
            if spec.peers[..i].iter().any(|q| q.public_key == p.public_key) {
                return Err(ControlError::Invalid(format!(
                    "network {}: peer {}: public_key: appears twice in this network",
                    spec.id,
                    i + 1
                )));
            }
        }
        let network = MemNetwork {
            running: spec.running,
            spec,
            macs: Vec::new(),
        };
        let status = network.status();
        networks.insert(network.spec.id, network);
        Ok(status)
    }

    async fn remove_network(self: &Arc<Self>, id: NetworkId) -> Result<(), ControlError> {
        self.lock()
            .remove(&id)
            .map(|_| ())
            .ok_or_else(|| ControlError::no_network(id))
    }

    async fn start_network(self: &Arc<Self>, id: NetworkId) -> Result<NetworkStatus, ControlError> {
        self.set_running(id, true)
    }

    async fn stop_network(self: &Arc<Self>, id: NetworkId) -> Result<NetworkStatus, ControlError> {
        self.set_running(id, false)
    }

    async fn add_peer(
        self: &Arc<Self>,
        id: NetworkId,
        peer: PeerSpec,
    ) -> Result<PeerStatus, ControlError> {
        self.with(id, |n| {
            if n.spec.peers.iter().any(|p| p.public_key == peer.public_key) {
                return Err(ControlError::Conflict(format!(
                    "network {id} already has peer {}",
                    peer.public_key
                )));
            }
            n.spec.peers.push(peer.clone());
            Ok(PeerStatus::configured(&peer))
        })
    }

    async fn remove_peer(
        self: &Arc<Self>,
        id: NetworkId,
        key: PublicKey,
    ) -> Result<(), ControlError> {
        self.with(id, |n| {
            let at = n
                .spec
                .peers
                .iter()
                .position(|p| p.public_key == key)
                .ok_or_else(|| {
                    ControlError::NotFound(format!(
                        "network {id} has no peer with public key {key}"
                    ))
                })?;
            n.spec.peers.remove(at);
            Ok(())
        })
    }

    async fn mac_table(self: &Arc<Self>, id: NetworkId) -> Result<Vec<MacEntry>, ControlError> {
        self.with(id, |n| Ok(n.macs.clone()))
    }
}
