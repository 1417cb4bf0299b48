//! Users and their API tokens (only the tokens' hashes are kept).

use sqlx::FromRow;

use super::{Conn, R, ms_to_time};
use crate::model;

#[derive(Debug, Clone, FromRow)]
pub struct UserRow {
    pub id: i64,
    pub name: String,
    pub role: model::Role,
    pub created_at: i64,
}

impl UserRow {
    pub fn role(&self) -> model::Role {
        self.role
    }
    pub fn to_model(&self) -> model::User {
        model::User {
            id: self.id,
            name: self.name.clone(),
            role: self.role(),
            created_at: ms_to_time(self.created_at),
        }
    }
}

pub async fn insert_user(c: &mut Conn, name: &str, role: model::Role, now: i64) -> R<UserRow> {
    Ok(sqlx::query_as(
        "INSERT INTO users (name, role, created_at) VALUES ($1, $2, $3) \
         RETURNING id, name, role, created_at",
    )
    .bind(name)
    .bind(role.as_str())
    .bind(now)
    .fetch_one(c)
    .await?)
}

pub async fn insert_token(c: &mut Conn, user_id: i64, token_hash: &str, now: i64) -> R<()> {
    sqlx::query("INSERT INTO tokens (user_id, token_hash, created_at) VALUES ($1, $2, $3)")
        .bind(user_id)
        .bind(token_hash)
        .bind(now)
        .execute(c)
        .await?;
    Ok(())
}

pub async fn user_by_token_hash(c: &mut Conn, token_hash: &str) -> R<Option<UserRow>> {
    Ok(sqlx::query_as(
        "SELECT u.id, u.name, u.role, u.created_at FROM users u \
         JOIN tokens t ON t.user_id = u.id WHERE t.token_hash = $1",
    )
    .bind(token_hash)
    .fetch_optional(c)
    .await?)
}

pub async fn user_by_name(c: &mut Conn, name: &str) -> R<Option<UserRow>> {
    Ok(
        sqlx::query_as("SELECT id, name, role, created_at FROM users WHERE name = $1")
            .bind(name)
            .fetch_optional(c)
            .await?,
    )
}

pub async fn list_users(c: &mut Conn) -> R<Vec<UserRow>> {
    Ok(
        sqlx::query_as("SELECT id, name, role, created_at FROM users ORDER BY id")
            .fetch_all(c)
            .await?,
    )
}

pub async fn count_admins(c: &mut Conn) -> R<i64> {
    Ok(
        sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE role = 'admin'")
            .fetch_one(c)
            .await?,
    )
}
