//! The `qemu` VM driver: one QEMU process per node, driven over QMP.
//!
//! Each node has a directory `<dir>/<node>/` holding everything of it: `vm.json` (what
//! the driver made: slot, MAC, CPUs, memory, boot device, accelerator), `disk.qcow2`
//! (made with `qemu-img`), `qmp.sock`, `qemu.pid`, `console.log` (the serial console,
//! appended across boots) and `qemu.log` (QEMU's own messages). Its NIC is virtio-net on
//! a persistent TAP `vm<network hex>n<index>` on the cluster's bridge, with the node's
//! MAC; the NIC's iPXE ROM network-boots it while an install is pending.
//!
//! QEMU runs daemonized, in a session of its own: an agent that stops or restarts leaves
//! every VM running and finds them again from their directories (pid file checked
//! against `/proc`, QMP socket). Like the `netns` driver's node agents, a VM has a
//! `power` file while it should run: a VM whose `power` file says `on` but whose QEMU is
//! gone has died (crashed, killed, or shut down from inside) and is reported not running,
//! never restarted here: that is recovery's decision. Powering off through [`VmDriver::power`]
//! (fencing) quits QEMU, confirms the process is gone, and leaves `power` = `fenced`, so
//! not even a reconcile starts it again until a power-on.
//!
//! It needs root (TAP devices, bridges), `qemu-system-x86_64` and `qemu-img`. It never
//! touches a directory or device whose name does not follow these conventions.

pub mod accel;
pub mod qmp;

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::process::Command;

use super::driver::{DriverError, FoundNode, VmDriver};
// Node names become directory names: the netns driver's rule keeps them plain.
use super::netns::{check_netns_name as check_node_name, ip, is_zombie, write_atomically};
use crate::model::{BootDevice, Firmware, NetworkId, NodeSlot, NodeSpec};
pub use accel::{Accel, AccelChoice};

/// What the driver needs from the host.
#[derive(Debug, Clone)]
pub struct QemuSettings {
    /// Where the nodes' directories live.
    pub dir: PathBuf,
    pub qemu: PathBuf,
    pub qemu_img: PathBuf,
    /// The virtio-net option ROM (iPXE) that network-boots the nodes.
    pub nic_rom: Option<PathBuf>,
    /// Size of a new node's disk.
    pub disk_gib: u32,
    /// Where OVMF's `OVMF_CODE_4M.fd` and `OVMF_VARS_4M.fd` are (UEFI nodes).
    pub ovmf_dir: PathBuf,
}

/// Where Debian's ipxe-qemu package puts the virtio-net ROM (BIOS and EFI images both).
pub const DEBIAN_NIC_ROM: &str = "/usr/lib/ipxe/qemu/efi-virtio.rom";
/// Where Debian's ovmf package puts the UEFI firmware.
pub const DEBIAN_OVMF_DIR: &str = "/usr/share/OVMF";
/// The firmware's code (read-only) and the template of each VM's variable store.
const OVMF_CODE: &str = "OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "OVMF_VARS_4M.fd";

impl QemuSettings {
    /// The usual programs from `PATH`, the Debian ROM if installed, 8 GiB disks.
    pub fn new(dir: PathBuf) -> QemuSettings {
        QemuSettings {
            dir,
            qemu: PathBuf::from("qemu-system-x86_64"),
            qemu_img: PathBuf::from("qemu-img"),
            nic_rom: Some(PathBuf::from(DEBIAN_NIC_ROM)).filter(|p| p.exists()),
            disk_gib: 8,
            ovmf_dir: PathBuf::from(DEBIAN_OVMF_DIR),
        }
    }
}

#[derive(Debug, Clone)]
pub struct QemuDriver {
    settings: QemuSettings,
    accel: AccelChoice,
}

/// What the driver made for one node (`vm.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VmRecord {
    name: String,
    network: u32,
    index: u32,
    mac: String,
    cpus: u32,
    memory_mib: u32,
    boot: BootDevice,
    accel: Accel,
    /// Absent in records written before UEFI: BIOS.
    #[serde(default)]
    firmware: Firmware,
}

impl VmRecord {
    fn slot(&self) -> NodeSlot {
        NodeSlot {
            network: NetworkId(self.network),
            index: self.index,
        }
    }
}

/// The node's `power` file: absent (never started, or stopped on purpose), `on` (should
/// run), `fenced` (powered off by [`VmDriver::power`]: stays off until powered on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PowerMark {
    Absent,
    On,
    Fenced,
}

/// QEMU may take this long to daemonize (set the VM up and detach).
const START_TIME: Duration = Duration::from_secs(30);
/// And this long to exit after `quit`, before it is killed.
const QUIT_TIME: Duration = Duration::from_secs(5);

fn node_error(node: &str, message: impl Into<String>) -> DriverError {
    DriverError::Node {
        node: node.to_string(),
        message: message.into(),
    }
}

impl QemuDriver {
    /// A driver that runs its VMs with `accel` (see [`accel::probe`]).
    pub fn new(settings: QemuSettings, accel: AccelChoice) -> QemuDriver {
        QemuDriver { settings, accel }
    }

    /// Checks that QEMU and qemu-img run, probes the accelerator unless one is forced,
    /// and makes the driver.
    pub async fn probe(
        settings: QemuSettings,
        forced: Option<Accel>,
    ) -> Result<QemuDriver, DriverError> {
        for program in [&settings.qemu, &settings.qemu_img] {
            let out = Command::new(program)
                .arg("--version")
                .kill_on_drop(true)
                .output()
                .await
                .map_err(|e| DriverError::Command {
                    command: format!("{} --version", program.display()),
                    message: e.to_string(),
                })?;
            if !out.status.success() {
                return Err(DriverError::Command {
                    command: format!("{} --version", program.display()),
                    message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                });
            }
        }
        let accel = match forced {
            Some(accel) => AccelChoice {
                accel,
                reason: "chosen by --accel".to_string(),
            },
            None => accel::probe(&settings.qemu, settings.nic_rom.as_deref()).await,
        };
        tracing::info!(accel = accel.accel.as_str(), reason = %accel.reason, "QEMU accelerator");
        std::fs::create_dir_all(&settings.dir).map_err(|e| DriverError::Command {
            command: format!("mkdir {}", settings.dir.display()),
            message: e.to_string(),
        })?;
        Ok(QemuDriver::new(settings, accel))
    }

    /// The accelerator this driver's VMs run with, and why.
    pub fn accel(&self) -> &AccelChoice {
        &self.accel
    }

    fn vm_dir(&self, node: &str) -> PathBuf {
        self.settings.dir.join(node)
    }

    fn qmp_socket(&self, node: &str) -> PathBuf {
        self.vm_dir(node).join("qmp.sock")
    }

    fn read_record(&self, node: &str) -> Option<VmRecord> {
        let bytes = std::fs::read(self.vm_dir(node).join("vm.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn power_mark(&self, node: &str) -> PowerMark {
        match std::fs::read_to_string(self.vm_dir(node).join("power")) {
            Ok(s) if s.trim() == "fenced" => PowerMark::Fenced,
            Ok(_) => PowerMark::On,
            Err(_) => PowerMark::Absent,
        }
    }

    fn set_power_mark(&self, node: &str, mark: PowerMark) -> Result<(), DriverError> {
        let path = self.vm_dir(node).join("power");
        let result = match mark {
            PowerMark::Absent => match std::fs::remove_file(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                other => other,
            },
            PowerMark::On => write_atomically(&path, b"on\n"),
            PowerMark::Fenced => write_atomically(&path, b"fenced\n"),
        };
        result.map_err(|e| node_error(node, format!("{}: {e}", path.display())))
    }

    /// QEMU's pid, when its pid file names a live QEMU of this node (its QMP socket on
    /// the command line).
    fn live_pid(&self, node: &str) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.vm_dir(node).join("qemu.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let socket = self.qmp_socket(node);
        let needle = socket.to_string_lossy();
        let ours = cmdline
            .split(|&b| b == 0)
            .any(|a| String::from_utf8_lossy(a).contains(needle.as_ref()))
            && !is_zombie(pid);
        ours.then_some(pid)
    }

    /// A UEFI VM's variable store: a copy of OVMF's template, made once and kept (it
    /// holds the boot entries the firmware makes).
    fn ensure_efivars(&self, node: &str) -> Result<(), DriverError> {
        let vars = self.vm_dir(node).join("efivars.fd");
        if vars.exists() {
            return Ok(());
        }
        let code = self.settings.ovmf_dir.join(OVMF_CODE);
        let template = self.settings.ovmf_dir.join(OVMF_VARS);
        if !code.exists() || !template.exists() {
            return Err(node_error(
                node,
                format!(
                    "UEFI needs OVMF: no {} and {} in {} (apt-get install ovmf, or the agent's \
                     --ovmf-dir)",
                    OVMF_CODE,
                    OVMF_VARS,
                    self.settings.ovmf_dir.display()
                ),
            ));
        }
        let tmp = vars.with_extension("fd.tmp");
        std::fs::copy(&template, &tmp)
            .and_then(|_| std::fs::rename(&tmp, &vars))
            .map_err(|e| node_error(node, format!("its UEFI variable store: {e}")))?;
        Ok(())
    }

    async fn ensure_disk(&self, node: &str) -> Result<PathBuf, DriverError> {
        let disk = self.vm_dir(node).join("disk.qcow2");
        if disk.exists() {
            return Ok(disk);
        }
        let tmp = self.vm_dir(node).join("disk.qcow2.tmp");
        let out = Command::new(&self.settings.qemu_img)
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&tmp)
            .arg(format!("{}G", self.settings.disk_gib))
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| node_error(node, format!("qemu-img: {e}")))?;
        if !out.status.success() {
            return Err(node_error(
                node,
                format!(
                    "qemu-img create: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
        std::fs::rename(&tmp, &disk).map_err(|e| node_error(node, format!("its disk: {e}")))?;
        Ok(disk)
    }

    async fn ensure_tap(&self, slot: NodeSlot, bridge: &str) -> Result<String, DriverError> {
        let tap = slot.vm_tap_name();
        if ip(&["link", "show", "dev", &tap]).await.is_err() {
            ip(&["tuntap", "add", "dev", &tap, "mode", "tap", "vnet_hdr"]).await?;
        }
        ip(&["link", "set", "dev", &tap, "master", bridge]).await?;
        ip(&["link", "set", "dev", &tap, "up"]).await?;
        Ok(tap)
    }

    fn command(&self, record: &VmRecord, tap: &str, disk: &Path) -> Command {
        let dir = self.vm_dir(&record.name);
        let (net_index, disk_index) = match record.boot {
            BootDevice::Network => ("bootindex=1", "bootindex=2"),
            BootDevice::Disk => ("bootindex=2", "bootindex=1"),
        };
        let rom = match (&self.settings.nic_rom, record.boot) {
            (Some(rom), _) => format!(",romfile={}", rom.display()),
            (None, _) => ",romfile=".to_string(),
        };
        let mut cmd = Command::new(&self.settings.qemu);
        cmd.arg("-name")
            .arg(format!("guest={},debug-threads=on", record.name))
            .args(["-machine", "q35", "-accel", record.accel.as_str()])
            .args([
                "-cpu",
                if record.accel == Accel::Kvm {
                    "host"
                } else {
                    "max"
                },
            ])
            .args(["-smp", &record.cpus.to_string()]);
        if record.firmware == Firmware::Uefi {
            // OVMF: its code read-only, the VM's own variable store (boot entries) beside it.
            cmd.arg("-drive")
                .arg(format!(
                    "if=pflash,format=raw,unit=0,readonly=on,file={}",
                    self.settings.ovmf_dir.join(OVMF_CODE).display()
                ))
                .arg("-drive")
                .arg(format!(
                    "if=pflash,format=raw,unit=1,file={}",
                    dir.join("efivars.fd").display()
                ));
        }
        cmd.args(["-m", &record.memory_mib.to_string()])
            .args(["-nodefaults", "-display", "none", "-daemonize"])
            .arg("-pidfile")
            .arg(dir.join("qemu.pid"))
            .arg("-qmp")
            .arg(format!(
                "unix:{},server=on,wait=off",
                self.qmp_socket(&record.name).display()
            ))
            .arg("-chardev")
            .arg(format!(
                "file,id=console,path={},append=on",
                dir.join("console.log").display()
            ))
            .args(["-serial", "chardev:console"])
            .arg("-netdev")
            .arg(format!(
                "tap,id=net0,ifname={tap},script=no,downscript=no,vhost=off"
            ))
            .arg("-device")
            .arg(format!(
                "virtio-net-pci,id=nic0,netdev=net0,mac={},disable-legacy=on,{net_index}{rom}",
                record.mac
            ))
            .arg("-drive")
            .arg(format!(
                "file={},if=none,id=disk0,format=qcow2,cache=unsafe,discard=unmap",
                disk.display()
            ))
            .arg("-device")
            .arg(format!("virtio-blk-pci,id=blk0,drive=disk0,{disk_index}"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(false);
        // SAFETY: setsid(2) in the child between fork and exec touches no memory of ours.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        cmd
    }

    async fn start(&self, record: &VmRecord, tap: &str, disk: &Path) -> Result<(), DriverError> {
        let node = record.name.as_str();
        let dir = self.vm_dir(node);
        let log_path = dir.join("qemu.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| node_error(node, format!("{}: {e}", log_path.display())))?;
        let _ = std::fs::remove_file(self.qmp_socket(node));
        let _ = std::fs::remove_file(dir.join("qemu.pid"));
        // Marked before it starts: a QEMU that dies from here on is a crash, not "off".
        self.set_power_mark(node, PowerMark::On)?;
        let mut cmd = self.command(record, tap, disk);
        cmd.stderr(log);
        let mut child = cmd
            .spawn()
            .map_err(|e| node_error(node, format!("starting QEMU: {e}")))?;
        // With -daemonize the first process exits once the VM is set up.
        let status = tokio::time::timeout(START_TIME, child.wait())
            .await
            .map_err(|_| {
                node_error(
                    node,
                    format!("QEMU did not start in {} s", START_TIME.as_secs()),
                )
            })?
            .map_err(|e| node_error(node, format!("QEMU: {e}")))?;
        if !status.success() || self.live_pid(node).is_none() {
            let _ = self.set_power_mark(node, PowerMark::Absent);
            return Err(node_error(
                node,
                format!(
                    "QEMU failed to start ({status}): {}",
                    last_lines(&log_path, 5)
                ),
            ));
        }
        tracing::info!(
            node,
            accel = record.accel.as_str(),
            boot = record.boot.as_str(),
            "VM started"
        );
        Ok(())
    }

    /// Ends the node's QEMU (QMP `quit`, then SIGKILL) and confirms it is gone.
    async fn stop(&self, node: &str) -> Result<(), DriverError> {
        let Some(pid) = self.live_pid(node) else {
            return Ok(());
        };
        if let Err(e) = qmp::execute(&self.qmp_socket(node), "quit", None).await {
            tracing::warn!(node, error = %e, "QMP quit failed: killing QEMU");
        }
        // The process itself, not the pid file: QEMU removes that before it has exited.
        let running = || !is_zombie(pid);
        let deadline = tokio::time::Instant::now() + QUIT_TIME;
        while running() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if running() {
            // SAFETY: kill(2) on the pid our pid file named and /proc confirmed was ours.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            let deadline = tokio::time::Instant::now() + QUIT_TIME;
            while running() {
                if tokio::time::Instant::now() > deadline {
                    return Err(node_error(
                        node,
                        format!(
                            "QEMU (pid {pid}) survived SIGKILL for {} s",
                            QUIT_TIME.as_secs()
                        ),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    /// Sets the boot order of a running VM: it takes effect at the next reset (QEMU
    /// rebuilds the firmware's boot list then).
    async fn set_boot(&self, node: &str, boot: BootDevice) -> Result<(), DriverError> {
        let (net, disk) = match boot {
            BootDevice::Network => (1, 2),
            BootDevice::Disk => (2, 1),
        };
        let socket = self.qmp_socket(node);
        // QEMU refuses an index another device holds: the NIC steps aside first.
        for (device, index) in [("nic0", 9), ("blk0", disk), ("nic0", net)] {
            qmp::execute(
                &socket,
                "qom-set",
                Some(serde_json::json!({
                    "path": format!("/machine/peripheral/{device}"),
                    "property": "bootindex",
                    "value": index,
                })),
            )
            .await
            .map_err(|e| node_error(node, e.to_string()))?;
        }
        Ok(())
    }
}

#[async_trait]
impl VmDriver for QemuDriver {
    fn kind(&self) -> &'static str {
        "qemu"
    }

    async fn list(&self) -> Result<Vec<FoundNode>, DriverError> {
        let entries = match std::fs::read_dir(&self.settings.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(DriverError::Command {
                    command: format!("listing {}", self.settings.dir.display()),
                    message: e.to_string(),
                });
            }
        };
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if check_node_name(&name).is_err() {
                continue;
            }
            let Some(record) = self.read_record(&name) else {
                continue;
            };
            if record.name != name {
                continue;
            }
            found.push(FoundNode {
                slot: record.slot(),
                running: self.live_pid(&name).is_some(),
                name: Some(name),
            });
        }
        found.sort_by_key(|f| f.slot);
        Ok(found)
    }

    async fn ensure(
        &self,
        slot: NodeSlot,
        bridge: &str,
        spec: &NodeSpec,
    ) -> Result<FoundNode, DriverError> {
        let node = spec.name.as_str();
        check_node_name(node)?;
        let dir = self.vm_dir(node);
        std::fs::create_dir_all(&dir)
            .map_err(|e| node_error(node, format!("{}: {e}", dir.display())))?;
        let previous = self.read_record(node);
        let record = VmRecord {
            name: node.to_string(),
            network: slot.network.0,
            index: slot.index,
            mac: spec.mac.to_ascii_lowercase(),
            cpus: spec.cpus.max(1),
            memory_mib: spec.memory_mib.max(64),
            boot: spec.boot,
            firmware: spec.firmware,
            // A VM keeps the accelerator it started with until it is started again.
            accel: previous.as_ref().map_or(self.accel.accel, |p| {
                if self.live_pid(node).is_some() {
                    p.accel
                } else {
                    self.accel.accel
                }
            }),
        };
        let disk = self.ensure_disk(node).await?;
        if record.firmware == Firmware::Uefi {
            self.ensure_efivars(node)?;
        }
        let tap = self.ensure_tap(slot, bridge).await?;
        let alive = self.live_pid(node).is_some();
        if previous.as_ref() != Some(&record) {
            let bytes = serde_json::to_vec_pretty(&record).expect("a VmRecord serializes");
            write_atomically(&dir.join("vm.json"), &bytes)
                .map_err(|e| node_error(node, format!("vm.json: {e}")))?;
        }
        if alive && previous.as_ref().map(|p| p.boot) != Some(record.boot) {
            self.set_boot(node, record.boot).await?;
        }
        let running = if spec.running {
            match (alive, self.power_mark(node)) {
                (true, _) => true,
                (false, PowerMark::Absent) => {
                    self.start(&record, &tap, &disk).await?;
                    true
                }
                (false, PowerMark::On) => {
                    tracing::warn!(node, "the VM's QEMU is gone: reported, not restarted");
                    false
                }
                (false, PowerMark::Fenced) => false,
            }
        } else {
            self.stop(node).await?;
            self.set_power_mark(node, PowerMark::Absent)?;
            false
        };
        Ok(FoundNode {
            slot,
            name: Some(node.to_string()),
            running,
        })
    }

    async fn power(&self, name: &str, on: bool) -> Result<bool, DriverError> {
        check_node_name(name)?;
        let Some(record) = self.read_record(name) else {
            return Err(node_error(name, "no such node on this host"));
        };
        if on {
            if self.live_pid(name).is_some() {
                return Ok(true);
            }
            let disk = self.ensure_disk(name).await?;
            let tap = record.slot().vm_tap_name();
            if ip(&["link", "show", "dev", &tap]).await.is_err() {
                return Err(node_error(name, format!("its TAP {tap} is gone")));
            }
            self.set_power_mark(name, PowerMark::Absent)?;
            let record = VmRecord {
                accel: self.accel.accel,
                ..record
            };
            self.start(&record, &tap, &disk).await?;
            return Ok(true);
        }
        // Fenced: marked first (nothing restarts it from here on), then QEMU ended and
        // confirmed gone.
        self.set_power_mark(name, PowerMark::Fenced)?;
        self.stop(name).await?;
        Ok(false)
    }

    async fn guest_running(&self, node: &str) -> bool {
        if check_node_name(node).is_err() || self.live_pid(node).is_none() {
            return false;
        }
        match qmp::status(&self.qmp_socket(node)).await {
            Ok(status) => status == "running",
            Err(e) => {
                tracing::debug!(node, error = %e, "asking QEMU for the VM's run state");
                false
            }
        }
    }

    fn accel(&self, node: &str) -> Option<String> {
        check_node_name(node).ok()?;
        self.live_pid(node)?;
        self.read_record(node).map(|r| r.accel.as_str().to_string())
    }

    /// The node's serial console log (what `vcluster node console` shows).
    fn console_log(&self, node: &str) -> Option<PathBuf> {
        check_node_name(node).ok()?;
        Some(self.vm_dir(node).join("console.log"))
    }

    async fn remove(&self, slot: NodeSlot, name: Option<&str>) -> Result<(), DriverError> {
        if let Some(node) = name {
            check_node_name(node)?;
            self.set_power_mark(node, PowerMark::Fenced).ok();
            self.stop(node).await?;
            let dir = self.vm_dir(node);
            match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(node_error(node, format!("removing {}: {e}", dir.display())));
                }
                _ => {}
            }
        }
        let tap = slot.vm_tap_name();
        if ip(&["link", "show", "dev", &tap]).await.is_ok() {
            ip(&["link", "del", "dev", &tap]).await?;
        }
        Ok(())
    }
}

/// The last `n` lines of a log file, on one line, for an error message.
fn last_lines(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(n);
    let tail = lines[start..].join(" / ");
    if tail.is_empty() {
        format!("nothing in {}", path.display())
    } else {
        tail
    }
}
