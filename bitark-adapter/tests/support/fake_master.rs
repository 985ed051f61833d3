//! A stand-in master for tests that talk to a slave directly: it accepts every
//! registration with a fixed identity, so a test can send the slave batches as that
//! master (or as someone else).

use axum::routing::post;
use axum::{Json, Router};
use bitark_common::replication::{Features, RegisterRequest, RegisterResponse};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::task::JoinHandle;

/// The id this master gives itself.
pub const MASTER_ID: &str = "fake-master";
/// The session it answers every registration with.
pub const SESSION: &str = "fake-session-1";

/// A running stand-in master; stops when dropped.
pub struct FakeMaster {
    pub addr: SocketAddr,
    registrations: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl FakeMaster {
    pub async fn start() -> FakeMaster {
        let registrations = Arc::new(AtomicU64::new(0));
        let counted = registrations.clone();
        let app = Router::new().route(
            "/internal/replication/register",
            post(move |Json(request): Json<RegisterRequest>| {
                counted.fetch_add(1, Ordering::Relaxed);
                async move {
                    Json(RegisterResponse {
                        master_id: MASTER_ID.into(),
                        features: Features::up_to_stage(3.0).expect("stage 3").common(request.features),
                        durable_lsn: 0,
                        session: SESSION.into(),
                        state: "ALIVE".into(),
                        reason: None,
                        history: None,
                    })
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the fake master");
        let addr = listener.local_addr().expect("fake master address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeMaster { addr, registrations, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Registrations received so far.
    pub fn registrations(&self) -> u64 {
        self.registrations.load(Ordering::Relaxed)
    }
}

impl Drop for FakeMaster {
    fn drop(&mut self) {
        self.task.abort();
    }
}
