//! The controller's client for host agents: pushes one cluster's share of a host
//! (`PUT /agent/v1/networks/{id}`) or removes it (`DELETE`), authenticated with the secret
//! the agent gave at registration. It carries requests; it decides nothing.

use std::time::Duration;

use crate::model::{ApiErrorBody, AppliedCluster, ClusterOnHost};

use super::store::HostRow;

#[derive(Clone)]
pub struct AgentClient {
    http: reqwest::Client,
}

impl AgentClient {
    pub fn new(timeout: Duration) -> AgentClient {
        AgentClient {
            http: reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(Duration::from_secs(5))
                .build()
                .expect("reqwest client"),
        }
    }

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
        let resp = self
            .http
            .put(&url)
            .bearer_auth(&host.agent_secret)
            .json(share)
            .send()
            .await
            .map_err(|e| {
                format!(
                    "host {}: agent at {} unreachable: {e}",
                    host.name, host.agent_url
                )
            })?;
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
            .http
            .delete(&url)
            .bearer_auth(&host.agent_secret)
            .send()
            .await
            .map_err(|e| {
                format!(
                    "host {}: agent at {} unreachable: {e}",
                    host.name, host.agent_url
                )
            })?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("host {}: {}", host.name, error_text(resp).await))
        }
    }
}

async fn error_text(resp: reqwest::Response) -> String {
    let status = resp.status();
    match resp.json::<ApiErrorBody>().await {
        Ok(body) => body.error,
        Err(_) => format!("agent answered {status}"),
    }
}
