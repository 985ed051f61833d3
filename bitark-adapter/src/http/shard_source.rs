//! `/internal/shard/*` (behind `security.cluster-token` when set): a move's source, on
//! the master of the group that owns the range. Both answer WAL records back to back
//! (content type `application/x-bitark-wal`), with the source's epoch in a header.

use super::auth::{self, Guard};
use super::error::ApiError;
use super::extract::QueryParams;
use super::routes::RouteTable;
use crate::app::AppState;
use axum::extract::State;
use axum::http::header;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bitark_common::replication::{
    APPLIED_LSN_HEADER, NEXT_LSN_HEADER, SAFE_LSN_HEADER, SOURCE_EPOCH_HEADER, WAL_CONTENT_TYPE,
};
use bitark_common::{Command, Epoch, HashRange, Lsn, Record};
use bitark_engine::sharding::pull::LOG_READ;

pub(crate) fn router(state: AppState) -> RouteTable {
    RouteTable::new()
        .route("/internal/shard/copy", get(copy))
        .route("/internal/shard/log", get(log))
        .layered(|routes| routes.route_layer(middleware::from_fn_with_state((state, Guard::Cluster), auth::require)))
}

fn range_of(query: &QueryParams) -> Result<HashRange, ApiError> {
    let text = query
        .text("range")
        .ok_or_else(|| ApiError::bad_request("invalid_query", "query parameter `range` is required"))?;
    super::moves::parse_range(text)
}

/// The commands as records of `epoch`, numbered from 1 within the answer.
fn records(epoch: Epoch, commands: Vec<Command>) -> Vec<u8> {
    let mut body = Vec::new();
    for (i, command) in commands.into_iter().enumerate() {
        Record { epoch, lsn: Lsn(i as u64 + 1), time: 0, command }.encode_into(&mut body);
    }
    body
}

/// `GET /internal/shard/copy?range=R&shard=K`: the users of `R` in store shard `K`, and
/// the applied LSN before they were read.
async fn copy(State(state): State<AppState>, query: QueryParams) -> Result<Response, ApiError> {
    let range = range_of(&query)?;
    let shard = usize::try_from(query.required_id("shard")?).unwrap_or(usize::MAX);
    let copy = state.node()?.copy_of_range(range, shard).await?;
    let headers = [
        (header::CONTENT_TYPE.as_str(), WAL_CONTENT_TYPE.to_string()),
        (SOURCE_EPOCH_HEADER, copy.epoch.0.to_string()),
        (APPLIED_LSN_HEADER, copy.applied.0.to_string()),
    ];
    Ok((headers, records(copy.epoch, copy.commands)).into_response())
}

/// `GET /internal/shard/log?range=R&fromLsn=N`: the records of `R`'s users from `N` on,
/// where the next read starts and the highest LSN answered now.
async fn log(State(state): State<AppState>, query: QueryParams) -> Result<Response, ApiError> {
    let range = range_of(&query)?;
    let from = Lsn(query.required_id("fromLsn")?.max(1));
    let log = state.node()?.log_of_range(range, from, LOG_READ).await?;
    let headers = [
        (header::CONTENT_TYPE.as_str(), WAL_CONTENT_TYPE.to_string()),
        (SOURCE_EPOCH_HEADER, log.epoch.0.to_string()),
        (NEXT_LSN_HEADER, log.next.0.to_string()),
        (SAFE_LSN_HEADER, log.safe.0.to_string()),
    ];
    Ok((headers, records(log.epoch, log.commands)).into_response())
}
