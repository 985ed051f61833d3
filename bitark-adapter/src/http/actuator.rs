//! `/actuator/*`: health, info, Prometheus metrics and the effective configuration.

use super::error::ErrorBody;
use super::routes::RouteTable;
use crate::app::{AppState, Unavailable};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Json;
use bitark_engine::Node;
use bitark_infra::wal::WalHealth;
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

pub(crate) fn router() -> RouteTable {
    RouteTable::new()
        .route("/actuator/health", get(health))
        .route("/actuator/health/liveness", get(liveness))
        .route("/actuator/health/readiness", get(readiness))
        .route("/actuator/info", get(info))
        .route("/actuator/prometheus", get(prometheus))
        .route("/actuator/configprops", get(configprops))
}

/// `UP` or not, Spring Boot style, with the reason when not.
#[derive(Debug, Serialize, ToSchema)]
pub struct Status {
    /// `UP`, `DOWN` or `OUT_OF_SERVICE`.
    pub status: &'static str,
    /// Why not `UP`: `starting`, `shutting_down`, `write_path_down`, `wal_failed`,
    /// `needs_full_sync`, `diverged`, `gap`, `outdated`, `full_syncing`,
    /// `master_unreachable`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// What is wrong, for a person.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Status {
    fn up() -> Status {
        Status { status: "UP", reason: None, message: None }
    }

    fn not(status: &'static str, reason: &'static str, message: impl Into<String>) -> Status {
        Status { status, reason: Some(reason), message: Some(message.into()) }
    }
}

/// Overall health with its liveness and readiness groups.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
    pub components: HealthComponents,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HealthComponents {
    /// The process is sound: DOWN only when it must be restarted (its log stopped after
    /// a failed fsync, or the log writer died). A full disk does not make it DOWN.
    pub liveness: Status,
    /// Send it traffic: recovery has finished, it is not shutting down, its log accepts
    /// writes, and (a slave) its master can keep it up to date.
    pub readiness: Status,
    /// The write-ahead log: `UP`, `OUT_OF_SERVICE` while writes are refused (a full
    /// disk, a failed write being retried), `DOWN` after a failed fsync.
    pub wal: Component,
    /// The file system of `node.data-dir`: `OUT_OF_SERVICE` with less free space than
    /// one log segment.
    pub disk: Component,
    /// The node's replication role and where it stands.
    pub replication: Component,
}

/// One component of `/actuator/health`, as Spring Boot shows them.
#[derive(Debug, Serialize, ToSchema)]
pub struct Component {
    /// `UP`, `DOWN`, `OUT_OF_SERVICE` or `UNKNOWN`.
    pub status: &'static str,
    /// What the component knows, by name.
    #[schema(value_type = Object)]
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl Component {
    fn new(status: &'static str, details: serde_json::Value) -> Component {
        let serde_json::Value::Object(details) = details else { unreachable!("details are an object") };
        Component { status, details }
    }
}

fn wal_component(state: &AppState) -> Component {
    let Some(node) = state.node_if_open() else {
        return Component::new("UNKNOWN", json!({ "reason": "recovering" }));
    };
    let lsns = json!({ "durableLsn": node.durable_lsn().0, "appliedLsn": node.applied_lsn().0 });
    let (status, reason) = match node.wal_health() {
        WalHealth::Healthy => ("UP", None),
        WalHealth::Degraded { reason, .. } => ("OUT_OF_SERVICE", Some(reason)),
        WalHealth::Failed { reason } => ("DOWN", Some(reason)),
    };
    let mut component = Component::new(status, lsns);
    if let Some(reason) = reason {
        component.details.insert("reason".into(), json!(reason));
    }
    component
}

fn disk_component(state: &AppState) -> Component {
    let config = state.config();
    let dir = &config.engine.node.data_dir;
    match bitark_infra::process::disk_space(dir) {
        Ok((free, total)) => {
            let threshold = config.engine.wal.segment_size.as_u64();
            let status = if free >= threshold { "UP" } else { "OUT_OF_SERVICE" };
            Component::new(
                status,
                json!({ "path": dir.display().to_string(), "free": free, "total": total, "threshold": threshold }),
            )
        }
        Err(e) => Component::new("UNKNOWN", json!({ "path": dir.display().to_string(), "error": e.to_string() })),
    }
}

fn replication_component(state: &AppState) -> Component {
    let Some(node) = state.node_if_open() else {
        return Component::new("UNKNOWN", json!({ "reason": "recovering" }));
    };
    if !node.features().any() {
        return Component::new("UP", json!({ "role": "standalone" }));
    }
    let epoch = node.epochs().history.current().0;
    if let Some(hub) = state.hub() {
        let slaves = hub.slaves();
        let alive = slaves.iter().filter(|s| s.state == bitark_engine::replication::SlaveState::Alive).count();
        return Component::new(
            "UP",
            json!({ "role": "master", "epoch": epoch, "slaves": slaves.len(), "alive": alive }),
        );
    }
    let ready = readiness_status(state);
    let status = if node.is_slave() && ready.status != "UP" { "OUT_OF_SERVICE" } else { "UP" };
    let role = if node.is_slave() { "slave" } else { "master" };
    let mut details = json!({ "role": role, "epoch": epoch, "masterUrl": node.master_url() });
    if let Some(reason) = ready.reason.filter(|_| status != "UP") {
        details["reason"] = json!(reason);
    }
    Component::new(status, details)
}

fn liveness_status(state: &AppState) -> Status {
    match state.node_if_open().map(Node::wal_health) {
        Some(WalHealth::Failed { reason }) => Status::not("DOWN", "wal_failed", reason),
        _ => Status::up(),
    }
}

fn readiness_status(state: &AppState) -> Status {
    let node = match state.node() {
        Ok(node) => node,
        Err(Unavailable::ShuttingDown) => return Status::not("OUT_OF_SERVICE", "shutting_down", "shutting down"),
        Err(_) => return Status::not("OUT_OF_SERVICE", "starting", "recovering its state"),
    };
    match node.wal_health() {
        WalHealth::Healthy => {}
        WalHealth::Degraded { reason, .. } => return Status::not("OUT_OF_SERVICE", "write_path_down", reason),
        WalHealth::Failed { reason } => return Status::not("OUT_OF_SERVICE", "wal_failed", reason),
    }
    if node.is_fenced() && !node.is_slave() {
        let message = format!(
            "epoch {} exists with another master: this node takes no writes and steps down once it knows where that master is",
            node.epochs().highest()
        );
        return Status::not("OUT_OF_SERVICE", "fenced", message);
    }
    if !node.is_slave() && node.lease_lapsed() {
        let message = "this master could not renew its leader lease in etcd in time and takes no writes until it does";
        return Status::not("OUT_OF_SERVICE", "leader_lease_lapsed", message);
    }
    if node.is_slave() && node.role().master_url.is_empty() {
        return Status::not("OUT_OF_SERVICE", "no_master", "no master is known yet (under failover: none elected)");
    }
    if let Some(follower) = state.follower() {
        if let Some((reason, message)) = follower.master_view().not_ready() {
            return Status::not("OUT_OF_SERVICE", reason, message);
        }
        if let Some(silent) = follower.master_unreachable() {
            let message = format!(
                "the master has not answered for {} ms (replication.dead-after); reads are served but may be stale",
                silent.as_millis()
            );
            return Status::not("OUT_OF_SERVICE", "master_unreachable", message);
        }
    }
    Status::up()
}

fn code(status: &str) -> StatusCode {
    if status == "UP" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// Overall health: 200 when live and ready, 503 otherwise.
#[utoipa::path(get, path = "/actuator/health", tag = "actuator",
    responses((status = 200, body = Health), (status = 503, description = "Starting, stopping or failed", body = Health)))]
pub async fn health(State(state): State<AppState>) -> impl IntoResponse {
    let (live, ready) = (liveness_status(&state), readiness_status(&state));
    let overall = if ready.status == "UP" {
        "UP"
    } else if live.status == "DOWN" {
        "DOWN"
    } else {
        "OUT_OF_SERVICE"
    };
    let components = HealthComponents {
        liveness: live,
        readiness: ready,
        wal: wal_component(&state),
        disk: disk_component(&state),
        replication: replication_component(&state),
    };
    let body = Health { status: overall, components };
    (code(overall), Json(body))
}

/// Liveness probe: 503 only when the node must be restarted.
#[utoipa::path(get, path = "/actuator/health/liveness", tag = "actuator",
    responses((status = 200, body = Status), (status = 503, body = Status)))]
pub async fn liveness(State(state): State<AppState>) -> impl IntoResponse {
    let status = liveness_status(&state);
    (code(status.status), Json(status))
}

/// Readiness probe: 503 with the reason while recovering, shutting down, while the log
/// cannot be written (e.g. a full disk), or on a slave its master cannot keep up to date.
#[utoipa::path(get, path = "/actuator/health/readiness", tag = "actuator",
    responses((status = 200, body = Status), (status = 503, body = Status)))]
pub async fn readiness(State(state): State<AppState>) -> impl IntoResponse {
    let status = readiness_status(&state);
    (code(status.status), Json(status))
}

/// `/actuator/info`: version, node id and role, LSNs, and what recovery did.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Info {
    pub app: AppInfo,
    pub node: NodeInfo,
    pub uptime_seconds: u64,
    /// Once recovery finished: the LSN applied to memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied_lsn: Option<u64>,
    /// Once recovery finished: the highest LSN durable in the log.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub durable_lsn: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub users: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub marks: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery: Option<RecoveryInfo>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AppInfo {
    pub name: &'static str,
    pub version: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NodeInfo {
    pub id: String,
    /// The configured role (`master` or `slave`); `/actuator/replication` has the role now.
    pub role: &'static str,
}

/// What recovery did at start-up.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryInfo {
    pub snapshot_lsn: u64,
    pub records_replayed: u64,
    pub skipped_snapshots: u64,
    pub duration_ms: u64,
}

/// Version, node id and role, LSNs, and what recovery did.
#[utoipa::path(get, path = "/actuator/info", tag = "actuator",
    responses((status = 200, description = "Build and node information", body = Info)))]
pub async fn info(State(state): State<AppState>) -> Json<Info> {
    let config = state.config();
    let role = match config.engine.node.role {
        bitark_engine::Role::Master => "master",
        bitark_engine::Role::Slave => "slave",
    };
    let node = state.node_if_open();
    Json(Info {
        app: AppInfo { name: "bitark", version: env!("CARGO_PKG_VERSION") },
        node: NodeInfo { id: config.engine.node.id.clone(), role },
        uptime_seconds: state.uptime().as_secs(),
        applied_lsn: node.map(|n| n.applied_lsn().0),
        durable_lsn: node.map(|n| n.durable_lsn().0),
        users: node.map(|n| n.user_count()),
        marks: node.map(|n| n.mark_count()),
        recovery: node.map(|n| {
            let recovery = n.recovery();
            RecoveryInfo {
                snapshot_lsn: recovery.snapshot_lsn.0,
                records_replayed: recovery.replayed,
                skipped_snapshots: recovery.skipped_snapshots as u64,
                duration_ms: recovery.duration.as_millis() as u64,
            }
        }),
    })
}

/// Every metric in the Prometheus text exposition format.
#[utoipa::path(get, path = "/actuator/prometheus", tag = "actuator",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String)))]
pub async fn prometheus(State(state): State<AppState>) -> impl IntoResponse {
    if let Ok((free, total)) = bitark_infra::process::disk_space(&state.config().engine.node.data_dir) {
        state.metrics().disk_free_bytes.set(free as i64);
        state.metrics().disk_total_bytes.set(total as i64);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics().render())
}

/// The effective configuration after every source was merged; secrets show as `******`.
#[utoipa::path(get, path = "/actuator/configprops", tag = "actuator",
    responses((status = 200, description = "Effective configuration", body = crate::AppConfig), (status = 500, body = ErrorBody)))]
pub async fn configprops(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(serde_json::to_value(&**state.config()).unwrap_or_else(|e| json!({ "error": e.to_string() })))
}
