//! Storage faults injected at the named points of the write path and the snapshotter.
//! Every failed write says whether it is in the log, and the answer holds after a
//! restart:
//! - not logged (a full disk, a failed write): refused, absent after a restart, and
//!   writes resume by themselves once the fault is gone;
//! - outcome unknown (a failed fsync): the node refuses every further write until it is
//!   restarted, because what reached the disk is unknown;
//! - the writer thread dying leaves the node failed, not "shutting down".

use bitark_common::{Command, Epoch, Lsn};
use bitark_engine::{EngineConfig, Node, SnapshotError, WriteError};
use bitark_infra::wal::{list_segments, replay, Applier, GroupCommit, WalHealth};
use bitark_infra::{FsyncPolicy, Metrics, WalConfig};
use std::path::Path;

mod support;

/// A log that retries a failed write every 20 ms.
fn config(dir: &Path) -> EngineConfig {
    let mut config = support::config(dir);
    config.wal.retry_interval = std::time::Duration::from_millis(20);
    config
}

fn open(dir: &Path) -> Node {
    support::open(&config(dir))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn write(node: &Node, msg: u64) -> Result<Lsn, WriteError> {
    runtime().block_on(node.write(Command::MarkRead { user: 1, msg }))
}

fn is_no_space(health: &WalHealth) -> bool {
    matches!(health, WalHealth::Degraded { no_space: true, .. })
}

#[test]
fn a_full_disk_refuses_writes_without_logging_them_and_writes_resume_once_space_is_back() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    // Small segments: the log soon needs new space, at rotation and past it.
    config.wal.segment_size = bytesize::ByteSize::kib(64);
    let node = Node::open(config.clone(), Metrics::standalone()).unwrap();
    assert_eq!(write(&node, 0), Ok(Lsn(1)));

    // No space can be reserved from now on: the spare segment cannot be made, so the
    // log grows past its preallocation and then cannot reserve more.
    fail::cfg("wal::allocate", "return").unwrap();
    let mut acknowledged = vec![0];
    let mut refused = Vec::new();
    for msg in 1..5000 {
        match write(&node, msg) {
            Ok(_) => acknowledged.push(msg),
            Err(WriteError::NoSpace(message)) => {
                assert!(message.contains("full") && message.contains("not logged"), "{message}");
                refused.push(msg);
                if refused.len() == 3 {
                    break;
                }
            }
            Err(other) => panic!("write {msg}: {other:?}"),
        }
    }
    assert_eq!(refused.len(), 3, "the disk never filled up");
    assert!(is_no_space(&node.wal_health()), "{:?}", node.wal_health());
    assert!(refused.iter().all(|msg| !node.is_read(1, *msg)), "a refused write is visible");
    assert!(node.is_read(1, *acknowledged.last().unwrap()), "reads keep working");

    // Space is back: the next write is the retry.
    fail::remove("wal::allocate");
    let lsn = write(&node, 9999).expect("writes resume once space is back");
    assert_eq!(lsn, Lsn(acknowledged.len() as u64 + 1), "refused writes took no LSN");
    assert_eq!(node.wal_health(), WalHealth::Healthy);
    node.shutdown();
    drop(node);

    let node = Node::open(config, Metrics::standalone()).unwrap();
    assert!(acknowledged.iter().all(|msg| node.is_read(1, *msg)), "an acknowledged write was lost");
    assert!(refused.iter().all(|msg| !node.is_read(1, *msg)), "a refused write came back after a restart");
    assert!(node.is_read(1, 9999));
    node.shutdown();
    scenario.teardown();
}

#[test]
fn an_idle_log_retries_on_its_own_and_becomes_ready_again() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::standalone();
    let node = Node::open(config(dir.path()), metrics.clone()).unwrap();
    fail::cfg("wal::before-write", "return(enospc)").unwrap();
    assert!(matches!(write(&node, 1), Err(WriteError::NoSpace(_))));
    // The retries see the fault still there: the log stays degraded through them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while metrics.wal_retries.get() < 3 {
        assert!(std::time::Instant::now() < deadline, "the log never retried");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(is_no_space(&node.wal_health()), "healthy again while writes still fail: {:?}", node.wal_health());
    fail::remove("wal::before-write");
    // No write arrives; the retry timer alone must bring the log back.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while node.wal_health() != WalHealth::Healthy {
        assert!(std::time::Instant::now() < deadline, "the log never retried: {:?}", node.wal_health());
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(write(&node, 2), Ok(Lsn(1)));
    node.shutdown();
    scenario.teardown();
}

/// Collects nothing: the tests below read the log itself.
struct Discard;

impl Applier for Discard {
    fn apply(&mut self, _: &[bitark_common::Record]) {}
}

#[test]
fn what_a_half_finished_write_left_behind_is_erased_before_it_is_answered() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let config = WalConfig { fsync: FsyncPolicy::Batch, ..WalConfig::default() };
    let wal = GroupCommit::start(dir.path(), &config, Lsn(1), Epoch(1), Discard, Metrics::standalone()).unwrap();
    let rt = runtime();
    let mark = |msg| Command::MarkRead { user: 1, msg };
    // Hold the writer inside the first batch so the next proposals queue up and go out
    // as one batch of several records, half of which reach the file.
    fail::cfg("wal::before-write", "pause").unwrap();
    let first = wal.propose(mark(1)).unwrap();
    let queued: Vec<_> = (2..=9).map(|msg| wal.propose(mark(msg)).unwrap()).collect();
    fail::cfg("wal::partial-write", "return").unwrap();
    fail::remove("wal::before-write");
    assert!(matches!(rt.block_on(first).unwrap(), Err(bitark_infra::wal::ProposeError::NoSpace(_))));
    for reply in queued {
        assert!(matches!(rt.block_on(reply).unwrap(), Err(bitark_infra::wal::ProposeError::NoSpace(_))));
    }
    // The process dies now: what is in the files is what a restart finds.
    let crashed = tempfile::tempdir().unwrap();
    for segment in list_segments(dir.path()).unwrap() {
        std::fs::copy(&segment.path, crashed.path().join(segment.path.file_name().unwrap())).unwrap();
    }
    let mut found = Vec::new();
    let outcome = replay(crashed.path(), Lsn::ZERO, |record| found.push(record.lsn)).unwrap();
    assert_eq!(found, Vec::<Lsn>::new(), "records of a write answered as not logged are in the log");
    assert_eq!(outcome.truncated, None, "nothing of the failed writes is left, not even a torn record");
    fail::remove("wal::partial-write");
    assert_eq!(rt.block_on(wal.propose(mark(10)).unwrap()).unwrap(), Ok(Lsn(1)));
    wal.shutdown();
    scenario.teardown();
}

#[test]
fn a_failed_fsync_leaves_the_outcome_unknown_and_stops_writes_until_restart() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let node = open(dir.path());
    assert_eq!(write(&node, 1), Ok(Lsn(1)));
    fail::cfg("wal::before-fsync", "return").unwrap();
    match write(&node, 2) {
        Err(WriteError::OutcomeUnknown(message)) => assert!(message.contains("unknown"), "{message}"),
        other => panic!("{other:?}"),
    }
    fail::remove("wal::before-fsync");
    assert!(matches!(node.wal_health(), WalHealth::Failed { .. }), "{:?}", node.wal_health());
    match write(&node, 3) {
        Err(WriteError::Stopped(message)) => assert!(message.contains("not logged"), "{message}"),
        other => panic!("every write after it is refused: {other:?}"),
    }
    assert!(!node.is_read(1, 2) && !node.is_read(1, 3), "nothing unacknowledged is visible");
    assert_eq!(node.durable_lsn(), Lsn(1));
    node.shutdown();
    drop(node);

    let node = open(dir.path());
    assert!(node.is_read(1, 1));
    assert_eq!(node.wal_health(), WalHealth::Healthy, "a restart clears the failure");
    // The write whose fsync failed may or may not be there (here the page cache kept
    // it); either way the log goes on after whatever is there.
    let found = node.recovery().applied;
    assert_eq!(node.is_read(1, 2), found == Lsn(2), "the state is what the log holds");
    assert_eq!(write(&node, 4), Ok(found.next()), "LSNs continue after what recovery found");
    node.shutdown();
    scenario.teardown();
}

#[test]
fn a_dead_writer_thread_fails_the_node_instead_of_looking_like_a_shutdown() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let node = open(dir.path());
    assert_eq!(write(&node, 1), Ok(Lsn(1)));
    fail::cfg("wal::writer-panic", "panic").unwrap();
    // The thread's own report of its death comes late; the failed write must not wait for it.
    fail::cfg("wal::before-crash-report", "sleep(300)").unwrap();
    let died = write(&node, 2);
    fail::remove("wal::writer-panic");
    assert!(matches!(died, Err(WriteError::Stopped(_))), "{died:?}");
    match node.wal_health() {
        WalHealth::Failed { reason } => assert!(reason.contains("stopped unexpectedly"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(write(&node, 3), Err(WriteError::Stopped(_))));
    assert!(node.is_read(1, 1), "reads keep working");
    node.shutdown();
    fail::remove("wal::before-crash-report");
    scenario.teardown();
}

#[test]
fn a_failed_snapshot_says_what_failed_and_leaves_nothing_half_written() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let node = open(dir.path());
    let rt = runtime();
    write(&node, 1).unwrap();
    fail::cfg("snapshot::before-rename", "return").unwrap();
    match rt.block_on(node.snapshot_now()) {
        Err(SnapshotError::Storage { summary, detail, no_space }) => {
            assert!(summary.contains("injected failure at snapshot::before-rename"), "{summary}");
            let dir_text = dir.path().display().to_string();
            assert!(!summary.contains(&dir_text), "the summary leaks a path: {summary}");
            assert!(detail.contains(&dir_text), "the detail names the file: {detail}");
            assert!(!no_space);
        }
        other => panic!("{other:?}"),
    }
    fail::remove("snapshot::before-rename");
    let snapshots = dir.path().join("snapshots");
    let left: Vec<_> = std::fs::read_dir(&snapshots).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "a failed snapshot left files behind: {left:?}");
    let taken = rt.block_on(node.snapshot_now()).expect("the next snapshot works");
    assert_eq!(taken.lsn, Lsn(1));
    node.shutdown();
    scenario.teardown();
}
