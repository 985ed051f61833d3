//! The log keeps working when the process has no file descriptor left: rotation uses a
//! spare segment opened ahead of time and a directory kept open, and when even the next
//! spare cannot be made, records go on into the current segment. A test binary of its
//! own, because it lowers the open-files limit of the whole process.

use bitark_common::{Command, Epoch, Lsn, Record};
use bitark_infra::wal::{list_segments, replay, Applier, GroupCommit};
use bitark_infra::{FsyncPolicy, Metrics, WalConfig};
use std::fs::File;

struct Discard;

impl Applier for Discard {
    fn apply(&mut self, _: &[Record]) {}
}

#[test]
fn writes_and_a_rotation_need_no_new_file_descriptor() {
    let dir = tempfile::tempdir().unwrap();
    let config =
        WalConfig { segment_size: bytesize::ByteSize::kib(64), fsync: FsyncPolicy::Batch, ..WalConfig::default() };
    let metrics = Metrics::standalone();
    let wal = GroupCommit::start(dir.path(), &config, Lsn(1), Epoch(1), Discard, metrics.clone()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let write = |msg: u64| {
        let command = Command::MarkBatch { user: 1, msgs: (msg * 100..msg * 100 + 100).collect() };
        runtime.block_on(async { wal.propose(command).unwrap().await.unwrap() })
    };
    assert_eq!(write(0), Ok(Lsn(1)));
    // Counted by the writer itself: looking at the directory would take a descriptor.
    let before = metrics.wal_segments.get();

    // Take every descriptor the process may still open.
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct it is given.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) }, 0);
    let lowered = libc::rlimit { rlim_cur: 256.min(limit.rlim_cur), rlim_max: limit.rlim_max };
    // SAFETY: setrlimit only reads the struct it is given.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lowered) }, 0);
    let mut hogs = Vec::new();
    while let Ok(file) = File::open("/dev/null") {
        hogs.push(file);
    }
    assert_eq!(File::open("/dev/null").unwrap_err().raw_os_error(), Some(libc::EMFILE));

    // 100-id batches are 852 bytes: 300 of them span four 64 KiB segments.
    for msg in 1..300 {
        assert_eq!(write(msg), Ok(Lsn(msg + 1)), "write {msg} with no descriptor left");
    }
    let after = metrics.wal_segments.get();
    assert!(after > before, "no rotation happened with no descriptor left ({before} -> {after} segments)");

    // Descriptors again: the log rotates as usual and replays whole.
    drop(hogs);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    assert_eq!(list_segments(dir.path()).unwrap().len() as i64, after);
    for msg in 300..400 {
        assert_eq!(write(msg), Ok(Lsn(msg + 1)));
    }
    wal.shutdown();
    let outcome = replay(dir.path(), Lsn::ZERO, |_| {}).unwrap();
    assert_eq!(outcome.wal_end, Lsn(400));
}
