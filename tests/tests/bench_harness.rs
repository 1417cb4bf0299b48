//! The overlay benchmark tools run end to end: `bench/overlay/run` (in a very short
//! form, vpnd rows only) writes its table and the wake-up floor, and
//! `bench/overlay/cpu-ab` reports CPU per GB for two builds; neither leaves a namespace
//! behind. The figures themselves are not asserted (a debug build on a shared machine):
//! that the tools measure something, and say so in their output, is.

use std::path::{Path, PathBuf};
use std::process::Command;

use site_tests::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_path_buf()
}

fn tools_present(test: &str) -> bool {
    require_root(test) && require_command(test, "iperf3") && require_command(test, "python3")
}

/// Namespaces the harness (process `pid`) created and did not delete.
fn leftovers_of(pid: u32) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("ovb-{pid}-")))
        .map(str::to_string)
        .collect()
}

/// Runs one of the bench tools to completion and returns its stdout; fails the test,
/// with everything it printed, if it fails or leaves a namespace of its own behind.
fn run_tool(mut cmd: Command, what: &str) -> String {
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {what}: {e}"));
    let pid = child.id();
    let result = child.wait_with_output().expect(what);
    let stdout = String::from_utf8_lossy(&result.stdout).to_string();
    assert!(
        result.status.success(),
        "{what} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert_eq!(
        leftovers_of(pid),
        Vec::<String>::new(),
        "{what} left namespaces behind"
    );
    stdout
}

/// The first number in a markdown table cell, e.g. "9.91 (9.14–12.06)" -> 9.91.
fn first_number(cell: &str) -> Option<f64> {
    cell.split_whitespace().next()?.parse().ok()
}

#[test]
fn the_overlay_bench_measures_both_vpnd_rows_and_the_wake_up_floor() {
    if !tools_present("the_overlay_bench_measures_both_vpnd_rows_and_the_wake_up_floor") {
        return;
    }
    let dir = TempDir::new("bench");
    let out = dir.join("overlay.md");
    let mut cmd = Command::new(repo().join("bench/overlay/run"));
    cmd.current_dir(repo())
        .args([
            "--only",
            "vpnd,vpnd-poll",
            "--duration",
            "2",
            "--rounds",
            "1",
        ])
        .args(["--ping-count", "10", "--settle", "0", "--vpnd"])
        .arg(bin_path("vpnd"))
        .arg("--out")
        .arg(&out);
    let log = run_tool(cmd, "bench/overlay/run");

    let table = std::fs::read_to_string(&out).expect("the results file");
    for row in ["raw veth", "vpnd", "vpnd busy-poll"] {
        let line = table
            .lines()
            .find(|l| l.starts_with(&format!("| {row} |")))
            .unwrap_or_else(|| panic!("no row for {row}:\n{table}"));
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | contender | TCP ×1 | TCP ×4 | UDP kpps | RTT ms | ...
        for (i, what) in [(2, "TCP ×1"), (3, "TCP ×4"), (4, "UDP kpps"), (5, "RTT")] {
            let v = first_number(cells[i])
                .unwrap_or_else(|| panic!("{row}: {what} is not a number: {line}\n{log}"));
            assert!(v > 0.0, "{row}: {what} = {v}: {line}");
        }
        if row != "raw veth" {
            let cpu_ping = first_number(cells[11])
                .unwrap_or_else(|| panic!("{row}: CPU % ping missing: {line}"));
            assert!(cpu_ping >= 0.0, "{line}");
        }
    }
    let floor = table
        .lines()
        .find(|l| l.starts_with("Userspace UDP echo over the raw veth"))
        .unwrap_or_else(|| panic!("no wake-up floor line:\n{table}"));
    let ms = floor
        .split("**")
        .nth(1)
        .and_then(first_number)
        .unwrap_or_else(|| panic!("the floor has no figure: {floor}"));
    assert!(ms > 0.0 && ms < 1000.0, "{floor}");
    assert!(
        table.contains("busy_poll_us = 50000"),
        "the set-up notes say what the busy-poll row changes:\n{table}"
    );
}

#[test]
fn cpu_ab_reports_cpu_per_gigabyte_for_two_builds() {
    if !tools_present("cpu_ab_reports_cpu_per_gigabyte_for_two_builds") {
        return;
    }
    let vpnd = bin_path("vpnd");
    let mut cmd = Command::new(repo().join("bench/overlay/cpu-ab"));
    cmd.arg(&vpnd).arg(&vpnd).args([
        "--rounds",
        "1",
        "--runs",
        "1",
        "--seconds",
        "2",
        "--rate",
        "200M",
    ]);
    let out = run_tool(cmd, "bench/overlay/cpu-ab");
    // One run per binary: "base 1 <Gbit/s> <send ms/GB> <recv ms/GB>", then "new 1 ...".
    for name in ["base", "new"] {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")) && l.split_whitespace().count() == 5)
            .unwrap_or_else(|| panic!("no run of {name}:\n{out}"));
        let v: Vec<f64> = line
            .split_whitespace()
            .skip(2)
            .map(|x| x.parse().expect("a number"))
            .collect();
        assert!(v[0] > 0.05, "{name} moved almost nothing: {line}");
        assert!(v[1] > 0.0 && v[2] > 0.0, "{name}: no CPU measured: {line}");
    }
    for side in ["sender", "receiver"] {
        let ratio: f64 = out
            .lines()
            .find_map(|l| l.strip_prefix(&format!("new ÷ base, {side}: ")))
            .unwrap_or_else(|| panic!("no {side} ratio:\n{out}"))
            .trim()
            .parse()
            .expect("a ratio");
        assert!(ratio.is_finite() && ratio > 0.0, "{side}: {ratio}");
    }
}
