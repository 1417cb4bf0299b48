//! An in-memory VM driver and bridge set for tests without root: it keeps nodes and
//! bridges in maps, checks that a node's bridge exists, and can be told to fail or hang
//! on a node to exercise rollbacks and timeouts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use async_trait::async_trait;
use vcluster::agent::driver::{DriverError, FoundNode, HostBridges, VmDriver};
use vcluster::model::{NodeSlot, NodeSpec};

#[derive(Debug, Clone)]
pub struct MemNode {
    pub spec: NodeSpec,
    pub bridge: String,
}

#[derive(Default)]
pub struct MemDriver {
    pub nodes: Mutex<BTreeMap<NodeSlot, MemNode>>,
    /// `ensure` fails for every node while set.
    pub fail: Mutex<Option<String>>,
    /// `ensure` never returns while set.
    pub hang: Mutex<bool>,
    pub bridges: Option<std::sync::Arc<MemBridges>>,
}

impl MemDriver {
    pub fn snapshot(&self) -> BTreeMap<NodeSlot, MemNode> {
        self.nodes.lock().unwrap().clone()
    }
    pub fn names(&self) -> BTreeSet<String> {
        self.snapshot()
            .values()
            .map(|n| n.spec.name.clone())
            .collect()
    }
}

#[async_trait]
impl VmDriver for MemDriver {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn list(&self) -> Result<Vec<FoundNode>, DriverError> {
        Ok(self
            .snapshot()
            .iter()
            .map(|(slot, n)| FoundNode {
                slot: *slot,
                name: Some(n.spec.name.clone()),
                running: n.spec.running,
            })
            .collect())
    }

    async fn ensure(
        &self,
        slot: NodeSlot,
        bridge: &str,
        spec: &NodeSpec,
    ) -> Result<FoundNode, DriverError> {
        if *self.hang.lock().unwrap() {
            std::future::pending::<()>().await;
        }
        if let Some(message) = self.fail.lock().unwrap().clone() {
            return Err(DriverError::Node {
                node: spec.name.clone(),
                message,
            });
        }
        self.nodes.lock().unwrap().insert(
            slot,
            MemNode {
                spec: spec.clone(),
                bridge: bridge.to_string(),
            },
        );
        Ok(FoundNode {
            slot,
            name: Some(spec.name.clone()),
            running: spec.running,
        })
    }

    async fn remove(&self, slot: NodeSlot, _name: Option<&str>) -> Result<(), DriverError> {
        self.nodes.lock().unwrap().remove(&slot);
        Ok(())
    }

    async fn power(&self, name: &str, on: bool) -> Result<bool, DriverError> {
        let mut nodes = self.nodes.lock().unwrap();
        let node = nodes
            .values_mut()
            .find(|n| n.spec.name == name)
            .ok_or_else(|| DriverError::Node {
                node: name.to_string(),
                message: "no such node on this host".to_string(),
            })?;
        node.spec.running = on;
        Ok(on)
    }
}

#[derive(Default)]
pub struct MemBridges {
    pub names: Mutex<BTreeSet<String>>,
}

impl MemBridges {
    pub fn snapshot(&self) -> BTreeSet<String> {
        self.names.lock().unwrap().clone()
    }
}

#[async_trait]
impl HostBridges for MemBridges {
    async fn ensure(&self, name: &str) -> Result<(), DriverError> {
        self.names.lock().unwrap().insert(name.to_string());
        Ok(())
    }
    async fn remove(&self, name: &str) -> Result<(), DriverError> {
        self.names.lock().unwrap().remove(name);
        Ok(())
    }
    async fn list(&self) -> Result<Vec<String>, DriverError> {
        Ok(self.snapshot().into_iter().collect())
    }
}
