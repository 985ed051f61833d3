//! [`ApiError`]: every error the HTTP layer answers, mapped to its status in one place.
//!
//! The body is always `{"error": "<stable code>", "message": "<what was wrong>"}`.
//! Internal errors are logged and answered with a generic message.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bitark_engine::{ConsistencyError, InvalidCommand, WriteError};
use serde::Serialize;
use utoipa::ToSchema;

/// The JSON body of every error.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable, machine-readable code, e.g. `invalid_id`, `batch_too_large`.
    #[schema(example = "invalid_id")]
    pub error: &'static str,
    /// What was wrong, for a person.
    #[schema(example = "userId: `abc` is not a decimal integer in 0..=18446744073709551615")]
    pub message: String,
    /// With `not_master`: where writes go.
    #[serde(rename = "masterUrl", skip_serializing_if = "Option::is_none")]
    pub master_url: Option<String>,
    /// With `lsn_gap` (replication): the LSN the slave needs next.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<u64>,
}

/// An error answered to an HTTP client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: a malformed, negative or out-of-range id, query or body; `code` says which.
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    /// 413: a batch, range or body over the configured limit.
    #[error("{message}")]
    TooLarge { code: &'static str, message: String },
    /// 415: a body that is not `application/json`.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 401: a protected endpoint called without the right bearer token.
    #[error("a valid bearer token is required")]
    Unauthorized,
    /// 404: no such route.
    #[error("no route for {0}")]
    NotFound(String),
    /// 405: the route exists but not with this method.
    #[error("method {0} is not allowed here")]
    MethodNotAllowed(String),
    /// 503: recovery has not finished yet.
    #[error("the node is starting (recovering its state); retry shortly")]
    Starting,
    /// 503: the node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// 503: too many writes queued.
    #[error("too many writes in flight; retry later")]
    Overloaded,
    /// 503: the node has not applied the `minLsn` the read asked for.
    #[error(transparent)]
    Behind(#[from] ConsistencyError),
    /// 503: the snapshotter cannot take a request now.
    #[error("{0}")]
    Busy(String),
    /// 409: this node is a slave; the write belongs on the master (also in `Location`).
    #[error("this node is a slave; send writes to the master at {master_url}")]
    NotMaster { master_url: String, location: String },
    /// 409 (replication): the batch does not continue the slave's log.
    #[error("records must continue this node's log at LSN {expected}")]
    LsnGap { expected: u64 },
    /// 409 (replication): the request needs another role or replication turned on.
    #[error("{0}")]
    WrongRole(String),
    /// 500: logged; the client gets a generic message.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadRequest { code, message: message.into() }
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            ApiError::TooLarge { code, .. } => (StatusCode::PAYLOAD_TOO_LARGE, code),
            ApiError::UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Starting => (StatusCode::SERVICE_UNAVAILABLE, "starting"),
            ApiError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            ApiError::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            ApiError::Behind(_) => (StatusCode::SERVICE_UNAVAILABLE, "lsn_not_reached"),
            ApiError::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            ApiError::NotMaster { .. } => (StatusCode::CONFLICT, "not_master"),
            ApiError::LsnGap { .. } => (StatusCode::CONFLICT, "lsn_gap"),
            ApiError::WrongRole(_) => (StatusCode::CONFLICT, "wrong_role"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<InvalidCommand> for ApiError {
    fn from(e: InvalidCommand) -> Self {
        let code = match e {
            InvalidCommand::BatchTooLarge { .. } => "batch_too_large",
            InvalidCommand::RangeTooLarge { .. } => "range_too_large",
            InvalidCommand::EmptyBatch => "empty_batch",
            InvalidCommand::InvertedRange { .. } => "invalid_range",
        };
        if e.is_too_large() {
            ApiError::TooLarge { code, message: e.to_string() }
        } else {
            ApiError::bad_request(code, e.to_string())
        }
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Invalid(invalid) => invalid.into(),
            WriteError::Overloaded => ApiError::Overloaded,
            WriteError::ShuttingDown => ApiError::ShuttingDown,
            WriteError::Storage(reason) => ApiError::Internal(format!("write-ahead log: {reason}")),
            WriteError::NotMaster { master_url } => ApiError::NotMaster { location: master_url.clone(), master_url },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = match &self {
            ApiError::Internal(detail) => {
                tracing::error!(%detail, "internal error answered with 500");
                "internal error; see the server log".to_string()
            }
            other => other.to_string(),
        };
        let (master_url, expected) = match &self {
            ApiError::NotMaster { master_url, .. } => (Some(master_url.clone()), None),
            ApiError::LsnGap { expected } => (None, Some(*expected)),
            _ => (None, None),
        };
        let mut response = (status, Json(ErrorBody { error: code, message, master_url, expected })).into_response();
        match self {
            ApiError::NotMaster { location, .. } => {
                if let Ok(value) = HeaderValue::from_str(&location) {
                    response.headers_mut().insert(header::LOCATION, value);
                }
            }
            ApiError::Unauthorized => {
                response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::Starting | ApiError::Overloaded | ApiError::Behind(_) | ApiError::Busy(_) => {
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}
