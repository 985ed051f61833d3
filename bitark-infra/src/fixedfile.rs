//! Small fixed-size state files: 32 bytes holding a magic, a format version, two `u64`
//! values and a crc32, replaced atomically: a slave's progress file is one.
//!
//! ```text
//! 0 magic u32 | 4 version u32 | 8 first u64 | 16 second u64 | 24 reserved u32 | 28 crc32 of bytes 0..28
//! ```
//! All little endian.

use crate::error::{IoContext, StorageError};
use crate::fsutil::write_atomic;
use std::path::Path;

const LEN: usize = 32;

/// The identity of one kind of fixed file.
pub(crate) struct FixedFile {
    pub magic: u32,
    pub version: u32,
    /// Used in error messages, e.g. "slave progress".
    pub what: &'static str,
}

impl FixedFile {
    /// Durably replaces `path` with the two values.
    pub fn write(&self, path: &Path, first: u64, second: u64) -> Result<(), StorageError> {
        let mut b = [0u8; LEN];
        b[0..4].copy_from_slice(&self.magic.to_le_bytes());
        b[4..8].copy_from_slice(&self.version.to_le_bytes());
        b[8..16].copy_from_slice(&first.to_le_bytes());
        b[16..24].copy_from_slice(&second.to_le_bytes());
        let crc = crc32fast::hash(&b[0..28]);
        b[28..32].copy_from_slice(&crc.to_le_bytes());
        write_atomic(path, &b)
    }

    /// Reads the two values: `Ok(None)` when the file does not exist, `Corruption`
    /// naming the file and offset when it is damaged.
    pub fn read(&self, path: &Path) -> Result<Option<(u64, u64)>, StorageError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).at(path),
        };
        let corrupt = |offset, reason: String| StorageError::corruption(path, offset, reason);
        if bytes.len() != LEN {
            return Err(corrupt(0, format!("{} file must be exactly {LEN} bytes, found {}", self.what, bytes.len())));
        }
        let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("slice of 4"));
        let long = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("slice of 8"));
        if word(0) != self.magic {
            return Err(corrupt(0, format!("bad {} magic, expected {:#010x}", self.what, self.magic)));
        }
        if crc32fast::hash(&bytes[0..28]) != word(28) {
            return Err(corrupt(28, format!("{} checksum mismatch", self.what)));
        }
        if word(4) != self.version {
            return Err(corrupt(4, format!("unsupported {} format version {}", self.what, word(4))));
        }
        Ok(Some((long(8), long(16))))
    }
}
