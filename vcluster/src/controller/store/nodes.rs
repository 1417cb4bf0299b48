//! Nodes: one row per node of a cluster, kept (as `deleted`) after removal so an index keeps its name and MAC.

use sqlx::FromRow;

use super::{Conn, R, ms_to_time};
use crate::model;

#[derive(Debug, Clone, FromRow)]
pub struct NodeRow {
    pub id: i64,
    pub cluster_id: i64,
    pub cluster_name: String,
    pub idx: i64,
    pub name: String,
    pub host_id: i64,
    pub host_name: String,
    pub site_name: String,
    pub mac: String,
    pub address: String,
    pub cpus: i64,
    pub memory_mib: i64,
    pub firmware: model::Firmware,
    pub state: model::NodeState,
    pub target: model::NodeTarget,
    pub reason: Option<String>,
    pub updated_at: i64,
}

impl NodeRow {
    pub fn state(&self) -> model::NodeState {
        self.state
    }
    pub fn to_model(&self) -> model::Node {
        model::Node {
            id: self.id,
            cluster: self.cluster_name.clone(),
            index: self.idx as u32,
            name: self.name.clone(),
            host: self.host_name.clone(),
            site: self.site_name.clone(),
            mac: self.mac.clone(),
            address: self.address.clone(),
            cpus: self.cpus,
            memory_mib: self.memory_mib,
            firmware: self.firmware,
            state: self.state(),
            reason: self.reason.clone(),
            updated_at: ms_to_time(self.updated_at),
            health: None,
            install: None,
        }
    }
}

const NODE_SELECT: &str = "SELECT n.id, n.cluster_id, c.name AS cluster_name, n.idx, n.name, \
    n.host_id, h.name AS host_name, s.name AS site_name, n.mac, n.address, n.cpus, n.memory_mib, \
    n.firmware, n.state, n.target, n.reason, n.updated_at FROM nodes n JOIN clusters c ON c.id = n.cluster_id \
    JOIN hosts h ON h.id = n.host_id JOIN sites s ON s.id = h.site_id";

pub async fn nodes_of_cluster(c: &mut Conn, cluster_id: i64) -> R<Vec<NodeRow>> {
    Ok(sqlx::query_as(&format!(
        "{NODE_SELECT} WHERE n.cluster_id = $1 ORDER BY n.idx"
    ))
    .bind(cluster_id)
    .fetch_all(c)
    .await?)
}

pub async fn nodes_on_host(c: &mut Conn, host_id: i64) -> R<Vec<NodeRow>> {
    Ok(sqlx::query_as(&format!(
        "{NODE_SELECT} WHERE n.host_id = $1 ORDER BY n.cluster_id, n.idx"
    ))
    .bind(host_id)
    .fetch_all(c)
    .await?)
}

pub async fn all_nodes(c: &mut Conn) -> R<Vec<NodeRow>> {
    Ok(sqlx::query_as(&format!("{NODE_SELECT} ORDER BY n.id"))
        .fetch_all(c)
        .await?)
}

pub struct NewNode<'a> {
    pub cluster_id: i64,
    pub idx: i64,
    pub name: &'a str,
    pub host_id: i64,
    pub mac: &'a str,
    pub address: &'a str,
    pub cpus: i64,
    pub memory_mib: i64,
    pub firmware: model::Firmware,
}

/// Creates the node in state `requested`, or brings back the row of a deleted or failed
/// node with the same index (so its id, name and MAC stay the same).
pub async fn upsert_requested_node(c: &mut Conn, n: NewNode<'_>, now: i64) -> R<()> {
    let updated = sqlx::query(
        "UPDATE nodes SET host_id = $1, mac = $2, address = $3, cpus = $4, memory_mib = $5, \
         state = 'requested', target = 'running', reason = NULL, updated_at = $6, firmware = $9 \
         WHERE cluster_id = $7 AND idx = $8",
    )
    .bind(n.host_id)
    .bind(n.mac)
    .bind(n.address)
    .bind(n.cpus)
    .bind(n.memory_mib)
    .bind(now)
    .bind(n.cluster_id)
    .bind(n.idx)
    .bind(n.firmware.as_str())
    .execute(&mut *c)
    .await?;
    if updated.rows_affected() == 0 {
        sqlx::query(
            "INSERT INTO nodes (cluster_id, idx, name, host_id, mac, address, cpus, memory_mib, \
             state, target, created_at, updated_at, firmware) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'requested', 'running', $9, $9, $10)",
        )
        .bind(n.cluster_id)
        .bind(n.idx)
        .bind(n.name)
        .bind(n.host_id)
        .bind(n.mac)
        .bind(n.address)
        .bind(n.cpus)
        .bind(n.memory_mib)
        .bind(now)
        .bind(n.firmware.as_str())
        .execute(c)
        .await?;
    }
    Ok(())
}

pub async fn set_node_state(
    c: &mut Conn,
    id: i64,
    state: model::NodeState,
    target: model::NodeTarget,
    reason: Option<&str>,
    now: i64,
) -> R<()> {
    sqlx::query(
        "UPDATE nodes SET state = $1, target = $2, reason = $3, updated_at = $4 WHERE id = $5",
    )
    .bind(state.as_str())
    .bind(target.as_str())
    .bind(reason)
    .bind(now)
    .bind(id)
    .execute(c)
    .await?;
    Ok(())
}

/// A node by name (node names are unique across clusters).
pub async fn node_by_name(c: &mut Conn, name: &str) -> R<Option<NodeRow>> {
    Ok(sqlx::query_as(&format!("{NODE_SELECT} WHERE n.name = $1"))
        .bind(name)
        .fetch_optional(c)
        .await?)
}

pub async fn node_by_id(c: &mut Conn, id: i64) -> R<Option<NodeRow>> {
    Ok(sqlx::query_as(&format!("{NODE_SELECT} WHERE n.id = $1"))
        .bind(id)
        .fetch_optional(c)
        .await?)
}
