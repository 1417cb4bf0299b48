//! `vpnd`: the overlay daemon that runs on every hypervisor host.
//!
//! A thin tokio driver around `vpn-core`: for each configured network a TAP device on the
//! site's bridge and a `vpn_core::Network`, one set of UDP sockets for all networks, a
//! control API on a Unix socket and optional Prometheus metrics. Modules:
//! - [`config`]: the TOML file, whose `[[network]]` tables are the control API's network
//!   specs (the API's types, routes and client are the `vpnd-api` crate's);
//! - [`tap`]: multi-queue TAP devices with virtio headers, their MTU, link and bridge;
//! - [`offload`]: TSO segmentation and TCP coalescing for the TAP (pure functions);
//! - [`udp`]: batched UDP (recvmmsg, sendmmsg, GSO, GRO);
//! - [`datapath`]: the threads that move frames between TAPs and sockets;
//! - [`daemon`]: the networks, their timer tasks and the control-plane operations;
//! - [`control`]: the control socket, and the daemon behind `vpnd-api`'s routes;
//! - [`status`]: the `vpnd status` table of a status snapshot;
//! - [`metrics`]: the Prometheus endpoint.
//!
//! `cargo bench -p vpn-daemon --bench offload` times the offloads per segment on one core.

pub mod config;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod metrics;
pub mod offload;
pub mod status;
pub mod tap;
pub mod udp;
