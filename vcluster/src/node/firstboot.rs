//! A lightweight node's first boot: what `vc-firstboot` does on an installed VM
//! (scripts/installer/firstboot), done by the node agent when it starts over a root
//! directory that the installer left `etc/vcluster/install.env` in. It reports the phase
//! `booted` to the install's callback with the install's token, then removes the file,
//! so the token is forgotten and a later start reports nothing.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the installer leaves the first boot's callback and token, under the root.
pub const INSTALL_ENV: &str = "etc/vcluster/install.env";

/// How long the first boot keeps trying to reach the callback.
const TRY_FOR: Duration = Duration::from_secs(300);

/// What `install.env` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallEnv {
    pub callback: String,
    pub token: String,
    pub node: String,
}

/// Parses `install.env`: `VC_CALLBACK='…'`, `VC_TOKEN='…'`, `VC_NODE='…'`, one per line,
/// values single-quoted without quotes inside (as the installer writes them). Anything
/// else is an error naming the line.
pub fn parse(text: &str) -> Result<InstallEnv, String> {
    let (mut callback, mut token, mut node) = (None, None, None);
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = || format!("line {}: expected NAME='value', found {line:?}", i + 1);
        let (name, value) = line.split_once('=').ok_or_else(bad)?;
        let value = value
            .strip_prefix('\'')
            .and_then(|v| v.strip_suffix('\''))
            .filter(|v| !v.contains('\''))
            .ok_or_else(bad)?
            .to_string();
        let slot = match name {
            "VC_CALLBACK" => &mut callback,
            "VC_TOKEN" => &mut token,
            "VC_NODE" => &mut node,
            other => return Err(format!("line {}: unknown name {other}", i + 1)),
        };
        if slot.replace(value).is_some() {
            return Err(format!("line {}: {name} given twice", i + 1));
        }
    }
    let need = |v: Option<String>, what: &str| v.ok_or_else(|| format!("no {what}"));
    let env = InstallEnv {
        callback: need(callback, "VC_CALLBACK")?,
        token: need(token, "VC_TOKEN")?,
        node: need(node, "VC_NODE")?,
    };
    if !env.callback.starts_with("http://") && !env.callback.starts_with("https://") {
        return Err(format!(
            "VC_CALLBACK is not an HTTP URL: {:?}",
            env.callback
        ));
    }
    Ok(env)
}

/// Reports the first boot of the system installed in `root`, if it has not been yet;
/// retries for [`TRY_FOR`], then gives up until the next start (as vc-firstboot does).
pub async fn report(root: PathBuf) {
    let path = root.join(INSTALL_ENV);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "the first boot cannot read its file");
            return;
        }
    };
    let env = match parse(&text) {
        Ok(env) => env,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "the first boot's file is malformed");
            return;
        }
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("a plain HTTP client builds");
    let body = serde_json::json!({
        "phase": "booted",
        "node": env.node,
        "message": "booted (lightweight node, from its root directory)",
    });
    let started = tokio::time::Instant::now();
    loop {
        match client
            .post(&env.callback)
            .bearer_auth(&env.token)
            .json(&body)
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => {
                remove(&path);
                tracing::info!(node = %env.node, "first boot reported");
                return;
            }
            Ok(r) if r.status().is_client_error() => {
                // The install is over (withdrawn token, a reinstall meanwhile): forget it.
                tracing::warn!(node = %env.node, status = %r.status(), "the callback refused the first boot");
                remove(&path);
                return;
            }
            Ok(r) => {
                tracing::warn!(status = %r.status(), "the callback did not take the first boot")
            }
            Err(e) => tracing::warn!(error = %e, "the callback did not answer the first boot"),
        }
        if started.elapsed() > TRY_FOR {
            tracing::warn!(node = %env.node, "the first boot was not reported; the next start tries again");
            return;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

fn remove(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        tracing::warn!(file = %path.display(), error = %e, "cannot remove the first boot's file");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_installer_writes() {
        let env = parse(
            "VC_CALLBACK='http://10.1.0.253/install/callback'\nVC_TOKEN='abc-_09'\nVC_NODE='c-node-1'\n",
        )
        .unwrap();
        assert_eq!(env.callback, "http://10.1.0.253/install/callback");
        assert_eq!(env.token, "abc-_09");
        assert_eq!(env.node, "c-node-1");
    }

    #[test]
    fn refuses_anything_else_naming_the_line() {
        for (text, want) in [
            ("VC_CALLBACK=http://x\n", "line 1: expected"),
            ("VC_TOKEN='a'b'\n", "line 1: expected"),
            ("VC_NODE='n'\nPATH='/tmp'\n", "line 2: unknown name PATH"),
            ("VC_NODE='n'\nVC_NODE='m'\n", "line 2: VC_NODE given twice"),
            ("VC_NODE='n'\nVC_TOKEN='t'\n", "no VC_CALLBACK"),
            (
                "VC_CALLBACK='file:///etc/passwd'\nVC_TOKEN='t'\nVC_NODE='n'\n",
                "not an HTTP URL",
            ),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }
}
