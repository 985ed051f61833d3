//! The replication view served at `/actuator/replication`.

use crate::coordination::status::CoordinationStatus;
use bitark_common::replication::Features;
use serde::Serialize;

/// Where a slave stands, as its master sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SlaveState {
    /// Registered; the master is checking that the slave answers at the URL it gave
    /// before sending it any record.
    Verifying,
    /// Receiving records as they commit.
    Alive,
    /// Its send buffer overflowed: no longer queued for, being caught up from the WAL.
    Slow,
    /// The last send failed; retrying with backoff (stage 3) or waiting to be reached.
    Unreachable,
    /// It misses records this stage cannot resend (stages 1 and 2: no WAL catch-up).
    Gap,
    /// It needs records the WAL no longer holds: only a full sync can bring it back.
    NeedsFullSync,
    /// Its log holds records this master does not have (it is ahead of the master's
    /// log): it cannot follow this master as it is.
    Diverged,
    /// Silent for `replication.dead-after` (stage 4): nothing is sent to it and it holds
    /// nothing back, until it answers and its position decides its state again.
    Dead,
    /// Further behind than `replication.max-lag` (stage 6, `gc-mode: bounded`): the WAL
    /// is no longer kept for it; it must full-sync.
    Outdated,
    /// Waiting for a full-sync slot (`replication.full-sync.max-concurrent`).
    FullSyncQueued,
    /// Downloading a snapshot from this master.
    FullSyncing,
}

impl SlaveState {
    pub const ALL: [SlaveState; 11] = [
        SlaveState::Verifying,
        SlaveState::Alive,
        SlaveState::Slow,
        SlaveState::Unreachable,
        SlaveState::Gap,
        SlaveState::NeedsFullSync,
        SlaveState::Diverged,
        SlaveState::Dead,
        SlaveState::Outdated,
        SlaveState::FullSyncQueued,
        SlaveState::FullSyncing,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SlaveState::Verifying => "VERIFYING",
            SlaveState::Alive => "ALIVE",
            SlaveState::Slow => "SLOW",
            SlaveState::Unreachable => "UNREACHABLE",
            SlaveState::Gap => "GAP",
            SlaveState::NeedsFullSync => "NEEDS_FULL_SYNC",
            SlaveState::Diverged => "DIVERGED",
            SlaveState::Dead => "DEAD",
            SlaveState::Outdated => "OUTDATED",
            SlaveState::FullSyncQueued => "FULL_SYNC_QUEUED",
            SlaveState::FullSyncing => "FULL_SYNCING",
        }
    }

    /// States in which nothing is sent to the slave: it is silent, cannot follow this
    /// master as it is, or needs (or is in) a full sync.
    pub fn is_stuck(self) -> bool {
        matches!(
            self,
            SlaveState::NeedsFullSync
                | SlaveState::Diverged
                | SlaveState::Dead
                | SlaveState::Outdated
                | SlaveState::FullSyncQueued
                | SlaveState::FullSyncing
        )
    }

    /// States that hold the WAL back under cluster GC (stage 6): a slave being followed
    /// or caught up.
    pub fn holds_wal(self) -> bool {
        matches!(self, SlaveState::Alive | SlaveState::Slow | SlaveState::Unreachable)
    }
}

/// One slave in the master's view.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SlaveStatus {
    pub id: String,
    pub url: String,
    pub state: SlaveState,
    /// The flags master and slave use together.
    pub features: Features,
    /// Highest LSN the slave acknowledged (stage 2 on); without progress, the highest sent.
    pub last_ack_lsn: u64,
    /// Durable records of the master the slave has not acknowledged.
    pub lag_records: u64,
    /// Bytes of those records in the master's log (a lower bound for a slave further
    /// behind than this master process has written).
    pub lag_bytes: u64,
    pub lag_seconds: f64,
    pub buffer_depth: u64,
    /// Bytes held in this slave's send buffer.
    pub buffer_bytes: u64,
    pub retries: u64,
    pub last_error: Option<String>,
    /// Seconds since the slave last registered or answered.
    pub last_seen_seconds: f64,
    /// FULL_SYNC_QUEUED: its place in the queue (1 is next).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<u64>,
    /// FULL_SYNCING: bytes of the snapshot sent, and its size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub full_sync_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub full_sync_size: Option<u64>,
    /// Stage 6: bytes and estimated seconds of log left before this slave falls outside
    /// what the WAL keeps for it (`None`: nothing bounds it).
    pub headroom_bytes: Option<u64>,
    pub headroom_seconds: Option<f64>,
}

/// The replication state of this node.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationStatus {
    pub role: &'static str,
    pub node_id: String,
    /// The epoch this node writes in (master) or follows (slave).
    pub epoch: u64,
    /// The highest epoch this node knows of; above `epoch` on a master that a newer
    /// master has fenced.
    pub highest_epoch: u64,
    /// True when this node refuses writes of its own because a newer epoch exists.
    pub fenced: bool,
    /// Every epoch this node has known, with the LSN it began at (stage 7).
    pub epoch_history: Vec<bitark_common::EpochStart>,
    /// A slave's master (or the master of a newer epoch, on a fenced master).
    pub master_url: Option<String>,
    pub durable_lsn: u64,
    pub applied_lsn: u64,
    /// The flags in force on this node.
    pub features: Features,
    /// True when they were changed at runtime (`PUT /admin/replication/features`) and
    /// differ from the configuration's, until the next restart.
    pub features_overridden: bool,
    /// When the flags last changed at runtime (RFC 3339), if they did.
    pub features_changed_at: Option<String>,
    /// Master: the slaves it knows.
    pub slaves: Vec<SlaveStatus>,
    /// Slave: whether its master has accepted its registration.
    pub registered: Option<bool>,
    /// Slave: how its master sees it (`ALIVE`, `NEEDS_FULL_SYNC`, `DIVERGED`, ...), as of
    /// its last registration.
    pub state_at_master: Option<String>,
    /// Slave: why, when that state is not `ALIVE`.
    pub state_reason: Option<String>,
    /// Slave: the LSN in `slave-progress.bin`.
    pub progress_lsn: Option<u64>,
    /// Slave: seconds since its master last answered (stage 4).
    pub master_last_seen_seconds: Option<f64>,
    /// Slave: a full sync in progress or queued, as the slave sees it.
    pub full_sync: Option<FullSyncProgress>,
    /// Under failover: the master etcd names and this node's lease.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coordination: Option<CoordinationStatus>,
}

/// A slave's view of its full sync.
#[derive(Clone, Debug, Default, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FullSyncProgress {
    /// `queued`, `downloading`, `installing`.
    pub phase: String,
    pub snapshot_lsn: u64,
    pub bytes: u64,
    pub size: u64,
    pub queue_position: Option<u64>,
}
