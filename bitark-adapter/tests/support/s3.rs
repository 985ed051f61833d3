//! A real S3-compatible server for the backup tests: `moto_server` (PyPI `moto[server]`)
//! on a free port of `127.0.0.1`, killed on drop, with one bucket made for the test.

use super::{poll_until, PROCESS_TIMEOUT};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};

/// Set (as `.ci/run` does) to fail, rather than skip, the tests that need the S3 server
/// when it is not installed.
pub const REQUIRE: &str = "TESTS_REQUIRE_S3";

/// The server binary: `MOTO_SERVER_BIN`, or `moto_server` on the `PATH`.
fn binary() -> String {
    std::env::var("MOTO_SERVER_BIN").unwrap_or_else(|_| "moto_server".into())
}

/// Whether the server can be run here; without it the test is skipped, loudly, unless
/// [`REQUIRE`] is set.
pub fn available() -> bool {
    let found = Command::new(binary()).arg("--help").stdout(Stdio::null()).stderr(Stdio::null()).status();
    if found.is_ok_and(|s| s.success()) {
        return true;
    }
    assert!(std::env::var_os(REQUIRE).is_none(), "{REQUIRE} is set but `{}` cannot be run", binary());
    eprintln!("SKIPPED: `{}` is not installed (pip install 'moto[server]')", binary());
    false
}

/// A running server with one bucket.
pub struct S3 {
    child: Child,
    port: u16,
    pub bucket: String,
}

impl S3 {
    /// Starts the server, waits until it answers, and makes the bucket.
    pub async fn start(bucket: &str) -> S3 {
        let port = TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("address").port();
        let child = Command::new(binary())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let s3 = S3 { child, port, bucket: bucket.to_string() };
        let http = reqwest::Client::new();
        let up = poll_until(PROCESS_TIMEOUT, async || http.get(s3.endpoint()).send().await.is_ok()).await;
        assert!(up, "moto_server did not answer on port {port}");
        let made = http.put(format!("{}/{bucket}", s3.endpoint())).send().await.expect("create the bucket");
        assert!(made.status().is_success(), "create bucket: {}", made.status());
        s3
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The environment a `bitark` process needs to reach it.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    /// The bucket, through the same client `bitark` uses.
    fn bucket(&self) -> bitark_infra::backup::Target {
        let env: Vec<(String, String)> = self.env().into_iter().map(|(k, v)| (k.to_lowercase(), v)).collect();
        let settings: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        bitark_infra::backup::Target::open_with(&format!("s3://{}", self.bucket), &settings).expect("the bucket")
    }

    /// The bytes of an object.
    pub async fn get(&self, key: &str) -> Vec<u8> {
        self.bucket().get(key).await.unwrap_or_else(|e| panic!("GET {key}: {e}")).to_vec()
    }

    pub async fn put(&self, key: &str, bytes: Vec<u8>) {
        self.bucket().put(key, bytes).await.unwrap_or_else(|e| panic!("PUT {key}: {e}"));
    }

    /// Stops the server.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        self.stop();
    }
}
