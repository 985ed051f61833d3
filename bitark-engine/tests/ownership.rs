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

/// Group a of [`map`] with the top quarter too: the lower half and the top quarter.
fn two_ranges() -> (ShardMap, HashRange, HashRange) {
    let quarter = HashRange::new((3u128 << 62) as u64, 1u128 << 64).unwrap();
    let map = map().assign(quarter, &g("a")).unwrap();
    (map, HashRange::new(0, 1u128 << 63).unwrap(), quarter)
}

fn users_in(map: &ShardMap, range: &HashRange, n: usize) -> Vec<u64> {
    (1..).filter(|u| range.contains(map.partitioner.hash(*u))).take(n).collect()
}

#[test]
fn a_frozen_range_refuses_writes_serves_reads_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let config = config(dir.path());
    let node = open(&config);
    let (map, lower, quarter) = two_ranges();
    rt.block_on(node.set_ownership(map.ownership(&g("a")))).unwrap();
    let (held, free) = (users_in(&map, &quarter, 3), users_in(&map, &lower, 3));
    mark(&node, &rt, held[0]).unwrap();

    let frozen = rt.block_on(node.freeze_range(quarter, true)).unwrap();
    assert!(frozen.logged);
    assert_eq!(frozen.frozen, vec![quarter]);
    assert_eq!(frozen.lsn, node.applied_lsn(), "the freeze record is the last one");
    assert_eq!(node.metrics().shard_frozen_ranges.get(), 0, "published by the member loop, not yet");
    node.publish_ownership();
    assert_eq!(node.metrics().shard_frozen_ranges.get(), 1);
    let check = |node: &Node| {
        for user in &held {
            match mark(node, &rt, *user) {
                Err(WriteError::RangeFrozen(refused)) => {
                    assert_eq!((refused.user, refused.range, refused.group.as_str()), (*user, quarter, "a"));
                    assert!(refused.to_string().contains("frozen for a move"), "{refused}");
                }
                other => panic!("user {user} of the frozen range: {other:?}"),
            }
            node.check_owner(*user).expect("a frozen range is still read");
        }
        assert!(node.is_read(held[0], 7), "its marks are still there");
    };
    let applied = node.applied_lsn();
    check(&node);
    assert_eq!(node.applied_lsn(), applied, "a refused write is not logged");
    for user in &free {
        mark(&node, &rt, *user).expect("the other range takes writes");
    }
    // A repeat logs nothing and answers a point every write to the range lies below.
    let again = rt.block_on(node.freeze_range(quarter, true)).unwrap();
    assert_eq!((again.logged, again.lsn), (false, node.applied_lsn()));
    node.shutdown();
    drop(node);

    // From the log.
    let node = open(&config);
    check(&node);
    let info = rt.block_on(node.snapshot_now()).unwrap();
    assert!(info.lsn >= frozen.lsn);
    node.shutdown();
    drop(node);
    // From the snapshot alone.
    for segment in bitark_infra::wal::list_segments(&dir.path().join("wal")).unwrap() {
        std::fs::remove_file(segment.path).unwrap();
    }
    let node = open(&config);
    check(&node);

    let thawed = rt.block_on(node.freeze_range(quarter, false)).unwrap();
    assert!(thawed.logged && thawed.frozen.is_empty());
    for user in &held {
        mark(&node, &rt, *user).expect("a thawed range takes writes");
    }
    node.shutdown();
}

#[test]
fn a_newer_map_keeps_a_freeze_and_only_whole_owned_ranges_freeze() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let node = open(&config(dir.path()));
    let (map, lower, quarter) = two_ranges();
    let not_sharded = rt.block_on(node.freeze_range(quarter, true)).unwrap_err();
    assert_eq!(not_sharded, WriteError::NotSharded);
    rt.block_on(node.set_ownership(map.ownership(&g("a")))).unwrap();
    let applied = node.applied_lsn();
    for range in [HashRange::new(0, 1 << 62).unwrap(), HashRange::new(1 << 63, 3u128 << 62).unwrap()] {
        match rt.block_on(node.freeze_range(range, true)) {
            Err(e @ WriteError::NotAnOwnedRange { .. }) => {
                assert!(e.to_string().contains(&range.to_string()) && e.to_string().contains("group a"), "{e}")
            }
            other => panic!("a freeze of {range}: {other:?}"),
        }
    }
    assert_eq!(node.applied_lsn(), applied, "a refused freeze is not logged");
    rt.block_on(node.freeze_range(quarter, true)).unwrap();

    // The frozen quarter is split: both halves stay frozen, the lower half stays free.
    let split = map.split(quarter, None).unwrap();
    rt.block_on(node.set_ownership(split.ownership(&g("a")))).unwrap().expect("the new map is logged");
    let own = node.ownership().unwrap();
    assert_eq!(own.map_version, split.version);
    assert_eq!(own.frozen.len(), 2);
    assert!(own.frozen.iter().all(|r| quarter.start <= r.start && r.end <= quarter.end));
    mark(&node, &rt, users_in(&map, &quarter, 1)[0]).unwrap_err();
    mark(&node, &rt, users_in(&map, &lower, 1)[0]).unwrap();
    // Giving the quarter away ends its freeze with it.
    let moved = split.assign(quarter, &g("b")).unwrap();
    rt.block_on(node.set_ownership(moved.ownership(&g("a")))).unwrap();
    assert!(node.ownership().unwrap().frozen.is_empty());
    node.shutdown();
}
