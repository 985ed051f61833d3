//! [`Replica`]: what a slave's side of replication needs of the node it keeps up to
//! date, and nothing more. The follower, its heartbeats and its full-sync download
//! depend on this trait rather than on the node itself, so they can be driven against an
//! in-memory replica in tests; [`crate::Node`] implements it.

use crate::config::LiveConfig;
use crate::error::{ReplicateError, RoleError};
use bitark_common::replication::Features;
use bitark_common::{Epoch, EpochHistory, Lsn, Record};
use bitark_infra::snapshot::SnapshotInfo;
use bitark_infra::wal::{AppendOutcome, CutReport};
use bitark_infra::StorageError;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;

/// A future a [`Replica`] answers with.
pub type ReplicaFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The node a slave replicates into.
pub trait Replica: Send + Sync + 'static {
    /// The configuration as loaded now (it changes on a live reload).
    fn live_config(&self) -> &LiveConfig;

    /// The last LSN applied to the store.
    fn applied_lsn(&self) -> Lsn;

    /// The last LSN on stable storage.
    fn durable_lsn(&self) -> Lsn;

    /// The epoch this node is in.
    fn epoch(&self) -> Epoch;

    /// The node's own replication flags in force.
    fn features(&self) -> Features;

    /// The master this node follows (the configured one, or the one a step-down named).
    fn master_url(&self) -> String;

    /// Applies records the master sent: those already held are skipped, the rest must
    /// continue the log; each record's epoch is checked when `check_epochs`.
    fn replicate_from(
        &self,
        records: Vec<Record>,
        check_epochs: bool,
    ) -> ReplicaFuture<'_, Result<AppendOutcome, ReplicateError>>;

    /// Adopts the master's epoch history, cutting what this node holds past the point
    /// where the histories agree. Blocking.
    fn adopt_history(
        &self,
        theirs: &EpochHistory,
        master_id: &str,
        master_url: &str,
    ) -> Result<Option<CutReport>, RoleError>;

    /// Replaces the whole state with a downloaded snapshot. Blocking.
    fn install_snapshot(&self, downloaded: &Path) -> Result<SnapshotInfo, StorageError>;
}
