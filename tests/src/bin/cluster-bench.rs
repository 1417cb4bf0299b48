//! How long a virtual cluster takes to come up and go away across sites, with the real
//! `vpnd`, controller and host agents (`bench/cluster/run`). Each round builds a fresh
//! topology (sites as namespaces, 5 ms each way on every access link), creates a cluster
//! of N lightweight nodes spread over the sites through the API, and measures: the create
//! task (request to every node running and the overlay up), the time until every node
//! reaches every other (all ordered pairs), and the delete task. Prints each round, then
//! medians and ranges, and writes bench/results/cluster-<date>.md.
//!
//! The all-pairs check runs one prober per node, through the cluster's own exec path:
//! `vcluster exec @all -- fping ...` pings every other node from each node at once (one
//! ping process per pair, 17,822 of them at 134 nodes, never converged on 2 cores). It
//! reports what the WAN carried meanwhile and how many ARP requests the sites' vpnd
//! answered locally instead of flooding them across the WAN.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;
use site_tests::{
    ControlPlane, ControlPlaneOpts, LinkParams, Overlay, Topology, find_command, unique_name,
};

#[derive(Parser)]
#[command(about = "Time creating and deleting a lightweight cluster across namespace sites")]
struct Args {
    /// Sites (each one hypervisor host with vpnd and a host agent).
    #[arg(long, default_value_t = 3)]
    sites: usize,
    /// Nodes in the cluster, spread over the sites.
    #[arg(long, default_value_t = 12)]
    nodes: usize,
    /// Rounds (each on a fresh topology).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Where to write the markdown result (default bench/results/cluster-<date>.md).
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

struct Round {
    create: Duration,
    all_pairs: Duration,
    delete: Duration,
    left: usize,
    /// Frames the WAN links carried from the create request to all pairs reachable.
    wan_frames: u64,
    /// ARP requests the sites' vpnd answered locally (never sent over the WAN).
    arp_replies: u64,
    /// fping rounds until every pair answered.
    probes: usize,
}

fn main() {
    let args = Args::parse();
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("cluster-bench: needs root (it creates network namespaces)");
        std::process::exit(1);
    }
    for cmd in ["ip", "ethtool", "nsenter", "fping"] {
        if find_command(cmd).is_none() {
            eprintln!("cluster-bench: `{cmd}` is missing: run scripts/install-deps first");
            std::process::exit(1);
        }
    }
    assert!(args.sites >= 1 && args.nodes >= 2 && args.rounds >= 1);
    // Every node ARPs for every other on one kernel: room in its shared neighbour table.
    let _limits = site_tests::cluster::NeighbourLimits::raise();
    let mut rounds = Vec::new();
    for r in 1..=args.rounds {
        let round = run_round(&args);
        println!(
            "round {r}: create {:.2} s, every pair reachable {:.2} s after the request ({} fping rounds), \
             delete {:.2} s, {} leftovers; WAN frames until all pairs {}, ARP answered by vpnd {}",
            round.create.as_secs_f64(),
            round.all_pairs.as_secs_f64(),
            round.probes,
            round.delete.as_secs_f64(),
            round.left,
            round.wan_frames,
            round.arp_replies
        );
        rounds.push(round);
    }
    let stat = |f: fn(&Round) -> Duration| {
        let mut v: Vec<f64> = rounds.iter().map(|r| f(r).as_secs_f64()).collect();
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[0], v[v.len() - 1])
    };
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Cluster lifecycle: {} lightweight nodes across {} sites\n",
        args.nodes, args.sites
    );
    let _ = writeln!(
        md,
        "`bench/cluster/run --nodes {} --sites {} --rounds {}`; real vpnd, controller (SQLite) \
         and host agents, sites as namespaces 10 ms RTT from the WAN bridge, {} rounds.\n",
        args.nodes, args.sites, args.rounds, args.rounds
    );
    let _ = writeln!(md, "| step | median | min | max |\n|---|---|---|---|");
    for (label, f) in [
        (
            "create (request to task succeeded)",
            (|r: &Round| r.create) as fn(&Round) -> Duration,
        ),
        ("request to every pair answering", |r: &Round| r.all_pairs),
        ("delete (task)", |r: &Round| r.delete),
    ] {
        let (med, min, max) = stat(f);
        let _ = writeln!(md, "| {label} | {med:.2} s | {min:.2} s | {max:.2} s |");
    }
    let left: usize = rounds.iter().map(|r| r.left).sum();
    let pairs = args.nodes * (args.nodes - 1);
    let _ = writeln!(
        md,
        "\nEvery pair is checked by one `fping` per node run through `vcluster exec` ({pairs} \
         ordered pairs). Per round: WAN frames (both directions, all sites' links) from the \
         create request until every pair answered, and the ARP requests the sites' vpnd answered \
         locally (never flooded over the WAN):\n"
    );
    let _ = writeln!(
        md,
        "| round | fping rounds | WAN frames | ARP answered by vpnd |\n|---|---|---|---|"
    );
    for (i, r) in rounds.iter().enumerate() {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            i + 1,
            r.probes,
            r.wan_frames,
            r.arp_replies
        );
    }
    let _ = writeln!(md, "\nLeft on the hosts after delete, all rounds: {left}.");
    println!("\n{md}");
    let out = args.out.unwrap_or_else(|| {
        let date = chrono_free_date();
        std::path::PathBuf::from(format!("bench/results/cluster-{date}.md"))
    });
    if let Err(e) = std::fs::write(&out, &md) {
        eprintln!("writing {}: {e}", out.display());
    } else {
        println!("written to {}", out.display());
    }
    if left > 0 {
        std::process::exit(1);
    }
}

/// Today's date (UTC) as YYYY-MM-DD, from `date`.
fn chrono_free_date() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "undated".into())
}

fn run_round(args: &Args) -> Round {
    let topo = Topology::builder()
        .sites(args.sites)
        .vms_per_site(0)
        .link_params(LinkParams::default().delay(Duration::from_millis(5)))
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
    let name = unique_name("bench");
    topo.reset_wan_stats();
    let started = Instant::now();
    let c = plane.create_cluster(&json!({
        "name": name,
        "nodes": args.nodes,
        "strategy": "spread",
        "node_memory_mib": 64,
        "recovery": "off",
    }));
    let create = started.elapsed();
    assert_eq!(c.nodes.len(), args.nodes, "{c:?}");
    for i in 1..=args.sites.min(args.nodes) {
        let site = format!("site{i}");
        assert!(
            c.nodes.iter().any(|n| n.site == site),
            "spread placed no node at {site}: {c:?}"
        );
    }
    // One prober per node: each pings every other node (fping: one process, all targets
    // at once), through `vcluster exec`; a round is done when every node's fping exits 0.
    let ips: Vec<&str> = c
        .nodes
        .iter()
        .map(|n| n.address.split('/').next().unwrap())
        .collect();
    // `-u`: only the unreachable targets are printed, one line each.
    let probe = format!("fping -u -r 1 -t 500 {}", ips.join(" "));
    let mut probes = 0;
    loop {
        probes += 1;
        let out = plane.cli(&["exec", "-S", "-c", &name, "@all", "--", &probe]);
        if out.success {
            break;
        }
        let unreachable: Vec<&str> = out
            .stdout
            .lines()
            // `fping -u` prints each unreachable target's address alone: "node: ADDRESS".
            .filter(|l| {
                l.rsplit_once(": ")
                    .is_some_and(|(_, a)| a.parse::<std::net::Ipv4Addr>().is_ok())
            })
            .collect();
        eprintln!(
            "probe {probes} at {:.1} s: {} pairs unreachable, e.g. {:?}",
            started.elapsed().as_secs_f64(),
            unreachable.len(),
            &unreachable[..unreachable.len().min(5)]
        );
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "pairs still unreachable after 120 s ({} pairs): {}\n{}",
            unreachable.len(),
            unreachable
                .iter()
                .take(20)
                .copied()
                .collect::<Vec<_>>()
                .join("\n"),
            out.stderr.lines().take(10).collect::<Vec<_>>().join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let all_pairs = started.elapsed();
    let wan = topo.wan_stats();
    let wan_frames = wan.a_to_b.tx_frames + wan.b_to_a.tx_frames;
    let arp_replies: u64 = (1..=args.sites)
        .map(|i| overlay.network(i, c.network_id).counters.arp_replies)
        .sum();
    let started = Instant::now();
    plane.delete_cluster(&name);
    let delete = started.elapsed();
    let left = plane.leftovers(&topo, &overlay, &c).len();
    Round {
        create,
        all_pairs,
        delete,
        left,
        wan_frames,
        arp_replies,
        probes,
    }
}
