//! Infrastructure of BitArk: everything that touches a disk or a metrics registry.
//!
//! # Layout
//! - [`backup`]: backup targets (a local directory or S3) and what a backup leaves in
//!   them: the manifest, the snapshot and the WAL files, and the records of a WAL file.
//! - [`config`]: the `wal` section of the configuration.
//! - [`datadir`]: [`DataDir`], the data directory's layout (every path under
//!   `node.data-dir`), its `LOCK`, and the small reads the engine makes of its files.
//! - [`epoch`]: `epoch.bin`, the durable epoch history of a node.
//! - [`error`]: [`StorageError`], which keeps corruption (names a file and an offset)
//!   apart from I/O failure.
//! - [`etcd`]: the etcd v3 client of failover coordination (leases, keys, a
//!   compare-and-swap, a watch).
//! - `fixedfile`: small fixed-size state files (magic, version, two `u64`s, crc32)
//!   replaced atomically: the full-sync install marker and the slave's progress file.
//! - [`fsutil`]: fsync of directories and atomic file replacement.
//! - [`fullsync`]: a slave's full-sync download and the install that replaces its state.
//! - [`metrics`]: every Prometheus family BitArk exports, registered on an injected
//!   registry; the families of each subsystem in a file of their own.
//! - [`process`]: the process's resident memory and open-files limit.
//! - [`replication`]: the HTTP replication transport and the slave's progress file.
//! - [`snapshot`]: snapshot files (checksummed header, then chunks of one store shard
//!   each with their own crc32; format 1, per-user portable roaring sets, is still read)
//!   written temp → fsync → rename → fsync dir.
//! - [`restore`]: a data directory built from a backup's snapshot and log (`bitark restore`).
//! - [`wal`]: the segmented write-ahead log: segments, the handle and the group-commit
//!   writer thread, the recovery scan, the slaves' cursor, cutting back, GC (`purge_to`).
//!
//! Named fault-injection points (the `fail` crate, enabled by the `failpoints` feature):
//! `wal::before-write`, `wal::before-fsync`, `wal::allocate` (space reservation),
//! `wal::partial-write` (half a batch written, then `ENOSPC`), `wal::writer-panic`, `wal::before-crash-report`,
//! `snapshot::before-rename`. `return(enospc)` makes the WAL points fail
//! with `ENOSPC`.

pub mod backup;
pub mod config;
pub mod datadir;
pub mod epoch;
pub mod error;
pub mod etcd;
mod fixedfile;
pub mod fsutil;
pub mod fullsync;
pub mod metrics;
pub mod process;
pub mod replication;
pub mod restore;
pub mod snapshot;
pub mod wal;

pub use config::{FsyncPolicy, WalConfig};
pub use datadir::DataDir;
pub use error::StorageError;
pub use metrics::Metrics;
