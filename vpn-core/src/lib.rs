//! `vpn-core`: the Noise-encrypted Ethernet overlay as a sans-I/O library.
//!
//! (Top-level documentation is being written.)

pub mod switch;
pub mod types;

pub use types::{MacAddr, NetworkId, ParseMacError, PeerId, Port};
