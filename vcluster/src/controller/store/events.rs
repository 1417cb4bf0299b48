//! Events: the log of what happened, per cluster and owner.

use sqlx::FromRow;

use super::{Conn, R, ms_to_time};
use crate::model;

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
