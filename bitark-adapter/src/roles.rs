//! Which replication side a node runs, and how it changes while the process runs.
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

use crate::app::{AppState, Replication};
use crate::AppConfig;
use bitark_common::replication::Features;
use bitark_common::{Epoch, Lsn};
use bitark_engine::coordination::{Coordinator, RoleSwitch};
use bitark_engine::modules::{self, Host};
use bitark_engine::node::LiveFeatures;
use bitark_engine::replication::Follower;
use bitark_engine::{Node, RoleError};
use bitark_infra::replication::ReplicationClient;
use bitark_infra::Metrics;
use std::net::SocketAddr;

/// Starts the replication side the node's role asks for (neither when replication
/// is off), and under fencing the watch for newer epochs.
pub fn start(state: &AppState, node: &Node, config: &AppConfig, local_addr: SocketAddr, metrics: &Metrics) {
    let replication = &config.replication;
    let features = replication.effective_features();
    for (name, on) in Features::NAMES.iter().zip(features.flags()) {
        metrics.replication_feature.with_label_values(&[name]).set(on as i64);
    }
    let client =
        ReplicationClient::new(replication.request_timeout, config.security.cluster_token.expose().map(str::to_string));
    let self_url =
        if replication.self_url.is_empty() { format!("http://{local_addr}") } else { replication.self_url.clone() };
    state.set_wiring(client.clone(), self_url);
    // Always: fencing may be turned on while the node runs.
    tokio::spawn(watch_epochs(state.clone(), client));
    if !features.any() {
        return;
    }
    if features.failover {
        start_coordination(state, node);
    } else if node.is_slave() {
        start_slave(state, node);
    } else {
        start_master(state, node);
    }
}

/// Under failover: the role comes from the election in etcd; until the coordination
/// names a master, the node follows nobody and takes no writes.
fn start_coordination(state: &AppState, node: &Node) {
    let (_, self_url) = state.wiring();
    match Coordinator::new(node.clone(), self_url) {
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
        promote_to(&self.0, Some(epoch)).await.map(|_| ())
    }

    async fn follow(&self, url: String) -> Result<(), RoleError> {
        follow(&self.0, &url).await
    }

    async fn stand_by(&self) {
        let state = &self.0;
        let _changing = state.lock_role_change().await;
        let Ok(node) = state.node().cloned() else { return };
        match state.set_replication(Replication::None) {
            Replication::Master(_) => node.stop_master_hub(),
            Replication::Slave(follower) => follower.stop(),
            Replication::None => {}
        }
        let standing_by = node.clone();
        let _ = tokio::task::spawn_blocking(move || standing_by.demote("")).await;
    }
}

fn start_slave(state: &AppState, node: &Node) {
    let (client, self_url) = state.wiring();
    let features = node.features();
    tracing::info!(master = %node.role().master_url, %self_url, features = ?features.enabled(), "following the master");
    let follower = Follower::start(node.clone(), self_url, client, state.metrics().clone());
    let modules = modules::start(&Host::Slave(&follower), &features);
    tracing::info!(?modules, "replication modules started");
    state.set_replication(Replication::Slave(follower));
}

fn start_master(state: &AppState, node: &Node) {
    let (client, _) = state.wiring();
    let features = node.features();
    if let Some(hub) = node.start_master_hub(client) {
        let slaves = node.config().replication.slaves.len();
        tracing::info!(features = ?features.enabled(), static_slaves = slaves, epoch = %node.epoch(), "replicating to slaves");
        let modules = modules::start(&Host::Master(&hub), &features);
        tracing::info!(?modules, "replication modules started");
        state.set_replication(Replication::Master(hub));
    }
}

/// Changes the replication flags of the running node (`PUT /admin/replication/features`)
/// and restarts its replication side under them: a master's slaves are asked to
/// register again, a slave registers again as a new session, and each link
/// renegotiates the flags both sides have. Lasts until the next restart.
pub async fn change_features(state: &AppState, features: Features) -> Result<LiveFeatures, RoleError> {
    let _changing = state.lock_role_change().await;
    let node = state.node().map_err(|e| RoleError::Busy(e.to_string()))?.clone();
    if node.is_replacing() {
        return Err(RoleError::Busy("a full sync is replacing this node's state; change its flags afterwards".into()));
    }
    let before = node.features();
    let config = state.config();
    let security = &config.security;
    if features.any() && security.cluster_token.expose().is_none() && !security.allow_insecure_cluster {
        return Err(RoleError::WrongRole(
            "replication needs security.cluster-token (set in the configuration, with a restart), so that no one \
             else can register as a slave or send log records"
                .into(),
        ));
    }
    let changing = node.clone();
    let live = tokio::task::spawn_blocking(move || changing.set_features(features))
        .await
        .map_err(|e| RoleError::Busy(format!("the flag change stopped: {e}")))?
        .map_err(|e| RoleError::WrongRole(e.to_string()))?;
    if before == features {
        return Ok(live);
    }
    // In place: the hub or follower keeps its session, so nothing in flight is refused;
    // each link renegotiates at its next registration, asked for at once.
    if features.fencing && !before.fencing {
        state.wiring().0.set_epoch(node.epoch().0);
    }
    match state.current_replication() {
        Replication::Master(hub) if features.any() => hub.set_features(features),
        Replication::Master(_) => {
            state.set_replication(Replication::None);
            node.stop_master_hub();
        }
        Replication::Slave(follower) => follower.set_features(features),
        Replication::None if features.any() && !node.is_slave() => start_master(state, &node),
        Replication::None => {}
    }
    Ok(live)
}

/// Makes this slave master in a new epoch (`POST /admin/promote`).
pub async fn promote(state: &AppState) -> Result<(Epoch, Lsn), RoleError> {
    refuse_under_failover(state)?;
    promote_to(state, None).await
}

/// Under failover only the election changes roles: a hand-made master would hold no
/// lease.
fn refuse_under_failover(state: &AppState) -> Result<(), RoleError> {
    let node = state.node().map_err(|e| RoleError::Busy(e.to_string()))?;
    if node.fencing() && !state.config().replication.effective_features().fencing {
        return Err(RoleError::WrongRole(
            "fencing is on only until the next restart (PUT /admin/replication/features): a role changed now would \
             not survive one; turn fencing on in the configuration first"
                .into(),
        ));
    }
    if state.config().replication.effective_features().failover {
        return Err(RoleError::WrongRole(
            "replication.features.failover is on: etcd elects the master; stop the master (or turn failover off) \
             instead"
                .into(),
        ));
    }
    Ok(())
}

/// Makes this slave master in `epoch`, or the next epoch.
async fn promote_to(state: &AppState, epoch: Option<Epoch>) -> Result<(Epoch, Lsn), RoleError> {
    let _changing = state.lock_role_change().await;
    let node = state.node().map_err(|e| RoleError::Busy(e.to_string()))?.clone();
    if !node.fencing() {
        return Err(RoleError::FencingOff);
    }
    if !node.is_slave() {
        return Err(RoleError::WrongRole("this node is master already".into()));
    }
    if let Some(follower) = state.follower() {
        follower.stop();
    }
    state.set_replication(Replication::None);
    let (_, self_url) = state.wiring();
    let promoting = node.clone();
    let promoted = tokio::task::spawn_blocking(move || promoting.promote(&self_url, epoch))
        .await
        .map_err(|e| RoleError::Busy(format!("promotion stopped: {e}")))?;
    match promoted {
        Ok(at) => {
            start_master(state, &node);
            Ok(at)
        }
        Err(e) => {
            // Nothing changed: follow the master again (under failover, the election
            // says whom).
            if !node.config().failover() {
                start_slave(state, &node);
            }
            Err(e)
        }
    }
}

/// Makes this node a slave of `master_url` (`POST /admin/demote`, or a newer epoch
/// seen): a master stops taking writes at once and steps down; a slave follows the new
/// master instead of its old one.
pub async fn demote(state: &AppState, master_url: &str) -> Result<(), RoleError> {
    refuse_under_failover(state)?;
    follow(state, master_url).await
}

/// Makes this node a slave of `master_url`, whatever its role now.
async fn follow(state: &AppState, master_url: &str) -> Result<(), RoleError> {
    let _changing = state.lock_role_change().await;
    let node = state.node().map_err(|e| RoleError::Busy(e.to_string()))?.clone();
    if !node.fencing() {
        return Err(RoleError::FencingOff);
    }
    let (_, self_url) = state.wiring();
    if master_url.trim_end_matches('/') == self_url.trim_end_matches('/') {
        return Err(RoleError::WrongRole(format!("{master_url} is this node itself")));
    }
    if node.is_slave() && node.role().master_url == master_url {
        return Ok(());
    }
    match state.set_replication(Replication::None) {
        Replication::Master(_) => node.stop_master_hub(),
        Replication::Slave(follower) => follower.stop(),
        Replication::None => {}
    }
    let demoting = node.clone();
    let url = master_url.to_string();
    tokio::task::spawn_blocking(move || demoting.demote(&url))
        .await
        .map_err(|e| RoleError::Busy(format!("step-down stopped: {e}")))?;
    start_slave(state, &node);
    Ok(())
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
            if let Err(e) = follow(&state, &target).await {
                tracing::error!(error = %e, master = %target, "cannot step down to the master of the newer epoch");
            }
        }
    }
}
