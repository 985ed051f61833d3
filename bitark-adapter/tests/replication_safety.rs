//! Replication that others cannot abuse and that cannot silently go wrong, between real
//! processes:
//! - a replicating node needs the cluster token (or an explicit insecure switch);
//! - a slave takes batches only from the master (and master process) it registered
//!   with, meant for its own process; forged batches are refused and counted;
//! - a master sends nothing to a slave whose URL it has not verified, bounds and
//!   forgets registrations, and refuses a slave whose log is ahead of its own;
//! - a slave learns when its master cannot bring it up to date, and says so;
//! - stages 1-2 back off after a failed send, show GAP and keep memory bounded;
//! - records reach slaves only once they are durable on the master.

mod support;

use bitark_common::replication::NodeStatus;
use bitark_common::{Command, Epoch, Lsn, Record};
use reqwest::{header, Method, StatusCode};
use serde_json::{json, Value};
use support::cluster::{
    listed_slaves, replication_status, slave_entry, wait_state, Cluster, CLUSTER_TOKEN, CONVERGE_WITHIN,
};
use support::proxy::Mode;
use support::{counter, metric, wait_until, Node, PROCESS_TIMEOUT};

const WAL_CONTENT_TYPE: &str = "application/x-bitark-wal";

/// Settings that keep each scenario short.
fn quick(builder: support::NodeBuilder) -> support::NodeBuilder {
    builder
        .env("BITARK_REPLICATION__REGISTER_INTERVAL", "100ms")
        .env("BITARK_REPLICATION__RETRY__INITIAL_BACKOFF", "20ms")
        .env("BITARK_REPLICATION__RETRY__MAX_BACKOFF", "200ms")
}

/// A call to an `/internal/replication/*` endpoint with the cluster token.
async fn internal(method: Method, url: &str, body: Option<Value>) -> reqwest::Response {
    let mut request = reqwest::Client::new().request(method.clone(), url).bearer_auth(CLUSTER_TOKEN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

async fn register(master: &Node, id: &str, url: &str, applied: u64, session: &str) -> reqwest::Response {
    let body = json!({
        "slaveId": id, "url": url, "appliedLsn": applied, "session": session,
        "features": { "notify": true, "progress": true, "bounded-buffer": true, "reliable": true,
                      "heartbeat": false, "full-sync": false, "cluster-gc": false },
    });
    internal(Method::POST, &format!("{}/internal/replication/register", master.url()), Some(body)).await
}

async fn applied_lsn(node: &Node) -> u64 {
    replication_status(node).await["appliedLsn"].as_u64().expect("appliedLsn")
}

async fn write_many(node: &Node, user: u64, msgs: std::ops::Range<u64>) {
    let api = node.api();
    for msg in msgs {
        api.mark_read(user, msg).await.unwrap_or_else(|e| panic!("write {user}/{msg}: {e}"));
    }
}

#[tokio::test]
async fn a_replicating_node_needs_a_cluster_token_or_an_explicit_insecure_switch() {
    for role in ["master", "slave"] {
        let mut node = Node::builder()
            .env("BITARK_NODE__ROLE", role)
            .env("BITARK_REPLICATION__STAGE", "3")
            .env("BITARK_REPLICATION__MASTER_URL", support::dead_url())
            .spawn();
        let status = node.wait_exit(PROCESS_TIMEOUT).await;
        let stderr = node.stderr_text();
        assert!(!status.success(), "a {role} replicated without a cluster token:\n{stderr}");
        assert!(stderr.contains("security.cluster-token"), "the refusal does not name the key:\n{stderr}");
        assert!(stderr.contains("allow-insecure-cluster"), "the refusal does not name the way out:\n{stderr}");
    }
    let insecure = Node::builder()
        .env("BITARK_REPLICATION__STAGE", "3")
        .env("BITARK_SECURITY__ALLOW_INSECURE_CLUSTER", "true")
        .start()
        .await;
    assert!(insecure.stderr_text().contains("INSECURE"), "no loud warning:\n{}", insecure.stderr_text());

    let exposed = Node::builder().env("BITARK_SERVER__BIND", "0.0.0.0").start().await;
    let stderr = exposed.stderr_text();
    assert!(stderr.contains("non-loopback") && stderr.contains("security.admin-token"), "{stderr}");
}

#[tokio::test]
async fn a_slave_takes_batches_only_from_its_master_and_stays_identical_to_it() {
    let cluster = Cluster::start_with(1, "3", |_, _, builder| quick(builder)).await;
    let (master, slave) = (&cluster.master, &cluster.slaves[0]);
    write_many(master, 1, 0..20).await;
    cluster.wait_for_convergence(CONVERGE_WITHIN).await;

    let status: NodeStatus = internal(Method::GET, &format!("{}/internal/replication/status", slave.url()), None)
        .await
        .json()
        .await
        .expect("slave status");
    let next = Lsn(applied_lsn(slave).await + 1);
    // A well-formed record at exactly the LSN the slave expects next.
    let forged =
        Record { epoch: Epoch::INITIAL, lsn: next, time: 0, command: Command::MarkRead { user: 666, msg: 666 } }
            .encode();
    let cases = [
        ("intruder", "0123456789abcdef", status.session.as_str(), "wrong_master"),
        ("master", "0123456789abcdef", status.session.as_str(), "wrong_master"),
        ("master", status.master_session.as_str(), "an-earlier-process", "wrong_session"),
    ];
    for (id, session, slave_session, code) in cases {
        let response = reqwest::Client::new()
            .post(format!("{}/internal/replication/append", slave.url()))
            .bearer_auth(CLUSTER_TOKEN)
            .header(header::CONTENT_TYPE, WAL_CONTENT_TYPE)
            .header("x-bitark-master-id", id)
            .header("x-bitark-session", session)
            .header("x-bitark-slave-session", slave_session)
            .body(forged.clone())
            .send()
            .await
            .expect("forged append");
        assert_eq!(response.status(), StatusCode::CONFLICT, "{id}/{session}/{slave_session}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], code, "{body}");
    }
    assert_eq!(counter(slave, "bitark_replication_appends_refused_total", &[("reason", "wrong_master")]).await, 2);
    assert_eq!(counter(slave, "bitark_replication_appends_refused_total", &[("reason", "wrong_session")]).await, 1);
    assert!(!slave.api().check(666, &[666]).await.unwrap()[0], "a forged record was applied");

    // The master's own record at that LSN goes through, and the two stay identical.
    write_many(master, 2, 0..20).await;
    cluster.wait_for_convergence(CONVERGE_WITHIN).await;
    assert!(!slave.api().check(666, &[666]).await.unwrap()[0]);
}

#[tokio::test]
async fn registrations_are_verified_bounded_replaced_and_forgotten() {
    let master = Node::builder()
        .env("BITARK_REPLICATION__STAGE", "3")
        .env("BITARK_SECURITY__CLUSTER_TOKEN", CLUSTER_TOKEN)
        .env("BITARK_REPLICATION__MAX_SLAVES", 4)
        .env("BITARK_REPLICATION__REGISTER_INTERVAL", "100ms")
        .env("BITARK_REPLICATION__FORGET_AFTER", "2s")
        .start()
        .await;
    // Twenty registrations naming a URL nothing answers at.
    let mut accepted = 0;
    let nowhere = support::dead_url();
    for i in 0..20 {
        let response = register(&master, &format!("fake-{i}"), &nowhere, 0, &format!("s{i}")).await;
        match response.status() {
            StatusCode::OK => {
                let body: Value = response.json().await.unwrap();
                assert_eq!(body["state"], "VERIFYING", "{body}");
                accepted += 1;
            }
            StatusCode::CONFLICT => {
                let body: Value = response.json().await.unwrap();
                assert_eq!(body["error"], "too_many_slaves", "{body}");
                assert!(body["message"].as_str().unwrap().contains("replication.max-slaves"), "{body}");
            }
            other => panic!("registration {i}: {other}"),
        }
    }
    assert_eq!(accepted, 4, "replication.max-slaves bounds registrations");
    assert_eq!(
        counter(&master, "bitark_replication_registrations_refused_total", &[("reason", "too_many_slaves")]).await,
        16
    );

    // Unverified slaves get no records and hold no memory. What is committed while a
    // check runs is held for the slave (a slave verified a moment later misses nothing)
    // and dropped when the check gives up: these URLs answer nothing, so every check
    // gives up, however fast the writes were.
    write_many(&master, 1, 0..100).await;
    wait_until(CONVERGE_WITHIN, "the checks of the unreachable URLs to give up", async || {
        let status = replication_status(&master).await;
        status["slaves"].as_array().unwrap().iter().all(|slave| slave["bufferDepth"].as_u64() == Some(0))
    })
    .await;
    let status = replication_status(&master).await;
    let listed = status["slaves"].as_array().unwrap();
    assert_eq!(listed.len(), 4, "{status}");
    for slave in listed {
        assert_eq!((slave["state"].as_str(), slave["bufferDepth"].as_u64()), (Some("VERIFYING"), Some(0)), "{slave}");
        assert!(slave["lastError"].as_str().unwrap_or("").contains("cannot reach"), "{slave}");
    }
    assert_eq!(metric(&master, "bitark_replication_buffers_bytes", &[]).await, Some(0.0));
    assert_eq!(metric(&master, "bitark_replication_sent_records_total", &[("slave", "fake-0")]).await, None);

    // The same id from another process replaces its link.
    let response = register(&master, "fake-0", &support::dead_url(), 0, "another-process").await;
    assert_eq!(response.status(), StatusCode::OK);
    let ids = listed_slaves(&master).await;
    assert_eq!(ids.iter().filter(|id| *id == "fake-0").count(), 1, "{ids:?}");

    // Silent for forget-after: forgotten, metric series included.
    wait_until(CONVERGE_WITHIN, "the silent registrations to be forgotten", async || {
        listed_slaves(&master).await.is_empty()
    })
    .await;
    let state = metric(&master, "bitark_replication_slave_state", &[("slave", "fake-1"), ("state", "VERIFYING")]).await;
    assert_eq!(state, None, "a forgotten slave's metric series stayed");
    let response = register(&master, "fake-20", &nowhere, 0, "late").await;
    assert_eq!(response.status(), StatusCode::OK, "room again once the others are forgotten");
}

#[tokio::test]
async fn a_slave_whose_log_is_ahead_of_the_master_is_diverged_not_alive() {
    // Registration from an impossible position: refused with both LSNs, nothing breaks.
    let master = Node::builder()
        .env("BITARK_REPLICATION__STAGE", "3")
        .env("BITARK_SECURITY__CLUSTER_TOKEN", CLUSTER_TOKEN)
        .start()
        .await;
    write_many(&master, 1, 0..10).await;
    let response = register(&master, "liar", &support::dead_url(), u64::MAX, "s").await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "diverged", "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains(&u64::MAX.to_string()) && message.contains("LSN 10"), "{message}");
    master.api().mark_read(1, 99).await.expect("the master writes on");
    let entry = replication_status(&master).await["slaves"][0].clone();
    assert_eq!(entry["state"], "DIVERGED", "{entry}");

    // A real one: the master loses its data and comes back empty.
    let mut cluster = Cluster::start_with(1, "3", |_, _, builder| quick(builder)).await;
    write_many(&cluster.master, 1, 0..30).await;
    cluster.wait_for_convergence(CONVERGE_WITHIN).await;
    assert!(cluster.master.stop().await.success());
    for dir in ["wal", "snapshots"] {
        std::fs::remove_dir_all(cluster.master.data_dir().join(dir)).expect("wipe the master");
    }
    cluster.restart_master().await;
    wait_state(&cluster.master, 0, "DIVERGED").await;
    let entry = slave_entry(&cluster.master, 0).await.unwrap();
    let error = entry["lastError"].as_str().unwrap();
    assert!(error.contains("LSN 30") && error.contains("LSN 0"), "{entry}");
    let slave = &cluster.slaves[0];
    wait_until(CONVERGE_WITHIN, "the slave to report itself not ready", async || {
        slave.api().readiness().await.is_ok_and(|s| s == StatusCode::SERVICE_UNAVAILABLE)
    })
    .await;
    let ready: Value =
        reqwest::get(format!("{}/actuator/health/readiness", slave.url())).await.unwrap().json().await.unwrap();
    assert_eq!(ready["reason"], "diverged", "{ready}");
    assert_eq!(replication_status(slave).await["stateAtMaster"], "DIVERGED");
    assert!(slave.api().check(1, &[0]).await.unwrap()[0], "it still serves reads");

    // The master's log grows past where the slave's ended: the slave's records are
    // still not the master's, so it stays DIVERGED and out of replication.
    write_many(&cluster.master, 2, 0..40).await;
    let refused = async || {
        counter(&cluster.master, "bitark_replication_registrations_refused_total", &[("reason", "diverged")]).await
    };
    let before = refused().await;
    wait_until(CONVERGE_WITHIN, "two more refused registrations of the diverged slave", async || {
        refused().await >= before + 2
    })
    .await;
    let sent = counter(&cluster.master, "bitark_replication_sent_batches_total", &[("slave", "slave-1")]).await;
    assert_eq!(slave_entry(&cluster.master, 0).await.unwrap()["state"], "DIVERGED");
    assert_eq!(slave.api().readiness().await.unwrap(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(sent, 0, "records were sent to a diverged slave");
    assert!(!slave.api().check(2, &[0]).await.unwrap()[0], "the diverged slave received the new master's records");
}

#[tokio::test]
async fn a_forged_batch_is_refused_before_its_body_is_read() {
    let cluster = Cluster::start_with(1, "3", |_, _, builder| quick(builder)).await;
    wait_state(&cluster.master, 0, "ALIVE").await;
    let slave = &cluster.slaves[0];
    // Headers announce 50 MB; a few bytes come. A slave that read the body before
    // looking at the sender would wait for the rest.
    let addr = slave.addr().unwrap();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /internal/replication/append HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {CLUSTER_TOKEN}\r\n\
         Content-Type: {WAL_CONTENT_TYPE}\r\nX-Bitark-Master-Id: intruder\r\nX-Bitark-Session: s\r\n\
         X-Bitark-Slave-Session: s\r\nContent-Length: 50000000\r\n\r\n0123456789"
    );
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(PROCESS_TIMEOUT, stream.read(&mut buf)).await.expect("an answer").unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 409"), "{text}");
    assert!(text.contains("wrong_session") || text.contains("wrong_master"), "{text}");
}

#[tokio::test]
async fn one_slow_slave_overflows_its_own_buffer_not_a_healthy_one() {
    // At stage 2 an overflow is a GAP for good, so who overflows is plain to see.
    let mut cluster = Cluster::start_with(2, "2", |_, _, builder| {
        quick(builder)
            .env("BITARK_REPLICATION__BUFFER__MAX_BYTES", "4MiB")
            .env("BITARK_REPLICATION__BUFFER__TOTAL_MAX_BYTES", "64KiB")
            .env("BITARK_REPLICATION__REQUEST_TIMEOUT", "5s")
    })
    .await;
    wait_state(&cluster.master, 0, "ALIVE").await;
    wait_state(&cluster.master, 1, "ALIVE").await;
    cluster.slaves[1].sigstop();
    // ~52 bytes a record: the frozen slave's buffer passes the total cap many times.
    write_many(&cluster.master, 1, 0..4000).await;
    wait_state(&cluster.master, 1, "GAP").await;
    support::cluster::wait_for_convergence(&cluster.master, &cluster.slaves[..1], CONVERGE_WITHIN).await;
    let healthy = slave_entry(&cluster.master, 0).await.unwrap();
    assert_eq!(healthy["state"], "ALIVE", "a healthy slave paid for a frozen one: {healthy}");
    cluster.slaves[1].sigcont();
}

#[tokio::test]
async fn at_stage_2_a_slave_that_lost_its_data_is_gap_not_a_dead_sender() {
    // Under `fsync: interval` the front of a buffer can be logged but not durable while
    // the slave needs older records.
    let mut cluster = Cluster::start_with(1, "2", |role, _, builder| match role {
        support::cluster::Role::Master => {
            quick(builder).env("BITARK_WAL__FSYNC", "interval").env("BITARK_WAL__FSYNC_INTERVAL", "1h")
        }
        support::cluster::Role::Slave => quick(builder),
    })
    .await;
    wait_state(&cluster.master, 0, "ALIVE").await;
    write_many(&cluster.master, 1, 0..30).await;
    cluster.wait_for_convergence(CONVERGE_WITHIN).await;
    assert!(cluster.slaves[0].stop().await.success());
    for dir in ["wal", "snapshots"] {
        std::fs::remove_dir_all(cluster.slaves[0].data_dir().join(dir)).expect("wipe the slave");
    }
    cluster.restart_slave(0).await;
    // It registers at LSN 0; stage 2 cannot resend 1..=30. Records committed while the
    // master still verifies the new slave process are not queued for it, so writes go
    // on until one is sent and refused.
    let mut msg = 0;
    wait_until(CONVERGE_WITHIN, "the master to show slave-1 as GAP", async || {
        write_many(&cluster.master, 2, msg..msg + 5).await;
        msg += 5;
        slave_entry(&cluster.master, 0).await.is_some_and(|entry| entry["state"] == "GAP")
    })
    .await;
    wait_state(&cluster.master, 0, "GAP").await;
    let sent = counter(&cluster.master, "bitark_replication_sent_batches_total", &[("slave", "slave-1")]).await;
    assert!(sent > 0, "the sender of the new link never sent");
}

#[tokio::test]
async fn at_stage_2_a_failed_send_backs_off_shows_gap_and_memory_stays_bounded() {
    const BUFFER: u64 = 50;
    let cluster = Cluster::start_with(1, "2", |_, _, builder| {
        quick(builder).env("BITARK_REPLICATION__BUFFER__MAX_RECORDS", BUFFER)
    })
    .await;
    let (master, proxy) = (&cluster.master, &cluster.proxies[0]);
    wait_state(master, 0, "ALIVE").await;
    write_many(master, 1, 0..20).await;
    cluster.wait_for_convergence(CONVERGE_WITHIN).await;

    proxy.set_mode(Mode::Cut);
    let mut deepest = 0;
    for round in 0..10u64 {
        write_many(master, 2, round * 60..round * 60 + 60).await;
        let entry = slave_entry(master, 0).await.unwrap();
        deepest = deepest.max(entry["bufferDepth"].as_u64().unwrap());
    }
    wait_state(master, 0, "GAP").await;
    assert!(deepest <= BUFFER, "the send buffer grew to {deepest} records past its bound of {BUFFER}");
    let failures = counter(master, "bitark_replication_send_failures_total", &[("slave", "slave-1")]).await;
    assert!(failures > 0, "failed sends are not counted");

    // Reachable again: sending goes on with new records, the slave cannot take them
    // (it misses what was dropped), and the master keeps showing GAP with bounded memory.
    proxy.set_mode(Mode::Pass);
    let sent = counter(master, "bitark_replication_sent_batches_total", &[("slave", "slave-1")]).await;
    write_many(master, 3, 0..100).await;
    wait_until(CONVERGE_WITHIN, "sending to go on after the failures", async || {
        counter(master, "bitark_replication_sent_batches_total", &[("slave", "slave-1")]).await > sent
    })
    .await;
    let entry = slave_entry(master, 0).await.unwrap();
    assert_eq!(entry["state"], "GAP", "{entry}");
    assert!(entry["bufferDepth"].as_u64().unwrap() <= BUFFER, "{entry}");
    assert!(entry["lastError"].as_str().unwrap().contains("cannot resend"), "{entry}");
}

#[tokio::test]
async fn the_last_error_clears_once_the_slave_is_alive_again() {
    let mut cluster = Cluster::start_with(1, "3", |_, _, builder| quick(builder)).await;
    write_many(&cluster.master, 1, 0..20).await;
    cluster.wait_for_convergence(CONVERGE_WITHIN).await;
    // Writes go on while the slave restarts: sends fail, are retried, race the new process.
    let writer = {
        let api = cluster.master.api();
        tokio::spawn(async move {
            for msg in 0..400 {
                api.mark_read(2, msg).await.expect("write");
            }
        })
    };
    cluster.slaves[0].sigkill();
    wait_until(CONVERGE_WITHIN, "the master to see failed sends", async || {
        slave_entry(&cluster.master, 0).await.is_some_and(|e| !e["lastError"].is_null())
    })
    .await;
    cluster.restart_slave(0).await;
    writer.await.unwrap();
    cluster.wait_for_convergence(CONVERGE_WITHIN).await;
    wait_state(&cluster.master, 0, "ALIVE").await;
    let entry = slave_entry(&cluster.master, 0).await.unwrap();
    assert!(entry["lastError"].is_null(), "an ALIVE slave shows a stale error: {entry}");
    assert_eq!(entry["retries"], 0, "{entry}");
}

#[tokio::test]
async fn records_reach_slaves_only_once_durable_on_the_master() {
    // The master fsyncs on its own only once an hour: what the slave gets must have been
    // made durable on the master first (replication asks for the fsyncs).
    let cluster = Cluster::start_with(1, "3", |role, _, builder| match role {
        support::cluster::Role::Master => {
            quick(builder).env("BITARK_WAL__FSYNC", "interval").env("BITARK_WAL__FSYNC_INTERVAL", "1h")
        }
        support::cluster::Role::Slave => quick(builder),
    })
    .await;
    let (master, slave) = (&cluster.master, &cluster.slaves[0]);
    let writers: Vec<_> = (0..4)
        .map(|user| {
            let api = master.api();
            tokio::spawn(async move {
                for msg in 0..100 {
                    api.mark_read(user, msg).await.expect("write");
                }
            })
        })
        .collect();
    let mut violations = Vec::new();
    while writers.iter().any(|w| !w.is_finished()) {
        // The slave first, then the master: the master's durable LSN only grows.
        let on_slave = applied_lsn(slave).await;
        let durable = replication_status(master).await["durableLsn"].as_u64().unwrap();
        if on_slave > durable {
            violations.push((on_slave, durable));
        }
    }
    cluster.wait_for_convergence(CONVERGE_WITHIN).await;
    assert!(violations.is_empty(), "the slave held records not yet durable on the master: {violations:?}");
    assert_eq!(applied_lsn(slave).await, 400);
    let fsyncs = metric(master, "bitark_wal_fsync_seconds_count", &[]).await.unwrap_or(0.0);
    assert!(fsyncs > 0.0, "replication never asked for an fsync");
}

#[tokio::test]
async fn a_heartbeat_from_past_the_masters_log_is_refused_not_taken_as_acknowledged() {
    let master = Node::builder()
        .env("BITARK_REPLICATION__STAGE", "4")
        .env("BITARK_SECURITY__CLUSTER_TOKEN", CLUSTER_TOKEN)
        .start()
        .await;
    write_many(&master, 1, 0..10).await;
    let response = register(&master, "slave-1", &support::dead_url(), 5, "s1").await;
    assert_eq!(response.status(), StatusCode::OK);
    let url = format!("{}/internal/replication/heartbeat", master.url());
    let heartbeat = |applied: u64| {
        let body = json!({ "slaveId": "slave-1", "session": "s1", "appliedLsn": applied, "durableLsn": applied });
        internal(Method::POST, &url, Some(body))
    };
    let refused = heartbeat(u64::MAX).await;
    assert_eq!(refused.status(), StatusCode::CONFLICT);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "slave_ahead", "{body}");
    let entry = slave_entry(&master, 0).await.expect("the master lists the slave");
    assert_eq!(entry["lastAckLsn"], 5, "a refused heartbeat moved the slave's position: {entry}");
    assert_eq!(heartbeat(7).await.status(), StatusCode::OK, "a heartbeat within the log is taken");
    master.api().mark_read(1, 99).await.expect("the master writes on");
}
