//! `Network::handle_datagram` on a network with a peer and an established session: any
//! bytes, and genuine datagrams (frames the peer really sealed, handshakes, keepalives)
//! flipped, overwritten, truncated, extended, replayed or sent from elsewhere, so the
//! fuzzer gets past the header checks into sessions, the switch and reassembly. The
//! harness (`src/lib.rs`) checks what comes out.
#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use vpn_core::Cipher;
use vpn_core::sim::Side;
use vpn_core::wire::MAX_FRAME_LEN;
use vpn_core_fuzz::{Harness, MAC_A, elsewhere, ethernet, mac};

#[derive(Arbitrary, Debug)]
struct Input {
    chacha: bool,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// Any bytes, as a datagram to `b`.
    Raw {
        datagram: Vec<u8>,
        from_elsewhere: bool,
    },
    /// A frame enters `a`, which seals it (in pieces if it is long); every datagram is
    /// mutated as the mutations say before `b` gets it.
    Genuine {
        dst: u8,
        len: u16,
        fill: u8,
        mutations: Vec<Mutation>,
        from_elsewhere: bool,
    },
    /// A mutated copy of a genuine datagram seen earlier (handshakes included).
    Tamper { which: u8, mutations: Vec<Mutation> },
    /// A genuine datagram seen earlier, again.
    Replay { which: u8, from_elsewhere: bool },
    /// Time passes (up to about a minute); timers run and the networks talk.
    Advance { ms: u16 },
}

#[derive(Arbitrary, Debug)]
struct Mutation {
    /// Which datagram of a `Genuine` op it applies to.
    datagram: u8,
    kind: MutationKind,
}

#[derive(Arbitrary, Debug)]
enum MutationKind {
    Flip { at: u16, bit: u8 },
    Set { at: u16, value: u8 },
    Truncate(u16),
    Append(Vec<u8>),
    Lose,
}

/// Applies the mutations meant for datagram `i`; false if it is lost.
fn mutate(bytes: &mut Vec<u8>, i: usize, mutations: &[Mutation]) -> bool {
    for m in mutations
        .iter()
        .filter(|m| usize::from(m.datagram) % 4 == i % 4)
    {
        match &m.kind {
            MutationKind::Flip { at, bit } if !bytes.is_empty() => {
                let at = usize::from(*at) % bytes.len();
                bytes[at] ^= 1 << (bit % 8);
            }
            MutationKind::Set { at, value } if !bytes.is_empty() => {
                let at = usize::from(*at) % bytes.len();
                bytes[at] = *value;
            }
            MutationKind::Truncate(len) => bytes.truncate(usize::from(*len)),
            MutationKind::Append(more) => bytes.extend_from_slice(more),
            MutationKind::Lose => return false,
            _ => {}
        }
    }
    true
}

fuzz_target!(|input: Input| {
    let cipher = if input.chacha {
        Cipher::ChaCha20Poly1305
    } else {
        Cipher::Aes256Gcm
    };
    let mut h = Harness::new(1500, cipher);
    let a = h.pair.addr_a;
    for op in input.ops.into_iter().take(64) {
        match op {
            Op::Raw {
                mut datagram,
                from_elsewhere,
            } => {
                let from = if from_elsewhere { elsewhere() } else { a };
                h.receive(Side::B, from, &mut datagram);
            }
            Op::Genuine {
                dst,
                len,
                fill,
                mutations,
                from_elsewhere,
            } => {
                let len = usize::from(len) % (MAX_FRAME_LEN + 1);
                h.local_frame(Side::A, &ethernet(mac(dst), MAC_A, 0x0800, len, fill));
                let from = if from_elsewhere { elsewhere() } else { a };
                for (i, (_, mut bytes)) in h.drain(Side::A).into_iter().enumerate() {
                    if mutate(&mut bytes, i, &mutations) {
                        h.receive(Side::B, from, &mut bytes);
                    }
                }
            }
            Op::Tamper { which, mutations } => {
                if h.captured.is_empty() {
                    continue;
                }
                let mut bytes = h.captured[usize::from(which) % h.captured.len()].clone();
                if mutate(&mut bytes, 0, &mutations) {
                    h.receive(Side::B, a, &mut bytes);
                }
            }
            Op::Replay {
                which,
                from_elsewhere,
            } => {
                if h.captured.is_empty() {
                    continue;
                }
                let mut bytes = h.captured[usize::from(which) % h.captured.len()].clone();
                let from = if from_elsewhere { elsewhere() } else { a };
                h.receive(Side::B, from, &mut bytes);
            }
            Op::Advance { ms } => h.advance(Duration::from_millis(u64::from(ms))),
        }
    }
    h.check_alive();
});
