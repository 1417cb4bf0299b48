//! Folding the results of many nodes (clush's `-b`): nodes whose standard output and end
//! are the same are printed once, under the node set that produced them, so 134 nodes
//! that agree read as one block. Unreachable nodes are listed apart, by reason.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::ExecEvent;
use crate::nodeset::NodeSet;

/// How a node's command ended.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    Exit(i32),
    Timeout {
        after_ms: u64,
    },
    Unreachable(String),
    /// The stream ended (or the user interrupted it) before the node said how it ended.
    Unfinished,
}

impl Outcome {
    /// The code this outcome counts as for `-S`: a command's own code; 255 for a timeout,
    /// an unreachable node or a missing end (as ssh does for a connection it lost).
    pub fn code(&self) -> i32 {
        match self {
            Outcome::Exit(c) => *c,
            _ => 255,
        }
    }

    /// How it ended, for people (empty for exit code 0).
    pub fn describe(&self) -> String {
        match self {
            Outcome::Exit(0) => String::new(),
            Outcome::Exit(c) => format!(" exit code {c}"),
            Outcome::Timeout { after_ms } => {
                format!(" timed out after {:.1} s", *after_ms as f64 / 1000.0)
            }
            Outcome::Unreachable(r) => format!(" unreachable: {r}"),
            Outcome::Unfinished => " no end received".to_string(),
        }
    }
}

#[derive(Debug, Clone, Default)]
struct NodeResult {
    out: Vec<String>,
    outcome: Option<Outcome>,
}

/// Results of one command, gathered as events arrive.
#[derive(Debug, Clone, Default)]
pub struct Gather {
    nodes: BTreeMap<String, NodeResult>,
}

/// Nodes that ended alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub nodes: NodeSet,
    pub out: Vec<String>,
    pub outcome: Outcome,
}

impl Gather {
    /// Expects every node of `nodes`: one that never reports ends [`Outcome::Unfinished`].
    pub fn new<'a>(nodes: impl IntoIterator<Item = &'a str>) -> Gather {
        Gather {
            nodes: nodes
                .into_iter()
                .map(|n| (n.to_string(), NodeResult::default()))
                .collect(),
        }
    }

    /// Adds one event; standard error is not gathered (it is shown as it comes).
    pub fn add(&mut self, event: &ExecEvent) {
        let r = self.nodes.entry(event.node().to_string()).or_default();
        match event {
            ExecEvent::Out { line, .. } => r.out.push(line.clone()),
            ExecEvent::Err { .. } => {}
            ExecEvent::Exit { code, .. } => r.outcome = Some(Outcome::Exit(*code)),
            ExecEvent::Timeout { after_ms, .. } => {
                r.outcome = Some(Outcome::Timeout {
                    after_ms: *after_ms,
                })
            }
            ExecEvent::Unreachable { reason, .. } => {
                r.outcome = Some(Outcome::Unreachable(reason.clone()))
            }
        }
    }

    fn outcome(r: &NodeResult) -> Outcome {
        r.outcome.clone().unwrap_or(Outcome::Unfinished)
    }

    /// Nodes that ran the command (whatever its end), folded by identical output and end;
    /// largest group first, then by node set.
    pub fn groups(&self) -> Vec<Group> {
        let mut by: BTreeMap<(&[String], Outcome), NodeSet> = BTreeMap::new();
        for (name, r) in &self.nodes {
            let outcome = Self::outcome(r);
            if matches!(outcome, Outcome::Unreachable(_)) {
                continue;
            }
            by.entry((&r.out, outcome)).or_default().insert(name);
        }
        let mut groups: Vec<Group> = by
            .into_iter()
            .map(|((out, outcome), nodes)| Group {
                nodes,
                out: out.to_vec(),
                outcome,
            })
            .collect();
        groups.sort_by(|a, b| {
            b.nodes
                .len()
                .cmp(&a.nodes.len())
                .then_with(|| a.nodes.to_string().cmp(&b.nodes.to_string()))
        });
        groups
    }

    /// Unreachable nodes, folded by reason.
    pub fn unreachable(&self) -> Vec<(NodeSet, String)> {
        let mut by: BTreeMap<String, NodeSet> = BTreeMap::new();
        for (name, r) in &self.nodes {
            if let Some(Outcome::Unreachable(reason)) = &r.outcome {
                by.entry(reason.clone()).or_default().insert(name);
            }
        }
        by.into_iter().map(|(r, s)| (s, r)).collect()
    }

    /// The largest code of any node (`-S`).
    pub fn max_code(&self) -> i32 {
        self.nodes
            .values()
            .map(|r| Self::outcome(r).code())
            .max()
            .unwrap_or(0)
    }

    /// True when every node ran the command to an end of its own (any exit code).
    pub fn all_ran(&self) -> bool {
        self.nodes
            .values()
            .all(|r| matches!(r.outcome, Some(Outcome::Exit(_))))
    }

    /// Every node's standard output lines and end, by name.
    pub fn per_node(&self) -> impl Iterator<Item = (&str, &[String], Option<&Outcome>)> {
        self.nodes
            .iter()
            .map(|(n, r)| (n.as_str(), r.out.as_slice(), r.outcome.as_ref()))
    }

    /// Nodes whose end is not yet known.
    pub fn unfinished(&self) -> NodeSet {
        self.nodes
            .iter()
            .filter(|(_, r)| r.outcome.is_none())
            .map(|(n, _)| n.as_str())
            .collect()
    }

    /// The folded report, as clush `-b` prints it.
    pub fn render(&self) -> String {
        let mut s = String::new();
        for g in self.groups() {
            let rule = "-".repeat(15);
            let _ = writeln!(s, "{rule}");
            let _ = writeln!(s, "{} ({}){}", g.nodes, g.nodes.len(), g.outcome.describe());
            let _ = writeln!(s, "{rule}");
            for line in &g.out {
                let _ = writeln!(s, "{line}");
            }
        }
        for (nodes, reason) in self.unreachable() {
            let _ = writeln!(
                s,
                "vcluster: {nodes} ({}) unreachable: {reason}",
                nodes.len()
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev_out(node: &str, line: &str) -> ExecEvent {
        ExecEvent::Out {
            node: node.into(),
            line: line.into(),
        }
    }
    fn ev_exit(node: &str, code: i32) -> ExecEvent {
        ExecEvent::Exit {
            node: node.into(),
            code,
        }
    }

    #[test]
    fn nodes_that_agree_fold_into_one_group_under_their_node_set() {
        let names: Vec<String> = (1..=134).map(|i| format!("node{i}")).collect();
        let mut g = Gather::new(names.iter().map(String::as_str));
        for n in &names {
            let line = if n == "node7" { "6.1.0-other" } else { "6.1.0" };
            g.add(&ev_out(n, line));
            g.add(&ev_exit(n, if n == "node9" { 2 } else { 0 }));
        }
        let groups = g.groups();
        assert_eq!(groups.len(), 3, "{groups:?}");
        assert_eq!(groups[0].nodes.to_string(), "node[1-6,8,10-134]");
        assert_eq!(groups[0].nodes.len(), 132);
        assert_eq!(groups[0].out, vec!["6.1.0".to_string()]);
        let text = g.render();
        assert!(text.contains("node[1-6,8,10-134] (132)\n"), "{text}");
        assert!(text.contains("node9 (1) exit code 2\n"), "{text}");
        assert!(text.lines().count() < 15, "{text}");
        assert_eq!(g.max_code(), 2);
        assert!(g.all_ran());
    }

    #[test]
    fn unreachable_and_unfinished_nodes_are_apart_and_count_255() {
        let mut g = Gather::new(["a1", "a2", "a3", "a4"]);
        g.add(&ev_exit("a1", 0));
        for n in ["a2", "a3"] {
            g.add(&ExecEvent::Unreachable {
                node: n.into(),
                reason: "host down".into(),
            });
        }
        assert_eq!(g.unfinished().to_string(), "a4");
        assert_eq!(g.max_code(), 255);
        assert!(!g.all_ran());
        let text = g.render();
        assert!(text.contains("a[2-3] (2) unreachable: host down"), "{text}");
        assert!(text.contains("a4 (1) no end received"), "{text}");
    }

    #[test]
    fn stderr_is_not_gathered() {
        let mut g = Gather::new(["x1", "x2"]);
        g.add(&ExecEvent::Err {
            node: "x1".into(),
            line: "noise".into(),
        });
        g.add(&ev_exit("x1", 0));
        g.add(&ev_exit("x2", 0));
        assert_eq!(g.groups().len(), 1);
    }
}
