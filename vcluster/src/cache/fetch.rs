//! One upstream download: the request (conditional when revalidating), the temporary
//! file its waiters read, the checks, and the commit to the store.
//!
//! A fetch runs as its own task, detached from the request that started it: if that
//! client goes away, the other waiters keep streaming and the object is still stored.
//! Bytes are announced to waiters only after they are written to the temporary file, and
//! `Complete` only after the length (against Content-Length) and, for by-hash paths, the
//! SHA-256 checked out; the waiters' body streams hold back the last byte until then, so
//! a client never receives a whole-looking body that failed a check.
//!
//! A body the upstream cuts is resumed where it broke (`resume.rs` says how and what the
//! answer means) and the waiters keep streaming without noticing; an object that changed
//! meanwhile restarts the download with a new temporary file, cutting the waiters of the
//! old one. Resume attempts are bounded: `upstream_resume_attempts` in a row without a new
//! byte, with a doubling pause; then the download fails like any other.
//!
//! This module never serves a client and never decides freshness; it never leaves a
//! temporary file behind (a drop guard removes it, even when the task is aborted).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::time::timeout;

use super::Cache;
use super::flight::{Download, Flight, FlightState, ObjectHead, Progress, Relayed};
use super::policy::{self, ExpectedHash};
use super::resume;
use super::stats::Stats;
use super::store::{self, Committed, ObjectMeta, Peek};
use super::target::Target;

/// Error bodies larger than this are not relayed (the waiters get 502).
const MAX_RELAY_BODY: usize = 1 << 20;
/// Bytes gathered before a write to the temporary file.
const WRITE_BATCH: usize = 256 * 1024;
/// Longest time received bytes wait in memory before they are written and announced.
const WRITE_DELAY: Duration = Duration::from_millis(10);

pub const USER_AGENT: &str = concat!("vcluster-cache/", env!("CARGO_PKG_VERSION"));

/// Starts the download for `flight` (whose leader the caller is).
pub fn spawn(cache: Arc<Cache>, flight: Arc<Flight>, target: Target, stored: Option<Peek>) {
    tokio::spawn(async move {
        let mut guard = FlightGuard {
            cache: cache.clone(),
            flight: flight.clone(),
            key: target.key.0.clone(),
            temp: None,
            progress: None,
        };
        run(&cache, &flight, &target, stored, &mut guard).await;
    });
}

/// Cleans up however the fetch ends: removes the temporary file unless committed, marks
/// the download failed unless complete, and takes the flight out of the table (first, so
/// no new request joins a dead download).
struct FlightGuard {
    cache: Arc<Cache>,
    flight: Arc<Flight>,
    key: String,
    temp: Option<PathBuf>,
    progress: Option<watch::Sender<Progress>>,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        self.cache.flights.finish(&self.key, &self.flight);
        if let Some(p) = self.temp.take() {
            let _ = std::fs::remove_file(p);
        }
        if let Some(tx) = self.progress.take() {
            tx.send_if_modified(|p| match p {
                Progress::Complete(_) => false,
                _ => {
                    *p = Progress::Failed;
                    true
                }
            });
        }
        // Waiters still Pending (task aborted before the head) must not hang.
        self.flight
            .fail_if_pending("download abandoned (cache shutting down)");
    }
}

fn head_of(headers: &HeaderMap) -> ObjectHead {
    let s = |n: header::HeaderName| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    ObjectHead {
        length: s(header::CONTENT_LENGTH).and_then(|v| v.parse().ok()),
        content_type: s(header::CONTENT_TYPE),
        etag: s(header::ETAG),
        last_modified: s(header::LAST_MODIFIED),
    }
}

async fn run(
    cache: &Arc<Cache>,
    flight: &Arc<Flight>,
    target: &Target,
    stored: Option<Peek>,
    guard: &mut FlightGuard,
) {
    let key = target.key.as_str();
    let idle = Duration::from_secs(cache.config.upstream_idle_timeout_secs);
    // The group generation when the request goes out: a dependent index fetched now is
    // at least as new as this generation's anchor, not necessarily a later one's.
    let gen_at_start = cache.store.group_gen(key);

    let mut req = Request::get(target.upstream.clone())
        .header(header::USER_AGENT, USER_AGENT)
        .body(Empty::<Bytes>::new())
        .expect("valid request parts");
    if let Some(p) = &stored {
        if let Some(etag) = p
            .meta
            .etag
            .as_deref()
            .and_then(|v| HeaderValue::from_str(v).ok())
        {
            req.headers_mut().insert(header::IF_NONE_MATCH, etag);
        }
        if let Some(lm) = p
            .meta
            .last_modified
            .as_deref()
            .and_then(|v| HeaderValue::from_str(v).ok())
        {
            req.headers_mut().insert(header::IF_MODIFIED_SINCE, lm);
        }
    }
    Stats::add(&cache.stats.upstream_requests, 1);
    let resp = match timeout(idle, cache.client.request(req)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return fail_now(cache, flight, guard, key, format!("upstream request: {e}")),
        Err(_) => {
            return fail_now(
                cache,
                flight,
                guard,
                key,
                format!("upstream sent no response in {idle:?}"),
            );
        }
    };
    let status = resp.status();
    if status == StatusCode::NOT_MODIFIED && stored.is_some() {
        Stats::add(&cache.stats.revalidated_unchanged, 1);
        let group_gen = match policy::anchor_group(key) {
            Some(group) => Some(cache.store.anchor_validated(group, false)),
            None => gen_at_start,
        };
        cache
            .store
            .mark_validated(key, store::validity_now(key, group_gen));
        cache.flights.finish(key, flight);
        flight.set(FlightState::NotModified);
        return;
    }
    if status != StatusCode::OK {
        let (parts, body) = resp.into_parts();
        let body = match timeout(
            idle,
            http_body_util::Limited::new(body, MAX_RELAY_BODY).collect(),
        )
        .await
        {
            Ok(Ok(b)) => b.to_bytes(),
            _ => {
                return fail_now(
                    cache,
                    flight,
                    guard,
                    key,
                    format!("upstream answered {status} with an unreadable body"),
                );
            }
        };
        let mut headers = HeaderMap::new();
        for name in [header::CONTENT_TYPE, header::LOCATION, header::RETRY_AFTER] {
            if let Some(v) = parts.headers.get(&name) {
                headers.insert(name, v.clone());
            }
        }
        Stats::add(&cache.stats.passed, 1);
        cache.flights.finish(key, flight);
        flight.set(FlightState::Relay(Arc::new(Relayed {
            status,
            headers,
            body,
        })));
        return;
    }
    stream_body(
        cache,
        flight,
        target,
        stored,
        resp,
        guard,
        gen_at_start,
        idle,
    )
    .await;
}

fn fail_now(cache: &Cache, flight: &Arc<Flight>, guard: &mut FlightGuard, key: &str, msg: String) {
    tracing::warn!(key, error = %msg, "upstream fetch failed");
    Stats::add(&cache.stats.upstream_errors, 1);
    cache.flights.finish(key, flight);
    if let Some(tx) = guard.progress.take() {
        tx.send_replace(Progress::Failed);
    } else {
        flight.set(FlightState::Failed(Arc::from(msg)));
    }
}

/// A GET for `target` with `extra` headers (a resume's Range and If-Range).
async fn upstream_get(
    cache: &Cache,
    target: &Target,
    extra: HeaderMap,
    idle: Duration,
) -> Result<hyper::Response<Incoming>, String> {
    let mut req = Request::get(target.upstream.clone())
        .header(header::USER_AGENT, USER_AGENT)
        .body(Empty::<Bytes>::new())
        .expect("valid request parts");
    req.headers_mut().extend(extra);
    Stats::add(&cache.stats.upstream_requests, 1);
    match timeout(idle, cache.client.request(req)).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(format!("upstream request: {e}")),
        Err(_) => Err(format!("upstream sent no response in {idle:?}")),
    }
}

/// Streams the upstream's 200 into a temporary file that every waiter reads, resuming
/// when the body is cut (see `resume.rs`), then checks it and commits it to the store.
#[allow(clippy::too_many_arguments)]
async fn stream_body(
    cache: &Arc<Cache>,
    flight: &Arc<Flight>,
    target: &Target,
    stored: Option<Peek>,
    resp: hyper::Response<Incoming>,
    guard: &mut FlightGuard,
    gen_at_start: Option<u64>,
    idle: Duration,
) {
    let key = target.key.as_str();
    let attempts = cache.config.upstream_resume_attempts;
    let mut resp = resp;
    let mut restarts = 0u32;
    // Each turn downloads one version of the object; a changed object starts another turn
    // with the response that brought it.
    let (head, sink) = 'download: loop {
        let head = head_of(resp.headers());
        let (temp, file) = match cache.store.temp_file() {
            Ok(t) => t,
            Err(e) => {
                return fail_now(
                    cache,
                    flight,
                    guard,
                    key,
                    format!("cannot create a temporary file: {e}"),
                );
            }
        };
        // A restart cuts the clients of the previous version: they hold its head and some
        // of its bytes, and must never get a body spliced from two versions.
        if let Some(old) = guard.progress.take() {
            old.send_replace(Progress::Failed);
        }
        if let Some(old) = guard.temp.replace(temp.clone()) {
            let _ = std::fs::remove_file(old);
        }
        let file = Arc::new(file);
        let (ptx, prx) = watch::channel(Progress::Writing(0));
        guard.progress = Some(ptx);
        flight.set(FlightState::Streaming(Arc::new(Download {
            head: head.clone(),
            file: file.clone(),
            progress: prx,
        })));
        let mut sink = Sink {
            temp,
            file,
            hasher: Sha256::new(),
            written: 0,
            pending: BytesMut::new(),
        };
        let mut body = resp.into_body();
        // Attempts since the download last made progress, and where that was.
        let mut failures = 0u32;
        let mut mark = 0u64;
        loop {
            let progress = guard.progress.as_ref().expect("set for this turn");
            let mut why = match pump(
                &mut body,
                &mut sink,
                head.length,
                idle,
                progress,
                &cache.stats,
            )
            .await
            {
                Stop::End if head.length.is_none_or(|l| l == sink.written) => {
                    break 'download (head, sink);
                }
                Stop::End => format!(
                    "upstream body ended at {} of {} bytes",
                    sink.written,
                    head.length.unwrap_or(0)
                ),
                Stop::Cut(why) => why,
                Stop::Fatal(why) => return fail_now(cache, flight, guard, key, why),
            };
            // Ask for the rest until there is a body to go on with, or attempts run out.
            body = loop {
                Stats::add(&cache.stats.upstream_errors, 1);
                if sink.written > mark {
                    failures = 0;
                    mark = sink.written;
                }
                failures += 1;
                if failures > attempts {
                    return fail_now(
                        cache,
                        flight,
                        guard,
                        key,
                        format!("{why} (gave up after {attempts} resume attempts)"),
                    );
                }
                tracing::info!(key, at = sink.written, attempt = failures, error = %why, "upstream cut mid-body; resuming");
                tokio::time::sleep(resume::backoff(failures)).await;
                Stats::add(&cache.stats.upstream_resumes, 1);
                let extra = resume::request_headers(&head, sink.written);
                let r = match upstream_get(cache, target, extra, idle).await {
                    Ok(r) => r,
                    Err(e) => {
                        why = e;
                        continue;
                    }
                };
                let restart = match resume::classify(r.status(), r.headers(), &head, sink.written) {
                    resume::Answer::Continue => break r.into_body(),
                    resume::Answer::Refetch => {
                        let mut b = r.into_body();
                        match verify_prefix(&mut b, &mut sink, idle, &cache.stats).await {
                            Ok(()) => break b,
                            Err(Stop::Cut(w)) => {
                                why = w;
                                continue;
                            }
                            Err(Stop::Fatal(w)) => return fail_now(cache, flight, guard, key, w),
                            // Other bytes under the same validator: changed after all.
                            Err(Stop::End) => None,
                        }
                    }
                    resume::Answer::Changed => Some(r),
                    resume::Answer::Diverged => None,
                    resume::Answer::Unusable(w) => {
                        why = w;
                        continue;
                    }
                };
                restarts += 1;
                if restarts > attempts.max(1) {
                    return fail_now(
                        cache,
                        flight,
                        guard,
                        key,
                        format!("object kept changing upstream ({restarts} versions)"),
                    );
                }
                tracing::info!(key, "object changed upstream mid-download; restarting it");
                resp = match restart {
                    Some(r) => r,
                    None => match upstream_get(cache, target, HeaderMap::new(), idle).await {
                        Ok(r) if r.status() == StatusCode::OK => r,
                        Ok(r) => {
                            why = format!("refetch answered {}", r.status());
                            continue;
                        }
                        Err(e) => {
                            why = e;
                            continue;
                        }
                    },
                };
                continue 'download;
            };
        }
    };
    let Sink {
        temp,
        file,
        hasher,
        written,
        ..
    } = sink;

    let digest: [u8; 32] = hasher.finalize().into();
    if let Some(ExpectedHash::Sha256(want)) = policy::expected_hash(target.key.path())
        && want != digest
    {
        Stats::add(&cache.stats.not_stored, 1);
        return fail_now(
            cache,
            flight,
            guard,
            key,
            format!(
                "body's SHA-256 {} does not match its by-hash path",
                store::hex(&digest)
            ),
        );
    }
    let sha256 = store::hex(&digest);
    // A changed anchor moves its group on *before* any client can finish reading it, so
    // no client that has the new Release can then be served a stale dependent index.
    let group_gen = match policy::anchor_group(key) {
        Some(group) => {
            let changed = stored.as_ref().is_none_or(|p| p.meta.sha256 != sha256);
            Some(cache.store.anchor_validated(group, changed))
        }
        None => gen_at_start,
    };
    // Checked: waiters may now send their last byte.
    if let Some(tx) = &guard.progress {
        tx.send_replace(Progress::Complete(written));
    }

    let meta = ObjectMeta {
        key: key.to_owned(),
        length: written,
        sha256,
        content_type: head.content_type.clone(),
        etag: head.etag.clone(),
        last_modified: head.last_modified.clone(),
        stored_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    let store = cache.store.clone();
    let validity = store::validity_now(key, group_gen);
    let temp2 = temp.clone();
    let file2 = file.clone();
    let res =
        tokio::task::spawn_blocking(move || store.commit(&temp2, &file2, meta, validity)).await;
    match res {
        Ok(Ok(Committed::Stored)) => {
            guard.temp = None;
            tracing::debug!(key, bytes = written, "stored");
        }
        Ok(Ok(Committed::TooLarge)) => {
            tracing::info!(
                key,
                bytes = written,
                "not stored: larger than the store can hold"
            );
        }
        Ok(Err(e)) => tracing::warn!(key, error = %e, "commit failed; object not stored"),
        Err(e) => tracing::warn!(key, error = %e, "commit task failed"),
    }
    cache.flights.finish(key, flight);
}

/// One version of the object as it is being written: the temporary file, where the next
/// byte goes, the running hash, and the batch not yet written.
struct Sink {
    temp: PathBuf,
    file: Arc<File>,
    hasher: Sha256,
    written: u64,
    pending: BytesMut,
}

impl Sink {
    /// Writes the pending batch (a failed write is not resumable: it is our disk).
    async fn flush(&mut self) -> Result<(), Stop> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let hasher = std::mem::take(&mut self.hasher);
        match write_batch(&self.file, &mut self.pending, self.written, hasher).await {
            Ok((h, n)) => {
                self.hasher = h;
                self.written += n;
                Ok(())
            }
            Err(e) => Err(Stop::Fatal(format!("writing {}: {e}", self.temp.display()))),
        }
    }
}

/// How a body stream stopped.
enum Stop {
    /// The body ended (whole, or short of its length: the caller checks).
    End,
    /// The connection broke or went silent: worth a resume.
    Cut(String),
    /// Not worth a resume: our disk failed, or the upstream sent more than it announced.
    Fatal(String),
}

/// Appends `body` to `sink`, announcing every written batch to the waiters.
async fn pump(
    body: &mut Incoming,
    sink: &mut Sink,
    length: Option<u64>,
    idle: Duration,
    progress: &watch::Sender<Progress>,
    stats: &Stats,
) -> Stop {
    loop {
        let wait = if sink.pending.is_empty() {
            idle
        } else {
            WRITE_DELAY
        };
        let stop = match timeout(wait, body.frame()).await {
            Err(_) if !sink.pending.is_empty() => None, // flush what we have, keep reading
            Err(_) => Some(Stop::Cut(format!("upstream silent for {idle:?} mid-body"))),
            Ok(None) => Some(Stop::End),
            Ok(Some(Err(e))) => Some(Stop::Cut(format!("upstream body: {e}"))),
            Ok(Some(Ok(frame))) => {
                let Ok(data) = frame.into_data() else {
                    continue; // trailers: ignored
                };
                Stats::add(&stats.bytes_from_upstream, data.len() as u64);
                sink.pending.extend_from_slice(&data);
                if length.is_some_and(|l| sink.written + sink.pending.len() as u64 > l) {
                    return Stop::Fatal("upstream sent more than its Content-Length".into());
                }
                if sink.pending.len() < WRITE_BATCH {
                    continue;
                }
                None
            }
        };
        // Whatever arrived before a cut is kept: a resume asks from the byte after it.
        if let Err(fatal) = sink.flush().await {
            return fatal;
        }
        progress.send_replace(Progress::Writing(sink.written));
        if let Some(stop) = stop {
            return stop;
        }
    }
}

/// Reads the first `sink.written` bytes of a whole-object answer and checks them against
/// the file. `Ok`: they match, and the rest of the body follows on (bytes past the prefix
/// are already pending in `sink`). `Err(Stop::End)`: they differ (or the body is shorter).
async fn verify_prefix(
    body: &mut Incoming,
    sink: &mut Sink,
    idle: Duration,
    stats: &Stats,
) -> Result<(), Stop> {
    let mut checked = 0u64;
    let mut batch = BytesMut::new();
    while checked < sink.written {
        let data = match timeout(idle, body.frame()).await {
            Err(_) => return Err(Stop::Cut(format!("upstream silent for {idle:?} mid-body"))),
            Ok(None) => return Err(Stop::End),
            Ok(Some(Err(e))) => return Err(Stop::Cut(format!("upstream body: {e}"))),
            Ok(Some(Ok(frame))) => match frame.into_data() {
                Ok(d) => d,
                Err(_) => continue,
            },
        };
        Stats::add(&stats.bytes_from_upstream, data.len() as u64);
        let want = (sink.written - checked - batch.len() as u64).min(data.len() as u64) as usize;
        batch.extend_from_slice(&data[..want]);
        sink.pending.extend_from_slice(&data[want..]);
        let prefix_done = checked + batch.len() as u64 == sink.written;
        if batch.len() < WRITE_BATCH && !prefix_done {
            continue;
        }
        let theirs = batch.split().freeze();
        let n = theirs.len() as u64;
        let file = sink.file.clone();
        let at = checked;
        let same = tokio::task::spawn_blocking(move || {
            let mut ours = vec![0u8; theirs.len()];
            file.read_exact_at(&mut ours, at).map(|()| ours == theirs)
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
        match same {
            Ok(true) => checked += n,
            Ok(false) => return Err(Stop::End),
            Err(e) => {
                return Err(Stop::Fatal(format!(
                    "reading back {}: {e}",
                    sink.temp.display()
                )));
            }
        }
    }
    Ok(())
}

async fn write_batch(
    file: &Arc<File>,
    pending: &mut BytesMut,
    offset: u64,
    mut hasher: Sha256,
) -> std::io::Result<(Sha256, u64)> {
    let buf = pending.split().freeze();
    let n = buf.len() as u64;
    let file = file.clone();
    tokio::task::spawn_blocking(move || {
        hasher.update(&buf);
        store::write_at(&file, &buf, offset).map(|()| (hasher, n))
    })
    .await
    .map_err(std::io::Error::other)?
}
