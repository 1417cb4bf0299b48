//! Failures never leave a corrupt object and never look like success: an upstream that
//! cuts every attempt mid-object (resumes: `cache_resume.rs`), a by-hash mismatch, an unreachable upstream, kill -9 of the cache during
//! downloads, and an object corrupted on disk.

#[path = "cache_support/mod.rs"]
mod common;

use std::os::unix::fs::FileExt;
use std::time::Duration;

use common::{
    CacheProcess, Obj, Pacing, TestCache, Upstream, client, files_under, sha256_hex,
    stored_objects, synth, wait_for_objects,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_cutting_every_attempt_fails_every_client_stores_nothing_then_next_request_succeeds()
 {
    const SIZE: usize = 4 << 20;
    let up = Upstream::start(Pacing {
        per_response_rate: Some(8 << 20),
        ..Default::default()
    })
    .await;
    let body = synth(10, SIZE);
    let path = "/debian/pool/c/cut/cut_1_amd64.deb";
    up.put(path, Obj::new(body.clone()).cut_after(1 << 20));
    let cache = TestCache::start(&up, |_| {}).await;
    let url = cache.url(path);

    let mut clients = Vec::new();
    for _ in 0..4 {
        let url = url.clone();
        clients.push(tokio::spawn(async move {
            let resp = client().get(&url).send().await.unwrap();
            // The head promised the whole object...
            assert_eq!(resp.content_length(), Some(SIZE as u64));
            // ...and the body must fail rather than end short.
            resp.bytes().await
        }));
    }
    for c in clients {
        assert!(
            c.await.unwrap().is_err(),
            "a cut download must fail at the client"
        );
    }
    // The first request and one refetch per resume attempt (no validator, so no Range),
    // each cut at the same byte: no progress, so the attempts run out.
    let attempts = u64::from(cache.cache.config.upstream_resume_attempts);
    assert_eq!(up.requests(), 1 + attempts);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(stored_objects(&cache.store).is_empty(), "nothing stored");
    assert!(
        files_under(&cache.store.join("tmp")).is_empty(),
        "no temp file left"
    );

    up.put(path, Obj::new(body.clone()));
    let resp = client().get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap(), body);
    assert_eq!(up.requests(), 2 + attempts);
    assert_eq!(cache.settled(1).await.len(), 1);
    assert!(cache.stats().upstream_errors >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_hash_path_with_wrong_content_is_not_stored_and_the_client_sees_a_failure() {
    let up = Upstream::start(Pacing::default()).await;
    let good = synth(11, 100_000);
    let bad = synth(12, 100_000);
    let path = format!(
        "/debian/dists/stable/main/binary-amd64/by-hash/SHA256/{}",
        sha256_hex(&good)
    );
    up.put(&path, Obj::new(bad));
    let cache = TestCache::start(&up, |_| {}).await;
    let resp = client().get(cache.url(&path)).send().await.unwrap();
    assert!(
        resp.bytes().await.is_err(),
        "a body that fails its hash is not delivered whole"
    );
    assert!(stored_objects(&cache.store).is_empty());

    up.put(&path, Obj::new(good.clone()));
    let resp = client().get(cache.url(&path)).send().await.unwrap();
    assert_eq!(resp.bytes().await.unwrap(), good);
    assert_eq!(cache.settled(1).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_is_502_and_upstream_404_is_relayed_not_stored() {
    let up = Upstream::start(Pacing::default()).await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let cache = TestCache::start(&up, |c| {
        c.mirrors
            .insert("gone".into(), format!("http://{closed}/x"));
    })
    .await;
    let resp = client().get(cache.url("/gone/a.deb")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("upstream"), "{v}");

    for _ in 0..2 {
        let resp = client()
            .get(cache.url("/debian/pool/nope.deb"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404);
    }
    assert_eq!(
        up.requests_for("/debian/pool/nope.deb"),
        2,
        "errors are not cached"
    );
    assert!(stored_objects(&cache.store).is_empty());
}

fn stats_json(addr: std::net::SocketAddr) -> serde_json::Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vcluster"))
        .args(["cache", "stats", "--json", "--addr", &addr.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Stats once `objects` reaches `n` (a body's last byte goes out just before its commit).
async fn stats_with_objects(addr: std::net::SocketAddr, n: u64) -> serde_json::Value {
    for _ in 0..100 {
        let st = stats_json(addr);
        if st["objects"] == n {
            return st;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stats_json(addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_during_downloads_then_restart_serves_no_corrupt_object() {
    let up = Upstream::start(Pacing {
        per_response_rate: Some(2 << 20),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mirror = format!("debian={}", up.url("/debian"));
    let args = ["--store", store.to_str().unwrap(), "--mirror", &mirror];

    let done = synth(20, 64 * 1024);
    up.put("/debian/pool/done_1_all.deb", Obj::new(done.clone()));
    let mut bodies = Vec::new();
    for i in 0..4u64 {
        let b = synth(30 + i, 6 << 20); // 3 s each at the fixture's rate
        up.put(
            &format!("/debian/pool/big{i}_1_all.deb"),
            Obj::new(b.clone()),
        );
        bodies.push(b);
    }

    let mut cache = CacheProcess::spawn(&args);
    let got = client()
        .get(cache.url("/debian/pool/done_1_all.deb"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.bytes().await.unwrap(), done);
    wait_for_objects(&store, 1).await;
    let mut inflight = Vec::new();
    for i in 0..4 {
        let url = cache.url(&format!("/debian/pool/big{i}_1_all.deb"));
        inflight.push(tokio::spawn(async move {
            match client().get(&url).send().await {
                Ok(r) => r.bytes().await.map(|b| b.len()).ok(),
                Err(_) => None,
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        !files_under(&store.join("tmp")).is_empty(),
        "downloads were in progress"
    );
    cache.kill9();
    for t in inflight {
        assert_ne!(
            t.await.unwrap(),
            Some(6 << 20),
            "no client got a whole body from a killed cache"
        );
    }
    assert_eq!(
        stored_objects(&store).len(),
        1,
        "only the finished object is stored"
    );

    let cache = CacheProcess::spawn(&args);
    assert!(
        files_under(&store.join("tmp")).is_empty(),
        "restart clears temp files"
    );
    let before = up.requests_for("/debian/pool/done_1_all.deb");
    let got = client()
        .get(cache.url("/debian/pool/done_1_all.deb"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.headers()["x-cache"], "HIT");
    assert_eq!(got.bytes().await.unwrap(), done);
    assert_eq!(up.requests_for("/debian/pool/done_1_all.deb"), before);
    for (i, b) in bodies.iter().enumerate() {
        let got = client()
            .get(cache.url(&format!("/debian/pool/big{i}_1_all.deb")))
            .send()
            .await
            .unwrap();
        assert_eq!(&got.bytes().await.unwrap(), b, "object {i}");
    }
    assert_eq!(stats_with_objects(cache.addr, 5).await["objects"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_corrupted_on_disk_is_dropped_and_fetched_again() {
    let up = Upstream::start(Pacing::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mirror = format!("debian={}", up.url("/debian"));
    let args = ["--store", store.to_str().unwrap(), "--mirror", &mirror];
    let body = synth(40, 300_000);
    let path = "/debian/pool/rot_1_all.deb";
    up.put(path, Obj::new(body.clone()));

    let mut cache = CacheProcess::spawn(&args);
    assert_eq!(
        client()
            .get(cache.url(path))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
        body
    );
    let files = wait_for_objects(&store, 1).await;
    cache.kill9();
    assert_eq!(files.len(), 1);
    // Flip one byte in the middle of the body: same size, wrong content.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&files[0])
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, 150_000).unwrap();
    f.write_all_at(&[b[0] ^ 0xff], 150_000).unwrap();
    drop(f);

    let cache = CacheProcess::spawn(&args);
    let resp = client().get(cache.url(path)).send().await.unwrap();
    assert_eq!(resp.bytes().await.unwrap(), body, "never the corrupt bytes");
    assert_eq!(up.requests_for(path), 2, "fetched again");
    let st = stats_with_objects(cache.addr, 1).await;
    assert_eq!(st["corrupt_dropped"], 1);
    assert_eq!(st["objects"], 1);
}
