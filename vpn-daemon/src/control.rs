//! The control API (`docs/control-api.md`): HTTP/1.1 with JSON bodies on a Unix socket
//! that only root may open, served by axum; and the small client `vpnd status` (and any
//! Rust caller) uses. Handlers only extract and validate; the daemon does the work; errors
//! become a status code and `{"error": ...}` in one place.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::{UnixListener, UnixStream};

use crate::config::{NetworkSpec, PeerSpec};
use crate::daemon::{ControlError, Daemon};

/// An API error: the status and the message of the JSON body.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        let status = match e {
            ControlError::Invalid(_) => StatusCode::BAD_REQUEST,
            ControlError::NotFound(_) => StatusCode::NOT_FOUND,
            ControlError::Conflict(_) => StatusCode::CONFLICT,
            ControlError::System(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Parses a JSON body, naming the field, line and column of what is wrong.
fn json_body<T: DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = if path == "." {
            format!("invalid JSON body: {inner}")
        } else {
            format!("invalid JSON body: field `{path}`: {inner}")
        };
        ApiError(StatusCode::BAD_REQUEST, message)
    })
}

fn network_id(raw: &str) -> ApiResult<u32> {
    raw.parse().map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("network id {raw:?} is not a number"),
        )
    })
}

pub fn router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/networks", post(add_network))
        .route(
            "/v1/networks/{id}",
            get(show_network).delete(remove_network),
        )
        .route("/v1/networks/{id}/start", post(start_network))
        .route("/v1/networks/{id}/stop", post(stop_network))
        .route("/v1/networks/{id}/peers", post(add_peer))
        .route("/v1/networks/{id}/peers/{key}", delete(remove_peer))
        .route("/v1/networks/{id}/macs", get(macs))
        .fallback(|| async {
            ApiError(
                StatusCode::NOT_FOUND,
                "no such resource; see docs/control-api.md".into(),
            )
        })
        .with_state(daemon)
}

async fn status(State(d): State<Arc<Daemon>>) -> impl IntoResponse {
    Json(d.status().await)
}

async fn show_network(
    State(d): State<Arc<Daemon>>,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(d.network(network_id(&id)?).await?))
}

async fn add_network(State(d): State<Arc<Daemon>>, body: Bytes) -> ApiResult<impl IntoResponse> {
    let spec: NetworkSpec = json_body(&body)?;
    Ok((StatusCode::CREATED, Json(d.add_network(spec).await?)))
}

async fn remove_network(
    State(d): State<Arc<Daemon>>,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<StatusCode> {
    d.remove_network(network_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn start_network(
    State(d): State<Arc<Daemon>>,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(d.start_network(network_id(&id)?).await?))
}

async fn stop_network(
    State(d): State<Arc<Daemon>>,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(d.stop_network(network_id(&id)?).await?))
}

async fn add_peer(
    State(d): State<Arc<Daemon>>,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let peer: PeerSpec = json_body(&body)?;
    Ok((
        StatusCode::CREATED,
        Json(d.add_peer(network_id(&id)?, peer).await?),
    ))
}

async fn remove_peer(
    State(d): State<Arc<Daemon>>,
    UrlPath((id, key)): UrlPath<(String, String)>,
) -> ApiResult<StatusCode> {
    let key = key
        .parse()
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("public key {key:?}: {e}")))?;
    d.remove_peer(network_id(&id)?, &key).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn macs(
    State(d): State<Arc<Daemon>>,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(d.mac_table(network_id(&id)?).await?))
}

/// Binds the control socket: its directory is created if missing, a stale socket from a
/// dead daemon is replaced, a live one is an error, and the socket is made root-only.
pub async fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    use anyhow::Context;
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            anyhow::bail!(
                "control socket {} is in use: is another vpnd running?",
                path.display()
            );
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// A client of the control API.
pub struct Client {
    socket: PathBuf,
}

/// A non-2xx answer, with the server's message.
#[derive(Debug, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ClientError {
    pub status: u16,
    pub message: String,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Client {
        Client {
            socket: socket.into(),
        }
    }

    /// Sends one request; returns the body of a 2xx answer, or the server's error.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> anyhow::Result<Bytes> {
        use anyhow::Context;
        let stream = UnixStream::connect(&self.socket).await.with_context(|| {
            format!(
                "connecting to {} (is vpnd running, and are you root?)",
                self.socket.display()
            )
        })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "vpnd")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            return Err(ClientError {
                status: status.as_u16(),
                message,
            }
            .into());
        }
        Ok(bytes)
    }

    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let body = self.request("GET", path, None).await?;
        Ok(serde_json::from_slice(&body)?)
    }
}
