//! The services of BitArk: the read-state machine and everything that keeps it
//! durable and recoverable. No file I/O happens here except through `bitark-infra`.
//!
//! # Layout
//! - [`config`]: the `node`, `snapshot`, `limits` and `reads` configuration sections.
//! - [`coordination`]: automatic failover through etcd: the leader lease, the
//!   election of the most advanced member, fencing by time.
//! - [`readset`]: the per-user set, compact for the many users with few marks.
//! - [`store`]: [`ReadStore`], users sharded over read-write locks.
//! - `apply`: the single path by which log records change the store, shared by
//!   recovery and the group-commit writer.
//! - `recovery`: newest valid snapshot, then the log after it.
//! - `snapshotter`: background fuzzy snapshots, snapshot and WAL GC.
//! - `limits`: the memory guard and the per-user mark limit.
//! - `state`: what the writer thread, snapshotter, replication and readers share.
//! - [`replication`]: the master hub and senders, the slave follower, their status.
//! - [`modules`]: the plugin modules: each flag-gated replication capability, and the
//!   list the adapter starts from the configuration.
//! - [`node`]: [`Node`], the handle the adapter uses: open, write, read, wait for an
//!   LSN, digest, snapshot, shut down.
//! - [`backup`]: the node's side of an online base backup.
//! - [`error`]: open, write, validation and consistency errors.

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
mod snapshot_requests;
mod snapshotter;
mod state;
pub mod store;

pub use config::{
    AckMode, ArchiveConfig, BackupConfig, CoordinationConfig, EngineConfig, EtcdConfig, FullSyncConfig, GcMode,
    LimitsConfig, MaxLag, NodeConfig, OnLag, ReadsConfig, ReplicationConfig, Role, SnapshotConfig,
};
pub use error::{
    ConsistencyError, InvalidCommand, LeaderReadError, OpenError, ReplicateError, RoleError, SnapshotError, WriteError,
};
pub use node::Node;
pub use recovery::RecoveryReport;
pub use store::{ReadStore, StoreDigest};
