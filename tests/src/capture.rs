//! [`Capture`]: `tcpdump` on an interface of a namespace, for tests that must show what
//! an observer of that link would see (that no token crosses the WAN readable, say).
//! The capture is stopped and its file read by [`Capture::finish`]; dropping it earlier
//! stops `tcpdump` (the file goes with the topology's directory).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::netns::NetNs;
use crate::ping::try_wait_until;
use crate::process::Process;

pub struct Capture {
    process: Process,
    file: PathBuf,
}

impl Capture {
    /// Starts `tcpdump -i IFACE FILTER` in `ns`, writing whole packets to `file`, and
    /// waits until it listens. `iface` may be `any`.
    pub fn start(ns: &NetNs, iface: &str, filter: &str, file: &Path) -> Capture {
        let log = file.with_extension("log");
        let mut cmd = ns.command(
            "tcpdump",
            [
                "-i",
                iface,
                "-n",
                "-U",
                // Hand each packet to tcpdump at once: without it, packets still in the
                // kernel's ring block when SIGINT comes are counted but never written.
                "--immediate-mode",
                "-s",
                "0",
                "-w",
                &file.display().to_string(),
                filter,
            ],
        );
        cmd.stdin(std::process::Stdio::null());
        let process = Process::spawn(format!("tcpdump on {iface}"), cmd, &log);
        let listening = try_wait_until(Duration::from_secs(10), || {
            std::fs::read_to_string(&log).is_ok_and(|l| l.contains("listening on"))
        });
        if !listening {
            process.dump_log();
            panic!(
                "tcpdump did not start listening on {iface} in {}",
                ns.name()
            );
        }
        Capture {
            process,
            file: file.to_path_buf(),
        }
    }

    /// Stops the capture and returns the capture file's bytes (pcap: headers and whole
    /// packets).
    pub fn finish(mut self) -> Vec<u8> {
        // tcpdump writes what it has and exits on SIGINT.
        self.process.signal(libc::SIGINT);
        if self.process.wait_timeout(Duration::from_secs(5)).is_none() {
            self.process.stop();
        }
        std::fs::read(&self.file)
            .unwrap_or_else(|e| panic!("reading the capture {}: {e}", self.file.display()))
    }
}

/// True when `needle` occurs in `haystack`.
pub fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// How many TLS records of `content_type` (22 handshake, 23 application data) with a TLS
/// 1.0-1.3 record version start somewhere in `bytes`: a rough count, enough to show that
/// a capture holds TLS.
pub fn tls_records(bytes: &[u8], content_type: u8) -> usize {
    bytes
        .windows(3)
        .filter(|w| w[0] == content_type && w[1] == 3 && (1..=4).contains(&w[2]))
        .count()
}
