//! The cross-user reads through a router: the users are split by owning group, each
//! group's master answers its part (all parts at once), and the answers are put back in
//! request order. The partial-failure rule is `crate::http::receipts`': a group that
//! cannot answer leaves `null`s and one entry in `unavailable`; a group that refuses the
//! request itself (400, 413) fails the whole request with its answer, since every group
//! would; when no group answers the request fails with the first group's error.

use super::forward::{refusal, send, Failure, Outgoing, Target};
use super::Shared;
use crate::http::extract::parse_id;
use crate::http::receipts::{GroupFailure, PairsRequest, ReadersRequest, ReceiptsResult, UserMsgPair};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bitark_common::GroupId;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

/// Rounds of splitting again after a group named a newer map.
const ROUNDS: usize = 3;

/// `POST /api/v1/messages/{msgId}/readers` for users of every group.
pub(super) async fn readers(State(shared): State<Arc<Shared>>, Path(msg): Path<String>, body: Bytes) -> Response {
    let started = Instant::now();
    let response = readers_answer(&shared, &msg, &body).await;
    counted(&shared, started, response)
}

async fn readers_answer(shared: &Shared, msg: &str, body: &Bytes) -> Response {
    if let Err(e) = parse_id("msgId", msg) {
        return e.into_response();
    }
    let request: ReadersRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return invalid_body(&e),
    };
    let users: Vec<u64> = request.user_ids.iter().map(|u| u.0).collect();
    let path = format!("/api/v1/messages/{msg}/readers");
    let part = |indices: &[usize]| {
        let ids: Vec<_> = indices.iter().map(|&i| request.user_ids[i]).collect();
        serde_json::to_vec(&ReadersRequest { user_ids: ids }).expect("ids serialize")
    };
    fan_out(shared, &users, &path, part).await
}

/// `POST /api/v1/reads/check` for users of every group.
pub(super) async fn pairs(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let started = Instant::now();
    let response = pairs_answer(&shared, &body).await;
    counted(&shared, started, response)
}

async fn pairs_answer(shared: &Shared, body: &Bytes) -> Response {
    let request: PairsRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return invalid_body(&e),
    };
    let users: Vec<u64> = request.pairs.iter().map(|p| p.user_id.0).collect();
    let part = |indices: &[usize]| {
        let pairs: Vec<UserMsgPair> = indices.iter().map(|&i| request.pairs[i]).collect();
        serde_json::to_vec(&PairsRequest { pairs }).expect("pairs serialize")
    };
    fan_out(shared, &users, "/api/v1/reads/check", part).await
}

/// Counts a cross-user read under the group label `fanout`.
fn counted(shared: &Shared, started: Instant, response: Response) -> Response {
    let m = &shared.metrics;
    m.requests.with_label_values(&["fanout", response.status().as_str()]).inc();
    m.seconds.with_label_values(&["fanout"]).observe(started.elapsed().as_secs_f64());
    response
}

fn invalid_body(e: &serde_json::Error) -> Response {
    refusal(StatusCode::BAD_REQUEST, "invalid_body", format!("the request body is not valid: {e}"))
}

/// Splits `users` (by index) over their groups, sends each group the body `part` builds
/// for its indices, and merges the answers in request order.
async fn fan_out(shared: &Shared, users: &[u64], path: &str, part: impl Fn(&[usize]) -> Vec<u8>) -> Response {
    let mut read: Vec<Option<bool>> = vec![None; users.len()];
    let mut unavailable: Vec<GroupFailure> = Vec::new();
    let mut pending: Vec<usize> = (0..users.len()).collect();
    let json = HeaderValue::from_static("application/json");
    for round in 0..ROUNDS {
        let Some(directory) = shared.view.get() else {
            return refusal(StatusCode::SERVICE_UNAVAILABLE, "no_shard_map", "the router has read no shard map".into());
        };
        let mut by_group: BTreeMap<GroupId, Vec<usize>> = BTreeMap::new();
        for &i in &pending {
            by_group.entry(directory.map.owner_of(users[i]).group.clone()).or_default().push(i);
        }
        let sends = by_group.into_iter().map(|(group, indices)| {
            let body = Bytes::from(part(&indices));
            let json = &json;
            async move {
                let out = Outgoing {
                    method: &Method::POST,
                    path,
                    content_type: Some(json),
                    body,
                    read: true,
                    any_member: false,
                };
                let sent = send(shared, Target::Group(group.clone()), &out).await;
                (group, indices, sent)
            }
        });
        let answers = futures::future::join_all(sends).await;
        pending.clear();
        let last = round + 1 == ROUNDS;
        for (group, indices, sent) in answers {
            let answer = match sent {
                Ok((_, answer)) => answer,
                Err(Failure { code, message, .. }) => {
                    unavailable.push(GroupFailure { group: group.to_string(), error: code.into(), message });
                    continue;
                }
            };
            if answer.status.is_success() {
                match serde_json::from_slice::<ReceiptsResult>(&answer.body) {
                    Ok(part) if part.read.len() == indices.len() => {
                        for (i, flag) in indices.iter().zip(part.read) {
                            read[*i] = flag;
                        }
                    }
                    _ => unavailable.push(GroupFailure {
                        group: group.to_string(),
                        error: "bad_answer".into(),
                        message: "the group's answer does not hold one flag per user".into(),
                    }),
                }
                continue;
            }
            let error: serde_json::Value = serde_json::from_slice(&answer.body).unwrap_or_default();
            let code = error["error"].as_str().unwrap_or("").to_string();
            if code == "wrong_shard" && !last {
                // The map moved under the request: split these users again.
                shared.refresh().await;
                pending.extend(indices);
                continue;
            }
            if answer.status.is_client_error() && code != "wrong_shard" {
                return (answer.status, answer.body).into_response();
            }
            let message = error["message"].as_str().unwrap_or("").to_string();
            unavailable.push(GroupFailure { group: group.to_string(), error: code, message });
        }
        if pending.is_empty() {
            break;
        }
    }
    if !users.is_empty() && read.iter().all(Option::is_none) {
        if let Some(first) = unavailable.first() {
            let message = format!("no group answered; group {}: {}", first.group, first.message);
            return refusal(StatusCode::SERVICE_UNAVAILABLE, "no_group_answered", message);
        }
    }
    axum::Json(ReceiptsResult { read, unavailable }).into_response()
}
