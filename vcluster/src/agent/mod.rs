//! The host agent (`vcluster host-agent`): one per hypervisor host. It registers the host
//! with the controller (site, capacity, its own URL, the overlay endpoint and the vpnd
//! public key read from vpnd's `GET /v1/status`), heartbeats, serves the small API the
//! controller's tasks push cluster shares to, and every `reconcile_every` pulls the host's
//! whole desired state and converges to it, so after an agent or controller restart what
//! exists on the host and what the store says meet again.
//!
//! Nodes are made by a [`driver::VmDriver`] (`netns` or `qemu`), bridges by
//! [`driver::HostBridges`], overlay networks by the local `vpnd` (through
//! [`vpnd_api::Client`], the control API's one client).
//! The agent never decides placement or policy; it does what the store says.
//!
//! Both directions are TLS unless `--insecure`: the agent pins the controller (its CA, by
//! file or fingerprint) before it sends its token and its secret; its own API presents a
//! self-signed certificate from its state dir whose fingerprint it registers, so the
//! controller pins it in turn. The API takes the controller's requests by the secret
//! bearer alone, without a client certificate (docs/security.md says why).

pub mod driver;
pub mod netns;
pub mod qemu;
pub mod reconcile;
pub mod services;
pub mod state;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::routing::{get, put};
use serde::Deserialize;
use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api_error::{ApiError, ApiJson, ApiPath, ApiQuery};
use crate::exec::{self, ExecEvent, HostExec, NodeExec};
use crate::tls::{self, ServerTrust, identity, listener::TlsListener};

use crate::model::{
    AgentState, ApiErrorBody, AppliedCluster, ClusterOnHost, Heartbeat, HostDesired, RegisterHost,
    Registered,
};
use driver::{HostBridges, VmDriver};
use reconcile::Reconciler;
use state::StateStore;

/// Why the agent could not start, or a reconcile could not run.
#[derive(Debug, Error)]
pub enum AgentError {
    #[error("the state in {dir}: {source}")]
    State {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("vpnd did not answer on {socket}: {last}")]
    VpndUnreachable { socket: PathBuf, last: String },
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The controller refused the registration (a bad token, an unknown site): retrying
    /// would not help.
    #[error("registration refused: {0}")]
    RegistrationRefused(String),
    #[error("reading the desired state: {0}")]
    Desired(String),
    #[error("the controller: {0}")]
    Controller(#[from] reqwest::Error),
    #[error("not registered yet")]
    NotRegistered,
    #[error(transparent)]
    Reconcile(#[from] reconcile::ReconcileError),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("{0}")]
    Config(String),
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The controller's base URL, e.g. `https://10.0.0.1:7200`.
    pub controller: String,
    /// How the controller is recognised (required for an `https://` URL).
    pub controller_trust: Option<ServerTrust>,
    /// Plain HTTP: to a controller off loopback, and for the agent's own API.
    pub insecure: bool,
    /// An `agent` token from the controller's admin.
    pub token: String,
    pub name: String,
    pub site: String,
    pub cpus: i64,
    pub memory_mib: i64,
    /// Where the agent's API listens.
    pub listen: SocketAddr,
    /// The URL the controller uses to reach the agent (default `https://<listen>`, or
    /// `http://<listen>` when `insecure`).
    pub advertise: Option<String>,
    /// This host's vpnd UDP endpoint as other sites reach it, `ip:port`.
    pub overlay_endpoint: String,
    pub vpnd_socket: PathBuf,
    pub state_dir: PathBuf,
    /// How often to pull and converge the whole desired state.
    pub reconcile_every: Duration,
    /// Provisioned clusters' services (the site cache's site-local address, frontends):
    /// `None` when this host has no site cache to serve.
    pub services: Option<services::ServicesConfig>,
}

struct Shared {
    config: AgentConfig,
    reconciler: Reconciler,
    secret: String,
    host_id: tokio::sync::RwLock<Option<i64>>,
    http: reqwest::Client,
    /// The desired state pulled last, with its ETag.
    desired: std::sync::Mutex<Option<(String, Arc<HostDesired>)>>,
}

/// A running agent; stops when dropped or shut down.
pub struct RunningAgent {
    pub addr: SocketAddr,
    pub host_id: i64,
    stop: watch::Sender<bool>,
    handles: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl RunningAgent {
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for h in self.handles.drain(..) {
            let _ = h.await;
        }
    }

    /// Pulls the desired state and converges now (what the periodic loop does).
    pub async fn reconcile_now(&self) -> Result<Vec<String>, AgentError> {
        reconcile_once(&self.shared).await
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for h in &self.handles {
            h.abort();
        }
    }
}

/// Starts the agent: its API, registration (retried until the controller answers), a
/// first full reconcile, then the heartbeat and reconcile loops.
pub async fn start(
    config: AgentConfig,
    driver: Arc<dyn VmDriver>,
    bridges: Arc<dyn HostBridges>,
) -> Result<RunningAgent, AgentError> {
    let state_error = |source| AgentError::State {
        dir: config.state_dir.clone(),
        source,
    };
    let state = StateStore::open(&config.state_dir).map_err(state_error)?;
    let secret = state.state.agent_secret.clone();
    let http = controller_client(&config)?;
    let identity = if config.insecure {
        None
    } else {
        let mut names = Vec::new();
        if !config.listen.ip().is_unspecified() {
            names.push(config.listen.ip().to_string());
        }
        if let Some(host) = config
            .advertise
            .as_deref()
            .and_then(|a| a.parse::<reqwest::Url>().ok())
            .and_then(|u| u.host_str().map(str::to_string))
        {
            names.push(host);
        }
        Some(identity::agent_identity(&config.state_dir, &names)?)
    };
    let vpnd = vpnd_api::Client::new(&config.vpnd_socket);
    let public_key = wait_for_vpnd(&vpnd).await?;
    let listen = config.listen;
    let bind = move |source| AgentError::Bind {
        addr: listen,
        source,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(bind)?;
    let addr = listener.local_addr().map_err(bind)?;
    let shared = Arc::new(Shared {
        reconciler: Reconciler::new(driver.clone(), bridges, vpnd, state).with_services(
            config
                .services
                .clone()
                .map(|c| Arc::new(services::ClusterServices::new(c))),
        ),
        secret,
        host_id: tokio::sync::RwLock::new(None),
        http,
        config,
        desired: std::sync::Mutex::new(None),
    });
    if let Some(services) = &shared.reconciler.services {
        services.set_relay(services::ControllerRelay {
            http: shared.http.clone(),
            base: shared.config.controller.clone(),
            token: shared.config.token.clone(),
            host: shared.config.name.clone(),
        });
    }
    let (stop, stopped) = watch::channel(false);
    let mut handles = Vec::new();

    let router = api_router(shared.clone());
    let agent_cert_sha256 = match &identity {
        Some(id) => {
            let tls = TlsListener::new(listener, id.server_config()?).map_err(bind)?;
            handles.push(tokio::spawn(serve_api(tls, router, stopped.clone())));
            Some(id.leaf_fingerprint().to_string())
        }
        None => {
            tracing::warn!(
                %addr,
                "agent API in plain HTTP (--insecure): use TLS unless this network is trusted"
            );
            handles.push(tokio::spawn(serve_api(listener, router, stopped.clone())));
            None
        }
    };
    let scheme = if identity.is_some() { "https" } else { "http" };
    let advertise = shared
        .config
        .advertise
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{addr}"));
    let registration = RegisterHost {
        name: shared.config.name.clone(),
        site: shared.config.site.clone(),
        cpus: shared.config.cpus,
        memory_mib: shared.config.memory_mib,
        agent_url: advertise,
        agent_secret: shared.secret.clone(),
        agent_cert_sha256,
        overlay_endpoint: shared.config.overlay_endpoint.clone(),
        public_key,
        driver: driver.kind().to_string(),
    };
    let registered = register(&shared, &registration).await?;
    let host_id = registered.host.id;
    *shared.host_id.write().await = Some(host_id);
    {
        let mut st = shared.reconciler.state.lock().await;
        st.state.host_id = Some(host_id);
        st.save().map_err(|source| AgentError::State {
            dir: shared.config.state_dir.clone(),
            source,
        })?;
    }
    tracing::info!(host = %registered.host.name, host_id, site = %registered.host.site, "registered");
    driver.prepare_host();
    match reconcile_once(&shared).await {
        Ok(errors) if errors.is_empty() => {}
        Ok(errors) => tracing::warn!(?errors, "first reconcile left errors"),
        Err(e) => tracing::warn!(error = %e, "first reconcile failed"),
    }

    let beat = Duration::from_secs(registered.heartbeat_secs.max(1));
    handles.push(tokio::spawn(heartbeat_loop(
        shared.clone(),
        beat,
        stopped.clone(),
    )));
    handles.push(tokio::spawn(reconcile_loop(shared.clone(), stopped)));
    Ok(RunningAgent {
        addr,
        host_id,
        stop,
        handles,
        shared,
    })
}

/// The client the agent calls the controller with: pinned for `https://`, plain HTTP
/// only to loopback or with `--insecure`.
fn controller_client(config: &AgentConfig) -> Result<reqwest::Client, AgentError> {
    let url = tls::check_url("--controller", &config.controller, config.insecure)
        .map_err(AgentError::Config)?;
    let builder = if url.scheme() == "https" {
        let trust = config.controller_trust.as_ref().ok_or_else(|| {
            AgentError::Config(format!(
                "--controller {} is https: pin the controller with --ca FILE or \
                 --ca-fingerprint SHA256 (printed by `vcluster serve` on its first start)",
                config.controller
            ))
        })?;
        trust.reqwest_builder()?
    } else {
        reqwest::Client::builder()
    };
    builder
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| AgentError::Config(format!("the controller's HTTP client: {e}")))
}

async fn serve_api<L>(listener: L, router: Router, mut stop: watch::Receiver<bool>)
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let serve = axum::serve(listener, router).with_graceful_shutdown(async move {
        let _ = stop.wait_for(|s| *s).await;
    });
    if let Err(e) = serve.await {
        tracing::error!(error = %e, "agent API failed");
    }
}

/// `vcluster host-agent`: runs until Ctrl-C or SIGTERM.
pub async fn run(
    config: AgentConfig,
    driver: Arc<dyn VmDriver>,
    bridges: Arc<dyn HostBridges>,
) -> Result<(), AgentError> {
    let agent = start(config, driver, bridges).await?;
    crate::controller::shutdown_signal().await;
    agent.shutdown().await;
    Ok(())
}

async fn wait_for_vpnd(vpnd: &vpnd_api::Client) -> Result<String, AgentError> {
    let mut last = None;
    for attempt in 0..60 {
        match vpnd.status().await {
            Ok(s) => return Ok(s.public_key.to_string()),
            Err(e) => {
                if attempt == 0 {
                    tracing::info!(error = %e, "waiting for vpnd");
                }
                last = Some(e);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(AgentError::VpndUnreachable {
        socket: vpnd.socket().to_path_buf(),
        last: last.map(|e| e.to_string()).unwrap_or_default(),
    })
}

fn controller_url(shared: &Shared, path: &str) -> String {
    format!("{}{path}", shared.config.controller.trim_end_matches('/'))
}

async fn error_message(resp: reqwest::Response) -> String {
    let status = resp.status();
    match resp.json::<ApiErrorBody>().await {
        Ok(b) => format!("{} ({status})", b.error),
        Err(_) => format!("controller answered {status}"),
    }
}

async fn register(shared: &Shared, reg: &RegisterHost) -> Result<Registered, AgentError> {
    let mut delay = Duration::from_millis(200);
    loop {
        let resp = shared
            .http
            .post(controller_url(shared, "/v1/hosts/register"))
            .bearer_auth(&shared.config.token)
            .json(reg)
            .send()
            .await;
        match resp {
            Ok(r) if r.status().is_success() => return Ok(r.json().await?),
            Ok(r) if r.status().is_client_error() => {
                // The controller refused (bad token, unknown site): retrying will not help.
                return Err(AgentError::RegistrationRefused(error_message(r).await));
            }
            Ok(r) => {
                let error = error_message(r).await;
                tracing::warn!(%error, "registration failed; retrying");
            }
            Err(e) => {
                let error = tls::error_chain(&e);
                if tls::is_certificate_error(&e) {
                    // Not the controller we pinned: retrying would not make it so.
                    return Err(AgentError::Config(format!(
                        "the controller at {} is not the pinned one: {error}",
                        shared.config.controller
                    )));
                }
                tracing::warn!(%error, "controller unreachable; retrying")
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

async fn reconcile_once(shared: &Shared) -> Result<Vec<String>, AgentError> {
    let host_id = shared
        .host_id
        .read()
        .await
        .ok_or(AgentError::NotRegistered)?;
    // The copy pulled last, sent back by its ETag: while nothing of this host changed the
    // controller answers 304 and the agent converges to the copy it holds.
    let held = shared.desired.lock().expect("held desired state").clone();
    let mut req = shared
        .http
        .get(controller_url(
            shared,
            &format!("/v1/hosts/{host_id}/desired"),
        ))
        .bearer_auth(&shared.config.token);
    if let Some((etag, _)) = &held {
        req = req.header(reqwest::header::IF_NONE_MATCH, etag);
    }
    let resp = req.send().await?;
    let desired = match (resp.status(), held) {
        (reqwest::StatusCode::NOT_MODIFIED, Some((_, held))) => {
            // Unchanged as of the revision the controller read it at: the copy is
            // current at that revision (so it is not taken for a stale statement).
            let revision = resp
                .headers()
                .get(crate::model::REVISION_HEADER)
                .and_then(|v| v.to_str().ok()?.parse::<i64>().ok())
                .ok_or_else(|| {
                    AgentError::Desired("a 304 without the revision it was read at".into())
                })?;
            let mut current = HostDesired::clone(&held);
            current.revision = revision;
            for c in &mut current.clusters {
                c.revision = revision;
            }
            Arc::new(current)
        }
        (status, _) if status.is_success() => {
            let etag = resp
                .headers()
                .get(reqwest::header::ETAG)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let desired: Arc<HostDesired> = Arc::new(resp.json().await?);
            *shared.desired.lock().expect("held desired state") =
                etag.map(|e| (e, desired.clone()));
            desired
        }
        _ => return Err(AgentError::Desired(error_message(resp).await)),
    };
    let errors = shared.reconciler.reconcile(&desired).await?;
    Ok(errors)
}

async fn reconcile_loop(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(shared.config.reconcile_every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        match reconcile_once(&shared).await {
            Ok(errors) if errors.is_empty() => {}
            Ok(errors) => tracing::warn!(?errors, "reconcile left errors"),
            Err(e) => tracing::warn!(error = %e, "reconcile failed"),
        }
    }
}

async fn heartbeat_loop(shared: Arc<Shared>, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let Some(host_id) = *shared.host_id.read().await else {
            continue;
        };
        let beat = match shared.reconciler.observe_within(every / 2).await {
            Ok((networks, nodes)) => {
                let node_agents = ask_node_agents(&shared.reconciler.driver, &nodes, every).await;
                let driver = &shared.reconciler.driver;
                let vms_running = ask_hypervisor(driver, &nodes, every).await;
                let accel = nodes
                    .iter()
                    .filter(|n| n.running)
                    .filter_map(|n| driver.accel(&n.name).map(|a| (n.name.clone(), a)))
                    .collect();
                Heartbeat {
                    nodes,
                    networks,
                    node_agents,
                    vms_running,
                    accel,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "looking at the host failed");
                Heartbeat {
                    nodes: vec![],
                    networks: vec![],
                    node_agents: vec![],
                    vms_running: vec![],
                    accel: Default::default(),
                }
            }
        };
        let resp = shared
            .http
            .post(controller_url(
                &shared,
                &format!("/v1/hosts/{host_id}/heartbeat"),
            ))
            .bearer_auth(&shared.config.token)
            .json(&beat)
            .send()
            .await;
        match resp {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => {
                let error = error_message(r).await;
                tracing::warn!(%error, "heartbeat refused");
            }
            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
        }
    }
}

/// Asks every running node's agent for its status, all at once, each within half a beat
/// (at most 2 s): a node that does not answer in time is reported with why.
async fn ask_node_agents(
    driver: &Arc<dyn VmDriver>,
    nodes: &[crate::model::ObservedNode],
    beat: Duration,
) -> Vec<crate::model::NodeAgentReport> {
    let wait = (beat / 2).clamp(Duration::from_millis(100), Duration::from_secs(2));
    let mut asks = tokio::task::JoinSet::new();
    for n in nodes.iter().filter(|n| n.running) {
        let Some(socket) = driver.node_channel(&n.name) else {
            continue;
        };
        let name = n.name.clone();
        asks.spawn(async move {
            let (status, error) = match crate::node::client::status(&socket, wait).await {
                Ok(s) => (Some(s), None),
                Err(e) => (None, Some(e)),
            };
            crate::model::NodeAgentReport {
                name,
                status,
                error,
            }
        });
    }
    let mut reports = Vec::new();
    while let Some(r) = asks.join_next().await {
        if let Ok(r) = r {
            reports.push(r);
        }
    }
    reports.sort_by(|a, b| a.name.cmp(&b.name));
    reports
}

/// The running nodes that have no agent channel (VMs, for now) and whose hypervisor says
/// their guest runs: the host vouches for them in its heartbeat. Asked in parallel, each
/// within half a beat (a QEMU that does not answer in time is not vouched for).
async fn ask_hypervisor(
    driver: &Arc<dyn VmDriver>,
    nodes: &[crate::model::ObservedNode],
    beat: Duration,
) -> Vec<String> {
    let wait = (beat / 2).clamp(Duration::from_millis(100), Duration::from_secs(2));
    let mut asks = tokio::task::JoinSet::new();
    for n in nodes.iter().filter(|n| n.running) {
        if driver.node_channel(&n.name).is_some() {
            continue;
        }
        let (driver, name) = (driver.clone(), n.name.clone());
        asks.spawn(async move {
            let runs = tokio::time::timeout(wait, driver.guest_running(&name)).await;
            runs.unwrap_or(false).then_some(name)
        });
    }
    let mut running = Vec::new();
    while let Some(r) = asks.join_next().await {
        if let Ok(Some(name)) = r {
            running.push(name);
        }
    }
    running.sort();
    running
}

// ---------------------------------------------------------------------------------------
// The agent's API, for the controller's tasks.

impl From<reconcile::ReconcileError> for ApiError {
    fn from(e: reconcile::ReconcileError) -> Self {
        let status = match e {
            reconcile::ReconcileError::NotOurs { .. } => StatusCode::CONFLICT,
            reconcile::ReconcileError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::BAD_GATEWAY,
        };
        ApiError::new(status, e.to_string())
    }
}

/// The controller, proven by the secret this agent registered with.
struct FromController;

impl FromRequestParts<Arc<Shared>> for FromController {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, shared: &Arc<Shared>) -> Result<Self, ApiError> {
        let given = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .unwrap_or("");
        // Compare in time independent of where the first difference is.
        let a = given.as_bytes();
        let b = shared.secret.as_bytes();
        let same =
            a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0;
        if same {
            Ok(FromController)
        } else {
            Err(ApiError::unauthorized("bad or missing agent secret"))
        }
    }
}

fn api_router(shared: Arc<Shared>) -> Router {
    Router::new()
        // The controller gzips its pushes (controller::agent_client::push_body); the
        // body limit below holds for what they unpack to.
        .route(
            "/agent/v1/networks/{id}",
            put(put_network)
                .delete(delete_network)
                .layer(tower_http::decompression::RequestDecompressionLayer::new())
                .layer(axum::middleware::map_response(name_the_encoding)),
        )
        .route("/agent/v1/state", get(get_state))
        .route("/agent/v1/exec", axum::routing::post(exec_on_nodes))
        .route(
            "/agent/v1/nodes/{node}/power",
            axum::routing::post(power_node),
        )
        .route("/agent/v1/nodes/{node}/console", get(node_console))
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(|| async { ApiError::not_found("no such route") })
        // A command may carry a file (`vcluster copy`); only the controller gets this far
        // (its secret is checked before a body is read).
        .layer(axum::extract::DefaultBodyLimit::max(
            exec::MAX_EXEC_BODY_BYTES,
        ))
        .with_state(shared)
}

/// The decompression layer refuses an encoding other than gzip with an empty `415`: say
/// what was wrong, as every other refusal does. (A JSON `415` is the handler's own: no
/// `Content-Type: application/json`; it is left as it is.)
async fn name_the_encoding(resp: axum::response::Response) -> axum::response::Response {
    use axum::response::IntoResponse;
    if resp.status() == StatusCode::UNSUPPORTED_MEDIA_TYPE
        && !resp
            .headers()
            .contains_key(axum::http::header::CONTENT_TYPE)
    {
        return ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content-encoding: only gzip (or none) is accepted",
        )
        .with_field("content-encoding")
        .into_response();
    }
    resp
}

async fn put_network(
    State(shared): State<Arc<Shared>>,
    _: FromController,
    ApiPath(id): ApiPath<u32>,
    ApiJson(share): ApiJson<ClusterOnHost>,
) -> Result<ApiJson<AppliedCluster>, ApiError> {
    if share.network.id != id {
        return Err(ApiError::invalid(
            "network.id",
            format!("path says network {id}, body says {}", share.network.id),
        ));
    }
    let applied = shared.reconciler.apply(&share).await?;
    if applied.applied {
        hold_pushed(&shared, share.network.id, Some(share));
    }
    Ok(ApiJson(applied))
}

/// Keeps the copy of the desired state the agent holds current with what the controller
/// pushed (one cluster made or changed, or removed when `share` is `None`), with the
/// ETag of the copy as it now stands: the next pull of what the host already has is then
/// a `304` and not the whole state again (the controller pushes on every change, an
/// install's steps included; across a WAN the pulls were most of what it sent a host).
/// A copy that differs from the controller's in any way has another ETag and is pulled
/// whole, as before.
fn hold_pushed(shared: &Shared, network: u32, share: Option<ClusterOnHost>) {
    let mut held = shared.desired.lock().expect("held desired state");
    let Some((etag, desired)) = held.as_mut() else {
        return;
    };
    let next = Arc::make_mut(desired);
    next.clusters.retain(|c| c.network.id != network);
    next.clusters.extend(share);
    *etag = crate::model::desired_etag(next);
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveQuery {
    revision: i64,
}

async fn delete_network(
    State(shared): State<Arc<Shared>>,
    _: FromController,
    ApiPath(id): ApiPath<u32>,
    ApiQuery(q): ApiQuery<RemoveQuery>,
) -> Result<StatusCode, ApiError> {
    if shared.reconciler.remove(id, q.revision).await? {
        hold_pushed(&shared, id, None);
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn get_state(
    State(shared): State<Arc<Shared>>,
    _: FromController,
) -> Result<ApiJson<AgentState>, ApiError> {
    let (networks, nodes) = shared.reconciler.observe().await?;
    let st = shared.reconciler.state.lock().await;
    Ok(ApiJson(AgentState {
        host_id: st.state.host_id,
        networks,
        nodes,
        last_revision: st.state.snapshot_revision,
    }))
}

/// Runs the controller's command on some of this host's nodes, through each node's agent,
/// at most `fanout` at a time; the answer streams every node's events as they come.
async fn exec_on_nodes(
    State(shared): State<Arc<Shared>>,
    _: FromController,
    ApiJson(req): ApiJson<HostExec>,
) -> Result<axum::response::Response, ApiError> {
    let bad = |(f, m): (&'static str, String)| ApiError::invalid(f, m);
    exec::check_command(&req.command).map_err(bad)?;
    exec::check_bound(
        "connect_timeout_ms",
        req.connect_timeout_ms,
        exec::MAX_CONNECT_TIMEOUT_MS,
    )
    .map_err(bad)?;
    exec::check_bound(
        "command_timeout_ms",
        req.command_timeout_ms,
        exec::MAX_COMMAND_TIMEOUT_MS,
    )
    .map_err(bad)?;
    exec::check_bound("fanout", u64::from(req.fanout), u64::from(exec::MAX_FANOUT)).map_err(bad)?;
    exec::decode_stdin(req.stdin.as_deref()).map_err(bad)?;
    if req.nodes.is_empty() || req.nodes.len() > crate::nodeset::MAX_NAMES {
        return Err(ApiError::invalid(
            "nodes",
            format!(
                "{} nodes; give 1 to {}",
                req.nodes.len(),
                crate::nodeset::MAX_NAMES
            ),
        ));
    }
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    let driver = shared.reconciler.driver.clone();
    tokio::spawn(relay_exec(driver, req, tx));
    Ok(crate::node::ndjson_response(rx))
}

async fn relay_exec(
    driver: Arc<dyn VmDriver>,
    req: HostExec,
    tx: tokio::sync::mpsc::Sender<ExecEvent>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(req.fanout as usize));
    let node_req = Arc::new(NodeExec {
        command: req.command.clone(),
        timeout_ms: req.command_timeout_ms,
        stdin: req.stdin.clone(),
    });
    let connect = Duration::from_millis(req.connect_timeout_ms);
    let mut running = tokio::task::JoinSet::new();
    for node in req.nodes {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        if tx.is_closed() {
            break; // the controller went away: start nothing more
        }
        let (driver, tx, node_req) = (driver.clone(), tx.clone(), node_req.clone());
        running.spawn(async move {
            let _permit = permit;
            let outcome = match driver.node_channel(&node) {
                None => Err(format!(
                    "the {} driver runs no node agent for {node}",
                    driver.kind()
                )),
                Some(socket) => {
                    crate::node::client::exec(&socket, &node, &node_req, connect, &tx).await
                }
            };
            if let Err(reason) = outcome {
                let _ = tx.send(ExecEvent::Unreachable { node, reason }).await;
            }
        });
    }
    while running.join_next().await.is_some() {}
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsoleQuery {
    #[serde(default)]
    offset: u64,
}

/// A piece of one of this host's nodes' console log, from `offset`.
async fn node_console(
    State(shared): State<Arc<Shared>>,
    _: FromController,
    ApiPath(node): ApiPath<String>,
    ApiQuery(q): ApiQuery<ConsoleQuery>,
) -> Result<ApiJson<crate::model::ConsoleChunk>, ApiError> {
    use std::io::{Read, Seek, SeekFrom};
    let driver = &shared.reconciler.driver;
    let known = driver
        .list()
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, e.to_string()))?
        .iter()
        .any(|f| f.name.as_deref() == Some(node.as_str()));
    if !known {
        return Err(ApiError::not_found(format!("no node {node} on this host")));
    }
    let Some(path) = driver.console_log(&node) else {
        return Err(ApiError::not_found(format!(
            "the {} driver keeps no console for {node}",
            driver.kind()
        )));
    };
    let mut file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(ApiJson(crate::model::ConsoleChunk {
                node,
                offset: 0,
                size: 0,
                bytes: 0,
                text: String::new(),
            }));
        }
        Err(e) => return Err(ApiError::internal(format!("{}: {e}", path.display()))),
    };
    let size = file
        .metadata()
        .map_err(|e| ApiError::internal(format!("{}: {e}", path.display())))?
        .len();
    let offset = q.offset.min(size);
    let mut buf = Vec::new();
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| {
            file.take(crate::model::MAX_CONSOLE_CHUNK)
                .read_to_end(&mut buf)
        })
        .map_err(|e| ApiError::internal(format!("{}: {e}", path.display())))?;
    Ok(ApiJson(crate::model::ConsoleChunk {
        node,
        offset,
        size,
        bytes: buf.len() as u64,
        text: String::from_utf8_lossy(&buf).into_owned(),
    }))
}

/// Powers one of this host's nodes on or off (fencing: confirmed), resets it, or
/// reinstalls it (destroyed and made anew from the desired state).
async fn power_node(
    State(shared): State<Arc<Shared>>,
    _: FromController,
    ApiPath(node): ApiPath<String>,
    ApiJson(req): ApiJson<crate::model::PowerRequest>,
) -> Result<ApiJson<crate::model::PowerState>, ApiError> {
    use crate::model::PowerAction;
    let driver = shared.reconciler.driver.clone();
    let failed = |e: driver::DriverError| ApiError::new(StatusCode::BAD_GATEWAY, e.to_string());
    tracing::info!(%node, action = req.action.as_str(), "power");
    let running = match req.action {
        PowerAction::On => driver.power(&node, true).await.map_err(failed)?,
        PowerAction::Off => driver.power(&node, false).await.map_err(failed)?,
        PowerAction::Reset => {
            driver.power(&node, false).await.map_err(failed)?;
            driver.power(&node, true).await.map_err(failed)?
        }
        PowerAction::Reinstall => {
            let found = driver.list().await.map_err(failed)?;
            let Some(f) = found
                .iter()
                .find(|f| f.name.as_deref() == Some(node.as_str()))
            else {
                return Err(ApiError::not_found(format!("no node {node} on this host")));
            };
            {
                // No reconcile may remake the node while it is being removed (it would
                // start a node whose files the removal then deletes under it).
                let _state = shared.reconciler.state.lock().await;
                driver.remove(f.slot, Some(&node)).await.map_err(failed)?;
            }
            let errors = reconcile_once(&shared)
                .await
                .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, e.to_string()))?;
            if !errors.is_empty() {
                return Err(ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    format!("remaking {node}: {}", errors.join("; ")),
                ));
            }
            driver
                .list()
                .await
                .map_err(failed)?
                .iter()
                .any(|f| f.name.as_deref() == Some(node.as_str()) && f.running)
        }
    };
    Ok(ApiJson(crate::model::PowerState { node, running }))
}
