//! The node agent (`vcluster node-agent`): one inside every node. It serves a small API
//! on the node's own channel to its host, never on the node's network: a Unix socket
//! for a lightweight node (the socket file sits in the host agent's state directory,
//! mode 0600, so only the host's root reaches it), a virtio-vsock port for a VM. Whoever
//! can open that channel is the node's host agent; nothing on the cluster network, and
//! no other node, can reach the endpoint. The host agent relays the controller's
//! requests (exec) and reads the node's status for its heartbeat.
//!
//! - `GET /node/v1/status`: name, uptime, load, memory, CPU, network and filesystem
//!   counters (node_exporter's core set), read from `/proc` inside the node.
//! - `POST /node/v1/exec`: a [`NodeExec`]; the answer streams [`ExecEvent`]s, one JSON
//!   object per line (see [`crate::exec`]).

pub mod client;
pub mod firstboot;
pub mod metrics;

use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use tokio::net::UnixListener;
use tokio::sync::{Semaphore, mpsc};

use crate::api_error::{ApiError, ApiJson};
use crate::exec::{self, ExecEvent, NodeExec};

/// Commands one node runs at once; more are answered 503 (the host agent's fan-out
/// never needs more than one per command).
pub const MAX_CONCURRENT_EXECS: usize = 64;

#[derive(Debug, Clone)]
pub struct NodeAgentConfig {
    /// The node's name, as the controller knows it.
    pub name: String,
    /// The Unix socket to serve on.
    pub socket: PathBuf,
    /// The installed root of a lightweight node, whose first boot this agent reports
    /// (see [`firstboot`]).
    pub root: Option<PathBuf>,
}

struct Shared {
    name: String,
    execs: Arc<Semaphore>,
    started: std::time::Instant,
}

/// Binds the socket (owner-only) and serves until `stop` resolves.
pub async fn serve(
    config: NodeAgentConfig,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = bind_private(&config.socket)?;
    let shared = Arc::new(Shared {
        name: config.name.clone(),
        execs: Arc::new(Semaphore::new(MAX_CONCURRENT_EXECS)),
        started: std::time::Instant::now(),
    });
    tracing::info!(node = %config.name, socket = %config.socket.display(), "node agent serving");
    if let Some(root) = config.root.clone() {
        tokio::spawn(firstboot::report(root));
    }
    axum::serve(listener, router(shared))
        .with_graceful_shutdown(stop)
        .await?;
    let _ = std::fs::remove_file(&config.socket);
    Ok(())
}

/// `vcluster node-agent`: runs until SIGTERM or Ctrl-C.
pub async fn run(config: NodeAgentConfig) -> anyhow::Result<()> {
    serve(config, crate::controller::shutdown_signal()).await
}

/// A Unix socket only its owner may open: made under a umask of 077 (so it is never
/// reachable by others, not even for a moment), a stale one replaced.
fn bind_private(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => anyhow::bail!("removing the stale socket {}: {e}", path.display()),
    }
    // SAFETY: umask(2) only changes this process's file-creation mask.
    let old = unsafe { libc::umask(0o077) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    let listener = bound.map_err(|e| anyhow::anyhow!("binding {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| anyhow::anyhow!("chmod 600 {}: {e}", path.display()))?;
    Ok(listener)
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/node/v1/status", get(status))
        .route("/node/v1/exec", post(exec_command))
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(axum::extract::DefaultBodyLimit::max(
            exec::MAX_EXEC_BODY_BYTES,
        ))
        .with_state(shared)
}

async fn status(State(shared): State<Arc<Shared>>) -> ApiJson<metrics::NodeStatus> {
    let mut s = metrics::NodeStatus::read(&shared.name);
    s.agent_uptime_secs = shared.started.elapsed().as_secs();
    ApiJson(s)
}

async fn exec_command(
    State(shared): State<Arc<Shared>>,
    ApiJson(req): ApiJson<NodeExec>,
) -> Result<Response, ApiError> {
    exec::check_command(&req.command).map_err(|(f, m)| ApiError::invalid(f, m))?;
    exec::check_bound("timeout_ms", req.timeout_ms, exec::MAX_COMMAND_TIMEOUT_MS)
        .map_err(|(f, m)| ApiError::invalid(f, m))?;
    let input =
        exec::decode_stdin(req.stdin.as_deref()).map_err(|(f, m)| ApiError::invalid(f, m))?;
    let permit = shared.execs.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("this node already runs {MAX_CONCURRENT_EXECS} commands"),
        )
    })?;
    let (tx, rx) = mpsc::channel::<ExecEvent>(256);
    let node = shared.name.clone();
    tokio::spawn(async move {
        let _permit = permit;
        exec::run::run_with_input(&node, &req, input, tx).await;
    });
    Ok(ndjson_response(rx))
}

/// A quiet stream writes an empty line this often: a peer that went away is noticed at the
/// next write (and the command stopped), and no middlebox times the connection out.
pub const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(1);

/// A streaming answer of one JSON event per line, sent as each arrives, with an empty
/// line after each [`KEEPALIVE`] of silence (readers skip empty lines).
pub fn ndjson_response(rx: mpsc::Receiver<ExecEvent>) -> Response {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        tokio::select! {
            e = rx.recv() => e.map(|e| (Ok::<_, Infallible>(Bytes::from(e.to_line())), rx)),
            _ = tokio::time::sleep(KEEPALIVE) => Some((Ok(Bytes::from_static(b"\n")), rx)),
        }
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response()
}
