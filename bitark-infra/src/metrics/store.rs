//! Families of the read store: the LSN readers see, the users and marks it holds, reads
//! waiting for an LSN, and writes refused before they reach the log.

use super::reg;
use prometheus::{IntCounterVec, IntGauge, Opts, Registry, Result};

pub(super) fn lsn_applied(r: &Registry) -> Result<IntGauge> {
    reg(r, IntGauge::new("bitark_lsn_applied", "Highest LSN visible to readers")?)
}

pub(super) fn users(r: &Registry) -> Result<IntGauge> {
    reg(r, IntGauge::new("bitark_store_users", "Users with at least one read mark")?)
}

pub(super) fn marks(r: &Registry) -> Result<IntGauge> {
    reg(r, IntGauge::new("bitark_store_marks", "Read marks held in memory")?)
}

pub(super) fn reads_waiting_for_lsn(r: &Registry) -> Result<IntGauge> {
    reg(r, IntGauge::new("bitark_reads_waiting_for_lsn", "Reads waiting for their minLsn to be applied")?)
}

pub(super) fn writes_rejected(r: &Registry) -> Result<IntCounterVec> {
    reg(
        r,
        IntCounterVec::new(
            Opts::new("bitark_writes_rejected_total", "Writes refused before reaching the WAL"),
            &["reason"],
        )?,
    )
}
