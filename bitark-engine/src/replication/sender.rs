//! One sender task per slave.
//!
//! It sends from the slave's next needed LSN: from the send buffer when the buffer holds
//! it, otherwise (under `bounded-buffer`) read back from the WAL. Acknowledgements move
//! the slave forward (`progress`); a failed send is retried with exponential backoff and
//! jitter (`reliable`) or dropped, in which case the slave's next answer reports the gap
//! and, where the stage allows, the WAL fills it.

use super::master::{status_of, HubInner, SlaveLink};
use super::status::SlaveState;
use bitark_common::{Lsn, Record};
use bitark_infra::replication::TransportError;
use bitark_infra::wal::{CursorRead, WalCursor};
use rand::Rng;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// About the most bytes one batch carries, from the buffer or read back from the WAL.
const BATCH_BYTES: usize = 4 << 20;
/// How long an idle sender waits before looking again on its own.
const IDLE_WAIT: Duration = Duration::from_millis(500);

enum Step {
    Send(Vec<Record>),
    CatchUp(Lsn),
    Wait,
}

pub(crate) async fn run(hub: Arc<HubInner>, link: Arc<SlaveLink>) {
    let mut cursor: Option<WalCursor> = None;
    loop {
        let step = next_step(&hub, &link);
        let records = match step {
            Step::Send(records) => records,
            Step::CatchUp(from) => match catch_up(&hub, &link, &mut cursor, from).await {
                Some(records) => records,
                None => {
                    wait(&hub, &link).await;
                    continue;
                }
            },
            Step::Wait => {
                wait(&hub, &link).await;
                continue;
            }
        };
        send(&hub, &link, records).await;
        refresh_metrics(&hub, &link);
    }
}

async fn wait(hub: &HubInner, link: &SlaveLink) {
    refresh_metrics(hub, link);
    let _ = tokio::time::timeout(IDLE_WAIT, link.wake.notified()).await;
}

/// Decides what to send next, under the slave's lock.
fn next_step(hub: &HubInner, link: &SlaveLink) -> Step {
    let applied = *hub.applied.borrow();
    let mut s = link.state.lock().expect("slave state lock");
    s.trim_sent();
    if s.state == SlaveState::NeedsFullSync {
        return Step::Wait;
    }
    if s.buffer.front().is_some_and(|q| q.record.lsn == s.next_send) {
        return Step::Send(take_batch(&s, hub.config.batch_max_records));
    }
    if s.next_send > applied {
        s.behind_since = None;
        // Nothing outstanding. A slave that was SLOW is caught up; one whose last sends
        // failed but which has since acknowledged everything (its registration reports
        // its position) holds every record too.
        if s.state == SlaveState::Slow || (s.state == SlaveState::Unreachable && s.last_ack >= applied) {
            recovered(&mut s, link);
            s.state = SlaveState::Alive;
        }
        return Step::Wait;
    }
    if s.behind_since.is_none() {
        s.behind_since = Some(Instant::now());
    }
    if s.features.bounded_buffer {
        // Close enough to the live end: queue new commits again while the WAL fills
        // the distance.
        if s.state == SlaveState::Slow && applied.0 - s.next_send.0 < (hub.config.buffer.max_records / 2) as u64 {
            s.state = SlaveState::Alive;
        }
        return Step::CatchUp(s.next_send);
    }
    if !s.buffer.is_empty() {
        // This stage cannot resend what the slave missed: send on, the slave reports the gap.
        return Step::Send(take_batch(&s, hub.config.batch_max_records));
    }
    Step::Wait
}

/// Copies the front of the buffer: up to `max` records and about `BATCH_BYTES`.
fn take_batch(s: &super::master::LinkState, max: usize) -> Vec<Record> {
    let mut bytes = 0;
    s.buffer
        .iter()
        .take(max)
        .take_while(|q| {
            let fits = bytes < BATCH_BYTES;
            bytes += q.bytes;
            fits
        })
        .map(|q| q.record.clone())
        .collect()
}

/// Reads the next records for the slave from the WAL.
async fn catch_up(
    hub: &Arc<HubInner>,
    link: &SlaveLink,
    cursor: &mut Option<WalCursor>,
    from: Lsn,
) -> Option<Vec<Record>> {
    let mut reader = match cursor.take() {
        Some(c) if c.next_lsn() == from => c,
        _ => WalCursor::new(&hub.wal_dir, from),
    };
    let up_to = *hub.applied.borrow();
    let max = hub.config.batch_max_records;
    let (reader, read) = tokio::task::spawn_blocking(move || {
        let read = reader.read(max, BATCH_BYTES, up_to);
        (reader, read)
    })
    .await
    .ok()?;
    // A failed read forgets the cursor: the next one locates its segment afresh (which
    // reports a purge if garbage collection removed the segment under it).
    if read.is_ok() {
        *cursor = Some(reader);
    }
    match read {
        Ok(CursorRead::Records(records)) if !records.is_empty() => {
            hub.metrics.replication_catchup_records.with_label_values(&[&link.id]).inc_by(records.len() as u64);
            Some(records)
        }
        Ok(CursorRead::Records(_)) => None,
        Ok(CursorRead::Purged { oldest }) => {
            let mut s = link.state.lock().expect("slave state lock");
            tracing::warn!(slave = %link.id, needs = %from, %oldest, "slave needs records the WAL no longer holds");
            s.state = SlaveState::NeedsFullSync;
            s.last_error = Some(format!("needs LSN {from}, the WAL starts at LSN {oldest}: a full sync is required"));
            s.clear_buffer();
            None
        }
        Err(e) => {
            tracing::error!(slave = %link.id, error = %e, "cannot read the WAL to catch a slave up");
            link.state.lock().expect("slave state lock").last_error = Some(e.to_string());
            None
        }
    }
}

async fn send(hub: &Arc<HubInner>, link: &SlaveLink, records: Vec<Record>) {
    let (url, features) = {
        let s = link.state.lock().expect("slave state lock");
        (s.url.clone(), s.features)
    };
    let last = records[records.len() - 1].lsn;
    let mut body = Vec::with_capacity(records.iter().map(Record::encoded_len).sum());
    for record in &records {
        record.encode_into(&mut body);
    }
    let labels = [link.id.as_str()];
    let m = &hub.metrics;
    m.replication_sent_batches.with_label_values(&labels).inc();
    m.replication_sent_records.with_label_values(&labels).inc_by(records.len() as u64);
    let started = Instant::now();
    let result = hub.client.append(&url, &hub.node_id, &hub.session, body).await;
    m.replication_send_seconds.with_label_values(&labels).observe(started.elapsed().as_secs_f64());

    let backoff = {
        let mut s = link.state.lock().expect("slave state lock");
        match result {
            Ok(Some(ack)) => {
                m.replication_acked_batches.with_label_values(&labels).inc();
                m.replication_acked_records.with_label_values(&labels).inc_by(records.len() as u64);
                let lag = m.replication_ack_lag_seconds.with_label_values(&labels);
                for q in s.buffer.iter().take_while(|q| q.record.lsn.0 <= ack.ack_lsn) {
                    if q.record.lsn > s.last_ack {
                        lag.observe(q.committed.elapsed().as_secs_f64());
                    }
                }
                s.last_ack = s.last_ack.max(Lsn(ack.ack_lsn));
                s.next_send = Lsn(ack.ack_lsn).next();
                recovered(&mut s, link);
                None
            }
            Ok(None) => {
                // No progress at this stage: what was sent counts as delivered.
                s.last_ack = s.last_ack.max(last);
                s.next_send = last.next();
                recovered(&mut s, link);
                None
            }
            Err(TransportError::Gap { expected }) => {
                s.next_send = expected;
                if features.progress {
                    s.last_ack = Lsn(expected.0.saturating_sub(1));
                }
                s.last_error = Some(format!("the slave expects LSN {expected} next"));
                if !features.bounded_buffer {
                    s.state = SlaveState::Gap;
                }
                None
            }
            Err(e) => {
                s.last_error = Some(e.to_string());
                if s.state != SlaveState::Slow {
                    s.state = SlaveState::Unreachable;
                }
                if features.reliable {
                    s.retries += 1;
                    m.replication_retries.with_label_values(&labels).inc();
                    Some(backoff(hub, s.retries))
                } else {
                    // Dropped: the next answer tells where the slave stands.
                    s.next_send = last.next();
                    Some(hub.config.retry.initial_backoff)
                }
            }
        }
    };
    if let Some(delay) = backoff {
        // A plain sleep: neither new commits nor registrations cut a backoff short.
        tokio::time::sleep(delay).await;
    }
}

fn recovered(s: &mut super::master::LinkState, link: &SlaveLink) {
    if s.state == SlaveState::Unreachable || s.state == SlaveState::Gap {
        tracing::info!(slave = %link.id, ack = %s.last_ack, "slave reachable again");
        s.state = SlaveState::Alive;
    }
    s.retries = 0;
    s.last_error = None;
}

/// Exponential backoff with equal jitter: half fixed, half random.
fn backoff(hub: &HubInner, retries: u64) -> Duration {
    let retry = &hub.config.retry;
    let exp = retry.initial_backoff.saturating_mul(1u32 << retries.min(20).saturating_sub(1) as u32);
    let capped = exp.min(retry.max_backoff);
    let half = capped / 2;
    half + rand::thread_rng().gen_range(Duration::ZERO..=half)
}

fn refresh_metrics(hub: &HubInner, link: &SlaveLink) {
    let status = status_of(link, *hub.applied.borrow());
    let m = &hub.metrics;
    let id = [link.id.as_str()];
    m.replication_ack_lsn.with_label_values(&id).set(status.last_ack_lsn as i64);
    m.replication_lag_records.with_label_values(&id).set(status.lag_records as i64);
    m.replication_lag_bytes.with_label_values(&id).set(status.lag_bytes as i64);
    m.replication_lag_seconds.with_label_values(&id).set(status.lag_seconds);
    m.replication_buffer_depth.with_label_values(&id).set(status.buffer_depth as i64);
    for state in SlaveState::ALL {
        m.replication_slave_state.with_label_values(&[&link.id, state.as_str()]).set((state == status.state) as i64);
    }
}
