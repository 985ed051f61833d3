//! `bitark backup`, `bitark backup verify`, `bitark backup prune` and `bitark restore`:
//! base backups of a running node into a target (a directory or S3), their checks and
//! retention, and a data directory rebuilt from them up to a recovery target.
//!
//! One file per command ([`backup()`], [`verify()`], [`prune()`], [`restore()`]), over
//! what a target holds (`catalogue`) and the checks of its files (`check`). A restore
//! checks every checksum of what it uses before it writes anything; the writing is
//! infra's ([`bitark_infra::restore`]). Every failure is an [`Error`] saying what and
//! where.

mod backup;
mod catalogue;
mod check;
mod error;
mod prune;
mod restore;
mod time;
mod verify;

pub use backup::{backup, BackupPlan};
pub use error::Error;
pub use prune::{prune, PrunePlan};
pub use restore::{restore, RecoveryTarget, RestorePlan};
pub use time::{parse_time, NotATime};
pub use verify::verify;
