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

use axum::body::Bytes;
use axum::http::{HeaderValue, Method, StatusCode};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Idle connections kept per node.
const MAX_IDLE_PER_NODE: usize = 256;
/// A connection idle longer is closed rather than used: well under a node's
/// `server.idle-timeout` (60 s by default), so the node does not close it first.
const MAX_IDLE_FOR: Duration = Duration::from_secs(20);
/// Response headers read (a node sends a handful).
const MAX_HEADERS: usize = 32;
/// The largest answer taken from a node.
const MAX_ANSWER: usize = 64 << 20;

/// A node's answer, as the router passes it on.
#[derive(Debug)]
pub(super) struct Answer {
    pub status: StatusCode,
    pub content_type: Option<HeaderValue>,
    pub location: Option<HeaderValue>,
    pub body: Bytes,
}

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
}

/// Why an answer could not be read.
#[derive(Debug, thiserror::Error)]
pub(super) enum AnswerError {
    #[error("a malformed answer: {0}")]
    Malformed(httparse::Error),
    #[error("a malformed status {0}")]
    Status(u16),
    #[error("a malformed content-length `{0}`")]
    Length(String),
    #[error("a malformed chunk size")]
    ChunkSize,
    #[error("the answer is over {MAX_ANSWER} bytes")]
    TooLarge,
    #[error("the connection closed mid-answer")]
    Truncated,
    #[error("reading the answer: {0}")]
    Io(std::io::Error),
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
        NodeClient { idle: Mutex::new(HashMap::new()), timeout, connect_timeout: timeout.min(Duration::from_secs(1)) }
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
fn authority(base: &str) -> Result<&str, SendError> {
    let rest = base
        .strip_prefix("http://")
        .ok_or_else(|| SendError::Connect(format!("`{base}` is not an http:// URL; the router speaks plain HTTP")))?;
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() {
        return Err(SendError::Connect(format!("`{base}` names no host")));
    }
    Ok(authority)
}

fn encode_request(
    method: &Method,
    authority: &str,
    path: &str,
    content_type: Option<&HeaderValue>,
    body: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(96 + path.len() + body.len());
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(authority.as_bytes());
    if let Some(ct) = content_type {
        out.extend_from_slice(b"\r\ncontent-type: ");
        out.extend_from_slice(ct.as_bytes());
    }
    if !body.is_empty() || !matches!(*method, Method::GET | Method::HEAD) {
        out.extend_from_slice(b"\r\ncontent-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
    out
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
            Parsed::Done(answer, keep) => return Ok(((answer, keep && !closed), stream)),
            Parsed::More if closed && buf.is_empty() => return Err(Broken::Unanswered),
            Parsed::More if closed => return Err(Broken::Failed(AnswerError::Truncated)),
            Parsed::More => {}
        }
    }
}

/// What the bytes read so far hold.
#[derive(Debug)]
enum Parsed {
    More,
    /// The answer, and whether the connection may carry another request.
    Done(Answer, bool),
}

/// Parses an answer from `buf`; `closed` when the node closed the connection after it,
/// `head` for an answer to HEAD (no body whatever its length says).
fn parse_answer(buf: &[u8], closed: bool, head: bool) -> Result<Parsed, AnswerError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(buf).map_err(AnswerError::Malformed)? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(Parsed::More),
    };
    let code = response.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| AnswerError::Status(code))?;
    let mut keep = response.version == Some(1);
    let (mut content_type, mut location, mut length, mut chunked) = (None, None, None, false);
    for h in response.headers.iter() {
        let value = || HeaderValue::from_bytes(h.value).ok();
        if h.name.eq_ignore_ascii_case("content-type") {
            content_type = value();
        } else if h.name.eq_ignore_ascii_case("location") {
            location = value();
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let text = std::str::from_utf8(h.value).unwrap_or("").trim();
            length = Some(text.parse::<usize>().map_err(|_| AnswerError::Length(text.to_string()))?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = h.value.eq_ignore_ascii_case(b"chunked");
        } else if h.name.eq_ignore_ascii_case("connection") {
            keep &= !h.value.eq_ignore_ascii_case(b"close");
        }
    }
    let rest = &buf[head_len..];
    let body = if head || code == 204 || code == 304 || (100..200).contains(&code) {
        Bytes::new()
    } else if chunked {
        match dechunk(rest)? {
            Some(body) => Bytes::from(body),
            None => return Ok(Parsed::More),
        }
    } else if let Some(length) = length {
        if rest.len() < length {
            return Ok(Parsed::More);
        }
        Bytes::copy_from_slice(&rest[..length])
    } else if closed {
        keep = false;
        Bytes::copy_from_slice(rest)
    } else {
        return Ok(Parsed::More);
    };
    Ok(Parsed::Done(Answer { status, content_type, location, body }, keep))
}

/// The body of a whole chunked transfer, or `None` while it is incomplete.
fn dechunk(mut rest: &[u8]) -> Result<Option<Vec<u8>>, AnswerError> {
    let mut body = Vec::new();
    loop {
        let (skip, size) = match httparse::parse_chunk_size(rest).map_err(|_| AnswerError::ChunkSize)? {
            httparse::Status::Complete(found) => found,
            httparse::Status::Partial => return Ok(None),
        };
        let size = usize::try_from(size).map_err(|_| AnswerError::TooLarge)?;
        rest = &rest[skip..];
        if size == 0 {
            // No trailers from a node: the last chunk ends with an empty line.
            return Ok(rest.starts_with(b"\r\n").then_some(body));
        }
        if rest.len() < size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    fn done(parsed: Parsed) -> (Answer, bool) {
        match parsed {
            Parsed::Done(answer, keep) => (answer, keep),
            Parsed::More => panic!("incomplete"),
        }
    }

    #[test]
    fn an_answer_is_read_by_its_length_whatever_the_reads_cut() {
        let whole = b"HTTP/1.1 409 Conflict\r\ncontent-type: application/json\r\ncontent-length: 7\r\n\r\n{\"a\":1}";
        for cut in 0..whole.len() {
            assert!(matches!(parse_answer(&whole[..cut], false, false), Ok(Parsed::More)), "cut at {cut}");
        }
        let (answer, keep) = done(parse_answer(whole, false, false).unwrap());
        assert_eq!(answer.status, StatusCode::CONFLICT);
        assert_eq!(answer.content_type.unwrap(), "application/json");
        assert_eq!(&answer.body[..], b"{\"a\":1}");
        assert!(keep);
    }

    #[test]
    fn chunked_answers_close_and_head_are_understood() {
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert!(matches!(parse_answer(&chunked[..chunked.len() - 2], false, false), Ok(Parsed::More)));
        assert_eq!(&done(parse_answer(chunked, false, false).unwrap()).0.body[..], b"abcde");
        let close = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok";
        assert!(!done(parse_answer(close, false, false).unwrap()).1, "connection: close is not reused");
        let no_length = b"HTTP/1.1 200 OK\r\n\r\nto the end";
        assert!(matches!(parse_answer(no_length, false, false), Ok(Parsed::More)));
        let (answer, keep) = done(parse_answer(no_length, true, false).unwrap());
        assert_eq!((&answer.body[..], keep), (&b"to the end"[..], false));
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 99\r\n\r\n";
        assert!(done(parse_answer(head, false, true).unwrap()).0.body.is_empty());
        assert!(parse_answer(b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n", false, false).is_err());
        assert!(parse_answer(b"garbage\r\n\r\n", false, false).is_err());
    }

    #[test]
    fn requests_name_their_length_and_type() {
        let json = HeaderValue::from_static("application/json");
        let put = encode_request(&Method::PUT, "n:1", "/a?token=x", Some(&json), b"{}");
        assert_eq!(
            put,
            b"PUT /a?token=x HTTP/1.1\r\nhost: n:1\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
        );
        assert_eq!(encode_request(&Method::GET, "n:1", "/b", None, b""), b"GET /b HTTP/1.1\r\nhost: n:1\r\n\r\n");
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
