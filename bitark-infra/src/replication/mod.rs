//! Replication infrastructure: the HTTP transport between master and slaves, and the
//! slave's own progress file.
//!
//! - [`client`]: [`ReplicationClient`], reqwest calls to `/internal/replication/*`.
//! - [`moves`]: [`moves::MoveClient`], calls to a move's source at `/internal/shard/*`.
//! - [`progress`]: `slave-progress.bin`, where a slave keeps how far it followed.

pub mod client;
pub mod moves;
pub mod progress;

pub use client::{BatchSender, ReplicationClient, TransportError};
pub use progress::{read_progress, write_progress, SlaveProgress};
