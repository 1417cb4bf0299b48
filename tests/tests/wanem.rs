//! The WAN emulator (`wanem`) and the namespace support library, tested as the vpnd
//! integration tests will use them. Tests that need root print `SKIP ...` and pass
//! without it; CI runs them as root.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use site_tests::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Resolves ARP both ways so later counters only see the test's own traffic.
fn warm_up(pair: &WanPair) {
    assert_eq!(pair.left().ping(PAIR_RIGHT_ADDR).received, 3);
    pair.link().reset_stats();
}

fn wait_idle(link: &WanLink) -> LinkStats {
    let mut stats = LinkStats::default();
    wait_until("the emulator to drain", Duration::from_secs(10), || {
        stats = link.stats();
        stats.total().queued == 0
    });
    stats
}

fn assert_counters_add_up(s: &DirStats) {
    assert_eq!(
        s.rx_frames + s.duplicated,
        s.tx_frames + s.dropped() + s.queued,
        "counters do not add up: {s:?}"
    );
}

#[test]
fn forwards_ping_and_full_size_tcp_unchanged_without_impairment() {
    if !require_root("forwards_ping_and_full_size_tcp_unchanged_without_impairment") {
        return;
    }
    let pair = WanPair::new(1);
    warm_up(&pair);
    let p = pair.left().ping_with(
        PAIR_RIGHT_ADDR,
        &PingOpts::default()
            .count(20)
            .interval(ms(10))
            .size(1472)
            .dont_fragment(),
    );
    assert_eq!((p.received, p.duplicates), (20, 0), "{p:?}");
    assert!(
        p.rtt_max.unwrap() < ms(10),
        "no delay configured, got {p:?}"
    );

    tcp_transfer_is_intact(&pair, 4 << 20);

    let s = wait_idle(pair.link());
    for d in [s.a_to_b, s.b_to_a] {
        assert_eq!(
            (d.rx_frames, d.rx_bytes),
            (d.tx_frames, d.tx_bytes),
            "{d:?}"
        );
        assert_eq!(d.dropped(), 0, "{d:?}");
        // Offloads are off on the fixture's links: nothing needed fixing up.
        assert_eq!((d.gso_frames, d.csum_completed), (0, 0), "{d:?}");
    }
    assert!(s.a_to_b.rx_bytes > 4 << 20, "{s:?}");
}

/// Sends `len` bytes of patterned data left to right over TCP and checks every byte.
fn tcp_transfer_is_intact(pair: &WanPair, len: u32) {
    let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
    let listener = pair
        .right()
        .in_ns(|| TcpListener::bind((PAIR_RIGHT_ADDR, 0)))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = std::thread::scope(|s| {
        let r = s.spawn(|| {
            let (mut c, _) = listener.accept().unwrap();
            let mut v = Vec::new();
            c.read_to_end(&mut v).unwrap();
            v
        });
        let mut c = pair
            .left()
            .in_ns(|| TcpStream::connect((PAIR_RIGHT_ADDR, port)))
            .unwrap();
        c.write_all(&data).unwrap();
        drop(c);
        r.join().unwrap()
    });
    assert!(received == data, "TCP stream corrupted through wanem");
}

#[test]
fn offloaded_checksums_and_gso_frames_cross_intact() {
    if !require_root("offloaded_checksums_and_gso_frames_cross_intact") {
        return;
    }
    let pair = WanPair::with_offloads(1);
    warm_up(&pair);
    tcp_transfer_is_intact(&pair, 4 << 20);
    let s = wait_idle(pair.link());
    // Data went as TSO super-frames, the ACKs back with offloaded checksums.
    assert!(s.a_to_b.gso_frames > 0, "{s:?}");
    assert!(s.b_to_a.csum_completed > 0, "{s:?}");
    assert_eq!(s.total().dropped(), 0, "{s:?}");
}

#[test]
fn ten_ms_each_way_gives_twenty_ms_rtt() {
    if !require_root("ten_ms_each_way_gives_twenty_ms_rtt") {
        return;
    }
    let pair = WanPair::new(1);
    warm_up(&pair);
    pair.link()
        .set(Dirs::Both, LinkParams::default().delay(ms(10)));
    let p = pair.left().ping_with(
        PAIR_RIGHT_ADDR,
        &PingOpts::default().count(20).interval(ms(20)),
    );
    assert_eq!(p.received, 20, "{p:?}");
    let (min, avg) = (p.rtt_min.unwrap(), p.rtt_avg.unwrap());
    assert!(min >= ms(20), "a frame left early: {p:?}");
    assert!(avg < ms(23), "RTT too long: {p:?}");

    // Asymmetric: only the return path delayed.
    pair.link().set(Dirs::AToB, LinkParams::default());
    let p = pair.left().ping_with(
        PAIR_RIGHT_ADDR,
        &PingOpts::default().count(10).interval(ms(20)),
    );
    let avg = p.rtt_avg.unwrap();
    assert!(avg >= ms(10) && avg < ms(13), "{p:?}");
}

#[test]
fn thirty_percent_loss_is_thirty_percent_and_seeded() {
    if !require_root("thirty_percent_loss_is_thirty_percent_and_seeded") {
        return;
    }
    let pair = WanPair::new(7);
    warm_up(&pair);
    pair.link().set(Dirs::AToB, LinkParams::default().loss(0.3));
    let opts = FlowOpts::default()
        .count(2000)
        .interval(Duration::from_micros(100));

    pair.link().reseed(42);
    let first = udp_flow(pair.left(), pair.right(), PAIR_RIGHT_ADDR, &opts);
    let s = wait_idle(pair.link()).a_to_b;
    let loss = first.loss();
    assert!((0.26..0.34).contains(&loss), "loss {loss}");
    assert_eq!(s.rx_frames, 2000, "{s:?}");
    assert_eq!(s.dropped_loss, 2000 - first.received() as u64, "{s:?}");
    assert_counters_add_up(&s);

    // Same seed, same traffic: the very same datagrams are lost.
    pair.link().reseed(42);
    let second = udp_flow(pair.left(), pair.right(), PAIR_RIGHT_ADDR, &opts);
    assert_eq!(first.lost(), second.lost());
    pair.link().reseed(43);
    let third = udp_flow(pair.left(), pair.right(), PAIR_RIGHT_ADDR, &opts);
    assert_ne!(first.lost(), third.lost());
}

#[test]
fn rate_limit_bounds_a_udp_flood_to_fifty_mbit() {
    if !require_root("rate_limit_bounds_a_udp_flood_to_fifty_mbit") {
        return;
    }
    let pair = WanPair::new(1);
    warm_up(&pair);
    pair.link()
        .set(Dirs::AToB, LinkParams::default().rate_bps(50_000_000));
    // Offer 100 Mbit/s for about 1.5 s.
    let opts = FlowOpts::default()
        .payload(1400)
        .count(12_000)
        .rate_bps(100_000_000);
    let r = udp_flow(pair.left(), pair.right(), PAIR_RIGHT_ADDR, &opts);
    let bps = r.rate_bps(UDP_FRAME_OVERHEAD);
    assert!(
        (46e6..=51e6).contains(&bps),
        "received {:.1} Mbit/s",
        bps / 1e6
    );
    let s = wait_idle(pair.link()).a_to_b;
    assert!(
        s.dropped_queue > 3000,
        "a 2x overload must tail-drop: {s:?}"
    );
    assert_eq!(s.dropped_queue, 12_000 - r.received() as u64, "{s:?}");
    assert_counters_add_up(&s);
}

#[test]
fn outage_drops_everything_then_traffic_resumes() {
    if !require_root("outage_drops_everything_then_traffic_resumes") {
        return;
    }
    let pair = WanPair::new(1);
    warm_up(&pair);
    pair.link().set_outage(true);
    let p = pair.left().ping_with(
        PAIR_RIGHT_ADDR,
        &PingOpts::default()
            .count(5)
            .interval(ms(20))
            .timeout(ms(300)),
    );
    assert_eq!(p.received, 0, "{p:?}");
    let s = pair.link().stats();
    assert_eq!(s.a_to_b.tx_frames, 0, "{s:?}");
    assert!(s.a_to_b.dropped_outage >= 5, "{s:?}");

    pair.link().set_outage(false);
    let p = pair.left().ping_with(
        PAIR_RIGHT_ADDR,
        &PingOpts::default().count(5).interval(ms(20)),
    );
    assert_eq!(p.received, 5, "{p:?}");
    assert!(!pair.link().params().a_to_b.outage);
}

#[test]
fn outage_also_drops_frames_in_flight() {
    if !require_root("outage_also_drops_frames_in_flight") {
        return;
    }
    let pair = WanPair::new(1);
    warm_up(&pair);
    pair.link()
        .set(Dirs::AToB, LinkParams::default().delay(ms(300)));
    let opts = FlowOpts::default().count(50).interval(ms(1)).drain(ms(600));
    std::thread::scope(|s| {
        let flow = s.spawn(|| udp_flow(pair.left(), pair.right(), PAIR_RIGHT_ADDR, &opts));
        // The flow takes 50 ms; its frames are on the "wire" for 300 ms.
        std::thread::sleep(ms(150));
        pair.link().set_outage_dir(Direction::AToB, true);
        let r = flow.join().unwrap();
        assert_eq!(r.received(), 0, "frames in flight survived the outage");
    });
    let s = wait_idle(pair.link()).a_to_b;
    assert_eq!(s.dropped_outage, 50, "{s:?}");
}

#[test]
fn duplication_and_reordering_are_counted() {
    if !require_root("duplication_and_reordering_are_counted") {
        return;
    }
    let pair = WanPair::new(3);
    warm_up(&pair);
    pair.link()
        .set(Dirs::AToB, LinkParams::default().duplicate(0.2));
    let r = udp_flow(
        pair.left(),
        pair.right(),
        PAIR_RIGHT_ADDR,
        &FlowOpts::default(),
    );
    let s = wait_idle(pair.link()).a_to_b;
    assert_eq!(r.received(), 1000);
    assert_eq!(r.duplicates() as u64, s.duplicated, "{s:?}");
    assert!((140..260).contains(&s.duplicated), "{s:?}");
    assert_counters_add_up(&s);

    pair.link().reset_stats();
    pair.link()
        .set(Dirs::AToB, LinkParams::default().reorder(0.2, ms(3)));
    let r = udp_flow(
        pair.left(),
        pair.right(),
        PAIR_RIGHT_ADDR,
        &FlowOpts::default(),
    );
    let s = wait_idle(pair.link()).a_to_b;
    assert_eq!((r.received(), r.duplicates()), (1000, 0));
    assert!((140..260).contains(&s.reordered), "{s:?}");
    // Held back 3 ms while datagrams follow every 0.2 ms: nearly each one is overtaken.
    let ooo = r.out_of_order() as u64;
    assert!(
        ooo * 10 >= s.reordered * 8 && ooo <= s.reordered,
        "{ooo} of {s:?}"
    );
    assert_counters_add_up(&s);
}

#[test]
fn jitter_spreads_latency_without_reordering() {
    if !require_root("jitter_spreads_latency_without_reordering") {
        return;
    }
    let pair = WanPair::new(1);
    warm_up(&pair);
    pair.link().set(
        Dirs::AToB,
        LinkParams::default().delay(ms(10)).jitter(ms(4)),
    );
    let r = udp_flow(
        pair.left(),
        pair.right(),
        PAIR_RIGHT_ADDR,
        &FlowOpts::default().count(500).interval(ms(1)),
    );
    assert_eq!(r.received(), 500);
    assert_eq!(
        r.out_of_order(),
        0,
        "jitter reordered without being asked to"
    );
    let mut lat = r.latencies();
    lat.sort();
    // The 99th percentile: the test's own threads (not real-time, unlike the emulator's)
    // may be scheduled late now and then on a busy machine, inflating a few samples.
    let (min, max) = (lat[0], lat[lat.len() * 99 / 100]);
    assert!(min >= ms(6), "earlier than delay - jitter: {min:?}");
    assert!(max <= ms(15), "later than delay + jitter: {max:?}");
    assert!(max - min >= ms(5), "no visible jitter: {min:?}..{max:?}");
}

#[test]
fn counters_add_up_under_mixed_impairments() {
    if !require_root("counters_add_up_under_mixed_impairments") {
        return;
    }
    let pair = WanPair::new(11);
    warm_up(&pair);
    let mixed = LinkParams::default()
        .delay(ms(2))
        .loss(0.1)
        .duplicate(0.1)
        .reorder(0.1, ms(1))
        .rate_bps(20_000_000)
        .queue_bytes(30_000);
    pair.link().set(Dirs::Both, mixed);
    let r = udp_flow(
        pair.left(),
        pair.right(),
        PAIR_RIGHT_ADDR,
        &FlowOpts::default()
            .count(3000)
            .interval(Duration::from_micros(250)),
    );
    let s = wait_idle(pair.link());
    let a = s.a_to_b;
    assert_eq!(a.rx_frames, 3000, "{a:?}");
    assert_eq!(a.tx_frames, r.arrivals.len() as u64, "{a:?}");
    for d in [a.dropped_loss, a.dropped_queue, a.duplicated, a.reordered] {
        assert!(d > 0, "every impairment should have acted: {a:?}");
    }
    assert_counters_add_up(&a);
    assert_counters_add_up(&s.b_to_a);

    pair.link().reset_stats();
    assert_eq!(pair.link().stats(), LinkStats::default());
}

#[test]
fn oversize_frames_are_counted_never_truncated() {
    if !require_root("oversize_frames_are_counted_never_truncated") {
        return;
    }
    let pair = WanPair::new(1);
    warm_up(&pair);
    // Jumbo frames can enter the emulator on the left, but the right side is 1500.
    pair.left().set_mtu("eth0", 9000);
    pair.wan().set_mtu("a", 9000);
    let p = pair.left().ping_with(
        PAIR_RIGHT_ADDR,
        &PingOpts::default()
            .count(3)
            .size(4000)
            .dont_fragment()
            .timeout(ms(300)),
    );
    assert_eq!(p.received, 0, "{p:?}");
    let s = pair.link().stats().a_to_b;
    assert_eq!(s.dropped_oversize, 3, "{s:?}");
    assert_eq!(s.tx_frames, 0, "nothing truncated went out: {s:?}");
    assert!(s.rx_bytes >= 3 * 4000, "frames were read whole: {s:?}");
}

#[test]
fn control_socket_names_bad_parameters_and_changes_nothing() {
    if !require_root("control_socket_names_bad_parameters_and_changes_nothing") {
        return;
    }
    let pair = WanPair::new(1);
    let before = pair.link().params();
    let partial = serde_json::json!({"loss": 0.5, "dleay_us": 5});
    let err = pair
        .link()
        .request(&site_tests::wanem::proto::Request::Set {
            dir: Dirs::Both,
            params: partial.as_object().unwrap().clone(),
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("dleay_us"), "{err}");
    assert_eq!(pair.link().params(), before);
    let cfg = pair.link().modify(Direction::BToA, |p| p.delay = ms(7));
    assert_eq!(cfg.b_to_a.delay, ms(7));
    assert_eq!(cfg.a_to_b.delay, Duration::ZERO);
}

#[test]
fn three_site_topology_builds_connects_and_leaves_nothing() {
    if !require_root("three_site_topology_builds_connects_and_leaves_nothing")
        || !require_command(
            "three_site_topology_builds_connects_and_leaves_nothing",
            "ethtool",
        )
    {
        return;
    }
    let topo = Topology::builder().sites(3).vms_per_site(2).build();
    let names = topo.namespace_names();
    assert_eq!(names.len(), 1 + 3 + 6);
    let existing = list_namespaces();
    assert!(names.iter().all(|n| existing.contains(n)));

    // VMs of one site reach each other over the site's bridge, not the WAN.
    topo.reset_wan_stats();
    for i in 1..=3 {
        let p = topo.vm(i, 1).ping(&topo.vm_ip(i, 2).unwrap());
        assert_eq!(p.received, 3, "site {i}: {p:?}");
    }
    // (ARP broadcasts from the VMs stay on br0 too: nothing bridges br0 to wan0 yet.)
    assert_eq!(topo.wan_stats().a_to_b.rx_frames, 0);

    // Every pair of hosts reaches each other across the emulated WAN.
    for i in 1..=3 {
        for j in 1..=3 {
            if i != j {
                let p = topo.host(i).ping(&topo.wan_ip(j));
                assert_eq!(p.received, 3, "host {i} -> {j}: {p:?}");
            }
        }
    }
    let s = topo.wan_stats();
    assert!(s.a_to_b.tx_frames >= 6 * 3 * 2, "{s:?}");
    // Each site's link carried its host's share, upstream and downstream.
    for i in 1..=3 {
        let l = topo.link(i).stats();
        assert!(
            l.dir(Topology::UPSTREAM).tx_frames >= 2 * 3 * 2,
            "site {i}: {l:?}"
        );
        assert!(
            l.dir(Topology::DOWNSTREAM).tx_frames >= 2 * 3 * 2,
            "site {i}: {l:?}"
        );
    }

    // A daemon started the way tests will start vpnd: in a host, logged, stopped on drop.
    let mut daemon = topo.spawn(
        topo.host(2),
        "daemon2",
        &["sh", "-c", "echo up; exec sleep 300"],
    );
    wait_until("daemon2 to log", Duration::from_secs(5), || {
        daemon.log().contains("up")
    });
    assert_eq!(topo.host(2).pids(), vec![daemon.pid()]);
    daemon.assert_running();
    drop(daemon);
    assert!(topo.host(2).pids().is_empty());
    assert_eq!(s.total().dropped(), 0, "{s:?}");

    // RTT between two sites is the sum of both access links' delays both ways.
    topo.link(1)
        .set(Dirs::Both, LinkParams::default().delay(ms(4)));
    topo.link(2)
        .set(Dirs::Both, LinkParams::default().delay(ms(6)));
    let p = topo.host(1).ping_with(
        &topo.wan_ip(2),
        &PingOpts::default().count(10).interval(ms(25)),
    );
    assert!(
        p.rtt_min.unwrap() >= ms(20) && p.rtt_avg.unwrap() < ms(23),
        "{p:?}"
    );

    drop(topo);
    let left = list_namespaces();
    let leaked: Vec<_> = names.iter().filter(|n| left.contains(n)).collect();
    assert!(leaked.is_empty(), "namespaces left behind: {leaked:?}");
}

#[test]
fn a_panicking_test_leaves_no_namespace_or_process() {
    if !require_root("a_panicking_test_leaves_no_namespace_or_process") {
        return;
    }
    let mut name = String::new();
    let mut stray = None;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let ns = NetNs::new("doomed");
        name = ns.name().to_string();
        // A process started behind the library's back: the drop must kill it too.
        stray = Some(
            ns.command("sleep", ["300"])
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        panic!("deliberate failure");
    }));
    assert!(result.is_err());
    assert!(!list_namespaces().contains(&name));
    let status = stray.unwrap().wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
}

#[test]
fn process_guard_logs_and_stops() {
    if !require_root("process_guard_logs_and_stops") {
        return;
    }
    let ns = NetNs::new("proc");
    let dir = TempDir::new("proc");
    let mut p = ns.spawn(
        "talker",
        &[
            "sh",
            "-c",
            "echo hello from $(ip -br link show lo | cut -d' ' -f1); exec sleep 300",
        ],
        &dir.join("talker.log"),
    );
    wait_until("the talker to log", Duration::from_secs(5), || {
        p.log().contains("hello from lo")
    });
    assert!(p.is_running());
    assert_eq!(ns.pids(), vec![p.pid()]);
    let status = p.stop();
    assert!(!status.success(), "killed by SIGTERM: {status:?}");
    assert!(ns.pids().is_empty());
}

#[test]
fn helpers_fail_with_messages_that_say_what_to_do() {
    let err = std::panic::catch_unwind(|| bin_path("no-such-binary")).unwrap_err();
    let msg = err.downcast_ref::<String>().unwrap();
    assert!(msg.contains("cargo build --workspace --bins"), "{msg}");

    let err = std::panic::catch_unwind(|| {
        wait_until("the impossible", ms(50), || false);
    })
    .unwrap_err();
    let msg = err.downcast_ref::<String>().unwrap();
    assert!(msg.contains("the impossible"), "{msg}");

    assert!(find_command("no-such-command-xyz").is_none());
    assert!(require_command("helpers", "sh"));
    let (a, b) = (unique_name("x"), unique_name("x"));
    assert_ne!(a, b);
    // The emulator binary is built next to this test by cargo.
    assert!(bin_path("wanem").ends_with("wanem"));
}
