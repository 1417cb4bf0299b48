//! `vpnd`: the overlay daemon that runs on every hypervisor host.
//!
//! A thin tokio driver around `vpn-core`: for each configured network a TAP device on the
//! site's bridge and a `vpn_core::Network`, one set of UDP sockets for all networks, a
//! control API on a Unix socket and optional Prometheus metrics. Modules:
//! - [`config`]: the TOML file and the network specs the control API accepts;
//! - [`netdev`]: TAP devices and their MTU, link state and bridge;
//! - [`daemon`]: the networks, sockets and data-path tasks;
//! - [`control`]: the control API server and client;
//! - [`status`]: status snapshots, the `vpnd status` table, the metrics text.

pub mod config;
pub mod control;
pub mod daemon;
pub mod netdev;
pub mod status;
