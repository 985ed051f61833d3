//! Families of HTTP serving: request latency and counts (one histogram for both),
//! connections open, refused and expired.

use super::{latency_buckets, reg};
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry, Result};

pub(super) fn requests(r: &Registry) -> Result<HistogramVec> {
    reg(
        r,
        HistogramVec::new(
            HistogramOpts::new(
                "bitark_http_request_duration_seconds",
                "HTTP request latency by route, method and status",
            )
            .buckets(latency_buckets()),
            &["route", "method", "status"],
        )?,
    )
}

pub(super) fn connections_open(r: &Registry) -> Result<IntGauge> {
    reg(r, IntGauge::new("bitark_http_connections_open", "HTTP connections open")?)
}

pub(super) fn connections_refused(r: &Registry) -> Result<IntCounter> {
    reg(
        r,
        IntCounter::new(
            "bitark_http_connections_refused_total",
            "HTTP connections refused over server.max-connections",
        )?,
    )
}

pub(super) fn connections_expired(r: &Registry) -> Result<IntCounterVec> {
    reg(
        r,
        IntCounterVec::new(
            Opts::new("bitark_http_connections_expired_total", "HTTP connections closed for overstaying"),
            &["reason"],
        )?,
    )
}
