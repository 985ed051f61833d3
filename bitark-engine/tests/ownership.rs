//! A sharded node serves only the users of the ranges its log says its group owns: a
//! write of another user is refused and not logged, the ownership survives a restart
//! from the log alone and from a snapshot with the log behind it removed, a stale
//! ownership is refused, and a node that is not sharded keeps format-2 snapshots.

use bitark_common::{Command, GroupId, HashRange, Ownership, ShardMap};
use bitark_engine::{Node, WriteError};
use bitark_infra::snapshot::{read_snapshot, FORMAT_VERSION, FORMAT_WITH_META};

mod support;

use support::{config, open};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn g(name: &str) -> GroupId {
    GroupId::new(name).unwrap()
}

/// Two groups, `a` and `b`, at map version 1.
fn map() -> ShardMap {
    ShardMap::even(&[g("a"), g("b")]).unwrap()
}

/// The first users of each group.
fn users_of(map: &ShardMap, group: &str, n: usize) -> Vec<u64> {
    (1..).filter(|u| map.owner_of(*u).group.as_str() == group).take(n).collect()
}

fn mark(node: &Node, rt: &tokio::runtime::Runtime, user: u64) -> Result<bitark_common::Lsn, WriteError> {
    rt.block_on(node.write(Command::MarkRead { user, msg: 7 }))
}

#[test]
fn a_user_of_another_group_is_refused_and_nothing_is_logged() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let node = open(&config(dir.path()));
    let map = map();
    let (mine, theirs) = (users_of(&map, "a", 3), users_of(&map, "b", 3));
    // Not sharded yet: every user is served.
    mark(&node, &rt, theirs[0]).unwrap();
    rt.block_on(node.set_ownership(map.ownership(&g("a")))).unwrap().expect("a record is logged");
    let applied = node.applied_lsn();
    for user in &theirs {
        match mark(&node, &rt, *user) {
            Err(WriteError::WrongShard(refused)) => {
                assert_eq!((refused.user, refused.group.as_str(), refused.map_version), (*user, "a", 1));
                assert!(refused.to_string().contains("not served by group a"), "{refused}");
            }
            other => panic!("user {user} of group b: {other:?}"),
        }
        assert!(node.check_owner(*user).is_err());
    }
    assert_eq!(node.applied_lsn(), applied, "a refused write is not logged");
    for user in &mine {
        mark(&node, &rt, *user).unwrap();
        node.check_owner(*user).unwrap();
    }
    node.shutdown();
}

#[test]
fn the_ownership_survives_a_restart_from_the_log_and_from_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let map = map();
    let own = map.ownership(&g("b"));
    let config = config(dir.path());
    let node = open(&config);
    rt.block_on(node.set_ownership(own.clone())).unwrap();
    node.shutdown();
    drop(node);

    // From the log.
    let node = open(&config);
    assert_eq!(node.ownership().as_deref(), Some(&own));
    assert!(node.check_owner(users_of(&map, "a", 1)[0]).is_err());
    mark(&node, &rt, users_of(&map, "b", 1)[0]).unwrap();
    let info = rt.block_on(node.snapshot_now()).unwrap();
    node.shutdown();
    drop(node);
    let read = read_snapshot(&info.path, |_| Ok(())).unwrap();
    assert_eq!(read.version, FORMAT_WITH_META, "a sharded node's snapshot holds its ownership");

    // From the snapshot alone: the log it covers is gone.
    for segment in bitark_infra::wal::list_segments(&dir.path().join("wal")).unwrap() {
        std::fs::remove_file(segment.path).unwrap();
    }
    let node = open(&config);
    assert_eq!(node.ownership().as_deref(), Some(&own));
    assert!(node.check_owner(users_of(&map, "a", 1)[0]).is_err());
    node.shutdown();
}

#[test]
fn an_older_map_version_is_refused_and_the_same_one_logs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let node = open(&config(dir.path()));
    let map = map();
    let next = map.assign(HashRange::ALL, &g("a")).unwrap();
    rt.block_on(node.set_ownership(next.ownership(&g("a")))).unwrap();
    let applied = node.applied_lsn();
    assert_eq!(rt.block_on(node.set_ownership(next.ownership(&g("a")))).unwrap(), None);
    let stale = rt.block_on(node.set_ownership(map.ownership(&g("a")))).unwrap_err();
    assert!(matches!(stale, WriteError::StaleOwnership { now: 2, given: 1 }), "{stale}");
    assert_eq!(node.applied_lsn(), applied);
    // Owning the whole space serves everyone.
    for user in 1..100 {
        node.check_owner(user).unwrap();
    }
    node.shutdown();
}

#[test]
fn a_node_that_is_not_sharded_keeps_format_2_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let node = open(&config(dir.path()));
    mark(&node, &rt, 5).unwrap();
    assert_eq!(node.ownership(), None::<std::sync::Arc<Ownership>>);
    let info = rt.block_on(node.snapshot_now()).unwrap();
    assert_eq!(read_snapshot(&info.path, |_| Ok(())).unwrap().version, FORMAT_VERSION);
    node.shutdown();
}

/// `bitark_shard_range_requests_total{range, kind}` of this node's registry.
fn range_requests(node: &Node, range: &HashRange, kind: &str) -> u64 {
    node.metrics().shard_range_requests.with_label_values(&[&range.to_string(), kind]).get()
}

#[test]
fn requests_are_counted_by_owned_range_and_a_range_given_away_leaves_the_counters() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let node = open(&config(dir.path()));
    let half = 1u128 << 63;
    let quarter = HashRange::new((3u128 << 62) as u64, 1u128 << 64).unwrap();
    // Group a owns the lower half and the top quarter: two ranges.
    let map = map().assign(quarter, &g("a")).unwrap();
    rt.block_on(node.set_ownership(map.ownership(&g("a")))).unwrap();
    let lower = HashRange::new(0, half).unwrap();
    let in_range = |range: &HashRange, n| -> Vec<u64> {
        (1..).filter(|u| range.contains(map.partitioner.hash(*u))).take(n).collect()
    };
    for user in in_range(&lower, 3) {
        mark(&node, &rt, user).unwrap();
        node.check_owner(user).unwrap();
    }
    let top = in_range(&quarter, 2);
    for user in &top {
        node.check_owner(*user).unwrap();
    }
    mark(&node, &rt, users_of(&map, "b", 1)[0]).unwrap_err();
    assert_eq!((range_requests(&node, &lower, "write"), range_requests(&node, &lower, "read")), (3, 3));
    assert_eq!((range_requests(&node, &quarter, "write"), range_requests(&node, &quarter, "read")), (0, 2));

    // The top quarter goes to group b: its counters leave, the lower half's go on.
    let map = map.assign(quarter, &g("b")).unwrap();
    rt.block_on(node.set_ownership(map.ownership(&g("a")))).unwrap();
    mark(&node, &rt, in_range(&lower, 1)[0]).unwrap();
    assert_eq!(range_requests(&node, &lower, "write"), 4);
    node.check_owner(top[0]).unwrap_err();
    let text = prometheus::TextEncoder::new().encode_to_string(&node.metrics().registry.gather()).unwrap();
    assert!(!text.contains(&quarter.to_string()), "a range no longer owned is not reported:\n{text}");
    node.shutdown();
}
