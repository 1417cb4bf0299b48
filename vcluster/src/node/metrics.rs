//! What a node reports about itself, node_exporter's core set read from `/proc` and
//! `statvfs`: uptime, load, memory, CPU time, network and root filesystem counters.
//! Inside a lightweight node `/proc/net/dev` is the node's own namespace; the rest is the
//! host's kernel (a namespace has no CPU or memory of its own), which is what
//! node_exporter in a container reports too.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeStatus {
    pub name: String,
    /// Seconds since the node's kernel booted.
    pub uptime_secs: f64,
    /// Seconds since the node agent started.
    pub agent_uptime_secs: u64,
    /// 1, 5 and 15 minute load averages.
    pub load: [f64; 3],
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    /// CPU time in seconds summed over CPUs, by mode.
    pub cpu: CpuSeconds,
    pub cpus: u32,
    pub network: Vec<NetDevice>,
    /// Block devices (partitions, loop and ram devices left out).
    #[serde(default)]
    pub disks: Vec<DiskDevice>,
    /// The root filesystem.
    pub filesystem: Filesystem,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DiskDevice {
    pub device: String,
    pub reads_completed: u64,
    pub read_bytes: u64,
    pub writes_completed: u64,
    pub written_bytes: u64,
    /// Milliseconds spent doing I/O.
    pub io_time_ms: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CpuSeconds {
    pub user: f64,
    pub nice: f64,
    pub system: f64,
    pub idle: f64,
    pub iowait: f64,
    pub irq: f64,
    pub softirq: f64,
    pub steal: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetDevice {
    pub device: String,
    pub receive_bytes: u64,
    pub receive_packets: u64,
    pub receive_errors: u64,
    pub receive_drops: u64,
    pub transmit_bytes: u64,
    pub transmit_packets: u64,
    pub transmit_errors: u64,
    pub transmit_drops: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Filesystem {
    pub size_bytes: u64,
    pub available_bytes: u64,
}

impl NodeStatus {
    /// Reads everything it can; a file that cannot be read leaves its fields at zero.
    pub fn read(name: &str) -> NodeStatus {
        let text = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let mut s = NodeStatus {
            name: name.to_string(),
            ..NodeStatus::default()
        };
        s.uptime_secs = parse_uptime(&text("/proc/uptime"));
        s.load = parse_loadavg(&text("/proc/loadavg"));
        (s.memory_total_bytes, s.memory_available_bytes) = parse_meminfo(&text("/proc/meminfo"));
        (s.cpu, s.cpus) = parse_stat(&text("/proc/stat"), clock_ticks());
        s.network = parse_net_dev(&text("/proc/net/dev"));
        s.disks = parse_diskstats(&text("/proc/diskstats"));
        s.filesystem = statvfs("/");
        s
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no memory effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

fn statvfs(path: &str) -> Filesystem {
    let Ok(c) = std::ffi::CString::new(path) else {
        return Filesystem::default();
    };
    // SAFETY: statvfs writes into the zeroed struct we own; the path is NUL-terminated.
    let mut v: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut v) } != 0 {
        return Filesystem::default();
    }
    let frsize = v.f_frsize as u64;
    Filesystem {
        size_bytes: (v.f_blocks as u64).saturating_mul(frsize),
        available_bytes: (v.f_bavail as u64).saturating_mul(frsize),
    }
}

pub fn parse_uptime(s: &str) -> f64 {
    s.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

pub fn parse_loadavg(s: &str) -> [f64; 3] {
    let mut it = s.split_whitespace().map(|v| v.parse().unwrap_or(0.0));
    [
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
    ]
}

/// (MemTotal, MemAvailable) in bytes.
pub fn parse_meminfo(s: &str) -> (u64, u64) {
    let field = |key: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kib| kib.saturating_mul(1024))
            .unwrap_or(0)
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

/// The `cpu` line in seconds, and the number of `cpuN` lines.
pub fn parse_stat(s: &str, ticks: f64) -> (CpuSeconds, u32) {
    let mut cpu = CpuSeconds::default();
    let mut n = 0u32;
    for line in s.lines() {
        let mut it = line.split_whitespace();
        match it.next() {
            Some("cpu") => {
                let v: Vec<f64> = it
                    .map(|x| x.parse::<f64>().unwrap_or(0.0) / ticks)
                    .collect();
                let at = |i: usize| v.get(i).copied().unwrap_or(0.0);
                cpu = CpuSeconds {
                    user: at(0),
                    nice: at(1),
                    system: at(2),
                    idle: at(3),
                    iowait: at(4),
                    irq: at(5),
                    softirq: at(6),
                    steal: at(7),
                };
            }
            Some(k) if k.starts_with("cpu") => n = n.saturating_add(1),
            _ => {}
        }
    }
    (cpu, n)
}

pub fn parse_net_dev(s: &str) -> Vec<NetDevice> {
    s.lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let v: Vec<u64> = rest
                .split_whitespace()
                .map(|x| x.parse().unwrap_or(0))
                .collect();
            if v.len() < 16 {
                return None;
            }
            Some(NetDevice {
                device: name.trim().to_string(),
                receive_bytes: v[0],
                receive_packets: v[1],
                receive_errors: v[2],
                receive_drops: v[3],
                transmit_bytes: v[8],
                transmit_packets: v[9],
                transmit_errors: v[10],
                transmit_drops: v[11],
            })
        })
        .collect()
}

/// Whole block devices from `/proc/diskstats` (sectors are 512 bytes there, whatever the
/// device's own sector size).
pub fn parse_diskstats(s: &str) -> Vec<DiskDevice> {
    s.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 14 {
                return None;
            }
            let name = f[2];
            let skip = ["loop", "ram", "zram", "dm-", "sr"];
            if skip.iter().any(|p| name.starts_with(p)) {
                return None;
            }
            // A partition is its disk's name plus a number (sda1, vda2, nvme0n1p1).
            let is_partition =
                std::path::Path::new(&format!("/sys/class/block/{name}/partition")).exists();
            if is_partition {
                return None;
            }
            let n = |i: usize| f[i].parse::<u64>().unwrap_or(0);
            Some(DiskDevice {
                device: name.to_string(),
                reads_completed: n(3),
                read_bytes: n(5).saturating_mul(512),
                writes_completed: n(7),
                written_bytes: n(9).saturating_mul(512),
                io_time_ms: n(12),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse_and_garbage_reads_as_zero() {
        assert_eq!(parse_uptime("123.45 678.9\n"), 123.45);
        assert_eq!(parse_uptime("x"), 0.0);
        assert_eq!(
            parse_loadavg("0.50 0.25 0.10 1/200 999\n"),
            [0.5, 0.25, 0.1]
        );
        assert_eq!(parse_loadavg(""), [0.0; 3]);
        let mem = "MemTotal:       16384 kB\nMemFree: 1 kB\nMemAvailable:    8192 kB\n";
        assert_eq!(parse_meminfo(mem), (16384 * 1024, 8192 * 1024));
        assert_eq!(parse_meminfo("MemTotal: 99999999999999999999 kB"), (0, 0));
        let stat = "cpu  100 0 50 1000 5 0 1 0 0 0\ncpu0 50 0 25 500 2 0 0 0 0 0\ncpu1 50 0 25 500 3 0 1 0 0 0\nintr 1\n";
        let (cpu, n) = parse_stat(stat, 100.0);
        assert_eq!(n, 2);
        assert_eq!(cpu.user, 1.0);
        assert_eq!(cpu.idle, 10.0);
        let dev = "Inter-|   Receive\n face |bytes\n  eth0: 100 2 0 0 0 0 0 0 200 3 0 0 0 0 0 0\n    lo: 1 1 0 0 0 0 0 0 1 1 0 0 0 0 0 0\n bad: 1 2\n";
        let devs = parse_net_dev(dev);
        assert_eq!(devs.len(), 2);
        assert_eq!(devs[0].device, "eth0");
        assert_eq!(devs[0].transmit_bytes, 200);
        let disks = "   7       0 loop0 1 0 2 0 0 0 0 0 0 0 0 0 0\n 254       0 vdz 100 5 2000 30 50 7 4000 60 0 90 120\n bad line\n";
        let d = parse_diskstats(disks);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].device, "vdz");
        assert_eq!(d[0].read_bytes, 2000 * 512);
        assert_eq!(d[0].written_bytes, 4000 * 512);
        assert_eq!(d[0].io_time_ms, 90);
    }

    #[test]
    fn this_machine_reads() {
        let s = NodeStatus::read("me");
        assert!(s.uptime_secs > 0.0);
        assert!(s.memory_total_bytes > 0);
        assert!(s.cpus >= 1);
        assert!(s.filesystem.size_bytes > 0);
        assert!(s.network.iter().any(|d| d.device == "lo"));
    }
}
