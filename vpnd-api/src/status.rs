//! What the daemon answers: [`DaemonStatus`] (`GET /v1/status`), one [`NetworkStatus`]
//! per network with its [`Counters`] and a [`PeerStatus`] per peer, and the MAC table
//! ([`MacEntry`]). `vpnd status`, the metrics endpoint and the host agent all read these.
//!
//! Responses accept fields they do not know, so a newer daemon that reports one more
//! counter still talks to an older client; a counter added later is `#[serde(default)]`
//! so an older daemon's answer still parses.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use vpn_core::{Cipher, MacAddr, NetworkId, PublicKey};

use crate::spec::{NetworkSpec, PeerSpec};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DaemonStatus {
    pub public_key: PublicKey,
    pub listen: Vec<SocketAddr>,
    pub networks: Vec<NetworkStatus>,
    /// Datagrams that matched no network of this daemon.
    #[serde(default)]
    pub unroutable: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NetworkStatus {
    pub id: NetworkId,
    pub name: Option<String>,
    pub tap: String,
    pub bridge: Option<String>,
    pub running: bool,
    pub mtu: u16,
    pub path_mtu: u16,
    pub cipher: Cipher,
    pub mac_table_size: usize,
    pub counters: Counters,
    pub peers: Vec<PeerStatus>,
}

/// A network's counters since it was last started. Every field is a monotonic count.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Counters {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_datagrams: u64,
    pub tx_datagrams: u64,
    pub frames_from_tap: u64,
    pub frames_to_tap: u64,
    /// TCP segments and UDP datagrams merged into super-frames written to the TAP.
    #[serde(default)]
    pub coalesced_segments: u64,
    pub handshakes_initiated: u64,
    pub initiations_processed: u64,
    pub sessions_established: u64,
    pub cookie_replies_sent: u64,
    pub arp_replies: u64,
    pub site_local_kept: u64,
    /// Dropped input and output, by reason (a fixed set of names, `docs/control-api.md`).
    pub drops: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PeerStatus {
    pub public_key: PublicKey,
    pub name: Option<String>,
    /// The address the peer was last heard from, else the configured `host:port`.
    pub endpoint: Option<String>,
    /// `None` before the first handshake.
    pub last_handshake_secs_ago: Option<f64>,
    /// A session can carry traffic.
    pub session: bool,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    /// Sessions established with the peer.
    pub handshakes: u64,
}

/// One learned address of a network's switch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MacEntry {
    pub mac: MacAddr,
    pub port: MacPort,
    pub age_secs: f64,
}

/// Where a learned address lives: `"local"` (behind this host's TAP) or behind the peer
/// with this public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacPort {
    Local,
    Peer(PublicKey),
}

impl Serialize for MacPort {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            MacPort::Local => s.serialize_str("local"),
            MacPort::Peer(key) => key.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for MacPort {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text == "local" {
            return Ok(MacPort::Local);
        }
        text.parse().map(MacPort::Peer).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid port {text:?}: neither \"local\" nor a public key ({e})"
            ))
        })
    }
}

impl NetworkStatus {
    /// The status of a network as configured, before any traffic: zero counters, no MAC
    /// learned, peers without sessions. The daemon fills in what a running network has.
    pub fn configured(spec: &NetworkSpec, running: bool) -> NetworkStatus {
        NetworkStatus {
            id: spec.id,
            name: spec.name.clone(),
            tap: spec.tap.clone(),
            bridge: spec.bridge.clone(),
            running,
            mtu: spec.mtu,
            path_mtu: spec.path_mtu,
            cipher: spec.cipher,
            mac_table_size: 0,
            counters: Counters::default(),
            peers: spec.peers.iter().map(PeerStatus::configured).collect(),
        }
    }
}

impl PeerStatus {
    /// A configured peer never heard from.
    pub fn configured(spec: &PeerSpec) -> PeerStatus {
        PeerStatus {
            public_key: spec.public_key,
            name: spec.name.clone(),
            endpoint: spec.endpoint.clone(),
            last_handshake_secs_ago: None,
            session: false,
            rx_bytes: 0,
            tx_bytes: 0,
            rx_packets: 0,
            tx_packets: 0,
            handshakes: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "Wv/bOWOAHUwKsWOg3fE/6JrhaVxxCjqgpKxwTJqnjSA=";
    const PEER: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";

    /// The first JSON block after `heading` in docs/control-api.md, its `"base64"`
    /// placeholders replaced by `keys` in order.
    fn documented(heading: &str, keys: &[&str]) -> String {
        let doc = include_str!("../../docs/control-api.md");
        let at = doc.find(heading).unwrap_or_else(|| panic!("no {heading}"));
        let block = &doc[at..];
        let block = &block[block.find("```json\n").expect("an example") + 8..];
        let mut block = block[..block.find("```").expect("its end")].to_string();
        for key in keys {
            block = block.replacen("\"base64\"", &format!("{key:?}"), 1);
        }
        block
    }

    #[test]
    fn the_documented_status_parses_and_serialises_back_to_the_same_json() {
        let text = documented("### `GET /v1/status`", &[KEY, PEER]);
        let status: DaemonStatus = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(status.public_key.to_string(), KEY);
        let n = &status.networks[0];
        assert_eq!((n.id, n.cipher), (NetworkId(1), Cipher::Aes256Gcm));
        assert_eq!(n.peers[0].public_key.to_string(), PEER);
        let documented: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            serde_json::to_value(&status).unwrap(),
            documented,
            "docs/control-api.md shows every field, exactly as the daemon writes it"
        );
    }

    #[test]
    fn the_documented_mac_table_parses() {
        let text = documented("### `GET /v1/networks/{id}/macs`", &[PEER]);
        let table: Vec<MacEntry> = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(table[0].port, MacPort::Local);
        assert_eq!(table[1].port, MacPort::Peer(PEER.parse().unwrap()));
        assert_eq!(table[1].mac.to_string(), "52:54:00:ab:cd:ef");
    }

    #[test]
    fn a_port_that_is_neither_local_nor_a_key_is_refused() {
        let e = serde_json::from_str::<MacPort>(r#""peer#3""#).unwrap_err();
        assert!(e.to_string().contains("peer#3"), "{e}");
    }

    #[test]
    fn a_newer_daemons_extra_counter_does_not_break_an_older_client() {
        let mut json = serde_json::to_value(Counters::default()).unwrap();
        json["a_counter_from_the_future"] = 7.into();
        json.as_object_mut().unwrap().remove("coalesced_segments");
        let c: Counters = serde_json::from_value(json).unwrap();
        assert_eq!(c, Counters::default());
    }
}
