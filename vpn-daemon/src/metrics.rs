//! The Prometheus endpoint (`metrics = "addr:port"` in the config): `GET /metrics` answers
//! the OpenMetrics text of a status snapshot, encoded by `prometheus-client` as every
//! `/metrics` of the project is (`docs/metrics.md` lists the metrics).
//!
//! Label values come from the configuration and from fixed sets only: network ids, peer
//! keys and names, drop reasons the daemon names in its code. Nothing of a request (its
//! method, path or address) ever becomes a label, so scrapes and stray requests cannot
//! grow the number of series. It reads the snapshot and changes nothing.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use axum::http::header;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use vpnd_api::{DaemonStatus, NetworkStatus, PeerStatus};

use crate::daemon::Daemon;

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NetworkLabels {
    network: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    network: u32,
    reason: String,
}

/// A peer is named by its public key, unique in its network; its configured name (if
/// any, and names may repeat) rides along for people.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    network: u32,
    peer: String,
    peer_name: Option<Escaped>,
}

/// A label value written with the three escapes the text format asks for (`\`, `"`, line
/// feed): prometheus-client 0.23 writes a `String` value as it is, and a peer's name may
/// hold any of them.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Escaped(String);

impl EncodeLabelValue for Escaped {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// The `/metrics` endpoint over `daemon`.
pub fn router(daemon: Arc<Daemon>) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let daemon = Arc::clone(&daemon);
            async move {
                (
                    [(header::CONTENT_TYPE, CONTENT_TYPE)],
                    render(&daemon.status().await),
                )
            }
        }),
    )
}

type NetworkValue = fn(&NetworkStatus) -> u64;
type PeerValue = fn(&PeerStatus) -> u64;

/// The OpenMetrics text of a status snapshot.
pub fn render(status: &DaemonStatus) -> String {
    let mut registry = Registry::default();
    let networks = Gauge::<i64>::default();
    networks.set(status.networks.len() as i64);
    registry.register("vpnd_networks", "Overlay networks configured", networks);
    let unroutable = Counter::<u64>::default();
    unroutable.inc_by(status.unroutable);
    registry.register(
        "vpnd_unroutable_datagrams",
        "Datagrams that matched no network",
        unroutable,
    );

    let network_gauges: [(&str, &str, NetworkValue); 2] = [
        ("vpnd_network_up", "1 if the network is running", |n| {
            u64::from(n.running)
        }),
        ("vpnd_mac_table_entries", "MAC addresses learned", |n| {
            n.mac_table_size as u64
        }),
    ];
    for (name, help, value) in network_gauges {
        let family = Family::<NetworkLabels, Gauge>::default();
        for n in &status.networks {
            family
                .get_or_create(&NetworkLabels { network: n.id.0 })
                .set(value(n) as i64);
        }
        registry.register(name, help, family);
    }
    let network_counters: [(&str, &str, NetworkValue); 8] = [
        ("vpnd_received_bytes", "Bytes of datagrams received", |n| {
            n.counters.rx_bytes
        }),
        ("vpnd_sent_bytes", "Bytes of datagrams sent", |n| {
            n.counters.tx_bytes
        }),
        ("vpnd_received_datagrams", "Datagrams received", |n| {
            n.counters.rx_datagrams
        }),
        ("vpnd_sent_datagrams", "Datagrams sent", |n| {
            n.counters.tx_datagrams
        }),
        (
            "vpnd_handshake_initiations_sent",
            "Handshake initiations sent",
            |n| n.counters.handshakes_initiated,
        ),
        (
            "vpnd_handshake_initiations_processed",
            "Handshake initiations whose key exchange was computed",
            |n| n.counters.initiations_processed,
        ),
        ("vpnd_sessions_established", "Sessions established", |n| {
            n.counters.sessions_established
        }),
        ("vpnd_arp_replies", "ARP requests answered locally", |n| {
            n.counters.arp_replies
        }),
    ];
    for (name, help, value) in network_counters {
        let family = Family::<NetworkLabels, Counter>::default();
        for n in &status.networks {
            family
                .get_or_create(&NetworkLabels { network: n.id.0 })
                .inc_by(value(n));
        }
        registry.register(name, help, family);
    }
    let drops = Family::<DropLabels, Counter>::default();
    for n in &status.networks {
        for (reason, count) in &n.counters.drops {
            drops
                .get_or_create(&DropLabels {
                    network: n.id.0,
                    reason: reason.clone(),
                })
                .inc_by(*count);
        }
    }
    registry.register(
        "vpnd_dropped",
        "Datagrams and frames dropped, by reason",
        drops,
    );

    let peers = || {
        status.networks.iter().flat_map(|n| {
            n.peers.iter().map(move |p| {
                let labels = PeerLabels {
                    network: n.id.0,
                    peer: p.public_key.to_string(),
                    peer_name: p.name.clone().map(Escaped),
                };
                (labels, p)
            })
        })
    };
    let peer_counters: [(&str, &str, PeerValue); 5] = [
        (
            "vpnd_peer_received_bytes",
            "Bytes received from the peer",
            |p| p.rx_bytes,
        ),
        ("vpnd_peer_sent_bytes", "Bytes sent to the peer", |p| {
            p.tx_bytes
        }),
        (
            "vpnd_peer_received_packets",
            "Datagrams received from the peer",
            |p| p.rx_packets,
        ),
        (
            "vpnd_peer_sent_packets",
            "Datagrams sent to the peer",
            |p| p.tx_packets,
        ),
        (
            "vpnd_peer_handshakes",
            "Sessions established with the peer",
            |p| p.handshakes,
        ),
    ];
    for (name, help, value) in peer_counters {
        let family = Family::<PeerLabels, Counter>::default();
        for (labels, p) in peers() {
            family.get_or_create(&labels).inc_by(value(p));
        }
        registry.register(name, help, family);
    }
    let session_up = Family::<PeerLabels, Gauge>::default();
    let handshake_age = Family::<PeerLabels, Gauge<f64, AtomicU64>>::default();
    for (labels, p) in peers() {
        session_up.get_or_create(&labels).set(i64::from(p.session));
        if let Some(age) = p.last_handshake_secs_ago {
            handshake_age.get_or_create(&labels).set(age);
        }
    }
    registry.register(
        "vpnd_peer_session_up",
        "1 if a session with the peer can carry traffic",
        session_up,
    );
    registry.register(
        "vpnd_peer_last_handshake_age_seconds",
        "Seconds since the last handshake with the peer",
        handshake_age,
    );

    let mut out = String::new();
    encode(&mut out, &registry).expect("writing to a String");
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use vpnd_api::PublicKey;

    use super::*;
    use crate::status::tests::{peer, sample};

    /// The sample lines (not `#` lines) of an exposition.
    fn series(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    #[test]
    fn metrics_follow_openmetrics_conventions() {
        let m = render(&sample());
        let key1 = PublicKey([1; 32]).to_string();
        assert!(
            m.contains("# TYPE vpnd_peer_received_bytes counter\n"),
            "{m}"
        );
        assert!(
            m.contains(&format!(
                "vpnd_peer_received_bytes_total{{network=\"7\",peer=\"{key1}\",peer_name=\"site\\\"2\"}} 1234\n"
            )),
            "{m}"
        );
        assert!(m.contains("vpnd_dropped_total{network=\"7\",reason=\"replay\"} 4\n"));
        assert!(m.contains("vpnd_mac_table_entries{network=\"7\"} 3\n"));
        assert!(m.contains("vpnd_unroutable_datagrams_total 2\n"));
        assert!(m.contains("vpnd_peer_last_handshake_age_seconds{"));
        assert!(m.ends_with("# EOF\n"), "{m}");
        for line in series(&m) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(name.starts_with("vpnd_"), "{line}");
            assert!(
                line.rsplit(' ').next().unwrap().parse::<f64>().is_ok(),
                "{line}"
            );
        }
    }

    #[test]
    fn quotes_backslashes_and_line_feeds_in_a_peer_name_are_escaped() {
        let mut status = sample();
        status.networks[0].peers = vec![peer(1, "a\"b\\c\nd")];
        let m = render(&status);
        assert!(m.contains("peer_name=\"a\\\"b\\\\c\\nd\"}"), "{m}");
        for line in series(&m) {
            assert!(line.starts_with("vpnd_"), "a value broke its line: {line}");
        }
    }

    #[test]
    fn peers_with_the_same_name_are_two_series() {
        let mut status = sample();
        status.networks[0].peers = vec![peer(1, "site2"), peer(2, "site2")];
        let m = render(&status);
        let session_up: BTreeSet<&str> = series(&m)
            .into_iter()
            .filter(|l| l.starts_with("vpnd_peer_session_up{"))
            .map(|l| l.rsplit_once(' ').unwrap().0)
            .collect();
        assert_eq!(session_up.len(), 2, "{m}");
        let bytes = series(&m)
            .into_iter()
            .filter(|l| l.starts_with("vpnd_peer_received_bytes_total{"))
            .filter(|l| l.ends_with(" 1234"))
            .count();
        assert_eq!(bytes, 2, "each peer keeps its own count: {m}");
    }
}
