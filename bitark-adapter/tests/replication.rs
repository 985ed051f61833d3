//! Master → slave replication between real processes, stage by stage.
//!
//! Writes on the master reach every slave; a restarted master or slave resumes where it
//! stood instead of resending the history; a lost acknowledgement costs a skipped
//! duplicate, never a second apply; a frozen slave is marked SLOW and caught up from the
//! WAL; nodes at different stages use the flags they share, and a cluster rolls back
//! and forward on the same data; flags out of rollout order, a slave without a master,
//! a wrong cluster token and a damaged batch are all refused.
//!
//! Slaves register (their keep-alive) every 100ms and failed sends are retried within
//! 200ms, so each scenario takes seconds. Writers own disjoint users, so the expected
//! flag of a key is the one its writer's last acknowledged write gave it. Every write is
//! one WAL record: counts of writes are counts of LSNs.

mod support;

use bitark_common::{Command, Epoch, Lsn, Record};
use rand::rngs::StdRng;
use rand::SeedableRng;
use reqwest::{header, Method, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};
use support::cluster::{
    listed_slaves, replication_status, slave_entry, slave_id, wait_for_convergence, wait_state, Cluster, Role,
    CLUSTER_TOKEN,
};
use support::fake_master::{self, FakeMaster};
use support::proxy::Mode;
use support::workload::Write;
use support::{counter, metric, poll_until, wait_until, Api, Node, NodeBuilder, PROCESS_TIMEOUT};
use tokio::task::JoinSet;

/// Longest wait for slaves to catch up, or for a replication state to show.
const CONVERGE: Duration = Duration::from_secs(30);
const USERS_PER_WRITER: u64 = 2;
const MSGS_PER_USER: u64 = 64;

const STAGE: &str = "BITARK_REPLICATION__STAGE";
const RECEIVED: &str = "bitark_replication_received_records_total";
const DUPLICATES: &str = "bitark_replication_duplicates_skipped_total";
const SENT: &str = "bitark_replication_sent_records_total";
const RETRIES: &str = "bitark_replication_retries_total";
const CAUGHT_UP: &str = "bitark_replication_caught_up_records_total";
const CRC_FAILURES: &str = "bitark_replication_crc_failures_total";
const PROGRESS_FILE: &str = "slave-progress.bin";
const PROGRESS_MAGIC: u32 = 0xCAFE_BABE;
/// Spelled out rather than imported, so a change to the wire format shows here.
const WAL_CONTENT_TYPE: &str = "application/x-bitark-wal";

/// Settings that keep each scenario short: a registration every 100ms, retries
/// within 200ms.
fn quick(builder: NodeBuilder) -> NodeBuilder {
    builder
        .env("BITARK_REPLICATION__REGISTER_INTERVAL", "100ms")
        .env("BITARK_REPLICATION__RETRY__INITIAL_BACKOFF", "20ms")
        .env("BITARK_REPLICATION__RETRY__MAX_BACKOFF", "200ms")
}

async fn quick_cluster(slaves: usize, stage: &str) -> Cluster {
    Cluster::start_with(slaves, stage, |_, _, builder| quick(builder)).await
}

/// The `features` object of a node or a slave link at `stage`.
fn features_at(stage: &str) -> Value {
    let on = |from: f64| stage.parse::<f64>().expect("a stage") >= from;
    json!({
        "notify": on(1.0), "progress": on(2.0), "bounded-buffer": on(2.5), "reliable": on(3.0),
        "heartbeat": on(4.0), "full-sync": on(5.0), "cluster-gc": on(6.0), "fencing": on(7.0), "ack-modes": on(7.0),
        "failover": false,
    })
}

// ---------------------------------------------------------------------------------
// Writes and the model of what they leave behind.

/// The users writer `writer` owns; no other writer touches them.
fn users_of(writer: u64) -> Vec<u64> {
    (0..USERS_PER_WRITER).map(|i| 1 + writer * USERS_PER_WRITER + i).collect()
}

/// The expected flag of every key of the users some writer owns.
struct Model {
    read: BTreeMap<(u64, u64), bool>,
}

impl Model {
    /// Nothing read yet, for the users of writers `0..writers`.
    fn new(writers: u64) -> Model {
        let keys = (0..writers).flat_map(users_of).flat_map(|user| (0..MSGS_PER_USER).map(move |msg| (user, msg)));
        Model { read: keys.map(|key| (key, false)).collect() }
    }

    fn users(&self) -> Vec<u64> {
        let mut users: Vec<u64> = self.read.keys().map(|(user, _)| *user).collect();
        users.dedup();
        users
    }
}

/// What a load did.
struct LoadReport {
    /// Acknowledged writes, each one record.
    writes: u64,
    /// Time to the answer of each write.
    latencies: Vec<Duration>,
}

/// Sends `per_writer` random writes from each of `writers` concurrent tasks, each task
/// one write at a time on its own users, and records their effects in `model`. Panics
/// if a write is not acknowledged: nothing here makes the master refuse one.
async fn write_load(api: &Api, model: &mut Model, writers: u64, per_writer: usize, seed: u64) -> LoadReport {
    let mut tasks = JoinSet::new();
    for writer in 0..writers {
        let (api, users) = (api.clone(), users_of(writer));
        let mut rng = StdRng::seed_from_u64(seed * 1000 + writer);
        tasks.spawn(async move {
            let mut done = Vec::with_capacity(per_writer);
            for _ in 0..per_writer {
                let write = Write::random(&mut rng, &users, MSGS_PER_USER);
                let started = Instant::now();
                write.send(&api).await.unwrap_or_else(|e| panic!("{write:?} on the master: {e}"));
                done.push((write, started.elapsed()));
            }
            (writer, done)
        });
    }
    let mut by_writer = tasks.join_all().await;
    by_writer.sort_by_key(|(writer, _)| *writer);
    let mut report = LoadReport { writes: 0, latencies: Vec::new() };
    for (_, done) in by_writer {
        for (write, latency) in done {
            model.read.extend(write.effects());
            report.writes += 1;
            report.latencies.push(latency);
        }
    }
    report
}

/// Panics unless `node` holds exactly the flags of `model`.
async fn assert_holds(node: &Node, model: &Model, who: &str) {
    let api = node.api();
    let msgs: Vec<u64> = (0..MSGS_PER_USER).collect();
    let mut wrong = Vec::new();
    for user in model.users() {
        let flags = api.check(user, &msgs).await.unwrap_or_else(|e| panic!("{who}: check user {user}: {e}"));
        assert_eq!(flags.len(), msgs.len(), "{who}: one flag per id");
        let differ = msgs.iter().zip(flags).filter(|(msg, read)| model.read[&(user, **msg)] != *read);
        wrong.extend(differ.map(|(msg, read)| ((user, *msg), read)));
    }
    assert!(wrong.is_empty(), "{who}: flags unlike the last acknowledged writes, as ((user, msg), found): {wrong:?}");
}

/// The `p`-th percentile of `latencies`.
fn percentile(latencies: &[Duration], p: f64) -> Duration {
    let mut sorted = latencies.to_vec();
    sorted.sort();
    sorted[((sorted.len() as f64 * p / 100.0).ceil() as usize).clamp(1, sorted.len()) - 1]
}

// ---------------------------------------------------------------------------------
// What the nodes show.

async fn applied_lsn(node: &Node) -> u64 {
    node.api().digest().await.unwrap_or_else(|e| panic!("digest of {}: {e}", node.url())).applied_lsn
}

/// Waits until each of `slaves` says it is registered and the master lists it ALIVE.
/// Needed before writing at stages 1 and 2, which cannot send a slave what was
/// committed before it registered.
async fn wait_registered(master: &Node, slaves: &[Node]) {
    for (index, slave) in slaves.iter().enumerate() {
        let what = format!("{} to register with the master", slave_id(index));
        wait_until(CONVERGE, &what, async || {
            let registered = replication_status(slave).await["registered"] == true;
            registered && slave_entry(master, index).await.is_some_and(|entry| entry["state"] == "ALIVE")
        })
        .await;
    }
}

/// Waits until the master lists `slaves[index]` ALIVE with everything it holds
/// acknowledged; panics with what the master last showed.
async fn wait_acknowledged(master: &Node, index: usize) {
    let mut last = (0, None);
    let acknowledged = poll_until(CONVERGE, async || {
        last = (applied_lsn(master).await, slave_entry(master, index).await);
        let (applied, entry) = &last;
        entry.as_ref().is_some_and(|e| e["state"] == "ALIVE" && e["lastAckLsn"].as_u64() == Some(*applied))
    })
    .await;
    let (applied, entry) = last;
    let id = slave_id(index);
    assert!(
        acknowledged,
        "{id} is not ALIVE with LSN {applied} acknowledged after {CONVERGE:?}; the master shows {entry:?}"
    );
}

/// The LSN in `slave-progress.bin` of `data_dir`, after checking its size and magic.
fn progress_file_lsn(data_dir: &Path) -> u64 {
    let path = data_dir.join(PROGRESS_FILE);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(bytes.len(), 32, "{} is 32 bytes", path.display());
    let magic = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes"));
    assert_eq!(magic, PROGRESS_MAGIC, "{} starts with the magic 0xCAFEBABE", path.display());
    u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"))
}

/// Sends a request with an optional JSON body.
async fn request(method: Method, url: &str, body: Option<Value>) -> reqwest::Response {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("HTTP client");
    let mut request = http.request(method.clone(), url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

// ---------------------------------------------------------------------------------
// The scenarios.

#[tokio::test]
async fn writes_on_the_master_become_readable_on_every_slave_and_slaves_redirect_writes() {
    const WRITERS: u64 = 8;
    let cluster = quick_cluster(2, "3").await;
    wait_registered(&cluster.master, &cluster.slaves).await;
    let mut model = Model::new(WRITERS);
    let load = write_load(&cluster.master.api(), &mut model, WRITERS, 60, 1).await;
    cluster.wait_for_convergence(CONVERGE).await;
    assert_eq!(applied_lsn(&cluster.master).await, load.writes, "one record per write");
    assert_holds(&cluster.master, &model, "master").await;
    for (index, slave) in cluster.slaves.iter().enumerate() {
        assert_holds(slave, &model, &slave_id(index)).await;
    }

    // A write sent to a slave is refused with the same request's address on the master.
    let (slave, master_url) = (&cluster.slaves[1], cluster.master_proxy.url());
    let applied = applied_lsn(slave).await;
    let user = 900;
    let writes = [
        (Method::PUT, format!("/api/v1/users/{user}/reads/1"), None),
        (Method::DELETE, format!("/api/v1/users/{user}/reads/1"), None),
        (Method::POST, format!("/api/v1/users/{user}/reads"), Some(json!({ "msgIds": [1, 2] }))),
        (Method::POST, format!("/api/v1/users/{user}/reads"), Some(json!({ "from": 1, "to": 4 }))),
    ];
    for (method, path, body) in writes {
        let response = request(method.clone(), &format!("{}{path}", slave.url()), body).await;
        assert_eq!(response.status(), StatusCode::CONFLICT, "{method} {path} on a slave");
        let location = response.headers().get(header::LOCATION).map(|v| v.to_str().expect("ASCII").to_owned());
        assert_eq!(location, Some(format!("{master_url}{path}")), "{method} {path}: Location");
        let body: Value = response.json().await.expect("a JSON error body");
        assert_eq!(body["error"], "not_master", "{method} {path}: {body}");
        assert_eq!(body["masterUrl"], master_url.as_str(), "{method} {path}: {body}");
    }
    assert_eq!(applied_lsn(slave).await, applied, "a refused write logs nothing on the slave");
    assert_eq!(slave.api().check(user, &[1, 2, 3]).await.expect("check"), [false; 3]);

    // Following the Location writes on the master, and the write comes back to the slave.
    let response = request(Method::PUT, &format!("{master_url}/api/v1/users/{user}/reads/1"), None).await;
    assert_eq!(response.status(), StatusCode::OK, "PUT at the Location");
    cluster.wait_for_convergence(CONVERGE).await;
    for slave in &cluster.slaves {
        assert_eq!(slave.api().check(user, &[1, 2]).await.expect("check"), [true, false]);
    }
}

#[tokio::test]
async fn a_restarted_master_relearns_its_slave_and_sends_only_new_records() {
    const WRITERS: u64 = 4;
    let mut cluster = quick_cluster(1, "3").await;
    wait_registered(&cluster.master, &cluster.slaves).await;
    let mut model = Model::new(WRITERS);
    write_load(&cluster.master.api(), &mut model, WRITERS, 150, 2).await;
    cluster.wait_for_convergence(CONVERGE).await;

    for (seed, killed) in [(3, false), (4, true)] {
        let how = if killed { "after SIGKILL" } else { "after a graceful restart" };
        let history = applied_lsn(&cluster.master).await;
        let received_before = counter(&cluster.slaves[0], RECEIVED, &[]).await;
        if killed {
            cluster.master.sigkill();
        }
        cluster.restart_master().await;

        let new = write_load(&cluster.master.api(), &mut model, WRITERS, 50, seed).await.writes;
        cluster.wait_for_convergence(CONVERGE).await;
        // The slave's keep-alive told the new master process where it stands.
        wait_acknowledged(&cluster.master, 0).await;
        let received = counter(&cluster.slaves[0], RECEIVED, &[]).await - received_before;
        assert_eq!(received, new, "{how}: the slave applied the {new} new records once each, nothing more");
        let sent = counter(&cluster.master, SENT, &[("slave", "slave-1")]).await;
        assert!(
            (new..history).contains(&sent),
            "{how}: the master sent {sent} records for {new} new ones on top of a history of {history}"
        );
    }
    assert_holds(&cluster.master, &model, "master").await;
    assert_holds(&cluster.slaves[0], &model, "slave-1").await;
}

#[tokio::test]
async fn lost_acknowledgements_are_retried_and_the_resent_records_skipped_not_applied_twice() {
    const WRITERS: u64 = 4;
    let cluster = quick_cluster(1, "3").await;
    wait_registered(&cluster.master, &cluster.slaves).await;
    let (master, slave, proxy) = (&cluster.master, &cluster.slaves[0], &cluster.proxies[0]);
    let mut model = Model::new(WRITERS);
    // The slave logs and applies the batches; the answers of some, then of all, never
    // reach the master. Losing all of them until the load is over leaves the master's
    // last send failed while the slave's keep-alive reports it holds everything.
    for (seed, mode) in [(5, Mode::DropNext(5)), (6, Mode::DropResponses)] {
        let (dropped, duplicates) = (proxy.stats().responses_dropped, counter(slave, DUPLICATES, &[]).await);
        let retries = counter(master, RETRIES, &[("slave", "slave-1")]).await;
        proxy.set_mode(mode);
        write_load(&master.api(), &mut model, WRITERS, 100, seed).await;
        cluster.wait_for_convergence(CONVERGE).await;
        proxy.set_mode(Mode::Pass);
        assert!(proxy.stats().responses_dropped > dropped, "{mode:?}: no acknowledgement was lost");

        let duplicates = counter(slave, DUPLICATES, &[]).await - duplicates;
        assert!(duplicates > 0, "{mode:?}: the batches of the lost acknowledgements were not sent again");
        let (received, applied) = (counter(slave, RECEIVED, &[]).await, applied_lsn(slave).await);
        assert_eq!(received, applied, "{mode:?}: each of the {applied} LSNs applied once ({duplicates} skipped)");
        let retries = counter(master, RETRIES, &[("slave", "slave-1")]).await - retries;
        assert!(retries > 0, "{mode:?}: the master never retried a send");
        assert_holds(slave, &model, "slave-1").await;
        // Reachable again and holding everything: the failed sends are behind it.
        wait_acknowledged(master, 0).await;
    }
}

/// How a slave goes down, and what it finds when it comes back.
#[derive(Clone, Copy, Debug)]
enum SlaveDown {
    /// SIGTERM: it writes its final position to `slave-progress.bin`.
    Stopped,
    Killed,
    /// Stopped, then its progress file is damaged: a checksum mismatch over an LSN
    /// that would resend most of the history.
    DamagedProgress,
    /// Stopped, then its progress file is deleted.
    MissingProgress,
}

#[tokio::test]
async fn a_restarted_slave_resumes_from_its_own_position_not_from_the_start() {
    const WRITERS: u64 = 4;
    let mut cluster = quick_cluster(1, "3").await;
    wait_registered(&cluster.master, &cluster.slaves).await;
    let mut model = Model::new(WRITERS);
    write_load(&cluster.master.api(), &mut model, WRITERS, 100, 6).await;
    cluster.wait_for_convergence(CONVERGE).await;

    let phases = [SlaveDown::Stopped, SlaveDown::Killed, SlaveDown::DamagedProgress, SlaveDown::MissingProgress];
    for (seed, down) in (7..).step_by(2).zip(phases) {
        let progress = cluster.slaves[0].data_dir().join(PROGRESS_FILE);
        let history = applied_lsn(&cluster.master).await;
        if let SlaveDown::Killed = down {
            cluster.slaves[0].sigkill();
        } else {
            let status = cluster.slaves[0].stop().await;
            assert!(status.success(), "{down:?}: graceful stop exited {status}");
            assert_eq!(progress_file_lsn(cluster.slaves[0].data_dir()), history, "{down:?}: final position");
        }
        match down {
            SlaveDown::DamagedProgress => {
                let mut bytes = std::fs::read(&progress).expect("read the progress file");
                bytes[8..16].copy_from_slice(&1u64.to_le_bytes());
                std::fs::write(&progress, bytes).expect("damage the progress file");
            }
            SlaveDown::MissingProgress => std::fs::remove_file(&progress).expect("delete the progress file"),
            SlaveDown::Stopped | SlaveDown::Killed => {}
        }

        let master = cluster.master.api();
        let while_down = write_load(&master, &mut model, WRITERS, 40, seed).await.writes;
        cluster.restart_slave(0).await;
        let after = write_load(&master, &mut model, WRITERS, 40, seed + 1).await.writes;
        cluster.wait_for_convergence(CONVERGE).await;

        let slave = &cluster.slaves[0];
        let received = counter(slave, RECEIVED, &[]).await;
        assert_eq!(
            received,
            while_down + after,
            "{down:?}: the new slave process applied {received} records, not the {while_down} written while \
             it was down plus the {after} written since"
        );
        // Records it already held and was sent again: what it resumed from.
        let duplicates = counter(slave, DUPLICATES, &[]).await;
        match down {
            // Its progress file may miss the last few records it applied.
            SlaveDown::Killed => assert!(duplicates < history, "{down:?}: {duplicates} of {history} records resent"),
            SlaveDown::Stopped => assert_eq!(duplicates, 0, "{down:?}: resumed before its final position"),
            SlaveDown::DamagedProgress | SlaveDown::MissingProgress => {
                let stderr = slave.stderr_text();
                assert!(stderr.contains(PROGRESS_FILE), "{down:?}: the log does not name {PROGRESS_FILE}:\n{stderr}");
                assert_eq!(duplicates, 0, "{down:?}: resumed before its local log position");
            }
        }
        let applied = applied_lsn(slave).await;
        wait_until(CONVERGE, "slave-progress.bin to reach the applied LSN", async || {
            progress.exists() && progress_file_lsn(slave.data_dir()) == applied
        })
        .await;
    }
    assert_holds(&cluster.slaves[0], &model, "slave-1").await;
}

#[tokio::test]
async fn a_frozen_slave_is_marked_slow_and_caught_up_from_the_wal_once_it_thaws() {
    const WRITERS: u64 = 4;
    let mut cluster = Cluster::start_with(1, "3", |_, _, builder| {
        quick(builder)
            .env("BITARK_REPLICATION__BUFFER__MAX_RECORDS", 50)
            .env("BITARK_REPLICATION__REQUEST_TIMEOUT", "300ms")
    })
    .await;
    wait_registered(&cluster.master, &cluster.slaves).await;
    let mut model = Model::new(WRITERS);
    let before = write_load(&cluster.master.api(), &mut model, WRITERS, 100, 20).await;
    cluster.wait_for_convergence(CONVERGE).await;

    cluster.slaves[0].sigstop();
    let frozen = write_load(&cluster.master.api(), &mut model, WRITERS, 100, 21).await;
    wait_state(&cluster.master, 0, "SLOW").await;
    eprintln!(
        "write latency p99: {:?} with the slave running, {:?} with it frozen ({} writes each)",
        percentile(&before.latencies, 99.0),
        percentile(&frozen.latencies, 99.0),
        frozen.latencies.len()
    );

    cluster.slaves[0].sigcont();
    cluster.wait_for_convergence(CONVERGE).await;
    wait_acknowledged(&cluster.master, 0).await;
    wait_state(&cluster.master, 0, "ALIVE").await;
    let caught_up = counter(&cluster.master, CAUGHT_UP, &[("slave", "slave-1")]).await;
    assert!(caught_up > 0, "the frozen slave was not caught up from the WAL");
    assert_holds(&cluster.slaves[0], &model, "slave-1").await;
}

/// A fresh master and slave at `stage` show its flags, negotiate them and replicate.
async fn stage_replicates_and_shows_its_flags(stage: &'static str, seed: u64) {
    const WRITERS: u64 = 3;
    let cluster = quick_cluster(1, stage).await;
    wait_registered(&cluster.master, &cluster.slaves).await;
    let expected = features_at(stage);
    let (master, slave) = (&cluster.master, &cluster.slaves[0]);
    assert_eq!(replication_status(master).await["features"], expected, "stage {stage}: master flags");
    assert_eq!(replication_status(slave).await["features"], expected, "stage {stage}: slave flags");
    let link = slave_entry(master, 0).await.expect("the master lists its slave");
    assert_eq!(link["features"], expected, "stage {stage}: flags the master uses with the slave");
    for (node, who) in [(master, "master"), (slave, "slave")] {
        for (flag, on) in expected.as_object().expect("an object") {
            let shown = metric(node, "bitark_replication_feature", &[("feature", flag)]).await;
            let want = if on == true { 1.0 } else { 0.0 };
            assert_eq!(shown, Some(want), "stage {stage}: {who}'s bitark_replication_feature{{feature=\"{flag}\"}}");
        }
    }
    let progress = &replication_status(slave).await["progressLsn"];
    let reliable = stage.parse::<f64>().expect("a stage") >= 3.0;
    assert_eq!(progress.is_u64(), reliable, "stage {stage}: slave progressLsn {progress}");

    let mut model = Model::new(WRITERS);
    write_load(&master.api(), &mut model, WRITERS, 50, seed).await;
    cluster.wait_for_convergence(CONVERGE).await;
    assert_holds(slave, &model, &format!("stage {stage} slave")).await;
}

#[tokio::test]
async fn every_stage_replicates_and_shows_its_flags() {
    // Side by side in one task: a panic in any of them fails the test at once.
    tokio::join!(
        stage_replicates_and_shows_its_flags("1", 30),
        stage_replicates_and_shows_its_flags("2", 31),
        stage_replicates_and_shows_its_flags("2.5", 32),
        stage_replicates_and_shows_its_flags("3", 33),
        stage_replicates_and_shows_its_flags("4", 34),
        stage_replicates_and_shows_its_flags("5", 35),
        stage_replicates_and_shows_its_flags("6", 36),
        stage_replicates_and_shows_its_flags("7", 37),
    );
}

#[tokio::test]
async fn rolling_back_to_stage_1_and_forward_to_stage_3_keeps_every_write() {
    const WRITERS: u64 = 4;
    let mut cluster = quick_cluster(1, "3").await;
    let mut model = Model::new(WRITERS);
    for (round, stage) in (40..).zip(["3", "1", "3"]) {
        if round > 40 {
            cluster.master.set_env(STAGE, stage);
            cluster.slaves[0].set_env(STAGE, stage);
            cluster.restart_master().await;
            cluster.restart_slave(0).await;
        }
        wait_registered(&cluster.master, &cluster.slaves).await;
        let link = slave_entry(&cluster.master, 0).await.expect("the master lists its slave");
        assert_eq!(link["features"], features_at(stage), "stage {stage}: flags the master uses with the slave");

        write_load(&cluster.master.api(), &mut model, WRITERS, 60, round).await;
        cluster.wait_for_convergence(CONVERGE).await;
        assert_holds(&cluster.master, &model, &format!("master at stage {stage}")).await;
        assert_holds(&cluster.slaves[0], &model, &format!("slave at stage {stage}")).await;
    }
}

#[tokio::test]
async fn rolling_back_from_stage_6_to_3_and_forward_again_under_load_loses_nothing_acknowledged() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let mut cluster = quick_cluster(1, "6").await;
    wait_registered(&cluster.master, &cluster.slaves).await;
    // One writer goes on through every restart; only what it was answered counts.
    let (acked, stop) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicBool::new(false)));
    let writer = {
        let (acked, stop, url) = (acked.clone(), stop.clone(), cluster.master_proxy.url());
        tokio::spawn(async move {
            let api = Api::new(&url);
            for msg in 0u64.. {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                match api.mark_read(1000 + msg % 8, msg).await {
                    Ok(_) => acked.lock().unwrap().push(msg),
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        })
    };
    for stage in ["3", "6"] {
        let before = acked.lock().unwrap().len();
        wait_until(CONVERGE, "writes to be acknowledged", async || acked.lock().unwrap().len() >= before + 100).await;
        cluster.master.set_env(STAGE, stage);
        cluster.slaves[0].set_env(STAGE, stage);
        cluster.restart_slave(0).await;
        cluster.restart_master().await;
        wait_registered(&cluster.master, &cluster.slaves).await;
        let link = slave_entry(&cluster.master, 0).await.expect("the master lists its slave");
        assert_eq!(link["features"], features_at(stage), "stage {stage}: flags the master uses with the slave");
    }
    let before = acked.lock().unwrap().len();
    wait_until(CONVERGE, "writes at the last stage", async || acked.lock().unwrap().len() >= before + 100).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    cluster.wait_for_convergence(CONVERGE).await;
    let acked = acked.lock().unwrap().clone();
    for node in [&cluster.master, &cluster.slaves[0]] {
        let api = node.api();
        for user in 1000..1008 {
            let msgs: Vec<u64> = acked.iter().copied().filter(|m| 1000 + m % 8 == user).collect();
            for chunk in msgs.chunks(500) {
                let flags = api.check(user, chunk).await.expect("check");
                let lost: Vec<u64> = chunk.iter().zip(flags).filter(|(_, read)| !read).map(|(m, _)| *m).collect();
                assert!(lost.is_empty(), "{}: acknowledged writes lost: {lost:?}", node.url());
            }
        }
    }
}

#[tokio::test]
async fn a_stage_3_master_uses_with_each_slave_only_the_flags_both_have() {
    const WRITERS: u64 = 4;
    let slave_stages = ["1", "2"];
    let cluster = Cluster::start_with(2, "3", move |role, index, builder| match role {
        Role::Master => quick(builder),
        Role::Slave => quick(builder).env(STAGE, slave_stages[index]),
    })
    .await;
    wait_registered(&cluster.master, &cluster.slaves).await;
    assert_eq!(replication_status(&cluster.master).await["features"], features_at("3"));
    for (index, stage) in slave_stages.iter().enumerate() {
        let link = slave_entry(&cluster.master, index).await.expect("the master lists the slave");
        assert_eq!(link["features"], features_at(stage), "{}, a stage {stage} slave", slave_id(index));
    }

    let mut model = Model::new(WRITERS);
    write_load(&cluster.master.api(), &mut model, WRITERS, 60, 50).await;
    cluster.wait_for_convergence(CONVERGE).await;
    for (index, slave) in cluster.slaves.iter().enumerate() {
        assert_holds(slave, &model, &slave_id(index)).await;
    }
    // The stage 2 slave acknowledges what it applied.
    wait_acknowledged(&cluster.master, 1).await;
}

#[tokio::test]
async fn a_stage_6_master_follows_stage_3_4_and_5_slaves_with_the_flags_each_has() {
    const WRITERS: u64 = 4;
    let slave_stages = ["3", "4", "5"];
    let cluster = Cluster::start_with(3, "6", move |role, index, builder| match role {
        Role::Master => quick(builder),
        Role::Slave => quick(builder).env(STAGE, slave_stages[index]),
    })
    .await;
    wait_registered(&cluster.master, &cluster.slaves).await;
    for (index, stage) in slave_stages.iter().enumerate() {
        let link = slave_entry(&cluster.master, index).await.expect("the master lists the slave");
        assert_eq!(link["features"], features_at(stage), "{}, a stage {stage} slave", slave_id(index));
    }
    let mut model = Model::new(WRITERS);
    write_load(&cluster.master.api(), &mut model, WRITERS, 60, 51).await;
    cluster.wait_for_convergence(CONVERGE).await;
    for (index, slave) in cluster.slaves.iter().enumerate() {
        assert_holds(slave, &model, &slave_id(index)).await;
        wait_acknowledged(&cluster.master, index).await;
    }
    // Only the slaves that beat are watched for heartbeats.
    let metrics = cluster.master.api().metrics_text().await.unwrap();
    let watched: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("bitark_replication_heartbeat_age_seconds{"))
        .filter_map(|l| l.split('"').nth(1))
        .collect();
    assert_eq!(watched, ["slave-2", "slave-3"], "heartbeat ages kept for {watched:?}");
}

#[tokio::test]
async fn flags_out_of_rollout_order_and_a_slave_without_a_master_stop_start_up() {
    let out_of_order = Node::builder()
        .env("BITARK_REPLICATION__FEATURES__NOTIFY", "true")
        .env("BITARK_REPLICATION__FEATURES__RELIABLE", "true")
        .spawn();
    let no_master = Node::builder().env("BITARK_NODE__ROLE", "slave").env(STAGE, "3").spawn();
    for (mut node, named) in [(out_of_order, &["reliable", "progress"][..]), (no_master, &["replication.master-url"])] {
        let status = node.wait_exit(PROCESS_TIMEOUT).await;
        let stderr = node.stderr_text();
        assert!(!status.success(), "started ({status}) despite the configuration:\n{stderr}");
        for name in named {
            assert!(stderr.contains(name), "the refusal does not name `{name}`:\n{stderr}");
        }
    }
}

#[tokio::test]
async fn replication_needs_the_cluster_token() {
    const WRITERS: u64 = 2;
    const TOKEN: &str = "cluster-secret";
    // slaves[1] has the wrong token and logs each refused registration.
    let cluster = Cluster::start_with(2, "3", |role, index, builder| match (role, index) {
        (Role::Slave, 1) => quick(builder)
            .env("BITARK_SECURITY__CLUSTER_TOKEN", "wrong-secret")
            .env("BITARK_LOG", "info,bitark_engine::replication=debug"),
        _ => quick(builder).env("BITARK_SECURITY__CLUSTER_TOKEN", TOKEN),
    })
    .await;
    let (master, trusted, intruder) = (&cluster.master, &cluster.slaves[..1], &cluster.slaves[1]);
    wait_registered(master, trusted).await;
    let mut model = Model::new(WRITERS);
    write_load(&master.api(), &mut model, WRITERS, 50, 60).await;
    wait_for_convergence(master, trusted, CONVERGE).await;
    assert_holds(&trusted[0], &model, "slave-1").await;

    wait_until(CONVERGE, "three refused registrations of the slave with the wrong token", async || {
        intruder.stderr_text().matches("answered 401").count() >= 3
    })
    .await;
    assert_eq!(listed_slaves(master).await, ["slave-1"], "the master follows a slave with the wrong token");
    let status = replication_status(intruder).await;
    assert_eq!((status["registered"].as_bool(), status["appliedLsn"].as_u64()), (Some(false), Some(0)), "{status}");

    let register = json!({
        "slaveId": "no-token", "url": support::dead_url(), "appliedLsn": 0,
        "features": features_at("3"), "session": "0123456789abcdef",
    });
    let url = format!("{}/internal/replication/register", master.url());
    let response = request(Method::POST, &url, Some(register)).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "registration without the token");
    let batch =
        Record { epoch: Epoch::INITIAL, lsn: Lsn(1), time: 0, command: Command::MarkRead { user: 1, msg: 1 } }.encode();
    let response = reqwest::Client::new()
        .post(format!("{}/internal/replication/append", trusted[0].url()))
        .header(header::CONTENT_TYPE, WAL_CONTENT_TYPE)
        .body(batch)
        .send()
        .await
        .expect("append without the token");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "a batch without the token");
    assert_eq!(listed_slaves(master).await, ["slave-1"]);
}

/// A stage 3 slave following a [`FakeMaster`], which only this test sends batches as.
async fn slave_of_fake_master(master: &FakeMaster) -> Node {
    let slave = Node::builder()
        .env("BITARK_NODE__ROLE", "slave")
        .env(STAGE, "3")
        .env("BITARK_REPLICATION__MASTER_URL", master.url())
        .env("BITARK_SECURITY__CLUSTER_TOKEN", CLUSTER_TOKEN)
        .start()
        .await;
    wait_until(CONVERGE, "the slave to register with the fake master", async || {
        replication_status(&slave).await["registered"] == true
    })
    .await;
    slave
}

/// `GET /internal/replication/status` of `node`, with the cluster token.
async fn internal_status(node: &Node) -> Value {
    let url = format!("{}/internal/replication/status", node.url());
    let response = reqwest::Client::new().get(&url).bearer_auth(CLUSTER_TOKEN).send().await;
    let response = response.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(response.status(), StatusCode::OK, "GET {url}");
    response.json().await.expect("a node status")
}

/// Posts `body` to `slave`'s append endpoint as master `id` in `session`, meant for the
/// slave's current process.
async fn append_as(slave: &Node, id: &str, session: &str, content_type: &str, body: Vec<u8>) -> reqwest::Response {
    let slave_session = internal_status(slave).await["session"].as_str().expect("a slave session").to_owned();
    let url = format!("{}/internal/replication/append", slave.url());
    let response = reqwest::Client::new()
        .post(&url)
        .bearer_auth(CLUSTER_TOKEN)
        .header(header::CONTENT_TYPE, content_type)
        .header("x-bitark-master-id", id)
        .header("x-bitark-session", session)
        .header("x-bitark-slave-session", slave_session)
        .body(body)
        .send()
        .await;
    response.unwrap_or_else(|e| panic!("POST {url}: {e}"))
}

#[tokio::test]
async fn a_damaged_replication_batch_is_refused_and_nothing_of_it_is_applied() {
    let master = FakeMaster::start().await;
    let slave = slave_of_fake_master(&master).await;
    let record = |lsn, msg| Record {
        epoch: Epoch::INITIAL,
        lsn: Lsn(lsn),
        time: 0,
        command: Command::MarkRead { user: 7, msg },
    };
    let mut batch = record(1, 1).encode();
    let first_len = batch.len();
    batch.extend(record(2, 2).encode());
    let mut damaged = batch.clone();
    damaged[first_len + 30] ^= 0x01; // in the payload of the second record
    let append = async |content_type: &str, body: Vec<u8>| {
        append_as(&slave, fake_master::MASTER_ID, fake_master::SESSION, content_type, body).await
    };

    let response = append("application/octet-stream", batch.clone()).await;
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "a batch of another content type");
    let response = append(WAL_CONTENT_TYPE, damaged).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST, "a batch with a flipped byte");
    assert_eq!(counter(&slave, CRC_FAILURES, &[]).await, 1);
    assert_eq!(applied_lsn(&slave).await, 0, "the intact first record of a damaged batch was applied");
    assert_eq!(slave.api().check(7, &[1, 2]).await.expect("check"), [false, false]);

    // The same batch undamaged is taken: the refusals were about the damage and the type.
    let response = append(WAL_CONTENT_TYPE, batch).await;
    assert_eq!(response.status(), StatusCode::OK, "the intact batch");
    let ack: Value = response.json().await.expect("an acknowledgement");
    assert_eq!(ack["ackLsn"], 2);
    assert_eq!(slave.api().check(7, &[1, 2]).await.expect("check"), [true, true]);
    assert_eq!(counter(&slave, CRC_FAILURES, &[]).await, 1);
}

#[tokio::test]
async fn a_statically_listed_slave_is_contacted_by_its_master() {
    // The slave's own registration at start-up finds no master, and its next attempt is
    // an hour away: only the master's static list can connect the two.
    let master_proxy = support::proxy::Proxy::start().await;
    let slave = Node::builder()
        .env("BITARK_NODE__ID", "slave-static")
        .env("BITARK_NODE__ROLE", "slave")
        .env("BITARK_REPLICATION__STAGE", "3")
        .env("BITARK_REPLICATION__MASTER_URL", master_proxy.url())
        .env("BITARK_REPLICATION__REGISTER_INTERVAL", "1h")
        .env("BITARK_REPLICATION__FORGET_AFTER", "3h")
        .env("BITARK_SECURITY__CLUSTER_TOKEN", CLUSTER_TOKEN)
        .start()
        .await;
    let master = Node::builder()
        .env("BITARK_REPLICATION__STAGE", "3")
        .env("BITARK_REPLICATION__SLAVES", format!("[\"{}\"]", slave.url()))
        .env("BITARK_SECURITY__CLUSTER_TOKEN", CLUSTER_TOKEN)
        .start()
        .await;
    master_proxy.set_upstream(master.addr().expect("master address"));
    let api = master.api();
    for msg in 0..20 {
        api.mark_read(5, msg).await.expect("write");
    }
    wait_for_convergence(&master, std::slice::from_ref(&slave), Duration::from_secs(30)).await;
    let status = replication_status(&master).await;
    assert_eq!(status["slaves"][0]["id"], "slave-static", "{status}");
    assert_eq!(status["slaves"][0]["url"], slave.url(), "{status}");
}

#[tokio::test]
async fn a_slave_behind_the_retained_wal_is_left_needing_a_full_sync() {
    const WRITERS: u64 = 4;
    // Small segments, frequent snapshots keeping only one: the master's WAL is purged
    // soon after records are written.
    let mut cluster = Cluster::start_with(1, "3", |role, _, builder| {
        let builder = quick(builder)
            .env("BITARK_REPLICATION__BUFFER__MAX_RECORDS", 50)
            .env("BITARK_REPLICATION__REQUEST_TIMEOUT", "300ms");
        match role {
            Role::Master => builder
                .env("BITARK_WAL__SEGMENT_SIZE", "64KiB")
                .env("BITARK_SNAPSHOT__EVERY_RECORDS", 300)
                .env("BITARK_SNAPSHOT__KEEP", 1),
            Role::Slave => builder,
        }
    })
    .await;
    wait_registered(&cluster.master, &cluster.slaves).await;
    let mut model = Model::new(WRITERS);
    write_load(&cluster.master.api(), &mut model, WRITERS, 50, 31).await;
    cluster.wait_for_convergence(CONVERGE).await;

    cluster.slaves[0].sigstop();
    let frozen_at = cluster.slaves[0].api();
    // Enough records for several segments and snapshots while the slave cannot answer.
    write_load(&cluster.master.api(), &mut model, WRITERS, 600, 32).await;
    let wal = cluster.master.data_dir().join("wal");
    wait_until(CONVERGE, "the master to purge its first WAL segment", || async {
        !wal.join("00000000000000000001.wal").exists()
    })
    .await;
    cluster.slaves[0].sigcont();
    wait_state(&cluster.master, 0, "NEEDS_FULL_SYNC").await;
    let link = slave_entry(&cluster.master, 0).await.expect("the master lists its slave");
    assert!(link["lastError"].as_str().unwrap_or("").contains("full sync"), "{link}");
    // It stays there: nothing the master still holds can close the hole.
    let applied = frozen_at.digest().await.expect("slave digest").applied_lsn;
    let master_applied = cluster.master.api().digest().await.expect("master digest").applied_lsn;
    assert!(applied < master_applied, "the slave cannot have caught up ({applied} vs {master_applied})");
    assert_eq!(slave_entry(&cluster.master, 0).await.expect("slave")["state"], "NEEDS_FULL_SYNC");
    // The slave learns it at its next registration: it serves its (stale) reads but
    // tells load balancers not to send it any.
    let slave = &cluster.slaves[0];
    wait_until(CONVERGE, "the slave to report itself not ready", async || {
        slave.api().readiness().await.is_ok_and(|status| status == StatusCode::SERVICE_UNAVAILABLE)
    })
    .await;
    let url = format!("{}/actuator/health/readiness", slave.url());
    let ready: Value = reqwest::get(&url).await.expect("readiness").json().await.expect("JSON");
    assert_eq!(ready["reason"], "needs_full_sync", "{ready}");
    assert!(ready["message"].as_str().unwrap_or("").contains("full sync"), "{ready}");
    let status = replication_status(slave).await;
    assert_eq!(status["stateAtMaster"], "NEEDS_FULL_SYNC", "{status}");
    assert!(frozen_at.check(1, &[0]).await.is_ok(), "reads are still served");

    // A slave that registers from a position the WAL no longer holds hears it in the
    // answer to that first registration.
    let register = json!({
        "slaveId": "late-joiner", "url": support::dead_url(), "appliedLsn": 0,
        "features": features_at("3"), "session": "0123456789abcdef",
    });
    let url = format!("{}/internal/replication/register", cluster.master.url());
    let response = reqwest::Client::new().post(&url).bearer_auth(CLUSTER_TOKEN).json(&register).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["state"], "NEEDS_FULL_SYNC", "{answer}");
    assert!(answer["reason"].as_str().unwrap_or("").contains("full sync"), "{answer}");
}

/// A slave registered at stage 1 gets the records committed while the master is still
/// checking its URL: stages 1 and 2 could not send them later, and it would be GAP.
#[tokio::test]
async fn at_stage_1_the_records_committed_while_a_new_slave_is_verified_reach_it() {
    let cluster = Cluster::start_with(1, "1", |role, _, builder| {
        let builder = quick(builder);
        match role {
            // The check of the slave's URL waits a while before its first try.
            Role::Master => builder.env("FAILPOINTS", "replication::before-verify=sleep(2000)"),
            Role::Slave => builder,
        }
    })
    .await;
    wait_until(CONVERGE, "the slave registered and being verified", async || {
        slave_entry(&cluster.master, 0).await.is_some_and(|link| link["state"] == "VERIFYING")
    })
    .await;
    let msgs: Vec<u64> = (1..=20).collect();
    for msg in &msgs {
        cluster.master.api().mark_read(3, *msg).await.expect("a write on the master");
    }
    cluster.wait_for_convergence(CONVERGE).await;
    assert_eq!(slave_entry(&cluster.master, 0).await.unwrap()["state"], "ALIVE");
    assert!(cluster.slaves[0].api().check(3, &msgs).await.unwrap().iter().all(|read| *read));
}
