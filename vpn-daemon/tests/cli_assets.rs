//! The man pages and shell completions `vpnd generate-assets DIR` writes for the Debian
//! package (scripts/package): one page per subcommand, each completion offering every
//! subcommand, and nothing of the hidden subcommand itself.

use std::path::Path;
use std::process::Command;

const SUBCOMMANDS: [&str; 5] = ["keygen", "pubkey", "up", "check", "status"];

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn generated_man_pages_and_completions_cover_every_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vpnd"))
        .arg("generate-assets")
        .arg(dir.path())
        .output()
        .expect("run vpnd");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let man = dir.path().join("man");
    let root_page = read(&man.join("vpnd.1"));
    for sub in SUBCOMMANDS {
        assert!(root_page.contains(sub), "vpnd(1) does not mention {sub}");
        let page = read(&man.join(format!("vpnd-{sub}.1")));
        assert!(page.contains(".TH"), "vpnd-{sub}(1) is not a man page");
    }
    assert!(
        read(&man.join("vpnd-status.1")).contains("\\-\\-json"),
        "vpnd-status(1) does not document --json"
    );
    assert!(
        read(&man.join("vpnd-up.1")).contains("\\-\\-config"),
        "vpnd-up(1) does not document --config"
    );
    let completions = dir.path().join("completions");
    for file in ["vpnd.bash", "_vpnd", "vpnd.fish"] {
        let text = read(&completions.join(file));
        for sub in SUBCOMMANDS {
            assert!(text.contains(sub), "{file} does not offer {sub}");
        }
        assert!(
            !text.contains("generate-assets"),
            "{file} offers the hidden generate-assets"
        );
    }
    let pages = std::fs::read_dir(&man).unwrap().count();
    assert_eq!(
        pages,
        1 + SUBCOMMANDS.len(),
        "one page per command, no more"
    );
}
