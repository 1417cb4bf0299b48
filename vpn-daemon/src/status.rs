//! The table `vpnd status` prints of a status snapshot ([`vpnd_api::DaemonStatus`], the
//! JSON of the control API), in the spirit of `wg show`.

use std::fmt::Write as _;

use vpnd_api::DaemonStatus;

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
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use vpnd_api::{Cipher, Counters, NetworkId, NetworkStatus, PeerSpec, PeerStatus, PublicKey};

    use super::*;

    /// A peer with a session, heard from 75 s ago: 1234 bytes in 10 datagrams received.
    pub(crate) fn peer(key_byte: u8, name: &str) -> PeerStatus {
        PeerStatus {
            endpoint: Some("10.254.0.2:51820".into()),
            last_handshake_secs_ago: Some(75.0),
            session: true,
            rx_bytes: 1234,
            rx_packets: 10,
            handshakes: 2,
            ..PeerStatus::configured(&PeerSpec {
                name: Some(name.into()),
                ..PeerSpec::new(PublicKey([key_byte; 32]))
            })
        }
    }

    /// A daemon with one running network 7 and one peer, `site"2`.
    pub(crate) fn sample() -> DaemonStatus {
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
                peers: vec![peer(1, "site\"2")],
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
}
