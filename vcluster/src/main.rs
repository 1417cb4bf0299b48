//! `vcluster`: a thin dispatcher. Each command's work lives in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};
use vcluster::{agent, cli, controller};

#[derive(Parser)]
#[command(name = "vcluster", version, about = "Virtual clusters across sites")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The per-site package cache: `vcluster cache serve`, `vcluster cache stats`.
    Cache(vcluster::cache::cli::CacheArgs),
    /// Run the controller: REST API, portal, metrics.
    Serve(ServeArgs),
    /// Run the host agent on a hypervisor host.
    HostAgent(HostAgentArgs),
    /// Run the node agent inside a node (the host agent starts it in lightweight nodes).
    NodeAgent(NodeAgentArgs),
    /// Relay a cluster's site-local address to the site's cache (started by the host agent).
    #[command(hide = true)]
    SiteRelay(SiteRelayArgs),
    /// Reinstall nodes from their cluster's profile: `vcluster reinstall 'c1-node-[1-4]' --wait`.
    Reinstall(cli::install::ReinstallArgs),
    /// Run a command on many nodes at once, as clush does: `vcluster exec -c C 'n[1-4]' -- uname -r`.
    Exec(cli::exec::ExecArgs),
    /// Copy a file to many nodes (clush --copy): `vcluster copy 'c1-node-[1-4]' FILE [DEST]`.
    Copy(cli::exec::CopyArgs),
    /// Copy a file from many nodes, saved as DESTDIR/NAME.NODE (clush --rcopy).
    Rcopy(cli::exec::RcopyArgs),
    /// Sites: list, show, create, delete.
    Sites(cli::SitesCmd),
    /// Hosts: list, show, enable, disable, remove (admin).
    Hosts(cli::HostsCmd),
    /// Users and tokens (admin); whoami.
    Users(cli::UsersCmd),
    /// Reservations: create, list, show, cancel, when.
    Reserve(cli::ReserveCmd),
    /// Clusters: create, list, show, delete.
    Cluster(cli::ClusterCmd),
    /// Nodes: add, remove.
    Node(cli::NodeCmd),
    /// A cluster's overlay: start, stop.
    Vpn(cli::VpnCmd),
    /// Tasks and events: list, show, wait, events.
    Task(cli::TaskCmd),
    /// Install profiles: create, list, show, delete, render NODE.
    Profile(cli::ProfileCmd),
    /// Roles of install profiles: create, list, show, delete, assign.
    Role(cli::RoleCmd),
    /// Attributes templates see: set, unset, list, per scope.
    Attr(cli::AttrCmd),
    /// Groups of a cluster's nodes: create, add, remove, roles, list, delete.
    Group(cli::GroupCmd),
    /// Write man pages and shell completions into DIR (for packages: scripts/package).
    #[command(hide = true)]
    GenerateAssets { dir: PathBuf },
    /// The CLI's config file: view, use-context, set-context.
    Config(cli::config::ConfigCmd),
}

#[derive(Args)]
struct ServeArgs {
    #[arg(long, default_value = "127.0.0.1:7200", env = "VCLUSTER_LISTEN")]
    listen: SocketAddr,
    /// sqlite:PATH or postgres://user@host/db
    #[arg(long, default_value = "sqlite:vcluster.db", env = "VCLUSTER_STORE")]
    store: String,
    /// CPUs a host offers per physical CPU (more than 0, at most 64).
    #[arg(long, default_value_t = 4.0)]
    cpu_overcommit: f64,
    /// Memory a host offers per MiB it has (more than 0, at most 64).
    #[arg(long, default_value_t = 1.0)]
    memory_overcommit: f64,
    /// Seconds before a task fails and is rolled back.
    #[arg(long, default_value_t = 120)]
    task_timeout: u64,
    /// Seconds between host agent heartbeats (offline after three missed).
    #[arg(long, default_value_t = 5)]
    heartbeat: u64,
    /// A running node whose agent has not answered for this many heartbeats is down
    /// (Ganglia's rule: 4).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1000))]
    down_after_beats: u32,
    /// An install phase without word from its node for this many seconds fails,
    /// naming the phase.
    #[arg(long, default_value_t = 600)]
    install_phase_timeout: u64,
    /// Seconds between usage samples for the portal's timeline.
    #[arg(long, default_value_t = 60)]
    sample_every: u64,
    #[arg(long, default_value = "10.128.0.0/9")]
    subnet_pool: String,
    /// The first overlay network id to hand out.
    #[arg(long, default_value_t = 1)]
    first_network_id: u32,
    /// Where to write a generated first admin token (default: admin.token in the working
    /// directory; mode 0600). The environment variable VCLUSTER_ADMIN_TOKEN gives the
    /// token instead (never a flag: secrets stay out of process listings).
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// The controller's own CA and server certificate, made on first start (ca.pem,
    /// ca.key, server.pem, server.key).
    #[arg(long, default_value = controller::DEFAULT_TLS_DIR)]
    tls_dir: PathBuf,
    /// An extra name or IP address for the generated server certificate (repeatable).
    #[arg(long = "tls-san", value_name = "NAME_OR_IP")]
    tls_sans: Vec<String>,
    /// The operator's certificate chain (PEM) instead of a generated one.
    #[arg(long, requires = "tls_key", conflicts_with = "insecure")]
    tls_cert: Option<PathBuf>,
    /// The key of --tls-cert (PEM, mode 0600).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve plain HTTP: tokens and agent secrets then cross the network readable.
    #[arg(long)]
    insecure: bool,
}

#[derive(Args)]
struct HostAgentArgs {
    /// The controller's URL, https://HOST:7200.
    #[arg(long, env = "VCLUSTER_API")]
    controller: String,
    /// The controller's CA certificate (PEM), to pin it.
    #[arg(long, conflicts_with = "ca_fingerprint")]
    ca: Option<PathBuf>,
    /// Or the controller CA's SHA-256 fingerprint, as `vcluster serve` printed it.
    #[arg(long)]
    ca_fingerprint: Option<String>,
    /// A file holding the agent token (`vcluster users create NAME --role agent`; mode
    /// 0600). Else the environment variable VCLUSTER_AGENT_TOKEN.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Plain HTTP: to a controller off loopback, and for this agent's own API.
    #[arg(long)]
    insecure: bool,
    /// This host's name.
    #[arg(long)]
    name: String,
    #[arg(long)]
    site: String,
    #[arg(long)]
    cpus: Option<i64>,
    #[arg(long)]
    memory_mib: Option<i64>,
    #[arg(long, default_value = "0.0.0.0:7300")]
    listen: SocketAddr,
    /// URL the controller reaches this agent at (default https://<listen>).
    #[arg(long)]
    advertise: Option<String>,
    /// This host's vpnd endpoint as other sites reach it, ip:port.
    #[arg(long)]
    overlay_endpoint: String,
    #[arg(long, default_value = "/run/vpnd/control.sock")]
    vpnd_socket: PathBuf,
    #[arg(long, default_value = "/var/lib/vcluster-agent")]
    state_dir: PathBuf,
    /// Seconds between full reconciles.
    #[arg(long, default_value_t = 30)]
    reconcile_every: u64,
    /// VM driver: netns (lightweight nodes: network namespaces) or qemu (real VMs).
    #[arg(long, default_value = "netns")]
    driver: String,
    /// qemu driver: the accelerator, or `auto` (KVM where a probe guest runs under it,
    /// else TCG).
    #[arg(long, default_value = "auto")]
    accel: String,
    /// qemu driver: the virtio-net option ROM (iPXE) the VMs network-boot with.
    #[arg(long)]
    nic_rom: Option<PathBuf>,
    /// The site's package cache (ip:port) as this host reaches it: provisioned clusters'
    /// nodes reach it at their subnet's site-local address, and this host runs their
    /// frontend when it is theirs (docs/provisioning.md).
    #[arg(long)]
    site_cache: Option<std::net::SocketAddr>,
    /// The directory with iPXE's `undionly.kpxe` and `ipxe.efi` for frontends.
    #[arg(long, default_value = vcluster::agent::services::DEBIAN_IPXE_DIR)]
    ipxe_dir: PathBuf,
    /// qemu driver: the size of a new node's disk, in GiB.
    #[arg(long, default_value_t = 8)]
    disk_gib: u32,
    /// qemu driver: where OVMF_CODE_4M.fd and OVMF_VARS_4M.fd are, for UEFI nodes.
    #[arg(long, default_value = vcluster::agent::qemu::DEBIAN_OVMF_DIR)]
    ovmf_dir: PathBuf,
}

#[derive(Args)]
struct SiteRelayArgs {
    /// The network namespace to accept connections in.
    #[arg(long)]
    netns: String,
    /// ip:port to accept on (repeatable).
    #[arg(long, required = true)]
    listen: Vec<std::net::SocketAddr>,
    /// The site's cache, reached from this program's own namespace.
    #[arg(long)]
    to: std::net::SocketAddr,
}

#[derive(Args)]
struct NodeAgentArgs {
    /// This node's name, as the controller knows it.
    #[arg(long)]
    name: String,
    /// The Unix socket to serve the host agent on (made mode 0600).
    #[arg(long)]
    socket: PathBuf,
    /// The node's installed root directory (a lightweight node's "disk"): when it holds
    /// the install's first-boot file, the agent reports "booted" with it, then removes it.
    #[arg(long)]
    root: Option<PathBuf>,
}

fn host_memory_mib() -> i64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<i64>().ok())
        })
        .map(|kb| kb / 1024)
        .unwrap_or(1024)
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn,tower_http=info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        // The cache runs its own runtime, sized for serving many clients.
        Command::Cache(args) => vcluster::cache::cli::run(args),
        Command::GenerateAssets { dir } => cli_assets::write(Cli::command(), &dir)
            .map(drop)
            .map_err(|e| {
                anyhow::anyhow!(
                    "writing man pages and completions to {}: {e}",
                    dir.display()
                )
            }),
        command => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(dispatch(command))),
    };
    if let Err(e) = result {
        eprintln!("vcluster: {e:#}");
        std::process::exit(1);
    }
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Cache(_) | Command::GenerateAssets { .. } => {
            unreachable!("dispatched before the runtime starts")
        }
        Command::Serve(a) => serve(a).await,
        Command::HostAgent(a) => host_agent(a).await,
        Command::NodeAgent(a) => {
            vcluster::node::run(vcluster::node::NodeAgentConfig {
                name: a.name,
                socket: a.socket,
                root: a.root,
            })
            .await
        }
        Command::SiteRelay(a) => {
            vcluster::agent::services::run_relay(&a.netns, &a.listen, a.to).await
        }
        Command::Reinstall(a) => cli::install::reinstall(a).await,
        Command::Exec(a) => cli::exec::exec(a).await,
        Command::Copy(a) => cli::exec::copy(a).await,
        Command::Rcopy(a) => cli::exec::rcopy(a).await,
        Command::Sites(c) => cli::sites(c).await,
        Command::Hosts(c) => cli::hosts(c).await,
        Command::Users(c) => cli::users(c).await,
        Command::Reserve(c) => cli::reserve(c).await,
        Command::Cluster(c) => cli::cluster(c).await,
        Command::Node(c) => cli::node(c).await,
        Command::Vpn(c) => cli::vpn(c).await,
        Command::Task(c) => cli::task(c).await,
        Command::Profile(c) => cli::profile(c).await,
        Command::Role(c) => cli::role(c).await,
        Command::Attr(c) => cli::attr(c).await,
        Command::Group(c) => cli::group(c).await,
        Command::Config(c) => cli::config::config(c),
    }
}

async fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let mut config = controller::ControllerConfig::new(a.listen, a.store);
    config.overcommit = controller::view::Overcommit {
        cpu: a.cpu_overcommit,
        memory: a.memory_overcommit,
    };
    config.task_timeout = Duration::from_secs(a.task_timeout);
    config.heartbeat = Duration::from_secs(a.heartbeat.max(1));
    config.down_after_beats = a.down_after_beats;
    config.install_phase_timeout = Duration::from_secs(a.install_phase_timeout.max(1));
    config.sample_every = Duration::from_secs(a.sample_every.max(1));
    config.subnet_pool = a
        .subnet_pool
        .parse()
        .map_err(|e| anyhow::anyhow!("--subnet-pool {}: {e}", a.subnet_pool))?;
    config.first_network_id = a.first_network_id.max(1);
    config.bootstrap_admin_token = std::env::var("VCLUSTER_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    config.admin_token_file = a.admin_token_file;
    config.tls = match (a.insecure, a.tls_cert, a.tls_key) {
        (true, _, _) => None,
        (false, Some(cert), Some(key)) => Some(controller::TlsSource::Files { cert, key }),
        _ => Some(controller::TlsSource::Generate {
            dir: a.tls_dir,
            sans: a.tls_sans,
        }),
    };
    Ok(controller::serve(config).await?)
}

async fn host_agent(a: HostAgentArgs) -> anyhow::Result<()> {
    let driver: Arc<dyn agent::driver::VmDriver> = match a.driver.as_str() {
        "netns" => {
            agent::netns::NetnsDriver::probe()
                .await
                .map_err(|e| anyhow::anyhow!("the netns driver needs root and iproute2: {e}"))?;
            let exe = std::env::current_exe()
                .map_err(|e| anyhow::anyhow!("finding this program for the node agents: {e}"))?;
            Arc::new(agent::netns::NetnsDriver::with_node_agents(
                exe,
                a.state_dir.join("nodes"),
            ))
        }
        "qemu" => {
            agent::netns::NetnsDriver::probe()
                .await
                .map_err(|e| anyhow::anyhow!("the qemu driver needs root and iproute2: {e}"))?;
            let mut settings = agent::qemu::QemuSettings::new(a.state_dir.join("vms"));
            if let Some(rom) = &a.nic_rom {
                anyhow::ensure!(rom.exists(), "--nic-rom {}: no such file", rom.display());
                settings.nic_rom = Some(rom.clone());
            }
            anyhow::ensure!(
                (1..=16384).contains(&a.disk_gib),
                "--disk-gib {}: expected 1 to 16384",
                a.disk_gib
            );
            settings.disk_gib = a.disk_gib;
            settings.ovmf_dir = a.ovmf_dir.clone();
            let forced = match a.accel.as_str() {
                "auto" => None,
                other => Some(
                    other
                        .parse::<agent::qemu::Accel>()
                        .map_err(|e| anyhow::anyhow!("--accel: {e} or auto"))?,
                ),
            };
            Arc::new(
                agent::qemu::QemuDriver::probe(settings, forced)
                    .await
                    .map_err(|e| anyhow::anyhow!("the qemu driver: {e}"))?,
            )
        }
        other => anyhow::bail!("unknown driver {other:?} (available: netns, qemu)"),
    };
    let token = match &a.token_file {
        Some(file) => vcluster::secret::read_token_file(file)?,
        None => std::env::var("VCLUSTER_AGENT_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "no agent token: pass --token-file FILE or set VCLUSTER_AGENT_TOKEN"
                )
            })?,
    };
    let controller_trust = match (&a.ca, &a.ca_fingerprint) {
        (Some(ca), _) => Some(vcluster::tls::ServerTrust::ca_file(ca)?),
        (None, Some(f)) => Some(vcluster::tls::ServerTrust::Fingerprint(
            f.parse()
                .map_err(|e| anyhow::anyhow!("--ca-fingerprint: {e}"))?,
        )),
        (None, None) => None,
    };
    let config = agent::AgentConfig {
        controller: a.controller,
        controller_trust,
        insecure: a.insecure,
        token,
        name: a.name.clone(),
        site: a.site,
        cpus: a.cpus.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get() as i64)
                .unwrap_or(1)
        }),
        memory_mib: a.memory_mib.unwrap_or_else(host_memory_mib),
        listen: a.listen,
        advertise: a.advertise,
        overlay_endpoint: a.overlay_endpoint,
        vpnd_socket: a.vpnd_socket,
        state_dir: a.state_dir.clone(),
        reconcile_every: Duration::from_secs(a.reconcile_every.max(1)),
        services: match a.site_cache {
            Some(site_cache) => Some(agent::services::ServicesConfig {
                dir: a.state_dir.join("services"),
                exe: std::env::current_exe()
                    .map_err(|e| anyhow::anyhow!("finding this program for the site relay: {e}"))?,
                site_cache,
                ipxe_dir: a.ipxe_dir.clone(),
                host: a.name.clone(),
            }),
            None => None,
        },
    };
    Ok(agent::run(config, driver, Arc::new(agent::netns::LinuxBridges)).await?)
}
