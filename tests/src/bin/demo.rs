//! The demo behind `scripts/demo`: three sites as network namespaces joined by `vpnd`
//! over an emulated WAN (20 ms round trip between sites), showing the one Ethernet
//! segment they become: pings between VMs of different sites, a DHCP lease and a TFTP
//! boot file served across sites by a real dnsmasq, and `vpnd status` at a site. Then the
//! cluster layer on top: the controller and a host agent per site, a virtual cluster of
//! six lightweight nodes created through the API with the `vcluster` CLI, every node
//! reaching every other over its own overlay network, a command run on all of them with
//! `vcluster exec` (output folded), a node whose agent is killed fenced and restarted by
//! the controller, and the cluster deleted without a trace. Everything it creates is removed when it ends, also on Ctrl-C.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use site_tests::{
    ControlPlane, ControlPlaneOpts, LinkParams, NetworkOpts, Overlay, PingOpts, Process, Topology,
    bin_path, find_command, list_namespaces, node_ip, unique_name, unreachable_pairs,
};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

struct Interrupted;

fn check() -> Result<(), Interrupted> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        Err(Interrupted)
    } else {
        Ok(())
    }
}

/// Sleeps in small steps so Ctrl-C is honoured promptly.
fn pause(d: Duration) -> Result<(), Interrupted> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        check()?;
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn main() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("demo: needs root (it creates network namespaces): run it with sudo");
        std::process::exit(1);
    }
    for cmd in ["ip", "ethtool", "dnsmasq", "busybox", "nsenter"] {
        if find_command(cmd).is_none() {
            eprintln!("demo: `{cmd}` is missing: run scripts/install-deps first");
            std::process::exit(1);
        }
    }
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_sigint as *const () as libc::sighandler_t);
    }
    let outcome = run();
    // Everything the demo made has been dropped by now; its namespaces carry its pid.
    let mine = format!("st{}-", std::process::id());
    let left: Vec<String> = list_namespaces()
        .into_iter()
        .filter(|n| n.starts_with(&mine))
        .collect();
    match outcome {
        Ok(()) => println!("\ntorn down: {} namespaces left behind", left.len()),
        Err(Interrupted) => println!(
            "\ninterrupted: torn down, {} namespaces left behind",
            left.len()
        ),
    }
    if !left.is_empty() {
        std::process::exit(1);
    }
}

/// The provisioning step's assets (`scripts/provision-assets`), unless `--quick` skips it.
fn provision_assets() -> Option<std::path::PathBuf> {
    if std::env::args().any(|a| a == "--quick") {
        return None;
    }
    // Absolute: the origin's directory links to it.
    let dir = std::path::PathBuf::from("target/provision")
        .canonicalize()
        .ok();
    if let Some(dir) = dir.filter(|d| d.join("boot/installer.img").exists())
        && find_command("qemu-system-x86_64").is_some()
    {
        Some(dir)
    } else {
        println!(
            "\n(no provisioning step: run scripts/provision-assets and install qemu-system-x86 \
             (scripts/install-deps), or pass --quick)"
        );
        None
    }
}

fn run() -> Result<(), Interrupted> {
    println!("== one Ethernet segment out of three sites: vpnd over an emulated WAN ==\n");
    println!(
        "[1/8] building 3 sites as network namespaces: each a hypervisor host with bridge br0,"
    );
    println!("      a WAN address 10.254.0.<site>, and 2 VMs on the bridge; every access link");
    println!("      delays 5 ms each way, so sites are 20 ms apart (round trip)");
    let started = Instant::now();
    let topo = Topology::builder()
        .sites(3)
        .vms_per_site(2)
        // VM 2 at sites 2 and 3 will get its address over DHCP from site 1.
        .vm_addr(|i, j| (i == 1 || j == 1).then(|| format!("10.77.{i}.{j}/16")))
        .link_params(LinkParams::default().delay(Duration::from_millis(5)))
        .build();
    println!("      done in {:.1} s\n", started.elapsed().as_secs_f64());
    check()?;

    println!(
        "[2/8] starting vpnd on every host (network 1, TAP vpn1 on br0, peers: the other two sites)"
    );
    let started = Instant::now();
    let overlay = Overlay::start(&topo, &[NetworkOpts::new(1)]);
    println!(
        "      all 3 sessions up in {:.2} s (Noise IKpsk2 handshakes, one round trip each)\n",
        started.elapsed().as_secs_f64()
    );
    check()?;

    println!("[3/8] VMs at different sites ping each other over the overlay:");
    for (from, to) in [((1, 1), (2, 1)), ((2, 1), (3, 1)), ((3, 1), (1, 1))] {
        let target = format!("10.77.{}.{}", to.0, to.1);
        // The first echo also resolves the address with ARP across the WAN.
        let first = topo
            .vm(from.0, from.1)
            .ping_with(&target, &PingOpts::default().count(1));
        let stats = topo.vm(from.0, from.1).ping_with(
            &target,
            &PingOpts::default()
                .count(5)
                .interval(Duration::from_millis(200)),
        );
        let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1e3).unwrap_or(f64::NAN);
        println!(
            "      site{} vm{} -> site{} vm{} ({target}): {}/{} replies, rtt min {:.1} / avg {:.1} ms (first, with ARP: {:.1} ms)",
            from.0,
            from.1,
            to.0,
            to.1,
            stats.received,
            stats.transmitted,
            ms(stats.rtt_min),
            ms(stats.rtt_avg),
            ms(first.rtt_avg)
        );
        check()?;
    }
    println!();

    println!("[4/8] a real dnsmasq at site 1 serves DHCP and TFTP to VMs at sites 2 and 3:");
    let dir = topo.dir().join("dnsmasq");
    std::fs::create_dir_all(dir.join("tftp")).expect("demo dir");
    let boot =
        "#!ipxe\necho Hello from site 1, across the overlay\nchain http://10.77.1.1/profile\n";
    std::fs::write(dir.join("tftp/boot.ipxe"), boot).expect("boot file");
    let leases = dir.join("leases");
    let _dnsmasq: Process = topo.spawn(
        topo.vm(1, 1),
        "dnsmasq",
        &[
            "dnsmasq",
            "--no-daemon",
            "--conf-file=/dev/null",
            "--user=root",
            "--port=0",
            "--interface=eth0",
            "--bind-interfaces",
            "--dhcp-authoritative",
            // dnsmasq would otherwise ping each address for 3 s before offering it.
            "--no-ping",
            "--dhcp-range=10.77.200.10,10.77.200.50,255.255.0.0,1h",
            &format!("--dhcp-leasefile={}", leases.display()),
            "--enable-tftp",
            &format!("--tftp-root={}", dir.join("tftp").display()),
        ],
    );
    pause(Duration::from_millis(300))?;
    let script = dir.join("udhcpc.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\ncase \"$1\" in bound|renew) ip addr add \"$ip/${mask:-16}\" dev \"$interface\"; echo \"$ip\" > \"$LEASE_OUT\";; esac\n",
    )
    .expect("script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    for site in [2, 3] {
        check()?;
        let lease_out = dir.join(format!("lease{site}"));
        let t = Instant::now();
        let out = topo.vm(site, 2).run(&[
            "env",
            &format!("LEASE_OUT={}", lease_out.display()),
            "busybox",
            "udhcpc",
            "-i",
            "eth0",
            "-f",
            "-q",
            "-n",
            "-t",
            "5",
            "-s",
            script.to_str().expect("utf-8 path"),
        ]);
        let ip = std::fs::read_to_string(&lease_out).unwrap_or_default();
        if !out.success || ip.trim().is_empty() {
            println!("      site{site} vm2: NO LEASE\n{}", out.stderr);
            continue;
        }
        println!(
            "      site{site} vm2: DHCP lease {} from site 1 in {:.2} s",
            ip.trim(),
            t.elapsed().as_secs_f64()
        );
        let got = dir.join(format!("boot{site}"));
        let tftp = topo.vm(site, 2).run(&[
            "busybox",
            "tftp",
            "-g",
            "-r",
            "boot.ipxe",
            "-l",
            got.to_str().unwrap_or(""),
            "10.77.1.1",
        ]);
        let content = std::fs::read_to_string(&got).unwrap_or_default();
        println!(
            "      site{site} vm2: TFTP boot.ipxe from 10.77.1.1: {} ({} bytes)",
            if tftp.success && content == boot {
                "ok"
            } else {
                "FAILED"
            },
            content.len()
        );
    }
    println!();
    check()?;

    println!("[5/8] vpnd status at site 1 (what an operator sees):\n");
    let vpnd = bin_path("vpnd");
    let control = overlay.daemons[0].control.to_string_lossy().into_owned();
    let table = topo.host(1).run(&[
        vpnd.to_string_lossy().as_ref(),
        "status",
        "--control",
        &control,
    ]);
    for line in table.stdout.lines() {
        println!("      {line}");
    }
    let wan = topo.wan_stats();
    println!(
        "\n      the emulated WAN carried {} frames ({} KiB) in all",
        wan.a_to_b.rx_frames,
        wan.a_to_b.rx_bytes / 1024
    );
    println!();
    check()?;
    cluster(&topo, &overlay, provision_assets().as_deref())
}

/// Steps 6 and 7: the cluster layer over the same three sites.
fn cluster(
    topo: &Topology,
    overlay: &Overlay,
    provision: Option<&std::path::Path>,
) -> Result<(), Interrupted> {
    println!("[6/8] the cluster layer: `vcluster serve` on the WAN (SQLite store), and a");
    println!("      `vcluster host-agent` on every host next to its vpnd");
    let started = Instant::now();
    // vpnd network 1 above is the operator's own: clusters get ids from 100 up.
    // Provisioning (step 8): site 3's host runs VMs (QEMU), sites 1 and 3 serve their
    // site cache to provisioned clusters; site 1 will be a frontend.
    let site_cache = || vec!["--site-cache".to_string(), "127.0.0.1:3142".to_string()];
    let agent_args = if provision.is_some() {
        vec![
            site_cache(),
            vec![],
            [vec!["--driver".to_string(), "qemu".into()], site_cache()].concat(),
        ]
    } else {
        vec![]
    };
    let plane = ControlPlane::start_with(
        topo,
        overlay,
        &ControlPlaneOpts {
            first_network_id: 100,
            // A node is down after 2 silent heartbeats of 1 s: recovery shows in seconds.
            down_after_beats: 2,
            agent_args,
            ..ControlPlaneOpts::default()
        },
    );
    println!(
        "      controller at {}, 3 hosts registered and online in {:.1} s",
        plane.url(),
        started.elapsed().as_secs_f64()
    );
    check()?;
    let name = unique_name("demo");
    println!(
        "\n      $ vcluster cluster create {name} --site site1=3 --site site2=3 --node-memory-mib 64 --wait"
    );
    let started = Instant::now();
    let mut args = vec!["cluster", "create", &name];
    for site in ["site1=3", "site2=3"] {
        args.extend(["--site", site]);
    }
    args.extend(["--node-memory-mib", "64", "--wait"]);
    plane.note_cluster(&name);
    let out = plane.cli(&args);
    let took = started.elapsed();
    print_indented(&out.stdout);
    if !out.success {
        println!("      cluster create FAILED: {}", out.stderr.trim());
        return Ok(());
    }
    println!("      (created in {:.2} s)", took.as_secs_f64());
    check()?;

    println!("\n      $ vcluster cluster show {name}");
    print_indented(&plane.cli(&["cluster", "show", &name]).stdout);
    let c = plane.cluster(&name);
    println!(
        "\n      each node is a network namespace on bridge vcbr{id} at its host; vpnd network {id}",
        id = c.network_id
    );
    println!("      (its own key and PSK) joins the three bridges. Every node pings every other:");
    let started = Instant::now();
    let mut missing = unreachable_pairs(&c.nodes);
    while !missing.is_empty() && started.elapsed() < Duration::from_secs(15) {
        pause(Duration::from_millis(500))?;
        missing = unreachable_pairs(&c.nodes);
    }
    print!("      {:>8}", "");
    for to in &c.nodes {
        print!(" {:>8}", short(&to.name));
    }
    println!();
    for from in &c.nodes {
        print!("      {:>8}", short(&from.name));
        for to in &c.nodes {
            let cell = if from.name == to.name {
                "-"
            } else if missing.contains(&(from.name.clone(), to.name.clone())) {
                "NO"
            } else {
                "ok"
            };
            print!(" {cell:>8}");
        }
        println!("   ({}, {})", from.site, node_ip(from));
    }
    let pairs = c.nodes.len() * (c.nodes.len() - 1);
    println!(
        "      {}/{pairs} ordered pairs reach each other",
        pairs - missing.len()
    );
    check()?;

    println!(
        "\n      every node runs its node agent; a command on all of them, output folded (clush -b):"
    );
    println!(
        "\n      $ vcluster exec -b -c {name} @all -- 'ip -o -4 addr show dev eth0 | wc -l; uname -s'"
    );
    let started = Instant::now();
    let out = plane.cli(&[
        "exec",
        "-b",
        "-c",
        &name,
        "@all",
        "--",
        "ip -o -4 addr show dev eth0 | wc -l; uname -s",
    ]);
    print_indented(&out.stdout);
    println!(
        "      (6 nodes at 3 sites in {:.2} s{})",
        started.elapsed().as_secs_f64(),
        if out.success { "" } else { ", FAILED" }
    );
    check()?;

    // Monitoring and recovery: kill one node's agent, watch the controller bring it back.
    let victim = c.nodes[c.nodes.len() - 1].name.clone();
    println!("\n      $ kill -9 <the node agent of {victim}>   # the node crashes");
    let killed = site_tests::cluster::node_agent_pids(&c)
        .into_iter()
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&victim))
                .unwrap_or(false)
        });
    if let Some(pid) = killed {
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
        let started = Instant::now();
        let mut shown = 0;
        while started.elapsed() < Duration::from_secs(40) {
            pause(Duration::from_millis(500))?;
            let events: Vec<vcluster::model::Event> = plane
                .block_on(plane.user().get("/v1/events?limit=1000"))
                .unwrap_or_default();
            let mut mine: Vec<_> = events
                .into_iter()
                .filter(|e| e.message.contains(&format!("node {victim}")))
                .collect();
            mine.sort_by_key(|e| e.id);
            for e in mine.iter().skip(shown) {
                println!(
                    "      {:>5.1} s  {:<10} {}",
                    started.elapsed().as_secs_f64(),
                    e.kind,
                    e.message
                );
            }
            shown = mine.len();
            if mine.iter().any(|e| e.kind == "recovered") {
                break;
            }
        }
    }
    check()?;

    println!("\n[7/8] deleting the cluster: its nodes, bridges, TAPs and vpnd networks go");
    println!("\n      $ vcluster cluster delete {name} --wait");
    let started = Instant::now();
    let out = plane.cli(&["cluster", "delete", &name, "--wait"]);
    print_indented(&out.stdout);
    if !out.success {
        println!("      cluster delete FAILED: {}", out.stderr.trim());
    }
    let left = plane.leftovers(topo, overlay, &c);
    println!(
        "      deleted in {:.2} s; left of it on the hosts: {}",
        started.elapsed().as_secs_f64(),
        if left.is_empty() {
            "nothing".to_string()
        } else {
            left.join(", ")
        }
    );
    check()?;
    match provision {
        Some(assets) => provision_vm(topo, &plane, assets),
        None => {
            println!("\n[8/8] skipped (--quick): a QEMU VM PXE-installed across sites");
            Ok(())
        }
    }
}

/// Step 8: a real VM at site 3 PXE-boots from its cluster's frontend at site 1, installs
/// Debian from site 3's cache (which fetches each file once from the origin behind the
/// WAN), and boots from its own disk.
fn provision_vm(
    topo: &Topology,
    plane: &ControlPlane,
    assets: &std::path::Path,
) -> Result<(), Interrupted> {
    println!("\n[8/8] provisioning: a QEMU VM at site 3 PXE-installs Debian across sites");
    println!(
        "      origin repository (real bookworm packages, signed) in the WAN at 10.254.0.254:8080;"
    );
    println!("      a `vcluster cache` at sites 1 and 3; site 3's agent runs QEMU (KVM if a probe");
    println!("      guest runs under it, else TCG); the frontend (dnsmasq, iPXE) at site 1");
    let _caches: Vec<Process> = [1usize, 3]
        .iter()
        .map(|&i| site_tests::provision::site_cache(topo, i, &topo.dir().join(format!("cache{i}"))))
        .collect();
    let origin = site_tests::provision::Origin::start(topo, assets);
    let _: serde_json::Value = plane.admin_post(
        "/v1/roles",
        &serde_json::json!({"name": "base", "packages": ["less", "curl"],
            "files": [{"path": "/etc/motd", "content": "{{ node.name }}: installed by vcluster from site {{ site.name }}'s cache\n"}]}),
    );
    let _: serde_json::Value = plane.admin_post(
        "/v1/profiles",
        &serde_json::json!({"name": "debian", "roles": ["base"]}),
    );
    check()?;
    let name = unique_name("vm");
    let args = [
        "cluster",
        "create",
        &name,
        "--site",
        "site3=1",
        "--profile",
        "debian",
        "--frontend-site",
        "site1",
        "--node-memory-mib",
        "768",
        "--wait",
    ];
    println!("\n      $ vcluster {}", args.join(" "));
    plane.note_cluster(&name);
    let started = Instant::now();
    let mut child = plane
        .cli_command(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("vcluster runs");
    // The CLI prints a line per change of the node's install; show them as they come.
    let stdout = child.stdout.take().expect("piped");
    let lines = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            println!("      {line}");
        }
    });
    loop {
        if let Some(status) = child.try_wait().expect("wait for vcluster") {
            let _ = lines.join();
            if !status.success() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                println!("      the install FAILED: {}", err.trim());
                return Ok(());
            }
            break;
        }
        if let Err(i) = check() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(i);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "      (installed and booted from its disk in {:.0} s)",
        started.elapsed().as_secs_f64()
    );
    let node = format!("{name}-node-1");
    println!("\n      $ vcluster node console {node} | tail -4");
    let console = plane.cli(&["node", "console", &node]);
    let lines: Vec<&str> = console
        .stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    for l in &lines[lines.len().saturating_sub(4)..] {
        println!("      {}", l.trim_end());
    }
    println!("\n      $ vcluster cluster show {name}");
    print_indented(&plane.cli(&["cluster", "show", &name]).stdout);
    let fetched = origin.fetches();
    let once = if fetched.values().all(|&n| n == 1) {
        "each once"
    } else {
        "some more than once"
    };
    println!(
        "      the origin served {} files to site 3's cache, {once}",
        fetched.len()
    );
    println!("\n      $ vcluster cluster delete {name} --wait");
    let out = plane.cli(&["cluster", "delete", &name, "--wait"]);
    print_indented(&out.stdout);
    Ok(())
}

/// `st123-4-demo-node-2` -> `node-2`.
fn short(node: &str) -> &str {
    node.rfind("node-").map_or(node, |i| &node[i..])
}

fn print_indented(text: &str) {
    for line in text.lines() {
        println!("      {line}");
    }
}
