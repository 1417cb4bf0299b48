//! The `vcluster cache` command: `serve` runs the cache, `stats` prints a running
//! cache's counters, `warm` fills one with a package list's closure. Flags override the TOML file, which overrides the defaults.
//!
//! This is the only part of the cache that reads the process environment (arguments,
//! signals, stdout); everything it runs is in the library.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::config::{ByteSize, CacheConfig, ConnectPolicy, parse_mirror_flag};
use super::server::CacheServer;
use super::stats::StatsSnapshot;
use super::warm::{self, WarmPlan};

/// `vcluster cache ...`
#[derive(Debug, Args)]
pub struct CacheArgs {
    #[command(subcommand)]
    pub command: CacheCommand,
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Run the package cache (until SIGINT or SIGTERM).
    Serve(ServeArgs),
    /// Print the counters of a running cache.
    Stats(StatsArgs),
    /// Validate a configuration file and print the effective settings.
    Check(ServeArgs),
    /// Fill a running cache with the closure of a package list (resolved by apt).
    Warm(WarmArgs),
}

#[derive(Debug, Args)]
pub struct WarmArgs {
    /// The cache, host:port (it is apt's HTTP proxy for the resolution).
    #[arg(long)]
    pub cache: String,
    /// A sources.list line (e.g. "deb http://deb.debian.org/debian bookworm main") or a
    /// file of them.
    #[arg(long)]
    pub sources: String,
    /// Package names: a comma- or space-separated list, or a file of them.
    #[arg(long)]
    pub packages: String,
    /// Packages fetched through the cache at a time.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Leave out Recommends (apt's --no-install-recommends).
    #[arg(long)]
    pub no_recommends: bool,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML configuration file (see docs/cache.md).
    #[arg(short = 'c', long = "config")]
    pub config: Option<PathBuf>,
    /// Listen address, e.g. 0.0.0.0:3142 (port 0: any free port, printed at start).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Store directory.
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// Size limit of the store, e.g. 20GiB.
    #[arg(long)]
    pub max_size: Option<ByteSize>,
    /// Seconds an index is served before it is revalidated.
    #[arg(long)]
    pub fresh_secs: Option<u64>,
    /// Mirror mapping PREFIX=URL (repeatable), e.g. debian=http://deb.debian.org/debian
    #[arg(long = "mirror", value_parser = parse_mirror_flag)]
    pub mirrors: Vec<(String, String)>,
    /// What to do with CONNECT requests.
    #[arg(long, value_enum)]
    pub connect: Option<ConnectPolicy>,
    /// Append the access log to this file.
    #[arg(long)]
    pub access_log: Option<PathBuf>,
    /// Refuse absolute-form (forward proxy) requests; serve mirror prefixes only.
    #[arg(long)]
    pub no_forward_proxy: bool,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Address of the running cache (default: the config's listen address, or 127.0.0.1:3142).
    #[arg(long)]
    pub addr: Option<SocketAddr>,
    /// Read the address from this configuration file.
    #[arg(short = 'c', long = "config")]
    pub config: Option<PathBuf>,
    /// Print the JSON document instead of a table.
    #[arg(long, conflicts_with = "prometheus")]
    pub json: bool,
    /// Print the Prometheus exposition instead of a table.
    #[arg(long)]
    pub prometheus: bool,
}

impl ServeArgs {
    /// The configuration: file (if any), then flags on top, validated.
    pub fn resolve(&self) -> anyhow::Result<CacheConfig> {
        let mut cfg = match &self.config {
            Some(p) => CacheConfig::from_file(p)?,
            None => CacheConfig::default(),
        };
        if let Some(v) = self.listen {
            cfg.listen = v;
        }
        if let Some(v) = &self.store {
            cfg.store = v.clone();
        }
        if let Some(v) = self.max_size {
            cfg.max_size = v;
        }
        if let Some(v) = self.fresh_secs {
            cfg.fresh_secs = v;
        }
        for (p, u) in &self.mirrors {
            cfg.mirrors.insert(p.clone(), u.clone());
        }
        if let Some(v) = self.connect {
            cfg.connect = v;
        }
        if let Some(v) = &self.access_log {
            cfg.access_log = Some(v.clone());
        }
        if self.no_forward_proxy {
            cfg.forward_proxy = false;
        }
        cfg.validate("command line")?;
        Ok(cfg)
    }
}

pub fn run(args: CacheArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    match args.command {
        CacheCommand::Serve(a) => rt.block_on(serve(a.resolve()?)),
        CacheCommand::Stats(a) => rt.block_on(stats(a)),
        CacheCommand::Warm(a) => rt.block_on(warm(a)),
        CacheCommand::Check(a) => {
            let cfg = a.resolve()?;
            println!("{cfg:#?}");
            Ok(())
        }
    }
}

async fn serve(cfg: CacheConfig) -> anyhow::Result<()> {
    let store = cfg.store.clone();
    let server = CacheServer::bind(cfg).await?;
    // Tests and scripts read this line to learn the port when listening on port 0.
    println!("vcluster cache listening on {}", server.local_addr());
    tracing::info!(addr = %server.local_addr(), store = %store.display(), "cache serving");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    server
        .run(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        })
        .await;
    Ok(())
}

async fn warm(a: WarmArgs) -> anyhow::Result<()> {
    let plan = WarmPlan {
        sources: warm::read_sources(&a.sources)?,
        packages: warm::read_packages(&a.packages)?,
        cache: a.cache,
        concurrency: a.concurrency,
        no_recommends: a.no_recommends,
    };
    let started = std::time::Instant::now();
    let r = warm::warm(plan.clone())
        .await
        .with_context(|| format!("warming the cache at {}", plan.cache))?;
    println!(
        "warmed {} objects ({:.1} MB): {} fetched now ({:.1} MB), {} already cached, in {:.1} s",
        r.objects,
        r.bytes as f64 / 1e6,
        r.fetched,
        r.fetched_bytes as f64 / 1e6,
        r.already_cached,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn stats(a: StatsArgs) -> anyhow::Result<()> {
    let addr = match (a.addr, &a.config) {
        (Some(addr), _) => addr,
        (None, Some(p)) => {
            let mut l = CacheConfig::from_file(p)?.listen;
            if l.ip().is_unspecified() {
                l.set_ip([127, 0, 0, 1].into());
            }
            l
        }
        (None, None) => "127.0.0.1:3142".parse().expect("literal"),
    };
    let path = if a.prometheus { "metrics" } else { "stats" };
    let url: http::Uri = format!("http://{addr}/_cache/{path}").parse()?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let resp = client
        .get(url.clone())
        .await
        .with_context(|| format!("cannot reach the cache at {addr} (is it running?)"))?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!("{url}: {status}: {}", String::from_utf8_lossy(&body));
    }
    if a.json || a.prometheus {
        print!("{}", String::from_utf8_lossy(&body));
        if a.json {
            println!();
        }
        return Ok(());
    }
    let snap: StatsSnapshot =
        serde_json::from_slice(&body).with_context(|| format!("{url}: not a stats document"))?;
    print!("{}", snap.to_table());
    Ok(())
}
