//! The refusals that several operations document alike, each an [`IntoResponses`] type
//! that `#[utoipa::path(responses(...))]` lists beside an operation's own responses, so
//! each description is written once. They only describe answers: the answers themselves
//! are [`ApiError`](super::error::ApiError)s.

use super::error::ErrorBody;
use utoipa::IntoResponses;

/// The refusals every write documents, beside its own (400, and those of its body).
#[derive(IntoResponses)]
#[allow(dead_code)] // only described in the document, never answered as such
pub(crate) enum WriteRefusals {
    #[response(
        status = 409,
        description = "`not_master`: this node is a slave, or a newer epoch has another master (with `masterUrl` and a `Location` header when known; the write was not acknowledged); `mark_limit`: the user would hold more than `limits.max-marks-per-user` marks; `wrong_shard`: the user belongs to another replication group (with `mapVersion`, and `group` and `masterUrl` of the owner when known; not logged)"
    )]
    NotMaster(ErrorBody),
    #[response(
        status = 500,
        description = "`write_outcome_unknown`: the record was written but its fsync failed; it may or may not be present after a restart"
    )]
    OutcomeUnknown(ErrorBody),
    #[response(
        status = 503,
        description = "`starting`, `shutting_down`, `overloaded`, `write_failed` (not logged; retry), `write_path_failed` (not logged; the node needs a restart), `not_enough_replicas` (fewer ALIVE slaves than `ack` needs; not logged; with `ack` and `required`), `leader_lease_lapsed` (failover: this master could not renew its leader lease in time; not acknowledged, retry), `range_frozen` (the user's range is frozen for a move: not logged, retry shortly; with `group` and `mapVersion`; a router holds such writes for the pause)"
    )]
    Unavailable(ErrorBody),
    #[response(
        status = 504,
        description = "`replication_timeout`: durable on the master (it will still replicate unless a failover to a node without it comes first; its token then answers `write_lost`), but not on enough slaves within `replication.ack-timeout`; with `lsn`, `epoch`, `ack`, `acked`, `required`"
    )]
    ReplicationTimeout(ErrorBody),
    #[response(
        status = 507,
        description = "`insufficient_storage`: the disk holding the log is full; `memory_limit`: above `limits.max-memory`. Not logged"
    )]
    InsufficientStorage(ErrorBody),
}

/// The refusal every read documents: its position cannot be read here.
#[derive(IntoResponses)]
#[allow(dead_code)] // only described in the document, never answered as such
pub(crate) enum ReadRefusals {
    #[response(
        status = 409,
        description = "`write_lost`: the write `token` names was lost in a failover; `not_master`: a leader or linearizable read (`consistency=leader` is the default on a master under failover) on a slave or a fenced master, with `masterUrl` and `Location` when known; `wrong_shard`: the user belongs to another replication group (with `mapVersion`, and `group` and `masterUrl` of the owner when known)"
    )]
    LostOrNotLeader(ErrorBody),
}

/// A read of many ids behind what it asks for: redirected, or refused in time.
#[derive(IntoResponses)]
#[allow(dead_code)] // only described in the document, never answered as such
pub(crate) enum LaggingReadRefusals {
    #[response(
        status = 307,
        description = "`read_from_master`: a slave behind `minLsn`/`token` under `reads.on-lag: redirect`"
    )]
    ReadFromMaster(ErrorBody),
    #[response(
        status = 503,
        description = "`lsn_not_reached`: minLsn not reached in time; or starting; `leader_lease_lapsed`: a leader read on a master under failover whose leader lease is not known to hold; `not_committed`: a linearizable read whose state could not be made safe from a failover in time"
    )]
    NotReached(ErrorBody),
}

/// The refusals of a request with a JSON body (its size limit is the operation's own).
#[derive(IntoResponses)]
#[allow(dead_code)] // only described in the document, never answered as such
pub(crate) enum BodyRefusals {
    #[response(
        status = 408,
        description = "`request_timeout`: the body did not arrive within `server.request-timeout`"
    )]
    RequestTimeout(ErrorBody),
    #[response(status = 415, description = "Body is not application/json")]
    UnsupportedMediaType(ErrorBody),
}
