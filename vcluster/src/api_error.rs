//! The one place where a failure becomes an HTTP answer, for the controller's API and the
//! host agent's: a status code and a JSON body `{"error": ..., "field": ...}` naming the
//! reason and, when there is one, the request field at fault. Handlers return
//! `Result<_, ApiError>` and never build error responses themselves; the extractors here
//! (`ApiJson`, `ApiPath`, `ApiQuery`) turn a request that does not fit into such an error.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::controller::store::StoreError;
use crate::model::{ApiErrorBody, MAX_BODY_BYTES};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            field: None,
        }
    }
    /// 422: a well-formed request whose `field` has a value the controller refuses.
    pub fn invalid(field: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: message.into(),
            field: Some(field.to_string()),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(what: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, what)
    }
    /// 409: the request conflicts with what exists (a name taken, no capacity left).
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, message)
    }
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, message)
    }
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
    pub fn with_field(mut self, field: &str) -> ApiError {
        self.field = Some(field.to_string());
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = %self.status, error = %self.message, "request failed");
        }
        let body = ApiErrorBody {
            error: self.message,
            field: self.field,
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        ApiError::internal(format!("store: {e}"))
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> ApiError {
        ApiError::internal(format!("store: {e}"))
    }
}

impl From<JsonRejection> for ApiError {
    /// axum's own statuses: 400 for a body that is not JSON, 422 for JSON that does not
    /// fit the request type (a wrong type, a missing or an unknown field), 415 without
    /// `Content-Type: application/json`, 413 for a body over the limit.
    fn from(r: JsonRejection) -> ApiError {
        let status = r.status();
        let message = match status {
            StatusCode::PAYLOAD_TOO_LARGE => {
                format!("the request body is larger than {MAX_BODY_BYTES} bytes")
            }
            _ => r.body_text(),
        };
        // serde's message names the field ("missing field `end`", "unknown field
        // `node_cpu`", "sites[0]: invalid type ..."): pass it on and name the field.
        let field = field_of(&message);
        ApiError {
            status,
            message,
            field,
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> ApiError {
        ApiError::bad_request(r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    /// A query whose parameter is unknown or of the wrong type is refused like a body
    /// field: 422 naming it.
    fn from(r: QueryRejection) -> ApiError {
        let message = r.body_text();
        let field = field_of(&message);
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message,
            field,
        }
    }
}

/// The field a serde message is about: the path axum puts before the error
/// ("...target type: sites[0]: invalid type...") joined with the unknown or missing
/// field's name when the message has one, else the first `name` in backticks.
fn field_of(message: &str) -> Option<String> {
    let is_path = |s: &str| {
        !s.is_empty()
            && s != "."
            && s.bytes().all(|b| {
                b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'[' || b == b']'
            })
    };
    let named = |text: &str| -> Option<String> {
        for lead in ["unknown field `", "missing field `", "duplicate field `"] {
            if let Some(i) = text.find(lead) {
                let rest = &text[i + lead.len()..];
                let name = &rest[..rest.find('`')?];
                return Some(name.to_string());
            }
        }
        None
    };
    if let Some(i) = message.find("target type: ") {
        let rest = &message[i + "target type: ".len()..];
        if let Some((path, inner)) = rest.split_once(": ")
            && is_path(path)
        {
            // serde_path_to_error's path already ends with an unknown field's own name.
            return Some(match named(inner) {
                Some(name) if !path.ends_with(&name) => format!("{path}.{name}"),
                _ => path.to_string(),
            });
        }
    }
    if let Some(name) = named(message) {
        return Some(name);
    }
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    let name = &message[start..start + len];
    (!name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .then(|| name.to_string())
}

/// `axum::Json`, with rejections turned into [`ApiError`]s.
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

impl<T: serde::Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        Json(self.0).into_response()
    }
}

/// `axum::extract::Path`, with rejections turned into [`ApiError`]s.
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// `axum::extract::Query`, with rejections turned into [`ApiError`]s.
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_is_taken_from_serde_messages() {
        assert_eq!(
            field_of("Failed to deserialize: missing field `end` at line 1").as_deref(),
            Some("end")
        );
        assert_eq!(
            field_of("Failed to deserialize the JSON body into the target type: nodes: invalid type: string").as_deref(),
            Some("nodes")
        );
        assert_eq!(
            field_of("Failed to deserialize the JSON body into the target type: node_cpu: unknown field `node_cpu`, expected one of `name`, `nodes` at line 1 column 30").as_deref(),
            Some("node_cpu")
        );
        assert_eq!(
            field_of("Failed to deserialize the JSON body into the target type: sites[0].count: unknown field `count`, expected `site` or `nodes` at line 1 column 40").as_deref(),
            Some("sites[0].count")
        );
        assert_eq!(
            field_of("Failed to deserialize the JSON body into the target type: sites[0]: missing field `site` at line 1 column 40").as_deref(),
            Some("sites[0].site")
        );
        assert_eq!(field_of("no field here"), None);
    }
}
