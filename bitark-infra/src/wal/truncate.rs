//! Cutting the log back to an LSN: what a node that stepped down does with the records
//! its new master never had. They are not thrown away: they go, as WAL records, to a
//! side file for an operator, which is durable before the log is touched.

use crate::error::{IoContext, StorageError};
use crate::fsutil::{create_dir_durable, fsync_dir};
use crate::wal::segment::list_segments;
use bitark_common::{Lsn, Record};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// What a cut removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Records removed from the log (and kept in the side file).
    pub records: u64,
    /// LSNs of the first and last record removed.
    pub first: Option<Lsn>,
    pub last: Option<Lsn>,
    /// Where they were kept; `None` when nothing was removed.
    pub side_file: Option<PathBuf>,
}

/// Removes every record above `after` from the sealed log in `wal_dir`, copying them
/// first, durably, into a new file in `side_dir` named after `label` and the LSNs
/// removed. Run it while no segment is open (the writer's reset).
pub fn cut_after(wal_dir: &Path, after: Lsn, side_dir: &Path, label: &str) -> Result<CutReport, StorageError> {
    let segments = list_segments(wal_dir)?;
    // (segment, byte offset of its first record above `after`)
    let mut cuts: Vec<(PathBuf, u64)> = Vec::new();
    let mut kept = Vec::new();
    let mut report = CutReport::default();
    for (i, segment) in segments.iter().enumerate() {
        let next_first = segments.get(i + 1).map(|s| s.first_lsn);
        if next_first.is_some_and(|n| n.0 <= after.0 + 1) {
            continue;
        }
        let bytes = fs::read(&segment.path).at(&segment.path)?;
        let mut offset = 0;
        let mut cut_at = None;
        while offset < bytes.len() {
            let Ok((record, used)) = Record::decode(&bytes[offset..]) else { break };
            if record.lsn > after {
                cut_at.get_or_insert(offset);
                kept.extend_from_slice(&bytes[offset..offset + used]);
                report.records += 1;
                report.first.get_or_insert(record.lsn);
                report.last = Some(record.lsn);
            }
            offset += used;
        }
        if let Some(at) = cut_at {
            cuts.push((segment.path.clone(), at as u64));
        }
    }
    if report.records == 0 {
        return Ok(report);
    }
    create_dir_durable(side_dir)?;
    let (first, last) = (report.first.unwrap_or_default(), report.last.unwrap_or_default());
    let side = side_dir.join(format!("{label}-lsn-{}-{}.wal", first.0, last.0));
    let mut file = OpenOptions::new().create(true).write(true).truncate(true).open(&side).at(&side)?;
    file.write_all(&kept).at(&side)?;
    file.sync_all().at(&side)?;
    drop(file);
    fsync_dir(side_dir)?;
    for (path, at) in cuts {
        if at == 0 {
            fs::remove_file(&path).at(&path)?;
        } else {
            let file = OpenOptions::new().write(true).open(&path).at(&path)?;
            file.set_len(at).at(&path)?;
            file.sync_all().at(&path)?;
        }
    }
    fsync_dir(wal_dir)?;
    report.side_file = Some(side);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::replay;
    use bitark_common::{Command, Epoch};

    fn segment(dir: &Path, lsns: std::ops::RangeInclusive<u64>) {
        let mut bytes = Vec::new();
        for lsn in lsns.clone() {
            Record { epoch: Epoch(1), lsn: Lsn(lsn), time: 0, command: Command::MarkRead { user: lsn, msg: lsn } }
                .encode_into(&mut bytes);
        }
        fs::write(dir.join(crate::wal::segment::segment_name(Lsn(*lsns.start()))), bytes).unwrap();
    }

    #[test]
    fn records_past_the_cut_move_to_the_side_file_and_the_log_ends_at_the_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, side) = (dir.path().join("wal"), dir.path().join("diverged"));
        fs::create_dir(&wal).unwrap();
        segment(&wal, 1..=10);
        segment(&wal, 11..=20);
        segment(&wal, 21..=25);
        let report = cut_after(&wal, Lsn(14), &side, "epoch-1").unwrap();
        assert_eq!((report.records, report.first, report.last), (11, Some(Lsn(15)), Some(Lsn(25))));
        let side_file = report.side_file.unwrap();
        assert!(side_file.ends_with("epoch-1-lsn-15-25.wal"));
        let outcome = replay(&wal, Lsn(0), |_| {}).unwrap();
        assert_eq!(outcome.wal_end, Lsn(14));
        assert_eq!(list_segments(&wal).unwrap().len(), 2);
        let kept = fs::read(&side_file).unwrap();
        let (first, _) = Record::decode(&kept).unwrap();
        assert_eq!(first.lsn, Lsn(15));
        assert_eq!(cut_after(&wal, Lsn(14), &side, "epoch-1").unwrap(), CutReport::default(), "idempotent");
    }

    #[test]
    fn a_cut_at_a_segment_boundary_removes_whole_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, side) = (dir.path().join("wal"), dir.path().join("diverged"));
        fs::create_dir(&wal).unwrap();
        segment(&wal, 1..=10);
        segment(&wal, 11..=20);
        let report = cut_after(&wal, Lsn(10), &side, "x").unwrap();
        assert_eq!(report.records, 10);
        assert_eq!(list_segments(&wal).unwrap().len(), 1);
    }
}
