//! The replication view served at `/actuator/replication`.

use bitark_common::replication::Features;
use serde::Serialize;

/// Where a slave stands, as its master sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SlaveState {
    /// Receiving records as they commit.
    Alive,
    /// Its send buffer overflowed: no longer queued for, being caught up from the WAL.
    Slow,
    /// The last send failed; retrying with backoff (stage 3) or waiting to be reached.
    Unreachable,
    /// It misses records this stage cannot resend (no bounded-buffer catch-up).
    Gap,
    /// It needs records the WAL no longer holds: only a full sync can bring it back.
    NeedsFullSync,
}

impl SlaveState {
    pub const ALL: [SlaveState; 5] =
        [SlaveState::Alive, SlaveState::Slow, SlaveState::Unreachable, SlaveState::Gap, SlaveState::NeedsFullSync];

    pub fn as_str(self) -> &'static str {
        match self {
            SlaveState::Alive => "ALIVE",
            SlaveState::Slow => "SLOW",
            SlaveState::Unreachable => "UNREACHABLE",
            SlaveState::Gap => "GAP",
            SlaveState::NeedsFullSync => "NEEDS_FULL_SYNC",
        }
    }
}

/// One slave in the master's view.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SlaveStatus {
    pub id: String,
    pub url: String,
    pub state: SlaveState,
    /// The flags master and slave use together.
    pub features: Features,
    /// Highest LSN the slave acknowledged (stage 2 on); without progress, the highest sent.
    pub last_ack_lsn: u64,
    pub lag_records: u64,
    pub lag_bytes: u64,
    pub lag_seconds: f64,
    pub buffer_depth: u64,
    pub retries: u64,
    pub last_error: Option<String>,
}

/// The replication state of this node.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationStatus {
    pub role: &'static str,
    pub node_id: String,
    pub epoch: u64,
    /// A slave's master.
    pub master_url: Option<String>,
    pub durable_lsn: u64,
    pub applied_lsn: u64,
    /// The flags this node is configured with.
    pub features: Features,
    /// Master: the slaves it knows.
    pub slaves: Vec<SlaveStatus>,
    /// Slave: whether its master has accepted its registration.
    pub registered: Option<bool>,
    /// Slave: the LSN in `slave-progress.bin`.
    pub progress_lsn: Option<u64>,
}
