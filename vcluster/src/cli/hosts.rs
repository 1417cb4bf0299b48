//! Hosts (admin): list, show, enable, disable, delete.

use clap::{Args, Subcommand};

use super::{ApiArgs, print};
use crate::model::{Host, UpdateHost};

#[derive(Debug, Args)]
pub struct HostsCmd {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(subcommand)]
    pub cmd: HostsSub,
}

#[derive(Debug, Subcommand)]
pub enum HostsSub {
    /// Every host (admin).
    List,
    /// One host.
    Show {
        host: String,
    },
    /// Give the host no new nodes (admin).
    Disable {
        host: String,
    },
    Enable {
        host: String,
    },
    /// Forget a host that has no nodes (admin).
    Remove {
        host: String,
    },
}

pub async fn hosts(c: HostsCmd) -> anyhow::Result<()> {
    let client = c.api.client()?;
    let json = c.api.json;
    let enable = |host: String, enabled: bool| {
        let client = client.clone();
        async move {
            let h: Host = client
                .patch(
                    &format!("/v1/hosts/{host}"),
                    &UpdateHost {
                        enabled: Some(enabled),
                    },
                )
                .await?;
            anyhow::Ok(h)
        }
    };
    match c.cmd {
        HostsSub::List => {
            let hosts: Vec<Host> = client.get("/v1/hosts").await?;
            print(json, &hosts, |hosts| {
                println!(
                    "{:<14} {:<10} {:>5} {:>8} {:>6} {:<8} {:<8} {:<22}",
                    "HOST",
                    "SITE",
                    "CPUS",
                    "MEM MiB",
                    "NODES",
                    "ONLINE",
                    "ENABLED",
                    "OVERLAY ENDPOINT"
                );
                for h in hosts {
                    println!(
                        "{:<14} {:<10} {:>5} {:>8} {:>6} {:<8} {:<8} {:<22}",
                        h.name,
                        h.site,
                        h.cpus,
                        h.memory_mib,
                        h.nodes,
                        h.online,
                        h.enabled,
                        h.overlay_endpoint
                    );
                }
            });
        }
        HostsSub::Show { host } => {
            let h: Host = client.get(&format!("/v1/hosts/{host}")).await?;
            print(json, &h, |h| {
                println!("{}", serde_json::to_string_pretty(h).expect("json"))
            });
        }
        HostsSub::Disable { host } => {
            let h = enable(host, false).await?;
            print(json, &h, |h| println!("host {} disabled", h.name));
        }
        HostsSub::Enable { host } => {
            let h = enable(host, true).await?;
            print(json, &h, |h| println!("host {} enabled", h.name));
        }
        HostsSub::Remove { host } => {
            client.delete_empty(&format!("/v1/hosts/{host}")).await?;
            println!("host {host} removed");
        }
    }
    Ok(())
}
