//! Snapshot files.
//!
//! Files live in `<data-dir>/snapshots/` named `snapshot-<lsn, 20 digits>.snap`.
//!
//! ```text
//! header, 64 bytes, little endian
//!    0  8  magic "BITARKSN"
//!    8  4  format version (2; 1 is still read)
//!   12  4  reserved, zero
//!   16  8  lsn      every record at or below it is reflected
//!   24  8  epoch
//!   32  8  users
//!   40  8  marks
//!   48  8  created, Unix milliseconds
//!   56  4  format 2: crc32 of every chunk's crc in order; format 1: crc32 of the body
//!   60  4  crc32 of header bytes 0..60
//! ```
//!
//! **Format 2** (written): the body is a run of chunks, each holding entries of one store
//! shard, so that a loader can hand whole chunks to threads that each own some shards:
//!
//! ```text
//! chunk header, 32 bytes
//!    0  4  shard        the store shard every entry of the chunk belongs to
//!    4  4  users        entries in the chunk
//!    8  8  marks        marks in the chunk's entries
//!   16  8  shard users  users of the whole shard (so a loader sizes its table once)
//!   24  4  len          bytes of the chunk body
//!   28  4  crc32        of header bytes 0..28 and the body
//! body: the entries, in the store's own encoding (see the engine's store)
//! ```
//! Chunk bodies are at most [`CHUNK_MAX`] bytes apart from one entry larger than that.
//! What the body's entries mean is the store's business: this module checks that every
//! chunk is whole and intact, and that the counts add up to the header's.
//!
//! **Format 3** (written by a sharded node): format 2 plus chunks of shard
//! [`META_SHARD`] holding no users, whose body is metadata of the node's state (its
//! ownership of the shard map), as the engine encodes it. An unsharded node's files stay
//! format 2, and a build that knows no metadata refuses a file that has some.
//!
//! **Format 1** (read only): per user `user u64 | marks u64 | len u32 | len bytes of the
//! portable roaring serialization` (the 64-bit `RoaringTreemap` form).
//!
//! The file is written as `*.snap.tmp`, the header rewritten once the counts are known,
//! fsynced, renamed into place and the directory fsynced: a crash leaves either no
//! snapshot or a whole one.

use crate::error::{IoContext, StorageError};
use crate::fsutil::fsync_dir;
use bitark_common::{Epoch, Lsn};
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"BITARKSN";
/// The snapshot format this build writes.
pub const FORMAT_VERSION: u32 = 2;
/// Format 2 with metadata chunks ([`SnapshotWriter::add_meta`]).
pub const FORMAT_WITH_META: u32 = 3;
/// The shard number of a metadata chunk.
pub const META_SHARD: u32 = u32::MAX;
/// The first format, per-user portable roaring sets; still read.
pub const FORMAT_V1: u32 = 1;
const HEADER_LEN: usize = 64;
const ENTRY_HEADER_LEN: usize = 20;
const CHUNK_HEADER_LEN: usize = 32;
/// A writer starts a new chunk once its body reaches this many bytes.
pub const CHUNK_MAX: usize = 1 << 20;
/// Largest chunk body a reader accepts; a longer length is damage.
const CHUNK_LIMIT: u64 = 1 << 31;

/// What a finished or verified snapshot holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub path: PathBuf,
    /// The file's format version.
    pub version: u32,
    pub lsn: Lsn,
    pub epoch: Epoch,
    pub users: u64,
    pub marks: u64,
    pub size: u64,
}

/// The file name of the snapshot taken at `lsn`.
pub fn snapshot_name(lsn: Lsn) -> String {
    format!("snapshot-{:020}.snap", lsn.0)
}

/// Every snapshot file in `dir`, oldest first (by LSN). Temp files are not listed.
pub fn list_snapshots(dir: &Path) -> Result<Vec<(Lsn, PathBuf)>, StorageError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        let name = entry.file_name();
        let Some(lsn) = name
            .to_str()
            .and_then(|n| n.strip_prefix("snapshot-"))
            .and_then(|n| n.strip_suffix(".snap"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        out.push((Lsn(lsn), entry.path()));
    }
    out.sort();
    Ok(out)
}

/// Deletes all but the newest `keep` snapshots, except those at a `pinned` LSN (a reader
/// may still hold them), and any leftover temp files.
pub fn remove_old_snapshots(dir: &Path, keep: usize, pinned: &[Lsn]) -> Result<usize, StorageError> {
    let snapshots = list_snapshots(dir)?;
    let mut removed = 0;
    for (lsn, path) in snapshots.iter().take(snapshots.len().saturating_sub(keep)) {
        if pinned.contains(lsn) {
            continue;
        }
        fs::remove_file(path).at(path)?;
        removed += 1;
    }
    for entry in fs::read_dir(dir).at(dir)? {
        let path = entry.at(dir)?.path();
        if path.extension().is_some_and(|e| e == "tmp") {
            fs::remove_file(&path).at(&path)?;
        }
    }
    if removed > 0 {
        fsync_dir(dir)?;
    }
    Ok(removed)
}

/// Bytes written between two requests to start writeback (see [`SnapshotWriter`]).
const WRITEBACK_EVERY: u64 = 1 << 20;

/// Streams a new snapshot to disk.
///
/// Every [`WRITEBACK_EVERY`] bytes it asks the kernel to start writing them back and
/// waits for the chunk before to be on disk (`sync_file_range`), so at most two chunks
/// are ever in flight. Otherwise a snapshot of hundreds of megabytes sits dirty in the
/// page cache until its final fsync, which then floods the disk queue for seconds, and
/// every group-commit fsync of the log waits behind it.
pub struct SnapshotWriter {
    version: u32,
    tmp: PathBuf,
    path: PathBuf,
    out: BufWriter<File>,
    crc: crc32fast::Hasher,
    lsn: Lsn,
    epoch: Epoch,
    users: u64,
    marks: u64,
    size: u64,
    /// Bytes already handed to writeback.
    written_back: u64,
}

impl SnapshotWriter {
    /// Starts `snapshot-<lsn>.snap.tmp` in `dir`, in the current format: fill it with
    /// [`Self::add_chunk`].
    pub fn create(dir: &Path, lsn: Lsn, epoch: Epoch) -> Result<Self, StorageError> {
        Self::create_version(dir, lsn, epoch, FORMAT_VERSION)
    }

    /// Starts a snapshot in format 1, as earlier versions wrote it: fill it with
    /// [`Self::add_user`]. For tests and tools that need a file of that format.
    pub fn create_v1(dir: &Path, lsn: Lsn, epoch: Epoch) -> Result<Self, StorageError> {
        Self::create_version(dir, lsn, epoch, FORMAT_V1)
    }

    fn create_version(dir: &Path, lsn: Lsn, epoch: Epoch, version: u32) -> Result<Self, StorageError> {
        let path = dir.join(snapshot_name(lsn));
        let tmp = path.with_extension("snap.tmp");
        let file = File::create(&tmp).at(&tmp)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&[0u8; HEADER_LEN]).at(&tmp)?;
        Ok(SnapshotWriter {
            version,
            tmp,
            path,
            out,
            crc: crc32fast::Hasher::new(),
            lsn,
            epoch,
            users: 0,
            marks: 0,
            size: HEADER_LEN as u64,
            written_back: 0,
        })
    }

    /// Appends one chunk of `shard`'s entries (format 2): `users` entries holding `marks`
    /// marks, out of `shard_users` in the whole shard.
    pub fn add_chunk(
        &mut self,
        shard: u32,
        users: u32,
        marks: u64,
        shard_users: u64,
        body: &[u8],
    ) -> Result<(), StorageError> {
        assert!(matches!(self.version, FORMAT_VERSION | FORMAT_WITH_META), "add_chunk writes format 2 or 3");
        let mut head = [0u8; CHUNK_HEADER_LEN];
        head[0..4].copy_from_slice(&shard.to_le_bytes());
        head[4..8].copy_from_slice(&users.to_le_bytes());
        head[8..16].copy_from_slice(&marks.to_le_bytes());
        head[16..24].copy_from_slice(&shard_users.to_le_bytes());
        head[24..28].copy_from_slice(&(body.len() as u32).to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head[0..28]);
        crc.update(body);
        let crc = crc.finalize();
        head[28..32].copy_from_slice(&crc.to_le_bytes());
        self.crc.update(&crc.to_le_bytes());
        self.append(&head, body, users as u64, marks)
    }

    /// Appends a metadata chunk: no users, `body` as the engine encodes it. The file
    /// becomes format 3.
    pub fn add_meta(&mut self, body: &[u8]) -> Result<(), StorageError> {
        assert!(matches!(self.version, FORMAT_VERSION | FORMAT_WITH_META), "add_meta writes format 3");
        self.version = FORMAT_WITH_META;
        self.add_chunk(META_SHARD, 0, 0, 0, body)
    }

    /// Appends one user's set in the portable roaring serialization (format 1).
    pub fn add_user(&mut self, user: u64, marks: u64, portable: &[u8]) -> Result<(), StorageError> {
        assert_eq!(self.version, FORMAT_V1, "add_user writes format {FORMAT_V1}");
        let mut head = [0u8; ENTRY_HEADER_LEN];
        head[0..8].copy_from_slice(&user.to_le_bytes());
        head[8..16].copy_from_slice(&marks.to_le_bytes());
        head[16..20].copy_from_slice(&(portable.len() as u32).to_le_bytes());
        self.crc.update(&head);
        self.crc.update(portable);
        self.append(&head, portable, 1, marks)
    }

    fn append(&mut self, head: &[u8], body: &[u8], users: u64, marks: u64) -> Result<(), StorageError> {
        self.out.write_all(head).at(&self.tmp)?;
        self.out.write_all(body).at(&self.tmp)?;
        self.users += users;
        self.marks += marks;
        self.size += (head.len() + body.len()) as u64;
        if self.size - self.written_back >= WRITEBACK_EVERY {
            self.out.flush().at(&self.tmp)?;
            let file = self.out.get_ref();
            writeback(file, self.written_back, self.size - self.written_back, WRITEBACK_START);
            // The chunk before this one (everything below `written_back`) must be done.
            writeback(file, 0, self.written_back, WRITEBACK_WAIT);
            self.written_back = self.size;
        }
        Ok(())
    }

    /// Writes the header, makes the file durable and moves it into place. On failure
    /// the temp file is removed.
    pub fn finish(self) -> Result<SnapshotInfo, StorageError> {
        let tmp = self.tmp.clone();
        let result = self.finish_inner();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    fn finish_inner(self) -> Result<SnapshotInfo, StorageError> {
        let SnapshotWriter { version, tmp, path, out, crc, lsn, epoch, users, marks, size, .. } = self;
        let mut file = out.into_inner().map_err(|e| StorageError::io(&tmp, e.into_error()))?;
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let header = encode_header(version, lsn, epoch, users, marks, created, crc.finalize());
        file.seek(SeekFrom::Start(0)).at(&tmp)?;
        file.write_all(&header).at(&tmp)?;
        file.sync_all().at(&tmp)?;
        drop(file);
        fail::fail_point!("snapshot::before-rename", |_| Err(StorageError::io(
            &tmp,
            std::io::Error::other("injected failure at snapshot::before-rename")
        )));
        fs::rename(&tmp, &path).at(&path)?;
        fsync_dir(path.parent().unwrap_or(Path::new(".")))?;
        Ok(SnapshotInfo { path, version, lsn, epoch, users, marks, size })
    }

    /// Drops an unfinished snapshot and its temp file.
    pub fn abandon(self) {
        let tmp = self.tmp.clone();
        drop(self);
        let _ = fs::remove_file(tmp);
    }
}

#[cfg(target_os = "linux")]
const WRITEBACK_START: u32 = libc::SYNC_FILE_RANGE_WRITE;
#[cfg(target_os = "linux")]
const WRITEBACK_WAIT: u32 = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
#[cfg(not(target_os = "linux"))]
const WRITEBACK_START: u32 = 0;
#[cfg(not(target_os = "linux"))]
const WRITEBACK_WAIT: u32 = 0;

/// `sync_file_range` over `len` bytes at `offset` (start writing back, or wait for it).
/// Best effort: durability comes from the final fsync.
fn writeback(file: &File, offset: u64, len: u64, flags: u32) {
    if len == 0 {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: sync_file_range only reads its integer arguments; the descriptor is
        // open and owned by `file` for the duration of the call.
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), offset as libc::off64_t, len as libc::off64_t, flags);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, flags);
}

/// When the snapshot whose first bytes are `head` was taken (Unix milliseconds), or
/// `None` when `head` is not an intact snapshot header.
pub fn header_created_ms(head: &[u8]) -> Option<u64> {
    let h = head.get(..HEADER_LEN)?;
    (&h[0..8] == MAGIC && crc32fast::hash(&h[0..60]) == u32_at(h, 60)).then(|| u64_at(h, 48))
}

fn encode_header(
    version: u32,
    lsn: Lsn,
    epoch: Epoch,
    users: u64,
    marks: u64,
    created: u64,
    body_crc: u32,
) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&version.to_le_bytes());
    h[16..24].copy_from_slice(&lsn.0.to_le_bytes());
    h[24..32].copy_from_slice(&epoch.0.to_le_bytes());
    h[32..40].copy_from_slice(&users.to_le_bytes());
    h[40..48].copy_from_slice(&marks.to_le_bytes());
    h[48..56].copy_from_slice(&created.to_le_bytes());
    h[56..60].copy_from_slice(&body_crc.to_le_bytes());
    let crc = crc32fast::hash(&h[0..60]);
    h[60..64].copy_from_slice(&crc.to_le_bytes());
    h
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("slice of 8"))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("slice of 4"))
}

/// One piece of a snapshot handed to the loader of [`read_snapshot`].
#[derive(Debug)]
pub enum SnapshotPart<'a> {
    /// Format 2: a whole chunk of one shard's entries, its checksum verified.
    Chunk(Chunk),
    /// Format 3: the body of a metadata chunk, its checksum verified.
    Meta(Vec<u8>),
    /// Format 1: one user's set in the portable roaring serialization.
    User { user: u64, marks: u64, portable: &'a [u8] },
}

/// A format-2 chunk: entries of one store shard, in the store's encoding.
#[derive(Debug, Default)]
pub struct Chunk {
    pub shard: u32,
    pub users: u32,
    pub marks: u64,
    /// Users of the whole shard.
    pub shard_users: u64,
    /// Byte offset of the chunk header in the file, for error messages.
    pub offset: u64,
    pub body: Vec<u8>,
}

/// A loader's verdict that a piece of a snapshot holds content it cannot take (a set
/// that does not decode, a shard out of range); [`read_snapshot`] reports it as
/// corruption of the file at the piece's offset, with this reason.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidPart(pub String);

/// Reads and verifies a snapshot, handing it piece by piece to `load`.
///
/// A format-2 chunk reaches `load` only once its own checksum is verified, but the file
/// as a whole is known to be right only when this returns `Ok`: on an error the caller
/// must discard what it loaded. An error of `load` is reported at the offset of the
/// piece it was given. Every error names the file and byte offset.
pub fn read_snapshot(
    path: &Path,
    mut load: impl FnMut(SnapshotPart<'_>) -> Result<(), InvalidPart>,
) -> Result<SnapshotInfo, StorageError> {
    let corrupt = |offset: u64, reason: String| StorageError::corruption(path, offset, reason);
    let file = File::open(path).at(path)?;
    let size = file.metadata().at(path)?.len();
    let mut input = BufReader::with_capacity(1 << 20, file);
    let mut h = [0u8; HEADER_LEN];
    input.read_exact(&mut h).map_err(|_| corrupt(0, "file shorter than the snapshot header".into()))?;
    if &h[0..8] != MAGIC {
        return Err(corrupt(0, "not a BitArk snapshot (bad magic)".into()));
    }
    if crc32fast::hash(&h[0..60]) != u32_at(&h, 60) {
        return Err(corrupt(0, "header checksum mismatch".into()));
    }
    let version = u32_at(&h, 8);
    let (lsn, epoch, users, marks) = (Lsn(u64_at(&h, 16)), Epoch(u64_at(&h, 24)), u64_at(&h, 32), u64_at(&h, 40));
    let read = Body { input: &mut input, size, corrupt: &corrupt };
    let (seen_users, seen_marks, crc) = match version {
        FORMAT_VERSION | FORMAT_WITH_META => read.chunks(version, &mut load)?,
        FORMAT_V1 => read.users(users, &mut load)?,
        _ => return Err(corrupt(8, format!("unsupported snapshot format version {version}"))),
    };
    if crc != u32_at(&h, 56) {
        return Err(corrupt(HEADER_LEN as u64, "body checksum mismatch".into()));
    }
    if seen_users != users {
        return Err(corrupt(32, format!("header says {users} users, the body holds {seen_users}")));
    }
    if seen_marks != marks {
        return Err(corrupt(40, format!("header says {marks} marks, entries hold {seen_marks}")));
    }
    Ok(SnapshotInfo { path: path.to_path_buf(), version, lsn, epoch, users, marks, size })
}

/// The body of a snapshot being read: answers users, marks and the body checksum.
struct Body<'a, R, C> {
    input: &'a mut R,
    size: u64,
    corrupt: &'a C,
}

impl<R: Read, C: Fn(u64, String) -> StorageError> Body<'_, R, C> {
    fn chunks(
        self,
        version: u32,
        load: &mut impl FnMut(SnapshotPart<'_>) -> Result<(), InvalidPart>,
    ) -> Result<(u64, u64, u32), StorageError> {
        let corrupt = self.corrupt;
        let (mut users, mut marks) = (0u64, 0u64);
        let mut crcs = crc32fast::Hasher::new();
        let mut offset = HEADER_LEN as u64;
        while offset < self.size {
            let mut head = [0u8; CHUNK_HEADER_LEN];
            self.input.read_exact(&mut head).map_err(|_| corrupt(offset, "file ends inside a chunk header".into()))?;
            let len = u32_at(&head, 24) as u64;
            if offset + (CHUNK_HEADER_LEN as u64) + len > self.size || len > CHUNK_LIMIT {
                return Err(corrupt(offset, format!("chunk length {len} runs past the end of the file")));
            }
            let mut body = vec![0u8; len as usize];
            self.input.read_exact(&mut body).map_err(|_| corrupt(offset, "file ends inside a chunk".into()))?;
            let mut crc = crc32fast::Hasher::new();
            crc.update(&head[0..28]);
            crc.update(&body);
            let crc = crc.finalize();
            if crc != u32_at(&head, 28) {
                return Err(corrupt(offset, "chunk checksum mismatch".into()));
            }
            crcs.update(&crc.to_le_bytes());
            let chunk = Chunk {
                shard: u32_at(&head, 0),
                users: u32_at(&head, 4),
                marks: u64_at(&head, 8),
                shard_users: u64_at(&head, 16),
                offset,
                body,
            };
            let part = if chunk.shard != META_SHARD {
                users += chunk.users as u64;
                marks += chunk.marks;
                SnapshotPart::Chunk(chunk)
            } else if version == FORMAT_WITH_META && chunk.users == 0 && chunk.marks == 0 {
                SnapshotPart::Meta(chunk.body)
            } else {
                return Err(corrupt(offset, format!("a metadata chunk in a format {version} snapshot")));
            };
            load(part).map_err(|InvalidPart(reason)| corrupt(offset, reason))?;
            offset += CHUNK_HEADER_LEN as u64 + len;
        }
        Ok((users, marks, crcs.finalize()))
    }

    fn users(
        self,
        users: u64,
        load: &mut impl FnMut(SnapshotPart<'_>) -> Result<(), InvalidPart>,
    ) -> Result<(u64, u64, u32), StorageError> {
        let corrupt = self.corrupt;
        let mut crc = crc32fast::Hasher::new();
        let mut offset = HEADER_LEN as u64;
        let mut seen_marks = 0u64;
        let mut buf = Vec::new();
        for _ in 0..users {
            let mut head = [0u8; ENTRY_HEADER_LEN];
            self.input.read_exact(&mut head).map_err(|_| corrupt(offset, "file ends inside an entry header".into()))?;
            let len = u32_at(&head, 16) as u64;
            if offset + ENTRY_HEADER_LEN as u64 + len > self.size {
                return Err(corrupt(offset, format!("entry length {len} runs past the end of the file")));
            }
            buf.resize(len as usize, 0);
            self.input.read_exact(&mut buf).map_err(|_| corrupt(offset, "file ends inside an entry".into()))?;
            crc.update(&head);
            crc.update(&buf);
            let (user, marks) = (u64_at(&head, 0), u64_at(&head, 8));
            load(SnapshotPart::User { user, marks, portable: &buf })
                .map_err(|InvalidPart(reason)| corrupt(offset, reason))?;
            seen_marks += marks;
            offset += ENTRY_HEADER_LEN as u64 + len;
        }
        if offset != self.size {
            return Err(corrupt(offset, format!("{} unexpected bytes after the last entry", self.size - offset)));
        }
        Ok((users, seen_marks, crc.finalize()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A format-2 snapshot of chunks `(shard, users, marks, body)`.
    fn write(dir: &Path, lsn: u64, chunks: &[(u32, u32, u64, &[u8])]) -> SnapshotInfo {
        let mut w = SnapshotWriter::create(dir, Lsn(lsn), Epoch(2)).unwrap();
        for (shard, users, marks, body) in chunks {
            w.add_chunk(*shard, *users, *marks, *users as u64, body).unwrap();
        }
        w.finish().unwrap()
    }

    fn write_v1(dir: &Path, lsn: u64, users: &[(u64, u64, &[u8])]) -> SnapshotInfo {
        let mut w = SnapshotWriter::create_v1(dir, Lsn(lsn), Epoch(2)).unwrap();
        for (user, marks, bytes) in users {
            w.add_user(*user, *marks, bytes).unwrap();
        }
        w.finish().unwrap()
    }

    /// Every piece of a snapshot, as `(shard or user, count, bytes)`.
    type Piece = (u64, u64, Vec<u8>);

    fn read_all(path: &Path) -> Result<(SnapshotInfo, Vec<Piece>), StorageError> {
        let mut got = Vec::new();
        let info = read_snapshot(path, |part| {
            got.push(match part {
                SnapshotPart::Chunk(c) => (c.shard as u64, c.users as u64, c.body),
                SnapshotPart::User { user, marks, portable } => (user, marks, portable.to_vec()),
                SnapshotPart::Meta(body) => (u64::from(META_SHARD), 0, body),
            });
            Ok(())
        })?;
        Ok((info, got))
    }

    #[test]
    fn a_metadata_chunk_makes_format_3_and_reads_back_apart_from_the_users() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SnapshotWriter::create(dir.path(), Lsn(9), Epoch(2)).unwrap();
        w.add_chunk(0, 1, 2, 1, b"ab").unwrap();
        w.add_meta(b"owned").unwrap();
        let info = w.finish().unwrap();
        assert_eq!(info.version, FORMAT_WITH_META);
        let (read, pieces) = read_all(&info.path).unwrap();
        assert_eq!((read.version, read.users, read.marks), (FORMAT_WITH_META, 1, 2));
        assert_eq!(pieces[1], (u64::from(META_SHARD), 0, b"owned".to_vec()));
        // Without metadata the file stays format 2, and there a metadata chunk is damage.
        let plain = write(dir.path(), 10, &[(0, 1, 2, b"ab"), (META_SHARD, 0, 0, b"x")]);
        assert_eq!(plain.version, FORMAT_VERSION);
        let e = read_all(&plain.path).unwrap_err().to_string();
        assert!(e.contains("metadata chunk in a format 2 snapshot"), "{e}");
    }

    #[test]
    fn written_snapshot_reads_back_with_its_header() {
        let dir = tempfile::tempdir().unwrap();
        let info = write(dir.path(), 77, &[(3, 2, 5, b"abcdef"), (9, 1, 1, b"c")]);
        assert_eq!(info.path, dir.path().join(snapshot_name(Lsn(77))));
        let (read, chunks) = read_all(&info.path).unwrap();
        assert_eq!(read, info);
        assert_eq!((read.version, read.users, read.marks, read.epoch), (FORMAT_VERSION, 3, 6, Epoch(2)));
        assert_eq!(chunks, vec![(3, 2, b"abcdef".to_vec()), (9, 1, b"c".to_vec())]);
        assert!(!dir.path().join("snapshot-00000000000000000077.snap.tmp").exists());
    }

    #[test]
    fn format_1_snapshots_are_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let info = write_v1(dir.path(), 77, &[(1, 2, b"ab"), (u64::MAX, 1, b"c")]);
        let (read, users) = read_all(&info.path).unwrap();
        assert_eq!(read, info);
        assert_eq!((read.version, read.users, read.marks), (FORMAT_V1, 2, 3));
        assert_eq!(users, vec![(1, 2, b"ab".to_vec()), (u64::MAX, 1, b"c".to_vec())]);
    }

    #[test]
    fn any_flipped_byte_is_reported_as_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let v2 = write(dir.path(), 5, &[(1, 2, 3, b"abcd"), (2, 1, 1, b"xyz")]);
        let v1 = write_v1(dir.path(), 6, &[(1, 2, b"abcd"), (2, 1, b"xyz")]);
        for info in [v2, v1] {
            let original = fs::read(&info.path).unwrap();
            for at in 0..original.len() {
                let mut bytes = original.clone();
                bytes[at] ^= 0x40;
                fs::write(&info.path, &bytes).unwrap();
                match read_all(&info.path) {
                    Err(StorageError::Corruption { path, .. }) => assert_eq!(path, info.path),
                    other => panic!("format {}, flip at {at}: {other:?}", info.version),
                }
            }
        }
    }

    #[test]
    fn a_damaged_chunk_is_named_by_its_offset_and_not_handed_over() {
        let dir = tempfile::tempdir().unwrap();
        let info = write(dir.path(), 5, &[(1, 2, 3, b"abcd"), (2, 1, 1, b"xyz")]);
        let mut bytes = fs::read(&info.path).unwrap();
        let second = (HEADER_LEN + CHUNK_HEADER_LEN + 4) as u64;
        bytes[second as usize + CHUNK_HEADER_LEN + 1] ^= 1;
        fs::write(&info.path, &bytes).unwrap();
        let mut handed = 0;
        match read_snapshot(&info.path, |_| {
            handed += 1;
            Ok(())
        }) {
            Err(StorageError::Corruption { offset, reason, .. }) => {
                assert_eq!((offset, reason.as_str()), (second, "chunk checksum mismatch"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(handed, 1, "only the intact first chunk reached the loader");
    }

    #[test]
    fn a_part_the_loader_refuses_is_corruption_at_its_offset_with_the_loaders_reason() {
        let dir = tempfile::tempdir().unwrap();
        let v2 = write(dir.path(), 5, &[(1, 2, 3, b"abcd"), (2, 1, 1, b"xyz")]);
        let v1 = write_v1(dir.path(), 6, &[(1, 2, b"abcd"), (2, 1, b"xyz")]);
        let second_chunk = (HEADER_LEN + CHUNK_HEADER_LEN + 4) as u64;
        let second_entry = (HEADER_LEN + ENTRY_HEADER_LEN + 4) as u64;
        for (info, second) in [(v2, second_chunk), (v1, second_entry)] {
            let mut handed = 0;
            let refused = read_snapshot(&info.path, |_| {
                handed += 1;
                if handed == 2 {
                    Err(InvalidPart("a chunk of shard 2; the store has 1".into()))
                } else {
                    Ok(())
                }
            });
            match refused {
                Err(StorageError::Corruption { path, offset, reason }) => {
                    assert_eq!((path, offset), (info.path.clone(), second), "format {}", info.version);
                    assert_eq!(reason, "a chunk of shard 2; the store has 1");
                }
                other => panic!("format {}: {other:?}", info.version),
            }
        }
    }

    #[test]
    fn truncated_snapshot_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let info = write(dir.path(), 5, &[(1, 2, 3, b"abcd"), (2, 1, 1, b"xyz")]);
        let len = fs::metadata(&info.path).unwrap().len();
        // Cut inside the last chunk, and exactly at the boundary before it.
        for cut in [1, 3 + CHUNK_HEADER_LEN as u64] {
            let bytes = fs::read(&info.path).unwrap();
            let copy = dir.path().join("cut.snap");
            fs::write(&copy, &bytes[..(len - cut) as usize]).unwrap();
            assert!(matches!(read_all(&copy), Err(StorageError::Corruption { .. })), "cut {cut}");
        }
    }

    #[test]
    fn listing_sorts_by_lsn_and_cleanup_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        for lsn in [30, 4, 100] {
            write(dir.path(), lsn, &[]);
        }
        fs::write(dir.path().join("snapshot-00000000000000000200.snap.tmp"), b"partial").unwrap();
        let lsns: Vec<u64> = list_snapshots(dir.path()).unwrap().iter().map(|(l, _)| l.0).collect();
        assert_eq!(lsns, vec![4, 30, 100]);
        assert_eq!(remove_old_snapshots(dir.path(), 1, &[Lsn(4)]).unwrap(), 1, "the pinned one stays");
        let lsns: Vec<u64> = list_snapshots(dir.path()).unwrap().iter().map(|(l, _)| l.0).collect();
        assert_eq!(lsns, vec![4, 100]);
        write(dir.path(), 30, &[]);
        assert_eq!(remove_old_snapshots(dir.path(), 2, &[]).unwrap(), 1);
        let lsns: Vec<u64> = list_snapshots(dir.path()).unwrap().iter().map(|(l, _)| l.0).collect();
        assert_eq!(lsns, vec![30, 100]);
        assert!(!dir.path().join("snapshot-00000000000000000200.snap.tmp").exists());
    }
}
