//! `/admin/shard/*`, behind `security.admin-token` like every admin endpoint: a move's
//! steps on each group's master. On the source, `freeze` and `thaw` (a freeze is a
//! logged ownership record: the group's slaves and any promoted master keep it) and
//! `drop` once the range is the destination's; on the destination, `incoming` (stage a
//! copy and replay the source's log), its `drain` to the freeze point and `stop`.

use super::error::{ApiError, ErrorBody};
use super::extract::ApiJson;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use bitark_common::{HashRange, Lsn};
use bitark_engine::sharding::incoming::{DrainError, IncomingStatus};
use bitark_infra::replication::moves::MoveClient;
use serde::{Deserialize, Serialize};
use std::time::Duration;
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
    let range = parse_range(&body.range)?;
    let done = state.node()?.freeze_range(range, freeze).await?;
    tracing::info!(%range, freeze, lsn = done.lsn.0, logged = done.logged, "range freeze changed");
    Ok(Json(RangeFreeze {
        lsn: done.lsn.0,
        logged: done.logged,
        frozen: done.frozen.iter().map(ToString::to_string).collect(),
    }))
}

/// A range to take in from a move's source.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IncomingRequest {
    /// `START..END` in hex: a range this group does not own.
    #[schema(example = "0x8000000000000000..end", max_length = 64)]
    pub range: String,
    /// The base URL of the source group's master.
    #[schema(pattern = "^https?://[^ ]+$", max_length = 2048, min_length = 9)]
    pub source: String,
}

/// How far to drain an incoming move.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DrainRequest {
    #[schema(example = "0x8000000000000000..end", max_length = 64)]
    pub range: String,
    /// The source's freeze point: every write to the range lies at or below it.
    pub until_lsn: u64,
    /// Longest to wait, in milliseconds (1000 when left out, at most 60000).
    pub timeout_ms: Option<u64>,
}

/// This node's LSN after a drain or a drop.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Logged {
    pub lsn: u64,
}

/// A range as a request names it (`START..END` in hex); `400 invalid_range` otherwise.
pub(crate) fn parse_range(text: &str) -> Result<HashRange, ApiError> {
    text.parse().map_err(|e| ApiError::bad_request("invalid_range", format!("{e}")))
}

/// Starts taking in a range from the source group's master: this master stages a copy
/// of the range's users (what it held of the range is dropped first), then replays the
/// source's log of the range, restarting the copy after a failover of the source. Staged
/// users are in this group's log and store but not read until the range is this group's.
#[utoipa::path(post, path = "/admin/shard/incoming", tag = "admin", security((), ("bearer" = [])),
    request_body(content = IncomingRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "Taking the range in (a repeat is answered the same)", body = [IncomingStatus]),
        (status = 400, description = "`invalid_range`, or a malformed body or URL", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 409, description = "`owned_range`: the range overlaps one this group owns; `not_sharded`; `not_master`", body = ErrorBody),
        (status = 415, description = "Body is not application/json", body = ErrorBody),
        (status = 503, description = "Starting", body = ErrorBody),
    ))]
pub async fn start_incoming(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<IncomingRequest>,
) -> Result<(StatusCode, Json<Vec<IncomingStatus>>), ApiError> {
    let range = parse_range(&body.range)?;
    let source = body.source.trim().trim_end_matches('/').to_string();
    if !(source.starts_with("http://") || source.starts_with("https://")) || source.len() > 2048 {
        return Err(ApiError::bad_request("invalid_body", "`source` must be an http:// or https:// base URL"));
    }
    let config = state.config();
    let token = config.security.cluster_token.expose().map(str::to_string);
    let client = MoveClient::new(config.engine.replication.request_timeout, token);
    let node = state.node()?;
    node.start_incoming(range, source, client)?;
    Ok((StatusCode::ACCEPTED, Json(node.incoming())))
}

/// The incoming moves of this master and where each stands: phase, commands copied and
/// replayed, the source LSN it has replayed to and the source's safe LSN.
#[utoipa::path(get, path = "/admin/shard/incoming", tag = "admin", security((), ("bearer" = [])),
    responses(
        (status = 200, body = [IncomingStatus]),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 503, description = "Starting", body = ErrorBody),
    ))]
pub async fn incoming(State(state): State<AppState>) -> Result<Json<Vec<IncomingStatus>>, ApiError> {
    Ok(Json(state.node()?.incoming()))
}

/// Waits until the incoming move of a range has replayed the source's log through
/// `untilLsn` (the source's freeze point) and this group's acknowledgement mode holds it.
#[utoipa::path(post, path = "/admin/shard/incoming/drain", tag = "admin", security((), ("bearer" = [])),
    request_body(content = DrainRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Drained; this node's LSN that covers it", body = Logged),
        (status = 400, description = "`invalid_range`, or a malformed body", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 404, description = "`not_found`: no incoming move of the range runs here", body = ErrorBody),
        (status = 415, description = "Body is not application/json", body = ErrorBody),
        (status = 503, description = "Starting", body = ErrorBody),
        (status = 504, description = "`drain_timeout`: not replayed that far in time; `replication_timeout`: not yet on the slaves the ack mode needs", body = ErrorBody),
    ))]
pub async fn drain_incoming(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<DrainRequest>,
) -> Result<Json<Logged>, ApiError> {
    let range = parse_range(&body.range)?;
    let wait = Duration::from_millis(body.timeout_ms.unwrap_or(1000).min(60_000));
    match state.node()?.drain_incoming(range, Lsn(body.until_lsn), wait).await {
        Ok(lsn) => Ok(Json(Logged { lsn: lsn.0 })),
        Err(DrainError::Unknown(range)) => Err(ApiError::NotFound(format!("no incoming move of {range} runs here"))),
        Err(behind @ DrainError::Behind { .. }) => Err(ApiError::DrainTimeout(behind.to_string())),
        Err(DrainError::Write(e)) => Err(e.into()),
    }
}

/// Stops the incoming move of a range; what it staged stays until dropped.
#[utoipa::path(post, path = "/admin/shard/incoming/stop", tag = "admin", security((), ("bearer" = [])),
    request_body(content = RangeRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Stopped", body = [IncomingStatus]),
        (status = 400, description = "`invalid_range`, or a malformed body", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 404, description = "`not_found`: no incoming move of the range runs here", body = ErrorBody),
        (status = 415, description = "Body is not application/json", body = ErrorBody),
        (status = 503, description = "Starting", body = ErrorBody),
    ))]
pub async fn stop_incoming(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RangeRequest>,
) -> Result<Json<Vec<IncomingStatus>>, ApiError> {
    let range = parse_range(&body.range)?;
    let node = state.node()?;
    if !node.stop_incoming(range) {
        return Err(ApiError::NotFound(format!("no incoming move of {range} runs here")));
    }
    Ok(Json(node.incoming()))
}

/// Removes, by a logged record, every user of a range this group does not own: a move's
/// staged copy, or the source's copy once the range is another group's.
#[utoipa::path(post, path = "/admin/shard/drop", tag = "admin", security((), ("bearer" = [])),
    request_body(content = RangeRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Dropped", body = Logged),
        (status = 400, description = "`invalid_range`, or a malformed body", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 409, description = "`owned_range`: the range overlaps one this group owns; `not_sharded`; `not_master`", body = ErrorBody),
        (status = 415, description = "Body is not application/json", body = ErrorBody),
        (status = 503, description = "Starting, or the write path cannot log (see the write endpoints)", body = ErrorBody),
    ))]
pub async fn drop_range(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RangeRequest>,
) -> Result<Json<Logged>, ApiError> {
    let range = parse_range(&body.range)?;
    let lsn = state.node()?.drop_unowned_range(range).await?;
    Ok(Json(Logged { lsn: lsn.0 }))
}
