//! The `netns` VM driver and Linux bridges, through iproute2's `ip`.
//!
//! A lightweight node is a network namespace named after the node (`<cluster>-node-<i>`)
//! whose `eth0` is one end of a veth pair; the other end, `vc<network hex>n<index>`, sits
//! on the cluster's bridge `vcbr<network hex>` in the host's namespace. The node has its
//! stable MAC and its static address on `eth0`; a stopped node has `eth0` down. Because
//! the names are derived from the network id and index, `list` can find every node of
//! ours from the veths alone, even after the agent lost its state file.
//!
//! It needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN for `ip netns`). It never touches a
//! device whose name does not follow these conventions; within a network namespace it
//! takes every device that does as its own (one agent per host namespace).

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use tokio::process::Command;

use super::driver::{DriverError, FoundNode, HostBridges, VmDriver};
use crate::model::{NodeSlot, NodeSpec};

/// One `ip` command may take this long before it is killed and reported.
const IP_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `ip ARGS...` and returns its stdout.
pub async fn ip(args: &[&str]) -> Result<String, DriverError> {
    let command = || format!("ip {}", args.join(" "));
    let run = Command::new("ip").args(args).kill_on_drop(true).output();
    let out = tokio::time::timeout(IP_TIMEOUT, run)
        .await
        .map_err(|_| DriverError::Command {
            command: command(),
            message: format!("no answer in {}s", IP_TIMEOUT.as_secs()),
        })?
        .map_err(|e| DriverError::Command {
            command: command(),
            message: format!("cannot run ip: {e}"),
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(DriverError::Command {
            command: format!("ip {}", args.join(" ")),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

#[derive(Debug, Deserialize)]
struct Link {
    ifname: String,
    #[serde(default)]
    operstate: Option<String>,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    link_netnsid: Option<i64>,
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    master: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Netns {
    name: String,
    #[serde(default)]
    id: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct AddrInfo {
    #[serde(default)]
    addr_info: Vec<Addr>,
}

#[derive(Debug, Deserialize)]
struct Addr {
    family: String,
    local: String,
    prefixlen: u8,
}

fn parse<T: for<'de> Deserialize<'de>>(what: &str, json: &str) -> Result<T, DriverError> {
    // `ip -j` prints nothing at all when there is nothing to list.
    let json = if json.trim().is_empty() { "[]" } else { json };
    serde_json::from_str(json).map_err(|e| DriverError::Command {
        command: what.to_string(),
        message: format!("unexpected JSON from ip: {e}"),
    })
}

async fn links(kind: &str) -> Result<Vec<Link>, DriverError> {
    parse(
        "ip -j link show type",
        &ip(&["-j", "link", "show", "type", kind]).await?,
    )
}

async fn link_exists(name: &str) -> bool {
    ip(&["link", "show", "dev", name]).await.is_ok()
}

async fn netns_list() -> Result<Vec<Netns>, DriverError> {
    parse("ip -j netns list", &ip(&["-j", "netns", "list"]).await?)
}

async fn netns_exists(name: &str) -> Result<bool, DriverError> {
    Ok(netns_list().await?.iter().any(|n| n.name == name))
}

/// Network namespace names become files under /run/netns: keep them plain.
fn check_netns_name(name: &str) -> Result<(), DriverError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(DriverError::Node {
            node: name.to_string(),
            message: "not a usable namespace name".to_string(),
        })
    }
}

/// Nodes as network namespaces on veths.
#[derive(Debug, Default, Clone)]
pub struct NetnsDriver;

impl NetnsDriver {
    pub fn new() -> NetnsDriver {
        NetnsDriver
    }

    /// Is `ip netns` usable here (root, iproute2 present)?
    pub async fn probe() -> Result<(), DriverError> {
        ip(&["netns", "list"]).await.map(|_| ())
    }
}

#[async_trait]
impl VmDriver for NetnsDriver {
    fn kind(&self) -> &'static str {
        "netns"
    }

    async fn list(&self) -> Result<Vec<FoundNode>, DriverError> {
        let veths = links("veth").await?;
        let namespaces = netns_list().await?;
        Ok(veths
            .iter()
            .filter_map(|l| {
                let slot = NodeSlot::from_host_veth_name(&l.ifname)?;
                let name = l
                    .link_netnsid
                    .and_then(|id| namespaces.iter().find(|n| n.id == Some(id)))
                    .map(|n| n.name.clone());
                // The host end is always up; it is UP only while the node's eth0 is up too.
                let running = l.operstate.as_deref() == Some("UP")
                    || (l.flags.iter().any(|f| f == "LOWER_UP")
                        && l.flags.iter().any(|f| f == "UP"));
                Some(FoundNode {
                    slot,
                    name,
                    running,
                })
            })
            .collect())
    }

    async fn ensure(
        &self,
        slot: NodeSlot,
        bridge: &str,
        spec: &NodeSpec,
    ) -> Result<FoundNode, DriverError> {
        let ns = spec.name.as_str();
        check_netns_name(ns)?;
        let veth = slot.host_veth_name();
        if !netns_exists(ns).await? {
            ip(&["netns", "add", ns]).await?;
        }
        let host_end: Option<Link> = match ip(&["-j", "link", "show", "dev", &veth]).await {
            Ok(out) => parse::<Vec<Link>>("ip -j link show dev", &out)?
                .into_iter()
                .next(),
            Err(_) => None,
        };
        let peer_in_ns = ip(&["-n", ns, "link", "show", "dev", "eth0"]).await.is_ok();
        if host_end.is_none() || !peer_in_ns {
            // Half a pair is no use: start again from nothing.
            if host_end.is_some() {
                ip(&["link", "del", "dev", &veth]).await?;
            }
            if peer_in_ns {
                ip(&["-n", ns, "link", "del", "dev", "eth0"]).await?;
            }
            ip(&[
                "link", "add", "name", &veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ])
            .await?;
        }
        let host_end = ip(&["-j", "link", "show", "dev", &veth]).await?;
        let host_end: Vec<Link> = parse("ip -j link show dev", &host_end)?;
        if host_end.first().and_then(|l| l.master.as_deref()) != Some(bridge) {
            ip(&["link", "set", "dev", &veth, "master", bridge]).await?;
        }
        ip(&["link", "set", "dev", &veth, "up"]).await?;
        ip(&["-n", ns, "link", "set", "dev", "lo", "up"]).await?;

        let eth0: Vec<Link> = parse(
            "ip -j link show dev eth0",
            &ip(&["-n", ns, "-j", "link", "show", "dev", "eth0"]).await?,
        )?;
        let mac = spec.mac.to_ascii_lowercase();
        if eth0.first().and_then(|l| l.address.as_deref()) != Some(mac.as_str()) {
            ip(&["-n", ns, "link", "set", "dev", "eth0", "down"]).await?;
            ip(&["-n", ns, "link", "set", "dev", "eth0", "address", &mac]).await?;
        }
        let addrs: Vec<AddrInfo> = parse(
            "ip -j addr show dev eth0",
            &ip(&["-n", ns, "-j", "addr", "show", "dev", "eth0"]).await?,
        )?;
        let have: Vec<String> = addrs
            .iter()
            .flat_map(|a| &a.addr_info)
            .filter(|a| a.family == "inet")
            .map(|a| format!("{}/{}", a.local, a.prefixlen))
            .collect();
        if have != [spec.address.clone()] {
            ip(&["-n", ns, "addr", "flush", "dev", "eth0"]).await?;
            ip(&["-n", ns, "addr", "add", &spec.address, "dev", "eth0"]).await?;
        }
        let state = if spec.running { "up" } else { "down" };
        ip(&["-n", ns, "link", "set", "dev", "eth0", state]).await?;
        Ok(FoundNode {
            slot,
            name: Some(spec.name.clone()),
            running: spec.running,
        })
    }

    async fn remove(&self, slot: NodeSlot, name: Option<&str>) -> Result<(), DriverError> {
        let veth = slot.host_veth_name();
        // Deleting one end of a veth deletes both, at once (a namespace's teardown can lag).
        if link_exists(&veth).await {
            ip(&["link", "del", "dev", &veth]).await?;
        }
        if let Some(ns) = name {
            check_netns_name(ns)?;
            if netns_exists(ns).await? {
                ip(&["netns", "del", ns]).await?;
            }
        }
        Ok(())
    }
}

/// Linux bridges through `ip link`.
#[derive(Debug, Default, Clone)]
pub struct LinuxBridges;

#[async_trait]
impl HostBridges for LinuxBridges {
    async fn ensure(&self, name: &str) -> Result<(), DriverError> {
        if !link_exists(name).await {
            ip(&["link", "add", "name", name, "type", "bridge"]).await?;
        }
        ip(&["link", "set", "dev", name, "up"]).await?;
        Ok(())
    }

    async fn remove(&self, name: &str) -> Result<(), DriverError> {
        if link_exists(name).await {
            ip(&["link", "del", "dev", name]).await?;
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<String>, DriverError> {
        Ok(links("bridge")
            .await?
            .into_iter()
            .map(|l| l.ifname)
            .collect())
    }
}
