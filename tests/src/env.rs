//! What a test asks of the machine before it starts: root, external commands, the
//! workspace's binaries, names nobody else uses, and a private scratch directory.
//! Skips are loud (`SKIP <test>: ...` on stderr) so a run without root never passes
//! silently for the wrong reason.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// True when running as root; otherwise prints `SKIP <test>: needs root` and returns
/// false. Use as `if !require_root("name") { return; }`.
pub fn require_root(test: &str) -> bool {
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    skip(test, "needs root (network namespaces); CI runs it as root");
    false
}

/// True when `command` is on the PATH (or in /sbin, /usr/sbin); otherwise prints
/// `SKIP <test>: needs <command>` and returns false.
pub fn require_command(test: &str, command: &str) -> bool {
    if find_command(command).is_some() {
        return true;
    }
    skip(
        test,
        &format!("needs the `{command}` command (see the apt-get line in .ci/run)"),
    );
    false
}

/// Writes `SKIP <test>: <why>` straight to the process's stderr: the test harness
/// captures `eprintln!`, and a skip must show in every run's output.
pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {why}");
}

/// Full path of an external command, looking in PATH and the sbin directories.
pub fn find_command(command: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(command))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Path of a workspace binary (`vpnd`, `vcluster`, `wanem`) built in the same profile as
/// the running test: tests run from `target/<profile>/deps/`, binaries live in
/// `target/<profile>/`. Panics with the command to build it if it is missing.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe has a directory").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    if !is_executable(&path) {
        panic!(
            "binary `{name}` not found at {}: build it first: cargo build --workspace --bins \
             (scripts/test does this)",
            path.display()
        );
    }
    path
}

/// Prefix of every namespace this library creates: `st<pid>-`, so a later run can tell
/// which leftovers belong to a process that no longer exists.
pub(crate) const NS_PREFIX: &str = "st";

/// A name no other test in this process or any other process uses: `st<pid>-<n>-<tag>`.
/// `tag` says what it is for a human reading `ip netns list` (keep it short).
pub fn unique_name(tag: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{NS_PREFIX}{}-{n}-{tag}", std::process::id())
}

/// A private directory (sockets, configs, logs) removed on drop; kept, with its path
/// printed, when the thread is panicking so the logs can be read.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let path = std::env::temp_dir().join(unique_name(tag));
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test files kept in {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
