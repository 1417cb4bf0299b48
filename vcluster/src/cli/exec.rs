//! `vcluster exec`: a command on many nodes, as clush runs it. Lines arrive prefixed
//! with the node's name as they happen (`-b` gathers identical outputs under their node
//! set instead); unreachable nodes are listed apart; `-S` exits with the largest remote
//! code; Ctrl-C stops the command everywhere and keeps (and prints) what arrived.

use std::io::Write;
use std::time::Duration;

use clap::Args;
use futures_util::StreamExt;

use super::ApiArgs;
use crate::exec::gather::Gather;
use crate::exec::{ClusterExec, EventReader, ExecEvent};
use crate::nodeset::NodeSet;

#[derive(Debug, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// The cluster (default: the one every name of NODES belongs to, `<cluster>-node-<i>`).
    #[arg(short, long)]
    pub cluster: Option<String>,
    /// The nodes: `c1-node-[1-134]`, `@all`, `@site:NAME`, `@host:NAME`.
    pub nodes: String,
    /// Nodes to leave out (a node set).
    #[arg(short = 'x', long, value_name = "NODESET")]
    pub exclude: Option<String>,
    /// Gather: print identical outputs once, under the node set that produced them.
    #[arg(short = 'b', long)]
    pub gather: bool,
    /// Exit with the largest exit code of any node (255 for one that timed out or was
    /// unreachable).
    #[arg(short = 'S', long)]
    pub max_rc: bool,
    /// Nodes running the command at once, per host.
    #[arg(short = 'f', long, default_value_t = crate::exec::DEFAULT_FANOUT)]
    pub fanout: u32,
    /// Seconds to wait for a node's agent to take the command.
    #[arg(short = 't', long, value_name = "SECONDS", default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Seconds a command may run on a node before it is killed (default one hour).
    #[arg(short = 'u', long, value_name = "SECONDS", default_value_t = 3600.0)]
    pub command_timeout: f64,
    /// The command line (after `--`), run by /bin/sh -c on each node as ssh runs it.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

fn millis(flag: &str, secs: f64) -> anyhow::Result<u64> {
    if !secs.is_finite() || secs <= 0.0 || secs > 86_400.0 {
        anyhow::bail!("{flag} {secs}: give seconds, more than 0 and at most 86400");
    }
    Ok(((secs * 1000.0).ceil() as u64).max(1))
}

/// `--cluster`, else the cluster every plain name of `nodes` belongs to.
pub(crate) fn cluster_of(given: Option<&str>, nodes: &str) -> anyhow::Result<String> {
    match given {
        Some(c) => Ok(c.to_string()),
        None => infer_cluster(nodes),
    }
}

/// The cluster every plain name of `nodes` belongs to.
fn infer_cluster(nodes: &str) -> anyhow::Result<String> {
    let set = NodeSet::parse_plain(nodes)
        .map_err(|e| anyhow::anyhow!("{e} (with @groups, name the cluster with --cluster)"))?;
    let mut clusters = set
        .iter()
        .map(|n| n.rsplit_once("-node-").map(|(c, _)| c.to_string()));
    let first = clusters.next().flatten();
    match first {
        Some(c) if clusters.all(|o| o.as_deref() == Some(c.as_str())) => Ok(c),
        _ => anyhow::bail!(
            "cannot tell the cluster from {nodes:?} (node names are <cluster>-node-<i>): give --cluster"
        ),
    }
}

pub async fn exec(a: ExecArgs) -> anyhow::Result<()> {
    let nodes = a.nodes.clone();
    let mut rest = a.command.clone();
    if rest.first().map(String::as_str) == Some("--") {
        rest.remove(0);
    }
    if rest.is_empty() {
        anyhow::bail!("give a command after the nodes: vcluster exec {nodes} -- COMMAND");
    }
    let command = rest.join(" ");
    let cluster = cluster_of(a.cluster.as_deref(), &nodes)?;
    let req = ClusterExec {
        nodes,
        exclude: a.exclude.clone(),
        command,
        connect_timeout_ms: Some(millis("--connect-timeout", a.connect_timeout)?),
        command_timeout_ms: Some(millis("--command-timeout", a.command_timeout)?),
        fanout: Some(a.fanout),
    };
    let limit = Duration::from_millis(
        req.command_timeout_ms.unwrap_or(0) + req.connect_timeout_ms.unwrap_or(0) * 2 + 60_000,
    );
    let client = a.api.client()?;
    let resp = client
        .post_stream(&format!("/v1/clusters/{cluster}/exec"), &req, limit)
        .await?;
    let mode = Show {
        json: a.api.json,
        gather: a.gather,
        live_out: true,
    };
    let followed = follow(resp, mode).await;
    let code = followed.code(a.max_rc);
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}

/// How a command's events are shown.
#[derive(Debug, Clone, Copy)]
pub struct Show {
    /// Each event as a JSON line.
    pub json: bool,
    /// `-b`: standard output gathered and folded at the end.
    pub gather: bool,
    /// Standard output lines printed as they come (when not gathering).
    pub live_out: bool,
}

/// What a followed stream left.
pub struct Followed {
    pub gather: Gather,
    pub interrupted: bool,
}

impl Followed {
    /// The exit code of the command: 130 after Ctrl-C; with `max_rc` the largest remote
    /// code; else 0 when every node ran it, 1 when one did not.
    pub fn code(&self, max_rc: bool) -> i32 {
        if self.interrupted {
            130
        } else if max_rc {
            self.gather.max_code().clamp(0, 255)
        } else if self.gather.all_ran() {
            0
        } else {
            1
        }
    }
}

/// Reads the event stream to its end (or Ctrl-C, which drops it and so stops the command
/// wherever it still runs), showing events as `mode` says.
pub async fn follow(resp: reqwest::Response, mode: Show) -> Followed {
    let mut body = resp.bytes_stream();
    let mut reader = EventReader::new();
    let mut gather = Gather::new(std::iter::empty());
    let mut interrupted = false;
    let mut broken = None;
    let mut stdout = std::io::stdout().lock();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let chunk = tokio::select! {
            c = body.next() => c,
            _ = &mut ctrl_c => { interrupted = true; break; }
        };
        let Some(chunk) = chunk else { break };
        let events = match chunk {
            Ok(bytes) => reader.push(&bytes).map_err(anyhow::Error::msg),
            Err(e) => Err(anyhow::anyhow!(
                "the controller's stream broke: {}",
                crate::tls::error_chain(&e)
            )),
        };
        let events = match events {
            Ok(e) => e,
            Err(e) => {
                broken = Some(e);
                break;
            }
        };
        for e in events {
            gather.add(&e);
            if mode.json {
                let _ = stdout.write_all(&e.to_line());
            } else {
                show_live(&mut stdout, &e, mode.gather || !mode.live_out);
            }
        }
        let _ = stdout.flush();
    }
    drop(body);
    if mode.gather && !mode.json {
        let _ = stdout.write_all(gather.render().as_bytes());
    }
    let _ = stdout.flush();
    let unfinished = gather.unfinished();
    if interrupted {
        eprintln!("vcluster: interrupted; the command was stopped where it still ran");
    }
    if !unfinished.is_empty() && !mode.gather {
        eprintln!(
            "vcluster: {unfinished} ({}): no end received",
            unfinished.len()
        );
    }
    if let Some(e) = broken {
        eprintln!("vcluster: {e}");
    }
    Followed {
        gather,
        interrupted,
    }
}

fn show_live(out: &mut impl Write, e: &ExecEvent, gathering: bool) {
    match e {
        ExecEvent::Out { node, line } if !gathering => {
            let _ = writeln!(out, "{node}: {line}");
        }
        ExecEvent::Out { .. } => {}
        ExecEvent::Err { node, line } => eprintln!("{node}: {line}"),
        ExecEvent::Exit { node, code } if *code != 0 && !gathering => {
            eprintln!("vcluster: {node}: exited with exit code {code}")
        }
        ExecEvent::Exit { .. } => {}
        ExecEvent::Timeout { node, after_ms } if !gathering => eprintln!(
            "vcluster: {node}: command timeout after {:.1} s",
            *after_ms as f64 / 1000.0
        ),
        ExecEvent::Timeout { .. } => {}
        ExecEvent::Unreachable { node, reason } if !gathering => {
            eprintln!("vcluster: {node}: unreachable: {reason}")
        }
        ExecEvent::Unreachable { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_is_read_from_plain_names_only_when_they_agree() {
        assert_eq!(infer_cluster("c1-node-[1-4]").unwrap(), "c1");
        assert_eq!(infer_cluster("my-c-node-1,my-c-node-7").unwrap(), "my-c");
        assert!(infer_cluster("c1-node-1,c2-node-1").is_err());
        assert!(infer_cluster("node[1-3]").is_err());
        assert!(infer_cluster("@all").is_err());
        assert!(millis("-u", 0.0).is_err());
        assert!(millis("-u", f64::NAN).is_err());
        assert!(millis("-u", 1e300).is_err());
        assert_eq!(millis("-u", 0.0001).unwrap(), 1);
    }
}

/// `vcluster copy`: a file to every node of a set (clush `--copy`).
#[derive(Debug, Args)]
pub struct CopyArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// The cluster (default: the one every name of NODES belongs to).
    #[arg(short, long)]
    pub cluster: Option<String>,
    /// Nodes to leave out (a node set).
    #[arg(short = 'x', long, value_name = "NODESET")]
    pub exclude: Option<String>,
    /// Permissions of the copies (octal; default: the source's).
    #[arg(long)]
    pub mode: Option<String>,
    #[arg(short = 'f', long, default_value_t = crate::exec::DEFAULT_FANOUT)]
    pub fanout: u32,
    /// The nodes.
    pub nodes: String,
    /// The local file (at most 8 MiB).
    pub src: std::path::PathBuf,
    /// The absolute path on each node (default: the source's absolute path); a path
    /// ending in `/` is a directory the file goes into.
    pub dest: Option<String>,
}

pub async fn copy(a: CopyArgs) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta =
        std::fs::metadata(&a.src).map_err(|e| anyhow::anyhow!("{}: {e}", a.src.display()))?;
    if !meta.is_file() {
        anyhow::bail!("{}: not a regular file", a.src.display());
    }
    if meta.len() > crate::exec::MAX_STDIN_BYTES as u64 {
        anyhow::bail!(
            "{}: {} bytes; vcluster copy takes at most {} bytes",
            a.src.display(),
            meta.len(),
            crate::exec::MAX_STDIN_BYTES
        );
    }
    let bytes = std::fs::read(&a.src).map_err(|e| anyhow::anyhow!("{}: {e}", a.src.display()))?;
    let base = a
        .src
        .file_name()
        .ok_or_else(|| anyhow::anyhow!("{}: no file name", a.src.display()))?
        .to_string_lossy()
        .into_owned();
    let dest = match &a.dest {
        Some(d) if d.ends_with('/') => format!("{d}{base}"),
        Some(d) => d.clone(),
        None => std::path::absolute(&a.src)?.to_string_lossy().into_owned(),
    };
    let mode = a
        .mode
        .clone()
        .unwrap_or_else(|| format!("{:o}", meta.permissions().mode() & 0o777));
    let cluster = cluster_of(a.cluster.as_deref(), &a.nodes)?;
    let mut query = vec![
        ("nodes", a.nodes.clone()),
        ("dest", dest.clone()),
        ("mode", mode),
        ("fanout", a.fanout.to_string()),
    ];
    if let Some(x) = &a.exclude {
        query.push(("exclude", x.clone()));
    }
    let client = a.api.client()?;
    let resp = client
        .post_bytes_stream(
            &format!("/v1/clusters/{cluster}/copy"),
            &query,
            bytes,
            Duration::from_secs(3600),
        )
        .await?;
    let followed = follow(
        resp,
        Show {
            json: a.api.json,
            gather: false,
            live_out: true,
        },
    )
    .await;
    let g = &followed.gather;
    if !a.api.json {
        let ok: NodeSet = g
            .groups()
            .into_iter()
            .filter(|grp| grp.outcome == crate::exec::gather::Outcome::Exit(0))
            .flat_map(|grp| grp.nodes.iter().map(str::to_string).collect::<Vec<_>>())
            .collect();
        if !ok.is_empty() {
            println!("{dest}: copied to {ok} ({})", ok.len());
        }
    }
    let code = followed.code(true);
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}

/// `vcluster rcopy`: a file from every node of a set, saved as `DESTDIR/<name>.<node>`
/// (clush `--rcopy`).
#[derive(Debug, Args)]
pub struct RcopyArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[arg(short, long)]
    pub cluster: Option<String>,
    #[arg(short = 'x', long, value_name = "NODESET")]
    pub exclude: Option<String>,
    #[arg(short = 'f', long, default_value_t = crate::exec::DEFAULT_FANOUT)]
    pub fanout: u32,
    /// The nodes.
    pub nodes: String,
    /// The absolute path of the file on the nodes (at most 6 MiB each).
    pub src: String,
    /// The local directory the copies go into (default: the current one).
    #[arg(default_value = ".")]
    pub dest_dir: std::path::PathBuf,
}

pub async fn rcopy(a: RcopyArgs) -> anyhow::Result<()> {
    use base64::Engine;
    if !a.src.starts_with('/') {
        anyhow::bail!("{}: give the absolute path of the file on the nodes", a.src);
    }
    let base = a
        .src
        .rsplit('/')
        .next()
        .filter(|b| !b.is_empty())
        .ok_or_else(|| anyhow::anyhow!("{}: no file name", a.src))?
        .to_string();
    if !a.dest_dir.is_dir() {
        anyhow::bail!("{}: not a directory", a.dest_dir.display());
    }
    let cluster = cluster_of(a.cluster.as_deref(), &a.nodes)?;
    let req = ClusterExec {
        nodes: a.nodes.clone(),
        exclude: a.exclude.clone(),
        command: format!("base64 < {}", crate::exec::shell_quote(&a.src)),
        connect_timeout_ms: None,
        command_timeout_ms: None,
        fanout: Some(a.fanout),
    };
    let client = a.api.client()?;
    let resp = client
        .post_stream(
            &format!("/v1/clusters/{cluster}/exec"),
            &req,
            Duration::from_secs(3600),
        )
        .await?;
    let followed = follow(
        resp,
        Show {
            json: false,
            gather: false,
            live_out: false,
        },
    )
    .await;
    let mut saved = NodeSet::new();
    let mut failed = false;
    for (node, out, outcome) in followed.gather.per_node() {
        if outcome != Some(&crate::exec::gather::Outcome::Exit(0)) {
            let why = outcome
                .map(|o| o.describe().trim().to_string())
                .unwrap_or_else(|| "no end received".into());
            eprintln!("vcluster: {node}: {} not saved ({why})", a.src);
            failed = true;
            continue;
        }
        let text: String = out.concat();
        let bytes = match base64::engine::general_purpose::STANDARD.decode(text.trim()) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("vcluster: {node}: the copy came back damaged ({e}): not saved");
                failed = true;
                continue;
            }
        };
        let path = a.dest_dir.join(format!("{base}.{node}"));
        if let Err(e) = std::fs::write(&path, &bytes) {
            eprintln!("vcluster: {}: {e}", path.display());
            failed = true;
            continue;
        }
        saved.insert(node);
    }
    if !saved.is_empty() {
        println!(
            "{}: saved from {saved} ({}) as {}/{base}.<node>",
            a.src,
            saved.len(),
            a.dest_dir.display()
        );
    }
    if followed.interrupted {
        std::process::exit(130);
    }
    if failed {
        std::process::exit(1);
    }
    Ok(())
}
