//! [`ReplicationSide`]: the one owner of the replication side a node runs (a master's
//! hub, a slave's follower, or neither) and of the lock that keeps role changes from
//! interleaving. Starting the side the role asks for, promotion, stepping down to follow
//! a master, standing by and changing the flags in force are sequenced here, each under
//! that lock; the adapter decides when (an admin request, the election, a newer epoch).

use crate::error::RoleError;
use crate::modules::{self, Host};
use crate::node::{LiveFeatures, Node};
use crate::replication::{Follower, MasterHub};
use bitark_common::replication::Features;
use bitark_common::{Epoch, Lsn};
use bitark_infra::replication::ReplicationClient;
use bitark_infra::Metrics;
use std::sync::{Arc, PoisonError, RwLock};

/// The replication side a node runs.
#[derive(Clone, Default)]
pub enum Replication {
    #[default]
    None,
    Master(MasterHub),
    Slave(Follower),
}

/// Cheap-to-clone handle on a node's replication side.
#[derive(Clone)]
pub struct ReplicationSide {
    inner: Arc<Inner>,
}

struct Inner {
    node: Node,
    client: ReplicationClient,
    /// The URL peers reach this node at.
    self_url: String,
    metrics: Metrics,
    /// What runs now. A std lock: read per request that needs the hub or the follower,
    /// written only under `changing`, never held across an await.
    running: RwLock<Replication>,
    /// Held across a whole role change (it awaits blocking work), so two never
    /// interleave: a tokio mutex.
    changing: tokio::sync::Mutex<()>,
}

impl ReplicationSide {
    /// The replication side of `node`, running nothing yet.
    pub fn new(node: Node, client: ReplicationClient, self_url: String, metrics: Metrics) -> ReplicationSide {
        let inner = Inner {
            node,
            client,
            self_url,
            metrics,
            running: RwLock::new(Replication::None),
            changing: tokio::sync::Mutex::new(()),
        };
        ReplicationSide { inner: Arc::new(inner) }
    }

    pub fn client(&self) -> &ReplicationClient {
        &self.inner.client
    }

    pub fn self_url(&self) -> &str {
        &self.inner.self_url
    }

    /// What runs now.
    pub fn current(&self) -> Replication {
        self.inner.running.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn hub(&self) -> Option<MasterHub> {
        match self.current() {
            Replication::Master(hub) => Some(hub),
            _ => None,
        }
    }

    pub fn follower(&self) -> Option<Follower> {
        match self.current() {
            Replication::Slave(follower) => Some(follower),
            _ => None,
        }
    }

    fn replace(&self, next: Replication) -> Replication {
        std::mem::replace(&mut *self.inner.running.write().unwrap_or_else(PoisonError::into_inner), next)
    }

    /// Stops whatever runs: a hub's links close, a follower stops.
    fn stop_running(&self) {
        match self.replace(Replication::None) {
            Replication::Master(_) => self.inner.node.stop_master_hub(),
            Replication::Slave(follower) => follower.stop(),
            Replication::None => {}
        }
    }

    /// Starts the side the node's static role asks for: a follower on a slave, a hub on
    /// a master.
    pub async fn start_static(&self) {
        let _changing = self.inner.changing.lock().await;
        if self.inner.node.is_slave() {
            self.start_slave();
        } else {
            self.start_master();
        }
    }

    fn start_slave(&self) {
        let node = &self.inner.node;
        let features = node.features();
        tracing::info!(
            master = %node.role().master_url, self_url = %self.inner.self_url, features = ?features.enabled(),
            "following the master"
        );
        let follower = Follower::start(
            node.clone(),
            self.inner.self_url.clone(),
            self.inner.client.clone(),
            self.inner.metrics.clone(),
        );
        let modules = modules::start(&Host::Slave(&follower), &features);
        tracing::info!(?modules, "replication modules started");
        self.replace(Replication::Slave(follower));
    }

    fn start_master(&self) {
        let node = &self.inner.node;
        let features = node.features();
        if let Some(hub) = node.start_master_hub(self.inner.client.clone()) {
            let slaves = node.config().replication.slaves.len();
            tracing::info!(features = ?features.enabled(), static_slaves = slaves, epoch = %node.epoch(), "replicating to slaves");
            let modules = modules::start(&Host::Master(&hub), &features);
            tracing::info!(?modules, "replication modules started");
            self.replace(Replication::Master(hub));
        }
    }

    /// Changes the replication flags in force and the side running under them: a hub
    /// or follower keeps its session, so nothing in flight is refused, and each link
    /// renegotiates at its next registration, asked for at once. Flags all off stop a
    /// master's hub; flags on start one on a master that ran none.
    pub async fn change_features(&self, features: Features) -> Result<LiveFeatures, RoleError> {
        let _changing = self.inner.changing.lock().await;
        let node = &self.inner.node;
        if node.is_replacing() {
            return Err(RoleError::Busy(
                "a full sync is replacing this node's state; change its flags afterwards".into(),
            ));
        }
        let before = node.features();
        let changing = node.clone();
        let live = tokio::task::spawn_blocking(move || changing.set_features(features))
            .await
            .map_err(|e| RoleError::Busy(format!("the flag change stopped: {e}")))?
            .map_err(|e| RoleError::WrongRole(e.to_string()))?;
        if before == features {
            return Ok(live);
        }
        if features.fencing && !before.fencing {
            self.inner.client.set_epoch(node.epoch().0);
        }
        match self.current() {
            Replication::Master(hub) if features.any() => hub.set_features(features),
            Replication::Master(_) => {
                self.replace(Replication::None);
                node.stop_master_hub();
            }
            Replication::Slave(follower) => follower.set_features(features),
            Replication::None if features.any() && !node.is_slave() => self.start_master(),
            Replication::None => {}
        }
        Ok(live)
    }

    /// Makes this slave master in `epoch`, or the next epoch: the follower stops, the
    /// node begins the epoch durably, and a hub starts. On failure nothing changed, and
    /// the node follows its master again (under failover, the election says whom).
    pub async fn promote(&self, epoch: Option<Epoch>) -> Result<(Epoch, Lsn), RoleError> {
        let _changing = self.inner.changing.lock().await;
        let node = &self.inner.node;
        if !node.fencing() {
            return Err(RoleError::FencingOff);
        }
        if !node.is_slave() {
            return Err(RoleError::WrongRole("this node is master already".into()));
        }
        if let Some(follower) = self.follower() {
            follower.stop();
        }
        self.replace(Replication::None);
        let (promoting, self_url) = (node.clone(), self.inner.self_url.clone());
        let promoted = tokio::task::spawn_blocking(move || promoting.promote(&self_url, epoch))
            .await
            .map_err(|e| RoleError::Busy(format!("promotion stopped: {e}")))?;
        match promoted {
            Ok(at) => {
                self.start_master();
                Ok(at)
            }
            Err(e) => {
                if !node.config().failover() {
                    self.start_slave();
                }
                Err(e)
            }
        }
    }

    /// Makes this node a slave of `master_url`, whatever its role now: a master stops
    /// taking writes at once and steps down; a slave follows the new master instead of
    /// its old one, and its registration cuts the tail that master never had.
    pub async fn follow(&self, master_url: &str) -> Result<(), RoleError> {
        let _changing = self.inner.changing.lock().await;
        let node = &self.inner.node;
        if !node.fencing() {
            return Err(RoleError::FencingOff);
        }
        if master_url.trim_end_matches('/') == self.inner.self_url.trim_end_matches('/') {
            return Err(RoleError::WrongRole(format!("{master_url} is this node itself")));
        }
        if node.is_slave() && node.role().master_url == master_url {
            return Ok(());
        }
        self.stop_running();
        let (demoting, url) = (node.clone(), master_url.to_string());
        tokio::task::spawn_blocking(move || demoting.demote(&url))
            .await
            .map_err(|e| RoleError::Busy(format!("step-down stopped: {e}")))?;
        self.start_slave();
        Ok(())
    }

    /// Stops being master without a known successor: no hub, no follower, no writes.
    pub async fn stand_by(&self) {
        let _changing = self.inner.changing.lock().await;
        self.stop_running();
        let standing_by = self.inner.node.clone();
        let _ = tokio::task::spawn_blocking(move || standing_by.demote("")).await;
    }
}
