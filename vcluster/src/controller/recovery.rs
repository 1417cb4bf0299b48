//! Recovery of nodes that go down, by each cluster's policy (`off`, `restart`,
//! `restart-then-reinstall`). Monitoring has already waited k heartbeats (a blip is not a
//! failure); then, each step an event:
//!
//! 1. fence: the node's host agent powers it off and confirms nothing of it runs. A host
//!    that does not answer (down, partitioned) has fenced nothing, so the node is **not**
//!    started anywhere: it may still be running, and a node never runs twice;
//! 2. start it again (or, under `restart-then-reinstall`, after a first restart that did
//!    not bring it back, reinstall it);
//! 3. wait for its agent to answer; if it does not, try again after an exponential
//!    backoff, and after [`MAX_ATTEMPTS`] attempts the node is `failed` with the reason.
//!
//! Attempts live in memory: a controller restart starts the count again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use super::App;
use super::store::{self, NewEvent, NodeRow, now_ms};
use crate::model::{Health, NodeState, NodeTarget, PowerAction, Recovery};

/// Attempts before a node is given up as `failed`.
pub const MAX_ATTEMPTS: u32 = 3;

#[derive(Debug, Clone, Default)]
struct Attempts {
    done: u32,
    /// No new attempt before this (ms).
    next_at: i64,
    running: bool,
}

#[derive(Default)]
pub struct Recoveries {
    nodes: Mutex<HashMap<String, Attempts>>,
}

impl Recoveries {
    pub fn new() -> Recoveries {
        Recoveries::default()
    }

    /// Claims `node` for an attempt if none runs and its backoff is over; the attempt's
    /// number (0-based).
    fn claim(&self, node: &str, now: i64) -> Option<u32> {
        let mut nodes = self.nodes.lock().expect("recoveries");
        let a = nodes.entry(node.to_string()).or_default();
        if a.running || now < a.next_at || a.done >= MAX_ATTEMPTS {
            return None;
        }
        a.running = true;
        Some(a.done)
    }

    fn finish(&self, node: &str, outcome: Result<(), i64>) {
        let mut nodes = self.nodes.lock().expect("recoveries");
        match outcome {
            Ok(()) => {
                nodes.remove(node);
            }
            Err(next_at) => {
                let a = nodes.entry(node.to_string()).or_default();
                a.running = false;
                a.done += 1;
                a.next_at = next_at;
            }
        }
    }

    /// A fencing that could not be done does not count as an attempt: the node may still
    /// run, and it is asked again after `next_at`.
    fn retry_fence(&self, node: &str, next_at: i64) {
        let mut nodes = self.nodes.lock().expect("recoveries");
        let a = nodes.entry(node.to_string()).or_default();
        a.running = false;
        a.next_at = next_at;
    }

    fn forget_others(&self, down: &[&str]) {
        let mut nodes = self.nodes.lock().expect("recoveries");
        nodes.retain(|n, a| a.running || down.contains(&n.as_str()));
    }
}

/// Backoff before attempt `n + 1`: the down delay, doubled per attempt, at most 16 ×.
pub fn backoff(down_after: Duration, done: u32) -> Duration {
    down_after.saturating_mul(1u32 << done.min(4))
}

/// Starts an attempt for every down node whose cluster asks for recovery.
pub async fn recover_down_nodes(app: &App) -> Result<(), store::StoreError> {
    let now = now_ms();
    let mut rx = app.store.read().await?;
    let nodes = store::all_nodes(rx.conn()).await?;
    let clusters: HashMap<i64, (Recovery, i64, bool)> = store::list_clusters(rx.conn(), None)
        .await?
        .into_iter()
        .map(|c| (c.id, (c.recovery, c.owner_id, c.profile_id.is_some())))
        .collect();
    rx.finish().await?;
    let down: Vec<&NodeRow> = nodes
        .iter()
        .filter(|n| n.state == NodeState::Running && n.target == NodeTarget::Running)
        .filter(|n| {
            app.monitor
                .health(&n.name)
                .is_some_and(|h| h.health == Health::Down)
        })
        .collect();
    app.recoveries
        .forget_others(&down.iter().map(|n| n.name.as_str()).collect::<Vec<_>>());
    for n in down {
        let Some(&(policy, owner, provisioned)) = clusters.get(&n.cluster_id) else {
            continue;
        };
        if policy == Recovery::Off {
            continue;
        }
        let Some(attempt) = app.recoveries.claim(&n.name, now) else {
            continue;
        };
        tokio::spawn(recover(
            app.clone(),
            n.clone(),
            Policy {
                recovery: policy,
                owner,
                provisioned,
            },
            attempt,
        ));
    }
    Ok(())
}

async fn event(app: &App, node: &NodeRow, owner: i64, kind: &str, message: String) {
    tracing::info!(node = %node.name, kind, "{message}");
    let write = async {
        let mut tx = app.store.write().await?;
        store::insert_event(
            tx.conn(),
            NewEvent {
                kind,
                cluster: Some(&node.cluster_name),
                owner_id: Some(owner),
                task_id: None,
                message: &message,
            },
            now_ms(),
        )
        .await?;
        tx.commit().await
    };
    if let Err(e) = write.await {
        tracing::warn!(error = %e, "writing a recovery event failed");
    }
}

/// What a recovery does, from the node's cluster.
#[derive(Debug, Clone, Copy)]
struct Policy {
    recovery: Recovery,
    owner: i64,
    /// The cluster has a profile: a reinstall is a real install (network boot, the
    /// profile, `booted`), which then watches the node.
    provisioned: bool,
}

async fn recover(app: App, node: NodeRow, policy: Policy, attempt: u32) {
    let Policy {
        recovery: policy,
        owner,
        provisioned,
    } = policy;
    let down_after = app.config.node_down_after();
    let name = node.name.clone();
    let n = attempt + 1;
    let host = {
        let found = async {
            let mut rx = app.store.read().await?;
            let h = store::host_by_id(rx.conn(), node.host_id).await?;
            rx.finish().await?;
            Ok::<_, store::StoreError>(h)
        };
        match found.await {
            Ok(Some(h)) => h,
            _ => {
                app.recoveries
                    .retry_fence(&name, now_ms() + down_after.as_millis() as i64);
                return;
            }
        }
    };
    // 1. Fence.
    event(
        &app,
        &node,
        owner,
        "recovery",
        format!(
            "node {name} is down: recovery attempt {n}/{MAX_ATTEMPTS} ({}): fencing it (power off through host {})",
            policy.as_str(),
            host.name
        ),
    )
    .await;
    let limit = Duration::from_secs(10);
    if let Err(e) = app
        .agents
        .power(&host, &name, PowerAction::Off, limit)
        .await
    {
        event(
            &app,
            &node,
            owner,
            "recovery-fence-failed",
            format!(
                "node {name}: fencing failed ({e}); it is not started again while it may still run"
            ),
        )
        .await;
        app.recoveries.retry_fence(
            &name,
            now_ms() + backoff(down_after, attempt).as_millis() as i64,
        );
        return;
    }
    event(
        &app,
        &node,
        owner,
        "recovery",
        format!("node {name} fenced: host {} confirmed it is off", host.name),
    )
    .await;
    // 2. Start it again, or reinstall it.
    let action = if policy == Recovery::RestartThenReinstall && attempt >= 1 {
        PowerAction::Reinstall
    } else {
        PowerAction::On
    };
    let verb = if action == PowerAction::Reinstall {
        "reinstall"
    } else {
        "restart"
    };
    if action == PowerAction::Reinstall && provisioned {
        // A real install: pending with a fresh token, the frontend told, then the node
        // remade; from here its install watches it (its phase timeout, its reports).
        match reinstall_provisioned(&app, &node, &host).await {
            Ok(()) => {
                event(
                    &app,
                    &node,
                    owner,
                    "recovery",
                    format!(
                        "node {name}: reinstall started on host {} (attempt {n}/{MAX_ATTEMPTS}); its install reports from now on",
                        host.name
                    ),
                )
                .await;
                app.recoveries.finish(&name, Ok(()));
            }
            Err(e) => {
                event(
                    &app,
                    &node,
                    owner,
                    "recovery",
                    format!("node {name}: reinstall failed: {e}"),
                )
                .await;
                let after = backoff(down_after, n);
                app.recoveries
                    .finish(&name, Err(now_ms() + after.as_millis() as i64));
            }
        }
        return;
    }
    let started = match app
        .agents
        .power(&host, &name, action, Duration::from_secs(60))
        .await
    {
        Ok(_) => {
            event(
                &app,
                &node,
                owner,
                "recovery",
                format!(
                    "node {name}: {verb}ed on host {}; waiting for it to answer",
                    host.name
                ),
            )
            .await;
            true
        }
        Err(e) => {
            event(
                &app,
                &node,
                owner,
                "recovery",
                format!("node {name}: {verb} failed: {e}"),
            )
            .await;
            false
        }
    };
    // 3. Wait for it to answer (its agent; a VM without one: its host sees it running).
    // Its agent starts within a second or so and answers at the host's next beat.
    let wait = down_after.saturating_mul(2) + app.config.heartbeat.saturating_mul(2);
    let deadline = tokio::time::Instant::now() + wait;
    let mut up = false;
    while started && tokio::time::Instant::now() < deadline {
        if app
            .monitor
            .health(&name)
            .is_some_and(|h| h.health == Health::Up)
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if up {
        event(
            &app,
            &node,
            owner,
            "recovered",
            format!("node {name} recovered: up again after attempt {n} ({verb})"),
        )
        .await;
        app.recoveries.finish(&name, Ok(()));
        return;
    }
    if n >= MAX_ATTEMPTS {
        let reason = format!(
            "recovery gave up after {MAX_ATTEMPTS} attempts: it never answered after a {verb} (its agent, or for a VM its hypervisor)"
        );
        let write = async {
            let mut tx = app.store.write().await?;
            store::set_node_state(
                tx.conn(),
                node.id,
                NodeState::Failed,
                node.target,
                Some(&reason),
                now_ms(),
            )
            .await?;
            tx.commit().await
        };
        if let Err(e) = write.await {
            tracing::warn!(error = %e, "marking a node failed");
        }
        event(
            &app,
            &node,
            owner,
            "recovery-failed",
            format!("node {name} failed: {reason}"),
        )
        .await;
        app.recoveries.finish(&name, Err(i64::MAX));
        return;
    }
    let after = backoff(down_after, n);
    event(
        &app,
        &node,
        owner,
        "recovery",
        format!(
            "node {name}: not back after the {verb} (waited {:.0} s); next attempt in {:.0} s",
            wait.as_secs_f64(),
            after.as_secs_f64()
        ),
    )
    .await;
    app.recoveries
        .finish(&name, Err(now_ms() + after.as_millis() as i64));
}

/// Starts a real reinstall of a provisioned node, as `vcluster reinstall` does.
async fn reinstall_provisioned(
    app: &App,
    node: &NodeRow,
    host: &store::HostRow,
) -> Result<(), String> {
    let mut tx = app.store.write().await.map_err(|e| e.to_string())?;
    let cluster = store::cluster_by_id(tx.conn(), node.cluster_id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("its cluster is gone")?;
    // What it will install must render, or its install would fail later and less clearly.
    crate::controller::api::profiles::render_every_node(tx.conn(), &cluster)
        .await
        .map_err(|e| e.message)?;
    store::start_install(tx.conn(), node.id, &super::install::new_token(), now_ms())
        .await
        .map_err(|e| e.to_string())?;
    tx.commit().await.map_err(|e| e.to_string())?;
    let pair = [(node.clone(), host.clone())];
    super::install::remake_for_install(app, node.cluster_id, &pair)
        .await
        .into_iter()
        .next()
        .unwrap_or(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_are_claimed_once_back_off_and_stop_at_the_limit() {
        let r = Recoveries::new();
        assert_eq!(r.claim("n", 0), Some(0));
        assert_eq!(r.claim("n", 0), None, "one attempt at a time");
        r.finish("n", Err(1000));
        assert_eq!(r.claim("n", 999), None, "backing off");
        assert_eq!(r.claim("n", 1000), Some(1));
        r.finish("n", Err(2000));
        assert_eq!(r.claim("n", 2000), Some(2));
        r.finish("n", Err(3000));
        assert_eq!(r.claim("n", i64::MAX - 1), None, "the limit");
        // A fencing that failed is no attempt.
        assert_eq!(r.claim("m", 0), Some(0));
        r.retry_fence("m", 10);
        assert_eq!(r.claim("m", 10), Some(0));
        r.finish("m", Ok(()));
        assert_eq!(r.claim("m", 10), Some(0), "a recovered node starts afresh");
        r.forget_others(&[]);
        assert_eq!(r.claim("n", 0), Some(0), "up again: its count is forgotten");
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let d = Duration::from_secs(4);
        assert_eq!(backoff(d, 0), d);
        assert_eq!(backoff(d, 1), d * 2);
        assert_eq!(backoff(d, 4), d * 16);
        assert_eq!(backoff(d, u32::MAX), d * 16);
        assert_eq!(backoff(Duration::MAX, 3), Duration::MAX);
    }
}
