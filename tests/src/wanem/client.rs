//! [`WanLink`]: the control client of one running `wanem`, over its Unix socket.
//! Each call opens a connection, sends one request line and reads one response line, so
//! a `WanLink` is cheap to clone and safe to use from any thread.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::proto::{Dirs, LinkConfig, LinkParams, LinkStats, Request, Response};

/// Why a control request failed.
#[derive(Debug)]
pub enum WanLinkError {
    Io(PathBuf, std::io::Error),
    /// The emulator's answer was not valid protocol.
    Protocol(PathBuf, String),
    /// The emulator refused the request; the message says why.
    Refused(PathBuf, String),
}

impl std::fmt::Display for WanLinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WanLinkError::Io(p, e) => write!(f, "wanem control socket {}: {e}", p.display()),
            WanLinkError::Protocol(p, e) => {
                write!(f, "wanem control socket {}: bad answer: {e}", p.display())
            }
            WanLinkError::Refused(p, e) => {
                write!(f, "wanem control socket {}: refused: {e}", p.display())
            }
        }
    }
}

impl std::error::Error for WanLinkError {}

/// Client of one emulated link. The panicking methods (`set_outage`, `stats`, ...) are
/// for tests, where a dead emulator is a test failure; `request` returns the error.
#[derive(Clone, Debug)]
pub struct WanLink {
    socket: PathBuf,
}

impl WanLink {
    pub fn new(socket: impl Into<PathBuf>) -> WanLink {
        WanLink {
            socket: socket.into(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends one request and returns the emulator's answer.
    pub fn request(&self, req: &Request) -> Result<Response, WanLinkError> {
        let io = |e| WanLinkError::Io(self.socket.clone(), e);
        let mut stream = UnixStream::connect(&self.socket).map_err(io)?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(io)?;
        let mut line = serde_json::to_string(req).expect("requests serialize");
        line.push('\n');
        stream.write_all(line.as_bytes()).map_err(io)?;
        let mut answer = String::new();
        BufReader::new(&stream).read_line(&mut answer).map_err(io)?;
        let resp: Response = serde_json::from_str(&answer)
            .map_err(|e| WanLinkError::Protocol(self.socket.clone(), format!("{e}: {answer:?}")))?;
        if !resp.ok {
            let msg = resp.error.unwrap_or_else(|| "no reason given".into());
            return Err(WanLinkError::Refused(self.socket.clone(), msg));
        }
        Ok(resp)
    }

    fn must(&self, req: Request) -> Response {
        self.request(&req)
            .unwrap_or_else(|e| panic!("wanem request {req:?} failed: {e}"))
    }

    /// True once the emulator answers (it opens its control socket last).
    pub fn is_ready(&self) -> bool {
        self.request(&Request::Stats).is_ok()
    }

    /// Replaces every parameter of `dirs` (outage included) with `params`.
    pub fn set(&self, dirs: impl Into<Dirs>, params: LinkParams) -> LinkConfig {
        params
            .validate()
            .unwrap_or_else(|e| panic!("bad link parameters {params:?}: {e}"));
        let serde_json::Value::Object(map) = serde_json::to_value(params).expect("serializes")
        else {
            unreachable!("LinkParams serializes to an object")
        };
        self.must(Request::Set {
            dir: dirs.into(),
            params: map,
        })
        .params
        .expect("set answers with params")
    }

    /// Changes the parameters of `dirs` by editing their current values.
    pub fn modify(&self, dirs: impl Into<Dirs>, edit: impl Fn(&mut LinkParams)) -> LinkConfig {
        let dirs = dirs.into();
        let mut cfg = self.params();
        for d in super::Direction::ALL {
            if dirs.contains(d) {
                let mut p = *cfg.dir(d);
                edit(&mut p);
                cfg = self.set(d, p);
            }
        }
        cfg
    }

    /// Link down (both directions) or back up.
    pub fn set_outage(&self, on: bool) {
        self.set_outage_dir(Dirs::Both, on);
    }

    pub fn set_outage_dir(&self, dirs: impl Into<Dirs>, on: bool) {
        self.must(Request::Outage {
            dir: dirs.into(),
            on,
        });
    }

    pub fn params(&self) -> LinkConfig {
        self.must(Request::Get)
            .params
            .expect("get answers with params")
    }

    pub fn stats(&self) -> LinkStats {
        self.must(Request::Stats)
            .stats
            .expect("stats answers with stats")
    }

    pub fn reset_stats(&self) {
        self.must(Request::Reset);
    }

    /// Restarts the random generators: the same traffic then meets the same fate.
    pub fn reseed(&self, seed: u64) {
        self.must(Request::Reseed { seed });
    }
}
