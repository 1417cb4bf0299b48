//! [`NetNs`]: a network namespace owned by one test. It runs commands (`ip netns exec`),
//! spawns long-running [`Process`]es, runs Rust closures on a thread moved into it
//! ([`NetNs::in_ns`]), and configures links and addresses. On drop it kills every process
//! still inside and deletes itself, so a failing test leaves nothing behind. Leftovers of
//! a test process that was killed outright are swept by the next [`NetNs::new`].

use std::ffi::OsStr;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use crate::env::{NS_PREFIX, unique_name};
use crate::process::Process;

/// What a finished command printed, and how it ended.
#[derive(Clone, Debug)]
pub struct CmdOutput {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for CmdOutput {
    fn from(o: Output) -> CmdOutput {
        CmdOutput {
            success: o.status.success(),
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Runs `cmd` to completion; panics (naming the command, with its stderr) on failure.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    if !out.success {
        panic!(
            "command failed ({:?}): {cmd:?}\nstderr: {}\nstdout: {}",
            out.code,
            out.stderr.trim(),
            out.stdout.trim()
        );
    }
    out.stdout
}

/// Runs `cmd` to completion with stdin closed.
pub fn run(cmd: &mut Command) -> CmdOutput {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
        .into()
}

/// Runs `ip -batch -` (in namespace `ns`, or the current one) over `lines`: one process
/// for many link/address changes. Panics with the failing line on error.
pub fn ip_batch(ns: Option<&str>, lines: &[String]) {
    if lines.is_empty() {
        return;
    }
    let mut cmd = Command::new("ip");
    if let Some(ns) = ns {
        cmd.args(["-n", ns]);
    }
    cmd.args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run ip -batch");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(lines.join("\n").as_bytes())
        .expect("write to ip -batch");
    let out: CmdOutput = child.wait_with_output().expect("wait for ip").into();
    if !out.success {
        panic!(
            "ip -batch failed in namespace {}: {}\ncommands:\n{}",
            ns.unwrap_or("(current)"),
            out.stderr.trim(),
            lines.join("\n")
        );
    }
}

/// A network namespace, deleted (with everything running in it) on drop.
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `st<pid>-<n>-<tag>` with loopback up and, unless [`NetNs::enable_ipv6`] is
    /// called, IPv6 off (no router solicitations or MLD reports adding stray frames to
    /// the counters tests assert on).
    pub fn new(tag: &str) -> NetNs {
        sweep_leftovers();
        let name = unique_name(tag);
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns.sysctl("net/ipv6/conf/all/disable_ipv6", "1");
        ns.sysctl("net/ipv6/conf/default/disable_ipv6", "1");
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Turns IPv6 back on for interfaces created from now on (and `lo`, `all`).
    pub fn enable_ipv6(&self) {
        self.sysctl("net/ipv6/conf/all/disable_ipv6", "0");
        self.sysctl("net/ipv6/conf/default/disable_ipv6", "0");
    }

    /// Writes `/proc/sys/<key>` inside the namespace (`key` with slashes, e.g.
    /// `net/ipv4/ip_forward`).
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = Path::new("/proc/sys").join(key);
        self.in_ns(|| std::fs::write(&path, value))
            .unwrap_or_else(|e| panic!("{}: write {}: {e}", self.name, path.display()));
    }

    /// `ip netns exec <ns> program args...`, not yet started.
    pub fn command<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        netns_exec(&self.name, program, args)
    }

    /// `nsenter --net=/run/netns/<ns> program args...`, not yet started: the program
    /// enters only the network namespace. `ip netns exec` also gives it a private mount
    /// namespace, so namespaces it creates itself (`ip netns add`, as a host agent does
    /// for its nodes) would be invisible to everyone else; use this for such programs.
    pub fn command_net_only<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let nsenter = crate::env::find_command("nsenter")
            .unwrap_or_else(|| panic!("nsenter not found: apt-get install util-linux"));
        let mut c = Command::new(nsenter);
        c.arg(format!("--net=/run/netns/{}", self.name))
            .arg(program)
            .args(args);
        c
    }

    /// Runs `argv` in the namespace to completion, whatever its exit status.
    pub fn run<S: AsRef<OsStr>>(&self, argv: &[S]) -> CmdOutput {
        let (prog, args) = argv.split_first().expect("argv has a program");
        run(&mut self.command(prog, args))
    }

    /// Runs `argv` in the namespace; panics with its stderr unless it succeeds; returns
    /// its stdout.
    pub fn ok<S: AsRef<OsStr>>(&self, argv: &[S]) -> String {
        let (prog, args) = argv.split_first().expect("argv has a program");
        run_ok(&mut self.command(prog, args))
    }

    /// Runs a shell script in the namespace; panics with its stderr unless it succeeds.
    pub fn sh(&self, script: &str) -> String {
        self.ok(&["sh", "-c", script])
    }

    /// `ip -n <ns> args...`; panics on failure.
    pub fn ip<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        run_ok(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// Several `ip` commands in one process (see [`ip_batch`]).
    pub fn ip_batch(&self, lines: &[String]) {
        ip_batch(Some(&self.name), lines);
    }

    /// Starts a long-running `argv` in the namespace with its output in `log`; stopped
    /// when the returned guard drops.
    pub fn spawn<S: AsRef<OsStr>>(&self, name: &str, argv: &[S], log: &Path) -> Process {
        let (prog, args) = argv.split_first().expect("argv has a program");
        Process::spawn(
            format!("{name} in {}", self.name),
            self.command(prog, args),
            log,
        )
    }

    /// Like [`NetNs::spawn`], but the program enters only the network namespace (see
    /// [`NetNs::command_net_only`]).
    pub fn spawn_net_only<S: AsRef<OsStr>>(&self, name: &str, argv: &[S], log: &Path) -> Process {
        let (prog, args) = argv.split_first().expect("argv has a program");
        Process::spawn(
            format!("{name} in {}", self.name),
            self.command_net_only(prog, args),
            log,
        )
    }

    /// Runs `f` on a thread that has entered this namespace and returns its result (a
    /// panic in `f` propagates). Sockets made in `f` stay in the namespace when moved out.
    pub fn in_ns<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        in_netns(&self.name, f)
    }

    /// Adds `cidr` (e.g. `10.77.1.2/16`) to `dev`.
    pub fn addr_add(&self, dev: &str, cidr: &str) {
        self.ip(&["addr", "add", cidr, "dev", dev]);
    }

    pub fn link_up(&self, dev: &str) {
        self.ip(&["link", "set", "dev", dev, "up"]);
    }

    pub fn set_mtu(&self, dev: &str, mtu: u32) {
        self.ip(&["link", "set", "dev", dev, "mtu", &mtu.to_string()]);
    }

    /// A bridge that forwards at once (no STP, no forward delay), multicast snooping off
    /// so multicast floods like broadcast, brought up.
    pub fn add_bridge(&self, name: &str) {
        self.ip(&[
            "link",
            "add",
            name,
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
            "mcast_snooping",
            "0",
        ]);
        self.link_up(name);
    }

    /// Enslaves `dev` to `bridge` and brings it up.
    pub fn set_master(&self, dev: &str, bridge: &str) {
        self.ip(&["link", "set", "dev", dev, "master", bridge, "up"]);
    }

    /// Turns checksum, segmentation, GRO and VLAN offloads off on `dev`, so every frame on
    /// it is a complete, wire-sized frame with its 802.1Q tag inline (what the WAN
    /// emulator needs; docs/wanem.md).
    pub fn disable_offloads(&self, dev: &str) {
        let ethtool = crate::env::find_command("ethtool").unwrap_or_else(|| {
            panic!("ethtool not found: apt-get install ethtool (it is in .ci/run)")
        });
        let ethtool = ethtool.to_string_lossy().into_owned();
        self.ok(&[
            ethtool.as_str(),
            "-K",
            dev,
            "tx",
            "off",
            "sg",
            "off",
            "tso",
            "off",
            "gso",
            "off",
            "gro",
            "off",
            "txvlan",
            "off",
            "rxvlan",
            "off",
        ]);
    }

    /// Pids of every process in the namespace (`ip netns pids`).
    pub fn pids(&self) -> Vec<u32> {
        pids_in(&self.name)
    }

    /// `ping` from this namespace (see [`crate::ping`]).
    pub fn ping(&self, addr: &str) -> crate::PingStats {
        crate::ping::ping(self, addr, &crate::PingOpts::default())
    }

    pub fn ping_with(&self, addr: &str, opts: &crate::PingOpts) -> crate::PingStats {
        crate::ping::ping(self, addr, opts)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        delete_ns(&self.name);
    }
}

fn pids_in(name: &str) -> Vec<u32> {
    let out = run(Command::new("ip").args(["netns", "pids", name]));
    out.stdout
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Kills everything in namespace `name`, then deletes it.
fn delete_ns(name: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = pids_in(name);
        if pids.is_empty() || Instant::now() > deadline {
            break;
        }
        for pid in pids {
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = run(Command::new("ip").args(["netns", "del", name]));
    if !out.success {
        eprintln!("warning: ip netns del {name}: {}", out.stderr.trim());
    }
}

/// Deletes namespaces this library made in processes that no longer exist (a test binary
/// killed by a timeout cannot run its drops). Once per process.
fn sweep_leftovers() {
    static SWEEP: Once = Once::new();
    SWEEP.call_once(|| {
        let out = run(Command::new("ip").args(["netns", "list"]));
        for line in out.stdout.lines() {
            let Some(name) = line.split_whitespace().next() else {
                continue;
            };
            let Some(rest) = name.strip_prefix(NS_PREFIX) else {
                continue;
            };
            let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                eprintln!("removing leftover namespace {name} of dead test process {pid}");
                delete_ns(name);
            }
        }
    });
}

/// [`NetNs::in_ns`] for the namespace called `name`, which this process need not own.
pub fn in_netns<R: Send>(name: &str, f: impl FnOnce() -> R + Send) -> R {
    let path = format!("/run/netns/{name}");
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                panic!("setns {path}: {}", std::io::Error::last_os_error());
            }
            f()
        });
        h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

/// `ip netns exec <name> program args...`, not yet started: a command in any named
/// namespace, also one this library does not own (a node a host agent made).
pub fn netns_exec<I, S>(name: &str, program: impl AsRef<OsStr>, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new("ip");
    c.args(["netns", "exec", name]).arg(program).args(args);
    c
}

/// A veth pair: `a_dev` in `a`, `b_dev` in `b`, both down. Names only need to be unique
/// within their own namespace.
pub fn veth(a: &NetNs, a_dev: &str, b: &NetNs, b_dev: &str) {
    run_ok(Command::new("ip").args([
        "link",
        "add",
        a_dev,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        b_dev,
        "netns",
        b.name(),
    ]));
}

/// Names of all namespaces on the machine (for asserting a test left nothing behind).
pub fn list_namespaces() -> Vec<String> {
    run(Command::new("ip").args(["netns", "list"]))
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}
