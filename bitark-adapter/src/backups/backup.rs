//! `bitark backup`: an online base backup of a running node into a target.
//!
//! The node's snapshot and the log after it are read over `/admin/backup/*` while the
//! node keeps serving, and written under `base/<backup-id>/` (see
//! [`bitark_infra::backup`]); the manifest goes last, so a backup cut short is never
//! taken for a whole one. An incremental backup holds only the log since the end of the
//! newest backup of the target.

use super::catalogue::catalogue;
use super::check::{check_continues, decode};
use super::error::Error;
use crate::http::backup::BackupStarted;
use bitark_common::Lsn;
use bitark_infra::backup::{wal_file_name, FileEntry, Manifest, Target, MANIFEST, MANIFEST_FORMAT, WAL_FILE_BYTES};
use std::time::{Duration, SystemTime};

/// Bytes asked for in one read of the node's snapshot.
const SNAPSHOT_READ: u64 = 8 << 20;
/// Snapshot reads in flight at once.
const SNAPSHOT_READS_AHEAD: usize = 3;

/// What `bitark backup` is asked.
#[derive(Clone, Debug)]
pub struct BackupPlan {
    /// The node's base URL (its management URL when it has one).
    pub from: String,
    pub to: String,
    pub token: Option<String>,
    /// Begin from a snapshot taken now rather than the node's newest.
    pub fresh: bool,
    /// Store only the log since the end of the newest backup in the target.
    pub incremental: bool,
}

fn node_call(at: &str, source: reqwest::Error) -> Error {
    Error::Node { at: at.to_string(), source }
}

/// Takes an online base backup of the node at `plan.from` into `plan.to`.
pub async fn backup(plan: BackupPlan, mut say: impl FnMut(&str)) -> Result<Manifest, Error> {
    let target = Target::open(&plan.to)?;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(120)).build().map_err(Error::Client)?;
    let base = plan.from.trim_end_matches('/').to_string();
    let call = |request: reqwest::RequestBuilder| match &plan.token {
        Some(token) => request.bearer_auth(token),
        None => request,
    };
    let answer = call(http.post(format!("{base}/admin/backup?fresh={}", plan.fresh)))
        .send()
        .await
        .map_err(|e| node_call(&base, e))?;
    if !answer.status().is_success() {
        let status = answer.status();
        return Err(Error::Refused { node: base, status, body: answer.text().await.unwrap_or_default() });
    }
    let started: BackupStarted = answer.json().await.map_err(|e| node_call(&base, e))?;
    let created = SystemTime::now();
    // Sorts by time; the random part keeps two backups of the same millisecond apart.
    let id = format!(
        "{}-{:020}-{:04x}",
        humantime::format_rfc3339_millis(created).to_string().replace([':', '-'], ""),
        started.end_lsn,
        rand::random::<u16>()
    );
    let dir = Manifest::dir(&id);
    say(&format!(
        "backup {id} of node {} from {base}: snapshot at LSN {} ({} bytes), log up to LSN {}",
        started.node_id, started.snapshot_lsn, started.snapshot_size, started.end_lsn
    ));

    // Whatever happens, the node stops keeping the snapshot and log for this backup.
    let copied: Result<Manifest, Error> = async {
        // An incremental backup continues the newest backup of the target; a full one
        // starts from the snapshot, range by range, each range checked against its crc32.
        let parent = if plan.incremental {
            let (complete, _) = catalogue(&target).await?;
            let parent = complete.last().cloned().ok_or_else(|| Error::NoParent { target: target.url.clone() })?;
            if parent.end_lsn > started.end_lsn {
                return Err(Error::NotTheNode {
                    node_end: started.end_lsn,
                    parent: parent.id,
                    parent_end: parent.end_lsn,
                });
            }
            Some(parent)
        } else {
            None
        };
        let mut files = Vec::new();
        let mut snapshot_created = None;
        if parent.is_none() {
            let mut upload = target.upload(&format!("{dir}/{}", started.snapshot_file)).await?;
            // Up to SNAPSHOT_READS_AHEAD ranges are on their way while one is stored, so
            // the node's disk, the network and the target's writes overlap.
            let mut ranges = (0..started.snapshot_size).step_by(SNAPSHOT_READ as usize);
            let mut in_flight = std::collections::VecDeque::new();
            loop {
                while in_flight.len() < SNAPSHOT_READS_AHEAD {
                    let Some(offset) = ranges.next() else { break };
                    let url =
                        format!("{base}/admin/backup/{}/snapshot?offset={offset}&len={SNAPSHOT_READ}", started.id);
                    let want = SNAPSHOT_READ.min(started.snapshot_size - offset) as usize;
                    let request = call(http.get(&url));
                    in_flight.push_back(tokio::spawn(async move {
                        let answer = request.send().await.map_err(|e| node_call(&url, e))?;
                        if !answer.status().is_success() {
                            let status = answer.status();
                            return Err(Error::Answer { url, status, body: answer.text().await.unwrap_or_default() });
                        }
                        let crc =
                            answer.headers().get("x-bitark-crc32").and_then(|v| v.to_str().ok()).map(str::to_string);
                        // The pieces as they arrive, uncopied: they go to the target as they are.
                        let (mut pieces, mut got, mut hasher) = (Vec::new(), 0, crc32fast::Hasher::new());
                        let mut answer = answer;
                        while let Some(piece) = answer.chunk().await.map_err(|e| node_call(&url, e))? {
                            hasher.update(&piece);
                            got += piece.len();
                            pieces.push(piece);
                        }
                        if got != want || crc != Some(format!("{:08x}", hasher.finalize())) {
                            return Err(Error::RangeDamaged { url });
                        }
                        Ok((offset, url, pieces))
                    }));
                }
                let Some(fetch) = in_flight.pop_front() else { break };
                let fetched = fetch.await.map_err(Error::SnapshotRead).and_then(|r| r);
                let (offset, url, pieces) = match fetched {
                    Ok(fetched) => fetched,
                    Err(e) => {
                        in_flight.iter().for_each(|f| f.abort());
                        return Err(e);
                    }
                };
                if offset == 0 {
                    let head: Vec<u8> = pieces.iter().flat_map(|p| p.iter().copied()).take(64).collect();
                    let ms = bitark_infra::snapshot::header_created_ms(&head).ok_or(Error::NoHeader { url })?;
                    let at = SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
                    snapshot_created = Some(humantime::format_rfc3339_millis(at).to_string());
                }
                for piece in pieces {
                    upload.put(piece).await?;
                }
            }
            files.push(upload.finish().await?);
        }

        // The log after the snapshot (or the parent's end), up to the backup's end, in
        // files of about 64 MiB.
        let start_lsn = parent.as_ref().map_or(started.snapshot_lsn, |p| p.end_lsn);
        let mut next = Lsn(start_lsn + 1);
        let mut pending: Vec<u8> = Vec::new();
        let mut pending_first = next;
        while next.0 <= started.end_lsn {
            let url = format!("{base}/admin/backup/{}/wal?from={}", started.id, next.0);
            let answer = call(http.get(&url)).send().await.map_err(|e| node_call(&url, e))?;
            if !answer.status().is_success() {
                let status = answer.status();
                return Err(Error::Answer { url, status, body: answer.text().await.unwrap_or_default() });
            }
            let bytes = answer.bytes().await.map_err(|e| node_call(&url, e))?;
            let records = decode(&url, &bytes)?;
            let Some(last) = records.last() else {
                return Err(Error::NoRecords { url, end: started.end_lsn });
            };
            check_continues(&url, &records, next)?;
            next = last.lsn.next();
            pending.extend_from_slice(&bytes);
            if pending.len() >= WAL_FILE_BYTES || next.0 > started.end_lsn {
                let path = format!("{dir}/wal/{}", wal_file_name(pending_first));
                files.push(put_entry(&target, &path, std::mem::take(&mut pending)).await?);
                pending_first = next;
            }
        }

        let mut manifest = Manifest {
            format: MANIFEST_FORMAT,
            id: id.clone(),
            kind: if parent.is_some() { "incremental" } else { "full" }.into(),
            parent: parent.map(|p| p.id),
            node_id: started.node_id,
            epoch: started.epoch,
            start_lsn,
            end_lsn: started.end_lsn,
            created: humantime::format_rfc3339_millis(created).to_string(),
            snapshot_created,
            files,
            crc32: 0,
        };
        manifest.seal();
        Ok(manifest)
    }
    .await;
    let _ = call(http.delete(format!("{base}/admin/backup/{}", started.id))).send().await;
    let manifest = copied?;
    let text = serde_json::to_vec_pretty(&manifest).expect("a manifest serializes");
    target.put(&format!("{dir}/{MANIFEST}"), text).await?;
    let bytes: u64 = manifest.files.iter().map(|f| f.size).sum();
    say(&format!(
        "backup {id} complete: {} files, {bytes} bytes, LSN {}..={}",
        manifest.files.len(),
        manifest.start_lsn,
        manifest.end_lsn
    ));
    Ok(manifest)
}

async fn put_entry(target: &Target, path: &str, bytes: Vec<u8>) -> Result<FileEntry, Error> {
    let entry = FileEntry { path: path.to_string(), size: bytes.len() as u64, crc32: crc32fast::hash(&bytes) };
    target.put(path, bytes).await?;
    Ok(entry)
}
