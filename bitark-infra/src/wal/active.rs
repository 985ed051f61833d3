//! The segment being written, and the spare that becomes the next one.
//!
//! # Space is reserved before it is written
//! A segment is preallocated (`fallocate`) to the full segment size, and records are
//! written at an offset the writer keeps, not appended. Two reasons:
//! - An appending write changes the file size, which `fdatasync` must then commit through
//!   the file-system journal; overwriting space that is already allocated does not, and
//!   makes each group-commit fsync markedly cheaper.
//! - A full disk shows up as a failed reservation, before a single byte of a batch is
//!   written, instead of as a write that stopped half way. [`ActiveSegment::reserve`]
//!   makes sure the space a batch needs is allocated; only where the file system cannot
//!   preallocate at all are records written into unreserved space (and a failed write is
//!   then overwritten with zeros, see the writer).
//!
//! The unused tail reads as zeros: recovery treats an all-zero tail as the clean end of
//! the log and trims it, and a segment is trimmed to its records when it is closed, so
//! only the newest segment ever carries one.
//!
//! # No new file descriptor at rotation
//! Rotation must not depend on resources a client can exhaust (open files, most of all).
//! The writer keeps the WAL directory open (for its fsyncs) and a preallocated spare file,
//! `spare.wal.tmp`, which rotation renames into place as the next segment; a new spare is
//! made right after, and if that fails (no file descriptor, no space) the writer simply
//! tries again later. Directory listings, which the recovery scan and garbage collection
//! ignore this file in, are not needed either.

use crate::error::{IoContext, StorageError};
use crate::wal::segment::{list_segments, segment_name};
use bitark_common::Lsn;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Name of the preallocated file that becomes the next segment.
pub(crate) const SPARE_NAME: &str = "spare.wal.tmp";

/// Space reserved at a time when a segment outgrows its preallocation.
const RESERVE_CHUNK: u64 = 1 << 20;

/// Outcome of asking the file system for space.
#[derive(Debug, PartialEq, Eq)]
enum Allocation {
    Done,
    /// The file system cannot preallocate (e.g. `EOPNOTSUPP`): space is taken as written.
    Unsupported,
}

pub(crate) struct ActiveSegment {
    pub path: PathBuf,
    file: File,
    /// Bytes of records written; the next record goes here.
    pub len: u64,
    /// The file is allocated up to here; writes below it cannot run out of space.
    /// `u64::MAX` where the file system cannot preallocate.
    reserved: u64,
}

impl ActiveSegment {
    /// Continues the newest segment (which recovery left ending at its last record), or
    /// starts one at `next_lsn` when there is none or it is full.
    pub fn open(dir: &Path, next_lsn: Lsn, segment_size: u64) -> Result<Self, StorageError> {
        if let Some(last) = list_segments(dir)?.pop() {
            let file = OpenOptions::new().read(true).write(true).open(&last.path).at(&last.path)?;
            let len = file.metadata().at(&last.path)?.len();
            if len < segment_size && last.first_lsn <= next_lsn {
                let mut segment = ActiveSegment { path: last.path, file, len, reserved: len };
                // Best effort: on a full disk the node still starts, and writes answer
                // that the disk is full until space is back.
                if let Err(e) = segment.reserve_to(segment_size) {
                    tracing::warn!(error = %e, "cannot preallocate the WAL segment; writes will retry");
                }
                return Ok(segment);
            }
        }
        let mut spare = Spare::create(dir, segment_size)?;
        let path = dir.join(segment_name(next_lsn));
        spare.promote(&path)?;
        crate::fsutil::fsync_dir(dir)?;
        Ok(ActiveSegment { path, file: spare.file, len: 0, reserved: spare.reserved })
    }

    /// Makes sure the next `bytes` can be written without running out of space:
    /// `Err` with the OS error (`ENOSPC`, `EDQUOT`, ...) when the space cannot be had.
    pub fn reserve(&mut self, bytes: u64) -> std::io::Result<()> {
        let need = self.len + bytes;
        if need <= self.reserved {
            return Ok(());
        }
        self.reserve_to(need.next_multiple_of(RESERVE_CHUNK))
    }

    fn reserve_to(&mut self, end: u64) -> std::io::Result<()> {
        if end <= self.reserved {
            return Ok(());
        }
        match allocate(&self.file, self.reserved.max(self.len), end)? {
            Allocation::Done => self.reserved = end,
            Allocation::Unsupported => self.reserved = u64::MAX,
        }
        Ok(())
    }

    /// Writes `bytes` after the last record. On failure returns how many bytes did reach
    /// the file (they are not part of the log: `len` does not move).
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), (usize, std::io::Error)> {
        // A write that stops half way: its first half reaches the file.
        fail::fail_point!("wal::partial-write", |_| {
            let half = bytes.len() / 2;
            let written = self.file.write_at(&bytes[..half], self.len).unwrap_or(0);
            Err((written, std::io::Error::from_raw_os_error(libc::ENOSPC)))
        });
        let mut written = 0;
        while written < bytes.len() {
            match self.file.write_at(&bytes[written..], self.len + written as u64) {
                Ok(0) => return Err((written, std::io::ErrorKind::WriteZero.into())),
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err((written, e)),
            }
        }
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Overwrites `count` bytes after the last record with zeros and makes that durable:
    /// what a failed write left there can then never be read back as records.
    pub fn erase_after_end(&mut self, count: usize) -> std::io::Result<()> {
        if count > 0 {
            self.file.write_all_at(&vec![0u8; count], self.len)?;
            self.file.sync_data()?;
        }
        Ok(())
    }

    /// Writes `count` zeros after the last record and syncs them: a test that writing
    /// works, which leaves the log as it was (a zero tail is its clean end).
    pub fn write_zeros_after_end(&mut self, count: usize) -> std::io::Result<()> {
        self.file.write_all_at(&vec![0u8; count], self.len)?;
        self.file.sync_data()
    }

    /// Makes every write so far durable.
    pub fn sync(&self) -> Result<(), StorageError> {
        self.file.sync_data().at(&self.path)
    }

    /// Cuts the unused preallocated tail and makes the segment durable; called when the
    /// segment is closed (rotation, shutdown).
    pub fn seal(&mut self) -> Result<(), StorageError> {
        self.file.set_len(self.len).at(&self.path)?;
        self.reserved = self.reserved.min(self.len);
        self.file.sync_all().at(&self.path)
    }

    /// Becomes the segment `spare` was made for, starting at `first_lsn`, once `spare`
    /// was renamed into place.
    pub fn replace_with(&mut self, spare: Spare, path: PathBuf) {
        *self = ActiveSegment { path, file: spare.file, len: 0, reserved: spare.reserved };
    }
}

/// A preallocated, empty file waiting to become the next segment.
pub(crate) struct Spare {
    pub path: PathBuf,
    file: File,
    reserved: u64,
}

impl Spare {
    /// Creates (or empties) `spare.wal.tmp` in `dir` and allocates `segment_size` bytes.
    pub fn create(dir: &Path, segment_size: u64) -> Result<Spare, StorageError> {
        let path = dir.join(SPARE_NAME);
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).at(&path)?;
        let reserved = match allocate(&file, 0, segment_size) {
            Ok(Allocation::Done) => segment_size,
            Ok(Allocation::Unsupported) => u64::MAX,
            Err(e) => {
                // A partial allocation would hold space the active segment may need.
                drop(file);
                let _ = std::fs::remove_file(&path);
                return Err(StorageError::io(&path, e));
            }
        };
        file.sync_all().at(&path)?;
        Ok(Spare { path, file, reserved })
    }

    /// Renames the spare to `target`; the caller fsyncs the directory.
    pub fn promote(&mut self, target: &Path) -> Result<(), StorageError> {
        std::fs::rename(&self.path, target).at(target)?;
        self.path = target.to_path_buf();
        Ok(())
    }
}

/// Allocates `from..to` of `file`.
fn allocate(file: &File, from: u64, to: u64) -> std::io::Result<Allocation> {
    if to <= from {
        return Ok(Allocation::Done);
    }
    fail::fail_point!("wal::allocate", |_| Err(std::io::Error::from_raw_os_error(libc::ENOSPC)));
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: fallocate only reads its integer arguments; the descriptor is open for
        // writing and owned by `file` for the duration of the call.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, from as libc::off_t, (to - from) as libc::off_t) };
        if rc == 0 {
            return Ok(Allocation::Done);
        }
        let error = std::io::Error::last_os_error();
        match error.raw_os_error() {
            Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => Ok(Allocation::Unsupported),
            _ => Err(error),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = file;
        Ok(Allocation::Unsupported)
    }
}
