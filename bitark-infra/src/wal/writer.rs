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

use crate::config::{FsyncPolicy, WalConfig};
use crate::error::StorageError;
use crate::metrics::Metrics;
use crate::wal::active::ActiveSegment;
use crate::wal::segment::list_segments;
use bitark_common::{Command, Epoch, Lsn, Record};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Receives each batch once it is durable (under the configured fsync policy), in LSN
/// order, on the writer thread. Applying must not fail: commands were validated before
/// they were proposed.
pub trait Applier: Send + 'static {
    fn apply(&mut self, records: &[Record]);
}

/// Why a proposal was not accepted or not made durable.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ProposeError {
    #[error("the write queue is full")]
    Overloaded,
    #[error("the write-ahead log is shut down")]
    Closed,
    #[error("the write-ahead log failed: {0}")]
    Failed(String),
    #[error("records must continue the log at LSN {expected}, found LSN {found}")]
    Gap { expected: Lsn, found: Lsn },
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

enum Msg {
    Propose(Proposal),
    Append(Replicated),
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
    /// Set once a write or fsync failed; from then on every proposal is refused,
    /// because the content of the log after the failure is unknown.
    failed: AtomicBool,
    /// The writer thread, joined on shutdown.
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl WalHandle {
    /// Queues a command. The receiver answers with its LSN once durable and applied.
    pub fn propose(&self, command: Command) -> Result<oneshot::Receiver<Result<Lsn, ProposeError>>, ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.send(Msg::Propose(Proposal { command, reply }))?;
        Ok(rx)
    }

    /// Queues a message for the writer thread without waiting.
    fn send(&self, msg: Msg) -> Result<(), ProposeError> {
        if self.shared.failed.load(Ordering::Acquire) {
            return Err(ProposeError::Failed("an earlier write or fsync failed".into()));
        }
        match self.tx.try_send(msg) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(ProposeError::Overloaded),
            Err(TrySendError::Disconnected(_)) => Err(ProposeError::Closed),
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

    /// Highest LSN known to be durable.
    pub fn durable_lsn(&self) -> Lsn {
        Lsn(self.shared.durable.load(Ordering::Acquire))
    }

    /// True once a write or fsync has failed.
    pub fn has_failed(&self) -> bool {
        self.shared.failed.load(Ordering::Acquire)
    }

    /// Finishes every proposal queued so far, fsyncs, and stops the writer thread.
    pub fn shutdown(&self) {
        // A full queue still drains, so a blocking send terminates.
        let _ = self.tx.send(Msg::Shutdown);
        let thread = self.shared.thread.lock().expect("writer thread slot").take();
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
        let active = ActiveSegment::open(dir, next_lsn, config.segment_size.as_u64())?;
        metrics.wal_segments.set(list_segments(dir)?.len() as i64);
        let (tx, rx) = mpsc::sync_channel(config.queue_capacity);
        let shared = Arc::new(Shared {
            durable: AtomicU64::new(next_lsn.0 - 1),
            failed: AtomicBool::new(false),
            thread: std::sync::Mutex::new(None),
        });
        metrics.lsn_durable.set(next_lsn.0 as i64 - 1);
        let mut writer = Writer {
            dir: dir.to_path_buf(),
            config: config.clone(),
            active,
            next_lsn,
            epoch,
            applier,
            metrics,
            shared: shared.clone(),
            last_sync: Instant::now(),
            dirty: false,
            pending_durable: Lsn(next_lsn.0 - 1),
            buf: Vec::with_capacity(1 << 20),
        };
        let thread = std::thread::Builder::new()
            .name("wal-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StorageError::io(dir, e))?;
        *shared.thread.lock().expect("writer thread slot") = Some(thread);
        Ok(WalHandle { tx, shared })
    }
}

struct Writer<A> {
    dir: PathBuf,
    config: WalConfig,
    active: ActiveSegment,
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
    buf: Vec<u8>,
}

impl<A: Applier> Writer<A> {
    fn run(&mut self, rx: mpsc::Receiver<Msg>) {
        let idle_wait = match self.config.fsync {
            FsyncPolicy::Interval => self.config.fsync_interval,
            _ => Duration::from_secs(3600),
        };
        let mut batch = Vec::with_capacity(self.config.max_batch_records);
        loop {
            let mut stopping = false;
            let mut replicated = None;
            match rx.recv_timeout(idle_wait) {
                Ok(Msg::Propose(p)) => batch.push(p),
                Ok(Msg::Append(r)) => replicated = Some(r),
                Ok(Msg::Shutdown) | Err(RecvTimeoutError::Disconnected) => stopping = true,
                Err(RecvTimeoutError::Timeout) => {
                    self.sync_if_due();
                    continue;
                }
            }
            while !stopping && replicated.is_none() && batch.len() < self.config.max_batch_records {
                match rx.try_recv() {
                    Ok(Msg::Propose(p)) => batch.push(p),
                    Ok(Msg::Append(r)) => replicated = Some(r),
                    Ok(Msg::Shutdown) => stopping = true,
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                self.commit(&mut batch);
            }
            if let Some(r) = replicated {
                self.commit_replicated(r);
            }
            if self.config.fsync == FsyncPolicy::Interval {
                self.sync_if_due();
            }
            if stopping {
                // Answer what raced in behind the shutdown, then make everything durable.
                while let Ok(msg) = rx.try_recv() {
                    match msg {
                        Msg::Propose(p) => drop(p.reply.send(Err(ProposeError::Closed))),
                        Msg::Append(r) => drop(r.reply.send(Err(ProposeError::Closed))),
                        Msg::Shutdown => {}
                    }
                }
                // Even under `never`, a clean shutdown leaves the log on stable storage,
                // trimmed to its last record.
                if let Err(e) = self.active.seal() {
                    tracing::error!(error = %e, "cannot close the WAL segment cleanly");
                } else {
                    self.dirty = false;
                    self.publish_durable();
                }
                return;
            }
        }
    }

    fn commit(&mut self, batch: &mut Vec<Proposal>) {
        if self.shared.failed.load(Ordering::Acquire) {
            for p in batch.drain(..) {
                let _ = p.reply.send(Err(ProposeError::Failed("an earlier write or fsync failed".into())));
            }
            return;
        }
        let first = self.next_lsn;
        let mut records = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        self.buf.clear();
        for (i, p) in batch.drain(..).enumerate() {
            let record = Record { epoch: self.epoch, lsn: Lsn(first.0 + i as u64), command: p.command };
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
        for (reply, record) in replies.into_iter().zip(&records) {
            let _ = reply.send(Ok(record.lsn));
        }
    }

    /// Logs records that already carry their LSNs, skipping those the log holds.
    fn commit_replicated(&mut self, Replicated { records, reply }: Replicated) {
        if self.shared.failed.load(Ordering::Acquire) {
            let _ = reply.send(Err(ProposeError::Failed("an earlier write or fsync failed".into())));
            return;
        }
        if let Some(pair) = records.windows(2).find(|w| w[1].lsn != w[0].lsn.next()) {
            let _ = reply.send(Err(ProposeError::Gap { expected: pair[0].lsn.next(), found: pair[1].lsn }));
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
    /// the segment when full. On failure the log refuses every later write.
    fn persist(&mut self, records: &[Record]) -> Result<(), ProposeError> {
        let last = records[records.len() - 1].lsn;
        if let Err(e) = self.write_and_sync(last) {
            tracing::error!(error = %e, "WAL write failed; refusing further writes");
            self.shared.failed.store(true, Ordering::Release);
            return Err(ProposeError::Failed(e.to_string()));
        }
        self.next_lsn = last.next();
        self.metrics.group_commit_batch_records.observe(records.len() as f64);
        self.applier.apply(records);
        if self.active.len >= self.config.segment_size.as_u64() {
            if let Err(e) = self.rotate() {
                tracing::error!(error = %e, "WAL segment rotation failed; refusing further writes");
                self.shared.failed.store(true, Ordering::Release);
            }
        }
        Ok(())
    }

    fn write_and_sync(&mut self, last: Lsn) -> Result<(), StorageError> {
        let started = Instant::now();
        fail::fail_point!("wal::before-write", |_| Err(StorageError::io(
            &self.active.path,
            std::io::Error::other("injected failure at wal::before-write")
        )));
        self.active.write(&self.buf)?;
        self.dirty = true;
        self.metrics.wal_append_seconds.observe(started.elapsed().as_secs_f64());
        self.metrics.wal_bytes_written.inc_by(self.buf.len() as u64);
        // Under `interval` and `never` the batch is answered before it is durable.
        self.pending_durable = last;
        if self.config.fsync == FsyncPolicy::Batch {
            self.sync()?;
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        fail::fail_point!("wal::before-fsync", |_| Err(StorageError::io(
            &self.active.path,
            std::io::Error::other("injected failure at wal::before-fsync")
        )));
        let started = Instant::now();
        self.active.sync()?;
        self.metrics.wal_fsync_seconds.observe(started.elapsed().as_secs_f64());
        self.dirty = false;
        self.last_sync = Instant::now();
        self.publish_durable();
        Ok(())
    }

    fn publish_durable(&self) {
        self.shared.durable.store(self.pending_durable.0, Ordering::Release);
        self.metrics.lsn_durable.set(self.pending_durable.0 as i64);
    }

    fn sync_if_due(&mut self) {
        if self.dirty && self.last_sync.elapsed() >= self.config.fsync_interval {
            if let Err(e) = self.sync() {
                tracing::error!(error = %e, "WAL fsync failed; refusing further writes");
                self.shared.failed.store(true, Ordering::Release);
            }
        }
    }

    fn rotate(&mut self) -> Result<(), StorageError> {
        self.active.seal()?;
        self.dirty = false;
        self.publish_durable();
        self.active = ActiveSegment::create(&self.dir, self.next_lsn, self.config.segment_size.as_u64())?;
        self.metrics.wal_segments.set(list_segments(&self.dir)?.len() as i64);
        tracing::debug!(segment = %self.active.path.display(), "started WAL segment");
        Ok(())
    }
}
