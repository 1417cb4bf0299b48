//! Budgets that bound the handshake work a network does and the cookie replies it sends:
//! a [`TokenBucket`] for the whole network, and [`SourceLimits`] for each source, so
//! that one flooding host cannot spend what everyone else needs. Time comes from the
//! caller; nothing here does I/O or decides what an initiation gets (the network's
//! input code does, `network/input.rs`).
//!
//! A source is an IPv4 address, or an IPv6 /64: a single host usually owns a whole /64,
//! so counting its addresses one by one would give it billions of shares.
//!
//! The table of sources is bounded. Forgetting a source only ever hands it a fresh
//! allowance, so the question is whose allowance a spray of new addresses can reset.
//! The table keeps two generations: sources seen in the current one, and those of the
//! one before. A lookup moves a source into the current generation; when that is full
//! the previous one is dropped whole and the current one takes its place. A source that
//! sends at least once per generation (every flooder does) therefore keeps its spent
//! allowance however many addresses an attacker sprays, while the spray's own entries
//! churn through. Each lookup is O(1) and nothing is allocated after start.

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

/// What a source spends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Budget {
    /// Diffie-Hellman work for an initiation, within the network's main budget.
    Initiation,
    /// Diffie-Hellman work, beyond that, for an initiation whose cookie proves that its
    /// sender receives at its address.
    Proven,
    /// A cookie reply.
    CookieReply,
}

const BUDGETS: usize = 3;

impl Budget {
    fn slot(self) -> usize {
        match self {
            Budget::Initiation => 0,
            Budget::Proven => 1,
            Budget::CookieReply => 2,
        }
    }
}

/// Where an initiation came from, as the limits count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum SourceKey {
    V4([u8; 4]),
    /// The /64 prefix.
    V6([u8; 8]),
}

impl SourceKey {
    fn of(ip: IpAddr) -> SourceKey {
        match ip {
            IpAddr::V4(v4) => SourceKey::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => SourceKey::V4(v4.octets()),
                None => {
                    let mut prefix = [0u8; 8];
                    prefix.copy_from_slice(&v6.octets()[..8]);
                    SourceKey::V6(prefix)
                }
            },
        }
    }
}

/// The tokens one source has left of each budget; all refill from one timestamp.
#[derive(Clone, Copy, Debug)]
struct Allowance {
    tokens: [f32; BUDGETS],
    last: Instant,
}

/// Rate (per second) and burst of each budget, the same for every source.
#[derive(Clone, Copy, Debug)]
struct Rates {
    rate: [f32; BUDGETS],
    burst: [f32; BUDGETS],
}

/// Per-source budgets in a bounded table (see the module documentation).
pub(crate) struct SourceLimits {
    rates: Rates,
    /// Sources per generation: the table holds at most twice this.
    generation: usize,
    current: HashMap<SourceKey, Allowance, ahash::RandomState>,
    previous: HashMap<SourceKey, Allowance, ahash::RandomState>,
}

impl SourceLimits {
    /// `handshakes` per second (and as a burst) for [`Budget::Initiation`] and
    /// [`Budget::Proven`] each, `cookie_replies` per second (and burst) for
    /// [`Budget::CookieReply`]; at most `capacity` sources remembered.
    pub(crate) fn new(
        handshakes: u32,
        cookie_replies: u32,
        capacity: usize,
        hasher: ahash::RandomState,
    ) -> SourceLimits {
        let rate = [handshakes, handshakes, cookie_replies].map(|r| r as f32);
        let generation = (capacity / 2).max(1);
        SourceLimits {
            rates: Rates {
                rate,
                burst: rate.map(|r| r.max(1.0)),
            },
            generation,
            current: HashMap::with_capacity_and_hasher(generation, hasher.clone()),
            previous: HashMap::with_capacity_and_hasher(generation, hasher),
        }
    }

    /// The budgets of the source `ip` belongs to, refilled up to `now`; a source the table
    /// does not know starts with full allowances.
    pub(crate) fn source(&mut self, now: Instant, ip: IpAddr) -> Source<'_> {
        let key = SourceKey::of(ip);
        if !self.promote(key) {
            let fresh = Allowance {
                tokens: self.rates.burst,
                last: now,
            };
            self.insert(key, fresh);
        }
        self.refreshed(now, key)
    }

    /// Like [`SourceLimits::source`] for a source the table knows; `None` for any other.
    /// Never adds a source, so datagrams not yet authenticated may ask.
    pub(crate) fn known(&mut self, now: Instant, ip: IpAddr) -> Option<Source<'_>> {
        let key = SourceKey::of(ip);
        self.promote(key).then(|| self.refreshed(now, key))
    }

    /// Moves `key` into the current generation if the table knows it; whether it does.
    fn promote(&mut self, key: SourceKey) -> bool {
        if self.current.contains_key(&key) {
            return true;
        }
        match self.previous.remove(&key) {
            Some(allowance) => {
                self.insert(key, allowance);
                true
            }
            None => false,
        }
    }

    /// Adds `key` to the current generation, starting a new one first if it is full.
    fn insert(&mut self, key: SourceKey, allowance: Allowance) {
        if self.current.len() >= self.generation {
            std::mem::swap(&mut self.current, &mut self.previous);
            self.current.clear();
        }
        self.current.insert(key, allowance);
    }

    fn refreshed(&mut self, now: Instant, key: SourceKey) -> Source<'_> {
        let rates = self.rates;
        let allowance = self.current.get_mut(&key).expect("promoted or inserted");
        let elapsed = now.saturating_duration_since(allowance.last).as_secs_f32();
        for i in 0..BUDGETS {
            allowance.tokens[i] =
                (allowance.tokens[i] + elapsed * rates.rate[i]).min(rates.burst[i]);
        }
        allowance.last = allowance.last.max(now);
        Source { allowance }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }
}

/// One source's budgets, from [`SourceLimits::source`].
pub(crate) struct Source<'a> {
    allowance: &'a mut Allowance,
}

impl Source<'_> {
    /// Whether anything the source sends now could still be answered: it has a token
    /// of its initiation or cookie-reply budget, or of its proven one for an initiation
    /// that `carries_cookie`.
    pub(crate) fn can_be_answered(&self, carries_cookie: bool) -> bool {
        self.has(Budget::Initiation)
            || self.has(Budget::CookieReply)
            || (carries_cookie && self.has(Budget::Proven))
    }

    /// Whether the source may spend one of `budget` now.
    pub(crate) fn has(&self, budget: Budget) -> bool {
        self.allowance.tokens[budget.slot()] >= 1.0
    }

    /// Spends one of `budget`, if the source has one.
    pub(crate) fn take(&mut self, budget: Budget) -> bool {
        let tokens = &mut self.allowance.tokens[budget.slot()];
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
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

    fn limits(capacity: usize) -> SourceLimits {
        SourceLimits::new(5, 2, capacity, ahash::RandomState::with_seeds(1, 2, 3, 4))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn drain(l: &mut SourceLimits, now: Instant, source: IpAddr, budget: Budget) -> usize {
        let mut s = l.source(now, source);
        (0..100).filter(|_| s.take(budget)).count()
    }

    #[test]
    fn each_source_has_its_own_budgets_refilled_at_their_rates() {
        let t0 = Instant::now();
        let mut l = limits(64);
        let (a, b) = (ip("192.0.2.1"), ip("192.0.2.2"));
        assert_eq!(drain(&mut l, t0, a, Budget::Initiation), 5);
        assert_eq!(drain(&mut l, t0, a, Budget::Proven), 5);
        assert_eq!(drain(&mut l, t0, a, Budget::CookieReply), 2);
        assert!(!l.source(t0, a).has(Budget::Initiation));
        assert_eq!(drain(&mut l, t0, b, Budget::Initiation), 5);
        let later = t0 + Duration::from_millis(400);
        assert_eq!(drain(&mut l, later, a, Budget::Initiation), 2);
        assert_eq!(drain(&mut l, later, a, Budget::CookieReply), 0);
    }

    #[test]
    fn an_ipv6_64_is_one_source_and_a_mapped_ipv4_address_is_its_ipv4_source() {
        let t0 = Instant::now();
        let mut l = limits(64);
        assert_eq!(
            drain(&mut l, t0, ip("2001:db8:1:2::1"), Budget::Initiation),
            5
        );
        assert_eq!(
            drain(&mut l, t0, ip("2001:db8:1:2:ffff::9"), Budget::Initiation),
            0
        );
        assert_eq!(
            drain(&mut l, t0, ip("2001:db8:1:3::1"), Budget::Initiation),
            5
        );
        assert_eq!(drain(&mut l, t0, ip("198.51.100.7"), Budget::Initiation), 5);
        assert_eq!(
            drain(&mut l, t0, ip("::ffff:198.51.100.7"), Budget::Initiation),
            0
        );
    }

    #[test]
    fn a_spray_of_addresses_never_resets_a_source_that_keeps_sending() {
        let t0 = Instant::now();
        let mut l = limits(64);
        let flooder = ip("203.0.113.66");
        assert_eq!(drain(&mut l, t0, flooder, Budget::Initiation), 5);
        for i in 0..100_000u32 {
            let sprayed = IpAddr::from((0x0a00_0000 | i).to_be_bytes());
            l.source(t0, sprayed).take(Budget::Initiation);
            assert!(l.len() <= 64);
            if i % 16 == 0 {
                assert!(
                    !l.source(t0, flooder).take(Budget::Initiation),
                    "the flooder got a fresh budget after {i} sprayed addresses"
                );
            }
        }
    }

    #[test]
    fn asking_about_unknown_sources_never_adds_them() {
        let t0 = Instant::now();
        let mut l = limits(8);
        for i in 0..100u8 {
            assert!(l.known(t0, IpAddr::from([10, 0, 1, i])).is_none());
        }
        assert_eq!(l.len(), 0);
        let flooder = ip("203.0.113.66");
        drain(&mut l, t0, flooder, Budget::Initiation);
        assert!(l.known(t0, flooder).unwrap().can_be_answered(false));
        drain(&mut l, t0, flooder, Budget::CookieReply);
        let known = l.known(t0, flooder).unwrap();
        assert!(!known.can_be_answered(false));
        assert!(known.can_be_answered(true), "its proven allowance is left");
        drain(&mut l, t0, flooder, Budget::Proven);
        assert!(!l.known(t0, flooder).unwrap().can_be_answered(true));
        let later = t0 + Duration::from_millis(200);
        assert!(l.known(later, flooder).unwrap().can_be_answered(false));
    }

    #[test]
    fn a_source_forgotten_after_two_generations_starts_afresh() {
        let t0 = Instant::now();
        let mut l = limits(8);
        let quiet = ip("192.0.2.9");
        assert_eq!(drain(&mut l, t0, quiet, Budget::Initiation), 5);
        for i in 0..8u8 {
            l.source(t0, IpAddr::from([10, 0, 0, i]));
        }
        assert_eq!(drain(&mut l, t0, quiet, Budget::Initiation), 5);
    }
}
