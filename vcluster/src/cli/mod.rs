//! The `vcluster` commands for users and admins: sites, hosts, users, reservations,
//! clusters, nodes, the overlay, tasks and events. They talk to the controller's REST API
//! only (`--api`, `--token`, or `VCLUSTER_API` / `VCLUSTER_TOKEN`), print tables for people
//! (`--json` for scripts), and on failure print the server's message and exit non-zero.
//! Nothing here touches a store, a host or vpnd.

pub mod client;

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::model::{
    Accepted, AddNodes, Cluster, CreateCluster, CreateReservation, CreateSite, CreateUser,
    EarliestSlot, Event, Host, IssuedToken, Reservation, Role, Site, SiteCount, Strategy, Task,
    UpdateHost, User,
};
pub use client::ApiClient;

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

#[derive(Debug, Args)]
pub struct SitesCmd {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(subcommand)]
    pub cmd: SitesSub,
}

#[derive(Debug, Subcommand)]
pub enum SitesSub {
    /// Every site with capacity, in use and reserved.
    List,
    /// One site.
    Show { site: String },
    /// Create a site (admin).
    Create {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Delete a site without hosts (admin).
    Delete { site: String },
}

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

#[derive(Debug, Args)]
pub struct UsersCmd {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(subcommand)]
    pub cmd: UsersSub,
}

#[derive(Debug, Subcommand)]
pub enum UsersSub {
    /// Who the token belongs to.
    Whoami,
    /// Every user (admin).
    List,
    /// Create a user and print their token (admin).
    Create {
        name: String,
        /// admin, user or agent
        #[arg(long, default_value = "user")]
        role: String,
    },
    /// Issue another token for a user (admin).
    Token { name: String },
}

#[derive(Debug, Args)]
pub struct ReserveCmd {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(subcommand)]
    pub cmd: ReserveSub,
}

#[derive(Debug, Subcommand)]
pub enum ReserveSub {
    /// Ask for N nodes at a site (or anywhere) for [start, end).
    Create {
        #[arg(long)]
        nodes: i64,
        #[arg(long)]
        site: Option<String>,
        /// RFC 3339, or "now" (default).
        #[arg(long, default_value = "now")]
        start: String,
        /// RFC 3339; or give --hours.
        #[arg(long)]
        end: Option<String>,
        #[arg(long)]
        hours: Option<f64>,
        #[arg(long)]
        node_cpus: Option<i64>,
        #[arg(long)]
        node_memory_mib: Option<i64>,
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Your reservations (admins: all).
    List,
    /// One reservation.
    Show { id: i64 },
    /// Cancel a reservation no live cluster uses.
    Cancel { id: i64 },
    /// When can I get N nodes for D hours?
    When {
        #[arg(long)]
        nodes: i64,
        #[arg(long)]
        hours: f64,
        #[arg(long)]
        site: Option<String>,
    },
}

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
        /// The nodes' IPv4 subnet (default: a free one from the controller's pool).
        #[arg(long)]
        subnet: Option<String>,
        /// Wait for the task to finish.
        #[arg(long)]
        wait: bool,
    },
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

#[derive(Debug, Args)]
pub struct TaskCmd {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(subcommand)]
    pub cmd: TaskSub,
}

#[derive(Debug, Subcommand)]
pub enum TaskSub {
    /// Recent tasks, newest first.
    List {
        #[arg(long)]
        cluster: Option<String>,
    },
    /// One task.
    Show { id: i64 },
    /// Wait until the task ends; exits non-zero if it failed.
    Wait {
        id: i64,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// The event log.
    Events {
        #[arg(long)]
        cluster: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
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

fn parse_time(s: &str) -> anyhow::Result<DateTime<Utc>> {
    if s == "now" {
        return Ok(Utc::now());
    }
    Ok(DateTime::parse_from_rfc3339(s)
        .with_context(|| format!("{s:?} is not an RFC 3339 time like 2030-01-02T15:04:05Z"))?
        .with_timezone(&Utc))
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

fn print_cluster(c: &Cluster) {
    println!(
        "cluster {} (id {}, owner {}): {:?}, overlay {:?}, network {}, subnet {}",
        c.name, c.id, c.owner, c.state, c.overlay, c.network_id, c.subnet
    );
    if let Some(r) = &c.reason {
        println!("  reason: {r}");
    }
    if let Some(r) = c.reservation {
        println!("  reservation: {r}");
    }
    println!(
        "  {:<24} {:<12} {:<10} {:<18} {:<18} STATE",
        "NODE", "HOST", "SITE", "MAC", "ADDRESS"
    );
    for n in &c.nodes {
        println!(
            "  {:<24} {:<12} {:<10} {:<18} {:<18} {:?}{}",
            n.name,
            n.host,
            n.site,
            n.mac,
            n.address,
            n.state,
            n.reason
                .as_ref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        );
    }
}

fn print_task(t: &Task) {
    println!(
        "task {} {} {:?}{}{}",
        t.id,
        t.kind,
        t.state,
        t.cluster
            .as_ref()
            .map(|c| format!(" cluster {c}"))
            .unwrap_or_default(),
        if t.message.is_empty() {
            String::new()
        } else {
            format!(": {}", t.message)
        }
    );
}

async fn accepted(client: &ApiClient, json: bool, a: Accepted, wait: bool) -> anyhow::Result<()> {
    if !wait {
        print(json, &a, |a| {
            print_task(&a.task);
            if let Some(c) = &a.cluster {
                print_cluster(c);
            }
        });
        return Ok(());
    }
    if !json {
        println!("task {} {} started; waiting", a.task.id, a.task.kind);
    }
    let task = client
        .wait_task(a.task.id, Duration::from_secs(900))
        .await?;
    print(json, &task, print_task);
    if task.state != crate::model::TaskState::Succeeded {
        anyhow::bail!("task {} failed: {}", task.id, task.message);
    }
    Ok(())
}

pub async fn sites(c: SitesCmd) -> anyhow::Result<()> {
    let client = c.api.client()?;
    let json = c.api.json;
    match c.cmd {
        SitesSub::List => {
            let sites: Vec<Site> = client.get("/v1/sites").await?;
            print(json, &sites, |sites| {
                println!(
                    "{:<14} {:>6} {:>14} {:>14} {:>14}",
                    "SITE", "HOSTS", "CAPACITY CPU", "IN USE CPU", "RESERVED CPU"
                );
                for s in sites {
                    println!(
                        "{:<14} {:>3}/{:<2} {:>14} {:>14} {:>14}",
                        s.name,
                        s.hosts_online,
                        s.hosts,
                        s.capacity.cpus,
                        s.in_use.cpus,
                        s.reserved.cpus
                    );
                }
            });
        }
        SitesSub::Show { site } => {
            let s: Site = client.get(&format!("/v1/sites/{site}")).await?;
            print(json, &s, |s| {
                println!("{}", serde_json::to_string_pretty(s).expect("json"))
            });
        }
        SitesSub::Create { name, description } => {
            let s: Site = client
                .post("/v1/sites", &CreateSite { name, description })
                .await?;
            print(json, &s, |s| {
                println!("site {} created (id {})", s.name, s.id)
            });
        }
        SitesSub::Delete { site } => {
            client.delete_empty(&format!("/v1/sites/{site}")).await?;
            println!("site {site} deleted");
        }
    }
    Ok(())
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

pub async fn users(c: UsersCmd) -> anyhow::Result<()> {
    let client = c.api.client()?;
    let json = c.api.json;
    match c.cmd {
        UsersSub::Whoami => {
            let u: User = client.get("/v1/whoami").await?;
            print(json, &u, |u| println!("{} ({})", u.name, u.role.as_str()));
        }
        UsersSub::List => {
            let users: Vec<User> = client.get("/v1/users").await?;
            print(json, &users, |users| {
                for u in users {
                    println!("{:<20} {}", u.name, u.role.as_str());
                }
            });
        }
        UsersSub::Create { name, role } => {
            let role: Role = role.parse()?;
            let t: IssuedToken = client.post("/v1/users", &CreateUser { name, role }).await?;
            print(json, &t, |t| {
                println!(
                    "user {} ({}) created; token (shown once):",
                    t.user.name,
                    t.user.role.as_str()
                );
                println!("{}", t.token);
            });
        }
        UsersSub::Token { name } => {
            let t: IssuedToken = client
                .post(&format!("/v1/users/{name}/tokens"), &())
                .await?;
            print(json, &t, |t| println!("{}", t.token));
        }
    }
    Ok(())
}

pub async fn reserve(c: ReserveCmd) -> anyhow::Result<()> {
    let client = c.api.client()?;
    let json = c.api.json;
    let show = |r: &Reservation| {
        println!(
            "reservation {} {:?}: {} at {} from {} to {} ({} CPUs / {} MiB){}",
            r.id,
            r.state,
            r.nodes
                .map(|n| format!("{n} nodes"))
                .unwrap_or_else(|| "resources".into()),
            r.site,
            when(&r.start),
            when(&r.end),
            r.resources.cpus,
            r.resources.memory_mib,
            if r.clusters.is_empty() {
                String::new()
            } else {
                format!(", clusters: {}", r.clusters.join(", "))
            }
        )
    };
    match c.cmd {
        ReserveSub::Create {
            nodes,
            site,
            start,
            end,
            hours,
            node_cpus,
            node_memory_mib,
            note,
        } => {
            let start = parse_time(&start)?;
            let end = match (end, hours) {
                (Some(e), _) => parse_time(&e)?,
                (None, Some(h)) => start + chrono::Duration::milliseconds((h * 3_600_000.0) as i64),
                (None, None) => anyhow::bail!("give --end or --hours"),
            };
            let req = CreateReservation {
                site,
                nodes: Some(nodes),
                node_cpus,
                node_memory_mib,
                cpus: None,
                memory_mib: None,
                start,
                end,
                note,
            };
            let r: Reservation = client.post("/v1/reservations", &req).await?;
            print(json, &r, |r| show(r));
        }
        ReserveSub::List => {
            let rs: Vec<Reservation> = client.get("/v1/reservations").await?;
            print(json, &rs, |rs| rs.iter().for_each(show));
        }
        ReserveSub::Show { id } => {
            let r: Reservation = client.get(&format!("/v1/reservations/{id}")).await?;
            print(json, &r, |r| show(r));
        }
        ReserveSub::Cancel { id } => {
            client
                .delete_empty(&format!("/v1/reservations/{id}"))
                .await?;
            println!("reservation {id} cancelled");
        }
        ReserveSub::When { nodes, hours, site } => {
            let mut q = vec![("nodes", nodes.to_string()), ("hours", hours.to_string())];
            if let Some(s) = site {
                q.push(("site", s));
            }
            let slot: EarliestSlot = client.get_query("/v1/reservations/earliest", &q).await?;
            print(json, &slot, |s| {
                println!(
                    "{nodes} nodes for {hours} h: at {} from {} to {}",
                    s.site,
                    when(&s.start),
                    when(&s.end)
                )
            });
        }
    }
    Ok(())
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
            subnet,
            wait,
        } => {
            let req = CreateCluster {
                name,
                nodes,
                sites,
                strategy: parse_strategy(strategy.as_deref())?,
                reservation,
                node_cpus,
                node_memory_mib,
                subnet,
            };
            let a: Accepted = client.post("/v1/clusters", &req).await?;
            accepted(&client, json, a, wait).await?;
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

pub async fn task(c: TaskCmd) -> anyhow::Result<()> {
    let client = c.api.client()?;
    let json = c.api.json;
    match c.cmd {
        TaskSub::List { cluster } => {
            let q: Vec<(&str, String)> = cluster.into_iter().map(|c| ("cluster", c)).collect();
            let ts: Vec<Task> = client.get_query("/v1/tasks", &q).await?;
            print(json, &ts, |ts| ts.iter().for_each(print_task));
        }
        TaskSub::Show { id } => {
            let t: Task = client.get(&format!("/v1/tasks/{id}")).await?;
            print(json, &t, print_task);
        }
        TaskSub::Wait { id, timeout } => {
            let t = client.wait_task(id, Duration::from_secs(timeout)).await?;
            print(json, &t, print_task);
            if t.state != crate::model::TaskState::Succeeded {
                anyhow::bail!("task {id} failed: {}", t.message);
            }
        }
        TaskSub::Events { cluster, limit } => {
            let mut q = vec![("limit", limit.to_string())];
            if let Some(c) = cluster {
                q.push(("cluster", c));
            }
            let es: Vec<Event> = client.get_query("/v1/events", &q).await?;
            print(json, &es, |es| {
                for e in es.iter().rev() {
                    println!("{} {:<22} {}", when(&e.at), e.kind, e.message);
                }
            });
        }
    }
    Ok(())
}
