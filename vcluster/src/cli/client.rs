//! A thin typed client for the controller's REST API, used by the CLI (and by tests that
//! want to drive the API as a user would). Errors carry the server's message.

use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::model::{ApiErrorBody, Task};

#[derive(Clone)]
pub struct ApiClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

/// The server said no: its status and message.
#[derive(Debug, thiserror::Error)]
#[error("{message} (HTTP {status})")]
pub struct ServerError {
    pub status: u16,
    pub message: String,
    pub field: Option<String>,
}

impl ApiClient {
    pub fn new(base: &str, token: &str) -> ApiClient {
        ApiClient {
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("reqwest client"),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn decode<T: DeserializeOwned>(&self, resp: reqwest::Response) -> anyhow::Result<T> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp.json().await?);
        }
        let text = resp.text().await.unwrap_or_default();
        let (message, field) = match serde_json::from_str::<ApiErrorBody>(&text) {
            Ok(b) => (b.error, b.field),
            Err(_) => (text, None),
        };
        Err(ServerError {
            status: status.as_u16(),
            message,
            field,
        }
        .into())
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let resp = self
            .http
            .get(self.url(path))
            .bearer_auth(&self.token)
            .send()
            .await?;
        self.decode(resp).await
    }

    pub async fn get_query<T: DeserializeOwned>(
        &self,
        path: &str,
        q: &[(&str, String)],
    ) -> anyhow::Result<T> {
        let resp = self
            .http
            .get(self.url(path))
            .query(q)
            .bearer_auth(&self.token)
            .send()
            .await?;
        self.decode(resp).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let resp = self
            .http
            .post(self.url(path))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await?;
        self.decode(resp).await
    }

    pub async fn patch<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let resp = self
            .http
            .patch(self.url(path))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await?;
        self.decode(resp).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let resp = self
            .http
            .delete(self.url(path))
            .bearer_auth(&self.token)
            .send()
            .await?;
        self.decode(resp).await
    }

    pub async fn delete_empty(&self, path: &str) -> anyhow::Result<()> {
        let resp = self
            .http
            .delete(self.url(path))
            .bearer_auth(&self.token)
            .send()
            .await?;
        if resp.status().is_success() {
            return Ok(());
        }
        self.decode::<serde_json::Value>(resp).await.map(|_| ())
    }

    /// Polls the task until it ends or `timeout` passes.
    pub async fn wait_task(&self, id: i64, timeout: Duration) -> anyhow::Result<Task> {
        let start = Instant::now();
        let mut delay = Duration::from_millis(50);
        loop {
            let task: Task = self.get(&format!("/v1/tasks/{id}")).await?;
            if task.state.is_finished() {
                return Ok(task);
            }
            if start.elapsed() > timeout {
                anyhow::bail!("task {id} still running after {}s", timeout.as_secs());
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(500));
        }
    }
}
