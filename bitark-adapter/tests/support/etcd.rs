//! A real etcd (Debian's `etcd-server`) for the failover tests: one member on free
//! ports of `127.0.0.1`, its data in a temporary directory, killed on drop. It can be
//! stopped and started again on the same ports and data.

use super::{poll_until, PROCESS_TIMEOUT};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use tempfile::TempDir;

/// A running (or stopped) etcd member.
pub struct Etcd {
    dir: TempDir,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind a free port").local_addr().expect("address").port()
}

/// The `etcd` binary: `ETCD_BIN`, or `etcd` on the `PATH` (`.ci/run` installs it).
fn binary() -> String {
    std::env::var("ETCD_BIN").unwrap_or_else(|_| "etcd".into())
}

/// Set (as `.ci/run` does) to fail, rather than skip, the tests that need etcd when it
/// is not installed.
pub const REQUIRE: &str = "TESTS_REQUIRE_ETCD";

/// Whether etcd can be run here. Without it a test that needs it is skipped, loudly,
/// unless [`REQUIRE`] is set.
pub fn available() -> bool {
    let found = Command::new(binary()).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    if found.is_ok_and(|s| s.success()) {
        return true;
    }
    assert!(std::env::var_os(REQUIRE).is_none(), "{REQUIRE} is set but `{}` cannot be run", binary());
    eprintln!("SKIPPED: `{}` is not installed (Debian: apt-get install etcd-server)", binary());
    false
}

impl Etcd {
    /// Starts a one-member cluster and waits until it answers.
    pub async fn start() -> Etcd {
        let mut etcd = Etcd {
            dir: tempfile::tempdir().expect("etcd data directory"),
            client_port: free_port(),
            peer_port: free_port(),
            child: None,
        };
        etcd.resume().await;
        etcd
    }

    /// Its client URL, as `coordination.etcd.endpoints` names it.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.client_port).into()
    }

    /// The value of `key` as etcd's JSON gateway answers it (base64), or `None` when the
    /// key does not exist. `key_base64` is the key itself in base64, as the gateway takes
    /// keys.
    pub async fn value(&self, key_base64: &str) -> Option<String> {
        let answer: serde_json::Value = reqwest::Client::new()
            .post(format!("{}/v3/kv/range", self.url()))
            .json(&serde_json::json!({ "key": key_base64 }))
            .send()
            .await
            .expect("etcd answers")
            .json()
            .await
            .expect("a JSON answer");
        answer["kvs"][0]["value"].as_str().map(str::to_string)
    }

    /// Kills the member (SIGKILL); its data stays.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the member again on the same ports and data, and waits until it answers.
    pub async fn resume(&mut self) {
        assert!(self.child.is_none(), "etcd is running");
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new(binary())
            .args(["--name", "bitark-test", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &self.url(), "--advertise-client-urls", &self.url()])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("bitark-test={peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{}` (install Debian's etcd-server): {e}", binary()));
        self.child = Some(child);
        let health = format!("{}/health", self.url());
        let client = reqwest::Client::new();
        let up = poll_until(PROCESS_TIMEOUT, async || {
            let answer = client.get(&health).send().await;
            match answer {
                Ok(r) => r.text().await.is_ok_and(|t| t.contains("\"true\"")),
                Err(_) => false,
            }
        })
        .await;
        assert!(up, "etcd did not answer {health} within {PROCESS_TIMEOUT:?}");
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}
