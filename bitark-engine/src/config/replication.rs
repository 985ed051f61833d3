//! `replication.*`: master/slave replication, stage by stage, with its ack mode, full
//! sync, lag limits, send buffers and retry backoff.

use super::node::Role;
use bitark_common::replication::Features;
use serde::{Deserialize, Serialize};
use std::time::Duration;

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

    pub(super) fn problems(&self, role: Role) -> Vec<String> {
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
