//! Hits of stored objects go out by sendfile(2), ahead of hyper: byte-identical bodies,
//! the same headers as hyper's answers (length, validators, ranges, 304, 416, HEAD), and
//! keep-alive with pipelining still correct when one connection mixes sendfile hits with
//! requests hyper answers (misses, admin endpoints).

#[path = "cache_support/mod.rs"]
mod common;

use std::time::Duration;

use common::{Obj, Pacing, TestCache, Upstream, client, synth};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LM: &str = "Wed, 21 Oct 2015 07:28:00 GMT";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_hits_go_out_by_sendfile_byte_identical_with_hypers_headers() {
    let up = Upstream::start(Pacing::default()).await;
    let body = synth(70, 3 << 20);
    let path = "/debian/pool/s/sendfile_1_amd64.deb";
    up.put(path, Obj::new(body.clone()).etag("sf1").last_modified(LM));
    let cache = TestCache::start(&up, |_| {}).await;
    let url = cache.url(path);

    let miss = client().get(&url).send().await.unwrap();
    assert_eq!(miss.headers()["x-cache"], "MISS");
    let miss_headers = miss.headers().clone();
    assert_eq!(miss.bytes().await.unwrap(), body);
    cache.settled(1).await;
    assert_eq!(cache.stats().sendfile_hits, 0, "a miss is hyper's");

    let hit = client().get(&url).send().await.unwrap();
    assert_eq!(hit.status(), 200);
    assert_eq!(hit.headers()["x-cache"], "HIT");
    for name in [
        "content-length",
        "content-type",
        "etag",
        "last-modified",
        "accept-ranges",
    ] {
        assert_eq!(hit.headers()[name], miss_headers[name], "{name}");
    }
    assert_eq!(hit.bytes().await.unwrap(), body, "byte-identical");
    assert_eq!(cache.stats().sendfile_hits, 1);

    let r = client()
        .get(&url)
        .header("range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 1000-1999/3145728");
    assert_eq!(r.headers()["content-length"], "1000");
    assert_eq!(r.bytes().await.unwrap(), body.slice(1000..2000));
    let r = client()
        .get(&url)
        .header("range", "bytes=-4096")
        .header("if-range", "\"sf1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap(), body.slice(body.len() - 4096..));
    let r = client()
        .get(&url)
        .header("range", "bytes=0-9")
        .header("if-range", "\"stale\"")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "If-Range that no longer holds: the whole object"
    );
    assert_eq!(r.bytes().await.unwrap(), body);
    let r = client()
        .get(&url)
        .header("range", "bytes=99999999-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(r.headers()["content-range"], "bytes */3145728");
    assert!(r.bytes().await.unwrap().is_empty());
    let r = client()
        .get(&url)
        .header("if-none-match", "\"sf1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    assert!(r.headers().get("content-length").is_none());
    let r = client().head(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "3145728");
    assert!(r.bytes().await.unwrap().is_empty());

    let st = cache.stats();
    assert_eq!(st.sendfile_hits, 7, "{st:?}");
    assert_eq!(st.hits, 7);
    assert_eq!(up.requests(), 1);
}

/// One parsed response off a raw connection.
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Splits what a connection sent into responses (`head_only[i]`: the i-th answered HEAD).
fn parse_responses(mut bytes: &[u8], head_only: &[bool]) -> Vec<Raw> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let n = match resp.parse(bytes).expect("a valid response head") {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => panic!("truncated response head"),
        };
        let headers: Vec<(String, String)> = resp
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_owned(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        let status = resp.code.unwrap();
        let mut raw = Raw {
            status,
            headers,
            body: Vec::new(),
        };
        let len: usize = if head_only.get(out.len()).copied().unwrap_or(false) || status == 304 {
            0
        } else {
            raw.header("content-length")
                .expect("every response here has a length")
                .parse()
                .unwrap()
        };
        raw.body = bytes[n..n + len].to_vec();
        bytes = &bytes[n + len..];
        out.push(raw);
    }
    out
}

/// Writes `parts` (with a pause between them) on one connection and reads until the
/// server closes it.
async fn exchange(addr: std::net::SocketAddr, parts: &[&str]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        s.write_all(p.as_bytes()).await.unwrap();
    }
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the server closes after Connection: close")
        .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_mixing_sendfile_hits_and_hyper_are_answered_in_order() {
    let up = Upstream::start(Pacing::default()).await;
    let a = synth(71, 200_000);
    let b = synth(72, 50_000);
    up.put("/debian/pool/a.deb", Obj::new(a.clone()).etag("a"));
    up.put("/debian/pool/b.deb", Obj::new(b.clone()).etag("b"));
    let cache = TestCache::start(&up, |_| {}).await;
    let got = client().get(cache.url("/debian/pool/a.deb")).send().await;
    assert_eq!(got.unwrap().bytes().await.unwrap(), a);
    cache.settled(1).await;

    // Hits on the sendfile path (the first head arrives in two pieces), then a miss that
    // hands the connection to hyper with the rest of the pipeline, then hits via hyper.
    let get = |p: &str| format!("GET {p} HTTP/1.1\r\nHost: c\r\n\r\n");
    let first = get("/debian/pool/a.deb");
    let (first_a, first_b) = first.split_at(20);
    let rest = [
        "HEAD /debian/pool/a.deb HTTP/1.1\r\nHost: c\r\n\r\n".to_owned(),
        "GET /debian/pool/a.deb HTTP/1.1\r\nHost: c\r\nRange: bytes=10-19\r\n\r\n".to_owned(),
        get("/debian/pool/b.deb"),
        get("/_cache/health"),
        "GET /debian/pool/a.deb HTTP/1.1\r\nHost: c\r\nConnection: close\r\n\r\n".to_owned(),
    ]
    .concat();
    let out = exchange(cache.addr, &[first_a, first_b, &rest]).await;
    let rs = parse_responses(&out, &[false, true, false, false, false, false]);
    assert_eq!(rs.len(), 6, "{}", String::from_utf8_lossy(&out));
    assert_eq!((rs[0].status, rs[0].header("x-cache")), (200, Some("HIT")));
    assert_eq!(rs[0].body, a);
    assert_eq!(rs[1].status, 200);
    assert_eq!(rs[1].header("content-length"), Some("200000"));
    assert_eq!(rs[2].status, 206);
    assert_eq!(rs[2].body, a.slice(10..20));
    assert_eq!((rs[3].status, rs[3].header("x-cache")), (200, Some("MISS")));
    assert_eq!(rs[3].body, b);
    assert_eq!(rs[4].body, b"ok\n");
    assert_eq!((rs[5].status, rs[5].header("x-cache")), (200, Some("HIT")));
    assert_eq!(rs[5].body, a);
    let st = cache.stats();
    assert_eq!(st.sendfile_hits, 3, "the three before the miss: {st:?}");
    assert_eq!(st.hits, 4);

    // Connection: close on the sendfile path closes after the answer, too.
    cache.settled(2).await;
    let out = exchange(
        cache.addr,
        &["GET /debian/pool/b.deb HTTP/1.1\r\nHost: c\r\nConnection: close\r\n\r\n"],
    )
    .await;
    let rs = parse_responses(&out, &[false]);
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0].body, b);
    assert_eq!(cache.stats().sendfile_hits, 4);
}
