//! What a client sees: Range on stored and in-flight objects, HEAD, conditional
//! requests, keep-alive, the forward-proxy form, CONNECT, and the stats endpoints.

#[path = "cache_support/mod.rs"]
mod common;

use std::time::Duration;

use common::{Obj, Pacing, TestCache, Upstream, client, proxied_client, synth};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_requests_on_stored_and_in_flight_objects() {
    const SIZE: usize = 6 << 20;
    let up = Upstream::start(Pacing {
        per_response_rate: Some(3 << 20), // 2 s
        ..Default::default()
    })
    .await;
    let body = synth(50, SIZE);
    let path = "/debian/pool/r/range_1_all.deb";
    up.put(path, Obj::new(body.clone()));
    let cache = TestCache::start(&up, |_| {}).await;
    let url = cache.url(path);

    // Start the download, then ask for ranges while it is in flight: one near the start
    // (already on disk) and one near the end (not yet downloaded: the client waits).
    let leader = tokio::spawn({
        let url = url.clone();
        async move {
            client()
                .get(&url)
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = client()
        .get(&url)
        .header("range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["x-cache"], "COALESCED");
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 1000-1999/{SIZE}").as_str()
    );
    assert_eq!(r.bytes().await.unwrap(), body.slice(1000..2000));
    let r = client()
        .get(&url)
        .header("range", "bytes=-4096")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap(), body.slice(SIZE - 4096..));
    assert_eq!(leader.await.unwrap(), body);
    cache.settled(1).await;

    // Stored: open-ended, suffix, clipped, unsatisfiable, multiple (served whole).
    let r = client()
        .get(&url)
        .header("range", "bytes=5000000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["x-cache"], "HIT");
    assert_eq!(r.bytes().await.unwrap(), body.slice(5_000_000..));
    let r = client()
        .get(&url)
        .header("range", "bytes=10-99999999")
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap(), body.slice(10..));
    let r = client()
        .get(&url)
        .header("range", format!("bytes={SIZE}-"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes */{SIZE}").as_str()
    );
    let r = client()
        .get(&url)
        .header("range", "bytes=0-1,5-6")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), SIZE);
    // If-Range with a validator that no longer matches: the whole object.
    let r = client()
        .get(&url)
        .header("range", "bytes=0-9")
        .header("if-range", "\"stale\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_and_client_conditionals() {
    let up = Upstream::start(Pacing::default()).await;
    let body = synth(51, 12345);
    let path = "/debian/pool/h/head_1_all.deb";
    up.put(
        path,
        Obj::new(body.clone())
            .etag("v1")
            .last_modified("Wed, 21 Oct 2015 07:28:00 GMT"),
    );
    let cache = TestCache::start(&up, |_| {}).await;
    let url = cache.url(path);

    let r = client().head(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "12345");
    assert_eq!(r.headers()["etag"], "\"v1\"");
    assert_eq!(r.headers()["accept-ranges"], "bytes");
    assert!(r.bytes().await.unwrap().is_empty());

    let r = client()
        .get(&url)
        .header("if-none-match", "\"v1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    let r = client()
        .get(&url)
        .header("if-none-match", "\"v0\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), body);
    let r = client()
        .get(&url)
        .header("if-modified-since", "Thu, 22 Oct 2015 07:28:00 GMT")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    let r = client()
        .get(&url)
        .header("if-modified-since", "Tue, 20 Oct 2015 07:28:00 GMT")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // HEAD started the one download; the rest were served from it or the store.
    assert_eq!(up.requests(), 1);
}

/// Sends raw HTTP/1.1 requests on one connection and reads `n` responses.
async fn raw_exchange(addr: std::net::SocketAddr, requests: &str, until: &str) -> String {
    raw_exchange_until(addr, requests, |o| o.contains(until)).await
}

async fn raw_exchange_until(
    addr: std::net::SocketAddr,
    requests: &str,
    done: impl Fn(&str) -> bool,
) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(requests.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done(&String::from_utf8_lossy(&out)) {
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .expect("response in time")
            .unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_serves_several_requests_on_one_connection() {
    let up = Upstream::start(Pacing::default()).await;
    up.put("/debian/a.deb", Obj::new(&b"AAAA-first"[..]));
    up.put("/debian/b.deb", Obj::new(&b"BBBB-second"[..]));
    let cache = TestCache::start(&up, |_| {}).await;
    let out = raw_exchange_until(
        cache.addr,
        "GET /debian/a.deb HTTP/1.1\r\nHost: c\r\n\r\nGET /debian/b.deb HTTP/1.1\r\nHost: c\r\n\r\nGET /debian/a.deb HTTP/1.1\r\nHost: c\r\n\r\n",
        |o| o.matches("AAAA-first").count() == 2,
    )
    .await;
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 3, "{out}");
    assert!(out.contains("BBBB-second"));
    assert!(!out.to_ascii_lowercase().contains("connection: close"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_proxy_and_mirror_forms_share_one_object() {
    let up = Upstream::start(Pacing::default()).await;
    let body = synth(52, 70_000);
    up.put("/debian/pool/f/fwd_1+b1_all.deb", Obj::new(body.clone()));
    let cache = TestCache::start(&up, |_| {}).await;
    // As apt sends it through Acquire::http::Proxy: absolute-form, '+' escaped.
    let r = proxied_client(cache.addr)
        .get(up.url("/debian/pool/f/fwd_1%2bb1_all.deb"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), body);
    cache.settled(1).await;
    let r = client()
        .get(cache.url("/debian/pool/f/fwd_1+b1_all.deb"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-cache"], "HIT");
    assert_eq!(r.bytes().await.unwrap(), body);
    assert_eq!(up.requests(), 1);

    let off = TestCache::start(&up, |c| c.forward_proxy = false).await;
    let r = proxied_client(off.addr)
        .get(up.url("/debian/pool/f/fwd_1%2bb1_all.deb"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_is_refused_by_default_and_tunnelled_uncached_when_enabled() {
    let up = Upstream::start(Pacing::default()).await;
    // A TCP echo server stands in for a TLS origin.
    let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let refuse = TestCache::start(&up, |_| {}).await;
    let out = raw_exchange(
        refuse.addr,
        &format!("CONNECT {echo_addr} HTTP/1.1\r\nHost: {echo_addr}\r\n\r\n"),
        "}",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    assert!(out.contains("refuse"), "{out}");

    let port = echo_addr.port();
    let tunnel = TestCache::start(&up, |c| {
        c.connect = vcluster::cache::config::ConnectPolicy::Tunnel;
        c.connect_ports = vec![port];
    })
    .await;
    let mut s = TcpStream::connect(tunnel.addr).await.unwrap();
    s.write_all(format!("CONNECT {echo_addr} HTTP/1.1\r\nHost: {echo_addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    assert!(String::from_utf8_lossy(&head).starts_with("HTTP/1.1 200"));
    s.write_all(b"ping through the tunnel").await.unwrap();
    let mut echoed = [0u8; 23];
    s.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"ping through the tunnel");
    assert!(common::stored_objects(&tunnel.store).is_empty());

    // A port not in connect_ports is refused even when tunnelling is on.
    let out = raw_exchange(
        tunnel.addr,
        "CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: x\r\n\r\n",
        "}",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_json_and_prometheus_metrics_count_hits_misses_and_bytes() {
    let up = Upstream::start(Pacing::default()).await;
    let body = synth(53, 1000);
    up.put("/debian/pool/s_1_all.deb", Obj::new(body));
    let cache = TestCache::start(&up, |_| {}).await;
    for _ in 0..3 {
        let r = client()
            .get(cache.url("/debian/pool/s_1_all.deb"))
            .send()
            .await
            .unwrap();
        r.bytes().await.unwrap();
        cache.settled(1).await;
    }
    let v: serde_json::Value = client()
        .get(cache.url("/_cache/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["misses"], 1);
    assert_eq!(v["hits"], 2);
    assert_eq!(v["bytes_from_upstream"], 1000);
    assert_eq!(v["bytes_served"], 3000);
    assert_eq!(v["objects"], 1);
    assert_eq!(v["in_flight"], 0);
    let text = metrics_text(&cache).await;
    assert!(text.contains("vcluster_cache_hits_total 2\n"), "{text}");
    assert!(
        text.contains("vcluster_cache_upstream_bytes_total 1000\n"),
        "{text}"
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vcluster"))
        .args(["cache", "stats", "--addr", &cache.addr.to_string()])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("hits") && l.ends_with(" 2")),
        "{table}"
    );
}

async fn metrics_text(cache: &TestCache) -> String {
    client()
        .get(cache.url("/_cache/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The series of an OpenMetrics text: each sample's name and labels, without its value.
fn series(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.rsplit_once(' ').expect("name and value").0.to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_methods_and_paths_add_no_metrics_series() {
    let up = Upstream::start(Pacing::default()).await;
    let cache = TestCache::start(&up, |_| {}).await;
    let requests = |text: &str| -> u64 {
        let line = text
            .lines()
            .find(|l| l.starts_with("vcluster_cache_requests_total "))
            .expect("the requests counter");
        line.rsplit_once(' ').unwrap().1.parse().unwrap()
    };
    let before_text = metrics_text(&cache).await;
    let before = series(&before_text);
    for (method, path) in [
        ("BREW", "/debian/pool/made-up.deb"),
        ("PUT", "/debian/pool/made-up.deb"),
        ("DELETE", "/_cache/metrics"),
        ("GET", "/_cache/made-up"),
        ("GET", "/not-a-mirror/x"),
        ("GET", "/debian/pool/absent-1.deb?x=1"),
        ("HEAD", "/%2e%2e/%2e%2e/etc/passwd"),
    ] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let r = client()
            .request(method.clone(), cache.url(path))
            .send()
            .await
            .unwrap();
        assert_ne!(r.status(), 500, "{method} {path}");
    }
    let after = metrics_text(&cache).await;
    assert_eq!(series(&after), before, "{after}");
    assert!(
        requests(&after) >= requests(&before_text) + 7,
        "the requests were counted, in the existing series: {after}"
    );
}
