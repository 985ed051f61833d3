//! `bitark shards move | abort | rollback | status`: the move controller
//! ([`bitark_engine::sharding::controller`]) with its steps taken over HTTP on the
//! groups' masters (`/admin/shard/*`, with `security.admin-token` when set), whose URLs
//! it reads from etcd.

use bitark_common::{GroupId, HashRange};
use bitark_engine::sharding::controller::{GroupSteps, StepError};
use bitark_engine::sharding::incoming::IncomingStatus;
use bitark_engine::sharding::read_master;
use bitark_infra::etcd::Etcd;
use serde_json::{json, Value};
use std::time::Duration;

/// The steps of a move, on the masters the directory in etcd names.
pub struct HttpSteps {
    http: reqwest::Client,
    token: Option<String>,
    etcd: Etcd,
    prefix: String,
}

impl HttpSteps {
    pub fn new(etcd: Etcd, prefix: &str, token: Option<String>) -> HttpSteps {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(70))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("an HTTP client with default TLS-free settings");
        HttpSteps { http, token, etcd, prefix: prefix.to_string() }
    }

    /// `method base path` with `body`: the JSON answer of a success, or the step's error
    /// (`Ok(None)` for a 404 when `missing_ok`).
    async fn call(
        &self,
        step: &'static str,
        method: reqwest::Method,
        base: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Option<Value>, StepError> {
        let url = format!("{}{path}", base.trim_end_matches('/'));
        let failed = |reason: String| StepError { step, url: url.clone(), reason };
        let mut request = self.http.request(method, &url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| failed(e.to_string()))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| failed(e.to_string()))?;
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(failed(format!("answered {status}: {text}")));
        }
        serde_json::from_str(&text).map(Some).map_err(|e| failed(format!("unreadable answer: {e}")))
    }

    async fn post(&self, step: &'static str, base: &str, path: &str, body: Value) -> Result<Value, StepError> {
        let answer = self.call(step, reqwest::Method::POST, base, path, Some(body)).await?;
        answer.ok_or_else(|| StepError { step, url: format!("{base}{path}"), reason: "answered 404".into() })
    }
}

impl GroupSteps for HttpSteps {
    async fn master(&self, group: &GroupId) -> Result<String, StepError> {
        let failed = |reason: String| StepError { step: "find the master", url: self.prefix.clone(), reason };
        let master = read_master(&self.etcd, &self.prefix, group).await.map_err(|e| failed(e.to_string()))?;
        master.ok_or_else(|| failed(format!("group {group} has no master in etcd")))
    }

    async fn start_incoming(&self, dest: &str, range: HashRange, source: &str) -> Result<(), StepError> {
        let body = json!({ "range": range.to_string(), "source": source });
        self.post("start the copy", dest, "/admin/shard/incoming", body).await.map(|_| ())
    }

    async fn incoming(&self, dest: &str, range: HashRange) -> Result<Option<IncomingStatus>, StepError> {
        let all =
            self.call("read the copy's progress", reqwest::Method::GET, dest, "/admin/shard/incoming", None).await?;
        let all: Vec<IncomingStatus> = serde_json::from_value(all.unwrap_or_default()).unwrap_or_default();
        Ok(all.into_iter().find(|s| s.range == range.to_string()))
    }

    async fn freeze(&self, source: &str, range: HashRange, freeze: bool) -> Result<u64, StepError> {
        let (step, path) = if freeze { ("freeze", "/admin/shard/freeze") } else { ("thaw", "/admin/shard/thaw") };
        let answer = self.post(step, source, path, json!({ "range": range.to_string() })).await?;
        Ok(answer["lsn"].as_u64().unwrap_or(0))
    }

    async fn drain(&self, dest: &str, range: HashRange, until: u64, wait: Duration) -> Result<(), StepError> {
        let body =
            json!({ "range": range.to_string(), "untilLsn": until, "timeoutMs": wait.as_millis().max(1) as u64 });
        self.post("drain", dest, "/admin/shard/incoming/drain", body).await.map(|_| ())
    }

    async fn stop_incoming(&self, dest: &str, range: HashRange) -> Result<(), StepError> {
        let body = Some(json!({ "range": range.to_string() }));
        self.call("stop the copy", reqwest::Method::POST, dest, "/admin/shard/incoming/stop", body).await.map(|_| ())
    }

    async fn drop_range(&self, master: &str, range: HashRange) -> Result<(), StepError> {
        self.post("drop the range", master, "/admin/shard/drop", json!({ "range": range.to_string() }))
            .await
            .map(|_| ())
    }
}
