//! A stand-in for `vpnd` on a Unix socket: `vpnd-api`'s in-memory daemon behind the
//! control API's real routes, so the host agent meets the same bodies, status codes and
//! errors as with vpnd, plus a log of the requests it got. It lets agent and controller
//! tests run without the daemon; it moves no packets.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use vpnd_api::PublicKey;
use vpnd_api::testing::{MemNetwork, MemoryVpnd};

static PORTS: AtomicU16 = AtomicU16::new(0);

pub struct FakeVpnd {
    pub socket: PathBuf,
    pub public_key: PublicKey,
    /// The UDP endpoint the agent registers (nothing listens there).
    pub endpoint: String,
    pub daemon: Arc<MemoryVpnd>,
    /// Every request, as "METHOD /path".
    log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeVpnd {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeVpnd {
    pub async fn start() -> FakeVpnd {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("control.sock");
        let mut raw = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut raw);
        let public_key = PublicKey(raw);
        let port =
            20000 + (std::process::id() % 20000) as u16 + PORTS.fetch_add(1, Ordering::Relaxed);
        let endpoint = format!("127.0.0.1:{port}");
        let daemon = MemoryVpnd::new(public_key, "0.0.0.0:51820".parse().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let logged = log.clone();
        let router = vpnd_api::router(daemon.clone()).layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let line = format!("{} {}", req.method(), req.uri().path());
                logged.lock().unwrap().push(line);
                next.run(req)
            },
        ));
        let listener = tokio::net::UnixListener::bind(&socket).expect("bind unix socket");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        FakeVpnd {
            socket,
            public_key,
            endpoint,
            daemon,
            log,
            _dir: dir,
            task,
        }
    }

    /// The networks, by id.
    pub fn networks(&self) -> BTreeMap<u32, MemNetwork> {
        self.daemon
            .networks()
            .into_iter()
            .map(|(id, n)| (id.0, n))
            .collect()
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}
