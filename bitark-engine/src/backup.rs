//! The node's side of an online base backup (`bitark backup`).
//!
//! A backup begins from the node's newest snapshot (one is taken when there is none, or
//! when asked), and the node keeps that snapshot and the log after it (the same pin a full sync uses) while the backup reads them: the
//! snapshot in byte ranges, the log as records up to the backup's end, the durable LSN
//! when it began. Writes go on meanwhile. Each read renews the pin; a backup that stops
//! reading lets it lapse after `replication.full-sync.pin-timeout`, and one that ends
//! releases it at once.

use crate::error::SnapshotError;
use crate::node::Node;
use bitark_common::{Epoch, Lsn, Record};
use bitark_infra::datadir::file_len;
use bitark_infra::fullsync::read_chunk;
use bitark_infra::snapshot::list_snapshots;
use bitark_infra::wal::{CursorRead, WalCursor};
use bitark_infra::StorageError;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

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

impl Node {
    /// Begins a backup from the newest snapshot (a new one when `fresh`, or when there
    /// is none), kept with the log after it while the backup reads them. The log after
    /// the snapshot is what lets a restore stop at any LSN from the snapshot's to the
    /// backup's end.
    pub async fn begin_backup(&self, fresh: bool) -> Result<BackupSession, BackupError> {
        let config = self.config();
        let id = rand::random::<u64>() >> 1;
        let until = Instant::now() + config.replication.full_sync.pin_timeout;
        let dir = config.node.dir().snapshots();
        let newest = if fresh { None } else { list_snapshots(&dir)?.into_iter().max_by_key(|(lsn, _)| *lsn) };
        let (lsn, path) = match newest {
            Some((lsn, path)) => {
                // Pinned at once: garbage collection keeps it from now on.
                self.inner.state.retention.pin(id, lsn, until);
                (lsn, path)
            }
            None => {
                let taken = self.snapshot_now().await?;
                self.inner.state.retention.pin(id, taken.lsn, until);
                (taken.lsn, taken.path)
            }
        };
        let size = match file_len(path.as_path()) {
            Ok(size) => size,
            Err(e) => {
                self.inner.state.retention.unpin(id);
                return Err(e.into());
            }
        };
        let session = BackupSession {
            id,
            snapshot: path,
            snapshot_lsn: lsn,
            snapshot_size: size,
            end_lsn: self.durable_lsn().max(lsn),
            epoch: self.epoch(),
            node_id: config.node.id.clone(),
        };
        self.inner.backups.sessions.lock().unwrap_or_else(PoisonError::into_inner).insert(id, session.clone());
        tracing::info!(backup = id, snapshot = %lsn, end = %session.end_lsn, "backup begun");
        Ok(session)
    }

    /// The backup `id`, its pin renewed.
    fn backup(&self, id: u64) -> Result<BackupSession, BackupError> {
        let session = self.inner.backups.sessions.lock().unwrap_or_else(PoisonError::into_inner).get(&id).cloned();
        let session = session.ok_or(BackupError::Unknown(id))?;
        let until = Instant::now() + self.config().replication.full_sync.pin_timeout;
        self.inner.state.retention.pin(id, session.snapshot_lsn, until);
        Ok(session)
    }

    /// Up to `len` bytes (at most [`MAX_READ`]) of the backup's snapshot from `offset`.
    pub fn backup_snapshot_bytes(&self, id: u64, offset: u64, len: usize) -> Result<Vec<u8>, BackupError> {
        let session = self.backup(id)?;
        let want = len.min(MAX_READ).min(session.snapshot_size.saturating_sub(offset) as usize);
        if want == 0 {
            // Past the end (or asked for nothing): no seek, which fails past i64::MAX.
            return Ok(Vec::new());
        }
        let bytes = read_chunk(&session.snapshot, offset, want)?;
        if bytes.len() < want {
            let reason = format!("{want} bytes wanted, the file ends after {}", bytes.len());
            return Err(StorageError::corruption(&session.snapshot, offset + bytes.len() as u64, reason).into());
        }
        Ok(bytes)
    }

    /// The backup's records from `from`, no further than its end, about [`MAX_READ`]
    /// bytes at most; none once `from` is past the end.
    pub async fn backup_records(&self, id: u64, from: Lsn) -> Result<Vec<Record>, BackupError> {
        let session = self.backup(id)?;
        if from > session.end_lsn {
            return Ok(Vec::new());
        }
        let wal_dir = self.config().node.dir().wal();
        let kept = self.inner.backups.cursors.lock().unwrap_or_else(PoisonError::into_inner).remove(&id);
        let mut cursor = kept.filter(|c| c.next_lsn() == from).unwrap_or_else(|| WalCursor::new(&wal_dir, from));
        let (cursor, read) = tokio::task::spawn_blocking(move || {
            // Tests stop the node here, in the middle of a backup.
            fail::fail_point!("backup::before-wal-read");
            let read = cursor.read(usize::MAX, MAX_READ, session.end_lsn);
            (cursor, read)
        })
        .await
        .map_err(|e| StorageError::io("wal", std::io::Error::other(e.to_string())))?;
        let read = read?;
        if self.inner.backups.sessions.lock().unwrap_or_else(PoisonError::into_inner).contains_key(&id) {
            self.inner.backups.cursors.lock().unwrap_or_else(PoisonError::into_inner).insert(id, cursor);
        }
        match read {
            CursorRead::Records(records) => Ok(records),
            CursorRead::Purged { oldest } => Err(BackupError::Purged { needed: from.0, oldest: oldest.0 }),
        }
    }

    /// Ends the backup `id`: the snapshot and the log after it are no longer kept for it.
    pub fn end_backup(&self, id: u64) -> Result<(), BackupError> {
        self.inner.backups.cursors.lock().unwrap_or_else(PoisonError::into_inner).remove(&id);
        let removed = self.inner.backups.sessions.lock().unwrap_or_else(PoisonError::into_inner).remove(&id);
        removed.ok_or(BackupError::Unknown(id))?;
        self.inner.state.retention.unpin(id);
        tracing::info!(backup = id, "backup ended");
        Ok(())
    }
}
