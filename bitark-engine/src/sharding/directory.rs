//! What a node or a router knows of the other groups: the newest shard map it read and
//! each group's master, kept fresh by a watch on etcd. Advisory only: a node decides
//! what it serves from its own log, never from this (see `node/ownership.rs`); the
//! directory names the owner of a user it refuses, and tells a router where to send.

use super::group_prefix;
use super::store::{ShardError, ShardMapStore, Versioned};
use crate::coordination::{Leader, Member};
use bitark_common::{GroupId, ShardMap};
use bitark_infra::etcd::Etcd;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The shard map and the groups' masters, as last read together.
#[derive(Clone, Debug, PartialEq)]
pub struct Directory {
    pub map: ShardMap,
    /// Each group's master URL, from its leader key; a group without one has no
    /// reachable master now.
    pub masters: HashMap<GroupId, String>,
    /// Each group's members that publish a record (under failover), master included:
    /// where a read with a write token may go.
    pub members: HashMap<GroupId, Vec<String>>,
}

impl Directory {
    /// The group that owns `user` and its master, when known.
    pub fn owner_of(&self, user: u64) -> (&GroupId, Option<&str>) {
        let group = &self.map.owner_of(user).group;
        (group, self.masters.get(group).map(String::as_str))
    }
}

/// How the watch on etcd stands.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WatchState {
    /// Whether the last read of etcd answered.
    pub connected: bool,
    /// Unix milliseconds of the last read that answered.
    pub last_read_ms: Option<u64>,
    /// Why the last read failed, when it did.
    pub last_error: Option<String>,
}

/// A shared, swappable [`Directory`] and the state of the watch that fills it.
#[derive(Clone)]
pub struct ShardView {
    directory: Arc<arc_swap::ArcSwapOption<Directory>>,
    watch: Arc<Mutex<WatchState>>,
    /// Bumped by every change of the directory.
    changes: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Default for ShardView {
    fn default() -> Self {
        ShardView {
            directory: Arc::default(),
            watch: Arc::default(),
            changes: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }
}

impl ShardView {
    /// The directory as last read; `None` before the first read answered.
    pub fn get(&self) -> Option<Arc<Directory>> {
        self.directory.load_full()
    }

    /// The version of the map last read (0: none yet).
    pub fn map_version(&self) -> u64 {
        self.directory.load().as_ref().map_or(0, |d| d.map.version)
    }

    /// Replaces the directory; a different one wakes every subscriber.
    pub fn set(&self, directory: Directory) {
        if self.get().as_deref() != Some(&directory) {
            self.directory.store(Some(Arc::new(directory)));
            self.changes.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Told of every change of the directory.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn watch_state(&self) -> WatchState {
        self.watch.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn report(&self, error: Option<&ShardError>) {
        let mut w = self.watch.lock().unwrap_or_else(PoisonError::into_inner);
        match error {
            None => {
                w.connected = true;
                w.last_error = None;
                w.last_read_ms = SystemTime::now().duration_since(UNIX_EPOCH).ok().map(|d| d.as_millis() as u64);
            }
            Some(e) => {
                w.connected = false;
                w.last_error = Some(e.to_string());
            }
        }
    }
}

/// The URL in `group`'s leader key, whether or not the map gives it a range (a move's
/// source after its last range went).
pub async fn read_master(etcd: &Etcd, prefix: &str, group: &GroupId) -> Result<Option<String>, ShardError> {
    let (kv, _) = etcd.get(&format!("{}/leader", group_prefix(prefix, group))).await?;
    Ok(kv.and_then(|kv| serde_json::from_slice::<Leader>(&kv.value).ok()).map(|leader| leader.url))
}

/// Reads the map and every group's leader key once.
pub async fn read_directory(etcd: &Etcd, prefix: &str) -> Result<Option<Directory>, ShardError> {
    let Some(Versioned { map, .. }) = ShardMapStore::new(etcd.clone(), prefix).read().await? else {
        return Ok(None);
    };
    let (mut masters, mut members) = (HashMap::new(), HashMap::new());
    for group in map.groups() {
        let keys = group_prefix(prefix, &group);
        if let Some(url) = read_master(etcd, prefix, &group).await? {
            masters.insert(group.clone(), url);
        }
        let records = etcd.get_prefix(&format!("{keys}/members/")).await?;
        let urls: Vec<String> =
            records.iter().filter_map(|kv| serde_json::from_slice::<Member>(&kv.value).ok()).map(|m| m.url).collect();
        if !urls.is_empty() {
            members.insert(group, urls);
        }
    }
    Ok(Some(Directory { map, masters, members }))
}

/// Keeps `view` fresh until the process ends: reads the directory, then again on every
/// change of the map or of a group's leader key, and at least every `every`. While
/// etcd does not answer the view keeps what it last read.
pub async fn follow(etcd: Etcd, prefix: String, view: ShardView, every: Duration) {
    let mut was_up = true;
    let mut watched: Vec<GroupId> = Vec::new();
    loop {
        // The watches start before the read, so no change between them goes unseen.
        let (tx, mut changed) = tokio::sync::mpsc::channel::<()>(1);
        let mut keys = vec![super::map_key(&prefix)];
        keys.extend(watched.iter().map(|g| format!("{}/leader", group_prefix(&prefix, g))));
        let mut watches = tokio::task::JoinSet::new();
        for key in keys {
            let (etcd, tx) = (etcd.clone(), tx.clone());
            watches.spawn(async move {
                if let Ok(mut rx) = etcd.watch_prefix(&key).await {
                    while rx.recv().await.is_some() {
                        let _ = tx.try_send(());
                    }
                }
            });
        }
        drop(tx);
        let result = read_directory(&etcd, &prefix).await.map(|d| {
            let Some(d) = d else { return false };
            if view.get().as_deref() != Some(&d) {
                tracing::info!(version = d.map.version, masters = d.masters.len(), "shard directory read");
            }
            let groups = d.map.groups();
            let regroup = groups != watched;
            watched = groups;
            view.set(d);
            regroup
        });
        match (&result, was_up) {
            (Err(e), true) => {
                tracing::warn!(error = %e, "etcd does not answer: the shard directory stays as last read")
            }
            (Ok(_), false) => tracing::info!("etcd answers again: the shard directory is fresh"),
            _ => {}
        }
        was_up = result.is_ok();
        view.report(result.as_ref().err());
        if matches!(result, Ok(true)) {
            continue;
        }
        let wait = if was_up { every } else { every.min(Duration::from_millis(500)) };
        // With every watch gone (etcd down) only the timer is left.
        tokio::select! {
            Some(()) = changed.recv() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
