//! Hand-made handshake traffic against a real `vpnd`: initiations built with `vpn-core`
//! as a fresh peer sends them, a flooder that replays one initiation as fast as it can,
//! and a well-behaved initiator that counts how many of its initiations are answered.
//! Every loop here is bounded in count and time, and sends only to the address given
//! (a test's own namespace).

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use vpn_core::wire::{self, Message};
use vpn_core::{Network, NetworkConfig, NetworkId, PeerConfig, PrivateKey, PublicKey};

use crate::NetNs;

/// A handshake initiation from `key` to the daemon with public key `target` at
/// `endpoint`, on network `network`, as a freshly started peer sends it (mac1 valid,
/// timestamp from the wall clock now). Returns the datagram and its sender index.
pub fn initiation(
    key: &PrivateKey,
    network: u32,
    target: PublicKey,
    endpoint: SocketAddr,
    seed: u64,
) -> (Vec<u8>, u32) {
    let now = Instant::now();
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    let mut rng_seed = [0u8; 32];
    rng_seed[..8].copy_from_slice(&seed.to_le_bytes());
    let config = NetworkConfig::new(NetworkId(network), key.clone());
    let mut net = Network::new(config, now, unix, rng_seed).expect("valid config");
    let peer = PeerConfig {
        public_key: target,
        endpoint: Some(endpoint),
        name: None,
    };
    net.add_peer(now, peer).expect("a peer");
    let mut buf = vec![0u8; net.max_datagram_len()];
    let t = net.poll_transmit(now, &mut buf).expect("an initiation");
    let Ok(Message::HandshakeInit(init)) = wire::parse(&buf[..t.len]) else {
        panic!("the first datagram of a new peer is not an initiation")
    };
    let sender = init.sender_index();
    (buf[..t.len].to_vec(), sender)
}

/// Sends `datagram` to `to` from namespace `ns` as fast as one thread can, until `stop`
/// is set or `limit` passes. Returns how many were sent and for how long.
///
/// The thread runs at the lowest CPU priority (nice 19): a real flooder is another
/// machine and takes none of its target's CPU, while here both share this one's cores.
/// At nice 19 the flood still goes as fast as the CPU the target leaves it allows.
pub fn flood(
    ns: &NetNs,
    to: SocketAddr,
    datagram: &[u8],
    stop: &AtomicBool,
    limit: Duration,
) -> (u64, Duration) {
    ns.in_ns(|| {
        // SAFETY: setpriority on this thread's own id; no memory is involved.
        unsafe {
            libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19);
        }
        let sock = UdpSocket::bind("0.0.0.0:0").expect("bind the flooder's socket");
        sock.connect(to).expect("connect the flooder's socket");
        let start = Instant::now();
        let mut sent = 0u64;
        while !stop.load(Ordering::Relaxed) && start.elapsed() < limit {
            for _ in 0..256 {
                if sock.send(datagram).is_ok() {
                    sent += 1;
                }
            }
        }
        (sent, start.elapsed())
    })
}

/// What [`initiate_repeatedly`] saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answered {
    pub sent: usize,
    /// Initiations answered by a handshake response.
    pub responses: usize,
    /// Initiations answered by a cookie reply.
    pub cookie_replies: usize,
}

impl Answered {
    pub fn answered(&self) -> usize {
        self.responses + self.cookie_replies
    }
}

/// From namespace `ns`, sends `count` fresh initiations from `key` to the daemon
/// `target` at `to`, one every `interval`, and counts those answered (by a response or a
/// cookie reply naming their sender index) before the next one is due.
pub fn initiate_repeatedly(
    ns: &NetNs,
    key: &PrivateKey,
    network: u32,
    target: PublicKey,
    to: SocketAddr,
    count: usize,
    interval: Duration,
) -> Answered {
    ns.in_ns(|| {
        let sock = UdpSocket::bind("0.0.0.0:0").expect("bind the initiator's socket");
        let mut seen = Answered {
            sent: 0,
            responses: 0,
            cookie_replies: 0,
        };
        let mut buf = [0u8; 2048];
        for i in 0..count {
            let due = Instant::now() + interval;
            let (init, index) = initiation(key, network, target, to, i as u64 + 1);
            sock.send_to(&init, to).expect("send an initiation");
            seen.sent += 1;
            loop {
                let left = due.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                sock.set_read_timeout(Some(left)).expect("timeout");
                let Ok((len, _)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                match wire::parse(&buf[..len]) {
                    Ok(Message::HandshakeResponse(r)) if r.receiver_index() == index => {
                        seen.responses += 1;
                    }
                    Ok(Message::CookieReply(c)) if c.receiver_index() == index => {
                        seen.cookie_replies += 1;
                    }
                    _ => continue,
                }
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                break;
            }
        }
        seen
    })
}
