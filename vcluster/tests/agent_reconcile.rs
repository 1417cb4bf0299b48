//! The host agent's reconcile logic on its own: an in-memory VM driver and bridges and a
//! stand-in vpnd that follows docs/control-api.md. Pins the ordering rules (a statement
//! older than what was applied is ignored), peer syncing, and what a full reconcile
//! removes and what it leaves alone.

mod common;

use std::sync::Arc;

use common::{FakeVpnd, MemBridges, MemDriver};
use vcluster::agent::reconcile::Reconciler;
use vcluster::agent::state::StateStore;
use vcluster::model::{
    ClusterOnHost, HostDesired, NetworkId, NetworkSpec, NodeSlot, NodeSpec, PeerSpec,
};

fn key(b: u8) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [b; 32])
}

fn share(revision: i64, id: u32, nodes: &[u32], peers: &[u8], running: bool) -> ClusterOnHost {
    ClusterOnHost {
        revision,
        network: NetworkSpec {
            id,
            name: format!("c{id}"),
            psk: key(42),
            subnet: "10.77.0.0/24".into(),
            running,
            peers: peers
                .iter()
                .map(|&p| PeerSpec {
                    name: format!("host-{p}"),
                    public_key: key(p),
                    endpoint: format!("192.0.2.{p}:51820"),
                })
                .collect(),
        },
        nodes: nodes
            .iter()
            .map(|&i| NodeSpec {
                firmware: Default::default(),
                index: i,
                name: format!("c{id}-node-{i}"),
                mac: NodeSlot {
                    network: NetworkId(id),
                    index: i,
                }
                .mac()
                .to_string(),
                address: format!("10.77.0.{i}/24"),
                cpus: 1,
                memory_mib: 512,
                boot: vcluster::model::BootDevice::Disk,
                running: true,
            })
            .collect(),
        services: None,
    }
}

struct Rig {
    r: Reconciler,
    driver: Arc<MemDriver>,
    bridges: Arc<MemBridges>,
    vpnd: FakeVpnd,
    _dir: tempfile::TempDir,
}

async fn rig() -> Rig {
    let vpnd = FakeVpnd::start().await;
    let dir = tempfile::tempdir().unwrap();
    let driver = Arc::new(MemDriver::default());
    let bridges = Arc::new(MemBridges::default());
    let r = Reconciler::new(
        driver.clone(),
        bridges.clone(),
        vpnd_api::Client::new(&vpnd.socket),
        StateStore::open(dir.path()).unwrap(),
    );
    Rig {
        r,
        driver,
        bridges,
        vpnd,
        _dir: dir,
    }
}

fn node_indices(d: &MemDriver, id: u32) -> Vec<u32> {
    d.snapshot()
        .keys()
        .filter(|s| s.network.0 == id)
        .map(|s| s.index)
        .collect()
}

#[tokio::test]
async fn applying_a_share_builds_bridge_vpnd_network_and_nodes() {
    let rig = rig().await;
    let applied = rig
        .r
        .apply(&share(5, 7, &[1, 2], &[1, 2], true))
        .await
        .unwrap();
    assert!(applied.applied);
    assert_eq!(applied.nodes.len(), 2);
    assert!(rig.bridges.snapshot().contains("vcbr7"));
    let net = &rig.vpnd.networks()[&7];
    assert_eq!(net.spec.tap, "vctap7");
    assert_eq!(net.spec.bridge.as_deref(), Some("vcbr7"));
    assert_eq!(net.spec.psk, Some(key(42).parse().unwrap()));
    assert_eq!(net.spec.peers.len(), 2);
    assert!(net.running);
    for n in rig.driver.snapshot().values() {
        assert_eq!(n.bridge, "vcbr7", "nodes sit on their cluster's bridge");
    }
}

#[tokio::test]
async fn peers_and_running_follow_the_newest_share() {
    let rig = rig().await;
    rig.r
        .apply(&share(5, 7, &[1], &[1, 2], true))
        .await
        .unwrap();
    rig.r
        .apply(&share(6, 7, &[1], &[2, 3], false))
        .await
        .unwrap();
    let net = &rig.vpnd.networks()[&7];
    let mut keys: Vec<String> = net
        .spec
        .peers
        .iter()
        .map(|p| p.public_key.to_string())
        .collect();
    keys.sort();
    let mut want = [key(2), key(3)];
    want.sort();
    assert_eq!(keys, want);
    assert!(!net.running, "stopped");
    let log = rig.vpnd.log();
    assert!(
        log.iter().any(|l| l == "POST /v1/networks/7/stop"),
        "{log:?}"
    );
    assert!(
        !log.iter().any(|l| l == "DELETE /v1/networks/7"),
        "peers change in place: {log:?}"
    );
}

#[tokio::test]
async fn a_stale_push_cannot_undo_a_newer_one() {
    let rig = rig().await;
    rig.r
        .apply(&share(10, 7, &[1, 2, 3], &[1], true))
        .await
        .unwrap();
    let stale = rig.r.apply(&share(9, 7, &[1], &[1], true)).await.unwrap();
    assert!(!stale.applied);
    assert_eq!(node_indices(&rig.driver, 7), [1, 2, 3]);
    assert!(
        !rig.r.remove(7, 9).await.unwrap(),
        "an older removal is ignored"
    );
    assert!(rig.vpnd.networks().contains_key(&7));
    assert!(rig.r.remove(7, 11).await.unwrap());
    assert!(rig.vpnd.networks().is_empty());
    assert!(rig.driver.snapshot().is_empty());
    assert!(rig.bridges.snapshot().is_empty());
    // and a push older than the removal does not bring it back
    assert!(
        !rig.r
            .apply(&share(10, 7, &[1], &[1], true))
            .await
            .unwrap()
            .applied
    );
    assert!(rig.driver.snapshot().is_empty());
}

#[tokio::test]
async fn a_share_with_fewer_nodes_removes_the_rest() {
    let rig = rig().await;
    rig.r
        .apply(&share(1, 7, &[1, 2, 3], &[], true))
        .await
        .unwrap();
    rig.r.apply(&share(2, 7, &[1, 3], &[], true)).await.unwrap();
    assert_eq!(node_indices(&rig.driver, 7), [1, 3]);
}

#[tokio::test]
async fn a_full_reconcile_removes_what_is_not_desired_and_leaves_the_operators_networks() {
    let rig = rig().await;
    rig.r.apply(&share(1, 7, &[1], &[], true)).await.unwrap();
    rig.r.apply(&share(2, 8, &[1], &[], true)).await.unwrap();
    // things of ours the controller never mentioned, and one of the operator's
    rig.bridges.names.lock().unwrap().insert("vcbr9".into());
    let client = vpnd_api::Client::new(&rig.vpnd.socket);
    let own = |id: u32, tap: &str| vpnd_api::NetworkSpec::new(NetworkId(id), tap);
    client.add_network(&own(10, "vctapa")).await.unwrap();
    client.add_network(&own(11, "site0")).await.unwrap();
    let desired = HostDesired {
        host_id: 1,
        revision: 5,
        clusters: vec![share(5, 7, &[1, 2], &[], true)],
    };
    let errors = rig.r.reconcile(&desired).await.unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(node_indices(&rig.driver, 7), [1, 2]);
    assert!(
        node_indices(&rig.driver, 8).is_empty(),
        "cluster 8 is not desired here"
    );
    let nets = rig.vpnd.networks();
    assert_eq!(
        nets.keys().copied().collect::<Vec<_>>(),
        [7, 11],
        "ours are gone, the operator's stays"
    );
    assert_eq!(
        rig.bridges.snapshot().into_iter().collect::<Vec<_>>(),
        ["vcbr7"]
    );
    // an older snapshot is ignored entirely
    let older = HostDesired {
        host_id: 1,
        revision: 4,
        clusters: vec![],
    };
    rig.r.reconcile(&older).await.unwrap();
    assert_eq!(node_indices(&rig.driver, 7), [1, 2]);
}

#[tokio::test]
async fn a_broken_cluster_does_not_stop_the_others_from_converging() {
    let rig = rig().await;
    *rig.driver.fail.lock().unwrap() = Some("no space".into());
    let desired = HostDesired {
        host_id: 1,
        revision: 3,
        clusters: vec![share(3, 7, &[1], &[], true)],
    };
    let errors = rig.r.reconcile(&desired).await.unwrap();
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].contains("network 7") && errors[0].contains("no space"),
        "{errors:?}"
    );
    *rig.driver.fail.lock().unwrap() = None;
    assert!(
        rig.r.reconcile(&desired).await.unwrap().is_empty(),
        "converges once the fault is gone"
    );
    assert_eq!(node_indices(&rig.driver, 7), [1]);
}

#[tokio::test]
async fn an_operators_vpnd_network_with_a_clusters_id_is_never_changed_or_removed() {
    let rig = rig().await;
    let client = vpnd_api::Client::new(&rig.vpnd.socket);
    let operators = vpnd_api::NetworkSpec {
        bridge: Some("br0".into()),
        ..vpnd_api::NetworkSpec::new(NetworkId(7), "vpn7")
    };
    client.add_network(&operators).await.unwrap();

    let err = rig
        .r
        .apply(&share(5, 7, &[1], &[1], true))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("TAP vpn7") && err.to_string().contains("--first-network-id"),
        "{err}"
    );
    let keep = |what: &str| {
        let nets = rig.vpnd.networks();
        assert_eq!(nets[&7].spec.tap, "vpn7", "{what}");
        assert_eq!(nets[&7].spec.bridge.as_deref(), Some("br0"), "{what}");
        assert!(nets[&7].spec.peers.is_empty(), "{what}: no peers added");
    };
    keep("after the push");

    // Removing the cluster (a rollback, or a reconcile that finds its bridge) takes what
    // is ours and leaves the operator's network.
    assert!(rig.r.remove(7, 6).await.unwrap());
    keep("after the removal");
    assert!(!rig.bridges.snapshot().contains("vcbr7"));
    let errors = rig
        .r
        .reconcile(&HostDesired {
            host_id: 1,
            revision: 7,
            clusters: vec![],
        })
        .await
        .unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    keep("after a full reconcile");
}

#[tokio::test]
async fn a_bad_key_from_the_controller_is_named_and_nothing_reaches_vpnd() {
    let rig = rig().await;
    let mut bad = share(5, 7, &[1], &[1, 2], true);
    bad.network.peers[1].public_key = "not-a-key".into();
    let err = rig.r.apply(&bad).await.unwrap_err().to_string();
    assert!(
        err.contains("network 7") && err.contains("peer host-2: public_key \"not-a-key\""),
        "{err}"
    );
    let mut bad = share(6, 7, &[1], &[1], true);
    bad.network.psk = "short".into();
    let err = rig.r.apply(&bad).await.unwrap_err().to_string();
    assert!(err.contains("psk") && !err.contains("short"), "{err}");
    assert!(
        !rig.vpnd.log().iter().any(|l| l.starts_with("POST")),
        "{:?}",
        rig.vpnd.log()
    );
}
