//! Moving the log to its next segment, and replacing the whole log.
//!
//! The next segment is prepared (preallocated) ahead of time as a spare, so rotation
//! only seals the full segment, renames the spare into place and fsyncs the directory;
//! a full disk then shows up while preparing a spare, not in the middle of a batch. A
//! rotation that fails without harm to the log is postponed by `wal.retry-interval`, and
//! records go on into the current segment meanwhile.
//!
//! `reset` closes every segment, lets its caller replace the log's files, and starts an
//! empty log at a given LSN (a slave installing a full sync, or cutting its log back
//! when it steps down).

use super::{Applier, Writer};
use crate::error::StorageError;
use crate::fsutil::fsync_dir_file;
use crate::wal::active::{ActiveSegment, Spare};
use crate::wal::handle::ResetWork;
use crate::wal::health::WalHealth;
use crate::wal::segment::segment_name;
use bitark_common::Lsn;
use std::sync::atomic::Ordering;
use std::time::Instant;

impl<A: Applier> Writer<A> {
    pub(super) fn reset(&mut self, next: Lsn, work: ResetWork) -> Result<(), StorageError> {
        if let Err(e) = self.active.seal() {
            self.fail(format!("closing the WAL for a reset failed: {e}"));
            return Err(e);
        }
        // The spare is recreated below; its file may be deleted by `work` meanwhile.
        self.spare = None;
        let result = work().and_then(|()| {
            let segment_size = self.config.segment_size.as_u64();
            self.active = ActiveSegment::open(&self.dir, next, segment_size)?;
            Ok(())
        });
        if let Err(e) = result {
            self.fail(format!("replacing the WAL failed: {e}"));
            return Err(e);
        }
        self.next_lsn = next;
        self.pending_durable = Lsn(next.0 - 1);
        self.dirty = false;
        self.probe = None;
        self.rotation_retry_at = None;
        self.shared.durable.store(next.0 - 1, Ordering::Release);
        self.metrics.lsn_durable.set(next.0 as i64 - 1);
        self.metrics.wal_segments.set(1);
        self.shared.set_health(WalHealth::Healthy, &self.metrics);
        self.prepare_spare();
        tracing::info!(next = %next, "WAL replaced; continuing from an empty log");
        Ok(())
    }

    pub(super) fn rotation_due(&self) -> bool {
        self.rotation_retry_at.is_none_or(|at| Instant::now() >= at)
    }

    /// Closes the full segment and continues in the spare. A failure that leaves the
    /// log intact only postpones rotation: records go on into the current segment.
    pub(super) fn rotate(&mut self) {
        if self.spare.is_none() {
            self.prepare_spare();
        }
        let Some(mut spare) = self.spare.take() else {
            self.rotation_retry_at = Some(Instant::now() + self.config.retry_interval);
            return;
        };
        if let Err(e) = self.active.seal() {
            self.fail(format!("closing a full WAL segment failed: {e}"));
            return;
        }
        self.dirty = false;
        self.publish_durable();
        let target = self.dir.join(segment_name(self.next_lsn));
        if let Err(e) = spare.promote(&target) {
            tracing::warn!(error = %e, "cannot start the next WAL segment; continuing in the current one");
            self.spare = Some(spare);
            self.rotation_retry_at = Some(Instant::now() + self.config.retry_interval);
            return;
        }
        if let Err(e) = fsync_dir_file(&self.dir_file, &self.dir) {
            self.fail(format!("making a new WAL segment durable failed: {e}"));
            return;
        }
        self.active.replace_with(spare, target);
        self.rotation_retry_at = None;
        self.metrics.wal_segments.inc();
        tracing::debug!(segment = %self.active.path.display(), "started WAL segment");
        self.prepare_spare();
    }

    pub(super) fn prepare_spare(&mut self) {
        match Spare::create(&self.dir, self.config.segment_size.as_u64()) {
            Ok(spare) => {
                if self.spare_failing {
                    tracing::info!("the next WAL segment is prepared again");
                }
                self.spare = Some(spare);
                self.spare_failing = false;
            }
            // Retried every `retry-interval`: warn once per episode.
            Err(e) if !self.spare_failing => {
                tracing::warn!(error = %e, "cannot prepare the next WAL segment yet; will retry");
                self.spare_failing = true;
            }
            Err(e) => tracing::debug!(error = %e, "still cannot prepare the next WAL segment"),
        }
    }
}
