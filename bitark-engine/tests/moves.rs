//! A range moved between two groups' masters in one process, under writes: the
//! destination stages a copy where reads cannot see it, replays the source's log of the
//! range up to the freeze point, and holds exactly the source's users of the range; the
//! source then drops them. Refusals leave nothing logged.

use bitark_common::{Command, GroupId, HashRange, Lsn, ShardMap};
use bitark_engine::error::MoveError;
use bitark_engine::sharding::pull::{catch_up, copy_range, drain_to, PullError, RangeSource};
use bitark_engine::{Node, RangeCopy, RangeLog, WriteError};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod support;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn g(name: &str) -> GroupId {
    GroupId::new(name).unwrap()
}

/// A master of group `group` on `dir`.
fn master(dir: &std::path::Path, group: &str) -> Node {
    let mut config = support::config(dir);
    config.cluster.group = Some(group.to_string());
    support::open(&config)
}

/// Group s owns the lower half, group d the upper one.
fn map() -> ShardMap {
    ShardMap::even(&[g("s"), g("d")]).unwrap()
}

/// Masters of groups s and d on the two directories, each holding its ownership of
/// [`map`].
fn source_and_destination(
    rt: &tokio::runtime::Runtime,
    dir_s: &std::path::Path,
    dir_d: &std::path::Path,
) -> (Node, Node, ShardMap) {
    let (s, d, map) = (master(dir_s, "s"), master(dir_d, "d"), map());
    rt.block_on(s.set_ownership(map.ownership(&g("s")))).unwrap();
    rt.block_on(d.set_ownership(map.ownership(&g("d")))).unwrap();
    (s, d, map)
}

fn lower() -> HashRange {
    map().ranges[0].range
}

fn users_in(map: &ShardMap, range: &HashRange, n: usize) -> Vec<u64> {
    (1..).filter(|u| range.contains(map.partitioner.hash(*u))).take(n).collect()
}

/// Writes of users of `users` to `node` until `stop`, or its range freezes: each
/// acknowledged (user, message, read) in order.
async fn write_until(node: Node, users: Vec<u64>, stop: Arc<AtomicBool>) -> Vec<(u64, u64, bool)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut taken = Vec::new();
    while !stop.load(Ordering::Acquire) {
        let (user, msg) = (users[rng.gen_range(0..users.len())], rng.gen_range(0..64u64));
        let read = rng.gen_bool(0.7);
        let command = if read { Command::MarkRead { user, msg } } else { Command::MarkUnread { user, msg } };
        match node.write(command).await {
            Ok(_) => taken.push((user, msg, read)),
            Err(WriteError::RangeFrozen(_)) => break,
            Err(e) => panic!("a write to the source failed: {e}"),
        }
    }
    taken
}

#[test]
fn a_range_moves_under_writes_and_the_destination_holds_exactly_the_source_s_users() {
    let (dir_s, dir_d) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let rt = runtime();
    let (s, d, map) = source_and_destination(&rt, dir_s.path(), dir_d.path());
    let range = lower();
    let users = users_in(&map, &range, 200);
    for &user in &users {
        rt.block_on(s.write(Command::MarkBatch { user, msgs: (0..=user % 40).map(|i| i * 7).collect() })).unwrap();
    }
    rt.block_on(s.write(Command::MarkRange { user: users[0], from: 1_000, to: 90_000 })).unwrap();
    // Something of d's own, which the move must leave alone.
    let own = users_in(&map, &map.ranges[1].range, 3);
    for &user in &own {
        rt.block_on(d.write(Command::MarkRead { user, msg: 1 })).unwrap();
    }
    let before = d.digest_of_range(map.ranges[1].range);

    let stop = Arc::new(AtomicBool::new(false));
    let writer = rt.spawn(write_until(s.clone(), users.clone(), stop.clone()));
    let copied = rt.block_on(copy_range(&d, &s, range, || true)).unwrap();
    assert!(copied.commands >= users.len());
    // Staged: held, but not served.
    assert!(d.check_owner(users[0]).is_err(), "a staged user is not read");
    let mut next = copied.replay_from;
    for _ in 0..3 {
        next = rt.block_on(catch_up(&d, &s, range, copied.epoch, next)).unwrap().next;
    }
    let frozen = rt.block_on(s.freeze_range(range, true)).unwrap();
    let taken = rt.block_on(writer).unwrap();
    stop.store(true, Ordering::Release);
    assert!(!taken.is_empty());
    rt.block_on(drain_to(&d, &s, range, copied.epoch, next, frozen.lsn, Duration::from_secs(10))).unwrap();
    assert_eq!(d.digest_of_range(range), s.digest_of_range(range), "the destination holds the source's range");
    assert_eq!(d.digest_of_range(map.ranges[1].range), before, "its own range is untouched");

    // The cutover: the range is d's; s drops its copy.
    let moved = map.assign(range, &g("d")).unwrap();
    rt.block_on(d.set_ownership(moved.ownership(&g("d")))).unwrap();
    rt.block_on(s.set_ownership(moved.ownership(&g("s")))).unwrap();
    assert!(s.ownership().unwrap().frozen.is_empty(), "the freeze goes with the range");
    rt.block_on(s.drop_unowned_range(range)).unwrap();
    assert_eq!(s.digest_of_range(range).users, 0);
    let mut last: HashMap<(u64, u64), bool> = HashMap::new();
    for (user, msg, read) in taken {
        last.insert((user, msg), read);
    }
    for ((user, msg), read) in &last {
        d.check_owner(*user).unwrap();
        assert_eq!(d.is_read(*user, *msg), *read, "user {user} msg {msg}: the last acknowledged write wins");
    }
    // Both come back from their logs as they were: the copy, the replay and the drop.
    let (after_d, after_s) = (d.digest(), s.digest());
    d.shutdown();
    s.shutdown();
    drop((d, s));
    let (d, s) = (master(dir_d.path(), "d"), master(dir_s.path(), "s"));
    assert_eq!((d.digest(), s.digest()), (after_d, after_s));
    d.shutdown();
    s.shutdown();
}

#[test]
fn an_import_of_an_owned_user_or_a_drop_of_an_owned_range_logs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let d = master(dir.path(), "d");
    let map = map();
    rt.block_on(d.set_ownership(map.ownership(&g("d")))).unwrap();
    let (theirs, mine) = (users_in(&map, &lower(), 1)[0], users_in(&map, &map.ranges[1].range, 1)[0]);
    let applied = d.applied_lsn();
    let batch = vec![Command::MarkRead { user: theirs, msg: 1 }, Command::MarkRead { user: mine, msg: 1 }];
    match rt.block_on(d.import(batch)) {
        Err(e @ WriteError::ImportOwned { .. }) => assert!(e.to_string().contains(&format!("user {mine}")), "{e}"),
        other => panic!("an import of an owned user: {other:?}"),
    }
    let owned = rt.block_on(d.drop_unowned_range(HashRange::ALL)).unwrap_err();
    assert!(matches!(owned, WriteError::OwnedRange { .. }), "{owned}");
    assert_eq!(d.applied_lsn(), applied, "nothing of a refused batch is logged");
    assert!(!d.is_read(theirs, 1));
    // The source side answers only for a range it owns, and only on a real shard.
    let refused = rt.block_on(d.copy_of_range(lower(), 0)).unwrap_err();
    assert_eq!(refused, MoveError::NotOwned { range: lower() });
    let bad = rt.block_on(d.copy_of_range(map.ranges[1].range, 1 << 20)).unwrap_err();
    assert!(matches!(bad, MoveError::BadShard { .. }), "{bad}");
    d.shutdown();
}

/// A source whose epoch changes after `calls` answers: a failover in the source group.
struct FailsOver {
    node: Node,
    calls: AtomicUsize,
    after: usize,
}

impl FailsOver {
    fn epoch_of(&self, epoch: bitark_common::Epoch) -> bitark_common::Epoch {
        let n = self.calls.fetch_add(1, Ordering::AcqRel);
        if n >= self.after {
            bitark_common::Epoch(epoch.0 + 1)
        } else {
            epoch
        }
    }
}

impl RangeSource for FailsOver {
    async fn copy(&self, range: HashRange, shard: usize) -> Result<RangeCopy, PullError> {
        let copy = self.node.copy(range, shard).await?;
        Ok(RangeCopy { epoch: self.epoch_of(copy.epoch), ..copy })
    }

    async fn log(&self, range: HashRange, from: Lsn) -> Result<RangeLog, PullError> {
        let log = self.node.log(range, from).await?;
        Ok(RangeLog { epoch: self.epoch_of(log.epoch), ..log })
    }
}

#[test]
fn a_failover_in_the_source_stops_the_pull_and_a_new_copy_starts_clean() {
    let (dir_s, dir_d) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let rt = runtime();
    let (s, d, map) = source_and_destination(&rt, dir_s.path(), dir_d.path());
    let range = lower();
    let users = users_in(&map, &range, 50);
    for &user in &users {
        rt.block_on(s.write(Command::MarkRead { user, msg: 3 })).unwrap();
    }
    let source = FailsOver { node: s.clone(), calls: AtomicUsize::new(0), after: 100 };
    let stopped = rt.block_on(copy_range(&d, &source, range, || true)).unwrap_err();
    assert!(matches!(stopped, PullError::EpochChanged { .. }), "{stopped}");
    // The source unmarks a user that was staged; a new copy starts from nothing staged.
    let staged = *users.iter().find(|u| d.is_read(**u, 3)).expect("part of the copy was staged");
    rt.block_on(s.write(Command::MarkUnread { user: staged, msg: 3 })).unwrap();
    let copied = rt.block_on(copy_range(&d, &s, range, || true)).unwrap();
    rt.block_on(drain_to(&d, &s, range, copied.epoch, copied.replay_from, s.applied_lsn(), Duration::from_secs(10)))
        .unwrap();
    assert_eq!(d.digest_of_range(range), s.digest_of_range(range));
    assert!(!d.is_read(staged, 3));
    let purged = rt.block_on(s.log_of_range(range, Lsn(1), 1 << 20));
    assert!(purged.is_ok(), "the whole log is still there: {purged:?}");
    d.shutdown();
    s.shutdown();
}
