//! The segmented write-ahead log.
//!
//! Segments live in `<data-dir>/wal/` and are named by the LSN of their first record,
//! zero-padded to 20 digits (`00000000000000000001.wal`), so a directory listing sorts
//! in log order and the LSN of any record maps to one segment and an offset in it.
//! Records are appended back to back in the format of `bitark_common::record`.
//!
//! - [`segment`]: naming, listing and garbage collection of segment files.
//! - `handle`: [`WalHandle`], the cheap-to-clone handle that queues proposals,
//!   replicated records, syncs, resets and epochs for the writer thread, and reads what
//!   the thread publishes (durable LSN, health, fence, lease).
//! - `health`: [`WalHealth`] and [`ProposeError`], what a caller is told when the log
//!   does not take a write.
//! - `writer`: [`GroupCommit`], the group-commit writer thread: batches concurrent
//!   proposals into one write and one fsync, then hands the durable batch to the
//!   [`Applier`]. Its submodules: `sync` (the fsync policy), `rotate` (the next segment,
//!   and replacing the whole log), `failure` (degraded and failed logs, retries, the
//!   crash report).
//! - `active`: the open segment and the preallocated spare the writer appends to.
//! - [`cursor`]: a forward reader from an LSN, for catching up slaves.
//! - [`truncate`]: cutting the log back to an LSN (a node stepping down), the records
//!   removed kept in a side file.
//! - [`scan`]: the recovery scan: replays records from an LSN, cuts a torn tail, and
//!   stops on corruption before the tail with the file and offset.

pub(crate) mod active;
pub mod cursor;
mod handle;
mod health;
pub mod scan;
pub mod segment;
pub mod truncate;
mod writer;

pub use cursor::{CursorRead, WalCursor};
pub use handle::{AppendOutcome, EpochWork, Proposal, Replicated, ResetWork, WalHandle};
pub use health::{ProposeError, WalHealth};
pub use scan::{replay, ReplayOutcome};
pub use segment::{list_segments, purge_to, remove_all, SegmentFile};
pub use truncate::{cut_after, CutReport};
pub use writer::{Applier, GroupCommit};
