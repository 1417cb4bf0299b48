//! Tasks: how a long operation is carried out after its request has been answered.
//!
//! The request's transaction already wrote the goal (nodes with their target state, the
//! overlay's running flag) and a `running` task row. [`spawn`] then, holding the cluster's
//! lock, pushes each host the cluster touches its desired share (`desired::cluster_plan`)
//! and records the outcome: `succeeded`, or `failed` with the message. A task that has not
//! finished by its deadline fails. A failed task is rolled back before it is marked
//! failed: new nodes become `failed` and are removed from their hosts, a start/stop of the
//! overlay is undone, so nothing is left half-done. Hosts that are offline are skipped
//! only when something is being removed from them: their agent removes it at its next
//! reconcile, because the store no longer lists it.
//!
//! This module never answers HTTP requests and never decides placement.

use std::time::Duration;

use tokio::task::JoinSet;
use tracing::Instrument;

use super::App;
use super::desired::{self, ClusterPlan};
use super::store::{self, NewEvent, TaskRow, now_ms};
use crate::model::{ClusterState, NodeState, NodeTarget, OverlayState, TaskKind, TaskState};

/// What a task carries out, and what it needs to undo itself.
#[derive(Debug, Clone)]
pub enum Operation {
    CreateCluster,
    AddNodes {
        node_ids: Vec<i64>,
    },
    RemoveNode {
        node_id: i64,
    },
    /// `previous` is the overlay state to go back to on failure.
    StartOverlay {
        previous: OverlayState,
    },
    StopOverlay {
        previous: OverlayState,
    },
    DeleteCluster,
    ExpireLease {
        reservation: i64,
    },
}

impl Operation {
    /// The kind the task is recorded and reported as.
    pub fn kind(&self) -> TaskKind {
        match self {
            Operation::CreateCluster => TaskKind::CreateCluster,
            Operation::AddNodes { .. } => TaskKind::AddNodes,
            Operation::RemoveNode { .. } => TaskKind::RemoveNode,
            Operation::StartOverlay { .. } => TaskKind::StartOverlay,
            Operation::StopOverlay { .. } => TaskKind::StopOverlay,
            Operation::DeleteCluster => TaskKind::DeleteCluster,
            Operation::ExpireLease { .. } => TaskKind::ExpireLease,
        }
    }

    /// Only removals may skip offline hosts.
    fn removes(&self) -> bool {
        matches!(
            self,
            Operation::RemoveNode { .. }
                | Operation::DeleteCluster
                | Operation::StopOverlay { .. }
                | Operation::ExpireLease { .. }
        )
    }
}

/// Runs the task in the background. Returns at once.
pub fn spawn(app: App, task: TaskRow, cluster_id: i64, op: Operation) {
    let span =
        tracing::info_span!("task", id = task.id, kind = %op.kind(), cluster = ?task.cluster_name);
    let run = async move {
        let budget = Duration::from_millis((task.deadline - now_ms()).max(0) as u64);
        let outcome =
            match tokio::time::timeout(budget, execute(&app, &task, cluster_id, &op)).await {
                Ok(r) => r,
                Err(_) => Err(format!(
                    "timed out after {}s; rolled back",
                    (task.deadline - task.created_at) / 1000
                )),
            };
        let lock = app.cluster_lock(cluster_id).await;
        let _held = lock.lock().await;
        let deleted = outcome.is_ok() && matches!(op, Operation::DeleteCluster);
        let result = match outcome {
            Ok(message) => finish_success(&app, &task, cluster_id, &op, &message).await,
            Err(message) => rollback(&app, &task, cluster_id, &op, &message).await,
        };
        if deleted && result.is_ok() {
            app.forget_cluster_lock(cluster_id).await;
        }
        if let Err(e) = result {
            tracing::error!(task = task.id, error = %e, "recording the task's outcome failed");
            if let Ok(mut c) = app.store.conn().await {
                let _ =
                    store::finish_task(&mut c, task.id, false, &format!("store: {e}"), now_ms())
                        .await;
            }
        }
    };
    tokio::spawn(run.instrument(span));
}

async fn execute(
    app: &App,
    task: &TaskRow,
    cluster_id: i64,
    op: &Operation,
) -> Result<String, String> {
    let lock = app.cluster_lock(cluster_id).await;
    let _held = lock.lock().await;
    if let Operation::CreateCluster | Operation::AddNodes { .. } = op {
        mark_creating(app, cluster_id, op)
            .await
            .map_err(|e| e.to_string())?;
    }
    tracing::info!(
        task = task.id,
        kind = %op.kind(),
        "pushing desired state to hosts"
    );
    let summary = converge(app, cluster_id, op.removes()).await?;
    Ok(summary)
}

async fn mark_creating(
    app: &App,
    cluster_id: i64,
    op: &Operation,
) -> Result<(), store::StoreError> {
    let mut tx = app.store.write().await?;
    let nodes = store::nodes_of_cluster(tx.conn(), cluster_id).await?;
    let now = now_ms();
    for n in nodes
        .iter()
        .filter(|n| in_scope(op, n.id) && n.state == NodeState::Requested)
    {
        store::set_node_state(tx.conn(), n.id, NodeState::Creating, n.target, None, now).await?;
    }
    tx.commit().await
}

fn in_scope(op: &Operation, node_id: i64) -> bool {
    match op {
        Operation::AddNodes { node_ids } => node_ids.contains(&node_id),
        Operation::RemoveNode { node_id: id } => *id == node_id,
        _ => true,
    }
}

/// One cluster's pushes: how many were asked for, and the last one done with how many
/// asks it covered and what it answered.
#[derive(Default)]
pub struct ConvergeSlot {
    asked: std::sync::atomic::AtomicU64,
    last: tokio::sync::Mutex<Option<(u64, Result<String, String>)>>,
}

/// Pushes the cluster's current desired state to every host it touches.
/// Returns a one-line summary, or every host's error.
///
/// Asks that may skip offline hosts are coalesced: an ask waits for the push running
/// now, and is answered by it if that push began after the ask (it read a desired state
/// that holds the asker's change, committed before asking); otherwise it makes one push
/// for itself and every ask made meanwhile. A burst of install reports (134 nodes each
/// reporting `rebooting` and `booted`, every one changing what the hosts must have) so
/// makes a few pushes of the whole cluster instead of one each.
pub async fn converge(
    app: &App,
    cluster_id: i64,
    may_skip_offline: bool,
) -> Result<String, String> {
    if !may_skip_offline {
        return converge_now(app, cluster_id, false).await;
    }
    let slot = app
        .converges
        .lock()
        .expect("converge slots")
        .entry(cluster_id)
        .or_default()
        .clone();
    slot.run(|| converge_now(app, cluster_id, true)).await
}

impl ConvergeSlot {
    /// Runs `push` unless a push that began after this call answers it (see [`converge`]).
    async fn run<F, Fut>(&self, push: F) -> Result<String, String>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<String, String>>,
    {
        use std::sync::atomic::Ordering;
        let ask = self.asked.fetch_add(1, Ordering::SeqCst) + 1;
        let mut last = self.last.lock().await;
        if let Some((covered, result)) = &*last
            && *covered >= ask
        {
            return result.clone();
        }
        let covers = self.asked.load(Ordering::SeqCst);
        let result = push().await;
        *last = Some((covers, result.clone()));
        result
    }
}

async fn converge_now(
    app: &App,
    cluster_id: i64,
    may_skip_offline: bool,
) -> Result<String, String> {
    let plan = {
        let mut rx = app.store.read().await.map_err(|e| e.to_string())?;
        let plan = desired::cluster_plan(rx.conn(), cluster_id, &[])
            .await
            .map_err(|e| e.to_string())?;
        rx.finish().await.map_err(|e| e.to_string())?;
        plan
    };
    push_plan(app, plan, may_skip_offline).await
}

async fn push_plan(app: &App, plan: ClusterPlan, may_skip_offline: bool) -> Result<String, String> {
    let now = now_ms();
    let timeout = app.host_timeout_ms();
    let network = plan.cluster.as_ref().map(|c| c.network_id as u32);
    let mut jobs = JoinSet::new();
    let mut skipped = Vec::new();
    for (host, share) in plan.hosts {
        let agents = app.agents.clone();
        let online = host.is_online(now, timeout);
        match share {
            Some(share) => {
                jobs.spawn(async move {
                    let applied = agents.apply(&host, &share).await?;
                    // The agent answers what it found after applying: check it.
                    for want in &share.nodes {
                        let got = applied.nodes.iter().find(|n| n.index == want.index);
                        match got {
                            Some(n) if n.running == want.running => {}
                            Some(_) => {
                                return Err(format!(
                                    "host {}: node {} is not {}",
                                    host.name,
                                    want.name,
                                    if want.running { "up" } else { "stopped" }
                                ));
                            }
                            None if !applied.applied => {}
                            None => {
                                return Err(format!(
                                    "host {}: node {} is missing",
                                    host.name, want.name
                                ));
                            }
                        }
                    }
                    Ok(host.name.clone())
                });
            }
            None => {
                let Some(network) = network else {
                    continue;
                };
                if !online && may_skip_offline {
                    skipped.push(host.name.clone());
                    continue;
                }
                let revision = plan.revision;
                jobs.spawn(async move {
                    agents.remove(&host, network, revision).await?;
                    Ok(host.name.clone())
                });
            }
        }
    }
    let mut done = Vec::new();
    let mut errors = Vec::new();
    while let Some(r) = jobs.join_next().await {
        match r {
            Ok(Ok(host)) => done.push(host),
            Ok(Err(e)) => errors.push(e),
            Err(e) => errors.push(format!("agent call panicked: {e}")),
        }
    }
    if !errors.is_empty() {
        errors.sort();
        return Err(errors.join("; "));
    }
    done.sort();
    let mut summary = format!(
        "hosts updated: {}",
        if done.is_empty() {
            "none".into()
        } else {
            done.join(", ")
        }
    );
    if !skipped.is_empty() {
        summary.push_str(&format!(
            "; offline, will be cleaned up by their agents: {}",
            skipped.join(", ")
        ));
    }
    Ok(summary)
}

async fn finish_success(
    app: &App,
    task: &TaskRow,
    cluster_id: i64,
    op: &Operation,
    summary: &str,
) -> Result<(), store::StoreError> {
    let now = now_ms();
    let mut tx = app.store.write().await?;
    let nodes = store::nodes_of_cluster(tx.conn(), cluster_id).await?;
    let cluster_name = task.cluster_name.as_deref();
    let mut message = summary.to_string();
    match op {
        Operation::CreateCluster | Operation::AddNodes { .. } => {
            let mut names = Vec::new();
            for n in nodes.iter().filter(|n| in_scope(op, n.id)) {
                if matches!(n.state, NodeState::Creating | NodeState::Requested) {
                    store::set_node_state(
                        tx.conn(),
                        n.id,
                        NodeState::Running,
                        NodeTarget::Running,
                        None,
                        now,
                    )
                    .await?;
                    names.push(n.name.clone());
                }
            }
            message = format!("nodes running: {}; {summary}", names.join(", "));
        }
        Operation::RemoveNode { node_id } => {
            if let Some(n) = nodes.iter().find(|n| n.id == *node_id) {
                store::set_node_state(
                    tx.conn(),
                    n.id,
                    NodeState::Stopped,
                    NodeTarget::Deleted,
                    None,
                    now,
                )
                .await?;
                store::set_node_state(
                    tx.conn(),
                    n.id,
                    NodeState::Deleted,
                    NodeTarget::Deleted,
                    None,
                    now,
                )
                .await?;
                message = format!("node {} removed; {summary}", n.name);
            }
        }
        Operation::StartOverlay { .. } => message = format!("overlay running; {summary}"),
        Operation::StopOverlay { .. } => message = format!("overlay stopped; {summary}"),
        Operation::DeleteCluster => {
            store::delete_cluster(tx.conn(), cluster_id).await?;
            message = format!("cluster deleted; {summary}");
        }
        Operation::ExpireLease { reservation } => {
            for n in nodes.iter().filter(|n| n.state == NodeState::Stopping) {
                store::set_node_state(tx.conn(), n.id, NodeState::Stopped, n.target, None, now)
                    .await?;
            }
            message = format!(
                "lease of reservation {reservation} ended: nodes and overlay stopped; {summary}"
            );
        }
    }
    let finished = store::finish_task(tx.conn(), task.id, true, &message, now).await?;
    if finished {
        store::insert_event(
            tx.conn(),
            NewEvent {
                kind: "task-succeeded",
                cluster: cluster_name,
                owner_id: Some(task.owner_id),
                task_id: Some(task.id),
                message: &format!("{}: {message}", op.kind()),
            },
            now,
        )
        .await?;
    }
    tx.commit().await?;
    app.metrics.task_finished(op.kind(), TaskState::Succeeded);
    tracing::info!(task = task.id, kind = %op.kind(), %message, "task succeeded");
    Ok(())
}

async fn rollback(
    app: &App,
    task: &TaskRow,
    cluster_id: i64,
    op: &Operation,
    error: &str,
) -> Result<(), store::StoreError> {
    tracing::warn!(task = task.id, kind = %op.kind(), %error, "task failed; rolling back");
    let now = now_ms();
    let mut tx = app.store.write().await?;
    let nodes = store::nodes_of_cluster(tx.conn(), cluster_id).await?;
    let cluster_name = task.cluster_name.as_deref();
    let reason = format!("{}: {error}", op.kind());
    let ids = |keep: &dyn Fn(&store::NodeRow) -> bool| -> Vec<i64> {
        nodes.iter().filter(|n| keep(n)).map(|n| n.id).collect()
    };
    // Which nodes fail (and what they are meant to become), whether the cluster fails,
    // and whether the hosts must be brought back to the store's state.
    let (failed_nodes, target, cluster_fails, undo_push) = match op {
        Operation::CreateCluster => (ids(&|_| true), NodeTarget::Deleted, true, true),
        Operation::AddNodes { node_ids } => (
            ids(&|n| node_ids.contains(&n.id)),
            NodeTarget::Deleted,
            false,
            true,
        ),
        // The node stays out of the desired state: its agent removes it on reconcile.
        Operation::RemoveNode { node_id } => (vec![*node_id], NodeTarget::Deleted, false, false),
        Operation::StartOverlay { previous } | Operation::StopOverlay { previous } => {
            store::set_cluster_overlay(tx.conn(), cluster_id, *previous, now).await?;
            (vec![], NodeTarget::Deleted, false, true)
        }
        Operation::DeleteCluster => (
            ids(&|n| n.state != NodeState::Deleted),
            NodeTarget::Deleted,
            true,
            false,
        ),
        Operation::ExpireLease { .. } => (
            ids(&|n| n.state == NodeState::Stopping),
            NodeTarget::Stopped,
            false,
            false,
        ),
    };
    for id in failed_nodes {
        let failed = NodeState::Failed;
        store::set_node_state(tx.conn(), id, failed, target, Some(&reason), now).await?;
    }
    if cluster_fails {
        let failed = ClusterState::Failed;
        store::set_cluster_state(tx.conn(), cluster_id, failed, Some(&reason), now).await?;
    }
    tx.commit().await?;

    // Take back what the failed push left on hosts, within a bounded time.
    let mut message = error.to_string();
    if undo_push {
        let undo =
            tokio::time::timeout(Duration::from_secs(30), converge(app, cluster_id, true)).await;
        match undo {
            Ok(Ok(_)) => message.push_str("; rolled back"),
            Ok(Err(e)) => message.push_str(&format!(
                "; rollback incomplete ({e}); host agents finish it when they reconcile"
            )),
            Err(_) => {
                message.push_str("; rollback timed out; host agents finish it when they reconcile")
            }
        }
    }

    let mut tx = app.store.write().await?;
    let finished = store::finish_task(tx.conn(), task.id, false, &message, now_ms()).await?;
    if finished {
        store::insert_event(
            tx.conn(),
            NewEvent {
                kind: "task-failed",
                cluster: cluster_name,
                owner_id: Some(task.owner_id),
                task_id: Some(task.id),
                message: &format!("{}: {message}", op.kind()),
            },
            now_ms(),
        )
        .await?;
    }
    tx.commit().await?;
    app.metrics.task_finished(op.kind(), TaskState::Failed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn a_burst_of_asks_makes_few_pushes_and_each_ask_is_answered_by_a_later_push() {
        let slot = Arc::new(ConvergeSlot::default());
        // What the "desired state" is: bumped by each asker before it asks, as an
        // install report commits its change before it pushes.
        let state = Arc::new(AtomicU32::new(0));
        let pushes = Arc::new(AtomicU32::new(0));
        let mut asks = tokio::task::JoinSet::new();
        for _ in 0..40 {
            let (slot, state, pushes) = (slot.clone(), state.clone(), pushes.clone());
            asks.spawn(async move {
                let mine = state.fetch_add(1, Ordering::SeqCst) + 1;
                let answer = slot
                    .run(|| async {
                        pushes.fetch_add(1, Ordering::SeqCst);
                        let seen = state.load(Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(30)).await;
                        Ok(seen.to_string())
                    })
                    .await
                    .unwrap();
                // The push that answered saw this asker's change.
                assert!(answer.parse::<u32>().unwrap() >= mine, "{answer} < {mine}");
            });
            tokio::task::yield_now().await;
        }
        while let Some(r) = asks.join_next().await {
            r.unwrap();
        }
        let n = pushes.load(Ordering::SeqCst);
        assert!((1..=10).contains(&n), "{n} pushes for 40 asks");
        // An ask after the burst pushes again.
        slot.run(|| async {
            pushes.fetch_add(1, Ordering::SeqCst);
            Ok(String::new())
        })
        .await
        .unwrap();
        assert_eq!(pushes.load(Ordering::SeqCst), n + 1);
    }

    #[tokio::test]
    async fn a_push_cancelled_midway_answers_nobody_and_the_next_ask_pushes() {
        let slot = ConvergeSlot::default();
        let cut = tokio::time::timeout(
            Duration::from_millis(10),
            slot.run(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok("never".to_string())
            }),
        )
        .await;
        assert!(cut.is_err());
        let answer = slot.run(|| async { Ok("pushed".to_string()) }).await;
        assert_eq!(answer.unwrap(), "pushed");
    }
}
