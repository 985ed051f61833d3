//! The router's metrics, on a registry of its own (`/actuator/prometheus`):
//! - `bitark_router_requests_total{group, status}`: requests answered, by owning group
//!   (`none` when no group could be named, `fanout` for the cross-user reads) and HTTP
//!   status;
//! - `bitark_router_request_seconds{group}`: time to answer, node round trips included;
//! - `bitark_router_redirects_total{kind}`: redirects followed: `wrong_shard` (a newer
//!   map), `not_master` (a new master), `no_master` (waited for one), `unreachable`
//!   (a master that did not take the connection), `range_frozen` (a write held while
//!   its range was frozen for a move);
//! - `bitark_router_held_seconds`: how long each held write was held;
//! - `bitark_router_map_version`: the shard map version in use;
//! - `bitark_router_group_has_master{group}`: 1 while the router knows the group's
//!   master, 0 while none is known (its users cannot be written);
//! - `bitark_router_etcd_connected`: 1 while the watch on etcd answers, 0 while the
//!   router serves from its cached map;
//! - `bitark_router_pipelined_reads_total`, `bitark_router_pipeline_writes_total`,
//!   `bitark_router_pipeline_lost_total`: plain reads answered through a pipelined
//!   connection, the writes that carried them (reads / writes is how many shared a
//!   write), and reads handed back to go the ordinary way;
//! - `bitark_http_connections_open`, `_refused_total`, `_expired_total{reason}`: the
//!   client connections, as on a node.

use super::Shared;
use bitark_infra::metrics::Connections;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use std::sync::Arc;
use std::time::Duration;

pub struct RouterMetrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub seconds: HistogramVec,
    pub redirects: IntCounterVec,
    pub held_seconds: Histogram,
    pub map_version: IntGauge,
    pub group_has_master: IntGaugeVec,
    pub etcd_connected: IntGauge,
    pub connections: Connections,
    pub(super) pipes: super::pipe::PipeCounters,
}

impl RouterMetrics {
    pub fn new() -> Result<RouterMetrics, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("bitark_router_requests_total", "Requests the router answered, by owning group and status"),
            &["group", "status"],
        )?;
        let buckets = vec![0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
        let seconds = HistogramVec::new(
            HistogramOpts::new("bitark_router_request_seconds", "Time the router took to answer, by owning group")
                .buckets(buckets),
            &["group"],
        )?;
        let redirects = IntCounterVec::new(
            Opts::new("bitark_router_redirects_total", "Redirects the router followed, by kind"),
            &["kind"],
        )?;
        let held_seconds = Histogram::with_opts(
            HistogramOpts::new("bitark_router_held_seconds", "How long a write to a frozen range was held")
                .buckets(vec![0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0]),
        )?;
        let map_version = IntGauge::new("bitark_router_map_version", "Version of the shard map the router uses")?;
        let group_has_master = IntGaugeVec::new(
            Opts::new("bitark_router_group_has_master", "1 while the router knows the group's master, else 0"),
            &["group"],
        )?;
        let etcd_connected =
            IntGauge::new("bitark_router_etcd_connected", "1 while the router's watch on etcd answers, else 0")?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(seconds.clone()))?;
        registry.register(Box::new(redirects.clone()))?;
        registry.register(Box::new(held_seconds.clone()))?;
        registry.register(Box::new(map_version.clone()))?;
        registry.register(Box::new(group_has_master.clone()))?;
        registry.register(Box::new(etcd_connected.clone()))?;
        for kind in ["wrong_shard", "not_master", "no_master", "unreachable", "range_frozen"] {
            redirects.with_label_values(&[kind]);
        }
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let counter = IntCounter::new(name, help)?;
            registry.register(Box::new(counter.clone()))?;
            Ok(counter)
        };
        let pipes = super::pipe::PipeCounters {
            answered: counter(
                "bitark_router_pipelined_reads_total",
                "Plain reads answered through a pipelined connection",
            )?,
            writes: counter(
                "bitark_router_pipeline_writes_total",
                "Writes of pipelined reads to a node, each one or more",
            )?,
            lost: counter("bitark_router_pipeline_lost_total", "Pipelined reads handed back to be sent on their own")?,
        };
        let connections = Connections::new(&registry)?;
        Ok(RouterMetrics {
            registry,
            requests,
            seconds,
            redirects,
            held_seconds,
            map_version,
            group_has_master,
            etcd_connected,
            connections,
            pipes,
        })
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        prometheus::TextEncoder::new().encode_to_string(&self.registry.gather()).unwrap_or_default()
    }
}

/// Keeps the gauges of the map version and of etcd's state current.
pub(super) async fn track(shared: Arc<Shared>) {
    let mut changes = shared.view.subscribe();
    loop {
        shared.metrics.map_version.set(shared.view.map_version() as i64);
        shared.metrics.etcd_connected.set(i64::from(shared.view.watch_state().connected));
        if let Some(directory) = shared.view.get() {
            for group in directory.map.groups() {
                let known = directory.masters.contains_key(&group);
                shared.metrics.group_has_master.with_label_values(&[group.as_str()]).set(i64::from(known));
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), changes.changed()).await;
    }
}
