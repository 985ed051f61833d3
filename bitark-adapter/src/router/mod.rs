//! `bitark router`: the public API of every replication group behind one address.
//!
//! Stateless: it reads the shard map and each group's master from etcd (a watch keeps
//! them fresh, see `bitark_engine::sharding::follow`) and sends each request to the
//! group that owns its user — writes to the master, reads to the master or, with a
//! write `token`, to any member the group publishes. Several routers can run side by
//! side; a router killed mid-request loses nothing a node acknowledged.
//!
//! - `forward.rs`: one user's request, with the redirects it follows: `wrong_shard`
//!   from a node that knows a newer map (the router reads the map again), `not_master`
//!   (it follows the new master), no master during a failover (it waits up to
//!   `--failover-wait`); a write to a range frozen for a move is held for up to
//!   `--frozen-hold`.
//! - `client.rs`: the pooled HTTP/1.1 client to the nodes.
//! - `pipe.rs`: plain reads pipelined on a few connections per node.
//! - `wire.rs`: requests written and answers read, in HTTP/1.1.
//! - `fanout.rs`: the cross-user reads, split by group and put back in request order.
//! - `metrics.rs`: the router's own Prometheus metrics.
//!
//! While etcd cannot be reached the router keeps serving from the map it last read, and
//! its health says so; a node never serves a user it does not own whatever the router
//! believes (the node checks its own log).

mod client;
mod fanout;
mod forward;
mod metrics;
mod pipe;
mod wire;

use crate::http::receipts::{PAIRS_ROUTE, READERS_ROUTE};
use crate::shards::Place;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bitark_engine::sharding::{follow, read_directory, ShardView};
use bitark_infra::etcd::{Etcd, EtcdError};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tower::ServiceExt;

pub use metrics::RouterMetrics;

/// How a router runs.
#[derive(Clone, Debug)]
pub struct RouterOptions {
    pub place: Place,
    /// Longest a request waits for its group to have a master again.
    pub failover_wait: Duration,
    /// Longest one request to a node may take.
    pub node_timeout: Duration,
    /// Longest a write to a range frozen for a move is held before the node's
    /// `range_frozen` is passed on.
    pub frozen_hold: Duration,
    /// Connections per node that carry plain reads pipelined (0: none).
    pub pipelines: usize,
    /// How often the map is read again without a change seen.
    pub refresh: Duration,
    /// What a client connection may hold and for how long (`server.*`, as on a node).
    pub limits: crate::server::Limits,
    /// How long open requests may finish after a stop.
    pub drain: Duration,
}

/// What every request of a router shares.
pub(crate) struct Shared {
    pub view: ShardView,
    pub etcd: Etcd,
    pub prefix: String,
    pub client: client::NodeClient,
    pub options: RouterOptions,
    pub metrics: RouterMetrics,
}

impl Shared {
    /// Reads the directory again now (after a node named a newer map, or a master that
    /// went away), without waiting for the watch.
    pub(crate) async fn refresh(&self) {
        match read_directory(&self.etcd, &self.prefix).await {
            Ok(Some(directory)) => self.view.set(directory),
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "cannot read the shard directory now"),
        }
        self.metrics.map_version.set(self.view.map_version() as i64);
    }
}

/// Why a router could not start.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("give the etcd endpoints: --etcd URL, or coordination.etcd.endpoints in the configuration")]
    NoEtcd,
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error("HTTP server: {0}")]
    Listener(#[from] std::io::Error),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Serves the router on `listener` until `shutdown` completes.
pub async fn run(
    listener: TcpListener,
    options: RouterOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), RouterError> {
    if options.place.endpoints.is_empty() {
        return Err(RouterError::NoEtcd);
    }
    let etcd = Etcd::connect(&options.place.endpoints, options.place.timeout)?;
    let metrics = RouterMetrics::new()?;
    let client = client::NodeClient::new(options.node_timeout).pipelined(options.pipelines, metrics.pipes.clone());
    let shared = Arc::new(Shared {
        view: ShardView::default(),
        etcd: etcd.clone(),
        prefix: options.place.prefix.clone(),
        client,
        metrics,
        options: options.clone(),
    });
    tokio::spawn(follow(etcd, options.place.prefix.clone(), shared.view.clone(), options.refresh));
    tokio::spawn(metrics::track(shared.clone()));
    tracing::info!(prefix = %options.place.prefix, "router listening on http://{}", listener.local_addr()?);
    let routes = Router::new()
        .route("/openapi.json", get(openapi_document))
        .route("/actuator/health", get(health))
        .route("/actuator/health/readiness", get(readiness))
        .route("/actuator/health/liveness", get(|| async { Json(serde_json::json!({ "status": "UP" })) }))
        .route("/actuator/prometheus", get(prometheus_text))
        .route(READERS_ROUTE, post(fanout::readers))
        .route(PAIRS_ROUTE, post(fanout::pairs))
        .fallback(forward::forward)
        .with_state(shared.clone());
    let connections = shared.metrics.connections.clone();
    // One user's requests, nearly all of them, go straight to the forwarding; the
    // router's own endpoints and the fanned-out reads through the route table.
    let service = move |request: Request| {
        let (shared, routes) = (shared.clone(), routes.clone());
        async move {
            if request.uri().path().starts_with(forward::USERS) {
                forward::forward(State(shared), request).await
            } else {
                match routes.oneshot(request).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                }
            }
        }
    };
    crate::server::serve(listener, service, options.limits.clone(), connections, shutdown, options.drain).await;
    Ok(())
}

async fn openapi_document() -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], crate::openapi::document()).into_response()
}

/// Each group's master and the members a read with a write token may go to; `UP` with
/// a fresh map, `DEGRADED` while etcd cannot be read (serving from the cached
/// map), `DOWN` (503) before any map was read.
async fn health(State(shared): State<Arc<Shared>>) -> Response {
    let watch = shared.view.watch_state();
    let directory = shared.view.get();
    let status = match (&directory, watch.connected) {
        (None, _) => "DOWN",
        (Some(_), true) => "UP",
        (Some(_), false) => "DEGRADED",
    };
    let groups: serde_json::Map<String, serde_json::Value> = directory
        .as_ref()
        .map(|d| {
            d.map
                .groups()
                .into_iter()
                .map(|g| {
                    let members = d.members.get(&g).cloned().unwrap_or_default();
                    (g.to_string(), serde_json::json!({ "master": d.masters.get(&g), "members": members }))
                })
                .collect()
        })
        .unwrap_or_default();
    let body = serde_json::json!({
        "status": status,
        "mapVersion": shared.view.map_version(),
        "etcd": watch,
        "groups": groups,
    });
    let code = if directory.is_some() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(body)).into_response()
}

/// Ready once a shard map was read: before it the router can send nothing anywhere.
async fn readiness(State(shared): State<Arc<Shared>>) -> Response {
    match shared.view.get() {
        Some(_) => Json(serde_json::json!({ "status": "UP" })).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({ "status": "DOWN" }))).into_response(),
    }
}

async fn prometheus_text(State(shared): State<Arc<Shared>>, _request: Request) -> Response {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], shared.metrics.render()).into_response()
}
