//! `vcluster`: the cluster layer. Each subsystem is one module with its own
//! subcommand in the `vcluster` binary; `main.rs` only dispatches.
//!
//! * [`cache`]: the per-site package cache (`vcluster cache`).

pub mod cache;
