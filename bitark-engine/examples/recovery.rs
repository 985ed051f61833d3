//! Recovery benchmark: how long a node takes to come back with 50,000,000 marks held as
//! a snapshot plus a 1,000,000-record WAL tail.
//!
//! `cargo run --release -p bitark-engine --example recovery -- [users] [marks-per-user] [tail-records]`
//! (defaults 2500000 20 1000000). Builds the data directory once (in a temp dir), then
//! times `Node::open` three times and reports each.
//!
//! `RECOVERY_DATA_DIR=D` builds in `D` and keeps it, with the digest in `D.digest`;
//! `RECOVERY_BUILD_ONLY=1` stops after building; `RECOVERY_REUSE=1` skips the build
//! and opens `D` once in this fresh process, reporting the resident memory the
//! recovered state takes and the rate in GB/s of that state.

use bitark_common::Command;
use bitark_engine::{EngineConfig, Node};
use bitark_infra::{FsyncPolicy, Metrics};
use rand::{Rng, SeedableRng};
use std::time::Instant;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args: Vec<u64> = std::env::args().skip(1).map(|a| a.parse().expect("numeric argument")).collect();
    let users = args.first().copied().unwrap_or(2_500_000);
    let per_user = args.get(1).copied().unwrap_or(20);
    let tail = args.get(2).copied().unwrap_or(1_000_000);
    // RECOVERY_DATA_DIR keeps the data directory (bench/backup.sh backs it up).
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = std::env::var_os("RECOVERY_DATA_DIR").map_or_else(|| dir.path().to_path_buf(), Into::into);
    let mut config = EngineConfig::default();
    config.node.data_dir = data_dir;
    config.wal.fsync = FsyncPolicy::Never;
    config.snapshot.every_records = 0;
    config.snapshot.every = std::time::Duration::ZERO;
    config.limits.max_batch = per_user.max(1) as usize;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();

    let digest_file = config.node.data_dir.with_extension("digest");
    if std::env::var_os("RECOVERY_REUSE").is_some() {
        let before = resident_bytes();
        let started = Instant::now();
        let node = Node::open(config.clone(), Metrics::standalone()).expect("recover");
        let elapsed = started.elapsed().as_secs_f64();
        let state = resident_bytes().saturating_sub(before);
        let report = node.recovery().clone();
        if let Ok(want) = std::fs::read_to_string(&digest_file) {
            assert_eq!(format!("{:?}", node.digest()), want, "recovered state differs");
        }
        let load = report.snapshot_duration.as_secs_f64();
        println!(
            "recovery: {elapsed:.2} s for {} marks of {} users: snapshot (LSN {}) loaded in {load:.2} s, {} records \
             replayed in {:.2} s; state {:.2} GB resident: {:.2} GB/s of state overall, {:.2} GB/s for the snapshot",
            node.mark_count(),
            node.user_count(),
            report.snapshot_lsn,
            report.replayed,
            elapsed - load,
            state as f64 / 1e9,
            state as f64 / 1e9 / elapsed,
            state as f64 / 1e9 / load
        );
        node.shutdown();
        return;
    }
    let started = Instant::now();
    let node = Node::open(config.clone(), Metrics::standalone()).expect("open");
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let loaded: Vec<Command> = (0..users)
        .map(|user| Command::MarkBatch {
            user,
            msgs: (0..per_user).map(|_| rng.gen_range(0..u32::MAX as u64)).collect(),
        })
        .collect();
    runtime.block_on(write_many(&node, loaded));
    let snapshot = runtime.block_on(node.snapshot_now()).expect("snapshot");
    let tail_commands: Vec<Command> = (0..tail)
        .map(|_| Command::MarkRead { user: rng.gen_range(0..users), msg: rng.gen_range(0..u32::MAX as u64) })
        .collect();
    runtime.block_on(write_many(&node, tail_commands));
    let marks = node.mark_count();
    let digest = node.digest();
    node.shutdown();
    drop(node);
    println!(
        "built: {users} users, {marks} marks, snapshot {} MiB at LSN {}, {tail} tail records, in {:.1} s",
        snapshot.size >> 20,
        snapshot.lsn,
        started.elapsed().as_secs_f64()
    );
    if std::env::var_os("RECOVERY_DATA_DIR").is_some() {
        std::fs::write(&digest_file, format!("{digest:?}")).expect("write the digest");
    }
    if std::env::var_os("RECOVERY_BUILD_ONLY").is_some() {
        return;
    }

    for round in 1..=3 {
        let started = Instant::now();
        let node = Node::open(config.clone(), Metrics::standalone()).expect("recover");
        let elapsed = started.elapsed();
        let report = node.recovery().clone();
        assert_eq!(node.digest(), digest, "recovered state differs");
        println!(
            "recovery {round}: {:.2} s (snapshot LSN {}, {} records replayed, {} marks)",
            elapsed.as_secs_f64(),
            report.snapshot_lsn,
            report.replayed,
            node.mark_count()
        );
        node.shutdown();
    }
}

/// Writes every command, keeping up to 4096 in flight so group commit batches them.
async fn write_many(node: &Node, commands: Vec<Command>) {
    let mut in_flight: tokio::task::JoinSet<Result<_, bitark_engine::WriteError>> = tokio::task::JoinSet::new();
    for command in commands {
        if in_flight.len() == 4096 {
            in_flight.join_next().await.expect("a write").expect("task").expect("write");
        }
        let node = node.clone();
        in_flight.spawn(async move { node.write(command).await });
    }
    while let Some(done) = in_flight.join_next().await {
        done.expect("task").expect("write");
    }
}

/// Resident memory of this process (`/proc/self/statm`), 0 where it cannot be read.
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm.split_whitespace().nth(1).and_then(|pages| pages.parse::<u64>().ok()).unwrap_or(0) * 4096
}
