//! Store-wide counters: the revision every write bumps and the last overlay network id handed out.

use super::{Conn, R};

/// Hands out the next overlay network id, at least `first`; ids are never reused.
pub async fn next_network_id(c: &mut Conn, first: i64) -> R<i64> {
    Ok(sqlx::query_scalar(
        "UPDATE counters SET value = CASE WHEN value + 1 < $1 THEN $1 ELSE value + 1 END \
         WHERE name = 'network_id' RETURNING value",
    )
    .bind(first)
    .fetch_one(c)
    .await?)
}

pub async fn current_revision(c: &mut Conn) -> R<i64> {
    Ok(
        sqlx::query_scalar("SELECT value FROM counters WHERE name = 'revision'")
            .fetch_one(c)
            .await?,
    )
}
