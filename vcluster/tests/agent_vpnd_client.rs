//! The host agent's vpnd client against a stand-in server that follows
//! docs/control-api.md over a Unix socket. This pins the client to the documented
//! contract; it is not the overlay integration test (that needs the real vpnd).

mod common;

use base64::Engine;
use common::FakeVpnd;
use vcluster::agent::vpnd::{NetworkConfig, PeerConfig, VpndClient, VpndError};

fn key(byte: u8) -> String {
    // A key whose base64 has both '+' and '/' so the URL-safe path form is exercised.
    let mut raw = [byte; 32];
    raw[0] = 0xfb;
    raw[1] = 0xff;
    base64::engine::general_purpose::STANDARD.encode(raw)
}

fn network(id: u32) -> NetworkConfig {
    NetworkConfig {
        id,
        name: Some(format!("cluster-{id}")),
        tap: format!("vctap{id:x}"),
        bridge: Some(format!("vcbr{id:x}")),
        psk: Some(key(9)),
        arp_suppression: Some(true),
        site_local: vec![],
        peers: vec![PeerConfig {
            public_key: key(1),
            endpoint: Some("10.9.0.2:51820".into()),
            name: Some("host-b".into()),
        }],
        running: None,
    }
}

#[tokio::test]
async fn status_reports_the_daemon_public_key() {
    let vpnd = FakeVpnd::start().await;
    let client = VpndClient::new(&vpnd.socket);
    let status = client.status().await.unwrap();
    assert_eq!(status.public_key, vpnd.public_key);
    assert!(status.networks.is_empty());
}

#[tokio::test]
async fn network_lifecycle_follows_the_contract() {
    let vpnd = FakeVpnd::start().await;
    let client = VpndClient::new(&vpnd.socket);
    assert!(
        client.network(7).await.unwrap().is_none(),
        "unknown network is None, not an error"
    );

    let added = client.add_network(&network(7)).await.unwrap();
    assert_eq!(added.id, 7);
    assert!(added.running, "a network starts unless running=false");
    assert_eq!(added.peers.len(), 1);
    assert_eq!(added.bridge.as_deref(), Some("vcbr7"));

    let dup = client.add_network(&network(7)).await.unwrap_err();
    assert!(
        matches!(&dup, VpndError::Api { status, message } if status.as_u16() == 409 && message.contains("already exists")),
        "{dup}"
    );

    let stopped = client.stop(7).await.unwrap();
    assert!(!stopped.running);
    assert!(!client.stop(7).await.unwrap().running, "stop is idempotent");
    assert!(client.start(7).await.unwrap().running);

    let peer = PeerConfig {
        public_key: key(2),
        endpoint: None,
        name: Some("host-c".into()),
    };
    client.add_peer(7, &peer).await.unwrap();
    assert_eq!(client.network(7).await.unwrap().unwrap().peers.len(), 2);
    client.remove_peer(7, &key(1)).await.unwrap();
    let peers = client.network(7).await.unwrap().unwrap().peers;
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].public_key, key(2));
    let gone = client.remove_peer(7, &key(1)).await.unwrap_err();
    assert!(gone.is_not_found(), "{gone}");

    assert_eq!(client.macs(7).await.unwrap().len(), 1);
    assert!(client.delete_network(7).await.unwrap());
    assert!(
        !client.delete_network(7).await.unwrap(),
        "deleting twice says it was not there"
    );
    assert!(
        vpnd.log()
            .iter()
            .any(|l| l.starts_with("DELETE /v1/networks/7/peers/-_")),
        "{:?}",
        vpnd.log()
    );
}

#[tokio::test]
async fn bad_fields_come_back_with_the_daemons_message() {
    let vpnd = FakeVpnd::start().await;
    let client = VpndClient::new(&vpnd.socket);
    let mut bad = network(8);
    bad.peers[0].public_key = "not-a-key".into();
    let e = client.add_network(&bad).await.unwrap_err();
    match e {
        VpndError::Api { status, message } => {
            assert_eq!(status.as_u16(), 400);
            assert!(message.contains("peers[0].public_key"), "{message}");
        }
        other => panic!("expected an API error, got {other}"),
    }
    assert!(vpnd.networks().is_empty(), "nothing half-added");
}

#[tokio::test]
async fn a_missing_socket_is_a_connect_error_naming_it() {
    let client = VpndClient::new("/nonexistent/vpnd.sock");
    let e = client.status().await.unwrap_err();
    assert!(matches!(e, VpndError::Connect { .. }));
    assert!(e.to_string().contains("/nonexistent/vpnd.sock"), "{e}");
}
