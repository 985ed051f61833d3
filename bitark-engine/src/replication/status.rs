//! The replication view served at `/actuator/replication`.

use bitark_common::replication::Features;
use serde::Serialize;

/// Where a slave stands, as its master sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
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
}

impl SlaveState {
    pub const ALL: [SlaveState; 7] = [
        SlaveState::Verifying,
        SlaveState::Alive,
        SlaveState::Slow,
        SlaveState::Unreachable,
        SlaveState::Gap,
        SlaveState::NeedsFullSync,
        SlaveState::Diverged,
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
        }
    }

    /// States in which the slave cannot serve up-to-date reads until an operator (or,
    /// later, a full sync) acts.
    pub fn is_stuck(self) -> bool {
        matches!(self, SlaveState::NeedsFullSync | SlaveState::Diverged)
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
    /// Slave: how its master sees it (`ALIVE`, `NEEDS_FULL_SYNC`, `DIVERGED`, ...), as of
    /// its last registration.
    pub state_at_master: Option<String>,
    /// Slave: why, when that state is not `ALIVE`.
    pub state_reason: Option<String>,
    /// Slave: the LSN in `slave-progress.bin`.
    pub progress_lsn: Option<u64>,
}
