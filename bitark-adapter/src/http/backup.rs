//! `/admin/backup/*`: an online base backup read from a running node (`bitark backup`),
//! behind `security.admin-token` when one is set.
//!
//! `POST /admin/backup` takes a snapshot now and keeps it, with the log after it, for
//! the backup; `GET …/{id}/snapshot?offset=&len=` reads the snapshot in ranges, each
//! with its crc32 in `x-bitark-crc32`; `GET …/{id}/wal?from=` reads records up to the
//! backup's end; `DELETE …/{id}` ends it. Writes go on meanwhile.

use super::error::{ApiError, ErrorBody};
use super::extract::{parse_id, IdString, QueryParams};
use crate::app::AppState;
use axum::extract::{Path, State};
use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bitark_common::Lsn;
use bitark_engine::backup::{BackupSession, MAX_READ};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The header carrying the crc32 (8 hex digits) of a snapshot range.
pub const CRC_HEADER: HeaderName = HeaderName::from_static("x-bitark-crc32");
/// The header carrying the LSN of the last record of a WAL read (absent when none).
pub const LAST_LSN_HEADER: HeaderName = HeaderName::from_static("x-bitark-last-lsn");

/// A backup the node began serving.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupStarted {
    /// Names the backup in the reads that follow (a decimal string).
    pub id: String,
    pub node_id: String,
    pub epoch: u64,
    /// The snapshot the backup starts from.
    pub snapshot_lsn: u64,
    pub snapshot_size: u64,
    /// The snapshot's file name on the node.
    pub snapshot_file: String,
    /// The backup holds every record up to here: the durable LSN when it began.
    pub end_lsn: u64,
}

impl From<BackupSession> for BackupStarted {
    fn from(s: BackupSession) -> Self {
        BackupStarted {
            id: s.id.to_string(),
            node_id: s.node_id,
            epoch: s.epoch.0,
            snapshot_lsn: s.snapshot_lsn.0,
            snapshot_size: s.snapshot_size,
            snapshot_file: s.snapshot.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            end_lsn: s.end_lsn.0,
        }
    }
}

/// Begins an online base backup from the newest snapshot (`?fresh=true`: from one
/// taken now; also when there is none), kept with the log after it until the backup
/// ends (or stops reading for `replication.full-sync.pin-timeout`).
#[utoipa::path(post, path = "/admin/backup", tag = "admin", security((), ("bearer" = [])),
    params(("fresh" = Option<bool>, Query, description = "Take a new snapshot first; default false")),
    responses(
        (status = 400, description = "`invalid_query`: `fresh` is not true or false", body = ErrorBody),
        (status = 200, body = BackupStarted),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 500, description = "`snapshot_failed`: the snapshot could not be written", body = ErrorBody),
        (status = 503, description = "Starting, or a snapshot request is already queued", body = ErrorBody),
        (status = 507, description = "`insufficient_storage`: no space for the snapshot", body = ErrorBody),
    ))]
pub async fn begin_backup(State(state): State<AppState>, query: QueryParams) -> Result<Json<BackupStarted>, ApiError> {
    let fresh = match query.text("fresh") {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::bad_request("invalid_query", format!("fresh: `{other}` is not true or false")))
        }
    };
    Ok(Json(state.node()?.begin_backup(fresh).await?.into()))
}

fn backup_id(raw: &str) -> Result<u64, ApiError> {
    parse_id("id", raw)
}

/// Up to `len` bytes (at most 8 MiB) of the backup's snapshot from `offset`, with their
/// crc32 in `x-bitark-crc32`.
#[utoipa::path(get, path = "/admin/backup/{id}/snapshot", tag = "admin", security((), ("bearer" = [])),
    params(
        ("id" = IdString, Path, description = "The backup's id"),
        ("offset" = Option<IdString>, Query, description = "First byte; default 0"),
        ("len" = Option<IdString>, Query, description = "Bytes wanted; default and at most 8 MiB"),
    ),
    responses(
        (status = 200, description = "The bytes", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, description = "`invalid_id` or `invalid_query`", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 404, description = "No such backup runs", body = ErrorBody),
    ))]
pub async fn backup_snapshot(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let id = backup_id(&id)?;
    let offset = query.id("offset")?.unwrap_or(0);
    let len = query.id("len")?.unwrap_or(MAX_READ as u64);
    let node = state.node()?.clone();
    let bytes = tokio::task::spawn_blocking(move || node.backup_snapshot_bytes(id, offset, len as usize))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    let crc = format!("{:08x}", crc32fast::hash(&bytes));
    Ok(octet_stream(bytes, Some((CRC_HEADER, HeaderValue::from_str(&crc).expect("hex is a header value")))))
}

/// `body` as `application/octet-stream`, with `extra` as one more header.
fn octet_stream(body: Vec<u8>, extra: Option<(HeaderName, HeaderValue)>) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    if let Some((name, value)) = extra {
        headers.insert(name, value);
    }
    response
}

/// The backup's WAL records from `from`, encoded back to back as in the node's log, no
/// further than the backup's end; an empty body once `from` is past it. The last LSN
/// sent is in `x-bitark-last-lsn`.
#[utoipa::path(get, path = "/admin/backup/{id}/wal", tag = "admin", security((), ("bearer" = [])),
    params(
        ("id" = IdString, Path, description = "The backup's id"),
        ("from" = IdString, Query, description = "The first LSN wanted"),
    ),
    responses(
        (status = 200, description = "Records", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, description = "`invalid_id` or `invalid_query`", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 404, description = "No such backup runs", body = ErrorBody),
        (status = 409, description = "`wal_purged`: the log the backup needs is gone", body = ErrorBody),
    ))]
pub async fn backup_wal(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let id = backup_id(&id)?;
    let from = Lsn(query.required_id("from")?);
    let records = state.node()?.backup_records(id, from).await?;
    let mut body = Vec::with_capacity(records.iter().map(|r| r.encoded_len()).sum());
    for record in &records {
        record.encode_into(&mut body);
    }
    let last = records.last().map(|r| (LAST_LSN_HEADER, HeaderValue::from(r.lsn.0)));
    Ok(octet_stream(body, last))
}

/// Ends the backup: the node no longer keeps its snapshot and log for it.
#[utoipa::path(delete, path = "/admin/backup/{id}", tag = "admin", security((), ("bearer" = [])),
    params(("id" = IdString, Path, description = "The backup's id")),
    responses(
        (status = 204, description = "Ended"),
        (status = 400, description = "`invalid_id`: the id is not a decimal id", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 404, description = "No such backup runs", body = ErrorBody),
    ))]
pub async fn end_backup(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    state.node()?.end_backup(backup_id(&id)?)?;
    Ok(axum::http::StatusCode::NO_CONTENT.into_response())
}
