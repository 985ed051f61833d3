//! The whole cluster under a random mix of faults, with the history checked afterwards,
//! in the manner of etcd's robustness tests and Jepsen.
//!
//! A real etcd and three failover nodes, each wired through the fault proxies of
//! [`support::failover`]. Concurrent clients mark, unmark and read a small key space so
//! that keys collide: one user's keys are written with `ack=semi`, the other's with the
//! default (`async`); reads ask for `consistency=linearizable`. Every operation is recorded
//! with the times it was invoked and answered and its outcome: done, not applied (an
//! answer that says nothing was logged, or a connection refused), or indeterminate
//! (timeouts, resets, `504`, `write_outcome_unknown`, `leader_lease_lapsed`, `not_master`
//! from a fenced master). Meanwhile a seeded schedule partitions nodes from etcd and from
//! each other, SIGKILLs and SIGSTOPs masters and slaves, and restarts them; all is healed
//! at the end.
//!
//! Then, with the cluster converged:
//! - every write acknowledged under `semi` still holds (its token reads back), and every
//!   acknowledged `async` write either holds or answers `write_lost` on its token;
//! - the history of each (user, message) key, a register, is linearizable, as
//!   `stateright`'s `LinearizabilityTester` judges it: acknowledged `async` writes whose
//!   token says `write_lost` count as writes that may not have happened (the documented
//!   loss), indeterminate ones as writes that may or may not have;
//! - the digests of all nodes are equal, no node exited on its own, and no answer was a
//!   5xx the README does not document.
//!
//! Sharded (`…_through_a_router_over_two_groups_…`): the same three failover nodes are
//! group `a` of a shard map in etcd, a static master is group `b`, and every client goes
//! through a `bitark router` (itself behind a proxy, and SIGKILLed among the faults).
//! Users 1 and 2 belong to group `a`, user 3 ([`OTHER_USER`], written with the default
//! ack) to group `b`, whose acknowledged writes must all hold.
//!
//! `a_seeded_mix_of_faults_keeps_every_promise` is the bounded CI mode
//! (`ROBUSTNESS_SEED`, `ROBUSTNESS_FAULTS` change it). The long mode, `--ignored`,
//! injects 100 faults and prints the figures that go into `BENCHMARKS.md`:
//! `cargo test --release -p bitark-adapter --test robustness -- --ignored --nocapture`.

mod support;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::Value;
use stateright::semantics::register::{Register, RegisterOp, RegisterRet};
use stateright::semantics::{ConsistencyTester, LinearizabilityTester};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use support::epochs::converged;
use support::failover::{Failover, ELECT_WITHIN};
use support::proxy::Mode;

/// The user whose keys are written with `ack=semi`; [`ASYNC_USER`]'s with the default.
const SEMI_USER: u64 = 1;
const ASYNC_USER: u64 = 2;
/// In the sharded run: a user of the static group `b` (users 1 and 2 hash into the
/// upper half of the space, which the map gives `a`; user 3 into the lower half).
const OTHER_USER: u64 = 3;
const CLIENTS: usize = 4;
/// Longest a client waits for an answer: past it the operation is indeterminate.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_seeded_mix_of_faults_keeps_every_promise() {
    let seed = env_or("ROBUSTNESS_SEED", 20261207);
    let faults = env_or("ROBUSTNESS_FAULTS", 8) as usize;
    let Some(report) = run(seed, faults, 6, false).await else { return };
    println!("{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_seeded_mix_of_faults_through_a_router_over_two_groups_keeps_every_promise() {
    let seed = env_or("ROBUSTNESS_SEED", 20261207);
    let faults = env_or("ROBUSTNESS_FAULTS", 8) as usize;
    let Some(report) = run(seed, faults, 6, true).await else { return };
    println!("{report}");
}

/// The long mode: at least 100 faults.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "long: run with --ignored"]
async fn a_hundred_faults_keep_every_promise() {
    let seed = env_or("ROBUSTNESS_SEED", 1);
    let faults = env_or("ROBUSTNESS_FAULTS", 100) as usize;
    let Some(report) = run(seed, faults, 40, std::env::var_os("ROBUSTNESS_SHARDED").is_some()).await else {
        return;
    };
    println!("{report}");
}

fn env_or(key: &str, default: u64) -> u64 {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// What an operation does to its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Mark,
    Unmark,
    Read,
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    /// Acknowledged; a read's value.
    Done(Option<bool>),
    /// Nothing was applied: the answer says so, or the request never reached a node.
    NotApplied,
    /// It may or may not have been applied.
    Indeterminate,
}

#[derive(Clone, Debug)]
struct Op {
    client: usize,
    user: u64,
    msg: u64,
    kind: Kind,
    node: usize,
    invoked: Instant,
    returned: Instant,
    outcome: Outcome,
    /// The answer: status and error code, or the transport error.
    answer: String,
    /// An acknowledged write's token.
    token: Option<String>,
    /// A 5xx answer the README does not document.
    undocumented: bool,
}

/// The nodes' current base URLs, which change when a node restarts, and the URLs their
/// peers (and `masterUrl` in answers) know them by.
struct Directory {
    urls: RwLock<Vec<String>>,
    peer_urls: Vec<String>,
    /// In the sharded run every request goes to the router, whatever node it names.
    router: Option<String>,
}

impl Directory {
    fn url(&self, node: usize) -> String {
        match &self.router {
            Some(router) => router.clone(),
            None => self.urls.read().unwrap()[node].clone(),
        }
    }

    fn index_of_peer_url(&self, url: &str) -> Option<usize> {
        self.peer_urls.iter().position(|u| u.trim_end_matches('/') == url.trim_end_matches('/'))
    }
}

/// Every 5xx code the README documents, and which outcome it means for a write.
fn documented_5xx(code: &str) -> Option<Outcome> {
    match code {
        "starting"
        | "shutting_down"
        | "overloaded"
        | "write_failed"
        | "write_path_failed"
        | "not_enough_replicas"
        | "full_sync_in_progress"
        | "too_many_connections" => Some(Outcome::NotApplied),
        "leader_lease_lapsed" | "replication_timeout" | "write_outcome_unknown" => Some(Outcome::Indeterminate),
        // A router's own: nothing reached a node, or what did got no answer.
        "no_master" | "unreachable" | "no_shard_map" | "too_many_redirects" => Some(Outcome::NotApplied),
        "node_timeout" | "node_failed" => Some(Outcome::Indeterminate),
        // Reads only.
        "not_committed" | "lsn_not_reached" => Some(Outcome::NotApplied),
        _ => None,
    }
}

async fn run(seed: u64, faults: usize, msgs: u64, sharded: bool) -> Option<String> {
    let mut cluster = Failover::start(3, |_, b| {
        let b = b.env("BITARK_REPLICATION__ACK_TIMEOUT", "1s");
        if sharded {
            b.env("BITARK_CLUSTER__GROUP", "a")
                .env("BITARK_CLUSTER__REFRESH", "500ms")
                .env("BITARK_COORDINATION__ETCD__PREFIX", support::sharded::PREFIX)
        } else {
            b
        }
    })
    .await?;
    let mut front = if sharded { Some(Front::start(&cluster).await) } else { None };
    let directory = Arc::new(Directory {
        urls: RwLock::new(cluster.nodes.iter().map(|n| n.url()).collect()),
        peer_urls: cluster.inbound.iter().map(|p| p.url()).collect(),
        router: front.as_ref().map(|f| f.proxy.url()),
    });
    let users: &'static [u64] = if sharded { &[SEMI_USER, ASYNC_USER, OTHER_USER] } else { &[SEMI_USER, ASYNC_USER] };
    let history = Arc::new(Mutex::new(Vec::new()));
    let undocumented = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (directory, history, undocumented, stop) =
                (directory.clone(), history.clone(), undocumented.clone(), stop.clone());
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed ^ ((client as u64 + 1) * 0x9e37_79b9));
                let http = reqwest::Client::builder()
                    .timeout(CLIENT_TIMEOUT)
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .unwrap();
                let mut node = client % 3;
                while !stop.load(Ordering::Relaxed) {
                    let user = users[rng.gen_range(0..users.len())];
                    let msg = rng.gen_range(0..msgs);
                    let kind = match rng.gen_range(0..10) {
                        0..=3 => Kind::Read,
                        4..=6 => Kind::Mark,
                        _ => Kind::Unmark,
                    };
                    let (op, next) = one_op(&http, &directory, client, node, user, msg, kind).await;
                    if op.undocumented {
                        undocumented.lock().unwrap().push(op.clone());
                    }
                    history.lock().unwrap().push(op);
                    node = next.unwrap_or_else(|| rng.gen_range(0..3));
                    // Paced, so the history of each key stays small enough to check.
                    tokio::time::sleep(Duration::from_millis(rng.gen_range(5..25))).await;
                }
            })
        })
        .collect();

    let mut rng = StdRng::seed_from_u64(seed);
    let mut by_kind: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut masters = vec![cluster.master(ELECT_WITHIN, None).await];
    for _ in 0..faults {
        let fault = match front.as_mut() {
            Some(front) if rng.gen_range(0..5) == 0 => front.sigkill_and_restart().await,
            _ => inject(&mut cluster, &directory, &mut rng).await,
        };
        *by_kind.entry(fault).or_default() += 1;
        let master = cluster.master(ELECT_WITHIN, None).await;
        if masters.last() != Some(&master) {
            masters.push(master);
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(300..1200))).await;
    }
    // Healed: writes go on for a moment under one master, then stop.
    let last = cluster.master(ELECT_WITHIN, None).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    converged(&cluster.nodes.iter().collect::<Vec<_>>()).await;
    for (index, node) in cluster.nodes.iter_mut().enumerate() {
        assert!(node.try_exit().is_none(), "node {index} exited on its own:\n{}", node.stderr_text());
    }
    let undocumented = undocumented.lock().unwrap().clone();
    assert!(undocumented.is_empty(), "answers the README does not document: {undocumented:#?}");

    let mut history = history.lock().unwrap().clone();
    let reads_at = directory.router.clone().unwrap_or_else(|| cluster.nodes[last].url());
    let lost = check_tokens(&reads_at, &history).await;
    // A final read of every key, on the healed master, after everything else.
    let http = reqwest::Client::new();
    for &user in users {
        for msg in 0..msgs {
            let (op, _) = one_op(&http, &directory, CLIENTS, last, user, msg, Kind::Read).await;
            assert!(matches!(op.outcome, Outcome::Done(_)), "the final read of ({user}, {msg}): {op:?}");
            history.push(op);
        }
    }
    check_linearizable(&history, &lost);

    let writes_done = history.iter().filter(|o| o.kind != Kind::Read && matches!(o.outcome, Outcome::Done(_)));
    let mut done_at: Vec<Instant> = writes_done.map(|o| o.returned).collect();
    done_at.sort();
    let longest_gap = done_at.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
    let count = |f: &dyn Fn(&Op) -> bool| history.iter().filter(|o| f(o)).count();
    Some(format!(
        "seed {seed}: {} operations ({} done, {} not applied, {} indeterminate), {} async writes lost and \
         answered write_lost; {faults} faults {by_kind:?}; {} failovers; longest time without an acknowledged \
         write {longest_gap:?}",
        history.len(),
        count(&|o| matches!(o.outcome, Outcome::Done(_))),
        count(&|o| o.outcome == Outcome::NotApplied),
        count(&|o| o.outcome == Outcome::Indeterminate),
        lost.len(),
        masters.len() - 1,
    ))
}

/// Sends one operation to `node` and records it; answers where to send the next one
/// (`None`: anywhere).
async fn one_op(
    http: &reqwest::Client,
    directory: &Directory,
    client: usize,
    node: usize,
    user: u64,
    msg: u64,
    kind: Kind,
) -> (Op, Option<usize>) {
    let base = directory.url(node);
    let url = match (kind, user) {
        (Kind::Read, _) => format!("{base}/api/v1/users/{user}/reads/{msg}?consistency=linearizable"),
        (_, SEMI_USER) => format!("{base}/api/v1/users/{user}/reads/{msg}?ack=semi"),
        _ => format!("{base}/api/v1/users/{user}/reads/{msg}"),
    };
    let method = match kind {
        Kind::Mark => reqwest::Method::PUT,
        Kind::Unmark => reqwest::Method::DELETE,
        Kind::Read => reqwest::Method::GET,
    };
    let invoked = Instant::now();
    let sent = http.request(method, &url).send().await;
    let answered = match sent {
        Ok(response) => {
            let status = response.status();
            Ok((status, response.json::<Value>().await.unwrap_or(Value::Null)))
        }
        Err(e) => Err(e),
    };
    let returned = Instant::now();
    let undocumented = matches!(&answered, Ok((status, body)) if status.is_server_error()
        && documented_5xx(body["error"].as_str().unwrap_or("")).is_none());
    let mut next = Some(node);
    let (outcome, answer, token) = match answered {
        Ok((StatusCode::OK, body)) => {
            let value = body["read"].as_bool();
            (Outcome::Done(value), "200".to_string(), body["token"].as_str().map(str::to_string))
        }
        Ok((status, body)) => {
            let code = body["error"].as_str().unwrap_or("").to_string();
            let message = body["message"].as_str().unwrap_or("");
            if let Some(url) = body["masterUrl"].as_str() {
                next = directory.index_of_peer_url(url);
            } else if code == "not_master" {
                next = None;
            }
            let outcome = match (status.as_u16(), code.as_str()) {
                // A slave refuses before logging anything; a fenced master may have
                // written the record as the fence went up.
                (409, "not_master") if message.contains("this node is a slave") => Outcome::NotApplied,
                (409, "not_master") => Outcome::Indeterminate,
                (500..=599, code) => match documented_5xx(code) {
                    Some(outcome) => outcome,
                    None => Outcome::NotApplied,
                },
                _ => panic!("{kind:?} of ({user}, {msg}) on node {node}: unexpected {status}: {body}"),
            };
            (outcome, format!("{} {code}", status.as_u16()), None)
        }
        Err(e) => {
            next = None;
            // Refused: the request never reached a process.
            let outcome = if e.is_connect() { Outcome::NotApplied } else { Outcome::Indeterminate };
            (outcome, format!("transport: {e}"), None)
        }
    };
    let outcome = match (kind, outcome) {
        // A read that was not answered has no effect at all.
        (Kind::Read, Outcome::Indeterminate) => Outcome::NotApplied,
        (_, outcome) => outcome,
    };
    (Op { client, user, msg, kind, node, invoked, returned, outcome, answer, token, undocumented }, next)
}

/// Reads the token of every acknowledged write at `base` (the healed master, or the
/// router): a `semi` one must hold,
/// an `async` one must hold or answer `write_lost`. Answers the tokens of the lost ones.
async fn check_tokens(base: &str, history: &[Op]) -> Vec<String> {
    let http = reqwest::Client::new();
    let mut lost = Vec::new();
    let mut checked = HashMap::new();
    for op in history.iter().filter(|o| o.kind != Kind::Read) {
        let Some(token) = &op.token else { continue };
        if checked.contains_key(token) {
            continue;
        }
        let url = format!("{base}/api/v1/users/{}/reads/{}?token={token}", op.user, op.msg);
        let response = http.get(&url).send().await.expect("the healed master (or the router) answers");
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        match (status, body["error"].as_str()) {
            (StatusCode::OK, _) => {}
            (StatusCode::CONFLICT, Some("write_lost")) if op.user == ASYNC_USER => lost.push(token.clone()),
            _ => panic!("acknowledged {op:?}: its token answers {status} {body}"),
        }
        checked.insert(token.clone(), status);
    }
    lost
}

/// Checks the history of every key with stateright's linearizability tester.
fn check_linearizable(history: &[Op], lost: &[String]) {
    let mut keys: BTreeMap<(u64, u64), Vec<&Op>> = BTreeMap::new();
    for op in history.iter().filter(|o| o.outcome != Outcome::NotApplied) {
        keys.entry((op.user, op.msg)).or_default().push(op);
    }
    // The tester searches recursively, one frame per operation of the key.
    let keys: Vec<((u64, u64), Vec<Op>)> =
        keys.into_iter().map(|(k, ops)| (k, ops.into_iter().cloned().collect())).collect();
    let lost = lost.to_vec();
    std::thread::Builder::new()
        .stack_size(1 << 30)
        .spawn(move || {
            for (key, ops) in keys {
                if let Err(conflict) = linearizable(&ops, &lost) {
                    panic!("key {key:?} is not linearizable: {conflict}\n{}", describe(&ops));
                }
            }
        })
        .unwrap()
        .join()
        .unwrap();
}

/// One key's operations, fed to the tester in the order of their invocations and answers.
fn linearizable(ops: &[Op], lost: &[String]) -> Result<(), String> {
    // A thread per client, and a new one after each operation left in flight (the tester
    // lets a thread have one at a time).
    let mut generation: HashMap<usize, u64> = HashMap::new();
    let mut events = Vec::new();
    for op in ops {
        let gen = generation.entry(op.client).or_default();
        let thread = op.client as u64 * 1_000_000 + *gen;
        let in_flight = op.outcome == Outcome::Indeterminate || op.token.as_ref().is_some_and(|t| lost.contains(t));
        let register_op = match op.kind {
            Kind::Mark => RegisterOp::Write(true),
            Kind::Unmark => RegisterOp::Write(false),
            Kind::Read => RegisterOp::Read,
        };
        // At equal times the invocation goes first: the weaker order.
        events.push((op.invoked, 0, thread, Some(register_op), None));
        if in_flight {
            *gen += 1;
        } else {
            let ret = match (op.kind, &op.outcome) {
                (Kind::Read, Outcome::Done(Some(value))) => RegisterRet::ReadOk(*value),
                (Kind::Read, other) => return Err(format!("a read answered {other:?} without a value")),
                _ => RegisterRet::WriteOk,
            };
            events.push((op.returned, 1, thread, None, Some(ret)));
        }
    }
    events.sort_by_key(|e| (e.0, e.1));
    let mut tester = LinearizabilityTester::new(Register(false));
    for (_, _, thread, op, ret) in events {
        match (op, ret) {
            (Some(op), _) => tester.on_invoke(thread, op).map(|_| ())?,
            (None, Some(ret)) => tester.on_return(thread, ret).map(|_| ())?,
            (None, None) => unreachable!(),
        }
    }
    if tester.is_consistent() {
        Ok(())
    } else {
        Err("no order of the operations explains every answer".into())
    }
}

/// One line per operation, in invocation order, for a failure message.
fn describe(ops: &[Op]) -> String {
    let start = ops.iter().map(|o| o.invoked).min().unwrap_or_else(Instant::now);
    let mut lines: Vec<(Instant, String)> = ops
        .iter()
        .map(|o| {
            let at = |t: Instant| (t - start).as_secs_f64() * 1000.0;
            let line = format!(
                "{:>10.1}..{:>10.1} ms  client {} node {}  {:?} -> {:?} ({}){}",
                at(o.invoked),
                at(o.returned),
                o.client,
                o.node,
                o.kind,
                o.outcome,
                o.answer,
                o.token.as_ref().map(|t| format!(" token {t}")).unwrap_or_default()
            );
            (o.invoked, line)
        })
        .collect();
    lines.sort_by_key(|l| l.0);
    lines.into_iter().map(|(_, l)| l).collect::<Vec<_>>().join("\n")
}

/// The sharded run's front: the static group `b` and a router behind a proxy, whose URL
/// stays the same when the router is killed and started again.
struct Front {
    _group_b: support::cluster::Cluster,
    router: support::Node,
    proxy: support::proxy::Proxy,
}

impl Front {
    /// Writes the map (`b` the lower half, `a` the upper), starts group `b` and a router.
    async fn start(cluster: &Failover) -> Front {
        use support::sharded::{member_of, router_builder, shards};
        let (ok, _, err) = shards(&cluster.etcd, &["init", "--groups", "b,a"]);
        assert!(ok, "{err}");
        let url = cluster.etcd.url();
        let group_b =
            support::cluster::Cluster::start_with(0, "0", move |_, _, builder| member_of(builder, &url, "b")).await;
        let proxy = support::proxy::Proxy::start().await;
        let mut router = router_builder(&cluster.etcd).spawn();
        proxy.set_upstream(router.wait_listening().await);
        router.wait_ready().await;
        let front = Front { _group_b: group_b, router, proxy };
        let api = support::Api::new(&front.proxy.url());
        support::wait_until(ELECT_WITHIN, "both groups to take writes through the router", async || {
            api.mark_read(OTHER_USER, 1_000_000).await.is_ok() && api.mark_read(SEMI_USER, 1_000_000).await.is_ok()
        })
        .await;
        front
    }

    async fn sigkill_and_restart(&mut self) -> &'static str {
        self.router.sigkill();
        self.router.respawn();
        self.proxy.set_upstream(self.router.wait_listening().await);
        self.router.wait_ready().await;
        "sigkill router"
    }
}

/// Injects one fault chosen by `rng`, lets it act, and heals it. Answers its kind.
async fn inject(cluster: &mut Failover, directory: &Directory, rng: &mut StdRng) -> &'static str {
    let master = cluster.master(ELECT_WITHIN, None).await;
    let slave = (master + rng.gen_range(1..3)) % 3;
    let lasts = Duration::from_millis(rng.gen_range(500..4000));
    let kind = match rng.gen_range(0..8) {
        0 => "sigkill master",
        1 => "sigkill slave",
        2 => "sigstop master",
        3 => "sigstop slave",
        4 => "master cut from etcd",
        5 => "master cut from its peers",
        6 => "master cut from etcd and peers",
        _ => "slave cut from etcd",
    };
    let target = if kind.contains("slave") { slave } else { master };
    match kind {
        "sigkill master" | "sigkill slave" => {
            cluster.nodes[target].sigkill();
            tokio::time::sleep(lasts).await;
            cluster.respawn(target).await;
            directory.urls.write().unwrap()[target] = cluster.nodes[target].url();
        }
        "sigstop master" | "sigstop slave" => {
            cluster.nodes[target].sigstop();
            tokio::time::sleep(lasts).await;
            cluster.nodes[target].sigcont();
        }
        _ => {
            let (etcd, peers) = (kind.contains("etcd"), kind.contains("peers"));
            if etcd {
                cluster.to_etcd[target].set_mode(Mode::Cut);
            }
            if peers {
                cluster.inbound[target].set_mode(Mode::Cut);
            }
            tokio::time::sleep(lasts).await;
            cluster.to_etcd[target].set_mode(Mode::Pass);
            cluster.inbound[target].set_mode(Mode::Pass);
        }
    }
    kind
}

/// The checker's wiring, on histories whose verdict is known: a read that misses an
/// acknowledged write is caught, a write left in flight may take effect (once, never
/// undone), and an acknowledged `async` write its token says was lost may never have.
#[test]
fn the_checker_judges_known_histories() {
    let start = Instant::now();
    let at = |ms: u64| start + Duration::from_millis(ms);
    let op = |client, kind, from, to, outcome, token: Option<&str>| Op {
        client,
        user: ASYNC_USER,
        msg: 0,
        kind,
        node: 0,
        invoked: at(from),
        returned: at(to),
        outcome,
        answer: String::new(),
        token: token.map(str::to_string),
        undocumented: false,
    };
    let read = |client, from, to, value| op(client, Kind::Read, from, to, Outcome::Done(Some(value)), None);
    let mark = op(0, Kind::Mark, 0, 1, Outcome::Done(None), Some("1:5"));
    let in_flight = op(0, Kind::Mark, 0, 1, Outcome::Indeterminate, None);

    assert!(linearizable(&[mark.clone(), read(1, 2, 3, true)], &[]).is_ok());
    assert!(linearizable(&[mark.clone(), read(1, 2, 3, false)], &[]).is_err(), "a read missed an acknowledged write");
    assert!(linearizable(&[mark.clone(), read(1, 2, 3, false)], &["1:5".into()]).is_ok(), "a lost async write");
    // Concurrent with the write, a read may see either value.
    assert!(linearizable(&[mark.clone(), read(1, 0, 3, false)], &[]).is_ok());
    assert!(linearizable(&[in_flight.clone(), read(1, 2, 3, false), read(1, 4, 5, true)], &[]).is_ok());
    assert!(
        linearizable(&[in_flight.clone(), read(1, 2, 3, true), read(1, 4, 5, false)], &[]).is_err(),
        "a write in flight took effect, then was undone"
    );
    // The same client goes on after a write left in flight.
    assert!(linearizable(&[in_flight, read(0, 2, 3, true), read(1, 4, 5, true)], &[]).is_ok());
}
