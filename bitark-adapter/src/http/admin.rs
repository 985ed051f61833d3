//! `/admin/*`: operator endpoints, behind `security.admin-token` when one is set.

use super::error::{ApiError, ErrorBody};
use super::AppState;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use utoipa::ToSchema;

pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/admin/snapshot", post(snapshot))
        .route("/admin/digest", get(digest))
        .route_layer(middleware::from_fn_with_state(state, require_admin_token))
}

/// True when `presented` equals `expected`, in time that does not depend on where they
/// differ (only on the length of the presented token).
pub fn token_matches(presented: &[u8], expected: &[u8]) -> bool {
    presented.len() == expected.len() && bool::from(presented.ct_eq(expected))
}

/// True when the request carries `Authorization: Bearer <expected>`.
pub fn bearer_matches(headers: &axum::http::HeaderMap, expected: &str) -> bool {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    token_matches(presented.as_bytes(), expected.as_bytes())
}

async fn require_admin_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(expected) = state.config().security.admin_token.expose() {
        if !bearer_matches(request.headers(), expected) {
            return Err(ApiError::Unauthorized);
        }
    }
    Ok(next.run(request).await)
}

/// A snapshot that was written.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotTaken {
    /// Every record at or below this LSN is in the snapshot.
    pub lsn: u64,
    pub users: u64,
    pub marks: u64,
    pub bytes: u64,
    pub file: String,
}

/// Takes a snapshot now (writes go on meanwhile) and moves the checkpoint to it.
#[utoipa::path(post, path = "/admin/snapshot", tag = "admin", security(("bearer" = [])),
    responses(
        (status = 200, body = SnapshotTaken),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 503, description = "Starting, or a snapshot request is already queued", body = ErrorBody),
    ))]
pub async fn snapshot(State(state): State<AppState>) -> Result<Json<SnapshotTaken>, ApiError> {
    let info = state.node()?.snapshot_now().await.map_err(ApiError::Busy)?;
    Ok(Json(SnapshotTaken {
        lsn: info.lsn.0,
        users: info.users,
        marks: info.marks,
        bytes: info.size,
        file: info.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
    }))
}

/// Order-independent digest of every (user, message) pair, to compare two nodes.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Digest {
    pub applied_lsn: u64,
    pub users: u64,
    pub marks: u64,
    /// 32 hex characters; equal on two nodes holding the same pairs.
    pub digest: String,
}

/// Digest of the whole read state (like Redis `DEBUG DIGEST`).
#[utoipa::path(get, path = "/admin/digest", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = Digest), (status = 401, description = "Missing or wrong token", body = ErrorBody)))]
pub async fn digest(State(state): State<AppState>) -> Result<Json<Digest>, ApiError> {
    let node = state.node()?.clone();
    // Digest walks every mark: keep it off the async workers.
    let (applied, digest) = tokio::task::spawn_blocking(move || {
        // Applied LSN first: the digest covers at least that much.
        let applied = node.applied_lsn();
        (applied, node.digest())
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(Digest { applied_lsn: applied.0, users: digest.users, marks: digest.marks, digest: digest.digest }))
}

#[cfg(test)]
mod tests {
    use super::token_matches;

    #[test]
    fn tokens_match_only_when_identical() {
        assert!(token_matches(b"s3cret", b"s3cret"));
        assert!(!token_matches(b"s3creT", b"s3cret"));
        assert!(!token_matches(b"s3cre", b"s3cret"));
        assert!(!token_matches(b"", b"s3cret"));
    }
}
