//! Feature-flag rollouts without restarts, between real processes: `PUT
//! /admin/replication/features` on one node, and `bitark rollout` moving a master and
//! two slaves through every stage and back under continuous writes.

mod support;

use reqwest::StatusCode;
use serde_json::{json, Value};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::cluster::{quick, replication_status, wait_for_convergence, Cluster};
use support::wait_until;

const CONVERGE: Duration = Duration::from_secs(30);

/// The flags of a stage, as `/actuator/replication` shows them.
fn flags_of(stage: f64) -> Value {
    let on = |from: f64| stage >= from;
    json!({
        "notify": on(1.0), "progress": on(2.0), "bounded-buffer": on(2.5), "reliable": on(3.0),
        "heartbeat": on(4.0), "full-sync": on(5.0), "cluster-gc": on(6.0), "fencing": on(7.0), "ack-modes": on(7.0),
        "failover": false,
    })
}

async fn put_features(url: &str, body: Value) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .put(format!("{url}/admin/replication/features"))
        .json(&body)
        .send()
        .await
        .expect("the node answers");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Marks message after message on the master; keeps what was acknowledged. `paused`
/// holds the writes while a test compares digests.
struct Writer {
    stop: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    in_flight: Arc<AtomicU64>,
    acked: Arc<Mutex<Vec<u64>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    fn start(cluster: &Cluster) -> Writer {
        let api = cluster.master.api();
        let (stop, paused) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let (in_flight, acked) = (Arc::new(AtomicU64::new(0)), Arc::new(Mutex::new(Vec::new())));
        let (s, p, f, a) = (stop.clone(), paused.clone(), in_flight.clone(), acked.clone());
        let task = tokio::spawn(async move {
            let mut msg = 0;
            while !s.load(Ordering::Acquire) {
                if p.load(Ordering::Acquire) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                msg += 1;
                f.store(1, Ordering::Release);
                if api.mark_read(77, msg).await.is_ok() {
                    a.lock().unwrap().push(msg);
                }
                f.store(0, Ordering::Release);
            }
        });
        Writer { stop, paused, in_flight, acked, task }
    }

    /// Holds the writes and waits for the one in flight to finish.
    async fn pause(&self) {
        self.paused.store(true, Ordering::Release);
        wait_until(CONVERGE, "the write in flight", async || self.in_flight.load(Ordering::Acquire) == 0).await;
    }

    fn resume(&self) {
        self.paused.store(false, Ordering::Release);
    }

    async fn stop(self) -> Vec<u64> {
        self.stop.store(true, Ordering::Release);
        let _ = self.task.await;
        self.acked.lock().unwrap().clone()
    }
}

/// `bitark rollout` to `stage`, one step, with no pause.
fn rollout(cluster: &Cluster, stage: f64) {
    let output = Command::new(env!("CARGO_BIN_EXE_bitark"))
        .args(["rollout", "--cluster", &cluster.master.url(), "--to-stage", &stage.to_string()])
        .args(["--step-pause", "0s", "--step-timeout", "30s"])
        .output()
        .expect("run bitark rollout");
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "rollout to {stage} failed:\n{said}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(said.contains(&format!("cluster at stage {stage}")), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_rolls_from_stage_1_to_7_and_back_under_writes_without_a_restart_or_a_lost_write() {
    let cluster = Cluster::start_with(2, "1", |_, _, b| quick(b)).await;
    let nodes: Vec<_> = std::iter::once(&cluster.master).chain(&cluster.slaves).collect();
    let writer = Writer::start(&cluster);
    // One step at a time up to 7 and down to 1, then to 7 again in one rollout (which
    // goes step by step itself).
    let plan: Vec<f64> = [2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.5, 2.0, 1.0, 7.0].to_vec();
    for stage in plan {
        rollout(&cluster, stage);
        // Every node runs the plan's flags, and the master uses them with each slave.
        for node in &nodes {
            let status = replication_status(node).await;
            assert_eq!(status["features"], flags_of(stage), "stage {stage}: {status}");
            assert_eq!(status["featuresOverridden"], stage != 1.0, "stage {stage}: {status}");
        }
        let master = replication_status(&cluster.master).await;
        for link in master["slaves"].as_array().unwrap() {
            assert_eq!(link["features"], flags_of(stage), "stage {stage}: {link}");
        }
        // Equal digests once the writes are held.
        writer.pause().await;
        wait_for_convergence(&cluster.master, &cluster.slaves, CONVERGE).await;
        writer.resume();
    }
    let acked = writer.stop().await;
    assert!(acked.len() > 100, "the writer got {} writes acknowledged", acked.len());
    wait_for_convergence(&cluster.master, &cluster.slaves, CONVERGE).await;
    for node in &nodes {
        for chunk in acked.chunks(1000) {
            let read = node.api().check(77, chunk).await.expect("check");
            assert!(read.iter().all(|r| *r), "{}: an acknowledged write is missing", node.url());
        }
    }
}

#[tokio::test]
async fn a_flag_change_out_of_rollout_order_or_that_needs_a_restart_is_refused_and_changes_nothing() {
    let cluster = Cluster::start_with(1, "3", |_, _, b| quick(b)).await;
    let url = cluster.master.url();
    let cases = [
        (json!({ "features": { "notify": true, "reliable": true } }), StatusCode::BAD_REQUEST, "invalid_features"),
        (json!({ "stage": "4.5" }), StatusCode::BAD_REQUEST, "invalid_features"),
        (json!({}), StatusCode::BAD_REQUEST, "invalid_features"),
        (json!({ "stage": "7", "features": { "failover": true } }), StatusCode::CONFLICT, "wrong_role"),
    ];
    for (body, want, code) in cases {
        let (status, answer) = put_features(&url, body.clone()).await;
        assert_eq!((status, answer["error"].as_str()), (want, Some(code)), "{body}: {answer}");
    }
    let (status, answer) = put_features(&cluster.slaves[0].url(), json!({ "stage": "0" })).await;
    assert_eq!((status, answer["error"].as_str()), (StatusCode::CONFLICT, Some("wrong_role")), "{answer}");
    // A node without a cluster token cannot turn replication on at runtime.
    let mut lone = support::Node::builder().spawn();
    lone.wait_ready().await;
    let (status, answer) = put_features(&lone.url(), json!({ "stage": "1" })).await;
    assert_eq!((status, answer["error"].as_str()), (StatusCode::CONFLICT, Some("wrong_role")), "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("security.cluster-token"), "{answer}");
    let status = replication_status(&cluster.master).await;
    assert_eq!(status["features"], flags_of(3.0), "{status}");
    assert_eq!(status["featuresOverridden"], false, "{status}");

    // A change that holds says until when, and shows in /actuator/replication.
    let (status, answer) = put_features(&url, json!({ "stage": 4 })).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!((answer["stage"].as_f64(), answer["overridden"].as_bool()), (Some(4.0), Some(true)), "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("until the next restart"), "{answer}");
    let shown = replication_status(&cluster.master).await;
    assert_eq!(shown["featuresOverridden"], true);
    assert!(shown["featuresChangedAt"].is_string(), "{shown}");

    // Fencing turned on at runtime only: a role change would not survive a restart.
    for node in std::iter::once(&cluster.master).chain(&cluster.slaves) {
        let (status, answer) = put_features(&node.url(), json!({ "stage": "7" })).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    let promote =
        reqwest::Client::new().post(format!("{}/admin/promote", cluster.slaves[0].url())).send().await.unwrap();
    assert_eq!(promote.status(), StatusCode::CONFLICT);
    let answer: Value = promote.json().await.unwrap();
    assert!(answer["message"].as_str().unwrap().contains("only until the next restart"), "{answer}");
}
