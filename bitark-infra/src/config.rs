//! The `wal` configuration section.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// When the write-ahead log calls fsync.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum FsyncPolicy {
    /// One fsync per group-commit batch; a write is answered only once durable.
    Batch,
    /// fsync every `fsync-interval` (like Redis `appendfsync everysec`): a crash can lose
    /// up to one interval of acknowledged writes.
    Interval,
    /// Never fsync; the OS decides. For tests and benchmarks only.
    Never,
}

/// `wal.*`: the write-ahead log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct WalConfig {
    /// A segment is closed and a new one started once it reaches this size.
    /// Default `64MiB`, minimum `64KiB`.
    #[schema(value_type = String)]
    pub segment_size: bytesize::ByteSize,
    /// `batch | interval | never`. Default `batch`.
    pub fsync: FsyncPolicy,
    /// Period of the background fsync under `fsync: interval`. Default `1s`.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    pub fsync_interval: Duration,
    /// Most records one group-commit batch carries. Default `4096`, minimum `1`.
    pub max_batch_records: usize,
    /// Most writes waiting for the log; more are refused with 503. Default `65536`.
    pub queue_capacity: usize,
    /// After a write could not be logged (a full disk), how often the log tries again
    /// while no write arrives; every new write is a retry too. Default `1s`.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    pub retry_interval: Duration,
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            segment_size: bytesize::ByteSize::mib(64),
            fsync: FsyncPolicy::Batch,
            fsync_interval: Duration::from_secs(1),
            max_batch_records: 4096,
            queue_capacity: 65536,
            retry_interval: Duration::from_secs(1),
        }
    }
}

impl WalConfig {
    /// Every problem with these values, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.segment_size.as_u64() < 64 * 1024 {
            out.push(format!("wal.segment-size: {} is below the minimum of 64KiB", self.segment_size));
        }
        if self.fsync_interval.is_zero() {
            out.push("wal.fsync-interval: must be greater than zero".to_string());
        }
        if self.max_batch_records == 0 {
            out.push("wal.max-batch-records: must be at least 1".to_string());
        }
        if self.retry_interval.is_zero() {
            out.push("wal.retry-interval: must be greater than zero".to_string());
        }
        if self.queue_capacity == 0 {
            out.push("wal.queue-capacity: must be at least 1".to_string());
        }
        out
    }
}
