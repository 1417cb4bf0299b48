//! Sites: where hosts are. Everyone signed in reads them with their capacity, use and
//! reservations (the portal's first view); admins create and delete them.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;

use super::created;
use crate::api_error::{ApiError, ApiJson, ApiPath, ApiQuery};
use crate::controller::App;
use crate::controller::auth::Principal;
use crate::controller::store::{self, ms_to_time, now_ms};
use crate::controller::view::CapacityView;
use crate::model::{
    ApiErrorBody, CreateSite, ReservationState, Resources, Site, SiteTimeline, TimelinePoint,
};

async fn view(app: &App, conn: &mut sqlx::AnyConnection) -> Result<CapacityView, ApiError> {
    Ok(CapacityView::load(conn, now_ms(), app.config.overcommit, app.host_timeout_ms()).await?)
}

/// Every site with its capacity, what is in use and what is reserved now.
#[utoipa::path(get, path = "/v1/sites", tag = "sites",
    responses((status = 200, body = Vec<Site>), (status = 401, body = ApiErrorBody)))]
pub async fn list_sites(
    State(app): State<App>,
    who: Principal,
) -> Result<ApiJson<Vec<Site>>, ApiError> {
    who.require_person()?;
    let mut rx = app.store.read().await?;
    let v = view(&app, rx.conn()).await?;
    rx.finish().await?;
    Ok(ApiJson(v.sites.iter().map(|s| v.site_model(s)).collect()))
}

/// Creates a site (admin).
#[utoipa::path(post, path = "/v1/sites", tag = "sites", request_body = CreateSite,
    responses((status = 201, body = Site), (status = 409, body = ApiErrorBody), (status = 422, body = ApiErrorBody)))]
pub async fn create_site(
    State(app): State<App>,
    who: Principal,
    ApiJson(req): ApiJson<CreateSite>,
) -> Result<Response, ApiError> {
    who.require_admin()?;
    req.validate()?;
    let mut tx = app.store.write().await?;
    let row = match store::insert_site(tx.conn(), &req.name, &req.description, now_ms()).await {
        Ok(r) => r,
        Err(store::StoreError::Db(e)) if store::is_unique_violation(&e) => {
            return Err(
                ApiError::conflict(format!("site {:?} already exists", req.name))
                    .with_field("name"),
            );
        }
        Err(e) => return Err(e.into()),
    };
    let v = view(&app, tx.conn()).await?;
    tx.commit().await?;
    tracing::info!(site = %row.name, "site created");
    Ok(created(v.site_model(&row)))
}

#[utoipa::path(get, path = "/v1/sites/{site}", tag = "sites",
    params(("site" = String, Path, description = "site name or id")),
    responses((status = 200, body = Site), (status = 404, body = ApiErrorBody)))]
pub async fn get_site(
    State(app): State<App>,
    who: Principal,
    ApiPath(site): ApiPath<String>,
) -> Result<ApiJson<Site>, ApiError> {
    who.require_person()?;
    let mut rx = app.store.read().await?;
    let row = store::site_by_key(rx.conn(), &site)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no site {site:?}")))?;
    let v = view(&app, rx.conn()).await?;
    rx.finish().await?;
    Ok(ApiJson(v.site_model(&row)))
}

/// Deletes a site that has no hosts and no accepted reservation (admin). Its cancelled and
/// expired reservations go with it.
#[utoipa::path(delete, path = "/v1/sites/{site}", tag = "sites",
    params(("site" = String, Path, description = "site name or id")),
    responses((status = 204), (status = 404, body = ApiErrorBody), (status = 409, body = ApiErrorBody)))]
pub async fn delete_site(
    State(app): State<App>,
    who: Principal,
    ApiPath(site): ApiPath<String>,
) -> Result<Response, ApiError> {
    who.require_admin()?;
    let mut tx = app.store.write().await?;
    let row = store::site_by_key(tx.conn(), &site)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no site {site:?}")))?;
    let hosts = store::list_hosts(tx.conn()).await?;
    let here: Vec<String> = hosts
        .iter()
        .filter(|h| h.site_id == row.id)
        .map(|h| h.name.clone())
        .collect();
    if !here.is_empty() {
        return Err(ApiError::conflict(format!(
            "site {} still has hosts: {}; delete them first",
            row.name,
            here.join(", ")
        )));
    }
    let reservations: Vec<_> = store::list_reservations(tx.conn(), None)
        .await?
        .into_iter()
        .filter(|r| r.site_id == row.id)
        .collect();
    let accepted: Vec<String> = reservations
        .iter()
        .filter(|r| r.state == ReservationState::Accepted)
        .map(|r| r.id.to_string())
        .collect();
    if !accepted.is_empty() {
        return Err(ApiError::conflict(format!(
            "site {} has accepted reservations: {}; cancel them first",
            row.name,
            accepted.join(", ")
        )));
    }
    for r in &reservations {
        let users: Vec<String> = store::clusters_of_reservation(tx.conn(), r.id)
            .await?
            .into_iter()
            .map(|c| c.name)
            .collect();
        if !users.is_empty() {
            return Err(ApiError::conflict(format!(
                "site {}'s reservation {} still has clusters: {}; delete them first",
                row.name,
                r.id,
                users.join(", ")
            )));
        }
    }
    store::delete_site(tx.conn(), row.id).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct TimelineQuery {
    /// How far back, in hours (default 24, at most 744).
    pub hours_back: Option<f64>,
    /// How far ahead, in hours (default 168, at most 8760).
    pub hours_ahead: Option<f64>,
}

/// The site's capacity, use and reservations over time: samples of the past, the lease
/// boundaries of the future.
#[utoipa::path(get, path = "/v1/sites/{site}/timeline", tag = "sites",
    params(("site" = String, Path, description = "site name or id"), TimelineQuery),
    responses((status = 200, body = SiteTimeline), (status = 404, body = ApiErrorBody)))]
pub async fn site_timeline(
    State(app): State<App>,
    who: Principal,
    ApiPath(site): ApiPath<String>,
    ApiQuery(q): ApiQuery<TimelineQuery>,
) -> Result<ApiJson<SiteTimeline>, ApiError> {
    who.require_person()?;
    let back = q.hours_back.unwrap_or(24.0);
    let ahead = q.hours_ahead.unwrap_or(168.0);
    if !(0.0..=744.0).contains(&back) {
        return Err(ApiError::invalid(
            "hours_back",
            "hours_back must be between 0 and 744",
        ));
    }
    if !(0.0..=8760.0).contains(&ahead) {
        return Err(ApiError::invalid(
            "hours_ahead",
            "hours_ahead must be between 0 and 8760",
        ));
    }
    let now = now_ms();
    let from = now - (back * 3_600_000.0) as i64;
    let to = now + (ahead * 3_600_000.0) as i64;
    let mut rx = app.store.read().await?;
    let row = store::site_by_key(rx.conn(), &site)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no site {site:?}")))?;
    let samples = store::samples(rx.conn(), row.id, from, now).await?;
    let v = view(&app, rx.conn()).await?;
    rx.finish().await?;

    let current = v.site_model(&row);
    let mut points: Vec<TimelinePoint> = samples
        .iter()
        .map(|s| TimelinePoint {
            at: ms_to_time(s.at),
            capacity: Resources::new(s.capacity_cpus, s.capacity_memory_mib),
            in_use: Resources::new(s.used_cpus, s.used_memory_mib),
            reserved: Resources::new(s.reserved_cpus, s.reserved_memory_mib),
        })
        .collect();
    points.push(TimelinePoint {
        at: ms_to_time(now),
        capacity: current.capacity,
        in_use: current.in_use,
        reserved: current.reserved,
    });
    let ledger = v.ledger(row.id);
    let mut edges: Vec<i64> = ledger
        .leases
        .iter()
        .flat_map(|l| [l.start, l.end])
        .filter(|&t| t > now && t <= to)
        .collect();
    edges.sort_unstable();
    edges.dedup();
    for t in edges {
        points.push(TimelinePoint {
            at: ms_to_time(t),
            capacity: current.capacity,
            in_use: current.in_use,
            reserved: ledger.reserved_at(t),
        });
    }
    points.push(TimelinePoint {
        at: ms_to_time(to),
        capacity: current.capacity,
        in_use: current.in_use,
        reserved: ledger.reserved_at(to),
    });
    Ok(ApiJson(SiteTimeline {
        site: row.name,
        now: ms_to_time(now),
        points,
    }))
}
