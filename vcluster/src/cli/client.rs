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

/// Why a call to the controller did not give its answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The controller could not be reached, or its answer not read.
    /// (`error`'s causes are in the message, a TLS refusal among them, so it is not a
    /// `source` for anyhow to print twice.)
    #[error("the controller at {url}: {}", crate::tls::error_chain(.error))]
    Http { url: String, error: reqwest::Error },
    #[error("task {id} still running after {secs}s")]
    TaskTimeout { id: i64, secs: u64 },
}

type Result<T> = std::result::Result<T, ClientError>;

/// Why a client for the controller could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Plain HTTP off loopback without `--insecure`, or not a URL.
    #[error("{0}")]
    Url(String),
    #[error(
        "{url} is https but the controller is not pinned: pass --ca FILE or --ca-fingerprint \
         SHA256 (printed by `vcluster serve` on its first start), or set them in the context"
    )]
    Unpinned { url: String },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("the HTTP client: {0}")]
    Build(reqwest::Error),
}

impl ApiClient {
    /// A client for a plain-HTTP controller (tests on loopback).
    pub fn new(base: &str, token: &str) -> ApiClient {
        Self::with_http(
            base,
            token,
            reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("reqwest client"),
        )
    }

    /// A client for the controller at `base`: `https://` pinned by `trust`, `http://`
    /// only to loopback or when `insecure`.
    pub fn connect(
        base: &str,
        token: &str,
        trust: Option<&crate::tls::ServerTrust>,
        insecure: bool,
    ) -> std::result::Result<ApiClient, ConnectError> {
        let url = crate::tls::check_url("the controller URL", base, insecure)
            .map_err(ConnectError::Url)?;
        let builder = if url.scheme() == "https" {
            let trust = trust.ok_or_else(|| ConnectError::Unpinned {
                url: base.to_string(),
            })?;
            trust.reqwest_builder()?
        } else {
            reqwest::Client::builder()
        };
        let http = builder
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(ConnectError::Build)?;
        Ok(Self::with_http(base, token, http))
    }

    fn with_http(base: &str, token: &str, http: reqwest::Client) -> ApiClient {
        ApiClient {
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            http,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn http(&self, path: &str) -> impl FnOnce(reqwest::Error) -> ClientError {
        let url = self.url(path);
        move |error| ClientError::Http { url, error }
    }

    /// Sends the request for `path` with the token and decodes the answer or the error.
    async fn call<T: DeserializeOwned>(
        &self,
        path: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<T> {
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(self.http(path))?;
        self.decode(path, resp).await
    }

    async fn decode<T: DeserializeOwned>(&self, path: &str, resp: reqwest::Response) -> Result<T> {
        let status = resp.status();
        if status.is_success() {
            return resp.json().await.map_err(self.http(path));
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

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(path, self.http.get(self.url(path))).await
    }

    pub async fn get_query<T: DeserializeOwned>(
        &self,
        path: &str,
        q: &[(&str, String)],
    ) -> Result<T> {
        self.call(path, self.http.get(self.url(path)).query(q))
            .await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.call(path, self.http.post(self.url(path)).json(body))
            .await
    }

    /// Posts `body` and hands back a successful answer whose body is still to be read
    /// (a stream, e.g. exec's events); `limit` replaces the client's time limit.
    pub async fn post_stream<B: Serialize>(
        &self,
        path: &str,
        body: &B,
        limit: Duration,
    ) -> Result<reqwest::Response> {
        let req = self.http.post(self.url(path)).timeout(limit).json(body);
        self.stream(path, req).await
    }

    /// Posts raw bytes with a query and hands back the successful answer's stream.
    pub async fn post_bytes_stream<Q: Serialize + ?Sized>(
        &self,
        path: &str,
        query: &Q,
        body: Vec<u8>,
        limit: Duration,
    ) -> Result<reqwest::Response> {
        let req = self
            .http
            .post(self.url(path))
            .query(query)
            .timeout(limit)
            .header("content-type", "application/octet-stream")
            .body(body);
        self.stream(path, req).await
    }

    /// Sends the request with the token; a successful answer is handed back unread, a
    /// failed one becomes the server's error.
    async fn stream(&self, path: &str, req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(self.http(path))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(self
            .decode::<serde_json::Value>(path, resp)
            .await
            .expect_err("a failed answer decodes to an error"))
    }

    pub async fn put<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.call(path, self.http.put(self.url(path)).json(body))
            .await
    }

    pub async fn patch<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T> {
        self.call(path, self.http.patch(self.url(path)).json(body))
            .await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(path, self.http.delete(self.url(path))).await
    }

    /// A DELETE answered with no body (204).
    pub async fn delete_empty(&self, path: &str) -> Result<()> {
        let resp = self
            .http
            .delete(self.url(path))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(self.http(path))?;
        if resp.status().is_success() {
            return Ok(());
        }
        self.decode::<serde_json::Value>(path, resp)
            .await
            .map(|_| ())
    }

    /// Polls the task until it ends or `timeout` passes.
    pub async fn wait_task(&self, id: i64, timeout: Duration) -> Result<Task> {
        let start = Instant::now();
        let mut delay = Duration::from_millis(50);
        loop {
            let task: Task = self.get(&format!("/v1/tasks/{id}")).await?;
            if task.state.is_finished() {
                return Ok(task);
            }
            if start.elapsed() > timeout {
                return Err(ClientError::TaskTimeout {
                    id,
                    secs: timeout.as_secs(),
                });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(500));
        }
    }
}
