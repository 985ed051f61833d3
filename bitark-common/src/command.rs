//! The commands that change read state, one WAL record each.
//!
//! Every command sets or clears individual bits, so applying any suffix of the log in
//! order yields the right state. That property is what makes fuzzy snapshots and
//! replay-after-snapshot correct.
//!
//! Payload layout (little endian): `user u64`, then per type
//! - `MarkRead`, `MarkUnread`: `msg u64`
//! - `MarkBatch`: `count u32`, `count × msg u64`
//! - `MarkRange`: `from u64`, `to u64` (inclusive)
//!
//! `SetOwnership` names no user: its payload is the group's [`Ownership`] (see
//! [`Ownership::encode`]). It replaces whatever ownership the node held before.

use crate::error::CodecError;
use crate::ownership::Ownership;
use crate::shard::{HashRange, Partitioner};

/// A state-changing command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    MarkRead {
        user: u64,
        msg: u64,
    },
    MarkUnread {
        user: u64,
        msg: u64,
    },
    MarkBatch {
        user: u64,
        msgs: Vec<u64>,
    },
    /// Every message id in `from..=to` becomes read.
    MarkRange {
        user: u64,
        from: u64,
        to: u64,
    },
    /// From this record on, the group serves exactly these ranges of the shard map.
    SetOwnership(Ownership),
    /// Every user whose hash by `partitioner` falls in `range` is removed: a range a
    /// group holds without owning it (a move's staged copy, or the source's copy after
    /// the cutover).
    DropRange {
        partitioner: Partitioner,
        range: HashRange,
    },
}

impl Command {
    pub const TYPE_MARK_READ: u8 = 1;
    pub const TYPE_MARK_UNREAD: u8 = 2;
    pub const TYPE_MARK_BATCH: u8 = 3;
    pub const TYPE_MARK_RANGE: u8 = 4;
    pub const TYPE_SET_OWNERSHIP: u8 = 16;
    pub const TYPE_DROP_RANGE: u8 = 17;

    /// The record type byte of this command.
    pub fn type_byte(&self) -> u8 {
        match self {
            Command::MarkRead { .. } => Self::TYPE_MARK_READ,
            Command::MarkUnread { .. } => Self::TYPE_MARK_UNREAD,
            Command::MarkBatch { .. } => Self::TYPE_MARK_BATCH,
            Command::MarkRange { .. } => Self::TYPE_MARK_RANGE,
            Command::SetOwnership(_) => Self::TYPE_SET_OWNERSHIP,
            Command::DropRange { .. } => Self::TYPE_DROP_RANGE,
        }
    }

    /// The user whose read set this command changes; `None` for a record about the
    /// node itself (ownership) or about a range of users.
    pub fn user(&self) -> Option<u64> {
        match self {
            Command::MarkRead { user, .. }
            | Command::MarkUnread { user, .. }
            | Command::MarkBatch { user, .. }
            | Command::MarkRange { user, .. } => Some(*user),
            Command::SetOwnership(_) | Command::DropRange { .. } => None,
        }
    }

    /// Size of the encoded payload in bytes.
    pub fn payload_len(&self) -> usize {
        match self {
            Command::MarkRead { .. } | Command::MarkUnread { .. } => 16,
            Command::MarkBatch { msgs, .. } => 12 + 8 * msgs.len(),
            Command::MarkRange { .. } => 24,
            Command::SetOwnership(own) => own.encoded_len(),
            Command::DropRange { .. } => 17,
        }
    }

    /// Appends the payload to `out`.
    pub fn encode_payload(&self, out: &mut Vec<u8>) {
        let Some(user) = self.user() else {
            match self {
                Command::SetOwnership(own) => own.encode(out),
                Command::DropRange { partitioner, range } => {
                    out.push(partitioner.byte());
                    out.extend_from_slice(&range.start.to_le_bytes());
                    out.extend_from_slice(&((range.end - 1) as u64).to_le_bytes());
                }
                _ => {}
            }
            return;
        };
        out.extend_from_slice(&user.to_le_bytes());
        match self {
            Command::MarkRead { msg, .. } | Command::MarkUnread { msg, .. } => {
                out.extend_from_slice(&msg.to_le_bytes());
            }
            Command::MarkBatch { msgs, .. } => {
                out.extend_from_slice(&(msgs.len() as u32).to_le_bytes());
                for m in msgs {
                    out.extend_from_slice(&m.to_le_bytes());
                }
            }
            Command::MarkRange { from, to, .. } => {
                out.extend_from_slice(&from.to_le_bytes());
                out.extend_from_slice(&to.to_le_bytes());
            }
            Command::SetOwnership(_) | Command::DropRange { .. } => {}
        }
    }

    /// Decodes a payload of the given record type.
    pub fn decode_payload(type_byte: u8, payload: &[u8]) -> Result<Command, CodecError> {
        let kind = match type_byte {
            Self::TYPE_MARK_READ => "mark-read",
            Self::TYPE_MARK_UNREAD => "mark-unread",
            Self::TYPE_MARK_BATCH => "mark-batch",
            Self::TYPE_MARK_RANGE => "mark-range",
            Self::TYPE_SET_OWNERSHIP => {
                return Ownership::decode(payload)
                    .map(Command::SetOwnership)
                    .map_err(|reason| CodecError::BadPayload { kind: "set-ownership", reason });
            }
            Self::TYPE_DROP_RANGE => return Self::decode_drop_range(payload),
            other => return Err(CodecError::UnknownType(other)),
        };
        let bad = |reason| CodecError::BadPayload { kind, reason };
        let word = |i: usize| -> u64 { u64::from_le_bytes(payload[i..i + 8].try_into().expect("slice of 8")) };
        match type_byte {
            Self::TYPE_MARK_READ | Self::TYPE_MARK_UNREAD => {
                if payload.len() != 16 {
                    return Err(bad("expected 16 bytes"));
                }
                let (user, msg) = (word(0), word(8));
                Ok(if type_byte == Self::TYPE_MARK_READ {
                    Command::MarkRead { user, msg }
                } else {
                    Command::MarkUnread { user, msg }
                })
            }
            Self::TYPE_MARK_BATCH => {
                if payload.len() < 12 {
                    return Err(bad("shorter than its header"));
                }
                let count = u32::from_le_bytes(payload[8..12].try_into().expect("slice of 4")) as usize;
                if payload.len() != 12 + 8 * count {
                    return Err(bad("count disagrees with length"));
                }
                let msgs = (0..count).map(|i| word(12 + 8 * i)).collect();
                Ok(Command::MarkBatch { user: word(0), msgs })
            }
            _ => {
                if payload.len() != 24 {
                    return Err(bad("expected 24 bytes"));
                }
                let (from, to) = (word(8), word(16));
                if from > to {
                    return Err(bad("range start after its end"));
                }
                Ok(Command::MarkRange { user: word(0), from, to })
            }
        }
    }

    /// A [`Command::DropRange`] payload: `partitioner u8 | start u64 | last u64`.
    fn decode_drop_range(payload: &[u8]) -> Result<Command, CodecError> {
        let bad = |reason| CodecError::BadPayload { kind: "drop-range", reason };
        if payload.len() != 17 {
            return Err(bad("expected 17 bytes"));
        }
        let partitioner = Partitioner::of_byte(payload[0]).ok_or(bad("unknown partitioner"))?;
        let word = |i: usize| u64::from_le_bytes(payload[i..i + 8].try_into().expect("slice of 8"));
        let (start, last) = (word(1), word(9));
        if start > last {
            return Err(bad("range start after its end"));
        }
        Ok(Command::DropRange { partitioner, range: HashRange { start, end: u128::from(last) + 1 } })
    }
}
