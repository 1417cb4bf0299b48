//! Hosts: registered by their agents, with the secret the controller presents to them.

use sqlx::FromRow;

use super::{Conn, R};
use crate::model;

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
    /// The agent's pinned TLS certificate (`None`: plain HTTP, see `RegisterHost`).
    pub agent_cert_sha256: Option<String>,
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
    h.cpus, h.memory_mib, h.agent_url, h.agent_secret, h.agent_cert_sha256, h.overlay_endpoint, h.public_key, \
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
                 last_seen = $9, agent_cert_sha256 = $10 WHERE id = $11",
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
            .bind(&h.reg.agent_cert_sha256)
            .bind(id)
            .execute(c)
            .await?;
            id
        }
        None => {
            sqlx::query_scalar(
                "INSERT INTO hosts (name, site_id, agent_user_id, cpus, memory_mib, agent_url, \
                 agent_secret, overlay_endpoint, public_key, driver, enabled, registered_at, last_seen, \
                 agent_cert_sha256) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 1, $11, $11, $12) RETURNING id",
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
            .bind(&h.reg.agent_cert_sha256)
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
