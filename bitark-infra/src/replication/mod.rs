//! Replication infrastructure: the HTTP transport between master and slaves, and the
//! slave's own progress file.
//!
//! - [`client`]: [`ReplicationClient`], reqwest calls to `/internal/replication/*`.
//! - [`progress`]: `slave-progress.bin`, where a slave keeps how far it followed.

pub mod client;
pub mod progress;

pub use client::{BatchSender, ReplicationClient, TransportError};
pub use progress::{read_progress, write_progress, SlaveProgress};
