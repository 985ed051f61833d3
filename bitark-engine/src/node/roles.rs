//! Roles, epochs and replication flags: what the node is and may do, changed by
//! promotion, demotion, fencing and live reconfiguration.

use super::{LiveFeatures, Node, RoleState};
use crate::config::{AckMode, EngineConfig, Role};
use crate::error::FeaturesError;
use crate::replication::master::HubParts;
use crate::replication::MasterHub;
use bitark_common::replication::Features;
use bitark_common::{Epoch, Lsn};
use bitark_infra::epoch::{read_epoch_state, write_epoch_state, EpochState};
use bitark_infra::replication::ReplicationClient;
use bitark_infra::StorageError;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::SystemTime;

impl Node {
    /// True when this node follows a master.
    pub fn is_slave(&self) -> bool {
        self.role().role == Role::Slave
    }

    /// The node's role now, and the master it follows.
    pub fn role(&self) -> RoleState {
        self.inner.role.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The master this node follows (a slave), or the one a newer epoch named (a
    /// fenced master); empty when none is known.
    pub fn master_url(&self) -> String {
        let role = self.role();
        if role.role == Role::Slave {
            return role.master_url;
        }
        self.epochs().seen_master_url
    }

    pub(crate) fn set_role(&self, role: RoleState) {
        let mut current = self.inner.role.write().unwrap_or_else(PoisonError::into_inner);
        self.inner.read_role.store(read_role(&role, self.inner.config.load().failover()), Ordering::Release);
        *current = role;
    }

    /// The epoch history and what is known of newer epochs.
    pub fn epochs(&self) -> EpochState {
        self.inner.state.epochs.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Whether this node keeps and checks epochs (`replication.features.fencing`).
    pub fn fencing(&self) -> bool {
        self.features().fencing
    }

    /// The replication flags in force now.
    pub fn features(&self) -> Features {
        self.live_features().features
    }

    /// The flags in force, whether they are the configuration's, and when they changed.
    pub fn live_features(&self) -> LiveFeatures {
        *self.inner.features.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether [`Node::set_features`] would take `features` with `ack` as
    /// `replication.ack`; changes nothing.
    pub fn check_features(&self, features: Features, ack: AckMode) -> Result<(), FeaturesError> {
        if let Some(&(flag, missing)) = features.rollout_violations().first() {
            return Err(FeaturesError::OutOfOrder { flag, missing, order: Features::NAMES.join(", ") });
        }
        if features.failover != self.features().failover {
            return Err(FeaturesError::Failover);
        }
        if ack != AckMode::Async && !features.ack_modes {
            return Err(FeaturesError::AckNeedsAckModes(ack.as_str()));
        }
        if self.is_slave() && !features.notify {
            return Err(FeaturesError::SlaveNeedsNotify);
        }
        Ok(())
    }

    /// Takes the reloadable keys of `new` ([`EngineConfig::RELOADABLE`]) from now on;
    /// every other key stays as the node started. The hub or follower, the snapshotter,
    /// the memory guard and the write path read the new values where they use them. The
    /// flags in force change only through [`Node::set_features`]; the configured flags
    /// stored here decide whether those in force are an override. Answers the
    /// configuration now in force.
    pub fn reconfigure(&self, new: &EngineConfig) -> Arc<EngineConfig> {
        let next = Arc::new(self.inner.config.load().with_reloaded(new));
        self.inner.memory.set_limit(next.limits.max_memory.as_u64());
        self.inner.config.store(next.clone());
        if let Some(hub) = self.hub() {
            hub.wake_senders();
        }
        let mut live = self.inner.features.write().unwrap_or_else(PoisonError::into_inner);
        live.overridden = live.features != next.replication.effective_features();
        next
    }

    /// Changes the replication flags of the running node (until its next restart). The
    /// caller restarts the replication side, whose links renegotiate. Refuses a set out
    /// of rollout order, a change of `failover` (it needs a restart), and an ack mode
    /// the new set cannot serve. Under fencing newly on, writes `epoch.bin` first.
    pub fn set_features(&self, features: Features) -> Result<LiveFeatures, FeaturesError> {
        let config = self.inner.config.load();
        self.check_features(features, config.replication.ack)?;
        let current = self.features();
        if features.fencing && !current.fencing {
            let data_dir = &config.node.data_dir;
            if read_epoch_state(data_dir)?.is_none() {
                let state = self.epochs();
                let state = EpochState {
                    master_id: if self.is_slave() { String::new() } else { config.node.id.clone() },
                    ..state
                };
                write_epoch_state(data_dir, &state)?;
                *self.inner.state.epochs.lock().unwrap_or_else(PoisonError::into_inner) = state;
            }
        }
        let live = LiveFeatures {
            features,
            overridden: features != config.replication.effective_features(),
            changed_at: Some(SystemTime::now()),
        };
        *self.inner.features.write().unwrap_or_else(PoisonError::into_inner) = live;
        for (name, on) in Features::NAMES.iter().zip(features.flags()) {
            self.inner.state.metrics.replication_feature.with_label_values(&[name]).set(on as i64);
        }
        tracing::warn!(features = ?features.enabled(), overridden = live.overridden, "replication flags changed at runtime");
        Ok(live)
    }

    /// Under fencing: the epoch a record at `lsn` must carry, as this node's history
    /// says.
    pub(super) fn expected_epoch(&self, lsn: Lsn) -> Option<Epoch> {
        if !self.fencing() {
            return None;
        }
        self.inner.state.epochs.lock().unwrap_or_else(PoisonError::into_inner).history.epoch_at(lsn)
    }

    /// Under failover: this node's own writes are taken only before `until` (its
    /// leader lease); `None` lifts the bound.
    pub fn set_lease_deadline(&self, until: Option<std::time::Instant>) {
        self.inner.wal.set_lease_deadline(until);
    }

    /// Whether this node's own writes are refused for want of a renewed leader lease.
    pub fn lease_lapsed(&self) -> bool {
        self.inner.wal.lease_lapsed()
    }

    /// Whether writes of this node's own are refused because a newer epoch exists.
    pub fn is_fenced(&self) -> bool {
        self.inner.wal.is_fenced()
    }

    /// Replaces the epoch state, durably first.
    pub(crate) fn store_epochs(&self, state: EpochState) -> Result<(), StorageError> {
        let mut current = self.inner.state.epochs.lock().unwrap_or_else(PoisonError::into_inner);
        if *current == state {
            return Ok(());
        }
        write_epoch_state(&self.inner.config.load().node.data_dir, &state)?;
        self.inner.state.metrics.replication_epoch.set(state.highest().0 as i64);
        *current = state;
        Ok(())
    }

    /// Starts the master side of replication (when this node is a master with
    /// replication on) on the current tokio runtime: every durable batch is handed to
    /// the hub from now on.
    pub fn start_master_hub(&self, client: ReplicationClient) -> Option<MasterHub> {
        let config = self.inner.config.load();
        if self.is_slave() || !self.features().any() {
            return None;
        }
        if self.fencing() {
            client.set_epoch(self.epoch().0);
        }
        let hub = MasterHub::new(HubParts {
            node_id: config.node.id.clone(),
            config: self.inner.config.clone(),
            features: self.features(),
            dir: config.node.dir(),
            client,
            metrics: self.inner.state.metrics.clone(),
            durable: self.inner.state.durable.subscribe(),
            wal: self.inner.wal.clone(),
            state: self.inner.state.clone(),
            runtime: tokio::runtime::Handle::current(),
        });
        *self.inner.hub.write().unwrap_or_else(PoisonError::into_inner) = Some(hub.clone());
        self.inner.state.set_commit_listener(Some(Arc::new(hub.clone())));
        hub.contact_static_slaves();
        Some(hub)
    }

    /// The running master hub, if any.
    pub(crate) fn hub(&self) -> Option<MasterHub> {
        self.inner.hub.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Stops the master hub, if one runs: its links close and their senders end.
    pub fn stop_master_hub(&self) {
        self.inner.state.set_commit_listener(None);
        let hub = self.inner.hub.write().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(hub) = hub {
            hub.stop();
        }
    }

    /// The epoch this node writes in (a master) or follows (a slave): the newest of
    /// its history.
    pub fn epoch(&self) -> Epoch {
        self.inner.state.epochs.lock().unwrap_or_else(PoisonError::into_inner).history.current()
    }
}

pub(super) const READ_SLAVE: u8 = 0;

pub(super) const READ_MASTER: u8 = 1;

pub(super) const READ_LEASED_MASTER: u8 = 2;

/// `role` as the read path keeps it.
pub(crate) fn read_role(role: &RoleState, failover: bool) -> u8 {
    match (role.role, failover) {
        (Role::Slave, _) => READ_SLAVE,
        (Role::Master, false) => READ_MASTER,
        (Role::Master, true) => READ_LEASED_MASTER,
    }
}
