//! Token buckets that bound how much handshake work a network does per second, overall and
//! per source address. Time comes from the caller.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Clone, Debug)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    pub(crate) fn new(rate: u32, burst: u32) -> TokenBucket {
        TokenBucket {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: None,
        }
    }

    pub(crate) fn try_take(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let elapsed = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One bucket per source IP, in a table of bounded size.
pub(crate) struct PerSourceLimiter {
    rate: u32,
    burst: u32,
    capacity: usize,
    buckets: HashMap<IpAddr, TokenBucket, ahash::RandomState>,
}

impl PerSourceLimiter {
    pub(crate) fn new(rate: u32, burst: u32, capacity: usize, hasher: ahash::RandomState) -> Self {
        PerSourceLimiter {
            rate,
            burst,
            capacity,
            buckets: HashMap::with_capacity_and_hasher(capacity, hasher),
        }
    }

    pub(crate) fn try_take(&mut self, now: Instant, source: IpAddr) -> bool {
        if !self.buckets.contains_key(&source) && self.buckets.len() >= self.capacity {
            // Forgetting every source only hands each a fresh burst; the overall bucket
            // still bounds the total, so the table can stay small and O(1) per message.
            self.buckets.clear();
        }
        self.buckets
            .entry(source)
            .or_insert_with(|| TokenBucket::new(self.rate, self.burst))
            .try_take(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 5);
        let first: usize = (0..100).filter(|_| b.try_take(t0)).count();
        assert_eq!(first, 5);
        let mut later = 0;
        for ms in 1..=1000 {
            if b.try_take(t0 + Duration::from_millis(ms)) {
                later += 1;
            }
        }
        assert!((9..=11).contains(&later), "{later}");
    }

    #[test]
    fn sources_are_limited_separately_and_the_table_is_bounded() {
        let t0 = Instant::now();
        let mut l = PerSourceLimiter::new(1, 1, 4, ahash::RandomState::with_seeds(1, 2, 3, 4));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(l.try_take(t0, a));
        assert!(!l.try_take(t0, a));
        assert!(l.try_take(t0, b));
        for i in 0..100u8 {
            l.try_take(t0, IpAddr::from([10, 0, 0, i]));
            assert!(l.buckets.len() <= 4);
        }
    }
}
