//! Reservations: ask for a lease, list, show, cancel, and the earliest slot.

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};

use super::{ApiArgs, print, when};
use crate::model::{CreateReservation, EarliestSlot, Reservation};

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

fn parse_time(s: &str) -> anyhow::Result<DateTime<Utc>> {
    if s == "now" {
        return Ok(Utc::now());
    }
    Ok(DateTime::parse_from_rfc3339(s)
        .with_context(|| format!("{s:?} is not an RFC 3339 time like 2030-01-02T15:04:05Z"))?
        .with_timezone(&Utc))
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
