//! What master and slaves say to each other over `/internal/replication/*`.
//!
//! Log batches travel as binary bodies: WAL records back to back, each carrying its own
//! length and crc32 (content type [`WAL_CONTENT_TYPE`]). Everything else is JSON.

use serde::{Deserialize, Serialize};

/// Content type of a body of WAL records.
pub const WAL_CONTENT_TYPE: &str = "application/x-bitark-wal";

/// The replication capabilities of a node: one flag per roadmap stage, in rollout
/// order. A valid set is a prefix of that order: a flag needs every earlier one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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
}

impl Features {
    /// Flag names in rollout order.
    pub const NAMES: [&'static str; 7] =
        ["notify", "progress", "bounded-buffer", "reliable", "heartbeat", "full-sync", "cluster-gc"];

    /// The roadmap stages, in rollout order: stage `STAGES[i]` turns on the first `i` flags.
    pub const STAGES: [f64; 8] = [0.0, 1.0, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0];

    /// The flags in rollout order, as [`Self::NAMES`] names them.
    pub fn flags(&self) -> [bool; 7] {
        [
            self.notify,
            self.progress,
            self.bounded_buffer,
            self.reliable,
            self.heartbeat,
            self.full_sync,
            self.cluster_gc,
        ]
    }

    fn from_flags(f: [bool; 7]) -> Features {
        Features {
            notify: f[0],
            progress: f[1],
            bounded_buffer: f[2],
            reliable: f[3],
            heartbeat: f[4],
            full_sync: f[5],
            cluster_gc: f[6],
        }
    }

    /// Every flag up to the roadmap stage `stage` (one of [`Self::STAGES`]).
    pub fn up_to_stage(stage: f64) -> Option<Features> {
        let count = Self::STAGES.iter().position(|s| *s == stage)?;
        let mut flags = [false; 7];
        flags.iter_mut().take(count).for_each(|f| *f = true);
        Some(Features::from_flags(flags))
    }

    /// The highest stage whose flags are all on.
    pub fn stage(&self) -> f64 {
        let on = self.flags().iter().take_while(|f| **f).count();
        Self::STAGES[on]
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
        let mut out = [false; 7];
        for i in 0..7 {
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
        assert_eq!(Features::up_to_stage(6.0).unwrap().enabled(), Features::NAMES.to_vec());
        assert_eq!(Features::up_to_stage(5.0).unwrap().stage(), 5.0);
        assert_eq!(Features::up_to_stage(1.5), None);
        assert_eq!(Features::up_to_stage(7.0), None);
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
    }

    #[test]
    fn features_serialize_in_kebab_case() {
        let json = serde_json::to_string(&Features::up_to_stage(2.5).unwrap()).unwrap();
        assert_eq!(
            json,
            r#"{"notify":true,"progress":true,"bounded-buffer":true,"reliable":false,"heartbeat":false,"full-sync":false,"cluster-gc":false}"#
        );
    }
}
