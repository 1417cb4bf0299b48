//! vpnd's `/metrics` over real HTTP, with a stopped network (no TAP, so no root needed)
//! and a peer: what a request looks like never becomes a series.

use std::collections::BTreeSet;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vpn_core::PrivateKey;
use vpn_daemon::daemon::{Daemon, DataPathOptions};
use vpn_daemon::metrics;
use vpnd_api::{NetworkId, NetworkSpec, PeerSpec};

/// One HTTP/1.1 exchange on a fresh connection: the status code and the body.
async fn http(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("{method} {path} HTTP/1.1\r\nhost: vpnd\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The series of an exposition: each sample's name and labels, without its value.
fn series(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.rsplit_once(' ').expect("name and value").0.to_string())
        .collect()
}

#[tokio::test]
async fn made_up_methods_and_paths_add_no_series() {
    let options = DataPathOptions {
        workers: 1,
        ..DataPathOptions::default()
    };
    let daemon = Daemon::bind(
        PrivateKey::from_bytes([1; 32]),
        &["127.0.0.1:0".parse().unwrap()],
        options,
    )
    .unwrap();
    let spec = NetworkSpec {
        running: false,
        peers: vec![PeerSpec {
            name: Some("site2".into()),
            ..PeerSpec::new(PrivateKey::from_bytes([2; 32]).public_key())
        }],
        ..NetworkSpec::new(NetworkId(7), "vmetrics7")
    };
    daemon.add_network(spec).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, metrics::router(daemon)).await;
    });

    let (status, before) = http(addr, "GET", "/metrics").await;
    assert_eq!(status, 200);
    let before = series(&before);
    assert!(
        before.contains("vpnd_network_up{network=\"7\"}")
            && before.iter().any(|s| s.contains("peer_name=\"site2\"")),
        "{before:#?}"
    );
    for (method, path) in [
        ("GET", "/metrics/extra"),
        ("GET", "/metrics?network=999&peer=made-up"),
        ("POST", "/metrics"),
        ("BREW", "/metrics"),
        ("DELETE", "/v1/networks/7"),
        ("GET", "/%2e%2e/etc/passwd"),
    ] {
        let (status, _) = http(addr, method, path).await;
        assert_ne!(status, 500, "{method} {path}");
    }
    let (_, after) = http(addr, "GET", "/metrics").await;
    assert_eq!(series(&after), before);
    server.abort();
}
