//! The controller against an in-memory etcd and in-memory groups.

use super::*;
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

const PREFIX: &str = "/t";

#[derive(Default)]
struct KvState {
    keys: BTreeMap<String, KeyValue>,
    revision: i64,
    next_lease: i64,
    dead: HashSet<i64>,
}

/// etcd as the controller uses it: revisions, leases, transactions; `down` fails every
/// call.
#[derive(Default)]
struct Kv {
    state: Mutex<KvState>,
    down: AtomicBool,
}

impl Kv {
    fn check(&self) -> Result<(), EtcdError> {
        if self.down.load(Ordering::Acquire) {
            return Err(EtcdError::Call("unreachable".into()));
        }
        Ok(())
    }

    /// Every lease granted so far lapses, and its keys go.
    fn expire_leases(&self) {
        let mut s = self.state.lock().unwrap();
        let granted: Vec<i64> = (1..=s.next_lease).collect();
        s.dead.extend(granted);
        s.keys.retain(|_, kv| kv.lease == 0);
    }

    fn record(&self, range: HashRange) -> Option<MoveRecord> {
        let s = self.state.lock().unwrap();
        s.keys.get(&move_key(PREFIX, range)).map(|kv| serde_json::from_slice(&kv.value).unwrap())
    }

    fn map(&self) -> ShardMap {
        let s = self.state.lock().unwrap();
        serde_json::from_slice(&s.keys[&map_key(PREFIX)].value).unwrap()
    }

    fn put(&self, key: &str, value: Vec<u8>) {
        let mut s = self.state.lock().unwrap();
        s.revision += 1;
        let kv = KeyValue { key: key.to_string(), value, mod_revision: s.revision, lease: 0 };
        s.keys.insert(key.to_string(), kv);
    }
}

impl MoveKv for Arc<Kv> {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, EtcdError> {
        self.check()?;
        Ok(self.state.lock().unwrap().keys.get(key).cloned())
    }

    async fn get_prefix(&self, prefix: &str) -> Result<Vec<KeyValue>, EtcdError> {
        self.check()?;
        Ok(self.state.lock().unwrap().keys.values().filter(|kv| kv.key.starts_with(prefix)).cloned().collect())
    }

    async fn swap(&self, expect: &[Expect], set: Vec<(String, Vec<u8>, i64)>) -> Result<bool, EtcdError> {
        self.check()?;
        let mut s = self.state.lock().unwrap();
        let holds = expect.iter().all(|e| match e {
            Expect::Absent(key) => !s.keys.contains_key(key),
            Expect::ModRevision(key, revision) => s.keys.get(key).is_some_and(|kv| kv.mod_revision == *revision),
            Expect::Lease(key, lease) => s.keys.get(key).is_some_and(|kv| kv.lease == *lease),
        });
        if !holds {
            return Ok(false);
        }
        s.revision += 1;
        let revision = s.revision;
        for (key, value, lease) in set {
            s.keys.insert(key.clone(), KeyValue { key, value, mod_revision: revision, lease });
        }
        Ok(true)
    }

    async fn grant(&self, _ttl: Duration) -> Result<i64, EtcdError> {
        self.check()?;
        let mut s = self.state.lock().unwrap();
        s.next_lease += 1;
        Ok(s.next_lease)
    }

    async fn keep_alive(&self, lease: i64) -> Result<bool, EtcdError> {
        self.check()?;
        Ok(!self.state.lock().unwrap().dead.contains(&lease))
    }

    async fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        self.check()?;
        let mut s = self.state.lock().unwrap();
        s.dead.insert(lease);
        s.keys.retain(|_, kv| kv.lease != lease);
        Ok(())
    }
}

/// Two groups' masters, `http://s` and `http://d`, as the controller sees them: each
/// step is noted in `log`.
struct Groups {
    kv: Arc<Kv>,
    log: Mutex<Vec<String>>,
    /// The drain fails (past the pause cap) and, when set, takes etcd down with it.
    drain_fails: AtomicBool,
    drain_takes_etcd: AtomicBool,
}

impl Groups {
    fn new(kv: &Arc<Kv>) -> Arc<Groups> {
        Arc::new(Groups {
            kv: kv.clone(),
            log: Mutex::new(Vec::new()),
            drain_fails: AtomicBool::new(false),
            drain_takes_etcd: AtomicBool::new(false),
        })
    }

    fn note(&self, step: String) {
        self.log.lock().unwrap().push(step);
    }

    fn steps(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

fn failed(step: &'static str, url: &str) -> StepError {
    StepError { step, url: url.to_string(), reason: "refused".into() }
}

impl GroupSteps for Arc<Groups> {
    async fn master(&self, group: &GroupId) -> Result<String, StepError> {
        Ok(format!("http://{group}"))
    }

    async fn start_incoming(&self, dest: &str, _range: HashRange, source: &str) -> Result<(), StepError> {
        self.note(format!("incoming {dest} from {source}"));
        Ok(())
    }

    async fn incoming(&self, _dest: &str, range: HashRange) -> Result<Option<IncomingStatus>, StepError> {
        let status = IncomingStatus {
            range: range.to_string(),
            phase: "catch-up".into(),
            next_lsn: 10,
            safe_lsn: 9,
            ..Default::default()
        };
        Ok(Some(status))
    }

    async fn freeze(&self, source: &str, range: HashRange, freeze: bool) -> Result<u64, StepError> {
        if freeze {
            self.note(format!("freeze {source}"));
        } else {
            // The source is thawed only once etcd says the move is aborted.
            let aborted = matches!(self.kv.record(range).map(|r| r.phase), Some(Phase::Aborted { .. }));
            self.note(format!("thaw {source} (aborted in etcd: {aborted})"));
        }
        Ok(42)
    }

    async fn drain(&self, dest: &str, _range: HashRange, until: u64, _wait: Duration) -> Result<(), StepError> {
        self.note(format!("drain {dest} to {until}"));
        if self.drain_takes_etcd.load(Ordering::Acquire) {
            self.kv.down.store(true, Ordering::Release);
        }
        if self.drain_fails.load(Ordering::Acquire) {
            return Err(failed("drain", dest));
        }
        Ok(())
    }

    async fn stop_incoming(&self, dest: &str, _range: HashRange) -> Result<(), StepError> {
        self.note(format!("stop {dest}"));
        Ok(())
    }

    async fn drop_range(&self, master: &str, range: HashRange) -> Result<(), StepError> {
        // A master refuses to drop a range its group still owns.
        let map = self.kv.map();
        let owner = map.ranges.iter().find(|r| r.range.overlaps(&range)).map(|r| format!("http://{}", r.group));
        if owner.as_deref() == Some(master) {
            return Err(failed("drop", master));
        }
        self.note(format!("drop {master}"));
        Ok(())
    }
}

/// The group owning the start of `range` in `map`.
fn owner(map: &ShardMap, range: HashRange) -> &str {
    map.ranges.iter().find(|r| r.range.contains(range.start)).unwrap().group.as_str()
}

fn g(name: &str) -> GroupId {
    GroupId::new(name).unwrap()
}

/// etcd holding a map of groups s (lower half) and d (upper half).
fn setup() -> (Arc<Kv>, Arc<Groups>, HashRange) {
    let kv = Arc::new(Kv::default());
    let map = ShardMap::even(&[g("s"), g("d")]).unwrap();
    kv.put(&map_key(PREFIX), serde_json::to_vec(&map).unwrap());
    let groups = Groups::new(&kv);
    (kv, groups, map.ranges[0].range)
}

fn controller(kv: &Arc<Kv>, groups: &Arc<Groups>) -> Controller<Arc<Kv>, Arc<Groups>> {
    let options = MoveOptions { poll: Duration::from_millis(1), ..MoveOptions::default() };
    Controller::new(kv.clone(), groups.clone(), PREFIX, options)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn a_move_runs_to_done_and_gives_the_range_to_the_destination_in_one_transaction() {
    let (kv, groups, range) = setup();
    let c = controller(&kv, &groups);
    let rt = runtime();
    let planned = rt.block_on(c.plan(range, &g("d"))).unwrap();
    assert_eq!((planned.from.as_str(), planned.to.as_str(), planned.map_version), ("s", "d", 1));
    let done = rt.block_on(c.drive(range, |_| {})).unwrap();
    assert_eq!(done.phase, Phase::Done);
    assert!(done.pause_ms.is_some());
    let map = kv.map();
    assert_eq!((map.version, owner(&map, range)), (2, "d"));
    assert_eq!(
        groups.steps(),
        [
            "incoming http://d from http://s",
            "freeze http://s",
            "drain http://d to 42",
            "stop http://d",
            "drop http://s"
        ]
    );
    assert!(kv.state.lock().unwrap().keys.keys().all(|k| !k.contains("move-claims")), "the claim is released");
    // A move of a range that is not one of the map's, or to its own group, is refused.
    let half = HashRange::new(0, 1 << 62).unwrap();
    assert!(matches!(rt.block_on(c.plan(half, &g("s"))), Err(MoveFailure::NotARange(_))));
    let top = map.ranges[1].range;
    assert!(matches!(rt.block_on(c.plan(top, &g("d"))), Err(MoveFailure::SameGroup { .. })));
    // The move back (a rollback) is the same steps the other way.
    rt.block_on(c.plan(range, &g("s"))).unwrap();
    assert!(matches!(rt.block_on(c.plan(range, &g("s"))), Err(MoveFailure::Running { .. })));
    assert_eq!(rt.block_on(c.drive(range, |_| {})).unwrap().phase, Phase::Done);
    assert_eq!(owner(&kv.map(), range), "s");
}

#[test]
fn a_drain_past_the_pause_cap_aborts_and_the_source_thaws_only_after_etcd_says_so() {
    let (kv, groups, range) = setup();
    groups.drain_fails.store(true, Ordering::Release);
    let c = controller(&kv, &groups);
    let rt = runtime();
    rt.block_on(c.plan(range, &g("d"))).unwrap();
    let over = rt.block_on(c.drive(range, |_| {})).unwrap();
    assert!(matches!(&over.phase, Phase::Aborted { reason } if reason.contains("pause cap")), "{over:?}");
    assert_eq!(kv.map().version, 1, "the map is untouched");
    let steps = groups.steps();
    assert!(steps.contains(&"thaw http://s (aborted in etcd: true)".to_string()), "{steps:?}");
    assert!(steps.ends_with(&["stop http://d".to_string(), "drop http://d".to_string()]), "{steps:?}");
}

#[test]
fn with_etcd_unreachable_the_range_stays_frozen_until_an_abort_is_recorded() {
    let (kv, groups, range) = setup();
    groups.drain_fails.store(true, Ordering::Release);
    groups.drain_takes_etcd.store(true, Ordering::Release);
    let c = controller(&kv, &groups);
    let rt = runtime();
    rt.block_on(c.plan(range, &g("d"))).unwrap();
    assert!(matches!(rt.block_on(c.drive(range, |_| {})), Err(MoveFailure::Etcd(_))));
    assert!(groups.steps().iter().all(|s| !s.starts_with("thaw")), "no thaw without the abort in etcd");
    assert!(matches!(kv.record(range).unwrap().phase, Phase::Cutover { freeze_lsn: 42 }));
    // etcd is back and the dead controller's claim lapsed: an abort finishes it.
    kv.down.store(false, Ordering::Release);
    kv.expire_leases();
    let aborted = rt.block_on(c.abort(range, "by hand")).unwrap();
    assert!(matches!(aborted.phase, Phase::Aborted { .. }));
    assert!(groups.steps().contains(&"thaw http://s (aborted in etcd: true)".to_string()));
    // Too late to abort once committed.
    groups.drain_fails.store(false, Ordering::Release);
    groups.drain_takes_etcd.store(false, Ordering::Release);
    rt.block_on(c.plan(range, &g("d"))).unwrap();
    rt.block_on(c.drive(range, |_| {})).unwrap();
    assert!(matches!(rt.block_on(c.abort(range, "late")), Err(MoveFailure::TooLate { .. })));
}

#[test]
fn a_new_controller_resumes_where_a_dead_one_left_the_move() {
    let (kv, groups, range) = setup();
    let c = controller(&kv, &groups);
    let rt = runtime();
    let planned = rt.block_on(c.plan(range, &g("d"))).unwrap();
    // A controller froze the source, recorded the freeze point and died holding its claim.
    let cutover = MoveRecord { phase: Phase::Cutover { freeze_lsn: 7 }, ..planned };
    kv.put(&move_key(PREFIX, range), serde_json::to_vec(&cutover).unwrap());
    let dead = rt.block_on(MoveKv::grant(&kv, Duration::from_secs(10))).unwrap();
    let claim = (claim_key(PREFIX, range), b"controller".to_vec(), dead);
    assert!(rt.block_on(MoveKv::swap(&kv, &[], vec![claim])).unwrap());
    assert!(matches!(rt.block_on(c.drive(range, |_| {})), Err(MoveFailure::Claimed(_))), "its claim still holds");
    kv.expire_leases();
    let done = rt.block_on(c.drive(range, |_| {})).unwrap();
    assert_eq!(done.phase, Phase::Done);
    assert_eq!(groups.steps(), ["drain http://d to 7", "stop http://d", "drop http://s"], "resumed at the cutover");
    assert_eq!(rt.block_on(c.status()).unwrap().len(), 1);
}
