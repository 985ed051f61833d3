//! Stage 6 between real processes: the master keeps the WAL its live slaves still need
//! (a DEAD one holds nothing back), and under `gc-mode: bounded` a slave past
//! `replication.max-lag` is OUTDATED, the master's disk stays bounded, and the slave
//! full-syncs once it is back.

mod support;

use std::path::Path;
use std::time::Duration;
use support::cluster::{slave_entry, wait_state, Cluster, Role, CONVERGE_WITHIN};
use support::proxy::Mode;
use support::{metric, wait_until, Node, NodeBuilder};

fn quick(builder: NodeBuilder) -> NodeBuilder {
    builder
        .env("BITARK_REPLICATION__REGISTER_INTERVAL", "100ms")
        .env("BITARK_REPLICATION__HEARTBEAT_INTERVAL", "100ms")
        .env("BITARK_REPLICATION__DEAD_AFTER", "1s")
        .env("BITARK_REPLICATION__REQUEST_TIMEOUT", "300ms")
        .env("BITARK_REPLICATION__RETRY__INITIAL_BACKOFF", "20ms")
        .env("BITARK_REPLICATION__RETRY__MAX_BACKOFF", "200ms")
}

/// A stage 6 cluster with one slave; the master snapshots every 300 records, keeps one
/// snapshot, and has 64 KiB segments, so its WAL would be purged quickly.
async fn cluster(gc: &'static str, max_lag_bytes: &'static str) -> Cluster {
    cluster_with_slave_failpoints(gc, max_lag_bytes, "").await
}

async fn cluster_with_slave_failpoints(
    gc: &'static str,
    max_lag_bytes: &'static str,
    failpoints: &'static str,
) -> Cluster {
    Cluster::start_with(1, "6", move |role, _, builder| {
        let builder = quick(builder);
        match role {
            Role::Master => builder
                .env("BITARK_WAL__SEGMENT_SIZE", "64KiB")
                .env("BITARK_SNAPSHOT__EVERY_RECORDS", 300)
                .env("BITARK_SNAPSHOT__KEEP", 1)
                .env("BITARK_REPLICATION__GC_MODE", gc)
                .env("BITARK_REPLICATION__MAX_LAG__BYTES", max_lag_bytes)
                .env("BITARK_REPLICATION__MAX_LAG__TIME", "0s"),
            Role::Slave if failpoints.is_empty() => builder,
            Role::Slave => builder.env("FAILPOINTS", failpoints),
        }
    })
    .await
}

/// Writes `count` 100-id batches (about 850 bytes of log each).
async fn write_batches(node: &Node, from: u64, count: u64) {
    let api = node.api();
    for i in from..from + count {
        api.mark_batch(i % 97, &(i * 100..i * 100 + 100).collect::<Vec<_>>()).await.expect("batch");
    }
}

fn wal_bytes(data_dir: &Path) -> u64 {
    let wal = data_dir.join("wal");
    std::fs::read_dir(&wal)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".wal"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn first_segment(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("wal").join("00000000000000000001.wal")
}

#[tokio::test]
async fn a_live_slave_holds_the_wal_back_and_a_dead_one_does_not() {
    let cluster = cluster("conservative", "0").await;
    wait_state(&cluster.master, 0, "ALIVE").await;
    // Sends to the slave fail, its heartbeats go on: it is behind but alive.
    cluster.proxies[0].set_mode(Mode::Cut);
    write_batches(&cluster.master, 0, 600).await;
    wait_until(CONVERGE_WITHIN, "snapshots to be taken", async || {
        metric(&cluster.master, "bitark_snapshots_total", &[("result", "ok")]).await.unwrap_or(0.0) >= 2.0
    })
    .await;
    let entry = slave_entry(&cluster.master, 0).await.unwrap();
    assert!(matches!(entry["state"].as_str(), Some("UNREACHABLE" | "SLOW")), "{entry}");
    assert!(first_segment(cluster.master.data_dir()).exists(), "the WAL a live slave needs was purged");

    // Silent now: DEAD, and the WAL it needed goes at the next collection.
    let mut cluster = cluster;
    cluster.slaves[0].sigstop();
    wait_state(&cluster.master, 0, "DEAD").await;
    write_batches(&cluster.master, 600, 400).await;
    wait_until(CONVERGE_WITHIN, "the WAL to be purged past the DEAD slave", async || {
        !first_segment(cluster.master.data_dir()).exists()
    })
    .await;
    cluster.slaves[0].sigcont();
}

#[tokio::test]
async fn past_max_lag_a_slave_is_outdated_the_disk_stays_bounded_and_it_full_syncs_when_back() {
    const MAX_LAG: u64 = 256 * 1024;
    let cluster = cluster("bounded", "256KiB").await;
    wait_state(&cluster.master, 0, "ALIVE").await;
    let entry = slave_entry(&cluster.master, 0).await.unwrap();
    assert!(entry["headroomBytes"].as_u64().is_some_and(|h| h <= MAX_LAG), "{entry}");
    assert!(metric(&cluster.master, "bitark_replication_headroom_bytes", &[("slave", "slave-1")]).await.is_some());

    cluster.proxies[0].set_mode(Mode::Cut);
    // About 2.5 MB of log while the slave gets none of it.
    let mut most = 0;
    for round in 0..10 {
        write_batches(&cluster.master, round * 300, 300).await;
        most = most.max(wal_bytes(cluster.master.data_dir()));
    }
    // The slave still reaches the master, so it full-syncs as soon as it is OUTDATED and
    // goes on being outdated while it gets no records: the master's log shows each time.
    let stderr = cluster.master.stderr_text();
    assert!(stderr.contains("slave past replication.max-lag: OUTDATED"), "never OUTDATED:\n{stderr}");
    // max-lag, plus what the newest snapshot needs (300 records, ~260 KB), plus two
    // segments that a purge cannot cut, with room for the records in flight.
    let bound = MAX_LAG + 300 * 900 + 2 * 64 * 1024 + 128 * 1024;
    assert!(most <= bound, "the master's WAL reached {most} bytes, over {bound}");

    // Back: it full-syncs (it may have done so already, reaching the master while the
    // master could not reach it) and follows again.
    cluster.proxies[0].set_mode(Mode::Pass);
    cluster.wait_for_convergence(Duration::from_secs(120)).await;
    wait_state(&cluster.master, 0, "ALIVE").await;
    let synced = metric(&cluster.slaves[0], "bitark_full_syncs_total", &[("outcome", "completed")]).await;
    assert!(synced.is_some_and(|n| n >= 1.0), "the OUTDATED slave came back without a full sync");
}

/// A slave that downloaded its snapshot but has not installed it (held at
/// `fullsync::before-install`) holds no more log than `max-lag`: once the log written
/// since that snapshot passes it, the transfer ends and its pin goes.
#[tokio::test]
async fn a_transfer_overtaken_by_max_lag_before_its_install_holds_no_log_for_it() {
    const MAX_LAG: u64 = 256 * 1024;
    let cluster = cluster_with_slave_failpoints("bounded", "256KiB", "fullsync::before-install=sleep(60000)").await;
    wait_state(&cluster.master, 0, "ALIVE").await;
    cluster.proxies[0].set_mode(Mode::Cut);
    let mut round = 0;
    wait_until(CONVERGE_WITHIN, "the OUTDATED slave to download a snapshot", async || {
        write_batches(&cluster.master, round * 100, 100).await;
        round += 1;
        metric(&cluster.master, "bitark_full_sync_bytes_total", &[]).await.is_some_and(|b| b > 0.0)
    })
    .await;
    // About 2.5 MB more log; the slave sleeps before installing what it downloaded.
    let mut most = 0;
    for more in 0..10 {
        write_batches(&cluster.master, (round + more * 3) * 100, 300).await;
        most = most.max(wal_bytes(cluster.master.data_dir()));
    }
    let bound = MAX_LAG + 300 * 900 + 2 * 64 * 1024 + 128 * 1024;
    assert!(most <= bound, "the master's WAL reached {most} bytes, over {bound}");
    let stderr = cluster.master.stderr_text();
    assert!(stderr.contains("passed replication.max-lag before it installed the snapshot"), "{stderr}");
}

/// A stage 6 master with `max-lag.bytes: 256KiB` that snapshots only when asked, so the
/// WAL after its newest snapshot can be longer than `max-lag`.
async fn rarely_snapshotting(slaves: usize) -> Cluster {
    Cluster::start_with(slaves, "6", |role, _, builder| {
        let builder = quick(builder);
        match role {
            Role::Master => builder
                .env("BITARK_WAL__SEGMENT_SIZE", "64KiB")
                .env("BITARK_SNAPSHOT__EVERY_RECORDS", 0)
                .env("BITARK_SNAPSHOT__EVERY", "0s")
                .env("BITARK_REPLICATION__MAX_LAG__BYTES", "256KiB")
                .env("BITARK_REPLICATION__MAX_LAG__TIME", "0s"),
            Role::Slave => builder,
        }
    })
    .await
}

#[tokio::test]
async fn an_outdated_slave_whose_position_is_still_in_the_wal_full_syncs_and_follows_again() {
    let cluster = rarely_snapshotting(1).await;
    wait_state(&cluster.master, 0, "ALIVE").await;
    // Sends to the slave fail while it still reaches the master; no snapshot exists, so
    // the WAL still holds the slave's position when it becomes OUTDATED.
    cluster.proxies[0].set_mode(Mode::Cut);
    write_batches(&cluster.master, 0, 600).await;
    wait_until(CONVERGE_WITHIN, "the slave to be OUTDATED", async || {
        cluster.master.stderr_text().contains("slave past replication.max-lag: OUTDATED")
    })
    .await;
    cluster.proxies[0].set_mode(Mode::Pass);
    cluster.wait_for_convergence(Duration::from_secs(60)).await;
    wait_state(&cluster.master, 0, "ALIVE").await;
    let synced = metric(&cluster.slaves[0], "bitark_full_syncs_total", &[("outcome", "completed")]).await;
    assert!(synced.is_some_and(|n| n >= 1.0), "the OUTDATED slave came back without a full sync");
}

#[tokio::test]
async fn a_slave_that_installed_an_old_snapshot_is_caught_up_not_outdated_again() {
    let mut cluster = rarely_snapshotting(0).await;
    write_batches(&cluster.master, 0, 300).await;
    cluster.master.api().snapshot().await.expect("snapshot");
    wait_until(CONVERGE_WITHIN, "the WAL before the snapshot to go", async || {
        !first_segment(cluster.master.data_dir()).exists()
    })
    .await;
    // More than max-lag of log after the newest snapshot.
    write_batches(&cluster.master, 300, 600).await;
    cluster.add_slave(quick(Node::builder()).env("BITARK_REPLICATION__STAGE", "6")).await;
    cluster.wait_for_convergence(Duration::from_secs(60)).await;
    wait_state(&cluster.master, 0, "ALIVE").await;
    let master = &cluster.master;
    assert_eq!(support::counter(master, "bitark_full_syncs_total", &[("outcome", "started")]).await, 1, "synced again");
    assert!(!master.stderr_text().contains("OUTDATED"), "the slave was OUTDATED while being caught up");
}
