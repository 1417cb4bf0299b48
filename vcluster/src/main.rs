//! The `vcluster` binary: parses the command line and hands each subcommand to its
//! module in the library. Nothing else lives here.

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "vcluster",
    version,
    about = "One cluster out of VMs at several sites"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The per-site package cache: `vcluster cache serve`, `vcluster cache stats`.
    Cache(vcluster::cache::cli::CacheArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Cache(args) => vcluster::cache::cli::run(args),
    }
}
