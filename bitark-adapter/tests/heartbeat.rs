//! Stage 4 between real processes: a frozen slave is DEAD within `dead-after` and comes
//! back through catch-up once it answers; a slave whose master stops answering reports
//! itself not ready (`master_unreachable`) but goes on serving reads.

mod support;

use reqwest::StatusCode;
use serde_json::Value;
use support::cluster::{replication_status, slave_entry, wait_state, Cluster, CONVERGE_WITHIN};
use support::{counter, metric, wait_until, NodeBuilder};

fn quick(builder: NodeBuilder) -> NodeBuilder {
    builder
        .env("BITARK_REPLICATION__REGISTER_INTERVAL", "100ms")
        .env("BITARK_REPLICATION__HEARTBEAT_INTERVAL", "100ms")
        .env("BITARK_REPLICATION__DEAD_AFTER", "600ms")
        .env("BITARK_REPLICATION__REQUEST_TIMEOUT", "300ms")
        .env("BITARK_REPLICATION__RETRY__INITIAL_BACKOFF", "20ms")
        .env("BITARK_REPLICATION__RETRY__MAX_BACKOFF", "200ms")
}

#[tokio::test]
async fn a_frozen_slave_is_dead_and_is_caught_up_once_it_answers_again() {
    let mut cluster = Cluster::start_with(1, "4", |_, _, builder| quick(builder)).await;
    let api = cluster.master.api();
    for msg in 0..50 {
        api.mark_read(1, msg).await.expect("write");
    }
    cluster.wait_for_convergence(CONVERGE_WITHIN).await;
    wait_state(&cluster.master, 0, "ALIVE").await;

    cluster.slaves[0].sigstop();
    wait_state(&cluster.master, 0, "DEAD").await;
    assert_eq!(counter(&cluster.master, "bitark_replication_dead_detections_total", &[("slave", "slave-1")]).await, 1);
    let age = metric(&cluster.master, "bitark_replication_heartbeat_age_seconds", &[("slave", "slave-1")]).await;
    assert!(age.is_some_and(|age| age >= 0.6), "heartbeat age {age:?}");
    // The master writes on; the DEAD slave gets nothing and holds no buffer.
    for msg in 50..150 {
        api.mark_read(1, msg).await.expect("write with a DEAD slave");
    }
    let entry = slave_entry(&cluster.master, 0).await.unwrap();
    assert_eq!((entry["state"].as_str(), entry["bufferDepth"].as_u64()), (Some("DEAD"), Some(0)), "{entry}");

    cluster.slaves[0].sigcont();
    cluster.wait_for_convergence(CONVERGE_WITHIN).await;
    wait_state(&cluster.master, 0, "ALIVE").await;
    let caught_up =
        counter(&cluster.master, "bitark_replication_caught_up_records_total", &[("slave", "slave-1")]).await;
    assert!(caught_up > 0, "the slave was not caught up from the WAL after it answered");
}

#[tokio::test]
async fn a_slave_whose_master_is_silent_is_not_ready_but_serves_reads() {
    let mut cluster = Cluster::start_with(1, "4", |_, _, builder| quick(builder)).await;
    cluster.master.api().mark_read(7, 7).await.expect("write");
    cluster.wait_for_convergence(CONVERGE_WITHIN).await;
    let slave = &cluster.slaves[0];
    assert_eq!(slave.api().readiness().await.unwrap(), StatusCode::OK);

    cluster.master.sigstop();
    wait_until(CONVERGE_WITHIN, "the slave to report its master unreachable", async || {
        slave.api().readiness().await.is_ok_and(|s| s == StatusCode::SERVICE_UNAVAILABLE)
    })
    .await;
    let url = format!("{}/actuator/health/readiness", slave.url());
    let ready: Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
    assert_eq!(ready["reason"], "master_unreachable", "{ready}");
    let seen = replication_status(slave).await["masterLastSeenSeconds"].as_f64().unwrap();
    assert!(seen >= 0.6, "masterLastSeenSeconds {seen}");
    assert_eq!(slave.api().check(7, &[7]).await.unwrap(), [true], "reads are still served");

    cluster.master.sigcont();
    wait_until(CONVERGE_WITHIN, "the slave to be ready again", async || {
        slave.api().readiness().await.is_ok_and(|s| s == StatusCode::OK)
    })
    .await;
}
