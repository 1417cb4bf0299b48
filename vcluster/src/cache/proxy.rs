//! One client request in, one response out: routing (object, admin endpoint, CONNECT),
//! client conditionals (`If-None-Match`, `If-Modified-Since`, `If-Range`), byte ranges,
//! HEAD, and the mapping of every error to a status with a JSON body, in one place
//! ([`ProxyError`]).
//!
//! Validation happens here at the edge: the target goes through `target::resolve` before
//! anything else looks at it, so a malformed or traversing request is answered 4xx without
//! reaching the cache. This module never writes to the store and never fetches by itself
//! except to relay `pass` requests and to open CONNECT tunnels.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::body::{self, ObjectSource, ResponseBody};
use super::config::ConnectPolicy;
use super::fetch::USER_AGENT;
use super::flight::ObjectHead;
use super::policy::Class;
use super::stats::Stats;
use super::store::ObjectMeta;
use super::target::{self, Target, TargetError};
use super::{Cache, Source};

/// Everything a request can be refused for.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("method {0} is not supported (GET, HEAD, and CONNECT where enabled)")]
    Method(Method),
    #[error("no cache endpoint {0} (try /_cache/stats, /_cache/metrics, /_cache/health)")]
    NoEndpoint(String),
    #[error("CONNECT is refused by configuration (connect = \"refuse\"); use plain http")]
    ConnectRefused,
    #[error("CONNECT to port {0} is not allowed (connect_ports)")]
    ConnectPort(u16),
    #[error("CONNECT needs a host:port target")]
    ConnectTarget,
    #[error("upstream failed: {0}")]
    Upstream(String),
    #[error("not in the cache, and the request said Cache-Control: only-if-cached")]
    NotCached,
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Target(TargetError::UnknownMirror(_)) | ProxyError::NoEndpoint(_) => {
                StatusCode::NOT_FOUND
            }
            ProxyError::Target(TargetError::ForwardDisabled)
            | ProxyError::ConnectRefused
            | ProxyError::ConnectPort(_) => StatusCode::FORBIDDEN,
            ProxyError::Target(_) | ProxyError::ConnectTarget => StatusCode::BAD_REQUEST,
            ProxyError::Method(_) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ProxyError::NotCached => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    pub fn into_response(self) -> Response<ResponseBody> {
        let status = self.status();
        let body = serde_json::json!({ "error": self.to_string() }).to_string();
        let mut r = Response::new(body::full(body));
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if status == StatusCode::METHOD_NOT_ALLOWED {
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        }
        r
    }
}

/// Handles one request. Returns the response and the cache status for the access log.
pub async fn handle(
    cache: &Arc<Cache>,
    req: Request<Incoming>,
) -> (Response<ResponseBody>, &'static str) {
    Stats::add(&cache.stats.requests, 1);
    match route(cache, req).await {
        Ok(r) => r,
        Err(e) => {
            if e.status().is_client_error() {
                Stats::add(&cache.stats.client_errors, 1);
            }
            (e.into_response(), "ERROR")
        }
    }
}

async fn route(
    cache: &Arc<Cache>,
    req: Request<Incoming>,
) -> Result<(Response<ResponseBody>, &'static str), ProxyError> {
    if req.method() == Method::CONNECT {
        return connect(cache, req).await.map(|r| (r, "TUNNEL"));
    }
    let head_only = match *req.method() {
        Method::GET => false,
        Method::HEAD => true,
        ref m => return Err(ProxyError::Method(m.clone())),
    };
    if req.uri().scheme().is_none() && req.uri().path().starts_with("/_cache/") {
        return admin(cache, req.uri().path()).map(|r| (r, "ADMIN"));
    }
    let target = target::resolve(req.uri(), &cache.mirrors, cache.config.forward_proxy)?;
    let class = cache
        .policy
        .classify(target.key.path(), target.upstream.query().is_some());
    if class == Class::Pass {
        return relay(cache, req.headers(), &target, head_only)
            .await
            .map(|r| (r, "PASS"));
    }
    // RFC 9111 5.2.1.7: answer from the store or 504, never ask the upstream (what
    // `vcluster cache warm` asks to learn what is cached already).
    let source = if only_if_cached(req.headers()) {
        match cache.stored_hit(&target, class).await {
            Some(object) => Source::Stored {
                object,
                revalidated: false,
            },
            None => return Err(ProxyError::NotCached),
        }
    } else {
        cache.get(&target, class).await
    };
    let label = source.label();
    let (head, src) = match source {
        Source::Stored { object, .. } => {
            let head = stored_head(&object.meta);
            let src = ObjectSource {
                file: object.file.clone(),
                progress: None,
                lease: Some(object),
            };
            (head, src)
        }
        Source::Live { download, .. } => (
            download.head.clone(),
            ObjectSource {
                file: download.file.clone(),
                progress: Some(download.progress.clone()),
                lease: None,
            },
        ),
        Source::Relay(r) => {
            let mut resp = Response::new(if head_only {
                body::empty()
            } else {
                body::full(r.body.clone())
            });
            *resp.status_mut() = r.status;
            *resp.headers_mut() = r.headers.clone();
            return Ok((resp, label));
        }
        Source::Failed(e) => return Err(ProxyError::Upstream(e.to_string())),
    };
    Ok((
        object_response(cache, req.headers(), head_only, head, src, label),
        label,
    ))
}

fn only_if_cached(req: &HeaderMap) -> bool {
    req.get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| d.trim().eq_ignore_ascii_case("only-if-cached"))
}

fn admin(cache: &Arc<Cache>, path: &str) -> Result<Response<ResponseBody>, ProxyError> {
    let (ctype, text) = match path {
        "/_cache/stats" => (
            "application/json",
            serde_json::to_string_pretty(&cache.snapshot()).expect("plain struct"),
        ),
        "/_cache/metrics" => (
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            cache.snapshot().to_prometheus(),
        ),
        "/_cache/health" => ("text/plain", "ok\n".to_owned()),
        other => return Err(ProxyError::NoEndpoint(other.to_owned())),
    };
    let mut r = Response::new(body::full(text));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    Ok(r)
}

/// What to answer for an object: the status, the headers, and which bytes of the object
/// follow (`start`, and `end` exclusive when known). The one place that applies a client's
/// conditionals and range; hyper's responses (`object_response`) and the sendfile path
/// (`sendfile.rs`) are both built from it.
pub struct ObjectReply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Option<(u64, Option<u64>)>,
}

/// Plans the answer for an object, honouring the client's conditionals and range.
pub fn plan_object(
    req: &HeaderMap,
    head_only: bool,
    head: &ObjectHead,
    label: &'static str,
) -> ObjectReply {
    let mut h = HeaderMap::new();
    let mut set = |name: header::HeaderName, v: Option<&str>| {
        if let Some(v) = v.and_then(|v| HeaderValue::from_str(v).ok()) {
            h.insert(name, v);
        }
    };
    set(header::CONTENT_TYPE, head.content_type.as_deref());
    set(header::ETAG, head.etag.as_deref());
    set(header::LAST_MODIFIED, head.last_modified.as_deref());
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert("x-cache", HeaderValue::from_static(label));

    let reply = |status, headers, body| ObjectReply {
        status,
        headers,
        body,
    };
    if not_modified(req, head) {
        h.remove(header::CONTENT_TYPE);
        return reply(StatusCode::NOT_MODIFIED, h, None);
    }
    let range = match (
        head.length,
        req.get(header::RANGE).and_then(|v| v.to_str().ok()),
    ) {
        (Some(len), Some(r)) if if_range_holds(req, head) => parse_range(r, len),
        _ => RangeSpec::Whole,
    };
    match range {
        RangeSpec::Part(a, b) => {
            h.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes {a}-{b}/{}", head.length.unwrap_or(0)))
                    .expect("ascii"),
            );
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(b - a + 1));
            let body = (!head_only).then_some((a, Some(b + 1)));
            reply(StatusCode::PARTIAL_CONTENT, h, body)
        }
        RangeSpec::Unsatisfiable => {
            h.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{}", head.length.unwrap_or(0)))
                    .expect("ascii"),
            );
            h.remove(header::CONTENT_TYPE);
            reply(StatusCode::RANGE_NOT_SATISFIABLE, h, None)
        }
        RangeSpec::Whole => {
            if let Some(len) = head.length {
                h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            }
            let body = (!head_only).then_some((0, head.length));
            reply(StatusCode::OK, h, body)
        }
    }
}

/// The head of a stored object, as clients see it.
pub fn stored_head(meta: &ObjectMeta) -> ObjectHead {
    ObjectHead {
        length: Some(meta.length),
        content_type: meta.content_type.clone(),
        etag: meta.etag.clone(),
        last_modified: meta.last_modified.clone(),
    }
}

/// Builds the response for an object, honouring the client's conditionals and range.
fn object_response(
    cache: &Arc<Cache>,
    req: &HeaderMap,
    head_only: bool,
    head: ObjectHead,
    src: ObjectSource,
    label: &'static str,
) -> Response<ResponseBody> {
    let plan = plan_object(req, head_only, &head, label);
    let body = match plan.body {
        Some((start, end)) => body::object_body(src, start, end, cache.stats.clone()),
        None => body::empty(),
    };
    let mut r = Response::new(body);
    *r.status_mut() = plan.status;
    *r.headers_mut() = plan.headers;
    r
}

/// A parsed `Range` header against a known length.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeSpec {
    /// Serve the whole object (no range, several ranges, or a syntax we ignore).
    Whole,
    /// Inclusive byte positions.
    Part(u64, u64),
    Unsatisfiable,
}

/// RFC 9110 single byte ranges; multiple ranges are answered with the whole object.
pub fn parse_range(v: &str, len: u64) -> RangeSpec {
    let Some(spec) = v
        .trim()
        .strip_prefix("bytes=")
        .or_else(|| v.trim().strip_prefix("Bytes="))
    else {
        return RangeSpec::Whole;
    };
    if spec.contains(',') {
        return RangeSpec::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeSpec::Whole;
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        return match b.parse::<u64>() {
            Ok(0) => RangeSpec::Unsatisfiable,
            Ok(_) if len == 0 => RangeSpec::Unsatisfiable,
            Ok(n) => RangeSpec::Part(len.saturating_sub(n), len - 1),
            Err(_) => RangeSpec::Whole,
        };
    }
    let Ok(start) = a.parse::<u64>() else {
        return RangeSpec::Whole;
    };
    let end = if b.is_empty() {
        len.saturating_sub(1)
    } else {
        match b.parse::<u64>() {
            Ok(e) if e >= start => e.min(len.saturating_sub(1)),
            _ => return RangeSpec::Whole,
        }
    };
    if start >= len {
        return RangeSpec::Unsatisfiable;
    }
    RangeSpec::Part(start, end)
}

fn weak_eq(a: &str, b: &str) -> bool {
    a.trim().trim_start_matches("W/") == b.trim().trim_start_matches("W/")
}

/// Whether the client's cached copy is current (answer 304).
pub fn not_modified(req: &HeaderMap, head: &ObjectHead) -> bool {
    if let Some(inm) = req.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        return match &head.etag {
            Some(etag) => inm.trim() == "*" || inm.split(',').any(|t| weak_eq(t, etag)),
            None => false,
        };
    }
    let ims = req
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    let lm = head
        .last_modified
        .as_deref()
        .and_then(|v| httpdate::parse_http_date(v).ok());
    matches!((ims, lm), (Some(ims), Some(lm)) if lm <= ims)
}

/// `If-Range`: the range applies only if the client's validator still names this object.
fn if_range_holds(req: &HeaderMap, head: &ObjectHead) -> bool {
    let Some(v) = req.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let v = v.trim();
    if v.starts_with('"') || v.starts_with("W/") {
        return !v.starts_with("W/") && head.etag.as_deref() == Some(v);
    }
    match (
        httpdate::parse_http_date(v).ok(),
        head.last_modified
            .as_deref()
            .and_then(|l| httpdate::parse_http_date(l).ok()),
    ) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// Relays a `pass` request to the upstream without storing anything.
async fn relay(
    cache: &Arc<Cache>,
    req: &HeaderMap,
    target: &Target,
    head_only: bool,
) -> Result<Response<ResponseBody>, ProxyError> {
    Stats::add(&cache.stats.passed, 1);
    Stats::add(&cache.stats.upstream_requests, 1);
    let method = if head_only { Method::HEAD } else { Method::GET };
    let mut up = Request::builder()
        .method(method)
        .uri(target.upstream.clone())
        .header(header::USER_AGENT, USER_AGENT)
        .body(Empty::<Bytes>::new())
        .expect("valid request parts");
    for name in [
        header::RANGE,
        header::IF_RANGE,
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::ACCEPT,
    ] {
        if let Some(v) = req.get(&name) {
            up.headers_mut().insert(name, v.clone());
        }
    }
    let idle = Duration::from_secs(cache.config.upstream_idle_timeout_secs);
    let resp = match timeout(idle, cache.client.request(up)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            Stats::add(&cache.stats.upstream_errors, 1);
            return Err(ProxyError::Upstream(e.to_string()));
        }
        Err(_) => {
            Stats::add(&cache.stats.upstream_errors, 1);
            return Err(ProxyError::Upstream(format!("no response in {idle:?}")));
        }
    };
    let (mut parts, incoming) = resp.into_parts();
    for hop in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
        header::PROXY_AUTHENTICATE,
    ] {
        parts.headers.remove(hop);
    }
    parts.headers.remove("keep-alive");
    parts
        .headers
        .insert("x-cache", HeaderValue::from_static("PASS"));
    let stats = cache.stats.clone();
    let body = incoming
        .map_frame(move |f| {
            if let Some(d) = f.data_ref() {
                Stats::add(&stats.bytes_from_upstream, d.len() as u64);
                Stats::add(&stats.bytes_served, d.len() as u64);
            }
            f
        })
        .map_err(std::io::Error::other)
        .boxed();
    Ok(Response::from_parts(parts, body))
}

/// `CONNECT host:port`: refused, or tunnelled uncached, per configuration.
async fn connect(
    cache: &Arc<Cache>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, ProxyError> {
    if cache.config.connect == ConnectPolicy::Refuse {
        return Err(ProxyError::ConnectRefused);
    }
    let auth = req
        .uri()
        .authority()
        .ok_or(ProxyError::ConnectTarget)?
        .clone();
    let port = auth.port_u16().ok_or(ProxyError::ConnectTarget)?;
    if !cache.config.connect_ports.contains(&port) {
        return Err(ProxyError::ConnectPort(port));
    }
    let limit = Duration::from_secs(cache.config.upstream_connect_timeout_secs);
    let mut upstream = match timeout(limit, TcpStream::connect(auth.as_str())).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(ProxyError::Upstream(format!("connect {auth}: {e}"))),
        Err(_) => return Err(ProxyError::Upstream(format!("connect {auth}: timed out"))),
    };
    Stats::add(&cache.stats.passed, 1);
    tokio::spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => {
                let mut client = TokioIo::new(upgraded);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            }
            Err(e) => tracing::debug!(error = %e, "CONNECT upgrade failed"),
        }
    });
    Ok(Response::new(body::empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_like_rfc_9110() {
        assert_eq!(parse_range("bytes=0-9", 100), RangeSpec::Part(0, 9));
        assert_eq!(parse_range("bytes=90-", 100), RangeSpec::Part(90, 99));
        assert_eq!(parse_range("bytes=-10", 100), RangeSpec::Part(90, 99));
        assert_eq!(parse_range("bytes=50-500", 100), RangeSpec::Part(50, 99));
        assert_eq!(parse_range("bytes=100-", 100), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), RangeSpec::Whole);
        assert_eq!(parse_range("bytes=9-3", 100), RangeSpec::Whole);
        assert_eq!(parse_range("items=0-1", 100), RangeSpec::Whole);
    }

    #[test]
    fn conditionals_compare_etags_weakly_and_dates_by_order() {
        let head = ObjectHead {
            etag: Some("\"v1\"".into()),
            last_modified: Some("Wed, 21 Oct 2015 07:28:00 GMT".into()),
            ..Default::default()
        };
        let mut req = HeaderMap::new();
        req.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("W/\"v1\", \"v0\""),
        );
        assert!(not_modified(&req, &head));
        req.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"v2\""));
        assert!(!not_modified(&req, &head));
        let mut req = HeaderMap::new();
        req.insert(
            header::IF_MODIFIED_SINCE,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert!(not_modified(&req, &head));
        req.insert(
            header::IF_MODIFIED_SINCE,
            HeaderValue::from_static("Tue, 20 Oct 2015 07:28:00 GMT"),
        );
        assert!(!not_modified(&req, &head));
        let mut req = HeaderMap::new();
        req.insert(header::IF_RANGE, HeaderValue::from_static("\"v1\""));
        assert!(if_range_holds(&req, &head));
        req.insert(header::IF_RANGE, HeaderValue::from_static("W/\"v1\""));
        assert!(!if_range_holds(&req, &head));
    }
}
