//! The node's side of an online base backup (`bitark backup`).
//!
//! A backup begins from the node's newest snapshot (one is taken when there is none, or
//! when asked), and the node keeps that snapshot and the log after it (the same pin a full sync uses) while the backup reads them: the
//! snapshot in byte ranges, the log as records up to the backup's end, the durable LSN
//! when it began. Writes go on meanwhile. Each read renews the pin; a backup that stops
//! reading lets it lapse after `replication.full-sync.pin-timeout`, and one that ends
//! releases it at once.

use crate::error::SnapshotError;
use bitark_common::{Epoch, Lsn};
use bitark_infra::wal::WalCursor;
use bitark_infra::StorageError;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Most bytes one read of a backup answers.
pub const MAX_READ: usize = 8 << 20;

/// A backup the node is serving.
#[derive(Clone, Debug)]
pub struct BackupSession {
    pub id: u64,
    /// The snapshot it starts from.
    pub snapshot: PathBuf,
    pub snapshot_lsn: Lsn,
    pub snapshot_size: u64,
    /// The backup holds every record up to here.
    pub end_lsn: Lsn,
    /// The epoch of the node when the backup began.
    pub epoch: Epoch,
    pub node_id: String,
}

/// The backups a node serves now.
#[derive(Default)]
pub(crate) struct Backups {
    sessions: Mutex<HashMap<u64, BackupSession>>,
    /// Each backup's log cursor where its last read stopped, so that the next read
    /// (which asks for the LSN after it) starts there instead of scanning its segment
    /// from the start again.
    cursors: Mutex<HashMap<u64, WalCursor>>,
}

impl Backups {
    fn sessions(&self) -> MutexGuard<'_, HashMap<u64, BackupSession>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn cursors(&self) -> MutexGuard<'_, HashMap<u64, WalCursor>> {
        self.cursors.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn add(&self, session: BackupSession) {
        self.sessions().insert(session.id, session);
    }

    pub fn get(&self, id: u64) -> Option<BackupSession> {
        self.sessions().get(&id).cloned()
    }

    /// Removes the backup `id` and its cursor; answers the session if it ran.
    pub fn remove(&self, id: u64) -> Option<BackupSession> {
        self.cursors().remove(&id);
        self.sessions().remove(&id)
    }

    /// The cursor where the last read of `id` stopped, if one is kept.
    pub fn take_cursor(&self, id: u64) -> Option<WalCursor> {
        self.cursors().remove(&id)
    }

    /// Keeps `cursor` for the next read of `id`, unless the backup ended meanwhile.
    pub fn keep_cursor(&self, id: u64, cursor: WalCursor) {
        if self.sessions().contains_key(&id) {
            self.cursors().insert(id, cursor);
        }
    }
}

/// Why a backup read failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// No backup with this id runs (404).
    #[error("no backup {0} runs on this node (it ended, or its pin lapsed)")]
    Unknown(u64),
    /// The snapshot could not be taken.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// Reading the node's files failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The log the backup needs is gone (it lapsed and was collected).
    #[error("the log from LSN {needed} is gone (the oldest on disk is {oldest}); start the backup again")]
    Purged { needed: u64, oldest: u64 },
}
