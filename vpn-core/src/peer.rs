//! One peer of a network: its identity and endpoint, its sessions (current, previous and a
//! responder's unconfirmed next), a pending handshake, frames waiting for a session, and
//! the timer rules that say when to retry, rekey and keep alive.
//!
//! The rules live in [`Peer::deadlines`], which both the network's `poll_timeout` and
//! `handle_timeout` read, so a reported deadline is always one that handling will act on.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use snow::HandshakeState;

use crate::config::Timers;
use crate::cookie::{COOKIE_LIFETIME, Cookie, Mac, MacKeys};
use crate::key::PublicKey;
use crate::pool::FrameRef;
use crate::session::Session;
use crate::types::PeerId;

/// What a caller tells a network about a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerConfig {
    pub public_key: PublicKey,
    /// Where to reach it. A peer without an endpoint is contacted only once it has
    /// contacted us (a site behind NAT, say).
    pub endpoint: Option<SocketAddr>,
    pub name: Option<String>,
}

/// Traffic and handshake counters of one peer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerStats {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    /// Sessions established with this peer (as initiator or responder).
    pub handshakes: u64,
}

/// A read-only view of a peer, for status displays.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub id: PeerId,
    pub public_key: PublicKey,
    pub name: Option<String>,
    pub endpoint: Option<SocketAddr>,
    /// Whether a session can carry frames to this peer now.
    pub has_session: bool,
    pub last_handshake: Option<Instant>,
    pub last_received: Option<Instant>,
    pub queued_frames: usize,
    pub stats: PeerStats,
}

pub(crate) struct PendingHandshake {
    pub state: HandshakeState,
    pub local_index: u32,
    /// The mac1 of the initiation, which a cookie reply to it is bound to.
    pub mac1: Mac,
}

/// What a timer asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TimerAction {
    /// Send (or resend) a handshake initiation.
    Handshake,
    /// Send a keepalive.
    Keepalive,
    /// Drop sessions that are too old.
    Expire,
}

pub(crate) struct Peer {
    pub id: PeerId,
    pub public_key: PublicKey,
    pub name: Option<String>,
    pub endpoint: Option<SocketAddr>,
    /// Keys derived from the peer's public key: to MAC what we send it and to open the
    /// cookies it sends us.
    pub mac_keys: MacKeys,
    pub current: Option<Session>,
    /// Sessions replaced recently, still open for receiving: the peer may have packets
    /// in flight on them. Two, because crossing handshakes retire two sessions at once.
    pub previous: [Option<Session>; 2],
    /// A session we answered as responder, used for sending only once the initiator has
    /// sent on it (proof that it received our response).
    pub next: Option<Session>,
    pub handshake: Option<PendingHandshake>,
    pub retry_at: Option<Instant>,
    /// Zero when the next attempt is a first attempt.
    pub backoff: Duration,
    pub last_initiation_sent: Option<Instant>,
    pub cookie: Option<(Cookie, Instant)>,
    /// The newest initiation timestamp accepted from this peer: older ones are replays.
    pub last_timestamp: Option<u64>,
    pub waiting: VecDeque<FrameRef>,
    pub last_sent: Option<Instant>,
    pub last_sent_data: Option<Instant>,
    pub last_received: Option<Instant>,
    pub last_received_data: Option<Instant>,
    pub last_handshake: Option<Instant>,
    pub stats: PeerStats,
}

impl Peer {
    pub(crate) fn new(id: PeerId, config: PeerConfig, queue: usize) -> Peer {
        Peer {
            id,
            mac_keys: MacKeys::of(&config.public_key),
            public_key: config.public_key,
            name: config.name,
            endpoint: config.endpoint,
            current: None,
            previous: [None, None],
            next: None,
            handshake: None,
            retry_at: None,
            backoff: Duration::ZERO,
            last_initiation_sent: None,
            cookie: None,
            last_timestamp: None,
            waiting: VecDeque::with_capacity(queue),
            last_sent: None,
            last_sent_data: None,
            last_received: None,
            last_received_data: None,
            last_handshake: None,
            stats: PeerStats::default(),
        }
    }

    /// The session frames are sent on, if it may still be used.
    #[inline]
    pub(crate) fn sending_session(&mut self, now: Instant) -> Option<&mut Session> {
        self.current.as_mut().filter(|s| s.usable_at(now))
    }

    #[inline]
    pub(crate) fn has_sending_session(&self, now: Instant) -> bool {
        self.current.as_ref().is_some_and(|s| s.usable_at(now))
    }

    /// The session whose local index is `index`, among current, previous and next.
    #[inline]
    pub(crate) fn session_mut(&mut self, index: u32) -> Option<(&mut Session, bool)> {
        if let Some(s) = self.current.as_mut().filter(|s| s.local_index == index) {
            return Some((s, false));
        }
        for s in self.previous.iter_mut().flatten() {
            if s.local_index == index {
                return Some((s, false));
            }
        }
        self.next
            .as_mut()
            .filter(|s| s.local_index == index)
            .map(|s| (s, true))
    }

    pub(crate) fn fresh_cookie(&self, now: Instant) -> Option<&Cookie> {
        self.cookie
            .as_ref()
            .filter(|(_, at)| now.saturating_duration_since(*at) < COOKIE_LIFETIME)
            .map(|(c, _)| c)
    }

    /// The earliest moment a timer of this peer needs attention, and what it asks for.
    pub(crate) fn deadline(&self, now: Instant, timers: &Timers) -> Option<(Instant, TimerAction)> {
        let mut best: Option<(Instant, TimerAction)> = None;
        let mut consider = |at: Option<Instant>, action| {
            if let Some(at) = at
                && best.is_none_or(|(b, _)| at < b)
            {
                best = Some((at, action));
            }
        };

        // Sessions past their life are dropped.
        let expiry = self
            .sessions()
            .map(|s| s.established + timers.reject_after_time)
            .min();
        consider(expiry, TimerAction::Expire);

        let sendable = self.has_sending_session(now);
        if self.handshake.is_some() {
            consider(self.retry_at, TimerAction::Handshake);
        } else if self.endpoint.is_some() {
            consider(
                self.handshake_due(now, timers, sendable),
                TimerAction::Handshake,
            );
        }

        if sendable {
            let persistent = timers
                .persistent_keepalive
                .and_then(|k| self.last_sent.map(|t| t + k));
            let passive = match (self.last_received_data, self.last_sent) {
                (Some(rx), Some(tx)) if rx > tx => Some(rx + timers.passive_keepalive),
                (Some(rx), None) => Some(rx + timers.passive_keepalive),
                _ => None,
            };
            consider(persistent, TimerAction::Keepalive);
            consider(passive, TimerAction::Keepalive);
        }
        best
    }

    /// When a new handshake should start, with none pending and an endpoint known.
    fn handshake_due(&self, now: Instant, timers: &Timers, sendable: bool) -> Option<Instant> {
        let not_before = self
            .last_initiation_sent
            .map(|t| t + timers.handshake_min_interval);
        let Some(current) = self.current.as_ref().filter(|_| sendable) else {
            // No usable session: connect (the mesh keeps itself up), unless we have just
            // answered the peer's own initiation and its confirmation is on the way.
            let answered = self
                .next
                .as_ref()
                .map(|n| n.established + timers.handshake_retry_initial);
            let at = [not_before, answered].into_iter().flatten().max();
            return Some(at.unwrap_or(now));
        };
        // The initiator of a session renews it; the responder steps in later only if the
        // initiator did not.
        let rekey_age = if current.initiator {
            timers.rekey_after_time
        } else {
            (timers.rekey_after_time + timers.reject_after_time) / 2
        };
        let mut due = current.established + rekey_age;
        let rekey_messages = if current.initiator {
            timers.rekey_after_messages
        } else {
            timers.rekey_after_messages + timers.rekey_after_messages / 4
        };
        if current.send_counter >= rekey_messages {
            due = now;
        }
        // Data sent and nothing heard back: the session may be dead on the other side.
        if let Some(sent) = self.last_sent_data
            && self.last_received.is_none_or(|rx| rx < sent)
        {
            due = due.min(sent + timers.dead_peer_timeout);
        }
        Some(match not_before {
            Some(nb) => due.max(nb),
            None => due,
        })
    }

    /// Every session, current, previous and next.
    pub(crate) fn sessions(&self) -> impl Iterator<Item = &Session> {
        [
            &self.current,
            &self.previous[0],
            &self.previous[1],
            &self.next,
        ]
        .into_iter()
        .flatten()
    }

    /// Makes `session` current; the one it replaces is kept for receiving. Returns the
    /// session that falls out, whose index the caller must release.
    pub(crate) fn install(&mut self, session: Session) -> Option<Session> {
        let replaced = self.current.replace(session)?;
        let evicted = self.previous[1].take();
        self.previous[1] = self.previous[0].replace(replaced);
        evicted
    }

    pub(crate) fn info(&self, now: Instant) -> PeerInfo {
        PeerInfo {
            id: self.id,
            public_key: self.public_key,
            name: self.name.clone(),
            endpoint: self.endpoint,
            has_session: self.has_sending_session(now),
            last_handshake: self.last_handshake,
            last_received: self.last_received,
            queued_frames: self.waiting.len(),
            stats: self.stats,
        }
    }
}
