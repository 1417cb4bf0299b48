//! One direction of the emulated link as a pure state machine: frames and `now` in,
//! frames out when they come due. No sockets, no clock, no threads; the `wanem` binary
//! drives it, and the unit tests below drive it with simulated time.
//!
//! A frame goes through, in order:
//! 1. outage: dropped while the link is down;
//! 2. loss: dropped with probability `loss`;
//! 3. duplication: a second copy is made with probability `duplicate`; each copy then
//!    goes through the rest on its own, as two frames on a wire would;
//! 4. the bottleneck (if `rate_bps > 0`): a token bucket of `burst_bytes` drained at
//!    `rate_bps`, in front of a FIFO of `queue_bytes`; a frame that would wait longer
//!    than that queue holds is tail-dropped. Departure times are computed exactly
//!    (GCRA), so the long-run rate does not depend on how late the driver wakes up;
//! 5. propagation: `delay ± jitter`. Unless `jitter_reorder` is set, a frame never leaves
//!    before the one received before it;
//! 6. reordering: with probability `reorder` the frame is held back `reorder_delay` more,
//!    outside the FIFO, so frames behind it overtake it.
//!
//! An outage also drops frames already in flight when they come due: a cut cable loses
//! what is on it.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

use super::proto::{DirStats, LinkParams};

/// Full-size Ethernet frame (1500-byte payload + 14-byte header), used for defaults.
pub const FULL_FRAME: u64 = 1514;

/// Most frames kept in flight in one direction; beyond it frames are dropped as `queue`.
pub const MAX_IN_FLIGHT: usize = 50_000;

struct Held<F> {
    release: Instant,
    seq: u64,
    len: usize,
    frame: F,
}

impl<F> PartialEq for Held<F> {
    fn eq(&self, o: &Self) -> bool {
        (self.release, self.seq) == (o.release, o.seq)
    }
}
impl<F> Eq for Held<F> {}
impl<F> PartialOrd for Held<F> {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl<F> Ord for Held<F> {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.release, self.seq).cmp(&(o.release, o.seq))
    }
}

/// What [`Pipeline::poll_transmit`] hands back: a frame to write now.
pub struct Due<F> {
    pub frame: F,
    pub len: usize,
}

/// One direction of an emulated link. `F` is the driver's frame buffer; the pipeline only
/// moves it around (and clones it for duplicates).
pub struct Pipeline<F> {
    params: LinkParams,
    rng: ChaCha8Rng,
    /// GCRA theoretical arrival time of the bottleneck.
    tat: Option<Instant>,
    /// Frames in order, release times non-decreasing.
    fifo: VecDeque<Held<F>>,
    /// Frames that may leave out of order (held back, or jittered with reordering).
    held: BinaryHeap<Reverse<Held<F>>>,
    seq: u64,
    stats: DirStats,
}

impl<F: Clone> Pipeline<F> {
    pub fn new(params: LinkParams, seed: u64) -> Self {
        Pipeline {
            params,
            rng: ChaCha8Rng::seed_from_u64(seed),
            tat: None,
            fifo: VecDeque::new(),
            held: BinaryHeap::new(),
            seq: 0,
            stats: DirStats::default(),
        }
    }

    pub fn params(&self) -> &LinkParams {
        &self.params
    }

    /// New parameters apply to frames received from now on; frames in flight keep their
    /// schedule (an outage still drops them when they come due).
    pub fn set_params(&mut self, params: LinkParams) {
        if params.rate_bps != self.params.rate_bps {
            self.tat = None;
        }
        self.params = params;
    }

    pub fn reseed(&mut self, seed: u64) {
        self.rng = ChaCha8Rng::seed_from_u64(seed);
    }

    pub fn stats(&self) -> DirStats {
        let mut s = self.stats;
        s.queued = (self.fifo.len() + self.held.len()) as u64;
        s
    }

    pub fn reset_stats(&mut self) {
        self.stats = DirStats::default();
    }

    /// Counters the driver keeps itself (what it sees at the socket).
    pub fn stats_mut(&mut self) -> &mut DirStats {
        &mut self.stats
    }

    /// A frame the driver read but cannot forward because it exceeds the egress MTU.
    pub fn handle_oversize(&mut self, len: usize) {
        self.stats.rx_frames += 1;
        self.stats.rx_bytes += len as u64;
        self.stats.dropped_oversize += 1;
    }

    /// A frame of `len` bytes arrived at `now`.
    pub fn handle_frame(&mut self, frame: F, len: usize, now: Instant) {
        self.stats.rx_frames += 1;
        self.stats.rx_bytes += len as u64;
        let p = self.params;
        if p.outage {
            self.stats.dropped_outage += 1;
            return;
        }
        if self.chance(p.loss) {
            self.stats.dropped_loss += 1;
            return;
        }
        if self.chance(p.duplicate) {
            self.stats.duplicated += 1;
            self.schedule(frame.clone(), len, now);
        }
        self.schedule(frame, len, now);
    }

    fn schedule(&mut self, frame: F, len: usize, now: Instant) {
        let p = self.params;
        if self.fifo.len() + self.held.len() >= MAX_IN_FLIGHT {
            self.stats.dropped_queue += 1;
            return;
        }
        let departs = match self.bottleneck(len, now) {
            Some(t) => t,
            None => {
                self.stats.dropped_queue += 1;
                return;
            }
        };
        let mut delay = p.delay;
        if !p.jitter.is_zero() {
            let j = p.jitter.as_nanos() as f64 * (2.0 * self.uniform() - 1.0);
            let d = (p.delay.as_nanos() as f64 + j).max(0.0);
            delay = Duration::from_nanos(d as u64);
        }
        let mut release = departs + delay;
        self.seq += 1;
        let seq = self.seq;
        if self.chance(p.reorder) {
            self.stats.reordered += 1;
            release += p.reorder_delay;
            self.held.push(Reverse(Held {
                release,
                seq,
                len,
                frame,
            }));
        } else if p.jitter_reorder && !p.jitter.is_zero() {
            self.held.push(Reverse(Held {
                release,
                seq,
                len,
                frame,
            }));
        } else {
            if let Some(last) = self.fifo.back() {
                release = release.max(last.release);
            }
            self.fifo.push_back(Held {
                release,
                seq,
                len,
                frame,
            });
        }
    }

    /// When the frame leaves the bottleneck, or `None` for a tail drop.
    fn bottleneck(&mut self, len: usize, now: Instant) -> Option<Instant> {
        let rate = self.params.rate_bps;
        if rate == 0 {
            return Some(now);
        }
        let burst = match self.params.burst_bytes {
            0 => 2 * FULL_FRAME,
            b => b,
        };
        let queue = match self.params.queue_bytes {
            0 => (rate / 8 / 10).max(32 * FULL_FRAME),
            q => q,
        };
        let bytes_time = |bytes: u64| -> Duration {
            Duration::from_nanos(((bytes as u128 * 8 * 1_000_000_000) / rate as u128) as u64)
        };
        let cost = bytes_time(len as u64);
        let tat = self.tat.unwrap_or(now).max(now);
        // A full bucket lets `burst` bytes leave back to back: this frame may leave as
        // early as the bucket's depth minus its own size before the theoretical time.
        let slack = bytes_time(burst).saturating_sub(cost);
        let departs = tat.checked_sub(slack).unwrap_or(now).max(now);
        if departs - now > bytes_time(queue) {
            return None;
        }
        self.tat = Some(tat + cost);
        Some(departs)
    }

    /// The next frame due at `now`, if any. Counts it as transmitted unless an outage
    /// drops it; the driver reports a failed write with [`Pipeline::send_failed`].
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Due<F>> {
        loop {
            let fifo_next = self.fifo.front().map(|h| h.release);
            let held_next = self.held.peek().map(|h| h.0.release);
            let from_fifo = match (fifo_next, held_next) {
                (Some(f), Some(h)) => f <= h,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => return None,
            };
            let next = if from_fifo { fifo_next } else { held_next };
            if next.is_some_and(|t| t > now) {
                return None;
            }
            let h = if from_fifo {
                self.fifo.pop_front().expect("peeked")
            } else {
                self.held.pop().expect("peeked").0
            };
            if self.params.outage {
                self.stats.dropped_outage += 1;
                continue;
            }
            self.stats.tx_frames += 1;
            self.stats.tx_bytes += h.len as u64;
            return Some(Due {
                frame: h.frame,
                len: h.len,
            });
        }
    }

    /// The frame last returned by `poll_transmit` could not be written.
    pub fn send_failed(&mut self, len: usize) {
        self.stats.tx_frames -= 1;
        self.stats.tx_bytes -= len as u64;
        self.stats.dropped_send_error += 1;
    }

    /// When the next frame comes due, if any is in flight.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let f = self.fifo.front().map(|h| h.release);
        let h = self.held.peek().map(|h| h.0.release);
        match (f, h) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (p >= 1.0 || self.uniform() < p)
    }

    fn uniform(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Drains everything, stepping simulated time 100 us at a time; returns (frame, time).
    fn drain(p: &mut Pipeline<u32>, start: Instant) -> Vec<(u32, Duration)> {
        let mut out = Vec::new();
        let mut now = start;
        while p.poll_timeout().is_some() {
            while let Some(d) = p.poll_transmit(now) {
                out.push((d.frame, now - start));
            }
            now += Duration::from_micros(100);
        }
        out
    }

    #[test]
    fn perfect_link_forwards_immediately_in_order() {
        let mut p = Pipeline::new(LinkParams::default(), 1);
        let t = Instant::now();
        for i in 0..10 {
            p.handle_frame(i, 100, t);
        }
        let out: Vec<u32> = std::iter::from_fn(|| p.poll_transmit(t).map(|d| d.frame)).collect();
        assert_eq!(out, (0..10).collect::<Vec<_>>());
        assert_eq!(p.stats().tx_frames, 10);
    }

    #[test]
    fn delay_holds_frames_exactly_that_long() {
        let mut p = Pipeline::new(LinkParams::default().delay(ms(10)), 1);
        let t = Instant::now();
        p.handle_frame(7, 100, t);
        assert!(p.poll_transmit(t + ms(9)).is_none());
        assert_eq!(p.poll_timeout(), Some(t + ms(10)));
        assert_eq!(p.poll_transmit(t + ms(10)).map(|d| d.frame), Some(7));
    }

    #[test]
    fn jitter_without_reorder_permission_keeps_order() {
        let mut p = Pipeline::new(LinkParams::default().delay(ms(10)).jitter(ms(5)), 3);
        let t = Instant::now();
        for i in 0..200 {
            p.handle_frame(i, 100, t + Duration::from_micros(50 * i as u64));
        }
        let out = drain(&mut p, t);
        let order: Vec<u32> = out.iter().map(|o| o.0).collect();
        assert_eq!(order, (0..200).collect::<Vec<_>>());
        // Each frame's own delay stays within delay ± jitter (+ the 100 us drain step).
        for (frame, at) in &out {
            let delay = *at - Duration::from_micros(50 * *frame as u64);
            assert!(delay >= ms(5) && delay <= ms(15) + Duration::from_micros(100));
        }
    }

    #[test]
    fn jitter_with_reorder_permission_reorders() {
        let mut params = LinkParams::default().delay(ms(10)).jitter(ms(5));
        params.jitter_reorder = true;
        let mut p = Pipeline::new(params, 3);
        let t = Instant::now();
        for i in 0..200 {
            p.handle_frame(i, 100, t + Duration::from_micros(50 * i as u64));
        }
        let order: Vec<u32> = drain(&mut p, t).iter().map(|o| o.0).collect();
        assert_ne!(order, (0..200).collect::<Vec<_>>());
        assert_eq!(order.len(), 200);
    }

    #[test]
    fn loss_rate_matches_probability_and_is_seeded() {
        let run = |seed| {
            let mut p = Pipeline::new(LinkParams::default().loss(0.3), seed);
            let t = Instant::now();
            let mut kept = Vec::new();
            for i in 0..10_000u32 {
                p.handle_frame(i, 100, t);
                if let Some(d) = p.poll_transmit(t) {
                    kept.push(d.frame);
                }
            }
            (kept, p.stats())
        };
        let (a, s) = run(42);
        let (b, _) = run(42);
        let (c, _) = run(43);
        assert_eq!(a, b, "same seed, same losses");
        assert_ne!(a, c);
        let rate = s.dropped_loss as f64 / s.rx_frames as f64;
        assert!((0.28..0.32).contains(&rate), "loss rate {rate}");
        assert_eq!(s.rx_frames, s.tx_frames + s.dropped());
    }

    #[test]
    fn rate_limit_spaces_frames_and_tail_drops() {
        // 8 Mbit/s: a 1000-byte frame takes 1 ms. Burst 2000 bytes, queue 5000 bytes.
        let params = LinkParams {
            rate_bps: 8_000_000,
            burst_bytes: 2000,
            queue_bytes: 5000,
            ..LinkParams::default()
        };
        let mut p = Pipeline::new(params, 1);
        let t = Instant::now();
        for i in 0..20 {
            p.handle_frame(i, 1000, t);
        }
        let s = p.stats();
        // The 2 frames the bucket holds leave at once, then 5 ms of queue: frames
        // departing at 1..=5 ms; everything later is tail-dropped.
        assert_eq!(s.dropped_queue, 20 - 7, "{s:?}");
        let out = drain(&mut p, t);
        let times: Vec<u128> = out.iter().map(|o| o.1.as_millis()).collect();
        assert_eq!(times, vec![0, 0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn rate_limit_long_run_rate_is_exact() {
        let params = LinkParams::default().rate_bps(50_000_000);
        let mut p = Pipeline::new(params, 1);
        let t = Instant::now();
        let mut now = t;
        let mut sent = 0u64;
        // Offer 100 Mbit/s of 1500-byte frames for one simulated second.
        for _ in 0..8333 {
            p.handle_frame(0u32, 1500, now);
            now += Duration::from_micros(120);
            while let Some(d) = p.poll_transmit(now) {
                sent += d.len as u64;
            }
        }
        let bps = sent as f64 * 8.0 / (now - t).as_secs_f64();
        assert!((49e6..51e6).contains(&bps), "rate {bps}");
        assert!(p.stats().dropped_queue > 3000);
    }

    #[test]
    fn reorder_holds_frames_back_and_counts_them() {
        let params = LinkParams::default().reorder(0.25, ms(3));
        let mut p = Pipeline::new(params, 9);
        let t = Instant::now();
        for i in 0..400 {
            p.handle_frame(i, 100, t + Duration::from_micros(500 * i as u64));
        }
        let out = drain(&mut p, t);
        let overtaken = out.windows(2).filter(|w| w[0].0 > w[1].0).count();
        let s = p.stats();
        assert!((70..130).contains(&s.reordered), "{s:?}");
        assert!(overtaken > 50, "{overtaken}");
        assert_eq!(out.len(), 400);
    }

    #[test]
    fn duplicates_are_counted_and_sent() {
        let mut p = Pipeline::new(LinkParams::default().duplicate(0.5), 5);
        let t = Instant::now();
        for i in 0..1000 {
            p.handle_frame(i, 100, t);
        }
        let out = drain(&mut p, t);
        let s = p.stats();
        assert_eq!(out.len() as u64, 1000 + s.duplicated);
        assert!((400..600).contains(&s.duplicated));
        assert_eq!(s.rx_frames + s.duplicated, s.tx_frames + s.dropped());
    }

    #[test]
    fn outage_drops_arrivals_and_frames_in_flight() {
        let mut p = Pipeline::new(LinkParams::default().delay(ms(5)), 1);
        let t = Instant::now();
        p.handle_frame(1, 100, t);
        let mut params = *p.params();
        params.outage = true;
        p.set_params(params);
        p.handle_frame(2, 100, t);
        assert!(p.poll_transmit(t + ms(6)).is_none());
        let s = p.stats();
        assert_eq!(s.dropped_outage, 2);
        assert_eq!(s.queued, 0);
        params.outage = false;
        p.set_params(params);
        p.handle_frame(3, 100, t + ms(6));
        assert_eq!(p.poll_transmit(t + ms(11)).map(|d| d.frame), Some(3));
    }
}
