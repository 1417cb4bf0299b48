//! No double booking, ever: 100 concurrent conflicting requests against a site with room
//! for 10 get exactly 10 accepted and 90 refused with a reason, on SQLite and PostgreSQL.
//! The same holds for concurrent cluster creations competing for hosts.

mod common;

use std::sync::Arc;

use chrono::Utc;
use serde_json::json;
use vcluster::model::{Accepted, Cluster, Reservation, Site};

use common::{Backend, TestAgent, TestController, expect_success};

async fn setup(b: &Backend) -> (TestController, Vec<TestAgent>, String) {
    let mut config = common::test_config(&b.url);
    config.overcommit.cpu = 1.0;
    let ctl = TestController::start_with(config).await;
    let mut agents = Vec::new();
    for site in ["east", "west"] {
        ctl.site(site).await;
        let token = ctl.user(&format!("agent-{site}"), "agent").await;
        agents.push(TestAgent::start(&ctl, &token, &format!("{site}-h"), site, 10).await);
    }
    let user = ctl.user("alice", "user").await;
    (ctl, agents, user)
}

async fn hundred_concurrent_reservations_never_double_book(b: Backend) {
    let (ctl, _agents, token) = setup(&b).await;
    let start = Utc::now() + chrono::Duration::hours(1);
    let end = start + chrono::Duration::hours(2);
    let client = Arc::new(common::http());
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..100 {
        let client = client.clone();
        let url = format!("{}/v1/reservations", ctl.url);
        let token = token.clone();
        // Overlapping periods, all conflicting over [start+30m, end).
        let s = start + chrono::Duration::minutes(i % 30);
        requests.spawn(async move {
            let resp = client
                .post(url)
                .bearer_auth(token)
                .json(&json!({"site": "east", "nodes": 1, "node_memory_mib": 16, "start": s, "end": end}))
                .send()
                .await
                .expect("request");
            let status = resp.status().as_u16();
            let body: serde_json::Value = resp.json().await.expect("json body");
            (status, body)
        });
    }
    let mut accepted = 0;
    let mut refused = 0;
    while let Some(r) = requests.join_next().await {
        let (status, body) = r.unwrap();
        match status {
            201 => accepted += 1,
            409 => {
                refused += 1;
                let reason = body["error"].as_str().unwrap();
                assert!(
                    reason.starts_with("refused: not enough capacity"),
                    "{reason}"
                );
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(accepted, 10, "exactly the capacity's worth is accepted");
    assert_eq!(refused, 90);
    let all: Vec<Reservation> = ctl.admin.get("/v1/reservations").await.unwrap();
    assert_eq!(all.len(), 10);
    let held: i64 = all.iter().map(|r| r.resources.cpus).sum();
    assert_eq!(held, 10);
}

async fn concurrent_cluster_creations_never_overcommit_a_host(b: Backend) {
    let (ctl, agents, token) = setup(&b).await;
    let user = ctl.client(&token);
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..40 {
        let user = user.clone();
        requests.spawn(async move {
            user.post::<_, Accepted>(
                "/v1/clusters",
                &json!({"name": format!("c{i}"), "sites": [{"site": "west", "nodes": 1}], "node_memory_mib": 16}),
            )
            .await
        });
    }
    let mut ok = Vec::new();
    let mut refused = 0;
    while let Some(r) = requests.join_next().await {
        match r.unwrap() {
            Ok(a) => ok.push(a),
            Err(e) => {
                assert!(e.to_string().contains("has room for 0"), "{e}");
                refused += 1;
            }
        }
    }
    assert_eq!(ok.len(), 10, "a 10-CPU host takes exactly 10 one-CPU nodes");
    assert_eq!(refused, 30);
    for a in &ok {
        expect_success(&user, a).await;
    }
    let sites: Vec<Site> = user.get("/v1/sites").await.unwrap();
    let west = sites.iter().find(|s| s.name == "west").unwrap();
    assert_eq!(west.in_use.cpus, 10);
    assert!(west.in_use.cpus <= west.capacity.cpus);
    assert_eq!(agents[1].driver.snapshot().len(), 10);
    let clusters: Vec<Cluster> = user.get("/v1/clusters").await.unwrap();
    assert_eq!(
        clusters.len(),
        10,
        "refused creations left no cluster behind"
    );
}

both_backends!(
    hundred_concurrent_reservations_never_double_book,
    concurrent_cluster_creations_never_overcommit_a_host,
);
