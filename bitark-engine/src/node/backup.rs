//! Serving an online base backup: beginning one from a pinned snapshot, reading its
//! snapshot in ranges and its log as records, ending it.

use super::Node;
use crate::backup::{BackupError, BackupSession, MAX_READ};
use bitark_common::{Lsn, Record};
use bitark_infra::datadir::file_len;
use bitark_infra::fullsync::read_chunk;
use bitark_infra::snapshot::list_snapshots;
use bitark_infra::wal::{CursorRead, WalCursor};
use bitark_infra::StorageError;
use std::time::Instant;

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
        self.inner.backups.add(session.clone());
        tracing::info!(backup = id, snapshot = %lsn, end = %session.end_lsn, "backup begun");
        Ok(session)
    }

    /// The backup `id`, its pin renewed.
    fn backup(&self, id: u64) -> Result<BackupSession, BackupError> {
        let session = self.inner.backups.get(id).ok_or(BackupError::Unknown(id))?;
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
        let kept = self.inner.backups.take_cursor(id);
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
        self.inner.backups.keep_cursor(id, cursor);
        match read {
            CursorRead::Records(records) => Ok(records),
            CursorRead::Purged { oldest } => Err(BackupError::Purged { needed: from.0, oldest: oldest.0 }),
        }
    }

    /// Ends the backup `id`: the snapshot and the log after it are no longer kept for it.
    pub fn end_backup(&self, id: u64) -> Result<(), BackupError> {
        self.inner.backups.remove(id).ok_or(BackupError::Unknown(id))?;
        self.inner.state.retention.unpin(id);
        tracing::info!(backup = id, "backup ended");
        Ok(())
    }
}
