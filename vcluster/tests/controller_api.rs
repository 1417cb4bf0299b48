//! The controller's REST API against a real server on loopback, with host agents (an
//! in-memory VM driver and a stand-in vpnd each), on SQLite and on PostgreSQL: every test
//! here runs twice, as `sqlite::<name>` and `postgres::<name>`.

mod common;

use std::time::Duration;

use chrono::Utc;
use reqwest::Method;
use serde_json::{Value, json};
use vcluster::cli::ApiClient;
use vcluster::model::{
    Accepted, Cluster, ClusterState, EarliestSlot, Event, Host, NodeState, OverlayState,
    Reservation, Site, Task, TaskKind, TaskState,
};

use common::{
    Backend, TestAgent, TestController, eventually, expect_success, get_cluster, raw, wait_task,
};

/// A controller, sites with one agent-run host each, and a user.
struct World {
    ctl: TestController,
    user: ApiClient,
    user_token: String,
    agents: Vec<TestAgent>,
}

async fn world(backend: &Backend, sites: &[(&str, i64)]) -> World {
    world_with(common::TestController::start(backend).await, sites).await
}

async fn world_with(ctl: TestController, sites: &[(&str, i64)]) -> World {
    let mut agents = Vec::new();
    for (i, (site, cpus)) in sites.iter().enumerate() {
        ctl.site(site).await;
        let host = format!("{site}-h{i}");
        let token = ctl.user(&format!("agent-{host}"), "agent").await;
        agents.push(TestAgent::start(&ctl, &token, &host, site, *cpus).await);
    }
    let user_token = ctl.user("alice", "user").await;
    World {
        user: ctl.client(&user_token),
        user_token,
        ctl,
        agents,
    }
}

async fn create(client: &ApiClient, body: Value) -> Accepted {
    client
        .post("/v1/clusters", &body)
        .await
        .expect("cluster accepted")
}

fn nodes_at(c: &Cluster, site: &str) -> usize {
    c.nodes.iter().filter(|n| n.site == site).count()
}

async fn roles_are_enforced_and_errors_are_json(b: Backend) {
    let w = world(&b, &[("east", 2)]).await;
    let url = &w.ctl.url;
    let (s, body) = raw(Method::GET, &format!("{url}/v1/sites"), None, None).await;
    assert_eq!(s, 401);
    assert!(body["error"].as_str().unwrap().contains("Bearer"), "{body}");
    let (s, _) = raw(
        Method::GET,
        &format!("{url}/v1/sites"),
        Some("vc_nope"),
        None,
    )
    .await;
    assert_eq!(s, 401);

    // A user reads sites but may not create one or list hosts.
    let (s, body) = raw(
        Method::GET,
        &format!("{url}/v1/sites"),
        Some(&w.user_token),
        None,
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body.as_array().unwrap().len(), 1);
    let (s, body) = raw(
        Method::POST,
        &format!("{url}/v1/sites"),
        Some(&w.user_token),
        Some(r#"{"name":"x"}"#),
    )
    .await;
    assert_eq!(s, 403);
    assert!(
        body["error"].as_str().unwrap().contains("admin role"),
        "{body}"
    );
    let (s, _) = raw(
        Method::GET,
        &format!("{url}/v1/hosts"),
        Some(&w.user_token),
        None,
    )
    .await;
    assert_eq!(s, 403);

    // An agent token registers hosts but is no user.
    let agent = w.ctl.user("agent-x", "agent").await;
    let (s, body) = raw(
        Method::GET,
        &format!("{url}/v1/clusters"),
        Some(&agent),
        None,
    )
    .await;
    assert_eq!(s, 403, "{body}");

    // Admins see the host with its capacity and heartbeat.
    let hosts: Vec<Host> = w.ctl.admin.get("/v1/hosts").await.unwrap();
    assert_eq!(hosts.len(), 1);
    assert!(hosts[0].online);
    assert_eq!(hosts[0].public_key, w.agents[0].vpnd.public_key.to_string());
    let me: Value = w.user.get("/v1/whoami").await.unwrap();
    assert_eq!(me["role"], "user");
}

async fn bad_input_is_refused_naming_the_field_and_leaves_nothing(b: Backend) {
    let w = world(&b, &[("east", 2)]).await;
    let url = &w.ctl.url;
    let t = Some(w.user_token.as_str());
    let post = async |path: &str, body: &str| {
        raw(Method::POST, &format!("{url}{path}"), t, Some(body)).await
    };

    let (s, body) = post("/v1/clusters", "{not json").await;
    assert_eq!(s, 400, "{body}");
    let (s, body) = post("/v1/clusters", r#"{"name":"c1","nodes":"four"}"#).await;
    assert_eq!(s, 422);
    assert_eq!(body["field"], "nodes", "{body}");
    let (s, body) = post("/v1/clusters", r#"{"name":"Bad Name","nodes":1}"#).await;
    assert_eq!(s, 422);
    assert_eq!(body["field"], "name", "{body}");
    let (s, body) = post(
        "/v1/clusters",
        r#"{"name":"c1","nodes":1,"sites":[{"site":"nowhere","nodes":1}]}"#,
    )
    .await;
    assert_eq!(s, 422);
    assert_eq!(body["field"], "sites", "{body}");

    // N above capacity: 2 CPUs x 4 overcommit, 2048 MiB -> 4 nodes of 512 MiB.
    let (s, body) = post("/v1/clusters", r#"{"name":"big","nodes":5}"#).await;
    assert_eq!(s, 409, "{body}");
    assert_eq!(body["field"], "nodes");
    assert!(
        body["error"].as_str().unwrap().contains("not enough room"),
        "{body}"
    );
    let clusters: Vec<Cluster> = w.user.get("/v1/clusters").await.unwrap();
    assert!(
        clusters.is_empty(),
        "a refused cluster leaves no row: {clusters:?}"
    );
    // ...and its name is free
    let ok = create(&w.user, json!({"name": "big", "nodes": 4})).await;
    expect_success(&w.user, &ok).await;

    let start = Utc::now() + chrono::Duration::hours(2);
    let end = Utc::now() + chrono::Duration::hours(1);
    let (s, body) = post(
        "/v1/reservations",
        &json!({"nodes": 1, "start": start, "end": end}).to_string(),
    )
    .await;
    assert_eq!(s, 422);
    assert_eq!(body["field"], "end");
    assert!(
        body["error"].as_str().unwrap().contains("after start"),
        "{body}"
    );

    let (s, body) = raw(Method::GET, &format!("{url}/v1/clusters/nope"), t, None).await;
    assert_eq!(s, 404);
    assert!(body["error"].as_str().unwrap().contains("nope"));
    let (s, _) = raw(
        Method::DELETE,
        &format!("{url}/v1/clusters/big/nodes/big-node-99"),
        t,
        None,
    )
    .await;
    assert_eq!(s, 404);
    let (s, _) = raw(Method::GET, &format!("{url}/v1/tasks/999999"), t, None).await;
    assert_eq!(s, 404);
    let (s, body) = raw(Method::GET, &format!("{url}/v1/reservations/abc"), t, None).await;
    assert_eq!(s, 400);
    assert!(
        body["error"].as_str().unwrap().contains("parse"),
        "a JSON error: {body}"
    );
    let resp = common::http()
        .post(format!("{url}/v1/clusters"))
        .bearer_auth(&w.user_token)
        .body(r#"{"name":"x","nodes":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 415);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("Content-Type"),
        "{body}"
    );
    let (s, body) = raw(Method::GET, &format!("{url}/v1/no/such/route"), t, None).await;
    assert_eq!(s, 404);
    assert!(body["error"].is_string());
}

async fn a_cluster_spreads_across_sites_and_its_overlay_links_the_hosts(b: Backend) {
    let w = world(&b, &[("east", 2), ("west", 2)]).await;
    let a = create(&w.user, json!({"name": "demo", "nodes": 4})).await;
    assert_eq!(a.task.kind, TaskKind::CreateCluster);
    assert_eq!(
        a.task.state,
        TaskState::Running,
        "answers before the work is done"
    );
    let task = expect_success(&w.user, &a).await;
    assert!(task.message.contains("nodes running"), "{}", task.message);

    let c = get_cluster(&w.user, "demo").await;
    assert_eq!(c.state, ClusterState::Active);
    assert_eq!(c.overlay, OverlayState::Running);
    assert_eq!(nodes_at(&c, "east"), 2);
    assert_eq!(nodes_at(&c, "west"), 2);
    let names: Vec<&str> = c.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(
        names,
        ["demo-node-1", "demo-node-2", "demo-node-3", "demo-node-4"]
    );
    assert!(c.nodes.iter().all(|n| n.state == NodeState::Running));
    assert_eq!(
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &c.psk)
            .unwrap()
            .len(),
        32
    );

    for (me, other) in [(0, 1), (1, 0)] {
        let agent = &w.agents[me];
        let nets = agent.vpnd.networks();
        let net = nets
            .get(&c.network_id)
            .expect("vpnd network on every host of the cluster");
        assert!(net.running);
        assert_eq!(net.spec.psk, Some(c.psk.parse().unwrap()));
        assert_eq!(
            net.spec.bridge.as_deref(),
            Some(format!("vcbr{:x}", c.network_id).as_str())
        );
        assert_eq!(
            net.spec.peers.len(),
            1,
            "peers are the cluster's other hosts"
        );
        assert_eq!(
            net.spec.peers[0].public_key,
            w.agents[other].vpnd.public_key
        );
        assert_eq!(
            net.spec.peers[0].endpoint.as_deref(),
            Some(w.agents[other].vpnd.endpoint.as_str())
        );
        assert!(
            agent
                .bridges
                .snapshot()
                .contains(&format!("vcbr{:x}", c.network_id))
        );
        let nodes = agent.driver.snapshot();
        assert_eq!(nodes.len(), 2);
        for (slot, n) in nodes {
            let api = c.nodes.iter().find(|x| x.name == n.spec.name).unwrap();
            assert_eq!(api.host, agent.name);
            assert_eq!(n.spec.mac, api.mac);
            assert_eq!(n.spec.address, api.address);
            assert_eq!(slot.mac().to_string(), api.mac);
            assert!(n.spec.running);
        }
    }
    let sites: Vec<Site> = w.user.get("/v1/sites").await.unwrap();
    assert!(sites.iter().all(|s| s.in_use.cpus == 2), "{sites:?}");
}

async fn nodes_come_and_go_with_stable_names_and_macs(b: Backend) {
    let w = world(&b, &[("east", 2), ("west", 2)]).await;
    let a = create(&w.user, json!({"name": "grow", "sites": [{"site": "east", "nodes": 1}, {"site": "west", "nodes": 1}]})).await;
    expect_success(&w.user, &a).await;
    let before = get_cluster(&w.user, "grow").await;
    let node2 = before
        .nodes
        .iter()
        .find(|n| n.name == "grow-node-2")
        .unwrap()
        .clone();
    let west_idx = if node2.site == "west" { 1 } else { 0 };
    let east_idx = 1 - west_idx;

    // Removing the only node on one host takes the cluster off that host entirely.
    let r: Accepted = w
        .user
        .delete("/v1/clusters/grow/nodes/grow-node-2")
        .await
        .unwrap();
    expect_success(&w.user, &r).await;
    let after = get_cluster(&w.user, "grow").await;
    assert_eq!(after.nodes.len(), 1);
    let gone_host = &w.agents[west_idx];
    assert!(gone_host.driver.snapshot().is_empty());
    assert!(!gone_host.vpnd.networks().contains_key(&before.network_id));
    assert!(gone_host.bridges.snapshot().is_empty());
    let stays = &w.agents[east_idx];
    assert!(
        stays.vpnd.networks()[&before.network_id]
            .spec
            .peers
            .is_empty(),
        "the gone host is no longer a peer"
    );

    // The next node reuses index 2: same name, same MAC, same address.
    let add: Accepted = w
        .user
        .post(
            "/v1/clusters/grow/nodes",
            &json!({"count": 1, "site": node2.site}),
        )
        .await
        .unwrap();
    expect_success(&w.user, &add).await;
    let again = get_cluster(&w.user, "grow").await;
    let back = again
        .nodes
        .iter()
        .find(|n| n.name == "grow-node-2")
        .expect("node-2 is back");
    assert_eq!(back.mac, node2.mac);
    assert_eq!(back.address, node2.address);
    assert_eq!(back.state, NodeState::Running);
    assert_eq!(
        stays.vpnd.networks()[&before.network_id].spec.peers.len(),
        1
    );

    let events: Vec<Event> = w.user.get("/v1/events?cluster=grow").await.unwrap();
    assert!(events.iter().any(|e| e.kind == "remove-node"), "{events:?}");
    assert!(events.iter().filter(|e| e.kind == "task-succeeded").count() >= 3);
}

async fn stopping_the_overlay_stops_it_on_every_host(b: Backend) {
    let w = world(&b, &[("east", 2), ("west", 2)]).await;
    expect_success(
        &w.user,
        &create(&w.user, json!({"name": "vpn", "nodes": 2})).await,
    )
    .await;
    let c = get_cluster(&w.user, "vpn").await;
    let stop: Accepted = w
        .user
        .post("/v1/clusters/vpn/overlay/stop", &json!({}))
        .await
        .unwrap();
    assert_eq!(
        stop.cluster.as_ref().unwrap().overlay,
        OverlayState::Stopped
    );
    expect_success(&w.user, &stop).await;
    for a in &w.agents {
        assert!(
            !a.vpnd.networks()[&c.network_id].running,
            "stopped on {}",
            a.name
        );
        assert!(
            a.vpnd
                .log()
                .contains(&format!("POST /v1/networks/{}/stop", c.network_id))
        );
    }
    // nodes keep running while the overlay is down
    assert!(
        get_cluster(&w.user, "vpn")
            .await
            .nodes
            .iter()
            .all(|n| n.state == NodeState::Running)
    );
    let start: Accepted = w
        .user
        .post("/v1/clusters/vpn/overlay/start", &json!({}))
        .await
        .unwrap();
    expect_success(&w.user, &start).await;
    for a in &w.agents {
        assert!(
            a.vpnd.networks()[&c.network_id].running,
            "started on {}",
            a.name
        );
    }
}

async fn deleting_a_cluster_removes_everything_it_made(b: Backend) {
    let w = world(&b, &[("east", 2), ("west", 2)]).await;
    expect_success(
        &w.user,
        &create(&w.user, json!({"name": "gone", "nodes": 3})).await,
    )
    .await;
    let d: Accepted = w.user.delete("/v1/clusters/gone").await.unwrap();
    assert_eq!(d.cluster.as_ref().unwrap().state, ClusterState::Deleting);
    expect_success(&w.user, &d).await;
    for a in &w.agents {
        assert!(a.driver.snapshot().is_empty(), "nodes left on {}", a.name);
        assert!(
            a.vpnd.networks().is_empty(),
            "vpnd network left on {}",
            a.name
        );
        assert!(a.bridges.snapshot().is_empty(), "bridge left on {}", a.name);
    }
    let (s, _) = raw(
        Method::GET,
        &format!("{}/v1/clusters/gone", w.ctl.url),
        Some(&w.user_token),
        None,
    )
    .await;
    assert_eq!(s, 404);
    let sites: Vec<Site> = w.user.get("/v1/sites").await.unwrap();
    assert!(sites.iter().all(|s| s.in_use.cpus == 0));
    // the name can be used again
    expect_success(
        &w.user,
        &create(&w.user, json!({"name": "gone", "nodes": 1})).await,
    )
    .await;
}

async fn a_failed_creation_is_rolled_back_on_every_host(b: Backend) {
    let w = world(&b, &[("east", 2), ("west", 2)]).await;
    *w.agents[1].driver.fail.lock().unwrap() = Some("disk full".into());
    let a = create(&w.user, json!({"name": "broken", "nodes": 2})).await;
    let task = wait_task(&w.user, a.task.id).await;
    assert_eq!(task.state, TaskState::Failed);
    assert!(task.message.contains("disk full"), "{}", task.message);
    assert!(
        task.message.contains("west-h1"),
        "names the host: {}",
        task.message
    );
    assert!(task.message.contains("rolled back"), "{}", task.message);
    let c = get_cluster(&w.user, "broken").await;
    assert_eq!(c.state, ClusterState::Failed);
    assert!(c.reason.as_deref().unwrap().contains("disk full"));
    assert!(c.nodes.iter().all(|n| n.state == NodeState::Failed));
    // the host where creation worked was cleaned up
    assert!(w.agents[0].driver.snapshot().is_empty());
    assert!(w.agents[0].vpnd.networks().is_empty());
    let sites: Vec<Site> = w.user.get("/v1/sites").await.unwrap();
    assert!(
        sites.iter().all(|s| s.in_use.cpus == 0),
        "capacity released: {sites:?}"
    );
    // a failed cluster can be deleted
    *w.agents[1].driver.fail.lock().unwrap() = None;
    let d: Accepted = w.user.delete("/v1/clusters/broken").await.unwrap();
    expect_success(&w.user, &d).await;
}

async fn a_stuck_task_times_out_and_is_rolled_back(b: Backend) {
    let mut config = common::test_config(&b.url);
    config.task_timeout = Duration::from_secs(2);
    let w = world_with(TestController::start_with(config).await, &[("east", 2)]).await;
    *w.agents[0].driver.hang.lock().unwrap() = true;
    let a = create(&w.user, json!({"name": "stuck", "nodes": 1})).await;
    let task = wait_task(&w.user, a.task.id).await;
    assert_eq!(task.state, TaskState::Failed);
    assert!(task.message.contains("timed out"), "{}", task.message);
    let c = get_cluster(&w.user, "stuck").await;
    assert_eq!(c.state, ClusterState::Failed);
    assert!(
        c.nodes.iter().all(|n| n.state == NodeState::Failed),
        "no node stuck in creating: {c:?}"
    );
}

async fn reservations_are_accepted_refused_and_answer_the_earliest_slot(b: Backend) {
    // east: 2 CPUs x 4 = 8 CPUs; nodes of 1 CPU / 256 MiB -> 8 nodes
    let w = world(&b, &[("east", 2)]).await;
    // the store keeps milliseconds
    let now = chrono::DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap();
    let reserve = |nodes: i64, start: chrono::DateTime<Utc>, hours: i64| json!({"site": "east", "nodes": nodes, "node_memory_mib": 256, "start": start, "end": start + chrono::Duration::hours(hours)});
    let r1: Reservation = w
        .user
        .post("/v1/reservations", &reserve(6, now, 2))
        .await
        .unwrap();
    assert_eq!(r1.resources.cpus, 6);
    let e = w
        .user
        .post::<_, Reservation>(
            "/v1/reservations",
            &reserve(3, now + chrono::Duration::hours(1), 2),
        )
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("refused") && msg.contains("409"), "{msg}");
    assert!(
        msg.contains("at most 2 CPUs"),
        "says how much is free: {msg}"
    );
    // after r1 ends there is room
    let r2: Reservation = w
        .user
        .post(
            "/v1/reservations",
            &reserve(8, now + chrono::Duration::hours(2), 1),
        )
        .await
        .unwrap();
    assert_eq!(r2.site, "east");

    let slot: EarliestSlot = w
        .user
        .get("/v1/reservations/earliest?nodes=4&hours=1&node_memory_mib=256")
        .await
        .unwrap();
    assert_eq!(slot.site, "east");
    assert_eq!(
        slot.start,
        now + chrono::Duration::hours(3),
        "after both leases"
    );
    let slot: EarliestSlot = w
        .user
        .get("/v1/reservations/earliest?nodes=2&hours=1&node_memory_mib=256")
        .await
        .unwrap();
    assert!(
        (slot.start - Utc::now()).num_seconds().abs() < 60,
        "2 nodes fit now: {slot:?}"
    );

    // anywhere: the controller picks a site that fits
    let any: Reservation = w
        .user
        .post("/v1/reservations", &json!({"nodes": 2, "node_memory_mib": 256, "start": now, "end": now + chrono::Duration::minutes(30)}))
        .await
        .unwrap();
    assert_eq!(any.site, "east");

    // others do not see alice's reservations; admins do
    let bob = w.ctl.client(&w.ctl.user("bob", "user").await);
    let theirs: Vec<Reservation> = bob.get("/v1/reservations").await.unwrap();
    assert!(theirs.is_empty());
    let all: Vec<Reservation> = w.ctl.admin.get("/v1/reservations").await.unwrap();
    assert_eq!(all.len(), 3);
    let (s, _) = raw(
        Method::DELETE,
        &format!("{}/v1/reservations/{}", w.ctl.url, r2.id),
        Some(&bob_token(&w).await),
        None,
    )
    .await;
    assert_eq!(s, 404, "bob cannot cancel alice's reservation");
    w.user
        .delete_empty(&format!("/v1/reservations/{}", r2.id))
        .await
        .unwrap();
    let r2: Reservation = w
        .user
        .get(&format!("/v1/reservations/{}", r2.id))
        .await
        .unwrap();
    assert_eq!(format!("{:?}", r2.state), "Cancelled");
}

async fn bob_token(w: &World) -> String {
    let t: Value = w
        .ctl
        .admin
        .post("/v1/users/bob/tokens", &json!({}))
        .await
        .unwrap();
    t["token"].as_str().unwrap().to_string()
}

async fn unreserved_clusters_leave_room_for_future_reservations(b: Backend) {
    let w = world(&b, &[("east", 2)]).await; // 8 CPUs
    let later = Utc::now() + chrono::Duration::hours(5);
    let _: Reservation = w
        .user
        .post("/v1/reservations", &json!({"site": "east", "cpus": 6, "start": later, "end": later + chrono::Duration::hours(1)}))
        .await
        .unwrap();
    let e = w
        .user
        .post::<_, Accepted>(
            "/v1/clusters",
            &json!({"name": "greedy", "nodes": 3, "node_memory_mib": 64}),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not enough room"), "{e}");
    let ok = create(
        &w.user,
        json!({"name": "modest", "nodes": 2, "node_memory_mib": 64}),
    )
    .await;
    expect_success(&w.user, &ok).await;
    // and a reservation for the same period can no longer take all 8
    let e = w
        .user
        .post::<_, Reservation>("/v1/reservations", &json!({"site": "east", "cpus": 1, "start": later, "end": later + chrono::Duration::hours(1)}))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("refused"), "{e}");
}

async fn a_lease_bounds_its_clusters_and_stops_them_when_it_ends(b: Backend) {
    let w = world(&b, &[("east", 2), ("west", 2)]).await;
    let now = Utc::now();
    let lease: Reservation = w
        .user
        .post("/v1/reservations", &json!({"site": "west", "nodes": 2, "node_memory_mib": 128, "start": now, "end": now + chrono::Duration::seconds(4)}))
        .await
        .unwrap();
    let future: Reservation = w
        .user
        .post("/v1/reservations", &json!({"site": "east", "nodes": 1, "node_memory_mib": 128, "start": now + chrono::Duration::hours(1), "end": now + chrono::Duration::hours(2)}))
        .await
        .unwrap();
    let e = w
        .user
        .post::<_, Accepted>(
            "/v1/clusters",
            &json!({"name": "early", "nodes": 1, "node_memory_mib": 128, "reservation": future.id}),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("outside its lease"), "{e}");
    let e = w
        .user
        .post::<_, Accepted>(
            "/v1/clusters",
            &json!({"name": "toobig", "nodes": 3, "node_memory_mib": 128, "reservation": lease.id}),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("allows 2 more nodes"), "{e}");
    let e = w
        .user
        .post::<_, Accepted>("/v1/clusters", &json!({"name": "elsewhere", "sites": [{"site": "east", "nodes": 1}], "node_memory_mib": 128, "reservation": lease.id}))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("is at site west"), "{e}");

    let a = create(
        &w.user,
        json!({"name": "leased", "nodes": 2, "node_memory_mib": 128, "reservation": lease.id}),
    )
    .await;
    expect_success(&w.user, &a).await;
    let c = get_cluster(&w.user, "leased").await;
    assert_eq!(
        nodes_at(&c, "west"),
        2,
        "inside the lease, nodes go to its site"
    );
    let r: Reservation = w
        .user
        .get(&format!("/v1/reservations/{}", lease.id))
        .await
        .unwrap();
    assert_eq!(r.clusters, ["leased"]);

    eventually(
        "the lease ends and its cluster is stopped",
        Duration::from_secs(20),
        || async {
            let c = get_cluster(&w.user, "leased").await;
            c.state == ClusterState::Expired
                && c.nodes.iter().all(|n| n.state == NodeState::Stopped)
        },
    )
    .await;
    let c = get_cluster(&w.user, "leased").await;
    assert_eq!(c.overlay, OverlayState::Stopped);
    assert!(
        c.reason
            .as_deref()
            .unwrap()
            .contains(&format!("reservation {}", lease.id))
    );
    let west = &w.agents[1];
    assert!(!west.vpnd.networks()[&c.network_id].running);
    assert!(
        west.driver.snapshot().values().all(|n| !n.spec.running),
        "nodes stopped on the host"
    );
    let events: Vec<Event> = w.user.get("/v1/events").await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.kind == "lease-expired" && e.message.contains("leased")),
        "{events:?}"
    );
    let r: Reservation = w
        .user
        .get(&format!("/v1/reservations/{}", lease.id))
        .await
        .unwrap();
    assert_eq!(format!("{:?}", r.state), "Expired");
    // expired clusters can still be deleted
    let d: Accepted = w.user.delete("/v1/clusters/leased").await.unwrap();
    expect_success(&w.user, &d).await;
}

async fn other_users_clusters_are_invisible(b: Backend) {
    let w = world(&b, &[("east", 2)]).await;
    expect_success(
        &w.user,
        &create(&w.user, json!({"name": "mine", "nodes": 1})).await,
    )
    .await;
    let bob = w.ctl.client(&w.ctl.user("bob", "user").await);
    let theirs: Vec<Cluster> = bob.get("/v1/clusters").await.unwrap();
    assert!(theirs.is_empty());
    for attempt in [
        bob.get::<Cluster>("/v1/clusters/mine").await.map(|_| ()),
        bob.delete::<Accepted>("/v1/clusters/mine")
            .await
            .map(|_| ()),
        bob.post::<_, Accepted>("/v1/clusters/mine/overlay/stop", &json!({}))
            .await
            .map(|_| ()),
    ] {
        let e = attempt.unwrap_err().to_string();
        assert!(e.contains("404"), "{e}");
    }
    let all: Vec<Cluster> = w.ctl.admin.get("/v1/clusters").await.unwrap();
    assert_eq!(all.len(), 1, "admins see every cluster");
    let tasks: Vec<Task> = bob.get("/v1/tasks").await.unwrap();
    assert!(tasks.is_empty());
}

async fn agent_and_controller_restarts_converge(b: Backend) {
    let mut w = world(&b, &[("east", 2), ("west", 2)]).await;
    expect_success(
        &w.user,
        &create(&w.user, json!({"name": "keep", "nodes": 4})).await,
    )
    .await;
    let c = get_cluster(&w.user, "keep").await;

    // The agent restarts into a host that drifted: a node vanished, and a cluster the
    // store does not know left a bridge and a vpnd network behind.
    let east = &mut w.agents[0];
    east.stop().await;
    let lost = *east.driver.snapshot().keys().next().unwrap();
    east.driver.nodes.lock().unwrap().remove(&lost);
    east.bridges.names.lock().unwrap().insert("vcbrbeef".into());
    let vpnd = vpnd_api::Client::new(&east.vpnd.socket);
    vpnd.add_network(&vpnd_api::NetworkSpec {
        bridge: Some("vcbrbeef".into()),
        ..vpnd_api::NetworkSpec::new(vpnd_api::NetworkId(0xbeef), "vctapbeef")
    })
    .await
    .unwrap();
    vpnd.add_network(&vpnd_api::NetworkSpec::new(
        vpnd_api::NetworkId(999),
        "operator0",
    ))
    .await
    .unwrap();
    east.restart().await;
    assert!(
        east.driver.snapshot().contains_key(&lost),
        "the vanished node is back"
    );
    assert!(
        !east.bridges.snapshot().contains("vcbrbeef"),
        "the orphan bridge is gone"
    );
    let nets = east.vpnd.networks();
    assert!(
        !nets.contains_key(&0xbeef),
        "the orphan vpnd network is gone"
    );
    assert!(
        nets.contains_key(&999),
        "networks not made by the agent are left alone"
    );
    assert!(nets.contains_key(&c.network_id));

    // The controller restarts while a task is stuck on a host: the task fails, its node
    // fails, and the agents converge to that.
    *w.agents[1].driver.hang.lock().unwrap() = true;
    let add: Accepted = w
        .user
        .post(
            "/v1/clusters/keep/nodes",
            &json!({"count": 1, "site": "west"}),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    w.ctl.restart().await;
    let task = wait_task(&w.user, add.task.id).await;
    assert_eq!(task.state, TaskState::Failed);
    assert!(
        task.message.contains("controller restarted"),
        "{}",
        task.message
    );
    let c = get_cluster(&w.user, "keep").await;
    assert_eq!(
        c.nodes
            .iter()
            .filter(|n| n.state == NodeState::Running)
            .count(),
        4
    );
    assert_eq!(
        c.nodes
            .iter()
            .filter(|n| n.state == NodeState::Failed)
            .count(),
        1
    );
    *w.agents[1].driver.hang.lock().unwrap() = false;
    w.agents[1].restart().await;
    let west_nodes = w.agents[1].driver.snapshot().len();
    assert_eq!(west_nodes, 2, "the failed node is not on the host");
    // the restarted controller still drives the agents
    let d: Accepted = w.user.delete("/v1/clusters/keep").await.unwrap();
    expect_success(&w.user, &d).await;
    assert!(w.agents.iter().all(|a| a.driver.snapshot().is_empty()));
}

async fn openapi_metrics_and_timeline_are_served(b: Backend) {
    let w = world(&b, &[("east", 2)]).await;
    expect_success(
        &w.user,
        &create(&w.user, json!({"name": "m", "nodes": 2})).await,
    )
    .await;
    let (s, doc) = raw(
        Method::GET,
        &format!("{}/openapi.json", w.ctl.url),
        None,
        None,
    )
    .await;
    assert_eq!(s, 200);
    for path in [
        "/v1/clusters",
        "/v1/clusters/{cluster}/nodes",
        "/v1/reservations/earliest",
        "/v1/hosts/register",
    ] {
        assert!(doc["paths"][path].is_object(), "openapi has {path}");
    }
    assert!(doc["components"]["schemas"]["Cluster"].is_object());
    let metrics = w.ctl.metrics().await;
    assert!(
        metrics.contains("vcluster_site_capacity_cpus{site=\"east\"} 8"),
        "{metrics}"
    );
    assert!(
        metrics.contains("vcluster_site_in_use_cpus{site=\"east\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("vcluster_tasks_total{kind=\"create-cluster\",outcome=\"succeeded\"} 1"),
        "{metrics}"
    );
    assert!(metrics.trim_end().ends_with("# EOF"));
    eventually("usage samples", Duration::from_secs(10), || async {
        let t: Value = w
            .user
            .get("/v1/sites/east/timeline?hours_back=1&hours_ahead=1")
            .await
            .unwrap();
        t["points"].as_array().unwrap().len() >= 3
    })
    .await;
}

async fn the_cli_drives_the_api_and_prints_server_errors(b: Backend) {
    let w = world(&b, &[("east", 2), ("west", 2)]).await;
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vcluster"))
            .args(args)
            .env("VCLUSTER_API", &w.ctl.url)
            .env("VCLUSTER_CA_FINGERPRINT", common::test_trust_fingerprint())
            .env("VCLUSTER_TOKEN", &w.user_token)
            // Not the user's own config file.
            .env("VCLUSTER_CONFIG", "/dev/null")
            .output()
            .expect("run vcluster");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = cli(&["sites", "list"]);
    assert!(ok, "{err}");
    assert!(out.contains("east") && out.contains("west"), "{out}");
    let (ok, out, err) = cli(&["cluster", "create", "cli", "--nodes", "2", "--wait"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("Succeeded"), "{out}");
    let (ok, out, _) = cli(&["cluster", "show", "cli"]);
    assert!(ok);
    assert!(
        out.contains("cli-node-1") && out.contains("cli-node-2"),
        "{out}"
    );
    let (ok, out, err) = cli(&["vpn", "stop", "cli", "--wait"]);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = cli(&["node", "remove", "cli", "cli-node-1", "--wait"]);
    assert!(ok, "{out}{err}");
    let (ok, out, _) = cli(&[
        "reserve", "create", "--nodes", "2", "--site", "east", "--hours", "1",
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("reservation 1 Accepted"), "{out}");
    let (ok, out, _) = cli(&["reserve", "when", "--nodes", "1", "--hours", "2", "--json"]);
    assert!(ok);
    let slot: Value = serde_json::from_str(&out).unwrap();
    assert!(slot["site"].is_string());
    // failures print the server's message and exit non-zero
    let (ok, _, err) = cli(&["cluster", "create", "huge", "--nodes", "500"]);
    assert!(!ok);
    assert!(
        err.contains("not enough room") && err.contains("409"),
        "{err}"
    );
    let (ok, _, err) = cli(&["sites", "create", "nope"]);
    assert!(!ok);
    assert!(err.contains("admin role"), "{err}");
    let (ok, out, err) = cli(&["cluster", "delete", "cli", "--wait"]);
    assert!(ok, "{out}{err}");
    let (ok, out, _) = cli(&["task", "list", "--cluster", "cli"]);
    assert!(ok);
    assert!(
        out.contains("delete-cluster") && out.contains("remove-node"),
        "{out}"
    );
}

/// How many answers of `status` the controller gave to its agents' pulls.
async fn desired_pulls(w: &World, status: u16) -> u64 {
    let metrics = w.ctl.metrics().await;
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("vcluster_http_requests_total{")
                && l.contains("route=\"/v1/hosts/{host}/desired\"")
                && l.contains(&format!("status=\"{status}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

async fn the_desired_state_is_pulled_whole_only_when_it_changed(b: Backend) {
    let w = world(&b, &[("east", 4)]).await;
    let a = create(
        &w.user,
        json!({"name": "etag", "sites": [{"site": "east", "nodes": 1}]}),
    )
    .await;
    expect_success(&w.user, &a).await;
    let hosts: Vec<Host> = w.ctl.admin.get("/v1/hosts").await.unwrap();
    let url = format!("{}/v1/hosts/{}/desired", w.ctl.url, hosts[0].id);
    let get = |etag: Option<String>| {
        let url = url.clone();
        async move {
            let mut req = common::http().get(&url).bearer_auth(common::ADMIN_TOKEN);
            if let Some(e) = etag {
                req = req.header("if-none-match", e);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let header = |name: &str| {
                resp.headers()
                    .get(name)
                    .map(|v| v.to_str().unwrap().to_string())
            };
            let etag = header("etag");
            if status == 304 {
                let revision = header("x-vcluster-revision").expect("a 304 names its revision");
                assert!(revision.parse::<i64>().unwrap() > 0, "{revision}");
            }
            (status, etag, resp.text().await.unwrap())
        }
    };
    let (status, etag, body) = get(None).await;
    assert_eq!(status, 200, "{body}");
    let etag = etag.expect("the desired state has an ETag");
    assert!(body.contains("etag-node-1"), "{body}");
    // Unchanged: 304, nothing but headers.
    let (status, again, body) = get(Some(etag.clone())).await;
    assert_eq!((status, body.as_str()), (304, ""));
    assert_eq!(again.as_deref(), Some(etag.as_str()));
    // A write elsewhere moves the store's revision, not this host's state.
    w.ctl.site("west").await;
    assert_eq!(get(Some(etag.clone())).await.0, 304);
    // An ETag of something else, or garbage: the whole state.
    assert_eq!(get(Some("\"00\"".into())).await.0, 200);
    assert_eq!(get(Some("not an etag at all".into())).await.0, 200);
    // A second node on the host: the state changed, so does its ETag.
    let add: Accepted = w
        .user
        .post("/v1/clusters/etag/nodes", &json!({"count": 1}))
        .await
        .unwrap();
    expect_success(&w.user, &add).await;
    let (status, changed, body) = get(Some(etag.clone())).await;
    assert_eq!(status, 200);
    assert_ne!(changed.as_deref(), Some(etag.as_str()));
    assert!(body.contains("etag-node-2"), "{body}");

    // The agent sends back the ETag of the copy it holds and converges to that copy on a
    // 304: a node removed behind its back is made again without pulling the whole state.
    let agent = w.agents[0].agent.as_ref().unwrap();
    agent.reconcile_now().await.unwrap();
    let not_modified = desired_pulls(&w, 304).await;
    let full = desired_pulls(&w, 200).await;
    w.agents[0].driver.nodes.lock().unwrap().clear();
    let errors = agent.reconcile_now().await.unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        w.agents[0].driver.names(),
        ["etag-node-1".to_string(), "etag-node-2".to_string()].into()
    );
    assert_eq!(desired_pulls(&w, 304).await, not_modified + 1);
    assert_eq!(desired_pulls(&w, 200).await, full, "no whole state pulled");
}

/// What the controller pushes, the agent holds: after a push of a changed cluster (a node
/// added, the overlay stopped) or its removal, the agent's next pull is answered `304`,
/// not with the whole state again (a copy unlike the controller's has another ETag and
/// is pulled whole: `the_desired_state_is_pulled_whole_only_when_it_changed`).
async fn a_pushed_change_is_not_pulled_again(b: Backend) {
    let ctl = common::TestController::start(&b).await;
    ctl.site("east").await;
    let token = ctl.user("agent-east-h0", "agent").await;
    // No periodic pulls but the first: every pull below is the test's.
    let agent = TestAgent::start_every(
        &ctl,
        &token,
        "east-h0",
        "east",
        4,
        std::time::Duration::from_secs(3600),
    )
    .await;
    let user_token = ctl.user("alice", "user").await;
    let w = World {
        user: ctl.client(&user_token),
        user_token,
        ctl,
        agents: vec![agent],
    };
    let running = w.agents[0].agent.as_ref().unwrap();
    let pull = async || {
        let (full, not_modified) = (desired_pulls(&w, 200).await, desired_pulls(&w, 304).await);
        let errors = running.reconcile_now().await.unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        (
            desired_pulls(&w, 200).await - full,
            desired_pulls(&w, 304).await - not_modified,
        )
    };
    let a = create(
        &w.user,
        json!({"name": "held", "sites": [{"site": "east", "nodes": 1}]}),
    )
    .await;
    expect_success(&w.user, &a).await;
    assert_eq!(pull().await, (0, 1), "the created cluster was pushed");
    let add: Accepted = w
        .user
        .post("/v1/clusters/held/nodes", &json!({"count": 2}))
        .await
        .unwrap();
    expect_success(&w.user, &add).await;
    assert_eq!(pull().await, (0, 1), "the added nodes were pushed");
    assert_eq!(w.agents[0].driver.names().len(), 3);
    let stop: Accepted = w
        .user
        .post("/v1/clusters/held/overlay/stop", &json!({}))
        .await
        .unwrap();
    expect_success(&w.user, &stop).await;
    assert_eq!(pull().await, (0, 1), "the stopped overlay was pushed");
    let gone: Accepted = w.user.delete("/v1/clusters/held").await.unwrap();
    expect_success(&w.user, &gone).await;
    assert_eq!(pull().await, (0, 1), "the removal was pushed");
    assert!(w.agents[0].driver.names().is_empty());
}

both_backends!(
    a_pushed_change_is_not_pulled_again,
    the_desired_state_is_pulled_whole_only_when_it_changed,
    roles_are_enforced_and_errors_are_json,
    bad_input_is_refused_naming_the_field_and_leaves_nothing,
    a_cluster_spreads_across_sites_and_its_overlay_links_the_hosts,
    nodes_come_and_go_with_stable_names_and_macs,
    stopping_the_overlay_stops_it_on_every_host,
    deleting_a_cluster_removes_everything_it_made,
    a_failed_creation_is_rolled_back_on_every_host,
    a_stuck_task_times_out_and_is_rolled_back,
    reservations_are_accepted_refused_and_answer_the_earliest_slot,
    unreserved_clusters_leave_room_for_future_reservations,
    a_lease_bounds_its_clusters_and_stops_them_when_it_ends,
    other_users_clusters_are_invisible,
    agent_and_controller_restarts_converge,
    openapi_metrics_and_timeline_are_served,
    the_cli_drives_the_api_and_prints_server_errors,
);
