//! The slave's side: registering with the master, logging what it sends, and keeping
//! `slave-progress.bin`.
//!
//! The slave registers at start-up and again every `register-interval`. Registration
//! doubles as a keep-alive: a master that restarted has forgotten its slaves, and
//! learns each one's position from the slave itself within one interval. The position
//! reported after a restart is the slave's own: the lower of its progress file and its
//! local log (a progress file ahead of the log means the log lost records, which must
//! come again; one behind it only costs skipped duplicates).

use crate::config::ReplicationConfig;
use crate::error::ReplicateError;
use crate::node::Node;
use bitark_common::replication::{AppendResponse, Features, RegisterRequest};
use bitark_common::{Lsn, Record};
use bitark_infra::replication::{read_progress, write_progress, ReplicationClient};
use bitark_infra::Metrics;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Cheap-to-clone handle on a slave's replication state.
#[derive(Clone)]
pub struct Follower {
    inner: Arc<FollowerInner>,
}

struct FollowerInner {
    node: Node,
    config: ReplicationConfig,
    features: Features,
    self_url: String,
    session: String,
    client: ReplicationClient,
    metrics: Metrics,
    data_dir: PathBuf,
    registered: AtomicBool,
    /// The position reported at the first registration of this process.
    resume_from: Lsn,
    /// The LSN last written to `slave-progress.bin` (0 when never).
    progress: AtomicU64,
}

impl Follower {
    /// Reads the progress file, works out where to resume, and starts registering with
    /// the master (and, under `reliable`, keeping the progress file) on the current
    /// runtime.
    pub fn start(node: Node, self_url: String, client: ReplicationClient, metrics: Metrics) -> Follower {
        let config = node.config().replication.clone();
        let features = config.effective_features();
        let data_dir = node.config().node.data_dir.clone();
        let applied = node.applied_lsn();
        let resume_from = if features.reliable {
            match read_progress(&data_dir) {
                Ok(Some(p)) if p.lsn <= applied => {
                    tracing::info!(progress = %p.lsn, %applied, "resuming from slave-progress.bin");
                    p.lsn
                }
                Ok(Some(p)) => {
                    tracing::warn!(
                        progress = %p.lsn, %applied,
                        "slave-progress.bin is ahead of the local log (records were lost locally); resuming from the log"
                    );
                    applied
                }
                Ok(None) => {
                    tracing::warn!(%applied, "no slave-progress.bin; resuming from the local log position");
                    applied
                }
                Err(e) => {
                    tracing::error!(error = %e, %applied, "slave-progress.bin is unreadable; resuming from the local log position");
                    applied
                }
            }
        } else {
            applied
        };
        let follower = Follower {
            inner: Arc::new(FollowerInner {
                node,
                config,
                features,
                self_url,
                session: format!("{:016x}", rand::random::<u64>()),
                client,
                metrics,
                data_dir,
                registered: AtomicBool::new(false),
                resume_from,
                progress: AtomicU64::new(resume_from.0),
            }),
        };
        tokio::spawn(follower.clone().register_loop());
        if features.reliable {
            tokio::spawn(follower.clone().progress_loop());
        }
        follower
    }

    /// Logs and applies a batch from the master; answers the new `ackLsn`.
    pub async fn append(&self, records: Vec<Record>) -> Result<AppendResponse, ReplicateError> {
        let outcome = self.inner.node.replicate(records).await?;
        let m = &self.inner.metrics;
        m.replication_duplicates_skipped.inc_by(outcome.skipped);
        Ok(AppendResponse { ack_lsn: outcome.last.0, skipped: outcome.skipped })
    }

    /// Counts a batch refused for a bad checksum.
    pub fn crc_failure(&self) {
        self.inner.metrics.replication_crc_failures.inc();
    }

    /// The flags this slave runs with.
    pub fn features(&self) -> Features {
        self.inner.features
    }

    /// The session of this slave process.
    pub fn session(&self) -> &str {
        &self.inner.session
    }

    pub fn is_registered(&self) -> bool {
        self.inner.registered.load(Ordering::Acquire)
    }

    /// The LSN last written to `slave-progress.bin`, under `reliable`.
    pub fn progress_lsn(&self) -> Option<u64> {
        self.inner.features.reliable.then(|| self.inner.progress.load(Ordering::Acquire))
    }

    /// Writes the progress file one last time (shutdown).
    pub fn flush_progress(&self) {
        if self.inner.features.reliable {
            self.write_progress_now();
        }
    }

    async fn register_loop(self) {
        let inner = &self.inner;
        let mut first = true;
        loop {
            let applied = if first { inner.resume_from } else { inner.node.applied_lsn() };
            let request = RegisterRequest {
                slave_id: inner.node.config().node.id.clone(),
                url: inner.self_url.clone(),
                applied_lsn: applied.0,
                features: inner.features,
                session: inner.session.clone(),
            };
            match inner.client.register(&inner.config.master_url, &request).await {
                Ok(answer) => {
                    first = false;
                    if !inner.registered.swap(true, Ordering::AcqRel) {
                        tracing::info!(
                            master = %answer.master_id, url = %inner.config.master_url, from = %applied,
                            features = ?answer.features.enabled(), "registered with the master"
                        );
                    }
                }
                Err(e) => {
                    if inner.registered.swap(false, Ordering::AcqRel) {
                        tracing::warn!(url = %inner.config.master_url, error = %e, "lost contact with the master");
                    } else {
                        tracing::debug!(url = %inner.config.master_url, error = %e, "master not reachable yet");
                    }
                }
            }
            tokio::time::sleep(inner.config.register_interval).await;
        }
    }

    async fn progress_loop(self) {
        loop {
            tokio::time::sleep(self.inner.config.progress_flush).await;
            if self.inner.node.applied_lsn().0 > self.inner.progress.load(Ordering::Acquire) {
                let this = self.clone();
                let _ = tokio::task::spawn_blocking(move || this.write_progress_now()).await;
            }
        }
    }

    fn write_progress_now(&self) {
        let applied = self.inner.node.applied_lsn();
        match write_progress(&self.inner.data_dir, applied) {
            Ok(_) => self.inner.progress.store(applied.0, Ordering::Release),
            Err(e) => tracing::error!(error = %e, "cannot write slave-progress.bin"),
        }
    }
}
