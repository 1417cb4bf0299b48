//! Tasks and events: how a long operation went, and what happened to a cluster over time.
//! Users see their own, admins everyone's. Read-only.

use axum::extract::State;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::api_error::{ApiError, ApiJson, ApiPath, ApiQuery};
use crate::controller::App;
use crate::controller::auth::Principal;
use crate::controller::store;
use crate::model::{ApiErrorBody, Event, Task};

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only this cluster's (by name).
    pub cluster: Option<String>,
    /// At most this many, newest first (default 100, at most 1000).
    pub limit: Option<i64>,
}

fn limit(q: &ListQuery) -> Result<i64, ApiError> {
    match q.limit {
        None => Ok(100),
        Some(l) if (1..=1000).contains(&l) => Ok(l),
        Some(_) => Err(ApiError::invalid(
            "limit",
            "limit must be between 1 and 1000",
        )),
    }
}

#[utoipa::path(get, path = "/v1/tasks", tag = "tasks", params(ListQuery),
    responses((status = 200, body = Vec<Task>)))]
pub async fn list_tasks(
    State(app): State<App>,
    who: Principal,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<ApiJson<Vec<Task>>, ApiError> {
    who.require_person()?;
    let limit = limit(&q)?;
    let mut conn = app.store.conn().await?;
    let rows =
        store::list_tasks(&mut conn, who.owner_filter(), q.cluster.as_deref(), limit).await?;
    Ok(ApiJson(rows.iter().map(|t| t.to_model()).collect()))
}

#[utoipa::path(get, path = "/v1/tasks/{id}", tag = "tasks", params(("id" = i64, Path)),
    responses((status = 200, body = Task), (status = 404, body = ApiErrorBody)))]
pub async fn get_task(
    State(app): State<App>,
    who: Principal,
    ApiPath(id): ApiPath<i64>,
) -> Result<ApiJson<Task>, ApiError> {
    who.require_person()?;
    let mut conn = app.store.conn().await?;
    match store::task_by_id(&mut conn, id).await? {
        Some(t) if who.may_see(t.owner_id) => Ok(ApiJson(t.to_model())),
        _ => Err(ApiError::not_found(format!("no task {id}"))),
    }
}

#[utoipa::path(get, path = "/v1/events", tag = "tasks", params(ListQuery),
    responses((status = 200, body = Vec<Event>)))]
pub async fn list_events(
    State(app): State<App>,
    who: Principal,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<ApiJson<Vec<Event>>, ApiError> {
    who.require_person()?;
    let limit = limit(&q)?;
    let mut conn = app.store.conn().await?;
    let rows =
        store::list_events(&mut conn, who.owner_filter(), q.cluster.as_deref(), limit).await?;
    Ok(ApiJson(rows.iter().map(|e| e.to_model()).collect()))
}
