//! Stage 5, the master's side: serving snapshots to slaves the WAL cannot bring back.
//!
//! - `pull(fromLsn)` answers the log from `fromLsn` on while the WAL still holds it, or
//!   `NEED_FULL_SYNC` with the snapshot to fetch instead.
//! - A slave that needs a full sync asks for a transfer. At most
//!   `replication.full-sync.max-concurrent` run at once; the others wait in a queue
//!   (FULL_SYNC_QUEUED, with their place) and ask again, with jitter, so no resync storm
//!   can form. The snapshot is the newest one (one is taken if there is none).
//! - A transfer sends the file in chunks, each with its crc32, at most
//!   `max-bytes-per-second`: a chunk goes once the cap allows every byte up to its end,
//!   so a snapshot smaller than one chunk waits for its allowance too. Under a cap a chunk
//!   holds at most a quarter second of it (and at least 64 KiB): the burst at wire speed
//!   is one such chunk. It *pins* the snapshot and the WAL after it (see
//!   [`crate::state::Retention`]): garbage collection deletes neither while the pin
//!   holds. The pin is a lease of `pin-timeout`, renewed by every chunk, so an abandoned
//!   transfer cannot hold disk for ever.
//! - A slave that comes back from a restart asks again naming the snapshot it was
//!   downloading: the same transfer goes on from the last chunk it has.
//! - Once the slave has installed the snapshot and registers from its LSN, the pin moves
//!   to what the slave has acknowledged until it has caught up from the WAL; then the
//!   transfer is done.

use super::link::{HubInner, SlaveLink};
use super::status::SlaveState;
use super::transfers::{ChunkPlan, ChunkRefused, Transfer};
use super::view::refresh_metrics;
use crate::error::SnapshotError;
use bitark_common::replication::{FullSyncAnswer, FullSyncRequest, NeedFullSync, SnapshotRef, TransferOffer};
use bitark_common::{Lsn, Record};
use bitark_infra::datadir::file_len;
use bitark_infra::fullsync::{chunk_checksum, file_checksum, read_chunk};
use bitark_infra::snapshot::list_snapshots;
use bitark_infra::wal::{CursorRead, WalCursor};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a full-sync call was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum FullSyncError {
    /// The caller is not a slave this master follows in that session (409).
    #[error("this master does not follow slave `{0}` in that session; register first")]
    NotRegistered(String),
    /// The slave does not need a full sync: the WAL can bring it up to date (409).
    #[error("slave `{0}` does not need a full sync; the WAL holds what it needs")]
    NotNeeded(String),
    /// No such transfer, or it ended (404): ask for a new one.
    #[error("no full-sync transfer {0}; ask for a new one")]
    UnknownTransfer(u64),
    /// The offset is past the end of the snapshot (416).
    #[error("offset {offset} is past the end of the snapshot ({size} bytes)")]
    BadOffset { offset: u64, size: u64 },
    /// The snapshot cannot be read, taken or checksummed (500).
    #[error("{0}")]
    Storage(String),
}

/// The registered link of `slave` in `session`, if any.
fn link_of(hub: &HubInner, slave: &str, session: &str) -> Option<Arc<SlaveLink>> {
    let link = hub.link(slave)?;
    let same = link.lock().slave_session == session;
    same.then_some(link)
}

/// The snapshot a full sync sends now: the one a slave's partial download is of
/// (`prefer`) while it exists, else the newest, or a new one if there is none (or, for a
/// transfer, if the newest is further behind than `max-lag` allows). With
/// `pin`, the snapshot is pinned for that transfer as soon as it is chosen, before it is
/// checksummed, so garbage collection cannot take it meanwhile.
pub(crate) async fn current_snapshot(
    hub: &Arc<HubInner>,
    prefer: Option<SnapshotRef>,
    pin: Option<u64>,
) -> Result<(PathBuf, SnapshotRef), FullSyncError> {
    let storage = |e: bitark_infra::StorageError| FullSyncError::Storage(e.to_string());
    let dir = hub.dir().snapshots();
    let newest = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || list_snapshots(&dir))
            .await
            .map_err(|e| FullSyncError::Storage(e.to_string()))?
    };
    let mut snapshots = newest.map_err(storage)?;
    let preferred = prefer.and_then(|want| snapshots.iter().position(|(lsn, _)| lsn.0 == want.lsn));
    let chosen = match preferred {
        Some(at) => Some(snapshots.swap_remove(at)),
        // A transfer sends a snapshot recent enough that the slave is within max-lag
        // once it has installed it; otherwise it would be OUTDATED again at once.
        None => snapshots.pop().filter(|(lsn, _)| pin.is_none() || !super::gc::outdates(hub, *lsn)),
    };
    let (lsn, path) = match chosen {
        Some(chosen) => chosen,
        None => {
            let info = hub.state().snapshots.now().await.map_err(|e| match e {
                SnapshotError::Busy => FullSyncError::Storage("the snapshotter is busy".into()),
                e => FullSyncError::Storage(e.to_string()),
            })?;
            (info.lsn, info.path)
        }
    };
    if let Some(id) = pin {
        hub.state().retention.pin(id, lsn, Instant::now() + hub.config().full_sync.pin_timeout);
    }
    let cached = {
        let transfers = hub.transfers();
        let size = file_len(&path).ok();
        size.and_then(|size| transfers.checksums.get(&(lsn.0, size)).map(|crc| (size, *crc)))
    };
    let (size, checksum) = match cached {
        Some(known) => known,
        None => {
            let file = path.clone();
            let (size, crc) = tokio::task::spawn_blocking(move || file_checksum(&file))
                .await
                .map_err(|e| FullSyncError::Storage(e.to_string()))?
                .map_err(storage)?;
            hub.transfers().checksums.insert((lsn.0, size), crc);
            (size, crc)
        }
    };
    Ok((path, SnapshotRef { lsn: lsn.0, size, checksum }))
}

/// A slave asks for a transfer.
pub(crate) async fn start(hub: &Arc<HubInner>, request: FullSyncRequest) -> Result<FullSyncAnswer, FullSyncError> {
    let link = link_of(hub, &request.slave_id, &request.session)
        .ok_or_else(|| FullSyncError::NotRegistered(request.slave_id.clone()))?;
    // Going on with a transfer it has.
    if let Some((id, t)) = hub.transfers().running.iter().find(|(_, t)| t.slave == request.slave_id) {
        if t.session == request.session {
            return Ok(granted(hub, *id, t.snapshot, t.chunk_size));
        }
    }
    let needs = matches!(
        link.lock().state(),
        SlaveState::NeedsFullSync | SlaveState::Outdated | SlaveState::FullSyncQueued | SlaveState::FullSyncing
    );
    if !needs {
        return Err(FullSyncError::NotNeeded(request.slave_id));
    }
    // A transfer of an earlier process of the slave ends here.
    end_transfers_of_gone(hub, &request.slave_id);
    {
        let mut transfers = hub.transfers();
        if !transfers.queue.contains(&request.slave_id) {
            transfers.queue.push_back(request.slave_id.clone());
        }
        let position = transfers.queue.iter().position(|s| *s == request.slave_id).unwrap_or(0) as u64 + 1;
        let busy = transfers.running.len() + transfers.starting.len();
        let free = busy < hub.config().full_sync.max_concurrent;
        // A second ask while its transfer is being prepared (a retry after a timeout)
        // waits for that one.
        if transfers.starting.contains_key(&request.slave_id) || !(free && position == 1) {
            drop(transfers);
            let mut s = link.lock();
            s.set_state(SlaveState::FullSyncQueued);
            s.queue_position = Some(position);
            drop(s);
            refresh_metrics(hub, &link);
            return Ok(FullSyncAnswer { transfer: None, queue_position: Some(position) });
        }
    }
    let id = {
        let mut transfers = hub.transfers();
        transfers.next_id += 1;
        let id = transfers.next_id;
        transfers.starting.insert(request.slave_id.clone(), id);
        id
    };
    let found = current_snapshot(hub, request.resume, Some(id)).await;
    let mut transfers = hub.transfers();
    transfers.starting.remove(&request.slave_id);
    transfers.queue.retain(|s| *s != request.slave_id);
    let (path, snapshot) = match found {
        Ok(found) => found,
        Err(e) => {
            hub.state().retention.unpin(id);
            return Err(e);
        }
    };
    let resumed = request.resume.is_some_and(|have| have.lsn == snapshot.lsn && have.checksum == snapshot.checksum);
    let chunk = chunk_size(hub);
    {
        let now = Instant::now();
        transfers.running.insert(
            id,
            Transfer {
                slave: request.slave_id.clone(),
                session: request.session.clone(),
                path,
                snapshot,
                chunk_size: chunk,
                first_offset: None,
                started: now,
                last_progress: now,
                catching_up_to: None,
            },
        );
    }
    drop(transfers);
    let outcome = if resumed { "resumed" } else { "started" };
    hub.metrics().full_syncs.with_label_values(&[outcome]).inc();
    tracing::info!(slave = %request.slave_id, id, lsn = snapshot.lsn, bytes = snapshot.size, outcome, "full sync");
    {
        let mut s = link.lock();
        s.set_state(SlaveState::FullSyncing);
        s.full_sync = Some((0, snapshot.size));
        s.last_error = None;
    }
    refresh_metrics(hub, &link);
    Ok(granted(hub, id, snapshot, chunk))
}

/// The chunk size a transfer starts with: `chunk-size`, or under a bandwidth cap a
/// quarter second of it if that is smaller (at least 64 KiB), so that no burst at wire
/// speed is longer.
fn chunk_size(hub: &HubInner) -> u64 {
    let config = &hub.config().full_sync;
    let (size, rate) = (config.chunk_size.as_u64(), config.max_bytes_per_second.as_u64());
    if rate == 0 {
        size
    } else {
        size.min((rate / 4).max(MIN_CHUNK))
    }
}

/// The smallest chunk a bandwidth cap cuts a transfer into.
const MIN_CHUNK: u64 = 64 * 1024;

fn granted(hub: &HubInner, id: u64, snapshot: SnapshotRef, chunk_size: u64) -> FullSyncAnswer {
    let offer = TransferOffer {
        id,
        snapshot,
        chunk_size,
        max_bytes_per_second: hub.config().full_sync.max_bytes_per_second.as_u64(),
    };
    FullSyncAnswer { transfer: Some(offer), queue_position: None }
}

/// One chunk of transfer `id` from `offset`, with its crc32, for the slave process
/// whose session the transfer was granted to.
pub(crate) async fn chunk(
    hub: &Arc<HubInner>,
    id: u64,
    session: &str,
    offset: u64,
) -> Result<(Vec<u8>, u32), FullSyncError> {
    let rate = hub.config().full_sync.max_bytes_per_second.as_u64();
    let plan = hub.transfers().plan_chunk(id, session, offset, rate);
    let ChunkPlan { path, size, len, not_before } = plan.map_err(|refused| match refused {
        ChunkRefused::Unknown => FullSyncError::UnknownTransfer(id),
        ChunkRefused::BadOffset { size } => FullSyncError::BadOffset { offset, size },
    })?;
    let len = len as usize;
    if let Some(at) = not_before {
        tokio::time::sleep_until(at.into()).await;
    }
    let file = path.clone();
    let read = tokio::task::spawn_blocking(move || read_chunk(&file, offset, len))
        .await
        .map_err(|e| FullSyncError::Storage(e.to_string()))?;
    let bytes = match read {
        Ok(bytes) => bytes,
        // The snapshot went (a pin that expired): the slave must ask for a new transfer.
        Err(_) if !path.exists() => {
            let slave = hub.transfers().running.get(&id).map(|t| t.slave.clone());
            if let Some(slave) = slave {
                end_transfers_of(hub, &slave, "failed");
            }
            return Err(FullSyncError::UnknownTransfer(id));
        }
        Err(e) => return Err(FullSyncError::Storage(e.to_string())),
    };
    let crc = chunk_checksum(&bytes);
    let slave = {
        let mut transfers = hub.transfers();
        let Some(t) = transfers.running.get_mut(&id) else { return Err(FullSyncError::UnknownTransfer(id)) };
        t.last_progress = Instant::now();
        hub.state().retention.pin(id, Lsn(t.snapshot.lsn), Instant::now() + hub.config().full_sync.pin_timeout);
        t.slave.clone()
    };
    hub.metrics().full_sync_bytes.inc_by(bytes.len() as u64);
    if let Some(link) = hub.link(&slave) {
        let mut s = link.lock();
        if s.state() == SlaveState::FullSyncing {
            s.full_sync = Some((offset + bytes.len() as u64, size));
        }
    }
    Ok((bytes, crc))
}

/// A slave stands at `applied`: a transfer whose snapshot it has installed now follows
/// its catch-up from the WAL. Called on registrations and heartbeats.
pub(crate) fn progressed(hub: &HubInner, link: &SlaveLink, applied: Lsn) {
    let durable = hub.durable_lsn();
    let mut transfers = hub.transfers();
    let Some((&id, t)) = transfers.running.iter_mut().find(|(_, t)| t.slave == link.id()) else { return };
    if t.catching_up_to.is_some() || applied < Lsn(t.snapshot.lsn) {
        return;
    }
    t.catching_up_to = Some(durable);
    t.last_progress = Instant::now();
    drop(transfers);
    hub.state().retention.pin(id, applied, Instant::now() + hub.config().full_sync.pin_timeout);
    let mut s = link.lock();
    s.last_ack = s.last_ack.max(applied);
    s.next_send = applied.next();
    s.set_state(if applied >= durable { SlaveState::Alive } else { SlaveState::Slow });
    s.behind_since = (applied < durable).then(Instant::now);
    tracing::info!(slave = %link.id(), %applied, "full-sync snapshot installed by the slave; catching it up from the WAL");
    drop(s);
    link.wake();
}

const STALLED: &str = "its full sync made no progress within replication.full-sync.pin-timeout";
const OVERTAKEN: &str =
    "the log written during its full sync passed replication.max-lag before it installed the snapshot";

/// Stage 5: keeps transfers honest, on the master's module tick: a slave caught up after its
/// full sync ends its transfer; one whose transfer made no progress for `pin-timeout`
/// loses it, and so does one (bounded mode) whose snapshot fell past `max-lag` before it
/// was installed; the pin of a slave being caught up follows its acknowledgements; waiting
/// slaves that left the cluster leave the queue.
pub(crate) fn tick(hub: &HubInner) {
    let pin_timeout = hub.config().full_sync.pin_timeout;
    let links = hub.links();
    let link_named = |slave: &str| links.iter().find(|link| link.id() == slave);
    let mut transfers = hub.transfers();
    // A slave that went DEAD, or left, gives its place up; it asks again when it is back.
    transfers.queue.retain(|slave| {
        link_named(slave).is_some_and(|link| {
            matches!(link.lock().state(), SlaveState::FullSyncQueued | SlaveState::NeedsFullSync | SlaveState::Outdated)
        })
    });
    let mut ended = Vec::new();
    for (&id, t) in &transfers.running {
        let link = link_named(&t.slave).filter(|link| link.lock().slave_session == t.session);
        match (link, t.catching_up_to) {
            (None, _) => ended.push((id, "failed", "the slave that held it is gone")),
            (Some(link), Some(target)) => {
                let s = link.lock();
                if s.last_ack >= target || s.state() == SlaveState::Alive {
                    ended.push((id, "completed", ""));
                } else if t.last_progress.elapsed() >= pin_timeout || !s.state().holds_wal() {
                    // Timed out, or no longer being caught up (DEAD, OUTDATED again):
                    // the pin must not hold the WAL for it.
                    ended.push((id, "failed", STALLED));
                } else {
                    hub.state().retention.pin(id, s.last_ack, Instant::now() + pin_timeout);
                }
            }
            (Some(_), None) if t.last_progress.elapsed() >= pin_timeout => ended.push((id, "failed", STALLED)),
            // Bounded mode: the log written since the snapshot passed max-lag before the
            // slave installed it. The slave would be OUTDATED the moment it did, and the
            // pin would hold that log unbounded meanwhile: the transfer goes, the slave
            // gets a newer snapshot when it asks again.
            (Some(_), None) if super::gc::outdates(hub, Lsn(t.snapshot.lsn)) => ended.push((id, "failed", OVERTAKEN)),
            (Some(_), None) => {}
        }
    }
    let released = !ended.is_empty();
    for (id, outcome, why) in ended {
        if let Some(t) = transfers.running.remove(&id) {
            hub.state().retention.unpin(id);
            hub.metrics().full_syncs.with_label_values(&[outcome]).inc();
            tracing::info!(slave = %t.slave, id, outcome, reason = why, "full-sync transfer ended");
            if outcome == "failed" {
                if let Some(link) = link_named(&t.slave) {
                    let mut s = link.lock();
                    if s.state() == SlaveState::FullSyncing {
                        s.set_state(SlaveState::NeedsFullSync);
                        s.last_error = Some(why.into());
                    }
                }
            }
        }
    }
    // A pin let go: what it held may be collected now, not at the next snapshot.
    if released {
        hub.state().snapshots.collect();
    }
}

/// Ends every transfer of `slave` (a new process of it asked, or it was forgotten).
pub(crate) fn end_transfers_of(hub: &HubInner, slave: &str, outcome: &str) {
    end_transfers(hub, slave, outcome, None);
}

/// Ends every transfer of `slave` whose process went (it registered anew, or was
/// forgotten), keeping each one's pin for a short grace so that the slave's next process
/// can resume the same snapshot.
pub(crate) fn end_transfers_of_gone(hub: &HubInner, slave: &str) {
    let grace = hub.config().register_interval.saturating_mul(3).max(Duration::from_secs(30));
    end_transfers(hub, slave, "failed", Some(grace.min(hub.config().full_sync.pin_timeout)));
}

fn end_transfers(hub: &HubInner, slave: &str, outcome: &str, grace: Option<Duration>) {
    let mut transfers = hub.transfers();
    let ids: Vec<u64> = transfers.running.iter().filter(|(_, t)| t.slave == slave).map(|(id, _)| *id).collect();
    if !ids.is_empty() && grace.is_none() {
        hub.state().snapshots.collect();
    }
    for id in ids {
        transfers.running.remove(&id);
        match grace {
            Some(grace) => hub.state().retention.expire_at(id, Instant::now() + grace),
            None => hub.state().retention.unpin(id),
        }
        hub.metrics().full_syncs.with_label_values(&[outcome]).inc();
    }
}

/// What `pull(fromLsn)` finds.
pub enum PullAnswer {
    /// The log from `fromLsn` on (possibly none yet).
    Records(Vec<Record>),
    /// The WAL no longer reaches back to `fromLsn`: this snapshot does.
    NeedFullSync(NeedFullSync),
}

/// `pull(fromLsn)`: the next records, or the snapshot to full-sync from.
pub(crate) async fn pull(hub: &Arc<HubInner>, from: Lsn) -> Result<PullAnswer, FullSyncError> {
    let mut cursor = WalCursor::new(&hub.dir().wal(), from);
    let (max, up_to) = (hub.config().batch_max_records, hub.durable_lsn());
    let read = tokio::task::spawn_blocking(move || cursor.read(max, 4 << 20, up_to))
        .await
        .map_err(|e| FullSyncError::Storage(e.to_string()))?
        .map_err(|e| FullSyncError::Storage(e.to_string()))?;
    match read {
        CursorRead::Records(records) => Ok(PullAnswer::Records(records)),
        CursorRead::Purged { oldest } => {
            let (_, snapshot) = current_snapshot(hub, None, None).await?;
            Ok(PullAnswer::NeedFullSync(NeedFullSync {
                error: "need_full_sync".into(),
                message: format!(
                    "LSN {from} is no longer in this master's WAL, which starts at LSN {oldest}: full-sync from the \
                     snapshot at LSN {}",
                    snapshot.lsn
                ),
                min_retained_lsn: oldest.0,
                snapshot,
            }))
        }
    }
}
