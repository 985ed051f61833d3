//! What the coordination keeps in etcd and shows: a member's record, the leader's, the
//! acknowledged floor, and the coordination's status in `/actuator/replication`. Plain
//! data, shared by the election loop and the replication status.

use serde::{Deserialize, Serialize};
use std::time::Instant;

/// What a node publishes about itself under `<prefix>/members/<id>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    pub node_id: String,
    pub url: String,
    /// The epoch of the newest record the node holds.
    pub epoch: u64,
    pub durable_lsn: u64,
    /// False while the node cannot be master (a full sync is replacing its state).
    pub eligible: bool,
}

/// The master, under `<prefix>/leader`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Leader {
    pub node_id: String,
    pub url: String,
    pub epoch: u64,
}

/// The newest write a master answered under `semi` or `all`, under `<prefix>/acked`
/// (no lease: it outlives the master). A node without it may not be elected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AckedFloor {
    pub epoch: u64,
    pub lsn: u64,
}

impl AckedFloor {
    /// Whether a member at `(epoch, durable_lsn)` holds the write: it is in the same
    /// epoch and at least that far, or in a later epoch (whose master held it).
    pub fn held_by(&self, member: &Member) -> bool {
        member.epoch > self.epoch || (member.epoch == self.epoch && member.durable_lsn >= self.lsn)
    }
}

/// What `/actuator/replication` shows of the coordination.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CoordinationStatus {
    /// The master etcd names, if any.
    pub leader: Option<Leader>,
    /// True while this node holds the leader lease and may take writes under it.
    pub leading: bool,
    /// True while the last etcd call answered.
    pub etcd_reachable: bool,
    /// The TTL etcd granted this node's lease, in seconds.
    pub lease_ttl_seconds: u64,
    /// Milliseconds since this node last renewed its lease.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_renewal_ms_ago: Option<u64>,
    /// The last etcd error, while etcd does not answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(skip)]
    pub(super) renewed_at: Option<Instant>,
}

impl CoordinationStatus {
    /// As of now (the renewal age filled in).
    pub fn now(&self) -> CoordinationStatus {
        let mut out = self.clone();
        out.last_renewal_ms_ago = self.renewed_at.map(|t| t.elapsed().as_millis() as u64);
        out
    }
}
