//! [`Error`]: why a backup command stopped, each variant saying what it found and where.

use bitark_common::Lsn;
use bitark_infra::backup::TargetError;
use bitark_infra::restore::RestoreError;
use bitark_infra::StorageError;

/// Why `bitark backup`, `backup verify`, `backup prune` or `restore` stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // The target.
    /// The target cannot be opened, listed or written. (Boxed, as in `Read`: an
    /// object store's error is large, and every `Result` here would carry its size.)
    #[error(transparent)]
    Target(Box<TargetError>),
    /// A file of the target cannot be read.
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: Box<TargetError>,
    },
    /// A manifest does not parse or is not intact.
    #[error("manifest {0}")]
    Manifest(#[from] bitark_infra::backup::ManifestError),
    /// A manifest of a format this build does not read.
    #[error("{id}: manifest format {format} is not one this build reads")]
    ManifestFormat { id: String, format: u32 },

    // The node backed up.
    /// The HTTP client cannot be built.
    #[error("{0}")]
    Client(#[source] reqwest::Error),
    /// A call to the node (at `at`) failed or its answer did not read.
    #[error("{at}: {source}")]
    Node {
        at: String,
        #[source]
        source: reqwest::Error,
    },
    /// The node refused to begin the backup.
    #[error("{node} refused the backup ({status}): {body}")]
    Refused { node: String, status: reqwest::StatusCode, body: String },
    /// A read of the backup was refused.
    #[error("{url}: {status} {body}")]
    Answer { url: String, status: reqwest::StatusCode, body: String },
    /// A snapshot range arrived with the wrong length or crc32.
    #[error("{url}: the snapshot range arrived damaged or cut short")]
    RangeDamaged { url: String },
    /// A snapshot read's task stopped.
    #[error("a snapshot read failed: {0}")]
    SnapshotRead(#[source] tokio::task::JoinError),
    /// The snapshot's first range holds no intact header.
    #[error("{url}: the snapshot does not start with an intact header")]
    NoHeader { url: String },
    /// The node sent no record where the backup's log goes on.
    #[error("{url}: the node sent no record, but the backup ends at LSN {end}")]
    NoRecords { url: String, end: u64 },
    /// An incremental backup of a target without a backup to continue.
    #[error("{target} holds no backup for an incremental one to continue; take a full backup first")]
    NoParent { target: String },
    /// An incremental backup of a node whose log ends before the backup it would continue.
    #[error(
        "the node's log ends at LSN {node_end}, before the end of backup {parent} (LSN {parent_end}): it is not the \
         node that backup came from"
    )]
    NotTheNode { node_end: u64, parent: String, parent_end: u64 },

    // What a backup's files hold.
    /// A record of `file` does not decode.
    #[error("{file}: record at byte {at}: {why}")]
    Undecodable { file: String, at: usize, why: String },
    /// A record of `file` is not the next one of the log.
    #[error("{file}: LSN {lsn} follows where LSN {due} was due: the WAL chain has a gap")]
    Gap { file: String, lsn: Lsn, due: Lsn },
    /// A file's size is not the manifest's.
    #[error("{path}: {size} bytes where the manifest says {expected}")]
    Size { path: String, size: u64, expected: u64 },
    /// A file's crc32 is not the manifest's.
    #[error("{path}: crc32 {crc:08x} where the manifest says {expected:08x}: the file is damaged")]
    Crc { path: String, crc: u32, expected: u32 },
    /// A backup's log ends elsewhere than its manifest says.
    #[error("{id}: the WAL ends at LSN {wal_end}, the manifest at LSN {manifest_end}")]
    WalEnd { id: String, wal_end: u64, manifest_end: u64 },
    /// A record of the archive is not the next one of the log.
    #[error("{path}: LSN {lsn} follows where LSN {due} was due: the archive has a gap")]
    ArchiveGap { path: String, lsn: Lsn, due: Lsn },
    /// LSNs a backup needs are missing from the archive.
    #[error("the archive (wal/) has a gap: LSN {from} to {to} are missing")]
    ArchiveMissing { from: u64, to: u64 },

    // Which backup.
    /// A backup directory without a manifest.
    #[error("{id} has no manifest: it is a backup that was cut short, not a backup")]
    CutShort { id: String },
    /// No backup of that id.
    #[error("{target} holds no backup {id}")]
    NoSuchBackup { target: String, id: String },
    /// The target holds no complete backup.
    #[error("{target} holds no complete backup")]
    NoBackup { target: String },
    /// No full backup's snapshot is as old as the recovery time.
    #[error("{target} holds no full backup whose snapshot was taken at or before {at}")]
    NoneTakenBy { target: String, at: String },
    /// No full backup starts as early as the recovery LSN.
    #[error("{target} holds no full backup that starts at or before LSN {lsn}")]
    NoneStartsBy { target: String, lsn: u64 },
    /// An incremental backup cannot be restored by itself.
    #[error("{id} is an incremental backup; restore the full backup it continues")]
    Incremental { id: String },
    /// The backup starts after the recovery LSN.
    #[error("backup {id} starts at LSN {start}, after the recovery target LSN {to}")]
    StartsAfter { id: String, start: u64, to: u64 },
    /// The backup's snapshot is newer than the recovery time.
    #[error("the snapshot of backup {id} was taken at {taken}, after the recovery target {at}")]
    TakenAfter { id: String, taken: String, at: String },
    /// The backup does not say when its snapshot was taken.
    #[error("backup {id} does not say when its snapshot was taken")]
    Undated { id: String },
    /// The recovery LSN is past every record held.
    #[error("backup {id} and the archive hold records up to LSN {held}; the recovery target LSN {to} is past it")]
    PastEnd { id: String, held: u64, to: u64 },
    /// A record without a commit time stands where a recovery time is looked for.
    #[error("the record at LSN {lsn} carries no commit time (record format 1); restore to an LSN instead")]
    NoCommitTime { lsn: Lsn },
    /// The backup holds no snapshot.
    #[error("backup {id} holds no snapshot")]
    NoSnapshot { id: String },

    // The data directory restored.
    /// The data directory cannot be restored into.
    #[error(transparent)]
    DataDir(#[from] RestoreError),
    /// Writing the data directory failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The snapshot `path` of the backup, once written, does not read back whole.
    #[error("{path}: {source}")]
    Restored {
        path: String,
        #[source]
        source: StorageError,
    },

    // Pruning.
    /// `--keep-full 0`.
    #[error("--keep-full must be at least 1: a target with no full backup restores nothing")]
    KeepNoFull,
}

impl From<TargetError> for Error {
    fn from(e: TargetError) -> Self {
        Error::Target(Box::new(e))
    }
}

impl Error {
    /// The file `path` of the target could not be read.
    pub(super) fn read(path: &str, source: TargetError) -> Error {
        Error::Read { path: path.to_string(), source: Box::new(source) }
    }
}
