//! When the writer thread fsyncs, and how it publishes the durable LSN.
//!
//! Under `fsync: batch` every batch is synced before it is answered. Under `interval`
//! and `never` batches are answered first and made durable later: once
//! `fsync-interval` has passed (checked after each batch under `interval`, and whenever
//! the thread wakes idle), when asked
//! ([`WalHandle::request_sync`](crate::wal::WalHandle::request_sync),
//! [`WalHandle::sync_blocking`](crate::wal::WalHandle::sync_blocking)), and when a
//! segment is sealed. Each sync publishes the durable LSN to the handle, the
//! `bitark_lsn_durable` gauge and the [`Applier`].

use super::{Applier, Writer};
use crate::wal::health::ProposeError;
use bitark_common::Lsn;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tokio::sync::oneshot;

impl<A: Applier> Writer<A> {
    /// Fsyncs the open segment; a failure stops the log (the outcome is unknown).
    pub(super) fn sync(&mut self) -> Result<(), ProposeError> {
        let started = Instant::now();
        let result = (|| {
            fail::fail_point!("wal::before-fsync", |arg| Err(crate::error::StorageError::io(
                &self.active.path,
                super::failure::injected(arg, "wal::before-fsync")
            )));
            self.active.sync()
        })();
        if let Err(e) = result {
            return Err(self.fail(format!("fsync failed: {e}")));
        }
        self.metrics.wal_fsync_seconds.observe(started.elapsed().as_secs_f64());
        self.dirty = false;
        self.last_sync = Instant::now();
        self.publish_durable();
        Ok(())
    }

    /// Everything written so far is durable: tells the handle, the gauge and the applier.
    pub(super) fn publish_durable(&mut self) {
        self.shared.durable.store(self.pending_durable.0, Ordering::Release);
        self.metrics.lsn_durable.set(self.pending_durable.0 as i64);
        self.applier.durable(self.pending_durable);
    }

    /// Syncs if something is unsynced and `fsync-interval` has passed.
    pub(super) fn sync_if_due(&mut self) {
        if self.dirty && self.last_sync.elapsed() >= self.config.fsync_interval {
            let _ = self.sync();
        }
    }

    /// A `Sync` message: syncs what is unsynced and answers the durable LSN.
    pub(super) fn sync_now(&mut self, reply: Option<oneshot::Sender<Lsn>>) {
        self.shared.sync_queued.store(false, Ordering::Release);
        if self.dirty && !self.shared.failed.load(Ordering::Acquire) {
            let _ = self.sync();
        }
        if let Some(reply) = reply {
            if !self.shared.failed.load(Ordering::Acquire) {
                let _ = reply.send(Lsn(self.shared.durable.load(Ordering::Acquire)));
            }
        }
    }
}
