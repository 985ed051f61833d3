//! Reading the log forward from an LSN while it is being written: how a master catches
//! up a slave that fell behind its send buffer.
//!
//! The cursor remembers the segment and byte offset it stopped at, so each read costs
//! only what it returns. It reads no further than the LSN it is given (the durable end)
//! and treats anything it cannot decode at the end of the newest segment as not yet
//! written.

use crate::error::{IoContext, StorageError};
use crate::wal::segment::{list_segments, SegmentFile};
use bitark_common::{Lsn, Record};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// What a read found.
#[derive(Debug, PartialEq, Eq)]
pub enum CursorRead {
    /// The next records, possibly none when the cursor is at the end.
    Records(Vec<Record>),
    /// The next LSN is no longer on disk: garbage collection removed it.
    Purged { oldest: Lsn },
}

/// A forward reader of the log from a given LSN.
pub struct WalCursor {
    dir: PathBuf,
    next: Lsn,
    /// The segment and offset where `next` starts, when known.
    position: Option<(SegmentFile, u64)>,
}

impl WalCursor {
    /// A cursor whose first record will be `next`.
    pub fn new(dir: &Path, next: Lsn) -> Self {
        WalCursor { dir: dir.to_path_buf(), next, position: None }
    }

    /// The LSN the next read starts at.
    pub fn next_lsn(&self) -> Lsn {
        self.next
    }

    /// Reads up to `max_records` records (and about `max_bytes`), none above `up_to`.
    pub fn read(&mut self, max_records: usize, max_bytes: usize, up_to: Lsn) -> Result<CursorRead, StorageError> {
        let mut out = Vec::new();
        let mut bytes = 0;
        while out.len() < max_records && bytes < max_bytes && self.next <= up_to {
            let (segment, offset) = match self.position.take() {
                Some(position) => position,
                None => match self.locate()? {
                    Ok(position) => position,
                    Err(oldest) if out.is_empty() => return Ok(CursorRead::Purged { oldest }),
                    Err(_) => break,
                },
            };
            let (end, reached_end) =
                self.read_segment(&segment, offset, max_records, max_bytes, up_to, &mut out, &mut bytes)?;
            if reached_end {
                // Continue in the next segment if there is one that starts where we stopped.
                let next_segment = list_segments(&self.dir)?.into_iter().find(|s| s.first_lsn == self.next);
                match next_segment {
                    Some(s) => self.position = Some((s, 0)),
                    None => {
                        self.position = Some((segment, end));
                        break;
                    }
                }
            } else {
                self.position = Some((segment, end));
            }
        }
        Ok(CursorRead::Records(out))
    }

    /// Moves the cursor forward to `lsn` (a slave further on than the last read left
    /// it), passing over the records between by their headers, from where it stopped
    /// when it knows that place. A cursor already at `lsn` stays as it is; one past it
    /// starts afresh from `lsn`.
    pub fn advance_to(&mut self, lsn: Lsn) -> Result<(), StorageError> {
        if lsn <= self.next {
            if lsn < self.next {
                *self = WalCursor::new(&self.dir, lsn);
            }
            return Ok(());
        }
        let from = self.next;
        self.next = lsn;
        if let Some((segment, offset)) = self.position.take() {
            if let Ok(offset) = skip(&segment, offset, from, lsn)? {
                self.position = Some((segment, offset));
            }
        }
        Ok(())
    }

    /// Finds the segment holding `next` and the offset of that record; `Err(oldest)`
    /// when it was purged.
    fn locate(&self) -> Result<Result<(SegmentFile, u64), Lsn>, StorageError> {
        let segments = list_segments(&self.dir)?;
        let Some(segment) = segments.iter().rev().find(|s| s.first_lsn <= self.next).cloned() else {
            return Ok(Err(segments.first().map(|s| s.first_lsn).unwrap_or(self.next)));
        };
        Ok(skip(&segment, 0, segment.first_lsn, self.next)?.map(|offset| (segment, offset)))
    }

    #[allow(clippy::too_many_arguments)]
    fn read_segment(
        &mut self,
        segment: &SegmentFile,
        offset: u64,
        max_records: usize,
        max_bytes: usize,
        up_to: Lsn,
        out: &mut Vec<Record>,
        bytes: &mut usize,
    ) -> Result<(u64, bool), StorageError> {
        let mut file = File::open(&segment.path).at(&segment.path)?;
        file.seek(SeekFrom::Start(offset)).at(&segment.path)?;
        let mut input = BufReader::with_capacity(256 * 1024, file);
        let mut at = offset;
        while out.len() < max_records && *bytes < max_bytes && self.next <= up_to {
            match next_record(&mut input, &segment.path)? {
                Some((record, len)) if record.lsn == self.next => {
                    at += len as u64;
                    *bytes += len;
                    self.next = self.next.next();
                    out.push(record);
                }
                Some((record, _)) => {
                    return Err(StorageError::corruption(
                        &segment.path,
                        at,
                        format!("expected LSN {}, found LSN {}", self.next, record.lsn),
                    ))
                }
                None => return Ok((at, true)),
            }
        }
        Ok((at, false))
    }
}

/// The offset of record `to` in `segment`, given that record `from` starts at `offset`;
/// `Err(to)` when the records between cannot be passed over (not all there, or damaged
/// headers).
///
/// They are passed over by their headers: the length, the magic and the LSN each must
/// carry are read and the rest is skipped, neither decoded nor checksummed, since none of
/// it is returned (the record at `to` is read whole and checked by the read that
/// follows). A slave far behind in a full segment made this scan decode and checksum a
/// million records.
fn skip(segment: &SegmentFile, offset: u64, from: Lsn, to: Lsn) -> Result<Result<u64, Lsn>, StorageError> {
    let path = &segment.path;
    let mut file = File::open(path).at(path)?;
    file.seek(SeekFrom::Start(offset)).at(path)?;
    let mut input = BufReader::with_capacity(256 * 1024, file);
    let mut head = [0u8; SKIP_HEAD];
    let (mut offset, mut lsn) = (offset, from);
    while lsn < to {
        if read_full(&mut input, &mut head, path)? < SKIP_HEAD {
            return Ok(Err(to));
        }
        let len = u32::from_le_bytes(head[0..4].try_into().expect("4 bytes")) as usize;
        let magic = u16::from_le_bytes(head[4..6].try_into().expect("2 bytes"));
        let found = u64::from_le_bytes(head[16..24].try_into().expect("8 bytes"));
        let sane = (bitark_common::record::MIN_RECORD_LEN..=bitark_common::record::MAX_RECORD_LEN).contains(&len);
        if !sane || magic != bitark_common::record::MAGIC || found != lsn.0 {
            return Ok(Err(to));
        }
        input.seek_relative((len - SKIP_HEAD) as i64).at(path)?;
        offset += len as u64;
        lsn = lsn.next();
    }
    Ok(Ok(offset))
}

/// Bytes of a record header read to pass over it: length, magic, version, type, epoch
/// and LSN, the same in every record version.
const SKIP_HEAD: usize = 24;

/// The next whole, valid record and its length, or `None` at the end of what is written.
fn next_record(input: &mut impl Read, path: &Path) -> Result<Option<(Record, usize)>, StorageError> {
    let mut len_bytes = [0u8; 4];
    if read_full(input, &mut len_bytes, path)? < 4 {
        return Ok(None);
    }
    let len = u32::from_le_bytes(len_bytes) as usize;
    if !(bitark_common::record::MIN_RECORD_LEN..=bitark_common::record::MAX_RECORD_LEN).contains(&len) {
        return Ok(None);
    }
    let mut buf = vec![0u8; len];
    buf[..4].copy_from_slice(&len_bytes);
    if read_full(input, &mut buf[4..], path)? < len - 4 {
        return Ok(None);
    }
    Ok(Record::decode(&buf).ok())
}

fn read_full(input: &mut impl Read, buf: &mut [u8], path: &Path) -> Result<usize, StorageError> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]).at(path)? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::segment::{purge_to, segment_name};
    use bitark_common::{Command, Epoch};
    use std::io::Write;

    fn write_segment(dir: &Path, lsns: std::ops::RangeInclusive<u64>, zero_tail: usize) {
        let mut f = File::create(dir.join(segment_name(Lsn(*lsns.start())))).unwrap();
        for lsn in lsns {
            let r =
                Record { epoch: Epoch(1), lsn: Lsn(lsn), time: 0, command: Command::MarkRead { user: 1, msg: lsn } };
            f.write_all(&r.encode()).unwrap();
        }
        f.write_all(&vec![0u8; zero_tail]).unwrap();
    }

    fn lsns(read: CursorRead) -> Vec<u64> {
        match read {
            CursorRead::Records(r) => r.iter().map(|r| r.lsn.0).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reads_forward_across_segments_in_bounded_steps() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 1..=5, 0);
        write_segment(dir.path(), 6..=9, 1000);
        let mut cursor = WalCursor::new(dir.path(), Lsn(3));
        assert_eq!(lsns(cursor.read(2, usize::MAX, Lsn(100)).unwrap()), vec![3, 4]);
        assert_eq!(lsns(cursor.read(10, usize::MAX, Lsn(7)).unwrap()), vec![5, 6, 7]);
        assert_eq!(lsns(cursor.read(10, usize::MAX, Lsn(100)).unwrap()), vec![8, 9]);
        assert_eq!(lsns(cursor.read(10, usize::MAX, Lsn(100)).unwrap()), Vec::<u64>::new());
        assert_eq!(cursor.next_lsn(), Lsn(10));
    }

    #[test]
    fn sees_records_appended_after_it_reached_the_end() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 1..=2, 0);
        let mut cursor = WalCursor::new(dir.path(), Lsn(1));
        assert_eq!(lsns(cursor.read(10, usize::MAX, Lsn(100)).unwrap()), vec![1, 2]);
        let mut f = std::fs::OpenOptions::new().append(true).open(dir.path().join(segment_name(Lsn(1)))).unwrap();
        let r = Record { epoch: Epoch(1), lsn: Lsn(3), time: 0, command: Command::MarkRead { user: 1, msg: 3 } };
        f.write_all(&r.encode()).unwrap();
        assert_eq!(lsns(cursor.read(10, usize::MAX, Lsn(100)).unwrap()), vec![3]);
    }

    #[test]
    fn reports_a_purged_start() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 1..=5, 0);
        write_segment(dir.path(), 6..=9, 0);
        purge_to(dir.path(), Lsn(5)).unwrap();
        let mut cursor = WalCursor::new(dir.path(), Lsn(2));
        assert_eq!(cursor.read(10, usize::MAX, Lsn(100)).unwrap(), CursorRead::Purged { oldest: Lsn(6) });
        let mut cursor = WalCursor::new(dir.path(), Lsn(6));
        assert_eq!(lsns(cursor.read(10, usize::MAX, Lsn(100)).unwrap()), vec![6, 7, 8, 9]);
    }

    #[test]
    fn moves_forward_from_where_it_stopped_or_back_from_scratch() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 1..=5, 0);
        write_segment(dir.path(), 6..=9, 0);
        let mut cursor = WalCursor::new(dir.path(), Lsn(1));
        assert_eq!(lsns(cursor.read(2, usize::MAX, Lsn(100)).unwrap()), vec![1, 2]);
        cursor.advance_to(Lsn(4)).unwrap();
        assert_eq!(lsns(cursor.read(1, usize::MAX, Lsn(100)).unwrap()), vec![4]);
        // Past the end of its segment: found again in the next one.
        cursor.advance_to(Lsn(7)).unwrap();
        assert_eq!(lsns(cursor.read(10, usize::MAX, Lsn(100)).unwrap()), vec![7, 8, 9]);
        cursor.advance_to(Lsn(2)).unwrap();
        assert_eq!(lsns(cursor.read(3, usize::MAX, Lsn(100)).unwrap()), vec![2, 3, 4]);
        cursor.advance_to(Lsn(4)).unwrap();
        assert_eq!(cursor.next_lsn(), Lsn(4), "a cursor already past the LSN asked for is moved back to it");
        assert_eq!(lsns(cursor.read(10, usize::MAX, Lsn(100)).unwrap()), vec![4, 5, 6, 7, 8, 9]);
    }

    #[test]
    fn finds_its_start_by_the_headers_of_the_records_before_it() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 1..=6, 0);
        let path = dir.path().join(segment_name(Lsn(1)));
        let record_len = std::fs::metadata(&path).unwrap().len() as usize / 6;
        let pristine = std::fs::read(&path).unwrap();
        // A payload byte of record 2 damaged: a record that is not returned is not checked.
        let mut bytes = pristine.clone();
        bytes[record_len + 33] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let mut cursor = WalCursor::new(dir.path(), Lsn(4));
        assert_eq!(lsns(cursor.read(10, usize::MAX, Lsn(100)).unwrap()), vec![4, 5, 6]);
        // The LSN in record 3's header damaged: the records cannot be counted past it, and
        // the start is reported as not on disk rather than guessed.
        let mut bytes = pristine;
        bytes[2 * record_len + 16] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let mut cursor = WalCursor::new(dir.path(), Lsn(5));
        assert_eq!(cursor.read(10, usize::MAX, Lsn(100)).unwrap(), CursorRead::Purged { oldest: Lsn(5) });
    }
}
