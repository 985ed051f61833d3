//! Stage 5, the slave's side: getting up to date from a snapshot when the master's WAL
//! no longer can.
//!
//! Started when the master says the slave needs a full sync (NEEDS_FULL_SYNC, OUTDATED).
//! It asks `pull(appliedLsn + 1)` first (the WAL may hold it after all), then for a
//! transfer, waiting its turn with jitter while queued. It downloads the snapshot chunk
//! by chunk into `fullsync/`, checking each chunk's crc32 and fetching a damaged one
//! again, syncing as it goes so that a restart goes on from the last chunk it has; it
//! checks the whole file's checksum and the snapshot itself, and then replaces the
//! node's whole state with it ([`crate::Node::install_snapshot`]), and registers from the
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
/// Bytes downloaded between two syncs of the partial file.
const SYNC_EVERY: u64 = 16 << 20;
/// How often progress is logged.
const LOG_EVERY: Duration = Duration::from_secs(5);
/// Attempts at one chunk that keeps failing its checksum before the transfer restarts.
const CHUNK_ATTEMPTS: u32 = 5;

/// Why a download stopped.
enum Stop {
    /// Ask for a transfer again (the master forgot it, or the file was not right).
    Again(String),
    /// Give up for now: the node could not store the download.
    Failed(String),
}

/// Runs one full sync to the end (or until the master says none is needed).
pub(crate) async fn run(follower: Follower) {
    let metrics = follower.metrics().clone();
    loop {
        let applied = follower.node().applied_lsn();
        match follower.client().pull(follower.master_url(), applied.next()).await {
            Ok(Ok(_)) => {
                tracing::info!(%applied, "the master's WAL holds what this slave needs: no full sync");
                follower.register_now();
                follower.set_full_sync(None);
                return;
            }
            Ok(Err(need)) => tracing::info!(reason = %need.message, "full sync needed"),
            Err(e) => {
                tracing::debug!(error = %e, "pull failed; retrying");
                pause().await;
                continue;
            }
        }
        let request = FullSyncRequest {
            slave_id: follower.node().config().node.id.clone(),
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
            Ok(path) => {
                follower.set_full_sync(Some(("installing", offer.snapshot, offer.snapshot.size, None)));
                let node = follower.node().clone();
                match tokio::task::spawn_blocking(move || node.install_snapshot(&path)).await {
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
    let dir = follower.node().config().node.data_dir.join(bitark_infra::fullsync::DIR);
    std::fs::read_dir(dir).ok()?.filter_map(Result::ok).find_map(|entry| {
        let name = entry.file_name().into_string().ok()?;
        let (lsn, checksum) = name.strip_prefix("snapshot-")?.strip_suffix(".part")?.split_once('-')?;
        let size = entry.metadata().ok()?.len();
        Some(SnapshotRef { lsn: lsn.parse().ok()?, size, checksum: u32::from_str_radix(checksum, 16).ok()? })
    })
}

/// Downloads the snapshot of `offer`, going on from what an earlier attempt left.
async fn download(follower: &Follower, offer: &TransferOffer) -> Result<PathBuf, Stop> {
    let snapshot = offer.snapshot;
    let metrics = follower.metrics().clone();
    let data_dir = follower.node().config().node.data_dir.clone();
    let store = |e: bitark_infra::StorageError| Stop::Failed(e.to_string());
    let mut file = Download::open(&data_dir, Lsn(snapshot.lsn), snapshot.checksum, snapshot.size).map_err(store)?;
    // Go on from the last whole chunk (a complete file ends with a partial one).
    if file.len < snapshot.size {
        file.truncate(file.len - file.len % offer.chunk_size).map_err(store)?;
    }
    let from = file.len;
    if from > 0 {
        tracing::info!(lsn = snapshot.lsn, from, size = snapshot.size, "resuming the full-sync download");
    }
    let started = Instant::now();
    let (mut logged, mut synced) = (Instant::now(), from);
    while file.len < snapshot.size {
        let offset = file.len;
        let mut attempts = 0;
        let chunk = loop {
            match follower.client().full_sync_chunk(follower.master_url(), offer.id, offset).await {
                Ok((bytes, crc)) if chunk_checksum(&bytes) == crc && !bytes.is_empty() => break bytes,
                Ok((bytes, _)) => {
                    attempts += 1;
                    metrics.replication_crc_failures.inc();
                    tracing::warn!(
                        offset,
                        bytes = bytes.len(),
                        "a full-sync chunk failed its checksum; fetching it again"
                    );
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
        };
        file.append(&chunk).map_err(store)?;
        metrics.full_sync_bytes.inc_by(chunk.len() as u64);
        follower.set_full_sync(Some(("downloading", snapshot, file.len, None)));
        if file.len - synced >= SYNC_EVERY {
            file.sync().map_err(store)?;
            synced = file.len;
        }
        if logged.elapsed() >= LOG_EVERY {
            logged = Instant::now();
            let done = file.len - from;
            let rate = done as f64 / started.elapsed().as_secs_f64().max(0.001);
            let left = (snapshot.size - file.len) as f64 / rate.max(1.0);
            tracing::info!(
                percent = file.len * 100 / snapshot.size.max(1),
                mib_per_s = format!("{:.1}", rate / (1 << 20) as f64),
                eta_s = left as u64,
                "full-sync download"
            );
        }
    }
    file.sync().map_err(store)?;
    let checksum = file.checksum().map_err(store)?;
    if checksum != snapshot.checksum {
        file.restart().map_err(store)?;
        return Err(Stop::Again(format!(
            "the downloaded snapshot's checksum is {checksum:08x}, the master's {:08x}; downloading it again",
            snapshot.checksum
        )));
    }
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        lsn = snapshot.lsn,
        bytes = snapshot.size,
        mib_per_s = format!("{:.1}", (snapshot.size - from) as f64 / seconds.max(0.001) / (1 << 20) as f64),
        "full-sync snapshot downloaded and verified; installing"
    );
    fail_point_before_install();
    file.finish(Lsn(snapshot.lsn)).map_err(store)
}

/// `fullsync::before-install`: a test stops the slave between download and install.
fn fail_point_before_install() {
    fail::fail_point!("fullsync::before-install");
}
