//! `vpnd-api`: the contract between `vpnd` and its clients, the control API of
//! `docs/control-api.md`, in the one place the daemon, `vpnd status`, the vcluster host
//! agent and every test stand-in take it from, so none of them can drift from the others.
//!
//! - [`spec`]: what a client asks for: a network, a peer. These request bodies are also
//!   the config file's `[[network]]` tables; unknown fields are refused.
//! - [`status`]: what the daemon answers: its status, a network's counters, a MAC table.
//! - [`server`]: the routes, the parsing of bodies and paths, and the mapping of every
//!   failure to a status code and `{"error": ...}`, over any implementation of
//!   [`Control`] (the daemon's, or an in-memory one in tests).
//! - [`client`]: the client, HTTP/1.1 over the daemon's Unix socket.
//! - `testing` (feature `testing`): an in-memory daemon behind the real routes.
//!
//! Identifiers and keys are `vpn-core`'s types (serialised as text by its `serde`
//! feature): a [`NetworkId`] is a number, a [`PublicKey`] WireGuard-style base64, a
//! [`MacAddr`] `02:00:00:00:00:01`. This crate holds no overlay state, and opens no socket
//! but the control socket.

pub mod client;
pub mod server;
pub mod spec;
pub mod status;
#[cfg(feature = "testing")]
pub mod testing;

pub use client::{Client, ClientError};
pub use server::{Control, ControlError, router};
pub use spec::{NetworkSpec, PeerSpec, SiteLocalSpec};
pub use status::{Counters, DaemonStatus, MacEntry, MacPort, NetworkStatus, PeerStatus};
pub use vpn_core::{Cipher, MacAddr, NetworkId, PresharedKey, PublicKey};
