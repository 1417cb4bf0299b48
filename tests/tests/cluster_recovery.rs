//! Monitoring and recovery as an operator meets them: lightweight nodes at two sites
//! whose agents are killed, crash in a loop, or whose whole site is cut off the WAN.
//! The controller heartbeats every second and calls a node down after 2 silent beats.
//! Needs root; the control plane and the topology clean up after themselves.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use site_tests::cluster::node_agent_pids;
use site_tests::{
    ControlPlane, ControlPlaneOpts, LinkParams, Overlay, Topology, require_root, unique_name,
    wait_until,
};
use vcluster::model::{Cluster, Event, Health, NodeState};

fn setup() -> (Topology, Overlay) {
    let topo = Topology::builder()
        .sites(2)
        .vms_per_site(0)
        .link_params(LinkParams::default().delay(Duration::from_millis(2)))
        .build();
    let overlay = Overlay::start_with(&topo, &[], |_, _| {});
    (topo, overlay)
}

fn opts() -> ControlPlaneOpts {
    ControlPlaneOpts {
        down_after_beats: 2,
        ..ControlPlaneOpts::default()
    }
}

fn events_of(plane: &ControlPlane, node: &str) -> Vec<Event> {
    let mut e: Vec<Event> = plane
        .block_on(plane.user().get::<Vec<Event>>("/v1/events?limit=1000"))
        .unwrap()
        .into_iter()
        .filter(|e| e.message.contains(&format!("node {node}")))
        .collect();
    e.sort_by_key(|e| e.id);
    e
}

fn health(c: &Cluster, node: &str) -> Option<Health> {
    c.nodes
        .iter()
        .find(|n| n.name == node)
        .and_then(|n| n.health.as_ref())
        .map(|h| h.health)
}

/// Node agent pid per node name of `c`.
fn agent_pids(c: &Cluster) -> BTreeMap<String, Vec<u32>> {
    let mut m: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for pid in node_agent_pids(c) {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if let Some(w) = args.windows(2).find(|w| w[0] == "--name") {
            m.entry(w[1].clone()).or_default().push(pid);
        }
    }
    m
}

#[test]
fn a_killed_node_is_fenced_and_restarted_and_one_that_keeps_crashing_ends_failed() {
    let test = "a_killed_node_is_fenced_and_restarted_and_one_that_keeps_crashing_ends_failed";
    if !require_root(test) {
        return;
    }
    let (topo, overlay) = setup();
    let plane = ControlPlane::start_with(&topo, &overlay, &opts());
    let name = unique_name("r");
    let c = plane.create_cluster(&json!({
        "name": name,
        "sites": [{"site": "site1", "nodes": 2}, {"site": "site2", "nodes": 2}],
        "node_memory_mib": 64,
    }));
    assert_eq!(c.recovery.as_str(), "restart");
    wait_until("every node is up", Duration::from_secs(10), || {
        let c = plane.cluster(&name);
        c.nodes
            .iter()
            .all(|n| health(&c, &n.name) == Some(Health::Up))
    });

    // Kill a node's agent: down within the beats, fenced, restarted, up again.
    let victim = c
        .nodes
        .iter()
        .find(|n| n.site == "site1")
        .unwrap()
        .name
        .clone();
    let before = agent_pids(&c)[&victim].clone();
    assert_eq!(before.len(), 1);
    let killed = Instant::now();
    std::process::Command::new("kill")
        .args(["-9", &before[0].to_string()])
        .status()
        .unwrap();
    wait_until(
        "the killed node is recovered",
        Duration::from_secs(30),
        || {
            events_of(&plane, &victim)
                .iter()
                .any(|e| e.kind == "recovered")
        },
    );
    let took = killed.elapsed();
    let steps: Vec<String> = events_of(&plane, &victim)
        .iter()
        .map(|e| format!("{}: {}", e.kind, e.message))
        .collect();
    eprintln!(
        "recovered in {:.1} s:\n  {}",
        took.as_secs_f64(),
        steps.join("\n  ")
    );
    let order = [
        "node-down",
        "fencing it",
        "fenced: host",
        "restarted on host",
        "recovered",
    ];
    let mut at = 0;
    for step in order {
        let found = steps[at..]
            .iter()
            .position(|s| s.contains(step))
            .unwrap_or_else(|| panic!("no {step:?} after step {at} in {steps:#?}"));
        at += found + 1;
    }
    let c = plane.cluster(&name);
    assert_eq!(health(&c, &victim), Some(Health::Up));
    let after = agent_pids(&c)[&victim].clone();
    assert_eq!(after.len(), 1, "one agent, never two");
    assert_ne!(after, before, "a fresh agent");

    // A node that crashes as soon as it starts: three attempts with backoff, then failed.
    let looping = c
        .nodes
        .iter()
        .find(|n| n.site == "site2")
        .unwrap()
        .name
        .clone();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                if let Some(pids) = agent_pids(&c).get(&looping) {
                    for p in pids {
                        let _ = std::process::Command::new("kill")
                            .args(["-9", &p.to_string()])
                            .status();
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let started = Instant::now();
        wait_until(
            "the crash-looping node ends failed",
            Duration::from_secs(90),
            || {
                plane
                    .cluster(&name)
                    .nodes
                    .iter()
                    .any(|n| n.name == looping && n.state == NodeState::Failed)
            },
        );
        eprintln!("failed after {:.1} s", started.elapsed().as_secs_f64());
        stop.store(true, Ordering::Relaxed);
    });
    let c = plane.cluster(&name);
    let failed = c.nodes.iter().find(|n| n.name == looping).unwrap();
    assert!(
        failed
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("gave up after 3 attempts")),
        "{failed:?}"
    );
    let events = events_of(&plane, &looping);
    let attempts = events
        .iter()
        .filter(|e| e.message.contains("recovery attempt"))
        .count();
    assert_eq!(attempts, 3, "{events:#?}");
    assert!(events.iter().any(|e| e.kind == "recovery-failed"));
    // The others never moved.
    for n in c.nodes.iter().filter(|n| n.name != looping) {
        assert_eq!(n.state, NodeState::Running, "{n:?}");
    }
    plane.delete_cluster(&name);
    let left = plane.leftovers(&topo, &overlay, &c);
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn a_site_cut_off_the_wan_is_never_fenced_from_afar_and_no_node_runs_twice() {
    let test = "a_site_cut_off_the_wan_is_never_fenced_from_afar_and_no_node_runs_twice";
    if !require_root(test) {
        return;
    }
    let (topo, overlay) = setup();
    let plane = ControlPlane::start_with(&topo, &overlay, &opts());
    let name = unique_name("p");
    let c = plane.create_cluster(&json!({
        "name": name,
        "sites": [{"site": "site1", "nodes": 2}, {"site": "site2", "nodes": 2}],
        "node_memory_mib": 64,
    }));
    wait_until("every node is up", Duration::from_secs(10), || {
        let c = plane.cluster(&name);
        c.nodes
            .iter()
            .all(|n| health(&c, &n.name) == Some(Health::Up))
    });
    let cut: Vec<String> = c
        .nodes
        .iter()
        .filter(|n| n.site == "site1")
        .map(|n| n.name.clone())
        .collect();
    let before = agent_pids(&c);
    assert!(before.values().all(|p| p.len() == 1), "{before:?}");

    // Site 1 loses the WAN for 8 s: its host agent misses heartbeats, its nodes go down,
    // and fencing them cannot be confirmed, so nothing restarts them anywhere.
    topo.link(1).set_outage(true);
    let cut_from = now_ms();
    let outage = Instant::now();
    let mut most = 0;
    while outage.elapsed() < Duration::from_secs(8) {
        let now = agent_pids(&c);
        most = most.max(now.values().map(Vec::len).max().unwrap_or(0));
        std::thread::sleep(Duration::from_millis(100));
    }
    let during = plane.cluster(&name);
    for n in &cut {
        assert_eq!(
            health(&during, n),
            Some(Health::Down),
            "{n} during the outage"
        );
    }
    topo.link(1).set_outage(false);
    let cut_to = now_ms();
    wait_until(
        "site 1's nodes are up again",
        Duration::from_secs(20),
        || {
            let c = plane.cluster(&name);
            cut.iter().all(|n| health(&c, n) == Some(Health::Up))
        },
    );
    assert!(most <= 1, "a node ran {most} agents at once");
    // Recovery tried (the nodes were down) but nothing was confirmed fenced, let alone
    // restarted, while the host could not answer: a fence request either failed (and
    // nothing was started) or reached the host after the link came back.
    let mut tried = 0;
    for n in &cut {
        let events = events_of(&plane, n);
        tried += events
            .iter()
            .filter(|e| e.message.contains("recovery attempt"))
            .count();
        let restarted_during = events.iter().any(|e| {
            e.message.contains("restarted on host")
                && (cut_from..=cut_to).contains(&e.at.timestamp_millis())
        });
        assert!(
            !restarted_during,
            "{n} was restarted while its host was cut off: {events:#?}"
        );
        let fenced_during = events.iter().any(|e| {
            e.message.contains("fenced: host")
                && (cut_from..=cut_to).contains(&e.at.timestamp_millis())
        });
        assert!(
            !fenced_during,
            "{n} was fenced while its host was cut off: {events:#?}"
        );
    }
    assert!(tried >= cut.len(), "recovery never tried");
    // The host itself went offline and came back, each an event (the admin's), written by
    // the controller's next housekeeping round.
    let host_events = || -> Vec<Event> {
        plane
            .block_on(plane.admin().get::<Vec<Event>>("/v1/events?limit=1000"))
            .unwrap()
            .into_iter()
            .filter(|e| e.message.contains("host site1-h1"))
            .collect()
    };
    let has = |kind: &str| host_events().iter().any(|e| e.kind == kind);
    assert!(has("host-down"), "{:#?}", host_events());
    wait_until("the host-up event", Duration::from_secs(10), || {
        has("host-up")
    });
    // Site 2 was never touched.
    let after = agent_pids(&plane.cluster(&name));
    for n in c.nodes.iter().filter(|n| n.site == "site2") {
        assert_eq!(after[&n.name], before[&n.name], "{}", n.name);
    }
    plane.delete_cluster(&name);
    let left = plane.leftovers(&topo, &overlay, &c);
    assert!(left.is_empty(), "left behind: {left:?}");
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
