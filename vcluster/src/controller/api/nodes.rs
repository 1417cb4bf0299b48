//! A cluster's nodes one at a time or as a set: their console, their power. Both go
//! through each node's host agent; the controller keeps nothing of them.

use std::time::Duration;

use axum::extract::State;

use super::App;
use crate::api_error::{ApiError, ApiJson, ApiPath, ApiQuery};
use crate::controller::auth::Principal;
use crate::controller::store::{self, NodeRow};
use crate::model::{ApiErrorBody, ConsoleChunk, NodeState, PowerAction, PowerNodes, PowerOutcome};

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ConsoleQuery {
    /// Where to start reading the log, in bytes (default 0).
    #[serde(default)]
    pub offset: u64,
}

/// A piece of a node's console log (a VM's serial console), from `offset`.
#[utoipa::path(get, path = "/v1/clusters/{cluster}/nodes/{node}/console", tag = "clusters",
    params(("cluster" = String, Path, description = "cluster name or id"),
           ("node" = String, Path, description = "node name"), ConsoleQuery),
    responses((status = 200, body = ConsoleChunk), (status = 404, body = ApiErrorBody),
               (status = 502, body = ApiErrorBody)))]
pub async fn node_console(
    State(app): State<App>,
    who: Principal,
    ApiPath((cluster, node)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<ConsoleQuery>,
) -> Result<ApiJson<ConsoleChunk>, ApiError> {
    who.require_person()?;
    let mut rx = app.store.read().await?;
    let row = super::clusters::visible_cluster(rx.conn(), &who, &cluster).await?;
    let n = store::nodes_of_cluster(rx.conn(), row.id)
        .await?
        .into_iter()
        .find(|n| n.name == node && n.state != NodeState::Deleted)
        .ok_or_else(|| ApiError::not_found(format!("no node {node} in cluster {}", row.name)))?;
    let host = store::host_by_id(rx.conn(), n.host_id)
        .await?
        .ok_or_else(|| ApiError::internal(format!("the host of {node} is gone")))?;
    rx.finish().await?;
    app.agents
        .console(&host, &n.name, q.offset)
        .await
        .map(ApiJson)
        .map_err(|e| ApiError::new(axum::http::StatusCode::BAD_GATEWAY, e))
}

/// Powers a node set on, off (fenced: it stays off until powered on) or resets it, node
/// by node through their hosts; each node's outcome.
#[utoipa::path(post, path = "/v1/clusters/{cluster}/power", tag = "clusters",
    request_body = PowerNodes,
    params(("cluster" = String, Path, description = "cluster name or id")),
    responses((status = 200, body = Vec<PowerOutcome>), (status = 404, body = ApiErrorBody),
               (status = 422, body = ApiErrorBody)))]
pub async fn power_nodes(
    State(app): State<App>,
    who: Principal,
    ApiPath(cluster): ApiPath<String>,
    ApiJson(req): ApiJson<PowerNodes>,
) -> Result<ApiJson<Vec<PowerOutcome>>, ApiError> {
    who.require_person()?;
    if req.action == PowerAction::Reinstall {
        return Err(ApiError::invalid(
            "action",
            "reinstall goes through POST /v1/clusters/{cluster}/reinstall (vcluster reinstall)",
        ));
    }
    let mut rx = app.store.read().await?;
    let row = super::clusters::visible_cluster(rx.conn(), &who, &cluster).await?;
    let nodes: Vec<NodeRow> = store::nodes_of_cluster(rx.conn(), row.id)
        .await?
        .into_iter()
        .filter(|n| n.state != NodeState::Deleted)
        .collect();
    let user_groups = store::groups_of_cluster(rx.conn(), &row).await?;
    let hosts = store::list_hosts(rx.conn()).await?;
    rx.finish().await?;
    let set = super::exec::nodes_named(&row.name, &nodes, &user_groups, &req.nodes, "powered")?;
    let mut jobs = tokio::task::JoinSet::new();
    for n in nodes.into_iter().filter(|n| set.contains(&n.name)) {
        let host = hosts.iter().find(|h| h.id == n.host_id).cloned();
        let agents = app.agents.clone();
        let action = req.action;
        jobs.spawn(async move {
            let outcome = match host {
                Some(h) => {
                    agents
                        .power(&h, &n.name, action, Duration::from_secs(60))
                        .await
                }
                None => Err("its host is gone".to_string()),
            };
            match outcome {
                Ok(running) => PowerOutcome {
                    node: n.name,
                    running: Some(running),
                    error: None,
                },
                Err(e) => PowerOutcome {
                    node: n.name,
                    running: None,
                    error: Some(e),
                },
            }
        });
    }
    let mut out = Vec::new();
    while let Some(r) = jobs.join_next().await {
        if let Ok(o) = r {
            out.push(o);
        }
    }
    // In the node set's (natural) order.
    let order: Vec<&str> = set.iter().collect();
    out.sort_by_key(|o| order.iter().position(|n| *n == o.node));
    tracing::info!(cluster = %row.name, nodes = %set, action = req.action.as_str(), by = %who.name, "power");
    Ok(ApiJson(out))
}
