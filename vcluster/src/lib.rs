//! `vcluster`: the cluster layer. The controller (`vcluster serve`) keeps sites, hosts,
//! clusters, nodes, reservations and tasks in a store and serves the REST API and the
//! reservation portal; the host agent (`vcluster host-agent`) carries out node and overlay
//! operations on each hypervisor host through a VM driver and the local `vpnd`; the CLI
//! talks to the API. `model` holds the types all three share.

pub mod agent;
pub mod cli;
pub mod controller;
pub mod model;
