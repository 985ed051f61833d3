//! A range frozen for a move, as real processes: its group's master refuses its writes
//! with `range_frozen` and logs nothing, reads it still, and its slaves hold the freeze
//! from the log; a router holds such writes until the range is thawed, or for up to
//! `--frozen-hold`; a master promoted by a failover keeps the freeze.

mod support;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;
use support::sharded::{router_builder, shards, Sharded, WITHIN};
use support::{wait_until, Api};

/// `method path` with `body` to `base`: status, `Retry-After` and JSON body.
async fn call(base: &str, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Option<String>, Value) {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
    let mut request = client.request(method, format!("{base}{path}"));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("the call is answered");
    let status = response.status();
    let retry = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
    (status, retry, response.json().await.unwrap_or(Value::Null))
}

/// `POST /admin/shard/{action}` of `range` at `base`.
async fn freeze(base: &str, action: &str, range: &str) -> (StatusCode, Value) {
    let (status, _, body) =
        call(base, Method::POST, &format!("/admin/shard/{action}"), Some(json!({ "range": range }))).await;
    (status, body)
}

fn mark(user: u64, msg: u64) -> String {
    format!("/api/v1/users/{user}/reads/{msg}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_range_is_refused_by_its_master_held_by_the_router_and_thawed() {
    let Some(s) = Sharded::start(&["a", "b"], 1).await else { return };
    let short = router_builder(&s.etcd).arg("--frozen-hold").arg("200ms").start().await;
    let long = router_builder(&s.etcd).arg("--frozen-hold").arg("60s").start().await;
    let (a, b) = (&s.groups[0].master, &s.groups[1].master);
    let (range_a, range_b) = (s.map.ranges[0].range.to_string(), s.map.ranges[1].range.to_string());
    let (user_a, user_b) = (s.users_of(0, 1)[0], s.users_of(1, 1)[0]);

    // Only a whole range of the group's own, named as a range, on its master.
    let (status, body) = freeze(&b.url(), "freeze", "zz").await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_range")), "{body}");
    let (status, body) = freeze(&b.url(), "freeze", &range_a).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::CONFLICT, Some("not_an_owned_range")), "{body}");
    assert!(body["message"].as_str().unwrap().contains(&range_a), "{body}");
    let (status, body) = freeze(&s.groups[1].slaves[0].url(), "freeze", &range_b).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::CONFLICT, Some("not_master")), "{body}");

    let (status, body) = freeze(&b.url(), "freeze", &range_b).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((body["logged"].as_bool(), &body["frozen"]), (Some(true), &json!([range_b])), "{body}");
    let frozen_at = body["lsn"].as_u64().unwrap();
    let (status, body) = freeze(&b.url(), "freeze", &range_b).await;
    assert_eq!((status, body["logged"].as_bool()), (StatusCode::OK, Some(false)), "a repeat logs nothing: {body}");
    assert!(body["lsn"].as_u64().unwrap() >= frozen_at);

    // Straight to the master: refused, retry-able, nothing logged; still read.
    let applied = b.api().digest().await.unwrap().applied_lsn;
    let (status, retry, body) = call(&b.url(), Method::PUT, &mark(user_b, 1), None).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("range_frozen")), "{body}");
    assert_eq!((retry.as_deref(), body["group"].as_str()), (Some("1"), Some("b")), "{body}");
    assert_eq!(b.api().digest().await.unwrap().applied_lsn, applied, "a refused write is not logged");
    assert_eq!(b.api().check(user_b, &[0]).await.unwrap(), vec![true], "a frozen range is still read");
    // The slave holds the freeze from the log; the other group is untouched.
    let slave = &s.groups[1].slaves[0];
    wait_until(WITHIN, "group b's slave to hold the freeze", async || {
        support::metric(slave, "bitark_shard_frozen_ranges", &[]).await == Some(1.0)
    })
    .await;
    let (status, _, body) = call(&short.url(), Method::PUT, &mark(user_a, 1), None).await;
    assert_eq!(status, StatusCode::OK, "group a takes writes: {body}");
    assert_eq!(support::metric(a, "bitark_shard_frozen_ranges", &[]).await, Some(0.0));

    // Through a router: held for its --frozen-hold, then the node's answer.
    let (status, _, body) = call(&short.url(), Method::PUT, &mark(user_b, 2), None).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("range_frozen")), "{body}");
    let held = [("kind", "range_frozen")];
    assert_eq!(support::counter(&short, "bitark_router_redirects_total", &held).await, 1);
    assert_eq!(support::counter(&short, "bitark_router_held_seconds_count", &[]).await, 1);

    // Held until the range is thawed, then written once.
    let via = long.url();
    let write = tokio::spawn(async move { call(&via, Method::PUT, &mark(user_b, 3), None).await });
    wait_until(WITHIN, "the router to hold the write", async || {
        support::counter(&long, "bitark_router_redirects_total", &held).await == 1
    })
    .await;
    assert!(!write.is_finished(), "the write is held while its range is frozen");
    let (status, body) = freeze(&b.url(), "thaw", &range_b).await;
    assert_eq!((status, body["logged"].as_bool(), &body["frozen"]), (StatusCode::OK, Some(true), &json!([])), "{body}");
    let (status, _, body) = write.await.unwrap();
    assert_eq!(status, StatusCode::OK, "the held write is taken once the range thaws: {body}");
    assert!(body["token"].as_str().unwrap().starts_with("b:"), "{body}");
    assert_eq!(b.api().check(user_b, &[1, 2, 3]).await.unwrap(), vec![false, false, true]);
    wait_until(WITHIN, "group b's slave to hold the thaw", async || {
        support::metric(slave, "bitark_shard_frozen_ranges", &[]).await == Some(0.0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_master_promoted_by_a_failover_keeps_the_freeze() {
    use support::failover::{Failover, ELECT_WITHIN};
    use support::sharded::PREFIX;
    let group_a = |_: usize, b: support::NodeBuilder| {
        b.env("BITARK_CLUSTER__GROUP", "a")
            .env("BITARK_CLUSTER__REFRESH", "500ms")
            .env("BITARK_COORDINATION__ETCD__PREFIX", PREFIX)
    };
    let Some(mut a) = Failover::start(3, group_a).await else { return };
    let (ok, _, err) = shards(&a.etcd, &["init", "--groups", "a"]);
    assert!(ok, "{err}");
    let old = a.master(ELECT_WITHIN, None).await;
    let (user, all) = (7u64, bitark_common::HashRange::ALL.to_string());
    wait_until(WITHIN, "the master to log its ownership", async || a.nodes[old].api().mark_read(user, 1).await.is_ok())
        .await;
    let (status, body) = freeze(&a.nodes[old].url(), "freeze", &all).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for node in &a.nodes {
        wait_until(WITHIN, "every member to hold the freeze", async || {
            support::metric(node, "bitark_shard_frozen_ranges", &[]).await == Some(1.0)
        })
        .await;
    }
    a.nodes[old].sigkill();
    let new = a.master(ELECT_WITHIN, Some(old)).await;
    let api = Api::new(&a.nodes[new].url());
    wait_until(WITHIN, "the new master to answer writes", async || {
        let (status, _, body) = call(&a.nodes[new].url(), Method::PUT, &mark(user, 2), None).await;
        assert_ne!(status, StatusCode::OK, "the promoted master took a write of a frozen range: {body}");
        body["error"] == "range_frozen"
    })
    .await;
    assert_eq!(api.check(user, &[1, 2]).await.unwrap(), vec![true, false]);
    let (status, body) = freeze(&a.nodes[new].url(), "thaw", &all).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    api.mark_read(user, 3).await.expect("a thawed range takes writes on the new master");
}

/// What a [`writer`] got: each acknowledged (user, message), and why the others failed.
type Written = (Vec<(u64, u64)>, Vec<String>);

/// A writer through `via` marking `users` in turn until `stop`.
fn writer(
    via: String,
    users: Vec<u64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Written> {
    tokio::spawn(async move {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        let (mut acknowledged, mut failed) = (Vec::new(), Vec::new());
        let mut msg = 0u64;
        while !stop.load(std::sync::atomic::Ordering::Acquire) {
            msg += 1;
            let user = users[msg as usize % users.len()];
            match client.put(format!("{via}{}", mark(user, msg))).send().await {
                Ok(r) if r.status() == StatusCode::OK => acknowledged.push((user, msg)),
                Ok(r) => failed.push(format!("{}: {}", r.status(), r.text().await.unwrap_or_default())),
                Err(e) => failed.push(e.to_string()),
            }
        }
        (acknowledged, failed)
    })
}

/// Two groups a and b with a slave each, group b's half split in two, and a router that
/// holds frozen writes long (the tests are of what is kept, not of the pause): the top
/// quarter, the range that moves, and 24 of its users.
async fn top_quarter_to_move() -> Option<(Sharded, support::Node, bitark_common::HashRange, Vec<u64>)> {
    let s = Sharded::start(&["a", "b"], 1).await?;
    let router = router_builder(&s.etcd).arg("--frozen-hold").arg("30s").start().await;
    let (ok, _, err) = shards(&s.etcd, &["split", &s.map.ranges[1].range.to_string()]);
    assert!(ok, "{err}");
    let b = &s.groups[1].master;
    wait_until(WITHIN, "group b to log the two halves", async || {
        support::metric(b, "bitark_shard_owned_ranges", &[]).await == Some(2.0)
    })
    .await;
    let moving = bitark_common::HashRange::new(0xc000_0000_0000_0000, 1 << 64).unwrap();
    let p = s.map.partitioner;
    let users = (1..).filter(|u| moving.contains(p.hash(*u))).take(24).collect();
    Some((s, router, moving, users))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_range_moves_by_hand_under_router_writes_and_nothing_acknowledged_is_lost() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let Some((s, router, moving, users)) = top_quarter_to_move().await else { return };
    let (a, b) = (&s.groups[0].master, &s.groups[1].master);
    let (range, p) = (moving.to_string(), s.map.partitioner);
    let others: Vec<u64> = s.users_of(1, 40).into_iter().filter(|u| !moving.contains(p.hash(*u))).take(8).collect();

    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let moved_writes = writer(router.url(), users.clone(), stop.clone());
    let other_writes = writer(router.url(), others.clone(), stop.clone());
    let b_writes =
        async || support::counter(&router, "bitark_router_requests_total", &[("group", "b"), ("status", "200")]).await;
    wait_until(WITHIN, "writes to flow to group b", async || b_writes().await > 200).await;

    // The destination stages a copy and replays the source's log.
    let (status, _, body) =
        call(&a.url(), Method::POST, "/admin/shard/incoming", Some(json!({"range": range, "source": b.url()}))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let progress = async || call(&a.url(), Method::GET, "/admin/shard/incoming", None).await.2[0].clone();
    wait_until(WITHIN, "the copy to be staged and replaying", async || progress().await["phase"] == "catch-up").await;
    let before = b_writes().await;
    wait_until(WITHIN, "writes to go on while the log replays", async || b_writes().await > before + 100).await;
    let staged = progress().await;
    assert!(staged["copied"].as_u64().unwrap() > 0 && staged["replayed"].as_u64().unwrap() > 0, "{staged}");
    let (status, _, body) = call(&a.url(), Method::GET, &mark(users[0], 1), None).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::CONFLICT, Some("wrong_shard")), "staged, not served");

    // The cutover: freeze on the source, drain the destination to the freeze point,
    // give the range to the destination in the map.
    let (status, body) = freeze(&b.url(), "freeze", &range).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let until = body["lsn"].as_u64().unwrap();
    let drain = json!({"range": range, "untilLsn": until, "timeoutMs": 30000});
    let (status, _, body) = call(&a.url(), Method::POST, "/admin/shard/incoming/drain", Some(drain)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(progress().await["phase"], "drained");
    let (ok, _, err) = shards(&s.etcd, &["assign", &range, "a", "--expect-version", "2"]);
    assert!(ok, "{err}");
    let a_writes =
        async || support::counter(&router, "bitark_router_requests_total", &[("group", "a"), ("status", "200")]).await;
    wait_until(WITHIN, "the moved users' writes to land on group a", async || a_writes().await > 100).await;
    stop.store(true, Ordering::Release);
    let ((moved, failed_moved), (other, failed_other)) = (moved_writes.await.unwrap(), other_writes.await.unwrap());
    assert!(failed_moved.is_empty(), "writes of the moving range failed: {failed_moved:?}");
    assert!(failed_other.is_empty(), "writes of the rest of group b failed: {failed_other:?}");
    assert!(support::counter(&router, "bitark_router_redirects_total", &[("kind", "range_frozen")]).await >= 1);

    // The source drops its copy; every acknowledged write is read where it now lives.
    let (status, body) = freeze(&b.url(), "drop", &range).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = freeze(&b.url(), "drop", &s.map.ranges[1].range.to_string()).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::CONFLICT, Some("owned_range")), "{body}");
    wait_until(WITHIN, "group b to hold no user it does not own", async || {
        support::metric(b, "bitark_shard_unowned_users", &[]).await == Some(0.0)
    })
    .await;
    let api = Api::new(&router.url());
    for (user, msgs) in [(&moved, &users), (&other, &others)].iter().flat_map(|(taken, users)| {
        users.iter().map(move |u| (*u, taken.iter().filter(|(w, _)| w == u).map(|(_, m)| *m).collect::<Vec<_>>()))
    }) {
        for part in msgs.chunks(500) {
            let read = api.check(user, part).await.unwrap();
            assert!(read.iter().all(|r| *r), "user {user} lost an acknowledged write");
        }
    }
    // Group a's slave holds what its master holds.
    let slave = &s.groups[0].slaves[0];
    let digest = a.api().digest().await.unwrap();
    wait_until(WITHIN, "group a's slave to hold the moved range", async || {
        slave.api().digest().await.is_ok_and(|d| d.digest == digest.digest)
    })
    .await;
}

/// `bitark shards move …` against `s`'s etcd, started and left running.
fn spawn_move(s: &Sharded, args: &[&str]) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_bitark"))
        .env_remove("BITARK_PROFILE")
        .current_dir(std::env::temp_dir())
        .args(["shards", "move"])
        .args(args)
        .args(["--etcd", &s.etcd.url(), "--prefix", support::sharded::PREFIX])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run bitark shards move")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bitark_shards_move_survives_a_sigkill_of_its_controller_and_loses_nothing() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let Some((s, router, moving, users)) = top_quarter_to_move().await else { return };
    let (a, b) = (&s.groups[0].master, &s.groups[1].master);
    let range = moving.to_string();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let writes = writer(router.url(), users.clone(), stop.clone());
    wait_until(WITHIN, "writes to flow to group b", async || {
        support::counter(&router, "bitark_router_requests_total", &[("group", "b"), ("status", "200")]).await > 200
    })
    .await;

    // The first controller is killed as soon as the destination copies.
    let args = ["--to", "a", "--claim-ttl", "2s", "--max-pause", "5s"];
    let mut first = spawn_move(&s, &[&range, args[0], args[1], args[2], args[3], args[4], args[5]]);
    wait_until(WITHIN, "the destination to start its copy", async || {
        let (_, _, body) = call(&a.url(), Method::GET, "/admin/shard/incoming", None).await;
        body.as_array().is_some_and(|all| !all.is_empty())
    })
    .await;
    first.kill().expect("SIGKILL the controller");
    first.wait().unwrap();
    // Another controller takes the move on once the first one's claim lapses.
    let mut last = (false, String::new(), String::new());
    let finished = support::poll_until(Duration::from_secs(60), async || {
        let etcd_url = s.etcd.url();
        let mut all = vec!["move".to_string(), range.clone()];
        all.extend(args.iter().map(|a| a.to_string()));
        last = tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_bitark"))
                .env_remove("BITARK_PROFILE")
                .current_dir(std::env::temp_dir())
                .arg("shards")
                .args(&all)
                .args(["--etcd", &etcd_url, "--prefix", support::sharded::PREFIX])
                .output()
                .unwrap();
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            (out.status.success(), text(&out.stdout), text(&out.stderr))
        })
        .await
        .unwrap();
        last.0 || !last.2.contains("another controller holds")
    })
    .await;
    assert!(finished && last.0, "the second controller did not finish the move: {last:?}");
    assert!(last.1.contains("resuming") || last.1.contains("done already"), "{}", last.1);
    let a_writes =
        async || support::counter(&router, "bitark_router_requests_total", &[("group", "a"), ("status", "200")]).await;
    wait_until(WITHIN, "the moved users' writes to land on group a", async || a_writes().await > 100).await;
    stop.store(true, Ordering::Release);
    let (taken, failed) = writes.await.unwrap();
    assert!(failed.is_empty(), "writes of the moving range failed: {failed:?}");
    let api = Api::new(&router.url());
    for user in &users {
        let msgs: Vec<u64> = taken.iter().filter(|(u, _)| u == user).map(|(_, m)| *m).collect();
        for part in msgs.chunks(500) {
            assert!(api.check(*user, part).await.unwrap().iter().all(|r| *r), "user {user} lost a write");
        }
    }
    let (ok, out, err) = shards(&s.etcd, &["status"]);
    assert!(ok && out.contains("\"phase\":\"done\"") && out.contains("pause"), "{out}{err}");
    wait_until(WITHIN, "group b to hold no user it does not own", async || {
        support::metric(b, "bitark_shard_unowned_users", &[]).await == Some(0.0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_s_last_range_moves_and_the_group_drops_its_copy() {
    let Some(s) = Sharded::start(&["a", "b"], 0).await else { return };
    let b = &s.groups[1].master;
    for user in s.users_of(1, 20) {
        b.api().mark_read(user, 5).await.unwrap();
    }
    let range = s.map.ranges[1].range.to_string();
    let (ok, out, err) = shards(&s.etcd, &["move", &range, "--to", "a"]);
    // Group b owns no range once the move commits: its master is still found to drop.
    assert!(ok && out.contains("the source dropped its copy"), "{out}{err}");
    wait_until(WITHIN, "group b to hold no user", async || {
        support::metric(b, "bitark_shard_unowned_users", &[]).await == Some(0.0)
    })
    .await;
    let api = s.groups[0].master.api();
    for user in s.users_of(1, 20) {
        assert_eq!(api.check(user, &[5]).await.unwrap(), vec![true], "user {user} moved with its mark");
    }
}
