//! Two replication groups over one shard map in etcd, with routers in front, as real
//! processes: every user's reads and writes land on the group that owns it; a node
//! refuses a user of another group with `wrong_shard` and logs nothing; cross-user reads
//! come back in request order; a router killed mid-traffic loses nothing acknowledged;
//! with etcd stopped the router serves from its cached map and says so.

mod support;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::sharded::{shards, Sharded, WITHIN};
use support::{wait_until, Api, CallError};

/// `method path` with `body` to `base`: status and JSON body.
async fn call(base: &str, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let mut request = client.request(method, format!("{base}{path}"));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("the call is answered");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn users_held(api: &Api) -> u64 {
    api.digest().await.expect("a digest").users
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_user_lands_on_its_group_and_the_other_group_refuses_it() {
    let Some(s) = Sharded::start(&["a", "b"], 1).await else { return };
    let router = s.router().await;
    let via = router.url();
    let users: Vec<u64> = (1000..1060).collect();
    let mut tokens = HashMap::new();
    for &user in &users {
        let (status, body) = call(&via, Method::PUT, &format!("/api/v1/users/{user}/reads/7"), None).await;
        assert_eq!(status, StatusCode::OK, "user {user}: {body}");
        let token = body["token"].as_str().unwrap().to_string();
        assert!(token.starts_with(&format!("{}:", s.names[s.group_of(user)])), "user {user}: token {token}");
        tokens.insert(user, token);
    }
    // Through the router, with and without the write's token. A read with a token may
    // go to any member: the router knows each static group's slave as well.
    wait_until(WITHIN, "the router to know every member of both groups", async || {
        let (_, health) = call(&via, Method::GET, "/actuator/health", None).await;
        s.names.iter().all(|g| health["groups"][g]["members"].as_array().is_some_and(|m| m.len() == 2))
    })
    .await;
    let slave_reads = async |g: usize| {
        let range = s.map.ranges[g].range.to_string();
        let labels = [("range", range.as_str()), ("kind", "read")];
        support::metric(&s.groups[g].slaves[0], "bitark_shard_range_requests_total", &labels).await.unwrap_or(0.0)
    };
    let before = [slave_reads(0).await, slave_reads(1).await];
    for &user in &users {
        let (status, body) = call(&via, Method::GET, &format!("/api/v1/users/{user}/reads/7"), None).await;
        assert_eq!((status, &body["read"]), (StatusCode::OK, &json!(true)), "user {user}: {body}");
        let path = format!("/api/v1/users/{user}/reads/7?token={}", tokens[&user]);
        let (status, body) = call(&via, Method::GET, &path, None).await;
        assert_eq!((status, &body["read"]), (StatusCode::OK, &json!(true)), "user {user} with its token: {body}");
    }
    for (g, before) in before.into_iter().enumerate() {
        assert!(slave_reads(g).await > before, "group {}'s slave served none of the reads with a token", s.names[g]);
    }
    // Straight to the nodes: the owner holds the write, the other group refuses the user.
    for &user in &users {
        let (mine, theirs) = (s.group_of(user), 1 - s.group_of(user));
        let path = format!("/api/v1/users/{user}/reads/7");
        let owner = call(&s.groups[mine].master.url(), Method::GET, &path, None).await;
        assert_eq!(owner.1["read"], true, "user {user} on its own group");
        let before = s.groups[theirs].master.api().digest().await.unwrap().applied_lsn;
        let refused = call(&s.groups[theirs].master.url(), Method::PUT, &path, None).await;
        assert_eq!(
            (refused.0, refused.1["error"].as_str()),
            (StatusCode::CONFLICT, Some("wrong_shard")),
            "{}",
            refused.1
        );
        assert_eq!(refused.1["group"], s.names[mine], "{}", refused.1);
        assert_eq!(refused.1["masterUrl"], s.groups[mine].master.url(), "{}", refused.1);
        let after = s.groups[theirs].master.api().digest().await.unwrap().applied_lsn;
        assert_eq!(before, after, "a refused write is not logged");
        let slave = call(&s.groups[theirs].slaves[0].url(), Method::GET, &path, None).await;
        assert_eq!(slave.1["error"], "wrong_shard", "a slave serves only its group's users too");
    }
    // Each group holds exactly its own users (and the one each start-up check marked),
    // all of them in its one range, as its range gauges count them.
    for g in 0..2 {
        let expected = users.iter().filter(|u| s.group_of(**u) == g).count() as u64 + 1;
        assert_eq!(users_held(&s.groups[g].master.api()).await, expected, "group {}", s.names[g]);
        let master = &s.groups[g].master;
        let range = s.map.ranges[g].range.to_string();
        wait_until(WITHIN, "the range gauges to count the group's users", async || {
            support::metric(master, "bitark_shard_range_users", &[("range", &range)]).await == Some(expected as f64)
        })
        .await;
        assert_eq!(support::metric(master, "bitark_shard_unowned_users", &[]).await, Some(0.0));
        s.groups[g].wait_for_convergence(WITHIN).await;
    }

    // Read receipts of 102 users (60 of them wrote) over both groups, in request order.
    let asked: Vec<u64> = (1000..1100).chain([5, 6]).collect();
    let (status, body) =
        call(&via, Method::POST, "/api/v1/messages/7/readers", Some(json!({ "userIds": asked }))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let expected: Vec<Value> = asked.iter().map(|u| json!(users.contains(u))).collect();
    assert_eq!(body["read"], json!(expected));
    assert_eq!(body["unavailable"], json!([]));
    let pairs =
        json!({"pairs": [{"userId": 1000, "msgId": 7}, {"userId": 5, "msgId": 7}, {"userId": 1001, "msgId": 8}]});
    let (status, body) = call(&via, Method::POST, "/api/v1/reads/check", Some(pairs)).await;
    assert_eq!((status, &body["read"]), (StatusCode::OK, &json!([true, false, false])), "{body}");

    // The router counts by group; `shards show` names both groups and their masters.
    let text = Api::new(&via).metrics_text().await.unwrap();
    for name in &s.names {
        assert!(text.contains(&format!("bitark_router_requests_total{{group=\"{name}\",status=\"200\"}}")), "{text}");
    }
    assert!(text.contains("bitark_router_map_version 1"), "{text}");
    // The reads without a token went pipelined; the ones with a token did not.
    let pipelined = text
        .lines()
        .find_map(|l| l.strip_prefix("bitark_router_pipelined_reads_total "))
        .and_then(|v| v.trim().parse::<usize>().ok());
    assert!(pipelined.is_some_and(|n| n >= users.len()), "{pipelined:?} of {} plain reads pipelined", users.len());
    assert!(text.contains("bitark_router_requests_total{group=\"fanout\",status=\"200\"} 2"), "{text}");
    let (ok, out, err) = shards(&s.etcd, &["show"]);
    assert!(ok, "{err}");
    for g in 0..2 {
        assert!(out.contains(&s.groups[g].master.url()), "{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_map_is_changed_only_whole_and_by_name() {
    let Some(s) = Sharded::start(&["a", "b"], 0).await else { return };
    let (ok, _, err) = shards(&s.etcd, &["init", "--groups", "c"]);
    assert!(!ok && err.contains("exists already"), "{err}");
    let (ok, _, err) = shards(&s.etcd, &["assign", "5..3", "b"]);
    assert!(!ok && err.contains("is empty"), "{err}");
    let (ok, _, err) = shards(&s.etcd, &["assign", "0..end", "B:1"]);
    assert!(!ok && err.contains("no group name"), "{err}");
    let (ok, _, err) = shards(&s.etcd, &["assign", "0..end", "b", "--expect-version", "7"]);
    assert!(!ok && err.contains("changed meanwhile"), "{err}");
    // Group b takes the whole space: a's master logs that it owns nothing and refuses
    // the user it served, b's serves it.
    let user = s.users_of(0, 1)[0];
    let (ok, out, err) = shards(&s.etcd, &["assign", "0..end", "b", "--expect-version", "1"]);
    assert!(ok, "{err}");
    assert!(out.contains("version 2"), "{out}");
    let a = s.groups[0].master.api();
    wait_until(WITHIN, "group a to give the user up", async || {
        matches!(a.mark_read(user, 1).await, Err(CallError::Status(StatusCode::CONFLICT, _)))
    })
    .await;
    let b = s.groups[1].master.api();
    wait_until(WITHIN, "group b to take the user", async || b.mark_read(user, 1).await.is_ok()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_split_cuts_a_range_in_two_and_its_group_serves_both_halves() {
    let Some(s) = Sharded::start(&["a", "b"], 0).await else { return };
    let upper = s.map.ranges[1].range.to_string();
    let (ok, _, err) = shards(&s.etcd, &["split", "0..0x10"]);
    assert!(!ok && err.contains("not a range of the map"), "{err}");
    let (ok, _, err) = shards(&s.etcd, &["split", &upper, "--at", "0x10"]);
    assert!(!ok && err.contains("does not cut"), "{err}");
    let (ok, _, err) = shards(&s.etcd, &["split", &upper, "--at", "zz"]);
    assert!(!ok && err.contains("`zz` is no hash"), "{err}");
    let (ok, out, err) = shards(&s.etcd, &["split", &upper, "--expect-version", "1"]);
    assert!(ok, "{err}");
    assert!(out.contains("version 2") && out.contains("committed in"), "{out}");
    assert!(out.contains("0xc000000000000000"), "the midpoint: {out}");
    // Group b's master follows the map and logs both halves; every user stays where it was.
    let b = &s.groups[1].master;
    wait_until(WITHIN, "group b to log the two halves", async || {
        support::metric(b, "bitark_shard_owned_ranges", &[]).await == Some(2.0)
    })
    .await;
    for g in 0..2 {
        for user in s.users_of(g, 5) {
            let api = s.groups[g].master.api();
            api.mark_read(user, 3).await.unwrap_or_else(|e| panic!("group {} refused user {user}: {e:?}", s.names[g]));
        }
    }
    // The whole range is gone from the map: splitting it again names that.
    let (ok, _, err) = shards(&s.etcd, &["split", &upper]);
    assert!(!ok && err.contains("not a range of the map"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_router_killed_mid_traffic_loses_nothing_acknowledged() {
    let Some(s) = Sharded::start(&["a", "b"], 0).await else { return };
    let mut router = s.router().await;
    let via = router.url();
    let writer = tokio::spawn(async move {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
        let mut acknowledged = Vec::new();
        for i in 0..100_000u64 {
            let (user, msg) = (2000 + i % 64, i);
            let sent = client.put(format!("{via}/api/v1/users/{user}/reads/{msg}")).send().await;
            match sent {
                Ok(r) if r.status() == StatusCode::OK => acknowledged.push((user, msg)),
                Ok(_) => {}
                Err(_) => break, // the router is gone
            }
        }
        acknowledged
    });
    wait_until(WITHIN, "writes to flow through the router", async || {
        support::counter(&router, "bitark_router_requests_total", &[("status", "200")]).await > 50
    })
    .await;
    router.sigkill();
    let acknowledged = writer.await.unwrap();
    assert!(acknowledged.len() > 50);
    router.respawn();
    router.wait_ready().await;
    let api = router.api();
    for (user, msg) in acknowledged {
        assert_eq!(api.check(user, &[msg]).await.unwrap(), vec![true], "user {user} msg {msg}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_etcd_stopped_the_router_serves_from_its_cache_and_says_so() {
    let Some(mut s) = Sharded::start(&["a", "b"], 0).await else { return };
    let router = s.router().await;
    let via = router.url();
    let health = || async { call(&via, Method::GET, "/actuator/health", None).await };
    wait_until(WITHIN, "the router to know both masters", async || {
        let (_, body) = health().await;
        body["groups"]["a"]["master"].is_string() && body["groups"]["b"]["master"].is_string()
    })
    .await;
    s.etcd.kill();
    wait_until(WITHIN, "the router to see etcd gone", async || health().await.1["status"] == "DEGRADED").await;
    let (status, body) = health().await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["etcd"]["connected"], false, "{body}");
    for user in 3000..3050u64 {
        let (status, body) = call(&via, Method::PUT, &format!("/api/v1/users/{user}/reads/9"), None).await;
        assert_eq!(status, StatusCode::OK, "user {user} with etcd stopped: {body}");
    }
    // A node still refuses a user of the other group: it decides by its own log.
    let theirs = s.users_of(1, 1)[0];
    let refused = call(&s.groups[0].master.url(), Method::GET, &format!("/api/v1/users/{theirs}/reads/9"), None).await;
    assert_eq!(refused.1["error"], "wrong_shard");
    s.etcd.resume().await;
    wait_until(WITHIN, "the router to read etcd again", async || health().await.1["status"] == "UP").await;
}

/// What a [`writer`] got: each acknowledged (user, message, token), and how many of its
/// writes were refused or failed.
type Written = (Vec<(u64, u64, String)>, usize);

/// A writer through the router marking `users` in turn until stopped.
fn writer(
    via: String,
    users: Vec<u64>,
    query: &'static str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Written> {
    tokio::spawn(async move {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
        let (mut acknowledged, mut failed) = (Vec::new(), 0);
        let mut msg = 0u64;
        while !stop.load(Ordering::Acquire) {
            msg += 1;
            let user = users[msg as usize % users.len()];
            let sent = client.put(format!("{via}/api/v1/users/{user}/reads/{msg}{query}")).send().await;
            match sent {
                Ok(r) if r.status() == StatusCode::OK => {
                    let body: Value = r.json().await.unwrap();
                    acknowledged.push((user, msg, body["token"].as_str().unwrap().to_string()));
                }
                _ => {
                    failed += 1;
                    // Pace the retries while the group has no master (not a synchronisation).
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
        (acknowledged, failed)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failover_in_one_group_under_router_traffic_leaves_the_other_group_untouched() {
    use support::cluster::{Cluster, Role};
    use support::failover::{Failover, ELECT_WITHIN};
    use support::sharded::{member_of, router_builder, PREFIX};
    let group_a = |_: usize, b: support::NodeBuilder| {
        b.env("BITARK_CLUSTER__GROUP", "a")
            .env("BITARK_CLUSTER__REFRESH", "500ms")
            .env("BITARK_COORDINATION__ETCD__PREFIX", PREFIX)
    };
    let Some(mut a) = Failover::start(3, group_a).await else { return };
    let (ok, _, err) = shards(&a.etcd, &["init", "--groups", "a,b"]);
    assert!(ok, "{err}");
    let url = a.etcd.url();
    let b = Cluster::start_with(0, "0", move |_: Role, _, builder| member_of(builder, &url, "b")).await;
    let router = router_builder(&a.etcd).start().await;
    let via = router.url();
    let map = bitark_common::ShardMap::even(&[
        bitark_common::GroupId::new("a").unwrap(),
        bitark_common::GroupId::new("b").unwrap(),
    ])
    .unwrap();
    let of = |g: &str| (1..).filter(|u| map.owner_of(*u).group.as_str() == g).take(16).collect::<Vec<u64>>();
    let (users_a, users_b) = (of("a"), of("b"));
    let api = Api::new(&via);
    wait_until(WITHIN, "both groups to serve through the router", async || {
        api.mark_read(users_a[0], 0).await.is_ok() && api.mark_read(users_b[0], 0).await.is_ok()
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let in_a = writer(via.clone(), users_a.clone(), "?ack=all", stop.clone());
    let in_b = writer(via.clone(), users_b.clone(), "", stop.clone());
    wait_until(WITHIN, "writes to flow to group a", async || {
        support::counter(&router, "bitark_router_requests_total", &[("group", "a"), ("status", "200")]).await > 100
    })
    .await;
    let old = a.master(ELECT_WITHIN, None).await;
    a.nodes[old].sigkill();
    let new = a.master(ELECT_WITHIN, Some(old)).await;
    let before = support::counter(&router, "bitark_router_requests_total", &[("group", "a"), ("status", "200")]).await;
    wait_until(WITHIN, "group a's new master to take writes through the router", async || {
        support::counter(&router, "bitark_router_requests_total", &[("group", "a"), ("status", "200")]).await
            > before + 100
    })
    .await;
    stop.store(true, Ordering::Release);
    let ((taken_a, _failed_a), (taken_b, failed_b)) = (in_a.await.unwrap(), in_b.await.unwrap());
    assert_eq!(failed_b, 0, "group b's users saw no failure while group a failed over");
    assert!(!taken_b.is_empty());
    // Every acknowledged write is readable through the router; the newest with its token.
    let mut by_user: HashMap<u64, Vec<u64>> = HashMap::new();
    for (user, msg, _) in taken_a.iter().chain(&taken_b) {
        by_user.entry(*user).or_default().push(*msg);
    }
    for (user, msgs) in &by_user {
        for part in msgs.chunks(500) {
            assert!(api.check(*user, part).await.unwrap().iter().all(|read| *read), "user {user} lost a write");
        }
    }
    for (user, msg, token) in taken_a.iter().rev().take(20).chain(taken_b.iter().rev().take(20)) {
        let path = format!("/api/v1/users/{user}/reads/{msg}?token={token}");
        let (status, body) = call(&via, Method::GET, &path, None).await;
        assert_eq!((status, &body["read"]), (StatusCode::OK, &json!(true)), "user {user} msg {msg}: {body}");
    }
    let (ok, out, _) = shards(&a.etcd, &["show"]);
    assert!(ok && out.contains(&a.inbound[new].url()), "{out}");
    drop(b);
}
