//! Every `vcluster` listing prints, with `--json`, JSON a script can parse: the CLI
//! binary against a real controller on loopback (SQLite) with one agent-run host and
//! one cluster, so no listing is empty.

mod common;

use std::process::Command;

use serde_json::{Value, json};
use vcluster::model::Accepted;

use common::{ADMIN_TOKEN, Backend, TestAgent, TestController, expect_success};

/// Runs `vcluster ARGS --json` as the admin and parses what it printed.
fn listing(ctl: &TestController, args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_vcluster"))
        .args(args)
        .arg("--json")
        .env("VCLUSTER_API", &ctl.url)
        .env("VCLUSTER_TOKEN", ADMIN_TOKEN)
        .env("VCLUSTER_CA_FINGERPRINT", common::test_trust_fingerprint())
        .env("VCLUSTER_CONFIG", "/dev/null")
        .output()
        .expect("run vcluster");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "vcluster {args:?} --json failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("vcluster {args:?} --json printed no JSON ({e}): {stdout}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_listing_prints_json_a_script_can_parse() {
    let backend = Backend::sqlite().await;
    let ctl = TestController::start(&backend).await;
    ctl.site("east").await;
    let token = ctl.user("agent-east-h0", "agent").await;
    let _agent = TestAgent::start(&ctl, &token, "east-h0", "east", 4).await;
    let accepted: Accepted = ctl
        .admin
        .post("/v1/clusters", &json!({"name": "listed", "nodes": 1}))
        .await
        .expect("cluster accepted");
    expect_success(&ctl.admin, &accepted).await;

    // (command, a field every entry has, a value one entry must have there)
    let cases: [(&[&str], &str, &str); 7] = [
        (&["sites", "list"], "name", "east"),
        (&["hosts", "list"], "name", "east-h0"),
        (&["users", "list"], "name", "agent-east-h0"),
        (&["cluster", "list"], "name", "listed"),
        (&["task", "list"], "kind", "create-cluster"),
        (&["task", "events"], "kind", ""),
        (&["reserve", "list"], "", ""),
    ];
    for (args, field, value) in cases {
        let json = listing(&ctl, args);
        let entries = json
            .as_array()
            .unwrap_or_else(|| panic!("vcluster {args:?} --json is not a list: {json}"));
        if field.is_empty() {
            continue;
        }
        assert!(!entries.is_empty(), "vcluster {args:?} --json is empty");
        assert!(
            entries.iter().all(|e| e.get(field).is_some()),
            "vcluster {args:?} --json: an entry without {field}: {json}"
        );
        if !value.is_empty() {
            assert!(
                entries.iter().any(|e| e[field] == value),
                "vcluster {args:?} --json: no entry with {field} = {value}: {json}"
            );
        }
    }
}
