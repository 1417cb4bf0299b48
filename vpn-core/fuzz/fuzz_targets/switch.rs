//! `Switch::forward` with any frames on any ports, interleaved with time passing, sweeps
//! and removed peers. Besides not panicking, every verdict keeps the switch's promises:
//! split horizon, no hairpin to the local port, unicast only to where the MAC was
//! learned, site-local addresses kept at home, bounded tables.
#![no_main]

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use vpn_core::switch::{ARP_REPLY_LEN, DropReason, Forward, SiteLocalAddr, Switch, SwitchConfig};
use vpn_core::{MacAddr, PeerId, Port};

#[derive(Arbitrary, Debug)]
struct Input {
    arp_suppression: bool,
    mac_capacity: u8,
    ageing_s: u8,
    binding_ttl_s: u8,
    site_local: bool,
    steps: Vec<Step>,
}

#[derive(Arbitrary, Debug)]
enum Step {
    Frame {
        advance_ms: u16,
        /// 0 is the local port, anything else one of three peers.
        port: u8,
        frame: FrameSpec,
    },
    Expire {
        advance_s: u8,
    },
    ForgetPeer(u8),
}

#[derive(Arbitrary, Debug)]
enum FrameSpec {
    /// Any bytes at all.
    Raw(Vec<u8>),
    /// An Ethernet header from a small set of addresses, then any bytes.
    Ethernet {
        dst: u8,
        src: u8,
        ethertype: u16,
        rest: Vec<u8>,
    },
    /// An IPv4 ARP packet over Ethernet, from a small set of addresses.
    Arp {
        eth_dst: u8,
        eth_src: u8,
        oper: u8,
        sender_mac: u8,
        sender_ip: u8,
        target_ip: u8,
        /// Overwrites one byte of the packet, to reach the checks of the header fields.
        tweak: Option<(u8, u8)>,
    },
}

const SITE_LOCAL_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0xca, 0xce]);
const SITE_LOCAL_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 255, 254);

fn mac(n: u8) -> MacAddr {
    match n % 12 {
        0 => MacAddr::BROADCAST,
        1 => MacAddr([0x01, 0x00, 0x5e, 0, 0, 0xfb]),
        2 => MacAddr::ZERO,
        3 => SITE_LOCAL_MAC,
        n => MacAddr([0x52, 0x54, 0, 0, 0, n]),
    }
}

fn ip(n: u8) -> Ipv4Addr {
    match n % 8 {
        0 => Ipv4Addr::UNSPECIFIED,
        1 => Ipv4Addr::BROADCAST,
        2 => SITE_LOCAL_IP,
        n => Ipv4Addr::new(10, 0, 0, n),
    }
}

fn build(spec: FrameSpec) -> Vec<u8> {
    match spec {
        FrameSpec::Raw(bytes) => bytes,
        FrameSpec::Ethernet {
            dst,
            src,
            ethertype,
            rest,
        } => {
            let mut f = Vec::with_capacity(14 + rest.len());
            f.extend_from_slice(&mac(dst).0);
            f.extend_from_slice(&mac(src).0);
            f.extend_from_slice(&ethertype.to_be_bytes());
            f.extend_from_slice(&rest);
            f
        }
        FrameSpec::Arp {
            eth_dst,
            eth_src,
            oper,
            sender_mac,
            sender_ip,
            target_ip,
            tweak,
        } => {
            let mut f = Vec::with_capacity(60);
            f.extend_from_slice(&mac(eth_dst).0);
            f.extend_from_slice(&mac(eth_src).0);
            f.extend_from_slice(&0x0806u16.to_be_bytes());
            f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, oper % 4]);
            f.extend_from_slice(&mac(sender_mac).0);
            f.extend_from_slice(&ip(sender_ip).octets());
            f.extend_from_slice(&[0; 6]);
            f.extend_from_slice(&ip(target_ip).octets());
            if let Some((at, value)) = tweak {
                let at = usize::from(at) % f.len();
                f[at] = value;
            }
            f
        }
    }
}

fuzz_target!(|input: Input| {
    let mac_capacity = usize::from(input.mac_capacity % 16) + 1;
    let config = SwitchConfig {
        mac_ageing: Duration::from_secs(u64::from(input.ageing_s % 64) + 1),
        mac_capacity,
        arp_suppression: input.arp_suppression,
        arp_binding_ttl: Duration::from_secs(u64::from(input.binding_ttl_s % 64) + 1),
        arp_capacity: 8,
        site_local: if input.site_local {
            vec![SiteLocalAddr {
                ip: SITE_LOCAL_IP,
                mac: SITE_LOCAL_MAC,
            }]
        } else {
            Vec::new()
        },
    };
    let mut switch = Switch::new(config, [1, 2, 3, 4]);
    let mut now = Instant::now();
    for step in input.steps {
        match step {
            Step::Frame {
                advance_ms,
                port,
                frame,
            } => {
                now += Duration::from_millis(u64::from(advance_ms));
                let ingress = match port % 4 {
                    0 => Port::Local,
                    p => Port::Peer(PeerId(u32::from(p))),
                };
                let frame = build(frame);
                let verdict = switch.forward(now, ingress, &frame);
                check(&switch, now, ingress, &frame, verdict, input.site_local);
            }
            Step::Expire { advance_s } => {
                now += Duration::from_secs(u64::from(advance_s));
                switch.expire(now);
            }
            Step::ForgetPeer(p) => {
                let peer = PeerId(u32::from(p % 4));
                switch.forget_peer(peer);
                assert!(switch.mac_table().all(|e| e.port != Port::Peer(peer)));
            }
        }
        assert!(switch.len() <= mac_capacity);
        while switch.poll_event().is_some() {}
    }
});

fn check(
    switch: &Switch,
    now: Instant,
    ingress: Port,
    frame: &[u8],
    verdict: Forward,
    site_local: bool,
) {
    if frame.len() < 14 {
        assert_eq!(verdict, Forward::Drop(DropReason::Runt));
        return;
    }
    let dst = MacAddr::from_slice(&frame[0..6]);
    let src = MacAddr::from_slice(&frame[6..12]);
    if site_local && (src == SITE_LOCAL_MAC || dst == SITE_LOCAL_MAC) && !src.is_multicast() {
        assert!(matches!(verdict, Forward::Drop(_)), "{verdict:?}");
    }
    match (ingress, verdict) {
        // Split horizon: what came from a peer goes to the local port or nowhere.
        (Port::Peer(_), Forward::Peer(_) | Forward::FloodPeers | Forward::ArpReply(_)) => {
            panic!("frame from a peer forwarded as {verdict:?}")
        }
        (Port::Local, Forward::Local) => panic!("frame from the local port sent back to it"),
        (Port::Local, Forward::Peer(p)) => {
            assert!(!dst.is_multicast());
            assert_eq!(switch.lookup(now, dst), Some(Port::Peer(p)));
        }
        (Port::Local, Forward::ArpReply(reply)) => {
            assert_eq!(reply.len(), ARP_REPLY_LEN);
            assert_eq!(reply[0..6], src.0, "the reply goes to the requester");
            assert!(dst.is_broadcast());
        }
        _ => {}
    }
}
