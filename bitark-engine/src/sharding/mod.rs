//! Many replication groups, each owning part of the users: the shard map kept in etcd
//! (`store.rs`), what a node or router knows of
//! the other groups (`directory.rs`), a node's part in its group (`member.rs`:
//! following the map, logging its ownership, announcing a static master), a move's controller (`controller.rs`), a move's data
//! pulled by its destination (`pull.rs`, run for each incoming range by `incoming.rs`), and the keys each group keeps under its own prefix.
//!
//! Keys, under `coordination.etcd.prefix`:
//! - `<prefix>/shards/map`: the [`bitark_common::ShardMap`], JSON, changed by
//!   compare-and-swap only;
//! - `<prefix>/groups/<group>/…`: a group's own coordination keys (`leader`, `epoch`,
//!   `acked`, `members/<node id>`), as an unsharded cluster keeps them at `<prefix>/…`.

pub mod controller;
mod directory;
pub mod incoming;
pub(crate) mod incoming_state;
pub mod member;
pub mod pull;
mod store;

pub use directory::{follow, read_directory, read_master, Directory, ShardView, WatchState};
pub use store::{map_key, MapKv, ShardError, ShardMapStore, Versioned};

use bitark_common::GroupId;

/// The prefix of `group`'s coordination keys under `prefix`.
pub fn group_prefix(prefix: &str, group: &GroupId) -> String {
    format!("{prefix}/groups/{group}")
}
