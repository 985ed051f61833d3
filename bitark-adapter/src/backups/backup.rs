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

/// What `bitark restore` is asked.
#[derive(Clone, Debug)]
pub struct RestorePlan {
    pub from: String,
    /// A backup id; default the newest full backup that reaches the target.
    pub backup: Option<String>,
    pub target: RecoveryTarget,
    pub data_dir: PathBuf,
}

/// Where a restore stops replaying the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// Everything the target holds.
    End,
    /// Up to and including this LSN.
    Lsn(u64),
    /// Every record committed at or before this time (microseconds since the Unix
    /// epoch), up to the first one committed after it.
    Time(u64),
}

impl RecoveryTarget {
    fn lsn(self) -> Option<u64> {
        match self {
            RecoveryTarget::Lsn(lsn) => Some(lsn),
            _ => None,
        }
    }
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
    let copied: Result<Manifest, String> = async {
        // An incremental backup continues the newest backup of the target; a full one
        // starts from the snapshot, range by range, each range checked against its crc32.
        let parent = if plan.incremental {
            let (complete, _) = catalogue(&target).await?;
            let parent = complete.last().cloned().ok_or_else(|| {
                format!("{} holds no backup for an incremental one to continue; take a full backup first", target.url)
            })?;
            if parent.end_lsn > started.end_lsn {
                return Err(format!(
                    "the node's log ends at LSN {}, before the end of backup {} (LSN {}): it is not the node that backup \
                     came from",
                    started.end_lsn, parent.id, parent.end_lsn
                ));
            }
            Some(parent)
        } else {
            None
        };
        let mut files = Vec::new();
        let mut snapshot_created = None;
        if parent.is_none() {
            let mut upload = target.upload(&format!("{dir}/{}", started.snapshot_file)).await.map_err(|e| e.to_string())?;
            // Up to SNAPSHOT_READS_AHEAD ranges are on their way while one is stored, so
            // the node's disk, the network and the target's writes overlap.
            let mut ranges = (0..started.snapshot_size).step_by(SNAPSHOT_READ as usize);
            let mut in_flight = std::collections::VecDeque::new();
            loop {
                while in_flight.len() < SNAPSHOT_READS_AHEAD {
                    let Some(offset) = ranges.next() else { break };
                    let url = format!("{base}/admin/backup/{}/snapshot?offset={offset}&len={SNAPSHOT_READ}", started.id);
                    let want = SNAPSHOT_READ.min(started.snapshot_size - offset) as usize;
                    let request = call(http.get(&url));
                    in_flight.push_back(tokio::spawn(async move {
                        let answer = request.send().await.map_err(|e| node_call(&url, e))?;
                        if !answer.status().is_success() {
                            return Err(format!("{url}: {} {}", answer.status(), answer.text().await.unwrap_or_default()));
                        }
                        let crc = answer.headers().get("x-bitark-crc32").and_then(|v| v.to_str().ok()).map(str::to_string);
                        // The pieces as they arrive, uncopied: they go to the target as they are.
                        let (mut pieces, mut got, mut hasher) = (Vec::new(), 0, crc32fast::Hasher::new());
                        let mut answer = answer;
                        while let Some(piece) = answer.chunk().await.map_err(|e| node_call(&url, e))? {
                            hasher.update(&piece);
                            got += piece.len();
                            pieces.push(piece);
                        }
                        if got != want || crc != Some(format!("{:08x}", hasher.finalize())) {
                            return Err(format!("{url}: the snapshot range arrived damaged or cut short"));
                        }
                        Ok((offset, url, pieces))
                    }));
                }
                let Some(fetch) = in_flight.pop_front() else { break };
                let fetched = fetch.await.map_err(|e| format!("a snapshot read failed: {e}")).and_then(|r| r);
                let (offset, url, pieces) = match fetched {
                    Ok(fetched) => fetched,
                    Err(e) => {
                        in_flight.iter().for_each(|f| f.abort());
                        return Err(e);
                    }
                };
                if offset == 0 {
                    let head: Vec<u8> = pieces.iter().flat_map(|p| p.iter().copied()).take(64).collect();
                    let ms = bitark_infra::snapshot::header_created_ms(&head)
                        .ok_or_else(|| format!("{url}: the snapshot does not start with an intact header"))?;
                    let at = SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
                    snapshot_created = Some(humantime::format_rfc3339_millis(at).to_string());
                }
                for piece in pieces {
                    upload.put(piece).await.map_err(|e| e.to_string())?;
                }
            }
            files.push(upload.finish().await.map_err(|e| e.to_string())?);
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

/// Checks the size and crc32 of the file `entry`, streaming it through `sink` piece by
/// piece (nothing of it is held).
async fn check_streamed(
    target: &Target,
    entry: &FileEntry,
    mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> Result<(), String> {
    let mut crc = crc32fast::Hasher::new();
    let size = target
        .get_each(&entry.path, |piece| {
            crc.update(piece);
            sink(piece)
        })
        .await
        .map_err(|e| format!("{}: {e}", entry.path))?;
    check_entry(entry, size, crc.finalize())
}

fn check_entry(entry: &FileEntry, size: u64, crc: u32) -> Result<(), String> {
    if size != entry.size {
        return Err(format!("{}: {size} bytes where the manifest says {}", entry.path, entry.size));
    }
    if crc != entry.crc32 {
        return Err(format!(
            "{}: crc32 {crc:08x} where the manifest says {:08x}: the file is damaged",
            entry.path, entry.crc32
        ));
    }
    Ok(())
}

/// Reads and checks every file of `manifest`: size, crc32, records that decode, and a
/// WAL chain from its start to its end with no gap. Answers the records. The snapshot is
/// streamed, never held; `with_snapshot: false` leaves it to the caller.
async fn check_backup(target: &Target, manifest: &Manifest, with_snapshot: bool) -> Result<Vec<Record>, String> {
    let mut records = Vec::new();
    let mut next = Lsn(manifest.start_lsn + 1);
    for file in &manifest.files {
        if !file.path.ends_with(".wal") {
            if with_snapshot {
                check_streamed(target, file, |_| Ok(())).await?;
            }
            continue;
        }
        let bytes = target.get(&file.path).await.map_err(|e| format!("{}: {e}", file.path))?;
        check_entry(file, bytes.len() as u64, crc32fast::hash(&bytes))?;
        let decoded =
            decode_records(&bytes).map_err(|(at, why)| format!("{}: record at byte {at}: {why}", file.path))?;
        check_continues(&decoded, next).map_err(|e| format!("{}: {e}", file.path))?;
        next = decoded.last().map_or(next, |r| r.lsn.next());
        records.extend(decoded);
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

/// The archived WAL files of `target` (`wal/`), in log order, with their first LSNs.
async fn archive_files(target: &Target) -> Result<Vec<(u64, String)>, String> {
    let mut files: Vec<(u64, String)> = target
        .list("wal")
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter_map(|(path, _)| {
            let first = path.rsplit('/').next()?.strip_suffix(".wal")?.parse().ok()?;
            Some((first, path))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Records of the archive from `next` on, no gap, up to `to` (or as far as it goes).
async fn archived_records(target: &Target, mut next: Lsn, to: Option<u64>) -> Result<Vec<Record>, String> {
    let mut out = Vec::new();
    for (first, path) in archive_files(target).await? {
        if to.is_some_and(|to| next.0 > to) || first > next.0 {
            break;
        }
        let bytes = target.get(&path).await.map_err(|e| format!("{path}: {e}"))?;
        let records = decode_records(&bytes).map_err(|(at, why)| format!("{path}: record at byte {at}: {why}"))?;
        for record in records {
            if record.lsn < next || to.is_some_and(|to| record.lsn.0 > to) {
                continue;
            }
            if record.lsn != next {
                return Err(format!(
                    "{path}: LSN {} follows where LSN {next} was due: the archive has a gap",
                    record.lsn
                ));
            }
            next = next.next();
            out.push(record);
        }
    }
    Ok(out)
}

/// The LSN ranges the archive holds without a gap.
async fn archive_ranges(target: &Target) -> Result<Vec<(u64, u64)>, String> {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for (_, path) in archive_files(target).await? {
        let bytes = target.get(&path).await.map_err(|e| format!("{path}: {e}"))?;
        let records = decode_records(&bytes).map_err(|(at, why)| format!("{path}: record at byte {at}: {why}"))?;
        let (Some(first), Some(last)) = (records.first(), records.last()) else { continue };
        check_continues(&records, first.lsn).map_err(|e| format!("{path}: {e}"))?;
        match ranges.last_mut() {
            Some((_, end)) if first.lsn.0 <= *end + 1 => *end = (*end).max(last.lsn.0),
            _ => ranges.push((first.lsn.0, last.lsn.0)),
        }
    }
    Ok(ranges)
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
        let records = check_backup(&target, manifest, true).await?;
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
        say(&format!("{id}: no manifest (a backup cut short); it can be deleted"));
    }
    if id.is_none() {
        let ranges = archive_ranges(&target).await?;
        let oldest = complete.iter().filter(|m| m.kind == "full").map(|m| m.end_lsn).min();
        for pair in ranges.windows(2) {
            if oldest.is_some_and(|oldest| pair[1].0 > oldest) {
                return Err(format!(
                    "the archive (wal/) has a gap: LSN {} to {} are missing",
                    pair[0].1 + 1,
                    pair[1].0 - 1
                ));
            }
        }
        if let (Some(first), Some(last)) = (ranges.first(), ranges.last()) {
            say(&format!("wal/: ok (LSN {}..={})", first.0, last.1));
        }
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
    let to_lsn = plan.target.lsn();
    let manifest = match (&plan.backup, plan.target) {
        (Some(id), _) => {
            complete.iter().find(|m| &m.id == id).ok_or_else(|| format!("{} holds no backup {id}", target.url))?
        }
        (None, RecoveryTarget::Time(at)) => complete
            .iter()
            .rev()
            .find(|m| m.kind == "full" && snapshot_micros(m).is_some_and(|taken| taken <= at))
            .ok_or_else(|| {
                format!(
                    "{} holds no full backup whose snapshot was taken at or before {}",
                    target.url,
                    format_micros(at)
                )
            })?,
        (None, _) => complete
            .iter()
            .rev()
            .find(|m| m.kind == "full" && to_lsn.is_none_or(|lsn| m.start_lsn <= lsn && lsn <= m.end_lsn))
            .or_else(|| complete.iter().rev().find(|m| m.kind == "full" && to_lsn.is_none_or(|lsn| m.start_lsn <= lsn)))
            .ok_or_else(|| match to_lsn {
                Some(lsn) => format!("{} holds no full backup that starts at or before LSN {lsn}", target.url),
                None => format!("{} holds no complete backup", target.url),
            })?,
    };
    if manifest.kind != "full" {
        return Err(format!("{} is an incremental backup; restore the full backup it continues", manifest.id));
    }
    if let Some(to) = to_lsn.filter(|to| *to < manifest.start_lsn) {
        return Err(format!(
            "backup {} starts at LSN {}, after the recovery target LSN {to}",
            manifest.id, manifest.start_lsn
        ));
    }
    if let RecoveryTarget::Time(at) = plan.target {
        match snapshot_micros(manifest) {
            Some(taken) if taken <= at => {}
            Some(taken) => {
                return Err(format!(
                    "the snapshot of backup {} was taken at {}, after the recovery target {}",
                    manifest.id,
                    format_micros(taken),
                    format_micros(at)
                ))
            }
            None => return Err(format!("backup {} does not say when its snapshot was taken", manifest.id)),
        }
    }
    // Everything is checked before anything is written: the backup's log, each
    // incremental backup that continues it, then the archived log past their end.
    let past_target = |records: &[Record]| match plan.target {
        RecoveryTarget::End => false,
        RecoveryTarget::Lsn(to) => records.last().is_some_and(|r| r.lsn.0 >= to),
        RecoveryTarget::Time(at) => records.last().is_some_and(|r| r.time > at),
    };
    let mut records = check_backup(&target, manifest, false).await?;
    let mut end = manifest.end_lsn;
    let mut last_id = manifest.id.clone();
    while !past_target(&records) {
        let next = complete.iter().find(|m| m.kind == "incremental" && m.parent.as_deref() == Some(last_id.as_str()));
        let Some(next) = next else { break };
        records.extend(check_backup(&target, next, false).await?);
        (end, last_id) = (next.end_lsn, next.id.clone());
        say(&format!("continued by incremental backup {} (to LSN {end})", next.id));
    }
    if !past_target(&records) {
        records.extend(archived_records(&target, Lsn(end + 1), to_lsn).await?);
    }
    let held = records.last().map_or(manifest.start_lsn, |r| r.lsn.0).max(manifest.start_lsn);
    let cut = match plan.target {
        RecoveryTarget::End => records.len(),
        RecoveryTarget::Lsn(to) => {
            if to > held {
                return Err(format!(
                    "backup {} and the archive hold records up to LSN {held}; the recovery target LSN {to} is past it",
                    manifest.id
                ));
            }
            records.partition_point(|r| r.lsn.0 <= to)
        }
        RecoveryTarget::Time(at) => {
            let cut = records.iter().position(|r| r.time == 0 || r.time > at).unwrap_or(records.len());
            if let Some(undated) = records.get(cut).filter(|r| r.time == 0) {
                return Err(format!(
                    "the record at LSN {} carries no commit time (record format 1); restore to an LSN instead",
                    undated.lsn
                ));
            }
            cut
        }
    };
    records.truncate(cut);
    let to = records.last().map_or(manifest.start_lsn, |r| r.lsn.0);

    let snapshot = manifest.snapshot().ok_or_else(|| format!("backup {} holds no snapshot", manifest.id))?;
    let written = write_data_dir(&target, dir, snapshot, &records).await;
    if let Err(e) = written {
        // Nothing half-restored stays behind: the directory was empty.
        for sub in ["snapshots", "wal"] {
            let _ = std::fs::remove_dir_all(dir.join(sub));
        }
        return Err(e);
    }
    say(&format!(
        "restored backup {} into {}: snapshot at LSN {}, {} records replayed from the log, ends at LSN {to}",
        manifest.id,
        dir.display(),
        manifest.start_lsn,
        records.len()
    ));
    if let RecoveryTarget::Time(at) = plan.target {
        match records.last() {
            Some(last) => say(&format!("the last record restored was committed at {}", format_micros(last.time))),
            None => say("no record after the snapshot was committed before the recovery target"),
        }
        if to == held && !records.is_empty() {
            say(&format!(
                "no record held is later than {}: what the node wrote after its last archived record is not in the \
                 target",
                format_micros(at)
            ));
        }
    }
    Ok(Lsn(to))
}

/// Streams the snapshot of the backup into `dir/snapshots` (checking its crc32 and its
/// contents) and writes `records` as the log after it, every file synced.
async fn write_data_dir(target: &Target, dir: &Path, snapshot: &FileEntry, records: &[Record]) -> Result<(), String> {
    let snapshots = dir.join("snapshots");
    let wal = dir.join("wal");
    for sub in [&snapshots, &wal] {
        std::fs::create_dir_all(sub).map_err(|e| format!("{}: {e}", sub.display()))?;
    }
    let name = snapshot.path.rsplit('/').next().unwrap_or_default().to_string();
    let path = snapshots.join(&name);
    let fail = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut out = std::io::BufWriter::with_capacity(8 << 20, std::fs::File::create(&path).map_err(fail)?);
    check_streamed(target, snapshot, |piece| out.write_all(piece)).await?;
    let file = out.into_inner().map_err(|e| fail(e.into_error()))?;
    file.sync_all().map_err(fail)?;
    bitark_infra::snapshot::read_snapshot(&path, |_| Ok(())).map_err(|e| format!("{}: {e}", snapshot.path))?;
    if let Some(first) = records.first() {
        let mut body = Vec::new();
        for record in records {
            record.encode_into(&mut body);
        }
        write_synced(&wal.join(wal_file_name(first.lsn)), &body)?;
    }
    for sub in [&snapshots, &wal, dir] {
        bitark_infra::fsutil::fsync_dir(sub).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// When the snapshot of `manifest` was taken, in microseconds since the Unix epoch.
fn snapshot_micros(manifest: &Manifest) -> Option<u64> {
    let at = humantime::parse_rfc3339(manifest.snapshot_created.as_deref()?).ok()?;
    at.duration_since(SystemTime::UNIX_EPOCH).ok().map(|d| d.as_micros() as u64)
}

fn format_micros(micros: u64) -> String {
    humantime::format_rfc3339_micros(SystemTime::UNIX_EPOCH + Duration::from_micros(micros)).to_string()
}

/// Parses an RFC 3339 time (`2026-12-02T10:00:00Z`, `2026-12-02T11:00:00.250+01:00`)
/// into microseconds since the Unix epoch.
pub fn parse_time(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not an RFC 3339 time such as 2026-12-02T10:00:00Z or 2026-12-02T11:00:00+01:00");
    let (local, offset_secs): (&str, i64) = if let Some(rest) = text.strip_suffix(['Z', 'z']) {
        (rest, 0)
    } else {
        let split = text.len().checked_sub(6).filter(|&at| text.is_char_boundary(at)).ok_or_else(bad)?;
        let (rest, zone) = text.split_at(split);
        let sign = match zone.as_bytes()[0] {
            b'+' => 1,
            b'-' => -1,
            _ => return Err(bad()),
        };
        let (hours, minutes) = zone[1..].split_once(':').ok_or_else(bad)?;
        let hours: i64 = hours.parse().map_err(|_| bad())?;
        let minutes: i64 = minutes.parse().map_err(|_| bad())?;
        if hours > 23 || minutes > 59 {
            return Err(bad());
        }
        (rest, sign * (hours * 3600 + minutes * 60))
    };
    let at = humantime::parse_rfc3339(&format!("{local}Z")).map_err(|_| bad())?;
    let micros = at.duration_since(SystemTime::UNIX_EPOCH).map_err(|_| bad())?.as_micros() as i64;
    u64::try_from(micros - offset_secs * 1_000_000).map_err(|_| bad())
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut file = std::fs::File::create(path).map_err(fail)?;
    file.write_all(bytes).map_err(fail)?;
    file.sync_all().map_err(fail)
}

/// What `bitark backup prune` is asked.
#[derive(Clone, Debug)]
pub struct PrunePlan {
    pub target: String,
    /// Full backups kept, newest first (at least 1).
    pub keep_full: usize,
    /// Archived WAL younger than this is kept even when no kept backup needs it.
    pub keep_wal: Duration,
    /// Say what would go, delete nothing.
    pub dry_run: bool,
}

/// A directory without a manifest this long after its newest file is a backup that was
/// cut short, not one still being written.
const ABANDONED_AFTER: Duration = Duration::from_secs(3600);

/// `bitark backup prune`: deletes the full backups past the newest `keep_full`, the
/// incremental ones that continue them, backups cut short, and archived WAL that no
/// kept backup needs and that is older than `keep_wal`. Nothing a kept backup needs to
/// be restored goes.
pub async fn prune(plan: PrunePlan, mut say: impl FnMut(&str)) -> Result<(), String> {
    if plan.keep_full == 0 {
        return Err("--keep-full must be at least 1: a target with no full backup restores nothing".into());
    }
    let target = Target::open(&plan.target).map_err(|e| e.to_string())?;
    let (complete, partial) = catalogue(&target).await?;
    let fulls: Vec<&Manifest> = complete.iter().filter(|m| m.kind == "full").collect();
    let kept: Vec<&str> = fulls.iter().rev().take(plan.keep_full).map(|m| m.id.as_str()).collect();
    let Some(oldest_kept) = fulls.get(fulls.len().saturating_sub(plan.keep_full)).copied() else {
        say("no full backup: nothing to prune");
        return Ok(());
    };
    // The full backups not kept, and the incremental ones that continue no kept backup.
    let doomed: Vec<&Manifest> = complete
        .iter()
        .filter(|m| !kept.contains(&m.id.as_str()))
        .filter(|m| m.kind == "full" || m.end_lsn <= oldest_kept.end_lsn)
        .collect();
    let now = SystemTime::now();
    let listing = target.list_dated("base").await.map_err(|e| e.to_string())?;
    let mut deletions: Vec<String> = Vec::new();
    let deleted = if plan.dry_run { "would be deleted" } else { "deleted" };
    for manifest in &doomed {
        let dir = format!("{}/", Manifest::dir(&manifest.id));
        // The manifest first: a backup deleted part way is then one cut short.
        deletions.push(format!("{dir}{MANIFEST}"));
        deletions.extend(
            listing.iter().map(|(p, _, _)| p).filter(|p| p.starts_with(&dir) && !p.ends_with(MANIFEST)).cloned(),
        );
        say(&format!("backup {}: {deleted} (LSN {}..={})", manifest.id, manifest.start_lsn, manifest.end_lsn));
    }
    for id in &partial {
        let dir = format!("{}/", Manifest::dir(id));
        let files: Vec<_> = listing.iter().filter(|(p, _, _)| p.starts_with(&dir)).collect();
        let newest = files.iter().map(|(_, _, at)| *at).max().unwrap_or(now);
        if now.duration_since(newest).unwrap_or_default() >= ABANDONED_AFTER {
            deletions.extend(files.iter().map(|(p, _, _)| p.clone()));
            say(&format!("{id}: {deleted} (a backup cut short)"));
        }
    }
    // Archived WAL wholly before the oldest kept backup's snapshot, and old enough.
    let archive = target.list_dated("wal").await.map_err(|e| e.to_string())?;
    let firsts: Vec<Option<u64>> =
        archive.iter().map(|(p, _, _)| p.rsplit('/').next()?.strip_suffix(".wal")?.parse().ok()).collect();
    let mut wal_deleted = 0;
    for (i, (path, _, at)) in archive.iter().enumerate() {
        let next_first = firsts.get(i + 1).copied().flatten();
        let before_kept = next_first.is_some_and(|next| next <= oldest_kept.start_lsn + 1);
        let old = now.duration_since(*at).unwrap_or_default() >= plan.keep_wal;
        if before_kept && old {
            deletions.push(path.clone());
            wal_deleted += 1;
        }
    }
    if wal_deleted > 0 {
        say(&format!("wal/: {wal_deleted} archived segments before LSN {} {deleted}", oldest_kept.start_lsn + 1));
    }
    if plan.dry_run {
        say(&format!("dry run: {} files would be deleted", deletions.len()));
        return Ok(());
    }
    for path in &deletions {
        target.delete(path).await.map_err(|e| e.to_string())?;
    }
    say(&format!(
        "{} files deleted; {} full backups kept, the oldest from LSN {}",
        deletions.len(),
        plan.keep_full.min(fulls.len()),
        oldest_kept.start_lsn
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_time;

    #[test]
    fn recovery_times_are_rfc_3339_with_any_offset() {
        let utc = parse_time("2026-12-02T10:00:00Z").unwrap();
        assert_eq!(utc, 1_796_205_600_000_000);
        assert_eq!(parse_time("2026-12-02T11:00:00+01:00").unwrap(), utc);
        assert_eq!(parse_time("2026-12-02T04:30:00-05:30").unwrap(), utc);
        assert_eq!(parse_time("2026-12-02T10:00:00.000250Z").unwrap(), utc + 250);
        for bad in ["yesterday", "2026-12-02", "2026-12-02T10:00:00+1", "2026-12-02T10:00:00+25:00", "", "Z"] {
            let err = parse_time(bad).unwrap_err();
            assert!(err.contains("RFC 3339"), "{bad}: {err}");
        }
    }
}
