//! `vcluster exec` against clush and pdsh over ssh on the same nodes in the same run
//! (`bench/exec/run`). One topology: S sites as namespaces with the real vpnd, controller
//! and host agents, the WAN emulator giving R ms RTT between sites (R/2 between a site and
//! the controller's WAN bridge); a cluster of N lightweight nodes spread over the sites,
//! each running its node agent and an sshd. From site 1 (its host for `vcluster exec`, its
//! first node for clush and pdsh, both on the same WAN paths), each tool runs `true` on
//! every node, K rounds each, interleaved. Prints medians and ranges and writes
//! bench/results/exec-<date>.md.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;
use site_tests::{
    ControlPlane, ControlPlaneOpts, LinkParams, Overlay, Topology, find_command, unique_name,
    wait_until,
};
use vcluster::model::{Cluster, Health};

#[derive(Parser)]
#[command(about = "vcluster exec against clush and pdsh over ssh, same nodes, same run")]
struct Args {
    #[arg(long, default_value_t = 3)]
    sites: usize,
    #[arg(long, default_value_t = 134)]
    nodes: usize,
    /// Round-trip time between two sites, ms.
    #[arg(long, default_value_t = 20)]
    rtt_ms: u64,
    /// Rounds per tool.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Fan-out of every tool (clush's default is 64).
    #[arg(long, default_value_t = 64)]
    fanout: u32,
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

fn main() {
    let args = Args::parse();
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("exec-bench: needs root (it creates network namespaces)");
        std::process::exit(1);
    }
    for cmd in [
        "ip",
        "ethtool",
        "nsenter",
        "sshd",
        "ssh",
        "ssh-keygen",
        "clush",
        "pdsh",
    ] {
        let found = find_command(cmd).is_some() || Path::new(&format!("/usr/sbin/{cmd}")).exists();
        if !found {
            eprintln!(
                "exec-bench: `{cmd}` is missing: apt-get install openssh-server clustershell pdsh"
            );
            std::process::exit(1);
        }
    }
    // The nodes share one kernel's neighbour table: room for all of them.
    let _limits = site_tests::cluster::NeighbourLimits::raise();
    let d = Duration::from_micros(args.rtt_ms * 1000 / 4);
    let topo = Topology::builder()
        .sites(args.sites)
        .vms_per_site(0)
        .link_params(LinkParams::default().delay(d))
        .build();
    let overlay = Overlay::start_with(&topo, &[], |_, _| {});
    let plane = ControlPlane::start_with(
        &topo,
        &overlay,
        &ControlPlaneOpts {
            host_cpus: 256,
            host_memory_mib: 65536,
            task_timeout: 600,
            ..ControlPlaneOpts::default()
        },
    );
    let name = unique_name("xb");
    let started = Instant::now();
    let c: Cluster = plane.create_cluster(&json!({
        "name": name,
        "nodes": args.nodes,
        "strategy": "spread",
        "node_memory_mib": 64,
        "recovery": "off",
    }));
    println!(
        "{} nodes over {} sites created in {:.1} s",
        c.nodes.len(),
        args.sites,
        started.elapsed().as_secs_f64()
    );
    wait_until(
        "every node's agent answers",
        Duration::from_secs(120),
        || {
            plane
                .cluster(&name)
                .nodes
                .iter()
                .all(|n| n.health.as_ref().is_some_and(|h| h.health == Health::Up))
        },
    );

    // sshd in every node, one key pair for the client, one host key for all.
    let dir = topo.dir().join("ssh");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::create_dir_all("/run/sshd").unwrap();
    let key = dir.join("id");
    let host_key = dir.join("host");
    for (k, kind) in [(&key, "ed25519"), (&host_key, "ed25519")] {
        let ok = Command::new("ssh-keygen")
            .args(["-q", "-t", kind, "-N", "", "-f"])
            .arg(k)
            .status()
            .unwrap()
            .success();
        assert!(ok, "ssh-keygen");
    }
    let authorized = dir.join("authorized_keys");
    std::fs::copy(key.with_extension("pub"), &authorized).unwrap();
    let sshd_config = dir.join("sshd_config");
    std::fs::write(
        &sshd_config,
        format!(
            "HostKey {}\nAuthorizedKeysFile {}\nPermitRootLogin prohibit-password\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
             StrictModes no\nUseDNS no\nMaxStartups 1000\nMaxSessions 100\n",
            host_key.display(),
            authorized.display()
        ),
    )
    .unwrap();
    let sshd = find_command("sshd").unwrap_or_else(|| "/usr/sbin/sshd".into());
    for n in &c.nodes {
        let ip = n.address.split('/').next().unwrap();
        let ok = Command::new("ip")
            .args(["netns", "exec", &n.name])
            .arg(&sshd)
            .args(["-f"])
            .arg(&sshd_config)
            .args([
                "-o",
                &format!("ListenAddress={ip}"),
                "-o",
                &format!("PidFile={}/{}.pid", dir.display(), n.name),
            ])
            .status()
            .unwrap()
            .success();
        assert!(ok, "sshd in {}", n.name);
    }
    let ips: Vec<&str> = c
        .nodes
        .iter()
        .map(|n| n.address.split('/').next().unwrap())
        .collect();
    let targets = ips.join(",");
    let frontend = c
        .nodes
        .iter()
        .find(|n| n.site == "site1")
        .expect("a node at site 1")
        .name
        .clone();
    let ssh_opts = format!(
        "-i {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes \
         -o LogLevel=ERROR -o ConnectTimeout=10",
        key.display()
    );

    let vcluster_run = || {
        let t = Instant::now();
        let out = plane.cli_in(
            topo.host(1),
            &[
                "exec",
                "-b",
                "-S",
                "-f",
                &args.fanout.to_string(),
                "-c",
                &name,
                "@all",
                "--",
                "true",
            ],
        );
        let took = t.elapsed();
        let ok = out.success && out.stdout.contains(&format!("({})", args.nodes));
        (took, ok, out.stderr)
    };
    // An ssh tool run from the frontend node: wall time, success, stderr.
    let timed = |mut cmd: Command| {
        let t = Instant::now();
        let out = cmd.env("HOME", &dir).output().unwrap();
        (
            t.elapsed(),
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let clush_run = || {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &frontend, "clush", "-S", "-b", "-f"])
            .arg(args.fanout.to_string())
            .args(["-o", &ssh_opts, "-w", &targets, "true"]);
        timed(cmd)
    };
    let pdsh_run = || {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &frontend, "pdsh", "-S", "-R", "ssh", "-f"])
            .arg(args.fanout.to_string())
            .args(["-w", &targets, "true"])
            .env("PDSH_SSH_ARGS_APPEND", &ssh_opts);
        timed(cmd)
    };
    type Run<'a> = Box<dyn Fn() -> (Duration, bool, String) + 'a>;
    let tools: Vec<(&str, Run)> = vec![
        (
            "vcluster exec (TLS, controller → host agents → node agents)",
            Box::new(vcluster_run),
        ),
        ("clush over ssh", Box::new(clush_run)),
        ("pdsh -R ssh", Box::new(pdsh_run)),
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); tools.len()];
    let mut failures: Vec<usize> = vec![0; tools.len()];
    for round in 1..=args.rounds {
        for (i, (label, run)) in tools.iter().enumerate() {
            let (took, ok, err) = run();
            println!(
                "round {round}: {label}: {:.3} s{}",
                took.as_secs_f64(),
                if ok {
                    String::new()
                } else {
                    format!(" FAILED: {}", err.trim())
                }
            );
            if ok {
                times[i].push(took.as_secs_f64());
            } else {
                failures[i] += 1;
            }
        }
    }
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Parallel exec: `true` on {} lightweight nodes over {} sites, {} ms RTT between sites\n",
        args.nodes, args.sites, args.rtt_ms
    );
    let _ = writeln!(
        md,
        "`bench/exec/run --nodes {} --sites {} --rtt-ms {} --rounds {} --fanout {}`: one topology, real \
         vpnd, controller and host agents; from site 1 ({} ms RTT to the controller, {} ms to the other \
         sites), {} rounds per tool, interleaved, fan-out {} for each. Wall time of the whole command, \
         process start to exit (the CLI's TLS handshake included; for clush and pdsh, every ssh \
         connection).\n",
        args.nodes,
        args.sites,
        args.rtt_ms,
        args.rounds,
        args.fanout,
        args.rtt_ms / 2,
        args.rtt_ms,
        args.rounds,
        args.fanout
    );
    let _ = writeln!(
        md,
        "| tool | median | min | max | failed runs |\n|---|---|---|---|---|"
    );
    for (i, (label, _)) in tools.iter().enumerate() {
        let mut v = times[i].clone();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            let _ = writeln!(md, "| {label} | - | - | - | {} |", failures[i]);
        } else {
            let _ = writeln!(
                md,
                "| {label} | {:.3} s | {:.3} s | {:.3} s | {} |",
                v[v.len() / 2],
                v[0],
                v[v.len() - 1],
                failures[i]
            );
        }
    }
    println!("\n{md}");
    let out = args.out.unwrap_or_else(|| {
        let date = Command::new("date")
            .args(["-u", "+%Y-%m-%d"])
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| "undated".into());
        std::path::PathBuf::from(format!("bench/results/exec-{date}.md"))
    });
    match std::fs::write(&out, &md) {
        Ok(()) => println!("written to {}", out.display()),
        Err(e) => eprintln!("writing {}: {e}", out.display()),
    }
    // sshd processes live in the nodes' namespaces: deleting the cluster kills them.
    plane.delete_cluster(&name);
    if failures.iter().any(|&f| f > 0) {
        std::process::exit(1);
    }
}
