//! `vcluster`: the cluster layer. The controller (`vcluster serve`) keeps sites, hosts,
//! clusters, nodes, reservations and tasks in a store and serves the REST API and the
//! reservation portal; the host agent (`vcluster host-agent`) carries out node and overlay
//! operations on each hypervisor host through a VM driver and the local `vpnd`; the CLI
//! talks to the API; the package cache (`vcluster cache`) serves each site's nodes their
//! packages from local disk; the node agent (`vcluster node-agent`) runs in every node
//! and carries out parallel exec (`exec`) and reports the node's status. `model` holds the types the controller, agent and CLI share.
//! Each subsystem is one module; `main.rs` only dispatches.

pub mod agent;
pub mod api_error;
pub mod cache;
pub mod cli;
pub mod controller;
pub mod exec;
pub mod model;
pub mod node;
pub mod nodeset;
pub mod provision;
pub mod secret;
pub mod tls;
