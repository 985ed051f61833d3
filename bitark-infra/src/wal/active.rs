//! The segment being written.
//!
//! A new segment is preallocated to the full segment size (`fallocate`), and records are
//! written at an offset the writer keeps, not appended. An appending write changes the
//! file size, which `fdatasync` must then commit through the file-system journal;
//! overwriting space that is already allocated does not, and makes each group-commit
//! fsync markedly cheaper. The unused tail reads as zeros: recovery treats an all-zero
//! tail as the clean end of the log and trims it, and a segment is trimmed to its records
//! when it is closed, so only the newest segment ever carries one.

use crate::error::{IoContext, StorageError};
use crate::fsutil::fsync_dir;
use crate::wal::segment::{list_segments, segment_name};
use bitark_common::Lsn;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub(crate) struct ActiveSegment {
    pub path: PathBuf,
    file: File,
    /// Bytes of records written; the next record goes here.
    pub len: u64,
}

impl ActiveSegment {
    /// Continues the newest segment (which recovery left ending at its last record), or
    /// starts one at `next_lsn` when there is none or it is full.
    pub fn open(dir: &Path, next_lsn: Lsn, segment_size: u64) -> Result<Self, StorageError> {
        if let Some(last) = list_segments(dir)?.pop() {
            let file = OpenOptions::new().read(true).write(true).open(&last.path).at(&last.path)?;
            let len = file.metadata().at(&last.path)?.len();
            if len < segment_size && last.first_lsn <= next_lsn {
                let segment = ActiveSegment { path: last.path, file, len };
                segment.preallocate(segment_size);
                return Ok(segment);
            }
        }
        Self::create(dir, next_lsn, segment_size)
    }

    /// Creates the segment whose first record will be `first_lsn`.
    pub fn create(dir: &Path, first_lsn: Lsn, segment_size: u64) -> Result<Self, StorageError> {
        let path = dir.join(segment_name(first_lsn));
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).at(&path)?;
        let segment = ActiveSegment { path, file, len: 0 };
        segment.preallocate(segment_size);
        segment.file.sync_all().at(&segment.path)?;
        fsync_dir(dir)?;
        Ok(segment)
    }

    /// Allocates the rest of the segment. Best effort: where the file system cannot,
    /// records are simply appended.
    fn preallocate(&self, segment_size: u64) {
        if segment_size <= self.len {
            return;
        }
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let (offset, len) = (self.len as libc::off_t, (segment_size - self.len) as libc::off_t);
            // SAFETY: fallocate only reads its integer arguments; the descriptor is open
            // for writing and owned by `self.file` for the duration of the call.
            let rc = unsafe { libc::fallocate(self.file.as_raw_fd(), 0, offset, len) };
            if rc != 0 {
                tracing::debug!(
                    segment = %self.path.display(),
                    error = %std::io::Error::last_os_error(),
                    "cannot preallocate WAL segment; appending instead"
                );
            }
        }
    }

    /// Writes `bytes` after the last record.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        self.file.write_all_at(bytes, self.len).at(&self.path)?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Makes every write so far durable.
    pub fn sync(&self) -> Result<(), StorageError> {
        self.file.sync_data().at(&self.path)
    }

    /// Cuts the unused preallocated tail and makes the segment durable; called when the
    /// segment is closed (rotation, shutdown).
    pub fn seal(&self) -> Result<(), StorageError> {
        self.file.set_len(self.len).at(&self.path)?;
        self.file.sync_all().at(&self.path)
    }
}
