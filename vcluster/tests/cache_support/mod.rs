//! Test support for the cache's integration tests (and the benchmark harness, which
//! includes this file too): an upstream HTTP server that counts what it is asked, can be
//! slow, delayed or rate-limited, can cut a body short (every time, or only its first
//! responses), can change an object after serving it, answers conditional requests and,
//! per object, `Range` with `If-Range`;
//! a cache running in-process; the real `vcluster` binary as a child process.
//!
//! Everything binds 127.0.0.1 port 0, so tests running in parallel never collide, and
//! everything stops when its handle is dropped.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{self, BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

/// Deterministic pseudo-random bytes: the same (seed, len) always gives the same body.
pub fn synth(seed: u64, len: usize) -> Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    Bytes::from(v)
}

pub fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    vcluster::cache::store::hex(&sha2::Sha256::digest(b))
}

/// One object the upstream serves.
#[derive(Clone)]
pub struct Obj {
    pub body: Bytes,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// Cut the connection when the body reaches this offset in the object (Content-Length
    /// still says all): after this many bytes of a whole body, `n - start` of a range.
    pub cut_after: Option<u64>,
    /// Cut only the first this-many body responses for the path (None: every one).
    pub cut_first: Option<u64>,
    /// Honour `Range: bytes=a-[b]` (with `If-Range` against the ETag or Last-Modified).
    pub ranges: bool,
    /// After one body response has been served, the path serves this object instead.
    pub then: Option<Box<Obj>>,
}

/// A request the upstream saw with a `Range` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeRequest {
    pub path: String,
    pub range: String,
    pub if_range: Option<String>,
}

impl Obj {
    pub fn new(body: impl Into<Bytes>) -> Obj {
        Obj {
            body: body.into(),
            etag: None,
            last_modified: None,
            cut_after: None,
            cut_first: None,
            ranges: false,
            then: None,
        }
    }

    pub fn etag(mut self, e: &str) -> Obj {
        self.etag = Some(format!("\"{e}\""));
        self
    }

    pub fn last_modified(mut self, lm: &str) -> Obj {
        self.last_modified = Some(lm.to_owned());
        self
    }

    pub fn cut_after(mut self, n: u64) -> Obj {
        self.cut_after = Some(n);
        self
    }

    /// With `cut_after`: cut only the first `k` body responses.
    pub fn cut_first(mut self, k: u64) -> Obj {
        self.cut_first = Some(k);
        self
    }

    pub fn ranges(mut self) -> Obj {
        self.ranges = true;
        self
    }

    /// Serve `next` for this path once one body response of `self` has gone out.
    pub fn then(mut self, next: Obj) -> Obj {
        self.then = Some(Box::new(next));
        self
    }
}

/// How the upstream paces itself.
#[derive(Clone, Copy, Debug, Default)]
pub struct Pacing {
    /// Body bytes per second for each response (None: as fast as possible).
    pub per_response_rate: Option<u64>,
    /// Body bytes per second shared by all responses together: a WAN link.
    pub link_rate: Option<u64>,
    /// Added before each response head (one round trip) and before each new connection
    /// is served (the TCP handshake's round trip).
    pub rtt: Duration,
}

#[derive(Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub conditional: AtomicU64,
    pub not_modified: AtomicU64,
    pub body_bytes: AtomicU64,
    /// Responses whose whole body has been sent.
    pub completed: AtomicU64,
    pub connections: AtomicU64,
}

struct Shared {
    objects: Mutex<HashMap<String, Obj>>,
    dir: Option<PathBuf>,
    per_path: Mutex<HashMap<String, u64>>,
    /// Body responses served per path (for `cut_first`).
    bodies: Mutex<HashMap<String, u64>>,
    ranges: Mutex<Vec<RangeRequest>>,
    counters: Counters,
    pacing: Pacing,
    link_next: Mutex<Instant>,
}

/// The upstream fixture. Paths are matched after percent-decoding.
pub struct Upstream {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    _stop: oneshot::Sender<()>,
}

impl Upstream {
    pub async fn start(pacing: Pacing) -> Upstream {
        Self::start_with(pacing, None).await
    }

    /// Serves files under `dir` too (objects set with `put` take precedence).
    pub async fn serve_dir(dir: &Path) -> Upstream {
        Self::start_with(Pacing::default(), Some(dir.to_owned())).await
    }

    /// Serves on `listener` (for a port chosen by the caller).
    pub async fn start_on(pacing: Pacing, listener: std::net::TcpListener) -> Upstream {
        listener.set_nonblocking(true).unwrap();
        Self::serve_listener(pacing, None, TcpListener::from_std(listener).unwrap())
    }

    async fn start_with(pacing: Pacing, dir: Option<PathBuf>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve_listener(pacing, dir, listener)
    }

    fn serve_listener(pacing: Pacing, dir: Option<PathBuf>, listener: TcpListener) -> Upstream {
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            objects: Mutex::new(HashMap::new()),
            dir,
            per_path: Mutex::new(HashMap::new()),
            bodies: Mutex::new(HashMap::new()),
            ranges: Mutex::new(Vec::new()),
            counters: Counters::default(),
            pacing,
            link_next: Mutex::new(Instant::now()),
        });
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        let s = shared.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = &mut stop_rx => return,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                let s = s.clone();
                tokio::spawn(async move {
                    s.counters.connections.fetch_add(1, Ordering::Relaxed);
                    if !s.pacing.rtt.is_zero() {
                        tokio::time::sleep(s.pacing.rtt).await;
                    }
                    let _ = stream.set_nodelay(true);
                    let svc = service_fn(move |req| serve(s.clone(), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            shared,
            _stop: stop_tx,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn put(&self, path: &str, obj: Obj) {
        self.shared
            .objects
            .lock()
            .unwrap()
            .insert(path.to_owned(), obj);
    }

    pub fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    pub fn requests(&self) -> u64 {
        self.shared.counters.requests.load(Ordering::SeqCst)
    }

    /// Requests for one path (as decoded).
    pub fn requests_for(&self, path: &str) -> u64 {
        *self.shared.per_path.lock().unwrap().get(path).unwrap_or(&0)
    }

    /// Every path requested, with its count.
    pub fn request_log(&self) -> HashMap<String, u64> {
        self.shared.per_path.lock().unwrap().clone()
    }

    /// Every request that carried a `Range` header, in order.
    pub fn range_requests(&self) -> Vec<RangeRequest> {
        self.shared.ranges.lock().unwrap().clone()
    }
}

type FixtureBody = BoxBody<Bytes, io::Error>;

fn status(code: StatusCode, text: &str) -> Response<FixtureBody> {
    let mut r = Response::new(
        Full::new(Bytes::from(text.to_owned()))
            .map_err(|n| match n {})
            .boxed(),
    );
    *r.status_mut() = code;
    r
}

async fn serve(
    s: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<FixtureBody>, Infallible> {
    let path: String = percent_encoding::percent_decode_str(req.uri().path())
        .decode_utf8_lossy()
        .into_owned();
    s.counters.requests.fetch_add(1, Ordering::SeqCst);
    *s.per_path.lock().unwrap().entry(path.clone()).or_insert(0) += 1;
    if !s.pacing.rtt.is_zero() {
        tokio::time::sleep(s.pacing.rtt).await;
    }
    let obj = s.objects.lock().unwrap().get(&path).cloned();
    let obj = match obj {
        Some(o) => o,
        None => match &s.dir {
            Some(dir) if !path.split('/').any(|seg| seg == "..") => {
                match tokio::fs::read(dir.join(path.trim_start_matches('/'))).await {
                    Ok(b) => Obj::new(b).etag(&sha256_hex(&path.clone().into_bytes())[..16]),
                    Err(_) => return Ok(status(StatusCode::NOT_FOUND, "not found\n")),
                }
            }
            _ => return Ok(status(StatusCode::NOT_FOUND, "not found\n")),
        },
    };
    let inm = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok());
    let ims = req
        .headers()
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok());
    if inm.is_some() || ims.is_some() {
        s.counters.conditional.fetch_add(1, Ordering::SeqCst);
        let unchanged = match (inm, &obj.etag, ims, &obj.last_modified) {
            (Some(a), Some(b), _, _) => a == b,
            (None, _, Some(a), Some(b)) => a == b,
            _ => false,
        };
        if unchanged {
            s.counters.not_modified.fetch_add(1, Ordering::SeqCst);
            let mut r = status(StatusCode::NOT_MODIFIED, "");
            *r.body_mut() = http_body_util::Empty::new().map_err(|n| match n {}).boxed();
            return Ok(r);
        }
    }
    let range = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let if_range = req
        .headers()
        .get(header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(r) = &range {
        s.ranges.lock().unwrap().push(RangeRequest {
            path: path.clone(),
            range: r.clone(),
            if_range: if_range.clone(),
        });
    }
    let total = obj.body.len();
    // `bytes=a-[b]` when this object honours ranges and If-Range (if any) still holds.
    let part = range.as_deref().filter(|_| obj.ranges).and_then(|r| {
        let holds = match &if_range {
            None => true,
            Some(v) => Some(v) == obj.etag.as_ref() || Some(v) == obj.last_modified.as_ref(),
        };
        let (a, b) = r.strip_prefix("bytes=")?.split_once('-')?;
        let a: usize = a.parse().ok()?;
        let b: usize = if b.is_empty() {
            total.checked_sub(1)?
        } else {
            b.parse::<usize>().ok()?.min(total.checked_sub(1)?)
        };
        (holds && a <= b).then_some((a, b + 1))
    });
    let (start, end) = part.unwrap_or((0, total));
    let mut resp = Response::builder()
        .status(if part.is_some() {
            StatusCode::PARTIAL_CONTENT
        } else {
            StatusCode::OK
        })
        .header(header::CONTENT_LENGTH, end - start)
        .header(header::CONTENT_TYPE, "application/octet-stream");
    if part.is_some() {
        resp = resp.header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{total}", end - 1),
        );
    }
    if let Some(e) = &obj.etag {
        resp = resp.header(header::ETAG, e);
    }
    if let Some(lm) = &obj.last_modified {
        resp = resp.header(header::LAST_MODIFIED, lm);
    }
    if req.method() == http::Method::HEAD {
        return Ok(resp
            .body(http_body_util::Empty::new().map_err(|n| match n {}).boxed())
            .unwrap());
    }
    let served_before = {
        let mut bodies = s.bodies.lock().unwrap();
        let n = bodies.entry(path.clone()).or_insert(0);
        *n += 1;
        *n - 1
    };
    if let Some(next) = &obj.then {
        s.objects
            .lock()
            .unwrap()
            .insert(path.clone(), (**next).clone());
    }
    let cut = obj
        .cut_after
        .filter(|_| obj.cut_first.is_none_or(|k| served_before < k))
        .map(|c| c as usize);
    let (tx, mut rx) = mpsc::channel::<Result<Frame<Bytes>, io::Error>>(2);
    let s2 = s.clone();
    tokio::spawn(async move {
        let chunk = 64 * 1024;
        // `sent` is an offset in the object: the body is `start..end`.
        let mut sent = start;
        let len = end;
        let begun = Instant::now();
        while sent < len {
            let mut n = chunk.min(len - sent);
            if let Some(cut) = cut {
                if sent >= cut {
                    let _ = tx
                        .send(Err(io::Error::other("fixture cuts the body")))
                        .await;
                    return;
                }
                n = n.min(cut - sent);
            }
            if let Some(rate) = s2.pacing.link_rate {
                let wake = {
                    let mut next = s2.link_next.lock().unwrap();
                    let begin = (*next).max(Instant::now());
                    *next = begin + Duration::from_secs_f64(n as f64 / rate as f64);
                    *next
                };
                tokio::time::sleep_until(wake.into()).await;
            }
            if let Some(rate) = s2.pacing.per_response_rate {
                let due = begun + Duration::from_secs_f64((sent - start + n) as f64 / rate as f64);
                tokio::time::sleep_until(due.into()).await;
            }
            if tx
                .send(Ok(Frame::data(obj.body.slice(sent..sent + n))))
                .await
                .is_err()
            {
                return;
            }
            s2.counters
                .body_bytes
                .fetch_add(n as u64, Ordering::Relaxed);
            sent += n;
        }
        s2.counters.completed.fetch_add(1, Ordering::SeqCst);
    });
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    Ok(resp.body(BodyExt::boxed(StreamBody::new(stream))).unwrap())
}

/// A cache running inside the test's runtime, on its own temporary store.
pub struct TestCache {
    pub addr: SocketAddr,
    pub cache: Arc<vcluster::cache::Cache>,
    pub store: PathBuf,
    _dir: Option<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestCache {
    /// Starts a cache with `debian` mapped to the upstream's `/debian`, tuned by `f`.
    pub async fn start(
        upstream: &Upstream,
        f: impl FnOnce(&mut vcluster::cache::CacheConfig),
    ) -> TestCache {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let mut cfg = vcluster::cache::CacheConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            store: store.clone(),
            ..Default::default()
        };
        cfg.mirrors.insert("debian".into(), upstream.url("/debian"));
        f(&mut cfg);
        let mut tc = Self::start_config(cfg).await;
        tc._dir = Some(dir);
        tc
    }

    pub async fn start_config(cfg: vcluster::cache::CacheConfig) -> TestCache {
        let store = cfg.store.clone();
        let server = vcluster::cache::CacheServer::bind(cfg).await.unwrap();
        let addr = server.local_addr();
        let cache = server.cache();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = rx.await;
        }));
        TestCache {
            addr,
            cache,
            store,
            _dir: None,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    /// Waits (up to 10 s) until the store holds `n` objects and no download is in flight:
    /// a body's last byte reaches clients just before its commit, and a request arriving
    /// in between joins the finishing download (COALESCED) rather than hitting the store.
    pub async fn settled(&self, n: usize) -> Vec<PathBuf> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let st = self.cache.snapshot();
            if (st.objects as usize == n && st.in_flight == 0) || Instant::now() > deadline {
                return stored_objects(&self.store);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn stats(&self) -> vcluster::cache::stats::StatsSnapshot {
        self.cache.snapshot()
    }
}

impl Drop for TestCache {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// A reqwest client that never picks up proxies from the environment.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// A reqwest client using `proxy` as its HTTP proxy.
pub fn proxied_client(proxy: SocketAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(format!("http://{proxy}")).unwrap())
        .build()
        .unwrap()
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Stored object files of a store directory.
pub fn stored_objects(store: &Path) -> Vec<PathBuf> {
    files_under(&store.join("objects"))
}

/// The real `vcluster cache serve` as a child process; killed (SIGKILL) on drop.
pub struct CacheProcess {
    pub child: Child,
    pub addr: SocketAddr,
}

impl CacheProcess {
    pub fn spawn(args: &[&str]) -> CacheProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_vcluster"))
            .args(["cache", "serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("CACHE_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn vcluster");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .rsplit(' ')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        CacheProcess { child, addr }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for CacheProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Waits (up to 10 s) until the store holds `n` objects: a download's last byte reaches
/// its clients just before the object is committed, so a test that looks at the disk
/// right after a response must give the commit a moment.
pub async fn wait_for_objects(store: &Path, n: usize) -> Vec<PathBuf> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let files = stored_objects(store);
        if files.len() == n || Instant::now() > deadline {
            return files;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
