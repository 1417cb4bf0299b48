//! The controller (`vcluster serve`): the REST API over the store, the tasks that carry
//! long operations out on the host agents, the housekeeping loop (leases, liveness, usage
//! samples), the reservation portal and the Prometheus metrics.
//!
//! Requests change the store in one transaction and, for anything that touches hosts,
//! answer at once with a task; the task pushes each affected host its desired share of
//! the cluster and records the outcome. The controller never runs commands on hosts and
//! never talks to `vpnd`: host agents do that.

pub mod agent_client;
pub mod api;
pub mod auth;
pub mod capacity;
pub mod desired;
pub mod health;
pub mod housekeeping;
pub mod install;
pub mod metrics;
pub mod placement;
pub mod portal;
pub mod recovery;
pub mod requests;
pub mod store;
pub mod tasks;
pub mod view;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use thiserror::Error;
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;

use crate::model::Role;
use crate::tls::listener::TlsListener;
use crate::tls::{ControllerTls, Fingerprint, ServerTrust};
use agent_client::AgentClient;
use store::Store;
use view::Overcommit;

/// Everything `vcluster serve` can be told.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub listen: SocketAddr,
    /// `sqlite:PATH` or `postgres://...`.
    pub store_url: String,
    pub overcommit: Overcommit,
    /// A task that has not finished by then fails (and is rolled back).
    pub task_timeout: Duration,
    /// How often agents heartbeat; a host is offline after three missed beats.
    pub heartbeat: Duration,
    /// How often leases, stuck tasks, node health and usage samples are looked at.
    pub housekeeping: Duration,
    /// A running node whose agent has not answered for this many heartbeats is down.
    pub down_after_beats: u32,
    /// An install phase without word from its node for this long fails (naming the phase).
    pub install_phase_timeout: Duration,
    /// How often each site's capacity / in use / reserved is sampled for the timeline.
    pub sample_every: Duration,
    /// Clusters' subnets are carved from this pool, one /24 each, unless given.
    pub subnet_pool: Ipv4Net,
    /// The first overlay network id handed out (ids below it are left to the operator's
    /// own vpnd networks).
    pub first_network_id: u32,
    /// Creates an `admin` user with this token when the store has no admin.
    pub bootstrap_admin_token: Option<String>,
    /// When the store has no admin and no token was given, a new one is written here
    /// (default: `admin.token` in the working directory), never to a log.
    pub admin_token_file: Option<PathBuf>,
    /// Where the API's TLS certificate comes from; `None` serves plain HTTP (`--insecure`),
    /// and then agents may register plain-HTTP URLs too.
    pub tls: Option<TlsSource>,
}

/// Where the controller's TLS certificate comes from.
#[derive(Debug, Clone)]
pub enum TlsSource {
    /// A CA and server certificate of its own in `dir`, made on first start; `sans` are
    /// extra names for the server certificate (`--tls-san`).
    Generate { dir: PathBuf, sans: Vec<String> },
    /// The operator's certificate chain and key (`--tls-cert`, `--tls-key`).
    Files { cert: PathBuf, key: PathBuf },
    /// Already loaded (tests that share one CA between controllers).
    Loaded(ControllerTls),
}

/// Why the controller could not start.
#[derive(Debug, Error)]
pub enum StartError {
    #[error("opening store {url}: {source}")]
    Store {
        /// The store URL with any password removed.
        url: String,
        source: store::StoreError,
    },
    #[error("the overcommit ratios must be finite and in (0, 64]: cpu {cpu}, memory {memory}")]
    Overcommit { cpu: f64, memory: f64 },
    #[error("creating the first admin: {0}")]
    Bootstrap(String),
    #[error("writing the first admin's token: {0}")]
    TokenFile(crate::secret::SecretFileError),
    #[error("recovering tasks left by the previous run: {0}")]
    Recover(store::StoreError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// The default TLS directory (`--tls-dir`), relative to the working directory.
pub const DEFAULT_TLS_DIR: &str = "tls";

/// The default place of the first admin's token when no token or file is given.
pub const DEFAULT_ADMIN_TOKEN_FILE: &str = "admin.token";

/// The largest overcommit ratio: with the host bounds (`model::MAX_HOST_*`) it keeps a
/// host's capacity far inside i64.
pub const MAX_OVERCOMMIT: f64 = 64.0;

impl ControllerConfig {
    pub fn new(listen: SocketAddr, store_url: impl Into<String>) -> ControllerConfig {
        ControllerConfig {
            listen,
            store_url: store_url.into(),
            overcommit: Overcommit {
                cpu: 4.0,
                memory: 1.0,
            },
            task_timeout: Duration::from_secs(120),
            heartbeat: Duration::from_secs(5),
            housekeeping: Duration::from_secs(2),
            down_after_beats: 4,
            install_phase_timeout: Duration::from_secs(600),
            sample_every: Duration::from_secs(60),
            subnet_pool: "10.128.0.0/9".parse().expect("valid pool"),
            first_network_id: 1,
            bootstrap_admin_token: None,
            admin_token_file: None,
            tls: Some(TlsSource::Generate {
                dir: PathBuf::from(DEFAULT_TLS_DIR),
                sans: Vec::new(),
            }),
        }
    }

    pub fn host_timeout(&self) -> Duration {
        self.heartbeat * 3
    }

    /// How long a running node's agent may stay silent before the node is down.
    pub fn node_down_after(&self) -> Duration {
        self.heartbeat.saturating_mul(self.down_after_beats.max(1))
    }
}

pub struct AppInner {
    pub config: ControllerConfig,
    pub store: Store,
    pub agents: AgentClient,
    pub metrics: metrics::Metrics,
    /// Nodes' health from their agents' reports.
    pub monitor: health::Monitor,
    /// Recovery attempts of down nodes.
    pub recoveries: recovery::Recoveries,
    /// Commands (exec, copy) each user has running now.
    pub execs: api::exec::ExecSlots,
    /// One lock per cluster: its tasks run one at a time, so each push reads the
    /// cluster's newest desired state.
    cluster_locks: Mutex<HashMap<i64, Arc<Mutex<()>>>>,
    /// Per cluster: the pushes asked for and the last one done (`tasks::converge`).
    pub converges: std::sync::Mutex<HashMap<i64, Arc<tasks::ConvergeSlot>>>,
}

/// The controller's shared state, handed to every handler and task.
#[derive(Clone)]
pub struct App(Arc<AppInner>);

impl Deref for App {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

impl App {
    pub async fn cluster_lock(&self, cluster_id: i64) -> Arc<Mutex<()>> {
        let mut locks = self.cluster_locks.lock().await;
        locks.entry(cluster_id).or_default().clone()
    }

    /// Drops a deleted cluster's lock (whoever still holds it keeps their handle).
    pub async fn forget_cluster_lock(&self, cluster_id: i64) {
        self.cluster_locks.lock().await.remove(&cluster_id);
        self.converges
            .lock()
            .expect("converge slots")
            .remove(&cluster_id);
    }

    pub fn host_timeout_ms(&self) -> i64 {
        self.config.host_timeout().as_millis() as i64
    }

    pub fn task_deadline(&self, now: i64) -> i64 {
        now + self.config.task_timeout.as_millis() as i64
    }
}

/// A controller serving on a socket; stops when [`RunningController::shutdown`] is called
/// or the value is dropped.
pub struct RunningController {
    pub addr: SocketAddr,
    pub app: App,
    /// What the API presents; `None` when it serves plain HTTP.
    pub tls: Option<ControllerTls>,
    stop: watch::Sender<bool>,
    handle: Option<JoinHandle<()>>,
}

impl RunningController {
    /// `https://ADDR` (or `http://` for a plain-HTTP controller).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// How a client pins this controller: its generated CA, or (for an operator's
    /// certificate) the certificate chain's last certificate by fingerprint.
    pub fn trust(&self) -> Option<ServerTrust> {
        let tls = self.tls.as_ref()?;
        Some(match &tls.ca {
            Some((_, fingerprint)) => ServerTrust::Fingerprint(*fingerprint),
            None => ServerTrust::Fingerprint(Fingerprint::of(
                tls.identity
                    .chain
                    .last()
                    .expect("a chain has a certificate"),
            )),
        })
    }

    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
        self.app.store.close().await;
    }
}

impl Drop for RunningController {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(h) = self.handle.take() {
            h.abort();
        }
    }
}

/// Opens the store, recovers from an earlier run, and serves until shut down.
pub async fn start(config: ControllerConfig) -> Result<RunningController, StartError> {
    let Overcommit { cpu, memory } = config.overcommit;
    if !(cpu > 0.0 && cpu <= MAX_OVERCOMMIT && memory > 0.0 && memory <= MAX_OVERCOMMIT) {
        return Err(StartError::Overcommit { cpu, memory });
    }
    let store = Store::open(&config.store_url)
        .await
        .map_err(|source| StartError::Store {
            url: redact(&config.store_url),
            source,
        })?;
    let tls = match &config.tls {
        Some(TlsSource::Generate { dir, sans }) => {
            let mut names = sans.clone();
            if !config.listen.ip().is_unspecified() {
                names.push(config.listen.ip().to_string());
            }
            Some(ControllerTls::load_or_create(dir, &names)?)
        }
        Some(TlsSource::Files { cert, key }) => Some(ControllerTls::from_files(cert, key)?),
        Some(TlsSource::Loaded(tls)) => Some(tls.clone()),
        None => None,
    };
    let server_config = tls
        .as_ref()
        .map(|t| t.identity.server_config())
        .transpose()?;
    bootstrap_admin(&store, &config).await?;
    let app = App(Arc::new(AppInner {
        agents: AgentClient::new(config.task_timeout.min(Duration::from_secs(60))),
        metrics: metrics::Metrics::new(),
        monitor: health::Monitor::new(),
        recoveries: recovery::Recoveries::new(),
        execs: api::exec::ExecSlots::default(),
        cluster_locks: Mutex::new(HashMap::new()),
        converges: std::sync::Mutex::new(HashMap::new()),
        store,
        config,
    }));
    housekeeping::recover_after_restart(&app)
        .await
        .map_err(StartError::Recover)?;

    let bind = |source| StartError::Bind {
        addr: app.config.listen,
        source,
    };
    let listener = tokio::net::TcpListener::bind(app.config.listen)
        .await
        .map_err(bind)?;
    let addr = listener.local_addr().map_err(bind)?;
    let (stop, stopped) = watch::channel(false);
    let router = api::router(app.clone());
    let keeper = tokio::spawn(housekeeping::run(app.clone(), stop.subscribe()));
    let handle = match server_config {
        Some(sc) => {
            let listener = TlsListener::new(listener, sc).map_err(bind)?;
            tokio::spawn(serve_until(listener, router, stopped, keeper))
        }
        None => tokio::spawn(serve_until(listener, router, stopped, keeper)),
    };
    match &tls {
        Some(t) => match &t.ca {
            Some((file, fingerprint)) => tracing::info!(
                %addr, ca = %file.display(), ca_sha256 = %fingerprint,
                "controller listening (TLS)"
            ),
            None => tracing::info!(%addr, "controller listening (TLS, operator's certificate)"),
        },
        None if crate::tls::is_loopback(&addr.ip().to_string()) => {
            tracing::info!(%addr, "controller listening (plain HTTP on loopback)")
        }
        None => tracing::warn!(
            %addr,
            "controller listening in plain HTTP (--insecure): tokens and agent secrets cross \
             the network readable by anyone on the path; use TLS unless this network is trusted"
        ),
    }
    Ok(RunningController {
        addr,
        app,
        tls,
        stop,
        handle: Some(handle),
    })
}

async fn serve_until<L>(
    listener: L,
    router: axum::Router,
    mut stopped: watch::Receiver<bool>,
    keeper: JoinHandle<()>,
) where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let serve = axum::serve(listener, router).with_graceful_shutdown(async move {
        let _ = stopped.wait_for(|s| *s).await;
    });
    if let Err(e) = serve.await {
        tracing::error!(error = %e, "controller server failed");
    }
    keeper.abort();
}

/// `vcluster serve`: runs until Ctrl-C or SIGTERM.
pub async fn serve(config: ControllerConfig) -> Result<(), StartError> {
    let running = start(config).await?;
    if let Some(tls) = &running.tls
        && let Some((file, fingerprint)) = &tls.ca
        && tls.created_ca
    {
        // Shown once, when the CA is made: what agents and users pin.
        println!("created the controller's CA in {}", file.display());
        println!("CA SHA-256 fingerprint: {fingerprint}");
        println!(
            "pin it with --ca {} or --ca-fingerprint {fingerprint}",
            file.display()
        );
    }
    shutdown_signal().await;
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(())
}

pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn bootstrap_admin(store: &Store, config: &ControllerConfig) -> Result<(), StartError> {
    let mut conn = store.conn().await.map_err(StartError::Recover)?;
    if store::count_admins(&mut conn)
        .await
        .map_err(StartError::Recover)?
        > 0
    {
        return Ok(());
    }
    drop(conn);
    let given = config.bootstrap_admin_token.as_deref();
    let (_, token) = auth::create_user_with_token(store, "admin", Role::Admin, given)
        .await
        .map_err(|e| StartError::Bootstrap(e.message))?;
    if given.is_some() {
        tracing::info!("created user admin with the given bootstrap token");
        return Ok(());
    }
    // The new token goes to a file only the controller's user can read, never to a log.
    let path = config
        .admin_token_file
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ADMIN_TOKEN_FILE));
    crate::secret::write_secret_file(&path, format!("{token}\n").as_bytes())
        .map_err(StartError::TokenFile)?;
    tracing::info!(file = %path.display(), "created user admin; its token is in the file (mode 0600)");
    Ok(())
}

/// A store URL fit for logs: the password removed.
pub fn redact(url: &str) -> String {
    match url.parse::<reqwest::Url>() {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}
