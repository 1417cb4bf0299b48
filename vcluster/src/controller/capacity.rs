//! Admission control: the rules that make "no double booking, ever" true, as pure
//! functions over a site's ledger.
//!
//! A site's capacity `C` is the sum of its enabled hosts' CPUs and memory times the
//! overcommit ratios. Nodes outside any reservation hold `U` and have no end, so they
//! must fit next to every reservation, now and later. Accepted reservations hold `R(t)`,
//! the sum of those whose lease `[start, end)` contains `t`; nodes inside a reservation
//! are part of it, not of `U`. The invariant, for every `t >= now` and each of CPUs and
//! memory:
//!
//! ```text
//!     U + R(t) <= C
//! ```
//!
//! - a reservation is accepted iff the invariant still holds with it added;
//! - an allocation outside reservations fits iff `U + new + max_{t>=now} R(t) <= C`;
//! - an allocation inside reservation `r` fits iff `now` is in `r`'s lease and `r`'s
//!   own nodes plus the new ones stay within what `r` reserved.
//!
//! The store serialises the transactions that read a ledger and act on it, so these
//! checks cannot race. This module never touches the store.

use crate::model::Resources;

#[derive(Debug, Clone)]
pub struct Lease {
    pub id: i64,
    pub start: i64,
    pub end: i64,
    pub amount: Resources,
}

/// What one site has and owes, as of `now`.
#[derive(Debug, Clone, Default)]
pub struct SiteLedger {
    pub capacity: Resources,
    /// Held by nodes outside any reservation.
    pub unreserved_use: Resources,
    /// Accepted reservations that have not ended.
    pub leases: Vec<Lease>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: String,
}

impl SiteLedger {
    /// `R(t)`: what the accepted reservations hold at instant `t`.
    pub fn reserved_at(&self, t: i64) -> Resources {
        self.leases
            .iter()
            .filter(|l| l.start <= t && t < l.end)
            .fold(Resources::default(), |acc, l| acc.plus(l.amount))
    }

    /// `max R(t)` over `[from, to)`; `R` only changes at lease starts, so those instants
    /// and `from` are the only ones to look at.
    pub fn peak_reserved(&self, from: i64, to: i64) -> Resources {
        let mut peak = self.reserved_at(from);
        for l in &self.leases {
            if l.start > from && l.start < to {
                peak = peak.max(self.reserved_at(l.start));
            }
        }
        peak
    }

    /// Room for nodes outside reservations: `C - U - max_{t>=now} R(t)`.
    pub fn unreserved_room(&self, now: i64) -> Resources {
        self.capacity
            .minus(self.unreserved_use)
            .minus(self.peak_reserved(now, i64::MAX))
    }

    /// Accepts a lease of `amount` over `[start, end)` or says why not.
    pub fn admit(&self, amount: Resources, start: i64, end: i64, now: i64) -> Result<(), Refusal> {
        let from = start.max(now);
        let peak = self.peak_reserved(from, end);
        let total = self.unreserved_use.plus(peak).plus(amount);
        if total.fits_in(self.capacity) {
            return Ok(());
        }
        let free = self.capacity.minus(self.unreserved_use).minus(peak);
        Err(Refusal {
            reason: format!(
                "not enough capacity in that period: asked for {} CPUs / {} MiB, at most {} CPUs / {} MiB are free \
                 (capacity {} CPUs / {} MiB, {} CPUs / {} MiB in use outside reservations, {} CPUs / {} MiB reserved at the peak)",
                amount.cpus,
                amount.memory_mib,
                free.cpus.max(0),
                free.memory_mib.max(0),
                self.capacity.cpus,
                self.capacity.memory_mib,
                self.unreserved_use.cpus,
                self.unreserved_use.memory_mib,
                peak.cpus,
                peak.memory_mib
            ),
        })
    }

    /// The earliest start `>= now` at which a lease of `amount` for `duration` ms would be
    /// accepted. `R` only drops when a lease ends, so `now` and the lease ends are the
    /// only candidates. `None` when even an empty future would not fit it.
    pub fn earliest(&self, amount: Resources, duration: i64, now: i64) -> Option<i64> {
        if !self.unreserved_use.plus(amount).fits_in(self.capacity) {
            return None;
        }
        let mut candidates: Vec<i64> = std::iter::once(now)
            .chain(self.leases.iter().map(|l| l.end).filter(|&e| e > now))
            .collect();
        candidates.sort_unstable();
        candidates.dedup();
        candidates
            .into_iter()
            .find(|&start| self.admit(amount, start, start + duration, now).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;

    fn ledger(cap: i64, used: i64, leases: &[(i64, i64, i64)]) -> SiteLedger {
        SiteLedger {
            capacity: Resources::new(cap, cap * 1024),
            unreserved_use: Resources::new(used, used * 1024),
            leases: leases
                .iter()
                .enumerate()
                .map(|(i, &(s, e, n))| Lease {
                    id: i as i64,
                    start: s,
                    end: e,
                    amount: Resources::new(n, n * 1024),
                })
                .collect(),
        }
    }

    fn r(n: i64) -> Resources {
        Resources::new(n, n * 1024)
    }

    #[test]
    fn overlapping_leases_cannot_exceed_capacity() {
        let l = ledger(10, 0, &[(0, 2 * H, 6)]);
        assert!(l.admit(r(4), H, 3 * H, 0).is_ok());
        let refused = l.admit(r(5), H, 3 * H, 0).unwrap_err();
        assert!(
            refused.reason.contains("not enough capacity"),
            "{}",
            refused.reason
        );
        // after the first lease ends there is room for 10
        assert!(l.admit(r(10), 2 * H, 3 * H, 0).is_ok());
    }

    #[test]
    fn unreserved_nodes_count_against_every_future_lease() {
        let l = ledger(10, 7, &[]);
        assert!(l.admit(r(3), 100 * H, 101 * H, 0).is_ok());
        assert!(l.admit(r(4), 100 * H, 101 * H, 0).is_err());
    }

    #[test]
    fn unreserved_room_leaves_the_future_peak_free() {
        let l = ledger(10, 1, &[(5 * H, 6 * H, 4), (5 * H, 7 * H, 3)]);
        assert_eq!(l.unreserved_room(0), r(2));
        // once both have ended the peak is gone
        assert_eq!(l.unreserved_room(7 * H), r(9));
    }

    #[test]
    fn earliest_slot_is_after_the_blocking_lease_ends() {
        let l = ledger(10, 0, &[(0, 2 * H, 8), (3 * H, 4 * H, 5)]);
        // 4 nodes for 1h: not now (8 held), at 2h there is room until 3h, and 3h..4h has 5 held
        assert_eq!(l.earliest(r(4), H, 0), Some(2 * H));
        // 6 nodes for 2h: 2h..4h overlaps the 5-lease; the first fit is at 4h
        assert_eq!(l.earliest(r(6), 2 * H, 0), Some(4 * H));
        assert_eq!(l.earliest(r(11), H, 0), None);
    }
}
