//! The server side of the control API: its routes, the parsing of request bodies and
//! path parameters, and the mapping of every failure to a status code and
//! `{"error": ...}`, all in one [`router`] over any implementation of [`Control`].
//!
//! `vpnd` mounts it over its networks; tests mount it over an in-memory daemon, so a
//! stand-in answers exactly what the daemon would for the same request. Handlers only
//! extract and validate; the [`Control`] does the work.

use std::future::Future;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use vpn_core::{NetworkId, PublicKey};

use crate::spec::{NetworkSpec, PeerSpec};
use crate::status::{DaemonStatus, MacEntry, NetworkStatus, PeerStatus};

/// The routes, as axum templates. The client builds the same paths in `client.rs`.
pub mod routes {
    pub const STATUS: &str = "/v1/status";
    pub const NETWORKS: &str = "/v1/networks";
    pub const NETWORK: &str = "/v1/networks/{id}";
    pub const START: &str = "/v1/networks/{id}/start";
    pub const STOP: &str = "/v1/networks/{id}/stop";
    pub const PEERS: &str = "/v1/networks/{id}/peers";
    pub const PEER: &str = "/v1/networks/{id}/peers/{key}";
    pub const MACS: &str = "/v1/networks/{id}/macs";
}

/// Why a control request failed; each kind is one status code.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// 400: a value the daemon cannot take (the message names the field).
    #[error("{0}")]
    Invalid(String),
    /// 404: no such network or peer.
    #[error("{0}")]
    NotFound(String),
    /// 409: the network id, TAP or peer key is already there.
    #[error("{0}")]
    Conflict(String),
    /// 500: the host refused (a TAP or bridge that cannot be made, ...).
    #[error("{0}")]
    System(String),
}

impl ControlError {
    pub fn status(&self) -> StatusCode {
        match self {
            ControlError::Invalid(_) => StatusCode::BAD_REQUEST,
            ControlError::NotFound(_) => StatusCode::NOT_FOUND,
            ControlError::Conflict(_) => StatusCode::CONFLICT,
            ControlError::System(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The usual 404 of an id no network has.
    pub fn no_network(id: NetworkId) -> ControlError {
        ControlError::NotFound(format!("no network with id {id}"))
    }
}

/// What a control-API server does. Every change is applied whole or not at all.
pub trait Control: Send + Sync + 'static {
    fn status(self: &Arc<Self>) -> impl Future<Output = DaemonStatus> + Send;

    fn network(
        self: &Arc<Self>,
        id: NetworkId,
    ) -> impl Future<Output = Result<NetworkStatus, ControlError>> + Send;

    /// Adds the network, and starts it if `spec.running`.
    fn add_network(
        self: &Arc<Self>,
        spec: NetworkSpec,
    ) -> impl Future<Output = Result<NetworkStatus, ControlError>> + Send;

    fn remove_network(
        self: &Arc<Self>,
        id: NetworkId,
    ) -> impl Future<Output = Result<(), ControlError>> + Send;

    /// Idempotent.
    fn start_network(
        self: &Arc<Self>,
        id: NetworkId,
    ) -> impl Future<Output = Result<NetworkStatus, ControlError>> + Send;

    /// Idempotent.
    fn stop_network(
        self: &Arc<Self>,
        id: NetworkId,
    ) -> impl Future<Output = Result<NetworkStatus, ControlError>> + Send;

    fn add_peer(
        self: &Arc<Self>,
        id: NetworkId,
        peer: PeerSpec,
    ) -> impl Future<Output = Result<PeerStatus, ControlError>> + Send;

    fn remove_peer(
        self: &Arc<Self>,
        id: NetworkId,
        key: PublicKey,
    ) -> impl Future<Output = Result<(), ControlError>> + Send;

    fn mac_table(
        self: &Arc<Self>,
        id: NetworkId,
    ) -> impl Future<Output = Result<Vec<MacEntry>, ControlError>> + Send;
}

/// The body of every 4xx/5xx answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// An answer that is not 2xx.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        ApiError(e.status(), e.to_string())
    }
}

impl From<BodyError> for ApiError {
    fn from(e: BodyError) -> Self {
        ApiError(StatusCode::BAD_REQUEST, e.to_string())
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// A request body that is not what its route takes.
#[derive(Debug, thiserror::Error)]
#[error("invalid JSON body: {}{message}", field.as_deref().map(|f| format!("field `{f}`: ")).unwrap_or_default())]
pub struct BodyError {
    /// Where in the body, e.g. `peers[0].public_key`; `None` for the body as a whole
    /// (which includes an unknown field: the message names it).
    pub field: Option<String>,
    pub message: String,
}

/// Parses a JSON request body, naming the field at fault.
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, BodyError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        BodyError {
            field: (path != ".").then_some(path),
            message: e.into_inner().to_string(),
        }
    })
}

fn network_id(raw: &str) -> ApiResult<NetworkId> {
    raw.parse().map(NetworkId).map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("network id {raw:?} is not a number"),
        )
    })
}

/// The control API over `control`.
pub fn router<C: Control>(control: Arc<C>) -> Router {
    Router::new()
        .route(routes::STATUS, get(status::<C>))
        .route(routes::NETWORKS, post(add_network::<C>))
        .route(
            routes::NETWORK,
            get(show_network::<C>).delete(remove_network::<C>),
        )
        .route(routes::START, post(start_network::<C>))
        .route(routes::STOP, post(stop_network::<C>))
        .route(routes::PEERS, post(add_peer::<C>))
        .route(routes::PEER, delete(remove_peer::<C>))
        .route(routes::MACS, get(macs::<C>))
        .fallback(|| async {
            ApiError(
                StatusCode::NOT_FOUND,
                "no such resource; see docs/control-api.md".into(),
            )
        })
        .with_state(control)
}

async fn status<C: Control>(State(c): State<Arc<C>>) -> Json<DaemonStatus> {
    Json(c.status().await)
}

async fn show_network<C: Control>(
    State(c): State<Arc<C>>,
    Path(id): Path<String>,
) -> ApiResult<Json<NetworkStatus>> {
    Ok(Json(c.network(network_id(&id)?).await?))
}

async fn add_network<C: Control>(
    State(c): State<Arc<C>>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<NetworkStatus>)> {
    let spec: NetworkSpec = parse_body(&body)?;
    Ok((StatusCode::CREATED, Json(c.add_network(spec).await?)))
}

async fn remove_network<C: Control>(
    State(c): State<Arc<C>>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    c.remove_network(network_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn start_network<C: Control>(
    State(c): State<Arc<C>>,
    Path(id): Path<String>,
) -> ApiResult<Json<NetworkStatus>> {
    Ok(Json(c.start_network(network_id(&id)?).await?))
}

async fn stop_network<C: Control>(
    State(c): State<Arc<C>>,
    Path(id): Path<String>,
) -> ApiResult<Json<NetworkStatus>> {
    Ok(Json(c.stop_network(network_id(&id)?).await?))
}

async fn add_peer<C: Control>(
    State(c): State<Arc<C>>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<PeerStatus>)> {
    let id = network_id(&id)?;
    let peer: PeerSpec = parse_body(&body)?;
    Ok((StatusCode::CREATED, Json(c.add_peer(id, peer).await?)))
}

async fn remove_peer<C: Control>(
    State(c): State<Arc<C>>,
    Path((id, key)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let id = network_id(&id)?;
    // URL-safe base64, or standard base64 that axum has already percent-decoded.
    let key = key
        .parse()
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("public key {key:?}: {e}")))?;
    c.remove_peer(id, key).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn macs<C: Control>(
    State(c): State<Arc<C>>,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<MacEntry>>> {
    Ok(Json(c.mac_table(network_id(&id)?).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_error_names_the_field_or_the_unknown_key() {
        let e = parse_body::<NetworkSpec>(br#"{"id": 8, "tap": "vc8", "mtu": "big"}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("mtu"));
        assert!(
            e.to_string()
                .starts_with("invalid JSON body: field `mtu`: "),
            "{e}"
        );
        let e = parse_body::<NetworkSpec>(
            br#"{"id": 8, "tap": "vc8", "peers": [{"public_key": "not-a-key"}]}"#,
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("peers[0].public_key"), "{e}");
        assert!(e.message.contains("not-a-key"), "{e}");
        let e =
            parse_body::<NetworkSpec>(br#"{"id": 8, "tap": "vc8", "brige": "br0"}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `brige`"), "{e}");
    }
}
