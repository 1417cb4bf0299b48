//! Nodes of a cluster: add, remove, power, console.

use clap::{Args, Subcommand};

use super::ApiArgs;
use super::tasks::accepted;
use crate::model::{Accepted, AddNodes, ConsoleChunk, PowerAction, PowerNodes, PowerOutcome};

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
        /// bios or uefi (default: the cluster's)
        #[arg(long)]
        firmware: Option<String>,
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
    /// Power a node set on, off (it stays off until powered on) or reset it.
    Power {
        /// The nodes: `c1-node-[1-4]`, `@all`, `@site:NAME`, `@GROUP`.
        nodes: String,
        /// on, off or reset
        action: String,
        /// The cluster (default: the one every name of NODES belongs to).
        #[arg(short, long)]
        cluster: Option<String>,
    },
    /// Show a node's serial console (a VM's; a lightweight node's agent log).
    Console {
        node: String,
        /// Keep showing what comes, as `tail -f` does.
        #[arg(short, long)]
        follow: bool,
        /// The cluster (default: the one the node's name says).
        #[arg(short, long)]
        cluster: Option<String>,
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
            firmware,
            wait,
        } => {
            let firmware = firmware
                .as_deref()
                .map(str::parse::<crate::model::Firmware>)
                .transpose()
                .map_err(anyhow::Error::msg)?;
            let a: Accepted = client
                .post(
                    &format!("/v1/clusters/{cluster}/nodes"),
                    &AddNodes {
                        count,
                        site,
                        strategy: None,
                        firmware,
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
        NodeSub::Power {
            nodes,
            action,
            cluster,
        } => {
            let action: PowerAction = action.parse().map_err(anyhow::Error::msg)?;
            let cluster = super::exec::cluster_of(cluster.as_deref(), &nodes)?;
            let out: Vec<PowerOutcome> = client
                .post(
                    &format!("/v1/clusters/{cluster}/power"),
                    &PowerNodes { nodes, action },
                )
                .await?;
            super::print(json, &out, |out| {
                for o in out {
                    match (&o.running, &o.error) {
                        (_, Some(e)) => println!("{:<24} error: {e}", o.node),
                        (Some(true), None) => println!("{:<24} on", o.node),
                        _ => println!("{:<24} off", o.node),
                    }
                }
            });
            if out.iter().any(|o| o.error.is_some()) {
                anyhow::bail!("some nodes could not be powered {action}");
            }
            Ok(())
        }
        NodeSub::Console {
            node,
            follow,
            cluster,
        } => {
            let cluster = super::exec::cluster_of(cluster.as_deref(), &node)?;
            console(&client, &cluster, &node, follow).await
        }
    }
}

/// Prints the node's console log (its last 256 KiB at most), then, with `follow`, what
/// comes after it once a second.
async fn console(
    client: &super::ApiClient,
    cluster: &str,
    node: &str,
    follow: bool,
) -> anyhow::Result<()> {
    use std::io::Write;
    let path = format!("/v1/clusters/{cluster}/nodes/{node}/console");
    let first: ConsoleChunk = client.get(&path).await?;
    let mut offset = first.size.saturating_sub(crate::model::MAX_CONSOLE_CHUNK);
    loop {
        let chunk: ConsoleChunk = client
            .get_query(&path, &[("offset", offset.to_string())])
            .await?;
        if chunk.size < offset {
            // The log started again (a new VM): from its start.
            offset = 0;
            continue;
        }
        print!("{}", chunk.text);
        std::io::stdout().flush()?;
        offset = chunk.offset + chunk.bytes;
        if chunk.bytes > 0 && offset < chunk.size {
            continue;
        }
        if !follow {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}
