//! Families of epochs and failover (stage 7): the epoch, requests of an older one
//! refused, records cut on stepping down, role changes, and the etcd coordination
//! (leader lease, renewals, elections).

use super::reg;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry, Result};

pub(super) fn epoch(r: &Registry) -> Result<IntGauge> {
    reg(r, IntGauge::new("bitark_replication_epoch", "Highest replication epoch this node knows")?)
}

pub(super) fn stale_epoch_refusals(r: &Registry) -> Result<IntCounter> {
    reg(
        r,
        IntCounter::new(
            "bitark_replication_stale_epoch_refusals_total",
            "Replication requests refused because they came from a lower epoch",
        )?,
    )
}

pub(super) fn truncated_records(r: &Registry) -> Result<IntCounter> {
    reg(
        r,
        IntCounter::new(
            "bitark_replication_truncated_records_total",
            "Records cut from the log on stepping down, kept in a side file",
        )?,
    )
}

pub(super) fn role_changes(r: &Registry) -> Result<IntCounterVec> {
    reg(
        r,
        IntCounterVec::new(
            Opts::new("bitark_replication_role_changes_total", "Promotions and step-downs, by the new role"),
            &["to"],
        )?,
    )
}

pub(super) fn leader(r: &Registry) -> Result<IntGauge> {
    reg(r, IntGauge::new("bitark_coordination_leader", "1 while this node holds the leader lease in etcd")?)
}

pub(super) fn etcd_up(r: &Registry) -> Result<IntGauge> {
    reg(r, IntGauge::new("bitark_coordination_etcd_up", "1 while the last call to etcd answered")?)
}

pub(super) fn lease_renewals(r: &Registry) -> Result<IntCounterVec> {
    reg(
        r,
        IntCounterVec::new(
            Opts::new("bitark_coordination_lease_renewals_total", "Lease renewals in etcd, by result"),
            &["result"],
        )?,
    )
}

pub(super) fn elections(r: &Registry) -> Result<IntCounterVec> {
    reg(
        r,
        IntCounterVec::new(
            Opts::new("bitark_coordination_elections_total", "Campaigns for the leader key, by result"),
            &["result"],
        )?,
    )
}
