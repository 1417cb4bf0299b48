//! The `vcluster` commands for users and admins: sites, hosts, users, reservations,
//! clusters, nodes, the overlay, tasks and events, and the configuration database
//! (profiles, roles, attributes, groups). They talk to the controller's REST API
//! only (a context of the config file, `cli/config.rs`, or `--api`, `--ca` /
//! `--ca-fingerprint`, `--token-file`, or `VCLUSTER_API` / `VCLUSTER_TOKEN`), print tables for people
//! (`--json` for scripts), and on failure print the server's message and exit non-zero.
//! Nothing here touches a store, a host or vpnd.

//! One file per resource, as the API's handlers are (`controller/api/`).

pub mod client;
mod clusters;
pub mod config;
pub mod exec;
mod hosts;
pub mod install;
mod nodes;
mod overlay;
mod profiles;
mod reservations;
mod sites;
mod tasks;
mod users;

use std::path::PathBuf;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Args;
use serde::Serialize;

pub use client::{ApiClient, ClientError, ServerError};

use crate::tls::ServerTrust;
pub use clusters::{ClusterCmd, ClusterSub, cluster};
pub use hosts::{HostsCmd, HostsSub, hosts};
pub use nodes::{NodeCmd, NodeSub, node};
pub use overlay::{VpnCmd, VpnSub, vpn};
pub use profiles::{
    AttrCmd, AttrSub, GroupCmd, GroupSub, ProfileCmd, ProfileSub, RoleCmd, RoleSub, attr, group,
    profile, read_role_file, role,
};
pub use reservations::{ReserveCmd, ReserveSub, reserve};
pub use sites::{SitesCmd, SitesSub, sites};
pub use tasks::{TaskCmd, TaskSub, task};
pub use users::{UsersCmd, UsersSub, users};

/// How a command reaches the controller. Each setting is taken from its flag, else its
/// environment variable, else the context (`--context`, else the file's
/// `current_context`). Secrets never come from the command line.
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// The config file's context to use.
    #[arg(long, env = "VCLUSTER_CONTEXT", global = true)]
    pub context: Option<String>,
    /// The controller's URL (default: the context's, else https://127.0.0.1:7200).
    #[arg(long, env = "VCLUSTER_API", global = true)]
    pub api: Option<String>,
    /// The controller's CA certificate (PEM), to pin it.
    #[arg(
        long,
        env = "VCLUSTER_CA",
        global = true,
        conflicts_with = "ca_fingerprint"
    )]
    pub ca: Option<PathBuf>,
    /// Or the CA's SHA-256 fingerprint, as `vcluster serve` printed it.
    #[arg(long, env = "VCLUSTER_CA_FINGERPRINT", global = true)]
    pub ca_fingerprint: Option<String>,
    /// A file holding the bearer token (mode 0600; else VCLUSTER_TOKEN, else the
    /// context's token_file).
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
    /// Allow plain HTTP to a controller that is not on loopback.
    #[arg(long, global = true)]
    pub insecure: bool,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

/// The default controller URL when neither a flag nor a context names one.
pub const DEFAULT_API: &str = "https://127.0.0.1:7200";

impl ApiArgs {
    fn client(&self) -> anyhow::Result<ApiClient> {
        let (path, required) = config::config_path()?;
        let file = config::CliConfig::load(&path, required)?;
        let context = file.context(&path, self.context.as_deref())?;
        let ctx = context.as_ref().map(|(_, c)| c);
        let api = self
            .api
            .clone()
            .or_else(|| ctx.map(|c| c.api.clone()))
            .unwrap_or_else(|| DEFAULT_API.to_string());
        let trust = if let Some(ca) = &self.ca {
            Some(ServerTrust::ca_file(ca)?)
        } else if let Some(f) = &self.ca_fingerprint {
            Some(ServerTrust::Fingerprint(
                f.parse().context("--ca-fingerprint")?,
            ))
        } else if let Some(c) = ctx {
            match (&c.ca, &c.ca_fingerprint) {
                (Some(ca), _) => Some(ServerTrust::ca_file(ca)?),
                (None, Some(f)) => Some(ServerTrust::Fingerprint(f.parse()?)),
                (None, None) => None,
            }
        } else {
            None
        };
        let token = if let Some(file) = &self.token_file {
            crate::secret::read_token_file(file)?
        } else if let Some(t) = std::env::var("VCLUSTER_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
        {
            t
        } else if let Some(file) = ctx.and_then(|c| c.token_file.as_ref()) {
            crate::secret::read_token_file(file)?
        } else {
            anyhow::bail!(
                "no token: pass --token-file FILE, set VCLUSTER_TOKEN, or give the context a \
                 token_file ({})",
                path.display()
            );
        };
        Ok(ApiClient::connect(
            &api,
            &token,
            trust.as_ref(),
            self.insecure,
        )?)
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
