//! Acknowledgement modes (stage 7, `ack-modes`): a `semi` or `all` write is answered
//! only once enough slaves hold it durably, or with exactly what is known when
//! `replication.ack-timeout` runs out.
//!
//! Senders tell the hub of every acknowledgement ([`HubInner::acked`]); a waiting write looks at
//! the links again on each bump, and at least every [`RECHECK`] so that a slave that
//! stops being ALIVE while the write waits stops being waited for.

use super::link::HubInner;
use super::status::SlaveState;
use super::MasterHub;
use crate::config::AckMode;
use bitark_common::Lsn;
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
        let slaves = self.inner.read_links();
        slaves.iter().filter(|l| !l.is_closed() && l.lock().state() == SlaveState::Alive).count()
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
        let mut acks = hub.subscribe_acks();
        // Senders holding back a small batch send it now.
        hub.want_ack(lsn);
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
        hub.metrics().replication_ack_wait_seconds.with_label_values(&label).observe(started.elapsed().as_secs_f64());
        if result.is_err() {
            hub.metrics().replication_ack_timeouts.with_label_values(&label).inc();
        }
        result
    }
}

impl MasterHub {
    /// The highest LSN the slaves `mode` needs hold durably: under `semi` the
    /// `min-acks`-th highest acknowledgement, under `all` the lowest of the ALIVE
    /// slaves' (0 without one). What a failover to one of them cannot take back.
    pub fn held_by_slaves(&self, mode: AckMode) -> Lsn {
        let slaves = self.inner.read_links();
        let views = slaves.iter().filter(|l| !l.is_closed()).map(|link| {
            let s = link.lock();
            AckView { verified: s.verified, state: s.state(), last_ack: s.last_ack, progress: s.features.progress }
        });
        held_by(views, mode, self.inner.config().min_acks)
    }
}

/// [`MasterHub::held_by_slaves`] over the slaves' views.
fn held_by(slaves: impl IntoIterator<Item = AckView>, mode: AckMode, min_acks: usize) -> Lsn {
    let promises = slaves.into_iter().filter(|s| s.verified && s.progress);
    match mode {
        AckMode::Async => Lsn(u64::MAX),
        AckMode::Semi => {
            let mut acks: Vec<Lsn> = promises.map(|s| s.last_ack).collect();
            acks.sort_unstable_by(|a, b| b.cmp(a));
            acks.get(min_acks.max(1) - 1).copied().unwrap_or(Lsn(0))
        }
        AckMode::All => promises.filter(|s| s.state == SlaveState::Alive).map(|s| s.last_ack).min().unwrap_or(Lsn(0)),
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
    let slaves = hub.read_links();
    let views = slaves.iter().filter(|l| !l.is_closed()).map(|link| {
        let s = link.lock();
        AckView { verified: s.verified, state: s.state(), last_ack: s.last_ack, progress: s.features.progress }
    });
    count_acks(views, lsn, mode, hub.config().min_acks)
}

/// What the ack count needs of one slave's link.
#[derive(Clone, Copy, Debug)]
struct AckView {
    verified: bool,
    state: SlaveState,
    last_ack: Lsn,
    /// The slave reports durable progress (`progress`): only then is its ack a promise.
    progress: bool,
}

/// [`count`] over the slaves' views: an unverified slave counts for nothing; a slave
/// counts as holding `lsn` only when it acknowledged it under `progress`.
fn count_acks(slaves: impl IntoIterator<Item = AckView>, lsn: Lsn, mode: AckMode, min_acks: usize) -> AckCount {
    let (mut acked, mut pending) = (0, 0);
    for s in slaves.into_iter().filter(|s| s.verified) {
        if s.last_ack >= lsn && s.progress {
            acked += 1;
        } else if s.state == SlaveState::Alive {
            pending += 1;
        }
    }
    let required = match mode {
        AckMode::Async => 0,
        AckMode::Semi => min_acks,
        AckMode::All => (acked + pending).max(1),
    };
    AckCount { acked, required }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slave(state: SlaveState, last_ack: u64) -> AckView {
        AckView { verified: true, state, last_ack: Lsn(last_ack), progress: true }
    }

    #[test]
    fn semi_needs_min_acks_from_slaves_that_hold_the_write() {
        let slaves = [slave(SlaveState::Alive, 10), slave(SlaveState::Alive, 9), slave(SlaveState::Slow, 12)];
        let count = count_acks(slaves, Lsn(10), AckMode::Semi, 2);
        assert_eq!(count, AckCount { acked: 2, required: 2 });
        assert!(count.done());
        let count = count_acks(slaves, Lsn(11), AckMode::Semi, 2);
        assert_eq!(count, AckCount { acked: 1, required: 2 });
        assert!(!count.done());
    }

    #[test]
    fn all_waits_for_every_alive_slave_but_not_for_one_that_is_not() {
        let slaves = [slave(SlaveState::Alive, 10), slave(SlaveState::Alive, 5), slave(SlaveState::Dead, 3)];
        assert_eq!(count_acks(slaves, Lsn(10), AckMode::All, 1), AckCount { acked: 1, required: 2 });
        // The DEAD slave is not waited for; once the other ALIVE one acks, the write is done.
        let slaves = [slave(SlaveState::Alive, 10), slave(SlaveState::Alive, 10), slave(SlaveState::Dead, 3)];
        assert!(count_acks(slaves, Lsn(10), AckMode::All, 1).done());
    }

    #[test]
    fn what_the_slaves_hold_is_the_ack_modes_own_count() {
        let slaves = [slave(SlaveState::Alive, 10), slave(SlaveState::Alive, 7), slave(SlaveState::Dead, 3)];
        assert_eq!(held_by(slaves, AckMode::Semi, 1), Lsn(10));
        assert_eq!(held_by(slaves, AckMode::Semi, 2), Lsn(7));
        assert_eq!(held_by(slaves, AckMode::Semi, 4), Lsn(0), "fewer slaves than min-acks hold nothing");
        assert_eq!(held_by(slaves, AckMode::All, 1), Lsn(7), "a DEAD slave is not waited for");
        assert_eq!(held_by([], AckMode::All, 1), Lsn(0));
        let no_progress = AckView { progress: false, ..slave(SlaveState::Alive, 10) };
        assert_eq!(held_by([no_progress], AckMode::Semi, 1), Lsn(0));
    }

    #[test]
    fn all_of_no_slave_is_never_done() {
        assert_eq!(count_acks([], Lsn(1), AckMode::All, 1), AckCount { acked: 0, required: 1 });
        assert!(count_acks([], Lsn(1), AckMode::Async, 1).done());
    }

    #[test]
    fn an_unverified_slave_or_one_without_progress_is_no_promise() {
        let unverified = AckView { verified: false, ..slave(SlaveState::Alive, 10) };
        let no_progress = AckView { progress: false, ..slave(SlaveState::Alive, 10) };
        assert_eq!(count_acks([unverified, no_progress], Lsn(10), AckMode::Semi, 1).acked, 0);
        // Without progress it is still ALIVE: `all` waits for it.
        assert_eq!(count_acks([no_progress], Lsn(10), AckMode::All, 1).required, 1);
    }
}
