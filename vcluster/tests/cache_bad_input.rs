//! Bad input gets a clear 4xx and touches nothing outside the store directory (and
//! nothing inside it either, nor the upstream).

#[path = "cache_support/mod.rs"]
mod common;

use std::time::Duration;

use common::{Pacing, TestCache, Upstream, files_under};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(resp: &str) -> u16 {
    resp.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_4xx_and_touch_nothing() {
    let up = Upstream::start(Pacing::default()).await;
    let cache = TestCache::start(&up, |_| {}).await;
    // A sentinel beside the store: a traversal escaping the store would land here.
    let parent = cache.store.parent().unwrap().to_owned();
    std::fs::write(parent.join("sentinel"), b"untouched").unwrap();
    let before: Vec<_> = files_under(&parent);

    let cases: &[(&str, u16, &str)] = &[
        (
            "GET /debian/../etc/passwd HTTP/1.1\r\nHost: c\r\nConnection: close\r\n\r\n",
            400,
            "traversal",
        ),
        (
            "GET /debian/%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\nHost: c\r\nConnection: close\r\n\r\n",
            400,
            "traversal",
        ),
        (
            "GET /debian/pool/%2E%2e/x.deb HTTP/1.1\r\nHost: c\r\nConnection: close\r\n\r\n",
            400,
            "traversal",
        ),
        (
            "GET http://example.invalid/a/../../b HTTP/1.1\r\nHost: c\r\nConnection: close\r\n\r\n",
            400,
            "traversal",
        ),
        (
            "GET /debian/a%2fb.deb HTTP/1.1\r\nHost: c\r\nConnection: close\r\n\r\n",
            400,
            "encoded",
        ),
        (
            "GET /debian/a%00.deb HTTP/1.1\r\nHost: c\r\nConnection: close\r\n\r\n",
            400,
            "encoded",
        ),
        (
            "GET /debian/a%zz.deb HTTP/1.1\r\nHost: c\r\nConnection: close\r\n\r\n",
            400,
            "percent",
        ),
        (
            "GET /nosuchmirror/x.deb HTTP/1.1\r\nHost: c\r\nConnection: close\r\n\r\n",
            404,
            "nosuchmirror",
        ),
        (
            "GET https://example.invalid/x HTTP/1.1\r\nHost: c\r\nConnection: close\r\n\r\n",
            400,
            "https",
        ),
        (
            "POST /debian/x.deb HTTP/1.1\r\nHost: c\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            405,
            "method",
        ),
        (
            "GET /_cache/nothing HTTP/1.1\r\nHost: c\r\nConnection: close\r\n\r\n",
            404,
            "endpoint",
        ),
        ("HELLO THERE\r\n\r\n", 400, ""),
        (
            "GET /debian/x HTTP/1.1\r\nthis is not a header\r\n\r\n",
            400,
            "",
        ),
    ];
    for (req, want, words) in cases {
        let resp = raw(cache.addr, req.as_bytes()).await;
        assert_eq!(status_of(&resp), *want, "{req:?} -> {resp}");
        assert!(
            resp.contains(words),
            "{req:?}: body should say {words:?}: {resp}"
        );
    }
    // Oversized headers: 431.
    let big = format!(
        "GET /debian/x.deb HTTP/1.1\r\nHost: c\r\nX-Big: {}\r\n\r\n",
        "a".repeat(40 * 1024)
    );
    let resp = raw(cache.addr, big.as_bytes()).await;
    assert_eq!(status_of(&resp), 431, "{resp}");

    assert_eq!(up.requests(), 0, "nothing reached the upstream");
    assert_eq!(files_under(&parent), before, "no file appeared or vanished");
    assert_eq!(
        std::fs::read(parent.join("sentinel")).unwrap(),
        b"untouched"
    );
    assert!(common::stored_objects(&cache.store).is_empty());
    assert!(cache.stats().client_errors >= 11);
}
