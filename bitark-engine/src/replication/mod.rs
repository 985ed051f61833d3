//! Master/slave replication, stage by stage behind `replication.features`.
//!
//! - [`master`]: [`MasterHub`]: the slaves a master knows, one bounded send buffer each,
//!   filled from the commit path without ever blocking it.
//! - `sender`: one task per slave that sends batches, follows acknowledgements,
//!   retries with backoff, and catches a slave up from the WAL when its buffer could not.
//! - [`slave`]: [`Follower`]: a slave's registration loop and its `slave-progress.bin`.
//! - [`status`]: what `/actuator/replication` shows.

pub mod master;
mod sender;
pub mod slave;
pub mod status;

pub use master::MasterHub;
pub use slave::Follower;
pub use status::{ReplicationStatus, SlaveState, SlaveStatus};
