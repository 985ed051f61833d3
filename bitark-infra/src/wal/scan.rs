//! The recovery scan: replays the log from an LSN.
//!
//! Every record is checked (length, magic, version, crc32) and LSNs must follow each
//! other without a gap, inside a segment and from one segment to the next.
//!
//! What counts as a torn tail and what as corruption: only the newest segment may end
//! badly. If the bad bytes there run to the end of the file, or no valid record follows
//! them, they are the remains of a write that a crash interrupted and that was never
//! acknowledged: the file is cut back to the last good record and the cut is logged.
//! A bad record anywhere else, or one followed by valid records, is corruption: recovery
//! stops with an error naming the file and byte offset. An all-zero tail of the newest
//! segment is its unused preallocated space: the clean end of the log, trimmed quietly.

use crate::error::{IoContext, StorageError};
use crate::wal::segment::{list_segments, SegmentFile};
use bitark_common::{Lsn, Record};
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

/// How often a long replay logs its progress.
const PROGRESS_EVERY: u64 = 1_000_000;

/// What a replay found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplayOutcome {
    /// LSN of the last record in the log (0 when the log is empty).
    pub wal_end: Lsn,
    /// Records handed to the callback.
    pub replayed: u64,
    /// Segment, offset and byte count of a torn tail that was cut off.
    pub truncated: Option<(PathBuf, u64, u64)>,
}

/// Replays every record with an LSN above `after`, in order, into `apply`.
///
/// Fails with [`StorageError::Corruption`] on damage before the tail, and when the log
/// no longer holds the records just after `after` (they were garbage-collected).
pub fn replay(dir: &Path, after: Lsn, mut apply: impl FnMut(Record)) -> Result<ReplayOutcome, StorageError> {
    let segments = list_segments(dir)?;
    let mut outcome = ReplayOutcome::default();
    let Some(first) = segments.first() else {
        return Ok(outcome);
    };
    if first.first_lsn.0 > after.0 + 1 {
        return Err(StorageError::corruption(
            &first.path,
            0,
            format!("the log starts at LSN {} but recovery needs LSN {}", first.first_lsn, after.0 + 1),
        ));
    }
    // Start at the newest segment that begins at or before the first record needed.
    let start = segments.iter().rposition(|s| s.first_lsn.0 <= after.0 + 1).unwrap_or(0);
    let mut expected: Option<Lsn> = None;
    let last_index = segments.len() - 1;
    for (i, segment) in segments.iter().enumerate().skip(start) {
        if let Some(e) = expected {
            if segment.first_lsn != e {
                return Err(StorageError::corruption(
                    &segment.path,
                    0,
                    format!("segment starts at LSN {} but the previous one ended before LSN {e}", segment.first_lsn),
                ));
            }
        }
        scan_segment(segment, i == last_index, after, &mut expected, &mut outcome, &mut apply)?;
    }
    outcome.wal_end = expected.map(|e| Lsn(e.0 - 1)).unwrap_or(Lsn(segments[last_index].first_lsn.0 - 1));
    Ok(outcome)
}

fn scan_segment(
    segment: &SegmentFile,
    is_last: bool,
    after: Lsn,
    expected: &mut Option<Lsn>,
    outcome: &mut ReplayOutcome,
    apply: &mut impl FnMut(Record),
) -> Result<(), StorageError> {
    let path = &segment.path;
    let bytes = fs::read(path).at(path)?;
    let mut offset = 0usize;
    while offset < bytes.len() {
        match Record::decode(&bytes[offset..]) {
            Ok((record, used)) => {
                let want = expected.unwrap_or(segment.first_lsn);
                if record.lsn != want {
                    return Err(StorageError::corruption(
                        path,
                        offset as u64,
                        format!("expected LSN {want}, found LSN {}", record.lsn),
                    ));
                }
                *expected = Some(record.lsn.next());
                if record.lsn > after {
                    apply(record);
                    outcome.replayed += 1;
                    if outcome.replayed.is_multiple_of(PROGRESS_EVERY) {
                        tracing::info!(replayed = outcome.replayed, segment = %path.display(), "replaying WAL");
                    }
                }
                offset += used;
            }
            Err(_) if is_last && bytes[offset..].iter().all(|b| *b == 0) => {
                // The unused, preallocated end of the newest segment: the log ends here.
                // Trimmed so the writer continues right after the last record.
                trim(path, offset as u64)?;
                return Ok(());
            }
            Err(err) if is_last && (err.is_truncation() || !valid_record_follows(&bytes[offset + 1..])) => {
                let cut = (bytes.len() - offset) as u64;
                tracing::warn!(
                    segment = %path.display(),
                    offset,
                    bytes = cut,
                    reason = %err,
                    "cutting torn tail of the write-ahead log"
                );
                trim(path, offset as u64)?;
                outcome.truncated = Some((path.clone(), offset as u64, cut));
                return Ok(());
            }
            Err(err) => return Err(StorageError::corruption(path, offset as u64, err.to_string())),
        }
    }
    Ok(())
}

/// Cuts `path` to `len` bytes, durably.
fn trim(path: &Path, len: u64) -> Result<(), StorageError> {
    let file = OpenOptions::new().write(true).open(path).at(path)?;
    file.set_len(len).at(path)?;
    file.sync_all().at(path)
}

/// True when a complete, valid record starts anywhere in `bytes`.
fn valid_record_follows(bytes: &[u8]) -> bool {
    (0..bytes.len()).any(|at| Record::decode(&bytes[at..]).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::segment::segment_name;
    use bitark_common::{Command, Epoch};
    use std::io::Write;

    fn record(lsn: u64) -> Record {
        Record { epoch: Epoch(1), lsn: Lsn(lsn), time: 0, command: Command::MarkRead { user: lsn, msg: lsn * 10 } }
    }

    /// Writes segments holding the given LSN ranges; returns their paths.
    fn write_log(dir: &Path, ranges: &[std::ops::RangeInclusive<u64>]) -> Vec<PathBuf> {
        ranges
            .iter()
            .map(|r| {
                let path = dir.join(segment_name(Lsn(*r.start())));
                let mut f = fs::File::create(&path).unwrap();
                for lsn in r.clone() {
                    f.write_all(&record(lsn).encode()).unwrap();
                }
                path
            })
            .collect()
    }

    fn collect(dir: &Path, after: u64) -> Result<(Vec<u64>, ReplayOutcome), StorageError> {
        let mut lsns = Vec::new();
        let outcome = replay(dir, Lsn(after), |r| lsns.push(r.lsn.0))?;
        Ok((lsns, outcome))
    }

    #[test]
    fn replays_across_segments_from_a_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        write_log(dir.path(), &[1..=5, 6..=9, 10..=12]);
        let (lsns, outcome) = collect(dir.path(), 7).unwrap();
        assert_eq!(lsns, (8..=12).collect::<Vec<_>>());
        assert_eq!(outcome.wal_end, Lsn(12));
        assert_eq!(outcome.truncated, None);
    }

    #[test]
    fn torn_last_record_is_cut_off_and_the_file_shortened() {
        let dir = tempfile::tempdir().unwrap();
        let paths = write_log(dir.path(), &[1..=3, 4..=6]);
        let full = fs::metadata(&paths[1]).unwrap().len();
        let one = record(6).encoded_len() as u64;
        let f = OpenOptions::new().write(true).open(&paths[1]).unwrap();
        f.set_len(full - 5).unwrap();
        let (lsns, outcome) = collect(dir.path(), 0).unwrap();
        assert_eq!(lsns, vec![1, 2, 3, 4, 5]);
        assert_eq!(outcome.wal_end, Lsn(5));
        assert_eq!(outcome.truncated, Some((paths[1].clone(), full - one, one - 5)));
        assert_eq!(fs::metadata(&paths[1]).unwrap().len(), full - one);
    }

    #[test]
    fn garbage_at_the_tail_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let paths = write_log(dir.path(), &[1..=3]);
        let mut f = OpenOptions::new().append(true).open(&paths[0]).unwrap();
        f.write_all(&[0xAB; 100]).unwrap();
        let (lsns, outcome) = collect(dir.path(), 0).unwrap();
        assert_eq!(lsns, vec![1, 2, 3]);
        assert!(outcome.truncated.is_some());
    }

    #[test]
    fn a_preallocated_zero_tail_is_the_clean_end_and_is_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let paths = write_log(dir.path(), &[1..=3]);
        let len = fs::metadata(&paths[0]).unwrap().len();
        OpenOptions::new().write(true).open(&paths[0]).unwrap().set_len(len + 4096).unwrap();
        let (lsns, outcome) = collect(dir.path(), 0).unwrap();
        assert_eq!(lsns, vec![1, 2, 3]);
        assert_eq!(outcome.truncated, None, "not reported as a torn tail");
        assert_eq!(fs::metadata(&paths[0]).unwrap().len(), len);
    }

    #[test]
    fn a_zero_tail_in_an_older_segment_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let paths = write_log(dir.path(), &[1..=3, 4..=6]);
        let len = fs::metadata(&paths[0]).unwrap().len();
        OpenOptions::new().write(true).open(&paths[0]).unwrap().set_len(len + 100).unwrap();
        assert!(matches!(collect(dir.path(), 0), Err(StorageError::Corruption { .. })));
    }

    #[test]
    fn damage_followed_by_valid_records_is_corruption_naming_file_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let paths = write_log(dir.path(), &[1..=4]);
        let one = record(1).encoded_len();
        let mut bytes = fs::read(&paths[0]).unwrap();
        bytes[one + 20] ^= 0xFF; // inside record 2
        fs::write(&paths[0], &bytes).unwrap();
        match collect(dir.path(), 0) {
            Err(StorageError::Corruption { path, offset, .. }) => {
                assert_eq!(path, paths[0]);
                assert_eq!(offset, one as u64);
            }
            other => panic!("expected corruption, got {other:?}"),
        }
        assert_eq!(fs::read(&paths[0]).unwrap(), bytes, "a corrupt log is not modified");
    }

    #[test]
    fn damage_in_an_older_segment_is_corruption_even_at_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let paths = write_log(dir.path(), &[1..=3, 4..=6]);
        let len = fs::metadata(&paths[0]).unwrap().len();
        OpenOptions::new().write(true).open(&paths[0]).unwrap().set_len(len - 1).unwrap();
        assert!(matches!(collect(dir.path(), 0), Err(StorageError::Corruption { .. })));
    }

    #[test]
    fn a_gap_between_segments_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        write_log(dir.path(), &[1..=3, 5..=6]);
        let err = collect(dir.path(), 0).unwrap_err();
        assert!(err.to_string().contains("starts at LSN 5"), "{err}");
    }

    #[test]
    fn a_log_that_no_longer_reaches_back_to_the_checkpoint_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write_log(dir.path(), &[10..=12]);
        assert!(collect(dir.path(), 8).is_err());
        assert_eq!(collect(dir.path(), 9).unwrap().0, vec![10, 11, 12]);
    }

    #[test]
    fn an_empty_newest_segment_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        write_log(dir.path(), &[1..=3]);
        fs::File::create(dir.path().join(segment_name(Lsn(4)))).unwrap();
        let (lsns, outcome) = collect(dir.path(), 0).unwrap();
        assert_eq!(lsns, vec![1, 2, 3]);
        assert_eq!(outcome.wal_end, Lsn(3));
    }
}
