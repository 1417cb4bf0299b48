//! Policy as the upstream sees it: indexes revalidated (304 and changed) after their
//! freshness, dependents following their Release file, packages never revalidated,
//! revalidations single-flight, and LRU eviction under a small size limit.

#[path = "cache_support/mod.rs"]
mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Obj, Pacing, TestCache, Upstream, client, synth};

async fn get(cache: &TestCache, path: &str) -> (String, bytes::Bytes) {
    let r = client().get(cache.url(path)).send().await.unwrap();
    assert_eq!(r.status(), 200, "{path}");
    let label = r.headers()["x-cache"].to_str().unwrap().to_owned();
    (label, r.bytes().await.unwrap())
}

const INRELEASE: &str = "/debian/dists/stable/InRelease";
const PACKAGES: &str = "/debian/dists/stable/main/binary-amd64/Packages";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexes_revalidate_with_304_and_with_changes_and_dependents_follow_their_release() {
    let up = Upstream::start(Pacing::default()).await;
    up.put(INRELEASE, Obj::new(&b"release v1"[..]).etag("r1"));
    up.put(PACKAGES, Obj::new(&b"packages v1"[..]).etag("p1"));
    up.put("/debian/pool/a_1_all.deb", Obj::new(synth(60, 5000)));
    let cache = TestCache::start(&up, |c| c.fresh_secs = 1).await;

    assert_eq!(get(&cache, INRELEASE).await.0, "MISS");
    assert_eq!(get(&cache, PACKAGES).await.0, "MISS");
    assert_eq!(get(&cache, "/debian/pool/a_1_all.deb").await.0, "MISS");
    cache.settled(3).await;
    assert_eq!(get(&cache, INRELEASE).await.0, "HIT");
    assert_eq!(get(&cache, PACKAGES).await.0, "HIT");
    assert_eq!(up.requests(), 3);

    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Past its freshness, the Release file is asked about; unchanged: 304.
    let (label, body) = get(&cache, INRELEASE).await;
    assert_eq!(
        (label.as_str(), &body[..]),
        ("REVALIDATED", &b"release v1"[..])
    );
    assert_eq!(up.counters().not_modified.load(Ordering::SeqCst), 1);
    // The Packages file follows its unchanged Release: no request of its own.
    assert_eq!(get(&cache, PACKAGES).await.0, "HIT");
    // A package is never revalidated.
    assert_eq!(get(&cache, "/debian/pool/a_1_all.deb").await.0, "HIT");
    assert_eq!(up.requests(), 4);

    // The repository moves on: new Release, new Packages.
    up.put(INRELEASE, Obj::new(&b"release v2"[..]).etag("r2"));
    up.put(PACKAGES, Obj::new(&b"packages v2"[..]).etag("p2"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (label, body) = get(&cache, INRELEASE).await;
    assert_eq!((label.as_str(), &body[..]), ("MISS", &b"release v2"[..]));
    // Having served the new Release, the cache must not serve the old Packages.
    let (_, body) = get(&cache, PACKAGES).await;
    assert_eq!(&body[..], b"packages v2");
    assert_eq!(up.requests_for(PACKAGES), 2);
    assert_eq!(up.requests_for("/debian/pool/a_1_all.deb"), 1);
    assert_eq!(cache.stats().revalidations, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_revalidations_make_one_conditional_request() {
    let up = Upstream::start(Pacing {
        rtt: Duration::from_millis(100),
        ..Default::default()
    })
    .await;
    up.put(INRELEASE, Obj::new(&b"release"[..]).etag("r1"));
    let cache = TestCache::start(&up, |c| c.fresh_secs = 1).await;
    get(&cache, INRELEASE).await;
    cache.settled(1).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let url = cache.url(INRELEASE);
        tasks.push(tokio::spawn(async move {
            client()
                .get(&url)
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(&t.await.unwrap()[..], b"release");
    }
    assert_eq!(up.requests(), 2);
    assert_eq!(up.counters().conditional.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_keeps_the_store_under_its_limit_least_recently_used_first_never_a_read_object() {
    const MB: usize = 1 << 20;
    let up = Upstream::start(Pacing::default()).await;
    up.put("/debian/pool/big.deb", Obj::new(synth(70, 64 * MB)));
    for (i, name) in ["b", "c", "d"].iter().enumerate() {
        up.put(
            &format!("/debian/pool/{name}.deb"),
            Obj::new(synth(71 + i as u64, 4 * MB)),
        );
    }
    let cache = TestCache::start(&up, |c| {
        c.max_size = vcluster::cache::config::ByteSize(70 * MB as u64)
    })
    .await;
    get(&cache, "/debian/pool/big.deb").await;
    cache.settled(1).await;

    // A slow reader holds the big object open (it is the least recently used one).
    let mut reader = client()
        .get(cache.url("/debian/pool/big.deb"))
        .send()
        .await
        .unwrap();
    let first = reader.chunk().await.unwrap().unwrap();
    get(&cache, "/debian/pool/b.deb").await;
    cache.settled(2).await;
    get(&cache, "/debian/pool/c.deb").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // big (64) + b (4) + c (4) do not fit in 70: b went, not the object being read (64 MB
    // is far more than socket buffers hold, so the reader still has most of it to read).
    let st = cache.stats();
    assert!(st.stored_bytes <= st.max_bytes, "{st:?}");
    assert_eq!(st.evictions, 1, "{st:?}");
    assert_eq!(get(&cache, "/debian/pool/big.deb").await.0, "HIT");
    let mut rest = first.to_vec();
    while let Some(c) = reader.chunk().await.unwrap() {
        rest.extend_from_slice(&c);
    }
    assert_eq!(rest.len(), 64 * MB);
    assert_eq!(get(&cache, "/debian/pool/c.deb").await.0, "HIT");
    assert_eq!(get(&cache, "/debian/pool/b.deb").await.0, "MISS");
    assert_eq!(up.requests_for("/debian/pool/b.deb"), 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let st = cache.stats();
    assert!(st.stored_bytes <= st.max_bytes, "{st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_larger_than_the_store_is_served_but_not_stored() {
    let up = Upstream::start(Pacing::default()).await;
    let body = synth(80, 3 << 20);
    up.put("/debian/pool/huge.deb", Obj::new(body.clone()));
    let cache = TestCache::start(&up, |c| {
        c.max_size = vcluster::cache::config::ByteSize(1 << 20)
    })
    .await;
    assert_eq!(get(&cache, "/debian/pool/huge.deb").await.1, body);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(common::stored_objects(&cache.store).is_empty());
    assert_eq!(cache.stats().not_stored, 1);
    assert!(common::files_under(&cache.store.join("tmp")).is_empty());
}
