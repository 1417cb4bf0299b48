//! What a node's agent does with a [`NodeExec`]: runs the command line with `/bin/sh -c`
//! in a process group of its own, stdin from `/dev/null`, and sends its output line by
//! line as it comes, then how it ended. Past the timeout, or when nobody is listening any
//! more (the caller went away: clush's Ctrl-C), the whole group is killed, so nothing the
//! command started outlives it.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;

use super::{ExecEvent, MAX_LINE_BYTES, MAX_OUTPUT_BYTES, NodeExec};

/// Runs `req` and sends its events to `tx`, the final one last. Returns when the command
/// and its output are done, or it was killed.
pub async fn run(node: &str, req: &NodeExec, tx: mpsc::Sender<ExecEvent>) {
    run_with_input(node, req, None, tx).await
}

/// [`run`], with `input` as the command's standard input (else `/dev/null`).
pub async fn run_with_input(
    node: &str,
    req: &NodeExec,
    input: Option<Vec<u8>>,
    tx: mpsc::Sender<ExecEvent>,
) {
    let started = Instant::now();
    let mut child = match Command::new("/bin/sh")
        .arg("-c")
        .arg(&req.command)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            let _ = tx
                .send(ExecEvent::Err {
                    node: node.to_string(),
                    line: format!("cannot run /bin/sh: {e}"),
                })
                .await;
            let _ = tx
                .send(ExecEvent::Exit {
                    node: node.to_string(),
                    code: 127,
                })
                .await;
            return;
        }
    };
    let pgid = child.id().map(|p| p as i32);
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        // Written beside the reading of its output (a command may answer as it reads);
        // a command that stops reading early just loses the rest.
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let _ = stdin.write_all(&input).await;
            let _ = stdin.shutdown().await;
        });
    }
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let budget = std::sync::atomic::AtomicUsize::new(MAX_OUTPUT_BYTES);
    let work = async {
        let (a, b) = tokio::join!(
            pump(node, stdout, false, &tx, &budget),
            pump(node, stderr, true, &tx, &budget)
        );
        if a.is_err() || b.is_err() {
            return None; // nobody listens any more
        }
        child.wait().await.ok()
    };
    let timeout = Duration::from_millis(req.timeout_ms);
    let ended = tokio::select! {
        ended = tokio::time::timeout(timeout, work) => ended,
        _ = tx.closed() => Ok(None), // nobody listens any more
    };
    let event = match ended {
        Ok(Some(status)) => Some(ExecEvent::Exit {
            node: node.to_string(),
            code: exit_code(status),
        }),
        Ok(None) => None,
        Err(_) => Some(ExecEvent::Timeout {
            node: node.to_string(),
            after_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        }),
    };
    // Killed past its timeout or when nobody listens; and background processes of a
    // command that ended keep its group: they go too (as sshd's SIGHUP makes them), so
    // nothing a command started outlives it.
    kill_group(pgid);
    let _ = child.wait().await;
    if let Some(event) = event {
        let _ = tx.send(event).await;
    }
}

fn kill_group(pgid: Option<i32>) {
    if let Some(pgid) = pgid.filter(|&p| p > 1) {
        // SAFETY: kill(2) on a process group we created; no memory is involved.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(255)
}

/// Sends each line of `from` as an event; `Err` when the receiver is gone.
async fn pump<R: AsyncRead + Unpin>(
    node: &str,
    from: R,
    is_err: bool,
    tx: &mpsc::Sender<ExecEvent>,
    budget: &std::sync::atomic::AtomicUsize,
) -> Result<(), ()> {
    use std::sync::atomic::Ordering;
    let mut reader = BufReader::with_capacity(64 * 1024, from);
    let mut line = Vec::new();
    let mut told = false;
    loop {
        line.clear();
        let n = match read_line_limited(&mut reader, &mut line, MAX_LINE_BYTES).await {
            Ok(0) | Err(_) => return Ok(()),
            Ok(n) => n,
        };
        let left = budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.saturating_sub(n))
            })
            .unwrap_or(0);
        if left < n {
            if !told {
                told = true;
                let note = ExecEvent::Err {
                    node: node.to_string(),
                    line: format!(
                        "vcluster: output past {MAX_OUTPUT_BYTES} bytes dropped (read and discarded)"
                    ),
                };
                tx.send(note).await.map_err(|_| ())?;
            }
            continue;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        let text = String::from_utf8_lossy(&line).into_owned();
        let event = if is_err {
            ExecEvent::Err {
                node: node.to_string(),
                line: text,
            }
        } else {
            ExecEvent::Out {
                node: node.to_string(),
                line: text,
            }
        };
        tx.send(event).await.map_err(|_| ())?;
    }
}

/// Reads up to and including a newline, or `max` bytes, whichever comes first; the
/// number of bytes read (0 at the end).
pub async fn read_line_limited<R: AsyncBufReadExt + Unpin>(
    reader: &mut R,
    out: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<usize> {
    let mut total = 0;
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok(total);
        }
        let room = max - total;
        let take = buf.len().min(room);
        let (used, done) = match buf[..take].iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (take, take == room),
        };
        out.extend_from_slice(&buf[..used]);
        reader.consume(used);
        total += used;
        if done {
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(command: &str, timeout_ms: u64) -> Vec<ExecEvent> {
        let (tx, mut rx) = mpsc::channel(1024);
        let req = NodeExec {
            command: command.to_string(),
            timeout_ms,
            stdin: None,
        };
        let runner = tokio::spawn(async move { run("n1", &req, tx).await });
        let mut events = Vec::new();
        while let Some(e) = rx.recv().await {
            events.push(e);
        }
        runner.await.unwrap();
        events
    }

    fn out(line: &str) -> ExecEvent {
        ExecEvent::Out {
            node: "n1".into(),
            line: line.into(),
        }
    }

    #[tokio::test]
    async fn output_lines_and_the_exit_code_arrive_in_order() {
        let events = collect("echo a; echo b >&2; echo c; exit 3", 10_000).await;
        let outs: Vec<_> = events
            .iter()
            .filter(|e| matches!(e, ExecEvent::Out { .. }))
            .cloned()
            .collect();
        assert_eq!(outs, vec![out("a"), out("c")]);
        assert!(events.contains(&ExecEvent::Err {
            node: "n1".into(),
            line: "b".into()
        }));
        assert_eq!(
            events.last(),
            Some(&ExecEvent::Exit {
                node: "n1".into(),
                code: 3
            })
        );
    }

    #[tokio::test]
    async fn a_signal_ends_with_128_plus_its_number() {
        let events = collect("kill -TERM $$", 10_000).await;
        assert_eq!(
            events.last(),
            Some(&ExecEvent::Exit {
                node: "n1".into(),
                code: 128 + 15
            })
        );
    }

    #[tokio::test]
    async fn a_command_past_its_timeout_is_killed_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("survived");
        let cmd = format!("(sleep 2; touch {}) & sleep 30", marker.display());
        let started = Instant::now();
        let events = collect(&cmd, 300).await;
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(
            matches!(events.last(), Some(ExecEvent::Timeout { after_ms, .. }) if *after_ms >= 300),
            "{events:?}"
        );
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(
            !marker.exists(),
            "the command's background child outlived it"
        );
    }

    #[tokio::test]
    async fn long_lines_are_cut_and_output_is_capped_once() {
        let events = collect(
            &format!("head -c {} /dev/zero | tr '\\0' x", MAX_LINE_BYTES * 2 + 5),
            10_000,
        )
        .await;
        let lens: Vec<usize> = events
            .iter()
            .filter_map(|e| match e {
                ExecEvent::Out { line, .. } => Some(line.len()),
                _ => None,
            })
            .collect();
        assert_eq!(lens, vec![MAX_LINE_BYTES, MAX_LINE_BYTES, 5]);

        let big = MAX_OUTPUT_BYTES + 100_000;
        let events = collect(&format!("yes | head -c {big}"), 60_000).await;
        let kept: usize = events
            .iter()
            .filter_map(|e| match e {
                ExecEvent::Out { line, .. } => Some(line.len() + 1),
                _ => None,
            })
            .sum();
        assert!(kept <= MAX_OUTPUT_BYTES, "{kept}");
        assert!(kept > MAX_OUTPUT_BYTES - 10, "{kept}");
        let notes = events
            .iter()
            .filter(|e| matches!(e, ExecEvent::Err { line, .. } if line.contains("dropped")))
            .count();
        assert_eq!(notes, 1);
        assert!(matches!(
            events.last(),
            Some(ExecEvent::Exit { code: 0, .. })
        ));
    }
}
