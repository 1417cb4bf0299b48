//! The client of the control API: HTTP/1.1 with JSON bodies over the daemon's Unix socket,
//! one connection per request, each bounded by a timeout. `vpnd status` and the vcluster
//! host agent use it.
//!
//! It speaks the contract and nothing more: it keeps no state and makes no decisions.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;
use vpn_core::{NetworkId, PublicKey};

use crate::server::ErrorBody;
use crate::spec::{NetworkSpec, PeerSpec};
use crate::status::{DaemonStatus, MacEntry, NetworkStatus, PeerStatus};

/// One control request may take this long.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("vpnd control socket {}: {source} (is vpnd running, and may this user open it?)", path.display())]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("vpnd control API: {0}")]
    Http(#[from] hyper::Error),
    /// vpnd answered an error: its status and its message.
    #[error("vpnd: {message} ({status})")]
    Api { status: StatusCode, message: String },
    #[error("vpnd: unexpected answer to {what}: {message}")]
    Decode { what: String, message: String },
    #[error("vpnd: no answer to {what} in {secs}s")]
    Timeout { what: String, secs: u64 },
    /// The request itself cannot be sent (a path that is not a URI path).
    #[error("vpnd: cannot send {what}: {message}")]
    Request { what: String, message: String },
}

impl ClientError {
    /// The status of an error answer.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status() == Some(StatusCode::NOT_FOUND)
    }
}

/// The client. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Client {
        Client {
            socket: socket.into(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub async fn status(&self) -> Result<DaemonStatus, ClientError> {
        self.call(Method::GET, "/v1/status", None::<&()>).await
    }

    /// The network, or `None` when vpnd does not have it.
    pub async fn network(&self, id: NetworkId) -> Result<Option<NetworkStatus>, ClientError> {
        let path = format!("/v1/networks/{id}");
        match self.call(Method::GET, &path, None::<&()>).await {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn add_network(&self, spec: &NetworkSpec) -> Result<NetworkStatus, ClientError> {
        self.call(Method::POST, "/v1/networks", Some(spec)).await
    }

    /// Removes the network; `false` when vpnd did not have it.
    pub async fn remove_network(&self, id: NetworkId) -> Result<bool, ClientError> {
        match self
            .request(Method::DELETE, &format!("/v1/networks/{id}"), None)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub async fn start(&self, id: NetworkId) -> Result<NetworkStatus, ClientError> {
        let path = format!("/v1/networks/{id}/start");
        self.call(Method::POST, &path, None::<&()>).await
    }

    pub async fn stop(&self, id: NetworkId) -> Result<NetworkStatus, ClientError> {
        let path = format!("/v1/networks/{id}/stop");
        self.call(Method::POST, &path, None::<&()>).await
    }

    pub async fn add_peer(
        &self,
        id: NetworkId,
        peer: &PeerSpec,
    ) -> Result<PeerStatus, ClientError> {
        let path = format!("/v1/networks/{id}/peers");
        self.call(Method::POST, &path, Some(peer)).await
    }

    pub async fn remove_peer(&self, id: NetworkId, key: &PublicKey) -> Result<(), ClientError> {
        // The path carries the key in URL-safe base64 (docs/control-api.md).
        let path = format!("/v1/networks/{id}/peers/{}", key.to_url_safe());
        self.request(Method::DELETE, &path, None).await.map(|_| ())
    }

    pub async fn macs(&self, id: NetworkId) -> Result<Vec<MacEntry>, ClientError> {
        let path = format!("/v1/networks/{id}/macs");
        self.call(Method::GET, &path, None::<&()>).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let what = format!("{method} {path}");
        let body = body.map(|b| serde_json::to_vec(b).expect("the API's types serialise"));
        let bytes = self.request(method, path, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            what,
            message: e.to_string(),
        })
    }

    /// Sends one request as given and returns the body of a 2xx answer, or the daemon's
    /// error. For callers that print the JSON as it came (`vpnd status --json`) or test
    /// what the server does with a body the typed methods would never send.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, ClientError> {
        let what = format!("{method} {path}");
        tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(method, path, body))
            .await
            .map_err(|_| ClientError::Timeout {
                what,
                secs: REQUEST_TIMEOUT.as_secs(),
            })?
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, ClientError> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "vpnd");
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Request {
                what: path.to_string(),
                message: e.to_string(),
            })?;
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ClientError::Connect {
                    path: self.socket.clone(),
                    source,
                })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let driver = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "vpnd connection ended");
            }
        });
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        driver.abort();
        if status.is_success() {
            Ok(bytes)
        } else {
            let message = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|b| b.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).trim().to_string());
            Err(ClientError::Api { status, message })
        }
    }
}
