//! Online base backups, their checks and point-in-time restores, between real
//! processes: a running `bitark` node, the `bitark backup`, `bitark backup verify` and
//! `bitark restore` commands, and a node started on the restored data directory. Each
//! scenario runs against a local directory and against a real S3-compatible server
//! (`moto_server`, started by the test).

mod support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::s3::S3;
use support::{wait_until, Node};

/// Where a test keeps its backups.
enum Store {
    Local(tempfile::TempDir),
    S3(S3),
}

impl Store {
    fn local() -> Store {
        Store::Local(tempfile::tempdir().expect("a target directory"))
    }

    /// An S3 target, or `None` (the test is skipped) when the server is not installed.
    async fn s3() -> Option<Store> {
        support::s3::available().then_some(())?;
        Some(Store::S3(S3::start("bitark-backups").await))
    }

    fn url(&self) -> String {
        match self {
            Store::Local(dir) => dir.path().join("target").display().to_string(),
            Store::S3(s3) => format!("s3://{}/cluster-a", s3.bucket),
        }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        match self {
            Store::Local(_) => Vec::new(),
            Store::S3(s3) => s3.env(),
        }
    }

    async fn read(&self, path: &str) -> Vec<u8> {
        match self {
            Store::Local(dir) => std::fs::read(dir.path().join("target").join(path)).expect("read a target file"),
            Store::S3(s3) => s3.get(&format!("cluster-a/{path}")).await,
        }
    }

    async fn write(&self, path: &str, bytes: Vec<u8>) {
        match self {
            Store::Local(dir) => std::fs::write(dir.path().join("target").join(path), bytes).expect("write"),
            Store::S3(s3) => s3.put(&format!("cluster-a/{path}"), bytes).await,
        }
    }

    /// Runs `bitark <args>` with this target's environment.
    fn bitark(&self, args: &[&str]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_bitark"));
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("BITARK_") || k.starts_with("AWS_")) {
            command.env_remove(key);
        }
        command.envs(self.env()).args(args).output().expect("run bitark")
    }

    /// `bitark backup` of `node`: the backup's manifest.
    async fn backup(&self, node: &Node) -> Value {
        let out = self.bitark(&["backup", "--from", &node.url(), "--to", &self.url()]);
        let said = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "backup failed:\n{said}\n{}", String::from_utf8_lossy(&out.stderr));
        let id =
            said.split("backup ").nth(1).and_then(|rest| rest.split(' ').next()).expect("the backup id").to_string();
        serde_json::from_slice(&self.read(&format!("base/{id}/manifest.json")).await).expect("a manifest")
    }

    /// `bitark restore` into a new directory: the directory, and what the command said.
    fn restore(&self, extra: &[&str]) -> (tempfile::TempDir, Result<String, String>) {
        let dir = tempfile::tempdir().expect("a data directory");
        let data = dir.path().join("data");
        let url = self.url();
        let mut args = vec!["restore", "--from", url.as_str(), "--data-dir", data.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = self.bitark(&args);
        let said = String::from_utf8_lossy(&out.stdout).to_string();
        let error = String::from_utf8_lossy(&out.stderr).to_string();
        (dir, if out.status.success() { Ok(said) } else { Err(error) })
    }

    fn verify(&self, id: Option<&str>) -> Result<String, String> {
        let url = self.url();
        let mut args = vec!["backup", "verify", url.as_str()];
        args.extend(id);
        let out = self.bitark(&args);
        let said = String::from_utf8_lossy(&out.stdout).to_string();
        if out.status.success() {
            Ok(said)
        } else {
            Err(format!("{said}{}", String::from_utf8_lossy(&out.stderr)))
        }
    }
}

/// A node started on a restored data directory.
async fn start_on(dir: &Path) -> Node {
    Node::builder().data_dir(dir.join("data")).start().await
}

async fn digest(node: &Node) -> (u64, String) {
    let d = node.api().digest().await.expect("digest");
    (d.applied_lsn, d.digest)
}

/// An acknowledged write: its LSN, user, message, and whether it marked (or unmarked).
type Acked = (u64, u64, u64, bool);

/// Marks and unmarks message after message, one write at a time, keeping each
/// acknowledged write with its LSN.
struct Writer {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Acked>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    fn start(node: &Node) -> Writer {
        let api = node.api();
        let (stop, log) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
        let (s, l) = (stop.clone(), log.clone());
        let task = tokio::spawn(async move {
            let mut n: u64 = 0;
            while !s.load(Ordering::Acquire) {
                n += 1;
                let (user, msg) = (n % 17, n % 101);
                let read = !n.is_multiple_of(5);
                let lsn = if read { api.mark_read(user, msg).await } else { api.mark_unread(user, msg).await };
                if let Ok(lsn) = lsn {
                    l.lock().unwrap().push((lsn, user, msg, read));
                }
            }
        });
        Writer { stop, log, task }
    }

    async fn stop(self) -> Vec<Acked> {
        self.stop.store(true, Ordering::Release);
        let _ = self.task.await;
        self.log.lock().unwrap().clone()
    }
}

async fn backup_under_load_restores_the_state_at_its_end(store: Store) {
    let node = Node::builder().start().await;
    let writer = Writer::start(&node);
    wait_until(Duration::from_secs(30), "writes", async || writer.log.lock().unwrap().len() > 200).await;
    node.api().snapshot().await.expect("a snapshot to start the backup from");
    wait_until(Duration::from_secs(30), "more writes", async || writer.log.lock().unwrap().len() > 400).await;
    let manifest = store.backup(&node).await;
    let log = writer.stop().await;
    let end = manifest["endLsn"].as_u64().unwrap();
    assert!(end > manifest["startLsn"].as_u64().unwrap(), "the backup holds log after its snapshot: {manifest}");
    assert!(log.iter().any(|(lsn, ..)| *lsn > end), "writes went on during and after the backup");
    store.verify(None).expect("the backup verifies");

    let (dir, said) = store.restore(&[]);
    let said = said.expect("restore");
    assert!(said.contains(&format!("ends at LSN {end}")), "{said}");
    let restored = start_on(dir.path()).await;
    // The state at the backup's end: each pair as the last write at or before it left it.
    let mut expected = std::collections::BTreeMap::new();
    for (_, user, msg, read) in log.iter().filter(|(lsn, ..)| *lsn <= end) {
        expected.insert((*user, *msg), *read);
    }
    for ((user, msg), read) in &expected {
        let got = restored.api().check(*user, &[*msg]).await.expect("check");
        assert_eq!(got, [*read], "user {user} message {msg} at LSN {end}");
    }
    assert_eq!(digest(&restored).await.0, end);
}

async fn restore_to_an_lsn_or_a_time_gives_the_state_noted_at_it(store: Store) {
    let node = Node::builder().start().await;
    let api = node.api();
    for msg in 1..=30 {
        api.mark_read(1, msg).await.unwrap();
    }
    node.api().snapshot().await.unwrap();
    api.mark_batch(2, &[5, 6, 7]).await.unwrap();
    api.mark_range(3, 100, 140).await.unwrap();
    let noted = digest(&node).await;
    let noted_time = humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
    // More writes, unmarks of what the noted state holds among them.
    for msg in 1..=10 {
        api.mark_unread(1, msg).await.unwrap();
    }
    api.mark_unread(2, 6).await.unwrap();
    api.mark_read(4, 4).await.unwrap();
    let last = digest(&node).await;
    store.backup(&node).await;

    let at = noted.0.to_string();
    let (dir, said) = store.restore(&["--to-lsn", &at]);
    assert!(said.expect("restore to the noted LSN").contains(&format!("ends at LSN {at}")));
    let restored = start_on(dir.path()).await;
    assert_eq!(digest(&restored).await, noted, "the state at the noted LSN");
    drop(restored);

    let (dir, said) = store.restore(&["--to-time", &noted_time]);
    let said = said.expect("restore to the noted time");
    assert!(said.contains(&format!("ends at LSN {at}")), "{said}");
    assert!(said.contains("the last record restored was committed at"), "{said}");
    let restored = start_on(dir.path()).await;
    assert_eq!(digest(&restored).await, noted, "the state at the noted time");
    drop(restored);

    let (dir, said) = store.restore(&[]);
    said.expect("restore to the end");
    assert_eq!(digest(&start_on(dir.path()).await).await, last, "the state at the backup's end");

    // Past the end, and before the first snapshot: refused, saying why.
    let past = (last.0 + 5).to_string();
    let (_, said) = store.restore(&["--to-lsn", &past]);
    assert!(said.unwrap_err().contains("past it"), "a target past the backup's end is refused");
    let (_, said) = store.restore(&["--to-lsn", "3"]);
    assert!(said.unwrap_err().contains("no full backup that starts at or before LSN 3"));
    let (_, said) = store.restore(&["--to-time", "2020-01-01T00:00:00+01:00"]);
    let said = said.unwrap_err();
    assert!(said.contains("no full backup whose snapshot was taken at or before 2019-12-31T23:00:00"), "{said}");
    let (_, said) = store.restore(&["--to-time", "last tuesday"]);
    assert!(said.unwrap_err().contains("not an RFC 3339 time"), "a malformed time is named");
}

async fn a_flipped_byte_in_any_backup_file_is_found_and_refused(store: Store) {
    let node = Node::builder().start().await;
    for msg in 1..=20 {
        node.api().mark_read(9, msg).await.unwrap();
    }
    node.api().snapshot().await.unwrap();
    for msg in 21..=40 {
        node.api().mark_read(9, msg).await.unwrap();
    }
    let manifest = store.backup(&node).await;
    let id = manifest["id"].as_str().unwrap().to_string();
    let files: Vec<String> =
        manifest["files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap().to_string()).collect();
    assert_eq!(files.len(), 2, "a snapshot and one WAL file: {manifest}");
    let manifest_path = format!("base/{id}/manifest.json");
    for path in files.iter().chain([&manifest_path]) {
        let good = store.read(path).await;
        let mut bad = good.clone();
        let at = bad.len() / 2;
        bad[at] ^= 0x01;
        store.write(path, bad).await;
        let verified = store.verify(Some(&id)).expect_err("a damaged backup does not verify");
        assert!(verified.contains(path.as_str()), "verify names {path}: {verified}");
        let (_, restored) = store.restore(&[]);
        let refused = restored.expect_err("a damaged backup is not restored");
        assert!(refused.contains(path.as_str()), "restore names {path}: {refused}");
        store.write(path, good).await;
    }
    store.verify(Some(&id)).expect("whole again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_backup_under_load_restores_the_state_at_its_end() {
    backup_under_load_restores_the_state_at_its_end(Store::local()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_backup_under_load_restores_the_state_at_its_end() {
    if let Some(store) = Store::s3().await {
        backup_under_load_restores_the_state_at_its_end(store).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_restore_to_an_lsn_or_a_time_gives_the_state_noted_at_it() {
    restore_to_an_lsn_or_a_time_gives_the_state_noted_at_it(Store::local()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_restore_to_an_lsn_or_a_time_gives_the_state_noted_at_it() {
    if let Some(store) = Store::s3().await {
        restore_to_an_lsn_or_a_time_gives_the_state_noted_at_it(store).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_a_flipped_byte_in_any_backup_file_is_found_and_refused() {
    a_flipped_byte_in_any_backup_file_is_found_and_refused(Store::local()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_a_flipped_byte_in_any_backup_file_is_found_and_refused() {
    if let Some(store) = Store::s3().await {
        a_flipped_byte_in_any_backup_file_is_found_and_refused(store).await;
    }
}

/// The node dies while the backup reads its log: the snapshot is in the target, the
/// manifest is not, and nothing takes what is there for a backup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_backup_leaves_nothing_verify_accepts() {
    let store = Store::local();
    let mut node = Node::builder().env("FAILPOINTS", "backup::before-wal-read=sleep(3000)").start().await;
    for msg in 1..=10 {
        node.api().mark_read(1, msg).await.unwrap();
    }
    node.api().snapshot().await.unwrap();
    node.api().mark_read(1, 11).await.unwrap();
    let url = store.url();
    let command = {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_bitark"));
        command.args(["backup", "--from", &node.url(), "--to", &url]);
        command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        command.spawn().expect("start the backup")
    };
    let base = PathBuf::from(&url).join("base");
    wait_until(Duration::from_secs(30), "the snapshot in the target", async || {
        std::fs::read_dir(&base).ok().and_then(|mut dirs| dirs.next()).is_some_and(|dir| {
            std::fs::read_dir(dir.unwrap().path()).is_ok_and(|mut files| {
                files.any(|f| f.is_ok_and(|f| f.file_name().to_string_lossy().ends_with(".snap")))
            })
        })
    })
    .await;
    node.sigkill();
    let out = command.wait_with_output().expect("the backup ends");
    assert!(!out.status.success(), "the backup cannot finish without its node");
    let id = std::fs::read_dir(&base).unwrap().next().unwrap().unwrap().file_name().to_string_lossy().to_string();
    assert!(!base.join(&id).join("manifest.json").exists());
    let all = store.verify(None).expect_err("no backup to verify");
    assert!(all.contains("holds no complete backup"), "{all}");
    let one = store.verify(Some(&id)).expect_err("the cut-short backup is not one");
    assert!(one.contains("cut short"), "{one}");
    let (_, restored) = store.restore(&[]);
    assert!(restored.unwrap_err().contains("holds no complete backup"));
}

/// Continuous archiving to S3 through a link that goes down for a while: writes go on,
/// the lag shows and grows, GC keeps what the archive has not taken, and once the link
/// is back everything is archived and a restore reaches a point past the base backup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_archive_catches_up_after_an_outage_and_nothing_is_lost() {
    use support::metric;
    use support::proxy::{Mode, Proxy};
    let Some(Store::S3(s3)) = Store::s3().await else { return };
    let link = Proxy::start().await;
    link.set_upstream(s3.addr());
    let mut builder = Node::builder()
        .env("BITARK_BACKUP__ARCHIVE__TARGET", format!("s3://{}/cluster-a", s3.bucket))
        .env("BITARK_BACKUP__ARCHIVE__INTERVAL", "100ms")
        .env("BITARK_WAL__SEGMENT_SIZE", "64KiB")
        .env("BITARK_SNAPSHOT__EVERY_RECORDS", "300")
        .env("BITARK_SNAPSHOT__KEEP", "1");
    for (key, value) in s3.env() {
        let value = if key == "AWS_ENDPOINT_URL" { link.url() } else { value };
        builder = builder.env(key, value);
    }
    let node = builder.start().await;
    let store = Store::S3(s3);
    let api = node.api();
    let mut msg = 0;
    let mut write = async |count: u64| {
        for _ in 0..count {
            msg += 1;
            api.mark_read(msg % 50, msg).await.expect("a write");
        }
    };
    write(4000).await;
    store.backup(&node).await;
    let pending = async || metric(&node, "bitark_backup_archive_pending_segments", &[]).await.unwrap_or(-1.0);
    wait_until(Duration::from_secs(30), "the archive caught up", async || pending().await == 0.0).await;
    let archived = metric(&node, "bitark_backup_archived_segments_total", &[]).await.unwrap();
    assert!(archived >= 1.0, "segments were archived");

    // The archive is cut off: writes go on, the lag grows and GC keeps the segments.
    link.set_mode(Mode::Cut);
    write(4000).await;
    wait_until(Duration::from_secs(30), "the lag to show", async || pending().await >= 2.0).await;
    assert!(metric(&node, "bitark_backup_archive_failures_total", &[]).await.unwrap() >= 1.0);
    let waiting = pending().await as usize;
    let on_disk = std::fs::read_dir(node.data_dir().join("wal")).unwrap().filter_map(Result::ok);
    let on_disk = on_disk.filter(|f| f.file_name().to_string_lossy().ends_with(".wal")).count();
    assert!(on_disk > waiting, "the {waiting} segments the archive lacks are kept ({on_disk} on disk)");

    // Back: everything is archived, and the point noted is restorable from it.
    link.set_mode(Mode::Pass);
    let noted = digest(&node).await;
    write(4000).await; // seals the segment holding the noted point
    wait_until(Duration::from_secs(60), "the archive caught up again", async || pending().await == 0.0).await;
    store.verify(None).expect("the backup and the archive verify");
    let at = noted.0.to_string();
    let (dir, said) = store.restore(&["--to-lsn", &at]);
    said.expect("a restore past the base backup, from the archive");
    assert_eq!(digest(&start_on(dir.path()).await).await, noted, "the state at the noted point");
}

/// A full backup, then incremental ones holding only the log since: a restore goes
/// through the chain; prune keeps the newest full backups and what continues them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_backups_continue_the_chain_and_prune_keeps_what_restores() {
    let store = Store::local();
    let node = Node::builder().start().await;
    let api = node.api();
    let bitark_ok = |args: &[&str]| {
        let out = store.bitark(args);
        let said = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "{args:?}:\n{said}\n{}", String::from_utf8_lossy(&out.stderr));
        said
    };
    let url = store.url();
    let (from, to) = (node.url(), url.as_str());
    let incremental = async |first: u64| {
        for msg in first..first + 20 {
            api.mark_read(7, msg).await.unwrap();
        }
        bitark_ok(&["backup", "--from", &from, "--to", to, "--incremental"])
    };
    // Without a backup to continue, an incremental one is refused.
    let out = store.bitark(&["backup", "--from", &from, "--to", to, "--incremental"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("take a full backup first"));

    api.mark_read(7, 1).await.unwrap();
    node.api().snapshot().await.unwrap();
    let first_full = store.backup(&node).await;
    incremental(100).await;
    let second_full = store.backup(&node).await;
    let said = incremental(200).await;
    assert!(said.contains("complete"), "{said}");
    let noted = digest(&node).await;
    incremental(300).await;
    store.verify(None).expect("every backup verifies");

    // The newest full backup and the incremental ones after it reach the noted point.
    let at = noted.0.to_string();
    let (dir, said) = store.restore(&["--to-lsn", &at]);
    assert!(said.expect("restore through the chain").contains("continued by incremental backup"));
    assert_eq!(digest(&start_on(dir.path()).await).await, noted);

    // The retention of the configuration, tried first: a dry run deletes nothing.
    let config = tempfile::NamedTempFile::new().expect("a configuration file");
    std::fs::write(
        config.path(),
        format!("backup:\n  archive:\n    target: {to}\n  retention:\n    keep-full: 1\n    keep-wal: 0s\n"),
    )
    .expect("write the configuration");
    let said = bitark_ok(&["--config", config.path().to_str().unwrap(), "backup", "prune", "--dry-run"]);
    let first_id = first_full["id"].as_str().unwrap();
    assert!(said.contains(&format!("backup {first_id}: would be deleted")), "{said}");
    assert!(said.contains("dry run:") && said.contains("files would be deleted"), "{said}");
    assert!(store.verify(None).expect("a dry run deletes nothing").contains(first_id));

    // Prune to one full backup: the older full one and its incremental go.
    let said = bitark_ok(&["backup", "prune", to, "--keep-full", "1", "--keep-wal", "0s"]);
    assert!(said.contains(&format!("backup {}: deleted", first_full["id"].as_str().unwrap())), "{said}");
    assert!(!said.contains(second_full["id"].as_str().unwrap()), "{said}");
    let verified = store.verify(None).expect("what is left verifies");
    assert!(!verified.contains(first_full["id"].as_str().unwrap()), "{verified}");
    let (dir, said) = store.restore(&[]);
    said.expect("what is left restores");
    assert_eq!(digest(&start_on(dir.path()).await).await, digest(&node).await);
}
