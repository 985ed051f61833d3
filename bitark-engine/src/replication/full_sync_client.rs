//! Stage 5, the slave's side: getting up to date from a snapshot when the master's WAL
//! no longer can.
//!
//! Started when the master says the slave needs a full sync (NEEDS_FULL_SYNC, OUTDATED).
//! It asks `pull(appliedLsn + 1)` first (the WAL may hold it after all), then for a
//! transfer, waiting its turn with jitter while queued. It downloads the snapshot chunk
//! by chunk into `fullsync/`, checking each chunk's crc32 and fetching a damaged one
//! again, so that a restart goes on from the last chunk it has; it
//! checks the whole file's checksum and the snapshot itself, and then replaces the
//! node's whole state with it ([`super::replica::Replica::install_snapshot`]), and registers from the
//! snapshot's LSN: the master catches it up from its WAL.

use super::slave::Follower;
use bitark_common::replication::{FullSyncRequest, SnapshotRef, TransferOffer};
use bitark_common::Lsn;
use bitark_infra::fullsync::{chunk_checksum, Download};
use bitark_infra::replication::TransportError;
use rand::Rng;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Pause between two attempts that failed or were told to wait.
const RETRY: Duration = Duration::from_millis(500);
/// How often progress is logged.
const LOG_EVERY: Duration = Duration::from_secs(5);
/// Chunks requested ahead of the one being written, so that the master, the network and
/// this node's disk work at once.
const IN_FLIGHT: usize = 4;
/// Attempts at one chunk that keeps failing its checksum before the transfer restarts.
const CHUNK_ATTEMPTS: u32 = 5;

/// Why a download stopped.
enum Stop {
    /// Ask for a transfer again (the master forgot it, or the file was not right).
    Again(String),
    /// Give up for now: the node could not store the download.
    Failed(String),
}

impl Follower {
    /// Runs one full sync to the end (or until the master says none is needed).
    pub(super) async fn run_full_sync(self) {
        run(self).await
    }
}

async fn run(follower: Follower) {
    let metrics = follower.metrics().clone();
    loop {
        if follower.is_stopped() {
            follower.set_full_sync(None);
            return;
        }
        let applied = follower.replica().applied_lsn();
        // An OUTDATED slave must full-sync even while the WAL still reaches back to it:
        // the master keeps that WAL for no one, and would answer OUTDATED again.
        let outdated = follower.master_view().state.as_deref() == Some("OUTDATED");
        if !outdated {
            match follower.client().pull(follower.master_url(), applied.next()).await {
                Ok(Ok(_)) => {
                    tracing::info!(%applied, "the master's WAL holds what this slave needs: no full sync");
                    follower.set_full_sync(None);
                    // Not at once: the answer that started this sync may come again.
                    pause().await;
                    follower.register_now();
                    return;
                }
                Ok(Err(need)) => tracing::info!(reason = %need.message, "full sync needed"),
                Err(e) => {
                    tracing::debug!(error = %e, "pull failed; retrying");
                    pause().await;
                    continue;
                }
            }
        }
        let request = FullSyncRequest {
            slave_id: follower.replica().live_config().load().node.id.clone(),
            session: follower.session().to_string(),
            resume: partial_download(&follower),
        };
        let answer = match follower.client().full_sync_start(follower.master_url(), &request).await {
            Ok(answer) => answer,
            Err(TransportError::Refused { status: 409, body }) if body.contains("full_sync_not_needed") => {
                follower.register_now();
                follower.set_full_sync(None);
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "full-sync request failed; retrying");
                pause().await;
                continue;
            }
        };
        let Some(offer) = answer.transfer else {
            let position = answer.queue_position.unwrap_or(0);
            tracing::info!(position, "full sync queued at the master");
            follower.set_full_sync(Some(("queued", SnapshotRef { lsn: 0, size: 0, checksum: 0 }, 0, Some(position))));
            pause().await;
            continue;
        };
        match download(&follower, &offer).await {
            Ok(_) if follower.is_stopped() => {
                follower.set_full_sync(None);
                return;
            }
            Ok(path) => {
                follower.set_full_sync(Some(("installing", offer.snapshot, offer.snapshot.size, None)));
                let replica = follower.replica().clone();
                match tokio::task::spawn_blocking(move || replica.install_snapshot(&path)).await {
                    Ok(Ok(info)) => {
                        metrics.full_syncs.with_label_values(&["completed"]).inc();
                        follower.installed(info.lsn);
                        follower.set_full_sync(None);
                        follower.register_now();
                        return;
                    }
                    Ok(Err(e)) => {
                        metrics.full_syncs.with_label_values(&["failed"]).inc();
                        tracing::error!(error = %e, "installing the full-sync snapshot failed; starting over");
                    }
                    Err(e) => tracing::error!(error = %e, "installing the full-sync snapshot panicked"),
                }
            }
            Err(Stop::Again(why)) => {
                metrics.full_syncs.with_label_values(&["failed"]).inc();
                tracing::warn!(%why, "full-sync transfer ended early; asking again");
            }
            Err(Stop::Failed(why)) => {
                metrics.full_syncs.with_label_values(&["failed"]).inc();
                tracing::error!(%why, "full sync failed; retrying");
            }
        }
        pause().await;
    }
}

async fn pause() {
    let jitter = rand::thread_rng().gen_range(0.5..1.5);
    tokio::time::sleep(RETRY.mul_f64(jitter)).await;
}

/// The snapshot a partial download in `fullsync/` is of, to go on with it.
fn partial_download(follower: &Follower) -> Option<SnapshotRef> {
    let part = follower.replica().live_config().load().node.dir().partial_download()?;
    Some(SnapshotRef { lsn: part.lsn.0, size: part.len, checksum: part.checksum })
}

/// One chunk of transfer `id` at `offset`, checked against its crc32: a damaged one is
/// fetched again, a lost answer retried.
async fn fetch_chunk(follower: Follower, offer: TransferOffer, offset: u64) -> Result<Vec<u8>, Stop> {
    // Under the master's bandwidth cap a chunk asked for ahead waits its turn there: the
    // allowance of the chunks before it and of its own bytes.
    let mut timeout = follower.config().request_timeout;
    if offer.max_bytes_per_second > 0 {
        let ahead = ((IN_FLIGHT as u64 + 1) * offer.chunk_size) as f64 / offer.max_bytes_per_second as f64;
        timeout += Duration::from_secs_f64(ahead);
    }
    let session = follower.session().to_string();
    let mut attempts = 0;
    loop {
        if follower.is_stopped() {
            return Err(Stop::Failed("the node stopped following this master".into()));
        }
        let fetched = follower.client().full_sync_chunk(follower.master_url(), offer.id, &session, offset, timeout);
        match fetched.await {
            Ok((bytes, crc)) if chunk_checksum(&bytes) == crc && !bytes.is_empty() => return Ok(bytes),
            Ok((bytes, _)) => {
                attempts += 1;
                follower.metrics().replication_crc_failures.inc();
                tracing::warn!(offset, bytes = bytes.len(), "a full-sync chunk failed its checksum; fetching it again");
                if attempts >= CHUNK_ATTEMPTS {
                    return Err(Stop::Again(format!("the chunk at offset {offset} kept failing its checksum")));
                }
            }
            Err(TransportError::Refused { status: 404, body }) => return Err(Stop::Again(body)),
            Err(e) => {
                tracing::debug!(offset, error = %e, "full-sync chunk not received; retrying");
                pause().await;
            }
        }
    }
}

/// Downloads the snapshot of `offer`, going on from what an earlier attempt left. The
/// next chunks are fetched while the last one is written. Nothing is synced until the
/// whole file is there: a stopped process leaves what it wrote in the page cache, and
/// what a machine crash could damage the whole-file checksum catches.
async fn download(follower: &Follower, offer: &TransferOffer) -> Result<PathBuf, Stop> {
    let snapshot = offer.snapshot;
    let metrics = follower.metrics().clone();
    let data_dir = follower.replica().live_config().load().node.data_dir.clone();
    let store = |e: bitark_infra::StorageError| Stop::Failed(e.to_string());
    let joined = |e: tokio::task::JoinError| Stop::Failed(e.to_string());
    let mut file = Download::open(&data_dir, Lsn(snapshot.lsn), snapshot.checksum, snapshot.size).map_err(store)?;
    // Go on from the last whole chunk (a complete file ends with a partial one).
    if file.len < snapshot.size {
        file.truncate(file.len - file.len % offer.chunk_size).map_err(store)?;
    }
    let from = file.len;
    if from > 0 {
        tracing::info!(lsn = snapshot.lsn, from, size = snapshot.size, "resuming the full-sync download");
    }
    metrics.full_syncs.with_label_values(&[if from > 0 { "resumed" } else { "started" }]).inc();
    let started = Instant::now();
    let mut logged = Instant::now();
    let fetch = |offset| tokio::spawn(fetch_chunk(follower.clone(), offer.clone(), offset));
    // Chunks in flight, in file order; every answer but the last is a whole chunk.
    let mut in_flight = std::collections::VecDeque::new();
    let mut requested = file.len;
    loop {
        while in_flight.len() < IN_FLIGHT && requested < snapshot.size {
            in_flight.push_back(fetch(requested));
            requested += offer.chunk_size;
        }
        let Some(pending) = in_flight.pop_front() else { break };
        let chunk = match pending.await.map_err(joined)? {
            Ok(chunk) => chunk,
            Err(stop) => {
                in_flight.iter().for_each(|task| task.abort());
                return Err(stop);
            }
        };
        let len = chunk.len() as u64;
        file = tokio::task::spawn_blocking(move || file.append(&chunk).map(|()| file))
            .await
            .map_err(joined)?
            .map_err(store)?;
        metrics.full_sync_bytes.inc_by(len);
        follower.set_full_sync(Some(("downloading", snapshot, file.len, None)));
        if logged.elapsed() >= LOG_EVERY {
            logged = Instant::now();
            let rate = (file.len - from) as f64 / started.elapsed().as_secs_f64().max(0.001);
            let left = (snapshot.size - file.len) as f64 / rate.max(1.0);
            tracing::info!(
                percent = file.len * 100 / snapshot.size.max(1),
                mib_per_s = format!("{:.1}", rate / (1 << 20) as f64),
                eta_s = left as u64,
                "full-sync download"
            );
        }
    }
    let wire = started.elapsed().as_secs_f64();
    let (mut file, checksum) = tokio::task::spawn_blocking(move || file.checksum().map(|crc| (file, crc)))
        .await
        .map_err(joined)?
        .map_err(store)?;
    if checksum != snapshot.checksum {
        file.restart().map_err(store)?;
        return Err(Stop::Again(format!(
            "the downloaded snapshot's checksum is {checksum:08x}, the master's {:08x}; downloading it again",
            snapshot.checksum
        )));
    }
    tracing::info!(
        lsn = snapshot.lsn,
        bytes = snapshot.size,
        mib_per_s = format!("{:.1}", (snapshot.size - from) as f64 / wire.max(0.001) / (1 << 20) as f64),
        "full-sync snapshot downloaded and verified; installing"
    );
    fail_point_before_install();
    let synced = Instant::now();
    let path =
        tokio::task::spawn_blocking(move || file.finish(Lsn(snapshot.lsn))).await.map_err(joined)?.map_err(store)?;
    tracing::info!(sync_ms = synced.elapsed().as_millis() as u64, "full-sync snapshot made durable");
    Ok(path)
}

/// `fullsync::before-install`: a test stops the slave between download and install.
fn fail_point_before_install() {
    fail::fail_point!("fullsync::before-install");
}
