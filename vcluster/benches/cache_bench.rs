//! The package-cache benchmark: N = 1, 8, 32, 64 clients each download the same
//! synthetic package set through a cache, from an upstream behind a WAN-like path (one
//! round trip before each response and each new connection, a shared rate limit), for
//! this cache, Squid with its default settings, Squid tuned, and apt-cacher-ng, all in
//! the same run. Reports per N the bytes fetched from upstream (as a multiple of the
//! package set) and the wall time, then a warm run (everything cached) for hit throughput.
//!
//! Run it with `bench/cache/run` (see `--help`). Needs root for Squid (it drops to the
//! `proxy` user) and skips what is not installed, saying so. Leaves nothing running: every
//! proxy is a child process killed by a drop guard, every directory a temporary one.

#[path = "../tests/cache_support/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Obj, Pacing, Upstream, synth};

struct Opts {
    total_mb: u64,
    files: usize,
    clients: Vec<usize>,
    rtt_ms: u64,
    link_mbit: u64,
    cap_multiple: f64,
    run_timeout: u64,
    proxies: Vec<String>,
    /// Warm runs after the largest N (each proxy): the table gives their median and range.
    warm_runs: usize,
    out: Option<PathBuf>,
}

const HELP: &str = "cache_bench: this cache vs Squid (default, tuned) vs apt-cacher-ng

options (defaults in brackets):
  --total-mb N       size of the package set in MB [500]
  --files N          number of package files [400]
  --clients LIST     comma-separated client counts [1,8,32,64]
  --rtt-ms N         round trip time of the upstream path [20]
  --link-mbit N      upstream link rate, shared by all connections [200]
  --cap N            abort a run once upstream bytes exceed N x the set [4]
  --run-timeout S    abort a run after S seconds [600]
  --proxies LIST     subset of vcluster,squid-default,squid-tuned,apt-cacher-ng [all],
                     and vcluster-hyper (this cache with sendfile = false)
  --warm-runs N      warm runs after the largest N; median and range reported [1]
  --quick            150 MB in 200 files, N = 64 only, 5 warm runs, and the proxies
                     with a warm run (vcluster,vcluster-hyper,squid-tuned,
                     apt-cacher-ng); later options override these
  --out FILE         write the markdown report here [bench/results/cache-<date>.md]";

fn parse_opts() -> Opts {
    let mut o = Opts {
        total_mb: 500,
        files: 400,
        clients: vec![1, 8, 32, 64],
        rtt_ms: 20,
        link_mbit: 200,
        cap_multiple: 4.0,
        run_timeout: 600,
        proxies: ["vcluster", "squid-default", "squid-tuned", "apt-cacher-ng"]
            .map(String::from)
            .to_vec(),
        warm_runs: 1,
        out: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--total-mb" => o.total_mb = val().parse().expect("--total-mb"),
            "--files" => o.files = val().parse().expect("--files"),
            "--clients" => {
                o.clients = val()
                    .split(',')
                    .map(|s| s.parse().expect("--clients"))
                    .collect()
            }
            "--rtt-ms" => o.rtt_ms = val().parse().expect("--rtt-ms"),
            "--link-mbit" => o.link_mbit = val().parse().expect("--link-mbit"),
            "--cap" => o.cap_multiple = val().parse().expect("--cap"),
            "--run-timeout" => o.run_timeout = val().parse().expect("--run-timeout"),
            "--proxies" => o.proxies = val().split(',').map(String::from).collect(),
            "--warm-runs" => o.warm_runs = val().parse().expect("--warm-runs"),
            "--quick" => {
                o.total_mb = 150;
                o.files = 200;
                o.clients = vec![64];
                o.warm_runs = 5;
                o.proxies = ["vcluster", "vcluster-hyper", "squid-tuned", "apt-cacher-ng"]
                    .map(String::from)
                    .to_vec();
            }
            "--out" => o.out = Some(PathBuf::from(val())),
            "--bench" => {} // passed by `cargo bench`
            "-h" | "--help" => {
                println!("{HELP}");
                std::process::exit(0);
            }
            other => panic!("unknown option {other}\n{HELP}"),
        }
    }
    o
}

/// Package sizes like a distribution's: log-normal (median ~250 kB, long tail to tens of
/// MB), scaled so they add up to the requested total. Deterministic.
fn package_sizes(files: usize, total: u64) -> Vec<u64> {
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut uniform = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let raw: Vec<f64> = (0..files)
        .map(|_| {
            let z = (-2.0 * uniform().ln()).sqrt() * (2.0 * std::f64::consts::PI * uniform()).cos();
            (250_000f64.ln() + 1.6 * z).exp().clamp(2_000.0, 80e6)
        })
        .collect();
    let sum: f64 = raw.iter().sum();
    raw.iter()
        .map(|r| ((r / sum) * total as f64).max(1000.0) as u64)
        .collect()
}

fn free_port() -> u16 {
    low_port_listener().local_addr().unwrap().port()
}

/// A listener on a free loopback port below 32768: apt-cacher-ng 3.7 fails to bind
/// ("Error resolving address for binding") to a Port, and refuses AllowUserPorts, above
/// 32767, where the kernel's ephemeral ports are.
fn low_port_listener() -> std::net::TcpListener {
    let start = 20000 + (std::process::id() % 10000) as u16;
    (0..12000u16)
        .map(|i| 20000 + (start - 20000 + i) % 12000)
        .find_map(|p| std::net::TcpListener::bind(("127.0.0.1", p)).ok())
        .expect("no free loopback port in 20000..32000")
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A proxy under test: a child process and its private directory.
struct Proxy {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_listening(addr: SocketAddr, child: &mut Child) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(st)) = child.try_wait() {
            return Err(format!("exited early: {st}"));
        }
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err("not listening after 30 s".into())
}

fn start_proxy(kind: &str, upstream_port: u16) -> Result<Proxy, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let d = dir.path();
    let child = match kind {
        "vcluster" | "vcluster-hyper" => Command::new(env!("CARGO_BIN_EXE_vcluster"))
            .args([
                "cache",
                "serve",
                "--listen",
                &addr.to_string(),
                "--max-size",
                "50GiB",
            ])
            .args(if kind == "vcluster-hyper" {
                // Hits through hyper too: the cache as it was before sendfile.
                std::fs::write(d.join("hyper.toml"), "sendfile = false\n").unwrap();
                vec!["-c".into(), d.join("hyper.toml").display().to_string()]
            } else {
                vec![]
            })
            .arg("--store")
            .arg(d.join("store"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?,
        "squid-default" | "squid-tuned" => {
            if !have("squid") {
                return Err("squid is not installed (apt-get install squid)".into());
            }
            if !is_root() {
                return Err("squid needs root here".into());
            }
            // Debian's shipped squid.conf, as far as it matters, plus a disk cache (Debian
            // ships none, and without one Squid keeps only objects up to 512 kB in memory)
            // and private paths. "tuned" adds what a package cache needs.
            let mut conf = format!(
                "acl Safe_ports port 1025-65535\n\
                 http_access deny !Safe_ports\n\
                 http_access allow localhost\n\
                 http_access deny all\n\
                 http_port 127.0.0.1:{port}\n\
                 cache_dir ufs {spool} 50000 16 256\n\
                 coredump_dir {spool}\n\
                 pid_filename {dir}/squid.pid\n\
                 access_log none\n\
                 cache_log {dir}/cache.log\n\
                 cache_store_log none\n\
                 shutdown_lifetime 0 seconds\n\
                 refresh_pattern . 0 20% 4320\n",
                spool = d.join("spool").display(),
                dir = d.display(),
            );
            if kind == "squid-tuned" {
                conf.push_str(
                    "maximum_object_size 1024 MB\n\
                     collapsed_forwarding on\n\
                     cache_mem 1024 MB\n\
                     maximum_object_size_in_memory 64 MB\n\
                     quick_abort_min -1 KB\n\
                     read_ahead_gap 1 MB\n",
                );
            }
            std::fs::create_dir_all(d.join("spool")).unwrap();
            std::fs::write(d.join("squid.conf"), conf).unwrap();
            let _ = Command::new("chown")
                .args(["-R", "proxy:proxy"])
                .arg(d)
                .status();
            let conf = d.join("squid.conf");
            let z = Command::new("squid")
                .args(["-N", "-z", "-f"])
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map_err(|e| e.to_string())?;
            if !z.success() {
                return Err(format!(
                    "squid -z failed; see {}",
                    d.join("cache.log").display()
                ));
            }
            Command::new("squid")
                .args(["-N", "-f"])
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| e.to_string())?
        }
        "apt-cacher-ng" => {
            if !have("apt-cacher-ng") {
                return Err(
                    "apt-cacher-ng is not installed (apt-get install apt-cacher-ng)".into(),
                );
            }
            std::fs::create_dir_all(d.join("conf")).unwrap();
            std::fs::create_dir_all(d.join("cache")).unwrap();
            std::fs::create_dir_all(d.join("log")).unwrap();
            std::fs::write(
                d.join("conf/acng.conf"),
                format!(
                    "CacheDir: {cache}\nLogDir: {log}\nPort: {port}\nBindAddress: 127.0.0.1\n\
                     ForeGround: 1\nPidFile: {dir}/acng.pid\nSocketPath: {dir}/acng.sock\n\
                     AllowUserPorts: {upstream_port}\nExThreshold: 4\n",
                    cache = d.join("cache").display(),
                    log = d.join("log").display(),
                    dir = d.display(),
                ),
            )
            .unwrap();
            Command::new("apt-cacher-ng")
                .arg("-c")
                .arg(d.join("conf"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| e.to_string())?
        }
        other => return Err(format!("unknown proxy {other}")),
    };
    let mut proxy = Proxy {
        child,
        addr,
        _dir: dir,
    };
    // On failure the guard kills the child: nothing is left running.
    wait_listening(addr, &mut proxy.child)?;
    Ok(proxy)
}

struct RunResult {
    upstream_bytes: u64,
    wall: Duration,
    served: u64,
    failures: u64,
    /// Requests sent again because the connection failed before any response (as apt
    /// does when a proxy closes a keep-alive connection).
    retries: u64,
    /// The first failed fetch: URL and what went wrong.
    first_failure: Option<String>,
    aborted: Option<String>,
}

/// An error with its causes, outermost first.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// N clients each fetch every package once, in order, one connection each.
async fn run_clients(
    proxy: SocketAddr,
    up: &Upstream,
    urls: &Arc<Vec<(String, u64)>>,
    n: usize,
    set_bytes: u64,
    o: &Opts,
) -> RunResult {
    let up_before = up.counters().body_bytes.load(Ordering::Relaxed);
    let served = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let retries = Arc::new(AtomicU64::new(0));
    let first_failure = Arc::new(std::sync::Mutex::new(None::<String>));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let urls = urls.clone();
        let served = served.clone();
        let failures = failures.clone();
        let retries = retries.clone();
        let first_failure = first_failure.clone();
        tasks.spawn(async move {
            let client = reqwest::Client::builder()
                .proxy(reqwest::Proxy::http(format!("http://{proxy}")).unwrap())
                .pool_max_idle_per_host(1)
                .build()
                .unwrap();
            for (url, len) in urls.iter() {
                // A request whose connection fails before any response is sent again on
                // a new connection, at most twice: what apt does when a proxy closes a
                // keep-alive connection, and what HTTP allows for a GET.
                let mut attempts = 0;
                let sent = loop {
                    match client.get(url).send().await {
                        Err(e) if attempts < 2 && (e.is_request() || e.is_connect()) => {
                            attempts += 1;
                            retries.fetch_add(1, Ordering::Relaxed);
                        }
                        other => break other,
                    }
                };
                let why = match sent {
                    Err(e) => format!("request failed: {}", error_chain(&e)),
                    Ok(r) if r.status() != 200 => format!("status {}", r.status()),
                    Ok(mut r) => {
                        let mut got = 0u64;
                        let mut error = None;
                        loop {
                            match r.chunk().await {
                                Ok(Some(c)) => {
                                    got += c.len() as u64;
                                    served.fetch_add(c.len() as u64, Ordering::Relaxed);
                                }
                                Ok(None) => break,
                                Err(e) => {
                                    error = Some(e);
                                    break;
                                }
                            }
                        }
                        match error {
                            _ if got == *len => continue,
                            Some(e) => format!("body failed after {got} of {len} bytes: {e}"),
                            None => format!("body ended after {got} of {len} bytes"),
                        }
                    }
                };
                failures.fetch_add(1, Ordering::Relaxed);
                first_failure
                    .lock()
                    .unwrap()
                    .get_or_insert_with(|| format!("{url}: {why}"));
            }
        });
    }
    let cap = (o.cap_multiple * set_bytes as f64) as u64;
    let deadline = started + Duration::from_secs(o.run_timeout);
    let mut aborted = None;
    loop {
        tokio::select! {
            next = tasks.join_next() => if next.is_none() { break },
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                let upb = up.counters().body_bytes.load(Ordering::Relaxed) - up_before;
                if upb > cap {
                    aborted = Some(format!("upstream > {}x", o.cap_multiple));
                } else if Instant::now() > deadline {
                    aborted = Some(format!("> {} s", o.run_timeout));
                }
                if aborted.is_some() {
                    tasks.abort_all();
                    while tasks.join_next().await.is_some() {}
                    break;
                }
            }
        }
    }
    RunResult {
        upstream_bytes: up.counters().body_bytes.load(Ordering::Relaxed) - up_before,
        wall: started.elapsed(),
        served: served.load(Ordering::Relaxed),
        failures: failures.load(Ordering::Relaxed),
        retries: retries.load(Ordering::Relaxed),
        first_failure: first_failure.lock().unwrap().take(),
        aborted,
    }
}

/// `median (min-max)` of `v` with `digits` decimals, or the one value.
fn median_range(v: &mut [f64], digits: usize) -> String {
    v.sort_by(f64::total_cmp);
    let median = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    if v.len() == 1 {
        format!("{median:.digits$}")
    } else {
        format!(
            "{median:.digits$} ({:.digits$}-{:.digits$})",
            v[0],
            v[v.len() - 1]
        )
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let o = parse_opts();
    let total = o.total_mb * 1_000_000;
    let sizes = package_sizes(o.files, total);
    let set_bytes: u64 = sizes.iter().sum();
    let up = Upstream::start_on(
        Pacing {
            per_response_rate: None,
            link_rate: Some(o.link_mbit * 1_000_000 / 8),
            rtt: Duration::from_millis(o.rtt_ms),
        },
        low_port_listener(),
    )
    .await;
    let mut urls = Vec::new();
    for (i, &len) in sizes.iter().enumerate() {
        let path = format!("/debian/pool/main/p/pkg{i:04}/pkg{i:04}_1.0-1_amd64.deb");
        // Validators as a real archive sends them (Squid needs them to keep objects fresh).
        up.put(
            &path,
            Obj::new(synth(i as u64, len as usize))
                .etag(&format!("pkg{i}"))
                .last_modified("Mon, 01 Jan 2024 00:00:00 GMT"),
        );
        urls.push((up.url(&path), len));
    }
    let urls = Arc::new(urls);
    let max_n = *o.clients.iter().max().unwrap_or(&1);
    println!(
        "package set: {} files, {:.1} MB (largest {:.1} MB); upstream: {} ms RTT, {} Mbit/s shared",
        sizes.len(),
        set_bytes as f64 / 1e6,
        *sizes.iter().max().unwrap() as f64 / 1e6,
        o.rtt_ms,
        o.link_mbit
    );
    let mut rows: Vec<String> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    for kind in &o.proxies {
        for (idx, &n) in o.clients.iter().enumerate() {
            let proxy = match start_proxy(kind, up.addr.port()) {
                Ok(p) => p,
                Err(e) => {
                    println!("SKIP {kind}: {e}");
                    notes.push(format!("{kind}: skipped ({e})"));
                    break;
                }
            };
            let r = run_clients(proxy.addr, &up, &urls, n, set_bytes, &o).await;
            let row = format!(
                "| {kind} | {n} | {:.2}x | {:.1} | {:.0} | {} | {} |",
                r.upstream_bytes as f64 / set_bytes as f64,
                r.wall.as_secs_f64(),
                r.served as f64 / 1e6 / r.wall.as_secs_f64(),
                r.failures,
                r.aborted.clone().unwrap_or_else(|| "cold".into())
            );
            println!("{row}");
            rows.push(row);
            if r.retries > 0 {
                notes.push(format!(
                    "{kind}, N={n}: {} requests sent again after the connection failed before a response",
                    r.retries
                ));
            }
            if let Some(f) = &r.first_failure {
                notes.push(format!(
                    "{kind}, N={n}: {} files failed, first {f}",
                    r.failures
                ));
            }
            // After the largest cold run, the same clients again: everything is cached.
            if n == max_n && idx == o.clients.len() - 1 && r.aborted.is_none() {
                let mut walls = Vec::new();
                let mut rates = Vec::new();
                let (mut upstream, mut failures) = (0u64, 0u64);
                for _ in 0..o.warm_runs.max(1) {
                    let w = run_clients(proxy.addr, &up, &urls, n, set_bytes, &o).await;
                    walls.push(w.wall.as_secs_f64());
                    rates.push(w.served as f64 / 1e6 / w.wall.as_secs_f64());
                    upstream += w.upstream_bytes;
                    failures += w.failures;
                    println!(
                        "  {kind} warm run {}: {:.1} s, {:.0} MB/s",
                        walls.len(),
                        w.wall.as_secs_f64(),
                        rates.last().unwrap()
                    );
                }
                let row = format!(
                    "| {kind} | {n} | {:.2}x | {} | {} | {failures} | warm (all cached){} |",
                    upstream as f64 / set_bytes as f64,
                    median_range(&mut walls, 1),
                    median_range(&mut rates, 0),
                    if walls.len() > 1 {
                        format!(", median (min-max) of {} runs", walls.len())
                    } else {
                        String::new()
                    }
                );
                println!("{row}");
                rows.push(row);
            }
            drop(proxy);
        }
    }
    let date = Command::new("date")
        .arg("+%F")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|_| "undated".into());
    let cmdline: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let mut md = format!(
        "# Package cache benchmark, {date}\n\n\
         Command: `bench/cache/run {}`\n\n\
         Package set: {} files, {:.1} MB. Upstream path: {} ms RTT (before each response and\n\
         each new connection), {} Mbit/s shared by all connections. Each of N clients fetches\n\
         every file once, in order, over one keep-alive connection through the proxy.\n\
         Machine: {} cores. Upstream = bytes the upstream sent / package set size.\n\n\
         | proxy | N | upstream | wall s | served MB/s | failed files | run |\n\
         |---|---|---|---|---|---|---|\n",
        cmdline.join(" "),
        sizes.len(),
        set_bytes as f64 / 1e6,
        o.rtt_ms,
        o.link_mbit,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
    );
    for r in &rows {
        md.push_str(r);
        md.push('\n');
    }
    for n in &notes {
        md.push_str(&format!("\n{n}\n"));
    }
    let out = o
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("bench/results/cache-{date}.md")));
    let out = if out.is_relative() {
        // `cargo bench` runs in the crate directory; results live at the workspace root.
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("crate inside the workspace")
            .join(out)
    } else {
        out
    };
    if let Some(p) = out.parent() {
        let _ = std::fs::create_dir_all(p);
    }
    std::fs::write(&out, md).expect("writing the report");
    println!("report: {}", out.display());
}
