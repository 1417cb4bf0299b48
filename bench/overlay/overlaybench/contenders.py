"""The contenders: how each overlay is configured and started in the two sites.

Every overlay gets the same treatment: its daemon in each site creates a TAP named
`ovl0`, the harness then gives both TAPs MTU 1400, the same TX queue and the overlay
addresses (10.99.0.1/24, 10.99.0.2/24), and waits until site A can ping site B through it.
Each class only says what is particular to its daemon: `probe()` (is it installed and
working, which version), `prepare()` (keys and certificates, once per run of the harness)
and `launch()` (start the daemons in both sites, one turn). docs/bench.md explains why
each configuration is a fair one.
"""
import os
import re
import shutil
import subprocess

from .topology import OVERLAY_ADDR, TAP, WAN_ADDR, SetupError, run


class Contender:
    key = ""           # name on the command line (--only)
    label = ""         # row label in the table
    target = OVERLAY_ADDR["b"]

    def __init__(self):
        self.version = "?"
        self.setup_note = ""

    def probe(self):
        """Returns None when the contender can run, else the reason it cannot."""
        return None

    def prepare(self, workdir):
        """One-time setup before the first turn (keys, certificates)."""

    def launch(self, sites, rundir):
        """Starts the daemons in both sites (with `spawn`); returns their Popen objects."""
        return []

    def start(self, sites, rundir):
        """Starts the contender and waits until the overlay carries traffic."""
        self._spawned, self._logs = [], []
        procs = self.launch(sites, rundir)
        if not procs:
            return []
        try:
            for site in ("a", "b"):
                sites.wait_link(site, TAP, procs=procs)
                sites.configure_tap(site)
            sites.wait_ping("a", self.target, procs=procs)
        except SetupError as e:
            tails = [f"{name}: {tail}" for name in self._logs if (tail := sites.log_tail(name))]
            raise SetupError(str(e) + (f" [{'; '.join(tails)}]" if tails else ""))
        return procs

    def spawn(self, sites, site, argv, env=None):
        """Starts one daemon; its output goes to <key>-<n>.log in the run's workdir."""
        name = f"{self.key}-{len(self._spawned)}-{site}.log"
        self._spawned.append(sites.spawn(site, argv, name, env=env))
        self._logs.append(name)
        return self._spawned[-1]


def _first_line(argv):
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    out = (p.stdout.strip() or p.stderr.strip()).splitlines()
    return out[0].strip() if out else "?"


class Raw(Contender):
    key = "raw"
    label = "raw veth"
    target = WAN_ADDR["b"]

    def probe(self):
        self.version = "veth, MTU 1500, kernel offloads on"
        return None


class Vpnd(Contender):
    key = "vpnd"
    label = "vpnd"

    # Extra top-level config lines (VpndPoll's low-latency mode).
    extra = ""

    def __init__(self, binary, build_error=None, source_rev="?"):
        super().__init__()
        self.binary = binary
        self.build_error = build_error
        self.source_rev = source_rev

    def probe(self):
        if self.build_error:
            return self.build_error
        if not self.binary or not os.path.exists(self.binary):
            return f"no vpnd binary ({self.binary or 'target/release/vpnd'} missing)"
        r = run([self.binary, "keygen"], check=False)
        if r.returncode != 0 or not r.stdout.strip():
            return f"`vpnd keygen` failed: {(r.stderr or r.stdout).strip()[:120]}"
        v = _first_line([self.binary, "--version"])
        self.version = f"{v} ({self.source_rev})"
        self.setup_note = "aes-256-gcm, Noise IK, path_mtu 1500, " + (
            f"otherwise default settings but {self.extra}" if self.extra else "default settings")
        return None

    def prepare(self, workdir):
        self.dir = os.path.join(workdir, self.key)
        os.makedirs(self.dir, exist_ok=True)
        self.pub = {}
        for site in ("a", "b"):
            key = run([self.binary, "keygen"]).stdout.strip()
            path = os.path.join(self.dir, f"{site}.key")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(key + "\n")
            self.pub[site] = run([self.binary, "pubkey"], input=key + "\n").stdout.strip()

    def config(self, site, rundir):
        peer = "b" if site == "a" else "a"
        return f"""\
# vpnd config for site {site.upper()} of the overlay benchmark (docs/config.md).
private_key_file = "{self.dir}/{site}.key"
listen = ["{WAN_ADDR[site]}:51820"]
control_socket = "{rundir}/vpnd-{site}.sock"
{self.extra}
{os.environ.get("VPND_BENCH_EXTRA", "")}

[[network]]
id = 1
name = "bench"
tap = "{TAP}"
mtu = 1400
path_mtu = 1500
cipher = "aes-256-gcm"

[[network.peer]]
name = "site-{peer}"
public_key = "{self.pub[peer]}"
endpoint = "{WAN_ADDR[peer]}:51820"
"""

    def launch(self, sites, rundir):
        for site in ("a", "b"):
            path = os.path.join(rundir, f"vpnd-{site}.toml")
            with open(path, "w") as f:
                f.write(self.config(site, rundir))
            self.spawn(sites, site, [self.binary, "up", "-c", path])
        return self._spawned


class VpndPoll(Vpnd):
    """vpnd in its low-latency mode: data-path threads poll for 50 ms after each input
    instead of 200 µs, longer than the pings' 10 ms gaps, so they never sleep while traffic
    flows (docs/config.md, `busy_poll_us`). Its CPU % during the pings shows the price."""
    key = "vpnd-poll"
    label = "vpnd busy-poll"
    extra = "busy_poll_us = 50000"


class OpenVpn(Contender):
    key = "openvpn"
    label = "OpenVPN TAP"

    def probe(self):
        if not shutil.which("openvpn"):
            return "openvpn not installed (apt-get install openvpn)"
        if not shutil.which("openssl"):
            return "openssl not installed (needed for the certificates)"
        self.version = _first_line(["openvpn", "--version"]).split("[")[0].strip()
        self.setup_note = ("p2p TLS (self-signed certs, --peer-fingerprint), AES-256-GCM, "
                           "no compression, --fast-io, DCO off (TAP)")
        return None

    def prepare(self, workdir):
        self.dir = os.path.join(workdir, "openvpn")
        os.makedirs(self.dir, exist_ok=True)
        self.fingerprint = {}
        for site in ("a", "b"):
            crt, key = (os.path.join(self.dir, f"{site}.{x}") for x in ("crt", "key"))
            run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                 "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                 "-subj", f"/CN=site-{site}", "-keyout", key, "-out", crt])
            out = run(["openssl", "x509", "-in", crt, "-noout", "-fingerprint",
                       "-sha256"]).stdout
            self.fingerprint[site] = out.strip().split("=", 1)[1]

    def launch(self, sites, rundir):
        for site in ("a", "b"):
            peer = "b" if site == "a" else "a"
            argv = [
                "openvpn", "--dev", TAP, "--dev-type", "tap", "--disable-dco",
                "--proto", "udp", "--local", WAN_ADDR[site], "--lport", "1194",
                "--remote", WAN_ADDR[peer], "--rport", "1194",
                "--tls-server" if site == "a" else "--tls-client",
                "--cert", f"{self.dir}/{site}.crt", "--key", f"{self.dir}/{site}.key",
                "--peer-fingerprint", self.fingerprint[peer],
                "--data-ciphers", "AES-256-GCM", "--tun-mtu", "1400",
                "--fast-io", "--verb", "3",
            ]
            if site == "a":
                argv += ["--dh", "none"]
            self.spawn(sites, site, argv)
        return self._spawned


class Tinc(Contender):
    key = "tinc"
    label = "tinc switch"

    def probe(self):
        if not shutil.which("tincd"):
            return "tincd not installed (apt-get install tinc)"
        self.version = _first_line(["tincd", "--version"])
        self.setup_note = "Mode = switch, Cipher aes-256-cbc, Digest sha256, no compression"
        return None

    def prepare(self, workdir):
        self.dir = os.path.join(workdir, "tinc")
        for site in ("a", "b"):
            os.makedirs(os.path.join(self.dir, site, "hosts"), exist_ok=True)
            peer = "b" if site == "a" else "a"
            with open(os.path.join(self.dir, site, "tinc.conf"), "w") as f:
                f.write(f"Name = site{site}\nMode = switch\nDeviceType = tap\n"
                        f"Interface = {TAP}\nAddressFamily = ipv4\n"
                        f"BindToAddress = {WAN_ADDR[site]}\nConnectTo = site{peer}\n")
            with open(os.path.join(self.dir, site, "hosts", f"site{site}"), "w") as f:
                f.write(f"Address = {WAN_ADDR[site]}\nPort = 655\nCipher = aes-256-cbc\n"
                        f"Digest = sha256\nCompression = 0\n")
            # -K appends the public key to hosts/<name>; non-interactive without a tty.
            run(["tincd", "-c", os.path.join(self.dir, site), "-K2048"],
                stdin=subprocess.DEVNULL)
        for site, peer in (("a", "b"), ("b", "a")):
            shutil.copy(os.path.join(self.dir, peer, "hosts", f"site{peer}"),
                        os.path.join(self.dir, site, "hosts", f"site{peer}"))

    def launch(self, sites, rundir):
        for site in ("a", "b"):
            self.spawn(sites, site, ["tincd", "-c", os.path.join(self.dir, site), "-D",
                                     f"--pidfile={rundir}/tinc-{site}.pid"])
        return self._spawned


def _vpncloud_binary():
    return shutil.which("vpncloud") or next(
        (p for p in [os.path.expanduser("~/.cargo/bin/vpncloud")] if os.path.exists(p)), None)


class VpnCloud(Contender):
    key = "vpncloud"
    label = "vpncloud"

    def probe(self):
        self.binary = _vpncloud_binary()
        if not self.binary:
            return "vpncloud not installed (cargo install vpncloud)"
        self.version = _first_line([self.binary, "--version"])
        self.setup_note = "--type tap --mode switch, --algorithm aes256 (AES-256-GCM), shared password"
        return None

    def launch(self, sites, rundir):
        for site in ("a", "b"):
            peer = "b" if site == "a" else "a"
            self.spawn(sites, site, [
                self.binary, "--type", "tap", "--device", TAP, "--mode", "switch",
                "--listen", f"{WAN_ADDR[site]}:3210", "--peer", f"{WAN_ADDR[peer]}:3210",
                "--password", "overlay-bench", "--algorithm", "aes256",
                "--no-port-forwarding", "--stats-file", f"{rundir}/vpncloud-{site}.stats",
            ])
        return self._spawned


class N2n(Contender):
    key = "n2n"
    label = "n2n"

    def probe(self):
        if not (shutil.which("edge") and shutil.which("supernode")):
            return "n2n not installed (apt-get install n2n)"
        help_text = subprocess.run(["edge", "-h"], capture_output=True, text=True).stdout
        m = re.search(r"n2n v\.?\s*([\d.]+)", help_text)
        self.version = f"n2n {m.group(1)}" if m else "n2n ?"
        self.setup_note = "supernode in site A, one edge per site (direct edge-to-edge), Twofish"
        return None

    def launch(self, sites, rundir):
        self.spawn(sites, "a", ["supernode", "-l", "7654"])
        for site in ("a", "b"):
            mac = "02:00:00:99:00:0" + ("1" if site == "a" else "2")
            self.spawn(sites, site, [
                "edge", "-d", TAP, "-a", OVERLAY_ADDR[site], "-s", "255.255.255.0",
                "-c", "bench", "-l", f"{WAN_ADDR['a']}:7654", "-p", "7655",
                "-M", "1400", "-m", mac,
            ], env=dict(os.environ, N2N_KEY="overlay-bench"))
        return self._spawned


def all_contenders(binary, build_error, source_rev):
    """Every contender; both vpnd rows run the same binary."""
    return [Raw(), Vpnd(binary, build_error, source_rev),
            VpndPoll(binary, build_error, source_rev), OpenVpn(), Tinc(), VpnCloud(), N2n()]
