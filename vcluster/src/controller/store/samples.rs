//! Usage samples: a site's capacity, use and reservations over time, for the timeline.

use sqlx::FromRow;

use super::{Conn, R};

#[derive(Debug, Clone, FromRow)]
pub struct SampleRow {
    pub site_id: i64,
    pub at: i64,
    pub capacity_cpus: i64,
    pub capacity_memory_mib: i64,
    pub used_cpus: i64,
    pub used_memory_mib: i64,
    pub reserved_cpus: i64,
    pub reserved_memory_mib: i64,
}

pub async fn insert_sample(c: &mut Conn, s: &SampleRow) -> R<()> {
    sqlx::query(
        "INSERT INTO usage_samples (site_id, at, capacity_cpus, capacity_memory_mib, used_cpus, \
         used_memory_mib, reserved_cpus, reserved_memory_mib) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(s.site_id)
    .bind(s.at)
    .bind(s.capacity_cpus)
    .bind(s.capacity_memory_mib)
    .bind(s.used_cpus)
    .bind(s.used_memory_mib)
    .bind(s.reserved_cpus)
    .bind(s.reserved_memory_mib)
    .execute(c)
    .await?;
    Ok(())
}

pub async fn samples(c: &mut Conn, site_id: i64, from: i64, to: i64) -> R<Vec<SampleRow>> {
    Ok(sqlx::query_as(
        "SELECT site_id, at, capacity_cpus, capacity_memory_mib, used_cpus, used_memory_mib, \
         reserved_cpus, reserved_memory_mib FROM usage_samples \
         WHERE site_id = $1 AND at >= $2 AND at <= $3 ORDER BY at",
    )
    .bind(site_id)
    .bind(from)
    .bind(to)
    .fetch_all(c)
    .await?)
}

pub async fn prune_samples(c: &mut Conn, before: i64) -> R<()> {
    sqlx::query("DELETE FROM usage_samples WHERE at < $1")
        .bind(before)
        .execute(c)
        .await?;
    Ok(())
}
