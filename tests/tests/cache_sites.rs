//! The per-site package cache (`vcluster cache`) across sites joined by `vpnd`, as a
//! cluster meets it: every site runs its own cache at the same site-local service address
//! (one IP, one MAC, configured as `[[network.site_local]]` in every `vpnd`), and every
//! node, wherever it is, uses the one URL `http://10.77.255.254:3142/...`.
//!
//! ```text
//!  site 1                              site 2 (and 3): the same, without the upstream
//!  upstream 10.77.1.250 (the frontend's package server: counts requests per source)
//!  cache   eth0 10.77.1.1    (its own MAC: upstream traffic crosses the overlay)
//!          svc0 10.77.255.254 02:00:00:00:ff:fe (the service address: never leaves the site)
//!  clients 10.77.1.2 ..= 10.77.1.5
//! ```
//!
//! The cache host has two interfaces because a site-local MAC never crosses the WAN, so
//! the cache cannot fetch from a remote upstream with it (docs/cache.md, "Several sites").
//! The test needs root (namespaces) and busybox (arping), and skips loudly without them.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use site_tests::{
    LinkParams, NetNs, NetworkOpts, Overlay, Process, Topology, bin_path, list_namespaces,
    require_command, require_root, veth, wait_until,
};

const SITES: usize = 3;
const CLIENTS_PER_SITE: usize = 4;
/// The site-local service address: the same at every site.
const CACHE_IP: &str = "10.77.255.254";
const CACHE_MAC: &str = "02:00:00:00:ff:fe";
const CACHE_PORT: u16 = 3142;
/// The package server (a frontend's, say): a host on the overlay at site 1.
const UPSTREAM_IP: &str = "10.77.1.250";
const UPSTREAM_PORT: u16 = 8080;
/// The cache's mirror prefix for the upstream's `/debian`.
const MIRROR: &str = "debian";

/// A site's cache host: VM 1. Its own address carries its upstream traffic.
fn cache_host_ip(site: usize) -> String {
    format!("10.77.{site}.1")
}

/// Client `k` (1-based) of a site is VM `k + 1`.
fn client_vm(topo: &Topology, site: usize, k: usize) -> &NetNs {
    topo.vm(site, k + 1)
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One file of the package set, by its path under the upstream's `/debian`.
struct PackageFile {
    path: String,
    body: Vec<u8>,
    sha256: String,
}

/// Deterministic pseudo-random bytes (xorshift64): the same seed gives the same file.
fn synth(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// The indexes come first in [`package_set`], in the order apt fetches them.
const INDEXES: usize = 2;

/// A small Debian-like archive: the Release file naming the binary index, the index, and
/// 28 packages from 50 kB to 2 MB (sizes spread geometrically, shuffled so size does not
/// follow name).
fn package_set() -> Vec<PackageFile> {
    const PACKAGES: usize = 28;
    let mut files = Vec::new();
    let mut packages_index = String::new();
    for k in 0..PACKAGES {
        // Rank k of the sizes goes to package (k * 11) % 28: 11 and 28 are coprime.
        let rank = (k * 11) % PACKAGES;
        let size = (50_000.0 * 40f64.powf(rank as f64 / (PACKAGES - 1) as f64)) as usize;
        let name = format!("pkg{k:02}");
        let ext = if k % 7 == 3 { "udeb" } else { "deb" };
        let path = format!("pool/main/p/{name}/{name}_1.{k}-1_amd64.{ext}");
        let body = synth(k as u64 + 1, size);
        let sha256 = sha256_hex(&body);
        packages_index.push_str(&format!(
            "Package: {name}\nVersion: 1.{k}-1\nArchitecture: amd64\nFilename: {path}\nSize: {size}\nSHA256: {sha256}\n\n"
        ));
        files.push(PackageFile { path, body, sha256 });
    }
    let packages_path = "dists/stable/main/binary-amd64/Packages";
    let release = format!(
        "Origin: test\nSuite: stable\nComponents: main\nArchitectures: amd64\nSHA256:\n {} {} main/binary-amd64/Packages\n",
        sha256_hex(packages_index.as_bytes()),
        packages_index.len()
    );
    let indexes = [
        ("dists/stable/Release".to_string(), release),
        (packages_path.to_string(), packages_index),
    ];
    let indexes = indexes.into_iter().map(|(path, text)| {
        let body = text.into_bytes();
        let sha256 = sha256_hex(&body);
        PackageFile { path, body, sha256 }
    });
    indexes.chain(files).collect()
}

/// What the upstream serves: path -> (body, ETag).
type Objects = HashMap<String, (Vec<u8>, String)>;

/// The upstream package server: plain HTTP/1.1 with keep-alive and ETags, serving the package set
/// under `/debian/` and counting every request by (source address, path). Runs on
/// threads of the test process inside `ns`; stops (and joins them) on drop.
struct UpstreamServer {
    requests: Arc<Mutex<HashMap<(IpAddr, String), u64>>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl UpstreamServer {
    fn start(ns: &NetNs, addr: SocketAddr, files: &[PackageFile]) -> UpstreamServer {
        let listener = ns.in_ns(|| TcpListener::bind(addr).expect("bind the upstream"));
        listener.set_nonblocking(true).unwrap();
        let objects: Arc<Objects> = Arc::new(
            files
                .iter()
                .map(|f| {
                    let etag = format!("\"{}\"", &f.sha256[..16]);
                    (format!("/{MIRROR}/{}", f.path), (f.body.clone(), etag))
                })
                .collect(),
        );
        let requests = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (requests, stop) = (requests.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut conns = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, peer)) => {
                            let (objects, requests, stop) =
                                (objects.clone(), requests.clone(), stop.clone());
                            conns.push(std::thread::spawn(move || {
                                serve_upstream_conn(stream, peer, &objects, &requests, &stop)
                            }));
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        Err(e) => panic!("upstream accept: {e}"),
                    }
                }
                for c in conns {
                    let _ = c.join();
                }
            })
        };
        UpstreamServer {
            requests,
            stop,
            acceptor: Some(acceptor),
        }
    }

    fn requests(&self) -> HashMap<(IpAddr, String), u64> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for UpstreamServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

/// One keep-alive connection of the upstream: GET and HEAD of the objects (304 for a
/// matching If-None-Match), 404 otherwise.
fn serve_upstream_conn(
    stream: TcpStream,
    peer: SocketAddr,
    objects: &Objects,
    requests: &Mutex<HashMap<(IpAddr, String), u64>>,
    stop: &AtomicBool,
) {
    stream.set_nonblocking(false).unwrap();
    // Short reads let the thread notice `stop` while a client keeps the connection idle.
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = stream;
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") else {
            match reader.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => pending.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return,
            }
            continue;
        };
        let head = String::from_utf8_lossy(&pending[..end]).into_owned();
        pending.drain(..end + 4);
        let mut parts = head.lines().next().unwrap_or("").split_whitespace();
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        // Origin form is what a cache should send; accept absolute form too.
        let path = match target.strip_prefix("http://") {
            Some(rest) => rest.find('/').map_or("/", |i| &rest[i..]),
            None => target,
        }
        .to_string();
        *requests
            .lock()
            .unwrap()
            .entry((peer.ip(), path.clone()))
            .or_default() += 1;
        let if_none_match = head.lines().skip(1).find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("if-none-match")
                .then(|| value.trim().to_string())
        });
        let sent = match objects.get(&path) {
            Some((_, etag)) if if_none_match.as_deref() == Some(etag) => writer
                .write_all(format!("HTTP/1.1 304 Not Modified\r\nETag: {etag}\r\n\r\n").as_bytes()),
            Some((body, etag)) => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nETag: {etag}\r\nLast-Modified: Wed, 01 Jan 2025 00:00:00 GMT\r\n\r\n",
                    body.len()
                );
                writer.write_all(head.as_bytes()).and_then(|()| {
                    if method == "HEAD" {
                        Ok(())
                    } else {
                        writer.write_all(body)
                    }
                })
            }
            None => writer.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
        };
        if sent.is_err() {
            return;
        }
    }
}

/// One response as a client saw it.
struct Fetched {
    status: u16,
    x_cache: String,
    body: Vec<u8>,
}

/// `GET target` on a keep-alive connection; bodies by Content-Length or chunked.
fn http_get(conn: &mut BufReader<TcpStream>, target: &str, host: &str) -> std::io::Result<Fetched> {
    conn.get_mut().write_all(
        format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: cache-sites-test\r\n\r\n")
            .as_bytes(),
    )?;
    let mut line = String::new();
    conn.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("GET {target}: bad status line {line:?}"));
    let mut headers = HashMap::new();
    loop {
        line.clear();
        conn.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((name, value)) = l.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    let body = if let Some(len) = headers.get("content-length") {
        let mut body = vec![0; len.parse().expect("numeric Content-Length")];
        conn.read_exact(&mut body)?;
        body
    } else if headers
        .get("transfer-encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
    {
        let mut body = Vec::new();
        loop {
            line.clear();
            conn.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .unwrap_or_else(|_| panic!("GET {target}: bad chunk size {line:?}"));
            let start = body.len();
            body.resize(start + size + 2, 0);
            conn.read_exact(&mut body[start..])?;
            body.truncate(start + size);
            if size == 0 {
                break;
            }
        }
        body
    } else {
        panic!("GET {target}: neither Content-Length nor chunked: {headers:?}");
    };
    Ok(Fetched {
        status,
        x_cache: headers.get("x-cache").cloned().unwrap_or_default(),
        body,
    })
}

fn connect_cache() -> BufReader<TcpStream> {
    let addr: SocketAddr = format!("{CACHE_IP}:{CACHE_PORT}").parse().unwrap();
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to the cache at {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    BufReader::new(stream)
}

/// What one client fetched: per path, (status, X-Cache, SHA-256 of the body).
type ClientReport = BTreeMap<String, (u16, String, String)>;

/// Client `index` (0-based over all sites) fetches every file once over one keep-alive
/// connection to the one cache URL: the indexes first, as apt does, then the packages
/// starting at its own offset in the list, so that misses, joins of downloads in flight
/// and hits all happen. Even clients use the mirror prefix, odd ones use the cache as a
/// forward proxy: both name the same object.
///
/// (The order of the indexes matters: a Packages file fetched before its suite's Release
/// cannot be shown to be as new as that Release, so the cache revalidates it once when it
/// first sees the Release; docs/cache.md, "Policy and index consistency".)
fn fetch_all(index: usize, files: &[PackageFile]) -> ClientReport {
    let mut conn = connect_cache();
    let (indexes, packages) = files.split_at(INDEXES);
    let n = packages.len();
    let order = indexes
        .iter()
        .chain((0..n).map(|i| &packages[(index * 7 + i) % n]));
    let mut report = BTreeMap::new();
    for f in order {
        let (target, host) = if index.is_multiple_of(2) {
            (
                format!("/{MIRROR}/{}", f.path),
                format!("{CACHE_IP}:{CACHE_PORT}"),
            )
        } else {
            (
                format!("http://{UPSTREAM_IP}:{UPSTREAM_PORT}/{MIRROR}/{}", f.path),
                format!("{UPSTREAM_IP}:{UPSTREAM_PORT}"),
            )
        };
        let got = http_get(&mut conn, &target, &host)
            .unwrap_or_else(|e| panic!("client {index}: GET {target}: {e}"));
        report.insert(
            f.path.clone(),
            (got.status, got.x_cache, sha256_hex(&got.body)),
        );
    }
    report
}

/// The counters of the cache this namespace reaches at the one URL.
fn cache_stats(ns: &NetNs) -> serde_json::Value {
    ns.in_ns(|| {
        let mut conn = connect_cache();
        let got = http_get(
            &mut conn,
            "/_cache/stats",
            &format!("{CACHE_IP}:{CACHE_PORT}"),
        )
        .expect("GET /_cache/stats");
        assert_eq!(got.status, 200);
        serde_json::from_slice(&got.body).expect("stats are JSON")
    })
}

/// Gives site `site`'s cache host its service interface: `svc0` on the bridge with the
/// site-local MAC and address. Replies from the service address leave through `svc0`
/// (policy routing), so every frame of the service carries the site-local MAC; the
/// host's own address and MAC on `eth0` carry its upstream traffic. ARP is answered only
/// on the interface that holds the address asked for (`arp_ignore = 1`), so nobody learns
/// the service address at `eth0`'s MAC.
fn add_service_interface(topo: &Topology, site: usize) {
    let vm = topo.vm(site, 1);
    let host = topo.host(site);
    veth(vm, "svc0", host, "svc");
    host.set_master("svc", "br0");
    vm.ip_batch(&[
        format!("link set dev svc0 address {CACHE_MAC}"),
        format!("addr add {CACHE_IP}/32 dev svc0"),
        "link set dev svc0 up".into(),
        format!("rule add from {CACHE_IP} lookup 100"),
        format!("route add 10.77.0.0/16 dev svc0 src {CACHE_IP} table 100"),
    ]);
    vm.sysctl("net/ipv4/conf/all/arp_ignore", "1");
    vm.sysctl("net/ipv4/conf/all/arp_announce", "2");
}

#[test]
fn clients_at_every_site_use_one_cache_url_and_each_site_fetches_every_object_once() {
    let name = "clients_at_every_site_use_one_cache_url_and_each_site_fetches_every_object_once";
    if !require_root(name) || !require_command(name, "busybox") {
        return;
    }
    let started = Instant::now();
    one_cache_url_at_every_site();
    eprintln!("{name}: {:.1} s", started.elapsed().as_secs_f64());
    // Every guard has dropped: no namespace of this process is left.
    let prefix = format!("st{}-", std::process::id());
    let left: Vec<_> = list_namespaces()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}

fn one_cache_url_at_every_site() {
    let files = package_set();
    let set_bytes: u64 = files.iter().map(|f| f.body.len() as u64).sum();
    let clients = SITES * CLIENTS_PER_SITE;

    // 5 ms each way on every access link: 20 ms round trip between any two sites.
    let topo = Topology::builder()
        .sites(SITES)
        .vms_per_site(1 + CLIENTS_PER_SITE)
        .vm_addr(|i, j| Some(format!("10.77.{i}.{j}/16")))
        .link_params(LinkParams::default().delay(Duration::from_millis(5)))
        .build();
    let upstream_ns = NetNs::new("up");
    veth(&upstream_ns, "eth0", topo.host(1), "up0");
    topo.host(1).set_master("up0", "br0");
    upstream_ns.addr_add("eth0", &format!("{UPSTREAM_IP}/16"));
    upstream_ns.link_up("eth0");
    for site in 1..=SITES {
        add_service_interface(&topo, site);
    }
    let overlay = Overlay::start(
        &topo,
        &[NetworkOpts::new(1).site_local(CACHE_IP, CACHE_MAC)],
    );
    let upstream_addr: SocketAddr = format!("{UPSTREAM_IP}:{UPSTREAM_PORT}").parse().unwrap();
    let upstream = UpstreamServer::start(&upstream_ns, upstream_addr, &files);

    let vcluster = bin_path("vcluster");
    let mut caches: Vec<Process> = (1..=SITES)
        .map(|site| {
            let dir = topo.dir();
            topo.spawn(
                topo.vm(site, 1),
                &format!("cache{site}"),
                &[
                    vcluster.to_str().unwrap(),
                    "cache",
                    "serve",
                    "--listen",
                    &format!("{CACHE_IP}:{CACHE_PORT}"),
                    "--store",
                    dir.join(format!("store{site}")).to_str().unwrap(),
                    "--mirror",
                    &format!("{MIRROR}=http://{UPSTREAM_IP}:{UPSTREAM_PORT}/{MIRROR}"),
                    // No index revalidation during the run: one fetch per site, exactly.
                    "--fresh-secs",
                    "3600",
                    "--access-log",
                    dir.join(format!("access{site}.log")).to_str().unwrap(),
                ],
            )
        })
        .collect();
    for (i, cache) in caches.iter_mut().enumerate() {
        wait_until(
            &format!("the cache of site {} listening", i + 1),
            Duration::from_secs(10),
            || {
                cache.assert_running();
                cache.log().contains("vcluster cache listening on")
            },
        );
    }

    // Every client of every site at once, all through the one URL.
    topo.reset_wan_stats();
    let fetch_started = Instant::now();
    let barrier = Barrier::new(clients);
    let reports: Vec<(usize, ClientReport)> = std::thread::scope(|s| {
        let handles: Vec<_> = (1..=SITES)
            .flat_map(|site| (1..=CLIENTS_PER_SITE).map(move |k| (site, k)))
            .enumerate()
            .map(|(index, (site, k))| {
                let (topo, files, barrier) = (&topo, &files, &barrier);
                s.spawn(move || {
                    client_vm(topo, site, k).in_ns(|| {
                        barrier.wait();
                        (site, fetch_all(index, files))
                    })
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let fetch_secs = fetch_started.elapsed().as_secs_f64();
    let per_link: Vec<_> = (1..=SITES).map(|i| topo.link(i).stats()).collect();
    let wan = topo.wan_stats();

    // Every client got every file, intact.
    for (index, (site, report)) in reports.iter().enumerate() {
        assert_eq!(report.len(), files.len(), "client {index} at site {site}");
        for f in &files {
            let (status, x_cache, sha) = &report[&f.path];
            assert_eq!(
                (*status, sha.as_str()),
                (200, f.sha256.as_str()),
                "client {index} at site {site}: {} (X-Cache {x_cache})",
                f.path
            );
        }
    }

    // The upstream saw each file exactly once from each site's cache, and nobody else.
    let requests = upstream.requests();
    let mut expected = HashMap::new();
    for site in 1..=SITES {
        for f in &files {
            let ip: IpAddr = cache_host_ip(site).parse().unwrap();
            expected.insert((ip, format!("/{MIRROR}/{}", f.path)), 1u64);
        }
    }
    if requests != expected {
        let mut extra: Vec<_> = requests
            .iter()
            .filter(|(k, v)| expected.get(k) != Some(v))
            .collect();
        extra.sort();
        let mut missing: Vec<_> = expected
            .keys()
            .filter(|k| !requests.contains_key(k))
            .collect();
        missing.sort();
        panic!(
            "upstream requests differ from one per file per site:\nunexpected or repeated: \
             {extra:?}\nmissing: {missing:?}"
        );
    }

    // Each site's cache, asked at the one URL from that site: one miss per file, the rest
    // served from its store or from the download in flight; the clients' X-Cache agrees.
    let n = files.len() as u64;
    let served_per_site = (CLIENTS_PER_SITE * files.len()) as u64;
    for site in 1..=SITES {
        let stats = cache_stats(client_vm(&topo, site, 1));
        let get = |k: &str| {
            stats[k]
                .as_u64()
                .unwrap_or_else(|| panic!("site {site}: no counter {k} in {stats}"))
        };
        eprintln!(
            "site {site} cache: {} misses, {} hits, {} coalesced, {} bytes from upstream",
            get("misses"),
            get("hits"),
            get("coalesced"),
            get("bytes_from_upstream")
        );
        assert_eq!(get("misses"), n, "site {site}: {stats}");
        assert_eq!(get("upstream_requests"), n, "site {site}: {stats}");
        assert_eq!(
            get("hits") + get("coalesced"),
            served_per_site - n,
            "site {site}: {stats}"
        );
        assert_eq!(
            get("bytes_from_upstream"),
            set_bytes,
            "site {site}: {stats}"
        );
        assert_eq!(get("objects"), n, "site {site}: {stats}");
        assert_eq!(
            get("upstream_errors") + get("revalidations"),
            0,
            "site {site}: {stats}"
        );
        let mut labels: HashMap<&str, u64> = HashMap::new();
        for (_, report) in reports.iter().filter(|(s, _)| *s == site) {
            for (_, x_cache, _) in report.values() {
                *labels.entry(x_cache.as_str()).or_default() += 1;
            }
        }
        assert_eq!(
            labels.get("MISS").copied(),
            Some(n),
            "site {site}: {labels:?}"
        );
        assert_eq!(
            labels.get("HIT").copied().unwrap_or(0) + labels.get("COALESCED").copied().unwrap_or(0),
            served_per_site - n,
            "site {site}: {labels:?}"
        );
    }

    // Each cache's access log names exactly its own site's clients, never another's.
    for site in 1..=SITES {
        let log = std::fs::read_to_string(topo.dir().join(format!("access{site}.log")))
            .expect("access log");
        let mut by_client: BTreeMap<IpAddr, u64> = BTreeMap::new();
        for line in log.lines().filter(|l| l.contains(&format!("/{MIRROR}/"))) {
            let peer: SocketAddr = line
                .split_whitespace()
                .find_map(|t| t.parse().ok())
                .unwrap_or_else(|| panic!("site {site}: no client address in {line:?}"));
            *by_client.entry(peer.ip()).or_default() += 1;
        }
        let own: BTreeMap<IpAddr, u64> = (1..=CLIENTS_PER_SITE)
            .map(|k| (format!("10.77.{site}.{}", k + 1).parse().unwrap(), n))
            .collect();
        assert_eq!(by_client, own, "site {site}: requests per client address");
    }

    // The WAN carried the set once per remote cache, not once per client: site 1 (the
    // upstream's) sent it to each other site; each other site received it once.
    let ratio = |bytes: u64| bytes as f64 / set_bytes as f64;
    let sent_by_site1 = per_link[0].a_to_b.rx_bytes;
    let remote_caches = (SITES - 1) as f64;
    let mut figures = format!(
        "{} files, {:.1} MB, {CLIENTS_PER_SITE} clients per site at {SITES} sites, fetched in \
         {fetch_secs:.1} s; WAN bytes: all sites sent {:.2}x the set, site 1 sent {:.2}x",
        files.len(),
        set_bytes as f64 / 1e6,
        ratio(wan.a_to_b.rx_bytes),
        ratio(sent_by_site1),
    );
    for (i, link) in per_link.iter().enumerate().skip(1) {
        figures.push_str(&format!(
            ", site {} received {:.2}x",
            i + 1,
            ratio(link.b_to_a.tx_bytes)
        ));
    }
    eprintln!("{figures}");
    for (i, link) in per_link.iter().enumerate().skip(1) {
        let received = ratio(link.b_to_a.tx_bytes);
        assert!(
            (1.0..1.5).contains(&received),
            "site {} received {received:.2}x the set over the WAN: {figures}",
            i + 1
        );
    }
    assert!(
        (remote_caches..remote_caches * 1.5).contains(&ratio(sent_by_site1)),
        "{figures}"
    );
    assert!(
        ratio(wan.a_to_b.rx_bytes) < remote_caches * 1.5,
        "{figures}"
    );

    // A client's ARP for the service address is answered by its own site's cache: one
    // answer per probe, nothing crossing the WAN meanwhile, the bridge of every site
    // holding the service MAC at the local cache's port, and vpnd keeping the service's
    // frames at home.
    topo.reset_wan_stats();
    let arpings: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (1..=SITES)
            .map(|site| {
                let ns = client_vm(&topo, site, 2);
                s.spawn(move || {
                    ns.run(&[
                        "busybox", "arping", "-c", "2", "-w", "3", "-I", "eth0", CACHE_IP,
                    ])
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let crossed = topo.wan_stats().a_to_b.rx_frames;
    eprintln!("{crossed} frames crossed the WAN while a client at every site ran arping");
    // 6 probes and 6 answers at 3 sites; at most a keepalive or two may cross meanwhile.
    assert!(
        crossed <= 3,
        "{crossed} frames crossed the WAN while clients resolved {CACHE_IP}"
    );
    for (i, out) in arpings.iter().enumerate() {
        let site = i + 1;
        assert!(
            out.stdout.contains("Received 2 response(s)") && out.stdout.contains(CACHE_MAC),
            "site {site}: arping {CACHE_IP}:\n{}{}",
            out.stdout,
            out.stderr
        );
        for k in 1..=CLIENTS_PER_SITE {
            let neigh = client_vm(&topo, site, k).ok(&["ip", "neigh", "show", CACHE_IP]);
            assert!(
                neigh.contains(&format!("lladdr {CACHE_MAC}")),
                "site {site} client {k}: {neigh}"
            );
        }
        let fdb = topo.host(site).ok(&["bridge", "fdb", "show", "br", "br0"]);
        let at: Vec<_> = fdb.lines().filter(|l| l.starts_with(CACHE_MAC)).collect();
        assert!(
            !at.is_empty() && at.iter().all(|l| l.contains(" dev svc ")),
            "site {site}: the bridge has the service MAC at {at:?}"
        );
        let kept = overlay.network(site, 1).counters.site_local_kept;
        assert!(kept >= 1, "site {site}: vpnd kept {kept} site-local frames");
    }
    for cache in &mut caches {
        cache.assert_running();
    }
}
