//! The checkpoint file: the LSN that the newest valid snapshot covers.
//!
//! `<data-dir>/checkpoint.bin`, a [`FixedFile`] of 32 bytes: magic `0xB17AC4EC`, format
//! version 1, LSN, epoch, crc32. Replaced atomically.

use crate::error::StorageError;
use crate::fixedfile::FixedFile;
use bitark_common::{Epoch, Lsn};
use std::path::Path;

const FILE: FixedFile = FixedFile { magic: 0xB17A_C4EC, version: 1, what: "checkpoint" };
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
    FILE.write(&data_dir.join(FILE_NAME), checkpoint.lsn.0, checkpoint.epoch.0)
}

/// Reads the checkpoint; `Ok(None)` when there is none yet.
pub fn read_checkpoint(data_dir: &Path) -> Result<Option<Checkpoint>, StorageError> {
    Ok(FILE.read(&data_dir.join(FILE_NAME))?.map(|(lsn, epoch)| Checkpoint { lsn: Lsn(lsn), epoch: Epoch(epoch) }))
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
    fn every_damaged_byte_and_a_short_file_are_corruption() {
        let dir = tempfile::tempdir().unwrap();
        write_checkpoint(dir.path(), Checkpoint { lsn: Lsn(9), epoch: Epoch(1) }).unwrap();
        let path = dir.path().join(FILE_NAME);
        let original = std::fs::read(&path).unwrap();
        for at in 0..original.len() {
            let mut bytes = original.clone();
            bytes[at] ^= 1;
            std::fs::write(&path, bytes).unwrap();
            assert!(matches!(read_checkpoint(dir.path()), Err(StorageError::Corruption { .. })), "byte {at}");
        }
        std::fs::write(&path, &original[..31]).unwrap();
        assert!(matches!(read_checkpoint(dir.path()), Err(StorageError::Corruption { .. })));
    }
}
