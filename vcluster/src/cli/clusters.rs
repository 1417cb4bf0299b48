//! Clusters: create (placed across sites or inside a reservation), list, show, delete.

use clap::{Args, Subcommand};

use super::tasks::accepted;
use super::{ApiArgs, print};
use crate::model::{
    Accepted, Cluster, CreateCluster, Recovery, SetClusterProfile, SetRecovery, SiteCount, Strategy,
};

#[derive(Debug, Args)]
pub struct ClusterCmd {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(subcommand)]
    pub cmd: ClusterSub,
}

#[derive(Debug, Subcommand)]
pub enum ClusterSub {
    /// Create a cluster of N nodes (anywhere, or pinned with --site NAME=COUNT).
    Create {
        name: String,
        /// Nodes placed by the strategy.
        #[arg(long)]
        nodes: Option<u32>,
        /// NAME=COUNT, repeatable: nodes pinned to a site.
        #[arg(long = "site", value_parser = parse_site_count)]
        sites: Vec<SiteCount>,
        /// spread or pack
        #[arg(long)]
        strategy: Option<String>,
        /// Place the cluster inside this reservation.
        #[arg(long)]
        reservation: Option<i64>,
        /// CPUs per node (default 1).
        #[arg(long)]
        node_cpus: Option<i64>,
        /// Memory per node in MiB (default 512).
        #[arg(long)]
        node_memory_mib: Option<i64>,
        /// The firmware of its nodes' VMs: bios (default) or uefi.
        #[arg(long)]
        firmware: Option<String>,
        /// The nodes' IPv4 subnet (default: a free one from the controller's pool).
        #[arg(long)]
        subnet: Option<String>,
        /// What to do with nodes that go down: off, restart (default),
        /// restart-then-reinstall.
        #[arg(long)]
        recovery: Option<String>,
        /// The install profile of its nodes (`vcluster profile list`); every node's
        /// profile is rendered first, and a template error creates nothing.
        #[arg(long)]
        profile: Option<String>,
        /// The site whose host runs the cluster's provisioning frontend (DHCP, PXE);
        /// default: the host of its first node.
        #[arg(long, requires = "profile")]
        frontend_site: Option<String>,
        /// Wait for the task to finish (with --profile: until every node is installed and
        /// booted from its disk, with each node's progress).
        #[arg(long)]
        wait: bool,
    },
    /// Set (or, with --none, clear) the install profile of the cluster's nodes.
    Profile {
        cluster: String,
        #[arg(required_unless_present = "none")]
        profile: Option<String>,
        #[arg(long, conflicts_with = "profile")]
        none: bool,
    },
    /// Set what the controller does with the cluster's nodes that go down: off, restart,
    /// restart-then-reinstall.
    Recovery { cluster: String, policy: String },
    /// Your clusters (admins: all).
    List,
    /// A cluster and its nodes.
    Show { cluster: String },
    /// Delete the cluster and everything it made.
    Delete {
        cluster: String,
        #[arg(long)]
        wait: bool,
    },
}

fn parse_site_count(s: &str) -> Result<SiteCount, String> {
    let (site, n) = s.split_once('=').ok_or("expected SITE=COUNT")?;
    Ok(SiteCount {
        site: site.to_string(),
        nodes: n.parse().map_err(|_| format!("bad count in {s:?}"))?,
    })
}

fn parse_strategy(s: Option<&str>) -> anyhow::Result<Option<Strategy>> {
    match s {
        None => Ok(None),
        Some("spread") => Ok(Some(Strategy::Spread)),
        Some("pack") => Ok(Some(Strategy::Pack)),
        Some(o) => anyhow::bail!("unknown strategy {o:?}: spread or pack"),
    }
}

pub(super) fn print_cluster(c: &Cluster) {
    println!(
        "cluster {} (id {}, owner {}): {:?}, overlay {:?}, network {}, subnet {}, recovery {}",
        c.name,
        c.id,
        c.owner,
        c.state,
        c.overlay,
        c.network_id,
        c.subnet,
        c.recovery.as_str()
    );
    if let Some(r) = &c.reason {
        println!("  reason: {r}");
    }
    if let Some(r) = c.reservation {
        println!("  reservation: {r}");
    }
    if let Some(p) = &c.profile {
        println!("  profile: {p}");
    }
    if let Some(h) = &c.frontend_host {
        println!("  frontend: {h}");
    }
    println!(
        "  {:<24} {:<12} {:<10} {:<18} {:<18} {:<12} {:<6} {:<14} {:<17} STATE",
        "NODE", "HOST", "SITE", "MAC", "ADDRESS", "HEALTH", "LOAD", "MEMORY", "INSTALL"
    );
    for n in &c.nodes {
        let h = n.health.as_ref();
        // A VM's accelerator after its health: `unknown/tcg`.
        let health = match h {
            Some(h) => match &h.accel {
                Some(a) => format!("{}/{a}", h.health.as_str()),
                None => h.health.as_str().to_string(),
            },
            None => "-".to_string(),
        };
        let load = h
            .and_then(|h| h.load1)
            .map(|l| format!("{l:.2}"))
            .unwrap_or_else(|| "-".into());
        let memory = match h.and_then(|h| h.memory_used_bytes.zip(h.memory_total_bytes)) {
            Some((used, total)) => format!("{}/{} MiB", used >> 20, total >> 20),
            None => "-".into(),
        };
        let install = n
            .install
            .as_ref()
            .map(|i| i.summary())
            .unwrap_or_else(|| "-".into());
        println!(
            "  {:<24} {:<12} {:<10} {:<18} {:<18} {:<12} {:<6} {:<14} {:<17} {:?}{}",
            n.name,
            n.host,
            n.site,
            n.mac,
            n.address,
            health,
            load,
            memory,
            install,
            n.state,
            n.reason
                .as_ref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        );
    }
}

pub async fn cluster(c: ClusterCmd) -> anyhow::Result<()> {
    let client = c.api.client()?;
    let json = c.api.json;
    match c.cmd {
        ClusterSub::Create {
            name,
            nodes,
            sites,
            strategy,
            reservation,
            node_cpus,
            node_memory_mib,
            firmware,
            subnet,
            recovery,
            profile,
            frontend_site,
            wait,
        } => {
            let node_firmware = firmware
                .as_deref()
                .map(str::parse::<crate::model::Firmware>)
                .transpose()
                .map_err(anyhow::Error::msg)?;
            let recovery = recovery
                .as_deref()
                .map(str::parse::<Recovery>)
                .transpose()
                .map_err(anyhow::Error::msg)?;
            let req = CreateCluster {
                name,
                nodes,
                sites,
                strategy: parse_strategy(strategy.as_deref())?,
                reservation,
                node_cpus,
                node_memory_mib,
                subnet,
                recovery,
                profile,
                frontend_site,
                node_firmware,
            };
            let provisioned = req.profile.is_some();
            let cluster = req.name.clone();
            let a: Accepted = client.post("/v1/clusters", &req).await?;
            accepted(&client, json, a, wait).await?;
            if wait && provisioned {
                // With a profile, --wait means installed and booted from disk.
                super::install::wait_installs(
                    &client,
                    &cluster,
                    None,
                    std::time::Duration::from_secs(3600),
                    json,
                )
                .await?;
            }
        }
        ClusterSub::Profile {
            cluster,
            profile,
            none: _,
        } => {
            let c: Cluster = client
                .put(
                    &format!("/v1/clusters/{cluster}/profile"),
                    &SetClusterProfile { profile },
                )
                .await?;
            print(json, &c, |c| match &c.profile {
                Some(p) => println!("cluster {}: profile {p}", c.name),
                None => println!("cluster {}: no profile", c.name),
            });
        }
        ClusterSub::List => {
            let cs: Vec<Cluster> = client.get("/v1/clusters").await?;
            print(json, &cs, |cs| {
                println!(
                    "{:<20} {:<10} {:<9} {:<9} {:>6} {:<18}",
                    "CLUSTER", "OWNER", "STATE", "OVERLAY", "NODES", "SUBNET"
                );
                for c in cs {
                    println!(
                        "{:<20} {:<10} {:<9} {:<9} {:>6} {:<18}",
                        c.name,
                        c.owner,
                        format!("{:?}", c.state).to_lowercase(),
                        format!("{:?}", c.overlay).to_lowercase(),
                        c.nodes.len(),
                        c.subnet
                    );
                }
            });
        }
        ClusterSub::Recovery { cluster, policy } => {
            let policy: Recovery = policy.parse().map_err(anyhow::Error::msg)?;
            let c: Cluster = client
                .put(
                    &format!("/v1/clusters/{cluster}/recovery"),
                    &SetRecovery { policy },
                )
                .await?;
            print(json, &c, |c| {
                println!("cluster {}: recovery {}", c.name, c.recovery.as_str())
            });
        }
        ClusterSub::Show { cluster } => {
            let c: Cluster = client.get(&format!("/v1/clusters/{cluster}")).await?;
            print(json, &c, print_cluster);
        }
        ClusterSub::Delete { cluster, wait } => {
            let a: Accepted = client.delete(&format!("/v1/clusters/{cluster}")).await?;
            accepted(&client, json, a, wait).await?;
        }
    }
    Ok(())
}
