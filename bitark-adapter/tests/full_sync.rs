//! Stage 5 between real processes: a slave whose master's WAL no longer reaches back to
//! it full-syncs from a snapshot, chunk by chunk, resuming after any interruption, one
//! slave at a time when so configured, and then follows the master's log.

mod support;

use serde_json::Value;
use std::time::Duration;
use support::cluster::{replication_status, slave_entry, wait_state, Cluster, Role, CONVERGE_WITHIN};
use support::{counter, wait_until, Node, NodeBuilder};

/// Longest a full sync in these tests may take to converge.
const SYNCED_WITHIN: Duration = Duration::from_secs(120);

fn quick(builder: NodeBuilder) -> NodeBuilder {
    builder
        .env("BITARK_REPLICATION__REGISTER_INTERVAL", "100ms")
        .env("BITARK_REPLICATION__HEARTBEAT_INTERVAL", "100ms")
        .env("BITARK_REPLICATION__DEAD_AFTER", "2s")
        .env("BITARK_REPLICATION__RETRY__INITIAL_BACKOFF", "20ms")
        .env("BITARK_REPLICATION__RETRY__MAX_BACKOFF", "200ms")
}

/// A stage 5 master alone whose WAL is purged behind each snapshot.
async fn master(configure: impl FnMut(Role, usize, NodeBuilder) -> NodeBuilder + Send + 'static) -> Cluster {
    let mut configure = configure;
    Cluster::start_with(0, "5", move |role, index, builder| {
        let builder = quick(builder)
            .env("BITARK_WAL__SEGMENT_SIZE", "64KiB")
            .env("BITARK_SNAPSHOT__KEEP", 1)
            .env("BITARK_SNAPSHOT__EVERY_RECORDS", 0)
            .env("BITARK_SNAPSHOT__EVERY", "0s");
        configure(role, index, builder)
    })
    .await
}

/// Writes `batches` batches of 100 random ids for users `0..users`.
async fn load(node: &Node, batches: u64, users: u64, seed: u64) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let api = node.api();
    for i in 0..batches {
        let ids: Vec<u64> = (0..100).map(|_| rng.gen_range(0..4_000_000_000)).collect();
        api.mark_batch(i % users, &ids).await.expect("batch");
    }
}

/// Snapshots the master and checks its WAL no longer starts at LSN 1.
async fn snapshot_and_purge(master: &Node) {
    master.api().snapshot().await.expect("snapshot");
    let first = master.data_dir().join("wal").join("00000000000000000001.wal");
    wait_until(CONVERGE_WITHIN, "the master to purge its first WAL segment", async || !first.exists()).await;
}

fn slave(stage: &str) -> NodeBuilder {
    quick(Node::builder()).env("BITARK_REPLICATION__STAGE", stage)
}

#[tokio::test]
async fn a_new_empty_slave_joins_a_master_whose_early_wal_is_gone() {
    let mut cluster = master(|_, _, builder| builder).await;
    load(&cluster.master, 2000, 500, 1).await;
    snapshot_and_purge(&cluster.master).await;
    load(&cluster.master, 100, 500, 2).await;

    cluster.add_slave(slave("5")).await;
    cluster.wait_for_convergence(SYNCED_WITHIN).await;
    wait_state(&cluster.master, 0, "ALIVE").await;
    assert_eq!(counter(&cluster.master, "bitark_full_syncs_total", &[("outcome", "started")]).await, 1);
    let received = counter(&cluster.slaves[0], "bitark_full_sync_bytes_total", &[]).await;
    assert!(received > 0, "the slave did not receive a snapshot");

    // Then it follows the log.
    load(&cluster.master, 100, 500, 3).await;
    cluster.wait_for_convergence(CONVERGE_WITHIN).await;
    let status: Value = replication_status(&cluster.slaves[0]).await;
    assert!(status["fullSync"].is_null(), "{status}");
    assert_eq!(slave_entry(&cluster.master, 0).await.unwrap()["state"], "ALIVE");
}

/// A master whose transfers crawl (64 KiB chunks, at most 256 KiB/s), loaded with about
/// `batches` × 100 random marks and its WAL purged.
async fn slow_master(batches: u64, configure: fn(NodeBuilder) -> NodeBuilder) -> Cluster {
    let cluster = master(move |_, _, builder| {
        configure(
            builder
                .env("BITARK_REPLICATION__FULL_SYNC__CHUNK_SIZE", "64KiB")
                .env("BITARK_REPLICATION__FULL_SYNC__MAX_BYTES_PER_SECOND", "256KiB"),
        )
    })
    .await;
    load(&cluster.master, batches, 1000, 7).await;
    snapshot_and_purge(&cluster.master).await;
    cluster
}

/// The size of the snapshot the master serves to `slaves[0]`, once it serves it.
async fn transfer_size(cluster: &Cluster) -> u64 {
    let mut size = 0;
    wait_until(CONVERGE_WITHIN, "a full sync to start", async || {
        let entry = slave_entry(&cluster.master, 0).await;
        size = entry.and_then(|e| e["fullSyncSize"].as_u64()).unwrap_or(0);
        size > 0
    })
    .await;
    size
}

#[tokio::test]
async fn a_slave_killed_mid_transfer_resumes_where_it_was() {
    let mut cluster = slow_master(3000, |b| b).await;
    cluster.add_slave(slave("5")).await;
    let size = transfer_size(&cluster).await;
    let slave = &cluster.slaves[0];
    wait_until(CONVERGE_WITHIN, "a quarter of the snapshot to arrive", async || {
        counter(slave, "bitark_full_sync_bytes_total", &[]).await >= size / 4
    })
    .await;
    cluster.slaves[0].sigkill();
    cluster.respawn_slave(0).await;
    cluster.wait_for_convergence(SYNCED_WITHIN).await;
    let after_restart = counter(&cluster.slaves[0], "bitark_full_sync_bytes_total", &[]).await;
    assert!(after_restart < size * 4 / 5, "the new process fetched {after_restart} of {size} bytes: it started over");
    assert_eq!(counter(&cluster.master, "bitark_full_syncs_total", &[("outcome", "resumed")]).await, 1);
    assert!(cluster.slaves[0].stderr_text().contains("resuming the full-sync download"));
}

#[tokio::test]
async fn a_slave_killed_between_download_and_install_installs_after_its_restart() {
    let mut cluster = master(|_, _, builder| builder).await;
    load(&cluster.master, 1000, 200, 11).await;
    snapshot_and_purge(&cluster.master).await;
    // The slave stops for a minute right after the download is verified.
    cluster.add_slave(slave("5").env("FAILPOINTS", "fullsync::before-install=sleep(60000)")).await;
    wait_until(CONVERGE_WITHIN, "the download to be verified", async || {
        cluster.slaves[0].stderr_text().contains("downloaded and verified; installing")
    })
    .await;
    cluster.slaves[0].sigkill();
    cluster.slaves[0].set_env("FAILPOINTS", "");
    cluster.respawn_slave(0).await;
    cluster.wait_for_convergence(SYNCED_WITHIN).await;
    let fetched = counter(&cluster.slaves[0], "bitark_full_sync_bytes_total", &[]).await;
    assert_eq!(fetched, 0, "the whole download was there: nothing to fetch again");
}

#[tokio::test]
async fn a_slave_killed_in_the_middle_of_the_swap_finishes_it_when_it_restarts() {
    let mut cluster = master(|_, _, builder| builder).await;
    // Some history of its own first, so the swap has something to replace: the slave
    // follows the master's log, stops, and the master's WAL moves past it.
    load(&cluster.master, 300, 200, 12).await;
    cluster.add_slave(slave("5")).await;
    cluster.wait_for_convergence(SYNCED_WITHIN).await;
    assert!(cluster.slaves[0].stop().await.success());
    let old_segment = cluster.slaves[0].data_dir().join("wal").join("00000000000000000001.wal");
    assert!(old_segment.exists(), "the slave logged the master's records from LSN 1");
    load(&cluster.master, 1000, 200, 13).await;
    snapshot_and_purge(&cluster.master).await;
    cluster.slaves[0].set_env("FAILPOINTS", "fullsync::after-commit=sleep(60000)");
    cluster.respawn_slave(0).await;
    wait_until(CONVERGE_WITHIN, "the install to pass its commit point", async || {
        cluster.slaves[0].stderr_text().contains("downloaded and verified; installing")
            && cluster.slaves[0].data_dir().join("fullsync/INSTALL").exists()
    })
    .await;
    cluster.slaves[0].sigkill();
    cluster.slaves[0].set_env("FAILPOINTS", "");
    cluster.respawn_slave(0).await;
    cluster.wait_for_convergence(SYNCED_WITHIN).await;
    let stderr = cluster.slaves[0].stderr_text();
    assert!(stderr.contains("finished installing a full-sync snapshot that a stop interrupted"), "{stderr}");
    assert!(!cluster.slaves[0].data_dir().join("fullsync/INSTALL").exists());
    assert!(!old_segment.exists(), "the slave's old log outlived the swap");
}

#[tokio::test]
async fn a_master_killed_mid_transfer_is_waited_for_and_the_sync_completes() {
    let mut cluster = slow_master(2000, |b| b).await;
    cluster.add_slave(slave("5")).await;
    let size = transfer_size(&cluster).await;
    wait_until(CONVERGE_WITHIN, "part of the snapshot to arrive", async || {
        counter(&cluster.slaves[0], "bitark_full_sync_bytes_total", &[]).await >= size / 5
    })
    .await;
    cluster.master.sigkill();
    cluster.restart_master().await;
    cluster.wait_for_convergence(SYNCED_WITHIN).await;
    wait_state(&cluster.master, 0, "ALIVE").await;
}

#[tokio::test]
async fn a_chunk_damaged_on_the_wire_is_fetched_again() {
    let mut cluster = master(|_, _, builder| builder.env("BITARK_REPLICATION__FULL_SYNC__CHUNK_SIZE", "64KiB")).await;
    load(&cluster.master, 1500, 300, 13).await;
    snapshot_and_purge(&cluster.master).await;
    // The slave reaches the master through the master proxy: damage two answers.
    cluster.master_proxy.set_mode(support::proxy::Mode::FlipNext(2));
    cluster.add_slave(slave("5")).await;
    cluster.wait_for_convergence(SYNCED_WITHIN).await;
    assert_eq!(cluster.master_proxy.stats().bits_flipped, 2);
    let failures = counter(&cluster.slaves[0], "bitark_replication_crc_failures_total", &[]).await;
    assert!(failures >= 1, "no damaged chunk was noticed");
}

#[tokio::test]
async fn with_one_transfer_at_a_time_three_slaves_sync_one_after_the_other() {
    let mut cluster = slow_master(800, |b| b.env("BITARK_REPLICATION__FULL_SYNC__MAX_CONCURRENT", 1)).await;
    for _ in 0..3 {
        cluster.add_slave(slave("5")).await;
    }
    let mut queued = false;
    let mut most_syncing = 0;
    let all_done = support::poll_until(SYNCED_WITHIN, async || {
        let status = replication_status(&cluster.master).await;
        let slaves = status["slaves"].as_array().cloned().unwrap_or_default();
        let syncing = slaves.iter().filter(|s| s["state"] == "FULL_SYNCING").count();
        most_syncing = most_syncing.max(syncing);
        queued |= slaves.iter().any(|s| s["state"] == "FULL_SYNC_QUEUED" && s["queuePosition"].as_u64().is_some());
        slaves.len() == 3 && slaves.iter().all(|s| s["state"] == "ALIVE")
    })
    .await;
    assert!(all_done, "the three slaves did not all sync: {}", replication_status(&cluster.master).await);
    assert_eq!(most_syncing, 1, "more than one transfer ran at once");
    assert!(queued, "no slave was ever seen waiting its turn");
    wait_until(CONVERGE_WITHIN, "the three transfers to complete", async || {
        counter(&cluster.master, "bitark_full_syncs_total", &[("outcome", "completed")]).await == 3
    })
    .await;
    cluster.wait_for_convergence(CONVERGE_WITHIN).await;
}

#[tokio::test]
async fn a_new_empty_slave_joins_a_master_holding_five_million_marks() {
    let mut cluster = master(|_, _, builder| builder).await;
    let api = cluster.master.api();
    // 500 users × 10,000 read ids, plus scattered ones.
    for user in 0..500u64 {
        let from = user * 1_000_003;
        api.mark_range(user, from, from + 9_999).await.expect("range");
    }
    load(&cluster.master, 500, 500, 21).await;
    let marks = api.info().await.unwrap()["marks"].as_u64().unwrap();
    assert!(marks >= 5_000_000, "{marks} marks");
    snapshot_and_purge(&cluster.master).await;

    cluster.add_slave(slave("5")).await;
    cluster.wait_for_convergence(SYNCED_WITHIN).await;
    load(&cluster.master, 200, 500, 22).await;
    cluster.wait_for_convergence(CONVERGE_WITHIN).await;
    wait_state(&cluster.master, 0, "ALIVE").await;
}

#[tokio::test]
async fn a_slave_whose_log_is_damaged_discards_it_and_full_syncs_when_allowed() {
    let mut cluster = master(|_, _, builder| builder).await;
    load(&cluster.master, 300, 100, 31).await;
    cluster.add_slave(slave("5").env("BITARK_REPLICATION__RESYNC_ON_CORRUPTION", "true")).await;
    cluster.wait_for_convergence(SYNCED_WITHIN).await;
    assert!(cluster.slaves[0].stop().await.success());

    // A damaged byte a third of the way into the slave's log: records follow it, so it
    // is no torn tail, and the slave could not start on it.
    let wal = cluster.slaves[0].data_dir().join("wal");
    let segment = std::fs::read_dir(&wal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "wal"))
        .expect("a WAL segment");
    let mut bytes = std::fs::read(&segment).unwrap();
    let at = bytes.len() / 3;
    bytes[at] ^= 0xff;
    std::fs::write(&segment, &bytes).unwrap();
    // Meanwhile the master's WAL moves past everything the slave had.
    load(&cluster.master, 300, 100, 32).await;
    snapshot_and_purge(&cluster.master).await;

    cluster.respawn_slave(0).await;
    cluster.wait_for_convergence(SYNCED_WITHIN).await;
    let slave = &cluster.slaves[0];
    let stderr = slave.stderr_text();
    assert!(stderr.contains("LOCAL STATE DISCARDED"), "{stderr}");
    assert!(stderr.contains(&segment.display().to_string()), "the log names the damaged file:\n{stderr}");
    assert_eq!(counter(slave, "bitark_resyncs_on_corruption_total", &[]).await, 1);
    assert!(counter(slave, "bitark_full_syncs_total", &[("outcome", "completed")]).await >= 1);
    let kept: Vec<_> = std::fs::read_dir(slave.data_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("discarded-"))
        .collect();
    assert_eq!(kept.len(), 1, "the damaged state is kept aside once: {kept:?}");
    let name = segment.file_name().unwrap();
    let moved = slave.data_dir().join(&kept[0]).join("wal").join(name);
    assert_eq!(std::fs::read(moved).unwrap(), bytes, "the damaged log is kept as it was found");
}

#[tokio::test]
async fn a_transfer_serves_only_the_slave_process_it_was_granted_to() {
    let mut cluster = slow_master(1500, |b| b).await;
    cluster.add_slave(slave("5")).await;
    transfer_size(&cluster).await;
    // The first transfer of this master process has id 1.
    let chunk = |query: &'static str| {
        let url = format!("{}/internal/replication/full-sync/1?{query}", cluster.master.url());
        reqwest::Client::new().get(url).bearer_auth(support::cluster::CLUSTER_TOKEN).send()
    };
    let forged = chunk("offset=0&session=forged").await.unwrap();
    assert_eq!(forged.status(), reqwest::StatusCode::NOT_FOUND, "another session read the transfer");
    let anonymous = chunk("offset=0").await.unwrap();
    assert_eq!(anonymous.status(), reqwest::StatusCode::BAD_REQUEST);
    cluster.wait_for_convergence(SYNCED_WITHIN).await;
}

#[tokio::test]
async fn a_capped_transfer_completes_though_chunks_asked_ahead_wait_past_the_request_timeout() {
    // 64 KiB chunks at 256 KiB/s: the fourth chunk asked for ahead waits 0.75 s at the
    // master, longer than the slave's 500 ms request timeout. 150,000 marks make a
    // snapshot of about 600 KiB, well past the first second's 256 KiB: with 60,000 (250
    // KiB) nothing was ever held back, and the transfer could end before it was seen.
    let mut cluster = slow_master(1500, |b| b).await;
    cluster.add_slave(slave("5").env("BITARK_REPLICATION__REQUEST_TIMEOUT", "500ms")).await;
    let size = transfer_size(&cluster).await;
    cluster.wait_for_convergence(SYNCED_WITHIN).await;
    wait_state(&cluster.master, 0, "ALIVE").await;
    assert_eq!(counter(&cluster.master, "bitark_full_syncs_total", &[("outcome", "started")]).await, 1);
    // No chunk timed out and was asked again: the master sent each byte once.
    assert_eq!(counter(&cluster.master, "bitark_full_sync_bytes_total", &[]).await, size);
}

/// A snapshot smaller than one chunk (the default 4 MiB) is paced by the cap too: it is
/// cut into chunks of a quarter second of the cap, and the master is seen with part of it
/// sent. Sent whole at wire speed, it would go from nothing to everything at once.
#[tokio::test]
async fn a_snapshot_smaller_than_one_chunk_goes_no_faster_than_the_cap() {
    let mut cluster =
        master(|_, _, builder| builder.env("BITARK_REPLICATION__FULL_SYNC__MAX_BYTES_PER_SECOND", "256KiB")).await;
    load(&cluster.master, 1500, 1000, 7).await;
    snapshot_and_purge(&cluster.master).await;
    cluster.add_slave(slave("5")).await;
    let size = transfer_size(&cluster).await;
    assert!(size < 4 << 20, "the snapshot ({size} bytes) fits one default chunk");
    wait_until(CONVERGE_WITHIN, "the master to have sent part of the snapshot", async || {
        let sent = slave_entry(&cluster.master, 0).await.and_then(|e| e["fullSyncBytes"].as_u64());
        sent.is_some_and(|sent| sent > 0 && sent < size)
    })
    .await;
    cluster.wait_for_convergence(SYNCED_WITHIN).await;
    assert_eq!(counter(&cluster.master, "bitark_full_sync_bytes_total", &[]).await, size);
}

#[tokio::test]
async fn a_restarted_slave_resumes_its_snapshot_though_the_master_took_a_newer_one() {
    let mut cluster = slow_master(3000, |b| b).await;
    cluster.add_slave(slave("5")).await;
    let size = transfer_size(&cluster).await;
    wait_until(CONVERGE_WITHIN, "a quarter of the snapshot to arrive", async || {
        counter(&cluster.slaves[0], "bitark_full_sync_bytes_total", &[]).await >= size / 4
    })
    .await;
    cluster.slaves[0].sigkill();
    // Writes go on and the master snapshots again (it keeps one snapshot, plus pinned ones).
    load(&cluster.master, 50, 1000, 8).await;
    cluster.master.api().snapshot().await.expect("snapshot");
    cluster.respawn_slave(0).await;
    cluster.wait_for_convergence(SYNCED_WITHIN).await;
    let after_restart = counter(&cluster.slaves[0], "bitark_full_sync_bytes_total", &[]).await;
    assert!(after_restart < size * 4 / 5, "the new process fetched {after_restart} of {size} bytes: it started over");
    assert_eq!(counter(&cluster.master, "bitark_full_syncs_total", &[("outcome", "resumed")]).await, 1);
}
