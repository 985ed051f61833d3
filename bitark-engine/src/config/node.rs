//! `node.*`, `snapshot.*`, `limits.*` and `reads.*`: the node's identity and storage,
//! its snapshots, the largest requests it takes, and read consistency.

use bitark_infra::DataDir;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// What this node does in a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Accepts writes.
    Master,
    /// Follows a master: logs and applies its records, serves reads, and answers
    /// writes with the master's address.
    Slave,
}

/// `node.*`: identity and storage of this node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Name of this node in the cluster. Default `node-1`.
    pub id: String,
    /// `master | slave`. Default `master`.
    pub role: Role,
    /// Directory holding `wal/`, `snapshots/` and the `LOCK` file. Default `./data`.
    #[schema(value_type = String)]
    pub data_dir: PathBuf,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig { id: "node-1".into(), role: Role::Master, data_dir: PathBuf::from("./data") }
    }
}

impl NodeConfig {
    /// The data directory's layout: every path the node keeps there.
    pub fn dir(&self) -> DataDir {
        DataDir::new(&self.data_dir)
    }
}

/// `snapshot.*`: when snapshots are taken and how many are kept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct SnapshotConfig {
    /// Take a snapshot once this many records were logged since the last one; `0`
    /// turns the count trigger off. Default `1000000`.
    pub every_records: u64,
    /// Take a snapshot at least this often when anything changed; `0s` turns the timer
    /// off. Default `10m`.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Most message ids in one batch mark or check. Default `10000`, maximum `1000000`.
    pub max_batch: usize,
    /// Most message ids one range (`from..=to`) may span, for range marks and unread
    /// counts. Default `1048576`.
    pub max_range: u64,
    /// Most marks one user may hold; a write that would take a user past it is refused
    /// (409 `mark_limit`). `0` turns the limit off. Default `0`.
    pub max_marks_per_user: u64,
    /// Above this resident memory, writes that add marks are refused (507
    /// `memory_limit`) while reads and unmarks go on. `0` turns the guard off. Default `0`.
    #[schema(value_type = String)]
    pub max_memory: bytesize::ByteSize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_batch: 10_000,
            max_range: 1 << 20,
            max_marks_per_user: 0,
            max_memory: bytesize::ByteSize::b(0),
        }
    }
}

/// `reads.*`: read consistency.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct ReadsConfig {
    /// How long a read with `minLsn` above the applied LSN waits before answering
    /// that the node is behind. Default `1s`.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    pub min_lsn_wait: Duration,
    /// What a slave does with a read whose `minLsn` or `token` it has not reached:
    /// `wait` up to `min-lsn-wait`, or `redirect` at once with 307 to the same request
    /// on the master. Default `wait`.
    pub on_lag: OnLag,
}

/// `reads.on-lag`: a slave behind the position a read asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OnLag {
    #[default]
    Wait,
    Redirect,
}

impl Default for ReadsConfig {
    fn default() -> Self {
        ReadsConfig { min_lsn_wait: Duration::from_secs(1), on_lag: OnLag::Wait }
    }
}
