//! The HTTP contract, in process: every route answers as documented, and every kind of
//! bad input gets the documented status and a JSON error naming the problem, with
//! nothing half-applied.

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use bitark_adapter::app::AppState;
use bitark_adapter::config::Secret;
use bitark_adapter::http::router;
use bitark_adapter::AppConfig;
use bitark_engine::Node;
use bitark_infra::{FsyncPolicy, Metrics};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use std::time::Duration;
use tower::ServiceExt;

struct Server {
    app: bitark_adapter::http::Api,
    state: AppState,
    node: Node,
    _dir: tempfile::TempDir,
}

fn config(dir: &std::path::Path) -> AppConfig {
    let mut config = AppConfig::default();
    config.engine.node.data_dir = dir.to_path_buf();
    config.engine.wal.fsync = FsyncPolicy::Never;
    config.engine.limits.max_batch = 100;
    config.engine.limits.max_range = 1000;
    config.engine.reads.min_lsn_wait = Duration::from_millis(100);
    config
}

fn start_with(edit: impl FnOnce(&mut AppConfig)) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    edit(&mut config);
    let metrics = Metrics::standalone();
    let node = Node::open(config.engine.clone(), metrics.clone()).unwrap();
    let state = AppState::new(config, metrics);
    state.set_node(node.clone());
    Server { app: router(state.clone()), state, node, _dir: dir }
}

fn start() -> Server {
    start_with(|_| {})
}

impl Drop for Server {
    fn drop(&mut self) {
        self.node.shutdown();
    }
}

impl Server {
    async fn raw(&self, request: Request<Body>) -> (StatusCode, String, axum::http::HeaderMap) {
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned(), headers)
    }

    async fn call(&self, method: Method, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut builder = Request::builder().method(method).uri(uri);
        let body = match body {
            Some(v) => {
                builder = builder.header(header::CONTENT_TYPE, "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        let (status, text, headers) = self.raw(builder.body(body).unwrap()).await;
        if !status.is_success() {
            let ct = headers.get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap().to_string());
            assert_eq!(ct.as_deref(), Some("application/json"), "error bodies are JSON: {text}");
        }
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn get(&self, uri: &str) -> (StatusCode, Value) {
        self.call(Method::GET, uri, None).await
    }

    async fn post(&self, uri: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, uri, Some(body)).await
    }
}

fn assert_error(result: &(StatusCode, Value), status: StatusCode, code: &str, mentions: &str) {
    assert_eq!(result.0, status, "{}", result.1);
    assert_eq!(result.1["error"], code, "{}", result.1);
    let message = result.1["message"].as_str().unwrap();
    assert!(message.contains(mentions), "message {message:?} should mention {mentions:?}");
}

#[tokio::test]
async fn marks_round_trip_over_the_full_id_range() {
    let s = start();
    let big = "9223372036854775813"; // 2^63 + 5
    let (status, body) = s.call(Method::PUT, &format!("/api/v1/users/18446744073709551615/reads/{big}"), None).await;
    assert_eq!((status, body["lsn"].as_u64()), (StatusCode::OK, Some(1)));
    let (_, body) = s.get(&format!("/api/v1/users/18446744073709551615/reads/{big}")).await;
    assert_eq!(body, json!({"read": true, "lsn": 1}));
    let (_, body) = s
        .post("/api/v1/users/18446744073709551615/reads/check", json!({"msgIds": [big, 5, "9223372036854775812"]}))
        .await;
    assert_eq!(body["read"], json!([true, false, false]));

    let (status, body) = s.call(Method::DELETE, &format!("/api/v1/users/18446744073709551615/reads/{big}"), None).await;
    assert_eq!((status, body["lsn"].as_u64()), (StatusCode::OK, Some(2)));
    let (_, body) = s.get(&format!("/api/v1/users/18446744073709551615/reads/{big}")).await;
    assert_eq!(body, json!({"read": false, "lsn": 2}));
}

#[tokio::test]
async fn batch_range_check_and_unread_count_agree() {
    let s = start();
    let (status, _) = s.post("/api/v1/users/7/reads", json!({"msgIds": [1, "3", 5]})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = s.post("/api/v1/users/7/reads", json!({"from": "100", "to": 199})).await;
    assert_eq!((status, body["lsn"].as_u64()), (StatusCode::OK, Some(2)));
    let (_, body) = s.post("/api/v1/users/7/reads/check", json!({"msgIds": [5, 4, 3, 100, 199, 200]})).await;
    assert_eq!(body["read"], json!([true, false, true, true, true, false]));
    let (_, body) = s.get("/api/v1/users/7/unread-count?from=0&to=299").await;
    assert_eq!(body["unread"], 300 - 3 - 100);
    let (_, body) = s.get("/api/v1/users/8/unread-count?from=10&to=10").await;
    assert_eq!(body["unread"], 1);
}

#[tokio::test]
async fn malformed_ids_are_400_naming_the_parameter() {
    let s = start();
    assert_error(&s.get("/api/v1/users/abc/reads/1").await, StatusCode::BAD_REQUEST, "invalid_id", "userId");
    assert_error(&s.get("/api/v1/users/1/reads/-1").await, StatusCode::BAD_REQUEST, "invalid_id", "negative");
    assert_error(
        &s.call(Method::PUT, "/api/v1/users/1/reads/18446744073709551616", None).await,
        StatusCode::BAD_REQUEST,
        "invalid_id",
        "msgId",
    );
    assert_error(&s.get("/api/v1/users/1/reads/1?minLsn=x").await, StatusCode::BAD_REQUEST, "invalid_id", "minLsn");
    assert_error(&s.get("/api/v1/users/1/unread-count?from=5").await, StatusCode::BAD_REQUEST, "invalid_query", "to");
    assert_error(
        &s.get("/api/v1/users/1/unread-count?from=9&to=5").await,
        StatusCode::BAD_REQUEST,
        "invalid_range",
        "9",
    );
    assert_error(
        &s.get("/api/v1/users/1/unread-count?from=0&to=18446744073709551615").await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "range_too_large",
        "limits.max-range",
    );
    assert_eq!(s.node.applied_lsn().0, 0, "nothing was written");
}

#[tokio::test]
async fn bad_bodies_are_rejected_and_nothing_is_applied() {
    let s = start();
    let cases = [
        (json!({"msgIds": [1, -2]}), "negative"),
        (json!({"msgIds": [1, 2.5]}), "not an integer"),
        (json!({"msgIds": ["1x"]}), "decimal integer"),
        (json!({"msgIds": [18446744073709551615u64, "18446744073709551616"]}), "decimal integer"),
        (json!({"msgIds": [1], "from": 1, "to": 2}), "either"),
        (json!({"from": 1}), "either"),
        (json!({"msgIds": [1], "extra": true}), "unknown field"),
        (json!([1, 2]), "invalid"),
    ];
    for (body, mentions) in cases {
        assert_error(&s.post("/api/v1/users/1/reads", body).await, StatusCode::BAD_REQUEST, "invalid_body", mentions);
    }
    assert_error(
        &s.post("/api/v1/users/1/reads", json!({"msgIds": []})).await,
        StatusCode::BAD_REQUEST,
        "empty_batch",
        "empty",
    );
    assert_error(
        &s.post("/api/v1/users/1/reads", json!({"from": 10, "to": 9})).await,
        StatusCode::BAD_REQUEST,
        "invalid_range",
        "after",
    );
    let request = Request::post("/api/v1/users/1/reads")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{\"msgIds\": [1, 2"))
        .unwrap();
    let (status, text, _) = s.raw(request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(text.contains("invalid_body") && text.contains("EOF"), "{text}");
    assert_eq!(s.node.applied_lsn().0, 0, "no bad request reached the log");
    assert_eq!(s.node.mark_count(), 0);
}

#[tokio::test]
async fn wrong_content_type_is_415() {
    let s = start();
    for content_type in [None, Some("text/plain"), Some("application/x-www-form-urlencoded")] {
        let mut builder = Request::post("/api/v1/users/1/reads");
        if let Some(ct) = content_type {
            builder = builder.header(header::CONTENT_TYPE, ct);
        }
        let (status, text, _) = s.raw(builder.body(Body::from(r#"{"msgIds":[1]}"#)).unwrap()).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{text}");
        assert!(text.contains("application/json"), "{text}");
    }
    let request = Request::post("/api/v1/users/1/reads")
        .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
        .body(Body::from(r#"{"msgIds":[1]}"#))
        .unwrap();
    assert_eq!(s.raw(request).await.0, StatusCode::OK, "a charset parameter is fine");
}

/// A POST with no body and no Content-Type is the empty object: 400 naming the field an
/// endpoint needs, where a body with the wrong type is still 415.
#[tokio::test]
async fn a_bodyless_request_names_the_field_it_lacks() {
    let s = start();
    for (method, uri, named) in [
        ("POST", "/admin/demote", "masterUrl"),
        ("PUT", "/admin/replication/features", "`stage`, `features`"),
        ("POST", "/api/v1/users/1/reads/check", "msgIds"),
    ] {
        let request = Request::builder().method(method).uri(uri).body(Body::empty()).unwrap();
        let (status, text, _) = s.raw(request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {uri}: {text}");
        assert!(text.contains(named), "{method} {uri}: {text}");
    }
    let request = Request::post("/admin/demote").header(header::CONTENT_LENGTH, "2").body(Body::from("{}")).unwrap();
    assert_eq!(s.raw(request).await.0, StatusCode::UNSUPPORTED_MEDIA_TYPE, "a body without a Content-Type");
    assert_eq!(s.node.applied_lsn().0, 0);
}

/// A backup's snapshot read from past its end, however far, is an empty body, never a
/// failed seek; a backup id that is no id is 400 `invalid_id` on every backup endpoint.
#[tokio::test]
async fn backup_reads_past_the_end_are_empty_and_bad_ids_are_named() {
    let s = start();
    s.call(Method::PUT, "/api/v1/users/1/reads/2", None).await;
    let (status, started) = s.call(Method::POST, "/admin/backup", None).await;
    assert_eq!(status, StatusCode::OK, "{started}");
    let id = started["id"].as_str().unwrap().to_string();
    for offset in ["0", "9223372036854775813", "18446744073709551615"] {
        let uri = format!("/admin/backup/{id}/snapshot?offset={offset}");
        let (status, text, _) = s.raw(Request::get(&uri).body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {text}");
        assert_eq!(text.is_empty(), offset != "0", "{uri}: {} bytes", text.len());
    }
    for (method, uri) in [
        (Method::DELETE, "/admin/backup/null%2Cnull"),
        (Method::GET, "/admin/backup/x/snapshot"),
        (Method::GET, "/admin/backup/-1/wal?from=1"),
    ] {
        assert_error(&s.call(method, uri, None).await, StatusCode::BAD_REQUEST, "invalid_id", "decimal integer");
    }
    assert_eq!(s.call(Method::DELETE, &format!("/admin/backup/{id}"), None).await.0, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn oversized_batches_and_ranges_are_413_and_not_half_applied() {
    let s = start();
    let ids: Vec<u64> = (0..101).collect();
    assert_error(
        &s.post("/api/v1/users/1/reads", json!({ "msgIds": ids })).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "batch_too_large",
        "limits.max-batch",
    );
    assert_error(
        &s.post("/api/v1/users/1/reads/check", json!({ "msgIds": ids })).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "batch_too_large",
        "101",
    );
    assert_error(
        &s.post("/api/v1/users/1/reads", json!({"from": 0, "to": 1000})).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "range_too_large",
        "limits.max-range",
    );
    let huge = format!("{{\"msgIds\": [{}]}}", vec!["1"; 20_000].join(","));
    let request = Request::post("/api/v1/users/1/reads")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(huge))
        .unwrap();
    let (status, text, _) = s.raw(request).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{text}");
    assert!(text.contains("body_too_large"), "{text}");
    assert_eq!((s.node.applied_lsn().0, s.node.mark_count()), (0, 0));
    let (status, _) = s.post("/api/v1/users/1/reads", json!({"from": 0, "to": 999})).await;
    assert_eq!(status, StatusCode::OK, "a range of exactly max-range ids is accepted");
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let s = start();
    assert_error(&s.get("/api/v1/nothing").await, StatusCode::NOT_FOUND, "not_found", "/api/v1/nothing");
    assert_error(
        &s.call(Method::PATCH, "/api/v1/users/1/reads/2", None).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "PATCH",
    );
    assert_error(&s.get("/api/v1/users/1/reads").await, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "GET");
}

#[tokio::test]
async fn min_lsn_waits_for_a_write_and_times_out_clearly() {
    let s = start_with(|c| c.engine.reads.min_lsn_wait = Duration::from_secs(30));
    let reader = {
        let app = s.app.clone();
        tokio::spawn(async move {
            let request = Request::get("/api/v1/users/3/reads/4?minLsn=1").body(Body::empty()).unwrap();
            let response = app.oneshot(request).await.unwrap();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            serde_json::from_slice::<Value>(&bytes).unwrap()
        })
    };
    // The write goes only once the read is waiting for it.
    let waiting = &s.state.metrics().reads_waiting_for_lsn;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while waiting.get() != 1 {
        assert!(std::time::Instant::now() < deadline, "the read never waited");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (status, _) = s.call(Method::PUT, "/api/v1/users/3/reads/4", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(reader.await.unwrap(), json!({"read": true, "lsn": 1}), "the read saw the write it waited for");
    assert_eq!(waiting.get(), 0);

    // On a master, an LSN it has not reached does not exist yet: nothing to read elsewhere.
    let s = start();
    let answer = s.get("/api/v1/users/3/reads/4?minLsn=5").await;
    assert_error(&answer, StatusCode::SERVICE_UNAVAILABLE, "lsn_not_reached", "minLsn 5");
    let message = answer.1["message"].as_str().unwrap();
    assert!(message.contains("master") && !message.contains("read from the master"), "{message}");
}

#[tokio::test]
async fn ids_must_match_the_documented_pattern_exactly() {
    let s = start();
    for bad in ["+1", "%2B1", "00000000000000000000001", "%201"] {
        let answer = s.get(&format!("/api/v1/users/{bad}/reads/1")).await;
        assert_error(&answer, StatusCode::BAD_REQUEST, "invalid_id", "userId");
        let answer = s.get(&format!("/api/v1/users/1/unread-count?from={bad}&to=9")).await;
        assert_error(&answer, StatusCode::BAD_REQUEST, "invalid_id", "from");
    }
    for bad in ["+1", "00000000000000000000001", " 1"] {
        let answer = s.post("/api/v1/users/1/reads", json!({ "msgIds": [bad] })).await;
        assert_error(&answer, StatusCode::BAD_REQUEST, "invalid_body", "decimal integer");
    }
    assert_eq!(s.node.applied_lsn().0, 0, "nothing was written");
    // Twenty digits, leading zeros included, are what the pattern allows.
    let (status, body) =
        s.call(Method::PUT, "/api/v1/users/00000000000000000001/reads/00000000000000000002", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(s.node.is_read(1, 2));
}

#[tokio::test]
async fn unknown_methods_fold_into_one_metric_label() {
    let s = start();
    for method in ["FOOBAR", "BREW", "X-ANYTHING"] {
        let request = Request::builder().method(method).uri("/api/v1/users/1/reads/2").body(Body::empty()).unwrap();
        let (status, text, _) = s.raw(request).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{text}");
    }
    let (_, text, _) = s.raw(Request::get("/actuator/prometheus").body(Body::empty()).unwrap()).await;
    assert!(!text.contains("FOOBAR") && !text.contains("BREW"), "a client-chosen method became a label");
    assert!(
        text.contains(r#"bitark_http_request_duration_seconds_count{method="OTHER",route="/api/v1/users/{userId}/reads/{msgId}",status="405"} 3"#),
        "unknown methods are counted under OTHER"
    );
}

#[tokio::test]
async fn a_user_cannot_hold_more_marks_than_the_limit() {
    let s = start_with(|c| c.engine.limits.max_marks_per_user = 10);
    let ids: Vec<u64> = (0..11).collect();
    let answer = s.post("/api/v1/users/1/reads", json!({ "msgIds": ids })).await;
    assert_error(&answer, StatusCode::CONFLICT, "mark_limit", "limits.max-marks-per-user");
    assert_eq!(s.node.mark_count(), 0, "nothing of a refused write is applied");
    let (status, _) = s.post("/api/v1/users/1/reads", json!({ "from": 0, "to": 9 })).await;
    assert_eq!(status, StatusCode::OK, "exactly the limit is fine");
    let (status, _) = s.call(Method::PUT, "/api/v1/users/1/reads/5", None).await;
    assert_eq!(status, StatusCode::OK, "marking a read id again adds nothing");
    assert_error(
        &s.call(Method::PUT, "/api/v1/users/1/reads/10", None).await,
        StatusCode::CONFLICT,
        "mark_limit",
        "10",
    );
    let (status, _) = s.call(Method::DELETE, "/api/v1/users/1/reads/3", None).await;
    assert_eq!(status, StatusCode::OK, "unmarking is always allowed");
    let (status, _) = s.call(Method::PUT, "/api/v1/users/1/reads/10", None).await;
    assert_eq!(status, StatusCode::OK, "room again after an unmark");
    let (status, _) = s.call(Method::PUT, "/api/v1/users/2/reads/10", None).await;
    assert_eq!(status, StatusCode::OK, "the limit is per user");
}

#[tokio::test]
async fn above_the_memory_limit_writes_that_add_marks_get_507_and_reads_go_on() {
    // One byte: any process is above it.
    let s = start_with(|c| c.engine.limits.max_memory = bytesize::ByteSize::b(1));
    let answer = s.call(Method::PUT, "/api/v1/users/1/reads/2", None).await;
    assert_error(&answer, StatusCode::INSUFFICIENT_STORAGE, "memory_limit", "limits.max-memory");
    assert_error(
        &s.post("/api/v1/users/1/reads", json!({ "msgIds": [1, 2] })).await,
        StatusCode::INSUFFICIENT_STORAGE,
        "memory_limit",
        "reads and unmarks still work",
    );
    let (status, body) = s.get("/api/v1/users/1/reads/2").await;
    assert_eq!((status, body["read"].as_bool()), (StatusCode::OK, Some(false)));
    let (status, _) = s.call(Method::DELETE, "/api/v1/users/1/reads/2", None).await;
    assert_eq!(status, StatusCode::OK, "unmarks free memory and are allowed");
    let (_, text, _) = s.raw(Request::get("/actuator/prometheus").body(Body::empty()).unwrap()).await;
    assert!(text.contains("bitark_memory_limit_bytes 1\n"), "the limit is exported");
    assert!(text.contains(r#"bitark_writes_rejected_total{reason="memory-limit"} 2"#), "refusals are counted");
}

#[tokio::test]
async fn a_failed_snapshot_says_what_failed_and_names_files_only_to_the_admin() {
    for token in [None, Some("s3cret-token")] {
        let s = start_with(|c| {
            if let Some(token) = token {
                c.security.admin_token = Secret::new(token);
            }
        });
        let data_dir = s.node.config().node.data_dir.clone();
        // The snapshot directory is gone and a file stands in its place.
        std::fs::remove_dir_all(data_dir.join("snapshots")).unwrap();
        std::fs::write(data_dir.join("snapshots"), b"not a directory").unwrap();
        let mut request = Request::post("/admin/snapshot");
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let (status, text, _) = s.raw(request.body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{text}");
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["error"], "snapshot_failed", "{body}");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains("snapshot failed") && message.contains("directory"), "{message}");
        let path = data_dir.display().to_string();
        assert_eq!(message.contains(&path), token.is_some(), "paths only for the admin: {message}");
    }
}

#[tokio::test]
async fn a_too_long_request_target_is_414_with_a_json_body() {
    let s = start();
    let target = format!("/api/v1/users/1/reads/1?pad={}", "x".repeat(9000));
    assert_error(&s.get(&target).await, StatusCode::URI_TOO_LONG, "uri_too_long", "9");
}

#[tokio::test]
async fn requests_before_recovery_and_during_shutdown_get_503() {
    let dir = tempfile::tempdir().unwrap();
    let state = AppState::new(config(dir.path()), Metrics::standalone());
    let app = router(state.clone());
    let response =
        app.clone().oneshot(Request::get("/api/v1/users/1/reads/1").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&bytes).contains("starting"));
    let readiness =
        app.clone().oneshot(Request::get("/actuator/health/readiness").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(readiness.status(), StatusCode::SERVICE_UNAVAILABLE);

    let s = start();
    s.state.begin_shutdown();
    assert_error(
        &s.call(Method::PUT, "/api/v1/users/1/reads/1", None).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "shutting_down",
        "shutting down",
    );
}

#[tokio::test]
async fn admin_endpoints_require_the_configured_token() {
    let s = start_with(|c| c.security.admin_token = Secret::new("s3cret-token"));
    for auth in [None, Some("Bearer wrong"), Some("Bearer s3cret-toke"), Some("s3cret-token")] {
        let mut builder = Request::get("/admin/digest");
        if let Some(a) = auth {
            builder = builder.header(header::AUTHORIZATION, a);
        }
        let (status, text, headers) = s.raw(builder.body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth:?}: {text}");
        assert_eq!(headers.get(header::WWW_AUTHENTICATE).unwrap(), "Bearer");
    }
    s.call(Method::PUT, "/api/v1/users/1/reads/2", None).await;
    let request = Request::post("/admin/snapshot")
        .header(header::AUTHORIZATION, "Bearer s3cret-token")
        .body(Body::empty())
        .unwrap();
    let (status, text, _) = s.raw(request).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let snapshot: Value = serde_json::from_str(&text).unwrap();
    assert_eq!((snapshot["lsn"].as_u64(), snapshot["marks"].as_u64()), (Some(1), Some(1)));
    let request =
        Request::get("/admin/digest").header(header::AUTHORIZATION, "Bearer s3cret-token").body(Body::empty()).unwrap();
    let digest: Value = serde_json::from_str(&s.raw(request).await.1).unwrap();
    assert_eq!((digest["appliedLsn"].as_u64(), digest["marks"].as_u64()), (Some(1), Some(1)));
    assert_eq!(digest["digest"].as_str().unwrap().len(), 32);

    let (_, config) = s.get("/actuator/configprops").await;
    assert_eq!(config["security"]["admin-token"], "******");
    assert!(!config.to_string().contains("s3cret"));
}

#[tokio::test]
async fn actuator_reports_health_info_and_prometheus_metrics() {
    let s = start();
    s.call(Method::PUT, "/api/v1/users/1/reads/2", None).await;
    s.get("/api/v1/users/x/reads/2").await;
    let (status, health) = s.get("/actuator/health").await;
    assert_eq!((status, health["status"].as_str()), (StatusCode::OK, Some("UP")));
    let (_, info) = s.get("/actuator/info").await;
    assert_eq!((info["node"]["role"].as_str(), info["appliedLsn"].as_u64()), (Some("master"), Some(1)));
    let (status, text, headers) = s.raw(Request::get("/actuator/prometheus").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers.get(header::CONTENT_TYPE).unwrap().to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    for needle in [
        r#"bitark_http_request_duration_seconds_count{method="PUT",route="/api/v1/users/{userId}/reads/{msgId}",status="200"} 1"#,
        r#"bitark_http_request_duration_seconds_count{method="GET",route="/api/v1/users/{userId}/reads/{msgId}",status="400"} 1"#,
        r#"bitark_http_request_duration_seconds_bucket{method="PUT",route="/api/v1/users/{userId}/reads/{msgId}",status="200",le="#,
        "bitark_wal_append_seconds_count 1",
        "bitark_group_commit_batch_records_count 1",
        "bitark_lsn_applied 1",
        "bitark_store_marks 1",
        "bitark_wal_segments 1",
        "bitark_recovery_duration_seconds",
    ] {
        assert!(text.contains(needle), "missing {needle}");
    }
}

#[tokio::test]
async fn served_openapi_document_is_the_checked_in_file() {
    let s = start();
    let (status, served, _) = s.raw(Request::get("/openapi.json").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let file = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi/openapi.json")).unwrap();
    assert!(
        served == file,
        "openapi/openapi.json is stale; regenerate: cargo run -p bitark-adapter --bin bitark -- openapi > openapi/openapi.json"
    );
    let doc: Value = serde_json::from_str(&served).unwrap();
    for path in [
        "/api/v1/users/{userId}/reads/{msgId}",
        "/api/v1/users/{userId}/reads",
        "/api/v1/users/{userId}/reads/check",
        "/api/v1/users/{userId}/unread-count",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is documented");
    }
    assert!(doc["components"]["schemas"]["FlexU64"]["description"].as_str().unwrap().contains("decimal string"));
}

/// No parameter of the document is a bare string: each one has a pattern, a format or
/// a list of values, so generated clients and fuzzers know what it takes.
#[tokio::test]
async fn every_documented_parameter_says_what_it_takes() {
    let s = start();
    let (_, served, _) = s.raw(Request::get("/openapi.json").body(Body::empty()).unwrap()).await;
    let doc: Value = serde_json::from_str(&served).unwrap();
    let resolve = |schema: &Value| -> Value {
        match schema["$ref"].as_str().and_then(|r| r.strip_prefix("#/components/schemas/")) {
            Some(name) => doc["components"]["schemas"][name].clone(),
            None => schema.clone(),
        }
    };
    let (mut bare, mut no_400) = (Vec::new(), Vec::new());
    for (path, operations) in doc["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            for parameter in operation["parameters"].as_array().into_iter().flatten() {
                let schema = resolve(&parameter["schema"]);
                let says = ["pattern", "format", "enum"].iter().any(|k| !schema[k].is_null())
                    || schema["type"] != "string"
                    || schema["oneOf"].is_array();
                if !says {
                    bare.push(format!("{method} {path} {}", parameter["name"]));
                }
                // A parameter the server checks can be refused: the 400 is documented.
                if !schema["pattern"].is_null() && operation["responses"]["400"].is_null() {
                    no_400.push(format!("{method} {path} {}", parameter["name"]));
                }
            }
        }
    }
    assert!(bare.is_empty(), "bare string parameters: {bare:#?}");
    assert!(no_400.is_empty(), "checked parameters whose 400 is not documented: {no_400:#?}");
}

#[tokio::test]
async fn every_request_is_counted_under_its_route_template() {
    let s = start();
    for path in [
        "/actuator/health",
        "/admin/digest",
        "/internal/replication/status",
        "/openapi.json",
        "/api/v1/users/7/unread-count?from=1&to=9",
        "/no/such/route",
    ] {
        s.raw(Request::get(path).body(Body::empty()).unwrap()).await;
    }
    let (_, text, _) = s.raw(Request::get("/actuator/prometheus").body(Body::empty()).unwrap()).await;
    for route in [
        "/actuator/health",
        "/admin/digest",
        "/internal/replication/status",
        "/openapi.json",
        "/api/v1/users/{userId}/unread-count",
        "unmatched",
    ] {
        let needle = format!(r#"bitark_http_request_duration_seconds_count{{method="GET",route="{route}","#);
        assert!(text.contains(&needle), "no request counted under {route}");
    }
}

/// A GET of one read flag with plain ids is answered without the router; the same
/// request with percent-encoded ids, a HEAD, and a malformed id go through it. All must
/// answer alike and be counted alike.
#[tokio::test]
async fn a_read_answers_alike_with_or_without_the_router() {
    let s = start();
    assert_eq!(s.call(Method::PUT, "/api/v1/users/42/reads/7", None).await.0, StatusCode::OK);
    let get = |path: &str| Request::get(path).body(Body::empty()).unwrap();
    let (direct, routed) = (
        s.raw(get("/api/v1/users/42/reads/7?minLsn=1")).await,
        s.raw(get("/api/v1/users/%34%32/reads/%37?minLsn=1")).await,
    );
    assert_eq!((direct.0, direct.1.as_str()), (StatusCode::OK, r#"{"read":true,"lsn":1}"#));
    assert_eq!((routed.0, &routed.1), (direct.0, &direct.1));
    for headers in [&direct.2, &routed.2] {
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        assert_eq!(headers[header::CONTENT_LENGTH], direct.1.len().to_string().as_str());
        assert_eq!(headers["x-request-id"].len(), 16);
    }
    let head = s.raw(Request::head("/api/v1/users/42/reads/7").body(Body::empty()).unwrap()).await;
    assert_eq!((head.0, head.1.as_str()), (StatusCode::OK, ""));
    // Errors are the handler's own, on either path.
    assert_error(&s.get("/api/v1/users/42/reads/7?minLsn=x").await, StatusCode::BAD_REQUEST, "invalid_id", "minLsn");
    assert_error(
        &s.get("/api/v1/users/42/reads/7?minLsn=9").await,
        StatusCode::SERVICE_UNAVAILABLE,
        "lsn_not_reached",
        "9",
    );
    assert_error(&s.get("/api/v1/users/42/reads/-7").await, StatusCode::BAD_REQUEST, "invalid_id", "never negative");
    assert_error(&s.get("/api/v1/users/42/reads/7?token=7").await, StatusCode::BAD_REQUEST, "invalid_token", "token");
    let (_, text, _) = s.raw(get("/actuator/prometheus")).await;
    for (method, status, count) in [("GET", 200, 2), ("HEAD", 200, 1), ("GET", 400, 3), ("GET", 503, 1)] {
        let needle = format!(
            r#"bitark_http_request_duration_seconds_count{{method="{method}",route="/api/v1/users/{{userId}}/reads/{{msgId}}",status="{status}"}} {count}"#
        );
        assert!(text.contains(&needle), "missing {needle}");
    }
}

#[tokio::test]
async fn a_write_answers_alike_with_or_without_the_router() {
    let s = start();
    let request = |method: Method, path: &str| Request::builder().method(method).uri(path).body(Body::empty()).unwrap();
    // Plain decimal ids are answered by `Api` itself; percent-encoded ones by the router.
    let direct = s.raw(request(Method::PUT, "/api/v1/users/42/reads/7")).await;
    let routed = s.raw(request(Method::PUT, "/api/v1/users/%34%32/reads/%38")).await;
    assert_eq!((direct.0, direct.1.as_str()), (StatusCode::OK, r#"{"lsn":1,"epoch":1,"token":"1:1"}"#));
    assert_eq!((routed.0, routed.1.as_str()), (StatusCode::OK, r#"{"lsn":2,"epoch":1,"token":"1:2"}"#));
    for (_, body, headers) in [&direct, &routed] {
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        assert_eq!(headers[header::CONTENT_LENGTH], body.len().to_string().as_str());
        assert_eq!(headers["x-request-id"].len(), 16);
    }
    assert!(s.node.is_read(42, 7) && s.node.is_read(42, 8), "both writes are applied");
    let direct = s.raw(request(Method::DELETE, "/api/v1/users/42/reads/7")).await;
    let routed = s.raw(request(Method::DELETE, "/api/v1/users/%34%32/reads/%38")).await;
    assert_eq!((direct.0, direct.1.as_str()), (StatusCode::OK, r#"{"lsn":3,"epoch":1,"token":"1:3"}"#));
    assert_eq!((routed.0, routed.1.as_str()), (StatusCode::OK, r#"{"lsn":4,"epoch":1,"token":"1:4"}"#));
    assert!(!s.node.is_read(42, 7) && !s.node.is_read(42, 8), "both unmarks are applied");
    // Errors are the handler's own, on either path, and nothing is logged for them.
    for path in ["/api/v1/users/42/reads/9?ack=sometimes", "/api/v1/users/%34%32/reads/9?ack=sometimes"] {
        let refused = s.call(Method::PUT, path, None).await;
        assert_error(&refused, StatusCode::BAD_REQUEST, "invalid_query", "ack");
    }
    assert_error(
        &s.call(Method::PUT, "/api/v1/users/42/reads/x", None).await,
        StatusCode::BAD_REQUEST,
        "invalid_id",
        "msgId",
    );
    assert_eq!(s.node.applied_lsn().0, 4, "a refused write is not logged");
    let (_, text, _) = s.raw(request(Method::GET, "/actuator/prometheus")).await;
    for (method, status, count) in [("PUT", 200, 2), ("DELETE", 200, 2), ("PUT", 400, 3)] {
        let needle = format!(
            r#"bitark_http_request_duration_seconds_count{{method="{method}",route="/api/v1/users/{{userId}}/reads/{{msgId}}",status="{status}"}} {count}"#
        );
        assert!(text.contains(&needle), "missing {needle}");
    }
}

#[tokio::test]
async fn internal_bodies_may_exceed_the_api_bound() {
    let s = start();
    // 3 MiB: over the API's bound for this configuration and over axum's 2 MB default.
    let body = json!({ "pad": "x".repeat(3 << 20) });
    let (status, answer) = s.post("/internal/replication/heartbeat", body.clone()).await;
    assert_ne!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    let (status, answer) = s.post("/api/v1/users/1/reads", body).await;
    assert_error(&(status, answer), StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "size limit");
}

#[tokio::test]
async fn read_receipts_and_pair_checks_answer_in_request_order() {
    let s = start();
    for (user, msg) in [(1u64, 10u64), (3, 10), (3, 11), (u64::MAX, 10)] {
        assert_eq!(s.call(Method::PUT, &format!("/api/v1/users/{user}/reads/{msg}"), None).await.0, StatusCode::OK);
    }
    let users = json!({"userIds": [3, "1", 2, "18446744073709551615", 3]});
    let (status, body) = s.post("/api/v1/messages/10/readers", users).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"read": [true, true, false, true, true], "unavailable": []}));
    let pairs =
        json!({"pairs": [{"userId": 3, "msgId": 11}, {"userId": 1, "msgId": 11}, {"userId": "1", "msgId": "10"}]});
    let (status, body) = s.post("/api/v1/reads/check", pairs).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["read"], json!([true, false, true]));

    let many: Vec<u64> = (0..101).collect();
    let too_many = s.post("/api/v1/messages/10/readers", json!({ "userIds": many })).await;
    assert_error(&too_many, StatusCode::PAYLOAD_TOO_LARGE, "batch_too_large", "101");
    let bad = s.post("/api/v1/messages/10/readers", json!({"userIds": [-1]})).await;
    assert_error(&bad, StatusCode::BAD_REQUEST, "invalid_body", "negative");
    let bad = s.post("/api/v1/messages/x/readers", json!({"userIds": [1]})).await;
    assert_error(&bad, StatusCode::BAD_REQUEST, "invalid_id", "msgId");
    let bad = s.post("/api/v1/reads/check", json!({"pairs": [{"userId": 1}]})).await;
    assert_error(&bad, StatusCode::BAD_REQUEST, "invalid_body", "msgId");
}

#[tokio::test]
async fn a_user_of_another_group_is_409_wrong_shard_on_every_path_and_nothing_is_logged() {
    use bitark_common::{GroupId, ShardMap};
    let s = start();
    let map = ShardMap::even(&[GroupId::new("a").unwrap(), GroupId::new("b").unwrap()]).unwrap();
    s.node.set_ownership(map.ownership(&GroupId::new("a").unwrap())).await.unwrap();
    let theirs = (1..).find(|u| map.owner_of(*u).group.as_str() == "b").unwrap();
    let mine = (1..).find(|u| map.owner_of(*u).group.as_str() == "a").unwrap();
    let applied = s.node.applied_lsn();
    let refused = [
        s.call(Method::PUT, &format!("/api/v1/users/{theirs}/reads/5"), None).await,
        s.call(Method::DELETE, &format!("/api/v1/users/{theirs}/reads/5"), None).await,
        s.post(&format!("/api/v1/users/{theirs}/reads"), json!({"msgIds": [1, 2]})).await,
        s.get(&format!("/api/v1/users/{theirs}/reads/5")).await,
        s.post(&format!("/api/v1/users/{theirs}/reads/check"), json!({"msgIds": [1]})).await,
        s.get(&format!("/api/v1/users/{theirs}/unread-count?from=1&to=5")).await,
        s.post("/api/v1/messages/5/readers", json!({"userIds": [mine, theirs]})).await,
        s.post("/api/v1/reads/check", json!({"pairs": [{"userId": theirs, "msgId": 5}]})).await,
    ];
    for answer in &refused {
        assert_error(answer, StatusCode::CONFLICT, "wrong_shard", &format!("user {theirs} is not served by group a"));
        assert_eq!(answer.1["mapVersion"], 1, "{}", answer.1);
    }
    assert_eq!(s.node.applied_lsn(), applied, "nothing refused was logged");
    let ok = s.call(Method::PUT, &format!("/api/v1/users/{mine}/reads/5"), None).await;
    assert_eq!(ok.0, StatusCode::OK, "{}", ok.1);
    let ok = s.get(&format!("/api/v1/users/{mine}/reads/5")).await;
    assert_eq!(ok.1["read"], true);
}

#[tokio::test]
async fn a_sharded_node_names_its_group_in_write_tokens_and_takes_both_forms_back() {
    use bitark_common::{GroupId, HashRange, ShardMap};
    let s = start();
    let map = ShardMap::even(&[GroupId::new("a").unwrap()]).unwrap();
    let plain = s.call(Method::PUT, "/api/v1/users/1/reads/5", None).await;
    let plain_token = plain.1["token"].as_str().unwrap().to_string();
    assert_eq!(plain_token.split(':').count(), 2, "not sharded: {plain_token}");
    let map = map.assign(HashRange::ALL, &GroupId::new("a").unwrap()).unwrap();
    s.node.set_ownership(map.ownership(&GroupId::new("a").unwrap())).await.unwrap();
    let written = s.call(Method::PUT, "/api/v1/users/1/reads/6", None).await;
    let token = written.1["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("a:"), "{token}");
    for t in [&token, &plain_token] {
        let read = s.get(&format!("/api/v1/users/1/reads/6?token={t}")).await;
        assert_eq!(read.0, StatusCode::OK, "{t}: {}", read.1);
    }
    let other = token.replacen("a:", "b:", 1);
    let refused = s.get(&format!("/api/v1/users/1/reads/6?token={other}")).await;
    assert_error(&refused, StatusCode::BAD_REQUEST, "invalid_token", "token of group b; this node is of group a");
}
