//! The configuration sections the engine owns: `node`, `snapshot`, `limits`, `reads`,
//! `replication`.
//! Each struct is the declaration of its section: every field documented with its
//! default; `problems()` lists every invalid value by key.

use bitark_common::replication::Features;
use bitark_infra::DataDir;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The engine configuration in force, shared by a node and every module it runs. Its
/// reloadable keys ([`EngineConfig::RELOADABLE`]) change while the node runs
/// ([`crate::Node::reconfigure`]); readers load it where they use it.
pub type LiveConfig = Arc<arc_swap::ArcSwap<EngineConfig>>;

/// The `replication` section of a [`LiveConfig`] as loaded now: what the hub and the
/// follower read where they use a value.
pub(crate) struct ReplicationNow(arc_swap::Guard<Arc<EngineConfig>>);

impl ReplicationNow {
    pub(crate) fn of(config: &LiveConfig) -> ReplicationNow {
        ReplicationNow(config.load())
    }
}

impl std::ops::Deref for ReplicationNow {
    type Target = ReplicationConfig;

    fn deref(&self) -> &ReplicationConfig {
        &self.0.replication
    }
}

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

/// Longest `replication.batch-linger`.
pub const MAX_BATCH_LINGER: Duration = Duration::from_secs(10);

/// `replication.*`: master/slave replication, rolled out stage by stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct ReplicationConfig {
    /// Slave: base URL of the master, e.g. `http://10.0.0.1:8080`. Default empty.
    pub master_url: String,
    /// Slave: the URL the master reaches this node at. Default empty: the address the
    /// server is bound to.
    pub self_url: String,
    /// Master: slave URLs to contact at start-up, besides the slaves that register
    /// themselves. Default none.
    pub slaves: Vec<String>,
    /// Rollout shorthand: turns on every flag up to this roadmap stage: `0` (off), `1`
    /// notify, `2` progress, `2.5` bounded-buffer, `3` reliable, `4` heartbeat, `5`
    /// full-sync, `6` cluster-gc, `7` fencing and ack-modes. Default `0`.
    pub stage: f64,
    /// Individual flags, added to those of `stage`. Default all off.
    pub features: Features,
    /// Master: the bounded send buffer of each slave (stage 2.5).
    pub buffer: BufferConfig,
    /// Most records in one replication batch. Default `1000`, minimum `1`.
    pub batch_max_records: usize,
    /// Master: a batch of fewer than `batch_max_records` (and under half a send buffer's
    /// limits) is held back until its oldest record is this old, so that a busy master
    /// sends fewer, larger batches. A batch a write waits for (`semi`/`all`) is sent at
    /// once. `0` sends every batch at once. Default `1ms`, at most `10s`.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    pub batch_linger: Duration,
    /// Longest a replication call may take. Default `2s`.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    pub request_timeout: Duration,
    /// Master: retries of failed sends (stage 3).
    pub retry: RetryConfig,
    /// Slave: how often it registers with its master (also its keep-alive). Default `1s`.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    pub register_interval: Duration,
    /// Slave: how often `slave-progress.bin` is rewritten while records arrive
    /// (stage 3); it is also written on shutdown. Default `50ms`.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    pub progress_flush: Duration,
    /// Master: most slaves it follows; further registrations are refused. Default `16`.
    pub max_slaves: usize,
    /// Master: a slave that has neither registered nor answered for this long is
    /// forgotten (its link, buffer and metric series go). Default `10m`.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    pub forget_after: Duration,
    /// Slave: how often it sends its master a heartbeat (stage 4). Default `1s`.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    pub heartbeat_interval: Duration,
    /// Master: a slave silent this long is DEAD; slave: a master unreachable this long
    /// makes the slave not ready (`master_unreachable`) (stage 4). Default `3s`.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    pub dead_after: Duration,
    /// Full sync from a snapshot (stage 5).
    pub full_sync: FullSyncConfig,
    /// Slave: a damaged local WAL makes the node discard its state and full-sync
    /// instead of refusing to start (stage 5; logged loudly). Default `false`.
    pub resync_on_corruption: bool,
    /// Master: `conservative` keeps the WAL every ALIVE or SLOW slave still needs;
    /// `bounded` does the same within `max-lag`, past which a slave is OUTDATED and must
    /// full-sync (stage 6). Default `bounded`.
    pub gc_mode: GcMode,
    /// Master: how far behind a slave may fall before it is OUTDATED under `gc-mode:
    /// bounded`; each limit is optional (`0` off) and the first exceeded wins.
    pub max_lag: MaxLag,
    /// Master: when a write is answered (stage 7, `ack-modes`): `async` after the
    /// master's own fsync, `semi` once `min-acks` ALIVE slaves hold it durably, `all`
    /// once every ALIVE slave does. A write may ask for a stricter mode with `?ack=`.
    /// Default `async`.
    pub ack: AckMode,
    /// Master: slaves that must hold a write under `ack: semi`. Default `1`.
    pub min_acks: usize,
    /// Master: longest a `semi` or `all` write waits for slaves before it answers 504
    /// `replication_timeout` (the record stays durable on the master and still
    /// replicates). Default `5s`.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    pub ack_timeout: Duration,
    /// Master: with fewer ALIVE slaves than the mode needs, wait up to `ack-timeout`
    /// for them (`true`) instead of failing at once with 503 `not_enough_replicas`
    /// (`false`). Default `false`.
    pub ack_wait_for_replicas: bool,
}

/// `replication.ack`: when a write is acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum AckMode {
    /// After the master's fsync.
    #[default]
    Async,
    /// After `min-acks` ALIVE slaves made the record durable.
    Semi,
    /// After every ALIVE slave made the record durable.
    All,
}

impl AckMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AckMode::Async => "async",
            AckMode::Semi => "semi",
            AckMode::All => "all",
        }
    }

    /// Parses `async`, `semi` or `all`.
    pub fn parse(text: &str) -> Option<AckMode> {
        match text {
            "async" => Some(AckMode::Async),
            "semi" => Some(AckMode::Semi),
            "all" => Some(AckMode::All),
            _ => None,
        }
    }

    /// How strict the mode is, to keep the stricter of two.
    fn rank(self) -> u8 {
        self as u8
    }

    /// The stricter of the two modes.
    pub fn max(self, other: AckMode) -> AckMode {
        if other.rank() > self.rank() {
            other
        } else {
            self
        }
    }
}

/// `replication.full-sync.*`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct FullSyncConfig {
    /// Master: most transfers served at once; other slaves wait in a queue. Default `1`.
    pub max_concurrent: usize,
    /// Master: bandwidth of one transfer; `0` unlimited. A chunk goes once the cap allows
    /// its last byte; under a cap chunks hold at most a quarter second of it (at least
    /// 64 KiB), the longest burst at wire speed. Default `0`.
    #[schema(value_type = String)]
    pub max_bytes_per_second: bytesize::ByteSize,
    /// Master: a transfer that makes no progress for this long loses its pin on the
    /// snapshot and the WAL after it. Default `10m`.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    pub pin_timeout: Duration,
    /// Bytes per chunk, each with its own checksum. Default `4MiB`.
    #[schema(value_type = String)]
    pub chunk_size: bytesize::ByteSize,
}

impl Default for FullSyncConfig {
    fn default() -> Self {
        FullSyncConfig {
            max_concurrent: 1,
            max_bytes_per_second: bytesize::ByteSize::b(0),
            pin_timeout: Duration::from_secs(600),
            chunk_size: bytesize::ByteSize::mib(4),
        }
    }
}

/// How the master's WAL garbage collection treats slaves (stage 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum GcMode {
    /// Keep every segment an ALIVE or SLOW slave still needs, however far behind.
    Conservative,
    /// As conservative, but a slave past `max-lag` is OUTDATED and holds nothing back.
    Bounded,
}

/// `replication.max-lag.*`: `0` turns a limit off.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct MaxLag {
    /// Records behind. Default `0` (off).
    pub records: u64,
    /// Bytes of log behind. Default `64MiB`.
    #[schema(value_type = String)]
    pub bytes: bytesize::ByteSize,
    /// Age of the oldest record it has not acknowledged. Default `10m`.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    pub time: Duration,
}

impl Default for MaxLag {
    fn default() -> Self {
        MaxLag { records: 0, bytes: bytesize::ByteSize::mib(64), time: Duration::from_secs(600) }
    }
}

/// `replication.buffer.*`: the master's send buffers. They are bounded at every stage:
/// a slave that overflows its buffer is marked SLOW and caught up from the WAL
/// (`bounded-buffer`), or, at stages 1 and 2, misses the records dropped (GAP).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct BufferConfig {
    /// Records one slave's send buffer holds. Default `100000`.
    pub max_records: usize,
    /// Bytes one slave's send buffer holds. Default `64MiB`.
    #[schema(value_type = String)]
    pub max_bytes: bytesize::ByteSize,
    /// Bytes all send buffers hold together. Default `256MiB`.
    #[schema(value_type = String)]
    pub total_max_bytes: bytesize::ByteSize,
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig {
            max_records: 100_000,
            max_bytes: bytesize::ByteSize::mib(64),
            total_max_bytes: bytesize::ByteSize::mib(256),
        }
    }
}

/// `replication.retry.*`: exponential backoff with equal jitter (half of each delay
/// fixed, half random).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Backoff before the first retry. Default `50ms`.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    pub initial_backoff: Duration,
    /// Longest backoff. Default `2s`.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    pub max_backoff: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig { initial_backoff: Duration::from_millis(50), max_backoff: Duration::from_secs(2) }
    }
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            master_url: String::new(),
            self_url: String::new(),
            slaves: Vec::new(),
            stage: 0.0,
            features: Features::default(),
            buffer: BufferConfig::default(),
            batch_max_records: 1000,
            batch_linger: Duration::from_millis(1),
            request_timeout: Duration::from_secs(2),
            retry: RetryConfig::default(),
            register_interval: Duration::from_secs(1),
            progress_flush: Duration::from_millis(50),
            max_slaves: 16,
            forget_after: Duration::from_secs(600),
            heartbeat_interval: Duration::from_secs(1),
            dead_after: Duration::from_secs(3),
            full_sync: FullSyncConfig::default(),
            resync_on_corruption: false,
            gc_mode: GcMode::Bounded,
            max_lag: MaxLag::default(),
            ack: AckMode::Async,
            min_acks: 1,
            ack_timeout: Duration::from_secs(5),
            ack_wait_for_replicas: false,
        }
    }
}

impl ReplicationConfig {
    /// The flags in force: those of `stage` plus the individual ones.
    pub fn effective_features(&self) -> Features {
        Features::up_to_stage(self.stage).unwrap_or_default().union(self.features)
    }

    fn problems(&self, role: Role) -> Vec<String> {
        let mut out = Vec::new();
        if Features::up_to_stage(self.stage).is_none() {
            let stages: Vec<String> = Features::STAGES.iter().map(|(s, _)| s.to_string()).collect();
            out.push(format!(
                "replication.stage: {} is not a stage this build has; use one of {}",
                self.stage,
                stages.join(", ")
            ));
        }
        let features = self.effective_features();
        for (flag, missing) in features.rollout_violations() {
            out.push(format!(
                "replication.features: `{flag}` needs `{missing}` (rollout order: {})",
                Features::NAMES.join(", ")
            ));
        }
        if role == Role::Slave {
            // Under fencing a slave may follow the master its epoch file names instead
            // (checked at start-up); under failover etcd names it.
            if self.master_url.trim().is_empty() && !features.fencing {
                out.push("replication.master-url: a slave needs its master's URL".into());
            }
            if !features.notify {
                out.push("replication.stage: a slave needs replication turned on (stage 1 or later)".into());
            }
        }
        for (key, url) in [("replication.master-url", &self.master_url), ("replication.self-url", &self.self_url)] {
            let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
            if !url.is_empty() && !scheme_ok {
                out.push(format!("{key}: `{url}` must start with http:// or https://"));
            }
        }
        if self.ack != AckMode::Async && !features.ack_modes {
            out.push(format!(
                "replication.ack: `{}` needs replication.features.ack-modes (stage 7)",
                self.ack.as_str()
            ));
        }
        if self.min_acks == 0 {
            out.push("replication.min-acks: must be at least 1".into());
        }
        if self.ack_timeout.is_zero() {
            out.push("replication.ack-timeout: must be above 0".into());
        }
        if self.batch_max_records == 0 {
            out.push("replication.batch-max-records: must be at least 1".into());
        }
        if self.batch_linger > MAX_BATCH_LINGER {
            out.push(format!(
                "replication.batch-linger: {:?} is above the maximum of {MAX_BATCH_LINGER:?}: a held batch is lag on every slave",
                self.batch_linger
            ));
        }
        if self.buffer.max_records == 0
            || self.buffer.max_bytes.as_u64() == 0
            || self.buffer.total_max_bytes.as_u64() == 0
        {
            out.push("replication.buffer: max-records, max-bytes and total-max-bytes must be at least 1".into());
        }
        if self.max_slaves == 0 {
            out.push("replication.max-slaves: must be at least 1".into());
        }
        if self.forget_after < self.register_interval.saturating_mul(3) {
            out.push("replication.forget-after: must be at least three register-intervals".into());
        }
        if self.resync_on_corruption && role == Role::Master {
            out.push(
                "replication.resync-on-corruption: only a slave may discard its state; a master's log is the \
                 cluster's"
                    .into(),
            );
        } else if self.resync_on_corruption && !features.full_sync {
            out.push("replication.resync-on-corruption: needs replication.features.full-sync (stage 5)".into());
        }
        if self.heartbeat_interval.is_zero() || self.dead_after <= self.heartbeat_interval {
            out.push("replication.dead-after: must be longer than replication.heartbeat-interval (> 0)".into());
        }
        let full_sync = &self.full_sync;
        if full_sync.max_concurrent == 0 {
            out.push("replication.full-sync.max-concurrent: must be at least 1".into());
        }
        if full_sync.pin_timeout.is_zero() {
            out.push("replication.full-sync.pin-timeout: must be greater than zero".into());
        }
        if !(64 * 1024..=64 << 20).contains(&full_sync.chunk_size.as_u64()) {
            out.push("replication.full-sync.chunk-size: must be between 64KiB and 64MiB".into());
        }
        if self.retry.initial_backoff.is_zero() || self.retry.max_backoff < self.retry.initial_backoff {
            out.push("replication.retry: initial-backoff must be > 0 and max-backoff at least initial-backoff".into());
        }
        if self.request_timeout.is_zero() || self.register_interval.is_zero() || self.progress_flush.is_zero() {
            out.push("replication: request-timeout, register-interval and progress-flush must be > 0".into());
        }
        out
    }
}

/// `coordination.*`: where failover (`replication.features.failover`) keeps the leader
/// lease and the epoch counter. Without the flag these keys are not used and the node
/// runs in static mode (roles from `node.role` and `epoch.bin`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct CoordinationConfig {
    pub etcd: EtcdConfig,
    /// Time-to-live of the leader lease, whole seconds: a master that cannot renew it
    /// stops taking writes a quarter of it before it can expire, and the slaves elect a
    /// new master once it has. etcd raises a TTL below its own minimum (2s by default).
    /// Default `2s`.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    pub lease_ttl: Duration,
}

impl Default for CoordinationConfig {
    fn default() -> Self {
        CoordinationConfig { etcd: EtcdConfig::default(), lease_ttl: Duration::from_secs(2) }
    }
}

/// `coordination.etcd.*`: the etcd cluster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct EtcdConfig {
    /// Client URLs of the etcd members (`http://host:2379`). Default none.
    pub endpoints: Vec<String>,
    /// Key prefix of this cluster's keys (`<prefix>/leader`, `<prefix>/epoch`,
    /// `<prefix>/members/<node id>`). Default `/bitark`.
    pub prefix: String,
    /// Longest one etcd call may take. Default `500ms`.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    pub timeout: Duration,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig { endpoints: Vec::new(), prefix: "/bitark".into(), timeout: Duration::from_millis(500) }
    }
}

impl CoordinationConfig {
    fn problems(&self, failover: bool) -> Vec<String> {
        let mut out = Vec::new();
        if failover && self.etcd.endpoints.is_empty() {
            out.push(
                "replication.features.failover: needs coordination.etcd.endpoints (the etcd that holds the leader lease)"
                    .into(),
            );
        }
        for url in &self.etcd.endpoints {
            if !url.starts_with("http://") && !url.starts_with("https://") {
                out.push(format!("coordination.etcd.endpoints: `{url}` must start with http:// or https://"));
            }
        }
        if !self.etcd.prefix.starts_with('/') || self.etcd.prefix.ends_with('/') {
            out.push(format!(
                "coordination.etcd.prefix: `{}` must start with `/` and not end with one",
                self.etcd.prefix
            ));
        }
        if self.lease_ttl < Duration::from_secs(1) || self.lease_ttl.subsec_nanos() != 0 {
            out.push("coordination.lease-ttl: must be whole seconds, at least 1s (etcd leases count seconds)".into());
        }
        if self.etcd.timeout.is_zero() || self.etcd.timeout * 2 > self.lease_ttl {
            out.push("coordination.etcd.timeout: must be above 0 and at most half of coordination.lease-ttl".into());
        }
        out
    }
}

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

/// Everything the engine needs to open a node.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EngineConfig {
    pub node: NodeConfig,
    pub wal: bitark_infra::WalConfig,
    pub snapshot: SnapshotConfig,
    pub limits: LimitsConfig,
    pub reads: ReadsConfig,
    pub replication: ReplicationConfig,
    pub coordination: CoordinationConfig,
    pub backup: BackupConfig,
}

impl EngineConfig {
    /// The keys that take effect while the node runs (a key ending in `.` stands for
    /// every key under it). Every other key of the engine's sections needs a restart.
    /// `replication.features.failover` is the one flag that does.
    pub const RELOADABLE: &'static [&'static str] = &[
        "snapshot.",
        "limits.",
        "reads.",
        "replication.stage",
        "replication.features.",
        "replication.buffer.",
        "replication.batch-max-records",
        "replication.batch-linger",
        "replication.retry.",
        "replication.register-interval",
        "replication.progress-flush",
        "replication.max-slaves",
        "replication.forget-after",
        "replication.heartbeat-interval",
        "replication.dead-after",
        "replication.full-sync.",
        "replication.gc-mode",
        "replication.max-lag.",
        "replication.ack",
        "replication.min-acks",
        "replication.ack-timeout",
        "replication.ack-wait-for-replicas",
    ];

    /// The keys under a reloadable prefix that still need a restart.
    pub const RESTART_ONLY: &'static [&'static str] = &["replication.features.failover"];

    /// Whether the dotted `key` takes effect without a restart.
    pub fn is_reloadable(key: &str) -> bool {
        !Self::RESTART_ONLY.contains(&key)
            && Self::RELOADABLE.iter().any(|r| if r.ends_with('.') { key.starts_with(r) } else { key == *r })
    }

    /// This configuration with the reloadable keys of `new`: what a node runs after a
    /// refresh. Everything else (identity, storage, the log, coordination, whom a slave
    /// follows) stays as it started.
    pub fn with_reloaded(&self, new: &EngineConfig) -> EngineConfig {
        let mut out = self.clone();
        out.snapshot = new.snapshot.clone();
        out.limits = new.limits.clone();
        out.reads = new.reads.clone();
        let (r, n) = (&mut out.replication, &new.replication);
        r.stage = n.stage;
        r.features = Features { failover: r.features.failover, ..n.features };
        r.buffer = n.buffer.clone();
        r.batch_max_records = n.batch_max_records;
        r.batch_linger = n.batch_linger;
        r.retry = n.retry.clone();
        r.register_interval = n.register_interval;
        r.progress_flush = n.progress_flush;
        r.max_slaves = n.max_slaves;
        r.forget_after = n.forget_after;
        r.heartbeat_interval = n.heartbeat_interval;
        r.dead_after = n.dead_after;
        r.full_sync = n.full_sync.clone();
        r.gc_mode = n.gc_mode;
        r.max_lag = n.max_lag.clone();
        r.ack = n.ack;
        r.min_acks = n.min_acks;
        r.ack_timeout = n.ack_timeout;
        r.ack_wait_for_replicas = n.ack_wait_for_replicas;
        out
    }

    /// Whether roles come from the etcd election (`replication.features.failover`).
    pub fn failover(&self) -> bool {
        self.replication.effective_features().failover
    }

    /// Whether a damaged local log may be discarded at start-up for a resync from the
    /// master: a slave, with `replication.resync-on-corruption` and full sync on.
    pub fn may_resync_on_corruption(&self) -> bool {
        self.node.role == Role::Slave
            && self.replication.resync_on_corruption
            && self.replication.effective_features().full_sync
    }

    /// Every invalid value, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut out = self.wal.problems();
        if self.node.id.trim().is_empty() {
            out.push("node.id: must not be empty".into());
        }
        out.extend(self.replication.problems(self.node.role));
        out.extend(self.coordination.problems(self.failover()));
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
        let archive = &self.backup.archive;
        let target = archive.target.as_str();
        let scheme_ok = !target.contains("://") || target.starts_with("file://") || target.starts_with("s3://");
        if !scheme_ok || target == "s3://" || target.starts_with("s3:///") {
            out.push(format!("backup.archive.target: `{target}` is not a path, file:// or s3://bucket/prefix URL"));
        }
        if archive.interval.is_zero() {
            out.push("backup.archive.interval: must be greater than zero".into());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(edit: impl FnOnce(&mut EngineConfig)) -> Vec<String> {
        let mut config = EngineConfig::default();
        edit(&mut config);
        config.problems()
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(problems(|_| {}), Vec::<String>::new());
    }

    #[test]
    fn a_flag_without_an_earlier_one_is_named_with_what_it_needs() {
        let found = problems(|c| {
            c.replication.features.notify = true;
            c.replication.features.reliable = true;
        });
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("`reliable` needs `progress`"), "{found:?}");
    }

    #[test]
    fn stage_shorthand_turns_on_every_flag_up_to_it_and_adds_explicit_flags() {
        let mut config = ReplicationConfig { stage: 2.0, ..ReplicationConfig::default() };
        assert_eq!(config.effective_features().enabled(), vec!["notify", "progress"]);
        config.features.bounded_buffer = true;
        assert_eq!(config.effective_features().enabled(), vec!["notify", "progress", "bounded-buffer"]);
        assert!(config.problems(Role::Master).is_empty());
    }

    #[test]
    fn only_a_slave_with_full_sync_may_discard_a_damaged_log() {
        let on_master = problems(|c| {
            c.replication.stage = 5.0;
            c.replication.resync_on_corruption = true;
        });
        assert!(on_master.iter().any(|p| p.contains("only a slave may discard")), "{on_master:?}");
        let slave = |stage: f64| {
            let mut c = EngineConfig::default();
            c.node.role = Role::Slave;
            c.replication.master_url = "http://127.0.0.1:1".into();
            c.replication.stage = stage;
            c.replication.resync_on_corruption = true;
            c
        };
        let early = slave(4.0).problems();
        assert!(early.iter().any(|p| p.contains("needs replication.features.full-sync")), "{early:?}");
        assert!(slave(5.0).may_resync_on_corruption());
        assert!(!EngineConfig::default().may_resync_on_corruption());
    }

    #[test]
    fn failover_needs_etcd_and_a_lease_etcd_can_keep() {
        let found = problems(|c| {
            c.replication.stage = 7.0;
            c.replication.features.failover = true;
        });
        assert!(found.iter().any(|p| p.contains("needs coordination.etcd.endpoints")), "{found:?}");
        let early = problems(|c| {
            c.replication.stage = 6.0;
            c.replication.features.failover = true;
            c.coordination.etcd.endpoints = vec!["http://127.0.0.1:2379".into()];
        });
        assert!(early.iter().any(|p| p.contains("`failover` needs `fencing`")), "{early:?}");
        let found = problems(|c| {
            c.coordination.etcd.endpoints = vec!["127.0.0.1:2379".into()];
            c.coordination.etcd.prefix = "bitark/".into();
            c.coordination.lease_ttl = Duration::from_millis(1500);
        });
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[2].contains("whole seconds"), "{found:?}");
        let ok = problems(|c| {
            c.replication.stage = 7.0;
            c.replication.features.failover = true;
            c.coordination.etcd.endpoints = vec!["http://127.0.0.1:2379".into()];
        });
        assert!(ok.is_empty(), "{ok:?}");
        assert!(!Features::up_to_stage(7.0).unwrap().failover, "no stage turns failover on");
    }

    #[test]
    fn unknown_stages_and_incomplete_slaves_are_refused() {
        let found = problems(|c| c.replication.stage = 4.5);
        assert!(found.iter().any(|p| p.starts_with("replication.stage: 4.5")), "{found:?}");
        assert!(problems(|c| c.replication.stage = 6.0).is_empty());
        let found = problems(|c| {
            c.node.role = Role::Slave;
            c.replication.stage = 3.0;
        });
        assert!(found.iter().any(|p| p.starts_with("replication.master-url")), "{found:?}");
        let found = problems(|c| {
            c.node.role = Role::Slave;
            c.replication.master_url = "127.0.0.1:8080".into();
        });
        assert!(found.iter().any(|p| p.contains("must start with http://")), "{found:?}");
        assert!(found.iter().any(|p| p.contains("stage 1 or later")), "{found:?}");
    }

    #[test]
    fn a_batch_may_linger_at_most_ten_seconds() {
        assert!(problems(|c| c.replication.batch_linger = Duration::ZERO).is_empty());
        assert!(problems(|c| c.replication.batch_linger = MAX_BATCH_LINGER).is_empty());
        let found = problems(|c| c.replication.batch_linger = Duration::from_secs(11));
        assert_eq!(
            found,
            ["replication.batch-linger: 11s is above the maximum of 10s: a held batch is lag on every slave"],
            "{found:?}"
        );
    }
}
