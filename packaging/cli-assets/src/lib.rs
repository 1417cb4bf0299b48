//! Man pages and shell completions for the project's binaries (`vpnd`, `vcluster`),
//! generated from their clap definitions, so what is installed can never disagree with
//! what the binary accepts.
//!
//! Each binary has a hidden `generate-assets DIR` subcommand that hands its
//! `clap::Command` to [`write`]; `scripts/package` runs it and installs the files. This
//! crate only renders and writes files; it knows nothing of either binary.
//!
//! Layout of `DIR` (the Debian packages install them where man and the shells look):
//!
//! | file | installed as |
//! |---|---|
//! | `man/NAME.1`, `man/NAME-SUB.1`, `man/NAME-SUB-SUBSUB.1`... | `/usr/share/man/man1/` (gzipped) |
//! | `completions/NAME.bash` | `/usr/share/bash-completion/completions/NAME` |
//! | `completions/_NAME` | `/usr/share/zsh/vendor-completions/_NAME` |
//! | `completions/NAME.fish` | `/usr/share/fish/vendor_completions.d/NAME.fish` |
//!
//! Hidden subcommands (this one included) get neither a page nor a completion.

use std::io;
use std::path::{Path, PathBuf};

use clap_complete::Shell;

/// The shells a package ships completions for.
pub const SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

/// What [`write`] wrote.
#[derive(Debug, Default)]
pub struct Written {
    pub man_pages: Vec<PathBuf>,
    pub completions: Vec<PathBuf>,
}

/// Writes the man pages of `cmd` and every visible subcommand, at any depth, into
/// `dir/man`, and its bash, zsh and fish completions into `dir/completions`.
pub fn write(cmd: clap::Command, dir: &Path) -> io::Result<Written> {
    let name = cmd.get_name().to_string();
    let man_dir = dir.join("man");
    let completions_dir = dir.join("completions");
    std::fs::create_dir_all(&man_dir)?;
    std::fs::create_dir_all(&completions_dir)?;

    let mut written = Written::default();
    let mut completed = without_hidden_subcommands(&cmd).disable_help_subcommand(true);
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    write_pages(&cmd, &name, &man_dir, &mut written.man_pages)?;
    for shell in SHELLS {
        written.completions.push(clap_complete::generate_to(
            shell,
            &mut completed,
            &name,
            &completions_dir,
        )?);
    }
    Ok(written)
}

/// A copy of `cmd` (not yet built) for completions: clap_complete offers hidden
/// subcommands too, and clap cannot remove a subcommand, so the copy is made of what a
/// completion uses (names, aliases, help lines, arguments and their groups) and only the
/// visible subcommands, at every depth.
fn without_hidden_subcommands(cmd: &clap::Command) -> clap::Command {
    let mut copy = clap::Command::new(cmd.get_name().to_string())
        .args(cmd.get_arguments().cloned())
        .groups(cmd.get_groups().cloned())
        .visible_aliases(cmd.get_visible_aliases().map(str::to_string));
    if let Some(about) = cmd.get_about() {
        copy = copy.about(about.clone());
    }
    if let Some(version) = cmd.get_version() {
        copy = copy.version(version.to_string());
    }
    copy.subcommands(
        cmd.get_subcommands()
            .filter(|s| !s.is_hide_set())
            .map(without_hidden_subcommands),
    )
}

/// Writes `cmd`'s page as `page_name.1`, then each visible subcommand's as
/// `page_name-SUB.1`, recursively.
fn write_pages(
    cmd: &clap::Command,
    page_name: &str,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> io::Result<()> {
    // The page's title and NAME section say `vcluster-sites-list`, as git's pages do;
    // its synopsis keeps the words a user types (`vcluster sites list`).
    let titled = cmd.clone().name(page_name.to_string());
    let path = dir.join(format!("{page_name}.1"));
    let mut page = Vec::new();
    clap_mangen::Man::new(titled).render(&mut page)?;
    std::fs::write(&path, page)?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(
            sub,
            &format!("{page_name}-{}", sub.get_name()),
            dir,
            written,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction, Command};

    fn tool() -> Command {
        Command::new("tool")
            .about("A tool")
            .subcommand(
                Command::new("net").about("Networks").subcommand(
                    Command::new("list")
                        .about("List networks")
                        .arg(Arg::new("json").long("json").action(ArgAction::SetTrue)),
                ),
            )
            .subcommand(Command::new("up").about("Start"))
            .subcommand(Command::new("secret-assets").hide(true))
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn every_visible_subcommand_at_any_depth_gets_a_page_and_completions_name_it() {
        let dir = tempfile::tempdir().unwrap();
        let written = write(tool(), dir.path()).unwrap();
        let man = dir.path().join("man");
        let mut pages: Vec<String> = std::fs::read_dir(&man)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        pages.sort();
        assert_eq!(
            pages,
            ["tool-net-list.1", "tool-net.1", "tool-up.1", "tool.1"],
            "no page for the hidden subcommand or for `help`"
        );
        assert_eq!(written.man_pages.len(), 4);
        assert!(read(&man.join("tool.1")).contains("tool\\-net"));
        assert!(read(&man.join("tool-net-list.1")).contains("\\-\\-json"));
        let completions = dir.path().join("completions");
        for file in ["tool.bash", "_tool", "tool.fish"] {
            let text = read(&completions.join(file));
            for word in ["net", "list", "up", "--json"] {
                let word = if file == "tool.fish" {
                    word.trim_start_matches('-')
                } else {
                    word
                };
                assert!(text.contains(word), "{file} does not mention {word}");
            }
            assert!(
                !text.contains("secret-assets"),
                "{file} offers the hidden subcommand"
            );
        }
        assert_eq!(written.completions.len(), 3);
    }
}
