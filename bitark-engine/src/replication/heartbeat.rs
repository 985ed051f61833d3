//! Stage 4: heartbeats, both ways.
//!
//! - A slave sends `heartbeat(appliedLsn, durableLsn)` every
//!   `replication.heartbeat-interval` ([`slave_loop`]) and learns from the answer how the
//!   master sees it. A master that does not know it (it restarted) makes it register at
//!   once. A master silent for `replication.dead-after` makes the slave not ready
//!   (`master_unreachable`); reads are still served, and it keeps trying, with jitter.
//! - The master notes when each slave last answered (a registration, a heartbeat, an
//!   acknowledgement) and [`DEAD_DETECTION`] marks a slave silent for `dead-after` DEAD, whatever
//!   else was true of it: nothing is sent to it and it holds nothing back. Once it
//!   answers again, its position decides its state (ALIVE, SLOW to be caught up, or a
//!   full sync); it is never counted alive before it has answered.

use super::link::HubInner;
use super::master::MasterHub;
use super::slave::Follower;
use super::status::SlaveState;
use super::view::refresh_metrics;
use bitark_common::replication::{HeartbeatRequest, HeartbeatResponse};
use bitark_common::Lsn;
use bitark_infra::replication::TransportError;
use rand::Rng;
use std::time::Instant;

/// Why a heartbeat was not taken.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum HeartbeatError {
    /// This master does not follow that slave process (409 `not_registered`): it should
    /// register.
    #[error("this master does not follow slave `{0}` in that session; register first")]
    NotRegistered(String),
    /// The slave says it stands past the end of this master's log: only a registration
    /// may decide what that slave is (409, DIVERGED there).
    #[error("slave `{slave}` reports LSN {applied}, past this master's log end {durable}; register again")]
    Ahead { slave: String, applied: u64, durable: u64 },
}

impl MasterHub {
    /// A heartbeat from a slave: it is alive, and stands at `appliedLsn`.
    pub fn heartbeat(&self, request: &HeartbeatRequest) -> Result<HeartbeatResponse, HeartbeatError> {
        let hub = &self.inner;
        let link = hub
            .link(&request.slave_id)
            .filter(|link| link.lock().slave_session == request.session)
            .ok_or_else(|| HeartbeatError::NotRegistered(request.slave_id.clone()))?;
        let durable = hub.durable_lsn();
        if request.applied_lsn > durable.0 {
            return Err(HeartbeatError::Ahead {
                slave: request.slave_id.clone(),
                applied: request.applied_lsn,
                durable: durable.0,
            });
        }
        let mut s = link.lock();
        let was = s.state();
        s.answered(Lsn(request.applied_lsn), durable, Instant::now());
        if was == SlaveState::Dead {
            tracing::info!(slave = %link.id(), applied = request.applied_lsn, now = s.state().as_str(), "DEAD slave answered again");
        }
        let answer = HeartbeatResponse {
            state: s.state().as_str().to_string(),
            reason: s.last_error.clone(),
            durable_lsn: durable.0,
        };
        drop(s);
        link.wake();
        Ok(answer)
    }
}

/// Marks slaves DEAD once silent for `dead-after`, and keeps their heartbeat age current.
fn mark_silent_slaves_dead(hub: &HubInner) {
    let dead_after = hub.config().dead_after;
    for link in hub.links() {
        let mut s = link.lock();
        if !s.features.heartbeat {
            continue;
        }
        let silent = s.last_seen.elapsed();
        hub.metrics().replication_heartbeat_age.with_label_values(&[link.id()]).set(silent.as_secs_f64());
        if silent >= dead_after && !matches!(s.state(), SlaveState::Dead | SlaveState::Diverged) {
            tracing::warn!(slave = %link.id(), silent_ms = silent.as_millis() as u64, was = s.state().as_str(), "slave silent: DEAD");
            s.set_state(SlaveState::Dead);
            s.last_error = Some(format!("no heartbeat for {} ms (replication.dead-after)", silent.as_millis()));
            s.clear_buffer(hub.send_budget());
            hub.metrics().replication_dead_detections.with_label_values(&[link.id()]).inc();
            drop(s);
            refresh_metrics(hub, &link);
        }
    }
}

/// Every `dead-after`, each DEAD slave is asked where it stands: a master cut off from
/// its slaves learns from the first that answers again whether a newer epoch began
/// meanwhile (the answer carries it), and from one that is master of it now where to
/// follow, rather than only once a slave contacts it.
fn probe_dead_slaves(hub: &MasterHub) {
    let weak = std::sync::Arc::downgrade(&hub.inner);
    hub.inner.runtime().spawn(async move {
        loop {
            let Some(hub) = weak.upgrade() else { return };
            if hub.is_stopped() {
                return;
            }
            let wait = hub.config().dead_after;
            let dead: Vec<String> = hub
                .links()
                .iter()
                .filter_map(|link| {
                    let s = link.lock();
                    (s.state() == SlaveState::Dead).then(|| s.url.clone())
                })
                .collect();
            let client = hub.client().clone();
            drop(hub);
            for url in dead {
                // A former slave that is master of a newer epoch now: follow it.
                if let Ok((status, Some(epoch))) = client.status_and_epoch(&url).await {
                    if status.role == "master" {
                        client.note_master(epoch, &url);
                    }
                }
            }
            tokio::time::sleep(wait).await;
        }
    });
}

/// Stage 4 on the master: slaves silent for `dead-after` are DEAD, and DEAD slaves are
/// probed until they answer.
pub(crate) fn start_dead_detection(hub: &MasterHub) {
    hub.every_tick(mark_silent_slaves_dead);
    probe_dead_slaves(hub);
}

/// Stage 4 on the slave: heartbeats to the master, and the master's silence watched.
pub(crate) fn start_heartbeats(follower: &Follower) {
    tokio::spawn(slave_loop(follower.clone()));
}

/// A slave's heartbeats, while its master uses stage 4 with it.
async fn slave_loop(follower: Follower) {
    loop {
        let interval = follower.config().heartbeat_interval;
        // Jitter, so that slaves started together do not beat together.
        let jitter = rand::thread_rng().gen_range(0.8..1.2);
        if !follower.pause(interval.mul_f64(jitter)).await {
            return;
        }
        if !follower.uses_heartbeats() {
            continue;
        }
        match follower.send_heartbeat().await {
            Ok(answer) => follower.heard_from_master(Some(answer.state), answer.reason),
            Err(TransportError::Refused { status: 409, .. }) => follower.register_now(),
            Err(e) => tracing::debug!(error = %e, "heartbeat not answered"),
        }
    }
}
