//! Acknowledgement modes (stage 7, `ack-modes`): a `semi` or `all` write is answered
//! only once enough slaves hold it durably, or with exactly what is known when
//! `replication.ack-timeout` runs out.
//!
//! Senders bump [`HubInner::acks`] on every acknowledgement; a waiting write looks at
//! the links again on each bump, and at least every [`RECHECK`] so that a slave that
//! stops being ALIVE while the write waits stops being waited for.

use super::link::HubInner;
use super::status::SlaveState;
use super::MasterHub;
use crate::config::AckMode;
use bitark_common::Lsn;
use std::sync::atomic::Ordering;
use std::sync::PoisonError;
use std::time::{Duration, Instant};

/// Longest a waiting write goes without looking at the slaves' states again.
const RECHECK: Duration = Duration::from_millis(50);

/// How far a write got towards its acknowledgement mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AckCount {
    /// Slaves that hold the record durably.
    pub acked: usize,
    /// Acknowledgements the mode needs.
    pub required: usize,
}

impl AckCount {
    fn done(&self) -> bool {
        self.acked >= self.required
    }
}

/// Why a write could not get its acknowledgements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckShortfall {
    /// Fewer ALIVE slaves than the mode needs, before anything was logged.
    NotEnoughReplicas { alive: usize, required: usize },
    /// The timeout ran out with `count` known.
    TimedOut(AckCount),
}

impl MasterHub {
    /// ALIVE slaves now.
    pub fn alive_slaves(&self) -> usize {
        let slaves = self.inner.slaves.read().unwrap_or_else(PoisonError::into_inner);
        slaves.values().filter(|l| !l.is_closed() && l.lock().state() == SlaveState::Alive).count()
    }

    /// Whether a write under `mode` may be logged at all: enough ALIVE slaves exist, or
    /// `replication.ack-wait-for-replicas` lets it wait for them.
    pub fn admit_ack(&self, mode: AckMode) -> Result<(), AckShortfall> {
        let required = required_alive(&self.inner, mode);
        let alive = self.alive_slaves();
        if alive < required && !self.inner.config().ack_wait_for_replicas {
            return Err(AckShortfall::NotEnoughReplicas { alive, required });
        }
        Ok(())
    }

    /// Waits until the slaves `mode` asks for hold LSN `lsn` durably, at most
    /// `replication.ack-timeout`.
    pub async fn wait_for_acks(&self, lsn: Lsn, mode: AckMode) -> Result<AckCount, AckShortfall> {
        let hub = &self.inner;
        let started = Instant::now();
        let deadline = started + hub.config().ack_timeout;
        let mut acks = hub.acks.subscribe();
        // Senders holding back a small batch send it now.
        hub.ack_wanted.fetch_max(lsn.0, Ordering::AcqRel);
        hub.hurry.notify_waiters();
        let result = loop {
            let count = count(hub, lsn, mode);
            if count.done() {
                break Ok(count);
            }
            let now = Instant::now();
            if now >= deadline {
                break Err(AckShortfall::TimedOut(count));
            }
            let _ = tokio::time::timeout((deadline - now).min(RECHECK), acks.changed()).await;
        };
        let label = [mode.as_str()];
        hub.metrics.replication_ack_wait_seconds.with_label_values(&label).observe(started.elapsed().as_secs_f64());
        if result.is_err() {
            hub.metrics.replication_ack_timeouts.with_label_values(&label).inc();
        }
        result
    }
}

/// ALIVE slaves the mode needs before a write may go ahead: `min-acks` for `semi`, one
/// for `all` (`all` of no slave at all would be `async` in disguise).
fn required_alive(hub: &HubInner, mode: AckMode) -> usize {
    match mode {
        AckMode::Async => 0,
        AckMode::Semi => hub.config().min_acks,
        AckMode::All => 1,
    }
}

/// Slaves holding `lsn`, and how many the mode needs now: `semi` a fixed number, `all`
/// every slave that holds it plus every ALIVE slave that does not yet.
fn count(hub: &HubInner, lsn: Lsn, mode: AckMode) -> AckCount {
    let slaves = hub.slaves.read().unwrap_or_else(PoisonError::into_inner);
    let (mut acked, mut pending) = (0, 0);
    for link in slaves.values().filter(|l| !l.is_closed()) {
        let s = link.lock();
        if !s.verified {
            continue;
        }
        if s.last_ack >= lsn && s.features.progress {
            acked += 1;
        } else if s.state() == SlaveState::Alive {
            pending += 1;
        }
    }
    let required = match mode {
        AckMode::Async => 0,
        AckMode::Semi => hub.config().min_acks,
        AckMode::All => (acked + pending).max(1),
    };
    AckCount { acked, required }
}
