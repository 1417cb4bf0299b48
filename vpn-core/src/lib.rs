//! `vpn-core`: the Noise-encrypted Ethernet overlay as a sans-I/O library.
//!
//! One [`Network`] is one overlay network: a virtual cluster's Ethernet segment stretched
//! over a full mesh of sites. It owns its peers, their Noise IKpsk2 sessions, a learning
//! switch with one local port and one port per peer, and fragment reassembly. It performs
//! no I/O: the driver (`vpnd`, a test harness, any program linking this crate) hands it
//! frames from the local port, datagrams from the WAN and the current time, and polls it
//! for datagrams to send, frames to deliver and the next deadline. Every random choice is
//! drawn from a seed, so a whole multi-site overlay can run deterministically in memory
//! (see the `sim` module, behind the `sim` feature).
//!
//! Layers, bottom up:
//! - [`wire`]: the datagram format (`docs/wire-format.md`), parsed without panics;
//! - [`key`], `handshake`, `cookie`, [`session`], `replay`: keys, the Noise handshake,
//!   DoS cookies, in-place AEAD with explicit counters, the anti-replay window;
//! - [`switch`]: MAC learning, split horizon, ARP suppression, site-local addresses;
//! - [`frag`]: fragmentation for paths smaller than a frame, bounded reassembly;
//! - [`network`]: the state machine tying them together, with its timers.
//!
//! With the `serde` feature the value types (network ids, MACs, keys, ciphers) serialise as
//! the text people write, for the crates that carry them in config files and APIs.
//!
//! Beyond the unit, property and simulation tests (`tests/overlay.rs`):
//! - `tests/no_alloc.rs` proves with a counting allocator that the steady-state data path
//!   (frames, fragments, keepalives) allocates nothing;
//! - `cargo bench -p vpn-core --bench datapath` measures encapsulation + decapsulation of
//!   1400-byte frames on one core against ring's raw AEAD, for both ciphers, and the
//!   switch alone per frame;
//! - `fuzz/` holds cargo-fuzz targets for every parser and state-machine input
//!   (`scripts/fuzz-brief` runs each briefly; `cargo +nightly fuzz run <target>` from here
//!   runs one for as long as you like).

mod cookie;
mod handshake;
mod peer;
mod pool;
mod ratelimit;
mod replay;
#[cfg(feature = "serde")]
mod serde_text;

pub mod config;
pub mod frag;
pub mod key;
pub mod network;
pub mod session;
#[cfg(feature = "sim")]
pub mod sim;
pub mod switch;
pub mod types;
pub mod wire;

pub use config::{ConfigError, Limits, NetworkConfig, Timers};
pub use key::{KeyError, PresharedKey, PrivateKey, PublicKey};
pub use network::{DatagramError, Drops, Event, Network, NetworkStats, PeerError, Transmit};
pub use peer::{PeerConfig, PeerInfo, PeerStats};
pub use session::Cipher;
pub use switch::{SiteLocalAddr, SwitchConfig};
pub use types::{MacAddr, NetworkId, ParseMacError, PeerId, Port};
