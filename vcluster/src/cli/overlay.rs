//! A cluster's overlay network: start and stop.

use clap::{Args, Subcommand};

use super::ApiArgs;
use super::tasks::accepted;
use crate::model::Accepted;

#[derive(Debug, Args)]
pub struct VpnCmd {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(subcommand)]
    pub cmd: VpnSub,
}

#[derive(Debug, Subcommand)]
pub enum VpnSub {
    /// Start the cluster's overlay on every host.
    Start {
        cluster: String,
        #[arg(long)]
        wait: bool,
    },
    /// Stop the cluster's overlay on every host.
    Stop {
        cluster: String,
        #[arg(long)]
        wait: bool,
    },
}

pub async fn vpn(c: VpnCmd) -> anyhow::Result<()> {
    let client = c.api.client()?;
    let json = c.api.json;
    let (cluster, verb, wait) = match c.cmd {
        VpnSub::Start { cluster, wait } => (cluster, "start", wait),
        VpnSub::Stop { cluster, wait } => (cluster, "stop", wait),
    };
    let a: Accepted = client
        .post(&format!("/v1/clusters/{cluster}/overlay/{verb}"), &())
        .await?;
    accepted(&client, json, a, wait).await
}
