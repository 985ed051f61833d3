//! The web layer and application context of BitArk: the `bitark` binary.
//!
//! # Layout
//! - [`app`]: the application context, [`app::AppState`] (configuration in force, the
//!   node once recovered, its replication side, metrics), and the configuration reloader.
//! - [`backups`]: the `bitark backup`, `backup verify`, `backup prune` and `restore`
//!   commands, one file per command.
//! - [`config`]: figment-loaded [`AppConfig`] composed of every crate's section, with
//!   validation that lists every problem before start-up.
//! - [`http`]: axum routers (public API, `/actuator`, `/admin`), the [`ApiError`]
//!   mapping, extractors that name bad input, request limits, request metrics.
//! - [`openapi`]: the utoipa-generated OpenAPI document.
//! - [`refresh`]: `POST /actuator/refresh` and SIGHUP: the reloadable keys put in force.
//! - [`roles`]: when the replication side starts and changes: at start-up, on an
//!   admin request, on the election's word, on a newer epoch seen (the engine's
//!   `ReplicationSide` sequences each change).
//! - [`rollout`]: the `bitark rollout` command, a cluster moved stage by stage.
//! - [`router`]: `bitark router`, the public API of every replication group behind one
//!   address: each request sent to the group that owns its user, cross-user reads fanned
//!   out.
//! - [`shards`]: `bitark shards init | show | assign`, the shard map in etcd.
//! - [`server`]: the HTTP/1.1 connection loop, generic over the service it serves:
//!   connection cap, idle, header and body deadlines, JSON bodies for the errors hyper
//!   answers by itself.
//! - [`run`]: start-up and graceful shutdown around an already-bound listener, so tests
//!   can start a server on `127.0.0.1:0` and stop it at will.
//!
//! [`ApiError`]: http::error::ApiError

pub mod app;
pub mod backups;
pub mod config;
pub mod http;
pub mod openapi;
pub mod refresh;
pub mod roles;
pub mod rollout;
pub mod router;
pub mod server;
pub mod shards;
pub mod shards_move;

pub use config::AppConfig;

use bitark_engine::{Node, OpenError};
use bitark_infra::Metrics;
use std::future::Future;
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
    Listener(#[from] std::io::Error),
    #[error("start-up task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Serves BitArk on `listener` until `shutdown` completes.
///
/// The listener answers at once: `/actuator/health` reports the node as starting and
/// the API answers 503 until recovery has finished. On shutdown: new requests get 503,
/// in-flight requests finish (up to `server.shutdown-timeout`), queued writes are made
/// durable, and the function returns.
///
/// With a `reloader`, `POST /actuator/refresh` and SIGHUP re-read the configuration
/// sources and put the reloadable keys in force.
///
/// With a `management` listener (`management.server.port`), `/actuator/*` and `/admin/*`
/// are served there and no longer on `listener`.
pub async fn run(
    listener: TcpListener,
    management: Option<TcpListener>,
    config: AppConfig,
    reloader: Option<app::Reloader>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let metrics = Metrics::new(prometheus::Registry::new())?;
    for outcome in ["applied", "unchanged", "refused"] {
        metrics.config_refreshes.with_label_values(&[outcome]);
    }
    let state = app::AppState::new(config.clone(), metrics.clone());
    if let Some(reloader) = reloader {
        state.set_reloader(reloader);
    }
    let local_addr = listener.local_addr()?;
    warn_about_exposure(&config, local_addr);
    let (stop_server, stopped) = tokio::sync::watch::channel(false);
    let limits = server::Limits::of(&config.server, 1);
    let (public, management) = match management {
        Some(listener) => (http::Routes::Api, Some(listener)),
        None => (http::Routes::All, None),
    };
    let management_server = management.map(|listener| {
        let api = http::router_of(state.clone(), http::Routes::Management);
        spawn_server(listener, api, limits.clone(), metrics.clone(), stopped.clone(), config.server.shutdown_timeout)
    });
    let api = http::router_of(state.clone(), public);
    let server = spawn_server(listener, api, limits, metrics.clone(), stopped, config.server.shutdown_timeout);
    let server = async move {
        let served = server.await;
        if let Some(management) = management_server {
            management.await?;
        }
        served
    };
    tokio::pin!(server);

    let engine = config.engine.clone();
    let opening = {
        let metrics = metrics.clone();
        tokio::task::spawn_blocking(move || Node::open(engine, metrics))
    };
    tokio::pin!(shutdown);
    let node = tokio::select! {
        opened = opening => match opened? {
            Ok(node) => node,
            Err(e) => {
                let _ = stop_server.send(true);
                let _ = (&mut server).await;
                return Err(e.into());
            }
        },
        _ = &mut shutdown => {
            tracing::info!("shutdown requested during recovery");
            let _ = stop_server.send(true);
            let _ = (&mut server).await;
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
    roles::start(&state, &node, &config, local_addr, &metrics).await;
    bitark_engine::archive::start(&node);
    state.set_node(node.clone());
    if state.reloader().is_some() {
        tokio::spawn(refresh_on_hangup(state.clone()));
    }

    shutdown.await;
    tracing::info!("shutting down: finishing in-flight requests");
    state.begin_shutdown();
    let _ = stop_server.send(true);
    (&mut server).await?;
    let follower = state.follower();
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

/// Serves `api` on `listener` until `stopped` turns true.
fn spawn_server(
    listener: TcpListener,
    api: http::Api,
    limits: server::Limits,
    metrics: Metrics,
    mut stopped: tokio::sync::watch::Receiver<bool>,
    drain: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    let service = move |request| {
        let api = api.clone();
        async move { api.handle(request).await }
    };
    let shutdown = async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    tokio::spawn(server::serve(listener, service, limits, metrics.connections(), shutdown, drain))
}

/// SIGHUP re-reads the configuration, as `POST /actuator/refresh` does; the outcome is
/// logged.
async fn refresh_on_hangup(state: app::AppState) {
    #[cfg(unix)]
    {
        let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(signal) => signal,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; refresh with POST /actuator/refresh");
                return;
            }
        };
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: refreshing the configuration");
            let _ = refresh::refresh(&state).await;
        }
    }
    #[cfg(not(unix))]
    let _ = state;
}

/// Warns, at every start, about endpoints that are open to whoever can reach them.
fn warn_about_exposure(config: &AppConfig, addr: SocketAddr) {
    let security = &config.security;
    if config.replicates() && security.cluster_token.expose().is_none() {
        tracing::warn!(
            "INSECURE: replication runs without security.cluster-token (security.allow-insecure-cluster is set): \
             anyone who can reach /internal/replication can register as a slave or send this node log records"
        );
    }
    if !addr.ip().is_loopback() && security.admin_token.expose().is_none() {
        tracing::warn!(
            %addr,
            "bound to a non-loopback address without security.admin-token: /admin/* is open to anyone who can reach it"
        );
    }
}
