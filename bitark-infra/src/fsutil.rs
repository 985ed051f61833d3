//! File-system helpers for crash-safe updates.

use crate::error::{IoContext, StorageError};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

/// Makes a directory's entries (creations, renames, deletions) durable.
pub fn fsync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// Creates `dir` and its parents, then makes the creation durable.
pub fn create_dir_durable(dir: &Path) -> Result<(), StorageError> {
    fs::create_dir_all(dir).at(dir)?;
    fsync_dir(dir)?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fsync_dir(parent)?;
    }
    Ok(())
}

/// Replaces `path` with `bytes` atomically: write a temp file, fsync it, rename it over
/// the target, fsync the directory. A crash leaves either the old or the new content.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    let tmp = path.with_extension("tmp");
    let mut file = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp).at(&tmp)?;
    file.write_all(bytes).at(&tmp)?;
    file.sync_all().at(&tmp)?;
    drop(file);
    fs::rename(&tmp, path).at(path)?;
    fsync_dir(path.parent().unwrap_or(Path::new(".")))
}
