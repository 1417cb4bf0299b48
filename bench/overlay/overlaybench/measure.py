"""The measurements: ping RTT, iperf3 TCP and UDP, and daemon CPU and memory from /proc.

Every function takes the `Sites` and a target address and returns plain numbers (or raises
`MeasureError`); none of them knows which overlay carries the traffic. The client always
runs in site A and the server in site B.
"""
import json
import os
import re
import statistics
import subprocess
import time


IPERF_PORT = 5201
CLK_TCK = os.sysconf("SC_CLK_TCK")


class MeasureError(Exception):
    pass


def ping_rtt_ms(sites, target, count, interval):
    """Median RTT (ms) of `count` pings at `interval` seconds; needs at least half back."""
    r = sites.run("a", ["ping", "-n", "-c", str(count), "-i", str(interval), "-W", "1", target],
                  check=False, timeout=count * interval + 30)
    rtts = [float(x) for x in re.findall(r"time=([\d.]+) ms", r.stdout)]
    if len(rtts) < count / 2:
        raise MeasureError(f"ping: {len(rtts)}/{count} replies")
    return statistics.median(rtts)


ECHO_PORT = 5207
ECHO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "udpecho.py")


def udp_echo_rtt_ms(sites, target, count, interval):
    """Median round trip (ms) of a userspace UDP echo (udpecho.py) from site A to `target`
    in site B: the floor of the RTT any userspace relay adds on this machine."""
    server = sites.spawn("b", ["python3", ECHO, "server", target, str(ECHO_PORT)], "udpecho.log")
    try:
        time.sleep(0.5)
        r = sites.run("a", ["python3", ECHO, "client", target, str(ECHO_PORT), str(count),
                            str(interval)], check=False, timeout=count * (interval + 1) + 30)
    finally:
        server.kill()
        server.wait()
    rtts = [float(x) for x in r.stdout.split() if x != "lost"]
    if len(rtts) < count / 2:
        raise MeasureError(f"udp echo: {len(rtts)}/{count} answers "
                           f"{(r.stderr or '').strip()[:120]}")
    return statistics.median(rtts)


class IperfServer:
    """An iperf3 server in site B, bound to the target address, for one contender's turn."""

    def __init__(self, sites, target):
        self.sites, self.target = sites, target
        self.proc = None

    def start(self):
        self.proc = self.sites.spawn("b", ["iperf3", "-s", "-B", self.target,
                                           "-p", str(IPERF_PORT)], "iperf3-server.log")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            r = self.sites.run("b", ["ss", "-Hltn", f"sport = :{IPERF_PORT}"], check=False)
            if r.stdout.strip():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise MeasureError("iperf3 server did not start: " + self.sites.log_tail("iperf3-server.log"))

    def restart(self):
        """After a failed test the server may still hold the dead session: start afresh."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.start()


def _iperf(sites, target, args, duration):
    argv = ["iperf3", "-c", target, "-p", str(IPERF_PORT), "-J", "--connect-timeout", "3000",
            "-t", str(duration)] + args
    try:
        r = subprocess.run(sites.cmd("a", argv), capture_output=True, text=True,
                           timeout=duration + 30)
    except subprocess.TimeoutExpired:
        raise MeasureError(f"iperf3 {' '.join(args)}: no result after {duration + 30}s")
    try:
        out = json.loads(r.stdout)
    except ValueError:
        raise MeasureError(f"iperf3 {' '.join(args)}: exit {r.returncode}: "
                           f"{(r.stderr or r.stdout).strip()[:200]}")
    if "error" in out:
        raise MeasureError(f"iperf3 {' '.join(args)}: {out['error']}")
    return out["end"]


def tcp_gbps(sites, target, streams, duration):
    """Received TCP goodput in Gbit/s; the first second (slow start) is omitted."""
    end = _iperf(sites, target, ["-P", str(streams), "-O", "1"], duration)
    return end["sum_received"]["bits_per_second"] / 1e9


def udp_pps(sites, target, payload, rate, duration):
    """UDP packets per second that reached the server, at offered rate `rate` (iperf3 -b)."""
    end = _iperf(sites, target, ["-u", "-l", str(payload), "-b", rate], duration)
    s = end.get("sum_received") or end["sum"]
    received = s["packets"] - s["lost_packets"]
    return received / s["seconds"]


def tcp_bytes_at_rate(sites, target, rate, duration):
    """One TCP stream offered at `rate` (iperf3 -b) for `duration` s: bytes received."""
    end = _iperf(sites, target, ["-b", rate], duration)
    return end["sum_received"]["bytes"]


def cpu_seconds(pid):
    """CPU time (user + system, all threads) a process has used so far."""
    return _cpu_ticks(pid) / CLK_TCK


def _cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        # Fields after the parenthesised command name; utime and stime are fields 14, 15
        # (all threads of the process included).
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


class CpuSample:
    """CPU used by a set of processes over an interval, in % of one core, summed."""

    def __init__(self, pids):
        self.pids = list(pids)
        self.t0 = time.monotonic()
        self.ticks0 = {pid: _cpu_ticks(pid) for pid in self.pids}

    def percent(self):
        wall = time.monotonic() - self.t0
        used = sum(_cpu_ticks(pid) - t0 for pid, t0 in self.ticks0.items())
        return 100.0 * used / CLK_TCK / wall


class ForeignLoad:
    """CPU the rest of the machine used over an interval, in % of all its CPUs.

    Busy time from /proc/stat (user, nice, system) minus the CPU of this harness and every
    child it has reaped (daemons, iperf3, ping: all are its children). On a machine shared
    with other users this is the noise: a turn with high foreign load ran on less CPU.
    Approximate: kernel threads working for our traffic (ksoftirqd) count as foreign.
    """

    def __init__(self):
        self.t0 = self._read()

    @staticmethod
    def _read():
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        t = os.times()
        ours = (t.user + t.system + t.children_user + t.children_system) * CLK_TCK
        # user nice system idle iowait irq softirq steal; guest time is inside user.
        return sum(fields[:3]), ours, sum(fields[:8])

    def percent(self):
        (busy0, ours0, total0), (busy1, ours1, total1) = self.t0, self._read()
        return max(0.0, 100.0 * ((busy1 - busy0) - (ours1 - ours0)) / max(1, total1 - total0))


def rss_mib(pids):
    """Resident memory of a set of processes, summed, in MiB."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024.0
