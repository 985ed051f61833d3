//! `cluster.*`: which replication group a node belongs to when users are sharded over
//! many groups.

use bitark_common::GroupId;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `cluster.*`: the node's replication group. Unset, the node is not sharded: it serves
/// every user and keeps its coordination keys where an unsharded cluster keeps them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// The group's name: 1 to 32 of `a-z`, `0-9` and `-`. Set, the group's master
    /// follows the shard map in etcd (`coordination.etcd.*`, key `<prefix>/shards/map`)
    /// and logs the ranges the group owns; every node of the group then serves only the
    /// users of those ranges (409 `wrong_shard` for the rest), and the group keeps its
    /// coordination keys under `<prefix>/groups/<group>/`. Default unset.
    pub group: Option<String>,
    /// How often the shard map and the groups' masters are read again when no change
    /// was seen (a change is seen at once through a watch). Default `5s`.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    pub refresh: Duration,
    /// How often a sharded node counts the users and marks of each range it owns
    /// (`bitark_shard_range_users`, `_range_marks`, `bitark_shard_unowned_users`): one walk
    /// of the whole store, like a digest. `0s`: never. Default `1m`.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    pub range_stats_every: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig { group: None, refresh: Duration::from_secs(5), range_stats_every: Duration::from_secs(60) }
    }
}

impl ClusterConfig {
    /// The group, when the node is sharded and its name is valid.
    pub fn group_id(&self) -> Option<GroupId> {
        self.group.as_deref().and_then(|g| GroupId::new(g).ok())
    }

    pub(super) fn problems(&self, etcd_endpoints: usize) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(group) = &self.group {
            if let Err(e) = GroupId::new(group) {
                out.push(format!("cluster.group: {e}"));
            }
            if etcd_endpoints == 0 {
                out.push("cluster.group: needs coordination.etcd.endpoints (the etcd that holds the shard map)".into());
            }
        }
        if self.refresh < Duration::from_millis(100) {
            out.push("cluster.refresh: must be at least 100ms".into());
        }
        out
    }
}
