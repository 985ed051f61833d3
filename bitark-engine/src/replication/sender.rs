//! One sender task per slave.
//!
//! It sends from the slave's next needed LSN, never past the master's durable LSN: from
//! the send buffer when the buffer holds it, otherwise (under `bounded-buffer`) read back
//! from the WAL. A batch from the buffer that is not yet whole waits until its oldest
//! record is `replication.batch-linger` old, unless a `semi`/`all` write waits for it.
//! Acknowledgements move the slave forward (`progress`). A failed send is
//! logged and counted, and the next one waits a bounded, growing backoff with jitter:
//! under `reliable` the same batch is sent again; at stages 1 and 2 nothing can be sent
//! again, so the slave is GAP and sending goes on with newer records (which it will
//! refuse until someone repairs it). The task ends when its link is closed.

use super::link::{HubInner, LinkState, SlaveLink, BATCH_BYTES};
use super::status::SlaveState;
use super::view::refresh_metrics;
use crate::config::RetryConfig;
use bitark_common::{Lsn, Record};
use bitark_infra::replication::{BatchSender, TransportError};
use bitark_infra::wal::{CursorRead, WalCursor};
use rand::Rng;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long an idle sender waits before looking again on its own.
const IDLE_WAIT: Duration = Duration::from_millis(500);

enum Step {
    Send(Vec<Record>),
    /// A small batch is held back this long, for more records to join it.
    Linger(Duration),
    CatchUp(Lsn),
    Wait,
}

pub(crate) async fn run(hub: Arc<HubInner>, link: Arc<SlaveLink>) {
    let mut cursor: Option<WalCursor> = None;
    while !link.is_closed() {
        let records = match next_step(&hub, &link) {
            Step::Send(records) => records,
            Step::CatchUp(from) => match catch_up(&hub, &link, &mut cursor, from).await {
                Some(records) => records,
                None => {
                    wait(&hub, &link).await;
                    continue;
                }
            },
            Step::Linger(delay) => {
                linger(&hub, &link, delay).await;
                continue;
            }
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
    let _ = tokio::time::timeout(IDLE_WAIT, link.woken()).await;
}

/// Holds a small batch back for `delay`, until commits fill it or a write starts
/// waiting for it.
async fn linger(hub: &HubInner, link: &SlaveLink, delay: Duration) {
    let hurry = hub.hurried();
    tokio::pin!(hurry);
    // Registered before looking, so that a write that starts waiting after the look
    // still cuts the delay short.
    hurry.as_mut().enable();
    if wanted_now(hub, link.lock().next_send) {
        return;
    }
    tokio::select! {
        _ = hurry => {}
        _ = link.woken() => {}
        _ = tokio::time::sleep(delay) => {}
    }
}

/// Whether a write waits for an acknowledgement of `next_send` or a later record.
fn wanted_now(hub: &HubInner, next_send: Lsn) -> bool {
    hub.ack_wanted() >= next_send
}

/// Decides what to send next, under the slave's lock.
fn next_step(hub: &HubInner, link: &SlaveLink) -> Step {
    let durable = hub.durable_lsn();
    let mut s = link.lock();
    s.lingering = false;
    s.trim_sent(hub.send_budget());
    if !s.verified || s.state().is_stuck() {
        return Step::Wait;
    }
    if s.next_send > durable {
        if s.next_send <= hub.committed_lsn() {
            // Logged, not durable yet (`fsync: interval | never`): ask for an fsync.
            hub.wait_for_durable();
            return Step::Wait;
        }
        s.behind_since = None;
        // Nothing outstanding. A slave that was SLOW is caught up; one whose last sends
        // failed but which has since acknowledged everything (its registration reports
        // its position) holds every record too.
        // An error shown for a slave that has everything is stale.
        let caught_up = match s.state() {
            SlaveState::Slow | SlaveState::Alive => true,
            SlaveState::Unreachable => s.last_ack >= durable,
            _ => false,
        };
        if caught_up {
            recovered(&mut s, link);
        }
        return Step::Wait;
    }
    if let Some(front) = s.buffer.front().filter(|q| q.record.lsn == s.next_send) {
        let config = hub.config();
        // A busy master sends fewer, larger batches: a small one waits until its oldest
        // record is `batch-linger` old, unless a write waits for it.
        if !s.batch_ready(&config) && !wanted_now(hub, s.next_send) {
            if let Some(left) = config.batch_linger.checked_sub(front.committed.elapsed()).filter(|d| !d.is_zero()) {
                s.lingering = true;
                return Step::Linger(left);
            }
        }
        return Step::Send(take_batch(&s, config.batch_max_records, durable));
    }
    if s.behind_since.is_none() {
        s.behind_since = Some(Instant::now());
    }
    if s.features.bounded_buffer {
        // Close enough to the live end: queue new commits again while the WAL fills
        // the distance.
        if s.state() == SlaveState::Slow && durable.0 - s.next_send.0 < (hub.config().buffer.max_records / 2) as u64 {
            s.set_state(SlaveState::Alive);
        }
        return Step::CatchUp(s.next_send);
    }
    match s.buffer.front() {
        // This stage cannot resend what the slave missed: send on, the slave reports the gap.
        Some(front) if front.record.lsn <= durable => {
            Step::Send(take_batch(&s, hub.config().batch_max_records, durable))
        }
        Some(_) => {
            hub.wait_for_durable();
            Step::Wait
        }
        None => Step::Wait,
    }
}

/// Copies the front of the buffer: up to `max` records, about `BATCH_BYTES`, none
/// above `durable`.
fn take_batch(s: &LinkState, max: usize, durable: Lsn) -> Vec<Record> {
    let mut bytes = 0;
    s.buffer
        .iter()
        .take(max)
        .take_while(|q| {
            let fits = bytes < BATCH_BYTES && q.record.lsn <= durable;
            bytes += q.bytes;
            fits
        })
        .map(|q| q.record.clone())
        .collect()
}

/// Reads the next records for the slave from the WAL, none above the durable LSN.
async fn catch_up(
    hub: &Arc<HubInner>,
    link: &SlaveLink,
    cursor: &mut Option<WalCursor>,
    from: Lsn,
) -> Option<Vec<Record>> {
    // A cursor left behind `from` (the buffer served the records between) moves on from
    // where it stopped, instead of finding `from` again from the start of its segment.
    let mut reader = cursor.take().unwrap_or_else(|| WalCursor::new(&hub.dir().wal(), from));
    let up_to = hub.durable_lsn();
    let max = hub.config().batch_max_records;
    let (reader, read) = tokio::task::spawn_blocking(move || {
        let read = reader.advance_to(from).and_then(|()| reader.read(max, BATCH_BYTES, up_to));
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
            hub.metrics().replication_catchup_records.with_label_values(&[link.id()]).inc_by(records.len() as u64);
            Some(records)
        }
        Ok(CursorRead::Records(_)) => None,
        Ok(CursorRead::Purged { oldest }) => {
            let mut s = link.lock();
            tracing::warn!(slave = %link.id(), needs = %from, %oldest, "slave needs records the WAL no longer holds");
            s.set_state(SlaveState::NeedsFullSync);
            s.last_error = Some(format!("needs LSN {from}, the WAL starts at LSN {oldest}: a full sync is required"));
            s.clear_buffer(hub.send_budget());
            None
        }
        Err(e) => {
            tracing::error!(slave = %link.id(), error = %e, "cannot read the WAL to catch a slave up");
            link.lock().last_error = Some(e.to_string());
            None
        }
    }
}

async fn send(hub: &Arc<HubInner>, link: &SlaveLink, records: Vec<Record>) {
    if records.is_empty() || link.is_closed() {
        return;
    }
    let (url, features, slave_session) = {
        let s = link.lock();
        (s.url.clone(), s.features, s.slave_session.clone())
    };
    let (first, last) = (records[0].lsn, records[records.len() - 1].lsn);
    let mut body = Vec::with_capacity(records.iter().map(Record::encoded_len).sum());
    for record in &records {
        record.encode_into(&mut body);
    }
    let labels = [link.id()];
    let m = hub.metrics();
    m.replication_sent_batches.with_label_values(&labels).inc();
    m.replication_sent_records.with_label_values(&labels).inc_by(records.len() as u64);
    let started = Instant::now();
    let sender = BatchSender { master_id: hub.node_id(), master_session: hub.session(), slave_session: &slave_session };
    let result = hub.client().append(&url, &sender, body).await;
    if link.is_closed() {
        // Forgotten or replaced meanwhile: its metric series are gone and stay gone.
        return;
    }
    m.replication_send_seconds.with_label_values(&labels).observe(started.elapsed().as_secs_f64());

    let backoff = {
        let mut s = link.lock();
        match result {
            Ok(Some(ack)) => {
                m.replication_acked_batches.with_label_values(&labels).inc();
                m.replication_acked_records.with_label_values(&labels).inc_by(records.len() as u64);
                let lag = m.replication_ack_lag_seconds.with_label_values(&labels);
                let now = Instant::now();
                for q in s.buffer.iter().take_while(|q| q.record.lsn.0 <= ack.ack_lsn) {
                    if q.record.lsn > s.last_ack {
                        lag.observe(now.saturating_duration_since(q.committed).as_secs_f64());
                    }
                }
                s.last_ack = s.last_ack.max(Lsn(ack.ack_lsn));
                s.next_send = Lsn(ack.ack_lsn.saturating_add(1));
                s.last_seen = Instant::now();
                if s.state() != SlaveState::Gap {
                    recovered(&mut s, link);
                }
                hub.acked();
                None
            }
            Ok(None) => {
                // No progress at this stage: what was sent counts as delivered.
                s.last_ack = s.last_ack.max(last);
                s.next_send = last.next();
                s.last_seen = Instant::now();
                if s.state() != SlaveState::Gap {
                    recovered(&mut s, link);
                }
                None
            }
            Err(TransportError::Gap { expected }) if features.bounded_buffer => {
                // The WAL can fill the hole: send from where the slave stands.
                s.last_seen = Instant::now();
                s.next_send = expected;
                if features.progress {
                    s.last_ack = Lsn(expected.0.saturating_sub(1));
                }
                s.last_error = Some(format!("the slave expects LSN {expected} next"));
                None
            }
            Err(e) => {
                m.replication_send_failures.with_label_values(&labels).inc();
                s.retries += 1;
                let backoff = backoff(&hub.config().retry, s.retries);
                if let TransportError::Gap { expected } = &e {
                    // Stages 1 and 2 keep no log to resend from: the slave misses
                    // records for good.
                    s.last_seen = Instant::now();
                    s.next_send = last.next();
                    s.set_state(SlaveState::Gap);
                    s.last_error = Some(format!(
                        "the slave expects LSN {expected} next, which this stage cannot resend; records after it are sent on and refused"
                    ));
                    tracing::warn!(slave = %link.id(), %expected, "slave misses records this stage cannot resend (GAP)");
                } else if features.reliable {
                    m.replication_retries.with_label_values(&labels).inc();
                    s.last_error = Some(e.to_string());
                    if s.state() != SlaveState::Slow {
                        s.set_state(SlaveState::Unreachable);
                    }
                    tracing::debug!(slave = %link.id(), error = %e, ?backoff, "send failed; retrying");
                } else {
                    // Dropped: this stage does not resend, so the slave now misses them.
                    s.next_send = last.next();
                    s.set_state(SlaveState::Gap);
                    s.last_error =
                        Some(format!("sending records {first}..={last} failed and this stage cannot resend them: {e}"));
                    tracing::warn!(slave = %link.id(), %first, %last, error = %e, "send failed; records dropped (GAP)");
                }
                Some(backoff)
            }
        }
    };
    if let Some(delay) = backoff {
        // A plain sleep: neither new commits nor registrations cut a backoff short.
        tokio::time::sleep(delay).await;
    }
}

fn recovered(s: &mut LinkState, link: &SlaveLink) {
    if s.state() != SlaveState::Alive {
        tracing::info!(slave = %link.id(), ack = %s.last_ack, from = s.state().as_str(), "slave caught up: ALIVE");
    }
    s.set_state(SlaveState::Alive);
}

/// Exponential backoff with equal jitter: half of the delay fixed, half random.
fn backoff(retry: &RetryConfig, retries: u64) -> Duration {
    let exp = retry.initial_backoff.saturating_mul(1u32 << retries.min(20).saturating_sub(1) as u32);
    let capped = exp.min(retry.max_backoff);
    let half = capped / 2;
    half + rand::thread_rng().gen_range(Duration::ZERO..=half)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::link::SendBudget;
    use bitark_common::replication::Features;
    use bitark_common::{Command, Epoch};

    /// A link that registered at 0 with records 1..=`last` queued, each `msgs` ids.
    fn link_with(last: u64, msgs: u64) -> LinkState {
        let mut s = LinkState::registered(String::new(), Features::default(), String::new(), Lsn::ZERO);
        let records: Vec<Record> = (1..=last)
            .map(|lsn| Record {
                epoch: Epoch(1),
                lsn: Lsn(lsn),
                time: 0,
                command: Command::MarkBatch { user: lsn, msgs: (0..msgs).collect() },
            })
            .collect();
        s.push(&records, &SendBudget::default(), Instant::now());
        s
    }

    fn lsns(batch: &[Record]) -> Vec<u64> {
        batch.iter().map(|r| r.lsn.0).collect()
    }

    #[test]
    fn a_batch_takes_the_front_of_the_buffer_up_to_the_record_limit() {
        let s = link_with(10, 1);
        assert_eq!(lsns(&take_batch(&s, 4, Lsn(10))), [1, 2, 3, 4]);
        assert_eq!(lsns(&take_batch(&s, 100, Lsn(10))).len(), 10);
    }

    #[test]
    fn a_batch_never_holds_a_record_that_is_not_durable() {
        let s = link_with(10, 1);
        assert_eq!(lsns(&take_batch(&s, 100, Lsn(6))), [1, 2, 3, 4, 5, 6]);
        assert!(take_batch(&s, 100, Lsn::ZERO).is_empty());
    }

    #[test]
    fn a_batch_stops_after_the_record_that_fills_its_bytes() {
        // Each record is about a quarter of a batch's bytes.
        let s = link_with(10, (BATCH_BYTES / 4 / 8) as u64);
        let per_record = s.buffer[0].bytes;
        let batch = take_batch(&s, 100, Lsn(10));
        let fit = BATCH_BYTES.div_ceil(per_record);
        assert_eq!(batch.len(), fit, "records of {per_record} bytes");
        assert!(batch.len() > 1 && batch.len() < 10);
        // One record bigger than a batch still goes, alone.
        let huge = link_with(2, (BATCH_BYTES / 4) as u64);
        assert_eq!(lsns(&take_batch(&huge, 100, Lsn(2))), [1]);
    }

    #[test]
    fn backoff_doubles_from_the_initial_delay_up_to_the_cap_with_half_of_it_random() {
        let retry = RetryConfig { initial_backoff: Duration::from_millis(100), max_backoff: Duration::from_secs(1) };
        for (retries, full) in [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1000), (60, 1000)] {
            let full = Duration::from_millis(full);
            for _ in 0..50 {
                let delay = backoff(&retry, retries);
                assert!(
                    delay >= full / 2 && delay <= full,
                    "retry {retries}: {delay:?} outside {:?}..={full:?}",
                    full / 2
                );
            }
        }
        let spread: std::collections::HashSet<_> = (0..50).map(|_| backoff(&retry, 3)).collect();
        assert!(spread.len() > 1, "the random half varies");
    }
}
