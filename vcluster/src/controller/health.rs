//! Monitoring (Ganglia's role): each host agent's heartbeat carries what the agents of
//! its running nodes answered; a node whose agent has not answered for `k` heartbeats
//! (`--down-after-beats`, Ganglia's 4 by default) is `down`, and `up` again at the next
//! answer. Each change is written to the event log. The figures (load, memory, uptime,
//! an hour of load samples for the portal's chart) are kept in memory, as gmetad keeps
//! its round-robin data: after a controller restart nodes are `unknown` until their
//! next report.
//!
//! A node being installed (its install neither `booted` nor `failed`) has no agent by
//! design: its install reports and its phase timeout watch it, not the heartbeats. Its
//! silence is not counted, and its clock starts anew when the install ends (a reinstall
//! does not find the node "silent since" its agent of before the reinstall, and recovery
//! never fences a node in the middle of its install).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use crate::model::{Health, NodeAgentReport, NodeHealth, NodeState, SeenBy};

use super::store::{NodeRow, ms_to_time};

/// One load sample a minute at most, an hour of them.
const SAMPLE_EVERY_MS: i64 = 60_000;
const HISTORY: usize = 60;

#[derive(Debug, Clone)]
struct Record {
    health: Health,
    since_ms: i64,
    last_seen_ms: Option<i64>,
    /// When this controller first expected a report (the node's down clock starts here
    /// when it never reported).
    watched_since_ms: i64,
    status: Option<crate::node::metrics::NodeStatus>,
    history: VecDeque<(i64, f64)>,
    /// Who last answered for it: its agent, or (a VM without an agent channel) its host,
    /// from the hypervisor's view.
    seen_by: Option<SeenBy>,
    /// Its install is under way (as of the last sweep): an answer does not make it up.
    installing: bool,
    /// Its VM's accelerator, as its host last said.
    accel: Option<String>,
}

impl Record {
    fn new(now: i64) -> Record {
        Record {
            health: Health::Unknown,
            since_ms: now,
            last_seen_ms: None,
            watched_since_ms: now,
            status: None,
            history: VecDeque::new(),
            seen_by: None,
            installing: false,
            accel: None,
        }
    }

    /// It answered (through `by`) at `now`: up. When it was down, how long it was silent.
    fn seen(&mut self, by: SeenBy, now: i64) -> Option<i64> {
        if self.installing {
            // A VM network-booting its installer runs, but nothing of the node does yet.
            return None;
        }
        let back =
            (self.health == Health::Down).then(|| now - self.last_seen_ms.unwrap_or(self.since_ms));
        if self.health != Health::Up {
            self.health = Health::Up;
            self.since_ms = now;
        }
        self.last_seen_ms = Some(now);
        self.seen_by = Some(by);
        back
    }
}

/// A change of a node's health, to be written to the event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub node: String,
    pub cluster: String,
    pub owner_id: Option<i64>,
    pub to: Health,
    pub message: String,
}

#[derive(Default)]
pub struct Monitor {
    nodes: Mutex<HashMap<String, Record>>,
    /// Each host's last known online state (by id).
    hosts: Mutex<HashMap<i64, bool>>,
}

impl Monitor {
    pub fn new() -> Monitor {
        Monitor::default()
    }

    /// A host's heartbeat: nodes whose agent answered are seen now; a node that was down
    /// is up again (returned, for the event log).
    pub fn beat(&self, reports: &[NodeAgentReport], now: i64) -> Vec<(String, i64)> {
        let mut nodes = self.nodes.lock().expect("monitor");
        let mut back = Vec::new();
        for r in reports {
            let Some(status) = &r.status else { continue };
            let rec = nodes
                .entry(r.name.clone())
                .or_insert_with(|| Record::new(now));
            if let Some(silent) = rec.seen(SeenBy::Agent, now) {
                back.push((r.name.clone(), silent));
            }
            if rec
                .history
                .back()
                .is_none_or(|(t, _)| now - t >= SAMPLE_EVERY_MS)
            {
                rec.history.push_back((now, status.load[0]));
                while rec.history.len() > HISTORY {
                    rec.history.pop_front();
                }
            }
            rec.status = Some(status.clone());
        }
        back
    }

    /// The VMs (nodes without an agent channel) whose host says their guest runs: seen
    /// now, by the hypervisor's view; a VM that was down is up again (returned).
    pub fn vms_running(&self, names: &[String], now: i64) -> Vec<(String, i64)> {
        let mut nodes = self.nodes.lock().expect("monitor");
        let mut back = Vec::new();
        for name in names {
            let rec = nodes
                .entry(name.clone())
                .or_insert_with(|| Record::new(now));
            if let Some(silent) = rec.seen(SeenBy::Hypervisor, now) {
                back.push((name.clone(), silent));
            }
        }
        back
    }

    /// Each VM's accelerator, as its host reports it.
    pub fn accel(&self, accel: &std::collections::BTreeMap<String, String>) {
        let mut nodes = self.nodes.lock().expect("monitor");
        for (name, a) in accel {
            if let Some(rec) = nodes.get_mut(name) {
                rec.accel = Some(a.clone());
            }
        }
    }

    /// Looks at every node: running nodes silent for longer than `down_after_ms` go down
    /// (returned); nodes that are not running are forgotten; nodes whose install is under
    /// way (by node id, in `installing`) are neither up nor down, and watched afresh once
    /// it ends.
    pub fn sweep(
        &self,
        running: &[NodeRow],
        installing: &HashSet<i64>,
        now: i64,
        down_after_ms: i64,
    ) -> Vec<Change> {
        let mut nodes = self.nodes.lock().expect("monitor");
        let live: HashMap<&str, &NodeRow> = running
            .iter()
            .filter(|n| n.state == NodeState::Running)
            .map(|n| (n.name.as_str(), n))
            .collect();
        nodes.retain(|name, _| live.contains_key(name.as_str()));
        let mut changes = Vec::new();
        for (name, row) in live {
            let rec = nodes
                .entry(name.to_string())
                .or_insert_with(|| Record::new(now));
            rec.installing = installing.contains(&row.id);
            if rec.installing {
                if rec.health != Health::Unknown {
                    rec.health = Health::Unknown;
                    rec.since_ms = now;
                }
                rec.last_seen_ms = None;
                rec.watched_since_ms = now;
                continue;
            }
            let silent_since = rec.last_seen_ms.unwrap_or(rec.watched_since_ms);
            if rec.health != Health::Down && now - silent_since > down_after_ms {
                rec.health = Health::Down;
                rec.since_ms = now;
                let silent = (now - silent_since) as f64 / 1000.0;
                let what = match rec.seen_by {
                    Some(SeenBy::Hypervisor) => format!(
                        "its host has not seen its VM running for {silent:.1} s (killed, crashed, \
                         paused or shut down; last seen running at {})",
                        ms_to_time(silent_since).format("%H:%M:%S")
                    ),
                    _ => {
                        let last = match rec.last_seen_ms {
                            Some(t) => {
                                format!("last answer at {}", ms_to_time(t).format("%H:%M:%S"))
                            }
                            None => format!(
                                "never answered since it was first watched at {}",
                                ms_to_time(rec.watched_since_ms).format("%H:%M:%S")
                            ),
                        };
                        format!("its agent has not answered for {silent:.1} s ({last})")
                    }
                };
                changes.push(Change {
                    node: name.to_string(),
                    cluster: row.cluster_name.clone(),
                    owner_id: None,
                    to: Health::Down,
                    message: format!("node {name} on host {} is down: {what}", row.host_name),
                });
            }
        }
        changes
    }

    /// What is known of `node`, if it is watched.
    pub fn health(&self, node: &str) -> Option<NodeHealth> {
        let nodes = self.nodes.lock().expect("monitor");
        let rec = nodes.get(node)?;
        let s = rec.status.as_ref();
        Some(NodeHealth {
            health: rec.health,
            since: ms_to_time(rec.since_ms),
            last_seen: rec.last_seen_ms.map(ms_to_time),
            load1: s.map(|s| s.load[0]),
            memory_used_bytes: s.map(|s| {
                s.memory_total_bytes
                    .saturating_sub(s.memory_available_bytes)
            }),
            memory_total_bytes: s.map(|s| s.memory_total_bytes),
            uptime_secs: s.map(|s| s.uptime_secs),
            load_history: rec.history.iter().copied().collect(),
            accel: rec.accel.clone(),
            seen_by: rec.seen_by,
        })
    }

    /// Records each host's online state; the hosts whose state changed since the last
    /// look (a host first seen offline counts as a change, one first seen online not).
    pub fn hosts_changed(&self, hosts: &[(i64, bool)]) -> Vec<(i64, bool)> {
        let mut known = self.hosts.lock().expect("monitor");
        let mut changed = Vec::new();
        for &(id, online) in hosts {
            let before = known.insert(id, online);
            if before.unwrap_or(true) != online {
                changed.push((id, online));
            }
        }
        known.retain(|id, _| hosts.iter().any(|(h, _)| h == id));
        changed
    }

    /// Watched nodes by health.
    pub fn counts(&self) -> HashMap<Health, i64> {
        let nodes = self.nodes.lock().expect("monitor");
        let mut c = HashMap::new();
        for r in nodes.values() {
            *c.entry(r.health).or_insert(0) += 1;
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NodeTarget;

    fn row(name: &str) -> NodeRow {
        NodeRow {
            id: 1,
            cluster_id: 1,
            cluster_name: "c".into(),
            idx: 1,
            name: name.into(),
            host_id: 1,
            host_name: "h1".into(),
            site_name: "s1".into(),
            mac: String::new(),
            address: String::new(),
            cpus: 1,
            memory_mib: 64,
            firmware: crate::model::Firmware::Bios,
            state: NodeState::Running,
            target: NodeTarget::Running,
            reason: None,
            updated_at: 0,
        }
    }

    fn report(name: &str, load: f64) -> NodeAgentReport {
        NodeAgentReport {
            name: name.into(),
            status: Some(crate::node::metrics::NodeStatus {
                name: name.into(),
                load: [load, 0.0, 0.0],
                ..Default::default()
            }),
            error: None,
        }
    }

    #[test]
    fn a_node_goes_down_after_k_silent_beats_and_up_at_the_next_answer() {
        let m = Monitor::new();
        let none = HashSet::new();
        let rows = [row("c-node-1"), row("c-node-2")];
        assert!(m.sweep(&rows, &none, 0, 4000).is_empty());
        assert_eq!(m.health("c-node-1").unwrap().health, Health::Unknown);
        m.beat(&[report("c-node-1", 0.5), report("c-node-2", 0.1)], 1000);
        assert_eq!(m.health("c-node-1").unwrap().health, Health::Up);
        assert_eq!(m.health("c-node-1").unwrap().load1, Some(0.5));
        // node 2 keeps answering; node 1 falls silent (a report without status).
        let silent = NodeAgentReport {
            name: "c-node-1".into(),
            status: None,
            error: Some("timeout".into()),
        };
        for t in [2000, 3000, 4000, 5000] {
            m.beat(&[silent.clone(), report("c-node-2", 0.1)], t);
            assert!(m.sweep(&rows, &none, t, 4000).is_empty(), "at {t}");
        }
        let changes = m.sweep(&rows, &none, 5001, 4000);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].node, "c-node-1");
        assert!(
            changes[0].message.contains("has not answered for 4.0 s"),
            "{changes:?}"
        );
        assert!(
            m.sweep(&rows, &none, 9000, 4000).is_empty(),
            "down is said once"
        );
        let back = m.beat(&[report("c-node-1", 0.2), report("c-node-2", 0.1)], 9500);
        assert_eq!(back, vec![("c-node-1".to_string(), 8500)]);
        assert_eq!(m.health("c-node-1").unwrap().health, Health::Up);
        // A node that is no longer running is forgotten.
        m.sweep(&rows[1..], &none, 9600, 4000);
        assert!(m.health("c-node-1").is_none());
        let counts = m.counts();
        assert_eq!(counts.get(&Health::Up), Some(&1));
    }

    #[test]
    fn a_node_that_never_answers_goes_down_from_when_it_was_first_watched() {
        let m = Monitor::new();
        let none = HashSet::new();
        let rows = [row("c-node-1")];
        m.sweep(&rows, &none, 10_000, 4000);
        assert!(m.sweep(&rows, &none, 14_000, 4000).is_empty());
        let c = m.sweep(&rows, &none, 14_001, 4000);
        assert!(c[0].message.contains("never answered"), "{c:?}");
    }

    #[test]
    fn a_node_being_reinstalled_is_never_called_down_and_is_watched_afresh_after() {
        let m = Monitor::new();
        let none = HashSet::new();
        let mut rows = [row("c-node-1")];
        rows[0].id = 7;
        m.beat(&[report("c-node-1", 0.5)], 1000);
        assert_eq!(m.health("c-node-1").unwrap().health, Health::Up);
        // Reinstalled: its agent is gone for as long as the install takes.
        let installing = HashSet::from([7]);
        for t in [2000, 10_000, 600_000] {
            assert!(m.sweep(&rows, &installing, t, 4000).is_empty(), "at {t}");
            assert_eq!(m.health("c-node-1").unwrap().health, Health::Unknown);
        }
        // The install ended at 600 s: silence counts from then, not from its old agent.
        assert!(m.sweep(&rows, &none, 603_000, 4000).is_empty());
        let c = m.sweep(&rows, &none, 604_001, 4000);
        assert_eq!(c.len(), 1, "{c:?}");
        assert!(c[0].message.contains("never answered"), "{c:?}");
        // A node already down when its reinstall starts is no longer down (recovery
        // leaves it to the install).
        m.sweep(&rows, &installing, 700_000, 4000);
        assert_eq!(m.health("c-node-1").unwrap().health, Health::Unknown);
    }

    #[test]
    fn a_vm_without_an_agent_is_up_while_its_host_sees_it_running_and_down_when_not() {
        let m = Monitor::new();
        let none = HashSet::new();
        let rows = [row("c-node-1")];
        m.sweep(&rows, &none, 0, 4000);
        assert!(m.vms_running(&["c-node-1".into()], 1000).is_empty());
        let h = m.health("c-node-1").unwrap();
        assert_eq!(
            (h.health, h.seen_by),
            (Health::Up, Some(SeenBy::Hypervisor))
        );
        // Killed: its host no longer lists it; down after the same delay as an agent.
        assert!(m.sweep(&rows, &none, 5000, 4000).is_empty());
        let c = m.sweep(&rows, &none, 5001, 4000);
        assert_eq!(c.len(), 1, "{c:?}");
        assert!(
            c[0].message
                .contains("its host has not seen its VM running for 4.0 s"),
            "{c:?}"
        );
        // Restarted: up again, with how long it was gone.
        let back = m.vms_running(&["c-node-1".into()], 9000);
        assert_eq!(back, vec![("c-node-1".to_string(), 8000)]);
        assert_eq!(m.health("c-node-1").unwrap().health, Health::Up);
        // While it installs, its running QEMU does not make it up.
        let mut rows = rows;
        rows[0].id = 9;
        m.sweep(&rows, &HashSet::from([9]), 9100, 4000);
        assert!(m.vms_running(&["c-node-1".into()], 9200).is_empty());
        assert_eq!(m.health("c-node-1").unwrap().health, Health::Unknown);
        m.sweep(&rows, &none, 9300, 4000);
        m.vms_running(&["c-node-1".into()], 9400);
        assert_eq!(m.health("c-node-1").unwrap().health, Health::Up);
        // Once its agent answers (an installed agent), the agent is who speaks for it.
        m.beat(&[report("c-node-1", 0.3)], 9500);
        assert_eq!(m.health("c-node-1").unwrap().seen_by, Some(SeenBy::Agent));
    }

    #[test]
    fn host_changes_are_reported_once() {
        let m = Monitor::new();
        assert!(m.hosts_changed(&[(1, true), (2, false)]) == vec![(2, false)]);
        assert!(m.hosts_changed(&[(1, true), (2, false)]).is_empty());
        assert_eq!(
            m.hosts_changed(&[(1, false), (2, true)]),
            vec![(1, false), (2, true)]
        );
    }

    #[test]
    fn load_history_keeps_an_hour_at_one_sample_a_minute() {
        let m = Monitor::new();
        for i in 0..200i64 {
            m.beat(&[report("n", i as f64)], i * 30_000);
        }
        let h = m.health("n").unwrap().load_history;
        assert_eq!(h.len(), HISTORY);
        assert!(h.windows(2).all(|w| w[1].0 - w[0].0 >= SAMPLE_EVERY_MS));
    }
}
