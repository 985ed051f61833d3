//! A data directory built from a backup (`bitark restore`): the backup's snapshot
//! written into `snapshots/` and read back whole, then the records after it written into
//! `wal/` as one segment, every file and directory synced. A node then starts on the
//! directory as after any restart.
//!
//! The directory must be new or empty. A [`Restore`] dropped before it
//! [finishes](Restore::finish) removes the `snapshots/` and `wal/` it wrote, so nothing
//! half-restored stays behind.

use crate::datadir::DataDir;
use crate::error::{IoContext, StorageError};
use crate::fsutil::fsync_dir;
use crate::snapshot::{read_snapshot, SnapshotInfo};
use crate::wal::segment::segment_name;
use bitark_common::Record;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Snapshot bytes buffered before each write to the file.
const SNAPSHOT_BUFFER: usize = 8 << 20;

/// Why a data directory cannot be restored into, or was not.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The directory already holds files.
    #[error("{}: not empty; restore into a new data directory", .0.display())]
    NotEmpty(PathBuf),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// A restore under way into an empty data directory.
#[derive(Debug)]
pub struct Restore {
    dir: DataDir,
    /// Set by [`Restore::finish`]; until then, dropping the restore removes what it wrote.
    finished: bool,
}

/// The snapshot file of a restore, being written.
#[derive(Debug)]
pub struct SnapshotFile {
    path: PathBuf,
    out: BufWriter<File>,
}

impl Restore {
    /// Takes `dir` for a restore: it must not exist yet or be empty.
    pub fn begin(dir: DataDir) -> Result<Restore, RestoreError> {
        let root = dir.root();
        if root.exists() && std::fs::read_dir(root).at(root)?.next().is_some() {
            return Err(RestoreError::NotEmpty(root.to_path_buf()));
        }
        Ok(Restore { dir, finished: false })
    }

    /// The data directory being restored.
    pub fn dir(&self) -> &DataDir {
        &self.dir
    }

    /// Creates `snapshots/` and `wal/`, and in `snapshots/` the file `name` for the
    /// snapshot's bytes (the name it had on the node backed up).
    pub fn snapshot_file(&self, name: &str) -> Result<SnapshotFile, StorageError> {
        for sub in [self.dir.snapshots(), self.dir.wal()] {
            std::fs::create_dir_all(&sub).at(&sub)?;
        }
        let path = self.dir.snapshots().join(name);
        let file = File::create(&path).at(&path)?;
        Ok(SnapshotFile { out: BufWriter::with_capacity(SNAPSHOT_BUFFER, file), path })
    }

    /// Writes `records`, the log after the snapshot, as one segment named after the
    /// first of them, synced. No records, no segment.
    pub fn write_log(&self, records: &[Record]) -> Result<(), StorageError> {
        let Some(first) = records.first() else { return Ok(()) };
        let mut body = Vec::with_capacity(records.iter().map(Record::encoded_len).sum());
        for record in records {
            record.encode_into(&mut body);
        }
        let path = self.dir.wal().join(segment_name(first.lsn));
        let mut file = File::create(&path).at(&path)?;
        file.write_all(&body).at(&path)?;
        file.sync_all().at(&path)
    }

    /// Makes `snapshots/`, `wal/` and the directory itself durable: the restore is whole.
    pub fn finish(mut self) -> Result<(), StorageError> {
        for sub in [self.dir.snapshots(), self.dir.wal(), self.dir.root().to_path_buf()] {
            fsync_dir(&sub)?;
        }
        self.finished = true;
        Ok(())
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        if !self.finished {
            // Nothing half-restored stays behind: the directory was empty.
            for sub in [self.dir.snapshots(), self.dir.wal()] {
                let _ = std::fs::remove_dir_all(sub);
            }
        }
    }
}

impl SnapshotFile {
    /// Appends `piece` to the snapshot.
    pub fn write(&mut self, piece: &[u8]) -> std::io::Result<()> {
        self.out.write_all(piece)
    }

    /// Where the snapshot is written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Syncs the snapshot, then reads it back whole, every chunk's checksum checked:
    /// what it holds.
    pub fn finish(self) -> Result<SnapshotInfo, StorageError> {
        let file = self.out.into_inner().map_err(|e| e.into_error()).at(&self.path)?;
        file.sync_all().at(&self.path)?;
        read_snapshot(&self.path, |_| Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::SnapshotWriter;
    use bitark_common::{Command, Epoch, Lsn};

    /// The bytes of a snapshot at `lsn`, as a backup holds them.
    fn snapshot_bytes(lsn: u64) -> (String, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = SnapshotWriter::create(dir.path(), Lsn(lsn), Epoch(1)).unwrap();
        writer.add_chunk(0, 1, 2, 1, b"marks").unwrap();
        let info = writer.finish().unwrap();
        (info.path.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&info.path).unwrap())
    }

    fn record(lsn: u64) -> Record {
        Record { epoch: Epoch(1), lsn: Lsn(lsn), time: lsn, command: Command::MarkRead { user: 1, msg: lsn } }
    }

    #[test]
    fn a_restored_directory_holds_the_snapshot_and_the_log_after_it() {
        let root = tempfile::tempdir().unwrap();
        let data = DataDir::new(root.path().join("data"));
        let restore = Restore::begin(data.clone()).unwrap();
        let (name, bytes) = snapshot_bytes(10);
        let mut file = restore.snapshot_file(&name).unwrap();
        for piece in bytes.chunks(7) {
            file.write(piece).unwrap();
        }
        assert_eq!(file.finish().unwrap().lsn, Lsn(10));
        restore.write_log(&[record(11), record(12)]).unwrap();
        restore.finish().unwrap();

        assert_eq!(std::fs::read(data.snapshots().join(&name)).unwrap(), bytes);
        let mut replayed = Vec::new();
        crate::wal::replay(&data.wal(), Lsn(10), |r| replayed.push(r.lsn)).unwrap();
        assert_eq!(replayed, vec![Lsn(11), Lsn(12)]);
    }

    #[test]
    fn a_directory_that_holds_anything_is_refused() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("epoch.bin"), b"x").unwrap();
        let refused = Restore::begin(DataDir::new(root.path())).unwrap_err().to_string();
        assert!(refused.ends_with("not empty; restore into a new data directory"), "{refused}");
    }

    #[test]
    fn a_restore_that_does_not_finish_leaves_nothing_behind() {
        let root = tempfile::tempdir().unwrap();
        let data = DataDir::new(root.path().join("data"));
        let restore = Restore::begin(data.clone()).unwrap();
        let mut file = restore.snapshot_file("snapshot-00000000000000000010.snap").unwrap();
        file.write(b"not a snapshot").unwrap();
        assert!(file.finish().is_err(), "a snapshot that does not read back is refused");
        drop(restore);
        assert!(!data.snapshots().exists() && !data.wal().exists());
    }
}
