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
//! This file holds the thread's start and its loop: batching, stamping, writing and
//! answering. The thread's other jobs extend [`Writer`] from its submodules:
//! - [`sync`]: the fsync policy and publishing the durable LSN.
//! - [`rotate`]: moving to the next segment when one is full, and replacing the whole
//!   log (`reset`).
//! - [`failure`]: what a failed write does to the log (degraded or failed), retries, and
//!   the thread's crash report.

mod failure;
mod rotate;
mod sync;

use crate::config::{FsyncPolicy, WalConfig};
use crate::error::StorageError;
use crate::metrics::Metrics;
use crate::wal::active::{ActiveSegment, Spare};
use crate::wal::handle::{AppendOutcome, EpochWork, Msg, Proposal, Replicated, Shared, WalHandle};
use crate::wal::health::{ProposeError, WalHealth};
use crate::wal::segment::list_segments;
use bitark_common::{Epoch, Lsn, Record};
use failure::{injected_write_failure, CrashGuard, Probe};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

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
        let shared = Arc::new(Shared::new(next_lsn));
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
        Ok(WalHandle::new(tx, shared))
    }
}

/// The writer thread's state; only the thread touches it.
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

    /// Runs the work of a new epoch and stamps the records after it with `epoch`.
    fn begin_epoch(&mut self, epoch: Epoch, work: EpochWork) -> Result<Lsn, StorageError> {
        work(self.next_lsn)?;
        tracing::info!(%epoch, start = %self.next_lsn, "new epoch: records from here on carry it");
        self.epoch = epoch;
        Ok(self.next_lsn)
    }
}
