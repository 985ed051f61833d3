//! What the engine's integration tests share: a node on a test directory, every write
//! fsynced, snapshots taken only when a test asks.

use bitark_engine::{EngineConfig, Node};
use bitark_infra::{FsyncPolicy, Metrics};
use std::path::Path;

/// The configuration of a node on `dir` that fsyncs every batch and takes snapshots
/// only on request.
pub fn config(dir: &Path) -> EngineConfig {
    let mut config = EngineConfig::default();
    config.node.data_dir = dir.to_path_buf();
    config.wal.fsync = FsyncPolicy::Batch;
    config.snapshot.every_records = 0;
    config.snapshot.every = std::time::Duration::ZERO;
    config
}

/// Opens a node with its own metrics registry.
pub fn open(config: &EngineConfig) -> Node {
    Node::open(config.clone(), Metrics::standalone()).unwrap()
}
