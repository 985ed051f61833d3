//! The files of a full sync on the slave, and how a downloaded snapshot replaces the
//! whole local state in a way a crash cannot leave half done.
//!
//! ```text
//! data/fullsync/snapshot-<lsn>-<crc32 of the file>.part   the download so far (resumable)
//! data/fullsync/snapshot-<lsn>.snap                        downloaded and verified
//! data/fullsync/INSTALL                                    the commit point: 32 bytes, the LSN
//! ```
//!
//! Installing: the marker `INSTALL` is written atomically, and from that moment the new
//! state is the state: [`complete_install`] deletes every WAL segment and snapshot,
//! moves the downloaded snapshot into `snapshots/`, rewrites `slave-progress.bin` and
//! removes the marker, each step idempotent. A crash before the marker leaves the old
//! state (and the download, to resume); a crash after it is finished by the next start,
//! which calls [`complete_install`] again before recovery.

use crate::datadir::{part_name, DataDir, DOWNLOADS};
use crate::error::{IoContext, StorageError};
use crate::fixedfile::FixedFile;
use crate::fsutil::{create_dir_durable, fsync_dir, remove_durable};
use crate::replication::write_progress;
use crate::snapshot::{list_snapshots, snapshot_name};
use crate::wal::active::SPARE_NAME;
use crate::wal::remove_all;
use bitark_common::Lsn;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Directory of a full sync in the data directory.
pub const DIR: &str = DOWNLOADS;
const MARKER: FixedFile = FixedFile { magic: 0xB17A_F5F5, version: 1, what: "full-sync install marker" };
const MARKER_NAME: &str = "INSTALL";

/// A snapshot being downloaded into `fullsync/`, appended chunk by chunk.
pub struct Download {
    path: PathBuf,
    file: File,
    /// Bytes in the file so far.
    pub len: u64,
    /// The crc32 of the file so far, when it was seen from its first byte (not after a
    /// resume, which reads the file again at the end).
    crc: Option<crc32fast::Hasher>,
}

impl Download {
    /// Opens the download of the snapshot at `lsn` whose whole-file checksum is
    /// `checksum`, continuing a partial one of the same snapshot if there is one (any
    /// other partial download is deleted). `len` says where it continues.
    pub fn open(data_dir: &Path, lsn: Lsn, checksum: u32, size: u64) -> Result<Download, StorageError> {
        let dir = data_dir.join(DIR);
        create_dir_durable(&dir)?;
        let name = part_name(lsn, checksum);
        for entry in fs::read_dir(&dir).at(&dir)? {
            let path = entry.at(&dir)?.path();
            let stale = path.extension().is_some_and(|e| e == "part") && path.file_name().is_some_and(|n| *n != *name);
            if stale {
                fs::remove_file(&path).at(&path)?;
            }
        }
        let path = dir.join(name);
        let file = OpenOptions::new().read(true).append(true).create(true).open(&path).at(&path)?;
        let mut len = file.metadata().at(&path)?.len();
        if len > size {
            file.set_len(0).at(&path)?;
            len = 0;
        }
        let crc = (len == 0).then(crc32fast::Hasher::new);
        Ok(Download { path, file, len, crc })
    }

    /// Restarts the download from the first byte.
    pub fn restart(&mut self) -> Result<(), StorageError> {
        self.file.set_len(0).at(&self.path)?;
        self.len = 0;
        self.crc = Some(crc32fast::Hasher::new());
        Ok(())
    }

    /// Cuts the download back to `len` bytes (a chunk boundary to resume from).
    pub fn truncate(&mut self, len: u64) -> Result<(), StorageError> {
        if len < self.len {
            self.file.set_len(len).at(&self.path)?;
            self.len = len;
            self.crc = (len == 0).then(crc32fast::Hasher::new);
        }
        Ok(())
    }

    /// Appends a verified chunk.
    pub fn append(&mut self, chunk: &[u8]) -> Result<(), StorageError> {
        self.file.write_all(chunk).at(&self.path)?;
        self.len += chunk.len() as u64;
        if let Some(crc) = &mut self.crc {
            crc.update(chunk);
        }
        Ok(())
    }

    /// Makes what was appended durable, so a restart resumes after it.
    pub fn sync(&self) -> Result<(), StorageError> {
        self.file.sync_data().at(&self.path)
    }

    /// The crc32 of everything downloaded.
    pub fn checksum(&mut self) -> Result<u32, StorageError> {
        if let Some(crc) = &self.crc {
            return Ok(crc.clone().finalize());
        }
        let mut file = File::open(&self.path).at(&self.path)?;
        file.seek(SeekFrom::Start(0)).at(&self.path)?;
        crc_of(&mut file, &self.path)
    }

    /// Moves the whole, verified download to `fullsync/snapshot-<lsn>.snap`.
    pub fn finish(self, lsn: Lsn) -> Result<PathBuf, StorageError> {
        self.file.sync_all().at(&self.path)?;
        let target = self.path.with_file_name(snapshot_name(lsn));
        fs::rename(&self.path, &target).at(&target)?;
        fsync_dir(target.parent().unwrap_or(Path::new(".")))?;
        Ok(target)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The crc32 of a full-sync chunk.
pub fn chunk_checksum(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// The size and crc32 of a whole file.
pub fn file_checksum(path: &Path) -> Result<(u64, u32), StorageError> {
    let mut file = File::open(path).at(path)?;
    let size = file.metadata().at(path)?.len();
    Ok((size, crc_of(&mut file, path)?))
}

fn crc_of(file: &mut File, path: &Path) -> Result<u32, StorageError> {
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf).at(path)? {
            0 => return Ok(hasher.finalize()),
            n => hasher.update(&buf[..n]),
        }
    }
}

/// Reads `len` bytes of `path` at `offset` (a chunk of a snapshot being served).
pub fn read_chunk(path: &Path, offset: u64, len: usize) -> Result<Vec<u8>, StorageError> {
    let mut file = File::open(path).at(path)?;
    file.seek(SeekFrom::Start(offset)).at(path)?;
    let mut out = Vec::with_capacity(len);
    file.take(len as u64).read_to_end(&mut out).at(path)?;
    Ok(out)
}

/// The commit point of an install: from now on the snapshot at `lsn` in `fullsync/` is
/// the node's state.
pub fn commit_install(data_dir: &Path, lsn: Lsn) -> Result<(), StorageError> {
    MARKER.write(&data_dir.join(DIR).join(MARKER_NAME), lsn.0, 0)
}

/// Finishes an install committed by [`commit_install`], if there is one: the WAL and the
/// old snapshots go, the new snapshot takes their place, the progress file names it.
/// Idempotent: a crash anywhere in it is finished by calling it again. Answers the LSN
/// of the installed snapshot when there was an install to finish.
pub fn complete_install(data_dir: &Path) -> Result<Option<Lsn>, StorageError> {
    let dir = data_dir.join(DIR);
    let marker = dir.join(MARKER_NAME);
    let Some((lsn, _)) = MARKER.read(&marker)? else { return Ok(None) };
    let lsn = Lsn(lsn);
    let layout = DataDir::new(data_dir);
    let wal_dir = layout.wal();
    remove_all(&wal_dir)?;
    remove_durable(&wal_dir.join(SPARE_NAME))?;
    let snapshots = layout.snapshots();
    let downloaded = dir.join(snapshot_name(lsn));
    if downloaded.exists() {
        for (_, path) in list_snapshots(&snapshots)? {
            fs::remove_file(&path).at(&path)?;
        }
        let target = snapshots.join(snapshot_name(lsn));
        fs::rename(&downloaded, &target).at(&target)?;
        fsync_dir(&snapshots)?;
        fsync_dir(&dir)?;
    }
    write_progress(data_dir, lsn)?;
    remove_durable(&marker)?;
    Ok(Some(lsn))
}

/// Moves a damaged local state (the WAL, the snapshots, `slave-progress.bin` and any
/// download) out of the way into `discarded-<unix seconds>/` in the data directory, for
/// an operator to inspect, and leaves empty `wal/` and `snapshots/`. Answers where the
/// old files went.
pub fn discard_state(data_dir: &Path) -> Result<PathBuf, StorageError> {
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut kept = data_dir.join(format!("discarded-{stamp}"));
    for n in 1.. {
        if !kept.exists() {
            break;
        }
        kept = data_dir.join(format!("discarded-{stamp}-{n}"));
    }
    create_dir_durable(&kept)?;
    let layout = DataDir::new(data_dir);
    for from in [layout.wal(), layout.snapshots(), layout.downloads(), layout.progress_file()] {
        if from.exists() {
            let to = kept.join(from.file_name().expect("a data directory entry has a name"));
            fs::rename(&from, &to).at(&to)?;
        }
    }
    fsync_dir(&kept)?;
    fsync_dir(data_dir)?;
    create_dir_durable(&layout.wal())?;
    create_dir_durable(&layout.snapshots())?;
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::SnapshotWriter;
    use bitark_common::Epoch;

    #[test]
    fn a_discarded_state_is_kept_aside_and_leaves_empty_directories() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        for sub in ["wal", "snapshots"] {
            fs::create_dir_all(data.join(sub)).unwrap();
        }
        fs::write(data.join("wal").join("00000000000000000001.wal"), b"damaged").unwrap();
        fs::write(data.join(crate::replication::progress::FILE_NAME), b"progress").unwrap();
        let kept = discard_state(data).unwrap();
        assert_eq!(fs::read(kept.join("wal").join("00000000000000000001.wal")).unwrap(), b"damaged");
        assert!(kept.join(crate::replication::progress::FILE_NAME).exists());
        assert_eq!(fs::read_dir(data.join("wal")).unwrap().count(), 0);
        assert_eq!(fs::read_dir(data.join("snapshots")).unwrap().count(), 0);
        assert!(!data.join(crate::replication::progress::FILE_NAME).exists());
        let again = discard_state(data).unwrap();
        assert_ne!(again, kept, "a second discard in the same second does not overwrite the first");
    }

    #[test]
    fn a_download_resumes_the_same_snapshot_and_drops_another() {
        let dir = tempfile::tempdir().unwrap();
        let mut download = Download::open(dir.path(), Lsn(9), 0xabcd, 100).unwrap();
        download.append(b"0123456789").unwrap();
        download.sync().unwrap();
        drop(download);
        let mut again = Download::open(dir.path(), Lsn(9), 0xabcd, 100).unwrap();
        assert_eq!(again.len, 10, "the same snapshot resumes");
        again.append(b"abc").unwrap();
        assert_eq!(again.checksum().unwrap(), crc32fast::hash(b"0123456789abc"), "a resumed file is read again");
        again.restart().unwrap();
        again.append(b"xyz").unwrap();
        assert_eq!(again.checksum().unwrap(), crc32fast::hash(b"xyz"), "a fresh download is hashed as it comes");
        again.truncate(1).unwrap();
        assert_eq!(again.checksum().unwrap(), crc32fast::hash(b"x"), "a cut download is read again");
        drop(again);
        let other = Download::open(dir.path(), Lsn(12), 0x1234, 100).unwrap();
        assert_eq!(other.len, 0);
        let parts = fs::read_dir(dir.path().join(DIR)).unwrap().count();
        assert_eq!(parts, 1, "the download of another snapshot is gone");
    }

    #[test]
    fn an_install_replaces_log_snapshots_and_progress_and_can_be_finished_twice() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        for sub in ["wal", "snapshots", DIR] {
            fs::create_dir_all(data.join(sub)).unwrap();
        }
        fs::write(data.join("wal").join("00000000000000000001.wal"), b"old log").unwrap();
        fs::write(data.join("wal").join(SPARE_NAME), b"").unwrap();
        SnapshotWriter::create(&data.join("snapshots"), Lsn(3), Epoch(1)).unwrap().finish().unwrap();
        let new = SnapshotWriter::create(&data.join(DIR), Lsn(50), Epoch(1)).unwrap().finish().unwrap();
        assert_eq!(new.path, data.join(DIR).join(snapshot_name(Lsn(50))));

        assert_eq!(complete_install(data).unwrap(), None, "nothing to finish before the commit point");
        commit_install(data, Lsn(50)).unwrap();
        assert_eq!(complete_install(data).unwrap(), Some(Lsn(50)));
        assert_eq!(fs::read_dir(data.join("wal")).unwrap().count(), 0);
        let kept: Vec<Lsn> = list_snapshots(&data.join("snapshots")).unwrap().into_iter().map(|(l, _)| l).collect();
        assert_eq!(kept, vec![Lsn(50)]);
        assert_eq!(crate::replication::read_progress(data).unwrap().unwrap().lsn, Lsn(50));
        assert_eq!(complete_install(data).unwrap(), None, "done once, nothing left");

        // A crash after the commit point, part way: finishing again completes it.
        SnapshotWriter::create(&data.join(DIR), Lsn(80), Epoch(1)).unwrap().finish().unwrap();
        commit_install(data, Lsn(80)).unwrap();
        fs::write(data.join("wal").join("00000000000000000051.wal"), b"log after 50").unwrap();
        assert_eq!(complete_install(data).unwrap(), Some(Lsn(80)));
        let kept: Vec<Lsn> = list_snapshots(&data.join("snapshots")).unwrap().into_iter().map(|(l, _)| l).collect();
        assert_eq!(kept, vec![Lsn(80)]);
        assert_eq!(fs::read_dir(data.join("wal")).unwrap().count(), 0);
    }
}
