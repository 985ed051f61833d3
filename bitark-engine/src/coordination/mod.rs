//! Automatic failover through etcd (`replication.features.failover`): the policy.
//!
//! Keys, under `coordination.etcd.prefix` (a sharded node's under
//! `<prefix>/groups/<cluster.group>`, see [`group_keys`]):
//! - `<prefix>/members/<node id>`: every node's [`Member`] record (its URL, epoch and
//!   durable LSN), refreshed every quarter of the lease TTL, attached to the node's
//!   lease: a node that stops renewing drops out.
//! - `<prefix>/leader`: the master's [`Leader`] record, attached to the master's lease.
//! - `<prefix>/acked`: the newest write a master answers under `semi`/`all`, recorded
//!   before the answer goes out: a node that does not hold it does not campaign.
//! - `<prefix>/epoch`: the epoch counter. A campaign is one transaction: the leader key
//!   must be absent and the counter unchanged since it was read; it sets both. Two
//!   masters can therefore never share an epoch.
//!
//! A master takes writes only until its last renewal's send time plus three quarters of
//! the TTL (fence by time, in the WAL writer): it has stopped before etcd can let the
//! lease expire and another node campaign. When the leader key is gone, the most
//! advanced eligible member (highest epoch, then highest durable LSN, then lowest node
//! id) campaigns, once every member has published after the vacancy began (or a TTL has
//! passed); the others follow the winner, seen through a watch on the leader key.

use crate::config::{CoordinationConfig, Role};
use crate::error::RoleError;
use crate::node::Node;
use bitark_common::{Epoch, Lsn};
use bitark_infra::etcd::{Etcd, EtcdError, Expect, KeyValue, Lease};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub mod status;

pub use status::{AckedFloor, CoordinationStatus, Leader, Member};

/// How the coordination changes the node's role: the adapter's role switch.
pub trait RoleSwitch: Send + Sync + 'static {
    /// Become master in `epoch` (this node won the election).
    fn promote(&self, epoch: Epoch) -> impl Future<Output = Result<(), RoleError>> + Send;
    /// Follow the master at `url` (stepping down first when master).
    fn follow(&self, url: String) -> impl Future<Output = Result<(), RoleError>> + Send;
    /// Stop being master without a known successor: no hub, no follower, no writes.
    fn stand_by(&self) -> impl Future<Output = ()> + Send;
}

/// The order of candidates: highest epoch, then highest durable LSN, then lowest id.
pub fn best_candidate(members: &[Member]) -> Option<&Member> {
    members
        .iter()
        .filter(|m| m.eligible)
        .max_by(|a, b| (a.epoch, a.durable_lsn).cmp(&(b.epoch, b.durable_lsn)).then_with(|| b.node_id.cmp(&a.node_id)))
}

/// The election and lease loop of one node.
pub struct Coordinator {
    node: Node,
    etcd: Etcd,
    config: CoordinationConfig,
    self_url: String,
    status: Arc<Mutex<CoordinationStatus>>,
}

struct Keys {
    leader: String,
    epoch: String,
    acked: String,
    members: String,
    me: String,
}

/// Where the loop stands between ticks.
#[derive(Default)]
struct Standing {
    lease: Option<Lease>,
    renewed_at: Option<Instant>,
    /// The epoch this node leads, when it holds the leader key.
    leading: Option<u64>,
    /// Since when, and from which etcd revision on, no leader is known.
    vacancy: Option<(i64, Instant)>,
    etcd_up: bool,
    /// The floor last published, as master.
    published_floor: u64,
}

impl Coordinator {
    pub fn new(node: Node, self_url: String) -> Result<Coordinator, EtcdError> {
        let config = node.config().coordination.clone();
        let etcd = Etcd::connect(&config.etcd.endpoints, config.etcd.timeout)?;
        Ok(Coordinator { node, etcd, config, self_url, status: Arc::default() })
    }

    /// The status `/actuator/replication` shows; updated as the loop runs.
    pub fn status(&self) -> Arc<Mutex<CoordinationStatus>> {
        self.status.clone()
    }

    fn keys(&self) -> Keys {
        let prefix = group_keys(&self.config.etcd.prefix, &self.node.config().cluster);
        Keys {
            leader: format!("{prefix}/leader"),
            epoch: format!("{prefix}/epoch"),
            acked: format!("{prefix}/acked"),
            members: format!("{prefix}/members/"),
            me: format!("{prefix}/members/{}", self.node.config().node.id),
        }
    }

    fn tick(&self) -> Duration {
        self.config.lease_ttl / 4
    }

    /// Runs until the process ends.
    pub async fn run(self, roles: impl RoleSwitch) {
        let keys = self.keys();
        let mut at = Standing::default();
        let mut changes: Option<mpsc::Receiver<()>> = None;
        tracing::info!(
            endpoints = ?self.config.etcd.endpoints, prefix = %self.config.etcd.prefix,
            lease_ttl = ?self.config.lease_ttl, "failover on: roles come from the election in etcd"
        );
        let mut was_up = true;
        loop {
            let result = self.step(&keys, &mut at, &roles).await;
            match (&result, was_up) {
                (Err(e), true) => tracing::warn!(error = %e, leading = at.leading.is_some(), "etcd does not answer"),
                (Ok(()), false) => tracing::info!("etcd answers again"),
                _ => {}
            }
            was_up = result.is_ok();
            self.report(&at, result.as_ref().err());
            if changes.as_ref().is_none_or(|c| c.is_closed()) {
                changes = self.etcd.watch_prefix(&keys.leader).await.ok();
            }
            let wait = tokio::time::sleep(self.tick());
            tokio::pin!(wait);
            loop {
                let changed = async {
                    match changes.as_mut() {
                        Some(rx) => {
                            rx.recv().await;
                        }
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = &mut wait => break,
                    _ = changed => break,
                    // A semi/all write waits for its floor: record it now, between steps.
                    _ = self.node.floor_wanted() => {
                        if let (Some(epoch), Some(lease)) = (at.leading, at.lease) {
                            if let Err(e) = self.publish_floor(&keys, &mut at, epoch, lease.id).await {
                                tracing::warn!(error = %e, "cannot record the acknowledged floor in etcd");
                            }
                        }
                    }
                }
            }
        }
    }

    fn report(&self, at: &Standing, error: Option<&EtcdError>) {
        let metrics = &self.node.metrics();
        metrics.coordination_etcd_up.set(i64::from(at.etcd_up));
        // Leading only while the lease holds: a master cut off from etcd still thinks it
        // holds the key, but takes no writes.
        let leading = at.leading.is_some() && !self.node.lease_lapsed();
        metrics.coordination_leader.set(i64::from(leading));
        let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        status.leading = leading;
        status.etcd_reachable = at.etcd_up;
        status.renewed_at = at.renewed_at;
        status.lease_ttl_seconds = at.lease.map_or(0, |l| l.ttl.as_secs());
        status.last_error = error.map(|e| e.to_string());
    }

    /// The time until which this node may take writes, from a renewal sent at `sent`.
    fn deadline(&self, sent: Instant, lease: Lease) -> Instant {
        let ttl = lease.ttl.max(self.config.lease_ttl);
        sent + ttl - ttl / 4
    }

    async fn step(&self, keys: &Keys, at: &mut Standing, roles: &impl RoleSwitch) -> Result<(), EtcdError> {
        at.etcd_up = false;
        let metrics = self.node.metrics();
        // 1. The lease: renewed every tick; its renewal extends a master's writes.
        let sent = Instant::now();
        let lease = match at.lease {
            None => {
                let lease = self.etcd.grant(self.config.lease_ttl).await?;
                tracing::info!(lease = lease.id, ttl = ?lease.ttl, "holding a lease in etcd");
                at.lease = Some(lease);
                lease
            }
            Some(lease) => match self.etcd.keep_alive(lease.id).await {
                Ok(Some(_)) => lease,
                Ok(None) => {
                    metrics.coordination_lease_renewals.with_label_values(&["expired"]).inc();
                    tracing::warn!(lease = lease.id, "this node's lease in etcd expired");
                    at.lease = None;
                    at.renewed_at = None;
                    if at.leading.take().is_some() {
                        self.lose_leadership(roles, "its leader lease expired").await;
                    }
                    return Ok(());
                }
                Err(e) => {
                    metrics.coordination_lease_renewals.with_label_values(&["error"]).inc();
                    return Err(e);
                }
            },
        };
        metrics.coordination_lease_renewals.with_label_values(&["ok"]).inc();
        at.renewed_at = Some(sent);
        if at.leading.is_some() {
            self.node.set_lease_deadline(Some(self.deadline(sent, lease)));
        }
        at.etcd_up = true;

        // 2. This node's record, for the next election.
        let me = self.member();
        self.etcd.put(&keys.me, serde_json::to_vec(&me).expect("a member serializes"), lease.id).await?;

        // 3. The leader.
        let (leader, revision) = self.etcd.get(&keys.leader).await?;
        let Some(leader_kv) = leader else {
            if at.leading.take().is_some() {
                self.lose_leadership(roles, "its leader key is gone from etcd").await;
            }
            let (since_revision, since) = *at.vacancy.get_or_insert((revision, Instant::now()));
            return self.maybe_campaign(keys, at, lease, since_revision, since, roles).await;
        };
        at.vacancy = None;
        let Ok(leader) = serde_json::from_slice::<Leader>(&leader_kv.value) else {
            tracing::error!(key = %keys.leader, "the leader key does not hold a leader record; not following it");
            return Ok(());
        };
        self.set_leader(Some(leader.clone()));
        if leader.node_id == self.node.config().node.id {
            if let Some(epoch) = at.leading.filter(|_| leader_kv.lease == lease.id) {
                self.publish_floor(keys, at, epoch, lease.id).await?;
            }
            if leader_kv.lease != lease.id {
                // Left by this node's previous process, which is gone (this one holds the
                // data directory): end its lease so the election can go on.
                tracing::warn!(
                    lease = leader_kv.lease,
                    "the leader key is this node's from before a restart; ending it"
                );
                self.etcd.revoke(leader_kv.lease).await?;
            } else if at.leading.is_none() {
                // The campaign's promotion did not finish: give the key up.
                self.etcd.delete_if_leased(&keys.leader, lease.id).await?;
            }
            return Ok(());
        }
        if at.leading.take().is_some() {
            self.lose_leadership(roles, "another node holds the leader key").await;
        }
        let highest = self.node.epochs().highest().0;
        if leader.epoch < highest {
            tracing::error!(leader = %leader.node_id, epoch = leader.epoch, highest, "etcd names a master of an epoch older than one this node knows; not following it");
            return Ok(());
        }
        let role = self.node.role();
        if role.role == Role::Master || role.master_url != leader.url {
            tracing::info!(master = %leader.node_id, url = %leader.url, epoch = leader.epoch, "following the master etcd names");
            if let Err(e) = roles.follow(leader.url.clone()).await {
                tracing::error!(error = %e, master = %leader.url, "cannot follow the master etcd names");
            }
        }
        Ok(())
    }

    /// As master: records the newest `semi`/`all` write about to be answered, when it
    /// moved, only while this node's lease still holds the leader key (a slow put of a
    /// deposed master cannot lower the floor a newer master set).
    async fn publish_floor(&self, keys: &Keys, at: &mut Standing, epoch: u64, lease: i64) -> Result<(), EtcdError> {
        let lsn = self.node.acked_lsn().0;
        if lsn > at.published_floor {
            let floor = serde_json::to_vec(&AckedFloor { epoch, lsn }).expect("a floor serializes");
            let held = self
                .etcd
                .swap(&[Expect::Lease(keys.leader.clone(), lease)], vec![(keys.acked.clone(), floor, 0)])
                .await?;
            if !held {
                return Ok(());
            }
            at.published_floor = lsn;
        }
        self.node.floor_recorded(Lsn(at.published_floor));
        Ok(())
    }

    fn member(&self) -> Member {
        let node = &self.node;
        Member {
            node_id: node.config().node.id.clone(),
            url: self.self_url.clone(),
            // The epoch of the newest record this node holds, not the newest epoch of a
            // history adopted from a master it has not caught up with.
            epoch: node.epochs().history.epoch_at(node.durable_lsn()).map_or(0, |e| e.0),
            durable_lsn: node.durable_lsn().0,
            eligible: !node.is_replacing(),
        }
    }

    fn set_leader(&self, leader: Option<Leader>) {
        self.status.lock().unwrap_or_else(PoisonError::into_inner).leader = leader;
    }

    async fn lose_leadership(&self, roles: &impl RoleSwitch, why: &str) {
        self.node.set_lease_deadline(Some(Instant::now()));
        self.set_leader(None);
        tracing::error!("LEADERSHIP LOST: {why}; this node takes no more writes");
        roles.stand_by().await;
    }

    /// No leader: the best eligible member campaigns, once the members' records are
    /// fresh (all published after the vacancy began, or a TTL has passed).
    async fn maybe_campaign(
        &self,
        keys: &Keys,
        at: &mut Standing,
        lease: Lease,
        since_revision: i64,
        since: Instant,
        roles: &impl RoleSwitch,
    ) -> Result<(), EtcdError> {
        self.set_leader(None);
        let records = self.etcd.get_prefix(&keys.members).await?;
        let fresh = records.iter().all(|kv| kv.mod_revision > since_revision);
        if !fresh && since.elapsed() < self.config.lease_ttl {
            return Ok(());
        }
        let members: Vec<Member> = records.iter().filter_map(|kv| serde_json::from_slice(&kv.value).ok()).collect();
        let Some(best) = best_candidate(&members) else { return Ok(()) };
        let me = &self.node.config().node.id;
        if best.node_id != *me {
            return Ok(());
        }
        let (floor, _) = self.etcd.get(&keys.acked).await?;
        if let Some(floor) = floor.and_then(|kv| serde_json::from_slice::<AckedFloor>(&kv.value).ok()) {
            if !floor.held_by(best) {
                tracing::error!(
                    ?floor, epoch = best.epoch, durable_lsn = best.durable_lsn,
                    "not campaigning: the last master answered a semi/all write this node does not hold, and no node that holds it is here"
                );
                return Ok(());
            }
        }
        let (counter, _) = self.etcd.get(&keys.epoch).await?;
        let current = counter.as_ref().map_or(Some(0), parse_counter);
        let Some(current) = current else {
            tracing::error!(key = %keys.epoch, "the epoch counter is not a number; no election until an operator fixes it");
            return Ok(());
        };
        let epoch = current.max(self.node.epochs().highest().0) + 1;
        let counter_unchanged = match &counter {
            Some(kv) => Expect::ModRevision(keys.epoch.clone(), kv.mod_revision),
            None => Expect::Absent(keys.epoch.clone()),
        };
        let leader = Leader { node_id: me.clone(), url: self.self_url.clone(), epoch };
        let won = self
            .etcd
            .swap(
                &[Expect::Absent(keys.leader.clone()), counter_unchanged],
                vec![
                    (keys.epoch.clone(), epoch.to_string().into_bytes(), 0),
                    (keys.leader.clone(), serde_json::to_vec(&leader).expect("a leader serializes"), lease.id),
                ],
            )
            .await?;
        let metrics = self.node.metrics();
        if !won {
            metrics.coordination_elections.with_label_values(&["lost"]).inc();
            return Ok(());
        }
        metrics.coordination_elections.with_label_values(&["won"]).inc();
        tracing::warn!(
            epoch,
            durable_lsn = best.durable_lsn,
            "ELECTED: this node holds the leader key of epoch {epoch}"
        );
        // Writes of the new epoch only within the lease.
        let renewed = at.renewed_at.unwrap_or_else(Instant::now);
        self.node.set_lease_deadline(Some(self.deadline(renewed, lease)));
        match roles.promote(Epoch(epoch)).await {
            Ok(()) => {
                at.leading = Some(epoch);
                at.vacancy = None;
                self.set_leader(Some(leader));
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot become master after winning the election; giving the leader key up");
                self.etcd.delete_if_leased(&keys.leader, lease.id).await?;
            }
        }
        Ok(())
    }
}

fn parse_counter(kv: &KeyValue) -> Option<u64> {
    std::str::from_utf8(&kv.value).ok()?.trim().parse().ok()
}

/// Where a node's coordination keys sit: under `prefix`, or under its group's prefix
/// when it is sharded (`cluster.group`).
pub fn group_keys(prefix: &str, cluster: &crate::config::ClusterConfig) -> String {
    match cluster.group_id() {
        Some(group) => crate::sharding::group_prefix(prefix, &group),
        None => prefix.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, epoch: u64, lsn: u64) -> Member {
        Member { node_id: id.into(), url: format!("http://{id}"), epoch, durable_lsn: lsn, eligible: true }
    }

    #[test]
    fn the_most_advanced_member_wins_then_the_lowest_id() {
        let members = vec![member("b", 2, 90), member("c", 2, 100), member("a", 1, 500)];
        assert_eq!(best_candidate(&members).unwrap().node_id, "c", "a newer epoch beats a longer old one");
        let tied = vec![member("b", 2, 100), member("a", 2, 100), member("c", 2, 100)];
        assert_eq!(best_candidate(&tied).unwrap().node_id, "a");
        let mut busy = member("z", 9, 900);
        busy.eligible = false;
        assert_eq!(best_candidate(&[busy, member("y", 1, 1)]).unwrap().node_id, "y");
        assert!(best_candidate(&[]).is_none());
    }

    #[test]
    fn a_member_holds_an_acknowledged_write_in_its_epoch_up_to_its_lsn_or_in_any_later_epoch() {
        let floor = AckedFloor { epoch: 3, lsn: 100 };
        assert!(floor.held_by(&member("a", 3, 100)));
        assert!(!floor.held_by(&member("a", 3, 99)));
        assert!(!floor.held_by(&member("a", 2, 500)));
        assert!(floor.held_by(&member("a", 4, 10)));
    }
}
