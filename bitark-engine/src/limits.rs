//! Limits that protect the node's memory: the memory guard (`limits.max-memory`) and
//! the per-user mark limit (`limits.max-marks-per-user`).
//!
//! The guard samples the process's resident size every [`SAMPLE_EVERY`] on its own
//! thread; a write that adds marks reads the last sample, one atomic load. Unmarks are
//! always allowed: they are how a full node gets memory back.
//!
//! The mark limit is checked against the user's marks when the write is admitted, before
//! it is logged. Writes to the same user that are in flight together are each checked
//! against the same count, so together they may overshoot the limit by at most their own
//! size.

use crate::error::WriteError;
use crate::store::ReadStore;
use bitark_common::Command;
use bitark_infra::process::resident_bytes;
use bitark_infra::Metrics;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How often the guard samples resident memory.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// `limits.max-memory`: refuses writes that add marks while the process is above it.
pub(crate) struct MemoryGuard {
    /// Bytes; 0 when off. Changed by a refresh.
    limit: AtomicU64,
    /// Last sample of the resident size. Atomic: written by the sampler, read per write.
    resident: AtomicU64,
    metrics: Metrics,
}

impl MemoryGuard {
    /// Takes a first sample, then samples on a thread of its own until the guard is
    /// dropped.
    pub fn start(limit: u64, metrics: Metrics) -> std::io::Result<Arc<MemoryGuard>> {
        metrics.memory_limit_bytes.set(limit as i64);
        let guard = Arc::new(MemoryGuard { limit: AtomicU64::new(limit), resident: AtomicU64::new(0), metrics });
        guard.sample();
        let weak: Weak<MemoryGuard> = Arc::downgrade(&guard);
        std::thread::Builder::new().name("memory-guard".into()).spawn(move || loop {
            std::thread::sleep(SAMPLE_EVERY);
            match weak.upgrade() {
                Some(guard) => guard.sample(),
                None => return,
            }
        })?;
        Ok(guard)
    }

    fn sample(&self) {
        if let Some(bytes) = resident_bytes() {
            self.resident.store(bytes, Ordering::Relaxed);
            self.metrics.memory_resident_bytes.set(bytes as i64);
        }
    }

    /// Refuses `command` when it adds marks and the process is above the limit.
    pub fn admit(&self, command: &Command) -> Result<(), WriteError> {
        let limit = self.limit.load(Ordering::Relaxed);
        if limit == 0 || matches!(command, Command::MarkUnread { .. }) {
            return Ok(());
        }
        let resident = self.resident.load(Ordering::Relaxed);
        if resident <= limit {
            return Ok(());
        }
        Err(WriteError::MemoryLimit(format!(
            "the node uses {} of memory, above limits.max-memory ({}); writes that add marks are refused until \
             memory is freed (reads and unmarks still work)",
            bytesize::ByteSize::b(resident),
            bytesize::ByteSize::b(limit)
        )))
    }

    /// Takes `limit` bytes (0: off) from now on.
    pub fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::Relaxed);
        self.metrics.memory_limit_bytes.set(limit as i64);
    }
}

/// Refuses `command` when it would take its user past `max` marks (0: no limit).
pub(crate) fn admit_marks(store: &ReadStore, max: u64, command: &Command) -> Result<(), WriteError> {
    if max == 0 {
        return Ok(());
    }
    let Some(user) = command.user() else { return Ok(()) };
    let added = match command {
        Command::MarkUnread { .. } | Command::SetOwnership(_) | Command::DropRange { .. } => return Ok(()),
        Command::MarkRead { msg, .. } => u64::from(!store.is_read(user, *msg)),
        Command::MarkBatch { msgs, .. } => {
            let mut ids = msgs.clone();
            ids.sort_unstable();
            ids.dedup();
            store.check(user, &ids).iter().filter(|read| !**read).count() as u64
        }
        Command::MarkRange { from, to, .. } => (to - from + 1) - store.count_read(user, *from, *to),
    };
    let held = store.count_read(user, 0, u64::MAX);
    if held + added <= max {
        return Ok(());
    }
    Err(WriteError::MarkLimit(format!(
        "user {user} holds {held} marks; this write would add {added}, past limits.max-marks-per-user ({max})"
    )))
}
