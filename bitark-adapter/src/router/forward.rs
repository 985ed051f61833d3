//! One request to the group that owns it, and the redirects it follows on the way.
//!
//! A request is sent again only when the node cannot have acted on it: the connection
//! was refused, or the node answered that it did not serve it (`wrong_shard`,
//! `not_master`, `starting`, `shutting_down`, `leader_lease_lapsed`: nothing logged). A
//! write to a range frozen for a move (`range_frozen`) is held: sent again until the
//! move's cutover ends, for up to `--frozen-hold`, without counting as a redirect. A
//! request that reached a node and got no answer is answered 502 and never sent twice,
//! so a write is acknowledged to the client exactly when a master acknowledged it.

use super::client::SendError;
use super::wire::Answer;
use super::Shared;
use crate::http::extract::parse_id;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bitark_common::GroupId;
use bitark_engine::sharding::Directory;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The largest request body the router takes (a node's own limits are lower).
const MAX_BODY: usize = 16 << 20;
/// Where every one-user endpoint starts.
pub(super) const USERS: &str = "/api/v1/users/";
/// Sends of one request, redirects included.
const MAX_SENDS: usize = 8;

/// Whom a request is for.
#[derive(Clone, Debug)]
pub(super) enum Target {
    /// The group that owns this user, by the map in force at each send.
    User(u64),
    /// This group, whatever the map says now (a part of a fanned-out request).
    Group(GroupId),
}

/// Why no node answered.
#[derive(Debug)]
pub(super) struct Failure {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl Failure {
    pub(super) fn into_response(self) -> Response {
        refusal(self.status, self.code, self.message)
    }
}

/// A JSON error of the router's own, shaped like a node's.
pub(super) fn refusal(status: StatusCode, code: &str, message: String) -> Response {
    (status, axum::Json(serde_json::json!({ "error": code, "message": message }))).into_response()
}

/// The fields of a node's error the router acts on.
#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ErrorPeek {
    #[serde(default)]
    error: String,
    #[serde(default)]
    map_version: Option<u64>,
    #[serde(default)]
    master_url: Option<String>,
}

/// Picks a member for a read that carries a write token, in turn.
static NEXT_MEMBER: AtomicUsize = AtomicUsize::new(0);

fn base_url(directory: &Directory, group: &GroupId, any_member: bool) -> Option<String> {
    if any_member {
        if let Some(members) = directory.members.get(group).filter(|m| !m.is_empty()) {
            return Some(members[NEXT_MEMBER.fetch_add(1, Ordering::Relaxed) % members.len()].clone());
        }
    }
    directory.masters.get(group).cloned()
}

/// One request as the router sends it on.
pub(super) struct Outgoing<'a> {
    pub method: &'a Method,
    /// Path and query.
    pub path: &'a str,
    pub content_type: Option<&'a HeaderValue>,
    pub body: Bytes,
    /// A read: sent again when a connection closed before any answer.
    pub read: bool,
    /// A read with a write token: any member of the group may answer it.
    pub any_member: bool,
}

impl Outgoing<'_> {
    /// A read a master answers at once (a GET without a token, which a slave may hold
    /// until it has applied the token's write): one that may be pipelined.
    fn at_once(&self) -> bool {
        *self.method == Method::GET && !self.any_member && self.body.is_empty()
    }
}

/// Sends `out` to the node `target` names, following redirects for up to
/// `--failover-wait`. Answers the group it went to and the node's answer.
pub(super) async fn send(shared: &Shared, target: Target, out: &Outgoing<'_>) -> Result<(GroupId, Answer), Failure> {
    let deadline = Instant::now() + shared.options.failover_wait;
    let mut direct: Option<String> = None;
    let mut held = Hold::default();
    let mut sends = 0;
    while sends < MAX_SENDS {
        sends += 1;
        let directory = shared.view.get().ok_or_else(|| Failure {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "no_shard_map",
            message: format!("the router has not read a shard map from etcd at {} yet", shared.prefix),
        })?;
        let group = match &target {
            Target::User(user) => directory.map.owner_of(*user).group.clone(),
            Target::Group(group) => group.clone(),
        };
        let Some(base) = direct.take().or_else(|| base_url(&directory, &group, out.any_member)) else {
            shared.metrics.redirects.with_label_values(&["no_master"]).inc();
            if wait_for_change(shared, deadline).await {
                continue;
            }
            return Err(Failure {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "no_master",
                message: format!("group {group} has no master in etcd (waited {:?})", shared.options.failover_wait),
            });
        };
        let sent = if out.at_once() {
            shared.client.get(&base, out.path).await
        } else {
            shared.client.send(out.method, &base, out.path, out.content_type, &out.body, out.read).await
        };
        let answer = match sent {
            Ok(answer) => answer,
            Err(e) if !e.delivered() => {
                // Not delivered: the master is gone or moving. Read etcd again and retry.
                shared.metrics.redirects.with_label_values(&["unreachable"]).inc();
                shared.refresh().await;
                if pause(deadline).await {
                    continue;
                }
                return Err(unreachable(&group, &base, &e));
            }
            Err(e) => return Err(unreachable(&group, &base, &e)),
        };
        match next_step(&answer, directory.map.version, &base, matches!(target, Target::User(_))) {
            Step::Answer => {}
            Step::Behind => {
                if pause_for(deadline, Hold::STEP).await {
                    // Bounded by `--failover-wait`, not by the sends left.
                    sends -= 1;
                    continue;
                }
            }
            Step::Hold => {
                if held.wait(shared).await {
                    // Held, not redirected: the sends left are kept for redirects.
                    sends -= 1;
                    continue;
                }
            }
            Step::NewerMap => {
                shared.metrics.redirects.with_label_values(&["wrong_shard"]).inc();
                shared.refresh().await;
                continue;
            }
            Step::Follow(master) => {
                shared.metrics.redirects.with_label_values(&["not_master"]).inc();
                direct = Some(master);
                continue;
            }
            Step::Wait { refresh, kind } => {
                if let Some(kind) = kind {
                    shared.metrics.redirects.with_label_values(&[kind]).inc();
                }
                if refresh {
                    shared.refresh().await;
                }
                if pause(deadline).await {
                    continue;
                }
            }
        }
        held.observe(shared);
        return Ok((group, answer));
    }
    held.observe(shared);
    Err(Failure {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "too_many_redirects",
        message: format!("the request was redirected {MAX_SENDS} times without an answer; retry"),
    })
}

/// What to do with a node's answer.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Pass it on.
    Answer,
    /// The node knows a newer map: read it and send again.
    NewerMap,
    /// Send to the master the node named.
    Follow(String),
    /// A write to a range frozen for a move: hold it until the move's cutover ends.
    Hold,
    /// The node has not logged the map the router uses yet (a move's destination just
    /// after the commit): look again very soon.
    Behind,
    /// Nothing was done and it may soon be: wait a moment (reading etcd again first when
    /// `refresh`) and send again, or pass the answer on once the wait is over.
    Wait { refresh: bool, kind: Option<&'static str> },
}

/// The router's rule for an answer of the node at `base`, under a map of version `ours`;
/// `by_user` when the map chose the group (a fanned-out part is for one group whatever
/// the map says, and its `wrong_shard` is the fan-out's to handle).
fn next_step(answer: &Answer, ours: u64, base: &str, by_user: bool) -> Step {
    if answer.status != StatusCode::CONFLICT && answer.status != StatusCode::SERVICE_UNAVAILABLE {
        return Step::Answer;
    }
    let peek: ErrorPeek = serde_json::from_slice(&answer.body).unwrap_or_default();
    match peek.error.as_str() {
        "wrong_shard" if by_user => match peek.map_version.unwrap_or(0) {
            theirs if theirs > ours => Step::NewerMap,
            // The node has not logged the map the router uses yet: it soon will. It may
            // know that map already (its directory) and name its version, so the same
            // version means the same: by this map the node's group owns the user.
            _ => Step::Behind,
        },
        "not_master" => {
            match peek.master_url.filter(|u| !u.is_empty() && u.trim_end_matches('/') != base.trim_end_matches('/')) {
                Some(master) => Step::Follow(master),
                None => Step::Wait { refresh: true, kind: Some("not_master") },
            }
        }
        "starting" | "shutting_down" | "leader_lease_lapsed" => Step::Wait { refresh: true, kind: None },
        "range_frozen" if by_user => Step::Hold,
        _ => Step::Answer,
    }
}

fn unreachable(group: &GroupId, base: &str, e: &SendError) -> Failure {
    let (status, code) = match e {
        SendError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "node_timeout"),
        SendError::Connect(_) => (StatusCode::SERVICE_UNAVAILABLE, "unreachable"),
        SendError::Failed(_) => (StatusCode::BAD_GATEWAY, "node_failed"),
    };
    let outcome = if e.delivered() { " (a write may or may not have been applied: read it back)" } else { "" };
    Failure { status, code, message: format!("group {group}'s node at {base} did not answer: {e}{outcome}") }
}

/// Waits a moment before another send, unless that would pass `deadline`.
async fn pause(deadline: Instant) -> bool {
    pause_for(deadline, Duration::from_millis(50)).await
}

/// Waits `step` before another send, unless that would pass `deadline`.
async fn pause_for(deadline: Instant, step: Duration) -> bool {
    if Instant::now() + step >= deadline {
        return false;
    }
    tokio::time::sleep(step).await;
    true
}

/// How long one write to a frozen range has been held.
#[derive(Default)]
struct Hold {
    since: Option<Instant>,
}

impl Hold {
    /// Longest one look at a frozen range waits for the directory to change: a thaw (an
    /// aborted move) shows only in a node's answer.
    const STEP: Duration = Duration::from_millis(5);

    /// Waits for the cutover of the write's frozen range to end: until the directory
    /// changes (the map gives the range to another group) or a step passes, while the
    /// write has been held less than `--frozen-hold`. False once it has been held that
    /// long: the node's `range_frozen` is passed on.
    async fn wait(&mut self, shared: &Shared) -> bool {
        let since = *self.since.get_or_insert_with(|| {
            shared.metrics.redirects.with_label_values(&["range_frozen"]).inc();
            Instant::now()
        });
        let left = (since + shared.options.frozen_hold).saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let mut changes = shared.view.subscribe();
        let _ = tokio::time::timeout(left.min(Self::STEP), changes.changed()).await;
        true
    }

    /// Records how long a held write was held, once it is answered.
    fn observe(&self, shared: &Shared) {
        if let Some(since) = self.since {
            shared.metrics.held_seconds.observe(since.elapsed().as_secs_f64());
        }
    }
}

/// Waits for the directory to change (a new master), up to `deadline`.
async fn wait_for_change(shared: &Shared, deadline: Instant) -> bool {
    let mut changes = shared.view.subscribe();
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return false;
    }
    let _ = tokio::time::timeout(left.min(Duration::from_millis(250)), changes.changed()).await;
    shared.refresh().await;
    Instant::now() < deadline
}

/// Every request the router does not answer itself: one user's, sent to its group.
pub(super) async fn forward(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    let Some(rest) = path.strip_prefix(USERS) else {
        return refusal(StatusCode::NOT_FOUND, "not_found", format!("no route for {path}"));
    };
    let user = match parse_id("userId", rest.split('/').next().unwrap_or("")) {
        Ok(user) => user,
        Err(e) => return e.into_response(),
    };
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(body) => body,
        Err(e) => return refusal(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", format!("request body: {e}")),
    };
    let read = matches!(parts.method, Method::GET | Method::HEAD)
        || (parts.method == Method::POST && path.ends_with("/reads/check"));
    let token = parts.uri.query().is_some_and(|q| q.split('&').any(|kv| kv.starts_with("token=")));
    let path_and_query = parts.uri.path_and_query().map_or(path, |p| p.as_str());
    let content_type = parts.headers.get(header::CONTENT_TYPE);
    let out =
        Outgoing { method: &parts.method, path: path_and_query, content_type, body, read, any_member: read && token };
    let sent = send(&shared, Target::User(user), &out).await;
    let (group, response) = match sent {
        Ok((group, answer)) => {
            let mut response = (answer.status, answer.body).into_response();
            for (name, value) in [(header::CONTENT_TYPE, answer.content_type), (header::LOCATION, answer.location)] {
                if let Some(value) = value {
                    response.headers_mut().insert(name, value);
                }
            }
            (group.to_string(), response)
        }
        Err(failure) => ("none".to_string(), failure.into_response()),
    };
    let m = &shared.metrics;
    m.requests.with_label_values(&[&group, response.status().as_str()]).inc();
    m.seconds.with_label_values(&[&group]).observe(started.elapsed().as_secs_f64());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: serde_json::Value) -> Answer {
        Answer {
            status: StatusCode::from_u16(status).unwrap(),
            content_type: None,
            location: None,
            body: Bytes::from(body.to_string()),
        }
    }

    #[test]
    fn wrong_shard_reads_the_map_again_only_from_a_node_that_knows_a_newer_one() {
        let refused = |v: u64| answer(409, serde_json::json!({"error": "wrong_shard", "mapVersion": v}));
        assert_eq!(next_step(&refused(5), 4, "http://a", true), Step::NewerMap);
        assert_eq!(next_step(&refused(3), 4, "http://a", true), Step::Behind);
        assert_eq!(next_step(&refused(4), 4, "http://a", true), Step::Behind, "it knows the map, not logged it yet");
        assert_eq!(next_step(&refused(9), 4, "http://a", false), Step::Answer, "a fanned-out part");
    }

    #[test]
    fn not_master_follows_the_named_master_once_and_otherwise_waits_for_etcd() {
        let named = answer(409, serde_json::json!({"error": "not_master", "masterUrl": "http://b/"}));
        assert_eq!(next_step(&named, 1, "http://a", true), Step::Follow("http://b/".into()));
        assert_eq!(
            next_step(&named, 1, "http://b", true),
            Step::Wait { refresh: true, kind: Some("not_master") },
            "a node naming itself is not followed"
        );
        let unnamed = answer(409, serde_json::json!({"error": "not_master"}));
        assert_eq!(next_step(&unnamed, 1, "http://a", true), Step::Wait { refresh: true, kind: Some("not_master") });
    }

    #[test]
    fn only_answers_that_say_nothing_was_done_are_waited_out() {
        for code in ["starting", "shutting_down", "leader_lease_lapsed"] {
            let a = answer(503, serde_json::json!({ "error": code }));
            assert_eq!(next_step(&a, 1, "http://a", true), Step::Wait { refresh: true, kind: None }, "{code}");
        }
        for (status, code) in
            [(503, "not_enough_replicas"), (409, "mark_limit"), (409, "write_lost"), (504, "replication_timeout")]
        {
            let a = answer(status, serde_json::json!({ "error": code }));
            assert_eq!(next_step(&a, 1, "http://a", true), Step::Answer, "{code}");
        }
        assert_eq!(next_step(&answer(200, serde_json::json!({"read": true})), 1, "http://a", true), Step::Answer);
        assert_eq!(next_step(&answer(409, serde_json::json!("not json")), 1, "http://a", true), Step::Answer);
    }

    #[test]
    fn a_write_to_a_frozen_range_is_held_but_not_a_fanned_out_part() {
        let frozen = answer(503, serde_json::json!({"error": "range_frozen", "group": "a", "mapVersion": 3}));
        assert_eq!(next_step(&frozen, 3, "http://a", true), Step::Hold);
        assert_eq!(next_step(&frozen, 3, "http://a", false), Step::Answer);
    }
}
