//! `Network::handle_local_frame` then `poll_transmit`: frames of any bytes and any length
//! (runts, oversize, ARP, broadcast, unicast to learned and unknown hosts) entering
//! either side of a connected pair, on a path MTU from the minimum up. The harness
//! (`src/lib.rs`) checks every datagram against the path MTU, carries it to the other
//! side and checks that what arrives is what was sent.
#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use vpn_core::Cipher;
use vpn_core::config::MIN_PATH_MTU;
use vpn_core::sim::Side;
use vpn_core_fuzz::{Harness, ethernet, mac};

#[derive(Arbitrary, Debug)]
struct Input {
    path_mtu: u16,
    chacha: bool,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// Any bytes, entering `a` (or `b`).
    Raw {
        bytes: Vec<u8>,
        at_b: bool,
    },
    /// An Ethernet frame of `len` bytes between a few addresses, entering `a` (or `b`).
    Ethernet {
        dst: u8,
        src: u8,
        ethertype: u16,
        len: u16,
        fill: u8,
        at_b: bool,
    },
    /// Several frames queue before anything is sent.
    Burst {
        count: u8,
        len: u16,
    },
    Advance {
        ms: u16,
    },
}

fuzz_target!(|input: Input| {
    // Any valid path MTU: the minimum, the usual 1500, jumbo paths.
    let path_mtu = MIN_PATH_MTU + input.path_mtu % 9000;
    let cipher = if input.chacha {
        Cipher::ChaCha20Poly1305
    } else {
        Cipher::Aes256Gcm
    };
    let mut h = Harness::new(path_mtu, cipher);
    let side = |at_b: bool| if at_b { Side::B } else { Side::A };
    for op in input.ops.into_iter().take(64) {
        match op {
            Op::Raw { bytes, at_b } => h.local_frame(side(at_b), &bytes),
            Op::Ethernet {
                dst,
                src,
                ethertype,
                len,
                fill,
                at_b,
            } => {
                let frame = ethernet(mac(dst), mac(src), ethertype, usize::from(len), fill);
                h.local_frame(side(at_b), &frame);
            }
            Op::Burst { count, len } => {
                for i in 0..count % 32 {
                    let frame = ethernet(mac(0), mac(1), 0x0800, usize::from(len) % 1600, i);
                    h.local_frame(Side::A, &frame);
                }
            }
            Op::Advance { ms } => {
                h.advance(Duration::from_millis(u64::from(ms)));
                continue;
            }
        }
        h.pump();
    }
    h.check_alive();
});
