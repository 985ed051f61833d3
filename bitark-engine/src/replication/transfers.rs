//! Stage 5's bookkeeping on the master: the full-sync transfers running, the slaves
//! queued for a slot, and the checksums of snapshots already served. Plain data behind
//! one lock; what moves a transfer along is in [`super::full_sync`].

use bitark_common::replication::SnapshotRef;
use bitark_common::Lsn;
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// The transfers and the queue. A std `Mutex`: taken briefly, never across an await.
#[derive(Default)]
pub(crate) struct FullSyncServer {
    inner: Mutex<Transfers>,
}

#[derive(Default)]
pub(crate) struct Transfers {
    pub(crate) next_id: u64,
    /// Running transfers by id.
    pub(crate) running: HashMap<u64, Transfer>,
    /// Slaves waiting for a slot, first in line first.
    pub(crate) queue: VecDeque<String>,
    /// Slaves granted a slot whose snapshot is being chosen or checksummed, with the
    /// transfer id reserved for them: they count against `max-concurrent` already.
    pub(crate) starting: HashMap<String, u64>,
    /// crc32 of snapshots already served, by (LSN, size).
    pub(crate) checksums: HashMap<(u64, u64), u32>,
}

pub(crate) struct Transfer {
    pub(crate) slave: String,
    pub(crate) session: String,
    pub(crate) path: PathBuf,
    pub(crate) snapshot: SnapshotRef,
    /// The chunk size offered ([`chunk_size`]).
    pub(crate) chunk_size: u64,
    /// The offset of the first chunk asked for (a resumed download starts past 0): the
    /// bandwidth cap paces the chunks by their offset from it, so a chunk fetched again
    /// costs no extra time.
    pub(crate) first_offset: Option<u64>,
    pub(crate) started: Instant,
    pub(crate) last_progress: Instant,
    /// Set once the slave installed the snapshot: it is being caught up from the WAL up
    /// to this LSN, and the pin follows its acknowledgements.
    pub(crate) catching_up_to: Option<Lsn>,
}

impl FullSyncServer {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Transfers> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The chunk of a transfer a slave asked for: where it lies, and when it may go.
#[derive(Debug, PartialEq)]
pub(crate) struct ChunkPlan {
    pub path: PathBuf,
    /// The snapshot's size.
    pub size: u64,
    pub len: u64,
    /// Under a bandwidth cap, the chunk goes no sooner.
    pub not_before: Option<Instant>,
}

/// Why a chunk is not served.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ChunkRefused {
    /// No such transfer, or not for that slave process.
    Unknown,
    /// The offset is at or past the snapshot's end.
    BadOffset { size: u64 },
}

impl Transfers {
    /// Plans the chunk of transfer `id` at `offset` for the slave process `session`: at
    /// most the chunk size offered, never past the snapshot's end. Under a cap of `rate`
    /// bytes a second (`0`: none) it goes once the transfer's rate allows every byte up
    /// to its end, counted from the first offset asked for, so a resumed download is not
    /// held back for what it fetched before and a chunk fetched again costs no time.
    pub fn plan_chunk(&mut self, id: u64, session: &str, offset: u64, rate: u64) -> Result<ChunkPlan, ChunkRefused> {
        let t = self.running.get_mut(&id).filter(|t| t.session == session).ok_or(ChunkRefused::Unknown)?;
        let size = t.snapshot.size;
        if offset >= size {
            return Err(ChunkRefused::BadOffset { size });
        }
        let len = t.chunk_size.min(size - offset);
        let first = *t.first_offset.get_or_insert(offset);
        let through = (offset + len).saturating_sub(first) as f64;
        let not_before = (rate > 0).then(|| t.started + Duration::from_secs_f64(through / rate as f64));
        Ok(ChunkPlan { path: t.path.clone(), size, len, not_before })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// One transfer, id 1, of a 10 MiB snapshot in 4 MiB chunks, for session `s1`.
    fn one_transfer() -> (Transfers, Instant) {
        let started = Instant::now();
        let transfer = Transfer {
            slave: "slave-1".into(),
            session: "s1".into(),
            path: PathBuf::from("snapshots/snap-1.bin"),
            snapshot: SnapshotRef { lsn: 100, size: 10 * MIB, checksum: 7 },
            chunk_size: 4 * MIB,
            first_offset: None,
            started,
            last_progress: started,
            catching_up_to: None,
        };
        let mut transfers = Transfers::default();
        transfers.running.insert(1, transfer);
        (transfers, started)
    }

    #[test]
    fn chunks_cover_the_snapshot_and_the_last_one_is_short() {
        let (mut transfers, _) = one_transfer();
        let lens: Vec<u64> =
            [0, 4 * MIB, 8 * MIB].iter().map(|&offset| transfers.plan_chunk(1, "s1", offset, 0).unwrap().len).collect();
        assert_eq!(lens, [4 * MIB, 4 * MIB, 2 * MIB]);
        assert_eq!(transfers.plan_chunk(1, "s1", 0, 0).unwrap().not_before, None, "no cap, no wait");
    }

    #[test]
    fn a_chunk_at_or_past_the_end_or_for_another_process_is_refused() {
        let (mut transfers, _) = one_transfer();
        assert_eq!(transfers.plan_chunk(1, "s1", 10 * MIB, 0), Err(ChunkRefused::BadOffset { size: 10 * MIB }));
        assert_eq!(transfers.plan_chunk(1, "s1", u64::MAX, 0), Err(ChunkRefused::BadOffset { size: 10 * MIB }));
        assert_eq!(transfers.plan_chunk(1, "s0", 0, 0), Err(ChunkRefused::Unknown), "an earlier slave process");
        assert_eq!(transfers.plan_chunk(2, "s1", 0, 0), Err(ChunkRefused::Unknown));
    }

    #[test]
    fn under_a_cap_each_chunk_waits_for_the_rate_to_cover_its_last_byte() {
        let (mut transfers, started) = one_transfer();
        let at = |t: &mut Transfers, offset| t.plan_chunk(1, "s1", offset, 2 * MIB).unwrap().not_before.unwrap();
        assert_eq!(at(&mut transfers, 0), started + Duration::from_secs(2));
        assert_eq!(at(&mut transfers, 4 * MIB), started + Duration::from_secs(4));
        assert_eq!(at(&mut transfers, 8 * MIB), started + Duration::from_secs(5), "the short last chunk");
        assert_eq!(at(&mut transfers, 4 * MIB), started + Duration::from_secs(4), "fetched again: no extra time");
    }

    #[test]
    fn a_resumed_download_is_paced_from_where_it_resumed() {
        let (mut transfers, started) = one_transfer();
        let plan = transfers.plan_chunk(1, "s1", 8 * MIB, 2 * MIB).unwrap();
        assert_eq!(plan.not_before, Some(started + Duration::from_secs(1)), "2 MiB at 2 MiB/s");
    }
}
