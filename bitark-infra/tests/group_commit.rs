//! The group-commit writer against a real directory: concurrent proposals get dense,
//! unique LSNs, batches reach the applier durable and in order, segments rotate, and a
//! replay of the directory yields exactly what was acknowledged.

use bitark_common::{Command, Epoch, Lsn, Record};
use bitark_infra::wal::{list_segments, replay, Applier, GroupCommit, WalHandle};
use bitark_infra::{FsyncPolicy, Metrics, WalConfig};
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Vec<Record>>>);

impl Applier for Collect {
    fn apply(&mut self, records: &[Record]) {
        self.0.lock().unwrap().extend_from_slice(records);
    }
}

/// Small segments and batches, so 4000 records always span many of both.
fn config(fsync: FsyncPolicy) -> WalConfig {
    WalConfig { segment_size: bytesize::ByteSize::kib(64), fsync, max_batch_records: 64, ..WalConfig::default() }
}

#[test]
fn concurrent_proposals_are_logged_densely_and_replay_identically() {
    let dir = tempfile::tempdir().unwrap();
    let applied = Collect::default();
    let metrics = Metrics::standalone();
    let wal =
        GroupCommit::start(dir.path(), &config(FsyncPolicy::Batch), Lsn(1), Epoch(1), applied.clone(), metrics.clone())
            .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let mut lsns: Vec<u64> = runtime.block_on(async {
        let mut waits = Vec::new();
        for i in 0..4000u64 {
            let command = if i % 3 == 0 {
                Command::MarkUnread { user: i % 17, msg: i }
            } else {
                Command::MarkBatch { user: i % 17, msgs: vec![i, i + 1] }
            };
            waits.push(wal.propose(command).unwrap());
        }
        let mut out = Vec::new();
        for w in waits {
            out.push(w.await.unwrap().unwrap().0);
        }
        out
    });
    lsns.sort_unstable();
    assert_eq!(lsns, (1..=4000).collect::<Vec<_>>());
    assert_eq!(wal.durable_lsn(), Lsn(4000));
    wal.shutdown();

    let applied = applied.0.lock().unwrap().clone();
    assert_eq!(applied.iter().map(|r| r.lsn.0).collect::<Vec<_>>(), (1..=4000).collect::<Vec<_>>());
    assert!(list_segments(dir.path()).unwrap().len() > 2, "64 KiB segments must have rotated");
    assert!(metrics.render().contains("bitark_group_commit_batch_records_count"));

    let mut replayed = Vec::new();
    let outcome = replay(dir.path(), Lsn(0), |r| replayed.push(r)).unwrap();
    assert_eq!(outcome.wal_end, Lsn(4000));
    assert_eq!(replayed, applied);
}

#[test]
fn a_reopened_log_continues_after_its_last_record() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    for round in 0..3u64 {
        let next = Lsn(round * 10 + 1);
        let wal = GroupCommit::start(
            dir.path(),
            &config(FsyncPolicy::Never),
            next,
            Epoch(1),
            Collect::default(),
            Metrics::standalone(),
        )
        .unwrap();
        runtime.block_on(async {
            for i in 0..10 {
                let lsn = wal.propose(Command::MarkRead { user: 1, msg: i }).unwrap().await.unwrap().unwrap();
                assert_eq!(lsn, Lsn(next.0 + i));
            }
        });
        wal.shutdown();
    }
    let outcome = replay(dir.path(), Lsn(0), |_| {}).unwrap();
    assert_eq!((outcome.wal_end, outcome.replayed), (Lsn(30), 30));
}

#[test]
fn proposals_after_shutdown_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let wal = GroupCommit::start(
        dir.path(),
        &config(FsyncPolicy::Batch),
        Lsn(1),
        Epoch(1),
        Collect::default(),
        Metrics::standalone(),
    )
    .unwrap();
    wal.shutdown();
    assert!(wal.propose(Command::MarkRead { user: 1, msg: 1 }).is_err());
}

/// A log under `fsync: interval` with `interval`, after one acknowledged write (LSN 1).
fn interval_log_after_one_write(interval: std::time::Duration) -> (tempfile::TempDir, WalHandle, Metrics) {
    let dir = tempfile::tempdir().unwrap();
    let config = WalConfig { fsync_interval: interval, ..config(FsyncPolicy::Interval) };
    let metrics = Metrics::standalone();
    let wal = GroupCommit::start(dir.path(), &config, Lsn(1), Epoch(1), Collect::default(), metrics.clone()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let lsn =
        runtime.block_on(async { wal.propose(Command::MarkRead { user: 1, msg: 2 }).unwrap().await.unwrap().unwrap() });
    assert_eq!(lsn, Lsn(1));
    (dir, wal, metrics)
}

#[test]
fn interval_policy_answers_before_fsync() {
    // An interval no test waits out: any fsync before the answer would be the bug.
    let (_dir, wal, metrics) = interval_log_after_one_write(std::time::Duration::from_secs(3600));
    assert_eq!(wal.durable_lsn(), Lsn::ZERO, "answered, and not durable yet");
    assert!(metrics.render().contains("bitark_wal_fsync_seconds_count 0"), "no fsync before the answer");
    // Asked for, an fsync makes it durable.
    assert_eq!(wal.sync_blocking(), Ok(Lsn(1)));
    assert_eq!(wal.durable_lsn(), Lsn(1));
    wal.shutdown();
}

#[test]
fn interval_policy_syncs_in_the_background() {
    let (_dir, wal, metrics) = interval_log_after_one_write(std::time::Duration::from_millis(50));
    // No further writes: the background sync alone must make LSN 1 durable.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while wal.durable_lsn() < Lsn(1) {
        assert!(std::time::Instant::now() < deadline, "the interval fsync never ran");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(metrics.render().contains("bitark_wal_fsync_seconds_count 1"));
    wal.shutdown();
}
