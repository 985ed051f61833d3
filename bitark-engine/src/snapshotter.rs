//! The background snapshotter.
//!
//! A fuzzy snapshot: it notes the applied LSN `L`, then copies one shard at a time under
//! that shard's read lock while writes go on. Each shard is captured at some LSN at or
//! above `L`; since every command only sets or clears bits, replaying the log after `L`
//! over that state yields exactly the state at the end of the log. So recovery loads the
//! snapshot and replays from `L`.
//!
//! A snapshot may hold the effect of any record applied before its last shard was
//! copied. Under `fsync: interval | never` records are applied before they are durable,
//! and a crash could take them back while the snapshot kept them. So a snapshot is only
//! moved into place once every record it may hold is durable: the snapshotter asks the
//! log for an fsync up to the applied LSN seen after the last shard.
//!
//! After a snapshot: snapshots beyond `snapshot.keep` are deleted, and WAL segments
//! wholly below the oldest kept snapshot are purged. Keeping the log back to the older
//! snapshot is what lets recovery fall back to it.

use crate::config::LiveConfig;
use crate::error::SnapshotError;
use crate::snapshot_requests::Request;
use crate::state::State;
use bitark_common::{Epoch, Lsn};
use bitark_infra::snapshot::{list_snapshots, remove_old_snapshots, SnapshotInfo, SnapshotWriter};
use bitark_infra::wal::{list_segments, purge_to, WalHandle};
use bitark_infra::StorageError;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) struct Snapshotter {
    pub state: Arc<State>,
    /// Read at every decision: `snapshot.*` is reloadable.
    pub config: LiveConfig,
    pub wal: WalHandle,
    pub wal_dir: PathBuf,
    pub snapshot_dir: PathBuf,
    /// The epoch a snapshot header names when the history does not cover its LSN.
    pub epoch: Epoch,
    pub last: Option<SnapshotInfo>,
    pub last_at: Instant,
}

impl Snapshotter {
    pub fn run(mut self, rx: Receiver<Request>) {
        loop {
            let policy = self.config.load().snapshot.clone();
            let tick =
                if policy.every.is_zero() { Duration::from_secs(60) } else { policy.every.min(Duration::from_secs(1)) };
            match rx.recv_timeout(tick) {
                Ok(Request::Nudge) => {
                    let since = self.state.since_snapshot.load(Ordering::Relaxed);
                    if policy.every_records > 0 && since >= policy.every_records {
                        self.take_logged();
                    }
                }
                Ok(Request::Now(reply)) => {
                    let _ = reply.send(self.take());
                }
                Ok(Request::Collect) => {
                    if let Err(e) = self.collect_garbage() {
                        tracing::error!(error = %e, "WAL garbage collection failed");
                    }
                }
                Ok(Request::Replaced(info)) => {
                    self.last = info;
                    self.last_at = Instant::now();
                }
                Ok(Request::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => {
                    let due = !policy.every.is_zero() && self.last_at.elapsed() >= policy.every;
                    if due && self.state.applied_lsn() > self.last_lsn() {
                        self.take_logged();
                    }
                }
            }
        }
    }

    fn last_lsn(&self) -> Lsn {
        self.last.as_ref().map(|s| s.lsn).unwrap_or(Lsn::ZERO)
    }

    fn take_logged(&mut self) {
        if let Err(e) = self.take() {
            tracing::error!(error = %e, "snapshot failed; the log keeps growing until one succeeds");
        }
    }

    /// Takes a snapshot unless the newest one already covers the applied LSN.
    fn take(&mut self) -> Result<SnapshotInfo, SnapshotError> {
        let lsn = self.state.applied_lsn();
        self.last_at = Instant::now();
        if let Some(last) = self.last.as_ref().filter(|s| s.lsn == lsn && s.path.exists()) {
            return Ok(last.clone());
        }
        let started = Instant::now();
        self.state.since_snapshot.store(0, Ordering::Relaxed);
        let metrics = &self.state.metrics;
        match self.write(lsn) {
            Ok(info) => {
                let elapsed = started.elapsed();
                metrics.snapshot_duration_seconds.observe(elapsed.as_secs_f64());
                metrics.snapshot_size_bytes.set(info.size as i64);
                metrics.snapshot_last_lsn.set(info.lsn.0 as i64);
                metrics.snapshots.with_label_values(&["ok"]).inc();
                tracing::info!(
                    lsn = %info.lsn, users = info.users, marks = info.marks, bytes = info.size,
                    ms = elapsed.as_millis() as u64, "snapshot written"
                );
                self.last = Some(info.clone());
                self.collect_garbage()?;
                Ok(info)
            }
            Err(e) => {
                metrics.snapshots.with_label_values(&["error"]).inc();
                Err(e)
            }
        }
    }

    fn write(&self, lsn: Lsn) -> Result<SnapshotInfo, SnapshotError> {
        // A full sync replacing the whole state waits for this snapshot, and vice versa.
        let _replacing = self.state.replacing.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Read again under the lock: a full sync may have replaced the state since the
        // caller looked, and the snapshot must be named after the state it holds.
        let lsn = lsn.max(self.state.applied_lsn());
        let store = &self.state.store;
        let mut writer =
            SnapshotWriter::create(&self.snapshot_dir, lsn, self.state.history().epoch_at(lsn).unwrap_or(self.epoch))?;
        // Users are encoded under their shard's read lock, a few at a time (see
        // `ReadStore::walk_shard`); the disk writes come after each shard, with no lock.
        let mut chunks = Vec::new();
        for shard in 0..store.shard_count() {
            chunks.clear();
            let shard_users = store.encode_shard(shard, &mut chunks);
            for chunk in &chunks {
                if let Err(e) = writer.add_chunk(shard as u32, chunk.users, chunk.marks, shard_users, &chunk.body) {
                    writer.abandon();
                    return Err(e.into());
                }
            }
        }
        // The ownership last: any record the users above reflect is applied, so it is
        // at least as new as theirs (a replay past the snapshot sets it again in order).
        if let Some(meta) = store.encode_meta() {
            if let Err(e) = writer.add_meta(&meta) {
                writer.abandon();
                return Err(e.into());
            }
        }
        // Every record the snapshot may hold is at or below what is applied now.
        let covered = self.state.applied_lsn();
        if *self.state.durable.borrow() < covered {
            match self.wal.sync_blocking() {
                Ok(durable) if durable >= covered => {}
                Ok(durable) => {
                    writer.abandon();
                    return Err(SnapshotError::NotDurable { needed: covered.0, durable: durable.0 });
                }
                Err(e) => {
                    writer.abandon();
                    return Err(SnapshotError::NotDurable { needed: covered.0, durable: self.wal.durable_lsn().0 })
                        .inspect_err(|_| tracing::error!(error = %e, "cannot make the log durable for a snapshot"));
                }
            }
        }
        Ok(writer.finish()?)
    }

    /// Deletes snapshots beyond `snapshot.keep` and the WAL below the oldest kept one,
    /// except what others hold (see [`crate::state::Retention`]): snapshots being sent to
    /// slaves, the WAL after them, and the WAL live slaves still need.
    fn collect_garbage(&self) -> Result<(), StorageError> {
        let retention = &self.state.retention;
        remove_old_snapshots(&self.snapshot_dir, self.config.load().snapshot.keep, &retention.pinned_snapshots())?;
        let oldest = list_snapshots(&self.snapshot_dir)?.first().map(|(lsn, _)| *lsn).unwrap_or(Lsn::ZERO);
        let horizon = retention.wal_floor().map_or(oldest, |floor| floor.min(oldest));
        let deleted = purge_to(&self.wal_dir, horizon)?;
        let metrics = &self.state.metrics;
        metrics.wal_segments_deleted.inc_by(deleted as u64);
        metrics.wal_segments.set(list_segments(&self.wal_dir)?.len() as i64);
        if deleted > 0 {
            tracing::info!(deleted, %horizon, "WAL segments garbage-collected");
        }
        Ok(())
    }
}
