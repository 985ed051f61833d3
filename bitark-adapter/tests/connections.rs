//! What a client's connections can do to a node, against the real binary: no more than
//! `server.max-connections` at once (and never so many that the node's own files run
//! out), none idle, half-sent or endlessly sent for ever, and every error the HTTP layer
//! answers by itself carries the same JSON body as the others.

mod support;

use reqwest::StatusCode;
use serde_json::Value;
use std::time::Duration;
use support::{wait_until, Api, Node};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest any test here waits for a connection to be closed by the node.
const CLOSED_WITHIN: Duration = Duration::from_secs(30);

/// Reads until the node closes the connection; `None` if it is still open after `wait`.
async fn read_until_closed(stream: &mut TcpStream, wait: Duration) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let read = tokio::time::timeout(wait, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok().map(|()| out)
}

/// The status and JSON body of the one answer in `raw`.
fn answer(raw: &[u8]) -> (u16, Value) {
    let text = String::from_utf8_lossy(raw);
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no answer in {text:?}"));
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    let head = text.split("\r\n\r\n").next().unwrap_or("").to_ascii_lowercase();
    assert!(head.contains("content-type: application/json"), "not a JSON answer: {text:?}");
    (status, serde_json::from_str(body).unwrap_or_else(|e| panic!("body of {text:?}: {e}")))
}

/// The value of the first metric line starting with `line_start`, asked on `api`'s
/// connection.
async fn metric(api: &Api, line_start: &str) -> f64 {
    let text = api.metrics_text().await.expect("metrics");
    text.lines().find(|l| l.starts_with(line_start)).and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0.0)
}

#[tokio::test]
async fn idle_connections_over_the_cap_are_refused_and_writes_go_on_across_segment_rotations() {
    // 256 open files, a reserve of 128 for the node itself: 128 connections at most,
    // whatever server.max-connections says.
    const FILES: u64 = 256;
    const FLOOD: usize = 300;
    let node = Node::builder()
        .open_files_limit(FILES, FILES)
        .env("BITARK_WAL__SEGMENT_SIZE", "64KiB")
        .env("BITARK_SNAPSHOT__EVERY_RECORDS", 0)
        .start()
        .await;
    assert!(
        node.stderr_text().contains("server.max-connections lowered"),
        "the cap was not fitted to the open-files limit:\n{}",
        node.stderr_text()
    );
    // The writer opens its connection first and keeps it (keep-alive).
    let api = node.api();
    let batch = |i: u64| (i * 100..i * 100 + 100).collect::<Vec<u64>>();
    api.mark_batch(1, &batch(0)).await.expect("first write");

    let (mut flood, mut reset_at_once) = (Vec::with_capacity(FLOOD), 0);
    for _ in 0..FLOOD {
        match TcpStream::connect(node.addr().unwrap()).await {
            Ok(stream) => flood.push(stream),
            // Reset so fast the handshake itself reports it.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => reset_at_once += 1,
            Err(e) => panic!("connect: {e}"),
        }
    }
    let mut reads = tokio::task::JoinSet::new();
    for mut stream in flood {
        reads.spawn(async move {
            let closed = read_until_closed(&mut stream, Duration::from_secs(3)).await;
            (stream, closed)
        });
    }
    // Every connection over the cap is closed at once: answered 503 while few refusals
    // are in flight, reset beyond that (refusals take descriptors too).
    let (mut kept, mut refused, mut answered) = (Vec::new(), reset_at_once, 0);
    for (stream, closed) in reads.join_all().await {
        match closed {
            Some(raw) if raw.is_empty() => refused += 1,
            Some(raw) => {
                let (status, body) = answer(&raw);
                assert_eq!((status, body["error"].as_str()), (503, Some("too_many_connections")), "{body}");
                refused += 1;
                answered += 1;
            }
            None => kept.push(stream),
        }
    }
    assert!(refused >= FLOOD - 128, "only {refused} of {FLOOD} connections were refused; {} kept", kept.len());
    assert!(answered > 0, "no refused connection was told why");

    // With every connection the cap allows held open, the log still rotates its segments.
    let segments = metric(&api, "bitark_wal_segments ").await;
    for i in 1..400 {
        api.mark_batch(1 + i % 7, &batch(i)).await.unwrap_or_else(|e| panic!("write {i} with the cap reached: {e}"));
    }
    let rotated = metric(&api, "bitark_wal_segments ").await;
    assert!(rotated >= segments + 3.0, "the log did not rotate ({segments} -> {rotated} segments)");
    assert_eq!(api.readiness().await.unwrap(), StatusCode::OK);
    assert!(metric(&api, "bitark_http_connections_refused_total").await >= refused as f64);

    // Once the idle connections go, new clients are served again.
    drop(kept);
    wait_until(CLOSED_WITHIN, "a new connection to be served", async || {
        Api::new(&node.url()).readiness().await.is_ok_and(|s| s == StatusCode::OK)
    })
    .await;
}

#[tokio::test]
async fn the_node_raises_its_open_files_limit_to_the_hard_limit() {
    // A hard limit above this process's own cannot be set without privileges.
    let mut ours = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct it is given.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut ours) }, 0);
    let hard = ours.rlim_max.min(4096);
    if hard < 1200 {
        eprintln!("SKIPPED: the open-files hard limit ({hard}) leaves no room for this test");
        return;
    }
    // 200 would leave 72 connections; the hard limit leaves the configured 1000.
    let node = Node::builder().open_files_limit(200, hard).env("BITARK_SERVER__MAX_CONNECTIONS", 1000).start().await;
    let stderr = node.stderr_text();
    assert!(stderr.contains("raised the open-files limit"), "{stderr}");
    assert!(!stderr.contains("server.max-connections lowered"), "the raised limit leaves room for 1000:\n{stderr}");
}

#[tokio::test]
async fn idle_half_sent_and_endless_requests_are_cut_off() {
    let node = Node::builder()
        .env("BITARK_SERVER__HEADER_READ_TIMEOUT", "1s")
        .env("BITARK_SERVER__REQUEST_TIMEOUT", "1s")
        .env("BITARK_SERVER__IDLE_TIMEOUT", "2s")
        .start()
        .await;
    let addr = node.addr().unwrap();

    // Connected, never a byte.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    assert!(read_until_closed(&mut idle, CLOSED_WITHIN).await.is_some(), "an idle connection stayed open");

    // Half a request head, then nothing.
    let mut slow_head = TcpStream::connect(addr).await.unwrap();
    slow_head.write_all(b"GET /actuator/health HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    assert!(read_until_closed(&mut slow_head, CLOSED_WITHIN).await.is_some(), "a half-sent head stayed open");

    // Headers announce 100 bytes of body; 10 come.
    let mut slow_body = TcpStream::connect(addr).await.unwrap();
    slow_body
        .write_all(b"POST /api/v1/users/1/reads HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"msgIds\":")
        .await
        .unwrap();
    let raw = read_until_closed(&mut slow_body, CLOSED_WITHIN).await.expect("a half-sent body stayed open");
    let (status, body) = answer(&raw);
    assert_eq!((status, body["error"].as_str()), (408, Some("request_timeout")), "{body}");

    // A chunked body that never ends, a chunk every 100ms: bytes keep moving, so only
    // the request timeout can end it.
    let mut endless = TcpStream::connect(addr).await.unwrap();
    endless
        .write_all(b"POST /api/v1/users/1/reads HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let (mut reader, mut writer) = endless.into_split();
    let trickle = tokio::spawn(async move {
        while writer.write_all(b"1\r\n \r\n").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut raw = Vec::new();
    let read = tokio::time::timeout(CLOSED_WITHIN, reader.read_to_end(&mut raw)).await;
    assert!(read.is_ok(), "an endless body was read for ever");
    let (status, body) = answer(&raw);
    assert_eq!((status, body["error"].as_str()), (408, Some("request_timeout")), "{body}");
    trickle.abort();

    // A connection in use is not idle: requests every 500ms for longer than the idle
    // timeout go through one connection.
    let mut busy = TcpStream::connect(addr).await.unwrap();
    for _ in 0..8 {
        busy.write_all(b"GET /actuator/health/liveness HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 1024];
        let n = busy.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let api = node.api();
    assert!(metric(&api, "bitark_http_connections_expired_total{reason=\"idle\"}").await >= 1.0);
    assert!(metric(&api, "bitark_http_connections_expired_total{reason=\"header_timeout\"}").await >= 1.0);
    assert_eq!(node.api().readiness().await.unwrap(), StatusCode::OK, "the node serves on");
}

/// A half-sent request head is cut off at `server.header-read-timeout` wherever in the
/// connection's life it begins: on a fresh connection a moment after it opened (the
/// connection's timer already sleeping on the idle deadline) or after an answered request.
/// The idle timeout is far longer than the test waits, so only the header deadline can
/// close them.
#[tokio::test]
async fn slow_heads_are_cut_off_at_the_header_timeout_whenever_they_begin() {
    const CONNECTIONS: u64 = 24;
    let node = Node::builder()
        .env("BITARK_SERVER__HEADER_READ_TIMEOUT", "1s")
        .env("BITARK_SERVER__IDLE_TIMEOUT", "10min")
        .start()
        .await;
    let addr = node.addr().unwrap();
    let clients = (0..CONNECTIONS).map(|i| {
        tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            if i % 3 == 0 {
                // One whole request first: the half head begins after an answer.
                stream.write_all(b"GET /actuator/health/liveness HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
                let mut buf = [0u8; 1024];
                let n = stream.read(&mut buf).await.unwrap();
                assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
            }
            // The heads begin at different moments after the connections opened.
            tokio::time::sleep(Duration::from_millis(100 * i)).await;
            stream.write_all(b"GET /actuator/health HTTP/1.1\r\nHost: x\r\n").await.unwrap();
            read_until_closed(&mut stream, CLOSED_WITHIN).await.is_some()
        })
    });
    for (i, client) in clients.collect::<Vec<_>>().into_iter().enumerate() {
        assert!(client.await.unwrap(), "connection {i}: a half-sent head stayed open past the header timeout");
    }
    let api = node.api();
    let expired = metric(&api, "bitark_http_connections_expired_total{reason=\"header_timeout\"}").await;
    assert!(expired >= CONNECTIONS as f64, "{expired} connections cut off at the header timeout");
    assert_eq!(metric(&api, "bitark_http_connections_expired_total{reason=\"idle\"}").await, 0.0);
}

#[tokio::test]
async fn oversized_and_malformed_requests_get_json_errors() {
    let node = Node::builder().start().await;
    let addr = node.addr().unwrap();
    let ask = async |request: Vec<u8>| {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(&request).await.unwrap();
        let _ = stream.shutdown().await;
        let raw = read_until_closed(&mut stream, CLOSED_WITHIN).await.expect("an answer and a close");
        assert!(!raw.is_empty(), "no answer to {:?}...", String::from_utf8_lossy(&request[..request.len().min(60)]));
        raw
    };

    let long_target = format!("GET /api/v1/users/1/reads/1?pad={} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(10_000));
    let (status, body) = answer(&ask(long_target.into_bytes()).await);
    assert_eq!((status, body["error"].as_str()), (414, Some("uri_too_long")), "{body}");

    // Over the limit but read whole (the server's check), and far over it (the head
    // never fits the read buffer: the HTTP layer's own answer).
    for pad in [100_000, 1_000_000] {
        let huge_headers = format!("GET /actuator/health HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n", "b".repeat(pad));
        let (status, body) = answer(&ask(huge_headers.into_bytes()).await);
        assert_eq!((status, body["error"].as_str()), (431, Some("headers_too_large")), "{pad} bytes: {body}");
        assert!(body["message"].as_str().unwrap().contains("bytes"), "{body}");
    }

    let (status, body) = answer(&ask(b"NOT HTTP AT ALL\r\n\r\n".to_vec()).await);
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_request")), "{body}");

    assert_eq!(node.api().readiness().await.unwrap(), StatusCode::OK, "the node serves on");
}

#[tokio::test]
async fn requests_sent_together_on_one_connection_are_answered_in_order() {
    let node = Node::builder().start().await;
    let api = Api::new(&node.url());
    api.mark_read(5, 1).await.unwrap();
    let mut stream = TcpStream::connect(node.addr().unwrap()).await.unwrap();
    // Three requests in one write, a write in the middle of reads; then a close.
    stream
        .write_all(
            b"GET /api/v1/users/5/reads/1 HTTP/1.1\r\nHost: x\r\n\r\n\
              PUT /api/v1/users/5/reads/2 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n\
              GET /api/v1/users/5/reads/2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let raw = read_until_closed(&mut stream, CLOSED_WITHIN).await.expect("the node closed after the last");
    let text = String::from_utf8_lossy(&raw);
    let answers: Vec<&str> = text.split("HTTP/1.1 ").skip(1).collect();
    assert_eq!(answers.len(), 3, "{text}");
    assert!(answers[0].starts_with("200") && answers[0].contains("\"read\":true"), "{}", answers[0]);
    assert!(answers[1].starts_with("20"), "{}", answers[1]);
    assert!(
        answers[2].starts_with("200") && answers[2].contains("\"read\":true"),
        "the write came first: {}",
        answers[2]
    );
}
