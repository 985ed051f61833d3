//! A destination's incoming moves: for each range it is given, a task on its master that
//! stages a copy from the source's master and then replays the source's log of the range,
//! restarting the copy when the source fails over, until the move's cutover drains it to
//! the freeze point or the move stops.

use super::pull::{catch_up, copy_range, PullError, RangeSource};
use crate::config::AckMode;
use crate::error::WriteError;
use crate::node::{RangeCopy, RangeLog};
use crate::Node;
use bitark_common::{Epoch, HashRange, Lsn};
use bitark_infra::replication::moves::{MoveClient, SourceAnswer};
use bitark_infra::replication::TransportError;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::incoming_state::Incoming;
pub use super::incoming_state::IncomingStatus;
use std::time::Duration;
use tokio::sync::watch;

/// A source master over HTTP.
pub struct HttpSource {
    pub client: MoveClient,
    pub url: String,
}

fn transport(e: TransportError) -> PullError {
    PullError::Unreachable(e.to_string())
}

impl RangeSource for HttpSource {
    async fn copy(&self, range: HashRange, shard: usize) -> Result<RangeCopy, PullError> {
        let SourceAnswer { epoch, commands, lsn, .. } =
            self.client.copy(&self.url, range, shard).await.map_err(transport)?;
        Ok(RangeCopy { epoch: Epoch(epoch), applied: lsn, commands })
    }

    async fn log(&self, range: HashRange, from: Lsn) -> Result<RangeLog, PullError> {
        let SourceAnswer { epoch, commands, lsn, safe } =
            self.client.log(&self.url, range, from).await.map_err(transport)?;
        Ok(RangeLog { epoch: Epoch(epoch), commands, next: lsn, safe })
    }
}

/// Why a drain did not finish.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("no incoming move of {0} runs on this node")]
    Unknown(HashRange),
    #[error("the move of {range} replayed the source's log only to LSN {next} of the {until} asked within {waited:?}")]
    Behind { range: HashRange, next: u64, until: u64, waited: Duration },
    #[error(transparent)]
    Write(#[from] WriteError),
}

impl Node {
    /// Starts staging `range` from the source master at `source` (a repeat for the same
    /// range and source is answered as it is). The range must not overlap one this group
    /// owns; master only.
    pub fn start_incoming(&self, range: HashRange, source: String, client: MoveClient) -> Result<(), WriteError> {
        self.admit_write()?;
        let group = self.inner.group.clone().ok_or(WriteError::NotSharded)?;
        if self.ownership().is_some_and(|o| o.ranges.iter().any(|(r, _)| r.overlaps(&range))) {
            return Err(WriteError::OwnedRange { range, group });
        }
        let mut moves = self.inner.incoming.moves.lock().unwrap_or_else(PoisonError::into_inner);
        if moves.get(&range).is_some_and(|m| !m.stop.load(Ordering::Acquire) && m.status_source() == source) {
            return Ok(());
        }
        if let Some(before) = moves.remove(&range) {
            before.stop.store(true, Ordering::Release);
        }
        let status = IncomingStatus {
            range: range.to_string(),
            source: source.clone(),
            phase: "copy".into(),
            ..Default::default()
        };
        let incoming =
            Arc::new(Incoming { status: Mutex::new(status), stop: AtomicBool::new(false), next: watch::channel(0).0 });
        moves.insert(range, incoming.clone());
        tokio::spawn(run(self.clone(), range, HttpSource { client, url: source }, incoming));
        Ok(())
    }

    /// Where each incoming move stands.
    pub fn incoming(&self) -> Vec<IncomingStatus> {
        let moves = self.inner.incoming.moves.lock().unwrap_or_else(PoisonError::into_inner);
        let mut all: Vec<IncomingStatus> =
            moves.values().map(|m| m.status.lock().unwrap_or_else(PoisonError::into_inner).clone()).collect();
        all.sort_by(|a, b| a.range.cmp(&b.range));
        all
    }

    /// Stops the incoming move of `range`; what it staged stays until dropped.
    pub fn stop_incoming(&self, range: HashRange) -> bool {
        let stopped = self.inner.incoming.moves.lock().unwrap_or_else(PoisonError::into_inner).remove(&range);
        if let Some(m) = &stopped {
            m.stop.store(true, Ordering::Release);
            m.update(|s| s.phase = "stopped".into());
        }
        stopped.is_some()
    }

    /// Waits until the incoming move of `range` has replayed the source's log through
    /// `until` (the source's freeze point), for up to `wait`, and then until this
    /// group's acknowledgement mode holds it. Answers this node's LSN that covers it.
    pub async fn drain_incoming(&self, range: HashRange, until: Lsn, wait: Duration) -> Result<Lsn, DrainError> {
        let incoming = self.inner.incoming.moves.lock().unwrap_or_else(PoisonError::into_inner).get(&range).cloned();
        let incoming = incoming.ok_or(DrainError::Unknown(range))?;
        let mut next = incoming.next.subscribe();
        let reached = matches!(tokio::time::timeout(wait, next.wait_for(|n| *n > until.0)).await, Ok(Ok(_)));
        if !reached {
            let next = *incoming.next.borrow();
            return Err(DrainError::Behind { range, next, until: until.0, waited: wait });
        }
        // Drained to the freeze point: the task ends here, so that nothing it does once
        // the source gives the range up (a refusal, a new copy) can touch what it staged.
        incoming.stop.store(true, Ordering::Release);
        incoming.update(|s| s.phase = "drained".into());
        let lsn = self.applied_lsn();
        let mode = self.ack_mode(None);
        if let Some(hub) = self.hub().filter(|_| mode != AckMode::Async) {
            self.confirm_acked(&hub, lsn, mode).await?;
        }
        Ok(lsn)
    }
}

/// Pause between reads of the source's log that brought nothing.
const IDLE: Duration = Duration::from_millis(2);
/// Pause before a copy or read that failed is tried again.
const RETRY: Duration = Duration::from_millis(200);

async fn run(node: Node, range: HashRange, source: HttpSource, incoming: Arc<Incoming>) {
    let stopped = || incoming.stop.load(Ordering::Acquire);
    while !stopped() {
        incoming.update(|s| s.phase = "copy".into());
        let copied = match copy_range(&node, &source, range, || !stopped()).await {
            Ok(copied) => copied,
            Err(PullError::Stopped) => return,
            Err(e) => {
                tracing::warn!(%range, error = %e, "a move's copy failed; starting it again");
                incoming.update(|s| (s.error, s.restarts) = (Some(e.to_string()), s.restarts + 1));
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        incoming.update(|s| {
            (s.phase, s.copied, s.next_lsn, s.error) =
                ("catch-up".into(), copied.commands as u64, copied.replay_from.0, None)
        });
        let mut next = copied.replay_from;
        while !stopped() {
            match catch_up(&node, &source, range, copied.epoch, next).await {
                Ok(read) => {
                    incoming.update(|s| {
                        (s.replayed, s.next_lsn, s.safe_lsn) =
                            (s.replayed + read.commands as u64, read.next.0, read.safe.0)
                    });
                    incoming.next.send_replace(read.next.0);
                    if read.next == next {
                        tokio::time::sleep(IDLE).await;
                    }
                    next = read.next;
                }
                Err(e @ (PullError::EpochChanged { .. } | PullError::Refused(_))) => {
                    tracing::warn!(%range, error = %e, "a move's replay stopped; starting the copy again");
                    incoming.update(|s| (s.error, s.restarts) = (Some(e.to_string()), s.restarts + 1));
                    incoming.next.send_replace(0);
                    break;
                }
                Err(e) => {
                    incoming.update(|s| s.error = Some(e.to_string()));
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }
}
