//! The router's HTTP/1.1 client to the nodes: pooled keep-alive connections (hyper's),
//! no redirects followed by itself, every exchange bounded by `--node-timeout`.

use axum::body::Bytes;
use axum::http::{header, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// A node's answer, as the router passes it on.
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

pub(crate) struct NodeClient {
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl NodeClient {
    pub(super) fn new(timeout: Duration) -> NodeClient {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout.min(Duration::from_secs(1))));
        let client = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(256).build(connector);
        NodeClient { client, timeout }
    }

    /// `method url` with `body`, the whole answer read.
    pub(super) async fn send(
        &self,
        method: &Method,
        url: &str,
        content_type: Option<&HeaderValue>,
        body: Bytes,
    ) -> Result<Answer, SendError> {
        let uri: Uri = url.parse().map_err(|e| SendError::Connect(format!("`{url}` is no URL: {e}")))?;
        let mut request = Request::builder().method(method.clone()).uri(uri);
        if let Some(ct) = content_type {
            request = request.header(header::CONTENT_TYPE, ct.clone());
        }
        let request = request.body(Full::new(body)).map_err(|e| SendError::Connect(e.to_string()))?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                if e.is_connect() {
                    SendError::Connect(e.to_string())
                } else {
                    SendError::Failed(e.to_string())
                }
            })?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await.map_err(|e| SendError::Failed(e.to_string()))?.to_bytes();
            Ok(Answer {
                status: parts.status,
                content_type: parts.headers.get(header::CONTENT_TYPE).cloned(),
                location: parts.headers.get(header::LOCATION).cloned(),
                body,
            })
        };
        tokio::time::timeout(self.timeout, exchange).await.unwrap_or(Err(SendError::Timeout(self.timeout)))
    }
}
