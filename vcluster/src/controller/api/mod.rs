//! The REST API: routes, the OpenAPI document generated from the handlers' annotations
//! (`GET /openapi.json`), and the checks every handler shares (names, ids). Handlers are
//! small: they validate at the edge, run one transaction, and answer JSON; policy lives in
//! `capacity`, `placement` and `tasks`, errors become responses in `error`.

pub mod clusters;
pub mod exec;
pub mod hosts;
pub mod install;
pub mod nodes;
pub mod profiles;
pub mod reservations;
pub mod sites;
pub mod tasks;
pub mod users;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::App;
use super::portal;
use crate::api_error::ApiError;
use crate::model::MAX_BODY_BYTES;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "vcluster controller",
        description = "Virtual clusters across sites: sites, hosts, clusters, nodes, reservations, tasks. \
                       Authenticate with `Authorization: Bearer <token>`."
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "sites"), (name = "hosts"), (name = "clusters"), (name = "reservations"),
        (name = "tasks"), (name = "users"), (name = "profiles")
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The whole HTTP surface of the controller.
pub fn router(app: App) -> Router {
    let (api, openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(sites::list_sites, sites::create_site))
        .routes(routes!(sites::get_site, sites::delete_site))
        .routes(routes!(sites::site_timeline))
        .routes(routes!(hosts::list_hosts))
        .routes(routes!(hosts::register_host))
        .routes(routes!(
            hosts::get_host,
            hosts::update_host,
            hosts::delete_host
        ))
        .routes(routes!(hosts::heartbeat))
        .routes(routes!(hosts::desired_state))
        .routes(routes!(clusters::list_clusters, clusters::create_cluster))
        .routes(routes!(clusters::get_cluster, clusters::delete_cluster))
        .routes(routes!(clusters::add_nodes))
        .routes(routes!(clusters::remove_node))
        .routes(routes!(clusters::start_overlay))
        .routes(routes!(clusters::stop_overlay))
        .routes(routes!(exec::exec_on_nodes))
        .routes(routes!(exec::copy_to_nodes))
        .routes(routes!(clusters::set_recovery))
        .routes(routes!(install::reinstall))
        .routes(routes!(nodes::node_console))
        .routes(routes!(nodes::power_nodes))
        .routes(routes!(install::install_report))
        .routes(routes!(install::install_report_batch))
        .routes(routes!(install::install_profile))
        .routes(routes!(profiles::list_roles, profiles::create_role))
        .routes(routes!(
            profiles::get_role,
            profiles::replace_role,
            profiles::delete_role
        ))
        .routes(routes!(profiles::list_profiles, profiles::create_profile))
        .routes(routes!(
            profiles::get_profile,
            profiles::replace_profile,
            profiles::delete_profile
        ))
        .routes(routes!(
            profiles::list_attributes,
            profiles::set_attribute,
            profiles::unset_attribute
        ))
        .routes(routes!(profiles::list_groups, profiles::create_group))
        .routes(routes!(
            profiles::get_group,
            profiles::update_group,
            profiles::delete_group
        ))
        .routes(routes!(profiles::get_node_roles, profiles::set_node_roles))
        .routes(routes!(profiles::render_node))
        .routes(routes!(profiles::set_cluster_profile))
        .routes(routes!(
            reservations::list_reservations,
            reservations::create_reservation
        ))
        .routes(routes!(reservations::earliest_slot))
        .routes(routes!(
            reservations::get_reservation,
            reservations::cancel_reservation
        ))
        .routes(routes!(tasks::list_tasks))
        .routes(routes!(tasks::get_task))
        .routes(routes!(tasks::list_events))
        .routes(routes!(users::whoami))
        .routes(routes!(users::list_users, users::create_user))
        .routes(routes!(users::issue_token))
        .split_for_parts();
    let openapi = std::sync::Arc::new(openapi);

    Router::new()
        .merge(api)
        .route(
            "/openapi.json",
            get(move || {
                let doc = openapi.clone();
                async move { axum::Json((*doc).clone()) }
            }),
        )
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(portal::router())
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(app.clone(), count_requests))
        .layer(TraceLayer::new_for_http())
        .with_state(app)
}

async fn metrics(State(app): State<App>) -> Result<Response, ApiError> {
    let body = app.metrics.render(&app).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response())
}

async fn count_requests(State(app): State<App>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = req.method().clone();
    let resp = next.run(req).await;
    app.metrics.request(&method, &route, resp.status().as_u16());
    resp
}

/// Names of sites, hosts, clusters and users: a lower-case letter, then lower-case
/// letters, digits and `-`, at most 32 characters, not ending in `-`. They appear in node
/// names, network namespace names and URLs, so they stay plain.
pub fn check_name(field: &str, name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name.as_bytes()[0].is_ascii_lowercase()
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            field,
            format!(
                "{field} {name:?} is not a valid name: use a lower-case letter, then lower-case letters, \
                 digits and '-', at most 32 characters, not ending in '-'"
            ),
        ))
    }
}

/// 201 with a JSON body.
pub fn created<T: serde::Serialize>(body: T) -> Response {
    (StatusCode::CREATED, axum::Json(body)).into_response()
}

/// 202 with a JSON body: the operation goes on in a task.
pub fn accepted<T: serde::Serialize>(body: T) -> Response {
    (StatusCode::ACCEPTED, axum::Json(body)).into_response()
}
