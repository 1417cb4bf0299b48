//! The types that cross a process boundary: the controller's REST API, the host agent's
//! API and the desired state the controller hands to each host. The controller, the host
//! agent and the CLI all speak these, so a field means the same thing everywhere.
//!
//! This module also holds the naming conventions that make a host's state reconcilable:
//! the bridge, TAP and veth names and the MAC address of a node are pure functions of the
//! cluster's overlay network id and the node's index, so an agent that lost its memory can
//! still tell which devices are its own. It never does I/O and never talks to a store.

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The id of a cluster's overlay network (the same at every host, unique per controller)
/// and an Ethernet address: `vpn-core`'s types, as the vpnd control API carries them.
pub use vpnd_api::{MacAddr, NetworkId};

/// The host devices named after a cluster's overlay network.
pub trait NetworkDevices: Sized {
    /// The Linux bridge a cluster's nodes and its overlay TAP sit on at each host.
    /// `vcbr` + the id in hex: at most 12 characters (the kernel allows 15).
    fn bridge_name(self) -> String;

    /// The TAP device `vpnd` creates for this network: at most 13 characters.
    fn tap_name(self) -> String;

    /// Parses a name made by [`NetworkDevices::bridge_name`].
    fn from_bridge_name(name: &str) -> Option<Self>;

    /// Parses a name made by [`NetworkDevices::tap_name`].
    fn from_tap_name(name: &str) -> Option<Self>;
}

impl NetworkDevices for NetworkId {
    fn bridge_name(self) -> String {
        format!("vcbr{:x}", self.0)
    }

    fn tap_name(self) -> String {
        format!("vctap{:x}", self.0)
    }

    fn from_bridge_name(name: &str) -> Option<NetworkId> {
        parse_hex_id(name.strip_prefix("vcbr")?)
    }

    fn from_tap_name(name: &str) -> Option<NetworkId> {
        parse_hex_id(name.strip_prefix("vctap")?)
    }
}

fn parse_hex_id(hex: &str) -> Option<NetworkId> {
    if hex.is_empty() || hex.len() > 8 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(hex, 16).ok().map(NetworkId)
}

/// The largest node index: keeps the host-side veth name within 15 characters.
pub const MAX_NODE_INDEX: u32 = 9999;

/// Where one node sits on its host: its cluster's network and its index in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeSlot {
    pub network: NetworkId,
    pub index: u32,
}

impl NodeSlot {
    /// The host end of the node's veth: `vc<network hex>n<index>`, at most 15 characters.
    pub fn host_veth_name(self) -> String {
        format!("vc{:x}n{}", self.network.0, self.index)
    }

    /// The TAP device of the node's VM (QEMU driver): `vm<network hex>n<index>`, at most
    /// 15 characters.
    pub fn vm_tap_name(self) -> String {
        format!("vm{:x}n{}", self.network.0, self.index)
    }

    /// Parses a name made by [`NodeSlot::host_veth_name`].
    pub fn from_host_veth_name(name: &str) -> Option<NodeSlot> {
        let rest = name.strip_prefix("vc")?;
        let (hex, index) = rest.split_once('n')?;
        let network = parse_hex_id(hex)?;
        if index.is_empty() || index.len() > 4 || !index.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(NodeSlot {
            network,
            index: index.parse().ok()?,
        })
    }

    /// The node's MAC address: locally administered unicast, `02` then the low 24 bits
    /// of the network id then the index. Unique inside a cluster's broadcast domain and
    /// the same every time the node is created, so DHCP leases and ARP caches survive a
    /// reinstall.
    pub fn mac(self) -> MacAddr {
        let n = self.network.0.to_be_bytes();
        let i = (self.index as u16).to_be_bytes();
        MacAddr([0x02, n[1], n[2], n[3], i[0], i[1]])
    }
}

/// A node's name in its cluster: `<cluster>-node-<index>`. Stable for the node's life.
pub fn node_name(cluster: &str, index: u32) -> String {
    format!("{cluster}-node-{index}")
}

// ---------------------------------------------------------------------------------------
// Closed sets

/// A text that should name one member of a closed set (a state, a role, a task kind) but
/// names none: from a request, a store row or an agent. Never defaulted to some member.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {set} {value:?} (expected one of: {expected})")]
pub struct UnknownValue {
    pub set: &'static str,
    pub value: String,
    pub expected: &'static str,
}

/// Declares an enum whose members are written as fixed lower-case texts in JSON, in the
/// store and in metric labels: `as_str`, `Display`, `FromStr` and `TryFrom<String>` (the
/// store's rows decode through it) all agree, and an unknown text is an [`UnknownValue`].
macro_rules! closed_set {
    (
        $(#[$meta:meta])*
        pub enum $name:ident as $set:literal {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $text)] $variant, )+
        }

        impl $name {
            /// Every member, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(UnknownValue {
                        set: $set,
                        value: other.to_string(),
                        expected: concat!($($text, " "),+).trim_ascii_end(),
                    }),
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = UnknownValue;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                s.parse()
            }
        }
    };
}

// ---------------------------------------------------------------------------------------
// Limits: the bounds of every size and count the API takes (docs/controller.md). They keep
// every product and sum of them far inside i64; a value outside is a 422 naming its field.

/// CPUs per node.
pub const MAX_NODE_CPUS: i64 = 1024;
/// Memory per node, in MiB: at least 16 MiB, at most 16 TiB.
pub const MIN_NODE_MEMORY_MIB: i64 = 16;
pub const MAX_NODE_MEMORY_MIB: i64 = 16 * 1024 * 1024;
/// Nodes of one cluster, and nodes one request adds.
pub const MAX_CLUSTER_NODES: u32 = MAX_NODE_INDEX;
/// Nodes of one reservation.
pub const MAX_RESERVATION_NODES: i64 = 100_000;
/// CPUs and memory of one reservation (also when given as `cpus`/`memory_mib`).
pub const MAX_RESERVATION_CPUS: i64 = MAX_RESERVATION_NODES * MAX_NODE_CPUS;
pub const MAX_RESERVATION_MEMORY_MIB: i64 = MAX_RESERVATION_NODES * MAX_NODE_MEMORY_MIB;
/// A host's CPUs and memory (MiB) as its agent registers them.
pub const MAX_HOST_CPUS: i64 = 100_000;
pub const MAX_HOST_MEMORY_MIB: i64 = 1 << 40;
/// The longest lease, in hours (366 days).
pub const MAX_LEASE_HOURS: i64 = 366 * 24;
/// How far in the past a lease may start (clock skew between client and controller), in minutes.
pub const LEASE_START_SLACK_MINUTES: i64 = 5;
/// Free text (a site's description, a reservation's note), in bytes.
pub const MAX_TEXT_BYTES: usize = 1024;
/// A request body, in bytes; larger ones are answered 413.
pub const MAX_BODY_BYTES: usize = 1 << 20;

// ---------------------------------------------------------------------------------------
// Errors

/// The body of every 4xx/5xx answer of the controller and the host agent.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiErrorBody {
    /// What went wrong, for a person.
    pub error: String,
    /// The request field at fault, when one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

// ---------------------------------------------------------------------------------------
// Users and tokens

closed_set! {
    pub enum Role as "role" {
        /// Sites, hosts, users and every cluster and reservation.
        Admin = "admin",
        /// Their own reservations and clusters; reads sites.
        User = "user",
        /// A host agent: registers its host, heartbeats, reads its host's desired state.
        Agent = "agent",
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct User {
    pub id: i64,
    pub name: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub name: String,
    pub role: Role,
}

/// A new bearer token. The controller keeps only its hash: this is the one time it is shown.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IssuedToken {
    pub user: User,
    pub token: String,
}

// ---------------------------------------------------------------------------------------
// Sites and hosts

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSite {
    pub name: String,
    #[serde(default)]
    pub description: String,
}

/// Capacity and use, in CPUs and MiB. `capacity` already includes the overcommit ratio.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Resources {
    pub cpus: i64,
    pub memory_mib: i64,
}

impl Resources {
    pub fn new(cpus: i64, memory_mib: i64) -> Resources {
        Resources { cpus, memory_mib }
    }
    /// A sum that saturates instead of wrapping. Requests are bounded (the `MAX_*`
    /// constants) so that sums of them never come near; admission does its own sums in
    /// 128 bits (`controller::capacity`), so a saturated value can never admit anything.
    pub fn plus(self, o: Resources) -> Resources {
        Resources::new(
            self.cpus.saturating_add(o.cpus),
            self.memory_mib.saturating_add(o.memory_mib),
        )
    }
    /// A difference that saturates instead of wrapping (see [`Resources::plus`]).
    pub fn minus(self, o: Resources) -> Resources {
        Resources::new(
            self.cpus.saturating_sub(o.cpus),
            self.memory_mib.saturating_sub(o.memory_mib),
        )
    }
    /// `n` times `self`, or `None` when a dimension does not fit in i64.
    pub fn checked_mul(self, n: i64) -> Option<Resources> {
        Some(Resources::new(
            self.cpus.checked_mul(n)?,
            self.memory_mib.checked_mul(n)?,
        ))
    }
    /// True when every dimension of `self` fits in `room`.
    pub fn fits_in(self, room: Resources) -> bool {
        self.cpus <= room.cpus && self.memory_mib <= room.memory_mib
    }
    pub fn max(self, o: Resources) -> Resources {
        Resources::new(self.cpus.max(o.cpus), self.memory_mib.max(o.memory_mib))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Site {
    pub id: i64,
    pub name: String,
    pub description: String,
    /// Enabled hosts and how many of them heartbeat.
    pub hosts: i64,
    pub hosts_online: i64,
    /// Sum of the enabled hosts' capacity times the overcommit ratios.
    pub capacity: Resources,
    /// Held by nodes that are not stopped, failed or deleted.
    pub in_use: Resources,
    /// Held now by accepted reservations.
    pub reserved: Resources,
    pub created_at: DateTime<Utc>,
}

/// One point of a site's timeline. Past points are samples; future points come from
/// accepted reservations (their `in_use` is the current value, carried forward).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TimelinePoint {
    pub at: DateTime<Utc>,
    pub capacity: Resources,
    pub in_use: Resources,
    pub reserved: Resources,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SiteTimeline {
    pub site: String,
    pub now: DateTime<Utc>,
    pub points: Vec<TimelinePoint>,
}

/// What a host agent says about its host when it starts.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterHost {
    pub name: String,
    pub site: String,
    pub cpus: i64,
    pub memory_mib: i64,
    /// Where the controller reaches the agent, e.g. `https://10.0.0.5:7300`.
    pub agent_url: String,
    /// The secret the controller must present to the agent (bearer token).
    pub agent_secret: String,
    /// The SHA-256 fingerprint of the agent's TLS certificate, which the controller pins
    /// when it calls the agent; required for an `https://` agent URL.
    #[serde(default)]
    pub agent_cert_sha256: Option<String>,
    /// The host's `vpnd` UDP endpoint as other sites reach it, `ip:port`.
    pub overlay_endpoint: String,
    /// The host's `vpnd` public key (base64), from vpnd's `GET /v1/status`.
    pub public_key: String,
    /// The VM driver the agent runs (`netns`, `qemu`).
    #[serde(default)]
    pub driver: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Host {
    pub id: i64,
    pub name: String,
    pub site: String,
    pub cpus: i64,
    pub memory_mib: i64,
    pub agent_url: String,
    pub overlay_endpoint: String,
    pub public_key: String,
    pub driver: String,
    /// Disabled hosts get no new nodes and count for no capacity.
    pub enabled: bool,
    /// Heartbeat seen within the controller's host timeout.
    pub online: bool,
    pub last_seen: Option<DateTime<Utc>>,
    /// Held by this host's live nodes.
    pub in_use: Resources,
    pub nodes: i64,
    pub registered_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateHost {
    pub enabled: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// Nodes the agent found on the host.
    #[serde(default)]
    pub nodes: Vec<ObservedNode>,
    /// Overlay networks present in the host's vpnd.
    #[serde(default)]
    pub networks: Vec<u32>,
    /// The agents of the host's running nodes, asked just before this beat.
    #[serde(default)]
    pub node_agents: Vec<NodeAgentReport>,
    /// Running nodes whose driver gives them no agent channel (a VM without one yet) and
    /// whose hypervisor says their guest runs: the host vouches for them, and monitoring
    /// counts that as their answer (a VM killed, crashed, paused or shut down is missing
    /// here and goes down after the same beats as a silent agent).
    #[serde(default)]
    pub vms_running: Vec<String>,
    /// The accelerator of each running VM (`kvm`, `tcg`), by node name.
    #[serde(default)]
    pub accel: BTreeMap<String, String>,
}

// ---------------------------------------------------------------------------------------
// Clusters and nodes

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Each node goes to the site with the fewest of the cluster's nodes, then the host
    /// with the most free room.
    Spread,
    /// Nodes stay together: the site already holding most of the cluster, then the
    /// fullest host that still fits.
    Pack,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SiteCount {
    pub site: String,
    pub nodes: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCluster {
    /// Lower-case letters, digits and `-`, starting with a letter, at most 32 characters.
    pub name: String,
    /// How many nodes, placed by `strategy`. Leave out when `sites` pins every node.
    #[serde(default)]
    pub nodes: Option<u32>,
    /// Nodes pinned per site.
    #[serde(default)]
    pub sites: Vec<SiteCount>,
    #[serde(default)]
    pub strategy: Option<Strategy>,
    /// Place the cluster inside this accepted reservation.
    #[serde(default)]
    pub reservation: Option<i64>,
    /// CPUs per node (default 1).
    #[serde(default)]
    pub node_cpus: Option<i64>,
    /// Memory per node in MiB (default 512).
    #[serde(default)]
    pub node_memory_mib: Option<i64>,
    /// BIOS (default) or UEFI firmware for its nodes' VMs.
    #[serde(default)]
    pub node_firmware: Option<Firmware>,
    /// The nodes' IPv4 subnet, e.g. `10.77.3.0/24`; chosen from the controller's pool when left out.
    #[serde(default)]
    pub subnet: Option<String>,
    /// What to do with nodes that go down (default `restart`).
    #[serde(default)]
    pub recovery: Option<Recovery>,
    /// The install profile of its nodes. Every node's profile is rendered before the
    /// cluster is accepted: a template error is a 422 and nothing is created.
    #[serde(default)]
    pub profile: Option<String>,
    /// The site whose host runs the cluster's provisioning frontend (DHCP, PXE, install
    /// reports), nodes there or not; default: the host of the lowest-index node.
    #[serde(default)]
    pub frontend_site: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddNodes {
    pub count: u32,
    /// Pin the new nodes to a site.
    #[serde(default)]
    pub site: Option<String>,
    #[serde(default)]
    pub strategy: Option<Strategy>,
    /// The new nodes' firmware (default: the cluster's `node_firmware`).
    #[serde(default)]
    pub firmware: Option<Firmware>,
}

closed_set! {
    /// What the controller does with a node that goes down.
    pub enum Recovery as "recovery policy" {
        /// Nothing: it stays down (and says so).
        Off = "off",
        /// Fence it (power off through its host, confirmed), then start it again; with
        /// backoff, until the retry limit, then `failed`.
        Restart = "restart",
        /// As `restart`, but an attempt after a restart that did not bring it back
        /// reinstalls it (a fresh node: a lightweight node's namespace is made anew).
        RestartThenReinstall = "restart-then-reinstall",
    }
}

closed_set! {
    /// What a host agent does to a node's power (`POST /agent/v1/nodes/{node}/power`).
    pub enum PowerAction as "power action" {
        /// Start it; a fenced or crashed node runs again.
        On = "on",
        /// Fence it: stop everything of it now, confirmed; it stays off (whatever the
        /// desired state says) until powered on.
        Off = "off",
        /// Off, then on.
        Reset = "reset",
        /// Destroy it and make it anew from the desired state (a fresh install).
        Reinstall = "reinstall",
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PowerRequest {
    pub action: PowerAction,
}

/// A node's power as its host agent left it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PowerState {
    pub node: String,
    pub running: bool,
}

/// `POST /v1/clusters/{cluster}/power`: power a node set (`on`, `off`, `reset`; a
/// reinstall goes through `POST /v1/clusters/{cluster}/reinstall`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PowerNodes {
    pub nodes: String,
    pub action: PowerAction,
}

/// What a node's power request came to: running after it, or why it failed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PowerOutcome {
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A piece of a node's serial console log (`GET .../console?offset=N`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsoleChunk {
    pub node: String,
    /// Where `text` starts in the log, in bytes.
    pub offset: u64,
    /// The log's size now: ask again from `offset + bytes` to follow it.
    pub size: u64,
    /// The bytes read.
    pub bytes: u64,
    /// Those bytes, as UTF-8 (invalid sequences replaced).
    pub text: String,
}

/// The most a console request returns at once.
pub const MAX_CONSOLE_CHUNK: u64 = 256 * 1024;

/// `PUT /v1/clusters/{cluster}/recovery`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetRecovery {
    pub policy: Recovery,
}

closed_set! {
    pub enum ClusterState as "cluster state" {
        /// Its nodes are being created or it is serving.
        Active = "active",
        /// Its reservation's lease ended: nodes and overlay were stopped.
        Expired = "expired",
        /// Being deleted.
        Deleting = "deleting",
        /// Creation or deletion failed: see `reason`. Nothing of it runs; delete it to clean up.
        Failed = "failed",
    }
}

closed_set! {
    pub enum OverlayState as "overlay state" {
        Running = "running",
        Stopped = "stopped",
    }
}

closed_set! {
    pub enum NodeState as "node state" {
        Requested = "requested",
        Creating = "creating",
        Running = "running",
        Stopping = "stopping",
        Stopped = "stopped",
        Deleted = "deleted",
        Failed = "failed",
    }
}

impl NodeState {
    /// A node in this state holds its host's CPU and memory.
    pub fn holds_resources(self) -> bool {
        matches!(
            self,
            NodeState::Requested | NodeState::Creating | NodeState::Running | NodeState::Stopping
        )
    }
}

closed_set! {
    /// What a node is meant to become: its current task moves `state` toward it.
    pub enum NodeTarget as "node target" {
        Running = "running",
        Stopped = "stopped",
        Deleted = "deleted",
    }
}

closed_set! {
    pub enum Health as "node health" {
        /// No report from the node's agent yet (since the node or the controller started).
        Unknown = "unknown",
        /// Its agent answered its host within the last k heartbeats (a VM without an
        /// agent channel: its host saw its guest running).
        Up = "up",
        /// Its agent has not answered for k heartbeats (Ganglia's rule: k = 4), or its
        /// host has not seen its VM running for as long.
        Down = "down",
    }
}

closed_set! {
    pub enum SeenBy as "who answers for a node" {
        /// Its node agent answered its host.
        Agent = "agent",
        /// A VM without an agent channel: its host's hypervisor said its guest runs.
        Hypervisor = "hypervisor",
    }
}

/// What monitoring knows of a running node: the state its heartbeats give and the last
/// figures its agent reported.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeHealth {
    pub health: Health,
    /// Since when the node has been in this health.
    pub since: DateTime<Utc>,
    /// When its agent last answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load1: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_used_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_total_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_secs: Option<f64>,
    /// The last hour, one sample per heartbeat at most every minute: (unix ms, load1).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub load_history: Vec<(i64, f64)>,
    /// A VM's accelerator, as its host reports it: `kvm` or `tcg` (software emulation,
    /// where KVM cannot run guests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accel: Option<String>,
    /// Who last answered for it: `agent` (its node agent) or `hypervisor` (a VM without
    /// an agent channel, vouched for by its host: QEMU alive and running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen_by: Option<SeenBy>,
}

/// One node's agent as its host agent found it at a heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeAgentReport {
    pub name: String,
    /// What the agent answered, or `None` when it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<crate::node::metrics::NodeStatus>,
    /// Why it did not answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Node {
    pub id: i64,
    pub cluster: String,
    pub index: u32,
    pub name: String,
    pub host: String,
    pub site: String,
    pub mac: String,
    /// The node's address with prefix, e.g. `10.77.3.2/24`.
    pub address: String,
    pub cpus: i64,
    pub memory_mib: i64,
    /// BIOS or UEFI (for VMs).
    #[serde(default)]
    pub firmware: Firmware,
    pub state: NodeState,
    /// Why the node failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub updated_at: DateTime<Utc>,
    /// Monitoring's view of a running node (absent for others).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<NodeHealth>,
    /// The node's install, for nodes of provisioned clusters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install: Option<NodeInstall>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Cluster {
    pub id: i64,
    pub name: String,
    pub owner: String,
    pub network_id: u32,
    /// The overlay's pre-shared key (base64, 32 bytes). Shown to the owner and admins.
    pub psk: String,
    pub subnet: String,
    pub state: ClusterState,
    pub overlay: OverlayState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub reservation: Option<i64>,
    pub node_cpus: i64,
    pub node_memory_mib: i64,
    pub nodes: Vec<Node>,
    pub created_at: DateTime<Utc>,
    /// What the controller does with nodes that go down.
    pub recovery: Recovery,
    /// The install profile of its nodes (docs/provisioning.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// The host running its provisioning frontend, when chosen at create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frontend_host: Option<String>,
}

// ---------------------------------------------------------------------------------------
// Reservations

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateReservation {
    /// A site name; leave out for "anywhere" (the controller picks a site that fits).
    #[serde(default)]
    pub site: Option<String>,
    /// Nodes of `node_cpus` x `node_memory_mib` each. Give either `nodes` or `cpus`/`memory_mib`.
    #[serde(default)]
    pub nodes: Option<i64>,
    #[serde(default)]
    pub node_cpus: Option<i64>,
    #[serde(default)]
    pub node_memory_mib: Option<i64>,
    #[serde(default)]
    pub cpus: Option<i64>,
    #[serde(default)]
    pub memory_mib: Option<i64>,
    /// RFC 3339. The lease is `[start, end)`.
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    #[serde(default)]
    pub note: String,
}

closed_set! {
    pub enum ReservationState as "reservation state" {
        Accepted = "accepted",
        Cancelled = "cancelled",
        Expired = "expired",
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Reservation {
    pub id: i64,
    pub owner: String,
    pub site: String,
    pub nodes: Option<i64>,
    pub resources: Resources,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub state: ReservationState,
    pub note: String,
    /// Clusters placed inside this reservation.
    pub clusters: Vec<String>,
    pub created_at: DateTime<Utc>,
}

/// The answer to "when can I get N nodes for D hours".
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EarliestSlot {
    pub site: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub resources: Resources,
}

// ---------------------------------------------------------------------------------------
// Tasks and events

closed_set! {
    pub enum TaskState as "task state" {
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
    }
}

closed_set! {
    /// What a task does.
    pub enum TaskKind as "task kind" {
        CreateCluster = "create-cluster",
        AddNodes = "add-nodes",
        RemoveNode = "remove-node",
        StartOverlay = "start-overlay",
        StopOverlay = "stop-overlay",
        DeleteCluster = "delete-cluster",
        ExpireLease = "expire-lease",
    }
}

impl TaskState {
    pub fn is_finished(self) -> bool {
        self != TaskState::Running
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Task {
    pub id: i64,
    pub kind: TaskKind,
    pub owner: String,
    pub cluster: Option<String>,
    pub state: TaskState,
    pub message: String,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The task fails if it has not finished by then.
    pub deadline: DateTime<Utc>,
}

/// What an operation answers at once: the task that carries it out.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Accepted {
    pub task: Task,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<Cluster>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Event {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub kind: String,
    pub cluster: Option<String>,
    pub task: Option<i64>,
    pub message: String,
}

// ---------------------------------------------------------------------------------------
// Desired state: controller -> host agent

/// One peer of a cluster's overlay network: another host of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PeerSpec {
    pub name: String,
    pub public_key: String,
    pub endpoint: String,
}

/// A cluster's overlay network as one host must have it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    pub id: u32,
    pub name: String,
    pub psk: String,
    pub subnet: String,
    /// The overlay carries traffic (vpnd network started) or not (stopped).
    pub running: bool,
    pub peers: Vec<PeerSpec>,
}

/// One node as its host must have it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    pub index: u32,
    pub name: String,
    pub mac: String,
    /// With prefix, e.g. `10.77.3.2/24`.
    pub address: String,
    /// Up (true) or present but stopped (false).
    pub running: bool,
    /// Virtual CPUs (drivers that run real VMs; lightweight nodes share the host's).
    #[serde(default = "one_cpu")]
    pub cpus: u32,
    /// Memory in MiB (drivers that run real VMs).
    #[serde(default = "default_node_memory_mib")]
    pub memory_mib: u32,
    /// What the node boots from: the network while an install is pending, else its disk.
    #[serde(default)]
    pub boot: BootDevice,
    /// BIOS or UEFI (drivers that run real VMs).
    #[serde(default)]
    pub firmware: Firmware,
}

fn one_cpu() -> u32 {
    1
}

fn default_node_memory_mib() -> u32 {
    512
}

closed_set! {
    /// A VM's firmware (`NodeSpec::firmware`; lightweight nodes have none).
    #[derive(Default)]
    pub enum Firmware as "firmware" {
        /// SeaBIOS: PXE through the NIC's iPXE ROM, the installed disk boots with extlinux.
        #[default]
        Bios = "bios",
        /// OVMF (UEFI): the iPXE ROM's EFI driver, the installed disk boots with
        /// systemd-boot from its EFI system partition.
        Uefi = "uefi",
    }
}

closed_set! {
    /// The first boot device of a node that has a disk (`NodeSpec::boot`).
    #[derive(Default)]
    pub enum BootDevice as "boot device" {
        /// PXE first, the disk after it: while an install is pending.
        Network = "network",
        /// The disk only: an installed node never PXE-boots again by accident.
        #[default]
        Disk = "disk",
    }
}

/// A provisioned cluster's services on one host (docs/provisioning.md): the site-local
/// address at which every host serves its site's package cache (boot files and packages
/// cross the WAN once per site), and, on the cluster's frontend host only, the frontend:
/// DHCP with a static lease per node, PXE chaining to iPXE, and each node's iPXE script.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServicesSpec {
    /// With prefix, e.g. `10.77.3.254/24`: the subnet's last host address.
    pub site_address: String,
    /// The same at every site; its frames never cross the WAN.
    pub site_mac: String,
    #[serde(default)]
    pub frontend: Option<FrontendSpec>,
}

/// The provisioning frontend of a cluster, as its frontend host must run it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FrontendSpec {
    /// With prefix, e.g. `10.77.3.253/24`: the subnet's second-to-last host address.
    pub address: String,
    pub mac: String,
    /// One per node of the cluster, whatever its host: nodes not listed get no lease.
    pub leases: Vec<LeaseSpec>,
}

/// A node's static DHCP lease and the iPXE script it boots with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseSpec {
    pub node: String,
    pub mac: String,
    /// Without prefix.
    pub address: String,
    /// The node's iPXE script (`#!ipxe` ...), served to that node's address only.
    pub ipxe: String,
    /// The node's install token while it installs: the frontend adds it to what it
    /// relays for the node (the `pxe` report when the node fetches its script).
    #[serde(default)]
    pub token: Option<String>,
}

/// The addresses of a cluster's services in its subnet: the site-local address (the
/// last host address) and the frontend's (the one before it). Node addresses stop below
/// both.
pub fn service_addresses(subnet: ipnet::Ipv4Net) -> (std::net::Ipv4Addr, std::net::Ipv4Addr) {
    let last = u32::from(subnet.broadcast()).saturating_sub(1);
    (
        std::net::Ipv4Addr::from(last),
        std::net::Ipv4Addr::from(last.saturating_sub(1)),
    )
}

/// The MACs of a cluster's services: `02`, the network id's low 24 bits, then `ff:fe`
/// (site-local address) or `ff:fd` (frontend). Node MACs end in their index (at most
/// 9999), so these never collide with a node's.
pub fn service_macs(network: NetworkId) -> (MacAddr, MacAddr) {
    let n = network.0.to_be_bytes();
    (
        MacAddr([0x02, n[1], n[2], n[3], 0xff, 0xfe]),
        MacAddr([0x02, n[1], n[2], n[3], 0xff, 0xfd]),
    )
}

/// Everything of one cluster on one host, as of store revision `revision`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterOnHost {
    pub revision: i64,
    pub network: NetworkSpec,
    pub nodes: Vec<NodeSpec>,
    /// Present for clusters whose nodes are provisioned (they have a profile).
    #[serde(default)]
    pub services: Option<ServicesSpec>,
}

/// Everything a host must have, as of store revision `revision`: clusters not listed
/// must not exist on the host.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HostDesired {
    pub host_id: i64,
    pub revision: i64,
    pub clusters: Vec<ClusterOnHost>,
}

/// The strong ETag of what a host must have: a hash of its id and its clusters (in the
/// order of their networks), whatever the revision they were read at. The controller
/// tags its answers to a host's pull with it; the agent computes it too, over the copy
/// it holds once a push changed one cluster of it, so that the next pull of what it
/// already has is a `304`.
pub fn desired_etag(d: &HostDesired) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(d.host_id.to_le_bytes());
    let mut clusters: Vec<&ClusterOnHost> = d.clusters.iter().collect();
    clusters.sort_by_key(|c| c.network.id);
    for c in clusters {
        let c = ClusterOnHost {
            revision: 0,
            ..c.clone()
        };
        h.update(serde_json::to_vec(&c).expect("the desired state serializes"));
    }
    format!("\"{}\"", crate::cache::store::hex(&h.finalize()[..16]))
}

/// The header of a `304 Not Modified` answer to a host's desired-state pull: the store
/// revision its held copy stands for now.
pub const REVISION_HEADER: &str = "x-vcluster-revision";

/// A node an agent found on its host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ObservedNode {
    pub network: u32,
    pub index: u32,
    pub name: String,
    pub running: bool,
}

/// What an agent answers after applying a [`ClusterOnHost`].
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AppliedCluster {
    pub network: u32,
    /// False when the agent ignored the request because it already applied a newer revision.
    pub applied: bool,
    pub nodes: Vec<ObservedNode>,
}

/// What an agent has on its host.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AgentState {
    pub host_id: Option<i64>,
    pub networks: Vec<u32>,
    pub nodes: Vec<ObservedNode>,
    pub last_revision: i64,
}

/// The host's registration as the controller answers it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Registered {
    pub host: Host,
    /// How often the controller expects a heartbeat.
    pub heartbeat_secs: u64,
}

// ---------------------------------------------------------------------------------------
// Profiles: the configuration database (attributes, roles, profiles, groups)

pub mod install;
pub mod profiles;
pub use install::*;
pub use profiles::*;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_fit_the_kernel_limit_and_parse_back() {
        for id in [1u32, 7, 0xabcdef, u32::MAX] {
            let net = NetworkId(id);
            assert!(net.bridge_name().len() <= 15, "{}", net.bridge_name());
            assert!(net.tap_name().len() <= 15, "{}", net.tap_name());
            assert_eq!(NetworkId::from_bridge_name(&net.bridge_name()), Some(net));
            assert_eq!(NetworkId::from_tap_name(&net.tap_name()), Some(net));
            let slot = NodeSlot {
                network: net,
                index: MAX_NODE_INDEX,
            };
            assert!(slot.vm_tap_name().len() <= 15, "{}", slot.vm_tap_name());
            assert!(
                slot.host_veth_name().len() <= 15,
                "{}",
                slot.host_veth_name()
            );
            assert_eq!(
                NodeSlot::from_host_veth_name(&slot.host_veth_name()),
                Some(slot)
            );
        }
        assert_eq!(NetworkId::from_bridge_name("br0"), None);
        assert_eq!(NetworkId::from_bridge_name("vcbrzz"), None);
        assert_eq!(NodeSlot::from_host_veth_name("vcan"), None);
        assert_eq!(NodeSlot::from_host_veth_name("veth0"), None);
    }

    #[test]
    fn node_mac_is_stable_local_unicast_and_distinct_per_index() {
        let a = NodeSlot {
            network: NetworkId(0x123456),
            index: 1,
        };
        let b = NodeSlot {
            network: NetworkId(0x123456),
            index: 2,
        };
        assert_eq!(a.mac().to_string(), "02:12:34:56:00:01");
        assert_eq!(a.mac(), a.mac());
        assert_ne!(a.mac(), b.mac());
        assert_eq!(a.mac().0[0] & 0x03, 0x02, "locally administered, unicast");
        assert_eq!("02:12:34:56:00:01".parse::<MacAddr>().unwrap(), a.mac());
        assert!("02:12:34:56:00".parse::<MacAddr>().is_err());
        assert!("02:12:34:56:00:01:02".parse::<MacAddr>().is_err());
    }
}
