//! Identifiers of the log and the cluster.
//!
//! An [`Lsn`] numbers WAL records: one `u64`, dense (each record is the previous one plus
//! one), totally ordered and stable across segment rotation and garbage collection.
//! `Lsn(0)` means "nothing": the first record ever written has LSN 1.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Log sequence number of one WAL record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The LSN before any record: an empty log has applied `Lsn::ZERO`.
    pub const ZERO: Lsn = Lsn(0);

    /// The LSN that follows this one.
    pub fn next(self) -> Lsn {
        Lsn(self.0 + 1)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Leadership term. Every record carries the epoch of the master that wrote it; a
/// single node stays in epoch 1 until promotion exists.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Epoch(pub u64);

impl Epoch {
    /// The epoch a fresh cluster starts in.
    pub const INITIAL: Epoch = Epoch(1);
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Name of a node in the cluster, taken from `node.id`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub String);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
