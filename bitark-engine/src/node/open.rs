//! Opening a node: recovery, the epoch file, the role it starts in, the writer and
//! snapshotter threads.

use super::{read_role, Inner, LiveFeatures, Node, RoleState};
use crate::apply::StoreApplier;
use crate::config::{EngineConfig, LiveConfig, Role};
use crate::error::OpenError;
use crate::limits::MemoryGuard;
use crate::recovery::recover;
use crate::snapshot_requests::SnapshotRequests;
use crate::snapshotter::Snapshotter;
use crate::state::{Retention, State};
use crate::store::ReadStore;
use bitark_common::Lsn;
use bitark_infra::epoch::{read_epoch_state, write_epoch_state, EpochState};
use bitark_infra::fsutil::create_dir_durable;
use bitark_infra::fullsync::discard_state;
use bitark_infra::snapshot::{list_snapshots, read_snapshot, SnapshotInfo};
use bitark_infra::wal::GroupCommit;
use bitark_infra::{Metrics, StorageError};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Instant;
use tokio::sync::watch;

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
        let (snapshots, snapshot_rx) = SnapshotRequests::channel();
        let state = Arc::new(State {
            store,
            applied,
            durable,
            metrics: metrics.clone(),
            since_snapshot: AtomicU64::new(report.replayed),
            commits: RwLock::new(None),
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
                hub: RwLock::new(None),
                ownership_gate: RwLock::new(()),
                incoming: Default::default(),
                range_requests: arc_swap::ArcSwapOption::empty(),
                group: config.cluster.group_id(),
                shards: Default::default(),
                _lock: lock,
            }),
        })
    }
}

/// Reads `epoch.bin` (under fencing, writing a fresh one when there is none).
pub(super) fn open_epochs(data_dir: &Path, fencing: bool, config: &EngineConfig) -> Result<EpochState, StorageError> {
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
pub(super) fn start_role(config: &EngineConfig, epochs: &EpochState, fencing: bool) -> RoleState {
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
pub(super) fn newest_snapshot_info(dir: &Path, lsn: Lsn) -> Option<SnapshotInfo> {
    if lsn == Lsn::ZERO {
        return None;
    }
    let (_, path) = list_snapshots(dir).ok()?.into_iter().find(|(l, _)| *l == lsn)?;
    read_snapshot(&path, |_| Ok(())).ok()
}
