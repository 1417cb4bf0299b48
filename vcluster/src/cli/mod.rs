//! The `vcluster` commands for users and admins: sites, hosts, users, reservations,
//! clusters, nodes, the overlay, tasks and events. They talk to the controller's REST API
//! only (`--api`, `--token`, or `VCLUSTER_API` / `VCLUSTER_TOKEN`), print tables for people
//! (`--json` for scripts), and on failure print the server's message and exit non-zero.
//! Nothing here touches a store, a host or vpnd.

//! One file per resource, as the API's handlers are (`controller/api/`).

pub mod client;
mod clusters;
mod hosts;
mod nodes;
mod overlay;
mod reservations;
mod sites;
mod tasks;
mod users;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Args;
use serde::Serialize;

pub use client::{ApiClient, ClientError, ServerError};
pub use clusters::{ClusterCmd, ClusterSub, cluster};
pub use hosts::{HostsCmd, HostsSub, hosts};
pub use nodes::{NodeCmd, NodeSub, node};
pub use overlay::{VpnCmd, VpnSub, vpn};
pub use reservations::{ReserveCmd, ReserveSub, reserve};
pub use sites::{SitesCmd, SitesSub, sites};
pub use tasks::{TaskCmd, TaskSub, task};
pub use users::{UsersCmd, UsersSub, users};

#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// The controller's URL.
    #[arg(
        long,
        env = "VCLUSTER_API",
        default_value = "http://127.0.0.1:7200",
        global = true
    )]
    pub api: String,
    /// Bearer token.
    #[arg(long, env = "VCLUSTER_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

impl ApiArgs {
    fn client(&self) -> anyhow::Result<ApiClient> {
        let token = self
            .token
            .clone()
            .context("no token: pass --token or set VCLUSTER_TOKEN")?;
        Ok(ApiClient::new(&self.api, &token))
    }
}

fn print<T: Serialize>(json: bool, value: &T, human: impl FnOnce(&T)) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).expect("serialisable")
        );
    } else {
        human(value);
    }
}

fn when(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%SZ").to_string()
}
