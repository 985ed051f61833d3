//! What the master's replication parts share: the hub's state ([`HubInner`]), one
//! [`SlaveLink`] per slave, and the byte index that turns an LSN lag into bytes.
//!
//! The hub (`master.rs`), the per-slave sender (`sender.rs`) and the URL check
//! (`verify.rs`) all work on these types and on nothing of each other.

use super::status::SlaveState;
use super::transfers::FullSyncServer;
use crate::config::{LiveConfig, ReplicationConfig, ReplicationNow};
use crate::state::State;
use bitark_common::replication::Features;
use bitark_common::{Lsn, Record};
use bitark_infra::replication::ReplicationClient;
use bitark_infra::wal::WalHandle;
use bitark_infra::{DataDir, Metrics};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Instant;
use tokio::sync::{watch, Notify};

impl HubInner {
    /// The master's own flags now.
    pub fn features(&self) -> Features {
        *self.features.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The `replication` section in force now (its reloadable keys change while the
    /// hub runs).
    pub fn config(&self) -> ReplicationNow {
        ReplicationNow::of(&self.config)
    }
}

/// A master's replication state, shared by the hub and every sender task.
/// About the most bytes one batch carries, from the buffer or read back from the WAL.
pub(crate) const BATCH_BYTES: usize = 4 << 20;

pub(crate) struct HubInner {
    pub(super) node_id: String,
    /// Random per process start; lets slaves notice that the master forgot them.
    pub(super) session: String,
    /// The master's own flags; each link runs those it shares with its slave. Changed
    /// while the hub runs by [`crate::replication::MasterHub::set_features`].
    pub(super) features: std::sync::RwLock<Features>,
    /// The node's configuration in force; read through [`HubInner::config`].
    pub(super) config: LiveConfig,
    /// The data directory: the log senders read, the snapshots a full sync sends.
    pub(super) dir: DataDir,
    pub(super) client: ReplicationClient,
    pub(super) metrics: Metrics,
    /// The durable LSN: only records at or below it are sent.
    pub(super) durable: watch::Receiver<Lsn>,
    /// The last LSN logged (durable or not), as the commit path saw it.
    pub(super) committed: AtomicU64,
    /// To ask for an fsync when records wait only for durability (`fsync: interval |
    /// never`).
    pub(super) wal: WalHandle,
    /// The slaves by id. A std `RwLock`: the writer thread takes it briefly on every
    /// commit, never across an await.
    pub(super) slaves: RwLock<HashMap<String, Arc<SlaveLink>>>,
    /// Bytes held in all send buffers together (`replication.buffer.total-max-bytes`).
    pub(super) buffered: AtomicUsize,
    /// Set by a sender that found records applied but not yet durable; the next
    /// durable LSN wakes every sender.
    pub(super) waiting_for_durable: AtomicBool,
    /// LSN → bytes of log, for lag in bytes.
    pub(super) bytes: Mutex<ByteIndex>,
    /// The node's shared state: retention of log and snapshots, the snapshotter.
    pub(super) state: Arc<State>,
    /// Full-sync transfers and their queue (stage 5).
    pub(super) full_sync: FullSyncServer,
    /// The cluster GC floor last published (`u64::MAX`: none), to see it move.
    pub(super) gc_floor: AtomicU64,
    /// Bumped on every slave acknowledgement, for writes waiting under `semi`/`all`.
    pub(super) acks: watch::Sender<u64>,
    /// The highest LSN a write waits to see acknowledged (`semi`/`all`): a sender never
    /// holds back a batch a waiting write needs (`replication.batch-linger`).
    pub(super) ack_wanted: AtomicU64,
    /// Wakes the senders holding back a batch when a write starts waiting for it.
    pub(super) hurry: Notify,
    /// Set when the hub stops (the node stepped down): no more registrations.
    pub(super) stopped: AtomicBool,
    pub(super) runtime: tokio::runtime::Handle,
}

impl HubInner {
    pub fn durable_lsn(&self) -> Lsn {
        *self.durable.borrow()
    }

    pub fn committed_lsn(&self) -> Lsn {
        Lsn(self.committed.load(Ordering::Acquire))
    }
}

/// One slave: its state behind a mutex the commit path and its sender share, and the
/// notify that wakes the sender.
pub(crate) struct SlaveLink {
    pub(super) id: String,
    /// A std `Mutex`: held only to copy records in or out, never across an await.
    pub(super) state: Mutex<LinkState>,
    pub(super) wake: Notify,
    /// Set when the link is replaced or forgotten: its sender and checks stop.
    pub(super) closed: AtomicBool,
}

impl SlaveLink {
    pub fn new(id: String, state: LinkState) -> SlaveLink {
        SlaveLink { id, state: Mutex::new(state), wake: Notify::new(), closed: AtomicBool::new(false) }
    }

    /// The link's state. A panic elsewhere while the lock was held cannot leave it
    /// half-changed in a way that matters more than stopping replication would, so a
    /// poisoned lock is used as it is.
    pub fn lock(&self) -> MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

pub(crate) struct LinkState {
    pub(super) url: String,
    pub(super) features: Features,
    /// The slave process's session; a new one means the slave restarted.
    pub(super) slave_session: String,
    state: SlaveState,
    /// The master has checked that the slave answers at `url` with its id and session.
    pub(super) verified: bool,
    /// A check of the URL is running.
    pub(super) verifying: bool,
    /// Highest LSN the slave acknowledged (or, without progress, the highest sent).
    pub(super) last_ack: Lsn,
    /// The next LSN to send.
    pub(super) next_send: Lsn,
    pub(super) buffer: VecDeque<Queued>,
    pub(super) buffer_bytes: usize,
    pub(super) retries: u64,
    pub(super) last_error: Option<String>,
    /// Since when the slave has been missing records, for lag in seconds.
    pub(super) behind_since: Option<Instant>,
    /// When the slave last registered or answered.
    pub(super) last_seen: Instant,
    /// `(slave LSN, master LSN)` when this slave process was found ahead of the master's
    /// log: it stays DIVERGED for as long as the process lives.
    pub(super) diverged: Option<(Lsn, Lsn)>,
    /// FULL_SYNC_QUEUED: place in the queue (1 is next).
    pub(super) queue_position: Option<u64>,
    /// FULL_SYNCING: `(bytes sent, snapshot size)`.
    pub(super) full_sync: Option<(u64, u64)>,
    /// The sender holds back a small batch (`replication.batch-linger`): commits wake
    /// it only once they fill a batch.
    pub(super) lingering: bool,
}

pub(crate) struct Queued {
    pub(super) record: Record,
    pub(super) bytes: usize,
    pub(super) committed: Instant,
}

impl LinkState {
    /// A slave that just registered at `applied`, not yet verified.
    pub fn registered(url: String, features: Features, session: String, applied: Lsn) -> LinkState {
        LinkState {
            url,
            features,
            slave_session: session,
            state: SlaveState::Verifying,
            verified: false,
            verifying: false,
            last_ack: applied,
            next_send: Lsn(applied.0.saturating_add(1)),
            buffer: VecDeque::new(),
            buffer_bytes: 0,
            retries: 0,
            last_error: None,
            behind_since: None,
            last_seen: Instant::now(),
            diverged: None,
            queue_position: None,
            full_sync: None,
            lingering: false,
        }
    }

    pub fn state(&self) -> SlaveState {
        self.state
    }

    /// Moves to `state`. Becoming ALIVE clears the last error and the retry count: an
    /// error shown next to a healthy slave would only mislead.
    pub fn set_state(&mut self, state: SlaveState) {
        if state == SlaveState::Alive {
            self.last_error = None;
            self.retries = 0;
        }
        if state != SlaveState::FullSyncQueued {
            self.queue_position = None;
        }
        if state != SlaveState::FullSyncing {
            self.full_sync = None;
        }
        self.state = state;
    }

    /// The slave answered (a registration, a heartbeat, an acknowledgement) from
    /// `applied`. A DEAD slave's position now decides its state: caught up, or to be
    /// caught up (from the WAL, or by a full sync if the WAL no longer has it).
    pub fn answered(&mut self, applied: Lsn, durable: Lsn, now: Instant) {
        self.last_seen = now;
        if applied > self.last_ack {
            self.last_ack = applied;
            self.next_send = self.next_send.max(applied.next());
        }
        if self.state == SlaveState::Dead {
            if self.last_ack >= durable {
                self.set_state(SlaveState::Alive);
            } else {
                self.set_state(SlaveState::Slow);
                self.next_send = self.last_ack.next();
                self.behind_since.get_or_insert(now);
            }
        }
    }

    /// Queues `records` for sending.
    pub fn push(&mut self, records: &[Record], total: &AtomicUsize, committed: Instant) {
        for record in records {
            let bytes = record.encoded_len();
            self.buffer_bytes += bytes;
            total.fetch_add(bytes, Ordering::Relaxed);
            self.buffer.push_back(Queued { record: record.clone(), bytes, committed });
        }
    }

    /// Whether the buffer holds a whole batch, which goes without lingering: as many
    /// records as `batch-max-records`, or as many bytes as one batch carries. Half of a
    /// send buffer's limits also counts as whole, so that holding a batch back never
    /// overflows a buffer.
    pub fn batch_ready(&self, config: &ReplicationConfig) -> bool {
        let records = config.batch_max_records.min(config.buffer.max_records / 2).max(1);
        let bytes = BATCH_BYTES
            .min(config.buffer.max_bytes.as_u64() as usize / 2)
            .min(config.buffer.total_max_bytes.as_u64() as usize / 2)
            .max(1);
        self.buffer.len() >= records || self.buffer_bytes >= bytes
    }

    /// Drops buffered records the slave no longer needs.
    pub fn trim_sent(&mut self, total: &AtomicUsize) {
        while self.buffer.front().is_some_and(|q| q.record.lsn < self.next_send) {
            let q = self.buffer.pop_front().expect("front exists");
            self.buffer_bytes -= q.bytes;
            total.fetch_sub(q.bytes, Ordering::Relaxed);
        }
    }

    pub fn clear_buffer(&mut self, total: &AtomicUsize) {
        total.fetch_sub(self.buffer_bytes, Ordering::Relaxed);
        self.buffer.clear();
        self.buffer_bytes = 0;
    }
}

/// Cumulative bytes of log at sampled LSNs, so `bytes_after(lsn)` can say how many bytes
/// of log follow an LSN without reading the log. A point is kept about every `step`
/// bytes; when there are too many points, every other one goes and `step` doubles, so
/// memory stays bounded and the error stays below `step` bytes.
pub(crate) struct ByteIndex {
    /// `(last LSN of a batch, bytes of log written through it)`, ascending.
    points: VecDeque<(u64, u64)>,
    /// Bytes written through the newest LSN.
    total: u64,
    newest: u64,
    /// The LSN the index started at.
    start: u64,
    step: u64,
    /// Bytes of log written per second, smoothed; sampled about once a second.
    rate: f64,
    sampled: (Instant, u64),
}

const MAX_POINTS: usize = 1 << 16;

impl ByteIndex {
    pub fn new(start: Lsn) -> ByteIndex {
        ByteIndex {
            points: VecDeque::from([(start.0, 0)]),
            total: 0,
            newest: start.0,
            start: start.0,
            step: 64 * 1024,
            rate: 0.0,
            sampled: (Instant::now(), 0),
        }
    }

    /// Bytes of log written per second lately (0 when nothing is written).
    pub fn rate(&self) -> f64 {
        let (at, total) = self.sampled;
        // A sample older than a few seconds means writes stopped since.
        if at.elapsed().as_secs_f64() > 5.0 && total == self.total {
            0.0
        } else {
            self.rate
        }
    }

    /// Average bytes of one record written by this process (0 before any).
    pub fn record_bytes(&self) -> f64 {
        let records = self.newest - self.start;
        if records == 0 {
            0.0
        } else {
            self.total as f64 / records as f64
        }
    }

    /// Notes `bytes` more of log, through `last`.
    pub fn push(&mut self, last: Lsn, bytes: u64) {
        self.total += bytes;
        self.newest = last.0;
        let (at, total) = self.sampled;
        let elapsed = at.elapsed().as_secs_f64();
        if elapsed >= 1.0 {
            let now = (self.total - total) as f64 / elapsed;
            self.rate = if self.rate == 0.0 { now } else { 0.5 * self.rate + 0.5 * now };
            self.sampled = (Instant::now(), self.total);
        }
        let (_, at) = *self.points.back().expect("never empty");
        if self.total - at >= self.step {
            self.points.push_back((last.0, self.total));
            if self.points.len() > MAX_POINTS {
                self.points = self.points.iter().copied().step_by(2).collect();
                self.step *= 2;
            }
        }
    }

    /// Bytes of log after `lsn`: exact to within one step; for an LSN older than this
    /// process's log, the bytes since the process started (a lower bound).
    pub fn bytes_after(&self, lsn: Lsn) -> u64 {
        if lsn.0 >= self.newest {
            return 0;
        }
        let at = self.points.partition_point(|(l, _)| *l <= lsn.0);
        let through = match at {
            0 => 0,
            i => {
                let (l0, b0) = self.points[i - 1];
                let (l1, b1) = self.points.get(i).copied().unwrap_or((self.newest, self.total));
                if l1 > l0 {
                    b0 + (b1 - b0) * (lsn.0 - l0) / (l1 - l0)
                } else {
                    b0
                }
            }
        };
        self.total - through
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BufferConfig;
    use bitark_common::{Command, Epoch};

    fn queued(lsn: u64, msgs: usize) -> LinkState {
        let mut s = LinkState::registered(String::new(), Features::default(), String::new(), Lsn(lsn - 1));
        let command = Command::MarkBatch { user: 1, msgs: (0..msgs as u64).collect() };
        let record = Record { epoch: Epoch(1), lsn: Lsn(lsn), time: 0, command };
        s.push(&[record], &AtomicUsize::new(0), Instant::now());
        s
    }

    #[test]
    fn a_batch_is_ready_at_its_record_or_byte_limit_or_at_half_a_buffer() {
        let mut config = ReplicationConfig { batch_max_records: 3, ..Default::default() };
        let mut s = queued(1, 1);
        assert!(!s.batch_ready(&config));
        for lsn in 2..=3 {
            let more = queued(lsn, 1);
            s.buffer.extend(more.buffer);
        }
        assert!(s.batch_ready(&config), "batch-max-records records");
        config.batch_max_records = 1000;
        assert!(!s.batch_ready(&config));
        config.buffer.max_records = 6;
        assert!(s.batch_ready(&config), "half of buffer.max-records");

        let config = ReplicationConfig::default();
        let big = queued(1, BATCH_BYTES / 8);
        assert!(big.buffer_bytes >= BATCH_BYTES && big.buffer.len() == 1);
        assert!(big.batch_ready(&config), "the bytes of one batch");
        let small = queued(1, 1000);
        assert!(!small.batch_ready(&config));
        let tight = ReplicationConfig {
            buffer: BufferConfig {
                max_bytes: bytesize::ByteSize::b(2 * small.buffer_bytes as u64),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(small.batch_ready(&tight), "half of buffer.max-bytes");
    }

    #[test]
    fn byte_index_answers_bytes_after_an_lsn() {
        let mut index = ByteIndex::new(Lsn(100));
        for lsn in 101..=100_100u64 {
            index.push(Lsn(lsn), 44);
        }
        assert_eq!(index.bytes_after(Lsn(100_100)), 0);
        let exact = |lsn: u64| (100_100 - lsn) * 44;
        for lsn in [100, 101, 5_000, 50_000, 99_999] {
            let got = index.bytes_after(Lsn(lsn));
            assert!(got.abs_diff(exact(lsn)) <= index.step, "after {lsn}: {got} vs {}", exact(lsn));
        }
        assert_eq!(index.bytes_after(Lsn(3)), 100_000 * 44, "older than the index: what this process wrote");
    }

    #[test]
    fn byte_index_stays_bounded() {
        let mut index = ByteIndex::new(Lsn(0));
        for lsn in 1..=3_000_000u64 {
            index.push(Lsn(lsn), 1000);
        }
        assert!(index.points.len() <= MAX_POINTS);
        let got = index.bytes_after(Lsn(1_000_000));
        assert!(got.abs_diff(2_000_000_000) <= index.step, "{got}");
    }
}
