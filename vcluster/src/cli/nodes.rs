//! Nodes of a cluster: add and remove.

use clap::{Args, Subcommand};

use super::ApiArgs;
use super::tasks::accepted;
use crate::model::{Accepted, AddNodes};

#[derive(Debug, Args)]
pub struct NodeCmd {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(subcommand)]
    pub cmd: NodeSub,
}

#[derive(Debug, Subcommand)]
pub enum NodeSub {
    /// Add nodes to a cluster.
    Add {
        cluster: String,
        #[arg(long, default_value_t = 1)]
        count: u32,
        #[arg(long)]
        site: Option<String>,
        #[arg(long)]
        wait: bool,
    },
    /// Remove one node (name or index).
    Remove {
        cluster: String,
        node: String,
        #[arg(long)]
        wait: bool,
    },
}

pub async fn node(c: NodeCmd) -> anyhow::Result<()> {
    let client = c.api.client()?;
    let json = c.api.json;
    match c.cmd {
        NodeSub::Add {
            cluster,
            count,
            site,
            wait,
        } => {
            let a: Accepted = client
                .post(
                    &format!("/v1/clusters/{cluster}/nodes"),
                    &AddNodes {
                        count,
                        site,
                        strategy: None,
                    },
                )
                .await?;
            accepted(&client, json, a, wait).await
        }
        NodeSub::Remove {
            cluster,
            node,
            wait,
        } => {
            let a: Accepted = client
                .delete(&format!("/v1/clusters/{cluster}/nodes/{node}"))
                .await?;
            accepted(&client, json, a, wait).await
        }
    }
}
