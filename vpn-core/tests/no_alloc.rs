//! The steady-state data path allocates nothing: once a session is up, the MAC tables
//! have learned both hosts and the frame pool, queues and reassembly slots have grown to
//! what the traffic needs, thousands of frames each way (small, 1400-byte, 1518-byte
//! frames that must be fragmented, broadcasts) and the keepalives between them go
//! through without a single heap allocation.
//!
//! This is its own test binary because it installs a counting global allocator. It counts
//! only on the thread that asks, so other tests running in parallel do not disturb it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

use vpn_core::sim::{Pair, Sim, frames};
use vpn_core::wire::MAX_FRAME_LEN;
use vpn_core::{Cipher, MacAddr, Network};

struct CountingAllocator;

thread_local! {
    /// Whether this thread counts, and what it counted: allocations and bytes.
    static COUNTER: Cell<(bool, u64, u64)> = const { Cell::new((false, 0, 0)) };
}

fn record(bytes: usize) {
    // `try_with`: the allocator also runs while a thread's locals are torn down.
    let _ = COUNTER.try_with(|c| {
        let (on, n, total) = c.get();
        if on {
            c.set((on, n + 1, total + bytes as u64));
        }
    });
}

// SAFETY: every call is passed on unchanged to the system allocator; counting touches
// only a const-initialised thread-local `Cell`, which never allocates.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: the caller's contract for `alloc`, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Runs `f`, returning how many allocations this thread made meanwhile, and their bytes.
fn allocations(f: impl FnOnce()) -> (u64, u64) {
    COUNTER.with(|c| c.set((true, 0, 0)));
    f();
    let (_, n, bytes) = COUNTER.with(|c| c.replace((false, 0, 0)));
    (n, bytes)
}

const MAC_A: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 0x0a]);
const MAC_B: MacAddr = MacAddr([0x52, 0x54, 0, 0, 1, 0x0b]);

/// The traffic, built before counting: each host sends small, 1400-byte and 1518-byte
/// (fragmented on a 1500-byte path) unicast frames and a 1518-byte broadcast.
struct Traffic {
    a_to_b: Vec<Vec<u8>>,
    b_to_a: Vec<Vec<u8>>,
    datagram: Vec<u8>,
    frame: Vec<u8>,
}

impl Traffic {
    fn new() -> Traffic {
        let frames = |src: MacAddr, dst: MacAddr| {
            [
                (dst, 60),
                (dst, 1400),
                (dst, MAX_FRAME_LEN - 4),
                (MacAddr::BROADCAST, 1518),
            ]
            .into_iter()
            .map(|(dst, len)| frames::ethernet(dst, src, 0x0800, &vec![0x5a; len - 14]))
            .collect()
        };
        Traffic {
            a_to_b: frames(MAC_A, MAC_B),
            b_to_a: frames(MAC_B, MAC_A),
            datagram: vec![0u8; 1500],
            frame: vec![0u8; MAX_FRAME_LEN],
        }
    }

    /// `rounds` of every frame each way, a millisecond apart; every `keepalive_every`
    /// rounds both sides stay quiet long enough to send keepalives. Returns the frames
    /// delivered, checking each one.
    fn run(&mut self, pair: &mut Pair, rounds: usize, keepalive_every: usize) -> usize {
        let mut delivered = 0;
        for round in 0..rounds {
            pair.now += Duration::from_millis(1);
            if round % keepalive_every == keepalive_every - 1 {
                // Quiet for longer than the persistent keepalive interval (25 s).
                pair.now += Duration::from_secs(26);
            }
            let now = pair.now;
            for net in [&mut pair.a, &mut pair.b] {
                if net.poll_timeout().is_some_and(|t| t <= now) {
                    net.handle_timeout(now);
                }
            }
            // Keepalives first, so that data follows on both sides.
            self.carry(&mut pair.a, &mut pair.b, pair.addr_a, now, None);
            self.carry(&mut pair.b, &mut pair.a, pair.addr_b, now, None);
            for i in 0..self.a_to_b.len() {
                pair.a.handle_local_frame(now, &self.a_to_b[i]);
                delivered += self.carry(&mut pair.a, &mut pair.b, pair.addr_a, now, Some(i));
                pair.b.handle_local_frame(now, &self.b_to_a[i]);
                delivered += self.carry(&mut pair.b, &mut pair.a, pair.addr_b, now, Some(i));
            }
            while pair.a.poll_event().is_some() || pair.b.poll_event().is_some() {}
        }
        delivered
    }

    /// Carries everything `from` sends to `to`; checks that frame `sent` (if any) of the
    /// sender arrives whole, once.
    fn carry(
        &mut self,
        from: &mut Network,
        to: &mut Network,
        source: std::net::SocketAddr,
        now: std::time::Instant,
        sent: Option<usize>,
    ) -> usize {
        let a_sends = source == Sim::default_addr(0);
        let expected = sent.map(|i| {
            if a_sends {
                &self.a_to_b[i][..]
            } else {
                &self.b_to_a[i][..]
            }
        });
        let mut delivered = 0;
        while let Some(t) = from.poll_transmit(now, &mut self.datagram) {
            match to.handle_datagram(now, source, &mut self.datagram[..t.len]) {
                Ok(Some(frame)) => {
                    assert_eq!(Some(frame), expected);
                    delivered += 1;
                }
                Ok(None) => {}
                Err(e) => panic!("genuine datagram refused: {e}"),
            }
            while let Some(n) = to.poll_deliver(&mut self.frame) {
                assert_eq!(Some(&self.frame[..n]), expected);
                delivered += 1;
            }
        }
        delivered
    }
}

fn steady_state_allocations(cipher: Cipher) {
    let mut pair = Pair::new(|_, config| {
        config.cipher = cipher;
        // No rekey during the test: a handshake is not the data path (and allocates).
        config.timers.rekey_after_time = Duration::from_secs(30 * 86_400);
        config.timers.reject_after_time = Duration::from_secs(60 * 86_400);
    });
    pair.learn_macs(MAC_A, MAC_B);
    let mut traffic = Traffic::new();
    let frames_per_round = traffic.a_to_b.len() * 2;

    // Warm-up: the pool, the queues and the reassembly slots grow to what this needs.
    assert_eq!(traffic.run(&mut pair, 200, 50), 200 * frames_per_round);
    let keepalives = pair.a.stats().keepalives_sent + pair.b.stats().keepalives_sent;
    let handshakes = pair.a.stats().handshakes_initiated + pair.b.stats().handshakes_initiated;
    let fragments = pair.a.stats().fragments_sent;

    let rounds = 2_500;
    let mut delivered = 0;
    let counted = allocations(|| delivered = traffic.run(&mut pair, rounds, 100));

    assert_eq!(
        delivered,
        rounds * frames_per_round,
        "{cipher}: frames lost"
    );
    let stats = (pair.a.stats(), pair.b.stats());
    assert!(
        stats.0.keepalives_sent + stats.1.keepalives_sent >= keepalives + 2 * 20,
        "{cipher}: the measured traffic must include keepalives"
    );
    assert!(stats.0.fragments_sent >= fragments + 2 * rounds as u64);
    assert_eq!(
        stats.0.handshakes_initiated + stats.1.handshakes_initiated,
        handshakes,
        "{cipher}: a handshake is not the steady state"
    );
    assert_eq!(
        counted,
        (0, 0),
        "{cipher}: {} frames each way allocated (allocations, bytes)",
        rounds * frames_per_round / 2
    );
}

#[test]
fn the_steady_state_data_path_allocates_nothing_with_aes_gcm() {
    steady_state_allocations(Cipher::Aes256Gcm);
}

#[test]
fn the_steady_state_data_path_allocates_nothing_with_chacha_poly() {
    steady_state_allocations(Cipher::ChaCha20Poly1305);
}

#[test]
fn the_counter_sees_allocations() {
    let (n, bytes) = allocations(|| drop(std::hint::black_box(vec![0u8; 100])));
    assert_eq!((n, bytes), (1, 100));
}
