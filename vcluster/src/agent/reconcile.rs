//! Converging the host to what the controller wants. Three entry points, all idempotent,
//! all serialised by one lock:
//!
//! - [`Reconciler::apply`]: one cluster's share of this host (a push from a task): the
//!   bridge, the vpnd network with exactly the given peers, running or stopped, and exactly
//!   the given nodes;
//! - [`Reconciler::remove`]: the cluster leaves this host: nodes, vpnd network, bridge;
//! - [`Reconciler::reconcile`]: the whole desired state (the periodic pull, and the first
//!   thing after a start): everything listed is applied, and every network of ours that
//!   exists on the host (bridge, vpnd network, node veth or state-file record) but is not
//!   listed is removed.
//!
//! Every statement from the controller carries the store revision it was read at. A
//! statement older than what was already applied for that network (or older than the last
//! full snapshot) is ignored, so a slow push can never undo a newer one.
//!
//! It never decides what should exist: the controller does. It never changes or removes a
//! vpnd network whose TAP is not `vctap<id>`: those are the operator's own, even when a
//! cluster's id collides with one (the controller's `--first-network-id` keeps ids apart).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::sync::Mutex;

use super::driver::{DriverError, FoundNode, HostBridges, VmDriver};
use super::services::ClusterServices;
use super::state::{NetworkRecord, StateStore};
use crate::model::{
    self, AppliedCluster, ClusterOnHost, HostDesired, NetworkDevices, NetworkId, NodeSlot,
    ObservedNode,
};

#[derive(Debug, Error)]
pub enum ReconcileError {
    #[error("{0}")]
    Driver(#[from] DriverError),
    #[error("{0}")]
    Vpnd(#[from] vpnd_api::ClientError),
    #[error("state file: {0}")]
    State(#[from] std::io::Error),
    #[error("network {network}: {message}")]
    Invalid { network: u32, message: String },
    /// vpnd has a network with this id that the agent did not make: the operator's own.
    #[error(
        "vpnd already has network {network} with TAP {tap}, which is not a cluster's \
         (cluster TAPs are vctap<id>): it is left alone; give the controller a \
         --first-network-id above the operator's own network ids"
    )]
    NotOurs { network: u32, tap: String },
}

pub struct Reconciler {
    pub driver: Arc<dyn VmDriver>,
    pub bridges: Arc<dyn HostBridges>,
    pub vpnd: vpnd_api::Client,
    pub state: Mutex<StateStore>,
    /// Provisioned clusters' services (site-local address, frontend), when this host
    /// has a site cache to serve.
    pub services: Option<Arc<ClusterServices>>,
    /// The last observation, for a heartbeat that finds the reconciler busy.
    last_observed: std::sync::Mutex<Option<Observation>>,
}

/// This host's cluster networks and the nodes found on them.
pub type Observation = (Vec<u32>, Vec<ObservedNode>);

fn observed(found: &[FoundNode], network: u32, names: &BTreeMap<u32, String>) -> Vec<ObservedNode> {
    let mut out: Vec<ObservedNode> = found
        .iter()
        .filter(|f| f.slot.network.0 == network)
        .map(|f| ObservedNode {
            network,
            index: f.slot.index,
            name: f
                .name
                .clone()
                .or_else(|| names.get(&f.slot.index).cloned())
                .unwrap_or_default(),
            running: f.running,
        })
        .collect();
    out.sort_by_key(|n| n.index);
    out
}

/// vpnd's network for a cluster's overlay as the controller states it: the cluster's TAP
/// and bridge, its key and peers parsed (a bad one is named, and nothing is sent).
fn vpnd_network(
    spec: &model::NetworkSpec,
    services: Option<&model::ServicesSpec>,
) -> Result<vpnd_api::NetworkSpec, ReconcileError> {
    let invalid = |message: String| ReconcileError::Invalid {
        network: spec.id,
        message,
    };
    let net = NetworkId(spec.id);
    let psk = spec
        .psk
        .parse()
        .map_err(|e| invalid(format!("psk: not a pre-shared key: {e}")))?;
    let peers = spec
        .peers
        .iter()
        .map(|p| {
            let public_key = p.public_key.parse().map_err(|e| {
                invalid(format!(
                    "peer {}: public_key {:?}: {e}",
                    p.name, p.public_key
                ))
            })?;
            Ok(vpnd_api::PeerSpec {
                public_key,
                endpoint: Some(p.endpoint.clone()),
                name: Some(p.name.clone()),
            })
        })
        .collect::<Result<_, ReconcileError>>()?;
    // The site-local address is answered at each site: its ARP and frames stay there.
    let site_local = match services {
        Some(sv) => {
            let ip = sv
                .site_address
                .split('/')
                .next()
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| {
                    invalid(format!(
                        "site_address {:?}: not an address",
                        sv.site_address
                    ))
                })?;
            let mac = sv
                .site_mac
                .parse()
                .map_err(|e| invalid(format!("site_mac {:?}: {e}", sv.site_mac)))?;
            vec![vpnd_api::SiteLocalSpec { ip, mac }]
        }
        None => Vec::new(),
    };
    Ok(vpnd_api::NetworkSpec {
        name: Some(spec.name.clone()),
        site_local,
        bridge: Some(net.bridge_name()),
        psk: Some(psk),
        arp_suppression: true,
        peers,
        running: spec.running,
        ..vpnd_api::NetworkSpec::new(net, net.tap_name())
    })
}

impl Reconciler {
    pub fn new(
        driver: Arc<dyn VmDriver>,
        bridges: Arc<dyn HostBridges>,
        vpnd: vpnd_api::Client,
        state: StateStore,
    ) -> Reconciler {
        Reconciler {
            driver,
            bridges,
            vpnd,
            state: Mutex::new(state),
            services: None,
            last_observed: std::sync::Mutex::new(None),
        }
    }

    /// Serves provisioned clusters' site-local address and frontend on this host.
    pub fn with_services(mut self, services: Option<Arc<ClusterServices>>) -> Reconciler {
        self.services = services;
        self
    }

    pub async fn apply(&self, share: &ClusterOnHost) -> Result<AppliedCluster, ReconcileError> {
        let mut state = self.state.lock().await;
        self.apply_locked(&mut state, share).await
    }

    async fn apply_locked(
        &self,
        state: &mut StateStore,
        share: &ClusterOnHost,
    ) -> Result<AppliedCluster, ReconcileError> {
        let id = share.network.id;
        let net = NetworkId(id);
        let record = state.state.networks.get(&id).cloned().unwrap_or_default();
        if share.revision < record.applied_revision
            || share.revision < state.state.snapshot_revision
        {
            tracing::debug!(
                network = id,
                revision = share.revision,
                "ignoring a stale push"
            );
            let found = self.driver.list().await?;
            return Ok(AppliedCluster {
                network: id,
                applied: false,
                nodes: observed(&found, id, &record.nodes),
            });
        }
        for n in &share.nodes {
            if n.index == 0 || n.index > crate::model::MAX_NODE_INDEX {
                return Err(ReconcileError::Invalid {
                    network: id,
                    message: format!("node index {} out of range", n.index),
                });
            }
        }

        // Intent first: whatever happens next, the file knows these may exist.
        let mut names = record.nodes.clone();
        for n in &share.nodes {
            names.insert(n.index, n.name.clone());
        }
        state.state.networks.insert(
            id,
            NetworkRecord {
                applied_revision: record.applied_revision,
                present: true,
                nodes: names.clone(),
            },
        );
        state.save()?;

        let bridge = net.bridge_name();
        self.bridges.ensure(&bridge).await?;
        self.sync_vpnd(share).await?;

        let wanted: BTreeSet<u32> = share.nodes.iter().map(|n| n.index).collect();
        let found = self.driver.list().await?;
        for f in found
            .iter()
            .filter(|f| f.slot.network == net && !wanted.contains(&f.slot.index))
        {
            let name = f.name.clone().or_else(|| names.get(&f.slot.index).cloned());
            self.driver.remove(f.slot, name.as_deref()).await?;
        }
        // Recorded nodes no longer wanted whose veth is gone may still have a namespace.
        for (index, name) in names.iter().filter(|(i, _)| !wanted.contains(i)) {
            self.driver
                .remove(
                    NodeSlot {
                        network: net,
                        index: *index,
                    },
                    Some(name),
                )
                .await?;
        }
        // The services first: a node that network-boots at once (a lightweight node's
        // netboot) finds its frontend and its site's cache already there.
        match (&self.services, &share.services) {
            (Some(services), Some(spec)) => {
                services
                    .ensure(net, &share.network.name, &bridge, spec, &share.nodes)
                    .await?
            }
            (Some(services), None) => services.remove(net).await?,
            (None, Some(_)) => {
                // Its nodes are made all the same; their installs will stall and fail,
                // naming this as the likely cause.
                tracing::warn!(
                    network = id,
                    "the cluster is provisioned but this host agent serves no site cache: \
                     its nodes cannot install from here (start the agent with --site-cache)"
                );
            }
            (None, None) => {}
        }

        for n in &share.nodes {
            self.driver
                .ensure(
                    NodeSlot {
                        network: net,
                        index: n.index,
                    },
                    &bridge,
                    n,
                )
                .await?;
        }

        let nodes: BTreeMap<u32, String> = share
            .nodes
            .iter()
            .map(|n| (n.index, n.name.clone()))
            .collect();
        state.state.networks.insert(
            id,
            NetworkRecord {
                applied_revision: share.revision,
                present: true,
                nodes: nodes.clone(),
            },
        );
        state.save()?;
        let found = self.driver.list().await?;
        tracing::info!(
            network = id,
            nodes = share.nodes.len(),
            running = share.network.running,
            "cluster applied"
        );
        Ok(AppliedCluster {
            network: id,
            applied: true,
            nodes: observed(&found, id, &nodes),
        })
    }

    /// Brings vpnd's network `id` to the spec: same TAP and bridge, exactly these peers,
    /// running or stopped.
    async fn sync_vpnd(&self, share: &ClusterOnHost) -> Result<(), ReconcileError> {
        let spec = &share.network;
        let net = NetworkId(spec.id);
        let want = vpnd_network(spec, share.services.as_ref())?;
        let current = match self.vpnd.network(net).await? {
            Some(c) if NetworkId::from_tap_name(&c.tap) != Some(net) => {
                // The operator's own network: never ours to change or remove.
                return Err(ReconcileError::NotOurs {
                    network: spec.id,
                    tap: c.tap,
                });
            }
            Some(c) if c.bridge == want.bridge => c,
            Some(_) => {
                // Ours, but on another bridge: replace it.
                self.vpnd.remove_network(net).await?;
                self.vpnd.add_network(&want).await?;
                return Ok(());
            }
            None => {
                self.vpnd.add_network(&want).await?;
                return Ok(());
            }
        };
        for have in &current.peers {
            // Peers are matched by key only: vpnd updates a roaming peer's endpoint itself.
            let keep = want.peers.iter().any(|w| w.public_key == have.public_key);
            if !keep {
                self.vpnd.remove_peer(net, &have.public_key).await?;
            }
        }
        for peer in &want.peers {
            let present = current
                .peers
                .iter()
                .any(|h| h.public_key == peer.public_key);
            if !present {
                self.vpnd.add_peer(net, peer).await?;
            }
        }
        if current.running != spec.running {
            if spec.running {
                self.vpnd.start(net).await?;
            } else {
                self.vpnd.stop(net).await?;
            }
        }
        Ok(())
    }

    /// Removes network `id` and its nodes from the host, unless something newer than
    /// `revision` was applied to it. Returns whether it acted.
    pub async fn remove(&self, id: u32, revision: i64) -> Result<bool, ReconcileError> {
        let mut state = self.state.lock().await;
        self.remove_locked(&mut state, id, revision).await
    }

    async fn remove_locked(
        &self,
        state: &mut StateStore,
        id: u32,
        revision: i64,
    ) -> Result<bool, ReconcileError> {
        let record = state.state.networks.get(&id).cloned().unwrap_or_default();
        if revision < record.applied_revision || revision < state.state.snapshot_revision {
            tracing::debug!(network = id, revision, "ignoring a stale removal");
            return Ok(false);
        }
        let net = NetworkId(id);
        let found = self.driver.list().await?;
        for f in found.iter().filter(|f| f.slot.network == net) {
            let name = f
                .name
                .clone()
                .or_else(|| record.nodes.get(&f.slot.index).cloned());
            self.driver.remove(f.slot, name.as_deref()).await?;
        }
        for (index, name) in &record.nodes {
            self.driver
                .remove(
                    NodeSlot {
                        network: net,
                        index: *index,
                    },
                    Some(name),
                )
                .await?;
        }
        if let Some(services) = &self.services {
            services.remove(net).await?;
        }
        match self.vpnd.network(net).await? {
            Some(n) if NetworkId::from_tap_name(&n.tap) == Some(net) => {
                self.vpnd.remove_network(net).await?;
            }
            Some(n) => {
                tracing::warn!(network = id, tap = %n.tap, "vpnd's network with this id is not ours: left alone");
            }
            None => {}
        }
        self.bridges.remove(&net.bridge_name()).await?;
        state.state.networks.insert(
            id,
            NetworkRecord {
                applied_revision: revision,
                present: false,
                nodes: BTreeMap::new(),
            },
        );
        state.save()?;
        tracing::info!(network = id, "cluster removed from this host");
        Ok(true)
    }

    /// Networks of ours that exist on the host in any form.
    async fn networks_on_host(&self, state: &StateStore) -> Result<BTreeSet<u32>, ReconcileError> {
        let mut ids: BTreeSet<u32> = state
            .state
            .networks
            .iter()
            .filter(|(_, r)| r.present)
            .map(|(id, _)| *id)
            .collect();
        for b in self.bridges.list().await? {
            if let Some(n) = NetworkId::from_bridge_name(&b) {
                ids.insert(n.0);
            }
        }
        for f in self.driver.list().await? {
            ids.insert(f.slot.network.0);
        }
        for n in self.vpnd.status().await?.networks {
            // Only networks we made: the operator's own vpnd networks are not ours.
            if NetworkId::from_tap_name(&n.tap) == Some(n.id) {
                ids.insert(n.id.0);
            }
        }
        Ok(ids)
    }

    /// Converges the whole host to `desired`. Errors of single clusters are collected so
    /// one broken cluster does not stop the others from converging.
    pub async fn reconcile(&self, desired: &HostDesired) -> Result<Vec<String>, ReconcileError> {
        let mut state = self.state.lock().await;
        if desired.revision < state.state.snapshot_revision {
            return Ok(vec![]);
        }
        let mut errors = Vec::new();
        let wanted: BTreeSet<u32> = desired.clusters.iter().map(|c| c.network.id).collect();
        for share in &desired.clusters {
            if let Err(e) = self.apply_locked(&mut state, share).await {
                errors.push(format!("network {}: {e}", share.network.id));
            }
        }
        for id in self.networks_on_host(&state).await? {
            if !wanted.contains(&id)
                && let Err(e) = self.remove_locked(&mut state, id, desired.revision).await
            {
                errors.push(format!("network {id}: {e}"));
            }
        }
        if errors.is_empty() {
            state.state.snapshot_revision = desired.revision;
            // Tombstones older than the snapshot are covered by it.
            state
                .state
                .networks
                .retain(|_, r| r.present || r.applied_revision > desired.revision);
            state.save()?;
        }
        Ok(errors)
    }

    /// As [`Reconciler::observe`], but when the reconciler stays busy (applying, removing)
    /// for longer than `wait`, the last observation: a heartbeat must not wait behind a
    /// burst of applies, or the host looks offline and its nodes down.
    pub async fn observe_within(&self, wait: Duration) -> Result<Observation, ReconcileError> {
        let state = match tokio::time::timeout(wait, self.state.lock()).await {
            Ok(state) => state,
            Err(_) => {
                let last = self.last_observed.lock().expect("last observation").clone();
                match last {
                    Some(last) => return Ok(last),
                    None => self.state.lock().await,
                }
            }
        };
        self.observe_locked(&state).await
    }

    /// What the agent has on the host now.
    pub async fn observe(&self) -> Result<Observation, ReconcileError> {
        let state = self.state.lock().await;
        self.observe_locked(&state).await
    }

    async fn observe_locked(&self, state: &StateStore) -> Result<Observation, ReconcileError> {
        let networks: Vec<u32> = self.networks_on_host(state).await?.into_iter().collect();
        let found = self.driver.list().await?;
        let mut nodes = Vec::new();
        for id in &networks {
            let names = state
                .state
                .networks
                .get(id)
                .map(|r| r.nodes.clone())
                .unwrap_or_default();
            nodes.extend(observed(&found, *id, &names));
        }
        *self.last_observed.lock().expect("last observation") =
            Some((networks.clone(), nodes.clone()));
        Ok((networks, nodes))
    }
}
