//! The one path by which log records change the read state, shared by start-up replay
//! and by the group-commit writer (and, later, by replication apply).

use crate::config::LiveConfig;
use crate::state::State;
use crate::store::ReadStore;
use bitark_common::{Lsn, Record};
use bitark_infra::wal::Applier;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Applies records, in LSN order, to the store.
pub(crate) fn apply_records<'a>(store: &ReadStore, records: impl IntoIterator<Item = &'a Record>) {
    for record in records {
        store.apply(&record.command);
    }
}

/// The writer thread's applier: applies each durable batch, publishes the new applied
/// LSN, and nudges the snapshotter once enough records have accumulated.
pub(crate) struct StoreApplier {
    pub state: Arc<State>,
    /// `snapshot.every-records` is read per batch: it is reloadable.
    pub config: LiveConfig,
}

impl Applier for StoreApplier {
    fn apply(&mut self, records: &[Record]) {
        apply_records(&self.state.store, records);
        if let Some(last) = records.last() {
            self.state.publish_applied(last.lsn);
        }
        if let Some(listener) = self.state.commit_listener() {
            listener.on_commit(records);
        }
        let since = self.state.since_snapshot.fetch_add(records.len() as u64, Ordering::Relaxed) + records.len() as u64;
        let every = self.config.load().snapshot.every_records;
        if every > 0 && since >= every {
            // When the channel is full a nudge is pending already: never block the writer.
            self.state.snapshots.nudge();
        }
    }

    fn durable(&mut self, lsn: Lsn) {
        self.state.durable.send_replace(lsn);
        if let Some(listener) = self.state.commit_listener() {
            listener.on_durable();
        }
    }
}
