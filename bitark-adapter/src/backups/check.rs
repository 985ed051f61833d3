//! The checks every command makes of what a target holds: each file's size and crc32
//! against its manifest, records that decode, and a log with no LSN missing.

use super::error::Error;
use bitark_common::{Lsn, Record};
use bitark_infra::backup::{decode_records, FileEntry, Manifest, Target};

/// The records of the WAL file `file`, or where the first one that does not decode is.
pub(super) fn decode(file: &str, bytes: &[u8]) -> Result<Vec<Record>, Error> {
    decode_records(bytes).map_err(|(at, why)| Error::Undecodable { file: file.to_string(), at, why })
}

/// Checks that `records` (of `file`) run on from `next` with no LSN missing.
pub(super) fn check_continues(file: &str, records: &[Record], mut next: Lsn) -> Result<(), Error> {
    for record in records {
        if record.lsn != next {
            return Err(Error::Gap { file: file.to_string(), lsn: record.lsn, due: next });
        }
        next = next.next();
    }
    Ok(())
}

/// Checks the size and crc32 of the file `entry`, streaming it through `sink` piece by
/// piece (nothing of it is held).
pub(super) async fn check_streamed(
    target: &Target,
    entry: &FileEntry,
    mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> Result<(), Error> {
    let mut crc = crc32fast::Hasher::new();
    let size = target
        .get_each(&entry.path, |piece| {
            crc.update(piece);
            sink(piece)
        })
        .await
        .map_err(|source| Error::read(&entry.path, source))?;
    check_entry(entry, size, crc.finalize())
}

/// Checks that a file of `size` bytes with this `crc` is the file `entry` names.
pub(super) fn check_entry(entry: &FileEntry, size: u64, crc: u32) -> Result<(), Error> {
    if size != entry.size {
        return Err(Error::Size { path: entry.path.clone(), size, expected: entry.size });
    }
    if crc != entry.crc32 {
        return Err(Error::Crc { path: entry.path.clone(), crc, expected: entry.crc32 });
    }
    Ok(())
}

/// Reads and checks every file of `manifest`: size, crc32, records that decode, and a
/// WAL chain from its start to its end with no gap. Answers the records. The snapshot is
/// streamed, never held; `with_snapshot: false` leaves it to the caller.
pub(super) async fn check_backup(
    target: &Target,
    manifest: &Manifest,
    with_snapshot: bool,
) -> Result<Vec<Record>, Error> {
    let mut records = Vec::new();
    let mut next = Lsn(manifest.start_lsn + 1);
    for file in &manifest.files {
        if !file.path.ends_with(".wal") {
            if with_snapshot {
                check_streamed(target, file, |_| Ok(())).await?;
            }
            continue;
        }
        let bytes = target.get(&file.path).await.map_err(|source| Error::read(&file.path, source))?;
        check_entry(file, bytes.len() as u64, crc32fast::hash(&bytes))?;
        let decoded = decode(&file.path, &bytes)?;
        check_continues(&file.path, &decoded, next)?;
        next = decoded.last().map_or(next, |r| r.lsn.next());
        records.extend(decoded);
    }
    if next.0 != manifest.end_lsn + 1 {
        return Err(Error::WalEnd { id: manifest.id.clone(), wal_end: next.0 - 1, manifest_end: manifest.end_lsn });
    }
    Ok(records)
}
