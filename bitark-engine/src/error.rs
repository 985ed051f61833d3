//! Engine errors.

use crate::config::AckMode;
use bitark_infra::wal::ProposeError;
use bitark_infra::StorageError;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Why a write was not made durable. Each variant maps to one HTTP status; every one
/// says whether the write is in the log.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum WriteError {
    /// The command breaks a configured limit or is malformed (400 / 413). Not logged.
    #[error("{0}")]
    Invalid(#[from] InvalidCommand),
    /// The write queue is full (503, retry later). Not logged.
    #[error("too many writes in flight; retry later")]
    Overloaded,
    /// The node is shutting down (503). Not logged.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// The disk holding the log is full (507). Not logged; writes resume once space is
    /// freed.
    #[error("{0}")]
    NoSpace(String),
    /// Writing the log failed (503). Not logged; the log retries.
    #[error("{0}")]
    NotLogged(String),
    /// The log was written but its fsync failed (500): the write may or may not be
    /// present after a restart. The node refuses writes until restarted.
    #[error("{0}")]
    OutcomeUnknown(String),
    /// The log stopped after an earlier failure (503). Not logged; restart the node.
    #[error("{0}")]
    Stopped(String),
    /// The process is above `limits.max-memory` (507). Not logged.
    #[error("{0}")]
    MemoryLimit(String),
    /// The user would hold more than `limits.max-marks-per-user` marks (409). Not logged.
    #[error("{0}")]
    MarkLimit(String),
    /// This node is a slave; writes go to its master (409).
    #[error("this node is a slave; send writes to the master at {master_url}")]
    NotMaster { master_url: String },
    /// A newer epoch exists: another node is master and this one takes no writes (409
    /// `not_master`). Not acknowledged; a record written as the fence went up is cut
    /// when the node steps down.
    #[error("epoch {epoch} exists, newer than this node's: another node is master{}; this write was not acknowledged", master_url.as_deref().map(|u| format!(" at {u}")).unwrap_or_default())]
    Fenced { epoch: u64, master_url: Option<String> },
    /// Under failover: the master's leader lease could not be renewed in time (503
    /// `leader_lease_lapsed`). Not acknowledged; retry, at this node once it renews or at
    /// the new master.
    #[error("{0}")]
    LeaseLapsed(String),
    /// The record is durable on the master, but not enough slaves confirmed it within
    /// `replication.ack-timeout` (504 `replication_timeout`); it still replicates.
    #[error("LSN {lsn} is durable on the master, but only {acked} of the {required} slave acknowledgements that ack={} needs arrived within {timeout_ms} ms; it will still replicate", ack.as_str())]
    ReplicationTimeout { lsn: u64, epoch: u64, ack: AckMode, acked: usize, required: usize, timeout_ms: u64 },
    /// Fewer ALIVE slaves than the acknowledgement mode needs (503 `not_enough_replicas`).
    /// Not logged.
    #[error("ack={} needs {required} ALIVE slaves, this master has {alive}; the write was not logged", ack.as_str())]
    NotEnoughReplicas { ack: AckMode, alive: usize, required: usize },
    /// The user is outside the ranges this node's group serves (409 `wrong_shard`). Not
    /// logged.
    #[error("{0}")]
    WrongShard(#[from] WrongShard),
    /// An ownership of an older shard map version than the one in force (409). Not
    /// logged.
    #[error("this group serves shard map version {now} already; version {given} is older and was not logged")]
    StaleOwnership { now: u64, given: u64 },
    /// The user's range is frozen for a move (503 `range_frozen`, retry). Not logged.
    #[error("{0}")]
    RangeFrozen(#[from] RangeFrozen),
    /// A freeze or thaw of a range this group does not own as one range (409
    /// `not_an_owned_range`). Not logged.
    #[error("{range} is not one of the ranges group {group} owns at shard map version {map_version}; freezes name a whole owned range")]
    NotAnOwnedRange { range: bitark_common::HashRange, group: bitark_common::GroupId, map_version: u64 },
    /// A freeze or thaw on a node whose log holds no ownership (409 `not_sharded`). Not
    /// logged.
    #[error("this node's log holds no shard ownership, so it has no range to freeze")]
    NotSharded,
    /// A move's copy of a user this group owns (409 `owned_user`): a copy goes only to
    /// a range the group does not serve yet. Nothing of the batch is logged.
    #[error("user {user} is in a range group {group} owns; a move copies only users of a range it does not own yet")]
    ImportOwned { user: u64, group: bitark_common::GroupId },
    /// A removal of users of a range this group owns (409 `owned_range`). Not logged.
    #[error("{range} overlaps a range group {group} owns; only a range it does not own can be dropped")]
    OwnedRange { range: bitark_common::HashRange, group: bitark_common::GroupId },
}

/// Why a source could not answer for a range it moves.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum MoveError {
    /// This node is a slave (409 `not_master`): the group's master answers.
    #[error("this node is a slave; ask the master at {master_url}")]
    NotMaster { master_url: String },
    /// The range is not inside one range this group owns (409 `not_an_owned_range`).
    #[error("{range} is not inside a range this group owns; a move's source answers only for its own")]
    NotOwned { range: bitark_common::HashRange },
    /// No such shard of the store (400 `invalid_shard`).
    #[error("shard {shard} does not exist: the store has shards 0 to {}", count - 1)]
    BadShard { shard: usize, count: usize },
    /// The log from `needed` on is gone (410 `log_purged`): the copy starts again.
    #[error("the log from LSN {needed} is gone (the oldest kept is {oldest}); start the copy again")]
    Purged { needed: u64, oldest: u64 },
    /// The log could not be read (500).
    #[error("{0}")]
    Storage(String),
}

/// A write to a user whose range is frozen for a move (503 `range_frozen`): reads of it
/// are still served, writes wait for the move's cutover to end, here (after an abort)
/// or at the range's next owner.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error(
    "user {user} is in range {range} of group {group}, frozen for a move (shard map version {map_version}); \
     the write was not logged: retry shortly, through a router, which holds such writes for the pause"
)]
pub struct RangeFrozen {
    pub user: u64,
    pub group: bitark_common::GroupId,
    pub range: bitark_common::HashRange,
    pub map_version: u64,
}

/// A user this node's group does not serve, by the ownership its log last set (409
/// `wrong_shard`, for reads and writes alike). The owner is named from the shard
/// directory when this node has read one.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error(
    "user {user} is not served by group {group} (shard map version {map_version}){}",
    match (owner, owner_master) {
        (Some(o), Some(url)) => format!("; it belongs to group {o}, whose master is at {url}"),
        (Some(o), None) => format!("; it belongs to group {o}"),
        _ => String::new(),
    }
)]
pub struct WrongShard {
    pub user: u64,
    pub group: bitark_common::GroupId,
    /// The newest shard map version this node knows: its ownership's, or the
    /// directory's when that is newer.
    pub map_version: u64,
    /// The group that owns the user, by the directory.
    pub owner: Option<bitark_common::GroupId>,
    /// That group's master, by the directory.
    pub owner_master: Option<String>,
}

impl From<ProposeError> for WriteError {
    fn from(e: ProposeError) -> Self {
        match e {
            ProposeError::Overloaded => WriteError::Overloaded,
            ProposeError::Closed => WriteError::ShuttingDown,
            ProposeError::NoSpace(reason) => WriteError::NoSpace(reason),
            ProposeError::Io(reason) => WriteError::NotLogged(reason),
            ProposeError::Unknown(reason) => WriteError::OutcomeUnknown(reason),
            ProposeError::Failed(reason) => {
                WriteError::Stopped(format!("{reason}; this write was refused and not logged"))
            }
            gap @ ProposeError::Gap { .. } => WriteError::NotLogged(gap.to_string()),
            // The node's own view of the newer epoch is filled in by `Node::write`.
            ProposeError::Fenced => WriteError::Fenced { epoch: 0, master_url: None },
            lapsed @ ProposeError::LeaseLapsed => {
                WriteError::LeaseLapsed(format!("{lapsed}; this write was not acknowledged"))
            }
        }
    }
}

/// Why a promotion or step-down was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    /// The node is not in the role the operation starts from (409 `wrong_role`).
    #[error("{0}")]
    WrongRole(String),
    /// Fencing is off: roles change only with the config and a restart (409).
    #[error(
        "replication.features.fencing is off: epochs are not kept, so roles change only through config and a restart"
    )]
    FencingOff,
    /// The node is in the middle of something that must finish first (409 `busy`).
    #[error("{0}")]
    Busy(String),
    /// The new master could not be asked where this node's epoch ended (502).
    #[error("cannot reach the new master at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// Writing the epoch file or cutting the log failed (500).
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Why a change of the replication flags in force is refused.
#[derive(Debug, thiserror::Error)]
pub enum FeaturesError {
    /// A flag is on without one that comes before it in the rollout.
    #[error("`{flag}` needs `{missing}` (rollout order: {order})")]
    OutOfOrder { flag: &'static str, missing: &'static str, order: String },
    #[error("`failover` changes only with the configuration and a restart")]
    Failover,
    /// `replication.ack` is `semi` or `all`, which the new flags cannot serve.
    #[error("replication.ack is `{0}`, which needs `ack-modes`; change the configuration first")]
    AckNeedsAckModes(&'static str),
    #[error("a slave needs replication on (`notify`)")]
    SlaveNeedsNotify,
    /// Writing `epoch.bin` for fencing turned on failed.
    #[error("{0}")]
    EpochFile(#[from] StorageError),
}

/// Why a batch from the master was not logged.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ReplicateError {
    /// The batch does not continue the log: records from `expected` on are needed (409).
    #[error("records must continue this node's log at LSN {expected}")]
    Gap { expected: u64 },
    /// This node is not a slave (409).
    #[error("this node is not a slave")]
    NotSlave,
    /// A record of the batch breaks what the public API would refuse (400); nothing of
    /// the batch was logged.
    #[error("record LSN {lsn}: {reason}")]
    InvalidRecord { lsn: u64, reason: String },
    /// The node is busy, shutting down or its log failed (503 / 500).
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// Why a snapshot requested through `POST /admin/snapshot` was not taken.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    /// A snapshot request is already queued (503).
    #[error("a snapshot request is already queued; retry later")]
    Busy,
    /// The node is shutting down (503).
    #[error("the node is shutting down")]
    ShuttingDown,
    /// Writing it failed (507 when the disk is full, else 500). `detail` names the file,
    /// for logs and callers that presented the admin token; `summary` does not.
    #[error("{detail}")]
    Storage { summary: String, detail: String, no_space: bool },
    /// The log could not be made durable up to what the snapshot holds (500).
    #[error("the snapshot would hold records up to LSN {needed}, but the log is durable only up to LSN {durable}")]
    NotDurable { needed: u64, durable: u64 },
}

impl From<StorageError> for SnapshotError {
    fn from(e: StorageError) -> Self {
        let (summary, no_space) = match &e {
            StorageError::Io { source, .. } => (
                format!("snapshot failed: I/O error: {source}"),
                matches!(source.raw_os_error(), Some(28) | Some(122)), // ENOSPC, EDQUOT
            ),
            StorageError::Corruption { reason, .. } => (format!("snapshot failed: {reason}"), false),
            StorageError::Closed => ("snapshot failed: the node is shutting down".into(), false),
        };
        SnapshotError::Storage { summary, detail: format!("snapshot failed: {e}"), no_space }
    }
}

/// A command that breaks a limit or makes no sense.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum InvalidCommand {
    #[error("batch of {len} message ids exceeds the limit of {max} (limits.max-batch)")]
    BatchTooLarge { len: usize, max: usize },
    #[error("batch is empty")]
    EmptyBatch,
    #[error("range start {from} is after its end {to}")]
    InvertedRange { from: u64, to: u64 },
    #[error("range {from}..={to} spans more than {max} ids (limits.max-range)")]
    RangeTooLarge { from: u64, to: u64, max: u64 },
}

impl InvalidCommand {
    /// True for size limits (413) as opposed to malformed input (400).
    pub fn is_too_large(&self) -> bool {
        matches!(self, InvalidCommand::BatchTooLarge { .. } | InvalidCommand::RangeTooLarge { .. })
    }
}

/// Why a read asking for `consistency=leader` could not be answered here.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LeaderReadError {
    /// This node is not the master (a slave, or a master fenced by a newer epoch); the
    /// master is named when known (409 `not_master`).
    #[error("this node is not the master{}: a leader read is answered by the master only (or read with consistency=local)", master_url.as_ref().map_or(String::new(), |u| format!("; the master is {u}")))]
    NotLeader { epoch: u64, master_url: Option<String> },
    /// Under failover, this master's leader lease is not known to hold: a newer master may
    /// have been elected (503 `leader_lease_lapsed`).
    #[error("this master could not renew its leader lease in etcd in time, so a newer master may already serve writes: a leader read is not answered (retry, or read with consistency=local for a possibly stale answer)")]
    LeaseLapsed,
    /// A linearizable read saw state a failover could still take back, and it could not
    /// be made safe in time (503 `not_committed`).
    #[error("the state this read saw (up to LSN {lsn}) could not be made safe from a failover: {why}; the read is not answered (retry)")]
    Uncommitted { lsn: u64, why: String },
}

/// Why a read with `minLsn` or `token` could not be answered here.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ConsistencyError {
    /// The token names a write that this node's epoch history does not hold: it was
    /// lost in a failover (409 `write_lost`).
    #[error("write {token} was lost: LSN {lsn} belongs to epoch {owner} here, not to epoch {epoch} (the write was not on the node that became master)")]
    WriteLost { token: String, lsn: u64, epoch: u64, owner: u64 },
    /// The token names an epoch newer than any this node knows (503 `lsn_not_reached`).
    #[error("write {token} is of epoch {epoch}, but this node knows epochs up to {known} only: it has not caught up with the master of that epoch{}", if master_url.is_empty() { String::new() } else { format!("; read from the master at {master_url}") })]
    EpochAhead { token: String, epoch: u64, known: u64, master_url: String },
    /// A slave that has not caught up: the master has the LSN.
    #[error("this slave has applied LSN {applied}, below the requested minLsn {requested}, and did not catch up within {waited_ms} ms; read from the master at {master_url}")]
    SlaveBehind { requested: u64, applied: u64, waited_ms: u64, master_url: String },
    /// A master whose log does not reach the LSN yet: no write was answered with it.
    #[error("this master's log ends at LSN {applied}; minLsn {requested} was not reached within {waited_ms} ms (no write has been answered with that LSN yet)")]
    NotYetWritten { requested: u64, applied: u64, waited_ms: u64 },
}
