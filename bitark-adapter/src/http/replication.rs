//! `/internal/replication/*` (behind `security.cluster-token` when set) and
//! `/actuator/replication`.

use super::auth::{self, Guard};
use super::error::{ApiError, ErrorBody};
use super::extract::{parse_id, ApiJson, QueryParams, RawBody};
use super::routes::RouteTable;
use crate::app::AppState;
use axum::extract::{FromRequestParts, RawPathParams, Request, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use bitark_common::replication::{
    EpochsAnswer, FullSyncAnswer, FullSyncRequest, HeartbeatRequest, HeartbeatResponse, NodeStatus, RegisterRequest,
    RegisterResponse, CHUNK_CRC_HEADER, EPOCH_HEADER, WAL_CONTENT_TYPE,
};
use bitark_common::{Epoch, Lsn, Record};
use bitark_engine::replication::full_sync::PullAnswer;
use bitark_engine::replication::heartbeat::HeartbeatError;
use bitark_engine::replication::MasterHub;
use bitark_engine::replication::{Follower, ReplicationStatus};
use bitark_engine::ReplicateError;
use bitark_infra::replication::client::{MASTER_ID_HEADER, SESSION_HEADER, SLAVE_SESSION_HEADER};
use bitark_infra::replication::BatchSender;

/// The chunk checksum header, as a header name.
const CHUNK_CRC: HeaderName = HeaderName::from_static(CHUNK_CRC_HEADER);

pub(crate) fn internal_router(state: AppState) -> RouteTable {
    RouteTable::new()
        .route("/internal/replication/register", post(register))
        .route("/internal/replication/append", post(append))
        .route("/internal/replication/status", get(status))
        .route("/internal/replication/reconnect", post(reconnect))
        .route("/internal/replication/heartbeat", post(heartbeat))
        .route("/internal/replication/pull", get(pull))
        .route("/internal/replication/full-sync", post(start_full_sync))
        .route("/internal/replication/full-sync/{id}", get(full_sync_chunk))
        .route("/internal/replication/epochs", get(epochs))
        .layered(|routes| {
            routes
                .route_layer(middleware::from_fn_with_state(state.clone(), epoch_guard))
                .route_layer(middleware::from_fn_with_state((state, Guard::Cluster), auth::require))
        })
}

pub(crate) fn actuator_router() -> RouteTable {
    RouteTable::new().route("/actuator/replication", get(replication_status))
}

/// Under fencing, every replication request and answer carries the sender's epoch.
/// A request that only a master sends (a log batch, a call to register) from a lower
/// epoch is refused with 409 `stale_epoch`, naming this node's epoch and master; a
/// request from a higher epoch is recorded, and a master stops taking writes at once.
async fn epoch_guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(node) = state.node_if_open().filter(|n| n.fencing()).cloned() else {
        return next.run(request).await;
    };
    let peer = request
        .headers()
        .get(EPOCH_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(Epoch);
    if let Some(peer) = peer {
        let own = node.epoch();
        let path = request.uri().path();
        let from_a_master = path.ends_with("/append") || path.ends_with("/reconnect");
        if peer < own && from_a_master {
            node.metrics().replication_stale_epoch_refusals.inc();
            let master_url = if node.is_slave() { Some(node.master_url()) } else { state.self_url() };
            let error = ApiError::StaleEpoch {
                message: format!(
                    "this request comes from epoch {peer}, but this node is in epoch {own}: the sender is no longer master"
                ),
                epoch: own.0,
                master_url: master_url.filter(|u| !u.is_empty()),
            };
            return with_epoch(error.into_response(), own);
        }
        if peer > node.epochs().highest() {
            let observing = node.clone();
            let step_down = tokio::task::spawn_blocking(move || observing.observe_epoch(peer, None)).await;
            if step_down.unwrap_or(false) {
                tracing::warn!(epoch = %peer, "a request from a newer epoch: writes stopped; stepping down once its master is known");
            }
        }
    }
    let response = next.run(request).await;
    with_epoch(response, node.epoch())
}

fn with_epoch(mut response: Response, epoch: Epoch) -> Response {
    response.headers_mut().insert(EPOCH, HeaderValue::from(epoch.0));
    response
}

/// The epoch header, as a header name.
const EPOCH: HeaderName = HeaderName::from_static(EPOCH_HEADER);

/// This node's epoch history: where each epoch it has known began.
async fn epochs(State(state): State<AppState>) -> Result<Json<EpochsAnswer>, ApiError> {
    let node = state.node()?;
    Ok(Json(EpochsAnswer {
        node_id: state.config().engine.node.id.clone(),
        history: node.epochs().history,
        durable_lsn: node.durable_lsn().0,
    }))
}

/// A slave registers (master only).
async fn register(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<RegisterRequest>,
) -> Result<Json<RegisterResponse>, ApiError> {
    let hub = hub(&state)?;
    Ok(Json(hub.register(request)?))
}

fn follower(state: &AppState) -> Result<Follower, ApiError> {
    state.node()?;
    state.follower().ok_or_else(|| ApiError::conflict("wrong_role", "this node is not a slave"))
}

/// The sender of a log batch, checked from the headers alone, before a byte of the body
/// is read: the node is a slave, the body is WAL records, and the batch comes from the
/// master (and master process) this slave registered with, meant for this process.
struct FromMaster(Follower);

impl FromRequestParts<AppState> for FromMaster {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let follower = follower(state)?;
        let text = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
        if text(header::CONTENT_TYPE.as_str()) != WAL_CONTENT_TYPE {
            return Err(ApiError::UnsupportedMediaType(format!("a replication batch must be {WAL_CONTENT_TYPE}")));
        }
        let sender = BatchSender {
            master_id: text(MASTER_ID_HEADER),
            master_session: text(SESSION_HEADER),
            slave_session: text(SLAVE_SESSION_HEADER),
        };
        follower.check_sender(&sender).map_err(|refused| ApiError::conflict(refused.reason(), refused.to_string()))?;
        Ok(FromMaster(follower))
    }
}

/// A batch of WAL records from the master (slave only), decoded and verified whole, then
/// logged, applied, acknowledged.
async fn append(FromMaster(follower): FromMaster, RawBody(body): RawBody) -> Result<Response, ApiError> {
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
        Err(ReplicateError::NotSlave) => Err(ApiError::conflict("wrong_role", "this node is not a slave")),
        Err(invalid @ ReplicateError::InvalidRecord { .. }) => {
            follower.refused("invalid_record");
            Err(ApiError::bad_request("invalid_record", invalid.to_string()))
        }
        Err(ReplicateError::Write(e)) => Err(e.into()),
    }
}

/// Where this node stands.
async fn status(State(state): State<AppState>) -> Result<Json<NodeStatus>, ApiError> {
    let node = state.node()?;
    let config = state.config();
    let follower = state.follower();
    Ok(Json(NodeStatus {
        node_id: config.engine.node.id.clone(),
        role: if node.is_slave() { "slave" } else { "master" }.into(),
        applied_lsn: node.applied_lsn().0,
        features: node.features(),
        session: follower.as_ref().map(|f| f.session().to_string()).unwrap_or_default(),
        master_session: follower.as_ref().map(Follower::master_session).unwrap_or_default(),
    }))
}

/// A slave's heartbeat (master only, stage 4).
async fn heartbeat(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<HeartbeatRequest>,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    let hub = hub(&state)?;
    hub.heartbeat(&request).map(Json).map_err(|e| {
        let code = match e {
            HeartbeatError::NotRegistered(_) => "not_registered",
            HeartbeatError::Ahead { .. } => "slave_ahead",
        };
        ApiError::conflict(code, e.to_string())
    })
}

/// The master's hub, once the node is open; 409 `wrong_role` on a node that is not a
/// replicating master.
fn hub(state: &AppState) -> Result<MasterHub, ApiError> {
    state.node()?;
    state.hub().ok_or_else(|| ApiError::conflict("wrong_role", "this node is not a master with replication turned on"))
}

/// `pull(fromLsn)` (master only, stage 5): the log from `fromLsn` on, or 409
/// `need_full_sync` naming the snapshot to fetch instead.
async fn pull(State(state): State<AppState>, query: QueryParams) -> Result<Response, ApiError> {
    let hub = hub(&state)?;
    let from = query.required_id("fromLsn")?;
    match hub.pull(Lsn(from)).await? {
        PullAnswer::Records(records) => {
            let mut body = Vec::new();
            for record in &records {
                record.encode_into(&mut body);
            }
            Ok(([(header::CONTENT_TYPE, WAL_CONTENT_TYPE)], body).into_response())
        }
        PullAnswer::NeedFullSync(need) => Ok((StatusCode::CONFLICT, Json(need)).into_response()),
    }
}

/// A slave asks for a full-sync transfer (master only, stage 5).
async fn start_full_sync(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<FullSyncRequest>,
) -> Result<Json<FullSyncAnswer>, ApiError> {
    Ok(Json(hub(&state)?.start_full_sync(request).await?))
}

/// One chunk of a transfer, its crc32 in a header (master only, stage 5).
async fn full_sync_chunk(
    State(state): State<AppState>,
    params: RawPathParams,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let hub = hub(&state)?;
    let id = params.iter().find(|(k, _)| *k == "id").map(|(_, v)| parse_id("id", v)).transpose()?.unwrap_or(0);
    let offset = query.required_id("offset")?;
    let session = query.text("session").ok_or_else(|| {
        ApiError::bad_request("invalid_query", "`session`: the slave session the transfer was granted to is required")
    })?;
    let (bytes, crc) = hub.full_sync_chunk(id, session, offset).await?;
    let headers = [(header::CONTENT_TYPE, "application/octet-stream".to_string()), (CHUNK_CRC, crc.to_string())];
    Ok((headers, bytes).into_response())
}

/// A master asks this slave to register now (slave only).
async fn reconnect(State(state): State<AppState>) -> Result<StatusCode, ApiError> {
    follower(&state)?.register_now();
    Ok(StatusCode::ACCEPTED)
}

/// Role, LSNs, the flags in force and, on a master, every slave's state and lag.
#[utoipa::path(get, path = "/actuator/replication", tag = "actuator",
    responses((status = 200, description = "Replication state", body = ReplicationStatus), (status = 503, body = ErrorBody)))]
pub async fn replication_status(State(state): State<AppState>) -> Result<Json<ReplicationStatus>, ApiError> {
    let node = state.node_if_open().ok_or(ApiError::Starting)?;
    let config = state.config();
    let follower = state.follower();
    let follower = follower.as_ref();
    let view = follower.map(Follower::master_view).unwrap_or_default();
    let epochs = node.epochs();
    let master_url = Some(node.master_url()).filter(|u| !u.is_empty() && (node.is_slave() || node.is_fenced()));
    let live = node.live_features();
    Ok(Json(ReplicationStatus {
        role: if node.is_slave() { "slave" } else { "master" },
        node_id: config.engine.node.id.clone(),
        epoch: epochs.history.current().0,
        highest_epoch: epochs.highest().0,
        fenced: !node.is_slave() && node.is_fenced(),
        epoch_history: epochs.history.entries().to_vec(),
        master_url,
        durable_lsn: node.durable_lsn().0,
        applied_lsn: node.applied_lsn().0,
        features: live.features,
        features_overridden: live.overridden,
        features_changed_at: live.changed_at.map(|t| humantime::format_rfc3339_millis(t).to_string()),
        slaves: state.hub().map(|h| h.slaves()).unwrap_or_default(),
        registered: follower.map(|f| f.is_registered()),
        state_at_master: view.state,
        state_reason: view.reason,
        progress_lsn: follower.and_then(|f| f.progress_lsn()),
        master_last_seen_seconds: follower.map(|f| f.master_last_seen().as_secs_f64()),
        full_sync: follower.and_then(Follower::full_sync),
        coordination: state.coordination(),
    }))
}
