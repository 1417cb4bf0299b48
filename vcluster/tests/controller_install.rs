//! Installs over the API, with a host agent (in-memory driver), on SQLite and on
//! PostgreSQL: a provisioned cluster's nodes start `pending` and boot from the network,
//! their frontend's reports move them on (each checked against the install's token and
//! the frontend host), an installed node boots from its disk, a stalled phase fails
//! naming itself, and a reinstall starts over with a new token.

mod common;

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use vcluster::cli::ApiClient;
use vcluster::model::{Accepted, BootDevice, Cluster, Event, HostDesired, InstallState};

use common::{Backend, TestAgent, TestController, eventually, raw, test_config, wait_task};

struct World {
    ctl: TestController,
    alice: ApiClient,
    alice_token: String,
    agent_token: String,
    other_agent_token: String,
    agent: TestAgent,
    _other: TestAgent,
}

async fn world(ctl: TestController) -> World {
    ctl.site("paris").await;
    ctl.site("lyon").await;
    let agent_token = ctl.user("agent-paris", "agent").await;
    let agent = TestAgent::start(&ctl, &agent_token, "paris-h0", "paris", 8).await;
    let other_agent_token = ctl.user("agent-lyon", "agent").await;
    let other = TestAgent::start(&ctl, &other_agent_token, "lyon-h0", "lyon", 8).await;
    let alice_token = ctl.user("alice", "user").await;
    for (path, body) in [
        (
            "/v1/roles",
            json!({"name": "base", "packages": ["openssh-server"]}),
        ),
        ("/v1/profiles", json!({"name": "plain", "roles": ["base"]})),
    ] {
        let _: Value = ctl.admin.post(path, &body).await.expect(path);
    }
    World {
        alice: ctl.client(&alice_token),
        alice_token,
        ctl,
        agent_token,
        other_agent_token,
        agent,
        _other: other,
    }
}

async fn create(w: &World, name: &str) -> Cluster {
    let a: Accepted = w
        .alice
        .post(
            "/v1/clusters",
            &json!({"name": name, "sites": [{"site": "paris", "nodes": 2}], "profile": "plain"}),
        )
        .await
        .expect("create");
    wait_task(&w.alice, a.task.id).await;
    w.alice.get(&format!("/v1/clusters/{name}")).await.unwrap()
}

async fn desired(w: &World) -> HostDesired {
    let hosts: Vec<Value> = w.ctl.admin.get("/v1/hosts").await.unwrap();
    let id = hosts.iter().find(|h| h["name"] == "paris-h0").unwrap()["id"]
        .as_i64()
        .unwrap();
    w.ctl
        .admin
        .get(&format!("/v1/hosts/{id}/desired"))
        .await
        .unwrap()
}

/// The install token the frontend was given for `node`.
async fn token_of(w: &World, node: &str) -> Option<String> {
    desired(w)
        .await
        .clusters
        .iter()
        .filter_map(|c| c.services.as_ref()?.frontend.as_ref())
        .flat_map(|f| f.leases.iter())
        .find(|l| l.node == node)
        .and_then(|l| l.token.clone())
}

async fn report(w: &World, agent_token: &str, host: &str, body: Value) -> (u16, Value) {
    raw(
        Method::POST,
        &format!("{}/v1/hosts/{host}/install-reports", w.ctl.url),
        Some(agent_token),
        Some(&body.to_string()),
    )
    .await
}

async fn state_of(w: &World, cluster: &str, node: &str) -> Option<InstallState> {
    let c: Cluster = w.alice.get(&format!("/v1/clusters/{cluster}")).await.ok()?;
    c.nodes
        .iter()
        .find(|n| n.name == node)
        .and_then(|n| n.install.as_ref())
        .map(|i| i.state)
}

async fn an_install_moves_from_pending_to_booted_on_its_frontends_reports(b: Backend) {
    let w = world(TestController::start(&b).await).await;
    let c = create(&w, "inst").await;
    assert_eq!(c.nodes.len(), 2);
    for n in &c.nodes {
        assert_eq!(
            n.install.as_ref().unwrap().state,
            InstallState::Pending,
            "{}",
            n.name
        );
    }
    // The host's share: services with a frontend here (the lowest-index node's host), a
    // lease and an installer script per node, and every node booting from the network.
    let d = desired(&w).await;
    let share = &d.clusters[0];
    let services = share
        .services
        .as_ref()
        .expect("a provisioned cluster has services");
    assert!(
        services.site_address.ends_with(".254/24"),
        "{}",
        services.site_address
    );
    let fe = services
        .frontend
        .as_ref()
        .expect("this host is the frontend");
    assert_eq!(fe.leases.len(), 2);
    assert!(
        fe.leases[0].ipxe.contains("/provision/vmlinuz"),
        "{}",
        fe.leases[0].ipxe
    );
    assert!(share.nodes.iter().all(|n| n.boot == BootDevice::Network));
    eventually(
        "the agent made both nodes booting from the network",
        Duration::from_secs(10),
        || async {
            let nodes = w.agent.driver.snapshot();
            nodes.len() == 2 && nodes.values().all(|n| n.spec.boot == BootDevice::Network)
        },
    )
    .await;

    let token = token_of(&w, "inst-node-1")
        .await
        .expect("a token for node 1");
    let token2 = token_of(&w, "inst-node-2")
        .await
        .expect("a token for node 2");
    assert_ne!(token, token2, "one token per install");
    let body = |state: &str, extra: Value| {
        let mut v = json!({"node": "inst-node-1", "token": token, "state": state});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        v
    };

    // Refused: another node's token, another agent's host, a host that is not the
    // frontend, a made-up field, impossible figures.
    let (s, e) = report(
        &w,
        &w.agent_token,
        "paris-h0",
        json!({"node": "inst-node-1", "token": token2, "state": "pxe"}),
    )
    .await;
    assert_eq!(s, 403, "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("not the token"),
        "{e}"
    );
    let (s, _) = report(&w, &w.other_agent_token, "paris-h0", body("pxe", json!({}))).await;
    assert_eq!(s, 403, "another agent cannot speak for this host");
    let (s, e) = report(&w, &w.other_agent_token, "lyon-h0", body("pxe", json!({}))).await;
    assert_eq!(s, 403);
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("neither inst-node-1's own host nor the frontend"),
        "{e}"
    );
    let (s, e) = report(
        &w,
        &w.agent_token,
        "paris-h0",
        body("pxe", json!({"colour": "red"})),
    )
    .await;
    assert_eq!(s, 422, "{e}");
    let (s, e) = report(
        &w,
        &w.agent_token,
        "paris-h0",
        body(
            "installing",
            json!({"packages_done": 11, "packages_total": 10}),
        ),
    )
    .await;
    assert_eq!(s, 422, "{e}");
    let (s, e) = report(
        &w,
        &w.agent_token,
        "paris-h0",
        body("installing", json!({"bytes": -1})),
    )
    .await;
    assert_eq!(s, 422, "{e}");
    let (s, e) = report(&w, &w.agent_token, "paris-h0", body("booted", json!({}))).await;
    assert_eq!(s, 409, "pending cannot jump to booted: {e}");

    // The rendered profile, for the installer, with the token only.
    let (s, p) = raw(
        Method::POST,
        &format!("{}/v1/hosts/paris-h0/install-profile", w.ctl.url),
        Some(&w.agent_token),
        Some(&json!({"node": "inst-node-1", "token": token}).to_string()),
    )
    .await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["packages"], json!(["openssh-server"]));

    for (state, extra) in [
        ("pxe", json!({})),
        (
            "installing",
            json!({"packages_done": 0, "packages_total": 120}),
        ),
        (
            "installing",
            json!({"packages_done": 60, "packages_total": 120, "bytes": 50_000_000}),
        ),
    ] {
        let (s, e) = report(&w, &w.agent_token, "paris-h0", body(state, extra)).await;
        assert_eq!(s, 204, "{state}: {e}");
    }
    let c: Cluster = w.alice.get("/v1/clusters/inst").await.unwrap();
    let i = c.nodes[0].install.as_ref().unwrap();
    assert_eq!(
        (i.state, i.packages_done, i.packages_total, i.bytes),
        (
            InstallState::Installing,
            Some(60),
            Some(120),
            Some(50_000_000)
        )
    );
    assert_eq!(i.summary(), "installing 60/120");

    // Rebooting: from now on the node boots from its disk, and its script says so.
    let (s, e) = report(&w, &w.agent_token, "paris-h0", body("rebooting", json!({}))).await;
    assert_eq!(s, 204, "{e}");
    eventually(
        "node 1 boots from its disk",
        Duration::from_secs(10),
        || async {
            w.agent
                .driver
                .snapshot()
                .values()
                .any(|n| n.spec.name == "inst-node-1" && n.spec.boot == BootDevice::Disk)
        },
    )
    .await;
    let d = desired(&w).await;
    let lease = d.clusters[0]
        .services
        .as_ref()
        .unwrap()
        .frontend
        .as_ref()
        .unwrap()
        .leases
        .iter()
        .find(|l| l.node == "inst-node-1")
        .unwrap()
        .clone();
    assert!(
        lease.ipxe.contains("exit") && !lease.ipxe.contains("vmlinuz"),
        "{}",
        lease.ipxe
    );
    let (s, e) = report(&w, &w.agent_token, "paris-h0", body("booted", json!({}))).await;
    assert_eq!(s, 204, "{e}");
    assert_eq!(
        state_of(&w, "inst", "inst-node-1").await,
        Some(InstallState::Booted)
    );
    assert_eq!(
        token_of(&w, "inst-node-1").await,
        None,
        "a finished install's token is withdrawn"
    );
    let (s, e) = report(
        &w,
        &w.agent_token,
        "paris-h0",
        body("installing", json!({})),
    )
    .await;
    assert_eq!(s, 409, "no install loop after booted: {e}");

    let events: Vec<Event> = w.alice.get("/v1/events").await.unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    for k in [
        "install-pxe",
        "install-installing",
        "install-rebooting",
        "install-booted",
    ] {
        assert!(kinds.contains(&k), "{k} in {kinds:?}");
    }

    // A reinstall: pending again, a new token, the old one refused, booting from the
    // network again.
    let names: Vec<String> = w
        .alice
        .post(
            "/v1/clusters/inst/reinstall",
            &json!({"nodes": "inst-node-[1]"}),
        )
        .await
        .unwrap();
    assert_eq!(names, vec!["inst-node-1".to_string()]);
    assert_eq!(
        state_of(&w, "inst", "inst-node-1").await,
        Some(InstallState::Pending)
    );
    let new_token = token_of(&w, "inst-node-1").await.unwrap();
    assert_ne!(new_token, token);
    let (s, _) = report(&w, &w.agent_token, "paris-h0", body("pxe", json!({}))).await;
    assert_eq!(s, 403, "the previous install's token is dead");
    eventually(
        "node 1 boots from the network again",
        Duration::from_secs(10),
        || async {
            w.agent
                .driver
                .snapshot()
                .values()
                .any(|n| n.spec.name == "inst-node-1" && n.spec.boot == BootDevice::Network)
        },
    )
    .await;
    // Bad reinstall requests run nothing.
    let (s, e) = raw(
        Method::POST,
        &format!("{}/v1/clusters/inst/reinstall", w.ctl.url),
        Some(&w.ctl.user("mallory", "user").await),
        Some(&json!({"nodes": "inst-node-1"}).to_string()),
    )
    .await;
    assert_eq!(s, 404, "another user's cluster: {e}");
    let err = w
        .alice
        .post::<_, Vec<String>>(
            "/v1/clusters/inst/reinstall",
            &json!({"nodes": "inst-node-[1-9]"}),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not in cluster inst"), "{err}");
}

async fn an_install_that_stalls_fails_naming_its_phase(b: Backend) {
    let mut config = test_config(&b.url);
    config.install_phase_timeout = Duration::from_secs(2);
    let w = world(TestController::start_with(config).await).await;
    create(&w, "slow").await;
    let token = token_of(&w, "slow-node-2").await.unwrap();
    let (s, e) = report(
        &w,
        &w.agent_token,
        "paris-h0",
        json!({"node": "slow-node-2", "token": token, "state": "installing", "packages_done": 7, "packages_total": 90}),
    )
    .await;
    assert_eq!(s, 204, "{e}");
    eventually("both installs failed", Duration::from_secs(20), || async {
        state_of(&w, "slow", "slow-node-1").await == Some(InstallState::Failed)
            && state_of(&w, "slow", "slow-node-2").await == Some(InstallState::Failed)
    })
    .await;
    let c: Cluster = w.alice.get("/v1/clusters/slow").await.unwrap();
    let r1 = c.nodes[0].install.as_ref().unwrap().reason.clone().unwrap();
    let r2 = c.nodes[1].install.as_ref().unwrap().reason.clone().unwrap();
    assert!(
        r1.contains("stalled in phase pending") && r1.contains("never fetched its boot script"),
        "{r1}"
    );
    assert!(
        r2.contains("stalled in phase installing") && r2.contains("package 7 of 90"),
        "{r2}"
    );
    let events: Vec<Event> = w.alice.get("/v1/events").await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.kind == "install-failed" && e.message.contains("slow-node-2"))
    );
}

async fn nodes_are_powered_as_a_set_and_their_console_is_asked_of_their_host(b: Backend) {
    let w = world(TestController::start(&b).await).await;
    create(&w, "pw").await;
    let out: Vec<Value> = w
        .alice
        .post(
            "/v1/clusters/pw/power",
            &json!({"nodes": "pw-node-[1-2]", "action": "off"}),
        )
        .await
        .unwrap();
    assert_eq!(
        out,
        vec![
            json!({"node": "pw-node-1", "running": false}),
            json!({"node": "pw-node-2", "running": false})
        ]
    );
    assert!(w.agent.driver.snapshot().values().all(|n| !n.spec.running));
    let out: Vec<Value> = w
        .alice
        .post(
            "/v1/clusters/pw/power",
            &json!({"nodes": "pw-node-2", "action": "on"}),
        )
        .await
        .unwrap();
    assert_eq!(out, vec![json!({"node": "pw-node-2", "running": true})]);
    for (body, field) in [
        (
            json!({"nodes": "pw-node-1", "action": "reinstall"}),
            "reinstall goes through",
        ),
        (
            json!({"nodes": "pw-node-9", "action": "on"}),
            "not in cluster pw",
        ),
        (
            json!({"nodes": "pw-node-1", "action": "explode"}),
            "explode",
        ),
    ] {
        let err = w
            .alice
            .post::<_, Vec<Value>>("/v1/clusters/pw/power", &body)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(field), "{err}");
    }
    // The in-memory driver keeps no console: the host says so, by name.
    let err = w
        .alice
        .get::<Value>("/v1/clusters/pw/nodes/pw-node-1/console")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("keeps no console for pw-node-1"), "{err}");
    let err = w
        .alice
        .get::<Value>("/v1/clusters/pw/nodes/pw-node-7/console")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no node pw-node-7 in cluster pw"), "{err}");
}

async fn desired_of(w: &World, host: &str) -> HostDesired {
    let hosts: Vec<Value> = w.ctl.admin.get("/v1/hosts").await.unwrap();
    let id = hosts.iter().find(|h| h["name"] == host).unwrap()["id"]
        .as_i64()
        .unwrap();
    w.ctl
        .admin
        .get(&format!("/v1/hosts/{id}/desired"))
        .await
        .unwrap()
}

async fn a_frontend_at_another_site_joins_the_overlay_and_speaks_for_the_nodes(b: Backend) {
    let w = world(TestController::start(&b).await).await;
    let a: Accepted = w
        .alice
        .post(
            "/v1/clusters",
            &json!({"name": "far", "sites": [{"site": "paris", "nodes": 2}], "profile": "plain",
                    "frontend_site": "lyon"}),
        )
        .await
        .expect("create");
    wait_task(&w.alice, a.task.id).await;
    let c: Cluster = w.alice.get("/v1/clusters/far").await.unwrap();
    assert_eq!(c.frontend_host.as_deref(), Some("lyon-h0"));
    let lyon = desired_of(&w, "lyon-h0").await;
    let share = lyon
        .clusters
        .iter()
        .find(|c| c.network.name == "far")
        .expect("lyon has the cluster");
    assert!(share.nodes.is_empty(), "no node at lyon");
    assert_eq!(share.network.peers.len(), 1, "its overlay reaches paris");
    let fe = share
        .services
        .as_ref()
        .unwrap()
        .frontend
        .as_ref()
        .expect("lyon runs the frontend");
    assert_eq!(fe.leases.len(), 2);
    let paris = desired_of(&w, "paris-h0").await;
    let share = paris
        .clusters
        .iter()
        .find(|c| c.network.name == "far")
        .unwrap();
    assert!(share.services.as_ref().unwrap().frontend.is_none());
    assert_eq!(
        share.network.peers.len(),
        1,
        "paris's overlay reaches the frontend"
    );
    let token = fe.leases[0].token.clone().unwrap();
    // The frontend's host speaks for the node, and so does its own host (which takes its
    // reports at its site).
    let (s, e) = report(
        &w,
        &w.other_agent_token,
        "lyon-h0",
        json!({"node": "far-node-1", "token": token, "state": "pxe"}),
    )
    .await;
    assert_eq!(s, 204, "{e}");
    let (s, e) = report(
        &w,
        &w.agent_token,
        "paris-h0",
        json!({"node": "far-node-1", "token": token, "state": "installing"}),
    )
    .await;
    assert_eq!(s, 204, "the node's own host: {e}");
    // Refused at create: an unknown site, a frontend without a profile.
    for (body, needle) in [
        (
            json!({"name": "x1", "nodes": 1, "profile": "plain", "frontend_site": "mars"}),
            "unknown site",
        ),
        (
            json!({"name": "x2", "nodes": 1, "frontend_site": "lyon"}),
            "give a profile",
        ),
    ] {
        let err = w
            .alice
            .post::<_, Accepted>("/v1/clusters", &body)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{err}");
    }
    // A group of the cluster names nodes for a reinstall (and for exec and power).
    let _: Value = w
        .alice
        .post(
            "/v1/clusters/far/groups",
            &json!({"name": "second", "nodes": "far-node-2"}),
        )
        .await
        .unwrap();
    let names: Vec<String> = w
        .alice
        .post("/v1/clusters/far/reinstall", &json!({"nodes": "@second"}))
        .await
        .unwrap();
    assert_eq!(names, vec!["far-node-2".to_string()]);
    let err = w
        .alice
        .post::<_, Vec<String>>("/v1/clusters/far/reinstall", &json!({"nodes": "@nosuch"}))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown group @nosuch"), "{err}");
    // Deleted: the frontend's host lets the cluster go too.
    let a: Accepted = w.alice.delete("/v1/clusters/far").await.unwrap();
    wait_task(&w.alice, a.task.id).await;
    assert!(desired_of(&w, "lyon-h0").await.clusters.is_empty());
}

async fn batch(w: &World, agent_token: &str, host: &str, reports: Vec<Value>) -> (u16, Value) {
    raw(
        Method::POST,
        &format!("{}/v1/hosts/{host}/install-reports/batch", w.ctl.url),
        Some(agent_token),
        Some(&json!({ "reports": reports }).to_string()),
    )
    .await
}

async fn a_nodes_own_host_sends_its_reports_in_batches(b: Backend) {
    let w = world(TestController::start(&b).await).await;
    let a: Accepted = w
        .alice
        .post(
            "/v1/clusters",
            &json!({"name": "bat", "sites": [{"site": "paris", "nodes": 2}], "profile": "plain",
                    "frontend_site": "lyon"}),
        )
        .await
        .expect("create");
    wait_task(&w.alice, a.task.id).await;
    let fe = desired_of(&w, "lyon-h0").await.clusters[0]
        .services
        .clone()
        .unwrap()
        .frontend
        .unwrap();
    let token = |node: &str| {
        fe.leases
            .iter()
            .find(|l| l.node == node)
            .and_then(|l| l.token.clone())
            .unwrap()
    };
    let (t1, t2) = (token("bat-node-1"), token("bat-node-2"));
    let r = |node: &str, token: &str, state: &str| json!({"node": node, "token": token, "state": state, "packages_total": 10});

    // Refused whole, nothing applied: too many, a made-up field, a user, another agent's
    // host.
    let (s, e) = batch(
        &w,
        &w.agent_token,
        "paris-h0",
        vec![r("bat-node-1", &t1, "pxe"); vcluster::model::MAX_REPORT_BATCH + 1],
    )
    .await;
    assert_eq!(s, 422, "{e}");
    assert_eq!(e["field"], "reports", "{e}");
    let (s, e) = raw(
        Method::POST,
        &format!("{}/v1/hosts/paris-h0/install-reports/batch", w.ctl.url),
        Some(&w.agent_token),
        Some(&json!({"reports": [], "urgent": true}).to_string()),
    )
    .await;
    assert_eq!(s, 422, "an unknown field: {e}");
    let (s, _) = batch(
        &w,
        &w.alice_token,
        "paris-h0",
        vec![r("bat-node-1", &t1, "pxe")],
    )
    .await;
    assert_eq!(s, 403, "a user is no agent");
    let (s, e) = batch(
        &w,
        &w.other_agent_token,
        "paris-h0",
        vec![r("bat-node-1", &t1, "pxe")],
    )
    .await;
    assert_eq!(s, 200, "{e}");
    assert_eq!(
        e["results"][0]["status"], 403,
        "another agent cannot speak for this host: {e}"
    );
    assert_eq!(
        state_of(&w, "bat", "bat-node-1").await,
        Some(InstallState::Pending)
    );

    // Each report's own outcome, in the batch's order; one node's in order.
    let (s, e) = batch(
        &w,
        &w.agent_token,
        "paris-h0",
        vec![
            r("bat-node-1", &t1, "pxe"),
            r("bat-node-2", &t1, "pxe"),
            r("bat-node-1", &t1, "installing"),
            r("bat-node-9", &t1, "pxe"),
            r("bat-node-2", &t2, "pxe"),
            r("bat-node-2", &t2, "booted"),
        ],
    )
    .await;
    assert_eq!(s, 200, "{e}");
    let statuses: Vec<i64> = e["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["status"].as_i64().unwrap())
        .collect();
    assert_eq!(statuses, [204, 403, 204, 404, 204, 409], "{e}");
    assert!(
        e["results"][1]["error"]
            .as_str()
            .unwrap()
            .contains("not the token"),
        "{e}"
    );
    assert!(e["results"][0].get("error").is_none(), "{e}");
    assert_eq!(
        state_of(&w, "bat", "bat-node-1").await,
        Some(InstallState::Installing)
    );
    assert_eq!(
        state_of(&w, "bat", "bat-node-2").await,
        Some(InstallState::Pxe)
    );
    // An empty batch is answered with nothing.
    let (s, e) = batch(&w, &w.agent_token, "paris-h0", vec![]).await;
    assert_eq!((s, e["results"].as_array().unwrap().len()), (200, 0), "{e}");
}

async fn reinstall_needs_a_profile(b: Backend) {
    let w = world(TestController::start(&b).await).await;
    let a: Accepted = w
        .alice
        .post("/v1/clusters", &json!({"name": "bare", "nodes": 1}))
        .await
        .unwrap();
    wait_task(&w.alice, a.task.id).await;
    let c: Cluster = w.alice.get("/v1/clusters/bare").await.unwrap();
    assert!(c.nodes[0].install.is_none(), "no profile, no install");
    let err = w
        .alice
        .post::<_, Vec<String>>(
            "/v1/clusters/bare/reinstall",
            &json!({"nodes": "bare-node-1"}),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("has no profile"), "{err}");
    assert!(
        desired(&w)
            .await
            .clusters
            .iter()
            .all(|c| c.services.is_none())
    );
}

async fn firmware_is_the_clusters_unless_added_nodes_say_otherwise(b: Backend) {
    let w = world(TestController::start(&b).await).await;
    let a: Accepted = w
        .alice
        .post(
            "/v1/clusters",
            &json!({"name": "fw", "sites": [{"site": "paris", "nodes": 1}], "profile": "plain",
                    "node_firmware": "uefi"}),
        )
        .await
        .unwrap();
    wait_task(&w.alice, a.task.id).await;
    for (body, want) in [
        (json!({"count": 1, "site": "paris"}), "uefi"),
        (
            json!({"count": 1, "site": "paris", "firmware": "bios"}),
            "bios",
        ),
    ] {
        let a: Accepted = w.alice.post("/v1/clusters/fw/nodes", &body).await.unwrap();
        wait_task(&w.alice, a.task.id).await;
        let c: Cluster = w.alice.get("/v1/clusters/fw").await.unwrap();
        assert_eq!(c.nodes.last().unwrap().firmware.as_str(), want, "{body}");
    }
    let c: Cluster = w.alice.get("/v1/clusters/fw").await.unwrap();
    let api: Vec<&str> = c.nodes.iter().map(|n| n.firmware.as_str()).collect();
    assert_eq!(api, ["uefi", "uefi", "bios"]);
    // The host is told, node by node.
    let d = desired(&w).await;
    let specs: Vec<&str> = d
        .clusters
        .iter()
        .flat_map(|c| c.nodes.iter())
        .map(|n| n.firmware.as_str())
        .collect();
    assert_eq!(specs, ["uefi", "uefi", "bios"]);
    // A firmware that is not one: refused, naming it, and nothing added.
    let (s, body) = raw(
        Method::POST,
        &format!("{}/v1/clusters/fw/nodes", w.ctl.url),
        Some(&w.alice_token),
        Some(r#"{"count": 1, "firmware": "coreboot"}"#),
    )
    .await;
    assert_eq!(s, 422, "{body}");
    assert!(body.to_string().contains("coreboot"), "{body}");
    let c: Cluster = w.alice.get("/v1/clusters/fw").await.unwrap();
    assert_eq!(c.nodes.len(), 3);
}

both_backends!(
    firmware_is_the_clusters_unless_added_nodes_say_otherwise,
    an_install_moves_from_pending_to_booted_on_its_frontends_reports,
    an_install_that_stalls_fails_naming_its_phase,
    nodes_are_powered_as_a_set_and_their_console_is_asked_of_their_host,
    a_frontend_at_another_site_joins_the_overlay_and_speaks_for_the_nodes,
    reinstall_needs_a_profile,
    a_nodes_own_host_sends_its_reports_in_batches,
);
