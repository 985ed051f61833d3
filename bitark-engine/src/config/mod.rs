//! The configuration sections the engine owns, one file per section: `node.rs` (`node`,
//! `snapshot`, `limits`, `reads`), `replication.rs`, `coordination.rs`, `backup.rs`;
//! here the whole [`EngineConfig`], where each section sits in the configuration tree
//! ([`EngineConfig::from_sections`]), what reloads, and the checks across sections.
//! Each struct is the declaration of its section: every field documented with its
//! default; `problems()` lists every invalid value by key.

use bitark_common::replication::Features;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;

mod backup;
mod cluster;
mod coordination;
mod node;
mod replication;

pub use backup::*;
pub use cluster::*;
pub use coordination::*;
pub use node::*;
pub use replication::*;

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

/// The sections of the configuration tree, visited one at a time by top-level key and
/// type. The adapter's loader parses each section from its sources on its own, so that a
/// bad value in one does not hide the problems of the others, and learns from the visit
/// every key the tree takes; its OpenAPI document describes each section the same way.
pub trait Sections {
    /// The section under the top-level key `name`.
    fn section<T: DeserializeOwned + Default + utoipa::ToSchema>(&mut self, name: &'static str) -> T;
}

/// Everything the engine needs to open a node: the engine's sections of the configuration
/// tree, each under the key [`EngineConfig::from_sections`] gives it. Other crates'
/// sections sit beside them at the top level, so this serializes as those keys alone.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct EngineConfig {
    pub node: NodeConfig,
    pub wal: bitark_infra::WalConfig,
    pub snapshot: SnapshotConfig,
    pub limits: LimitsConfig,
    pub reads: ReadsConfig,
    pub replication: ReplicationConfig,
    pub coordination: CoordinationConfig,
    pub backup: BackupConfig,
    pub cluster: ClusterConfig,
}

impl EngineConfig {
    /// The engine's sections, each taken from `sections` under its key: where a field of
    /// this struct sits in the configuration tree.
    pub fn from_sections(sections: &mut impl Sections) -> EngineConfig {
        EngineConfig {
            node: sections.section("node"),
            wal: sections.section("wal"),
            snapshot: sections.section("snapshot"),
            limits: sections.section("limits"),
            reads: sections.section("reads"),
            replication: sections.section("replication"),
            coordination: sections.section("coordination"),
            backup: sections.section("backup"),
            cluster: sections.section("cluster"),
        }
    }

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
        out.extend(self.cluster.problems(self.coordination.etcd.endpoints.len()));
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
    use std::time::Duration;

    fn problems(edit: impl FnOnce(&mut EngineConfig)) -> Vec<String> {
        let mut config = EngineConfig::default();
        edit(&mut config);
        config.problems()
    }

    /// Answers every section's defaults, noting its key.
    struct Keys(Vec<&'static str>);

    impl Sections for Keys {
        fn section<T: DeserializeOwned + Default + utoipa::ToSchema>(&mut self, name: &'static str) -> T {
            self.0.push(name);
            T::default()
        }
    }

    #[test]
    fn each_section_is_read_from_the_key_it_is_written_under() {
        let mut keys = Keys(Vec::new());
        assert_eq!(EngineConfig::from_sections(&mut keys), EngineConfig::default());
        let written = serde_json::to_value(EngineConfig::default()).unwrap();
        let mut written: Vec<&str> = written.as_object().unwrap().keys().map(String::as_str).collect();
        let mut read = keys.0;
        written.sort_unstable();
        read.sort_unstable();
        assert_eq!(read, written);
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
