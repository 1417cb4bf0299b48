//! The CLI's config file: kubectl-like contexts, so users stop exporting variables.
//!
//! ```toml
//! current_context = "prod"
//!
//! [contexts.prod]
//! api = "https://controller.example:7200"
//! ca = "/etc/vcluster/ca.pem"            # or: ca_fingerprint = "AB:CD:..."
//! token_file = "~/.config/vcluster/prod.token"
//! ```
//!
//! The file is `$VCLUSTER_CONFIG`, else `$XDG_CONFIG_HOME/vcluster/config.toml`, else
//! `~/.config/vcluster/config.toml`. Unknown keys are refused with the file and line.
//! Relative paths (and `~/`) in a context are taken from the file's directory (the
//! home directory). The file holds no secret itself: tokens stay in their own files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CliConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// One controller and how to reach it.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Context {
    /// The controller's URL.
    pub api: String,
    /// The controller's CA certificate (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// Or the CA's SHA-256 fingerprint, as `vcluster serve` printed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_fingerprint: Option<String>,
    /// A file holding the token (mode 0600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: cannot write: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: context {name:?}: {message}")]
    Context {
        path: PathBuf,
        name: String,
        message: String,
    },
    #[error("no config file location: set VCLUSTER_CONFIG or HOME")]
    NoLocation,
}

/// Where the config file is, and whether the user named it (then it must exist).
pub fn config_path() -> Result<(PathBuf, bool), ConfigError> {
    if let Some(p) = std::env::var_os("VCLUSTER_CONFIG").filter(|p| !p.is_empty()) {
        return Ok((PathBuf::from(p), true));
    }
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|p| !p.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => home().ok_or(ConfigError::NoLocation)?.join(".config"),
    };
    Ok((base.join("vcluster").join("config.toml"), false))
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

impl CliConfig {
    /// Parses the file's text; errors name the file and the line (toml's spans).
    pub fn parse(path: &Path, text: &str) -> Result<CliConfig, ConfigError> {
        let config: CliConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        for (name, c) in &config.contexts {
            let bad = |message: &str| ConfigError::Context {
                path: path.to_path_buf(),
                name: name.clone(),
                message: message.to_string(),
            };
            if c.ca.is_some() && c.ca_fingerprint.is_some() {
                return Err(bad("give ca or ca_fingerprint, not both"));
            }
            if let Some(f) = &c.ca_fingerprint
                && let Err(e) = f.parse::<crate::tls::Fingerprint>()
            {
                return Err(bad(&format!("ca_fingerprint: {e}")));
            }
        }
        if let Some(cur) = &config.current_context
            && !config.contexts.contains_key(cur)
        {
            return Err(ConfigError::Context {
                path: path.to_path_buf(),
                name: cur.clone(),
                message: "current_context names no [contexts] entry".into(),
            });
        }
        Ok(config)
    }

    /// Reads `path`; a missing file is an empty config unless `required`.
    pub fn load(path: &Path, required: bool) -> Result<CliConfig, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => CliConfig::parse(path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                Ok(CliConfig::default())
            }
            Err(source) => Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Writes the file (mode 0600, its directory made if needed).
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        let error = |source| ConfigError::Write {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(error)?;
        }
        let text = toml::to_string(self).expect("the config serialises");
        crate::secret::write_secret_file(path, text.as_bytes()).map_err(|e| ConfigError::Write {
            path: path.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })
    }

    /// The context `name` (or the current one when `None`), if any.
    pub fn context(
        &self,
        path: &Path,
        name: Option<&str>,
    ) -> Result<Option<(String, Context)>, ConfigError> {
        let Some(name) = name.or(self.current_context.as_deref()) else {
            return Ok(None);
        };
        match self.contexts.get(name) {
            Some(c) => Ok(Some((name.to_string(), c.resolved(path)))),
            None => Err(ConfigError::Context {
                path: path.to_path_buf(),
                name: name.to_string(),
                message: format!(
                    "no such context (the file has: {})",
                    if self.contexts.is_empty() {
                        "none".to_string()
                    } else {
                        self.contexts.keys().cloned().collect::<Vec<_>>().join(", ")
                    }
                ),
            }),
        }
    }
}

impl Context {
    /// Paths made absolute: `~/` from the home directory, relative ones from the config
    /// file's directory.
    fn resolved(&self, config_file: &Path) -> Context {
        let dir = config_file.parent().unwrap_or(Path::new("."));
        let fix = |p: &PathBuf| -> PathBuf {
            if let (Ok(rest), Some(h)) = (p.strip_prefix("~"), home()) {
                h.join(rest)
            } else if p.is_relative() {
                dir.join(p)
            } else {
                p.clone()
            }
        };
        Context {
            api: self.api.clone(),
            ca: self.ca.as_ref().map(fix),
            ca_fingerprint: self.ca_fingerprint.clone(),
            token_file: self.token_file.as_ref().map(fix),
        }
    }
}

// ---------------------------------------------------------------------------------------
// `vcluster config`

/// `vcluster config`: the CLI's config file.
#[derive(Debug, clap::Args)]
pub struct ConfigCmd {
    #[command(subcommand)]
    pub sub: ConfigSub,
}

#[derive(Debug, clap::Subcommand)]
pub enum ConfigSub {
    /// Print the config file (its path first).
    View,
    /// Make NAME the current context.
    UseContext { name: String },
    /// Add context NAME or change the settings given.
    SetContext {
        name: String,
        #[arg(long)]
        api: Option<String>,
        /// The controller's CA certificate (PEM).
        #[arg(long, conflicts_with = "ca_fingerprint")]
        ca: Option<PathBuf>,
        /// Or the CA's SHA-256 fingerprint.
        #[arg(long)]
        ca_fingerprint: Option<String>,
        /// A file holding the token (mode 0600).
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
}

pub fn config(c: ConfigCmd) -> anyhow::Result<()> {
    let (path, _) = config_path()?;
    let mut file = CliConfig::load(&path, false)?;
    match c.sub {
        ConfigSub::View => {
            println!("# {}", path.display());
            print!("{}", toml::to_string(&file).expect("the config serialises"));
            return Ok(());
        }
        ConfigSub::UseContext { name } => {
            if !file.contexts.contains_key(&name) {
                file.context(&path, Some(&name))?;
            }
            file.current_context = Some(name);
        }
        ConfigSub::SetContext {
            name,
            api,
            ca,
            ca_fingerprint,
            token_file,
        } => {
            if let Some(f) = &ca_fingerprint {
                f.parse::<crate::tls::Fingerprint>()?;
            }
            let absolute = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
            let entry = file.contexts.entry(name.clone()).or_default();
            if let Some(api) = api {
                entry.api = api;
            }
            if let Some(ca) = ca {
                entry.ca = Some(absolute(ca));
                entry.ca_fingerprint = None;
            }
            if let Some(f) = ca_fingerprint {
                entry.ca_fingerprint = Some(f);
                entry.ca = None;
            }
            if let Some(t) = token_file {
                entry.token_file = Some(absolute(t));
            }
            if entry.api.is_empty() {
                anyhow::bail!("context {name:?} is new: give it --api URL");
            }
            if file.current_context.is_none() {
                file.current_context = Some(name);
            }
        }
    }
    file.save(&path)?;
    println!("wrote {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_parse_and_paths_resolve_from_the_file() {
        let text = r#"
current_context = "prod"
[contexts.prod]
api = "https://ctl:7200"
ca = "ca.pem"
token_file = "/etc/vcluster/me.token"
[contexts.lab]
api = "https://lab:7200"
ca_fingerprint = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
"#;
        let path = Path::new("/home/u/.config/vcluster/config.toml");
        let c = CliConfig::parse(path, text).unwrap();
        let (name, prod) = c.context(path, None).unwrap().unwrap();
        assert_eq!(name, "prod");
        assert_eq!(
            prod.ca.unwrap(),
            Path::new("/home/u/.config/vcluster/ca.pem")
        );
        assert_eq!(
            prod.token_file.unwrap(),
            Path::new("/etc/vcluster/me.token")
        );
        let (_, lab) = c.context(path, Some("lab")).unwrap().unwrap();
        assert_eq!(lab.api, "https://lab:7200");
        let e = c.context(path, Some("nope")).unwrap_err().to_string();
        assert!(e.contains("nope") && e.contains("lab, prod"), "{e}");
    }

    #[test]
    fn unknown_keys_are_refused_with_file_and_line() {
        let text = "[contexts.prod]\napi = \"https://ctl:7200\"\ntoken = \"secret\"\n";
        let path = Path::new("/tmp/vc.toml");
        let e = CliConfig::parse(path, text).unwrap_err().to_string();
        assert!(e.starts_with("/tmp/vc.toml: "), "{e}");
        assert!(e.contains("line 3"), "{e}");
        assert!(e.contains("unknown field `token`"), "{e}");
    }

    #[test]
    fn a_bad_fingerprint_or_both_pins_or_a_dangling_current_context_are_refused() {
        let path = Path::new("/tmp/vc.toml");
        let both = "[contexts.a]\napi = \"https://x\"\nca = \"c\"\nca_fingerprint = \"00\"\n";
        assert!(CliConfig::parse(path, both).is_err());
        let bad = "[contexts.a]\napi = \"https://x\"\nca_fingerprint = \"zz\"\n";
        let e = CliConfig::parse(path, bad).unwrap_err().to_string();
        assert!(
            e.contains("context \"a\"") && e.contains("ca_fingerprint"),
            "{e}"
        );
        let dangling = "current_context = \"b\"\n[contexts.a]\napi = \"https://x\"\n";
        assert!(CliConfig::parse(path, dangling).is_err());
    }

    #[test]
    fn saved_configs_read_back_and_are_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/config.toml");
        let mut c = CliConfig::default();
        c.contexts.insert(
            "a".into(),
            Context {
                api: "https://x:7200".into(),
                ca: Some("/ca.pem".into()),
                ..Context::default()
            },
        );
        c.current_context = Some("a".into());
        c.save(&path).unwrap();
        assert_eq!(CliConfig::load(&path, true).unwrap(), c);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
