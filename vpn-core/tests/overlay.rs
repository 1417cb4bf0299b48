//! Whole overlays of several sites, simulated in memory under simulated time: every
//! behaviour a site operator relies on, deterministically, with no socket or thread.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use vpn_core::sim::frames::{self, DHCP_ACK, DHCP_DISCOVER, DHCP_OFFER, DHCP_REQUEST};
use vpn_core::sim::{LinkParams, Sim};
use vpn_core::wire::{self, Message};
use vpn_core::{
    DatagramError, Event, MacAddr, Network, NetworkConfig, NetworkId, PeerConfig, Port,
    PresharedKey, PrivateKey, SiteLocalAddr,
};

fn mac(site: usize, vm: u8) -> MacAddr {
    MacAddr([0x52, 0x54, 0, 0, site as u8, vm])
}

fn ip(site: usize, vm: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, site as u8, vm)
}

/// A plain unicast IPv4/UDP frame between two VMs, `size` bytes long.
fn frame(from: (usize, u8), to: (usize, u8), size: usize, tag: u8) -> Vec<u8> {
    let payload = vec![tag; size.saturating_sub(42)];
    frames::udp(
        (mac(from.0, from.1), mac(to.0, to.1)),
        (ip(from.0, from.1), ip(to.0, to.1)),
        (5000, 5001),
        &payload,
    )
}

fn all_connected(sim: &Sim) -> bool {
    (0..sim.len()).all(|i| sim.site(i).net.peers(sim.now).all(|p| p.has_session))
}

/// Sites in a mesh, connected.
fn mesh(n: usize, seed: u64) -> Sim {
    let mut sim = Sim::new(n, seed, |_, _| {});
    assert!(sim.run_until(Duration::from_secs(5), |s| all_connected(s)));
    sim
}

/// Data datagrams (anything longer than a keepalive) sent by `site` per the recording.
fn data_datagrams_from(sim: &Sim, site: usize) -> usize {
    sim.recorded
        .as_ref()
        .expect("recording")
        .iter()
        .filter(|(from, _, d)| *from == site && d[1] >= 4 && d.len() > 32)
        .count()
}

#[test]
fn handshakes_connect_every_pair_of_sites_in_one_round_trip() {
    let mut sim = Sim::new(3, 1, |_, _| {});
    // 5 ms one way: the first handshakes complete after one 10 ms round trip.
    assert!(sim.run_until(Duration::from_millis(50), |s| all_connected(s)));
    for i in 0..3 {
        for p in sim.site(i).net.peers(sim.now) {
            assert!(p.has_session, "site {i} -> {:?}", p.name);
            assert!(p.stats.handshakes >= 1);
            assert!(p.last_handshake.is_some());
        }
    }
}

#[test]
fn unicast_floods_until_learned_then_goes_to_one_site() {
    let mut sim = mesh(3, 2);
    let a = (0, 1);
    let b = (1, 1);
    // Unknown destination: flooded to both other sites.
    sim.send_frame(0, &frame(a, b, 200, 1));
    sim.run_for(Duration::from_millis(50));
    assert_eq!(sim.take_delivered(1).len(), 1);
    assert_eq!(sim.take_delivered(2).len(), 1);
    // B answers: site 1 learned A behind site 0, so only site 0 gets it.
    sim.send_frame(1, &frame(b, a, 300, 2));
    sim.run_for(Duration::from_millis(50));
    let at0 = sim.take_delivered(0);
    assert_eq!(at0, vec![frame(b, a, 300, 2)]);
    assert!(sim.take_delivered(2).is_empty());
    // Now both directions are learned.
    sim.send_frame(0, &frame(a, b, 400, 3));
    sim.run_for(Duration::from_millis(50));
    assert_eq!(sim.take_delivered(1), vec![frame(a, b, 400, 3)]);
    assert!(sim.take_delivered(2).is_empty());
    let p1 = sim.peer_id(1, 0);
    assert_eq!(
        sim.site(1).net.switch().lookup(sim.now, mac(0, 1)),
        Some(Port::Peer(p1))
    );
}

#[test]
fn broadcast_reaches_every_other_site_exactly_once_even_with_duplicating_links() {
    let mut sim = mesh(4, 3);
    sim.set_all_links(LinkParams {
        duplicate: 0.5,
        jitter: Duration::from_millis(3),
        ..LinkParams::default()
    });
    sim.recorded = Some(Vec::new());
    let bcast = frames::arp_request((mac(0, 1), ip(0, 1)), ip(3, 9));
    sim.send_frame(0, &bcast);
    sim.run_for(Duration::from_secs(2));
    assert!(
        sim.take_delivered(0).is_empty(),
        "a site never hears its own broadcast"
    );
    for site in 1..4 {
        assert_eq!(sim.take_delivered(site), vec![bcast.clone()], "site {site}");
    }
    assert!(sim.wan_stats().duplicated > 0, "the links did duplicate");
    // No loops: the sites that received it sent no data on.
    for site in 1..4 {
        assert_eq!(data_datagrams_from(&sim, site), 0, "site {site} forwarded");
    }
}

#[test]
fn split_horizon_a_unicast_from_a_peer_for_another_peer_is_dropped() {
    let mut sim = mesh(3, 4);
    let (a, b, c) = ((0, 1), (1, 1), (2, 1));
    // Every site learns B; then C talks to B, so site 1 (only) learns C.
    sim.send_frame(1, &frames::arp_request((mac(1, 1), ip(1, 1)), ip(9, 9)));
    sim.run_for(Duration::from_millis(50));
    sim.send_frame(2, &frame(c, b, 100, 1));
    sim.run_for(Duration::from_millis(50));
    assert_eq!(sim.take_delivered(1).len(), 1);
    assert_eq!(sim.site(0).net.switch().lookup(sim.now, mac(2, 1)), None);
    for site in 0..3 {
        sim.take_delivered(site);
    }
    sim.recorded = Some(Vec::new());
    // Site 0 does not know C and floods; site 1 knows C is at site 2 and must neither
    // deliver nor forward.
    sim.send_frame(0, &frame(a, c, 100, 2));
    sim.run_for(Duration::from_millis(50));
    assert!(sim.take_delivered(1).is_empty());
    assert_eq!(sim.take_delivered(2).len(), 1);
    assert_eq!(data_datagrams_from(&sim, 1), 0);
    assert!(sim.site(1).net.switch_stats().split_horizon_drops >= 1);
}

#[test]
fn macs_age_out_and_moves_between_sites_are_followed() {
    let mut sim = mesh(3, 5);
    let roamer = (0, 7);
    sim.send_frame(0, &frame(roamer, (1, 1), 100, 1));
    sim.run_for(Duration::from_millis(50));
    let p0 = sim.peer_id(1, 0);
    let p2 = sim.peer_id(1, 2);
    assert_eq!(
        sim.site(1).net.switch().lookup(sim.now, mac(0, 7)),
        Some(Port::Peer(p0))
    );
    // The VM migrates to site 2 and speaks from there: site 1 follows and reports it.
    let moved = frames::udp(
        (mac(0, 7), mac(1, 1)),
        (ip(0, 7), ip(1, 1)),
        (1, 2),
        b"after the move",
    );
    sim.send_frame(2, &moved);
    sim.run_for(Duration::from_millis(50));
    assert_eq!(
        sim.site(1).net.switch().lookup(sim.now, mac(0, 7)),
        Some(Port::Peer(p2))
    );
    let mut saw_move = false;
    while let Some(e) = sim.site_mut(1).net.poll_event() {
        if let Event::MacMoved { mac: m, from, to } = e {
            saw_move |= m == mac(0, 7) && from == Port::Peer(p0) && to == Port::Peer(p2);
        }
    }
    assert!(saw_move, "move reported");
    // Silent for longer than the 300 s ageing time: forgotten (keepalives teach nothing).
    sim.run_for(Duration::from_secs(301));
    assert_eq!(sim.site(1).net.switch().lookup(sim.now, mac(0, 7)), None);
    assert!(all_connected(&sim), "sessions were kept alive meanwhile");
}

/// B at site 1 answers A's ARP request; afterwards site 0 knows B's binding.
fn teach_binding(sim: &mut Sim) {
    let a = (mac(0, 1), ip(0, 1));
    let b = (mac(1, 1), ip(1, 1));
    sim.send_frame(0, &frames::arp_request(a, b.1));
    sim.run_for(Duration::from_millis(50));
    assert_eq!(sim.take_delivered(1).len(), 1);
    sim.send_frame(1, &frames::arp_reply(b, a));
    sim.run_for(Duration::from_millis(50));
    assert_eq!(sim.take_delivered(0).len(), 1);
    sim.take_delivered(2);
}

#[test]
fn arp_for_a_remote_host_is_answered_at_the_local_site() {
    let mut sim = mesh(3, 6);
    teach_binding(&mut sim);
    sim.recorded = Some(Vec::new());
    let c = (mac(0, 2), ip(0, 2));
    sim.send_frame(0, &frames::arp_request(c, ip(1, 1)));
    sim.run_for(Duration::from_millis(50));
    let answered = sim.take_delivered(0);
    assert_eq!(answered, vec![frames::arp_reply((mac(1, 1), ip(1, 1)), c)]);
    assert_eq!(
        data_datagrams_from(&sim, 0),
        0,
        "the request never crossed the WAN"
    );
    assert!(sim.take_delivered(1).is_empty());
}

#[test]
fn with_arp_suppression_off_requests_cross_the_wan() {
    let mut sim = Sim::new(3, 7, |_, c| c.switch.arp_suppression = false);
    assert!(sim.run_until(Duration::from_secs(5), |s| all_connected(s)));
    teach_binding(&mut sim);
    let c = (mac(0, 2), ip(0, 2));
    sim.send_frame(0, &frames::arp_request(c, ip(1, 1)));
    sim.run_for(Duration::from_millis(50));
    assert!(sim.take_delivered(0).is_empty());
    assert_eq!(sim.take_delivered(1).len(), 1);
    assert_eq!(sim.take_delivered(2).len(), 1);
}

#[test]
fn a_dhcp_exchange_crosses_sites_discover_offer_request_ack() {
    let mut sim = mesh(3, 8);
    let server = (mac(0, 254), Ipv4Addr::new(10, 0, 0, 254));
    let client = mac(2, 1);
    let offered = Ipv4Addr::new(10, 0, 2, 1);
    let xid = 0x1234_5678;
    let exchange = [
        (
            2,
            frames::dhcp(
                DHCP_DISCOVER,
                xid,
                client,
                (client, Ipv4Addr::UNSPECIFIED),
                Ipv4Addr::UNSPECIFIED,
            ),
            0,
            DHCP_DISCOVER,
        ),
        (
            0,
            frames::dhcp(DHCP_OFFER, xid, client, server, offered),
            2,
            DHCP_OFFER,
        ),
        (
            2,
            frames::dhcp(
                DHCP_REQUEST,
                xid,
                client,
                (client, Ipv4Addr::UNSPECIFIED),
                offered,
            ),
            0,
            DHCP_REQUEST,
        ),
        (
            0,
            frames::dhcp(DHCP_ACK, xid, client, server, offered),
            2,
            DHCP_ACK,
        ),
    ];
    for (from, msg, to, kind) in exchange {
        sim.send_frame(from, &msg);
        sim.run_for(Duration::from_millis(50));
        let got: Vec<_> = sim
            .take_delivered(to)
            .iter()
            .filter_map(|f| frames::dhcp_type(f))
            .collect();
        assert_eq!(got, vec![(kind, xid)], "site {to} gets {kind} once");
        // Broadcasts reach the third site too, never suppressed.
        let third = 3 - from - to;
        assert_eq!(sim.take_delivered(third).len(), 1);
    }
}

#[test]
fn a_site_local_address_is_served_by_each_site_and_never_crosses_the_wan() {
    let cache = SiteLocalAddr {
        ip: Ipv4Addr::new(10, 0, 255, 254),
        mac: MacAddr([0x02, 0, 0, 0, 0xff, 0xfe]),
    };
    let mut sim = Sim::new(3, 9, move |_, c| c.switch.site_local = vec![cache]);
    assert!(sim.run_until(Duration::from_secs(5), |s| all_connected(s)));
    sim.recorded = Some(Vec::new());
    for site in 0..3 {
        let client = (mac(site, 1), ip(site, 1));
        // The client asks for the cache; the site's own cache answers, then they talk.
        sim.send_frame(site, &frames::arp_request(client, cache.ip));
        sim.send_frame(site, &frames::arp_reply((cache.mac, cache.ip), client));
        let get = frames::udp(
            (client.0, cache.mac),
            (client.1, cache.ip),
            (40000, 3142),
            b"GET /x.deb",
        );
        sim.send_frame(site, &get);
        let reply = frames::udp(
            (cache.mac, client.0),
            (cache.ip, client.1),
            (3142, 40000),
            b"200 OK",
        );
        sim.send_frame(site, &reply);
    }
    sim.run_for(Duration::from_secs(1));
    for site in 0..3 {
        assert_eq!(
            data_datagrams_from(&sim, site),
            0,
            "site {site} sent cache traffic"
        );
        assert!(sim.take_delivered(site).is_empty());
        assert!(sim.site(site).net.switch_stats().site_local_kept >= 4);
    }
}

#[test]
fn full_size_frames_with_a_vlan_tag_cross_a_1500_byte_path_in_two_fragments() {
    let mut sim = mesh(2, 10);
    sim.recorded = Some(Vec::new());
    // 1518 bytes: 14 header + 4 (802.1Q) + 1500 payload.
    let mut big = Vec::with_capacity(1518);
    big.extend_from_slice(&mac(1, 1).0);
    big.extend_from_slice(&mac(0, 1).0);
    big.extend_from_slice(&[0x81, 0x00, 0x00, 0x0a, 0x08, 0x00]);
    big.extend((0..1500).map(|i| (i % 251) as u8));
    assert_eq!(big.len(), 1518);
    sim.send_frame(0, &big);
    sim.run_for(Duration::from_millis(50));
    assert_eq!(sim.take_delivered(1), vec![big.clone()]);
    assert_eq!(sim.site(0).net.stats().fragments_sent, 2);
    let largest = sim
        .recorded
        .as_ref()
        .unwrap()
        .iter()
        .map(|(_, _, d)| d.len())
        .max();
    assert!(
        largest.unwrap() <= 1500 - 28,
        "datagram of {largest:?} bytes"
    );
}

#[test]
fn fragments_survive_reordering_and_a_lost_fragment_loses_only_its_frame() {
    let mut sim = mesh(2, 11);
    *sim.link(0, 1) = LinkParams {
        jitter: Duration::from_millis(20),
        ..LinkParams::default()
    };
    let frames_sent: Vec<Vec<u8>> = (0..40).map(|i| frame((0, 1), (1, 1), 1514, i)).collect();
    for f in &frames_sent {
        sim.send_frame(0, f);
    }
    sim.run_for(Duration::from_millis(200));
    let mut got = sim.take_delivered(1);
    got.sort();
    let mut want = frames_sent.clone();
    want.sort();
    assert_eq!(got, want, "every frame whole despite reordering");

    // Now lose half the datagrams: no partial frame is ever delivered, and the
    // reassembly slots of the incomplete ones are reclaimed.
    sim.link(0, 1).loss = 0.5;
    for f in &frames_sent {
        sim.send_frame(0, f);
    }
    sim.run_for(Duration::from_secs(5));
    let got = sim.take_delivered(1);
    assert!(got.len() < frames_sent.len());
    assert!(
        got.iter().all(|f| frames_sent.contains(f)),
        "only whole frames"
    );
    let r = sim.site(1).net.reassembly();
    assert_eq!(r.in_progress(), 0);
    assert!(r.stats().timed_out > 0);
}

/// Sends a frame each way every `interval` for `total`; returns (sent, delivered) per
/// direction.
fn steady_traffic(sim: &mut Sim, interval: Duration, total: Duration) -> [(usize, usize); 2] {
    let mut counts = [(0, 0); 2];
    let steps = (total.as_millis() / interval.as_millis()) as u32;
    for i in 0..steps {
        let tag = (i % 250) as u8;
        sim.send_frame(0, &frame((0, 1), (1, 1), 600, tag));
        sim.send_frame(1, &frame((1, 1), (0, 1), 600, tag));
        counts[0].0 += 1;
        counts[1].0 += 1;
        sim.run_for(interval);
        counts[0].1 += sim.take_delivered(1).len();
        counts[1].1 += sim.take_delivered(0).len();
    }
    sim.run_for(Duration::from_millis(100));
    counts[0].1 += sim.take_delivered(1).len();
    counts[1].1 += sim.take_delivered(0).len();
    counts
}

#[test]
fn rekeying_by_time_under_steady_traffic_loses_nothing() {
    let mut sim = Sim::new(2, 12, |_, c| {
        c.timers.rekey_after_time = Duration::from_secs(10);
        c.timers.reject_after_time = Duration::from_secs(15);
    });
    assert!(sim.run_until(Duration::from_secs(5), |s| all_connected(s)));
    // Learn both MACs first so every frame is unicast.
    steady_traffic(
        &mut sim,
        Duration::from_millis(10),
        Duration::from_millis(100),
    );
    let before = sim.site(0).net.stats().sessions_established;
    let counts = steady_traffic(&mut sim, Duration::from_millis(10), Duration::from_secs(60));
    let rekeys = sim.site(0).net.stats().sessions_established - before;
    assert!(rekeys >= 4, "only {rekeys} rekeys in 60 s");
    assert_eq!(counts[0].0, counts[0].1, "site 0 -> 1 lost frames");
    assert_eq!(counts[1].0, counts[1].1, "site 1 -> 0 lost frames");
    assert_eq!(sim.site(0).net.stats().drops.replay, 0);
    assert_eq!(sim.site(1).net.stats().drops.replay, 0);
}

#[test]
fn rekeying_by_message_count_loses_nothing() {
    let mut sim = Sim::new(2, 13, |_, c| c.timers.rekey_after_messages = 300);
    assert!(sim.run_until(Duration::from_secs(5), |s| all_connected(s)));
    steady_traffic(
        &mut sim,
        Duration::from_millis(10),
        Duration::from_millis(100),
    );
    let before = sim.site(1).net.stats().sessions_established;
    let counts = steady_traffic(&mut sim, Duration::from_millis(5), Duration::from_secs(10));
    assert!(sim.site(1).net.stats().sessions_established - before >= 5);
    assert_eq!(counts[0].0, counts[0].1);
    assert_eq!(counts[1].0, counts[1].1);
}

#[test]
fn replayed_forged_truncated_and_garbled_datagrams_are_rejected() {
    let mut sim = mesh(2, 14);
    // Capture a data datagram on its way without delivering it.
    sim.link(0, 1).up = false;
    sim.recorded = Some(Vec::new());
    sim.send_frame(0, &frame((0, 1), (1, 1), 300, 1));
    sim.run_for(Duration::from_millis(50));
    let data = sim
        .recorded
        .take()
        .unwrap()
        .into_iter()
        .find(|(from, _, d)| *from == 0 && d[1] == 4)
        .map(|(_, _, d)| d)
        .expect("a data datagram");
    let from = Sim::default_addr(0);

    // Forgeries of a fresh message fail authentication, whatever byte they change.
    for at in [2usize, 8, 9, 15, 16, 40, data.len() - 1] {
        let mut forged = data.clone();
        forged[at] ^= 0x80;
        let result = sim.inject(1, from, &forged);
        assert!(
            matches!(
                result,
                Err(DatagramError::Auth | DatagramError::Malformed(_))
            ),
            "byte {at}: {result:?}"
        );
    }
    let mut wrong_index = data.clone();
    wrong_index[4] ^= 0x01;
    assert!(matches!(
        sim.inject(1, from, &wrong_index),
        Err(DatagramError::UnknownIndex(_))
    ));
    // The genuine one, which the forgeries did not spoil, is delivered once.
    assert_eq!(sim.inject(1, from, &data), Ok(()));
    assert_eq!(sim.take_delivered(1).len(), 1);
    assert_eq!(sim.inject(1, from, &data), Err(DatagramError::Replay));
    assert!(matches!(
        sim.inject(1, from, &data[..20]),
        Err(DatagramError::Malformed(_))
    ));
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for len in [0usize, 1, 2, 16, 31, 32, 33, 92, 148, 500, 1400] {
        let garbage: Vec<u8> = (0..len)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng as u8
            })
            .collect();
        assert!(
            sim.inject(1, from, &garbage).is_err(),
            "garbage of {len} accepted"
        );
    }
    assert!(sim.take_delivered(1).is_empty());
    let drops = sim.site(1).net.stats().drops;
    assert!(
        drops.replay >= 1 && drops.auth >= 5 && drops.malformed >= 1,
        "{drops:?}"
    );
}

#[test]
fn a_host_whose_key_is_not_configured_gets_no_session() {
    let mut sim = mesh(2, 15);
    let stranger_key = PrivateKey::from_bytes([0x42; 32]);
    let unix = Duration::from_secs(1_800_000_000);
    let datagram = initiation_on(&sim, NetworkId(1), stranger_key, unix, 7);
    assert_eq!(
        sim.inject(0, "198.51.100.9:4000".parse().unwrap(), &datagram),
        Err(DatagramError::UnknownPeer)
    );
    sim.run_for(Duration::from_millis(100));
    assert_eq!(sim.site(0).net.stats().drops.unknown_peer, 1);
}

#[test]
fn a_host_without_the_network_psk_never_gets_a_session() {
    let psk = PresharedKey::from_bytes([0x5a; 32]);
    let mut sim = Sim::new(2, 16, move |site, c| {
        if site == 0 {
            c.psk = Some(psk.clone());
        }
    });
    sim.run_for(Duration::from_secs(10));
    assert!(!all_connected(&sim));
    sim.send_frame(1, &frame((1, 1), (0, 1), 100, 1));
    sim.run_for(Duration::from_secs(2));
    assert!(sim.take_delivered(0).is_empty());
    // Site 1 could not open site 0's responses.
    assert!(sim.site(1).net.stats().drops.handshake_failed > 0);
}

#[test]
fn an_initiation_for_another_network_is_refused() {
    let mut sim = mesh(2, 17);
    let key1 = sim.site(1).key.clone();
    let datagram = initiation_on(
        &sim,
        NetworkId(2),
        key1,
        Duration::from_secs(1_800_000_000),
        8,
    );
    assert_eq!(
        sim.inject(0, Sim::default_addr(1), &datagram),
        Err(DatagramError::WrongNetwork(NetworkId(2)))
    );
}

#[test]
fn a_roaming_site_is_followed_by_authenticated_packets_only() {
    let mut sim = mesh(2, 18);
    let new_addr: SocketAddr = "203.0.113.50:40000".parse().unwrap();
    // A spoofed, unauthenticated datagram "from" elsewhere changes nothing.
    let _ = sim.inject(
        0,
        new_addr,
        &[1, 4, 0, 0, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0, 9, 9],
    );
    let p1 = sim.peer_id(0, 1);
    assert_eq!(
        sim.site(0).net.peer(p1, sim.now).unwrap().endpoint,
        Some(Sim::default_addr(1))
    );

    sim.move_site(1, new_addr);
    sim.send_frame(1, &frame((1, 1), (0, 1), 100, 1));
    sim.run_for(Duration::from_millis(50));
    assert_eq!(sim.take_delivered(0).len(), 1);
    assert_eq!(
        sim.site(0).net.peer(p1, sim.now).unwrap().endpoint,
        Some(new_addr)
    );
    // Replies now reach the site at its new address.
    sim.send_frame(0, &frame((0, 1), (1, 1), 100, 2));
    sim.run_for(Duration::from_millis(50));
    assert_eq!(sim.take_delivered(1).len(), 1);
}

/// Whether sites 0 and 1 have a session with each other (other peers aside).
fn sites_0_and_1_connected(sim: &Sim) -> bool {
    let has = |at: usize, of: usize| {
        let info = sim.site(at).net.peer(sim.peer_id(at, of), sim.now);
        info.is_some_and(|p| p.has_session)
    };
    has(0, 1) && has(1, 0)
}

/// A handshake initiation from `key` to site 0 of `sim`, as a fresh network sends it:
/// mac1 valid, timestamp taken from `unix` (the initiator's wall clock). Returns the
/// datagram and its sender index.
fn initiation_to_site0(sim: &Sim, key: PrivateKey, unix: Duration, seed: u8) -> (Vec<u8>, u32) {
    let datagram = initiation_on(sim, NetworkId(1), key, unix, seed);
    let Ok(Message::HandshakeInit(init)) = wire::parse(&datagram) else {
        panic!("not an initiation")
    };
    let sender = init.sender_index();
    (datagram, sender)
}

/// The first datagram a fresh network `id` with site 0 as its one peer sends.
fn initiation_on(sim: &Sim, id: NetworkId, key: PrivateKey, unix: Duration, seed: u8) -> Vec<u8> {
    let now = sim.now;
    let mut initiator = Network::new(NetworkConfig::new(id, key), now, unix, [seed; 32]).unwrap();
    initiator
        .add_peer(
            now,
            PeerConfig {
                public_key: sim.site(0).key.public_key(),
                endpoint: Some(Sim::default_addr(0)),
                name: None,
            },
        )
        .unwrap();
    let mut buf = vec![0u8; 1500];
    let t = initiator.poll_transmit(now, &mut buf).unwrap();
    buf[..t.len].to_vec()
}

/// The index a handshake response or cookie reply answers, if it is one.
fn answered_index(datagram: &[u8]) -> Option<u32> {
    match wire::parse(datagram) {
        Ok(Message::HandshakeResponse(r)) => Some(r.receiver_index()),
        Ok(Message::CookieReply(c)) => Some(c.receiver_index()),
        _ => None,
    }
}

#[test]
fn a_handshake_flood_is_bounded_and_real_peers_still_connect() {
    let mut sim = mesh(2, 19);
    // Valid-looking initiations (correct mac1) from 200 unknown keys.
    let mut floods = Vec::new();
    for i in 0..200u32 {
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(&i.to_le_bytes());
        key[31] = 0x77;
        let unix = Duration::from_secs(1_800_000_000);
        floods.push(initiation_to_site0(&sim, PrivateKey::from_bytes(key), unix, i as u8).0);
    }
    // Site 1 restarts in the middle of the flood and must reconnect.
    sim.restart_site(1);
    let before = sim.site(0).net.stats().initiations_processed;
    let start = sim.now;
    let mut sent = 0;
    for round in 0..50u32 {
        for (j, init) in floods.iter().enumerate() {
            let src = SocketAddr::from(([198, 18, (j % 250) as u8, round as u8], 1000 + j as u16));
            let _ = sim.inject(0, src, init);
            sent += 1;
        }
        sim.run_for(Duration::from_millis(100));
    }
    let elapsed = sim.now.duration_since(start).as_secs_f64();
    let processed = sim.site(0).net.stats().initiations_processed - before;
    let limits = vpn_core::Limits::default();
    // The main budget plus the cookie lane, each `rate * t + burst`.
    let bound = 2.0
        * (f64::from(limits.handshakes_per_second) * elapsed + f64::from(limits.handshake_burst));
    assert!(sent >= 10_000);
    assert!(
        (processed as f64) <= bound,
        "{processed} initiations processed, bound {bound}"
    );
    assert!(sim.site(0).net.stats().cookie_replies_sent > 0);
    assert!(
        all_connected(&sim),
        "the restarted site reconnected during the flood"
    );
}

/// A host that knows site 0's public key replays one valid-mac1 initiation from one
/// address at 20,000 a second, far beyond every budget, while three well-behaved
/// initiators at other addresses start a fresh handshake four times a second each and
/// site 1 restarts: the flood costs site 0 only one source's share of work and cookie
/// replies, and everyone else is answered.
#[test]
fn a_flood_from_one_address_does_not_starve_other_initiators() {
    let mut sim = mesh(2, 23);
    let unix = |sim: &Sim| Duration::from_secs(1_800_000_000) + sim.elapsed();
    let flooder = SocketAddr::from(([203, 0, 113, 66], 40000));
    let (flood, _) = initiation_to_site0(&sim, PrivateKey::from_bytes([0x66; 32]), unix(&sim), 1);
    sim.add_outside_host(flooder);
    // The honest initiators are peers of site 0 that contact it (no endpoint configured).
    let honest: Vec<(PrivateKey, SocketAddr)> = (0..3u8)
        .map(|i| {
            let key = PrivateKey::from_bytes([0x70 + i; 32]);
            (key, SocketAddr::from(([198, 51, 100, 10 + i], 51820)))
        })
        .collect();
    let now = sim.now;
    for (key, addr) in &honest {
        let peer = PeerConfig {
            public_key: key.public_key(),
            endpoint: None,
            name: None,
        };
        sim.site_mut(0).net.add_peer(now, peer).unwrap();
        sim.add_outside_host(*addr);
    }
    let processed_before = sim.site(0).net.stats().initiations_processed;
    let mut sent: Vec<Vec<u32>> = vec![Vec::new(); honest.len()];
    let mut answered: Vec<std::collections::HashSet<u32>> = vec![Default::default(); 3];
    let mut reconnected_after = None;
    let mut flood_sent = 0u64;
    let flood_ms = 10_000u32;
    for ms in 0..flood_ms {
        for _ in 0..20 {
            let _ = sim.inject(0, flooder, &flood);
            flood_sent += 1;
        }
        if ms % 250 == 100 {
            for (i, (key, addr)) in honest.iter().enumerate() {
                let seed = (ms / 250) as u8 ^ (i as u8) << 6;
                let (init, index) = initiation_to_site0(&sim, key.clone(), unix(&sim), seed);
                let _ = sim.inject(0, *addr, &init);
                sent[i].push(index);
            }
        }
        if ms == 3000 {
            sim.restart_site(1);
        }
        sim.run_for(Duration::from_millis(1));
        if ms > 3000 && reconnected_after.is_none() && sites_0_and_1_connected(&sim) {
            reconnected_after = Some(ms - 3000);
        }
        for (i, (_, addr)) in honest.iter().enumerate() {
            for (_, d) in sim.take_received(*addr) {
                answered[i].extend(answered_index(&d));
            }
        }
    }
    let secs = f64::from(flood_ms) / 1000.0;
    assert!(flood_sent >= 200_000);
    for i in 0..honest.len() {
        let got = sent[i].iter().filter(|x| answered[i].contains(x)).count();
        assert_eq!(sent[i].len(), 40);
        assert!(
            got * 10 >= sent[i].len() * 9,
            "initiator {i}: {got} of {} initiations answered",
            sent[i].len()
        );
    }
    let limits = vpn_core::Limits::default();
    let per_source = f64::from(limits.handshakes_per_source_per_second);
    // Work: the honest initiations, site 1's handshakes, and at most one source's share
    // (plus its burst) for the flood.
    let processed = sim.site(0).net.stats().initiations_processed - processed_before;
    let bound = 120.0 + 10.0 + per_source * (secs + 1.0);
    assert!(
        (processed as f64) <= bound,
        "{processed} initiations processed, bound {bound}"
    );
    let cookies_to_flooder = sim.take_received(flooder).len() as f64;
    let cookie_bound = f64::from(limits.cookie_replies_per_source_per_second) * (secs + 1.0);
    assert!(
        cookies_to_flooder <= cookie_bound,
        "{cookies_to_flooder} cookie replies to the flooder, bound {cookie_bound}"
    );
    let took = reconnected_after.expect("site 1 reconnected during the flood");
    assert!(took <= 1000, "site 1 took {took} ms to reconnect");
}

#[test]
fn garbage_initiations_cost_no_diffie_hellman() {
    let mut sim = mesh(2, 20);
    let before = sim.site(0).net.stats().initiations_processed;
    let mut init = vec![0u8; 148];
    init[0] = 1;
    init[1] = 1;
    init[4] = 1; // network 1
    for i in 0..1000u32 {
        init[20..24].copy_from_slice(&i.to_le_bytes());
        assert_eq!(
            sim.inject(0, Sim::default_addr(1), &init),
            Err(DatagramError::BadMac)
        );
    }
    assert_eq!(sim.site(0).net.stats().initiations_processed, before);
}

#[test]
fn traffic_resumes_after_an_outage_that_outlives_every_session() {
    let mut sim = mesh(2, 21);
    steady_traffic(
        &mut sim,
        Duration::from_millis(10),
        Duration::from_millis(100),
    );
    sim.link(0, 1).up = false;
    sim.link(1, 0).up = false;
    sim.run_for(Duration::from_secs(200));
    assert!(!all_connected(&sim), "sessions expired during the outage");
    sim.link(0, 1).up = true;
    sim.link(1, 0).up = true;
    let back = sim.now;
    // Traffic offered every 100 ms gets through again quickly.
    let resumed = sim.run_until(Duration::from_secs(5), |s| {
        s.send_frame(0, &frame((0, 1), (1, 1), 100, 9));
        s.run_for(Duration::from_millis(100));
        !s.take_delivered(1).is_empty()
    });
    assert!(resumed);
    let took = sim.now.duration_since(back);
    assert!(
        took <= Duration::from_millis(1500),
        "resumed after {took:?}"
    );
}

#[test]
fn a_short_outage_is_bridged_by_the_existing_session() {
    let mut sim = mesh(2, 22);
    steady_traffic(
        &mut sim,
        Duration::from_millis(10),
        Duration::from_millis(100),
    );
    sim.link(0, 1).up = false;
    sim.link(1, 0).up = false;
    sim.run_for(Duration::from_secs(30));
    sim.link(0, 1).up = true;
    sim.link(1, 0).up = true;
    sim.send_frame(0, &frame((0, 1), (1, 1), 100, 9));
    sim.run_for(Duration::from_millis(20));
    assert_eq!(sim.take_delivered(1).len(), 1, "delivered within one trip");
}

#[test]
fn a_restarted_site_reconnects_without_disturbing_the_others() {
    let mut sim = mesh(3, 23);
    let p2 = sim.peer_id(0, 2);
    let handshakes_0_2 = sim.site(0).net.peer(p2, sim.now).unwrap().stats.handshakes;
    sim.restart_site(1);
    assert!(sim.run_until(Duration::from_secs(3), |s| all_connected(s)));
    assert_eq!(
        sim.site(0).net.peer(p2, sim.now).unwrap().stats.handshakes,
        handshakes_0_2,
        "sites 0 and 2 did not renegotiate"
    );
    sim.send_frame(1, &frame((1, 1), (0, 1), 100, 1));
    sim.run_for(Duration::from_millis(50));
    assert_eq!(sim.take_delivered(0).len(), 1);
}

#[test]
fn a_lossy_duplicating_reordering_wan_still_connects_and_delivers_at_most_once() {
    let mut sim = Sim::new(3, 24, |_, _| {});
    sim.set_all_links(LinkParams {
        latency: Duration::from_millis(10),
        jitter: Duration::from_millis(15),
        loss: 0.2,
        duplicate: 0.1,
        up: true,
    });
    assert!(sim.run_until(Duration::from_secs(30), |s| all_connected(s)));
    let mut sent = 0;
    for i in 0..200u32 {
        sim.send_frame(
            0,
            &frame((0, 1), (1, 1), 200 + (i as usize % 1300), i as u8),
        );
        sent += 1;
        sim.run_for(Duration::from_millis(5));
    }
    sim.run_for(Duration::from_secs(1));
    let got = sim.take_delivered(1);
    let mut unique = got.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), got.len(), "a frame was delivered twice");
    assert!(
        got.len() > sent / 2 && got.len() < sent,
        "{} of {sent}",
        got.len()
    );
}

#[test]
fn idle_sessions_are_kept_alive_and_renewed() {
    let mut sim = mesh(2, 25);
    sim.run_for(Duration::from_secs(600));
    assert!(all_connected(&sim));
    // Persistent keepalives every 25 s, rekeys every 2 minutes, nothing more.
    let s = sim.site(0).net.stats();
    assert!(
        s.keepalives_sent >= 10 && s.keepalives_sent <= 40,
        "{}",
        s.keepalives_sent
    );
    let established = s.sessions_established;
    assert!(
        (4..=12).contains(&established),
        "{established} sessions in 10 min"
    );
}

#[test]
fn session_indices_carry_the_network_tag() {
    let mut sim = Sim::new(2, 26, |_, c| c.index_tag = 0xabc);
    sim.recorded = Some(Vec::new());
    assert!(sim.run_until(Duration::from_secs(5), |s| all_connected(s)));
    sim.send_frame(0, &frame((0, 1), (1, 1), 100, 1));
    sim.run_for(Duration::from_millis(50));
    for (_, _, d) in sim.recorded.as_ref().unwrap() {
        match vpn_core::wire::route(d).unwrap() {
            vpn_core::wire::Route::Index(i) => assert_eq!(i >> 20, 0xabc, "{i:#x}"),
            vpn_core::wire::Route::Network(n) => assert_eq!(n, NetworkId(1)),
        }
    }
}

#[test]
fn crossing_initiations_settle_without_retries() {
    // Both sites start at once, so their first initiations cross on the wire.
    let mut sim = Sim::new(2, 27, |_, _| {});
    sim.run_for(Duration::from_secs(5));
    assert!(all_connected(&sim));
    for site in 0..2 {
        assert_eq!(
            sim.site(site).net.stats().handshakes_initiated,
            1,
            "site {site} retried"
        );
    }
    sim.send_frame(0, &frame((0, 1), (1, 1), 100, 1));
    sim.send_frame(1, &frame((1, 1), (0, 1), 100, 2));
    sim.run_for(Duration::from_millis(50));
    assert_eq!(sim.take_delivered(1).len(), 1);
    assert_eq!(sim.take_delivered(0).len(), 1);
}

#[test]
fn a_lost_first_initiation_is_not_retried_once_the_peers_own_succeeded() {
    // Whichever site's initiation is lost (one site "starts later"), the other's
    // handshake connects them and nobody makes a second session.
    for lost in [(0, 1), (1, 0)] {
        let mut sim = Sim::new(2, 28, |_, _| {});
        // The first initiation of one site is lost (its peer was not up yet).
        assert_eq!(sim.lose_in_flight(lost.0), 1);
        sim.run_for(Duration::from_secs(10));
        assert!(all_connected(&sim));
        for site in 0..2 {
            let s = sim.site(site).net.stats();
            assert!(s.handshakes_initiated <= 2, "site {site}: {s:?}");
        }
        let sessions: u64 = (0..2)
            .map(|site| {
                sim.site(site)
                    .net
                    .peers(sim.now)
                    .map(|p| p.stats.handshakes)
                    .sum::<u64>()
            })
            .sum();
        assert_eq!(sessions, 2, "one session, counted at both ends ({lost:?})");
    }
}
