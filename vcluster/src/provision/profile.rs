//! Renders one node's install profile: the roles it takes (its cluster's profile, its
//! groups', its own), its attributes merged by precedence, and every template of those
//! roles rendered with `minijinja` over them. The result is exactly what the node gets
//! (docs/provisioning.md, "Profiles and attributes").
//!
//! [`render`] is pure: it takes everything it needs in a [`RenderInput`] and answers a
//! [`RenderedProfile`] or a [`RenderError`] naming the template, the line and the
//! undefined attribute. It never reads a store or a clock; the controller gathers the
//! input (`controller::store::render_node_profile`).
//!
//! Templates see the merged attributes as top-level names, and the built-ins `node.name`,
//! `node.index`, `node.mac`, `node.address` (IPv4, no prefix), `node.cidr` (with prefix),
//! `cluster.name`, `site.name` and `profile.name`. Undefined names are errors, never empty
//! strings: a missing attribute must stop an install before it starts.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior, Value};

use crate::model::{ProfileSpec, RenderedFile, RenderedProfile, RenderedScript, RoleSpec};

/// What one node is, as templates see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    pub name: String,
    pub index: u32,
    pub mac: String,
    /// With prefix, as the store keeps it: `10.77.3.2/24`.
    pub cidr: String,
    pub cluster: String,
    pub site: String,
}

/// One group the node belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupInput {
    pub name: String,
    pub roles: Vec<String>,
    pub attributes: BTreeMap<String, String>,
}

/// Everything a node's profile is made of.
#[derive(Debug, Clone)]
pub struct RenderInput {
    pub node: NodeFacts,
    pub profile: ProfileSpec,
    /// The node's groups, in any order (they are applied in name order).
    pub groups: Vec<GroupInput>,
    /// The node's own roles, applied last.
    pub node_roles: Vec<String>,
    pub global: BTreeMap<String, String>,
    pub site: BTreeMap<String, String>,
    pub cluster: BTreeMap<String, String>,
    pub node_attributes: BTreeMap<String, String>,
    /// The definitions of (at least) every role named above.
    pub roles: BTreeMap<String, RoleSpec>,
}

/// Which template of a role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    /// The package entry at this index (from 0).
    Package(usize),
    /// The content of the file at this path.
    File(String),
    Post,
}

/// A template's name: the role and the part. `Display` reads "role web, file /etc/motd";
/// [`TemplateName::id`] is the name minijinja knows it by, `role/web/files//etc/motd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateName {
    pub role: String,
    pub part: TemplatePart,
}

impl TemplateName {
    pub fn id(&self) -> String {
        match &self.part {
            TemplatePart::Package(i) => format!("role/{}/packages/{i}", self.role),
            TemplatePart::File(path) => format!("role/{}/files/{path}", self.role),
            TemplatePart::Post => format!("role/{}/post", self.role),
        }
    }
}

impl fmt::Display for TemplateName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.part {
            TemplatePart::Package(i) => write!(f, "role {}, package entry {}", self.role, i + 1),
            TemplatePart::File(path) => write!(f, "role {}, file {path}", self.role),
            TemplatePart::Post => write!(f, "role {}, post script", self.role),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// A template uses a name that is neither an attribute nor a built-in.
    #[error("{template}, line {line}: undefined attribute `{attribute}` (template {})", template.id())]
    Undefined {
        template: TemplateName,
        line: usize,
        attribute: String,
    },
    /// A template does not parse, or fails otherwise (a filter on a wrong type, say).
    #[error("{template}, line {line}: {message} (template {})", template.id())]
    Template {
        template: TemplateName,
        line: usize,
        message: String,
    },
    #[error("roles {first} and {second} both write {path}")]
    DuplicateFile {
        path: String,
        first: String,
        second: String,
    },
    #[error("role {0} is not defined")]
    UnknownRole(String),
}

/// The one template environment: strict about undefined names, no HTML escaping (files
/// are not web pages), trailing newlines kept (a file's last line ends with one).
fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_keep_trailing_newline(true);
    env
}

/// The roles in application order: the profile's, then each group's (groups in name
/// order), then the node's own; a role named twice is applied where it first appears.
pub fn role_order(input: &RenderInput) -> Vec<String> {
    let mut groups: Vec<&GroupInput> = input.groups.iter().collect();
    groups.sort_by(|a, b| a.name.cmp(&b.name));
    let mut seen = BTreeSet::new();
    input
        .profile
        .roles
        .iter()
        .chain(groups.iter().flat_map(|g| g.roles.iter()))
        .chain(input.node_roles.iter())
        .filter(|r| seen.insert(r.as_str()))
        .cloned()
        .collect()
}

/// The attributes after precedence: global, then site, cluster, each group in name order
/// (a later group wins over an earlier one), then the node's own; a later layer wins.
pub fn merge_attributes(input: &RenderInput) -> BTreeMap<String, String> {
    let mut groups: Vec<&GroupInput> = input.groups.iter().collect();
    groups.sort_by(|a, b| a.name.cmp(&b.name));
    let mut merged = BTreeMap::new();
    let layers = [&input.global, &input.site, &input.cluster]
        .into_iter()
        .chain(groups.iter().map(|g| &g.attributes))
        .chain([&input.node_attributes]);
    for layer in layers {
        merged.extend(layer.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    merged
}

/// The node's profile, rendered.
pub fn render(input: &RenderInput) -> Result<RenderedProfile, RenderError> {
    let roles = role_order(input);
    let attributes = merge_attributes(input);
    let context = context(input, &attributes);
    let env = environment();

    let mut packages = BTreeSet::new();
    let mut files: Vec<RenderedFile> = Vec::new();
    let mut post = Vec::new();
    for name in &roles {
        let role = input
            .roles
            .get(name)
            .ok_or_else(|| RenderError::UnknownRole(name.clone()))?;
        let template = |part| TemplateName {
            role: name.clone(),
            part,
        };
        for (i, entry) in role.packages.iter().enumerate() {
            let text = render_one(&env, &template(TemplatePart::Package(i)), entry, &context)?;
            packages.extend(text.split_whitespace().map(str::to_string));
        }
        for file in &role.files {
            if let Some(first) = files.iter().find(|f| f.path == file.path) {
                return Err(RenderError::DuplicateFile {
                    path: file.path.clone(),
                    first: first.role.clone(),
                    second: name.clone(),
                });
            }
            let part = TemplatePart::File(file.path.clone());
            let content = render_one(&env, &template(part), &file.content, &context)?;
            files.push(RenderedFile {
                path: file.path.clone(),
                mode: file.mode,
                content,
                role: name.clone(),
            });
        }
        if !role.post.trim().is_empty() {
            let script = render_one(&env, &template(TemplatePart::Post), &role.post, &context)?;
            post.push(RenderedScript {
                role: name.clone(),
                script,
            });
        }
    }
    Ok(RenderedProfile {
        node: input.node.name.clone(),
        cluster: input.node.cluster.clone(),
        site: input.node.site.clone(),
        profile: input.profile.name.clone(),
        roles,
        attributes,
        packages: packages.into_iter().collect(),
        files,
        post,
    })
}

/// Checks that every template of a role parses (names are only known per node, so this
/// cannot find undefined attributes): a role is refused at the door rather than at the
/// first install that uses it.
pub fn check_role(role: &RoleSpec) -> Result<(), RenderError> {
    let env = environment();
    let template = |part| TemplateName {
        role: role.name.clone(),
        part,
    };
    let mut sources = Vec::new();
    for (i, entry) in role.packages.iter().enumerate() {
        sources.push((template(TemplatePart::Package(i)), entry.as_str()));
    }
    for file in &role.files {
        sources.push((
            template(TemplatePart::File(file.path.clone())),
            &file.content,
        ));
    }
    sources.push((template(TemplatePart::Post), &role.post));
    for (name, source) in sources {
        let id = name.id();
        if let Err(e) = env.template_from_named_str(&id, source) {
            return Err(RenderError::Template {
                line: e.line().unwrap_or(1),
                message: e.detail().unwrap_or("syntax error").to_string(),
                template: name,
            });
        }
    }
    Ok(())
}

/// The names templates see: the merged attributes at the top level, and the built-ins.
fn context(input: &RenderInput, attributes: &BTreeMap<String, String>) -> Value {
    let n = &input.node;
    let address = n.cidr.split('/').next().unwrap_or_default();
    let mut names: BTreeMap<String, Value> = attributes
        .iter()
        .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
        .collect();
    let node = BTreeMap::from([
        ("name", Value::from(n.name.as_str())),
        ("index", Value::from(n.index)),
        ("mac", Value::from(n.mac.as_str())),
        ("address", Value::from(address)),
        ("cidr", Value::from(n.cidr.as_str())),
    ]);
    names.insert("node".into(), Value::from_serialize(&node));
    let named = |name: &str| Value::from_serialize(BTreeMap::from([("name", name)]));
    names.insert("cluster".into(), named(&n.cluster));
    names.insert("site".into(), named(&n.site));
    names.insert("profile".into(), named(&input.profile.name));
    Value::from_serialize(&names)
}

fn render_one(
    env: &Environment<'static>,
    name: &TemplateName,
    source: &str,
    context: &Value,
) -> Result<String, RenderError> {
    let id = name.id();
    env.render_named_str(&id, source, context)
        .map_err(|e| match e.kind() {
            ErrorKind::UndefinedError => RenderError::Undefined {
                line: e.line().unwrap_or(1),
                attribute: undefined_name(env, &id, source, &e, context),
                template: name.clone(),
            },
            _ => RenderError::Template {
                line: e.line().unwrap_or(1),
                message: e
                    .detail()
                    .map(str::to_string)
                    .unwrap_or_else(|| e.kind().to_string()),
                template: name.clone(),
            },
        })
}

/// The name an undefined-value error is about: the expression minijinja points at when it
/// is a plain (dotted) name, else the first name the template uses that the context does
/// not hold.
fn undefined_name(
    env: &Environment<'static>,
    id: &str,
    source: &str,
    e: &minijinja::Error,
    context: &Value,
) -> String {
    let plain = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
    };
    if let Some(text) = e.range().and_then(|r| source.get(r)).map(str::trim)
        && plain(text)
    {
        return text.to_string();
    }
    let Ok(template) = env.template_from_named_str(id, source) else {
        return "?".to_string();
    };
    let mut used: Vec<String> = template.undeclared_variables(true).into_iter().collect();
    used.sort();
    used.into_iter()
        .find(|name| !resolves(context, name))
        .unwrap_or_else(|| "?".to_string())
}

fn resolves(context: &Value, dotted: &str) -> bool {
    let mut value = context.clone();
    for part in dotted.split('.') {
        match value.get_attr(part) {
            Ok(v) if !v.is_undefined() => value = v,
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RoleFile;

    fn attrs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn role(name: &str, packages: &[&str], files: &[(&str, &str)], post: &str) -> RoleSpec {
        RoleSpec {
            name: name.into(),
            description: String::new(),
            packages: packages.iter().map(|p| p.to_string()).collect(),
            files: files
                .iter()
                .map(|(path, content)| RoleFile {
                    path: path.to_string(),
                    mode: 0o644,
                    content: content.to_string(),
                })
                .collect(),
            post: post.into(),
        }
    }

    fn input(roles: Vec<RoleSpec>, profile_roles: &[&str]) -> RenderInput {
        RenderInput {
            node: NodeFacts {
                name: "demo-node-2".into(),
                index: 2,
                mac: "02:00:00:01:00:02".into(),
                cidr: "10.77.3.2/24".into(),
                cluster: "demo".into(),
                site: "paris".into(),
            },
            profile: ProfileSpec {
                name: "hpc".into(),
                description: String::new(),
                roles: profile_roles.iter().map(|r| r.to_string()).collect(),
            },
            groups: vec![],
            node_roles: vec![],
            global: BTreeMap::new(),
            site: BTreeMap::new(),
            cluster: BTreeMap::new(),
            node_attributes: BTreeMap::new(),
            roles: roles.into_iter().map(|r| (r.name.clone(), r)).collect(),
        }
    }

    #[test]
    fn node_wins_over_group_over_cluster_over_site_over_global() {
        let mut i = input(vec![role("base", &[], &[], "")], &["base"]);
        i.global = attrs(&[
            ("a", "global"),
            ("b", "global"),
            ("c", "global"),
            ("d", "global"),
            ("e", "global"),
        ]);
        i.site = attrs(&[("b", "site"), ("c", "site"), ("d", "site"), ("e", "site")]);
        i.cluster = attrs(&[("c", "cluster"), ("d", "cluster"), ("e", "cluster")]);
        i.groups = vec![GroupInput {
            name: "web".into(),
            roles: vec![],
            attributes: attrs(&[("d", "group"), ("e", "group")]),
        }];
        i.node_attributes = attrs(&[("e", "node")]);
        let p = render(&i).unwrap();
        assert_eq!(
            p.attributes,
            attrs(&[
                ("a", "global"),
                ("b", "site"),
                ("c", "cluster"),
                ("d", "group"),
                ("e", "node")
            ])
        );
    }

    #[test]
    fn of_two_groups_the_later_name_wins_and_roles_follow_profile_groups_node() {
        let roles = ["base", "web", "db", "gpu", "extra"]
            .map(|r| role(r, &[], &[], ""))
            .to_vec();
        let mut i = input(roles, &["base", "web"]);
        // Given out of order: groups apply in name order.
        i.groups = vec![
            GroupInput {
                name: "zeta".into(),
                roles: vec!["gpu".into(), "base".into()],
                attributes: attrs(&[("port", "zeta")]),
            },
            GroupInput {
                name: "alpha".into(),
                roles: vec!["db".into()],
                attributes: attrs(&[("port", "alpha"), ("only_alpha", "1")]),
            },
        ];
        i.node_roles = vec!["extra".into(), "web".into()];
        let p = render(&i).unwrap();
        assert_eq!(p.attributes["port"], "zeta");
        assert_eq!(p.attributes["only_alpha"], "1");
        assert_eq!(p.roles, ["base", "web", "db", "gpu", "extra"]);
    }

    #[test]
    fn templates_see_attributes_and_built_ins() {
        let r = role(
            "web",
            &[
                "nginx {{ extra_pkgs }}",
                "{% if tls == 'yes' %}certbot{% endif %}",
                "curl",
            ],
            &[(
                "/etc/motd",
                "{{ node.name }} #{{ node.index }} {{ node.mac }} {{ node.address }} {{ node.cidr }} \
                 in {{ cluster.name }} at {{ site.name }} ({{ profile.name }}), ntp {{ ntp_server }}\n",
            )],
            "echo {{ ntp_server }}\n",
        );
        let mut i = input(vec![r], &["web"]);
        i.global = attrs(&[
            ("ntp_server", "pool.ntp.org"),
            ("extra_pkgs", "vim  curl"),
            ("tls", "no"),
        ]);
        let p = render(&i).unwrap();
        assert_eq!(
            p.packages,
            ["curl", "nginx", "vim"],
            "sorted, deduplicated, split"
        );
        assert_eq!(
            p.files[0].content,
            "demo-node-2 #2 02:00:00:01:00:02 10.77.3.2 10.77.3.2/24 in demo at paris (hpc), ntp pool.ntp.org\n"
        );
        assert_eq!(p.files[0].role, "web");
        assert_eq!(p.files[0].mode, 0o644);
        assert_eq!(p.post[0].script, "echo pool.ntp.org\n");
        assert_eq!(
            (p.node.as_str(), p.cluster.as_str(), p.site.as_str()),
            ("demo-node-2", "demo", "paris")
        );
    }

    #[test]
    fn a_missing_attribute_names_the_template_the_line_and_the_attribute() {
        let r = role(
            "compute",
            &[],
            &[],
            "#!/bin/sh\nset -e\nntpdate {{ ntp_server }}\n",
        );
        let e = render(&input(vec![r], &["compute"])).unwrap_err();
        assert_eq!(
            e,
            RenderError::Undefined {
                template: TemplateName {
                    role: "compute".into(),
                    part: TemplatePart::Post
                },
                line: 3,
                attribute: "ntp_server".into()
            }
        );
        assert_eq!(
            e.to_string(),
            "role compute, post script, line 3: undefined attribute `ntp_server` (template role/compute/post)"
        );
    }

    #[test]
    fn a_missing_attribute_in_a_file_or_a_built_in_field_is_named_too() {
        let r = role(
            "web",
            &[],
            &[("/etc/motd", "hello\n{% if x %}{% endif %}{{ node.rack }}\n")],
            "",
        );
        let mut i = input(vec![r], &["web"]);
        i.global = attrs(&[("x", "1")]);
        let e = render(&i).unwrap_err().to_string();
        assert!(
            e.starts_with("role web, file /etc/motd, line 2: undefined attribute `node.rack`"),
            "{e}"
        );
        assert!(e.contains("role/web/files//etc/motd"), "{e}");

        let r = role("web", &["{{ web_pkg }}"], &[], "");
        let e = render(&input(vec![r], &["web"])).unwrap_err().to_string();
        assert!(
            e.contains("package entry 1, line 1: undefined attribute `web_pkg`"),
            "{e}"
        );
    }

    #[test]
    fn two_roles_writing_one_path_is_an_error_naming_both() {
        let a = role("web", &[], &[("/etc/motd", "a")], "");
        let b = role("db", &[], &[("/etc/motd", "b")], "");
        let e = render(&input(vec![a, b], &["web", "db"])).unwrap_err();
        assert_eq!(e.to_string(), "roles web and db both write /etc/motd");
    }

    #[test]
    fn an_undefined_role_is_an_error_naming_it() {
        let e = render(&input(vec![], &["ghost"])).unwrap_err();
        assert_eq!(e.to_string(), "role ghost is not defined");
    }

    #[test]
    fn a_template_that_does_not_parse_is_refused_with_its_line() {
        let r = role("web", &[], &[], "line one\n{% if %}\n");
        let e = check_role(&r).unwrap_err().to_string();
        assert!(e.starts_with("role web, post script, line 2:"), "{e}");
        check_role(&role("ok", &["a"], &[("/f", "{{ x }}")], "{{ y }}")).unwrap();
    }

    #[test]
    fn html_is_not_escaped_and_trailing_newlines_are_kept() {
        let r = role(
            "web",
            &[],
            &[("/var/www/index.html", "<b>{{ title }}</b>\n")],
            "",
        );
        let mut i = input(vec![r], &["web"]);
        i.global = attrs(&[("title", "a & b")]);
        assert_eq!(render(&i).unwrap().files[0].content, "<b>a & b</b>\n");
    }
}
