//! [`State`]: what the writer thread, the snapshotter, the replication hub and readers
//! share about one node.

use crate::replication::MasterHub;
use crate::store::ReadStore;
use bitark_common::Lsn;
use bitark_infra::Metrics;
use std::sync::atomic::AtomicU64;
use std::sync::OnceLock;
use tokio::sync::watch;

/// State shared between the writer thread, the snapshotter and readers.
pub(crate) struct State {
    pub store: ReadStore,
    /// Applied LSN. A watch channel, so reads with `minLsn` can await it instead of
    /// polling; the writer thread is the only sender.
    pub applied: watch::Sender<Lsn>,
    /// Durable LSN: everything at or below it is on stable storage. Under `fsync: batch`
    /// it never trails `applied`; under `interval` and `never` it may. Replication and
    /// snapshots use only what is durable. The writer thread is the only sender.
    pub durable: watch::Sender<Lsn>,
    pub metrics: Metrics,
    /// Records logged since the last snapshot started; drives `snapshot.every-records`.
    pub since_snapshot: AtomicU64,
    /// A master's replication hub, once started: told of every durable batch.
    pub replication: OnceLock<MasterHub>,
}

impl State {
    pub fn applied_lsn(&self) -> Lsn {
        *self.applied.borrow()
    }

    pub fn publish_applied(&self, lsn: Lsn) {
        self.applied.send_replace(lsn);
        self.metrics.lsn_applied.set(lsn.0 as i64);
        self.metrics.store_users.set(self.store.user_count() as i64);
        self.metrics.store_marks.set(self.store.mark_count() as i64);
    }
}
