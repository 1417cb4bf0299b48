//! TLS and secrets on the controller's and the agents' APIs (docs/security.md): clients
//! that do not pin the controller are refused, the agent's API takes requests from the
//! controller only, plain HTTP is refused off loopback, secrets never come from argv and
//! loose token files are refused naming the file.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use vcluster::cli::ApiClient;
use vcluster::controller::agent_client::AgentClient;
use vcluster::controller::store::HostRow;
use vcluster::tls::{ControllerTls, Fingerprint, ServerTrust};

use common::{Backend, TestAgent, TestController, raw};

fn vcluster(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vcluster"));
    c.args(args)
        .env_remove("VCLUSTER_TOKEN")
        .env_remove("VCLUSTER_API")
        .env("VCLUSTER_CONFIG", "/dev/null");
    c
}

fn output(c: &mut Command) -> (bool, String) {
    let out = c.output().expect("run vcluster");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Another CA, as an impostor would have.
fn other_ca() -> (tempfile::TempDir, ControllerTls) {
    let dir = tempfile::tempdir().unwrap();
    let tls = ControllerTls::load_or_create(&dir.path().join("tls"), &[]).unwrap();
    (dir, tls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_the_pinned_ca_or_with_a_wrong_fingerprint_is_refused() {
    let b = Backend::sqlite().await;
    let ctl = TestController::start(&b).await;
    assert!(ctl.url.starts_with("https://"), "{}", ctl.url);
    // The right pin, by fingerprint (what the helpers use) and by CA file.
    let me: serde_json::Value = ctl.admin.get("/v1/whoami").await.unwrap();
    assert_eq!(me["name"], "admin");
    let (dir, other) = other_ca();
    let own_ca = dir.path().join("own-ca.pem");
    // The test CA's directory is gone; write its certificate (the chain's last) again.
    let ca_der = common::test_tls().identity.chain.last().unwrap().clone();
    std::fs::write(
        &own_ca,
        format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            pem_base64(&ca_der)
        ),
    )
    .unwrap();
    let by_file = ServerTrust::ca_file(&own_ca).unwrap();
    let c = ApiClient::connect(&ctl.url, common::ADMIN_TOKEN, Some(&by_file), false).unwrap();
    let _: serde_json::Value = c.get("/v1/whoami").await.expect("pinned by CA file");

    // Another CA, by file or by fingerprint: refused, and the token never sent.
    let other_file = other.ca.as_ref().unwrap().0.clone();
    let other_fp = other.ca.as_ref().unwrap().1;
    for trust in [
        ServerTrust::ca_file(&other_file).unwrap(),
        ServerTrust::Fingerprint(other_fp),
    ] {
        let c = ApiClient::connect(&ctl.url, common::ADMIN_TOKEN, Some(&trust), false).unwrap();
        let e = c
            .get::<serde_json::Value>("/v1/whoami")
            .await
            .expect_err("an unpinned controller is refused")
            .to_string();
        assert!(e.contains("certificate"), "{e}");
    }
    let e = ApiClient::connect(&ctl.url, common::ADMIN_TOKEN, None, false)
        .err()
        .expect("https without a pin is refused")
        .to_string();
    assert!(e.contains("--ca") && e.contains("--ca-fingerprint"), "{e}");

    // The CLI the same way: the wrong fingerprint fails, the right one works.
    let right = common::test_trust_fingerprint();
    let wrong = other_fp.to_string();
    for (fp, ok) in [(&right, true), (&wrong, false)] {
        let (success, text) = output(
            vcluster(&["users", "whoami"])
                .env("VCLUSTER_API", &ctl.url)
                .env("VCLUSTER_CA_FINGERPRINT", fp)
                .env("VCLUSTER_TOKEN", common::ADMIN_TOKEN),
        );
        assert_eq!(success, ok, "{text}");
        if !ok {
            assert!(text.contains("pinned SHA-256 fingerprint"), "{text}");
        }
    }
}

/// Base64 of DER for a PEM block, 64 characters a line.
fn pem_base64(der: &[u8]) -> String {
    use base64::Engine;
    let b = base64::engine::general_purpose::STANDARD.encode(der);
    b.as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pinned_ca_still_checks_the_servers_name() {
    let b = Backend::sqlite().await;
    let mut config = common::test_config(&b.url);
    config.listen = "0.0.0.0:0".parse().unwrap();
    let ctl = TestController::start_with(config).await;
    let port = ctl.running.as_ref().unwrap().addr.port();
    // 127.0.0.2 reaches the same socket, but the certificate does not name it.
    let url = format!("https://127.0.0.2:{port}");
    let c = ApiClient::connect(
        &url,
        common::ADMIN_TOKEN,
        Some(&common::test_trust()),
        false,
    )
    .unwrap();
    let e = c
        .get::<serde_json::Value>("/v1/whoami")
        .await
        .expect_err("a name the certificate lacks is refused")
        .to_string();
    assert!(e.contains("certificate"), "{e}");
    let _: serde_json::Value = ctl
        .admin
        .get("/v1/whoami")
        .await
        .expect("127.0.0.1 is named");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_api_answers_the_controller_only() {
    let b = Backend::sqlite().await;
    let ctl = TestController::start(&b).await;
    ctl.site("east").await;
    let token = ctl.user("agent-east", "agent").await;
    let agent = TestAgent::start(&ctl, &token, "east-h1", "east", 4).await;
    let url = agent.url();
    assert!(url.starts_with("https://"));
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(agent.config.state_dir.join("agent.json")).unwrap(),
    )
    .unwrap();
    let secret = state["agent_secret"].as_str().unwrap().to_string();
    let key_mode = std::fs::metadata(agent.config.state_dir.join("agent.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);

    // Pinned to the agent's certificate: the right secret is let in, a wrong one is not.
    let pinned = agent.http();
    let (s, _) = common::raw_with(
        &pinned,
        Method::GET,
        &format!("{url}/agent/v1/state"),
        Some(&secret),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let (s, body) = common::raw_with(
        &pinned,
        Method::GET,
        &format!("{url}/agent/v1/state"),
        Some("vc_a_guess_0123456789"),
        None,
    )
    .await;
    assert_eq!(s, 401, "{body}");
    // Plain HTTP to the agent's port gets no answer from the API.
    let plain = reqwest::Client::new()
        .get(format!(
            "{}/agent/v1/state",
            url.replace("https://", "http://")
        ))
        .bearer_auth(&secret)
        .send()
        .await;
    assert!(
        plain.is_err() || plain.as_ref().unwrap().status().as_u16() != 200,
        "{plain:?}"
    );

    // The controller's client sends the secret only to the certificate it pinned: with
    // another pin (an impostor at the agent's address) the call fails before any request.
    let host = |pin: Fingerprint| HostRow {
        id: 1,
        name: "east-h1".into(),
        site_id: 1,
        site_name: "east".into(),
        agent_user_id: 1,
        cpus: 4,
        memory_mib: 4096,
        agent_url: url.clone(),
        agent_secret: secret.clone(),
        agent_cert_sha256: Some(pin.to_string()),
        overlay_endpoint: "127.0.0.1:1".into(),
        public_key: String::new(),
        driver: "mem".into(),
        enabled: 1,
        registered_at: 0,
        last_seen: None,
    };
    let client = AgentClient::new(Duration::from_secs(5));
    let (_dir, other) = other_ca();
    let e = client
        .remove(&host(other.identity.leaf_fingerprint()), 4242, 1)
        .await
        .expect_err("a pin mismatch is refused");
    assert!(e.contains("pinned SHA-256 fingerprint"), "{e}");
    client
        .remove(&host(agent.fingerprint()), 4242, 1)
        .await
        .expect("the right pin reaches the agent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_needs_the_agents_fingerprint_and_refuses_plain_http_off_loopback() {
    let b = Backend::sqlite().await;
    let ctl = TestController::start(&b).await;
    ctl.site("east").await;
    let token = ctl.user("agent-east", "agent").await;
    let register = async |url: &str, fp: Option<&str>| {
        let body = json!({
            "name": "east-h9", "site": "east", "cpus": 2, "memory_mib": 1024,
            "agent_url": url, "agent_secret": "0123456789abcdef0123",
            "agent_cert_sha256": fp,
            "overlay_endpoint": "10.0.0.9:51820",
            "public_key": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "driver": "netns",
        });
        raw(
            Method::POST,
            &format!("{}/v1/hosts/register", ctl.url),
            Some(&token),
            Some(&body.to_string()),
        )
        .await
    };
    let (s, body) = register("https://10.0.0.9:7300", None).await;
    assert_eq!(s, 422, "{body}");
    assert_eq!(body["field"], "agent_cert_sha256");
    let (s, body) = register("http://10.0.0.9:7300", None).await;
    assert_eq!(s, 422, "{body}");
    assert_eq!(body["field"], "agent_url");
    assert!(
        body["error"].as_str().unwrap().contains("plain HTTP"),
        "{body}"
    );
    let (s, body) = register("https://10.0.0.9:7300", Some("not-hex")).await;
    assert_eq!(s, 422, "{body}");
    let fp = Fingerprint::of(b"x").to_string();
    let (s, body) = register("https://10.0.0.9:7300", Some(&fp)).await;
    assert_eq!(s, 200, "{body}");
}

#[test]
fn plain_http_off_loopback_is_refused_with_a_clear_error() {
    let (ok, text) = output(
        vcluster(&["sites", "list", "--api", "http://10.9.8.7:7200"])
            .env("VCLUSTER_TOKEN", "vc_whatever_0123456789"),
    );
    assert!(!ok);
    assert!(
        text.contains("plain HTTP") && text.contains("not loopback") && text.contains("--insecure"),
        "{text}"
    );
    let dir = tempfile::tempdir().unwrap();
    let (ok, text) = output(
        vcluster(&[
            "host-agent",
            "--controller",
            "http://10.9.8.7:7200",
            "--name",
            "h",
            "--site",
            "s",
            "--overlay-endpoint",
            "10.9.8.6:51820",
            "--vpnd-socket",
            "/nonexistent/vpnd.sock",
            "--driver",
            "none",
            "--state-dir",
        ])
        .arg(dir.path())
        .env("VCLUSTER_AGENT_TOKEN", "vc_whatever_0123456789"),
    );
    assert!(!ok);
    // The driver check comes first where the agent cannot run; either way no request.
    assert!(
        text.contains("not loopback") || text.contains("unknown driver"),
        "{text}"
    );
}

#[test]
fn token_files_with_loose_modes_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("user.token");
    std::fs::write(&file, "vc_some_token_0123456789\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, text) = output(
        vcluster(&[
            "sites",
            "list",
            "--api",
            "http://127.0.0.1:1",
            "--token-file",
        ])
        .arg(&file),
    );
    assert!(!ok);
    assert!(
        text.contains(&file.display().to_string()) && text.contains("0644"),
        "{text}"
    );
    let (ok, text) = output(
        vcluster(&[
            "host-agent",
            "--controller",
            "https://127.0.0.1:1",
            "--name",
            "h",
            "--site",
            "s",
            "--overlay-endpoint",
            "127.0.0.1:51820",
            "--token-file",
        ])
        .arg(&file),
    );
    assert!(!ok);
    assert!(text.contains(&file.display().to_string()), "{text}");
    // The flags that took secrets are gone.
    let (ok, text) = output(&mut vcluster(&["sites", "list", "--token", "x"]));
    assert!(!ok && text.contains("--token"), "{text}");
    let (ok, text) = output(&mut vcluster(&["serve", "--admin-token", "x"]));
    assert!(!ok && text.contains("--admin-token"), "{text}");
}

#[test]
fn the_cli_takes_a_context_from_its_config_file_and_refuses_unknown_keys() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let b = rt.block_on(Backend::sqlite());
    let ctl = rt.block_on(TestController::start(&b));
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("admin.token");
    std::fs::write(&token, format!("{}\n", common::ADMIN_TOKEN)).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "current_context = \"lab\"\n\n[contexts.lab]\napi = \"{}\"\nca_fingerprint = \"{}\"\ntoken_file = \"admin.token\"\n",
            ctl.url,
            common::test_trust_fingerprint()
        ),
    )
    .unwrap();
    let run = |extra: &[&str]| {
        let mut c = vcluster(extra);
        c.env("VCLUSTER_CONFIG", &config);
        output(&mut c)
    };
    let (ok, text) = run(&["users", "whoami"]);
    assert!(ok, "{text}");
    assert!(text.contains("admin"), "{text}");
    let (ok, text) = run(&["users", "whoami", "--context", "prod"]);
    assert!(!ok);
    assert!(text.contains("prod") && text.contains("lab"), "{text}");

    std::fs::write(
        &config,
        "[contexts.lab]\napi = \"https://x:7200\"\ntoken = \"secret\"\n",
    )
    .unwrap();
    let (ok, text) = run(&["users", "whoami"]);
    assert!(!ok);
    assert!(
        text.contains(&config.display().to_string())
            && text.contains("line 3")
            && text.contains("token"),
        "{text}"
    );
    drop(ctl);
}
