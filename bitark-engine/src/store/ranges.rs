//! The store by hash range: counts per range, a range's users as commands (what a move
//! copies), a range's digest, and the removal of a range's users.

use super::digest::DigestSum;
use super::keys::{Slot, SHARDS};
use super::{RangeCounts, ReadStore, StoreDigest};
use bitark_common::{Command, HashRange, Partitioner};

/// Ids of one [`Command::MarkBatch`] a range's copy holds at most.
pub const COPY_BATCH: usize = 4096;
/// Consecutive ids from which a copy writes a [`Command::MarkRange`] instead.
const COPY_RUN: u64 = 16;

impl ReadStore {
    /// Users and marks in each of `ranges` (sorted, by `partitioner`'s hash), and those
    /// of users in none of them, one shard at a time.
    pub fn count_by_range(&self, partitioner: Partitioner, ranges: &[HashRange]) -> RangeCounts {
        let mut counts = RangeCounts { ranges: vec![(0, 0); ranges.len()], outside: (0, 0) };
        for shard in 0..SHARDS {
            self.walk_shard(shard, |user, set| {
                let hash = partitioner.hash(user);
                let i = ranges.partition_point(|r| r.start <= hash);
                let slot = match i.checked_sub(1).filter(|&i| ranges[i].contains(hash)) {
                    Some(i) => &mut counts.ranges[i],
                    None => &mut counts.outside,
                };
                slot.0 += 1;
                slot.1 += set.len();
            });
        }
        counts
    }

    /// The users of `shard` in `range` as commands that rebuild their sets on an empty
    /// store: runs of consecutive ids as [`Command::MarkRange`], the rest in
    /// [`Command::MarkBatch`]es of at most [`COPY_BATCH`] ids. Each user is read under
    /// its shard's lock, so each set is one that was there.
    pub fn copy_of_shard(&self, shard: usize, partitioner: Partitioner, range: HashRange) -> Vec<Command> {
        let mut out = Vec::new();
        self.walk_shard(shard, |user, set| {
            if !range.contains(partitioner.hash(user)) {
                return;
            }
            let mut batch = Vec::new();
            let mut ids = set.iter().peekable();
            while let Some(first) = ids.next() {
                let mut last = first;
                while ids.peek() == Some(&(last.wrapping_add(1))) && last != u64::MAX {
                    last = ids.next().expect("peeked");
                }
                if last - first + 1 >= COPY_RUN {
                    out.push(Command::MarkRange { user, from: first, to: last });
                    continue;
                }
                for id in first..=last {
                    batch.push(id);
                    if batch.len() == COPY_BATCH {
                        out.push(Command::MarkBatch { user, msgs: std::mem::take(&mut batch) });
                    }
                }
            }
            if !batch.is_empty() {
                out.push(Command::MarkBatch { user, msgs: batch });
            }
        });
        out
    }

    /// Digest of the users in `range`, taken one shard at a time: exact when no write
    /// runs concurrently; equal on two nodes holding the same users of the range.
    pub fn digest_of_range(&self, partitioner: Partitioner, range: HashRange) -> StoreDigest {
        let mut digest = DigestSum::default();
        for shard in 0..SHARDS {
            self.walk_shard(shard, |user, set| {
                if range.contains(partitioner.hash(user)) {
                    digest.add(user, set);
                }
            });
        }
        digest.finish()
    }

    /// Removes every user in `range` from the shards `shards` accepts (all of them when
    /// the log applies a [`Command::DropRange`]; a replaying worker its own). Answers
    /// the users and marks removed.
    pub fn drop_range(&self, partitioner: Partitioner, range: HashRange, shards: impl Fn(usize) -> bool) -> (u64, u64) {
        let (mut users, mut marks) = (0, 0);
        for shard in (0..SHARDS).filter(|s| shards(*s)) {
            let doomed: Vec<u64> =
                self.users_in_shard(shard).into_iter().filter(|u| range.contains(partitioner.hash(*u))).collect();
            if doomed.is_empty() {
                continue;
            }
            let mut guard = self.write(shard);
            for user in doomed {
                let delta = guard.remove_user(Slot::of(user), user);
                users += delta.users.unsigned_abs();
                marks += delta.removed;
                self.account(&mut guard, delta);
            }
        }
        (users, marks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range_of_half(upper: bool) -> HashRange {
        if upper {
            HashRange { start: 1 << 63, end: 1 << 64 }
        } else {
            HashRange { start: 0, end: 1 << 63 }
        }
    }

    #[test]
    fn a_copy_rebuilds_the_range_and_a_drop_removes_only_it() {
        let p = Partitioner::SplitMix64;
        let store = ReadStore::new();
        for user in 1..400u64 {
            store.apply(&Command::MarkBatch { user, msgs: (0..user % 23).map(|i| i * 3 + user).collect() });
        }
        store.apply(&Command::MarkRange { user: 1, from: 1000, to: 20_000 });
        store.apply(&Command::MarkRange { user: 2, from: u64::MAX - 40, to: u64::MAX });
        store.apply(&Command::MarkBatch { user: 2, msgs: (0..9000).map(|i| i * 2).collect() });
        let upper = range_of_half(true);
        assert!(upper.contains(p.hash(1)) && upper.contains(p.hash(2)), "users 1 and 2 hash to the upper half");

        let copy = ReadStore::new();
        let mut commands = 0;
        for shard in 0..store.shard_count() {
            for command in store.copy_of_shard(shard, p, upper) {
                if let Command::MarkBatch { msgs, .. } = &command {
                    assert!(msgs.len() <= COPY_BATCH);
                }
                copy.apply(&command);
                commands += 1;
            }
        }
        assert!(commands > 0);
        assert_eq!(copy.digest_of_range(p, upper), store.digest_of_range(p, upper));
        assert_eq!(copy.digest(), copy.digest_of_range(p, upper), "nothing outside the range was copied");
        assert_eq!(copy.digest_of_range(p, range_of_half(false)).users, 0);

        let lower = store.digest_of_range(p, range_of_half(false));
        let (users, marks) = store.drop_range(p, upper, |_| true);
        assert_eq!((users, marks), (copy.user_count(), copy.mark_count()));
        assert_eq!(store.digest_of_range(p, upper).users, 0);
        assert_eq!(store.digest_of_range(p, range_of_half(false)), lower, "the other half is untouched");
        assert_eq!(store.user_count(), lower.users);
        assert_eq!(store.mark_count(), lower.marks);
    }
}
