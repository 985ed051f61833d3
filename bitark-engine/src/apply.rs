//! The one path by which log records change the read state, shared by start-up replay
//! and by the group-commit writer (and, later, by replication apply).

use crate::replication::MasterHub;
use crate::snapshotter::Request;
use crate::store::ReadStore;
use bitark_common::{Lsn, Record};
use bitark_infra::wal::Applier;
use bitark_infra::Metrics;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, OnceLock};
use tokio::sync::watch;

/// Applies records, in LSN order, to the store.
pub(crate) fn apply_records<'a>(store: &ReadStore, records: impl IntoIterator<Item = &'a Record>) {
    for record in records {
        store.apply(&record.command);
    }
}

/// State shared between the writer thread, the snapshotter and readers.
pub(crate) struct State {
    pub store: ReadStore,
    /// Applied LSN. A watch channel, so reads with `minLsn` can await it instead of
    /// polling; the writer thread is the only sender.
    pub applied: watch::Sender<Lsn>,
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

/// The writer thread's applier: applies each durable batch, publishes the new applied
/// LSN, and nudges the snapshotter once enough records have accumulated.
pub(crate) struct StoreApplier {
    pub state: Arc<State>,
    pub every_records: u64,
    /// Bounded channel to the snapshotter; when it is full a nudge is already
    /// pending, so `try_send` never blocks the writer.
    pub nudge: SyncSender<Request>,
}

impl Applier for StoreApplier {
    fn apply(&mut self, records: &[Record]) {
        apply_records(&self.state.store, records);
        if let Some(last) = records.last() {
            self.state.publish_applied(last.lsn);
        }
        if let Some(hub) = self.state.replication.get() {
            hub.on_commit(records);
        }
        let since = self.state.since_snapshot.fetch_add(records.len() as u64, Ordering::Relaxed) + records.len() as u64;
        if self.every_records > 0 && since >= self.every_records {
            let _ = self.nudge.try_send(Request::Nudge);
        }
    }
}
