//! Stage 7 between real processes: epochs and fencing, manual promotion and step-down,
//! write tokens and `write_lost`, reads that redirect to the master, acknowledgement
//! modes, and the rollback and mixed-stage rules of the earlier stages.
//!
//! The old master is cut off with the fault proxies: slaves reach it only through the
//! master proxy, and it reaches each slave only through that slave's proxy.

mod support;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;
use support::cluster::{quick, replication_status, wait_for_convergence, wait_state, Cluster, Role, CLUSTER_TOKEN};
use support::epochs::{call, converged, mark, read_with_token};
use support::proxy::Mode;
use support::{counter, wait_until, Node};

const CONVERGE: Duration = Duration::from_secs(30);

async fn promote(node: &Node) -> Value {
    let (status, body, _) = call(Method::POST, &format!("{}/admin/promote", node.url()), None).await;
    assert_eq!(status, StatusCode::OK, "promote {}: {body}", node.url());
    body
}

async fn demote(node: &Node, master_url: &str) -> Value {
    let url = format!("{}/admin/demote", node.url());
    let (status, body, _) = call(Method::POST, &url, Some(json!({ "masterUrl": master_url }))).await;
    assert_eq!(status, StatusCode::OK, "demote {}: {body}", node.url());
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_manual_promotion_fences_the_cut_off_master_which_steps_down_cuts_its_tail_and_converges() {
    let cluster = Cluster::start_with(2, "7", |_, _, b| quick(b)).await;
    let (old, new, other) = (&cluster.master, &cluster.slaves[0], &cluster.slaves[1]);
    let mut before = Vec::new();
    for msg in 0..50 {
        before.push(mark(old, 1, msg, "").await.expect("a write before the failover"));
    }
    assert!(before.iter().all(|a| a.epoch == 1));
    wait_for_convergence(old, &cluster.slaves, CONVERGE).await;

    // The old master is cut off from both slaves, both ways, and goes on taking writes
    // it cannot replicate: in async mode they are acknowledged, and will be lost.
    cluster.master_proxy.set_mode(Mode::Cut);
    cluster.proxies[0].set_mode(Mode::Cut);
    cluster.proxies[1].set_mode(Mode::Cut);
    let mut lost = Vec::new();
    for msg in 100..120 {
        lost.push(mark(old, 2, msg, "").await.expect("the cut-off master still takes writes"));
    }

    // slave-1 becomes master of epoch 2; slave-2 follows it.
    let split = replication_status(new).await["appliedLsn"].as_u64().unwrap();
    let promoted = promote(new).await;
    assert_eq!(promoted["role"], "master");
    assert_eq!(promoted["epoch"], 2);
    assert_eq!(promoted["startLsn"].as_u64(), Some(split + 1), "the epoch begins at the next LSN");
    let status = replication_status(new).await;
    assert_eq!(status["role"], "master");
    assert_eq!(status["epochHistory"], json!([{"epoch": 1, "startLsn": 1}, {"epoch": 2, "startLsn": split + 1}]));
    demote(other, &new.url()).await;
    let mut kept = Vec::new();
    for msg in 200..230 {
        let acked = mark(new, 3, msg, "").await.expect("the new master takes writes");
        assert_eq!(acked.epoch, 2, "the new master writes in its own epoch");
        kept.push(acked);
    }
    // A replication request from the old epoch is refused by the new master.
    let client = reqwest::Client::new();
    let stale = client
        .post(format!("{}/internal/replication/append", new.url()))
        .bearer_auth(CLUSTER_TOKEN)
        .header("x-bitark-epoch", "1")
        .header("content-type", "application/x-bitark-wal")
        .body(Vec::new())
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), StatusCode::CONFLICT);
    assert_eq!(stale.headers()["x-bitark-epoch"], "2");
    let body: Value = stale.json().await.unwrap();
    assert_eq!((body["error"].as_str(), body["epoch"].as_u64()), (Some("stale_epoch"), Some(2)), "{body}");

    // The old master has marked both slaves DEAD, so it sends them nothing more: once
    // the cut heals it learns of epoch 2, and of its master, from probing them.
    wait_until(CONVERGE, "the old master to mark its slaves DEAD", async || {
        let status = replication_status(old).await;
        status["slaves"].as_array().is_some_and(|links| links.iter().all(|l| l["state"] == "DEAD"))
    })
    .await;
    // The cut heals: it stops taking writes and steps down.
    for proxy in [&cluster.master_proxy, &cluster.proxies[0], &cluster.proxies[1]] {
        proxy.set_mode(Mode::Pass);
    }
    let mut late = Vec::new();
    let mut msg = 300;
    wait_until(CONVERGE, "the old master to step down", async || {
        // Writes go on meanwhile; those acknowledged before the fence are lost too.
        if let Ok(acked) = mark(old, 4, msg, "").await {
            late.push(acked);
        }
        msg += 1;
        let status = replication_status(old).await;
        status["role"] == "slave" || status["fenced"] == true
    })
    .await;
    for msg in 400..420 {
        let refused = mark(old, 5, msg, "").await.expect_err("a fenced or stepped-down master takes no write");
        assert_eq!(refused.0, StatusCode::CONFLICT, "{}", refused.1);
        assert_eq!(refused.1["error"], "not_master", "{}", refused.1);
    }
    assert!(late.iter().all(|a| a.epoch == 1), "the old master never writes in epoch 2");

    // It cuts its divergent tail, keeps it in a side file, follows the new master,
    // and every node ends with the same state.
    converged(&[new, old, other]).await;
    let status = replication_status(old).await;
    assert_eq!(status["role"], "slave");
    assert_eq!(status["epoch"], 2);
    let cut = counter(old, "bitark_replication_truncated_records_total", &[]).await;
    let lost_acked = lost.len() + late.len();
    assert!(cut as usize >= lost_acked, "{cut} records cut, {lost_acked} acknowledged after the split");
    let side_files: Vec<_> = std::fs::read_dir(old.data_dir().join("diverged")).expect("a side file").collect();
    assert_eq!(side_files.len(), 1, "one side file for the one cut");

    // Tokens: every write the new master never had is lost on every node, everything
    // else is there.
    for node in [old, new, other] {
        for acked in lost.iter().chain(&late) {
            let (status, body) = read_with_token(node, acked).await;
            assert_eq!(status, StatusCode::CONFLICT, "{} on {}: {body}", acked.token, node.url());
            assert_eq!(body["error"], "write_lost", "{body}");
        }
        for acked in before.iter().chain(&kept) {
            let (status, body) = read_with_token(node, acked).await;
            assert_eq!(status, StatusCode::OK, "{} on {}: {body}", acked.token, node.url());
            assert_eq!(body["read"], true, "{} on {}", acked.token, node.url());
        }
    }

    // Restarted with its old configuration (role: master), it still knows the newer
    // epoch: it comes back as a slave of the new master and refuses writes.
    let mut cluster = cluster;
    cluster.restart_master().await;
    let (old, new, other) = (&cluster.master, &cluster.slaves[0], &cluster.slaves[1]);
    assert_eq!(replication_status(old).await["role"], "slave");
    let refused = mark(old, 6, 1, "").await.expect_err("a restarted old master takes no write");
    assert_eq!(refused.1["error"], "not_master", "{}", refused.1);
    mark(new, 6, 2, "").await.expect("the new master takes writes");
    converged(&[new, old, other]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn all_times_out_on_a_stopped_slave_while_semi_goes_on_and_the_record_still_replicates() {
    let mut cluster = Cluster::start_with(2, "7", |role, _, b| {
        // A stopped slave stays ALIVE for the whole test: `all` keeps waiting for it.
        let b = quick(b).env("BITARK_REPLICATION__DEAD_AFTER", "1h");
        if role == Role::Master {
            b.env("BITARK_REPLICATION__ACK_TIMEOUT", "500ms")
        } else {
            b
        }
    })
    .await;
    wait_state(&cluster.master, 0, "ALIVE").await;
    wait_state(&cluster.master, 1, "ALIVE").await;
    // `all`: answered once every ALIVE slave holds the record, so both show it at once.
    let acked = mark(&cluster.master, 1, 1, "?ack=all").await.expect("ack=all with every slave up");
    for slave in &cluster.slaves {
        assert_eq!(slave.api().check(1, &[1]).await.unwrap(), vec![true], "{} after ack=all", slave.url());
    }

    cluster.slaves[1].sigstop();
    let (status, body) = mark(&cluster.master, 1, 2, "?ack=all").await.expect_err("ack=all with a stopped slave");
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(body["error"], "replication_timeout");
    assert_eq!(
        (body["ack"].as_str(), body["acked"].as_u64(), body["required"].as_u64()),
        (Some("all"), Some(1), Some(2))
    );
    assert_eq!(body["epoch"], 1);
    let timed_out = body["lsn"].as_u64().expect("the answer names the LSN");
    assert_eq!(timed_out, acked.lsn + 1);
    assert_eq!(cluster.master.api().check(1, &[2]).await.unwrap(), vec![true], "durable on the master");
    assert_eq!(counter(&cluster.master, "bitark_replication_ack_timeouts_total", &[("ack", "all")]).await, 1);

    // `semi` with min-acks 1: one stopped slave of two does not block.
    for msg in 3..13 {
        mark(&cluster.master, 1, msg, "?ack=semi").await.expect("ack=semi with one slave up");
    }
    cluster.slaves[1].sigcont();
    wait_for_convergence(&cluster.master, &cluster.slaves, CONVERGE).await;
    assert_eq!(cluster.slaves[1].api().check(1, &[2]).await.unwrap(), vec![true], "the timed-out record replicated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_small_batch_lingers_until_it_fills_or_a_write_waits_for_it() {
    let cluster = Cluster::start_with(1, "7", |role, _, b| {
        // Registrations and heartbeats wake a sender too: none come during the test.
        let b = quick(b)
            .env("BITARK_REPLICATION__REGISTER_INTERVAL", "1m")
            .env("BITARK_REPLICATION__HEARTBEAT_INTERVAL", "1m")
            .env("BITARK_REPLICATION__DEAD_AFTER", "10m");
        if role == Role::Master {
            // Only a full batch or a waiting write can send anything within the test.
            b.env("BITARK_REPLICATION__BATCH_LINGER", "10s")
                .env("BITARK_REPLICATION__BATCH_MAX_RECORDS", "5")
                .env("BITARK_REPLICATION__ACK_TIMEOUT", "5s")
        } else {
            b
        }
    })
    .await;
    wait_state(&cluster.master, 0, "ALIVE").await;
    let (master, slave) = (&cluster.master, &cluster.slaves[0]);
    let batches = || counter(master, "bitark_replication_sent_batches_total", &[("slave", "slave-1")]);
    let before = batches().await;

    // A `semi` write is sent at once, not ten seconds later (it would time out).
    mark(master, 1, 1, "?ack=semi").await.expect("ack=semi is not held back");
    assert_eq!(slave.api().check(1, &[1]).await.unwrap(), vec![true]);
    assert_eq!(batches().await, before + 1);

    // Five records fill a batch, which goes without waiting out the linger.
    for msg in 2..7 {
        mark(master, 1, msg, "").await.expect("an async write");
    }
    wait_until(Duration::from_secs(5), "the full batch reaches the slave before the linger ends", async || {
        slave.api().check(1, &[2, 3, 4, 5, 6]).await.unwrap() == vec![true; 5]
    })
    .await;
    assert_eq!(batches().await, before + 2, "five records, one batch");

    // A lone record waits; the `semi` write after it takes it along in one batch.
    mark(master, 1, 7, "").await.expect("an async write");
    mark(master, 1, 8, "?ack=semi").await.expect("ack=semi is not held back");
    assert_eq!(slave.api().check(1, &[7, 8]).await.unwrap(), vec![true, true]);
    assert_eq!(batches().await, before + 3, "the held record went with the awaited one");
}

#[tokio::test]
async fn without_enough_alive_slaves_a_write_fails_at_once_and_nothing_is_logged() {
    let master = quick(Node::builder())
        .env("BITARK_REPLICATION__STAGE", "7")
        .env("BITARK_SECURITY__CLUSTER_TOKEN", CLUSTER_TOKEN)
        .start()
        .await;
    let before = replication_status(&master).await["appliedLsn"].as_u64().unwrap();
    for ack in ["semi", "all"] {
        let (status, body) = mark(&master, 1, 1, &format!("?ack={ack}")).await.expect_err("no slave");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!((body["error"].as_str(), body["ack"].as_str()), (Some("not_enough_replicas"), Some(ack)));
    }
    assert_eq!(replication_status(&master).await["appliedLsn"].as_u64().unwrap(), before, "nothing was logged");
    let (status, body) = mark(&master, 1, 1, "?ack=some").await.expect_err("an unknown mode");
    assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_query")));
    mark(&master, 1, 1, "?ack=async").await.expect("async needs no slave");

    // `ack-wait-for-replicas`: the write waits for a slave up to the timeout instead,
    // and the answer says it is durable here but acknowledged by none.
    let waiting = quick(Node::builder())
        .env("BITARK_REPLICATION__STAGE", "7")
        .env("BITARK_SECURITY__CLUSTER_TOKEN", CLUSTER_TOKEN)
        .env("BITARK_REPLICATION__ACK_WAIT_FOR_REPLICAS", "true")
        .env("BITARK_REPLICATION__ACK_TIMEOUT", "200ms")
        .start()
        .await;
    let (status, body) = mark(&waiting, 1, 1, "?ack=all").await.expect_err("no slave came");
    assert_eq!((status, body["error"].as_str()), (StatusCode::GATEWAY_TIMEOUT, Some("replication_timeout")), "{body}");
    assert_eq!((body["acked"].as_u64(), body["required"].as_u64()), (Some(0), Some(1)));
    assert_eq!(waiting.api().check(1, &[1]).await.unwrap(), vec![true], "durable on the master");

    // Below stage 7 the modes do not exist, and roles change only by configuration.
    let six = Node::builder()
        .env("BITARK_REPLICATION__STAGE", "6")
        .env("BITARK_SECURITY__CLUSTER_TOKEN", CLUSTER_TOKEN)
        .start()
        .await;
    let (status, body) = mark(&six, 1, 1, "?ack=all").await.expect_err("stage 6");
    assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("ack_modes_off")), "{body}");
    let (status, body, _) = call(Method::POST, &format!("{}/admin/promote", six.url()), None).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::CONFLICT, Some("fencing_off")), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lagging_slave_redirects_or_waits_as_reads_on_lag_says() {
    let cluster = Cluster::start_with(2, "7", |role, index, b| {
        let b = quick(b).env("BITARK_READS__MIN_LSN_WAIT", "300ms");
        match (role, index) {
            (Role::Slave, 0) => b.env("BITARK_READS__ON_LAG", "redirect"),
            _ => b,
        }
    })
    .await;
    let acked = mark(&cluster.master, 7, 7, "").await.unwrap();
    wait_for_convergence(&cluster.master, &cluster.slaves, CONVERGE).await;
    let (redirecting, waiting) = (&cluster.slaves[0], &cluster.slaves[1]);
    // Reached: both answer.
    for slave in [redirecting, waiting] {
        let (status, body) = read_with_token(slave, &acked).await;
        assert_eq!((status, body["read"].as_bool()), (StatusCode::OK, Some(true)), "{body}");
    }
    // Not reached: 307 to the same request on the master, at once.
    let path = "/api/v1/users/7/reads/7?minLsn=1000000";
    let (status, body, location) = call(Method::GET, &format!("{}{path}", redirecting.url()), None).await;
    assert_eq!(status, StatusCode::TEMPORARY_REDIRECT, "{body}");
    assert_eq!(location.as_deref(), Some(format!("{}{path}", cluster.master_proxy.url()).as_str()));
    assert_eq!(body["masterUrl"], cluster.master_proxy.url());
    let ahead = format!("/api/v1/users/7/reads/7?token=1:{}", acked.lsn + 1000);
    let (status, _, location) = call(Method::GET, &format!("{}{ahead}", redirecting.url()), None).await;
    assert_eq!(
        (status, location),
        (StatusCode::TEMPORARY_REDIRECT, Some(format!("{}{ahead}", cluster.master_proxy.url())))
    );
    // `wait`: the slave waits for the write, then answers.
    let reader = waiting.url();
    let next_lsn = acked.lsn + 1;
    let read = tokio::spawn(async move {
        call(Method::GET, &format!("{reader}/api/v1/users/7/reads/8?minLsn={next_lsn}&token=1:{next_lsn}"), None).await
    });
    let written = mark(&cluster.master, 7, 8, "").await.unwrap();
    assert_eq!(written.lsn, next_lsn);
    let (status, body, _) = read.await.unwrap();
    assert_eq!((status, body["read"].as_bool()), (StatusCode::OK, Some(true)), "{body}");
    // A token of an epoch no node knows yet is not reached (and says which epoch); a
    // malformed one is named.
    let (status, body, _) =
        call(Method::GET, &format!("{}/api/v1/users/7/reads/7?token=9:1", waiting.url()), None).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("lsn_not_reached")), "{body}");
    assert!(body["message"].as_str().unwrap().contains("epoch 9"), "{body}");
    let (status, body, _) =
        call(Method::GET, &format!("{}/api/v1/users/7/reads/7?token=0:1", waiting.url()), None).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_token")), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mixed_cluster_interoperates_and_rolling_the_stage_7_flags_back_and_forward_loses_nothing() {
    // slave-1 runs stage 6 (no fencing, no ack modes), slave-2 stage 7.
    let mut cluster = Cluster::start_with(2, "7", |role, index, b| {
        let b = quick(b);
        match (role, index) {
            (Role::Slave, 0) => b.env("BITARK_REPLICATION__STAGE", "6"),
            _ => b,
        }
    })
    .await;
    wait_state(&cluster.master, 0, "ALIVE").await;
    wait_state(&cluster.master, 1, "ALIVE").await;
    let master_view = replication_status(&cluster.master).await;
    let links: Vec<_> =
        master_view["slaves"].as_array().unwrap().iter().map(|s| s["features"]["fencing"].clone()).collect();
    assert_eq!(links, vec![json!(false), json!(true)], "each link uses the flags both ends have");
    let mut acked = Vec::new();
    for msg in 0..20 {
        // The stage 6 slave acknowledges too: `all` waits for both.
        acked.push(mark(&cluster.master, 1, msg, "?ack=all").await.expect("ack=all in a mixed cluster"));
    }
    for slave in &cluster.slaves {
        assert_eq!(slave.api().check(1, &[19]).await.unwrap(), vec![true]);
    }
    // Roll every node back to stage 6 in one restart each, then forward again.
    for stage in ["6", "7"] {
        for index in 0..2 {
            cluster.slaves[index].set_env("BITARK_REPLICATION__STAGE", stage);
            cluster.restart_slave(index).await;
        }
        cluster.master.set_env("BITARK_REPLICATION__STAGE", stage);
        cluster.restart_master().await;
        for msg in 0..10 {
            acked.push(mark(&cluster.master, 2, msg + 100 * stage.len() as u64, "").await.expect("a write"));
        }
        wait_for_convergence(&cluster.master, &cluster.slaves, CONVERGE).await;
    }
    for node in std::iter::once(&cluster.master).chain(&cluster.slaves) {
        for a in &acked {
            let (status, body) = read_with_token(node, a).await;
            assert_eq!(
                (status, body["read"].as_bool()),
                (StatusCode::OK, Some(true)),
                "{} on {}: {body}",
                a.token,
                node.url()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_master_demoted_by_hand_follows_the_new_master_and_stays_a_slave_across_a_restart() {
    let mut cluster = Cluster::start_with(1, "7", |_, _, b| quick(b)).await;
    for msg in 0..10 {
        mark(&cluster.master, 1, msg, "").await.unwrap();
    }
    wait_for_convergence(&cluster.master, &cluster.slaves, CONVERGE).await;
    cluster.proxies[0].set_mode(Mode::Cut);
    cluster.master_proxy.set_mode(Mode::Cut);
    let lost = mark(&cluster.master, 2, 1, "").await.unwrap();
    promote(&cluster.slaves[0]).await;
    let kept = mark(&cluster.slaves[0], 2, 2, "").await.unwrap();
    let demoted = demote(&cluster.master, &cluster.slaves[0].url()).await;
    assert_eq!(
        (demoted["role"].as_str(), demoted["masterUrl"].as_str()),
        (Some("slave"), Some(cluster.slaves[0].url().as_str()))
    );
    let refused = mark(&cluster.master, 3, 1, "").await.expect_err("a demoted master takes no write");
    assert_eq!(refused.1["error"], "not_master", "{}", refused.1);
    assert_eq!(refused.1["masterUrl"], cluster.slaves[0].url().as_str());
    converged(&[&cluster.slaves[0], &cluster.master]).await;
    for (acked, expected) in [(&lost, StatusCode::CONFLICT), (&kept, StatusCode::OK)] {
        assert_eq!(read_with_token(&cluster.master, acked).await.0, expected, "{}", acked.token);
    }
    // Where each epoch began, as the new master keeps it.
    let client = reqwest::Client::new();
    let epochs: Value = client
        .get(format!("{}/internal/replication/epochs", cluster.slaves[0].url()))
        .bearer_auth(CLUSTER_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(epochs["history"], json!([{"epoch": 1, "startLsn": 1}, {"epoch": 2, "startLsn": kept.lsn}]), "{epochs}");
    cluster.restart_master().await;
    assert_eq!(replication_status(&cluster.master).await["role"], "slave", "epoch.bin outlives the configuration");
    mark(&cluster.slaves[0], 3, 2, "").await.unwrap();
    converged(&[&cluster.slaves[0], &cluster.master]).await;
}
