//! What the provisioning tests, the demo and `bench/install/run` share: the assets of
//! `scripts/provision-assets`, the origin repository (a distant mirror in the WAN's
//! namespace, served by python's http.server), a site's `vcluster cache` in front of it,
//! and reading what the origin served from its access log.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{Process, Topology, bin_path, wait_until};

/// The origin repository's address, in the WAN's namespace (the controller's address).
pub const ORIGIN: &str = "10.254.0.254:8080";

/// The frame overhead of a full TCP segment on the WAN links: Ethernet 14, IPv4 20, TCP
/// 20 + 12 (timestamps) bytes around 1448 of payload at MTU 1500.
pub const TCP_FRAME_OVERHEAD: u64 = 14 + 20 + 32;

/// The assets of `scripts/provision-assets` (`VC_PROVISION_DIR` or target/provision), or
/// what is missing.
pub fn assets() -> Result<PathBuf, String> {
    let dir = std::env::var_os("VC_PROVISION_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/provision"));
    for f in [
        "boot/vmlinuz",
        "boot/installer.img",
        "origin/dists/bookworm/InRelease",
    ] {
        if !dir.join(f).exists() {
            return Err(format!(
                "{} is missing: run scripts/provision-assets",
                dir.join(f).display()
            ));
        }
    }
    Ok(dir)
}

/// Site `i`'s package cache, `vcluster cache serve` on 127.0.0.1:3142 of its host, with
/// `/debian` and `/provision` mapped to the origin; waits until it listens.
pub fn site_cache(topo: &Topology, i: usize, store: &Path) -> Process {
    let mut cache = topo.spawn(
        topo.host(i),
        &format!("cache{i}"),
        &[
            bin_path("vcluster").display().to_string(),
            "cache".into(),
            "serve".into(),
            "--listen".into(),
            "127.0.0.1:3142".into(),
            "--store".into(),
            store.display().to_string(),
            "--mirror".into(),
            format!("debian=http://{ORIGIN}/debian"),
            "--mirror".into(),
            format!("provision=http://{ORIGIN}/provision"),
        ],
    );
    wait_until("a site cache listens", Duration::from_secs(10), || {
        cache.assert_running();
        cache.log().contains("vcluster cache listening on")
    });
    cache
}

/// The origin repository: `/debian` is the assets' origin/, `/provision` their boot/.
pub struct Origin {
    pub process: Process,
    /// What it serves.
    pub root: PathBuf,
}

impl Origin {
    /// Starts it in the WAN's namespace and waits until it listens.
    pub fn start(topo: &Topology, assets: &Path) -> Origin {
        let root = topo.dir().join("origin-root");
        std::fs::create_dir_all(&root).expect("the origin's root");
        for (link, to) in [("debian", "origin"), ("provision", "boot")] {
            let link = root.join(link);
            if !link.exists() {
                std::os::unix::fs::symlink(assets.join(to), &link).expect("the origin's links");
            }
        }
        let (ip, port) = ORIGIN.split_once(':').expect("ip:port");
        let mut process = Process::spawn(
            "origin repository",
            topo.wan().command(
                "python3",
                [
                    "-m",
                    "http.server",
                    port,
                    // Keep-alive, as Debian's mirrors: a cache's misses share connections
                    // (HTTP/1.0 made each a new connection, paying its handshake and slow
                    // start across the WAN).
                    "--protocol",
                    "HTTP/1.1",
                    "--bind",
                    ip,
                    "--directory",
                    root.to_str().expect("a UTF-8 path"),
                ],
            ),
            topo.dir().join("origin.log"),
        );
        wait_until("the origin listens", Duration::from_secs(10), || {
            process.assert_running();
            process.log().contains("Serving HTTP")
        });
        Origin { process, root }
    }

    /// Paths it answered 200 for, with how many times.
    pub fn fetches(&self) -> BTreeMap<String, usize> {
        origin_fetches(&self.process.log())
    }

    /// The size of a path it serves (0 for one it does not have).
    pub fn size(&self, path: &str) -> u64 {
        let path = path.split('?').next().unwrap_or(path);
        let rel = percent_decode(path.trim_start_matches('/'));
        std::fs::metadata(self.root.join(rel))
            .map(|m| m.len())
            .unwrap_or(0)
    }
}

/// Paths python's access log shows answered 200, with how many times.
pub fn origin_fetches(log: &str) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for line in log.lines() {
        let Some(rest) = line.split("\"GET ").nth(1) else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let (Some(path), Some(_http), Some(status)) = (words.next(), words.next(), words.next())
        else {
            continue;
        };
        if status == "200" {
            *m.entry(path.to_string()).or_insert(0) += 1;
        }
    }
    m
}

/// `%2B` -> `+`: a request path as the file's name.
pub fn percent_decode(path: &str) -> String {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_paths_python_answered() {
        let log = "10.1.0.254 - - [07/Dec/2026 09:00:00] \"GET /debian/pool/main/a%2Bb.deb HTTP/1.1\" 200 -\n\
                   10.1.0.254 - - [07/Dec/2026 09:00:01] \"GET /debian/x HTTP/1.1\" 404 -\n\
                   10.1.0.254 - - [07/Dec/2026 09:00:02] \"GET /debian/pool/main/a%2Bb.deb HTTP/1.1\" 200 -\n";
        let m = origin_fetches(log);
        assert_eq!(m.len(), 1);
        assert_eq!(m["/debian/pool/main/a%2Bb.deb"], 2);
        assert_eq!(percent_decode("pool/a%2Bb%zz"), "pool/a+b%zz");
    }
}
