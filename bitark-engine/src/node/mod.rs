//! [`Node`]: the handle through which the adapter reads and writes.
//!
//! Opening a node recovers its state, starts the group-commit writer and the
//! snapshotter, and holds an exclusive lock on the data directory so two processes can
//! never write the same log.

use crate::config::{EngineConfig, LiveConfig, Role};
use crate::limits::MemoryGuard;
use crate::recovery::RecoveryReport;
use crate::replication::MasterHub;
use crate::snapshot_requests::SnapshotRequests;
use crate::state::State;
use bitark_common::replication::Features;
use bitark_common::Lsn;
use bitark_infra::datadir::DirLock;
use bitark_infra::wal::{WalHandle, WalHealth};
use bitark_infra::Metrics;
use std::sync::atomic::{AtomicU64, AtomicU8};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::SystemTime;

mod backup;
mod fencing;
mod moves;
pub use moves::{RangeCopy, RangeLog};
mod open;
mod ownership;
pub use ownership::Freeze;
mod reads;
mod replica;
mod roles;
mod snapshots;
mod write;

pub(crate) use roles::read_role;

/// Cheap-to-clone handle on an open node.
#[derive(Clone)]
pub struct Node {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// The configuration in force: reloadable keys change while the node runs.
    pub(crate) config: LiveConfig,
    pub(crate) state: Arc<State>,
    pub(crate) wal: WalHandle,
    snapshots: SnapshotRequests,
    memory: Arc<MemoryGuard>,
    /// Joined on shutdown; a std `Mutex` because it is taken once, outside any runtime.
    snapshot_thread: Mutex<Option<JoinHandle<()>>>,
    recovery: RecoveryReport,
    /// What the node is now and whom it follows: the configured role at first, then
    /// what promotions and step-downs (stage 7) made of it. Read on every write.
    pub(crate) role: RwLock<RoleState>,
    /// `role` for the read path, which must not take a lock every read shares:
    /// [`READ_SLAVE`], [`READ_MASTER`] or [`READ_LEASED_MASTER`] (a master under failover).
    read_role: AtomicU8,
    /// Under failover, the highest LSN of a `semi` or `all` write about to be answered:
    /// the coordination records it in etcd (`<prefix>/acked`) before the answer, and a
    /// node without it is never elected.
    acked: AtomicU64,
    /// The highest such LSN recorded in etcd; the writes wait for it.
    floor_recorded: tokio::sync::watch::Sender<u64>,
    /// Wakes the coordination when `acked` moved past what is recorded.
    floor_wanted: tokio::sync::Notify,
    /// The replication flags in force: the configured ones until an operator changes
    /// them while the node runs ([`Node::set_features`]).
    features: RwLock<LiveFeatures>,
    /// A master's replication hub while one runs: the node waits on it for the
    /// acknowledgements an ack mode asks. A std lock, swapped on promotion and
    /// step-down, read briefly per write.
    pub(crate) hub: RwLock<Option<MasterHub>>,
    /// The online backups this node serves.
    pub(crate) backups: crate::backup::Backups,
    /// Orders ownership checks of writes against changes of ownership
    /// (`ownership.rs`): writes hold it shared from check to proposal.
    ownership_gate: RwLock<()>,
    /// The moves this node's group takes in, by range (its master's).
    pub(crate) incoming: crate::sharding::incoming_state::IncomingMoves,
    /// The request counters of the owned ranges (`ownership.rs`), for the ownership
    /// they were made for.
    range_requests: arc_swap::ArcSwapOption<ownership::RangeRequests>,
    /// `cluster.group`, when the node is sharded (restart-only).
    pub(crate) group: Option<bitark_common::GroupId>,
    /// The shard directory, to name the owner of a user this node refuses.
    shards: crate::sharding::ShardView,
    /// Held for the life of the node: the OS lock on `<data-dir>/LOCK`.
    _lock: DirLock,
}

/// The replication flags in force, and whether (and when) they were changed at runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveFeatures {
    pub features: Features,
    /// True when they differ from the configuration's, until the next restart.
    pub overridden: bool,
    /// When they last changed at runtime.
    pub changed_at: Option<SystemTime>,
}

/// A node's current role and, for a slave, its master.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleState {
    pub role: Role,
    /// The master a slave follows (empty on a master).
    pub master_url: String,
}

impl Node {
    /// The configuration the node was opened with.
    pub fn config(&self) -> Arc<EngineConfig> {
        self.inner.config.load_full()
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.state.metrics
    }

    /// What start-up recovery did.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.inner.recovery
    }

    /// Whether the durable LSN trails what readers see (`fsync: interval | never`).
    pub fn durable_watch(&self) -> tokio::sync::watch::Receiver<Lsn> {
        self.inner.state.durable.subscribe()
    }

    /// Whether the log accepts writes, and why not.
    pub fn wal_health(&self) -> WalHealth {
        self.inner.wal.health()
    }

    /// Finishes in-flight writes, fsyncs, and stops the background threads. Blocking.
    pub fn shutdown(&self) {
        self.inner.wal.shutdown();
        self.inner.snapshots.stop();
        let thread = self.inner.snapshot_thread.lock().expect("snapshot thread slot").take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}
