//! Hits served by the kernel: on a fresh connection, request heads are read and parsed
//! here (httparse) and every GET or HEAD that is a hit of a stored object is answered
//! directly, the head written with `MSG_MORE` and the bytes with `sendfile(2)` from the
//! object's file to the socket, never through a userspace buffer. Keep-alive and pipelining
//! work as with hyper: requests are answered in order, and bytes of the next request read
//! with this one stay in the buffer for the next turn.
//!
//! The first request that is anything else (a miss, a revalidation, a download in flight,
//! an admin endpoint, CONNECT, a request with a body, HTTP/1.0, `Upgrade`, a malformed or
//! oversized head) hands the connection to hyper for the rest of its life, with the bytes
//! already read replayed in front of the socket ([`Rewind`]), so hyper sees the stream
//! exactly as the client sent it. Responses are built by `proxy::plan_object`, the same
//! function hyper's responses come from, and the access log and the stats count them like
//! any other.
//!
//! This module never fetches, never writes to the store, and never answers an error: what
//! it does not serve as a hit, hyper serves.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use rustix::net::SendFlags;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::Cache;
use super::policy::Class;
use super::proxy::{self, ObjectReply};
use super::stats::Stats;
use super::target;

/// Headers a request may carry for this path (httparse needs a fixed array; a request
/// with more goes to hyper, which allows more).
const MAX_HEADERS: usize = 64;

/// How a connection left the sendfile path.
pub enum Outcome {
    /// Closed (by the client, by `Connection: close`, by shutdown, or on an I/O error).
    Closed,
    /// Hand the connection to hyper: these bytes were read and not consumed.
    Hyper(Bytes),
}

/// Serves hits on `stream` until a request needs hyper or the connection ends. `log`
/// receives one access line per response.
pub async fn serve_hits(
    stream: &mut TcpStream,
    peer: SocketAddr,
    cache: &Arc<Cache>,
    log: &(dyn Fn(&str) + Send + Sync),
    stop: &mut watch::Receiver<bool>,
    header_timeout: Duration,
) -> Outcome {
    let mut buf = BytesMut::with_capacity(8192);
    loop {
        // Read until a whole head is buffered (or hand over what cannot be one).
        let deadline = tokio::time::Instant::now() + header_timeout;
        let parsed = loop {
            if let Some(p) = parse_head(&buf) {
                break p;
            }
            if buf.len() >= cache.config.max_header_bytes {
                return Outcome::Hyper(buf.freeze()); // hyper answers 431
            }
            tokio::select! {
                read = tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)) => match read {
                    Ok(Ok(0)) | Ok(Err(_)) => return Outcome::Closed,
                    Ok(Ok(_)) => {}
                    Err(_) => return Outcome::Closed, // no whole head in time
                },
                _ = stop.wait_for(|s| *s) => return Outcome::Closed,
            }
        };
        let Head::Request(req) = parsed else {
            return Outcome::Hyper(buf.freeze());
        };
        let started = Instant::now();
        let Some(object) = hit(cache, &req).await else {
            return Outcome::Hyper(buf.freeze());
        };
        buf.advance(req.len);
        Stats::add(&cache.stats.requests, 1);
        let head = proxy::stored_head(&object.meta);
        let reply = proxy::plan_object(&req.headers, req.method == Method::HEAD, &head, "HIT");
        let bytes = reply
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        // Counted before the answer goes out, like the hit itself: a client that has its
        // answer finds it counted (hyper's path counts bytes as they are read, too).
        Stats::add(&cache.stats.sendfile_hits, 1);
        if let Some((start, Some(end))) = reply.body {
            Stats::add(&cache.stats.bytes_served, end.saturating_sub(start));
        }
        let sent = send_reply(stream, &reply, &object.file).await;
        log(&format!(
            "{} {peer} {} {} {} {bytes} HIT {}ms",
            httpdate::fmt_http_date(SystemTime::now()),
            req.method,
            req.uri,
            reply.status.as_u16(),
            started.elapsed().as_millis()
        ));
        drop(object);
        if sent.is_err() || req.close {
            let _ = stream.shutdown().await;
            return Outcome::Closed;
        }
        if *stop.borrow() {
            return Outcome::Closed;
        }
    }
}

/// A parsed request head this path may answer.
struct Request {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    /// `Connection: close`: answer, then close.
    close: bool,
    /// Bytes of the head (GET and HEAD here have no body).
    len: usize,
}

enum Head {
    Request(Box<Request>),
    /// Whole, but for hyper (see the module comment).
    Other,
}

/// `None`: not a whole head yet.
fn parse_head(buf: &[u8]) -> Option<Head> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return None,
        Err(_) => return Some(Head::Other),
    };
    let method = match req.method {
        Some("GET") => Method::GET,
        Some("HEAD") => Method::HEAD,
        _ => return Some(Head::Other),
    };
    if req.version != Some(1) {
        return Some(Head::Other);
    }
    let Some(uri) = req.path.and_then(|p| p.parse::<Uri>().ok()) else {
        return Some(Head::Other);
    };
    let mut map = HeaderMap::with_capacity(req.headers.len());
    let mut close = false;
    for h in req.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return Some(Head::Other);
        };
        let body_or_upgrade = name == header::TRANSFER_ENCODING
            || name == header::EXPECT
            || name == header::UPGRADE
            || (name == header::CONTENT_LENGTH && value.as_bytes() != b"0");
        if body_or_upgrade {
            return Some(Head::Other);
        }
        if name == header::CONNECTION {
            let v = value.to_str().unwrap_or("");
            close |= v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close"));
        }
        map.append(name, value);
    }
    Some(Head::Request(Box::new(Request {
        method,
        uri,
        headers: map,
        close,
        len,
    })))
}

/// The stored object `req` names, if it is a fresh hit; anything else is hyper's.
async fn hit(cache: &Arc<Cache>, req: &Request) -> Option<super::store::StoredObject> {
    if req.uri.scheme().is_none() && req.uri.path().starts_with("/_cache/") {
        return None;
    }
    let target = target::resolve(&req.uri, &cache.mirrors, cache.config.forward_proxy).ok()?;
    let class = cache
        .policy
        .classify(target.key.path(), target.upstream.query().is_some());
    if class == Class::Pass {
        return None;
    }
    cache.stored_hit(&target, class).await
}

/// Writes the reply; returns the body bytes sent.
async fn send_reply(
    stream: &mut TcpStream,
    reply: &ObjectReply,
    file: &std::fs::File,
) -> io::Result<u64> {
    let mut head = Vec::with_capacity(512);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(reply.status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(reply.status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in &reply.headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    // As hyper does: a status that may have a body and announces no length says 0.
    if reply.status != StatusCode::NOT_MODIFIED
        && !reply.headers.contains_key(header::CONTENT_LENGTH)
    {
        head.extend_from_slice(b"content-length: 0\r\n");
    }
    head.extend_from_slice(b"date: ");
    head.extend_from_slice(httpdate::fmt_http_date(SystemTime::now()).as_bytes());
    head.extend_from_slice(b"\r\n\r\n");
    match reply.body {
        Some((start, Some(end))) if end > start => {
            send_more(stream, &head).await?;
            sendfile(stream, file, start, end).await
        }
        _ => {
            stream.write_all(&head).await?;
            Ok(0)
        }
    }
}

/// Writes `bytes` with `MSG_MORE`: the kernel holds them back to share a segment with
/// the body that follows (the socket has `TCP_NODELAY`).
async fn send_more(stream: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_io(Interest::WRITABLE, || {
            rustix::net::send(stream.as_fd(), bytes, SendFlags::MORE | SendFlags::NOSIGNAL)
                .map_err(io::Error::from)
        }) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sends bytes `start..end` of `file` to the socket with `sendfile(2)`.
async fn sendfile(
    stream: &TcpStream,
    file: &std::fs::File,
    start: u64,
    end: u64,
) -> io::Result<u64> {
    let mut offset = start;
    while offset < end {
        stream.writable().await?;
        let want = usize::try_from(end - offset)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        match stream.try_io(Interest::WRITABLE, || {
            rustix::fs::sendfile(stream.as_fd(), file.as_fd(), Some(&mut offset), want)
                .map_err(io::Error::from)
        }) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "object file shorter than its length",
                ));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(end - start)
}

/// A stream that yields `prefix` before reading from `inner`: bytes the sendfile path read
/// and did not answer, given back to hyper.
pub struct Rewind {
    prefix: Bytes,
    inner: TcpStream,
}

impl Rewind {
    pub fn new(prefix: Bytes, inner: TcpStream) -> Rewind {
        Rewind { prefix, inner }
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_for_hyper_are_told_apart_from_hits_to_try() {
        let head = |s: &str| parse_head(s.as_bytes());
        assert!(
            head("GET /debian/a.deb HTTP/1.1\r\nHost: c\r\n").is_none(),
            "partial"
        );
        let Some(Head::Request(r)) = head(
            "GET /debian/a.deb HTTP/1.1\r\nHost: c\r\nConnection: keep-alive, Close\r\n\r\nGET /next",
        ) else {
            panic!("a plain GET is tried");
        };
        assert!(r.close);
        assert_eq!(r.len, 70);
        assert_eq!(r.uri.path(), "/debian/a.deb");
        for other in [
            "POST /x HTTP/1.1\r\nHost: c\r\nContent-Length: 1\r\n\r\nx",
            "GET /x HTTP/1.0\r\n\r\n",
            "GET /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            "GET /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /x HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            "CONNECT h:443 HTTP/1.1\r\n\r\n",
            "GET /x HTTP/1.1\r\nBad Header\r\n\r\n",
        ] {
            assert!(matches!(head(other), Some(Head::Other)), "{other:?}");
        }
    }
}
