//! Reads across users: which of these users have read a message (the read receipts of a
//! group chat), and a batch of (user, message) checks. Answered in request order.
//!
//! A node answers for the users its group serves and refuses the whole request with
//! `409 wrong_shard` when one is not. `bitark router` answers the same requests for
//! users of every group: it splits them by owning group, asks each group's master, and
//! puts the answers back in request order.
//!
//! **Partial failure** (router only): when a group cannot answer (no reachable master,
//! an error after following its redirects), its users' entries are `null` and the group
//! is listed once in `unavailable` with the error it gave; the other entries are real
//! answers. When no group answers at all the request fails with the first group's error.
//! A node never answers `null`, and its `unavailable` is always empty.

use super::error::{ApiError, ErrorBody};
use super::extract::{parse_id, ApiJson, FlexU64, IdString};
use super::refusals::{BodyRefusals, ReadRefusals};
use super::routes::RouteTable;
use crate::app::AppState;
use axum::extract::{Path, State};
use axum::routing::post;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The route of a message's readers.
pub const READERS_ROUTE: &str = "/api/v1/messages/{msgId}/readers";
/// The route of a batch of (user, message) checks.
pub const PAIRS_ROUTE: &str = "/api/v1/reads/check";

/// Routes of this resource.
pub(crate) fn router() -> RouteTable {
    RouteTable::new().route(READERS_ROUTE, post(readers)).route(PAIRS_ROUTE, post(check_pairs))
}

/// Users whose read flag of one message is asked.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ReadersRequest {
    /// At most `limits.max-batch` users.
    #[schema(min_items = 1)]
    pub user_ids: Vec<FlexU64>,
}

/// One (user, message) to check.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UserMsgPair {
    pub user_id: FlexU64,
    pub msg_id: FlexU64,
}

/// (user, message) pairs to check.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PairsRequest {
    /// At most `limits.max-batch` pairs.
    #[schema(min_items = 1)]
    pub pairs: Vec<UserMsgPair>,
}

/// Read flags in request order; `null` only from a router, for a group that could not
/// answer (listed in `unavailable`).
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct ReceiptsResult {
    pub read: Vec<Option<bool>>,
    /// The groups that could not answer, each once (router only; empty on a node).
    pub unavailable: Vec<GroupFailure>,
}

/// A group that could not answer its part of a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GroupFailure {
    pub group: String,
    /// The error code it (or the router, for `no_master`, `unreachable`) gave.
    pub error: String,
    pub message: String,
}

/// Which of these users have read message `msgId`?
#[utoipa::path(
    post, path = "/api/v1/messages/{msgId}/readers", tag = "reads",
    params(("msgId" = IdString, Path, description = "Message id")),
    request_body(content = ReadersRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Flags in the order of `userIds`", body = ReceiptsResult),
        (status = 400, description = "Malformed body or id", body = ErrorBody),
        ReadRefusals,
        BodyRefusals,
        (status = 413, description = "More users than limits.max-batch", body = ErrorBody),
        (status = 503, description = "`starting`; or, from a router, no group could answer", body = ErrorBody),
    )
)]
pub async fn readers(
    State(state): State<AppState>,
    Path(msg): Path<String>,
    ApiJson(body): ApiJson<ReadersRequest>,
) -> Result<Json<ReceiptsResult>, ApiError> {
    let msg = parse_id("msgId", &msg)?;
    let node = serving(&state, body.user_ids.iter().map(|u| u.0))?;
    let read = body.user_ids.iter().map(|user| Some(node.is_read(user.0, msg))).collect();
    Ok(Json(ReceiptsResult { read, unavailable: Vec::new() }))
}

/// Has each user read each message, pair by pair?
#[utoipa::path(
    post, path = "/api/v1/reads/check", tag = "reads",
    request_body(content = PairsRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Flags in the order of `pairs`", body = ReceiptsResult),
        (status = 400, description = "Malformed body", body = ErrorBody),
        ReadRefusals,
        BodyRefusals,
        (status = 413, description = "More pairs than limits.max-batch", body = ErrorBody),
        (status = 503, description = "`starting`; or, from a router, no group could answer", body = ErrorBody),
    )
)]
pub async fn check_pairs(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<PairsRequest>,
) -> Result<Json<ReceiptsResult>, ApiError> {
    let node = serving(&state, body.pairs.iter().map(|p| p.user_id.0))?;
    let read = body.pairs.iter().map(|p| Some(node.is_read(p.user_id.0, p.msg_id.0))).collect();
    Ok(Json(ReceiptsResult { read, unavailable: Vec::new() }))
}

/// The node, when it can answer for every one of `users` now: not replacing its state,
/// at most `limits.max-batch` of them, each of its group.
fn serving(state: &AppState, users: impl ExactSizeIterator<Item = u64>) -> Result<&bitark_engine::Node, ApiError> {
    let node = state.node()?;
    if node.is_replacing() {
        return Err(ApiError::Replacing);
    }
    node.validate_batch_len(users.len())?;
    for user in users {
        node.check_owner(user)?;
    }
    Ok(node)
}
