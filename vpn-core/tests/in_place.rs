//! The in-place fast path of `Network::handle_local_frame_in_place`: what it seals at
//! once, what it hands to the queue instead, and that the two never reorder frames.

use vpn_core::MacAddr;
use vpn_core::sim::{Pair, Side, frames};
use vpn_core::wire::{DATA_HEADER_LEN, TAG_LEN};

const A: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 0xa]);
const B: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 0xb]);

fn laid_out(frame: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; DATA_HEADER_LEN + frame.len() + TAG_LEN + 64];
    buf[DATA_HEADER_LEN..DATA_HEADER_LEN + frame.len()].copy_from_slice(frame);
    buf
}

fn frame_to(dst: MacAddr, src: MacAddr, tag: u8, len: usize) -> Vec<u8> {
    frames::ethernet(dst, src, 0x88b5, &vec![tag; len - 14])
}

#[test]
fn a_unicast_frame_on_an_established_session_is_sealed_in_place_and_opens_intact() {
    let mut pair = Pair::new(|_, _| {});
    pair.learn_macs(A, B);
    let frame = frame_to(B, A, 7, 1400);
    let mut buf = laid_out(&frame);
    let now = pair.now;
    let t = pair
        .a
        .handle_local_frame_in_place(now, &mut buf, frame.len())
        .expect("sealed at once");
    assert_eq!(t.destination, pair.addr_b);
    assert_eq!(t.len, DATA_HEADER_LEN + frame.len() + TAG_LEN);
    assert_ne!(
        buf[DATA_HEADER_LEN..DATA_HEADER_LEN + 100],
        frame[..100],
        "encrypted"
    );
    let src = pair.addr_a;
    let opened = pair.b.handle_datagram(now, src, &mut buf[..t.len]).unwrap();
    assert_eq!(opened, Some(&frame[..]));
}

#[test]
fn floods_and_frames_that_need_fragments_take_the_queue_instead() {
    let mut pair = Pair::new(|_, _| {});
    let now = pair.now;
    // Unknown destination: a flood, queued.
    let flood = frame_to(B, A, 1, 200);
    let mut buf = laid_out(&flood);
    assert!(
        pair.a
            .handle_local_frame_in_place(now, &mut buf, flood.len())
            .is_none()
    );
    let mut got = Vec::new();
    pair.pump(|side, f| got.push((side, f.to_vec())));
    assert_eq!(got, vec![(Side::B, flood)]);
    pair.learn_macs(A, B);
    // 1518 bytes do not fit a 1500-byte path whole: fragments, queued.
    let big = frame_to(B, A, 2, 1518);
    let mut buf = laid_out(&big);
    assert!(
        pair.a
            .handle_local_frame_in_place(now, &mut buf, big.len())
            .is_none()
    );
    let mut got = Vec::new();
    pair.pump(|side, f| got.push((side, f.to_vec())));
    assert_eq!(got, vec![(Side::B, big)]);
    assert_eq!(pair.a.stats().fragments_sent, 2);
}

#[test]
fn the_fast_path_never_overtakes_a_queued_frame() {
    let mut pair = Pair::new(|_, _| {});
    pair.learn_macs(A, B);
    let now = pair.now;
    // A big frame is queued (fragments), then small ones follow: they must queue too.
    let big = frame_to(B, A, 1, 1518);
    let mut buf = laid_out(&big);
    assert!(
        pair.a
            .handle_local_frame_in_place(now, &mut buf, big.len())
            .is_none()
    );
    let small = frame_to(B, A, 2, 100);
    let mut buf = laid_out(&small);
    assert!(
        pair.a
            .handle_local_frame_in_place(now, &mut buf, small.len())
            .is_none(),
        "sealed ahead of a queued frame"
    );
    let mut got = Vec::new();
    pair.pump(|_, f| got.push(f.to_vec()));
    assert_eq!(got, vec![big, small]);
    // With the queue empty again the fast path resumes.
    let mut buf = laid_out(&frame_to(B, A, 3, 100));
    assert!(
        pair.a
            .handle_local_frame_in_place(now, &mut buf, 100)
            .is_some()
    );
}

#[test]
fn a_buffer_without_room_for_the_tag_is_refused_not_overrun() {
    let mut pair = Pair::new(|_, _| {});
    pair.learn_macs(A, B);
    let frame = frame_to(B, A, 1, 300);
    let mut buf = vec![0u8; DATA_HEADER_LEN + frame.len()];
    buf[DATA_HEADER_LEN..].copy_from_slice(&frame);
    let now = pair.now;
    assert!(
        pair.a
            .handle_local_frame_in_place(now, &mut buf, frame.len())
            .is_none()
    );
    assert_eq!(pair.a.stats().drops.oversize, 1);
}
