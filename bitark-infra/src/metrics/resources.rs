//! Families of the process's resources: resident memory against `limits.max-memory`,
//! and the free and total space of the data directory's file system.

use super::reg;
use prometheus::{IntGauge, Registry, Result};

pub(super) fn memory_resident_bytes(r: &Registry) -> Result<IntGauge> {
    reg(r, IntGauge::new("bitark_memory_resident_bytes", "Resident memory of the process")?)
}

pub(super) fn memory_limit_bytes(r: &Registry) -> Result<IntGauge> {
    reg(r, IntGauge::new("bitark_memory_limit_bytes", "limits.max-memory; 0 when the guard is off")?)
}

pub(super) fn disk_free_bytes(r: &Registry) -> Result<IntGauge> {
    reg(r, IntGauge::new("bitark_disk_free_bytes", "Free space of the data directory's file system")?)
}

pub(super) fn disk_total_bytes(r: &Registry) -> Result<IntGauge> {
    reg(r, IntGauge::new("bitark_disk_total_bytes", "Size of the data directory's file system")?)
}
