//! Fragmentation of frames too large for the WAN path, and their bounded reassembly.
//!
//! The overlay never relies on IP fragmentation: a frame whose data message would exceed
//! the path MTU is cut into 2 to 15 pieces, each sealed as its own fragment message with a
//! consecutive counter, so every piece is authenticated and replay-checked before it is
//! stored; nobody without the session keys can occupy reassembly memory.
//!
//! Layout rule (checked on receipt, so a piece can neither overlap another nor leave a
//! gap): every piece but the last has the same length `L`, a multiple of 8, and piece `i`
//! starts at `i * L`. The reassembler has a fixed number of slots of one maximum frame
//! each, allocated as they are first needed and then reused; when all are taken the oldest
//! is evicted, and a slot older than the timeout is dropped.

use std::time::{Duration, Instant};

use crate::types::PeerId;
use crate::wire::{FRAGMENT_UNIT, FragmentInfo, MAX_FRAGMENTS, MAX_FRAME_LEN};

/// How to cut one frame: `count` pieces of `piece_len` bytes, the last one shorter or
/// equal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragmentPlan {
    pub count: u8,
    pub piece_len: usize,
    pub frame_len: usize,
}

impl FragmentPlan {
    /// Plans pieces of at most `max_piece` bytes, balanced so the last is not a sliver.
    /// `None` if the frame fits whole, or if it would need more than the maximum number of
    /// fragments.
    pub fn new(frame_len: usize, max_piece: usize) -> Option<FragmentPlan> {
        if frame_len <= max_piece {
            return None;
        }
        let unit_max = max_piece / FRAGMENT_UNIT * FRAGMENT_UNIT;
        if unit_max == 0 {
            return None;
        }
        let count = frame_len.div_ceil(unit_max);
        if count > MAX_FRAGMENTS {
            return None;
        }
        let piece_len = frame_len.div_ceil(count).next_multiple_of(FRAGMENT_UNIT);
        // Rounding up can make the balanced pieces cover the frame in fewer pieces.
        let count = frame_len.div_ceil(piece_len);
        Some(FragmentPlan {
            count: count as u8,
            piece_len,
            frame_len,
        })
    }

    /// The header fields and byte range of piece `index`.
    pub fn piece(&self, index: u8) -> (FragmentInfo, std::ops::Range<usize>) {
        let start = usize::from(index) * self.piece_len;
        let end = (start + self.piece_len).min(self.frame_len);
        let info = FragmentInfo {
            index,
            count: self.count,
            offset_units: (start / FRAGMENT_UNIT) as u8,
        };
        (info, start..end)
    }
}

/// Names one fragmented frame: the session it came on and the counter of its first piece.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameKey {
    pub peer: PeerId,
    pub session: u32,
    pub first_counter: u64,
}

/// Why a fragment was not stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReassemblyError {
    #[error("fragment disagrees with the other pieces of its frame")]
    Inconsistent,
    #[error("fragment extends past the maximum frame length")]
    TooLong,
    #[error("fragment already received")]
    Duplicate,
}

struct Slot {
    key: Option<FrameKey>,
    started: Instant,
    count: u8,
    received: u16,
    /// Length of the non-last pieces, once one has arrived.
    piece_len: Option<usize>,
    /// Offset and length of the last piece, once it has arrived.
    last: Option<(usize, usize)>,
    buf: Box<[u8]>,
}

/// Counters of what reassembly discarded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReassemblyStats {
    pub completed: u64,
    pub timed_out: u64,
    pub evicted: u64,
    pub rejected: u64,
}

pub struct Reassembler {
    slots: Vec<Slot>,
    max_slots: usize,
    timeout: Duration,
    stats: ReassemblyStats,
}

impl Reassembler {
    pub fn new(max_slots: usize, timeout: Duration) -> Reassembler {
        Reassembler {
            slots: Vec::with_capacity(max_slots.max(1)),
            max_slots: max_slots.max(1),
            timeout,
            stats: ReassemblyStats::default(),
        }
    }

    pub fn stats(&self) -> &ReassemblyStats {
        &self.stats
    }

    /// Frames being reassembled now.
    pub fn in_progress(&self) -> usize {
        self.slots.iter().filter(|s| s.key.is_some()).count()
    }

    /// Stores one authenticated piece. Returns the whole frame when this piece completes
    /// it; the slice lives until the next call.
    pub fn insert(
        &mut self,
        now: Instant,
        key: FrameKey,
        info: FragmentInfo,
        piece: &[u8],
    ) -> Result<Option<&[u8]>, ReassemblyError> {
        // The wire format never yields such a piece, but this is a public entry point:
        // a piece no frame can have is refused, never a panic.
        let well_formed =
            info.count >= 2 && usize::from(info.count) <= MAX_FRAGMENTS && info.index < info.count;
        if !well_formed {
            self.stats.rejected += 1;
            return Err(ReassemblyError::Inconsistent);
        }
        let offset = info.offset();
        let is_last = info.index + 1 == info.count;
        let valid_shape = offset + piece.len() <= MAX_FRAME_LEN
            && !piece.is_empty()
            && (is_last || piece.len().is_multiple_of(FRAGMENT_UNIT))
            && (is_last || offset == usize::from(info.index) * piece.len());
        if !valid_shape {
            self.stats.rejected += 1;
            return Err(if offset + piece.len() > MAX_FRAME_LEN {
                ReassemblyError::TooLong
            } else {
                ReassemblyError::Inconsistent
            });
        }
        let at = self.slot_for(now, key, info.count);
        let slot = &mut self.slots[at];
        let bit = 1u16 << info.index;
        let consistent = slot.count == info.count
            && match (is_last, slot.piece_len) {
                (false, Some(len)) => len == piece.len(),
                _ => true,
            };
        if !consistent {
            self.stats.rejected += 1;
            Self::release(slot);
            return Err(ReassemblyError::Inconsistent);
        }
        if slot.received & bit != 0 {
            return Err(ReassemblyError::Duplicate);
        }
        slot.received |= bit;
        slot.buf[offset..offset + piece.len()].copy_from_slice(piece);
        if is_last {
            slot.last = Some((offset, piece.len()));
        } else {
            slot.piece_len = Some(piece.len());
        }
        let all = (1u16 << slot.count) - 1;
        if slot.received != all {
            return Ok(None);
        }
        let (last_offset, last_len) = slot.last.expect("last piece received");
        let piece_len = slot.piece_len.expect("count >= 2");
        let expected_last = usize::from(slot.count - 1) * piece_len;
        Self::release(slot);
        if last_offset != expected_last || last_len > piece_len {
            self.stats.rejected += 1;
            return Err(ReassemblyError::Inconsistent);
        }
        self.stats.completed += 1;
        Ok(Some(&self.slots[at].buf[..last_offset + last_len]))
    }

    fn release(slot: &mut Slot) {
        slot.key = None;
        slot.received = 0;
        slot.piece_len = None;
        slot.last = None;
    }

    /// The slot holding `key`, or a free one, or the oldest one evicted.
    fn slot_for(&mut self, now: Instant, key: FrameKey, count: u8) -> usize {
        if let Some(i) = self.slots.iter().position(|s| s.key == Some(key)) {
            return i;
        }
        let free = self.slots.iter().position(|s| s.key.is_none());
        let i = match free {
            Some(i) => i,
            None if self.slots.len() < self.max_slots => {
                self.slots.push(Slot {
                    key: None,
                    started: now,
                    count: 0,
                    received: 0,
                    piece_len: None,
                    last: None,
                    buf: vec![0u8; MAX_FRAME_LEN].into_boxed_slice(),
                });
                self.slots.len() - 1
            }
            None => {
                let oldest = (0..self.slots.len())
                    .min_by_key(|&i| self.slots[i].started)
                    .expect("at least one slot");
                self.stats.evicted += 1;
                oldest
            }
        };
        let slot = &mut self.slots[i];
        Self::release(slot);
        slot.key = Some(key);
        slot.started = now;
        slot.count = count;
        i
    }

    /// Drops frames that have waited longer than the timeout.
    pub fn expire(&mut self, now: Instant) {
        for slot in &mut self.slots {
            if slot.key.is_some() && now.saturating_duration_since(slot.started) >= self.timeout {
                Self::release(slot);
                self.stats.timed_out += 1;
            }
        }
    }

    /// When the oldest frame in progress times out.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.slots
            .iter()
            .filter(|s| s.key.is_some())
            .map(|s| s.started + self.timeout)
            .min()
    }

    /// Forgets every frame from `peer`.
    pub fn forget_peer(&mut self, peer: PeerId) {
        for slot in &mut self.slots {
            if slot.key.is_some_and(|k| k.peer == peer) {
                Self::release(slot);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(first_counter: u64) -> FrameKey {
        FrameKey {
            peer: PeerId(1),
            session: 7,
            first_counter,
        }
    }

    fn pieces(frame: &[u8], max_piece: usize) -> Vec<(FragmentInfo, Vec<u8>)> {
        let plan = FragmentPlan::new(frame.len(), max_piece).expect("needs fragmenting");
        (0..plan.count)
            .map(|i| {
                let (info, range) = plan.piece(i);
                (info, frame[range].to_vec())
            })
            .collect()
    }

    #[test]
    fn a_1518_byte_frame_is_cut_in_two_balanced_pieces_for_a_1500_path() {
        // IPv4 + UDP + data overhead leave 1440 bytes of a 1500-byte path.
        let plan = FragmentPlan::new(1518, 1440).unwrap();
        assert_eq!(plan.count, 2);
        assert_eq!(plan.piece_len, 760);
        assert_eq!(plan.piece(1).1, 760..1518);
        assert_eq!(FragmentPlan::new(1440, 1440), None);
    }

    #[test]
    fn pieces_in_any_order_reassemble_to_the_frame() {
        let t0 = Instant::now();
        let frame: Vec<u8> = (0..1522u32).map(|i| (i * 7) as u8).collect();
        let mut parts = pieces(&frame, 500);
        parts.reverse();
        let mut r = Reassembler::new(4, Duration::from_secs(1));
        let n = parts.len();
        for (i, (info, piece)) in parts.iter().enumerate() {
            let out = r.insert(t0, key(100), *info, piece).unwrap();
            if i + 1 == n {
                assert_eq!(out.unwrap(), &frame[..]);
            } else {
                assert!(out.is_none());
            }
        }
        assert_eq!(r.in_progress(), 0);
    }

    #[test]
    fn incomplete_frames_time_out_and_free_their_slot() {
        let t0 = Instant::now();
        let parts = pieces(&[1u8; 1500], 800);
        let mut r = Reassembler::new(4, Duration::from_secs(1));
        r.insert(t0, key(1), parts[0].0, &parts[0].1).unwrap();
        assert_eq!(r.next_expiry(), Some(t0 + Duration::from_secs(1)));
        r.expire(t0 + Duration::from_millis(999));
        assert_eq!(r.in_progress(), 1);
        r.expire(t0 + Duration::from_secs(1));
        assert_eq!(r.in_progress(), 0);
        assert_eq!(r.stats().timed_out, 1);
    }

    #[test]
    fn memory_is_bounded_by_evicting_the_oldest() {
        let t0 = Instant::now();
        let parts = pieces(&[1u8; 1500], 800);
        let mut r = Reassembler::new(3, Duration::from_secs(10));
        for i in 0..100u64 {
            r.insert(
                t0 + Duration::from_millis(i),
                key(i * 10),
                parts[0].0,
                &parts[0].1,
            )
            .unwrap();
            assert!(r.in_progress() <= 3);
        }
        assert_eq!(r.slots.len(), 3);
        assert_eq!(r.stats().evicted, 97);
        // The newest frame survived and still completes.
        assert!(
            r.insert(t0, key(990), parts[1].0, &parts[1].1)
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn overlapping_or_gapped_pieces_are_rejected() {
        let t0 = Instant::now();
        let mut r = Reassembler::new(2, Duration::from_secs(1));
        let first = FragmentInfo {
            index: 0,
            count: 2,
            offset_units: 0,
        };
        let last_with_gap = FragmentInfo {
            index: 1,
            count: 2,
            offset_units: 20,
        };
        r.insert(t0, key(5), first, &[0u8; 80]).unwrap();
        assert_eq!(
            r.insert(t0, key(5), last_with_gap, &[0u8; 40]),
            Err(ReassemblyError::Inconsistent)
        );
        let odd_piece = FragmentInfo {
            index: 0,
            count: 2,
            offset_units: 0,
        };
        assert_eq!(
            r.insert(t0, key(6), odd_piece, &[0u8; 81]),
            Err(ReassemblyError::Inconsistent)
        );
    }

    #[test]
    fn pieces_no_frame_can_have_are_refused_not_a_panic() {
        // Found by the `reassembly` fuzz target: index 255 of 255 overflowed.
        let t0 = Instant::now();
        let mut r = Reassembler::new(2, Duration::from_secs(1));
        for (index, count) in [(255, 255), (0, 1), (16, 17), (2, 2), (0, 0)] {
            let info = FragmentInfo {
                index,
                count,
                offset_units: 0,
            };
            assert_eq!(
                r.insert(t0, key(1), info, &[0u8; 8]),
                Err(ReassemblyError::Inconsistent),
                "{index}/{count}"
            );
        }
        assert_eq!(r.in_progress(), 0);
    }

    proptest! {
        #[test]
        fn any_frame_survives_fragmentation(len in 100usize..=MAX_FRAME_LEN, max_piece in 104usize..1500, seed: u8) {
            let frame: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
            prop_assume!(len > max_piece);
            let plan = FragmentPlan::new(len, max_piece);
            prop_assume!(plan.is_some());
            let plan = plan.unwrap();
            prop_assert!(plan.piece_len <= max_piece);
            let mut r = Reassembler::new(2, Duration::from_secs(1));
            let mut out = None;
            for i in 0..plan.count {
                let (info, range) = plan.piece(i);
                if let Some(f) = r.insert(Instant::now(), key(0), info, &frame[range]).unwrap() {
                    out = Some(f.to_vec());
                }
            }
            prop_assert_eq!(out, Some(frame));
        }

        #[test]
        fn arbitrary_pieces_never_panic_and_never_exceed_the_slots(
            ops in proptest::collection::vec((0u64..6, 0u8..16, 0u8..16, any::<u8>(), 1usize..1600), 1..200)
        ) {
            let t0 = Instant::now();
            let mut r = Reassembler::new(4, Duration::from_secs(1));
            for (frame, index, count, offset_units, len) in ops {
                let info = FragmentInfo { index, count, offset_units };
                if count < 2 || index >= count { continue; }
                if let Ok(Some(f)) = r.insert(t0, key(frame), info, &vec![0u8; len]) {
                    prop_assert!(f.len() <= MAX_FRAME_LEN);
                }
                prop_assert!(r.in_progress() <= 4);
            }
        }
    }
}
