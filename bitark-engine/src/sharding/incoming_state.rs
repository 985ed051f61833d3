//! What a node keeps of its incoming moves (see `incoming.rs`): each one's progress, its
//! stop flag and how far it has replayed the source's log.

use bitark_common::HashRange;
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::watch;

/// Where an incoming move stands.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IncomingStatus {
    /// `START..END` in hex.
    pub range: String,
    /// The source master's URL.
    pub source: String,
    /// `copy` (staging a copy), `catch-up` (replaying the source's log), `drained`
    /// (replayed through the source's freeze point: the task has ended) or `stopped`.
    pub phase: String,
    /// Commands of the copy logged here.
    pub copied: u64,
    /// Commands of the source's log replayed here.
    pub replayed: u64,
    /// The source LSN the next read of its log starts at.
    pub next_lsn: u64,
    /// The source's safe LSN at the last read.
    pub safe_lsn: u64,
    /// Times the copy started again (a source failover, or an error).
    pub restarts: u64,
    /// The last error, while the task retries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl IncomingStatus {
    /// Source records not replayed yet: how far the copy is behind.
    pub fn lag(&self) -> u64 {
        (self.safe_lsn + 1).saturating_sub(self.next_lsn)
    }
}

/// One incoming move.
pub(crate) struct Incoming {
    pub(crate) status: Mutex<IncomingStatus>,
    pub(crate) stop: AtomicBool,
    /// The next source LSN to replay, once the copy is staged (0 before).
    pub(crate) next: watch::Sender<u64>,
}

impl Incoming {
    pub(crate) fn status_source(&self) -> String {
        self.status.lock().unwrap_or_else(PoisonError::into_inner).source.clone()
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut IncomingStatus)) {
        f(&mut self.status.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

/// The incoming moves of a node, by range.
#[derive(Default)]
pub(crate) struct IncomingMoves {
    pub(crate) moves: Mutex<HashMap<HashRange, Arc<Incoming>>>,
}
