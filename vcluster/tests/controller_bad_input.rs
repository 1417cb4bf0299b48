//! The controller against requests written as an attacker or a careless client would:
//! sizes at the edges of i64 and u64, unknown fields, made-up methods and paths, bodies
//! over the limit, and rows in the store that name no known state. Each answer must be
//! the documented status naming what is wrong, and nothing may be booked or stored that
//! should not be. Every test runs on SQLite and on PostgreSQL (`sqlite::<name>`,
//! `postgres::<name>`) unless it says otherwise.

mod common;

use chrono::Utc;
use reqwest::Method;
use serde_json::{Value, json};
use vcluster::model::{Accepted, Cluster, Reservation, Site};

use common::{Backend, TestAgent, TestController, expect_success, raw, raw_with};

/// A controller with one site `east` whose one host has 8 CPUs and 8192 MiB (so 32 CPUs
/// with the default overcommit of 4, and 8192 MiB), and a user's token.
struct OneSite {
    ctl: TestController,
    agent: TestAgent,
    token: String,
}

async fn one_site(b: &Backend) -> OneSite {
    let ctl = TestController::start(b).await;
    ctl.site("east").await;
    let agent_token = ctl.user("agent-east", "agent").await;
    let agent = TestAgent::start(&ctl, &agent_token, "east-h0", "east", 8).await;
    let token = ctl.user("mallory", "user").await;
    OneSite { ctl, agent, token }
}

impl OneSite {
    async fn post(&self, path: &str, body: &str) -> (u16, Value) {
        let url = format!("{}{path}", self.ctl.url);
        raw(Method::POST, &url, Some(&self.token), Some(body)).await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let url = format!("{}{path}", self.ctl.url);
        raw(Method::GET, &url, Some(&self.token), None).await
    }
}

fn lease(hours_from_now: i64, hours: i64) -> (String, String) {
    let start = Utc::now() + chrono::Duration::hours(hours_from_now);
    let end = start + chrono::Duration::hours(hours);
    (start.to_rfc3339(), end.to_rfc3339())
}

/// The issue's sequence: a small lease, then sizes near the limits of i64 and u64, then an
/// ordinary lease that no longer fits. Before checked arithmetic, `i64::MAX` MiB wrapped
/// the sum and let the last one in: 9216 MiB leased of 8192.
async fn sizes_near_the_integer_limits_never_overbook_a_site(b: Backend) {
    let w = one_site(&b).await;
    let (start, end) = lease(1, 2);
    // Asks for a lease of `body` at east over the same two hours.
    let reserve = async |body: &Value| {
        let mut body = body.clone();
        body["site"] = json!("east");
        body["start"] = json!(start);
        body["end"] = json!(end);
        w.post("/v1/reservations", &body.to_string()).await
    };

    let (s, body) = reserve(&json!({"nodes": 1, "node_memory_mib": 1024})).await;
    assert_eq!(s, 201, "{body}");

    for (request, field) in [
        (json!({"memory_mib": i64::MAX}), "memory_mib"),
        (json!({"cpus": i64::MAX}), "cpus"),
        (json!({"cpus": -1}), "cpus"),
        (
            json!({"nodes": 4, "node_memory_mib": 4_611_686_018_427_387_904i64}),
            "node_memory_mib",
        ),
        (
            json!({"nodes": 2, "node_memory_mib": 6_917_529_027_641_081_856i64}),
            "node_memory_mib",
        ),
        (
            json!({"nodes": 2, "node_cpus": 9_223_372_036_854_775_807i64}),
            "node_cpus",
        ),
        (json!({"nodes": i64::MAX}), "nodes"),
        (json!({"nodes": 0}), "nodes"),
        (json!({"memory_mib": u64::MAX}), "memory_mib"),
    ] {
        let (s, body) = reserve(&request).await;
        assert_eq!(s, 422, "{request} -> {body}");
        assert_eq!(body["field"], field, "{request} -> {body}");
    }

    // 8 x 1024 MiB no longer fits next to the first lease's 1024 of 8192.
    let (s, body) = reserve(&json!({"nodes": 8, "node_memory_mib": 1024})).await;
    assert_eq!(s, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("not enough capacity"),
        "{body}"
    );
    let (s, body) = reserve(&json!({"nodes": 7, "node_memory_mib": 1024})).await;
    assert_eq!(s, 201, "7 x 1024 MiB is exactly what is left: {body}");

    // What the store holds never exceeds the site, in any row.
    let leases: Vec<Reservation> =
        serde_json::from_value(w.get("/v1/reservations").await.1).unwrap();
    let held: i64 = leases.iter().map(|r| r.resources.memory_mib).sum();
    assert_eq!(held, 8192, "{leases:?}");
    assert!(leases.iter().all(|r| r.resources.memory_mib > 0));

    // Clusters: the same sizes are refused naming the field, and leave no row.
    for (request, field) in [
        (
            json!({"name": "big", "nodes": 4, "node_memory_mib": 4_611_686_018_427_387_904i64}),
            "node_memory_mib",
        ),
        (
            json!({"name": "big", "nodes": 1, "node_cpus": i64::MAX}),
            "node_cpus",
        ),
        (json!({"name": "big", "nodes": u32::MAX}), "nodes"),
        (json!({"name": "big", "nodes": -1}), "nodes"),
        (
            json!({"name": "big", "sites": [{"site": "east", "nodes": u32::MAX}, {"site": "east", "nodes": 2}]}),
            "sites[0].nodes",
        ),
    ] {
        let (s, body) = w.post("/v1/clusters", &request.to_string()).await;
        assert_eq!(s, 422, "{request} -> {body}");
        assert_eq!(body["field"], field, "{request} -> {body}");
    }
    let clusters: Vec<Cluster> = serde_json::from_value(w.get("/v1/clusters").await.1).unwrap();
    assert!(clusters.is_empty(), "{clusters:?}");

    // The earliest-slot question: bounded, and never a negative size.
    let (s, body) = w
        .get("/v1/reservations/earliest?nodes=4&hours=1&node_memory_mib=4611686018427387904")
        .await;
    assert_eq!(s, 422, "{body}");
    assert_eq!(body["field"], "node_memory_mib", "{body}");
    let (s, body) = w
        .get("/v1/reservations/earliest?nodes=100000&hours=1&node_cpus=1024&node_memory_mib=16777216")
        .await;
    assert_eq!(s, 409, "the largest allowed question fits nowhere: {body}");
    let (s, body) = w
        .get("/v1/reservations/earliest?nodes=1&hours=1&node_memory_mib=1024")
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["resources"]["memory_mib"], 1024, "{body}");

    // Hosts: an agent cannot register more than the documented bounds.
    let (s, body) = raw(
        Method::POST,
        &format!("{}/v1/hosts/register", w.ctl.url),
        Some(&w.ctl.user("agent-big", "agent").await),
        Some(
            &json!({"name": "big", "site": "east", "cpus": 8, "memory_mib": i64::MAX,
                "agent_url": "http://127.0.0.1:1", "agent_secret": "0123456789abcdef",
                "overlay_endpoint": "127.0.0.1:1", "public_key": w.agent.vpnd.public_key})
            .to_string(),
        ),
    )
    .await;
    assert_eq!(s, 422, "{body}");
    assert_eq!(body["field"], "memory_mib", "{body}");
    let sites: Vec<Site> = serde_json::from_value(w.get("/v1/sites").await.1).unwrap();
    assert_eq!(sites[0].capacity.memory_mib, 8192, "{sites:?}");
}

/// Every request body and query refuses a field it does not know, naming it, instead of
/// doing something else than asked (`node_cpu` used to give 1-CPU nodes silently).
async fn unknown_fields_are_refused_naming_them(b: Backend) {
    let w = one_site(&b).await;
    let (start, end) = lease(1, 2);
    let admin = Some(common::ADMIN_TOKEN);
    let cases: Vec<(&str, Option<&str>, Method, Value, &str)> = vec![
        (
            "/v1/clusters",
            None,
            Method::POST,
            json!({"name": "x", "nodes": 1, "node_cpu": 4}),
            "node_cpu",
        ),
        (
            "/v1/clusters",
            None,
            Method::POST,
            json!({"name": "x", "sites": [{"site": "east", "nodes": 1, "count": 2}]}),
            "sites[0].count",
        ),
        (
            "/v1/reservations",
            None,
            Method::POST,
            json!({"nodes": 1, "node_memory": 4096, "start": start, "end": end}),
            "node_memory",
        ),
        (
            "/v1/users",
            admin,
            Method::POST,
            json!({"name": "eve", "role": "user", "admin": true}),
            "admin",
        ),
        (
            "/v1/sites",
            admin,
            Method::POST,
            json!({"name": "west", "capacity": 1000}),
            "capacity",
        ),
        (
            "/v1/hosts/east-h0",
            admin,
            Method::PATCH,
            json!({"enabled": true, "cpus": 1000}),
            "cpus",
        ),
    ];
    for (path, token, method, body, field) in cases {
        let url = format!("{}{path}", w.ctl.url);
        let token = token.unwrap_or(&w.token);
        let (s, answer) = raw(method, &url, Some(token), Some(&body.to_string())).await;
        assert_eq!(s, 422, "{path} {body} -> {answer}");
        assert_eq!(answer["field"], field, "{path} {body} -> {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains("unknown field"),
            "{answer}"
        );
    }
    // Nothing was made by the refused requests.
    let clusters: Vec<Cluster> = serde_json::from_value(w.get("/v1/clusters").await.1).unwrap();
    assert!(clusters.is_empty(), "{clusters:?}");
    let (_, users) = raw(Method::GET, &format!("{}/v1/users", w.ctl.url), admin, None).await;
    assert!(!users.to_string().contains("eve"), "{users}");

    // Queries too.
    for (path, field) in [
        ("/v1/tasks?limt=5", "limt"),
        ("/v1/reservations?mine=true&all=true", "all"),
        (
            "/v1/reservations/earliest?nodes=1&hours=1&node_memory=64",
            "node_memory",
        ),
        ("/v1/sites/east/timeline?hours=5", "hours"),
    ] {
        let (s, answer) = w.get(path).await;
        assert_eq!(s, 422, "{path} -> {answer}");
        assert_eq!(answer["field"], field, "{path} -> {answer}");
    }

    // A well-formed request still works.
    let (s, answer) = w
        .post(
            "/v1/clusters",
            &json!({"name": "x", "nodes": 1, "node_cpus": 2}).to_string(),
        )
        .await;
    assert_eq!(s, 202, "{answer}");
    assert_eq!(answer["cluster"]["node_cpus"], 2, "{answer}");
    let client = w.ctl.client(&w.token);
    let accepted: Accepted = serde_json::from_value(answer).unwrap();
    expect_success(&client, &accepted).await;
}

/// Anyone, signed in or not, can send made-up methods and paths; none of them may add a
/// series to `/metrics` (each would be kept for the life of the process).
async fn made_up_methods_and_paths_add_no_metrics_series(b: Backend) {
    let w = one_site(&b).await;
    let series = async || {
        let text = w.ctl.metrics().await;
        text.lines()
            .filter(|l| l.starts_with("vcluster_http_requests_total{"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let client = common::http();
    let flood = async |round: usize| {
        for i in 0..40 {
            let method = Method::from_bytes(format!("X{round}M{i}").as_bytes()).unwrap();
            let _ = client
                .request(method, format!("{}/v1/clusters", w.ctl.url))
                .send()
                .await
                .unwrap();
            let _ = client
                .get(format!("{}/nope/{round}/{i}", w.ctl.url))
                .send()
                .await
                .unwrap();
            let _ = client
                .get(format!("{}/v1/clusters/c{round}x{i}", w.ctl.url))
                .send()
                .await
                .unwrap();
        }
    };
    // Scraping counts itself: scrape before, so the scrapes below add nothing new.
    series().await;
    flood(0).await;
    let after_one = series().await;
    flood(1).await;
    let after_two = series().await;
    assert_eq!(
        after_one.len(),
        after_two.len(),
        "new series after a second flood: {after_two:#?}"
    );
    for line in &after_two {
        assert!(!line.contains("X1M") && !line.contains("/nope/"), "{line}");
    }
    assert!(
        after_two
            .iter()
            .any(|l| l.contains("method=\"other\"") && l.contains("route=\"/v1/clusters\"")),
        "{after_two:#?}"
    );
    assert!(
        after_two
            .iter()
            .any(|l| l.contains("route=\"/v1/clusters/{cluster}\"")),
        "{after_two:#?}"
    );
    // Every node state is exported, from the closed set.
    let text = w.ctl.metrics().await;
    for state in vcluster::model::NodeState::ALL {
        assert!(
            text.contains(&format!("vcluster_nodes{{state=\"{state}\"}}")),
            "{state}: {text}"
        );
    }
}

/// A site whose reservations are all cancelled or expired can be deleted (they go with
/// it); one with an accepted reservation cannot.
async fn a_site_whose_reservations_ended_can_be_deleted(b: Backend) {
    let mut w = one_site(&b).await;
    let (start, end) = lease(1, 2);
    let (s, body) = w
        .post(
            "/v1/reservations",
            &json!({"site": "east", "nodes": 1, "start": start, "end": end}).to_string(),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    let id = body["id"].as_i64().unwrap();
    w.agent.stop().await;
    w.ctl.admin.delete_empty("/v1/hosts/east-h0").await.unwrap();

    let url = format!("{}/v1/sites/east", w.ctl.url);
    let admin = Some(common::ADMIN_TOKEN);
    let (s, body) = raw(Method::DELETE, &url, admin, None).await;
    assert_eq!(s, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains(&format!("accepted reservations: {id}")),
        "{body}"
    );
    let client = w.ctl.client(&w.token);
    client
        .delete_empty(&format!("/v1/reservations/{id}"))
        .await
        .unwrap();
    let (s, body) = raw(Method::DELETE, &url, admin, None).await;
    assert_eq!(s, 204, "{body}");
    let (s, _) = raw(Method::GET, &url, admin, None).await;
    assert_eq!(s, 404);
    let (s, _) = w.get(&format!("/v1/reservations/{id}")).await;
    assert_eq!(s, 404, "the cancelled reservation went with its site");
}

/// 413 for a body over the limit, 415 without a JSON content type, 400 for a body that is
/// not JSON, 422 for JSON of the wrong shape: each with a JSON error.
async fn bodies_are_refused_with_the_status_that_says_why(b: Backend) {
    let w = one_site(&b).await;
    let huge = format!(
        r#"{{"name":"x","nodes":1,"pad":"{}"}}"#,
        "a".repeat(vcluster::model::MAX_BODY_BYTES)
    );
    let (s, body) = w.post("/v1/clusters", &huge).await;
    assert_eq!(s, 413, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("larger than"),
        "{body}"
    );
    let resp = common::http()
        .post(format!("{}/v1/clusters", w.ctl.url))
        .bearer_auth(&w.token)
        .header("content-type", "text/plain")
        .body(r#"{"name":"x","nodes":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 415);
    let (s, _) = w.post("/v1/clusters", "{not json").await;
    assert_eq!(s, 400);
    let (s, body) = w
        .post("/v1/clusters", r#"{"name":"x","nodes":"four"}"#)
        .await;
    assert_eq!(s, 422, "{body}");
    assert_eq!(body["field"], "nodes");
    let (start, end) = lease(1, 2);
    let (s, body) = w
        .post(
            "/v1/reservations",
            &json!({"nodes": 1, "start": start, "end": end, "note": "n".repeat(2000)}).to_string(),
        )
        .await;
    assert_eq!(s, 422, "{body}");
    assert_eq!(body["field"], "note", "{body}");
}

both_backends!(
    sizes_near_the_integer_limits_never_overbook_a_site,
    unknown_fields_are_refused_naming_them,
    made_up_methods_and_paths_add_no_metrics_series,
    a_site_whose_reservations_ended_can_be_deleted,
    bodies_are_refused_with_the_status_that_says_why,
);

/// A row naming a state the controller does not know is an error naming it, never read as
/// some default state (a node of unknown state used to count as `failed`, a user of
/// unknown role as `user`). SQLite only: it edits the store file behind the controller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_value_in_the_store_is_an_error_not_a_default() {
    use sqlx::Connection;
    let b = Backend::sqlite().await;
    let w = one_site(&b).await;
    let client = w.ctl.client(&w.token);
    let accepted: Accepted = client
        .post("/v1/clusters", &json!({"name": "odd", "nodes": 1}))
        .await
        .unwrap();
    let task = expect_success(&client, &accepted).await;

    let mut db = sqlx::SqliteConnection::connect(&b.url).await.unwrap();
    sqlx::query("UPDATE nodes SET state = 'exploded'")
        .execute(&mut db)
        .await
        .unwrap();
    sqlx::query("UPDATE tasks SET kind = 'frobnicate' WHERE id = $1")
        .bind(task.id)
        .execute(&mut db)
        .await
        .unwrap();
    let (s, body) = w.get("/v1/clusters/odd").await;
    assert_eq!(s, 500, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("unknown node state \"exploded\""),
        "{body}"
    );
    let (s, body) = w.get(&format!("/v1/tasks/{}", task.id)).await;
    assert_eq!(s, 500, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("unknown task kind \"frobnicate\""),
        "{body}"
    );
}

/// The secret the agent gave the controller at registration, from its state file.
fn agent_secret(agent: &TestAgent) -> String {
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(agent.config.state_dir.join("agent.json")).unwrap(),
    )
    .unwrap();
    state["agent_secret"].as_str().unwrap().to_string()
}

/// The host agent's API answers like the controller's: JSON errors naming the field,
/// unknown fields and query parameters refused, and nobody but the controller (holding
/// the agent's secret) gets past the door.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_api_refuses_bad_requests_with_json_naming_the_field() {
    let b = Backend::sqlite().await;
    let w = one_site(&b).await;
    let secret = agent_secret(&w.agent);
    let url = w.agent.url();
    let agent_http = w.agent.http();
    let share = |extra: Value| {
        let mut body = json!({
            "revision": 1,
            "network": {"id": 9, "name": "x", "psk": "", "subnet": "10.9.0.0/24", "running": true, "peers": []},
            "nodes": [],
        });
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        body.to_string()
    };

    let wrong = "not-the-secret";
    let cases = [
        (
            Method::PUT,
            "networks/9",
            wrong,
            Some(share(json!({}))),
            401,
            None,
        ),
        (
            Method::PUT,
            "networks/9",
            &secret,
            Some(share(json!({"delete_everything": true}))),
            422,
            Some("delete_everything"),
        ),
        (
            Method::PUT,
            "networks/8",
            &secret,
            Some(share(json!({}))),
            422,
            Some("network.id"),
        ),
        (
            Method::DELETE,
            "networks/9?revision=1&force=1",
            &secret,
            None,
            422,
            Some("force"),
        ),
        (Method::GET, "nothing", &secret, None, 404, None),
    ];
    for (method, path, token, body, status, field) in cases {
        let target = format!("{url}/agent/v1/{path}");
        let (s, answer) = raw_with(
            &agent_http,
            method.clone(),
            &target,
            Some(token),
            body.as_deref(),
        )
        .await;
        assert_eq!(s, status, "{method} {path}: {answer}");
        assert!(answer["error"].is_string(), "{method} {path}: {answer}");
        if let Some(field) = field {
            assert_eq!(answer["field"], field, "{method} {path}: {answer}");
        }
    }
    // Nothing of the refused requests reached the host.
    assert!(w.agent.vpnd.networks().is_empty());
}

/// The controller gzips its pushes to agents; the agent unpacks them, and what it unpacks
/// is held to the same bounds as a plain body: a small body that unpacks past the limit
/// (a gzip bomb), a body that is not gzip, and an encoding it does not know are refused
/// with an error, and nothing reaches the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_unpacks_gzipped_pushes_within_its_body_limit() {
    use std::io::Write;
    let gzip = |bytes: &[u8]| {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(bytes).unwrap();
        gz.finish().unwrap()
    };
    let b = Backend::sqlite().await;
    let w = one_site(&b).await;
    let secret = agent_secret(&w.agent);
    let target = format!("{}/agent/v1/networks/9", w.agent.url());
    let agent_http = w.agent.http();
    let share = json!({
        "revision": i64::MAX / 2,
        "network": {"id": 9, "name": "x", "psk": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "subnet": "10.9.0.0/24", "running": true, "peers": []},
        "nodes": [],
    })
    .to_string();
    let put = |body: Vec<u8>, encoding: &'static str| {
        let req = agent_http
            .put(&target)
            .bearer_auth(&secret)
            .header("content-type", "application/json")
            .header("content-encoding", encoding)
            .body(body);
        async move {
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };

    // Spaces after the JSON up to twice the agent's body limit
    // (vcluster::exec::MAX_EXEC_BODY_BYTES) once unpacked: a thousandth of that gzipped,
    // small enough to be sent whole before the agent answers.
    let mut bomb = share.clone().into_bytes();
    bomb.resize(2 * vcluster::exec::MAX_EXEC_BODY_BYTES, b' ');
    let bomb = gzip(&bomb);
    assert!(bomb.len() < 64 << 10, "{}", bomb.len());
    let (s, text) = put(bomb, "gzip").await;
    assert_eq!(s, 413, "{text}");
    assert!(text.contains("larger than"), "{text}");
    let (s, text) = put(b"not gzip at all".to_vec(), "gzip").await;
    assert!(s == 400 || s == 422, "{s} {text}");
    assert!(text.contains("gzip"), "{text}");
    let (s, text) = put(gzip(share.as_bytes()), "br").await;
    assert_eq!(s, 415, "{text}");
    assert!(text.contains("only gzip"), "{text}");
    // The handler's own 415 (no JSON content type) is not taken for an encoding's.
    let resp = agent_http
        .put(&target)
        .bearer_auth(&secret)
        .header("content-encoding", "gzip")
        .body(gzip(share.as_bytes()))
        .send()
        .await
        .unwrap();
    let (s, text) = (resp.status().as_u16(), resp.text().await.unwrap());
    assert_eq!(s, 415, "{text}");
    assert!(
        text.contains("Content-Type") && !text.contains("only gzip"),
        "{text}"
    );
    assert!(
        w.agent.vpnd.networks().is_empty(),
        "refused pushes reached the host"
    );

    // The same share gzipped is applied.
    let (s, text) = put(gzip(share.as_bytes()), "gzip").await;
    assert_eq!(s, 200, "{text}");
    assert!(text.contains("\"applied\":true"), "{text}");
    assert_eq!(w.agent.vpnd.networks().len(), 1);
}

/// What a push costs across the WAN: a remote host's share of 134 nodes gzips to a
/// small fraction of its JSON; a frontend's share (it carries install tokens) is sent as
/// it is.
#[test]
fn pushes_are_gzipped_unless_they_carry_install_tokens() {
    use vcluster::controller::agent_client::push_body;
    use vcluster::model::{ClusterOnHost, FrontendSpec, NodeSpec, ServicesSpec};
    let nodes: Vec<NodeSpec> = (1..=134u32)
        .map(|i| {
            serde_json::from_value(json!({
                "index": i, "name": format!("bench-node-{i}"),
                "mac": format!("52:54:00:12:{:02x}:{:02x}", i >> 8, i & 0xff),
                "address": format!("10.77.{}.{}/16", i >> 8, i & 0xff), "running": true,
                "boot": if i % 2 == 0 { "disk" } else { "network" },
            }))
            .unwrap()
        })
        .collect();
    let network = serde_json::from_value(json!({
        "id": 9, "name": "bench", "psk": "", "subnet": "10.77.0.0/16", "running": true, "peers": []
    }))
    .unwrap();
    let mut share = ClusterOnHost {
        revision: 7,
        network,
        nodes,
        services: Some(ServicesSpec {
            site_address: "10.77.255.254/16".into(),
            site_mac: "52:54:00:ff:ff:fe".into(),
            frontend: None,
        }),
    };
    let json = serde_json::to_vec(&share).unwrap();
    let (body, gzipped) = push_body(&share);
    assert!(gzipped);
    assert!(
        body.len() * 5 < json.len(),
        "{} bytes gzipped of {}",
        body.len(),
        json.len()
    );
    let mut unpacked = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut unpacked)
        .unwrap();
    assert_eq!(unpacked, json);

    share.services.as_mut().unwrap().frontend = Some(FrontendSpec {
        address: "10.77.255.253/16".into(),
        mac: "52:54:00:ff:ff:fd".into(),
        leases: vec![],
    });
    let (body, gzipped) = push_body(&share);
    assert!(!gzipped);
    assert_eq!(body, serde_json::to_vec(&share).unwrap());
}
