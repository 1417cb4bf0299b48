//! An upstream that cuts a body mid-way: the download resumes (`Range` from the byte on
//! disk, `If-Range` on the validator) and every client still gets the whole object; an
//! upstream without ranges is fetched again whole; an object that changed meanwhile
//! restarts the download (clients holding the old bytes are cut, never spliced); and when
//! the attempts run out the clients see a cut, never a short body that looks whole.

#[path = "cache_support/mod.rs"]
mod common;

use std::time::Duration;

use common::{Obj, Pacing, TestCache, Upstream, client, files_under, sha256_hex, synth};

const SIZE: usize = 4 << 20;
const CUT: u64 = 1 << 20;

/// `n` clients fetch `url` at once; each result is the status, the Content-Length and
/// the body (or the body's error).
async fn fetch_all(
    url: &str,
    n: usize,
) -> Vec<(u16, Option<u64>, Result<bytes::Bytes, reqwest::Error>)> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let url = url.to_owned();
        tasks.push(tokio::spawn(async move {
            let resp = client().get(&url).send().await.unwrap();
            (
                resp.status().as_u16(),
                resp.content_length(),
                resp.bytes().await,
            )
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// The offset a `bytes=N-` range asks from.
fn range_start(range: &str) -> u64 {
    range
        .strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not an open-ended byte range: {range}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_cut_mid_body_is_resumed_by_range_and_every_client_gets_the_whole_object() {
    let up = Upstream::start(Pacing {
        per_response_rate: Some(16 << 20),
        ..Default::default()
    })
    .await;
    let body = synth(60, SIZE);
    let path = "/debian/pool/r/resume_1_amd64.deb";
    up.put(
        path,
        Obj::new(body.clone())
            .etag("v1")
            .ranges()
            .cut_after(CUT)
            .cut_first(1),
    );
    let cache = TestCache::start(&up, |_| {}).await;

    for (status, len, got) in fetch_all(&cache.url(path), 4).await {
        assert_eq!(status, 200);
        assert_eq!(len, Some(SIZE as u64));
        let got = got.expect("the client never notices the cut");
        assert_eq!(sha256_hex(&got), sha256_hex(&body));
    }
    assert_eq!(up.requests_for(path), 2, "the first request and one resume");
    let ranges = up.range_requests();
    assert_eq!(ranges.len(), 1, "{ranges:?}");
    assert_eq!(ranges[0].if_range.as_deref(), Some("\"v1\""));
    let from = range_start(&ranges[0].range);
    assert!(
        from > 0 && from <= CUT,
        "resumed from the byte on disk: {from}"
    );

    assert_eq!(cache.settled(1).await.len(), 1);
    let st = cache.stats();
    assert_eq!(st.upstream_resumes, 1, "{st:?}");
    let r = client().get(cache.url(path)).send().await.unwrap();
    assert_eq!(r.headers()["x-cache"], "HIT");
    assert_eq!(r.bytes().await.unwrap(), body, "the stored object is whole");
    assert_eq!(up.requests_for(path), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_without_range_support_is_fetched_again_whole_and_clients_never_notice() {
    let up = Upstream::start(Pacing {
        per_response_rate: Some(16 << 20),
        ..Default::default()
    })
    .await;
    // One with a validator (the upstream ignores the Range it gets and answers 200), one
    // without (nothing to put in If-Range, so the cache asks for the whole object).
    let tagged = synth(61, SIZE);
    let bare = synth(62, SIZE);
    let tagged_path = "/debian/pool/n/norange_1_amd64.deb";
    let bare_path = "/debian/pool/n/novalidator_1_amd64.deb";
    up.put(
        tagged_path,
        Obj::new(tagged.clone())
            .etag("t1")
            .cut_after(CUT)
            .cut_first(1),
    );
    up.put(
        bare_path,
        Obj::new(bare.clone()).cut_after(CUT).cut_first(1),
    );
    let cache = TestCache::start(&up, |_| {}).await;

    for (path, body) in [(tagged_path, &tagged), (bare_path, &bare)] {
        for (status, len, got) in fetch_all(&cache.url(path), 3).await {
            assert_eq!(status, 200);
            assert_eq!(len, Some(SIZE as u64));
            let got = got.unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_eq!(sha256_hex(&got), sha256_hex(body), "{path}");
        }
        assert_eq!(up.requests_for(path), 2, "{path}");
    }
    let ranges = up.range_requests();
    assert_eq!(
        ranges.len(),
        1,
        "only the tagged object is asked by range: {ranges:?}"
    );
    assert_eq!(ranges[0].path, tagged_path);
    assert_eq!(ranges[0].if_range.as_deref(), Some("\"t1\""));
    assert_eq!(cache.settled(2).await.len(), 2);
    assert_eq!(cache.stats().upstream_resumes, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_changed_mid_resume_cuts_the_streaming_clients_and_serves_the_new_object() {
    let up = Upstream::start(Pacing {
        per_response_rate: Some(16 << 20),
        ..Default::default()
    })
    .await;
    let old = synth(63, SIZE);
    let new = synth(64, SIZE + 12345);
    let path = "/debian/pool/c/changed_1_amd64.deb";
    up.put(
        path,
        Obj::new(old.clone())
            .etag("v1")
            .ranges()
            .cut_after(CUT)
            .then(Obj::new(new.clone()).etag("v2").ranges()),
    );
    let cache = TestCache::start(&up, |_| {}).await;

    for (status, len, got) in fetch_all(&cache.url(path), 3).await {
        assert_eq!(status, 200);
        assert_eq!(len, Some(SIZE as u64), "the head promised the old object");
        assert!(
            got.is_err(),
            "a client streaming the old bytes is cut, never given a spliced body"
        );
    }
    let r = client().get(cache.url(path)).send().await.unwrap();
    assert_eq!(r.headers()["etag"], "\"v2\"");
    let got = r.bytes().await.unwrap();
    assert_eq!(
        sha256_hex(&got),
        sha256_hex(&new),
        "a new client gets the new object"
    );
    let ranges = up.range_requests();
    assert_eq!(ranges.len(), 1, "{ranges:?}");
    assert_eq!(ranges[0].if_range.as_deref(), Some("\"v1\""));
    assert_eq!(
        up.requests_for(path),
        2,
        "the 200 that answered the resume became the new download"
    );
    assert_eq!(cache.settled(1).await.len(), 1);
    let r = client().get(cache.url(path)).send().await.unwrap();
    assert_eq!(
        r.bytes().await.unwrap(),
        new,
        "the new object is what is stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_attempts_exhausted_cut_every_client_and_store_nothing() {
    let up = Upstream::start(Pacing {
        per_response_rate: Some(16 << 20),
        ..Default::default()
    })
    .await;
    let body = synth(65, SIZE);
    let path = "/debian/pool/e/exhausted_1_amd64.deb";
    // Every response stops at the same offset: a resume from there makes no progress.
    up.put(
        path,
        Obj::new(body.clone()).etag("v1").ranges().cut_after(CUT),
    );
    let cache = TestCache::start(&up, |c| c.upstream_resume_attempts = 2).await;

    for (status, len, got) in fetch_all(&cache.url(path), 3).await {
        assert_eq!(status, 200);
        assert_eq!(len, Some(SIZE as u64));
        assert!(got.is_err(), "a short body never looks whole");
    }
    assert_eq!(up.requests_for(path), 3, "the request and two resumes");
    assert_eq!(up.range_requests().len(), 2);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(common::stored_objects(&cache.store).is_empty());
    assert!(files_under(&cache.store.join("tmp")).is_empty());

    up.put(path, Obj::new(body.clone()).etag("v1").ranges());
    let r = client().get(cache.url(path)).send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap(), body);
}
