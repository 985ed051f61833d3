//! The read path: the store's answers, waiting for an LSN, and leader reads.

use super::roles::{READ_LEASED_MASTER, READ_SLAVE};
use super::Node;
use crate::config::AckMode;
use crate::error::{ConsistencyError, InvalidCommand, LeaderReadError};
use crate::replication::ack::AckShortfall;
use crate::store::StoreDigest;
use bitark_common::{Epoch, Lsn};
use std::sync::atomic::Ordering;
use std::time::Instant;

impl Node {
    pub fn is_read(&self, user: u64, msg: u64) -> bool {
        self.inner.state.store.is_read(user, msg)
    }

    pub fn check(&self, user: u64, msgs: &[u64]) -> Vec<bool> {
        self.inner.state.store.check(user, msgs)
    }

    /// Ids in `from..=to` that `user` has not read.
    pub fn unread_count(&self, user: u64, from: u64, to: u64) -> Result<u64, InvalidCommand> {
        self.validate_range(from, to)?;
        Ok((to - from + 1) - self.inner.state.store.count_read(user, from, to))
    }

    pub fn applied_lsn(&self) -> Lsn {
        self.inner.state.applied_lsn()
    }

    pub fn durable_lsn(&self) -> Lsn {
        self.inner.wal.durable_lsn()
    }

    /// Waits until the applied LSN reaches `min`, at most `reads.min-lsn-wait`.
    pub async fn wait_applied(&self, min: Lsn) -> Result<Lsn, ConsistencyError> {
        let mut rx = self.inner.state.applied.subscribe();
        let wait = self.inner.config.load().reads.min_lsn_wait;
        let waiting = &self.inner.state.metrics.reads_waiting_for_lsn;
        waiting.inc();
        let reached = tokio::time::timeout(wait, rx.wait_for(|applied| *applied >= min)).await;
        waiting.dec();
        let (requested, applied, waited_ms) = (min.0, self.applied_lsn().0, wait.as_millis() as u64);
        match reached {
            Ok(Ok(applied)) => Ok(*applied),
            _ if self.is_slave() => {
                Err(ConsistencyError::SlaveBehind { requested, applied, waited_ms, master_url: self.master_url() })
            }
            _ => Err(ConsistencyError::NotYetWritten { requested, applied, waited_ms }),
        }
    }

    /// Waits, at most `reads.min-lsn-wait`, until this node knows `epoch`.
    pub async fn wait_epoch(&self, epoch: Epoch) {
        let deadline = Instant::now() + self.inner.config.load().reads.min_lsn_wait;
        let mut applied = self.inner.state.applied.subscribe();
        while self.epoch() < epoch && Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            // The history changes at a registration; look again at least every 50 ms.
            let _ = tokio::time::timeout(left.min(std::time::Duration::from_millis(50)), applied.changed()).await;
        }
    }

    /// Order-independent digest of every (user, message) pair held.
    pub fn digest(&self) -> StoreDigest {
        self.inner.state.store.digest()
    }

    pub fn user_count(&self) -> u64 {
        self.inner.state.store.user_count()
    }

    pub fn mark_count(&self) -> u64 {
        self.inner.state.store.mark_count()
    }

    /// Whether a read that names no consistency is a leader read here: on a master under
    /// failover it is (`consistency=leader`), elsewhere it is a local one.
    pub fn leader_reads_by_default(&self) -> bool {
        self.inner.read_role.load(Ordering::Acquire) == READ_LEASED_MASTER
    }

    /// Whether what this node answered from its state just before this call may be
    /// answered as a leader read: it is the master, not fenced by a newer epoch, and under
    /// failover its leader lease still holds. The lease ends a quarter of its TTL before
    /// etcd could let it expire, as the writer's fencing does, so no newer master can
    /// have been elected while it holds; this assumes the clocks of this node and etcd
    /// run at rates within 25% of each other over one TTL, not that they agree.
    pub fn check_leader_read(&self) -> Result<(), LeaderReadError> {
        let role = self.inner.read_role.load(Ordering::Acquire);
        if role == READ_SLAVE || self.is_fenced() {
            let epochs = self.epochs();
            let epoch = epochs.highest().0;
            let master_url = if role == READ_SLAVE { self.role().master_url } else { epochs.seen_master_url };
            return Err(LeaderReadError::NotLeader { epoch, master_url: Some(master_url).filter(|u| !u.is_empty()) });
        }
        if role == READ_LEASED_MASTER && self.lease_lapsed() {
            return Err(LeaderReadError::LeaseLapsed);
        }
        Ok(())
    }

    /// Waits until the state up to `lsn`, which a read has seen, can no longer be taken
    /// back by a failover: the slaves `semi` needs hold it durably and, under failover,
    /// etcd holds it as the floor no new master may lack (one record shared by the writes
    /// and reads waiting at that moment). A master without replication has nothing to
    /// wait for. What `consistency=linearizable` reads wait for.
    pub async fn wait_committed(&self, lsn: Lsn) -> Result<(), LeaderReadError> {
        let failover = self.inner.config.load().failover();
        if failover && *self.inner.floor_recorded.borrow() >= lsn.0 {
            return Ok(());
        }
        let uncommitted = |why: String| LeaderReadError::Uncommitted { lsn: lsn.0, why };
        if let Some(hub) = self.hub() {
            match hub.wait_for_acks(lsn, AckMode::Semi).await {
                Ok(_) => {}
                Err(AckShortfall::TimedOut(count)) => {
                    return Err(uncommitted(format!(
                        "{} of the {} slaves needed confirmed it within replication.ack-timeout",
                        count.acked, count.required
                    )))
                }
                Err(AckShortfall::NotEnoughReplicas { alive, required }) => {
                    return Err(uncommitted(format!("{alive} slaves are ALIVE, {required} needed")))
                }
            }
        }
        if failover && !self.floor_recorded_in_time(lsn).await {
            return Err(uncommitted("it could not be recorded in etcd before the leader lease lapsed".into()));
        }
        Ok(())
    }
}
