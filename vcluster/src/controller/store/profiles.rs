//! The configuration database: roles, profiles, groups of a cluster's nodes, each node's
//! own roles, and attributes at five scopes (one table per scope, `scope_id` the row of
//! the site, cluster, group or node; 0 for global). A role's packages and files are kept
//! as JSON text. Lists of roles keep their order in `pos`.
//!
//! [`render_node_profile`] gathers what one node's profile is made of and hands it to
//! the pure `provision::profile::render`; [`groups_of_cluster`] lists a cluster's groups
//! with their members (what `@group` in a node set resolves to).

use std::collections::BTreeMap;

use sqlx::FromRow;

use super::{ClusterRow, Conn, NodeRow, R, StoreError};
use crate::model::{self, Group, ProfileSpec, RenderedProfile, RoleFile, RoleSpec};
use crate::provision::profile::{self, GroupInput, NodeFacts, RenderError, RenderInput};

// ---------------------------------------------------------------------------------------
// Roles

#[derive(Debug, Clone, FromRow)]
struct RoleRecord {
    id: i64,
    name: String,
    description: String,
    packages: String,
    files: String,
    post: String,
}

impl RoleRecord {
    fn spec(self) -> R<(i64, RoleSpec)> {
        let bad = |what: &str, e: serde_json::Error| {
            StoreError::BadRow(format!("role {}: {what}: {e}", self.name))
        };
        let packages: Vec<String> =
            serde_json::from_str(&self.packages).map_err(|e| bad("packages", e))?;
        let files: Vec<RoleFile> =
            serde_json::from_str(&self.files).map_err(|e| bad("files", e))?;
        Ok((
            self.id,
            RoleSpec {
                name: self.name,
                description: self.description,
                packages,
                files,
                post: self.post,
            },
        ))
    }
}

const ROLE_COLS: &str = "id, name, description, packages, files, post";

fn json(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).expect("serialisable")
}

/// Inserts a role (the name must be free: a unique violation otherwise) and returns its id.
pub async fn insert_role(c: &mut Conn, r: &RoleSpec, now: i64) -> R<i64> {
    Ok(sqlx::query_scalar(
        "INSERT INTO roles (name, description, packages, files, post, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $6) RETURNING id",
    )
    .bind(&r.name)
    .bind(&r.description)
    .bind(json(&r.packages))
    .bind(json(&r.files))
    .bind(&r.post)
    .bind(now)
    .fetch_one(c)
    .await?)
}

/// Replaces the definition of role `id` (its name stays).
pub async fn update_role(c: &mut Conn, id: i64, r: &RoleSpec, now: i64) -> R<()> {
    sqlx::query(
        "UPDATE roles SET description = $1, packages = $2, files = $3, post = $4, updated_at = $5 \
         WHERE id = $6",
    )
    .bind(&r.description)
    .bind(json(&r.packages))
    .bind(json(&r.files))
    .bind(&r.post)
    .bind(now)
    .bind(id)
    .execute(c)
    .await?;
    Ok(())
}

/// A role and its id, by name.
pub async fn role_by_name(c: &mut Conn, name: &str) -> R<Option<(i64, RoleSpec)>> {
    let row: Option<RoleRecord> =
        sqlx::query_as(&format!("SELECT {ROLE_COLS} FROM roles WHERE name = $1"))
            .bind(name)
            .fetch_optional(c)
            .await?;
    row.map(RoleRecord::spec).transpose()
}

pub async fn list_roles(c: &mut Conn) -> R<Vec<RoleSpec>> {
    let rows: Vec<RoleRecord> =
        sqlx::query_as(&format!("SELECT {ROLE_COLS} FROM roles ORDER BY name"))
            .fetch_all(c)
            .await?;
    rows.into_iter().map(|r| Ok(r.spec()?.1)).collect()
}

/// What still uses role `id`: `profile P`, `group C/G`, `node N`.
pub async fn role_users(c: &mut Conn, id: i64) -> R<Vec<String>> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT 'profile ' || p.name FROM profile_roles pr JOIN profiles p ON p.id = pr.profile_id \
         WHERE pr.role_id = $1 \
         UNION SELECT 'group ' || cl.name || '/' || g.name FROM group_roles gr \
         JOIN node_groups g ON g.id = gr.group_id JOIN clusters cl ON cl.id = g.cluster_id \
         WHERE gr.role_id = $1 \
         UNION SELECT 'node ' || n.name FROM node_roles nr JOIN nodes n ON n.id = nr.node_id \
         WHERE nr.role_id = $1",
    )
    .bind(id)
    .fetch_all(c)
    .await?;
    let mut users: Vec<String> = rows.into_iter().map(|r| r.0).collect();
    users.sort();
    Ok(users)
}

pub async fn delete_role(c: &mut Conn, id: i64) -> R<()> {
    sqlx::query("DELETE FROM roles WHERE id = $1")
        .bind(id)
        .execute(c)
        .await?;
    Ok(())
}

/// Every role named in `names` (by name), for rendering.
async fn roles_named(c: &mut Conn, names: &[String]) -> R<BTreeMap<String, RoleSpec>> {
    let mut out = BTreeMap::new();
    for name in names {
        if !out.contains_key(name)
            && let Some((_, r)) = role_by_name(c, name).await?
        {
            out.insert(name.clone(), r);
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Ordered role lists (of a profile, a group, a node)

/// The tables holding an ordered list of roles, and the column naming the owner.
#[derive(Debug, Clone, Copy)]
enum RoleList {
    Profile,
    Group,
    Node,
}

impl RoleList {
    fn table(self) -> (&'static str, &'static str) {
        match self {
            RoleList::Profile => ("profile_roles", "profile_id"),
            RoleList::Group => ("group_roles", "group_id"),
            RoleList::Node => ("node_roles", "node_id"),
        }
    }
}

async fn role_names(c: &mut Conn, list: RoleList, owner: i64) -> R<Vec<String>> {
    let (table, column) = list.table();
    let rows: Vec<(String,)> = sqlx::query_as(&format!(
        "SELECT r.name FROM {table} l JOIN roles r ON r.id = l.role_id \
         WHERE l.{column} = $1 ORDER BY l.pos"
    ))
    .bind(owner)
    .fetch_all(c)
    .await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

/// Replaces the list with `role_ids`, in that order.
async fn set_role_list(c: &mut Conn, list: RoleList, owner: i64, role_ids: &[i64]) -> R<()> {
    let (table, column) = list.table();
    sqlx::query(&format!("DELETE FROM {table} WHERE {column} = $1"))
        .bind(owner)
        .execute(&mut *c)
        .await?;
    for (pos, role) in role_ids.iter().enumerate() {
        sqlx::query(&format!(
            "INSERT INTO {table} ({column}, pos, role_id) VALUES ($1, $2, $3)"
        ))
        .bind(owner)
        .bind(pos as i64)
        .bind(*role)
        .execute(&mut *c)
        .await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Profiles

#[derive(Debug, Clone, FromRow)]
struct ProfileRecord {
    id: i64,
    name: String,
    description: String,
}

pub async fn insert_profile(c: &mut Conn, name: &str, description: &str, now: i64) -> R<i64> {
    Ok(sqlx::query_scalar(
        "INSERT INTO profiles (name, description, created_at, updated_at) VALUES ($1, $2, $3, $3) \
         RETURNING id",
    )
    .bind(name)
    .bind(description)
    .bind(now)
    .fetch_one(c)
    .await?)
}

/// Sets profile `id`'s description and roles (ids, in order).
pub async fn update_profile(
    c: &mut Conn,
    id: i64,
    description: &str,
    role_ids: &[i64],
    now: i64,
) -> R<()> {
    sqlx::query("UPDATE profiles SET description = $1, updated_at = $2 WHERE id = $3")
        .bind(description)
        .bind(now)
        .bind(id)
        .execute(&mut *c)
        .await?;
    set_role_list(c, RoleList::Profile, id, role_ids).await
}

/// A profile and its id, by name.
pub async fn profile_by_name(c: &mut Conn, name: &str) -> R<Option<(i64, ProfileSpec)>> {
    let row: Option<ProfileRecord> =
        sqlx::query_as("SELECT id, name, description FROM profiles WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *c)
            .await?;
    let Some(p) = row else { return Ok(None) };
    let roles = role_names(c, RoleList::Profile, p.id).await?;
    Ok(Some((
        p.id,
        ProfileSpec {
            name: p.name,
            description: p.description,
            roles,
        },
    )))
}

pub async fn list_profiles(c: &mut Conn) -> R<Vec<ProfileSpec>> {
    let rows: Vec<ProfileRecord> =
        sqlx::query_as("SELECT id, name, description FROM profiles ORDER BY name")
            .fetch_all(&mut *c)
            .await?;
    let mut out = Vec::with_capacity(rows.len());
    for p in rows {
        let roles = role_names(c, RoleList::Profile, p.id).await?;
        out.push(ProfileSpec {
            name: p.name,
            description: p.description,
            roles,
        });
    }
    Ok(out)
}

/// The clusters whose nodes install profile `id`.
pub async fn clusters_using_profile(c: &mut Conn, id: i64) -> R<Vec<String>> {
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT name FROM clusters WHERE profile_id = $1 ORDER BY name")
            .bind(id)
            .fetch_all(c)
            .await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

pub async fn delete_profile(c: &mut Conn, id: i64) -> R<()> {
    sqlx::query("DELETE FROM profiles WHERE id = $1")
        .bind(id)
        .execute(c)
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Groups and node roles

#[derive(Debug, Clone, FromRow)]
pub struct GroupRow {
    pub id: i64,
    pub cluster_id: i64,
    pub name: String,
}

pub async fn insert_group(c: &mut Conn, cluster_id: i64, name: &str, now: i64) -> R<i64> {
    Ok(sqlx::query_scalar(
        "INSERT INTO node_groups (cluster_id, name, created_at) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(cluster_id)
    .bind(name)
    .bind(now)
    .fetch_one(c)
    .await?)
}

pub async fn group_by_name(c: &mut Conn, cluster_id: i64, name: &str) -> R<Option<GroupRow>> {
    Ok(sqlx::query_as(
        "SELECT id, cluster_id, name FROM node_groups WHERE cluster_id = $1 AND name = $2",
    )
    .bind(cluster_id)
    .bind(name)
    .fetch_optional(c)
    .await?)
}

pub async fn delete_group(c: &mut Conn, id: i64) -> R<()> {
    sqlx::query("DELETE FROM node_groups WHERE id = $1")
        .bind(id)
        .execute(c)
        .await?;
    Ok(())
}

pub async fn add_group_member(c: &mut Conn, group_id: i64, node_id: i64) -> R<()> {
    sqlx::query(
        "INSERT INTO group_members (group_id, node_id) VALUES ($1, $2) \
         ON CONFLICT (group_id, node_id) DO NOTHING",
    )
    .bind(group_id)
    .bind(node_id)
    .execute(c)
    .await?;
    Ok(())
}

pub async fn remove_group_member(c: &mut Conn, group_id: i64, node_id: i64) -> R<()> {
    sqlx::query("DELETE FROM group_members WHERE group_id = $1 AND node_id = $2")
        .bind(group_id)
        .bind(node_id)
        .execute(c)
        .await?;
    Ok(())
}

/// Replaces the group's roles with `role_ids`, in that order.
pub async fn set_group_roles(c: &mut Conn, group_id: i64, role_ids: &[i64]) -> R<()> {
    set_role_list(c, RoleList::Group, group_id, role_ids).await
}

/// Replaces the node's own roles with `role_ids`, in that order.
pub async fn set_node_roles(c: &mut Conn, node_id: i64, role_ids: &[i64]) -> R<()> {
    set_role_list(c, RoleList::Node, node_id, role_ids).await
}

/// The node's own roles, in order.
pub async fn node_role_names(c: &mut Conn, node_id: i64) -> R<Vec<String>> {
    role_names(c, RoleList::Node, node_id).await
}

/// One group of the cluster with its members (node names, naturally ordered) and roles.
pub async fn group_model(c: &mut Conn, cluster: &str, g: &GroupRow) -> R<Group> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT n.name FROM group_members m JOIN nodes n ON n.id = m.node_id WHERE m.group_id = $1",
    )
    .bind(g.id)
    .fetch_all(&mut *c)
    .await?;
    let mut members = crate::nodeset::NodeSet::new();
    for (name,) in &rows {
        members.insert(name);
    }
    Ok(Group {
        cluster: cluster.to_string(),
        name: g.name.clone(),
        nodes: members.iter().map(str::to_string).collect(),
        roles: role_names(c, RoleList::Group, g.id).await?,
    })
}

/// Every group of the cluster, by name, with its members and roles: what parallel exec's
/// `@group` resolves to.
pub async fn groups_of_cluster(c: &mut Conn, cluster: &ClusterRow) -> R<Vec<Group>> {
    let rows: Vec<GroupRow> = sqlx::query_as(
        "SELECT id, cluster_id, name FROM node_groups WHERE cluster_id = $1 ORDER BY name",
    )
    .bind(cluster.id)
    .fetch_all(&mut *c)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for g in &rows {
        out.push(group_model(c, &cluster.name, g).await?);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Attributes

/// The table of one scope's attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttributeTable {
    Global,
    Site,
    Cluster,
    Group,
    Node,
}

impl AttributeTable {
    fn name(self) -> &'static str {
        match self {
            AttributeTable::Global => "global_attributes",
            AttributeTable::Site => "site_attributes",
            AttributeTable::Cluster => "cluster_attributes",
            AttributeTable::Group => "group_attributes",
            AttributeTable::Node => "node_attributes",
        }
    }
}

/// Sets (or replaces) one attribute of the scope row `scope_id` (0 for global).
pub async fn set_attribute(
    c: &mut Conn,
    table: AttributeTable,
    scope_id: i64,
    key: &str,
    value: &str,
    now: i64,
) -> R<()> {
    sqlx::query(&format!(
        "INSERT INTO {} (scope_id, name, value, updated_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (scope_id, name) DO UPDATE SET value = excluded.value, \
         updated_at = excluded.updated_at",
        table.name()
    ))
    .bind(scope_id)
    .bind(key)
    .bind(value)
    .bind(now)
    .execute(c)
    .await?;
    Ok(())
}

/// Removes one attribute; false when it was not set.
pub async fn unset_attribute(
    c: &mut Conn,
    table: AttributeTable,
    scope_id: i64,
    key: &str,
) -> R<bool> {
    let done = sqlx::query(&format!(
        "DELETE FROM {} WHERE scope_id = $1 AND name = $2",
        table.name()
    ))
    .bind(scope_id)
    .bind(key)
    .execute(c)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Every attribute of one scope row, by key.
pub async fn attributes(
    c: &mut Conn,
    table: AttributeTable,
    scope_id: i64,
) -> R<BTreeMap<String, String>> {
    let rows: Vec<(String, String)> = sqlx::query_as(&format!(
        "SELECT name, value FROM {} WHERE scope_id = $1",
        table.name()
    ))
    .bind(scope_id)
    .fetch_all(c)
    .await?;
    Ok(rows.into_iter().collect())
}

// ---------------------------------------------------------------------------------------
// Rendering

/// Renders the profile of `node` (a node of `cluster`) from what the store holds now.
/// `Ok(None)`: the cluster has no profile. The inner error is a template's.
pub async fn render_node_profile(
    c: &mut Conn,
    cluster: &ClusterRow,
    node: &NodeRow,
) -> R<Option<Result<RenderedProfile, RenderError>>> {
    let Some(profile_name) = &cluster.profile_name else {
        return Ok(None);
    };
    let (_, profile) = profile_by_name(c, profile_name).await?.ok_or_else(|| {
        StoreError::BadRow(format!(
            "cluster {} names profile {profile_name}, which is gone",
            cluster.name
        ))
    })?;
    let site = match super::site_by_key(c, &node.site_name).await? {
        Some(s) => attributes(c, AttributeTable::Site, s.id).await?,
        None => BTreeMap::new(),
    };
    let group_rows: Vec<GroupRow> = sqlx::query_as(
        "SELECT g.id, g.cluster_id, g.name FROM node_groups g \
         JOIN group_members m ON m.group_id = g.id WHERE m.node_id = $1",
    )
    .bind(node.id)
    .fetch_all(&mut *c)
    .await?;
    let mut groups = Vec::with_capacity(group_rows.len());
    for g in &group_rows {
        groups.push(GroupInput {
            name: g.name.clone(),
            roles: role_names(c, RoleList::Group, g.id).await?,
            attributes: attributes(c, AttributeTable::Group, g.id).await?,
        });
    }
    let mut input = RenderInput {
        node: NodeFacts {
            name: node.name.clone(),
            index: node.idx as u32,
            mac: node.mac.clone(),
            cidr: node.address.clone(),
            cluster: cluster.name.clone(),
            site: node.site_name.clone(),
        },
        node_roles: node_role_names(c, node.id).await?,
        groups,
        global: attributes(c, AttributeTable::Global, 0).await?,
        site,
        cluster: attributes(c, AttributeTable::Cluster, cluster.id).await?,
        node_attributes: attributes(c, AttributeTable::Node, node.id).await?,
        profile,
        roles: BTreeMap::new(),
    };
    input.roles = roles_named(c, &profile::role_order(&input)).await?;
    Ok(Some(profile::render(&input)))
}

/// The table a scope's attributes are kept in.
pub fn scope_kind(scope: &model::Scope) -> AttributeTable {
    match scope {
        model::Scope::Global => AttributeTable::Global,
        model::Scope::Site(_) => AttributeTable::Site,
        model::Scope::Cluster(_) => AttributeTable::Cluster,
        model::Scope::Group { .. } => AttributeTable::Group,
        model::Scope::Node(_) => AttributeTable::Node,
    }
}
