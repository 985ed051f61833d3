//! The configuration sections the engine owns: `node`, `snapshot`, `limits`, `reads`.
//! Each struct is the declaration of its section: every field documented with its
//! default; `problems()` lists every invalid value by key.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// What this node does in a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Accepts writes.
    Master,
    /// Follows a master (replication); not available in a single-node build.
    Slave,
}

/// `node.*`: identity and storage of this node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Name of this node in the cluster. Default `node-1`.
    pub id: String,
    /// `master | slave`. Default `master`.
    pub role: Role,
    /// Directory holding `wal/`, `snapshots/` and `checkpoint.bin`. Default `./data`.
    pub data_dir: PathBuf,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig { id: "node-1".into(), role: Role::Master, data_dir: PathBuf::from("./data") }
    }
}

/// `snapshot.*`: when snapshots are taken and how many are kept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct SnapshotConfig {
    /// Take a snapshot once this many records were logged since the last one; `0`
    /// turns the count trigger off. Default `1000000`.
    pub every_records: u64,
    /// Take a snapshot at least this often when anything changed; `0s` turns the timer
    /// off. Default `10m`.
    #[serde(with = "humantime_serde")]
    pub every: Duration,
    /// Snapshots kept on disk; the WAL is kept back to the oldest of them so recovery
    /// can fall back when the newest is damaged. Default `2`, minimum `1`.
    pub keep: usize,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig { every_records: 1_000_000, every: Duration::from_secs(600), keep: 2 }
    }
}

/// `limits.*`: the largest requests accepted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Most message ids in one batch mark or check. Default `10000`, maximum `1000000`.
    pub max_batch: usize,
    /// Most message ids one range (`from..=to`) may span, for range marks and unread
    /// counts. Default `1048576`.
    pub max_range: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig { max_batch: 10_000, max_range: 1 << 20 }
    }
}

/// `reads.*`: read consistency.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct ReadsConfig {
    /// How long a read with `minLsn` above the applied LSN waits before answering
    /// that the node is behind. Default `1s`.
    #[serde(with = "humantime_serde")]
    pub min_lsn_wait: Duration,
}

impl Default for ReadsConfig {
    fn default() -> Self {
        ReadsConfig { min_lsn_wait: Duration::from_secs(1) }
    }
}

/// Everything the engine needs to open a node.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EngineConfig {
    pub node: NodeConfig,
    pub wal: bitark_infra::WalConfig,
    pub snapshot: SnapshotConfig,
    pub limits: LimitsConfig,
    pub reads: ReadsConfig,
}

impl EngineConfig {
    /// Every invalid value, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut out = self.wal.problems();
        if self.node.id.trim().is_empty() {
            out.push("node.id: must not be empty".into());
        }
        if self.node.role == Role::Slave {
            out.push("node.role: `slave` needs replication, which this build does not include; use `master`".into());
        }
        if self.node.data_dir.as_os_str().is_empty() {
            out.push("node.data-dir: must not be empty".into());
        }
        if self.snapshot.keep == 0 {
            out.push("snapshot.keep: must be at least 1".into());
        }
        if !(1..=1_000_000).contains(&self.limits.max_batch) {
            out.push(format!("limits.max-batch: {} is outside 1..=1000000", self.limits.max_batch));
        }
        if self.limits.max_range == 0 {
            out.push("limits.max-range: must be at least 1".into());
        }
        out
    }
}
