//! [`Node`]: the handle through which the adapter reads and writes.
//!
//! Opening a node recovers its state, starts the group-commit writer and the
//! snapshotter, and holds an exclusive lock on the data directory so two processes can
//! never write the same log.

use crate::apply::StoreApplier;
use crate::config::{AckMode, EngineConfig, LiveConfig, Role};
use crate::error::{
    ConsistencyError, InvalidCommand, LeaderReadError, OpenError, ReplicateError, SnapshotError, WriteError,
};
use crate::limits::{admit_marks, MemoryGuard};
use crate::recovery::{load_snapshot, recover, RecoveryReport};
use crate::replication::ack::AckShortfall;
use crate::replication::master::HubParts;
use crate::replication::MasterHub;
use crate::snapshotter::{Request, Snapshotter};
use crate::state::{Retention, State};
use crate::store::{ReadStore, StoreDigest};
use bitark_common::replication::Features;
use bitark_common::{Command, Epoch, Lsn, Record};
use bitark_infra::datadir::DirLock;
use bitark_infra::epoch::{read_epoch_state, write_epoch_state, EpochState};
use bitark_infra::fsutil::create_dir_durable;
use bitark_infra::fullsync::{commit_install, complete_install, discard_state};
use bitark_infra::replication::ReplicationClient;
use bitark_infra::snapshot::{list_snapshots, read_snapshot, snapshot_name, SnapshotInfo};
use bitark_infra::wal::{AppendOutcome, GroupCommit, ProposeError, WalHandle, WalHealth};
use bitark_infra::{Metrics, StorageError};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime};
use tokio::sync::{oneshot, watch};

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
    snapshots: SyncSender<Request>,
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
    /// The online backups this node serves.
    pub(crate) backups: crate::backup::Backups,
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
    /// Recovers the node from its data directory and starts its background threads.
    /// Blocking: call it from a blocking context.
    pub fn open(config: EngineConfig, metrics: Metrics) -> Result<Node, OpenError> {
        let layout = config.node.dir();
        let data_dir = layout.root().to_path_buf();
        let (wal_dir, snapshot_dir) = (layout.wal(), layout.snapshots());
        create_dir_durable(&wal_dir)?;
        create_dir_durable(&snapshot_dir)?;
        let lock = layout.lock()?;

        let mut store = ReadStore::new();
        let report = match recover(&store, &wal_dir, &snapshot_dir, &data_dir) {
            Err(StorageError::Corruption { path, offset, reason }) if config.may_resync_on_corruption() => {
                let kept = discard_state(&data_dir)?;
                tracing::error!(
                    file = %path.display(), offset, %reason, moved_to = %kept.display(),
                    "LOCAL STATE DISCARDED: the log is damaged and replication.resync-on-corruption is set; this \
                     slave starts empty and gets everything from its master (the damaged files are kept for \
                     inspection; delete them when done)"
                );
                metrics.resyncs_on_corruption.inc();
                store = ReadStore::new();
                recover(&store, &wal_dir, &snapshot_dir, &data_dir)?
            }
            other => other?,
        };
        metrics.recovery_duration_seconds.set(report.duration.as_secs_f64());
        metrics.recovery_records_replayed.set(report.replayed as i64);

        let (applied, _) = watch::channel(report.applied);
        let (durable, _) = watch::channel(report.applied);
        let (snapshots, snapshot_rx) = sync_channel(16);
        let state = Arc::new(State {
            store,
            applied,
            durable,
            metrics: metrics.clone(),
            since_snapshot: AtomicU64::new(report.replayed),
            replication: RwLock::new(None),
            snapshots: snapshots.clone(),
            retention: Retention::default(),
            replacing: RwLock::new(()),
            installing: AtomicBool::new(false),
            epochs: Mutex::new(EpochState::default()),
        });
        state.publish_applied(report.applied);

        let fencing = config.replication.effective_features().fencing;
        let epochs = open_epochs(&data_dir, fencing, &config)?;
        let role = start_role(&config, &epochs, fencing);
        if role.role == Role::Slave && role.master_url.is_empty() && !config.failover() {
            return Err(StorageError::io(
                layout.epoch_file(),
                std::io::Error::other(
                    "replication.master-url: a slave needs its master's URL, and epoch.bin names no master to follow",
                ),
            )
            .into());
        }
        let epoch = epochs.history.current();
        *state.epochs.lock().unwrap_or_else(PoisonError::into_inner) = epochs.clone();
        let live: LiveConfig = Arc::new(arc_swap::ArcSwap::from_pointee(config.clone()));
        let applier = StoreApplier { state: state.clone(), config: live.clone() };
        let wal = GroupCommit::start(&wal_dir, &config.wal, report.applied.next(), epoch, applier, metrics.clone())?;
        if fencing && role.role == Role::Master && epochs.highest() > epoch {
            // A newer master exists and nobody knows where: never write in this epoch again.
            wal.set_fenced(true);
        }
        metrics.replication_epoch.set(epochs.highest().0 as i64);

        let memory = MemoryGuard::start(config.limits.max_memory.as_u64(), metrics.clone())
            .map_err(|e| StorageError::io(&data_dir, e))?;
        let last = newest_snapshot_info(&snapshot_dir, report.snapshot_lsn);
        let snapshotter = Snapshotter {
            state: state.clone(),
            config: live.clone(),
            wal: wal.clone(),
            wal_dir,
            snapshot_dir,
            epoch,
            last,
            last_at: Instant::now(),
        };
        let thread = std::thread::Builder::new()
            .name("snapshotter".into())
            .spawn(move || snapshotter.run(snapshot_rx))
            .map_err(|e| StorageError::io(&data_dir, e))?;
        let configured_features = config.replication.effective_features();
        Ok(Node {
            inner: Arc::new(Inner {
                config: live,
                state,
                wal,
                snapshots,
                memory,
                snapshot_thread: Mutex::new(Some(thread)),
                recovery: report,
                read_role: AtomicU8::new(read_role(&role, config.failover())),
                role: RwLock::new(role),
                acked: AtomicU64::new(0),
                floor_recorded: tokio::sync::watch::channel(0).0,
                floor_wanted: tokio::sync::Notify::new(),
                features: RwLock::new(LiveFeatures {
                    features: configured_features,
                    overridden: false,
                    changed_at: None,
                }),
                backups: Default::default(),
                _lock: lock,
            }),
        })
    }

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

    /// Checks a command against the configured limits.
    pub fn validate(&self, command: &Command) -> Result<(), InvalidCommand> {
        match command {
            Command::MarkBatch { msgs, .. } => self.validate_batch_len(msgs.len()),
            Command::MarkRange { from, to, .. } => self.validate_range(*from, *to),
            _ => Ok(()),
        }
    }

    /// Checks a `from..=to` range against `limits.max-range`.
    pub fn validate_range(&self, from: u64, to: u64) -> Result<(), InvalidCommand> {
        let max = self.inner.config.load().limits.max_range;
        if from > to {
            Err(InvalidCommand::InvertedRange { from, to })
        } else if to - from >= max {
            Err(InvalidCommand::RangeTooLarge { from, to, max })
        } else {
            Ok(())
        }
    }

    /// Checks a batch size against `limits.max-batch`.
    pub fn validate_batch_len(&self, len: usize) -> Result<(), InvalidCommand> {
        let max = self.inner.config.load().limits.max_batch;
        if len == 0 {
            Err(InvalidCommand::EmptyBatch)
        } else if len > max {
            Err(InvalidCommand::BatchTooLarge { len, max })
        } else {
            Ok(())
        }
    }

    /// Logs, fsyncs and applies `command`; answers its LSN once it is durable (under
    /// the configured fsync policy) and visible to readers.
    pub async fn write(&self, command: Command) -> Result<Lsn, WriteError> {
        if self.is_slave() {
            return Err(WriteError::NotMaster { master_url: self.master_url() });
        }
        if self.inner.wal.is_fenced() {
            return Err(self.fenced_error());
        }
        self.validate(&command)?;
        let metrics = &self.inner.state.metrics;
        let admitted = self.inner.memory.admit(&command).and_then(|()| {
            admit_marks(&self.inner.state.store, self.inner.config.load().limits.max_marks_per_user, &command)
        });
        if let Err(e) = admitted {
            let reason = if matches!(e, WriteError::MemoryLimit(_)) { "memory-limit" } else { "mark-limit" };
            metrics.writes_rejected.with_label_values(&[reason]).inc();
            return Err(e);
        }
        let pending = self.inner.wal.propose(command).inspect_err(|e| {
            metrics.writes_rejected.with_label_values(&[reject_reason(e)]).inc();
        })?;
        match pending.await {
            Ok(Err(ProposeError::Fenced)) => Err(self.fenced_error()),
            Ok(result) => Ok(result?),
            // The writer dropped the reply: it stopped (shutdown or a crash).
            Err(_) => Err(self.inner.wal.stopped_error().into()),
        }
    }

    /// Logs `command` like [`Node::write`], then, under `semi` or `all` (the configured
    /// `replication.ack`, or the stricter `ack` the write asks for), waits for the
    /// slaves that mode needs to hold it durably. Without enough ALIVE slaves it fails
    /// before logging anything (unless `ack-wait-for-replicas`).
    pub async fn write_acked(&self, command: Command, ack: Option<AckMode>) -> Result<Lsn, WriteError> {
        let mode = self.ack_mode(ack);
        if mode == AckMode::Async {
            return self.write(command).await;
        }
        let hub = self.inner.state.hub();
        let required = if mode == AckMode::Semi { self.inner.config.load().replication.min_acks } else { 1 };
        let not_enough = |alive| WriteError::NotEnoughReplicas { ack: mode, alive, required };
        let Some(hub) = hub.filter(|_| !self.is_slave()) else {
            if self.is_slave() {
                return Err(WriteError::NotMaster { master_url: self.master_url() });
            }
            return Err(not_enough(0));
        };
        if let Err(AckShortfall::NotEnoughReplicas { alive, .. }) = hub.admit_ack(mode) {
            self.inner.state.metrics.writes_rejected.with_label_values(&["not-enough-replicas"]).inc();
            return Err(not_enough(alive));
        }
        let lsn = self.write(command).await?;
        match hub.wait_for_acks(lsn, mode).await {
            Ok(_) if self.inner.config.load().failover() => self.record_floor(lsn, mode).await.map(|()| lsn),
            Ok(_) => Ok(lsn),
            Err(AckShortfall::TimedOut(count)) => Err(WriteError::ReplicationTimeout {
                lsn: lsn.0,
                epoch: self.epoch().0,
                ack: mode,
                acked: count.acked,
                required: count.required,
                timeout_ms: self.inner.config.load().replication.ack_timeout.as_millis() as u64,
            }),
            Err(AckShortfall::NotEnoughReplicas { alive, .. }) => Err(not_enough(alive)),
        }
    }

    /// Under failover: before a `semi`/`all` write at `lsn` is answered, the coordination
    /// records it in etcd as the floor no new master may lack, and the lease must still
    /// hold. Otherwise the write (durable here and on the slaves that confirmed it) is not
    /// acknowledged.
    async fn record_floor(&self, lsn: Lsn, mode: AckMode) -> Result<(), WriteError> {
        if !self.floor_recorded_in_time(lsn).await {
            self.inner.state.metrics.writes_rejected.with_label_values(&["lease-lapsed"]).inc();
            return Err(WriteError::LeaseLapsed(format!(
                "LSN {lsn} is durable here and on the slaves ack={} needed, but this master could not record it in \
                 etcd as acknowledged within {} ms (or its leader lease lapsed); this write was not acknowledged",
                mode.as_str(),
                self.inner.config.load().replication.ack_timeout.as_millis()
            )));
        }
        Ok(())
    }

    /// Under failover: whether `lsn` was recorded in etcd as the floor within
    /// `replication.ack-timeout`, with the leader lease still holding.
    async fn floor_recorded_in_time(&self, lsn: Lsn) -> bool {
        self.inner.acked.fetch_max(lsn.0, Ordering::AcqRel);
        self.inner.floor_wanted.notify_one();
        let mut recorded = self.inner.floor_recorded.subscribe();
        let timeout = self.inner.config.load().replication.ack_timeout;
        let waited = tokio::time::timeout(timeout, recorded.wait_for(|floor| *floor >= lsn.0)).await;
        matches!(waited, Ok(Ok(_))) && !self.lease_lapsed()
    }

    /// Waits until the state up to `lsn`, which a read has seen, can no longer be taken
    /// back by a failover: the slaves `semi` needs hold it durably and, under failover,
    /// etcd holds it as the floor no new master may lack (one record shared by the writes
    /// and reads waiting at that moment). A master without replication has nothing to
    /// wait for. What `consistency=linearizable` reads wait for.
    pub async fn wait_committed(&self, lsn: Lsn) -> Result<(), LeaderReadError> {
        let failover = self.inner.config.load().failover();
        if failover && *self.inner.floor_recorded.borrow() >= lsn.0 {
            return Ok(());
        }
        let uncommitted = |why: String| LeaderReadError::Uncommitted { lsn: lsn.0, why };
        if let Some(hub) = self.inner.state.hub() {
            match hub.wait_for_acks(lsn, AckMode::Semi).await {
                Ok(_) => {}
                Err(AckShortfall::TimedOut(count)) => {
                    return Err(uncommitted(format!(
                        "{} of the {} slaves needed confirmed it within replication.ack-timeout",
                        count.acked, count.required
                    )))
                }
                Err(AckShortfall::NotEnoughReplicas { alive, required }) => {
                    return Err(uncommitted(format!("{alive} slaves are ALIVE, {required} needed")))
                }
            }
        }
        if failover && !self.floor_recorded_in_time(lsn).await {
            return Err(uncommitted("it could not be recorded in etcd before the leader lease lapsed".into()));
        }
        Ok(())
    }

    /// Under failover: the highest LSN of a `semi`/`all` write waiting to be recorded in
    /// etcd (or recorded).
    pub fn acked_lsn(&self) -> Lsn {
        Lsn(self.inner.acked.load(Ordering::Acquire))
    }

    /// Resolves when a `semi`/`all` write waits for its floor to be recorded.
    pub async fn floor_wanted(&self) {
        self.inner.floor_wanted.notified().await;
    }

    /// The coordination recorded the floor up to `lsn` in etcd.
    pub fn floor_recorded(&self, lsn: Lsn) {
        self.inner.floor_recorded.send_if_modified(|floor| {
            let moved = lsn.0 > *floor;
            *floor = (*floor).max(lsn.0);
            moved
        });
    }

    /// The acknowledgement mode of a write that asks for `requested`: the stricter of
    /// it and `replication.ack`; `async` unless `ack-modes` is on.
    pub fn ack_mode(&self, requested: Option<AckMode>) -> AckMode {
        let replication = &self.inner.config.load().replication;
        if !self.features().ack_modes {
            return AckMode::Async;
        }
        requested.map_or(replication.ack, |r| r.max(replication.ack))
    }

    /// The answer to a write on a node that saw a newer epoch.
    fn fenced_error(&self) -> WriteError {
        self.inner.state.metrics.writes_rejected.with_label_values(&["fenced"]).inc();
        let epochs = self.epochs();
        let url = Some(epochs.seen_master_url).filter(|u| !u.is_empty());
        WriteError::Fenced { epoch: epochs.seen.max(epochs.history.current().0), master_url: url }
    }

    /// Logs and applies records from the master, which carry their LSNs (slave only).
    /// Records this node already holds are skipped; the rest must continue its log.
    /// Every record is checked as the public API checks a command (limits, epoch)
    /// first; one that fails refuses the whole batch.
    pub async fn replicate(&self, records: Vec<Record>) -> Result<AppendOutcome, ReplicateError> {
        self.replicate_from(records, self.fencing()).await
    }

    /// [`Node::replicate`], checking each record's epoch against the epoch history only
    /// when `check_epochs` (the master and this slave use fencing together: a master
    /// without it keeps no history to check against).
    pub(crate) async fn replicate_from(
        &self,
        records: Vec<Record>,
        check_epochs: bool,
    ) -> Result<AppendOutcome, ReplicateError> {
        if !self.is_slave() {
            return Err(ReplicateError::NotSlave);
        }
        if self.is_replacing() {
            // A full sync is replacing the log and the store: a record now would land in
            // the new log but miss the store being loaded.
            return Err(ReplicateError::Write(WriteError::Overloaded));
        }
        for record in &records {
            let invalid = |reason: String| ReplicateError::InvalidRecord { lsn: record.lsn.0, reason };
            if record.lsn == Lsn::ZERO || record.lsn == Lsn(u64::MAX) {
                return Err(invalid("LSNs run from 1 to 2^64 - 2".into()));
            }
            if let Some(expected) = self.expected_epoch(record.lsn).filter(|_| check_epochs) {
                if record.epoch != expected {
                    return Err(invalid(format!(
                        "carries epoch {}, but this node's epoch history gives LSN {} to epoch {expected}",
                        record.epoch, record.lsn
                    )));
                }
            }
            self.validate(&record.command).map_err(|e| invalid(e.to_string()))?;
        }
        let received = records.len() as u64;
        let pending = self.inner.wal.append(records).map_err(|e| ReplicateError::Write(e.into()))?;
        match pending.await {
            Ok(Ok(outcome)) => {
                self.inner.state.metrics.replication_received_records.inc_by(received - outcome.skipped);
                Ok(outcome)
            }
            Ok(Err(ProposeError::Gap { expected, .. })) => Err(ReplicateError::Gap { expected: expected.0 }),
            Ok(Err(e)) => Err(ReplicateError::Write(e.into())),
            Err(_) => Err(ReplicateError::Write(self.inner.wal.stopped_error().into())),
        }
    }

    /// True when this node follows a master.
    pub fn is_slave(&self) -> bool {
        self.role().role == Role::Slave
    }

    /// The node's role now, and the master it follows.
    pub fn role(&self) -> RoleState {
        self.inner.role.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The master this node follows (a slave), or the one a newer epoch named (a
    /// fenced master); empty when none is known.
    pub fn master_url(&self) -> String {
        let role = self.role();
        if role.role == Role::Slave {
            return role.master_url;
        }
        self.epochs().seen_master_url
    }

    pub(crate) fn set_role(&self, role: RoleState) {
        let mut current = self.inner.role.write().unwrap_or_else(PoisonError::into_inner);
        self.inner.read_role.store(read_role(&role, self.inner.config.load().failover()), Ordering::Release);
        *current = role;
    }

    /// Whether a read that names no consistency is a leader read here: on a master under
    /// failover it is (`consistency=leader`), elsewhere it is a local one.
    pub fn leader_reads_by_default(&self) -> bool {
        self.inner.read_role.load(Ordering::Acquire) == READ_LEASED_MASTER
    }

    /// Whether what this node answered from its state just before this call may be
    /// answered as a leader read: it is the master, not fenced by a newer epoch, and under
    /// failover its leader lease still holds. The lease ends a quarter of its TTL before
    /// etcd could let it expire, as the writer's fencing does, so no newer master can
    /// have been elected while it holds; this assumes the clocks of this node and etcd
    /// run at rates within 25% of each other over one TTL, not that they agree.
    pub fn check_leader_read(&self) -> Result<(), LeaderReadError> {
        let role = self.inner.read_role.load(Ordering::Acquire);
        if role == READ_SLAVE || self.is_fenced() {
            let epochs = self.epochs();
            let epoch = epochs.highest().0;
            let master_url = if role == READ_SLAVE { self.role().master_url } else { epochs.seen_master_url };
            return Err(LeaderReadError::NotLeader { epoch, master_url: Some(master_url).filter(|u| !u.is_empty()) });
        }
        if role == READ_LEASED_MASTER && self.lease_lapsed() {
            return Err(LeaderReadError::LeaseLapsed);
        }
        Ok(())
    }

    /// The epoch history and what is known of newer epochs.
    pub fn epochs(&self) -> EpochState {
        self.inner.state.epochs.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Whether this node keeps and checks epochs (`replication.features.fencing`).
    pub fn fencing(&self) -> bool {
        self.features().fencing
    }

    /// The replication flags in force now.
    pub fn features(&self) -> Features {
        self.live_features().features
    }

    /// The flags in force, whether they are the configuration's, and when they changed.
    pub fn live_features(&self) -> LiveFeatures {
        *self.inner.features.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether [`Node::set_features`] would take `features` with `ack` as
    /// `replication.ack`; changes nothing.
    pub fn check_features(&self, features: Features, ack: AckMode) -> Result<(), String> {
        if let Some((flag, missing)) = features.rollout_violations().first() {
            return Err(format!("`{flag}` needs `{missing}` (rollout order: {})", Features::NAMES.join(", ")));
        }
        if features.failover != self.features().failover {
            return Err("`failover` changes only with the configuration and a restart".into());
        }
        if ack != AckMode::Async && !features.ack_modes {
            return Err(format!(
                "replication.ack is `{}`, which needs `ack-modes`; change the configuration first",
                ack.as_str()
            ));
        }
        if self.is_slave() && !features.notify {
            return Err("a slave needs replication on (`notify`)".into());
        }
        Ok(())
    }

    /// Takes the reloadable keys of `new` ([`EngineConfig::RELOADABLE`]) from now on;
    /// every other key stays as the node started. The hub or follower, the snapshotter,
    /// the memory guard and the write path read the new values where they use them. The
    /// flags in force change only through [`Node::set_features`]; the configured flags
    /// stored here decide whether those in force are an override. Answers the
    /// configuration now in force.
    pub fn reconfigure(&self, new: &EngineConfig) -> Arc<EngineConfig> {
        let next = Arc::new(self.inner.config.load().with_reloaded(new));
        self.inner.memory.set_limit(next.limits.max_memory.as_u64());
        self.inner.config.store(next.clone());
        if let Some(hub) = self.inner.state.hub() {
            hub.wake_senders();
        }
        let mut live = self.inner.features.write().unwrap_or_else(PoisonError::into_inner);
        live.overridden = live.features != next.replication.effective_features();
        next
    }

    /// Changes the replication flags of the running node (until its next restart). The
    /// caller restarts the replication side, whose links renegotiate. Refuses a set out
    /// of rollout order, a change of `failover` (it needs a restart), and an ack mode
    /// the new set cannot serve. Under fencing newly on, writes `epoch.bin` first.
    pub fn set_features(&self, features: Features) -> Result<LiveFeatures, String> {
        let config = self.inner.config.load();
        self.check_features(features, config.replication.ack)?;
        let current = self.features();
        if features.fencing && !current.fencing {
            let data_dir = &config.node.data_dir;
            if read_epoch_state(data_dir).map_err(|e| e.to_string())?.is_none() {
                let state = self.epochs();
                let state = EpochState {
                    master_id: if self.is_slave() { String::new() } else { config.node.id.clone() },
                    ..state
                };
                write_epoch_state(data_dir, &state).map_err(|e| e.to_string())?;
                *self.inner.state.epochs.lock().unwrap_or_else(PoisonError::into_inner) = state;
            }
        }
        let live = LiveFeatures {
            features,
            overridden: features != config.replication.effective_features(),
            changed_at: Some(SystemTime::now()),
        };
        *self.inner.features.write().unwrap_or_else(PoisonError::into_inner) = live;
        for (name, on) in Features::NAMES.iter().zip(features.flags()) {
            self.inner.state.metrics.replication_feature.with_label_values(&[name]).set(on as i64);
        }
        tracing::warn!(features = ?features.enabled(), overridden = live.overridden, "replication flags changed at runtime");
        Ok(live)
    }

    /// Under fencing: the epoch a record at `lsn` must carry, as this node's history
    /// says.
    fn expected_epoch(&self, lsn: Lsn) -> Option<Epoch> {
        if !self.fencing() {
            return None;
        }
        self.inner.state.epochs.lock().unwrap_or_else(PoisonError::into_inner).history.epoch_at(lsn)
    }

    /// Under failover: this node's own writes are taken only before `until` (its
    /// leader lease); `None` lifts the bound.
    pub fn set_lease_deadline(&self, until: Option<std::time::Instant>) {
        self.inner.wal.set_lease_deadline(until);
    }

    /// Whether this node's own writes are refused for want of a renewed leader lease.
    pub fn lease_lapsed(&self) -> bool {
        self.inner.wal.lease_lapsed()
    }

    /// Whether writes of this node's own are refused because a newer epoch exists.
    pub fn is_fenced(&self) -> bool {
        self.inner.wal.is_fenced()
    }

    /// Replaces the epoch state, durably first.
    pub(crate) fn store_epochs(&self, state: EpochState) -> Result<(), StorageError> {
        let mut current = self.inner.state.epochs.lock().unwrap_or_else(PoisonError::into_inner);
        if *current == state {
            return Ok(());
        }
        write_epoch_state(&self.inner.config.load().node.data_dir, &state)?;
        self.inner.state.metrics.replication_epoch.set(state.highest().0 as i64);
        *current = state;
        Ok(())
    }

    /// Starts the master side of replication (when this node is a master with
    /// replication on) on the current tokio runtime: every durable batch is handed to
    /// the hub from now on.
    pub fn start_master_hub(&self, client: ReplicationClient) -> Option<MasterHub> {
        let config = self.inner.config.load();
        if self.is_slave() || !self.features().any() {
            return None;
        }
        if self.fencing() {
            client.set_epoch(self.epoch().0);
        }
        let hub = MasterHub::new(HubParts {
            node_id: config.node.id.clone(),
            config: self.inner.config.clone(),
            features: self.features(),
            dir: config.node.dir(),
            client,
            metrics: self.inner.state.metrics.clone(),
            durable: self.inner.state.durable.subscribe(),
            wal: self.inner.wal.clone(),
            state: self.inner.state.clone(),
            runtime: tokio::runtime::Handle::current(),
        });
        *self.inner.state.replication.write().unwrap_or_else(PoisonError::into_inner) = Some(hub.clone());
        hub.contact_static_slaves();
        Some(hub)
    }

    /// Stops the master hub, if one runs: its links close and their senders end.
    pub fn stop_master_hub(&self) {
        let hub = self.inner.state.replication.write().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(hub) = hub {
            hub.stop();
        }
    }

    /// Whether the durable LSN trails what readers see (`fsync: interval | never`).
    pub fn durable_watch(&self) -> tokio::sync::watch::Receiver<Lsn> {
        self.inner.state.durable.subscribe()
    }

    /// The epoch this node writes in (a master) or follows (a slave): the newest of
    /// its history.
    pub fn epoch(&self) -> Epoch {
        self.inner.state.epochs.lock().unwrap_or_else(PoisonError::into_inner).history.current()
    }

    pub fn is_read(&self, user: u64, msg: u64) -> bool {
        self.inner.state.store.is_read(user, msg)
    }

    pub fn check(&self, user: u64, msgs: &[u64]) -> Vec<bool> {
        self.inner.state.store.check(user, msgs)
    }

    /// Ids in `from..=to` that `user` has not read.
    pub fn unread_count(&self, user: u64, from: u64, to: u64) -> Result<u64, InvalidCommand> {
        self.validate_range(from, to)?;
        Ok((to - from + 1) - self.inner.state.store.count_read(user, from, to))
    }

    pub fn applied_lsn(&self) -> Lsn {
        self.inner.state.applied_lsn()
    }

    pub fn durable_lsn(&self) -> Lsn {
        self.inner.wal.durable_lsn()
    }

    /// Waits until the applied LSN reaches `min`, at most `reads.min-lsn-wait`.
    pub async fn wait_applied(&self, min: Lsn) -> Result<Lsn, ConsistencyError> {
        let mut rx = self.inner.state.applied.subscribe();
        let wait = self.inner.config.load().reads.min_lsn_wait;
        let waiting = &self.inner.state.metrics.reads_waiting_for_lsn;
        waiting.inc();
        let reached = tokio::time::timeout(wait, rx.wait_for(|applied| *applied >= min)).await;
        waiting.dec();
        let (requested, applied, waited_ms) = (min.0, self.applied_lsn().0, wait.as_millis() as u64);
        match reached {
            Ok(Ok(applied)) => Ok(*applied),
            _ if self.is_slave() => {
                Err(ConsistencyError::SlaveBehind { requested, applied, waited_ms, master_url: self.master_url() })
            }
            _ => Err(ConsistencyError::NotYetWritten { requested, applied, waited_ms }),
        }
    }

    /// Waits, at most `reads.min-lsn-wait`, until this node knows `epoch`.
    pub async fn wait_epoch(&self, epoch: Epoch) {
        let deadline = Instant::now() + self.inner.config.load().reads.min_lsn_wait;
        let mut applied = self.inner.state.applied.subscribe();
        while self.epoch() < epoch && Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            // The history changes at a registration; look again at least every 50 ms.
            let _ = tokio::time::timeout(left.min(std::time::Duration::from_millis(50)), applied.changed()).await;
        }
    }

    /// Order-independent digest of every (user, message) pair held.
    pub fn digest(&self) -> StoreDigest {
        self.inner.state.store.digest()
    }

    pub fn user_count(&self) -> u64 {
        self.inner.state.store.user_count()
    }

    pub fn mark_count(&self) -> u64 {
        self.inner.state.store.mark_count()
    }

    /// Takes a snapshot now and answers where it went.
    pub async fn snapshot_now(&self) -> Result<SnapshotInfo, SnapshotError> {
        let (reply, rx) = oneshot::channel();
        match self.inner.snapshots.try_send(Request::Now(reply)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(SnapshotError::Busy),
            Err(TrySendError::Disconnected(_)) => return Err(SnapshotError::ShuttingDown),
        }
        rx.await.unwrap_or(Err(SnapshotError::ShuttingDown))
    }

    /// Replaces this node's whole state with the snapshot at `downloaded` (a full sync,
    /// slave only): every log record and snapshot it had goes, and it goes on from the
    /// snapshot's LSN. The snapshot is verified before anything is replaced; from the
    /// commit point on a crash leaves the new state (see `bitark_infra::fullsync`).
    /// Reads answer that the node is busy meanwhile. Blocking.
    pub fn install_snapshot(&self, downloaded: &Path) -> Result<SnapshotInfo, StorageError> {
        if !self.is_slave() {
            return Err(StorageError::io(downloaded, std::io::Error::other("this node is master now: no full sync")));
        }
        let started = Instant::now();
        let info = read_snapshot(downloaded, |_| Ok(()))?;
        let verified = started.elapsed();
        let lsn = info.lsn;
        let state = &self.inner.state;
        // Waits for a snapshot of the old state being written, and keeps new ones out.
        let _replacing = state.replacing.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        state.installing.store(true, std::sync::atomic::Ordering::Release);
        let data_dir = self.inner.config.load().node.data_dir.clone();
        let work = Box::new(move || {
            commit_install(&data_dir, lsn)?;
            // A test stops the node here, between the commit point and the swap.
            fail::fail_point!("fullsync::after-commit");
            complete_install(&data_dir).map(|_| ())
        });
        self.inner.wal.reset(lsn.next(), work)?;
        let swapped = started.elapsed();
        state.store.clear();
        let installed = self.inner.config.load().node.dir().snapshots().join(snapshot_name(lsn));
        load_snapshot(&state.store, &installed)?;
        let loaded = started.elapsed();
        state.since_snapshot.store(0, std::sync::atomic::Ordering::Relaxed);
        state.durable.send_replace(lsn);
        state.publish_applied(lsn);
        state.installing.store(false, std::sync::atomic::Ordering::Release);
        let info = SnapshotInfo { path: installed, ..info };
        let _ = state.snapshots.try_send(Request::Replaced(Some(info.clone())));
        tracing::info!(
            %lsn,
            users = info.users,
            marks = info.marks,
            verify_ms = verified.as_millis() as u64,
            swap_ms = (swapped - verified).as_millis() as u64,
            load_ms = (loaded - swapped).as_millis() as u64,
            "full-sync snapshot installed"
        );
        Ok(info)
    }

    /// True while a full sync replaces the state: reads should not be answered.
    pub fn is_replacing(&self) -> bool {
        self.inner.state.installing.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether the log accepts writes, and why not.
    pub fn wal_health(&self) -> WalHealth {
        self.inner.wal.health()
    }

    /// Finishes in-flight writes, fsyncs, and stops the background threads. Blocking.
    pub fn shutdown(&self) {
        self.inner.wal.shutdown();
        let _ = self.inner.snapshots.send(Request::Stop);
        let thread = self.inner.snapshot_thread.lock().expect("snapshot thread slot").take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

fn reject_reason(e: &ProposeError) -> &'static str {
    match e {
        ProposeError::Overloaded => "overloaded",
        ProposeError::Closed => "shutting-down",
        ProposeError::NoSpace(_) | ProposeError::Io(_) | ProposeError::Unknown(_) | ProposeError::Failed(_) => {
            "wal-failed"
        }
        ProposeError::Gap { .. } => "gap",
        ProposeError::Fenced => "fenced",
        ProposeError::LeaseLapsed => "lease-lapsed",
    }
}

const READ_SLAVE: u8 = 0;
const READ_MASTER: u8 = 1;
const READ_LEASED_MASTER: u8 = 2;

/// `role` as the read path keeps it.
fn read_role(role: &RoleState, failover: bool) -> u8 {
    match (role.role, failover) {
        (Role::Slave, _) => READ_SLAVE,
        (Role::Master, false) => READ_MASTER,
        (Role::Master, true) => READ_LEASED_MASTER,
    }
}

/// Reads `epoch.bin` (under fencing, writing a fresh one when there is none).
fn open_epochs(data_dir: &Path, fencing: bool, config: &EngineConfig) -> Result<EpochState, StorageError> {
    match read_epoch_state(data_dir)? {
        Some(state) => {
            tracing::info!(
                epoch = %state.history.current(), highest = %state.highest(), master = %state.master_id,
                "epoch history read"
            );
            Ok(state)
        }
        None if fencing => {
            let master_id = if config.node.role == Role::Master { config.node.id.clone() } else { String::new() };
            let state = EpochState { master_id, ..EpochState::default() };
            write_epoch_state(data_dir, &state)?;
            Ok(state)
        }
        None => Ok(EpochState::default()),
    }
}

/// The role a node starts in: the configured one, unless (under fencing) its epoch file
/// says otherwise: a node that became master stays master; a configured master that
/// stepped down, or saw a newer epoch whose master it knows, follows that master.
/// Under failover every node starts as a slave of nobody: the etcd election decides.
/// A configured slave without `replication.master-url` follows the master its epoch file
/// names (the last one it followed).
fn start_role(config: &EngineConfig, epochs: &EpochState, fencing: bool) -> RoleState {
    if config.failover() {
        return RoleState { role: Role::Slave, master_url: String::new() };
    }
    let mut configured = RoleState {
        role: config.node.role,
        master_url: if config.node.role == Role::Slave { config.replication.master_url.clone() } else { String::new() },
    };
    if !fencing {
        return configured;
    }
    if configured.role == Role::Slave && configured.master_url.is_empty() {
        configured.master_url = epochs.seen_master_url.clone();
    }
    let newer = epochs.seen > epochs.history.current().0;
    if !newer && epochs.master_id == config.node.id {
        if configured.role == Role::Slave {
            tracing::warn!(epoch = %epochs.history.current(), "configured as a slave, but this node was promoted to master of the current epoch (epoch.bin): starting as master");
        }
        return RoleState { role: Role::Master, master_url: String::new() };
    }
    // A configured slave follows its configured master (which must not be stale: its
    // history is checked at registration); a configured master that another node
    // replaced follows that node.
    let url = &epochs.seen_master_url;
    if configured.role == Role::Master && !url.is_empty() && (newer || epochs.master_id != config.node.id) {
        tracing::warn!(
            epoch = %epochs.highest(), master = %url,
            "configured as master, but the epoch file names another master of a newer epoch: following it"
        );
        return RoleState { role: Role::Slave, master_url: url.clone() };
    }
    if configured.role == Role::Master && newer {
        tracing::error!(epoch = %epochs.highest(), "a newer epoch exists and its master is unknown: this node refuses writes; demote it with POST /admin/demote");
    }
    configured
}

/// The snapshot recovery loaded, so an unchanged node does not write it again.
fn newest_snapshot_info(dir: &Path, lsn: Lsn) -> Option<SnapshotInfo> {
    if lsn == Lsn::ZERO {
        return None;
    }
    let (_, path) = list_snapshots(dir).ok()?.into_iter().find(|(l, _)| *l == lsn)?;
    read_snapshot(&path, |_| Ok(())).ok()
}
