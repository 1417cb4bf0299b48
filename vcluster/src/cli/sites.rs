//! Sites: list, show, create, delete (admins create and delete).

use clap::{Args, Subcommand};

use super::{ApiArgs, print};
use crate::model::{CreateSite, Site};

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
