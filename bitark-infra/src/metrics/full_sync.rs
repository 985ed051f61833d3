//! Families of full syncs (stage 5): snapshot bytes moved, syncs by outcome, and
//! start-ups that discarded a damaged local state to resync.

use super::reg;
use prometheus::{IntCounter, IntCounterVec, Opts, Registry, Result};

pub(super) fn bytes(r: &Registry) -> Result<IntCounter> {
    reg(r, IntCounter::new("bitark_full_sync_bytes_total", "Snapshot bytes sent or received by full syncs")?)
}

pub(super) fn full_syncs(r: &Registry) -> Result<IntCounterVec> {
    reg(r, IntCounterVec::new(Opts::new("bitark_full_syncs_total", "Full syncs by outcome"), &["outcome"])?)
}

pub(super) fn resyncs_on_corruption(r: &Registry) -> Result<IntCounter> {
    reg(
        r,
        IntCounter::new(
            "bitark_resyncs_on_corruption_total",
            "Start-ups that discarded a damaged local state to resync from the master",
        )?,
    )
}
