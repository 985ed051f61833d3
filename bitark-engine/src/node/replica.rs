//! The node as a [`Replica`]: what a slave's replication is given of it.

use super::Node;
use crate::config::LiveConfig;
use crate::error::{ReplicateError, RoleError};
use crate::replication::replica::{Replica, ReplicaFuture};
use bitark_common::replication::Features;
use bitark_common::{Epoch, EpochHistory, Lsn, Record};
use bitark_infra::snapshot::SnapshotInfo;
use bitark_infra::wal::{AppendOutcome, CutReport};
use bitark_infra::StorageError;
use std::path::Path;

impl Replica for Node {
    fn live_config(&self) -> &LiveConfig {
        &self.inner.config
    }

    fn applied_lsn(&self) -> Lsn {
        Node::applied_lsn(self)
    }

    fn durable_lsn(&self) -> Lsn {
        Node::durable_lsn(self)
    }

    fn epoch(&self) -> Epoch {
        Node::epoch(self)
    }

    fn features(&self) -> Features {
        Node::features(self)
    }

    fn master_url(&self) -> String {
        self.role().master_url
    }

    fn replicate_from(
        &self,
        records: Vec<Record>,
        check_epochs: bool,
    ) -> ReplicaFuture<'_, Result<AppendOutcome, ReplicateError>> {
        Box::pin(Node::replicate_from(self, records, check_epochs))
    }

    fn adopt_history(
        &self,
        theirs: &EpochHistory,
        master_id: &str,
        master_url: &str,
    ) -> Result<Option<CutReport>, RoleError> {
        Node::adopt_history(self, theirs, master_id, master_url)
    }

    fn install_snapshot(&self, downloaded: &Path) -> Result<SnapshotInfo, StorageError> {
        Node::install_snapshot(self, downloaded)
    }
}
