//! The real client: apt-get, through the cache as its HTTP proxy, against a small Debian
//! repository built here (dpkg-deb + apt-ftparchive) and served by the upstream fixture.
//! Two clients with private apt state: the second makes zero upstream package requests.
//! `vcluster cache warm` fills the cache with a package closure, resumably.
//!
//! Needs dpkg-deb, apt-ftparchive (Debian: dpkg-dev, apt-utils) and apt-get; skips
//! loudly without them. Changes nothing on the host: every apt directory is private.

#[path = "cache_support/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{TestCache, Upstream};

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Builds `<root>/debian` with three packages (b depends on a) and unsigned indexes.
fn build_repo(root: &Path) -> Vec<String> {
    let deb = root.join("debian");
    let pool = deb.join("pool/main");
    std::fs::create_dir_all(&pool).unwrap();
    let mut names = Vec::new();
    for (name, depends, seed) in [
        ("vc-test-a", "", 1u64),
        ("vc-test-b", "vc-test-a", 2),
        ("vc-test-c", "", 3),
    ] {
        let src = root.join(format!("build-{name}"));
        std::fs::create_dir_all(src.join("DEBIAN")).unwrap();
        let doc = src.join(format!("usr/share/doc/{name}"));
        std::fs::create_dir_all(&doc).unwrap();
        std::fs::write(doc.join("payload"), common::synth(seed, 300_000)).unwrap();
        let dep = if depends.is_empty() {
            String::new()
        } else {
            format!("Depends: {depends}\n")
        };
        std::fs::write(
            src.join("DEBIAN/control"),
            format!(
                "Package: {name}\nVersion: 1.0+test1\nArchitecture: all\nMaintainer: vcluster tests <t@example.invalid>\n{dep}Description: cache test package\n"
            ),
        )
        .unwrap();
        let file = format!("{name}_1.0+test1_all.deb");
        run(Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zgzip", "--build"])
            .arg(&src)
            .arg(pool.join(&file)));
        names.push(format!("/debian/pool/main/{file}"));
    }
    let bin = deb.join("dists/stable/main/binary-all");
    std::fs::create_dir_all(&bin).unwrap();
    let packages = run(Command::new("apt-ftparchive")
        .arg("packages")
        .arg("pool")
        .current_dir(&deb));
    std::fs::write(bin.join("Packages"), packages).unwrap();
    let release = run(Command::new("apt-ftparchive")
        .args([
            "-o",
            "APT::FTPArchive::Release::Suite=stable",
            "-o",
            "APT::FTPArchive::Release::Codename=stable",
            "-o",
            "APT::FTPArchive::Release::Components=main",
            "-o",
            "APT::FTPArchive::Release::Architectures=all amd64 arm64 i386",
            "release",
            "dists/stable",
        ])
        .current_dir(&deb));
    std::fs::write(deb.join("dists/stable/Release"), release).unwrap();
    names
}

/// An apt client whose every directory is private to the test.
struct AptClient {
    root: PathBuf,
    proxy: String,
}

impl AptClient {
    fn new(root: PathBuf, repo_url: &str, proxy: &str) -> AptClient {
        for d in [
            "state/lists/partial",
            "cache/archives/partial",
            "etc/sources.list.d",
            "etc/apt.conf.d",
            "etc/preferences.d",
            "etc/trusted.gpg.d",
            "log",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("status"), "").unwrap();
        std::fs::write(
            root.join("etc/sources.list"),
            format!("deb [trusted=yes] {repo_url} stable main\n"),
        )
        .unwrap();
        AptClient {
            root,
            proxy: proxy.to_owned(),
        }
    }

    fn apt_get(&self, args: &[&str]) -> String {
        let r = |p: &str| self.root.join(p).display().to_string();
        let mut cmd = Command::new("apt-get");
        for o in [
            format!("Dir::State={}", r("state")),
            format!("Dir::State::status={}", r("status")),
            format!("Dir::Cache={}", r("cache")),
            format!("Dir::Etc={}", r("etc")),
            format!("Dir::Etc::SourceList={}", r("etc/sources.list")),
            format!("Dir::Etc::SourceParts={}", r("etc/sources.list.d")),
            format!("Dir::Etc::Parts={}", r("etc/apt.conf.d")),
            format!("Dir::Etc::PreferencesParts={}", r("etc/preferences.d")),
            format!("Dir::Etc::TrustedParts={}", r("etc/trusted.gpg.d")),
            format!("Dir::Log={}", r("log")),
            "Debug::NoLocking=1".into(),
            "APT::Sandbox::User=root".into(),
            "Acquire::Languages=none".into(),
            "Acquire::Retries=0".into(),
            format!("Acquire::http::Proxy={}", self.proxy),
        ] {
            cmd.arg("-o").arg(o);
        }
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        run(&mut cmd)
    }

    fn archive(&self, file: &str) -> PathBuf {
        self.root.join("cache/archives").join(file)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apt_get_through_the_cache_second_client_makes_zero_upstream_package_requests() {
    for tool in ["dpkg-deb", "apt-ftparchive", "apt-get"] {
        if !have(tool) {
            println!(
                "SKIP apt_get_through_the_cache: needs {tool} (apt-get install dpkg-dev apt-utils)"
            );
            return;
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let debs = tokio::task::block_in_place(|| build_repo(&repo));
    let up = Upstream::serve_dir(&repo).await;
    let cache = TestCache::start(&up, |_| {}).await;
    let proxy = format!("http://{}", cache.addr);
    let repo_url = up.url("/debian");

    let mut clients = Vec::new();
    for i in 0..2 {
        let c = AptClient::new(tmp.path().join(format!("client{i}")), &repo_url, &proxy);
        tokio::task::block_in_place(|| {
            c.apt_get(&["update"]);
            c.apt_get(&["install", "--download-only", "-y", "vc-test-b", "vc-test-c"]);
        });
        for deb in &debs {
            let file = deb.rsplit('/').next().unwrap();
            let got = std::fs::read(c.archive(file))
                .unwrap_or_else(|e| panic!("client {i}: {file}: {e}"));
            let want = std::fs::read(repo.join(deb.trim_start_matches('/'))).unwrap();
            assert!(
                got == want,
                "client {i}: {file} differs from the repository's"
            );
        }
        clients.push(c);
        if i == 0 {
            for deb in &debs {
                assert_eq!(up.requests_for(deb), 1, "first client: {deb} fetched once");
            }
        }
        cache.settled(debs.len() + 2).await;
    }
    let log = up.request_log();
    for deb in &debs {
        assert_eq!(
            log[deb.as_str()],
            1,
            "second client made no upstream request for {deb}"
        );
    }
    let package_requests: u64 = log
        .iter()
        .filter(|(p, _)| p.ends_with(".deb"))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(package_requests, debs.len() as u64);
    assert_eq!(log.get("/debian/dists/stable/Release"), Some(&1), "{log:?}");
    let st = cache.stats();
    assert!(st.hits >= debs.len() as u64, "{st:?}");
}

/// Runs `vcluster cache warm` with `args`; (success, stdout, stderr).
fn cache_warm(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vcluster"))
        .args(["cache", "warm"])
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_warm_fetches_the_closure_once_counts_what_is_cached_and_names_unknown_packages() {
    for tool in ["dpkg-deb", "apt-ftparchive", "apt-get"] {
        if !have(tool) {
            println!("SKIP cache_warm: needs {tool} (apt-get install dpkg-dev apt-utils)");
            return;
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let debs = tokio::task::block_in_place(|| build_repo(&repo));
    let (a, b, c) = (&debs[0], &debs[1], &debs[2]);
    let up = Upstream::serve_dir(&repo).await;
    let cache = TestCache::start(&up, |_| {}).await;
    let addr = cache.addr.to_string();
    let sources = format!("deb [trusted=yes] {} stable main", up.url("/debian"));
    let warm = |packages: &str| {
        tokio::task::block_in_place(|| {
            cache_warm(&[
                "--cache",
                &addr,
                "--sources",
                &sources,
                "--packages",
                packages,
            ])
        })
    };

    let (ok, out, err) = warm("vc-test-b");
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains("warmed 2 objects") && out.contains("2 fetched now"),
        "the closure of vc-test-b is a and b: {out}"
    );
    assert!(err.contains("2/2 objects"), "progress: {err}");
    assert_eq!(up.requests_for(a), 1);
    assert_eq!(up.requests_for(b), 1);
    assert_eq!(up.requests_for(c), 0, "not in the closure");
    cache.settled(4).await;

    // Again (as after an interruption): what is cached counts as done, nothing is fetched.
    let (ok, out, err) = warm("vc-test-b");
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains("0 fetched now") && out.contains("2 already cached"),
        "{out}"
    );
    assert_eq!(up.requests_for(a), 1);
    assert_eq!(up.requests_for(b), 1);

    let (ok, out, err) = warm("vc-test-c, vc-test-nope");
    assert!(!ok, "{out}");
    assert!(
        err.contains("unknown packages") && err.contains("vc-test-nope"),
        "{err}"
    );
    assert_eq!(
        up.requests_for(c),
        0,
        "nothing fetched for a list with unknown names"
    );

    // An install from the warm cache: every package is a hit.
    let client = AptClient::new(
        tmp.path().join("client"),
        &up.url("/debian"),
        &format!("http://{addr}"),
    );
    tokio::task::block_in_place(|| {
        client.apt_get(&["update"]);
        client.apt_get(&["install", "--download-only", "-y", "vc-test-b"]);
    });
    assert_eq!(up.requests_for(a), 1);
    assert_eq!(up.requests_for(b), 1);
}
