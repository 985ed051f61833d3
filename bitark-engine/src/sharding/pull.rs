//! The destination's side of a move's data: the copy of a range pulled from the source
//! one store shard at a time, then the source's log of the range replayed from before
//! the first copy, each logged here through [`Node::import`].
//!
//! The source is a [`RangeSource`]: the source master over HTTP in a running cluster, or
//! a [`Node`] in the same process. Every answer carries the source's epoch; a change of
//! it means a failover in the source group, whose new master may have cut records this
//! node already applied, so the pull stops and the copy starts again.

use crate::error::{MoveError, WriteError};
use crate::node::{RangeCopy, RangeLog};
use crate::Node;
use bitark_common::{Epoch, HashRange, Lsn};
use std::future::Future;
use std::time::{Duration, Instant};

/// Bytes of the source's log one read of a range's records covers at most.
pub const LOG_READ: usize = 4 << 20;

/// Where a move's data comes from.
pub trait RangeSource {
    /// The users of `range` in store shard `shard`.
    fn copy(&self, range: HashRange, shard: usize) -> impl Future<Output = Result<RangeCopy, PullError>> + Send;
    /// The records of `range`'s users from `from` on.
    fn log(&self, range: HashRange, from: Lsn) -> impl Future<Output = Result<RangeLog, PullError>> + Send;
}

/// Why a pull stopped.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The source refused (its master moved, the range is not its own, its log is gone).
    #[error("the source refused: {0}")]
    Refused(#[from] MoveError),
    /// The source could not be reached or answered something unreadable.
    #[error("the source did not answer: {0}")]
    Unreachable(String),
    /// Logging here failed.
    #[error("this node could not log what the source sent: {0}")]
    Write(#[from] WriteError),
    /// A failover in the source group: the copy starts again.
    #[error("the source's epoch changed from {was} to {now}; the copy starts again")]
    EpochChanged { was: u64, now: u64 },
    /// The pull was told to stop.
    #[error("the pull was stopped")]
    Stopped,
    /// The source did not make `until` safe in time.
    #[error("the source's safe LSN stayed at {safe}, below {until}, for {waited:?}")]
    NotSafe { safe: u64, until: u64, waited: Duration },
}

impl RangeSource for Node {
    async fn copy(&self, range: HashRange, shard: usize) -> Result<RangeCopy, PullError> {
        Ok(self.copy_of_range(range, shard).await?)
    }

    async fn log(&self, range: HashRange, from: Lsn) -> Result<RangeLog, PullError> {
        Ok(self.log_of_range(range, from, LOG_READ).await?)
    }
}

/// A copy of a range, staged on the destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Copied {
    /// The source's epoch for the whole copy.
    pub epoch: Epoch,
    /// Where the source's log is replayed from.
    pub replay_from: Lsn,
    /// Commands logged here.
    pub commands: usize,
}

/// Stages a fresh copy of `range` on `dest`: what it held of the range is dropped, then
/// every store shard's users are copied, while `going` answers true.
pub async fn copy_range(
    dest: &Node,
    source: &impl RangeSource,
    range: HashRange,
    going: impl Fn() -> bool,
) -> Result<Copied, PullError> {
    dest.drop_unowned_range(range).await?;
    let mut epoch = None;
    let (mut oldest, mut commands) = (Lsn(u64::MAX), 0);
    for shard in 0..dest.shard_count() {
        if !going() {
            return Err(PullError::Stopped);
        }
        let copy = source.copy(range, shard).await?;
        same_epoch(&mut epoch, copy.epoch)?;
        oldest = oldest.min(copy.applied);
        commands += copy.commands.len();
        if !copy.commands.is_empty() {
            dest.import(copy.commands).await?;
        }
    }
    let epoch = epoch.expect("a store has shards");
    Ok(Copied { epoch, replay_from: Lsn(oldest.0 + 1), commands })
}

/// What one read of the source's log brought.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaughtUp {
    /// Where the next read starts.
    pub next: Lsn,
    /// The source's safe LSN at the read.
    pub safe: Lsn,
    /// Commands logged here.
    pub commands: usize,
}

/// Replays one read of the source's log of `range` from `from`.
pub async fn catch_up(
    dest: &Node,
    source: &impl RangeSource,
    range: HashRange,
    epoch: Epoch,
    from: Lsn,
) -> Result<CaughtUp, PullError> {
    let log = source.log(range, from).await?;
    same_epoch(&mut Some(epoch), log.epoch)?;
    let commands = log.commands.len();
    if commands > 0 {
        dest.import(log.commands).await?;
    }
    Ok(CaughtUp { next: log.next, safe: log.safe, commands })
}

/// Replays the source's log of `range` from `from` through `until` (a freeze point),
/// waiting up to `patience` for the source to make it safe. Answers where the next read
/// would start.
pub async fn drain_to(
    dest: &Node,
    source: &impl RangeSource,
    range: HashRange,
    epoch: Epoch,
    from: Lsn,
    until: Lsn,
    patience: Duration,
) -> Result<Lsn, PullError> {
    let started = Instant::now();
    let mut next = from;
    while next <= until {
        let read = catch_up(dest, source, range, epoch, next).await?;
        if read.next == next {
            if started.elapsed() >= patience {
                return Err(PullError::NotSafe { safe: read.safe.0, until: until.0, waited: patience });
            }
            // The source's slaves have not confirmed `until` yet: look again shortly.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        next = read.next;
    }
    Ok(next)
}

fn same_epoch(seen: &mut Option<Epoch>, now: Epoch) -> Result<(), PullError> {
    match *seen {
        Some(was) if was != now => Err(PullError::EpochChanged { was: was.0, now: now.0 }),
        _ => {
            *seen = Some(now);
            Ok(())
        }
    }
}
