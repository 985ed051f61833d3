//! Stage 5's bookkeeping on the master: the full-sync transfers running, the slaves
//! queued for a slot, and the checksums of snapshots already served. Plain data behind
//! one lock; what moves a transfer along is in [`super::full_sync`].

use bitark_common::replication::SnapshotRef;
use bitark_common::Lsn;
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

/// The transfers and the queue. A std `Mutex`: taken briefly, never across an await.
#[derive(Default)]
pub(crate) struct FullSyncServer {
    inner: Mutex<Transfers>,
}

#[derive(Default)]
pub(crate) struct Transfers {
    pub(crate) next_id: u64,
    /// Running transfers by id.
    pub(crate) running: HashMap<u64, Transfer>,
    /// Slaves waiting for a slot, first in line first.
    pub(crate) queue: VecDeque<String>,
    /// Slaves granted a slot whose snapshot is being chosen or checksummed, with the
    /// transfer id reserved for them: they count against `max-concurrent` already.
    pub(crate) starting: HashMap<String, u64>,
    /// crc32 of snapshots already served, by (LSN, size).
    pub(crate) checksums: HashMap<(u64, u64), u32>,
}

pub(crate) struct Transfer {
    pub(crate) slave: String,
    pub(crate) session: String,
    pub(crate) path: PathBuf,
    pub(crate) snapshot: SnapshotRef,
    /// The chunk size offered ([`chunk_size`]).
    pub(crate) chunk_size: u64,
    /// The offset of the first chunk asked for (a resumed download starts past 0): the
    /// bandwidth cap paces the chunks by their offset from it, so a chunk fetched again
    /// costs no extra time.
    pub(crate) first_offset: Option<u64>,
    pub(crate) started: Instant,
    pub(crate) last_progress: Instant,
    /// Set once the slave installed the snapshot: it is being caught up from the WAL up
    /// to this LSN, and the pin follows its acknowledgements.
    pub(crate) catching_up_to: Option<Lsn>,
}

impl FullSyncServer {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Transfers> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
