//! `Reassembler::insert` with any sequence of pieces, keys, times and expiries: no panic,
//! never more frames in progress than slots, and a completed frame is made of exactly the
//! pieces of its own key, each at its place.
#![no_main]

use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use vpn_core::PeerId;
use vpn_core::frag::{FrameKey, Reassembler};
use vpn_core::wire::{FragmentInfo, MAX_FRAME_LEN};

#[derive(Arbitrary, Debug)]
struct Input {
    slots: u8,
    timeout_ms: u16,
    steps: Vec<Step>,
}

#[derive(Arbitrary, Debug)]
enum Step {
    Piece {
        /// Which of a few frames (peer, session and first counter derive from it).
        frame: u8,
        index: u8,
        count: u8,
        offset_units: u8,
        len: u16,
        advance_ms: u8,
    },
    Expire {
        advance_ms: u16,
    },
    ForgetPeer(u8),
}

/// The byte every piece `index` of frame `key` is filled with.
fn fill(key: &FrameKey, index: u8) -> u8 {
    (key.peer.0 as u8).wrapping_mul(31) ^ (key.first_counter as u8).wrapping_mul(7) ^ index
}

fuzz_target!(|input: Input| {
    let slots = usize::from(input.slots % 16) + 1;
    let timeout = Duration::from_millis(u64::from(input.timeout_ms) + 1);
    let mut r = Reassembler::new(slots, timeout);
    let t0 = Instant::now();
    let mut now = t0;
    let mut piece = vec![0u8; 2048];
    for step in input.steps {
        match step {
            Step::Piece {
                frame,
                index,
                count,
                offset_units,
                len,
                advance_ms,
            } => {
                now += Duration::from_millis(u64::from(advance_ms));
                let key = FrameKey {
                    peer: PeerId(u32::from(frame % 3)),
                    session: u32::from(frame % 2),
                    first_counter: u64::from(frame / 6),
                };
                let info = FragmentInfo {
                    index,
                    count,
                    offset_units,
                };
                let len = usize::from(len) % piece.len();
                piece[..len].fill(fill(&key, index));
                let Ok(Some(done)) = r.insert(now, key, info, &piece[..len]) else {
                    continue;
                };
                assert!(done.len() <= MAX_FRAME_LEN && !done.is_empty());
                // Every piece but the last has the same length, a multiple of 8.
                let piece_len = if u16::from(index) + 1 == u16::from(count) {
                    info.offset() / usize::from(count - 1)
                } else {
                    len
                };
                assert!(piece_len > 0 && piece_len % 8 == 0);
                for (i, chunk) in done.chunks(piece_len).enumerate() {
                    assert!(i < usize::from(count));
                    let want = fill(&key, i as u8);
                    assert!(chunk.iter().all(|&b| b == want), "piece {i} misplaced");
                }
                assert_eq!(done.len().div_ceil(piece_len), usize::from(count));
            }
            Step::Expire { advance_ms } => {
                now += Duration::from_millis(u64::from(advance_ms));
                r.expire(now);
                if let Some(at) = r.next_expiry() {
                    assert!(at > now);
                }
            }
            Step::ForgetPeer(p) => r.forget_peer(PeerId(u32::from(p % 3))),
        }
        assert!(r.in_progress() <= slots);
    }
});
