//! The test harness itself: the fault-injecting proxy against small in-test TCP and
//! HTTP servers, the cluster start-up around a real standalone master, and the
//! convergence check between two real nodes.

mod support;

use axum::extract::State;
use axum::routing::post;
use axum::Router;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::cluster::{converge, Cluster};
use support::proxy::{Mode, Proxy};
use support::{wait_until, Api, Node};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// Bound on one read, so a broken proxy fails the test instead of hanging it.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A TCP server that records every byte it receives and answers each chunk in upper case.
struct Upper {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<u8>>>,
    task: JoinHandle<()>,
}

impl Upper {
    async fn start() -> Upper {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the test server");
        let addr = listener.local_addr().expect("test server address");
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((socket, _)) = listener.accept().await {
                connections.spawn(answer_in_upper_case(socket, sink.clone()));
            }
        });
        Upper { addr, received, task }
    }

    fn received(&self) -> Vec<u8> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for Upper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer_in_upper_case(mut socket: TcpStream, received: Arc<Mutex<Vec<u8>>>) {
    let mut buf = [0; 1024];
    while let Ok(len @ 1..) = socket.read(&mut buf).await {
        received.lock().unwrap().extend_from_slice(&buf[..len]);
        if socket.write_all(&buf[..len].to_ascii_uppercase()).await.is_err() {
            return;
        }
    }
}

async fn connect(proxy: &Proxy) -> TcpStream {
    TcpStream::connect(proxy.addr()).await.expect("connect to the proxy")
}

/// Sends `request` and reads an answer of the same length.
async fn round_trip(stream: &mut TcpStream, request: &[u8]) -> Vec<u8> {
    stream.write_all(request).await.expect("send through the proxy");
    let mut answer = vec![0; request.len()];
    let read = tokio::time::timeout(IO_TIMEOUT, stream.read_exact(&mut answer)).await;
    read.expect("no answer through the proxy").expect("read the answer");
    answer
}

/// Panics unless the peer closes `stream` without sending anything.
async fn assert_closed(stream: &mut TcpStream, what: &str) {
    let mut buf = [0; 64];
    match tokio::time::timeout(IO_TIMEOUT, stream.read(&mut buf)).await {
        Err(_) => panic!("{what}: the connection stayed open"),
        Ok(Ok(0) | Err(_)) => {}
        Ok(Ok(len)) => panic!("{what}: got {:?} instead of a closed connection", String::from_utf8_lossy(&buf[..len])),
    }
}

#[tokio::test]
async fn pass_forwards_both_ways_and_passes_half_close_on() {
    let upstream = Upper::start().await;
    let proxy = Proxy::start().await;
    proxy.set_upstream(upstream.addr);

    let mut client = connect(&proxy).await;
    assert_eq!(round_trip(&mut client, b"ping").await, b"PING");
    assert_eq!(upstream.received(), b"ping");

    // After the client's half-close the answer still comes back, then the server's close.
    client.write_all(b"tail").await.expect("send through the proxy");
    client.shutdown().await.expect("half-close");
    let mut rest = Vec::new();
    tokio::time::timeout(IO_TIMEOUT, client.read_to_end(&mut rest)).await.expect("no end of stream").expect("read");
    assert_eq!(rest, b"TAIL");
    assert_eq!(upstream.received(), b"pingtail");
    let stats = proxy.stats();
    assert_eq!((stats.connections, stats.refused), (1, 0));
    assert_eq!((stats.bytes_to_upstream, stats.bytes_to_client), (8, 8));
}

#[tokio::test]
async fn cut_closes_open_connections_and_refuses_new_ones_until_pass() {
    let upstream = Upper::start().await;
    let proxy = Proxy::start().await;
    proxy.set_upstream(upstream.addr);
    let mut open = connect(&proxy).await;
    assert_eq!(round_trip(&mut open, b"before").await, b"BEFORE");

    proxy.set_mode(Mode::Cut);
    assert_closed(&mut open, "an open connection once cut").await;
    let mut refused = connect(&proxy).await;
    // The write may still land in the socket buffer; it must not reach the server.
    let _ = refused.write_all(b"lost").await;
    assert_closed(&mut refused, "a new connection while cut").await;
    assert_eq!(proxy.stats().refused, 1);
    assert_eq!(upstream.received(), b"before");

    proxy.set_mode(Mode::Pass);
    assert_eq!(round_trip(&mut connect(&proxy).await, b"after").await, b"AFTER");
}

#[tokio::test]
async fn delay_holds_back_each_chunk_of_open_and_new_connections() {
    const DELAY: Duration = Duration::from_millis(150);
    let upstream = Upper::start().await;
    let proxy = Proxy::start().await;
    proxy.set_upstream(upstream.addr);
    let mut open = connect(&proxy).await;
    assert_eq!(round_trip(&mut open, b"fast").await, b"FAST");

    proxy.set_mode(Mode::Delay(DELAY));
    // Held back on the way there and on the way back.
    let started = Instant::now();
    assert_eq!(round_trip(&mut open, b"slow").await, b"SLOW");
    assert!(started.elapsed() >= 2 * DELAY, "open connection: round trip took {:?}", started.elapsed());
    let started = Instant::now();
    assert_eq!(round_trip(&mut connect(&proxy).await, b"slow").await, b"SLOW");
    assert!(started.elapsed() >= 2 * DELAY, "new connection: round trip took {:?}", started.elapsed());
}

/// An HTTP server counting the `POST /apply` requests it has handled.
async fn counting_server() -> (SocketAddr, Arc<AtomicU64>) {
    async fn apply(State(applied): State<Arc<AtomicU64>>) -> String {
        (applied.fetch_add(1, Ordering::SeqCst) + 1).to_string()
    }
    let applied = Arc::new(AtomicU64::new(0));
    let router = Router::new().route("/apply", post(apply)).with_state(applied.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the HTTP server");
    let addr = listener.local_addr().expect("HTTP server address");
    tokio::spawn(async move { axum::serve(listener, router).await });
    (addr, applied)
}

/// `POST /apply` through the proxy: the answer body, or `None` if no answer came back.
async fn apply(http: &reqwest::Client, proxy: &Proxy) -> Option<String> {
    let response = http.post(format!("{}/apply", proxy.url())).send().await.ok()?;
    assert!(response.status().is_success(), "{}", response.status());
    response.text().await.ok()
}

#[tokio::test]
async fn drop_responses_applies_requests_but_loses_their_answers() {
    let (server, applied) = counting_server().await;
    let proxy = Proxy::start().await;
    proxy.set_upstream(server);
    // One client for all three requests: its kept-alive connection is affected too.
    let http = reqwest::Client::builder().timeout(IO_TIMEOUT).build().expect("HTTP client");
    assert_eq!(apply(&http, &proxy).await.as_deref(), Some("1"));

    proxy.set_mode(Mode::DropResponses);
    assert_eq!(apply(&http, &proxy).await, None, "the answer should be lost");
    assert_eq!(applied.load(Ordering::SeqCst), 2, "the request should have been handled");
    assert_eq!(proxy.stats().responses_dropped, 1);

    proxy.set_mode(Mode::Pass);
    assert_eq!(apply(&http, &proxy).await.as_deref(), Some("3"));
}

#[tokio::test]
async fn drop_next_loses_that_many_answers_then_passes() {
    let (server, applied) = counting_server().await;
    let proxy = Proxy::start().await;
    proxy.set_upstream(server);
    let http = reqwest::Client::builder().timeout(IO_TIMEOUT).build().expect("HTTP client");

    proxy.set_mode(Mode::DropNext(2));
    assert_eq!(apply(&http, &proxy).await, None);
    assert_eq!(proxy.mode(), Mode::DropNext(1));
    assert_eq!(apply(&http, &proxy).await, None);
    assert_eq!(proxy.mode(), Mode::Pass);
    assert_eq!(apply(&http, &proxy).await.as_deref(), Some("3"));
    assert_eq!(applied.load(Ordering::SeqCst), 3);
    assert_eq!(proxy.stats().responses_dropped, 2);
}

#[tokio::test]
async fn set_upstream_after_start_routes_new_connections_there() {
    let (first, second) = (Upper::start().await, Upper::start().await);
    let proxy = Proxy::start().await;
    assert_closed(&mut connect(&proxy).await, "a connection before any upstream").await;
    assert_eq!(proxy.stats().refused, 1);

    proxy.set_upstream(first.addr);
    let mut open = connect(&proxy).await;
    assert_eq!(round_trip(&mut open, b"one").await, b"ONE");

    proxy.set_upstream(second.addr);
    assert_eq!(round_trip(&mut connect(&proxy).await, b"two").await, b"TWO");
    assert_eq!(round_trip(&mut open, b"three").await, b"THREE", "an open connection keeps its upstream");
    assert_eq!(first.received(), b"onethree");
    assert_eq!(second.received(), b"two");
}

#[tokio::test]
async fn dropping_the_last_handle_stops_the_proxy() {
    let upstream = Upper::start().await;
    let proxy = Proxy::start().await;
    proxy.set_upstream(upstream.addr);
    let (addr, clone) = (proxy.addr(), proxy.clone());
    let mut open = connect(&proxy).await;
    assert_eq!(round_trip(&mut open, b"a").await, b"A");

    drop(proxy);
    assert_eq!(round_trip(&mut connect(&clone).await, b"b").await, b"B", "a clone keeps the proxy running");
    drop(clone);
    assert_closed(&mut open, "an open connection of a stopped proxy").await;
    wait_until(IO_TIMEOUT, "the proxy port to refuse connections", async || TcpStream::connect(addr).await.is_err())
        .await;
}

#[tokio::test]
async fn cluster_of_one_master_serves_through_its_proxy_across_a_restart() {
    let mut cluster = Cluster::builder().start().await;
    assert!(cluster.slaves.is_empty() && cluster.proxies.is_empty());
    let info = cluster.master.api().info().await.expect("info");
    assert_eq!((info["node"]["id"].as_str(), info["node"]["role"].as_str()), (Some("master"), Some("master")));

    let through_proxy = Api::new(&cluster.master_proxy.url());
    let lsn = through_proxy.mark_read(7, 42).await.expect("write through the master proxy");
    cluster.wait_for_convergence(IO_TIMEOUT).await;

    cluster.restart_master().await;
    assert_eq!(cluster.master_proxy.upstream(), cluster.master.addr(), "the proxy follows the restarted master");
    assert_eq!(through_proxy.check(7, &[42, 43]).await.expect("read through the master proxy"), [true, false]);
    assert_eq!(through_proxy.digest().await.expect("digest").applied_lsn, lsn);
}

#[tokio::test]
async fn convergence_waits_for_the_same_digest_and_applied_lsn() {
    let (master, other) = (Node::builder().start().await, Node::builder().start().await);
    let (master_api, other_api) = (master.api(), other.api());
    for msg in [1, 2] {
        master_api.mark_read(1, msg).await.expect("mark on the master");
    }

    let report = converge(&master, std::slice::from_ref(&other), Duration::from_millis(300)).await.unwrap_err();
    assert!(report.contains("appliedLsn=2") && report.contains("appliedLsn=0"), "{report}");

    // Same marks in another order: another history, the same state.
    for msg in [2, 1] {
        other_api.mark_read(1, msg).await.expect("mark on the other node");
    }
    converge(&master, &[other], IO_TIMEOUT).await.expect("the nodes hold the same marks");
}
