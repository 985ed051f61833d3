//! Every metric family BitArk exports, registered on a registry the application
//! context passes in (no process-wide globals, so tests can run several nodes in one
//! process).

use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// Cheap-to-clone handle on the metric families; each field is itself an `Arc`.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// `bitark_http_request_duration_seconds{route,method,status}`: latency of every
    /// request; its `_count` series is the request count by route, method and status
    /// (one family instead of two halves the per-request bookkeeping).
    pub http_requests: HistogramVec,
    /// `bitark_wal_append_seconds`: time of the `write` of one group-commit batch.
    pub wal_append_seconds: Histogram,
    /// `bitark_wal_fsync_seconds`
    pub wal_fsync_seconds: Histogram,
    /// `bitark_wal_bytes_written_total`
    pub wal_bytes_written: IntCounter,
    /// `bitark_group_commit_batch_records`: records per group-commit batch.
    pub group_commit_batch_records: Histogram,
    /// `bitark_lsn_applied`: highest LSN visible to readers.
    pub lsn_applied: IntGauge,
    /// `bitark_lsn_durable`: highest LSN on stable storage.
    pub lsn_durable: IntGauge,
    /// `bitark_store_users`
    pub store_users: IntGauge,
    /// `bitark_store_marks`
    pub store_marks: IntGauge,
    /// `bitark_snapshot_duration_seconds`
    pub snapshot_duration_seconds: Histogram,
    /// `bitark_snapshot_size_bytes`: size of the newest snapshot.
    pub snapshot_size_bytes: IntGauge,
    /// `bitark_snapshot_last_lsn`
    pub snapshot_last_lsn: IntGauge,
    /// `bitark_snapshots_total{result="ok|error"}`
    pub snapshots: IntCounterVec,
    /// `bitark_recovery_duration_seconds`: time of the last start-up recovery.
    pub recovery_duration_seconds: prometheus::Gauge,
    /// `bitark_recovery_records_replayed`
    pub recovery_records_replayed: IntGauge,
    /// `bitark_wal_segments`: segment files on disk.
    pub wal_segments: IntGauge,
    /// `bitark_wal_segments_deleted_total`: segments removed by WAL GC.
    pub wal_segments_deleted: IntCounter,
    /// `bitark_writes_rejected_total{reason}`: writes refused before logging.
    pub writes_rejected: IntCounterVec,
}

fn latency_buckets() -> Vec<f64> {
    // 10 µs .. ~10 s
    exponential_buckets(0.000_01, 2.0, 21).expect("valid buckets")
}

impl Metrics {
    /// Creates every family and registers it on `registry`.
    pub fn new(registry: Registry) -> Result<Self, prometheus::Error> {
        let r = &registry;
        let m = Metrics {
            http_requests: reg(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "bitark_http_request_duration_seconds",
                        "HTTP request latency by route, method and status",
                    )
                    .buckets(latency_buckets()),
                    &["route", "method", "status"],
                )?,
            )?,
            wal_append_seconds: reg(
                r,
                histogram("bitark_wal_append_seconds", "Time to write one group-commit batch", latency_buckets())?,
            )?,
            wal_fsync_seconds: reg(r, histogram("bitark_wal_fsync_seconds", "WAL fsync latency", latency_buckets())?)?,
            wal_bytes_written: reg(r, IntCounter::new("bitark_wal_bytes_written_total", "Bytes appended to the WAL")?)?,
            group_commit_batch_records: reg(
                r,
                histogram(
                    "bitark_group_commit_batch_records",
                    "Records per group-commit batch",
                    exponential_buckets(1.0, 2.0, 14).expect("valid buckets"),
                )?,
            )?,
            lsn_applied: reg(r, IntGauge::new("bitark_lsn_applied", "Highest LSN visible to readers")?)?,
            lsn_durable: reg(r, IntGauge::new("bitark_lsn_durable", "Highest LSN on stable storage")?)?,
            store_users: reg(r, IntGauge::new("bitark_store_users", "Users with at least one read mark")?)?,
            store_marks: reg(r, IntGauge::new("bitark_store_marks", "Read marks held in memory")?)?,
            snapshot_duration_seconds: reg(
                r,
                histogram(
                    "bitark_snapshot_duration_seconds",
                    "Time to write one snapshot",
                    exponential_buckets(0.001, 2.0, 20).expect("valid buckets"),
                )?,
            )?,
            snapshot_size_bytes: reg(r, IntGauge::new("bitark_snapshot_size_bytes", "Size of the newest snapshot")?)?,
            snapshot_last_lsn: reg(
                r,
                IntGauge::new("bitark_snapshot_last_lsn", "LSN covered by the newest snapshot")?,
            )?,
            snapshots: reg(
                r,
                IntCounterVec::new(Opts::new("bitark_snapshots_total", "Snapshots attempted by result"), &["result"])?,
            )?,
            recovery_duration_seconds: reg(
                r,
                prometheus::Gauge::new("bitark_recovery_duration_seconds", "Duration of the last start-up recovery")?,
            )?,
            recovery_records_replayed: reg(
                r,
                IntGauge::new(
                    "bitark_recovery_records_replayed",
                    "WAL records replayed by the last start-up recovery",
                )?,
            )?,
            wal_segments: reg(r, IntGauge::new("bitark_wal_segments", "WAL segment files on disk")?)?,
            wal_segments_deleted: reg(
                r,
                IntCounter::new("bitark_wal_segments_deleted_total", "WAL segments deleted by garbage collection")?,
            )?,
            writes_rejected: reg(
                r,
                IntCounterVec::new(
                    Opts::new("bitark_writes_rejected_total", "Writes refused before reaching the WAL"),
                    &["reason"],
                )?,
            )?,
            registry,
        };
        Ok(m)
    }

    /// A fresh registry with every family; for tests and tools.
    pub fn standalone() -> Self {
        Metrics::new(Registry::new()).expect("metric families are valid")
    }

    /// The registry in Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&self.registry.gather(), &mut out)
            .expect("text encoding of gathered metrics");
        out
    }
}

fn histogram(name: &str, help: &str, buckets: Vec<f64>) -> Result<Histogram, prometheus::Error> {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
}

fn reg<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> Result<C, prometheus::Error> {
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}
