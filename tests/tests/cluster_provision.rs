//! Provisioning as an operator meets it, end to end and for real: two QEMU nodes (TCG) at
//! site 2 PXE-boot across `vpnd` from their cluster's frontend at site 1 (real dnsmasq,
//! iPXE), fetch the installer and real Debian packages from site 2's own cache (which
//! fetches each file once from the origin repository behind the emulated WAN, 20 ms round
//! trip from every site), install, reboot from their disks and report `booted`. The host
//! agent of site 2 is restarted while they install; then one node is reinstalled.
//!
//! ```text
//!  wan namespace   controller :7200, origin repository :8080 (python http.server over
//!                  target/provision: /debian = origin/, /provision = boot/)
//!  site 1 host     vpnd, host agent (netns driver): the cluster's frontend
//!  site 2 host     vpnd, host agent (qemu driver, TCG), the site cache 127.0.0.1:3142
//!                  (reached by the nodes at the subnet's site-local address)
//! ```
//!
//! Needs root, QEMU with Debian's ipxe-qemu ROM, dnsmasq, python3 and the assets of
//! `scripts/provision-assets` (scripts/test builds them); skips loudly without them, and
//! in CI fails instead. About 12 minutes on two cores: TCG runs dpkg slowly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use site_tests::{
    ControlPlane, ControlPlaneOpts, LinkParams, Overlay, Process, Topology, bin_path,
    require_command, require_root, unique_name, wait_until,
};
use vcluster::model::{Cluster, ConsoleChunk, Event, InstallState, TaskState};

const ORIGIN: &str = "10.254.0.254:8080";

/// The assets of `scripts/provision-assets`, or why they are not there.
fn assets() -> Result<PathBuf, String> {
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

fn install_state(c: &Cluster, node: &str) -> Option<InstallState> {
    c.nodes
        .iter()
        .find(|n| n.name == node)
        .and_then(|n| n.install.as_ref())
        .map(|i| i.state)
}

fn progress(c: &Cluster) -> String {
    c.nodes
        .iter()
        .map(|n| {
            format!(
                "{}: {}",
                n.name,
                n.install
                    .as_ref()
                    .map(|i| {
                        let mut s = i.summary();
                        if let Some(r) = &i.reason {
                            s.push_str(&format!(" ({r})"));
                        }
                        s
                    })
                    .unwrap_or_else(|| "-".into())
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Paths the origin answered 200 for, with how many times, from python's access log.
fn origin_fetches(log: &str) -> BTreeMap<String, usize> {
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
fn percent_decode(path: &str) -> String {
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

/// The size on disk of a path the origin serves; panics for one it does not have.
fn served_size(root: &Path, path: &str) -> u64 {
    let rel = percent_decode(path.trim_start_matches('/'));
    std::fs::metadata(root.join(&rel))
        .unwrap_or_else(|e| panic!("{}: {e}", root.join(&rel).display()))
        .len()
}

/// The frame overhead of a full TCP segment on the WAN links: Ethernet 14, IPv4 20, TCP
/// 20 + 12 (timestamps) bytes around 1448 of payload at MTU 1500.
const TCP_FRAME_OVERHEAD: u64 = 14 + 20 + 32;

fn qemu_pids(topo: &Topology) -> BTreeMap<String, u32> {
    let vms = topo.dir().join("agent2").join("vms");
    let mut m = BTreeMap::new();
    for e in std::fs::read_dir(&vms).into_iter().flatten().flatten() {
        if let Some(pid) = std::fs::read_to_string(e.path().join("qemu.pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok())
        {
            m.insert(e.file_name().to_string_lossy().into_owned(), pid);
        }
    }
    m
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Waits for every node of `name` to reach `booted`, printing progress; panics on a
/// failed install or at `limit`.
fn wait_booted(plane: &ControlPlane, name: &str, nodes: &[String], limit: Duration) {
    let started = Instant::now();
    let mut last_print = Instant::now();
    loop {
        let c = plane.cluster(name);
        let states: Vec<Option<InstallState>> =
            nodes.iter().map(|n| install_state(&c, n)).collect();
        if states.iter().all(|s| *s == Some(InstallState::Booted)) {
            return;
        }
        if states.contains(&Some(InstallState::Failed)) {
            plane.dump_logs();
            panic!("an install failed: {}", progress(&c));
        }
        if started.elapsed() > limit {
            plane.dump_logs();
            panic!("not every node booted within {limit:?}: {}", progress(&c));
        }
        if last_print.elapsed() > Duration::from_secs(30) {
            eprintln!(
                "{:>5.0} s  {}",
                started.elapsed().as_secs_f64(),
                progress(&c)
            );
            last_print = Instant::now();
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

#[test]
fn two_qemu_nodes_pxe_install_across_sites_through_their_site_cache_and_one_is_reinstalled() {
    let test =
        "two_qemu_nodes_pxe_install_across_sites_through_their_site_cache_and_one_is_reinstalled";
    if !require_root(test)
        || !require_command(test, "qemu-system-x86_64")
        || !require_command(test, "dnsmasq")
        || !require_command(test, "python3")
    {
        return;
    }
    let assets = match assets() {
        Ok(a) => a,
        Err(why) if std::env::var_os("CI").is_some() => panic!("{test}: {why}"),
        Err(why) => {
            site_tests::skip(test, &why);
            return;
        }
    };
    let topo = Topology::builder()
        .sites(2)
        .vms_per_site(0)
        // 5 ms on each access link, each way: every site is 20 ms from every other.
        .link_params(LinkParams::default().delay(Duration::from_millis(5)))
        .build();
    let overlay = Overlay::start_with(&topo, &[], |_, _| {});
    let vcluster = bin_path("vcluster");
    let cache = |i: usize| -> Process {
        let store = topo.dir().join(format!("cache{i}"));
        topo.spawn(
            topo.host(i),
            &format!("cache{i}"),
            &[
                vcluster.display().to_string(),
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
        )
    };
    let mut caches = [cache(1), cache(2)];
    let site_cache = vec!["--site-cache".to_string(), "127.0.0.1:3142".to_string()];
    let opts = ControlPlaneOpts {
        host_memory_mib: 4096,
        controller_args: vec!["--install-phase-timeout".into(), "900".into()],
        agent_args: vec![
            site_cache.clone(),
            [
                vec![
                    "--driver".to_string(),
                    "qemu".into(),
                    "--accel".into(),
                    "tcg".into(),
                ],
                site_cache,
            ]
            .concat(),
        ],
        ..ControlPlaneOpts::default()
    };
    let mut plane = ControlPlane::start_with(&topo, &overlay, &opts);

    // The origin repository, a distant mirror in the WAN's namespace.
    let root = topo.dir().join("origin-root");
    std::fs::create_dir_all(&root).unwrap();
    std::os::unix::fs::symlink(assets.join("origin"), root.join("debian")).unwrap();
    std::os::unix::fs::symlink(assets.join("boot"), root.join("provision")).unwrap();
    let (ip, port) = ORIGIN.split_once(':').unwrap();
    let mut origin = Process::spawn(
        "origin repository",
        topo.wan().command(
            "python3",
            [
                "-m",
                "http.server",
                port,
                "--bind",
                ip,
                "--directory",
                root.to_str().unwrap(),
            ],
        ),
        topo.dir().join("origin.log"),
    );
    for c in caches.iter_mut() {
        wait_until("the site cache listens", Duration::from_secs(10), || {
            c.assert_running();
            c.log().contains("vcluster cache listening on")
        });
    }
    wait_until("the origin listens", Duration::from_secs(10), || {
        origin.assert_running();
        origin.log().contains("Serving HTTP")
    });

    // A profile: the base system, two more packages, a file and a post script.
    let _: serde_json::Value = plane.admin_post(
        "/v1/roles",
        &json!({"name": "base", "packages": ["less", "curl"],
                "files": [{"path": "/etc/motd", "content": "{{ node.name }} of {{ cluster.name }}, installed by vcluster\n"}],
                "post": "echo post ran > /root/post-ran\n"}),
    );
    let _: serde_json::Value = plane.admin_post(
        "/v1/profiles",
        &json!({"name": "debian", "roles": ["base"]}),
    );

    topo.reset_wan_stats();
    let name = unique_name("pv");
    let started = Instant::now();
    let c = plane.create_cluster(&json!({
        "name": name,
        "sites": [{"site": "site2", "nodes": 2}],
        "profile": "debian",
        "frontend_site": "site1",
        "node_cpus": 1,
        "node_memory_mib": 768,
    }));
    assert_eq!(c.frontend_host.as_deref(), Some("site1-h1"));
    let nodes: Vec<String> = c.nodes.iter().map(|n| n.name.clone()).collect();
    assert_eq!(nodes.len(), 2);
    assert!(c.nodes.iter().all(|n| n.site == "site2"));

    // Mid-install, site 2's agent restarts: its VMs and their installs carry on.
    wait_until("a node is installing", Duration::from_secs(300), || {
        let c = plane.cluster(&name);
        nodes
            .iter()
            .any(|n| install_state(&c, n) == Some(InstallState::Installing))
    });
    let before = qemu_pids(&topo);
    assert_eq!(before.len(), 2, "{before:?}");
    plane.restart_agent(&topo, 2);
    wait_until("site 2's agent is back", Duration::from_secs(60), || {
        plane.hosts().iter().all(|h| h.online)
    });
    std::thread::sleep(Duration::from_secs(10));
    let after = qemu_pids(&topo);
    assert_eq!(
        before, after,
        "the same QEMU processes after the agent's restart"
    );
    assert!(after.values().all(|p| alive(*p)), "and they still run");

    wait_booted(&plane, &name, &nodes, Duration::from_secs(1500));
    let install_time = started.elapsed();

    // Each file crossed the WAN once, whatever the number of nodes.
    let log = origin.log();
    let fetched = origin_fetches(&log);
    let pool: Vec<(&String, &usize)> = fetched
        .iter()
        .filter(|(p, _)| p.contains("/pool/") || p.starts_with("/provision/"))
        .collect();
    assert!(pool.len() > 100, "the packages and boot files: {fetched:?}");
    for (path, n) in &pool {
        assert_eq!(**n, 1, "{path} came from the origin {n} times");
    }
    let set_bytes: u64 = fetched.keys().map(|p| served_size(&root, p)).sum();
    let into = topo.link(2).stats().b_to_a;
    // What the frames carried, without their headers: at MTU 1500 a bulk TCP transfer
    // puts 66 bytes of headers around every 1448, 4.6% that no cache can save.
    let payload = into
        .tx_bytes
        .saturating_sub(into.tx_frames * TCP_FRAME_OVERHEAD);
    let ratio = payload as f64 / set_bytes as f64;
    eprintln!(
        "installed 2 nodes in {:.0} s; one package set and boot files: {:.1} MB; WAN into site 2: \
         {:.1} MB in {} frames ({:.3}x the set), {:.1} MB of it payload ({ratio:.3}x)",
        install_time.as_secs_f64(),
        set_bytes as f64 / 1e6,
        into.tx_bytes as f64 / 1e6,
        into.tx_frames,
        into.tx_bytes as f64 / set_bytes as f64,
        payload as f64 / 1e6,
    );
    assert!(
        ratio <= 1.05,
        "the WAN carried {ratio:.3}x one package set into site 2 (payload)"
    );
    assert!(
        (into.tx_bytes as f64) < 1.8 * set_bytes as f64,
        "two nodes' installs must not cost two package sets on the wire"
    );

    // Booted from their own disks: each installed system said so on its console.
    let c = plane.cluster(&name);
    for n in &c.nodes {
        let h = n.health.as_ref();
        assert_eq!(
            h.and_then(|h| h.accel.as_deref()),
            Some("tcg"),
            "{}'s status names its accelerator",
            n.name
        );
        assert_eq!(
            h.map(|h| h.health.as_str()),
            Some("unknown"),
            "{}: a VM without an agent channel is neither up nor down",
            n.name
        );
    }
    for n in &nodes {
        let chunk: ConsoleChunk = plane
            .block_on(
                plane
                    .user()
                    .get(&format!("/v1/clusters/{name}/nodes/{n}/console")),
            )
            .unwrap();
        assert!(
            chunk.text.contains(&format!("VC-BOOTED node={n}")),
            "{n}'s console: {}",
            &chunk.text[chunk.text.len().saturating_sub(2000)..]
        );
    }
    let events: Vec<Event> = plane
        .block_on(plane.user().get("/v1/events?limit=1000"))
        .unwrap();
    for n in &nodes {
        for kind in [
            "install-pxe",
            "install-installing",
            "install-rebooting",
            "install-booted",
        ] {
            assert!(
                events
                    .iter()
                    .any(|e| e.kind == kind && e.message.contains(n.as_str())),
                "{kind} for {n}"
            );
        }
    }
    let cli = plane.cli(&["cluster", "show", &name]);
    assert!(cli.success, "{}", cli.stderr);
    assert_eq!(cli.stdout.matches(" booted ").count(), 2, "{}", cli.stdout);
    drop(c);

    // One node reinstalled: a new install, from the warm site cache.
    topo.reset_wan_stats();
    let fetched_before = fetched.len();
    let again = Instant::now();
    let out = plane.cli(&["reinstall", &nodes[0]]);
    assert!(out.success, "{}", out.stderr);
    wait_until("the reinstall started", Duration::from_secs(30), || {
        install_state(&plane.cluster(&name), &nodes[0]) != Some(InstallState::Booted)
    });
    wait_booted(&plane, &name, &nodes[..1], Duration::from_secs(1200));
    let reinstall_time = again.elapsed();
    let into_site2 = topo.link(2).stats().b_to_a.tx_bytes;
    let refetched: Vec<String> = origin_fetches(&origin.log())
        .into_iter()
        .filter(|(p, n)| (p.contains("/pool/") || p.starts_with("/provision/")) && *n > 1)
        .map(|(p, _)| p)
        .collect();
    assert!(
        refetched.is_empty(),
        "fetched from the origin again: {refetched:?}"
    );
    eprintln!(
        "reinstalled {} in {:.0} s; WAN into site 2 meanwhile: {:.2} MB ({:.4}x the set); origin paths: {fetched_before}",
        nodes[0],
        reinstall_time.as_secs_f64(),
        into_site2 as f64 / 1e6,
        into_site2 as f64 / set_bytes as f64
    );
    assert!(
        (into_site2 as f64) < 0.05 * set_bytes as f64,
        "a reinstall from a warm cache moved {into_site2} bytes across the WAN"
    );
    assert_eq!(
        install_state(&plane.cluster(&name), &nodes[1]),
        Some(InstallState::Booted),
        "the other node was left alone"
    );

    // Deleted: its VMs, its frontend and site services go from both hosts.
    let task = plane.delete_cluster(&name);
    assert_eq!(task.state, TaskState::Succeeded, "{}", task.message);
    let left: Vec<String> = site_tests::list_namespaces()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{name}-")))
        .collect();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    assert!(qemu_pids(&topo).is_empty(), "the VMs' directories are gone");
}
