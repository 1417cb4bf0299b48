//! A stand-in for `vpnd`'s control API (`docs/control-api.md`), served over a Unix socket
//! like the real one: networks and peers kept in memory, the documented statuses (201,
//! 204, 400 naming the field, 404, 409) and JSON error bodies. It tests the host agent's
//! vpnd client and lets controller tests run without the daemon; it moves no packets.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::Deserialize;
use serde_json::{Value, json};

static PORTS: AtomicU16 = AtomicU16::new(0);

#[derive(Debug, Clone, Deserialize)]
pub struct PeerIn {
    pub public_key: String,
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct NetworkIn {
    pub id: u32,
    #[serde(default)]
    pub name: Option<String>,
    pub tap: String,
    #[serde(default)]
    pub bridge: Option<String>,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub path_mtu: Option<u32>,
    #[serde(default)]
    pub cipher: Option<String>,
    #[serde(default)]
    pub psk: Option<String>,
    #[serde(default)]
    pub arp_suppression: Option<bool>,
    #[serde(default)]
    pub site_local: Vec<Value>,
    #[serde(default)]
    pub peers: Vec<PeerIn>,
    #[serde(default)]
    pub running: Option<bool>,
}

#[derive(Debug, Clone)]
pub struct FakeNetwork {
    pub config: NetworkIn,
    pub running: bool,
    pub peers: Vec<PeerIn>,
}

#[derive(Default)]
pub struct FakeState {
    pub networks: BTreeMap<u32, FakeNetwork>,
    /// Every request, as "METHOD /path".
    pub log: Vec<String>,
}

pub struct FakeVpnd {
    pub socket: PathBuf,
    pub public_key: String,
    pub endpoint: String,
    pub state: Arc<Mutex<FakeState>>,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeVpnd {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct Shared {
    public_key: String,
    state: Arc<Mutex<FakeState>>,
}

fn err(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({"error": msg.into()}))).into_response()
}

fn key_ok(key: &str) -> bool {
    matches!(STANDARD.decode(key), Ok(k) if k.len() == 32)
}

fn network_json(n: &FakeNetwork) -> Value {
    json!({
        "id": n.config.id,
        "name": n.config.name,
        "tap": n.config.tap,
        "bridge": n.config.bridge,
        "running": n.running,
        "mtu": n.config.mtu.unwrap_or(1500),
        "path_mtu": n.config.path_mtu.unwrap_or(1500),
        "cipher": n.config.cipher.clone().unwrap_or_else(|| "aes-256-gcm".into()),
        "mac_table_size": 0,
        "counters": {"rx_bytes": 0, "tx_bytes": 0, "drops": {"replay": 0, "auth": 0}},
        "peers": n.peers.iter().map(peer_json).collect::<Vec<_>>(),
    })
}

fn peer_json(p: &PeerIn) -> Value {
    json!({
        "public_key": p.public_key, "name": p.name, "endpoint": p.endpoint,
        "last_handshake_secs_ago": null, "session": false,
        "rx_bytes": 0, "tx_bytes": 0, "rx_packets": 0, "tx_packets": 0, "handshakes": 0
    })
}

impl FakeVpnd {
    pub async fn start() -> FakeVpnd {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("control.sock");
        let mut raw = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut raw);
        let public_key = STANDARD.encode(raw);
        let port =
            20000 + (std::process::id() % 20000) as u16 + PORTS.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(Mutex::new(FakeState::default()));
        let shared = Shared {
            public_key: public_key.clone(),
            state: state.clone(),
        };
        let router = Router::new()
            .route("/v1/status", get(status))
            .route("/v1/networks", post(add_network))
            .route("/v1/networks/{id}", get(get_network).delete(delete_network))
            .route("/v1/networks/{id}/start", post(start))
            .route("/v1/networks/{id}/stop", post(stop))
            .route("/v1/networks/{id}/peers", post(add_peer))
            .route("/v1/networks/{id}/peers/{key}", delete(delete_peer))
            .route("/v1/networks/{id}/macs", get(macs))
            .layer(axum::middleware::from_fn_with_state(shared.clone(), log))
            .with_state(shared);
        let listener = tokio::net::UnixListener::bind(&socket).expect("bind unix socket");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        FakeVpnd {
            socket,
            public_key,
            endpoint: format!("127.0.0.1:{port}"),
            state,
            _dir: dir,
            task,
        }
    }

    pub fn networks(&self) -> BTreeMap<u32, FakeNetwork> {
        self.state.lock().unwrap().networks.clone()
    }

    pub fn log(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }
}

async fn log(
    State(s): State<Shared>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let line = format!("{} {}", req.method(), req.uri().path());
    s.state.lock().unwrap().log.push(line);
    next.run(req).await
}

async fn status(State(s): State<Shared>) -> Response {
    let st = s.state.lock().unwrap();
    Json(json!({
        "public_key": s.public_key,
        "listen": ["0.0.0.0:51820"],
        "networks": st.networks.values().map(network_json).collect::<Vec<_>>(),
    }))
    .into_response()
}

async fn get_network(State(s): State<Shared>, Path(id): Path<u32>) -> Response {
    let st = s.state.lock().unwrap();
    match st.networks.get(&id) {
        Some(n) => Json(network_json(n)).into_response(),
        None => err(StatusCode::NOT_FOUND, format!("no network {id}")),
    }
}

async fn add_network(State(s): State<Shared>, body: axum::body::Bytes) -> Response {
    let n: NetworkIn = match serde_json::from_slice(&body) {
        Ok(n) => n,
        Err(e) => return err(StatusCode::BAD_REQUEST, format!("malformed network: {e}")),
    };
    if let Some(psk) = &n.psk
        && !key_ok(psk)
    {
        return err(StatusCode::BAD_REQUEST, "psk: not a 32-byte base64 key");
    }
    for (i, p) in n.peers.iter().enumerate() {
        if !key_ok(&p.public_key) {
            return err(
                StatusCode::BAD_REQUEST,
                format!("peers[{i}].public_key: not a 32-byte base64 key"),
            );
        }
    }
    let mut st = s.state.lock().unwrap();
    if st.networks.contains_key(&n.id) {
        return err(
            StatusCode::CONFLICT,
            format!("network {} already exists", n.id),
        );
    }
    if st.networks.values().any(|o| o.config.tap == n.tap) {
        return err(
            StatusCode::CONFLICT,
            format!("TAP {} already exists", n.tap),
        );
    }
    let net = FakeNetwork {
        running: n.running.unwrap_or(true),
        peers: n.peers.clone(),
        config: n,
    };
    let out = network_json(&net);
    st.networks.insert(net.config.id, net);
    (StatusCode::CREATED, Json(out)).into_response()
}

async fn delete_network(State(s): State<Shared>, Path(id): Path<u32>) -> Response {
    let mut st = s.state.lock().unwrap();
    match st.networks.remove(&id) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => err(StatusCode::NOT_FOUND, format!("no network {id}")),
    }
}

fn set_running(s: &Shared, id: u32, running: bool) -> Response {
    let mut st = s.state.lock().unwrap();
    match st.networks.get_mut(&id) {
        Some(n) => {
            n.running = running;
            Json(network_json(n)).into_response()
        }
        None => err(StatusCode::NOT_FOUND, format!("no network {id}")),
    }
}

async fn start(State(s): State<Shared>, Path(id): Path<u32>) -> Response {
    set_running(&s, id, true)
}

async fn stop(State(s): State<Shared>, Path(id): Path<u32>) -> Response {
    set_running(&s, id, false)
}

async fn add_peer(
    State(s): State<Shared>,
    Path(id): Path<u32>,
    body: axum::body::Bytes,
) -> Response {
    let p: PeerIn = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => return err(StatusCode::BAD_REQUEST, format!("malformed peer: {e}")),
    };
    if !key_ok(&p.public_key) {
        return err(
            StatusCode::BAD_REQUEST,
            "public_key: not a 32-byte base64 key",
        );
    }
    let mut st = s.state.lock().unwrap();
    let Some(n) = st.networks.get_mut(&id) else {
        return err(StatusCode::NOT_FOUND, format!("no network {id}"));
    };
    if n.peers.iter().any(|o| o.public_key == p.public_key) {
        return err(
            StatusCode::CONFLICT,
            format!("network {id} already has peer {}", p.public_key),
        );
    }
    n.peers.push(p.clone());
    (StatusCode::CREATED, Json(peer_json(&p))).into_response()
}

async fn delete_peer(State(s): State<Shared>, Path((id, key)): Path<(u32, String)>) -> Response {
    // URL-safe base64 with optional padding, or (already percent-decoded) standard base64.
    let raw = URL_SAFE_NO_PAD
        .decode(key.trim_end_matches('='))
        .or_else(|_| STANDARD.decode(&key));
    let Ok(raw) = raw else {
        return err(StatusCode::BAD_REQUEST, "public_key: not base64");
    };
    let key = STANDARD.encode(raw);
    let mut st = s.state.lock().unwrap();
    let Some(n) = st.networks.get_mut(&id) else {
        return err(StatusCode::NOT_FOUND, format!("no network {id}"));
    };
    let before = n.peers.len();
    n.peers.retain(|p| p.public_key != key);
    if n.peers.len() == before {
        return err(
            StatusCode::NOT_FOUND,
            format!("network {id} has no peer with public key {key}"),
        );
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn macs(State(s): State<Shared>, Path(id): Path<u32>) -> Response {
    let st = s.state.lock().unwrap();
    match st.networks.get(&id) {
        Some(_) => Json(json!([{"mac": "52:54:00:12:34:56", "port": "local", "age_secs": 3.2}]))
            .into_response(),
        None => err(StatusCode::NOT_FOUND, format!("no network {id}")),
    }
}
