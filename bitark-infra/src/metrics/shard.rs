//! Families of a sharded node (`cluster.group`): the ownership its log holds and the
//! requests it refused for users of other groups.

use super::reg;
use prometheus::{Gauge, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, Result};

pub(super) fn map_version(r: &Registry) -> Result<IntGauge> {
    reg(r, IntGauge::new("bitark_shard_map_version", "Shard map version of the ownership this node serves (0: none)")?)
}

pub(super) fn owned_ranges(r: &Registry) -> Result<IntGauge> {
    reg(r, IntGauge::new("bitark_shard_owned_ranges", "Hash ranges this node's group owns")?)
}

pub(super) fn frozen_ranges(r: &Registry) -> Result<IntGauge> {
    reg(r, IntGauge::new("bitark_shard_frozen_ranges", "Owned hash ranges frozen for a move (writes refused)")?)
}

pub(super) fn owned_fraction(r: &Registry) -> Result<Gauge> {
    reg(r, Gauge::new("bitark_shard_owned_fraction", "Share of the hash space this node's group owns, 0 to 1")?)
}

pub(super) fn wrong_shard(r: &Registry) -> Result<IntCounterVec> {
    reg(
        r,
        IntCounterVec::new(
            Opts::new("bitark_shard_wrong_shard_total", "Requests refused for a user of another group"),
            &["kind"],
        )?,
    )
}

pub(super) fn range_users(r: &Registry) -> Result<IntGaugeVec> {
    reg(r, IntGaugeVec::new(Opts::new("bitark_shard_range_users", "Users held in each owned hash range"), &["range"])?)
}

pub(super) fn range_marks(r: &Registry) -> Result<IntGaugeVec> {
    reg(
        r,
        IntGaugeVec::new(
            Opts::new("bitark_shard_range_marks", "Read marks held in each owned hash range"),
            &["range"],
        )?,
    )
}

pub(super) fn range_requests(r: &Registry) -> Result<IntCounterVec> {
    reg(
        r,
        IntCounterVec::new(
            Opts::new("bitark_shard_range_requests_total", "Reads and writes of users in each owned hash range"),
            &["range", "kind"],
        )?,
    )
}

pub(super) fn unowned_users(r: &Registry) -> Result<IntGauge> {
    reg(r, IntGauge::new("bitark_shard_unowned_users", "Users held outside the ranges this node's group owns")?)
}
