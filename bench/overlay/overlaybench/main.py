"""The benchmark run: options, building vpnd, the round-robin loop, and the results file.

One turn = one contender in fresh sites: start it, ping, TCP ×1, TCP ×4, UDP 64 B, stop
it, delete the sites. One round = one turn of every available contender, the order rotated
each round so no contender always runs first (or right after the same neighbour). The
tables report medians over rounds with min–max.
"""
import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from . import measure, report
from .contenders import all_contenders
from .topology import Sites, SetupError, sweep_stale

REPO = os.path.realpath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
PING_INTERVAL = 0.01
UDP_PAYLOAD = 64


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="bench/overlay/run",
        description="Benchmark vpnd against raw veth, OpenVPN TAP, tinc, vpncloud and n2n "
                    "between two network namespaces (see docs/bench.md). Needs root.")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 3 s per test, 1 round, 50 pings (explicit options win)")
    p.add_argument("--duration", type=float, help="seconds per iperf3 test (default 10)")
    p.add_argument("--rounds", type=int, help="round-robin rounds (default 3)")
    p.add_argument("--ping-count", type=int, help="pings per turn, 10 ms apart (default 200)")
    p.add_argument("--udp-rate", default="0",
                   help="offered UDP rate, iperf3 -b syntax; 0 = as fast as the sender can "
                        "(default 0)")
    p.add_argument("--settle", type=float, default=30,
                   help="before each turn, wait up to this many seconds for other processes "
                        "to use under 20%% of the machine (default 30; 0 = never wait)")
    p.add_argument("--only", help="comma-separated contenders to run (raw always runs): "
                                  "vpnd,vpnd-poll,openvpn,tinc,vpncloud,n2n")
    p.add_argument("--no-build", action="store_true",
                   help="do not run cargo build; use the existing target/release/vpnd")
    p.add_argument("--vpnd", help="path to a vpnd binary to use instead of building one")
    p.add_argument("--out", help="results file (default bench/results/overlay-<date>.md)")
    p.add_argument("--install", action="store_true",
                   help="first install what is missing: iperf3, openvpn, tinc, n2n (apt-get) "
                        "and vpncloud (cargo install)")
    p.add_argument("--keep-logs", action="store_true",
                   help="keep the work directory (configs, daemon logs) and print its path")
    a = p.parse_args(argv)
    a.duration = a.duration or (3 if a.quick else 10)
    a.rounds = a.rounds or (1 if a.quick else 3)
    a.ping_count = a.ping_count or (50 if a.quick else 200)
    if a.duration < 2 or a.rounds < 1 or a.ping_count < 10:
        p.error("need --duration >= 2, --rounds >= 1, --ping-count >= 10")
    return a


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def build_vpnd(args, workdir):
    """Builds vpnd in release mode; returns (binary or None, error or None)."""
    if args.vpnd:
        return os.path.realpath(args.vpnd), None
    default = os.path.join(REPO, "target", "release", "vpnd")
    if args.no_build:
        return default, None
    if not shutil.which("cargo"):
        return None, "cargo not found: cannot build vpnd"
    log("building vpnd: cargo build --release -p vpn-daemon ...")
    build_log = os.path.join(workdir, "cargo-build.log")
    with open(build_log, "w") as f:
        p = subprocess.run(["cargo", "build", "--release", "-p", "vpn-daemon",
                            "--message-format=json-render-diagnostics"],
                           cwd=REPO, stdout=subprocess.PIPE, stderr=f, text=True)
    binary = None
    for line in p.stdout.splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if msg.get("reason") == "compiler-artifact" and msg.get("executable") and \
                msg["target"]["name"] == "vpnd":
            binary = msg["executable"]
    if p.returncode != 0:
        with open(build_log) as f:
            errors = [l.strip() for l in f if l.startswith("error")]
        return None, "cargo build failed: " + (errors[0] if errors else f"exit {p.returncode}")
    return binary or default, None


DEBIAN_PACKAGES = {"iperf3": "iperf3", "openvpn": "openvpn", "openssl": "openssl",
                   "tincd": "tinc", "edge": "n2n", "ip": "iproute2", "ping": "iputils-ping",
                   "ss": "iproute2"}


def install_missing():
    """Installs the peers and tools that are not there yet; a failure is reported, not fatal
    (the contender then shows as not available)."""
    missing = sorted({pkg for exe, pkg in DEBIAN_PACKAGES.items() if not shutil.which(exe)})
    if missing:
        log(f"installing {' '.join(missing)} (apt-get)")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends"] + missing,
                       env=env)
    if not (shutil.which("vpncloud") or os.path.exists(os.path.expanduser("~/.cargo/bin/vpncloud"))):
        log("installing vpncloud (cargo install vpncloud)")
        if subprocess.run(["cargo", "install", "vpncloud"]).returncode != 0:
            log("cargo install vpncloud failed: vpncloud will show as not available")


def source_rev():
    r = subprocess.run(["git", "-C", REPO, "describe", "--always", "--dirty"],
                       capture_output=True, text=True)
    return r.stdout.strip() or "?"


def run_turn(c, sites, args, rundir):
    """One contender's turn in fresh sites; returns its sample dict for this round."""
    s = {"errors": []}
    try:
        procs = c.start(sites, rundir)
    except SetupError as e:
        s["errors"].append(f"setup: {e}")
        return s
    pids = [p.pid for p in procs]
    if pids:
        s["rss_before"] = measure.rss_mib(pids)
    try:
        cpu = measure.CpuSample(pids)
        s["rtt"] = measure.ping_rtt_ms(sites, c.target, args.ping_count, PING_INTERVAL)
        if pids:
            s["cpu_ping"] = cpu.percent()
    except measure.MeasureError as e:
        s["errors"].append(str(e))
    if c.key == "raw":
        try:
            s["echo"] = measure.udp_echo_rtt_ms(sites, c.target, args.ping_count, PING_INTERVAL)
        except measure.MeasureError as e:
            s["errors"].append(str(e))
    server = measure.IperfServer(sites, c.target)
    try:
        server.start()
    except measure.MeasureError as e:
        s["errors"].append(str(e))
        return s
    tests = [
        ("tcp1", lambda: measure.tcp_gbps(sites, c.target, 1, args.duration)),
        ("tcp4", lambda: measure.tcp_gbps(sites, c.target, 4, args.duration)),
        ("udp", lambda: measure.udp_pps(sites, c.target, UDP_PAYLOAD, args.udp_rate,
                                         args.duration)),
    ]
    for name, test in tests:
        time.sleep(1)  # let queues drain and the previous test's sockets close
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            s["errors"].append(f"before {name}: a daemon exited ({shlex.join(dead[0].args[3:])})")
            return s
        try:
            cpu = measure.CpuSample(pids)
            s[name] = test()
            if pids:
                s[f"cpu_{name}"] = cpu.percent()
        except FileNotFoundError:  # /proc/<pid> vanished
            s["errors"].append(f"{name}: a daemon exited during the test")
            return s
        except measure.MeasureError as e:
            s["errors"].append(str(e))
            try:
                server.restart()
            except measure.MeasureError as e:
                s["errors"].append(str(e))
                return s
    if any(p.poll() is not None for p in procs):
        s["errors"].append("a daemon exited during the tests")
    elif pids:
        s["rss_after"] = measure.rss_mib(pids)
    return s


QUIET_FOREIGN_PERCENT = 20


def settle(max_wait):
    """Waits (up to max_wait s) until the rest of the machine is quiet; returns the wait."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < max_wait:
        sample = measure.ForeignLoad()
        time.sleep(1)
        if sample.percent() < QUIET_FOREIGN_PERCENT:
            break
    return time.monotonic() - t0


def progress_line(c, s):
    parts = []
    for k, unit, scale, dec in (("tcp1", "Gbit/s ×1", 1, 2), ("tcp4", "Gbit/s ×4", 1, 2),
                                ("udp", "kpps", 1e-3, 1), ("rtt", "ms RTT", 1, 3)):
        if s.get(k) is not None:
            parts.append(f"{s[k] * scale:.{dec}f} {unit}")
    if s.get("cpu_tcp1") is not None:
        parts.append(f"CPU ×1 {s['cpu_tcp1']:.0f}%")
    if s.get("foreign") is not None:
        parts.append(f"others {s['foreign']:.0f}%")
    line = f"  {c.label:<12} " + ", ".join(parts)
    if s["errors"]:
        line += "  [" + "; ".join(s["errors"])[:300] + "]"
    return line


def machine_facts(contenders, unavailable, args):
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem = f.readline().split()[1]
    facts = [
        ("date", datetime.datetime.now().astimezone().isoformat(timespec="seconds")),
        ("command", shlex.join(["bench/overlay/run"] + sys.argv[1:])),
        ("CPUs (nproc)", f"{os.cpu_count()} × {cpu}"),
        ("memory", f"{int(mem) / 1024 / 1024:.1f} GiB"),
        ("kernel", platform.release()),
        ("load average at start", args.load_start),
        ("iperf3", subprocess.run(["iperf3", "--version"], capture_output=True,
                                  text=True).stdout.splitlines()[0]),
        ("tests", f"{args.duration:g} s per iperf3 test, {args.rounds} round(s), "
                  f"{args.ping_count} pings at {PING_INTERVAL * 1000:.0f} ms, UDP payload "
                  f"{UDP_PAYLOAD} B offered at -b {args.udp_rate}; each turn waited up to "
                  f"{args.settle:g} s for other processes to use < {QUIET_FOREIGN_PERCENT}% CPU"),
    ]
    for c in contenders:
        facts.append((c.label, c.version if c.key not in unavailable
                      else f"not available: {unavailable[c.key]}"))
    return facts


def results_path(args):
    if args.out:
        return args.out
    d = os.path.join(REPO, "bench", "results")
    os.makedirs(d, exist_ok=True)
    base = f"overlay-{datetime.date.today().isoformat()}"
    path, n = os.path.join(d, base + ".md"), 2
    while os.path.exists(path):
        path, n = os.path.join(d, f"{base}-{n}.md"), n + 1
    return path


def write_results(path, facts, table, ratios, floor, setups, samples, load_end):
    lines = ["# Overlay benchmark", "",
             "Two network namespaces joined by a veth pair; every overlay's TAP at MTU 1400; "
             "iperf3 and ping from site A to site B (docs/bench.md). Cells: median over "
             "rounds (min–max). CPU: both sites' daemons summed, % of one core. RSS: both "
             "daemons summed.", "", table, "", "vpnd's median divided by each contender's:",
             "", ratios, "", floor, "", "## Machine and versions", ""]
    lines += [f"- {k}: {v}" for k, v in facts]
    lines += [f"- load average at end: {load_end}", "", "## How each contender was set up", ""]
    lines += [f"- {label}: {note}" for label, note in setups]
    lines += ["", "## Every round", "", samples, ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def main(argv):
    args = parse_args(argv)
    if os.geteuid() != 0:
        log("bench/overlay/run needs root (network namespaces, TAP devices)")
        return 2
    if args.install:
        install_missing()
    if not shutil.which("iperf3"):
        log("iperf3 not found: apt-get install iperf3")
        return 2

    # Ctrl-C arrives as KeyboardInterrupt; TERM and HUP are made to do the same, so every
    # `with Sites(...)` block and the finally below clean up on any way out.
    def interrupted(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with INT ignored
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)

    for name in sweep_stale():
        log(f"deleted namespace {name} left by an earlier run that was killed")
    args.load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    args.foreign = measure.ForeignLoad()
    workdir = tempfile.mkdtemp(prefix="overlay-bench-")
    try:
        return run_benchmark(args, workdir)
    except KeyboardInterrupt:
        log("interrupted: daemons stopped and namespaces deleted")
        return 130
    finally:
        if args.keep_logs:
            log(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def run_benchmark(args, workdir):
    binary, build_error = build_vpnd(args, workdir)
    contenders = all_contenders(binary, build_error, source_rev())
    if args.only:
        wanted = {"raw"} | set(args.only.split(","))
        unknown = wanted - {c.key for c in contenders}
        if unknown:
            log(f"unknown contender(s): {', '.join(sorted(unknown))}")
            return 2
        contenders = [c for c in contenders if c.key in wanted]

    unavailable = {}
    for c in contenders:
        reason = c.probe()
        if reason is None:
            try:
                c.prepare(os.path.join(workdir, "keys"))
            except SetupError as e:
                reason = f"preparing: {e}"
        if reason:
            unavailable[c.key] = reason
            log(f"{c.label}: not available: {reason}")
    runnable = [c for c in contenders if c.key not in unavailable]
    per_turn = 1.5 * args.ping_count * PING_INTERVAL + 3 * (args.duration + 2) + 5
    log(f"{len(runnable)} contenders × {args.rounds} round(s), about "
        f"{len(runnable) * args.rounds * per_turn / 60:.0f} min plus waits for a quiet machine")

    rounds_by_key = {c.key: [] for c in contenders if c.key not in unavailable}
    for r in range(args.rounds):
        order = runnable[r % len(runnable):] + runnable[:r % len(runnable)]
        log(f"round {r + 1}/{args.rounds}: " + ", ".join(c.key for c in order))
        for c in order:
            rundir = os.path.join(workdir, f"r{r + 1}-{c.key}")
            os.makedirs(rundir)
            waited = settle(args.settle) if args.settle > 0 else 0
            if waited >= args.settle > 0:
                log(f"  (the machine is busy with other work: starting {c.key} anyway)")
            foreign = measure.ForeignLoad()
            with Sites(rundir) as sites:
                s = run_turn(c, sites, args, rundir)
            s["foreign"] = foreign.percent()
            s["round"] = r + 1
            rounds_by_key[c.key].append(s)
            log(progress_line(c, s))

    # A contender whose every turn failed to come up is "not available" with the reason.
    for c in runnable:
        rounds = rounds_by_key[c.key]
        if all("tcp1" not in s and "rtt" not in s for s in rounds):
            unavailable[c.key] = rounds[0]["errors"][0] if rounds[0]["errors"] else "no result"
    report.derive(rounds_by_key)

    table = report.results_table(contenders, rounds_by_key, unavailable)
    if "vpnd" in rounds_by_key and "vpnd" not in unavailable:
        ratios = report.ratio_table(contenders, rounds_by_key, unavailable)
    else:
        ratios = "(none: vpnd not available in this run)"
    floor = report.echo_floor(rounds_by_key.get("raw", []))
    facts = machine_facts(contenders, unavailable, args)
    load_end = (" ".join(f"{x:.2f}" for x in os.getloadavg()) +
                f"; CPU used by other processes during the run: {args.foreign.percent():.0f}% "
                f"of the machine")
    print()
    print(table)
    print()
    print("vpnd ÷ each contender (medians):")
    print()
    print(ratios)
    print()
    print(floor)
    print()
    for c in contenders:
        if c.key in unavailable:
            print(f"{c.label}: not available: {unavailable[c.key]}")
    setups = [(c.label, c.setup_note or c.version) for c in contenders
              if c.key not in unavailable]
    path = results_path(args)
    write_results(path, facts, table, ratios, floor, setups,
                  report.samples_section(contenders, rounds_by_key), load_end)
    print(f"results written to {os.path.relpath(path)}")
    return 0
