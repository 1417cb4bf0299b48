//! The interfaces between the host agent and the host: a VM driver (creates, starts, stops
//! and destroys nodes; the `netns` driver is the first, QEMU/KVM comes next behind the
//! same trait) and the host's bridges (one per cluster, where node interfaces and the
//! overlay's TAP meet). Both report what actually exists, so the agent can reconcile
//! against the host rather than against its memory.
//!
//! Implementations must be idempotent: `ensure` on a node that exists brings it to the
//! spec; `remove` on a node that is gone succeeds.

use async_trait::async_trait;
use thiserror::Error;

use crate::model::{NodeSlot, NodeSpec};

#[derive(Debug, Error)]
pub enum DriverError {
    #[error("{command}: {message}")]
    Command { command: String, message: String },
    #[error("node {node}: {message}")]
    Node { node: String, message: String },
}

/// A node as the driver found it on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundNode {
    pub slot: NodeSlot,
    /// The node's name, when the driver can tell.
    pub name: Option<String>,
    pub running: bool,
}

#[async_trait]
pub trait VmDriver: Send + Sync {
    /// `netns`, `qemu`, ...
    fn kind(&self) -> &'static str;

    /// Every node of this driver on the host.
    async fn list(&self) -> Result<Vec<FoundNode>, DriverError>;

    /// Creates the node if missing, attached to `bridge`, with the spec's MAC and address,
    /// and brings it up or stops it as the spec says.
    async fn ensure(
        &self,
        slot: NodeSlot,
        bridge: &str,
        spec: &NodeSpec,
    ) -> Result<FoundNode, DriverError>;

    /// Destroys the node and everything the driver made for it.
    async fn remove(&self, slot: NodeSlot, name: Option<&str>) -> Result<(), DriverError>;

    /// Powers the node `name` on (a fenced or crashed node runs again) or off (fenced:
    /// every process of it stopped, confirmed, and it stays off until powered on);
    /// answers whether it runs afterwards.
    async fn power(&self, name: &str, on: bool) -> Result<bool, DriverError> {
        let _ = on;
        Err(DriverError::Node {
            node: name.to_string(),
            message: format!("the {} driver has no power control", self.kind()),
        })
    }

    /// Readies the host for this driver's nodes, once the agent has registered (so a
    /// command that fails earlier changes nothing on the host).
    fn prepare_host(&self) {}

    /// The accelerator the node's VM runs with (`kvm`, `tcg`), for drivers of real VMs.
    fn accel(&self, _name: &str) -> Option<String> {
        None
    }

    /// The node's console log (the serial console of a VM; a lightweight node's agent
    /// log), when the driver keeps one.
    fn console_log(&self, _name: &str) -> Option<std::path::PathBuf> {
        None
    }

    /// The Unix socket of the node's agent (see [`crate::node`]), when the driver runs
    /// one in its nodes.
    fn node_channel(&self, _name: &str) -> Option<std::path::PathBuf> {
        None
    }

    /// For a node without an agent channel: whether its hypervisor says its guest runs
    /// (the VM's process is alive and its run state is `running`, not paused, panicked or
    /// shut down). What the host vouches for when no agent can answer, as OpenNebula's
    /// monitoring reads a VM's state from its hypervisor.
    async fn guest_running(&self, _name: &str) -> bool {
        false
    }
}

#[async_trait]
pub trait HostBridges: Send + Sync {
    /// Creates the bridge if missing and sets it up.
    async fn ensure(&self, name: &str) -> Result<(), DriverError>;
    /// Deletes the bridge if it exists.
    async fn remove(&self, name: &str) -> Result<(), DriverError>;
    /// Names of the bridges on the host.
    async fn list(&self) -> Result<Vec<String>, DriverError>;
}
