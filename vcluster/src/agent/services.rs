//! A provisioned cluster's services on one host ([`ServicesSpec`]): the site-local
//! address and, on the cluster's frontend host, the provisioning frontend.
//!
//! * **Site-local address** (every host): a network namespace `<cluster>-site-<host>` whose
//!   `eth0` (veth `vc<hex>s` on the cluster's bridge) has the subnet's last host address
//!   and the services MAC, which vpnd keeps at its site (ARP and frames never cross the
//!   WAN). A relay process (`vcluster site-relay`) accepts there on ports 80 and 3142 and
//!   forwards each connection to the site's package cache (`--site-cache`): every site
//!   serves the same URL from its own cache, so boot files and packages cross the WAN
//!   once per site. On port 8080 ([`SITE_REPORTS_PORT`]) this agent itself takes the
//!   install reports of its own nodes (`POST /install/callback`, the node known by its
//!   address) and sends them to the controller in batches ([`ReportBatcher`]).
//! * **Frontend** (the frontend host only): a namespace `<cluster>-frontend-<host>` (veth `vc<hex>f`) with
//!   the frontend address, a real dnsmasq (DHCP with one static lease per node and
//!   nothing for unknown MACs; TFTP of iPXE for firmware without it; iPXE clients sent to
//!   the frontend's HTTP), and the frontend's HTTP server in this agent: `/boot.ipxe`
//!   chains to `/boot/<mac>.ipxe`, the node's own script, served only to the node's own
//!   address.
//!
//! dnsmasq and the relay run in sessions of their own with pid files, so an agent restart
//! leaves DHCP and the cache path of nodes being installed untouched; the agent finds
//! them again and only restarts what is gone. A lease change rewrites dnsmasq's hosts
//! file and sends it SIGHUP. Devices and files are named after the network id, the
//! namespaces after the cluster (unique machine-wide, like its nodes'); all go with it.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Path as AxPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::process::Command;
use tokio::sync::{Mutex, RwLock, oneshot};
use tokio::task::JoinHandle;

use super::driver::DriverError;
use super::netns::{
    ip, is_zombie, kill_everything_in, link_exists, netns_exists, write_atomically,
};
use crate::model::{
    FrontendSpec, InstallReport, InstallReportBatch, InstallReportOutcomes, LeaseSpec,
    MAX_REPORT_BATCH, NetworkId, NodeSpec, SITE_REPORTS_PORT, ServicesSpec,
};

/// Where the site's cache is and where the services keep their files.
#[derive(Debug, Clone)]
pub struct ServicesConfig {
    /// `<state-dir>/services`: one directory per network.
    pub dir: PathBuf,
    /// This program, for `site-relay`.
    pub exe: PathBuf,
    /// The site's package cache, as this host reaches it.
    pub site_cache: SocketAddr,
    /// iPXE for firmware without it: `undionly.kpxe` (BIOS) and `ipxe.efi` (UEFI).
    pub ipxe_dir: PathBuf,
    /// This host's name: in the services' namespace names, which must not meet another
    /// host's where hosts share a kernel (sites simulated on one machine).
    pub host: String,
}

/// The ports the site-local address answers on: plain HTTP (mirror prefixes such as
/// `/debian/`, `/provision/`) and the cache's usual proxy port.
pub const SITE_PORTS: [u16; 2] = [80, 3142];

/// Where Debian's ipxe package puts the network boot programs.
pub const DEBIAN_IPXE_DIR: &str = "/usr/lib/ipxe";

fn fail(net: NetworkId, message: impl Into<String>) -> DriverError {
    DriverError::Node {
        node: format!("services of network {:x}", net.0),
        message: message.into(),
    }
}

/// A running frontend's HTTP side: the leases it answers for.
struct FrontendHttp {
    leases: Arc<RwLock<BTreeMap<Ipv4Addr, LeaseSpec>>>,
    address: Ipv4Addr,
    task: JoinHandle<()>,
}

/// How a frontend reaches the controller on its nodes' behalf: as this host's agent.
#[derive(Clone)]
pub struct ControllerRelay {
    pub http: reqwest::Client,
    /// The controller's base URL.
    pub base: String,
    /// This agent's token.
    pub token: String,
    /// This host's name.
    pub host: String,
}

/// A running site-local reports server: the addresses of this host's nodes it answers.
struct SiteHttp {
    nodes: Arc<RwLock<BTreeMap<Ipv4Addr, String>>>,
    address: Ipv4Addr,
    task: JoinHandle<()>,
}

/// The services of every provisioned cluster on this host.
pub struct ClusterServices {
    config: ServicesConfig,
    http: Mutex<BTreeMap<u32, FrontendHttp>>,
    site_http: Mutex<BTreeMap<u32, SiteHttp>>,
    relay: Arc<std::sync::OnceLock<ControllerRelay>>,
    batcher: Arc<ReportBatcher>,
}

impl ClusterServices {
    pub fn new(config: ServicesConfig) -> ClusterServices {
        let relay = Arc::new(std::sync::OnceLock::new());
        ClusterServices {
            config,
            http: Mutex::new(BTreeMap::new()),
            site_http: Mutex::new(BTreeMap::new()),
            batcher: Arc::new(ReportBatcher::new(relay.clone(), REPORT_BATCH_WINDOW)),
            relay,
        }
    }

    /// Where frontends relay their nodes' reports and profile requests (set once the
    /// agent has its controller client).
    pub fn set_relay(&self, relay: ControllerRelay) {
        let _ = self.relay.set(relay);
    }

    fn dir(&self, net: NetworkId) -> PathBuf {
        self.config.dir.join(format!("{:x}", net.0))
    }

    /// The cluster's name, as [`ClusterServices::ensure`] recorded it: the services'
    /// namespaces are named after it (unique machine-wide, as node names are), and a
    /// removal knows only the network id.
    fn cluster_name(&self, net: NetworkId) -> String {
        std::fs::read_to_string(self.dir(net).join("cluster"))
            .map(|s| s.trim().to_string())
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| format!("vc{:x}", net.0))
    }

    /// The namespace of the site-local address: `<cluster>-site-<host>`.
    fn sv_netns(&self, net: NetworkId) -> String {
        format!("{}-site-{}", self.cluster_name(net), self.config.host)
    }

    /// The frontend's namespace: `<cluster>-frontend-<host>`.
    fn fe_netns(&self, net: NetworkId) -> String {
        format!("{}-frontend-{}", self.cluster_name(net), self.config.host)
    }

    /// Brings the cluster's services on this host to `spec`; `nodes` are the cluster's
    /// nodes on this host, whose reports its site-local address takes.
    pub async fn ensure(
        &self,
        net: NetworkId,
        cluster: &str,
        bridge: &str,
        spec: &ServicesSpec,
        nodes: &[NodeSpec],
    ) -> Result<(), DriverError> {
        let plain = !cluster.is_empty()
            && cluster.len() <= 48
            && cluster
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !plain {
            return Err(fail(
                net,
                format!("cluster name {cluster:?}: not usable in namespace names"),
            ));
        }
        let dir = self.dir(net);
        std::fs::create_dir_all(&dir).map_err(|e| fail(net, format!("{}: {e}", dir.display())))?;
        if self.cluster_name(net) != cluster {
            write_atomically(&dir.join("cluster"), cluster.as_bytes())
                .map_err(|e| fail(net, format!("{}: {e}", dir.display())))?;
        }
        let sv = self.sv_netns(net);
        attach(
            &sv,
            &format!("vc{:x}s", net.0),
            bridge,
            &spec.site_mac,
            &spec.site_address,
        )
        .await?;
        let site_ip = host_part(&spec.site_address).ok_or_else(|| {
            fail(
                net,
                format!("site_address {:?}: not an address", spec.site_address),
            )
        })?;
        self.ensure_relay(net, &sv, site_ip).await?;
        self.ensure_site_reports(net, &sv, site_ip, nodes).await?;
        match &spec.frontend {
            Some(fe) => self.ensure_frontend(net, bridge, fe).await,
            None => self.remove_frontend(net).await,
        }
    }

    /// Removes everything of the cluster's services from this host.
    pub async fn remove(&self, net: NetworkId) -> Result<(), DriverError> {
        self.remove_frontend(net).await?;
        if let Some(h) = self.site_http.lock().await.remove(&net.0) {
            h.task.abort();
        }
        stop_pid(&self.dir(net).join("relay.pid"));
        detach(&self.sv_netns(net), &format!("vc{:x}s", net.0)).await?;
        let _ = std::fs::remove_dir_all(self.dir(net));
        Ok(())
    }

    async fn ensure_relay(
        &self,
        net: NetworkId,
        ns: &str,
        ip: Ipv4Addr,
    ) -> Result<(), DriverError> {
        let pid_file = self.dir(net).join("relay.pid");
        if live_pid(&pid_file, ns).is_some() {
            return Ok(());
        }
        let log = self.dir(net).join("relay.log");
        let mut cmd = Command::new(&self.config.exe);
        cmd.args(["site-relay", "--netns", ns, "--to"])
            .arg(self.config.site_cache.to_string());
        for port in SITE_PORTS {
            cmd.arg("--listen").arg(format!("{ip}:{port}"));
        }
        spawn_detached(cmd, &pid_file, &log)
            .await
            .map_err(|e| fail(net, format!("the site relay: {e}")))?;
        // It is ready once it accepts (it binds before it reports anything).
        for _ in 0..100 {
            if let Ok(out) = ip_netns_ss(ns).await
                && SITE_PORTS
                    .iter()
                    .all(|p| out.contains(&format!("{ip}:{p}")))
            {
                return Ok(());
            }
            if live_pid(&pid_file, ns).is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(fail(
            net,
            format!("the site relay did not start (see {})", log.display()),
        ))
    }

    /// The site-local address's reports server (port [`SITE_REPORTS_PORT`]), in this
    /// agent, answering this host's `nodes` only.
    async fn ensure_site_reports(
        &self,
        net: NetworkId,
        ns: &str,
        address: Ipv4Addr,
        nodes: &[NodeSpec],
    ) -> Result<(), DriverError> {
        let mut by_address = BTreeMap::new();
        for n in nodes {
            let a = host_part(&n.address).ok_or_else(|| {
                fail(
                    net,
                    format!("node {}: address {:?}: not an address", n.name, n.address),
                )
            })?;
            by_address.insert(a, n.name.clone());
        }
        let mut http = self.site_http.lock().await;
        if let Some(h) = http.get(&net.0)
            && h.address == address
            && !h.task.is_finished()
        {
            *h.nodes.write().await = by_address;
            return Ok(());
        }
        if let Some(old) = http.remove(&net.0) {
            old.task.abort();
        }
        let listener = listen_retrying(ns, SocketAddr::from((address, SITE_REPORTS_PORT)))
            .await
            .map_err(|e| {
                fail(
                    net,
                    format!("the site's reports server on {address}:{SITE_REPORTS_PORT}: {e}"),
                )
            })?;
        let nodes = Arc::new(RwLock::new(by_address));
        let app = Router::new()
            .route("/install/callback", axum::routing::post(site_callback))
            .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
            .with_state(SiteState {
                nodes: nodes.clone(),
                batcher: self.batcher.clone(),
            });
        let task = serve_in_task(listener, app, "the site's reports server");
        http.insert(
            net.0,
            SiteHttp {
                nodes,
                address,
                task,
            },
        );
        Ok(())
    }

    async fn ensure_frontend(
        &self,
        net: NetworkId,
        bridge: &str,
        fe: &FrontendSpec,
    ) -> Result<(), DriverError> {
        let ns = self.fe_netns(net);
        attach(
            &ns,
            &format!("vc{:x}f", net.0),
            bridge,
            &fe.mac,
            &fe.address,
        )
        .await?;
        let address = host_part(&fe.address).ok_or_else(|| {
            fail(
                net,
                format!("frontend address {:?}: not an address", fe.address),
            )
        })?;
        let subnet: ipnet::Ipv4Net = fe
            .address
            .parse()
            .map_err(|e| fail(net, format!("frontend address {:?}: {e}", fe.address)))?;
        let mut leases = BTreeMap::new();
        for l in &fe.leases {
            let a: Ipv4Addr = l.address.parse().map_err(|e| {
                fail(
                    net,
                    format!("lease of {}: address {:?}: {e}", l.node, l.address),
                )
            })?;
            l.mac
                .parse::<crate::model::MacAddr>()
                .map_err(|e| fail(net, format!("lease of {}: mac {:?}: {e}", l.node, l.mac)))?;
            check_hostname(&l.node).map_err(|m| fail(net, format!("lease of {}: {m}", l.node)))?;
            leases.insert(a, l.clone());
        }
        self.ensure_dnsmasq(net, &ns, address, subnet, &leases)
            .await?;

        let mut http = self.http.lock().await;
        match http.get(&net.0) {
            Some(h) if h.address == address && !h.task.is_finished() => {
                *h.leases.write().await = leases;
            }
            _ => {
                if let Some(old) = http.remove(&net.0) {
                    old.task.abort();
                }
                let listener = listen_retrying(&ns, SocketAddr::from((address, 80)))
                    .await
                    .map_err(|e| fail(net, format!("the frontend's HTTP on {address}:80: {e}")))?;
                let leases = Arc::new(RwLock::new(leases));
                let app = Router::new()
                    .route("/boot.ipxe", get(chain_script))
                    .route("/boot/{file}", get(node_script))
                    .route("/install/callback", axum::routing::post(install_callback))
                    .route("/install/profile", get(install_profile))
                    .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
                    .with_state(FrontendState {
                        leases: leases.clone(),
                        address,
                        relay: self.relay.clone(),
                    });
                let task = serve_in_task(listener, app, "the frontend's HTTP server");
                http.insert(
                    net.0,
                    FrontendHttp {
                        leases,
                        address,
                        task,
                    },
                );
            }
        }
        Ok(())
    }

    async fn ensure_dnsmasq(
        &self,
        net: NetworkId,
        ns: &str,
        address: Ipv4Addr,
        subnet: ipnet::Ipv4Net,
        leases: &BTreeMap<Ipv4Addr, LeaseSpec>,
    ) -> Result<(), DriverError> {
        let dir = self.dir(net);
        let hosts: String = leases
            .values()
            .map(|l| format!("{},{},{}\n", l.mac.to_ascii_lowercase(), l.address, l.node))
            .collect();
        let hosts_path = dir.join("dhcp-hosts");
        let hosts_changed =
            std::fs::read_to_string(&hosts_path).ok().as_deref() != Some(hosts.as_str());
        if hosts_changed {
            write_atomically(&hosts_path, hosts.as_bytes())
                .map_err(|e| fail(net, format!("{}: {e}", hosts_path.display())))?;
        }
        let tftp = dir.join("tftp");
        std::fs::create_dir_all(&tftp)
            .map_err(|e| fail(net, format!("{}: {e}", tftp.display())))?;
        for file in ["undionly.kpxe", "ipxe.efi"] {
            let from = self.config.ipxe_dir.join(file);
            let to = tftp.join(file);
            if !to.exists() && from.exists() {
                std::fs::copy(&from, &to)
                    .map_err(|e| fail(net, format!("{}: {e}", from.display())))?;
            }
        }
        let conf = dnsmasq_conf(&dir, address, subnet, &hosts_path, &tftp);
        let conf_path = dir.join("dnsmasq.conf");
        let conf_changed =
            std::fs::read_to_string(&conf_path).ok().as_deref() != Some(conf.as_str());
        if conf_changed {
            write_atomically(&conf_path, conf.as_bytes())
                .map_err(|e| fail(net, format!("{}: {e}", conf_path.display())))?;
        }
        let pid_file = dir.join("dnsmasq.pid");
        match live_pid(&pid_file, "dnsmasq") {
            Some(pid) if !conf_changed => {
                if hosts_changed {
                    // SAFETY: kill(2) on the dnsmasq our pid file names and /proc confirmed.
                    unsafe {
                        libc::kill(pid, libc::SIGHUP);
                    }
                }
                return Ok(());
            }
            Some(_) => stop_pid(&pid_file),
            None => {}
        }
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "dnsmasq"])
            .arg(format!("--conf-file={}", conf_path.display()))
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| fail(net, format!("starting dnsmasq: {e}")))?;
        if !out.status.success() {
            return Err(fail(
                net,
                format!("dnsmasq: {}", String::from_utf8_lossy(&out.stderr).trim()),
            ));
        }
        Ok(())
    }

    async fn remove_frontend(&self, net: NetworkId) -> Result<(), DriverError> {
        if let Some(h) = self.http.lock().await.remove(&net.0) {
            h.task.abort();
        }
        stop_pid(&self.dir(net).join("dnsmasq.pid"));
        detach(&self.fe_netns(net), &format!("vc{:x}f", net.0)).await
    }
}

/// The frontends' and the sites' HTTP servers live in this agent: they stop with it
/// (dnsmasq and the relays do not).
impl Drop for ClusterServices {
    fn drop(&mut self) {
        for h in self.http.get_mut().values() {
            h.task.abort();
        }
        for h in self.site_http.get_mut().values() {
            h.task.abort();
        }
    }
}

/// Serves `app` on `listener` (handlers see the peer's address) in a task of its own.
fn serve_in_task(
    listener: tokio::net::TcpListener,
    app: Router,
    what: &'static str,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let service = app.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(listener, service).await {
            tracing::warn!(error = %e, "{what} stopped");
        }
    })
}

/// Listens on `addr` in namespace `ns`; a server just stopped (an agent restarting in
/// this process, in tests) may hold the port for a moment, so an address in use is tried
/// again for a second.
async fn listen_retrying(ns: &str, addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let mut tries = 0;
    loop {
        match listen_in(ns, addr) {
            Ok(l) => return Ok(l),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The least time between two batches: a report that comes while a batch left less than
/// this ago waits for the rest of it (and for the others that come meanwhile); one that
/// comes later leaves at once.
pub const REPORT_BATCH_WINDOW: Duration = Duration::from_secs(1);

/// Reports one node may have waiting at once; more are answered 429 at once, so that a
/// node posting in a loop cannot fill the queue and hold the other nodes' reports back
/// (an installer has one report waiting for its answer at a time, and its queued
/// progress reports take one place: [`ReportBatcher::submit`]).
pub const MAX_WAITING_PER_NODE: usize = 4;

/// A report waiting for its batch, and where its outcome goes.
type Waiting = (InstallReport, oneshot::Sender<(StatusCode, String)>);

/// Gathers the reports this host's nodes post at its site-local address and sends them to
/// the controller in batches (`POST /v1/hosts/{host}/install-reports/batch`), at most one
/// batch a `window`: a report that finds the batcher idle for that long leaves at once,
/// others wait for the window to end. A progress report (`installing`) is answered 202 as
/// soon as it is queued (the installer goes on; what the controller says of it is logged
/// here); any other (`rebooting`, `booted`, `failed`) is answered with its own outcome
/// once its batch is answered. At hundreds of nodes this sends a request a second
/// instead of one per report, and no report crosses the WAN inside the overlay on its own
/// TCP connection; one node alone never waits for a window.
pub struct ReportBatcher {
    relay: Arc<std::sync::OnceLock<ControllerRelay>>,
    window: Duration,
    /// The reports waiting, and whether a task is on its way to send them.
    queue: std::sync::Mutex<(Vec<Waiting>, bool)>,
    /// When the last batch left.
    last_sent: std::sync::Mutex<Option<tokio::time::Instant>>,
}

impl ReportBatcher {
    pub fn new(relay: Arc<std::sync::OnceLock<ControllerRelay>>, window: Duration) -> Self {
        ReportBatcher {
            relay,
            window,
            queue: std::sync::Mutex::new((Vec::new(), false)),
            last_sent: std::sync::Mutex::new(None),
        }
    }

    /// Queues `report`; 202 at once for a progress report, else its outcome once its
    /// batch is answered (502 with the reason when the controller could not be asked);
    /// 429 at once when its node has [`MAX_WAITING_PER_NODE`] reports waiting.
    ///
    /// A progress report takes the place of its node's progress report still waiting, if
    /// that is the node's last one: the controller keeps a node's latest progress only,
    /// so nothing is lost, and a node's progress never holds more than one place (an
    /// installer whose steps come quickly, or one posting in a loop, cannot run into the
    /// limit and have its `rebooting` refused).
    pub async fn submit(self: &Arc<Self>, report: InstallReport) -> (StatusCode, String) {
        let (tx, rx) = oneshot::channel();
        let progress = report.state == crate::model::InstallState::Installing;
        let start = {
            let mut q = self.queue.lock().expect("report queue");
            let last = q.0.iter_mut().rev().find(|(r, _)| r.node == report.node);
            if let Some(last) = last.filter(|(r, _)| progress && r.state == report.state) {
                *last = (report, tx);
                return (StatusCode::ACCEPTED, String::new());
            }
            let waiting = q.0.iter().filter(|(r, _)| r.node == report.node).count();
            if waiting >= MAX_WAITING_PER_NODE {
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "{} has {waiting} reports waiting already (at most {MAX_WAITING_PER_NODE})\n",
                        report.node
                    ),
                );
            }
            q.0.push((report, tx));
            !std::mem::replace(&mut q.1, true)
        };
        if start {
            tokio::spawn(self.clone().send_batches());
        }
        if progress {
            return (StatusCode::ACCEPTED, String::new());
        }
        rx.await.unwrap_or((
            StatusCode::BAD_GATEWAY,
            "the report's batch was dropped\n".to_string(),
        ))
    }

    /// Sends what waits, a batch a window at most, until nothing is left.
    async fn send_batches(self: Arc<Self>) {
        loop {
            let last = *self.last_sent.lock().expect("last batch");
            if let Some(last) = last {
                tokio::time::sleep_until(last + self.window).await;
            }
            let batch: Vec<Waiting> = {
                let mut q = self.queue.lock().expect("report queue");
                if q.0.is_empty() {
                    q.1 = false;
                    return;
                }
                let n = q.0.len().min(MAX_REPORT_BATCH);
                q.0.drain(..n).collect()
            };
            *self.last_sent.lock().expect("last batch") = Some(tokio::time::Instant::now());
            self.send(batch).await;
        }
    }

    async fn send(&self, batch: Vec<Waiting>) {
        let nodes: Vec<String> = batch.iter().map(|(r, _)| r.node.clone()).collect();
        let (reports, waiters): (Vec<InstallReport>, Vec<_>) = batch.into_iter().unzip();
        // A progress report's node was answered when it was queued (and a node may have
        // stopped waiting): what the controller says of a report nobody waits for is
        // logged when it is a refusal (also seen in the install's state).
        let tell = |node: &str,
                    w: oneshot::Sender<(StatusCode, String)>,
                    status: StatusCode,
                    body: String| {
            if let Err((status, body)) = w.send((status, body))
                && !status.is_success()
            {
                tracing::warn!(%node, %status, body = %body.trim_end(), "an install report nobody waits for was refused");
            }
        };
        let answer = |waiters: Vec<oneshot::Sender<(StatusCode, String)>>,
                      status: StatusCode,
                      body: String| {
            for (node, w) in nodes.iter().zip(waiters) {
                tell(node, w, status, body.clone());
            }
        };
        let Some(relay) = self.relay.get() else {
            return answer(
                waiters,
                StatusCode::SERVICE_UNAVAILABLE,
                "this host has no controller yet\n".to_string(),
            );
        };
        let n = reports.len();
        let sent = relay
            .post("install-reports/batch", &InstallReportBatch { reports })
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err((status, body)) => {
                tracing::warn!(reports = n, %body, "sending install reports failed");
                return answer(waiters, status, body);
            }
        };
        let status = status_of(&resp);
        if status != StatusCode::OK {
            let body = resp.text().await.unwrap_or_default();
            tracing::warn!(reports = n, %status, %body, "the controller refused a batch of install reports");
            return answer(waiters, status, body);
        }
        match resp.json::<InstallReportOutcomes>().await {
            Ok(o) if o.results.len() == n => {
                for ((node, w), r) in nodes.iter().zip(waiters).zip(o.results) {
                    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_GATEWAY);
                    tell(
                        node,
                        w,
                        status,
                        r.error.map(|e| e + "\n").unwrap_or_default(),
                    );
                }
            }
            Ok(o) => answer(
                waiters,
                StatusCode::BAD_GATEWAY,
                format!(
                    "the controller answered {} outcomes to {n} reports\n",
                    o.results.len()
                ),
            ),
            Err(e) => answer(
                waiters,
                StatusCode::BAD_GATEWAY,
                format!("the controller's answer to a batch: {e}\n"),
            ),
        }
    }
}

#[derive(Clone)]
struct SiteState {
    /// This host's nodes of the cluster, by address.
    nodes: Arc<RwLock<BTreeMap<Ipv4Addr, String>>>,
    batcher: Arc<ReportBatcher>,
}

/// A report from one of this host's nodes, at its site: batched to the controller with
/// the node's name, known from its address.
async fn site_callback(
    State(s): State<SiteState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
    crate::api_error::ApiJson(cb): crate::api_error::ApiJson<crate::model::InstallCallback>,
) -> Response {
    let Some(token) = install_token(&headers) else {
        return no_token();
    };
    let node = match peer.ip() {
        std::net::IpAddr::V4(a) => s.nodes.read().await.get(&a).cloned(),
        std::net::IpAddr::V6(_) => None,
    };
    let Some(node) = node else {
        return (
            StatusCode::FORBIDDEN,
            format!("{} is no address of this host's nodes\n", peer.ip()),
        )
            .into_response();
    };
    let (status, body) = s.batcher.submit(cb.into_report(node.clone(), token)).await;
    if !status.is_success() {
        tracing::warn!(%node, %status, %body, "an install report was refused");
    }
    (status, body).into_response()
}

/// dnsmasq's configuration for a frontend: DHCP for known MACs only (static leases from
/// the hosts file), no DNS, TFTP of iPXE for PXE firmware, and iPXE itself (option 175)
/// sent to the frontend's HTTP.
fn dnsmasq_conf(
    dir: &Path,
    address: Ipv4Addr,
    subnet: ipnet::Ipv4Net,
    hosts: &Path,
    tftp: &Path,
) -> String {
    format!(
        "# Written by the vcluster host agent: edits are overwritten.\n\
         port=0\n\
         interface=eth0\n\
         bind-interfaces\n\
         dhcp-range={network},static,{mask},1h\n\
         dhcp-hostsfile={hosts}\n\
         dhcp-ignore=tag:!known\n\
         dhcp-option=3\n\
         enable-tftp\n\
         tftp-root={tftp}\n\
         dhcp-match=set:ipxe,175\n\
         dhcp-match=set:efi64,option:client-arch,7\n\
         dhcp-match=set:efi64,option:client-arch,9\n\
         dhcp-boot=tag:!ipxe,tag:efi64,ipxe.efi\n\
         dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe\n\
         dhcp-boot=tag:ipxe,http://{address}/boot.ipxe\n\
         log-dhcp\n\
         log-facility={log}\n\
         pid-file={pid}\n\
         dhcp-leasefile={leases}\n",
        network = subnet.network(),
        mask = subnet.netmask(),
        hosts = hosts.display(),
        tftp = tftp.display(),
        log = dir.join("dnsmasq.log").display(),
        pid = dir.join("dnsmasq.pid").display(),
        leases = dir.join("dnsmasq.leases").display(),
    )
}

#[derive(Clone)]
struct FrontendState {
    leases: Arc<RwLock<BTreeMap<Ipv4Addr, LeaseSpec>>>,
    address: Ipv4Addr,
    relay: Arc<std::sync::OnceLock<ControllerRelay>>,
}

impl FrontendState {
    /// The lease of the node at `peer`, if any.
    async fn lease_of(&self, peer: SocketAddr) -> Option<LeaseSpec> {
        match peer.ip() {
            std::net::IpAddr::V4(a) => self.leases.read().await.get(&a).cloned(),
            std::net::IpAddr::V6(_) => None,
        }
    }

    /// Posts `body` to the controller's `/v1/hosts/{this host}/{what}`; the answer's
    /// status and body, or a 502 saying why there is none.
    async fn relay<T: serde::Serialize>(&self, what: &str, body: &T) -> (StatusCode, String) {
        let Some(relay) = self.relay.get() else {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "the frontend has no controller yet\n".to_string(),
            );
        };
        match relay.post(what, body).await {
            Ok(resp) => (status_of(&resp), resp.text().await.unwrap_or_default()),
            Err(e) => e,
        }
    }
}

impl ControllerRelay {
    /// POSTs `body` to the controller's `/v1/hosts/{this host}/{what}` as this host's
    /// agent; without an answer, a 502 saying why.
    async fn post<T: serde::Serialize>(
        &self,
        what: &str,
        body: &T,
    ) -> Result<reqwest::Response, (StatusCode, String)> {
        let url = format!(
            "{}/v1/hosts/{}/{what}",
            self.base.trim_end_matches('/'),
            self.host
        );
        self.http
            .post(&url)
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(30))
            .json(body)
            .send()
            .await
            .map_err(|e| {
                (
                    StatusCode::BAD_GATEWAY,
                    format!("the controller is unreachable: {e}\n"),
                )
            })
    }
}

/// A controller's answer's status, as axum's type.
fn status_of(resp: &reqwest::Response) -> StatusCode {
    StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY)
}

/// The install token (`Authorization: Bearer`, or `X-Install-Token`).
fn install_token(headers: &axum::http::HeaderMap) -> Option<String> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let other = headers.get("x-install-token").and_then(|v| v.to_str().ok());
    bearer
        .or(other)
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// The answer to a request without an install token.
fn no_token() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        "no install token (Authorization: Bearer)\n".to_string(),
    )
        .into_response()
}

/// An installer's (or an installed system's) report: relayed to the controller with the
/// node's name, known from its address.
async fn install_callback(
    State(s): State<FrontendState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
    crate::api_error::ApiJson(cb): crate::api_error::ApiJson<crate::model::InstallCallback>,
) -> Response {
    let Some(token) = install_token(&headers) else {
        return no_token();
    };
    let Some(lease) = s.lease_of(peer).await else {
        return (
            StatusCode::FORBIDDEN,
            format!("{} is no node's address\n", peer.ip()),
        )
            .into_response();
    };
    let report = cb.into_report(lease.node.clone(), token);
    let (status, body) = s.relay("install-reports", &report).await;
    if !status.is_success() {
        tracing::warn!(node = %lease.node, %status, %body, "an install report was refused");
    }
    (status, body).into_response()
}

/// What the node at this address installs (its rendered profile, JSON).
async fn install_profile(
    State(s): State<FrontendState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
) -> Response {
    let Some(token) = install_token(&headers) else {
        return no_token();
    };
    let Some(lease) = s.lease_of(peer).await else {
        return (
            StatusCode::FORBIDDEN,
            format!("{} is no node's address\n", peer.ip()),
        )
            .into_response();
    };
    let (status, body) = s
        .relay(
            "install-profile",
            &serde_json::json!({ "node": lease.node, "token": token }),
        )
        .await;
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn ipxe(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

/// Every iPXE client first: on to its own script, named by its MAC.
async fn chain_script(State(s): State<FrontendState>) -> Response {
    ipxe(format!(
        "#!ipxe\nchain http://{}/boot/${{net0/mac:hexhyp}}.ipxe\n",
        s.address
    ))
}

/// A node's own script, to that node's address only (it may carry a per-install secret).
async fn node_script(
    State(s): State<FrontendState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    AxPath(file): AxPath<String>,
) -> Response {
    let Some(mac) = file.strip_suffix(".ipxe") else {
        return (StatusCode::NOT_FOUND, "no such file\n").into_response();
    };
    let mac = mac.replace('-', ":").to_ascii_lowercase();
    let leases = s.leases.read().await;
    let Some(lease) = leases.values().find(|l| l.mac.to_ascii_lowercase() == mac) else {
        return (StatusCode::NOT_FOUND, format!("no node has MAC {mac}\n")).into_response();
    };
    let from_node = match peer.ip() {
        std::net::IpAddr::V4(a) => leases.get(&a).is_some_and(|l| l.node == lease.node),
        std::net::IpAddr::V6(_) => false,
    };
    if !from_node {
        tracing::warn!(node = %lease.node, %peer, "a boot script asked for from another address: refused");
        return (
            StatusCode::FORBIDDEN,
            format!(
                "{}'s boot script is served to {} only\n",
                lease.node, lease.address
            ),
        )
            .into_response();
    }
    // The node network-booted into its installer: `pxe`, reported for it.
    if let Some(token) = lease.token.clone() {
        let state = s.clone();
        let node = lease.node.clone();
        tokio::spawn(async move {
            let report = crate::model::InstallReport {
                node: node.clone(),
                token,
                state: crate::model::InstallState::Pxe,
                packages_done: None,
                packages_total: None,
                bytes: None,
                step: None,
                reason: None,
            };
            let (status, body) = state.relay("install-reports", &report).await;
            if !status.is_success() && status != StatusCode::CONFLICT {
                tracing::warn!(%node, %status, %body, "reporting pxe failed");
            }
        });
    }
    ipxe(lease.ipxe.clone())
}

/// The address part of `a.b.c.d/len`.
fn host_part(with_prefix: &str) -> Option<Ipv4Addr> {
    with_prefix.split('/').next()?.parse().ok()
}

fn check_hostname(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a usable host name"))
    }
}

/// Puts namespace `ns` on `bridge` through the veth `host_veth` (its `eth0` inside), with
/// `mac` and exactly the address `address`. Idempotent.
async fn attach(
    ns: &str,
    host_veth: &str,
    bridge: &str,
    mac: &str,
    address: &str,
) -> Result<(), DriverError> {
    if !netns_exists(ns).await? {
        ip(&["netns", "add", ns]).await?;
    }
    let inside = ip(&["-n", ns, "link", "show", "dev", "eth0"]).await.is_ok();
    if !link_exists(host_veth).await || !inside {
        if link_exists(host_veth).await {
            ip(&["link", "del", "dev", host_veth]).await?;
        }
        if inside {
            ip(&["-n", ns, "link", "del", "dev", "eth0"]).await?;
        }
        ip(&[
            "link", "add", "name", host_veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ])
        .await?;
    }
    ip(&["link", "set", "dev", host_veth, "master", bridge]).await?;
    ip(&["link", "set", "dev", host_veth, "up"]).await?;
    ip(&["-n", ns, "link", "set", "dev", "lo", "up"]).await?;
    let mac = mac.to_ascii_lowercase();
    let shown = ip(&["-n", ns, "link", "show", "dev", "eth0"]).await?;
    if !shown.contains(&mac) {
        ip(&["-n", ns, "link", "set", "dev", "eth0", "down"]).await?;
        ip(&["-n", ns, "link", "set", "dev", "eth0", "address", &mac]).await?;
    }
    let addrs = ip(&["-n", ns, "-4", "-o", "addr", "show", "dev", "eth0"]).await?;
    let have: Vec<&str> = addrs
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            w.position(|x| x == "inet")?;
            w.next()
        })
        .collect();
    if have != [address] {
        ip(&["-n", ns, "addr", "flush", "dev", "eth0"]).await?;
        ip(&["-n", ns, "addr", "add", address, "dev", "eth0"]).await?;
    }
    ip(&["-n", ns, "link", "set", "dev", "eth0", "up"]).await?;
    Ok(())
}

/// Undoes [`attach`]: the veth first (deleting one end deletes both, at once; a namespace's
/// teardown deletes its end only later, so the host end could vanish between a look and
/// a delete), then everything running in the namespace, then the namespace.
async fn detach(ns: &str, host_veth: &str) -> Result<(), DriverError> {
    if link_exists(host_veth).await
        && let Err(e) = ip(&["link", "del", "dev", host_veth]).await
        && link_exists(host_veth).await
    {
        return Err(e);
    }
    if netns_exists(ns).await? {
        kill_everything_in(ns).await?;
        ip(&["netns", "del", ns]).await?;
    }
    Ok(())
}

/// The listening TCP sockets in namespace `ns`, as `ss` prints them.
async fn ip_netns_ss(ns: &str) -> Result<String, DriverError> {
    ip(&["netns", "exec", ns, "ss", "-Hltn"]).await
}

/// A TCP listener bound inside network namespace `ns`, usable from this process's own
/// namespace (a socket stays in the namespace it was made in): made on a thread of its
/// own that enters `ns` and ends.
pub fn listen_in(ns: &str, addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let path = PathBuf::from("/run/netns").join(ns);
    let std_listener = std::thread::scope(|s| {
        s.spawn(|| -> std::io::Result<std::net::TcpListener> {
            let f = std::fs::File::open(&path)?;
            // SAFETY: setns(2) on this short-lived thread only, with a namespace fd we hold.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let l = std::net::TcpListener::bind(addr)?;
            l.set_nonblocking(true)?;
            Ok(l)
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the namespace thread panicked")))
    })?;
    tokio::net::TcpListener::from_std(std_listener)
}

/// The pid a pid file names, when that process lives and its command line mentions
/// `needle` (so a reused pid is never taken for ours).
fn live_pid(pid_file: &Path, needle: &str) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline);
    (cmdline.contains(needle) && !is_zombie(pid)).then_some(pid)
}

/// Stops the process a pid file names (TERM, then KILL) and removes the file.
fn stop_pid(pid_file: &Path) {
    if let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
        .filter(|p| *p > 1)
    {
        // SAFETY: kill(2) on a pid our own pid file names.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        for _ in 0..100 {
            if is_zombie(pid) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if !is_zombie(pid) {
            // SAFETY: as above.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
    let _ = std::fs::remove_file(pid_file);
}

/// Starts `cmd` in a session of its own (it outlives this agent), logging to `log`, and
/// records its pid.
async fn spawn_detached(mut cmd: Command, pid_file: &Path, log: &Path) -> std::io::Result<()> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    cmd.stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(false);
    // SAFETY: setsid(2) in the child between fork and exec touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let pid = child.id().unwrap_or(0);
    write_atomically(pid_file, format!("{pid}\n").as_bytes())?;
    // Reaped whenever it ends while this agent runs.
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    Ok(())
}

/// `vcluster site-relay`: accepts on `listen` inside namespace `netns` and copies each
/// connection to and from `to`, reached from the caller's own namespace. Runs until
/// killed.
pub async fn run_relay(netns: &str, listen: &[SocketAddr], to: SocketAddr) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for addr in listen {
        let listener = listen_in(netns, *addr)
            .map_err(|e| anyhow::anyhow!("listening on {addr} in namespace {netns}: {e}"))?;
        tracing::info!(%addr, netns, %to, "relaying");
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok((mut inbound, peer)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                tokio::spawn(async move {
                    match tokio::net::TcpStream::connect(to).await {
                        Ok(mut outbound) => {
                            let _ = inbound.set_nodelay(true);
                            let _ = outbound.set_nodelay(true);
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                        Err(e) => {
                            tracing::warn!(%peer, %to, error = %e, "the site cache is unreachable")
                        }
                    }
                });
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dnsmasq_gives_known_macs_only_and_sends_ipxe_to_the_frontend() {
        let conf = dnsmasq_conf(
            Path::new("/s"),
            "10.77.3.253".parse().unwrap(),
            "10.77.3.0/24".parse().unwrap(),
            Path::new("/s/dhcp-hosts"),
            Path::new("/s/tftp"),
        );
        assert!(conf.contains("dhcp-ignore=tag:!known\n"));
        assert!(conf.contains("dhcp-range=10.77.3.0,static,255.255.255.0,1h\n"));
        assert!(conf.contains("dhcp-boot=tag:ipxe,http://10.77.3.253/boot.ipxe\n"));
        assert!(conf.contains("port=0\n"), "no DNS server");
    }

    #[test]
    fn host_names_for_leases_are_plain() {
        assert!(check_hostname("c1-node-7").is_ok());
        assert!(check_hostname("a,b").is_err());
        assert!(check_hostname("a\nb").is_err());
        assert!(check_hostname("").is_err());
    }
}
