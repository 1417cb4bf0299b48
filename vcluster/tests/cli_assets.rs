//! The man pages and shell completions `vcluster generate-assets DIR` writes for the
//! Debian package (scripts/package), and the promise that every listing prints JSON for
//! scripts: each `list` (and `task events`, `cache stats`) documents `--json`.

use std::path::{Path, PathBuf};
use std::process::Command;

const TOP: [&str; 10] = [
    "cache",
    "serve",
    "host-agent",
    "sites",
    "hosts",
    "users",
    "reserve",
    "cluster",
    "node",
    "vpn",
];

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn generate() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vcluster"))
        .arg("generate-assets")
        .arg(dir.path())
        .output()
        .expect("run vcluster");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let man = dir.path().join("man");
    (dir, man)
}

#[test]
fn generated_man_pages_and_completions_cover_every_subcommand() {
    let (dir, man) = generate();
    // roff writes a hyphen as `\-`.
    let root_page = read(&man.join("vcluster.1")).replace("\\-", "-");
    for sub in TOP.iter().chain(&["task"]) {
        assert!(
            root_page.contains(sub),
            "vcluster(1) does not mention {sub}"
        );
        assert!(
            man.join(format!("vcluster-{sub}.1")).is_file(),
            "no vcluster-{sub}(1)"
        );
    }
    // Nested subcommands have pages of their own.
    for page in [
        "vcluster-cache-serve.1",
        "vcluster-cache-stats.1",
        "vcluster-sites-list.1",
        "vcluster-cluster-create.1",
        "vcluster-task-events.1",
    ] {
        assert!(
            read(&man.join(page)).contains(".TH"),
            "{page} is not a man page"
        );
    }
    let completions = dir.path().join("completions");
    for file in ["vcluster.bash", "_vcluster", "vcluster.fish"] {
        let text = read(&completions.join(file));
        for sub in TOP.iter().chain(&["task", "list", "events", "stats"]) {
            assert!(text.contains(sub), "{file} does not offer {sub}");
        }
        assert!(
            !text.contains("generate-assets"),
            "{file} offers the hidden generate-assets"
        );
    }
    assert!(
        !man.join("vcluster-generate-assets.1").exists(),
        "a page for the hidden generate-assets"
    );
}

#[test]
fn every_listing_documents_json() {
    let (_dir, man) = generate();
    let mut listings: Vec<String> = std::fs::read_dir(&man)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| {
            name.ends_with("-list.1")
                || name == "vcluster-task-events.1"
                || name == "vcluster-cache-stats.1"
        })
        .collect();
    listings.sort();
    assert!(
        listings.len() >= 7,
        "expected the listings of sites, hosts, users, reservations, clusters, tasks, events and cache stats; found {listings:?}"
    );
    for page in &listings {
        assert!(
            read(&man.join(page)).contains("\\-\\-json"),
            "{page} does not document --json"
        );
    }
}
