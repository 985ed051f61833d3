//! The public read-status API, `/api/v1/users/{userId}/...`.

use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, FlexU64, QueryParams, UserId, UserMsg};
use super::AppState;
use axum::extract::{OriginalUri, State};
use axum::http::Uri;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bitark_common::{Command, Lsn};
use bitark_engine::{Node, WriteError};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Routes of this resource.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/users/{userId}/reads/{msgId}", put(mark_read).delete(mark_unread).get(is_read))
        .route("/api/v1/users/{userId}/reads", post(mark_many))
        .route("/api/v1/users/{userId}/reads/check", post(check))
        .route("/api/v1/users/{userId}/unread-count", get(unread_count))
}

/// Answer to a write: the LSN of its WAL record, durable once this arrives.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LsnResponse {
    /// LSN of the record that carries this write.
    pub lsn: u64,
}

/// Whether one message is read.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReadStatus {
    pub read: bool,
    /// The LSN this node had applied when it answered.
    pub lsn: u64,
}

/// Mark many: either `msgIds`, or an inclusive range `from`..`to`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MarkManyRequest {
    /// Message ids to mark read (at most `limits.max-batch`).
    pub msg_ids: Option<Vec<FlexU64>>,
    /// First id of the range, inclusive.
    pub from: Option<FlexU64>,
    /// Last id of the range, inclusive (the range spans at most `limits.max-range` ids).
    pub to: Option<FlexU64>,
}

/// Message ids to check.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CheckRequest {
    /// At most `limits.max-batch` ids.
    pub msg_ids: Vec<FlexU64>,
}

/// Read flags in the order of the request's `msgIds`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CheckResponse {
    pub read: Vec<bool>,
    /// The LSN this node had applied when it answered.
    pub lsn: u64,
}

/// Unread messages in a range.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UnreadCount {
    pub unread: u64,
    /// The LSN this node had applied when it answered.
    pub lsn: u64,
}

/// `?minLsn=`: read only once this node has applied at least this LSN.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ConsistencyQuery {
    /// Wait (up to `reads.min-lsn-wait`) until this LSN is applied; 503 `lsn_not_reached` otherwise.
    #[param(rename = "minLsn")]
    pub min_lsn: Option<u64>,
}

/// `?from=&to=` of an unread count.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct RangeQuery {
    /// First message id, inclusive.
    pub from: u64,
    /// Last message id, inclusive; the range spans at most `limits.max-range` ids.
    pub to: u64,
    /// Wait (up to `reads.min-lsn-wait`) until this LSN is applied.
    #[param(rename = "minLsn")]
    pub min_lsn: Option<u64>,
}

/// The node, once it has applied the `minLsn` of the query (if any).
async fn consistent_node(state: &AppState, query: &QueryParams) -> Result<(Node, Lsn), ApiError> {
    let node = state.node()?.clone();
    if node.is_replacing() {
        return Err(ApiError::Replacing);
    }
    let applied = match query.id("minLsn")? {
        Some(min) if node.applied_lsn() < Lsn(min) => node.wait_applied(Lsn(min)).await?,
        _ => node.applied_lsn(),
    };
    Ok((node, applied))
}

async fn write(state: &AppState, command: Command, uri: &Uri) -> Result<Json<LsnResponse>, ApiError> {
    match state.node()?.write(command).await {
        Ok(lsn) => Ok(Json(LsnResponse { lsn: lsn.0 })),
        // A slave points the client at the same request on the master.
        Err(WriteError::NotMaster { master_url }) => {
            let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
            Err(ApiError::NotMaster { location: format!("{}{path}", master_url.trim_end_matches('/')), master_url })
        }
        Err(e) => Err(e.into()),
    }
}

/// Mark one message read.
#[utoipa::path(
    put, path = "/api/v1/users/{userId}/reads/{msgId}", tag = "reads",
    params(("userId" = u64, Path, description = "User id, 0..=2^64-1"), ("msgId" = u64, Path, description = "Message id, 0..=2^64-1")),
    responses(
        (status = 200, description = "Durable; the LSN of its record", body = LsnResponse),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 409, description = "`not_master`: this node is a slave (with `masterUrl` and a `Location` header); `mark_limit`: the user would hold more than `limits.max-marks-per-user` marks", body = ErrorBody),
        (status = 500, description = "`write_outcome_unknown`: the record was written but its fsync failed; it may or may not be present after a restart", body = ErrorBody),
        (status = 503, description = "`starting`, `shutting_down`, `overloaded`, `write_failed` (not logged; retry), `write_path_failed` (not logged; the node needs a restart)", body = ErrorBody),
        (status = 507, description = "`insufficient_storage`: the disk holding the log is full; `memory_limit`: above `limits.max-memory`. Not logged", body = ErrorBody),
    )
)]
pub async fn mark_read(
    State(state): State<AppState>,
    OriginalUri(uri): OriginalUri,
    ids: UserMsg,
) -> Result<Json<LsnResponse>, ApiError> {
    write(&state, Command::MarkRead { user: ids.user, msg: ids.msg }, &uri).await
}

/// Mark one message unread.
#[utoipa::path(
    delete, path = "/api/v1/users/{userId}/reads/{msgId}", tag = "reads",
    params(("userId" = u64, Path, description = "User id"), ("msgId" = u64, Path, description = "Message id")),
    responses(
        (status = 200, description = "Durable; the LSN of its record", body = LsnResponse),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 409, description = "`not_master`: this node is a slave (with `masterUrl` and a `Location` header); `mark_limit`: the user would hold more than `limits.max-marks-per-user` marks", body = ErrorBody),
        (status = 500, description = "`write_outcome_unknown`: the record was written but its fsync failed; it may or may not be present after a restart", body = ErrorBody),
        (status = 503, description = "`starting`, `shutting_down`, `overloaded`, `write_failed` (not logged; retry), `write_path_failed` (not logged; the node needs a restart)", body = ErrorBody),
        (status = 507, description = "`insufficient_storage`: the disk holding the log is full; `memory_limit`: above `limits.max-memory`. Not logged", body = ErrorBody),
    )
)]
pub async fn mark_unread(
    State(state): State<AppState>,
    OriginalUri(uri): OriginalUri,
    ids: UserMsg,
) -> Result<Json<LsnResponse>, ApiError> {
    write(&state, Command::MarkUnread { user: ids.user, msg: ids.msg }, &uri).await
}

/// Has the user read this message?
#[utoipa::path(
    get, path = "/api/v1/users/{userId}/reads/{msgId}", tag = "reads",
    params(("userId" = u64, Path, description = "User id"), ("msgId" = u64, Path, description = "Message id"), ConsistencyQuery),
    responses(
        (status = 200, description = "Read flag and the applied LSN", body = ReadStatus),
        (status = 400, description = "Malformed id or minLsn", body = ErrorBody),
        (status = 503, description = "minLsn not reached in time, or starting", body = ErrorBody),
    )
)]
pub async fn is_read(
    State(state): State<AppState>,
    ids: UserMsg,
    query: QueryParams,
) -> Result<Json<ReadStatus>, ApiError> {
    let (node, lsn) = consistent_node(&state, &query).await?;
    Ok(Json(ReadStatus { read: node.is_read(ids.user, ids.msg), lsn: lsn.0 }))
}

/// Mark many messages read: a list, or everything in an inclusive range. All or nothing.
#[utoipa::path(
    post, path = "/api/v1/users/{userId}/reads", tag = "reads",
    params(("userId" = u64, Path, description = "User id")),
    request_body(content = MarkManyRequest, content_type = "application/json",
        description = "`{\"msgIds\": [..]}` or `{\"from\": a, \"to\": b}`"),
    responses(
        (status = 200, description = "Durable; the LSN of its record", body = LsnResponse),
        (status = 400, description = "Malformed body or id, empty batch, inverted range", body = ErrorBody),
        (status = 408, description = "`request_timeout`: the body did not arrive within `server.request-timeout`", body = ErrorBody),
        (status = 409, description = "`not_master`: this node is a slave (with `masterUrl` and a `Location` header); `mark_limit`: the user would hold more than `limits.max-marks-per-user` marks", body = ErrorBody),
        (status = 500, description = "`write_outcome_unknown`: the record was written but its fsync failed; it may or may not be present after a restart", body = ErrorBody),
        (status = 503, description = "`starting`, `shutting_down`, `overloaded`, `write_failed` (not logged; retry), `write_path_failed` (not logged; the node needs a restart)", body = ErrorBody),
        (status = 507, description = "`insufficient_storage`: the disk holding the log is full; `memory_limit`: above `limits.max-memory`. Not logged", body = ErrorBody),
        (status = 413, description = "Batch or range over the limit", body = ErrorBody),
        (status = 415, description = "Body is not application/json", body = ErrorBody),
    )
)]
pub async fn mark_many(
    State(state): State<AppState>,
    OriginalUri(uri): OriginalUri,
    UserId(user): UserId,
    ApiJson(body): ApiJson<MarkManyRequest>,
) -> Result<Json<LsnResponse>, ApiError> {
    let command = match body {
        MarkManyRequest { msg_ids: Some(ids), from: None, to: None } => {
            Command::MarkBatch { user, msgs: ids.into_iter().map(|id| id.0).collect() }
        }
        MarkManyRequest { msg_ids: None, from: Some(from), to: Some(to) } => {
            Command::MarkRange { user, from: from.0, to: to.0 }
        }
        _ => {
            return Err(ApiError::bad_request(
                "invalid_body",
                "the body must hold either `msgIds` or both `from` and `to`, not a mix",
            ))
        }
    };
    write(&state, command, &uri).await
}

/// Which of these messages has the user read?
#[utoipa::path(
    post, path = "/api/v1/users/{userId}/reads/check", tag = "reads",
    params(("userId" = u64, Path, description = "User id"), ConsistencyQuery),
    request_body(content = CheckRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Flags in request order", body = CheckResponse),
        (status = 400, description = "Malformed body or id", body = ErrorBody),
        (status = 408, description = "`request_timeout`: the body did not arrive within `server.request-timeout`", body = ErrorBody),
        (status = 413, description = "More ids than limits.max-batch", body = ErrorBody),
        (status = 415, description = "Body is not application/json", body = ErrorBody),
        (status = 503, description = "`lsn_not_reached`: minLsn not reached in time; or starting", body = ErrorBody),
    )
)]
pub async fn check(
    State(state): State<AppState>,
    UserId(user): UserId,
    query: QueryParams,
    ApiJson(body): ApiJson<CheckRequest>,
) -> Result<Json<CheckResponse>, ApiError> {
    let (node, lsn) = consistent_node(&state, &query).await?;
    node.validate_batch_len(body.msg_ids.len())?;
    let ids: Vec<u64> = body.msg_ids.into_iter().map(|id| id.0).collect();
    Ok(Json(CheckResponse { read: node.check(user, &ids), lsn: lsn.0 }))
}

/// How many messages in `from..=to` has the user not read?
#[utoipa::path(
    get, path = "/api/v1/users/{userId}/unread-count", tag = "reads",
    params(("userId" = u64, Path, description = "User id"), RangeQuery),
    responses(
        (status = 200, description = "Unread count", body = UnreadCount),
        (status = 400, description = "Missing or malformed from/to, inverted range", body = ErrorBody),
        (status = 413, description = "Range wider than limits.max-range", body = ErrorBody),
        (status = 503, description = "`lsn_not_reached`: minLsn not reached in time; or starting", body = ErrorBody),
    )
)]
pub async fn unread_count(
    State(state): State<AppState>,
    UserId(user): UserId,
    query: QueryParams,
) -> Result<Json<UnreadCount>, ApiError> {
    let (from, to) = (query.required_id("from")?, query.required_id("to")?);
    let (node, lsn) = consistent_node(&state, &query).await?;
    Ok(Json(UnreadCount { unread: node.unread_count(user, from, to)?, lsn: lsn.0 }))
}
