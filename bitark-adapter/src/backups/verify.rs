//! `bitark backup verify`: every checksum of one backup (or of every backup of a target)
//! and, for the whole target, an archived log with no gap a backup needs.

use super::catalogue::{archive_ranges, catalogue};
use super::check::check_backup;
use super::error::Error;
use bitark_infra::backup::{Manifest, Target};

/// `bitark backup verify`: checks one backup, or every backup of the target.
pub async fn verify(target: &str, id: Option<&str>, mut say: impl FnMut(&str)) -> Result<(), Error> {
    let target = Target::open(target)?;
    let (complete, partial) = catalogue(&target).await?;
    let chosen: Vec<&Manifest> = match id {
        Some(id) => match complete.iter().find(|m| m.id == id) {
            Some(m) => vec![m],
            None if partial.iter().any(|p| p == id) => return Err(Error::CutShort { id: id.to_string() }),
            None => return Err(Error::NoSuchBackup { target: target.url.clone(), id: id.to_string() }),
        },
        None => complete.iter().collect(),
    };
    if chosen.is_empty() {
        return Err(Error::NoBackup { target: target.url.clone() });
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
                return Err(Error::ArchiveMissing { from: pair[0].1 + 1, to: pair[1].0 - 1 });
            }
        }
        if let (Some(first), Some(last)) = (ranges.first(), ranges.last()) {
            say(&format!("wal/: ok (LSN {}..={})", first.0, last.1));
        }
    }
    Ok(())
}
