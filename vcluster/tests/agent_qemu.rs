//! The `qemu` VM driver with real QEMU (TCG here: this machine's KVM cannot run ordinary
//! guests), a real bridge, a TAP and a real dnsmasq watching the VM's firmware ask for a
//! lease. Needs root and qemu-system-x86_64 with Debian's ipxe-qemu ROM; skips loudly
//! without them (CI has them). Every bridge, TAP, QEMU and dnsmasq a test starts is
//! removed by a Drop guard, pass or fail.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use vcluster::agent::driver::{HostBridges, VmDriver};
use vcluster::agent::netns::LinuxBridges;
use vcluster::agent::qemu::{Accel, AccelChoice, QemuDriver, QemuSettings, qmp};
use vcluster::model::{BootDevice, NetworkDevices, NetworkId, NodeSlot, NodeSpec};

fn can_run(test: &str) -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    let qemu = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    let rom = Path::new(vcluster::agent::qemu::DEBIAN_NIC_ROM).exists();
    let dnsmasq = Command::new("dnsmasq")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if root && qemu && rom && dnsmasq {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: CI runs as root with QEMU, ipxe-qemu and dnsmasq (scripts/install-deps)");
    }
    eprintln!(
        "SKIP {test}: needs root, qemu-system-x86_64, {} and dnsmasq",
        vcluster::agent::qemu::DEBIAN_NIC_ROM
    );
    false
}

/// Our bridge, TAPs, QEMUs (through the node directories' pid files) and dnsmasq, gone
/// on drop.
struct Cleanup {
    dir: PathBuf,
    net: NetworkId,
    dnsmasq: Option<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut d) = self.dnsmasq.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                if let Ok(pid) = std::fs::read_to_string(e.path().join("qemu.pid"))
                    && let Ok(pid) = pid.trim().parse::<i32>()
                {
                    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                }
            }
        }
        for i in 0..4 {
            let tap = NodeSlot {
                network: self.net,
                index: i,
            }
            .vm_tap_name();
            let _ = Command::new("ip")
                .args(["link", "del", "dev", &tap])
                .output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", "dev", &self.net.bridge_name()])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn tcg() -> AccelChoice {
    AccelChoice {
        accel: Accel::Tcg,
        reason: "the test forces TCG".to_string(),
    }
}

fn spec(net: NetworkId, index: u32, name: &str, running: bool, boot: BootDevice) -> NodeSpec {
    NodeSpec {
        firmware: Default::default(),
        index,
        name: name.to_string(),
        mac: NodeSlot {
            network: net,
            index,
        }
        .mac()
        .to_string(),
        address: format!("10.251.0.{index}/24"),
        running,
        cpus: 1,
        memory_mib: 128,
        boot,
    }
}

fn pid_of(dir: &Path, node: &str) -> Option<i32> {
    std::fs::read_to_string(dir.join(node).join("qemu.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

async fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_qemu_node_network_boots_on_its_bridge_survives_an_agent_restart_and_is_fenced_not_restarted()
 {
    let test = "a_qemu_node_network_boots_on_its_bridge_survives_an_agent_restart_and_is_fenced_not_restarted";
    if !can_run(test) {
        return;
    }
    let net = NetworkId(0x0200_0000 + (std::process::id() % 0xffff) * 0x10);
    let dir = tempfile::tempdir().unwrap().keep();
    let mut cleanup = Cleanup {
        dir: dir.clone(),
        net,
        dnsmasq: None,
    };
    let bridge = net.bridge_name();
    LinuxBridges.ensure(&bridge).await.unwrap();
    // A dnsmasq on the bridge that logs every DHCP request it sees.
    let octet = 1 + std::process::id() % 250;
    let bridge_ip = format!("10.251.{octet}.254/24");
    assert!(
        Command::new("ip")
            .args(["addr", "add", &bridge_ip, "dev", &bridge])
            .status()
            .unwrap()
            .success()
    );
    let dhcp_log = dir.join("dnsmasq.log");
    cleanup.dnsmasq = Some(
        Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--port=0",
            ])
            .arg(format!("--interface={bridge}"))
            .arg("--bind-interfaces")
            .arg(format!(
                "--dhcp-range=10.251.{octet}.10,10.251.{octet}.20,1m"
            ))
            .arg("--log-dhcp")
            .arg(format!("--log-facility={}", dhcp_log.display()))
            .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()))
            .spawn()
            .unwrap(),
    );

    let settings = QemuSettings::new(dir.join("vms"));
    let driver = QemuDriver::probe(settings.clone(), Some(Accel::Tcg))
        .await
        .unwrap();
    assert_eq!(driver.accel().accel, Accel::Tcg);
    let name = format!("q{}-node-1", std::process::id());
    let slot = NodeSlot {
        network: net,
        index: 1,
    };
    let mac = slot.mac().to_string();
    let found = driver
        .ensure(
            slot,
            &bridge,
            &spec(net, 1, &name, true, BootDevice::Network),
        )
        .await
        .unwrap();
    assert!(found.running);
    let vms = dir.join("vms");
    let pid = pid_of(&vms, &name).expect("QEMU wrote its pid file");
    assert!(alive(pid));
    let qmp_socket = vms.join(&name).join("qmp.sock");
    assert_eq!(qmp::status(&qmp_socket).await.unwrap(), "running");
    assert!(
        vms.join(&name).join("disk.qcow2").exists(),
        "a qcow2 disk per node"
    );
    // The TAP is on the cluster's bridge.
    let master = Command::new("ip")
        .args(["-j", "link", "show", "dev", &slot.vm_tap_name()])
        .output()
        .unwrap();
    let master: serde_json::Value = serde_json::from_slice(&master.stdout).unwrap();
    assert_eq!(master[0]["master"], bridge.as_str());

    // Network first: the NIC's iPXE asks for a lease, from the node's MAC, on the bridge.
    wait_for(
        "the VM's DHCP request in dnsmasq's log",
        Duration::from_secs(60),
        || {
            std::fs::read_to_string(&dhcp_log)
                .unwrap_or_default()
                .contains(&format!("DHCPDISCOVER({bridge}) {mac}"))
        },
    )
    .await;

    // The boot order of a running VM changes through QMP (at its next reset).
    driver
        .ensure(slot, &bridge, &spec(net, 1, &name, true, BootDevice::Disk))
        .await
        .unwrap();
    let bootindex = qmp::execute(
        &qmp_socket,
        "qom-get",
        Some(serde_json::json!({"path": "/machine/peripheral/blk0", "property": "bootindex"})),
    )
    .await
    .unwrap();
    assert_eq!(
        bootindex, 1,
        "the disk boots first once the install is done"
    );
    assert_eq!(
        pid_of(&vms, &name),
        Some(pid),
        "no restart for a boot order change"
    );

    // An agent restart: a new driver finds the VM running and starts no second QEMU.
    drop(driver);
    let driver = QemuDriver::new(settings.clone(), tcg());
    let listed = driver.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name.as_deref(), Some(name.as_str()));
    assert_eq!(listed[0].slot, slot);
    assert!(listed[0].running);
    assert!(
        driver
            .ensure(slot, &bridge, &spec(net, 1, &name, true, BootDevice::Disk))
            .await
            .unwrap()
            .running
    );
    assert_eq!(
        pid_of(&vms, &name),
        Some(pid),
        "the same QEMU, not a second one"
    );

    // Fenced: QEMU gone, confirmed, and a reconcile does not start it again.
    assert!(!driver.power(&name, false).await.unwrap());
    assert!(!alive(pid), "the fenced VM's QEMU is gone");
    let again = driver
        .ensure(slot, &bridge, &spec(net, 1, &name, true, BootDevice::Disk))
        .await
        .unwrap();
    assert!(!again.running, "a fenced VM stays off");
    assert!(!driver.list().await.unwrap()[0].running);

    // Powered on: a new QEMU.
    assert!(driver.power(&name, true).await.unwrap());
    let pid2 = pid_of(&vms, &name).unwrap();
    assert_ne!(pid2, pid);
    assert!(alive(pid2));

    // Killed from outside: reported not running, and not restarted by a reconcile.
    assert!(
        Command::new("kill")
            .args(["-9", &pid2.to_string()])
            .status()
            .unwrap()
            .success()
    );
    wait_for(
        "the killed QEMU to be gone",
        Duration::from_secs(10),
        || !alive(pid2),
    )
    .await;
    assert!(
        !driver.list().await.unwrap()[0].running,
        "a dead VM is reported"
    );
    let after = driver
        .ensure(slot, &bridge, &spec(net, 1, &name, true, BootDevice::Disk))
        .await
        .unwrap();
    assert!(!after.running, "a dead VM is not silently restarted");
    assert_eq!(pid_of(&vms, &name), Some(pid2), "no new QEMU was started");

    // Removed: directory, TAP and process gone.
    driver.remove(slot, Some(&name)).await.unwrap();
    assert!(!vms.join(&name).exists());
    assert!(
        !Command::new("ip")
            .args(["link", "show", "dev", &slot.vm_tap_name()])
            .output()
            .unwrap()
            .status
            .success()
    );
    assert!(driver.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_qemu_node_that_cannot_start_says_why_and_is_not_left_marked_running() {
    let test = "a_qemu_node_that_cannot_start_says_why_and_is_not_left_marked_running";
    if !can_run(test) {
        return;
    }
    let net = NetworkId(0x0200_0000 + (std::process::id() % 0xffff) * 0x10 + 1);
    let dir = tempfile::tempdir().unwrap().keep();
    let _cleanup = Cleanup {
        dir: dir.clone(),
        net,
        dnsmasq: None,
    };
    let bridge = net.bridge_name();
    LinuxBridges.ensure(&bridge).await.unwrap();
    let mut settings = QemuSettings::new(dir.join("vms"));
    settings.nic_rom = Some(dir.join("no-such.rom"));
    let driver = QemuDriver::new(settings, tcg());
    let name = format!("q{}-node-2", std::process::id());
    let slot = NodeSlot {
        network: net,
        index: 2,
    };
    let err = driver
        .ensure(
            slot,
            &bridge,
            &spec(net, 2, &name, true, BootDevice::Network),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&name) && err.contains("no-such.rom"), "{err}");
    assert!(!dir.join("vms").join(&name).join("power").exists());
    assert!(!driver.list().await.unwrap()[0].running);
    driver.remove(slot, Some(&name)).await.unwrap();
}
