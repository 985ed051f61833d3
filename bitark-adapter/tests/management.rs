//! Spring habits, between real processes: the actuator and admin endpoints on a port of
//! their own, request ids in answers and logs, JSON logs, and health components.

mod support;

use reqwest::StatusCode;
use serde_json::Value;
use std::time::Duration;
use support::{wait_until, Node};

const WITHIN: Duration = Duration::from_secs(30);

/// The management listener's URL, once the node has logged it.
async fn management_url(node: &mut Node) -> String {
    node.wait_listening().await;
    let mut url = None;
    wait_until(WITHIN, "the management listener", async || {
        url = node
            .stderr_text()
            .split("management (actuator, admin) listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_string);
        url.is_some()
    })
    .await;
    url.unwrap()
}

async fn get(url: &str) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let response = reqwest::get(url).await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let (status, headers) = (response.status(), response.headers().clone());
    (status, headers, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn with_a_management_port_the_actuator_and_admin_leave_the_public_port() {
    let mut node = Node::builder().env("BITARK_MANAGEMENT__SERVER__PORT", 0).spawn();
    let management = management_url(&mut node).await;
    wait_until(WITHIN, "readiness on the management port", async || {
        get(&format!("{management}/actuator/health/readiness")).await.0 == StatusCode::OK
    })
    .await;
    let public = node.url();
    assert_ne!(public, management);
    for path in ["/actuator/health", "/actuator/prometheus", "/admin/digest"] {
        let (status, _, body) = get(&format!("{public}{path}")).await;
        assert_eq!((status, body["error"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")), "{path}: {body}");
        assert_eq!(get(&format!("{management}{path}")).await.0, StatusCode::OK, "{path} on the management port");
    }
    node.api().mark_read(1, 2).await.expect("the API stays on the public port");
    assert_eq!(get(&format!("{public}/openapi.json")).await.0, StatusCode::OK);
    let (status, _, _) = get(&format!("{management}/api/v1/users/1/reads/2")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "the API is not on the management port");
}

#[tokio::test]
async fn every_answer_carries_a_request_id_which_every_json_log_line_of_the_request_names() {
    let mut node = Node::builder()
        .env("BITARK_LOGGING__FORMAT", "json")
        .env("BITARK_LOG", "info,bitark_adapter::http=debug")
        .spawn();
    node.wait_ready().await;
    let client = reqwest::Client::new();
    let url = format!("{}/api/v1/users/7/reads/8", node.url());
    let given = client.put(&url).header("x-request-id", "order-4711").send().await.unwrap();
    assert_eq!(given.headers()["x-request-id"], "order-4711", "a client's id is echoed");
    let made = client.get(&url).send().await.unwrap();
    let id = made.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(id.len() == 16 && id.chars().all(|c| c.is_ascii_hexdigit()), "a made-up id: {id}");
    let bad = client.get(&url).header("x-request-id", "x".repeat(200)).send().await.unwrap();
    assert_ne!(bad.headers()["x-request-id"], "x".repeat(200).as_str(), "an overlong id is replaced");

    wait_until(WITHIN, "the request's log line", async || node.stderr_text().contains("order-4711")).await;
    let log = node.stderr_text();
    for line in log.lines().filter(|l| !l.is_empty()) {
        let parsed: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(parsed["level"].is_string() && parsed["fields"].is_object(), "{line}");
    }
    let answered: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "answered")
        .collect();
    assert!(answered.iter().any(|v| v["span"]["id"] == "order-4711" && v["fields"]["status"] == 200), "{log}");
    assert!(answered.iter().any(|v| v["span"]["id"] == id.as_str()), "{log}");
}

#[tokio::test]
async fn health_shows_the_wal_the_disk_and_replication_with_their_details() {
    let mut node = Node::builder().spawn();
    node.wait_ready().await;
    node.api().mark_read(1, 1).await.unwrap();
    let (status, _, body) = get(&format!("{}/actuator/health", node.url())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let components = &body["components"];
    assert_eq!(components["wal"]["status"], "UP", "{body}");
    assert_eq!(components["wal"]["details"]["durableLsn"], 1, "{body}");
    assert_eq!(components["disk"]["status"], "UP", "{body}");
    let disk = &components["disk"]["details"];
    assert!(disk["free"].as_u64().unwrap() <= disk["total"].as_u64().unwrap(), "{body}");
    assert_eq!(disk["threshold"], 64 << 20, "one WAL segment: {body}");
    assert_eq!(components["replication"]["details"]["role"], "standalone", "{body}");
    assert_eq!(components["liveness"]["status"], "UP");
    assert_eq!(components["readiness"]["status"], "UP");
}
