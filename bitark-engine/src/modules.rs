//! The plugin modules: every replication capability that a flag turns on is a
//! [`Module`] in [`MODULES`], started by the adapter only when the node's role and flags
//! ask for it, the way a Spring auto-configuration is conditional on a property. A
//! fixed list and a trait: nothing is loaded dynamically.
//!
//! The core of a role (a master's hub with its senders, a slave's registration loop)
//! is not a module: it runs whenever replication runs. A module adds a background task
//! to that core and lives in the file of its stage.

use crate::config::Role;
use crate::replication::{full_sync, gc, heartbeat, slave, Follower, MasterHub};
use bitark_common::replication::Features;

/// What a module attaches to: the replication core of this node's role.
pub enum Host<'a> {
    Master(&'a MasterHub),
    Slave(&'a Follower),
}

impl Host<'_> {
    fn role(&self) -> Role {
        match self {
            Host::Master(_) => Role::Master,
            Host::Slave(_) => Role::Slave,
        }
    }
}

/// One capability that a flag turns on.
pub trait Module: Sync {
    /// Its name in logs and in `/actuator/replication`.
    fn name(&self) -> &'static str;
    /// The role it runs on.
    fn role(&self) -> Role;
    /// Whether the node's own flags turn it on. The flags a link negotiates with each
    /// peer can be fewer; a module checks those per link.
    fn enabled(&self, features: &Features) -> bool;
    /// Starts its background work, which ends when the host is dropped (or runs for
    /// the life of the process).
    fn start(&self, host: &Host<'_>);
}

/// What a [`FlagModule`] starts, on the role it runs on.
pub enum Start {
    Master(fn(&MasterHub)),
    Slave(fn(&Follower)),
}

/// A module that one flag turns on and that only starts background work: what every
/// replication stage so far needs. The stage's file exports the plain function that
/// starts the work; the wiring to a name, a role and a flag is here.
pub struct FlagModule {
    pub name: &'static str,
    pub enabled: fn(&Features) -> bool,
    pub start: Start,
}

impl FlagModule {
    pub const fn new(name: &'static str, enabled: fn(&Features) -> bool, start: Start) -> FlagModule {
        FlagModule { name, enabled, start }
    }
}

impl Module for FlagModule {
    fn name(&self) -> &'static str {
        self.name
    }

    fn role(&self) -> Role {
        match self.start {
            Start::Master(_) => Role::Master,
            Start::Slave(_) => Role::Slave,
        }
    }

    fn enabled(&self, features: &Features) -> bool {
        (self.enabled)(features)
    }

    fn start(&self, host: &Host<'_>) {
        match (&self.start, host) {
            (Start::Master(start), Host::Master(hub)) => start(hub),
            (Start::Slave(start), Host::Slave(follower)) => start(follower),
            _ => {}
        }
    }
}

/// Every module, in rollout order.
pub static MODULES: &[&dyn Module] = &[
    // Stage 3: the slave keeps its position in `slave-progress.bin`, rewritten at most
    // every `replication.progress-flush`.
    &FlagModule::new("slave-progress-file", |features| features.reliable, Start::Slave(slave::start_progress_file)),
    // Stage 4 on the slave: heartbeats to the master, and the master's silence watched.
    &FlagModule::new("heartbeats", |features| features.heartbeat, Start::Slave(heartbeat::start_heartbeats)),
    // Stage 4 on the master: slaves silent for `dead-after` are DEAD.
    &FlagModule::new("dead-detection", |features| features.heartbeat, Start::Master(heartbeat::start_dead_detection)),
    // Stage 5 on the master: transfer leases expire, finished transfers end.
    &FlagModule::new(
        "full-sync-leases",
        |features| features.full_sync,
        Start::Master(|hub| hub.every_tick(full_sync::tick)),
    ),
    // Stage 6 on the master: the WAL floor follows the slaves that hold it.
    &FlagModule::new("cluster-gc", |features| features.cluster_gc, Start::Master(|hub| hub.every_tick(gc::evaluate))),
];

/// Starts every module of `host`'s role, and answers the names of those `features` turn
/// on. Each one checks the flags in force (the host's, or each link's) at every tick, so
/// flags changed while the node runs take effect without a restart; a module whose flag
/// is off does nothing.
pub fn start(host: &Host<'_>, features: &Features) -> Vec<&'static str> {
    let role = host.role();
    let mut enabled = Vec::new();
    for module in MODULES.iter().filter(|m| m.role() == role) {
        module.start(host);
        if module.enabled(features) {
            enabled.push(module.name());
        }
    }
    enabled
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted(role: Role, stage: f64) -> Vec<&'static str> {
        let features = Features::up_to_stage(stage).unwrap();
        MODULES.iter().filter(|m| m.role() == role && m.enabled(&features)).map(|m| m.name()).collect()
    }

    #[test]
    fn each_stage_turns_on_its_own_modules_and_no_others() {
        assert!(wanted(Role::Master, 3.0).is_empty());
        assert_eq!(wanted(Role::Slave, 2.0), Vec::<&str>::new());
        assert_eq!(wanted(Role::Slave, 3.0), ["slave-progress-file"]);
        assert_eq!(wanted(Role::Slave, 6.0), ["slave-progress-file", "heartbeats"]);
        assert_eq!(wanted(Role::Master, 4.0), ["dead-detection"]);
        assert_eq!(wanted(Role::Master, 5.0), ["dead-detection", "full-sync-leases"]);
        assert_eq!(wanted(Role::Master, 6.0), ["dead-detection", "full-sync-leases", "cluster-gc"]);
    }

    #[test]
    fn module_names_are_unique() {
        let mut names: Vec<_> = MODULES.iter().map(|m| m.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), MODULES.len());
    }
}
