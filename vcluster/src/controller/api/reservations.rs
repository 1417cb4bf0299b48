//! Reservations: a lease on N nodes (or CPUs and memory) at a site, or anywhere, for
//! `[start, end)`. Accepted or refused with the reason in one serialised transaction
//! (see `capacity` for the rule), so concurrent requests can never double-book. Also
//! "when can I get N nodes for D hours" and cancelling.

use crate::model::{ClusterState, ReservationState};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;

use super::created;
use crate::api_error::{ApiError, ApiJson, ApiPath, ApiQuery};
use crate::controller::App;
use crate::controller::auth::Principal;
use crate::controller::capacity::Refusal;
use crate::controller::requests::{EarliestQuery, EarliestRequest, ReservationRequest};
use crate::controller::store::{
    self, NewEvent, NewReservation, ReservationRow, ms_to_time, now_ms,
};
use crate::controller::view::CapacityView;
use crate::model::{ApiErrorBody, CreateReservation, EarliestSlot, Reservation};

async fn reservation_model(
    conn: &mut sqlx::AnyConnection,
    r: &ReservationRow,
) -> Result<Reservation, ApiError> {
    let clusters = store::clusters_of_reservation(conn, r.id)
        .await?
        .into_iter()
        .map(|c| c.name)
        .collect();
    Ok(r.to_model(clusters))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Admins: everyone's reservations (default); users always see their own.
    pub mine: Option<bool>,
}

#[utoipa::path(get, path = "/v1/reservations", tag = "reservations", params(ListQuery),
    responses((status = 200, body = Vec<Reservation>)))]
pub async fn list_reservations(
    State(app): State<App>,
    who: Principal,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<ApiJson<Vec<Reservation>>, ApiError> {
    who.require_person()?;
    let owner = if q.mine.unwrap_or(false) {
        Some(who.user_id)
    } else {
        who.owner_filter()
    };
    let mut rx = app.store.read().await?;
    let rows = store::list_reservations(rx.conn(), owner).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        out.push(reservation_model(rx.conn(), r).await?);
    }
    rx.finish().await?;
    Ok(ApiJson(out))
}

/// Asks for a lease. 201 with the reservation when accepted; 409 with the reason when refused.
#[utoipa::path(post, path = "/v1/reservations", tag = "reservations", request_body = CreateReservation,
    responses((status = 201, body = Reservation), (status = 409, body = ApiErrorBody, description = "refused: the reason says why"),
              (status = 422, body = ApiErrorBody)))]
pub async fn create_reservation(
    State(app): State<App>,
    who: Principal,
    ApiJson(req): ApiJson<CreateReservation>,
) -> Result<Response, ApiError> {
    who.require_person()?;
    let now = now_ms();
    let ReservationRequest {
        site,
        nodes,
        amount,
        start,
        end,
        note,
    } = req.validate(now)?;

    let mut tx = app.store.write().await?;
    let site = match &site {
        Some(s) => Some(
            store::site_by_key(tx.conn(), s)
                .await?
                .ok_or_else(|| ApiError::invalid("site", format!("unknown site {s:?}")))?,
        ),
        _ => None,
    };
    let view =
        CapacityView::load(tx.conn(), now, app.config.overcommit, app.host_timeout_ms()).await?;
    let chosen = match &site {
        Some(s) => view
            .ledger(s.id)
            .admit(amount, start, end, now)
            .map(|_| s.clone()),
        None => {
            // Anywhere: the site with the most room left at the peak of the period.
            let mut best: Option<(i64, &store::SiteRow)> = None;
            for s in &view.sites {
                let ledger = view.ledger(s.id);
                if ledger.admit(amount, start, end, now).is_ok() {
                    let room = ledger
                        .capacity
                        .cpus
                        .saturating_sub(ledger.peak_reserved(start.max(now), end).cpus);
                    if best.is_none_or(|(r, _)| room > r) {
                        best = Some((room, s));
                    }
                }
            }
            best.map(|(_, s)| s.clone()).ok_or_else(|| Refusal {
                reason: format!(
                    "no site has {} CPUs / {} MiB free for the whole period",
                    amount.cpus, amount.memory_mib
                ),
            })
        }
    };
    let site = match chosen {
        Ok(s) => s,
        Err(refusal) => {
            drop(tx);
            tracing::info!(user = %who.name, reason = %refusal.reason, "reservation refused");
            return Err(ApiError::conflict(format!("refused: {}", refusal.reason)));
        }
    };
    let id = store::insert_reservation(
        tx.conn(),
        NewReservation {
            owner_id: who.user_id,
            site_id: site.id,
            nodes,
            resources: amount,
            starts_at: start,
            ends_at: end,
            note: &note,
        },
        now,
    )
    .await?;
    store::insert_event(
        tx.conn(),
        NewEvent {
            kind: "reservation-accepted",
            cluster: None,
            owner_id: Some(who.user_id),
            task_id: None,
            message: &format!(
                "reservation {id} of {} CPUs / {} MiB at {} from {} to {} for {}",
                amount.cpus,
                amount.memory_mib,
                site.name,
                ms_to_time(start),
                ms_to_time(end),
                who.name
            ),
        },
        now,
    )
    .await?;
    let row = store::reservation_by_id(tx.conn(), id)
        .await?
        .ok_or_else(|| ApiError::internal("reservation vanished"))?;
    let model = reservation_model(tx.conn(), &row).await?;
    tx.commit().await?;
    Ok(created(model))
}

/// "When can I get N nodes for D hours": the earliest start at which such a reservation
/// would be accepted, and where.
#[utoipa::path(get, path = "/v1/reservations/earliest", tag = "reservations", params(EarliestQuery),
    responses((status = 200, body = EarliestSlot), (status = 409, body = ApiErrorBody), (status = 422, body = ApiErrorBody)))]
pub async fn earliest_slot(
    State(app): State<App>,
    who: Principal,
    ApiQuery(q): ApiQuery<EarliestQuery>,
) -> Result<ApiJson<EarliestSlot>, ApiError> {
    who.require_person()?;
    let EarliestRequest {
        nodes,
        per_node,
        amount,
        duration_ms: duration,
        site,
    } = q.validate()?;
    let now = now_ms();
    let mut rx = app.store.read().await?;
    let only = match &site {
        Some(s) => Some(
            store::site_by_key(rx.conn(), s)
                .await?
                .ok_or_else(|| ApiError::invalid("site", format!("unknown site {s:?}")))?
                .id,
        ),
        None => None,
    };
    let view =
        CapacityView::load(rx.conn(), now, app.config.overcommit, app.host_timeout_ms()).await?;
    rx.finish().await?;
    let best = view
        .sites
        .iter()
        .filter(|s| only.is_none_or(|o| o == s.id))
        .filter_map(|s| {
            view.ledger(s.id)
                .earliest(amount, duration, now)
                .map(|t| (t, s))
        })
        .min_by_key(|(t, s)| (*t, s.id));
    match best {
        Some((start, site)) => Ok(ApiJson(EarliestSlot {
            site: site.name.clone(),
            start: ms_to_time(start),
            end: ms_to_time(start.saturating_add(duration)),
            resources: amount,
        })),
        None => Err(ApiError::conflict(format!(
            "no site can ever hold {} nodes of {} CPUs / {} MiB next to what runs outside reservations",
            nodes, per_node.cpus, per_node.memory_mib
        ))),
    }
}

#[utoipa::path(get, path = "/v1/reservations/{id}", tag = "reservations",
    params(("id" = i64, Path)),
    responses((status = 200, body = Reservation), (status = 404, body = ApiErrorBody)))]
pub async fn get_reservation(
    State(app): State<App>,
    who: Principal,
    ApiPath(id): ApiPath<i64>,
) -> Result<ApiJson<Reservation>, ApiError> {
    who.require_person()?;
    let mut rx = app.store.read().await?;
    let row = match store::reservation_by_id(rx.conn(), id).await? {
        Some(r) if who.may_see(r.owner_id) => r,
        _ => return Err(ApiError::not_found(format!("no reservation {id}"))),
    };
    let model = reservation_model(rx.conn(), &row).await?;
    rx.finish().await?;
    Ok(ApiJson(model))
}

/// Cancels a reservation that no live cluster uses.
#[utoipa::path(delete, path = "/v1/reservations/{id}", tag = "reservations",
    params(("id" = i64, Path)),
    responses((status = 204), (status = 404, body = ApiErrorBody), (status = 409, body = ApiErrorBody)))]
pub async fn cancel_reservation(
    State(app): State<App>,
    who: Principal,
    ApiPath(id): ApiPath<i64>,
) -> Result<Response, ApiError> {
    who.require_person()?;
    let mut tx = app.store.write().await?;
    let row = match store::reservation_by_id(tx.conn(), id).await? {
        Some(r) if who.may_see(r.owner_id) => r,
        _ => return Err(ApiError::not_found(format!("no reservation {id}"))),
    };
    if row.state != ReservationState::Accepted {
        return Err(ApiError::conflict(format!(
            "reservation {id} is already {}",
            row.state
        )));
    }
    let users: Vec<String> = store::clusters_of_reservation(tx.conn(), id)
        .await?
        .into_iter()
        .filter(|c| c.state != ClusterState::Failed)
        .map(|c| c.name)
        .collect();
    if !users.is_empty() {
        return Err(ApiError::conflict(format!(
            "reservation {id} is used by clusters {}; delete them first",
            users.join(", ")
        )));
    }
    store::set_reservation_state(tx.conn(), id, ReservationState::Cancelled).await?;
    store::insert_event(
        tx.conn(),
        NewEvent {
            kind: "reservation-cancelled",
            cluster: None,
            owner_id: Some(row.owner_id),
            task_id: None,
            message: &format!("reservation {id} cancelled by {}", who.name),
        },
        now_ms(),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
