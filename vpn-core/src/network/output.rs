//! Output: datagrams to send (sealed as they leave), frames to deliver, events.

use std::net::SocketAddr;
use std::time::Instant;

use super::{Event, Network, Transmit, TxItem, push_event, write_header};
use crate::frag::FragmentPlan;
use crate::pool::FrameRef;
use crate::switch::SwitchEvent;
use crate::types::PeerId;
use crate::wire::{DATA_HEADER_LEN, DATA_OVERHEAD, DataHeader, DataKind};

impl Network {
    /// The next datagram to send, written to the front of `buf` (which must hold
    /// [`Network::max_datagram_len`] bytes). Data is sealed here, as it leaves.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        self.touch(now);
        if let Some(c) = self.control.pop_front() {
            buf[..c.len].copy_from_slice(&c.bytes[..c.len]);
            return Some(self.sent(c.destination, c.len));
        }
        loop {
            let item = self.transmit.front_mut()?;
            match *item {
                TxItem::Keepalive { peer } => {
                    self.transmit.pop_front();
                    if let Some(t) = self.seal_keepalive(now, peer, buf) {
                        return Some(t);
                    }
                }
                TxItem::Frame {
                    peer,
                    frame,
                    fragments,
                } => match self.seal_frame(now, peer, frame, fragments, buf) {
                    Sealed::Done(t) => {
                        self.transmit.pop_front();
                        self.pool.release(frame);
                        return Some(t);
                    }
                    Sealed::Fragment(t, progress) => {
                        if let Some(TxItem::Frame { fragments, .. }) = self.transmit.front_mut() {
                            *fragments = Some(progress);
                        }
                        return Some(t);
                    }
                    Sealed::Requeued => {
                        self.transmit.pop_front();
                    }
                    Sealed::Dropped => {
                        self.transmit.pop_front();
                        self.pool.release(frame);
                    }
                },
            }
        }
    }

    pub(super) fn sent(&mut self, destination: SocketAddr, len: usize) -> Transmit {
        self.stats.tx_datagrams += 1;
        self.stats.tx_bytes += len as u64;
        Transmit { destination, len }
    }

    fn seal_keepalive(&mut self, now: Instant, id: PeerId, buf: &mut [u8]) -> Option<Transmit> {
        let peer = self.peers.get_mut(&id)?;
        let endpoint = peer.endpoint?;
        let session = peer.sending_session(now)?;
        let counter = session.take_counters(1)?;
        let header = DataHeader {
            kind: DataKind::Keepalive,
            receiver: session.remote_index,
            counter,
        };
        write_header(buf, &header);
        session.seal(counter, &mut buf[..DATA_OVERHEAD]);
        peer.stats.tx_packets += 1;
        peer.stats.tx_bytes += DATA_OVERHEAD as u64;
        self.stats.keepalives_sent += 1;
        Some(self.sent(endpoint, DATA_OVERHEAD))
    }

    fn seal_frame(
        &mut self,
        now: Instant,
        id: PeerId,
        frame: FrameRef,
        fragments: Option<(u32, u64, u8)>,
        buf: &mut [u8],
    ) -> Sealed {
        let path_mtu = usize::from(self.config.path_mtu);
        let Some(peer) = self.peers.get_mut(&id) else {
            return Sealed::Dropped;
        };
        let Some(endpoint) = peer.endpoint else {
            self.stats.drops.no_endpoint += 1;
            return Sealed::Dropped;
        };
        let bytes = self.pool.get(frame);
        // IPv4 and UDP headers take 28 bytes of the path MTU, IPv6 and UDP 48.
        let ip_overhead = if endpoint.is_ipv4() { 28 } else { 48 };
        let max_piece = path_mtu - ip_overhead - DATA_OVERHEAD;

        let session = match fragments {
            // Later pieces go on the session that carried the first one.
            Some((index, _, _)) => match peer.session_mut(index) {
                Some((s, false)) => s,
                _ => return Sealed::Dropped,
            },
            None => match peer.sending_session(now) {
                Some(s) => s,
                None => {
                    // The session ended while the frame was queued: wait for a new one.
                    if peer.waiting.len() < self.config.limits.queued_frames_per_peer {
                        peer.waiting.push_back(frame);
                        return Sealed::Requeued;
                    }
                    self.stats.drops.queue_full += 1;
                    return Sealed::Dropped;
                }
            },
        };

        let (header, range, progress) = match FragmentPlan::new(bytes.len(), max_piece) {
            None => {
                if bytes.len() > max_piece {
                    // More pieces than the format allows: the path MTU is too small.
                    self.stats.drops.oversize += 1;
                    return Sealed::Dropped;
                }
                let Some(counter) = session.take_counters(1) else {
                    return Sealed::Dropped;
                };
                let header = DataHeader {
                    kind: DataKind::Frame,
                    receiver: session.remote_index,
                    counter,
                };
                (header, 0..bytes.len(), None)
            }
            Some(plan) => {
                let (first, next) = match fragments {
                    Some((_, first, next)) => (first, next),
                    None => match session.take_counters(u64::from(plan.count)) {
                        Some(first) => (first, 0),
                        None => return Sealed::Dropped,
                    },
                };
                let (info, range) = plan.piece(next);
                let header = DataHeader {
                    kind: DataKind::Fragment(info),
                    receiver: session.remote_index,
                    counter: first + u64::from(next),
                };
                let progress =
                    (next + 1 < plan.count).then_some((session.local_index, first, next + 1));
                (header, range, progress)
            }
        };
        let len = DATA_OVERHEAD + range.len();
        write_header(buf, &header);
        buf[DATA_HEADER_LEN..DATA_HEADER_LEN + range.len()].copy_from_slice(&bytes[range]);
        session.seal(header.counter, &mut buf[..len]);
        peer.stats.tx_packets += 1;
        peer.stats.tx_bytes += len as u64;
        if matches!(header.kind, DataKind::Fragment(_)) {
            self.stats.fragments_sent += 1;
        }
        let t = self.sent(endpoint, len);
        match progress {
            Some(p) => Sealed::Fragment(t, p),
            None => Sealed::Done(t),
        }
    }

    /// The next frame for the local port that was not returned by `handle_datagram`
    /// (ARP replies, reassembled frames), copied to the front of `buf` (at least
    /// [`MAX_FRAME_LEN`](crate::wire::MAX_FRAME_LEN) bytes). Returns its length.
    pub fn poll_deliver(&mut self, buf: &mut [u8]) -> Option<usize> {
        let f = self.deliver.pop_front()?;
        let frame = self.pool.get(f);
        let len = frame.len();
        buf[..len].copy_from_slice(frame);
        self.pool.release(f);
        self.stats.frames_delivered += 1;
        Some(len)
    }

    /// Whether events wait to be polled (the switch's included).
    pub fn has_events(&self) -> bool {
        !self.events.is_empty() || self.switch.has_events()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.drain_switch_events();
        self.events.pop_front()
    }

    pub(super) fn drain_switch_events(&mut self) {
        while let Some(e) = self.switch.poll_event() {
            let event = match e {
                SwitchEvent::MacMoved { mac, from, to } => Event::MacMoved { mac, from, to },
                SwitchEvent::MacTableFull { mac } => Event::MacTableFull { mac },
            };
            push_event(&mut self.events, self.config.limits.events, event);
        }
    }
}

enum Sealed {
    Done(Transmit),
    Fragment(Transmit, (u32, u64, u8)),
    Requeued,
    Dropped,
}
