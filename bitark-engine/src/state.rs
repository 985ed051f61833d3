//! [`State`]: what the writer thread, the snapshotter, the replication hub and readers
//! share about one node, and [`Retention`]: what keeps WAL segments and snapshot files on
//! disk besides the node's own need for them.

use crate::snapshot_requests::SnapshotRequests;
use crate::store::ReadStore;
use bitark_common::{EpochHistory, Lsn, Record};
use bitark_infra::epoch::EpochState;
use bitark_infra::Metrics;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Instant;
use tokio::sync::watch;

/// What the writer thread tells of its progress, from the thread itself: keep it
/// short and never block.
pub(crate) trait CommitListener: Send + Sync {
    /// `records` were applied (and, under `fsync: batch`, are durable).
    fn on_commit(&self, records: &[Record]);
    /// The durable LSN moved.
    fn on_durable(&self);
}

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
    /// Told of every batch the writer applies and of every new durable LSN: a master's
    /// replication hub while one runs. Swapped when the node is promoted or steps down;
    /// read (briefly) once per batch.
    pub commits: RwLock<Option<Arc<dyn CommitListener>>>,
    /// Requests to the snapshotter thread.
    pub snapshots: SnapshotRequests,
    /// What keeps log and snapshots beyond the node's own needs (slaves, transfers).
    pub retention: Retention,
    /// Held (read) while a snapshot is written; taken (write) while the whole state is
    /// replaced by a full sync, which must not race a snapshot of the old state.
    pub replacing: RwLock<()>,
    /// Set while a full sync replaces the state: reads answer that the node is busy
    /// rather than from a half-loaded store.
    pub installing: AtomicBool,
    /// The epoch history and what is known of newer epochs (`epoch.bin`). Changed by
    /// promotion, step-down and registration only; a std `Mutex`, never held across an
    /// await.
    pub epochs: Mutex<EpochState>,
}

impl State {
    pub fn applied_lsn(&self) -> Lsn {
        *self.applied.borrow()
    }

    /// The node's epoch history.
    pub fn history(&self) -> EpochHistory {
        self.epochs.lock().unwrap_or_else(PoisonError::into_inner).history.clone()
    }

    /// What commits are told to now, if anything.
    pub fn commit_listener(&self) -> Option<Arc<dyn CommitListener>> {
        self.commits.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn set_commit_listener(&self, listener: Option<Arc<dyn CommitListener>>) {
        *self.commits.write().unwrap_or_else(PoisonError::into_inner) = listener;
    }

    pub fn publish_applied(&self, lsn: Lsn) {
        self.applied.send_replace(lsn);
        self.metrics.lsn_applied.set(lsn.0 as i64);
        self.metrics.store_users.set(self.store.user_count() as i64);
        self.metrics.store_marks.set(self.store.mark_count() as i64);
    }
}

/// What must stay on disk for others: snapshots being sent to slaves (and the WAL after
/// them), and the WAL live slaves still need (cluster GC). Garbage collection asks it
/// before deleting anything. A std `Mutex`: taken briefly by the snapshotter, the hub
/// and full-sync transfers, never across an await.
#[derive(Default)]
pub(crate) struct Retention {
    inner: Mutex<RetentionInner>,
}

#[derive(Default)]
struct RetentionInner {
    /// Transfer id → (LSN of the snapshot it sends, until when the pin holds).
    pins: HashMap<u64, (Lsn, Instant)>,
    /// The last LSN the slowest slave that holds the WAL has acknowledged.
    cluster: Option<Lsn>,
    /// The last LSN of the WAL the archive holds (`backup.archive`): what follows is kept.
    archive: Option<Lsn>,
}

impl Retention {
    fn lock(&self) -> std::sync::MutexGuard<'_, RetentionInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps the snapshot at `lsn`, and the WAL after it, until `until` (renewable).
    pub fn pin(&self, id: u64, lsn: Lsn, until: Instant) {
        let mut inner = self.lock();
        let now = Instant::now();
        inner.pins.retain(|_, (_, until)| *until > now);
        inner.pins.insert(id, (lsn, until));
    }

    /// Lets the pin of `id` run out at `until` (sooner), rather than at once: a slave that
    /// restarted mid-transfer can still resume the same snapshot.
    pub fn expire_at(&self, id: u64, until: Instant) {
        if let Some((_, at)) = self.lock().pins.get_mut(&id) {
            *at = (*at).min(until);
        }
    }

    pub fn unpin(&self, id: u64) {
        self.lock().pins.remove(&id);
    }

    /// What cluster GC says slaves still need: WAL after `lsn`; `None` for nothing.
    pub fn set_cluster(&self, lsn: Option<Lsn>) {
        self.lock().cluster = lsn;
    }

    /// What the archive needs kept: WAL after `lsn`; `None` for nothing.
    pub fn set_archive(&self, lsn: Option<Lsn>) {
        self.lock().archive = lsn;
    }

    /// The highest LSN the WAL may be purged to, as far as others are concerned.
    pub fn wal_floor(&self) -> Option<Lsn> {
        let now = Instant::now();
        let inner = self.lock();
        let pinned = inner.pins.values().filter(|(_, until)| *until > now).map(|(lsn, _)| *lsn);
        pinned.chain(inner.cluster).chain(inner.archive).min()
    }

    /// LSNs of the snapshots a transfer still holds.
    pub fn pinned_snapshots(&self) -> Vec<Lsn> {
        let now = Instant::now();
        self.lock().pins.values().filter(|(_, until)| *until > now).map(|(lsn, _)| *lsn).collect()
    }
}
