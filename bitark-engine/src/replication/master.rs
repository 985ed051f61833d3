//! The master's side: the slaves it knows and what each still needs.
//!
//! The commit path (the WAL writer thread) hands every durable batch to
//! [`MasterHub::on_commit`], which copies it into each slave's send buffer and wakes that
//! slave's sender. It never waits on a slave: under `bounded-buffer` a buffer that would
//! overflow is dropped and its slave marked SLOW, to be caught up from the WAL later.

use super::sender;
use super::status::{SlaveState, SlaveStatus};
use crate::config::ReplicationConfig;
use bitark_common::replication::{Features, RegisterRequest, RegisterResponse};
use bitark_common::{Lsn, Record};
use bitark_infra::replication::ReplicationClient;
use bitark_infra::Metrics;
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;
use tokio::sync::{watch, Notify};

/// Cheap-to-clone handle on a master's replication state.
#[derive(Clone)]
pub struct MasterHub {
    pub(crate) inner: Arc<HubInner>,
}

pub(crate) struct HubInner {
    pub node_id: String,
    /// Random per process start; lets slaves notice that the master forgot them.
    pub session: String,
    pub features: Features,
    pub config: ReplicationConfig,
    pub wal_dir: PathBuf,
    pub client: ReplicationClient,
    pub metrics: Metrics,
    pub applied: watch::Receiver<Lsn>,
    /// The slaves by id. A std `RwLock`: the writer thread takes it briefly on every
    /// commit, never across an await.
    pub slaves: RwLock<HashMap<String, Arc<SlaveLink>>>,
    pub runtime: tokio::runtime::Handle,
}

/// One slave: its state behind a mutex the commit path and its sender share, and the
/// notify that wakes the sender.
pub(crate) struct SlaveLink {
    pub id: String,
    /// A std `Mutex`: held only to copy records in or out, never across an await.
    pub state: Mutex<LinkState>,
    pub wake: Notify,
}

pub(crate) struct LinkState {
    pub url: String,
    pub features: Features,
    /// The slave process's session; a new one means the slave restarted.
    pub slave_session: String,
    pub state: SlaveState,
    /// Highest LSN the slave acknowledged (or, without progress, the highest sent).
    pub last_ack: Lsn,
    /// The next LSN to send.
    pub next_send: Lsn,
    pub buffer: VecDeque<Queued>,
    pub buffer_bytes: usize,
    pub retries: u64,
    pub last_error: Option<String>,
    /// Since when the slave has been missing records, for lag in seconds.
    pub behind_since: Option<Instant>,
}

pub(crate) struct Queued {
    pub record: Record,
    pub bytes: usize,
    pub committed: Instant,
}

impl LinkState {
    /// Drops buffered records the slave no longer needs.
    pub fn trim_sent(&mut self) {
        while self.buffer.front().is_some_and(|q| q.record.lsn < self.next_send) {
            let q = self.buffer.pop_front().expect("front exists");
            self.buffer_bytes -= q.bytes;
        }
    }

    pub fn clear_buffer(&mut self) {
        self.buffer.clear();
        self.buffer_bytes = 0;
    }
}

impl MasterHub {
    /// A hub for a master with `features`; senders run on `runtime`.
    pub(crate) fn new(
        node_id: String,
        config: ReplicationConfig,
        wal_dir: PathBuf,
        client: ReplicationClient,
        metrics: Metrics,
        applied: watch::Receiver<Lsn>,
        runtime: tokio::runtime::Handle,
    ) -> MasterHub {
        let features = config.effective_features();
        let session = format!("{:016x}", rand::random::<u64>());
        MasterHub {
            inner: Arc::new(HubInner {
                node_id,
                session,
                features,
                config,
                wal_dir,
                client,
                metrics,
                applied,
                slaves: RwLock::new(HashMap::new()),
                runtime,
            }),
        }
    }

    /// Contacts the statically configured slaves until each answers, then follows it
    /// as if it had registered.
    pub(crate) fn contact_static_slaves(&self) {
        for url in self.inner.config.slaves.clone() {
            let hub = self.clone();
            self.inner.runtime.spawn(async move {
                loop {
                    match hub.inner.client.status(&url).await {
                        Ok(status) => {
                            hub.register(RegisterRequest {
                                slave_id: status.node_id,
                                url: url.clone(),
                                applied_lsn: status.applied_lsn,
                                features: status.features,
                                session: status.session,
                            });
                            return;
                        }
                        Err(e) => {
                            tracing::debug!(%url, error = %e, "static slave not reachable yet");
                            tokio::time::sleep(hub.inner.config.register_interval).await;
                        }
                    }
                }
            });
        }
    }

    /// A slave introduces itself. A new slave, or a slave process that restarted, is
    /// followed from the LSN it reports; otherwise its progress only moves forward.
    pub fn register(&self, request: RegisterRequest) -> RegisterResponse {
        let hub = &self.inner;
        let features = hub.features.common(request.features);
        let applied = Lsn(request.applied_lsn);
        let mut slaves = hub.slaves.write().expect("slaves lock");
        match slaves.get(&request.slave_id) {
            Some(link) => {
                let mut s = link.state.lock().expect("slave state lock");
                s.url = request.url.clone();
                if s.features != features {
                    tracing::info!(slave = %link.id, features = ?features.enabled(), "slave features changed");
                    s.features = features;
                }
                if s.slave_session != request.session {
                    tracing::info!(slave = %link.id, %applied, "slave restarted; following it from its own position");
                    s.slave_session = request.session.clone();
                    s.last_ack = applied;
                    s.next_send = applied.next();
                    s.state = SlaveState::Alive;
                    s.retries = 0;
                } else if applied > s.last_ack {
                    s.last_ack = applied;
                    s.next_send = s.next_send.max(applied.next());
                }
                drop(s);
                link.wake.notify_one();
            }
            None => {
                tracing::info!(slave = %request.slave_id, url = %request.url, %applied, features = ?features.enabled(), "slave registered");
                let link = Arc::new(SlaveLink {
                    id: request.slave_id.clone(),
                    state: Mutex::new(LinkState {
                        url: request.url.clone(),
                        features,
                        slave_session: request.session.clone(),
                        state: SlaveState::Alive,
                        last_ack: applied,
                        next_send: applied.next(),
                        buffer: VecDeque::new(),
                        buffer_bytes: 0,
                        retries: 0,
                        last_error: None,
                        behind_since: None,
                    }),
                    wake: Notify::new(),
                });
                slaves.insert(request.slave_id.clone(), link.clone());
                hub.runtime.spawn(sender::run(self.inner.clone(), link));
            }
        }
        RegisterResponse {
            master_id: hub.node_id.clone(),
            features,
            durable_lsn: hub.applied.borrow().0,
            session: hub.session.clone(),
        }
    }

    /// Hands a durable batch to every slave's buffer; called on the WAL writer thread.
    pub fn on_commit(&self, records: &[Record]) {
        let hub = &self.inner;
        let slaves = hub.slaves.read().expect("slaves lock");
        let bounded = &hub.config.buffer;
        let bytes: usize = records.iter().map(Record::encoded_len).sum();
        for link in slaves.values() {
            let mut s = link.state.lock().expect("slave state lock");
            if matches!(s.state, SlaveState::Slow | SlaveState::NeedsFullSync) {
                continue;
            }
            if s.features.bounded_buffer
                && (s.buffer.len() + records.len() > bounded.max_records
                    || s.buffer_bytes + bytes > bounded.max_bytes.as_u64() as usize)
            {
                tracing::warn!(slave = %link.id, depth = s.buffer.len(), "send buffer full: slave marked SLOW");
                s.state = SlaveState::Slow;
                s.clear_buffer();
                s.behind_since.get_or_insert_with(Instant::now);
            } else {
                let committed = Instant::now();
                for record in records {
                    let len = record.encoded_len();
                    s.buffer_bytes += len;
                    s.buffer.push_back(Queued { record: record.clone(), bytes: len, committed });
                }
            }
            drop(s);
            link.wake.notify_one();
        }
    }

    /// Every slave as the master sees it.
    pub fn slaves(&self) -> Vec<SlaveStatus> {
        let applied = *self.inner.applied.borrow();
        let slaves = self.inner.slaves.read().expect("slaves lock");
        let mut out: Vec<SlaveStatus> = slaves.values().map(|link| status_of(link, applied)).collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// The flags this master runs with.
    pub fn features(&self) -> Features {
        self.inner.features
    }
}

/// One slave's status; also refreshes its metrics.
pub(crate) fn status_of(link: &SlaveLink, applied: Lsn) -> SlaveStatus {
    let s = link.state.lock().expect("slave state lock");
    let lag_records = applied.0.saturating_sub(s.last_ack.0);
    let lag_seconds = if lag_records == 0 {
        0.0
    } else {
        let oldest = s.buffer.front().filter(|q| q.record.lsn == s.last_ack.next()).map(|q| q.committed);
        oldest.or(s.behind_since).map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0)
    };
    SlaveStatus {
        id: link.id.clone(),
        url: s.url.clone(),
        state: s.state,
        features: s.features,
        last_ack_lsn: s.last_ack.0,
        lag_records,
        lag_bytes: s.buffer_bytes as u64,
        lag_seconds,
        buffer_depth: s.buffer.len() as u64,
        retries: s.retries,
        last_error: s.last_error.clone(),
    }
}
