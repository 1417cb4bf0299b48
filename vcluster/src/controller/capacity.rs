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

/// Resources summed in 128 bits. A ledger adds up many leases, and a sum that wrapped
/// around would admit what does not fit: every admission decision is made in this type,
/// where no sum of i64 amounts can overflow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Sum {
    cpus: i128,
    memory_mib: i128,
}

impl Sum {
    fn of(r: Resources) -> Sum {
        Sum {
            cpus: r.cpus.into(),
            memory_mib: r.memory_mib.into(),
        }
    }
    fn add(self, o: Sum) -> Sum {
        Sum {
            cpus: self.cpus + o.cpus,
            memory_mib: self.memory_mib + o.memory_mib,
        }
    }
    fn sub(self, o: Sum) -> Sum {
        Sum {
            cpus: self.cpus - o.cpus,
            memory_mib: self.memory_mib - o.memory_mib,
        }
    }
    fn max(self, o: Sum) -> Sum {
        Sum {
            cpus: self.cpus.max(o.cpus),
            memory_mib: self.memory_mib.max(o.memory_mib),
        }
    }
    fn fits_in(self, room: Sum) -> bool {
        self.cpus <= room.cpus && self.memory_mib <= room.memory_mib
    }
    /// Back to i64 for reports and budgets, clamped into its range.
    fn clamped(self) -> Resources {
        let clamp = |v: i128| v.clamp(i64::MIN.into(), i64::MAX.into()) as i64;
        Resources::new(clamp(self.cpus), clamp(self.memory_mib))
    }
}

impl SiteLedger {
    fn reserved_sum_at(&self, t: i64) -> Sum {
        self.leases
            .iter()
            .filter(|l| l.start <= t && t < l.end)
            .fold(Sum::default(), |acc, l| acc.add(Sum::of(l.amount)))
    }

    /// `max R(t)` over `[from, to)`; `R` only changes at lease starts, so those instants
    /// and `from` are the only ones to look at.
    fn peak_sum(&self, from: i64, to: i64) -> Sum {
        let mut peak = self.reserved_sum_at(from);
        for l in &self.leases {
            if l.start > from && l.start < to {
                peak = peak.max(self.reserved_sum_at(l.start));
            }
        }
        peak
    }

    /// `R(t)`: what the accepted reservations hold at instant `t`.
    pub fn reserved_at(&self, t: i64) -> Resources {
        self.reserved_sum_at(t).clamped()
    }

    /// `max R(t)` over `[from, to)`.
    pub fn peak_reserved(&self, from: i64, to: i64) -> Resources {
        self.peak_sum(from, to).clamped()
    }

    /// Room for nodes outside reservations: `C - U - max_{t>=now} R(t)`.
    pub fn unreserved_room(&self, now: i64) -> Resources {
        Sum::of(self.capacity)
            .sub(Sum::of(self.unreserved_use))
            .sub(self.peak_sum(now, i64::MAX))
            .clamped()
    }

    /// Accepts a lease of `amount` over `[start, end)` or says why not.
    pub fn admit(&self, amount: Resources, start: i64, end: i64, now: i64) -> Result<(), Refusal> {
        let from = start.max(now);
        let peak = self.peak_sum(from, end);
        let used = Sum::of(self.unreserved_use).add(peak);
        if used.add(Sum::of(amount)).fits_in(Sum::of(self.capacity)) {
            return Ok(());
        }
        let free = Sum::of(self.capacity).sub(used).clamped();
        let peak = peak.clamped();
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
        let alone = Sum::of(self.unreserved_use).add(Sum::of(amount));
        if !alone.fits_in(Sum::of(self.capacity)) {
            return None;
        }
        let mut candidates: Vec<i64> = std::iter::once(now)
            .chain(self.leases.iter().map(|l| l.end).filter(|&e| e > now))
            .collect();
        candidates.sort_unstable();
        candidates.dedup();
        candidates.into_iter().find(|&start| {
            self.admit(amount, start, start.saturating_add(duration), now)
                .is_ok()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;

    impl Resources {
        fn min_with(self, o: Resources) -> Resources {
            Resources::new(self.cpus.min(o.cpus), self.memory_mib.min(o.memory_mib))
        }
    }

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

    mod property {
        use chrono::{DateTime, Utc};
        use proptest::prelude::*;

        use super::super::*;
        use crate::model::CreateReservation;

        const H: i64 = 3_600_000;
        /// 2030-01-01, so every lease in the test starts in the future.
        const NOW: i64 = 1_893_456_000_000;

        /// Any i64 at all, with the edges and the issue's own values drawn often.
        fn size() -> impl Strategy<Value = i64> {
            prop_oneof![
                any::<i64>(),
                Just(i64::MAX),
                Just(i64::MIN),
                Just(4_611_686_018_427_387_904),
                Just(6_917_529_027_641_081_856),
                0i64..5000,
            ]
        }

        fn request() -> impl Strategy<Value = CreateReservation> {
            let per_nodes = (
                prop::option::of(size()),
                prop::option::of(size()),
                prop::option::of(size()),
            );
            let raw = (prop::option::of(size()), prop::option::of(size()));
            (per_nodes, raw, 0i64..48, 1i64..48).prop_map(
                |((nodes, node_cpus, node_memory_mib), (cpus, memory_mib), start, len)| {
                    let at = |h: i64| DateTime::<Utc>::from_timestamp_millis(NOW + h * H).unwrap();
                    CreateReservation {
                        site: None,
                        nodes,
                        node_cpus,
                        node_memory_mib,
                        cpus,
                        memory_mib,
                        start: at(start),
                        end: at(start + len),
                        note: String::new(),
                    }
                },
            )
        }

        proptest! {
            /// Whatever sizes requests carry, what admission accepts never adds up to
            /// more than the site has, at any instant (checked in 128 bits).
            #[test]
            fn admitted_leases_never_exceed_capacity(
                capacity in (0i64..=i64::MAX, 0i64..=i64::MAX),
                used_part in (0.0f64..=1.0, 0.0f64..=1.0),
                requests in prop::collection::vec(request(), 1..30),
            ) {
                let capacity = Resources::new(capacity.0, capacity.1);
                let used = Resources::new(
                    (capacity.cpus as f64 * used_part.0) as i64,
                    (capacity.memory_mib as f64 * used_part.1) as i64,
                );
                let mut ledger = SiteLedger {
                    capacity,
                    unreserved_use: used.min_with(capacity),
                    leases: vec![],
                };
                for (id, req) in requests.iter().enumerate() {
                    let Ok(valid) = req.validate(NOW) else { continue };
                    prop_assert!(valid.amount.cpus >= 0 && valid.amount.memory_mib >= 0);
                    if ledger.admit(valid.amount, valid.start, valid.end, NOW).is_ok() {
                        ledger.leases.push(Lease {
                            id: id as i64,
                            start: valid.start,
                            end: valid.end,
                            amount: valid.amount,
                        });
                    }
                }
                for l in &ledger.leases {
                    let (mut cpus, mut mem) = (
                        i128::from(ledger.unreserved_use.cpus),
                        i128::from(ledger.unreserved_use.memory_mib),
                    );
                    for o in ledger.leases.iter().filter(|o| o.start <= l.start && l.start < o.end) {
                        cpus += i128::from(o.amount.cpus);
                        mem += i128::from(o.amount.memory_mib);
                    }
                    prop_assert!(cpus <= i128::from(capacity.cpus), "cpus {cpus} > {}", capacity.cpus);
                    prop_assert!(mem <= i128::from(capacity.memory_mib), "memory {mem} > {}", capacity.memory_mib);
                }
            }
        }
    }
}
