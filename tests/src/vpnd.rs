//! `vpnd` at every site of a [`Topology`]: keys, config files, one daemon per host
//! namespace with its TAP on the site's `br0`, and the control API's client (`vpnd-api`)
//! to read status. Integration tests of the overlay and of everything above it start here.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use vpn_core::{PrivateKey, PublicKey};
use vpnd_api::{Client, DaemonStatus, NetworkStatus};

use crate::{Process, Topology, bin_path, try_wait_until};

/// The UDP port every daemon listens on.
pub const PORT: u16 = 51820;

/// One overlay network, configured the same at every site unless a test edits the text.
#[derive(Clone, Debug)]
pub struct NetworkOpts {
    pub id: u32,
    pub tap: String,
    pub bridge: Option<String>,
    pub mtu: u16,
    pub path_mtu: u16,
    pub psk: Option<String>,
    pub arp_suppression: bool,
    /// (IPv4 address, MAC) pairs every site serves itself.
    pub site_local: Vec<(String, String)>,
    /// Extra TOML lines for the `[[network]]` table.
    pub extra: String,
}

impl NetworkOpts {
    /// Network `id` with TAP `vpn<id>` on `br0`, MTU 1500 over a 1500-byte path.
    pub fn new(id: u32) -> NetworkOpts {
        NetworkOpts {
            id,
            tap: format!("vpn{id}"),
            bridge: Some("br0".into()),
            mtu: 1500,
            path_mtu: 1500,
            psk: None,
            arp_suppression: true,
            site_local: Vec::new(),
            extra: String::new(),
        }
    }

    pub fn bridge(mut self, bridge: &str) -> Self {
        self.bridge = Some(bridge.into());
        self
    }

    pub fn psk(mut self, psk: &str) -> Self {
        self.psk = Some(psk.into());
        self
    }

    pub fn site_local(mut self, ip: &str, mac: &str) -> Self {
        self.site_local.push((ip.into(), mac.into()));
        self
    }
}

pub struct SiteDaemon {
    pub site: usize,
    pub key: PrivateKey,
    pub config: PathBuf,
    pub control: PathBuf,
    process: Option<Process>,
}

impl SiteDaemon {
    pub fn public_key(&self) -> PublicKey {
        self.key.public_key()
    }

    pub fn process(&mut self) -> &mut Process {
        self.process.as_mut().expect("daemon running")
    }
}

/// The daemons of a topology. Declare it after the topology so it is dropped first.
pub struct Overlay {
    pub daemons: Vec<SiteDaemon>,
    rt: tokio::runtime::Runtime,
}

/// A random-enough key per site and test: seeded from the process and a counter.
fn site_key(site: usize) -> PrivateKey {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    let seed = (u64::from(std::process::id()) << 32)
        ^ N.fetch_add(1, Ordering::Relaxed)
        ^ (site as u64) << 16;
    PrivateKey::generate(&mut ChaCha20Rng::seed_from_u64(seed))
}

impl Overlay {
    /// Starts `vpnd` at every site with `networks`, every other site a peer at its WAN
    /// address, and waits until every session is up.
    pub fn start(topo: &Topology, networks: &[NetworkOpts]) -> Overlay {
        let overlay = Overlay::start_with(topo, networks, |_, _| {});
        overlay.wait_connected(Duration::from_secs(10));
        overlay
    }

    /// Like [`Overlay::start`] but lets the test edit each site's config text first, and
    /// does not wait for sessions.
    pub fn start_with(
        topo: &Topology,
        networks: &[NetworkOpts],
        mut edit: impl FnMut(usize, &mut String),
    ) -> Overlay {
        let sites = topo.sites();
        let keys: Vec<PrivateKey> = (1..=sites).map(site_key).collect();
        let mut daemons = Vec::with_capacity(sites);
        for i in 1..=sites {
            let config = topo.dir().join(format!("vpnd{i}.toml"));
            let control = topo.dir().join(format!("vpnd{i}.sock"));
            let mut text = config_text(topo, i, &keys, networks, &control);
            edit(i, &mut text);
            std::fs::write(&config, &text).expect("writing vpnd config");
            daemons.push(SiteDaemon {
                site: i,
                key: keys[i - 1].clone(),
                config,
                control,
                process: None,
            });
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let mut overlay = Overlay { daemons, rt };
        for i in 1..=sites {
            overlay.launch(topo, i);
        }
        overlay
    }

    fn launch(&mut self, topo: &Topology, site: usize) {
        let vpnd = bin_path("vpnd");
        let d = &mut self.daemons[site - 1];
        let _ = std::fs::remove_file(&d.control);
        let process = topo.spawn(
            topo.host(site),
            &format!("vpnd{site}"),
            &[
                vpnd.as_os_str(),
                "up".as_ref(),
                "-c".as_ref(),
                d.config.as_os_str(),
            ],
        );
        let control = d.control.clone();
        if !try_wait_until(Duration::from_secs(10), || control.exists()) {
            process.dump_log();
            panic!("vpnd at site {site} did not open its control socket");
        }
        d.process = Some(process);
    }

    pub fn daemon(&mut self, site: usize) -> &mut SiteDaemon {
        &mut self.daemons[site - 1]
    }

    /// Stops the daemon of `site` (SIGTERM, then SIGKILL after a grace period).
    pub fn stop(&mut self, site: usize) {
        if let Some(mut p) = self.daemons[site - 1].process.take() {
            p.stop();
        }
    }

    /// Stops and starts the daemon of `site` with the same config.
    pub fn restart(&mut self, topo: &Topology, site: usize) {
        self.stop(site);
        self.launch(topo, site);
    }

    pub fn client(&self, site: usize) -> Client {
        Client::new(&self.daemons[site - 1].control)
    }

    /// A control-API request to the daemon of `site`, sent as given.
    pub fn request(
        &self,
        site: usize,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<Vec<u8>, vpnd_api::ClientError> {
        let client = self.client(site);
        let method = method.parse().expect("an HTTP method");
        self.rt
            .block_on(client.request(method, path, body.map(String::into_bytes)))
            .map(|b| b.to_vec())
    }

    pub fn status(&self, site: usize) -> DaemonStatus {
        let client = self.client(site);
        self.rt
            .block_on(client.status())
            .unwrap_or_else(|e| panic!("status of vpnd at site {site}: {e}"))
    }

    pub fn network(&self, site: usize, id: u32) -> NetworkStatus {
        self.status(site)
            .networks
            .into_iter()
            .find(|n| n.id.0 == id)
            .unwrap_or_else(|| panic!("site {site} has no network {id}"))
    }

    /// True when every running network of every running daemon has a session with every
    /// peer.
    pub fn connected(&self) -> bool {
        (1..=self.daemons.len())
            .filter(|&i| self.daemons[i - 1].process.is_some())
            .all(|i| {
                self.status(i)
                    .networks
                    .iter()
                    .filter(|n| n.running)
                    .all(|n| n.peers.iter().all(|p| p.session))
            })
    }

    pub fn wait_connected(&self, timeout: Duration) {
        if !try_wait_until(timeout, || self.connected()) {
            for d in &self.daemons {
                if let Some(p) = &d.process {
                    p.dump_log();
                }
            }
            panic!("the overlay did not connect within {timeout:?}");
        }
    }
}

fn config_text(
    topo: &Topology,
    site: usize,
    keys: &[PrivateKey],
    networks: &[NetworkOpts],
    control: &std::path::Path,
) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "private_key = \"{}\"", keys[site - 1].to_base64());
    let listen = if topo.wan_ip(site).contains(':') {
        format!("[::]:{PORT}")
    } else {
        format!("0.0.0.0:{PORT}")
    };
    let _ = writeln!(t, "listen = [\"{listen}\"]");
    let _ = writeln!(t, "control_socket = \"{}\"", control.display());
    for n in networks {
        let _ = writeln!(t, "\n[[network]]\nid = {}\ntap = \"{}\"", n.id, n.tap);
        if let Some(b) = &n.bridge {
            let _ = writeln!(t, "bridge = \"{b}\"");
        }
        let _ = writeln!(t, "mtu = {}\npath_mtu = {}", n.mtu, n.path_mtu);
        let _ = writeln!(t, "arp_suppression = {}", n.arp_suppression);
        if let Some(psk) = &n.psk {
            let _ = writeln!(t, "psk = \"{psk}\"");
        }
        t.push_str(&n.extra);
        for (ip, mac) in &n.site_local {
            let _ = writeln!(
                t,
                "\n[[network.site_local]]\nip = \"{ip}\"\nmac = \"{mac}\""
            );
        }
        for j in (1..=topo.sites()).filter(|&j| j != site) {
            let ip = topo.wan_ip(j);
            let endpoint = if ip.contains(':') {
                format!("[{ip}]:{PORT}")
            } else {
                format!("{ip}:{PORT}")
            };
            let _ = writeln!(
                t,
                "\n[[network.peer]]\nname = \"site{j}\"\npublic_key = \"{}\"\nendpoint = \"{endpoint}\"",
                keys[j - 1].public_key()
            );
        }
    }
    t
}
