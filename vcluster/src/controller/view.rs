//! The controller's view of capacity at one instant, read from the store inside the
//! caller's transaction: every host's room, every site's ledger (see `capacity`), and what
//! each reservation's clusters hold. Admission, placement, the sites listing, the usage
//! samples and the metrics all read this one view, so they agree.
//!
//! It only reads; it never decides.

use std::collections::{BTreeMap, HashMap};

use sqlx::AnyConnection;

use super::capacity::{Lease, SiteLedger};
use super::placement::HostRoom;
use super::store::{self, HostRow, ReservationRow, SiteRow, StoreError, ms_to_time};
use crate::model::{self, Resources};

/// CPU and memory overcommit ratios: a host with 8 CPUs and ratio 4 takes 32 one-CPU nodes.
#[derive(Debug, Clone, Copy)]
pub struct Overcommit {
    pub cpu: f64,
    pub memory: f64,
}

impl Overcommit {
    pub fn apply(self, cpus: i64, memory_mib: i64) -> Resources {
        Resources::new(
            (cpus as f64 * self.cpu).floor() as i64,
            (memory_mib as f64 * self.memory).floor() as i64,
        )
    }
}

pub struct CapacityView {
    pub now: i64,
    pub sites: Vec<SiteRow>,
    pub hosts: Vec<HostRow>,
    pub host_timeout_ms: i64,
    pub overcommit: Overcommit,
    /// Held by each host's live nodes, and how many nodes it has (any state but deleted).
    pub host_use: HashMap<i64, (Resources, i64)>,
    /// Held by live nodes at each site, reserved or not.
    pub site_use: HashMap<i64, Resources>,
    pub ledgers: BTreeMap<i64, SiteLedger>,
    /// Accepted, not ended reservations.
    pub reservations: Vec<ReservationRow>,
    /// Held by each live reservation's nodes: resources and node count.
    pub reservation_use: HashMap<i64, (Resources, i64)>,
}

impl CapacityView {
    pub async fn load(
        c: &mut AnyConnection,
        now: i64,
        overcommit: Overcommit,
        host_timeout_ms: i64,
    ) -> Result<CapacityView, StoreError> {
        let sites = store::list_sites(c).await?;
        let hosts = store::list_hosts(c).await?;
        let clusters = store::list_clusters(c, None).await?;
        let nodes = store::all_nodes(c).await?;
        let reservations = store::live_reservations(c, now).await?;

        let cluster_reservation: HashMap<i64, Option<i64>> =
            clusters.iter().map(|c| (c.id, c.reservation_id)).collect();
        let host_site: HashMap<i64, i64> = hosts.iter().map(|h| (h.id, h.site_id)).collect();
        let live_lease: HashMap<i64, &ReservationRow> =
            reservations.iter().map(|r| (r.id, r)).collect();

        let mut host_use: HashMap<i64, (Resources, i64)> = HashMap::new();
        let mut site_use: HashMap<i64, Resources> = HashMap::new();
        let mut unreserved: HashMap<i64, Resources> = HashMap::new();
        let mut reservation_use: HashMap<i64, (Resources, i64)> = HashMap::new();
        for n in &nodes {
            let state = n.state();
            if state != model::NodeState::Deleted {
                host_use.entry(n.host_id).or_default().1 += 1;
            }
            if !state.holds_resources() {
                continue;
            }
            let held = Resources::new(n.cpus, n.memory_mib);
            let e = host_use.entry(n.host_id).or_default();
            e.0 = e.0.plus(held);
            let site = host_site.get(&n.host_id).copied().unwrap_or_default();
            let s = site_use.entry(site).or_default();
            *s = s.plus(held);
            let lease = cluster_reservation
                .get(&n.cluster_id)
                .copied()
                .flatten()
                .filter(|r| live_lease.contains_key(r));
            match lease {
                Some(r) => {
                    let e = reservation_use.entry(r).or_default();
                    e.0 = e.0.plus(held);
                    e.1 += 1;
                }
                None => {
                    let u = unreserved.entry(site).or_default();
                    *u = u.plus(held);
                }
            }
        }

        let mut ledgers: BTreeMap<i64, SiteLedger> = sites
            .iter()
            .map(|s| (s.id, SiteLedger::default()))
            .collect();
        for h in hosts.iter().filter(|h| h.enabled != 0) {
            if let Some(l) = ledgers.get_mut(&h.site_id) {
                l.capacity = l.capacity.plus(overcommit.apply(h.cpus, h.memory_mib));
            }
        }
        for (site, used) in &unreserved {
            if let Some(l) = ledgers.get_mut(site) {
                l.unreserved_use = *used;
            }
        }
        for r in &reservations {
            if let Some(l) = ledgers.get_mut(&r.site_id) {
                l.leases.push(Lease {
                    id: r.id,
                    start: r.starts_at,
                    end: r.ends_at,
                    amount: r.resources(),
                });
            }
        }
        Ok(CapacityView {
            now,
            sites,
            hosts,
            host_timeout_ms,
            overcommit,
            host_use,
            site_use,
            ledgers,
            reservations,
            reservation_use,
        })
    }

    /// Online, enabled hosts and their free room.
    pub fn host_rooms(&self) -> Vec<HostRoom> {
        self.hosts
            .iter()
            .filter(|h| h.enabled != 0 && h.is_online(self.now, self.host_timeout_ms))
            .map(|h| {
                let cap = self.overcommit.apply(h.cpus, h.memory_mib);
                let used = self.host_use.get(&h.id).map(|u| u.0).unwrap_or_default();
                HostRoom {
                    host_id: h.id,
                    host_name: h.name.clone(),
                    site_id: h.site_id,
                    site_name: h.site_name.clone(),
                    free: cap.minus(used),
                }
            })
            .collect()
    }

    pub fn ledger(&self, site_id: i64) -> SiteLedger {
        self.ledgers.get(&site_id).cloned().unwrap_or_default()
    }

    pub fn site_model(&self, s: &SiteRow) -> model::Site {
        let ledger = self.ledger(s.id);
        let hosts: Vec<&HostRow> = self
            .hosts
            .iter()
            .filter(|h| h.site_id == s.id && h.enabled != 0)
            .collect();
        model::Site {
            id: s.id,
            name: s.name.clone(),
            description: s.description.clone(),
            hosts: hosts.len() as i64,
            hosts_online: hosts
                .iter()
                .filter(|h| h.is_online(self.now, self.host_timeout_ms))
                .count() as i64,
            capacity: ledger.capacity,
            in_use: self.site_use.get(&s.id).copied().unwrap_or_default(),
            reserved: ledger.reserved_at(self.now),
            created_at: ms_to_time(s.created_at),
        }
    }

    pub fn host_model(&self, h: &HostRow) -> model::Host {
        let (in_use, nodes) = self.host_use.get(&h.id).copied().unwrap_or_default();
        host_model(h, self.now, self.host_timeout_ms, in_use, nodes)
    }
}

pub fn host_model(
    h: &HostRow,
    now: i64,
    host_timeout_ms: i64,
    in_use: Resources,
    nodes: i64,
) -> model::Host {
    model::Host {
        id: h.id,
        name: h.name.clone(),
        site: h.site_name.clone(),
        cpus: h.cpus,
        memory_mib: h.memory_mib,
        agent_url: h.agent_url.clone(),
        overlay_endpoint: h.overlay_endpoint.clone(),
        public_key: h.public_key.clone(),
        driver: h.driver.clone(),
        enabled: h.enabled != 0,
        online: h.is_online(now, host_timeout_ms),
        last_seen: h.last_seen.map(ms_to_time),
        in_use,
        nodes,
        registered_at: ms_to_time(h.registered_at),
    }
}
