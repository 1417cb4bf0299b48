//! The `vcluster cache` command as an operator meets it: a TOML file with flags on top,
//! config errors that name the field, the access log, and a clean stop on SIGTERM.

#[path = "cache_support/mod.rs"]
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{CacheProcess, Obj, Pacing, Upstream, client, files_under};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_access_log_and_clean_sigterm_shutdown() {
    let up = Upstream::start(Pacing {
        per_response_rate: Some(1 << 20),
        ..Default::default()
    })
    .await;
    up.put("/debian/pool/l_1_all.deb", Obj::new(&b"logged"[..]));
    let slow_body = common::synth(90, 3 << 20); // 3 s at the fixture's rate
    up.put("/debian/pool/slow_1_all.deb", Obj::new(slow_body.clone()));
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let log = dir.path().join("access.log");
    let conf = dir.path().join("cache.toml");
    std::fs::write(
        &conf,
        format!(
            "listen = \"127.0.0.1:9\"\nstore = \"{}\"\naccess_log = \"{}\"\nmax_size = \"1GiB\"\n[mirrors]\ndebian = \"{}\"\n",
            store.display(),
            log.display(),
            up.url("/debian")
        ),
    )
    .unwrap();
    // --listen (added by the harness) overrides the file's port 9.
    let mut cache = CacheProcess::spawn(&["-c", conf.to_str().unwrap()]);
    let r = client()
        .get(cache.url("/debian/pool/l_1_all.deb"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap(), &b"logged"[..]);
    let r = client().get(cache.url("/nomirror/x")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines()
            .any(|l| l.contains("GET /debian/pool/l_1_all.deb 200 6 MISS")),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.contains("GET /nomirror/x 404")),
        "{text}"
    );

    // A response in progress when SIGTERM arrives is let finish (within the 5 s grace),
    // then the process exits cleanly, leaving no temp file or partial object.
    let slow = tokio::spawn({
        let url = cache.url("/debian/pool/slow_1_all.deb");
        async move { client().get(&url).send().await.unwrap().bytes().await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = cache.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let started = Instant::now();
    let status = loop {
        if let Some(st) = cache.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no exit 10 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
    let got = slow
        .await
        .unwrap()
        .expect("the response in progress completed");
    assert!(got == slow_body, "whole and correct");
    assert!(files_under(&store.join("tmp")).is_empty());
    let stored = common::stored_objects(&store).len();
    assert!((1..=2).contains(&stored), "{stored} objects");
}

#[test]
fn config_errors_name_the_file_and_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("bad.toml");
    std::fs::write(
        &conf,
        "[mirrors]\ndebian = \"https://deb.example/debian\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vcluster"))
        .args(["cache", "check", "-c"])
        .arg(&conf)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("mirrors.debian"),
        "{err}"
    );

    std::fs::write(&conf, "max_size = \"lots\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vcluster"))
        .args(["cache", "check", "-c"])
        .arg(&conf)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("max_size"), "{err}");

    let out = Command::new(env!("CARGO_BIN_EXE_vcluster"))
        .args([
            "cache",
            "check",
            "--mirror",
            "debian=http://127.0.0.1:1/debian",
            "--max-size",
            "2GiB",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("2147483648") && shown.contains("debian"),
        "{shown}"
    );
}
