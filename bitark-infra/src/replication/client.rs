//! The replication transport: HTTP between real processes (reqwest), JSON for control
//! messages, binary WAL records for log batches, the cluster token as a bearer token.

use bitark_common::replication::{
    AppendResponse, EpochsAnswer, FullSyncAnswer, FullSyncRequest, HeartbeatRequest, HeartbeatResponse, NeedFullSync,
    NodeStatus, RegisterRequest, RegisterResponse, StaleEpoch, CHUNK_CRC_HEADER, EPOCH_HEADER, WAL_CONTENT_TYPE,
};
use bitark_common::{Lsn, Record};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Header naming the master that sends a batch.
pub const MASTER_ID_HEADER: &str = "x-bitark-master-id";
/// Header carrying the master's session (changes at each master start).
pub const SESSION_HEADER: &str = "x-bitark-session";
/// Header carrying the session of the slave process the batch is meant for (the one that
/// registered): a batch meant for an earlier process of the slave is refused.
pub const SLAVE_SESSION_HEADER: &str = "x-bitark-slave-session";

/// Why a call failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TransportError {
    /// No answer: refused, reset, timed out.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The slave needs records from `expected` on: the batch would leave a gap.
    #[error("the slave expects LSN {expected} next")]
    Gap { expected: Lsn },
    /// Any other answer that is not a success.
    #[error("answered {status}: {body}")]
    Refused { status: u16, body: String },
}

impl TransportError {
    /// The `error` code and `message` of a JSON error answer.
    pub fn error_body(&self) -> (Option<String>, Option<String>) {
        let TransportError::Refused { body, .. } = self else { return (None, None) };
        let value: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        let text = |key: &str| value[key].as_str().map(str::to_string);
        (text("error"), text("message"))
    }
}

/// Who sends a batch, and to which slave process: what the slave checks before it reads
/// the batch.
pub struct BatchSender<'a> {
    pub master_id: &'a str,
    pub master_session: &'a str,
    pub slave_session: &'a str,
}

/// The highest epoch a peer has shown this node: in an answer's epoch header, or in a
/// 409 `stale_epoch` that also names the master of that epoch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeenEpoch {
    pub epoch: u64,
    pub master_url: Option<String>,
}

/// The epoch this node sends, and the highest one its peers answered with.
struct EpochWire {
    /// Sent in [`EPOCH_HEADER`] on every request; `0` sends none (fencing is off).
    own: AtomicU64,
    seen: watch::Sender<SeenEpoch>,
}

/// Calls to other nodes' `/internal/replication/*` endpoints.
#[derive(Clone)]
pub struct ReplicationClient {
    http: reqwest::Client,
    token: Option<String>,
    epochs: Arc<EpochWire>,
}

impl ReplicationClient {
    /// A client whose calls give up after `timeout`, sending `token` when set.
    pub fn new(timeout: Duration, token: Option<String>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_max_idle_per_host(4)
            .build()
            .expect("an HTTP client with default TLS-free settings");
        let epochs = Arc::new(EpochWire { own: AtomicU64::new(0), seen: watch::channel(SeenEpoch::default()).0 });
        ReplicationClient { http, token, epochs }
    }

    /// Sends `epoch` with every request from now on (`0`: none).
    pub fn set_epoch(&self, epoch: u64) {
        self.epochs.own.store(epoch, Ordering::Release);
    }

    /// The highest epoch peers have answered with; changes only upwards, and only
    /// above the epoch this client sends.
    pub fn seen_epochs(&self) -> watch::Receiver<SeenEpoch> {
        self.epochs.seen.subscribe()
    }

    fn request(&self, method: reqwest::Method, url: String) -> reqwest::RequestBuilder {
        let mut builder = self.http.request(method, url);
        let epoch = self.epochs.own.load(Ordering::Acquire);
        if epoch > 0 {
            builder = builder.header(EPOCH_HEADER, epoch);
        }
        match &self.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    /// Notes a higher epoch than this node's in an answer: its header, or the body of a
    /// 409 `stale_epoch`.
    fn observe(&self, status: reqwest::StatusCode, headers: &reqwest::header::HeaderMap, body: &[u8]) {
        let own = self.epochs.own.load(Ordering::Acquire);
        if own == 0 {
            return;
        }
        let header = headers.get(EPOCH_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        let stale = (status == reqwest::StatusCode::CONFLICT)
            .then(|| serde_json::from_slice::<StaleEpoch>(body).ok())
            .flatten()
            .filter(|s| s.error == "stale_epoch");
        let seen = match (stale, header) {
            (Some(s), _) => SeenEpoch { epoch: s.epoch, master_url: s.master_url },
            (None, Some(epoch)) => SeenEpoch { epoch, master_url: None },
            (None, None) => return,
        };
        if seen.epoch > own {
            self.epochs.seen.send_if_modified(|current| {
                let newer = seen.epoch > current.epoch || (seen.epoch == current.epoch && current.master_url.is_none());
                if newer && (seen.epoch > current.epoch || seen.master_url.is_some()) {
                    *current = seen.clone();
                }
                newer
            });
        }
    }

    /// Reads an answer whole, noting the epoch it carries.
    async fn read(&self, response: reqwest::Response) -> Result<(reqwest::StatusCode, Vec<u8>), TransportError> {
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(unreachable)?;
        self.observe(status, &headers, &body);
        Ok((status, Vec::from(body)))
    }

    /// POSTs a JSON control message to `/internal/replication/{path}` and reads the
    /// JSON answer.
    async fn post_json<T: serde::de::DeserializeOwned>(
        &self,
        base_url: &str,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<T, TransportError> {
        let url = format!("{}/internal/replication/{path}", trim(base_url));
        let response = self.request(reqwest::Method::POST, url).json(body).send().await.map_err(unreachable)?;
        self.json_or_refused(response).await
    }

    /// A slave introduces itself to its master.
    pub async fn register(
        &self,
        master_url: &str,
        request: &RegisterRequest,
    ) -> Result<RegisterResponse, TransportError> {
        self.post_json(master_url, "register", request).await
    }

    /// Sends a batch of encoded WAL records. `Ok(None)` from a slave that keeps no
    /// progress (stage 1 answers without a body).
    pub async fn append(
        &self,
        slave_url: &str,
        sender: &BatchSender<'_>,
        body: Vec<u8>,
    ) -> Result<Option<AppendResponse>, TransportError> {
        let response = self
            .request(reqwest::Method::POST, format!("{}/internal/replication/append", trim(slave_url)))
            .header(reqwest::header::CONTENT_TYPE, WAL_CONTENT_TYPE)
            .header(MASTER_ID_HEADER, sender.master_id)
            .header(SESSION_HEADER, sender.master_session)
            .header(SLAVE_SESSION_HEADER, sender.slave_session)
            .body(body)
            .send()
            .await
            .map_err(unreachable)?;
        if response.status() == reqwest::StatusCode::NO_CONTENT {
            self.observe(response.status(), response.headers(), &[]);
            return Ok(None);
        }
        self.json_or_refused(response).await.map(Some)
    }

    /// A slave's heartbeat to its master (stage 4).
    pub async fn heartbeat(
        &self,
        master_url: &str,
        request: &HeartbeatRequest,
    ) -> Result<HeartbeatResponse, TransportError> {
        self.post_json(master_url, "heartbeat", request).await
    }

    /// `pull(fromLsn)`: the master's log from `from` on, or the snapshot to full-sync
    /// from when its WAL no longer reaches back that far.
    pub async fn pull(&self, master_url: &str, from: Lsn) -> Result<Result<Vec<Record>, NeedFullSync>, TransportError> {
        let url = format!("{}/internal/replication/pull?fromLsn={}", trim(master_url), from.0);
        let response = self.request(reqwest::Method::GET, url).send().await.map_err(unreachable)?;
        let (status, body) = self.read(response).await?;
        if status.is_success() {
            let mut records = Vec::new();
            let mut at = 0;
            while at < body.len() {
                let (record, used) = Record::decode(&body[at..]).map_err(|e| TransportError::Refused {
                    status: status.as_u16(),
                    body: format!("bad record: {e}"),
                })?;
                records.push(record);
                at += used;
            }
            return Ok(Ok(records));
        }
        if status == reqwest::StatusCode::CONFLICT {
            if let Ok(need) = serde_json::from_slice::<NeedFullSync>(&body) {
                return Ok(Err(need));
            }
        }
        Err(TransportError::Refused { status: status.as_u16(), body: String::from_utf8_lossy(&body).into_owned() })
    }

    /// Asks the master for a full-sync transfer (or a place in its queue).
    pub async fn full_sync_start(
        &self,
        master_url: &str,
        request: &FullSyncRequest,
    ) -> Result<FullSyncAnswer, TransportError> {
        self.post_json(master_url, "full-sync", request).await
    }

    /// One chunk of a transfer granted to the slave process `session`, and the crc32
    /// the master gave for it. `timeout` replaces the client's own: a master that paces
    /// a transfer answers chunks asked for ahead only when their turn comes.
    pub async fn full_sync_chunk(
        &self,
        master_url: &str,
        id: u64,
        session: &str,
        offset: u64,
        timeout: Duration,
    ) -> Result<(Vec<u8>, u32), TransportError> {
        let url = format!("{}/internal/replication/full-sync/{id}?offset={offset}&session={session}", trim(master_url));
        let response = self.request(reqwest::Method::GET, url).timeout(timeout).send().await.map_err(unreachable)?;
        let status = response.status();
        let crc = response.headers().get(CHUNK_CRC_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        let (_, body) = self.read(response).await?;
        match (status.is_success(), crc) {
            (true, Some(crc)) => Ok((body, crc)),
            _ => Err(TransportError::Refused {
                status: status.as_u16(),
                body: String::from_utf8_lossy(&body).into_owned(),
            }),
        }
    }

    /// Asks a slave to register with its master now.
    pub async fn reconnect(&self, url: &str) -> Result<(), TransportError> {
        let response = self
            .request(reqwest::Method::POST, format!("{}/internal/replication/reconnect", trim(url)))
            .send()
            .await
            .map_err(unreachable)?;
        let (status, body) = self.read(response).await?;
        if status.is_success() {
            return Ok(());
        }
        Err(TransportError::Refused { status: status.as_u16(), body: String::from_utf8_lossy(&body).into_owned() })
    }

    /// A master's epoch history (a node stepping down asks where its epoch ended).
    pub async fn epochs(&self, url: &str) -> Result<EpochsAnswer, TransportError> {
        let response = self
            .request(reqwest::Method::GET, format!("{}/internal/replication/epochs", trim(url)))
            .send()
            .await
            .map_err(unreachable)?;
        self.json_or_refused(response).await
    }

    /// Where a node stands.
    /// [`ReplicationClient::status`], with the epoch the node answered in (its
    /// `x-bitark-epoch`, under fencing).
    pub async fn status_and_epoch(&self, url: &str) -> Result<(NodeStatus, Option<u64>), TransportError> {
        let response = self
            .request(reqwest::Method::GET, format!("{}/internal/replication/status", trim(url)))
            .send()
            .await
            .map_err(unreachable)?;
        let epoch = response.headers().get(EPOCH_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        Ok((self.json_or_refused(response).await?, epoch))
    }

    /// Notes that the node at `url` is master in `epoch`: when that epoch is newer than
    /// this node's, it is where that epoch's writes go.
    pub fn note_master(&self, epoch: u64, url: &str) {
        if epoch <= self.epochs.own.load(Ordering::Acquire) {
            return;
        }
        self.epochs.seen.send_if_modified(|current| {
            let take = epoch > current.epoch || (epoch == current.epoch && current.master_url.is_none());
            if take {
                *current = SeenEpoch { epoch, master_url: Some(url.to_string()) };
            }
            take
        });
    }

    pub async fn status(&self, url: &str) -> Result<NodeStatus, TransportError> {
        let response = self
            .request(reqwest::Method::GET, format!("{}/internal/replication/status", trim(url)))
            .send()
            .await
            .map_err(unreachable)?;
        self.json_or_refused(response).await
    }
}

fn trim(url: &str) -> &str {
    url.trim_end_matches('/')
}

fn unreachable(e: reqwest::Error) -> TransportError {
    TransportError::Unreachable(e.to_string())
}

impl ReplicationClient {
    async fn json_or_refused<T: serde::de::DeserializeOwned>(
        &self,
        response: reqwest::Response,
    ) -> Result<T, TransportError> {
        let (status, body) = self.read(response).await?;
        if status.is_success() {
            return serde_json::from_slice(&body).map_err(|e| TransportError::Refused {
                status: status.as_u16(),
                body: format!("unreadable answer: {e}"),
            });
        }
        let text = String::from_utf8_lossy(&body).into_owned();
        if status == reqwest::StatusCode::CONFLICT {
            if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&body) {
                if value["error"] == "lsn_gap" {
                    if let Some(expected) = value["expected"].as_u64() {
                        return Err(TransportError::Gap { expected: Lsn(expected) });
                    }
                }
            }
        }
        Err(TransportError::Refused { status: status.as_u16(), body: text })
    }
}
