//! What each host must have, derived from the store: for every cluster with nodes on the
//! host, its overlay network (peers = the cluster's other hosts, running or stopped) and
//! its nodes (up or stopped). Nodes whose target is `deleted`, failed nodes, and clusters
//! being deleted or failed are absent: a host that still has them removes them.
//!
//! The same function feeds the tasks that push a cluster to its hosts and the host agents'
//! periodic reconcile (`GET /v1/hosts/{id}/desired`), so both converge on one answer.
//! Each answer carries the store revision it was read at; agents ignore anything older
//! than what they already applied. This module only reads.

use crate::model::{ClusterState, NodeState, NodeTarget};
use std::collections::{BTreeMap, BTreeSet};

use sqlx::AnyConnection;

use super::install;
use super::store::{self, ClusterRow, HostRow, InstallRow, NodeRow, StoreError};
use crate::model::{BootDevice, ClusterOnHost, HostDesired, NetworkSpec, NodeSpec, PeerSpec};

fn node_is_present(n: &NodeRow) -> bool {
    n.target != NodeTarget::Deleted && !matches!(n.state, NodeState::Failed | NodeState::Deleted)
}

fn cluster_is_present(c: &ClusterRow) -> bool {
    matches!(c.state, ClusterState::Active | ClusterState::Expired)
}

/// The cluster's share of `host`, or `None` when the host must not have the cluster.
pub fn cluster_on_host(
    cluster: &ClusterRow,
    nodes: &[NodeRow],
    installs: &BTreeMap<i64, InstallRow>,
    hosts: &BTreeMap<i64, HostRow>,
    host_id: i64,
    revision: i64,
) -> Option<ClusterOnHost> {
    if !cluster_is_present(cluster) {
        return None;
    }
    let present: Vec<&NodeRow> = nodes.iter().filter(|n| node_is_present(n)).collect();
    let mine: Vec<NodeSpec> = present
        .iter()
        .filter(|n| n.host_id == host_id)
        .map(|n| NodeSpec {
            index: n.idx as u32,
            name: n.name.clone(),
            mac: n.mac.clone(),
            address: n.address.clone(),
            running: n.target == NodeTarget::Running,
            cpus: u32::try_from(cluster.node_cpus).unwrap_or(1),
            memory_mib: u32::try_from(cluster.node_memory_mib).unwrap_or(512),
            firmware: n.firmware,
            boot: if install::boots_from_network(installs.get(&n.id)) {
                BootDevice::Network
            } else {
                BootDevice::Disk
            },
        })
        .collect();
    let frontend = install::frontend_host(cluster, nodes);
    if mine.is_empty() && frontend != Some(host_id) {
        return None;
    }
    // The frontend's host is on the cluster's overlay too, nodes there or not.
    let peer_hosts: BTreeSet<i64> = present
        .iter()
        .map(|n| n.host_id)
        .chain(cluster.frontend_host_id)
        .filter(|&h| h != host_id)
        .collect();
    let peers = peer_hosts
        .into_iter()
        .filter_map(|h| hosts.get(&h))
        .map(|h| PeerSpec {
            name: h.name.clone(),
            public_key: h.public_key.clone(),
            endpoint: h.overlay_endpoint.clone(),
        })
        .collect();
    Some(ClusterOnHost {
        revision,
        network: NetworkSpec {
            id: cluster.network_id as u32,
            name: cluster.name.clone(),
            psk: cluster.psk.clone(),
            subnet: cluster.subnet.clone(),
            running: cluster.overlay_running() && cluster.state == ClusterState::Active,
            peers,
        },
        nodes: mine,
        services: install::services_on_host(cluster, nodes, installs, host_id),
    })
}

/// One cluster's desired share of every host it touches (has or had a node on).
pub struct ClusterPlan {
    pub cluster: Option<ClusterRow>,
    pub revision: i64,
    /// Host -> its share, `None` meaning "remove the cluster from that host".
    pub hosts: Vec<(HostRow, Option<ClusterOnHost>)>,
}

pub async fn cluster_plan(
    c: &mut AnyConnection,
    cluster_id: i64,
    extra_hosts: &[i64],
) -> Result<ClusterPlan, StoreError> {
    let revision = store::current_revision(c).await?;
    let cluster = store::cluster_by_id(c, cluster_id).await?;
    let nodes = match &cluster {
        Some(_) => store::nodes_of_cluster(c, cluster_id).await?,
        None => vec![],
    };
    let installs = installs_by_node(c, cluster_id).await?;
    let hosts: BTreeMap<i64, HostRow> = store::list_hosts(c)
        .await?
        .into_iter()
        .map(|h| (h.id, h))
        .collect();
    let touched: BTreeSet<i64> = nodes
        .iter()
        .map(|n| n.host_id)
        .chain(cluster.as_ref().and_then(|c| c.frontend_host_id))
        .chain(extra_hosts.iter().copied())
        .collect();
    let plan = touched
        .into_iter()
        .filter_map(|h| hosts.get(&h).cloned())
        .map(|h| {
            let share = cluster
                .as_ref()
                .and_then(|c| cluster_on_host(c, &nodes, &installs, &hosts, h.id, revision));
            (h, share)
        })
        .collect();
    Ok(ClusterPlan {
        cluster,
        revision,
        hosts: plan,
    })
}

/// Everything `host_id` must have.
pub async fn host_desired(c: &mut AnyConnection, host_id: i64) -> Result<HostDesired, StoreError> {
    let revision = store::current_revision(c).await?;
    let hosts: BTreeMap<i64, HostRow> = store::list_hosts(c)
        .await?
        .into_iter()
        .map(|h| (h.id, h))
        .collect();
    let on_host = store::nodes_on_host(c, host_id).await?;
    let cluster_ids: BTreeSet<i64> = on_host
        .iter()
        .map(|n| n.cluster_id)
        .chain(
            store::clusters_with_frontend_on(c, host_id)
                .await?
                .iter()
                .map(|c| c.id),
        )
        .collect();
    let mut clusters = Vec::new();
    for id in cluster_ids {
        let Some(cluster) = store::cluster_by_id(c, id).await? else {
            continue;
        };
        let nodes = store::nodes_of_cluster(c, id).await?;
        let installs = installs_by_node(c, id).await?;
        if let Some(share) = cluster_on_host(&cluster, &nodes, &installs, &hosts, host_id, revision)
        {
            clusters.push(share);
        }
    }
    Ok(HostDesired {
        host_id,
        revision,
        clusters,
    })
}

async fn installs_by_node(
    c: &mut AnyConnection,
    cluster_id: i64,
) -> Result<BTreeMap<i64, InstallRow>, StoreError> {
    Ok(store::installs_of_cluster(c, cluster_id)
        .await?
        .into_iter()
        .map(|i| (i.node_id, i))
        .collect())
}
