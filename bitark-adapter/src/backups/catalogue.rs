//! What a target holds: its complete backups and those cut short, and the archived log
//! under `wal/` (its files, its records from an LSN on, the ranges it holds).

use super::check::{check_continues, decode};
use super::error::Error;
use bitark_common::{Lsn, Record};
use bitark_infra::backup::{Manifest, Target, MANIFEST_FORMAT};

/// The complete backups of `target` and the directories under `base/` that hold no
/// manifest (backups cut short).
pub(super) async fn catalogue(target: &Target) -> Result<(Vec<Manifest>, Vec<String>), Error> {
    let mut complete = Vec::new();
    for manifest in target.manifests().await? {
        let manifest = manifest.map_err(Error::Manifest)?;
        if manifest.format != MANIFEST_FORMAT {
            return Err(Error::ManifestFormat { id: manifest.id, format: manifest.format });
        }
        complete.push(manifest);
    }
    let mut partial: Vec<String> = Vec::new();
    for (path, _) in target.list("base").await? {
        let id = path.trim_start_matches("base/").split('/').next().unwrap_or_default().to_string();
        if !complete.iter().any(|m| m.id == id) && !partial.contains(&id) {
            partial.push(id);
        }
    }
    Ok((complete, partial))
}

/// The archived WAL files of `target` (`wal/`), in log order, with their first LSNs.
async fn archive_files(target: &Target) -> Result<Vec<(u64, String)>, Error> {
    let mut files: Vec<(u64, String)> = target
        .list("wal")
        .await?
        .into_iter()
        .filter_map(|(path, _)| {
            let first = path.rsplit('/').next()?.strip_suffix(".wal")?.parse().ok()?;
            Some((first, path))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// The records of the archived file at `path`.
async fn archived_file(target: &Target, path: &str) -> Result<Vec<Record>, Error> {
    let bytes = target.get(path).await.map_err(|source| Error::read(path, source))?;
    decode(path, &bytes)
}

/// Records of the archive from `next` on, no gap, up to `to` (or as far as it goes).
pub(super) async fn archived_records(target: &Target, mut next: Lsn, to: Option<u64>) -> Result<Vec<Record>, Error> {
    let mut out = Vec::new();
    for (first, path) in archive_files(target).await? {
        if to.is_some_and(|to| next.0 > to) || first > next.0 {
            break;
        }
        for record in archived_file(target, &path).await? {
            if record.lsn < next || to.is_some_and(|to| record.lsn.0 > to) {
                continue;
            }
            if record.lsn != next {
                return Err(Error::ArchiveGap { path, lsn: record.lsn, due: next });
            }
            next = next.next();
            out.push(record);
        }
    }
    Ok(out)
}

/// The LSN ranges the archive holds without a gap.
pub(super) async fn archive_ranges(target: &Target) -> Result<Vec<(u64, u64)>, Error> {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for (_, path) in archive_files(target).await? {
        let records = archived_file(target, &path).await?;
        let (Some(first), Some(last)) = (records.first(), records.last()) else { continue };
        check_continues(&path, &records, first.lsn)?;
        match ranges.last_mut() {
            Some((_, end)) if first.lsn.0 <= *end + 1 => *end = (*end).max(last.lsn.0),
            _ => ranges.push((first.lsn.0, last.lsn.0)),
        }
    }
    Ok(ranges)
}
