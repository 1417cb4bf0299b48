//! Concurrent misses for one object make exactly one upstream request, and every waiter
//! streams the bytes as they arrive.

#[path = "cache_support/mod.rs"]
mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{Obj, Pacing, TestCache, Upstream, client, sha256_hex, synth};
use futures_util::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_clients_one_fifty_megabyte_object_one_upstream_request() {
    const SIZE: usize = 50 << 20;
    let up = Upstream::start(Pacing {
        per_response_rate: Some(40 << 20), // ~1.3 s for the whole object
        ..Default::default()
    })
    .await;
    let body = synth(1, SIZE);
    let want = sha256_hex(&body);
    let expected = body.clone();
    up.put("/debian/pool/main/b/big/big_1.0_amd64.deb", Obj::new(body));
    let cache = TestCache::start(&up, |_| {}).await;
    let url = cache.url("/debian/pool/main/b/big/big_1.0_amd64.deb");

    let mut tasks = Vec::new();
    for i in 0..64 {
        let url = url.clone();
        let expected = expected.clone();
        tasks.push(tokio::spawn(async move {
            let resp = client().get(&url).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            // Every body is compared byte for byte as it streams (cheaper than hashing 64
            // copies in a debug build, and as strong); client 0's is hashed as well.
            let mut n = 0usize;
            let mut copy = Vec::new();
            let mut s = resp.bytes_stream();
            while let Some(chunk) = s.next().await {
                let chunk = chunk.unwrap();
                assert!(
                    chunk[..] == expected[n..n + chunk.len()],
                    "bytes differ at {n}"
                );
                n += chunk.len();
                if i == 0 {
                    copy.extend_from_slice(&chunk);
                }
            }
            (n, copy)
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let (n, copy) = t.await.unwrap();
        assert_eq!(n, SIZE);
        if i == 0 {
            assert_eq!(sha256_hex(&copy), want);
        }
    }
    assert_eq!(up.requests(), 1, "exactly one upstream request");
    cache.settled(1).await;
    let st = cache.stats();
    assert_eq!(st.misses, 1);
    assert_eq!(st.misses + st.coalesced + st.hits, 64);
    assert_eq!(st.bytes_from_upstream, SIZE as u64);
    assert_eq!(st.objects, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_stream_before_the_upstream_finishes_and_late_joiners_follow() {
    const SIZE: usize = 8 << 20;
    let up = Upstream::start(Pacing {
        per_response_rate: Some(4 << 20), // 2 s for the object
        ..Default::default()
    })
    .await;
    let body = synth(2, SIZE);
    up.put("/debian/pool/s/slow_1_all.deb", Obj::new(body.clone()));
    let cache = TestCache::start(&up, |_| {}).await;
    let url = cache.url("/debian/pool/s/slow_1_all.deb");

    let started = Instant::now();
    let first = client().get(&url).send().await.unwrap();
    let mut s = first.bytes_stream();
    let chunk = s.next().await.unwrap().unwrap();
    assert!(!chunk.is_empty());
    assert_eq!(
        up.counters().completed.load(Ordering::SeqCst),
        0,
        "the first bytes reached the client while the upstream was still sending"
    );
    assert!(started.elapsed() < Duration::from_millis(1500));

    // A late joiner, a second into the download: gets what is stored, then follows.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let late = client().get(&url).send().await.unwrap();
    assert_eq!(late.headers()["x-cache"], "COALESCED");
    let late_body = late.bytes().await.unwrap();
    assert_eq!(late_body, body);
    let mut rest = chunk.to_vec();
    while let Some(c) = s.next().await {
        rest.extend_from_slice(&c.unwrap());
    }
    assert_eq!(rest, body);
    assert_eq!(up.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_continues_for_others_when_its_first_client_leaves() {
    const SIZE: usize = 4 << 20;
    let up = Upstream::start(Pacing {
        per_response_rate: Some(8 << 20),
        ..Default::default()
    })
    .await;
    let body = synth(3, SIZE);
    up.put("/debian/pool/l/leave_1_all.deb", Obj::new(body.clone()));
    let cache = TestCache::start(&up, |_| {}).await;
    let url = cache.url("/debian/pool/l/leave_1_all.deb");
    let first = client().get(&url).send().await.unwrap();
    let second = tokio::spawn({
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
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(first); // the leader's client hangs up
    assert_eq!(second.await.unwrap(), body);
    // And the object was stored: the next request is a hit.
    cache.settled(1).await;
    let third = client().get(&url).send().await.unwrap();
    assert_eq!(third.headers()["x-cache"], "HIT");
    assert_eq!(third.bytes().await.unwrap(), body);
    assert_eq!(up.requests(), 1);
}
