//! Virtual clusters across sites as a user meets them: the controller on the WAN, two
//! sites as network namespaces, each a hypervisor host with the real `vpnd` and a real
//! `vcluster host-agent`, joined through the WAN emulator (5 ms each way on every access
//! link). Clusters are made through the REST API; their lightweight nodes are network
//! namespaces the agents create. Every test needs root and skips loudly without it; the
//! control plane, the daemons and the topology clean up after themselves, pass or fail.

use std::net::UdpSocket;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use serde_json::json;
use site_tests::capture::{contains_bytes, tls_records};
use site_tests::{
    Capture, ControlPlane, ControlPlaneOpts, LinkParams, NetworkOpts, Overlay, Topology, in_netns,
    node_ip, node_reaches, require_command, require_root, unique_name, wait_all_pairs_reach,
};
use vcluster::model::{Cluster, NetworkDevices, Node, NodeState, OverlayState, TaskState};

fn can_run(test: &str) -> bool {
    require_root(test) && require_command(test, "nsenter") && require_command(test, "ethtool")
}

/// Two sites, no VMs of their own, `vpnd` at each with no networks: the host agents add
/// the clusters' networks through the control API.
fn two_sites() -> (Topology, Overlay) {
    let topo = Topology::builder()
        .sites(2)
        .vms_per_site(0)
        .link_params(LinkParams::default().delay(Duration::from_millis(5)))
        .build();
    let overlay = Overlay::start_with(&topo, &[], |_, _| {});
    (topo, overlay)
}

fn at_site<'a>(c: &'a Cluster, site: &str) -> Vec<&'a Node> {
    c.nodes.iter().filter(|n| n.site == site).collect()
}

/// Pairs (from, to) of different sites among `nodes`.
fn cross_site_pairs(nodes: &[Node]) -> Vec<(&Node, &Node)> {
    nodes
        .iter()
        .flat_map(|a| nodes.iter().map(move |b| (a, b)))
        .filter(|(a, b)| a.site != b.site)
        .collect()
}

/// The cluster's network in each site's `vpnd` is the agent's: its TAP on its bridge,
/// the other site as its one peer, running as the cluster's overlay says.
fn assert_vpnd_networks(overlay: &Overlay, c: &Cluster, running: bool) {
    let net = vcluster::model::NetworkId(c.network_id);
    for site in 1..=2 {
        let other = 3 - site;
        let n = overlay.network(site, c.network_id);
        assert_eq!(n.tap, net.tap_name(), "site{site}");
        assert_eq!(n.bridge.as_deref(), Some(net.bridge_name().as_str()));
        assert_eq!(n.running, running, "site{site}: network {}", c.network_id);
        assert_eq!(n.peers.len(), 1, "site{site}: {:?}", n.peers);
        assert_eq!(
            n.peers[0].public_key,
            overlay.daemons[other - 1].public_key(),
            "site{site}'s peer is site{other}'s vpnd"
        );
        assert_eq!(
            n.peers[0].endpoint.as_deref(),
            Some(format!("10.254.0.{other}:51820").as_str())
        );
    }
}

#[test]
fn a_cluster_across_two_sites_reaches_itself_over_vpnd_and_follows_its_overlay_switch() {
    let test = "a_cluster_across_two_sites_reaches_itself_over_vpnd_and_follows_its_overlay_switch";
    if !can_run(test) {
        return;
    }
    let (topo, overlay) = two_sites();
    let plane = ControlPlane::start(&topo, &overlay);
    let name = unique_name("a");

    let started = Instant::now();
    let c = plane.create_cluster(&json!({
        "name": name,
        "sites": [{"site": "site1", "nodes": 2}, {"site": "site2", "nodes": 2}],
        "node_memory_mib": 64,
    }));
    let created = started.elapsed();
    assert_eq!(c.nodes.len(), 4);
    assert!(
        c.nodes.iter().all(|n| n.state == NodeState::Running),
        "{c:?}"
    );
    assert_eq!(at_site(&c, "site1").len(), 2);
    assert_eq!(at_site(&c, "site2").len(), 2);
    assert_eq!(c.overlay, OverlayState::Running);
    assert_vpnd_networks(&overlay, &c, true);

    wait_all_pairs_reach(&c.nodes, Duration::from_secs(15));
    eprintln!(
        "4 nodes on 2 sites: task done in {:.2} s, every pair reachable after {:.2} s",
        created.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    // Cross-site pings went through vpnd: each site has a session and carried frames.
    for site in 1..=2 {
        let n = overlay.network(site, c.network_id);
        assert!(n.peers[0].session, "site{site} has a session");
        assert!(n.peers[0].rx_packets > 0 && n.peers[0].tx_packets > 0);
    }

    // Remove a node at site 2: its namespace and veth go; the other three still meet.
    let gone = at_site(&c, "site2")[1].clone();
    plane.remove_node(&name, &gone.name);
    let c = plane.cluster(&name);
    let live: Vec<Node> = c
        .nodes
        .iter()
        .filter(|n| n.state == NodeState::Running)
        .cloned()
        .collect();
    assert_eq!(live.len(), 3, "{c:?}");
    assert!(!live.iter().any(|n| n.name == gone.name));
    assert!(
        !site_tests::list_namespaces().contains(&gone.name),
        "{} is gone",
        gone.name
    );
    let veth = vcluster::model::NodeSlot {
        network: vcluster::model::NetworkId(c.network_id),
        index: gone.index,
    }
    .host_veth_name();
    assert!(
        !topo.host(2).ip(&["-o", "link", "show"]).contains(&veth),
        "{veth} is gone from site 2"
    );
    wait_all_pairs_reach(&live, Duration::from_secs(5));
    assert!(!node_reaches(&live[0], node_ip(&gone)));

    // Stop the overlay: vpnd's network stops at both sites; nodes at one site still meet
    // on their bridge, but nothing crosses the WAN.
    plane.set_overlay(&name, false);
    assert_eq!(plane.cluster(&name).overlay, OverlayState::Stopped);
    assert_vpnd_networks(&overlay, &c, false);
    for (a, b) in cross_site_pairs(&live) {
        assert!(
            !node_reaches(a, node_ip(b)),
            "{} ({}) must not reach {} ({}) with the overlay stopped",
            a.name,
            a.site,
            b.name,
            b.site
        );
    }
    let here = at_site(&c, "site1");
    assert!(
        node_reaches(here[0], node_ip(here[1])),
        "same-site nodes still meet"
    );

    // Start it again: every pair meets again.
    plane.set_overlay(&name, true);
    assert_eq!(plane.cluster(&name).overlay, OverlayState::Running);
    assert_vpnd_networks(&overlay, &c, true);
    wait_all_pairs_reach(&live, Duration::from_secs(15));

    // Delete: nothing of the cluster is left anywhere.
    plane.delete_cluster(&name);
    let left = plane.leftovers(&topo, &overlay, &c);
    assert!(left.is_empty(), "left behind: {left:?}");
    let left = plane.leftovers(
        &topo,
        &overlay,
        &Cluster {
            nodes: vec![gone],
            ..c.clone()
        },
    );
    assert!(left.is_empty(), "left behind: {left:?}");
    for site in 1..=2 {
        assert!(overlay.status(site).networks.is_empty(), "site{site}");
    }
}

/// Counts UDP datagrams carrying `payload` that arrive on port 9999 in each node of
/// `listeners` while `send` runs (after every listener is bound).
fn count_udp(listeners: &[&Node], send: impl FnOnce() + Send, payload: &[u8]) -> Vec<usize> {
    let barrier = Barrier::new(listeners.len() + 1);
    std::thread::scope(|s| {
        let handles: Vec<_> = listeners
            .iter()
            .map(|n| {
                let barrier = &barrier;
                s.spawn(move || {
                    in_netns(&n.name, || {
                        let sock = UdpSocket::bind("0.0.0.0:9999").expect("bind 9999");
                        sock.set_read_timeout(Some(Duration::from_millis(50)))
                            .unwrap();
                        barrier.wait();
                        let end = Instant::now() + Duration::from_millis(1500);
                        let mut count = 0;
                        let mut buf = [0u8; 2048];
                        while Instant::now() < end {
                            if let Ok((len, _)) = sock.recv_from(&mut buf)
                                && &buf[..len] == payload
                            {
                                count += 1;
                            }
                        }
                        count
                    })
                })
            })
            .collect();
        barrier.wait();
        send();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// The subnet's broadcast address (`10.128.1.255` for `10.128.1.0/24`) and the address
/// `host` in it.
fn subnet_addr(subnet: &str, host: u8) -> String {
    let base = subnet.split('/').next().unwrap();
    let octets: Vec<&str> = base.split('.').collect();
    assert_eq!(subnet.split('/').nth(1), Some("24"), "a /24: {subnet}");
    format!("{}.{}.{}.{host}", octets[0], octets[1], octets[2])
}

#[test]
fn two_clusters_on_the_same_hosts_cannot_reach_each_other() {
    let test = "two_clusters_on_the_same_hosts_cannot_reach_each_other";
    if !can_run(test) {
        return;
    }
    let (topo, overlay) = two_sites();
    let plane = ControlPlane::start(&topo, &overlay);
    let (name_a, name_b) = (unique_name("a"), unique_name("b"));
    let pinned = |name: &str, per_site: u32| {
        json!({
            "name": name,
            "sites": [{"site": "site1", "nodes": per_site}, {"site": "site2", "nodes": per_site}],
            "node_memory_mib": 64,
        })
    };
    let a = plane.create_cluster(&pinned(&name_a, 2));
    let b = plane.create_cluster(&pinned(&name_b, 1));
    assert_ne!(a.network_id, b.network_id);
    assert_ne!(a.subnet, b.subnet);
    assert_ne!(a.psk, b.psk);
    assert_vpnd_networks(&overlay, &a, true);
    assert_vpnd_networks(&overlay, &b, true);
    wait_all_pairs_reach(&a.nodes, Duration::from_secs(15));
    wait_all_pairs_reach(&b.nodes, Duration::from_secs(15));

    // Give A's node at each site an address in B's subnet. Within A, those addresses
    // reach each other across the WAN (so the probe works); B's nodes, on the same
    // hosts, never answer them, either way.
    let (a1, a3) = (at_site(&a, "site1")[0], at_site(&a, "site2")[0]);
    let (b1, b2) = (at_site(&b, "site1")[0], at_site(&b, "site2")[0]);
    let probe1 = subnet_addr(&b.subnet, 200);
    let probe3 = subnet_addr(&b.subnet, 201);
    for (n, ip) in [(a1, &probe1), (a3, &probe3)] {
        site_tests::netns_exec(
            &n.name,
            "ip",
            ["addr", "add", &format!("{ip}/24"), "dev", "eth0"],
        )
        .status()
        .expect("ip addr add");
    }
    assert!(
        node_reaches(a1, &probe3),
        "A's nodes reach each other on B's subnet (the probe works)"
    );
    for (from, to) in [(a1, node_ip(b1)), (a1, node_ip(b2)), (a3, node_ip(b1))] {
        assert!(
            !node_reaches(from, to),
            "{} (cluster A) must not reach {to} (cluster B)",
            from.name
        );
    }
    for (from, to) in [(b1, &probe1), (b1, &probe3), (b2, &probe1)] {
        assert!(
            !node_reaches(from, to),
            "{} (cluster B) must not reach {to} (on cluster A)",
            from.name
        );
    }
    // A broadcast on B's segment reaches B's other site, never A's nodes at either site.
    let payload = format!("broadcast from {}", b1.name).into_bytes();
    let counts = count_udp(
        &[b2, a1, a3],
        || {
            in_netns(&b1.name, || {
                let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
                sock.set_broadcast(true).unwrap();
                for _ in 0..3 {
                    sock.send_to(&payload, (subnet_addr(&b.subnet, 255), 9999))
                        .unwrap();
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        },
        &payload,
    );
    assert_eq!(
        counts,
        [3, 0, 0],
        "received by [B at site 2, A at 1, A at 2]"
    );
    // And at layer 2 in vpnd itself: A's network never learned a MAC of B's nodes.
    for site in 1..=2 {
        let macs = overlay
            .request(
                site,
                "GET",
                &format!("/v1/networks/{}/macs", a.network_id),
                None,
            )
            .expect("A's MAC table");
        let macs = String::from_utf8_lossy(&macs).to_lowercase();
        for n in &b.nodes {
            assert!(
                !macs.contains(&n.mac.to_lowercase()),
                "site{site}: A's network learned B's {} ({})",
                n.name,
                n.mac
            );
        }
    }

    // Deleting A leaves B working; deleting B too leaves nothing of either.
    plane.delete_cluster(&name_a);
    assert!(plane.leftovers(&topo, &overlay, &a).is_empty());
    wait_all_pairs_reach(&b.nodes, Duration::from_secs(5));
    plane.delete_cluster(&name_b);
    for c in [&a, &b] {
        let left = plane.leftovers(&topo, &overlay, c);
        assert!(left.is_empty(), "left behind of {}: {left:?}", c.name);
    }
    for site in 1..=2 {
        assert!(overlay.status(site).networks.is_empty(), "site{site}");
        let links = topo.host(site).ip(&["-o", "link", "show"]);
        assert!(
            !links.contains(": vc"),
            "site{site} has no vc* device left:\n{links}"
        );
    }
}

#[test]
fn a_restarted_vpnd_gets_its_cluster_networks_back_from_the_host_agent() {
    let test = "a_restarted_vpnd_gets_its_cluster_networks_back_from_the_host_agent";
    if !can_run(test) {
        return;
    }
    let (topo, mut overlay) = two_sites();
    let opts = ControlPlaneOpts {
        reconcile_every: 2,
        ..ControlPlaneOpts::default()
    };
    let plane = ControlPlane::start_with(&topo, &overlay, &opts);
    let name = unique_name("r");
    let c = plane.create_cluster(&json!({
        "name": name,
        "sites": [{"site": "site1", "nodes": 1}, {"site": "site2", "nodes": 1}],
        "node_memory_mib": 64,
    }));
    wait_all_pairs_reach(&c.nodes, Duration::from_secs(15));

    // vpnd at site 1 restarts from its config, which has no networks: the cluster's
    // network (and its TAP) is gone until the agent's next reconcile puts it back.
    overlay.restart(&topo, 1);
    assert!(overlay.status(1).networks.is_empty());
    wait_all_pairs_reach(&c.nodes, Duration::from_secs(20));
    assert_vpnd_networks(&overlay, &c, true);

    // Once converged, the agents' periodic reconciles leave vpnd alone: no network or
    // peer is added, removed, started or stopped again (which would reset sessions).
    let changes = |overlay: &mut Overlay, site: usize| {
        overlay
            .daemon(site)
            .process()
            .log()
            .lines()
            .filter(|l| {
                ["network ", "peer added", "peer removed"]
                    .iter()
                    .any(|w| l.contains(w))
            })
            .count()
    };
    let before = [changes(&mut overlay, 1), changes(&mut overlay, 2)];
    std::thread::sleep(Duration::from_secs(5));
    let after = [changes(&mut overlay, 1), changes(&mut overlay, 2)];
    assert_eq!(before, after, "vpnd changes during two idle reconciles");

    plane.delete_cluster(&name);
    let left = plane.leftovers(&topo, &overlay, &c);
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn an_operators_own_vpnd_network_is_never_taken_over_by_a_cluster() {
    let test = "an_operators_own_vpnd_network_is_never_taken_over_by_a_cluster";
    if !can_run(test) {
        return;
    }
    // The operator's network 1 (TAP vpn1 on br0, one VM per site), configured by hand;
    // the controller is (wrongly) told it may hand out id 1 too.
    let topo = Topology::builder()
        .sites(2)
        .vms_per_site(1)
        .link_params(LinkParams::default().delay(Duration::from_millis(5)))
        .build();
    let overlay = Overlay::start(&topo, &[NetworkOpts::new(1)]);
    let vm2 = topo.vm_ip(2, 1).unwrap();
    assert!(topo.vm(1, 1).ping(&vm2).received > 0);
    let plane = ControlPlane::start(&topo, &overlay);

    let name = unique_name("o");
    let accepted = plane.request_cluster(&json!({
        "name": name,
        "sites": [{"site": "site1", "nodes": 1}, {"site": "site2", "nodes": 1}],
        "node_memory_mib": 64,
    }));
    let c = accepted.cluster.expect("the 202 carries the cluster");
    assert_eq!(c.network_id, 1, "the controller picked the operator's id");
    let task = plane.wait_task(&accepted.task);
    assert_eq!(task.state, TaskState::Failed, "{task:?}");
    assert!(
        task.message.contains("vpn1"),
        "the message names the operator's network: {}",
        task.message
    );
    // The operator's network is untouched at both sites and still carries traffic.
    for site in 1..=2 {
        let n = overlay.network(site, 1);
        assert_eq!((n.tap.as_str(), n.bridge.as_deref()), ("vpn1", Some("br0")));
        assert!(n.running);
    }
    assert!(topo.vm(1, 1).ping(&vm2).received > 0);
    let left = plane.leftovers(&topo, &overlay, &c);
    assert!(
        left.iter().all(|l| l.starts_with("vpnd network 1")),
        "the failed cluster was rolled back: {left:?}"
    );

    // The next cluster gets a fresh id and lives next to the operator's network.
    let name2 = unique_name("o");
    let c2 = plane.create_cluster(&json!({
        "name": name2,
        "sites": [{"site": "site1", "nodes": 1}, {"site": "site2", "nodes": 1}],
        "node_memory_mib": 64,
    }));
    assert_ne!(c2.network_id, 1);
    wait_all_pairs_reach(&c2.nodes, Duration::from_secs(15));
    plane.delete_cluster(&name2);
    plane.delete_cluster(&name);
    assert!(plane.leftovers(&topo, &overlay, &c2).is_empty());
    for site in 1..=2 {
        let nets = overlay.status(site).networks;
        assert_eq!(nets.len(), 1, "site{site}: only the operator's network");
        assert_eq!(nets[0].tap, "vpn1");
    }
    assert!(topo.vm(1, 1).ping(&vm2).received > 0);
}

/// An observer of the WAN learns no secret: while the control plane starts (agents
/// register, sending their token and their own secret) and a user at site 1 creates a
/// cluster with the CLI (the controller then pushes each site its share, presenting the
/// agent's secret), every TCP packet in the wan namespace is captured. The capture holds
/// TLS records and none of the admin's, the user's or the agents' tokens nor the agents'
/// secrets.
#[test]
fn a_wan_observer_during_a_cluster_create_sees_tls_and_no_token_or_agent_secret() {
    let test = "a_wan_observer_during_a_cluster_create_sees_tls_and_no_token_or_agent_secret";
    if !can_run(test) || !require_command(test, "tcpdump") {
        return;
    }
    let (topo, overlay) = two_sites();
    let capture = Capture::start(topo.wan(), "any", "tcp", &topo.dir().join("wan.pcap"));
    let plane = ControlPlane::start(&topo, &overlay);
    let name = unique_name("w");
    plane.note_cluster(&name);
    let out = plane.cli_in(
        topo.host(1),
        &[
            "cluster",
            "create",
            &name,
            "--site",
            "site1=1",
            "--site",
            "site2=1",
            "--node-memory-mib",
            "64",
            "--wait",
        ],
    );
    assert!(out.success, "cluster create from site 1: {}", out.stderr);
    let c = plane.cluster(&name);
    assert_eq!(c.nodes.len(), 2);
    let bytes = capture.finish();

    let mut secrets = vec![
        ("the admin's token", plane.admin_token().to_string()),
        ("alice's token", plane.user_token().to_string()),
    ];
    for (i, t) in plane.agent_tokens().iter().enumerate() {
        secrets.push(("an agent's token", t.clone()));
        let state: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(topo.dir().join(format!("agent{}/agent.json", i + 1)))
                .expect("the agent's state"),
        )
        .expect("the agent's state is JSON");
        let secret = state["agent_secret"].as_str().expect("agent_secret");
        secrets.push(("an agent's secret", secret.to_string()));
    }
    // The capture could have shown them: it holds the whole exchange, in TLS.
    assert!(bytes.len() > 20_000, "captured only {} bytes", bytes.len());
    let handshakes = tls_records(&bytes, 22);
    let application = tls_records(&bytes, 23);
    assert!(
        handshakes >= 4 && application >= 20,
        "the capture holds {handshakes} TLS handshake and {application} application records"
    );
    for (what, secret) in &secrets {
        assert!(secret.len() >= 16, "{what} is a real secret");
        assert!(
            !contains_bytes(&bytes, secret.as_bytes()),
            "{what} crossed the WAN readable"
        );
    }
}
