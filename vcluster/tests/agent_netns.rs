//! The `netns` VM driver and the host agent on real network namespaces, veths and bridges
//! (root). Names are unique per test run; a Drop guard removes every namespace, veth and
//! bridge a test made, pass or fail. The overlay is not involved: all nodes here are on
//! one host and reach each other over their cluster's bridge.
//!
//! A host agent owns every `vcbr*` bridge and `vc*n*` veth of its network namespace (one
//! agent per host), so the tests here, which share the test process's namespace, take
//! turns.

mod common;

use std::process::Command;
use std::time::Duration;

use serde_json::json;
use vcluster::agent::driver::{HostBridges, VmDriver};
use vcluster::agent::netns::{LinuxBridges, NetnsDriver};
use vcluster::model::{Accepted, NetworkDevices, NetworkId, NodeSlot, NodeSpec};

use common::{TestController, expect_success, get_cluster};

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn can_run(test: &str) -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    let ip = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if root && ip {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: CI runs as root with iproute2");
    }
    eprintln!("SKIP {test}: needs root and iproute2 (ip netns)");
    false
}

/// A network id range of our own, so parallel tests never share a bridge name.
fn id_base(slot: u32) -> u32 {
    0x0100_0000 + (std::process::id() % 0xffff) * 0x100 + slot * 0x10
}

/// Removes everything of ours: namespaces with our prefix, and bridges and veths of our
/// network ids.
struct Cleanup {
    netns_prefix: String,
    ids: std::ops::Range<u32>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let list = Command::new("ip")
            .args(["-j", "netns", "list"])
            .output()
            .unwrap();
        let list: Vec<serde_json::Value> = serde_json::from_slice(&list.stdout).unwrap_or_default();
        for ns in list {
            let name = ns["name"].as_str().unwrap_or_default();
            if name.starts_with(&self.netns_prefix) {
                let _ = Command::new("ip").args(["netns", "del", name]).status();
            }
        }
        let links = Command::new("ip")
            .args(["-j", "link", "show"])
            .output()
            .unwrap();
        let links: Vec<serde_json::Value> =
            serde_json::from_slice(&links.stdout).unwrap_or_default();
        for l in links {
            let name = l["ifname"].as_str().unwrap_or_default();
            let ours = NetworkId::from_bridge_name(name)
                .or_else(|| NodeSlot::from_host_veth_name(name).map(|s| s.network))
                .is_some_and(|n| self.ids.contains(&n.0));
            if ours {
                let _ = Command::new("ip")
                    .args(["link", "del", "dev", name])
                    .status();
            }
        }
    }
}

fn netns_exists(name: &str) -> bool {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

fn link_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", "dev", name])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn ping(from_ns: &str, address: &str) -> bool {
    let ip = address.split('/').next().unwrap();
    Command::new("ip")
        .args(["netns", "exec", from_ns, "ping", "-c", "1", "-W", "1", ip])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn mac_in(ns: &str) -> String {
    let out = Command::new("ip")
        .args(["-n", ns, "-j", "link", "show", "dev", "eth0"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0]["address"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn netns_nodes_on_one_bridge_reach_each_other_and_stop_and_go() {
    if !can_run("netns_nodes_on_one_bridge_reach_each_other_and_stop_and_go") {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let base = id_base(1);
    let prefix = common::unique("nd");
    let _cleanup = Cleanup {
        netns_prefix: prefix.clone(),
        ids: base..base + 0x10,
    };
    let net = NetworkId(base);
    let bridge = net.bridge_name();
    let bridges = LinuxBridges;
    let driver = NetnsDriver::new();
    bridges.ensure(&bridge).await.unwrap();
    bridges.ensure(&bridge).await.unwrap();
    assert!(bridges.list().await.unwrap().contains(&bridge));

    let spec = |i: u32, running: bool| NodeSpec {
        firmware: Default::default(),
        index: i,
        name: format!("{prefix}-node-{i}"),
        mac: NodeSlot {
            network: net,
            index: i,
        }
        .mac()
        .to_string(),
        address: format!("10.250.{}.{i}/24", base % 200),
        cpus: 1,
        memory_mib: 512,
        boot: vcluster::model::BootDevice::Disk,
        running,
    };
    let slot = |i| NodeSlot {
        network: net,
        index: i,
    };
    for i in [1, 2] {
        driver
            .ensure(slot(i), &bridge, &spec(i, true))
            .await
            .unwrap();
    }
    let n1 = spec(1, true);
    let n2 = spec(2, true);
    assert_eq!(mac_in(&n1.name), n1.mac, "the node has its stable MAC");
    assert!(
        ping(&n1.name, &n2.address),
        "node 1 reaches node 2 over the bridge"
    );
    assert!(ping(&n2.name, &n1.address));

    // Applying the same spec again changes nothing.
    driver.ensure(slot(1), &bridge, &n1).await.unwrap();
    assert!(ping(&n1.name, &n2.address));

    let found = driver.list().await.unwrap();
    let mine: Vec<_> = found.iter().filter(|f| f.slot.network == net).collect();
    assert_eq!(mine.len(), 2);
    assert!(mine.iter().all(|f| f.running));
    assert!(
        mine.iter()
            .any(|f| f.name.as_deref() == Some(n1.name.as_str())),
        "{mine:?}"
    );

    // A stopped node is present but unreachable.
    driver
        .ensure(slot(2), &bridge, &spec(2, false))
        .await
        .unwrap();
    assert!(
        !ping(&n1.name, &n2.address),
        "a stopped node does not answer"
    );
    let found = driver.list().await.unwrap();
    let two = found.iter().find(|f| f.slot == slot(2)).unwrap();
    assert!(!two.running);
    driver.ensure(slot(2), &bridge, &n2).await.unwrap();
    assert!(ping(&n1.name, &n2.address), "started again");

    // Half a node (its veth gone) is repaired.
    Command::new("ip")
        .args(["link", "del", "dev", &slot(2).host_veth_name()])
        .status()
        .unwrap();
    driver.ensure(slot(2), &bridge, &n2).await.unwrap();
    assert!(ping(&n1.name, &n2.address), "repaired");

    driver.remove(slot(1), Some(&n1.name)).await.unwrap();
    driver.remove(slot(1), Some(&n1.name)).await.unwrap();
    assert!(!netns_exists(&n1.name));
    assert!(!link_exists(&slot(1).host_veth_name()));
    driver.remove(slot(2), Some(&n2.name)).await.unwrap();
    bridges.remove(&bridge).await.unwrap();
    assert!(!link_exists(&bridge));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_agent_builds_real_nodes_and_converges_after_a_restart() {
    if !can_run("the_host_agent_builds_real_nodes_and_converges_after_a_restart") {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let base = id_base(2);
    let cluster = common::unique("na");
    let _cleanup = Cleanup {
        netns_prefix: cluster.clone(),
        ids: base..base + 0x10,
    };
    let backend = common::Backend::sqlite().await;
    let mut config = common::test_config(&backend.url);
    config.first_network_id = base;
    let ctl = TestController::start_with(config).await;
    ctl.site("lab").await;
    let agent_token = ctl.user("agent-lab", "agent").await;
    let vpnd = common::FakeVpnd::start().await;
    let state = tempfile::tempdir().unwrap();
    let agent_config = vcluster::agent::AgentConfig {
        controller: ctl.url.clone(),
        controller_trust: ctl.trust(),
        insecure: false,
        token: agent_token,
        name: "lab-h1".into(),
        site: "lab".into(),
        cpus: 4,
        memory_mib: 4096,
        listen: "127.0.0.1:0".parse().unwrap(),
        advertise: None,
        overlay_endpoint: vpnd.endpoint.clone(),
        vpnd_socket: vpnd.socket.clone(),
        state_dir: state.path().to_path_buf(),
        reconcile_every: Duration::from_secs(60),
        services: None,
    };
    let start_agent = || {
        vcluster::agent::start(
            agent_config.clone(),
            std::sync::Arc::new(NetnsDriver::new()),
            std::sync::Arc::new(LinuxBridges),
        )
    };
    let agent = start_agent().await.unwrap();
    let user = ctl.client(&ctl.user("alice", "user").await);

    let a: Accepted = user
        .post(
            "/v1/clusters",
            &json!({"name": cluster, "nodes": 3, "node_memory_mib": 64}),
        )
        .await
        .unwrap();
    expect_success(&user, &a).await;
    let c = get_cluster(&user, &cluster).await;
    assert_eq!(
        c.network_id, base,
        "ids start where the controller was told"
    );
    let bridge = NetworkId(c.network_id).bridge_name();
    assert!(link_exists(&bridge));
    for from in &c.nodes {
        assert!(netns_exists(&from.name), "namespace {} exists", from.name);
        assert_eq!(mac_in(&from.name), from.mac);
        for to in &c.nodes {
            assert!(
                ping(&from.name, &to.address),
                "{} reaches {}",
                from.name,
                to.address
            );
        }
    }
    assert!(vpnd.networks()[&c.network_id].spec.bridge.as_deref() == Some(bridge.as_str()));

    // The agent goes down; meanwhile a node's namespace is lost and a bridge of a cluster
    // the store does not know appears. Back up, the agent converges.
    agent.shutdown().await;
    Command::new("ip")
        .args(["netns", "del", &c.nodes[1].name])
        .status()
        .unwrap();
    let orphan = NetworkId(base + 0xf).bridge_name();
    Command::new("ip")
        .args(["link", "add", "name", &orphan, "type", "bridge"])
        .status()
        .unwrap();
    let agent = start_agent().await.unwrap();
    assert!(netns_exists(&c.nodes[1].name), "the lost node is back");
    assert!(ping(&c.nodes[0].name, &c.nodes[1].address), "and reachable");
    assert!(!link_exists(&orphan), "the orphan bridge is gone");

    let d: Accepted = user
        .delete(&format!("/v1/clusters/{cluster}"))
        .await
        .unwrap();
    expect_success(&user, &d).await;
    for n in &c.nodes {
        assert!(!netns_exists(&n.name), "namespace {} removed", n.name);
        let slot = NodeSlot {
            network: NetworkId(c.network_id),
            index: n.index,
        };
        assert!(!link_exists(&slot.host_veth_name()));
    }
    assert!(!link_exists(&bridge), "bridge removed");
    assert!(vpnd.networks().is_empty(), "vpnd network removed");
    agent.shutdown().await;
}

/// A site: a network namespace joined to the test's namespace by a veth, a stand-in vpnd,
/// and a `vcluster host-agent` process running inside the namespace.
struct Site {
    netns: String,
    site_ip: String,
    agent: Option<std::process::Child>,
    vpnd: common::FakeVpnd,
    dir: tempfile::TempDir,
}

impl Drop for Site {
    fn drop(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
        // Deleting the namespace deletes its end of the veth and so the whole pair.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The test namespace's end of site `index`'s veth: where that site reaches the controller.
fn root_ip(index: u32) -> String {
    let octet = 1 + (std::process::id() % 200);
    format!("10.251.{octet}.{}", index * 4 + 1)
}

async fn site(
    name: &str,
    index: u32,
    ctl_port: u16,
    ctl_ca: &std::path::Path,
    agent_token: &str,
    site_name: &str,
) -> Site {
    let octet = 1 + (std::process::id() % 200);
    let root_ip = root_ip(index);
    let site_ip = format!("10.251.{octet}.{}", index * 4 + 2);
    let outside = format!("vcq{}{}", std::process::id() % 10_000, index);
    sh(&["ip", "netns", "add", name]);
    sh(&[
        "ip", "link", "add", "name", &outside, "type", "veth", "peer", "name", "wan0", "netns",
        name,
    ]);
    sh(&[
        "ip",
        "addr",
        "add",
        &format!("{root_ip}/30"),
        "dev",
        &outside,
    ]);
    sh(&["ip", "link", "set", "dev", &outside, "up"]);
    sh(&[
        "ip",
        "-n",
        name,
        "addr",
        "add",
        &format!("{site_ip}/30"),
        "dev",
        "wan0",
    ]);
    sh(&["ip", "-n", name, "link", "set", "dev", "wan0", "up"]);
    sh(&["ip", "-n", name, "link", "set", "dev", "lo", "up"]);
    let vpnd = common::FakeVpnd::start().await;
    let dir = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
    // nsenter --net only: `ip netns exec` would give the agent a private mount namespace,
    // and the node namespaces it creates would be invisible outside it.
    let agent = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{name}"))
        .arg(env!("CARGO_BIN_EXE_vcluster"))
        .args([
            "host-agent",
            "--controller",
            &format!("https://{root_ip}:{ctl_port}"),
        ])
        .arg("--ca")
        .arg(ctl_ca)
        .args(["--name", &format!("{site_name}-h1"), "--site", site_name])
        .args(["--cpus", "4", "--memory-mib", "4096"])
        .args(["--listen", &format!("{site_ip}:7300")])
        .args(["--overlay-endpoint", &format!("{site_ip}:51820")])
        .arg("--vpnd-socket")
        .arg(&vpnd.socket)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["--reconcile-every", "2"])
        .env("VCLUSTER_AGENT_TOKEN", agent_token)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("agent process starts");
    Site {
        netns: name.to_string(),
        site_ip,
        agent: Some(agent),
        vpnd,
        dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_agent_processes_in_site_namespaces_build_their_share_of_a_cluster() {
    if !can_run("host_agent_processes_in_site_namespaces_build_their_share_of_a_cluster") {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let base = id_base(3);
    let cluster = common::unique("ns");
    let _cleanup = Cleanup {
        netns_prefix: cluster.clone(),
        ids: base..base + 0x10,
    };
    let backend = common::Backend::sqlite().await;
    let mut config = common::test_config(&backend.url);
    config.first_network_id = base;
    // The agents reach the controller over their site's veth, so its certificate names
    // those addresses; they pin its CA by file.
    config.listen = "0.0.0.0:0".parse().unwrap();
    let tls = tempfile::tempdir().unwrap();
    let tls_dir = tls.path().join("tls");
    config.tls = Some(vcluster::controller::TlsSource::Generate {
        dir: tls_dir.clone(),
        sans: vec![root_ip(0), root_ip(1)],
    });
    let ctl = TestController::start_with(config).await;
    let port = ctl.running.as_ref().unwrap().addr.port();
    let mut sites = Vec::new();
    for (i, name) in ["north", "south"].iter().enumerate() {
        ctl.site(name).await;
        let token = ctl.user(&format!("agent-{name}"), "agent").await;
        let ns = format!("vcs{}{}", std::process::id() % 100_000, name);
        sites.push(site(&ns, i as u32, port, &tls_dir.join("ca.pem"), &token, name).await);
    }
    common::eventually(
        "both agents registered and online",
        Duration::from_secs(30),
        || async {
            let hosts: Vec<vcluster::model::Host> = ctl.admin.get("/v1/hosts").await.unwrap();
            hosts.len() == 2 && hosts.iter().all(|h| h.online)
        },
    )
    .await;
    let hosts: Vec<vcluster::model::Host> = ctl.admin.get("/v1/hosts").await.unwrap();
    for (h, s) in hosts.iter().zip(&sites) {
        assert_eq!(h.agent_url, format!("https://{}:7300", s.site_ip));
        assert_eq!(
            h.public_key,
            s.vpnd.public_key.to_string(),
            "read from vpnd's status"
        );
        assert_eq!(h.driver, "netns");
    }

    let user = ctl.client(&ctl.user("alice", "user").await);
    let a: Accepted = user
        .post(
            "/v1/clusters",
            &json!({"name": cluster, "sites": [{"site": "north", "nodes": 2}, {"site": "south", "nodes": 2}], "node_memory_mib": 64}),
        )
        .await
        .unwrap();
    let task = common::wait_task(&user, a.task.id).await;
    if task.state != vcluster::model::TaskState::Succeeded {
        for s in &sites {
            eprintln!(
                "--- agent log {}:\n{}",
                s.netns,
                std::fs::read_to_string(s.dir.path().join("agent.log")).unwrap_or_default()
            );
        }
        panic!("task failed: {}", task.message);
    }
    let c = get_cluster(&user, &cluster).await;
    let bridge = NetworkId(c.network_id).bridge_name();
    for (s, site_name) in sites.iter().zip(["north", "south"]) {
        let here: Vec<_> = c.nodes.iter().filter(|n| n.site == site_name).collect();
        assert_eq!(here.len(), 2);
        // the bridge is in the site's namespace, not the test's
        sh(&["ip", "-n", &s.netns, "link", "show", "dev", &bridge]);
        assert!(!link_exists(&bridge));
        for n in &here {
            assert!(
                netns_exists(&n.name),
                "{} is visible outside the site",
                n.name
            );
        }
        assert!(
            ping(&here[0].name, &here[1].address),
            "nodes at {site_name} reach each other"
        );
        let net = &s.vpnd.networks()[&c.network_id];
        let other = sites.iter().find(|o| o.netns != s.netns).unwrap();
        assert_eq!(net.spec.peers.len(), 1);
        assert_eq!(
            net.spec.peers[0].endpoint.as_deref(),
            Some(format!("{}:51820", other.site_ip).as_str())
        );
        assert_eq!(net.spec.peers[0].public_key, other.vpnd.public_key);
    }

    let d: Accepted = user
        .delete(&format!("/v1/clusters/{cluster}"))
        .await
        .unwrap();
    expect_success(&user, &d).await;
    for s in &sites {
        assert!(
            Command::new("ip")
                .args(["-n", &s.netns, "link", "show", "dev", &bridge])
                .output()
                .unwrap()
                .stdout
                .is_empty()
        );
        assert!(s.vpnd.networks().is_empty());
    }
    for n in &c.nodes {
        assert!(!netns_exists(&n.name), "{} removed", n.name);
    }
}
