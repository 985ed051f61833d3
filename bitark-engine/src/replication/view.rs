//! What the master shows of one slave's link: its status in `/actuator/replication`
//! and its metric series.

use super::gc::fill_headroom;
use super::link::{HubInner, SlaveLink};
use super::status::{SlaveState, SlaveStatus};

/// One slave's status.
pub(crate) fn status_of(hub: &HubInner, link: &SlaveLink) -> SlaveStatus {
    let durable = hub.durable_lsn();
    let s = link.lock();
    let lag_records = durable.0.saturating_sub(s.last_ack.0);
    let lag_seconds = if lag_records == 0 {
        0.0
    } else {
        let oldest = s.buffer.front().filter(|q| q.record.lsn == s.last_ack.next()).map(|q| q.committed);
        oldest.or(s.behind_since).map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0)
    };
    let lag_bytes = if lag_records == 0 { 0 } else { hub.bytes_after(s.last_ack) };
    let mut status = SlaveStatus {
        id: link.id().to_string(),
        url: s.url.clone(),
        state: s.state(),
        features: s.features,
        last_ack_lsn: s.last_ack.0,
        lag_records,
        lag_bytes,
        lag_seconds,
        buffer_depth: s.buffer.len() as u64,
        buffer_bytes: s.buffer_bytes as u64,
        retries: s.retries,
        last_error: s.last_error.clone(),
        last_seen_seconds: s.last_seen.elapsed().as_secs_f64(),
        queue_position: s.queue_position,
        full_sync_bytes: s.full_sync.map(|(bytes, _)| bytes),
        full_sync_size: s.full_sync.map(|(_, size)| size),
        headroom_bytes: None,
        headroom_seconds: None,
    };
    drop(s);
    fill_headroom(hub, &mut status);
    status
}

/// Refreshes the metric series of one slave.
pub(crate) fn refresh_metrics(hub: &HubInner, link: &SlaveLink) {
    if link.is_closed() {
        return;
    }
    let status = status_of(hub, link);
    let m = hub.metrics();
    let id = [link.id()];
    m.replication_ack_lsn.with_label_values(&id).set(status.last_ack_lsn as i64);
    m.replication_lag_records.with_label_values(&id).set(status.lag_records as i64);
    m.replication_lag_bytes.with_label_values(&id).set(status.lag_bytes as i64);
    m.replication_lag_seconds.with_label_values(&id).set(status.lag_seconds);
    m.replication_buffer_depth.with_label_values(&id).set(status.buffer_depth as i64);
    m.replication_buffer_bytes.with_label_values(&id).set(status.buffer_bytes as i64);
    // A buffer dropped outside a commit (a check given up, a slave marked DEAD) changes the
    // total as well.
    m.replication_buffered_bytes.set(hub.send_budget().total() as i64);
    match status.headroom_bytes {
        Some(bytes) => m.replication_headroom_bytes.with_label_values(&id).set(bytes as i64),
        None => drop(m.replication_headroom_bytes.remove_label_values(&id)),
    }
    match status.headroom_seconds {
        Some(seconds) => m.replication_headroom_seconds.with_label_values(&id).set(seconds),
        None => drop(m.replication_headroom_seconds.remove_label_values(&id)),
    }
    for state in SlaveState::ALL {
        m.replication_slave_state.with_label_values(&[link.id(), state.as_str()]).set((state == status.state) as i64);
    }
}
