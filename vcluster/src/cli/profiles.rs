//! The configuration database from the command line (docs/provisioning.md): `profile`
//! (create, list, show, delete, render NODE), `role` (create and replace from a TOML or
//! YAML file, list, show, delete, assign a node's own roles), `attr` (set, unset, list at
//! a scope) and `group` (create, add, remove, list, delete a cluster's node groups).
//! `vcluster profile render NODE` prints exactly what the node will get.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};

use super::{ApiArgs, print};
use crate::model::{
    Attribute, CreateGroup, Group, NodeRoles, ProfileSpec, RenderedProfile, RoleSpec, Scope,
    SetNodeRoles, UpdateGroup,
};

// ---------------------------------------------------------------------------------------
// profile

#[derive(Debug, Args)]
pub struct ProfileCmd {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(subcommand)]
    pub cmd: ProfileSub,
}

#[derive(Debug, Subcommand)]
pub enum ProfileSub {
    /// Define a profile: roles applied in the order given (admin).
    Create {
        name: String,
        /// Role names, comma-separated, in order.
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
        #[arg(long, default_value = "")]
        description: String,
        /// Replace the profile if it exists.
        #[arg(long)]
        replace: bool,
    },
    /// Every profile.
    List,
    /// One profile.
    Show { profile: String },
    /// Delete a profile no cluster uses (admin).
    Delete { profile: String },
    /// Exactly what NODE will get: roles, attributes, packages, files, post scripts.
    Render { node: String },
}

pub async fn profile(c: ProfileCmd) -> anyhow::Result<()> {
    let client = c.api.client()?;
    let json = c.api.json;
    match c.cmd {
        ProfileSub::Create {
            name,
            roles,
            description,
            replace,
        } => {
            let spec = ProfileSpec {
                name,
                description,
                roles,
            };
            let p: ProfileSpec = if replace {
                client
                    .put(&format!("/v1/profiles/{}", spec.name), &spec)
                    .await?
            } else {
                client.post("/v1/profiles", &spec).await?
            };
            print(json, &p, |p| {
                println!("profile {}: {}", p.name, p.roles.join(", "))
            });
        }
        ProfileSub::List => {
            let ps: Vec<ProfileSpec> = client.get("/v1/profiles").await?;
            print(json, &ps, |ps| {
                println!("{:<20} {:<40} DESCRIPTION", "PROFILE", "ROLES");
                for p in ps {
                    println!("{:<20} {:<40} {}", p.name, p.roles.join(","), p.description);
                }
            });
        }
        ProfileSub::Show { profile } => {
            let p: ProfileSpec = client.get(&format!("/v1/profiles/{profile}")).await?;
            print(json, &p, |p| {
                println!("profile {}: {}", p.name, p.description);
                println!("  roles: {}", p.roles.join(", "));
            });
        }
        ProfileSub::Delete { profile } => {
            client
                .delete_empty(&format!("/v1/profiles/{profile}"))
                .await?;
            println!("profile {profile} deleted");
        }
        ProfileSub::Render { node } => {
            let p: RenderedProfile = client.get(&format!("/v1/nodes/{node}/profile")).await?;
            print(json, &p, print_rendered);
        }
    }
    Ok(())
}

fn print_rendered(p: &RenderedProfile) {
    println!(
        "node {} (cluster {}, site {}): profile {}",
        p.node, p.cluster, p.site, p.profile
    );
    println!("roles: {}", p.roles.join(", "));
    println!("attributes:");
    for (k, v) in &p.attributes {
        println!("  {k} = {v:?}");
    }
    println!("packages: {}", p.packages.join(" "));
    for f in &p.files {
        println!("--- file {} (mode {:04o}, role {})", f.path, f.mode, f.role);
        print!("{}", f.content);
        if !f.content.is_empty() && !f.content.ends_with('\n') {
            println!();
        }
    }
    for s in &p.post {
        println!("--- post script (role {})", s.role);
        print!("{}", s.script);
        if !s.script.ends_with('\n') {
            println!();
        }
    }
}

// ---------------------------------------------------------------------------------------
// role

#[derive(Debug, Args)]
pub struct RoleCmd {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(subcommand)]
    pub cmd: RoleSub,
}

#[derive(Debug, Subcommand)]
pub enum RoleSub {
    /// Define a role from a TOML (.toml) or YAML (.yaml, .yml) file (admin).
    Create {
        #[arg(long)]
        file: PathBuf,
        /// Replace the role if it exists.
        #[arg(long)]
        replace: bool,
    },
    /// Every role.
    List,
    /// One role, with its templates.
    Show { role: String },
    /// Delete a role no profile, group or node uses (admin).
    Delete { role: String },
    /// Set NODE's own roles, on top of its profile's and its groups' (none: clear them).
    Assign { node: String, roles: Vec<String> },
}

/// A role definition from a file: TOML, or YAML by the file's extension. Unknown fields
/// are refused naming the file and the field.
pub fn read_role_file(path: &Path) -> anyhow::Result<RoleSpec> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let yaml = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    );
    if yaml {
        serde_norway::from_str(&text).with_context(|| format!("{}", path.display()))
    } else {
        toml::from_str(&text).with_context(|| format!("{}", path.display()))
    }
}

pub async fn role(c: RoleCmd) -> anyhow::Result<()> {
    let client = c.api.client()?;
    let json = c.api.json;
    match c.cmd {
        RoleSub::Create { file, replace } => {
            let spec = read_role_file(&file)?;
            let r: RoleSpec = if replace {
                client
                    .put(&format!("/v1/roles/{}", spec.name), &spec)
                    .await?
            } else {
                client.post("/v1/roles", &spec).await?
            };
            print(json, &r, |r| {
                println!(
                    "role {}: {} package entries, {} files, {}",
                    r.name,
                    r.packages.len(),
                    r.files.len(),
                    if r.post.is_empty() {
                        "no post script"
                    } else {
                        "a post script"
                    }
                )
            });
        }
        RoleSub::List => {
            let rs: Vec<RoleSpec> = client.get("/v1/roles").await?;
            print(json, &rs, |rs| {
                println!(
                    "{:<20} {:>8} {:>6} {:<5} DESCRIPTION",
                    "ROLE", "PACKAGES", "FILES", "POST"
                );
                for r in rs {
                    println!(
                        "{:<20} {:>8} {:>6} {:<5} {}",
                        r.name,
                        r.packages.len(),
                        r.files.len(),
                        if r.post.is_empty() { "-" } else { "yes" },
                        r.description
                    );
                }
            });
        }
        RoleSub::Show { role } => {
            let r: RoleSpec = client.get(&format!("/v1/roles/{role}")).await?;
            print(json, &r, |r| {
                print!("{}", toml::to_string(r).expect("a role serialises as TOML"))
            });
        }
        RoleSub::Delete { role } => {
            client.delete_empty(&format!("/v1/roles/{role}")).await?;
            println!("role {role} deleted");
        }
        RoleSub::Assign { node, roles } => {
            let r: NodeRoles = client
                .put(&format!("/v1/nodes/{node}/roles"), &SetNodeRoles { roles })
                .await?;
            print(json, &r, |r| {
                println!("node {}: own roles {}", r.node, r.roles.join(", "))
            });
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// attr

#[derive(Debug, Args)]
pub struct AttrCmd {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(subcommand)]
    pub cmd: AttrSub,
}

#[derive(Debug, Subcommand)]
pub enum AttrSub {
    /// Set KEY at SCOPE: global, site:NAME, cluster:NAME, group:CLUSTER/NAME, node:NAME.
    Set {
        scope: Scope,
        key: String,
        value: String,
    },
    /// Remove KEY from SCOPE.
    Unset { scope: Scope, key: String },
    /// The attributes set at SCOPE (default global).
    List {
        #[arg(default_value = "global")]
        scope: Scope,
    },
}

fn query_escape(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

pub async fn attr(c: AttrCmd) -> anyhow::Result<()> {
    let client = c.api.client()?;
    let json = c.api.json;
    match c.cmd {
        AttrSub::Set { scope, key, value } => {
            let a: Attribute = client
                .put("/v1/attributes", &Attribute { scope, key, value })
                .await?;
            print(json, &a, |a| {
                println!("{} {} = {:?}", a.scope, a.key, a.value)
            });
        }
        AttrSub::Unset { scope, key } => {
            client
                .delete_empty(&format!(
                    "/v1/attributes?scope={}&key={}",
                    query_escape(&scope.to_string()),
                    query_escape(&key)
                ))
                .await?;
            println!("{scope} {key} unset");
        }
        AttrSub::List { scope } => {
            let attrs: Vec<Attribute> = client
                .get(&format!(
                    "/v1/attributes?scope={}",
                    query_escape(&scope.to_string())
                ))
                .await?;
            print(json, &attrs, |attrs| {
                for a in attrs {
                    println!("{} = {:?}", a.key, a.value);
                }
            });
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// group

#[derive(Debug, Args)]
pub struct GroupCmd {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(subcommand)]
    pub cmd: GroupSub,
}

#[derive(Debug, Subcommand)]
pub enum GroupSub {
    /// Create a group of CLUSTER's nodes (a node set, e.g. 'demo-node-[1-4]').
    Create {
        cluster: String,
        name: String,
        #[arg(long, default_value = "")]
        nodes: String,
        /// The group's roles, comma-separated, in order.
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
    },
    /// Add the nodes of a node set to the group.
    Add {
        cluster: String,
        group: String,
        nodes: String,
    },
    /// Remove the nodes of a node set from the group.
    Remove {
        cluster: String,
        group: String,
        nodes: String,
    },
    /// Replace the group's roles (comma-separated; empty: none).
    Roles {
        cluster: String,
        group: String,
        #[arg(value_delimiter = ',')]
        roles: Vec<String>,
    },
    /// CLUSTER's groups with their members and roles.
    List { cluster: String },
    /// Delete the group (its nodes stay).
    Delete { cluster: String, group: String },
}

pub async fn group(c: GroupCmd) -> anyhow::Result<()> {
    let client = c.api.client()?;
    let json = c.api.json;
    let show = |g: &Group| {
        println!(
            "group {}/{}: nodes {}; roles {}",
            g.cluster,
            g.name,
            g.nodes.join(","),
            g.roles.join(",")
        )
    };
    let patch = |cluster: &str, group: &str| format!("/v1/clusters/{cluster}/groups/{group}");
    match c.cmd {
        GroupSub::Create {
            cluster,
            name,
            nodes,
            roles,
        } => {
            let g: Group = client
                .post(
                    &format!("/v1/clusters/{cluster}/groups"),
                    &CreateGroup { name, nodes, roles },
                )
                .await?;
            print(json, &g, show);
        }
        GroupSub::Add {
            cluster,
            group,
            nodes,
        } => {
            let body = UpdateGroup {
                add: nodes,
                ..Default::default()
            };
            let g: Group = client.patch(&patch(&cluster, &group), &body).await?;
            print(json, &g, show);
        }
        GroupSub::Remove {
            cluster,
            group,
            nodes,
        } => {
            let body = UpdateGroup {
                remove: nodes,
                ..Default::default()
            };
            let g: Group = client.patch(&patch(&cluster, &group), &body).await?;
            print(json, &g, show);
        }
        GroupSub::Roles {
            cluster,
            group,
            roles,
        } => {
            let body = UpdateGroup {
                roles: Some(roles.into_iter().filter(|r| !r.is_empty()).collect()),
                ..Default::default()
            };
            let g: Group = client.patch(&patch(&cluster, &group), &body).await?;
            print(json, &g, show);
        }
        GroupSub::List { cluster } => {
            let gs: Vec<Group> = client
                .get(&format!("/v1/clusters/{cluster}/groups"))
                .await?;
            print(json, &gs, |gs| {
                println!("{:<20} {:<30} ROLES", "GROUP", "NODES");
                for g in gs {
                    let nodes = crate::nodeset::NodeSet::parse_plain(&g.nodes.join(","))
                        .map(|s| s.to_string())
                        .unwrap_or_else(|_| g.nodes.join(","));
                    println!("{:<20} {:<30} {}", g.name, nodes, g.roles.join(","));
                }
            });
        }
        GroupSub::Delete { cluster, group } => {
            client.delete_empty(&patch(&cluster, &group)).await?;
            println!("group {cluster}/{group} deleted");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_files_in_toml_and_yaml_read_alike_and_unknown_fields_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let toml_path = dir.path().join("web.toml");
        std::fs::write(
            &toml_path,
            "name = \"web\"\npackages = [\"nginx\"]\npost = \"echo {{ x }}\\n\"\n\
             [[files]]\npath = \"/etc/motd\"\nmode = 0o600\ncontent = \"hi\"\n",
        )
        .unwrap();
        let yaml_path = dir.path().join("web.yaml");
        std::fs::write(
            &yaml_path,
            "name: web\npackages: [nginx]\npost: \"echo {{ x }}\\n\"\nfiles:\n  - path: /etc/motd\n    mode: 384\n    content: hi\n",
        )
        .unwrap();
        let a = read_role_file(&toml_path).unwrap();
        assert_eq!(a, read_role_file(&yaml_path).unwrap());
        assert_eq!(a.files[0].mode, 0o600);

        let bad = dir.path().join("bad.yml");
        std::fs::write(&bad, "name: web\npackage: [nginx]\n").unwrap();
        let e = format!("{:#}", read_role_file(&bad).unwrap_err());
        assert!(
            e.contains("bad.yml") && e.contains("unknown field `package`"),
            "{e}"
        );
        let bad = dir.path().join("bad.toml");
        std::fs::write(
            &bad,
            "name = \"web\"\n[[files]]\npath = \"/x\"\nowner = \"root\"\n",
        )
        .unwrap();
        let e = format!("{:#}", read_role_file(&bad).unwrap_err());
        assert!(
            e.contains("bad.toml") && e.contains("unknown field `owner`"),
            "{e}"
        );
    }
}
