//! The shared kernel of BitArk: the small value types and wire formats that every other
//! crate speaks.
//!
//! # Layout
//! - [`ids`]: `Lsn`, `Epoch`, `NodeId`, the identifiers of the log and the cluster.
//! - [`command`]: the state-changing commands (mark read, mark unread, batch, range) and
//!   their binary payload codec.
//! - [`record`]: the write-ahead-log record, `length | magic | version | type | epoch |
//!   lsn | payload | crc32`, used on disk and on the replication wire alike.
//! - [`epoch`]: the epoch history (where each epoch began) and the write token
//!   `"<epoch>:<lsn>"` that reads use to tell a lost write from one not reached yet.
//! - [`shard`]: the shard map (which replication group owns which users), its
//!   partitioner and hash ranges, and a group's [`Ownership`].
//! - [`replication`]: replication flags and the JSON messages of `/internal/replication`.
//! - [`error`]: the codec error, which keeps a short record (torn write) apart from a
//!   damaged one (corruption).

pub mod command;
pub mod epoch;
pub mod error;
pub mod ids;
pub mod ownership;
pub mod record;
pub mod replication;
pub mod shard;

pub use command::Command;
pub use epoch::{EpochEnd, EpochHistory, EpochStart, ScopedToken, TokenCheck, WriteToken};
pub use error::CodecError;
pub use ids::{Epoch, Lsn, NodeId};
pub use ownership::Ownership;
pub use record::Record;
pub use shard::{parse_hash, GroupId, HashRange, Partitioner, ShardMap, ShardMapError};
