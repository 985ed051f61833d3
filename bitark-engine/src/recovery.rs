//! Start-up recovery: newest valid snapshot, then the log after it.
//!
//! Snapshots are tried newest first; a damaged one is logged and the next older one is
//! tried, then an empty state with a replay of the whole log. The log must reach back
//! to the chosen snapshot; if garbage collection already removed that part, recovery
//! fails rather than serving a state with a hole in it.

use crate::apply::apply_records;
use crate::store::{LoadError, ReadStore};
use bitark_common::{Command, Lsn};
use bitark_infra::fsutil::remove_durable;
use bitark_infra::fullsync::complete_install;
use bitark_infra::snapshot::{list_snapshots, read_snapshot, Chunk, InvalidPart, SnapshotPart};
use bitark_infra::wal::{remove_all, replay, ReplayOutcome};
use bitark_infra::StorageError;
use roaring::RoaringTreemap;
use std::path::Path;
use std::time::{Duration, Instant};

/// What recovery did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// LSN of the snapshot loaded (0 when none).
    pub snapshot_lsn: Lsn,
    /// Records replayed from the log.
    pub replayed: u64,
    /// The applied LSN after recovery.
    pub applied: Lsn,
    /// Snapshots that failed verification and were skipped.
    pub skipped_snapshots: usize,
    /// Time spent loading snapshots (the one loaded and any that failed).
    pub snapshot_duration: Duration,
    pub duration: Duration,
}

/// Rebuilds `store` from `data_dir`.
pub(crate) fn recover(
    store: &ReadStore,
    wal_dir: &Path,
    snapshot_dir: &Path,
    data_dir: &Path,
) -> Result<RecoveryReport, StorageError> {
    let started = Instant::now();
    remove_legacy_checkpoint(data_dir)?;
    if let Some(lsn) = complete_install(data_dir)? {
        tracing::warn!(%lsn, "finished installing a full-sync snapshot that a stop interrupted");
    }
    let mut snapshot_lsn = Lsn::ZERO;
    let mut skipped = 0;
    for (lsn, path) in list_snapshots(snapshot_dir)?.into_iter().rev() {
        match load_snapshot(store, &path) {
            Ok(()) => {
                tracing::info!(snapshot = %path.display(), %lsn, users = store.user_count(), marks = store.mark_count(), "snapshot loaded");
                snapshot_lsn = lsn;
                break;
            }
            Err(e) => {
                tracing::error!(error = %e, "snapshot is damaged; falling back to an older one");
                store.clear();
                skipped += 1;
            }
        }
    }
    let snapshot_duration = started.elapsed();
    let outcome = replay_in_parallel(store, wal_dir, snapshot_lsn)?;
    if outcome.wal_end < snapshot_lsn {
        // The snapshot covers the whole log (its tail was never made durable, or it
        // was removed): every segment is redundant and would leave a gap before the
        // next record, so they go.
        remove_all(wal_dir)?;
    }
    let applied = snapshot_lsn.max(outcome.wal_end);
    let report = RecoveryReport {
        snapshot_lsn,
        replayed: outcome.replayed,
        applied,
        skipped_snapshots: skipped,
        snapshot_duration,
        duration: started.elapsed(),
    };
    tracing::info!(
        snapshot_lsn = %report.snapshot_lsn,
        replayed = report.replayed,
        applied = %report.applied,
        snapshot_ms = report.snapshot_duration.as_millis() as u64,
        ms = report.duration.as_millis() as u64,
        "recovery complete"
    );
    Ok(report)
}

/// Threads that load a snapshot or replay the log: one per core, at most 8.
fn worker_count() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, 8)
}

/// Commands handed to a replaying worker at a time.
const REPLAY_BATCH: usize = 1024;

/// Replays the log after `after` into `store`. The calling thread reads and checks the
/// records in LSN order; each worker applies the commands of the shards it owns
/// (`shard % workers`), in the order read. Commands on different shards touch disjoint
/// state and commute, and each shard sees its own commands in LSN order, so the result
/// is the state a serial replay gives, while the cache misses of looking users up are
/// spread over every core.
fn replay_in_parallel(store: &ReadStore, wal_dir: &Path, after: Lsn) -> Result<ReplayOutcome, StorageError> {
    let workers = worker_count();
    if workers == 1 {
        return replay(wal_dir, after, |record| apply_records(store, [&record]));
    }
    std::thread::scope(|scope| {
        let mut senders = Vec::with_capacity(workers);
        for worker in 0..workers {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Command>>(8);
            senders.push(tx);
            scope.spawn(move || {
                rx.into_iter().flatten().for_each(|command| match command {
                    // Every worker drops the range's users of its own shards.
                    Command::DropRange { partitioner, range } => {
                        store.drop_range(partitioner, range, |shard| shard % workers == worker);
                    }
                    command => store.apply(&command),
                })
            });
        }
        let mut batches: Vec<Vec<Command>> = (0..workers).map(|_| Vec::with_capacity(REPLAY_BATCH)).collect();
        let outcome = replay(wal_dir, after, |record| {
            // A range's removal touches every shard: each worker takes it in its turn.
            if let Command::DropRange { .. } = record.command {
                for (worker, batch) in batches.iter_mut().enumerate() {
                    batch.push(record.command.clone());
                    if batch.len() == REPLAY_BATCH {
                        let _ = senders[worker].send(std::mem::replace(batch, Vec::with_capacity(REPLAY_BATCH)));
                    }
                }
                return;
            }
            // Records about the node (ownership) all go to the first worker, in order.
            let worker = record.command.user().map_or(0, |user| store.shard_of(user) % workers);
            batches[worker].push(record.command);
            if batches[worker].len() == REPLAY_BATCH {
                let full = std::mem::replace(&mut batches[worker], Vec::with_capacity(REPLAY_BATCH));
                let _ = senders[worker].send(full);
            }
        });
        for (sender, batch) in senders.iter().zip(batches) {
            let _ = sender.send(batch);
        }
        // Dropping the senders ends the workers; the scope waits for them.
        drop(senders);
        outcome
    })
}

/// Earlier versions kept the LSN of the newest snapshot in `checkpoint.bin`. Each
/// snapshot names its own LSN in its checksummed header, so recovery needs no such file;
/// a leftover one goes so that no one takes it for the truth.
fn remove_legacy_checkpoint(data_dir: &Path) -> Result<(), StorageError> {
    let path = bitark_infra::DataDir::new(data_dir).legacy_checkpoint();
    if remove_durable(&path)? {
        tracing::info!(file = %path.display(), "removed the checkpoint file of an earlier version");
    }
    Ok(())
}

/// Format-1 entries handed to a decoding worker at a time.
const CHUNK: usize = 2048;

/// What a loading worker is given.
enum Work {
    /// A format-2 chunk: entries of one shard, as the store holds them.
    Shard(Chunk),
    /// Format-1 entries: portable roaring sets to decode.
    Portable(PortableRun),
}

/// Loads one snapshot. The calling thread reads the file and checks every chunk's
/// checksum; worker threads put the entries into the store. In format 2 each worker owns
/// the shards `shard % workers == its index`, so no two workers touch the same table
/// and each table is sized once; format-1 sets are decoded by whichever worker is next.
/// Any damage, found by either side, fails the whole load, naming the file and offset.
pub(crate) fn load_snapshot(store: &ReadStore, path: &Path) -> Result<(), StorageError> {
    let workers = worker_count();
    std::thread::scope(|scope| {
        let mut senders = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        for _ in 0..workers {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Work>(4);
            senders.push(tx);
            handles.push(scope.spawn(move || -> Result<(), (u64, LoadError)> {
                for work in rx {
                    match work {
                        Work::Shard(chunk) => store.load_chunk(&chunk).map_err(|e| (chunk.offset, e))?,
                        Work::Portable(run) => run.insert_into(store).map_err(|e| (0, e))?,
                    }
                }
                Ok(())
            }));
        }
        let mut run = PortableRun::default();
        let mut next = 0;
        // A worker that stopped has failed; its error is collected below.
        let read = read_snapshot(path, |part| {
            match part {
                SnapshotPart::Chunk(chunk) => {
                    let _ = senders[chunk.shard as usize % workers].send(Work::Shard(chunk));
                }
                SnapshotPart::Meta(body) => {
                    store.load_meta(&body).map_err(|e| InvalidPart(e.to_string()))?;
                }
                SnapshotPart::User { user, marks, portable } => {
                    run.push(user, marks, portable);
                    if run.len() == CHUNK {
                        let _ = senders[next % workers].send(Work::Portable(std::mem::take(&mut run)));
                        next += 1;
                    }
                }
            }
            Ok(())
        });
        if run.len() > 0 {
            let _ = senders[next % workers].send(Work::Portable(run));
        }
        drop(senders);
        let mut worker_error = None;
        for handle in handles {
            if let Err(e) = handle.join().unwrap_or(Err((0, LoadError::WorkerPanicked))) {
                worker_error.get_or_insert(e);
            }
        }
        read?;
        match worker_error {
            Some((offset, reason)) => Err(StorageError::corruption(path, offset, reason.to_string())),
            None => Ok(()),
        }
    })
}

/// A run of format-1 entries: users, their mark counts, and their sets back to back.
#[derive(Default)]
struct PortableRun {
    entries: Vec<(u64, u64, usize)>,
    bytes: Vec<u8>,
}

impl PortableRun {
    fn len(&self) -> usize {
        self.entries.len()
    }

    fn push(&mut self, user: u64, marks: u64, set: &[u8]) {
        self.bytes.extend_from_slice(set);
        self.entries.push((user, marks, self.bytes.len()));
    }

    fn insert_into(&self, store: &ReadStore) -> Result<(), LoadError> {
        let mut start = 0;
        for &(user, marks, end) in &self.entries {
            let set = RoaringTreemap::deserialize_from(&self.bytes[start..end])
                .map_err(|reason| LoadError::Roaring { user, reason })?;
            if set.len() != marks {
                return Err(LoadError::Marks { user, said: marks, held: set.len() });
            }
            store.insert_user_set(user, set);
            start = end;
        }
        Ok(())
    }
}
