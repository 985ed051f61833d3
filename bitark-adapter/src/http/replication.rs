//! `/internal/replication/*` (behind `security.cluster-token` when set) and
//! `/actuator/replication`.

use super::error::{ApiError, ErrorBody};
use super::extract::ApiJson;
use super::AppState;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bitark_common::replication::{NodeStatus, RegisterRequest, WAL_CONTENT_TYPE};
use bitark_common::Record;
use bitark_engine::replication::ReplicationStatus;
use bitark_engine::ReplicateError;

/// Largest replication batch body accepted.
const MAX_APPEND_BODY: usize = 64 << 20;

pub fn internal_router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/internal/replication/register", post(register))
        .route("/internal/replication/append", post(append))
        .route("/internal/replication/status", get(status))
        .route_layer(middleware::from_fn_with_state(state, require_cluster_token))
        .layer(DefaultBodyLimit::max(MAX_APPEND_BODY))
}

pub fn actuator_router() -> Router<AppState> {
    Router::new().route("/actuator/replication", get(replication_status))
}

async fn require_cluster_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(expected) = state.config().security.cluster_token.expose() {
        if !super::admin::bearer_matches(request.headers(), expected) {
            return Err(ApiError::Unauthorized);
        }
    }
    Ok(next.run(request).await)
}

/// A slave registers (master only).
async fn register(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<RegisterRequest>,
) -> Result<Json<bitark_common::replication::RegisterResponse>, ApiError> {
    state.node()?;
    let hub = state
        .hub()
        .ok_or_else(|| ApiError::WrongRole("this node is not a master with replication turned on".into()))?;
    Ok(Json(hub.register(request)))
}

/// A batch of WAL records from the master (slave only): logged, applied, acknowledged.
async fn append(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    state.node()?;
    let follower = state.follower().ok_or_else(|| ApiError::WrongRole("this node is not a slave".into()))?;
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if content_type != WAL_CONTENT_TYPE {
        return Err(ApiError::UnsupportedMediaType(format!("a replication batch must be {WAL_CONTENT_TYPE}")));
    }
    let mut records = Vec::new();
    let mut offset = 0;
    while offset < body.len() {
        match Record::decode(&body[offset..]) {
            Ok((record, used)) => {
                records.push(record);
                offset += used;
            }
            Err(e) => {
                follower.crc_failure();
                return Err(ApiError::bad_request(
                    "invalid_batch",
                    format!("record at byte {offset} of the batch: {e}"),
                ));
            }
        }
    }
    if records.is_empty() {
        return Err(ApiError::bad_request("invalid_batch", "the batch holds no records"));
    }
    match follower.append(records).await {
        Ok(ack) if follower.features().progress => Ok(Json(ack).into_response()),
        Ok(_) => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(ReplicateError::Gap { expected }) => Err(ApiError::LsnGap { expected }),
        Err(ReplicateError::NotSlave) => Err(ApiError::WrongRole("this node is not a slave".into())),
        Err(ReplicateError::Write(e)) => Err(e.into()),
    }
}

/// Where this node stands.
async fn status(State(state): State<AppState>) -> Result<Json<NodeStatus>, ApiError> {
    let node = state.node()?;
    let config = state.config();
    Ok(Json(NodeStatus {
        node_id: config.node.id.clone(),
        role: if node.is_slave() { "slave" } else { "master" }.into(),
        applied_lsn: node.applied_lsn().0,
        features: config.replication.effective_features(),
        session: state.follower().map(|f| f.session().to_string()).unwrap_or_default(),
    }))
}

/// Role, LSNs, the flags in force and, on a master, every slave's state and lag.
#[utoipa::path(get, path = "/actuator/replication", tag = "actuator",
    responses((status = 200, description = "Replication state", body = Object), (status = 503, body = ErrorBody)))]
pub async fn replication_status(State(state): State<AppState>) -> Result<Json<ReplicationStatus>, ApiError> {
    let node = state.node_if_open().ok_or(ApiError::Starting)?;
    let config = state.config();
    let follower = state.follower();
    Ok(Json(ReplicationStatus {
        role: if node.is_slave() { "slave" } else { "master" },
        node_id: config.node.id.clone(),
        epoch: node.epoch().0,
        master_url: node.is_slave().then(|| config.replication.master_url.clone()),
        durable_lsn: node.durable_lsn().0,
        applied_lsn: node.applied_lsn().0,
        features: config.replication.effective_features(),
        slaves: state.hub().map(|h| h.slaves()).unwrap_or_default(),
        registered: follower.map(|f| f.is_registered()),
        progress_lsn: follower.and_then(|f| f.progress_lsn()),
    }))
}
