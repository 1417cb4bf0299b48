//! [`Process`]: a long-running program started for a test (a `vpnd`, a `wanem`, a
//! dnsmasq), its stdout and stderr in a log file, stopped on drop. When the test is
//! failing (the thread is panicking) the drop prints the log's tail first, so a failure
//! shows what the daemons said.

use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Lines of log printed when a test fails.
const TAIL_LINES: usize = 40;

/// A child process with its log; SIGTERM, then SIGKILL after a grace period, on drop.
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
    exit: Option<ExitStatus>,
}

impl Process {
    /// Starts `cmd` with stdin closed and stdout + stderr appended to `log`.
    pub fn spawn(name: impl Into<String>, mut cmd: Command, log: impl Into<PathBuf>) -> Process {
        let name = name.into();
        let log = log.into();
        let out = File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let err = out.try_clone().expect("clone log fd");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {name} ({cmd:?}): {e}"));
        Process {
            name,
            child,
            log,
            exit: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything the process has written so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Prints the log's tail to stderr under a header naming the process.
    pub fn dump_log(&self) {
        eprintln!(
            "----- {} (pid {}) log tail, full log {} -----\n{}\n----- end of {} -----",
            self.name,
            self.pid(),
            self.log.display(),
            self.log_tail(TAIL_LINES),
            self.name
        );
    }

    /// Its exit status if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    pub fn is_running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    /// Panics, with the log, if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(st) = self.try_wait() {
            self.dump_log();
            panic!("{} exited unexpectedly: {st}", self.name);
        }
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait() {
                return Some(st);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends a signal (e.g. `libc::SIGHUP`); does nothing if it has exited.
    pub fn signal(&mut self, sig: libc::c_int) {
        if self.is_running() {
            unsafe { libc::kill(self.pid() as libc::pid_t, sig) };
        }
    }

    /// SIGTERM, then SIGKILL if it is still running after `grace`; returns the status.
    pub fn stop_with_grace(&mut self, grace: Duration) -> ExitStatus {
        self.signal(libc::SIGTERM);
        if let Some(st) = self.wait_timeout(grace) {
            return st;
        }
        self.kill()
    }

    /// SIGTERM with a 3 s grace period.
    pub fn stop(&mut self) -> ExitStatus {
        self.stop_with_grace(Duration::from_secs(3))
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(st) = self.try_wait() {
            return st;
        }
        let _ = self.child.kill();
        let st = self.child.wait().expect("wait for killed child");
        self.exit = Some(st);
        st
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_log();
        }
        self.stop();
    }
}

/// `program args...` as a `Command`, for [`Process::spawn`] or [`crate::NetNs::command`].
pub fn command<I, S>(program: impl AsRef<OsStr>, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new(program);
    c.args(args);
    c
}
