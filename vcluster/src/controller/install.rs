//! Provisioning's controller side: which nodes install, what they boot, and what their
//! frontend is told (docs/provisioning.md).
//!
//! A cluster with a profile is *provisioned*: each of its nodes gets an install
//! (`store::installs`) when it is made, and again on `reinstall`. From the installs the
//! desired state derives, per host, the cluster's services ([`ServicesSpec`]): every
//! host serves the site-local address (its site's cache); the host of the cluster's
//! lowest-index node is its frontend, with a static lease and an iPXE script for every
//! node. A node boots from the network while its install is `pending`, `pxe` or
//! `installing`, and from its disk otherwise: its script then says `exit` (on to the
//! disk) and its VM's boot order puts the disk first, so an installed node never
//! reinstalls by accident.
//!
//! Reports come from the frontend's agent, each carrying the install's one-time token;
//! a phase without word from the node for `install_phase_timeout` fails the install,
//! naming the phase and what the node was last seen doing.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use base64::Engine;
use rand::RngCore;

use super::App;
use super::store::{self, ClusterRow, InstallRow, NewEvent, NodeRow, StoreError, now_ms};
use crate::model::{
    FrontendSpec, InstallState, LeaseSpec, NetworkId, NodeState, NodeTarget, PowerAction,
    ServicesSpec, service_addresses, service_macs,
};

/// A fresh install token: 32 random bytes, base64url.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Starts an install for each of `node_ids` that has none, when the cluster is
/// provisioned.
pub async fn start_new_installs(
    conn: &mut sqlx::AnyConnection,
    cluster: &ClusterRow,
    node_ids: &[i64],
    now: i64,
) -> Result<(), StoreError> {
    if cluster.profile_id.is_none() {
        return Ok(());
    }
    for &id in node_ids {
        if store::install_of(conn, id).await?.is_none() {
            store::start_install(conn, id, &new_token(), now).await?;
        }
    }
    Ok(())
}

fn present(n: &NodeRow) -> bool {
    n.target != NodeTarget::Deleted && !matches!(n.state, NodeState::Failed | NodeState::Deleted)
}

/// The cluster's frontend host: the one chosen at create, else the host of its
/// lowest-index present node.
/// Has each node whose install was just started (the store already says `pending`, with a
/// fresh token) remade by its host, once the cluster's frontend has learned the new
/// installs: what `vcluster reinstall` and a recovery's reinstall both do. A node its host
/// cannot remake has its install marked failed with the host's answer. Each node's
/// outcome, in order.
pub async fn remake_for_install(
    app: &App,
    cluster_id: i64,
    nodes: &[(NodeRow, store::HostRow)],
) -> Vec<Result<(), String>> {
    if let Err(e) = super::tasks::converge(app, cluster_id, true).await {
        // A fenced node's own host answers that it is not up: the remake below is what
        // changes that, so this is no reason to stop.
        tracing::info!(cluster = cluster_id, error = %e, "pushing new installs");
    }
    let mut outcomes = Vec::with_capacity(nodes.len());
    for (node, host) in nodes {
        let remade = app
            .agents
            .power(
                host,
                &node.name,
                PowerAction::Reinstall,
                std::time::Duration::from_secs(120),
            )
            .await
            .map(|_| ());
        if let Err(e) = &remade {
            tracing::warn!(node = %node.name, error = %e, "remaking a node for its install failed");
            let reason = format!("failed in phase pending: its host could not remake it: {e}");
            let write = async {
                let mut tx = app.store.write().await?;
                store::update_install(
                    tx.conn(),
                    node.id,
                    InstallState::Failed,
                    &store::InstallProgress::default(),
                    Some(&reason),
                    now_ms(),
                )
                .await?;
                tx.commit().await
            };
            if let Err(e) = write.await {
                tracing::warn!(node = %node.name, error = %e, "marking the install failed");
            }
        }
        outcomes.push(remade);
    }
    outcomes
}

pub fn frontend_host(cluster: &ClusterRow, nodes: &[NodeRow]) -> Option<i64> {
    cluster.frontend_host_id.or_else(|| {
        nodes
            .iter()
            .filter(|n| present(n))
            .min_by_key(|n| n.idx)
            .map(|n| n.host_id)
    })
}

/// Whether the node boots from the network now (its install is under way).
pub fn boots_from_network(install: Option<&InstallRow>) -> bool {
    install.is_some_and(|i| i.state.boots_from_network())
}

/// The cluster's services on `host_id`, or `None` when the cluster is not provisioned.
pub fn services_on_host(
    cluster: &ClusterRow,
    nodes: &[NodeRow],
    installs: &BTreeMap<i64, InstallRow>,
    host_id: i64,
) -> Option<ServicesSpec> {
    if cluster.profile_id.is_none() && installs.is_empty() {
        return None;
    }
    let subnet: ipnet::Ipv4Net = cluster.subnet.parse().ok()?;
    let (site_ip, fe_ip) = service_addresses(subnet);
    let net = NetworkId(cluster.network_id as u32);
    let (site_mac, fe_mac) = service_macs(net);
    let prefix = subnet.prefix_len();
    let progress = progress_every(nodes.iter().filter(|n| present(n)).count());
    let frontend = (frontend_host(cluster, nodes) == Some(host_id)).then(|| FrontendSpec {
        address: format!("{fe_ip}/{prefix}"),
        mac: fe_mac.to_string(),
        leases: nodes
            .iter()
            .filter(|n| present(n))
            .map(|n| {
                let install = installs.get(&n.id);
                LeaseSpec {
                    node: n.name.clone(),
                    mac: n.mac.clone(),
                    address: n.address.split('/').next().unwrap_or_default().to_string(),
                    ipxe: ipxe_script(n, install, site_ip, fe_ip, cluster, progress),
                    token: install
                        .filter(|i| !i.state.is_final())
                        .map(|i| i.token.clone()),
                }
            })
            .collect(),
    });
    Some(ServicesSpec {
        site_address: format!("{site_ip}/{prefix}"),
        site_mac: site_mac.to_string(),
        frontend,
    })
}

/// Seconds between an installer's progress reports within a step (a new step is always
/// reported): every 3 s for a few nodes, less often for many, so that the reports of a
/// large cluster, which cross the WAN to the frontend, stay small beside the packages
/// (134 nodes: one report every 30 s each, about 4 a second in all).
pub fn progress_every(nodes: usize) -> u32 {
    u32::try_from(nodes / 4).unwrap_or(u32::MAX).clamp(3, 30)
}

/// A node's iPXE script: the installer from its site's cache while its install is under
/// way, its own disk otherwise.
fn ipxe_script(
    node: &NodeRow,
    install: Option<&InstallRow>,
    site_ip: Ipv4Addr,
    fe_ip: Ipv4Addr,
    cluster: &ClusterRow,
    progress: u32,
) -> String {
    let name = &node.name;
    match install {
        Some(i) if i.state.boots_from_network() => format!(
            "#!ipxe\n\
             echo vcluster: {name} installs profile {profile} from its site's cache\n\
             kernel http://{site_ip}/provision/vmlinuz initrd=installer.img console=ttyS0,115200 \
             quiet vc.repo=http://{site_ip}/debian vc.profile=http://{fe_ip}/install/profile \
             vc.callback=http://{site_ip}:{reports_port}/install/callback vc.progress={progress} vc.token={token}\n\
             initrd --name installer.img http://{site_ip}/provision/installer.img\n\
             boot\n",
            profile = cluster.profile_name.as_deref().unwrap_or("-"),
            token = i.token,
            reports_port = crate::model::SITE_REPORTS_PORT,
        ),
        _ => format!("#!ipxe\necho vcluster: {name} boots from its disk\nexit\n"),
    }
}

/// What a phase that timed out was waiting for, for the failure reason.
fn stalled_hint(state: InstallState, install: &InstallRow) -> String {
    match state {
        InstallState::Pending => {
            "the node never fetched its boot script from the frontend: does it \
            network-boot, does the frontend's DHCP reach it, and do the cluster's host agents \
            serve a site cache (--site-cache)?"
                .to_string()
        }
        InstallState::Pxe => "the node fetched its boot script but its installer never called \
            back: did the kernel and initrd come from the site cache?"
            .to_string(),
        InstallState::Installing => match (install.packages_done, install.packages_total) {
            (Some(d), Some(t)) => format!("the installer went silent at package {d} of {t}"),
            _ => "the installer went silent before unpacking packages".to_string(),
        },
        InstallState::Rebooting => {
            "the installed system never called back: does it boot from its disk?".to_string()
        }
        InstallState::Booted | InstallState::Failed => String::new(),
    }
}

/// Fails every install whose phase has had no word for `install_phase_timeout`, with an
/// event naming the node, the phase and what it was waiting for.
pub async fn fail_stalled_installs(app: &App) -> Result<(), StoreError> {
    let now = now_ms();
    let limit = app.config.install_phase_timeout.as_millis() as i64;
    let stalled: Vec<InstallRow> = {
        let mut rx = app.store.read().await?;
        let all = store::unfinished_installs(rx.conn()).await?;
        rx.finish().await?;
        all.into_iter()
            .filter(|i| now.saturating_sub(i.updated_at) > limit)
            .collect()
    };
    for install in stalled {
        let mut tx = app.store.write().await?;
        // Re-read under the write lock: a report may have come in meanwhile.
        let Some(current) = store::install_of(tx.conn(), install.node_id).await? else {
            continue;
        };
        if current.state.is_final() || now.saturating_sub(current.updated_at) <= limit {
            continue;
        }
        let Some(node) = store::node_by_id(tx.conn(), current.node_id).await? else {
            continue;
        };
        let silent = now.saturating_sub(current.updated_at) / 1000;
        let reason = format!(
            "stalled in phase {}{}: no word from {} for {silent} s; {}",
            current.state,
            current
                .step
                .as_deref()
                .map(|s| format!(" (step {s})"))
                .unwrap_or_default(),
            node.name,
            stalled_hint(current.state, &current)
        );
        store::update_install(
            tx.conn(),
            current.node_id,
            InstallState::Failed,
            &store::InstallProgress::default(),
            Some(&reason),
            now,
        )
        .await?;
        let owner = store::cluster_by_id(tx.conn(), node.cluster_id)
            .await?
            .map(|c| c.owner_id);
        store::insert_event(
            tx.conn(),
            NewEvent {
                kind: "install-failed",
                cluster: Some(&node.cluster_name),
                owner_id: owner,
                task_id: None,
                message: &format!("install of {} failed: {reason}", node.name),
            },
            now,
        )
        .await?;
        tx.commit().await?;
        tracing::warn!(node = %node.name, %reason, "install failed");
        let cluster_id = node.cluster_id;
        let app = app.clone();
        tokio::spawn(async move {
            let _ = super::tasks::converge(&app, cluster_id, true).await;
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_reports_thin_out_with_the_clusters_size_within_bounds() {
        assert_eq!(progress_every(0), 3);
        assert_eq!(progress_every(8), 3);
        assert_eq!(progress_every(32), 8);
        assert_eq!(progress_every(134), 30);
        assert_eq!(progress_every(usize::MAX), 30);
    }
}
