//! `/admin/*`: operator endpoints, behind `security.admin-token` when one is set.

use super::auth::{self, Guard};
use super::error::{ApiError, ErrorBody};
use super::AppState;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::middleware;
use axum::routing::{get, post};
use axum::{Json, Router};
use bitark_engine::SnapshotError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/admin/snapshot", post(snapshot))
        .route("/admin/digest", get(digest))
        .route_layer(middleware::from_fn_with_state((state, Guard::Admin), auth::require))
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

/// Takes a snapshot now (writes go on meanwhile); recovery starts from it from now on.
#[utoipa::path(post, path = "/admin/snapshot", tag = "admin", security(("bearer" = [])),
    responses(
        (status = 200, body = SnapshotTaken),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 500, description = "`snapshot_failed`: writing it failed; the message says what", body = ErrorBody),
        (status = 503, description = "Starting, or a snapshot request is already queued", body = ErrorBody),
        (status = 507, description = "`insufficient_storage`: no space for the snapshot", body = ErrorBody),
    ))]
pub async fn snapshot(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<SnapshotTaken>, ApiError> {
    let taken = state.node()?.snapshot_now().await;
    let info = taken.map_err(|e| snapshot_error(e, auth::is_authenticated(&state, Guard::Admin, &headers)))?;
    Ok(Json(SnapshotTaken {
        lsn: info.lsn.0,
        users: info.users,
        marks: info.marks,
        bytes: info.size,
        file: info.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
    }))
}

/// A failed snapshot as an answer. File names and paths go only to a caller that
/// presented the admin token; every failure is logged in full.
fn snapshot_error(e: SnapshotError, authenticated: bool) -> ApiError {
    tracing::error!(error = %e, "snapshot requested through /admin/snapshot failed");
    match e {
        SnapshotError::Busy | SnapshotError::ShuttingDown => ApiError::Busy(e.to_string()),
        SnapshotError::Storage { summary, detail, no_space } => {
            let message = if authenticated { detail } else { summary };
            if no_space {
                ApiError::InsufficientStorage { code: "insufficient_storage", message }
            } else {
                ApiError::Failed { code: "snapshot_failed", message }
            }
        }
        not_durable @ SnapshotError::NotDurable { .. } => {
            ApiError::Failed { code: "snapshot_failed", message: not_durable.to_string() }
        }
    }
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
