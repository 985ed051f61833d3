//! Families of the backup archive: sealed WAL segments waiting, uploaded, failed and
//! given up, and the time of the last upload.

use super::reg;
use prometheus::{IntCounter, IntGauge, Registry, Result};

pub(super) fn pending_segments(r: &Registry) -> Result<IntGauge> {
    reg(r, IntGauge::new("bitark_backup_archive_pending_segments", "Sealed WAL segments not archived yet")?)
}

pub(super) fn pending_bytes(r: &Registry) -> Result<IntGauge> {
    reg(r, IntGauge::new("bitark_backup_archive_pending_bytes", "Bytes of sealed WAL segments not archived yet")?)
}

pub(super) fn archived_segments(r: &Registry) -> Result<IntCounter> {
    reg(r, IntCounter::new("bitark_backup_archived_segments_total", "WAL segments uploaded to the archive")?)
}

pub(super) fn failures(r: &Registry) -> Result<IntCounter> {
    reg(r, IntCounter::new("bitark_backup_archive_failures_total", "WAL segment uploads that failed")?)
}

pub(super) fn given_up(r: &Registry) -> Result<IntCounter> {
    reg(
        r,
        IntCounter::new(
            "bitark_backup_archive_given_up_segments_total",
            "WAL segments past backup.archive.max-pending that were never archived",
        )?,
    )
}

pub(super) fn last_success(r: &Registry) -> Result<IntGauge> {
    reg(
        r,
        IntGauge::new(
            "bitark_backup_archive_last_success_timestamp_seconds",
            "Unix time of the last segment archived",
        )?,
    )
}
