//! What the master's replication parts share: the hub's state ([`HubInner`]), one
//! [`SlaveLink`] per slave, and the [`SendBudget`] all send buffers draw on.
//!
//! The hub (`master.rs`), the per-slave sender (`sender.rs`) and the URL check
//! (`verify.rs`) all work on these types and on nothing of each other. `HubInner` keeps
//! its fields to itself: each caller goes through a method that names what it does
//! with the hub (reads the links, draws on the send budget, waits for durability or for
//! acknowledgements, notes the log written).

use super::byte_index::ByteIndex;
use super::status::SlaveState;
use super::transfers::{FullSyncServer, Transfers};
use crate::config::{LiveConfig, ReplicationConfig, ReplicationNow};
use crate::state::State;
use bitark_common::replication::Features;
use bitark_common::{Lsn, Record};
use bitark_infra::replication::ReplicationClient;
use bitark_infra::wal::WalHandle;
use bitark_infra::{DataDir, Metrics};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;
use tokio::sync::futures::Notified;
use tokio::sync::{watch, Notify};

/// About the most bytes one batch carries, from the buffer or read back from the WAL.
pub(crate) const BATCH_BYTES: usize = 4 << 20;

/// What a master hub is made of.
pub(crate) struct HubParts {
    pub node_id: String,
    pub config: LiveConfig,
    pub features: Features,
    pub dir: DataDir,
    pub client: ReplicationClient,
    pub metrics: Metrics,
    pub durable: watch::Receiver<Lsn>,
    pub wal: WalHandle,
    pub state: Arc<State>,
    pub runtime: tokio::runtime::Handle,
}

/// A master's replication state, shared by the hub and every sender task.
pub(crate) struct HubInner {
    node_id: String,
    /// Random per process start; lets slaves notice that the master forgot them.
    session: String,
    /// The master's own flags; each link runs those it shares with its slave. Changed
    /// while the hub runs by [`crate::replication::MasterHub::set_features`].
    features: RwLock<Features>,
    /// The node's configuration in force; read through [`HubInner::config`].
    config: LiveConfig,
    /// The data directory: the log senders read, the snapshots a full sync sends.
    dir: DataDir,
    client: ReplicationClient,
    metrics: Metrics,
    /// The durable LSN: only records at or below it are sent.
    durable: watch::Receiver<Lsn>,
    /// The last LSN logged (durable or not), as the commit path saw it.
    committed: AtomicU64,
    /// To ask for an fsync when records wait only for durability (`fsync: interval |
    /// never`).
    wal: WalHandle,
    /// The slaves by id. A std `RwLock`: the writer thread takes it briefly on every
    /// commit, never across an await.
    links: RwLock<HashMap<String, Arc<SlaveLink>>>,
    /// Bytes held in all send buffers together (`replication.buffer.total-max-bytes`).
    send_budget: SendBudget,
    /// Set by a sender that found records applied but not yet durable; the next
    /// durable LSN wakes every sender.
    waiting_for_durable: AtomicBool,
    /// LSN → bytes of log, for lag in bytes. A std `Mutex`: the commit path and status
    /// reads hold it only to note or look up a point.
    bytes: Mutex<ByteIndex>,
    /// The node's shared state: retention of log and snapshots, the snapshotter.
    state: Arc<State>,
    /// Full-sync transfers and their queue (stage 5).
    full_sync: FullSyncServer,
    /// The cluster GC floor last published (`u64::MAX`: none), to see it move.
    gc_floor: AtomicU64,
    /// Bumped on every slave acknowledgement, for writes waiting under `semi`/`all`: a
    /// watch, so that a write sees every bump after it subscribed and none is queued.
    acks: watch::Sender<u64>,
    /// The highest LSN a write waits to see acknowledged (`semi`/`all`): a sender never
    /// holds back a batch a waiting write needs (`replication.batch-linger`).
    ack_wanted: AtomicU64,
    /// Wakes the senders holding back a batch when a write starts waiting for it.
    hurry: Notify,
    /// Set when the hub stops (the node stepped down): no more registrations.
    stopped: AtomicBool,
    runtime: tokio::runtime::Handle,
}

/// What the hub was handed, and what it shows of itself.
impl HubInner {
    /// A hub's state with no slave yet; its log index starts at the durable LSN.
    pub fn new(parts: HubParts) -> HubInner {
        let start = *parts.durable.borrow();
        HubInner {
            node_id: parts.node_id,
            session: format!("{:016x}", rand::random::<u64>()),
            features: RwLock::new(parts.features),
            config: parts.config,
            dir: parts.dir,
            client: parts.client,
            metrics: parts.metrics,
            durable: parts.durable,
            committed: AtomicU64::new(start.0),
            wal: parts.wal,
            links: RwLock::new(HashMap::new()),
            send_budget: SendBudget::default(),
            waiting_for_durable: AtomicBool::new(false),
            bytes: Mutex::new(ByteIndex::new(start)),
            state: parts.state,
            full_sync: FullSyncServer::default(),
            gc_floor: AtomicU64::new(u64::MAX),
            acks: watch::channel(0).0,
            ack_wanted: AtomicU64::new(0),
            hurry: Notify::new(),
            stopped: AtomicBool::new(false),
            runtime: parts.runtime,
        }
    }

    /// This master's node id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The session of this master process.
    pub fn session(&self) -> &str {
        &self.session
    }

    pub fn client(&self) -> &ReplicationClient {
        &self.client
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn dir(&self) -> &DataDir {
        &self.dir
    }

    /// The node's shared state: retention, the snapshotter, the epoch history.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Where senders, checks and ticks run.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    /// The master's own flags now.
    pub fn features(&self) -> Features {
        *self.features.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs with `features` from now on; links take them up when their slaves register
    /// again.
    pub fn set_features(&self, features: Features) {
        *self.features.write().unwrap_or_else(PoisonError::into_inner) = features;
    }

    /// The `replication` section in force now (its reloadable keys change while the
    /// hub runs).
    pub fn config(&self) -> ReplicationNow {
        ReplicationNow::of(&self.config)
    }

    pub fn durable_lsn(&self) -> Lsn {
        *self.durable.borrow()
    }

    pub fn committed_lsn(&self) -> Lsn {
        Lsn(self.committed.load(Ordering::Acquire))
    }

    /// The hub stops for good (the node stepped down): no more registrations.
    pub fn mark_stopped(&self) {
        self.stopped.store(true, Ordering::Release);
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// The full-sync transfers and their queue, locked.
    pub fn transfers(&self) -> MutexGuard<'_, Transfers> {
        self.full_sync.lock()
    }

    /// Publishes the cluster GC floor (`None`: no slave holds the log) and answers the
    /// one published before it (`u64::MAX`: none).
    pub fn swap_gc_floor(&self, floor: Option<Lsn>) -> u64 {
        self.gc_floor.swap(floor.map_or(u64::MAX, |f| f.0), Ordering::AcqRel)
    }
}

/// The links to the slaves.
impl HubInner {
    /// The link of slave `id`, if the hub follows it.
    pub fn link(&self, id: &str) -> Option<Arc<SlaveLink>> {
        self.read_links().0.get(id).cloned()
    }

    /// Every link now, copied out so that the caller may lock each at leisure.
    pub fn links(&self) -> Vec<Arc<SlaveLink>> {
        self.read_links().iter().cloned().collect()
    }

    /// The links, held still until the guard goes: no link comes or goes meanwhile. The
    /// commit path's way to them, without copying anything.
    pub fn read_links(&self) -> LinksRead<'_> {
        LinksRead(self.links.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The links to add to or remove from, held against every reader until the guard
    /// goes, so that a check and the change it decides are one step.
    pub fn write_links(&self) -> LinksWrite<'_> {
        LinksWrite(self.links.write().unwrap_or_else(PoisonError::into_inner))
    }

    /// Wakes every link's sender to look again at what it holds.
    pub fn wake_senders(&self) {
        for link in self.read_links().iter() {
            link.wake();
        }
    }

    /// The bytes held in all send buffers together.
    pub fn send_budget(&self) -> &SendBudget {
        &self.send_budget
    }
}

/// Durability, and the log written.
impl HubInner {
    /// A sender holds records back until they are durable: asks the log for an fsync,
    /// and for every sender to be woken when the durable LSN next moves.
    pub fn wait_for_durable(&self) {
        self.waiting_for_durable.store(true, Ordering::Release);
        self.wal.request_sync();
    }

    /// Whether a sender waits for the durable LSN to move; the next call answers
    /// `false` until one waits again.
    pub fn take_durable_waiters(&self) -> bool {
        self.waiting_for_durable.swap(false, Ordering::AcqRel)
    }

    /// The commit path logged `bytes` of log through `last`.
    pub fn logged(&self, last: Lsn, bytes: u64) {
        self.byte_index().push(last, bytes);
        self.committed.store(last.0, Ordering::Release);
    }

    /// Bytes of log after `lsn` (see [`ByteIndex::bytes_after`]).
    pub fn bytes_after(&self, lsn: Lsn) -> u64 {
        self.byte_index().bytes_after(lsn)
    }

    /// Bytes of log written per second lately, and the average bytes of one record.
    pub fn log_rates(&self) -> LogRates {
        let index = self.byte_index();
        LogRates { bytes_per_second: index.rate(), bytes_per_record: index.record_bytes() }
    }

    fn byte_index(&self) -> MutexGuard<'_, ByteIndex> {
        self.bytes.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Writes waiting for acknowledgements (`semi`/`all`), and the senders they wait on.
impl HubInner {
    /// A slave acknowledged records: waiting writes look again.
    pub fn acked(&self) {
        self.acks.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Changes on every acknowledgement from now on.
    pub fn subscribe_acks(&self) -> watch::Receiver<u64> {
        self.acks.subscribe()
    }

    /// A write waits to see `lsn` acknowledged: senders holding back a batch that
    /// reaches it send now.
    pub fn want_ack(&self, lsn: Lsn) {
        self.ack_wanted.fetch_max(lsn.0, Ordering::AcqRel);
        self.hurry.notify_waiters();
    }

    /// The highest LSN a write has waited to see acknowledged.
    pub fn ack_wanted(&self) -> Lsn {
        Lsn(self.ack_wanted.load(Ordering::Acquire))
    }

    /// Completes when a write next starts waiting for an acknowledgement.
    pub fn hurried(&self) -> Notified<'_> {
        self.hurry.notified()
    }
}

/// How fast the log grows (see [`HubInner::log_rates`]).
pub(crate) struct LogRates {
    /// Bytes of log written per second lately (0 when nothing is written).
    pub bytes_per_second: f64,
    /// Average bytes of one record written by this process (0 before any).
    pub bytes_per_record: f64,
}

/// The links under the map's read lock ([`HubInner::read_links`]).
pub(crate) struct LinksRead<'a>(RwLockReadGuard<'a, HashMap<String, Arc<SlaveLink>>>);

impl LinksRead<'_> {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<SlaveLink>> {
        self.0.values()
    }
}

/// The links under the map's write lock ([`HubInner::write_links`]).
pub(crate) struct LinksWrite<'a>(RwLockWriteGuard<'a, HashMap<String, Arc<SlaveLink>>>);

impl LinksWrite<'_> {
    pub fn get(&self, id: &str) -> Option<Arc<SlaveLink>> {
        self.0.get(id).cloned()
    }

    pub fn contains(&self, id: &str) -> bool {
        self.0.contains_key(id)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Adds `link` under its slave's id; the caller has removed any link it replaces.
    pub fn insert(&mut self, link: Arc<SlaveLink>) {
        self.0.insert(link.id.clone(), link);
    }

    pub fn remove(&mut self, id: &str) -> Option<Arc<SlaveLink>> {
        self.0.remove(id)
    }

    /// Removes and answers the links `forget` picks.
    pub fn remove_where(&mut self, forget: impl Fn(&SlaveLink) -> bool) -> Vec<Arc<SlaveLink>> {
        let ids: Vec<String> = self.0.values().filter(|link| forget(link)).map(|link| link.id.clone()).collect();
        ids.iter().filter_map(|id| self.0.remove(id)).collect()
    }

    /// Removes and answers every link.
    pub fn remove_all(&mut self) -> impl Iterator<Item = Arc<SlaveLink>> + '_ {
        self.0.drain().map(|(_, link)| link)
    }
}

/// The bytes held in all send buffers together, against
/// `replication.buffer.total-max-bytes`. Each buffer adds what it queues and releases
/// what it drops or sends; only the commit path decides on the total.
#[derive(Default)]
pub(crate) struct SendBudget(AtomicUsize);

impl SendBudget {
    pub fn add(&self, bytes: usize) {
        self.0.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn release(&self, bytes: usize) {
        self.0.fetch_sub(bytes, Ordering::Relaxed);
    }

    pub fn total(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// One slave: its state behind a mutex the commit path and its sender share, and the
/// notify that wakes the sender.
pub(crate) struct SlaveLink {
    id: String,
    /// A std `Mutex`: held only to copy records in or out, never across an await.
    state: Mutex<LinkState>,
    /// A `Notify`: a wake-up sent while the sender is busy is kept for its next wait.
    wake: Notify,
    /// Set when the link is replaced or forgotten: its sender and checks stop.
    closed: AtomicBool,
}

impl SlaveLink {
    pub fn new(id: String, state: LinkState) -> SlaveLink {
        SlaveLink { id, state: Mutex::new(state), wake: Notify::new(), closed: AtomicBool::new(false) }
    }

    /// The slave's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The link's state. A panic elsewhere while the lock was held cannot leave it
    /// half-changed in a way that matters more than stopping replication would, so a
    /// poisoned lock is used as it is.
    pub fn lock(&self) -> MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes the sender to look at the link again.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Completes at the sender's next wake-up.
    pub fn woken(&self) -> Notified<'_> {
        self.wake.notified()
    }

    /// The link is replaced or forgotten: its sender and checks stop.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
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
    pub fn push(&mut self, records: &[Record], budget: &SendBudget, committed: Instant) {
        for record in records {
            let bytes = record.encoded_len();
            self.buffer_bytes += bytes;
            budget.add(bytes);
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
    pub fn trim_sent(&mut self, budget: &SendBudget) {
        while self.buffer.front().is_some_and(|q| q.record.lsn < self.next_send) {
            let q = self.buffer.pop_front().expect("front exists");
            self.buffer_bytes -= q.bytes;
            budget.release(q.bytes);
        }
    }

    pub fn clear_buffer(&mut self, budget: &SendBudget) {
        budget.release(self.buffer_bytes);
        self.buffer.clear();
        self.buffer_bytes = 0;
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
        s.push(&[record], &SendBudget::default(), Instant::now());
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
}
