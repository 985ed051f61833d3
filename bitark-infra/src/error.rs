//! Storage errors.

use std::path::PathBuf;

/// What went wrong with a file BitArk owns.
///
/// `Corruption` is kept apart from `Io`: it means the bytes on disk are wrong and names
/// the file and byte offset, so an operator can look at exactly that place.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("corruption in {path} at byte offset {offset}: {reason}")]
    Corruption { path: PathBuf, offset: u64, reason: String },
    #[error("the write-ahead log is shut down")]
    Closed,
}

impl StorageError {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StorageError::Io { path: path.into(), source }
    }

    /// A corruption at `offset` of `path`.
    pub fn corruption(path: impl Into<PathBuf>, offset: u64, reason: impl Into<String>) -> Self {
        StorageError::Corruption { path: path.into(), offset, reason: reason.into() }
    }
}

/// Attaches a path to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn at(self, path: &std::path::Path) -> Result<T, StorageError>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: &std::path::Path) -> Result<T, StorageError> {
        self.map_err(|e| StorageError::io(path, e))
    }
}
