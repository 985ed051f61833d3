//! Segment files: naming, listing, and garbage collection.

use crate::error::{IoContext, StorageError};
use crate::fsutil::fsync_dir;
use bitark_common::Lsn;
use std::fs;
use std::path::{Path, PathBuf};

const SUFFIX: &str = ".wal";

/// One segment on disk: the LSN of its first record and its path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentFile {
    pub first_lsn: Lsn,
    pub path: PathBuf,
}

/// The file name of the segment whose first record has `first_lsn`.
pub fn segment_name(first_lsn: Lsn) -> String {
    format!("{:020}{SUFFIX}", first_lsn.0)
}

/// Every segment in `dir`, oldest first. Files that are not segments are ignored.
pub fn list_segments(dir: &Path) -> Result<Vec<SegmentFile>, StorageError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(SUFFIX) else { continue };
        if stem.len() != 20 {
            continue;
        }
        if let Ok(first) = stem.parse::<u64>() {
            out.push(SegmentFile { first_lsn: Lsn(first), path: entry.path() });
        }
    }
    out.sort_by_key(|s| s.first_lsn);
    Ok(out)
}

/// Deletes every segment whose records all lie at or below `horizon`, never the newest
/// segment. A segment is wholly below the horizon when the next one starts at or before
/// `horizon + 1`. Returns the number of segments deleted.
pub fn purge_to(dir: &Path, horizon: Lsn) -> Result<usize, StorageError> {
    let segments = list_segments(dir)?;
    let mut deleted = 0;
    for pair in segments.windows(2) {
        if pair[1].first_lsn.0 > horizon.0.saturating_add(1) {
            break;
        }
        fs::remove_file(&pair[0].path).at(&pair[0].path)?;
        tracing::debug!(segment = %pair[0].path.display(), %horizon, "deleted WAL segment");
        deleted += 1;
    }
    if deleted > 0 {
        fsync_dir(dir)?;
    }
    Ok(deleted)
}

/// Deletes every segment in `dir` (the log is wholly covered by a snapshot), durably.
pub fn remove_all(dir: &Path) -> Result<usize, StorageError> {
    let segments = list_segments(dir)?;
    for segment in &segments {
        tracing::warn!(segment = %segment.path.display(), "removing WAL segment covered by the snapshot");
        fs::remove_file(&segment.path).at(&segment.path)?;
    }
    if !segments.is_empty() {
        fsync_dir(dir)?;
    }
    Ok(segments.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(dir: &Path, first: u64) {
        fs::write(dir.join(segment_name(Lsn(first))), b"x").unwrap();
    }

    #[test]
    fn lists_segments_in_lsn_order_and_ignores_other_files() {
        let dir = tempfile::tempdir().unwrap();
        touch(dir.path(), 100);
        touch(dir.path(), 1);
        touch(dir.path(), 20);
        fs::write(dir.path().join("notes.txt"), b"").unwrap();
        fs::write(dir.path().join("12.wal"), b"").unwrap();
        let firsts: Vec<u64> = list_segments(dir.path()).unwrap().iter().map(|s| s.first_lsn.0).collect();
        assert_eq!(firsts, vec![1, 20, 100]);
    }

    #[test]
    fn purge_deletes_only_segments_wholly_below_the_horizon() {
        let dir = tempfile::tempdir().unwrap();
        for first in [1, 20, 100] {
            touch(dir.path(), first);
        }
        // Segment 1 holds 1..=19, segment 20 holds 20..=99.
        assert_eq!(purge_to(dir.path(), Lsn(18)).unwrap(), 0);
        assert_eq!(purge_to(dir.path(), Lsn(19)).unwrap(), 1);
        assert_eq!(purge_to(dir.path(), Lsn(1000)).unwrap(), 1);
        let left: Vec<u64> = list_segments(dir.path()).unwrap().iter().map(|s| s.first_lsn.0).collect();
        assert_eq!(left, vec![100], "the newest segment is never deleted");
    }
}
