//! Test support for the controller and host agent tests: the two store backends (a
//! SQLite file in a temp dir; a private PostgreSQL server started here), a controller on
//! loopback speaking TLS with one CA made per test process ([`test_tls`], pinned by
//! [`http`] and every client here), host agents (TLS too, pinned by the controller) with an in-memory VM driver and a stand-in `vpnd` that follows
//! `docs/control-api.md` over a Unix socket, and helpers to drive the API as a user.
//! Everything started here is stopped by a Drop guard.

#![allow(dead_code)]

pub mod fake_vpnd;
pub mod mem_driver;
pub mod pg;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vcluster::agent::{self, AgentConfig, RunningAgent};
use vcluster::cli::ApiClient;
use vcluster::controller::{self, ControllerConfig, RunningController, TlsSource};
use vcluster::model::{Accepted, Cluster, IssuedToken, Task, TaskState};
use vcluster::tls::{ControllerTls, Fingerprint, ServerTrust};

pub use fake_vpnd::FakeVpnd;
pub use mem_driver::{MemBridges, MemDriver};

pub const ADMIN_TOKEN: &str = "vc_test_admin_token_0123456789";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique within this test run (lower-case, starts with a letter).
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}x{}",
        std::process::id() % 100_000,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A store for one test: a fresh SQLite file or a fresh PostgreSQL database.
pub struct Backend {
    pub url: String,
    pub name: &'static str,
    _dir: Option<tempfile::TempDir>,
    _pg: Option<Arc<pg::PgServer>>,
}

impl Backend {
    pub async fn sqlite() -> Backend {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite:{}", dir.path().join("controller.db").display());
        Backend {
            url,
            name: "sqlite",
            _dir: Some(dir),
            _pg: None,
        }
    }

    /// `None` (after a loud SKIP) where PostgreSQL cannot be started here.
    pub async fn postgres(test: &str) -> Option<Backend> {
        let server = match pg::PgServer::shared() {
            Ok(s) => s,
            Err(why) => {
                if std::env::var_os("CI").is_some() {
                    panic!("{test}: PostgreSQL is required in CI: {why}");
                }
                eprintln!("SKIP {test}: needs PostgreSQL ({why})");
                return None;
            }
        };
        let url = server.create_database().await;
        Some(Backend {
            url,
            name: "postgres",
            _dir: None,
            _pg: Some(server),
        })
    }
}

/// Runs `body` against both backends: `sqlite::<name>` and `postgres::<name>`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let backend = $crate::common::Backend::sqlite().await;
                    super::$name(backend).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(backend) = $crate::common::Backend::postgres(stringify!($name)).await else { return };
                    super::$name(backend).await;
                }
            )*
        }
    };
}

/// The controllers' TLS identity for this test process: a CA and a server certificate for
/// loopback, made once in a temp dir (removed again; the identity stays in memory).
pub fn test_tls() -> &'static ControllerTls {
    static TLS: OnceLock<ControllerTls> = OnceLock::new();
    TLS.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        ControllerTls::load_or_create(&dir.path().join("tls"), &[]).expect("test CA")
    })
}

/// The test CA's fingerprint: how every client here pins the controllers.
pub fn test_trust() -> ServerTrust {
    ServerTrust::Fingerprint(test_tls().ca.as_ref().expect("a generated CA").1)
}

/// The test CA's fingerprint as `--ca-fingerprint` takes it.
pub fn test_trust_fingerprint() -> String {
    test_tls()
        .ca
        .as_ref()
        .expect("a generated CA")
        .1
        .to_string()
}

/// A reqwest client that trusts the test controllers (and nothing else).
pub fn http() -> reqwest::Client {
    test_trust()
        .reqwest_builder()
        .expect("TLS client config")
        .build()
        .expect("reqwest client")
}

pub fn test_config(store_url: &str) -> ControllerConfig {
    let mut c = ControllerConfig::new("127.0.0.1:0".parse().unwrap(), store_url);
    c.tls = Some(TlsSource::Loaded(test_tls().clone()));
    c.bootstrap_admin_token = Some(ADMIN_TOKEN.to_string());
    c.heartbeat = Duration::from_secs(1);
    c.housekeeping = Duration::from_millis(200);
    c.sample_every = Duration::from_secs(1);
    c.task_timeout = Duration::from_secs(20);
    c
}

/// A controller on loopback and its admin client.
pub struct TestController {
    pub running: Option<RunningController>,
    pub url: String,
    pub admin: ApiClient,
    pub config: ControllerConfig,
}

impl TestController {
    pub async fn start(backend: &Backend) -> TestController {
        Self::start_with(test_config(&backend.url)).await
    }

    pub async fn start_with(config: ControllerConfig) -> TestController {
        let running = controller::start(config.clone())
            .await
            .expect("controller starts");
        // A controller on every address is reached at loopback.
        let url = running.url().replace("://0.0.0.0:", "://127.0.0.1:");
        TestController {
            admin: client_for(&running, &url, ADMIN_TOKEN),
            running: Some(running),
            url,
            config,
        }
    }

    /// How clients pin this controller (`None`: it serves plain HTTP).
    pub fn trust(&self) -> Option<ServerTrust> {
        self.running.as_ref().and_then(|r| r.trust())
    }

    /// Stops and starts the controller on the same store (and the same port).
    pub async fn restart(&mut self) {
        let running = self.running.take().expect("running");
        let addr = running.addr;
        running.shutdown().await;
        let mut config = self.config.clone();
        config.listen = addr;
        let mut last = None;
        for _ in 0..50 {
            match controller::start(config.clone()).await {
                Ok(r) => {
                    self.running = Some(r);
                    return;
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("controller did not restart: {:?}", last);
    }

    /// The controller's `/metrics` page.
    pub async fn metrics(&self) -> String {
        http()
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("the metrics page")
    }

    pub fn client(&self, token: &str) -> ApiClient {
        ApiClient::connect(&self.url, token, self.trust().as_ref(), false).expect("API client")
    }

    /// Creates a user with `role` and returns their token.
    pub async fn user(&self, name: &str, role: &str) -> String {
        let t: IssuedToken = self
            .admin
            .post("/v1/users", &json!({"name": name, "role": role}))
            .await
            .expect("create user");
        t.token
    }

    pub async fn site(&self, name: &str) {
        let _: Value = self
            .admin
            .post("/v1/sites", &json!({"name": name}))
            .await
            .expect("create site");
    }
}

fn client_for(running: &RunningController, url: &str, token: &str) -> ApiClient {
    ApiClient::connect(url, token, running.trust().as_ref(), false).expect("API client")
}

/// Raw HTTP for checks on status codes and bodies, to a test controller.
pub async fn raw(
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    raw_with(&http(), method, url, token, body).await
}

/// [`raw`] through `client` (an agent's pinned client, say).
pub async fn raw_with(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    let mut req = client.request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// A host agent with an in-memory driver and a stand-in vpnd.
pub struct TestAgent {
    pub agent: Option<RunningAgent>,
    pub driver: Arc<MemDriver>,
    pub bridges: Arc<MemBridges>,
    pub vpnd: FakeVpnd,
    pub name: String,
    pub config: AgentConfig,
    _state: tempfile::TempDir,
}

impl TestAgent {
    pub async fn start(
        ctl: &TestController,
        token: &str,
        name: &str,
        site: &str,
        cpus: i64,
    ) -> TestAgent {
        Self::start_every(ctl, token, name, site, cpus, Duration::from_secs(1)).await
    }

    /// An agent that pulls the desired state every `reconcile_every` (and once at start).
    pub async fn start_every(
        ctl: &TestController,
        token: &str,
        name: &str,
        site: &str,
        cpus: i64,
        reconcile_every: Duration,
    ) -> TestAgent {
        let vpnd = FakeVpnd::start().await;
        let state = tempfile::tempdir().expect("tempdir");
        let config = AgentConfig {
            controller: ctl.url.clone(),
            controller_trust: ctl.trust(),
            insecure: false,
            token: token.to_string(),
            name: name.to_string(),
            site: site.to_string(),
            cpus,
            memory_mib: cpus * 1024,
            listen: "127.0.0.1:0".parse().unwrap(),
            advertise: None,
            overlay_endpoint: vpnd.endpoint.clone(),
            vpnd_socket: vpnd.socket.clone(),
            state_dir: state.path().to_path_buf(),
            reconcile_every,
            services: None,
        };
        let driver = Arc::new(MemDriver::default());
        let bridges = Arc::new(MemBridges::default());
        let agent = agent::start(config.clone(), driver.clone(), bridges.clone())
            .await
            .expect("agent starts");
        TestAgent {
            agent: Some(agent),
            driver,
            bridges,
            vpnd,
            name: name.to_string(),
            config,
            _state: state,
        }
    }

    /// The agent's certificate fingerprint, as the controller pins it.
    pub fn fingerprint(&self) -> Fingerprint {
        let certs = vcluster::tls::read_certs(&self.config.state_dir.join("agent.pem"))
            .expect("the agent's certificate");
        Fingerprint::of(&certs[0])
    }

    /// The agent's API base URL.
    pub fn url(&self) -> String {
        format!("https://{}", self.agent.as_ref().expect("running").addr)
    }

    /// A reqwest client that trusts this agent the way the controller does.
    pub fn http(&self) -> reqwest::Client {
        ServerTrust::Certificate(self.fingerprint())
            .reqwest_builder()
            .expect("TLS client config")
            .build()
            .expect("reqwest client")
    }

    pub async fn stop(&mut self) {
        if let Some(a) = self.agent.take() {
            a.shutdown().await;
        }
    }

    /// Starts the agent again with the same state dir, driver, bridges and vpnd.
    pub async fn restart(&mut self) {
        self.stop().await;
        let agent = agent::start(
            self.config.clone(),
            self.driver.clone(),
            self.bridges.clone(),
        )
        .await
        .expect("agent restarts");
        self.agent = Some(agent);
    }
}

pub async fn wait_task(client: &ApiClient, id: i64) -> Task {
    client
        .wait_task(id, Duration::from_secs(60))
        .await
        .expect("task readable")
}

/// Waits for the task and asserts it succeeded.
pub async fn expect_success(client: &ApiClient, accepted: &Accepted) -> Task {
    let task = wait_task(client, accepted.task.id).await;
    assert_eq!(
        task.state,
        TaskState::Succeeded,
        "task {} {} failed: {}",
        task.id,
        task.kind,
        task.message
    );
    task
}

pub async fn get_cluster(client: &ApiClient, name: &str) -> Cluster {
    client
        .get(&format!("/v1/clusters/{name}"))
        .await
        .expect("cluster")
}

/// Polls `check` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return;
        }
        if start.elapsed() > timeout {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
