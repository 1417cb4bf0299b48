//! Users and their tokens (admin), and `whoami` for anyone holding a token.

use axum::extract::State;
use axum::response::Response;

use super::created;
use crate::api_error::{ApiError, ApiJson, ApiPath};
use crate::controller::App;
use crate::controller::auth::{self, Principal};
use crate::controller::store::{self, now_ms};
use crate::model::{ApiErrorBody, CreateUser, IssuedToken, User};

/// Who the token belongs to.
#[utoipa::path(get, path = "/v1/whoami", tag = "users",
    responses((status = 200, body = User), (status = 401, body = ApiErrorBody)))]
pub async fn whoami(State(app): State<App>, who: Principal) -> Result<ApiJson<User>, ApiError> {
    let mut conn = app.store.conn().await?;
    let user = store::user_by_name(&mut conn, &who.name)
        .await?
        .ok_or_else(|| ApiError::unauthorized("the token's user is gone"))?;
    Ok(ApiJson(user.to_model()))
}

#[utoipa::path(get, path = "/v1/users", tag = "users",
    responses((status = 200, body = Vec<User>), (status = 403, body = ApiErrorBody)))]
pub async fn list_users(
    State(app): State<App>,
    who: Principal,
) -> Result<ApiJson<Vec<User>>, ApiError> {
    who.require_admin()?;
    let mut conn = app.store.conn().await?;
    Ok(ApiJson(
        store::list_users(&mut conn)
            .await?
            .iter()
            .map(|u| u.to_model())
            .collect(),
    ))
}

/// Creates a user (admin). The answer holds their token; it is not shown again.
#[utoipa::path(post, path = "/v1/users", tag = "users", request_body = CreateUser,
    responses((status = 201, body = IssuedToken), (status = 409, body = ApiErrorBody), (status = 422, body = ApiErrorBody)))]
pub async fn create_user(
    State(app): State<App>,
    who: Principal,
    ApiJson(req): ApiJson<CreateUser>,
) -> Result<Response, ApiError> {
    who.require_admin()?;
    req.validate()?;
    let (user, token) = auth::create_user_with_token(&app.store, &req.name, req.role, None).await?;
    tracing::info!(user = %user.name, role = %user.role, by = %who.name, "user created");
    Ok(created(IssuedToken {
        user: user.to_model(),
        token,
    }))
}

/// Issues another token for a user (admin).
#[utoipa::path(post, path = "/v1/users/{name}/tokens", tag = "users",
    params(("name" = String, Path)),
    responses((status = 201, body = IssuedToken), (status = 404, body = ApiErrorBody)))]
pub async fn issue_token(
    State(app): State<App>,
    who: Principal,
    ApiPath(name): ApiPath<String>,
) -> Result<Response, ApiError> {
    who.require_admin()?;
    let token = auth::new_token();
    let mut tx = app.store.write().await?;
    let user = store::user_by_name(tx.conn(), &name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no user {name:?}")))?;
    store::insert_token(tx.conn(), user.id, &auth::hash_token(&token), now_ms()).await?;
    tx.commit().await?;
    Ok(created(IssuedToken {
        user: user.to_model(),
        token,
    }))
}
