//! `POST /v1/clusters/{cluster}/exec`: a command on a node set of one cluster. The node
//! set is resolved and checked against the cluster before anything runs (a name that is
//! not one of the cluster's nodes, or a cluster the caller does not own, runs nothing);
//! then each host's share goes to its agent and the events of every host stream back,
//! merged, as they come. A node that cannot run it (stopped, its host offline or
//! unreachable, its agent gone) gets an `unreachable` event saying why.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::api_error::{ApiError, ApiJson, ApiPath};
use crate::controller::App;
use crate::controller::auth::Principal;
use crate::controller::store::{self, HostRow, NodeRow, now_ms};
use crate::exec::{self, ClusterExec, EventReader, ExecEvent, HostExec};
use crate::model::{ApiErrorBody, NodeState};
use crate::nodeset::{GroupResolver, NodeSet};

/// `@all`, `@site:NAME`, `@host:NAME` and `@cluster:NAME` (this cluster only), over the
/// cluster's nodes.
struct ClusterGroups<'a> {
    cluster: &'a str,
    nodes: &'a [NodeRow],
}

impl GroupResolver for ClusterGroups<'_> {
    fn resolve(&self, kind: Option<&str>, name: &str) -> Result<Vec<String>, String> {
        let pick = |f: &dyn Fn(&NodeRow) -> bool| -> Vec<String> {
            self.nodes
                .iter()
                .filter(|n| f(n))
                .map(|n| n.name.clone())
                .collect()
        };
        let found = match (kind, name) {
            (None, "all") => pick(&|_| true),
            (Some("site"), site) => pick(&|n| n.site_name == site),
            (Some("host"), host) => pick(&|n| n.host_name == host),
            (Some("cluster"), c) if c == self.cluster => pick(&|_| true),
            (Some("cluster"), c) => {
                return Err(format!(
                    "@cluster:{c}: a command runs in one cluster at a time (this is {})",
                    self.cluster
                ));
            }
            (Some(k), _) => {
                return Err(format!(
                    "unknown group kind @{k}: (use @all, @site:NAME, @host:NAME, @cluster:NAME)"
                ));
            }
            (None, g) => {
                return Err(format!(
                    "unknown group @{g} (use @all, @site:NAME, @host:NAME, @cluster:NAME)"
                ));
            }
        };
        if found.is_empty() {
            return Err(format!(
                "@{}{name} has no nodes in cluster {}",
                kind.map(|k| format!("{k}:")).unwrap_or_default(),
                self.cluster
            ));
        }
        Ok(found)
    }
}

#[utoipa::path(post, path = "/v1/clusters/{cluster}/exec", tag = "clusters",
    params(("cluster" = String, Path, description = "cluster name or id")),
    request_body = ClusterExec,
    responses(
        (status = 200, description = "one ExecEvent per line (application/x-ndjson), as they happen", body = ExecEvent),
        (status = 404, body = ApiErrorBody), (status = 422, body = ApiErrorBody)))]
pub async fn exec_on_nodes(
    State(app): State<App>,
    who: Principal,
    ApiPath(cluster): ApiPath<String>,
    ApiJson(req): ApiJson<ClusterExec>,
) -> Result<Response, ApiError> {
    who.require_person()?;
    let bad = |(f, m): (&'static str, String)| ApiError::invalid(f, m);
    exec::check_command(&req.command).map_err(bad)?;
    let connect_timeout_ms = req
        .connect_timeout_ms
        .unwrap_or(exec::DEFAULT_CONNECT_TIMEOUT_MS);
    let command_timeout_ms = req
        .command_timeout_ms
        .unwrap_or(exec::DEFAULT_COMMAND_TIMEOUT_MS);
    let fanout = req.fanout.unwrap_or(exec::DEFAULT_FANOUT);
    exec::check_bound(
        "connect_timeout_ms",
        connect_timeout_ms,
        exec::MAX_CONNECT_TIMEOUT_MS,
    )
    .map_err(bad)?;
    exec::check_bound(
        "command_timeout_ms",
        command_timeout_ms,
        exec::MAX_COMMAND_TIMEOUT_MS,
    )
    .map_err(bad)?;
    exec::check_bound("fanout", u64::from(fanout), u64::from(exec::MAX_FANOUT)).map_err(bad)?;

    let mut rx = app.store.read().await?;
    let row = match store::cluster_by_key(rx.conn(), &cluster).await? {
        Some(c) if who.may_see(c.owner_id) => c,
        _ => return Err(ApiError::not_found(format!("no cluster {cluster:?}"))),
    };
    let nodes: Vec<NodeRow> = store::nodes_of_cluster(rx.conn(), row.id)
        .await?
        .into_iter()
        .filter(|n| n.state != NodeState::Deleted)
        .collect();
    let hosts = store::list_hosts(rx.conn()).await?;
    rx.finish().await?;

    let groups = ClusterGroups {
        cluster: &row.name,
        nodes: &nodes,
    };
    let mut set = NodeSet::parse(&req.nodes, &groups)
        .map_err(|e| ApiError::invalid("nodes", e.to_string()))?;
    if let Some(x) = &req.exclude {
        let x =
            NodeSet::parse(x, &groups).map_err(|e| ApiError::invalid("exclude", e.to_string()))?;
        set = set.difference(&x);
    }
    if set.is_empty() {
        return Err(ApiError::invalid("nodes", "the node set is empty"));
    }
    let known: BTreeMap<&str, &NodeRow> = nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    let unknown: NodeSet = set.iter().filter(|n| !known.contains_key(n)).collect();
    if !unknown.is_empty() {
        return Err(ApiError::invalid(
            "nodes",
            format!(
                "{unknown} ({} name{}) {} not in cluster {}: nothing was run",
                unknown.len(),
                if unknown.len() == 1 { "" } else { "s" },
                if unknown.len() == 1 { "is" } else { "are" },
                row.name
            ),
        ));
    }

    // Each host's share; nodes that cannot run it are answered at once.
    let now = now_ms();
    let host_by_id: BTreeMap<i64, &HostRow> = hosts.iter().map(|h| (h.id, h)).collect();
    let mut shares: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    let mut refused = Vec::new();
    for name in set.iter() {
        let n = known[name];
        let host = host_by_id.get(&n.host_id);
        let why_not = match host {
            _ if n.state != NodeState::Running => Some(format!("the node is {}", n.state)),
            None => Some("its host is gone".to_string()),
            Some(h) if !h.is_online(now, app.host_timeout_ms()) => {
                Some(format!("its host {} is offline", h.name))
            }
            Some(_) => None,
        };
        match why_not {
            Some(reason) => refused.push(ExecEvent::Unreachable {
                node: name.to_string(),
                reason,
            }),
            None => shares.entry(n.host_id).or_default().push(name.to_string()),
        }
    }
    tracing::info!(
        cluster = %row.name, user = %who.name, nodes = set.len(), hosts = shares.len(),
        "exec"
    );
    let (tx, rx) = mpsc::channel(1024);
    for event in refused {
        // The channel is new and holds 1024; more refusals wait for the reader.
        let tx = tx.clone();
        tokio::spawn(async move {
            let _ = tx.send(event).await;
        });
    }
    for (host_id, names) in shares {
        let host = Arc::new(host_by_id[&host_id].clone());
        let share = HostExec {
            nodes: names,
            command: req.command.clone(),
            connect_timeout_ms,
            command_timeout_ms,
            fanout,
        };
        tokio::spawn(run_on_host(app.clone(), host, share, tx.clone()));
    }
    Ok(crate::node::ndjson_response(rx))
}

/// Relays one host's stream; events for nodes not in its share are dropped (an agent
/// speaks for its own nodes only), and nodes it never finished are reported.
async fn run_on_host(app: App, host: Arc<HostRow>, share: HostExec, tx: mpsc::Sender<ExecEvent>) {
    let mut open: BTreeSet<String> = share.nodes.iter().cloned().collect();
    let why = match app.agents.exec(&host, &share).await {
        Err(reason) => reason,
        Ok(resp) => {
            let mut body = resp.bytes_stream();
            let mut reader = EventReader::new();
            let mut why = None;
            'read: loop {
                let chunk = tokio::select! {
                    c = body.next() => c,
                    _ = tx.closed() => return, // the caller went away: dropping the stream stops the rest
                };
                let Some(chunk) = chunk else { break };
                let events = match chunk {
                    Ok(bytes) => reader.push(&bytes),
                    Err(e) => Err(format!(
                        "host {}: the agent's stream broke: {}",
                        host.name,
                        crate::tls::error_chain(&e)
                    )),
                };
                match events {
                    Ok(events) => {
                        for e in events {
                            if !open.contains(e.node()) {
                                continue;
                            }
                            if e.is_final() {
                                open.remove(e.node());
                            }
                            if tx.send(e).await.is_err() {
                                return; // the caller went away: dropping the stream stops the rest
                            }
                        }
                    }
                    Err(e) => {
                        why = Some(e);
                        break 'read;
                    }
                }
            }
            why.unwrap_or_else(|| {
                format!(
                    "host {}: the agent's stream ended before the command did",
                    host.name
                )
            })
        }
    };
    for node in open {
        let _ = tx
            .send(ExecEvent::Unreachable {
                node,
                reason: why.clone(),
            })
            .await;
    }
}
