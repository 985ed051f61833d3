//! Refreshing the configuration of running processes: `POST /actuator/refresh` and
//! SIGHUP re-read the file they started from; reloadable keys take effect at once, the
//! others are reported as needing a restart, and an invalid file changes nothing.

mod support;

use reqwest::StatusCode;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::cluster::{quick, replication_status, wait_state, Cluster};
use support::{counter, wait_until, Node};

const WITHIN: Duration = Duration::from_secs(30);

/// A configuration file of its own, given with `--config`.
struct ConfigFile {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl ConfigFile {
    fn new(yaml: &str) -> ConfigFile {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("bitark.yml");
        std::fs::write(&path, yaml).expect("write the configuration");
        ConfigFile { _dir: dir, path }
    }

    fn write(&self, yaml: &str) {
        std::fs::write(&self.path, yaml).expect("rewrite the configuration");
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

async fn refresh(node: &Node) -> (StatusCode, Value) {
    let response =
        reqwest::Client::new().post(format!("{}/actuator/refresh", node.url())).send().await.expect("the node answers");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn configprops(node: &Node) -> Value {
    reqwest::get(format!("{}/actuator/configprops", node.url())).await.unwrap().json().await.unwrap()
}

/// Marks `count` ids, written as 20-digit strings, for user 1: its answer status and body.
async fn mark_many(node: &Node, first: u64, count: u64) -> (StatusCode, Value) {
    let ids: Vec<String> = (first..first + count).map(|id| format!("{:020}", id)).collect();
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/users/1/reads", node.url()))
        .json(&json!({ "msgIds": ids }))
        .send()
        .await
        .expect("the node answers");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn keys(report: &Value, field: &str) -> Vec<String> {
    report[field].as_array().unwrap_or(&Vec::new()).iter().map(|k| k.as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn a_refresh_puts_reloadable_keys_in_force_at_once() {
    let file = ConfigFile::new("limits:\n  max-batch: 10\n");
    let node = Node::builder().arg("--config").arg(file.path().to_str().unwrap()).start().await;

    let (status, body) = mark_many(&node, 1, 20).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"], "batch_too_large", "{body}");
    // 300 ids as strings are past the body bound that 10 ids allow.
    let (status, body) = mark_many(&node, 1, 300).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("body_too_large")), "{body}");

    file.write("limits:\n  max-batch: 1000\n  max-range: 5\nsnapshot:\n  keep: 3\n");
    let (status, report) = refresh(&node).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(keys(&report, "applied"), ["limits.max-batch", "limits.max-range", "snapshot.keep"], "{report}");
    assert!(keys(&report, "restartRequired").is_empty(), "{report}");
    let change = report["changed"].as_array().unwrap().iter().find(|c| c["key"] == "limits.max-batch").unwrap();
    assert_eq!((change["from"].as_u64(), change["to"].as_u64()), (Some(10), Some(1000)), "{report}");
    assert_eq!(change["reloadable"], true);

    // In force: the batch and the body bound follow max-batch, ranges follow max-range.
    let (status, body) = mark_many(&node, 1, 300).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let range = node.api().mark_range(1, 1000, 1009).await.expect_err("a range of 10 is past max-range 5");
    assert!(range.to_string().contains("range_too_large"), "{range}");
    let props = configprops(&node).await;
    assert_eq!((props["limits"]["max-batch"].as_u64(), props["snapshot"]["keep"].as_u64()), (Some(1000), Some(3)));
    assert_eq!(counter(&node, "bitark_config_refreshes_total", &[("outcome", "applied")]).await, 1);

    // The same sources again: nothing changes.
    let (status, report) = refresh(&node).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert!(report["changed"].as_array().unwrap().is_empty(), "{report}");
    assert_eq!(report["message"], "no key changed");
    assert_eq!(counter(&node, "bitark_config_refreshes_total", &[("outcome", "unchanged")]).await, 1);
}

#[tokio::test]
async fn a_refresh_with_a_bad_value_is_refused_and_changes_nothing() {
    let file = ConfigFile::new("limits:\n  max-batch: 10\n");
    let node = Node::builder().arg("--config").arg(file.path().to_str().unwrap()).start().await;
    let before = configprops(&node).await;

    // Two invalid values beside a valid change: refused as a whole, each problem named.
    file.write("limits:\n  max-batch: 0\n  max-range: 5\nsnapshot:\n  keep: 0\n");
    let (status, body) = refresh(&node).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_config", "{body}");
    let problems = keys(&body, "problems");
    assert_eq!(problems.len(), 2, "{body}");
    assert!(problems[0].starts_with("snapshot.keep") || problems[1].starts_with("snapshot.keep"), "{body}");
    assert!(problems.iter().any(|p| p.starts_with("limits.max-batch")), "{body}");

    // A value of the wrong type and an unknown key, each named with its file.
    file.write("limits:\n  max-batch: lots\n");
    let (status, body) = refresh(&node).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_config")), "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("limits.max-batch") && message.contains("bitark.yml"), "{body}");
    file.write("limits:\n  max-bach: 20\n");
    let (_, body) = refresh(&node).await;
    assert!(body["message"].as_str().unwrap().contains("max-bach"), "{body}");

    // Nothing changed: the configuration in force, and the limits it sets.
    assert_eq!(configprops(&node).await, before);
    node.api().mark_range(1, 1, 10).await.expect("max-range is still the default");
    let (status, _) = mark_many(&node, 1, 20).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "max-batch is still 10");
    assert_eq!(counter(&node, "bitark_config_refreshes_total", &[("outcome", "refused")]).await, 3);
    assert_eq!(counter(&node, "bitark_config_refreshes_total", &[("outcome", "applied")]).await, 0);
}

#[tokio::test]
async fn a_refresh_of_a_non_reloadable_key_says_it_needs_a_restart_and_changes_nothing_else() {
    let file = ConfigFile::new("node:\n  id: first\nwal:\n  queue-capacity: 1000\n");
    let node = Node::builder().arg("--config").arg(file.path().to_str().unwrap()).start().await;
    let before = configprops(&node).await;

    file.write("node:\n  id: second\nwal:\n  queue-capacity: 2000\nsecurity:\n  admin-token: t0ps3cret\n");
    let (status, report) = refresh(&node).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert!(keys(&report, "applied").is_empty(), "{report}");
    assert_eq!(keys(&report, "restartRequired"), ["node.id", "security.admin-token", "wal.queue-capacity"], "{report}");
    assert!(report["message"].as_str().unwrap().contains("need a restart"), "{report}");
    assert!(!report.to_string().contains("t0ps3cret"), "a secret is never shown: {report}");
    assert!(!node.stderr_text().contains("t0ps3cret"), "a secret is never logged");

    // The running values stay: the node's id, and the admin endpoints still open.
    assert_eq!(configprops(&node).await, before);
    assert_eq!(node.api().info().await.unwrap()["node"]["id"], "first");
    node.api().digest().await.expect("the admin token applies only after a restart");
    assert_eq!(counter(&node, "bitark_config_refreshes_total", &[("outcome", "unchanged")]).await, 1);
}

#[tokio::test]
async fn sighup_rereads_the_configuration() {
    let file = ConfigFile::new("limits:\n  max-batch: 10\n");
    let mut node = Node::builder().arg("--config").arg(file.path().to_str().unwrap()).start().await;
    file.write("limits:\n  max-batch: 50\n");
    node.sighup();
    wait_until(WITHIN, "max-batch 50 in force", async || {
        configprops(&node).await["limits"]["max-batch"].as_u64() == Some(50)
    })
    .await;
    let (status, body) = mark_many(&node, 1, 40).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(node.stderr_text().contains("configuration refreshed"), "the refresh is logged");

    // A bad file on SIGHUP is logged and the node goes on as it was.
    file.write("limits:\n  max-batch: 0\n");
    node.sighup();
    wait_until(WITHIN, "the refused refresh logged", async || node.stderr_text().contains("refresh refused")).await;
    assert!(node.try_exit().is_none(), "the node keeps running");
    assert_eq!(configprops(&node).await["limits"]["max-batch"].as_u64(), Some(50));
}

#[tokio::test]
async fn a_refresh_changes_the_log_level() {
    let file = ConfigFile::new("logging:\n  level: info\n");
    let node =
        Node::builder().without_env("BITARK_LOG").arg("--config").arg(file.path().to_str().unwrap()).start().await;
    node.api().mark_read(1, 1).await.unwrap();
    assert!(!node.stderr_text().contains("DEBUG"), "nothing at debug level yet");

    file.write("logging:\n  level: info,bitark_adapter=debug\n");
    let (status, report) = refresh(&node).await;
    assert_eq!((status, keys(&report, "applied")), (StatusCode::OK, vec!["logging.level".to_string()]), "{report}");
    node.api().mark_read(1, 2).await.unwrap();
    wait_until(WITHIN, "a request logged at debug level", async || {
        node.stderr_text().lines().any(|line| line.contains("DEBUG") && line.contains("/api/v1/users/{userId}"))
    })
    .await;
}

/// A master and a slave, each on a file of its own: the flags and the ack mode change
/// on both by refresh, links renegotiate, and a refresh the node cannot run is refused.
#[tokio::test]
async fn a_refresh_changes_the_replication_flags_and_ack_mode_on_both_sides() {
    let stage = |stage: &str, ack: &str| format!("replication:\n  stage: {stage}\n  ack: {ack}\n");
    let master_file = ConfigFile::new(&stage("3", "async"));
    let slave_file = ConfigFile::new(&stage("3", "async"));
    let (m, s) = (master_file.path().to_owned(), slave_file.path().to_owned());
    let cluster = Cluster::builder()
        .slaves(1)
        .configure(move |role, _, builder| {
            let file = if role == support::cluster::Role::Master { &m } else { &s };
            quick(builder).arg("--config").arg(file.to_str().unwrap())
        })
        .start()
        .await;
    cluster.wait_for_convergence(WITHIN).await;
    let (master, slave) = (&cluster.master, &cluster.slaves[0]);

    // Raise: the slave first, then the master with ack: semi in the same file.
    slave_file.write(&stage("7", "async"));
    let (status, report) = refresh(slave).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(keys(&report, "applied"), ["replication.stage"], "{report}");
    assert_eq!(report["features"]["fencing"], true, "{report}");
    master_file.write(&stage("7", "semi"));
    let (status, report) = refresh(master).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(keys(&report, "applied"), ["replication.ack", "replication.stage"], "{report}");
    wait_until(WITHIN, "the link at stage 7", async || {
        let status = replication_status(master).await;
        let link = &status["slaves"][0];
        link["state"] == "ALIVE" && link["features"]["ack-modes"] == true && status["featuresOverridden"] == false
    })
    .await;
    // A semi write is answered once the slave holds it.
    let lsn = master.api().mark_read(5, 5).await.expect("a semi write with the slave ALIVE");
    let applied = replication_status(slave).await["appliedLsn"].as_u64().unwrap();
    assert!(applied >= lsn || slave.api().check(5, &[5]).await.unwrap() == [true]);

    // Lowering the master's stage under ack: semi is invalid: refused, nothing changes.
    master_file.write(&stage("3", "semi"));
    let (status, body) = refresh(master).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_config")), "{body}");
    assert!(body["message"].as_str().unwrap().contains("replication.ack"), "{body}");
    assert_eq!(replication_status(master).await["features"]["ack-modes"], true);

    // Lower the master first, ack back to async, then the slave: both links at stage 3.
    master_file.write(&stage("3", "async"));
    let (status, report) = refresh(master).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    slave_file.write(&stage("3", "async"));
    assert_eq!(refresh(slave).await.0, StatusCode::OK);
    wait_until(WITHIN, "the link back at stage 3", async || {
        let status = replication_status(master).await;
        let link = &status["slaves"][0];
        link["state"] == "ALIVE" && link["features"]["fencing"] == false && link["features"]["reliable"] == true
    })
    .await;
    master.api().mark_read(5, 6).await.expect("an async write");
    cluster.wait_for_convergence(WITHIN).await;

    // An override by PUT stays through a refresh that leaves the flags as they were.
    let response = reqwest::Client::new()
        .put(format!("{}/admin/replication/features", slave.url()))
        .json(&json!({ "stage": "4" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    slave_file.write(&(stage("3", "async") + "limits:\n  max-batch: 77\n"));
    let (status, report) = refresh(slave).await;
    assert_eq!((status, keys(&report, "applied")), (StatusCode::OK, vec!["limits.max-batch".to_string()]));
    assert_eq!(report["features"]["heartbeat"], true, "{report}");
    assert_eq!(replication_status(slave).await["featuresOverridden"], true);
}

/// A sender holding a batch back under a long `replication.batch-linger` sends it as
/// soon as a refresh shortens the linger, not when the old one runs out.
#[tokio::test]
async fn a_refresh_that_shortens_the_batch_linger_sends_a_held_batch_at_once() {
    let linger = |linger: &str| format!("replication:\n  stage: 3\n  batch-linger: {linger}\n");
    let master_file = ConfigFile::new(&linger("10s"));
    let m = master_file.path().to_owned();
    let cluster = Cluster::builder()
        .slaves(1)
        .configure(move |role, _, builder| {
            // No registration wakes the master's sender during the test.
            let builder = quick(builder).env("BITARK_REPLICATION__REGISTER_INTERVAL", "1m");
            if role == support::cluster::Role::Master {
                builder.arg("--config").arg(m.to_str().unwrap())
            } else {
                builder.env("BITARK_REPLICATION__STAGE", "3")
            }
        })
        .start()
        .await;
    wait_state(&cluster.master, 0, "ALIVE").await;
    let (master, slave) = (&cluster.master, &cluster.slaves[0]);
    master.api().mark_read(9, 9).await.expect("an async write");

    master_file.write(&linger("0ms"));
    let (status, report) = refresh(master).await;
    assert_eq!((status, keys(&report, "applied")), (StatusCode::OK, vec!["replication.batch-linger".to_string()]));
    wait_until(Duration::from_secs(5), "the held record on the slave before the old linger ends", async || {
        slave.api().check(9, &[9]).await.unwrap() == [true]
    })
    .await;
}
