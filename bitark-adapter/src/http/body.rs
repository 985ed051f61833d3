//! What a request may send, and for how long: the limits on its head and body, and the
//! body that fails once `server.request-timeout` has passed.
//!
//! The server loop ([`crate::server`]) reads heads up to these limits; the router refuses
//! what passes hyper's approximate ones ([`super::Api`]); the body extractors
//! ([`super::extract`]) read bodies through [`DeadlineBody`] up to `body_limit`.

use axum::body::Body;
use axum::extract::Request;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// Largest request head (request line and headers) read, in bytes.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Longest request target (path and query) read, in bytes.
pub const MAX_URI_LEN: usize = 8 * 1024;

/// Largest replication batch body accepted.
pub(crate) const MAX_APPEND_BODY: usize = 64 << 20;

/// The largest API request body: room for `limits.max-batch` ids written as 20-digit
/// strings, plus JSON punctuation.
pub(crate) fn api_body_limit(max_batch: usize) -> usize {
    max_batch.saturating_mul(24).saturating_add(4096)
}

/// The largest body a request to `path` may send: `/internal/*` takes replication
/// batches; the API's bound follows `limits.max-batch` as it is now (reloadable).
pub(crate) fn body_limit(path: &str, max_batch: usize) -> usize {
    if path.starts_with("/internal/") {
        MAX_APPEND_BODY
    } else {
        api_body_limit(max_batch)
    }
}

/// A request body that fails once `server.request-timeout` has passed since the
/// request's headers were read. Its timer is made on the first read of the body, so a
/// request whose body is never read (every GET) costs no timer.
pub struct DeadlineBody {
    inner: Body,
    deadline: tokio::time::Instant,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    timeout: Duration,
}

/// The error a [`DeadlineBody`] yields when its time is up.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?} (server.request-timeout)")]
pub struct BodyTimeout(pub Duration);

impl DeadlineBody {
    pub fn wrap(request: Request, timeout: Duration) -> Request {
        let deadline = tokio::time::Instant::now() + timeout;
        request.map(|inner| Body::new(DeadlineBody { inner, deadline, timer: None, timeout }))
    }
}

impl http_body::Body for DeadlineBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        let deadline = self.deadline;
        let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(BodyTimeout(self.timeout))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
