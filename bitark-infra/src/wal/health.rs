//! Whether the log takes writes ([`WalHealth`]), and what the answer to a write that
//! was not logged, or not known to be, tells its caller ([`ProposeError`]).
//!
//! The writer thread decides which answer a failure gets (see `writer/failure.rs`); the
//! handle reads the health it publishes.

use bitark_common::Lsn;

/// Why a proposal was not logged, or not known to be.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ProposeError {
    #[error("the write queue is full")]
    Overloaded,
    #[error("the write-ahead log is shut down")]
    Closed,
    /// Not logged: the disk (or quota) holding the log is full.
    #[error("{0}")]
    NoSpace(String),
    /// Not logged: writing the log failed.
    #[error("{0}")]
    Io(String),
    /// Written, but its fsync failed: it may or may not be present after a restart.
    #[error("{0}")]
    Unknown(String),
    /// The log stopped after an earlier failure; nothing more is accepted until restart.
    #[error("{0}")]
    Failed(String),
    #[error("records must continue the log at LSN {expected}, found LSN {found}")]
    Gap { expected: Lsn, found: Lsn },
    /// Not acknowledged: the node learned of a newer epoch (another master exists) and
    /// takes no more writes of its own. A record written as the fence went up stays in
    /// the log only until the node steps down and cuts its tail.
    #[error("this node no longer accepts writes: a newer epoch exists and another node is master")]
    Fenced,
    /// Not acknowledged: under failover, the master's leader lease in etcd could not be
    /// renewed in time, so another node may be master by now.
    #[error(
        "this master's leader lease in etcd was not renewed in time; it takes no writes until it is \
         (another node may be master by now)"
    )]
    LeaseLapsed,
}

/// Whether the log accepts writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalHealth {
    Healthy,
    /// The last write could not be logged (`no_space`: the disk or quota is full). The
    /// log is intact and writes are retried; they resume once the cause is gone.
    Degraded {
        reason: String,
        no_space: bool,
    },
    /// An fsync failed or the writer thread died: the node must be restarted.
    Failed {
        reason: String,
    },
}

/// The reason a log whose writer thread died gives.
pub(super) const CRASHED: &str = "the write-ahead log writer stopped unexpectedly; restart the node";
