//! What the daemon shows of its status snapshot ([`vpnd_api::DaemonStatus`], the JSON of
//! the control API): the table `vpnd status` prints, and the Prometheus text the metrics
//! endpoint serves.

use std::fmt::Write as _;

use vpnd_api::{DaemonStatus, NetworkStatus, PeerStatus};

/// The human table of `vpnd status`, in the spirit of `wg show`.
pub fn render_table(status: &DaemonStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "public key: {}", status.public_key);
    let listen: Vec<String> = status.listen.iter().map(|a| a.to_string()).collect();
    let _ = writeln!(out, "listening:  {}", listen.join(", "));
    if status.networks.is_empty() {
        let _ = writeln!(out, "\nno networks");
    }
    for n in &status.networks {
        let _ = writeln!(out);
        let name = n
            .name
            .as_deref()
            .map(|s| format!(" ({s})"))
            .unwrap_or_default();
        let bridge = n
            .bridge
            .as_deref()
            .map(|b| format!(" on {b}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "network {}{name}: {}  tap {}{bridge}  mtu {}  path mtu {}  {}  {} MACs",
            n.id,
            if n.running { "running" } else { "stopped" },
            n.tap,
            n.mtu,
            n.path_mtu,
            n.cipher,
            n.mac_table_size
        );
        let c = &n.counters;
        let dropped: u64 = c.drops.values().sum();
        let _ = writeln!(
            out,
            "  transfer: {} received, {} sent; {} dropped",
            human_bytes(c.rx_bytes),
            human_bytes(c.tx_bytes),
            dropped
        );
        if n.peers.is_empty() {
            let _ = writeln!(out, "  no peers");
            continue;
        }
        let header = ["peer", "endpoint", "handshake", "received", "sent"];
        let rows: Vec<[String; 5]> = n
            .peers
            .iter()
            .map(|p| {
                let who = match &p.name {
                    Some(name) => format!("{name} {}", short_key(&p.public_key)),
                    None => short_key(&p.public_key),
                };
                let handshake = match (p.session, p.last_handshake_secs_ago) {
                    (_, None) => "never".to_string(),
                    (true, Some(s)) => format!("{} ago", human_secs(s)),
                    (false, Some(s)) => format!("{} ago, no session", human_secs(s)),
                };
                [
                    who,
                    p.endpoint.clone().unwrap_or_else(|| "(none)".into()),
                    handshake,
                    format!("{} / {} pkts", human_bytes(p.rx_bytes), p.rx_packets),
                    format!("{} / {} pkts", human_bytes(p.tx_bytes), p.tx_packets),
                ]
            })
            .collect();
        let mut widths = header.map(str::len);
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.len());
            }
        }
        let line = |cells: [&str; 5]| {
            let mut l = String::from("  ");
            for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
                if i == 4 {
                    l.push_str(cell);
                } else {
                    let _ = write!(l, "{cell:<w$}  ");
                }
            }
            l
        };
        let _ = writeln!(out, "{}", line(header));
        for row in &rows {
            let cells = [&row[0][..], &row[1], &row[2], &row[3], &row[4]];
            let _ = writeln!(out, "{}", line(cells));
        }
    }
    out
}

/// The Prometheus text exposition of this snapshot.
pub fn render_metrics(status: &DaemonStatus) -> String {
    let mut m = Metrics::default();
    m.family("vpnd_networks", "gauge", "Overlay networks configured.");
    m.sample("vpnd_networks", &[], status.networks.len() as f64);
    m.family(
        "vpnd_unroutable_datagrams_total",
        "counter",
        "Datagrams that matched no network.",
    );
    m.sample(
        "vpnd_unroutable_datagrams_total",
        &[],
        status.unroutable as f64,
    );
    type Get = fn(&NetworkStatus) -> f64;
    let network_metrics: [(&str, &str, &str, Get); 10] = [
        (
            "vpnd_network_up",
            "gauge",
            "1 if the network is running.",
            |n| f64::from(u8::from(n.running)),
        ),
        (
            "vpnd_mac_table_entries",
            "gauge",
            "MAC addresses learned.",
            |n| n.mac_table_size as f64,
        ),
        (
            "vpnd_received_bytes_total",
            "counter",
            "Bytes of datagrams received.",
            |n| n.counters.rx_bytes as f64,
        ),
        (
            "vpnd_sent_bytes_total",
            "counter",
            "Bytes of datagrams sent.",
            |n| n.counters.tx_bytes as f64,
        ),
        (
            "vpnd_received_datagrams_total",
            "counter",
            "Datagrams received.",
            |n| n.counters.rx_datagrams as f64,
        ),
        (
            "vpnd_sent_datagrams_total",
            "counter",
            "Datagrams sent.",
            |n| n.counters.tx_datagrams as f64,
        ),
        (
            "vpnd_handshake_initiations_sent_total",
            "counter",
            "Handshake initiations sent.",
            |n| n.counters.handshakes_initiated as f64,
        ),
        (
            "vpnd_handshake_initiations_processed_total",
            "counter",
            "Handshake initiations whose key exchange was computed.",
            |n| n.counters.initiations_processed as f64,
        ),
        (
            "vpnd_sessions_established_total",
            "counter",
            "Sessions established.",
            |n| n.counters.sessions_established as f64,
        ),
        (
            "vpnd_arp_replies_total",
            "counter",
            "ARP requests answered locally.",
            |n| n.counters.arp_replies as f64,
        ),
    ];
    for (name, kind, help, get) in network_metrics {
        m.family(name, kind, help);
        for n in &status.networks {
            m.sample(name, &[("network", &n.id.to_string())], get(n));
        }
    }
    m.family(
        "vpnd_dropped_total",
        "counter",
        "Datagrams and frames dropped, by reason.",
    );
    for n in &status.networks {
        for (reason, count) in &n.counters.drops {
            m.sample(
                "vpnd_dropped_total",
                &[("network", &n.id.to_string()), ("reason", reason)],
                *count as f64,
            );
        }
    }
    type PeerGet = fn(&PeerStatus) -> Option<f64>;
    let peer_metrics: [(&str, &str, &str, PeerGet); 7] = [
        (
            "vpnd_peer_received_bytes_total",
            "counter",
            "Bytes received from the peer.",
            |p| Some(p.rx_bytes as f64),
        ),
        (
            "vpnd_peer_sent_bytes_total",
            "counter",
            "Bytes sent to the peer.",
            |p| Some(p.tx_bytes as f64),
        ),
        (
            "vpnd_peer_received_packets_total",
            "counter",
            "Datagrams received from the peer.",
            |p| Some(p.rx_packets as f64),
        ),
        (
            "vpnd_peer_sent_packets_total",
            "counter",
            "Datagrams sent to the peer.",
            |p| Some(p.tx_packets as f64),
        ),
        (
            "vpnd_peer_handshakes_total",
            "counter",
            "Sessions established with the peer.",
            |p| Some(p.handshakes as f64),
        ),
        (
            "vpnd_peer_session_up",
            "gauge",
            "1 if a session with the peer can carry traffic.",
            |p| Some(f64::from(u8::from(p.session))),
        ),
        (
            "vpnd_peer_last_handshake_age_seconds",
            "gauge",
            "Seconds since the last handshake.",
            |p| p.last_handshake_secs_ago,
        ),
    ];
    for (name, kind, help, get) in peer_metrics {
        m.family(name, kind, help);
        for n in &status.networks {
            for p in &n.peers {
                if let Some(v) = get(p) {
                    let peer = p.name.clone().unwrap_or_else(|| p.public_key.to_string());
                    m.sample(name, &[("network", &n.id.to_string()), ("peer", &peer)], v);
                }
            }
        }
    }
    m.out
}

#[derive(Default)]
struct Metrics {
    out: String,
}

impl Metrics {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let escaped = v
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(self.out, "{k}=\"{escaped}\"");
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

fn short_key(key: &vpnd_api::PublicKey) -> String {
    key.to_string().chars().take(8).chain("…".chars()).collect()
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[unit])
    }
}

fn human_secs(s: f64) -> String {
    let s = s.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        _ => format!("{}h {}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use vpnd_api::{Cipher, Counters, NetworkId};

    use super::*;

    fn sample() -> DaemonStatus {
        DaemonStatus {
            public_key: "Wv/bOWOAHUwKsWOg3fE/6JrhaVxxCjqgpKxwTJqnjSA="
                .parse()
                .unwrap(),
            listen: vec!["0.0.0.0:51820".parse().unwrap()],
            unroutable: 2,
            networks: vec![NetworkStatus {
                id: NetworkId(7),
                name: Some("cluster-a".into()),
                tap: "vc7".into(),
                bridge: Some("br0".into()),
                running: true,
                mtu: 1500,
                path_mtu: 1500,
                cipher: Cipher::Aes256Gcm,
                mac_table_size: 3,
                counters: Counters {
                    rx_bytes: 5 << 20,
                    drops: BTreeMap::from([("replay".into(), 4)]),
                    ..Counters::default()
                },
                peers: vec![PeerStatus {
                    public_key: "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
                        .parse()
                        .unwrap(),
                    name: Some("site\"2".into()),
                    endpoint: Some("10.254.0.2:51820".into()),
                    last_handshake_secs_ago: Some(75.0),
                    session: true,
                    rx_bytes: 1234,
                    tx_bytes: 0,
                    rx_packets: 10,
                    tx_packets: 0,
                    handshakes: 2,
                }],
            }],
        }
    }

    #[test]
    fn the_table_shows_every_peer_column() {
        let t = render_table(&sample());
        for needle in [
            "network 7 (cluster-a): running",
            "tap vc7 on br0",
            "10.254.0.2:51820",
            "1m 15s ago",
            "1.21 KiB / 10 pkts",
            "5.00 MiB received",
            "4 dropped",
        ] {
            assert!(t.contains(needle), "missing {needle:?} in\n{t}");
        }
    }

    #[test]
    fn metrics_follow_prometheus_conventions() {
        let m = render_metrics(&sample());
        assert!(m.contains("# TYPE vpnd_peer_received_bytes_total counter"));
        assert!(
            m.contains("vpnd_peer_received_bytes_total{network=\"7\",peer=\"site\\\"2\"} 1234"),
            "{m}"
        );
        assert!(m.contains("vpnd_dropped_total{network=\"7\",reason=\"replay\"} 4"));
        assert!(m.contains("vpnd_mac_table_entries{network=\"7\"} 3"));
        for line in m.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(name.starts_with("vpnd_"), "{line}");
            assert!(
                line.rsplit(' ').next().unwrap().parse::<f64>().is_ok(),
                "{line}"
            );
        }
    }
}
