//! Clusters: a name, an owner, an overlay network and a subnet.

use sqlx::FromRow;

use super::{Conn, R, ms_to_time};
use crate::model;

#[derive(Debug, Clone, FromRow)]
pub struct ClusterRow {
    pub id: i64,
    pub name: String,
    pub owner_id: i64,
    pub owner_name: String,
    pub network_id: i64,
    pub psk: String,
    pub subnet: String,
    pub state: model::ClusterState,
    pub overlay: model::OverlayState,
    pub reason: Option<String>,
    pub reservation_id: Option<i64>,
    pub node_cpus: i64,
    pub node_memory_mib: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub recovery: model::Recovery,
    /// The install profile (docs/provisioning.md).
    pub profile_id: Option<i64>,
    pub profile_name: Option<String>,
    /// The host of its provisioning frontend, when chosen at create.
    pub frontend_host_id: Option<i64>,
    pub frontend_host_name: Option<String>,
    /// Its nodes' firmware unless a node's own says otherwise.
    pub node_firmware: model::Firmware,
}

impl ClusterRow {
    pub fn overlay_running(&self) -> bool {
        self.overlay == model::OverlayState::Running
    }
    pub fn to_model(&self, nodes: Vec<model::Node>) -> model::Cluster {
        model::Cluster {
            id: self.id,
            name: self.name.clone(),
            owner: self.owner_name.clone(),
            network_id: self.network_id as u32,
            psk: self.psk.clone(),
            subnet: self.subnet.clone(),
            state: self.state,
            overlay: self.overlay,
            reason: self.reason.clone(),
            reservation: self.reservation_id,
            node_cpus: self.node_cpus,
            node_memory_mib: self.node_memory_mib,
            nodes,
            created_at: ms_to_time(self.created_at),
            recovery: self.recovery,
            profile: self.profile_name.clone(),
            frontend_host: self.frontend_host_name.clone(),
        }
    }
}

const CLUSTER_SELECT: &str = "SELECT c.id, c.name, c.owner_id, u.name AS owner_name, \
    c.network_id, c.psk, c.subnet, c.state, c.overlay, c.reason, c.reservation_id, c.node_cpus, \
    c.node_memory_mib, c.created_at, c.updated_at, c.recovery, c.profile_id, p.name AS profile_name, \
    c.frontend_host_id, fh.name AS frontend_host_name, c.node_firmware \
    FROM clusters c JOIN users u ON u.id = c.owner_id LEFT JOIN profiles p ON p.id = c.profile_id \
    LEFT JOIN hosts fh ON fh.id = c.frontend_host_id";

pub struct NewCluster<'a> {
    pub name: &'a str,
    pub owner_id: i64,
    pub network_id: i64,
    pub psk: &'a str,
    pub subnet: &'a str,
    pub reservation_id: Option<i64>,
    pub node_cpus: i64,
    pub node_memory_mib: i64,
    pub recovery: model::Recovery,
    pub profile_id: Option<i64>,
    pub frontend_host_id: Option<i64>,
    pub node_firmware: model::Firmware,
}

pub async fn insert_cluster(c: &mut Conn, n: NewCluster<'_>, now: i64) -> R<i64> {
    Ok(sqlx::query_scalar(
        "INSERT INTO clusters (name, owner_id, network_id, psk, subnet, state, overlay, \
         reservation_id, node_cpus, node_memory_mib, created_at, updated_at, recovery, profile_id, \
         frontend_host_id, node_firmware) \
         VALUES ($1, $2, $3, $4, $5, 'active', 'running', $6, $7, $8, $9, $9, $10, $11, $12, $13) \
         RETURNING id",
    )
    .bind(n.name)
    .bind(n.owner_id)
    .bind(n.network_id)
    .bind(n.psk)
    .bind(n.subnet)
    .bind(n.reservation_id)
    .bind(n.node_cpus)
    .bind(n.node_memory_mib)
    .bind(now)
    .bind(n.recovery.as_str())
    .bind(n.profile_id)
    .bind(n.frontend_host_id)
    .bind(n.node_firmware.as_str())
    .fetch_one(c)
    .await?)
}

/// A cluster by name, or by id when `key` is a number.
pub async fn cluster_by_key(c: &mut Conn, key: &str) -> R<Option<ClusterRow>> {
    Ok(sqlx::query_as(&format!(
        "{CLUSTER_SELECT} WHERE c.name = $1 OR CAST(c.id AS TEXT) = $1"
    ))
    .bind(key)
    .fetch_optional(c)
    .await?)
}

pub async fn cluster_by_id(c: &mut Conn, id: i64) -> R<Option<ClusterRow>> {
    Ok(sqlx::query_as(&format!("{CLUSTER_SELECT} WHERE c.id = $1"))
        .bind(id)
        .fetch_optional(c)
        .await?)
}

pub async fn list_clusters(c: &mut Conn, owner: Option<i64>) -> R<Vec<ClusterRow>> {
    Ok(match owner {
        Some(o) => {
            sqlx::query_as(&format!(
                "{CLUSTER_SELECT} WHERE c.owner_id = $1 ORDER BY c.id"
            ))
            .bind(o)
            .fetch_all(c)
            .await?
        }
        None => {
            sqlx::query_as(&format!("{CLUSTER_SELECT} ORDER BY c.id"))
                .fetch_all(c)
                .await?
        }
    })
}

pub async fn clusters_of_reservation(c: &mut Conn, reservation: i64) -> R<Vec<ClusterRow>> {
    Ok(sqlx::query_as(&format!(
        "{CLUSTER_SELECT} WHERE c.reservation_id = $1 ORDER BY c.id"
    ))
    .bind(reservation)
    .fetch_all(c)
    .await?)
}

pub async fn set_cluster_state(
    c: &mut Conn,
    id: i64,
    state: model::ClusterState,
    reason: Option<&str>,
    now: i64,
) -> R<()> {
    sqlx::query("UPDATE clusters SET state = $1, reason = $2, updated_at = $3 WHERE id = $4")
        .bind(state.as_str())
        .bind(reason)
        .bind(now)
        .bind(id)
        .execute(c)
        .await?;
    Ok(())
}

pub async fn set_cluster_overlay(
    c: &mut Conn,
    id: i64,
    overlay: model::OverlayState,
    now: i64,
) -> R<()> {
    sqlx::query("UPDATE clusters SET overlay = $1, updated_at = $2 WHERE id = $3")
        .bind(overlay.as_str())
        .bind(now)
        .bind(id)
        .execute(c)
        .await?;
    Ok(())
}

pub async fn delete_cluster(c: &mut Conn, id: i64) -> R<()> {
    sqlx::query("DELETE FROM nodes WHERE cluster_id = $1")
        .bind(id)
        .execute(&mut *c)
        .await?;
    sqlx::query("DELETE FROM clusters WHERE id = $1")
        .bind(id)
        .execute(c)
        .await?;
    Ok(())
}

pub async fn set_cluster_profile(
    c: &mut Conn,
    id: i64,
    profile_id: Option<i64>,
    now: i64,
) -> R<()> {
    sqlx::query("UPDATE clusters SET profile_id = $1, updated_at = $2 WHERE id = $3")
        .bind(profile_id)
        .bind(now)
        .bind(id)
        .execute(c)
        .await?;
    Ok(())
}

pub async fn set_cluster_recovery(
    c: &mut Conn,
    id: i64,
    policy: model::Recovery,
    now: i64,
) -> R<()> {
    sqlx::query("UPDATE clusters SET recovery = $1, updated_at = $2 WHERE id = $3")
        .bind(policy.as_str())
        .bind(now)
        .bind(id)
        .execute(c)
        .await?;
    Ok(())
}

/// Clusters whose provisioning frontend is on `host_id`.
pub async fn clusters_with_frontend_on(c: &mut Conn, host_id: i64) -> R<Vec<ClusterRow>> {
    Ok(sqlx::query_as(&format!(
        "{CLUSTER_SELECT} WHERE c.frontend_host_id = $1 ORDER BY c.id"
    ))
    .bind(host_id)
    .fetch_all(c)
    .await?)
}
