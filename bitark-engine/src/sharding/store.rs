//! The shard map in etcd: one key, `<prefix>/shards/map`, holding the JSON
//! [`ShardMap`], changed only by compare-and-swap on the key's revision.
//!
//! Every write checks the map it writes ([`ShardMap::check`]: no overlap, no gap) and
//! that its version is one above the version it replaces, so two operators racing see
//! one of them refused with [`ShardError::Conflict`] rather than one change lost.

use bitark_common::{GroupId, HashRange, ShardMap, ShardMapError};
use bitark_infra::etcd::{Etcd, EtcdError, Expect, KeyValue};
use std::future::Future;

/// Why the shard map could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error("{key} in etcd is not a shard map: {reason}")]
    Unreadable { key: String, reason: String },
    #[error("the shard map is refused: {0}")]
    Invalid(#[from] ShardMapError),
    #[error("there is no shard map at {0} yet (bitark shards init)")]
    NoMap(String),
    #[error("a shard map exists already at {key} (version {version}); change it with bitark shards assign")]
    Exists { key: String, version: u64 },
    #[error("the shard map changed meanwhile (now version {now}); read it again")]
    Conflict { now: u64 },
    #[error("version {new} does not follow version {old}")]
    NotNext { old: u64, new: u64 },
}

/// The map as read, with the etcd revision a compare-and-swap must find to replace it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    pub map: ShardMap,
    pub revision: i64,
}

/// What the shard map needs of etcd: one read, one conditional write. [`Etcd`]
/// implements it; tests use an in-memory one.
pub trait MapKv {
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<KeyValue>, EtcdError>> + Send;
    fn put_if(&self, expect: Expect, key: &str, value: Vec<u8>)
        -> impl Future<Output = Result<bool, EtcdError>> + Send;
}

impl MapKv for Etcd {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, EtcdError> {
        Ok(Etcd::get(self, key).await?.0)
    }

    async fn put_if(&self, expect: Expect, key: &str, value: Vec<u8>) -> Result<bool, EtcdError> {
        self.swap(&[expect], vec![(key.to_string(), value, 0)]).await
    }
}

/// The etcd key of the shard map under `coordination.etcd.prefix`.
pub fn map_key(prefix: &str) -> String {
    format!("{prefix}/shards/map")
}

/// The shard map of one etcd prefix.
pub struct ShardMapStore<K> {
    kv: K,
    key: String,
}

impl<K: MapKv> ShardMapStore<K> {
    pub fn new(kv: K, prefix: &str) -> ShardMapStore<K> {
        ShardMapStore { kv, key: map_key(prefix) }
    }

    /// The etcd key the map is kept at.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The map and its revision, `None` before `init`.
    pub async fn read(&self) -> Result<Option<Versioned>, ShardError> {
        let Some(kv) = self.kv.get(&self.key).await? else { return Ok(None) };
        Ok(Some(Versioned { map: decode(&self.key, &kv.value)?, revision: kv.mod_revision }))
    }

    /// The map; an error naming `bitark shards init` when there is none.
    pub async fn current(&self) -> Result<Versioned, ShardError> {
        self.read().await?.ok_or_else(|| ShardError::NoMap(self.key.clone()))
    }

    /// Writes the first map, only where there is none.
    pub async fn init(&self, map: &ShardMap) -> Result<(), ShardError> {
        map.check()?;
        if self.kv.put_if(Expect::Absent(self.key.clone()), &self.key, encode(map)).await? {
            return Ok(());
        }
        let version = self.read().await?.map_or(0, |v| v.map.version);
        Err(ShardError::Exists { key: self.key.clone(), version })
    }

    /// Replaces `seen` by `next`, whose version must be the next one, only if the map
    /// is still `seen`.
    pub async fn replace(&self, seen: &Versioned, next: &ShardMap) -> Result<(), ShardError> {
        next.check()?;
        if next.version != seen.map.version + 1 {
            return Err(ShardError::NotNext { old: seen.map.version, new: next.version });
        }
        if self.kv.put_if(Expect::ModRevision(self.key.clone(), seen.revision), &self.key, encode(next)).await? {
            return Ok(());
        }
        let now = self.read().await?.map_or(0, |v| v.map.version);
        Err(ShardError::Conflict { now })
    }

    /// Gives `range` to `group` in the next version of the map. `expect` guards on the
    /// version the caller looked at; without it the map read now is the base.
    pub async fn assign(&self, range: HashRange, group: &GroupId, expect: Option<u64>) -> Result<ShardMap, ShardError> {
        let seen = self.current().await?;
        if expect.is_some_and(|v| v != seen.map.version) {
            return Err(ShardError::Conflict { now: seen.map.version });
        }
        let next = seen.map.assign(range, group)?;
        self.replace(&seen, &next).await?;
        Ok(next)
    }

    /// Cuts the map's range `range` in two at `at` (its midpoint by default) in the next
    /// version, one compare-and-swap: the same group owns both halves, no data moves.
    pub async fn split(&self, range: HashRange, at: Option<u64>, expect: Option<u64>) -> Result<ShardMap, ShardError> {
        let seen = self.current().await?;
        if expect.is_some_and(|v| v != seen.map.version) {
            return Err(ShardError::Conflict { now: seen.map.version });
        }
        let next = seen.map.split(range, at)?;
        self.replace(&seen, &next).await?;
        Ok(next)
    }
}

fn encode(map: &ShardMap) -> Vec<u8> {
    serde_json::to_vec(map).expect("a shard map always serializes")
}

fn decode(key: &str, bytes: &[u8]) -> Result<ShardMap, ShardError> {
    let unreadable = |reason: String| ShardError::Unreadable { key: key.to_string(), reason };
    let map: ShardMap = serde_json::from_slice(bytes).map_err(|e| unreadable(e.to_string()))?;
    let map = map.sorted();
    map.check().map_err(|e| unreadable(e.to_string()))?;
    Ok(map)
}

#[cfg(test)]
pub(crate) mod fake {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// An etcd of one process: keys with their mod revision.
    #[derive(Default)]
    pub(crate) struct MemoryKv {
        keys: Mutex<(i64, Keys)>,
    }

    /// Key → (value, mod revision).
    type Keys = HashMap<String, (Vec<u8>, i64)>;

    impl MemoryKv {
        pub(crate) fn put(&self, key: &str, value: &[u8]) {
            let mut keys = self.keys.lock().unwrap();
            keys.0 += 1;
            let revision = keys.0;
            keys.1.insert(key.to_string(), (value.to_vec(), revision));
        }
    }

    impl MapKv for &MemoryKv {
        async fn get(&self, key: &str) -> Result<Option<KeyValue>, EtcdError> {
            let keys = self.keys.lock().unwrap();
            Ok(keys.1.get(key).map(|(value, rev)| KeyValue {
                key: key.to_string(),
                value: value.clone(),
                mod_revision: *rev,
                lease: 0,
            }))
        }

        async fn put_if(&self, expect: Expect, key: &str, value: Vec<u8>) -> Result<bool, EtcdError> {
            let mut keys = self.keys.lock().unwrap();
            let holds = match &expect {
                Expect::Absent(k) => !keys.1.contains_key(k),
                Expect::ModRevision(k, rev) => keys.1.get(k).is_some_and(|(_, r)| r == rev),
                Expect::Lease(..) => false,
            };
            if holds {
                keys.0 += 1;
                let revision = keys.0;
                keys.1.insert(key.to_string(), (value, revision));
            }
            Ok(holds)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::MemoryKv;
    use super::*;

    fn g(name: &str) -> GroupId {
        GroupId::new(name).unwrap()
    }

    fn run<T>(f: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    }

    #[test]
    fn init_writes_once_and_names_the_map_it_finds() {
        let kv = MemoryKv::default();
        let store = ShardMapStore::new(&kv, "/bitark");
        assert!(matches!(run(store.current()), Err(ShardError::NoMap(k)) if k == "/bitark/shards/map"));
        let map = ShardMap::even(&[g("a"), g("b")]).unwrap();
        run(store.init(&map)).unwrap();
        assert_eq!(run(store.current()).unwrap().map, map);
        let again = run(store.init(&ShardMap::even(&[g("c")]).unwrap())).unwrap_err();
        assert!(matches!(again, ShardError::Exists { version: 1, .. }), "{again}");
    }

    #[test]
    fn of_two_changes_from_the_same_map_the_second_is_refused() {
        let kv = MemoryKv::default();
        let store = ShardMapStore::new(&kv, "/bitark");
        run(store.init(&ShardMap::even(&[g("a"), g("b")]).unwrap())).unwrap();
        let seen = run(store.current()).unwrap();
        let half = HashRange::new(0, 1 << 62).unwrap();
        run(store.replace(&seen, &seen.map.assign(half, &g("c")).unwrap())).unwrap();
        let late = run(store.replace(&seen, &seen.map.assign(half, &g("d")).unwrap())).unwrap_err();
        assert!(matches!(late, ShardError::Conflict { now: 2 }), "{late}");
        assert_eq!(run(store.current()).unwrap().map.ranges[0].group, g("c"), "the first change stands");
        let stale = run(store.assign(half, &g("d"), Some(1))).unwrap_err();
        assert!(matches!(stale, ShardError::Conflict { now: 2 }), "{stale}");
        assert_eq!(run(store.assign(half, &g("d"), Some(2))).unwrap().version, 3);
    }

    #[test]
    fn a_map_with_a_gap_is_never_written_and_never_read() {
        let kv = MemoryKv::default();
        let store = ShardMapStore::new(&kv, "/bitark");
        let mut map = ShardMap::even(&[g("a"), g("b")]).unwrap();
        map.ranges[1].range.start += 5;
        assert!(matches!(run(store.init(&map)), Err(ShardError::Invalid(_))));
        kv.put("/bitark/shards/map", &serde_json::to_vec(&map).unwrap());
        let e = run(store.read()).unwrap_err();
        assert!(e.to_string().contains("/bitark/shards/map") && e.to_string().contains("no range"), "{e}");
        kv.put("/bitark/shards/map", b"{not json");
        assert!(matches!(run(store.read()), Err(ShardError::Unreadable { .. })));
    }

    #[test]
    fn a_split_is_one_swap_guarded_on_the_version() {
        let kv = MemoryKv::default();
        let store = ShardMapStore::new(&kv, "/bitark");
        run(store.init(&ShardMap::even(&[g("a"), g("b")]).unwrap())).unwrap();
        let upper = run(store.current()).unwrap().map.ranges[1].range;
        let stale = run(store.split(upper, None, Some(0))).unwrap_err();
        assert!(matches!(stale, ShardError::Conflict { now: 1 }), "{stale}");
        let next = run(store.split(upper, None, Some(1))).unwrap();
        assert_eq!(run(store.current()).unwrap().map, next);
        assert_eq!(next.ranges.len(), 3);
        // The whole range is no range of the map any more.
        assert!(matches!(run(store.split(upper, None, None)), Err(ShardError::Invalid(_))));
    }

    #[test]
    fn a_version_that_skips_is_refused() {
        let kv = MemoryKv::default();
        let store = ShardMapStore::new(&kv, "/bitark");
        run(store.init(&ShardMap::even(&[g("a")]).unwrap())).unwrap();
        let seen = run(store.current()).unwrap();
        let mut next = seen.map.clone();
        next.version = 5;
        assert!(matches!(run(store.replace(&seen, &next)), Err(ShardError::NotNext { old: 1, new: 5 })));
    }
}
