//! Support code for the cross-crate integration tests: sites as network namespaces,
//! joined through a userspace WAN emulator.
//!
//! - [`require_root`], [`require_command`]: skip loudly when the machine cannot run a test.
//! - [`NetNs`]: a namespace guard: run commands, spawn [`Process`]es, configure links;
//!   on drop it kills what runs inside and deletes itself.
//! - [`Process`]: a long-running program with its log, stopped on drop, its log tail
//!   printed when the test fails.
//! - [`Topology`]: N sites (host namespace with `br0` and `wan0`, M VM namespaces on the
//!   bridge) joined through one emulated access link per site ([`WanLink`]).
//! - [`WanPair`]: two endpoints through one emulator, for tests of the link itself.
//! - [`bin_path`]: the workspace's binaries (`vpnd`, `wanem`, ...) next to the test.
//! - [`ping`](NetNs::ping), [`wait_until`]: reachability and eventual conditions.
//! - [`Overlay`]: `vpnd` at every site of a topology, with keys, configs and status.
//! - [`ControlPlane`]: the cluster layer on top: the controller on the WAN and a host
//!   agent next to every site's `vpnd`, driven through the REST API.
//! - [`Capture`]: `tcpdump` on a link, to assert what an observer of it would see.
//! - [`handshake`]: hand-made handshake traffic against a real `vpnd`: a flooder
//!   replaying one initiation, an initiator counting its answers.
//! - [`udp_flow`]: a numbered UDP stream between namespaces, timed by one clock: loss,
//!   duplicates, reordering, one-way latency, rate.
//!
//! The emulator itself (`wanem`) is documented in `docs/wanem.md`; its engine and
//! control protocol are in [`wanem`].
//!
//! Everything here needs root except the pure parts ([`wanem::pipeline`],
//! [`wanem::proto`], [`PingStats::parse`]).

pub mod capture;
pub mod cluster;
pub mod emulator;
pub mod env;
pub mod flow;
pub mod handshake;
pub mod netns;
pub mod ping;
pub mod process;
pub mod provision;
pub mod topology;
pub mod vpnd;
pub mod wanem;

pub use capture::Capture;
pub use cluster::{
    ControlPlane, ControlPlaneOpts, node_ip, node_reaches, unreachable_pairs, wait_all_pairs_reach,
};
pub use emulator::{Emulator, PAIR_LEFT_ADDR, PAIR_RIGHT_ADDR, WanPair};
pub use env::{TempDir, bin_path, find_command, require_command, require_root, skip, unique_name};
pub use flow::{FlowOpts, FlowReport, UDP_FRAME_OVERHEAD, udp_flow};
pub use netns::{CmdOutput, NetNs, in_netns, list_namespaces, netns_exec, veth};
pub use ping::{PingOpts, PingStats, ping_in, try_wait_until, wait_until};
pub use process::{Process, command};
pub use topology::{Topology, TopologyBuilder};
pub use vpnd::{NetworkOpts, Overlay};
pub use wanem::{DirStats, Direction, Dirs, LinkConfig, LinkParams, LinkStats, WanLink};

/// Set by a harness's SIGINT/SIGTERM handler ([`stop_on_signals`]): the waits of this
/// library then panic, so that the caller unwinds and its guards remove the namespaces,
/// links and daemons it made. Tests never set it.
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// For benchmark harnesses: SIGINT and SIGTERM make the next wait unwind (see
/// [`check_interrupted`]) instead of killing the process before its guards ran.
pub fn stop_on_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(sig, on_stop_signal as *const () as libc::sighandler_t);
        }
    }
}

/// Panics (so that guards clean up) when a signal asked to stop.
pub fn check_interrupted() {
    if INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
        panic!("interrupted by a signal; removing what this run made");
    }
}
