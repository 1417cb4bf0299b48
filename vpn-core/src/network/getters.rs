//! Getters: what a [`Network`] is and holds, for the driver's status and tests.

use std::time::Instant;

use super::{Network, NetworkStats};
use crate::config::NetworkConfig;
use crate::frag::Reassembler;
use crate::key::PublicKey;
use crate::peer::PeerInfo;
use crate::switch::{Switch, SwitchStats};
use crate::types::{NetworkId, PeerId};

impl Network {
    pub fn id(&self) -> NetworkId {
        self.id
    }

    pub fn public_key(&self) -> PublicKey {
        *self.noise.public_key()
    }

    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    pub fn stats(&self) -> &NetworkStats {
        &self.stats
    }

    pub fn switch(&self) -> &Switch {
        &self.switch
    }

    pub fn switch_stats(&self) -> &SwitchStats {
        self.switch.stats()
    }

    pub fn reassembly(&self) -> &Reassembler {
        &self.reassembly
    }

    pub fn peer(&self, id: PeerId, now: Instant) -> Option<PeerInfo> {
        self.peers.get(&id).map(|p| p.info(now))
    }

    pub fn peer_by_key(&self, key: &PublicKey) -> Option<PeerId> {
        self.by_key.get(key).copied()
    }

    pub fn peers(&self, now: Instant) -> impl Iterator<Item = PeerInfo> + '_ {
        self.peers.values().map(move |p| p.info(now))
    }

    /// The largest datagram this network sends; `poll_transmit` needs a buffer this big.
    pub fn max_datagram_len(&self) -> usize {
        usize::from(self.config.path_mtu)
    }

    /// Frames held in the network's buffers (queued for peers, or for local delivery).
    pub fn buffered_frames(&self) -> usize {
        self.pool.in_use()
    }
}
