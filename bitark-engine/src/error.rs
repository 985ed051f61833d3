//! Engine errors.

use bitark_infra::wal::writer::ProposeError;
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
        }
    }
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

/// Why a read with `minLsn` could not be answered here.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ConsistencyError {
    /// A slave that has not caught up: the master has the LSN.
    #[error("this slave has applied LSN {applied}, below the requested minLsn {requested}, and did not catch up within {waited_ms} ms; read from the master at {master_url}")]
    SlaveBehind { requested: u64, applied: u64, waited_ms: u64, master_url: String },
    /// A master whose log does not reach the LSN yet: no write was answered with it.
    #[error("this master's log ends at LSN {applied}; minLsn {requested} was not reached within {waited_ms} ms (no write has been answered with that LSN yet)")]
    NotYetWritten { requested: u64, applied: u64, waited_ms: u64 },
}
