//! The `netns` VM driver and Linux bridges, through iproute2's `ip`.
//!
//! A lightweight node is a network namespace named after the node (`<cluster>-node-<i>`)
//! whose `eth0` is one end of a veth pair; the other end, `vc<network hex>n<index>`, sits
//! on the cluster's bridge `vcbr<network hex>` in the host's namespace. The node has its
//! stable MAC and its static address on `eth0`; a stopped node has `eth0` down. Because
//! the names are derived from the network id and index, `list` can find every node of
//! ours from the veths alone, even after the agent lost its state file.
//!
//! It needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN for `ip netns`). It never touches a
//! device whose name does not follow these conventions; within a network namespace it
//! takes every device that does as its own (one agent per host namespace).

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use tokio::process::Command;

use super::driver::{DriverError, FoundNode, HostBridges, VmDriver};
use crate::model::{BootDevice, NodeSlot, NodeSpec};

/// One `ip` command may take this long before it is killed and reported.
const IP_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `ip ARGS...` and returns its stdout.
pub async fn ip(args: &[&str]) -> Result<String, DriverError> {
    let command = || format!("ip {}", args.join(" "));
    let run = Command::new("ip").args(args).kill_on_drop(true).output();
    let out = tokio::time::timeout(IP_TIMEOUT, run)
        .await
        .map_err(|_| DriverError::Command {
            command: command(),
            message: format!("no answer in {}s", IP_TIMEOUT.as_secs()),
        })?
        .map_err(|e| DriverError::Command {
            command: command(),
            message: format!("cannot run ip: {e}"),
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(DriverError::Command {
            command: format!("ip {}", args.join(" ")),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

#[derive(Debug, Deserialize)]
struct Link {
    ifname: String,
    #[serde(default)]
    operstate: Option<String>,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    link_netnsid: Option<i64>,
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    master: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Netns {
    name: String,
    #[serde(default)]
    id: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct AddrInfo {
    #[serde(default)]
    addr_info: Vec<Addr>,
}

#[derive(Debug, Deserialize)]
struct Addr {
    family: String,
    local: String,
    prefixlen: u8,
}

fn parse<T: for<'de> Deserialize<'de>>(what: &str, json: &str) -> Result<T, DriverError> {
    // `ip -j` prints nothing at all when there is nothing to list.
    let json = if json.trim().is_empty() { "[]" } else { json };
    serde_json::from_str(json).map_err(|e| DriverError::Command {
        command: what.to_string(),
        message: format!("unexpected JSON from ip: {e}"),
    })
}

async fn links(kind: &str) -> Result<Vec<Link>, DriverError> {
    parse(
        "ip -j link show type",
        &ip(&["-j", "link", "show", "type", kind]).await?,
    )
}

pub(crate) async fn link_exists(name: &str) -> bool {
    ip(&["link", "show", "dev", name]).await.is_ok()
}

async fn netns_list() -> Result<Vec<Netns>, DriverError> {
    parse("ip -j netns list", &ip(&["-j", "netns", "list"]).await?)
}

pub(crate) async fn netns_exists(name: &str) -> Result<bool, DriverError> {
    Ok(netns_list().await?.iter().any(|n| n.name == name))
}

/// Network namespace names become files under /run/netns: keep them plain.
pub(crate) fn check_netns_name(name: &str) -> Result<(), DriverError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(DriverError::Node {
            node: name.to_string(),
            message: "not a usable namespace name".to_string(),
        })
    }
}

/// Nodes as network namespaces on veths, each running a node agent when the driver has
/// [`NodeAgents`].
#[derive(Debug, Default, Clone)]
pub struct NetnsDriver {
    agents: Option<NodeAgents>,
}

/// Where and how a lightweight node's agent runs: `<exe> node-agent` inside the node's
/// namespace, started in a session of its own (so it outlives a restart of the host
/// agent, as a VM does), with its socket, pid file and log in `dir`:
/// `<node>.sock`, `<node>.pid`, `<node>.log`.
///
/// A node whose pid file is there but whose process is gone has crashed: it is reported
/// as not running and is not restarted here (recovery decides that); powering the node
/// off removes the pid file, so the next power-on starts a fresh agent.
///
/// A node that boots from the network (its install is under way) starts as
/// [`NETBOOT`] instead, under the same pid file: DHCP from the frontend, its iPXE script,
/// the installer image from the site cache, an install into `<node>.root/`, then it
/// becomes the node agent (the same process, by exec), which reports the first boot.
/// While it installs the node has no agent socket and is not watched.
#[derive(Debug, Clone)]
pub struct NodeAgents {
    pub exe: PathBuf,
    pub dir: PathBuf,
}

/// How long a node agent may take to open its socket.
const AGENT_START: Duration = Duration::from_secs(10);

/// Whether a lightweight node's disk boots: a node that was never provisioned has no
/// root at all (its agent runs without one); an installed root names its node in
/// `etc/hostname` (even one whose install threw the tree away keeps that); a root
/// without it is a blank or half-written disk.
fn installed_or_absent(root: &Path) -> bool {
    !root.exists() || root.join("etc/hostname").is_file()
}

/// A lightweight node's network boot (scripts/installer/netboot), written to
/// `<dir>/netboot` and run in the node's namespace.
pub const NETBOOT: &str = include_str!("../../../scripts/installer/netboot");

impl NodeAgents {
    fn socket(&self, node: &str) -> PathBuf {
        self.dir.join(format!("{node}.sock"))
    }

    fn pid_file(&self, node: &str) -> PathBuf {
        self.dir.join(format!("{node}.pid"))
    }

    /// The node's installed root: a lightweight node's disk.
    pub fn root(&self, node: &str) -> PathBuf {
        self.dir.join(format!("{node}.root"))
    }

    /// The network boot's scratch space (the installer image, its logs).
    fn work(&self, node: &str) -> PathBuf {
        self.dir.join(format!("{node}.netboot"))
    }

    /// Where the node's boot device is kept, for a power-on that has no spec at hand.
    fn boot_file(&self, node: &str) -> PathBuf {
        self.dir.join(format!("{node}.boot"))
    }

    fn netboot_script(&self) -> PathBuf {
        self.dir.join("netboot")
    }

    /// The boot device the last spec gave (disk when none did).
    fn boot(&self, node: &str) -> BootDevice {
        match std::fs::read_to_string(self.boot_file(node)).as_deref() {
            Ok("network\n") => BootDevice::Network,
            _ => BootDevice::Disk,
        }
    }

    fn set_boot(&self, node: &str, boot: BootDevice) -> Result<(), DriverError> {
        let want = format!("{}\n", boot.as_str());
        if std::fs::read_to_string(self.boot_file(node))
            .ok()
            .as_deref()
            == Some(want.as_str())
        {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir)
            .and_then(|()| write_atomically(&self.boot_file(node), want.as_bytes()))
            .map_err(|e| DriverError::Node {
                node: node.to_string(),
                message: format!("recording its boot device: {e}"),
            })
    }

    /// Whether the node's process is its network boot (installing), not yet its agent.
    fn netbooting(&self, node: &str) -> bool {
        self.live(node)
            .is_some_and(|(_, kind)| kind == Running::Netboot)
    }

    /// The agent's pid, when its pid file names a live `node-agent` (or the network boot
    /// that becomes one) for this node.
    fn live_pid(&self, node: &str) -> Option<i32> {
        self.live(node).map(|(pid, _)| pid)
    }

    fn live(&self, node: &str) -> Option<(i32, Running)> {
        let pid: i32 = std::fs::read_to_string(self.pid_file(node))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let socket = self.socket(node);
        let socket = socket.to_string_lossy();
        let script = self.netboot_script();
        let script = script.to_string_lossy();
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        if is_zombie(pid) || !args.contains(&socket.as_bytes()) {
            return None;
        }
        if args.contains(&b"node-agent".as_slice()) {
            Some((pid, Running::Agent))
        } else if args.contains(&script.as_bytes()) {
            Some((pid, Running::Netboot))
        } else {
            None
        }
    }

    /// Alive, crashed (pid file left by a process that is gone) or off (no pid file).
    fn state(&self, node: &str) -> AgentRun {
        if self.live_pid(node).is_some() {
            AgentRun::Alive
        } else if self.pid_file(node).exists() {
            AgentRun::Crashed
        } else {
            AgentRun::Off
        }
    }

    /// Starts the node: its agent, or first its network boot when `boot` says so.
    async fn start(&self, node: &str, boot: BootDevice) -> Result<(), DriverError> {
        let fail = |message: String| DriverError::Node {
            node: node.to_string(),
            message,
        };
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| fail(format!("creating {}: {e}", self.dir.display())))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{node}.log")))
            .map_err(|e| fail(format!("the node agent's log: {e}")))?;
        if boot == BootDevice::Disk && !installed_or_absent(&self.root(node)) {
            // As a VM with a blank disk: nothing to boot (a reinstall makes it anew).
            return Err(fail(format!(
                "its disk holds no installed system ({} has no etc/hostname): reinstall it",
                self.root(node).display()
            )));
        }
        let socket = self.socket(node);
        let _ = std::fs::remove_file(&socket);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", node]);
        if boot == BootDevice::Network {
            write_atomically(&self.netboot_script(), NETBOOT.as_bytes())
                .map_err(|e| fail(format!("writing {}: {e}", self.netboot_script().display())))?;
            cmd.arg("bash")
                .arg(self.netboot_script())
                .arg(node)
                .arg(&socket)
                .arg(self.root(node))
                .arg(&self.exe)
                .arg(self.work(node));
        } else {
            cmd.arg(&self.exe)
                .args(["node-agent", "--name", node, "--socket"])
                .arg(&socket)
                .arg("--root")
                .arg(self.root(node));
        }
        cmd.stdin(std::process::Stdio::null())
            .stdout(
                log.try_clone()
                    .map_err(|e| fail(format!("the node agent's log: {e}")))?,
            )
            .stderr(log)
            .kill_on_drop(false);
        // SAFETY: setsid(2) in the child between fork and exec touches no memory of ours.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| fail(format!("starting its node agent: {e}")))?;
        let pid = child.id().unwrap_or(0);
        write_atomically(&self.pid_file(node), format!("{pid}\n").as_bytes())
            .map_err(|e| fail(format!("the node agent's pid file: {e}")))?;
        // Reap it whenever it ends (it is ours to wait for while this agent runs).
        let exited = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = exited.clone();
        tokio::spawn(async move {
            let _ = child.wait().await;
            flag.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        if boot == BootDevice::Network {
            // Its socket opens only when it is installed: a start that fails at once is
            // all there is to catch here.
            tokio::time::sleep(Duration::from_millis(100)).await;
            if exited.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(fail(format!(
                    "its network boot exited at start (see {})",
                    self.dir.join(format!("{node}.log")).display()
                )));
            }
            return Ok(());
        }
        let started = tokio::time::Instant::now();
        while started.elapsed() < AGENT_START {
            if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
                return Ok(());
            }
            if exited.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(fail(format!(
                    "its node agent exited at start (see {})",
                    self.dir.join(format!("{node}.log")).display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(fail(format!(
            "its node agent opened no socket in {} s",
            AGENT_START.as_secs()
        )))
    }

    /// Removes the node's root, scratch space and boot device: its disk. Nothing may be
    /// mounted under them (the installer's mounts live in its own mount namespace, gone
    /// with it): a mount there is refused rather than descended into.
    async fn remove_disk(&self, node: &str) -> Result<(), DriverError> {
        let fail = |message: String| DriverError::Node {
            node: node.to_string(),
            message,
        };
        let _ = std::fs::remove_file(self.boot_file(node));
        for dir in [self.root(node), self.work(node)] {
            if !dir.exists() {
                continue;
            }
            if let Some(m) = mount_under(&dir) {
                return Err(fail(format!(
                    "{m} is mounted: not removing {}",
                    dir.display()
                )));
            }
            // Gone from its name at once (a node of the same name may be made next);
            // its files are deleted in the background: a root holds tens of thousands
            // of them, and deleting eight at once on a busy host took a minute, with
            // the reconciler (and so the host's heartbeat) waiting.
            let trash = self.trash();
            std::fs::create_dir_all(&trash)
                .map_err(|e| fail(format!("creating {}: {e}", trash.display())))?;
            let name = dir.file_name().unwrap_or_default().to_string_lossy();
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let to = trash.join(format!("{name}.{nanos}"));
            std::fs::rename(&dir, &to)
                .map_err(|e| fail(format!("removing {}: {e}", dir.display())))?;
            std::thread::spawn(move || {
                if let Err(e) = std::fs::remove_dir_all(&to) {
                    tracing::warn!(dir = %to.display(), error = %e, "deleting a removed node's files");
                }
            });
        }
        Ok(())
    }

    /// Where removed disks wait for their deletion (see `remove_disk`).
    fn trash(&self) -> PathBuf {
        self.dir.join(".trash")
    }

    /// Deletes, in the background, what an earlier run left in the trash.
    fn empty_trash(&self) {
        let trash = self.trash();
        let Ok(entries) = std::fs::read_dir(&trash) else {
            return;
        };
        let left: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        if left.is_empty() {
            return;
        }
        std::thread::spawn(move || {
            for d in left {
                if mount_under(&d).is_some() {
                    tracing::warn!(dir = %d.display(), "something is mounted under a removed node's files: left alone");
                    continue;
                }
                if let Err(e) = std::fs::remove_dir_all(&d) {
                    tracing::warn!(dir = %d.display(), error = %e, "deleting a removed node's files");
                }
            }
        });
    }

    /// Stops the agent (TERM, then KILL after 2 s) and forgets it: the node is off.
    async fn stop(&self, node: &str) {
        // A network boot runs an installer's whole tree (debootstrap, dpkg): all of it goes.
        let installing = self.netbooting(node);
        if let Some(pid) = self.live_pid(node) {
            // SAFETY: kill(2) on the pid our pid file names and /proc confirmed.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
            let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            while self.live_pid(node).is_some() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if self.live_pid(node).is_some() {
                // SAFETY: as above.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        if installing && let Err(e) = kill_everything_in(node).await {
            tracing::warn!(node, error = %e, "stopping its install");
        }
        let _ = std::fs::remove_file(self.pid_file(node));
        let _ = std::fs::remove_file(self.socket(node));
    }
}

/// What a node's live process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Running {
    Agent,
    Netboot,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AgentRun {
    Alive,
    Crashed,
    Off,
}

/// Kills every process in the network namespace `name` and waits until none is left
/// (at most 5 s): what powering a machine off does to its programs.
pub(crate) async fn kill_everything_in(name: &str) -> Result<(), DriverError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let pids = ip(&["netns", "pids", name]).await?;
        let pids: Vec<i32> = pids
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .filter(|p: &i32| !is_zombie(*p))
            .collect();
        if pids.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(DriverError::Node {
                node: name.to_string(),
                message: format!("processes {pids:?} survived SIGKILL for 5 s"),
            });
        }
        for pid in pids {
            // SAFETY: kill(2) on a process the kernel lists in this node's namespace.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A mount point at or below `dir` in this process's mount namespace, if any.
fn mount_under(dir: &Path) -> Option<String> {
    let dir = dir.to_string_lossy();
    let below = format!("{dir}/");
    std::fs::read_to_string("/proc/self/mountinfo")
        .ok()?
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .find(|m| *m == dir || m.starts_with(&below))
        .map(str::to_string)
}

pub(crate) fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(|st| st == "Z"))
        })
        .unwrap_or(true)
}

pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// The kernel's neighbour (ARP, NDP) tables are shared by every network namespace, with
/// one cap for all of them (`gc_thresh3`, 1024 entries by default): lightweight nodes
/// that all talk to each other need nodes × (nodes − 1) entries on one kernel (17,822 for
/// 134), and past the cap the kernel drops entries ("neighbor table overflow") and pairs
/// of nodes stop reaching each other. What this driver asks for: room for ~250 nodes that
/// all talk to each other.
pub const NEIGHBOUR_LIMITS: [(&str, u64); 3] = [
    ("gc_thresh1", 8192),
    ("gc_thresh2", 32768),
    ("gc_thresh3", 65536),
];

/// Raises the host's neighbour table limits to [`NEIGHBOUR_LIMITS`] where they are lower,
/// for IPv4 and IPv6; what it changed, or why it could not (they exist only in the
/// host's first network namespace, so an agent started inside another cannot).
pub fn raise_neighbour_limits() -> Result<Vec<String>, String> {
    let mut changed = Vec::new();
    for family in ["ipv4", "ipv6"] {
        for (name, want) in NEIGHBOUR_LIMITS {
            let path = format!("/proc/sys/net/{family}/neigh/default/{name}");
            let now: u64 = std::fs::read_to_string(&path)
                .map_err(|e| format!("{path}: {e}"))?
                .trim()
                .parse()
                .map_err(|e| format!("{path}: {e}"))?;
            if now < want {
                std::fs::write(&path, want.to_string()).map_err(|e| format!("{path}: {e}"))?;
                changed.push(format!("net.{family}.neigh.default.{name} {now} -> {want}"));
            }
        }
    }
    Ok(changed)
}

impl NetnsDriver {
    /// Namespaces only, no node agents (the driver's tests).
    pub fn new() -> NetnsDriver {
        NetnsDriver { agents: None }
    }

    /// Every running node runs `exe node-agent`, with its files in `dir`.
    pub fn with_node_agents(exe: PathBuf, dir: PathBuf) -> NetnsDriver {
        let agents = NodeAgents { exe, dir };
        agents.empty_trash();
        NetnsDriver {
            agents: Some(agents),
        }
    }

    /// Is `ip netns` usable here (root, iproute2 present)?
    pub async fn probe() -> Result<(), DriverError> {
        ip(&["netns", "list"]).await.map(|_| ())
    }
}

#[async_trait]
impl VmDriver for NetnsDriver {
    fn kind(&self) -> &'static str {
        "netns"
    }

    async fn list(&self) -> Result<Vec<FoundNode>, DriverError> {
        let veths = links("veth").await?;
        let namespaces = netns_list().await?;
        Ok(veths
            .iter()
            .filter_map(|l| {
                let slot = NodeSlot::from_host_veth_name(&l.ifname)?;
                let name = l
                    .link_netnsid
                    .and_then(|id| namespaces.iter().find(|n| n.id == Some(id)))
                    .map(|n| n.name.clone());
                // The host end is always up; it is UP only while the node's eth0 is up too.
                let link_up = l.operstate.as_deref() == Some("UP")
                    || (l.flags.iter().any(|f| f == "LOWER_UP")
                        && l.flags.iter().any(|f| f == "UP"));
                // With node agents, a node whose agent is gone is not running.
                let agent_up = match (&self.agents, &name) {
                    (Some(a), Some(n)) => a.live_pid(n).is_some(),
                    (Some(_), None) => false,
                    (None, _) => true,
                };
                let running = link_up && agent_up;
                Some(FoundNode {
                    slot,
                    name,
                    running,
                })
            })
            .collect())
    }

    async fn ensure(
        &self,
        slot: NodeSlot,
        bridge: &str,
        spec: &NodeSpec,
    ) -> Result<FoundNode, DriverError> {
        let ns = spec.name.as_str();
        check_netns_name(ns)?;
        let veth = slot.host_veth_name();
        if !netns_exists(ns).await? {
            ip(&["netns", "add", ns]).await?;
        }
        let host_end: Option<Link> = match ip(&["-j", "link", "show", "dev", &veth]).await {
            Ok(out) => parse::<Vec<Link>>("ip -j link show dev", &out)?
                .into_iter()
                .next(),
            Err(_) => None,
        };
        let peer_in_ns = ip(&["-n", ns, "link", "show", "dev", "eth0"]).await.is_ok();
        if host_end.is_none() || !peer_in_ns {
            // Half a pair is no use: start again from nothing.
            if host_end.is_some() {
                ip(&["link", "del", "dev", &veth]).await?;
            }
            if peer_in_ns {
                ip(&["-n", ns, "link", "del", "dev", "eth0"]).await?;
            }
            ip(&[
                "link", "add", "name", &veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ])
            .await?;
        }
        let host_end = ip(&["-j", "link", "show", "dev", &veth]).await?;
        let host_end: Vec<Link> = parse("ip -j link show dev", &host_end)?;
        if host_end.first().and_then(|l| l.master.as_deref()) != Some(bridge) {
            ip(&["link", "set", "dev", &veth, "master", bridge]).await?;
        }
        ip(&["link", "set", "dev", &veth, "up"]).await?;
        ip(&["-n", ns, "link", "set", "dev", "lo", "up"]).await?;

        let eth0: Vec<Link> = parse(
            "ip -j link show dev eth0",
            &ip(&["-n", ns, "-j", "link", "show", "dev", "eth0"]).await?,
        )?;
        let mac = spec.mac.to_ascii_lowercase();
        if eth0.first().and_then(|l| l.address.as_deref()) != Some(mac.as_str()) {
            ip(&["-n", ns, "link", "set", "dev", "eth0", "down"]).await?;
            ip(&["-n", ns, "link", "set", "dev", "eth0", "address", &mac]).await?;
        }
        let addrs: Vec<AddrInfo> = parse(
            "ip -j addr show dev eth0",
            &ip(&["-n", ns, "-j", "addr", "show", "dev", "eth0"]).await?,
        )?;
        let have: Vec<String> = addrs
            .iter()
            .flat_map(|a| &a.addr_info)
            .filter(|a| a.family == "inet")
            .map(|a| format!("{}/{}", a.local, a.prefixlen))
            .collect();
        if have != [spec.address.clone()] {
            ip(&["-n", ns, "addr", "flush", "dev", "eth0"]).await?;
            ip(&["-n", ns, "addr", "add", &spec.address, "dev", "eth0"]).await?;
        }
        let mut running = spec.running;
        if let Some(agents) = &self.agents {
            agents.set_boot(ns, spec.boot)?;
            if spec.running {
                // A running node keeps what it runs: a new boot device counts from its
                // next start (as a VM's boot order does).
                match agents.state(ns) {
                    AgentRun::Alive => {}
                    AgentRun::Off => agents.start(ns, spec.boot).await?,
                    AgentRun::Crashed => {
                        tracing::warn!(
                            node = ns,
                            "the node's agent is gone: reported, not restarted"
                        );
                        running = false;
                    }
                }
            } else {
                agents.stop(ns).await;
            }
        }
        let state = if running { "up" } else { "down" };
        ip(&["-n", ns, "link", "set", "dev", "eth0", state]).await?;
        Ok(FoundNode {
            slot,
            name: Some(spec.name.clone()),
            running,
        })
    }

    async fn power(&self, name: &str, on: bool) -> Result<bool, DriverError> {
        check_netns_name(name)?;
        if !netns_exists(name).await? {
            return Err(DriverError::Node {
                node: name.to_string(),
                message: "no such node on this host".to_string(),
            });
        }
        let Some(agents) = &self.agents else {
            return Err(DriverError::Node {
                node: name.to_string(),
                message: "this driver runs no node agents: no power control".to_string(),
            });
        };
        if on {
            let _ = std::fs::remove_file(agents.pid_file(name));
            agents.start(name, agents.boot(name)).await?;
            ip(&["-n", name, "link", "set", "dev", "eth0", "up"]).await?;
            return Ok(true);
        }
        // Fenced: off the network first, then every process in the namespace killed,
        // and a pid file that names no process, so that nothing restarts it but a
        // power-on.
        ip(&["-n", name, "link", "set", "dev", "eth0", "down"]).await?;
        write_atomically(&agents.pid_file(name), b"fenced\n").map_err(|e| DriverError::Node {
            node: name.to_string(),
            message: format!("marking it fenced: {e}"),
        })?;
        kill_everything_in(name).await?;
        let _ = std::fs::remove_file(agents.socket(name));
        Ok(false)
    }

    fn prepare_host(&self) {
        if self.agents.is_none() {
            return;
        }
        match raise_neighbour_limits() {
            Ok(changed) if changed.is_empty() => {}
            Ok(changed) => tracing::info!(
                ?changed,
                "raised the kernel's neighbour table limits: lightweight nodes share one ARP table"
            ),
            Err(e) => tracing::warn!(
                error = %e,
                "cannot raise the kernel's neighbour table limits (lightweight nodes share one ARP \
                 table of gc_thresh3 entries; past it, nodes stop reaching each other): raise \
                 net.ipv4.neigh.default.gc_thresh3 and net.ipv6.neigh.default.gc_thresh3 in the \
                 host's first network namespace"
            ),
        }
    }

    /// A lightweight node has no serial console: its agent's log stands in.
    fn console_log(&self, name: &str) -> Option<PathBuf> {
        let agents = self.agents.as_ref()?;
        check_netns_name(name).ok()?;
        Some(agents.dir.join(format!("{name}.log")))
    }

    /// None while the node installs: it has no agent yet, and is not watched.
    fn node_channel(&self, name: &str) -> Option<PathBuf> {
        let agents = self.agents.as_ref()?;
        check_netns_name(name).ok()?;
        (!agents.netbooting(name)).then(|| agents.socket(name))
    }

    async fn remove(&self, slot: NodeSlot, name: Option<&str>) -> Result<(), DriverError> {
        let veth = slot.host_veth_name();
        // Deleting one end of a veth deletes both, at once (a namespace's teardown can lag).
        if link_exists(&veth).await {
            ip(&["link", "del", "dev", &veth]).await?;
        }
        if let Some(ns) = name {
            check_netns_name(ns)?;
            if let Some(agents) = &self.agents {
                agents.stop(ns).await;
                let _ = std::fs::remove_file(agents.dir.join(format!("{ns}.log")));
            }
            if netns_exists(ns).await? {
                // A namespace outlives `ip netns del` while a process is in it: what
                // the node ran goes with it.
                kill_everything_in(ns).await?;
                ip(&["netns", "del", ns]).await?;
            }
            if let Some(agents) = &self.agents {
                agents.remove_disk(ns).await?;
            }
        }
        Ok(())
    }
}

/// Linux bridges through `ip link`.
#[derive(Debug, Default, Clone)]
pub struct LinuxBridges;

#[async_trait]
impl HostBridges for LinuxBridges {
    async fn ensure(&self, name: &str) -> Result<(), DriverError> {
        if !link_exists(name).await {
            ip(&["link", "add", "name", name, "type", "bridge"]).await?;
        }
        ip(&["link", "set", "dev", name, "up"]).await?;
        Ok(())
    }

    async fn remove(&self, name: &str) -> Result<(), DriverError> {
        if link_exists(name).await {
            ip(&["link", "del", "dev", name]).await?;
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<String>, DriverError> {
        Ok(links("bridge")
            .await?
            .into_iter()
            .map(|l| l.ifname)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blank_disk_does_not_boot_and_an_installed_or_absent_one_does() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("node.root");
        assert!(installed_or_absent(&root), "never provisioned: no root");
        std::fs::create_dir(&root).unwrap();
        assert!(!installed_or_absent(&root), "blank");
        std::fs::create_dir_all(root.join("etc/hostname")).unwrap();
        assert!(!installed_or_absent(&root), "etc/hostname is not a file");
        std::fs::remove_dir(root.join("etc/hostname")).unwrap();
        std::fs::write(root.join("etc/hostname"), "node\n").unwrap();
        assert!(installed_or_absent(&root));
    }
}
