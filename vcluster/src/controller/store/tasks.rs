//! Tasks: how long operations are tracked.

use sqlx::FromRow;

use super::{Conn, R, StoreError, ms_to_time};
use crate::model;

#[derive(Debug, Clone, FromRow)]
pub struct TaskRow {
    pub id: i64,
    pub kind: model::TaskKind,
    pub owner_id: i64,
    pub owner_name: String,
    pub cluster_name: Option<String>,
    pub state: model::TaskState,
    pub message: String,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    pub deadline: i64,
}

impl TaskRow {
    pub fn to_model(&self) -> model::Task {
        model::Task {
            id: self.id,
            kind: self.kind,
            owner: self.owner_name.clone(),
            cluster: self.cluster_name.clone(),
            state: self.state,
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
    kind: model::TaskKind,
    owner_id: i64,
    cluster: Option<&str>,
    now: i64,
    deadline: i64,
) -> R<TaskRow> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO tasks (kind, owner_id, cluster_name, state, message, created_at, deadline) \
         VALUES ($1, $2, $3, 'running', '', $4, $5) RETURNING id",
    )
    .bind(kind.as_str())
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
    .bind(
        if succeeded {
            model::TaskState::Succeeded
        } else {
            model::TaskState::Failed
        }
        .as_str(),
    )
    .bind(message)
    .bind(now)
    .bind(id)
    .execute(c)
    .await?;
    Ok(done.rows_affected() == 1)
}
