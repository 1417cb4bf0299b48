//! What a client asks the daemon for: one overlay network ([`NetworkSpec`], the body of
//! `POST /v1/networks` and, in TOML, a `[[network]]` table of the config file) and one peer
//! ([`PeerSpec`], the body of `POST /v1/networks/{id}/peers`). `docs/config.md` documents
//! every field.
//!
//! Values are parsed while they are deserialised (keys, addresses, MACs, ciphers), so a
//! bad value is reported with its field; a field this version does not know is refused,
//! never ignored. Checks that need the daemon (interface names, MTU ranges, the host's own
//! key, other networks) are the daemon's.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use vpn_core::{Cipher, MacAddr, NetworkId, PresharedKey, PublicKey};

use crate::server::ControlError;

/// One overlay network, as in a `[[network]]` table or a `POST /v1/networks` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    pub id: NetworkId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub tap: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    #[serde(default = "default_mtu")]
    pub path_mtu: u16,
    #[serde(default)]
    pub cipher: Cipher,
    /// Sent in base64 when serialised (it is a request body); `Debug` never shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psk: Option<PresharedKey>,
    /// A file holding the pre-shared key, read by the daemon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psk_file: Option<PathBuf>,
    #[serde(default = "yes")]
    pub arp_suppression: bool,
    #[serde(default = "default_ageing")]
    pub mac_ageing_secs: u64,
    /// Seconds between keepalives on an idle link; 0 turns them off.
    #[serde(default = "default_keepalive")]
    pub persistent_keepalive_secs: u64,
    #[serde(default)]
    pub site_local: Vec<SiteLocalSpec>,
    /// `[[network.peer]]` in TOML, `"peers"` in JSON; either name is read.
    #[serde(
        default,
        rename(serialize = "peers", deserialize = "peer"),
        alias = "peers"
    )]
    pub peers: Vec<PeerSpec>,
    /// Add the network stopped (`false`), or started (the default).
    #[serde(default = "yes")]
    pub running: bool,
}

/// One peer of a network: another host, known by its public key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSpec {
    pub public_key: PublicKey,
    /// `host:port`; a name is resolved when the network starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// An address every site serves itself: its ARP and frames never cross the WAN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteLocalSpec {
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
}

fn default_mtu() -> u16 {
    1500
}
fn yes() -> bool {
    true
}
fn default_ageing() -> u64 {
    300
}
fn default_keepalive() -> u64 {
    25
}

impl NetworkSpec {
    /// A network with every optional field at its default, as a body with only `id` and
    /// `tap` would be read.
    pub fn new(id: NetworkId, tap: impl Into<String>) -> NetworkSpec {
        NetworkSpec {
            id,
            name: None,
            tap: tap.into(),
            bridge: None,
            mtu: default_mtu(),
            path_mtu: default_mtu(),
            cipher: Cipher::default(),
            psk: None,
            psk_file: None,
            arp_suppression: yes(),
            mac_ageing_secs: default_ageing(),
            persistent_keepalive_secs: default_keepalive(),
            site_local: Vec::new(),
            peers: Vec::new(),
            running: yes(),
        }
    }
}

impl NetworkSpec {
    /// The 409 of a network whose id or TAP one of `others` already has.
    pub fn check_unique<'a>(
        &self,
        others: impl IntoIterator<Item = &'a NetworkSpec>,
    ) -> Result<(), ControlError> {
        for other in others {
            if other.id == self.id {
                return Err(ControlError::Conflict(format!(
                    "network {} already exists",
                    self.id
                )));
            }
            if other.tap == self.tap {
                return Err(ControlError::Conflict(format!(
                    "TAP {:?} is used by network {}",
                    self.tap, other.id
                )));
            }
        }
        Ok(())
    }
}

impl PeerSpec {
    pub fn new(public_key: PublicKey) -> PeerSpec {
        PeerSpec {
            public_key,
            endpoint: None,
            name: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
    const PSK: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";

    #[test]
    fn new_matches_a_body_with_only_id_and_tap() {
        let read: NetworkSpec = serde_json::from_str(r#"{"id": 7, "tap": "vc7"}"#).unwrap();
        assert_eq!(read, NetworkSpec::new(NetworkId(7), "vc7"));
    }

    #[test]
    fn a_spec_round_trips_through_json_with_its_psk_but_debug_hides_it() {
        let spec = NetworkSpec {
            psk: Some(PSK.parse().unwrap()),
            running: false,
            peers: vec![PeerSpec::new(PEER.parse().unwrap())],
            site_local: vec![SiteLocalSpec {
                ip: "10.7.255.254".parse().unwrap(),
                mac: "02:00:00:00:ff:fe".parse().unwrap(),
            }],
            ..NetworkSpec::new(NetworkId(7), "vc7")
        };
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["peers"][0]["public_key"], PEER, "{json}");
        assert_eq!(json["psk"], PSK, "a request must carry the key");
        assert_eq!(json["running"], false);
        assert_eq!(json["site_local"][0]["mac"], "02:00:00:00:ff:fe");
        let back: NetworkSpec = serde_json::from_value(json).unwrap();
        assert_eq!(back, spec);
        assert!(!format!("{spec:?}").contains(PSK), "{spec:?}");
    }

    #[test]
    fn the_documented_request_body_parses() {
        let doc = include_str!("../../docs/control-api.md");
        let start = doc.find("### `POST /v1/networks`").expect("the section");
        let body = &doc[start..];
        let body = &body[body.find("```json\n").expect("an example") + 8..];
        let body = &body[..body.find("```").expect("its end")]
            .replace("base64 (optional)", PSK)
            .replace("\"base64\"", &format!("{PEER:?}"));
        let spec: NetworkSpec = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(spec.id, NetworkId(7));
        assert_eq!(spec.peers[0].name.as_deref(), Some("host-b"));
        assert_eq!(spec.site_local.len(), 1);
    }

    #[test]
    fn unknown_fields_are_refused_by_name() {
        let e = serde_json::from_str::<NetworkSpec>(r#"{"id": 7, "tap": "vc7", "ciper": "x"}"#)
            .unwrap_err();
        assert!(e.to_string().contains("unknown field `ciper`"), "{e}");
        let e = serde_json::from_str::<PeerSpec>(&format!(
            r#"{{"public_key": "{PEER}", "endpiont": "10.0.0.1:1"}}"#
        ))
        .unwrap_err();
        assert!(e.to_string().contains("unknown field `endpiont`"), "{e}");
    }
}
