//! Crash safety of the real binary: a node is SIGKILLed at a random moment while
//! concurrent writers mark messages read and unread, one at a time, in batches and in
//! ranges; after each restart on the same data directory every acknowledged write must
//! be there, and nothing that was not sent may appear.
//!
//! Small segments and frequent snapshots make rotation, snapshots and WAL garbage
//! collection happen between kills, so recovery meets snapshots and log tails of many
//! shapes, and a kill can land in the middle of any of them.
//!
//! Each writer owns its users and sends one write at a time, so the expected flag of a
//! key is the one its writer's last acknowledged write gave it. The exception is the
//! write a writer had sent when the node died: it may or may not have been logged, but
//! all of it or none of it.

mod support;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::workload::Write;
use support::{wait_until, Api, CallError, Node};

const ROUNDS: usize = 8;
const WRITERS: u64 = 16;
const USERS_PER_WRITER: u64 = 3;
const MSGS_PER_USER: u64 = 128;
/// Writes acknowledged in a round before its kill point starts, so every round logs some.
const MIN_WRITES_PER_ROUND: u64 = 200;
/// Longest random delay from there to the SIGKILL.
const MAX_KILL_DELAY_MS: u64 = 1500;
/// Most ids in one `POST .../reads/check` while verifying.
const CHECK_CHUNK: usize = 50;

/// The users writer `writer` owns; no other writer touches them.
fn users_of(writer: u64) -> Vec<u64> {
    (0..USERS_PER_WRITER).map(|i| 1000 + writer * 10 + i).collect()
}

/// What one writer saw in one round.
struct WriterRun {
    /// Acknowledged writes in the order sent, each with its LSN.
    acked: Vec<(Write, u64)>,
    /// The write that got no answer because the node died.
    unanswered: Option<Write>,
}

/// Sends random writes one after the other until the node stops answering.
async fn run_writer(api: Api, users: Vec<u64>, mut rng: StdRng, acked_total: Arc<AtomicU64>) -> WriterRun {
    let mut acked = Vec::new();
    loop {
        let write = Write::random(&mut rng, &users, MSGS_PER_USER);
        match write.send(&api).await {
            Ok(lsn) => {
                acked.push((write, lsn));
                acked_total.fetch_add(1, Ordering::Relaxed);
            }
            Err(CallError::Transport(_)) => return WriterRun { acked, unanswered: Some(write) },
            Err(refused) => panic!("{write:?} was refused: {refused}"),
        }
    }
}

/// The expected read flag of every key the writers own, carried across restarts.
struct Model {
    read: BTreeMap<(u64, u64), bool>,
}

impl Model {
    fn new() -> Self {
        let keys = (0..WRITERS).flat_map(users_of).flat_map(|user| (0..MSGS_PER_USER).map(move |msg| (user, msg)));
        Model { read: keys.map(|key| (key, false)).collect() }
    }

    fn apply(&mut self, write: &Write) {
        self.read.extend(write.effects());
    }

    fn marks(&self) -> u64 {
        self.read.values().filter(|read| **read).count() as u64
    }
}

/// The flag of every key of the model, as the node reports it.
async fn read_back(api: &Api, model: &Model) -> BTreeMap<(u64, u64), bool> {
    let mut actual = BTreeMap::new();
    for user in (0..WRITERS).flat_map(users_of) {
        let msgs: Vec<u64> = (0..MSGS_PER_USER).collect();
        for chunk in msgs.chunks(CHECK_CHUNK) {
            let flags = api.check(user, chunk).await.unwrap_or_else(|e| panic!("check user {user}: {e}"));
            assert_eq!(flags.len(), chunk.len(), "one flag per id");
            actual.extend(chunk.iter().zip(flags).map(|(msg, read)| ((user, *msg), read)));
        }
    }
    assert_eq!(actual.len(), model.read.len());
    actual
}

/// Checks a restarted node against the model, after settling each unanswered write into
/// it as wholly applied or not at all. Returns the node's applied LSN.
async fn verify(api: &Api, model: &mut Model, unanswered: &[Write], highest_acked: u64) -> u64 {
    let digest = api.digest().await.expect("digest");
    assert!(
        digest.applied_lsn >= highest_acked,
        "recovered to LSN {} but LSN {highest_acked} was acknowledged",
        digest.applied_lsn
    );
    let actual = read_back(api, model).await;
    for write in unanswered {
        let changes: Vec<_> = write.effects().into_iter().filter(|(key, read)| model.read[key] != *read).collect();
        let applied = changes.iter().filter(|(key, read)| actual[key] == *read).count();
        assert!(
            applied == 0 || applied == changes.len(),
            "unanswered {write:?} applied in part: {applied} of its {} changes",
            changes.len()
        );
        if applied > 0 {
            model.read.extend(changes);
        }
    }
    let wrong: Vec<_> = model.read.iter().filter(|(key, read)| actual[*key] != **read).take(10).collect();
    assert!(
        wrong.is_empty(),
        "flags that differ from the last acknowledged write, as ((user, msg), expected): {wrong:?}"
    );
    assert_eq!(digest.marks, model.marks(), "the node holds marks no writer sent");
    digest.applied_lsn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill_at_random_moments() {
    let seed = std::env::var("CRASH_TEST_SEED").ok().and_then(|seed| seed.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("CRASH_TEST_SEED={seed} repeats these writes and kill delays");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut node = Node::builder()
        .env("BITARK_WAL__SEGMENT_SIZE", "64KiB")
        .env("BITARK_SNAPSHOT__EVERY_RECORDS", 300)
        .env("BITARK_WAL__FSYNC", "batch")
        .start()
        .await;
    let mut model = Model::new();
    let mut unanswered: Vec<Write> = Vec::new();
    let mut highest_acked = 0;
    for round in 0..ROUNDS {
        let api = node.api();
        let applied = verify(&api, &mut model, &unanswered, highest_acked).await;

        let acked_total = Arc::new(AtomicU64::new(0));
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let writer_rng = StdRng::seed_from_u64(rng.gen());
                tokio::spawn(run_writer(api.clone(), users_of(w), writer_rng, acked_total.clone()))
            })
            .collect();
        wait_until(Duration::from_secs(30), "the first writes of the round", async || {
            acked_total.load(Ordering::Relaxed) >= MIN_WRITES_PER_ROUND
        })
        .await;
        // The kill point, drawn per round: where in the load the crash lands.
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..=MAX_KILL_DELAY_MS))).await;
        node.sigkill();

        unanswered.clear();
        let mut lsns = Vec::new();
        for writer in writers {
            let run = writer.await.expect("writer task");
            for (write, lsn) in &run.acked {
                model.apply(write);
                lsns.push(*lsn);
            }
            unanswered.extend(run.unanswered);
        }
        lsns.sort_unstable();
        assert!(lsns.windows(2).all(|pair| pair[0] < pair[1]), "round {round}: one LSN answered to two writes");
        assert!(lsns[0] > applied, "round {round}: LSN {} answered after recovery to LSN {applied}", lsns[0]);
        highest_acked = *lsns.last().expect("writes in every round");
        eprintln!("round {round}: {} writes acknowledged up to LSN {highest_acked}", lsns.len());

        node.restart().await;
    }
    verify(&node.api(), &mut model, &unanswered, highest_acked).await;

    // The rounds must have exercised snapshots and WAL garbage collection.
    let info = node.api().info().await.expect("info");
    assert!(info["recovery"]["snapshotLsn"].as_u64() > Some(0), "no snapshot was taken: {info}");
    let first_segment = node.data_dir().join("wal").join(format!("{:020}.wal", 1));
    assert!(!first_segment.exists(), "no WAL segment was garbage-collected");
}
