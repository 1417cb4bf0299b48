//! Configuration of the package cache: the TOML file, its defaults, and the command-line
//! overrides applied on top of it.
//!
//! This module only parses and validates; it never opens a socket or touches the store
//! directory. Every error names the file and the field, so an operator can fix the file
//! without reading code.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

/// A size in bytes, written in the file as an integer (`1048576`) or a string with a
/// binary or decimal unit (`"500MiB"`, `"20G"`, `"4 kB"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let num: u64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a size (examples: 1048576, \"500MiB\", \"20G\")"))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1_000,
            "ki" | "kib" => 1 << 10,
            "m" | "mb" => 1_000_000,
            "mi" | "mib" => 1 << 20,
            "g" | "gb" => 1_000_000_000,
            "gi" | "gib" => 1 << 30,
            "t" | "tb" => 1_000_000_000_000,
            "ti" | "tib" => 1 << 40,
            other => return Err(format!("unknown size unit {other:?} in {s:?}")),
        };
        num.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("size {s:?} overflows"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Str(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// What the cache does with an HTTPS `CONNECT` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ConnectPolicy {
    /// Answer 403: the cache only carries plain HTTP (the default).
    #[default]
    Refuse,
    /// Open a TCP tunnel to the requested host (ports in `connect_ports` only). The
    /// tunnelled bytes are encrypted end to end and never cached.
    Tunnel,
}

/// Which request paths are stored forever, revalidated, or never stored. Patterns are
/// globs over the URL path where `*` matches any run of characters (slashes included),
/// tried in the order `pass`, `revalidate`, `immutable`: the first list with a match wins.
/// The lists here are added to the built-in defaults (see `policy.rs`), not replacing them.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    pub immutable: Vec<String>,
    pub revalidate: Vec<String>,
    pub pass: Vec<String>,
}

/// The whole `vcluster cache` configuration. See `docs/cache.md` for every field.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Address the proxy listens on (port 0: any free port, printed at start).
    pub listen: SocketAddr,
    /// Directory of the persistent store; created if missing.
    pub store: PathBuf,
    /// Upper bound of stored object bytes; least recently used objects go first.
    pub max_size: ByteSize,
    /// Seconds an index (Release, Packages, repomd.xml...) is served without asking the
    /// upstream whether it changed.
    pub fresh_secs: u64,
    /// Accept absolute-form requests (`GET http://host/path`), as apt's and dnf's
    /// `proxy` settings send them.
    pub forward_proxy: bool,
    /// Answer hits of stored objects with sendfile(2) ahead of hyper (`sendfile.rs`);
    /// `false`: every request goes through hyper (for comparison, or to rule it out).
    pub sendfile: bool,
    /// What to do with `CONNECT host:port`.
    pub connect: ConnectPolicy,
    /// Ports a `CONNECT` tunnel may reach.
    pub connect_ports: Vec<u16>,
    /// File the access log is appended to; without it, access lines go to the log
    /// (target `vcluster::cache::access`, level info).
    pub access_log: Option<PathBuf>,
    /// Seconds to wait for a TCP connection to the upstream.
    pub upstream_connect_timeout_secs: u64,
    /// Seconds the upstream may stay silent (no response head, no body bytes) before the
    /// download is abandoned as failed.
    pub upstream_idle_timeout_secs: u64,
    /// Times in a row a download cut mid-body is resumed (by `Range` + `If-Range` from
    /// the byte on disk) without getting a new byte before it fails; 0: never resumed.
    pub upstream_resume_attempts: u32,
    /// Largest request head (request line + headers) accepted; larger gets 431.
    pub max_header_bytes: usize,
    /// Mirror prefixes: `debian = "http://deb.debian.org/debian"` serves
    /// `/debian/...` from that base URL.
    pub mirrors: BTreeMap<String, String>,
    pub policy: PolicyConfig,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            listen: "0.0.0.0:3142".parse().expect("literal address"),
            store: PathBuf::from("/var/cache/vcluster"),
            max_size: ByteSize(10 << 30),
            fresh_secs: 60,
            forward_proxy: true,
            sendfile: true,
            connect: ConnectPolicy::Refuse,
            connect_ports: vec![443],
            access_log: None,
            upstream_connect_timeout_secs: 10,
            upstream_idle_timeout_secs: 60,
            upstream_resume_attempts: 3,
            max_header_bytes: 16 * 1024,
            mirrors: BTreeMap::new(),
            policy: PolicyConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{origin}: field `{field}`: {message}")]
    Invalid {
        origin: String,
        field: String,
        message: String,
    },
}

/// A validated mirror: requests under `/<prefix>/` go to `base` + the rest of the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    pub prefix: String,
    /// `http://host[:port]/path/`, always ending in `/`.
    pub base: String,
}

impl CacheConfig {
    /// Reads and validates a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let cfg = Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            ConfigError::Invalid { field, message, .. } => ConfigError::Invalid {
                origin: path.display().to_string(),
                field,
                message,
            },
            other => other,
        })?;
        Ok(cfg)
    }

    /// Parses TOML text and validates it.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let cfg: CacheConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<config>"),
            message: e.to_string(),
        })?;
        cfg.validate("<config>")?;
        Ok(cfg)
    }

    /// Checks every field that serde's types do not already check.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |field: &str, message: String| ConfigError::Invalid {
            origin: origin.to_owned(),
            field: field.to_owned(),
            message,
        };
        if self.max_size.0 == 0 {
            return Err(invalid("max_size", "must be more than 0".into()));
        }
        if self.max_header_bytes < 8192 {
            return Err(invalid(
                "max_header_bytes",
                format!("{} is below the minimum of 8192", self.max_header_bytes),
            ));
        }
        if self.upstream_idle_timeout_secs == 0 || self.upstream_connect_timeout_secs == 0 {
            return Err(invalid(
                "upstream_*_timeout_secs",
                "timeouts must be at least 1 second".into(),
            ));
        }
        for (prefix, base) in &self.mirrors {
            Mirror::new(prefix, base).map_err(|m| invalid(&format!("mirrors.{prefix}"), m))?;
        }
        for (list, pats) in [
            ("policy.immutable", &self.policy.immutable),
            ("policy.revalidate", &self.policy.revalidate),
            ("policy.pass", &self.policy.pass),
        ] {
            if let Some(p) = pats.iter().find(|p| p.is_empty()) {
                return Err(invalid(list, format!("empty pattern {p:?}")));
            }
        }
        Ok(())
    }

    /// The mirror table, validated and ordered longest prefix first.
    pub fn mirror_table(&self) -> Vec<Mirror> {
        let mut v: Vec<Mirror> = self
            .mirrors
            .iter()
            .filter_map(|(p, b)| Mirror::new(p, b).ok())
            .collect();
        v.sort_by_key(|m| std::cmp::Reverse(m.prefix.len()));
        v
    }
}

impl Mirror {
    /// Validates one `prefix = "base URL"` mapping.
    pub fn new(prefix: &str, base: &str) -> Result<Mirror, String> {
        let prefix = prefix.trim_matches('/');
        if prefix.is_empty()
            || prefix.starts_with('_')
            || !prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.~/".contains(&b))
            || prefix
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == "..")
        {
            return Err(format!(
                "prefix {prefix:?} must be path segments of [A-Za-z0-9-_.~], not starting with '_'"
            ));
        }
        let uri: http::Uri = base
            .parse()
            .map_err(|e| format!("base URL {base:?} does not parse: {e}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(s) => {
                return Err(format!(
                    "base URL {base:?}: scheme {s:?} is not supported (the cache speaks plain http upstream)"
                ));
            }
            None => return Err(format!("base URL {base:?} needs http://host")),
        }
        if uri.host().is_none() || uri.query().is_some() {
            return Err(format!("base URL {base:?} needs a host and no query"));
        }
        let mut base = base.to_owned();
        if !base.ends_with('/') {
            base.push('/');
        }
        Ok(Mirror {
            prefix: prefix.to_owned(),
            base,
        })
    }
}

/// Parses `PREFIX=URL` as given to `--mirror`.
pub fn parse_mirror_flag(s: &str) -> Result<(String, String), String> {
    let (p, u) = s
        .split_once('=')
        .ok_or_else(|| format!("--mirror {s:?}: expected PREFIX=URL"))?;
    Mirror::new(p, u)?;
    Ok((p.trim_matches('/').to_owned(), u.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_and_without_units() {
        assert_eq!("1048576".parse::<ByteSize>().unwrap().0, 1 << 20);
        assert_eq!("500MiB".parse::<ByteSize>().unwrap().0, 500 << 20);
        assert_eq!("20G".parse::<ByteSize>().unwrap().0, 20_000_000_000);
        assert_eq!("4 kB".parse::<ByteSize>().unwrap().0, 4000);
        assert!("12 parsecs".parse::<ByteSize>().is_err());
        assert!("MiB".parse::<ByteSize>().is_err());
    }

    #[test]
    fn full_file_parses_and_unknown_fields_are_rejected() {
        let cfg = CacheConfig::from_toml(
            r#"
            listen = "127.0.0.1:0"
            store = "/tmp/x"
            max_size = "2GiB"
            fresh_secs = 5
            connect = "tunnel"
            [mirrors]
            debian = "http://127.0.0.1:8080/debian"
            [policy]
            immutable = ["*.iso"]
            "#,
        )
        .unwrap();
        assert_eq!(cfg.max_size, ByteSize(2 << 30));
        assert_eq!(cfg.connect, ConnectPolicy::Tunnel);
        assert_eq!(cfg.mirror_table()[0].base, "http://127.0.0.1:8080/debian/");
        let err = CacheConfig::from_toml("lisen = \"1.2.3.4:5\"").unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
    }

    #[test]
    fn bad_mirror_is_named_in_the_error() {
        let err = CacheConfig::from_toml("[mirrors]\ndebian = \"https://x/debian\"").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("mirrors.debian") && msg.contains("https"),
            "{msg}"
        );
        assert!(Mirror::new("../etc", "http://x/").is_err());
        assert!(Mirror::new("_cache", "http://x/").is_err());
    }
}
