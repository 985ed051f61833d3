//! `epoch.bin`: the node's epoch history and what it knows of the master of the newest
//! epoch, kept apart from the log so that no record has to be read to know it.
//!
//! Layout, little endian: magic `0xE90C_BA7A` (u32), format version (u32), body length
//! (u32), the body as JSON ([`EpochState`]), crc32 of everything before it (u32).
//! Replaced atomically (temp file, fsync, rename, fsync dir) on every change: changes
//! happen once per promotion or step-down, never per write.

use crate::error::StorageError;
use crate::fsutil::write_atomic;
use bitark_common::{Epoch, EpochHistory};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// File name inside the data directory.
pub const FILE_NAME: &str = crate::datadir::EPOCH_NAME;
const MAGIC: u32 = 0xE90C_BA7A;
const VERSION: u32 = 1;
const HEAD: usize = 12;
/// Largest body accepted; a history of thousands of epochs stays far below.
const MAX_BODY: usize = 1 << 20;

/// What `epoch.bin` holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EpochState {
    /// Every epoch this node's log has followed, with where it began.
    pub history: EpochHistory,
    /// The node id of the master of the newest epoch in `history`, when known.
    #[serde(default)]
    pub master_id: String,
    /// The highest epoch this node has seen anywhere (a peer's request or answer);
    /// above the history's newest epoch when a newer master exists that this node
    /// does not follow yet. Such a node never writes again in its own epoch.
    #[serde(default)]
    pub seen: u64,
    /// Where the master of epoch `seen` is, when a peer said.
    #[serde(default)]
    pub seen_master_url: String,
}

impl EpochState {
    /// The highest epoch known, from the history or from a peer.
    pub fn highest(&self) -> Epoch {
        Epoch(self.seen.max(self.history.current().0))
    }
}

/// Reads `<data_dir>/epoch.bin`: `Ok(None)` when there is none; `Corruption` naming the
/// file and the offset when it is damaged.
pub fn read_epoch_state(data_dir: &Path) -> Result<Option<EpochState>, StorageError> {
    let path = data_dir.join(FILE_NAME);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StorageError::io(&path, e)),
    };
    let bad = |offset: usize, reason: String| StorageError::corruption(&path, offset as u64, reason);
    if bytes.len() < HEAD + 4 {
        return Err(bad(bytes.len(), format!("epoch file is {} bytes, shorter than its header", bytes.len())));
    }
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    if u32_at(0) != MAGIC {
        return Err(bad(0, format!("bad magic {:#010x}, expected {MAGIC:#010x}", u32_at(0))));
    }
    if u32_at(4) != VERSION {
        return Err(bad(4, format!("format version {} is not one this build reads ({VERSION})", u32_at(4))));
    }
    let len = u32_at(8) as usize;
    if len > MAX_BODY || bytes.len() != HEAD + len + 4 {
        return Err(bad(8, format!("body length {len} does not match the file size {}", bytes.len())));
    }
    let stored = u32_at(HEAD + len);
    let computed = crc32fast::hash(&bytes[..HEAD + len]);
    if stored != computed {
        return Err(bad(HEAD + len, format!("checksum {stored:#010x} does not match the contents ({computed:#010x})")));
    }
    serde_json::from_slice(&bytes[HEAD..HEAD + len]).map(Some).map_err(|e| bad(HEAD, format!("unreadable body: {e}")))
}

/// Durably replaces `<data_dir>/epoch.bin` with `state`.
pub fn write_epoch_state(data_dir: &Path, state: &EpochState) -> Result<(), StorageError> {
    let body = serde_json::to_vec(state).expect("an epoch state serializes");
    let mut bytes = Vec::with_capacity(HEAD + body.len() + 4);
    bytes.extend_from_slice(&MAGIC.to_le_bytes());
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&body);
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    write_atomic(&data_dir.join(FILE_NAME), &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitark_common::Lsn;

    fn sample() -> EpochState {
        let mut history = EpochHistory::default();
        history.begin(Epoch(2), Lsn(41)).unwrap();
        EpochState { history, master_id: "slave-1".into(), seen: 3, seen_master_url: "http://10.0.0.2:8080".into() }
    }

    #[test]
    fn round_trips_and_is_absent_until_written() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_epoch_state(dir.path()).unwrap(), None);
        write_epoch_state(dir.path(), &sample()).unwrap();
        let read = read_epoch_state(dir.path()).unwrap().unwrap();
        assert_eq!(read, sample());
        assert_eq!(read.highest(), Epoch(3));
    }

    #[test]
    fn every_damaged_byte_is_named_with_the_file() {
        let dir = tempfile::tempdir().unwrap();
        write_epoch_state(dir.path(), &sample()).unwrap();
        let path = dir.path().join(FILE_NAME);
        let good = std::fs::read(&path).unwrap();
        for at in 0..good.len() {
            let mut bytes = good.clone();
            bytes[at] ^= 0x10;
            std::fs::write(&path, &bytes).unwrap();
            match read_epoch_state(dir.path()) {
                Err(StorageError::Corruption { path: p, .. }) => assert!(p.ends_with(FILE_NAME)),
                other => panic!("byte {at}: {other:?}"),
            }
        }
        std::fs::write(&path, &good[..good.len() - 1]).unwrap();
        assert!(matches!(read_epoch_state(dir.path()), Err(StorageError::Corruption { .. })));
    }
}
