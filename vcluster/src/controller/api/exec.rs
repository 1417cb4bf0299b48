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

/// Commands (exec, copy) one user may have running at once: one user's flood of
/// commands never keeps the host agents from everyone else's.
pub const MAX_EXECS_PER_USER: usize = 16;

/// Each user's running commands.
#[derive(Default)]
pub struct ExecSlots {
    running: std::sync::Mutex<std::collections::HashMap<i64, usize>>,
}

/// One running command of a user; its slot is free again when the last part of the
/// command (each host's stream) is done.
pub struct ExecSlot {
    app: App,
    user: i64,
}

impl ExecSlots {
    fn take(&self, app: &App, who: &Principal) -> Result<ExecSlot, ApiError> {
        let mut running = self.running.lock().expect("exec slots");
        let n = running.entry(who.user_id).or_insert(0);
        if *n >= MAX_EXECS_PER_USER {
            return Err(ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "{} already runs {MAX_EXECS_PER_USER} commands (exec, copy) at once; wait for one to end",
                    who.name
                ),
            ));
        }
        *n += 1;
        Ok(ExecSlot {
            app: app.clone(),
            user: who.user_id,
        })
    }

    /// Commands `user` runs now.
    pub fn running(&self, user: i64) -> usize {
        let running = self.running.lock().expect("exec slots");
        running.get(&user).copied().unwrap_or(0)
    }
}

impl Drop for ExecSlot {
    fn drop(&mut self) {
        let mut running = self.app.execs.running.lock().expect("exec slots");
        if let Some(n) = running.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                running.remove(&self.user);
            }
        }
    }
}

/// `@all`, `@site:NAME`, `@host:NAME`, `@cluster:NAME` (this cluster only) and the
/// cluster's own groups (`@NAME`, `vcluster group`), over the cluster's nodes.
struct ClusterGroups<'a> {
    cluster: &'a str,
    nodes: &'a [NodeRow],
    groups: &'a [crate::model::Group],
}

/// The cluster's nodes that `expr` (a node set) names, its groups resolved; a node set
/// that does not parse, is empty or names a node outside the cluster is a 422 saying
/// "nothing was `done`".
pub(crate) fn nodes_named(
    cluster: &str,
    nodes: &[NodeRow],
    groups: &[crate::model::Group],
    expr: &str,
    done: &str,
) -> Result<NodeSet, ApiError> {
    let resolver = ClusterGroups {
        cluster,
        nodes,
        groups,
    };
    let set =
        NodeSet::parse(expr, &resolver).map_err(|e| ApiError::invalid("nodes", e.to_string()))?;
    let unknown: NodeSet = set
        .iter()
        .filter(|s| !nodes.iter().any(|n| n.name == *s))
        .collect();
    if !unknown.is_empty() {
        return Err(ApiError::invalid(
            "nodes",
            format!("{unknown} not in cluster {cluster}: nothing was {done}"),
        ));
    }
    if set.is_empty() {
        return Err(ApiError::invalid("nodes", "the node set is empty"));
    }
    Ok(set)
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
            (None, g) => match self.groups.iter().find(|x| x.name == g) {
                Some(group) => group.nodes.clone(),
                None => {
                    return Err(format!(
                        "unknown group @{g}: cluster {} has no such group (use @all, \
                         @site:NAME, @host:NAME, @cluster:NAME or one of its groups)",
                        self.cluster
                    ));
                }
            },
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
    let plan = Plan::new(
        req.nodes,
        req.exclude,
        req.command,
        None,
        req.connect_timeout_ms,
        req.command_timeout_ms,
        req.fanout,
    )?;
    start(app, who, cluster, plan).await
}

/// `vcluster copy`'s query: the file is the request's body (at most
/// [`exec::MAX_STDIN_BYTES`]).
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct CopyQuery {
    /// The node set, as for exec.
    pub nodes: String,
    #[serde(default)]
    pub exclude: Option<String>,
    /// The absolute path the file gets on each node (its directory is made).
    pub dest: String,
    /// Octal permissions, e.g. `644` (default `600`).
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub connect_timeout_ms: Option<u64>,
    #[serde(default)]
    pub command_timeout_ms: Option<u64>,
    #[serde(default)]
    pub fanout: Option<u32>,
}

/// Writes the body as a file on each node of the set (clush `--copy`): written to a
/// temporary name beside `dest`, then renamed, so a node never shows half a file. The
/// answer streams events as exec does (a node's end is `cat`'s and `mv`'s).
#[utoipa::path(post, path = "/v1/clusters/{cluster}/copy", tag = "clusters",
    params(("cluster" = String, Path, description = "cluster name or id"), CopyQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 200, description = "one ExecEvent per line (application/x-ndjson)", body = ExecEvent),
        (status = 404, body = ApiErrorBody), (status = 413, body = ApiErrorBody), (status = 422, body = ApiErrorBody)))]
pub async fn copy_to_nodes(
    State(app): State<App>,
    who: Principal,
    ApiPath(cluster): ApiPath<String>,
    crate::api_error::ApiQuery(q): crate::api_error::ApiQuery<CopyQuery>,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    use base64::Engine;
    use http_body_util::BodyExt;
    who.require_person()?;
    let dest = q.dest.trim_end_matches('/');
    if !dest.starts_with('/') || dest.len() < 2 || dest.contains('\0') || dest.len() > 4096 {
        return Err(ApiError::invalid(
            "dest",
            format!("dest {:?} must be an absolute file path", q.dest),
        ));
    }
    let mode = q.mode.as_deref().unwrap_or("600");
    if mode.is_empty() || mode.len() > 4 || !mode.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(ApiError::invalid(
            "mode",
            format!("mode {mode:?} is not octal permissions like 644"),
        ));
    }
    let bytes = http_body_util::Limited::new(body, exec::MAX_STDIN_BYTES)
        .collect()
        .await
        .map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                format!("the file: {e} (at most {} bytes)", exec::MAX_STDIN_BYTES),
            )
        })?
        .to_bytes();
    let dir = match dest.rsplit_once('/') {
        Some(("", _)) | None => "/".to_string(),
        Some((d, _)) => d.to_string(),
    };
    // The temporary name is the shell's own ($$): nodes that share a file system (the
    // lightweight ones do) never write into one another's.
    let tmp = format!("{dest}.vcluster-copy.");
    let command = format!(
        "mkdir -p {dir} && cat > {tmp}$$ && chmod {mode} {tmp}$$ && mv -f {tmp}$$ {dst}",
        dir = exec::shell_quote(&dir),
        tmp = exec::shell_quote(&tmp),
        dst = exec::shell_quote(dest),
    );
    let plan = Plan::new(
        q.nodes,
        q.exclude,
        command,
        Some(base64::engine::general_purpose::STANDARD.encode(&bytes)),
        q.connect_timeout_ms,
        q.command_timeout_ms,
        q.fanout,
    )?;
    start(app, who, cluster, plan).await
}

/// A command checked, with its defaults filled in.
struct Plan {
    nodes: String,
    exclude: Option<String>,
    command: String,
    stdin: Option<String>,
    connect_timeout_ms: u64,
    command_timeout_ms: u64,
    fanout: u32,
}

impl Plan {
    fn new(
        nodes: String,
        exclude: Option<String>,
        command: String,
        stdin: Option<String>,
        connect_timeout_ms: Option<u64>,
        command_timeout_ms: Option<u64>,
        fanout: Option<u32>,
    ) -> Result<Plan, ApiError> {
        let bad = |(f, m): (&'static str, String)| ApiError::invalid(f, m);
        exec::check_command(&command).map_err(bad)?;
        let connect_timeout_ms = connect_timeout_ms.unwrap_or(exec::DEFAULT_CONNECT_TIMEOUT_MS);
        let command_timeout_ms = command_timeout_ms.unwrap_or(exec::DEFAULT_COMMAND_TIMEOUT_MS);
        let fanout = fanout.unwrap_or(exec::DEFAULT_FANOUT);
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
        Ok(Plan {
            nodes,
            exclude,
            command,
            stdin,
            connect_timeout_ms,
            command_timeout_ms,
            fanout,
        })
    }
}

/// Resolves the node set in the cluster (or refuses, running nothing), then runs the
/// plan on each host's share and streams the events back.
async fn start(
    app: App,
    who: Principal,
    cluster: String,
    plan: Plan,
) -> Result<Response, ApiError> {
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
    let user_groups = store::groups_of_cluster(rx.conn(), &row).await?;
    rx.finish().await?;

    let groups = ClusterGroups {
        cluster: &row.name,
        nodes: &nodes,
        groups: &user_groups,
    };
    let mut set = NodeSet::parse(&plan.nodes, &groups)
        .map_err(|e| ApiError::invalid("nodes", e.to_string()))?;
    if let Some(x) = &plan.exclude {
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
    let slot = Arc::new(app.execs.take(&app, &who)?);
    tracing::info!(
        cluster = %row.name, user = %who.name, nodes = set.len(), hosts = shares.len(),
        "exec"
    );
    let (tx, rx) = mpsc::channel(1024);
    for event in refused {
        // The channel is new and holds 1024; more refusals wait for the reader.
        let (tx, slot) = (tx.clone(), slot.clone());
        tokio::spawn(async move {
            let _ = tx.send(event).await;
            drop(slot);
        });
    }
    for (host_id, names) in shares {
        let host = Arc::new(host_by_id[&host_id].clone());
        let share = HostExec {
            nodes: names,
            command: plan.command.clone(),
            connect_timeout_ms: plan.connect_timeout_ms,
            command_timeout_ms: plan.command_timeout_ms,
            fanout: plan.fanout,
            stdin: plan.stdin.clone(),
        };
        let (app, tx, slot) = (app.clone(), tx.clone(), slot.clone());
        tokio::spawn(async move {
            run_on_host(app, host, share, tx).await;
            drop(slot);
        });
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
