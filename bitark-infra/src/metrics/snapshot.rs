//! Families of snapshots, and of the start-up recovery that reads the newest one back
//! and replays the log after it.

use super::{histogram, reg};
use prometheus::{exponential_buckets, Histogram, IntCounterVec, IntGauge, Opts, Registry, Result};

pub(super) fn duration_seconds(r: &Registry) -> Result<Histogram> {
    reg(
        r,
        histogram(
            "bitark_snapshot_duration_seconds",
            "Time to write one snapshot",
            exponential_buckets(0.001, 2.0, 20).expect("valid buckets"),
        )?,
    )
}

pub(super) fn size_bytes(r: &Registry) -> Result<IntGauge> {
    reg(r, IntGauge::new("bitark_snapshot_size_bytes", "Size of the newest snapshot")?)
}

pub(super) fn last_lsn(r: &Registry) -> Result<IntGauge> {
    reg(r, IntGauge::new("bitark_snapshot_last_lsn", "LSN covered by the newest snapshot")?)
}

pub(super) fn snapshots(r: &Registry) -> Result<IntCounterVec> {
    reg(r, IntCounterVec::new(Opts::new("bitark_snapshots_total", "Snapshots attempted by result"), &["result"])?)
}

pub(super) fn recovery_duration_seconds(r: &Registry) -> Result<prometheus::Gauge> {
    reg(r, prometheus::Gauge::new("bitark_recovery_duration_seconds", "Duration of the last start-up recovery")?)
}

pub(super) fn recovery_records_replayed(r: &Registry) -> Result<IntGauge> {
    reg(r, IntGauge::new("bitark_recovery_records_replayed", "WAL records replayed by the last start-up recovery")?)
}
