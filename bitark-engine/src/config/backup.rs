//! `backup.*`: continuous archiving of the WAL and what pruning keeps.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `backup.*`: continuous archiving of the WAL, and what `bitark backup prune` keeps.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct BackupConfig {
    pub archive: ArchiveConfig,
    pub retention: RetentionConfig,
}

/// `backup.retention.*`: what `bitark backup prune` keeps when its flags do not say.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Full backups kept, newest first, with the incremental backups and archived WAL
    /// they need. Default `4`.
    pub keep_full: usize,
    /// Archived WAL younger than this is kept even when no kept backup needs it.
    /// Default `30d`.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    pub keep_wal: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig { keep_full: 4, keep_wal: Duration::from_secs(30 * 86_400) }
    }
}

/// `backup.archive.*`: each sealed WAL segment is uploaded to a backup target, so that
/// a restore can replay the log past the newest base backup.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// The target (a path, `file://path`, or `s3://bucket/prefix`); empty turns archiving
    /// off. Default empty.
    pub target: String,
    /// How often the node looks for sealed segments, and waits before it tries a failed
    /// upload again. Default `1s`.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    pub interval: Duration,
    /// Sealed segments kept for the archive while it cannot take them; past it the
    /// oldest are given up (and counted) so the disk does not fill. `0` keeps them all.
    /// Default `0`.
    pub max_pending: usize,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig { target: String::new(), interval: Duration::from_secs(1), max_pending: 0 }
    }
}
