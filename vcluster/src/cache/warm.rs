//! `vcluster cache warm`: fills a site's cache with the closure of a package list before
//! installs, so that the installs themselves are all hits.
//!
//! The closure is resolved the way apt resolves it, by apt itself: a throw-away apt root
//! (every `Dir::` private, an empty dpkg status, so the closure is the whole of what a
//! fresh node would install) runs `apt-get update` and `apt-get install --print-uris`
//! through the cache as its proxy, which also puts the indexes in the cache. Each package
//! is then checked with a cache-only HEAD (`Cache-Control: only-if-cached`: 200 if stored,
//! 504 if not), and fetched through the cache if missing, a bounded number at a time, its
//! size and SHA-256 checked against the index's. What is already cached counts as done, so
//! an interrupted warm-up started again fetches only the rest.
//!
//! This module runs apt and talks HTTP to the cache; it never touches the cache's store.

use std::collections::BTreeSet;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

/// Why a warm-up failed.
#[derive(Debug, thiserror::Error)]
pub enum WarmError {
    #[error("apt-get is not installed: `cache warm` resolves the closure with apt")]
    NoApt,
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no packages given")]
    NoPackages,
    #[error("{what}: {detail}")]
    Apt { what: String, detail: String },
    #[error("unknown packages (in no index of the sources): {}", .0.join(", "))]
    UnknownPackages(Vec<String>),
    #[error("apt-get --print-uris line {line}: cannot parse {text:?}")]
    PrintUris { line: usize, text: String },
    #[error("{failed} of {total} packages could not be fetched through the cache; first: {first}")]
    Fetch {
        failed: usize,
        total: usize,
        first: String,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// What to warm and where.
#[derive(Debug, Clone)]
pub struct WarmPlan {
    /// The cache, `host:port`.
    pub cache: String,
    /// sources.list lines.
    pub sources: String,
    pub packages: Vec<String>,
    pub concurrency: usize,
    pub no_recommends: bool,
}

/// One package file apt would download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uri {
    pub url: String,
    pub size: u64,
    /// Lowercase hex SHA-256, when the index gives one.
    pub sha256: Option<String>,
}

/// What a warm-up did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WarmReport {
    pub objects: usize,
    pub bytes: u64,
    pub already_cached: usize,
    pub fetched: usize,
    pub fetched_bytes: u64,
}

/// `--sources`: a file of sources.list lines if `arg` names one, else the line itself.
pub fn read_sources(arg: &str) -> Result<String, WarmError> {
    let p = Path::new(arg);
    if p.is_file() {
        return std::fs::read_to_string(p).map_err(|source| WarmError::Read {
            path: p.to_owned(),
            source,
        });
    }
    Ok(format!("{}\n", arg.trim()))
}

/// `--packages`: a file (one or more names a line, `#` comments) if `arg` names one,
/// else a comma- or space-separated list.
pub fn read_packages(arg: &str) -> Result<Vec<String>, WarmError> {
    let p = Path::new(arg);
    let text = if p.is_file() {
        std::fs::read_to_string(p).map_err(|source| WarmError::Read {
            path: p.to_owned(),
            source,
        })?
    } else {
        arg.to_owned()
    };
    let names: Vec<String> = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .flat_map(|l| l.split([',', ' ', '\t']))
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if names.is_empty() {
        return Err(WarmError::NoPackages);
    }
    Ok(names)
}

/// Parses `apt-get --print-uris` output: `'URL' FILE SIZE HASH` lines.
pub fn parse_print_uris(out: &str) -> Result<Vec<Uri>, WarmError> {
    let mut uris = Vec::new();
    for (i, line) in out.lines().enumerate() {
        if !line.starts_with('\'') {
            continue;
        }
        let bad = || WarmError::PrintUris {
            line: i + 1,
            text: line.to_owned(),
        };
        let (url, rest) = line[1..].split_once('\'').ok_or_else(bad)?;
        let mut fields = rest.split_whitespace();
        let _file = fields.next().ok_or_else(bad)?;
        let size = fields.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
        let sha256 = fields
            .next()
            .and_then(|h| h.strip_prefix("SHA256:"))
            .map(str::to_ascii_lowercase);
        uris.push(Uri {
            url: url.to_owned(),
            size,
            sha256,
        });
    }
    Ok(uris)
}

/// `E: Unable to locate package X` (and apt's other ways of saying it) in apt's stderr.
fn unknown_packages(stderr: &str) -> Vec<String> {
    let mut out = BTreeSet::new();
    for line in stderr.lines() {
        for prefix in [
            "E: Unable to locate package ",
            "E: Package '",
            "E: Couldn't find any package by glob '",
            "E: Couldn't find any package by regex '",
        ] {
            if let Some(rest) = line.strip_prefix(prefix) {
                let name = rest.split(['\'', ' ']).next().unwrap_or(rest);
                if prefix != "E: Package '" || rest.contains("has no installation candidate") {
                    out.insert(name.to_owned());
                }
            }
        }
    }
    out.into_iter().collect()
}

/// A private apt root.
struct AptRoot {
    dir: tempfile::TempDir,
    proxy: String,
}

impl AptRoot {
    fn new(sources: &str, cache: &str) -> Result<AptRoot, WarmError> {
        let dir = tempfile::Builder::new()
            .prefix("vcluster-warm-")
            .tempdir()?;
        for d in [
            "state/lists/partial",
            "cache/archives/partial",
            "etc/sources.list.d",
            "etc/apt.conf.d",
            "etc/preferences.d",
            "etc/trusted.gpg.d",
            "log",
        ] {
            std::fs::create_dir_all(dir.path().join(d))?;
        }
        std::fs::write(dir.path().join("status"), "")?;
        std::fs::write(dir.path().join("etc/sources.list"), sources)?;
        Ok(AptRoot {
            dir,
            proxy: format!("http://{cache}"),
        })
    }

    fn apt_get(&self, args: &[&str]) -> Command {
        let r = |p: &str| self.dir.path().join(p).display().to_string();
        let mut cmd = Command::new("apt-get");
        for o in [
            format!("Dir::State={}", r("state")),
            format!("Dir::State::status={}", r("status")),
            format!("Dir::Cache={}", r("cache")),
            format!("Dir::Etc::SourceList={}", r("etc/sources.list")),
            format!("Dir::Etc::SourceParts={}", r("etc/sources.list.d")),
            format!("Dir::Etc::Parts={}", r("etc/apt.conf.d")),
            format!("Dir::Etc::PreferencesParts={}", r("etc/preferences.d")),
            format!("Dir::Log={}", r("log")),
            "Debug::NoLocking=1".into(),
            "APT::Sandbox::User=root".into(),
            "Acquire::Languages=none".into(),
            format!("Acquire::http::Proxy={}", self.proxy),
        ] {
            cmd.arg("-o").arg(o);
        }
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    }
}

fn run(mut cmd: Command, what: &str) -> Result<(String, String), WarmError> {
    let out = cmd.output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            WarmError::NoApt
        } else {
            WarmError::Io(e)
        }
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(WarmError::Apt {
            what: what.to_owned(),
            detail: stderr.trim().to_owned(),
        });
    }
    Ok((stdout, stderr))
}

/// Resolves the closure of `plan.packages` with apt through the cache (blocking).
pub fn resolve(plan: &WarmPlan) -> Result<Vec<Uri>, WarmError> {
    let root = AptRoot::new(&plan.sources, &plan.cache)?;
    run(
        root.apt_get(&["update", "-qq"]),
        "apt-get update through the cache",
    )?;
    let mut args = vec!["install", "--print-uris", "-qq", "-y"];
    if plan.no_recommends {
        args.push("--no-install-recommends");
    }
    args.extend(plan.packages.iter().map(String::as_str));
    match run(root.apt_get(&args), "apt-get install --print-uris") {
        Ok((stdout, _)) => parse_print_uris(&stdout),
        Err(WarmError::Apt { what, detail }) => {
            let unknown = unknown_packages(&detail);
            if unknown.is_empty() {
                Err(WarmError::Apt { what, detail })
            } else {
                Err(WarmError::UnknownPackages(unknown))
            }
        }
        Err(e) => Err(e),
    }
}

/// Counters shared by the fetches, for the progress line.
#[derive(Default)]
struct Progress {
    done: AtomicU64,
    bytes: AtomicU64,
    cached: AtomicU64,
}

/// Makes sure every URI is in the cache: a cache-only HEAD, then a GET if it is not.
pub async fn fill(plan: &WarmPlan, uris: Vec<Uri>) -> Result<WarmReport, WarmError> {
    let client = reqwest::Client::builder()
        .proxy(
            reqwest::Proxy::http(format!("http://{}", plan.cache))
                .map_err(|e| std::io::Error::other(format!("cache address {}: {e}", plan.cache)))?,
        )
        .build()
        .map_err(std::io::Error::other)?;
    let total = uris.len();
    let total_bytes: u64 = uris.iter().map(|u| u.size).sum();
    let progress = Arc::new(Progress::default());
    let limit = Arc::new(Semaphore::new(plan.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for uri in uris {
        let client = client.clone();
        let progress = progress.clone();
        let limit = limit.clone();
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await.expect("never closed");
            let r = warm_one(&client, &uri).await;
            progress.done.fetch_add(1, Ordering::Relaxed);
            progress.bytes.fetch_add(uri.size, Ordering::Relaxed);
            if matches!(r, Ok(true)) {
                progress.cached.fetch_add(1, Ordering::Relaxed);
            }
            (uri, r)
        });
    }
    let tty = std::io::stderr().is_terminal();
    let show = |p: &Progress, end: bool| {
        let line = format!(
            "warm: {}/{total} objects, {:.1}/{:.1} MB ({} already cached)",
            p.done.load(Ordering::Relaxed),
            p.bytes.load(Ordering::Relaxed) as f64 / 1e6,
            total_bytes as f64 / 1e6,
            p.cached.load(Ordering::Relaxed)
        );
        let mut err = std::io::stderr().lock();
        if tty {
            let _ = write!(err, "\r{line}\x1b[K{}", if end { "\n" } else { "" });
        } else {
            let _ = writeln!(err, "{line}");
        }
    };
    let mut report = WarmReport {
        objects: total,
        bytes: total_bytes,
        ..Default::default()
    };
    let mut failures = Vec::new();
    let mut last_shown = Instant::now();
    while let Some(joined) = tasks.join_next().await {
        let (uri, r) = joined.map_err(std::io::Error::other)?;
        match r {
            Ok(true) => report.already_cached += 1,
            Ok(false) => {
                report.fetched += 1;
                report.fetched_bytes += uri.size;
            }
            Err(e) => failures.push(format!("{}: {e}", uri.url)),
        }
        if tty || last_shown.elapsed() > Duration::from_secs(2) || tasks.is_empty() {
            show(&progress, tasks.is_empty());
            last_shown = Instant::now();
        }
    }
    if let Some(first) = failures.first() {
        return Err(WarmError::Fetch {
            failed: failures.len(),
            total,
            first: first.clone(),
        });
    }
    Ok(report)
}

/// `Ok(true)`: it was cached already; `Ok(false)`: fetched now.
async fn warm_one(client: &reqwest::Client, uri: &Uri) -> Result<bool, String> {
    let head = client
        .head(&uri.url)
        .header("cache-control", "only-if-cached")
        .send()
        .await
        .map_err(|e| format!("HEAD through the cache: {e}"))?;
    if head.status() == reqwest::StatusCode::OK {
        return Ok(true);
    }
    let mut resp = client
        .get(&uri.url)
        .send()
        .await
        .map_err(|e| format!("GET through the cache: {e}"))?;
    if resp.status() != reqwest::StatusCode::OK {
        return Err(format!("the cache answered {}", resp.status()));
    }
    let mut hasher = Sha256::new();
    let mut got = 0u64;
    while let Some(chunk) = resp.chunk().await.map_err(|e| format!("body: {e}"))? {
        hasher.update(&chunk);
        got += chunk.len() as u64;
    }
    if got != uri.size {
        return Err(format!("{got} bytes, the index says {}", uri.size));
    }
    let digest = super::store::hex(&hasher.finalize());
    if let Some(want) = &uri.sha256
        && *want != digest
    {
        return Err(format!("SHA-256 {digest}, the index says {want}"));
    }
    Ok(false)
}

/// Resolves and fills: the whole warm-up.
pub async fn warm(plan: WarmPlan) -> Result<WarmReport, WarmError> {
    let p = plan.clone();
    let uris = tokio::task::spawn_blocking(move || resolve(&p))
        .await
        .map_err(std::io::Error::other)??;
    fill(&plan, uris).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn print_uris_lines_parse_and_other_lines_are_skipped() {
        let out = "Reading package lists...\n\
            'http://h/debian/pool/main/a_1.0_all.deb' a_1.0_all.deb 1234 SHA256:ABcd\n\
            'http://h/debian/pool/main/b%2b_1_all.deb' b+_1_all.deb 99 MD5Sum:00\n";
        let uris = parse_print_uris(out).unwrap();
        assert_eq!(uris.len(), 2);
        assert_eq!(uris[0].url, "http://h/debian/pool/main/a_1.0_all.deb");
        assert_eq!(uris[0].size, 1234);
        assert_eq!(uris[0].sha256.as_deref(), Some("abcd"));
        assert_eq!(uris[1].sha256, None);
        assert!(matches!(
            parse_print_uris("'http://h/x' x notasize\n"),
            Err(WarmError::PrintUris { line: 1, .. })
        ));
    }

    #[test]
    fn unknown_packages_are_named_from_apts_errors() {
        let err = "E: Unable to locate package nope\nE: Unable to locate package zilch\n\
                   E: Package 'gone' has no installation candidate\n";
        assert_eq!(unknown_packages(err), ["gone", "nope", "zilch"]);
        assert!(unknown_packages("E: Broken packages\n").is_empty());
    }

    #[test]
    fn package_lists_split_on_commas_spaces_and_lines_without_comments() {
        assert_eq!(read_packages("a, b c").unwrap(), ["a", "b", "c"]);
        assert!(matches!(read_packages(" , "), Err(WarmError::NoPackages)));
    }
}
