//! Input: frames from the local port and datagrams from the WAN.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand_core::Rng;

use super::{
    DatagramError, Event, Network, PeerIds, Transmit, TxItem, finish_macs, new_index, push_event,
    random32, roam, write_header,
};
use crate::cookie::{constant_time_eq, mac2};
use crate::frag::FrameKey;
use crate::handshake::Noise;
use crate::pool::FrameRef;
use crate::ratelimit::Budget;
use crate::session::{OpenError, Session};
use crate::switch::Forward;
use crate::types::{PeerId, Port};
use crate::wire::{
    self, COOKIE_REPLY_LEN, CookieReply, DATA_HEADER_LEN, DATA_OVERHEAD, DataHeader, DataKind,
    HandshakeInit, HandshakeResponse, INIT_LEN, MAX_FRAME_LEN, Message, RESPONSE_LEN,
};

impl Network {
    /// An Ethernet frame from the local port.
    pub fn handle_local_frame(&mut self, now: Instant, frame: &[u8]) {
        self.touch(now);
        self.stats.local_frames += 1;
        if frame.len() > MAX_FRAME_LEN {
            self.stats.drops.oversize += 1;
            return;
        }
        let forward = self.switch.forward(now, Port::Local, frame);
        self.dispatch_local(now, frame, forward);
    }

    /// The fast path for a frame from the local port that the caller laid out for sealing
    /// in place: the frame is `buf[DATA_HEADER_LEN..DATA_HEADER_LEN + len]` and `buf`
    /// holds at least [`wire::TAG_LEN`] more bytes after it. When the frame goes to one
    /// peer, whole, on a usable session, with nothing queued ahead of it, it is sealed
    /// where it is and the datagram, `buf[..transmit.len]`, is returned to be sent now:
    /// no copy. Otherwise it is handled exactly as [`Network::handle_local_frame`]
    /// handles it (its datagrams come from `poll_transmit`) and `None` is returned.
    pub fn handle_local_frame_in_place(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        len: usize,
    ) -> Option<Transmit> {
        self.touch(now);
        self.stats.local_frames += 1;
        if len > MAX_FRAME_LEN || buf.len() < DATA_OVERHEAD + len {
            self.stats.drops.oversize += 1;
            return None;
        }
        let forward = self.switch.forward(
            now,
            Port::Local,
            &buf[DATA_HEADER_LEN..DATA_HEADER_LEN + len],
        );
        if let Forward::Peer(p) = forward
            && self.transmit.is_empty()
            && let Some(t) = self.seal_in_place(now, p, buf, len)
        {
            self.drain_switch_events();
            return Some(t);
        }
        self.dispatch_local(now, &buf[DATA_HEADER_LEN..DATA_HEADER_LEN + len], forward);
        None
    }

    /// Seals a frame laid out in `buf` for peer `id`, if it can go now, whole.
    fn seal_in_place(
        &mut self,
        now: Instant,
        id: PeerId,
        buf: &mut [u8],
        len: usize,
    ) -> Option<Transmit> {
        let path_mtu = usize::from(self.config.path_mtu);
        let peer = self.peers.get_mut(&id)?;
        let endpoint = peer.endpoint?;
        let ip_overhead = if endpoint.is_ipv4() { 28 } else { 48 };
        if len > path_mtu - ip_overhead - DATA_OVERHEAD {
            return None;
        }
        let session = peer.sending_session(now)?;
        let counter = session.take_counters(1)?;
        let header = DataHeader {
            kind: DataKind::Frame,
            receiver: session.remote_index,
            counter,
        };
        let total = DATA_OVERHEAD + len;
        write_header(buf, &header);
        session.seal(counter, &mut buf[..total]);
        peer.last_sent = Some(now);
        peer.last_sent_data = Some(now);
        peer.stats.tx_packets += 1;
        peer.stats.tx_bytes += total as u64;
        Some(self.sent(endpoint, total))
    }

    /// Queues a local frame where the switch sent it.
    fn dispatch_local(&mut self, now: Instant, frame: &[u8], forward: Forward) {
        match forward {
            Forward::Peer(p) => {
                if let Some(f) = self.store(frame) {
                    self.send_to(now, p, f);
                }
            }
            Forward::FloodPeers => {
                if self.peers.is_empty() {
                    return;
                }
                let Some(f) = self.store(frame) else { return };
                let ids: PeerIds = PeerIds::of(&self.peers);
                for (i, p) in ids.iter().enumerate() {
                    if i > 0 {
                        self.pool.retain(f);
                    }
                    self.send_to(now, p, f);
                }
            }
            Forward::ArpReply(reply) => {
                if let Some(f) = self.store(&reply) {
                    self.deliver.push_back(f);
                }
            }
            Forward::Local | Forward::Drop(_) => self.stats.drops.switched += 1,
        }
        self.drain_switch_events();
    }

    fn store(&mut self, frame: &[u8]) -> Option<FrameRef> {
        let f = self.pool.insert(frame);
        if f.is_none() {
            self.stats.drops.queue_full += 1;
        }
        f
    }

    /// Queues a stored frame (one reference, consumed) for a peer.
    fn send_to(&mut self, now: Instant, id: PeerId, frame: FrameRef) {
        let timers = &self.config.timers;
        let Some(peer) = self.peers.get_mut(&id) else {
            self.pool.release(frame);
            return;
        };
        peer.last_sent = Some(now);
        peer.last_sent_data = Some(now);
        if peer.has_sending_session(now) {
            if self.transmit.len() >= self.config.limits.transmit_frames {
                self.stats.drops.queue_full += 1;
                self.pool.release(frame);
                return;
            }
            self.transmit.push_back(TxItem::Frame {
                peer: id,
                frame,
                fragments: None,
            });
            return;
        }
        if peer.endpoint.is_none() && peer.handshake.is_none() {
            self.stats.drops.no_endpoint += 1;
        }
        if peer.waiting.len() >= self.config.limits.queued_frames_per_peer
            && let Some(oldest) = peer.waiting.pop_front()
        {
            self.pool.release(oldest);
            self.stats.drops.queue_full += 1;
        }
        peer.waiting.push_back(frame);
        // Outgoing data starts a handshake at once (at most once per minimum interval),
        // whatever the retry backoff says: traffic resumes as soon as the path does.
        let ready = peer
            .last_initiation_sent
            .is_none_or(|t| now.saturating_duration_since(t) >= timers.handshake_min_interval);
        if ready && peer.endpoint.is_some() {
            self.initiate(now, id);
        }
    }

    /// A datagram from the WAN. Returns the frame to deliver to the local port when the
    /// datagram carried one (decrypted in place: a slice of `datagram`).
    pub fn handle_datagram<'b>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &'b mut [u8],
    ) -> Result<Option<&'b [u8]>, DatagramError> {
        self.touch(now);
        self.stats.rx_datagrams += 1;
        self.stats.rx_bytes += datagram.len() as u64;
        let result = match wire::parse(datagram) {
            Err(e) => Err(DatagramError::Malformed(e)),
            Ok(Message::HandshakeInit(m)) => self.handle_initiation(now, from, m).map(|_| None),
            Ok(Message::HandshakeResponse(m)) => self.handle_response(now, from, m).map(|_| None),
            Ok(Message::CookieReply(m)) => self.handle_cookie_reply(now, m).map(|_| None),
            Ok(Message::Data(header)) => self.handle_data(now, from, header, datagram),
        };
        if let Err(e) = &result {
            self.count_drop(e);
        }
        self.drain_switch_events();
        result
    }

    fn count_drop(&mut self, e: &DatagramError) {
        let d = &mut self.stats.drops;
        *match e {
            DatagramError::Malformed(_) => &mut d.malformed,
            DatagramError::WrongNetwork(_) => &mut d.wrong_network,
            DatagramError::BadMac => &mut d.bad_mac,
            DatagramError::UnknownIndex(_) => &mut d.unknown_index,
            DatagramError::Replay => &mut d.replay,
            DatagramError::Auth => &mut d.auth,
            DatagramError::HandshakeFailed => &mut d.handshake_failed,
            DatagramError::UnknownPeer => &mut d.unknown_peer,
            DatagramError::ReplayedHandshake => &mut d.replayed_handshake,
            DatagramError::RateLimited => &mut d.rate_limited,
            DatagramError::UnderLoad => &mut d.under_load,
            DatagramError::Reassembly => &mut d.reassembly,
        } += 1;
    }

    fn handle_initiation(
        &mut self,
        now: Instant,
        from: SocketAddr,
        init: HandshakeInit<'_>,
    ) -> Result<(), DatagramError> {
        if init.network_id() != self.id {
            return Err(DatagramError::WrongNetwork(init.network_id()));
        }
        // A source that has spent every allowance it could use is refused before its mac1
        // is checked: nothing it sends can be answered now, so a flood from one address
        // costs one table lookup per datagram (such a datagram counts as rate limited,
        // even if its mac1 was bad). The lookup never adds a source: only verified
        // initiations are counted.
        let carries_cookie = carries_cookie(init);
        if self
            .sources
            .known(now, from.ip())
            .is_some_and(|s| !s.can_be_answered(carries_cookie))
        {
            return Err(DatagramError::RateLimited);
        }
        let bytes = init.bytes();
        if !self
            .own_mac_keys
            .verify_mac1(&bytes[..HandshakeInit::MAC1_AT], init.mac1())
        {
            return Err(DatagramError::BadMac);
        }
        match self.admit(now, from, init) {
            Admission::Process => {}
            Admission::CookieReply(cookie) => {
                self.send_cookie_reply(from, init, &cookie);
                return Err(DatagramError::UnderLoad);
            }
            Admission::Refuse => return Err(DatagramError::RateLimited),
        }
        self.stats.initiations_processed += 1;
        let read = self
            .noise
            .read_initiation(random32(&mut self.rng), init.noise())
            .map_err(|_| DatagramError::HandshakeFailed)?;
        let peer_id = *self
            .by_key
            .get(&read.remote)
            .ok_or(DatagramError::UnknownPeer)?;
        let peer = self.peers.get_mut(&peer_id).expect("indexed peer");
        if peer.last_timestamp.is_some_and(|t| read.timestamp <= t) {
            return Err(DatagramError::ReplayedHandshake);
        }
        peer.last_timestamp = Some(read.timestamp);

        let index = new_index(&mut self.rng, &self.by_index, self.config.index_tag);
        let mut msg = [0u8; INIT_LEN];
        HandshakeResponse::write_header(&mut msg, index, init.sender_index());
        let keys = self
            .noise
            .respond(
                read,
                &mut msg[HandshakeResponse::NOISE_AT..HandshakeResponse::MAC1_AT],
            )
            .map_err(|_| DatagramError::HandshakeFailed)?;
        finish_macs(
            &mut msg[..RESPONSE_LEN],
            HandshakeResponse::MAC1_AT,
            &peer.mac_keys,
            peer.fresh_cookie(now),
        );

        let session = Session::new(
            self.config.cipher,
            keys,
            false,
            index,
            init.sender_index(),
            now,
            self.config.timers.reject_after_time,
        );
        if let Some(old) = peer.next.replace(session) {
            self.by_index.remove(&old.local_index);
        }
        self.by_index.insert(index, peer_id);
        // The peer's initiation crossed ours. One side must yield or both would wait for
        // a confirmation of the session they answered: the smaller public key yields.
        if peer.handshake.is_some() && *self.noise.public_key() < peer.public_key {
            let ours = peer.handshake.take().expect("checked");
            self.by_index.remove(&ours.local_index);
            peer.retry_at = None;
        }
        // The session counts as established once the initiator confirms it by using it.
        peer.last_received = Some(now);
        roam(&mut self.events, self.config.limits.events, peer, from);
        self.push_control(from, &msg[..RESPONSE_LEN]);
        Ok(())
    }

    /// Decides what an initiation whose mac1 verified may cost (`Limits` explains the
    /// budgets). The cheap answers come first: the cookie (two more HMACs) is only
    /// computed for an initiation that could still be answered.
    fn admit(&mut self, now: Instant, from: SocketAddr, init: HandshakeInit<'_>) -> Admission {
        let mut source = self.sources.source(now, from.ip());
        if source.take(Budget::Initiation) && self.handshake_budget.try_take(now) {
            return Admission::Process;
        }
        // Over the source's share or the network's budget: only an initiation proving
        // that its sender receives at `from` gets work, others a cookie to prove it with.
        // Checking a cookie spends a token of the proven allowance, so a source sending
        // bad ones runs out like any other.
        let check_cookie = carries_cookie(init) && source.take(Budget::Proven);
        if !check_cookie && !source.has(Budget::CookieReply) {
            return Admission::Refuse;
        }
        let rng = &mut self.rng;
        let cookie = self.cookie_secret.cookie_for(now, || random32(rng), from);
        if check_cookie {
            let expected = mac2(&cookie, &init.bytes()[..HandshakeInit::MAC2_AT]);
            if constant_time_eq(&expected, init.mac2()) {
                if self.cookie_lane.try_take(now) {
                    return Admission::Process;
                }
                return Admission::Refuse;
            }
            // A stale or forged cookie: answered like an initiation without one.
        }
        if source.take(Budget::CookieReply) && self.cookie_replies.try_take(now) {
            return Admission::CookieReply(cookie);
        }
        Admission::Refuse
    }

    fn send_cookie_reply(&mut self, to: SocketAddr, init: HandshakeInit<'_>, cookie: &[u8; 16]) {
        let mut nonce = [0u8; 12];
        self.rng.fill_bytes(&mut nonce);
        let mut out = [0u8; COOKIE_REPLY_LEN];
        self.own_mac_keys.seal_cookie_reply(
            init.sender_index(),
            nonce,
            init.mac1(),
            cookie,
            &mut out,
        );
        self.stats.cookie_replies_sent += 1;
        self.push_control(to, &out);
    }

    fn handle_response(
        &mut self,
        now: Instant,
        from: SocketAddr,
        resp: HandshakeResponse<'_>,
    ) -> Result<(), DatagramError> {
        let index = resp.receiver_index();
        let peer_id = *self
            .by_index
            .get(&index)
            .ok_or(DatagramError::UnknownIndex(index))?;
        let bytes = resp.bytes();
        if !self
            .own_mac_keys
            .verify_mac1(&bytes[..HandshakeResponse::MAC1_AT], resp.mac1())
        {
            return Err(DatagramError::BadMac);
        }
        let peer = self.peers.get_mut(&peer_id).expect("indexed peer");
        let pending = peer
            .handshake
            .as_mut()
            .filter(|h| h.local_index == index)
            .ok_or(DatagramError::UnknownIndex(index))?;
        let keys = Noise::read_response(&mut pending.state, resp.noise())
            .map_err(|_| DatagramError::HandshakeFailed)?;
        peer.handshake = None;
        peer.retry_at = None;
        peer.backoff = Duration::ZERO;
        let session = Session::new(
            self.config.cipher,
            keys,
            true,
            index,
            resp.sender_index(),
            now,
            self.config.timers.reject_after_time,
        );
        if let Some(old) = peer.install(session) {
            self.by_index.remove(&old.local_index);
        }
        peer.last_received = Some(now);
        peer.last_handshake = Some(now);
        peer.stats.handshakes += 1;
        self.stats.sessions_established += 1;
        roam(&mut self.events, self.config.limits.events, peer, from);
        push_event(
            &mut self.events,
            self.config.limits.events,
            Event::SessionEstablished {
                peer: peer_id,
                initiator: true,
            },
        );
        // Waiting frames go now; if there are none, a keepalive confirms the session so
        // the responder starts using it.
        if !self.flush_waiting(now, peer_id) {
            self.queue_keepalive(now, peer_id);
        }
        Ok(())
    }

    fn handle_cookie_reply(
        &mut self,
        now: Instant,
        reply: CookieReply<'_>,
    ) -> Result<(), DatagramError> {
        let index = reply.receiver_index();
        let peer_id = *self
            .by_index
            .get(&index)
            .ok_or(DatagramError::UnknownIndex(index))?;
        let peer = self.peers.get_mut(&peer_id).expect("indexed peer");
        let pending = peer
            .handshake
            .as_ref()
            .filter(|h| h.local_index == index)
            .ok_or(DatagramError::UnknownIndex(index))?;
        let cookie = peer
            .mac_keys
            .open_cookie_reply(&reply, &pending.mac1)
            .ok_or(DatagramError::Auth)?;
        peer.cookie = Some((cookie, now));
        Ok(())
    }

    fn handle_data<'b>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        header: DataHeader,
        datagram: &'b mut [u8],
    ) -> Result<Option<&'b [u8]>, DatagramError> {
        let index = header.receiver;
        let peer_id = *self
            .by_index
            .get(&index)
            .ok_or(DatagramError::UnknownIndex(index))?;
        let peer = self.peers.get_mut(&peer_id).expect("indexed peer");
        let (session, is_next) = peer
            .session_mut(index)
            .ok_or(DatagramError::UnknownIndex(index))?;
        let len = session
            .open(now, header.counter, datagram)
            .map_err(|e| match e {
                OpenError::Replay(_) | OpenError::Exhausted => DatagramError::Replay,
                OpenError::Auth => DatagramError::Auth,
            })?;
        // Authenticated from here on.
        peer.last_received = Some(now);
        if header.kind != DataKind::Keepalive {
            peer.last_received_data = Some(now);
        }
        peer.stats.rx_packets += 1;
        peer.stats.rx_bytes += datagram.len() as u64;
        roam(&mut self.events, self.config.limits.events, peer, from);
        if is_next {
            // The initiator used the session we answered: it is confirmed.
            let next = peer.next.take().expect("next session");
            if let Some(old) = peer.install(next) {
                self.by_index.remove(&old.local_index);
            }
            peer.last_handshake = Some(now);
            peer.stats.handshakes += 1;
            self.stats.sessions_established += 1;
            push_event(
                &mut self.events,
                self.config.limits.events,
                Event::SessionEstablished {
                    peer: peer_id,
                    initiator: false,
                },
            );
            self.flush_waiting(now, peer_id);
        }
        let payload = DATA_HEADER_LEN..DATA_HEADER_LEN + len;
        match header.kind {
            DataKind::Keepalive => Ok(None),
            DataKind::Frame => {
                let datagram: &'b [u8] = datagram;
                let frame = &datagram[payload];
                match self.switch.forward(now, Port::Peer(peer_id), frame) {
                    Forward::Local => {
                        self.stats.frames_delivered += 1;
                        Ok(Some(frame))
                    }
                    _ => {
                        self.stats.drops.switched += 1;
                        Ok(None)
                    }
                }
            }
            DataKind::Fragment(info) => {
                let key = FrameKey {
                    peer: peer_id,
                    session: index,
                    first_counter: header.counter.wrapping_sub(u64::from(info.index)),
                };
                let frame = match self.reassembly.insert(now, key, info, &datagram[payload]) {
                    Ok(Some(frame)) => frame,
                    Ok(None) => return Ok(None),
                    Err(_) => return Err(DatagramError::Reassembly),
                };
                match self.switch.forward(now, Port::Peer(peer_id), frame) {
                    Forward::Local => match self.pool.insert(frame) {
                        Some(f) => self.deliver.push_back(f),
                        None => self.stats.drops.queue_full += 1,
                    },
                    _ => self.stats.drops.switched += 1,
                }
                Ok(None)
            }
        }
    }

    /// Moves a peer's waiting frames to the transmit queue. True if there were any.
    fn flush_waiting(&mut self, now: Instant, id: PeerId) -> bool {
        let Some(peer) = self.peers.get_mut(&id) else {
            return false;
        };
        if peer.waiting.is_empty() {
            return false;
        }
        peer.last_sent = Some(now);
        while let Some(frame) = peer.waiting.pop_front() {
            if self.transmit.len() >= self.config.limits.transmit_frames {
                self.pool.release(frame);
                self.stats.drops.queue_full += 1;
                continue;
            }
            self.transmit.push_back(TxItem::Frame {
                peer: id,
                frame,
                fragments: None,
            });
        }
        true
    }

    pub(super) fn queue_keepalive(&mut self, now: Instant, id: PeerId) {
        if let Some(peer) = self.peers.get_mut(&id) {
            peer.last_sent = Some(now);
            self.transmit.push_back(TxItem::Keepalive { peer: id });
        }
    }
}

/// What an initiation gets.
enum Admission {
    /// Diffie-Hellman work, and a response if it checks out.
    Process,
    /// A cookie reply carrying this cookie, to prove its sender's address with.
    CookieReply([u8; 16]),
    /// Nothing: its source, or the network, is over budget.
    Refuse,
}

/// Whether an initiation carries a cookie's MAC: an initiator without a cookie leaves
/// mac2 zero.
fn carries_cookie(init: HandshakeInit<'_>) -> bool {
    init.mac2().iter().any(|b| *b != 0)
}
