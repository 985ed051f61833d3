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

use super::link::HubInner;
use super::status::{SlaveState, SlaveStatus};
use crate::config::GcMode;
use bitark_common::Lsn;
use std::sync::atomic::Ordering;
use std::sync::PoisonError;

/// How far behind each limit a slave is, and where the limits are.
struct Lag {
    records: u64,
    bytes: u64,
    seconds: f64,
}

fn lag_of(hub: &HubInner, last_ack: Lsn, behind_since: Option<std::time::Instant>, durable: Lsn) -> Lag {
    let records = durable.0.saturating_sub(last_ack.0);
    let bytes =
        if records == 0 { 0 } else { hub.bytes.lock().unwrap_or_else(PoisonError::into_inner).bytes_after(last_ack) };
    let seconds = if records == 0 { 0.0 } else { behind_since.map_or(0.0, |t| t.elapsed().as_secs_f64()) };
    Lag { records, bytes, seconds }
}

/// The first `max-lag` limit `lag` exceeds, described.
fn exceeded(hub: &HubInner, lag: &Lag) -> Option<String> {
    let max = &hub.config().max_lag;
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
    let state = &hub.state;
    if !hub.features().cluster_gc {
        state.retention.set_cluster(None);
        return;
    }
    let durable = hub.durable_lsn();
    let mut floor: Option<Lsn> = None;
    let links: Vec<_> = hub.slaves.read().unwrap_or_else(PoisonError::into_inner).values().cloned().collect();
    for link in links {
        let mut s = link.lock();
        if !s.state().holds_wal() {
            continue;
        }
        if bounded(hub) {
            let lag = lag_of(hub, s.last_ack, s.behind_since, durable);
            if let Some(why) = exceeded(hub, &lag) {
                tracing::warn!(slave = %link.id, %why, "slave past replication.max-lag: OUTDATED, it must full-sync");
                s.set_state(SlaveState::Outdated);
                s.last_error = Some(format!("{why}: the WAL is no longer kept for it; it must full-sync"));
                s.clear_buffer(&hub.buffered);
                continue;
            }
        }
        floor = Some(floor.map_or(s.last_ack, |f| f.min(s.last_ack)));
    }
    let previous = hub.gc_floor.swap(floor.map_or(u64::MAX, |f| f.0), Ordering::AcqRel);
    state.retention.set_cluster(floor);
    // The WAL slaves held back may go: do not wait for the next snapshot.
    if floor.map_or(u64::MAX, |f| f.0) > previous || (floor.is_none() && previous != u64::MAX) {
        state.snapshots.collect();
    }
}

/// Whether a slave that installed the snapshot at `lsn` now would be past `max-lag` at
/// once (bounded mode): such a snapshot is too old to send.
pub(crate) fn outdates(hub: &HubInner, lsn: Lsn) -> bool {
    bounded(hub) && exceeded(hub, &lag_of(hub, lsn, None, hub.durable_lsn())).is_some()
}

/// Fills in how much further `status`'s slave may fall behind before it is OUTDATED.
pub(crate) fn fill_headroom(hub: &HubInner, status: &mut SlaveStatus) {
    if !bounded(hub) || !status.state.holds_wal() {
        return;
    }
    let max = &hub.config().max_lag;
    let (rate, record_bytes) = {
        let bytes = hub.bytes.lock().unwrap_or_else(PoisonError::into_inner);
        (bytes.rate(), bytes.record_bytes())
    };
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
