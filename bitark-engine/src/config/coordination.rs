//! `coordination.*`: where automatic failover keeps the leader lease and the epoch
//! counter (etcd).

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `coordination.*`: where failover (`replication.features.failover`) keeps the leader
/// lease and the epoch counter. Without the flag these keys are not used and the node
/// runs in static mode (roles from `node.role` and `epoch.bin`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct CoordinationConfig {
    pub etcd: EtcdConfig,
    /// Time-to-live of the leader lease, whole seconds: a master that cannot renew it
    /// stops taking writes a quarter of it before it can expire, and the slaves elect a
    /// new master once it has. etcd raises a TTL below its own minimum (2s by default).
    /// Default `2s`.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    pub lease_ttl: Duration,
}

impl Default for CoordinationConfig {
    fn default() -> Self {
        CoordinationConfig { etcd: EtcdConfig::default(), lease_ttl: Duration::from_secs(2) }
    }
}

/// `coordination.etcd.*`: the etcd cluster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct EtcdConfig {
    /// Client URLs of the etcd members (`http://host:2379`). Default none.
    pub endpoints: Vec<String>,
    /// Key prefix of this cluster's keys (`<prefix>/leader`, `<prefix>/epoch`,
    /// `<prefix>/members/<node id>`). Default `/bitark`.
    pub prefix: String,
    /// Longest one etcd call may take. Default `500ms`.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    pub timeout: Duration,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig { endpoints: Vec::new(), prefix: "/bitark".into(), timeout: Duration::from_millis(500) }
    }
}

impl CoordinationConfig {
    pub(super) fn problems(&self, failover: bool) -> Vec<String> {
        let mut out = Vec::new();
        if failover && self.etcd.endpoints.is_empty() {
            out.push(
                "replication.features.failover: needs coordination.etcd.endpoints (the etcd that holds the leader lease)"
                    .into(),
            );
        }
        for url in &self.etcd.endpoints {
            if !url.starts_with("http://") && !url.starts_with("https://") {
                out.push(format!("coordination.etcd.endpoints: `{url}` must start with http:// or https://"));
            }
        }
        if !self.etcd.prefix.starts_with('/') || self.etcd.prefix.ends_with('/') {
            out.push(format!(
                "coordination.etcd.prefix: `{}` must start with `/` and not end with one",
                self.etcd.prefix
            ));
        }
        if self.lease_ttl < Duration::from_secs(1) || self.lease_ttl.subsec_nanos() != 0 {
            out.push("coordination.lease-ttl: must be whole seconds, at least 1s (etcd leases count seconds)".into());
        }
        if self.etcd.timeout.is_zero() || self.etcd.timeout * 2 > self.lease_ttl {
            out.push("coordination.etcd.timeout: must be above 0 and at most half of coordination.lease-ttl".into());
        }
        out
    }
}
