//! The daemon's configuration: the TOML file (`docs/config.md` documents every field),
//! whose `[[network]]` tables are the control API's [`NetworkSpec`] (from `vpnd-api`: a
//! network added at runtime is read and checked exactly like one in the file).
//!
//! Values are parsed while they are deserialised (keys, addresses, MACs, ciphers), so a
//! bad value is reported by toml with its line, column and text; checks made after
//! parsing (ranges, duplicate ids, key files) name the file, the line of the field they
//! are about and the field. Nothing here touches the network: it only reads the config
//! and key files.

use std::collections::HashSet;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use vpn_core::{PrivateKey, PublicKey};
use vpnd_api::NetworkSpec;

pub const DEFAULT_LISTEN: &str = "0.0.0.0:51820";
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/vpnd/control.sock";
/// The largest TAP MTU: a frame of MTU + 14 (Ethernet) + 4 (802.1Q) bytes must fit the
/// overlay's 1522-byte maximum.
pub const MAX_MTU: u16 = 1500;
pub const MIN_MTU: u16 = 576;
/// Linux interface names are at most 15 bytes.
const IFNAMSIZ: usize = 15;

/// A configuration error: where, which field, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: Option<PathBuf>,
    pub line: Option<usize>,
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}", file.display())?;
            if let Some(line) = self.line {
                write!(f, ":{line}")?;
            }
            f.write_str(": ")?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    fn field(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: None,
            line: None,
            field: field.into(),
            message: message.into(),
        }
    }

    fn at(mut self, file: &Path, line: Option<usize>) -> ConfigError {
        self.file = Some(file.to_path_buf());
        self.line = self.line.or(line);
        self
    }
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    private_key: Option<Secret<PrivateKey>>,
    private_key_file: Option<PathBuf>,
    #[serde(default)]
    listen: Option<Vec<SocketAddr>>,
    control_socket: Option<PathBuf>,
    metrics: Option<SocketAddr>,
    workers: Option<usize>,
    offload: Option<bool>,
    busy_poll_us: Option<u64>,
    #[serde(default, rename = "network")]
    networks: Vec<toml::Spanned<NetworkSpec>>,
}

/// A secret value parsed from base64; never printed.
#[derive(Clone)]
pub struct Secret<T>(pub T);

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

impl<'de, T: FromStr> Deserialize<'de> for Secret<T>
where
    T::Err: fmt::Display,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map(Secret)
            .map_err(|e| serde::de::Error::custom(format!("invalid key: {e}")))
    }
}

/// A validated configuration, ready to run.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub private_key: PrivateKey,
    pub listen: Vec<SocketAddr>,
    pub control_socket: PathBuf,
    pub metrics: Option<SocketAddr>,
    pub data_path: crate::daemon::DataPathOptions,
    pub networks: Vec<NetworkSpec>,
}

/// Longest `busy_poll_us`: one second. Beyond the default (200 µs), values longer than
/// the gap between packets keep a core spinning as long as any traffic flows, the
/// low-latency mode for hosts whose CPUs are slow to wake (docs/config.md).
const MAX_BUSY_POLL_US: u64 = 1_000_000;

impl DaemonConfig {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<DaemonConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: Some(path.to_path_buf()),
            line: None,
            field: String::new(),
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, path)
    }

    /// Parses config text; `path` names it in errors and anchors relative key paths.
    pub fn parse(text: &str, path: &Path) -> Result<DaemonConfig, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            ConfigError {
                file: Some(path.to_path_buf()),
                line,
                field: line.map(|l| quote_line(text, l)).unwrap_or_default(),
                message: e.message().trim().to_string(),
            }
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let lines = KeyLines::new(text);
        let at = |key: &str| {
            let line = lines.top(key);
            move |e: ConfigError| e.at(path, line)
        };
        let private_key = match (file.private_key, &file.private_key_file) {
            (Some(k), None) => k.0,
            (None, Some(key_file)) => {
                read_key_file::<PrivateKey>("private_key_file", &base.join(key_file))
                    .map_err(at("private_key_file"))?
            }
            (Some(_), Some(_)) => {
                return Err(at("private_key_file")(ConfigError::field(
                    "private_key_file",
                    "set private_key or private_key_file, not both",
                )));
            }
            (None, None) => {
                return Err(ConfigError::field(
                    "private_key",
                    "missing: set private_key (base64, from `vpnd keygen`) or private_key_file",
                )
                .at(path, None));
            }
        };
        let listen = file
            .listen
            .unwrap_or_else(|| vec![DEFAULT_LISTEN.parse().expect("default")]);
        if listen.is_empty() {
            return Err(at("listen")(ConfigError::field(
                "listen",
                "needs at least one address",
            )));
        }
        let mut data_path = crate::daemon::DataPathOptions::default();
        if let Some(w) = file.workers {
            if !(1..=64).contains(&w) {
                return Err(at("workers")(ConfigError::field(
                    "workers",
                    format!("{w} is outside 1..=64"),
                )));
            }
            data_path.workers = w;
        }
        if let Some(o) = file.offload {
            data_path.offload = o;
        }
        if let Some(us) = file.busy_poll_us {
            if us > MAX_BUSY_POLL_US {
                return Err(at("busy_poll_us")(ConfigError::field(
                    "busy_poll_us",
                    format!("{us} is above {MAX_BUSY_POLL_US} (1 s)"),
                )));
            }
            data_path.busy_poll = Duration::from_micros(us);
        }
        let own_key = private_key.public_key();
        let mut seen_ids = HashSet::new();
        let mut seen_taps = HashSet::new();
        let mut networks = Vec::with_capacity(file.networks.len());
        for (n, spanned) in file.networks.into_iter().enumerate() {
            let table_line = line_of(text, spanned.span().start);
            let mut spec = spanned.into_inner();
            // The line of the field an error is about, or of the table if the field is
            // not written (a default).
            let at = |field: NetworkField| {
                let line = lines.network(n, field).unwrap_or(table_line);
                move |e: ConfigError| e.at(path, Some(line))
            };
            let psk_field = NetworkField::Key("psk_file");
            if let Some(psk_file) = &spec.psk_file {
                let name = format!("network {}: psk_file", spec.id);
                if spec.psk.is_some() {
                    return Err(at(psk_field)(ConfigError::field(
                        name,
                        "set psk or psk_file, not both",
                    )));
                }
                spec.psk = Some(read_key_file(&name, &base.join(psk_file)).map_err(at(psk_field))?);
            }
            check(&spec, &own_key).map_err(|(field, e)| at(field)(e))?;
            if !seen_ids.insert(spec.id) {
                return Err(at(NetworkField::Key("id"))(ConfigError::field(
                    format!("network {}: id", spec.id),
                    "another network has the same id",
                )));
            }
            if !seen_taps.insert(spec.tap.clone()) {
                return Err(at(NetworkField::Key("tap"))(ConfigError::field(
                    format!("network {}: tap", spec.id),
                    format!("TAP {:?} is used by another network", spec.tap),
                )));
            }
            networks.push(spec);
        }
        Ok(DaemonConfig {
            private_key,
            listen,
            control_socket: file
                .control_socket
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL_SOCKET)),
            metrics: file.metrics,
            data_path,
            networks,
        })
    }
}

/// What the daemon does with a network spec beyond reading it: check it, and build
/// `vpn-core`'s configuration from it.
pub trait NetworkSpecExt {
    /// Checks the network on its own (the daemon checks it against the others).
    fn validate(&self, own_key: &PublicKey) -> Result<(), ConfigError>;
    /// The `vpn-core` configuration of this network.
    fn core_config(&self, private_key: PrivateKey, index_tag: u16) -> vpn_core::NetworkConfig;
}

impl NetworkSpecExt for NetworkSpec {
    fn validate(&self, own_key: &PublicKey) -> Result<(), ConfigError> {
        check(self, own_key).map_err(|(_, e)| e)
    }

    fn core_config(&self, private_key: PrivateKey, index_tag: u16) -> vpn_core::NetworkConfig {
        let mut c = vpn_core::NetworkConfig::new(self.id, private_key);
        c.cipher = self.cipher;
        c.psk = self.psk.clone();
        c.path_mtu = self.path_mtu;
        c.index_tag = index_tag;
        c.switch.arp_suppression = self.arp_suppression;
        c.switch.mac_ageing = Duration::from_secs(self.mac_ageing_secs);
        c.switch.site_local = self
            .site_local
            .iter()
            .map(|s| vpn_core::SiteLocalAddr {
                ip: s.ip,
                mac: s.mac,
            })
            .collect();
        c.timers.persistent_keepalive = (self.persistent_keepalive_secs > 0)
            .then(|| Duration::from_secs(self.persistent_keepalive_secs));
        c
    }
}

/// [`NetworkSpecExt::validate`], telling which field is wrong so that a config file's
/// error can name its line.
fn check(spec: &NetworkSpec, own_key: &PublicKey) -> Result<(), (NetworkField, ConfigError)> {
    let error = |name: &'static str, message: String| {
        let field = format!("network {}: {name}", spec.id);
        (NetworkField::Key(name), ConfigError::field(field, message))
    };
    if !valid_ifname(&spec.tap) {
        return Err(error(
            "tap",
            format!(
                "{:?} is not a valid interface name (1-15 characters, no '/', ':' or spaces)",
                spec.tap
            ),
        ));
    }
    if let Some(bridge) = &spec.bridge
        && !valid_ifname(bridge)
    {
        return Err(error(
            "bridge",
            format!("{bridge:?} is not a valid interface name"),
        ));
    }
    if !(MIN_MTU..=MAX_MTU).contains(&spec.mtu) {
        return Err(error(
            "mtu",
            format!("{} is outside {MIN_MTU}..={MAX_MTU}", spec.mtu),
        ));
    }
    if spec.path_mtu < vpn_core::config::MIN_PATH_MTU {
        return Err(error(
            "path_mtu",
            format!(
                "{} is below the minimum {}",
                spec.path_mtu,
                vpn_core::config::MIN_PATH_MTU
            ),
        ));
    }
    if spec.mac_ageing_secs == 0 {
        return Err(error("mac_ageing_secs", "must be at least 1".into()));
    }
    let mut keys = HashSet::new();
    for (i, peer) in spec.peers.iter().enumerate() {
        let error = |name: &'static str, message: String| {
            let field = format!(
                "network {}: peer {}: {name}",
                spec.id,
                peer.name.clone().unwrap_or_else(|| (i + 1).to_string())
            );
            (
                NetworkField::Peer(i, name),
                ConfigError::field(field, message),
            )
        };
        if peer.public_key == *own_key {
            return Err(error("public_key", "is this host's own key".into()));
        }
        if !keys.insert(peer.public_key) {
            return Err(error("public_key", "appears twice in this network".into()));
        }
        if let Some(endpoint) = &peer.endpoint {
            check_endpoint_syntax(endpoint).map_err(|m| error("endpoint", m))?;
        }
    }
    Ok(())
}

/// Resolves a `host:port` endpoint (a literal address needs no lookup).
pub fn resolve_endpoint(endpoint: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = endpoint.parse() {
        return Ok(addr);
    }
    endpoint
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {endpoint:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{endpoint:?} resolves to no address"))
}

fn check_endpoint_syntax(endpoint: &str) -> Result<(), String> {
    if endpoint.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let bad = || {
        format!(
            "{endpoint:?} is not host:port (an IPv6 address goes in brackets: [2001:db8::1]:51820)"
        )
    };
    let (host, port) = endpoint.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || host.contains(':') || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    Ok(())
}

fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= IFNAMSIZ
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

/// Reads a base64 key from a file that only its owner may read. Errors name `field`
/// (the setting that names the file) and the file.
pub fn read_key_file<T: FromStr>(field: &str, path: &Path) -> Result<T, ConfigError>
where
    T::Err: fmt::Display,
{
    let error =
        |message: String| ConfigError::field(field, format!("{}: {message}", path.display()));
    let meta = std::fs::metadata(path).map_err(|e| error(format!("cannot read: {e}")))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(error(format!(
            "mode {mode:04o} lets others read a secret key; run: chmod 600 {}",
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| error(format!("cannot read: {e}")))?;
    text.trim()
        .parse()
        .map_err(|e| error(format!("invalid key: {e}")))
}

/// A field of a `[[network]]` table, as a config file has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NetworkField {
    Key(&'static str),
    /// A field of the network's peer with this index.
    Peer(usize, &'static str),
}

/// The lines of a parsed file's keys, so that errors found after parsing name the line of
/// their field (toml reports its own errors with their lines).
struct KeyLines<'i> {
    text: &'i str,
    root: Option<toml::de::DeTable<'i>>,
}

impl<'i> KeyLines<'i> {
    fn new(text: &'i str) -> KeyLines<'i> {
        KeyLines {
            text,
            root: toml::de::DeTable::parse(text).ok().map(|t| t.into_inner()),
        }
    }

    /// The line of a top-level key.
    fn top(&self, key: &str) -> Option<usize> {
        self.key_line(self.root.as_ref()?, key)
    }

    /// The line of a field of the `n`th `[[network]]` table.
    fn network(&self, n: usize, field: NetworkField) -> Option<usize> {
        let networks = self.root.as_ref()?.get("network")?.get_ref().as_array()?;
        let table = networks.get(n)?.get_ref().as_table()?;
        match field {
            NetworkField::Key(key) => self.key_line(table, key),
            NetworkField::Peer(i, key) => {
                let peers = ["peer", "peers"]
                    .iter()
                    .find_map(|k| table.get(*k))?
                    .get_ref()
                    .as_array()?;
                let peer = peers.get(i)?.get_ref().as_table()?;
                self.key_line(peer, key)
            }
        }
    }

    fn key_line(&self, table: &toml::de::DeTable<'_>, key: &str) -> Option<usize> {
        let (k, _) = table.get_key_value(key)?;
        Some(line_of(self.text, k.span().start))
    }
}

/// The text of a line, to name the field an error is about; secret values are hidden.
fn quote_line(text: &str, line: usize) -> String {
    let l = text.lines().nth(line - 1).unwrap_or("").trim();
    let secret = ["private_key", "psk"]
        .iter()
        .any(|k| l.starts_with(k) && !l.starts_with(&format!("{k}_file")));
    match l.split_once('=') {
        Some((key, _)) if secret => format!("{}= <secret>", key),
        _ if l.len() > 80 => format!("{}...", &l[..l.floor_char_boundary(77)]),
        _ => l.to_string(),
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use vpn_core::Cipher;

    const KEY: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
    const PEER: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";

    fn parse(text: &str) -> Result<DaemonConfig, ConfigError> {
        DaemonConfig::parse(text, Path::new("/etc/vpnd/vpnd.toml"))
    }

    fn ok_config() -> String {
        format!(
            r#"
private_key = "{KEY}"
listen = ["0.0.0.0:51820", "[::]:51820"]

[[network]]
id = 1
tap = "vpn1"
bridge = "br0"
cipher = "chacha20-poly1305"

[[network.site_local]]
ip = "10.1.255.254"
mac = "02:00:00:00:ff:fe"

[[network.peer]]
name = "site2"
public_key = "{PEER}"
endpoint = "198.51.100.2:51820"
"#
        )
    }

    #[test]
    fn a_complete_config_parses_with_defaults_filled_in() {
        let c = parse(&ok_config()).unwrap();
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.control_socket, PathBuf::from(DEFAULT_CONTROL_SOCKET));
        let n = &c.networks[0];
        assert_eq!(
            (n.mtu, n.path_mtu, n.cipher),
            (1500, 1500, Cipher::ChaCha20Poly1305)
        );
        assert!(n.arp_suppression);
        assert_eq!(n.site_local[0].mac.to_string(), "02:00:00:00:ff:fe");
        assert_eq!(n.peers[0].public_key.to_string(), PEER);
        let core = n.core_config(c.private_key.clone(), 3);
        assert_eq!(core.index_tag, 3);
        assert_eq!(core.switch.site_local.len(), 1);
    }

    fn error_of(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn a_bad_value_names_file_line_and_value() {
        let text = ok_config().replace(PEER, "not-a-key");
        let e = error_of(&text);
        assert!(
            e.starts_with("/etc/vpnd/vpnd.toml:17: public_key = "),
            "{e}"
        );
        assert!(e.contains("not-a-key"), "{e}");
    }

    #[test]
    fn busy_poll_up_to_one_second_is_taken_and_more_is_refused() {
        let with = |us: u64| format!("busy_poll_us = {us}\n{}", ok_config());
        let c = parse(&with(50_000)).unwrap();
        assert_eq!(c.data_path.busy_poll, Duration::from_millis(50));
        let e = error_of(&with(1_000_001));
        assert!(
            e.contains("busy_poll_us") && e.contains("1000001 is above 1000000"),
            "{e}"
        );
    }

    #[test]
    fn an_unknown_field_is_named_with_its_line() {
        let text = ok_config().replace("cipher =", "ciper =");
        let e = error_of(&text);
        assert!(e.contains(":9: ") && e.contains("ciper"), "{e}");
    }

    #[test]
    fn a_bad_cipher_mac_or_address_is_named() {
        for (from, to, expect) in [
            ("chacha20-poly1305", "rot13", "rot13"),
            ("02:00:00:00:ff:fe", "02:00:00:00:ff", "02:00:00:00:ff"),
            (
                "\"10.1.255.254\"",
                "\"10.1.255.999\"",
                ":12: ip = \"10.1.255.999\": invalid IPv4",
            ),
            ("[::]:51820", "[::]", ":3:"),
        ] {
            let e = error_of(&ok_config().replace(from, to));
            assert!(e.contains(expect), "{from} -> {to}: {e}");
        }
    }

    /// Asserts that `text` (parsed as `path`) fails with an error starting with the file,
    /// `line` and `field`, followed by `message`.
    fn assert_error_at(text: &str, path: &Path, line: usize, field: &str, message: &str) {
        let e = DaemonConfig::parse(text, path).unwrap_err();
        let shown = e.to_string();
        assert_eq!(
            (e.file.as_deref(), e.line, e.field.as_str()),
            (Some(path), Some(line), field),
            "{shown}"
        );
        let prefix = format!("{}:{line}: {field}: ", path.display());
        assert!(shown.starts_with(&prefix), "{shown}");
        assert!(shown.contains(message), "{shown}");
    }

    #[test]
    fn errors_found_after_parsing_name_the_line_of_their_own_field() {
        let path = Path::new("/etc/vpnd/vpnd.toml");
        let own_key = KEY.parse::<PrivateKey>().unwrap().public_key().to_string();
        let append = |extra: &str| format!("{}{extra}", ok_config());
        let edit = |from: &str, to: &str| {
            let text = ok_config();
            assert!(text.contains(from), "{from}");
            text.replace(from, to)
        };
        let cases = [
            (
                edit(
                    "listen = [\"0.0.0.0:51820\", \"[::]:51820\"]",
                    "listen = []",
                ),
                3,
                "listen",
                "needs at least one address",
            ),
            (
                edit("listen =", "workers = 0\nlisten ="),
                3,
                "workers",
                "0 is outside 1..=64",
            ),
            (
                edit("listen =", "busy_poll_us = 2000000\nlisten ="),
                3,
                "busy_poll_us",
                "is above",
            ),
            (
                edit("tap = \"vpn1\"", "tap = \"a/b\""),
                7,
                "network 1: tap",
                "not a valid interface name",
            ),
            (
                edit("bridge = \"br0\"", "bridge = \"b r\""),
                8,
                "network 1: bridge",
                "not a valid interface name",
            ),
            (
                edit("cipher =", "mtu = 9000\ncipher ="),
                9,
                "network 1: mtu",
                "9000 is outside",
            ),
            (
                edit("cipher =", "path_mtu = 100\ncipher ="),
                9,
                "network 1: path_mtu",
                "below the minimum",
            ),
            (
                edit("cipher =", "mac_ageing_secs = 0\ncipher ="),
                9,
                "network 1: mac_ageing_secs",
                "at least 1",
            ),
            (
                edit(
                    "cipher =",
                    &format!("psk = \"{KEY}\"\npsk_file = \"a.psk\"\ncipher ="),
                ),
                10,
                "network 1: psk_file",
                "set psk or psk_file, not both",
            ),
            (
                edit(PEER, &own_key),
                17,
                "network 1: peer site2: public_key",
                "is this host's own key",
            ),
            (
                edit(
                    "endpoint = \"198.51.100.2:51820\"",
                    "endpoint = \"198.51.100.2\"",
                ),
                18,
                "network 1: peer site2: endpoint",
                "is not host:port",
            ),
            (
                append(&format!("\n[[network.peer]]\npublic_key = \"{PEER}\"\n")),
                21,
                "network 1: peer 2: public_key",
                "appears twice in this network",
            ),
            (
                append("\n[[network]]\nid = 1\ntap = \"vpn2\"\n"),
                21,
                "network 1: id",
                "another network has the same id",
            ),
            (
                append("\n[[network]]\nid = 2\ntap = \"vpn1\"\n"),
                22,
                "network 2: tap",
                "TAP \"vpn1\" is used by another network",
            ),
        ];
        for (text, line, field, message) in cases {
            assert_error_at(&text, path, line, field, message);
        }
    }

    #[test]
    fn key_file_errors_name_the_line_and_field_that_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vpnd.toml");
        let write = |name: &str, content: &str, mode: u32| {
            let file = dir.path().join(name);
            std::fs::write(&file, content).unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        write("private.key", KEY, 0o600);
        write("open.key", KEY, 0o644);
        write("broken.key", "not base64", 0o600);
        let with_key_file = |name: &str| {
            ok_config().replace(
                &format!("private_key = \"{KEY}\""),
                &format!("private_key_file = \"{name}\""),
            )
        };
        let with_psk_file = |name: &str| {
            with_key_file("private.key")
                .replace("cipher =", &format!("psk_file = \"{name}\"\ncipher ="))
        };
        let file = |name: &str| dir.path().join(name).display().to_string();
        let cases = [
            (
                with_key_file("missing.key"),
                2,
                "private_key_file",
                format!("{}: cannot read", file("missing.key")),
            ),
            (
                with_key_file("open.key"),
                2,
                "private_key_file",
                format!("{}: mode 0644 lets others read", file("open.key")),
            ),
            (
                with_key_file("broken.key"),
                2,
                "private_key_file",
                format!("{}: invalid key", file("broken.key")),
            ),
            (
                format!("private_key = \"{KEY}\"\n{}", with_key_file("private.key")),
                3,
                "private_key_file",
                "set private_key or private_key_file, not both".to_string(),
            ),
            (
                with_psk_file("missing.key"),
                9,
                "network 1: psk_file",
                format!("{}: cannot read", file("missing.key")),
            ),
            (
                with_psk_file("open.key"),
                9,
                "network 1: psk_file",
                format!("{}: mode 0644 lets others read", file("open.key")),
            ),
            (
                with_psk_file("broken.key"),
                9,
                "network 1: psk_file",
                format!("{}: invalid key", file("broken.key")),
            ),
        ];
        for (text, line, field, message) in cases {
            assert_error_at(&text, &path, line, field, &message);
        }
        let c = DaemonConfig::parse(&with_psk_file("private.key"), &path).unwrap();
        assert_eq!(c.private_key.to_base64(), KEY);
        assert!(c.networks[0].psk.is_some());
    }

    #[test]
    fn a_broken_inline_secret_is_not_echoed() {
        let text = ok_config().replace(KEY, "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBm");
        let e = error_of(&text);
        assert!(e.contains(":2: private_key = <secret>"), "{e}");
        assert!(!e.contains("yAnz5TF"), "{e}");
    }

    #[test]
    fn the_documented_example_is_a_valid_config() {
        let doc = include_str!("../../docs/config.md");
        let start = doc.find("```toml\n").expect("a toml block") + 8;
        let end = start + doc[start..].find("```").expect("its end");
        let example = doc[start..end]
            .replace(
                "private_key_file = \"/etc/vpnd/private.key\"",
                &format!("private_key = \"{KEY}\""),
            )
            .replace(
                "psk_file = \"/etc/vpnd/cluster-a.psk\"",
                &format!("psk = \"{KEY}\""),
            );
        let c = parse(&example).unwrap_or_else(|e| panic!("docs/config.md example: {e}"));
        let n = &c.networks[0];
        assert_eq!((n.id.0, n.peers.len(), n.site_local.len()), (1, 2, 1));
        assert!(n.psk.is_some());
        assert_eq!(c.metrics, Some("127.0.0.1:9720".parse().unwrap()));
    }

    #[test]
    fn a_missing_key_is_reported() {
        let e = error_of("listen = [\"0.0.0.0:1\"]\n");
        assert!(e.contains("private_key: missing"), "{e}");
    }
}
