//! The group-commit writer.
//!
//! One thread owns the open segment. Writers hand it [`Proposal`]s through a bounded
//! channel; the thread takes the first proposal, drains whatever else is already
//! waiting (up to `max-batch-records`), stamps consecutive LSNs, writes the whole batch
//! with one `write` and makes it durable with one `fdatasync`. Only then does it give the
//! batch to the [`Applier`] (which makes it visible to readers) and answer every
//! proposal. While one fsync runs, the next batch queues up, so batches grow with load.
//!
//! A plain thread and a std channel, not a tokio task: fsync blocks for milliseconds and
//! must not hold a runtime worker. Replies go back on tokio oneshots so async handlers
//! can await them.
//!
//! # When something fails
//! The answer to a failed write always says whether it is in the log:
//! - **Not logged** ([`ProposeError::NoSpace`], [`ProposeError::Io`]): the space for the
//!   batch could not be reserved (a full disk or quota shows up here, before anything is
//!   written), or the `write` itself failed, in which case whatever part of the batch
//!   reached the file is overwritten with zeros and synced before anyone is answered. The
//!   log is intact; the writer is [`WalHealth::Degraded`] and tries again with every new
//!   batch and every `wal.retry-interval`, so writes resume by themselves once space is
//!   back.
//! - **Outcome unknown** ([`ProposeError::Unknown`]): the batch was written but its
//!   `fsync` failed. After a failed fsync the kernel may have dropped the pages it could
//!   not write, so nothing tells whether the batch (or anything written since the last
//!   good fsync) will be there after a restart. The writer stops for good
//!   ([`WalHealth::Failed`]) and every later write is refused until the node restarts and
//!   recovery reads what the disk really holds.
//! - The writer thread dying (a panic) also leaves the log [`WalHealth::Failed`].

use crate::config::{FsyncPolicy, WalConfig};
use crate::error::StorageError;
use crate::fsutil::fsync_dir_file;
use crate::metrics::Metrics;
use crate::wal::active::{ActiveSegment, Spare};
use crate::wal::segment::{list_segments, segment_name};
use bitark_common::{Command, Epoch, Lsn, Record};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Receives each batch once it is logged, in LSN order, on the writer thread.
pub trait Applier: Send + 'static {
    /// Applies a logged batch. Under `fsync: batch` it is durable already; under
    /// `interval` and `never` it becomes durable later ([`Applier::durable`] says when).
    /// Applying must not fail: commands were validated before they were proposed.
    fn apply(&mut self, records: &[Record]);

    /// Everything up to `lsn` is on stable storage.
    fn durable(&mut self, lsn: Lsn) {
        let _ = lsn;
    }
}

/// Why a proposal was not logged, or not known to be.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ProposeError {
    #[error("the write queue is full")]
    Overloaded,
    #[error("the write-ahead log is shut down")]
    Closed,
    /// Not logged: the disk (or quota) holding the log is full.
    #[error("{0}")]
    NoSpace(String),
    /// Not logged: writing the log failed.
    #[error("{0}")]
    Io(String),
    /// Written, but its fsync failed: it may or may not be present after a restart.
    #[error("{0}")]
    Unknown(String),
    /// The log stopped after an earlier failure; nothing more is accepted until restart.
    #[error("{0}")]
    Failed(String),
    #[error("records must continue the log at LSN {expected}, found LSN {found}")]
    Gap { expected: Lsn, found: Lsn },
    /// Not acknowledged: the node learned of a newer epoch (another master exists) and
    /// takes no more writes of its own. A record written as the fence went up stays in
    /// the log only until the node steps down and cuts its tail.
    #[error("this node no longer accepts writes: a newer epoch exists and another node is master")]
    Fenced,
    /// Not acknowledged: under failover, the master's leader lease in etcd could not be
    /// renewed in time, so another node may be master by now.
    #[error(
        "this master's leader lease in etcd was not renewed in time; it takes no writes until it is \
         (another node may be master by now)"
    )]
    LeaseLapsed,
}

/// Whether the log accepts writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalHealth {
    Healthy,
    /// The last write could not be logged (`no_space`: the disk or quota is full). The
    /// log is intact and writes are retried; they resume once the cause is gone.
    Degraded {
        reason: String,
        no_space: bool,
    },
    /// An fsync failed or the writer thread died: the node must be restarted.
    Failed {
        reason: String,
    },
}

/// A command waiting to be logged, and where to send its LSN.
pub struct Proposal {
    pub command: Command,
    pub reply: oneshot::Sender<Result<Lsn, ProposeError>>,
}

/// Records another node already stamped with LSNs (a slave logging its master's log),
/// and where to send the outcome.
pub struct Replicated {
    pub records: Vec<Record>,
    pub reply: oneshot::Sender<Result<AppendOutcome, ProposeError>>,
}

/// What logging a batch of replicated records did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendOutcome {
    /// The last LSN now logged and applied.
    pub last: Lsn,
    /// Records of the batch at or below the log's end, already applied and skipped.
    pub skipped: u64,
}

/// Work a [`WalHandle::reset`] runs on the writer thread while no segment is open.
pub type ResetWork = Box<dyn FnOnce() -> Result<(), StorageError> + Send>;

/// Work a [`WalHandle::begin_epoch`] runs on the writer thread, given the first LSN of
/// the new epoch, before any record of it is written.
pub type EpochWork = Box<dyn FnOnce(Lsn) -> Result<(), StorageError> + Send>;

enum Msg {
    Propose(Proposal),
    Append(Replicated),
    /// Close every segment, run the work (it replaces the log), and start an empty log
    /// at the LSN given.
    Reset(Lsn, ResetWork, oneshot::Sender<Result<(), StorageError>>),
    /// Run the work (it records the epoch durably), then stamp new records with it.
    Epoch(Epoch, EpochWork, oneshot::Sender<Result<Lsn, StorageError>>),
    /// Make everything written durable now; answer the durable LSN.
    Sync(Option<oneshot::Sender<Lsn>>),
    Shutdown,
}

/// Cheap-to-clone handle for proposing commands to the writer thread.
#[derive(Clone)]
pub struct WalHandle {
    tx: SyncSender<Msg>,
    shared: Arc<Shared>,
}

struct Shared {
    /// Highest LSN known to be on stable storage. Atomic because readers (metrics,
    /// replication) look at it without talking to the writer thread.
    durable: AtomicU64,
    /// Set once the log has failed for good; proposals are refused at once.
    failed: AtomicBool,
    /// The current health, with its reason. A std `Mutex`: read by health checks and
    /// written by the writer thread on a state change only.
    health: Mutex<WalHealth>,
    /// A `Sync` message is queued; further requests need not queue another.
    sync_queued: AtomicBool,
    /// Set by `shutdown`, so the writer's exit is not taken for a crash.
    stopping: AtomicBool,
    /// Set while the node must not take writes of its own (a newer epoch exists):
    /// proposals are refused, replicated records still go in.
    fenced: AtomicBool,
    /// Under failover: the node's own writes are taken only before this instant,
    /// milliseconds after `origin` (`u64::MAX`: no lease bounds them).
    lease_until: AtomicU64,
    origin: Instant,
    /// The writer thread, joined on shutdown.
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Shared {
    fn lease_lapsed(&self) -> bool {
        let until = self.lease_until.load(Ordering::Acquire);
        until != u64::MAX && self.origin.elapsed().as_millis() as u64 >= until
    }

    /// Why the node's own writes are refused now, if they are.
    fn own_write_refusal(&self) -> Option<ProposeError> {
        if self.fenced.load(Ordering::Acquire) {
            Some(ProposeError::Fenced)
        } else if self.lease_lapsed() {
            Some(ProposeError::LeaseLapsed)
        } else {
            None
        }
    }

    fn set_health(&self, health: WalHealth, metrics: &Metrics) {
        metrics.wal_writable.set(i64::from(health == WalHealth::Healthy));
        if let WalHealth::Failed { .. } = health {
            self.failed.store(true, Ordering::Release);
        }
        *self.health.lock().unwrap_or_else(PoisonError::into_inner) = health;
    }

    fn health(&self) -> WalHealth {
        self.health.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Why the writer no longer takes a message: failed, or shut down. A writer that
    /// went away without being asked to has crashed, even if its guard has not said so
    /// yet (it runs after everything the thread held has been dropped, so a caller can
    /// see its reply dropped first): the crash is recorded here at once, so a health
    /// check made after this answer never reports the log healthy.
    fn failure(&self) -> ProposeError {
        match self.health() {
            WalHealth::Failed { reason } => ProposeError::Failed(reason),
            _ if !self.stopping.load(Ordering::Acquire) => {
                self.failed.store(true, Ordering::Release);
                *self.health.lock().unwrap_or_else(PoisonError::into_inner) =
                    WalHealth::Failed { reason: CRASHED.into() };
                ProposeError::Failed(CRASHED.into())
            }
            _ => ProposeError::Closed,
        }
    }
}

impl WalHandle {
    /// Queues a command. The receiver answers with its LSN once logged and applied.
    pub fn propose(&self, command: Command) -> Result<oneshot::Receiver<Result<Lsn, ProposeError>>, ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.send(Msg::Propose(Proposal { command, reply }))?;
        Ok(rx)
    }

    /// Queues a message for the writer thread without waiting.
    fn send(&self, msg: Msg) -> Result<(), ProposeError> {
        if self.shared.failed.load(Ordering::Acquire) {
            return Err(self.shared.failure());
        }
        match self.tx.try_send(msg) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(ProposeError::Overloaded),
            Err(TrySendError::Disconnected(_)) => Err(self.shared.failure()),
        }
    }

    /// Queues records that already carry their LSNs (replication). Records at or below
    /// the log's end are skipped; the rest must continue it without a gap.
    pub fn append(
        &self,
        records: Vec<Record>,
    ) -> Result<oneshot::Receiver<Result<AppendOutcome, ProposeError>>, ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.send(Msg::Append(Replicated { records, reply }))?;
        Ok(rx)
    }

    /// Asks the writer to make what it wrote durable soon, without waiting (under
    /// `fsync: interval | never`, for whoever may only use durable records).
    pub fn request_sync(&self) {
        if !self.shared.sync_queued.swap(true, Ordering::AcqRel) && self.tx.try_send(Msg::Sync(None)).is_err() {
            self.shared.sync_queued.store(false, Ordering::Release);
        }
    }

    /// Makes everything written so far durable and answers the durable LSN. Blocking:
    /// for threads outside the async runtime.
    pub fn sync_blocking(&self) -> Result<Lsn, ProposeError> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Msg::Sync(Some(reply))).is_err() {
            return Err(self.shared.failure());
        }
        rx.blocking_recv().map_err(|_| self.shared.failure())
    }

    /// Replaces the whole log: once every write queued before it is done, the writer
    /// closes its segments, runs `work` (which deletes or replaces them) and goes on with
    /// an empty log whose next record is `next`. If `work` fails the log stops (the node
    /// must restart and recover what is on disk). Blocking.
    pub fn reset(&self, next: Lsn, work: ResetWork) -> Result<(), StorageError> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Msg::Reset(next, work, reply)).is_err() {
            return Err(StorageError::Closed);
        }
        rx.blocking_recv().unwrap_or(Err(StorageError::Closed))
    }

    /// Once every write queued before it is done, runs `work` with the next LSN (it
    /// records the new epoch durably) and stamps every later record with `epoch`.
    /// Answers the first LSN of the new epoch. Blocking.
    pub fn begin_epoch(&self, epoch: Epoch, work: EpochWork) -> Result<Lsn, StorageError> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Msg::Epoch(epoch, work, reply)).is_err() {
            return Err(StorageError::Closed);
        }
        rx.blocking_recv().unwrap_or(Err(StorageError::Closed))
    }

    /// Refuses (`true`) or takes again (`false`) the node's own writes from now on:
    /// a proposal not yet answered when the fence goes up is answered
    /// [`ProposeError::Fenced`], even if its record was already written.
    pub fn set_fenced(&self, fenced: bool) {
        self.shared.fenced.store(fenced, Ordering::Release);
    }

    /// Whether the node's own writes are refused.
    pub fn is_fenced(&self) -> bool {
        self.shared.fenced.load(Ordering::Acquire)
    }

    /// Under failover: the node's own writes are taken only before `until` (the
    /// leader lease, less a margin); `None` lifts the bound. A proposal answered at or
    /// after it gets [`ProposeError::LeaseLapsed`], even if its record was written.
    pub fn set_lease_deadline(&self, until: Option<Instant>) {
        let millis = until.map_or(u64::MAX, |t| t.saturating_duration_since(self.shared.origin).as_millis() as u64);
        self.shared.lease_until.store(millis, Ordering::Release);
    }

    /// Whether the node's own writes are refused for want of a renewed lease.
    pub fn lease_lapsed(&self) -> bool {
        self.shared.lease_lapsed()
    }

    /// Highest LSN known to be durable.
    pub fn durable_lsn(&self) -> Lsn {
        Lsn(self.shared.durable.load(Ordering::Acquire))
    }

    /// Whether the log accepts writes, and why not.
    pub fn health(&self) -> WalHealth {
        self.shared.health()
    }

    /// The error for a proposal whose reply was dropped unanswered: the writer stopped.
    pub fn stopped_error(&self) -> ProposeError {
        self.shared.failure()
    }

    /// Finishes every proposal queued so far, fsyncs, and stops the writer thread.
    pub fn shutdown(&self) {
        self.shared.stopping.store(true, Ordering::Release);
        // A full queue still drains, so a blocking send terminates.
        let _ = self.tx.send(Msg::Shutdown);
        let thread = self.shared.thread.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

/// Starts the group-commit writer.
pub struct GroupCommit;

impl GroupCommit {
    /// Opens the log in `dir` for appending records from `next_lsn` on (recovery has
    /// already cut any torn tail) and starts the writer thread.
    pub fn start(
        dir: &Path,
        config: &WalConfig,
        next_lsn: Lsn,
        epoch: Epoch,
        applier: impl Applier,
        metrics: Metrics,
    ) -> Result<WalHandle, StorageError> {
        let segment_size = config.segment_size.as_u64();
        let active = ActiveSegment::open(dir, next_lsn, segment_size)?;
        let dir_file = File::open(dir).map_err(|e| StorageError::io(dir, e))?;
        let spare = Spare::create(dir, segment_size)
            .inspect_err(|e| tracing::warn!(error = %e, "cannot prepare the next WAL segment yet; will retry"))
            .ok();
        let spare_failing = spare.is_none();
        metrics.wal_segments.set(list_segments(dir)?.len() as i64);
        let (tx, rx) = mpsc::sync_channel(config.queue_capacity);
        let shared = Arc::new(Shared {
            durable: AtomicU64::new(next_lsn.0 - 1),
            failed: AtomicBool::new(false),
            health: Mutex::new(WalHealth::Healthy),
            sync_queued: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            fenced: AtomicBool::new(false),
            lease_until: AtomicU64::new(u64::MAX),
            origin: Instant::now(),
            thread: Mutex::new(None),
        });
        metrics.lsn_durable.set(next_lsn.0 as i64 - 1);
        metrics.wal_writable.set(1);
        let mut writer = Writer {
            dir: dir.to_path_buf(),
            dir_file,
            config: config.clone(),
            active,
            spare,
            spare_failing,
            probe: None,
            rotation_retry_at: None,
            next_lsn,
            epoch,
            applier,
            metrics,
            shared: shared.clone(),
            last_sync: Instant::now(),
            dirty: false,
            pending_durable: Lsn(next_lsn.0 - 1),
            last_time: 0,
            buf: Vec::with_capacity(1 << 20),
        };
        let guard = CrashGuard(shared.clone(), writer.metrics.clone());
        let thread = std::thread::Builder::new()
            .name("wal-writer".into())
            .spawn(move || {
                let _guard = guard;
                writer.run(rx)
            })
            .map_err(|e| StorageError::io(dir, e))?;
        *shared.thread.lock().unwrap_or_else(PoisonError::into_inner) = Some(thread);
        Ok(WalHandle { tx, shared })
    }
}

const CRASHED: &str = "the write-ahead log writer stopped unexpectedly; restart the node";

/// Marks the log failed if the writer thread ends other than by `shutdown` (a panic).
struct CrashGuard(Arc<Shared>, Metrics);

impl Drop for CrashGuard {
    fn drop(&mut self) {
        if !self.0.stopping.load(Ordering::Acquire) || std::thread::panicking() {
            // Lets a test hold the report back, as a slow unwind would.
            fail::fail_point!("wal::before-crash-report");
            tracing::error!("the WAL writer thread stopped unexpectedly; writes are refused until restart");
            self.1.wal_failures.with_label_values(&["crash"]).inc();
            self.0.set_health(WalHealth::Failed { reason: CRASHED.into() }, &self.1);
        }
    }
}

struct Writer<A> {
    dir: PathBuf,
    /// The WAL directory, kept open so rotation can fsync it without a new descriptor.
    dir_file: File,
    config: WalConfig,
    active: ActiveSegment,
    /// The preallocated next segment, when one could be made.
    spare: Option<Spare>,
    /// Making the spare failed last time (logged once until it works again).
    spare_failing: bool,
    /// While degraded: what to try to find out whether writing works again.
    probe: Option<Probe>,
    /// A rotation failed; do not try again before this.
    rotation_retry_at: Option<Instant>,
    next_lsn: Lsn,
    epoch: Epoch,
    applier: A,
    metrics: Metrics,
    shared: Arc<Shared>,
    last_sync: Instant,
    /// Bytes written since the last fsync.
    dirty: bool,
    /// Last LSN written; becomes the durable LSN at the next fsync.
    pending_durable: Lsn,
    /// The commit time of the last batch this writer stamped, so that a clock stepping
    /// back never makes a later batch look older.
    last_time: u64,
    buf: Vec<u8>,
}

impl<A: Applier> Writer<A> {
    fn run(&mut self, rx: mpsc::Receiver<Msg>) {
        let mut batch = Vec::with_capacity(self.config.max_batch_records);
        loop {
            let mut stopping = false;
            let mut replicated = None;
            match rx.recv_timeout(self.idle_wait()) {
                Ok(Msg::Propose(p)) => batch.push(p),
                Ok(Msg::Append(r)) => replicated = Some(r),
                Ok(Msg::Sync(reply)) => {
                    self.sync_now(reply);
                    continue;
                }
                Ok(Msg::Reset(next, work, reply)) => {
                    let _ = reply.send(self.reset(next, work));
                    continue;
                }
                Ok(Msg::Epoch(epoch, work, reply)) => {
                    let _ = reply.send(self.begin_epoch(epoch, work));
                    continue;
                }
                Ok(Msg::Shutdown) | Err(RecvTimeoutError::Disconnected) => stopping = true,
                Err(RecvTimeoutError::Timeout) => {
                    self.on_idle();
                    continue;
                }
            }
            let mut sync = None;
            let mut reset = None;
            let mut new_epoch = None;
            while !stopping && replicated.is_none() && batch.len() < self.config.max_batch_records {
                match rx.try_recv() {
                    Ok(Msg::Propose(p)) => batch.push(p),
                    Ok(Msg::Append(r)) => replicated = Some(r),
                    Ok(Msg::Sync(reply)) => {
                        sync = Some(reply);
                        break;
                    }
                    Ok(Msg::Reset(next, work, reply)) => {
                        // Rare: finish this batch first, then reset.
                        reset = Some((next, work, reply));
                        break;
                    }
                    Ok(Msg::Epoch(epoch, work, reply)) => {
                        // Rare: this batch belongs to the epoch before.
                        new_epoch = Some((epoch, work, reply));
                        break;
                    }
                    Ok(Msg::Shutdown) => stopping = true,
                    Err(_) => break,
                }
            }
            fail::fail_point!("wal::writer-panic", |_| panic!("injected panic at wal::writer-panic"));
            if !batch.is_empty() {
                self.commit(&mut batch);
            }
            if let Some(r) = replicated {
                self.commit_replicated(r);
            }
            if let Some(reply) = sync {
                self.sync_now(reply);
            }
            if let Some((next, work, reply)) = reset {
                let _ = reply.send(self.reset(next, work));
            }
            if let Some((epoch, work, reply)) = new_epoch {
                let _ = reply.send(self.begin_epoch(epoch, work));
            }
            if self.config.fsync == FsyncPolicy::Interval {
                self.sync_if_due();
            }
            if stopping {
                self.stop(&rx);
                return;
            }
        }
    }

    fn idle_wait(&self) -> Duration {
        let mut wait = Duration::from_secs(3600);
        if self.config.fsync == FsyncPolicy::Interval {
            wait = wait.min(self.config.fsync_interval);
        }
        if self.is_degraded() || self.rotation_retry_at.is_some() || self.spare.is_none() {
            wait = wait.min(self.config.retry_interval);
        }
        wait
    }

    fn on_idle(&mut self) {
        self.sync_if_due();
        if self.is_degraded() {
            self.recover_if_possible();
        }
        if self.spare.is_none() && !self.shared.failed.load(Ordering::Acquire) {
            self.prepare_spare();
        }
    }

    /// Answers what raced in behind the shutdown, then makes everything durable.
    fn stop(&mut self, rx: &mpsc::Receiver<Msg>) {
        while let Ok(msg) = rx.try_recv() {
            match msg {
                Msg::Propose(p) => drop(p.reply.send(Err(ProposeError::Closed))),
                Msg::Append(r) => drop(r.reply.send(Err(ProposeError::Closed))),
                Msg::Sync(reply) => self.sync_now(reply),
                Msg::Reset(_, _, reply) => drop(reply.send(Err(StorageError::Closed))),
                Msg::Epoch(_, _, reply) => drop(reply.send(Err(StorageError::Closed))),
                Msg::Shutdown => {}
            }
        }
        if self.shared.failed.load(Ordering::Acquire) {
            return;
        }
        // Even under `never`, a clean shutdown leaves the log on stable storage, trimmed
        // to its last record.
        if let Err(e) = self.active.seal() {
            tracing::error!(error = %e, "cannot close the WAL segment cleanly");
        } else {
            self.dirty = false;
            self.publish_durable();
        }
    }

    fn is_degraded(&self) -> bool {
        matches!(self.shared.health(), WalHealth::Degraded { .. })
    }

    /// The error for a batch that cannot be attempted now, or `None` to go ahead.
    fn refusal(&mut self) -> Option<ProposeError> {
        match self.shared.health() {
            WalHealth::Healthy => None,
            WalHealth::Failed { reason } => Some(ProposeError::Failed(reason)),
            WalHealth::Degraded { .. } => {
                // Every batch is a retry: writes resume as soon as the cause is gone.
                self.recover_if_possible();
                match self.shared.health() {
                    WalHealth::Degraded { reason, no_space: true } => Some(ProposeError::NoSpace(reason)),
                    WalHealth::Degraded { reason, no_space: false } => Some(ProposeError::Io(reason)),
                    _ => None,
                }
            }
        }
    }

    fn commit(&mut self, batch: &mut Vec<Proposal>) {
        if let Some(e) = self.shared.own_write_refusal().or_else(|| self.refusal()) {
            for p in batch.drain(..) {
                let _ = p.reply.send(Err(e.clone()));
            }
            return;
        }
        let first = self.next_lsn;
        let time = self.commit_time();
        let mut records = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        self.buf.clear();
        for (i, p) in batch.drain(..).enumerate() {
            let record = Record { epoch: self.epoch, lsn: Lsn(first.0 + i as u64), time, command: p.command };
            record.encode_into(&mut self.buf);
            records.push(record);
            replies.push(p.reply);
        }
        if let Err(e) = self.persist(&records) {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
            return;
        }
        // The fence went up, or the lease lapsed, while the batch was written: another
        // master may exist, and this tail is cut when the node steps down. Nothing of it
        // is acknowledged.
        let refused = self.shared.own_write_refusal();
        for (reply, record) in replies.into_iter().zip(&records) {
            let _ = reply.send(match &refused {
                Some(e) => Err(e.clone()),
                None => Ok(record.lsn),
            });
        }
    }

    /// The commit time of a new batch: now, in microseconds since the Unix epoch, and
    /// never before the previous batch's.
    fn commit_time(&mut self) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        self.last_time = self.last_time.max(now);
        self.last_time
    }

    /// Logs records that already carry their LSNs, skipping those the log holds.
    fn commit_replicated(&mut self, Replicated { records, reply }: Replicated) {
        if let Some(e) = self.refusal() {
            let _ = reply.send(Err(e));
            return;
        }
        // LSNs come from another node: no arithmetic on them may overflow.
        if let Some(pair) = records.windows(2).find(|w| w[0].lsn.0.checked_add(1) != Some(w[1].lsn.0)) {
            let expected = Lsn(pair[0].lsn.0.saturating_add(1));
            let _ = reply.send(Err(ProposeError::Gap { expected, found: pair[1].lsn }));
            return;
        }
        let skipped = records.iter().take_while(|r| r.lsn < self.next_lsn).count();
        let fresh = &records[skipped..];
        let outcome = AppendOutcome { last: Lsn(self.next_lsn.0 - 1), skipped: skipped as u64 };
        match fresh.first() {
            None => {
                let _ = reply.send(Ok(outcome));
            }
            Some(first) if first.lsn != self.next_lsn => {
                let _ = reply.send(Err(ProposeError::Gap { expected: self.next_lsn, found: first.lsn }));
            }
            Some(_) => {
                self.buf.clear();
                for record in fresh {
                    record.encode_into(&mut self.buf);
                }
                let result = self.persist(fresh);
                let _ = reply.send(result.map(|()| AppendOutcome { last: fresh[fresh.len() - 1].lsn, ..outcome }));
            }
        }
    }

    /// Writes the encoded batch in `buf`, syncs it per policy, applies it, and rotates
    /// the segment when full.
    fn persist(&mut self, records: &[Record]) -> Result<(), ProposeError> {
        let last = records[records.len() - 1].lsn;
        let started = Instant::now();
        let bytes = self.buf.len() as u64;
        // A batch that does not fit the segment starts the next one, whose space the
        // spare already holds: a full disk then costs nothing until the spare is used.
        if self.active.len > 0 && self.active.len + bytes > self.config.segment_size.as_u64() && self.rotation_due() {
            self.rotate();
            if let WalHealth::Failed { reason } = self.shared.health() {
                return Err(ProposeError::Unknown(reason));
            }
        }
        if let Err(e) = injected_write_failure() {
            return Err(self.not_logged(e, 0, Probe::Write));
        }
        if let Err(e) = self.active.reserve(bytes) {
            return Err(self.not_logged(e, 0, Probe::Reserve(bytes)));
        }
        if let Err((written, e)) = self.active.write(&self.buf) {
            return Err(self.not_logged(e, written, Probe::Write));
        }
        self.dirty = true;
        self.metrics.wal_append_seconds.observe(started.elapsed().as_secs_f64());
        self.metrics.wal_bytes_written.inc_by(self.buf.len() as u64);
        // Under `interval` and `never` the batch is answered before it is durable.
        self.pending_durable = last;
        if self.config.fsync == FsyncPolicy::Batch {
            self.sync()?;
        }
        self.next_lsn = last.next();
        self.metrics.group_commit_batch_records.observe(records.len() as f64);
        self.applier.apply(records);
        Ok(())
    }

    /// A batch that did not make it into the log: erases whatever part of it reached
    /// the file, degrades the log, and describes the failure. Answers `Unknown` (and
    /// fails the log) if the erasure itself cannot be made durable.
    fn not_logged(&mut self, error: std::io::Error, written: usize, probe: Probe) -> ProposeError {
        self.probe = Some(probe);
        if let Err(erase) = self.active.erase_after_end(written) {
            return self
                .fail(format!("a write of the log failed ({error}) and what it left could not be erased ({erase})"));
        }
        let no_space = matches!(error.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT));
        // Logged once per episode: a full disk under load fails every batch.
        if self.shared.health() == WalHealth::Healthy {
            tracing::error!(
                segment = %self.active.path.display(), error = %error,
                "cannot write the WAL; the write was not logged, writes are refused until this clears"
            );
        } else {
            tracing::debug!(error = %error, "WAL still cannot be written");
        }
        let reason = if no_space {
            self.metrics.wal_failures.with_label_values(&["no_space"]).inc();
            format!("the disk holding the write-ahead log is full ({error}); the write was not logged")
        } else {
            self.metrics.wal_failures.with_label_values(&["write"]).inc();
            format!("writing the write-ahead log failed ({error}); the write was not logged")
        };
        self.shared.set_health(WalHealth::Degraded { reason: reason.clone(), no_space }, &self.metrics);
        if no_space {
            ProposeError::NoSpace(reason)
        } else {
            ProposeError::Io(reason)
        }
    }

    /// Stops the log for good after a failure whose outcome is unknown.
    fn fail(&mut self, reason: String) -> ProposeError {
        tracing::error!(segment = %self.active.path.display(), %reason, "the write-ahead log stopped; restart the node");
        self.metrics.wal_failures.with_label_values(&["fsync"]).inc();
        let reason = format!("{reason}; whether the write is in the log is unknown until the node restarts");
        self.shared.set_health(WalHealth::Failed { reason: reason.clone() }, &self.metrics);
        ProposeError::Unknown(reason)
    }

    /// Tries again what failed last time: the same reservation, or a write (of zeros,
    /// after the end of the log, synced); healthy again once it works.
    fn recover_if_possible(&mut self) {
        self.metrics.wal_retries.inc();
        let result = match self.probe {
            Some(Probe::Reserve(bytes)) => self.active.reserve(bytes),
            Some(Probe::Write) | None => injected_write_failure()
                .and_then(|()| self.active.reserve(PROBE_BYTES as u64))
                .and_then(|()| self.active.write_zeros_after_end(PROBE_BYTES)),
        };
        match result {
            Ok(()) => {
                tracing::info!("the write-ahead log accepts writes again");
                self.probe = None;
                self.shared.set_health(WalHealth::Healthy, &self.metrics);
            }
            Err(e) => tracing::debug!(error = %e, "the write-ahead log still cannot be written"),
        }
    }

    fn sync(&mut self) -> Result<(), ProposeError> {
        let started = Instant::now();
        let result = (|| {
            fail::fail_point!("wal::before-fsync", |arg| Err(StorageError::io(
                &self.active.path,
                injected(arg, "wal::before-fsync")
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

    fn publish_durable(&mut self) {
        self.shared.durable.store(self.pending_durable.0, Ordering::Release);
        self.metrics.lsn_durable.set(self.pending_durable.0 as i64);
        self.applier.durable(self.pending_durable);
    }

    fn sync_if_due(&mut self) {
        if self.dirty && self.last_sync.elapsed() >= self.config.fsync_interval {
            let _ = self.sync();
        }
    }

    fn sync_now(&mut self, reply: Option<oneshot::Sender<Lsn>>) {
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

    fn begin_epoch(&mut self, epoch: Epoch, work: EpochWork) -> Result<Lsn, StorageError> {
        work(self.next_lsn)?;
        tracing::info!(%epoch, start = %self.next_lsn, "new epoch: records from here on carry it");
        self.epoch = epoch;
        Ok(self.next_lsn)
    }

    fn reset(&mut self, next: Lsn, work: ResetWork) -> Result<(), StorageError> {
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

    fn rotation_due(&self) -> bool {
        self.rotation_retry_at.is_none_or(|at| Instant::now() >= at)
    }

    /// Closes the full segment and continues in the spare. A failure that leaves the
    /// log intact only postpones rotation: records go on into the current segment.
    fn rotate(&mut self) {
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

    fn prepare_spare(&mut self) {
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

/// Bytes a retry writes (zeros, after the end of the log) to see whether writing works.
const PROBE_BYTES: usize = 4096;

/// What a degraded log tries, to find out whether it can write again.
#[derive(Clone, Copy, Debug)]
enum Probe {
    /// The reservation of this many bytes failed (a full disk or quota).
    Reserve(u64),
    /// A write failed.
    Write,
}

/// The failure `wal::before-write` injects, if it is configured.
fn injected_write_failure() -> std::io::Result<()> {
    fail::fail_point!("wal::before-write", |arg| Err(injected(arg, "wal::before-write")));
    Ok(())
}

/// The error a failpoint injects: `return(enospc)` gives `ENOSPC`, plain `return` an
/// I/O error.
#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
fn injected(arg: Option<String>, point: &str) -> std::io::Error {
    match arg.as_deref() {
        Some("enospc") => std::io::Error::from_raw_os_error(libc::ENOSPC),
        _ => std::io::Error::other(format!("injected failure at {point}")),
    }
}
