//! Writes that answer with an epoch and a token (stage 7), and the checks on them that
//! the fencing and failover tests share.

use super::cluster::replication_status;
use super::Node;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::time::Duration;

/// Longest [`converged`] waits.
pub const CONVERGE: Duration = Duration::from_secs(30);

/// One HTTP call: status, JSON body (`Null` when none) and the `Location` header.
pub async fn call(method: Method, url: &str, body: Option<Value>) -> (StatusCode, Value, Option<String>) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("HTTP client");
    let mut request = client.request(method.clone(), url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status();
    let location = response.headers().get("location").and_then(|v| v.to_str().ok()).map(str::to_string);
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body, location)
}

/// An acknowledged write: its LSN, epoch and token.
#[derive(Clone, Debug)]
pub struct Acked {
    pub user: u64,
    pub msg: u64,
    pub lsn: u64,
    pub epoch: u64,
    pub token: String,
}

/// Marks `msg` of `user` read on `node`; `Ok` with what the answer said, `Err` with
/// the status and body of a refusal.
pub async fn mark(node: &Node, user: u64, msg: u64, query: &str) -> Result<Acked, (StatusCode, Value)> {
    let url = format!("{}/api/v1/users/{user}/reads/{msg}{query}", node.url());
    let (status, body, _) = call(Method::PUT, &url, None).await;
    if status != StatusCode::OK {
        return Err((status, body));
    }
    let (lsn, epoch) = (body["lsn"].as_u64().unwrap(), body["epoch"].as_u64().unwrap());
    let token = body["token"].as_str().unwrap().to_string();
    assert_eq!(token, format!("{epoch}:{lsn}"), "the token is `<epoch>:<lsn>`");
    Ok(Acked { user, msg, lsn, epoch, token })
}

/// `GET …/reads/{msg}?token=` on `node`: status and body.
pub async fn read_with_token(node: &Node, acked: &Acked) -> (StatusCode, Value) {
    let url = format!("{}/api/v1/users/{}/reads/{}?token={}", node.url(), acked.user, acked.msg, acked.token);
    let (status, body, _) = call(Method::GET, &url, None).await;
    (status, body)
}

/// Waits until every node shows the same applied LSN and digest, twice in a row.
pub async fn converged(nodes: &[&Node]) {
    let mut previous = None;
    let done = super::poll_until(CONVERGE, async || {
        let mut seen = Vec::new();
        for node in nodes {
            match node.api().digest().await {
                Ok(d) => seen.push((d.applied_lsn, d.digest)),
                Err(_) => return false,
            }
        }
        let same = seen.windows(2).all(|w| w[0] == w[1]);
        let stable = previous.as_ref() == Some(&seen);
        previous = Some(seen);
        same && stable
    })
    .await;
    if !done {
        let mut report = format!("the nodes did not converge within {CONVERGE:?}; last seen {previous:?}\n");
        for node in nodes {
            report += &format!("{}: {}\n", node.url(), replication_status(node).await);
        }
        panic!("{report}");
    }
}
