//! Many replication groups behind routers, as real processes: one etcd, the shard map
//! written by `bitark shards init`, each group a [`Cluster`] (a master and its slaves)
//! with `cluster.group` set, and `bitark router` processes in front.

use super::cluster::{Cluster, Role};
use super::etcd::Etcd;
use super::{poll_until, wait_until, Node, NodeBuilder};
use bitark_common::{GroupId, ShardMap};
use std::process::Command;
use std::time::Duration;

/// The etcd prefix of every sharded test.
pub const PREFIX: &str = "/bitark-shards";
/// Longest the sharded helpers wait for a state to show.
pub const WITHIN: Duration = Duration::from_secs(30);

pub struct Sharded {
    pub etcd: Etcd,
    pub names: Vec<String>,
    pub groups: Vec<Cluster>,
    /// The map `shards init` wrote (version 1).
    pub map: ShardMap,
}

/// Runs `bitark shards <args>` against `etcd`: (success, stdout, stderr).
pub fn shards(etcd: &Etcd, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bitark"))
        .env_remove("BITARK_PROFILE")
        .current_dir(std::env::temp_dir())
        .arg("shards")
        .args(args)
        .arg("--etcd")
        .arg(etcd.url())
        .arg("--prefix")
        .arg(PREFIX)
        .output()
        .expect("run bitark shards");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

/// The settings of a node of group `name`.
pub fn member_of(builder: NodeBuilder, etcd_url: &str, name: &str) -> NodeBuilder {
    builder
        .env("BITARK_CLUSTER__GROUP", name)
        .env("BITARK_CLUSTER__REFRESH", "500ms")
        .env("BITARK_CLUSTER__RANGE_STATS_EVERY", "200ms")
        .env("BITARK_COORDINATION__ETCD__ENDPOINTS", format!("[\"{etcd_url}\"]"))
        .env("BITARK_COORDINATION__ETCD__PREFIX", PREFIX)
}

impl Sharded {
    /// etcd, the map over `names` and one group per name of a master and `slaves`
    /// slaves (stage 5: a slave that registers late catches up or full-syncs); `None` when etcd is not installed.
    pub async fn start(names: &[&str], slaves: usize) -> Option<Sharded> {
        if !super::etcd::available() {
            return None;
        }
        let etcd = Etcd::start().await;
        let (ok, out, err) = shards(&etcd, &["init", "--groups", &names.join(",")]);
        assert!(ok, "shards init failed:\n{out}\n{err}");
        let ids: Vec<GroupId> = names.iter().map(|n| GroupId::new(n).unwrap()).collect();
        let map = ShardMap::even(&ids).unwrap();
        let mut groups = Vec::new();
        for name in names {
            let (url, name) = (etcd.url(), name.to_string());
            let configure = move |_: Role, _: usize, b: NodeBuilder| member_of(b, &url, &name);
            groups.push(Cluster::start_with(slaves, "5", configure).await);
        }
        let sharded = Sharded { etcd, names: names.iter().map(|n| n.to_string()).collect(), groups, map };
        for g in 0..sharded.groups.len() {
            sharded.wait_owned(g).await;
        }
        Some(sharded)
    }

    /// The index of the group that owns `user`.
    pub fn group_of(&self, user: u64) -> usize {
        let owner = &self.map.owner_of(user).group;
        self.names.iter().position(|n| n == owner.as_str()).expect("a group of the map")
    }

    /// The first `n` users of group `g`.
    pub fn users_of(&self, g: usize, n: usize) -> Vec<u64> {
        (1..).filter(|u| self.group_of(*u) == g).take(n).collect()
    }

    /// Waits until group `g`'s master and slaves serve one of its users.
    pub async fn wait_owned(&self, g: usize) {
        let user = self.users_of(g, 1)[0];
        let group = &self.groups[g];
        wait_until(WITHIN, "the group's master to log its ownership", async || {
            group.master.api().mark_read(user, 0).await.is_ok()
        })
        .await;
        for slave in &group.slaves {
            let mut last = None;
            let held = poll_until(WITHIN, async || {
                let answer = slave.api().check(user, &[0]).await;
                let done = answer.as_ref().is_ok_and(|r| *r == vec![true]);
                last = Some(answer);
                done
            })
            .await;
            assert!(held, "the slave did not serve user {user}: {last:?}\n{}", slave.stderr_text());
        }
    }

    /// Starts a router in front of the groups and waits until it has read the map.
    pub async fn router(&self) -> Node {
        router_builder(&self.etcd).start().await
    }
}

/// How a router of `etcd`'s map starts.
pub fn router_builder(etcd: &Etcd) -> NodeBuilder {
    Node::builder().arg("router").arg("--etcd").arg(etcd.url()).arg("--prefix").arg(PREFIX)
}
