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

/// Why a write was not made durable. Each variant maps to one HTTP status.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum WriteError {
    /// The command breaks a configured limit or is malformed (400 / 413).
    #[error("{0}")]
    Invalid(#[from] InvalidCommand),
    /// The write queue is full (503, retry later).
    #[error("too many writes in flight; retry later")]
    Overloaded,
    /// The node is shutting down (503).
    #[error("the node is shutting down")]
    ShuttingDown,
    /// The log could not be written; the node refuses writes until restarted (500).
    #[error("the write-ahead log failed: {0}")]
    Storage(String),
    /// This node is a slave; writes go to its master (409).
    #[error("this node is a slave; send writes to the master at {master_url}")]
    NotMaster { master_url: String },
}

impl From<ProposeError> for WriteError {
    fn from(e: ProposeError) -> Self {
        match e {
            ProposeError::Overloaded => WriteError::Overloaded,
            ProposeError::Closed => WriteError::ShuttingDown,
            ProposeError::Failed(reason) => WriteError::Storage(reason),
            gap @ ProposeError::Gap { .. } => WriteError::Storage(gap.to_string()),
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
    /// The node is busy, shutting down or its log failed (503 / 500).
    #[error(transparent)]
    Write(#[from] WriteError),
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
    #[error("this node has applied LSN {applied}, below the requested minLsn {requested}, and did not catch up within {waited_ms} ms; read from the master")]
    Behind { requested: u64, applied: u64, waited_ms: u64 },
}
