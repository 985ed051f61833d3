//! The HTTP/1.1 server loop: what a connection may hold and for how long.
//!
//! axum's own `serve` keeps any connection open for ever and takes as many as the
//! process can open, so a client that opens connections and sends nothing (or sends a
//! header a byte a minute) can use up every file descriptor, and with them the log's
//! next segment. This loop bounds each connection:
//!
//! - **How many**: at most `server.max-connections` (lowered to what the open-files limit
//!   leaves after [`FD_RESERVE`] for the node's own files). One more is answered
//!   `503 too_many_connections` and closed at once.
//! - **How long**, by what the connection is doing ([`Phase`]), watched by one timer per
//!   connection that sleeps until the current deadline, or for half a header timeout
//!   if that is sooner, and then looks again: a request head that begins while the timer
//!   sleeps on a later deadline (the idle one) is seen within half its own timeout and
//!   cut off at it. Waking the timer on every phase change instead would cost each
//!   request on a kept-alive connection a task wake-up:
//!   - between requests, no byte moving either way: `server.idle-timeout`;
//!   - from the first byte of a request to the end of its headers:
//!     `server.header-read-timeout`;
//!   - from the end of the headers to the end of the body: `server.request-timeout`,
//!     enforced on the body itself, so the handler answers `408 request_timeout`.
//!
//!   An expired connection is closed.
//! - **How big**: request heads over [`MAX_HEAD_BYTES`] are refused with 431, targets
//!   over [`MAX_URI_LEN`] with 414.
//!
//! hyper answers a request it cannot parse (400, 414, 431) by itself, with an empty body.
//! [`TrackedIo`] notices such an answer (it is written while a request head is still
//! being read, before the service saw any request) and replaces it with the same status
//! and the JSON error body every other error has.

use crate::http::body::{MAX_HEAD_BYTES, MAX_URI_LEN};
use crate::http::error::ApiError;
use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::Response;
use bitark_infra::metrics::Connections;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// File descriptors kept back from connections for the node's own use: log segments and
/// their directory, snapshots being written or read, replication calls, the listener,
/// and the connections being refused ([`REFUSING`]).
pub const FD_RESERVE: usize = 128;
/// Connections over the cap answered 503 at once; past that many, the next ones are
/// reset without an answer, so refusals cannot take descriptors without bound either.
const REFUSING: usize = FD_RESERVE / 4;
/// How long a refused connection may take to read its 503 and close.
const REFUSE_LINGER: Duration = Duration::from_millis(250);

/// Limits of one server.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
}

impl Limits {
    /// The limits `config` sets, with `server.max-connections` lowered to what the
    /// open-files limit leaves for the process's own files when each connection may
    /// take `descriptors_per_connection` (a router's takes one to a node as well), so
    /// that clients can never take the descriptors the log needs.
    pub fn of(config: &crate::config::ServerConfig, descriptors_per_connection: u64) -> Limits {
        let configured = config.max_connections;
        let max_connections = match bitark_infra::process::open_files_limit() {
            Ok((soft, _)) => {
                let cap = effective_max_connections(configured, soft / descriptors_per_connection.max(1));
                if cap < configured {
                    tracing::warn!(
                        configured,
                        cap,
                        open_files_limit = soft,
                        reserve = FD_RESERVE,
                        "server.max-connections lowered to fit the open-files limit; raise `ulimit -n` to allow more"
                    );
                }
                cap
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the open-files limit; using server.max-connections as it is");
                configured
            }
        };
        Limits {
            max_connections,
            header_read_timeout: config.header_read_timeout,
            idle_timeout: config.idle_timeout,
            request_timeout: config.request_timeout,
        }
    }
}

/// The connection cap in force: `configured`, lowered to what an open-files limit of
/// `files` leaves after [`FD_RESERVE`].
pub fn effective_max_connections(configured: usize, files: u64) -> usize {
    let room = usize::try_from(files).unwrap_or(usize::MAX).saturating_sub(FD_RESERVE).max(1);
    configured.min(room)
}

/// Serves `service` on `listener` until `shutdown` completes, then stops accepting, lets
/// open requests finish for up to `drain`, and returns.
///
/// `service` answers one request; it is cloned into every connection. BitArk serves its
/// [`crate::http::Api`]; the loop knows nothing of what it serves but the answers hyper
/// gives by itself, which it writes as the JSON errors of [`ApiError`].
pub async fn serve<S, F>(
    listener: TcpListener,
    service: S,
    limits: Limits,
    metrics: Connections,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) where
    S: Fn(Request) -> F + Clone + Send + 'static,
    F: Future<Output = Response> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let refusing = Arc::new(Semaphore::new(REFUSING));
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // Header and idle deadlines are this module's, by phase.
        .header_read_timeout(None)
        .max_buf_size(MAX_HEAD_BYTES)
        // A client may send its request and shut down its side while it waits for the
        // answer; without this, hyper would drop the request unanswered.
        .half_close(true)
        .keep_alive(true);
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors or memory for a moment: accept again shortly.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics.refused.inc();
            match refusing.clone().try_acquire_owned() {
                Ok(refusal) => {
                    let max = limits.max_connections;
                    tokio::spawn(async move {
                        refuse(stream, max).await;
                        drop(refusal);
                    });
                }
                // Too many refusals in flight already: reset this one now.
                Err(_) => drop(stream.set_zero_linger()),
            }
            continue;
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let tracker = Arc::new(Tracker::new());
        let io = TokioIo::new(TrackedIo::new(stream, tracker.clone()));
        let answer = hyper::service::service_fn({
            let (service, tracker) = (service.clone(), tracker.clone());
            move |request: hyper::Request<Incoming>| {
                tracker.enter(Phase::Busy);
                let answering = service(request.map(Body::new));
                let tracker = tracker.clone();
                async move {
                    let response = answering.await;
                    tracker.enter(Phase::Responding);
                    Ok::<_, Infallible>(response)
                }
            }
        });
        let connection = graceful.watch(builder.serve_connection(io, answer));
        let (metrics, limits) = (metrics.clone(), limits.clone());
        tokio::spawn(async move {
            metrics.open.inc();
            tokio::select! {
                result = connection => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                }
                reason = tracker.expired(&limits) => {
                    metrics.expired.with_label_values(&[reason]).inc();
                    tracing::debug!(reason, "connection closed");
                }
            }
            metrics.open.dec();
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
        tracing::warn!("in-flight requests did not finish within server.shutdown-timeout");
    }
}

/// Answers a connection over the cap with a 503 and closes it.
async fn refuse(mut stream: TcpStream, max: usize) {
    let body = ApiError::TooManyConnections(max).body_json();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    // Answer, then read what the client sends until it closes (see `TrackedIo`).
    let _ = tokio::time::timeout(REFUSE_LINGER, async {
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
        let mut scratch = [0u8; 4096];
        while matches!(tokio::io::AsyncReadExt::read(&mut stream, &mut scratch).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// What a connection is doing, for its deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Phase {
    /// Between requests (or before the first): nothing read of the next one.
    Idle = 0,
    /// Reading a request head.
    Head = 1,
    /// A request is being handled; its body is bounded by the request timeout.
    Busy = 2,
    /// The answer is being written; then the connection is idle.
    Responding = 3,
}

/// One connection's phase and clock, shared by its I/O, its service and its timer.
/// Atomics: written on every read, write and request, read by the timer.
struct Tracker {
    /// [`coarse_millis`] when the connection was accepted.
    start: u64,
    phase: AtomicU8,
    /// Milliseconds since `start` when the phase began.
    since: AtomicU64,
    /// Milliseconds since `start` of the last byte read or written.
    active: AtomicU64,
}

impl Tracker {
    fn new() -> Tracker {
        Tracker {
            start: coarse_millis(),
            phase: AtomicU8::new(Phase::Idle as u8),
            since: AtomicU64::new(0),
            active: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        coarse_millis().saturating_sub(self.start)
    }

    fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            1 => Phase::Head,
            2 => Phase::Busy,
            3 => Phase::Responding,
            _ => Phase::Idle,
        }
    }

    fn enter(&self, phase: Phase) {
        let now = self.now();
        self.since.store(now, Ordering::Release);
        self.active.store(now, Ordering::Release);
        self.phase.store(phase as u8, Ordering::Release);
    }

    fn on_read(&self) {
        if matches!(self.phase(), Phase::Idle | Phase::Responding) {
            self.enter(Phase::Head);
        } else {
            self.active.store(self.now(), Ordering::Release);
        }
    }

    fn on_write(&self) {
        self.active.store(self.now(), Ordering::Release);
    }

    /// Completes when the connection has overstayed its phase; answers why.
    async fn expired(&self, limits: &Limits) -> &'static str {
        loop {
            let (deadline, reason) = match self.phase() {
                Phase::Idle | Phase::Responding => {
                    (self.active.load(Ordering::Acquire) + limits.idle_timeout.as_millis() as u64, "idle")
                }
                Phase::Head => (
                    self.since.load(Ordering::Acquire) + limits.header_read_timeout.as_millis() as u64,
                    "header_timeout",
                ),
                // The request timeout bounds the body; the handler's own work is bounded
                // where it waits (the log, minLsn).
                Phase::Busy => (self.now() + limits.request_timeout.as_millis() as u64, ""),
            };
            let now = self.now();
            if now >= deadline && !reason.is_empty() {
                return reason;
            }
            let look_again = (limits.header_read_timeout.as_millis() as u64 / 2).max(1);
            let wait = Duration::from_millis(deadline.saturating_sub(now).clamp(1, look_again));
            tokio::time::sleep(wait).await;
        }
    }
}

/// Milliseconds on the monotonic clock, read cheaply: every read and write of a
/// connection notes the time, and its deadlines are seconds long, so the coarse clock's
/// few milliseconds of resolution are plenty and it costs a fraction of a precise read.
fn coarse_millis() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    now.tv_sec as u64 * 1000 + now.tv_nsec as u64 / 1_000_000
}

/// How long a closing connection keeps reading what the client still sends.
const LINGER: Duration = Duration::from_secs(2);

/// A TCP stream that tells its [`Tracker`] about every byte, and turns hyper's own
/// bodiless error answers into JSON ones.
///
/// It also closes gracefully ("lingering close"): closing a socket that still has
/// unread input makes the kernel send a reset, and a reset can make the client drop our
/// last answer (a 408, a 431) before reading it. So a shutdown sends FIN, then reads and
/// discards what the client still sends until it closes too, for at most [`LINGER`].
struct TrackedIo {
    inner: TcpStream,
    tracker: Arc<Tracker>,
    /// A replacement answer still to be written.
    pending: Vec<u8>,
    /// After a replaced answer: what hyper writes is discarded.
    replaced: bool,
    /// Set once FIN is sent: the end of the lingering close.
    linger: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl TrackedIo {
    fn new(inner: TcpStream, tracker: Arc<Tracker>) -> TrackedIo {
        TrackedIo { inner, tracker, pending: Vec::new(), replaced: false, linger: None }
    }

    /// Writes out `pending`; `Ready(Ok)` once it is all gone.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

/// The JSON answer for a status hyper produced by itself.
fn json_answer(status: u16) -> Vec<u8> {
    let (status, error) = match status {
        414 => (StatusCode::URI_TOO_LONG, ApiError::UriTooLong(MAX_URI_LEN + 1)),
        431 => (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::HeadersTooLarge(format!("the request head exceeds {MAX_HEAD_BYTES} bytes")),
        ),
        _ => (StatusCode::BAD_REQUEST, ApiError::bad_request("invalid_request", "the request is not valid HTTP/1.1")),
    };
    let body = error.body_json();
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len(),
        body
    )
    .into_bytes()
}

/// The status of an HTTP/1.1 answer head at the start of `buf`.
fn answer_status(buf: &[u8]) -> Option<u16> {
    let rest = buf.strip_prefix(b"HTTP/1.1 ")?;
    std::str::from_utf8(rest.get(..3)?).ok()?.parse().ok()
}

impl AsyncRead for TrackedIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.tracker.on_read();
        }
        result
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.replaced {
            return Poll::Ready(Ok(buf.len()));
        }
        if this.tracker.phase() == Phase::Head {
            // An answer while a head is being read, before any request reached the
            // service: hyper's own error answer.
            if let Some(status) = answer_status(buf).filter(|s| (400..500).contains(s)) {
                this.pending = json_answer(status);
                this.replaced = true;
                this.tracker.on_write();
                let _ = this.poll_pending(cx)?;
                return Poll::Ready(Ok(buf.len()));
            }
        }
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.tracker.on_write();
        }
        result
    }

    /// Vectored, so that hyper queues large bodies instead of copying them into its
    /// own buffer first (a full-sync chunk is megabytes).
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.replaced || this.tracker.phase() == Phase::Head {
            // Rare paths that look at what is written: one buffer at a time.
            let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &b[..]);
            return Pin::new(this).poll_write(cx, first);
        }
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.tracker.on_write();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.linger.is_none() {
            std::task::ready!(this.poll_pending(cx))?;
            std::task::ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
            this.linger = Some(Box::pin(tokio::time::sleep(LINGER)));
        }
        let mut scratch = [0u8; 4096];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => continue,
                Poll::Ready(_) => return Poll::Ready(Ok(())),
                Poll::Pending => {
                    let linger = this.linger.as_mut().expect("set above");
                    return linger.as_mut().poll(cx).map(Ok);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_leaves_room_for_the_nodes_own_files() {
        assert_eq!(effective_max_connections(4096, 1024), 1024 - FD_RESERVE);
        assert_eq!(effective_max_connections(100, 1_000_000), 100);
        assert_eq!(effective_max_connections(100, 50), 1);
    }

    #[test]
    fn answer_heads_are_recognised_by_their_status() {
        assert_eq!(answer_status(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), Some(431));
        assert_eq!(answer_status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(answer_status(b"{\"read\":true}"), None);
    }

    #[test]
    fn hyper_errors_become_json_answers() {
        let text = String::from_utf8(json_answer(431)).unwrap();
        assert!(text.starts_with("HTTP/1.1 431 "), "{text}");
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        let value: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(value["error"], "headers_too_large");
        assert!(text.contains(&format!("content-length: {}\r\n", body.len())));
    }
}
