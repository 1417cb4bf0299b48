//! Installs: one row per provisioned node while it has an install (its state, progress,
//! failure reason, one-time token, and when its current phase began).

use sqlx::FromRow;

use super::{Conn, R, ms_to_time};
use crate::model::{self, InstallState};

#[derive(Debug, Clone, FromRow)]
pub struct InstallRow {
    pub node_id: i64,
    pub state: InstallState,
    pub token: String,
    pub packages_done: Option<i64>,
    pub packages_total: Option<i64>,
    pub bytes: Option<i64>,
    pub step: Option<String>,
    pub reason: Option<String>,
    pub started_at: i64,
    pub phase_started_at: i64,
    pub updated_at: i64,
}

impl InstallRow {
    pub fn to_model(&self) -> model::NodeInstall {
        model::NodeInstall {
            state: self.state,
            packages_done: self.packages_done,
            packages_total: self.packages_total,
            bytes: self.bytes,
            step: self.step.clone(),
            reason: self.reason.clone(),
            started_at: ms_to_time(self.started_at),
            phase_started_at: ms_to_time(self.phase_started_at),
        }
    }
}

const INSTALL_SELECT: &str = "SELECT i.node_id, i.state, i.token, i.packages_done, \
    i.packages_total, i.bytes, i.step, i.reason, i.started_at, i.phase_started_at, i.updated_at \
    FROM installs i";

/// Starts a (re)install of a node: `pending`, a fresh token, no progress.
pub async fn start_install(c: &mut Conn, node_id: i64, token: &str, now: i64) -> R<()> {
    sqlx::query("DELETE FROM installs WHERE node_id = $1")
        .bind(node_id)
        .execute(&mut *c)
        .await?;
    sqlx::query(
        "INSERT INTO installs (node_id, state, token, started_at, phase_started_at, updated_at) \
         VALUES ($1, $2, $3, $4, $4, $4)",
    )
    .bind(node_id)
    .bind(InstallState::Pending.as_str())
    .bind(token)
    .bind(now)
    .execute(c)
    .await?;
    Ok(())
}

pub async fn install_of(c: &mut Conn, node_id: i64) -> R<Option<InstallRow>> {
    Ok(
        sqlx::query_as(&format!("{INSTALL_SELECT} WHERE i.node_id = $1"))
            .bind(node_id)
            .fetch_optional(c)
            .await?,
    )
}

/// The installs of a cluster's nodes.
pub async fn installs_of_cluster(c: &mut Conn, cluster_id: i64) -> R<Vec<InstallRow>> {
    Ok(sqlx::query_as(&format!(
        "{INSTALL_SELECT} JOIN nodes n ON n.id = i.node_id WHERE n.cluster_id = $1 ORDER BY n.idx"
    ))
    .bind(cluster_id)
    .fetch_all(c)
    .await?)
}

/// Installs still under way (not `booted` or `failed`).
pub async fn unfinished_installs(c: &mut Conn) -> R<Vec<InstallRow>> {
    Ok(sqlx::query_as(&format!(
        "{INSTALL_SELECT} WHERE i.state NOT IN ('booted', 'failed') ORDER BY i.node_id"
    ))
    .fetch_all(c)
    .await?)
}

/// Records a report: the new state (its phase restarts when the state changes), the
/// progress figures when given, the failure reason.
/// An install's progress as a report gives it: each figure kept as it was when absent.
#[derive(Debug, Clone, Default)]
pub struct InstallProgress<'a> {
    pub packages_done: Option<i64>,
    pub packages_total: Option<i64>,
    pub bytes: Option<i64>,
    pub step: Option<&'a str>,
}

pub async fn update_install(
    c: &mut Conn,
    node_id: i64,
    state: InstallState,
    progress: &InstallProgress<'_>,
    reason: Option<&str>,
    now: i64,
) -> R<()> {
    sqlx::query(
        "UPDATE installs SET \
           phase_started_at = CASE WHEN state = $2 THEN phase_started_at ELSE $6 END, \
           state = $2, \
           packages_done = COALESCE($3, packages_done), \
           packages_total = COALESCE($4, packages_total), \
           bytes = COALESCE($5, bytes), \
           step = COALESCE($8, step), \
           reason = $7, \
           updated_at = $6 \
         WHERE node_id = $1",
    )
    .bind(node_id)
    .bind(state.as_str())
    .bind(progress.packages_done)
    .bind(progress.packages_total)
    .bind(progress.bytes)
    .bind(now)
    .bind(reason)
    .bind(progress.step)
    .execute(c)
    .await?;
    Ok(())
}
