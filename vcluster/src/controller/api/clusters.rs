//! Clusters and their nodes: create (placed across sites, optionally inside a reservation),
//! add and remove nodes, start and stop the overlay, delete. Each change is one
//! transaction that records the goal and a task, and answers `202` with the task at once;
//! `tasks` carries it out on the hosts. Users see and act on their own clusters, admins on
//! all; someone else's cluster is a 404.

use crate::model::{ClusterState, NodeState, NodeTarget, OverlayState, ReservationState};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use axum::extract::State;
use axum::response::Response;
use base64::Engine;
use ipnet::Ipv4Net;
use rand::RngCore;

use super::accepted;
use crate::api_error::{ApiError, ApiJson, ApiPath};
use crate::controller::App;
use crate::controller::auth::Principal;
use crate::controller::placement::{self, Request};
use crate::controller::store::{
    self, ClusterRow, NewCluster, NewEvent, NewNode, ReservationRow, WriteTx, now_ms,
};
use crate::controller::tasks::{self, Operation};
use crate::controller::view::CapacityView;
use crate::model::{
    Accepted, AddNodes, ApiErrorBody, Cluster, CreateCluster, Firmware, MAX_NODE_INDEX, NetworkId,
    NodeSlot, Resources, Strategy, node_name,
};

pub(crate) async fn cluster_model(
    conn: &mut sqlx::AnyConnection,
    row: &ClusterRow,
    monitor: &crate::controller::health::Monitor,
) -> Result<Cluster, ApiError> {
    let nodes = store::nodes_of_cluster(conn, row.id).await?;
    let installs: std::collections::BTreeMap<i64, store::InstallRow> =
        store::installs_of_cluster(conn, row.id)
            .await?
            .into_iter()
            .map(|i| (i.node_id, i))
            .collect();
    Ok(row.to_model(
        nodes
            .iter()
            .filter(|n| n.state != NodeState::Deleted)
            .map(|n| {
                let mut m = n.to_model();
                if n.state == NodeState::Running {
                    m.health = monitor.health(&n.name);
                }
                m.install = installs.get(&n.id).map(store::InstallRow::to_model);
                m
            })
            .collect(),
    ))
}

/// The cluster if `who` may see it; 404 otherwise.
pub(crate) async fn visible_cluster(
    conn: &mut sqlx::AnyConnection,
    who: &Principal,
    key: &str,
) -> Result<ClusterRow, ApiError> {
    match store::cluster_by_key(conn, key).await? {
        Some(c) if who.may_see(c.owner_id) => Ok(c),
        _ => Err(ApiError::not_found(format!("no cluster {key:?}"))),
    }
}

#[utoipa::path(get, path = "/v1/clusters", tag = "clusters",
    responses((status = 200, body = Vec<Cluster>)))]
pub async fn list_clusters(
    State(app): State<App>,
    who: Principal,
) -> Result<ApiJson<Vec<Cluster>>, ApiError> {
    who.require_person()?;
    let mut rx = app.store.read().await?;
    let rows = store::list_clusters(rx.conn(), who.owner_filter()).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        out.push(cluster_model(rx.conn(), r, &app.monitor).await?);
    }
    rx.finish().await?;
    Ok(ApiJson(out))
}

#[utoipa::path(get, path = "/v1/clusters/{cluster}", tag = "clusters",
    params(("cluster" = String, Path, description = "cluster name or id")),
    responses((status = 200, body = Cluster), (status = 404, body = ApiErrorBody)))]
pub async fn get_cluster(
    State(app): State<App>,
    who: Principal,
    ApiPath(cluster): ApiPath<String>,
) -> Result<ApiJson<Cluster>, ApiError> {
    who.require_person()?;
    let mut rx = app.store.read().await?;
    let row = visible_cluster(rx.conn(), &who, &cluster).await?;
    let model = cluster_model(rx.conn(), &row, &app.monitor).await?;
    rx.finish().await?;
    Ok(ApiJson(model))
}

/// What new nodes may take, per site: the reservation's remainder inside a lease, the
/// unreserved room outside one.
struct Budget {
    per_site: BTreeMap<i64, Resources>,
    /// Nodes the reservation still allows, when it counts nodes.
    node_limit: Option<i64>,
}

fn budget(
    view: &CapacityView,
    reservation: Option<&ReservationRow>,
    now: i64,
) -> Result<Budget, ApiError> {
    match reservation {
        Some(r) => {
            if now < r.starts_at || now >= r.ends_at || r.state != ReservationState::Accepted {
                return Err(ApiError::conflict(format!(
                    "reservation {} is {} for {} .. {}; now ({}) is outside its lease",
                    r.id,
                    r.state,
                    store::ms_to_time(r.starts_at),
                    store::ms_to_time(r.ends_at),
                    store::ms_to_time(now)
                ))
                .with_field("reservation"));
            }
            let (used, used_nodes) = view.reservation_use.get(&r.id).copied().unwrap_or_default();
            Ok(Budget {
                per_site: BTreeMap::from([(r.site_id, r.resources().minus(used))]),
                node_limit: r.nodes.map(|n| n - used_nodes),
            })
        }
        None => Ok(Budget {
            per_site: view
                .ledgers
                .iter()
                .map(|(site, l)| (*site, l.unreserved_room(now)))
                .collect(),
            node_limit: None,
        }),
    }
}

fn random_psk() -> String {
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// The highest node index a subnet has addresses for: the network and broadcast
/// addresses are not hosts, the last host address is kept for site-local services (a
/// site's package cache), as in `docs/config.md`, and the one before it for the cluster's
/// provisioning frontend ([`crate::model::service_addresses`]).
fn max_index(subnet: Ipv4Net) -> u32 {
    let hosts = (1u64 << (32 - subnet.prefix_len())).saturating_sub(4);
    hosts.min(MAX_NODE_INDEX as u64) as u32
}

fn node_address(subnet: Ipv4Net, index: u32) -> String {
    let ip = Ipv4Addr::from(u32::from(subnet.network()) + index);
    format!("{ip}/{}", subnet.prefix_len())
}

/// The cluster's subnet: the one asked for (checked free and large enough), or the
/// first free one in the pool that has addresses for `nodes` (a /24 unless the cluster is
/// larger).
async fn choose_subnet(
    tx: &mut WriteTx,
    pool: Ipv4Net,
    wanted: Option<Ipv4Net>,
    nodes: u32,
) -> Result<Ipv4Net, ApiError> {
    let taken: Vec<Ipv4Net> = store::list_clusters(tx.conn(), None)
        .await?
        .iter()
        .filter_map(|c| c.subnet.parse().ok())
        .collect();
    let overlaps = |a: &Ipv4Net, b: &Ipv4Net| a.contains(&b.network()) || b.contains(&a.network());
    if let Some(net) = wanted {
        if let Some(t) = taken.iter().find(|t| overlaps(t, &net)) {
            return Err(ApiError::conflict(format!(
                "subnet {net} overlaps {t}, used by another cluster"
            ))
            .with_field("subnet"));
        }
        if nodes > max_index(net) {
            return Err(ApiError::invalid(
                "subnet",
                format!(
                    "subnet {net} has addresses for only {} nodes",
                    max_index(net)
                ),
            ));
        }
        return Ok(net);
    }
    let needed = u64::from(nodes) + 3;
    let bits = 64 - (needed - 1).leading_zeros() as u8;
    let size = pool.prefix_len().max((32 - bits.max(8)).min(24));
    pool.subnets(size)
        .map_err(|e| ApiError::internal(format!("subnet pool {pool}: {e}")))?
        .find(|n| !taken.iter().any(|t| overlaps(t, n)))
        .ok_or_else(|| ApiError::conflict(format!("the subnet pool {pool} is used up")))
}

/// Where new nodes go: `anywhere` of them by `strategy`, the rest pinned to sites.
struct Placement {
    anywhere: u32,
    /// (site id, nodes)
    pinned: Vec<(i64, u32)>,
    strategy: Strategy,
}

/// Places the new nodes and inserts their rows (state `requested`). Returns their ids.
async fn place_nodes(
    tx: &mut WriteTx,
    app: &App,
    cluster: &ClusterRow,
    reservation: Option<&ReservationRow>,
    placement: Placement,
    firmware: Firmware,
    now: i64,
) -> Result<Vec<i64>, ApiError> {
    let Placement {
        anywhere,
        pinned,
        strategy,
    } = placement;
    let view =
        CapacityView::load(tx.conn(), now, app.config.overcommit, app.host_timeout_ms()).await?;
    let b = budget(&view, reservation, now)?;
    let total = anywhere + pinned.iter().map(|p| p.1).sum::<u32>();
    if let Some(limit) = b.node_limit
        && i64::from(total) > limit
    {
        return Err(ApiError::conflict(format!(
            "reservation {} allows {} more nodes; asked for {total}",
            reservation.map(|r| r.id).unwrap_or_default(),
            limit.max(0)
        ))
        .with_field("nodes"));
    }
    if let Some(r) = reservation
        && let Some((site, _)) = pinned.iter().find(|(s, _)| *s != r.site_id)
    {
        let name = view
            .sites
            .iter()
            .find(|s| s.id == *site)
            .map(|s| s.name.clone())
            .unwrap_or_default();
        return Err(ApiError::conflict(format!(
            "reservation {} is at site {}; nodes cannot be pinned to {name}",
            r.id, r.site_name
        ))
        .with_field("sites"));
    }
    let existing_nodes = store::nodes_of_cluster(tx.conn(), cluster.id).await?;
    let live: Vec<_> = existing_nodes
        .iter()
        .filter(|n| !matches!(n.state, NodeState::Deleted | NodeState::Failed))
        .collect();
    let mut existing: BTreeMap<i64, u32> = BTreeMap::new();
    let host_site: BTreeMap<i64, i64> = view.hosts.iter().map(|h| (h.id, h.site_id)).collect();
    for n in &live {
        *existing
            .entry(host_site.get(&n.host_id).copied().unwrap_or_default())
            .or_default() += 1;
    }
    let request = Request {
        anywhere,
        pinned,
        per_node: Resources::new(cluster.node_cpus, cluster.node_memory_mib),
        strategy,
        existing,
        site_budget: b.per_site,
    };
    let hosts = placement::place(&request, &view.host_rooms())
        .map_err(|e| ApiError::conflict(e.reason).with_field("nodes"))?;

    let subnet: Ipv4Net = cluster
        .subnet
        .parse()
        .map_err(|_| ApiError::internal(format!("cluster {} has a bad subnet", cluster.name)))?;
    let used: BTreeSet<u32> = live.iter().map(|n| n.idx as u32).collect();
    let free_indices: Vec<u32> = (1..=max_index(subnet))
        .filter(|i| !used.contains(i))
        .take(hosts.len())
        .collect();
    if free_indices.len() < hosts.len() {
        return Err(ApiError::conflict(format!(
            "subnet {subnet} has addresses for {} nodes",
            max_index(subnet)
        ))
        .with_field("nodes"));
    }
    let network = NetworkId(cluster.network_id as u32);
    for (&host_id, &index) in hosts.iter().zip(&free_indices) {
        let slot = NodeSlot { network, index };
        let name = node_name(&cluster.name, index);
        let mac = slot.mac().to_string();
        let address = node_address(subnet, index);
        store::upsert_requested_node(
            tx.conn(),
            NewNode {
                cluster_id: cluster.id,
                idx: index as i64,
                name: &name,
                host_id,
                mac: &mac,
                address: &address,
                cpus: cluster.node_cpus,
                memory_mib: cluster.node_memory_mib,
                firmware,
            },
            now,
        )
        .await?;
    }
    let ids = store::nodes_of_cluster(tx.conn(), cluster.id)
        .await?
        .into_iter()
        .filter(|n| free_indices.contains(&(n.idx as u32)))
        .map(|n| n.id)
        .collect();
    Ok(ids)
}

async fn reservation_for(
    tx: &mut WriteTx,
    who: &Principal,
    id: Option<i64>,
) -> Result<Option<ReservationRow>, ApiError> {
    let Some(id) = id else { return Ok(None) };
    match store::reservation_by_id(tx.conn(), id).await? {
        Some(r) if who.may_see(r.owner_id) => Ok(Some(r)),
        _ => Err(ApiError::invalid(
            "reservation",
            format!("no reservation {id}"),
        )),
    }
}

/// The one ending of every handler that changes a cluster on its hosts: records the task
/// and its event in `tx`, commits, starts the task and answers 202 with the task and the
/// cluster as it now is.
async fn run_as_task(
    app: &App,
    mut tx: WriteTx,
    cluster_id: i64,
    op: Operation,
    what: &str,
    now: i64,
) -> Result<Response, ApiError> {
    let row = store::cluster_by_id(tx.conn(), cluster_id)
        .await?
        .ok_or_else(|| ApiError::internal(format!("cluster {cluster_id} vanished")))?;
    // A task that makes or removes many nodes gets the time their hosts need for them
    // (as the controller's wait for each host's apply does).
    let nodes = match &op {
        Operation::CreateCluster | Operation::DeleteCluster => {
            store::nodes_of_cluster(tx.conn(), row.id).await?.len()
        }
        Operation::AddNodes { node_ids } => node_ids.len(),
        _ => 0,
    };
    let per_node = crate::controller::agent_client::APPLY_PER_NODE.as_millis() as i64;
    let deadline = app
        .task_deadline(now)
        .saturating_add(per_node.saturating_mul(i64::try_from(nodes).unwrap_or(i64::MAX)));
    let task = store::insert_task(
        tx.conn(),
        op.kind(),
        row.owner_id,
        Some(&row.name),
        now,
        deadline,
    )
    .await?;
    store::insert_event(
        tx.conn(),
        NewEvent {
            kind: op.kind().as_str(),
            cluster: Some(&row.name),
            owner_id: Some(row.owner_id),
            task_id: Some(task.id),
            message: what,
        },
        now,
    )
    .await?;
    let cluster = cluster_model(tx.conn(), &row, &app.monitor).await?;
    tx.commit().await?;
    tracing::info!(cluster = %row.name, task = task.id, kind = %op.kind(), "task started");
    tasks::spawn(app.clone(), task.clone(), row.id, op);
    Ok(accepted(Accepted {
        task: task.to_model(),
        cluster: Some(cluster),
    }))
}

/// Creates a cluster of N nodes; answers 202 with the task and the cluster as placed.
#[utoipa::path(post, path = "/v1/clusters", tag = "clusters", request_body = CreateCluster,
    responses((status = 202, body = Accepted), (status = 409, body = ApiErrorBody), (status = 422, body = ApiErrorBody)))]
pub async fn create_cluster(
    State(app): State<App>,
    who: Principal,
    ApiJson(req): ApiJson<CreateCluster>,
) -> Result<Response, ApiError> {
    who.require_person()?;
    let req = req.validate()?;
    let now = now_ms();
    let mut tx = app.store.write().await?;
    let mut pinned = Vec::new();
    for (site, nodes) in &req.pinned {
        let row = store::site_by_key(tx.conn(), site)
            .await?
            .ok_or_else(|| ApiError::invalid("sites", format!("unknown site {site:?}")))?;
        pinned.push((row.id, *nodes));
    }
    let reservation = reservation_for(&mut tx, &who, req.reservation).await?;
    let profile_id = super::profiles::profile_id(&mut tx, req.profile.as_deref()).await?;
    let frontend_host_id = match &req.frontend_site {
        Some(site) => Some(frontend_host_at(&mut tx, &app, site, now).await?),
        None => None,
    };
    let subnet = choose_subnet(
        &mut tx,
        app.config.subnet_pool,
        req.subnet,
        req.total_nodes(),
    )
    .await?;
    let network_id = store::next_network_id(tx.conn(), app.config.first_network_id as i64).await?;
    if network_id > u32::MAX as i64 {
        return Err(ApiError::conflict("overlay network ids are used up"));
    }
    let subnet_text = subnet.to_string();
    let inserted = store::insert_cluster(
        tx.conn(),
        NewCluster {
            name: &req.name,
            owner_id: who.user_id,
            network_id,
            psk: &random_psk(),
            subnet: &subnet_text,
            reservation_id: reservation.as_ref().map(|r| r.id),
            node_cpus: req.per_node.cpus,
            node_memory_mib: req.per_node.memory_mib,
            recovery: req.recovery,
            profile_id,
            frontend_host_id,
            node_firmware: req.node_firmware,
        },
        now,
    )
    .await;
    let id = match inserted {
        Err(store::StoreError::Db(e)) if store::is_unique_violation(&e) => {
            return Err(
                ApiError::conflict(format!("a cluster named {:?} exists", req.name))
                    .with_field("name"),
            );
        }
        other => other?,
    };
    let row = store::cluster_by_id(tx.conn(), id)
        .await?
        .ok_or_else(|| ApiError::internal("cluster vanished"))?;
    let placement = Placement {
        anywhere: req.anywhere,
        pinned,
        strategy: req.strategy,
    };
    let firmware = row.node_firmware;
    let node_ids = place_nodes(
        &mut tx,
        &app,
        &row,
        reservation.as_ref(),
        placement,
        firmware,
        now,
    )
    .await?;
    // Before anything is accepted: a template error refuses the create, and dropping the
    // transaction keeps nothing of it.
    super::profiles::render_every_node(tx.conn(), &row).await?;
    crate::controller::install::start_new_installs(tx.conn(), &row, &node_ids, now).await?;
    let what = format!(
        "{} asked for cluster {} of {} nodes",
        who.name,
        row.name,
        req.total_nodes()
    );
    run_as_task(&app, tx, id, Operation::CreateCluster, &what, now).await
}

/// The host at `site` that runs a new cluster's frontend: its online host with the
/// fewest frontends already, by name on a tie.
async fn frontend_host_at(
    tx: &mut WriteTx,
    app: &App,
    site: &str,
    now: i64,
) -> Result<i64, ApiError> {
    let row = store::site_by_key(tx.conn(), site)
        .await?
        .ok_or_else(|| ApiError::invalid("frontend_site", format!("unknown site {site:?}")))?;
    let mut best: Option<(usize, String, i64)> = None;
    for h in store::list_hosts(tx.conn()).await? {
        if h.site_id != row.id || !h.is_online(now, app.host_timeout_ms()) {
            continue;
        }
        let load = store::clusters_with_frontend_on(tx.conn(), h.id)
            .await?
            .len();
        let key = (load, h.name.clone(), h.id);
        if best.as_ref().is_none_or(|b| (key.0, &key.1) < (b.0, &b.1)) {
            best = Some(key);
        }
    }
    best.map(|b| b.2).ok_or_else(|| {
        ApiError::invalid(
            "frontend_site",
            format!("site {} has no online host to run a frontend", row.name),
        )
    })
}

fn require_state(row: &ClusterRow, allowed: &[ClusterState], doing: &str) -> Result<(), ApiError> {
    if allowed.contains(&row.state) {
        Ok(())
    } else {
        Err(ApiError::conflict(format!(
            "cluster {} is {}: cannot {doing}",
            row.name, row.state
        )))
    }
}

/// Adds nodes to a cluster.
#[utoipa::path(post, path = "/v1/clusters/{cluster}/nodes", tag = "clusters", request_body = AddNodes,
    params(("cluster" = String, Path, description = "cluster name or id")),
    responses((status = 202, body = Accepted), (status = 404, body = ApiErrorBody), (status = 409, body = ApiErrorBody)))]
pub async fn add_nodes(
    State(app): State<App>,
    who: Principal,
    ApiPath(cluster): ApiPath<String>,
    ApiJson(req): ApiJson<AddNodes>,
) -> Result<Response, ApiError> {
    who.require_person()?;
    let count = req.validate()?;
    let now = now_ms();
    let mut tx = app.store.write().await?;
    let row = visible_cluster(tx.conn(), &who, &cluster).await?;
    require_state(&row, &[ClusterState::Active], "add nodes")?;
    let placement = match &req.site {
        Some(s) => {
            let site = store::site_by_key(tx.conn(), s)
                .await?
                .ok_or_else(|| ApiError::invalid("site", format!("unknown site {s:?}")))?;
            Placement {
                anywhere: 0,
                pinned: vec![(site.id, count)],
                strategy: req.strategy.unwrap_or(Strategy::Spread),
            }
        }
        None => Placement {
            anywhere: count,
            pinned: vec![],
            strategy: req.strategy.unwrap_or(Strategy::Spread),
        },
    };
    let reservation = match row.reservation_id {
        Some(r) => store::reservation_by_id(tx.conn(), r).await?,
        None => None,
    };
    let firmware = req.firmware.unwrap_or(row.node_firmware);
    let node_ids = place_nodes(
        &mut tx,
        &app,
        &row,
        reservation.as_ref(),
        placement,
        firmware,
        now,
    )
    .await?;
    super::profiles::render_every_node(tx.conn(), &row).await?;
    crate::controller::install::start_new_installs(tx.conn(), &row, &node_ids, now).await?;
    let what = format!("{} asked for {count} more nodes", who.name);
    run_as_task(
        &app,
        tx,
        row.id,
        Operation::AddNodes { node_ids },
        &what,
        now,
    )
    .await
}

/// Removes one node (by name or index); the rest of the cluster keeps running.
#[utoipa::path(delete, path = "/v1/clusters/{cluster}/nodes/{node}", tag = "clusters",
    params(("cluster" = String, Path, description = "cluster name or id"),
           ("node" = String, Path, description = "node name or index")),
    responses((status = 202, body = Accepted), (status = 404, body = ApiErrorBody), (status = 409, body = ApiErrorBody)))]
pub async fn remove_node(
    State(app): State<App>,
    who: Principal,
    ApiPath((cluster, node)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    who.require_person()?;
    let now = now_ms();
    let mut tx = app.store.write().await?;
    let row = visible_cluster(tx.conn(), &who, &cluster).await?;
    require_state(
        &row,
        &[ClusterState::Active, ClusterState::Expired],
        "remove nodes",
    )?;
    let nodes = store::nodes_of_cluster(tx.conn(), row.id).await?;
    let target = nodes
        .iter()
        .find(|n| (n.name == node || n.idx.to_string() == node) && n.state != NodeState::Deleted)
        .ok_or_else(|| ApiError::not_found(format!("cluster {} has no node {node:?}", row.name)))?;
    if matches!(
        target.state,
        NodeState::Requested | NodeState::Creating | NodeState::Stopping
    ) {
        return Err(ApiError::conflict(format!(
            "node {} is {}; wait for its task to finish",
            target.name, target.state
        )));
    }
    store::set_node_state(
        tx.conn(),
        target.id,
        NodeState::Stopping,
        NodeTarget::Deleted,
        None,
        now,
    )
    .await?;
    let what = format!("{} asked to remove node {}", who.name, target.name);
    let op = Operation::RemoveNode { node_id: target.id };
    run_as_task(&app, tx, row.id, op, &what, now).await
}

async fn set_overlay(
    app: App,
    who: Principal,
    cluster: String,
    wanted: OverlayState,
) -> Result<Response, ApiError> {
    who.require_person()?;
    let now = now_ms();
    let mut tx = app.store.write().await?;
    let row = visible_cluster(tx.conn(), &who, &cluster).await?;
    let previous = row.overlay;
    let op = match wanted {
        OverlayState::Running => {
            require_state(&row, &[ClusterState::Active], "start its overlay")?;
            Operation::StartOverlay { previous }
        }
        OverlayState::Stopped => {
            require_state(
                &row,
                &[ClusterState::Active, ClusterState::Expired],
                "stop its overlay",
            )?;
            Operation::StopOverlay { previous }
        }
    };
    store::set_cluster_overlay(tx.conn(), row.id, wanted, now).await?;
    let what = format!("{} asked for the overlay to be {wanted}", who.name);
    run_as_task(&app, tx, row.id, op, &what, now).await
}

/// Starts the cluster's overlay network on every host it has nodes on.
#[utoipa::path(post, path = "/v1/clusters/{cluster}/overlay/start", tag = "clusters",
    params(("cluster" = String, Path, description = "cluster name or id")),
    responses((status = 202, body = Accepted), (status = 404, body = ApiErrorBody), (status = 409, body = ApiErrorBody)))]
pub async fn start_overlay(
    State(app): State<App>,
    who: Principal,
    ApiPath(cluster): ApiPath<String>,
) -> Result<Response, ApiError> {
    set_overlay(app, who, cluster, OverlayState::Running).await
}

/// Stops the cluster's overlay network on every host: nodes at different hosts can no
/// longer reach each other; nodes keep running.
#[utoipa::path(post, path = "/v1/clusters/{cluster}/overlay/stop", tag = "clusters",
    params(("cluster" = String, Path, description = "cluster name or id")),
    responses((status = 202, body = Accepted), (status = 404, body = ApiErrorBody), (status = 409, body = ApiErrorBody)))]
pub async fn stop_overlay(
    State(app): State<App>,
    who: Principal,
    ApiPath(cluster): ApiPath<String>,
) -> Result<Response, ApiError> {
    set_overlay(app, who, cluster, OverlayState::Stopped).await
}

/// Deletes the cluster: every node, the overlay network and the bridges on every host.
#[utoipa::path(delete, path = "/v1/clusters/{cluster}", tag = "clusters",
    params(("cluster" = String, Path, description = "cluster name or id")),
    responses((status = 202, body = Accepted), (status = 404, body = ApiErrorBody), (status = 409, body = ApiErrorBody)))]
pub async fn delete_cluster(
    State(app): State<App>,
    who: Principal,
    ApiPath(cluster): ApiPath<String>,
) -> Result<Response, ApiError> {
    who.require_person()?;
    let now = now_ms();
    let mut tx = app.store.write().await?;
    let row = visible_cluster(tx.conn(), &who, &cluster).await?;
    require_state(
        &row,
        &[
            ClusterState::Active,
            ClusterState::Expired,
            ClusterState::Failed,
        ],
        "delete it again",
    )?;
    store::set_cluster_state(tx.conn(), row.id, ClusterState::Deleting, None, now).await?;
    for n in store::nodes_of_cluster(tx.conn(), row.id).await? {
        if n.state != NodeState::Deleted {
            let state = if n.state == NodeState::Failed {
                NodeState::Failed
            } else {
                NodeState::Stopping
            };
            let reason = n.reason.as_deref();
            store::set_node_state(tx.conn(), n.id, state, NodeTarget::Deleted, reason, now).await?;
        }
    }
    let what = format!("{} asked to delete cluster {}", who.name, row.name);
    run_as_task(&app, tx, row.id, Operation::DeleteCluster, &what, now).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_addresses_leave_the_last_two_host_addresses_for_site_services_and_the_frontend() {
        let net: Ipv4Net = "10.77.3.0/24".parse().unwrap();
        assert_eq!(max_index(net), 252);
        assert_eq!(node_address(net, 1), "10.77.3.1/24");
        assert_eq!(node_address(net, 252), "10.77.3.252/24");
        let (site, frontend) = crate::model::service_addresses(net);
        assert_eq!(site.to_string(), "10.77.3.254");
        assert_eq!(frontend.to_string(), "10.77.3.253");
        let small: Ipv4Net = "10.0.0.0/29".parse().unwrap();
        assert_eq!(max_index(small), 4);
        let (site, frontend) = crate::model::service_addresses(small);
        assert_eq!(
            (site.to_string().as_str(), frontend.to_string().as_str()),
            ("10.0.0.6", "10.0.0.5")
        );
    }
}

/// Sets what the controller does with the cluster's nodes that go down.
#[utoipa::path(put, path = "/v1/clusters/{cluster}/recovery", tag = "clusters",
    params(("cluster" = String, Path, description = "cluster name or id")),
    request_body = crate::model::SetRecovery,
    responses((status = 200, body = Cluster), (status = 404, body = ApiErrorBody), (status = 422, body = ApiErrorBody)))]
pub async fn set_recovery(
    State(app): State<App>,
    who: Principal,
    ApiPath(cluster): ApiPath<String>,
    ApiJson(req): ApiJson<crate::model::SetRecovery>,
) -> Result<ApiJson<Cluster>, ApiError> {
    who.require_person()?;
    let now = now_ms();
    let mut tx = app.store.write().await?;
    let row = visible_cluster(tx.conn(), &who, &cluster).await?;
    store::set_cluster_recovery(tx.conn(), row.id, req.policy, now).await?;
    store::insert_event(
        tx.conn(),
        NewEvent {
            kind: "recovery-policy",
            cluster: Some(&row.name),
            owner_id: Some(row.owner_id),
            task_id: None,
            message: &format!(
                "cluster {}: recovery policy {} (was {}), set by {}",
                row.name,
                req.policy.as_str(),
                row.recovery.as_str(),
                who.name
            ),
        },
        now,
    )
    .await?;
    let row = visible_cluster(tx.conn(), &who, &cluster).await?;
    let model = cluster_model(tx.conn(), &row, &app.monitor).await?;
    tx.commit().await?;
    Ok(ApiJson(model))
}
