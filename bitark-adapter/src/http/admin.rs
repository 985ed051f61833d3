//! `/admin/*`: operator endpoints, behind `security.admin-token` when one is set.

use super::auth::{self, Guard};
use super::error::{snapshot_error, ApiError, ErrorBody};
use super::extract::ApiJson;
use super::routes::RouteTable;
use crate::app::AppState;
use crate::refresh::{self, RefreshReport};
use crate::roles;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::middleware;
use axum::routing::{get, post};
use axum::Json;
use bitark_common::replication::Features;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub(crate) fn router(state: AppState) -> RouteTable {
    RouteTable::new()
        .route("/admin/snapshot", post(snapshot))
        .route("/admin/digest", get(digest))
        .route("/admin/promote", post(promote))
        .route("/admin/demote", post(demote))
        .route("/admin/replication/features", axum::routing::put(change_features))
        .route("/admin/shard/freeze", post(super::moves::freeze))
        .route("/admin/shard/thaw", post(super::moves::thaw))
        .route("/admin/shard/drop", post(super::moves::drop_range))
        .route("/admin/shard/incoming", post(super::moves::start_incoming).get(super::moves::incoming))
        .route("/admin/shard/incoming/drain", post(super::moves::drain_incoming))
        .route("/admin/shard/incoming/stop", post(super::moves::stop_incoming))
        .route("/actuator/refresh", post(refresh))
        .route("/admin/backup", post(super::backup::begin_backup))
        .route("/admin/backup/{id}/snapshot", get(super::backup::backup_snapshot))
        .route("/admin/backup/{id}/wal", get(super::backup::backup_wal))
        .route("/admin/backup/{id}", axum::routing::delete(super::backup::end_backup))
        .layered(|routes| routes.route_layer(middleware::from_fn_with_state((state, Guard::Admin), auth::require)))
}

/// A snapshot that was written.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotTaken {
    /// Every record at or below this LSN is in the snapshot.
    pub lsn: u64,
    pub users: u64,
    pub marks: u64,
    pub bytes: u64,
    pub file: String,
}

/// Takes a snapshot now (writes go on meanwhile); recovery starts from it from now on.
#[utoipa::path(post, path = "/admin/snapshot", tag = "admin", security((), ("bearer" = [])),
    responses(
        (status = 200, body = SnapshotTaken),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 500, description = "`snapshot_failed`: writing it failed; the message says what", body = ErrorBody),
        (status = 503, description = "Starting, or a snapshot request is already queued", body = ErrorBody),
        (status = 507, description = "`insufficient_storage`: no space for the snapshot", body = ErrorBody),
    ))]
pub async fn snapshot(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<SnapshotTaken>, ApiError> {
    let taken = state.node()?.snapshot_now().await;
    let info = taken.map_err(|e| snapshot_error(e, auth::is_authenticated(&state, Guard::Admin, &headers)))?;
    Ok(Json(SnapshotTaken {
        lsn: info.lsn.0,
        users: info.users,
        marks: info.marks,
        bytes: info.size,
        file: info.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
    }))
}

/// Order-independent digest of every (user, message) pair, to compare two nodes.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Digest {
    pub applied_lsn: u64,
    pub users: u64,
    pub marks: u64,
    /// 32 hex characters; equal on two nodes holding the same pairs.
    pub digest: String,
}

/// Digest of the whole read state (like Redis `DEBUG DIGEST`).
#[utoipa::path(get, path = "/admin/digest", tag = "admin", security((), ("bearer" = [])),
    responses((status = 200, body = Digest), (status = 401, description = "Missing or wrong token", body = ErrorBody)))]
pub async fn digest(State(state): State<AppState>) -> Result<Json<Digest>, ApiError> {
    let node = state.node()?.clone();
    // Digest walks every mark: keep it off the async workers.
    let (applied, digest) = tokio::task::spawn_blocking(move || {
        // Applied LSN first: the digest covers at least that much.
        let applied = node.applied_lsn();
        (applied, node.digest())
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(Digest { applied_lsn: applied.0, users: digest.users, marks: digest.marks, digest: digest.digest }))
}

/// The node's role after a promotion or step-down.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoleChanged {
    /// `master` or `slave`.
    pub role: String,
    /// The epoch the node writes in (master) or follows (slave, until its new master's
    /// history arrives).
    pub epoch: u64,
    /// After a promotion: the first LSN of the new epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_lsn: Option<u64>,
    /// After a step-down: the master followed now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub master_url: Option<String>,
}

/// Which master to follow.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DemoteRequest {
    /// Base URL of the new master, e.g. `http://10.0.0.2:8080`.
    #[schema(pattern = "^https?://[^ ]+$", max_length = 2048, min_length = 9)]
    pub master_url: String,
}

/// Makes this slave master in a new epoch (stage 7, `fencing`). The epoch is recorded
/// durably before the first write of it; from then on any node of a lower epoch that
/// contacts this one is refused and stops taking writes. The other slaves follow it once
/// told to (`POST /admin/demote` on each, with this node's URL).
#[utoipa::path(post, path = "/admin/promote", tag = "admin", security((), ("bearer" = [])),
    responses(
        (status = 200, description = "Master of a new epoch", body = RoleChanged),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 409, description = "`wrong_role`: master already, or failover is on (etcd elects the master); `fencing_off`: `replication.features.fencing` is off", body = ErrorBody),
        (status = 500, description = "`role_change_failed`: the epoch could not be recorded; the node is still a slave", body = ErrorBody),
        (status = 503, description = "Starting, or a full sync is replacing the state", body = ErrorBody),
    ))]
pub async fn promote(State(state): State<AppState>) -> Result<Json<RoleChanged>, ApiError> {
    let (epoch, start) = roles::promote(&state).await?;
    Ok(Json(RoleChanged { role: "master".into(), epoch: epoch.0, start_lsn: Some(start.0), master_url: None }))
}

/// Makes this node a slave of `masterUrl` (stage 7, `fencing`). On a master: its writes
/// stop at once, and once the new master's epoch history arrives, the records it wrote
/// that the new master never had are cut from its log (kept under `diverged/` in the
/// data directory); then it follows. On a slave: it follows `masterUrl` instead of its
/// old master. The change survives a restart (`epoch.bin`).
#[utoipa::path(post, path = "/admin/demote", tag = "admin", security((), ("bearer" = [])),
    request_body(content = DemoteRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Following the new master", body = RoleChanged),
        (status = 400, description = "Malformed body or URL", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 409, description = "`wrong_role`: the URL is this node, or failover is on (etcd elects the master); `fencing_off`: `replication.features.fencing` is off", body = ErrorBody),
        (status = 415, description = "Body is not application/json", body = ErrorBody),
        (status = 503, description = "Starting", body = ErrorBody),
    ))]
pub async fn demote(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<DemoteRequest>,
) -> Result<Json<RoleChanged>, ApiError> {
    let url = body.master_url.trim().trim_end_matches('/').to_string();
    let valid = (url.starts_with("http://") || url.starts_with("https://")) && url.len() <= 2048 && url.len() > 8;
    if !valid {
        return Err(ApiError::bad_request("invalid_body", "`masterUrl` must be an http:// or https:// base URL"));
    }
    roles::demote(&state, &url).await?;
    let node = state.node()?;
    Ok(Json(RoleChanged { role: "slave".into(), epoch: node.epoch().0, start_lsn: None, master_url: Some(url) }))
}

/// The replication flags to run with from now on: a roadmap `stage` (every flag up to
/// it), flags by name, or both (the flags are added to the stage's).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FeaturesChange {
    /// `"0"`, `"1"`, `"2"`, `"2.5"`, `"3"` … `"7"` (a number is taken too).
    #[schema(value_type = Option<StageName>)]
    pub stage: Option<serde_json::Value>,
    /// Flags by name (`notify`, `progress`, …); those left out are off.
    pub features: Option<Features>,
}

/// A roadmap stage this build has, as a string.
pub struct StageName;

impl utoipa::PartialSchema for StageName {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        let names: Vec<String> = Features::STAGES.iter().map(|(stage, _)| stage.to_string()).collect();
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .enum_values(Some(names))
            .description(Some("A roadmap stage: every replication flag up to it"))
            .examples([serde_json::json!("3")])
            .into()
    }
}

impl ToSchema for StageName {}

/// The flags in force after the change.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FeaturesChanged {
    pub features: Features,
    /// The highest roadmap stage whose flags are all on.
    pub stage: f64,
    /// True when they differ from the configuration's.
    pub overridden: bool,
    pub message: String,
}

/// Changes the replication flags of this running node, for operators without access to
/// its configuration: links renegotiate (a master asks its slaves to register again; a
/// slave registers again), and requests in flight finish under the old flags. The change
/// lasts until the next restart unless the configuration says the same;
/// `/actuator/replication` shows `featuresOverridden` meanwhile. `failover` changes only
/// with a restart.
#[utoipa::path(put, path = "/admin/replication/features", tag = "admin", security((), ("bearer" = [])),
    request_body(content = FeaturesChange, content_type = "application/json"),
    responses(
        (status = 200, description = "The flags in force now", body = FeaturesChanged),
        (status = 400, description = "`invalid_features`: no such stage, nothing asked, or flags out of rollout order", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 409, description = "`wrong_role`: the node cannot run these flags (a slave without `notify`, `failover` changed, `replication.ack` needs `ack-modes`)", body = ErrorBody),
        (status = 415, description = "Body is not application/json", body = ErrorBody),
        (status = 503, description = "Starting, or a full sync is replacing the state", body = ErrorBody),
    ))]
pub async fn change_features(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<FeaturesChange>,
) -> Result<Json<FeaturesChanged>, ApiError> {
    let invalid = |message: String| ApiError::bad_request("invalid_features", message);
    let stage = match &body.stage {
        None => None,
        Some(serde_json::Value::Number(n)) => n.as_f64(),
        Some(serde_json::Value::String(s)) => {
            Some(s.trim().parse::<f64>().map_err(|_| invalid(format!("`stage`: `{s}` is not a number")))?)
        }
        Some(other) => return Err(invalid(format!("`stage`: {other} is not a stage"))),
    };
    let from_stage = match stage {
        Some(stage) => Some(Features::up_to_stage(stage).ok_or_else(|| {
            let stages: Vec<String> = Features::STAGES.iter().map(|(s, _)| s.to_string()).collect();
            invalid(format!("`stage`: {stage} is not a stage; use one of {}", stages.join(", ")))
        })?),
        None => None,
    };
    let features = match (from_stage, body.features) {
        (None, None) => return Err(invalid("give `stage`, `features` or both".into())),
        (Some(a), Some(b)) => a.union(b),
        (Some(a), None) => a,
        (None, Some(b)) => b,
    };
    // Failover is not a stage: a stage asked for keeps it as it is.
    let current = state.node()?.features();
    let features =
        Features { failover: features.failover || (body.features.is_none() && current.failover), ..features };
    if let Some((flag, missing)) = features.rollout_violations().first() {
        return Err(invalid(format!("`{flag}` needs `{missing}` (rollout order: {})", Features::NAMES.join(", "))));
    }
    let live = roles::change_features(&state, features).await?;
    let message = if live.overridden {
        "in force until the next restart, unless the configuration says the same"
    } else {
        "the configuration's flags"
    };
    Ok(Json(FeaturesChanged {
        features: live.features,
        stage: live.features.stage(),
        overridden: live.overridden,
        message: message.into(),
    }))
}

/// Re-reads every configuration source (as SIGHUP does) and puts the reloadable keys in
/// force at once; keys marked `(reloadable)` in `application.yml` are the replication
/// flags, ack mode and timeouts, buffers, limits, reads, the log level and the snapshot
/// policy. The answer lists every changed key, what took effect and what needs a
/// restart (those keep their running values). An invalid configuration is refused as a
/// whole with every problem named, and nothing changes. Behind `security.admin-token`.
#[utoipa::path(post, path = "/actuator/refresh", tag = "actuator", security((), ("bearer" = [])),
    responses(
        (status = 200, description = "What changed, what took effect, what needs a restart", body = RefreshReport),
        (status = 400, description = "`invalid_config`: the new configuration is invalid (`problems` names each); nothing changed", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 409, description = "`wrong_role`: the node cannot run the new replication flags now; nothing changed", body = ErrorBody),
        (status = 503, description = "Starting, shutting down, or a full sync is replacing the state", body = ErrorBody),
    ))]
pub async fn refresh(State(state): State<AppState>) -> Result<Json<RefreshReport>, ApiError> {
    Ok(Json(refresh::refresh(&state).await?))
}
