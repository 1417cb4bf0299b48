//! Starting the `wanem` binary for a test: [`Emulator`] is the running process and its
//! [`WanLink`] client, and [`WanPair`] is the smallest fixture around one: two endpoint
//! namespaces joined through a middle namespace where the emulator forwards.

use std::path::Path;
use std::time::Duration;

use crate::env::{TempDir, bin_path};
use crate::netns::{NetNs, veth};
use crate::ping::try_wait_until;
use crate::process::Process;
use crate::wanem::WanLink;

/// A running `wanem` forwarding between two interfaces of one namespace.
pub struct Emulator {
    // Declared first: dropped (stopped) before anything it forwards between.
    process: Process,
    link: WanLink,
}

impl Emulator {
    /// Starts `wanem --a <a> --b <b>` in `ns` with its control socket and log in `dir`
    /// (file names from `tag`), and waits until it answers. Both interfaces must exist.
    pub fn start(ns: &NetNs, a: &str, b: &str, dir: &Path, tag: &str, seed: u64) -> Emulator {
        let socket = dir.join(format!("{tag}.sock"));
        let wanem = bin_path("wanem");
        let wanem = wanem.to_string_lossy();
        let socket_s = socket.to_string_lossy();
        let seed_s = seed.to_string();
        let mut process = ns.spawn(
            &format!("wanem {tag}"),
            &[
                &*wanem,
                "--a",
                a,
                "--b",
                b,
                "--control",
                &socket_s,
                "--seed",
                &seed_s,
            ],
            &dir.join(format!("{tag}.log")),
        );
        let link = WanLink::new(&socket);
        let ready = try_wait_until(Duration::from_secs(10), || {
            process.assert_running();
            link.is_ready()
        });
        if !ready {
            process.dump_log();
            panic!(
                "wanem {tag} did not answer on {} within 10 s",
                socket.display()
            );
        }
        Emulator { process, link }
    }

    pub fn link(&self) -> &WanLink {
        &self.link
    }

    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }
}

/// Address of the left end of a [`WanPair`].
pub const PAIR_LEFT_ADDR: &str = "10.99.0.1";
/// Address of the right end of a [`WanPair`].
pub const PAIR_RIGHT_ADDR: &str = "10.99.0.2";

/// `left:eth0 <-veth-> wan:a ==wanem== wan:b <-veth-> right:eth0`, addresses
/// 10.99.0.1/24 and 10.99.0.2/24, offloads off, MTU 1500. `AToB` is left to right.
pub struct WanPair {
    emulator: Emulator,
    left: NetNs,
    right: NetNs,
    wan: NetNs,
    dir: TempDir,
}

impl WanPair {
    pub fn new(seed: u64) -> WanPair {
        WanPair::build(seed, false)
    }

    /// The same with the kernel's default offloads left on at both ends (checksum
    /// offload, TSO/GSO): the emulator then completes partial checksums and passes GSO
    /// super-frames whole. For testing that path; impairments get coarser.
    pub fn with_offloads(seed: u64) -> WanPair {
        WanPair::build(seed, true)
    }

    fn build(seed: u64, offloads: bool) -> WanPair {
        let dir = TempDir::new("pair");
        let left = NetNs::new("left");
        let wan = NetNs::new("wan");
        let right = NetNs::new("right");
        veth(&left, "eth0", &wan, "a");
        veth(&right, "eth0", &wan, "b");
        for (ns, addr) in [(&left, PAIR_LEFT_ADDR), (&right, PAIR_RIGHT_ADDR)] {
            if !offloads {
                ns.disable_offloads("eth0");
            }
            ns.ip_batch(&[
                format!("addr add {addr}/24 dev eth0"),
                "link set dev eth0 up".into(),
            ]);
        }
        for dev in ["a", "b"] {
            if !offloads {
                wan.disable_offloads(dev);
            }
            wan.link_up(dev);
        }
        let emulator = Emulator::start(&wan, "a", "b", dir.path(), "pair", seed);
        WanPair {
            emulator,
            left,
            right,
            wan,
            dir,
        }
    }

    pub fn left(&self) -> &NetNs {
        &self.left
    }
    pub fn right(&self) -> &NetNs {
        &self.right
    }
    pub fn wan(&self) -> &NetNs {
        &self.wan
    }
    pub fn link(&self) -> &WanLink {
        self.emulator.link()
    }
    pub fn emulator(&mut self) -> &mut Emulator {
        &mut self.emulator
    }
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}
