//! Start-up and shutdown of the real binary: graceful stop under load, damaged and
//! torn logs, a damaged snapshot, a second process on a locked data directory, and a
//! bad configuration file.

mod support;

use reqwest::StatusCode;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::{wait_until, Api, CallError, Node, PROCESS_TIMEOUT};

/// Encoded size of a single mark-read record: 24 header + 16 payload + 4 crc.
const SINGLE_MARK_RECORD: u64 = 52;
/// Most ids in one `POST .../reads/check`.
const CHECK_CHUNK: usize = 500;

/// Path of the WAL segment whose first record has `first_lsn`.
fn segment(data_dir: &Path, first_lsn: u64) -> PathBuf {
    data_dir.join("wal").join(format!("{first_lsn:020}.wal"))
}

fn flip_byte(path: &Path, offset: u64) {
    let mut bytes = fs::read(path).expect("read file to damage");
    bytes[offset as usize] ^= 0x5A;
    fs::write(path, &bytes).expect("write damaged file");
}

/// Marks `1..=count` read for `user`, one write each, and checks each got the next LSN.
async fn mark_one_by_one(api: &Api, user: u64, count: u64) {
    for msg in 1..=count {
        assert_eq!(api.mark_read(user, msg).await.expect("mark read"), msg, "one record per write, LSNs from 1");
    }
}

/// Read flags of `msgs` for `user`, asked in chunks.
async fn flags(api: &Api, user: u64, msgs: &[u64]) -> Vec<bool> {
    let mut out = Vec::with_capacity(msgs.len());
    for chunk in msgs.chunks(CHECK_CHUNK) {
        out.extend(api.check(user, chunk).await.expect("check"));
    }
    out
}

/// What one writer saw while the node was being stopped.
#[derive(Default)]
struct Stopped {
    /// Messages answered 200, each with its LSN.
    acked: Vec<(u64, u64)>,
    /// The last message, answered 503 or not at all. Either way it must not be stored:
    /// a graceful stop answers every request it has taken in.
    unanswered: Option<u64>,
    /// Whether that answer was a 503.
    refused: bool,
}

/// Marks messages `0, 1, 2, ...` of `user` read until the node stops accepting writes.
async fn write_until_stopped(api: Api, user: u64) -> Stopped {
    let mut seen = Stopped::default();
    for msg in 0.. {
        match api.mark_read(user, msg).await {
            Ok(lsn) => seen.acked.push((msg, lsn)),
            Err(CallError::Status(StatusCode::SERVICE_UNAVAILABLE, _)) => {
                (seen.unanswered, seen.refused) = (Some(msg), true);
                break;
            }
            Err(CallError::Transport(_)) => {
                seen.unanswered = Some(msg);
                break;
            }
            Err(other) => panic!("user {user}, message {msg}: {other}"),
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_write_load_exits_zero_and_keeps_every_acknowledged_write() {
    const WRITERS: u64 = 8;
    let mut node = Node::builder().start().await;
    let api = node.api();
    let writers: Vec<_> = (0..WRITERS).map(|user| tokio::spawn(write_until_stopped(api.clone(), user))).collect();
    wait_until(Duration::from_secs(30), "writes to be acknowledged", async || {
        api.digest().await.is_ok_and(|digest| digest.applied_lsn >= 300)
    })
    .await;
    node.sigterm();
    let status = node.wait_exit(PROCESS_TIMEOUT).await;
    assert_eq!(status.code(), Some(0), "graceful stop under load:\n{}", node.stderr_text());
    let mut runs = Vec::new();
    for writer in writers {
        runs.push(writer.await.expect("writer task"));
    }

    let acked: usize = runs.iter().map(|run| run.acked.len()).sum();
    let refused = runs.iter().filter(|run| run.refused).count();
    eprintln!("{acked} writes acknowledged; {refused} writers refused with 503, the others cut off");

    node.restart().await;
    let api = node.api();
    let mut highest_acked = 0;
    for (user, run) in (0..WRITERS).zip(&runs) {
        let msgs: Vec<u64> = run.acked.iter().map(|(msg, _)| *msg).collect();
        let read = flags(&api, user, &msgs).await;
        let lost: Vec<u64> = msgs.iter().zip(&read).filter(|(_, read)| !**read).map(|(msg, _)| *msg).collect();
        assert!(lost.is_empty(), "user {user}: acknowledged marks lost: {lost:?}");
        if let Some(msg) = run.unanswered {
            let stored = api.check(user, &[msg]).await.expect("check")[0];
            assert!(!stored, "user {user}: mark {msg} stored, but answered 503 or not at all (503: {})", run.refused);
        }
        highest_acked = run.acked.iter().map(|(_, lsn)| *lsn).fold(highest_acked, u64::max);
    }
    let info = api.info().await.expect("info");
    let applied = info["appliedLsn"].as_u64().expect("appliedLsn");
    let snapshot = info["recovery"]["snapshotLsn"].as_u64().expect("recovery.snapshotLsn");
    let replayed = info["recovery"]["recordsReplayed"].as_u64().expect("recovery.recordsReplayed");
    assert!(applied >= highest_acked, "recovered to LSN {applied}, LSN {highest_acked} was acknowledged");
    assert_eq!(snapshot + replayed, applied, "recovery must load or replay every record: {info}");
}

#[tokio::test]
async fn a_damaged_record_followed_by_valid_ones_stops_start_up_naming_file_and_offset() {
    let mut node = Node::builder().start().await;
    mark_one_by_one(&node.api(), 7, 50).await;
    assert!(node.stop().await.success(), "{}", node.stderr_text());
    let segment = segment(node.data_dir(), 1);
    assert_eq!(fs::metadata(&segment).unwrap().len(), 50 * SINGLE_MARK_RECORD, "50 single-mark records");
    // Record 10: 40 valid records follow it, so this cannot pass for a torn tail.
    let damaged = 9 * SINGLE_MARK_RECORD;
    flip_byte(&segment, damaged + 30);
    let before = fs::read(&segment).unwrap();

    node.respawn();
    let status = node.wait_exit(PROCESS_TIMEOUT).await;
    assert!(!status.success(), "start-up on a corrupt log must fail");
    let stderr = node.stderr_text();
    let expected = format!("start-up failed: corruption in {} at byte offset {damaged}", segment.display());
    assert!(stderr.contains(&expected), "expected `{expected}` in:\n{stderr}");
    assert_eq!(fs::read(&segment).unwrap(), before, "a corrupt log is left as found, for the operator");
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_every_record_before_it_survives() {
    let mut node = Node::builder().start().await;
    mark_one_by_one(&node.api(), 7, 50).await;
    assert!(node.stop().await.success(), "{}", node.stderr_text());
    let segment = segment(node.data_dir(), 1);
    let full = fs::metadata(&segment).unwrap().len();
    assert_eq!(full, 50 * SINGLE_MARK_RECORD, "50 single-mark records");
    fs::OpenOptions::new().write(true).open(&segment).unwrap().set_len(full - 5).unwrap();

    node.restart().await;
    assert!(node.stderr_text().contains("cutting torn tail"), "{}", node.stderr_text());
    let api = node.api();
    let msgs: Vec<u64> = (1..=50).collect();
    let mut expected = vec![true; 49];
    expected.push(false);
    assert_eq!(flags(&api, 7, &msgs).await, expected, "records 1..=49 kept, the torn 50th dropped");
    assert_eq!(api.digest().await.unwrap().applied_lsn, 49);

    // The log goes on from the cut without a gap, and reopens cleanly.
    assert_eq!(api.mark_read(7, 51).await.unwrap(), 50);
    assert!(node.stop().await.success(), "{}", node.stderr_text());
    assert_eq!(
        fs::metadata(&segment).unwrap().len(),
        50 * SINGLE_MARK_RECORD,
        "the file was cut at the last good record and holds one new record after it"
    );
    node.restart().await;
    let api = node.api();
    assert_eq!(api.digest().await.unwrap().applied_lsn, 50);
    assert_eq!(flags(&api, 7, &[49, 50, 51]).await, [true, false, true]);
}

#[tokio::test]
async fn a_damaged_newest_snapshot_falls_back_to_the_older_one_and_the_log() {
    let mut node = Node::builder().env("BITARK_WAL__SEGMENT_SIZE", "64KiB").start().await;
    let api = node.api();
    // 100-id batches are 840-byte records: about 78 to a 64KiB segment, so segments
    // rotate, and the first is garbage-collected once the older snapshot exists.
    let batch = |i: u64| (i * 100..i * 100 + 100).collect::<Vec<u64>>();
    for i in 0..100 {
        api.mark_batch(1 + i % 3, &batch(i)).await.expect("batch");
    }
    let older = api.snapshot().await.expect("older snapshot");
    for i in 100..200 {
        api.mark_batch(1 + i % 3, &batch(i)).await.expect("batch");
    }
    // Clear marks the older snapshot holds: replaying from it must clear them again.
    for msg in (0..100).step_by(2) {
        api.mark_unread(1, msg).await.expect("unread");
    }
    let newer = api.snapshot().await.expect("newer snapshot");
    for msg in 0..20 {
        api.mark_read(4, msg).await.expect("mark read");
    }
    let before = api.digest().await.expect("digest");
    assert!(node.stop().await.success(), "{}", node.stderr_text());

    let snapshots = node.data_dir().join("snapshots");
    assert!(snapshots.join(&older.file).exists(), "the older snapshot is kept (snapshot.keep = 2)");
    assert!(!segment(node.data_dir(), 1).exists(), "the log no longer reaches back to LSN 1");
    let newest = snapshots.join(&newer.file);
    flip_byte(&newest, fs::metadata(&newest).unwrap().len() / 2);

    node.restart().await;
    let api = node.api();
    let after = api.digest().await.expect("digest");
    assert_eq!(
        (after.applied_lsn, after.users, after.marks, &after.digest),
        (before.applied_lsn, before.users, before.marks, &before.digest),
        "state after falling back differs from the state before the stop"
    );
    let info = api.info().await.expect("info");
    assert_eq!(info["recovery"]["skippedSnapshots"], 1, "{info}");
    assert_eq!(info["recovery"]["snapshotLsn"], older.lsn, "{info}");
    assert_eq!(info["recovery"]["recordsReplayed"], before.applied_lsn - older.lsn, "{info}");
    assert_eq!(flags(&api, 1, &[0, 1, 2, 3]).await, [false, true, false, true]);
}

#[tokio::test]
async fn a_second_process_on_the_same_data_dir_is_refused_while_the_first_serves() {
    let first = Node::builder().start().await;
    let api = first.api();
    assert_eq!(api.mark_read(1, 1).await.unwrap(), 1);

    let mut second = first.same_dir().spawn();
    let status = second.wait_exit(PROCESS_TIMEOUT).await;
    assert!(!status.success(), "a second process on a locked data directory must not start");
    assert!(second.stderr_text().contains("in use"), "{}", second.stderr_text());

    assert_eq!(api.readiness().await.unwrap(), StatusCode::OK);
    assert_eq!(api.mark_read(1, 2).await.unwrap(), 2);
    assert_eq!(flags(&api, 1, &[1, 2]).await, [true, true]);
}

#[tokio::test]
async fn an_unknown_key_in_the_config_file_stops_start_up_naming_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken-application.yml");
    fs::write(&file, "wal:\n  segmnt-size: 1MiB\n").unwrap();
    let mut node = Node::builder().arg("--config").arg(file.to_str().unwrap()).spawn();
    let status = node.wait_exit(PROCESS_TIMEOUT).await;
    assert!(!status.success(), "an unknown key must stop start-up");
    let stderr = node.stderr_text();
    assert!(stderr.contains("segmnt-size"), "the key is named:\n{stderr}");
    assert!(stderr.contains("broken-application.yml"), "the file is named:\n{stderr}");
    assert!(!stderr.contains("listening on"), "configuration is checked before the listener opens:\n{stderr}");
}
