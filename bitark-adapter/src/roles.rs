//! When a node's replication side starts and changes while the process runs; the
//! engine's [`ReplicationSide`] sequences each change.
//!
//! At start-up the node's role (from config, or from `epoch.bin` after a promotion or
//! step-down) decides: a master's hub, or a slave's follower, each with the plugin
//! modules its flags turn on. Under `fencing` (stage 7) the role can change without a
//! restart:
//! - [`promote`] (`POST /admin/promote`): the follower stops, the node begins a new
//!   epoch durably, and a hub starts;
//! - [`demote`] (`POST /admin/demote`, or on its own when a peer shows a newer epoch):
//!   a master's writes stop at once, its hub stops, and a follower of the new master
//!   starts, whose registration cuts the tail that master never had.

use crate::app::AppState;
use crate::AppConfig;
use bitark_common::replication::Features;
use bitark_common::{Epoch, Lsn};
use bitark_engine::coordination::{Coordinator, RoleSwitch};
use bitark_engine::node::LiveFeatures;
use bitark_engine::replication_side::ReplicationSide;
use bitark_engine::sharding::member;
use bitark_engine::{Node, RoleError};
use bitark_infra::replication::ReplicationClient;
use bitark_infra::Metrics;
use std::net::SocketAddr;

/// Starts the replication side the node's role asks for (neither when replication
/// is off), and under fencing the watch for newer epochs.
pub async fn start(state: &AppState, node: &Node, config: &AppConfig, local_addr: SocketAddr, metrics: &Metrics) {
    let replication = &config.engine.replication;
    let features = replication.effective_features();
    for (name, on) in Features::NAMES.iter().zip(features.flags()) {
        metrics.replication_feature.with_label_values(&[name]).set(on as i64);
    }
    let client =
        ReplicationClient::new(replication.request_timeout, config.security.cluster_token.expose().map(str::to_string));
    let self_url =
        if replication.self_url.is_empty() { format!("http://{local_addr}") } else { replication.self_url.clone() };
    let side = ReplicationSide::new(node.clone(), client.clone(), self_url, metrics.clone());
    state.set_replication_side(side.clone());
    // Always: fencing may be turned on while the node runs.
    tokio::spawn(watch_epochs(state.clone(), client));
    if let Some(group) = config.engine.cluster.group_id() {
        // In a static group nothing else names the master in etcd.
        let announce = !features.failover;
        if let Err(e) = member::run(node.clone(), group, side.self_url().to_string(), announce).await {
            tracing::error!(error = %e, "cannot reach etcd: this node serves no user until it can read the shard map");
        }
    }
    if !features.any() {
        return;
    }
    if features.failover {
        start_coordination(state, node, &side);
    } else {
        side.start_static().await;
    }
}

/// Under failover: the role comes from the election in etcd; until the coordination
/// names a master, the node follows nobody and takes no writes.
fn start_coordination(state: &AppState, node: &Node, side: &ReplicationSide) {
    match Coordinator::new(node.clone(), side.self_url().to_string()) {
        Ok(coordinator) => {
            state.set_coordination(coordinator.status());
            tokio::spawn(coordinator.run(Elected(state.clone())));
        }
        Err(e) => tracing::error!(error = %e, "cannot reach etcd; this node stays a slave of nobody"),
    }
}

/// The role changes the coordination asks for.
struct Elected(AppState);

impl RoleSwitch for Elected {
    async fn promote(&self, epoch: Epoch) -> Result<(), RoleError> {
        side(&self.0)?.promote(Some(epoch)).await.map(|_| ())
    }

    async fn follow(&self, url: String) -> Result<(), RoleError> {
        side(&self.0)?.follow(&url).await
    }

    async fn stand_by(&self) {
        if let Ok(side) = side(&self.0) {
            side.stand_by().await;
        }
    }
}

/// The replication side, while the node serves.
fn side(state: &AppState) -> Result<ReplicationSide, RoleError> {
    state.node().map_err(|e| RoleError::Busy(e.to_string()))?;
    state.replication_side().cloned().ok_or_else(|| RoleError::Busy("replication is not wired yet".into()))
}

/// Changes the replication flags of the running node (`PUT /admin/replication/features`)
/// and restarts its replication side under them: a master's slaves are asked to
/// register again, a slave registers again as a new session, and each link
/// renegotiates the flags both sides have. Lasts until the next restart.
pub async fn change_features(state: &AppState, features: Features) -> Result<LiveFeatures, RoleError> {
    let side = side(state)?;
    let config = state.config();
    let security = &config.security;
    if features.any() && security.cluster_token.expose().is_none() && !security.allow_insecure_cluster {
        return Err(RoleError::WrongRole(
            "replication needs security.cluster-token (set in the configuration, with a restart), so that no one \
             else can register as a slave or send log records"
                .into(),
        ));
    }
    side.change_features(features).await
}

/// Makes this slave master in a new epoch (`POST /admin/promote`).
pub async fn promote(state: &AppState) -> Result<(Epoch, Lsn), RoleError> {
    refuse_under_failover(state)?;
    side(state)?.promote(None).await
}

/// Under failover only the election changes roles: a hand-made master would hold no
/// lease.
fn refuse_under_failover(state: &AppState) -> Result<(), RoleError> {
    let node = state.node().map_err(|e| RoleError::Busy(e.to_string()))?;
    if node.fencing() && !state.config().engine.replication.effective_features().fencing {
        return Err(RoleError::WrongRole(
            "fencing is on only until the next restart (PUT /admin/replication/features): a role changed now would \
             not survive one; turn fencing on in the configuration first"
                .into(),
        ));
    }
    if state.config().engine.replication.effective_features().failover {
        return Err(RoleError::WrongRole(
            "replication.features.failover is on: etcd elects the master; stop the master (or turn failover off) \
             instead"
                .into(),
        ));
    }
    Ok(())
}

/// Makes this node a slave of `master_url` (`POST /admin/demote`, or a newer epoch
/// seen): a master stops taking writes at once and steps down; a slave follows the new
/// master instead of its old one.
pub async fn demote(state: &AppState, master_url: &str) -> Result<(), RoleError> {
    refuse_under_failover(state)?;
    side(state)?.follow(master_url).await
}

/// Under fencing: when a peer answers with a newer epoch, a master stops taking writes
/// at once and, once it knows the new master, steps down to follow it.
async fn watch_epochs(state: AppState, client: ReplicationClient) {
    let mut seen = client.seen_epochs();
    while seen.changed().await.is_ok() {
        let newer = seen.borrow_and_update().clone();
        let Ok(node) = state.node().cloned() else { continue };
        let url = newer.master_url.clone();
        let observing = node.clone();
        let step_down =
            tokio::task::spawn_blocking(move || observing.observe_epoch(Epoch(newer.epoch), url.as_deref()))
                .await
                .unwrap_or(false);
        let target = node.epochs().seen_master_url;
        if (step_down || (node.is_fenced() && !node.is_slave())) && !target.is_empty() {
            let stepped = match side(&state) {
                Ok(side) => side.follow(&target).await,
                Err(e) => Err(e),
            };
            if let Err(e) = stepped {
                tracing::error!(error = %e, master = %target, "cannot step down to the master of the newer epoch");
            }
        }
    }
}
