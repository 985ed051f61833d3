//! The HTTP layer: the merged router and request metrics, over the application context
//! ([`crate::app::AppState`]).
//!
//! Each resource module owns its routes, request/response types and handlers and
//! exposes one `router()` (a `RouteTable`); [`router`] merges them with the fallbacks
//! for unknown routes and methods, inside [`Api`], which times, counts and names every
//! request. Every error is an [`ApiError`], mapped to its status in [`error`]; request
//! size limits and the body deadline are in [`body`].

pub mod actuator;
pub mod admin;
pub mod auth;
pub mod backup;
pub mod body;
pub mod error;
pub mod extract;
pub mod moves;
pub mod reads;
pub mod receipts;
pub mod refusals;
pub mod replication;
pub mod routes;
pub mod shard_source;

use crate::app::AppState;
use crate::openapi;
use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bitark_common::Command;
use body::{MAX_HEAD_BYTES, MAX_URI_LEN};
use error::ApiError;
use routes::RouteTable;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;
use tower::Service;
use tracing::Instrument;

/// Which routes a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routes {
    /// Every route (one listener).
    All,
    /// The API, `/openapi.json` and `/internal/*`: the public port when
    /// `management.server.port` is set.
    Api,
    /// `/actuator/*` and `/admin/*`: the management port.
    Management,
}

/// Every route of the service.
pub fn router(state: AppState) -> Api {
    router_of(state, Routes::All)
}

/// The routes `which` names.
pub fn router_of(state: AppState, which: Routes) -> Api {
    let mut table = RouteTable::new();
    if which != Routes::Management {
        table = table
            .merge(reads::router())
            .merge(receipts::router())
            .merge(replication::internal_router(state.clone()))
            .merge(shard_source::router(state.clone()))
            .route("/openapi.json", get(openapi_document));
    }
    if which != Routes::Api {
        table =
            table.merge(actuator::router()).merge(admin::router(state.clone())).merge(replication::actuator_router());
    }
    let (router, route_templates) = table.into_parts();
    let mut templates = matchit::Router::new();
    for (index, template) in route_templates.iter().enumerate() {
        templates.insert(*template, index).expect("the router took the same template");
    }
    let router = router.fallback(not_found).method_not_allowed_fallback(method_not_allowed).with_state(state.clone());
    let message_route = route_templates.iter().position(|t| *t == reads::MESSAGE_ROUTE);
    let latencies = Latencies::new(state.metrics().http_requests.clone(), route_templates);
    Api { router, templates: Arc::new(templates), latencies: Arc::new(latencies), message_route, state }
}

/// The latency histograms of answered requests, by route, method and status.
///
/// Finding a labelled series hashes its three label values and takes the family's lock,
/// which every runtime thread shares; the series of a known route answered 200 are kept
/// here instead, one per route and method, found by index and set on first use.
struct Latencies {
    family: prometheus::HistogramVec,
    routes: Vec<&'static str>,
    /// `routes.len() × METHODS.len()` series of status 200.
    ok: Box<[OnceLock<prometheus::Histogram>]>,
}

impl Latencies {
    fn new(family: prometheus::HistogramVec, routes: Vec<&'static str>) -> Latencies {
        let ok = (0..routes.len() * METHODS.len()).map(|_| OnceLock::new()).collect();
        Latencies { family, routes, ok }
    }

    /// Counts one answer of `route` (an index of `routes`, or `None` when no route
    /// matched) to `method` (an index of [`METHODS`]) with `status`.
    fn observe(&self, route: Option<usize>, method: usize, status: axum::http::StatusCode, seconds: f64) {
        let labels = |route: Option<usize>| [route.map_or("unmatched", |r| self.routes[r]), METHODS[method]];
        match route {
            Some(r) if status == axum::http::StatusCode::OK => self.ok[r * METHODS.len() + method]
                .get_or_init(|| {
                    let [route, method] = labels(Some(r));
                    self.family.with_label_values(&[route, method, "200"])
                })
                .observe(seconds),
            _ => {
                let [route, method] = labels(route);
                self.family.with_label_values(&[route, method, status.as_str()]).observe(seconds)
            }
        }
    }
}

/// The HTTP service: the router, with every request timed, counted and given an id.
///
/// This wraps the router rather than being one of its layers: a router layer wraps each
/// route, and every request then pays for cloning and boxing each layer's service. It
/// finds each request's route in its own table of the templates, and for the hottest
/// requests, a GET, PUT or DELETE of one read flag, that lookup is the only one: the
/// router is skipped.
#[derive(Clone)]
pub struct Api {
    router: Router,
    /// Each route template's index in `latencies`.
    templates: Arc<matchit::Router<usize>>,
    latencies: Arc<Latencies>,
    /// The index of [`reads::MESSAGE_ROUTE`], whose GETs are answered without the router.
    message_route: Option<usize>,
    state: AppState,
}

impl Api {
    /// Serves one request: refuses an oversized head, answers a GET, PUT or DELETE of one
    /// read flag itself (see [`reads::read_status`] and [`reads::write`]), routes the
    /// rest. Times every request and counts it by route template, method and status.
    /// Every line logged while it is served carries its request id, which the answer
    /// echoes in `X-Request-Id`.
    pub async fn handle(&self, request: Request) -> Response {
        let (route, direct) = match self.templates.at(request.uri().path()) {
            Ok(found) => {
                let route = *found.value;
                let direct = (Some(route) == self.message_route && direct_method(request.method()))
                    .then(|| extract::UserMsg::of_raw(&found.params))
                    .flatten();
                (Some(route), direct)
            }
            Err(_) => (None, None),
        };
        let method = method_index(request.method());
        let id = request_id(&request);
        let span = tracing::info_span!("request", id = id.to_str().unwrap_or(""), method = METHODS[method]);
        let started = Instant::now();
        let mut response = match (oversized(&request), direct) {
            (Some(refusal), _) => refusal.into_response(),
            (None, Some(ids)) => self.message(request.method(), request.uri(), ids).instrument(span.clone()).await,
            (None, None) => {
                let mut router = self.router.clone();
                match router.call(request).instrument(span.clone()).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                }
            }
        };
        response.headers_mut().insert(REQUEST_ID, id);
        let elapsed = started.elapsed();
        span.in_scope(|| {
            let route = route.map_or("unmatched", |r| self.latencies.routes[r]);
            tracing::debug!(route, status = response.status().as_u16(), us = elapsed.as_micros() as u64, "answered")
        });
        self.latencies.observe(route, method, response.status(), elapsed.as_secs_f64());
        response
    }

    /// A GET, PUT or DELETE of [`reads::MESSAGE_ROUTE`] whose ids parsed, answered as its
    /// routed handler would, `Content-Length` included.
    async fn message(&self, method: &Method, uri: &Uri, ids: extract::UserMsg) -> Response {
        let query = match extract::QueryParams::of(uri) {
            Ok(query) => query,
            Err(e) => return e.into_response(),
        };
        let (user, msg) = (ids.user, ids.msg);
        let mut response = match *method {
            Method::PUT => {
                reads::write(&self.state, Command::MarkRead { user, msg }, uri, &query).await.into_response()
            }
            Method::DELETE => {
                reads::write(&self.state, Command::MarkUnread { user, msg }, uri, &query).await.into_response()
            }
            _ => reads::read_status(&self.state, ids, &query).await.into_response(),
        };
        if let Some(len) = http_body::Body::size_hint(response.body()).exact() {
            response.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
        response
    }
}

impl<B> tower::Service<axum::http::Request<B>> for Api
where
    B: http_body::Body<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Self::Future {
        let api = self.clone();
        Box::pin(async move { Ok(api.handle(request.map(axum::body::Body::new)).await) })
    }
}

/// Why a request head is refused before routing: a target longer than
/// [`MAX_URI_LEN`] (414), or headers larger than [`MAX_HEAD_BYTES`] (431). hyper's
/// own buffer limit is only approximate (a head read in one large chunk may pass it);
/// this one is exact.
fn oversized(request: &Request) -> Option<ApiError> {
    let len = request.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if len > MAX_URI_LEN {
        return Some(ApiError::UriTooLong(len));
    }
    let headers: usize = request.headers().iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum();
    (headers > MAX_HEAD_BYTES).then(|| {
        ApiError::HeadersTooLarge(format!(
            "the request headers take {headers} bytes; at most {MAX_HEAD_BYTES} are read"
        ))
    })
}

/// The OpenAPI document of this build, byte for byte the one in `openapi/`.
async fn openapi_document() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi::document()).into_response()
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(uri.path().to_string())
}

async fn method_not_allowed(method: Method) -> ApiError {
    // The name goes into the answer, not into a label: bounded by the head size.
    ApiError::MethodNotAllowed(method.to_string())
}

/// The header that carries a request's id, taken from the client or made up, and echoed.
pub const REQUEST_ID: header::HeaderName = header::HeaderName::from_static("x-request-id");

/// The client's request id when it is one we can log and echo (1 to 128 visible ASCII
/// characters), or a new random one.
fn request_id(request: &Request) -> HeaderValue {
    let given = request.headers().get(&REQUEST_ID).filter(|v| {
        let bytes = v.as_bytes();
        (1..=128).contains(&bytes.len()) && bytes.iter().all(|b| (0x21..=0x7e).contains(b))
    });
    given.cloned().unwrap_or_else(|| {
        let mut id = [0u8; 16];
        let mut bits = rand::random::<u64>();
        for digit in id.iter_mut().rev() {
            *digit = b"0123456789abcdef"[(bits & 0xf) as usize];
            bits >>= 4;
        }
        HeaderValue::from_bytes(&id).expect("hex is a header value")
    })
}

/// The methods of [`reads::MESSAGE_ROUTE`] that [`Api`] answers without the router.
fn direct_method(method: &Method) -> bool {
    *method == Method::GET || *method == Method::PUT || *method == Method::DELETE
}

/// The method labels of request metrics: a client may send any token as a method, and
/// every distinct label value is a new series kept for ever, so unknown ones fold into
/// `OTHER`.
const METHODS: [&str; 8] = ["GET", "PUT", "POST", "DELETE", "HEAD", "OPTIONS", "PATCH", "OTHER"];

/// The method's index in [`METHODS`].
fn method_index(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::PUT => 1,
        Method::POST => 2,
        Method::DELETE => 3,
        Method::HEAD => 4,
        Method::OPTIONS => 5,
        Method::PATCH => 6,
        _ => 7,
    }
}
