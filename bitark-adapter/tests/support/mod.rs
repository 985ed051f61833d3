//! A harness around the real `bitark` binary, for tests that need whole processes:
//! crashes, signals, restarts, and later several nodes side by side.
//!
//! - [`NodeBuilder`] describes a process (data directory, environment, flags). The
//!   [`Node`] it starts keeps it, so a restart runs the same command line on the same
//!   directory; clone one builder to start the nodes of a cluster.
//! - [`Node`] owns one running process on a free port: a reader thread keeps every stderr
//!   line and picks up the `listening on http://…` address (a new one on each restart);
//!   signals go through `libc::kill`; the process is killed on drop.
//! - [`Api`] is an async client for the HTTP API.
//! - [`wait_until`] polls a condition against a deadline: tests synchronise on
//!   conditions, never on a bare sleep.
//! - [`proxy`] is a fault-injecting TCP proxy to put between two nodes; [`cluster`]
//!   starts a master and its slaves wired through such proxies; [`fake_master`] stands
//!   in for a master when a test talks to a slave directly; [`epochs`] writes with
//!   epochs and tokens; [`etcd`] runs a real etcd for failover.

#![allow(dead_code)] // each test binary uses its own part of the harness

pub mod cluster;
pub mod epochs;
pub mod etcd;
pub mod failover;
pub mod fake_master;
pub mod proxy;
pub mod s3;
pub mod sharded;
pub mod workload;

use bitark_adapter::http::admin::{Digest, SnapshotTaken};
use bitark_adapter::http::reads::{CheckResult, LsnResponse};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// How long a node may take to listen and recover, or to exit once stopping.
pub const PROCESS_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between two looks at a condition.
const POLL: Duration = Duration::from_millis(10);

/// A URL nothing listens at: a port the OS just handed out, and closed again.
pub fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    format!("http://{}", listener.local_addr().expect("its address"))
}

/// Polls `condition` until it holds; false once `timeout` has passed without it.
pub async fn poll_until(timeout: Duration, mut condition: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !condition().await {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
    true
}

/// Polls `condition` until it holds; panics naming `what` once `timeout` has passed.
pub async fn wait_until(timeout: Duration, what: &str, condition: impl AsyncFnMut() -> bool) {
    assert!(poll_until(timeout, condition).await, "timed out after {timeout:?} waiting for {what}");
}

/// How to start a `bitark` process.
#[derive(Clone, Debug, Default)]
pub struct NodeBuilder {
    /// `None`: a fresh temporary directory, deleted with the [`Node`].
    data_dir: Option<PathBuf>,
    env: Vec<(String, String)>,
    /// Variables the process must not have (the harness sets `BITARK_LOG`).
    unset: Vec<String>,
    args: Vec<String>,
    /// Soft and hard `RLIMIT_NOFILE` of the process, when set.
    open_files: Option<(u64, u64)>,
}

impl NodeBuilder {
    /// Runs the process with a soft and a hard limit on open files, as `ulimit -Sn` and
    /// `ulimit -Hn` would.
    pub fn open_files_limit(mut self, soft: u64, hard: u64) -> Self {
        self.open_files = Some((soft, hard));
        self
    }

    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Sets an environment variable, e.g. `("BITARK_WAL__SEGMENT_SIZE", "64KiB")`.
    pub fn env(mut self, key: &str, value: impl ToString) -> Self {
        self.env.push((key.to_owned(), value.to_string()));
        self
    }

    /// Starts the process without the variable `key`, e.g. `BITARK_LOG`, which the
    /// harness otherwise sets to `info`.
    pub fn without_env(mut self, key: &str) -> Self {
        self.unset.push(key.to_owned());
        self
    }

    /// Adds a command-line argument after `--port` and `--data-dir`.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Starts the process without waiting for it to listen or recover.
    pub fn spawn(self) -> Node {
        let (data_dir, temp) = match self.data_dir.clone() {
            Some(dir) => (dir, None),
            None => {
                let temp = tempfile::tempdir().expect("temporary data directory");
                (temp.path().to_path_buf(), Some(temp))
            }
        };
        let builder = NodeBuilder { data_dir: Some(data_dir.clone()), ..self };
        let (child, log) = launch(&builder, &data_dir);
        Node { builder, data_dir, _temp: temp, child, exit: None, log }
    }

    /// Starts the process and waits until it is ready to serve.
    pub async fn start(self) -> Node {
        let mut node = self.spawn();
        node.wait_ready().await;
        node
    }
}

/// What the stderr reader thread has seen of one run. Behind a std `Mutex`: the writer
/// is a plain thread and no one holds the lock across an await.
#[derive(Default)]
struct StderrLog {
    lines: Vec<String>,
    addr: Option<SocketAddr>,
    /// The process closed stderr: every line it wrote is in `lines`.
    closed: bool,
}

fn launch(builder: &NodeBuilder, data_dir: &Path) -> (Child, Arc<Mutex<StderrLog>>) {
    std::fs::create_dir_all(data_dir).expect("create the data directory");
    let mut command = Command::new(env!("CARGO_BIN_EXE_bitark"));
    // Only this test's settings apply: not the caller's BITARK_* variables, and not an
    // application.yml in the working directory.
    for (key, _) in std::env::vars().filter(|(key, _)| key.starts_with("BITARK_")) {
        command.env_remove(key);
    }
    command.current_dir(data_dir).env("BITARK_LOG", "info").envs(builder.env.iter().map(|(k, v)| (k, v)));
    for key in &builder.unset {
        command.env_remove(key);
    }
    command.arg("--port").arg("0").arg("--data-dir").arg(data_dir).args(&builder.args);
    command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    if let Some((soft, hard)) = builder.open_files {
        use std::os::unix::process::CommandExt;
        let limit = libc::rlimit { rlim_cur: soft, rlim_max: hard };
        // SAFETY: setrlimit is async-signal-safe and only reads the struct, which is
        // copied into the closure; nothing else runs between fork and exec.
        unsafe {
            command.pre_exec(move || {
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }
    let mut child = command.spawn().expect("spawn bitark");
    let stderr = child.stderr.take().expect("piped stderr");
    let log = Arc::new(Mutex::new(StderrLog::default()));
    let sink = log.clone();
    std::thread::spawn(move || read_stderr(stderr, &sink));
    (child, log)
}

fn read_stderr(stderr: ChildStderr, log: &Mutex<StderrLog>) {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
        let text = String::from_utf8_lossy(&line).trim_end().to_owned();
        let mut log = log.lock().unwrap();
        if log.addr.is_none() {
            // The address ends at the first character no address has (a space in text
            // logs, a quote in JSON ones).
            let addr = text
                .split("listening on http://")
                .nth(1)
                .and_then(|rest| rest.split(|c: char| !(c.is_ascii_alphanumeric() || ".:[]".contains(c))).next());
            log.addr = addr.and_then(|addr| addr.parse().ok());
        }
        log.lines.push(text);
        line.clear();
    }
    log.lock().unwrap().closed = true;
}

/// One `bitark` process; killed with SIGKILL on drop if still running.
pub struct Node {
    builder: NodeBuilder,
    data_dir: PathBuf,
    /// Deletes a temporary data directory once the node is gone.
    _temp: Option<TempDir>,
    child: Child,
    /// Set once the process has been reaped; its pid must not be signalled after that.
    exit: Option<ExitStatus>,
    log: Arc<Mutex<StderrLog>>,
}

impl Node {
    pub fn builder() -> NodeBuilder {
        NodeBuilder::default()
    }

    /// A builder for another process on this node's data directory.
    pub fn same_dir(&self) -> NodeBuilder {
        self.builder.clone()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Sets an environment variable, replacing any earlier value of it, for the runs
    /// started from now on (a restart with another configuration, e.g. a rollback).
    pub fn set_env(&mut self, key: &str, value: impl ToString) {
        self.builder.env.retain(|(k, _)| k != key);
        self.builder.env.push((key.to_owned(), value.to_string()));
    }

    /// The exit status, once the process has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().expect("query the bitark process");
        }
        self.exit
    }

    /// The address the current run listens on, once it has logged it.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.log.lock().unwrap().addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr().expect("the node has not logged its address yet"))
    }

    pub fn api(&self) -> Api {
        Api::new(&self.url())
    }

    /// Every stderr line of the current run so far.
    pub fn stderr_text(&self) -> String {
        self.log.lock().unwrap().lines.join("\n")
    }

    /// Waits until the readiness probe answers 200; panics with the log if the process
    /// exits first or the deadline passes.
    pub async fn wait_ready(&mut self) {
        let mut api = None;
        let ready = poll_until(PROCESS_TIMEOUT, async || {
            if let Some(status) = self.try_exit() {
                panic!("bitark exited ({status}) before it was ready:\n{}", self.stderr_text());
            }
            let Some(addr) = self.log.lock().unwrap().addr else { return false };
            let api = api.get_or_insert_with(|| Api::new(&format!("http://{addr}")));
            api.readiness().await.is_ok_and(|status| status == StatusCode::OK)
        })
        .await;
        assert!(ready, "bitark was not ready after {PROCESS_TIMEOUT:?}:\n{}", self.stderr_text());
    }

    /// Waits until the current run has logged the address it listens on, which comes
    /// before it is ready; panics with the log if the process exits first.
    pub async fn wait_listening(&mut self) -> SocketAddr {
        let listening = poll_until(PROCESS_TIMEOUT, async || {
            if let Some(status) = self.try_exit() {
                panic!("bitark exited ({status}) before it listened:\n{}", self.stderr_text());
            }
            self.addr().is_some()
        })
        .await;
        assert!(listening, "bitark did not listen within {PROCESS_TIMEOUT:?}:\n{}", self.stderr_text());
        self.addr().expect("listening")
    }

    /// Waits for the process to exit and for its last stderr line to be read.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let exited = poll_until(timeout, async || self.try_exit().is_some() && self.log.lock().unwrap().closed).await;
        assert!(exited, "bitark did not exit within {timeout:?}:\n{}", self.stderr_text());
        self.exit.expect("exited")
    }

    /// SIGTERM, then waits for the exit.
    pub async fn stop(&mut self) -> ExitStatus {
        self.sigterm();
        self.wait_exit(PROCESS_TIMEOUT).await
    }

    /// Kills the process at once and reaps it.
    pub fn sigkill(&mut self) {
        self.signal(libc::SIGKILL);
        self.exit = Some(self.child.wait().expect("reap the killed process"));
    }

    pub fn sigterm(&mut self) {
        self.signal(libc::SIGTERM);
    }

    /// Freezes the process: it keeps its sockets but answers nothing.
    pub fn sigstop(&mut self) {
        self.signal(libc::SIGSTOP);
    }

    pub fn sigcont(&mut self) {
        self.signal(libc::SIGCONT);
    }

    /// Asks the process to re-read its configuration.
    pub fn sighup(&mut self) {
        self.signal(libc::SIGHUP);
    }

    fn signal(&mut self, signal: libc::c_int) {
        assert!(self.try_exit().is_none(), "bitark already exited ({:?})", self.exit);
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) only sends a signal, to our own child, which is not reaped yet.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal}): {}", std::io::Error::last_os_error());
    }

    /// Starts the process again on the same data directory, without waiting.
    pub fn respawn(&mut self) {
        assert!(self.try_exit().is_some(), "bitark is still running; kill or stop it first");
        (self.child, self.log) = launch(&self.builder, &self.data_dir);
        self.exit = None;
    }

    /// Starts the process again on the same data directory and waits until it is ready.
    pub async fn restart(&mut self) {
        self.respawn();
        self.wait_ready().await;
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            self.sigkill();
        }
    }
}

/// Why a call got no 200.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No answer (refused, reset, timed out): a write may or may not have taken effect.
    #[error("no answer: {0}")]
    Transport(reqwest::Error),
    /// The server answered with another status.
    #[error("{0}: {1}")]
    Status(StatusCode, String),
}

/// An async client for one node's HTTP API.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    pub fn new(base_url: &str) -> Self {
        // A bound on every call, so a frozen (SIGSTOPped) node cannot hang a test.
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("HTTP client");
        Api { http, base: base_url.trim_end_matches('/').to_owned() }
    }

    async fn call<T: DeserializeOwned>(&self, method: Method, path: &str, body: Option<Value>) -> Result<T, CallError> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(CallError::Transport)?;
        match response.status() {
            StatusCode::OK => response.json().await.map_err(CallError::Transport),
            status => Err(CallError::Status(status, response.text().await.unwrap_or_default())),
        }
    }

    async fn write(&self, method: Method, path: String, body: Option<Value>) -> Result<u64, CallError> {
        self.call::<LsnResponse>(method, &path, body).await.map(|answer| answer.lsn)
    }

    /// Each write answers the LSN of its record.
    pub async fn mark_read(&self, user: u64, msg: u64) -> Result<u64, CallError> {
        self.write(Method::PUT, format!("/api/v1/users/{user}/reads/{msg}"), None).await
    }

    pub async fn mark_unread(&self, user: u64, msg: u64) -> Result<u64, CallError> {
        self.write(Method::DELETE, format!("/api/v1/users/{user}/reads/{msg}"), None).await
    }

    pub async fn mark_batch(&self, user: u64, msgs: &[u64]) -> Result<u64, CallError> {
        self.write(Method::POST, format!("/api/v1/users/{user}/reads"), Some(json!({ "msgIds": msgs }))).await
    }

    /// Marks `from..=to` read.
    pub async fn mark_range(&self, user: u64, from: u64, to: u64) -> Result<u64, CallError> {
        self.write(Method::POST, format!("/api/v1/users/{user}/reads"), Some(json!({ "from": from, "to": to }))).await
    }

    /// Read flags of `msgs`, in their order.
    pub async fn check(&self, user: u64, msgs: &[u64]) -> Result<Vec<bool>, CallError> {
        let (path, body) = (format!("/api/v1/users/{user}/reads/check"), json!({ "msgIds": msgs }));
        self.call::<CheckResult>(Method::POST, &path, Some(body)).await.map(|answer| answer.read)
    }

    pub async fn digest(&self) -> Result<Digest, CallError> {
        self.call(Method::GET, "/admin/digest", None).await
    }

    pub async fn snapshot(&self) -> Result<SnapshotTaken, CallError> {
        self.call(Method::POST, "/admin/snapshot", None).await
    }

    /// `GET /actuator/replication`: role, applied and durable LSNs, feature flags and,
    /// on a master, the progress of each slave.
    pub async fn replication_status(&self) -> Result<Value, CallError> {
        self.call(Method::GET, "/actuator/replication", None).await
    }

    /// `GET /actuator/prometheus` on this client's connection.
    pub async fn metrics_text(&self) -> Result<String, CallError> {
        let response = self.http.get(format!("{}/actuator/prometheus", self.base)).send().await;
        response.map_err(CallError::Transport)?.text().await.map_err(CallError::Transport)
    }

    pub async fn info(&self) -> Result<Value, CallError> {
        self.call(Method::GET, "/actuator/info", None).await
    }

    /// The status of the readiness probe: 200 ready, 503 recovering or stopping.
    pub async fn readiness(&self) -> Result<StatusCode, CallError> {
        let url = format!("{}/actuator/health/readiness", self.base);
        self.http.get(url).send().await.map(|response| response.status()).map_err(CallError::Transport)
    }
}

/// The sample of `name` carrying every label of `labels` in `node`'s
/// `/actuator/prometheus`; `None` while that series does not exist.
pub async fn metric(node: &Node, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let url = format!("{}/actuator/prometheus", node.url());
    let response = reqwest::get(&url).await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(response.status(), StatusCode::OK, "GET {url}");
    let text = response.text().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let wanted: Vec<String> = labels.iter().map(|(key, value)| format!("{key}=\"{value}\"")).collect();
    text.lines().filter(|line| !line.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, labels) = match series.split_once('{') {
            Some((metric, labels)) => (metric, labels.trim_end_matches('}')),
            None => (series, ""),
        };
        let matches = metric == name && wanted.iter().all(|pair| labels.split(',').any(|label| label == pair));
        matches.then(|| value.parse().ok()).flatten()
    })
}

/// A counter's value; 0 before it was first touched.
pub async fn counter(node: &Node, name: &str, labels: &[(&str, &str)]) -> u64 {
    metric(node, name, labels).await.unwrap_or(0.0) as u64
}
