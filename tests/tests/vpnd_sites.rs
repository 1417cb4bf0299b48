//! `vpnd` across sites as a user meets it: three (or two) sites as network namespaces,
//! each a host with a bridge, its own `vpnd` and VMs on the bridge, joined through the
//! WAN emulator. Every test needs root and skips loudly without it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use site_tests::{
    FlowOpts, LinkParams, NetNs, NetworkOpts, Overlay, PingOpts, Topology, bin_path,
    require_command, require_root, try_wait_until, udp_flow, veth, wait_until,
};

/// VM `j` of site `i` is 10.77.i.j in one /16.
fn vm_ip(i: usize, j: usize) -> String {
    format!("10.77.{i}.{j}")
}

fn topology(sites: usize, vms: usize) -> Topology {
    Topology::builder()
        .sites(sites)
        .vms_per_site(vms)
        .vm_addr(|i, j| Some(format!("10.77.{i}.{j}/16")))
        .build()
}

/// Counts UDP datagrams with `payload` arriving on port 9999 in each of `listeners`
/// while `send` runs (after every listener is bound), over `window`.
fn count_udp(
    listeners: &[&NetNs],
    window: Duration,
    send: impl FnOnce() + Send,
    payload: &[u8],
) -> Vec<usize> {
    let barrier = Barrier::new(listeners.len() + 1);
    std::thread::scope(|s| {
        let handles: Vec<_> = listeners
            .iter()
            .map(|ns| {
                let barrier = &barrier;
                s.spawn(move || {
                    ns.in_ns(|| {
                        let sock = UdpSocket::bind("0.0.0.0:9999").expect("bind 9999");
                        sock.set_read_timeout(Some(Duration::from_millis(50)))
                            .unwrap();
                        barrier.wait();
                        let end = Instant::now() + window;
                        let mut n = 0;
                        let mut buf = [0u8; 2048];
                        while Instant::now() < end {
                            if let Ok((len, _)) = sock.recv_from(&mut buf)
                                && &buf[..len] == payload
                            {
                                n += 1;
                            }
                        }
                        n
                    })
                })
            })
            .collect();
        barrier.wait();
        send();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn broadcast_from(ns: &NetNs, payload: &[u8]) {
    ns.in_ns(|| {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        sock.set_broadcast(true).unwrap();
        sock.send_to(payload, "10.77.255.255:9999").unwrap();
    });
}

#[test]
fn ping_and_arp_work_between_every_pair_of_sites() {
    if !require_root("ping_and_arp_work_between_every_pair_of_sites") {
        return;
    }
    let topo = topology(3, 2);
    let overlay = Overlay::start(&topo, &[NetworkOpts::new(1)]);
    for a in 1..=3 {
        for b in (1..=3).filter(|&b| b != a) {
            for j in 1..=2 {
                let stats = topo
                    .vm(a, 1)
                    .ping_with(&vm_ip(b, j), &PingOpts::default().count(2));
                assert_eq!(
                    stats.received, 2,
                    "site {a} vm 1 -> site {b} vm {j}: {stats:?}"
                );
            }
        }
        // ARP resolved the remote VMs' real MACs.
        let neigh = topo.vm(a, 1).ok(&["ip", "neigh", "show", "dev", "eth0"]);
        let others = (1..=3).filter(|&b| b != a).count() * 2;
        let resolved = neigh
            .lines()
            .filter(|l| {
                l.contains("lladdr")
                    && (l.contains("REACHABLE") || l.contains("STALE") || l.contains("DELAY"))
            })
            .count();
        assert!(
            resolved >= others,
            "site {a} resolved {resolved} of {others}:\n{neigh}"
        );
    }
    for i in 1..=3 {
        let n = overlay.network(i, 1);
        assert!(
            n.mac_table_size >= 4,
            "site {i} learned {} MACs",
            n.mac_table_size
        );
        assert!(n.peers.iter().all(|p| p.session && p.rx_packets > 0));
    }
}

#[test]
fn a_broadcast_reaches_every_other_site_exactly_once() {
    if !require_root("a_broadcast_reaches_every_other_site_exactly_once") {
        return;
    }
    let topo = topology(3, 2);
    let _overlay = Overlay::start(&topo, &[NetworkOpts::new(1)]);
    let payload = b"hello, every site";
    let listeners = [
        topo.vm(1, 2),
        topo.vm(2, 1),
        topo.vm(2, 2),
        topo.vm(3, 1),
        topo.vm(3, 2),
    ];
    let counts = count_udp(
        &listeners,
        Duration::from_secs(2),
        || broadcast_from(topo.vm(1, 1), payload),
        payload,
    );
    assert_eq!(counts, vec![1; 5], "copies received by each VM");
}

/// dnsmasq at site 1 (VM 1) serving DHCP and TFTP; the first VM of sites 2 and 3 are
/// DHCP clients.
fn dhcp_and_tftp_across_sites(link: LinkParams) {
    let topo = Topology::builder()
        .sites(3)
        .vms_per_site(1)
        .vm_addr(|i, j| (i == 1).then(|| format!("10.77.{i}.{j}/16")))
        .link_params(link)
        .build();
    let _overlay = Overlay::start(&topo, &[NetworkOpts::new(1)]);
    let dir = topo.dir().join("dnsmasq");
    std::fs::create_dir_all(dir.join("tftp")).unwrap();
    let boot = "#!ipxe\necho booted over the overlay\n".repeat(200);
    std::fs::write(dir.join("tftp/boot.ipxe"), &boot).unwrap();
    let leases = dir.join("leases");
    let server = topo.spawn(
        topo.vm(1, 1),
        "dnsmasq",
        &[
            "dnsmasq",
            "--no-daemon",
            "--conf-file=/dev/null",
            "--user=root",
            "--port=0",
            "--interface=eth0",
            "--bind-interfaces",
            "--dhcp-authoritative",
            "--dhcp-range=10.77.200.10,10.77.200.50,255.255.0.0,1h",
            &format!("--dhcp-leasefile={}", leases.display()),
            "--enable-tftp",
            &format!("--tftp-root={}", dir.join("tftp").display()),
            "--log-dhcp",
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let script = dir.join("udhcpc.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\ncase \"$1\" in bound|renew) ip addr add \"$ip/${mask:-16}\" dev \"$interface\"; echo \"$ip\" > \"$LEASE_OUT\";; esac\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    for site in [2, 3] {
        let lease_out = dir.join(format!("lease{site}"));
        let out = topo.vm(site, 1).run(&[
            "env",
            &format!("LEASE_OUT={}", lease_out.display()),
            "busybox",
            "udhcpc",
            "-i",
            "eth0",
            "-f",
            "-q",
            "-n",
            "-t",
            "6",
            "-T",
            "2",
            "-s",
            script.to_str().unwrap(),
        ]);
        assert!(
            out.success,
            "site {site} got no lease:\n{}\n{}\n{}",
            out.stdout,
            out.stderr,
            server.log_tail(30)
        );
        let ip = std::fs::read_to_string(&lease_out).unwrap();
        assert!(
            ip.trim().starts_with("10.77.200."),
            "site {site} leased {ip:?}"
        );
        let got = dir.join(format!("boot{site}"));
        topo.vm(site, 1).ok(&[
            "busybox",
            "tftp",
            "-g",
            "-r",
            "boot.ipxe",
            "-l",
            got.to_str().unwrap(),
            "10.77.1.1",
        ]);
        assert_eq!(
            std::fs::read_to_string(&got).unwrap(),
            boot,
            "site {site} TFTP"
        );
    }
    let lease_file = std::fs::read_to_string(&leases).unwrap();
    assert_eq!(lease_file.lines().count(), 2, "two leases:\n{lease_file}");
}

#[test]
fn dnsmasq_at_one_site_serves_dhcp_and_tftp_to_the_others() {
    if !require_root("dnsmasq_at_one_site_serves_dhcp_and_tftp_to_the_others")
        || !require_command(
            "dnsmasq_at_one_site_serves_dhcp_and_tftp_to_the_others",
            "dnsmasq",
        )
        || !require_command(
            "dnsmasq_at_one_site_serves_dhcp_and_tftp_to_the_others",
            "busybox",
        )
    {
        return;
    }
    dhcp_and_tftp_across_sites(LinkParams::default());
}

#[test]
fn dhcp_and_tftp_work_over_a_20ms_rtt_wan() {
    if !require_root("dhcp_and_tftp_work_over_a_20ms_rtt_wan")
        || !require_command("dhcp_and_tftp_work_over_a_20ms_rtt_wan", "dnsmasq")
        || !require_command("dhcp_and_tftp_work_over_a_20ms_rtt_wan", "busybox")
    {
        return;
    }
    // 5 ms each way on every access link: 20 ms round trip between any two sites.
    dhcp_and_tftp_across_sites(LinkParams::default().delay(Duration::from_millis(5)));
}

#[test]
fn full_size_frames_cross_a_1500_byte_wan_in_tcp_and_icmp() {
    if !require_root("full_size_frames_cross_a_1500_byte_wan_in_tcp_and_icmp") {
        return;
    }
    let topo = topology(2, 1);
    let overlay = Overlay::start(&topo, &[NetworkOpts::new(1)]);
    // A 1500-byte IP packet (a 1514-byte frame) with DF set crosses whole.
    let stats = topo.vm(2, 1).ping_with(
        &vm_ip(1, 1),
        &PingOpts::default().count(3).size(1472).dont_fragment(),
    );
    assert_eq!(stats.received, 3, "{stats:?}");
    // 32 MiB of full-size TCP segments, checked byte for byte.
    const LEN: usize = 32 << 20;
    let pattern = |i: usize| (i.wrapping_mul(2_654_435_761) >> 13) as u8;
    let received = std::thread::scope(|s| {
        let server = s.spawn(|| {
            topo.vm(1, 1).in_ns(|| {
                let listener = TcpListener::bind("0.0.0.0:7000").unwrap();
                let (mut conn, _) = listener.accept().unwrap();
                let mut buf = vec![0u8; 1 << 16];
                let (mut n, mut bad) = (0usize, 0usize);
                loop {
                    let k = conn.read(&mut buf).unwrap();
                    if k == 0 {
                        break;
                    }
                    bad += buf[..k]
                        .iter()
                        .enumerate()
                        .filter(|(i, b)| **b != pattern(n + i))
                        .count();
                    n += k;
                }
                (n, bad)
            })
        });
        std::thread::sleep(Duration::from_millis(200));
        topo.vm(2, 1).in_ns(|| {
            let mut conn = TcpStream::connect("10.77.1.1:7000").unwrap();
            let data: Vec<u8> = (0..LEN).map(pattern).collect();
            conn.write_all(&data).unwrap();
        });
        server.join().unwrap()
    });
    assert_eq!(received, (LEN, 0), "(bytes, corrupted)");
    let wan = topo.wan_stats();
    assert_eq!(
        wan.a_to_b.dropped_oversize + wan.b_to_a.dropped_oversize,
        0,
        "a datagram exceeded the WAN MTU"
    );
    let n = overlay.network(2, 1);
    assert_eq!(n.counters.drops["reassembly"], 0);
}

#[test]
fn a_flood_of_small_udp_datagrams_arrives_whole_and_in_order_through_uso_writes() {
    if !require_root("a_flood_of_small_udp_datagrams_arrives_whole_and_in_order_through_uso_writes")
    {
        return;
    }
    let topo = topology(2, 1);
    let overlay = Overlay::start(&topo, &[NetworkOpts::new(1)]);
    // Resolve the neighbours first: datagrams the kernel queues while ARP is pending leave
    // behind later ones once it resolves (it does so on a bare veth too), which is not
    // the overlay reordering anything.
    assert_eq!(topo.vm(2, 1).ping(&vm_ip(1, 1)).received, 3);
    let before = overlay.network(1, 1).counters.coalesced_segments;
    // As fast as the sender goes: the receiving vpnd gets datagrams in batches and writes
    // runs of equal ones to its TAP as one UDP-segmentation (GSO_UDP_L4) frame each,
    // which the kernel must cut back into exactly these datagrams.
    let opts = FlowOpts::default()
        .count(20_000)
        .payload(64)
        .interval(Duration::ZERO)
        .drain(Duration::from_millis(500));
    let report = udp_flow(topo.vm(2, 1), topo.vm(1, 1), &vm_ip(1, 1), &opts);
    let merged = overlay.network(1, 1).counters.coalesced_segments - before;
    eprintln!(
        "{} of {} datagrams arrived, {} merged into super-frames at the receiving vpnd",
        report.received(),
        report.sent,
        merged
    );
    assert!(
        report.arrivals.iter().all(|a| a.bytes == 64),
        "a datagram came out of the TAP with another size"
    );
    assert_eq!(report.duplicates(), 0);
    assert_eq!(report.out_of_order(), 0);
    // Loss is allowed: nothing paces the sender, and on a busy machine the TAP and
    // socket queues overflow. What arrives must be right, and plenty must.
    assert!(
        report.received() >= report.sent / 20,
        "only {} of {} arrived",
        report.received(),
        report.sent
    );
    assert!(merged > 0, "no datagram was merged into a USO write");
}

#[test]
fn arp_for_a_site_local_address_is_answered_at_each_site_and_never_crosses_the_wan() {
    let name = "arp_for_a_site_local_address_is_answered_at_each_site_and_never_crosses_the_wan";
    if !require_root(name) || !require_command(name, "busybox") {
        return;
    }
    let cache_ip = "10.77.255.254";
    let cache_mac = "02:00:00:00:ff:fe";
    let topo = topology(3, 2);
    let overlay = Overlay::start(
        &topo,
        &[NetworkOpts::new(1).site_local(cache_ip, cache_mac)],
    );
    // VM 2 of every site is that site's cache: same address, same MAC, everywhere.
    for i in 1..=3 {
        let vm = topo.vm(i, 2);
        vm.ip(&["link", "set", "dev", "eth0", "address", cache_mac]);
        vm.addr_add("eth0", &format!("{cache_ip}/16"));
    }
    // Pin every host's WAN neighbours, so the emulator counts overlay datagrams only
    // (not the hosts' own ARP refreshes for each other's WAN addresses).
    for i in 1..=3 {
        for j in (1..=3).filter(|&j| j != i) {
            let mac = topo.host(j).ok(&["cat", "/sys/class/net/wan0/address"]);
            topo.host(i).ip(&[
                "neigh",
                "replace",
                &topo.wan_ip(j),
                "lladdr",
                mac.trim(),
                "dev",
                "wan0",
                "nud",
                "permanent",
            ]);
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let sent = |o: &Overlay| {
        (1..=3)
            .map(|i| o.network(i, 1).counters.tx_datagrams)
            .sum::<u64>()
    };
    let sent_before = sent(&overlay);
    // busybox arping probes once a second: three probes per site, all sites at once.
    let arping = |site: usize, ip: &str| {
        topo.vm(site, 1)
            .run(&["busybox", "arping", "-c", "3", "-w", "4", "-I", "eth0", ip])
    };
    topo.reset_wan_stats();
    let outputs: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (1..=3)
            .map(|i| s.spawn(move || arping(i, cache_ip)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, out) in outputs.iter().enumerate() {
        // Exactly one answer per probe: only the site's own cache heard it.
        assert!(
            out.stdout.contains("Received 3 response(s)"),
            "site {}:\n{}",
            i + 1,
            out.stdout
        );
        assert!(
            out.stdout.contains(&format!("[{cache_mac}]")),
            "{}",
            out.stdout
        );
    }
    let crossed = topo.wan_stats().a_to_b.rx_frames;
    let overlay_sent = sent(&overlay) - sent_before;
    // 9 requests and 9 replies; at most a keepalive or two may cross meanwhile.
    assert!(
        crossed <= 3,
        "{crossed} frames crossed the WAN during site-local ARP"
    );
    assert!(
        overlay_sent <= 3,
        "the daemons sent {overlay_sent} datagrams during site-local ARP"
    );
    for i in 1..=3 {
        // The first probe is broadcast and reaches the TAP; arping sends the others
        // unicast to the MAC it learned, which the bridge delivers without the TAP.
        assert!(overlay.network(i, 1).counters.site_local_kept >= 1);
    }
    // The positive control: ARP for an unknown address is flooded to both other sites.
    topo.reset_wan_stats();
    let _ = arping(1, "10.77.99.99");
    let crossed = topo.wan_stats().a_to_b.rx_frames;
    assert!(
        crossed >= 6,
        "only {crossed} frames crossed for 3 flooded requests"
    );
}

#[test]
fn traffic_resumes_within_a_second_after_a_30_s_wan_outage() {
    if !require_root("traffic_resumes_within_a_second_after_a_30_s_wan_outage") {
        return;
    }
    let topo = topology(2, 1);
    let _overlay = Overlay::start(&topo, &[NetworkOpts::new(1)]);
    assert_eq!(topo.vm(1, 1).ping(&vm_ip(2, 1)).received, 3);
    // Traffic keeps being offered all through the outage.
    let _pinger = topo.spawn(
        topo.vm(1, 1),
        "background-ping",
        &["ping", "-i", "0.2", &vm_ip(2, 1)],
    );
    topo.link(2).set_outage(true);
    std::thread::sleep(Duration::from_secs(30));
    assert_eq!(
        topo.vm(1, 1)
            .ping_with(
                &vm_ip(2, 1),
                &PingOpts::default()
                    .count(1)
                    .timeout(Duration::from_millis(500))
            )
            .received,
        0
    );
    topo.link(2).set_outage(false);
    let back = Instant::now();
    wait_until(
        "a ping across the restored WAN",
        Duration::from_secs(5),
        || {
            topo.vm(1, 1)
                .ping_with(
                    &vm_ip(2, 1),
                    &PingOpts::default()
                        .count(1)
                        .timeout(Duration::from_millis(200)),
                )
                .received
                == 1
        },
    );
    let took = back.elapsed();
    assert!(
        took <= Duration::from_millis(1500),
        "traffic resumed after {took:?}"
    );
}

#[test]
fn a_daemon_restart_at_one_site_heals_without_touching_the_others() {
    if !require_root("a_daemon_restart_at_one_site_heals_without_touching_the_others") {
        return;
    }
    let topo = topology(3, 1);
    let mut overlay = Overlay::start(&topo, &[NetworkOpts::new(1)]);
    assert_eq!(topo.vm(1, 1).ping(&vm_ip(3, 1)).received, 3);
    let handshakes_1_3 = |o: &Overlay| {
        o.network(1, 1)
            .peers
            .iter()
            .find(|p| p.name.as_deref() == Some("site3"))
            .unwrap()
            .handshakes
    };
    let before = handshakes_1_3(&overlay);
    let pinger = topo.spawn(
        topo.vm(1, 1),
        "ping-1-3",
        &["ping", "-i", "0.05", "-c", "80", &vm_ip(3, 1)],
    );
    overlay.restart(&topo, 2);
    let restarted = Instant::now();
    wait_until("site 2 reachable again", Duration::from_secs(10), || {
        topo.vm(1, 1)
            .ping_with(
                &vm_ip(2, 1),
                &PingOpts::default()
                    .count(1)
                    .timeout(Duration::from_millis(300)),
            )
            .received
            == 1
    });
    assert!(
        restarted.elapsed() < Duration::from_secs(3),
        "healed after {:?}",
        restarted.elapsed()
    );
    let mut pinger = pinger;
    pinger.wait_timeout(Duration::from_secs(10));
    let log = pinger.log();
    assert!(
        log.contains("80 packets transmitted, 80 received"),
        "site 1 -> 3 was disturbed:\n{log}"
    );
    assert_eq!(
        handshakes_1_3(&overlay),
        before,
        "sites 1 and 3 renegotiated"
    );
}

#[test]
fn a_restarted_daemon_sends_its_first_handshakes_at_once() {
    if !require_root("a_restarted_daemon_sends_its_first_handshakes_at_once") {
        return;
    }
    let topo = topology(2, 1);
    let mut overlay = Overlay::start(&topo, &[NetworkOpts::new(1)]);
    overlay.restart(&topo, 2);
    let restarted = Instant::now();
    // The first initiation goes out when the network starts: a session within a few
    // round trips, not after the first retry (1 to 1.33 s).
    let connected = try_wait_until(Duration::from_secs(5), || {
        overlay.network(2, 1).peers.iter().all(|p| p.session)
    });
    let took = restarted.elapsed();
    assert!(connected, "no session 5 s after the restart");
    assert!(took < Duration::from_millis(700), "session after {took:?}");
}

#[test]
fn a_host_with_a_wrong_key_gets_nothing_through() {
    if !require_root("a_host_with_a_wrong_key_gets_nothing_through") {
        return;
    }
    let topo = topology(3, 1);
    let stranger = vpn_core::PrivateKey::from_bytes([0x42; 32]);
    // Site 3 runs with a key sites 1 and 2 do not know.
    let overlay = Overlay::start_with(&topo, &[NetworkOpts::new(1)], |site, text| {
        if site == 3 {
            let line = text.lines().next().unwrap().to_string();
            *text = text.replace(
                &line,
                &format!("private_key = \"{}\"", stranger.to_base64()),
            );
        }
    });
    wait_until("sites 1 and 2 connect", Duration::from_secs(10), || {
        overlay
            .network(1, 1)
            .peers
            .iter()
            .any(|p| p.name.as_deref() == Some("site2") && p.session)
    });
    assert_eq!(topo.vm(1, 1).ping(&vm_ip(2, 1)).received, 3);
    let stats = topo.vm(3, 1).ping_with(
        &vm_ip(1, 1),
        &PingOpts::default().count(5).timeout(Duration::from_secs(1)),
    );
    assert_eq!(stats.received, 0);
    let n = overlay.network(1, 1);
    assert!(
        n.counters.drops["unknown_peer"] > 0,
        "{:?}",
        n.counters.drops
    );
    assert!(
        n.peers
            .iter()
            .any(|p| p.name.as_deref() == Some("site3") && !p.session)
    );
}

#[test]
fn a_host_without_the_network_psk_gets_nothing_through() {
    if !require_root("a_host_without_the_network_psk_gets_nothing_through") {
        return;
    }
    let topo = topology(3, 1);
    let psk = "tMbCBXAOTwUOdTD0bY0zDYjxaC5eDPPf1PLz2lpoUdw=";
    let overlay = Overlay::start_with(&topo, &[NetworkOpts::new(1).psk(psk)], |site, text| {
        if site == 3 {
            *text = text.replace(&format!("psk = \"{psk}\"\n"), "");
        }
    });
    wait_until("sites 1 and 2 connect", Duration::from_secs(10), || {
        overlay
            .network(1, 1)
            .peers
            .iter()
            .any(|p| p.name.as_deref() == Some("site2") && p.session)
    });
    assert_eq!(topo.vm(2, 1).ping(&vm_ip(1, 1)).received, 3);
    let stats = topo.vm(3, 1).ping_with(
        &vm_ip(1, 1),
        &PingOpts::default().count(5).timeout(Duration::from_secs(1)),
    );
    assert_eq!(stats.received, 0);
    let n3 = overlay.network(3, 1);
    assert!(
        n3.peers.iter().all(|p| !p.session),
        "site 3 got a session without the PSK"
    );
    assert!(
        n3.counters.drops["handshake_failed"] > 0,
        "{:?}",
        n3.counters.drops
    );
}

#[test]
fn two_networks_sharing_hosts_stay_isolated_even_with_the_same_macs() {
    if !require_root("two_networks_sharing_hosts_stay_isolated_even_with_the_same_macs") {
        return;
    }
    let topo = topology(2, 1);
    // Network 2: its own bridge and VMs at each site, with the very same MAC and IP
    // addresses as network 1's VMs.
    let mut second = Vec::new();
    for i in 1..=2 {
        let host = topo.host(i);
        host.add_bridge("br1");
        let vm = NetNs::new(&format!("n2h{i}"));
        veth(&vm, "eth0", host, "w1");
        host.set_master("w1", "br1");
        let mac = topo.vm(i, 1).ok(&["cat", "/sys/class/net/eth0/address"]);
        vm.ip(&["link", "set", "dev", "eth0", "address", mac.trim()]);
        vm.addr_add("eth0", &format!("{}/16", vm_ip(i, 1)));
        vm.link_up("eth0");
        second.push(vm);
    }
    let overlay = Overlay::start(
        &topo,
        &[NetworkOpts::new(1), NetworkOpts::new(2).bridge("br1")],
    );
    assert_eq!(topo.vm(1, 1).ping(&vm_ip(2, 1)).received, 3);
    assert_eq!(second[0].ping(&vm_ip(2, 1)).received, 3);
    // A broadcast in network 1 reaches network 1's other site and nothing of network 2.
    let payload = b"network one only";
    let counts = count_udp(
        &[topo.vm(2, 1), &second[1], &second[0]],
        Duration::from_secs(2),
        || broadcast_from(topo.vm(1, 1), payload),
        payload,
    );
    assert_eq!(counts, vec![1, 0, 0]);
    let net1 = overlay.network(1, 1);
    let net2 = overlay.network(1, 2);
    assert!(net1.counters.rx_datagrams > 0 && net2.counters.rx_datagrams > 0);
    assert_eq!(net1.tap, "vpn1");
    assert_eq!(net2.tap, "vpn2");
}

#[test]
fn sites_connect_over_an_ipv6_wan() {
    if !require_root("sites_connect_over_an_ipv6_wan") {
        return;
    }
    let topo = Topology::builder()
        .sites(2)
        .vms_per_site(1)
        .ipv6(true)
        .wan_addr(|i| format!("fd00:77::{i}/64 nodad"))
        .vm_addr(|i, j| Some(format!("10.77.{i}.{j}/16")))
        .build();
    let overlay = Overlay::start(&topo, &[NetworkOpts::new(1)]);
    assert_eq!(topo.vm(1, 1).ping(&vm_ip(2, 1)).received, 3);
    let peer = &overlay.network(1, 1).peers[0];
    assert_eq!(peer.endpoint.as_deref(), Some("[fd00:77::2]:51820"));
}

#[test]
fn the_control_api_adds_starts_stops_and_removes_networks_and_peers_at_runtime() {
    if !require_root("the_control_api_adds_starts_stops_and_removes_networks_and_peers_at_runtime")
    {
        return;
    }
    let topo = topology(1, 1);
    let mut overlay = Overlay::start_with(&topo, &[], |_, _| {});
    let host = topo.host(1);
    let control = overlay.daemon(1).control.clone();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&control).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "control socket mode {mode:o}");
    let peer = vpn_core::PrivateKey::from_bytes([9; 32]).public_key();
    let req =
        |method: &str, path: &str, body: Option<String>| overlay.request(1, method, path, body);
    let err = |r: Result<Vec<u8>, vpnd_api::ClientError>| match r {
        Err(vpnd_api::ClientError::Api { status, message }) => (status.as_u16(), message),
        other => panic!("expected an error answer, got {other:?}"),
    };

    let body = format!(
        r#"{{"id": 7, "tap": "vc7", "bridge": "br0", "peers": [{{"public_key": "{peer}", "endpoint": "10.254.0.9:51820", "name": "far"}}]}}"#
    );
    let created: serde_json::Value =
        serde_json::from_slice(&req("POST", "/v1/networks", Some(body.clone())).unwrap()).unwrap();
    assert_eq!(created["id"], 7);
    assert_eq!(created["running"], true);
    assert!(
        host.run(&["ip", "link", "show", "vc7"])
            .stdout
            .contains("master br0")
    );
    assert_eq!(err(req("POST", "/v1/networks", Some(body))).0, 409);
    let (status, message) = err(req(
        "POST",
        "/v1/networks",
        Some(r#"{"id": 8, "tap": "vc8", "mtu": "big"}"#.into()),
    ));
    assert_eq!(status, 400);
    assert!(message.contains("mtu"), "{message}");
    let (status, message) = err(req(
        "POST",
        "/v1/networks",
        Some(r#"{"id": 8, "tap": "vc8", "bridge": "nosuchbr"}"#.into()),
    ));
    assert_eq!(status, 500);
    assert!(message.contains("nosuchbr"), "{message}");
    assert!(
        !host.run(&["ip", "link", "show", "vc8"]).success,
        "a failed add left its TAP"
    );
    assert_eq!(err(req("GET", "/v1/networks/8", None)).0, 404);

    let other = vpn_core::PrivateKey::from_bytes([10; 32]).public_key();
    req(
        "POST",
        "/v1/networks/7/peers",
        Some(format!(r#"{{"public_key": "{other}"}}"#)),
    )
    .unwrap();
    assert_eq!(
        err(req(
            "POST",
            "/v1/networks/7/peers",
            Some(format!(r#"{{"public_key": "{other}"}}"#))
        ))
        .0,
        409
    );
    assert_eq!(overlay.network(1, 7).peers.len(), 2);
    req(
        "DELETE",
        &format!("/v1/networks/7/peers/{}", other.to_url_safe()),
        None,
    )
    .unwrap();
    assert_eq!(overlay.network(1, 7).peers.len(), 1);
    assert_eq!(
        err(req(
            "DELETE",
            &format!("/v1/networks/7/peers/{}", other.to_url_safe()),
            None
        ))
        .0,
        404
    );

    req("POST", "/v1/networks/7/stop", None).unwrap();
    assert!(
        !host.run(&["ip", "link", "show", "vc7"]).success,
        "stopped network kept its TAP"
    );
    assert!(!overlay.network(1, 7).running);
    req("POST", "/v1/networks/7/start", None).unwrap();
    assert!(host.run(&["ip", "link", "show", "vc7"]).success);
    let macs: serde_json::Value =
        serde_json::from_slice(&req("GET", "/v1/networks/7/macs", None).unwrap()).unwrap();
    assert!(macs.is_array());
    req("DELETE", "/v1/networks/7", None).unwrap();
    assert!(!host.run(&["ip", "link", "show", "vc7"]).success);
    assert!(overlay.status(1).networks.is_empty());
}

#[test]
fn vpnd_status_prints_a_table_and_json_and_metrics_are_served() {
    if !require_root("vpnd_status_prints_a_table_and_json_and_metrics_are_served")
        || !require_command("vpnd_status", "curl")
    {
        return;
    }
    let topo = topology(2, 1);
    let overlay = Overlay::start_with(&topo, &[NetworkOpts::new(1)], |site, text| {
        text.insert_str(0, &format!("metrics = \"127.0.0.1:{}\"\n", 9700 + site));
    });
    overlay.wait_connected(Duration::from_secs(10));
    assert_eq!(topo.vm(1, 1).ping(&vm_ip(2, 1)).received, 3);
    let vpnd = bin_path("vpnd");
    let control = overlay.daemons[0].control.to_str().unwrap().to_string();
    let table = topo
        .host(1)
        .ok(&[vpnd.to_str().unwrap(), "status", "--control", &control]);
    for needle in [
        "network 1: running",
        "tap vpn1 on br0",
        "site2",
        "10.254.0.2:51820",
        "ago",
    ] {
        assert!(table.contains(needle), "missing {needle:?}:\n{table}");
    }
    let json = topo.host(1).ok(&[
        vpnd.to_str().unwrap(),
        "status",
        "--json",
        "--control",
        &control,
    ]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["networks"][0]["peers"][0]["session"], true);
    let metrics = topo
        .host(1)
        .ok(&["curl", "-sf", "http://127.0.0.1:9701/metrics"]);
    let site2 = overlay.daemons[1].public_key();
    assert!(
        metrics.contains(&format!(
            "vpnd_peer_session_up{{network=\"1\",peer=\"{site2}\",peer_name=\"site2\"}} 1"
        )),
        "{metrics}"
    );
    assert!(metrics.contains("# TYPE vpnd_peer_received_bytes counter"));
    assert!(metrics.ends_with("# EOF\n"), "OpenMetrics text: {metrics}");
}

#[test]
fn vpnd_check_names_file_line_and_field_of_broken_configs() {
    // No root needed: only the config is read.
    let vpnd = bin_path("vpnd");
    let dir = site_tests::TempDir::new("check");
    let key = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
    let cases = [
        (
            "private_key = \"{key}\"\n[[network]]\nid = 1\ntap = \"vpn1\"\nmtu = 20000\n",
            ":5: network 1: mtu",
        ),
        (
            "private_key = \"{key}\"\n[[network]]\nid = 1\ntap = \"vpn1\"\n[[network.peer]]\npublic_key = \"short\"\n",
            ":6: public_key = \"short\"",
        ),
        (
            "private_key = \"{key}\"\n[[network]]\nid = 1\ntapp = \"vpn1\"\n",
            ":4: tapp",
        ),
        (
            "private_key = \"{key}\"\nlisten = [\"nowhere\"]\n",
            ":2: listen",
        ),
        ("[[network]]\nid = 1\ntap = \"x\"\n", "private_key: missing"),
        (
            "private_key_file = \"nowhere.key\"\n",
            ":1: private_key_file: ",
        ),
    ];
    for (i, (text, expect)) in cases.iter().enumerate() {
        let path = dir.join(format!("broken{i}.toml"));
        std::fs::write(&path, text.replace("{key}", key)).unwrap();
        let out = std::process::Command::new(&vpnd)
            .args(["check", "-c"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "case {i} passed the check");
        assert!(
            stderr.contains(&format!("broken{i}.toml")),
            "case {i} does not name the file: {stderr}"
        );
        assert!(
            stderr.contains(expect),
            "case {i}: expected {expect:?} in: {stderr}"
        );
    }
    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        format!("private_key = \"{key}\"\n[[network]]\nid = 1\ntap = \"vpn1\"\n"),
    )
    .unwrap();
    let out = std::process::Command::new(&vpnd)
        .args(["check", "-c"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok: 1 network(s)"));
}

#[test]
fn sessions_form_between_all_sites_within_a_second_of_start() {
    if !require_root("sessions_form_between_all_sites_within_a_second_of_start") {
        return;
    }
    let topo = topology(3, 1);
    let start = Instant::now();
    let overlay = Overlay::start_with(&topo, &[NetworkOpts::new(1)], |_, _| {});
    assert!(
        try_wait_until(Duration::from_secs(3), || overlay.connected()),
        "not connected after 3 s"
    );
    let took = start.elapsed();
    assert!(took < Duration::from_secs(3), "{took:?}");
}
