//! The reference point for the HTTP benchmark: the smallest axum service that answers a
//! GET and a POST with a fixed JSON body, on the same runtime settings as `bitark`.
//! `bench/http.sh` measures it beside BitArk so the two figures share the machine's
//! conditions.
//!
//! `cargo run --release -p bitark-adapter --example minimal -- <port>`

use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let port: u16 = std::env::args().nth(1).and_then(|p| p.parse().ok()).unwrap_or(18556);
    let app = Router::new().route(
        "/api/v1/users/{userId}/reads/{msgId}",
        get(|| async { Json(json!({"read": false, "lsn": 0})) }).put(|| async { Json(json!({"lsn": 0})) }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
    axum::serve(listener, app).await.expect("serve");
}
