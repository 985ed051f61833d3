//! The data directory: where each of a node's files lives under `node.data-dir`, the
//! lock that keeps a second process off it, and the small reads the engine makes of
//! its files. Every path the engine uses comes from [`DataDir`], so the layout is
//! spelled once, here:
//!
//! ```text
//! LOCK                  held (flock) while a node runs on the directory
//! epoch.bin             the epoch history            (epoch)
//! slave-progress.bin    how far a slave has followed (replication::progress)
//! wal/                  the log's segments           (wal)
//! snapshots/            snapshot files               (snapshot)
//! fullsync/             a slave's snapshot download  (fullsync)
//! diverged/             records a fenced master cut from its log (wal::truncate)
//! checkpoint.bin        an earlier version's file, removed when found
//! discarded-<secs>/     a damaged state moved aside  (fullsync::discard_state)
//! ```

use crate::error::{IoContext, StorageError};
use bitark_common::Lsn;
use std::fs::File;
use std::path::{Path, PathBuf};

const LOCK_NAME: &str = "LOCK";
const WAL: &str = "wal";
const SNAPSHOTS: &str = "snapshots";
const DIVERGED: &str = "diverged";
pub(crate) const EPOCH_NAME: &str = "epoch.bin";
pub(crate) const PROGRESS_NAME: &str = "slave-progress.bin";
pub(crate) const DOWNLOADS: &str = "fullsync";

/// A node's data directory, by its root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataDir {
    root: PathBuf,
}

/// The data directory held for this process; released when dropped.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

/// A partial snapshot download in `fullsync/`, named by what it is a download of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartialDownload {
    pub lsn: Lsn,
    /// The crc32 of the whole snapshot file.
    pub checksum: u32,
    /// Bytes downloaded so far.
    pub len: u64,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> DataDir {
        DataDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn wal(&self) -> PathBuf {
        self.root.join(WAL)
    }

    pub fn snapshots(&self) -> PathBuf {
        self.root.join(SNAPSHOTS)
    }

    pub fn epoch_file(&self) -> PathBuf {
        self.root.join(EPOCH_NAME)
    }

    pub fn progress_file(&self) -> PathBuf {
        self.root.join(PROGRESS_NAME)
    }

    pub fn downloads(&self) -> PathBuf {
        self.root.join(DOWNLOADS)
    }

    /// Where a fenced master's records past the new epoch's start are kept.
    pub fn diverged(&self) -> PathBuf {
        self.root.join(DIVERGED)
    }

    /// Where earlier versions kept the newest snapshot's LSN; removed when found.
    pub fn legacy_checkpoint(&self) -> PathBuf {
        self.root.join("checkpoint.bin")
    }

    /// Takes the directory for this process: an error naming the `LOCK` file when
    /// another BitArk process holds it.
    pub fn lock(&self) -> Result<DirLock, StorageError> {
        let path = self.root.join(LOCK_NAME);
        let file = File::options().create(true).truncate(false).write(true).open(&path).at(&path)?;
        match file.try_lock() {
            Ok(()) => Ok(DirLock { _file: file }),
            Err(_) => Err(StorageError::io(
                &path,
                std::io::Error::other("the data directory is in use by another BitArk process"),
            )),
        }
    }

    /// The partial snapshot download in `fullsync/`, if there is one, to go on with it.
    pub fn partial_download(&self) -> Option<PartialDownload> {
        std::fs::read_dir(self.downloads()).ok()?.filter_map(Result::ok).find_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let (lsn, checksum) = parse_part_name(&name)?;
            Some(PartialDownload { lsn, checksum, len: entry.metadata().ok()?.len() })
        })
    }
}

/// The file name of the partial download of the snapshot at `lsn` whose file's crc32
/// is `checksum`.
pub(crate) fn part_name(lsn: Lsn, checksum: u32) -> String {
    format!("snapshot-{:020}-{checksum:08x}.part", lsn.0)
}

/// The snapshot's LSN and whole-file crc32 a partial download's file name says, if it is
/// one.
fn parse_part_name(name: &str) -> Option<(Lsn, u32)> {
    let (lsn, checksum) = name.strip_prefix("snapshot-")?.strip_suffix(".part")?.split_once('-')?;
    Some((Lsn(lsn.parse().ok()?), u32::from_str_radix(checksum, 16).ok()?))
}

/// The length of the file at `path`.
pub fn file_len(path: &Path) -> Result<u64, StorageError> {
    Ok(std::fs::metadata(path).at(path)?.len())
}

/// The whole file at `path`.
pub fn read_file(path: &Path) -> Result<Vec<u8>, StorageError> {
    std::fs::read(path).at(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_directory_is_refused_naming_the_lock_file() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path());
        let held = data.lock().unwrap();
        let refused = data.lock().unwrap_err().to_string();
        assert!(refused.contains("LOCK") && refused.contains("in use"), "{refused}");
        drop(held);
        data.lock().expect("free again once the holder is gone");
    }

    #[test]
    fn a_partial_download_is_found_by_its_name_and_length() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path());
        assert_eq!(data.partial_download(), None);
        std::fs::create_dir(data.downloads()).unwrap();
        std::fs::write(data.downloads().join("INSTALL"), b"not a download").unwrap();
        std::fs::write(data.downloads().join(part_name(Lsn(42), 0xdead_beef)), b"abc").unwrap();
        assert_eq!(data.partial_download(), Some(PartialDownload { lsn: Lsn(42), checksum: 0xdead_beef, len: 3 }));
    }

    #[test]
    fn reads_name_the_file_they_failed_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"0123456789").unwrap();
        assert_eq!(read_file(&path).unwrap(), b"0123456789");
        assert_eq!(file_len(&path).unwrap(), 10);
        assert!(read_file(&dir.path().join("gone")).unwrap_err().to_string().contains("gone"));
    }
}
