//! Backup targets and what a backup leaves in them.
//!
//! A target is a URL: a local path or `file://` (a directory), or
//! `s3://bucket/prefix` with the usual settings from the environment
//! (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_ALLOW_HTTP` for a plain-HTTP endpoint). Layout:
//!
//! ```text
//! base/<backup-id>/snapshot-<lsn>.snap    the snapshot the backup starts from
//! base/<backup-id>/wal/<first lsn>.wal    the log after it, up to the backup's end
//! base/<backup-id>/manifest.json          written last: a backup without it is none
//! ```
//!
//! A WAL file holds records back to back, as the node's own segments do, and is named
//! by the LSN of its first record (20 digits), so that a listing sorts in log order.
//! The manifest names every file with its size and crc32; it is written only once every
//! file is in place, so a backup cut short leaves files that no manifest names.

use bitark_common::{Lsn, Record};
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload, WriteMultipart};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The manifest format this build writes and reads.
pub const MANIFEST_FORMAT: u32 = 1;
/// The name of a backup's manifest in its directory.
pub const MANIFEST: &str = "manifest.json";
/// About the most bytes one backup WAL file holds.
pub const WAL_FILE_BYTES: usize = 64 << 20;

/// Why a target could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("backup target `{0}`: {1}")]
    Url(String, String),
    #[error("backup target {target}, {path}: {source}")]
    Store { target: String, path: String, source: object_store::Error },
}

/// Why a manifest found in a target cannot be used; each names the manifest's path.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Its bytes are not a manifest this build parses.
    #[error("{path}: {source}")]
    Unreadable {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    /// It parses, but its crc32 does not match its content.
    #[error("{path}: its checksum does not match its content: the manifest is damaged")]
    Damaged { path: String },
}

/// Where backups are kept.
#[derive(Clone)]
pub struct Target {
    store: Arc<dyn ObjectStore>,
    /// The URL as given, for messages.
    pub url: String,
    /// The directory of a local target. The local object store writes files without
    /// fsync; every file stored here is fsynced with its directories before the call
    /// that stored it returns, so what a backup or the archive reports stored is on disk.
    local: Option<std::path::PathBuf>,
}

impl Target {
    /// Opens the target `url` (creating a local directory if needed), S3 settings from
    /// the environment.
    pub fn open(url: &str) -> Result<Target, TargetError> {
        Self::open_with(url, &[])
    }

    /// As [`Target::open`], with S3 settings (`aws_endpoint_url`, `aws_region`, …)
    /// given here taking precedence over the environment's.
    pub fn open_with(url: &str, settings: &[(&str, &str)]) -> Result<Target, TargetError> {
        let bad = |why: String| TargetError::Url(url.to_string(), why);
        let mut local = None;
        let store: Arc<dyn ObjectStore> = if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("names no bucket (s3://bucket/prefix)".into()));
            }
            let mut builder = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
            for (key, value) in settings {
                let key: object_store::aws::AmazonS3ConfigKey =
                    key.parse().map_err(|e: object_store::Error| bad(e.to_string()))?;
                builder = builder.with_config(key, *value);
            }
            let s3 = builder.build().map_err(|e| bad(e.to_string()))?;
            let prefix = prefix.trim_matches('/');
            if prefix.is_empty() {
                Arc::new(s3)
            } else {
                Arc::new(object_store::prefix::PrefixStore::new(s3, prefix))
            }
        } else if url.contains("://") && !url.starts_with("file://") {
            return Err(bad("use a local path, file:// or s3://".into()));
        } else {
            let dir = url.strip_prefix("file://").unwrap_or(url);
            std::fs::create_dir_all(dir).map_err(|e| bad(e.to_string()))?;
            let store = object_store::local::LocalFileSystem::new_with_prefix(dir).map_err(|e| bad(e.to_string()))?;
            local = Some(std::fs::canonicalize(dir).map_err(|e| bad(e.to_string()))?);
            Arc::new(store)
        };
        Ok(Target { store, url: url.to_string(), local })
    }

    fn error(&self, path: &str, source: object_store::Error) -> TargetError {
        TargetError::Store { target: self.url.clone(), path: path.to_string(), source }
    }

    /// Stores `bytes` at `path` whole.
    pub async fn put(&self, path: &str, bytes: Vec<u8>) -> Result<(), TargetError> {
        self.store.put(&ObjectPath::from(path), PutPayload::from(bytes)).await.map_err(|e| self.error(path, e))?;
        self.make_durable(path).await
    }

    /// On a local target, fsyncs the file at `path` and every directory from its own up
    /// to the target's. S3 answers a write only once it is durable: nothing to do there.
    async fn make_durable(&self, path: &str) -> Result<(), TargetError> {
        let Some(root) = self.local.clone() else { return Ok(()) };
        let file = root.join(path);
        let synced = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::File::open(&file)?.sync_all()?;
            for dir in file.ancestors().skip(1) {
                std::fs::File::open(dir)?.sync_all()?;
                if dir == root {
                    break;
                }
            }
            Ok(())
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        synced.map_err(|e| self.error(path, object_store::Error::Generic { store: "local", source: Box::new(e) }))
    }

    /// Starts storing a large file at `path` in parts; it appears only when finished.
    pub async fn upload(&self, path: &str) -> Result<Upload, TargetError> {
        let upload = self.store.put_multipart(&ObjectPath::from(path)).await.map_err(|e| self.error(path, e))?;
        Ok(Upload {
            writer: WriteMultipart::new(upload),
            path: path.to_string(),
            target: self.clone(),
            size: 0,
            crc: Default::default(),
        })
    }

    /// The whole object at `path`.
    pub async fn get(&self, path: &str) -> Result<Bytes, TargetError> {
        let got = self.store.get(&ObjectPath::from(path)).await.map_err(|e| self.error(path, e))?;
        got.bytes().await.map_err(|e| self.error(path, e))
    }

    /// Streams the object at `path` to `sink`, piece by piece.
    pub async fn get_each(
        &self,
        path: &str,
        mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<u64, TargetError> {
        let got = self.store.get(&ObjectPath::from(path)).await.map_err(|e| self.error(path, e))?;
        let mut stream = got.into_stream();
        let mut total = 0;
        while let Some(piece) = stream.try_next().await.map_err(|e| self.error(path, e))? {
            sink(&piece)
                .map_err(|e| self.error(path, object_store::Error::Generic { store: "local", source: Box::new(e) }))?;
            total += piece.len() as u64;
        }
        Ok(total)
    }

    /// Every object under `prefix`, as (path, size), sorted by path.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, TargetError> {
        let at = ObjectPath::from(prefix);
        let found: Vec<_> = self.store.list(Some(&at)).try_collect().await.map_err(|e| self.error(prefix, e))?;
        let mut out: Vec<(String, u64)> = found.into_iter().map(|m| (m.location.to_string(), m.size)).collect();
        out.sort();
        Ok(out)
    }

    /// Every object under `prefix` with its size and when it was last written, sorted
    /// by path.
    pub async fn list_dated(&self, prefix: &str) -> Result<Vec<(String, u64, std::time::SystemTime)>, TargetError> {
        let at = ObjectPath::from(prefix);
        let found: Vec<_> = self.store.list(Some(&at)).try_collect().await.map_err(|e| self.error(prefix, e))?;
        let mut out: Vec<_> = found
            .into_iter()
            .map(|m| (m.location.to_string(), m.size, std::time::SystemTime::from(m.last_modified)))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Removes the object at `path`.
    pub async fn delete(&self, path: &str) -> Result<(), TargetError> {
        self.store.delete(&ObjectPath::from(path)).await.map_err(|e| self.error(path, e))
    }

    /// Every manifest in the target, oldest first; a manifest that cannot be read is
    /// answered as the error naming it.
    pub async fn manifests(&self) -> Result<Vec<Result<Manifest, ManifestError>>, TargetError> {
        let mut out = Vec::new();
        for (path, _) in self.list("base").await? {
            if path.ends_with(&format!("/{MANIFEST}")) {
                let bytes = self.get(&path).await?;
                let parsed = serde_json::from_slice::<Manifest>(&bytes)
                    .map_err(|source| ManifestError::Unreadable { path: path.clone(), source });
                out.push(parsed.and_then(|m| {
                    if m.is_intact() {
                        Ok(m)
                    } else {
                        Err(ManifestError::Damaged { path: path.clone() })
                    }
                }));
            }
        }
        out.sort_by_key(|m| m.as_ref().map(|m| (m.end_lsn, m.created.clone(), m.id.clone())).unwrap_or_default());
        Ok(out)
    }
}

/// A file being stored in parts, with its size and crc32 kept as it goes.
pub struct Upload {
    writer: WriteMultipart,
    path: String,
    target: Target,
    size: u64,
    crc: crc32fast::Hasher,
}

impl Upload {
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), TargetError> {
        self.crc.update(bytes);
        self.size += bytes.len() as u64;
        // Bounds the parts in flight, so memory stays bounded however large the file.
        self.writer.wait_for_capacity(4).await.map_err(|e| self.target.error(&self.path, e))?;
        self.writer.write(bytes);
        Ok(())
    }

    /// Appends `bytes` without copying them.
    pub async fn put(&mut self, bytes: Bytes) -> Result<(), TargetError> {
        self.crc.update(&bytes);
        self.size += bytes.len() as u64;
        self.writer.wait_for_capacity(4).await.map_err(|e| self.target.error(&self.path, e))?;
        self.writer.put(bytes);
        Ok(())
    }

    /// Completes the file and answers its entry for a manifest.
    pub async fn finish(self) -> Result<FileEntry, TargetError> {
        let Upload { writer, path, target, size, crc } = self;
        writer.finish().await.map_err(|e| target.error(&path, e))?;
        target.make_durable(&path).await?;
        Ok(FileEntry { path, size, crc32: crc.finalize() })
    }
}

/// One file of a backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path in the target.
    pub path: String,
    pub size: u64,
    pub crc32: u32,
}

/// What a backup holds: written last, so its presence means the backup is whole.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`].
    pub format: u32,
    pub id: String,
    /// `full` (a snapshot and the log after it) or `incremental` (only log).
    pub kind: String,
    /// An incremental backup continues this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    pub node_id: String,
    pub epoch: u64,
    /// The snapshot's LSN (a full backup), or the parent's end (incremental).
    pub start_lsn: u64,
    /// Every record up to here is in the backup.
    pub end_lsn: u64,
    /// RFC 3339, UTC.
    pub created: String,
    /// When the snapshot of a full backup was taken (RFC 3339, UTC): every record it
    /// holds was committed before then. A restore to a time starts from a backup whose
    /// snapshot is older than the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_created: Option<String>,
    /// The snapshot first (a full backup), then the WAL files in log order.
    pub files: Vec<FileEntry>,
    /// The crc32 of this manifest written with this field 0 ([`Manifest::seal`]).
    #[serde(default)]
    pub crc32: u32,
}

impl Manifest {
    fn own_crc(&self) -> u32 {
        let unsealed = Manifest { crc32: 0, ..self.clone() };
        crc32fast::hash(&serde_json::to_vec(&unsealed).expect("a manifest serializes"))
    }

    /// Sets the manifest's own checksum; call last, before writing it.
    pub fn seal(&mut self) {
        self.crc32 = self.own_crc();
    }

    /// Whether the manifest is as it was sealed.
    pub fn is_intact(&self) -> bool {
        self.crc32 == self.own_crc()
    }

    /// The directory of backup `id`.
    pub fn dir(id: &str) -> String {
        format!("base/{id}")
    }

    /// The snapshot file of a full backup.
    pub fn snapshot(&self) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.path.ends_with(".snap"))
    }

    /// The WAL files, in log order.
    pub fn wal_files(&self) -> impl Iterator<Item = &FileEntry> {
        self.files.iter().filter(|f| f.path.ends_with(".wal"))
    }
}

/// The name of a backup WAL file whose first record is `first`.
pub fn wal_file_name(first: Lsn) -> String {
    format!("{:020}.wal", first.0)
}

/// Every record of a WAL file, or the offset and reason of the first one that does not
/// decode.
pub fn decode_records(bytes: &[u8]) -> Result<Vec<Record>, (usize, String)> {
    let mut out = Vec::new();
    let mut offset = 0;
    while offset < bytes.len() {
        match Record::decode(&bytes[offset..]) {
            Ok((record, used)) => {
                out.push(record);
                offset += used;
            }
            Err(e) => return Err((offset, e.to_string())),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(id: &str) -> Manifest {
        let mut m = Manifest {
            format: MANIFEST_FORMAT,
            id: id.into(),
            kind: "full".into(),
            parent: None,
            node_id: "node-1".into(),
            epoch: 1,
            start_lsn: 0,
            end_lsn: 5,
            created: "2024-01-01T00:00:00Z".into(),
            snapshot_created: None,
            files: Vec::new(),
            crc32: 0,
        };
        m.seal();
        m
    }

    #[tokio::test]
    async fn a_damaged_or_unreadable_manifest_is_answered_as_the_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let target = Target::open(dir.path().to_str().unwrap()).unwrap();
        let mut damaged = manifest("b");
        damaged.end_lsn = 6;
        for (id, bytes) in [
            ("a", serde_json::to_vec(&manifest("a")).unwrap()),
            ("b", serde_json::to_vec(&damaged).unwrap()),
            ("c", b"{not a manifest".to_vec()),
        ] {
            target.put(&format!("{}/{MANIFEST}", Manifest::dir(id)), bytes).await.unwrap();
        }
        let found = target.manifests().await.unwrap();
        assert_eq!(found.len(), 3);
        match &found[0] {
            Err(e @ ManifestError::Damaged { path }) => {
                assert_eq!(path, "base/b/manifest.json");
                assert_eq!(
                    e.to_string(),
                    "base/b/manifest.json: its checksum does not match its content: the manifest is damaged"
                );
            }
            other => panic!("{other:?}"),
        }
        match &found[1] {
            Err(e @ ManifestError::Unreadable { path, source }) => {
                assert_eq!(path, "base/c/manifest.json");
                assert_eq!(e.to_string(), format!("base/c/manifest.json: {source}"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(found[2].as_ref().unwrap(), &manifest("a"));
    }
}
