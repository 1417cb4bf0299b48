//! The configuration database over HTTP (docs/provisioning.md): roles and profiles
//! (global: admins write, people read), attributes at five scopes (global and site:
//! admins write; cluster, group and node: the cluster's owner), groups of a cluster's
//! nodes and a node's own roles (the owner), a cluster's profile, and the profile a node
//! gets, rendered. Someone else's cluster, group or node is a 404, as in `clusters`.
//!
//! A cluster's profile is checked where it takes effect: [`render_every_node`] renders
//! each node's profile inside the caller's transaction, so a template error refuses the
//! whole request and nothing of it is kept.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;

use super::clusters::{cluster_model, visible_cluster};
use super::created;
use crate::api_error::{ApiError, ApiJson, ApiPath, ApiQuery};
use crate::controller::App;
use crate::controller::auth::Principal;
use crate::controller::requests::check_role_list;
use crate::controller::store::{
    self, AttributeTable, ClusterRow, GroupRow, NodeRow, WriteTx, now_ms, scope_kind,
};
use crate::model::{
    ApiErrorBody, Attribute, Cluster, CreateGroup, Group, NodeRoles, NodeState, ProfileSpec,
    RenderedProfile, RoleSpec, Scope, SetClusterProfile, SetNodeRoles, UpdateGroup,
};
use crate::nodeset::NodeSet;

fn unique_taken(e: store::StoreError, what: String) -> ApiError {
    match e {
        store::StoreError::Db(e) if store::is_unique_violation(&e) => {
            ApiError::conflict(format!("{what} already exists")).with_field("name")
        }
        e => e.into(),
    }
}

/// The ids of the named roles, in order; an unknown one is a 422 naming `field[i]`.
async fn role_ids(
    conn: &mut sqlx::AnyConnection,
    field: &str,
    roles: &[String],
) -> Result<Vec<i64>, ApiError> {
    check_role_list(field, roles)?;
    let mut ids = Vec::with_capacity(roles.len());
    for (i, name) in roles.iter().enumerate() {
        let (id, _) = store::role_by_name(conn, name).await?.ok_or_else(|| {
            ApiError::invalid(&format!("{field}[{i}]"), format!("no role {name:?}"))
        })?;
        ids.push(id);
    }
    Ok(ids)
}

fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

fn same_name(path: &str, body: &str) -> Result<(), ApiError> {
    if path == body {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "name",
            format!("the body names {body:?} but the path {path:?}; renaming is not supported"),
        ))
    }
}

// ---------------------------------------------------------------------------------------
// Roles

#[utoipa::path(get, path = "/v1/roles", tag = "profiles",
    responses((status = 200, body = Vec<RoleSpec>)))]
pub async fn list_roles(
    State(app): State<App>,
    who: Principal,
) -> Result<ApiJson<Vec<RoleSpec>>, ApiError> {
    who.require_person()?;
    let mut rx = app.store.read().await?;
    let roles = store::list_roles(rx.conn()).await?;
    rx.finish().await?;
    Ok(ApiJson(roles))
}

/// Defines a role (admin). Its templates must parse.
#[utoipa::path(post, path = "/v1/roles", tag = "profiles", request_body = RoleSpec,
    responses((status = 201, body = RoleSpec), (status = 409, body = ApiErrorBody), (status = 422, body = ApiErrorBody)))]
pub async fn create_role(
    State(app): State<App>,
    who: Principal,
    ApiJson(req): ApiJson<RoleSpec>,
) -> Result<Response, ApiError> {
    who.require_admin()?;
    req.validate()?;
    let mut tx = app.store.write().await?;
    store::insert_role(tx.conn(), &req, now_ms())
        .await
        .map_err(|e| unique_taken(e, format!("role {:?}", req.name)))?;
    tx.commit().await?;
    tracing::info!(role = %req.name, "role created");
    Ok(created(req))
}

#[utoipa::path(get, path = "/v1/roles/{role}", tag = "profiles",
    params(("role" = String, Path, description = "role name")),
    responses((status = 200, body = RoleSpec), (status = 404, body = ApiErrorBody)))]
pub async fn get_role(
    State(app): State<App>,
    who: Principal,
    ApiPath(role): ApiPath<String>,
) -> Result<ApiJson<RoleSpec>, ApiError> {
    who.require_person()?;
    let mut rx = app.store.read().await?;
    let found = store::role_by_name(rx.conn(), &role).await?;
    rx.finish().await?;
    let (_, spec) = found.ok_or_else(|| ApiError::not_found(format!("no role {role:?}")))?;
    Ok(ApiJson(spec))
}

/// Replaces a role's definition (admin).
#[utoipa::path(put, path = "/v1/roles/{role}", tag = "profiles", request_body = RoleSpec,
    params(("role" = String, Path, description = "role name")),
    responses((status = 200, body = RoleSpec), (status = 404, body = ApiErrorBody), (status = 422, body = ApiErrorBody)))]
pub async fn replace_role(
    State(app): State<App>,
    who: Principal,
    ApiPath(role): ApiPath<String>,
    ApiJson(req): ApiJson<RoleSpec>,
) -> Result<ApiJson<RoleSpec>, ApiError> {
    who.require_admin()?;
    same_name(&role, &req.name)?;
    req.validate()?;
    let mut tx = app.store.write().await?;
    let (id, _) = store::role_by_name(tx.conn(), &role)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no role {role:?}")))?;
    store::update_role(tx.conn(), id, &req, now_ms()).await?;
    tx.commit().await?;
    Ok(ApiJson(req))
}

/// Deletes a role no profile, group or node uses (admin).
#[utoipa::path(delete, path = "/v1/roles/{role}", tag = "profiles",
    params(("role" = String, Path, description = "role name")),
    responses((status = 204), (status = 404, body = ApiErrorBody), (status = 409, body = ApiErrorBody)))]
pub async fn delete_role(
    State(app): State<App>,
    who: Principal,
    ApiPath(role): ApiPath<String>,
) -> Result<Response, ApiError> {
    who.require_admin()?;
    let mut tx = app.store.write().await?;
    let (id, _) = store::role_by_name(tx.conn(), &role)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no role {role:?}")))?;
    let users = store::role_users(tx.conn(), id).await?;
    if !users.is_empty() {
        return Err(ApiError::conflict(format!(
            "role {role} is used by {}; take it out of them first",
            users.join(", ")
        )));
    }
    store::delete_role(tx.conn(), id).await?;
    tx.commit().await?;
    Ok(no_content())
}

// ---------------------------------------------------------------------------------------
// Profiles

#[utoipa::path(get, path = "/v1/profiles", tag = "profiles",
    responses((status = 200, body = Vec<ProfileSpec>)))]
pub async fn list_profiles(
    State(app): State<App>,
    who: Principal,
) -> Result<ApiJson<Vec<ProfileSpec>>, ApiError> {
    who.require_person()?;
    let mut rx = app.store.read().await?;
    let profiles = store::list_profiles(rx.conn()).await?;
    rx.finish().await?;
    Ok(ApiJson(profiles))
}

/// Defines a profile: an ordered list of existing roles (admin).
#[utoipa::path(post, path = "/v1/profiles", tag = "profiles", request_body = ProfileSpec,
    responses((status = 201, body = ProfileSpec), (status = 409, body = ApiErrorBody), (status = 422, body = ApiErrorBody)))]
pub async fn create_profile(
    State(app): State<App>,
    who: Principal,
    ApiJson(req): ApiJson<ProfileSpec>,
) -> Result<Response, ApiError> {
    who.require_admin()?;
    req.validate()?;
    let now = now_ms();
    let mut tx = app.store.write().await?;
    let roles = role_ids(tx.conn(), "roles", &req.roles).await?;
    let id = store::insert_profile(tx.conn(), &req.name, &req.description, now)
        .await
        .map_err(|e| unique_taken(e, format!("profile {:?}", req.name)))?;
    store::update_profile(tx.conn(), id, &req.description, &roles, now).await?;
    tx.commit().await?;
    tracing::info!(profile = %req.name, "profile created");
    Ok(created(req))
}

#[utoipa::path(get, path = "/v1/profiles/{profile}", tag = "profiles",
    params(("profile" = String, Path, description = "profile name")),
    responses((status = 200, body = ProfileSpec), (status = 404, body = ApiErrorBody)))]
pub async fn get_profile(
    State(app): State<App>,
    who: Principal,
    ApiPath(profile): ApiPath<String>,
) -> Result<ApiJson<ProfileSpec>, ApiError> {
    who.require_person()?;
    let mut rx = app.store.read().await?;
    let found = store::profile_by_name(rx.conn(), &profile).await?;
    rx.finish().await?;
    let (_, spec) = found.ok_or_else(|| ApiError::not_found(format!("no profile {profile:?}")))?;
    Ok(ApiJson(spec))
}

/// Replaces a profile's description and roles (admin).
#[utoipa::path(put, path = "/v1/profiles/{profile}", tag = "profiles", request_body = ProfileSpec,
    params(("profile" = String, Path, description = "profile name")),
    responses((status = 200, body = ProfileSpec), (status = 404, body = ApiErrorBody), (status = 422, body = ApiErrorBody)))]
pub async fn replace_profile(
    State(app): State<App>,
    who: Principal,
    ApiPath(profile): ApiPath<String>,
    ApiJson(req): ApiJson<ProfileSpec>,
) -> Result<ApiJson<ProfileSpec>, ApiError> {
    who.require_admin()?;
    same_name(&profile, &req.name)?;
    req.validate()?;
    let mut tx = app.store.write().await?;
    let (id, _) = store::profile_by_name(tx.conn(), &profile)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no profile {profile:?}")))?;
    let roles = role_ids(tx.conn(), "roles", &req.roles).await?;
    store::update_profile(tx.conn(), id, &req.description, &roles, now_ms()).await?;
    tx.commit().await?;
    Ok(ApiJson(req))
}

/// Deletes a profile no cluster uses (admin).
#[utoipa::path(delete, path = "/v1/profiles/{profile}", tag = "profiles",
    params(("profile" = String, Path, description = "profile name")),
    responses((status = 204), (status = 404, body = ApiErrorBody), (status = 409, body = ApiErrorBody)))]
pub async fn delete_profile(
    State(app): State<App>,
    who: Principal,
    ApiPath(profile): ApiPath<String>,
) -> Result<Response, ApiError> {
    who.require_admin()?;
    let mut tx = app.store.write().await?;
    let (id, _) = store::profile_by_name(tx.conn(), &profile)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no profile {profile:?}")))?;
    let users = store::clusters_using_profile(tx.conn(), id).await?;
    if !users.is_empty() {
        return Err(ApiError::conflict(format!(
            "profile {profile} is the profile of clusters {}; change theirs first",
            users.join(", ")
        )));
    }
    store::delete_profile(tx.conn(), id).await?;
    tx.commit().await?;
    Ok(no_content())
}

// ---------------------------------------------------------------------------------------
// Rendering

/// Renders the profile of every live node of `cluster` (as `conn` sees it): the first
/// template error is a 422 naming the node, the template, the line and the attribute.
/// Callers run it inside their write transaction, so a refusal keeps nothing.
pub(crate) async fn render_every_node(
    conn: &mut sqlx::AnyConnection,
    cluster: &ClusterRow,
) -> Result<(), ApiError> {
    if cluster.profile_name.is_none() {
        return Ok(());
    }
    for node in store::nodes_of_cluster(conn, cluster.id).await? {
        if matches!(node.state, NodeState::Deleted | NodeState::Failed) {
            continue;
        }
        if let Some(Err(e)) = store::render_node_profile(conn, cluster, &node).await? {
            return Err(ApiError::invalid(
                "profile",
                format!("node {}: {e}; nothing was changed", node.name),
            ));
        }
    }
    Ok(())
}

/// The node if `who` may see its cluster (404 otherwise), with its cluster.
async fn visible_node(
    conn: &mut sqlx::AnyConnection,
    who: &Principal,
    name: &str,
) -> Result<(ClusterRow, NodeRow), ApiError> {
    let not_found = || ApiError::not_found(format!("no node {name:?}"));
    let node = store::node_by_name(conn, name)
        .await?
        .filter(|n| n.state != NodeState::Deleted)
        .ok_or_else(not_found)?;
    let cluster = store::cluster_by_id(conn, node.cluster_id)
        .await?
        .filter(|c| who.may_see(c.owner_id))
        .ok_or_else(not_found)?;
    Ok((cluster, node))
}

/// Exactly what the node installs: its roles, merged attributes, packages, files and post
/// scripts. 409 when its cluster has no profile; 422 with the template error.
#[utoipa::path(get, path = "/v1/nodes/{node}/profile", tag = "profiles",
    params(("node" = String, Path, description = "node name")),
    responses((status = 200, body = RenderedProfile), (status = 404, body = ApiErrorBody),
              (status = 409, body = ApiErrorBody), (status = 422, body = ApiErrorBody)))]
pub async fn render_node(
    State(app): State<App>,
    who: Principal,
    ApiPath(node): ApiPath<String>,
) -> Result<ApiJson<RenderedProfile>, ApiError> {
    who.require_person()?;
    let mut rx = app.store.read().await?;
    let (cluster, row) = visible_node(rx.conn(), &who, &node).await?;
    let rendered = store::render_node_profile(rx.conn(), &cluster, &row).await?;
    rx.finish().await?;
    match rendered {
        None => Err(ApiError::conflict(format!(
            "cluster {} has no profile; give it one with `vcluster cluster profile {} PROFILE`",
            cluster.name, cluster.name
        ))),
        Some(Ok(p)) => Ok(ApiJson(p)),
        Some(Err(e)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("node {node}: {e}"),
        )),
    }
}

/// Sets (or clears) the cluster's profile (owner). Every node's profile is rendered
/// first: a template error is a 422 and the cluster keeps its profile.
#[utoipa::path(put, path = "/v1/clusters/{cluster}/profile", tag = "profiles",
    request_body = SetClusterProfile,
    params(("cluster" = String, Path, description = "cluster name or id")),
    responses((status = 200, body = Cluster), (status = 404, body = ApiErrorBody), (status = 422, body = ApiErrorBody)))]
pub async fn set_cluster_profile(
    State(app): State<App>,
    who: Principal,
    ApiPath(cluster): ApiPath<String>,
    ApiJson(req): ApiJson<SetClusterProfile>,
) -> Result<ApiJson<Cluster>, ApiError> {
    who.require_person()?;
    let now = now_ms();
    let mut tx = app.store.write().await?;
    let row = visible_cluster(tx.conn(), &who, &cluster).await?;
    let profile_id = profile_id(&mut tx, req.profile.as_deref()).await?;
    store::set_cluster_profile(tx.conn(), row.id, profile_id, now).await?;
    let row = visible_cluster(tx.conn(), &who, &cluster).await?;
    render_every_node(tx.conn(), &row).await?;
    let model = cluster_model(tx.conn(), &row, &app.monitor).await?;
    tx.commit().await?;
    Ok(ApiJson(model))
}

/// The id of the profile a request names (`field` `profile`), or `None` for none.
pub(crate) async fn profile_id(
    tx: &mut WriteTx,
    profile: Option<&str>,
) -> Result<Option<i64>, ApiError> {
    let Some(name) = profile else { return Ok(None) };
    let (id, _) = store::profile_by_name(tx.conn(), name)
        .await?
        .ok_or_else(|| ApiError::invalid("profile", format!("no profile {name:?}")))?;
    Ok(Some(id))
}

// ---------------------------------------------------------------------------------------
// Attributes

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ScopeQuery {
    /// `global`, `site:NAME`, `cluster:NAME`, `group:CLUSTER/NAME` or `node:NAME`.
    #[param(value_type = String)]
    pub scope: Scope,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct UnsetQuery {
    #[param(value_type = String)]
    pub scope: Scope,
    pub key: String,
}

/// The table and row of a scope's attributes, if `who` may read (or, with `write`,
/// change) them: admins write global and site attributes, a cluster's owner its
/// cluster's, groups' and nodes'. Someone else's cluster, group or node is a 404.
async fn scope_row(
    conn: &mut sqlx::AnyConnection,
    who: &Principal,
    scope: &Scope,
    write: bool,
) -> Result<(AttributeTable, i64), ApiError> {
    if write && matches!(scope, Scope::Global | Scope::Site(_)) {
        who.require_admin()?;
    }
    let id = match scope {
        Scope::Global => 0,
        Scope::Site(name) => {
            store::site_by_key(conn, name)
                .await?
                .ok_or_else(|| ApiError::not_found(format!("no site {name:?}")))?
                .id
        }
        Scope::Cluster(name) => visible_cluster(conn, who, name).await?.id,
        Scope::Group { cluster, group } => visible_group(conn, who, cluster, group).await?.1.id,
        Scope::Node(name) => visible_node(conn, who, name).await?.1.id,
    };
    Ok((scope_kind(scope), id))
}

/// Every attribute set at one scope.
#[utoipa::path(get, path = "/v1/attributes", tag = "profiles", params(ScopeQuery),
    responses((status = 200, body = Vec<Attribute>), (status = 404, body = ApiErrorBody)))]
pub async fn list_attributes(
    State(app): State<App>,
    who: Principal,
    ApiQuery(q): ApiQuery<ScopeQuery>,
) -> Result<ApiJson<Vec<Attribute>>, ApiError> {
    who.require_person()?;
    let mut rx = app.store.read().await?;
    let (table, id) = scope_row(rx.conn(), &who, &q.scope, false).await?;
    let attrs = store::attributes(rx.conn(), table, id).await?;
    rx.finish().await?;
    Ok(ApiJson(
        attrs
            .into_iter()
            .map(|(key, value)| Attribute {
                scope: q.scope.clone(),
                key,
                value,
            })
            .collect(),
    ))
}

/// Sets one attribute at its scope (global, site: admin; cluster, group, node: owner).
#[utoipa::path(put, path = "/v1/attributes", tag = "profiles", request_body = Attribute,
    responses((status = 200, body = Attribute), (status = 403, body = ApiErrorBody),
              (status = 404, body = ApiErrorBody), (status = 422, body = ApiErrorBody)))]
pub async fn set_attribute(
    State(app): State<App>,
    who: Principal,
    ApiJson(req): ApiJson<Attribute>,
) -> Result<ApiJson<Attribute>, ApiError> {
    who.require_person()?;
    req.validate()?;
    let mut tx = app.store.write().await?;
    let (table, id) = scope_row(tx.conn(), &who, &req.scope, true).await?;
    store::set_attribute(tx.conn(), table, id, &req.key, &req.value, now_ms()).await?;
    tx.commit().await?;
    Ok(ApiJson(req))
}

/// Removes one attribute from its scope.
#[utoipa::path(delete, path = "/v1/attributes", tag = "profiles", params(UnsetQuery),
    responses((status = 204), (status = 404, body = ApiErrorBody)))]
pub async fn unset_attribute(
    State(app): State<App>,
    who: Principal,
    ApiQuery(q): ApiQuery<UnsetQuery>,
) -> Result<Response, ApiError> {
    who.require_person()?;
    let mut tx = app.store.write().await?;
    let (table, id) = scope_row(tx.conn(), &who, &q.scope, true).await?;
    if !store::unset_attribute(tx.conn(), table, id, &q.key).await? {
        return Err(ApiError::not_found(format!(
            "attribute {} is not set at {}",
            q.key, q.scope
        )));
    }
    tx.commit().await?;
    Ok(no_content())
}

// ---------------------------------------------------------------------------------------
// Groups and node roles

async fn visible_group(
    conn: &mut sqlx::AnyConnection,
    who: &Principal,
    cluster: &str,
    group: &str,
) -> Result<(ClusterRow, GroupRow), ApiError> {
    let c = visible_cluster(conn, who, cluster).await?;
    let g = store::group_by_name(conn, c.id, group)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("cluster {} has no group {group:?}", c.name)))?;
    Ok((c, g))
}

/// The ids of the cluster's live nodes named by node set `expr` (field `field`); a name
/// that is not one of them is a 422 naming it.
async fn member_ids(
    conn: &mut sqlx::AnyConnection,
    cluster: &ClusterRow,
    field: &str,
    expr: &str,
) -> Result<Vec<i64>, ApiError> {
    if expr.trim().is_empty() {
        return Ok(vec![]);
    }
    let set = NodeSet::parse_plain(expr).map_err(|e| ApiError::invalid(field, e.to_string()))?;
    let nodes = store::nodes_of_cluster(conn, cluster.id).await?;
    let mut ids = Vec::with_capacity(set.len());
    let mut unknown = Vec::new();
    for name in set.iter() {
        match nodes
            .iter()
            .find(|n| n.name == name && n.state != NodeState::Deleted)
        {
            Some(n) => ids.push(n.id),
            None => unknown.push(name.to_string()),
        }
    }
    if !unknown.is_empty() {
        return Err(ApiError::invalid(
            field,
            format!(
                "cluster {} has no node {}",
                cluster.name,
                unknown.join(", ")
            ),
        ));
    }
    Ok(ids)
}

#[utoipa::path(get, path = "/v1/clusters/{cluster}/groups", tag = "profiles",
    params(("cluster" = String, Path, description = "cluster name or id")),
    responses((status = 200, body = Vec<Group>), (status = 404, body = ApiErrorBody)))]
pub async fn list_groups(
    State(app): State<App>,
    who: Principal,
    ApiPath(cluster): ApiPath<String>,
) -> Result<ApiJson<Vec<Group>>, ApiError> {
    who.require_person()?;
    let mut rx = app.store.read().await?;
    let row = visible_cluster(rx.conn(), &who, &cluster).await?;
    let groups = store::groups_of_cluster(rx.conn(), &row).await?;
    rx.finish().await?;
    Ok(ApiJson(groups))
}

/// Creates a group of the cluster's nodes (owner). Its roles and attributes apply to its
/// members: every node's profile is rendered first.
#[utoipa::path(post, path = "/v1/clusters/{cluster}/groups", tag = "profiles", request_body = CreateGroup,
    params(("cluster" = String, Path, description = "cluster name or id")),
    responses((status = 201, body = Group), (status = 404, body = ApiErrorBody),
              (status = 409, body = ApiErrorBody), (status = 422, body = ApiErrorBody)))]
pub async fn create_group(
    State(app): State<App>,
    who: Principal,
    ApiPath(cluster): ApiPath<String>,
    ApiJson(req): ApiJson<CreateGroup>,
) -> Result<Response, ApiError> {
    who.require_person()?;
    req.validate()?;
    let mut tx = app.store.write().await?;
    let c = visible_cluster(tx.conn(), &who, &cluster).await?;
    let members = member_ids(tx.conn(), &c, "nodes", &req.nodes).await?;
    let roles = role_ids(tx.conn(), "roles", &req.roles).await?;
    let id = store::insert_group(tx.conn(), c.id, &req.name, now_ms())
        .await
        .map_err(|e| unique_taken(e, format!("group {:?} of cluster {}", req.name, c.name)))?;
    for m in members {
        store::add_group_member(tx.conn(), id, m).await?;
    }
    store::set_group_roles(tx.conn(), id, &roles).await?;
    render_every_node(tx.conn(), &c).await?;
    let (_, g) = visible_group(tx.conn(), &who, &cluster, &req.name).await?;
    let model = store::group_model(tx.conn(), &c.name, &g).await?;
    tx.commit().await?;
    Ok(created(model))
}

#[utoipa::path(get, path = "/v1/clusters/{cluster}/groups/{group}", tag = "profiles",
    params(("cluster" = String, Path, description = "cluster name or id"), ("group" = String, Path)),
    responses((status = 200, body = Group), (status = 404, body = ApiErrorBody)))]
pub async fn get_group(
    State(app): State<App>,
    who: Principal,
    ApiPath((cluster, group)): ApiPath<(String, String)>,
) -> Result<ApiJson<Group>, ApiError> {
    who.require_person()?;
    let mut rx = app.store.read().await?;
    let (c, g) = visible_group(rx.conn(), &who, &cluster, &group).await?;
    let model = store::group_model(rx.conn(), &c.name, &g).await?;
    rx.finish().await?;
    Ok(ApiJson(model))
}

/// Adds and removes members, or replaces the group's roles (owner).
#[utoipa::path(patch, path = "/v1/clusters/{cluster}/groups/{group}", tag = "profiles", request_body = UpdateGroup,
    params(("cluster" = String, Path, description = "cluster name or id"), ("group" = String, Path)),
    responses((status = 200, body = Group), (status = 404, body = ApiErrorBody), (status = 422, body = ApiErrorBody)))]
pub async fn update_group(
    State(app): State<App>,
    who: Principal,
    ApiPath((cluster, group)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<UpdateGroup>,
) -> Result<ApiJson<Group>, ApiError> {
    who.require_person()?;
    let mut tx = app.store.write().await?;
    let (c, g) = visible_group(tx.conn(), &who, &cluster, &group).await?;
    for m in member_ids(tx.conn(), &c, "add", &req.add).await? {
        store::add_group_member(tx.conn(), g.id, m).await?;
    }
    for m in member_ids(tx.conn(), &c, "remove", &req.remove).await? {
        store::remove_group_member(tx.conn(), g.id, m).await?;
    }
    if let Some(roles) = &req.roles {
        let ids = role_ids(tx.conn(), "roles", roles).await?;
        store::set_group_roles(tx.conn(), g.id, &ids).await?;
    }
    render_every_node(tx.conn(), &c).await?;
    let model = store::group_model(tx.conn(), &c.name, &g).await?;
    tx.commit().await?;
    Ok(ApiJson(model))
}

#[utoipa::path(delete, path = "/v1/clusters/{cluster}/groups/{group}", tag = "profiles",
    params(("cluster" = String, Path, description = "cluster name or id"), ("group" = String, Path)),
    responses((status = 204), (status = 404, body = ApiErrorBody)))]
pub async fn delete_group(
    State(app): State<App>,
    who: Principal,
    ApiPath((cluster, group)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    who.require_person()?;
    let mut tx = app.store.write().await?;
    let (_, g) = visible_group(tx.conn(), &who, &cluster, &group).await?;
    store::delete_group(tx.conn(), g.id).await?;
    tx.commit().await?;
    Ok(no_content())
}

#[utoipa::path(get, path = "/v1/nodes/{node}/roles", tag = "profiles",
    params(("node" = String, Path, description = "node name")),
    responses((status = 200, body = NodeRoles), (status = 404, body = ApiErrorBody)))]
pub async fn get_node_roles(
    State(app): State<App>,
    who: Principal,
    ApiPath(node): ApiPath<String>,
) -> Result<ApiJson<NodeRoles>, ApiError> {
    who.require_person()?;
    let mut rx = app.store.read().await?;
    let (_, n) = visible_node(rx.conn(), &who, &node).await?;
    let roles = store::node_role_names(rx.conn(), n.id).await?;
    rx.finish().await?;
    Ok(ApiJson(NodeRoles {
        node: n.name,
        roles,
    }))
}

/// Replaces the node's own roles (owner); its profile is rendered first.
#[utoipa::path(put, path = "/v1/nodes/{node}/roles", tag = "profiles", request_body = SetNodeRoles,
    params(("node" = String, Path, description = "node name")),
    responses((status = 200, body = NodeRoles), (status = 404, body = ApiErrorBody), (status = 422, body = ApiErrorBody)))]
pub async fn set_node_roles(
    State(app): State<App>,
    who: Principal,
    ApiPath(node): ApiPath<String>,
    ApiJson(req): ApiJson<SetNodeRoles>,
) -> Result<ApiJson<NodeRoles>, ApiError> {
    who.require_person()?;
    let mut tx = app.store.write().await?;
    let (c, n) = visible_node(tx.conn(), &who, &node).await?;
    let ids = role_ids(tx.conn(), "roles", &req.roles).await?;
    store::set_node_roles(tx.conn(), n.id, &ids).await?;
    render_every_node(tx.conn(), &c).await?;
    tx.commit().await?;
    Ok(ApiJson(NodeRoles {
        node: n.name,
        roles: req.roles,
    }))
}
