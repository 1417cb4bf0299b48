//! Installs over the API: `reinstall` for a cluster's owner, and the routes host agents
//! relay their nodes through: their reports (one at a time from a cluster's frontend, in
//! batches from the node's own host, which takes them at its site) and their rendered
//! profile (from the frontend), each authenticated twice: the agent for its host, the
//! install's one-time token for the node (docs/provisioning.md).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::App;
use crate::api_error::{ApiError, ApiJson, ApiPath};
use crate::controller::auth::Principal;
use crate::controller::install;
use crate::controller::store::{self, ClusterRow, HostRow, InstallRow, NewEvent, NodeRow, now_ms};
use crate::model::{
    ApiErrorBody, InstallReport, InstallReportBatch, InstallReportOutcome, InstallReportOutcomes,
    InstallState, MAX_INSTALL_FIGURE, MAX_INSTALL_REASON, MAX_REPORT_BATCH, NodeState,
    ReinstallRequest,
};

/// `POST /v1/hosts/{host}/install-profile`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileRequest {
    pub node: String,
    pub token: String,
}

/// Compares two secrets in time independent of where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The node, its cluster and its install, when `who` speaks for the cluster's frontend
/// host `host` and `token` is the install's.
async fn authenticate(
    conn: &mut sqlx::AnyConnection,
    who: &Principal,
    host: &str,
    node: &str,
    token: &str,
) -> Result<(NodeRow, ClusterRow, InstallRow), ApiError> {
    who.require_agent_or_admin()?;
    let host = store::host_by_key(conn, host)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no host {host:?}")))?;
    if !who.is_admin() && who.user_id != host.agent_user_id {
        return Err(ApiError::forbidden(format!(
            "host {} belongs to another agent; {} may not act for it",
            host.name, who.name
        )));
    }
    let node = store::node_by_name(conn, node)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no node {node:?}")))?;
    let cluster = store::cluster_by_id(conn, node.cluster_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no cluster of node {}", node.name)))?;
    // The node's own host (whose site takes its reports) or its cluster's frontend host
    // (which serves its boot script and profile).
    if node.host_id != host.id {
        let nodes = store::nodes_of_cluster(conn, cluster.id).await?;
        if install::frontend_host(&cluster, &nodes) != Some(host.id) {
            return Err(ApiError::forbidden(format!(
                "host {} is neither {}'s own host nor the frontend of cluster {}: it does not \
                 speak for it",
                host.name, node.name, cluster.name
            )));
        }
    }
    let install = store::install_of(conn, node.id)
        .await?
        .ok_or_else(|| ApiError::conflict(format!("node {} has no install", node.name)))?;
    if !same_secret(&install.token, token) {
        return Err(ApiError::forbidden(format!(
            "not the token of {}'s current install (an earlier install's?)",
            node.name
        )));
    }
    Ok((node, cluster, install))
}

fn check_figure(field: &str, v: Option<i64>) -> Result<(), ApiError> {
    match v {
        Some(v) if !(0..=MAX_INSTALL_FIGURE).contains(&v) => Err(ApiError::invalid(
            field,
            format!("{v} is outside 0..={MAX_INSTALL_FIGURE}"),
        )),
        _ => Ok(()),
    }
}

/// A node's install report, relayed by its cluster's frontend agent or its own host's.
#[utoipa::path(post, path = "/v1/hosts/{host}/install-reports", tag = "hosts",
    request_body = InstallReport,
    params(("host" = String, Path, description = "the node's own host, or its cluster's frontend host (name or id)")),
    responses((status = 204), (status = 403, body = ApiErrorBody), (status = 409, body = ApiErrorBody),
               (status = 422, body = ApiErrorBody)))]
pub async fn install_report(
    State(app): State<App>,
    who: Principal,
    ApiPath(host): ApiPath<String>,
    ApiJson(report): ApiJson<InstallReport>,
) -> Result<Response, ApiError> {
    apply_report(&app, &who, &host, report).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The reports of the nodes a site's host agent runs, batched (at most
/// [`MAX_REPORT_BATCH`]): each is applied as `install-reports` would apply it on its own,
/// one node's in the batch's order, different nodes' side by side; the answer has each
/// one's outcome in the batch's order. The batch itself is refused (nothing applied) only
/// when it is malformed, too large, or its caller is no agent.
#[utoipa::path(post, path = "/v1/hosts/{host}/install-reports/batch", tag = "hosts",
    request_body = InstallReportBatch,
    params(("host" = String, Path, description = "the nodes' own host (name or id)")),
    responses((status = 200, body = InstallReportOutcomes), (status = 403, body = ApiErrorBody),
               (status = 422, body = ApiErrorBody)))]
pub async fn install_report_batch(
    State(app): State<App>,
    who: Principal,
    ApiPath(host): ApiPath<String>,
    ApiJson(batch): ApiJson<InstallReportBatch>,
) -> Result<axum::Json<InstallReportOutcomes>, ApiError> {
    who.require_agent_or_admin()?;
    let n = batch.reports.len();
    if n > MAX_REPORT_BATCH {
        return Err(ApiError::invalid(
            "reports",
            format!("{n} reports in one batch; at most {MAX_REPORT_BATCH}"),
        ));
    }
    let mut by_node: std::collections::BTreeMap<String, Vec<(usize, InstallReport)>> =
        std::collections::BTreeMap::new();
    for (i, r) in batch.reports.into_iter().enumerate() {
        by_node.entry(r.node.clone()).or_default().push((i, r));
    }
    let runs = by_node.into_values().map(|reports| {
        let (app, who, host) = (&app, &who, host.as_str());
        async move {
            let mut out = Vec::with_capacity(reports.len());
            for (i, r) in reports {
                out.push((i, apply_report(app, who, host, r).await));
            }
            out
        }
    });
    let mut results = vec![
        InstallReportOutcome {
            status: StatusCode::INTERNAL_SERVER_ERROR.as_u16(),
            error: Some("not applied".to_string()),
        };
        n
    ];
    for (i, outcome) in futures_util::future::join_all(runs)
        .await
        .into_iter()
        .flatten()
    {
        results[i] = match outcome {
            Ok(()) => InstallReportOutcome {
                status: StatusCode::NO_CONTENT.as_u16(),
                error: None,
            },
            Err(e) => InstallReportOutcome {
                status: e.status.as_u16(),
                error: Some(e.message),
            },
        };
    }
    Ok(axum::Json(InstallReportOutcomes { results }))
}

/// Applies one node's report: its figures checked, its token and its relaying host
/// authenticated, its state moved on (an event when it changes), and its host and
/// frontend told when what the node boots from changes.
async fn apply_report(
    app: &App,
    who: &Principal,
    host: &str,
    report: InstallReport,
) -> Result<(), ApiError> {
    check_figure("packages_done", report.packages_done)?;
    check_figure("packages_total", report.packages_total)?;
    check_figure("bytes", report.bytes)?;
    if let (Some(d), Some(t)) = (report.packages_done, report.packages_total)
        && d > t
    {
        return Err(ApiError::invalid(
            "packages_done",
            format!("{d} packages done of {t}"),
        ));
    }
    let now = now_ms();
    let mut tx = app.store.write().await?;
    let (node, cluster, current) =
        authenticate(tx.conn(), who, host, &report.node, &report.token).await?;
    if !current.state.may_become(report.state) {
        return Err(ApiError::conflict(format!(
            "{}'s install is {}: it cannot become {}",
            node.name, current.state, report.state
        )));
    }
    let reason = report.reason.as_deref().map(|r| {
        let mut r = r.to_string();
        if r.len() > MAX_INSTALL_REASON {
            let mut cut = MAX_INSTALL_REASON;
            while !r.is_char_boundary(cut) {
                cut -= 1;
            }
            r.truncate(cut);
        }
        r
    });
    let reason = match (report.state, reason) {
        (InstallState::Failed, Some(r)) => Some(format!(
            "failed in phase {}{}: {r}",
            current.state,
            report
                .step
                .as_deref()
                .map(|s| format!(" (step {s})"))
                .unwrap_or_default()
        )),
        (InstallState::Failed, None) => Some(format!(
            "failed in phase {} (the installer gave no reason)",
            current.state
        )),
        _ => None,
    };
    if let Some(step) = &report.step
        && (step.len() > 64
            || !step
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    {
        return Err(ApiError::invalid(
            "step",
            format!("{step:?} is not a step name"),
        ));
    }
    store::update_install(
        tx.conn(),
        node.id,
        report.state,
        &store::InstallProgress {
            packages_done: report.packages_done,
            packages_total: report.packages_total,
            bytes: report.bytes,
            step: report.step.as_deref(),
        },
        reason.as_deref(),
        now,
    )
    .await?;
    let changed = current.state != report.state;
    if changed {
        let message = match (report.state, &reason) {
            (_, Some(r)) => format!("install of {}: {r}", node.name),
            (InstallState::Installing, None) => format!(
                "install of {}: the installer runs{}",
                node.name,
                report
                    .packages_total
                    .map(|t| format!(" ({t} packages)"))
                    .unwrap_or_default()
            ),
            (s, None) => format!("install of {}: {s}", node.name),
        };
        store::insert_event(
            tx.conn(),
            NewEvent {
                kind: &format!("install-{}", report.state),
                cluster: Some(&cluster.name),
                owner_id: Some(cluster.owner_id),
                task_id: None,
                message: &message,
            },
            now,
        )
        .await?;
    }
    tx.commit().await?;
    // A node that stops booting from the network (or whose token ends) changes what its
    // host and frontend must have.
    if changed && current.state.boots_from_network() != report.state.boots_from_network()
        || report.state.is_final()
    {
        let app = app.clone();
        let id = cluster.id;
        let push = async move {
            if let Err(e) = crate::controller::tasks::converge(&app, id, true).await {
                tracing::warn!(cluster = id, error = %e, "pushing an install's change failed");
            }
        };
        if changed && report.state == InstallState::Rebooting {
            // The installer reboots as soon as this is answered: its VM must boot its disk
            // first by then. A UEFI firmware that finds the network first and is told
            // `exit` does not go on to the disk (OVMF shows its menu), so the boot order
            // changes before the answer, not after.
            if tokio::time::timeout(REBOOT_PUSH, push).await.is_err() {
                tracing::warn!(
                    node = %node.name,
                    "the boot order change did not reach its host in {} s; the node may \
                     network-boot once more",
                    REBOOT_PUSH.as_secs()
                );
            }
        } else {
            tokio::spawn(push);
        }
    }
    Ok(())
}

/// How long a `rebooting` report waits for the node's host to switch its boot order.
const REBOOT_PUSH: std::time::Duration = std::time::Duration::from_secs(15);

/// What a node installs (its rendered profile), for its installer, relayed by its
/// cluster's frontend agent.
#[utoipa::path(post, path = "/v1/hosts/{host}/install-profile", tag = "hosts",
    request_body = ProfileRequest,
    params(("host" = String, Path, description = "the frontend host's name or id")),
    responses((status = 200, body = crate::model::RenderedProfile), (status = 403, body = ApiErrorBody),
               (status = 409, body = ApiErrorBody), (status = 422, body = ApiErrorBody)))]
pub async fn install_profile(
    State(app): State<App>,
    who: Principal,
    ApiPath(host): ApiPath<String>,
    ApiJson(req): ApiJson<ProfileRequest>,
) -> Result<ApiJson<crate::model::RenderedProfile>, ApiError> {
    let mut rx = app.store.read().await?;
    let (node, cluster, install) =
        authenticate(rx.conn(), &who, &host, &req.node, &req.token).await?;
    if install.state.is_final() {
        return Err(ApiError::conflict(format!(
            "{}'s install is {}: nothing to install",
            node.name, install.state
        )));
    }
    let rendered = store::render_node_profile(rx.conn(), &cluster, &node).await?;
    rx.finish().await?;
    match rendered {
        Some(Ok(p)) => Ok(ApiJson(p)),
        Some(Err(e)) => Err(ApiError::invalid(
            "profile",
            format!("node {}: {e}", node.name),
        )),
        None => Err(ApiError::conflict(format!(
            "cluster {} has no profile",
            cluster.name
        ))),
    }
}

/// Reinstalls nodes: each gets a new install (a new token) and is remade by its host
/// (a fresh disk), booting from the network into its installer.
#[utoipa::path(post, path = "/v1/clusters/{cluster}/reinstall", tag = "clusters",
    request_body = ReinstallRequest,
    params(("cluster" = String, Path, description = "cluster name or id")),
    responses((status = 200, body = Vec<String>), (status = 404, body = ApiErrorBody),
               (status = 409, body = ApiErrorBody), (status = 422, body = ApiErrorBody)))]
pub async fn reinstall(
    State(app): State<App>,
    who: Principal,
    ApiPath(cluster): ApiPath<String>,
    ApiJson(req): ApiJson<ReinstallRequest>,
) -> Result<ApiJson<Vec<String>>, ApiError> {
    who.require_person()?;
    let now = now_ms();
    let mut tx = app.store.write().await?;
    let row = super::clusters::visible_cluster(tx.conn(), &who, &cluster).await?;
    if row.profile_id.is_none() {
        return Err(ApiError::conflict(format!(
            "cluster {} has no profile: nothing to install (vcluster cluster profile {} PROFILE)",
            row.name, row.name
        )));
    }
    let nodes: Vec<NodeRow> = store::nodes_of_cluster(tx.conn(), row.id)
        .await?
        .into_iter()
        .filter(|n| n.state != NodeState::Deleted)
        .collect();
    let user_groups = store::groups_of_cluster(tx.conn(), &row).await?;
    let set = super::exec::nodes_named(&row.name, &nodes, &user_groups, &req.nodes, "reinstalled")?;
    super::profiles::render_every_node(tx.conn(), &row).await?;
    let chosen: Vec<NodeRow> = nodes
        .iter()
        .filter(|n| set.contains(&n.name))
        .cloned()
        .collect();
    for n in &chosen {
        store::start_install(tx.conn(), n.id, &install::new_token(), now).await?;
    }
    store::insert_event(
        tx.conn(),
        NewEvent {
            kind: "reinstall",
            cluster: Some(&row.name),
            owner_id: Some(row.owner_id),
            task_id: None,
            message: &format!("{} asked to reinstall {set}", who.name),
        },
        now,
    )
    .await?;
    let hosts = store::list_hosts(tx.conn()).await?;
    tx.commit().await?;
    // The frontend learns the new installs first, then each node is remade by its host.
    let names: Vec<String> = chosen.iter().map(|n| n.name.clone()).collect();
    let remake: Vec<(NodeRow, HostRow)> = chosen
        .into_iter()
        .filter_map(|n| {
            let host = hosts.iter().find(|h| h.id == n.host_id)?.clone();
            Some((n, host))
        })
        .collect();
    let (app2, cluster_id) = (app.clone(), row.id);
    tokio::spawn(async move {
        install::remake_for_install(&app2, cluster_id, &remake).await;
    });
    Ok(ApiJson(names))
}
