//! A handshake flood against a real `vpnd`: a host that knows a site's public key replays
//! one valid-mac1 initiation from one address as fast as it can, while a well-behaved
//! initiator at another address and a real peer restarting at another site must still
//! get their handshakes answered. In a file of its own so that no other namespace test
//! shares the machine with the flood. Needs root.

use std::time::{Duration, Instant};

use site_tests::handshake::{flood, initiate_repeatedly, initiation};
use site_tests::{
    NetNs, NetworkOpts, Overlay, Topology, require_root, try_wait_until, veth, wait_until,
};

#[test]
fn a_handshake_flood_from_one_address_does_not_starve_other_initiators() {
    if !require_root("a_handshake_flood_from_one_address_does_not_starve_other_initiators") {
        return;
    }
    let topo = Topology::builder()
        .sites(2)
        .vms_per_site(1)
        .vm_addr(|i, j| Some(format!("10.77.{i}.{j}/16")))
        .build();
    // Besides site 2, site 1's vpnd knows one more peer: a well-behaved initiator that
    // contacts it (no endpoint). It and the flooder sit on links of their own.
    let honest_key = vpn_core::PrivateKey::from_bytes([0x5a; 32]);
    let overlay = Overlay::start_with(&topo, &[NetworkOpts::new(1)], |site, text| {
        if site == 1 {
            text.push_str(&format!(
                "\n[[network.peer]]\nname = \"honest\"\npublic_key = \"{}\"\n",
                honest_key.public_key()
            ));
        }
    });
    let site2_connected = |overlay: &Overlay| {
        overlay
            .network(2, 1)
            .peers
            .iter()
            .any(|p| p.name.as_deref() == Some("site1") && p.session)
    };
    wait_until("sites 1 and 2 connect", Duration::from_secs(10), || {
        site2_connected(&overlay)
    });
    let attach = |tag: &str, net: u8| {
        let ns = NetNs::new(tag);
        let host_dev = format!("{tag}0");
        veth(topo.host(1), &host_dev, &ns, "eth0");
        topo.host(1)
            .addr_add(&host_dev, &format!("10.99.{net}.1/30"));
        topo.host(1).link_up(&host_dev);
        ns.addr_add("eth0", &format!("10.99.{net}.2/30"));
        ns.link_up("eth0");
        let daemon: std::net::SocketAddr = format!("10.99.{net}.1:51820").parse().unwrap();
        (ns, daemon)
    };
    let (flooder, flood_to) = attach("fl", 1);
    let (honest, honest_to) = attach("hn", 2);
    let target = overlay.daemons[0].public_key();
    // A host that knows site 1's public key: its initiation has a valid mac1.
    let stranger = vpn_core::PrivateKey::from_bytes([0x66; 32]);
    let (flood_init, _) = initiation(&stranger, 1, target, flood_to, 1);
    let before = overlay.network(1, 1).counters;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let started = Instant::now();
    let (flooded, answered, reconnect) = std::thread::scope(|s| {
        let flood = s.spawn(|| {
            flood(
                &flooder,
                flood_to,
                &flood_init,
                &stop,
                Duration::from_secs(30),
            )
        });
        // Let the flood take hold, then measure the others.
        std::thread::sleep(Duration::from_secs(1));
        let prober = s.spawn(|| {
            initiate_repeatedly(
                &honest,
                &honest_key,
                1,
                target,
                honest_to,
                40,
                Duration::from_millis(250),
            )
        });
        std::thread::sleep(Duration::from_secs(2));
        // A real peer restarts in the middle of the flood: its fresh handshake must
        // complete promptly.
        let mut overlay = overlay;
        overlay.restart(&topo, 2);
        let restarted = Instant::now();
        let reconnected = try_wait_until(Duration::from_secs(4), || site2_connected(&overlay));
        let reconnect = reconnected.then(|| restarted.elapsed());
        let answered = prober.join().unwrap();
        let after = overlay.network(1, 1).counters;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let flooded = flood.join().unwrap();
        (flooded, answered, (reconnect, before, after))
    });
    eprintln!("DIAG udp: {}", topo.host(1).sh("grep Udp: /proc/net/snmp"));
    eprintln!(
        "DIAG softnet: {}",
        topo.host(1).sh("cat /proc/net/softnet_stat")
    );
    let (sent, flood_time) = flooded;
    let rate = sent as f64 / flood_time.as_secs_f64();
    let (reconnect, before, after) = reconnect;
    eprintln!(
        "flood: {sent} initiations in {flood_time:?} ({rate:.0}/s); honest initiator: {answered:?}; \
         site 2 reconnected after {reconnect:?}; site 1 processed {} initiations, sent {} cookie \
         replies, dropped {} as rate_limited",
        after.initiations_processed - before.initiations_processed,
        after.cookie_replies_sent - before.cookie_replies_sent,
        after.drops["rate_limited"] - before.drops["rate_limited"],
    );
    assert!(rate > 20_000.0, "the flood only reached {rate:.0}/s");
    assert_eq!(answered.sent, 40);
    assert!(
        answered.answered() >= 36,
        "the well-behaved initiator got {} of 40 initiations answered ({answered:?})",
        answered.answered()
    );
    let took = reconnect.expect("site 2's fresh handshake completed within 4 s of its restart");
    assert!(took < Duration::from_secs(4), "{took:?}");
    // The flood cost site 1 at most one source's share of work (5/s, burst 5).
    let secs = started.elapsed().as_secs_f64();
    let processed = (after.initiations_processed - before.initiations_processed) as f64;
    assert!(
        processed <= 40.0 + 10.0 + 5.0 * (secs + 1.0),
        "{processed} initiations processed in {secs:.1} s"
    );
}
