"""The two sites every contender runs in, and the processes started inside them.

`Sites` creates two fresh network namespaces ("site A" and "site B") joined by a veth pair
(the "WAN"), starts and tracks every process the benchmark runs in them, and on `close()`
(or leaving its `with` block, whatever the reason) kills them all and deletes the
namespaces, which takes the veth and any TAP left behind with it. Namespace names carry
the harness's pid and a random tag, so parallel runs and other users' namespaces are never
touched. It knows nothing about overlays or measurements.
"""
import os
import re
import secrets
import signal
import subprocess
import time

WAN_ADDR = {"a": "10.98.0.1", "b": "10.98.0.2"}
WAN_PREFIX = 24
OVERLAY_ADDR = {"a": "10.99.0.1", "b": "10.99.0.2"}
OVERLAY_PREFIX = 24
OVERLAY_MTU = 1400
TAP = "ovl0"
# Same TX queue for every TAP: daemons set different defaults (or none), and the queue
# length decides how much a burst can be absorbed before the kernel drops.
TAP_TXQUEUELEN = 1000


class SetupError(Exception):
    """A contender or the topology could not be brought up; the message says why."""


def run(argv, check=True, timeout=60, **kw):
    """Runs a command to completion, capturing text output; raises SetupError on failure."""
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired:
        raise SetupError(f"{' '.join(argv)}: timed out after {timeout}s")
    except FileNotFoundError:
        raise SetupError(f"{argv[0]}: not found")
    if check and p.returncode != 0:
        msg = (p.stderr.strip() or p.stdout.strip()).splitlines()[-3:]
        raise SetupError(f"{' '.join(argv)}: exit {p.returncode}: {' / '.join(msg)}")
    return p


class Sites:
    def __init__(self, workdir):
        self.workdir = workdir
        tag = f"{os.getpid()}-{secrets.token_hex(2)}"
        self.ns = {"a": f"ovb-{tag}-a", "b": f"ovb-{tag}-b"}
        self.procs = []  # (Popen, log file object)
        self.created = []

    def __enter__(self):
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def _create(self):
        for site in ("a", "b"):
            run(["ip", "netns", "add", self.ns[site]])
            self.created.append(self.ns[site])
            run(["ip", "-n", self.ns[site], "link", "set", "lo", "up"])
        run(["ip", "link", "add", "wan0", "netns", self.ns["a"], "type", "veth",
             "peer", "name", "wan0", "netns", self.ns["b"]])
        for site in ("a", "b"):
            ns = self.ns[site]
            run(["ip", "-n", ns, "addr", "add", f"{WAN_ADDR[site]}/{WAN_PREFIX}", "dev", "wan0"])
            run(["ip", "-n", ns, "link", "set", "wan0", "up"])
            # A site has a default route, as any real one does: vpncloud finds its own
            # address by routing towards a public one and panics without a route.
            run(["ip", "-n", ns, "route", "add", "default", "dev", "wan0"])

    def cmd(self, site, argv):
        """The argv that runs `argv` inside the site's namespace."""
        return ["ip", "netns", "exec", self.ns[site]] + list(argv)

    def run(self, site, argv, **kw):
        return run(self.cmd(site, argv), **kw)

    def spawn(self, site, argv, log_name, env=None):
        """Starts a long-running process in a site, output to a log file in the workdir.

        `ip netns exec` execs the command, so the returned Popen's pid is the process
        itself, which is what CPU and memory sampling read.
        """
        log = open(os.path.join(self.workdir, log_name), "w")
        p = subprocess.Popen(self.cmd(site, argv), stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, env=env)
        self.procs.append((p, log))
        return p

    def log_tail(self, log_name, lines=3):
        """The last lines of a log that say what went wrong (or just the last lines)."""
        try:
            with open(os.path.join(self.workdir, log_name), errors="replace") as f:
                text = [l.strip() for l in f.read().splitlines() if l.strip()]
        except OSError:
            return ""
        bad = [l for l in text if re.search(r"error|fatal|panick|cannot|can't|fail", l, re.I)]
        return " / ".join((bad or text)[-lines:])[:400]

    def wait_link(self, site, dev, timeout=20.0, procs=()):
        """Waits until `dev` exists in the site; fails early if one of `procs` has exited."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in procs:
                if p.poll() is not None:
                    raise SetupError(f"daemon exited with status {p.returncode} before "
                                     f"creating {dev}")
            if self.run(site, ["ip", "link", "show", dev], check=False).returncode == 0:
                return
            time.sleep(0.1)
        raise SetupError(f"{dev} did not appear in site {site.upper()} within {timeout:.0f}s")

    def configure_tap(self, site, dev=TAP):
        """Gives every contender's TAP the same MTU, queue and overlay address."""
        ns = self.ns[site]
        run(["ip", "-n", ns, "link", "set", dev, "mtu", str(OVERLAY_MTU),
             "txqueuelen", str(TAP_TXQUEUELEN)])
        run(["ip", "-n", ns, "addr", "replace", f"{OVERLAY_ADDR[site]}/{OVERLAY_PREFIX}",
             "dev", dev])
        run(["ip", "-n", ns, "link", "set", dev, "up"])

    def wait_ping(self, site, target, timeout=20.0, procs=()):
        """Waits until `target` answers pings from the site (the overlay carries traffic)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in procs:
                if p.poll() is not None:
                    raise SetupError(f"daemon exited with status {p.returncode}")
            r = self.run(site, ["ping", "-n", "-c", "1", "-W", "1", target], check=False)
            if r.returncode == 0:
                return
            time.sleep(0.2)
        raise SetupError(f"{target} unreachable from site {site.upper()} after {timeout:.0f}s")

    def stop_processes(self):
        """Kills every process started in the sites: TERM, a grace period, then KILL.

        Also sweeps the namespaces for processes the harness did not start itself (a
        daemon that forked), so nothing keeps running after a contender's turn.
        """
        live = [p for p, _ in self.procs if p.poll() is None]
        for p in live:
            _signal(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 3.0
        for p in live:
            try:
                p.wait(timeout=max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal(p.pid, signal.SIGKILL)
                p.wait()
        for _, log in self.procs:
            log.close()
        self.procs = []
        for ns in self.created:
            r = run(["ip", "netns", "pids", ns], check=False)
            for pid in r.stdout.split():
                _signal(int(pid), signal.SIGKILL)

    def close(self):
        # Cleanup must finish even if interrupted again: ignore further Ctrl-C meanwhile.
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            self.stop_processes()
            for ns in self.created:
                run(["ip", "netns", "del", ns], check=False)
            self.created = []
        finally:
            signal.signal(signal.SIGINT, old)


def sweep_stale():
    """Deletes the sites of an earlier run that was killed outright (SIGKILL, power loss).

    Only namespaces named by this harness whose owning pid is gone are touched; returns
    their names.
    """
    swept = []
    for line in run(["ip", "netns", "list"], check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.fullmatch(r"ovb-(\d+)-[0-9a-f]{4}-[ab]", name)
        if not m or os.path.exists(f"/proc/{m.group(1)}"):
            continue
        for pid in run(["ip", "netns", "pids", name], check=False).stdout.split():
            _signal(int(pid), signal.SIGKILL)
        run(["ip", "netns", "del", name], check=False)
        swept.append(name)
    return swept


def _signal(pid, sig):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
