//! What master and slaves say to each other over `/internal/replication/*`.
//!
//! Log batches travel as binary bodies: WAL records back to back, each carrying its own
//! length and crc32 (content type [`WAL_CONTENT_TYPE`]). Everything else is JSON.

use crate::epoch::EpochHistory;
use serde::{Deserialize, Serialize};

/// How many replication flags there are.
pub const FLAGS: usize = 10;

/// Header carrying the sender's epoch on every replication request and response
/// (stage 7, `fencing`).
pub const EPOCH_HEADER: &str = "x-bitark-epoch";

/// Content type of a body of WAL records.
pub const WAL_CONTENT_TYPE: &str = "application/x-bitark-wal";

/// `/internal/shard/*` answers (a move's source): the source's epoch, which a
/// destination checks stays the same for a whole copy and its replay.
pub const SOURCE_EPOCH_HEADER: &str = "x-bitark-source-epoch";
/// A range's copy: the source's applied LSN before the shard was read.
pub const APPLIED_LSN_HEADER: &str = "x-bitark-applied-lsn";
/// A range's log: where the next read starts.
pub const NEXT_LSN_HEADER: &str = "x-bitark-next-lsn";
/// A range's log: the highest LSN the source answers now.
pub const SAFE_LSN_HEADER: &str = "x-bitark-safe-lsn";

/// The replication capabilities of a node: one flag per roadmap stage, in rollout
/// order. A valid set is a prefix of that order: a flag needs every earlier one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Features {
    /// Stage 1: the master sends each committed record to each slave; no progress kept.
    pub notify: bool,
    /// Stage 2: the slave logs and applies each record and answers its `ackLsn`; the
    /// master keeps `lastAckLsn` per slave.
    pub progress: bool,
    /// Stage 2.5: one bounded send buffer per slave; a slave that overflows it is
    /// marked SLOW and caught up from the master's WAL.
    pub bounded_buffer: bool,
    /// Stage 3: retries with backoff and jitter; the slave keeps `slave-progress.bin`.
    pub reliable: bool,
    /// Stage 4: slaves send heartbeats; the master marks a silent slave DEAD, and a slave
    /// reports an unreachable master.
    pub heartbeat: bool,
    /// Stage 5: a slave the WAL cannot bring back full-syncs from a snapshot.
    pub full_sync: bool,
    /// Stage 6: WAL garbage collection keeps what live slaves need, within a bound.
    pub cluster_gc: bool,
    /// Stage 7: epochs are durable and checked on every replication request; a node
    /// that sees a higher epoch stops writing; promotion and step-down by hand.
    pub fencing: bool,
    /// Stage 7: writes may wait for slaves (`replication.ack: semi | all`).
    pub ack_modes: bool,
    /// After stage 7, turned on by name only (no stage shorthand includes it):
    /// automatic failover through etcd (`coordination.*`): the master holds a leader
    /// lease, the most advanced slave takes over when it expires.
    pub failover: bool,
}

impl Features {
    /// Flag names in rollout order.
    pub const NAMES: [&'static str; FLAGS] = [
        "notify",
        "progress",
        "bounded-buffer",
        "reliable",
        "heartbeat",
        "full-sync",
        "cluster-gc",
        "fencing",
        "ack-modes",
        "failover",
    ];

    /// The roadmap stages in rollout order, each with how many flags of [`Self::NAMES`]
    /// it turns on (stage 7 turns on two; `failover`, which needs an etcd, is only ever
    /// turned on by name).
    pub const STAGES: [(f64, usize); 9] =
        [(0.0, 0), (1.0, 1), (2.0, 2), (2.5, 3), (3.0, 4), (4.0, 5), (5.0, 6), (6.0, 7), (7.0, 9)];

    /// The flags in rollout order, as [`Self::NAMES`] names them.
    pub fn flags(&self) -> [bool; FLAGS] {
        [
            self.notify,
            self.progress,
            self.bounded_buffer,
            self.reliable,
            self.heartbeat,
            self.full_sync,
            self.cluster_gc,
            self.fencing,
            self.ack_modes,
            self.failover,
        ]
    }

    fn from_flags(f: [bool; FLAGS]) -> Features {
        Features {
            notify: f[0],
            progress: f[1],
            bounded_buffer: f[2],
            reliable: f[3],
            heartbeat: f[4],
            full_sync: f[5],
            cluster_gc: f[6],
            fencing: f[7],
            ack_modes: f[8],
            failover: f[9],
        }
    }

    /// Every flag up to the roadmap stage `stage` (one of [`Self::STAGES`]).
    pub fn up_to_stage(stage: f64) -> Option<Features> {
        let (_, count) = Self::STAGES.iter().find(|(s, _)| *s == stage)?;
        let mut flags = [false; FLAGS];
        flags.iter_mut().take(*count).for_each(|f| *f = true);
        Some(Features::from_flags(flags))
    }

    /// The highest stage whose flags are all on.
    pub fn stage(&self) -> f64 {
        let on = self.flags().iter().take_while(|f| **f).count();
        Self::STAGES.iter().rev().find(|(_, count)| *count <= on).map_or(0.0, |(stage, _)| *stage)
    }

    /// Both sets together (a stage shorthand plus explicit flags).
    pub fn union(self, other: Features) -> Features {
        let (a, b) = (self.flags(), other.flags());
        Features::from_flags(std::array::from_fn(|i| a[i] || b[i]))
    }

    /// What two nodes can use together: the longest prefix of the rollout order that
    /// both support.
    pub fn common(self, other: Features) -> Features {
        let (a, b) = (self.flags(), other.flags());
        let mut out = [false; FLAGS];
        for i in 0..FLAGS {
            if !(a[i] && b[i]) {
                break;
            }
            out[i] = true;
        }
        Features::from_flags(out)
    }

    /// The flags turned on without an earlier flag they need, e.g. `reliable` without
    /// `progress`: `(flag, missing)` pairs.
    pub fn rollout_violations(&self) -> Vec<(&'static str, &'static str)> {
        let flags = self.flags();
        let mut out = Vec::new();
        for (i, on) in flags.iter().enumerate() {
            if let Some(missing) = (0..i).find(|j| *on && !flags[*j]) {
                out.push((Self::NAMES[i], Self::NAMES[missing]));
            }
        }
        out
    }

    /// Names of the flags that are on.
    pub fn enabled(&self) -> Vec<&'static str> {
        self.flags().iter().zip(Self::NAMES).filter(|(on, _)| **on).map(|(_, n)| n).collect()
    }

    /// True when replication is on at all.
    pub fn any(&self) -> bool {
        self.notify
    }
}

/// `POST /internal/replication/register`: a slave introduces itself (at start-up, and
/// again whenever it loses contact).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterRequest {
    pub slave_id: String,
    /// Where the master reaches this slave.
    pub url: String,
    /// The slave's own resume point: the highest LSN it has logged and applied.
    pub applied_lsn: u64,
    pub features: Features,
    /// Random per slave process start: a new one tells the master the slave restarted
    /// and must be followed from `applied_lsn` again.
    pub session: String,
}

/// The master's answer to a registration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterResponse {
    pub master_id: String,
    /// The flags both sides will use.
    pub features: Features,
    /// The end of the master's log on stable storage.
    pub durable_lsn: u64,
    /// Changes each time the master process starts; a slave that sees a new one knows
    /// the master forgot it and registers again. The slave accepts log batches only
    /// from the master id and session of its last registration.
    pub session: String,
    /// How the master sees this slave (`ALIVE`, `NEEDS_FULL_SYNC`, ...), so a slave the
    /// master cannot bring up to date knows it.
    #[serde(default)]
    pub state: String,
    /// Why, when the state is not `ALIVE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Under `fencing`: the master's epoch history, which the slave adopts (after
    /// cutting back any records of its own the history does not hold).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<EpochHistory>,
}

/// The body of 409 `stale_epoch`: a node refused a request from a lower epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StaleEpoch {
    pub error: String,
    pub message: String,
    /// The epoch of the node that refused.
    pub epoch: u64,
    /// The master of that epoch, when the node knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_url: Option<String>,
}

/// `GET /internal/replication/epochs`: a master's epoch history, so a node stepping
/// down can find where its own epoch ended there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EpochsAnswer {
    pub node_id: String,
    pub history: EpochHistory,
    pub durable_lsn: u64,
}

/// `POST /internal/replication/heartbeat` (stage 4): a slave says it is alive and where
/// it stands, every `replication.heartbeat-interval`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatRequest {
    pub slave_id: String,
    pub session: String,
    pub applied_lsn: u64,
    pub durable_lsn: u64,
}

/// The master's answer to a heartbeat: how it sees the slave.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatResponse {
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The end of the master's log on stable storage.
    pub durable_lsn: u64,
}

/// A snapshot a master can send, as a full sync names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotRef {
    /// Every record at or below it is in the snapshot; the slave goes on after it.
    pub lsn: u64,
    pub size: u64,
    /// crc32 of the whole file.
    pub checksum: u32,
}

/// `GET /internal/replication/pull?fromLsn=` answered 409 `need_full_sync`: the master's
/// WAL no longer reaches back to `fromLsn`; this snapshot and the WAL after it do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NeedFullSync {
    pub error: String,
    pub message: String,
    /// The oldest LSN the WAL still holds.
    pub min_retained_lsn: u64,
    pub snapshot: SnapshotRef,
}

/// `POST /internal/replication/full-sync`: a slave asks for a snapshot (stage 5).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FullSyncRequest {
    pub slave_id: String,
    pub session: String,
    /// The snapshot a partial download of the slave's is of, to go on with it (its
    /// `size` is the bytes downloaded so far).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<SnapshotRef>,
}

/// The master's answer: a transfer, or a place in the queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FullSyncAnswer {
    /// Set when the transfer may start now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<TransferOffer>,
    /// Set when the slave waits: its place in the queue (1 is next).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<u64>,
}

/// A snapshot transfer: fetch `GET /internal/replication/full-sync/{id}?offset=` chunk
/// by chunk, each answered with its crc32 in [`CHUNK_CRC_HEADER`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TransferOffer {
    pub id: u64,
    pub snapshot: SnapshotRef,
    pub chunk_size: u64,
    /// The master's cap on this transfer's rate (`0`: none), so the slave can wait long
    /// enough for chunks it asked for ahead.
    #[serde(default)]
    pub max_bytes_per_second: u64,
}

/// Header carrying the crc32 of a full-sync chunk.
pub const CHUNK_CRC_HEADER: &str = "x-bitark-chunk-crc";

/// A slave's answer to a batch: everything at or below `ackLsn` is logged and applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppendResponse {
    pub ack_lsn: u64,
    /// Records of the batch that were already applied and skipped.
    pub skipped: u64,
}

/// `GET /internal/replication/status`: where a node stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    pub node_id: String,
    pub role: String,
    pub applied_lsn: u64,
    pub features: Features,
    /// A slave's process session (empty on a master).
    pub session: String,
    /// A slave: the session of the master it last registered with (empty before its
    /// first registration). A master checks it before it sends a slave any record.
    #[serde(default)]
    pub master_session: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_turn_on_every_flag_up_to_them() {
        assert_eq!(Features::up_to_stage(0.0).unwrap().enabled(), Vec::<&str>::new());
        assert_eq!(Features::up_to_stage(2.0).unwrap().enabled(), vec!["notify", "progress"]);
        assert_eq!(Features::up_to_stage(2.5).unwrap().enabled(), vec!["notify", "progress", "bounded-buffer"]);
        assert_eq!(Features::up_to_stage(3.0).unwrap().enabled(), Features::NAMES[..4].to_vec());
        assert_eq!(Features::up_to_stage(6.0).unwrap().enabled(), Features::NAMES[..7].to_vec());
        assert_eq!(Features::up_to_stage(7.0).unwrap().enabled(), Features::NAMES[..9].to_vec());
        let failover = Features { failover: true, ..Features::up_to_stage(7.0).unwrap() };
        assert_eq!(failover.stage(), 7.0, "failover is no stage of its own");
        assert!(failover.rollout_violations().is_empty());
        assert_eq!(Features::up_to_stage(5.0).unwrap().stage(), 5.0);
        assert_eq!(Features::up_to_stage(7.0).unwrap().stage(), 7.0);
        let fencing_only = Features { fencing: true, ..Features::up_to_stage(6.0).unwrap() };
        assert_eq!(fencing_only.stage(), 6.0, "stage 7 needs both of its flags");
        assert_eq!(Features::up_to_stage(1.5), None);
        assert_eq!(Features::up_to_stage(8.0), None);
    }

    #[test]
    fn flags_out_of_rollout_order_are_named() {
        let f = Features { notify: true, reliable: true, ..Features::default() };
        assert_eq!(f.rollout_violations(), vec![("reliable", "progress")]);
        assert!(Features::up_to_stage(3.0).unwrap().rollout_violations().is_empty());
    }

    #[test]
    fn nodes_use_the_longest_common_prefix() {
        let three = Features::up_to_stage(3.0).unwrap();
        let one = Features::up_to_stage(1.0).unwrap();
        assert_eq!(three.common(one), one);
        let odd = Features { notify: true, bounded_buffer: true, reliable: true, ..Features::default() };
        assert_eq!(three.common(odd), one);
        let six = Features::up_to_stage(6.0).unwrap();
        assert_eq!(six.common(three), three, "a stage 6 master uses stage 3 with a stage 3 slave");
        let seven = Features::up_to_stage(7.0).unwrap();
        assert_eq!(seven.common(six), six, "a stage 7 master uses stage 6 with a stage 6 slave");
    }

    #[test]
    fn features_serialize_in_kebab_case() {
        let json = serde_json::to_string(&Features::up_to_stage(2.5).unwrap()).unwrap();
        assert_eq!(
            json,
            r#"{"notify":true,"progress":true,"bounded-buffer":true,"reliable":false,"heartbeat":false,"full-sync":false,"cluster-gc":false,"fencing":false,"ack-modes":false,"failover":false}"#
        );
    }
}
