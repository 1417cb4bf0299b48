//! The configuration database over the API (roles, profiles, attributes, groups, node
//! roles, a node's rendered profile), with a host agent, on SQLite and on PostgreSQL:
//! every test runs as `sqlite::<name>` and `postgres::<name>`.

mod common;

use reqwest::Method;
use serde_json::{Value, json};
use vcluster::cli::ApiClient;
use vcluster::model::{Accepted, Cluster, Group, RenderedProfile, Task};

use common::{Backend, TestAgent, TestController, expect_success, raw};

struct World {
    ctl: TestController,
    alice: ApiClient,
    alice_token: String,
    bob_token: String,
    _agent: TestAgent,
}

async fn world(b: &Backend) -> World {
    let ctl = TestController::start(b).await;
    ctl.site("paris").await;
    let token = ctl.user("agent-paris", "agent").await;
    let agent = TestAgent::start(&ctl, &token, "paris-h0", "paris", 8).await;
    let alice_token = ctl.user("alice", "user").await;
    let bob_token = ctl.user("bob", "user").await;
    World {
        alice: ctl.client(&alice_token),
        alice_token,
        bob_token,
        ctl,
        _agent: agent,
    }
}

async fn call(
    w: &World,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let body = body.map(|b| b.to_string());
    raw(
        method,
        &format!("{}{path}", w.ctl.url),
        Some(token),
        body.as_deref(),
    )
    .await
}

async fn admin_defines_compute(w: &World) {
    let _: Value = w
        .ctl
        .admin
        .post(
            "/v1/roles",
            &json!({
                "name": "base",
                "packages": ["openssh-server", "chrony"],
                "files": [{"path": "/etc/motd", "mode": 0o644,
                           "content": "{{ node.name }} of {{ cluster.name }} at {{ site.name }}: {{ greeting }}\n"}],
            }),
        )
        .await
        .expect("role base");
    let _: Value = w
        .ctl
        .admin
        .post(
            "/v1/roles",
            &json!({
                "name": "compute",
                "packages": ["slurmd {{ extra_packages }}"],
                "post": "#!/bin/sh\nchronyc add server {{ ntp_server }}\n",
            }),
        )
        .await
        .expect("role compute");
    let _: Value = w
        .ctl
        .admin
        .post(
            "/v1/profiles",
            &json!({"name": "hpc", "roles": ["base", "compute"]}),
        )
        .await
        .expect("profile hpc");
}

async fn set_attr(client: &ApiClient, scope: &str, key: &str, value: &str) {
    let _: Value = client
        .put(
            "/v1/attributes",
            &json!({"scope": scope, "key": key, "value": value}),
        )
        .await
        .unwrap_or_else(|e| panic!("set {scope} {key}: {e}"));
}

async fn a_node_gets_its_profile_rendered_with_attributes_by_precedence(b: Backend) {
    let w = world(&b).await;
    admin_defines_compute(&w).await;
    let _: Value = w
        .ctl
        .admin
        .post(
            "/v1/roles",
            &json!({"name": "gpu", "packages": ["nvidia-driver"],
            "files": [{"path": "/etc/gpu.conf", "content": "count={{ gpus }}\n"}]}),
        )
        .await
        .unwrap();
    let _: Value = w
        .ctl
        .admin
        .post("/v1/roles", &json!({"name": "debug", "packages": ["gdb"]}))
        .await
        .unwrap();
    for (key, value) in [
        ("greeting", "global"),
        ("ntp_server", "pool.ntp.org"),
        ("extra_packages", ""),
        ("gpus", "0"),
    ] {
        set_attr(&w.ctl.admin, "global", key, value).await;
    }
    set_attr(
        &w.ctl.admin,
        "site:paris",
        "ntp_server",
        "ntp.paris.example",
    )
    .await;

    let a: Accepted = w
        .alice
        .post(
            "/v1/clusters",
            &json!({"name": "demo", "nodes": 2, "profile": "hpc"}),
        )
        .await
        .expect("create with a profile");
    expect_success(&w.alice, &a).await;
    assert_eq!(a.cluster.as_ref().unwrap().profile.as_deref(), Some("hpc"));

    set_attr(&w.alice, "cluster:demo", "greeting", "cluster").await;
    set_attr(&w.alice, "cluster:demo", "extra_packages", "htop").await;
    let g: Group = w
        .alice
        .post(
            "/v1/clusters/demo/groups",
            &json!({"name": "gpus", "nodes": "demo-node-[1]", "roles": ["gpu"]}),
        )
        .await
        .expect("group");
    assert_eq!(g.nodes, ["demo-node-1"]);
    set_attr(&w.alice, "group:demo/gpus", "gpus", "4").await;
    set_attr(&w.alice, "group:demo/gpus", "greeting", "group").await;
    set_attr(&w.alice, "node:demo-node-1", "greeting", "node").await;
    let _: Value = w
        .alice
        .put("/v1/nodes/demo-node-1/roles", &json!({"roles": ["debug"]}))
        .await
        .expect("node roles");

    let p: RenderedProfile = w
        .alice
        .get("/v1/nodes/demo-node-1/profile")
        .await
        .expect("render");
    assert_eq!(p.profile, "hpc");
    assert_eq!((p.cluster.as_str(), p.site.as_str()), ("demo", "paris"));
    assert_eq!(p.roles, ["base", "compute", "gpu", "debug"]);
    assert_eq!(p.attributes["greeting"], "node");
    assert_eq!(p.attributes["gpus"], "4");
    assert_eq!(p.attributes["ntp_server"], "ntp.paris.example");
    assert_eq!(
        p.packages,
        [
            "chrony",
            "gdb",
            "htop",
            "nvidia-driver",
            "openssh-server",
            "slurmd"
        ]
    );
    assert_eq!(p.files[0].content, "demo-node-1 of demo at paris: node\n");
    assert_eq!(p.files[1].path, "/etc/gpu.conf");
    assert_eq!(p.files[1].content, "count=4\n");
    assert_eq!(p.post[0].role, "compute");
    assert_eq!(
        p.post[0].script,
        "#!/bin/sh\nchronyc add server ntp.paris.example\n"
    );

    // Node 2 is in no group and has no roles of its own.
    let p: RenderedProfile = w.alice.get("/v1/nodes/demo-node-2/profile").await.unwrap();
    assert_eq!(p.roles, ["base", "compute"]);
    assert_eq!(p.attributes["greeting"], "cluster");
    assert_eq!(
        p.files[0].content,
        "demo-node-2 of demo at paris: cluster\n"
    );

    // Bob sees none of it.
    let (s, _) = call(
        &w,
        &w.bob_token,
        Method::GET,
        "/v1/nodes/demo-node-1/profile",
        None,
    )
    .await;
    assert_eq!(s, 404);

    // Taking an attribute away breaks the render with the template, line and name.
    let (s, body) = call(
        &w,
        &w.ctl_admin_token(),
        Method::DELETE,
        "/v1/attributes?scope=global&key=gpus",
        None,
    )
    .await;
    assert_eq!(s, 204, "{body}");
    let (s, body) = call(
        &w,
        &w.alice_token,
        Method::GET,
        "/v1/nodes/demo-node-2/profile",
        None,
    )
    .await;
    assert_eq!(s, 200, "node 2 takes no gpu role: {body}");
    let (s, body) = call(
        &w,
        &w.alice_token,
        Method::DELETE,
        "/v1/attributes?scope=group:demo/gpus&key=gpus",
        None,
    )
    .await;
    assert_eq!(s, 204, "{body}");
    let (s, body) = call(
        &w,
        &w.alice_token,
        Method::GET,
        "/v1/nodes/demo-node-1/profile",
        None,
    )
    .await;
    assert_eq!(s, 422, "{body}");
    assert_eq!(
        body["error"],
        "node demo-node-1: role gpu, file /etc/gpu.conf, line 1: undefined attribute `gpus` (template role/gpu/files//etc/gpu.conf)"
    );

    // Roles and profiles in use stay; the cluster goes with its groups and attributes.
    let (s, body) = call(
        &w,
        &w.ctl_admin_token(),
        Method::DELETE,
        "/v1/roles/gpu",
        None,
    )
    .await;
    assert_eq!(s, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("group demo/gpus"),
        "{body}"
    );
    let (s, body) = call(
        &w,
        &w.ctl_admin_token(),
        Method::DELETE,
        "/v1/profiles/hpc",
        None,
    )
    .await;
    assert_eq!(s, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("demo"), "{body}");
    let a: Accepted = w.alice.delete("/v1/clusters/demo").await.expect("delete");
    expect_success(&w.alice, &a).await;
    common::eventually(
        "the cluster is gone",
        std::time::Duration::from_secs(30),
        || async {
            let cs: Vec<Cluster> = w.alice.get("/v1/clusters").await.unwrap();
            cs.is_empty()
        },
    )
    .await;
    let (s, body) = call(
        &w,
        &w.ctl_admin_token(),
        Method::DELETE,
        "/v1/roles/gpu",
        None,
    )
    .await;
    assert_eq!(s, 204, "{body}");
    let (s, body) = call(
        &w,
        &w.ctl_admin_token(),
        Method::DELETE,
        "/v1/profiles/hpc",
        None,
    )
    .await;
    assert_eq!(s, 204, "{body}");
}

impl World {
    fn ctl_admin_token(&self) -> String {
        common::ADMIN_TOKEN.to_string()
    }
}

async fn a_broken_template_refuses_the_cluster_create_and_leaves_nothing(b: Backend) {
    let w = world(&b).await;
    admin_defines_compute(&w).await;
    set_attr(&w.ctl.admin, "global", "greeting", "hi").await;
    set_attr(&w.ctl.admin, "global", "extra_packages", "").await;
    // ntp_server is set nowhere.
    let (s, body) = call(
        &w,
        &w.alice_token,
        Method::POST,
        "/v1/clusters",
        Some(json!({"name": "broken", "nodes": 2, "profile": "hpc"})),
    )
    .await;
    assert_eq!(s, 422, "{body}");
    assert_eq!(body["field"], "profile");
    let msg = body["error"].as_str().unwrap();
    assert!(
        msg.starts_with("node broken-node-1: role compute, post script, line 2: undefined attribute `ntp_server`"),
        "{msg}"
    );
    assert!(msg.contains("role/compute/post"), "{msg}");

    let clusters: Vec<Cluster> = w.ctl.admin.get("/v1/clusters").await.unwrap();
    assert!(clusters.is_empty(), "{clusters:?}");
    let tasks: Vec<Task> = w.ctl.admin.get("/v1/tasks").await.unwrap();
    assert!(tasks.is_empty(), "{tasks:?}");
    let (s, _) = call(
        &w,
        common::ADMIN_TOKEN,
        Method::GET,
        "/v1/nodes/broken-node-1/profile",
        None,
    )
    .await;
    assert_eq!(s, 404);
    assert!(
        w._agent.driver.names().is_empty(),
        "no node reached the host"
    );

    // With the attribute set, the same request is accepted.
    set_attr(&w.ctl.admin, "global", "ntp_server", "pool.ntp.org").await;
    let a: Accepted = w
        .alice
        .post(
            "/v1/clusters",
            &json!({"name": "broken", "nodes": 2, "profile": "hpc"}),
        )
        .await
        .expect("accepted now");
    expect_success(&w.alice, &a).await;

    // An unknown profile names the field.
    let (s, body) = call(
        &w,
        &w.alice_token,
        Method::POST,
        "/v1/clusters",
        Some(json!({"name": "other", "nodes": 1, "profile": "nope"})),
    )
    .await;
    assert_eq!(
        (s, body["field"].as_str()),
        (422, Some("profile")),
        "{body}"
    );
}

async fn a_user_cannot_edit_another_users_cluster_attributes_or_global_roles(b: Backend) {
    let w = world(&b).await;
    admin_defines_compute(&w).await;
    let a: Accepted = w
        .alice
        .post("/v1/clusters", &json!({"name": "mine", "nodes": 1}))
        .await
        .unwrap();
    expect_success(&w.alice, &a).await;
    let bob = &w.bob_token;
    let put = |scope: &str| Some(json!({"scope": scope, "key": "k", "value": "v"}));

    for scope in ["cluster:mine", "node:mine-node-1"] {
        let (s, body) = call(&w, bob, Method::PUT, "/v1/attributes", put(scope)).await;
        assert_eq!(s, 404, "{scope}: {body}");
        let (s, _) = call(
            &w,
            bob,
            Method::GET,
            &format!("/v1/attributes?scope={scope}"),
            None,
        )
        .await;
        assert_eq!(s, 404, "{scope}");
    }
    for scope in ["global", "site:paris"] {
        let (s, body) = call(&w, bob, Method::PUT, "/v1/attributes", put(scope)).await;
        assert_eq!(s, 403, "{scope}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("admin role"),
            "{body}"
        );
        let (s, _) = call(
            &w,
            bob,
            Method::GET,
            &format!("/v1/attributes?scope={scope}"),
            None,
        )
        .await;
        assert_eq!(s, 200, "people read {scope}");
    }
    let (s, _) = call(
        &w,
        bob,
        Method::POST,
        "/v1/roles",
        Some(json!({"name": "evil"})),
    )
    .await;
    assert_eq!(s, 403);
    let (s, _) = call(
        &w,
        bob,
        Method::PUT,
        "/v1/roles/base",
        Some(json!({"name": "base"})),
    )
    .await;
    assert_eq!(s, 403);
    let (s, _) = call(&w, bob, Method::DELETE, "/v1/roles/base", None).await;
    assert_eq!(s, 403);
    let (s, _) = call(
        &w,
        bob,
        Method::POST,
        "/v1/profiles",
        Some(json!({"name": "p"})),
    )
    .await;
    assert_eq!(s, 403);
    let (s, body) = call(&w, bob, Method::GET, "/v1/roles/base", None).await;
    assert_eq!(s, 200, "people read roles: {body}");
    let (s, _) = call(
        &w,
        bob,
        Method::POST,
        "/v1/clusters/mine/groups",
        Some(json!({"name": "g"})),
    )
    .await;
    assert_eq!(s, 404);
    let (s, _) = call(
        &w,
        bob,
        Method::PUT,
        "/v1/nodes/mine-node-1/roles",
        Some(json!({"roles": []})),
    )
    .await;
    assert_eq!(s, 404);
    let (s, _) = call(
        &w,
        bob,
        Method::PUT,
        "/v1/clusters/mine/profile",
        Some(json!({"profile": "hpc"})),
    )
    .await;
    assert_eq!(s, 404);

    // Alice may, and nothing of Bob's attempts was kept.
    set_attr(&w.alice, "cluster:mine", "k", "alice").await;
    let attrs: Vec<Value> = w
        .alice
        .get("/v1/attributes?scope=cluster:mine")
        .await
        .unwrap();
    assert_eq!(
        attrs,
        [json!({"scope": "cluster:mine", "key": "k", "value": "alice"})]
    );
    let attrs: Vec<Value> = w.alice.get("/v1/attributes?scope=global").await.unwrap();
    assert!(attrs.is_empty(), "{attrs:?}");
}

async fn bad_roles_attributes_and_groups_are_refused_naming_the_field(b: Backend) {
    let w = world(&b).await;
    let admin = common::ADMIN_TOKEN;
    let cases = [
        (
            "/v1/roles",
            json!({"name": "web", "package": ["nginx"]}),
            "package",
        ),
        (
            "/v1/roles",
            json!({"name": "web", "files": [{"path": "/etc/x", "owner": "root"}]}),
            "files[0].owner",
        ),
        (
            "/v1/roles",
            json!({"name": "web", "files": [{"path": "etc/x"}]}),
            "files[0].path",
        ),
        (
            "/v1/roles",
            json!({"name": "web", "files": [{"path": "/etc/x", "mode": 0o10000}]}),
            "files[0].mode",
        ),
        (
            "/v1/roles",
            json!({"name": "web", "post": "a\n{% if %}"}),
            "post",
        ),
        ("/v1/roles", json!({"name": "Web"}), "name"),
        (
            "/v1/profiles",
            json!({"name": "p", "roles": ["ghost"]}),
            "roles[0]",
        ),
        (
            "/v1/profiles",
            json!({"name": "p", "roles": [], "extra": 1}),
            "extra",
        ),
    ];
    for (path, body, field) in cases {
        let (s, answer) = call(&w, admin, Method::POST, path, Some(body.clone())).await;
        assert_eq!(s, 422, "{body}: {answer}");
        assert_eq!(answer["field"], field, "{body}: {answer}");
    }
    let (s, body) = call(
        &w,
        admin,
        Method::POST,
        "/v1/roles",
        Some(json!({"name": "web", "post": "a\n{% if %}"})),
    )
    .await;
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("role web, post script, line 2:"),
        "{s} {body}"
    );

    let attr = |key: &str, value: &str, scope: &str| {
        Some(json!({"scope": scope, "key": key, "value": value}))
    };
    let big = "v".repeat(64 * 1024 + 1);
    for (body, field) in [
        (attr("Bad-Key", "v", "global"), Some("key")),
        (attr(&"k".repeat(65), "v", "global"), Some("key")),
        (attr("node", "v", "global"), Some("key")),
        (attr("k", &big, "global"), Some("value")),
        (attr("k", "v", "rack:r1"), Some("scope")),
    ] {
        let (s, answer) = call(&w, admin, Method::PUT, "/v1/attributes", body.clone()).await;
        assert_eq!(s, 422, "{answer}");
        assert_eq!(answer["field"].as_str(), field, "{answer}");
    }
    let (s, _) = call(
        &w,
        admin,
        Method::PUT,
        "/v1/attributes",
        attr("k", &"v".repeat(64 * 1024), "global"),
    )
    .await;
    assert_eq!(s, 200, "64 KiB is allowed");
    let (s, body) = call(
        &w,
        admin,
        Method::DELETE,
        "/v1/attributes?scope=global&key=nope",
        None,
    )
    .await;
    assert_eq!(s, 404, "{body}");
    let (s, body) = call(
        &w,
        admin,
        Method::PUT,
        "/v1/attributes",
        attr("k", "v", "site:nowhere"),
    )
    .await;
    assert_eq!(s, 404, "{body}");

    let a: Accepted = w
        .alice
        .post("/v1/clusters", &json!({"name": "c", "nodes": 1}))
        .await
        .unwrap();
    expect_success(&w.alice, &a).await;
    let (s, body) = call(
        &w,
        &w.alice_token,
        Method::POST,
        "/v1/clusters/c/groups",
        Some(json!({"name": "g", "nodes": "c-node-[1-3]"})),
    )
    .await;
    assert_eq!(s, 422, "{body}");
    assert_eq!(body["field"], "nodes");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("c-node-2, c-node-3"),
        "{body}"
    );
    let (s, body) = call(
        &w,
        &w.alice_token,
        Method::POST,
        "/v1/clusters/c/groups",
        Some(json!({"name": "g", "nodes": "c-node-1", "members": "x"})),
    )
    .await;
    assert_eq!(
        (s, body["field"].as_str()),
        (422, Some("members")),
        "{body}"
    );
    let (s, body) = call(
        &w,
        &w.alice_token,
        Method::GET,
        "/v1/nodes/c-node-1/profile",
        None,
    )
    .await;
    assert_eq!(s, 409, "no profile: {body}");
    assert!(
        body["error"].as_str().unwrap().contains("has no profile"),
        "{body}"
    );
}

both_backends!(
    a_node_gets_its_profile_rendered_with_attributes_by_precedence,
    a_broken_template_refuses_the_cluster_create_and_leaves_nothing,
    a_user_cannot_edit_another_users_cluster_attributes_or_global_roles,
    bad_roles_attributes_and_groups_are_refused_naming_the_field,
);

/// Runs the `vcluster` binary as `token` against the test controller.
fn cli(w: &World, token: &str, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vcluster"))
        .args(args)
        .env("VCLUSTER_API", &w.ctl.url)
        .env("VCLUSTER_TOKEN", token)
        .env("VCLUSTER_CA_FINGERPRINT", common::test_trust_fingerprint())
        .env("VCLUSTER_CONFIG", "/dev/null")
        .output()
        .expect("run vcluster");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_defines_roles_from_files_and_renders_what_a_node_gets() {
    let b = Backend::sqlite().await;
    let w = world(&b).await;
    let admin = common::ADMIN_TOKEN;
    let dir = tempfile::tempdir().unwrap();
    let role = dir.path().join("web.toml");
    std::fs::write(
        &role,
        "name = \"web\"\npackages = [\"nginx\"]\npost = \"systemctl enable nginx # {{ node.name }}\\n\"\n\
         [[files]]\npath = \"/etc/motd\"\nmode = 0o600\ncontent = \"welcome to {{ node.name }}, port {{ http_port }}\\n\"\n",
    )
    .unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "name: web\npackage: [nginx]\n").unwrap();
    let (ok, _, err) = cli(
        &w,
        admin,
        &["role", "create", "--file", bad.to_str().unwrap()],
    );
    assert!(!ok);
    assert!(
        err.contains("bad.yaml") && err.contains("unknown field `package`"),
        "{err}"
    );

    let (ok, _, err) = cli(
        &w,
        admin,
        &["role", "create", "--file", role.to_str().unwrap()],
    );
    assert!(ok, "{err}");
    let (ok, _, err) = cli(
        &w,
        admin,
        &["profile", "create", "webfarm", "--roles", "web"],
    );
    assert!(ok, "{err}");
    let (ok, _, err) = cli(&w, admin, &["attr", "set", "global", "http_port", "80"]);
    assert!(ok, "{err}");
    let (ok, out, err) = cli(&w, admin, &["role", "list", "--json"]);
    assert!(ok, "{err}");
    let roles: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(roles[0]["files"][0]["mode"], 0o600);

    let (ok, out, err) = cli(
        &w,
        &w.alice_token,
        &[
            "cluster",
            "create",
            "web",
            "--nodes",
            "2",
            "--profile",
            "webfarm",
        ],
    );
    assert!(ok, "{out} {err}");
    let (ok, _, err) = cli(
        &w,
        &w.alice_token,
        &["attr", "set", "node:web-node-2", "http_port", "8080"],
    );
    assert!(ok, "{err}");
    let (ok, out, err) = cli(
        &w,
        &w.alice_token,
        &[
            "group",
            "create",
            "web",
            "front",
            "--nodes",
            "web-node-[1-2]",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("web-node-1,web-node-2"), "{out}");
    let (ok, out, err) = cli(&w, &w.alice_token, &["group", "list", "web", "--json"]);
    assert!(ok, "{err}");
    let groups: Vec<Group> = serde_json::from_str(&out).unwrap();
    assert_eq!(groups[0].nodes, ["web-node-1", "web-node-2"]);

    let (ok, out, err) = cli(
        &w,
        &w.alice_token,
        &["profile", "render", "web-node-2", "--json"],
    );
    assert!(ok, "{err}");
    let p: RenderedProfile = serde_json::from_str(&out).unwrap();
    assert_eq!(p.files[0].content, "welcome to web-node-2, port 8080\n");
    let (ok, out, err) = cli(&w, &w.alice_token, &["profile", "render", "web-node-1"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("--- file /etc/motd (mode 0600, role web)\nwelcome to web-node-1, port 80\n"),
        "{out}"
    );
    assert!(out.contains("packages: nginx"), "{out}");
    assert!(out.contains("systemctl enable nginx # web-node-1"), "{out}");

    // A render error is the server's message, and a non-zero exit.
    let (ok, _, err) = cli(&w, admin, &["attr", "unset", "global", "http_port"]);
    assert!(ok, "{err}");
    let (ok, _, err) = cli(&w, &w.alice_token, &["profile", "render", "web-node-1"]);
    assert!(!ok);
    assert!(
        err.contains("role web, file /etc/motd, line 1: undefined attribute `http_port`"),
        "{err}"
    );
    let (ok, _, err) = cli(&w, admin, &["attr", "set", "rack:1", "k", "v"]);
    assert!(!ok);
    assert!(err.contains("group:CLUSTER/NAME"), "{err}");
}
