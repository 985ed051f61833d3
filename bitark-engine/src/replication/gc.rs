//! Stage 6: how far back the master keeps its WAL for slaves (`replication.gc-mode`).
//!
//! - `conservative`: the WAL is kept back to what the slowest ALIVE, SLOW (or briefly
//!   UNREACHABLE) slave has acknowledged, however far behind it is. DEAD, OUTDATED,
//!   NEEDS_FULL_SYNC and DIVERGED slaves hold nothing back.
//! - `bounded`: the same, but a slave further behind than `replication.max-lag` (records,
//!   bytes or time, the first exceeded) is marked OUTDATED and no longer holds the WAL: it
//!   must full-sync. Whatever a slave does, the WAL then stays under `max-lag`, plus what
//!   the snapshots still need, plus the segments a purge cannot cut.
//!
//! Each slave's *headroom* is how much further it may fall behind before it is OUTDATED:
//! in bytes of log, and in seconds at the current write rate, so a dashboard can warn
//! before a full sync becomes necessary.
//!
//! [`ClusterGc`] runs [`evaluate`] on the master's module tick; the snapshotter asks
//! [`crate::state::Retention`] for the result before it deletes anything.

use super::link::{HubInner, LogRates};
use super::status::{SlaveState, SlaveStatus};
use crate::config::{GcMode, MaxLag};
use bitark_common::Lsn;

/// How far behind each limit a slave is, and where the limits are.
struct Lag {
    records: u64,
    bytes: u64,
    seconds: f64,
}

fn lag_of(hub: &HubInner, last_ack: Lsn, behind_since: Option<std::time::Instant>, durable: Lsn) -> Lag {
    let records = durable.0.saturating_sub(last_ack.0);
    let bytes = if records == 0 { 0 } else { hub.bytes_after(last_ack) };
    let seconds = if records == 0 { 0.0 } else { behind_since.map_or(0.0, |t| t.elapsed().as_secs_f64()) };
    Lag { records, bytes, seconds }
}

/// The first `max-lag` limit `lag` exceeds, described.
fn exceeded(max: &MaxLag, lag: &Lag) -> Option<String> {
    if max.records > 0 && lag.records > max.records {
        return Some(format!("{} records behind, over replication.max-lag.records ({})", lag.records, max.records));
    }
    if max.bytes.as_u64() > 0 && lag.bytes > max.bytes.as_u64() {
        return Some(format!(
            "{} of log behind, over replication.max-lag.bytes ({})",
            bytesize::ByteSize::b(lag.bytes),
            max.bytes
        ));
    }
    if !max.time.is_zero() && lag.seconds > max.time.as_secs_f64() {
        return Some(format!("{:.0} s behind, over replication.max-lag.time ({:?})", lag.seconds, max.time));
    }
    None
}

fn bounded(hub: &HubInner) -> bool {
    hub.features().cluster_gc && hub.config().gc_mode == GcMode::Bounded
}

/// Stage 6 on the master, every tick: the WAL floor follows the slaves that hold it.
/// Marks slaves past `max-lag` OUTDATED (bounded mode) and tells the snapshotter how far
/// back the slaves that hold the WAL need it; asks for a collection when that moved.
pub(crate) fn evaluate(hub: &HubInner) {
    let state = hub.state();
    if !hub.features().cluster_gc {
        state.retention.set_cluster(None);
        return;
    }
    let durable = hub.durable_lsn();
    let max = bounded(hub).then(|| hub.config().max_lag.clone());
    let mut floor: Option<Lsn> = None;
    for link in hub.links() {
        let mut s = link.lock();
        let lag = || lag_of(hub, s.last_ack, s.behind_since, durable);
        match judge(s.state(), s.last_ack, max.as_ref(), lag) {
            Verdict::Ignored => {}
            Verdict::Outdated(why) => {
                tracing::warn!(slave = %link.id(), %why, "slave past replication.max-lag: OUTDATED, it must full-sync");
                s.set_state(SlaveState::Outdated);
                s.last_error = Some(format!("{why}: the WAL is no longer kept for it; it must full-sync"));
                s.clear_buffer(hub.send_budget());
            }
            Verdict::Holds(lsn) => floor = Some(floor.map_or(lsn, |f| f.min(lsn))),
        }
    }
    let previous = hub.swap_gc_floor(floor);
    state.retention.set_cluster(floor);
    // The WAL slaves held back may go: do not wait for the next snapshot.
    if released(previous, floor) {
        state.snapshots.collect();
    }
}

/// What one tick of cluster GC makes of one slave.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// It holds no WAL back (not followed: DEAD, OUTDATED, full-syncing, ...).
    Ignored,
    /// Past `max-lag` (bounded mode): the WAL is no longer kept for it.
    Outdated(String),
    /// The WAL after this LSN is kept for it.
    Holds(Lsn),
}

/// Judges a slave in `state` that acknowledged `last_ack`; `max` is the limit in
/// bounded mode (`None`: unbounded), `lag` how far behind it is (worked out only when
/// needed).
fn judge(state: SlaveState, last_ack: Lsn, max: Option<&MaxLag>, lag: impl FnOnce() -> Lag) -> Verdict {
    if !state.holds_wal() {
        return Verdict::Ignored;
    }
    match max.and_then(|max| exceeded(max, &lag())) {
        Some(why) => Verdict::Outdated(why),
        None => Verdict::Holds(last_ack),
    }
}

/// Whether the floor moved so that WAL may be deleted: it rose, or no slave holds the
/// log any more. `previous` is the last floor published (`u64::MAX`: none).
fn released(previous: u64, floor: Option<Lsn>) -> bool {
    floor.map_or(u64::MAX, |f| f.0) > previous || (floor.is_none() && previous != u64::MAX)
}

/// Whether a slave that installed the snapshot at `lsn` now would be past `max-lag` at
/// once (bounded mode): such a snapshot is too old to send.
pub(crate) fn outdates(hub: &HubInner, lsn: Lsn) -> bool {
    bounded(hub) && exceeded(&hub.config().max_lag, &lag_of(hub, lsn, None, hub.durable_lsn())).is_some()
}

/// Fills in how much further `status`'s slave may fall behind before it is OUTDATED.
pub(crate) fn fill_headroom(hub: &HubInner, status: &mut SlaveStatus) {
    if !bounded(hub) || !status.state.holds_wal() {
        return;
    }
    let max = &hub.config().max_lag;
    let LogRates { bytes_per_second: rate, bytes_per_record: record_bytes } = hub.log_rates();
    let mut room: Option<f64> = None;
    let mut limit = |left: f64| room = Some(room.map_or(left, |r| r.min(left)).max(0.0));
    if max.bytes.as_u64() > 0 {
        limit(max.bytes.as_u64() as f64 - status.lag_bytes as f64);
    }
    if max.records > 0 && record_bytes > 0.0 {
        limit((max.records as f64 - status.lag_records as f64) * record_bytes);
    }
    if !max.time.is_zero() && rate > 0.0 {
        limit((max.time.as_secs_f64() - status.lag_seconds) * rate);
    }
    status.headroom_bytes = room.map(|bytes| bytes as u64);
    status.headroom_seconds = room.filter(|_| rate > 0.0).map(|bytes| bytes / rate);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn max(records: u64) -> MaxLag {
        MaxLag { records, bytes: bytesize::ByteSize::mib(1), time: Duration::from_secs(60) }
    }

    fn lag(records: u64, bytes: u64, seconds: f64) -> impl FnOnce() -> Lag {
        move || Lag { records, bytes, seconds }
    }

    #[test]
    fn a_slave_within_every_limit_holds_the_log_from_its_last_ack() {
        let verdict = judge(SlaveState::Alive, Lsn(40), Some(&max(100)), lag(60, 1000, 1.0));
        assert_eq!(verdict, Verdict::Holds(Lsn(40)));
    }

    #[test]
    fn a_slave_past_any_limit_is_outdated_in_bounded_mode_only() {
        for (records, bytes, seconds, named) in
            [(101, 0, 0.0, "records"), (1, 2 << 20, 0.0, "bytes"), (1, 0, 61.0, "time")]
        {
            match judge(SlaveState::Slow, Lsn(1), Some(&max(100)), lag(records, bytes, seconds)) {
                Verdict::Outdated(why) => assert!(why.contains(&format!("replication.max-lag.{named}")), "{why}"),
                other => panic!("{named}: {other:?}"),
            }
            let unbounded = judge(SlaveState::Slow, Lsn(1), None, lag(records, bytes, seconds));
            assert_eq!(unbounded, Verdict::Holds(Lsn(1)), "unbounded mode keeps the log for {named}");
        }
        // `0` turns the record limit off.
        assert_eq!(judge(SlaveState::Alive, Lsn(1), Some(&max(0)), lag(1 << 40, 0, 0.0)), Verdict::Holds(Lsn(1)));
    }

    #[test]
    fn slaves_not_followed_hold_nothing_and_their_lag_is_not_asked() {
        for state in [SlaveState::Dead, SlaveState::Outdated, SlaveState::FullSyncing, SlaveState::Verifying] {
            let verdict = judge(state, Lsn(1), Some(&max(1)), || panic!("lag asked for a {state:?} slave"));
            assert_eq!(verdict, Verdict::Ignored, "{state:?}");
        }
        let verdict = judge(SlaveState::Unreachable, Lsn(7), Some(&max(100)), lag(1, 0, 0.0));
        assert_eq!(verdict, Verdict::Holds(Lsn(7)), "an unreachable slave is still followed");
    }

    #[test]
    fn collection_runs_when_the_floor_rises_or_vanishes_and_not_otherwise() {
        assert!(released(10, Some(Lsn(11))));
        assert!(released(10, None));
        assert!(!released(10, Some(Lsn(10))));
        assert!(!released(10, Some(Lsn(9))));
        assert!(!released(u64::MAX, None));
        assert!(!released(u64::MAX, Some(Lsn(5))), "a first floor keeps more, it frees nothing");
    }
}
