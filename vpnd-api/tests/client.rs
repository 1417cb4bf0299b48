//! The client against the real routes over a Unix socket, with the in-memory daemon
//! behind them: every documented status code comes back as the client's typed answer or
//! error. (With the real vpnd behind the routes: `tests/tests/vpnd_sites.rs`.)

use std::sync::Arc;

use hyper::{Method, StatusCode};
use vpnd_api::testing::MemoryVpnd;
use vpnd_api::{
    Client, ClientError, MacEntry, MacPort, NetworkId, NetworkSpec, PeerSpec, PresharedKey,
    PublicKey,
};

/// A key whose base64 has both '+' and '/', so the URL-safe path form is exercised.
fn key(byte: u8) -> PublicKey {
    let mut raw = [byte; 32];
    raw[0] = 0xfb;
    raw[1] = 0xff;
    PublicKey(raw)
}

struct Served {
    daemon: Arc<MemoryVpnd>,
    client: Client,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn serve() -> Served {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    let daemon = MemoryVpnd::new(key(0), "0.0.0.0:51820".parse().unwrap());
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let router = vpnd_api::router(daemon.clone());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Served {
        daemon,
        client: Client::new(socket),
        _dir: dir,
        task,
    }
}

fn network(id: u32) -> NetworkSpec {
    NetworkSpec {
        name: Some(format!("cluster-{id}")),
        bridge: Some(format!("vcbr{id:x}")),
        psk: Some(PresharedKey::from_bytes([9; 32])),
        peers: vec![PeerSpec {
            endpoint: Some("10.9.0.2:51820".into()),
            name: Some("host-b".into()),
            ..PeerSpec::new(key(1))
        }],
        ..NetworkSpec::new(NetworkId(id), format!("vctap{id:x}"))
    }
}

fn api_error(e: ClientError) -> (StatusCode, String) {
    match e {
        ClientError::Api { status, message } => (status, message),
        other => panic!("expected an error answer, got {other}"),
    }
}

#[tokio::test]
async fn status_reports_the_daemons_public_key() {
    let s = serve();
    let status = s.client.status().await.unwrap();
    assert_eq!(status.public_key, key(0));
    assert!(status.networks.is_empty());
}

#[tokio::test]
async fn network_lifecycle_follows_the_contract() {
    let s = serve();
    let c = &s.client;
    let id = NetworkId(7);
    assert!(
        c.network(id).await.unwrap().is_none(),
        "an unknown network is None, not an error"
    );

    let added = c.add_network(&network(7)).await.unwrap();
    assert_eq!(added.id, id);
    assert!(added.running, "a network starts unless running=false");
    assert_eq!(added.peers[0].public_key, key(1));
    assert_eq!(added.bridge.as_deref(), Some("vcbr7"));
    assert_eq!(
        s.daemon.networks()[&id].spec,
        network(7),
        "the daemon got the spec as sent, psk included"
    );

    let (status, message) = api_error(c.add_network(&network(7)).await.unwrap_err());
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(message.contains("already exists"), "{message}");

    assert!(!c.stop(id).await.unwrap().running);
    assert!(!c.stop(id).await.unwrap().running, "stop is idempotent");
    assert!(c.start(id).await.unwrap().running);

    let peer = c.add_peer(id, &PeerSpec::new(key(2))).await.unwrap();
    assert_eq!((peer.public_key, peer.session), (key(2), false));
    let (status, _) = api_error(c.add_peer(id, &PeerSpec::new(key(2))).await.unwrap_err());
    assert_eq!(status, StatusCode::CONFLICT);
    c.remove_peer(id, &key(1)).await.unwrap();
    let peers = c.network(id).await.unwrap().unwrap().peers;
    assert_eq!(
        peers.iter().map(|p| p.public_key).collect::<Vec<_>>(),
        [key(2)]
    );
    let gone = c.remove_peer(id, &key(1)).await.unwrap_err();
    assert!(gone.is_not_found(), "{gone}");

    let learned = MacEntry {
        mac: "52:54:00:12:34:56".parse().unwrap(),
        port: MacPort::Peer(key(2)),
        age_secs: 3.5,
    };
    s.daemon.learn(id, learned.clone());
    assert_eq!(c.macs(id).await.unwrap(), [learned]);

    assert!(c.remove_network(id).await.unwrap());
    assert!(
        !c.remove_network(id).await.unwrap(),
        "removing twice says it was not there"
    );
    assert!(c.macs(id).await.unwrap_err().is_not_found());
}

#[tokio::test]
async fn a_peer_key_in_the_path_may_be_url_safe_or_percent_encoded_standard_base64() {
    let s = serve();
    let c = &s.client;
    c.add_network(&network(7)).await.unwrap();
    let standard = key(1).to_string().replace('+', "%2B").replace('/', "%2F");
    assert!(standard.contains("%2B") && standard.contains("%2F"));
    c.request(
        Method::DELETE,
        &format!("/v1/networks/7/peers/{standard}"),
        None,
    )
    .await
    .unwrap();
    assert!(s.daemon.networks()[&NetworkId(7)].spec.peers.is_empty());
}

#[tokio::test]
async fn bad_bodies_are_refused_with_the_field_named_and_nothing_added() {
    let s = serve();
    let post = |body: &str| {
        s.client
            .request(Method::POST, "/v1/networks", Some(body.as_bytes().to_vec()))
    };
    let (status, message) = api_error(
        post(r#"{"id": 8, "tap": "vc8", "peers": [{"public_key": "not-a-key"}]}"#)
            .await
            .unwrap_err(),
    );
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        message.contains("peers[0].public_key") && message.contains("not-a-key"),
        "{message}"
    );
    let (status, message) = api_error(
        post(r#"{"id": 8, "tap": "vc8", "brige": "br0"}"#)
            .await
            .unwrap_err(),
    );
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message.contains("unknown field `brige`"), "{message}");
    let (status, message) = api_error(
        s.client
            .request(
                Method::POST,
                "/v1/networks/8/peers",
                Some(format!(r#"{{"public_key": "{}", "endpiont": "x"}}"#, key(3)).into_bytes()),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(status, StatusCode::BAD_REQUEST, "{message}");
    assert!(message.contains("endpiont"), "{message}");
    assert!(s.daemon.networks().is_empty(), "nothing half-added");
}

#[tokio::test]
async fn unknown_paths_and_ids_that_are_not_numbers_are_named() {
    let s = serve();
    let (status, message) = api_error(
        s.client
            .request(Method::GET, "/v1/nosuch", None)
            .await
            .unwrap_err(),
    );
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(message.contains("docs/control-api.md"), "{message}");
    let (status, message) = api_error(
        s.client
            .request(Method::GET, "/v1/networks/seven", None)
            .await
            .unwrap_err(),
    );
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message.contains("\"seven\""), "{message}");
}

#[tokio::test]
async fn a_missing_socket_is_a_connect_error_naming_it() {
    let client = Client::new("/nonexistent/vpnd.sock");
    let e = client.status().await.unwrap_err();
    assert!(matches!(e, ClientError::Connect { .. }), "{e}");
    assert!(e.to_string().contains("/nonexistent/vpnd.sock"), "{e}");
}
