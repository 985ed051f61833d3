//! `slave-progress.bin`: how far a slave has followed its master, kept by the slave
//! itself (the master's memory of it is lost whenever the master restarts, and an ack
//! can be lost on the way). Separate from the snapshots: this is the replication
//! layer's record, not the storage engine's.
//!
//! A fixed-size binary file of 32 bytes, little endian: magic `0xCAFEBABE` (u32), format
//! version (u32), LSN (u64), last update in Unix milliseconds (u64), reserved (u32),
//! crc32 of the first 28 bytes (u32). Replaced atomically (temp file, fsync, rename,
//! fsync dir).

use crate::error::StorageError;
use crate::fixedfile::FixedFile;
use bitark_common::Lsn;
use std::path::Path;

const FILE: FixedFile = FixedFile { magic: 0xCAFE_BABE, version: 1, what: "slave progress" };
/// File name inside the data directory.
pub const FILE_NAME: &str = crate::datadir::PROGRESS_NAME;

/// A slave's own progress record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlaveProgress {
    /// Highest LSN logged and applied.
    pub lsn: Lsn,
    /// When it was written, Unix milliseconds.
    pub updated_ms: u64,
}

/// Durably replaces the progress file in `data_dir`.
pub fn write_progress(data_dir: &Path, lsn: Lsn) -> Result<SlaveProgress, StorageError> {
    let updated_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    FILE.write(&data_dir.join(FILE_NAME), lsn.0, updated_ms)?;
    Ok(SlaveProgress { lsn, updated_ms })
}

/// Reads the progress file: `Ok(None)` when there is none, `Corruption` naming the
/// file and offset when it is damaged.
pub fn read_progress(data_dir: &Path) -> Result<Option<SlaveProgress>, StorageError> {
    Ok(FILE.read(&data_dir.join(FILE_NAME))?.map(|(lsn, updated_ms)| SlaveProgress { lsn: Lsn(lsn), updated_ms }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_magic_and_fixed_size() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_progress(dir.path()).unwrap(), None);
        let written = write_progress(dir.path(), Lsn(12345)).unwrap();
        assert_eq!(read_progress(dir.path()).unwrap(), Some(written));
        let bytes = std::fs::read(dir.path().join(FILE_NAME)).unwrap();
        assert_eq!(bytes.len(), 32);
        assert_eq!(&bytes[0..4], &0xCAFE_BABEu32.to_le_bytes());
    }

    #[test]
    fn every_damaged_byte_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        write_progress(dir.path(), Lsn(7)).unwrap();
        let path = dir.path().join(FILE_NAME);
        let original = std::fs::read(&path).unwrap();
        for at in 0..original.len() {
            let mut bytes = original.clone();
            bytes[at] ^= 0x10;
            std::fs::write(&path, &bytes).unwrap();
            assert!(matches!(read_progress(dir.path()), Err(StorageError::Corruption { .. })), "byte {at}");
        }
        std::fs::write(&path, &original[..20]).unwrap();
        assert!(read_progress(dir.path()).is_err());
    }
}
