//! The reference's headline experiment, here (`bench/install/run`, issue 16): N nodes at a
//! remote site install the same profile through the real pipeline (DHCP from the frontend
//! across the overlay, the node's iPXE script, the installer image and every package from
//! the site's cache, apt's keys and checksums verified, dpkg unpacking) while the origin
//! repository sits behind the emulated WAN. Each run builds a fresh topology:
//!
//! ```text
//!  wan namespace   controller, origin repository (python http.server)
//!  site 1 host     vpnd, host agent: the cluster's frontend (no delay on its link)
//!  site 2 host     vpnd, host agent, the site cache under test; its WAN link carries the
//!                  round trip (RTT/2 each way) and the bandwidth cap: site 2 is RTT from
//!                  the origin and from the frontend
//! ```
//!
//! Lightweight nodes install with the profile attribute `lightweight_install` (`unpack`
//! by default: fetched, verified, unpacked, then thrown away with `lightweight_keep=false`,
//! so 134 nodes fit this machine's disk; `full` configures too), QEMU nodes with the VM
//! installer. Records per run: wall time from the create request to every node `booted`,
//! the per-node install times, the WAN bytes into site 2 (payload, frame headers taken
//! out) as a multiple of one package set, the cache hit ratio (1 − bytes the origin served
//! / bytes the nodes fetched) and the CPU time. Writes a Markdown table and SVG plots into
//! bench/results/.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;
use site_tests::provision::{ORIGIN, Origin, TCP_FRAME_OVERHEAD, site_cache};
use site_tests::{
    ControlPlane, ControlPlaneOpts, LinkParams, Overlay, Process, Topology, bin_path, find_command,
    unique_name, wait_until,
};
use vcluster::model::InstallState;

/// The benchmark's profiles: the role's packages (the compute set is
/// scripts/provision-assets' COMPUTE_SET).
const PROFILES: &[(&str, &[&str])] = &[
    ("small", &["less", "curl"]),
    (
        "compute",
        &[
            "less",
            "curl",
            "build-essential",
            "gfortran",
            "openmpi-bin",
            "libopenmpi-dev",
            "libopenblas-dev",
            "python3",
            "python3-numpy",
            "python3-scipy",
            "default-jdk-headless",
            "git",
            "perl",
            "make",
        ],
    ),
];

fn profile_packages(profile: &str) -> Vec<&'static str> {
    PROFILES
        .iter()
        .find(|(p, _)| *p == profile)
        .map(|(_, pkgs)| pkgs.to_vec())
        .unwrap_or_default()
}

#[derive(Parser, Clone)]
#[command(about = "Reinstall N remote nodes through their site cache: time and WAN bytes")]
struct Args {
    /// Numbers of lightweight nodes (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,64,134")]
    nodes: Vec<usize>,
    /// WAN round trips to site 2, in ms (comma-separated), for the site cache's runs.
    #[arg(long, value_delimiter = ',', default_value = "0,10,20")]
    rtt: Vec<u64>,
    /// Caches compared at the largest RTT: site (vcluster cache), squid (tuned, as a
    /// reverse proxy), apt-cacher-ng, none.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "site,squid,apt-cacher-ng,none"
    )]
    caches: Vec<String>,
    /// Numbers of nodes for the cache comparison and the warm runs (default: --nodes).
    #[arg(long, value_delimiter = ',')]
    cache_nodes: Vec<usize>,
    /// The most nodes a run without a cache takes (each of them fetches the whole set
    /// across the WAN).
    #[arg(long, default_value_t = 32)]
    max_uncached_nodes: usize,
    /// Also run the site cache warmed beforehand (`vcluster cache warm`), per N.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    warm: bool,
    /// What a lightweight node's install does: unpack (fetch, verify, unpack, discard) or
    /// full (configure too, kept).
    #[arg(long, default_value = "unpack")]
    mode: String,
    /// The profile's packages: small (less, curl over the base system: about 60 MB) or
    /// compute (compilers, MPI, BLAS, Python's numerics, a JDK: several hundred MB; needs
    /// `scripts/provision-assets --compute`, which bench/install/run runs for it).
    #[arg(long, default_value = "small")]
    profile: String,
    /// QEMU nodes (TCG here) installed once at the largest RTT through the site cache.
    #[arg(long, default_value_t = 2)]
    qemu: usize,
    /// Bandwidth cap of site 2's WAN link, Mbit/s (0: none).
    #[arg(long, default_value_t = 100)]
    rate_mbit: u64,
    /// The longest a run may take.
    #[arg(long, default_value_t = 3600)]
    timeout_secs: u64,
    /// Where to write results (default bench/results/install-<date>.md, plots beside it).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Clone, Debug)]
struct Plan {
    nodes: usize,
    rtt_ms: u64,
    cache: String,
    warm: bool,
    qemu: bool,
}

#[derive(Clone, Debug)]
struct RunResult {
    plan: Plan,
    wall: f64,
    /// Seconds from the create request to each node's `booted`, sorted.
    per_node: Vec<f64>,
    wan_payload: u64,
    origin_bytes: u64,
    /// What crossed beside the package set: the overlay's UDP (the nodes' DHCP, boot
    /// scripts and profiles from the frontend at site 1, whole frames) and
    /// the rest of the TCP payload (the controller and the agent; the cache's own
    /// requests), per node.
    overlay_per_node: f64,
    management_per_node: f64,
    cpu_secs: f64,
    cpu_busy: f64,
    /// Median seconds from the create request to each install state the nodes reached
    /// (from the controller's events), in the order of the states.
    steps: Vec<(InstallState, f64)>,
    /// The distinct bytes this run's nodes fetched from the origin (its own set: QEMU
    /// nodes install another set than lightweight nodes).
    own_set: u64,
}

fn main() {
    let args = Args::parse();
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("install-bench: needs root (it creates network namespaces)");
        std::process::exit(1);
    }
    for cmd in ["ip", "dnsmasq", "python3", "busybox", "zstd", "cpio"] {
        if find_command(cmd).is_none() {
            eprintln!("install-bench: `{cmd}` is missing: run scripts/install-deps first");
            std::process::exit(1);
        }
    }
    assert!(
        ["unpack", "full"].contains(&args.mode.as_str()),
        "--mode unpack|full"
    );
    assert!(
        PROFILES.iter().any(|(p, _)| *p == args.profile),
        "--profile small|compute"
    );
    let assets = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/provision");
    assert!(
        assets.join("boot/installer.img").exists(),
        "{} has no installer: run scripts/provision-assets",
        assets.display()
    );
    site_tests::stop_on_signals();
    let _limits = site_tests::cluster::NeighbourLimits::raise();
    let plans = plan(&args);
    eprintln!("install-bench: {} runs", plans.len());
    let mut set_bytes = 0u64;
    let mut results = Vec::new();
    for (i, p) in plans.iter().enumerate() {
        site_tests::check_interrupted();
        eprintln!(
            "\n== run {}/{}: {} {} node(s), RTT {} ms, {} cache{}",
            i + 1,
            plans.len(),
            p.nodes,
            if p.qemu { "QEMU" } else { "lightweight" },
            p.rtt_ms,
            p.cache,
            if p.warm { " (warm)" } else { " (cold)" }
        );
        let (r, set) = run(&args, &assets, p);
        if set_bytes == 0 && p.cache == "site" && !p.warm {
            set_bytes = set;
        }
        eprintln!(
            "   all booted in {:.1} s; per node median {:.1} s, max {:.1} s; WAN payload {:.1} MB; \
             origin served {:.1} MB; beside it per node {:.1} kB overlay, {:.1} kB management; \
             CPU {:.0} s ({:.0}% busy)",
            r.wall,
            median(&r.per_node),
            r.per_node.last().copied().unwrap_or(0.0),
            r.wan_payload as f64 / 1e6,
            r.origin_bytes as f64 / 1e6,
            r.overlay_per_node / 1e3,
            r.management_per_node / 1e3,
            r.cpu_secs,
            r.cpu_busy * 100.0
        );
        eprintln!("   median time to each step: {}", steps_text(&r.steps));
        results.push(r);
        // Written after every run: an interrupted benchmark keeps what it measured.
        report(&args, &results, set_bytes, i + 1 == plans.len());
    }
}

/// The runs: time against N per RTT (site cache, cold), WAN bytes against N per cache
/// (largest RTT), the site cache warm per N, and the QEMU nodes. The first run is the
/// site cache cold: it measures one package set.
fn plan(args: &Args) -> Vec<Plan> {
    let max_rtt = args.rtt.iter().copied().max().unwrap_or(20);
    let lw = |nodes, rtt_ms, cache: &str, warm| Plan {
        nodes,
        rtt_ms,
        cache: cache.to_string(),
        warm,
        qemu: false,
    };
    let mut plans = Vec::new();
    // The largest RTT first, then the caches compared there, then the other RTTs: an
    // interrupted run keeps the comparisons that matter most.
    for &n in &args.nodes {
        plans.push(lw(n, max_rtt, "site", false));
    }
    let cache_nodes = if args.cache_nodes.is_empty() {
        &args.nodes
    } else {
        &args.cache_nodes
    };
    if args.warm {
        for &n in cache_nodes {
            plans.push(lw(n, max_rtt, "site", true));
        }
    }
    for cache in args.caches.iter().filter(|c| c.as_str() != "site") {
        for &n in cache_nodes {
            if cache == "none" && n > args.max_uncached_nodes {
                continue;
            }
            plans.push(lw(n, max_rtt, cache, false));
        }
    }
    let mut others: Vec<u64> = args.rtt.iter().copied().filter(|&r| r != max_rtt).collect();
    others.sort_unstable();
    for rtt in others {
        for &n in &args.nodes {
            plans.push(lw(n, rtt, "site", false));
        }
    }
    if args.qemu > 0 {
        plans.push(Plan {
            nodes: args.qemu,
            rtt_ms: max_rtt,
            cache: "site".into(),
            warm: false,
            qemu: true,
        });
    }
    plans
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

/// (busy, total) jiffies of the whole machine.
fn cpu_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let first = stat.lines().next().unwrap_or("");
    let v: Vec<u64> = first
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// The proxy at site 2 under test, listening on 127.0.0.1:3142 of its host namespace.
struct SiteCache {
    _process: Option<Process>,
    dir: PathBuf,
}

impl Drop for SiteCache {
    fn drop(&mut self) {
        // Squid forks its worker: the pid file's process goes too.
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("squid.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    }
}

fn start_site_cache(topo: &Topology, kind: &str) -> SiteCache {
    let dir = topo.dir().join(format!("cache2-{kind}"));
    std::fs::create_dir_all(&dir).unwrap();
    let host = topo.host(2);
    let process = match kind {
        "site" => Some(site_cache(topo, 2, &dir.join("store"))),
        "squid" => {
            let (ip, port) = ORIGIN.split_once(':').unwrap();
            // A reverse proxy in front of the origin, with what a package cache needs
            // (the "tuned" settings of bench/cache/run).
            let conf = format!(
                "http_port 127.0.0.1:3142 accel defaultsite={ORIGIN} no-vhost\n\
                 cache_peer {ip} parent {port} 0 no-query originserver name=origin\n\
                 cache_peer_access origin allow all\n\
                 http_access allow all\n\
                 never_direct allow all\n\
                 cache_dir ufs {spool} 50000 16 256\n\
                 coredump_dir {spool}\n\
                 pid_filename {dir}/squid.pid\n\
                 access_log none\n\
                 cache_log {dir}/cache.log\n\
                 cache_store_log none\n\
                 shutdown_lifetime 0 seconds\n\
                 refresh_pattern . 0 20% 4320\n\
                 maximum_object_size 1024 MB\n\
                 collapsed_forwarding on\n\
                 cache_mem 1024 MB\n\
                 maximum_object_size_in_memory 64 MB\n\
                 quick_abort_min -1 KB\n\
                 read_ahead_gap 1 MB\n",
                spool = dir.join("spool").display(),
                dir = dir.display(),
            );
            std::fs::create_dir_all(dir.join("spool")).unwrap();
            std::fs::write(dir.join("squid.conf"), conf).unwrap();
            let _ = Command::new("chown")
                .args(["-R", "proxy:proxy"])
                .arg(&dir)
                .status();
            let conf = dir.join("squid.conf").display().to_string();
            let z = host
                .command("squid", ["-N", "-z", "-f", &conf])
                .status()
                .expect("squid -z");
            assert!(z.success(), "squid -z failed: see {}", dir.display());
            Some(topo.spawn(host, "squid", &["squid", "-N", "-f", &conf]))
        }
        "apt-cacher-ng" => {
            for d in ["conf", "cache", "log"] {
                std::fs::create_dir_all(dir.join(d)).unwrap();
            }
            // Remapped repositories: /debian and /provision of this cache are the origin's.
            std::fs::write(
                dir.join("conf/acng.conf"),
                format!(
                    "CacheDir: {cache}\nLogDir: {log}\nPort: 3142\nBindAddress: 127.0.0.1\n\
                     ForeGround: 1\nPidFile: {d}/acng.pid\nSocketPath: {d}/acng.sock\n\
                     ExThreshold: 4\n\
                     Remap-vcdebian: /debian ; http://{ORIGIN}/debian\n\
                     Remap-vcprovision: /provision ; http://{ORIGIN}/provision\n\
                     PfilePatternEx: (vmlinuz|installer\\.img)$\n",
                    cache = dir.join("cache").display(),
                    log = dir.join("log").display(),
                    d = dir.display(),
                ),
            )
            .unwrap();
            let _ = Command::new("chown")
                .args(["-R", "apt-cacher-ng:apt-cacher-ng"])
                .arg(&dir)
                .status();
            let conf = dir.join("conf").display().to_string();
            Some(topo.spawn(host, "apt-cacher-ng", &["apt-cacher-ng", "-c", &conf]))
        }
        "none" => None,
        other => panic!("unknown cache {other}: site, squid, apt-cacher-ng or none"),
    };
    if !["none", "site"].contains(&kind) {
        wait_until("the site cache listens", Duration::from_secs(20), || {
            host.command("bash", ["-c", "exec 3<>/dev/tcp/127.0.0.1/3142"])
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
    }
    SiteCache {
        _process: process,
        dir,
    }
}

/// The package names of the origin repository (what `cache warm` fills the cache with).
fn origin_packages(assets: &Path) -> Vec<String> {
    let dir = assets.join("origin/dists/bookworm/main/binary-amd64");
    let text = std::fs::read_to_string(dir.join("Packages")).unwrap_or_else(|_| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "xz -dc {0}/Packages.xz 2>/dev/null || gzip -dc {0}/Packages.gz",
                dir.display()
            ))
            .output()
            .expect("reading the origin's Packages");
        String::from_utf8_lossy(&out.stdout).into_owned()
    });
    text.lines()
        .filter_map(|l| l.strip_prefix("Package: "))
        .map(str::to_string)
        .collect()
}

fn run(args: &Args, assets: &Path, p: &Plan) -> (RunResult, u64) {
    let topo = Topology::builder().sites(2).vms_per_site(0).build();
    let mut link = LinkParams::default().delay(Duration::from_micros(p.rtt_ms * 500));
    if args.rate_mbit > 0 {
        link = link.rate_bps(args.rate_mbit * 1_000_000);
    }
    topo.link(2).set(site_tests::Dirs::Both, link);
    let overlay = Overlay::start_with(&topo, &[], |_, _| {});
    let vcluster = bin_path("vcluster");
    let _cache1 = site_cache(&topo, 1, &topo.dir().join("cache1"));
    let cache2 = start_site_cache(&topo, &p.cache);
    let site2_cache = if p.cache == "none" {
        ORIGIN.to_string()
    } else {
        "127.0.0.1:3142".to_string()
    };
    let mut agent2 = vec!["--site-cache".to_string(), site2_cache];
    if p.qemu {
        agent2.extend(["--driver", "qemu", "--accel", "tcg"].map(String::from));
    }
    let plane = ControlPlane::start_with(
        &topo,
        &overlay,
        &ControlPlaneOpts {
            host_cpus: 1024,
            host_memory_mib: 1 << 20,
            task_timeout: 900,
            controller_args: vec!["--install-phase-timeout".into(), "1800".into()],
            agent_args: vec![vec!["--site-cache".into(), "127.0.0.1:3142".into()], agent2],
            ..ControlPlaneOpts::default()
        },
    );
    let origin = Origin::start(&topo, assets);
    let _: serde_json::Value = plane.admin_post(
        "/v1/roles",
        &json!({"name": "bench", "packages": profile_packages(&args.profile),
                "files": [{"path": "/etc/motd", "content": "{{ node.name }}\n"}]}),
    );
    let _: serde_json::Value = plane.admin_post(
        "/v1/profiles",
        &json!({"name": "bench", "roles": ["bench"]}),
    );
    for (key, value) in [
        ("lightweight_install", args.mode.as_str()),
        (
            "lightweight_keep",
            if args.mode == "unpack" {
                "false"
            } else {
                "true"
            },
        ),
    ] {
        let _: serde_json::Value = plane
            .block_on(plane.admin().put(
                "/v1/attributes",
                &json!({"scope": "global", "key": key, "value": value}),
            ))
            .expect("setting an attribute");
    }

    if p.warm {
        // The whole repository's packages through the site cache, before any install.
        let packages = origin_packages(assets).join(",");
        let sources = format!("deb [trusted=yes] http://{ORIGIN}/debian bookworm main");
        let t = Instant::now();
        let out = topo
            .host(2)
            .command(
                vcluster.to_str().unwrap(),
                [
                    "cache",
                    "warm",
                    "--cache",
                    "127.0.0.1:3142",
                    "--sources",
                    &sources,
                    "--packages",
                    &packages,
                    "--no-recommends",
                ],
            )
            .output()
            .expect("vcluster cache warm");
        assert!(
            out.status.success(),
            "cache warm failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "   warmed the site cache in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        // The boot files too (a node's firmware fetches them first).
        for f in ["vmlinuz", "installer.img"] {
            let ok = topo
                .host(2)
                .command(
                    "curl",
                    [
                        "-fsS",
                        "-o",
                        "/dev/null",
                        &format!("http://127.0.0.1:3142/provision/{f}"),
                    ],
                )
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "warming {f}");
        }
    }

    let origin_before = origin.fetches();
    topo.reset_wan_stats();
    let cpu0 = cpu_jiffies();
    let name = unique_name("ib");
    let started = Instant::now();
    let started_ms = chrono_now_ms();
    let mut body = json!({
        "name": name,
        "sites": [{"site": "site2", "nodes": p.nodes}],
        "profile": "bench",
        "frontend_site": "site1",
        "recovery": "off",
    });
    if p.qemu {
        body["node_cpus"] = json!(1);
        body["node_memory_mib"] = json!(768);
    } else {
        body["node_memory_mib"] = json!(64);
    }
    let c = plane.create_cluster(&body);
    let nodes: Vec<String> = c.nodes.iter().map(|n| n.name.clone()).collect();
    let mut booted: BTreeMap<String, f64> = BTreeMap::new();
    let mut last_print = Instant::now();
    while booted.len() < nodes.len() {
        site_tests::check_interrupted();
        let c = plane.cluster(&name);
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for n in &c.nodes {
            let state = n.install.as_ref().map(|i| i.state);
            *counts
                .entry(state.map(|s| s.to_string()).unwrap_or_else(|| "-".into()))
                .or_default() += 1;
            if state == Some(InstallState::Booted) {
                booted
                    .entry(n.name.clone())
                    .or_insert(started.elapsed().as_secs_f64());
            }
            if state == Some(InstallState::Failed) {
                plane.dump_logs();
                panic!(
                    "{} failed: {:?}",
                    n.name,
                    n.install.as_ref().and_then(|i| i.reason.clone())
                );
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(args.timeout_secs),
            "not all booted after {} s: {counts:?}",
            args.timeout_secs
        );
        if last_print.elapsed() > Duration::from_secs(30) {
            eprintln!("   {:>5.0} s {counts:?}", started.elapsed().as_secs_f64());
            last_print = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu1 = cpu_jiffies();
    let into = topo.link(2).stats().b_to_a;
    let wan_payload = into
        .tx_bytes
        .saturating_sub(into.tx_frames * TCP_FRAME_OVERHEAD);
    let tcp_payload = (into.tx_bytes - into.tx_udp_bytes)
        .saturating_sub((into.tx_frames - into.tx_udp_frames) * TCP_FRAME_OVERHEAD);
    let fetches = origin.fetches();
    let mut origin_bytes = 0;
    let mut set = 0;
    for (path, n) in &fetches {
        let before = origin_before.get(path).copied().unwrap_or(0);
        let size = origin.size(path);
        origin_bytes += size * (n - before) as u64;
        set += size;
    }
    let mut per_node: Vec<f64> = booted.into_values().collect();
    per_node.sort_by(f64::total_cmp);
    let hz = 100.0; // USER_HZ
    let busy = (cpu1.0 - cpu0.0) as f64;
    let total = (cpu1.1 - cpu0.1).max(1) as f64;
    let steps = step_medians(&plane, &name, started_ms);
    let task = plane.delete_cluster(&name);
    assert!(
        task.state == vcluster::model::TaskState::Succeeded,
        "delete: {}",
        task.message
    );
    drop(cache2);
    (
        RunResult {
            plan: p.clone(),
            wall,
            per_node,
            wan_payload,
            origin_bytes,
            overlay_per_node: into.tx_udp_bytes as f64 / p.nodes as f64,
            management_per_node: tcp_payload.saturating_sub(origin_bytes) as f64 / p.nodes as f64,
            cpu_secs: busy / hz,
            cpu_busy: busy / total,
            steps,
            own_set: set,
        },
        set,
    )
}

/// Milliseconds since the epoch (the events' clock: this machine's).
fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Median seconds from `started_ms` to each install state of the cluster's nodes, read
/// from the controller's `install-<state>` events.
fn step_medians(plane: &ControlPlane, cluster: &str, started_ms: i64) -> Vec<(InstallState, f64)> {
    let events: Vec<vcluster::model::Event> = plane
        .block_on(
            plane
                .admin()
                .get(&format!("/v1/events?cluster={cluster}&limit=1000")),
        )
        .expect("the cluster's events");
    [
        InstallState::Pxe,
        InstallState::Installing,
        InstallState::Rebooting,
        InstallState::Booted,
    ]
    .into_iter()
    .filter_map(|state| {
        let kind = format!("install-{state}");
        let mut at: Vec<f64> = events
            .iter()
            .filter(|e| e.kind == kind)
            .map(|e| (e.at.timestamp_millis() - started_ms) as f64 / 1e3)
            .collect();
        at.sort_by(f64::total_cmp);
        (!at.is_empty()).then(|| (state, median(&at)))
    })
    .collect()
}

/// A table row's first cells, up to the cache's: `| nodes | kind | RTT | cache |`.
fn row_head(p: &Plan) -> String {
    format!(
        "| {} | {} | {} ms | {}{} |",
        p.nodes,
        if p.qemu { "QEMU (TCG)" } else { "lightweight" },
        p.rtt_ms,
        p.cache,
        if p.warm { " warm" } else { "" },
    )
}

fn steps_text(steps: &[(InstallState, f64)]) -> String {
    steps
        .iter()
        .map(|(s, t)| format!("{s} {t:.1} s"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn report(args: &Args, results: &[RunResult], set_bytes: u64, last: bool) {
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "undated".into());
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("bench/results/install-{date}.md")));
    let stem = out.with_extension("");
    let set = set_bytes.max(1) as f64;
    let mut md = String::new();
    let _ = writeln!(md, "# Reinstalling remote nodes through their site cache\n");
    if !last {
        let _ = writeln!(md, "(partial: the runs measured so far)\n");
    }
    let _ = writeln!(
        md,
        "`bench/install/run {}`: nodes at site 2, frontend at site 1 (no delay), origin \
         repository in the WAN's namespace; site 2's WAN link carries the RTT{}. Lightweight \
         nodes install the `{}` profile in mode `{}`; one package set (packages, indexes and \
         boot files one node fetches) is {:.1} MB. WAN is the payload into site 2 (frame headers taken out), \
         as a multiple of one set (QEMU nodes: of their own set, the installer, a kernel \
         and the base system). Hit ratio: 1 − origin bytes / bytes the nodes fetched. \
         Beside the set, per node: the overlay's UDP frames into site 2 \
         (the nodes' DHCP, boot scripts and profiles from the frontend at site 1; their \
         install reports go to their own host) and the rest of the TCP payload (controller \
         and agent, the cache's requests). \
         CPU: machine-wide CPU seconds during the run (2 cores).\n",
        std::env::args().skip(1).collect::<Vec<_>>().join(" "),
        if args.rate_mbit > 0 {
            format!(" and a {} Mbit/s cap", args.rate_mbit)
        } else {
            String::new()
        },
        args.profile,
        args.mode,
        set / 1e6
    );
    let _ = writeln!(
        md,
        "| nodes | kind | RTT | cache | all booted | per node median | p90 | max | WAN × set | overlay kB/node | management kB/node | hit ratio | CPU s (busy) |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in results {
        let p = &r.plan;
        // QEMU nodes install the installer, a kernel and the base system: their own set.
        let set = if p.qemu && r.own_set > 0 {
            r.own_set as f64
        } else {
            set
        };
        let fetched = set * p.nodes as f64;
        let _ = writeln!(
            md,
            "{} {:.1} s | {:.1} s | {:.1} s | {:.1} s | {:.3} | {:.1} | {:.1} | {:.3} | {:.0} ({:.0}%) |",
            row_head(p),
            r.wall,
            median(&r.per_node),
            percentile(&r.per_node, 0.9),
            r.per_node.last().copied().unwrap_or(0.0),
            r.wan_payload as f64 / set,
            r.overlay_per_node / 1e3,
            r.management_per_node / 1e3,
            (1.0 - r.origin_bytes as f64 / fetched).max(0.0),
            r.cpu_secs,
            r.cpu_busy * 100.0
        );
    }
    let _ = writeln!(
        md,
        "\nMedian seconds from the create request to each step of the nodes' installs (the \
         controller's events): `pxe` the node fetched its boot script, `installing` the \
         installer runs, `rebooting` it has installed, `booted` the installed system is up.\n\n\
         | nodes | kind | RTT | cache | pxe | installing | rebooting | booted |\n\
         |---|---|---|---|---|---|---|---|"
    );
    for r in results {
        let at = |state: InstallState| {
            r.steps
                .iter()
                .find(|(s, _)| *s == state)
                .map_or("-".to_string(), |(_, t)| format!("{t:.1} s"))
        };
        let _ = writeln!(
            md,
            "{} {} | {} | {} | {} |",
            row_head(&r.plan),
            at(InstallState::Pxe),
            at(InstallState::Installing),
            at(InstallState::Rebooting),
            at(InstallState::Booted),
        );
    }
    // Plot 1: time to all booted against N, one line per RTT (site cache, cold).
    let mut by_rtt: BTreeMap<u64, Vec<(f64, f64)>> = BTreeMap::new();
    let mut by_cache: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let max_rtt = args.rtt.iter().copied().max().unwrap_or(20);
    for r in results.iter().filter(|r| !r.plan.qemu) {
        let p = &r.plan;
        if p.cache == "site" && !p.warm {
            by_rtt
                .entry(p.rtt_ms)
                .or_default()
                .push((p.nodes as f64, r.wall));
        }
        if p.rtt_ms == max_rtt {
            let label = format!("{}{}", p.cache, if p.warm { " (warm)" } else { "" });
            by_cache
                .entry(label)
                .or_default()
                .push((p.nodes as f64, r.wan_payload as f64 / set));
        }
    }
    let time_svg = stem.with_file_name(format!(
        "{}-time.svg",
        stem.file_name().unwrap().to_string_lossy()
    ));
    let wan_svg = stem.with_file_name(format!(
        "{}-wan.svg",
        stem.file_name().unwrap().to_string_lossy()
    ));
    let series: Vec<(String, Vec<(f64, f64)>)> = by_rtt
        .into_iter()
        .map(|(k, v)| (format!("RTT {k} ms"), v))
        .collect();
    write_svg(
        &time_svg,
        "Time to all nodes booted (site cache, cold)",
        "nodes",
        "seconds",
        &series,
    );
    let series: Vec<(String, Vec<(f64, f64)>)> = by_cache.into_iter().collect();
    write_svg(
        &wan_svg,
        &format!("WAN bytes into the nodes' site at RTT {max_rtt} ms"),
        "nodes",
        "× one package set",
        &series,
    );
    let _ = writeln!(
        md,
        "\n![time against N]({})\n![WAN bytes against N]({})",
        time_svg.file_name().unwrap().to_string_lossy(),
        wan_svg.file_name().unwrap().to_string_lossy()
    );
    if last {
        println!("\n{md}");
    }
    match std::fs::write(&out, &md) {
        Ok(()) if last => println!("written to {} (plots beside it)", out.display()),
        Ok(()) => {}
        Err(e) => eprintln!("writing {}: {e}", out.display()),
    }
}

/// A line chart, one polyline per series, linear axes from 0.
fn write_svg(
    path: &Path,
    title: &str,
    xlabel: &str,
    ylabel: &str,
    series: &[(String, Vec<(f64, f64)>)],
) {
    const W: f64 = 640.0;
    const H: f64 = 400.0;
    const L: f64 = 70.0;
    const R: f64 = 160.0;
    const T: f64 = 40.0;
    const B: f64 = 50.0;
    let colors = [
        "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
    ];
    let xmax = series
        .iter()
        .flat_map(|(_, v)| v.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    let ymax = series
        .iter()
        .flat_map(|(_, v)| v.iter().map(|p| p.1))
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.1;
    let x = |v: f64| L + v / xmax * (W - L - R);
    let y = |v: f64| H - B - v / ymax * (H - T - B);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"14\">{title}</text>\n\
         <line x1=\"{L}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n\
         <line x1=\"{L}\" y1=\"{T}\" x2=\"{L}\" y2=\"{}\" stroke=\"black\"/>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{xlabel}</text>\n\
         <text x=\"16\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {})\">{ylabel}</text>\n",
        (W - R + L) / 2.0,
        H - B,
        W - R,
        H - B,
        H - B,
        (W - R + L) / 2.0,
        H - 12.0,
        (H - B + T) / 2.0,
        (H - B + T) / 2.0,
    );
    for i in 0..=4 {
        let v = ymax / 1.1 * i as f64 / 4.0;
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text><line x1=\"{L}\" y1=\"{1}\" x2=\"{}\" y2=\"{1}\" stroke=\"#ddd\"/>",
            L - 6.0,
            y(v) + 4.0,
            if ymax < 10.0 {
                format!("{v:.2}")
            } else {
                format!("{v:.0}")
            },
            W - R
        );
    }
    let mut xs: Vec<f64> = series
        .iter()
        .flat_map(|(_, v)| v.iter().map(|p| p.0))
        .collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    for v in xs {
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{v}</text>",
            x(v),
            H - B + 16.0
        );
    }
    for (i, (label, pts)) in series.iter().enumerate() {
        let c = colors[i % colors.len()];
        let mut pts = pts.clone();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let line: Vec<String> = pts
            .iter()
            .map(|(a, b)| format!("{:.1},{:.1}", x(*a), y(*b)))
            .collect();
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{}\"/>",
            line.join(" ")
        );
        for (a, b) in &pts {
            let _ = writeln!(
                s,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{c}\"/>",
                x(*a),
                y(*b)
            );
        }
        let ly = T + 20.0 * i as f64;
        let _ = writeln!(
            s,
            "<line x1=\"{}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{c}\" stroke-width=\"2\"/><text x=\"{}\" y=\"{}\">{label}</text>",
            W - R + 10.0,
            W - R + 30.0,
            W - R + 36.0,
            ly + 4.0
        );
    }
    s.push_str("</svg>\n");
    if let Err(e) = std::fs::write(path, s) {
        eprintln!("writing {}: {e}", path.display());
    }
}
