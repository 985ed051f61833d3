//! Continuous archiving of the WAL (`backup.archive.target`).
//!
//! Every `backup.archive.interval` the archiver looks at the node's segments: each one
//! sealed (every segment but the one being written) that the target does not hold yet
//! is uploaded to `wal/<segment file name>`, oldest first. The log is never waited on:
//! the archiver reads sealed files on its own task, and a failed upload is tried again
//! at the next look while writes go on. Until a segment is archived, WAL garbage
//! collection keeps it; past `backup.archive.max-pending` segments waiting, the oldest
//! are given up (counted in `bitark_backup_archive_given_up_segments_total`) so the
//! disk does not fill, and the archive has a gap there.

use crate::node::Node;
use bitark_common::Lsn;
use bitark_infra::backup::{decode_records, Target};
use bitark_infra::datadir::{file_len, read_file};
use bitark_infra::wal::list_segments;
use std::collections::BTreeSet;
use std::time::SystemTime;

/// Starts archiving on the current tokio runtime when `backup.archive.target` is set.
pub fn start(node: &Node) {
    let config = node.config();
    let url = config.backup.archive.target.clone();
    if url.is_empty() {
        return;
    }
    // Nothing is purged until the archiver knows what the target holds.
    node.inner.state.retention.set_archive(Some(Lsn::ZERO));
    let target = match Target::open(&url) {
        Ok(target) => target,
        Err(e) => {
            tracing::error!(error = %e, "backup.archive.target cannot be used; the WAL is kept for it meanwhile");
            return;
        }
    };
    tracing::info!(target = %url, "archiving sealed WAL segments");
    tokio::spawn(run(node.clone(), target));
}

async fn run(node: Node, target: Target) {
    let metrics = node.inner.state.metrics.clone();
    let wal_dir = node.config().node.dir().wal();
    let mut archived: Option<BTreeSet<u64>> = None;
    let mut failing = false;
    loop {
        let interval = node.config().backup.archive.interval;
        tokio::time::sleep(interval).await;
        // What the target holds already, once.
        if archived.is_none() {
            match target.list("wal").await {
                Ok(files) => archived = Some(files.iter().filter_map(|(path, _)| first_lsn_of(path)).collect()),
                Err(e) => {
                    note_failure(&mut failing, &metrics, &e.to_string());
                    continue;
                }
            }
        }
        let Some(held) = archived.as_mut() else { continue };
        let dir = wal_dir.clone();
        let Ok(Ok(mut sealed)) = tokio::task::spawn_blocking(move || list_segments(&dir)).await else { continue };
        // The segment being written: it and what follows are kept until archived too.
        let Some(active) = sealed.pop() else { continue };
        let mut pending: Vec<_> = sealed.into_iter().filter(|s| !held.contains(&s.first_lsn.0)).collect();
        let max_pending = node.config().backup.archive.max_pending;
        if max_pending > 0 && pending.len() > max_pending {
            let given_up: Vec<_> = pending.drain(..pending.len() - max_pending).collect();
            for segment in &given_up {
                held.insert(segment.first_lsn.0);
            }
            metrics.archive_given_up.inc_by(given_up.len() as u64);
            tracing::error!(
                segments = given_up.len(),
                first = %given_up[0].first_lsn,
                "backup.archive.max-pending reached: the oldest unarchived WAL segments are given up; the archive has a gap"
            );
        }
        publish(&node, &pending, active.first_lsn);
        for segment in pending.clone() {
            let path = segment.path.clone();
            let read = tokio::task::spawn_blocking(move || read_file(&path)).await;
            let bytes = match read {
                Ok(Ok(bytes)) => bytes,
                // Collected meanwhile (given up, or the node's own GC): nothing to send.
                _ => continue,
            };
            let whole = match decode_records(&bytes) {
                Ok(_) => bytes,
                Err((at, why)) => {
                    tracing::error!(segment = %segment.path.display(), offset = at, reason = %why, "a sealed WAL segment does not decode; archiving the records before it");
                    bytes[..at].to_vec()
                }
            };
            let name = segment.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            match target.put(&format!("wal/{name}"), whole).await {
                Ok(()) => {
                    held.insert(segment.first_lsn.0);
                    metrics.archived_segments.inc();
                    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
                    metrics.archive_last_success.set(now.as_secs() as i64);
                    if failing {
                        failing = false;
                        tracing::info!("the archive takes WAL segments again");
                    }
                }
                Err(e) => {
                    note_failure(&mut failing, &metrics, &e.to_string());
                    break;
                }
            }
        }
        let left: Vec<_> = pending.into_iter().filter(|s| !held.contains(&s.first_lsn.0)).collect();
        publish(&node, &left, active.first_lsn);
    }
}

/// The first LSN of an archived segment from its path (`wal/<20 digits>.wal`).
fn first_lsn_of(path: &str) -> Option<u64> {
    path.rsplit('/').next()?.strip_suffix(".wal")?.parse().ok()
}

fn note_failure(failing: &mut bool, metrics: &bitark_infra::Metrics, error: &str) {
    metrics.archive_failures.inc();
    if !*failing {
        tracing::warn!(%error, "archiving WAL segments failed; retrying, and keeping the segments meanwhile");
    }
    *failing = true;
}

/// Shows the segments still to archive, and keeps them, and the segment being written
/// (which starts at `active`), from garbage collection.
fn publish(node: &Node, pending: &[bitark_infra::wal::SegmentFile], active: Lsn) {
    let metrics = &node.inner.state.metrics;
    let bytes: u64 = pending.iter().filter_map(|s| file_len(&s.path).ok()).sum();
    metrics.archive_pending_segments.set(pending.len() as i64);
    metrics.archive_pending_bytes.set(bytes as i64);
    let first = pending.first().map_or(active, |s| s.first_lsn);
    let keep_after = Lsn(first.0.saturating_sub(1));
    node.inner.state.retention.set_archive(Some(keep_after));
}
