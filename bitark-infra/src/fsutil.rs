//! File-system helpers for crash-safe updates.

use crate::error::{IoContext, StorageError};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

/// Makes a directory's entries (creations, renames, deletions) durable.
pub fn fsync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// As [`fsync_dir`], through a descriptor the caller keeps open.
pub fn fsync_dir_file(dir: &File, path: &Path) -> Result<(), StorageError> {
    dir.sync_all().at(path)
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

/// Deletes `path` durably if it exists; `Ok(false)` when there was nothing to delete.
pub fn remove_durable(path: &Path) -> Result<bool, StorageError> {
    match fs::remove_file(path) {
        Ok(()) => {
            fsync_dir(path.parent().unwrap_or(Path::new(".")))?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StorageError::io(path, e)),
    }
}
