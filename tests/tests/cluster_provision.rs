//! Provisioning as an operator meets it, end to end and for real: two QEMU nodes (TCG) at
//! site 2 PXE-boot across `vpnd` from their cluster's frontend at site 1 (real dnsmasq,
//! iPXE), fetch the installer and real Debian packages from site 2's own cache (which
//! fetches each file once from the origin repository behind the emulated WAN, 20 ms round
//! trip from every site), install, reboot from their disks and report `booted`. The host
//! agent of site 2 is restarted while they install; then one node is reinstalled while
//! the other is killed (`kill -9` of its QEMU) and recovered.
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
use site_tests::provision::{Origin, TCP_FRAME_OVERHEAD, site_cache};
use site_tests::{
    ControlPlane, ControlPlaneOpts, LinkParams, Overlay, Process, Topology, require_command,
    require_root, unique_name, wait_until,
};
use vcluster::model::{
    Accepted, Cluster, ConsoleChunk, Event, Firmware, InstallState, SeenBy, TaskState,
};

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

/// Where the first event of `story` containing `what` is; panics with the story if none.
fn event_at(story: &[String], what: &str) -> usize {
    story
        .iter()
        .position(|m| m.contains(what))
        .unwrap_or_else(|| panic!("no event '{what}': {story:#?}"))
}

fn vm_dir(topo: &Topology, node: &str) -> PathBuf {
    topo.dir().join("agent2").join("vms").join(node)
}

/// How many live QEMU processes run `node`'s VM (its QMP socket on their command line).
/// Launching one shows two for a moment (QEMU's `-daemonize` forks twice and the first
/// process waits for the last to be ready, running no guest), and a process killed with
/// SIGKILL takes a moment to go: two are counted again after a few seconds, and only two
/// that last are two VMs.
fn qemu_processes(topo: &Topology, node: &str) -> usize {
    let socket = vm_dir(topo, node).join("qmp.sock");
    let needle = socket.to_string_lossy().into_owned();
    let count = || {
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
                    && alive(pid)
            })
            .count()
    };
    let n = count();
    if n <= 1 {
        return n;
    }
    std::thread::sleep(Duration::from_secs(5));
    count()
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

/// Two sites 20 ms apart, each with a site cache in front of the origin repository in the
/// WAN's namespace; the controller; site 2's agent takes `agent2_args` (its driver).
struct Bed {
    // Dropped in this order: the servers, the control plane, then the overlay and sites.
    origin: Origin,
    plane: ControlPlane,
    _caches: [Process; 2],
    _overlay: Overlay,
    topo: Topology,
}

impl Bed {
    fn start(assets: &Path, agent2_args: Vec<String>) -> Bed {
        let topo = Topology::builder()
            .sites(2)
            .vms_per_site(0)
            // 5 ms on each access link, each way: every site is 20 ms from every other.
            .link_params(LinkParams::default().delay(Duration::from_millis(5)))
            .build();
        let overlay = Overlay::start_with(&topo, &[], |_, _| {});
        let caches = [1, 2].map(|i| site_cache(&topo, i, &topo.dir().join(format!("cache{i}"))));
        let site_cache = vec!["--site-cache".to_string(), "127.0.0.1:3142".to_string()];
        let opts = ControlPlaneOpts {
            host_memory_mib: 4096,
            // Two TCG VMs and eight dpkg runs share two cores here: a beat can come late
            // (the default 4 beats of 1 s called a whole host down once), and a task can
            // take longer than a minute.
            down_after_beats: 8,
            task_timeout: 300,
            controller_args: vec!["--install-phase-timeout".into(), "900".into()],
            agent_args: vec![site_cache.clone(), [agent2_args, site_cache].concat()],
            ..ControlPlaneOpts::default()
        };
        let plane = ControlPlane::start_with(&topo, &overlay, &opts);
        let origin = Origin::start(&topo, assets);
        Bed {
            origin,
            plane,
            _caches: caches,
            _overlay: overlay,
            topo,
        }
    }

    /// The packages and boot files the origin served, each once: panics for one served
    /// twice; returns their paths and total size.
    fn each_file_once(&self) -> (BTreeMap<String, usize>, u64) {
        let fetched = self.origin.fetches();
        let pool: Vec<(&String, &usize)> = fetched
            .iter()
            .filter(|(p, _)| p.contains("/pool/") || p.starts_with("/provision/"))
            .collect();
        assert!(pool.len() > 100, "the packages and boot files: {fetched:?}");
        for (path, n) in &pool {
            assert_eq!(**n, 1, "{path} came from the origin {n} times");
        }
        let set_bytes: u64 = fetched.keys().map(|p| self.origin.size(p)).sum();
        (fetched, set_bytes)
    }

    /// The payload that crossed the WAN into site 2 as a multiple of `set_bytes` (frame
    /// headers taken out), with the bytes and frames on the wire.
    fn wan_into_site2(&self, set_bytes: u64) -> (f64, u64, u64) {
        let into = self.topo.link(2).stats().b_to_a;
        // What the frames carried, without their headers: at MTU 1500 a bulk TCP transfer
        // puts 66 bytes of headers around every 1448, 4.6% that no cache can save.
        let payload = into
            .tx_bytes
            .saturating_sub(into.tx_frames * TCP_FRAME_OVERHEAD);
        (
            payload as f64 / set_bytes as f64,
            into.tx_bytes,
            into.tx_frames,
        )
    }

    /// Each of `nodes` went through every phase, each logged as an event.
    /// The events that name `node`, oldest first.
    fn events_of(&self, node: &str) -> Vec<Event> {
        let mut e: Vec<Event> = self
            .plane
            .block_on(self.plane.user().get::<Vec<Event>>("/v1/events?limit=1000"))
            .unwrap()
            .into_iter()
            .filter(|e| {
                e.message.contains(&format!("node {node}"))
                    || e.message.contains(&format!("install of {node}"))
            })
            .collect();
        e.sort_by_key(|e| e.id);
        e
    }

    /// What the events of `node` say, `kind: message`, oldest first.
    fn story(&self, node: &str) -> Vec<String> {
        self.events_of(node)
            .iter()
            .map(|e| format!("{}: {}", e.kind, e.message))
            .collect()
    }

    fn assert_install_events(&self, nodes: &[String]) {
        let events: Vec<Event> = self
            .plane
            .block_on(self.plane.user().get("/v1/events?limit=1000"))
            .unwrap();
        for n in nodes {
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
    }

    /// Packages and boot files the origin served more than once.
    fn refetched(&self) -> Vec<String> {
        self.origin
            .fetches()
            .into_iter()
            .filter(|(p, n)| (p.contains("/pool/") || p.starts_with("/provision/")) && *n > 1)
            .map(|(p, _)| p)
            .collect()
    }

    /// Makes the test profile `debian`: the base system, two more packages, a file and a
    /// post script.
    fn make_profile(&self) {
        let _: serde_json::Value = self.plane.admin_post(
            "/v1/roles",
            &json!({"name": "base", "packages": ["less", "curl"],
                    "files": [{"path": "/etc/motd", "content": "{{ node.name }} of {{ cluster.name }}, installed by vcluster\n"}],
                    "post": "echo post ran > /root/post-ran\n"}),
        );
        let _: serde_json::Value = self.plane.admin_post(
            "/v1/profiles",
            &json!({"name": "debian", "roles": ["base"]}),
        );
    }
}

/// The assets, or `None` after a loud skip (a failure in CI).
fn assets_or_skip(test: &str) -> Option<PathBuf> {
    match site_tests::provision::assets() {
        Ok(a) => Some(a),
        Err(why) if std::env::var_os("CI").is_some() => panic!("{test}: {why}"),
        Err(why) => {
            site_tests::skip(test, &why);
            None
        }
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
    let Some(assets) = assets_or_skip(test) else {
        return;
    };
    let mut bed = Bed::start(
        &assets,
        vec![
            "--driver".to_string(),
            "qemu".into(),
            "--accel".into(),
            "tcg".into(),
        ],
    );

    bed.make_profile();

    bed.topo.reset_wan_stats();
    let name = unique_name("pv");
    let started = Instant::now();
    let c = bed.plane.create_cluster(&json!({
        "name": name,
        "sites": [{"site": "site2", "nodes": 1}],
        "profile": "debian",
        "frontend_site": "site1",
        "node_cpus": 1,
        "node_memory_mib": 768,
    }));
    assert_eq!(c.frontend_host.as_deref(), Some("site1-h1"));
    // A second node with UEFI firmware (OVMF), installing beside the BIOS one.
    let added: Accepted = bed
        .plane
        .block_on(bed.plane.user().post(
            &format!("/v1/clusters/{name}/nodes"),
            &json!({"count": 1, "site": "site2", "firmware": "uefi"}),
        ))
        .unwrap();
    bed.plane.expect_success(&added.task);
    let c = bed.plane.cluster(&name);
    let nodes: Vec<String> = c.nodes.iter().map(|n| n.name.clone()).collect();
    assert_eq!(nodes.len(), 2);
    assert!(c.nodes.iter().all(|n| n.site == "site2"));
    let firmware: Vec<Firmware> = c.nodes.iter().map(|n| n.firmware).collect();
    assert_eq!(firmware, [Firmware::Bios, Firmware::Uefi]);

    // Mid-install, site 2's agent restarts: its VMs and their installs carry on.
    wait_until("a node is installing", Duration::from_secs(300), || {
        let c = bed.plane.cluster(&name);
        nodes
            .iter()
            .any(|n| install_state(&c, n) == Some(InstallState::Installing))
    });
    let before = qemu_pids(&bed.topo);
    assert_eq!(before.len(), 2, "{before:?}");
    bed.plane.restart_agent(&bed.topo, 2);
    wait_until("site 2's agent is back", Duration::from_secs(60), || {
        bed.plane.hosts().iter().all(|h| h.online)
    });
    std::thread::sleep(Duration::from_secs(10));
    let after = qemu_pids(&bed.topo);
    assert_eq!(
        before, after,
        "the same QEMU processes after the agent's restart"
    );
    assert!(after.values().all(|p| alive(*p)), "and they still run");

    wait_booted(&bed.plane, &name, &nodes, Duration::from_secs(1500));
    let install_time = started.elapsed();

    // Each file crossed the WAN once, whatever the number of nodes.
    let (fetched, set_bytes) = bed.each_file_once();
    let (ratio, wire, frames) = bed.wan_into_site2(set_bytes);
    eprintln!(
        "installed 2 nodes in {:.0} s; one package set and boot files: {:.1} MB; WAN into site 2: \
         {:.1} MB in {frames} frames ({:.3}x the set), payload {ratio:.3}x",
        install_time.as_secs_f64(),
        set_bytes as f64 / 1e6,
        wire as f64 / 1e6,
        wire as f64 / set_bytes as f64,
    );
    assert!(
        ratio <= 1.05,
        "the WAN carried {ratio:.3}x one package set into site 2 (payload)"
    );
    assert!(
        (wire as f64) < 1.8 * set_bytes as f64,
        "two nodes' installs must not cost two package sets on the wire"
    );

    // Booted from their own disks: each installed system said so on its console. Watched
    // from the next beat on: a VM without an agent channel is up while its host sees it
    // running.
    wait_until("both VMs are up", Duration::from_secs(30), || {
        bed.plane.cluster(&name).nodes.iter().all(|n| {
            n.health
                .as_ref()
                .is_some_and(|h| h.health.as_str() == "up" && h.seen_by == Some(SeenBy::Hypervisor))
        })
    });
    let c = bed.plane.cluster(&name);
    for n in &c.nodes {
        let h = n.health.as_ref();
        assert_eq!(
            h.and_then(|h| h.accel.as_deref()),
            Some("tcg"),
            "{}'s status names its accelerator",
            n.name
        );
    }
    for (n, firmware) in nodes.iter().zip(&firmware) {
        let chunk: ConsoleChunk = bed
            .plane
            .block_on(
                bed.plane
                    .user()
                    .get(&format!("/v1/clusters/{name}/nodes/{n}/console")),
            )
            .unwrap();
        assert!(
            chunk.text.contains(&format!("VC-BOOTED node={n}")),
            "{n}'s console: {}",
            &chunk.text[chunk.text.len().saturating_sub(2000)..]
        );
        // The installed kernel says which firmware started it (UEFI: "efi: EFI v2.70 by
        // EDK II"; SeaBIOS: no EFI line at all).
        let efi = chunk.text.contains("efi: EFI v");
        assert_eq!(
            efi,
            *firmware == Firmware::Uefi,
            "{n} ({firmware}) booted {} firmware",
            if efi { "UEFI" } else { "BIOS" }
        );
    }
    bed.assert_install_events(&nodes);
    let cli = bed.plane.cli(&["cluster", "show", &name]);
    assert!(cli.success, "{}", cli.stderr);
    assert_eq!(cli.stdout.matches(" booted ").count(), 2, "{}", cli.stdout);
    drop(c);

    // One node reinstalled: a new install, from the warm site cache.
    bed.topo.reset_wan_stats();
    let fetched_before = fetched.len();
    let again = Instant::now();
    let out = bed.plane.cli(&["reinstall", &nodes[0]]);
    assert!(out.success, "{}", out.stderr);
    wait_until("the reinstall started", Duration::from_secs(30), || {
        install_state(&bed.plane.cluster(&name), &nodes[0]) != Some(InstallState::Booted)
    });

    // Meanwhile the other VM is killed (`kill -9` of its QEMU): its host no longer sees
    // it running, so it is down after the same beats as a silent agent, fenced (confirmed
    // off), and started again from its disk; never two QEMUs for it.
    let victim = &nodes[1];
    // Its serial console, appended across boots: what comes after the kill is the restart.
    let console = vm_dir(&bed.topo, victim).join("console.log");
    let console_at_kill = std::fs::metadata(&console).map_or(0, |m| m.len()) as usize;
    let killed = qemu_pids(&bed.topo)[victim];
    // SAFETY: kill(2) on the pid of a QEMU this test's host agent started.
    assert_eq!(unsafe { libc::kill(killed as i32, libc::SIGKILL) }, 0);
    wait_until(
        "the killed VM is recovered",
        Duration::from_secs(180),
        || {
            assert!(
                qemu_processes(&bed.topo, victim) <= 1,
                "two QEMUs run {victim}"
            );
            bed.story(victim)
                .iter()
                .any(|m| m.starts_with("recovered:"))
        },
    );
    let story = bed.story(victim);
    let at = |what: &str| event_at(&story, what);
    assert!(
        at("its host has not seen its VM running") < at("fencing it"),
        "{story:#?}"
    );
    assert!(at("fencing it") < at("fenced: host"), "{story:#?}");
    assert!(at("fenced: host") < at("restarted on host"), "{story:#?}");
    assert!(at("restarted on host") < at("recovered:"), "{story:#?}");
    let restarted = qemu_pids(&bed.topo)[victim];
    assert_ne!(restarted, killed, "a new QEMU runs {victim}");
    assert!(alive(restarted));
    assert!(!alive(killed));

    wait_booted(&bed.plane, &name, &nodes[..1], Duration::from_secs(1200));
    let reinstall_time = again.elapsed();
    let into_site2 = bed.topo.link(2).stats().b_to_a.tx_bytes;
    let refetched = bed.refetched();
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
        install_state(&bed.plane.cluster(&name), &nodes[1]),
        Some(InstallState::Booted),
        "the other node's install was left alone by its recovery"
    );
    // The restarted VM booted its installed system again (its getty's prompt: the
    // first-boot marker is printed once), and is up.
    wait_until(
        "the restarted VM boots its installed system",
        Duration::from_secs(300),
        || {
            let text = std::fs::read(&console).unwrap_or_default();
            String::from_utf8_lossy(&text[console_at_kill.min(text.len())..])
                .contains(&format!("{victim} login:"))
        },
    );
    assert_eq!(qemu_processes(&bed.topo, victim), 1);
    let c = bed.plane.cluster(&name);
    let v = c.nodes.iter().find(|n| &n.name == victim).unwrap();
    assert_eq!(v.state.as_str(), "running", "{v:?}");
    assert_eq!(
        v.health.as_ref().map(|h| h.health.as_str()),
        Some("up"),
        "{v:?}"
    );

    // Deleted: its VMs, its frontend and site services go from both hosts.
    let task = bed.plane.delete_cluster(&name);
    assert_eq!(task.state, TaskState::Succeeded, "{}", task.message);
    let left: Vec<String> = site_tests::list_namespaces()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{name}-")))
        .collect();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    assert!(
        qemu_pids(&bed.topo).is_empty(),
        "the VMs' directories are gone"
    );
}

/// The root directories of `nodes` on site 2's host (the netns driver's "disks").
fn node_root(topo: &Topology, node: &str) -> PathBuf {
    topo.dir()
        .join("agent2")
        .join("nodes")
        .join(format!("{node}.root"))
}

#[test]
fn eight_lightweight_nodes_install_in_parallel_through_the_same_pipeline_and_one_is_reinstalled() {
    let test = "eight_lightweight_nodes_install_in_parallel_through_the_same_pipeline_and_one_is_reinstalled";
    if !require_root(test)
        || !require_command(test, "dnsmasq")
        || !require_command(test, "python3")
        || !require_command(test, "busybox")
    {
        return;
    }
    let Some(assets) = assets_or_skip(test) else {
        return;
    };
    let bed = Bed::start(&assets, vec![]);
    bed.make_profile();

    bed.topo.reset_wan_stats();
    let name = unique_name("lw");
    let started = Instant::now();
    let c = bed.plane.create_cluster(&json!({
        "name": name,
        "sites": [{"site": "site2", "nodes": 8}],
        "profile": "debian",
        "frontend_site": "site1",
    }));
    let nodes: Vec<String> = c.nodes.iter().map(|n| n.name.clone()).collect();
    assert_eq!(nodes.len(), 8);
    // While they install they have no agent: nobody calls them down.
    wait_until("a node is installing", Duration::from_secs(120), || {
        let c = bed.plane.cluster(&name);
        nodes
            .iter()
            .any(|n| install_state(&c, n) == Some(InstallState::Installing))
    });
    let c = bed.plane.cluster(&name);
    for n in &c.nodes {
        let health = n.health.as_ref().map(|h| h.health.as_str());
        assert_ne!(health, Some("down"), "{} is installing, not down", n.name);
    }
    wait_booted(&bed.plane, &name, &nodes, Duration::from_secs(900));
    let install_time = started.elapsed();

    let (fetched, set_bytes) = bed.each_file_once();
    let (ratio, wire, frames) = bed.wan_into_site2(set_bytes);
    eprintln!(
        "installed 8 lightweight nodes in {:.0} s; one package set and boot files: {:.1} MB; \
         WAN into site 2: {:.1} MB in {frames} frames, payload {ratio:.3}x the set",
        install_time.as_secs_f64(),
        set_bytes as f64 / 1e6,
        wire as f64 / 1e6,
    );
    assert!(
        ratio <= 1.05,
        "the WAN carried {ratio:.3}x one package set into site 2 (payload) for 8 nodes"
    );

    // Each root holds the installed system, configured: its profile's file and post
    // script, its name, a dpkg database; the first boot consumed the token's file.
    for n in &nodes {
        let root = node_root(&bed.topo, n);
        let motd = std::fs::read_to_string(root.join("etc/motd")).unwrap();
        assert_eq!(motd, format!("{n} of {name}, installed by vcluster\n"));
        assert_eq!(
            std::fs::read_to_string(root.join("root/post-ran")).unwrap(),
            "post ran\n"
        );
        assert_eq!(
            std::fs::read_to_string(root.join("etc/hostname")).unwrap(),
            format!("{n}\n")
        );
        let status = std::fs::read_to_string(root.join("var/lib/dpkg/status")).unwrap();
        for pkg in [
            "Package: curl\n",
            "Package: less\n",
            "Package: openssh-server\n",
        ] {
            let at = status.find(pkg).unwrap_or_else(|| panic!("{n}: no {pkg}"));
            assert!(
                status[at..]
                    .lines()
                    .nth(1)
                    .unwrap_or("")
                    .contains("install ok installed"),
                "{n}: {pkg} is not configured"
            );
        }
        assert!(
            !root.join("etc/vcluster/install.env").exists(),
            "{n}: the first boot forgets the install's token"
        );
        assert!(
            !root.join("usr/sbin/policy-rc.d").exists(),
            "{n}: the installer's service block is gone"
        );
    }
    // Booted nodes run their agents: watched, and up.
    wait_until("every node is up", Duration::from_secs(30), || {
        bed.plane
            .cluster(&name)
            .nodes
            .iter()
            .all(|n| n.health.as_ref().is_some_and(|h| h.health.as_str() == "up"))
    });
    bed.assert_install_events(&nodes);
    // Their reports went to their own host at their site, which sent them on in batches:
    // only the frontend's `pxe` reports came one by one.
    let batches = requests_on(&bed, "/v1/hosts/{host}/install-reports/batch", 200);
    let single = requests_on(&bed, "/v1/hosts/{host}/install-reports", 204);
    eprintln!("install reports: {batches} batches, {single} single reports");
    assert!(
        batches > 0,
        "no batch of install reports reached the controller"
    );
    assert!(
        single <= 2 * nodes.len() as u64,
        "{single} reports came one by one (the frontend's pxe only: one a node)"
    );
    // The token never reached a log.
    let log = std::fs::read_to_string(
        bed.topo
            .dir()
            .join("agent2")
            .join("nodes")
            .join(format!("{}.log", nodes[0])),
    )
    .unwrap();
    assert!(log.contains("vc-netboot"), "{log}");
    assert!(!log.contains("vc.token="), "the node's log holds its token");

    // One node reinstalled: its root made anew, from the warm site cache.
    bed.topo.reset_wan_stats();
    let marker = node_root(&bed.topo, &nodes[0]).join("root/left-over");
    std::fs::write(&marker, "from the first install\n").unwrap();
    let out = bed.plane.cli(&["reinstall", &nodes[0]]);
    assert!(out.success, "{}", out.stderr);
    wait_until("the reinstall started", Duration::from_secs(30), || {
        install_state(&bed.plane.cluster(&name), &nodes[0]) != Some(InstallState::Booted)
    });
    wait_booted(&bed.plane, &name, &nodes[..1], Duration::from_secs(600));
    assert!(!marker.exists(), "the reinstall starts from an empty root");
    let into_site2 = bed.topo.link(2).stats().b_to_a.tx_bytes;
    assert!(
        (into_site2 as f64) < 0.05 * set_bytes as f64,
        "a reinstall from a warm cache moved {into_site2} bytes across the WAN"
    );
    let refetched = bed.refetched();
    assert!(refetched.is_empty(), "fetched again: {refetched:?}");
    assert!(fetched.len() > 100);

    // A node whose disk is wiped and whose agent dies: it is called down, fenced, its
    // restart fails (a blank disk does not boot), and under restart-then-reinstall the
    // next attempt installs it anew through the pipeline; it boots and is up.
    let out = bed
        .plane
        .cli(&["cluster", "recovery", &name, "restart-then-reinstall"]);
    assert!(out.success, "{}", out.stderr);
    let victim = &nodes[1];
    let root = node_root(&bed.topo, victim);
    for e in std::fs::read_dir(&root).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() && !p.is_symlink() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
    }
    let pid_file = root.with_extension("pid");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: kill(2) on the node agent's pid, which this test's host agent started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let events_of = |node: &str| bed.events_of(node);
    wait_until(
        "the recovery reinstalls it",
        Duration::from_secs(120),
        || {
            events_of(victim)
                .iter()
                .any(|e| e.message.contains("reinstall started"))
        },
    );
    wait_booted(
        &bed.plane,
        &name,
        std::slice::from_ref(victim),
        Duration::from_secs(600),
    );
    wait_until(
        "the reinstalled node is up",
        Duration::from_secs(30),
        || {
            bed.plane.cluster(&name).nodes.iter().any(|n| {
                &n.name == victim && n.health.as_ref().is_some_and(|h| h.health.as_str() == "up")
            })
        },
    );
    let story = bed.story(victim);
    let at = |what: &str| event_at(&story, what);
    assert!(at("is down") < at("fenced"), "{story:#?}");
    assert!(at("fenced") < at("no installed system"), "{story:#?}");
    assert!(
        at("no installed system") < at("reinstall started"),
        "{story:#?}"
    );
    let reinstalled = at("reinstall started");
    assert!(
        story[reinstalled..]
            .iter()
            .any(|m| m.starts_with("install-booted")),
        "{story:#?}"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("etc/motd")).unwrap(),
        format!("{victim} of {name}, installed by vcluster\n")
    );
    let c = bed.plane.cluster(&name);
    let v = c.nodes.iter().find(|n| &n.name == victim).unwrap();
    assert_eq!(v.state.as_str(), "running", "{v:?}");

    // Deleted: the nodes and their roots go.
    let task = bed.plane.delete_cluster(&name);
    assert_eq!(task.state, TaskState::Succeeded, "{}", task.message);
    for n in &nodes {
        assert!(
            !node_root(&bed.topo, n).exists(),
            "{n}'s root is left after the delete"
        );
    }
}

/// Requests the controller answered on `route` (a route template) with `status`, from its
/// `/metrics`.
fn requests_on(bed: &Bed, route: &str, status: u16) -> u64 {
    let text = bed.plane.get_text(&bed.topo, "/metrics");
    let (route, status) = (format!("route=\"{route}\""), format!("status=\"{status}\""));
    text.lines()
        .filter(|l| l.starts_with("vcluster_http_requests_total{"))
        .filter(|l| l.contains(&route) && l.contains(&status))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}
