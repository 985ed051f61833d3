//! `bitark backup`, `bitark backup verify` and `bitark restore`: base backups of a
//! running node into a target (a directory or S3), their checks, and a data directory
//! rebuilt from them up to a recovery target.
//!
//! A backup reads the node's snapshot and the log after it over `/admin/backup/*` while
//! the node keeps serving, and writes them under `base/<backup-id>/` (see
//! [`bitark_infra::backup`]); the manifest goes last, so a backup cut short is never
//! taken for a whole one. A restore checks every checksum of what it uses before it
//! writes anything, then writes the snapshot and the records up to the recovery target
//! into an empty data directory, from which `bitark` starts as usual.

use bitark_common::{Lsn, Record};
use bitark_infra::backup::{
    decode_records, wal_file_name, FileEntry, Manifest, Target, MANIFEST, MANIFEST_FORMAT, WAL_FILE_BYTES,
};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Bytes asked for in one read of the node's snapshot.
const SNAPSHOT_READ: u64 = 8 << 20;

/// What `bitark backup` is asked.
#[derive(Clone, Debug)]
pub struct BackupPlan {
    /// The node's base URL (its management URL when it has one).
    pub from: String,
    pub to: String,
    pub token: Option<String>,
    /// Begin from a snapshot taken now rather than the node's newest.
    pub fresh: bool,
}

/// What `bitark restore` is asked.
#[derive(Clone, Debug)]
pub struct RestorePlan {
    pub from: String,
    /// A backup id; default the newest full backup that reaches the target.
    pub backup: Option<String>,
    /// Stop after this LSN; default the end of what the target holds.
    pub to_lsn: Option<u64>,
    pub data_dir: PathBuf,
}

fn node_call(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

/// Takes an online base backup of the node at `plan.from` into `plan.to`.
pub async fn backup(plan: BackupPlan, mut say: impl FnMut(&str)) -> Result<Manifest, String> {
    let target = Target::open(&plan.to).map_err(|e| e.to_string())?;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(120)).build().map_err(|e| e.to_string())?;
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
        return Err(format!("{base} refused the backup ({status}): {}", answer.text().await.unwrap_or_default()));
    }
    let started: crate::http::backup::BackupStarted = answer.json().await.map_err(|e| node_call(&base, e))?;
    let created = SystemTime::now();
    let id = format!(
        "{}-{:020}",
        humantime::format_rfc3339_seconds(created).to_string().replace([':', '-'], ""),
        started.end_lsn
    );
    let dir = Manifest::dir(&id);
    say(&format!(
        "backup {id} of node {} from {base}: snapshot at LSN {} ({} bytes), log up to LSN {}",
        started.node_id, started.snapshot_lsn, started.snapshot_size, started.end_lsn
    ));

    // The snapshot, range by range, each range checked against the node's crc32.
    let mut upload = target.upload(&format!("{dir}/{}", started.snapshot_file)).await.map_err(|e| e.to_string())?;
    let mut offset = 0;
    while offset < started.snapshot_size {
        let url = format!("{base}/admin/backup/{}/snapshot?offset={offset}&len={SNAPSHOT_READ}", started.id);
        let answer = call(http.get(&url)).send().await.map_err(|e| node_call(&url, e))?;
        if !answer.status().is_success() {
            return Err(format!("{url}: {} {}", answer.status(), answer.text().await.unwrap_or_default()));
        }
        let crc = answer.headers().get("x-bitark-crc32").and_then(|v| v.to_str().ok()).map(str::to_string);
        let bytes = answer.bytes().await.map_err(|e| node_call(&url, e))?;
        if bytes.is_empty() || crc != Some(format!("{:08x}", crc32fast::hash(&bytes))) {
            return Err(format!("{url}: the snapshot range arrived damaged or empty"));
        }
        upload.write(&bytes).await.map_err(|e| e.to_string())?;
        offset += bytes.len() as u64;
    }
    let mut files = vec![upload.finish().await.map_err(|e| e.to_string())?];

    // The log after the snapshot, up to the backup's end, in files of about 64 MiB.
    let mut next = Lsn(started.snapshot_lsn + 1);
    let mut pending: Vec<u8> = Vec::new();
    let mut pending_first = next;
    while next.0 <= started.end_lsn {
        let url = format!("{base}/admin/backup/{}/wal?from={}", started.id, next.0);
        let answer = call(http.get(&url)).send().await.map_err(|e| node_call(&url, e))?;
        if !answer.status().is_success() {
            return Err(format!("{url}: {} {}", answer.status(), answer.text().await.unwrap_or_default()));
        }
        let bytes = answer.bytes().await.map_err(|e| node_call(&url, e))?;
        let records = decode_records(&bytes).map_err(|(at, why)| format!("{url}: record at byte {at}: {why}"))?;
        let Some(last) = records.last() else {
            return Err(format!("{url}: the node sent no record, but the backup ends at LSN {}", started.end_lsn));
        };
        check_continues(&records, next).map_err(|e| format!("{url}: {e}"))?;
        next = last.lsn.next();
        pending.extend_from_slice(&bytes);
        if pending.len() >= WAL_FILE_BYTES || next.0 > started.end_lsn {
            let path = format!("{dir}/wal/{}", wal_file_name(pending_first));
            files.push(put_entry(&target, &path, std::mem::take(&mut pending)).await?);
            pending_first = next;
        }
    }
    let _ = call(http.delete(format!("{base}/admin/backup/{}", started.id))).send().await;

    let mut manifest = Manifest {
        format: MANIFEST_FORMAT,
        id: id.clone(),
        kind: "full".into(),
        parent: None,
        node_id: started.node_id,
        epoch: started.epoch,
        start_lsn: started.snapshot_lsn,
        end_lsn: started.end_lsn,
        created: humantime::format_rfc3339_seconds(created).to_string(),
        files,
        crc32: 0,
    };
    manifest.seal();
    let text = serde_json::to_vec_pretty(&manifest).expect("a manifest serializes");
    target.put(&format!("{dir}/{MANIFEST}"), text).await.map_err(|e| e.to_string())?;
    let bytes: u64 = manifest.files.iter().map(|f| f.size).sum();
    say(&format!(
        "backup {id} complete: {} files, {bytes} bytes, LSN {}..={}",
        manifest.files.len(),
        manifest.start_lsn,
        manifest.end_lsn
    ));
    Ok(manifest)
}

async fn put_entry(target: &Target, path: &str, bytes: Vec<u8>) -> Result<FileEntry, String> {
    let entry = FileEntry { path: path.to_string(), size: bytes.len() as u64, crc32: crc32fast::hash(&bytes) };
    target.put(path, bytes).await.map_err(|e| e.to_string())?;
    Ok(entry)
}

/// Checks that `records` run on from `next` with no LSN missing.
fn check_continues(records: &[Record], mut next: Lsn) -> Result<(), String> {
    for record in records {
        if record.lsn != next {
            return Err(format!("LSN {} follows where LSN {next} was due: the WAL chain has a gap", record.lsn));
        }
        next = next.next();
    }
    Ok(())
}

/// The complete backups of `target` and the directories under `base/` that hold no
/// manifest (backups cut short).
async fn catalogue(target: &Target) -> Result<(Vec<Manifest>, Vec<String>), String> {
    let mut complete = Vec::new();
    for manifest in target.manifests().await.map_err(|e| e.to_string())? {
        let manifest = manifest.map_err(|e| format!("manifest {e}"))?;
        if manifest.format != MANIFEST_FORMAT {
            return Err(format!("{}: manifest format {} is not one this build reads", manifest.id, manifest.format));
        }
        complete.push(manifest);
    }
    let mut partial: Vec<String> = Vec::new();
    for (path, _) in target.list("base").await.map_err(|e| e.to_string())? {
        let id = path.trim_start_matches("base/").split('/').next().unwrap_or_default().to_string();
        if !complete.iter().any(|m| m.id == id) && !partial.contains(&id) {
            partial.push(id);
        }
    }
    Ok((complete, partial))
}

/// Reads and checks every file of `manifest`: size, crc32, records that decode, and a
/// WAL chain from its start to its end with no gap. Answers the records.
async fn check_backup(target: &Target, manifest: &Manifest) -> Result<Vec<Record>, String> {
    let mut records = Vec::new();
    let mut next = Lsn(manifest.start_lsn + 1);
    for file in &manifest.files {
        let bytes = target.get(&file.path).await.map_err(|e| format!("{}: {e}", file.path))?;
        if bytes.len() as u64 != file.size {
            return Err(format!("{}: {} bytes where the manifest says {}", file.path, bytes.len(), file.size));
        }
        let crc = crc32fast::hash(&bytes);
        if crc != file.crc32 {
            return Err(format!(
                "{}: crc32 {crc:08x} where the manifest says {:08x}: the file is damaged",
                file.path, file.crc32
            ));
        }
        if file.path.ends_with(".wal") {
            let decoded =
                decode_records(&bytes).map_err(|(at, why)| format!("{}: record at byte {at}: {why}", file.path))?;
            check_continues(&decoded, next).map_err(|e| format!("{}: {e}", file.path))?;
            next = decoded.last().map_or(next, |r| r.lsn.next());
            records.extend(decoded);
        }
    }
    if next.0 != manifest.end_lsn + 1 {
        return Err(format!(
            "{}: the WAL ends at LSN {}, the manifest at LSN {}",
            manifest.id,
            next.0 - 1,
            manifest.end_lsn
        ));
    }
    Ok(records)
}

/// `bitark backup verify`: checks one backup, or every backup of the target.
pub async fn verify(target: &str, id: Option<&str>, mut say: impl FnMut(&str)) -> Result<(), String> {
    let target = Target::open(target).map_err(|e| e.to_string())?;
    let (complete, partial) = catalogue(&target).await?;
    let chosen: Vec<&Manifest> = match id {
        Some(id) => match complete.iter().find(|m| m.id == id) {
            Some(m) => vec![m],
            None if partial.iter().any(|p| p == id) => {
                return Err(format!("{id} has no manifest: it is a backup that was cut short, not a backup"))
            }
            None => return Err(format!("{} holds no backup {id}", target.url)),
        },
        None => complete.iter().collect(),
    };
    if chosen.is_empty() {
        return Err(format!("{} holds no complete backup", target.url));
    }
    for manifest in chosen {
        let records = check_backup(&target, manifest).await?;
        say(&format!(
            "{}: ok ({} files, LSN {}..={}, {} records after the snapshot)",
            manifest.id,
            manifest.files.len(),
            manifest.start_lsn,
            manifest.end_lsn,
            records.len()
        ));
    }
    for id in partial {
        say(&format!("{id}: no manifest (a backup cut short); `bitark backup prune` removes it"));
    }
    Ok(())
}

/// `bitark restore`: builds a data directory from a backup up to the recovery target.
/// Answers the LSN the directory ends at.
pub async fn restore(plan: RestorePlan, mut say: impl FnMut(&str)) -> Result<Lsn, String> {
    let target = Target::open(&plan.from).map_err(|e| e.to_string())?;
    let dir = &plan.data_dir;
    if dir.exists() && std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?.next().is_some() {
        return Err(format!("{}: not empty; restore into a new data directory", dir.display()));
    }
    let (complete, _) = catalogue(&target).await?;
    let manifest = match &plan.backup {
        Some(id) => {
            complete.iter().find(|m| &m.id == id).ok_or_else(|| format!("{} holds no backup {id}", target.url))?
        }
        None => complete
            .iter()
            .rev()
            .find(|m| m.kind == "full" && plan.to_lsn.is_none_or(|lsn| m.start_lsn <= lsn && lsn <= m.end_lsn))
            .or_else(|| {
                complete.iter().rev().find(|m| m.kind == "full" && plan.to_lsn.is_none_or(|lsn| m.start_lsn <= lsn))
            })
            .ok_or_else(|| match plan.to_lsn {
                Some(lsn) => format!("{} holds no full backup that starts at or before LSN {lsn}", target.url),
                None => format!("{} holds no complete backup", target.url),
            })?,
    };
    let to = plan.to_lsn.unwrap_or(manifest.end_lsn);
    if to < manifest.start_lsn {
        return Err(format!(
            "backup {} starts at LSN {}, after the recovery target LSN {to}",
            manifest.id, manifest.start_lsn
        ));
    }
    if to > manifest.end_lsn {
        return Err(format!(
            "backup {} holds records up to LSN {}; the recovery target LSN {to} is past it",
            manifest.id, manifest.end_lsn
        ));
    }
    // Everything is checked before anything is written.
    let records = check_backup(&target, manifest).await?;
    let snapshot = manifest.snapshot().ok_or_else(|| format!("backup {} holds no snapshot", manifest.id))?;
    let snapshots = dir.join("snapshots");
    let wal = dir.join("wal");
    for sub in [&snapshots, &wal] {
        std::fs::create_dir_all(sub).map_err(|e| format!("{}: {e}", sub.display()))?;
    }
    let name = snapshot.path.rsplit('/').next().unwrap_or_default().to_string();
    let bytes = target.get(&snapshot.path).await.map_err(|e| e.to_string())?;
    write_synced(&snapshots.join(&name), &bytes)?;
    bitark_infra::snapshot::read_snapshot(&snapshots.join(&name), |_, _, _| Ok(()))
        .map_err(|e| format!("{}: {e}", snapshot.path))?;
    let kept: Vec<&Record> = records.iter().filter(|r| r.lsn.0 <= to).collect();
    if let Some(first) = kept.first() {
        let mut body = Vec::new();
        for record in &kept {
            record.encode_into(&mut body);
        }
        write_synced(&wal.join(wal_file_name(first.lsn)), &body)?;
    }
    for sub in [&snapshots, &wal, dir] {
        bitark_infra::fsutil::fsync_dir(sub).map_err(|e| e.to_string())?;
    }
    say(&format!(
        "restored backup {} into {}: snapshot at LSN {}, {} records replayed from the log, ends at LSN {to}",
        manifest.id,
        dir.display(),
        manifest.start_lsn,
        kept.len()
    ));
    Ok(Lsn(to))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut file = std::fs::File::create(path).map_err(fail)?;
    file.write_all(bytes).map_err(fail)?;
    file.sync_all().map_err(fail)
}
