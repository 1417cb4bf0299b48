//! The host agent (`vcluster host-agent`): one per hypervisor host. It registers the host
//! with the controller (site, capacity, its own URL, the overlay endpoint and the vpnd
//! public key read from vpnd's `GET /v1/status`), heartbeats, serves the small API the
//! controller's tasks push cluster shares to, and every `reconcile_every` pulls the host's
//! whole desired state and converges to it, so after an agent or controller restart what
//! exists on the host and what the store says meet again.
//!
//! Nodes are made by a [`driver::VmDriver`] (`netns` today), bridges by
//! [`driver::HostBridges`], overlay networks by the local `vpnd` (through
//! [`vpnd_api::Client`], the control API's one client).
//! The agent never decides placement or policy; it does what the store says.

pub mod driver;
pub mod netns;
pub mod reconcile;
pub mod state;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::Deserialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::model::{
    AgentState, ApiErrorBody, AppliedCluster, ClusterOnHost, Heartbeat, HostDesired, RegisterHost,
    Registered,
};
use driver::{HostBridges, VmDriver};
use reconcile::Reconciler;
use state::StateStore;

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The controller's base URL, e.g. `http://10.0.0.1:7200`.
    pub controller: String,
    /// An `agent` token from the controller's admin.
    pub token: String,
    pub name: String,
    pub site: String,
    pub cpus: i64,
    pub memory_mib: i64,
    /// Where the agent's API listens.
    pub listen: SocketAddr,
    /// The URL the controller uses to reach the agent (default `http://<listen>`).
    pub advertise: Option<String>,
    /// This host's vpnd UDP endpoint as other sites reach it, `ip:port`.
    pub overlay_endpoint: String,
    pub vpnd_socket: PathBuf,
    pub state_dir: PathBuf,
    /// How often to pull and converge the whole desired state.
    pub reconcile_every: Duration,
}

struct Shared {
    config: AgentConfig,
    reconciler: Reconciler,
    secret: String,
    host_id: tokio::sync::RwLock<Option<i64>>,
    http: reqwest::Client,
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
    pub async fn reconcile_now(&self) -> anyhow::Result<Vec<String>> {
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
) -> anyhow::Result<RunningAgent> {
    let state = StateStore::open(&config.state_dir)
        .with_context(|| format!("opening the state in {}", config.state_dir.display()))?;
    let secret = state.state.agent_secret.clone();
    let vpnd = vpnd_api::Client::new(&config.vpnd_socket);
    let public_key = wait_for_vpnd(&vpnd).await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    let shared = Arc::new(Shared {
        reconciler: Reconciler::new(driver.clone(), bridges, vpnd, state),
        secret,
        host_id: tokio::sync::RwLock::new(None),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("reqwest client"),
        config,
    });
    let (stop, stopped) = watch::channel(false);
    let mut handles = Vec::new();

    let router = api_router(shared.clone());
    let mut stop_api = stopped.clone();
    handles.push(tokio::spawn(async move {
        let serve = axum::serve(listener, router).with_graceful_shutdown(async move {
            let _ = stop_api.wait_for(|s| *s).await;
        });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "agent API failed");
        }
    }));

    let advertise = shared
        .config
        .advertise
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    let registration = RegisterHost {
        name: shared.config.name.clone(),
        site: shared.config.site.clone(),
        cpus: shared.config.cpus,
        memory_mib: shared.config.memory_mib,
        agent_url: advertise,
        agent_secret: shared.secret.clone(),
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
        st.save()?;
    }
    tracing::info!(host = %registered.host.name, id = host_id, site = %registered.host.site, "registered");
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

/// `vcluster host-agent`: runs until Ctrl-C or SIGTERM.
pub async fn run(
    config: AgentConfig,
    driver: Arc<dyn VmDriver>,
    bridges: Arc<dyn HostBridges>,
) -> anyhow::Result<()> {
    let agent = start(config, driver, bridges).await?;
    crate::controller::shutdown_signal().await;
    agent.shutdown().await;
    Ok(())
}

async fn wait_for_vpnd(vpnd: &vpnd_api::Client) -> anyhow::Result<String> {
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
    Err(anyhow::anyhow!(
        "vpnd did not answer on {}: {}",
        vpnd.socket().display(),
        last.map(|e| e.to_string()).unwrap_or_default()
    ))
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

async fn register(shared: &Shared, reg: &RegisterHost) -> anyhow::Result<Registered> {
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
                anyhow::bail!("registration refused: {}", error_message(r).await);
            }
            Ok(r) => {
                let error = error_message(r).await;
                tracing::warn!(%error, "registration failed; retrying");
            }
            Err(e) => tracing::warn!(error = %e, "controller unreachable; retrying"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

async fn reconcile_once(shared: &Shared) -> anyhow::Result<Vec<String>> {
    let host_id = shared.host_id.read().await.context("not registered yet")?;
    let resp = shared
        .http
        .get(controller_url(
            shared,
            &format!("/v1/hosts/{host_id}/desired"),
        ))
        .bearer_auth(&shared.config.token)
        .send()
        .await?;
    if !resp.status().is_success() {
        anyhow::bail!("reading the desired state: {}", error_message(resp).await);
    }
    let desired: HostDesired = resp.json().await?;
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
        let beat = match shared.reconciler.observe().await {
            Ok((networks, nodes)) => Heartbeat { nodes, networks },
            Err(e) => {
                tracing::warn!(error = %e, "looking at the host failed");
                Heartbeat {
                    nodes: vec![],
                    networks: vec![],
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

// ---------------------------------------------------------------------------------------
// The agent's API, for the controller's tasks.

struct AgentError(StatusCode, String);

impl IntoResponse for AgentError {
    fn into_response(self) -> Response {
        (
            self.0,
            Json(ApiErrorBody {
                error: self.1,
                field: None,
            }),
        )
            .into_response()
    }
}

impl From<reconcile::ReconcileError> for AgentError {
    fn from(e: reconcile::ReconcileError) -> Self {
        let status = match e {
            reconcile::ReconcileError::NotOurs { .. } => StatusCode::CONFLICT,
            _ => StatusCode::BAD_GATEWAY,
        };
        AgentError(status, e.to_string())
    }
}

/// The controller, proven by the secret this agent registered with.
struct FromController;

impl FromRequestParts<Arc<Shared>> for FromController {
    type Rejection = AgentError;
    async fn from_request_parts(
        parts: &mut Parts,
        shared: &Arc<Shared>,
    ) -> Result<Self, AgentError> {
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
            Err(AgentError(
                StatusCode::UNAUTHORIZED,
                "bad or missing agent secret".into(),
            ))
        }
    }
}

fn api_router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(
            "/agent/v1/networks/{id}",
            put(put_network).delete(delete_network),
        )
        .route("/agent/v1/state", get(get_state))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(shared)
}

async fn put_network(
    State(shared): State<Arc<Shared>>,
    _: FromController,
    Path(id): Path<u32>,
    Json(share): Json<ClusterOnHost>,
) -> Result<Json<AppliedCluster>, AgentError> {
    if share.network.id != id {
        return Err(AgentError(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("path says network {id}, body says {}", share.network.id),
        ));
    }
    Ok(Json(shared.reconciler.apply(&share).await?))
}

#[derive(Deserialize)]
struct RemoveQuery {
    revision: i64,
}

async fn delete_network(
    State(shared): State<Arc<Shared>>,
    _: FromController,
    Path(id): Path<u32>,
    Query(q): Query<RemoveQuery>,
) -> Result<StatusCode, AgentError> {
    shared.reconciler.remove(id, q.revision).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn get_state(
    State(shared): State<Arc<Shared>>,
    _: FromController,
) -> Result<Json<AgentState>, AgentError> {
    let (networks, nodes) = shared.reconciler.observe().await?;
    let st = shared.reconciler.state.lock().await;
    Ok(Json(AgentState {
        host_id: st.state.host_id,
        networks,
        nodes,
        last_revision: st.state.snapshot_revision,
    }))
}
