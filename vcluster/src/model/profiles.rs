//! The configuration database's types (docs/provisioning.md, "Profiles and attributes"):
//! attributes at five scopes, roles (what Rocks calls appliances and Rolls: packages,
//! files and a post-install script, all templates), profiles (an ordered list of roles a
//! cluster installs), groups of a cluster's nodes, and the profile rendered for one node.
//!
//! Like the rest of `model`, this never does I/O; the checks here are the pure ones a
//! client can make before asking (key syntax, sizes). Rendering is `provision::profile`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

// ---------------------------------------------------------------------------------------
// Bounds (docs/provisioning.md): every one is a 422 naming its field when exceeded.

/// An attribute key: `[a-z][a-z0-9_]{0,63}`.
pub const MAX_ATTRIBUTE_KEY_BYTES: usize = 64;
/// An attribute value, in bytes.
pub const MAX_ATTRIBUTE_VALUE_BYTES: usize = 64 * 1024;
/// Package entries of one role, and the bytes of one entry.
pub const MAX_ROLE_PACKAGES: usize = 1000;
pub const MAX_PACKAGE_BYTES: usize = 256;
/// Files of one role, the bytes of a path, and of one template (a file's content, a post script).
pub const MAX_ROLE_FILES: usize = 256;
pub const MAX_FILE_PATH_BYTES: usize = 1024;
pub const MAX_TEMPLATE_BYTES: usize = 256 * 1024;
/// Roles of a profile, of a group and of a node.
pub const MAX_ROLES_PER_LIST: usize = 64;
/// The largest mode a file may have (`0o7777`).
pub const MAX_FILE_MODE: u32 = 0o7777;

/// Attribute keys a template sees as built-ins (`node.name`, `cluster.name`, ...): no
/// attribute may take them.
pub const RESERVED_ATTRIBUTE_KEYS: &[&str] = &["node", "cluster", "site", "profile"];

/// Why an attribute key is refused, or `None` when it is a good one.
pub fn attribute_key_error(key: &str) -> Option<String> {
    let ok = !key.is_empty()
        && key.len() <= MAX_ATTRIBUTE_KEY_BYTES
        && key.as_bytes()[0].is_ascii_lowercase()
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !ok {
        return Some(format!(
            "attribute key {key:?} is not valid: use a lower-case letter, then lower-case \
             letters, digits and '_', at most {MAX_ATTRIBUTE_KEY_BYTES} characters"
        ));
    }
    if RESERVED_ATTRIBUTE_KEYS.contains(&key) {
        return Some(format!(
            "attribute key {key:?} is reserved: templates see the built-in {key}.* there"
        ));
    }
    None
}

/// Why an attribute value is refused, or `None`.
pub fn attribute_value_error(value: &str) -> Option<String> {
    (value.len() > MAX_ATTRIBUTE_VALUE_BYTES).then(|| {
        format!(
            "attribute value is {} bytes; at most {MAX_ATTRIBUTE_VALUE_BYTES} (64 KiB)",
            value.len()
        )
    })
}

// ---------------------------------------------------------------------------------------
// Scopes

/// Where an attribute is set. Written `global`, `site:NAME`, `cluster:NAME`,
/// `group:CLUSTER/NAME` or `node:NAME`; a node's attributes win over its groups', its
/// groups' over its cluster's, then its site's, then the global ones.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Global,
    Site(String),
    Cluster(String),
    Group { cluster: String, group: String },
    Node(String),
}

/// A scope text that is none of the five forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "scope {0:?} is not valid: use global, site:NAME, cluster:NAME, group:CLUSTER/NAME or node:NAME"
)]
pub struct BadScope(pub String);

impl FromStr for Scope {
    type Err = BadScope;
    fn from_str(s: &str) -> Result<Scope, BadScope> {
        let bad = || BadScope(s.to_string());
        if s == "global" {
            return Ok(Scope::Global);
        }
        let (kind, name) = s.split_once(':').ok_or_else(bad)?;
        let plain = |n: &str| !n.is_empty() && !n.contains(['/', ':']);
        match kind {
            "site" if plain(name) => Ok(Scope::Site(name.to_string())),
            "cluster" if plain(name) => Ok(Scope::Cluster(name.to_string())),
            "node" if plain(name) => Ok(Scope::Node(name.to_string())),
            "group" => {
                let (cluster, group) = name.split_once('/').ok_or_else(bad)?;
                if plain(cluster) && plain(group) {
                    Ok(Scope::Group {
                        cluster: cluster.to_string(),
                        group: group.to_string(),
                    })
                } else {
                    Err(bad())
                }
            }
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Global => f.write_str("global"),
            Scope::Site(n) => write!(f, "site:{n}"),
            Scope::Cluster(n) => write!(f, "cluster:{n}"),
            Scope::Group { cluster, group } => write!(f, "group:{cluster}/{group}"),
            Scope::Node(n) => write!(f, "node:{n}"),
        }
    }
}

impl Serialize for Scope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Scope, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// One attribute as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Attribute {
    #[schema(value_type = String, example = "cluster:demo")]
    pub scope: Scope,
    pub key: String,
    pub value: String,
}

/// `PUT /v1/attributes`: sets (or replaces) one attribute.
pub type SetAttribute = Attribute;

// ---------------------------------------------------------------------------------------
// Roles and profiles

fn default_mode() -> u32 {
    0o644
}

/// A file a role writes on the node. `content` is a template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleFile {
    /// Absolute path on the node.
    pub path: String,
    /// Permission bits (default `0o644`, i.e. 420), at most `0o7777`.
    #[serde(default = "default_mode")]
    pub mode: u32,
    #[serde(default)]
    pub content: String,
}

/// A role (Rocks' appliance): what a node that takes it gets. Every package entry, file
/// content and the post script are templates over the node's attributes. The body of
/// `POST /v1/roles` and `PUT /v1/roles/{role}`, what they answer, and the format of the
/// file `vcluster role create --file` reads (TOML or YAML).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleSpec {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Package names; an entry may render to several names separated by white space, or
    /// to nothing.
    #[serde(default)]
    pub packages: Vec<String>,
    #[serde(default)]
    pub files: Vec<RoleFile>,
    /// A shell script run after the install, in the installed system.
    #[serde(default)]
    pub post: String,
}

/// A profile: the ordered roles a cluster's nodes install. The body of
/// `POST /v1/profiles` and `PUT /v1/profiles/{profile}`, and what they answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileSpec {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub roles: Vec<String>,
}

/// `PUT /v1/clusters/{cluster}/profile`: the profile its nodes install (`null`: none).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetClusterProfile {
    pub profile: Option<String>,
}

// ---------------------------------------------------------------------------------------
// Groups and node roles

/// A named set of a cluster's nodes with roles of its own (and attributes at scope
/// `group:CLUSTER/NAME`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Group {
    pub cluster: String,
    pub name: String,
    /// Node names, in natural order.
    pub nodes: Vec<String>,
    pub roles: Vec<String>,
}

/// `POST /v1/clusters/{cluster}/groups`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGroup {
    pub name: String,
    /// A node set of the cluster's nodes, e.g. `demo-node-[1-4]` (default: none).
    #[serde(default)]
    pub nodes: String,
    #[serde(default)]
    pub roles: Vec<String>,
}

/// `PATCH /v1/clusters/{cluster}/groups/{group}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateGroup {
    /// A node set to add.
    #[serde(default)]
    pub add: String,
    /// A node set to remove.
    #[serde(default)]
    pub remove: String,
    /// The group's roles, replacing the ones it had (left out: unchanged).
    #[serde(default)]
    pub roles: Option<Vec<String>>,
}

/// A node's own roles, taken on top of its profile's and its groups'.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeRoles {
    pub node: String,
    pub roles: Vec<String>,
}

/// `PUT /v1/nodes/{node}/roles`: the node's own roles, replacing the ones it had.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetNodeRoles {
    pub roles: Vec<String>,
}

// ---------------------------------------------------------------------------------------
// What a node gets

/// One file as the node gets it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RenderedFile {
    pub path: String,
    pub mode: u32,
    pub content: String,
    /// The role that writes it.
    pub role: String,
}

/// One role's post-install script as the node runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RenderedScript {
    pub role: String,
    pub script: String,
}

/// Everything one node installs, rendered: `GET /v1/nodes/{node}/profile`,
/// `vcluster profile render NODE`, and what the installer consumes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RenderedProfile {
    pub node: String,
    pub cluster: String,
    pub site: String,
    pub profile: String,
    /// In application order (profile, groups by name, the node's own), each once.
    pub roles: Vec<String>,
    /// Merged after precedence (node > group > cluster > site > global).
    pub attributes: BTreeMap<String, String>,
    /// The union of the roles' packages, sorted, each once.
    pub packages: Vec<String>,
    /// In role order, then each role's order.
    pub files: Vec<RenderedFile>,
    /// In role order; roles without a post script have none.
    pub post: Vec<RenderedScript>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_and_print_back() {
        for text in [
            "global",
            "site:paris",
            "cluster:demo",
            "group:demo/web",
            "node:demo-node-1",
        ] {
            let scope: Scope = text.parse().unwrap();
            assert_eq!(scope.to_string(), text);
        }
        assert_eq!(
            "group:demo/web".parse::<Scope>().unwrap(),
            Scope::Group {
                cluster: "demo".into(),
                group: "web".into()
            }
        );
        for bad in [
            "",
            "globl",
            "site:",
            "site",
            "rack:r1",
            "group:demo",
            "group:/web",
            "node:a/b",
        ] {
            let e = bad.parse::<Scope>().unwrap_err();
            assert!(e.to_string().contains("group:CLUSTER/NAME"), "{bad}: {e}");
        }
    }

    #[test]
    fn attribute_keys_and_values_are_bounded() {
        assert_eq!(attribute_key_error("ntp_server"), None);
        assert_eq!(attribute_key_error("a"), None);
        assert_eq!(attribute_key_error(&"k".repeat(64)), None);
        for bad in ["", "Ntp", "1ntp", "ntp-server", "ntp.server", "ntp server"] {
            assert!(attribute_key_error(bad).is_some(), "{bad:?} accepted");
        }
        assert!(attribute_key_error(&"k".repeat(65)).unwrap().contains("64"));
        assert!(attribute_key_error("node").unwrap().contains("reserved"));
        assert_eq!(attribute_value_error(&"v".repeat(64 * 1024)), None);
        assert!(
            attribute_value_error(&"v".repeat(64 * 1024 + 1))
                .unwrap()
                .contains("65537 bytes")
        );
    }

    #[test]
    fn role_files_refuse_unknown_fields_and_default_the_mode() {
        let role: RoleSpec =
            toml::from_str("name = \"web\"\n[[files]]\npath = \"/etc/motd\"\ncontent = \"hi\"\n")
                .unwrap();
        assert_eq!(role.files[0].mode, 0o644);
        let e = toml::from_str::<RoleSpec>("name = \"web\"\npackage = [\"nginx\"]\n").unwrap_err();
        assert!(e.to_string().contains("unknown field `package`"), "{e}");
    }
}
