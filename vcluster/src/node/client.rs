//! The host agent's side of a node's channel: exec and status over the node agent's Unix
//! socket (HTTP/1.1, one request per connection, as vpnd's control client does).

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use super::metrics::NodeStatus;
use crate::exec::{EventReader, ExecEvent, NodeExec};
use crate::model::ApiErrorBody;

async fn connect(
    socket: &Path,
    timeout: Duration,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, String> {
    let stream = tokio::time::timeout(timeout, UnixStream::connect(socket))
        .await
        .map_err(|_| format!("the node agent did not accept within {timeout:?}"))?
        .map_err(|e| format!("the node agent's socket {}: {e}", socket.display()))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("the node agent's socket {}: {e}", socket.display()))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn error_of(resp: hyper::Response<hyper::body::Incoming>) -> String {
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    match serde_json::from_slice::<ApiErrorBody>(&body) {
        Ok(b) => format!("the node agent refused ({status}): {}", b.error),
        Err(_) => format!("the node agent answered {status}"),
    }
}

/// Runs `req` on the node behind `socket` and forwards its events to `tx`, each named
/// `node` (what the controller calls it, whatever the node says its name is). `Err` is
/// why the command never started; a stream that ends before the command did sends an
/// `Unreachable` naming that.
pub async fn exec(
    socket: &Path,
    node: &str,
    req: &NodeExec,
    connect_timeout: Duration,
    tx: &mpsc::Sender<ExecEvent>,
) -> Result<(), String> {
    let mut sender = connect(socket, connect_timeout).await?;
    let body = serde_json::to_vec(req).expect("a NodeExec serialises");
    let request = Request::post("/node/v1/exec")
        .header("host", "node")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("a valid request");
    let resp = tokio::time::timeout(connect_timeout, sender.send_request(request))
        .await
        .map_err(|_| format!("the node agent did not answer within {connect_timeout:?}"))?
        .map_err(|e| format!("the node agent: {e}"))?;
    if !resp.status().is_success() {
        return Err(error_of(resp).await);
    }
    let mut body = resp.into_body();
    let mut reader = EventReader::new();
    let mut ended = false;
    loop {
        let frame = tokio::select! {
            f = body.frame() => f,
            // The caller went away: dropping the connection stops the command.
            _ = tx.closed() => return Ok(()),
        };
        let Some(frame) = frame else { break };
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                let _ = tx
                    .send(lost(node, &format!("the node agent's stream broke: {e}")))
                    .await;
                return Ok(());
            }
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let events = match reader.push(&data) {
            Ok(ev) => ev,
            Err(e) => {
                let _ = tx.send(lost(node, &e)).await;
                return Ok(());
            }
        };
        for mut event in events {
            rename(&mut event, node);
            ended |= event.is_final();
            if tx.send(event).await.is_err() {
                return Ok(()); // nobody listens: dropping the body stops the command
            }
            if ended {
                return Ok(());
            }
        }
    }
    if !ended {
        let _ = tx
            .send(lost(
                node,
                "the node agent's stream ended before the command did (the node went down?)",
            ))
            .await;
    }
    Ok(())
}

fn lost(node: &str, reason: &str) -> ExecEvent {
    ExecEvent::Unreachable {
        node: node.to_string(),
        reason: reason.to_string(),
    }
}

fn rename(event: &mut ExecEvent, to: &str) {
    match event {
        ExecEvent::Out { node, .. }
        | ExecEvent::Err { node, .. }
        | ExecEvent::Exit { node, .. }
        | ExecEvent::Timeout { node, .. }
        | ExecEvent::Unreachable { node, .. } => *node = to.to_string(),
    }
}

/// The node's status, or why it could not be read.
pub async fn status(socket: &Path, timeout: Duration) -> Result<NodeStatus, String> {
    let work = async {
        let mut sender = connect(socket, timeout).await?;
        let request = Request::get("/node/v1/status")
            .header("host", "node")
            .body(Full::new(Bytes::new()))
            .expect("a valid request");
        let resp = sender
            .send_request(request)
            .await
            .map_err(|e| format!("the node agent: {e}"))?;
        if !resp.status().is_success() {
            return Err(error_of(resp).await);
        }
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("the node agent: {e}"))?
            .to_bytes();
        serde_json::from_slice(&body).map_err(|e| format!("the node agent's status: {e}"))
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("the node agent did not answer within {timeout:?}"))?
}
