//! Families of the write-ahead log: group-commit batches, their writes and fsyncs, the
//! durable LSN, segment files and their garbage collection, and whether the log takes
//! writes.

use super::{histogram, latency_buckets, reg};
use prometheus::{exponential_buckets, Histogram, IntCounter, IntCounterVec, IntGauge, Opts, Registry, Result};

pub(super) fn append_seconds(r: &Registry) -> Result<Histogram> {
    reg(r, histogram("bitark_wal_append_seconds", "Time to write one group-commit batch", latency_buckets())?)
}

pub(super) fn fsync_seconds(r: &Registry) -> Result<Histogram> {
    reg(r, histogram("bitark_wal_fsync_seconds", "WAL fsync latency", latency_buckets())?)
}

pub(super) fn bytes_written(r: &Registry) -> Result<IntCounter> {
    reg(r, IntCounter::new("bitark_wal_bytes_written_total", "Bytes appended to the WAL")?)
}

pub(super) fn group_commit_batch_records(r: &Registry) -> Result<Histogram> {
    reg(
        r,
        histogram(
            "bitark_group_commit_batch_records",
            "Records per group-commit batch",
            exponential_buckets(1.0, 2.0, 14).expect("valid buckets"),
        )?,
    )
}

pub(super) fn lsn_durable(r: &Registry) -> Result<IntGauge> {
    reg(r, IntGauge::new("bitark_lsn_durable", "Highest LSN on stable storage")?)
}

pub(super) fn segments(r: &Registry) -> Result<IntGauge> {
    reg(r, IntGauge::new("bitark_wal_segments", "WAL segment files on disk")?)
}

pub(super) fn segments_deleted(r: &Registry) -> Result<IntCounter> {
    reg(r, IntCounter::new("bitark_wal_segments_deleted_total", "WAL segments deleted by garbage collection")?)
}

pub(super) fn writable(r: &Registry) -> Result<IntGauge> {
    reg(r, IntGauge::new("bitark_wal_writable", "1 while the write-ahead log accepts writes")?)
}

pub(super) fn failures(r: &Registry) -> Result<IntCounterVec> {
    reg(r, IntCounterVec::new(Opts::new("bitark_wal_failures_total", "Write-ahead log failures by kind"), &["kind"])?)
}

pub(super) fn retries(r: &Registry) -> Result<IntCounter> {
    reg(r, IntCounter::new("bitark_wal_retries_total", "Tries of a degraded write-ahead log to write again")?)
}
