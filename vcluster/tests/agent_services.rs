//! A provisioned cluster's services on one host, for real: the site-local address relayed
//! to a (stand-in) site cache and taking its nodes' install reports for a (stand-in)
//! controller, and the frontend (a real dnsmasq, the frontend's HTTP), met
//! by clients in network namespaces on the cluster's bridge and by a QEMU VM whose iPXE
//! firmware follows the whole chain. Needs root, dnsmasq and busybox and curl (and QEMU with
//! Debian's ipxe-qemu ROM for the VM); skips loudly without them. A Drop guard removes
//! every namespace, bridge, process and VM, pass or fail.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vcluster::agent::driver::{HostBridges, VmDriver};
use vcluster::agent::netns::LinuxBridges;
use vcluster::agent::qemu::{Accel, AccelChoice, QemuDriver, QemuSettings};
use vcluster::agent::services::{
    ClusterServices, ControllerRelay, REPORT_BATCH_WINDOW, ServicesConfig,
};
use vcluster::model::{
    BootDevice, FrontendSpec, InstallReport, InstallReportBatch, InstallReportOutcome,
    InstallReportOutcomes, InstallState, LeaseSpec, NetworkDevices, NetworkId, NodeSlot, NodeSpec,
    SITE_REPORTS_PORT, ServicesSpec, service_addresses, service_macs,
};

fn have(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn can_run(test: &str, needs_qemu: bool) -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    let mut ok = root && have("dnsmasq", "--version") && have("busybox", "--help");
    if needs_qemu {
        ok &= have("qemu-system-x86_64", "--version")
            && Path::new(vcluster::agent::qemu::DEBIAN_NIC_ROM).exists();
    }
    if ok {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: CI runs as root with dnsmasq, busybox and QEMU (scripts/install-deps)");
    }
    eprintln!(
        "SKIP {test}: needs root, dnsmasq, busybox{}",
        if needs_qemu { " and QEMU" } else { "" }
    );
    false
}

/// Everything a test made: services (through the services' own removal, then by name),
/// client namespaces, VMs, the bridge.
struct Cleanup {
    net: NetworkId,
    cluster: String,
    dir: PathBuf,
    clients: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let sh = |args: &[&str]| {
            let _ = Command::new(args[0]).args(&args[1..]).output();
        };
        // Processes first: dnsmasq, the relay, QEMU, by their pid files.
        for pid_file in walk(&self.dir)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "pid"))
        {
            if let Ok(pid) = std::fs::read_to_string(&pid_file) {
                sh(&["kill", "-9", pid.trim()]);
            }
        }
        for ns in self.clients.iter().cloned().chain([
            format!("{}-site-h1", self.cluster),
            format!("{}-frontend-h1", self.cluster),
        ]) {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", &ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    sh(&["kill", "-9", pid]);
                }
            }
            sh(&["ip", "netns", "del", &ns]);
        }
        for i in 0..4 {
            let slot = NodeSlot {
                network: self.net,
                index: i,
            };
            sh(&["ip", "link", "del", "dev", &slot.vm_tap_name()]);
        }
        sh(&["ip", "link", "del", "dev", &self.net.bridge_name()]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// A stand-in site cache: answers every request with its path, and records the paths.
async fn fake_cache() -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                log.lock().unwrap().push(path.clone());
                let body = if path.ends_with(".ipxe") {
                    // What the VM's firmware runs once it got here: nothing more to fetch.
                    "#!ipxe\necho reached the site cache\nexit\n".to_string()
                } else {
                    format!("cache says {path}\n")
                };
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    (addr, seen)
}

/// A client namespace on the bridge with `mac`.
fn client(ns: &str, veth: &str, bridge: &str, mac: &str) {
    let run = |args: &[&str]| {
        let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["ip", "netns", "add", ns]);
    run(&[
        "ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
    ]);
    run(&["ip", "link", "set", veth, "master", bridge, "up"]);
    run(&["ip", "-n", ns, "link", "set", "eth0", "address", mac, "up"]);
    run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
}

/// The address a DHCP client in `ns` is offered, if any, within a few seconds.
fn dhcp(ns: &str, dir: &Path) -> Option<String> {
    let script = dir.join(format!("{ns}.udhcpc"));
    let got = dir.join(format!("{ns}.lease"));
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$1\" = bound ] && echo \"$ip\" > {}\nexit 0\n",
            got.display()
        ),
    )
    .unwrap();
    Command::new("chmod")
        .arg("+x")
        .arg(&script)
        .status()
        .unwrap();
    let _ = Command::new("ip")
        .args([
            "netns", "exec", ns, "busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-f",
        ])
        .args(["-t", "4", "-T", "1", "-s"])
        .arg(&script)
        .output()
        .unwrap();
    std::fs::read_to_string(&got)
        .ok()
        .map(|s| s.trim().to_string())
}

fn wget(ns: &str, from: Option<&str>, url: &str) -> (bool, String) {
    if let Some(addr) = from {
        let _ = Command::new("ip")
            .args(["-n", ns, "addr", "replace", addr, "dev", "eth0"])
            .output();
    }
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-sSf", "-m", "5", url])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn pid_in(file: &Path) -> i32 {
    std::fs::read_to_string(file)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

struct World {
    net: NetworkId,
    cluster: String,
    bridge: String,
    dir: PathBuf,
    config: ServicesConfig,
    spec: ServicesSpec,
    /// The cluster's nodes on this host (all of them, here).
    nodes: Vec<NodeSpec>,
    seen: Arc<Mutex<Vec<String>>>,
    cleanup: Cleanup,
}

async fn world(offset: u32, nodes: &[(u32, &str)]) -> World {
    let net = NetworkId(0x0300_0000 + (std::process::id() % 0xffff) * 0x10 + offset);
    let dir = tempfile::tempdir().unwrap().keep();
    let cluster = format!("sv{}x{offset}", std::process::id());
    let cleanup = Cleanup {
        net,
        cluster: cluster.clone(),
        dir: dir.clone(),
        clients: Vec::new(),
    };
    let bridge = net.bridge_name();
    LinuxBridges.ensure(&bridge).await.unwrap();
    let (cache, seen) = fake_cache().await;
    let config = ServicesConfig {
        dir: dir.join("services"),
        exe: PathBuf::from(env!("CARGO_BIN_EXE_vcluster")),
        site_cache: cache,
        ipxe_dir: PathBuf::from(vcluster::agent::services::DEBIAN_IPXE_DIR),
        host: "h1".to_string(),
    };
    let subnet: ipnet::Ipv4Net = format!("10.252.{}.0/24", offset + 1 + std::process::id() % 200)
        .parse()
        .unwrap();
    let (site_ip, fe_ip) = service_addresses(subnet);
    let (site_mac, fe_mac) = service_macs(net);
    let leases: Vec<LeaseSpec> = nodes
        .iter()
        .map(|&(i, name)| LeaseSpec {
            node: name.to_string(),
            mac: NodeSlot {
                network: net,
                index: i,
            }
            .mac()
            .to_string(),
            address: std::net::Ipv4Addr::from(u32::from(subnet.network()) + i).to_string(),
            ipxe: format!("#!ipxe\necho {name}\nchain http://{site_ip}/provision/{name}.ipxe\n"),
            token: None,
        })
        .collect();
    let node_specs: Vec<NodeSpec> = leases
        .iter()
        .zip(nodes)
        .map(|(l, &(index, _))| NodeSpec {
            firmware: Default::default(),
            index,
            name: l.node.clone(),
            mac: l.mac.clone(),
            address: format!("{}/24", l.address),
            running: true,
            cpus: 1,
            memory_mib: 128,
            boot: BootDevice::Network,
        })
        .collect();
    let spec = ServicesSpec {
        site_address: format!("{site_ip}/24"),
        site_mac: site_mac.to_string(),
        frontend: Some(FrontendSpec {
            address: format!("{fe_ip}/24"),
            mac: fe_mac.to_string(),
            leases,
        }),
    };
    World {
        net,
        cluster,
        bridge,
        dir,
        config,
        spec,
        nodes: node_specs,
        seen,
        cleanup,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_frontend_leases_known_macs_only_serves_each_node_its_own_script_and_the_site_address_reaches_the_cache()
 {
    let test = "the_frontend_leases_known_macs_only_serves_each_node_its_own_script_and_the_site_address_reaches_the_cache";
    if !can_run(test, false) {
        return;
    }
    let name1 = format!("s{}-node-1", std::process::id());
    let name2 = format!("s{}-node-2", std::process::id());
    let mut w = world(1, &[(1, &name1), (2, &name2)]).await;
    let services = ClusterServices::new(w.config.clone());
    services
        .ensure(w.net, &w.cluster, &w.bridge, &w.spec, &w.nodes)
        .await
        .unwrap();
    let fe = w.spec.frontend.clone().unwrap();
    let fe_ip = fe.address.split('/').next().unwrap().to_string();
    let site_ip = w.spec.site_address.split('/').next().unwrap().to_string();

    // A known MAC gets its static address; an unknown one gets nothing.
    let known = format!("k{}", std::process::id());
    let stranger = format!("u{}", std::process::id());
    w.cleanup.clients.extend([known.clone(), stranger.clone()]);
    let mac1 = NodeSlot {
        network: w.net,
        index: 1,
    }
    .mac()
    .to_string();
    client(
        &known,
        &format!("vk{}", std::process::id() % 100000),
        &w.bridge,
        &mac1,
    );
    client(
        &stranger,
        &format!("vu{}", std::process::id() % 100000),
        &w.bridge,
        "02:aa:bb:cc:dd:ee",
    );
    assert_eq!(
        dhcp(&known, &w.dir).as_deref(),
        Some(fe.leases[0].address.as_str())
    );
    assert_eq!(
        dhcp(&stranger, &w.dir),
        None,
        "an unknown MAC gets no lease"
    );
    let log = std::fs::read_to_string(
        w.config
            .dir
            .join(format!("{:x}", w.net.0))
            .join("dnsmasq.log"),
    )
    .unwrap();
    assert!(
        log.contains("02:aa:bb:cc:dd:ee") && log.contains("ignored"),
        "{log}"
    );

    // The chain script, then the node's own script, to the node's address only.
    let addr1 = format!("{}/24", fe.leases[0].address);
    let (ok, body) = wget(&known, Some(&addr1), &format!("http://{fe_ip}/boot.ipxe"));
    assert!(
        ok && body.contains("/boot/${net0/mac:hexhyp}.ipxe"),
        "{body}"
    );
    let mac1_file = mac1.replace(':', "-");
    let (ok, body) = wget(
        &known,
        None,
        &format!("http://{fe_ip}/boot/{mac1_file}.ipxe"),
    );
    assert!(ok && body.contains(&format!("echo {name1}")), "{body}");
    let mac2_file = NodeSlot {
        network: w.net,
        index: 2,
    }
    .mac()
    .to_string()
    .replace(':', "-");
    let (ok, body) = wget(
        &known,
        None,
        &format!("http://{fe_ip}/boot/{mac2_file}.ipxe"),
    );
    assert!(
        !ok && !body.contains(&name2),
        "node 1 must not read node 2's script: {body}"
    );

    // The site-local address reaches the site's cache, on both ports.
    let (ok, body) = wget(
        &known,
        None,
        &format!("http://{site_ip}/debian/dists/bookworm/Release"),
    );
    assert!(
        ok && body.contains("cache says /debian/dists/bookworm/Release"),
        "{body}"
    );
    let (ok, _) = wget(&known, None, &format!("http://{site_ip}:3142/x"));
    assert!(ok);
    assert!(w.seen.lock().unwrap().contains(&"/x".to_string()));

    // An agent restart: a new ClusterServices finds dnsmasq and the relay and keeps them.
    let sdir = w.config.dir.join(format!("{:x}", w.net.0));
    let (dnsmasq, relay) = (
        pid_in(&sdir.join("dnsmasq.pid")),
        pid_in(&sdir.join("relay.pid")),
    );
    drop(services);
    let services = ClusterServices::new(w.config.clone());
    // A lease change on the way: node 2 gone.
    w.spec.frontend.as_mut().unwrap().leases.truncate(1);
    services
        .ensure(w.net, &w.cluster, &w.bridge, &w.spec, &w.nodes)
        .await
        .unwrap();
    assert_eq!(
        pid_in(&sdir.join("dnsmasq.pid")),
        dnsmasq,
        "dnsmasq kept, reloaded"
    );
    assert_eq!(pid_in(&sdir.join("relay.pid")), relay, "the relay kept");
    let hosts = std::fs::read_to_string(sdir.join("dhcp-hosts")).unwrap();
    assert!(hosts.contains(&name1) && !hosts.contains(&name2), "{hosts}");
    let (ok, body) = wget(
        &known,
        None,
        &format!("http://{fe_ip}/boot/{mac1_file}.ipxe"),
    );
    assert!(
        ok && body.contains(&name1),
        "the new agent's HTTP serves: {body}"
    );

    // Removed: namespaces and processes gone.
    services.remove(w.net).await.unwrap();
    let netns = String::from_utf8(
        Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        !netns.contains(&format!("{}-site-h1", w.cluster))
            && !netns.contains(&format!("{}-frontend-h1", w.cluster))
    );
    assert!(!Path::new(&format!("/proc/{dnsmasq}")).exists() || is_zombie(dnsmasq));
    assert!(!Path::new(&format!("/proc/{relay}")).exists() || is_zombie(relay));
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qemu_node_pxe_boots_through_the_frontend_and_fetches_from_the_site_address() {
    let test = "a_qemu_node_pxe_boots_through_the_frontend_and_fetches_from_the_site_address";
    if !can_run(test, true) {
        return;
    }
    let name = format!("p{}-node-1", std::process::id());
    let w = world(2, &[(1, &name)]).await;
    let services = ClusterServices::new(w.config.clone());
    services
        .ensure(w.net, &w.cluster, &w.bridge, &w.spec, &w.nodes)
        .await
        .unwrap();
    let driver = QemuDriver::new(
        QemuSettings::new(w.dir.join("vms")),
        AccelChoice {
            accel: Accel::Tcg,
            reason: "the test forces TCG".into(),
        },
    );
    let slot = NodeSlot {
        network: w.net,
        index: 1,
    };
    let lease = &w.spec.frontend.as_ref().unwrap().leases[0];
    let spec = NodeSpec {
        firmware: Default::default(),
        index: 1,
        name: name.clone(),
        mac: lease.mac.clone(),
        address: format!("{}/24", lease.address),
        running: true,
        cpus: 1,
        memory_mib: 128,
        boot: BootDevice::Network,
    };
    assert!(driver.ensure(slot, &w.bridge, &spec).await.unwrap().running);
    // The VM's firmware: DHCP from dnsmasq, /boot.ipxe and its own script from the
    // frontend, then the script's chain through the site-local address to the cache.
    let want = format!("/provision/{name}.ipxe");
    let start = Instant::now();
    while !w.seen.lock().unwrap().contains(&want) {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the VM never reached the cache: saw {:?}; dnsmasq log: {}",
            w.seen.lock().unwrap(),
            std::fs::read_to_string(
                w.config
                    .dir
                    .join(format!("{:x}", w.net.0))
                    .join("dnsmasq.log")
            )
            .unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = std::fs::read_to_string(
        w.config
            .dir
            .join(format!("{:x}", w.net.0))
            .join("dnsmasq.log"),
    )
    .unwrap();
    assert!(
        log.contains(&format!("DHCPACK(eth0) {} {}", lease.address, lease.mac)),
        "{log}"
    );
    driver.remove(slot, Some(&name)).await.unwrap();
    services.remove(w.net).await.unwrap();
}

/// A stand-in controller: records each batch of install reports (host, `Authorization`,
/// reports) and answers each report 204, or 409 when its step is `refuse-me`.
type Batches = Arc<Mutex<Vec<(String, String, Vec<InstallReport>)>>>;

async fn fake_controller() -> (String, Batches) {
    let calls: Batches = Arc::new(Mutex::new(Vec::new()));
    let seen = calls.clone();
    let app = axum::Router::new().route(
        "/v1/hosts/{host}/install-reports/batch",
        axum::routing::post(
            move |axum::extract::Path(host): axum::extract::Path<String>,
                  headers: axum::http::HeaderMap,
                  axum::Json(b): axum::Json<InstallReportBatch>| {
                let seen = seen.clone();
                async move {
                    let auth = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    let results = b
                        .reports
                        .iter()
                        .map(|r| {
                            if r.step.as_deref() == Some("refuse-me") {
                                InstallReportOutcome {
                                    status: 409,
                                    error: Some("refused by the test".into()),
                                }
                            } else {
                                InstallReportOutcome {
                                    status: 204,
                                    error: None,
                                }
                            }
                        })
                        .collect();
                    seen.lock().unwrap().push((host, auth, b.reports));
                    axum::Json(InstallReportOutcomes { results })
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, calls)
}

/// POSTs `body` from namespace `ns` (at address `from`, with prefix, if given) with bearer
/// `token`; the status, 0 when nothing answered.
fn post(ns: &str, from: Option<&str>, url: &str, token: Option<&str>, body: &str) -> u16 {
    if let Some(addr) = from {
        // The only address: the request leaves from it.
        for args in [
            &["-n", ns, "addr", "flush", "dev", "eth0"][..],
            &["-n", ns, "addr", "add", addr, "dev", "eth0"][..],
        ] {
            let _ = Command::new("ip").args(args).output();
        }
    }
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "curl", "-s", "-o", "/dev/null"])
        .args(["-w", "%{http_code}", "-m", "10"])
        .args(["-H", "Content-Type: application/json", "-d", body]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = cmd.arg(url).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_site_address_takes_its_own_nodes_reports_and_sends_them_to_the_controller_in_batches()
{
    let test =
        "the_site_address_takes_its_own_nodes_reports_and_sends_them_to_the_controller_in_batches";
    if !can_run(test, false) {
        return;
    }
    let name1 = format!("r{}-node-1", std::process::id());
    let name2 = format!("r{}-node-2", std::process::id());
    let mut w = world(3, &[(1, &name1), (2, &name2)]).await;
    let (base, calls) = fake_controller().await;
    let services = ClusterServices::new(w.config.clone());
    services.set_relay(ControllerRelay {
        http: reqwest::Client::new(),
        base,
        token: "agent-secret".to_string(),
        host: "h1".to_string(),
    });
    // Node 1 runs on this host; node 2 elsewhere.
    let mine = vec![w.nodes[0].clone()];
    services
        .ensure(w.net, &w.cluster, &w.bridge, &w.spec, &mine)
        .await
        .unwrap();
    let site_ip = w.spec.site_address.split('/').next().unwrap().to_string();
    let url = format!("http://{site_ip}:{SITE_REPORTS_PORT}/install/callback");
    let ns = format!("q{}", std::process::id());
    w.cleanup.clients.push(ns.clone());
    client(
        &ns,
        &format!("vq{}", std::process::id() % 100000),
        &w.bridge,
        &w.nodes[0].mac,
    );
    let (addr1, addr2) = (w.nodes[0].address.clone(), w.nodes[1].address.clone());

    // Four progress reports at once from node 1: each answered 202 as soon as it is
    // queued; the later ones take the place of the one still waiting.
    let _ = post(&ns, Some(&addr1), &url, None, "{}");
    let concurrently = |bodies: Vec<String>| -> Vec<u16> {
        let threads: Vec<_> = bodies
            .into_iter()
            .map(|body| {
                let (ns, url) = (ns.clone(), url.clone());
                std::thread::spawn(move || post(&ns, None, &url, Some("tok-1"), &body))
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    };
    let total_sent = || -> usize { calls.lock().unwrap().iter().map(|b| b.2.len()).sum() };
    let sent = async |n: usize| {
        for _ in 0..100 {
            if total_sent() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{n} reports not sent in 5 s: {:?}", calls.lock().unwrap());
    };
    let answers = concurrently(
        ["a", "b", "c", "d"]
            .iter()
            .map(|step| format!(r#"{{"phase":"installing","step":"{step}","packages_total":9}}"#))
            .collect(),
    );
    assert_eq!(answers, [202; 4]);
    sent(1).await;
    tokio::time::sleep(REPORT_BATCH_WINDOW * 2).await;
    let batches = calls.lock().unwrap().clone();
    assert!(
        (1..=2).contains(&total_sent()),
        "4 progress reports at once: not folded: {batches:?}"
    );
    for (host, auth, rs) in &batches {
        assert_eq!(host, "h1");
        assert_eq!(auth, "Bearer agent-secret", "sent as this host's agent");
        for r in rs {
            assert_eq!(
                (r.node.as_str(), r.token.as_str()),
                (name1.as_str(), "tok-1")
            );
            assert_eq!(r.state, InstallState::Installing);
            assert_eq!(r.packages_total, Some(9));
        }
    }
    // Reports of another state wait for their own outcome (taken, or refused with the
    // controller's reason), and leave together.
    let (sent_before, batches_before) = (total_sent(), calls.lock().unwrap().len());
    let mut answers = concurrently(
        ["s1", "s2", "refuse-me", "s3"]
            .iter()
            .map(|step| format!(r#"{{"phase":"failed","step":"{step}","reason":"disk full"}}"#))
            .collect(),
    );
    answers.sort();
    assert_eq!(answers, [204, 204, 204, 409]);
    assert_eq!(total_sent() - sent_before, 4);
    let requests = calls.lock().unwrap().len() - batches_before;
    assert!(
        requests <= 2,
        "4 reports in {requests} requests: not batched"
    );

    // A node posting progress in a loop: each report takes the place of its last one
    // still waiting, so it never holds more than one place in the queue.
    let sent_before = total_sent();
    let flood = concurrently(
        (0..12)
            .map(|i| format!(r#"{{"phase":"installing","step":"f{i}"}}"#))
            .collect(),
    );
    assert_eq!(flood, [202; 12]);
    sent(sent_before + 1).await;
    tokio::time::sleep(REPORT_BATCH_WINDOW * 2).await;
    let flood_sent = total_sent() - sent_before;
    assert!(
        flood_sent <= 6,
        "12 progress reports at once from one node: {flood_sent} sent, not folded"
    );
    // Reports that wait for their outcome, posted in a loop: past a few waiting the node
    // is told 429 at once (the queue never holds more of one node's, so the others' are
    // never held back).
    let mut flood = concurrently(
        (0..12)
            .map(|i| format!(r#"{{"phase":"failed","step":"f{i}","reason":"r"}}"#))
            .collect(),
    );
    flood.sort();
    assert!(
        flood.contains(&204) && flood.contains(&429),
        "12 failed reports at once from one node: {flood:?}"
    );
    assert!(flood.iter().all(|s| *s == 204 || *s == 429), "{flood:?}");
    let before = calls.lock().unwrap().len();

    // Refused at the site, nothing sent: another host's node, a stranger, no token, a
    // made-up field.
    let body = r#"{"phase":"installing"}"#;
    assert_eq!(post(&ns, Some(&addr2), &url, Some("tok-2"), body), 403);
    let stranger = format!(
        "{}/24",
        std::net::Ipv4Addr::from(u32::from(host_part(&addr1)) + 100,)
    );
    assert_eq!(post(&ns, Some(&stranger), &url, Some("tok-1"), body), 403);
    assert_eq!(post(&ns, Some(&addr1), &url, None, body), 401);
    assert_eq!(
        post(
            &ns,
            None,
            &url,
            Some("tok-1"),
            r#"{"phase":"installing","x":1}"#
        ),
        422
    );
    assert_eq!(calls.lock().unwrap().len(), before, "nothing more sent");

    // Node 2 moves here: its reports are taken from now on.
    services
        .ensure(w.net, &w.cluster, &w.bridge, &w.spec, &w.nodes)
        .await
        .unwrap();
    // After a quiet window a report leaves at once, without waiting for others.
    tokio::time::sleep(REPORT_BATCH_WINDOW).await;
    let asked = std::time::Instant::now();
    assert_eq!(
        post(
            &ns,
            Some(&addr2),
            &url,
            Some("tok-2"),
            r#"{"phase":"booted"}"#
        ),
        204
    );
    assert!(
        asked.elapsed() < REPORT_BATCH_WINDOW,
        "a lone report waited {:?}",
        asked.elapsed()
    );
    let last = calls.lock().unwrap().last().unwrap().2.clone();
    assert_eq!((last.len(), last[0].node.as_str()), (1, name2.as_str()));

    // Removed: nothing listens there any more.
    services.remove(w.net).await.unwrap();
    assert_eq!(post(&ns, None, &url, Some("tok-2"), body), 0);
}

fn host_part(with_prefix: &str) -> std::net::Ipv4Addr {
    with_prefix.split('/').next().unwrap().parse().unwrap()
}
