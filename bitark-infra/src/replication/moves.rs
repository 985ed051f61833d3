//! Calls to a move's source, `/internal/shard/*` on the source group's master: a range's
//! copy by store shard and its log of the range, as WAL records back to back.

use super::client::TransportError;
use bitark_common::replication::{APPLIED_LSN_HEADER, NEXT_LSN_HEADER, SAFE_LSN_HEADER, SOURCE_EPOCH_HEADER};
use bitark_common::{Command, HashRange, Lsn, Record};
use std::time::Duration;

/// What the source answered, before the engine reads it as a copy or a log.
#[derive(Debug)]
pub struct SourceAnswer {
    pub epoch: u64,
    pub commands: Vec<Command>,
    /// A copy's applied LSN, or a log's next LSN.
    pub lsn: Lsn,
    /// A log's safe LSN.
    pub safe: Lsn,
}

/// Calls to the `/internal/shard/*` endpoints of a move's source.
#[derive(Clone)]
pub struct MoveClient {
    http: reqwest::Client,
    token: Option<String>,
}

impl MoveClient {
    /// A client whose calls give up after `timeout`, sending `token` when set.
    pub fn new(timeout: Duration, token: Option<String>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .expect("an HTTP client with default TLS-free settings");
        MoveClient { http, token }
    }

    /// The users of `range` in store shard `shard` of the source at `base`.
    pub async fn copy(&self, base: &str, range: HashRange, shard: usize) -> Result<SourceAnswer, TransportError> {
        self.get(base, &format!("copy?range={range}&shard={shard}"), APPLIED_LSN_HEADER).await
    }

    /// The records of `range`'s users from `from` on, from the source at `base`.
    pub async fn log(&self, base: &str, range: HashRange, from: Lsn) -> Result<SourceAnswer, TransportError> {
        self.get(base, &format!("log?range={range}&fromLsn={}", from.0), NEXT_LSN_HEADER).await
    }

    async fn get(&self, base: &str, path: &str, lsn_header: &str) -> Result<SourceAnswer, TransportError> {
        let url = format!("{}/internal/shard/{path}", base.trim_end_matches('/'));
        let mut request = self.http.get(url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| TransportError::Unreachable(e.to_string()))?;
        let status = response.status();
        let header =
            |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        let (epoch, lsn, safe) = (header(SOURCE_EPOCH_HEADER), header(lsn_header), header(SAFE_LSN_HEADER));
        let body = response.bytes().await.map_err(|e| TransportError::Unreachable(e.to_string()))?;
        if !status.is_success() {
            let body = String::from_utf8_lossy(&body).into_owned();
            return Err(TransportError::Refused { status: status.as_u16(), body });
        }
        let refused = |body: String| TransportError::Refused { status: status.as_u16(), body };
        let (Some(epoch), Some(lsn)) = (epoch, lsn) else {
            return Err(refused(format!("the answer lacks {SOURCE_EPOCH_HEADER} or {lsn_header}")));
        };
        let mut commands = Vec::new();
        let mut at = 0;
        while at < body.len() {
            let (record, used) =
                Record::decode(&body[at..]).map_err(|e| refused(format!("bad record at byte {at}: {e}")))?;
            commands.push(record.command);
            at += used;
        }
        Ok(SourceAnswer { epoch, commands, lsn: Lsn(lsn), safe: Lsn(safe.unwrap_or(0)) })
    }
}
