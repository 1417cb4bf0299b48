//! A QMP client: QEMU's machine protocol, JSON lines over the VM's Unix socket.
//!
//! One short connection per operation: connect, read the greeting, negotiate
//! capabilities, send one command, read its answer (skipping the asynchronous events
//! QEMU interleaves), close. The driver never keeps a connection open, so an agent that
//! restarts finds every VM exactly as a fresh client would, and a stuck VM costs a
//! timeout, not a wedged task. It never reads the console or screen-scrapes anything.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// One QMP operation (connect, negotiate, command, answer) may take this long.
const QMP_TIMEOUT: Duration = Duration::from_secs(10);

/// A QMP answer line is small; a longer one is refused rather than buffered.
const MAX_LINE: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP socket {socket}: {message}")]
    Io { socket: String, message: String },
    #[error("QMP {command}: QEMU answered {class}: {desc}")]
    Refused {
        command: String,
        class: String,
        desc: String,
    },
}

/// Sends `command` (with `arguments`, if any) and returns its `return` value.
pub async fn execute(
    socket: &Path,
    command: &str,
    arguments: Option<Value>,
) -> Result<Value, QmpError> {
    let io = |message: String| QmpError::Io {
        socket: socket.display().to_string(),
        message,
    };
    tokio::time::timeout(QMP_TIMEOUT, run(socket, command, arguments))
        .await
        .map_err(|_| {
            io(format!(
                "no answer to {command} in {} s",
                QMP_TIMEOUT.as_secs()
            ))
        })?
}

async fn run(socket: &Path, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
    let io = |message: String| QmpError::Io {
        socket: socket.display().to_string(),
        message,
    };
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|e| io(format!("connect: {e}")))?;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let greeting = next_message(&mut lines).await.map_err(io)?;
    if greeting.get("QMP").is_none() {
        return Err(io(format!("not a QMP greeting: {greeting}")));
    }
    answer(&mut lines, &mut write, "qmp_capabilities", None)
        .await
        .map_err(|e| e.into_error(socket))?;
    answer(&mut lines, &mut write, command, arguments)
        .await
        .map_err(|e| e.into_error(socket))
}

enum Failure {
    Io(String),
    Refused {
        command: String,
        class: String,
        desc: String,
    },
}

impl Failure {
    fn into_error(self, socket: &Path) -> QmpError {
        match self {
            Failure::Io(message) => QmpError::Io {
                socket: socket.display().to_string(),
                message,
            },
            Failure::Refused {
                command,
                class,
                desc,
            } => QmpError::Refused {
                command,
                class,
                desc,
            },
        }
    }
}

async fn answer(
    lines: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    write: &mut tokio::net::unix::OwnedWriteHalf,
    command: &str,
    arguments: Option<Value>,
) -> Result<Value, Failure> {
    let mut request = json!({ "execute": command });
    if let Some(arguments) = arguments {
        request["arguments"] = arguments;
    }
    let mut line = request.to_string();
    line.push('\n');
    write
        .write_all(line.as_bytes())
        .await
        .map_err(|e| Failure::Io(format!("sending {command}: {e}")))?;
    loop {
        let message = next_message(lines).await.map_err(Failure::Io)?;
        if let Some(ret) = message.get("return") {
            return Ok(ret.clone());
        }
        if let Some(error) = message.get("error") {
            let field = |k: &str| {
                error
                    .get(k)
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_string()
            };
            return Err(Failure::Refused {
                command: command.to_string(),
                class: field("class"),
                desc: field("desc"),
            });
        }
        // An asynchronous event (SHUTDOWN, RESET, ...): not our answer.
    }
}

async fn next_message(
    lines: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
) -> Result<Value, String> {
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = lines
            .read_until(b'\n', &mut line)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("QEMU closed the connection".to_string());
        }
        if line.len() > MAX_LINE {
            return Err(format!("an answer line longer than {MAX_LINE} bytes"));
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        return serde_json::from_slice(&line).map_err(|e| format!("not JSON from QEMU: {e}"));
    }
}

/// The VM's run state as `query-status` names it (`running`, `paused`, `shutdown`, ...).
pub async fn status(socket: &Path) -> Result<String, QmpError> {
    let ret = execute(socket, "query-status", None).await?;
    Ok(ret
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A stand-in QEMU that greets, accepts capabilities, sends an event before each
    /// answer, and answers `query-status` or refuses anything else.
    async fn fake_qemu(listener: UnixListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                write
                    .write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n")
                    .await
                    .unwrap();
                while let Ok(Some(line)) = lines.next_line().await {
                    let v: Value = serde_json::from_str(&line).unwrap();
                    let out = match v["execute"].as_str().unwrap() {
                        "qmp_capabilities" => json!({"return": {}}),
                        "query-status" => json!({"return": {"status": "running", "running": true}}),
                        other => {
                            json!({"error": {"class": "CommandNotFound", "desc": format!("The command {other} has not been found")}})
                        }
                    };
                    let event = json!({"event": "RESET", "data": {}, "timestamp": {}});
                    write
                        .write_all(format!("{event}\r\n{out}\r\n").as_bytes())
                        .await
                        .unwrap();
                }
            });
        }
    }

    #[tokio::test]
    async fn answers_skip_events_and_refusals_name_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        tokio::spawn(fake_qemu(listener));
        assert_eq!(status(&socket).await.unwrap(), "running");
        let err = execute(&socket, "frobnicate", None).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("frobnicate") && text.contains("CommandNotFound"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_missing_socket_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("gone.sock");
        let err = status(&socket).await.unwrap_err().to_string();
        assert!(
            err.contains("gone.sock") && err.contains("connect"),
            "{err}"
        );
    }
}
