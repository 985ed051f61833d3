//! The caller's side of the log: [`WalHandle`], a cheap-to-clone handle that queues
//! messages for the writer thread, and the state the thread publishes for it (durable
//! LSN, health, fence, lease) so that readers learn it without a round trip.
//!
//! Proposals go on a bounded std channel and are answered on tokio oneshots, so async
//! handlers can await them while the writer thread blocks in fsync.

use crate::error::StorageError;
use crate::metrics::Metrics;
use crate::wal::health::{ProposeError, WalHealth, CRASHED};
use bitark_common::{Command, Epoch, Lsn, Record};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;
use tokio::sync::oneshot;

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

/// What the handle asks of the writer thread.
pub(super) enum Msg {
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

/// What the handle and the writer thread share.
pub(super) struct Shared {
    /// Highest LSN known to be on stable storage. Atomic because readers (metrics,
    /// replication) look at it without talking to the writer thread.
    pub(super) durable: AtomicU64,
    /// Set once the log has failed for good; proposals are refused at once.
    pub(super) failed: AtomicBool,
    /// The current health, with its reason. A std `Mutex`: read by health checks and
    /// written by the writer thread on a state change only.
    pub(super) health: Mutex<WalHealth>,
    /// A `Sync` message is queued; further requests need not queue another.
    pub(super) sync_queued: AtomicBool,
    /// Set by `shutdown`, so the writer's exit is not taken for a crash.
    pub(super) stopping: AtomicBool,
    /// Set while the node must not take writes of its own (a newer epoch exists):
    /// proposals are refused, replicated records still go in.
    pub(super) fenced: AtomicBool,
    /// Under failover: the node's own writes are taken only before this instant,
    /// milliseconds after `origin` (`u64::MAX`: no lease bounds them).
    pub(super) lease_until: AtomicU64,
    pub(super) origin: Instant,
    /// The writer thread, joined on shutdown.
    pub(super) thread: Mutex<Option<JoinHandle<()>>>,
}

impl Shared {
    /// The state of a log whose next record is `next_lsn`: healthy, unfenced, no lease.
    pub(super) fn new(next_lsn: Lsn) -> Self {
        Shared {
            durable: AtomicU64::new(next_lsn.0 - 1),
            failed: AtomicBool::new(false),
            health: Mutex::new(WalHealth::Healthy),
            sync_queued: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            fenced: AtomicBool::new(false),
            lease_until: AtomicU64::new(u64::MAX),
            origin: Instant::now(),
            thread: Mutex::new(None),
        }
    }

    pub(super) fn lease_lapsed(&self) -> bool {
        let until = self.lease_until.load(Ordering::Acquire);
        until != u64::MAX && self.origin.elapsed().as_millis() as u64 >= until
    }

    /// Why the node's own writes are refused now, if they are.
    pub(super) fn own_write_refusal(&self) -> Option<ProposeError> {
        if self.fenced.load(Ordering::Acquire) {
            Some(ProposeError::Fenced)
        } else if self.lease_lapsed() {
            Some(ProposeError::LeaseLapsed)
        } else {
            None
        }
    }

    pub(super) fn set_health(&self, health: WalHealth, metrics: &Metrics) {
        metrics.wal_writable.set(i64::from(health == WalHealth::Healthy));
        if let WalHealth::Failed { .. } = health {
            self.failed.store(true, Ordering::Release);
        }
        *self.health.lock().unwrap_or_else(PoisonError::into_inner) = health;
    }

    pub(super) fn health(&self) -> WalHealth {
        self.health.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Why the writer no longer takes a message: failed, or shut down. A writer that
    /// went away without being asked to has crashed, even if its guard has not said so
    /// yet (it runs after everything the thread held has been dropped, so a caller can
    /// see its reply dropped first): the crash is recorded here at once, so a health
    /// check made after this answer never reports the log healthy.
    pub(super) fn failure(&self) -> ProposeError {
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
    pub(super) fn new(tx: SyncSender<Msg>, shared: Arc<Shared>) -> Self {
        WalHandle { tx, shared }
    }

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
