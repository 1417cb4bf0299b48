//! Reservations: leases on a site's capacity.

use sqlx::FromRow;

use super::{Conn, R, ms_to_time};
use crate::model;

#[derive(Debug, Clone, FromRow)]
pub struct ReservationRow {
    pub id: i64,
    pub owner_id: i64,
    pub owner_name: String,
    pub site_id: i64,
    pub site_name: String,
    pub nodes: Option<i64>,
    pub cpus: i64,
    pub memory_mib: i64,
    pub starts_at: i64,
    pub ends_at: i64,
    pub state: model::ReservationState,
    pub note: String,
    pub created_at: i64,
}

impl ReservationRow {
    pub fn resources(&self) -> model::Resources {
        model::Resources::new(self.cpus, self.memory_mib)
    }
    pub fn to_model(&self, clusters: Vec<String>) -> model::Reservation {
        model::Reservation {
            id: self.id,
            owner: self.owner_name.clone(),
            site: self.site_name.clone(),
            nodes: self.nodes,
            resources: self.resources(),
            start: ms_to_time(self.starts_at),
            end: ms_to_time(self.ends_at),
            state: self.state,
            note: self.note.clone(),
            clusters,
            created_at: ms_to_time(self.created_at),
        }
    }
}

const RESERVATION_SELECT: &str = "SELECT r.id, r.owner_id, u.name AS owner_name, r.site_id, \
    s.name AS site_name, r.nodes, r.cpus, r.memory_mib, r.starts_at, r.ends_at, r.state, r.note, \
    r.created_at FROM reservations r JOIN users u ON u.id = r.owner_id JOIN sites s ON s.id = r.site_id";

pub struct NewReservation<'a> {
    pub owner_id: i64,
    pub site_id: i64,
    pub nodes: Option<i64>,
    pub resources: model::Resources,
    pub starts_at: i64,
    pub ends_at: i64,
    pub note: &'a str,
}

pub async fn insert_reservation(c: &mut Conn, r: NewReservation<'_>, now: i64) -> R<i64> {
    Ok(sqlx::query_scalar(
        "INSERT INTO reservations (owner_id, site_id, nodes, cpus, memory_mib, starts_at, ends_at, \
         state, note, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 'accepted', $8, $9) RETURNING id",
    )
    .bind(r.owner_id)
    .bind(r.site_id)
    .bind(r.nodes)
    .bind(r.resources.cpus)
    .bind(r.resources.memory_mib)
    .bind(r.starts_at)
    .bind(r.ends_at)
    .bind(r.note)
    .bind(now)
    .fetch_one(c)
    .await?)
}

pub async fn reservation_by_id(c: &mut Conn, id: i64) -> R<Option<ReservationRow>> {
    Ok(
        sqlx::query_as(&format!("{RESERVATION_SELECT} WHERE r.id = $1"))
            .bind(id)
            .fetch_optional(c)
            .await?,
    )
}

pub async fn list_reservations(c: &mut Conn, owner: Option<i64>) -> R<Vec<ReservationRow>> {
    Ok(match owner {
        Some(o) => {
            sqlx::query_as(&format!(
                "{RESERVATION_SELECT} WHERE r.owner_id = $1 ORDER BY r.starts_at, r.id"
            ))
            .bind(o)
            .fetch_all(c)
            .await?
        }
        None => {
            sqlx::query_as(&format!("{RESERVATION_SELECT} ORDER BY r.starts_at, r.id"))
                .fetch_all(c)
                .await?
        }
    })
}

/// Accepted reservations that have not ended by `now`.
pub async fn live_reservations(c: &mut Conn, now: i64) -> R<Vec<ReservationRow>> {
    Ok(sqlx::query_as(&format!(
        "{RESERVATION_SELECT} WHERE r.state = 'accepted' AND r.ends_at > $1 ORDER BY r.starts_at"
    ))
    .bind(now)
    .fetch_all(c)
    .await?)
}

/// Accepted reservations whose lease has ended by `now`.
pub async fn ended_reservations(c: &mut Conn, now: i64) -> R<Vec<ReservationRow>> {
    Ok(sqlx::query_as(&format!(
        "{RESERVATION_SELECT} WHERE r.state = 'accepted' AND r.ends_at <= $1"
    ))
    .bind(now)
    .fetch_all(c)
    .await?)
}

pub async fn set_reservation_state(c: &mut Conn, id: i64, state: model::ReservationState) -> R<()> {
    sqlx::query("UPDATE reservations SET state = $1 WHERE id = $2")
        .bind(state.as_str())
        .bind(id)
        .execute(c)
        .await?;
    Ok(())
}
