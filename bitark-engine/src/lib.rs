//! The services of BitArk: the read-state machine and everything that keeps it
//! durable and recoverable. No file or socket I/O happens here except through
//! `bitark-infra`.
//!
//! # Layout
//! - [`config`]: one file per section the engine owns (`node`, `snapshot`, `limits`,
//!   `reads` in `config/node.rs`; `replication`, `coordination`, `backup`), and the
//!   whole [`EngineConfig`]: the key of each section, what reloads.
//! - [`node`]: [`Node`], the handle the adapter uses, one file per job: `open`
//!   (recovery, epochs, the starting role), `write` (validation, proposing, acks,
//!   replicated records), `reads` (answers, LSN waits, leader reads), `roles` (role,
//!   flags, lease, the master hub), `fencing` (stage 7: promotion, stepping down,
//!   adopting a history, write tokens), `snapshots`, `backup`, `replica`.
//! - [`replication`]: the master hub and senders, the slave follower, each stage's
//!   logic (stage 5 full sync in `replication/full_sync.rs` and `full_sync_client.rs`,
//!   stage 6 in `gc.rs`, stage 7 acks in `ack.rs`), their status.
//! - [`replication_side`]: the one owner of the side a node runs (hub, follower or
//!   neither) and the sequencing of its role changes: promotion, stepping down,
//!   following a master, standing by, a change of the flags in force.
//! - [`modules`]: the plugin modules: each flag-gated replication capability wired to
//!   its stage's start function, and the list the adapter starts from.
//! - [`coordination`]: automatic failover through etcd: the leader lease, the
//!   election of the most advanced member, fencing by time; `coordination/status.rs`
//!   the records it keeps and shows.
//! - [`sharding`]: many replication groups: the shard map in etcd, changed by
//!   compare-and-swap, and where each group keeps its keys.
//! - [`readset`]: the per-user set, compact for the many users with few marks.
//! - [`store`]: [`ReadStore`], users sharded over read-write locks, and its side of a
//!   snapshot.
//! - `apply`: the single path by which log records change the store, shared by
//!   recovery and the group-commit writer.
//! - `recovery`: newest valid snapshot, then the log after it.
//! - `snapshotter`: background fuzzy snapshots, snapshot and WAL GC;
//!   `snapshot_requests`: how the rest of the engine asks it for work.
//! - `limits`: the memory guard and the per-user mark limit.
//! - `state`: what the writer thread, snapshotter, replication and readers share, and
//!   the listener told of every commit.
//! - [`backup`]: the sessions of online base backups the node serves.
//! - [`archive`]: continuous archiving of sealed WAL segments to a backup target.
//! - [`error`]: open, write, validation and consistency errors.
//!
//! Every file, path and socket is `bitark-infra`'s: the data-directory layout is its
//! `DataDir`, the WAL, snapshots, full-sync files and etcd client are its modules.

mod apply;
pub mod archive;
pub mod backup;
pub mod config;
pub mod coordination;
pub mod error;
mod limits;
pub mod modules;
pub mod node;
pub mod readset;
mod recovery;
pub mod replication;
pub mod replication_side;
pub mod sharding;
mod snapshot_requests;
mod snapshotter;
mod state;
pub mod store;

pub use config::{
    AckMode, ArchiveConfig, BackupConfig, CoordinationConfig, EngineConfig, EtcdConfig, FullSyncConfig, GcMode,
    LimitsConfig, MaxLag, NodeConfig, OnLag, ReadsConfig, ReplicationConfig, Role, SnapshotConfig,
};
pub use error::{
    ConsistencyError, FeaturesError, InvalidCommand, LeaderReadError, MoveError, OpenError, RangeFrozen,
    ReplicateError, RoleError, SnapshotError, WriteError, WrongShard,
};
pub use node::{Freeze, Node, RangeCopy, RangeLog};
pub use recovery::RecoveryReport;
pub use store::{RangeCounts, ReadStore, StoreDigest};
