//! A full disk, for real: the node's data directory lives on a small tmpfs that the test
//! fills up. Writes that cannot be logged answer `507 insufficient_storage` and are not
//! in the log, reads go on, liveness stays UP while readiness says why the node is out
//! of service, and writes resume by themselves once space is freed; a crash afterwards
//! loses nothing acknowledged and brings back nothing refused.
//!
//! Mounting a tmpfs needs root; where that is refused the test says so and skips.

mod support;

use reqwest::StatusCode;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::{poll_until, CallError, Node};

/// A tmpfs mounted on a fresh directory, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).trim().to_string());
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// Fills the file system of `path` with one file; answers the file.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).expect("create the filler");
    let chunk = vec![0xA5u8; 64 * 1024];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.sync_all();
    path
}

async fn readiness(node: &Node) -> (StatusCode, Value) {
    let response = reqwest::get(format!("{}/actuator/health/readiness", node.url())).await.expect("readiness");
    (response.status(), response.json().await.expect("a JSON status"))
}

#[tokio::test]
async fn a_full_disk_answers_507_keeps_serving_reads_and_resumes_writing_once_space_is_freed() {
    let tmpfs = match Tmpfs::mount("8m") {
        Ok(tmpfs) => tmpfs,
        Err(why) => {
            eprintln!("SKIPPED: cannot mount a tmpfs for the full-disk test (needs root): {why}");
            return;
        }
    };
    let mut node = Node::builder()
        .data_dir(tmpfs.path().join("data"))
        .env("BITARK_WAL__SEGMENT_SIZE", "1MiB")
        .env("BITARK_WAL__RETRY_INTERVAL", "50ms")
        .env("BITARK_SNAPSHOT__EVERY_RECORDS", 0)
        .env("BITARK_SNAPSHOT__EVERY", "0s")
        .start()
        .await;
    let api = node.api();
    let filler = fill(tmpfs.path());

    // Each write marks 100 new ids of user 1; batch `i` holds `i * 100 ..`.
    let ids = |i: u64| (i * 100..i * 100 + 100).collect::<Vec<u64>>();
    let (mut acked, mut refused) = (Vec::new(), Vec::new());
    let mut next = 0u64;
    let mut first_refusal = None;
    while refused.len() < 5 {
        assert!(next < 20_000, "the disk never filled up");
        match api.mark_batch(1, &ids(next)).await {
            Ok(_) => acked.push(next),
            Err(CallError::Status(StatusCode::INSUFFICIENT_STORAGE, body)) => {
                first_refusal.get_or_insert(body);
                refused.push(next);
            }
            Err(other) => panic!("write {next} on a full disk: {other}"),
        }
        next += 1;
    }
    let body: Value = serde_json::from_str(first_refusal.as_ref().unwrap()).unwrap();
    assert_eq!(body["error"], "insufficient_storage", "{body}");
    assert!(body["message"].as_str().unwrap().contains("not logged"), "{body}");
    assert!(!body["message"].as_str().unwrap().contains(&tmpfs.path().display().to_string()), "a path leaks: {body}");

    // Reads go on; the process is alive; it is not ready, and says why.
    let last = *acked.last().expect("some writes were acknowledged");
    assert_eq!(api.check(1, &ids(last)).await.expect("read on a full disk"), vec![true; 100]);
    let live = reqwest::get(format!("{}/actuator/health/liveness", node.url())).await.unwrap();
    assert_eq!(live.status(), StatusCode::OK, "a full disk is no reason to restart the process");
    // It keeps trying, and keeps saying it is out of service while the disk is full.
    let retries = support::counter(&node, "bitark_wal_retries_total", &[]).await;
    support::wait_until(Duration::from_secs(30), "the log to retry on its own", async || {
        support::counter(&node, "bitark_wal_retries_total", &[]).await >= retries + 3
    })
    .await;
    let (status, ready) = readiness(&node).await;
    assert_eq!(
        (status, ready["reason"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("write_path_down")),
        "{ready}"
    );
    assert!(ready["message"].as_str().unwrap().contains("full"), "{ready}");

    // Space is back: writes resume without a restart.
    std::fs::remove_file(&filler).expect("free the space");
    let resumed = poll_until(Duration::from_secs(30), async || {
        let i = next;
        next += 1;
        match api.mark_batch(1, &ids(i)).await {
            Ok(_) => {
                acked.push(i);
                true
            }
            Err(CallError::Status(StatusCode::INSUFFICIENT_STORAGE, _)) => {
                refused.push(i);
                false
            }
            Err(other) => panic!("write {i} after space was freed: {other}"),
        }
    })
    .await;
    assert!(resumed, "writes did not resume once space was freed");
    assert_eq!(readiness(&node).await.0, StatusCode::OK, "ready again");

    // A crash now: exactly the acknowledged writes are there.
    node.sigkill();
    node.restart().await;
    let api = node.api();
    for i in &acked {
        assert_eq!(api.check(1, &ids(*i)).await.unwrap(), vec![true; 100], "acknowledged write {i} lost");
    }
    for i in &refused {
        assert_eq!(api.check(1, &ids(*i)).await.unwrap(), vec![false; 100], "refused write {i} is in the log");
    }
    drop(node);
}
