//! `/admin/shard/freeze` and `/admin/shard/thaw`: the source group's side of a move's
//! cutover, behind `security.admin-token` like every admin endpoint. A freeze is a logged
//! ownership record: the group's slaves and any promoted master keep it.

use super::error::{ApiError, ErrorBody};
use super::extract::ApiJson;
use axum::extract::State;
use axum::Json;
use bitark_common::HashRange;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::app::AppState;

/// One range this node's group owns, whole.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RangeRequest {
    /// `START..END` in hex, as `bitark shards show` lists the ranges; `END` may be `end`.
    #[schema(example = "0x8000000000000000..end", max_length = 64)]
    pub range: String,
}

/// The group's frozen ranges after a freeze or thaw.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RangeFreeze {
    /// Every write to the range lies at or below this LSN: the record's, or the applied
    /// LSN when the range was in that state already.
    pub lsn: u64,
    /// Whether a record was logged (false for a repeat).
    pub logged: bool,
    /// The ranges frozen from now on, as `START..END` in hex.
    pub frozen: Vec<String>,
}

/// Freezes one owned range for a move: from the answer on, writes of its users are refused
/// with `503 range_frozen` (a router holds them) and reads are still served. The freeze is
/// logged and durable under the configured acknowledgement mode before it is answered.
#[utoipa::path(post, path = "/admin/shard/freeze", tag = "admin", security((), ("bearer" = [])),
    request_body(content = RangeRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Frozen", body = RangeFreeze),
        (status = 400, description = "`invalid_range`: not a hash range; or a malformed body", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 409, description = "`not_an_owned_range`: not one whole range of this group; `not_sharded`: the log holds no ownership; `not_master`: a slave", body = ErrorBody),
        (status = 415, description = "Body is not application/json", body = ErrorBody),
        (status = 503, description = "Starting, or the write path cannot log (see the write endpoints)", body = ErrorBody),
        (status = 504, description = "`replication_timeout`: logged here, not yet on the slaves the acknowledgement mode needs", body = ErrorBody),
    ))]
pub async fn freeze(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RangeRequest>,
) -> Result<Json<RangeFreeze>, ApiError> {
    change(&state, &body, true).await
}

/// Thaws a frozen range: writes of its users are taken again. Logged and durable like a
/// freeze; thawing a range that is not frozen logs nothing.
#[utoipa::path(post, path = "/admin/shard/thaw", tag = "admin", security((), ("bearer" = [])),
    request_body(content = RangeRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Thawed", body = RangeFreeze),
        (status = 400, description = "`invalid_range`: not a hash range; or a malformed body", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 409, description = "`not_an_owned_range`, `not_sharded`, `not_master`: as for a freeze", body = ErrorBody),
        (status = 415, description = "Body is not application/json", body = ErrorBody),
        (status = 503, description = "Starting, or the write path cannot log", body = ErrorBody),
        (status = 504, description = "`replication_timeout`: logged here, not yet on the slaves the acknowledgement mode needs", body = ErrorBody),
    ))]
pub async fn thaw(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RangeRequest>,
) -> Result<Json<RangeFreeze>, ApiError> {
    change(&state, &body, false).await
}

async fn change(state: &AppState, body: &RangeRequest, freeze: bool) -> Result<Json<RangeFreeze>, ApiError> {
    let range: HashRange = body.range.parse().map_err(|e| ApiError::bad_request("invalid_range", format!("{e}")))?;
    let done = state.node()?.freeze_range(range, freeze).await?;
    tracing::info!(%range, freeze, lsn = done.lsn.0, logged = done.logged, "range freeze changed");
    Ok(Json(RangeFreeze {
        lsn: done.lsn.0,
        logged: done.logged,
        frozen: done.frozen.iter().map(ToString::to_string).collect(),
    }))
}
