//! `wanem-bench`: what the WAN emulator costs, measured against the raw link in the same
//! run. Needs root and iperf3; run it through `scripts/bench-wanem` (which builds the
//! release binaries first). Prints one table:
//! - TCP throughput (iperf3, 5 s) over a raw veth pair with offloads on (the kernel's
//!   best case), the same with offloads off (what the emulator's links use), and through
//!   `wanem` with no impairment;
//! - ping RTT over the raw pair and through `wanem` with no impairment, then with 10 ms
//!   one-way delay each way (expected 20 ms) to show the timing precision.

use std::time::Duration;

use site_tests::*;

fn main() {
    if !require_root("wanem-bench") || !require_command("wanem-bench", "iperf3") {
        std::process::exit(1);
    }
    let secs: u32 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    println!("wanem-bench: iperf3 TCP {secs} s per row, ping 200 x 10 ms per row\n");
    println!(
        "{:<44} {:>12} {:>10} {:>10} {:>10}",
        "path", "TCP Mbit/s", "rtt avg", "rtt max", "rtt mdev"
    );

    let dir = TempDir::new("bench");
    for offloads in [true, false] {
        let (x, y) = raw_pair(offloads);
        let label = if offloads {
            "raw veth, offloads on"
        } else {
            "raw veth, offloads off"
        };
        row(label, &x, &y, "10.98.0.2", secs, dir.path());
    }

    let pair = WanPair::new(1);
    row(
        "through wanem, no impairment",
        pair.left(),
        pair.right(),
        PAIR_RIGHT_ADDR,
        secs,
        dir.path(),
    );
    let s = pair.link().stats();
    println!(
        "  wanem counters: {} frames a->b, {} b->a, kernel drops {}/{}, queue drops {}",
        s.a_to_b.tx_frames,
        s.b_to_a.tx_frames,
        s.a_to_b.kernel_drops,
        s.b_to_a.kernel_drops,
        s.total().dropped_queue
    );

    pair.link().set(
        Dirs::Both,
        LinkParams::default().delay(Duration::from_millis(10)),
    );
    let p = ping_row(pair.left(), PAIR_RIGHT_ADDR);
    println!(
        "{:<44} {:>12} {:>10} {:>10} {:>10}   (expected 20.000 ms)",
        "through wanem, 10 ms each way",
        "-",
        fmt(p.rtt_avg),
        fmt(p.rtt_max),
        fmt(p.rtt_mdev)
    );
    pair.link().set(
        Dirs::Both,
        LinkParams::default()
            .rate_bps(50_000_000)
            .delay(Duration::from_millis(10)),
    );
    let mbit = iperf(pair.left(), pair.right(), PAIR_RIGHT_ADDR, secs, dir.path());
    println!(
        "{:<44} {:>12.1}   (expected just under 50)",
        "through wanem, 50 Mbit/s + 10 ms each way", mbit
    );
}

fn raw_pair(offloads: bool) -> (NetNs, NetNs) {
    let x = NetNs::new("bx");
    let y = NetNs::new("by");
    veth(&x, "eth0", &y, "eth0");
    for (ns, addr) in [(&x, "10.98.0.1/24"), (&y, "10.98.0.2/24")] {
        if !offloads {
            ns.disable_offloads("eth0");
        }
        ns.addr_add("eth0", addr);
        ns.link_up("eth0");
    }
    (x, y)
}

fn row(label: &str, client: &NetNs, server: &NetNs, addr: &str, secs: u32, dir: &std::path::Path) {
    let mbit = iperf(client, server, addr, secs, dir);
    let p = ping_row(client, addr);
    println!(
        "{:<44} {:>12.1} {:>10} {:>10} {:>10}",
        label,
        mbit,
        fmt(p.rtt_avg),
        fmt(p.rtt_max),
        fmt(p.rtt_mdev)
    );
}

fn ping_row(client: &NetNs, addr: &str) -> PingStats {
    client.ping(addr); // ARP resolved before timing
    client.ping_with(
        addr,
        &PingOpts::default()
            .count(200)
            .interval(Duration::from_millis(10)),
    )
}

/// TCP goodput client -> server in Mbit/s, as the receiver saw it.
fn iperf(client: &NetNs, server: &NetNs, addr: &str, secs: u32, dir: &std::path::Path) -> f64 {
    let _srv = server.spawn(
        "iperf3 server",
        &["iperf3", "-s", "-1", "-B", addr],
        &dir.join(format!("iperf-{}.log", server.name())),
    );
    wait_until("iperf3 server listening", Duration::from_secs(5), || {
        server
            .run(&["ss", "-Hltn", "sport = :5201"])
            .stdout
            .contains("5201")
    });
    let out = client.ok(&["iperf3", "-c", addr, "-t", &secs.to_string(), "-J"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("iperf3 -J output");
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("no end.sum_received.bits_per_second in iperf3 output: {out}"))
        / 1e6
}

fn fmt(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.3} ms", d.as_secs_f64() * 1000.0))
        .unwrap_or_else(|| "-".into())
}
