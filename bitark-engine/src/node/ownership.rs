//! Which users this node's group serves: the [`Ownership`] its log last set, checked on
//! every read and write of a user, and the one way to change it, a logged record.
//!
//! The check and the change are ordered by the ownership gate: a write checks under the
//! gate's shared hold and is proposed to the log before the hold ends, and a change of
//! ownership is proposed under the exclusive hold. So every write in the log before an
//! ownership record was admitted under the ownership before it, and none after it under
//! an older one. A node that is not sharded serves every user; a node of a group
//! (`cluster.group`) serves nobody before its log holds an ownership.

use super::Node;
use crate::error::{RangeFrozen, WriteError, WrongShard};
use crate::sharding::ShardView;
use crate::store::Owned;
use bitark_common::{Command, HashRange, Lsn, Ownership};
use prometheus::IntCounter;
use std::sync::{Arc, PoisonError};

/// `bitark_shard_range_requests_total` of each owned range of one ownership.
pub(crate) struct RangeRequests {
    map_version: u64,
    labels: Vec<String>,
    read: Vec<IntCounter>,
    write: Vec<IntCounter>,
}

impl RangeRequests {
    fn count(&self, index: usize, kind: &str) {
        let family = if kind == "write" { &self.write } else { &self.read };
        if let Some(counter) = family.get(index) {
            counter.inc();
        }
    }
}

impl Node {
    /// The ownership the log last set; `None` on a node that is not sharded.
    pub fn ownership(&self) -> Option<Arc<Ownership>> {
        self.inner.state.store.ownership()
    }

    /// Whether this node's group serves `user`; the refusal names the group and map
    /// version otherwise.
    pub fn check_owner(&self, user: u64) -> Result<(), WrongShard> {
        self.served(user, "read").map(|_| ())
    }

    /// Whether this node takes a write of `user`: its group serves the user and the
    /// user's range is not frozen for a move.
    pub(super) fn write_refusal(&self, user: u64) -> Result<(), WriteError> {
        if !self.served(user, "write")? {
            return Ok(());
        }
        let own = self.ownership().expect("a frozen range is one of an ownership");
        let range = own.range_of(user).map(|i| own.ranges[i].0).expect("the user is in the frozen range");
        Err(RangeFrozen { user, group: own.group.clone(), range, map_version: own.map_version }.into())
    }

    /// Whether this node's group serves `user` (counting a refusal under `kind`, `read` or
    /// `write`), and if so whether the user's range is frozen.
    fn served(&self, user: u64, kind: &str) -> Result<bool, WrongShard> {
        match self.inner.state.store.owned(user) {
            // A node of a group (`cluster.group`) serves nobody until its log says what.
            Owned::Unset if self.inner.group.is_none() => return Ok(false),
            Owned::Range { index, map_version, ranges, frozen } => {
                self.count_range_request(index, map_version, ranges, kind);
                return Ok(frozen);
            }
            Owned::Unset | Owned::Outside => {}
        }
        let own = self.ownership();
        let group = own.as_ref().map(|o| o.group.clone()).or_else(|| self.inner.group.clone());
        let group = group.expect("only a sharded node refuses a user");
        let directory = self.inner.shards.get();
        let (owner, owner_master) = match &directory {
            Some(d) => {
                let (group, master) = d.owner_of(user);
                (Some(group.clone()), master.map(str::to_string))
            }
            None => (None, None),
        };
        let map_version = own.map_or(0, |o| o.map_version).max(directory.map_or(0, |d| d.map.version));
        self.inner.state.metrics.shard_wrong_shard.with_label_values(&[kind]).inc();
        Err(WrongShard { user, group, map_version, owner, owner_master })
    }

    /// Counts a `kind` request of a user in the owned range at `index`, making the
    /// counters anew when the ownership changed since they were made.
    fn count_range_request(&self, index: usize, map_version: u64, ranges: usize, kind: &str) {
        let fresh = |c: &&RangeRequests| c.map_version == map_version && c.read.len() == ranges;
        let counters = self.inner.range_requests.load();
        match counters.as_deref().filter(fresh) {
            Some(counters) => counters.count(index, kind),
            None => {
                drop(counters);
                self.make_range_counters();
                if let Some(counters) = self.inner.range_requests.load().as_deref() {
                    counters.count(index, kind);
                }
            }
        }
    }

    /// The counters of the ownership in force; those of ranges no longer owned leave
    /// the family.
    fn make_range_counters(&self) {
        let Some(own) = self.ownership() else { return };
        let family = &self.inner.state.metrics.shard_range_requests;
        let labels: Vec<String> = own.ranges.iter().map(|(r, _)| r.to_string()).collect();
        let made = RangeRequests {
            map_version: own.map_version,
            read: labels.iter().map(|l| family.with_label_values(&[l, "read"])).collect(),
            write: labels.iter().map(|l| family.with_label_values(&[l, "write"])).collect(),
            labels,
        };
        if let Some(before) = self.inner.range_requests.swap(Some(Arc::new(made))) {
            let now = self.inner.range_requests.load();
            let kept = now.as_ref().map_or(&[][..], |c| &c.labels[..]);
            for label in before.labels.iter().filter(|l| !kept.contains(l)) {
                let _ = family.remove_label_values(&[label, "read"]);
                let _ = family.remove_label_values(&[label, "write"]);
            }
        }
    }

    /// Sets the `bitark_shard_*` gauges from the ownership in force.
    pub fn publish_ownership(&self) {
        let m = &self.inner.state.metrics;
        let own = self.ownership();
        let ranges = own.as_ref().map_or(&[][..], |o| &o.ranges[..]);
        m.shard_map_version.set(own.as_ref().map_or(0, |o| o.map_version) as i64);
        m.shard_owned_ranges.set(ranges.len() as i64);
        m.shard_frozen_ranges.set(own.as_ref().map_or(0, |o| o.frozen.len()) as i64);
        m.shard_owned_fraction.set(ranges.iter().map(|(r, _)| r.share()).sum());
    }

    /// Counts the users and marks of each owned range and of those outside them, and
    /// sets the `bitark_shard_range_*` gauges. One walk of the store: blocking.
    pub fn publish_range_counts(&self) {
        let Some(own) = self.ownership() else { return };
        let ranges: Vec<_> = own.ranges.iter().map(|(r, _)| *r).collect();
        let counts = self.inner.state.store.count_by_range(own.partitioner, &ranges);
        let m = &self.inner.state.metrics;
        m.shard_range_users.reset();
        m.shard_range_marks.reset();
        for (range, (users, marks)) in ranges.iter().zip(&counts.ranges) {
            let label = range.to_string();
            m.shard_range_users.with_label_values(&[&label]).set(*users as i64);
            m.shard_range_marks.with_label_values(&[&label]).set(*marks as i64);
        }
        m.shard_unowned_users.set(counts.outside.0 as i64);
    }

    /// What this node knows of the other groups (filled by
    /// [`crate::sharding::follow`] on a sharded node).
    pub fn shard_view(&self) -> &ShardView {
        &self.inner.shards
    }

    /// Logs `ownership` as the ranges this group serves from now on, through the same
    /// write path as a user's write (master only, durable when answered), keeping the
    /// freezes of the ownership in force for the ranges still owned. A map version older
    /// than the one in force is refused as stale, the same one is answered with no new
    /// record.
    pub async fn set_ownership(&self, ownership: Ownership) -> Result<Option<Lsn>, WriteError> {
        let pending = {
            let _gate = self.inner.ownership_gate.write().unwrap_or_else(PoisonError::into_inner);
            let ownership = match self.ownership() {
                Some(now) if now.map_version > ownership.map_version => {
                    return Err(WriteError::StaleOwnership { now: now.map_version, given: ownership.map_version });
                }
                Some(now) => {
                    let ownership = ownership.keeping_frozen(&now);
                    if *now == ownership {
                        return Ok(None);
                    }
                    ownership
                }
                None => ownership,
            };
            self.admit_write()?;
            self.propose(Command::SetOwnership(ownership))?
        };
        self.finish_write(pending).await.map(Some)
    }

    /// Freezes the owned range `range` for a move (`freeze`), or thaws it, by a logged
    /// ownership record made durable under the configured acknowledgement mode, so a
    /// promoted slave keeps the freeze. From the record on, writes to the range are
    /// refused (`range_frozen`) and reads still served. Answers an LSN every write to the
    /// range lies at or below: the record's, or the applied LSN when the range was in that
    /// state already (a retry logs nothing).
    pub async fn freeze_range(&self, range: HashRange, freeze: bool) -> Result<Freeze, WriteError> {
        let mode = self.ack_mode(None);
        let hub = self.admit_acked(mode)?;
        let (pending, frozen) = {
            let _gate = self.inner.ownership_gate.write().unwrap_or_else(PoisonError::into_inner);
            self.admit_write()?;
            let now = self.ownership().ok_or(WriteError::NotSharded)?;
            let refused =
                || WriteError::NotAnOwnedRange { range, group: now.group.clone(), map_version: now.map_version };
            let next = now.with_frozen(range, freeze).ok_or_else(refused)?;
            let frozen = next.frozen.clone();
            let pending = (next != *now).then(|| self.propose(Command::SetOwnership(next))).transpose()?;
            (pending, frozen)
        };
        let logged = pending.is_some();
        let lsn = match pending {
            Some(pending) => self.finish_write(pending).await?,
            None => self.applied_lsn(),
        };
        if let Some(hub) = hub {
            self.confirm_acked(&hub, lsn, mode).await?;
        }
        Ok(Freeze { lsn, logged, frozen })
    }
}

/// What [`Node::freeze_range`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Freeze {
    /// Every write to the range lies at or below it.
    pub lsn: Lsn,
    /// Whether a record was logged (false when the range was in that state already).
    pub logged: bool,
    /// The frozen ranges from now on.
    pub frozen: Vec<HashRange>,
}
