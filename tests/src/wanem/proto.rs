//! The WAN emulator's vocabulary: link parameters, counters and the control protocol.
//!
//! The control protocol is newline-delimited JSON over a Unix stream socket: one request
//! object per line, one response object per line, any number of requests per connection.
//! `docs/wanem.md` documents it for people driving `wanem` by hand; this module is the one
//! definition both the `wanem` binary and the [`WanLink`](super::WanLink) client use.
//! Nothing here does I/O.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One direction of an emulated link. The emulator forwards between two interfaces, `a`
/// and `b` (in that order on its command line); in the [`Topology`](crate::Topology) `a`
/// faces the site and `b` the WAN, so `AToB` is the site's upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    AToB,
    BToA,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::AToB, Direction::BToA];

    pub fn index(self) -> usize {
        match self {
            Direction::AToB => 0,
            Direction::BToA => 1,
        }
    }
}

/// Which directions a control request applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Dirs {
    AToB,
    BToA,
    #[default]
    Both,
}

impl Dirs {
    pub fn contains(self, d: Direction) -> bool {
        matches!(
            (self, d),
            (Dirs::Both, _) | (Dirs::AToB, Direction::AToB) | (Dirs::BToA, Direction::BToA)
        )
    }
}

impl From<Direction> for Dirs {
    fn from(d: Direction) -> Dirs {
        match d {
            Direction::AToB => Dirs::AToB,
            Direction::BToA => Dirs::BToA,
        }
    }
}

/// The impairments of one direction. `Default` is a perfect link: no delay, no loss, no
/// rate limit. Durations travel as integer microseconds (`delay_us`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinkParams {
    /// One-way propagation delay added to every frame.
    #[serde(rename = "delay_us", with = "micros")]
    pub delay: Duration,
    /// Each frame's delay is drawn uniformly from `delay ± jitter` (never below zero).
    #[serde(rename = "jitter_us", with = "micros")]
    pub jitter: Duration,
    /// Let jitter reorder frames. Off (the default), a frame never leaves before the one
    /// received before it, so jitter bunches frames rather than reordering them.
    pub jitter_reorder: bool,
    /// Probability in [0, 1] that a frame is dropped.
    pub loss: f64,
    /// Probability in [0, 1] that a frame is sent twice.
    pub duplicate: f64,
    /// Probability in [0, 1] that a frame is held back by `reorder_delay`, letting the
    /// frames behind it overtake it.
    pub reorder: f64,
    /// The extra hold-back of a reordered frame.
    #[serde(rename = "reorder_delay_us", with = "micros")]
    pub reorder_delay: Duration,
    /// Bottleneck rate in bits per second of Ethernet frames (header included, no
    /// preamble/FCS); 0 means unlimited.
    pub rate_bps: u64,
    /// Token bucket depth in bytes; 0 picks two full-size frames.
    pub burst_bytes: u64,
    /// Bottleneck queue limit in bytes (tail drop beyond it); 0 picks 100 ms at the rate,
    /// at least 32 full-size frames.
    pub queue_bytes: u64,
    /// Drop everything, including frames already in flight when they come due.
    pub outage: bool,
}

impl Default for LinkParams {
    fn default() -> Self {
        LinkParams {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            jitter_reorder: false,
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_delay: Duration::from_millis(2),
            rate_bps: 0,
            burst_bytes: 0,
            queue_bytes: 0,
            outage: false,
        }
    }
}

impl LinkParams {
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
    pub fn jitter(mut self, d: Duration) -> Self {
        self.jitter = d;
        self
    }
    pub fn loss(mut self, p: f64) -> Self {
        self.loss = p;
        self
    }
    pub fn duplicate(mut self, p: f64) -> Self {
        self.duplicate = p;
        self
    }
    pub fn reorder(mut self, p: f64, hold_back: Duration) -> Self {
        self.reorder = p;
        self.reorder_delay = hold_back;
        self
    }
    pub fn rate_bps(mut self, bps: u64) -> Self {
        self.rate_bps = bps;
        self
    }
    pub fn queue_bytes(mut self, bytes: u64) -> Self {
        self.queue_bytes = bytes;
        self
    }

    /// Checks ranges; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        for (name, p) in [
            ("loss", self.loss),
            ("duplicate", self.duplicate),
            ("reorder", self.reorder),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("{name} must be a probability in [0, 1], got {p}"));
            }
        }
        if self.delay > MAX_DELAY || self.jitter > MAX_DELAY || self.reorder_delay > MAX_DELAY {
            return Err(format!(
                "delay_us, jitter_us and reorder_delay_us must be at most {} us",
                MAX_DELAY.as_micros()
            ));
        }
        Ok(())
    }
}

/// Longest delay the emulator accepts (it keeps delayed frames in memory).
pub const MAX_DELAY: Duration = Duration::from_secs(10);

/// Counters of one direction. At rest (nothing in flight, `queued == 0`):
/// `rx_frames + duplicated == tx_frames + dropped()`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DirStats {
    /// Frames read from the ingress interface (before any impairment).
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// Frames written to the egress interface (duplicates included).
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Of those, UDP datagrams over IPv4 or IPv6 (an overlay's tunnel traffic, where the
    /// rest is TCP), so a benchmark can tell them apart.
    pub tx_udp_frames: u64,
    pub tx_udp_bytes: u64,
    pub dropped_loss: u64,
    /// Tail drops at the rate limiter's queue, or the in-flight limit.
    pub dropped_queue: u64,
    pub dropped_outage: u64,
    /// Frames longer than the egress MTU allows (never truncated, never forwarded).
    pub dropped_oversize: u64,
    /// Frames the kernel refused to send.
    pub dropped_send_error: u64,
    /// Extra copies made by duplication.
    pub duplicated: u64,
    /// Frames held back by the reorder impairment.
    pub reordered: u64,
    /// Frames that arrived with a partial (offloaded) checksum, completed by the emulator.
    pub csum_completed: u64,
    /// GSO super-frames (sender offloads left on), forwarded whole.
    pub gso_frames: u64,
    /// Frames the kernel dropped before the emulator could read them (socket buffer full).
    pub kernel_drops: u64,
    /// Frames in flight inside the emulator right now.
    pub queued: u64,
}

impl DirStats {
    pub fn dropped(&self) -> u64 {
        self.dropped_loss
            + self.dropped_queue
            + self.dropped_outage
            + self.dropped_oversize
            + self.dropped_send_error
    }

    /// Component-wise sum, for aggregating several links.
    pub fn add(&mut self, o: &DirStats) {
        self.rx_frames += o.rx_frames;
        self.rx_bytes += o.rx_bytes;
        self.tx_frames += o.tx_frames;
        self.tx_bytes += o.tx_bytes;
        self.tx_udp_frames += o.tx_udp_frames;
        self.tx_udp_bytes += o.tx_udp_bytes;
        self.dropped_loss += o.dropped_loss;
        self.dropped_queue += o.dropped_queue;
        self.dropped_outage += o.dropped_outage;
        self.dropped_oversize += o.dropped_oversize;
        self.dropped_send_error += o.dropped_send_error;
        self.duplicated += o.duplicated;
        self.reordered += o.reordered;
        self.csum_completed += o.csum_completed;
        self.gso_frames += o.gso_frames;
        self.kernel_drops += o.kernel_drops;
        self.queued += o.queued;
    }
}

/// Counters of both directions of one link.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStats {
    pub a_to_b: DirStats,
    pub b_to_a: DirStats,
}

impl LinkStats {
    pub fn dir(&self, d: Direction) -> &DirStats {
        match d {
            Direction::AToB => &self.a_to_b,
            Direction::BToA => &self.b_to_a,
        }
    }
    pub fn dir_mut(&mut self, d: Direction) -> &mut DirStats {
        match d {
            Direction::AToB => &mut self.a_to_b,
            Direction::BToA => &mut self.b_to_a,
        }
    }
    /// Both directions summed.
    pub fn total(&self) -> DirStats {
        let mut t = self.a_to_b;
        t.add(&self.b_to_a);
        t
    }
}

/// Parameters of both directions of one link.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LinkConfig {
    pub a_to_b: LinkParams,
    pub b_to_a: LinkParams,
}

impl LinkConfig {
    pub fn dir(&self, d: Direction) -> &LinkParams {
        match d {
            Direction::AToB => &self.a_to_b,
            Direction::BToA => &self.b_to_a,
        }
    }
}

/// A control request: one JSON object per line, `{"cmd": "...", ...}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Current parameters of both directions.
    Get,
    /// Change the named fields of `params` (a partial [`LinkParams`] object) on `dir`.
    Set {
        #[serde(default)]
        dir: Dirs,
        params: serde_json::Map<String, serde_json::Value>,
    },
    /// Shorthand for setting `outage` on `dir`.
    Outage {
        #[serde(default)]
        dir: Dirs,
        on: bool,
    },
    /// Counters of both directions.
    Stats,
    /// Zero all counters (`queued` excepted: it is a level, not a count).
    Reset,
    /// Restart both directions' random generators from `seed`, as at start-up.
    Reseed { seed: u64 },
}

/// The answer to one [`Request`]: `ok` and whichever of the other fields applies.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<LinkConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<LinkStats>,
}

impl Response {
    pub fn error(msg: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: Some(msg.into()),
            ..Response::default()
        }
    }
}

/// Applies a partial JSON object to `params`: named fields change, others stay.
/// Unknown field names and out-of-range values are errors that name the field.
pub fn apply_partial(
    params: &LinkParams,
    partial: &serde_json::Map<String, serde_json::Value>,
) -> Result<LinkParams, String> {
    let mut merged = match serde_json::to_value(params) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => unreachable!("LinkParams serializes to an object"),
    };
    for (k, v) in partial {
        if !merged.contains_key(k) {
            let known: Vec<&str> = merged.keys().map(String::as_str).collect();
            return Err(format!(
                "unknown parameter {k:?} (known: {})",
                known.join(", ")
            ));
        }
        merged.insert(k.clone(), v.clone());
    }
    let p: LinkParams = serde_json::from_value(serde_json::Value::Object(merged))
        .map_err(|e| format!("bad parameter value: {e}"))?;
    p.validate()?;
    Ok(p)
}

/// Serde adapter: a `Duration` as integer microseconds.
mod micros {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_micros().try_into().unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_micros(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_set_changes_only_named_fields() {
        let p = LinkParams::default().delay(Duration::from_millis(5));
        let partial = serde_json::json!({"loss": 0.25})
            .as_object()
            .unwrap()
            .clone();
        let q = apply_partial(&p, &partial).unwrap();
        assert_eq!(q.delay, Duration::from_millis(5));
        assert_eq!(q.loss, 0.25);
    }

    #[test]
    fn unknown_field_and_bad_probability_are_named() {
        let p = LinkParams::default();
        let bad = serde_json::json!({"los": 0.25})
            .as_object()
            .unwrap()
            .clone();
        assert!(apply_partial(&p, &bad).unwrap_err().contains("\"los\""));
        let bad = serde_json::json!({"loss": 1.5})
            .as_object()
            .unwrap()
            .clone();
        assert!(apply_partial(&p, &bad).unwrap_err().contains("loss"));
    }

    #[test]
    fn requests_round_trip_as_documented() {
        let r: Request =
            serde_json::from_str(r#"{"cmd":"set","dir":"a_to_b","params":{"delay_us":10000}}"#)
                .unwrap();
        assert!(matches!(
            r,
            Request::Set {
                dir: Dirs::AToB,
                ..
            }
        ));
        let r: Request = serde_json::from_str(r#"{"cmd":"outage","on":true}"#).unwrap();
        assert_eq!(
            r,
            Request::Outage {
                dir: Dirs::Both,
                on: true
            }
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"explode"}"#).is_err());
    }
}
