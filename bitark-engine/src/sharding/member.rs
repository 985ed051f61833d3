//! A sharded node's part in its group (`cluster.group`): it keeps the shard directory
//! fresh, and while it is the group's master it logs the ownership the newest map gives
//! its group. In a static group (no failover election) it also announces itself, as the
//! failover election does in a group under failover: the master in the group's leader
//! key, so routers and other groups find it, and every member under `members/<node id>`,
//! so routers can send reads that carry a write token to any of them.
//!
//! The ownership is only ever raised to a newer map version (see
//! [`crate::Node::set_ownership`]), and a node serves what its log says, never what etcd
//! said last: a stale read of etcd delays a change, it never widens what is served.

use super::directory::{follow, ShardView};
use super::group_prefix;
use crate::coordination::{Leader, Member};
use crate::Node;
use bitark_common::{GroupId, Ownership, ShardMap};
use bitark_infra::etcd::{Etcd, EtcdError};
use std::time::Duration;

/// What the group member does next with the map it sees: the ownership to log, if any.
pub fn ownership_to_log(map: &ShardMap, group: &GroupId, logged: Option<&Ownership>) -> Option<Ownership> {
    let wanted = map.ownership(group);
    match logged {
        Some(now) if now.map_version >= wanted.map_version => None,
        _ => Some(wanted),
    }
}

/// Runs the member's loops until the process ends. `self_url` is where this node
/// serves; `announce` is true in a static group (its master is master by
/// configuration, so nothing else writes the leader key).
pub async fn run(node: Node, group: GroupId, self_url: String, announce: bool) -> Result<(), EtcdError> {
    let config = node.config();
    let prefix = config.coordination.etcd.prefix.clone();
    let etcd = Etcd::connect(&config.coordination.etcd.endpoints, config.coordination.etcd.timeout)?;
    let view = node.shard_view().clone();
    tokio::spawn(follow(etcd.clone(), prefix.clone(), view.clone(), config.cluster.refresh));
    if announce {
        announce_static(&node, &etcd, &group_prefix(&prefix, &group), self_url);
    }
    let every = config.cluster.range_stats_every;
    if !every.is_zero() {
        tokio::spawn(count_ranges(node.clone(), every));
    }
    tokio::spawn(keep_ownership(node, group, view));
    Ok(())
}

/// In a static group: the master's [`Leader`] record in the group's leader key while it
/// is master, and this member's [`Member`] record while the group runs no election.
fn announce_static(node: &Node, etcd: &Etcd, keys: &str, url: String) {
    let config = node.config();
    let (ttl, id) = (config.coordination.lease_ttl, config.node.id.clone());
    let (master, leader_id, leader_url) = (node.clone(), id.clone(), url.clone());
    let leader = move || {
        let record = Leader { node_id: leader_id.clone(), url: leader_url.clone(), epoch: master.epoch().0 };
        (!master.is_slave()).then(|| serde_json::to_vec(&record).expect("a leader record serializes"))
    };
    tokio::spawn(keep_announced(etcd.clone(), format!("{keys}/leader"), ttl, leader));
    let (member, key) = (node.clone(), format!("{keys}/members/{id}"));
    let record = move || {
        // Never a candidate: an election that a flag change starts publishes its own.
        let record =
            Member { node_id: id.clone(), url: url.clone(), epoch: member.epoch().0, durable_lsn: 0, eligible: false };
        (!member.features().failover).then(|| serde_json::to_vec(&record).expect("a member record serializes"))
    };
    tokio::spawn(keep_announced(etcd.clone(), key, ttl, record));
}

/// Every `every`: the users and marks of each owned range, off the runtime's threads.
async fn count_ranges(node: Node, every: Duration) {
    loop {
        let counting = node.clone();
        let _ = tokio::task::spawn_blocking(move || counting.publish_range_counts()).await;
        tokio::time::sleep(every).await;
    }
}

/// While this node is master: log the ownership of every newer map the view shows.
async fn keep_ownership(node: Node, group: GroupId, view: ShardView) {
    let mut changes = view.subscribe();
    let every = node.config().cluster.refresh;
    loop {
        node.publish_ownership();
        if !node.is_slave() {
            if let Some(directory) = view.get() {
                if let Some(own) = ownership_to_log(&directory.map, &group, node.ownership().as_deref()) {
                    let (version, ranges) = (own.map_version, own.ranges.len());
                    match node.set_ownership(own).await {
                        Ok(lsn) => tracing::info!(%group, version, ranges, lsn = ?lsn.map(|l| l.0), "ownership logged"),
                        Err(e) => tracing::warn!(%group, version, error = %e, "cannot log the ownership; retrying"),
                    }
                }
            }
        }
        // A promotion shows as no change of the view: look again at least every `every`.
        let _ = tokio::time::timeout(every.min(Duration::from_secs(1)), changes.changed()).await;
    }
}

/// Keeps `key` holding what `record` answers, on a lease renewed every third of `ttl`,
/// while it answers a record; when it answers `None` the lease is revoked and the key
/// goes with it. A stopped process lets the lease lapse.
async fn keep_announced(etcd: Etcd, key: String, ttl: Duration, record: impl Fn() -> Option<Vec<u8>>) {
    let mut lease: Option<i64> = None;
    loop {
        let result: Result<(), EtcdError> = async {
            match (record(), lease) {
                (Some(value), None) => {
                    let granted = etcd.grant(ttl).await?;
                    etcd.put(&key, value, granted.id).await?;
                    lease = Some(granted.id);
                }
                (Some(_), Some(id)) => {
                    if etcd.keep_alive(id).await?.is_none() {
                        lease = None;
                    }
                }
                (None, Some(id)) => {
                    lease = None;
                    etcd.revoke(id).await?;
                }
                (None, None) => {}
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::debug!(%key, error = %e, "cannot announce this node in etcd; retrying");
            lease = None;
        }
        tokio::time::sleep(ttl / 3).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitark_common::HashRange;

    fn g(name: &str) -> GroupId {
        GroupId::new(name).unwrap()
    }

    #[test]
    fn only_a_newer_map_is_logged() {
        let map = ShardMap::even(&[g("a"), g("b")]).unwrap();
        let first = ownership_to_log(&map, &g("a"), None).expect("nothing logged yet");
        assert_eq!(first.map_version, 1);
        assert_eq!(ownership_to_log(&map, &g("a"), Some(&first)), None, "the same version again");
        let next = map.assign(HashRange::ALL, &g("b")).unwrap();
        let second = ownership_to_log(&next, &g("a"), Some(&first)).expect("a newer map");
        assert!(second.ranges.is_empty(), "group a owns nothing in version 2");
        assert_eq!(ownership_to_log(&map, &g("a"), Some(&second)), None, "an older map is never logged");
    }
}
