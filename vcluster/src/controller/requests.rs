//! What a client may ask for, checked: every request body and query has a `validate`
//! method here that turns what was sent into the typed form a handler acts on, or answers
//! 422 naming the field at fault. Unknown fields were already refused when the body was
//! read (`deny_unknown_fields` on the model's request types).
//!
//! The bounds are `model`'s `MAX_*`/`MIN_*` constants, documented in docs/controller.md.
//! They keep every product and sum of request values far inside i64, and the products are
//! computed checked all the same: no size, count or product can wrap into a small or
//! negative number that admission would then accept.
//!
//! Nothing here reads the store: checks that need it (a site exists, a subnet is free,
//! capacity) belong to the handlers and to `capacity`/`placement`.

use std::net::SocketAddr;

use base64::Engine;
use ipnet::Ipv4Net;
use serde::Deserialize;
use utoipa::IntoParams;

use super::api::check_name;
use crate::api_error::ApiError;
use crate::model::{
    AddNodes, CreateCluster, CreateReservation, CreateSite, CreateUser, LEASE_START_SLACK_MINUTES,
    MAX_CLUSTER_NODES, MAX_HOST_CPUS, MAX_HOST_MEMORY_MIB, MAX_LEASE_HOURS, MAX_NODE_CPUS,
    MAX_NODE_MEMORY_MIB, MAX_RESERVATION_CPUS, MAX_RESERVATION_MEMORY_MIB, MAX_RESERVATION_NODES,
    MAX_TEXT_BYTES, MIN_NODE_MEMORY_MIB, RegisterHost, Resources, Strategy,
};

const HOUR_MS: i64 = 3_600_000;
const DEFAULT_NODE_CPUS: i64 = 1;
const DEFAULT_NODE_MEMORY_MIB: i64 = 512;

/// CPUs and memory of one node, within the per-node bounds.
fn node_shape(
    cpus: Option<i64>,
    memory_mib: Option<i64>,
    cpus_field: &str,
    memory_field: &str,
) -> Result<Resources, ApiError> {
    let cpus = cpus.unwrap_or(DEFAULT_NODE_CPUS);
    let memory_mib = memory_mib.unwrap_or(DEFAULT_NODE_MEMORY_MIB);
    if !(1..=MAX_NODE_CPUS).contains(&cpus) {
        return Err(ApiError::invalid(
            cpus_field,
            format!("{cpus_field} must be between 1 and {MAX_NODE_CPUS}; got {cpus}"),
        ));
    }
    if !(MIN_NODE_MEMORY_MIB..=MAX_NODE_MEMORY_MIB).contains(&memory_mib) {
        return Err(ApiError::invalid(
            memory_field,
            format!(
                "{memory_field} must be between {MIN_NODE_MEMORY_MIB} and {MAX_NODE_MEMORY_MIB} \
                 (16 TiB); got {memory_mib}"
            ),
        ));
    }
    Ok(Resources::new(cpus, memory_mib))
}

/// `nodes` (a reservation's count, field `nodes`) of the shape `node_cpus` x
/// `node_memory_mib`: the shape and the total. The bounds make the product small; it is
/// checked all the same.
fn nodes_of_shape(
    nodes: i64,
    node_cpus: Option<i64>,
    node_memory_mib: Option<i64>,
) -> Result<(Resources, Resources), ApiError> {
    if !(1..=MAX_RESERVATION_NODES).contains(&nodes) {
        return Err(ApiError::invalid(
            "nodes",
            format!("nodes must be between 1 and {MAX_RESERVATION_NODES}; got {nodes}"),
        ));
    }
    let per_node = node_shape(node_cpus, node_memory_mib, "node_cpus", "node_memory_mib")?;
    let total = per_node.checked_mul(nodes).ok_or_else(|| {
        ApiError::invalid(
            "nodes",
            format!(
                "{nodes} nodes of {} CPUs / {} MiB do not fit in a 64-bit count",
                per_node.cpus, per_node.memory_mib
            ),
        )
    })?;
    Ok((per_node, total))
}

fn free_text(field: &str, text: &str) -> Result<(), ApiError> {
    if text.len() > MAX_TEXT_BYTES {
        return Err(ApiError::invalid(
            field,
            format!("{field} is {} bytes; at most {MAX_TEXT_BYTES}", text.len()),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Clusters

/// A cluster as asked for, checked.
#[derive(Debug, Clone)]
pub struct ClusterRequest {
    pub name: String,
    /// Nodes placed by `strategy`.
    pub anywhere: u32,
    /// Nodes pinned per site (site name or id, count), counts above zero.
    pub pinned: Vec<(String, u32)>,
    pub per_node: Resources,
    pub strategy: Strategy,
    pub reservation: Option<i64>,
    pub subnet: Option<Ipv4Net>,
    pub recovery: crate::model::Recovery,
    /// The install profile's name.
    pub profile: Option<String>,
    /// The site of the provisioning frontend (name or id).
    pub frontend_site: Option<String>,
    pub node_firmware: crate::model::Firmware,
}

impl ClusterRequest {
    pub fn total_nodes(&self) -> u32 {
        self.anywhere + self.pinned.iter().map(|p| p.1).sum::<u32>()
    }
}

impl CreateCluster {
    pub fn validate(&self) -> Result<ClusterRequest, ApiError> {
        check_name("name", &self.name)?;
        let per_node = node_shape(
            self.node_cpus,
            self.node_memory_mib,
            "node_cpus",
            "node_memory_mib",
        )?;
        let mut pinned_total: u32 = 0;
        for (i, s) in self.sites.iter().enumerate() {
            pinned_total = pinned_total
                .checked_add(s.nodes)
                .filter(|&n| n <= MAX_CLUSTER_NODES)
                .ok_or_else(|| {
                    ApiError::invalid(
                        &format!("sites[{i}].nodes"),
                        format!("at most {MAX_CLUSTER_NODES} nodes per cluster"),
                    )
                })?;
        }
        let anywhere = match self.nodes {
            Some(n) if n > MAX_CLUSTER_NODES => {
                return Err(ApiError::invalid(
                    "nodes",
                    format!("at most {MAX_CLUSTER_NODES} nodes per cluster; got {n}"),
                ));
            }
            Some(n) if !self.sites.is_empty() => n.checked_sub(pinned_total).ok_or_else(|| {
                ApiError::invalid(
                    "nodes",
                    format!("nodes ({n}) is less than the {pinned_total} nodes pinned in sites"),
                )
            })?,
            Some(n) => n,
            None if !self.sites.is_empty() => 0,
            None => {
                return Err(ApiError::invalid(
                    "nodes",
                    "give nodes (a count) or sites (nodes per site)",
                ));
            }
        };
        if anywhere + pinned_total == 0 {
            return Err(ApiError::invalid(
                "nodes",
                "a cluster needs at least one node",
            ));
        }
        let subnet = self.subnet.as_deref().map(parse_subnet).transpose()?;
        if let Some(p) = &self.profile {
            check_name("profile", p)?;
        }
        if self.frontend_site.is_some() && self.profile.is_none() {
            return Err(ApiError::invalid(
                "frontend_site",
                "a frontend provisions nodes: give a profile too",
            ));
        }
        Ok(ClusterRequest {
            name: self.name.clone(),
            anywhere,
            pinned: self
                .sites
                .iter()
                .filter(|s| s.nodes > 0)
                .map(|s| (s.site.clone(), s.nodes))
                .collect(),
            per_node,
            strategy: self.strategy.unwrap_or(Strategy::Spread),
            reservation: self.reservation,
            subnet,
            recovery: self.recovery.unwrap_or(crate::model::Recovery::Restart),
            profile: self.profile.clone(),
            frontend_site: self.frontend_site.clone(),
            node_firmware: self.node_firmware.unwrap_or_default(),
        })
    }
}

fn parse_subnet(s: &str) -> Result<Ipv4Net, ApiError> {
    let net: Ipv4Net = s.parse().map_err(|_| {
        ApiError::invalid(
            "subnet",
            format!("subnet {s:?} is not an IPv4 network like 10.77.3.0/24"),
        )
    })?;
    if net != net.trunc() {
        return Err(ApiError::invalid(
            "subnet",
            format!(
                "subnet {s:?} has host bits set; did you mean {}?",
                net.trunc()
            ),
        ));
    }
    if !(8..=29).contains(&net.prefix_len()) {
        return Err(ApiError::invalid(
            "subnet",
            "subnet prefix must be between /8 and /29",
        ));
    }
    Ok(net)
}

impl AddNodes {
    /// The number of nodes to add.
    pub fn validate(&self) -> Result<u32, ApiError> {
        if !(1..=MAX_CLUSTER_NODES).contains(&self.count) {
            return Err(ApiError::invalid(
                "count",
                format!("count must be between 1 and {MAX_CLUSTER_NODES}"),
            ));
        }
        Ok(self.count)
    }
}

// ---------------------------------------------------------------------------------------
// Reservations

/// A lease as asked for, checked. Times are Unix milliseconds; the lease is `[start, end)`.
#[derive(Debug, Clone)]
pub struct ReservationRequest {
    pub site: Option<String>,
    /// Set when the lease counts nodes (then `amount` is nodes x their shape).
    pub nodes: Option<i64>,
    pub amount: Resources,
    pub start: i64,
    pub end: i64,
    pub note: String,
}

impl CreateReservation {
    pub fn validate(&self, now: i64) -> Result<ReservationRequest, ApiError> {
        let start = self.start.timestamp_millis();
        let end = self.end.timestamp_millis();
        if end <= start {
            return Err(ApiError::invalid("end", "end must be after start"));
        }
        if start < now.saturating_sub(LEASE_START_SLACK_MINUTES * 60_000) {
            return Err(ApiError::invalid("start", "start is in the past"));
        }
        // Both are within chrono's range, so the difference cannot overflow.
        if end - start > MAX_LEASE_HOURS * HOUR_MS {
            return Err(ApiError::invalid(
                "end",
                format!("a lease lasts at most {MAX_LEASE_HOURS} hours (366 days)"),
            ));
        }
        free_text("note", &self.note)?;
        let (nodes, amount) = self.amount()?;
        Ok(ReservationRequest {
            site: self.site.clone().filter(|s| !s.is_empty()),
            nodes,
            amount,
            start,
            end,
            note: self.note.clone(),
        })
    }

    /// What the request reserves: `nodes` of a shape, or raw `cpus`/`memory_mib`.
    fn amount(&self) -> Result<(Option<i64>, Resources), ApiError> {
        match (self.nodes, self.cpus, self.memory_mib) {
            (Some(n), None, None) => {
                let (_, total) = nodes_of_shape(n, self.node_cpus, self.node_memory_mib)?;
                Ok((Some(n), total))
            }
            (None, cpus, mem) if cpus.is_some() || mem.is_some() => {
                if self.node_cpus.is_some() || self.node_memory_mib.is_some() {
                    let field = if self.node_cpus.is_some() {
                        "node_cpus"
                    } else {
                        "node_memory_mib"
                    };
                    return Err(ApiError::invalid(
                        field,
                        format!("{field} goes with nodes, not with cpus/memory_mib"),
                    ));
                }
                let cpus = cpus.unwrap_or(0);
                let mem = mem.unwrap_or(0);
                if !(0..=MAX_RESERVATION_CPUS).contains(&cpus) {
                    return Err(ApiError::invalid(
                        "cpus",
                        format!("cpus must be between 0 and {MAX_RESERVATION_CPUS}; got {cpus}"),
                    ));
                }
                if !(0..=MAX_RESERVATION_MEMORY_MIB).contains(&mem) {
                    return Err(ApiError::invalid(
                        "memory_mib",
                        format!(
                            "memory_mib must be between 0 and {MAX_RESERVATION_MEMORY_MIB}; got {mem}"
                        ),
                    ));
                }
                if cpus == 0 && mem == 0 {
                    return Err(ApiError::invalid(
                        "cpus",
                        "reserve at least one CPU or some memory",
                    ));
                }
                Ok((None, Resources::new(cpus, mem)))
            }
            (Some(_), _, _) => Err(ApiError::invalid(
                "nodes",
                "give either nodes or cpus/memory_mib, not both",
            )),
            _ => Err(ApiError::invalid(
                "nodes",
                "give nodes, or cpus and/or memory_mib",
            )),
        }
    }
}

/// `GET /v1/reservations/earliest`: when can I get N nodes for D hours.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EarliestQuery {
    /// How many nodes (1 to 100000).
    pub nodes: i64,
    /// For how long, in hours (more than 0, at most 8784).
    pub hours: f64,
    /// Only this site (default: any).
    pub site: Option<String>,
    /// CPUs per node (default 1, at most 1024).
    pub node_cpus: Option<i64>,
    /// MiB per node (default 512, 16 to 16777216).
    pub node_memory_mib: Option<i64>,
}

/// An earliest-slot question, checked.
#[derive(Debug, Clone)]
pub struct EarliestRequest {
    pub nodes: i64,
    pub per_node: Resources,
    pub amount: Resources,
    pub duration_ms: i64,
    pub site: Option<String>,
}

impl EarliestQuery {
    pub fn validate(&self) -> Result<EarliestRequest, ApiError> {
        if !(self.hours > 0.0 && self.hours <= MAX_LEASE_HOURS as f64) {
            return Err(ApiError::invalid(
                "hours",
                format!("hours must be more than 0 and at most {MAX_LEASE_HOURS}"),
            ));
        }
        let (per_node, amount) = nodes_of_shape(self.nodes, self.node_cpus, self.node_memory_mib)?;
        Ok(EarliestRequest {
            nodes: self.nodes,
            per_node,
            amount,
            // At most 8784 h: the product is far inside i64.
            duration_ms: (self.hours * HOUR_MS as f64) as i64,
            site: self.site.clone(),
        })
    }
}

// ---------------------------------------------------------------------------------------
// Sites, hosts, users

impl CreateSite {
    pub fn validate(&self) -> Result<(), ApiError> {
        check_name("name", &self.name)?;
        free_text("description", &self.description)
    }
}

impl CreateUser {
    pub fn validate(&self) -> Result<(), ApiError> {
        check_name("name", &self.name)
    }
}

impl RegisterHost {
    /// `allow_plain_agents`: the controller itself runs `--insecure`, so a plain-HTTP
    /// agent URL off loopback is accepted too.
    pub fn validate(&self, allow_plain_agents: bool) -> Result<(), ApiError> {
        check_name("name", &self.name)?;
        if self.site.is_empty() {
            return Err(ApiError::invalid("site", "site is required"));
        }
        if !(1..=MAX_HOST_CPUS).contains(&self.cpus) {
            return Err(ApiError::invalid(
                "cpus",
                format!("cpus must be between 1 and {MAX_HOST_CPUS}"),
            ));
        }
        if !(1..=MAX_HOST_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(ApiError::invalid(
                "memory_mib",
                format!("memory_mib must be between 1 and {MAX_HOST_MEMORY_MIB}"),
            ));
        }
        let url = match self.agent_url.parse::<reqwest::Url>() {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => u,
            _ => {
                return Err(ApiError::invalid(
                    "agent_url",
                    format!("agent_url {:?} is not an http(s) URL", self.agent_url),
                ));
            }
        };
        match (url.scheme(), &self.agent_cert_sha256) {
            ("https", Some(f)) => {
                if f.parse::<crate::tls::Fingerprint>().is_err() {
                    return Err(ApiError::invalid(
                        "agent_cert_sha256",
                        format!("agent_cert_sha256 {f:?} is not a SHA-256 in hex"),
                    ));
                }
            }
            ("https", None) => {
                return Err(ApiError::invalid(
                    "agent_cert_sha256",
                    "an https agent_url needs agent_cert_sha256, the fingerprint the \
                     controller pins the agent by",
                ));
            }
            (_, Some(_)) => {
                return Err(ApiError::invalid(
                    "agent_cert_sha256",
                    "agent_cert_sha256 is for an https agent_url only",
                ));
            }
            _ => {
                let host = url.host_str().unwrap_or("");
                if !crate::tls::plain_http_allowed(host, allow_plain_agents) {
                    return Err(ApiError::invalid(
                        "agent_url",
                        format!(
                            "agent_url {} is plain HTTP off loopback: the agent secret would \
                             cross the network readable; run the agent with TLS (the default)",
                            self.agent_url
                        ),
                    ));
                }
            }
        }
        if self.agent_secret.len() < 16 || self.agent_secret.len() > MAX_TEXT_BYTES {
            return Err(ApiError::invalid(
                "agent_secret",
                format!("agent_secret must be 16 to {MAX_TEXT_BYTES} characters"),
            ));
        }
        if self.overlay_endpoint.parse::<SocketAddr>().is_err() {
            return Err(ApiError::invalid(
                "overlay_endpoint",
                format!(
                    "overlay_endpoint {:?} is not ip:port",
                    self.overlay_endpoint
                ),
            ));
        }
        let key = base64::engine::general_purpose::STANDARD.decode(&self.public_key);
        if !matches!(key, Ok(k) if k.len() == 32) {
            return Err(ApiError::invalid(
                "public_key",
                "public_key must be 32 bytes in standard base64 (vpnd's public key)",
            ));
        }
        free_text("driver", &self.driver)
    }
}

// ---------------------------------------------------------------------------------------
// The configuration database: roles, profiles, attributes, groups

mod profiles;
pub use profiles::check_role_list;
