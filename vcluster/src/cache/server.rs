//! The listening side: accepts TCP connections, serves HTTP/1.1 on each (keep-alive,
//! upgrades for CONNECT, a header size limit and a header read timeout), writes one
//! access-log line per request, and shuts down cleanly: on the shutdown signal it stops
//! accepting, lets requests in progress finish for a grace period, then closes the rest.
//!
//! A connection starts on the sendfile path (`sendfile.rs`), which answers hits of stored
//! objects itself; the first request it does not answer hands the connection, with the
//! bytes already read, to hyper, where each request goes to `proxy::handle`. This module
//! knows nothing of caching.

use std::convert::Infallible;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use http::header;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::config::CacheConfig;
use super::store::StoreError;
use super::{Cache, proxy, sendfile};

/// How long requests in progress may run on after shutdown is asked for.
const GRACE: Duration = Duration::from_secs(5);
/// How long a client may take to send a whole request head (idle keep-alive included).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot open access log {path}: {source}")]
    AccessLog {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where access lines go.
enum AccessLog {
    Tracing,
    File(Mutex<File>),
}

impl AccessLog {
    fn write(&self, line: &str) {
        match self {
            AccessLog::Tracing => tracing::info!(target: "vcluster::cache::access", "{line}"),
            AccessLog::File(f) => {
                let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
                let _ = writeln!(f, "{line}");
            }
        }
    }
}

/// A bound, ready cache server.
pub struct CacheServer {
    listener: TcpListener,
    cache: Arc<Cache>,
    access: Arc<AccessLog>,
}

impl CacheServer {
    /// Opens the store and binds the listen address.
    pub async fn bind(config: CacheConfig) -> Result<CacheServer, ServeError> {
        let access = match &config.access_log {
            None => AccessLog::Tracing,
            Some(path) => AccessLog::File(Mutex::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| ServeError::AccessLog {
                        path: path.clone(),
                        source,
                    })?,
            )),
        };
        let addr = config.listen;
        let cache = tokio::task::spawn_blocking(move || Cache::open(config))
            .await
            .expect("store open task")?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        Ok(CacheServer {
            listener,
            cache: Arc::new(cache),
            access: Arc::new(access),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound socket")
    }

    pub fn cache(&self) -> Arc<Cache> {
        self.cache.clone()
    }

    /// Serves until `shutdown` completes, then shuts down cleanly.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut conns = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Out of descriptors and the like: back off instead of spinning.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    conns.spawn(serve_conn(
                        stream,
                        peer,
                        self.cache.clone(),
                        self.access.clone(),
                        stop_rx.clone(),
                    ));
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        tracing::info!(connections = conns.len(), "shutting down");
        drop(self.listener);
        let _ = stop_tx.send(true);
        let drained =
            tokio::time::timeout(GRACE, async { while conns.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            conns.shutdown().await;
        }
        tracing::info!("stopped");
    }
}

async fn serve_conn(
    mut stream: tokio::net::TcpStream,
    peer: SocketAddr,
    cache: Arc<Cache>,
    access: Arc<AccessLog>,
    mut stop: watch::Receiver<bool>,
) {
    let log = |line: &str| access.write(line);
    let read = if cache.config.sendfile {
        match sendfile::serve_hits(&mut stream, peer, &cache, &log, &mut stop, HEADER_TIMEOUT).await
        {
            sendfile::Outcome::Closed => return,
            sendfile::Outcome::Hyper(read) => read,
        }
    } else {
        bytes::Bytes::new()
    };
    let max_buf = cache.config.max_header_bytes;
    let service = service_fn(move |req| {
        let cache = cache.clone();
        let access = access.clone();
        async move {
            let started = Instant::now();
            let line_head = format!("{peer} {} {}", req.method(), req.uri());
            let (resp, label) = proxy::handle(&cache, req).await;
            let bytes = resp
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned();
            access.write(&format!(
                "{} {line_head} {} {bytes} {label} {}ms",
                httpdate::fmt_http_date(SystemTime::now()),
                resp.status().as_u16(),
                started.elapsed().as_millis()
            ));
            Ok::<_, Infallible>(resp)
        }
    });
    let conn = http1::Builder::new()
        .keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(max_buf)
        .serve_connection(TokioIo::new(sendfile::Rewind::new(read, stream)), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
        _ = async { let _ = stop.wait_for(|s| *s).await; } => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
