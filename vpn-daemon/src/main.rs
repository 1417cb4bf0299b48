//! `vpnd`: the command line. `keygen` and `pubkey` work like WireGuard's `wg genkey` and
//! `wg pubkey`; `up` runs the daemon in the foreground; `status` and `check` are for
//! operators.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use ring::rand::{SecureRandom, SystemRandom};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info};
use vpn_core::PrivateKey;
use vpn_daemon::config::{DEFAULT_CONTROL_SOCKET, DaemonConfig};
use vpn_daemon::daemon::Daemon;
use vpn_daemon::status::render_table;
use vpn_daemon::{control, metrics};
use vpnd_api::Client;

#[derive(Parser)]
#[command(
    name = "vpnd",
    version,
    about = "Noise-encrypted Ethernet overlay daemon"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a new random private key (base64).
    Keygen,
    /// Read a private key on stdin, print its public key.
    Pubkey,
    /// Run the daemon in the foreground until SIGINT or SIGTERM.
    Up {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Control socket (overrides the config file).
        #[arg(long, value_name = "PATH")]
        control: Option<PathBuf>,
    },
    /// Validate a config file and exit.
    Check {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Show networks and peers of the running daemon.
    Status {
        /// Print the control API's JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[arg(long, value_name = "PATH", default_value = DEFAULT_CONTROL_SOCKET)]
        control: PathBuf,
    },
    /// Write man pages and shell completions into DIR (for packages: scripts/package).
    #[command(hide = true)]
    GenerateAssets { dir: PathBuf },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Keygen => keygen(),
        Command::Pubkey => pubkey(),
        Command::Check { config } => check(&config),
        Command::Up { config, control } => run(config, control),
        Command::Status { json, control } => status(json, control),
        Command::GenerateAssets { dir } => cli_assets::write(Cli::command(), &dir)
            .map(drop)
            .with_context(|| format!("writing man pages and completions to {}", dir.display())),
    };
    if let Err(e) = result {
        eprintln!("vpnd: {e:#}");
        std::process::exit(1);
    }
}

fn keygen() -> Result<()> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("the system random source failed"))?;
    println!("{}", PrivateKey::from_bytes(bytes).to_base64());
    Ok(())
}

fn pubkey() -> Result<()> {
    let mut text = String::new();
    std::io::stdin().read_to_string(&mut text)?;
    let key: PrivateKey = text
        .trim()
        .parse()
        .context("reading a private key from stdin")?;
    println!("{}", key.public_key());
    Ok(())
}

fn check(path: &std::path::Path) -> Result<()> {
    let config = DaemonConfig::load(path)?;
    let peers: usize = config.networks.iter().map(|n| n.peers.len()).sum();
    println!(
        "{}: ok: {} network(s), {} peer(s), public key {}",
        path.display(),
        config.networks.len(),
        peers,
        config.private_key.public_key()
    );
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn run(path: PathBuf, control_override: Option<PathBuf>) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = DaemonConfig::load(&path)?;
    let control_path = control_override.unwrap_or(config.control_socket.clone());
    runtime()?.block_on(async move {
        let daemon = Daemon::bind(config.private_key.clone(), &config.listen, config.data_path)?;
        info!(public_key = %daemon.public_key(), listen = ?daemon.listen_addrs(), "vpnd starting");
        // Everything that can fail without leaving a trace comes first.
        let metrics = match config.metrics {
            Some(addr) => Some(bind_metrics(addr).await?),
            None => None,
        };
        let mut made = MadeOnHost::before_binding(&control_path);
        let listener = match control::bind(&control_path).await {
            Ok(listener) => listener,
            Err(e) => {
                made.remove();
                return Err(e.into());
            }
        };
        made.socket = Some(control_path.clone());
        if let Err(e) = start_networks(&daemon, config.networks).await {
            // Networks that did start are stopped: their TAP devices go with them.
            daemon.shutdown().await;
            made.remove();
            return Err(e);
        }
        let api = tokio::spawn(serve_control(listener, Arc::clone(&daemon)));
        let metrics =
            metrics.map(|listener| tokio::spawn(serve_metrics(listener, Arc::clone(&daemon))));
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: shutting down"),
            _ = int.recv() => info!("SIGINT: shutting down"),
        }
        api.abort();
        if let Some(m) = metrics {
            m.abort();
        }
        daemon.shutdown().await;
        let _ = std::fs::remove_file(&control_path);
        info!("stopped");
        Ok(())
    })
}

/// Starts the data path and the configured networks.
async fn start_networks(daemon: &Arc<Daemon>, networks: Vec<vpnd_api::NetworkSpec>) -> Result<()> {
    daemon.start_workers()?;
    for spec in networks {
        let id = spec.id;
        daemon
            .add_network(spec)
            .await
            .with_context(|| format!("starting network {id}"))?;
    }
    Ok(())
}

/// What `vpnd up` made in the file system for its control socket, to remove again when
/// the start fails: nothing of a failed start may remain. (TAP devices go with their
/// networks, UDP sockets and listeners with the process.)
struct MadeOnHost {
    socket: Option<PathBuf>,
    /// Directories above the socket that did not exist yet, deepest first.
    dirs: Vec<PathBuf>,
}

impl MadeOnHost {
    fn before_binding(socket: &std::path::Path) -> MadeOnHost {
        let dirs = socket
            .ancestors()
            .skip(1)
            .filter(|d| !d.as_os_str().is_empty())
            .take_while(|d| !d.exists())
            .map(|d| d.to_path_buf())
            .collect();
        MadeOnHost { socket: None, dirs }
    }

    fn remove(self) {
        if let Some(socket) = &self.socket {
            let _ = std::fs::remove_file(socket);
        }
        for dir in &self.dirs {
            // Only if empty: never anything someone else put there meanwhile.
            let _ = std::fs::remove_dir(dir);
        }
    }
}

async fn serve_control(listener: tokio::net::UnixListener, daemon: Arc<Daemon>) {
    if let Err(e) = axum::serve(listener, control::router(daemon)).await {
        error!("control API stopped: {e}");
    }
}

async fn bind_metrics(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding metrics address {addr}"))
}

async fn serve_metrics(listener: tokio::net::TcpListener, daemon: Arc<Daemon>) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "serving Prometheus metrics on /metrics");
    }
    if let Err(e) = axum::serve(listener, metrics::router(daemon)).await {
        error!("metrics server stopped: {e}");
    }
}

fn status(json: bool, control: PathBuf) -> Result<()> {
    runtime()?.block_on(async move {
        let client = Client::new(control);
        if json {
            let body = client
                .request(axum::http::Method::GET, "/v1/status", None)
                .await?;
            println!("{}", String::from_utf8_lossy(&body));
        } else {
            print!("{}", render_table(&client.status().await?));
        }
        Ok(())
    })
}
