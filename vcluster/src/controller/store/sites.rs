//! Sites: where hosts are.

use sqlx::FromRow;

use super::{Conn, R};

#[derive(Debug, Clone, FromRow)]
pub struct SiteRow {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub created_at: i64,
}

const SITE_COLS: &str = "id, name, description, created_at";

pub async fn insert_site(c: &mut Conn, name: &str, description: &str, now: i64) -> R<SiteRow> {
    Ok(sqlx::query_as(&format!(
        "INSERT INTO sites (name, description, created_at) VALUES ($1, $2, $3) RETURNING {SITE_COLS}"
    ))
    .bind(name)
    .bind(description)
    .bind(now)
    .fetch_one(c)
    .await?)
}

pub async fn list_sites(c: &mut Conn) -> R<Vec<SiteRow>> {
    Ok(
        sqlx::query_as(&format!("SELECT {SITE_COLS} FROM sites ORDER BY name"))
            .fetch_all(c)
            .await?,
    )
}

/// A site by name, or by id when `key` is a number.
pub async fn site_by_key(c: &mut Conn, key: &str) -> R<Option<SiteRow>> {
    let q = format!("SELECT {SITE_COLS} FROM sites WHERE name = $1 OR CAST(id AS TEXT) = $1");
    Ok(sqlx::query_as(&q).bind(key).fetch_optional(c).await?)
}

/// Deletes the site with its usage samples and reservations (the caller checked that
/// none is accepted or used by a cluster).
pub async fn delete_site(c: &mut Conn, id: i64) -> R<()> {
    sqlx::query("DELETE FROM usage_samples WHERE site_id = $1")
        .bind(id)
        .execute(&mut *c)
        .await?;
    sqlx::query("DELETE FROM reservations WHERE site_id = $1")
        .bind(id)
        .execute(&mut *c)
        .await?;
    sqlx::query("DELETE FROM sites WHERE id = $1")
        .bind(id)
        .execute(c)
        .await?;
    Ok(())
}
