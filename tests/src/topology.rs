//! [`Topology`]: the standard shape of a multi-site test, built from namespaces.
//!
//! ```text
//!  site i (i = 1..=N)                              wan namespace
//!  ┌ vm(i,1): eth0 10.77.i.1/16 ─┐                ┌────────────────────────────────┐
//!  ├ vm(i,2): eth0 ...          ─┤ host(i)        │ s<i>a ==wanem i== s<i>b ── p<i> │
//!  │        v1, v2 ... ── br0   │ wan0 10.254.0.i ┼─┘                       │       │
//!  └─────────────────────────────┘ ───────veth───┘                 wanbr (all p<i>) │
//!                                                 └────────────────────────────────┘
//! ```
//!
//! Every site's access link has its own emulator ([`Topology::link`]): `AToB` is the
//! site's upstream (towards the WAN bridge), `BToA` its downstream. The RTT between sites
//! i and j is the sum of the delays of link i and link j, both ways. The overlay daemon is
//! not part of the topology: tests start `vpnd` in each host namespace
//! (`topology.host(i).spawn(...)`) and attach its TAP to `br0`.
//!
//! Sites and VMs are numbered from 1, like their addresses. Dropping the topology stops
//! the emulators, then deletes every namespace (killing what still runs in them).

use std::path::Path;

use crate::emulator::Emulator;
use crate::env::TempDir;
use crate::netns::{NetNs, ip_batch};
use crate::process::Process;
use crate::wanem::{Direction, Dirs, LinkConfig, LinkParams, LinkStats, WanLink};

type SiteAddr = Box<dyn Fn(usize) -> Option<String>>;
type VmAddr = Box<dyn Fn(usize, usize) -> Option<String>>;

/// Builds a [`Topology`]; every setting has the default the module doc shows.
pub struct TopologyBuilder {
    sites: usize,
    vms_per_site: usize,
    wan_addr: SiteAddr,
    bridge_addr: SiteAddr,
    vm_addr: VmAddr,
    link: LinkConfig,
    seed: u64,
    wan_mtu: u32,
    ipv6: bool,
}

impl Default for TopologyBuilder {
    fn default() -> Self {
        TopologyBuilder {
            sites: 3,
            vms_per_site: 2,
            wan_addr: Box::new(|i| Some(format!("10.254.0.{i}/24"))),
            bridge_addr: Box::new(|_| None),
            vm_addr: Box::new(|i, j| Some(format!("10.77.{i}.{j}/16"))),
            link: LinkConfig::default(),
            seed: 1,
            wan_mtu: 1500,
            ipv6: false,
        }
    }
}

impl TopologyBuilder {
    /// Number of sites (default 3).
    pub fn sites(mut self, n: usize) -> Self {
        assert!((1..=250).contains(&n), "sites must be in 1..=250, got {n}");
        self.sites = n;
        self
    }

    /// VM namespaces per site (default 2; 0 is allowed).
    pub fn vms_per_site(mut self, m: usize) -> Self {
        self.vms_per_site = m;
        self
    }

    /// Address (CIDR) of site i's `wan0`; default `10.254.0.<i>/24`.
    pub fn wan_addr(mut self, f: impl Fn(usize) -> String + 'static) -> Self {
        self.wan_addr = Box::new(move |i| Some(f(i)));
        self
    }

    /// Address (CIDR) of site i's `br0`, if any; default none.
    pub fn bridge_addr(mut self, f: impl Fn(usize) -> Option<String> + 'static) -> Self {
        self.bridge_addr = Box::new(f);
        self
    }

    /// Address (CIDR) of VM j at site i, or `None` to leave `eth0` without one (a DHCP
    /// client's starting point); default `10.77.<i>.<j>/16`.
    pub fn vm_addr(mut self, f: impl Fn(usize, usize) -> Option<String> + 'static) -> Self {
        self.vm_addr = Box::new(f);
        self
    }

    /// Impairments every access link starts with (both directions of each).
    pub fn link_params(mut self, p: LinkParams) -> Self {
        self.link = LinkConfig {
            a_to_b: p,
            b_to_a: p,
        };
        self
    }

    /// Base seed of the emulators' random generators (site i uses seed + i).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// MTU of the WAN path (`wan0`, the emulator's and the WAN bridge's interfaces).
    pub fn wan_mtu(mut self, mtu: u32) -> Self {
        self.wan_mtu = mtu;
        self
    }

    /// Keep IPv6 on in every namespace (off by default: it adds frames to the counters).
    pub fn ipv6(mut self, on: bool) -> Self {
        self.ipv6 = on;
        self
    }

    pub fn build(self) -> Topology {
        let dir = TempDir::new("topo");
        let wan = NetNs::new("wan");
        if self.ipv6 {
            wan.enable_ipv6();
        }
        let mut hosts = Vec::new();
        let mut vms = Vec::new();
        for i in 1..=self.sites {
            let host = NetNs::new(&format!("h{i}"));
            let mut site_vms = Vec::new();
            for j in 1..=self.vms_per_site {
                let vm = NetNs::new(&format!("h{i}v{j}"));
                if self.ipv6 {
                    vm.enable_ipv6();
                }
                site_vms.push(vm);
            }
            if self.ipv6 {
                host.enable_ipv6();
            }
            hosts.push(host);
            vms.push(site_vms);
        }

        // Every veth in one `ip -batch`: created straight into their namespaces.
        let mut veths = Vec::new();
        for (idx, host) in hosts.iter().enumerate() {
            let i = idx + 1;
            veths.push(format!(
                "link add wan0 netns {} type veth peer name s{i}a netns {}",
                host.name(),
                wan.name()
            ));
            veths.push(format!(
                "link add p{i} netns {} type veth peer name s{i}b netns {}",
                wan.name(),
                wan.name()
            ));
            for (jdx, vm) in vms[idx].iter().enumerate() {
                veths.push(format!(
                    "link add eth0 netns {} type veth peer name v{} netns {}",
                    vm.name(),
                    jdx + 1,
                    host.name()
                ));
            }
        }
        ip_batch(None, &veths);

        let mtu = self.wan_mtu;
        let mut wan_cmds = vec![
            "link add wanbr type bridge stp_state 0 forward_delay 0 mcast_snooping 0".to_string(),
            format!("link set dev wanbr mtu {mtu} up"),
        ];
        for i in 1..=self.sites {
            for dev in [format!("s{i}a"), format!("s{i}b"), format!("p{i}")] {
                wan.disable_offloads(&dev);
                wan_cmds.push(format!("link set dev {dev} mtu {mtu} up"));
            }
            wan_cmds.push(format!("link set dev p{i} master wanbr"));
        }
        wan.ip_batch(&wan_cmds);

        for (idx, host) in hosts.iter().enumerate() {
            let i = idx + 1;
            host.disable_offloads("wan0");
            let mut cmds = vec![
                "link add br0 type bridge stp_state 0 forward_delay 0 mcast_snooping 0".to_string(),
                "link set dev br0 up".to_string(),
                format!("link set dev wan0 mtu {mtu} up"),
            ];
            if let Some(a) = (self.wan_addr)(i) {
                cmds.push(format!("addr add {a} dev wan0"));
            }
            if let Some(a) = (self.bridge_addr)(i) {
                cmds.push(format!("addr add {a} dev br0"));
            }
            for j in 1..=vms[idx].len() {
                cmds.push(format!("link set dev v{j} master br0 up"));
            }
            host.ip_batch(&cmds);
            for (jdx, vm) in vms[idx].iter().enumerate() {
                let mut cmds = vec!["link set dev eth0 up".to_string()];
                if let Some(a) = (self.vm_addr)(i, jdx + 1) {
                    cmds.push(format!("addr add {a} dev eth0"));
                }
                vm.ip_batch(&cmds);
            }
        }

        let mut emulators = Vec::new();
        for i in 1..=self.sites {
            let e = Emulator::start(
                &wan,
                &format!("s{i}a"),
                &format!("s{i}b"),
                dir.path(),
                &format!("wan{i}"),
                self.seed + i as u64,
            );
            if self.link != LinkConfig::default() {
                e.link().set(Dirs::AToB, self.link.a_to_b);
                e.link().set(Dirs::BToA, self.link.b_to_a);
            }
            emulators.push(e);
        }
        Topology {
            emulators,
            vms,
            hosts,
            wan,
            dir,
            wan_addrs: (1..=self.sites).map(|i| (self.wan_addr)(i)).collect(),
            vm_addrs: (1..=self.sites)
                .map(|i| {
                    (1..=self.vms_per_site)
                        .map(|j| (self.vm_addr)(i, j))
                        .collect()
                })
                .collect(),
        }
    }
}

/// N sites joined through emulated access links; see the module doc for the shape.
pub struct Topology {
    // Drop order: emulators, then VMs, hosts and the WAN, then the directory.
    emulators: Vec<Emulator>,
    vms: Vec<Vec<NetNs>>,
    hosts: Vec<NetNs>,
    wan: NetNs,
    dir: TempDir,
    wan_addrs: Vec<Option<String>>,
    vm_addrs: Vec<Vec<Option<String>>>,
}

fn strip_prefix_len(cidr: &str) -> String {
    cidr.split('/').next().unwrap_or(cidr).to_string()
}

impl Topology {
    /// A site's access link direction towards the WAN.
    pub const UPSTREAM: Direction = Direction::AToB;
    /// A site's access link direction from the WAN.
    pub const DOWNSTREAM: Direction = Direction::BToA;

    pub fn builder() -> TopologyBuilder {
        TopologyBuilder::default()
    }

    /// Starts a long-running `argv` in `ns` (a host or VM of this topology) with its
    /// output in `<dir>/<name>.log`; e.g. a site's overlay daemon:
    /// `topo.spawn(topo.host(1), "vpnd1", &[vpnd, "up", "-c", cfg])`.
    pub fn spawn<S: AsRef<std::ffi::OsStr>>(&self, ns: &NetNs, name: &str, argv: &[S]) -> Process {
        ns.spawn(name, argv, &self.dir.join(format!("{name}.log")))
    }

    pub fn sites(&self) -> usize {
        self.hosts.len()
    }

    /// The host namespace of site `i` (1-based): `br0`, `wan0`, ports `v<j>`.
    pub fn host(&self, i: usize) -> &NetNs {
        self.hosts
            .get(i.wrapping_sub(1))
            .unwrap_or_else(|| panic!("no site {i}: sites are 1..={}", self.hosts.len()))
    }

    /// VM `j` of site `i` (both 1-based): `eth0` on the site's `br0`.
    pub fn vm(&self, i: usize, j: usize) -> &NetNs {
        self.vms(i)
            .get(j.wrapping_sub(1))
            .unwrap_or_else(|| panic!("no vm {j} at site {i}"))
    }

    pub fn vms(&self, i: usize) -> &[NetNs] {
        self.host(i);
        &self.vms[i - 1]
    }

    /// The middle namespace holding the emulators and the WAN bridge `wanbr`.
    pub fn wan(&self) -> &NetNs {
        &self.wan
    }

    /// The emulated access link of site `i`.
    pub fn link(&self, i: usize) -> &WanLink {
        self.host(i);
        self.emulators[i - 1].link()
    }

    pub fn links(&self) -> impl Iterator<Item = &WanLink> {
        self.emulators.iter().map(Emulator::link)
    }

    /// The emulator of site `i` (its process and log).
    pub fn emulator(&mut self, i: usize) -> &mut Emulator {
        &mut self.emulators[i - 1]
    }

    /// Site `i`'s WAN address without the prefix length (e.g. `10.254.0.2`).
    pub fn wan_ip(&self, i: usize) -> String {
        self.host(i);
        let cidr = self.wan_addrs[i - 1]
            .as_deref()
            .unwrap_or_else(|| panic!("site {i} has no WAN address"));
        strip_prefix_len(cidr)
    }

    /// VM (i, j)'s configured address without the prefix length, if it has one.
    pub fn vm_ip(&self, i: usize, j: usize) -> Option<String> {
        self.vm(i, j);
        self.vm_addrs[i - 1][j - 1].as_deref().map(strip_prefix_len)
    }

    /// Counters of all access links added up: `a_to_b` is everything sites sent into
    /// the WAN, `b_to_a` everything the WAN delivered to sites. A frame between two sites
    /// is counted once in each; a broadcast once upstream and once per receiving site.
    pub fn wan_stats(&self) -> LinkStats {
        let mut total = LinkStats::default();
        for l in self.links() {
            let s = l.stats();
            total.a_to_b.add(&s.a_to_b);
            total.b_to_a.add(&s.b_to_a);
        }
        total
    }

    pub fn reset_wan_stats(&self) {
        for l in self.links() {
            l.reset_stats();
        }
    }

    /// Sets the same parameters on every access link.
    pub fn set_all_links(&self, dirs: impl Into<Dirs> + Copy, params: LinkParams) {
        for l in self.links() {
            l.set(dirs, params);
        }
    }

    /// A scratch directory for this topology's configs and logs, removed on drop (kept
    /// when the test fails).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Names of every namespace of the topology.
    pub fn namespace_names(&self) -> Vec<String> {
        let mut v = vec![self.wan.name().to_string()];
        v.extend(self.hosts.iter().map(|h| h.name().to_string()));
        v.extend(self.vms.iter().flatten().map(|h| h.name().to_string()));
        v
    }
}
