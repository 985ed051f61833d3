//! The node against a real data directory: writes are durable and visible, a reopened
//! node recovers exactly what was acknowledged (from the log, from a snapshot plus the
//! log, from an older snapshot when the newest is damaged), the log is garbage-collected
//! behind snapshots, and two processes cannot share a directory.

use bitark_common::{Command, Epoch, Lsn, Record};
use bitark_engine::{EngineConfig, Node, ReplicateError, WriteError};
use bitark_infra::snapshot::{list_snapshots, SnapshotWriter};
use bitark_infra::wal::list_segments;
use bitark_infra::{FsyncPolicy, Metrics};
use std::path::Path;

mod support;

use support::open;

/// Small segments, so that a test's log spans several.
fn config(dir: &Path) -> EngineConfig {
    let mut config = support::config(dir);
    config.wal.segment_size = bytesize::ByteSize::kib(64);
    config.limits.max_batch = 1000;
    config
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// A deterministic mixed workload: marks, unmarks, batches and ranges over few users.
fn workload(n: u64) -> Vec<Command> {
    (0..n)
        .map(|i| {
            let user = i % 13;
            match i % 5 {
                0 | 1 => Command::MarkRead { user, msg: i * 7 % 500 },
                2 => Command::MarkUnread { user, msg: (i * 11) % 500 },
                3 => Command::MarkBatch { user, msgs: (0..20).map(|k| (i + k * 37) % 700).collect() },
                _ => Command::MarkRange { user, from: i % 300, to: i % 300 + 40 },
            }
        })
        .collect()
}

fn write_all(rt: &tokio::runtime::Runtime, node: &Node, commands: Vec<Command>) -> Lsn {
    rt.block_on(async {
        let mut last = Lsn::ZERO;
        for command in commands {
            last = node.write(command).await.unwrap();
        }
        last
    })
}

#[test]
fn acknowledged_writes_survive_a_reopen_from_the_log_alone() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let rt = runtime();
    let node = open(&config);
    let last = write_all(&rt, &node, workload(3000));
    assert_eq!(last, Lsn(3000));
    let before = node.digest();
    node.shutdown();
    drop(node);

    let node = open(&config);
    assert_eq!(node.applied_lsn(), Lsn(3000));
    assert_eq!(node.recovery().replayed, 3000);
    assert_eq!(node.digest(), before);
    assert!(list_segments(&dir.path().join("wal")).unwrap().len() > 1, "the log rotated");
    let next = write_all(&rt, &node, vec![Command::MarkRead { user: 1, msg: 1 }]);
    assert_eq!(next, Lsn(3001), "LSNs continue after recovery");
    node.shutdown();
}

#[test]
fn snapshot_then_log_tail_recovers_the_same_state_and_purges_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.snapshot.keep = 1;
    let rt = runtime();
    let node = open(&config);
    write_all(&rt, &node, workload(4000));
    let segments_before = list_segments(&dir.path().join("wal")).unwrap().len();
    let info = rt.block_on(node.snapshot_now()).unwrap();
    assert_eq!(info.lsn, Lsn(4000));
    assert_eq!(info.marks, node.mark_count());
    let segments_after = list_segments(&dir.path().join("wal")).unwrap().len();
    assert!(
        segments_after < segments_before,
        "segments below the snapshot are purged ({segments_before} -> {segments_after})"
    );
    write_all(&rt, &node, workload(500));
    let before = node.digest();
    node.shutdown();
    drop(node);

    let node = open(&config);
    assert_eq!(node.recovery().snapshot_lsn, Lsn(4000));
    assert_eq!(node.recovery().replayed, 500);
    assert_eq!(node.digest(), before);
    node.shutdown();
}

#[test]
fn a_damaged_newest_snapshot_falls_back_to_the_older_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let rt = runtime();
    let node = open(&config);
    write_all(&rt, &node, workload(1000));
    rt.block_on(node.snapshot_now()).unwrap();
    write_all(&rt, &node, workload(1000));
    let newest = rt.block_on(node.snapshot_now()).unwrap();
    write_all(&rt, &node, workload(100));
    let before = node.digest();
    node.shutdown();
    drop(node);

    let mut bytes = std::fs::read(&newest.path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5A;
    std::fs::write(&newest.path, bytes).unwrap();

    let node = open(&config);
    assert_eq!(node.recovery().skipped_snapshots, 1);
    assert_eq!(node.recovery().snapshot_lsn, Lsn(1000));
    assert_eq!(node.recovery().replayed, 1100);
    assert_eq!(node.digest(), before);
    node.shutdown();
}

#[test]
fn a_snapshot_in_format_1_of_earlier_versions_still_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let rt = runtime();
    let node = open(&config);
    let commands = workload(2000);
    let last = write_all(&rt, &node, commands.clone());
    let before = node.digest();
    node.shutdown();
    drop(node);

    // The same state as an earlier version wrote it: per-user portable roaring sets.
    let store = bitark_engine::ReadStore::new();
    commands.iter().for_each(|c| store.apply(c));
    let snapshots = dir.path().join("snapshots");
    let mut writer = SnapshotWriter::create_v1(&snapshots, last, Epoch(1)).unwrap();
    for shard in 0..store.shard_count() {
        store.walk_shard(shard, |user, set| {
            let mut portable = Vec::new();
            set.serialize_portable(&mut portable);
            writer.add_user(user, set.len(), &portable).unwrap();
        });
    }
    assert_eq!(writer.finish().unwrap().version, 1);
    // Without the log, the state can only come from that snapshot.
    std::fs::remove_dir_all(dir.path().join("wal")).unwrap();
    std::fs::create_dir(dir.path().join("wal")).unwrap();

    let node = open(&config);
    assert_eq!((node.recovery().snapshot_lsn, node.recovery().replayed), (last, 0));
    assert_eq!(node.digest(), before);
    // The next snapshot is written in the current format and recovers too.
    write_all(&rt, &node, vec![Command::MarkRead { user: 3, msg: 999_999 }]);
    let info = rt.block_on(node.snapshot_now()).unwrap();
    assert_eq!(info.version, bitark_infra::snapshot::FORMAT_VERSION);
    let after = node.digest();
    node.shutdown();
    drop(node);
    let node = open(&config);
    assert_eq!(node.recovery().snapshot_lsn, info.lsn);
    assert_eq!(node.digest(), after);
    node.shutdown();
}

#[test]
fn every_snapshot_damaged_means_full_replay_when_the_log_reaches_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.wal.segment_size = bytesize::ByteSize::mib(64);
    let rt = runtime();
    let node = open(&config);
    write_all(&rt, &node, workload(300));
    let snap = rt.block_on(node.snapshot_now()).unwrap();
    let before = node.digest();
    node.shutdown();
    drop(node);
    std::fs::write(&snap.path, b"garbage").unwrap();

    let node = open(&config);
    assert_eq!((node.recovery().snapshot_lsn, node.recovery().replayed), (Lsn::ZERO, 300));
    assert_eq!(node.digest(), before);
    node.shutdown();
}

#[test]
fn count_trigger_takes_snapshots_in_the_background_and_disk_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.snapshot.every_records = 500;
    let rt = runtime();
    let metrics = Metrics::standalone();
    let node = Node::open(config.clone(), metrics.clone()).unwrap();
    let wal_dir = dir.path().join("wal");
    let mut most_segments = 0;
    for _ in 0..8 {
        write_all(&rt, &node, workload(1000));
        most_segments = most_segments.max(list_segments(&wal_dir).unwrap().len());
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while metrics.wal_segments_deleted.get() == 0 {
        assert!(std::time::Instant::now() < deadline, "no segment was ever garbage-collected");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let snapshots = list_snapshots(&dir.path().join("snapshots")).unwrap();
    assert!(!snapshots.is_empty() && snapshots.len() <= config.snapshot.keep);
    // Everything the log ever held, against what is left of it: the segments before
    // the oldest kept snapshot went.
    let written = list_segments(&wal_dir).unwrap().len() as u64 + metrics.wal_segments_deleted.get();
    assert!(!wal_dir.join("00000000000000000001.wal").exists(), "the first segment was never purged");
    assert!(
        (most_segments as u64) < written,
        "the log kept every segment it wrote ({most_segments} of {written}) instead of purging behind snapshots"
    );
    let before = node.digest();
    node.shutdown();
    drop(node);
    let node = open(&config);
    assert_eq!(node.digest(), before);
    node.shutdown();
}

#[test]
fn under_interval_fsync_a_snapshot_is_kept_only_once_what_it_holds_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.wal.fsync = FsyncPolicy::Interval;
    // No background fsync within the test: only the snapshot can make records durable.
    config.wal.fsync_interval = std::time::Duration::from_secs(3600);
    let rt = runtime();
    let node = open(&config);
    write_all(&rt, &node, workload(300));
    assert_eq!(node.durable_lsn(), Lsn::ZERO, "acknowledged but not yet durable");
    let info = rt.block_on(node.snapshot_now()).unwrap();
    assert_eq!(info.lsn, Lsn(300));
    assert!(node.durable_lsn() >= info.lsn, "a snapshot holding records the log may still lose was kept");
    node.shutdown();
}

#[test]
fn a_replicated_record_is_checked_as_the_api_checks_a_command() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.node.role = bitark_engine::Role::Slave;
    // Stage 7: the epoch of each record is checked against the epoch history.
    config.replication.stage = 7.0;
    // Never contacted: nothing in this test starts the follower.
    config.replication.master_url = "http://127.0.0.1:1".into();
    config.limits.max_batch = 3;
    config.limits.max_range = 10;
    let rt = runtime();
    let node = open(&config);
    let record = |lsn, command| Record { epoch: Epoch::INITIAL, lsn: Lsn(lsn), time: 0, command };
    let fine = record(1, Command::MarkRead { user: 1, msg: 1 });
    for bad in [
        record(2, Command::MarkBatch { user: 1, msgs: vec![1, 2, 3, 4] }),
        record(2, Command::MarkBatch { user: 1, msgs: vec![] }),
        record(2, Command::MarkRange { user: 1, from: 0, to: u64::MAX }),
        Record { epoch: Epoch(7), ..record(2, Command::MarkRead { user: 1, msg: 2 }) },
    ] {
        let refused = rt.block_on(node.replicate(vec![fine.clone(), bad.clone()]));
        assert!(matches!(refused, Err(ReplicateError::InvalidRecord { lsn: 2, .. })), "{bad:?}: {refused:?}");
    }
    // LSNs come from the network: the largest one must not overflow anything.
    let last = record(u64::MAX, Command::MarkRead { user: 1, msg: 3 });
    let refused = rt.block_on(node.replicate(vec![last]));
    assert!(matches!(refused, Err(ReplicateError::InvalidRecord { lsn: u64::MAX, .. })), "{refused:?}");
    assert_eq!((node.applied_lsn(), node.mark_count()), (Lsn::ZERO, 0), "nothing of a refused batch was applied");
    assert_eq!(rt.block_on(node.replicate(vec![fine])).map(|o| o.last), Ok(Lsn(1)));
    node.shutdown();
}

#[test]
fn limits_are_enforced_before_anything_is_logged() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.limits.max_batch = 3;
    config.limits.max_range = 10;
    let rt = runtime();
    let node = open(&config);
    let results = rt.block_on(async {
        vec![
            node.write(Command::MarkBatch { user: 1, msgs: vec![1, 2, 3, 4] }).await,
            node.write(Command::MarkBatch { user: 1, msgs: vec![] }).await,
            node.write(Command::MarkRange { user: 1, from: 0, to: 10 }).await,
            node.write(Command::MarkRange { user: 1, from: 5, to: 4 }).await,
        ]
    });
    for result in results {
        assert!(matches!(result, Err(WriteError::Invalid(_))), "{result:?}");
    }
    assert_eq!((node.applied_lsn(), node.mark_count()), (Lsn::ZERO, 0));
    assert_eq!(rt.block_on(node.write(Command::MarkRange { user: 1, from: 0, to: 9 })), Ok(Lsn(1)));
    node.shutdown();
}

#[test]
fn a_second_node_cannot_open_the_same_directory() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let node = open(&config);
    let err = Node::open(config.clone(), Metrics::standalone()).err().expect("second open must fail");
    assert!(err.to_string().contains("in use"), "{err}");
    node.shutdown();
}

#[test]
fn corruption_before_the_tail_stops_opening_with_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.wal.segment_size = bytesize::ByteSize::mib(1);
    let rt = runtime();
    let node = open(&config);
    write_all(&rt, &node, (0..20).map(|i| Command::MarkRead { user: 1, msg: i }).collect());
    node.shutdown();
    drop(node);
    let segment = list_segments(&dir.path().join("wal")).unwrap().remove(0).path;
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[52 * 5 + 30] ^= 0xFF; // inside record 6 (each is 52 bytes)
    std::fs::write(&segment, bytes).unwrap();
    let err =
        Node::open(config.clone(), Metrics::standalone()).err().expect("corruption must stop start-up").to_string();
    assert!(err.contains(&segment.display().to_string()) && err.contains("offset 260"), "{err}");
}

#[test]
fn time_trigger_takes_a_snapshot_once_something_changed() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.snapshot.every = std::time::Duration::from_millis(100);
    let rt = runtime();
    let node = open(&config);
    let snapshots = dir.path().join("snapshots");
    write_all(&rt, &node, workload(10));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while list_snapshots(&snapshots).unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the timer never took a snapshot");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(list_snapshots(&snapshots).unwrap()[0].0, Lsn(10));
    node.shutdown();
}

/// A leader read is answered only by a master that no newer one can have replaced: not
/// a slave (of nobody yet under failover, or of a named master), not a master fenced by
/// a newer epoch, not a master under failover whose lease is not known to hold. Reads
/// default to leader reads exactly on a master under failover.
#[test]
fn a_leader_read_needs_a_master_whose_lease_holds_and_no_newer_epoch() {
    use bitark_engine::LeaderReadError;
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let mut failover = config(dir.path());
    failover.replication.stage = 7.0;
    failover.replication.features.failover = true;
    let node = open(&failover);
    assert!(!node.leader_reads_by_default(), "under failover a node starts as a slave of nobody");
    assert_eq!(node.check_leader_read(), Err(LeaderReadError::NotLeader { epoch: 1, master_url: None }));

    node.set_lease_deadline(Some(Instant::now() + Duration::from_secs(60)));
    node.promote("http://me", None).unwrap();
    assert!(node.leader_reads_by_default());
    assert_eq!(node.check_leader_read(), Ok(()));
    node.set_lease_deadline(Some(Instant::now()));
    assert_eq!(node.check_leader_read(), Err(LeaderReadError::LeaseLapsed));
    node.set_lease_deadline(Some(Instant::now() + Duration::from_secs(60)));
    assert_eq!(node.check_leader_read(), Ok(()));

    assert!(node.observe_epoch(Epoch(5), Some("http://newer")), "a master steps down before a newer epoch");
    let newer = Err(LeaderReadError::NotLeader { epoch: 5, master_url: Some("http://newer".into()) });
    assert_eq!(node.check_leader_read(), newer);
    node.demote("http://newer");
    assert!(!node.leader_reads_by_default());
    assert_eq!(node.check_leader_read(), newer);
    node.shutdown();

    // Without failover a master is the leader by configuration, and reads are local by
    // default.
    let dir = tempfile::tempdir().unwrap();
    let node = open(&config(dir.path()));
    assert!(!node.leader_reads_by_default());
    assert_eq!(node.check_leader_read(), Ok(()));
    node.shutdown();
}
