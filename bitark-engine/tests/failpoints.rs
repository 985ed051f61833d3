//! Storage faults injected at the named points of the write path: a write that failed
//! is never acknowledged, and after an fsync failure the node refuses every further
//! write (the log's content after a failed fsync is unknown), until it is restarted.

use bitark_common::{Command, Lsn};
use bitark_engine::{EngineConfig, Node, WriteError};
use bitark_infra::{FsyncPolicy, Metrics};

fn open(dir: &std::path::Path) -> Node {
    let mut config = EngineConfig::default();
    config.node.data_dir = dir.to_path_buf();
    config.wal.fsync = FsyncPolicy::Batch;
    Node::open(config, Metrics::standalone()).unwrap()
}

fn write(node: &Node, msg: u64) -> Result<Lsn, WriteError> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(node.write(Command::MarkRead { user: 1, msg }))
}

#[test]
fn failed_writes_are_not_acknowledged_and_the_node_fails_stop() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let node = open(dir.path());
    assert_eq!(write(&node, 1), Ok(Lsn(1)));

    fail::cfg("wal::before-write", "return").unwrap();
    assert!(matches!(write(&node, 2), Err(WriteError::Storage(_))));
    fail::remove("wal::before-write");
    assert!(!node.is_healthy(), "a failed write stops the log");
    assert!(matches!(write(&node, 3), Err(WriteError::Storage(_))), "and every write after it is refused");
    assert!(!node.is_read(1, 2) && !node.is_read(1, 3), "nothing unacknowledged is visible");
    node.shutdown();
    drop(node);

    let node = open(dir.path());
    assert_eq!(node.applied_lsn(), Lsn(1));
    assert!(node.is_read(1, 1) && !node.is_read(1, 2));
    assert_eq!(write(&node, 4), Ok(Lsn(2)), "a restart clears the failure");
    node.shutdown();
    drop(node);

    let dir = tempfile::tempdir().unwrap();
    let node = open(dir.path());
    fail::cfg("wal::before-fsync", "return").unwrap();
    assert!(matches!(write(&node, 1), Err(WriteError::Storage(_))));
    fail::remove("wal::before-fsync");
    assert!(!node.is_healthy());
    assert!(!node.is_read(1, 1), "a record whose fsync failed is never applied");
    assert_eq!(node.durable_lsn(), Lsn::ZERO);
    node.shutdown();
    scenario.teardown();
}
