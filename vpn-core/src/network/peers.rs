//! Peers: the mutators the driver calls to add, remove and move peers.

use std::net::SocketAddr;
use std::time::Instant;

use super::{Network, PeerError, TxItem};
use crate::peer::{Peer, PeerConfig};
use crate::types::PeerId;

impl Network {
    /// Adds a peer and, if its endpoint is known, starts a handshake with it.
    pub fn add_peer(&mut self, now: Instant, config: PeerConfig) -> Result<PeerId, PeerError> {
        self.touch(now);
        if config.public_key == self.public_key() {
            return Err(PeerError::OwnKey);
        }
        if self.by_key.contains_key(&config.public_key) {
            return Err(PeerError::Duplicate(config.public_key));
        }
        let id = PeerId(self.next_peer_id);
        self.next_peer_id += 1;
        self.by_key.insert(config.public_key, id);
        let peer = Peer::new(id, config, self.config.limits.queued_frames_per_peer);
        self.peers.insert(id, peer);
        if self.peers[&id].endpoint.is_some() {
            self.initiate(now, id);
        }
        Ok(id)
    }

    /// Removes a peer with its sessions, queued frames and learned MAC addresses.
    pub fn remove_peer(&mut self, id: PeerId) -> bool {
        let Some(mut peer) = self.peers.remove(&id) else {
            return false;
        };
        self.by_key.remove(&peer.public_key);
        for s in peer.sessions() {
            self.by_index.remove(&s.local_index);
        }
        if let Some(h) = &peer.handshake {
            self.by_index.remove(&h.local_index);
        }
        while let Some(f) = peer.waiting.pop_front() {
            self.pool.release(f);
        }
        let pool = &mut self.pool;
        self.transmit.retain(|item| match item {
            TxItem::Frame { peer: p, frame, .. } if *p == id => {
                pool.release(*frame);
                false
            }
            TxItem::Keepalive { peer: p } => *p != id,
            _ => true,
        });
        self.switch.forget_peer(id);
        self.reassembly.forget_peer(id);
        true
    }

    /// Sets (or forgets) where a peer is reached.
    pub fn set_endpoint(&mut self, now: Instant, id: PeerId, endpoint: Option<SocketAddr>) -> bool {
        let Some(peer) = self.peers.get_mut(&id) else {
            return false;
        };
        peer.endpoint = endpoint;
        if endpoint.is_some() && !peer.has_sending_session(now) {
            self.initiate(now, id);
        }
        true
    }
}
