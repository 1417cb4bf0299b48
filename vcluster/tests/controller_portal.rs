//! The reservation portal in a real browser (Debian's chromium driven through
//! chromium-driver by WebDriver): sign in, see the sites and their charts, submit a valid
//! reservation, an invalid one and a refused one, and check what the page says. Keeps
//! screenshots in `target/test-artifacts/`.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chrono::Utc;
use fantoccini::{ClientBuilder, Locator};
use serde_json::json;
use vcluster::model::{Accepted, Reservation};

use common::{TestAgent, TestController, expect_success};

const CHROMIUM: &str = "/usr/bin/chromium";
const DRIVER: &str = "/usr/bin/chromedriver";
/// JS: `f(date)` formats a date for a datetime-local input, as a person would type it.
const LOCAL: &str = "const f = (d) => new Date(d.getTime() - d.getTimezoneOffset() * 60000).toISOString().slice(0, 16);";

/// chromedriver, killed on drop.
struct Driver {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn artifacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// chromedriver's browser console log (`goog:loggingPrefs` must ask for it): each call
/// returns the entries logged since the last one.
#[derive(Debug)]
struct BrowserLog;

impl fantoccini::wd::WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }
    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.into()))
    }
}

async fn start_driver() -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(DRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let driver = Driver {
        child,
        port,
        _profile: tempfile::tempdir().unwrap(),
    };
    common::eventually("chromedriver listens", Duration::from_secs(20), || async {
        reqwest::get(format!("http://127.0.0.1:{port}/status"))
            .await
            .is_ok()
    })
    .await;
    driver
}

async fn seed_history(store_url: &str) {
    // A day of past samples, so the chart shows history as it would after a day of running.
    use sqlx::Connection;
    let mut c = sqlx::SqliteConnection::connect(store_url).await.unwrap();
    let now = Utc::now().timestamp_millis();
    let sites: Vec<(i64, String)> = sqlx::query_as("SELECT id, name FROM sites")
        .fetch_all(&mut c)
        .await
        .unwrap();
    for (id, name) in sites {
        let cap: i64 = if name == "amsterdam" { 64 } else { 16 };
        for h in (1..=24).rev() {
            let used = (((24 - h) as f64 / 3.0).sin().abs() * cap as f64 * 0.45) as i64 + 2;
            let reserved = if (6..14).contains(&h) { cap / 4 } else { 0 };
            sqlx::query("INSERT INTO usage_samples (site_id, at, capacity_cpus, capacity_memory_mib, used_cpus, used_memory_mib, reserved_cpus, reserved_memory_mib) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
                .bind(id)
                .bind(now - h * 3_600_000)
                .bind(cap)
                .bind(cap * 256)
                .bind(used)
                .bind(used * 512)
                .bind(reserved)
                .bind(reserved * 512)
                .execute(&mut c)
                .await
                .unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_signs_in_sees_the_sites_and_reserves_through_the_portal() {
    let name = "a_user_signs_in_sees_the_sites_and_reserves_through_the_portal";
    if !std::path::Path::new(CHROMIUM).exists() || !std::path::Path::new(DRIVER).exists() {
        if std::env::var_os("CI").is_some() {
            panic!("{name}: CI installs chromium and chromium-driver");
        }
        eprintln!(
            "SKIP {name}: needs chromium and chromium-driver (apt-get install chromium chromium-driver)"
        );
        return;
    }

    // A controller with two sites, hosts, a cluster and some reservations.
    let backend = common::Backend::sqlite().await;
    // Plain HTTP on loopback (allowed there): the browser need not trust the test CA.
    let mut config = common::test_config(&backend.url);
    config.tls = None;
    let ctl = TestController::start_with(config).await;
    let mut agents = Vec::new();
    let mut agent_tokens = std::collections::HashMap::new();
    for (site, hosts, cpus) in [("amsterdam", 2, 8), ("lisbon", 1, 4)] {
        ctl.site(site).await;
        for h in 0..hosts {
            let host = format!("{site}-{h}");
            let token = ctl.user(&format!("agent-{host}"), "agent").await;
            agents.push(TestAgent::start(&ctl, &token, &host, site, cpus).await);
            agent_tokens.insert(host, token);
        }
    }
    let token = ctl.user("ada", "user").await;
    let user = ctl.client(&token);
    let a: Accepted = user
        .post(
            "/v1/clusters",
            &json!({"name": "genomics", "nodes": 6, "node_memory_mib": 256}),
        )
        .await
        .unwrap();
    expect_success(&user, &a).await;
    // Each host reports its nodes' agents as a host agent's heartbeat does (the in-memory
    // driver runs none): figures for the nodes table.
    let genomics: vcluster::model::Cluster = user.get("/v1/clusters/genomics").await.unwrap();
    for (host, token) in &agent_tokens {
        let reports: Vec<serde_json::Value> = genomics
            .nodes
            .iter()
            .filter(|n| &n.host == host)
            .map(|n| json!({"name": n.name, "status": {
                "name": n.name, "uptime_secs": 100.0, "agent_uptime_secs": 90, "load": [0.42, 0.3, 0.2],
                "memory_total_bytes": 2u64 << 30, "memory_available_bytes": 1u64 << 30,
                "cpu": {"user": 1.0, "nice": 0.0, "system": 1.0, "idle": 9.0, "iowait": 0.0, "irq": 0.0, "softirq": 0.0, "steal": 0.0},
                "cpus": 2, "network": [], "filesystem": {"size_bytes": 10, "available_bytes": 5}}}))
            .collect();
        let agent = ctl.client(token);
        agent
            .post_stream(
                &format!("/v1/hosts/{host}/heartbeat"),
                &json!({"node_agents": reports}),
                std::time::Duration::from_secs(10),
            )
            .await
            .expect("a heartbeat with node reports");
    }
    let soon = Utc::now() + chrono::Duration::hours(20);
    let _: Reservation = user
        .post("/v1/reservations", &json!({"site": "amsterdam", "nodes": 24, "node_memory_mib": 64, "start": soon, "end": soon + chrono::Duration::hours(30), "note": "training run"}))
        .await
        .unwrap();
    seed_history(&backend.url).await;

    let driver = start_driver().await;
    let caps: serde_json::Map<String, serde_json::Value> = serde_json::from_value(json!({
        "browserName": "chrome",
        "goog:loggingPrefs": {"browser": "ALL"},
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                "--disable-dev-shm-usage", "--window-size=1280,1100",
                format!("--user-data-dir={}", driver._profile.path().display())
            ]
        }
    }))
    .unwrap();
    let browser = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a browser session");

    let result = async {
        browser.goto(&ctl.url).await?;
        // The page loads without a console error, and names an icon that loads (headless
        // Chromium does not ask for icons, so the link is fetched here; a browser with a
        // window logs a missing one as an error).
        browser.wait().for_element(Locator::Id("token")).await?;
        let icon = browser
            .execute_async(
                "const done = arguments[0]; const l = document.querySelector('link[rel=icon]'); \
                 if (!l) { done('no icon link'); return; } \
                 fetch(l.href).then(r => done(r.status + ' ' + r.headers.get('content-type')), e => done(String(e)));",
                vec![],
            )
            .await?;
        assert_eq!(icon, json!("200 image/svg+xml"), "the page's icon");
        let log = browser.issue_cmd(BrowserLog).await?;
        let severe: Vec<&serde_json::Value> = log
            .as_array()
            .map(|a| a.iter().filter(|e| e["level"] == "SEVERE").collect())
            .unwrap_or_default();
        assert!(log.is_array(), "chromedriver returns the console log: {log}");
        assert!(severe.is_empty(), "console errors on load: {severe:?}");
        let ico = reqwest::get(format!("{}/favicon.ico", ctl.url)).await.unwrap();
        assert_eq!(ico.status().as_u16(), 200, "/favicon.ico answers");
        // A wrong token is refused with a clear message.
        browser.find(Locator::Id("token")).await?.send_keys("vc_wrong").await?;
        browser.find(Locator::Id("sign-in")).await?.click().await?;
        let err = browser.wait().for_element(Locator::Css("#login-error:not(:empty)")).await?;
        assert_eq!(err.text().await?, "That token is not valid.");

        let field = browser.find(Locator::Id("token")).await?;
        field.clear().await?;
        field.send_keys(&token).await?;
        browser.find(Locator::Id("sign-in")).await?.click().await?;
        browser.wait().for_element(Locator::Css("article[data-site='amsterdam'] svg.chart path.inuse")).await?;
        let who = browser.find(Locator::Id("who-name")).await?.text().await?;
        assert_eq!(who, "ada · user");
        let cards = browser.find_all(Locator::Css("article.site")).await?;
        assert_eq!(cards.len(), 2, "both sites are shown");
        let ams = browser.find(Locator::Css("article[data-site='amsterdam']")).await?.text().await?;
        assert!(ams.contains("2/2 hosts online"), "{ams}");
        assert!(ams.contains("64") && ams.contains("CPUS CAPACITY"), "{ams}");
        let clusters = browser.find(Locator::Id("clusters")).await?.text().await?;
        assert!(clusters.contains("genomics") && clusters.contains("6/6 running"), "{clusters}");
        // Every node by site, with its health, its figures and a line of its last hour.
        let rows = browser.find_all(Locator::Css("#nodes tbody tr")).await?;
        assert_eq!(rows.len(), 6);
        let first = browser.find(Locator::Css("#nodes tbody tr")).await?.text().await?;
        assert!(first.contains("genomics-node-") && first.contains("0.42") && first.contains("1024 / 2048 MiB"), "{first}");
        let install = browser.find(Locator::Css("#nodes tbody tr td.install")).await?.text().await?;
        assert_eq!(install, "–", "a cluster without a profile has no install");
        let health = browser.find(Locator::Css("#nodes tbody tr td.health span.state")).await?.text().await?;
        assert!(["up", "down"].contains(&health.as_str()), "{health}");
        browser.find(Locator::Css("#nodes tbody tr svg.spark polyline")).await?;

        // A valid reservation is accepted and listed.
        browser.execute("document.getElementById('r-site').value = 'lisbon'", vec![]).await?;
        let nodes = browser.find(Locator::Id("r-nodes")).await?;
        nodes.clear().await?;
        nodes.send_keys("3").await?;
        browser.find(Locator::Id("r-note")).await?.send_keys("nightly build farm").await?;
        browser.find(Locator::Id("r-submit")).await?.click().await?;
        let ok = browser.wait().for_element(Locator::Css("#reserve-result.ok")).await?;
        let ok = ok.text().await?;
        assert!(ok.contains("accepted") && ok.contains("3 nodes at lisbon"), "{ok}");
        browser.wait().for_element(Locator::Css("#reservations tr.fresh")).await?;
        let rows = browser.find(Locator::Id("reservations")).await?.text().await?;
        assert!(rows.contains("lisbon") && rows.contains("3 nodes"), "{rows}");
        let shot = browser.screenshot().await?;
        std::fs::write(artifacts().join("portal.png"), &shot).unwrap();

        // An invalid one: the end before the start. The controller's message shows at the field.
        browser
            .execute(
                &format!("{LOCAL} const s = new Date(document.getElementById('r-start').value); document.getElementById('r-end').value = f(new Date(s.getTime() - 7200000));"),
                vec![],
            )
            .await?;
        browser.find(Locator::Id("r-submit")).await?.click().await?;
        let msg = browser.wait().for_element(Locator::Css(".error[data-for='end']:not(:empty)")).await?;
        assert_eq!(msg.text().await?, "end must be after start");
        let bad = browser.find(Locator::Css("#reserve-result.bad")).await?.text().await?;
        assert!(bad.contains("highlighted field"), "{bad}");
        std::fs::write(artifacts().join("portal-invalid.png"), browser.screenshot().await?).unwrap();

        // One that asks for more than there is is refused with the reason.
        browser
            .execute(
                &format!("{LOCAL} document.getElementById('r-start').value = f(new Date(Date.now() + 600000)); document.getElementById('r-end').value = f(new Date(Date.now() + 7200000));"),
                vec![],
            )
            .await?;
        let nodes = browser.find(Locator::Id("r-nodes")).await?;
        nodes.clear().await?;
        nodes.send_keys("500").await?;
        browser.find(Locator::Id("r-submit")).await?.click().await?;
        let refused = browser.wait().for_element(Locator::Css("#reserve-result.bad")).await?;
        let refused = refused.text().await?;
        assert!(refused.contains("Not accepted") && refused.contains("not enough capacity"), "{refused}");
        Ok::<(), fantoccini::error::CmdError>(())
    }
    .await;
    if result.is_err()
        && let Ok(shot) = browser.screenshot().await
    {
        let _ = std::fs::write(artifacts().join("portal-failure.png"), shot);
    }
    let _ = browser.close().await;
    result.expect("the portal behaves");

    let mine: Vec<Reservation> = user.get("/v1/reservations").await.unwrap();
    assert_eq!(
        mine.len(),
        2,
        "the portal's reservation is in the store, the invalid ones are not"
    );
    assert!(
        mine.iter()
            .any(|r| r.site == "lisbon" && r.nodes == Some(3) && r.note == "nightly build farm")
    );
    drop(agents);
}
