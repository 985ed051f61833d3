//! The router's HTTP/1.1 client to the nodes: kept-alive connections pooled per node,
//! each exchange written and read by the request's own task (no connection task, no
//! hand-off between threads on the way), no redirects followed by itself, every
//! exchange bounded by `--node-timeout`.
//!
//! A pooled connection the node has closed is noticed before it is used (it reads as
//! closed) and dropped; one that the node closes while the request is on its way
//! answers nothing. Such a request was never read whole by the node when writing it
//! failed, and is then sent again on a new connection; a request that was written and
//! got no byte back is sent again only when it is a read (`resend_unanswered`), since a
//! write may have been applied.
//!
//! Reads a master answers at once (`get`) go pipelined through `pipe.rs` when the client
//! has lanes, and the ordinary way when a lane could not answer them.

use axum::body::Bytes;
use axum::http::{HeaderValue, Method};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::pipe::{Lost, PipeCounters, Pipes};
use super::wire::{encode_request, parse_answer, Answer, AnswerError, Parsed, MAX_ANSWER};

/// Idle connections kept per node.
const MAX_IDLE_PER_NODE: usize = 256;
/// A connection idle longer is closed rather than used: well under a node's
/// `server.idle-timeout` (60 s by default), so the node does not close it first.
const MAX_IDLE_FOR: Duration = Duration::from_secs(20);

/// Why an exchange with a node failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum SendError {
    /// The connection was refused or could not be made: the request reached no node.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// Sent, but no whole answer within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Sent, then the exchange broke.
    #[error("{0}")]
    Failed(String),
}

impl SendError {
    /// Whether the request can have reached a node.
    pub(super) fn delivered(&self) -> bool {
        !matches!(self, SendError::Connect(_))
    }
}

struct Idle {
    stream: TcpStream,
    since: Instant,
}

pub(crate) struct NodeClient {
    idle: Mutex<HashMap<String, Vec<Idle>>>,
    timeout: Duration,
    connect_timeout: Duration,
    pipes: Option<Pipes>,
}

/// How one exchange on one connection ended, when it gave no answer.
enum Broken {
    /// The request was not written whole: the node cannot have acted on it.
    Unsent(std::io::Error),
    /// Written, and the connection closed before a byte of an answer.
    Unanswered,
    /// Written, and the answer broke off or could not be read.
    Failed(AnswerError),
}

impl NodeClient {
    pub(super) fn new(timeout: Duration) -> NodeClient {
        NodeClient {
            idle: Mutex::new(HashMap::new()),
            timeout,
            connect_timeout: timeout.min(Duration::from_secs(1)),
            pipes: None,
        }
    }

    /// The same client with `per_node` lanes to each node for plain reads (`get`).
    pub(super) fn pipelined(self, per_node: usize, counters: PipeCounters) -> NodeClient {
        let pipes = Pipes::new(per_node, self.timeout, self.connect_timeout, counters);
        NodeClient { pipes: Some(pipes), ..self }
    }

    /// A GET of `path` that the node answers at once (no wait inside the node): through
    /// a lane when the client has them, else (or when the lane could not answer it)
    /// the ordinary way.
    pub(super) async fn get(&self, base: &str, path: &str) -> Result<Answer, SendError> {
        if let Some(pipes) = &self.pipes {
            let authority = authority(base)?;
            match tokio::time::timeout(self.timeout, pipes.get(authority, path)).await {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(Lost)) => {}
                Err(_) => return Err(SendError::Timeout(self.timeout)),
            }
        }
        self.send(&Method::GET, base, path, None, &Bytes::new(), true).await
    }

    /// `method` of `path` (with its query) on the node at `base` (`http://host:port`),
    /// with `body`, the whole answer read.
    pub(super) async fn send(
        &self,
        method: &Method,
        base: &str,
        path: &str,
        content_type: Option<&HeaderValue>,
        body: &Bytes,
        resend_unanswered: bool,
    ) -> Result<Answer, SendError> {
        let authority = authority(base)?;
        let request = encode_request(method, authority, path, content_type, body);
        let exchange = async {
            // A pooled connection first; then, if it turns out closed, one new connection.
            if let Some(stream) = self.checkout(authority) {
                match exchange(stream, &request, method).await {
                    Ok((answer, stream)) => return Ok(self.checkin(authority, answer, stream)),
                    Err(Broken::Unsent(_)) => {}
                    Err(Broken::Unanswered) if resend_unanswered => {}
                    Err(Broken::Unanswered) => {
                        return Err(SendError::Failed("the connection closed before an answer".into()))
                    }
                    Err(Broken::Failed(e)) => return Err(SendError::Failed(e.to_string())),
                }
            }
            let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(authority))
                .await
                .map_err(|_| SendError::Connect(format!("no connection within {:?}", self.connect_timeout)))?
                .map_err(|e| SendError::Connect(e.to_string()))?;
            let _ = stream.set_nodelay(true);
            match exchange(stream, &request, method).await {
                Ok((answer, stream)) => Ok(self.checkin(authority, answer, stream)),
                Err(Broken::Unsent(e)) => Err(SendError::Connect(format!("the request could not be written: {e}"))),
                Err(Broken::Unanswered) => Err(SendError::Failed("the connection closed before an answer".into())),
                Err(Broken::Failed(e)) => Err(SendError::Failed(e.to_string())),
            }
        };
        tokio::time::timeout(self.timeout, exchange).await.unwrap_or(Err(SendError::Timeout(self.timeout)))
    }

    /// An idle connection to `authority` that the node has not closed, if any.
    fn checkout(&self, authority: &str) -> Option<TcpStream> {
        loop {
            let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).get_mut(authority)?.pop()?;
            if idle.since.elapsed() < MAX_IDLE_FOR && open(&idle.stream) {
                return Some(idle.stream);
            }
        }
    }

    fn checkin(&self, authority: &str, (answer, keep): (Answer, bool), stream: TcpStream) -> Answer {
        if keep {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            let pool = idle.entry(authority.to_string()).or_default();
            if pool.len() < MAX_IDLE_PER_NODE {
                pool.push(Idle { stream, since: Instant::now() });
            }
        }
        answer
    }
}

/// Whether an idle connection is still open: nothing to read and no end of stream.
/// (A peek at the socket itself: tokio's readiness may not have seen the close yet.)
fn open(stream: &TcpStream) -> bool {
    let mut byte = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    matches!(socket2::SockRef::from(stream).peek(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// `host:port` of a node's base URL.
pub(super) fn authority(base: &str) -> Result<&str, SendError> {
    let rest = base
        .strip_prefix("http://")
        .ok_or_else(|| SendError::Connect(format!("`{base}` is not an http:// URL; the router speaks plain HTTP")))?;
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() {
        return Err(SendError::Connect(format!("`{base}` names no host")));
    }
    Ok(authority)
}

/// Writes `request` on `stream` and reads the answer: the answer, whether the
/// connection may be used again, and the connection.
async fn exchange(
    mut stream: TcpStream,
    request: &[u8],
    method: &Method,
) -> Result<((Answer, bool), TcpStream), Broken> {
    stream.write_all(request).await.map_err(Broken::Unsent)?;
    let mut buf = Vec::with_capacity(4096);
    loop {
        if buf.len() == buf.capacity() {
            if buf.len() >= MAX_ANSWER {
                return Err(Broken::Failed(AnswerError::TooLarge));
            }
            buf.reserve(buf.len());
        }
        let read = match stream.read_buf(&mut buf).await {
            Ok(read) => read,
            // Reset before a byte of an answer: as if closed.
            Err(e) if buf.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => 0,
            Err(e) => return Err(Broken::Failed(AnswerError::Io(e))),
        };
        let closed = read == 0;
        match parse_answer(&buf, closed, *method == Method::HEAD).map_err(Broken::Failed)? {
            Parsed::Done(answer, keep, _) => return Ok(((answer, keep && !closed), stream)),
            Parsed::More if closed && buf.is_empty() => return Err(Broken::Unanswered),
            Parsed::More if closed => return Err(Broken::Failed(AnswerError::Truncated)),
            Parsed::More => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn only_plain_http_urls_name_a_node() {
        assert!(authority("https://n:1").is_err());
        assert_eq!(authority("http://n:1/").unwrap(), "n:1");
    }

    /// A node that answers each connection's first request, then closes it after
    /// `answers` requests on it, and counts the requests it read.
    async fn node(answers: usize) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = seen.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let seen = counted.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    for _ in 0..answers {
                        if stream.read(&mut buf).await.unwrap_or(0) == 0 {
                            return;
                        }
                        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
                    }
                    // Reads one more request and closes without answering it.
                    if stream.read(&mut buf).await.unwrap_or(0) > 0 {
                        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                });
            }
        });
        (base, seen)
    }

    #[tokio::test]
    async fn a_kept_connection_is_used_again() {
        let (base, seen) = node(3).await;
        let client = NodeClient::new(Duration::from_secs(5));
        for _ in 0..3 {
            let answer = client.send(&Method::GET, &base, "/x", None, &Bytes::new(), false).await.unwrap();
            assert_eq!(&answer.body[..], b"ok");
        }
        assert_eq!(client.idle.lock().unwrap().values().map(Vec::len).sum::<usize>(), 1, "one connection");
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_read_that_a_closing_connection_dropped_is_sent_again_and_a_write_is_not() {
        let (base, seen) = node(1).await;
        let client = NodeClient::new(Duration::from_secs(5));
        let body = Bytes::new();
        client.send(&Method::GET, &base, "/x", None, &body, true).await.unwrap();
        // The pooled connection is open; the node reads the next request and closes it.
        let again = client.send(&Method::GET, &base, "/x", None, &body, true).await.unwrap();
        assert_eq!(&again.body[..], b"ok", "the read went again on a new connection");
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 3);
        let lost = client.send(&Method::PUT, &base, "/x", None, &body, false).await.unwrap_err();
        assert!(matches!(lost, SendError::Failed(_)) && lost.delivered(), "{lost:?}");
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 4, "the write was sent once");
    }

    #[tokio::test]
    async fn a_connection_the_node_closed_while_idle_is_not_used() {
        let (base, seen) = node(1).await;
        let client = NodeClient::new(Duration::from_secs(5));
        client.send(&Method::GET, &base, "/x", None, &Bytes::new(), false).await.unwrap();
        // Make the node close the pooled connection now: hand it a request of our own.
        let mut pooled = client.idle.lock().unwrap().values_mut().next().unwrap().pop().unwrap();
        pooled.stream.write_all(b"GET /x HTTP/1.1\r\n\r\n").await.unwrap();
        let mut rest = Vec::new();
        pooled.stream.read_to_end(&mut rest).await.unwrap();
        client.idle.lock().unwrap().values_mut().next().unwrap().push(pooled);
        let answer = client.send(&Method::PUT, &base, "/x", None, &Bytes::new(), false).await.unwrap();
        assert_eq!(&answer.body[..], b"ok", "the closed connection was left for a new one");
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 3);
    }
}
