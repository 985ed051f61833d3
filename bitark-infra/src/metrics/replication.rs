//! Families of streaming replication. On the master: each slave's state, acknowledged
//! LSN and lag, the send buffers, batches sent, retried and acknowledged, records read
//! back from the WAL for a slave behind, heartbeats, bounded-GC headroom, and how long
//! `semi`/`all` writes wait for acknowledgements. On a slave: what it receives, skips
//! and refuses.

use super::{latency_buckets, reg};
use prometheus::{
    exponential_buckets, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, Result,
};

pub(super) fn feature(r: &Registry) -> Result<IntGaugeVec> {
    reg(
        r,
        IntGaugeVec::new(
            Opts::new("bitark_replication_feature", "1 for each replication flag in force"),
            &["feature"],
        )?,
    )
}

pub(super) fn slave_state(r: &Registry) -> Result<IntGaugeVec> {
    reg(
        r,
        IntGaugeVec::new(
            Opts::new("bitark_replication_slave_state", "1 for the state each slave is in"),
            &["slave", "state"],
        )?,
    )
}

pub(super) fn ack_lsn(r: &Registry) -> Result<IntGaugeVec> {
    reg(
        r,
        IntGaugeVec::new(
            Opts::new("bitark_replication_slave_ack_lsn", "Last LSN each slave acknowledged"),
            &["slave"],
        )?,
    )
}

pub(super) fn lag_records(r: &Registry) -> Result<IntGaugeVec> {
    reg(
        r,
        IntGaugeVec::new(
            Opts::new("bitark_replication_slave_lag_records", "Records each slave has not acknowledged"),
            &["slave"],
        )?,
    )
}

pub(super) fn lag_bytes(r: &Registry) -> Result<IntGaugeVec> {
    reg(
        r,
        IntGaugeVec::new(
            Opts::new(
                "bitark_replication_slave_lag_bytes",
                "Bytes of records each slave has not acknowledged, where known",
            ),
            &["slave"],
        )?,
    )
}

pub(super) fn lag_seconds(r: &Registry) -> Result<GaugeVec> {
    reg(
        r,
        GaugeVec::new(
            Opts::new(
                "bitark_replication_slave_lag_seconds",
                "Age of the oldest record each slave has not acknowledged",
            ),
            &["slave"],
        )?,
    )
}

pub(super) fn buffer_depth(r: &Registry) -> Result<IntGaugeVec> {
    reg(
        r,
        IntGaugeVec::new(
            Opts::new("bitark_replication_buffer_depth", "Records waiting in each slave's send buffer"),
            &["slave"],
        )?,
    )
}

pub(super) fn buffer_bytes(r: &Registry) -> Result<IntGaugeVec> {
    reg(
        r,
        IntGaugeVec::new(
            Opts::new("bitark_replication_buffer_bytes", "Bytes waiting in each slave's send buffer"),
            &["slave"],
        )?,
    )
}

pub(super) fn buffered_bytes(r: &Registry) -> Result<IntGauge> {
    reg(r, IntGauge::new("bitark_replication_buffers_bytes", "Bytes in all send buffers together")?)
}

pub(super) fn send_failures(r: &Registry) -> Result<IntCounterVec> {
    reg(
        r,
        IntCounterVec::new(
            Opts::new("bitark_replication_send_failures_total", "Batch sends that failed or were refused"),
            &["slave"],
        )?,
    )
}

pub(super) fn registrations_refused(r: &Registry) -> Result<IntCounterVec> {
    reg(
        r,
        IntCounterVec::new(
            Opts::new("bitark_replication_registrations_refused_total", "Slave registrations refused"),
            &["reason"],
        )?,
    )
}

pub(super) fn appends_refused(r: &Registry) -> Result<IntCounterVec> {
    reg(
        r,
        IntCounterVec::new(
            Opts::new("bitark_replication_appends_refused_total", "Replication batches refused before logging"),
            &["reason"],
        )?,
    )
}

pub(super) fn heartbeat_age(r: &Registry) -> Result<GaugeVec> {
    reg(
        r,
        GaugeVec::new(
            Opts::new("bitark_replication_heartbeat_age_seconds", "Time since each slave last answered"),
            &["slave"],
        )?,
    )
}

pub(super) fn dead_detections(r: &Registry) -> Result<IntCounterVec> {
    reg(
        r,
        IntCounterVec::new(
            Opts::new("bitark_replication_dead_detections_total", "Times each slave was found DEAD"),
            &["slave"],
        )?,
    )
}

pub(super) fn headroom_bytes(r: &Registry) -> Result<IntGaugeVec> {
    reg(
        r,
        IntGaugeVec::new(
            Opts::new(
                "bitark_replication_headroom_bytes",
                "Bytes of log each slave may still fall behind before it is OUTDATED",
            ),
            &["slave"],
        )?,
    )
}

pub(super) fn headroom_seconds(r: &Registry) -> Result<GaugeVec> {
    reg(
        r,
        GaugeVec::new(
            Opts::new(
                "bitark_replication_headroom_seconds",
                "Seconds at the current write rate before each slave is OUTDATED",
            ),
            &["slave"],
        )?,
    )
}

pub(super) fn retries(r: &Registry) -> Result<IntCounterVec> {
    reg(r, IntCounterVec::new(Opts::new("bitark_replication_retries_total", "Batch sends retried"), &["slave"])?)
}

pub(super) fn sent_batches(r: &Registry) -> Result<IntCounterVec> {
    reg(r, IntCounterVec::new(Opts::new("bitark_replication_sent_batches_total", "Batches sent"), &["slave"])?)
}

pub(super) fn sent_records(r: &Registry) -> Result<IntCounterVec> {
    reg(r, IntCounterVec::new(Opts::new("bitark_replication_sent_records_total", "Records sent"), &["slave"])?)
}

pub(super) fn acked_batches(r: &Registry) -> Result<IntCounterVec> {
    reg(r, IntCounterVec::new(Opts::new("bitark_replication_acked_batches_total", "Batches acknowledged"), &["slave"])?)
}

pub(super) fn acked_records(r: &Registry) -> Result<IntCounterVec> {
    reg(r, IntCounterVec::new(Opts::new("bitark_replication_acked_records_total", "Records acknowledged"), &["slave"])?)
}

pub(super) fn catchup_records(r: &Registry) -> Result<IntCounterVec> {
    reg(
        r,
        IntCounterVec::new(
            Opts::new(
                "bitark_replication_caught_up_records_total",
                "Records read back from the WAL to catch a slave up",
            ),
            &["slave"],
        )?,
    )
}

pub(super) fn send_seconds(r: &Registry) -> Result<HistogramVec> {
    reg(
        r,
        HistogramVec::new(
            HistogramOpts::new("bitark_replication_send_seconds", "Time of one batch send, answer included")
                .buckets(latency_buckets()),
            &["slave"],
        )?,
    )
}

pub(super) fn ack_lag_seconds(r: &Registry) -> Result<HistogramVec> {
    reg(
        r,
        HistogramVec::new(
            HistogramOpts::new(
                "bitark_replication_lag_at_ack_seconds",
                "Time from a record's commit on the master to its acknowledgement by a slave",
            )
            // Finer than the other latency families: 0.1 ms to ~13 s in steps of 1.5x.
            .buckets(exponential_buckets(0.000_1, 1.5, 30).expect("valid buckets")),
            &["slave"],
        )?,
    )
}

pub(super) fn ack_wait_seconds(r: &Registry) -> Result<HistogramVec> {
    reg(
        r,
        HistogramVec::new(
            HistogramOpts::new(
                "bitark_replication_ack_wait_seconds",
                "Time semi and all writes waited for slave acknowledgements after the master's fsync",
            )
            .buckets(exponential_buckets(0.000_1, 1.5, 30).expect("valid buckets")),
            &["ack"],
        )?,
    )
}

pub(super) fn ack_timeouts(r: &Registry) -> Result<IntCounterVec> {
    reg(
        r,
        IntCounterVec::new(
            Opts::new("bitark_replication_ack_timeouts_total", "Writes answered 504 replication_timeout"),
            &["ack"],
        )?,
    )
}

pub(super) fn duplicates_skipped(r: &Registry) -> Result<IntCounter> {
    reg(
        r,
        IntCounter::new(
            "bitark_replication_duplicates_skipped_total",
            "Replicated records received again and skipped",
        )?,
    )
}

pub(super) fn crc_failures(r: &Registry) -> Result<IntCounter> {
    reg(r, IntCounter::new("bitark_replication_crc_failures_total", "Replicated batches refused for a bad checksum")?)
}

pub(super) fn received_records(r: &Registry) -> Result<IntCounter> {
    reg(r, IntCounter::new("bitark_replication_received_records_total", "Records logged and applied from the master")?)
}
