//! The checkpoint file: the LSN that the newest valid snapshot covers.
//!
//! `<data-dir>/checkpoint.bin`, 32 bytes, little endian: magic `0xB17AC4EC` (u32),
//! format version (u32), LSN (u64), epoch (u64), reserved (u32), crc32 of the first
//! 28 bytes (u32). Replaced atomically.

use crate::error::{IoContext, StorageError};
use crate::fsutil::write_atomic;
use bitark_common::{Epoch, Lsn};
use std::path::Path;

const MAGIC: u32 = 0xB17A_C4EC;
const VERSION: u32 = 1;
const LEN: usize = 32;
/// File name inside the data directory.
pub const FILE_NAME: &str = "checkpoint.bin";

/// Where recovery starts: the snapshot at `lsn`, then the log after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub lsn: Lsn,
    pub epoch: Epoch,
}

/// Durably records `checkpoint` in `data_dir`.
pub fn write_checkpoint(data_dir: &Path, checkpoint: Checkpoint) -> Result<(), StorageError> {
    let mut b = [0u8; LEN];
    b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    b[4..8].copy_from_slice(&VERSION.to_le_bytes());
    b[8..16].copy_from_slice(&checkpoint.lsn.0.to_le_bytes());
    b[16..24].copy_from_slice(&checkpoint.epoch.0.to_le_bytes());
    let crc = crc32fast::hash(&b[0..28]);
    b[28..32].copy_from_slice(&crc.to_le_bytes());
    write_atomic(&data_dir.join(FILE_NAME), &b)
}

/// Reads the checkpoint; `Ok(None)` when there is none yet.
pub fn read_checkpoint(data_dir: &Path) -> Result<Option<Checkpoint>, StorageError> {
    let path = data_dir.join(FILE_NAME);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).at(&path),
    };
    let corrupt = |offset, reason: &str| StorageError::corruption(&path, offset, reason);
    if bytes.len() != LEN {
        return Err(corrupt(0, "checkpoint must be exactly 32 bytes"));
    }
    let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("slice of 4"));
    let long = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("slice of 8"));
    if word(0) != MAGIC {
        return Err(corrupt(0, "bad checkpoint magic"));
    }
    if crc32fast::hash(&bytes[0..28]) != word(28) {
        return Err(corrupt(28, "checkpoint checksum mismatch"));
    }
    if word(4) != VERSION {
        return Err(corrupt(4, "unsupported checkpoint version"));
    }
    Ok(Some(Checkpoint { lsn: Lsn(long(8)), epoch: Epoch(long(16)) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reports_missing_as_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_checkpoint(dir.path()).unwrap(), None);
        let cp = Checkpoint { lsn: Lsn(u64::MAX - 1), epoch: Epoch(3) };
        write_checkpoint(dir.path(), cp).unwrap();
        assert_eq!(read_checkpoint(dir.path()).unwrap(), Some(cp));
    }

    #[test]
    fn a_damaged_checkpoint_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        write_checkpoint(dir.path(), Checkpoint { lsn: Lsn(9), epoch: Epoch(1) }).unwrap();
        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[9] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert!(matches!(read_checkpoint(dir.path()), Err(StorageError::Corruption { .. })));
    }
}
