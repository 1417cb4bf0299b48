//! [`ControlPlane`]: the cluster layer on a [`Topology`] whose sites run `vpnd`
//! ([`Overlay`]): the controller (`vcluster serve`) on the WAN, a host agent
//! (`vcluster host-agent`) in every site's host namespace next to its `vpnd`, and a user
//! driving the REST API as a person would.
//!
//! ```text
//!  wan namespace   wanbr 10.254.0.254 ── vcluster serve :7200 (TLS; SQLite and tls/ in the topology's dir)
//!  site i host     wan0 10.254.0.i ── vpnd :51820 ◀─control socket── vcluster host-agent :7300
//!                  vcbr<id> bridge, vctap<id> TAP, node veths vc<id>n<k>: the agent's and vpnd's
//!  node namespaces <cluster>-node-<k>: made by the agents, visible machine-wide
//! ```
//!
//! Site i is called `site<i>` and has one host, `site<i>-h1`. The controller's address
//! assumes the topology's default WAN addresses (`10.254.0.<i>/24`); its traffic to a site
//! crosses that site's emulated access link like the overlay's. Agents enter only the
//! site's network namespace ([`NetNs::spawn_net_only`]), so the node namespaces they make
//! are visible outside it.
//!
//! Dropping the control plane stops the agents and the controller, then deletes every
//! node namespace of the clusters made through it; the sites' bridges, TAPs and `vpnd`
//! networks go with the [`Topology`] and the [`Overlay`]. Name clusters with
//! [`unique_name`](crate::unique_name) (`st<pid>-...`) so that nodes of a test process
//! killed outright are swept by the next run, like its namespaces.
//!
//! Everything speaks TLS as on real hosts: the controller makes its CA in `tls/` of the
//! topology's dir; agents pin it with `--ca` and read their token from a 0600
//! `--token-file`; the controller pins each agent's own certificate; the API clients here
//! pin the CA too.
//!
//! It never decides anything the controller decides (placement, addresses, names): it
//! asks the API and reads the answers.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use vcluster::cli::client::ApiClient;
use vcluster::model::{
    Accepted, Cluster, Host, IssuedToken, NetworkDevices, Node, Task, TaskState,
};
use vcluster::tls::ServerTrust;

use crate::netns::{CmdOutput, in_netns, list_namespaces, netns_exec, run};
use crate::ping::{PingOpts, ping_in, try_wait_until};
use crate::{NetNs, Overlay, Process, Topology, bin_path};

/// The controller's address on the WAN bridge, and its port.
pub const CONTROLLER_IP: &str = "10.254.0.254";
pub const CONTROLLER_PORT: u16 = 7200;
/// Each agent listens on its site's WAN address at this port.
pub const AGENT_PORT: u16 = 7300;

/// How the control plane is set up; every field has a default.
#[derive(Clone, Debug)]
pub struct ControlPlaneOpts {
    /// The controller's `--first-network-id`: ids below it are left to `vpnd` networks
    /// the operator configured by hand (default 1: there are none).
    pub first_network_id: u32,
    /// What each host's agent reports as its capacity (default 8 CPUs, 8 GiB).
    pub host_cpus: i64,
    pub host_memory_mib: i64,
    /// The agents' `--reconcile-every`, seconds (default 5).
    pub reconcile_every: u64,
    /// The controller's `--task-timeout`, seconds (default 60).
    pub task_timeout: u64,
    /// The controller's `--down-after-beats` (default 4, of 1 s heartbeats).
    pub down_after_beats: u32,
    /// More arguments for the controller (`--install-phase-timeout 600`, ...).
    pub controller_args: Vec<String>,
    /// More arguments for the agent of site i, at index i - 1 (`--driver qemu`,
    /// `--site-cache ADDR`, ...).
    pub agent_args: Vec<Vec<String>>,
}

impl Default for ControlPlaneOpts {
    fn default() -> Self {
        ControlPlaneOpts {
            first_network_id: 1,
            host_cpus: 8,
            host_memory_mib: 8192,
            reconcile_every: 5,
            task_timeout: 60,
            down_after_beats: 4,
            controller_args: Vec::new(),
            agent_args: Vec::new(),
        }
    }
}

/// The controller and one host agent per site; see the module doc.
pub struct ControlPlane {
    agents: Vec<Process>,
    controller: Option<Process>,
    url: String,
    wan_ns: String,
    admin_token: String,
    user_token: String,
    /// The agents' tokens, site 1 first.
    agent_tokens: Vec<String>,
    /// The controller's CA (made by the controller on its first start).
    ca_file: std::path::PathBuf,
    trust: ServerTrust,
    admin: ApiClient,
    user: ApiClient,
    rt: tokio::runtime::Runtime,
    /// Names of the clusters made through this control plane: their node namespaces are
    /// deleted on drop.
    clusters: RefCell<BTreeSet<String>>,
    /// The agents' state directories: the VMs and services processes they started
    /// (pid files under `vms/` and `services/`) are killed on drop.
    agent_dirs: Vec<std::path::PathBuf>,
    /// Each agent's arguments, for [`ControlPlane::restart_agent`].
    agent_argv: Vec<Vec<String>>,
    /// How long [`ControlPlane::wait_task`] waits: the controller's task timeout (it fails
    /// a task that takes longer) and half a minute, two minutes at least.
    task_wait: Duration,
}

/// 16 random bytes in hex, from the kernel.
fn random_token() -> String {
    use std::io::Read;
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("reading /dev/urandom");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Writes `secret` to a new file of mode 0600.
fn write_owner_only(path: &std::path::Path, secret: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    writeln!(f, "{secret}").unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// A node's address without its prefix length.
pub fn node_ip(node: &Node) -> &str {
    node.address.split('/').next().unwrap_or(&node.address)
}

/// True when `from` (a node's namespace) gets an answer from `to` within a second.
pub fn node_reaches(from: &Node, to_ip: &str) -> bool {
    ping_in(
        &from.name,
        to_ip,
        &PingOpts::default().count(1).timeout(Duration::from_secs(1)),
    )
    .received
        > 0
}

/// Every ordered pair of `nodes` whose ping gets no answer, one thread per source node.
pub fn unreachable_pairs(nodes: &[Node]) -> Vec<(String, String)> {
    std::thread::scope(|s| {
        let handles: Vec<_> = nodes
            .iter()
            .map(|from| {
                s.spawn(move || {
                    nodes
                        .iter()
                        .filter(|to| to.name != from.name && !node_reaches(from, node_ip(to)))
                        .map(|to| (from.name.clone(), to.name.clone()))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("ping thread"))
            .collect()
    })
}

/// Waits up to `timeout` until every node of `nodes` reaches every other; panics naming
/// the pairs that still do not.
pub fn wait_all_pairs_reach(nodes: &[Node], timeout: Duration) {
    let mut missing = Vec::new();
    let ok = try_wait_until(timeout, || {
        missing = unreachable_pairs(nodes);
        missing.is_empty()
    });
    assert!(
        ok,
        "after {timeout:?} these node pairs still do not reach each other: {missing:?}"
    );
}

impl ControlPlane {
    /// Starts the controller and an agent at every site of `topo` (whose `vpnd`s are
    /// `overlay`), and waits until every host is registered and online.
    pub fn start(topo: &Topology, overlay: &Overlay) -> ControlPlane {
        ControlPlane::start_with(topo, overlay, &ControlPlaneOpts::default())
    }

    pub fn start_with(topo: &Topology, overlay: &Overlay, opts: &ControlPlaneOpts) -> ControlPlane {
        let vcluster = bin_path("vcluster");
        let wan = topo.wan();
        wan.addr_add("wanbr", &format!("{CONTROLLER_IP}/24"));
        let listen = format!("{CONTROLLER_IP}:{CONTROLLER_PORT}");
        let url = format!("https://{listen}");
        let admin_token = random_token();
        let store = format!("sqlite:{}", topo.dir().join("controller.db").display());
        let tls_dir = topo.dir().join("tls");
        let ca_file = tls_dir.join("ca.pem");
        let controller = Process::spawn(
            "controller",
            {
                let mut c = wan.command(
                    &vcluster,
                    [
                        "serve",
                        "--listen",
                        &listen,
                        "--store",
                        &store,
                        // Hosts show online within a second of registering.
                        "--heartbeat",
                        "1",
                        "--first-network-id",
                        &opts.first_network_id.to_string(),
                        "--task-timeout",
                        &opts.task_timeout.to_string(),
                        "--down-after-beats",
                        &opts.down_after_beats.to_string(),
                        "--tls-dir",
                        &tls_dir.display().to_string(),
                    ],
                );
                c.args(&opts.controller_args);
                c.env("VCLUSTER_ADMIN_TOKEN", &admin_token);
                c
            },
            topo.dir().join("controller.log"),
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        // The CA exists once the controller has started far enough to make it.
        let mut trust = None;
        let made = try_wait_until(Duration::from_secs(20), || {
            trust = ServerTrust::ca_file(&ca_file).ok();
            trust.is_some()
        });
        if !made {
            controller.dump_log();
            panic!(
                "the controller made no CA in {} within 20 s",
                ca_file.display()
            );
        }
        let trust = trust.expect("read above");
        let admin = ApiClient::connect(&url, &admin_token, Some(&trust), false)
            .unwrap_or_else(|e| panic!("admin client: {e}"));
        let mut plane = ControlPlane {
            agents: Vec::new(),
            controller: None,
            url,
            wan_ns: wan.name().to_string(),
            admin_token,
            user_token: String::new(),
            agent_tokens: Vec::new(),
            ca_file,
            trust,
            user: admin.clone(),
            admin,
            rt,
            clusters: RefCell::new(BTreeSet::new()),
            agent_dirs: Vec::new(),
            agent_argv: Vec::new(),
            task_wait: Duration::from_secs(opts.task_timeout.saturating_add(30).max(120)),
        };
        let up = try_wait_until(Duration::from_secs(20), || {
            plane
                .block_on(plane.admin.get::<serde_json::Value>("/v1/whoami"))
                .is_ok()
        });
        if !up {
            controller.dump_log();
            panic!("the controller did not answer at {} within 20 s", plane.url);
        }
        plane.controller = Some(controller);

        let issued: IssuedToken = plane.admin_post(
            "/v1/users",
            &serde_json::json!({"name": "alice", "role": "user"}),
        );
        plane.user_token = issued.token;
        plane.user = ApiClient::connect(&plane.url, &plane.user_token, Some(&plane.trust), false)
            .unwrap_or_else(|e| panic!("user client: {e}"));

        for i in 1..=topo.sites() {
            let site = format!("site{i}");
            let _: serde_json::Value = plane.admin_post(
                "/v1/sites",
                &serde_json::json!({"name": site, "description": format!("site {i} of the topology")}),
            );
            let issued: IssuedToken = plane.admin_post(
                "/v1/users",
                &serde_json::json!({"name": format!("agent-{site}"), "role": "agent"}),
            );
            let ip = topo.wan_ip(i);
            // The token reaches the agent in a file only root can read, never in argv.
            let token_file = topo.dir().join(format!("agent{i}.token"));
            write_owner_only(&token_file, &issued.token);
            plane.agent_tokens.push(issued.token.clone());
            let args: Vec<String> = [
                "host-agent".to_string(),
                "--controller".into(),
                plane.url.clone(),
                "--ca".into(),
                plane.ca_file.display().to_string(),
                "--token-file".into(),
                token_file.display().to_string(),
                "--name".into(),
                format!("{site}-h1"),
                "--site".into(),
                site.clone(),
                "--cpus".into(),
                opts.host_cpus.to_string(),
                "--memory-mib".into(),
                opts.host_memory_mib.to_string(),
                "--listen".into(),
                format!("{ip}:{AGENT_PORT}"),
                "--overlay-endpoint".into(),
                format!("{ip}:{}", crate::vpnd::PORT),
                "--vpnd-socket".into(),
                overlay.daemons[i - 1].control.display().to_string(),
                "--state-dir".into(),
                topo.dir().join(format!("agent{i}")).display().to_string(),
                "--reconcile-every".into(),
                opts.reconcile_every.to_string(),
            ]
            .into_iter()
            .chain(opts.agent_args.get(i - 1).cloned().unwrap_or_default())
            .collect();
            plane.agent_dirs.push(topo.dir().join(format!("agent{i}")));
            plane.agents.push(Process::spawn(
                format!("agent{i} in {}", topo.host(i).name()),
                topo.host(i).command_net_only(&vcluster, args.clone()),
                topo.dir().join(format!("agent{i}.log")),
            ));
            plane.agent_argv.push(args);
        }
        let sites = topo.sites();
        let online = try_wait_until(Duration::from_secs(30), || {
            plane
                .block_on(plane.admin.get::<Vec<Host>>("/v1/hosts"))
                .is_ok_and(|hosts| hosts.len() == sites && hosts.iter().all(|h| h.online))
        });
        if !online {
            plane.dump_logs();
            panic!("not every site's host agent registered within 30 s");
        }
        plane
    }

    /// Runs an API request to completion. The controller listens in the wan namespace,
    /// which the caller's own namespace has no route to, so the request runs on a thread
    /// that entered it.
    pub fn block_on<F: std::future::Future + Send>(&self, f: F) -> F::Output
    where
        F::Output: Send,
    {
        let rt = &self.rt;
        in_netns(&self.wan_ns, || rt.block_on(f))
    }

    /// Stops site `i`'s host agent (SIGTERM, as systemd would) and starts it again with
    /// the same arguments and state directory: what it made must carry on meanwhile.
    pub fn restart_agent(&mut self, topo: &Topology, i: usize) {
        self.agents[i - 1].stop();
        let log = topo.dir().join(format!("agent{i}-restarted.log"));
        self.agents[i - 1] = Process::spawn(
            format!("agent{i} in {} (restarted)", topo.host(i).name()),
            topo.host(i)
                .command_net_only(bin_path("vcluster"), self.agent_argv[i - 1].clone()),
            log,
        );
    }

    /// The controller's base URL (reachable from the wan namespace and every site).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// Every site's agent token, site 1 first.
    pub fn agent_tokens(&self) -> &[String] {
        &self.agent_tokens
    }

    /// The controller's CA certificate, as agents and the CLI pin it.
    pub fn ca_file(&self) -> &std::path::Path {
        &self.ca_file
    }

    /// The body of `GET <controller>{path}` (e.g. `/metrics`), fetched with curl from the
    /// WAN's namespace, pinning the controller's CA; panics on any failure.
    pub fn get_text(&self, topo: &Topology, path: &str) -> String {
        let out = topo
            .wan()
            .command(
                "curl",
                [
                    "-sS",
                    "--fail",
                    "--cacert",
                    &self.ca_file.display().to_string(),
                    &format!("{}{path}", self.url),
                ],
            )
            .output()
            .expect("curl");
        assert!(
            out.status.success(),
            "curl {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The token of user `alice`, who owns the clusters made through this control plane.
    pub fn user_token(&self) -> &str {
        &self.user_token
    }

    /// The admin's client (run its requests with [`ControlPlane::block_on`]).
    pub fn admin(&self) -> &ApiClient {
        &self.admin
    }

    /// Alice's client (run its requests with [`ControlPlane::block_on`]).
    pub fn user(&self) -> &ApiClient {
        &self.user
    }

    pub fn admin_post<B: Serialize + Sync, T: DeserializeOwned + Send>(
        &self,
        path: &str,
        body: &B,
    ) -> T {
        self.block_on(self.admin.post(path, body))
            .unwrap_or_else(|e| panic!("POST {path} as admin: {e:#}"))
    }

    /// `vcluster ARGS...` (the CLI) as alice, run in the wan namespace.
    pub fn cli<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> CmdOutput {
        self.cli_with(netns_exec(&self.wan_ns, bin_path("vcluster"), args))
    }

    /// `vcluster ARGS...` as alice from `ns` (a site's host: its requests cross that
    /// site's WAN link).
    pub fn cli_in<S: AsRef<std::ffi::OsStr>>(&self, ns: &NetNs, args: &[S]) -> CmdOutput {
        self.cli_with(ns.command(bin_path("vcluster"), args))
    }

    fn cli_with(&self, mut cmd: std::process::Command) -> CmdOutput {
        self.cli_env(&mut cmd);
        run(&mut cmd)
    }

    /// The command `cli` runs, to spawn and drive by hand (signals, live output).
    pub fn cli_command<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> std::process::Command {
        let mut cmd = netns_exec(&self.wan_ns, bin_path("vcluster"), args);
        self.cli_env(&mut cmd);
        cmd.stdin(std::process::Stdio::null());
        cmd
    }

    fn cli_env(&self, cmd: &mut std::process::Command) {
        // The token in the environment, never in argv; not the user's own config file.
        cmd.env("VCLUSTER_API", &self.url)
            .env("VCLUSTER_CA", &self.ca_file)
            .env("VCLUSTER_TOKEN", &self.user_token)
            .env("VCLUSTER_CONFIG", "/dev/null");
    }

    /// Every host as the admin sees it.
    pub fn hosts(&self) -> Vec<Host> {
        self.block_on(self.admin.get("/v1/hosts"))
            .unwrap_or_else(|e| panic!("GET /v1/hosts: {e:#}"))
    }

    /// Remembers a cluster made some other way (the CLI): its node namespaces are deleted
    /// on drop like those made through [`ControlPlane::request_cluster`].
    pub fn note_cluster(&self, name: &str) {
        self.clusters.borrow_mut().insert(name.to_string());
    }

    /// `POST /v1/clusters` as alice with `body` (a `CreateCluster` in JSON); the 202's
    /// task and cluster. The cluster's nodes are deleted on drop whatever happens next.
    pub fn request_cluster(&self, body: &serde_json::Value) -> Accepted {
        if let Some(name) = body["name"].as_str() {
            self.clusters.borrow_mut().insert(name.to_string());
        }
        self.block_on(self.user.post("/v1/clusters", body))
            .unwrap_or_else(|e| panic!("POST /v1/clusters {body}: {e:#}"))
    }

    /// Creates a cluster as alice, waits for its task to succeed, returns it.
    pub fn create_cluster(&self, body: &serde_json::Value) -> Cluster {
        let a = self.request_cluster(body);
        self.expect_success(&a.task);
        self.cluster(body["name"].as_str().expect("the body names the cluster"))
    }

    pub fn cluster(&self, name: &str) -> Cluster {
        self.block_on(self.user.get(&format!("/v1/clusters/{name}")))
            .unwrap_or_else(|e| panic!("GET /v1/clusters/{name}: {e:#}"))
    }

    /// Waits for `task` to end (the controller's task timeout and half a minute, two
    /// minutes at least) and returns it as it ended.
    pub fn wait_task(&self, task: &Task) -> Task {
        let end = std::time::Instant::now() + self.task_wait;
        loop {
            // In slices, so that a harness's stop signal is heard.
            let slice = end
                .saturating_duration_since(std::time::Instant::now())
                .min(Duration::from_secs(1));
            match self.block_on(self.user.wait_task(task.id, slice)) {
                Ok(t) => return t,
                Err(vcluster::cli::client::ClientError::TaskTimeout { .. })
                    if std::time::Instant::now() < end =>
                {
                    crate::check_interrupted()
                }
                Err(e) => panic!("waiting for task {} {}: {e:#}", task.id, task.kind),
            }
        }
    }

    /// Waits for `task` and panics, with the agents' and controller's logs, unless it
    /// succeeded.
    pub fn expect_success(&self, task: &Task) -> Task {
        let done = self.wait_task(task);
        if done.state != TaskState::Succeeded {
            self.dump_logs();
            panic!(
                "task {} {} of {:?} ended {:?}: {}",
                done.id, done.kind, done.cluster, done.state, done.message
            );
        }
        done
    }

    /// `DELETE /v1/clusters/{cluster}/nodes/{node}` as alice; waits for success.
    pub fn remove_node(&self, cluster: &str, node: &str) -> Task {
        self.accepted_op(
            self.user
                .delete(&format!("/v1/clusters/{cluster}/nodes/{node}")),
        )
    }

    /// Starts (`running`) or stops the cluster's overlay as alice; waits for success.
    pub fn set_overlay(&self, cluster: &str, running: bool) -> Task {
        let verb = if running { "start" } else { "stop" };
        self.accepted_op(self.user.post(
            &format!("/v1/clusters/{cluster}/overlay/{verb}"),
            &serde_json::json!({}),
        ))
    }

    /// `DELETE /v1/clusters/{cluster}` as alice; waits for success.
    pub fn delete_cluster(&self, cluster: &str) -> Task {
        self.accepted_op(self.user.delete(&format!("/v1/clusters/{cluster}")))
    }

    fn accepted_op(
        &self,
        request: impl std::future::Future<Output = Result<Accepted, vcluster::cli::ClientError>> + Send,
    ) -> Task {
        let a = self
            .block_on(request)
            .unwrap_or_else(|e| panic!("the controller refused: {e:#}"));
        self.expect_success(&a.task)
    }

    /// What is left on the machine of `cluster` (as it was before deletion): node
    /// namespaces, the bridge, TAP and node veths at every site, the `vpnd` network.
    /// Empty when it is all gone.
    pub fn leftovers(&self, topo: &Topology, overlay: &Overlay, cluster: &Cluster) -> Vec<String> {
        let mut left = Vec::new();
        let namespaces = list_namespaces();
        for n in &cluster.nodes {
            if namespaces.contains(&n.name) {
                left.push(format!("node namespace {}", n.name));
            }
        }
        for pid in node_agent_pids(cluster) {
            left.push(format!("node agent process {pid}"));
        }
        let net = vcluster::model::NetworkId(cluster.network_id);
        for i in 1..=topo.sites() {
            let links = topo.host(i).ip(&["-o", "link", "show"]);
            for name in links
                .lines()
                .filter_map(|l| l.split(": ").nth(1))
                .map(|n| n.split('@').next().unwrap_or(n))
            {
                let ours = vcluster::model::NetworkId::from_bridge_name(name) == Some(net)
                    || vcluster::model::NetworkId::from_tap_name(name) == Some(net)
                    || vcluster::model::NodeSlot::from_host_veth_name(name)
                        .is_some_and(|s| s.network == net);
                if ours {
                    left.push(format!("device {name} at site{i}"));
                }
            }
            if overlay
                .status(i)
                .networks
                .iter()
                .any(|n| n.id.0 == cluster.network_id)
            {
                left.push(format!("vpnd network {} at site{i}", cluster.network_id));
            }
        }
        left
    }

    /// Prints the tail of the controller's and every agent's log.
    pub fn dump_logs(&self) {
        if let Some(c) = &self.controller {
            c.dump_log();
        }
        for a in &self.agents {
            a.dump_log();
        }
    }

    /// Deletes the node namespaces of every cluster made through this control plane.
    /// The agents must be stopped first, or a reconcile could make them again.
    /// Kills what the agents started outside any node namespace (QEMU, dnsmasq, the
    /// site relays): every pid file under their `vms/` and `services/`.
    fn sweep_agent_processes(&self) {
        fn pid_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    pid_files(&p, out);
                } else if p.extension().is_some_and(|x| x == "pid") {
                    out.push(p);
                }
            }
        }
        let mut files = Vec::new();
        for d in &self.agent_dirs {
            pid_files(&d.join("vms"), &mut files);
            pid_files(&d.join("services"), &mut files);
        }
        for f in files {
            if let Some(pid) = std::fs::read_to_string(&f)
                .ok()
                .and_then(|p| p.trim().parse::<u32>().ok())
                .filter(|p| *p > 1)
            {
                let _ = run(std::process::Command::new("kill").args(["-9", &pid.to_string()]));
            }
        }
    }

    fn sweep_nodes(&self) {
        self.sweep_agent_processes();
        let clusters = self.clusters.borrow();
        for ns in list_namespaces() {
            // Its nodes, and its services at each host (`<c>-site-<host>`,
            // `<c>-frontend-<host>`).
            let ours = clusters.iter().any(|c| ns.starts_with(&format!("{c}-")));
            if ours {
                // Its node agent (and anything it runs) first: a deleted namespace lives on
                // while a process is in it.
                let pids = run(std::process::Command::new("ip").args(["netns", "pids", &ns]));
                for pid in pids.stdout.split_whitespace() {
                    let _ = run(std::process::Command::new("kill").args(["-9", pid]));
                }
                let out = run(std::process::Command::new("ip").args(["netns", "del", &ns]));
                if !out.success {
                    eprintln!("warning: ip netns del {ns}: {}", out.stderr.trim());
                }
            }
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let started = Instant::now();
        // Agents first (they make nodes), then the controller; each prints its log's tail
        // if the test is failing.
        self.agents.clear();
        self.controller = None;
        self.sweep_nodes();
        if started.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "stopping the control plane took {:.1} s",
                started.elapsed().as_secs_f64()
            );
        }
    }
}

/// Processes running `vcluster node-agent` for one of `cluster`'s nodes.
pub fn node_agent_pids(cluster: &Cluster) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let ours = args.iter().any(|a| a == "node-agent")
            && args
                .windows(2)
                .any(|w| w[0] == "--name" && cluster.nodes.iter().any(|n| n.name == w[1]));
        if ours {
            pids.push(pid);
        }
    }
    pids
}

/// The kernel's neighbour (ARP, NDP) table limits, raised for a run with many lightweight
/// nodes (they share one table on one kernel: see
/// `vcluster::agent::netns::NEIGHBOUR_LIMITS`), and put back as they were when dropped.
/// The host agents raise them too where they can (in the first network namespace); in
/// these topologies they run inside a site's namespace, where the limits do not exist.
pub struct NeighbourLimits {
    old: Vec<(String, String)>,
}

impl NeighbourLimits {
    pub fn raise() -> NeighbourLimits {
        let mut old = Vec::new();
        for family in ["ipv4", "ipv6"] {
            for (name, want) in vcluster::agent::netns::NEIGHBOUR_LIMITS {
                let path = format!("/proc/sys/net/{family}/neigh/default/{name}");
                let Ok(now) = std::fs::read_to_string(&path) else {
                    continue;
                };
                if now.trim().parse::<u64>().is_ok_and(|n| n < want)
                    && std::fs::write(&path, want.to_string()).is_ok()
                {
                    old.push((path, now.trim().to_string()));
                }
            }
        }
        NeighbourLimits { old }
    }
}

impl Drop for NeighbourLimits {
    fn drop(&mut self) {
        // Lower thresholds first (the kernel wants thresh1 <= thresh2 <= thresh3).
        for (path, value) in &self.old {
            let _ = std::fs::write(path, value);
        }
    }
}
