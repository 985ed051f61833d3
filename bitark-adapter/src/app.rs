//! The application context: [`AppState`], what every part of the running node shares
//! (the configuration in force, the node once recovered, its replication side, the
//! metrics), and the [`Reloader`] that re-reads the configuration sources.
//!
//! It sits below the HTTP layer and beside the role changes ([`crate::roles`]) and
//! refreshes ([`crate::refresh`]): they all take it, and it knows none of them. Why the
//! node cannot serve yet is an [`Unavailable`], which the HTTP layer answers with 503.

use crate::config::{AppConfig, Sources};
use bitark_engine::coordination::CoordinationStatus;
use bitark_engine::replication::{Follower, MasterHub};
use bitark_engine::replication_side::ReplicationSide;
use bitark_engine::Node;
use bitark_infra::Metrics;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// Why the node cannot serve a request now (503 on the HTTP side).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    /// Recovery has not finished yet.
    #[error("the node is starting (recovering its state); retry shortly")]
    Starting,
    /// Shutdown has begun.
    #[error("the node is shutting down")]
    ShuttingDown,
}

/// Changes the log filter of the running process.
pub type SetLogLevel = Box<dyn Fn(&str) -> Result<(), LogLevelError> + Send + Sync>;

/// Why `logging.level` could not be put in force.
#[derive(Debug, thiserror::Error)]
pub enum LogLevelError {
    /// The level is not a filter (`info`, `warn,bitark_engine=debug`).
    #[error(transparent)]
    Invalid(#[from] tracing_subscriber::filter::ParseError),
    /// The subscriber that held the filter is gone.
    #[error(transparent)]
    Reload(#[from] tracing_subscriber::reload::Error),
}

/// What a refresh re-reads, and how it changes what is not the node's own.
pub struct Reloader {
    sources: Sources,
    /// Sets `logging.level`; `None` while `BITARK_LOG` decides the levels.
    set_log_level: Option<SetLogLevel>,
    /// One refresh at a time. A tokio mutex: it is held across the awaits of a refresh
    /// (reading the sources, changing the replication flags).
    running: tokio::sync::Mutex<()>,
}

impl Reloader {
    /// Re-reads `sources` on every refresh; `set_log_level` applies `logging.level`
    /// (`None` when the levels are pinned by `BITARK_LOG`).
    pub fn new(sources: Sources, set_log_level: Option<SetLogLevel>) -> Reloader {
        Reloader { sources, set_log_level, running: tokio::sync::Mutex::new(()) }
    }

    /// Held across one refresh, so two refreshes never interleave.
    pub(crate) async fn one_at_a_time(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.running.lock().await
    }

    /// The sources the node started from.
    pub(crate) fn sources(&self) -> &Sources {
        &self.sources
    }

    /// What applies `logging.level`, unless `BITARK_LOG` pins the levels.
    pub(crate) fn log_level_setter(&self) -> Option<&SetLogLevel> {
        self.set_log_level.as_ref()
    }
}

/// The application context: cheap to clone, shared by every request, the role changes
/// and the refreshes.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    /// The configuration in force: its reloadable keys change on a refresh.
    config: arc_swap::ArcSwap<AppConfig>,
    /// Re-reads the configuration sources (`POST /actuator/refresh`, SIGHUP); set when
    /// the node knows its sources.
    reloader: OnceLock<Arc<Reloader>>,
    metrics: Metrics,
    /// Set once recovery finished; until then the API answers 503 `starting`. A
    /// `OnceLock` because it is written exactly once and read on every request.
    node: OnceLock<Node>,
    /// Set when shutdown begins; from then on the API answers 503 `shutting_down`.
    stopping: AtomicBool,
    /// The node's replication side (the hub or follower it runs, its role changes),
    /// once replication is wired at start-up.
    side: OnceLock<ReplicationSide>,
    /// Under failover, what the coordination loop knows.
    coordination: OnceLock<Arc<std::sync::Mutex<CoordinationStatus>>>,
    started: Instant,
}

impl AppState {
    pub fn new(config: AppConfig, metrics: Metrics) -> Self {
        AppState {
            inner: Arc::new(Inner {
                config: arc_swap::ArcSwap::from_pointee(config),
                reloader: OnceLock::new(),
                metrics,
                node: OnceLock::new(),
                stopping: AtomicBool::new(false),
                side: OnceLock::new(),
                coordination: OnceLock::new(),
                started: Instant::now(),
            }),
        }
    }

    /// The node, or why requests cannot be served now.
    pub fn node(&self) -> Result<&Node, Unavailable> {
        if self.inner.stopping.load(Ordering::Acquire) {
            return Err(Unavailable::ShuttingDown);
        }
        self.inner.node.get().ok_or(Unavailable::Starting)
    }

    /// The node if recovery has finished, whatever the shutdown state.
    pub fn node_if_open(&self) -> Option<&Node> {
        self.inner.node.get()
    }

    /// Makes the recovered node available to requests.
    pub fn set_node(&self, node: Node) {
        let _ = self.inner.node.set(node);
    }

    /// Sets the node's replication side (once, at start-up).
    pub fn set_replication_side(&self, side: ReplicationSide) {
        let _ = self.inner.side.set(side);
    }

    /// The node's replication side, once wired.
    pub fn replication_side(&self) -> Option<&ReplicationSide> {
        self.inner.side.get()
    }

    pub fn hub(&self) -> Option<MasterHub> {
        self.replication_side().and_then(ReplicationSide::hub)
    }

    pub fn follower(&self) -> Option<Follower> {
        self.replication_side().and_then(ReplicationSide::follower)
    }

    /// Where the coordination loop reports (under failover, once at start-up).
    pub fn set_coordination(&self, status: Arc<std::sync::Mutex<CoordinationStatus>>) {
        let _ = self.inner.coordination.set(status);
    }

    /// What the coordination loop knows now, under failover.
    pub fn coordination(&self) -> Option<CoordinationStatus> {
        self.inner.coordination.get().map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).now())
    }

    /// This node's own URL, once wired.
    pub fn self_url(&self) -> Option<String> {
        self.replication_side().map(|side| side.self_url().to_string())
    }

    /// From now on the API refuses new work with 503.
    pub fn begin_shutdown(&self) {
        self.inner.stopping.store(true, Ordering::Release);
    }

    /// The configuration in force now.
    pub fn config(&self) -> arc_swap::Guard<Arc<AppConfig>> {
        self.inner.config.load()
    }

    /// Puts `config` in force (after a refresh applied it to the node).
    pub(crate) fn set_config(&self, config: AppConfig) {
        self.inner.config.store(Arc::new(config));
    }

    /// Sets what re-reads the configuration sources (once, at start-up).
    pub fn set_reloader(&self, reloader: Reloader) {
        let _ = self.inner.reloader.set(Arc::new(reloader));
    }

    /// What re-reads the configuration sources, when the node knows them.
    pub fn reloader(&self) -> Option<Arc<Reloader>> {
        self.inner.reloader.get().cloned()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }
}
