//! Families of configuration refreshes (`POST /actuator/refresh`, SIGHUP).

use super::reg;
use prometheus::{IntCounterVec, IntGauge, Opts, Registry, Result};

pub(super) fn refreshes(r: &Registry) -> Result<IntCounterVec> {
    reg(
        r,
        IntCounterVec::new(
            Opts::new("bitark_config_refreshes_total", "Configuration refreshes by outcome"),
            &["outcome"],
        )?,
    )
}

pub(super) fn last_refresh(r: &Registry) -> Result<IntGauge> {
    reg(
        r,
        IntGauge::new(
            "bitark_config_last_refresh_timestamp_seconds",
            "Unix time a refresh last changed the configuration in force",
        )?,
    )
}
