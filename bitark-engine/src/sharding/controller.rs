//! A move's controller (`bitark shards move`): it keeps the move's phase in a record in
//! etcd and takes each step on the two groups' masters, so a controller that dies leaves
//! a record the next one resumes from.
//!
//! Keys, under `coordination.etcd.prefix`:
//! - `<prefix>/shards/moves/<range start, 16 hex digits>`: the [`MoveRecord`], JSON,
//!   changed only by compare-and-swap. One per range: two moves of one range cannot
//!   run, and the map's ranges do not overlap, so neither can two moves.
//! - `<prefix>/shards/move-claims/<range start>`: the running controller's claim, on its
//!   lease; a controller that dies lets it lapse.
//!
//! The steps, by phase:
//! 1. `copy`: the destination stages the range and replays the source's log, until its
//!    lag is at most `max_lag` records; then the source freezes the range and the record
//!    takes the freeze point.
//! 2. `cutover`: the destination drains to the freeze point within what is left of
//!    `max_pause`; one transaction, guarded on the map's revision and the record's,
//!    gives the range to the destination and records `committed`.
//! 3. `committed`: the source drops its copy once it has logged the new map; `done`.
//!
//! Anything failing before the commit aborts: the record says `aborted` first, and only
//! then is the source thawed and the destination's staged copy dropped. While etcd cannot
//! be reached the range stays frozen; `bitark shards abort` finishes the abort later.

use super::incoming::IncomingStatus;
use super::store::map_key;
use bitark_common::{GroupId, HashRange, ShardMap};
use bitark_infra::etcd::{Etcd, EtcdError, Expect, KeyValue};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::time::{Duration, Instant};

/// A move's phase.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "phase")]
pub enum Phase {
    /// The destination stages a copy and replays the source's log.
    Copy,
    /// The source froze the range at `freeze_lsn`; the destination drains to it.
    #[serde(rename_all = "camelCase")]
    Cutover { freeze_lsn: u64 },
    /// The map gives the range to the destination; the source drops its copy.
    Committed,
    /// The source dropped its copy: the move is over.
    Done,
    /// Given up before the commit: the source takes writes again, the destination
    /// drops what it staged.
    Aborted { reason: String },
}

impl Phase {
    /// Whether the move is over, one way or the other.
    pub fn is_over(&self) -> bool {
        matches!(self, Phase::Done | Phase::Aborted { .. })
    }
}

/// A move as etcd keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MoveRecord {
    pub range: HashRange,
    pub from: GroupId,
    pub to: GroupId,
    /// The map version the move was planned on.
    pub map_version: u64,
    #[serde(flatten)]
    pub phase: Phase,
    /// The cutover's pause, from the freeze to the commit, once committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_ms: Option<u64>,
}

/// What the controller needs of etcd. [`Etcd`] implements it; tests use an in-memory one.
pub trait MoveKv: Sync {
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<KeyValue>, EtcdError>> + Send;
    fn get_prefix(&self, prefix: &str) -> impl Future<Output = Result<Vec<KeyValue>, EtcdError>> + Send;
    fn swap(
        &self,
        expect: &[Expect],
        set: Vec<(String, Vec<u8>, i64)>,
    ) -> impl Future<Output = Result<bool, EtcdError>> + Send;
    fn grant(&self, ttl: Duration) -> impl Future<Output = Result<i64, EtcdError>> + Send;
    /// Whether the lease is still alive.
    fn keep_alive(&self, lease: i64) -> impl Future<Output = Result<bool, EtcdError>> + Send;
    fn revoke(&self, lease: i64) -> impl Future<Output = Result<(), EtcdError>> + Send;
}

impl MoveKv for Etcd {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, EtcdError> {
        Ok(Etcd::get(self, key).await?.0)
    }

    async fn get_prefix(&self, prefix: &str) -> Result<Vec<KeyValue>, EtcdError> {
        Etcd::get_prefix(self, prefix).await
    }

    async fn swap(&self, expect: &[Expect], set: Vec<(String, Vec<u8>, i64)>) -> Result<bool, EtcdError> {
        Etcd::swap(self, expect, set).await
    }

    async fn grant(&self, ttl: Duration) -> Result<i64, EtcdError> {
        Ok(Etcd::grant(self, ttl).await?.id)
    }

    async fn keep_alive(&self, lease: i64) -> Result<bool, EtcdError> {
        Ok(Etcd::keep_alive(self, lease).await?.is_some())
    }

    async fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        Etcd::revoke(self, lease).await
    }
}

/// A step on a group's master that failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{step} at {url}: {reason}")]
pub struct StepError {
    pub step: &'static str,
    pub url: String,
    pub reason: String,
}

/// The steps a move takes on the groups' masters (their `/admin/shard/*` endpoints).
pub trait GroupSteps: Sync {
    /// The master URL of `group` now.
    fn master(&self, group: &GroupId) -> impl Future<Output = Result<String, StepError>> + Send;
    fn start_incoming(
        &self,
        dest: &str,
        range: HashRange,
        source: &str,
    ) -> impl Future<Output = Result<(), StepError>> + Send;
    fn incoming(
        &self,
        dest: &str,
        range: HashRange,
    ) -> impl Future<Output = Result<Option<IncomingStatus>, StepError>> + Send;
    /// Freezes (or thaws) the range on the source; answers the freeze point.
    fn freeze(
        &self,
        source: &str,
        range: HashRange,
        freeze: bool,
    ) -> impl Future<Output = Result<u64, StepError>> + Send;
    fn drain(
        &self,
        dest: &str,
        range: HashRange,
        until: u64,
        wait: Duration,
    ) -> impl Future<Output = Result<(), StepError>> + Send;
    fn stop_incoming(&self, dest: &str, range: HashRange) -> impl Future<Output = Result<(), StepError>> + Send;
    fn drop_range(&self, master: &str, range: HashRange) -> impl Future<Output = Result<(), StepError>> + Send;
}

/// How a move runs.
#[derive(Clone, Debug)]
pub struct MoveOptions {
    /// Longest the range stays frozen before the move aborts (the pause's hard cap).
    pub max_pause: Duration,
    /// Source records the destination may still have to replay when the cutover starts.
    pub max_lag: u64,
    /// Longest the copy and catch-up may take before the move aborts.
    pub copy_timeout: Duration,
    /// The claim's lease.
    pub claim_ttl: Duration,
    /// Pause between looks at the destination's progress.
    pub poll: Duration,
}

impl Default for MoveOptions {
    fn default() -> Self {
        MoveOptions {
            max_pause: Duration::from_secs(1),
            max_lag: 1000,
            copy_timeout: Duration::from_secs(3600),
            claim_ttl: Duration::from_secs(10),
            poll: Duration::from_millis(20),
        }
    }
}

/// Why a move command failed.
#[derive(Debug, thiserror::Error)]
pub enum MoveFailure {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error(transparent)]
    Step(#[from] StepError),
    #[error("{key} in etcd cannot be read: {reason}")]
    Unreadable { key: String, reason: String },
    #[error("there is no shard map yet (bitark shards init)")]
    NoMap,
    #[error("{0} is not one of the map's ranges (bitark shards show lists them; split first)")]
    NotARange(HashRange),
    #[error("{range} is group {group}'s already")]
    SameGroup { range: HashRange, group: GroupId },
    #[error("a move of {range} is running (phase {phase}); abort it or let it finish")]
    Running { range: HashRange, phase: String },
    #[error("no move of {0} is recorded")]
    NoMove(HashRange),
    #[error("another controller holds the move of {0}")]
    Claimed(HashRange),
    #[error("the move of {range} is {phase}: too far along to abort (roll it back instead)")]
    TooLate { range: HashRange, phase: String },
    #[error("the shard map or the move's record changed meanwhile; run the command again")]
    Conflict,
}

/// Why a move's copy did not get to its cutover.
#[derive(Debug, thiserror::Error)]
enum CopyStopped {
    #[error(transparent)]
    Step(#[from] StepError),
    #[error("the copy did not catch up within {0:?}")]
    Timeout(Duration),
    #[error("the controller's claim lapsed")]
    ClaimLapsed,
}

/// What a running move reports between steps.
#[derive(Clone, Debug)]
pub enum Progress {
    Copying(IncomingStatus),
    Frozen { freeze_lsn: u64 },
    Committed { pause: Duration },
    Aborted(String),
    Done,
}

/// The controller of moves under one etcd prefix.
pub struct Controller<K, G> {
    kv: K,
    steps: G,
    prefix: String,
    options: MoveOptions,
}

/// The record key of a move of `range`.
pub fn move_key(prefix: &str, range: HashRange) -> String {
    format!("{prefix}/shards/moves/{:016x}", range.start)
}

fn claim_key(prefix: &str, range: HashRange) -> String {
    format!("{prefix}/shards/move-claims/{:016x}", range.start)
}

fn phase_name(phase: &Phase) -> String {
    serde_json::to_value(phase).ok().and_then(|v| v["phase"].as_str().map(str::to_string)).unwrap_or_default()
}

impl<K: MoveKv, G: GroupSteps> Controller<K, G> {
    pub fn new(kv: K, steps: G, prefix: &str, options: MoveOptions) -> Self {
        Controller { kv, steps, prefix: prefix.to_string(), options }
    }

    /// Every move recorded, running or over.
    pub async fn status(&self) -> Result<Vec<MoveRecord>, MoveFailure> {
        let kvs = self.kv.get_prefix(&format!("{}/shards/moves/", self.prefix)).await?;
        kvs.iter().map(|kv| decode(&kv.key, &kv.value)).collect()
    }

    /// The move of `range` and its record's revision.
    async fn record(&self, range: HashRange) -> Result<Option<(MoveRecord, i64)>, MoveFailure> {
        let key = move_key(&self.prefix, range);
        let Some(kv) = self.kv.get(&key).await? else { return Ok(None) };
        Ok(Some((decode(&key, &kv.value)?, kv.mod_revision)))
    }

    /// The map and its revision.
    async fn map(&self) -> Result<(ShardMap, i64), MoveFailure> {
        let key = map_key(&self.prefix);
        let kv = self.kv.get(&key).await?.ok_or(MoveFailure::NoMap)?;
        let map: ShardMap = decode(&key, &kv.value)?;
        Ok((map.sorted(), kv.mod_revision))
    }

    /// Records a move of `range` (one of the map's ranges) to `to`, guarded on the map's
    /// revision and on no move of the range running.
    pub async fn plan(&self, range: HashRange, to: &GroupId) -> Result<MoveRecord, MoveFailure> {
        let (map, map_revision) = self.map().await?;
        let owner = map.ranges.iter().find(|r| r.range == range).ok_or(MoveFailure::NotARange(range))?;
        if &owner.group == to {
            return Err(MoveFailure::SameGroup { range, group: to.clone() });
        }
        let key = move_key(&self.prefix, range);
        let guard = match self.record(range).await? {
            Some((running, _)) if !running.phase.is_over() => {
                return Err(MoveFailure::Running { range, phase: phase_name(&running.phase) })
            }
            Some((_, revision)) => Expect::ModRevision(key.clone(), revision),
            None => Expect::Absent(key.clone()),
        };
        let record = MoveRecord {
            range,
            from: owner.group.clone(),
            to: to.clone(),
            map_version: map.version,
            phase: Phase::Copy,
            pause_ms: None,
        };
        let expect = [guard, Expect::ModRevision(map_key(&self.prefix), map_revision)];
        if !self.kv.swap(&expect, vec![(key, encode(&record), 0)]).await? {
            return Err(MoveFailure::Conflict);
        }
        Ok(record)
    }

    /// Drives the move of `range` from its recorded phase until it is over, under a
    /// claim no other controller holds; `report` hears of each step.
    pub async fn drive(&self, range: HashRange, report: impl Fn(&Progress)) -> Result<MoveRecord, MoveFailure> {
        let lease = self.claim(range).await?;
        let driven = self.drive_claimed(range, lease, &report).await;
        let _ = self.kv.revoke(lease).await;
        driven
    }

    async fn claim(&self, range: HashRange) -> Result<i64, MoveFailure> {
        let lease = self.kv.grant(self.options.claim_ttl).await?;
        let key = claim_key(&self.prefix, range);
        if !self.kv.swap(&[Expect::Absent(key.clone())], vec![(key, b"controller".to_vec(), lease)]).await? {
            let _ = self.kv.revoke(lease).await;
            return Err(MoveFailure::Claimed(range));
        }
        Ok(lease)
    }

    async fn drive_claimed(
        &self,
        range: HashRange,
        lease: i64,
        report: &impl Fn(&Progress),
    ) -> Result<MoveRecord, MoveFailure> {
        let mut frozen_at: Option<Instant> = None;
        loop {
            if !self.kv.keep_alive(lease).await? {
                return Err(MoveFailure::Claimed(range));
            }
            let (record, revision) = self.record(range).await?.ok_or(MoveFailure::NoMove(range))?;
            let (source, dest) = (self.steps.master(&record.from).await?, self.steps.master(&record.to).await?);
            let next = match &record.phase {
                Phase::Done | Phase::Aborted { .. } => return Ok(record),
                Phase::Copy => match self.copy(&record, &source, &dest, lease, report).await {
                    Ok(()) => {
                        frozen_at = Some(Instant::now());
                        let freeze_lsn = self.steps.freeze(&source, range, true).await?;
                        report(&Progress::Frozen { freeze_lsn });
                        Phase::Cutover { freeze_lsn }
                    }
                    Err(stopped) => return self.abort_recorded(record, revision, stopped.to_string(), report).await,
                },
                Phase::Cutover { freeze_lsn } => {
                    let started = *frozen_at.get_or_insert_with(Instant::now);
                    let left = self.options.max_pause.saturating_sub(started.elapsed());
                    if let Err(e) = self.steps.drain(&dest, range, *freeze_lsn, left).await {
                        let reason = format!("the destination did not drain within the pause cap: {e}");
                        return self.abort_recorded(record, revision, reason, report).await;
                    }
                    match self.commit(&record, revision, started).await? {
                        Some(_) => {
                            report(&Progress::Committed { pause: started.elapsed() });
                            continue;
                        }
                        None => {
                            let reason = "the shard map changed during the cutover".to_string();
                            return self.abort_recorded(record, revision, reason, report).await;
                        }
                    }
                }
                Phase::Committed => {
                    let _ = self.steps.stop_incoming(&dest, range).await;
                    self.drop_when_given_up(&source, range).await?;
                    report(&Progress::Done);
                    Phase::Done
                }
            };
            let set = MoveRecord { phase: next, ..record };
            let key = move_key(&self.prefix, range);
            if !self.kv.swap(&[Expect::ModRevision(key.clone(), revision)], vec![(key, encode(&set), 0)]).await? {
                return Err(MoveFailure::Conflict);
            }
        }
    }

    /// Starts the destination's copy and waits until its lag is small enough; the
    /// reason to abort otherwise.
    async fn copy(
        &self,
        record: &MoveRecord,
        source: &str,
        dest: &str,
        lease: i64,
        report: &impl Fn(&Progress),
    ) -> Result<(), CopyStopped> {
        let range = record.range;
        self.steps.start_incoming(dest, range, source).await?;
        let started = Instant::now();
        loop {
            if let Some(status) = self.steps.incoming(dest, range).await? {
                let ready = status.phase == "catch-up" && status.lag() <= self.options.max_lag;
                report(&Progress::Copying(status));
                if ready {
                    return Ok(());
                }
            }
            if started.elapsed() >= self.options.copy_timeout {
                return Err(CopyStopped::Timeout(self.options.copy_timeout));
            }
            if !self.kv.keep_alive(lease).await.unwrap_or(true) {
                return Err(CopyStopped::ClaimLapsed);
            }
            tokio::time::sleep(self.options.poll).await;
        }
    }

    /// The cutover's transaction: the range is the destination's in the next map and the
    /// record says `committed`, or neither (`None` when the map or record changed).
    async fn commit(
        &self,
        record: &MoveRecord,
        revision: i64,
        frozen: Instant,
    ) -> Result<Option<MoveRecord>, MoveFailure> {
        let (map, map_revision) = self.map().await?;
        let still = map.ranges.iter().any(|r| r.range == record.range && r.group == record.from);
        if !still {
            return Ok(None);
        }
        let next = map.assign(record.range, &record.to).map_err(|_| MoveFailure::NotARange(record.range))?;
        let committed = MoveRecord {
            phase: Phase::Committed,
            pause_ms: Some(frozen.elapsed().as_millis() as u64),
            ..record.clone()
        };
        let (key, mkey) = (move_key(&self.prefix, record.range), map_key(&self.prefix));
        let expect = [Expect::ModRevision(key.clone(), revision), Expect::ModRevision(mkey.clone(), map_revision)];
        let set = vec![(mkey, encode(&next), 0), (key, encode(&committed), 0)];
        Ok(self.kv.swap(&expect, set).await?.then_some(committed))
    }

    /// Drops the source's copy once it has logged the map that gives the range away
    /// (it refuses the drop of a range it still owns), for up to a minute.
    async fn drop_when_given_up(&self, source: &str, range: HashRange) -> Result<(), MoveFailure> {
        let started = Instant::now();
        loop {
            match self.steps.drop_range(source, range).await {
                Ok(()) => return Ok(()),
                Err(e) if started.elapsed() >= Duration::from_secs(60) => return Err(e.into()),
                Err(_) => tokio::time::sleep(self.options.poll).await,
            }
        }
    }

    /// Aborts the move of `range` if it is not committed yet.
    pub async fn abort(&self, range: HashRange, reason: &str) -> Result<MoveRecord, MoveFailure> {
        let lease = self.claim(range).await?;
        let aborted = async {
            let (record, revision) = self.record(range).await?.ok_or(MoveFailure::NoMove(range))?;
            self.abort_recorded(record, revision, reason.to_string(), &|_| {}).await
        }
        .await;
        let _ = self.kv.revoke(lease).await;
        aborted
    }

    /// Records the abort, and only then thaws the source and drops what the destination
    /// staged. An abort already recorded is finished the same way.
    async fn abort_recorded(
        &self,
        record: MoveRecord,
        revision: i64,
        reason: String,
        report: &impl Fn(&Progress),
    ) -> Result<MoveRecord, MoveFailure> {
        let range = record.range;
        let record = match &record.phase {
            Phase::Copy | Phase::Cutover { .. } => {
                let aborted = MoveRecord { phase: Phase::Aborted { reason: reason.clone() }, ..record };
                let key = move_key(&self.prefix, range);
                if !self
                    .kv
                    .swap(&[Expect::ModRevision(key.clone(), revision)], vec![(key, encode(&aborted), 0)])
                    .await?
                {
                    return Err(MoveFailure::Conflict);
                }
                aborted
            }
            Phase::Aborted { .. } => record,
            other => return Err(MoveFailure::TooLate { range, phase: phase_name(other) }),
        };
        let (source, dest) = (self.steps.master(&record.from).await?, self.steps.master(&record.to).await?);
        self.steps.freeze(&source, range, false).await?;
        let _ = self.steps.stop_incoming(&dest, range).await;
        self.steps.drop_range(&dest, range).await?;
        report(&Progress::Aborted(reason));
        Ok(record)
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("a record serializes")
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, MoveFailure> {
    serde_json::from_slice(bytes).map_err(|e| MoveFailure::Unreadable { key: key.to_string(), reason: e.to_string() })
}

#[cfg(test)]
#[path = "controller_tests.rs"]
mod tests;
