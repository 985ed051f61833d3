//! [`ApiError`]: every error the HTTP layer answers, mapped to its status in one place.
//!
//! The body is always `{"error": "<stable code>", "message": "<what was wrong>"}`.
//! Internal errors are logged and answered with a generic message.

use super::body::MAX_URI_LEN;
use crate::app::Unavailable;
use crate::refresh::RefreshError;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bitark_engine::backup::BackupError;
use bitark_engine::replication::full_sync::FullSyncError;
use bitark_engine::replication::RegisterError;
use bitark_engine::{ConsistencyError, InvalidCommand, RoleError, SnapshotError, WriteError};
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
    /// With `replication_timeout`: the LSN of the write, durable on the master.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lsn: Option<u64>,
    /// With `replication_timeout`: the epoch of the write; with `stale_epoch`: the epoch
    /// of the node that refused; with a fenced `not_master`: the newer epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// With `replication_timeout` and `not_enough_replicas`: the acknowledgement mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "all")]
    pub ack: Option<&'static str>,
    /// With `replication_timeout`: slaves that hold the write durably.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acked: Option<usize>,
    /// With `replication_timeout` and `not_enough_replicas`: slaves the mode needs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub required: Option<usize>,
    /// With `write_lost`: the token asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// With `invalid_config`: every problem of the configuration refused, each naming
    /// its key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problems: Option<Vec<String>>,
    /// With `wrong_shard`: the newest shard map version the node knows; a router
    /// refreshes its map only when this is newer than its own. With `range_frozen`: the
    /// map version of the frozen range's ownership.
    #[serde(rename = "mapVersion", skip_serializing_if = "Option::is_none")]
    pub map_version: Option<u64>,
    /// With `wrong_shard`: the group that owns the user, when the node knows it (its
    /// master, when known, is `masterUrl`). With `range_frozen`: the group whose range
    /// is frozen.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "eu-2")]
    pub group: Option<String>,
}

/// An error answered to an HTTP client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: a malformed, negative or out-of-range id, query or body; `code` says which.
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    /// 408: the request was not received and answered within `server.request-timeout`.
    #[error("the request was not received and answered within {0:?} (server.request-timeout)")]
    RequestTimeout(std::time::Duration),
    /// 413: a batch, range or body over the configured limit.
    #[error("{message}")]
    TooLarge { code: &'static str, message: String },
    /// 414: a request target longer than the server reads.
    #[error("the request target is {0} bytes long; at most {MAX_URI_LEN} are read")]
    UriTooLong(usize),
    /// 415: a body that is not `application/json`.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 431: request headers larger than the server reads.
    #[error("{0}")]
    HeadersTooLarge(String),
    /// 400 `invalid_config`: a refresh found the new configuration invalid; nothing
    /// changed.
    #[error("the new configuration is refused and the running one stays: {}", .0.join("; "))]
    InvalidConfig(Vec<String>),
    /// 401: a protected endpoint called without the right bearer token.
    #[error("a valid bearer token is required")]
    Unauthorized,
    /// 404: no such route.
    #[error("no route for {0}")]
    NotFound(String),
    /// 405: the route exists but not with this method.
    #[error("method {0} is not allowed here")]
    MethodNotAllowed(String),
    /// 409: the user would hold more marks than `limits.max-marks-per-user`.
    #[error("{0}")]
    MarkLimit(String),
    /// 409 `wrong_shard`: the user belongs to another replication group.
    #[error(transparent)]
    WrongShard(#[from] bitark_engine::WrongShard),
    /// 409 `stale_ownership`: an ownership of an older shard map than the one in force.
    #[error("{0}")]
    StaleOwnership(String),
    /// 504 `drain_timeout`: an incoming move did not replay the source's log far enough
    /// in time.
    #[error("{0}")]
    DrainTimeout(String),
    /// 503 `range_frozen`: the user's range is frozen for a move; nothing was logged.
    #[error(transparent)]
    RangeFrozen(#[from] bitark_engine::RangeFrozen),
    /// 503: recovery has not finished yet.
    #[error("the node is starting (recovering its state); retry shortly")]
    Starting,
    /// 503: the node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// 503: the connection was over `server.max-connections` (answered before closing it).
    #[error("the node has {0} connections open (server.max-connections); retry later")]
    TooManyConnections(usize),
    /// 503: a full sync is replacing this node's state; reads resume in a moment.
    #[error("a full sync is replacing this node's state; retry in a moment")]
    Replacing,
    /// 503: too many writes queued.
    #[error("too many writes in flight; retry later")]
    Overloaded,
    /// 503: the node has not applied the `minLsn` the read asked for.
    #[error(transparent)]
    Behind(#[from] ConsistencyError),
    /// 503: the snapshotter cannot take a request now.
    #[error("{0}")]
    Busy(String),
    /// 503: the log could not be written; the write was not logged and the log retries.
    #[error("{0}")]
    WriteFailed(String),
    /// 503: the log stopped after a failure; the write was not logged. Restart the node.
    #[error("{0}")]
    WritePathFailed(String),
    /// 507: the disk holding the log, or the memory allowed (`code` says which), is
    /// full; nothing was logged.
    #[error("{message}")]
    InsufficientStorage { code: &'static str, message: String },
    /// 500: the write was logged but its fsync failed: it may or may not be present
    /// after a restart.
    #[error("{0}")]
    OutcomeUnknown(String),
    /// 500: an operation of the node failed; the message says what.
    #[error("{message}")]
    Failed { code: &'static str, message: String },
    /// 409: this node is a slave; the write belongs on the master (also in `Location`).
    #[error("this node is a slave; send writes to the master at {master_url}")]
    NotMaster { master_url: String, location: String },
    /// 409 `not_master`: a newer epoch exists and another node is master (named when
    /// known, also in `Location`); the write was not acknowledged.
    #[error("{message}")]
    Fenced { message: String, epoch: u64, master_url: Option<String>, location: Option<String> },
    /// 503 `leader_lease_lapsed`: under failover, this master could not renew its leader
    /// lease in time; the write was not acknowledged.
    #[error("{0}")]
    LeaseLapsed(String),
    /// 503 `not_committed`: a linearizable read saw state a failover could still take
    /// back, and it could not be made safe in time.
    #[error("{0}")]
    NotCommitted(String),
    /// 504: the write is durable on the master but not enough slaves confirmed it in time.
    #[error("{message}")]
    ReplicationTimeout { message: String, lsn: u64, epoch: u64, ack: &'static str, acked: usize, required: usize },
    /// 503: fewer ALIVE slaves than the acknowledgement mode needs; nothing was logged.
    #[error("{message}")]
    NotEnoughReplicas { message: String, ack: &'static str, required: usize },
    /// 409: the write a token names was lost in a failover.
    #[error("{message}")]
    WriteLost { message: String, token: String },
    /// 409 (replication): the request comes from a lower epoch than this node's.
    #[error("{message}")]
    StaleEpoch { message: String, epoch: u64, master_url: Option<String> },
    /// 307: this slave is behind the position the read asks for and `reads.on-lag` is
    /// `redirect`: the same request on the master (in `Location`).
    #[error("{message}")]
    ReadFromMaster { message: String, master_url: String, location: String },
    /// 409 (replication): the batch does not continue the slave's log.
    #[error("records must continue this node's log at LSN {expected}")]
    LsnGap { expected: u64 },
    /// 409 (replication): refused for the cluster's state; `code` says why
    /// (`wrong_role`, `diverged`, `too_many_slaves`, `not_registered`, `wrong_master`).
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// 500: logged; the client gets a generic message.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadRequest { code, message: message.into() }
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Conflict { code, message: message.into() }
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            ApiError::InvalidConfig(_) => (StatusCode::BAD_REQUEST, "invalid_config"),
            ApiError::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            ApiError::TooLarge { code, .. } => (StatusCode::PAYLOAD_TOO_LARGE, code),
            ApiError::UriTooLong(_) => (StatusCode::URI_TOO_LONG, "uri_too_long"),
            ApiError::UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            ApiError::HeadersTooLarge(_) => (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "headers_too_large"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::MarkLimit(_) => (StatusCode::CONFLICT, "mark_limit"),
            ApiError::WrongShard(_) => (StatusCode::CONFLICT, "wrong_shard"),
            ApiError::StaleOwnership(_) => (StatusCode::CONFLICT, "stale_ownership"),
            ApiError::RangeFrozen(_) => (StatusCode::SERVICE_UNAVAILABLE, "range_frozen"),
            ApiError::DrainTimeout(_) => (StatusCode::GATEWAY_TIMEOUT, "drain_timeout"),
            ApiError::Starting => (StatusCode::SERVICE_UNAVAILABLE, "starting"),
            ApiError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            ApiError::TooManyConnections(_) => (StatusCode::SERVICE_UNAVAILABLE, "too_many_connections"),
            ApiError::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            ApiError::Replacing => (StatusCode::SERVICE_UNAVAILABLE, "full_sync_in_progress"),
            ApiError::Behind(_) => (StatusCode::SERVICE_UNAVAILABLE, "lsn_not_reached"),
            ApiError::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            ApiError::WriteFailed(_) => (StatusCode::SERVICE_UNAVAILABLE, "write_failed"),
            ApiError::WritePathFailed(_) => (StatusCode::SERVICE_UNAVAILABLE, "write_path_failed"),
            ApiError::InsufficientStorage { code, .. } => (StatusCode::INSUFFICIENT_STORAGE, code),
            ApiError::OutcomeUnknown(_) => (StatusCode::INTERNAL_SERVER_ERROR, "write_outcome_unknown"),
            ApiError::Failed { code, .. } => (StatusCode::INTERNAL_SERVER_ERROR, code),
            ApiError::NotMaster { .. } => (StatusCode::CONFLICT, "not_master"),
            ApiError::Fenced { .. } => (StatusCode::CONFLICT, "not_master"),
            ApiError::LeaseLapsed(_) => (StatusCode::SERVICE_UNAVAILABLE, "leader_lease_lapsed"),
            ApiError::NotCommitted(_) => (StatusCode::SERVICE_UNAVAILABLE, "not_committed"),
            ApiError::ReplicationTimeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "replication_timeout"),
            ApiError::NotEnoughReplicas { .. } => (StatusCode::SERVICE_UNAVAILABLE, "not_enough_replicas"),
            ApiError::WriteLost { .. } => (StatusCode::CONFLICT, "write_lost"),
            ApiError::StaleEpoch { .. } => (StatusCode::CONFLICT, "stale_epoch"),
            ApiError::ReadFromMaster { .. } => (StatusCode::TEMPORARY_REDIRECT, "read_from_master"),
            ApiError::LsnGap { .. } => (StatusCode::CONFLICT, "lsn_gap"),
            ApiError::Conflict { code, .. } => (StatusCode::CONFLICT, code),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<Unavailable> for ApiError {
    fn from(e: Unavailable) -> Self {
        match e {
            Unavailable::Starting => ApiError::Starting,
            Unavailable::ShuttingDown => ApiError::ShuttingDown,
        }
    }
}

impl From<RoleError> for ApiError {
    fn from(e: RoleError) -> Self {
        let message = e.to_string();
        match e {
            RoleError::WrongRole(_) => ApiError::conflict("wrong_role", message),
            RoleError::FencingOff => ApiError::conflict("fencing_off", message),
            RoleError::Busy(_) => ApiError::Busy(message),
            RoleError::Unreachable { .. } => ApiError::Failed { code: "master_unreachable", message },
            RoleError::Storage(_) => ApiError::Failed { code: "role_change_failed", message },
        }
    }
}

impl From<RefreshError> for ApiError {
    fn from(e: RefreshError) -> Self {
        let message = e.to_string();
        match e {
            RefreshError::Invalid(problems) => ApiError::InvalidConfig(problems),
            RefreshError::Refused(_) => ApiError::conflict("wrong_role", message),
            RefreshError::Unavailable => ApiError::conflict("refresh_unavailable", message),
            RefreshError::Busy(_) => ApiError::Busy(message),
        }
    }
}

impl From<FullSyncError> for ApiError {
    fn from(e: FullSyncError) -> Self {
        let message = e.to_string();
        match e {
            FullSyncError::NotRegistered(_) => ApiError::conflict("not_registered", message),
            FullSyncError::NotNeeded(_) => ApiError::conflict("full_sync_not_needed", message),
            FullSyncError::UnknownTransfer(_) => ApiError::NotFound(message),
            FullSyncError::BadOffset { .. } => ApiError::bad_request("invalid_offset", message),
            FullSyncError::Storage(_) => ApiError::Failed { code: "full_sync_failed", message },
        }
    }
}

impl From<BackupError> for ApiError {
    fn from(e: BackupError) -> Self {
        let message = e.to_string();
        match e {
            BackupError::Unknown(_) => ApiError::NotFound(message),
            BackupError::Snapshot(snapshot) => snapshot_error(snapshot, true),
            BackupError::Storage(_) => ApiError::Failed { code: "backup_failed", message },
            BackupError::Purged { .. } => ApiError::conflict("wal_purged", message),
        }
    }
}

/// A failed snapshot as an answer. File names and paths go only to a caller that
/// presented the admin token; every failure is logged in full.
pub(crate) fn snapshot_error(e: SnapshotError, authenticated: bool) -> ApiError {
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

impl From<RegisterError> for ApiError {
    fn from(e: RegisterError) -> Self {
        match e {
            RegisterError::Invalid(message) => ApiError::bad_request("invalid_registration", message),
            diverged @ RegisterError::Diverged { .. } => ApiError::conflict("diverged", diverged.to_string()),
            many @ RegisterError::TooManySlaves { .. } => ApiError::conflict("too_many_slaves", many.to_string()),
            stopped @ RegisterError::Stopped => ApiError::conflict("wrong_role", stopped.to_string()),
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

impl From<bitark_engine::MoveError> for ApiError {
    fn from(e: bitark_engine::MoveError) -> Self {
        use bitark_engine::MoveError;
        match e {
            MoveError::NotMaster { master_url } => ApiError::NotMaster { location: master_url.clone(), master_url },
            owned @ MoveError::NotOwned { .. } => ApiError::conflict("not_an_owned_range", owned.to_string()),
            shard @ MoveError::BadShard { .. } => ApiError::bad_request("invalid_shard", shard.to_string()),
            purged @ MoveError::Purged { .. } => ApiError::conflict("log_purged", purged.to_string()),
            MoveError::Storage(message) => ApiError::Failed { code: "move_failed", message },
        }
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Invalid(invalid) => invalid.into(),
            WriteError::Overloaded => ApiError::Overloaded,
            WriteError::ShuttingDown => ApiError::ShuttingDown,
            WriteError::NoSpace(message) => ApiError::InsufficientStorage { code: "insufficient_storage", message },
            WriteError::MemoryLimit(message) => ApiError::InsufficientStorage { code: "memory_limit", message },
            WriteError::NotLogged(message) => ApiError::WriteFailed(message),
            WriteError::OutcomeUnknown(message) => ApiError::OutcomeUnknown(message),
            WriteError::Stopped(message) => ApiError::WritePathFailed(message),
            WriteError::MarkLimit(message) => ApiError::MarkLimit(message),
            WriteError::WrongShard(refused) => ApiError::WrongShard(refused),
            stale @ WriteError::StaleOwnership { .. } => ApiError::StaleOwnership(stale.to_string()),
            WriteError::RangeFrozen(frozen) => ApiError::RangeFrozen(frozen),
            owned @ WriteError::NotAnOwnedRange { .. } => ApiError::conflict("not_an_owned_range", owned.to_string()),
            WriteError::NotSharded => ApiError::conflict("not_sharded", WriteError::NotSharded.to_string()),
            owned @ WriteError::ImportOwned { .. } => ApiError::conflict("owned_user", owned.to_string()),
            owned @ WriteError::OwnedRange { .. } => ApiError::conflict("owned_range", owned.to_string()),
            WriteError::LeaseLapsed(message) => ApiError::LeaseLapsed(message),
            WriteError::NotMaster { master_url } => ApiError::NotMaster { location: master_url.clone(), master_url },
            fenced @ WriteError::Fenced { .. } => {
                let WriteError::Fenced { epoch, master_url } = &fenced else { unreachable!() };
                let (epoch, master_url) = (*epoch, master_url.clone());
                ApiError::Fenced { message: fenced.to_string(), epoch, location: master_url.clone(), master_url }
            }
            timeout @ WriteError::ReplicationTimeout { .. } => {
                let WriteError::ReplicationTimeout { lsn, epoch, ack, acked, required, .. } = &timeout else {
                    unreachable!()
                };
                ApiError::ReplicationTimeout {
                    message: timeout.to_string(),
                    lsn: *lsn,
                    epoch: *epoch,
                    ack: ack.as_str(),
                    acked: *acked,
                    required: *required,
                }
            }
            few @ WriteError::NotEnoughReplicas { .. } => {
                let WriteError::NotEnoughReplicas { ack, required, .. } = &few else { unreachable!() };
                ApiError::NotEnoughReplicas { message: few.to_string(), ack: ack.as_str(), required: *required }
            }
        }
    }
}

impl ApiError {
    /// The JSON body of this error.
    fn body(&self) -> ErrorBody {
        let (_, code) = self.status_and_code();
        let message = match self {
            ApiError::Internal(detail) => {
                tracing::error!(%detail, "internal error answered with 500");
                "internal error; see the server log".to_string()
            }
            other => other.to_string(),
        };
        let mut body = ErrorBody {
            error: code,
            message,
            master_url: None,
            expected: None,
            lsn: None,
            epoch: None,
            ack: None,
            acked: None,
            required: None,
            token: None,
            problems: None,
            map_version: None,
            group: None,
        };
        match self {
            ApiError::NotMaster { master_url, .. } => body.master_url = Some(master_url.clone()),
            ApiError::LsnGap { expected } => body.expected = Some(*expected),
            ApiError::Fenced { epoch, master_url, .. } | ApiError::StaleEpoch { epoch, master_url, .. } => {
                body.epoch = Some(*epoch);
                body.master_url = master_url.clone();
            }
            ApiError::ReplicationTimeout { lsn, epoch, ack, acked, required, .. } => {
                (body.lsn, body.epoch, body.ack) = (Some(*lsn), Some(*epoch), Some(*ack));
                (body.acked, body.required) = (Some(*acked), Some(*required));
            }
            ApiError::NotEnoughReplicas { ack, required, .. } => {
                (body.ack, body.required) = (Some(*ack), Some(*required))
            }
            ApiError::WriteLost { token, .. } => body.token = Some(token.clone()),
            ApiError::InvalidConfig(problems) => body.problems = Some(problems.clone()),
            ApiError::ReadFromMaster { master_url, .. } => body.master_url = Some(master_url.clone()),
            ApiError::WrongShard(refused) => {
                body.map_version = Some(refused.map_version);
                body.group = refused.owner.as_ref().map(|g| g.to_string());
                body.master_url = refused.owner_master.clone();
            }
            ApiError::RangeFrozen(frozen) => {
                body.map_version = Some(frozen.map_version);
                body.group = Some(frozen.group.to_string());
            }
            _ => {}
        }
        body
    }

    /// The JSON body of this error as text, for answers written outside axum.
    pub fn body_json(&self) -> String {
        serde_json::to_string(&self.body()).expect("an error body serializes")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, _) = self.status_and_code();
        let mut response = (status, Json(self.body())).into_response();
        match self {
            ApiError::NotMaster { location, .. }
            | ApiError::Fenced { location: Some(location), .. }
            | ApiError::ReadFromMaster { location, .. } => {
                if let Ok(value) = HeaderValue::from_str(&location) {
                    response.headers_mut().insert(header::LOCATION, value);
                }
            }
            ApiError::Unauthorized => {
                response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::Starting
            | ApiError::Replacing
            | ApiError::Overloaded
            | ApiError::Behind(_)
            | ApiError::NotCommitted(_)
            | ApiError::Busy(_)
            | ApiError::WriteFailed(_)
            | ApiError::NotEnoughReplicas { .. }
            | ApiError::RangeFrozen(_)
            | ApiError::InsufficientStorage { .. } => {
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}
