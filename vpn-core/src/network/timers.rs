//! Timers: deadlines, what runs when they pass, and starting handshakes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand_core::Rng;

use super::{
    CONTROL_QUEUE, Control, Event, Network, PeerIds, finish_macs, new_index, push_event, random32,
};
use crate::peer::{PendingHandshake, TimerAction};
use crate::types::PeerId;
use crate::wire::{HandshakeInit, INIT_LEN};

impl Network {
    /// When `handle_timeout` must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let now = self.now_hint;
        let peers = self
            .peers
            .values()
            .filter_map(|p| p.deadline(now, &self.config.timers).map(|(at, _)| at));
        peers
            .chain(self.switch.next_expiry())
            .chain(self.reassembly.next_expiry())
            .min()
    }

    pub(super) fn touch(&mut self, now: Instant) {
        self.now_hint = self.now_hint.max(now);
    }

    /// Runs every timer that is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.touch(now);
        let ids = PeerIds::of(&self.peers);
        for id in ids.iter() {
            // A peer may have several timers due; handle them until none is.
            for _ in 0..4 {
                let Some(peer) = self.peers.get(&id) else {
                    break;
                };
                match peer.deadline(now, &self.config.timers) {
                    Some((at, action)) if at <= now => self.run_timer(now, id, action),
                    _ => break,
                }
            }
        }
        if self.switch.next_expiry().is_some_and(|t| t <= now) {
            self.switch.expire(now);
        }
        if self.reassembly.next_expiry().is_some_and(|t| t <= now) {
            self.reassembly.expire(now);
        }
        self.drain_switch_events();
    }

    fn run_timer(&mut self, now: Instant, id: PeerId, action: TimerAction) {
        match action {
            TimerAction::Handshake if self.pending_handshake_is_moot(now, id) => {
                // A session newer than our initiation exists (we answered the peer's
                // own): retrying would only make another one.
                let peer = self.peers.get_mut(&id).expect("timer of a known peer");
                let ours = peer.handshake.take().expect("moot implies pending");
                self.by_index.remove(&ours.local_index);
                peer.retry_at = None;
                peer.backoff = Duration::ZERO;
            }
            TimerAction::Handshake => self.initiate(now, id),
            TimerAction::Keepalive => self.queue_keepalive(now, id),
            TimerAction::Expire => self.expire_sessions(now, id),
        }
    }

    fn pending_handshake_is_moot(&self, now: Instant, id: PeerId) -> bool {
        let Some(peer) = self.peers.get(&id) else {
            return false;
        };
        let (Some(_), Some(sent)) = (&peer.handshake, peer.last_initiation_sent) else {
            return false;
        };
        peer.has_sending_session(now)
            && peer.current.as_ref().is_some_and(|c| c.established >= sent)
    }

    fn expire_sessions(&mut self, now: Instant, id: PeerId) {
        let reject = self.config.timers.reject_after_time;
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let had_current = peer.current.is_some();
        let [previous0, previous1] = &mut peer.previous;
        for slot in [&mut peer.current, previous0, previous1, &mut peer.next] {
            if slot
                .as_ref()
                .is_some_and(|s| now.saturating_duration_since(s.established) >= reject)
            {
                let s = slot.take().expect("checked");
                self.by_index.remove(&s.local_index);
            }
        }
        if had_current && peer.current.is_none() {
            push_event(
                &mut self.events,
                self.config.limits.events,
                Event::SessionExpired { peer: id },
            );
        }
    }

    /// Sends a (new) handshake initiation to a peer.
    pub(super) fn initiate(&mut self, now: Instant, id: PeerId) {
        let timers = &self.config.timers;
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let Some(endpoint) = peer.endpoint else {
            return;
        };
        if let Some(old) = peer.handshake.take() {
            self.by_index.remove(&old.local_index);
        }
        let index = new_index(&mut self.rng, &self.by_index, self.config.index_tag);
        let timestamp = {
            let t = (self.unix_at_start + now.saturating_duration_since(self.start)).as_nanos();
            let t = u64::try_from(t)
                .unwrap_or(u64::MAX)
                .max(self.last_timestamp + 1);
            self.last_timestamp = t;
            t
        };
        let mut msg = [0u8; INIT_LEN];
        HandshakeInit::write_header(&mut msg, self.id, index);
        let state = match self.noise.initiate(
            random32(&mut self.rng),
            &peer.public_key,
            timestamp,
            &mut msg[HandshakeInit::NOISE_AT..HandshakeInit::MAC1_AT],
        ) {
            Ok(state) => state,
            // Only an invalid peer key can fail here; such a peer is never reachable.
            Err(_) => return,
        };
        let mac1 = finish_macs(
            &mut msg,
            HandshakeInit::MAC1_AT,
            &peer.mac_keys,
            peer.fresh_cookie(now),
        );
        peer.handshake = Some(PendingHandshake {
            state,
            local_index: index,
            mac1,
        });
        self.by_index.insert(index, id);
        peer.backoff = if peer.backoff.is_zero() {
            timers.handshake_retry_initial
        } else {
            (peer.backoff * 2).min(timers.handshake_retry_max)
        };
        let jitter_ns = self.rng.next_u64() % (peer.backoff.as_nanos() as u64 / 3 + 1);
        peer.retry_at = Some(now + peer.backoff + Duration::from_nanos(jitter_ns));
        peer.last_initiation_sent = Some(now);
        self.stats.handshakes_initiated += 1;
        self.push_control(endpoint, &msg);
    }

    pub(super) fn push_control(&mut self, destination: SocketAddr, bytes: &[u8]) {
        if self.control.len() >= CONTROL_QUEUE {
            self.stats.drops.queue_full += 1;
            return;
        }
        let mut c = Control {
            destination,
            len: bytes.len(),
            bytes: [0; INIT_LEN],
        };
        c.bytes[..bytes.len()].copy_from_slice(bytes);
        self.control.push_back(c);
    }
}
