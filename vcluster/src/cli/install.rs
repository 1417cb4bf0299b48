//! `vcluster reinstall NODESET [--wait]`, and waiting for installs with live progress
//! per node: progress bars on a terminal, one plain line per change otherwise.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use clap::Args;

use super::{ApiArgs, ApiClient};
use crate::model::{Cluster, InstallState, ReinstallRequest};

#[derive(Debug, Args)]
pub struct ReinstallArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// The cluster (default: the one every name of NODES belongs to, `<cluster>-node-<i>`).
    #[arg(short, long)]
    pub cluster: Option<String>,
    /// The nodes: `c1-node-[1-4,7]`, `@all`, `@site:NAME`, `@GROUP`.
    pub nodes: String,
    /// Wait until every node is `booted` (or one `failed`), showing each node's progress.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this many seconds.
    #[arg(long, default_value_t = 3600)]
    pub timeout: u64,
}

pub async fn reinstall(a: ReinstallArgs) -> anyhow::Result<()> {
    let cluster = super::exec::cluster_of(a.cluster.as_deref(), &a.nodes)?;
    let client = a.api.client()?;
    let names: Vec<String> = client
        .post(
            &format!("/v1/clusters/{cluster}/reinstall"),
            &ReinstallRequest {
                nodes: a.nodes.clone(),
            },
        )
        .await?;
    if !a.api.json {
        println!("reinstalling {} node(s) of {cluster}", names.len());
    }
    if a.wait {
        wait_installs(
            &client,
            &cluster,
            Some(&names),
            Duration::from_secs(a.timeout),
            a.api.json,
        )
        .await?;
    } else if a.api.json {
        println!("{}", serde_json::to_string_pretty(&names)?);
    }
    Ok(())
}

/// One node's progress as a line: `installing 41/233, 12.3 MB`.
fn progress_text(n: &crate::model::Node) -> String {
    let Some(i) = &n.install else {
        return "no install".to_string();
    };
    let mut text = i.summary();
    if let Some(b) = i.bytes {
        text.push_str(&format!(", {:.1} MB", b as f64 / 1e6));
    }
    if let Some(r) = &i.reason {
        text.push_str(&format!(": {r}"));
    }
    text
}

/// Waits until the installs of `only` (default: every node with one) are `booted`, or
/// fails naming the nodes that `failed`; shows each change as it comes.
pub async fn wait_installs(
    client: &ApiClient,
    cluster: &str,
    only: Option<&[String]>,
    limit: Duration,
    json: bool,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let bars = (!json && std::io::stderr().is_terminal()).then(indicatif::MultiProgress::new);
    let mut shown: BTreeMap<String, (String, Option<indicatif::ProgressBar>)> = BTreeMap::new();
    loop {
        let c: Cluster = client.get(&format!("/v1/clusters/{cluster}")).await?;
        let nodes: Vec<&crate::model::Node> = c
            .nodes
            .iter()
            .filter(|n| only.is_none_or(|o| o.contains(&n.name)) && n.install.is_some())
            .collect();
        if nodes.is_empty() {
            anyhow::bail!("no node of {cluster} has an install to wait for");
        }
        for n in &nodes {
            let text = progress_text(n);
            let entry = shown.entry(n.name.clone()).or_insert_with(|| {
                let bar = bars.as_ref().map(|m| {
                    let b = m.add(indicatif::ProgressBar::new(1));
                    b.set_style(
                        indicatif::ProgressStyle::with_template(
                            "{prefix:24} [{bar:30}] {pos}/{len} {msg}",
                        )
                        .expect("a valid template")
                        .progress_chars("=> "),
                    );
                    b.set_prefix(n.name.clone());
                    b
                });
                (String::new(), bar)
            });
            if entry.0 != text {
                match &entry.1 {
                    Some(bar) => {
                        let i = n.install.as_ref().expect("filtered");
                        bar.set_length(i.packages_total.unwrap_or(1).max(1) as u64);
                        bar.set_position(match i.state {
                            InstallState::Booted | InstallState::Rebooting => {
                                i.packages_total.unwrap_or(1) as u64
                            }
                            _ => i.packages_done.unwrap_or(0) as u64,
                        });
                        bar.set_message(text.clone());
                    }
                    None if !json => println!(
                        "{:>6.0}s {:<24} {text}",
                        started.elapsed().as_secs_f64(),
                        n.name
                    ),
                    None => {}
                }
                entry.0 = text;
            }
        }
        let states: Vec<InstallState> = nodes
            .iter()
            .filter_map(|n| n.install.as_ref().map(|i| i.state))
            .collect();
        if states.iter().all(|s| s.is_final()) {
            for (_, (_, bar)) in shown.iter() {
                if let Some(b) = bar {
                    b.finish();
                }
            }
            let failed: Vec<String> = nodes
                .iter()
                .filter(|n| n.install.as_ref().map(|i| i.state) == Some(InstallState::Failed))
                .map(|n| format!("{}: {}", n.name, progress_text(n)))
                .collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&c)?);
            }
            if failed.is_empty() {
                if !json {
                    println!("{} node(s) of {cluster} booted", nodes.len());
                }
                return Ok(());
            }
            anyhow::bail!("installs failed: {}", failed.join("; "));
        }
        if started.elapsed() > limit {
            anyhow::bail!(
                "installs of {cluster} not finished after {} s",
                limit.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
