//! Hosts: hypervisor hosts, each run by a host agent. Agents register their host (its
//! site, capacity, agent URL, overlay endpoint and vpnd public key), heartbeat, and read
//! the host's desired state; admins list, disable and remove hosts.

use crate::model::{NodeState, REVISION_HEADER};

use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::api_error::{ApiError, ApiJson, ApiPath};
use crate::controller::App;
use crate::controller::auth::Principal;
use crate::controller::desired;
use crate::controller::store::{self, HostRegistration, HostRow, now_ms};
use crate::controller::view::{CapacityView, host_model};
use crate::model::{
    ApiErrorBody, Heartbeat, Host, HostDesired, RegisterHost, Registered, UpdateHost,
};

async fn host_or_404(conn: &mut sqlx::AnyConnection, key: &str) -> Result<HostRow, ApiError> {
    store::host_by_key(conn, key)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no host {key:?}")))
}

/// The host's own agent, or an admin.
fn require_owner(who: &Principal, host: &HostRow) -> Result<(), ApiError> {
    if who.is_admin() || who.user_id == host.agent_user_id {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "host {} belongs to another agent; {} may not act for it",
            host.name, who.name
        )))
    }
}

#[utoipa::path(get, path = "/v1/hosts", tag = "hosts",
    responses((status = 200, body = Vec<Host>), (status = 403, body = ApiErrorBody)))]
pub async fn list_hosts(
    State(app): State<App>,
    who: Principal,
) -> Result<ApiJson<Vec<Host>>, ApiError> {
    who.require_admin()?;
    let mut rx = app.store.read().await?;
    let v = CapacityView::load(
        rx.conn(),
        now_ms(),
        app.config.overcommit,
        app.host_timeout_ms(),
    )
    .await?;
    rx.finish().await?;
    Ok(ApiJson(v.hosts.iter().map(|h| v.host_model(h)).collect()))
}

#[utoipa::path(get, path = "/v1/hosts/{host}", tag = "hosts",
    params(("host" = String, Path, description = "host name or id")),
    responses((status = 200, body = Host), (status = 404, body = ApiErrorBody)))]
pub async fn get_host(
    State(app): State<App>,
    who: Principal,
    ApiPath(host): ApiPath<String>,
) -> Result<ApiJson<Host>, ApiError> {
    who.require_agent_or_admin()?;
    let mut rx = app.store.read().await?;
    let row = host_or_404(rx.conn(), &host).await?;
    require_owner(&who, &row)?;
    let v = CapacityView::load(
        rx.conn(),
        now_ms(),
        app.config.overcommit,
        app.host_timeout_ms(),
    )
    .await?;
    rx.finish().await?;
    Ok(ApiJson(v.host_model(&row)))
}

/// Enables or disables a host (admin). Disabled hosts get no new nodes and count for no
/// capacity; their nodes keep running.
#[utoipa::path(patch, path = "/v1/hosts/{host}", tag = "hosts", request_body = UpdateHost,
    params(("host" = String, Path, description = "host name or id")),
    responses((status = 200, body = Host), (status = 404, body = ApiErrorBody)))]
pub async fn update_host(
    State(app): State<App>,
    who: Principal,
    ApiPath(host): ApiPath<String>,
    ApiJson(req): ApiJson<UpdateHost>,
) -> Result<ApiJson<Host>, ApiError> {
    who.require_admin()?;
    let mut tx = app.store.write().await?;
    let row = host_or_404(tx.conn(), &host).await?;
    if let Some(enabled) = req.enabled {
        store::set_host_enabled(tx.conn(), row.id, enabled).await?;
    }
    let row = host_or_404(tx.conn(), &host).await?;
    let v = CapacityView::load(
        tx.conn(),
        now_ms(),
        app.config.overcommit,
        app.host_timeout_ms(),
    )
    .await?;
    tx.commit().await?;
    Ok(ApiJson(v.host_model(&row)))
}

/// Forgets a host that has no nodes left (admin).
#[utoipa::path(delete, path = "/v1/hosts/{host}", tag = "hosts",
    params(("host" = String, Path, description = "host name or id")),
    responses((status = 204), (status = 404, body = ApiErrorBody), (status = 409, body = ApiErrorBody)))]
pub async fn delete_host(
    State(app): State<App>,
    who: Principal,
    ApiPath(host): ApiPath<String>,
) -> Result<Response, ApiError> {
    who.require_admin()?;
    let mut tx = app.store.write().await?;
    let row = host_or_404(tx.conn(), &host).await?;
    let nodes = store::nodes_on_host(tx.conn(), row.id).await?;
    let live: Vec<&str> = nodes
        .iter()
        .filter(|n| n.state != NodeState::Deleted)
        .map(|n| n.name.as_str())
        .collect();
    if !live.is_empty() {
        return Err(ApiError::conflict(format!(
            "host {} still has nodes: {}; remove them or delete their clusters first",
            row.name,
            live.join(", ")
        )));
    }
    store::forget_deleted_nodes_on_host(tx.conn(), row.id).await?;
    store::delete_host(tx.conn(), row.id).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A host agent registers its host (again, after a restart: the same name updates it).
#[utoipa::path(post, path = "/v1/hosts/register", tag = "hosts", request_body = RegisterHost,
    responses((status = 200, body = Registered), (status = 409, body = ApiErrorBody), (status = 422, body = ApiErrorBody)))]
pub async fn register_host(
    State(app): State<App>,
    who: Principal,
    ApiJson(req): ApiJson<RegisterHost>,
) -> Result<ApiJson<Registered>, ApiError> {
    who.require_agent_or_admin()?;
    req.validate(app.config.tls.is_none())?;
    let now = now_ms();
    let mut tx = app.store.write().await?;
    let site = store::site_by_key(tx.conn(), &req.site)
        .await?
        .ok_or_else(|| {
            ApiError::invalid(
                "site",
                format!(
                    "unknown site {:?}; an admin creates it first (POST /v1/sites)",
                    req.site
                ),
            )
        })?;
    if let Some(existing) = store::host_by_key(tx.conn(), &req.name).await?
        && existing.agent_user_id != who.user_id
        && !who.is_admin()
    {
        return Err(ApiError::conflict(format!(
            "host {} is registered by another agent",
            req.name
        ))
        .with_field("name"));
    }
    let id = store::upsert_host(
        tx.conn(),
        HostRegistration {
            reg: &req,
            site_id: site.id,
            agent_user_id: who.user_id,
        },
        now,
    )
    .await?;
    let row = store::host_by_id(tx.conn(), id)
        .await?
        .ok_or_else(|| ApiError::internal("host vanished"))?;
    tx.commit().await?;
    tracing::info!(host = %row.name, site = %row.site_name, "host registered");
    Ok(ApiJson(Registered {
        host: host_model(&row, now, app.host_timeout_ms(), Default::default(), 0),
        heartbeat_secs: app.config.heartbeat.as_secs().max(1),
    }))
}

/// The host's agent says it is alive and what it found on the host.
#[utoipa::path(post, path = "/v1/hosts/{host}/heartbeat", tag = "hosts", request_body = Heartbeat,
    params(("host" = String, Path, description = "host name or id")),
    responses((status = 204), (status = 403, body = ApiErrorBody), (status = 404, body = ApiErrorBody)))]
pub async fn heartbeat(
    State(app): State<App>,
    who: Principal,
    ApiPath(host): ApiPath<String>,
    ApiJson(beat): ApiJson<Heartbeat>,
) -> Result<Response, ApiError> {
    who.require_agent_or_admin()?;
    let mut conn = app.store.conn().await?;
    let row = host_or_404(&mut conn, &host).await?;
    require_owner(&who, &row)?;
    let now = now_ms();
    store::touch_host(&mut conn, row.id, now).await?;
    // An agent speaks for the nodes placed on its own host only.
    let ours = store::nodes_on_host(&mut conn, row.id).await?;
    let reports: Vec<_> = beat
        .node_agents
        .iter()
        .filter(|r| ours.iter().any(|n| n.name == r.name))
        .cloned()
        .collect();
    let vms_running: Vec<String> = beat
        .vms_running
        .iter()
        .filter(|u| ours.iter().any(|n| &n.name == *u))
        .cloned()
        .collect();
    // Only its own nodes, and only names and accelerators the model knows.
    let accel: std::collections::BTreeMap<String, String> = beat
        .accel
        .iter()
        .filter(|(n, a)| ours.iter().any(|o| &o.name == *n) && matches!(a.as_str(), "kvm" | "tcg"))
        .map(|(n, a)| (n.clone(), a.clone()))
        .collect();
    app.monitor.accel(&accel);
    let back = app
        .monitor
        .beat(&reports, now)
        .into_iter()
        .map(|b| (b, "its agent answered"));
    let vms_back = app
        .monitor
        .vms_running(&vms_running, now)
        .into_iter()
        .map(|b| (b, "its host sees its VM running"));
    for ((node, silent_ms), how) in back.chain(vms_back).collect::<Vec<_>>() {
        let Some(n) = ours.iter().find(|n| n.name == node) else {
            continue;
        };
        let owner = store::cluster_by_id(&mut conn, n.cluster_id)
            .await?
            .map(|c| c.owner_id);
        let message = format!(
            "node {node} on host {} is up again: {how} after {:.1} s of silence",
            row.name,
            silent_ms as f64 / 1000.0
        );
        tracing::info!(%node, host = %row.name, "node up again");
        store::insert_event(
            &mut conn,
            store::NewEvent {
                kind: "node-up",
                cluster: Some(&n.cluster_name),
                owner_id: owner,
                task_id: None,
                message: &message,
            },
            now,
        )
        .await?;
    }
    tracing::debug!(host = %row.name, nodes = beat.nodes.len(), networks = beat.networks.len(), "heartbeat");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Everything the host must have, with the store revision it was read at.
///
/// The answer carries an `ETag` of what the host must have (its clusters, not the
/// revision, which moves with every write anywhere); an agent that sends it back in
/// `If-None-Match` gets `304 Not Modified` while nothing of its host changed, and
/// reconciles against the copy it holds. The periodic pull then costs a few hundred bytes
/// instead of the whole state (about 170 bytes a node), which across a WAN adds up: 134
/// nodes pulled every 5 s are 5 MB in a quarter of an hour.
#[utoipa::path(get, path = "/v1/hosts/{host}/desired", tag = "hosts",
    params(("host" = String, Path, description = "host name or id"),
           ("If-None-Match" = Option<String>, Header, description = "the ETag of the copy the agent holds")),
    responses((status = 200, body = HostDesired), (status = 304, description = "the copy the agent holds is current"),
               (status = 403, body = ApiErrorBody), (status = 404, body = ApiErrorBody)))]
pub async fn desired_state(
    State(app): State<App>,
    who: Principal,
    ApiPath(host): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    who.require_agent_or_admin()?;
    let mut rx = app.store.read().await?;
    let row = host_or_404(rx.conn(), &host).await?;
    require_owner(&who, &row)?;
    let d = desired::host_desired(rx.conn(), row.id).await?;
    rx.finish().await?;
    let tag = crate::model::desired_etag(&d);
    let held = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok());
    let etag = HeaderValue::from_str(&tag).expect("an ETag is ASCII hex in quotes");
    if held == Some(tag.as_str()) {
        // The revision it was read at: the agent's copy holds as of this revision.
        return Ok((
            StatusCode::NOT_MODIFIED,
            [
                (header::ETAG, etag),
                (
                    HeaderName::from_static(REVISION_HEADER),
                    HeaderValue::from(d.revision),
                ),
            ],
        )
            .into_response());
    }
    Ok(([(header::ETAG, etag)], ApiJson(d)).into_response())
}
