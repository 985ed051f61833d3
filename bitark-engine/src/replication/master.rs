//! The master's side: the slaves it knows and what each still needs.
//!
//! A slave exists for the master only once it registers, and receives records only
//! once the master has checked, by calling the URL it registered with, that the slave
//! really answers there (`verify.rs`). Registrations are bounded
//! (`replication.max-slaves`); a slave id that registers again from a new process or URL
//! replaces its old link; links silent for `replication.forget-after` are dropped.
//!
//! The commit path (the WAL writer thread) hands every logged batch to
//! [`MasterHub::on_commit`], which copies it into each verified slave's send buffer and
//! wakes that slave's sender. It never waits on a slave. Buffers are bounded per slave
//! and in total: a buffer that would overflow is dropped and its slave marked SLOW, to be
//! caught up from the WAL (`bounded-buffer`), or GAP at stages 1 and 2. Senders send only
//! records that are durable on the master's own disk.

use super::full_sync;
use super::link::{HubInner, LinkState, LinksRead, LinksWrite, SendBudget, SlaveLink};
use super::status::{SlaveState, SlaveStatus};
use super::view::{refresh_metrics, status_of};
use super::{sender, verify};
use crate::state::CommitListener;
use bitark_common::replication::{Features, FullSyncAnswer, FullSyncRequest, RegisterRequest, RegisterResponse};
use bitark_common::{Lsn, Record};
use bitark_infra::wal::list_segments;
use full_sync::{FullSyncError, PullAnswer};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) use super::link::HubParts;

/// Why a registration was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RegisterError {
    /// The request itself is malformed (400).
    #[error("{0}")]
    Invalid(String),
    /// The slave's log reaches past this master's (409 `diverged`).
    #[error(
        "slave {slave} reports applied LSN {slave_lsn}, past the end of this master's log at LSN {master_lsn}: \
         its log holds records this master does not have, so it cannot follow this master as it is \
         (it needs a fresh copy of the master's data)"
    )]
    Diverged { slave: String, slave_lsn: u64, master_lsn: u64 },
    /// `replication.max-slaves` slaves are registered already (409 `too_many_slaves`).
    #[error("this master follows {max} slaves already (replication.max-slaves); slave {slave} was refused")]
    TooManySlaves { slave: String, max: usize },
    /// This node is no longer master (409 `wrong_role`).
    #[error("this node stepped down and is no longer master")]
    Stopped,
}

impl RegisterError {
    /// The value of `bitark_replication_registrations_refused_total{reason}`.
    fn reason(&self) -> &'static str {
        match self {
            RegisterError::Invalid(_) => "invalid",
            RegisterError::Diverged { .. } => "diverged",
            RegisterError::TooManySlaves { .. } => "too_many_slaves",
            RegisterError::Stopped => "stopped",
        }
    }
}

/// Cheap-to-clone handle on a master's replication state.
#[derive(Clone)]
pub struct MasterHub {
    pub(crate) inner: Arc<HubInner>,
}

impl CommitListener for MasterHub {
    fn on_commit(&self, records: &[Record]) {
        MasterHub::on_commit(self, records)
    }

    fn on_durable(&self) {
        MasterHub::on_durable(self)
    }
}

impl MasterHub {
    /// Runs `work` on the hub every quarter heartbeat interval (at least every 20 ms) for
    /// as long as the hub lives: the tick of the master's modules.
    pub(crate) fn every_tick(&self, work: fn(&HubInner)) {
        let weak = Arc::downgrade(&self.inner);
        self.inner.runtime().spawn(async move {
            loop {
                let Some(hub) = weak.upgrade() else { return };
                work(&hub);
                let tick = (hub.config().heartbeat_interval / 4).max(Duration::from_millis(20));
                drop(hub);
                tokio::time::sleep(tick).await;
            }
        });
    }

    /// A hub for a master; senders and checks run on `parts.runtime`.
    pub(crate) fn new(parts: HubParts) -> MasterHub {
        let hub = MasterHub { inner: Arc::new(HubInner::new(parts)) };
        hub.inner.runtime().spawn(forget_silent_slaves(Arc::downgrade(&hub.inner)));
        hub
    }

    /// Asks each statically configured slave that is not following this master to
    /// register now (slaves come in only by registering themselves).
    pub(crate) fn contact_static_slaves(&self) {
        for url in self.inner.config().slaves.clone() {
            let hub = Arc::downgrade(&self.inner);
            self.inner.runtime().spawn(async move {
                loop {
                    let Some(hub) = hub.upgrade() else { return };
                    let following = hub.read_links().iter().any(|link| {
                        let s = link.lock();
                        s.url == url && s.verified
                    });
                    if !following {
                        match hub.client().reconnect(&url).await {
                            Ok(()) => tracing::debug!(%url, "asked a listed slave to register"),
                            Err(e) => tracing::debug!(%url, error = %e, "listed slave not reachable yet"),
                        }
                    }
                    let wait = hub.config().register_interval;
                    drop(hub);
                    tokio::time::sleep(wait).await;
                }
            });
        }
    }

    /// A slave introduces itself. A new slave, or a slave process that restarted, is
    /// followed from the LSN it reports, once its URL is verified; otherwise its
    /// progress only moves forward.
    pub fn register(&self, request: RegisterRequest) -> Result<RegisterResponse, RegisterError> {
        let result = self.try_register(request);
        if let Err(e) = &result {
            self.inner.metrics().replication_registrations_refused.with_label_values(&[e.reason()]).inc();
        }
        result
    }

    fn try_register(&self, request: RegisterRequest) -> Result<RegisterResponse, RegisterError> {
        check_request(&request)?;
        let hub = &self.inner;
        if hub.is_stopped() {
            return Err(RegisterError::Stopped);
        }
        let features = hub.features().common(request.features);
        let applied = Lsn(request.applied_lsn);
        let durable = hub.durable_lsn();
        let mut slaves = hub.write_links();
        // Again under the lock `stop` clears the links under: a registration that passed
        // the check above while the hub stopped must not add a link after the clearing.
        if hub.is_stopped() {
            return Err(RegisterError::Stopped);
        }
        let existing = slaves.get(&request.slave_id);
        let same_process = existing.as_ref().is_some_and(|link| {
            let s = link.lock();
            s.slave_session == request.session && s.url == request.url
        });
        // A slave process that was found ahead of this master's log holds records this
        // master never had, wherever the master's log has got to since: it stays
        // DIVERGED until it comes back as a new process (an operator resynced it).
        if let Some((slave_lsn, master_lsn)) =
            existing.as_ref().filter(|_| same_process).and_then(|l| l.lock().diverged)
        {
            return Err(RegisterError::Diverged {
                slave: request.slave_id,
                slave_lsn: slave_lsn.0,
                master_lsn: master_lsn.0,
            });
        }
        if applied > durable {
            let error = RegisterError::Diverged {
                slave: request.slave_id.clone(),
                slave_lsn: applied.0,
                master_lsn: durable.0,
            };
            tracing::error!(slave = %request.slave_id, slave_lsn = %applied, master_lsn = %durable, "slave is ahead of this master: DIVERGED");
            if !slaves.contains(&request.slave_id) && slaves.len() >= hub.config().max_slaves {
                return Err(error);
            }
            // Shown (and kept out of replication) until the slave comes back as a new process.
            let link = self.replace_link(&mut slaves, &request, features, applied);
            let mut s = link.lock();
            s.set_state(SlaveState::Diverged);
            s.diverged = Some((applied, durable));
            s.last_error = Some(error.to_string());
            drop(s);
            refresh_metrics(hub, &link);
            return Err(error);
        }
        let link = match existing {
            Some(link) if same_process => {
                let mut s = link.lock();
                s.answered(applied, durable, Instant::now());
                if s.features != features {
                    tracing::info!(slave = %link.id(), features = ?features.enabled(), "slave features changed");
                    s.features = features;
                }
                let check = !s.verified && !s.verifying;
                drop(s);
                if check {
                    verify::start(hub.clone(), link.clone());
                }
                link.wake();
                link
            }
            existing => {
                if existing.is_some() {
                    tracing::info!(slave = %request.slave_id, %applied, "slave restarted or moved; following its new process from its own position");
                } else if slaves.len() >= hub.config().max_slaves {
                    return Err(RegisterError::TooManySlaves {
                        slave: request.slave_id.clone(),
                        max: hub.config().max_slaves,
                    });
                } else {
                    tracing::info!(slave = %request.slave_id, url = %request.url, %applied, features = ?features.enabled(), "slave registered; verifying its URL");
                }
                let link = self.replace_link(&mut slaves, &request, features, applied);
                if let Some(oldest) = self.oldest_retained().filter(|oldest| applied.next() < *oldest) {
                    // The log it needs next is gone: no catch-up can bring it back.
                    let mut s = link.lock();
                    s.set_state(SlaveState::NeedsFullSync);
                    s.last_error = Some(format!(
                        "needs LSN {}, the WAL starts at LSN {oldest}: a full sync is required",
                        applied.next()
                    ));
                }
                verify::start(hub.clone(), link.clone());
                link
            }
        };
        drop(slaves);
        full_sync::progressed(hub, &link, applied);
        let s = link.lock();
        let (state, reason) = (s.state(), s.last_error.clone());
        drop(s);
        refresh_metrics(hub, &link);
        Ok(RegisterResponse {
            master_id: hub.node_id().to_string(),
            features,
            durable_lsn: durable.0,
            session: hub.session().to_string(),
            state: state.as_str().to_string(),
            reason: reason.filter(|_| state != SlaveState::Alive),
            history: features.fencing.then(|| hub.state().history()),
        })
    }

    /// Creates the link of a slave that registers from a new process (or for the first
    /// time) in place of any old one, with its own sender task.
    fn replace_link(
        &self,
        slaves: &mut LinksWrite<'_>,
        request: &RegisterRequest,
        features: Features,
        applied: Lsn,
    ) -> Arc<SlaveLink> {
        let hub = &self.inner;
        if let Some(old) = slaves.remove(&request.slave_id) {
            close(hub, &old);
        }
        let state = LinkState::registered(request.url.clone(), features, request.session.clone(), applied);
        let link = Arc::new(SlaveLink::new(request.slave_id.clone(), state));
        slaves.insert(link.clone());
        hub.runtime().spawn(sender::run(hub.clone(), link.clone()));
        link
    }

    /// The oldest LSN the WAL still holds, if it holds any.
    fn oldest_retained(&self) -> Option<Lsn> {
        list_segments(&self.inner.dir().wal()).ok()?.first().map(|segment| segment.first_lsn)
    }

    /// Hands a logged batch to every verified slave's buffer; called on the WAL writer
    /// thread. Under `fsync: interval | never` the batch is not durable yet: senders
    /// hold it back until it is.
    pub fn on_commit(&self, records: &[Record]) {
        let hub = &self.inner;
        let bytes: usize = records.iter().map(Record::encoded_len).sum();
        if let Some(last) = records.last() {
            hub.logged(last.lsn, bytes as u64);
        }
        let slaves = hub.read_links();
        let config = hub.config();
        let limits = &config.buffer;
        let committed = Instant::now();
        self.make_room(&slaves, bytes * slaves.len(), committed);
        for link in slaves.iter() {
            let mut s = link.lock();
            // A slave being verified gets the records committed meanwhile, sent once it
            // is verified: at stages 1 and 2 nothing could send them later.
            if !(s.verified || s.verifying) || matches!(s.state(), SlaveState::Slow) || s.state().is_stuck() {
                continue;
            }
            let overflows = s.buffer.len() + records.len() > limits.max_records
                || s.buffer_bytes + bytes > limits.max_bytes.as_u64() as usize;
            if overflows {
                overflow(&mut s, link, hub.send_budget(), records[records.len() - 1].lsn, committed);
            } else {
                s.push(records, hub.send_budget(), committed);
            }
            // A sender holding back a small batch needs no wake-up until the batch is full.
            let wake = overflows || !s.lingering || s.batch_ready(&config);
            drop(s);
            if wake {
                link.wake();
            }
        }
        hub.metrics().replication_buffered_bytes.set(hub.send_budget().total() as i64);
    }

    /// Keeps all send buffers together under `buffer.total-max-bytes` before `incoming`
    /// more bytes are queued: the largest buffer (the slave furthest behind) overflows
    /// first, never a healthy slave that happens to be filled next.
    fn make_room(&self, slaves: &LinksRead<'_>, incoming: usize, now: Instant) {
        let hub = &self.inner;
        let max = hub.config().buffer.total_max_bytes.as_u64() as usize;
        while hub.send_budget().total() + incoming > max {
            let largest = slaves.iter().max_by_key(|link| link.lock().buffer_bytes);
            let Some(link) = largest.filter(|link| link.lock().buffer_bytes > 0) else { return };
            let mut s = link.lock();
            let through = s.buffer.back().map(|q| q.record.lsn).unwrap_or(s.next_send);
            tracing::warn!(slave = %link.id(), bytes = s.buffer_bytes, "send buffers over replication.buffer.total-max-bytes: the largest overflows");
            overflow(&mut s, link, hub.send_budget(), through, now);
            drop(s);
            link.wake();
        }
    }

    /// The durable LSN moved: senders holding records back for it go on.
    pub fn on_durable(&self) {
        let hub = &self.inner;
        if hub.take_durable_waiters() {
            hub.wake_senders();
        }
    }

    /// Stops the hub for good (the node steps down): registrations are refused, every
    /// link closes and its sender ends; the ticks end once the last handle goes.
    pub fn stop(&self) {
        let hub = &self.inner;
        hub.mark_stopped();
        let mut slaves = hub.write_links();
        for link in slaves.remove_all() {
            close(hub, &link);
        }
        hub.state().retention.set_cluster(None);
    }

    /// Every slave as the master sees it.
    pub fn slaves(&self) -> Vec<SlaveStatus> {
        let slaves = self.inner.read_links();
        let mut out: Vec<SlaveStatus> = slaves.iter().map(|link| status_of(&self.inner, link)).collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// The flags this master runs with.
    pub fn features(&self) -> Features {
        self.inner.features()
    }

    /// Runs with `features` from now on: every slave is asked to register again, and its
    /// link then runs the flags both sides have. Batches in flight finish as they are.
    pub fn set_features(&self, features: Features) {
        self.inner.set_features(features);
        for url in self.slaves().into_iter().map(|s| s.url) {
            let client = self.inner.client().clone();
            self.inner.runtime().spawn(async move {
                if let Err(e) = client.reconnect(&url).await {
                    tracing::warn!(%url, error = %e, "cannot ask a slave to register again after a flag change");
                }
            });
        }
    }

    /// Wakes every sender to look again at what it holds back: after a reload, the
    /// batch settings may be other than those it is waiting under.
    pub fn wake_senders(&self) {
        self.inner.wake_senders();
    }

    /// The session of this master process.
    pub fn session(&self) -> &str {
        self.inner.session()
    }

    /// `pull(fromLsn)` (stage 5): the log from `from` on, or the snapshot to full-sync
    /// from when the WAL no longer reaches back to it.
    pub async fn pull(&self, from: Lsn) -> Result<PullAnswer, FullSyncError> {
        full_sync::pull(&self.inner, from).await
    }

    /// A slave asks for a full-sync transfer (stage 5).
    pub async fn start_full_sync(&self, request: FullSyncRequest) -> Result<FullSyncAnswer, FullSyncError> {
        full_sync::start(&self.inner, request).await
    }

    /// One chunk of a full-sync transfer, with its crc32.
    pub async fn full_sync_chunk(&self, id: u64, session: &str, offset: u64) -> Result<(Vec<u8>, u32), FullSyncError> {
        full_sync::chunk(&self.inner, id, session, offset).await
    }
}

/// Drops `s`'s buffer, which cannot take the records through `last`: the slave is
/// caught up from the WAL later (SLOW), or, at stages 1 and 2, misses them (GAP).
fn overflow(s: &mut LinkState, link: &SlaveLink, budget: &SendBudget, last: Lsn, now: Instant) {
    if s.features.bounded_buffer {
        tracing::warn!(slave = %link.id(), depth = s.buffer.len(), "send buffer full: slave marked SLOW");
        s.set_state(SlaveState::Slow);
        s.clear_buffer(budget);
        s.behind_since.get_or_insert(now);
    } else {
        let first = s.buffer.front().map(|q| q.record.lsn).unwrap_or(s.next_send);
        tracing::warn!(slave = %link.id(), %first, %last, "send buffer full: records dropped, the slave misses them (GAP)");
        s.clear_buffer(budget);
        s.next_send = s.next_send.max(last.next());
        s.set_state(SlaveState::Gap);
        s.last_error = Some(format!(
            "the send buffer overflowed; records {first}..={last} were dropped and this stage cannot resend them"
        ));
    }
}

/// Longest slave id, URL and session a registration may carry.
const MAX_ID_LEN: usize = 128;
const MAX_URL_LEN: usize = 2048;

fn check_request(request: &RegisterRequest) -> Result<(), RegisterError> {
    let invalid = |m: String| Err(RegisterError::Invalid(m));
    let id = &request.slave_id;
    if id.is_empty() || id.len() > MAX_ID_LEN || !id.chars().all(|c| c.is_ascii_graphic()) {
        return invalid(format!("slaveId must be 1 to {MAX_ID_LEN} printable ASCII characters"));
    }
    let url = &request.url;
    if url.len() > MAX_URL_LEN || !(url.starts_with("http://") || url.starts_with("https://")) {
        return invalid(format!("url must be an http:// or https:// URL of at most {MAX_URL_LEN} characters"));
    }
    if request.session.is_empty() || request.session.len() > MAX_ID_LEN {
        return invalid(format!("session must be 1 to {MAX_ID_LEN} characters"));
    }
    Ok(())
}

/// Drops `link` for good: its sender stops, its buffer is freed, its metric series
/// go. The caller has removed it from the links, and holds them until this is done.
fn close(hub: &HubInner, link: &SlaveLink) {
    link.close();
    full_sync::end_transfers_of_gone(hub, link.id());
    link.lock().clear_buffer(hub.send_budget());
    link.wake();
    let m = hub.metrics();
    let id = [link.id()];
    for family in [
        &m.replication_ack_lsn,
        &m.replication_lag_records,
        &m.replication_lag_bytes,
        &m.replication_buffer_depth,
        &m.replication_buffer_bytes,
        &m.replication_headroom_bytes,
    ] {
        let _ = family.remove_label_values(&id);
    }
    let _ = m.replication_lag_seconds.remove_label_values(&id);
    let _ = m.replication_heartbeat_age.remove_label_values(&id);
    let _ = m.replication_headroom_seconds.remove_label_values(&id);
    for family in [
        &m.replication_retries,
        &m.replication_send_failures,
        &m.replication_sent_batches,
        &m.replication_sent_records,
        &m.replication_acked_batches,
        &m.replication_acked_records,
        &m.replication_catchup_records,
        &m.replication_dead_detections,
    ] {
        let _ = family.remove_label_values(&id);
    }
    let _ = m.replication_send_seconds.remove_label_values(&id);
    let _ = m.replication_ack_lag_seconds.remove_label_values(&id);
    for state in SlaveState::ALL {
        let _ = m.replication_slave_state.remove_label_values(&[link.id(), state.as_str()]);
    }
}

/// Drops links that have neither registered nor answered for `forget-after`.
async fn forget_silent_slaves(hub: std::sync::Weak<HubInner>) {
    loop {
        let Some(inner) = hub.upgrade() else { return };
        let forget_after = inner.config().forget_after;
        {
            let mut slaves = inner.write_links();
            for link in slaves.remove_where(|link| link.lock().last_seen.elapsed() >= forget_after) {
                tracing::warn!(slave = %link.id(), ?forget_after, "slave silent too long: forgotten");
                close(&inner, &link);
            }
        }
        drop(inner);
        tokio::time::sleep((forget_after / 4).max(Duration::from_millis(100))).await;
    }
}
