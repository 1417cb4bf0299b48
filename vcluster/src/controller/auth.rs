//! Bearer-token authentication and the role checks. A token is 32 random bytes shown once;
//! the store keeps only its SHA-256, so a leaked database does not leak tokens. Each token
//! belongs to a user with one role: `admin` (sites, hosts, users, everything), `user` (own
//! reservations and clusters, reads sites) or `agent` (a host agent: registers its host,
//! heartbeats, reads its host's desired state).
//!
//! This module only says who is calling and whether their role may do a thing; which rows
//! they may see is decided by the handlers (owners see their own, admins see all).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::App;
use super::store;
use crate::api_error::ApiError;
use crate::model::Role;

/// Who is calling.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user_id: i64,
    pub name: String,
    pub role: Role,
}

impl Principal {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this needs the admin role; {} has the {} role",
                self.name,
                self.role.as_str()
            )))
        }
    }

    /// People (admins and users), not host agents.
    pub fn require_person(&self) -> Result<(), ApiError> {
        if self.role == Role::Agent {
            Err(ApiError::forbidden(format!(
                "{} is a host agent: agent tokens only register hosts and heartbeat",
                self.name
            )))
        } else {
            Ok(())
        }
    }

    pub fn require_agent_or_admin(&self) -> Result<(), ApiError> {
        if self.role == Role::User {
            Err(ApiError::forbidden(format!(
                "this needs the agent or admin role; {} has the user role",
                self.name
            )))
        } else {
            Ok(())
        }
    }

    /// The owner filter for listings: `None` (everything) for admins.
    pub fn owner_filter(&self) -> Option<i64> {
        (!self.is_admin()).then_some(self.user_id)
    }

    /// Owners and admins may act on a thing; others get a 404 so ids do not leak.
    pub fn may_see(&self, owner_id: i64) -> bool {
        self.is_admin() || self.user_id == owner_id
    }
}

/// A fresh random token: `vc_` then 32 random bytes in URL-safe base64.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "vc_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

pub fn hash_token(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl FromRequestParts<App> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| {
                ApiError::unauthorized("missing Authorization: Bearer <token> header")
            })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized("Authorization header must be \"Bearer <token>\"")
            })?;
        let mut conn = app.store.conn().await?;
        let user = store::user_by_token_hash(&mut conn, &hash_token(token))
            .await?
            .ok_or_else(|| ApiError::unauthorized("unknown token"))?;
        Ok(Principal {
            user_id: user.id,
            name: user.name.clone(),
            role: user.role(),
        })
    }
}

/// Creates a user and their first token in one transaction.
pub async fn create_user_with_token(
    store: &store::Store,
    name: &str,
    role: Role,
    token: Option<&str>,
) -> Result<(store::UserRow, String), ApiError> {
    let token = token.map(str::to_string).unwrap_or_else(new_token);
    let now = store::now_ms();
    let mut tx = store.write().await?;
    let user = match store::insert_user(tx.conn(), name, role, now).await {
        Ok(u) => u,
        Err(store::StoreError::Db(e)) if store::is_unique_violation(&e) => {
            return Err(
                ApiError::conflict(format!("user {name:?} already exists")).with_field("name")
            );
        }
        Err(e) => return Err(e.into()),
    };
    store::insert_token(tx.conn(), user.id, &hash_token(&token), now).await?;
    tx.commit().await?;
    Ok((user, token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hashes_are_stable() {
        let a = new_token();
        let b = new_token();
        assert_ne!(a, b);
        assert!(a.starts_with("vc_") && a.len() > 40);
        assert_eq!(hash_token(&a), hash_token(&a));
        assert_ne!(hash_token(&a), hash_token(&b));
        assert_eq!(hash_token(&a).len(), 64);
    }
}
