//! The public read-status API, `/api/v1/users/{userId}/...`.

use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, FlexU64, IdString, QueryParams, UserId, UserMsg};
use super::refusals::{BodyRefusals, LaggingReadRefusals, ReadRefusals, WriteRefusals};
use super::routes::RouteTable;
use crate::app::AppState;
use axum::extract::{OriginalUri, State};
use axum::http::{header, HeaderValue, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Json;
use bitark_common::{Command, Epoch, GroupId, Lsn, ScopedToken, TokenCheck, WriteToken};
use bitark_engine::{AckMode, ConsistencyError, LeaderReadError, Node, OnLag, WriteError};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// The route of one message's read flag; [`super::Api`] answers its GETs itself (see
/// [`read_status`]).
pub(crate) const MESSAGE_ROUTE: &str = "/api/v1/users/{userId}/reads/{msgId}";

/// Routes of this resource.
pub(crate) fn router() -> RouteTable {
    RouteTable::new()
        .route(MESSAGE_ROUTE, put(mark_read).delete(mark_unread).get(is_read))
        .route("/api/v1/users/{userId}/reads", post(mark_many))
        .route("/api/v1/users/{userId}/reads/check", post(check))
        .route("/api/v1/users/{userId}/unread-count", get(unread_count))
}

/// Answer to a write: the position of its WAL record, durable once this arrives (and,
/// under `ack=semi|all`, on the slaves that mode needs).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LsnResponse {
    /// LSN of the record that carries this write.
    pub lsn: u64,
    /// Epoch of the master that wrote it.
    pub epoch: u64,
    /// `"<epoch>:<lsn>"`, or `"<group>:<epoch>:<lsn>"` from a sharded node: pass it as
    /// `?token=` to a read on any node of the group (or through a router) to read this
    /// write (or learn, with 409 `write_lost`, that a failover lost it).
    #[schema(example = "1:42")]
    pub token: String,
}

/// Whether one message is read.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReadStatus {
    pub read: bool,
    /// The LSN this node had applied when it answered.
    pub lsn: u64,
}

/// The answers of the hottest requests, a read flag and a write's position, are a few
/// numbers: they are written by hand, byte for byte what serde writes for
/// [`ReadStatus`] and [`LsnResponse`]. Through `serde_json` and axum's `Json` such an
/// answer took about 2,500 instructions, a tenth of a durable mark's.
impl IntoResponse for ReadStatus {
    fn into_response(self) -> Response {
        let mut body = Vec::with_capacity(40);
        body.extend_from_slice(if self.read { b"{\"read\":true,\"lsn\":" } else { b"{\"read\":false,\"lsn\":" });
        body.extend_from_slice(itoa::Buffer::new().format(self.lsn).as_bytes());
        body.push(b'}');
        json_answer(body)
    }
}

/// A write's answer: [`LsnResponse`] for the record at `lsn`, written by `epoch` in
/// `group` (a sharded node's; its token then names it).
pub struct Written {
    pub lsn: Lsn,
    pub epoch: Epoch,
    pub group: Option<GroupId>,
}

impl IntoResponse for Written {
    fn into_response(self) -> Response {
        let (mut lsn, mut epoch) = (itoa::Buffer::new(), itoa::Buffer::new());
        let (lsn, epoch) = (lsn.format(self.lsn.0).as_bytes(), epoch.format(self.epoch.0).as_bytes());
        let group = self.group.as_ref().map_or(&b""[..], |g| g.as_str().as_bytes());
        let colon = if group.is_empty() { &b""[..] } else { b":" };
        let mut body = Vec::with_capacity(32 + 2 * (lsn.len() + epoch.len()) + group.len());
        for part in
            [&b"{\"lsn\":"[..], lsn, b",\"epoch\":", epoch, b",\"token\":\"", group, colon, epoch, b":", lsn, b"\"}"]
        {
            body.extend_from_slice(part);
        }
        json_answer(body)
    }
}

fn json_answer(body: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}

/// Mark many: either `msgIds` ([`MarkIds`]), or an inclusive range `from`..`to`
/// ([`MarkRange`]); the document says exactly that (one of the two).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MarkManyRequest {
    /// Message ids to mark read (at most `limits.max-batch`).
    pub msg_ids: Option<Vec<FlexU64>>,
    /// First id of the range, inclusive.
    pub from: Option<FlexU64>,
    /// Last id of the range, inclusive (the range spans at most `limits.max-range` ids).
    pub to: Option<FlexU64>,
}

impl utoipa::PartialSchema for MarkManyRequest {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::OneOfBuilder::new()
            .item(utoipa::openapi::Ref::from_schema_name("MarkIds"))
            .item(utoipa::openapi::Ref::from_schema_name("MarkRange"))
            .description(Some("Mark many: either `msgIds`, or an inclusive range `from`..`to`."))
            .into()
    }
}

impl ToSchema for MarkManyRequest {}

/// Mark these message ids read.
#[derive(ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)] // the document's view of [`MarkManyRequest`]
pub struct MarkIds {
    /// At most `limits.max-batch` ids.
    #[schema(min_items = 1)]
    msg_ids: Vec<FlexU64>,
}

/// Mark every message id from `from` to `to`, both included.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // the document's view of [`MarkManyRequest`]
pub struct MarkRange {
    from: FlexU64,
    /// At least `from`; the range spans at most `limits.max-range` ids.
    to: FlexU64,
}

/// Message ids to check.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CheckRequest {
    /// At most `limits.max-batch` ids.
    #[schema(min_items = 1)]
    pub msg_ids: Vec<FlexU64>,
}

/// Read flags in the order of the request's `msgIds`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CheckResult {
    pub read: Vec<bool>,
    /// The LSN this node had applied when it answered.
    pub lsn: u64,
}

/// Unread messages in a range.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UnreadCount {
    pub unread: u64,
    /// The LSN this node had applied when it answered.
    pub lsn: u64,
}

/// `?minLsn=` or `?token=`: read only once this node holds that position.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ConsistencyQuery {
    /// Wait (up to `reads.min-lsn-wait`) until this LSN is applied; 503 `lsn_not_reached`
    /// otherwise, or, on a slave with `reads.on-lag: redirect`, 307 to the master.
    #[param(rename = "minLsn", value_type = Option<IdString>)]
    pub min_lsn: Option<u64>,
    /// A write's `token` (`"<epoch>:<lsn>"`, or `"<group>:<epoch>:<lsn>"` from a sharded
    /// node): as `minLsn`, and 409 `write_lost` when this
    /// node's epoch history shows that write was lost in a failover.
    #[param(pattern = "^([a-z0-9][a-z0-9-]{0,31}:)?[0-9]+:[0-9]+$", example = "1:42")]
    pub token: Option<String>,
    /// See [`ConsistencyParam`].
    #[param(inline)]
    pub consistency: Option<ConsistencyParam>,
}

/// `?consistency=`: how current a read's answer must be.
///
/// - `local`: this node's state as it has applied it, whatever its role (the default on
///   a slave and on a master without failover). On a master cut off from etcd it may
///   miss writes a newer master has taken since.
/// - `leader` (the default on a master under failover): answered only by the master,
///   and only while no newer master can exist: not fenced by a newer epoch and, under
///   failover, while its leader lease holds (it ends a quarter TTL before etcd could
///   expire it, as the writer's fencing does). Otherwise 409 `not_master` (with the
///   master's URL when known) or 503 `leader_lease_lapsed`. It reflects every write
///   acknowledged before it was asked, by this master or (`semi`/`all`) an earlier one,
///   but it may show a write still in flight that a crash of this master then takes back.
/// - `linearizable`: `leader`, and then waits until what it read can no longer be taken
///   back by a failover (held by the slaves `semi` needs and, under failover, recorded in
///   etcd), or answers 503 `not_committed`. Linearizable with every `semi`/`all` write,
///   provided the clocks of the node and etcd run at rates within 25% of each other over
///   one lease TTL. Costs a replication round trip and, under failover, an etcd
///   transaction shared by the reads and writes waiting at that moment.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum ConsistencyParam {
    Local,
    Leader,
    Linearizable,
}

/// `?ack=`: wait for slaves before the answer.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct AckQuery {
    /// `semi`: answer once `replication.min-acks` ALIVE slaves hold the write durably;
    /// `all`: once every ALIVE slave does; `async`: after the master's fsync. The
    /// stricter of this and `replication.ack` applies; `semi` and `all` need
    /// `replication.features.ack-modes`. On timeout: 504 `replication_timeout` (the
    /// write is durable on the master and still replicates, unless a failover to a node
    /// without it comes first: its token then answers `write_lost`).
    #[param(inline)]
    pub ack: Option<AckParam>,
}

/// The acknowledgement mode a write asks for.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum AckParam {
    Async,
    Semi,
    All,
}

/// `?from=&to=` of an unread count.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct RangeQuery {
    /// First message id, inclusive.
    #[param(value_type = IdString)]
    pub from: u64,
    /// Last message id, inclusive; the range spans at most `limits.max-range` ids.
    #[param(value_type = IdString)]
    pub to: u64,
    /// Wait (up to `reads.min-lsn-wait`) until this LSN is applied.
    #[param(rename = "minLsn", value_type = Option<IdString>)]
    pub min_lsn: Option<u64>,
    /// A write's `token` (`"<epoch>:<lsn>"` or `"<group>:<epoch>:<lsn>"`); see the other
    /// reads.
    #[param(pattern = "^([a-z0-9][a-z0-9-]{0,31}:)?[0-9]+:[0-9]+$", example = "1:42")]
    pub token: Option<String>,
    /// See [`ConsistencyParam`].
    #[param(inline)]
    pub consistency: Option<ConsistencyParam>,
}

/// The node, once it holds the position the query asks for (`minLsn`, `token`), if its
/// group serves `user`.
/// The node is borrowed from `state`, not cloned: a clone is an atomic increment and
/// decrement of one counter that every runtime thread's reads would share. `path` is the
/// request's path, for a redirect to the master.
async fn consistent_node<'s>(
    state: &'s AppState,
    user: u64,
    query: &QueryParams,
    path: impl Fn() -> String,
) -> Result<Consistent<'s>, ApiError> {
    let node = state.node()?;
    if node.is_replacing() {
        return Err(ApiError::Replacing);
    }
    node.check_owner(user)?;
    if query.is_empty() {
        // The common read asks for no position: whatever is applied now.
        return Ok(Consistent { node, lsn: node.applied_lsn(), level: Level::default_on(node) });
    }
    let level = match query.text("consistency") {
        None => Level::default_on(node),
        Some("local") => Level::Local,
        Some("leader") => Level::Leader,
        Some("linearizable") => Level::Linearizable,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("`consistency`: `{other}` is not one of local, leader, linearizable"),
            ))
        }
    };
    let path = || query.after(&path());
    if level != Level::Local {
        // Refused before any wait: a slave or a fenced master never answers one.
        leader_still(node, &path())?;
    }
    let token = query.text("token").map(|t| scoped_token(node, t)).transpose()?;
    let min = query.id("minLsn")?.map(Lsn).max(token.map(|t| t.lsn));
    let holds = |node: &Node| token.map_or(TokenCheck::Holds, |t| node.check_token(t));
    if let (Some(t), TokenCheck::Lost { owner }) = (token, holds(node)) {
        return Err(write_lost(t, owner));
    }
    let reached = |node: &Node| min.is_none_or(|m| node.applied_lsn() >= m) && holds(node) == TokenCheck::Holds;
    if !reached(node) && node.is_slave() && node.config().reads.on_lag == OnLag::Redirect {
        return Err(read_from_master(node, &path()));
    }
    let applied = match min {
        Some(min) if node.applied_lsn() < min => node.wait_applied(min).await?,
        _ => node.applied_lsn(),
    };
    if token.is_some_and(|t| t.epoch > node.epoch()) && node.applied_lsn() >= min.unwrap_or_default() {
        // The position is reached but the epoch is not known yet: give a slave the
        // same time to learn it from its master.
        node.wait_epoch(token.map(|t| t.epoch).unwrap_or_default()).await;
    }
    match (token, holds(node)) {
        (Some(t), TokenCheck::Lost { owner }) => Err(write_lost(t, owner)),
        (Some(t), TokenCheck::Ahead) => Err(ApiError::Behind(ConsistencyError::EpochAhead {
            token: t.to_string(),
            epoch: t.epoch.0,
            known: node.epoch().0,
            master_url: node.master_url(),
        })),
        _ => Ok(Consistent { node, lsn: applied, level }),
    }
}

/// How current a read's answer must be (`?consistency=`, see [`ConsistencyParam`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Level {
    Local,
    Leader,
    Linearizable,
}

impl Level {
    /// What a read that names no level gets on `node`.
    fn default_on(node: &Node) -> Level {
        if node.leader_reads_by_default() {
            Level::Leader
        } else {
            Level::Local
        }
    }
}

/// A node ready to answer a read, the LSN it answers at, and how current the answer
/// must be ([`Consistent::answer`] then confirms it).
struct Consistent<'s> {
    node: &'s Node,
    lsn: Lsn,
    level: Level,
}

impl Consistent<'_> {
    /// `answer`, read from the node's state, once its level is confirmed. A leader read:
    /// the node still leads *after* the state was read, so no newer master can have
    /// taken a write the answer misses. A linearizable read: also, what it saw can no
    /// longer be taken back by a failover. `path` is the request's path and query, for
    /// `Location`.
    async fn answer<T>(&self, answer: T, path: impl Fn() -> String) -> Result<T, ApiError> {
        match self.level {
            Level::Local => {}
            Level::Leader => leader_still(self.node, &path())?,
            Level::Linearizable => {
                // Everything the state held when it was read is at or below this LSN.
                let seen = self.node.applied_lsn();
                let epoch = self.node.epoch();
                leader_still(self.node, &path())?;
                self.node.wait_committed(seen).await.map_err(|e| leader_error(e, &path()))?;
                if self.node.epoch() != epoch {
                    return Err(leader_error(LeaderReadError::LeaseLapsed, &path()));
                }
                leader_still(self.node, &path())?;
            }
        }
        Ok(answer)
    }
}

/// Whether `node` may answer a leader read now; `path` is the request's path and query.
fn leader_still(node: &Node, path: &str) -> Result<(), ApiError> {
    node.check_leader_read().map_err(|e| leader_error(e, path))
}

/// The answer to a read refused for `e`; `path` is the request's path and query.
fn leader_error(e: LeaderReadError, path: &str) -> ApiError {
    match e {
        LeaderReadError::NotLeader { epoch, ref master_url } => ApiError::Fenced {
            message: e.to_string(),
            epoch,
            location: master_url.as_ref().map(|u| format!("{}{path}", u.trim_end_matches('/'))),
            master_url: master_url.clone(),
        },
        LeaderReadError::LeaseLapsed => ApiError::LeaseLapsed(e.to_string()),
        LeaderReadError::Uncommitted { .. } => ApiError::NotCommitted(e.to_string()),
    }
}

fn write_lost(token: WriteToken, owner: bitark_common::Epoch) -> ApiError {
    let lost = ConsistencyError::WriteLost {
        token: token.to_string(),
        lsn: token.lsn.0,
        epoch: token.epoch.0,
        owner: owner.0,
    };
    ApiError::WriteLost { message: lost.to_string(), token: token.to_string() }
}

/// The `token` of a read: `<epoch>:<lsn>`, or `<group>:<epoch>:<lsn>` of this node's
/// group.
fn scoped_token(node: &Node, text: &str) -> Result<WriteToken, ApiError> {
    let invalid = |why: String| ApiError::bad_request("invalid_token", format!("`token`: {why}"));
    let scoped = text.parse::<ScopedToken>().map_err(invalid)?;
    let mine = node.ownership().map(|own| own.group.clone());
    match (scoped.group, mine) {
        (None, _) => Ok(scoped.token),
        (Some(given), Some(mine)) if given == mine => Ok(scoped.token),
        (Some(given), Some(mine)) => {
            Err(invalid(format!("`{text}` is a token of group {given}; this node is of group {mine}")))
        }
        (Some(given), None) => Err(invalid(format!("`{text}` is a token of group {given}; this node is not sharded"))),
    }
}

/// The same request on the master, for a slave behind what the read asks for;
/// `path` is the request's path and query.
fn read_from_master(node: &Node, path: &str) -> ApiError {
    let master_url = node.master_url();
    ApiError::ReadFromMaster {
        message: format!(
            "this slave has applied LSN {}, below what the read asks for (reads.on-lag: redirect): read from the master",
            node.applied_lsn()
        ),
        location: format!("{}{path}", master_url.trim_end_matches('/')),
        master_url,
    }
}

/// Logs `command` and answers where its record is: the body of every write handler.
/// [`super::Api`] calls this itself for a PUT or DELETE of one read flag whose ids
/// parse, as it calls [`read_status`] for a GET.
pub(crate) async fn write(
    state: &AppState,
    command: Command,
    uri: &Uri,
    query: &QueryParams,
) -> Result<Written, ApiError> {
    let node = state.node()?;
    let ack = match query.text("ack") {
        None => None,
        Some(text) => {
            let mode = AckMode::parse(text).ok_or_else(|| {
                ApiError::bad_request("invalid_query", format!("`ack`: `{text}` is not one of async, semi, all"))
            })?;
            if mode != AckMode::Async && !node.features().ack_modes {
                return Err(ApiError::bad_request(
                    "ack_modes_off",
                    format!("`ack={text}` needs replication.features.ack-modes (stage 7) on this node"),
                ));
            }
            Some(mode)
        }
    };
    let path = || uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string();
    match node.write_acked(command, ack).await {
        Ok(lsn) => Ok(Written { lsn, epoch: node.epoch(), group: node.ownership().map(|own| own.group.clone()) }),
        // A slave points the client at the same request on the master.
        Err(WriteError::NotMaster { master_url }) => {
            Err(ApiError::NotMaster { location: format!("{}{}", master_url.trim_end_matches('/'), path()), master_url })
        }
        Err(e) => match ApiError::from(e) {
            ApiError::Fenced { message, epoch, master_url, .. } => {
                let location = master_url.as_ref().map(|u| format!("{}{}", u.trim_end_matches('/'), path()));
                Err(ApiError::Fenced { message, epoch, master_url, location })
            }
            other => Err(other),
        },
    }
}

/// Mark one message read.
#[utoipa::path(
    put, path = "/api/v1/users/{userId}/reads/{msgId}", tag = "reads",
    params(("userId" = IdString, Path, description = "User id"), ("msgId" = IdString, Path, description = "Message id"), AckQuery),
    responses(
        (status = 200, description = "Durable; the LSN of its record", body = LsnResponse),
        (status = 400, description = "Malformed id", body = ErrorBody),
        WriteRefusals,
    )
)]
pub async fn mark_read(
    State(state): State<AppState>,
    OriginalUri(uri): OriginalUri,
    ids: UserMsg,
    query: QueryParams,
) -> Result<Written, ApiError> {
    write(&state, Command::MarkRead { user: ids.user, msg: ids.msg }, &uri, &query).await
}

/// Mark one message unread.
#[utoipa::path(
    delete, path = "/api/v1/users/{userId}/reads/{msgId}", tag = "reads",
    params(("userId" = IdString, Path, description = "User id"), ("msgId" = IdString, Path, description = "Message id"), AckQuery),
    responses(
        (status = 200, description = "Durable; the LSN of its record", body = LsnResponse),
        (status = 400, description = "Malformed id", body = ErrorBody),
        WriteRefusals,
    )
)]
pub async fn mark_unread(
    State(state): State<AppState>,
    OriginalUri(uri): OriginalUri,
    ids: UserMsg,
    query: QueryParams,
) -> Result<Written, ApiError> {
    write(&state, Command::MarkUnread { user: ids.user, msg: ids.msg }, &uri, &query).await
}

/// Has the user read this message?
#[utoipa::path(
    get, path = "/api/v1/users/{userId}/reads/{msgId}", tag = "reads",
    params(("userId" = IdString, Path, description = "User id"), ("msgId" = IdString, Path, description = "Message id"), ConsistencyQuery),
    responses(
        (status = 200, description = "Read flag and the applied LSN", body = ReadStatus),
        (status = 307, description = "`read_from_master`: a slave behind `minLsn`/`token` under `reads.on-lag: redirect`; `Location` is the same request on the master", body = ErrorBody),
        (status = 400, description = "Malformed id, minLsn or token", body = ErrorBody),
        ReadRefusals,
        (status = 503, description = "`lsn_not_reached`: minLsn or token not reached in time; or starting; `leader_lease_lapsed`: a leader read on a master under failover whose leader lease is not known to hold; `not_committed`: a linearizable read whose state could not be made safe from a failover in time", body = ErrorBody),
    )
)]
pub async fn is_read(State(state): State<AppState>, ids: UserMsg, query: QueryParams) -> Result<ReadStatus, ApiError> {
    read_status(&state, ids, &query).await
}

/// The answer of [`is_read`]. The hottest request of all, so [`super::Api`] calls this
/// itself for a GET whose ids parse, without the router: routing again, the path
/// parameters' copies and the extractors cost a fifth of such a request. The routed
/// handler serves the rest (HEAD, percent-encoded ids, malformed ones), the same way.
pub(crate) async fn read_status(state: &AppState, ids: UserMsg, query: &QueryParams) -> Result<ReadStatus, ApiError> {
    // The path is rebuilt only for a redirect: the ids in their canonical form.
    let path = || format!("/api/v1/users/{}/reads/{}", ids.user, ids.msg);
    let read = consistent_node(state, ids.user, query, path).await?;
    let answer = ReadStatus { read: read.node.is_read(ids.user, ids.msg), lsn: read.lsn.0 };
    read.answer(answer, || query.after(&path())).await
}

/// Mark many messages read: a list, or everything in an inclusive range. All or nothing.
#[utoipa::path(
    post, path = "/api/v1/users/{userId}/reads", tag = "reads",
    params(("userId" = IdString, Path, description = "User id"), AckQuery),
    request_body(content = MarkManyRequest, content_type = "application/json",
        description = "`{\"msgIds\": [..]}` or `{\"from\": a, \"to\": b}`"),
    responses(
        (status = 200, description = "Durable; the LSN of its record", body = LsnResponse),
        (status = 400, description = "Malformed body or id, empty batch, inverted range", body = ErrorBody),
        BodyRefusals,
        WriteRefusals,
        (status = 413, description = "Batch or range over the limit", body = ErrorBody),
    )
)]
pub async fn mark_many(
    State(state): State<AppState>,
    OriginalUri(uri): OriginalUri,
    UserId(user): UserId,
    query: QueryParams,
    ApiJson(body): ApiJson<MarkManyRequest>,
) -> Result<Written, ApiError> {
    let command = match body {
        MarkManyRequest { msg_ids: Some(ids), from: None, to: None } => {
            Command::MarkBatch { user, msgs: ids.into_iter().map(|id| id.0).collect() }
        }
        MarkManyRequest { msg_ids: None, from: Some(from), to: Some(to) } => {
            Command::MarkRange { user, from: from.0, to: to.0 }
        }
        _ => {
            return Err(ApiError::bad_request(
                "invalid_body",
                "the body must hold either `msgIds` or both `from` and `to`, not a mix",
            ))
        }
    };
    write(&state, command, &uri, &query).await
}

/// Which of these messages has the user read?
#[utoipa::path(
    post, path = "/api/v1/users/{userId}/reads/check", tag = "reads",
    params(("userId" = IdString, Path, description = "User id"), ConsistencyQuery),
    request_body(content = CheckRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Flags in request order", body = CheckResult),
        LaggingReadRefusals,
        (status = 400, description = "Malformed body, id, minLsn or token", body = ErrorBody),
        ReadRefusals,
        BodyRefusals,
        (status = 413, description = "More ids than limits.max-batch", body = ErrorBody),
    )
)]
pub async fn check(
    State(state): State<AppState>,
    OriginalUri(uri): OriginalUri,
    UserId(user): UserId,
    query: QueryParams,
    ApiJson(body): ApiJson<CheckRequest>,
) -> Result<Json<CheckResult>, ApiError> {
    let read = consistent_node(&state, user, &query, || uri.path().to_string()).await?;
    read.node.validate_batch_len(body.msg_ids.len())?;
    let ids: Vec<u64> = body.msg_ids.into_iter().map(|id| id.0).collect();
    let answer = CheckResult { read: read.node.check(user, &ids), lsn: read.lsn.0 };
    read.answer(Json(answer), || query.after(uri.path())).await
}

/// How many messages in `from..=to` has the user not read?
#[utoipa::path(
    get, path = "/api/v1/users/{userId}/unread-count", tag = "reads",
    params(("userId" = IdString, Path, description = "User id"), RangeQuery),
    responses(
        (status = 200, description = "Unread count", body = UnreadCount),
        LaggingReadRefusals,
        (status = 400, description = "Missing or malformed from/to, minLsn or token; inverted range", body = ErrorBody),
        ReadRefusals,
        (status = 413, description = "Range wider than limits.max-range", body = ErrorBody),
    )
)]
pub async fn unread_count(
    State(state): State<AppState>,
    OriginalUri(uri): OriginalUri,
    UserId(user): UserId,
    query: QueryParams,
) -> Result<Json<UnreadCount>, ApiError> {
    let (from, to) = (query.required_id("from")?, query.required_id("to")?);
    let read = consistent_node(&state, user, &query, || uri.path().to_string()).await?;
    let answer = UnreadCount { unread: read.node.unread_count(user, from, to)?, lsn: read.lsn.0 };
    read.answer(Json(answer), || query.after(uri.path())).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body(response: Response) -> (Option<HeaderValue>, String) {
        let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (content_type, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn hand_written_answers_are_what_serde_writes() {
        let json = Some(HeaderValue::from_static("application/json"));
        for (a, b) in [(0, 0), (1, 7), (42, 1 << 53), (u64::MAX, u64::MAX), (9, u64::MAX - 1)] {
            for read in [true, false] {
                let expected = serde_json::to_string(&ReadStatus { read, lsn: a }).unwrap();
                assert_eq!(body(ReadStatus { read, lsn: a }.into_response()).await, (json.clone(), expected));
            }
            let (lsn, epoch) = (Lsn(a), Epoch(b));
            for group in [None, Some(GroupId::new("eu-2").unwrap())] {
                let token = ScopedToken { group: group.clone(), token: WriteToken { epoch, lsn } }.to_string();
                let expected = serde_json::to_string(&LsnResponse { lsn: a, epoch: b, token }).unwrap();
                assert_eq!(body(Written { lsn, epoch, group }.into_response()).await, (json.clone(), expected));
            }
        }
    }
}
