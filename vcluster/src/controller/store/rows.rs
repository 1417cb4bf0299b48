//! Rows as the store keeps them, and the queries that read and write them. Every function
//! takes a connection, so the caller decides which transaction it belongs to.

use sqlx::{AnyConnection, FromRow};

use super::{StoreError, ms_to_time};
use crate::model;

type Conn = AnyConnection;
type R<T> = Result<T, StoreError>;

// ---------------------------------------------------------------------------------------
// users and tokens

#[derive(Debug, Clone, FromRow)]
pub struct UserRow {
    pub id: i64,
    pub name: String,
    pub role: String,
    pub created_at: i64,
}

impl UserRow {
    pub fn role(&self) -> model::Role {
        self.role.parse().unwrap_or(model::Role::User)
    }
    pub fn to_model(&self) -> model::User {
        model::User {
            id: self.id,
            name: self.name.clone(),
            role: self.role(),
            created_at: ms_to_time(self.created_at),
        }
    }
}

pub async fn insert_user(c: &mut Conn, name: &str, role: model::Role, now: i64) -> R<UserRow> {
    Ok(sqlx::query_as(
        "INSERT INTO users (name, role, created_at) VALUES ($1, $2, $3) \
         RETURNING id, name, role, created_at",
    )
    .bind(name)
    .bind(role.as_str())
    .bind(now)
    .fetch_one(c)
    .await?)
}

pub async fn insert_token(c: &mut Conn, user_id: i64, token_hash: &str, now: i64) -> R<()> {
    sqlx::query("INSERT INTO tokens (user_id, token_hash, created_at) VALUES ($1, $2, $3)")
        .bind(user_id)
        .bind(token_hash)
        .bind(now)
        .execute(c)
        .await?;
    Ok(())
}

pub async fn user_by_token_hash(c: &mut Conn, token_hash: &str) -> R<Option<UserRow>> {
    Ok(sqlx::query_as(
        "SELECT u.id, u.name, u.role, u.created_at FROM users u \
         JOIN tokens t ON t.user_id = u.id WHERE t.token_hash = $1",
    )
    .bind(token_hash)
    .fetch_optional(c)
    .await?)
}

pub async fn user_by_name(c: &mut Conn, name: &str) -> R<Option<UserRow>> {
    Ok(
        sqlx::query_as("SELECT id, name, role, created_at FROM users WHERE name = $1")
            .bind(name)
            .fetch_optional(c)
            .await?,
    )
}

pub async fn list_users(c: &mut Conn) -> R<Vec<UserRow>> {
    Ok(
        sqlx::query_as("SELECT id, name, role, created_at FROM users ORDER BY id")
            .fetch_all(c)
            .await?,
    )
}

pub async fn count_admins(c: &mut Conn) -> R<i64> {
    Ok(
        sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE role = 'admin'")
            .fetch_one(c)
            .await?,
    )
}

// ---------------------------------------------------------------------------------------
// sites and hosts

#[derive(Debug, Clone, FromRow)]
pub struct SiteRow {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub created_at: i64,
}

const SITE_COLS: &str = "id, name, description, created_at";

pub async fn insert_site(c: &mut Conn, name: &str, description: &str, now: i64) -> R<SiteRow> {
    Ok(sqlx::query_as(&format!(
        "INSERT INTO sites (name, description, created_at) VALUES ($1, $2, $3) RETURNING {SITE_COLS}"
    ))
    .bind(name)
    .bind(description)
    .bind(now)
    .fetch_one(c)
    .await?)
}

pub async fn list_sites(c: &mut Conn) -> R<Vec<SiteRow>> {
    Ok(
        sqlx::query_as(&format!("SELECT {SITE_COLS} FROM sites ORDER BY name"))
            .fetch_all(c)
            .await?,
    )
}

/// A site by name, or by id when `key` is a number.
pub async fn site_by_key(c: &mut Conn, key: &str) -> R<Option<SiteRow>> {
    let q = format!("SELECT {SITE_COLS} FROM sites WHERE name = $1 OR CAST(id AS TEXT) = $1");
    Ok(sqlx::query_as(&q).bind(key).fetch_optional(c).await?)
}

pub async fn delete_site(c: &mut Conn, id: i64) -> R<()> {
    sqlx::query("DELETE FROM usage_samples WHERE site_id = $1")
        .bind(id)
        .execute(&mut *c)
        .await?;
    sqlx::query("DELETE FROM sites WHERE id = $1")
        .bind(id)
        .execute(c)
        .await?;
    Ok(())
}

#[derive(Debug, Clone, FromRow)]
pub struct HostRow {
    pub id: i64,
    pub name: String,
    pub site_id: i64,
    pub site_name: String,
    pub agent_user_id: i64,
    pub cpus: i64,
    pub memory_mib: i64,
    pub agent_url: String,
    pub agent_secret: String,
    pub overlay_endpoint: String,
    pub public_key: String,
    pub driver: String,
    pub enabled: i64,
    pub registered_at: i64,
    pub last_seen: Option<i64>,
}

impl HostRow {
    pub fn is_online(&self, now: i64, timeout_ms: i64) -> bool {
        self.last_seen.is_some_and(|t| now - t <= timeout_ms)
    }
}

const HOST_SELECT: &str = "SELECT h.id, h.name, h.site_id, s.name AS site_name, h.agent_user_id, \
    h.cpus, h.memory_mib, h.agent_url, h.agent_secret, h.overlay_endpoint, h.public_key, \
    h.driver, h.enabled, h.registered_at, h.last_seen FROM hosts h JOIN sites s ON s.id = h.site_id";

pub async fn list_hosts(c: &mut Conn) -> R<Vec<HostRow>> {
    Ok(sqlx::query_as(&format!("{HOST_SELECT} ORDER BY h.name"))
        .fetch_all(c)
        .await?)
}

pub async fn host_by_key(c: &mut Conn, key: &str) -> R<Option<HostRow>> {
    Ok(sqlx::query_as(&format!(
        "{HOST_SELECT} WHERE h.name = $1 OR CAST(h.id AS TEXT) = $1"
    ))
    .bind(key)
    .fetch_optional(c)
    .await?)
}

pub async fn host_by_id(c: &mut Conn, id: i64) -> R<Option<HostRow>> {
    Ok(sqlx::query_as(&format!("{HOST_SELECT} WHERE h.id = $1"))
        .bind(id)
        .fetch_optional(c)
        .await?)
}

pub struct HostRegistration<'a> {
    pub reg: &'a model::RegisterHost,
    pub site_id: i64,
    pub agent_user_id: i64,
}

/// Inserts the host, or updates it when an agent registers it again.
pub async fn upsert_host(c: &mut Conn, h: HostRegistration<'_>, now: i64) -> R<i64> {
    let existing: Option<i64> = sqlx::query_scalar("SELECT id FROM hosts WHERE name = $1")
        .bind(&h.reg.name)
        .fetch_optional(&mut *c)
        .await?;
    let id = match existing {
        Some(id) => {
            sqlx::query(
                "UPDATE hosts SET site_id = $1, cpus = $2, memory_mib = $3, agent_url = $4, \
                 agent_secret = $5, overlay_endpoint = $6, public_key = $7, driver = $8, \
                 last_seen = $9 WHERE id = $10",
            )
            .bind(h.site_id)
            .bind(h.reg.cpus)
            .bind(h.reg.memory_mib)
            .bind(&h.reg.agent_url)
            .bind(&h.reg.agent_secret)
            .bind(&h.reg.overlay_endpoint)
            .bind(&h.reg.public_key)
            .bind(&h.reg.driver)
            .bind(now)
            .bind(id)
            .execute(c)
            .await?;
            id
        }
        None => {
            sqlx::query_scalar(
                "INSERT INTO hosts (name, site_id, agent_user_id, cpus, memory_mib, agent_url, \
                 agent_secret, overlay_endpoint, public_key, driver, enabled, registered_at, last_seen) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 1, $11, $11) RETURNING id",
            )
            .bind(&h.reg.name)
            .bind(h.site_id)
            .bind(h.agent_user_id)
            .bind(h.reg.cpus)
            .bind(h.reg.memory_mib)
            .bind(&h.reg.agent_url)
            .bind(&h.reg.agent_secret)
            .bind(&h.reg.overlay_endpoint)
            .bind(&h.reg.public_key)
            .bind(&h.reg.driver)
            .bind(now)
            .fetch_one(c)
            .await?
        }
    };
    Ok(id)
}

pub async fn touch_host(c: &mut Conn, id: i64, now: i64) -> R<()> {
    sqlx::query("UPDATE hosts SET last_seen = $1 WHERE id = $2")
        .bind(now)
        .bind(id)
        .execute(c)
        .await?;
    Ok(())
}

pub async fn set_host_enabled(c: &mut Conn, id: i64, enabled: bool) -> R<()> {
    sqlx::query("UPDATE hosts SET enabled = $1 WHERE id = $2")
        .bind(enabled as i64)
        .bind(id)
        .execute(c)
        .await?;
    Ok(())
}

/// Drops the rows of nodes that were deleted from a host: history, not state.
pub async fn forget_deleted_nodes_on_host(c: &mut Conn, host_id: i64) -> R<()> {
    sqlx::query("DELETE FROM nodes WHERE host_id = $1 AND state = 'deleted'")
        .bind(host_id)
        .execute(c)
        .await?;
    Ok(())
}

pub async fn delete_host(c: &mut Conn, id: i64) -> R<()> {
    sqlx::query("DELETE FROM hosts WHERE id = $1")
        .bind(id)
        .execute(c)
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// clusters and nodes

#[derive(Debug, Clone, FromRow)]
pub struct ClusterRow {
    pub id: i64,
    pub name: String,
    pub owner_id: i64,
    pub owner_name: String,
    pub network_id: i64,
    pub psk: String,
    pub subnet: String,
    pub state: String,
    pub overlay: String,
    pub reason: Option<String>,
    pub reservation_id: Option<i64>,
    pub node_cpus: i64,
    pub node_memory_mib: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

impl ClusterRow {
    pub fn overlay_running(&self) -> bool {
        self.overlay == "running"
    }
    pub fn to_model(&self, nodes: Vec<model::Node>) -> model::Cluster {
        use model::{ClusterState, OverlayState};
        model::Cluster {
            id: self.id,
            name: self.name.clone(),
            owner: self.owner_name.clone(),
            network_id: self.network_id as u32,
            psk: self.psk.clone(),
            subnet: self.subnet.clone(),
            state: match self.state.as_str() {
                "expired" => ClusterState::Expired,
                "deleting" => ClusterState::Deleting,
                "failed" => ClusterState::Failed,
                _ => ClusterState::Active,
            },
            overlay: if self.overlay_running() {
                OverlayState::Running
            } else {
                OverlayState::Stopped
            },
            reason: self.reason.clone(),
            reservation: self.reservation_id,
            node_cpus: self.node_cpus,
            node_memory_mib: self.node_memory_mib,
            nodes,
            created_at: ms_to_time(self.created_at),
        }
    }
}

const CLUSTER_SELECT: &str = "SELECT c.id, c.name, c.owner_id, u.name AS owner_name, \
    c.network_id, c.psk, c.subnet, c.state, c.overlay, c.reason, c.reservation_id, c.node_cpus, \
    c.node_memory_mib, c.created_at, c.updated_at FROM clusters c JOIN users u ON u.id = c.owner_id";

pub struct NewCluster<'a> {
    pub name: &'a str,
    pub owner_id: i64,
    pub network_id: i64,
    pub psk: &'a str,
    pub subnet: &'a str,
    pub reservation_id: Option<i64>,
    pub node_cpus: i64,
    pub node_memory_mib: i64,
}

pub async fn insert_cluster(c: &mut Conn, n: NewCluster<'_>, now: i64) -> R<i64> {
    Ok(sqlx::query_scalar(
        "INSERT INTO clusters (name, owner_id, network_id, psk, subnet, state, overlay, \
         reservation_id, node_cpus, node_memory_mib, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, 'active', 'running', $6, $7, $8, $9, $9) RETURNING id",
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
    state: &str,
    reason: Option<&str>,
    now: i64,
) -> R<()> {
    sqlx::query("UPDATE clusters SET state = $1, reason = $2, updated_at = $3 WHERE id = $4")
        .bind(state)
        .bind(reason)
        .bind(now)
        .bind(id)
        .execute(c)
        .await?;
    Ok(())
}

pub async fn set_cluster_overlay(c: &mut Conn, id: i64, overlay: &str, now: i64) -> R<()> {
    sqlx::query("UPDATE clusters SET overlay = $1, updated_at = $2 WHERE id = $3")
        .bind(overlay)
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

/// Hands out the next overlay network id, at least `first`; ids are never reused.
pub async fn next_network_id(c: &mut Conn, first: i64) -> R<i64> {
    Ok(sqlx::query_scalar(
        "UPDATE counters SET value = CASE WHEN value + 1 < $1 THEN $1 ELSE value + 1 END \
         WHERE name = 'network_id' RETURNING value",
    )
    .bind(first)
    .fetch_one(c)
    .await?)
}

pub async fn current_revision(c: &mut Conn) -> R<i64> {
    Ok(
        sqlx::query_scalar("SELECT value FROM counters WHERE name = 'revision'")
            .fetch_one(c)
            .await?,
    )
}

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
    pub state: String,
    pub target: String,
    pub reason: Option<String>,
    pub updated_at: i64,
}

impl NodeRow {
    pub fn state(&self) -> model::NodeState {
        self.state.parse().unwrap_or(model::NodeState::Failed)
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
            state: self.state(),
            reason: self.reason.clone(),
            updated_at: ms_to_time(self.updated_at),
        }
    }
}

const NODE_SELECT: &str = "SELECT n.id, n.cluster_id, c.name AS cluster_name, n.idx, n.name, \
    n.host_id, h.name AS host_name, s.name AS site_name, n.mac, n.address, n.cpus, n.memory_mib, \
    n.state, n.target, n.reason, n.updated_at FROM nodes n JOIN clusters c ON c.id = n.cluster_id \
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
}

/// Creates the node in state `requested`, or brings back the row of a deleted or failed
/// node with the same index (so its id, name and MAC stay the same).
pub async fn upsert_requested_node(c: &mut Conn, n: NewNode<'_>, now: i64) -> R<()> {
    let updated = sqlx::query(
        "UPDATE nodes SET host_id = $1, mac = $2, address = $3, cpus = $4, memory_mib = $5, \
         state = 'requested', target = 'running', reason = NULL, updated_at = $6 \
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
    .execute(&mut *c)
    .await?;
    if updated.rows_affected() == 0 {
        sqlx::query(
            "INSERT INTO nodes (cluster_id, idx, name, host_id, mac, address, cpus, memory_mib, \
             state, target, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'requested', 'running', $9, $9)",
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
        .execute(c)
        .await?;
    }
    Ok(())
}

pub async fn set_node_state(
    c: &mut Conn,
    id: i64,
    state: model::NodeState,
    target: &str,
    reason: Option<&str>,
    now: i64,
) -> R<()> {
    sqlx::query(
        "UPDATE nodes SET state = $1, target = $2, reason = $3, updated_at = $4 WHERE id = $5",
    )
    .bind(state.as_str())
    .bind(target)
    .bind(reason)
    .bind(now)
    .bind(id)
    .execute(c)
    .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// reservations

#[derive(Debug, Clone, FromRow)]
pub struct ReservationRow {
    pub id: i64,
    pub owner_id: i64,
    pub owner_name: String,
    pub site_id: i64,
    pub site_name: String,
    pub nodes: Option<i64>,
    pub cpus: i64,
    pub memory_mib: i64,
    pub starts_at: i64,
    pub ends_at: i64,
    pub state: String,
    pub note: String,
    pub created_at: i64,
}

impl ReservationRow {
    pub fn resources(&self) -> model::Resources {
        model::Resources::new(self.cpus, self.memory_mib)
    }
    pub fn to_model(&self, clusters: Vec<String>) -> model::Reservation {
        use model::ReservationState;
        model::Reservation {
            id: self.id,
            owner: self.owner_name.clone(),
            site: self.site_name.clone(),
            nodes: self.nodes,
            resources: self.resources(),
            start: ms_to_time(self.starts_at),
            end: ms_to_time(self.ends_at),
            state: match self.state.as_str() {
                "cancelled" => ReservationState::Cancelled,
                "expired" => ReservationState::Expired,
                _ => ReservationState::Accepted,
            },
            note: self.note.clone(),
            clusters,
            created_at: ms_to_time(self.created_at),
        }
    }
}

const RESERVATION_SELECT: &str = "SELECT r.id, r.owner_id, u.name AS owner_name, r.site_id, \
    s.name AS site_name, r.nodes, r.cpus, r.memory_mib, r.starts_at, r.ends_at, r.state, r.note, \
    r.created_at FROM reservations r JOIN users u ON u.id = r.owner_id JOIN sites s ON s.id = r.site_id";

pub struct NewReservation<'a> {
    pub owner_id: i64,
    pub site_id: i64,
    pub nodes: Option<i64>,
    pub resources: model::Resources,
    pub starts_at: i64,
    pub ends_at: i64,
    pub note: &'a str,
}

pub async fn insert_reservation(c: &mut Conn, r: NewReservation<'_>, now: i64) -> R<i64> {
    Ok(sqlx::query_scalar(
        "INSERT INTO reservations (owner_id, site_id, nodes, cpus, memory_mib, starts_at, ends_at, \
         state, note, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 'accepted', $8, $9) RETURNING id",
    )
    .bind(r.owner_id)
    .bind(r.site_id)
    .bind(r.nodes)
    .bind(r.resources.cpus)
    .bind(r.resources.memory_mib)
    .bind(r.starts_at)
    .bind(r.ends_at)
    .bind(r.note)
    .bind(now)
    .fetch_one(c)
    .await?)
}

pub async fn reservation_by_id(c: &mut Conn, id: i64) -> R<Option<ReservationRow>> {
    Ok(
        sqlx::query_as(&format!("{RESERVATION_SELECT} WHERE r.id = $1"))
            .bind(id)
            .fetch_optional(c)
            .await?,
    )
}

pub async fn list_reservations(c: &mut Conn, owner: Option<i64>) -> R<Vec<ReservationRow>> {
    Ok(match owner {
        Some(o) => {
            sqlx::query_as(&format!(
                "{RESERVATION_SELECT} WHERE r.owner_id = $1 ORDER BY r.starts_at, r.id"
            ))
            .bind(o)
            .fetch_all(c)
            .await?
        }
        None => {
            sqlx::query_as(&format!("{RESERVATION_SELECT} ORDER BY r.starts_at, r.id"))
                .fetch_all(c)
                .await?
        }
    })
}

/// Accepted reservations that have not ended by `now`.
pub async fn live_reservations(c: &mut Conn, now: i64) -> R<Vec<ReservationRow>> {
    Ok(sqlx::query_as(&format!(
        "{RESERVATION_SELECT} WHERE r.state = 'accepted' AND r.ends_at > $1 ORDER BY r.starts_at"
    ))
    .bind(now)
    .fetch_all(c)
    .await?)
}

/// Accepted reservations whose lease has ended by `now`.
pub async fn ended_reservations(c: &mut Conn, now: i64) -> R<Vec<ReservationRow>> {
    Ok(sqlx::query_as(&format!(
        "{RESERVATION_SELECT} WHERE r.state = 'accepted' AND r.ends_at <= $1"
    ))
    .bind(now)
    .fetch_all(c)
    .await?)
}

pub async fn set_reservation_state(c: &mut Conn, id: i64, state: &str) -> R<()> {
    sqlx::query("UPDATE reservations SET state = $1 WHERE id = $2")
        .bind(state)
        .bind(id)
        .execute(c)
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// tasks and events

#[derive(Debug, Clone, FromRow)]
pub struct TaskRow {
    pub id: i64,
    pub kind: String,
    pub owner_id: i64,
    pub owner_name: String,
    pub cluster_name: Option<String>,
    pub state: String,
    pub message: String,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    pub deadline: i64,
}

impl TaskRow {
    pub fn to_model(&self) -> model::Task {
        use model::TaskState;
        model::Task {
            id: self.id,
            kind: self.kind.clone(),
            owner: self.owner_name.clone(),
            cluster: self.cluster_name.clone(),
            state: match self.state.as_str() {
                "succeeded" => TaskState::Succeeded,
                "failed" => TaskState::Failed,
                _ => TaskState::Running,
            },
            message: self.message.clone(),
            created_at: ms_to_time(self.created_at),
            finished_at: self.finished_at.map(ms_to_time),
            deadline: ms_to_time(self.deadline),
        }
    }
}

const TASK_SELECT: &str = "SELECT t.id, t.kind, t.owner_id, u.name AS owner_name, t.cluster_name, \
    t.state, t.message, t.created_at, t.finished_at, t.deadline FROM tasks t JOIN users u ON u.id = t.owner_id";

pub async fn insert_task(
    c: &mut Conn,
    kind: &str,
    owner_id: i64,
    cluster: Option<&str>,
    now: i64,
    deadline: i64,
) -> R<TaskRow> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO tasks (kind, owner_id, cluster_name, state, message, created_at, deadline) \
         VALUES ($1, $2, $3, 'running', '', $4, $5) RETURNING id",
    )
    .bind(kind)
    .bind(owner_id)
    .bind(cluster)
    .bind(now)
    .bind(deadline)
    .fetch_one(&mut *c)
    .await?;
    task_by_id(c, id)
        .await?
        .ok_or_else(|| StoreError::BadRow(format!("task {id} vanished")))
}

pub async fn task_by_id(c: &mut Conn, id: i64) -> R<Option<TaskRow>> {
    Ok(sqlx::query_as(&format!("{TASK_SELECT} WHERE t.id = $1"))
        .bind(id)
        .fetch_optional(c)
        .await?)
}

pub async fn list_tasks(
    c: &mut Conn,
    owner: Option<i64>,
    cluster: Option<&str>,
    limit: i64,
) -> R<Vec<TaskRow>> {
    Ok(sqlx::query_as(&format!(
        "{TASK_SELECT} WHERE ($1 = -1 OR t.owner_id = $1) AND ($2 = '' OR t.cluster_name = $2) \
         ORDER BY t.id DESC LIMIT $3"
    ))
    .bind(owner.unwrap_or(-1))
    .bind(cluster.unwrap_or(""))
    .bind(limit)
    .fetch_all(c)
    .await?)
}

pub async fn running_tasks(c: &mut Conn) -> R<Vec<TaskRow>> {
    Ok(sqlx::query_as(&format!(
        "{TASK_SELECT} WHERE t.state = 'running' ORDER BY t.id"
    ))
    .fetch_all(c)
    .await?)
}

/// Ends a running task; a task that already ended keeps its outcome (returns false).
pub async fn finish_task(
    c: &mut Conn,
    id: i64,
    succeeded: bool,
    message: &str,
    now: i64,
) -> R<bool> {
    let done = sqlx::query(
        "UPDATE tasks SET state = $1, message = $2, finished_at = $3 WHERE id = $4 AND state = 'running'",
    )
    .bind(if succeeded { "succeeded" } else { "failed" })
    .bind(message)
    .bind(now)
    .bind(id)
    .execute(c)
    .await?;
    Ok(done.rows_affected() == 1)
}

#[derive(Debug, Clone, FromRow)]
pub struct EventRow {
    pub id: i64,
    pub at: i64,
    pub kind: String,
    pub cluster_name: Option<String>,
    pub owner_id: Option<i64>,
    pub task_id: Option<i64>,
    pub message: String,
}

impl EventRow {
    pub fn to_model(&self) -> model::Event {
        model::Event {
            id: self.id,
            at: ms_to_time(self.at),
            kind: self.kind.clone(),
            cluster: self.cluster_name.clone(),
            task: self.task_id,
            message: self.message.clone(),
        }
    }
}

pub struct NewEvent<'a> {
    pub kind: &'a str,
    pub cluster: Option<&'a str>,
    pub owner_id: Option<i64>,
    pub task_id: Option<i64>,
    pub message: &'a str,
}

pub async fn insert_event(c: &mut Conn, e: NewEvent<'_>, now: i64) -> R<()> {
    sqlx::query(
        "INSERT INTO events (at, kind, cluster_name, owner_id, task_id, message) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(now)
    .bind(e.kind)
    .bind(e.cluster)
    .bind(e.owner_id)
    .bind(e.task_id)
    .bind(e.message)
    .execute(c)
    .await?;
    Ok(())
}

pub async fn list_events(
    c: &mut Conn,
    owner: Option<i64>,
    cluster: Option<&str>,
    limit: i64,
) -> R<Vec<EventRow>> {
    Ok(sqlx::query_as(
        "SELECT id, at, kind, cluster_name, owner_id, task_id, message FROM events \
         WHERE ($1 = -1 OR owner_id = $1) AND ($2 = '' OR cluster_name = $2) \
         ORDER BY id DESC LIMIT $3",
    )
    .bind(owner.unwrap_or(-1))
    .bind(cluster.unwrap_or(""))
    .bind(limit)
    .fetch_all(c)
    .await?)
}

// ---------------------------------------------------------------------------------------
// usage samples

#[derive(Debug, Clone, FromRow)]
pub struct SampleRow {
    pub site_id: i64,
    pub at: i64,
    pub capacity_cpus: i64,
    pub capacity_memory_mib: i64,
    pub used_cpus: i64,
    pub used_memory_mib: i64,
    pub reserved_cpus: i64,
    pub reserved_memory_mib: i64,
}

pub async fn insert_sample(c: &mut Conn, s: &SampleRow) -> R<()> {
    sqlx::query(
        "INSERT INTO usage_samples (site_id, at, capacity_cpus, capacity_memory_mib, used_cpus, \
         used_memory_mib, reserved_cpus, reserved_memory_mib) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(s.site_id)
    .bind(s.at)
    .bind(s.capacity_cpus)
    .bind(s.capacity_memory_mib)
    .bind(s.used_cpus)
    .bind(s.used_memory_mib)
    .bind(s.reserved_cpus)
    .bind(s.reserved_memory_mib)
    .execute(c)
    .await?;
    Ok(())
}

pub async fn samples(c: &mut Conn, site_id: i64, from: i64, to: i64) -> R<Vec<SampleRow>> {
    Ok(sqlx::query_as(
        "SELECT site_id, at, capacity_cpus, capacity_memory_mib, used_cpus, used_memory_mib, \
         reserved_cpus, reserved_memory_mib FROM usage_samples \
         WHERE site_id = $1 AND at >= $2 AND at <= $3 ORDER BY at",
    )
    .bind(site_id)
    .bind(from)
    .bind(to)
    .fetch_all(c)
    .await?)
}

pub async fn prune_samples(c: &mut Conn, before: i64) -> R<()> {
    sqlx::query("DELETE FROM usage_samples WHERE at < $1")
        .bind(before)
        .execute(c)
        .await?;
    Ok(())
}
