//! A group's part in moving a range of users to another group.
//!
//! The source's master answers for a range it owns: a copy of the range's users one
//! store shard at a time, each with the applied LSN before it was read, and the log's
//! records of the range's users from an LSN on, no further than what its acknowledgement
//! mode has made safe from a failover. The destination logs both through [`Node::import`]
//! for users it does not own yet: they are in its log (so its slaves hold them) and in its
//! store, but a read of them is refused (`wrong_shard`) until its ownership says the
//! range is its own. Replaying the log from before the first copy over the copies gives
//! the range's state, as each record sets its (user, message) pairs whatever they held.

use super::Node;
use crate::config::AckMode;
use crate::error::{MoveError, WriteError};
use crate::store::Owned;
use bitark_common::{Command, Epoch, HashRange, Lsn, Partitioner};
use bitark_infra::wal::{CursorRead, WalCursor};
use std::sync::PoisonError;

/// The users of one store shard in a range, as [`crate::ReadStore::copy_of_shard`] gives
/// them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeCopy {
    /// The source's epoch: a copy and a log of different epochs do not go together.
    pub epoch: Epoch,
    /// The source's applied LSN before the shard was read: the log after it, replayed
    /// over the copy, gives the range's state.
    pub applied: Lsn,
    pub commands: Vec<Command>,
}

/// Records of a range's users from the source's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeLog {
    pub epoch: Epoch,
    /// The range's commands, in log order.
    pub commands: Vec<Command>,
    /// Where the next read starts: past every record read, of the range or not.
    pub next: Lsn,
    /// The highest LSN the source answers now: durable here and, under `semi` or
    /// `all`, held by the slaves the mode needs.
    pub safe: Lsn,
}

impl Node {
    /// Shards of the store: a copy of a range is taken one at a time.
    pub fn shard_count(&self) -> usize {
        self.inner.state.store.shard_count()
    }

    /// Digest of the users in `range` (by the ownership's partitioner, or the default
    /// one): equal on the source and the destination of a move once it has drained.
    pub fn digest_of_range(&self, range: HashRange) -> crate::StoreDigest {
        let partitioner = self.ownership().map_or(Partitioner::default(), |o| o.partitioner);
        self.inner.state.store.digest_of_range(partitioner, range)
    }

    /// The copy of the users in `range` (inside one owned range) held in store shard
    /// `shard`. Master only. One walk of the shard: blocking work, off the runtime.
    pub async fn copy_of_range(&self, range: HashRange, shard: usize) -> Result<RangeCopy, MoveError> {
        let partitioner = self.source_of(range)?;
        let count = self.inner.state.store.shard_count();
        if shard >= count {
            return Err(MoveError::BadShard { shard, count });
        }
        let epoch = self.epoch();
        let applied = self.applied_lsn();
        let node = self.clone();
        let commands =
            tokio::task::spawn_blocking(move || node.inner.state.store.copy_of_shard(shard, partitioner, range))
                .await
                .map_err(|e| MoveError::Storage(e.to_string()))?;
        Ok(RangeCopy { epoch, applied, commands })
    }

    /// The records of `range`'s users from `from` on, about `max_bytes` of log read at
    /// most, none above [`RangeLog::safe`]. Master only.
    pub async fn log_of_range(&self, range: HashRange, from: Lsn, max_bytes: usize) -> Result<RangeLog, MoveError> {
        let partitioner = self.source_of(range)?;
        let (epoch, safe) = (self.epoch(), self.safe_for_moves());
        let mut cursor = WalCursor::new(&self.config().node.dir().wal(), from);
        let read = tokio::task::spawn_blocking(move || {
            let read = cursor.read(usize::MAX, max_bytes, safe);
            (cursor.next_lsn(), read)
        })
        .await
        .map_err(|e| MoveError::Storage(e.to_string()))?;
        let records = match read.1.map_err(|e| MoveError::Storage(e.to_string()))? {
            CursorRead::Records(records) => records,
            CursorRead::Purged { oldest } => return Err(MoveError::Purged { needed: from.0, oldest: oldest.0 }),
        };
        let in_range = |c: &Command| c.user().is_some_and(|u| range.contains(partitioner.hash(u)));
        let commands = records.into_iter().map(|r| r.command).filter(in_range).collect();
        Ok(RangeLog { epoch, commands, next: read.0, safe })
    }

    /// The partitioner of the ownership in force, when this node is a master that owns
    /// all of `range`.
    fn source_of(&self, range: HashRange) -> Result<Partitioner, MoveError> {
        if self.is_slave() {
            return Err(MoveError::NotMaster { master_url: self.master_url() });
        }
        let own = self.ownership().ok_or(MoveError::NotOwned { range })?;
        let inside = own.ranges.iter().any(|(r, _)| r.start <= range.start && range.end <= r.end);
        inside.then_some(own.partitioner).ok_or(MoveError::NotOwned { range })
    }

    /// The highest LSN no failover within the acknowledgement mode takes back.
    fn safe_for_moves(&self) -> Lsn {
        let durable = self.durable_lsn();
        match (self.ack_mode(None), self.hub()) {
            (AckMode::Async, _) | (_, None) => durable,
            (mode, Some(hub)) => durable.min(hub.held_by_slaves(mode)),
        }
    }

    /// Logs a move's `commands` (a copy or the source's log) for users this group does
    /// not own yet, in order, and answers the last one's LSN once every one is durable.
    /// A user the group owns refuses the whole batch before anything is logged.
    pub async fn import(&self, commands: Vec<Command>) -> Result<Option<Lsn>, WriteError> {
        self.admit_write()?;
        let group = self.inner.group.clone().ok_or(WriteError::NotSharded)?;
        // Not held to the limits of a client's request: a copy's batches and runs are
        // as long as the source's sets, which its own limits let through.
        for command in &commands {
            self.inner.memory.admit(command)?;
        }
        let mut pending = Vec::with_capacity(commands.len());
        {
            let _gate = self.inner.ownership_gate.read().unwrap_or_else(PoisonError::into_inner);
            for command in &commands {
                let user = command.user().ok_or(WriteError::NotSharded)?;
                if let Owned::Range { .. } = self.inner.state.store.owned(user) {
                    return Err(WriteError::ImportOwned { user, group });
                }
            }
            for command in commands {
                pending.push(self.propose(command)?);
            }
        }
        let mut last = None;
        for write in pending {
            last = Some(self.finish_write(write).await?);
        }
        Ok(last)
    }

    /// Logs the removal of every user in `range`, which must not overlap a range this
    /// group owns: a destination's staged copy of a move that starts again, or the
    /// source's copy once the range is another group's.
    pub async fn drop_unowned_range(&self, range: HashRange) -> Result<Lsn, WriteError> {
        let pending = {
            let _gate = self.inner.ownership_gate.write().unwrap_or_else(PoisonError::into_inner);
            self.admit_write()?;
            let group = self.inner.group.clone().ok_or(WriteError::NotSharded)?;
            let own = self.ownership();
            if own.as_ref().is_some_and(|o| o.ranges.iter().any(|(r, _)| r.overlaps(&range))) {
                return Err(WriteError::OwnedRange { range, group });
            }
            let partitioner = own.map_or(Partitioner::default(), |o| o.partitioner);
            self.propose(Command::DropRange { partitioner, range })?
        };
        self.finish_write(pending).await
    }
}
