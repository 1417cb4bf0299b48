//! A client for `vpnd`'s control API (`docs/control-api.md`): HTTP/1.1 with JSON bodies
//! over the daemon's Unix socket, one connection per request. The host agent uses it to
//! read the host's overlay public key, and to add, start, stop and remove each cluster's
//! overlay network and its peers.
//!
//! It speaks the documented contract and nothing more: it keeps no state and makes no
//! decisions; `reconcile` decides what to ask for.

use std::path::{Path, PathBuf};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::net::UnixStream;

#[derive(Debug, Error)]
pub enum VpndError {
    #[error("vpnd control socket {path}: {source}")]
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
}

impl VpndError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, VpndError::Api { status, .. } if *status == StatusCode::NOT_FOUND)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub public_key: String,
    #[serde(default)]
    pub listen: Vec<String>,
    #[serde(default)]
    pub networks: Vec<NetworkStatus>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct NetworkStatus {
    pub id: u32,
    #[serde(default)]
    pub name: Option<String>,
    pub tap: String,
    #[serde(default)]
    pub bridge: Option<String>,
    pub running: bool,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub path_mtu: Option<u32>,
    #[serde(default)]
    pub cipher: Option<String>,
    #[serde(default)]
    pub mac_table_size: Option<u64>,
    #[serde(default)]
    pub counters: serde_json::Value,
    #[serde(default)]
    pub peers: Vec<PeerStatus>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PeerStatus {
    pub public_key: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub last_handshake_secs_ago: Option<f64>,
    #[serde(default)]
    pub session: bool,
    #[serde(default)]
    pub rx_bytes: u64,
    #[serde(default)]
    pub tx_bytes: u64,
}

/// A network as `POST /v1/networks` takes it (the config file's `[[network]]` in JSON).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct NetworkConfig {
    pub id: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub tap: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub psk: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arp_suppression: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub site_local: Vec<SiteLocal>,
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    /// Started at once unless `false`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub running: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SiteLocal {
    pub ip: String,
    pub mac: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerConfig {
    pub public_key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MacEntry {
    pub mac: String,
    pub port: String,
    #[serde(default)]
    pub age_secs: f64,
}

/// One control request may take this long.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
}

/// The client. Cheap to clone.
#[derive(Debug, Clone)]
pub struct VpndClient {
    socket: PathBuf,
}

impl VpndClient {
    pub fn new(socket: impl Into<PathBuf>) -> VpndClient {
        VpndClient {
            socket: socket.into(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub async fn status(&self) -> Result<Status, VpndError> {
        self.call(Method::GET, "/v1/status", None).await
    }

    /// The network, or `None` when vpnd does not have it.
    pub async fn network(&self, id: u32) -> Result<Option<NetworkStatus>, VpndError> {
        match self
            .call(Method::GET, &format!("/v1/networks/{id}"), None)
            .await
        {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn add_network(&self, config: &NetworkConfig) -> Result<NetworkStatus, VpndError> {
        let body = serde_json::to_vec(config).expect("serialisable");
        self.call(Method::POST, "/v1/networks", Some(body)).await
    }

    /// Removes the network; `false` when vpnd did not have it.
    pub async fn delete_network(&self, id: u32) -> Result<bool, VpndError> {
        match self
            .call_empty(Method::DELETE, &format!("/v1/networks/{id}"))
            .await
        {
            Ok(()) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub async fn start(&self, id: u32) -> Result<NetworkStatus, VpndError> {
        self.call(Method::POST, &format!("/v1/networks/{id}/start"), None)
            .await
    }

    pub async fn stop(&self, id: u32) -> Result<NetworkStatus, VpndError> {
        self.call(Method::POST, &format!("/v1/networks/{id}/stop"), None)
            .await
    }

    pub async fn add_peer(&self, id: u32, peer: &PeerConfig) -> Result<PeerStatus, VpndError> {
        let body = serde_json::to_vec(peer).expect("serialisable");
        self.call(
            Method::POST,
            &format!("/v1/networks/{id}/peers"),
            Some(body),
        )
        .await
    }

    pub async fn remove_peer(&self, id: u32, public_key: &str) -> Result<(), VpndError> {
        // The path carries the key in URL-safe base64 (docs/control-api.md).
        let key = base64::engine::general_purpose::STANDARD
            .decode(public_key)
            .map(|raw| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw))
            .unwrap_or_else(|_| public_key.replace('+', "-").replace('/', "_"));
        self.call_empty(Method::DELETE, &format!("/v1/networks/{id}/peers/{key}"))
            .await
    }

    pub async fn macs(&self, id: u32) -> Result<Vec<MacEntry>, VpndError> {
        self.call(Method::GET, &format!("/v1/networks/{id}/macs"), None)
            .await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, VpndError> {
        let what = format!("{method} {path}");
        let bytes = self.send(method, path, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| VpndError::Decode {
            what,
            message: e.to_string(),
        })
    }

    async fn call_empty(&self, method: Method, path: &str) -> Result<(), VpndError> {
        self.send(method, path, None).await.map(|_| ())
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, VpndError> {
        let what = format!("{method} {path}");
        tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(method, path, body))
            .await
            .map_err(|_| VpndError::Timeout {
                what,
                secs: REQUEST_TIMEOUT.as_secs(),
            })?
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, VpndError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| VpndError::Connect {
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
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "vpnd");
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .expect("valid request");
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
            Err(VpndError::Api { status, message })
        }
    }
}
