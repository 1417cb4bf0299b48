//! Choosing QEMU's accelerator: KVM where it can run an ordinary guest, TCG otherwise.
//!
//! `/dev/kvm` being there proves little: a paravirtual KVM (`kvm_pvm`, as on the machines
//! this project is tested on) opens fine and even runs a real-mode boot sector, yet hangs
//! a firmware's network boot. So the probe boots what the nodes boot: SeaBIOS and the
//! NIC's iPXE ROM on QEMU's user-mode network, and takes KVM only if iPXE's DHCP request
//! reaches the wire within [`PROBE_TIME`]. Anything else (no `/dev/kvm`, no ROM, a hang,
//! an error) is TCG, with the reason said. Never fails: a machine without KVM still runs
//! every node, slower.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::process::Command;

/// How long the probe guest may take to send its first DHCP request under KVM (TCG
/// needs about 1 s for it on the test machines).
pub const PROBE_TIME: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

impl std::str::FromStr for Accel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            other => Err(format!(
                "unknown accelerator {other:?} (expected kvm or tcg)"
            )),
        }
    }
}

/// The accelerator chosen and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelChoice {
    pub accel: Accel,
    pub reason: String,
}

/// Probes the host (see the module's comment).
pub async fn probe(qemu: &Path, nic_rom: Option<&Path>) -> AccelChoice {
    let tcg = |reason: String| AccelChoice {
        accel: Accel::Tcg,
        reason,
    };
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return tcg(format!("/dev/kvm: {e}"));
    }
    let Some(rom) = nic_rom else {
        return tcg("no iPXE ROM to probe KVM with".to_string());
    };
    match boots_under_kvm(qemu, rom).await {
        Ok(()) => AccelChoice {
            accel: Accel::Kvm,
            reason: "a probe guest network-booted under KVM".to_string(),
        },
        Err(why) => {
            let pvm = Path::new("/sys/module/kvm_pvm").exists();
            tcg(format!(
                "KVM cannot run an ordinary guest here{}: {why}",
                if pvm {
                    " (kvm_pvm, a paravirtual KVM)"
                } else {
                    ""
                }
            ))
        }
    }
}

async fn boots_under_kvm(qemu: &Path, rom: &Path) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| format!("a temporary directory: {e}"))?;
    let pcap = dir.path().join("probe.pcap");
    let mut child = Command::new(qemu)
        .args([
            "-accel",
            "kvm",
            "-machine",
            "q35",
            "-nodefaults",
            "-display",
        ])
        .args(["none", "-m", "64", "-no-reboot"])
        .args(["-netdev", "user,id=n0,restrict=on"])
        .arg("-object")
        .arg(format!(
            "filter-dump,id=f0,netdev=n0,file={}",
            pcap.display()
        ))
        .arg("-device")
        .arg(format!(
            "virtio-net-pci,netdev=n0,disable-legacy=on,bootindex=1,romfile={}",
            rom.display()
        ))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", qemu.display()))?;
    let deadline = tokio::time::Instant::now() + PROBE_TIME;
    // A pcap file is a 24-byte header, then packets: any packet is iPXE talking.
    while tokio::time::Instant::now() < deadline {
        if std::fs::metadata(&pcap)
            .map(|m| m.len() > 24)
            .unwrap_or(false)
        {
            let _ = child.kill().await;
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("the probe guest's QEMU exited ({status})"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill().await;
    Err(format!(
        "its firmware sent nothing in {} s",
        PROBE_TIME.as_secs()
    ))
}
