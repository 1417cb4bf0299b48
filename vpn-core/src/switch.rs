//! The overlay's Ethernet switch: one local port (the host's TAP) and one port per peer.
//!
//! INTERFACE PLACEHOLDER: the bodies are being written; the signatures are the contract the
//! rest of `vpn-core` codes against.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::types::{MacAddr, PeerId, Port};

/// An address every site serves itself (a site's package cache, say): ARP for it and frames
/// to or from its MAC never leave the site.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SiteLocalAddr {
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
}

#[derive(Clone, Debug)]
pub struct SwitchConfig {
    pub mac_ageing: Duration,
    pub mac_capacity: usize,
    pub arp_suppression: bool,
    pub arp_binding_ttl: Duration,
    pub arp_capacity: usize,
    pub site_local: Vec<SiteLocalAddr>,
}

impl Default for SwitchConfig {
    fn default() -> Self {
        SwitchConfig {
            mac_ageing: Duration::from_secs(300),
            mac_capacity: 16_384,
            arp_suppression: true,
            arp_binding_ttl: Duration::from_secs(120),
            arp_capacity: 16_384,
            site_local: Vec::new(),
        }
    }
}

pub const ARP_REPLY_LEN: usize = 42;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forward {
    Drop(DropReason),
    Local,
    Peer(PeerId),
    FloodPeers,
    ArpReply([u8; ARP_REPLY_LEN]),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    Runt,
    SplitHorizon,
    SameSegment,
    SiteLocal,
    ArpSuppressedLocal,
    InvalidSource,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwitchEvent {
    MacMoved { mac: MacAddr, from: Port, to: Port },
    MacTableFull { mac: MacAddr },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwitchStats {
    pub learned: u64,
    pub moves: u64,
    pub aged_out: u64,
    pub table_full: u64,
    pub arp_suppressed: u64,
    pub arp_replies: u64,
    pub site_local_kept: u64,
    pub split_horizon_drops: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MacEntry {
    pub mac: MacAddr,
    pub port: Port,
    pub last_seen: Instant,
}

pub struct Switch {
    _config: SwitchConfig,
}

impl Switch {
    pub fn new(config: SwitchConfig, _hash_seed: [u64; 4]) -> Switch {
        Switch { _config: config }
    }

    pub fn forward(&mut self, _now: Instant, _ingress: Port, _frame: &[u8]) -> Forward {
        todo!()
    }

    pub fn expire(&mut self, _now: Instant) {
        todo!()
    }

    pub fn next_expiry(&self) -> Option<Instant> {
        todo!()
    }

    pub fn forget_peer(&mut self, _peer: PeerId) {
        todo!()
    }

    pub fn lookup(&self, _now: Instant, _mac: MacAddr) -> Option<Port> {
        todo!()
    }

    pub fn mac_table(&self) -> impl Iterator<Item = MacEntry> + '_ {
        std::iter::empty()
    }

    pub fn len(&self) -> usize {
        todo!()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn poll_event(&mut self) -> Option<SwitchEvent> {
        todo!()
    }

    pub fn stats(&self) -> &SwitchStats {
        todo!()
    }
}
