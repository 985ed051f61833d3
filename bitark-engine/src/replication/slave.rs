//! The slave's side: registering with the master, logging what it sends, and keeping
//! `slave-progress.bin`.
//!
//! The slave registers at start-up and again every `register-interval`. Registration
//! doubles as a keep-alive: a master that restarted has forgotten its slaves, and
//! learns each one's position from the slave itself within one interval. The position
//! reported after a restart is the slave's own: the lower of its progress file and its
//! local log (a progress file ahead of the log means the log lost records, which must
//! come again; one behind it only costs skipped duplicates).
//!
//! A slave takes log batches only from the master it follows: the master id and session
//! of its last accepted registration, which every batch names in its headers. A batch
//! from anyone else is refused and counted; one that arrives before the slave has
//! registered makes it register at once. The answer to each registration also tells the
//! slave how the master sees it: a slave its master cannot bring up to date
//! (NEEDS_FULL_SYNC, DIVERGED) reports itself not ready.

use super::replica::Replica;
use super::status::FullSyncProgress;
use crate::config::ReplicationNow;
use crate::error::ReplicateError;
use bitark_common::replication::{
    AppendResponse, Features, HeartbeatRequest, HeartbeatResponse, RegisterRequest, RegisterResponse, SnapshotRef,
};
use bitark_common::{Lsn, Record};
use bitark_infra::replication::{read_progress, write_progress, BatchSender, ReplicationClient, TransportError};
use bitark_infra::Metrics;
use rand::Rng;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Why a log batch was refused before it was looked at.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SenderRefused {
    /// The slave has not registered with any master yet (it registers now).
    #[error("this slave has not registered with a master yet; it is registering now")]
    NotRegistered,
    /// The batch comes from another master, or another process of it.
    #[error("this slave follows master `{expected_id}` (session {expected_session}); a batch from `{id}` (session {session}) is refused")]
    WrongMaster { id: String, session: String, expected_id: String, expected_session: String },
    /// The batch was meant for an earlier process of this slave.
    #[error("the batch is meant for slave session {meant_for}, this process is session {session}")]
    WrongSession { meant_for: String, session: String },
    /// This node no longer follows that master (it was promoted, or follows another).
    #[error("this node no longer follows a master here")]
    Stopped,
}

impl SenderRefused {
    /// The value of `bitark_replication_appends_refused_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            SenderRefused::NotRegistered => "not_registered",
            SenderRefused::WrongMaster { .. } => "wrong_master",
            SenderRefused::WrongSession { .. } => "wrong_session",
            SenderRefused::Stopped => "stopped",
        }
    }
}

/// The master this slave follows, as its last accepted registration named it.
#[derive(Clone, Debug, Default)]
struct MasterIdentity {
    id: String,
    session: String,
}

/// How the master sees this slave, as of the last registration.
#[derive(Clone, Debug, Default)]
pub struct MasterView {
    /// `ALIVE`, `VERIFYING`, `NEEDS_FULL_SYNC`, `DIVERGED`, ...
    pub state: Option<String>,
    pub reason: Option<String>,
}

impl MasterView {
    /// Why this slave must not be sent reads, if it must not: its master cannot bring
    /// it up to date.
    pub fn not_ready(&self) -> Option<(&'static str, String)> {
        let reason = || self.reason.clone().unwrap_or_default();
        match self.state.as_deref() {
            Some("NEEDS_FULL_SYNC") => Some(("needs_full_sync", reason())),
            Some("OUTDATED") => Some(("outdated", reason())),
            Some("FULL_SYNC_QUEUED") | Some("FULL_SYNCING") => {
                Some(("full_syncing", "a full sync from the master is under way".to_string()))
            }
            Some("DIVERGED") => Some(("diverged", reason())),
            // Stages 1 and 2 cannot send the missing records again.
            Some("GAP") => Some(("gap", reason())),
            _ => None,
        }
    }
}

/// Cheap-to-clone handle on a slave's replication state.
#[derive(Clone)]
pub struct Follower {
    inner: Arc<FollowerInner>,
}

struct FollowerInner {
    /// The node this slave keeps up to date.
    replica: Arc<dyn Replica>,
    /// This slave's own flags; changed while it runs by [`Follower::set_features`].
    features: RwLock<Features>,
    self_url: String,
    /// The master followed: the configured one, or the one a step-down named.
    master_url: String,
    /// Random per follower; a new one after this node cut its log, so the master
    /// follows it from its new position rather than the one it reported before.
    session: Mutex<String>,
    client: ReplicationClient,
    metrics: Metrics,
    data_dir: PathBuf,
    registered: AtomicBool,
    /// The master batches are accepted from. A std `Mutex`: read per batch, written per
    /// registration, never held across an await.
    master: Mutex<Option<MasterIdentity>>,
    /// How the master sees this slave.
    view: Mutex<MasterView>,
    /// Wakes the registration loop for an immediate registration.
    register_now: Notify,
    /// The flags the master and this slave use together, from the last registration.
    negotiated: Mutex<Features>,
    /// When the master last answered (a registration, a heartbeat) or sent a batch.
    master_last_seen: Mutex<Instant>,
    /// A full sync runs (stage 5); at most one at a time.
    full_sync_running: AtomicBool,
    /// What a running full sync is doing, for `/actuator/replication`.
    full_sync: Mutex<Option<FullSyncProgress>>,
    /// The position reported at the first registration of this process.
    resume_from: Lsn,
    /// The LSN last written to `slave-progress.bin` (0 when never).
    progress: AtomicU64,
    /// Set when this follower stops (the node was promoted or follows another master):
    /// its loops end and it accepts no more batches.
    stopped: AtomicBool,
    /// Wakes the loops when the follower stops.
    stopping: Notify,
}

impl Follower {
    /// Reads the progress file, works out where to resume, and starts registering with
    /// the master (and, under `reliable`, keeping the progress file) on the current
    /// runtime.
    pub fn start(replica: impl Replica, self_url: String, client: ReplicationClient, metrics: Metrics) -> Follower {
        let follower = Follower::new(Arc::new(replica), self_url, client, metrics);
        tokio::spawn(follower.clone().register_loop());
        follower
    }

    /// The follower of `replica`, not yet registering: [`Follower::start`] without the
    /// loop.
    pub(crate) fn new(
        replica: Arc<dyn Replica>,
        self_url: String,
        client: ReplicationClient,
        metrics: Metrics,
    ) -> Follower {
        let features = replica.features();
        let data_dir = replica.live_config().load().node.data_dir.clone();
        let applied = replica.applied_lsn();
        let resume_from = if features.reliable {
            match read_progress(&data_dir) {
                Ok(Some(p)) if p.lsn <= applied => {
                    tracing::info!(progress = %p.lsn, %applied, "resuming from slave-progress.bin");
                    p.lsn
                }
                Ok(Some(p)) => {
                    tracing::warn!(
                        progress = %p.lsn, %applied,
                        "slave-progress.bin is ahead of the local log (records were lost locally); resuming from the log"
                    );
                    applied
                }
                Ok(None) => {
                    tracing::warn!(%applied, "no slave-progress.bin; resuming from the local log position");
                    applied
                }
                Err(e) => {
                    tracing::error!(error = %e, %applied, "slave-progress.bin is unreadable; resuming from the local log position");
                    applied
                }
            }
        } else {
            applied
        };
        let master_url = replica.master_url();
        if features.fencing {
            client.set_epoch(replica.epoch().0);
        }
        Follower {
            inner: Arc::new(FollowerInner {
                replica,
                features: RwLock::new(features),
                self_url,
                master_url,
                session: Mutex::new(new_session()),
                client,
                metrics,
                data_dir,
                registered: AtomicBool::new(false),
                master: Mutex::new(None),
                view: Mutex::new(MasterView::default()),
                register_now: Notify::new(),
                negotiated: Mutex::new(Features::default()),
                master_last_seen: Mutex::new(Instant::now()),
                full_sync_running: AtomicBool::new(false),
                full_sync: Mutex::new(None),
                resume_from,
                progress: AtomicU64::new(resume_from.0),
                stopped: AtomicBool::new(false),
                stopping: Notify::new(),
            }),
        }
    }

    /// Stops following: the loops end, batches are refused from now on, the progress
    /// file is written one last time.
    pub fn stop(&self) {
        if self.inner.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        self.inner.registered.store(false, Ordering::Release);
        *self.inner.master.lock().unwrap_or_else(PoisonError::into_inner) = None;
        self.inner.stopping.notify_waiters();
        self.flush_progress();
        tracing::info!(master = %self.inner.master_url, "stopped following the master");
    }

    /// Whether [`Follower::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.inner.stopped.load(Ordering::Acquire)
    }

    /// Sleeps for `wait`, or less when the follower stops; answers whether it runs on.
    pub(crate) async fn pause(&self, wait: Duration) -> bool {
        let stopping = self.inner.stopping.notified();
        if self.is_stopped() {
            return false;
        }
        let _ = tokio::time::timeout(wait, stopping).await;
        !self.is_stopped()
    }

    /// The `replication` section in force now (its reloadable keys change while the
    /// follower runs).
    pub(crate) fn config(&self) -> ReplicationNow {
        ReplicationNow::of(self.inner.replica.live_config())
    }

    pub(crate) fn replica(&self) -> &Arc<dyn Replica> {
        &self.inner.replica
    }

    pub(crate) fn client(&self) -> &ReplicationClient {
        &self.inner.client
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub(crate) fn master_url(&self) -> &str {
        &self.inner.master_url
    }

    /// Notes what a running full sync is doing: `(phase, snapshot, bytes, queue place)`.
    pub(crate) fn set_full_sync(&self, now: Option<(&str, SnapshotRef, u64, Option<u64>)>) {
        let progress = now.map(|(phase, snapshot, bytes, queue_position)| FullSyncProgress {
            phase: phase.to_string(),
            snapshot_lsn: snapshot.lsn,
            bytes,
            size: snapshot.size,
            queue_position,
        });
        *self.inner.full_sync.lock().unwrap_or_else(PoisonError::into_inner) = progress;
    }

    /// A full sync in progress, as this slave sees it.
    pub fn full_sync(&self) -> Option<FullSyncProgress> {
        self.inner.full_sync.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The state is now the snapshot at `lsn`: the progress file names it already.
    pub(crate) fn installed(&self, lsn: Lsn) {
        self.inner.progress.store(lsn.0, Ordering::Release);
    }

    /// Starts a full sync unless one runs or this slave and its master cannot do one.
    fn start_full_sync(&self) {
        let negotiated = *self.inner.negotiated.lock().unwrap_or_else(PoisonError::into_inner);
        if !negotiated.full_sync || self.inner.full_sync_running.swap(true, Ordering::AcqRel) {
            return;
        }
        let follower = self.clone();
        tokio::spawn(async move {
            follower.clone().run_full_sync().await;
            follower.inner.full_sync_running.store(false, Ordering::Release);
        });
    }

    /// Whether the master and this slave use heartbeats (stage 4) together.
    pub(crate) fn uses_heartbeats(&self) -> bool {
        self.is_registered() && self.inner.negotiated.lock().unwrap_or_else(PoisonError::into_inner).heartbeat
    }

    pub(crate) async fn send_heartbeat(&self) -> Result<HeartbeatResponse, TransportError> {
        let inner = &self.inner;
        let request = HeartbeatRequest {
            slave_id: inner.replica.live_config().load().node.id.clone(),
            session: self.session(),
            applied_lsn: inner.replica.applied_lsn().0,
            durable_lsn: inner.replica.durable_lsn().0,
        };
        inner.client.heartbeat(&inner.master_url, &request).await
    }

    /// The master answered, saying how it sees this slave (when it said).
    pub(crate) fn heard_from_master(&self, state: Option<String>, reason: Option<String>) {
        *self.inner.master_last_seen.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
        if state.is_some() {
            self.learn_view(state, reason);
        }
    }

    /// How long ago the master last answered or sent a batch.
    pub fn master_last_seen(&self) -> Duration {
        self.inner.master_last_seen.lock().unwrap_or_else(PoisonError::into_inner).elapsed()
    }

    /// Under heartbeats (stage 4): `Some(silence)` once the master has been unreachable
    /// for `replication.dead-after`.
    pub fn master_unreachable(&self) -> Option<Duration> {
        let silent = self.master_last_seen();
        (self.features().heartbeat && silent >= self.config().dead_after).then_some(silent)
    }

    /// Checks that a batch comes from the master this slave follows, before anything of
    /// it is read. Refusals are counted; one before any registration triggers one.
    pub fn check_sender(&self, sender: &BatchSender<'_>) -> Result<(), SenderRefused> {
        let master = self.inner.master.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let (master_id, session) = (sender.master_id, sender.master_session);
        let refusal = match master {
            None if self.is_stopped() => SenderRefused::Stopped,
            None => SenderRefused::NotRegistered,
            Some(_) if sender.slave_session != self.session() => {
                SenderRefused::WrongSession { meant_for: sender.slave_session.to_string(), session: self.session() }
            }
            Some(m) if m.id == master_id && m.session == session => {
                self.heard_from_master(None, None);
                return Ok(());
            }
            Some(m) => SenderRefused::WrongMaster {
                id: master_id.to_string(),
                session: session.to_string(),
                expected_id: m.id,
                expected_session: m.session,
            },
        };
        self.refused(refusal.reason());
        if refusal == SenderRefused::NotRegistered {
            self.inner.register_now.notify_one();
        }
        Err(refusal)
    }

    /// Counts a batch refused for `reason`.
    pub fn refused(&self, reason: &str) {
        self.inner.metrics.replication_appends_refused.with_label_values(&[reason]).inc();
    }

    /// The session of the master this slave follows (empty before it registered).
    pub fn master_session(&self) -> String {
        let master = self.inner.master.lock().unwrap_or_else(PoisonError::into_inner);
        master.as_ref().map(|m| m.session.clone()).unwrap_or_default()
    }

    /// How the master sees this slave.
    pub fn master_view(&self) -> MasterView {
        self.inner.view.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Registers now rather than at the next interval (a master asked).
    pub fn register_now(&self) {
        self.inner.register_now.notify_one();
    }

    /// Logs and applies a batch from the master; answers the new `ackLsn`.
    pub async fn append(&self, records: Vec<Record>) -> Result<AppendResponse, ReplicateError> {
        let fencing = self.inner.negotiated.lock().unwrap_or_else(PoisonError::into_inner).fencing;
        let outcome = self.inner.replica.replicate_from(records, fencing).await?;
        let m = &self.inner.metrics;
        m.replication_duplicates_skipped.inc_by(outcome.skipped);
        Ok(AppendResponse { ack_lsn: outcome.last.0, skipped: outcome.skipped })
    }

    /// Counts a batch refused for a bad checksum.
    pub fn crc_failure(&self) {
        self.inner.metrics.replication_crc_failures.inc();
    }

    /// The flags this slave runs with.
    pub fn features(&self) -> Features {
        *self.inner.features.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs with `features` from now on and registers again at once, in the same
    /// session, so the master renegotiates the link without losing a batch in flight.
    pub fn set_features(&self, features: Features) {
        *self.inner.features.write().unwrap_or_else(PoisonError::into_inner) = features;
        if features.fencing {
            self.inner.client.set_epoch(self.inner.replica.epoch().0);
        }
        self.register_now();
    }

    /// The session of this slave process.
    pub fn session(&self) -> String {
        self.inner.session.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn is_registered(&self) -> bool {
        self.inner.registered.load(Ordering::Acquire)
    }

    /// The LSN last written to `slave-progress.bin`, under `reliable`.
    pub fn progress_lsn(&self) -> Option<u64> {
        self.features().reliable.then(|| self.inner.progress.load(Ordering::Acquire))
    }

    /// Writes the progress file one last time (shutdown).
    pub fn flush_progress(&self) {
        if self.features().reliable {
            self.write_progress_now();
        }
    }

    /// The master accepted a registration: batches are taken from it (and its session)
    /// from now on, with the flags it negotiated.
    fn registered_with(&self, answer: &RegisterResponse) {
        let identity = MasterIdentity { id: answer.master_id.clone(), session: answer.session.clone() };
        *self.inner.master.lock().unwrap_or_else(PoisonError::into_inner) = Some(identity);
        *self.inner.negotiated.lock().unwrap_or_else(PoisonError::into_inner) = answer.features;
        self.heard_from_master(Some(answer.state.clone()), answer.reason.clone());
    }

    async fn register_loop(self) {
        let inner = &self.inner;
        let mut first = true;
        while !self.is_stopped() {
            let applied = if first { inner.resume_from } else { inner.replica.applied_lsn() };
            let request = RegisterRequest {
                slave_id: inner.replica.live_config().load().node.id.clone(),
                url: inner.self_url.clone(),
                applied_lsn: applied.0,
                features: self.features(),
                session: self.session(),
            };
            match inner.client.register(&inner.master_url, &request).await {
                Ok(answer) if self.is_stopped() => drop(answer),
                Ok(answer) => {
                    first = false;
                    match self.adopt(&answer).await {
                        Ok(false) => {}
                        // The log was cut back: register again at once from the new
                        // position, as a new session, which the master follows from there.
                        Ok(true) => {
                            self.new_session_after_cut().await;
                            continue;
                        }
                        Err(e) => {
                            tracing::error!(master = %answer.master_id, error = %e, "not following this master");
                            inner.registered.store(false, Ordering::Release);
                            if !self.pause(ReplicationNow::of(inner.replica.live_config()).register_interval).await {
                                return;
                            }
                            continue;
                        }
                    }
                    if !inner.registered.swap(true, Ordering::AcqRel) {
                        tracing::info!(
                            master = %answer.master_id, url = %inner.master_url, from = %applied,
                            features = ?answer.features.enabled(), state = %answer.state, "registered with the master"
                        );
                    }
                    self.registered_with(&answer);
                }
                Err(refused @ TransportError::Refused { status: 409, .. }) => {
                    // The master refuses this slave: say so, and keep asking.
                    let (code, message) = refused.error_body();
                    // Ahead of the master under fencing: records of an epoch the master
                    // ended earlier. Ask where it ended, cut, and register again from there.
                    if code.as_deref() == Some("diverged") && self.features().fencing {
                        match self.adopt_from_epochs().await {
                            Ok(true) => {
                                first = false;
                                self.new_session_after_cut().await;
                                continue;
                            }
                            Ok(false) => {}
                            Err(e) => tracing::error!(error = %e, "cannot take the master's epoch history"),
                        }
                    }
                    if code.as_deref() == Some("diverged") {
                        self.heard_from_master(Some("DIVERGED".into()), message.clone());
                    }
                    if inner.registered.swap(false, Ordering::AcqRel) || first {
                        tracing::error!(url = %inner.master_url, code = ?code, reason = ?message, "the master refuses this slave");
                    }
                    first = false;
                }
                Err(e) => {
                    if inner.registered.swap(false, Ordering::AcqRel) {
                        tracing::warn!(url = %inner.master_url, error = %e, "lost contact with the master");
                    } else {
                        tracing::debug!(url = %inner.master_url, error = %e, "master not reachable yet");
                    }
                }
            }
            // Jittered, so that slaves that lost their master together do not come back
            // together.
            let wait = ReplicationNow::of(inner.replica.live_config())
                .register_interval
                .mul_f64(rand::thread_rng().gen_range(0.8..1.2));
            let stopping = inner.stopping.notified();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = inner.register_now.notified() => {}
                _ = stopping => {}
            }
        }
    }

    /// After the log was cut back: the next registration is a new session, which the
    /// master follows from the new position.
    async fn new_session_after_cut(&self) {
        let inner = &self.inner;
        *inner.session.lock().unwrap_or_else(PoisonError::into_inner) = new_session();
        *inner.master.lock().unwrap_or_else(PoisonError::into_inner) = None;
        if self.features().reliable {
            let this = self.clone();
            let _ = tokio::task::spawn_blocking(move || this.write_progress_now()).await;
        }
    }

    /// Asks the master for its epoch history (`GET /internal/replication/epochs`) and
    /// adopts it, cutting what it does not hold. Answers whether the log was cut.
    async fn adopt_from_epochs(&self) -> Result<bool, crate::error::RoleError> {
        let inner = &self.inner;
        let answer = inner.client.epochs(&inner.master_url).await.map_err(|e| {
            crate::error::RoleError::Unreachable { url: inner.master_url.clone(), reason: e.to_string() }
        })?;
        let replica = inner.replica.clone();
        let url = inner.master_url.clone();
        let cut = tokio::task::spawn_blocking(move || replica.adopt_history(&answer.history, &answer.node_id, &url))
            .await
            .map_err(|e| crate::error::RoleError::Busy(format!("adopting the epoch history stopped: {e}")))??;
        inner.client.set_epoch(inner.replica.epoch().0);
        Ok(cut.is_some())
    }

    /// Under fencing, adopts the epoch history the master answered with before a batch
    /// of it is taken: cuts this node's own records the history does not hold. Answers
    /// whether the log was cut (the position to register from changed).
    async fn adopt(&self, answer: &RegisterResponse) -> Result<bool, crate::error::RoleError> {
        let inner = &self.inner;
        let Some(history) = answer.history.clone().filter(|_| self.features().fencing && answer.features.fencing)
        else {
            return Ok(false);
        };
        let replica = inner.replica.clone();
        let (master_id, url) = (answer.master_id.clone(), inner.master_url.clone());
        let cut = tokio::task::spawn_blocking(move || replica.adopt_history(&history, &master_id, &url))
            .await
            .map_err(|e| crate::error::RoleError::Busy(format!("adopting the epoch history stopped: {e}")))??;
        inner.client.set_epoch(inner.replica.epoch().0);
        Ok(cut.is_some())
    }

    fn learn_view(&self, state: Option<String>, reason: Option<String>) {
        if matches!(state.as_deref(), Some("NEEDS_FULL_SYNC") | Some("OUTDATED")) {
            self.start_full_sync();
        }
        let mut view = self.inner.view.lock().unwrap_or_else(PoisonError::into_inner);
        if view.state != state {
            match state.as_deref() {
                Some("NEEDS_FULL_SYNC") | Some("DIVERGED") | Some("GAP") => tracing::error!(
                    state = ?state, reason = ?reason,
                    "the master cannot bring this slave up to date: not ready (see the README on recovering a slave)"
                ),
                _ => tracing::info!(state = ?state, "state at the master"),
            }
        }
        *view = MasterView { state, reason };
    }

    async fn progress_loop(self) {
        while self.pause(self.config().progress_flush).await {
            // Under `reliable` only, which may be turned on and off while the node runs.
            if self.features().reliable
                && self.inner.replica.applied_lsn().0 > self.inner.progress.load(Ordering::Acquire)
            {
                let this = self.clone();
                let _ = tokio::task::spawn_blocking(move || this.write_progress_now()).await;
            }
        }
    }

    fn write_progress_now(&self) {
        let applied = self.inner.replica.applied_lsn();
        match write_progress(&self.inner.data_dir, applied) {
            Ok(_) => self.inner.progress.store(applied.0, Ordering::Release),
            Err(e) => tracing::error!(error = %e, "cannot write slave-progress.bin"),
        }
    }
}

/// A random follower session.
fn new_session() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Stage 3: the slave keeps its position in `slave-progress.bin`, rewritten at most every
/// `replication.progress-flush`.
pub(crate) fn start_progress_file(follower: &Follower) {
    tokio::spawn(follower.clone().progress_loop());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{EngineConfig, LiveConfig};
    use crate::error::RoleError;
    use crate::replication::replica::ReplicaFuture;
    use bitark_common::{Command, Epoch, EpochHistory};
    use bitark_infra::snapshot::SnapshotInfo;
    use bitark_infra::wal::{AppendOutcome, CutReport};
    use bitark_infra::StorageError;
    use prometheus::Registry;
    use std::path::Path;

    /// The LSNs of each batch a replica was given, with whether epochs were checked.
    type Calls = Arc<Mutex<Vec<(Vec<u64>, bool)>>>;

    /// An in-memory replica: a log end, and the batches it was given with the epoch
    /// check asked for each.
    struct FakeReplica {
        config: LiveConfig,
        applied: Mutex<Lsn>,
        calls: Calls,
    }

    impl Replica for FakeReplica {
        fn live_config(&self) -> &LiveConfig {
            &self.config
        }
        fn applied_lsn(&self) -> Lsn {
            *self.applied.lock().unwrap()
        }
        fn durable_lsn(&self) -> Lsn {
            self.applied_lsn()
        }
        fn epoch(&self) -> Epoch {
            Epoch(1)
        }
        fn features(&self) -> Features {
            Features::default()
        }
        fn master_url(&self) -> String {
            "http://master.invalid".into()
        }
        fn replicate_from(
            &self,
            records: Vec<Record>,
            check_epochs: bool,
        ) -> ReplicaFuture<'_, Result<AppendOutcome, ReplicateError>> {
            Box::pin(async move {
                self.calls.lock().unwrap().push((records.iter().map(|r| r.lsn.0).collect(), check_epochs));
                let mut applied = self.applied.lock().unwrap();
                // What the log does: records at or below its end are skipped.
                let skipped = records.iter().filter(|r| r.lsn <= *applied).count() as u64;
                *applied = records.iter().map(|r| r.lsn).max().unwrap_or(*applied).max(*applied);
                Ok(AppendOutcome { last: *applied, skipped })
            })
        }
        fn adopt_history(&self, _: &EpochHistory, _: &str, _: &str) -> Result<Option<CutReport>, RoleError> {
            Ok(None)
        }
        fn install_snapshot(&self, downloaded: &Path) -> Result<SnapshotInfo, StorageError> {
            Err(StorageError::io(downloaded, std::io::Error::other("no snapshots here")))
        }
    }

    fn follower(applied: u64) -> (Follower, Calls, Metrics) {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let replica = FakeReplica {
            config: Arc::new(arc_swap::ArcSwap::from_pointee(EngineConfig::default())),
            applied: Mutex::new(Lsn(applied)),
            calls: calls.clone(),
        };
        let metrics = Metrics::new(Registry::new()).unwrap();
        let client = ReplicationClient::new(Duration::from_secs(1), None);
        (Follower::new(Arc::new(replica), "http://slave.invalid".into(), client, metrics.clone()), calls, metrics)
    }

    fn answer(master_id: &str, session: &str, features: Features) -> RegisterResponse {
        RegisterResponse {
            master_id: master_id.into(),
            features,
            durable_lsn: 0,
            session: session.into(),
            state: "ALIVE".into(),
            reason: None,
            history: None,
        }
    }

    fn from<'a>(master_id: &'a str, master_session: &'a str, slave_session: &'a str) -> BatchSender<'a> {
        BatchSender { master_id, master_session, slave_session }
    }

    fn refusals(metrics: &Metrics, reason: &str) -> u64 {
        metrics.replication_appends_refused.with_label_values(&[reason]).get()
    }

    fn records(lsns: std::ops::RangeInclusive<u64>) -> Vec<Record> {
        lsns.map(|lsn| Record {
            epoch: Epoch(1),
            lsn: Lsn(lsn),
            time: 0,
            command: Command::MarkRead { user: 1, msg: lsn },
        })
        .collect()
    }

    #[test]
    fn a_batch_before_any_registration_is_refused_and_asks_for_one() {
        let (follower, _, metrics) = follower(0);
        let session = follower.session();
        let refused = follower.check_sender(&from("m1", "s1", &session)).unwrap_err();
        assert_eq!(refused, SenderRefused::NotRegistered);
        assert_eq!(refusals(&metrics, refused.reason()), 1);
    }

    #[test]
    fn only_the_registered_master_process_is_followed() {
        let (follower, _, metrics) = follower(0);
        follower.registered_with(&answer("m1", "s1", Features::default()));
        let session = follower.session();
        follower.check_sender(&from("m1", "s1", &session)).unwrap();
        for (id, master_session) in [("m2", "s1"), ("m1", "s2")] {
            let refused = follower.check_sender(&from(id, master_session, &session)).unwrap_err();
            assert!(matches!(refused, SenderRefused::WrongMaster { .. }), "{id}/{master_session}: {refused:?}");
        }
        assert_eq!(refusals(&metrics, "wrong_master"), 2);
    }

    #[test]
    fn a_batch_meant_for_an_earlier_process_of_this_slave_is_refused() {
        let (follower, _, _) = follower(0);
        follower.registered_with(&answer("m1", "s1", Features::default()));
        let refused = follower.check_sender(&from("m1", "s1", "an-earlier-session")).unwrap_err();
        assert!(matches!(refused, SenderRefused::WrongSession { .. }), "{refused:?}");
    }

    #[test]
    fn a_stopped_follower_takes_no_batch() {
        let (follower, _, _) = follower(0);
        follower.registered_with(&answer("m1", "s1", Features::default()));
        follower.stop();
        let session = follower.session();
        assert_eq!(follower.check_sender(&from("m1", "s1", &session)), Err(SenderRefused::Stopped));
    }

    #[tokio::test]
    async fn records_received_again_are_counted_as_skipped_and_epochs_checked_only_under_fencing() {
        let (follower, calls, metrics) = follower(5);
        follower.registered_with(&answer("m1", "s1", Features::default()));
        let response = follower.append(records(3..=8)).await.unwrap();
        assert_eq!((response.ack_lsn, response.skipped), (8, 3));
        assert_eq!(metrics.replication_duplicates_skipped.get(), 3);

        let fencing = Features { fencing: true, ..Features::default() };
        follower.registered_with(&answer("m1", "s1", fencing));
        follower.append(records(9..=9)).await.unwrap();
        let calls = calls.lock().unwrap().clone();
        assert_eq!(calls, [(vec![3, 4, 5, 6, 7, 8], false), (vec![9], true)]);
    }
}
