//! Master/slave replication, stage by stage behind `replication.features`. Nothing here
//! imports the node: the master side works on the shared `State` and the WAL handle,
//! the slave side on a [`replica::Replica`]. The files form layers: `status`,
//! `transfers` and `byte_index` at the bottom, then `link`, `gc`, `view`, the sender and
//! verifier, `full_sync`, `master`, and the stages built on the hub (`heartbeat`, `ack`).
//!
//! - [`master`]: [`MasterHub`]: registrations (bounded, verified, replaced, forgotten),
//!   one bounded send buffer per slave filled from the commit path without ever
//!   blocking it.
//! - `link`: what the master's parts share: the hub state behind methods that say what
//!   each caller does with it, one link per slave, the send budget.
//! - `byte_index`: how many bytes of log follow an LSN, for lag and headroom in bytes.
//! - `view`: what the master shows of one link: its status and its metric series.
//! - `transfers`: stage 5's bookkeeping: running transfers, the queue, chunk planning
//!   and pacing.
//! - `verify`: the check that a slave answers at the URL it registered with.
//! - `sender`: one task per slave that sends durable batches, follows
//!   acknowledgements, backs off after failures, and catches a slave up from the WAL
//!   when its buffer could not.
//! - [`heartbeat`]: stage 4: slaves' heartbeats, DEAD detection on the master, an
//!   unreachable master on the slave.
//! - [`full_sync`]: stage 5, the master's side: `pull`, transfers, their queue and pins.
//! - `full_sync_client`: stage 5, the slave's side: download, verify, install.
//! - `gc`: stage 6: how far back the WAL is kept for slaves, OUTDATED, headroom.
//! - [`ack`]: stage 7: `semi` and `all` writes wait for slave acknowledgements.
//! - [`fencing`]: stage 7: where two epoch histories part (the node's side of
//!   promotion, stepping down and adopting a history is in `node/fencing.rs`).
//! - [`slave`]: [`Follower`]: a slave's registration loop, the check that a batch comes
//!   from its master, how the master sees it, and its `slave-progress.bin`.
//! - [`replica`]: [`replica::Replica`], the narrow view of the node the slave side
//!   works on (the node implements it; tests use a fake).
//! - [`status`]: what `/actuator/replication` shows.

pub mod ack;
mod byte_index;
pub mod fencing;
pub mod full_sync;
mod full_sync_client;
pub(crate) mod gc;
pub mod heartbeat;
mod link;
pub mod master;
pub mod replica;
mod sender;
pub mod slave;
pub mod status;
mod transfers;
mod verify;
mod view;

pub use master::{MasterHub, RegisterError};
pub use slave::{Follower, MasterView, SenderRefused};
pub use status::{ReplicationStatus, SlaveState, SlaveStatus};
