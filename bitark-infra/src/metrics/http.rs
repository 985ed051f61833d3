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

/// The connection families of one HTTP server, for a process that serves HTTP without
/// the rest of a node's metrics (the router).
#[derive(Clone)]
pub struct Connections {
    pub open: IntGauge,
    pub refused: IntCounter,
    pub expired: IntCounterVec,
}

impl Connections {
    /// Registers the three families on `registry`.
    pub fn new(registry: &Registry) -> Result<Connections> {
        Ok(Connections {
            open: connections_open(registry)?,
            refused: connections_refused(registry)?,
            expired: connections_expired(registry)?,
        })
    }
}
