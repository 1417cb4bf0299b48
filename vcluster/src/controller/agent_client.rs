//! The controller's client for host agents: pushes one cluster's share of a host
//! (`PUT /agent/v1/networks/{id}`) or removes it (`DELETE`), authenticated with the secret
//! the agent gave at registration. It carries requests; it decides nothing.
//!
//! An agent with an `https://` URL is reached only over TLS pinned to the certificate
//! fingerprint it registered with, so the secret goes to that agent and nobody else; a
//! plain-HTTP URL was accepted at registration only on loopback or for an `--insecure`
//! controller.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::model::{ApiErrorBody, AppliedCluster, ClusterOnHost};

use super::store::HostRow;
use crate::tls::{Fingerprint, ServerTrust};

/// How much longer an apply (and a task) may take for each node it makes on the host:
/// a host made 134 network-booting lightweight nodes in about 4 minutes, slowing from
/// 0.4 s to 3 s a node as the ones already made installed beside it.
pub const APPLY_PER_NODE: Duration = Duration::from_secs(3);

/// The body of a push of `share`, and whether it is gzipped. A share is pushed whole on
/// every change (an install's steps included) and its nodes differ in little but their
/// index, name, MAC and address: 134 nodes are about 23 kB of JSON and under 3 kB
/// gzipped, which is what crosses the WAN to a remote site each time. A frontend's share
/// is sent as it is: it carries the install tokens of the cluster's nodes beside names a
/// tenant chooses, and compressing secrets with attacker-chosen text inside TLS lets an
/// eavesdropper guess them from the lengths (BREACH).
pub fn push_body(share: &ClusterOnHost) -> (Vec<u8>, bool) {
    use std::io::Write;
    let json = serde_json::to_vec(share).expect("a share serializes");
    let has_secrets = share
        .services
        .as_ref()
        .is_some_and(|s| s.frontend.is_some());
    if has_secrets {
        return (json, false);
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&json).expect("gzip into memory");
    (gz.finish().expect("gzip into memory"), true)
}

#[derive(Clone)]
pub struct AgentClient {
    timeout: Duration,
    plain: reqwest::Client,
    /// One client per pinned agent certificate (a client's TLS config holds one pin).
    pinned: Arc<Mutex<HashMap<Fingerprint, reqwest::Client>>>,
}

impl AgentClient {
    pub fn new(timeout: Duration) -> AgentClient {
        AgentClient {
            timeout,
            plain: reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(Duration::from_secs(5))
                .build()
                .expect("reqwest client"),
            pinned: Arc::default(),
        }
    }

    /// The client for `host`: pinned to its certificate, or plain HTTP for an agent that
    /// registered without one.
    fn http(&self, host: &HostRow) -> Result<reqwest::Client, String> {
        let Some(pin) = &host.agent_cert_sha256 else {
            return Ok(self.plain.clone());
        };
        let pin: Fingerprint = pin
            .parse()
            .map_err(|e| format!("host {}: stored agent certificate pin: {e}", host.name))?;
        let mut pinned = self.pinned.lock().expect("agent client cache");
        if let Some(c) = pinned.get(&pin) {
            return Ok(c.clone());
        }
        let client = ServerTrust::Certificate(pin)
            .reqwest_builder()
            .map_err(|e| format!("host {}: {e}", host.name))?
            .timeout(self.timeout)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| format!("host {}: TLS client: {e}", host.name))?;
        pinned.insert(pin, client.clone());
        Ok(client)
    }

    /// Makes the host hold `share`. The agent answers once every node is made, so the
    /// wait grows with their number: [`APPLY_PER_NODE`] each on top of the client's
    /// timeout.
    pub async fn apply(
        &self,
        host: &HostRow,
        share: &ClusterOnHost,
    ) -> Result<AppliedCluster, String> {
        let url = format!(
            "{}/agent/v1/networks/{}",
            host.agent_url.trim_end_matches('/'),
            share.network.id
        );
        let nodes = u32::try_from(share.nodes.len()).unwrap_or(u32::MAX);
        let limit = self
            .timeout
            .saturating_add(APPLY_PER_NODE.saturating_mul(nodes));
        let mut req = self
            .http(host)?
            .put(&url)
            .timeout(limit)
            .bearer_auth(&host.agent_secret)
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        let (body, gzipped) = push_body(share);
        if gzipped {
            req = req.header(reqwest::header::CONTENT_ENCODING, "gzip");
        }
        let resp = req
            .body(body)
            .send()
            .await
            .map_err(|e| unreachable(host, &e))?;
        let status = resp.status();
        if status.is_success() {
            resp.json()
                .await
                .map_err(|e| format!("host {}: bad answer from agent: {e}", host.name))
        } else {
            Err(format!("host {}: {}", host.name, error_text(resp).await))
        }
    }

    pub async fn remove(&self, host: &HostRow, network: u32, revision: i64) -> Result<(), String> {
        let url = format!(
            "{}/agent/v1/networks/{network}?revision={revision}",
            host.agent_url.trim_end_matches('/')
        );
        let resp = self
            .http(host)?
            .delete(&url)
            .bearer_auth(&host.agent_secret)
            .send()
            .await
            .map_err(|e| unreachable(host, &e))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("host {}: {}", host.name, error_text(resp).await))
        }
    }

    /// Asks `host`'s agent to power `node` (fence, start, reinstall); whether it runs
    /// after. Within `limit`: a host that does not answer has not fenced anything.
    pub async fn power(
        &self,
        host: &HostRow,
        node: &str,
        action: crate::model::PowerAction,
        limit: Duration,
    ) -> Result<bool, String> {
        let url = format!(
            "{}/agent/v1/nodes/{node}/power",
            host.agent_url.trim_end_matches('/')
        );
        let resp = self
            .http(host)?
            .post(&url)
            .bearer_auth(&host.agent_secret)
            .timeout(limit)
            .json(&crate::model::PowerRequest { action })
            .send()
            .await
            .map_err(|e| unreachable(host, &e))?;
        if resp.status().is_success() {
            let state: crate::model::PowerState = resp
                .json()
                .await
                .map_err(|e| format!("host {}: bad answer from agent: {e}", host.name))?;
            Ok(state.running)
        } else {
            Err(format!("host {}: {}", host.name, error_text(resp).await))
        }
    }

    /// A piece of `node`'s console log from `offset`.
    pub async fn console(
        &self,
        host: &HostRow,
        node: &str,
        offset: u64,
    ) -> Result<crate::model::ConsoleChunk, String> {
        let url = format!(
            "{}/agent/v1/nodes/{node}/console?offset={offset}",
            host.agent_url.trim_end_matches('/')
        );
        let resp = self
            .http(host)?
            .get(&url)
            .bearer_auth(&host.agent_secret)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| unreachable(host, &e))?;
        if resp.status().is_success() {
            resp.json()
                .await
                .map_err(|e| format!("host {}: bad answer from agent: {e}", host.name))
        } else {
            Err(format!("host {}: {}", host.name, error_text(resp).await))
        }
    }

    /// Sends `req` to `host`'s agent and hands back its event stream; `Err` says why the
    /// command could not start there. The stream may last as long as the command may
    /// run, so this request's time limit is the command's, not the client's.
    pub async fn exec(
        &self,
        host: &HostRow,
        req: &crate::exec::HostExec,
    ) -> Result<reqwest::Response, String> {
        let url = format!("{}/agent/v1/exec", host.agent_url.trim_end_matches('/'));
        let limit = Duration::from_millis(
            req.command_timeout_ms
                .saturating_add(req.connect_timeout_ms)
                .saturating_mul(2)
                .saturating_add(30_000),
        );
        let resp = self
            .http(host)?
            .post(&url)
            .bearer_auth(&host.agent_secret)
            .timeout(limit)
            .json(req)
            .send()
            .await
            .map_err(|e| unreachable(host, &e))?;
        if resp.status().is_success() {
            Ok(resp)
        } else {
            Err(format!("host {}: {}", host.name, error_text(resp).await))
        }
    }
}

/// Why a request never got an answer from `host`'s agent.
fn unreachable(host: &HostRow, e: &reqwest::Error) -> String {
    format!(
        "host {}: agent at {} unreachable: {}",
        host.name,
        host.agent_url,
        crate::tls::error_chain(e)
    )
}

async fn error_text(resp: reqwest::Response) -> String {
    let status = resp.status();
    match resp.json::<ApiErrorBody>().await {
        Ok(body) => body.error,
        Err(_) => format!("agent answered {status}"),
    }
}
