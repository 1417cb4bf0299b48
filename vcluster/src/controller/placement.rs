//! Placement: which host gets each new node. A pure function of the hosts' free room, the
//! per-site budgets that admission control allows (see `capacity`) and the strategy.
//!
//! - `spread`: each node goes to the site holding the fewest of this cluster's nodes (so a
//!   cluster lands on every site it can), then to that site's host with the most free CPU.
//! - `pack`: each node goes to the site already holding most of the cluster (the one with
//!   least free room first, on a tie), then to the fullest host that still fits.
//!
//! Nodes pinned to a site are placed there first. Hosts never go beyond their room (their
//! capacity times the overcommit ratio minus what their live nodes hold), and a site never
//! goes beyond its budget. This module never reads the store.

use std::collections::BTreeMap;

use crate::model::{Resources, Strategy};

#[derive(Debug, Clone)]
pub struct HostRoom {
    pub host_id: i64,
    pub host_name: String,
    pub site_id: i64,
    pub site_name: String,
    pub free: Resources,
}

#[derive(Debug, Clone)]
pub struct Request {
    /// Nodes to place anywhere.
    pub anywhere: u32,
    /// Nodes pinned to a site: (site id, count).
    pub pinned: Vec<(i64, u32)>,
    pub per_node: Resources,
    pub strategy: Strategy,
    /// How many of this cluster's nodes each site holds already.
    pub existing: BTreeMap<i64, u32>,
    /// What each site may still hand out (sites missing here get nothing).
    pub site_budget: BTreeMap<i64, Resources>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacementError {
    pub reason: String,
}

/// Returns one host id per node: pinned nodes first, in request order, then the rest.
pub fn place(req: &Request, hosts: &[HostRoom]) -> Result<Vec<i64>, PlacementError> {
    let mut hosts: Vec<HostRoom> = hosts.to_vec();
    let mut budget = req.site_budget.clone();
    let mut count = req.existing.clone();
    let mut out = Vec::new();

    let fits = |h: &HostRoom, budget: &BTreeMap<i64, Resources>| {
        req.per_node.fits_in(h.free)
            && budget
                .get(&h.site_id)
                .is_some_and(|b| req.per_node.fits_in(*b))
    };

    let mut take = |i: usize,
                    hosts: &mut Vec<HostRoom>,
                    budget: &mut BTreeMap<i64, Resources>,
                    count: &mut BTreeMap<i64, u32>| {
        let h = &mut hosts[i];
        h.free = h.free.minus(req.per_node);
        let b = budget.get_mut(&h.site_id).expect("checked by fits");
        *b = b.minus(req.per_node);
        *count.entry(h.site_id).or_default() += 1;
        out.push(h.host_id);
    };

    for &(site, n) in &req.pinned {
        for placed in 0..n {
            let best = pick_host(&hosts, req.strategy, |h| {
                h.site_id == site && fits(h, &budget)
            });
            match best {
                Some(i) => take(i, &mut hosts, &mut budget, &mut count),
                None => {
                    let name = hosts
                        .iter()
                        .find(|h| h.site_id == site)
                        .map(|h| h.site_name.clone())
                        .unwrap_or_else(|| format!("#{site}"));
                    return Err(PlacementError {
                        reason: format!(
                            "site {name} has room for {placed} of the {n} nodes pinned to it \
                             ({} CPUs / {} MiB each)",
                            req.per_node.cpus, req.per_node.memory_mib
                        ),
                    });
                }
            }
        }
    }

    for placed in 0..req.anywhere {
        let site = pick_site(&hosts, &budget, &count, req.strategy, |h| fits(h, &budget));
        let Some(site) = site else {
            return Err(PlacementError {
                reason: format!(
                    "not enough room: placed {placed} of {} nodes of {} CPUs / {} MiB; no online, \
                     enabled host has room for another within its site's free capacity",
                    req.anywhere, req.per_node.cpus, req.per_node.memory_mib
                ),
            });
        };
        let i = pick_host(&hosts, req.strategy, |h| {
            h.site_id == site && fits(h, &budget)
        })
        .expect("pick_site found a fitting host");
        take(i, &mut hosts, &mut budget, &mut count);
    }
    Ok(out)
}

fn pick_site(
    hosts: &[HostRoom],
    budget: &BTreeMap<i64, Resources>,
    count: &BTreeMap<i64, u32>,
    strategy: Strategy,
    fits: impl Fn(&HostRoom) -> bool,
) -> Option<i64> {
    let mut sites: Vec<i64> = hosts
        .iter()
        .filter(|h| fits(h))
        .map(|h| h.site_id)
        .collect();
    sites.sort_unstable();
    sites.dedup();
    let held = |s: &i64| count.get(s).copied().unwrap_or(0);
    let free = |s: &i64| budget.get(s).map(|b| b.cpus).unwrap_or(0);
    match strategy {
        // fewest of ours first, then most free, then lowest id for determinism
        Strategy::Spread => sites
            .into_iter()
            .min_by_key(|s| (held(s), std::cmp::Reverse(free(s)), *s)),
        // most of ours first, then least free
        Strategy::Pack => sites
            .into_iter()
            .min_by_key(|s| (std::cmp::Reverse(held(s)), free(s), *s)),
    }
}

fn pick_host(
    hosts: &[HostRoom],
    strategy: Strategy,
    ok: impl Fn(&HostRoom) -> bool,
) -> Option<usize> {
    let candidates = hosts.iter().enumerate().filter(|(_, h)| ok(h));
    match strategy {
        Strategy::Spread => candidates
            .max_by_key(|(_, h)| (h.free.cpus, h.free.memory_mib, std::cmp::Reverse(h.host_id)))
            .map(|(i, _)| i),
        Strategy::Pack => candidates
            .min_by_key(|(_, h)| (h.free.cpus, h.free.memory_mib, h.host_id))
            .map(|(i, _)| i),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(id: i64, site: i64, cpus: i64) -> HostRoom {
        HostRoom {
            host_id: id,
            host_name: format!("h{id}"),
            site_id: site,
            site_name: format!("s{site}"),
            free: Resources::new(cpus, cpus * 1024),
        }
    }

    fn req(anywhere: u32, strategy: Strategy, budgets: &[(i64, i64)]) -> Request {
        Request {
            anywhere,
            pinned: vec![],
            per_node: Resources::new(1, 512),
            strategy,
            existing: BTreeMap::new(),
            site_budget: budgets
                .iter()
                .map(|&(s, n)| (s, Resources::new(n, n * 1024)))
                .collect(),
        }
    }

    #[test]
    fn spread_puts_nodes_on_every_site() {
        let hosts = [host(1, 1, 8), host(2, 2, 8), host(3, 3, 8)];
        let placed = place(&req(6, Strategy::Spread, &[(1, 8), (2, 8), (3, 8)]), &hosts).unwrap();
        for h in [1, 2, 3] {
            assert_eq!(placed.iter().filter(|&&p| p == h).count(), 2, "{placed:?}");
        }
    }

    #[test]
    fn pack_fills_one_site_before_the_next() {
        let hosts = [host(1, 1, 4), host(2, 2, 8)];
        let placed = place(&req(6, Strategy::Pack, &[(1, 4), (2, 8)]), &hosts).unwrap();
        assert_eq!(placed.iter().filter(|&&p| p == 1).count(), 4, "{placed:?}");
        assert_eq!(placed.iter().filter(|&&p| p == 2).count(), 2, "{placed:?}");
    }

    #[test]
    fn site_budget_caps_a_site_even_when_hosts_have_room() {
        let hosts = [host(1, 1, 8), host(2, 2, 8)];
        let placed = place(&req(5, Strategy::Spread, &[(1, 1), (2, 8)]), &hosts).unwrap();
        assert_eq!(placed.iter().filter(|&&p| p == 1).count(), 1, "{placed:?}");
        let err = place(&req(10, Strategy::Spread, &[(1, 1), (2, 8)]), &hosts).unwrap_err();
        assert!(err.reason.contains("placed 9 of 10"), "{}", err.reason);
    }

    #[test]
    fn pinned_nodes_go_to_their_site_or_fail_naming_it() {
        let hosts = [host(1, 1, 2), host(2, 2, 8)];
        let mut r = req(0, Strategy::Spread, &[(1, 8), (2, 8)]);
        r.pinned = vec![(1, 2), (2, 1)];
        assert_eq!(place(&r, &hosts).unwrap(), vec![1, 1, 2]);
        r.pinned = vec![(1, 3)];
        let err = place(&r, &hosts).unwrap_err();
        assert!(
            err.reason.contains("site s1 has room for 2 of the 3"),
            "{}",
            err.reason
        );
    }

    mod property {
        use proptest::prelude::{Strategy as _, any, prop, prop_assert, prop_assert_eq, proptest};

        use super::*;

        fn room() -> impl proptest::strategy::Strategy<Value = Resources> {
            (any::<i64>(), any::<i64>()).prop_map(|(c, m)| Resources::new(c, m))
        }

        proptest! {
            /// Whatever the hosts' free room and the sites' budgets (negative, huge), no
            /// host and no site is handed more than it has, counted in 128 bits.
            #[test]
            fn placement_never_exceeds_a_host_or_a_site_budget(
                frees in prop::collection::vec((room(), 1i64..4), 1..8),
                budgets in prop::collection::vec(room(), 3),
                per_node in (1i64..=crate::model::MAX_NODE_CPUS, crate::model::MIN_NODE_MEMORY_MIB..=crate::model::MAX_NODE_MEMORY_MIB),
                anywhere in 0u32..200,
                pack in any::<bool>(),
            ) {
                let hosts: Vec<HostRoom> = frees
                    .iter()
                    .enumerate()
                    .map(|(i, (free, site))| HostRoom {
                        host_id: i as i64,
                        host_name: format!("h{i}"),
                        site_id: *site,
                        site_name: format!("s{site}"),
                        free: *free,
                    })
                    .collect();
                let request = Request {
                    anywhere,
                    pinned: vec![],
                    per_node: Resources::new(per_node.0, per_node.1),
                    strategy: if pack { Strategy::Pack } else { Strategy::Spread },
                    existing: BTreeMap::new(),
                    site_budget: (1..=3).zip(budgets.iter().copied()).collect(),
                };
                let Ok(placed) = place(&request, &hosts) else { return Ok(()) };
                prop_assert_eq!(placed.len(), anywhere as usize);
                let take = |n: usize| (
                    i128::from(request.per_node.cpus) * n as i128,
                    i128::from(request.per_node.memory_mib) * n as i128,
                );
                for h in &hosts {
                    let (c, m) = take(placed.iter().filter(|&&p| p == h.host_id).count());
                    prop_assert!(c <= i128::from(h.free.cpus).max(0) && m <= i128::from(h.free.memory_mib).max(0));
                }
                for (site, budget) in &request.site_budget {
                    let n = placed
                        .iter()
                        .filter(|&&p| hosts.iter().any(|h| h.host_id == p && h.site_id == *site))
                        .count();
                    let (c, m) = take(n);
                    prop_assert!(c <= i128::from(budget.cpus).max(0) && m <= i128::from(budget.memory_mib).max(0));
                }
            }
        }
    }
}
