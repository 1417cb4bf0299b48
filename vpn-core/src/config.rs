//! Everything a [`crate::Network`] is configured with. Parsing configuration files is the
//! daemon's business; this is the validated, typed result.

use std::time::Duration;

use crate::key::{PresharedKey, PrivateKey};
use crate::session::Cipher;
use crate::switch::SwitchConfig;
use crate::types::NetworkId;

/// The smallest WAN path MTU accepted: IPv4's minimum datagram size.
pub const MIN_PATH_MTU: u16 = 576;
/// Bits of a session index that a daemon may use to tell its networks apart.
pub const INDEX_TAG_BITS: u32 = 12;

#[derive(Clone, Debug)]
pub struct NetworkConfig {
    pub id: NetworkId,
    pub private_key: PrivateKey,
    pub psk: Option<PresharedKey>,
    pub cipher: Cipher,
    /// IP MTU of the WAN path (1500 by default). Data messages never exceed it; larger
    /// frames are fragmented by the overlay itself.
    pub path_mtu: u16,
    /// The top [`INDEX_TAG_BITS`] bits of every session index this network allocates, so
    /// that a daemon with several networks on one socket can route data messages to the
    /// right one by index alone. Each network of a daemon needs a different tag.
    pub index_tag: u16,
    pub switch: SwitchConfig,
    pub timers: Timers,
    pub limits: Limits,
}

impl NetworkConfig {
    pub fn new(id: NetworkId, private_key: PrivateKey) -> NetworkConfig {
        NetworkConfig {
            id,
            private_key,
            psk: None,
            cipher: Cipher::default(),
            path_mtu: 1500,
            index_tag: 0,
            switch: SwitchConfig::default(),
            timers: Timers::default(),
            limits: Limits::default(),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.path_mtu < MIN_PATH_MTU {
            return Err(ConfigError::PathMtu(self.path_mtu));
        }
        if u32::from(self.index_tag) >= 1 << INDEX_TAG_BITS {
            return Err(ConfigError::IndexTag(self.index_tag));
        }
        let t = &self.timers;
        if t.rekey_after_time >= t.reject_after_time {
            return Err(ConfigError::Timers(
                "rekey_after_time must be shorter than reject_after_time",
            ));
        }
        if t.handshake_retry_initial.is_zero() || t.handshake_retry_max < t.handshake_retry_initial
        {
            return Err(ConfigError::Timers(
                "handshake retry: initial must be > 0 and <= max",
            ));
        }
        if self.limits.transmit_frames == 0 || self.limits.queued_frames_per_peer == 0 {
            return Err(ConfigError::Limits("queues must hold at least one frame"));
        }
        if self.limits.sources_tracked < 2 {
            return Err(ConfigError::Limits("sources_tracked must be at least 2"));
        }
        if self.switch.mac_capacity == 0 {
            return Err(ConfigError::Limits("mac_capacity must be at least 1"));
        }
        Ok(())
    }
}

/// Session timing. The defaults are WireGuard's, except that handshakes are retried with
/// exponential backoff (1 s doubling to 8 s, plus up to a third of random jitter) and
/// keep being retried while the peer has an endpoint: sites of one overlay are meant to be
/// connected all the time.
#[derive(Clone, Debug)]
pub struct Timers {
    /// The initiator of a session starts a new handshake after this (120 s).
    pub rekey_after_time: Duration,
    /// A session is never used after this (180 s).
    pub reject_after_time: Duration,
    /// A new handshake is started after sending this many messages on one session.
    pub rekey_after_messages: u64,
    /// Send a keepalive when nothing else was sent for this long (25 s); `None` disables
    /// persistent keepalives.
    pub persistent_keepalive: Option<Duration>,
    /// After receiving data, answer with a keepalive if nothing was sent back within this
    /// (10 s), so the other side knows its packets arrive.
    pub passive_keepalive: Duration,
    /// After sending data, start a new handshake if nothing came back within this (15 s).
    pub dead_peer_timeout: Duration,
    pub handshake_retry_initial: Duration,
    pub handshake_retry_max: Duration,
    /// A handshake triggered by outgoing data is started at most this often (1 s).
    pub handshake_min_interval: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            rekey_after_time: Duration::from_secs(120),
            reject_after_time: Duration::from_secs(180),
            rekey_after_messages: 1 << 60,
            persistent_keepalive: Some(Duration::from_secs(25)),
            passive_keepalive: Duration::from_secs(10),
            dead_peer_timeout: Duration::from_secs(15),
            handshake_retry_initial: Duration::from_secs(1),
            handshake_retry_max: Duration::from_secs(8),
            handshake_min_interval: Duration::from_secs(1),
        }
    }
}

/// Bounds on work and memory.
///
/// Handshake initiations are the one input that costs real work (Diffie-Hellman) before
/// the sender is authenticated, so they are budgeted twice: per source (an IPv4 address,
/// or an IPv6 /64) and for the whole network. An initiation whose mac1 verifies is
/// processed when its source has a token of `handshakes_per_source_per_second` and the
/// network one of `handshakes_per_second`; so one source never spends more than its share
/// of the network's budget, however fast it sends. Otherwise (its source or the network
/// is over budget) only an initiation carrying a valid cookie (mac2, proving its sender
/// receives at its address) is processed, within a second per-source allowance of the
/// same rate and a second network budget of `handshakes_per_second`; one without is
/// answered with a cookie reply, within `cookie_replies_per_source_per_second` for its
/// source and `cookie_replies_per_second` overall, or dropped. Checking a cookie spends
/// a token of the proven allowance, and a source with nothing left that it could use is
/// refused before its mac1 is even checked. A flood from one address thus costs a table
/// lookup per datagram and one source's share of work, and cannot starve anyone else's
/// handshakes; a flood from many spoofed addresses costs at most two HMACs per
/// initiation beyond the network budget.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Handshake initiations processed per second (Diffie-Hellman work) by the network
    /// as a whole, and the burst. Initiations proven by a cookie have a second budget of
    /// the same size.
    pub handshakes_per_second: u32,
    pub handshake_burst: u32,
    /// Initiations processed per second for one source (also its burst); initiations
    /// proven by a cookie have a second allowance of the same rate.
    pub handshakes_per_source_per_second: u32,
    /// Cookie replies sent per second by the network as a whole (also the burst).
    pub cookie_replies_per_second: u32,
    /// Cookie replies sent per second to one source (also its burst).
    pub cookie_replies_per_source_per_second: u32,
    /// Sources whose spent allowances are remembered; older ones are forgotten first.
    pub sources_tracked: usize,
    /// Frames held for transmission (sealed as the driver polls), across all peers.
    pub transmit_frames: usize,
    /// Frames held per peer while its session is being established.
    pub queued_frames_per_peer: usize,
    /// Frames reassembled at once, and how long a frame may take to complete.
    pub reassembly_slots: usize,
    pub reassembly_timeout: Duration,
    /// Events kept for the driver to poll before the oldest are dropped.
    pub events: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshakes_per_second: 100,
            handshake_burst: 50,
            handshakes_per_source_per_second: 5,
            cookie_replies_per_second: 1000,
            cookie_replies_per_source_per_second: 5,
            sources_tracked: 4096,
            transmit_frames: 1024,
            queued_frames_per_peer: 64,
            reassembly_slots: 64,
            reassembly_timeout: Duration::from_secs(2),
            events: 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("path_mtu {0} is below the minimum {MIN_PATH_MTU}")]
    PathMtu(u16),
    #[error("index_tag {0} does not fit in {INDEX_TAG_BITS} bits")]
    IndexTag(u16),
    #[error("timers: {0}")]
    Timers(&'static str),
    #[error("limits: {0}")]
    Limits(&'static str),
}
