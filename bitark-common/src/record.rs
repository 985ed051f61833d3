//! The write-ahead-log record, the unit of durability and of replication.
//!
//! ```text
//! offset  size  field
//!      0     4  length   total bytes of the record, this field and the crc included
//!      4     2  magic    0xB17A
//!      6     1  version  2
//!      7     1  type     command type (see `Command`)
//!      8     8  epoch
//!     16     8  lsn
//!     24     8  time     commit time, microseconds since the Unix epoch
//!     32     n  payload
//!   32+n     4  crc32    over bytes 4 .. 32+n (everything but length and crc)
//! ```
//! All integers are little endian. The length is also covered indirectly: a wrong
//! length moves the crc and the check fails.
//!
//! Version 1 records (written before commit times existed) have no `time` field: the
//! payload starts at offset 24. They are still read, with `time` 0 ("unknown"), and
//! written again as version 2 wherever a node re-encodes them.

use crate::command::Command;
use crate::error::CodecError;
use crate::ids::{Epoch, Lsn};

/// Record magic, the first two bytes after the length.
pub const MAGIC: u16 = 0xB17A;
/// The record format version this build writes.
pub const VERSION: u8 = 2;
/// The oldest record format version this build reads.
pub const VERSION_1: u8 = 1;
/// Bytes before the payload in the version this build writes.
pub const HEADER_LEN: usize = 32;
/// Bytes before the payload in a version 1 record.
pub const HEADER_LEN_V1: usize = 24;
/// The shortest record of any readable version.
pub const MIN_RECORD_LEN: usize = HEADER_LEN_V1 + TRAILER_LEN;
/// Bytes of the trailing checksum.
pub const TRAILER_LEN: usize = 4;
/// Largest record accepted when reading; anything longer is treated as damage.
pub const MAX_RECORD_LEN: usize = 64 * 1024 * 1024;

/// One WAL record: a command stamped with its LSN, the epoch of its writer and the time
/// the master committed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub epoch: Epoch,
    pub lsn: Lsn,
    /// Commit time on the master, microseconds since the Unix epoch; 0 when unknown (a
    /// version 1 record). Slaves keep the master's time.
    pub time: u64,
    pub command: Command,
}

impl Record {
    /// Total encoded size in bytes.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.command.payload_len() + TRAILER_LEN
    }

    /// Appends the encoded record to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        let len = self.encoded_len();
        out.reserve(len);
        out.extend_from_slice(&(len as u32).to_le_bytes());
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.push(VERSION);
        out.push(self.command.type_byte());
        out.extend_from_slice(&self.epoch.0.to_le_bytes());
        out.extend_from_slice(&self.lsn.0.to_le_bytes());
        out.extend_from_slice(&self.time.to_le_bytes());
        self.command.encode_payload(out);
        let crc = crc32fast::hash(&out[start + 4..]);
        out.extend_from_slice(&crc.to_le_bytes());
        debug_assert_eq!(out.len() - start, len);
    }

    /// Encodes the record into a fresh buffer.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out);
        out
    }

    /// Decodes the record at the start of `buf`, returning it and the bytes it used.
    ///
    /// A buffer that ends inside the record gives [`CodecError::Truncated`]; a record
    /// whose bytes are all there but wrong gives one of the damage variants.
    pub fn decode(buf: &[u8]) -> Result<(Record, usize), CodecError> {
        if buf.len() < 4 {
            return Err(CodecError::Truncated { needed: 4, available: buf.len() });
        }
        let len = u32::from_le_bytes(buf[0..4].try_into().expect("slice of 4"));
        let len_usize = len as usize;
        if !(MIN_RECORD_LEN..=MAX_RECORD_LEN).contains(&len_usize) {
            return Err(CodecError::BadLength(len));
        }
        if buf.len() >= 6 {
            let magic = u16::from_le_bytes(buf[4..6].try_into().expect("slice of 2"));
            if magic != MAGIC {
                return Err(CodecError::BadMagic { found: magic });
            }
        }
        if buf.len() < len_usize {
            return Err(CodecError::Truncated { needed: len_usize, available: buf.len() });
        }
        let body = &buf[4..len_usize - TRAILER_LEN];
        let stored = u32::from_le_bytes(buf[len_usize - 4..len_usize].try_into().expect("slice of 4"));
        let computed = crc32fast::hash(body);
        if stored != computed {
            return Err(CodecError::BadChecksum { stored, computed });
        }
        let version = buf[6];
        let header_len = match version {
            VERSION => HEADER_LEN,
            VERSION_1 => HEADER_LEN_V1,
            other => return Err(CodecError::BadVersion(other)),
        };
        if len_usize < header_len + TRAILER_LEN {
            return Err(CodecError::BadLength(len));
        }
        let type_byte = buf[7];
        let epoch = Epoch(u64::from_le_bytes(buf[8..16].try_into().expect("slice of 8")));
        let lsn = Lsn(u64::from_le_bytes(buf[16..24].try_into().expect("slice of 8")));
        let time = match version {
            VERSION => u64::from_le_bytes(buf[24..32].try_into().expect("slice of 8")),
            _ => 0,
        };
        let command = Command::decode_payload(type_byte, &buf[header_len..len_usize - TRAILER_LEN])?;
        Ok((Record { epoch, lsn, time, command }, len_usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Record {
        Record {
            epoch: Epoch(3),
            lsn: Lsn(42),
            time: 1_796_000_000_123_456,
            command: Command::MarkBatch { user: u64::MAX, msgs: vec![0, 1 << 63 | 5, 7] },
        }
    }

    #[test]
    fn round_trips_every_command_type() {
        let commands = [
            Command::MarkRead { user: 1, msg: (1 << 63) + 5 },
            Command::MarkUnread { user: u64::MAX, msg: 0 },
            Command::MarkBatch { user: 9, msgs: vec![] },
            Command::MarkBatch { user: 9, msgs: vec![3, 2, 1] },
            Command::MarkRange { user: 7, from: 10, to: u64::MAX },
            Command::DropRange {
                partitioner: crate::Partitioner::SplitMix64,
                range: crate::HashRange { start: 1 << 63, end: 1 << 64 },
            },
            Command::DropRange { partitioner: crate::Partitioner::SplitMix64, range: crate::HashRange::ALL },
        ];
        for (i, command) in commands.into_iter().enumerate() {
            let rec = Record { epoch: Epoch(1), lsn: Lsn(i as u64 + 1), time: i as u64, command };
            let bytes = rec.encode();
            assert_eq!(bytes.len(), rec.encoded_len());
            assert_eq!(Record::decode(&bytes).unwrap(), (rec, bytes.len()));
        }
    }

    #[test]
    fn a_damaged_drop_range_is_refused() {
        let mut payload = Vec::new();
        Command::DropRange { partitioner: crate::Partitioner::SplitMix64, range: crate::HashRange::ALL }
            .encode_payload(&mut payload);
        assert_eq!(payload.len(), 17);
        let refused = |p: &[u8]| Command::decode_payload(Command::TYPE_DROP_RANGE, p).unwrap_err().to_string();
        assert!(refused(&payload[..16]).contains("expected 17 bytes"));
        let mut unknown = payload.clone();
        unknown[0] = 9;
        assert!(refused(&unknown).contains("unknown partitioner"));
        let mut inverted = payload.clone();
        inverted[1..9].copy_from_slice(&u64::MAX.to_le_bytes());
        inverted[9..17].copy_from_slice(&1u64.to_le_bytes());
        assert!(refused(&inverted).contains("start after its end"));
    }

    #[test]
    fn every_prefix_is_reported_as_truncation() {
        let bytes = sample().encode();
        for cut in 0..bytes.len() {
            let err = Record::decode(&bytes[..cut]).unwrap_err();
            assert!(err.is_truncation(), "cut at {cut}: {err:?}");
        }
    }

    #[test]
    fn every_flipped_bit_is_detected_as_damage() {
        let bytes = sample().encode();
        for byte in 0..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[byte] ^= 1 << bit;
                match Record::decode(&damaged) {
                    Ok((rec, _)) => panic!("flip {byte}:{bit} decoded as {rec:?}"),
                    // A flipped length bit can make the record look longer than the buffer.
                    Err(CodecError::Truncated { .. }) => assert!(byte < 4),
                    Err(_) => {}
                }
            }
        }
    }

    /// A version 1 record as this build's predecessors wrote it.
    fn encode_v1(rec: &Record) -> Vec<u8> {
        let mut payload = Vec::new();
        rec.command.encode_payload(&mut payload);
        let len = HEADER_LEN_V1 + payload.len() + TRAILER_LEN;
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&(len as u32).to_le_bytes());
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.push(VERSION_1);
        out.push(rec.command.type_byte());
        out.extend_from_slice(&rec.epoch.0.to_le_bytes());
        out.extend_from_slice(&rec.lsn.0.to_le_bytes());
        out.extend_from_slice(&payload);
        let crc = crc32fast::hash(&out[4..]);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    #[test]
    fn version_1_records_are_read_with_an_unknown_time() {
        let rec = Record { time: 0, ..sample() };
        let v1 = encode_v1(&rec);
        assert_eq!(v1.len(), rec.encoded_len() - 8);
        assert_eq!(Record::decode(&v1).unwrap(), (rec.clone(), v1.len()));
        let mut small = encode_v1(&Record { command: Command::MarkRead { user: 1, msg: 2 }, ..rec });
        small.extend_from_slice(&sample().encode());
        let (first, used) = Record::decode(&small).unwrap();
        assert_eq!(first.command, Command::MarkRead { user: 1, msg: 2 });
        assert_eq!(Record::decode(&small[used..]).unwrap().0, sample());
    }

    #[test]
    fn the_commit_time_is_covered_by_the_checksum() {
        let mut bytes = sample().encode();
        bytes[26] ^= 0x10;
        assert!(matches!(Record::decode(&bytes), Err(CodecError::BadChecksum { .. })));
    }

    #[test]
    fn inverted_range_is_rejected() {
        let mut payload = Vec::new();
        Command::MarkRange { user: 1, from: 5, to: 9 }.encode_payload(&mut payload);
        payload[8..16].copy_from_slice(&10u64.to_le_bytes());
        assert!(Command::decode_payload(Command::TYPE_MARK_RANGE, &payload).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Record::decode(&bytes);
        }

        #[test]
        fn batches_round_trip(user: u64, lsn: u64, msgs in proptest::collection::vec(any::<u64>(), 0..50)) {
            let rec = Record { epoch: Epoch(1), lsn: Lsn(lsn), time: lsn ^ user, command: Command::MarkBatch { user, msgs } };
            let bytes = rec.encode();
            prop_assert_eq!(Record::decode(&bytes).unwrap(), (rec, bytes.len()));
        }
    }
}
