//! Errors of the binary codecs.

/// Why bytes could not be decoded into a record or a command.
///
/// `Truncated` means the bytes end before the record does, which is what a torn write at
/// the tail of a log looks like; every other variant means the bytes are damaged.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("record truncated: need {needed} bytes, have {available}")]
    Truncated { needed: usize, available: usize },
    #[error("bad record magic {found:#06x}")]
    BadMagic { found: u16 },
    #[error("unsupported record version {0}")]
    BadVersion(u8),
    #[error("record length {0} out of bounds")]
    BadLength(u32),
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadChecksum { stored: u32, computed: u32 },
    #[error("unknown command type {0}")]
    UnknownType(u8),
    #[error("malformed {kind} payload: {reason}")]
    BadPayload { kind: &'static str, reason: &'static str },
}

impl CodecError {
    /// True when the input simply ended too early (a torn tail), as opposed to damage.
    pub fn is_truncation(&self) -> bool {
        matches!(self, CodecError::Truncated { .. })
    }
}
