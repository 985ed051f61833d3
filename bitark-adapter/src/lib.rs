//! The web layer and application context of BitArk: the `bitark` binary.
//!
//! # Layout
//! - [`config`]: figment-loaded [`AppConfig`] composed of every crate's section, with
//!   validation that lists every problem before start-up.
//! - [`http`]: axum routers (public API, `/actuator`, `/admin`), the [`ApiError`]
//!   mapping, extractors that name bad input, request metrics.
//! - [`openapi`]: the utoipa-generated OpenAPI document.
//! - [`run`]: start-up and graceful shutdown around an already-bound listener, so tests
//!   can start a server on `127.0.0.1:0` and stop it at will.
//!
//! [`ApiError`]: http::error::ApiError

pub mod config;
pub mod http;
pub mod openapi;

pub use config::AppConfig;

use axum::serve::ListenerExt;
use bitark_common::replication::Features;
use bitark_engine::replication::Follower;
use bitark_engine::{Node, OpenError};
use bitark_infra::replication::ReplicationClient;
use bitark_infra::Metrics;
use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use tokio::net::TcpListener;

/// Why the service stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("start-up failed: {0}")]
    Open(#[from] OpenError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("HTTP server: {0}")]
    Serve(#[from] std::io::Error),
    #[error("start-up task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Serves BitArk on `listener` until `shutdown` completes.
///
/// The listener answers at once: `/actuator/health` reports the node as starting and
/// the API answers 503 until recovery has finished. On shutdown: new requests get 503,
/// in-flight requests finish (up to `server.shutdown-timeout`), queued writes are made
/// durable, and the function returns.
pub async fn run(listener: TcpListener, config: AppConfig, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    let metrics = Metrics::new(prometheus::Registry::new())?;
    let state = http::AppState::new(config.clone(), metrics.clone());
    let local_addr = listener.local_addr()?;
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    // Answers are small and each is written at once: never hold one back (Nagle).
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let server = tokio::spawn(
        axum::serve(listener, http::router(state.clone()))
            .with_graceful_shutdown(async move {
                let _ = server_stopped.await;
            })
            .into_future(),
    );

    let engine = config.engine();
    let opening = {
        let metrics = metrics.clone();
        tokio::task::spawn_blocking(move || Node::open(engine, metrics))
    };
    tokio::pin!(shutdown);
    let node = tokio::select! {
        opened = opening => match opened? {
            Ok(node) => node,
            Err(e) => {
                let _ = stop_server.send(());
                let _ = server.await;
                return Err(e.into());
            }
        },
        _ = &mut shutdown => {
            tracing::info!("shutdown requested during recovery");
            let _ = stop_server.send(());
            let _ = server.await;
            return Ok(());
        }
    };
    let report = node.recovery();
    tracing::info!(
        applied = %report.applied,
        replayed = report.replayed,
        ms = report.duration.as_millis() as u64,
        "ready: serving reads and writes"
    );
    start_replication(&state, &node, &config, local_addr, &metrics);
    state.set_node(node.clone());

    shutdown.await;
    tracing::info!("shutting down: finishing in-flight requests");
    state.begin_shutdown();
    let _ = stop_server.send(());
    match tokio::time::timeout(config.server.shutdown_timeout, server).await {
        Ok(done) => done??,
        Err(_) => tracing::warn!("in-flight requests did not finish within server.shutdown-timeout"),
    }
    let follower = state.follower().cloned();
    tokio::task::spawn_blocking(move || {
        node.shutdown();
        if let Some(follower) = follower {
            follower.flush_progress();
        }
    })
    .await?;
    tracing::info!("stopped; the write-ahead log is durable");
    Ok(())
}

/// Starts the replication module the configuration asks for: a master's hub, or a
/// slave's follower. Neither when replication is off.
fn start_replication(
    state: &http::AppState,
    node: &Node,
    config: &AppConfig,
    local_addr: SocketAddr,
    metrics: &Metrics,
) {
    let replication = &config.replication;
    let features = replication.effective_features();
    for (name, on) in Features::NAMES.iter().zip(features_flags(features)) {
        metrics.replication_feature.with_label_values(&[name]).set(on as i64);
    }
    let client =
        ReplicationClient::new(replication.request_timeout, config.security.cluster_token.expose().map(str::to_string));
    if node.is_slave() {
        let self_url =
            if replication.self_url.is_empty() { format!("http://{local_addr}") } else { replication.self_url.clone() };
        tracing::info!(master = %replication.master_url, %self_url, features = ?features.enabled(), "following the master");
        state.set_follower(Follower::start(node.clone(), self_url, client, metrics.clone()));
    } else if let Some(hub) = node.start_master_hub(client) {
        tracing::info!(features = ?features.enabled(), static_slaves = replication.slaves.len(), "replicating to slaves");
        state.set_hub(hub);
    }
}

fn features_flags(f: Features) -> [bool; 4] {
    [f.notify, f.progress, f.bounded_buffer, f.reliable]
}
