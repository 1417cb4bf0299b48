//! The controller's clockwork: what happens because time passed rather than because
//! someone asked. Ended leases stop their clusters (and say so in the event log), tasks
//! past their deadline fail, each site's capacity / in use / reserved is sampled for the
//! portal's timeline, and after a restart the tasks the previous run left unfinished are
//! failed and their nodes put in a state the host agents can converge to.
//!
//! It never talks to hosts itself: it writes the goal and starts tasks.

use crate::model::{ClusterState, NodeState, NodeTarget, OverlayState, ReservationState, TaskKind};
use tokio::sync::watch;

use super::App;
use super::store::{self, NewEvent, SampleRow, now_ms};
use super::tasks::{self, Operation};
use super::view::CapacityView;

/// Keep a month of usage samples.
const SAMPLE_RETENTION_MS: i64 = 31 * 24 * 3_600_000;
/// A task whose runner is gone fails this long after its deadline.
const OVERDUE_GRACE_MS: i64 = 30_000;

pub async fn run(app: App, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(app.config.housekeeping);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_sample = 0i64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if let Err(e) = expire_leases(&app).await {
            tracing::warn!(error = %e, "expiring leases failed");
        }
        if let Err(e) = fail_overdue_tasks(&app).await {
            tracing::warn!(error = %e, "failing overdue tasks failed");
        }
        if let Err(e) = check_node_health(&app).await {
            tracing::warn!(error = %e, "checking node health failed");
        }
        if let Err(e) = super::recovery::recover_down_nodes(&app).await {
            tracing::warn!(error = %e, "starting node recoveries failed");
        }
        if let Err(e) = super::install::fail_stalled_installs(&app).await {
            tracing::warn!(error = %e, "failing stalled installs failed");
        }
        let now = now_ms();
        if now - last_sample >= app.config.sample_every.as_millis() as i64 {
            last_sample = now;
            if let Err(e) = sample_usage(&app).await {
                tracing::warn!(error = %e, "sampling usage failed");
            }
        }
    }
}

/// Marks running nodes whose agents fell silent down, each with an event.
pub async fn check_node_health(app: &App) -> Result<(), store::StoreError> {
    let now = now_ms();
    let mut rx = app.store.read().await?;
    let nodes = store::all_nodes(rx.conn()).await?;
    let owners: std::collections::HashMap<i64, i64> = store::list_clusters(rx.conn(), None)
        .await?
        .into_iter()
        .map(|c| (c.id, c.owner_id))
        .collect();
    // Nodes being installed have no agent yet: their installs watch them.
    let installing: std::collections::HashSet<i64> = store::unfinished_installs(rx.conn())
        .await?
        .into_iter()
        .map(|i| i.node_id)
        .collect();
    rx.finish().await?;
    let down_after = app.config.node_down_after().as_millis() as i64;
    let changes = app.monitor.sweep(&nodes, &installing, now, down_after);
    let mut rx = app.store.read().await?;
    let hosts = store::list_hosts(rx.conn()).await?;
    rx.finish().await?;
    let timeout = app.host_timeout_ms();
    let states: Vec<(i64, bool)> = hosts
        .iter()
        .map(|h| (h.id, h.is_online(now, timeout)))
        .collect();
    let host_changes = app.monitor.hosts_changed(&states);
    if changes.is_empty() && host_changes.is_empty() {
        return Ok(());
    }
    let mut tx = app.store.write().await?;
    for (id, online) in host_changes {
        let Some(h) = hosts.iter().find(|h| h.id == id) else {
            continue;
        };
        let on_it = nodes
            .iter()
            .filter(|n| n.host_id == id && n.state == crate::model::NodeState::Running)
            .count();
        let message = if online {
            format!("host {} at {} is online again", h.name, h.site_name)
        } else {
            format!(
                "host {} at {} is offline: no heartbeat for {:.0} s ({on_it} running nodes on it)",
                h.name,
                h.site_name,
                (now - h.last_seen.unwrap_or(h.registered_at)) as f64 / 1000.0
            )
        };
        tracing::warn!(host = %h.name, online, "{message}");
        store::insert_event(
            tx.conn(),
            NewEvent {
                kind: if online { "host-up" } else { "host-down" },
                cluster: None,
                owner_id: None,
                task_id: None,
                message: &message,
            },
            now,
        )
        .await?;
    }
    for c in &changes {
        tracing::warn!(node = %c.node, "{}", c.message);
        let owner = nodes
            .iter()
            .find(|n| n.name == c.node)
            .and_then(|n| owners.get(&n.cluster_id).copied());
        store::insert_event(
            tx.conn(),
            NewEvent {
                kind: "node-down",
                cluster: Some(&c.cluster),
                owner_id: owner,
                task_id: None,
                message: &c.message,
            },
            now,
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Ends the leases whose time is up: their clusters' nodes and overlays are stopped.
pub async fn expire_leases(app: &App) -> Result<(), store::StoreError> {
    let now = now_ms();
    let mut tx = app.store.write().await?;
    let ended = store::ended_reservations(tx.conn(), now).await?;
    if ended.is_empty() {
        return Ok(());
    }
    let mut to_run = Vec::new();
    for r in &ended {
        store::set_reservation_state(tx.conn(), r.id, ReservationState::Expired).await?;
        let clusters = store::clusters_of_reservation(tx.conn(), r.id).await?;
        let mut stopped = Vec::new();
        for c in clusters.iter().filter(|c| c.state == ClusterState::Active) {
            let reason = format!(
                "the lease of reservation {} ended at {}",
                r.id,
                store::ms_to_time(r.ends_at)
            );
            store::set_cluster_state(tx.conn(), c.id, ClusterState::Expired, Some(&reason), now)
                .await?;
            store::set_cluster_overlay(tx.conn(), c.id, OverlayState::Stopped, now).await?;
            for n in store::nodes_of_cluster(tx.conn(), c.id).await? {
                if n.target == NodeTarget::Running && n.state.holds_resources() {
                    store::set_node_state(
                        tx.conn(),
                        n.id,
                        NodeState::Stopping,
                        NodeTarget::Stopped,
                        None,
                        now,
                    )
                    .await?;
                }
            }
            let task = store::insert_task(
                tx.conn(),
                TaskKind::ExpireLease,
                c.owner_id,
                Some(&c.name),
                now,
                app.task_deadline(now),
            )
            .await?;
            store::insert_event(
                tx.conn(),
                NewEvent {
                    kind: "lease-expired",
                    cluster: Some(&c.name),
                    owner_id: Some(c.owner_id),
                    task_id: Some(task.id),
                    message: &format!("cluster {} stopped: {reason}", c.name),
                },
                now,
            )
            .await?;
            stopped.push(c.name.clone());
            to_run.push((task, c.id, r.id));
        }
        store::insert_event(
            tx.conn(),
            NewEvent {
                kind: "reservation-expired",
                cluster: None,
                owner_id: Some(r.owner_id),
                task_id: None,
                message: &format!(
                    "reservation {} at {} ended; clusters stopped: {}",
                    r.id,
                    r.site_name,
                    if stopped.is_empty() {
                        "none".to_string()
                    } else {
                        stopped.join(", ")
                    }
                ),
            },
            now,
        )
        .await?;
        tracing::info!(reservation = r.id, site = %r.site_name, clusters = ?stopped, "lease ended");
    }
    tx.commit().await?;
    for (task, cluster_id, reservation) in to_run {
        tasks::spawn(
            app.clone(),
            task,
            cluster_id,
            Operation::ExpireLease { reservation },
        );
    }
    Ok(())
}

async fn fail_overdue_tasks(app: &App) -> Result<(), store::StoreError> {
    let now = now_ms();
    let mut conn = app.store.conn().await?;
    for t in store::running_tasks(&mut conn).await? {
        if t.deadline + OVERDUE_GRACE_MS < now {
            let finished = store::finish_task(
                &mut conn,
                t.id,
                false,
                "deadline passed with no runner left to finish the task",
                now,
            )
            .await?;
            if finished {
                tracing::warn!(task = t.id, "failed an orphaned task past its deadline");
            }
        }
    }
    Ok(())
}

pub async fn sample_usage(app: &App) -> Result<(), store::StoreError> {
    let now = now_ms();
    let mut rx = app.store.read().await?;
    let view =
        CapacityView::load(rx.conn(), now, app.config.overcommit, app.host_timeout_ms()).await?;
    rx.finish().await?;
    let mut conn = app.store.conn().await?;
    for s in &view.sites {
        let m = view.site_model(s);
        store::insert_sample(
            &mut conn,
            &SampleRow {
                site_id: s.id,
                at: now,
                capacity_cpus: m.capacity.cpus,
                capacity_memory_mib: m.capacity.memory_mib,
                used_cpus: m.in_use.cpus,
                used_memory_mib: m.in_use.memory_mib,
                reserved_cpus: m.reserved.cpus,
                reserved_memory_mib: m.reserved.memory_mib,
            },
        )
        .await?;
    }
    store::prune_samples(&mut conn, now - SAMPLE_RETENTION_MS).await?;
    Ok(())
}

/// Fails the tasks a previous run left running and settles their nodes: nodes that were
/// being created fail (and so are removed from their hosts), nodes that were being stopped
/// or removed are taken as stopped or removed, clusters being deleted become `failed` so
/// that deleting them again finishes the job. Host agents converge to this on their next
/// reconcile.
pub async fn recover_after_restart(app: &App) -> Result<(), store::StoreError> {
    let now = now_ms();
    let mut tx = app.store.write().await?;
    let running = store::running_tasks(tx.conn()).await?;
    if running.is_empty() {
        return Ok(());
    }
    let reason = "interrupted: the controller restarted before the task finished";
    for t in &running {
        store::finish_task(tx.conn(), t.id, false, reason, now).await?;
        store::insert_event(
            tx.conn(),
            NewEvent {
                kind: "task-failed",
                cluster: t.cluster_name.as_deref(),
                owner_id: Some(t.owner_id),
                task_id: Some(t.id),
                message: &format!("{}: {reason}", t.kind),
            },
            now,
        )
        .await?;
        let Some(name) = &t.cluster_name else {
            continue;
        };
        let Some(cluster) = store::cluster_by_key(tx.conn(), name).await? else {
            continue;
        };
        for n in store::nodes_of_cluster(tx.conn(), cluster.id).await? {
            let settled = match (n.state, n.target) {
                (NodeState::Requested | NodeState::Creating, _) => Some(NodeState::Failed),
                (NodeState::Stopping, NodeTarget::Deleted) => Some(NodeState::Deleted),
                (NodeState::Stopping, _) => Some(NodeState::Stopped),
                _ => None,
            };
            if let Some(state) = settled {
                let target = if state == NodeState::Failed {
                    NodeTarget::Deleted
                } else {
                    n.target
                };
                let why = (state == NodeState::Failed).then_some(reason);
                store::set_node_state(tx.conn(), n.id, state, target, why, now).await?;
            }
        }
        let interrupted = cluster.state == ClusterState::Deleting
            || (t.kind == TaskKind::CreateCluster && cluster.state == ClusterState::Active);
        if interrupted {
            store::set_cluster_state(
                tx.conn(),
                cluster.id,
                ClusterState::Failed,
                Some(reason),
                now,
            )
            .await?;
        }
    }
    tx.commit().await?;
    tracing::warn!(
        tasks = running.len(),
        "failed the tasks a previous run left running"
    );
    Ok(())
}
