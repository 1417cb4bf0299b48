//! Parallel exec (`vcluster exec`), as clush and pdsh do it, on three hops: the CLI asks
//! the controller (`POST /v1/clusters/{cluster}/exec`), which sends each host's share to
//! that host's agent (`POST /agent/v1/exec`), which runs it on each node through the
//! node's agent (`POST /node/v1/exec` on the node's own channel: a Unix socket for a
//! lightweight node). Every hop answers with the same stream of [`ExecEvent`]s, one JSON
//! object per line, as they happen: the CLI prints lines live, or folds identical
//! outputs (`-b`), whatever the number of nodes.
//!
//! The types here are that protocol and its bounds; [`run`] is what a node does,
//! [`gather`] is the folding.

pub mod gather;
pub mod run;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The longest command line, in bytes.
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;
/// The longest a command may run on a node, in milliseconds (one day).
pub const MAX_COMMAND_TIMEOUT_MS: u64 = 24 * 3600 * 1000;
/// The longest wait for a node's agent to accept the command, in milliseconds.
pub const MAX_CONNECT_TIMEOUT_MS: u64 = 600 * 1000;
/// The most nodes one host agent runs a command on at once.
pub const MAX_FANOUT: u32 = 4096;
/// clush's default fan-out.
pub const DEFAULT_FANOUT: u32 = 64;
/// Default connect timeout (clush: 10 s).
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 10_000;
/// Default command timeout: one hour (clush has none; a stuck node must not hold the
/// whole command for ever).
pub const DEFAULT_COMMAND_TIMEOUT_MS: u64 = 3600 * 1000;
/// One output line longer than this is cut into pieces of this size.
pub const MAX_LINE_BYTES: usize = 16 * 1024;
/// Output kept per node and command (stdout and stderr together); past it the node says
/// so once and the rest is read and dropped.
pub const MAX_OUTPUT_BYTES: usize = 8 << 20;
/// The largest standard input a command gets (`vcluster copy`'s file), in bytes.
pub const MAX_STDIN_BYTES: usize = 8 << 20;
/// The body limit of the hops that carry a command with its standard input (base64).
pub const MAX_EXEC_BODY_BYTES: usize = MAX_STDIN_BYTES / 3 * 4 + 8 + MAX_COMMAND_BYTES * 2 + 4096;

/// What the CLI asks of the controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterExec {
    /// A node set of the cluster's nodes: `c1-node-[1-4,7]`, `@site:paris`, `@all`.
    pub nodes: String,
    /// A node set to leave out (clush's `-x`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude: Option<String>,
    /// The command line, run by `/bin/sh -c` on each node (as ssh runs it).
    pub command: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_timeout_ms: Option<u64>,
    /// Nodes running the command at once, per host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fanout: Option<u32>,
}

/// What the controller asks of one host agent: the command on some of its nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HostExec {
    pub nodes: Vec<String>,
    pub command: String,
    pub connect_timeout_ms: u64,
    pub command_timeout_ms: u64,
    pub fanout: u32,
    /// The command's standard input, base64 (else `/dev/null`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
}

/// What a host agent asks of one node's agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeExec {
    pub command: String,
    pub timeout_ms: u64,
    /// The command's standard input, base64 (else `/dev/null`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
}

/// Decodes a standard input given in base64, within [`MAX_STDIN_BYTES`].
pub fn decode_stdin(stdin: Option<&str>) -> Result<Option<Vec<u8>>, (&'static str, String)> {
    use base64::Engine;
    let Some(text) = stdin else { return Ok(None) };
    if text.len() > MAX_STDIN_BYTES / 3 * 4 + 8 {
        return Err((
            "stdin",
            format!("the standard input is larger than {MAX_STDIN_BYTES} bytes"),
        ));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| ("stdin", format!("the standard input is not base64: {e}")))?;
    if bytes.len() > MAX_STDIN_BYTES {
        return Err((
            "stdin",
            format!("the standard input is larger than {MAX_STDIN_BYTES} bytes"),
        ));
    }
    Ok(Some(bytes))
}

/// `s` quoted for `/bin/sh`: one word whatever it holds.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// One thing that happened on one node, a line of the exec stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ExecEvent {
    /// A line of standard output (without its newline).
    Out { node: String, line: String },
    /// A line of standard error.
    Err { node: String, line: String },
    /// The command ended; a command killed by signal N ends with 128 + N, as in a shell.
    Exit { node: String, code: i32 },
    /// The command ran past its timeout and was killed with its whole process group.
    Timeout { node: String, after_ms: u64 },
    /// The command never ran there: the node's agent (or its host) could not be reached.
    Unreachable { node: String, reason: String },
}

impl ExecEvent {
    pub fn node(&self) -> &str {
        match self {
            ExecEvent::Out { node, .. }
            | ExecEvent::Err { node, .. }
            | ExecEvent::Exit { node, .. }
            | ExecEvent::Timeout { node, .. }
            | ExecEvent::Unreachable { node, .. } => node,
        }
    }

    /// The last event a node sends.
    pub fn is_final(&self) -> bool {
        !matches!(self, ExecEvent::Out { .. } | ExecEvent::Err { .. })
    }

    /// One line of the stream, with its newline.
    pub fn to_line(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).expect("an ExecEvent always serialises");
        v.push(b'\n');
        v
    }
}

/// Checks the parts every hop checks the same way; `Err((field, message))`.
pub fn check_command(command: &str) -> Result<(), (&'static str, String)> {
    if command.trim().is_empty() {
        return Err(("command", "the command is empty".to_string()));
    }
    if command.len() > MAX_COMMAND_BYTES {
        return Err((
            "command",
            format!(
                "the command is {} bytes; the limit is {MAX_COMMAND_BYTES}",
                command.len()
            ),
        ));
    }
    if command.contains('\0') {
        return Err(("command", "the command contains a NUL byte".to_string()));
    }
    Ok(())
}

/// `value` within `1..=max`, or the field and why not.
pub fn check_bound(
    field: &'static str,
    value: u64,
    max: u64,
) -> Result<(), (&'static str, String)> {
    if value == 0 || value > max {
        Err((field, format!("{field} is {value}; it must be 1 to {max}")))
    } else {
        Ok(())
    }
}

/// Splits NDJSON bytes as they arrive into events; a line that is not an event is an
/// error naming it (a hop never passes on what it cannot read).
#[derive(Debug, Default)]
pub struct EventReader {
    pending: Vec<u8>,
}

/// The longest event line accepted from the next hop: a cut line plus JSON quoting.
pub const MAX_EVENT_LINE: usize = MAX_LINE_BYTES * 6 + 1024;

impl EventReader {
    pub fn new() -> EventReader {
        EventReader::default()
    }

    /// Adds bytes and returns the whole events now complete.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<ExecEvent>, String> {
        self.pending.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(nl) = self.pending[start..].iter().position(|&b| b == b'\n') {
            let line = &self.pending[start..start + nl];
            start += nl + 1;
            if line.is_empty() {
                continue;
            }
            let event = serde_json::from_slice(line).map_err(|e| {
                format!(
                    "an exec stream line is not an event ({e}): {}",
                    String::from_utf8_lossy(&line[..line.len().min(200)])
                )
            })?;
            events.push(event);
        }
        self.pending.drain(..start);
        if self.pending.len() > MAX_EVENT_LINE {
            return Err(format!(
                "an exec stream line is longer than {MAX_EVENT_LINE} bytes"
            ));
        }
        Ok(events)
    }

    /// Bytes of an unfinished line left at the end of the stream.
    pub fn leftover(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_the_reader_in_any_split() {
        let events = vec![
            ExecEvent::Out {
                node: "n1".into(),
                line: "héllo \"x\"".into(),
            },
            ExecEvent::Err {
                node: "n2".into(),
                line: String::new(),
            },
            ExecEvent::Exit {
                node: "n1".into(),
                code: 137,
            },
            ExecEvent::Timeout {
                node: "n3".into(),
                after_ms: 5,
            },
            ExecEvent::Unreachable {
                node: "n4".into(),
                reason: "gone".into(),
            },
        ];
        let bytes: Vec<u8> = events.iter().flat_map(|e| e.to_line()).collect();
        for cut in 0..bytes.len() {
            let mut r = EventReader::new();
            let mut got = r.push(&bytes[..cut]).unwrap();
            got.extend(r.push(&bytes[cut..]).unwrap());
            assert_eq!(got, events, "cut at {cut}");
            assert_eq!(r.leftover(), 0);
        }
    }

    #[test]
    fn a_line_that_is_not_an_event_is_named() {
        let mut r = EventReader::new();
        let e = r.push(b"{\"kind\":\"out\",\"node\":\"n\",\"line\":\"x\",\"extra\":1}\n");
        assert!(e.unwrap_err().contains("extra"));
        let mut r = EventReader::new();
        assert!(r.push(b"garbage\n").unwrap_err().contains("garbage"));
        let mut r = EventReader::new();
        let long = vec![b'a'; MAX_EVENT_LINE + 1];
        assert!(r.push(&long).unwrap_err().contains("longer"));
    }

    #[test]
    fn quoting_keeps_a_word_whole_and_stdin_is_bounded() {
        for s in ["a b", "it's", "$(rm -rf /)", "`x`", "\"q\"", "a\\b", ""] {
            let out = std::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(format!("printf %s {}", shell_quote(s)))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout), s);
        }
        use base64::Engine;
        let b64 = |n: usize| base64::engine::general_purpose::STANDARD.encode(vec![7u8; n]);
        assert_eq!(decode_stdin(None).unwrap(), None);
        assert_eq!(decode_stdin(Some(&b64(3))).unwrap(), Some(vec![7u8; 3]));
        assert!(decode_stdin(Some(&b64(MAX_STDIN_BYTES))).is_ok());
        assert!(decode_stdin(Some(&b64(MAX_STDIN_BYTES + 1))).is_err());
        assert!(
            decode_stdin(Some("not base64!"))
                .unwrap_err()
                .1
                .contains("base64")
        );
    }

    #[test]
    fn bounds_name_the_field() {
        assert!(check_command("").is_err());
        assert!(check_command("true").is_ok());
        assert!(check_command(&"x".repeat(MAX_COMMAND_BYTES + 1)).is_err());
        assert!(check_command("a\0b").is_err());
        assert_eq!(check_bound("fanout", 0, 10).unwrap_err().0, "fanout");
        assert!(check_bound("fanout", u64::MAX, 10).is_err());
        assert!(check_bound("fanout", 10, 10).is_ok());
    }
}
