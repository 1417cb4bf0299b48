//! How long a virtual cluster takes to come up and go away across sites, with the real
//! `vpnd`, controller and host agents (`bench/cluster/run`). Each round builds a fresh
//! topology (sites as namespaces, 5 ms each way on every access link), creates a cluster
//! of N lightweight nodes spread over the sites through the API, and measures: the create
//! task (request to every node running and the overlay up), the time until every node
//! reaches every other (all ordered pairs ping), and the delete task. Prints each round,
//! then medians and ranges, and writes bench/results/cluster-<date>.md.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;
use site_tests::{
    ControlPlane, LinkParams, Overlay, Topology, find_command, unique_name, unreachable_pairs,
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
}

fn main() {
    let args = Args::parse();
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("cluster-bench: needs root (it creates network namespaces)");
        std::process::exit(1);
    }
    for cmd in ["ip", "ethtool", "nsenter", "ping"] {
        if find_command(cmd).is_none() {
            eprintln!("cluster-bench: `{cmd}` is missing: run scripts/install-deps first");
            std::process::exit(1);
        }
    }
    assert!(args.sites >= 1 && args.nodes >= 2 && args.rounds >= 1);
    let mut rounds = Vec::new();
    for r in 1..=args.rounds {
        let round = run_round(&args);
        println!(
            "round {r}: create {:.2} s, every pair reachable {:.2} s after the request, delete {:.2} s, {} leftovers",
            round.create.as_secs_f64(),
            round.all_pairs.as_secs_f64(),
            round.delete.as_secs_f64(),
            round.left
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
        ("request to every pair pinging", |r: &Round| r.all_pairs),
        ("delete (task)", |r: &Round| r.delete),
    ] {
        let (med, min, max) = stat(f);
        let _ = writeln!(md, "| {label} | {med:.2} s | {min:.2} s | {max:.2} s |");
    }
    let left: usize = rounds.iter().map(|r| r.left).sum();
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
    let plane = ControlPlane::start(&topo, &overlay);
    let name = unique_name("bench");
    let started = Instant::now();
    let c = plane.create_cluster(&json!({
        "name": name,
        "nodes": args.nodes,
        "strategy": "spread",
        "node_memory_mib": 64,
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
    let mut missing = unreachable_pairs(&c.nodes);
    while !missing.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "pairs still unreachable after 60 s: {missing:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
        missing = unreachable_pairs(&c.nodes);
    }
    let all_pairs = started.elapsed();
    let started = Instant::now();
    plane.delete_cluster(&name);
    let delete = started.elapsed();
    let left = plane.leftovers(&topo, &overlay, &c).len();
    Round {
        create,
        all_pairs,
        delete,
        left,
    }
}
