//! Snapshots on request and the install of a full sync's snapshot.

use super::Node;
use crate::error::SnapshotError;
use crate::recovery::load_snapshot;
use bitark_infra::fullsync::{commit_install, complete_install};
use bitark_infra::snapshot::{read_snapshot, snapshot_name, SnapshotInfo};
use bitark_infra::StorageError;
use std::path::Path;
use std::time::Instant;

impl Node {
    /// Takes a snapshot now and answers where it went.
    pub async fn snapshot_now(&self) -> Result<SnapshotInfo, SnapshotError> {
        self.inner.snapshots.now().await
    }

    /// Replaces this node's whole state with the snapshot at `downloaded` (a full sync,
    /// slave only): every log record and snapshot it had goes, and it goes on from the
    /// snapshot's LSN. The snapshot is verified before anything is replaced; from the
    /// commit point on a crash leaves the new state (see `bitark_infra::fullsync`).
    /// Reads answer that the node is busy meanwhile. Blocking.
    pub fn install_snapshot(&self, downloaded: &Path) -> Result<SnapshotInfo, StorageError> {
        if !self.is_slave() {
            return Err(StorageError::io(downloaded, std::io::Error::other("this node is master now: no full sync")));
        }
        let started = Instant::now();
        let info = read_snapshot(downloaded, |_| Ok(()))?;
        let verified = started.elapsed();
        let lsn = info.lsn;
        let state = &self.inner.state;
        // Waits for a snapshot of the old state being written, and keeps new ones out.
        let _replacing = state.replacing.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        state.installing.store(true, std::sync::atomic::Ordering::Release);
        let data_dir = self.inner.config.load().node.data_dir.clone();
        let work = Box::new(move || {
            commit_install(&data_dir, lsn)?;
            // A test stops the node here, between the commit point and the swap.
            fail::fail_point!("fullsync::after-commit");
            complete_install(&data_dir).map(|_| ())
        });
        self.inner.wal.reset(lsn.next(), work)?;
        let swapped = started.elapsed();
        state.store.clear();
        let installed = self.inner.config.load().node.dir().snapshots().join(snapshot_name(lsn));
        load_snapshot(&state.store, &installed)?;
        let loaded = started.elapsed();
        state.since_snapshot.store(0, std::sync::atomic::Ordering::Relaxed);
        state.durable.send_replace(lsn);
        state.publish_applied(lsn);
        state.installing.store(false, std::sync::atomic::Ordering::Release);
        let info = SnapshotInfo { path: installed, ..info };
        state.snapshots.replaced(Some(info.clone()));
        tracing::info!(
            %lsn,
            users = info.users,
            marks = info.marks,
            verify_ms = verified.as_millis() as u64,
            swap_ms = (swapped - verified).as_millis() as u64,
            load_ms = (loaded - swapped).as_millis() as u64,
            "full-sync snapshot installed"
        );
        Ok(info)
    }

    /// True while a full sync replaces the state: reads should not be answered.
    pub fn is_replacing(&self) -> bool {
        self.inner.state.installing.load(std::sync::atomic::Ordering::Acquire)
    }
}
