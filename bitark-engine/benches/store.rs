//! `ReadStore` at its target shape: 1,000,000 users with 20 random marks each.
//!
//! ```text
//! cargo bench -p bitark-engine --bench store
//! ```
//!
//! Lookups run before writes, which grow the store. Users are picked at random over the
//! whole store, so most figures include the cache misses a real lookup pays; `hit_cached`
//! shows the same lookup without them.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bitark_common::Command;
use bitark_engine::store::ReadStore;
use criterion::{criterion_group, criterion_main, Criterion};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USERS: usize = 1_000_000;
const MARKS_PER_USER: usize = 20;
const BATCH: usize = 100;

struct Fixture {
    store: ReadStore,
    users: Vec<u64>,
    /// One (user, msg) pair per user that the store holds.
    hits: Vec<(u64, u64)>,
}

fn fixture(rng: &mut StdRng) -> Fixture {
    let store = ReadStore::new();
    let mut users = Vec::with_capacity(USERS);
    let mut hits = Vec::with_capacity(USERS);
    for _ in 0..USERS {
        let user: u64 = rng.gen();
        let msgs: Vec<u64> = (0..MARKS_PER_USER).map(|_| u64::from(rng.gen::<u32>())).collect();
        hits.push((user, msgs[rng.gen_range(0..MARKS_PER_USER)]));
        store.apply(&Command::MarkBatch { user, msgs });
        users.push(user);
    }
    // Look users up in an order unrelated to the one they were inserted in.
    for i in (1..hits.len()).rev() {
        hits.swap(i, rng.gen_range(0..=i));
    }
    Fixture { store, users, hits }
}

fn bench_store(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(11);
    let Fixture { store, users, hits } = fixture(&mut rng);

    let mut reads = c.benchmark_group("is_read");
    reads.bench_function("hit", |b| {
        let mut next = hits.iter().cycle();
        b.iter(|| {
            let &(user, msg) = next.next().expect("cycle never ends");
            assert!(store.is_read(black_box(user), black_box(msg)));
        })
    });
    // The same lookup over 1,024 users that stay in cache: the cost without memory stalls.
    reads.bench_function("hit_cached", |b| {
        let mut next = hits[..1024].iter().cycle();
        b.iter(|| {
            let &(user, msg) = next.next().expect("cycle never ends");
            assert!(store.is_read(black_box(user), black_box(msg)));
        })
    });
    // A present user and an absent id: the packed scan runs to the end of the set.
    let misses: Vec<(u64, u64)> =
        (0..USERS).map(|_| (users[rng.gen_range(0..USERS)], u64::from(rng.gen::<u32>()))).collect();
    reads.bench_function("miss", |b| {
        let mut next = misses.iter().cycle();
        b.iter(|| {
            let &(user, msg) = next.next().expect("cycle never ends");
            black_box(store.is_read(black_box(user), black_box(msg)))
        })
    });
    reads.finish();

    let mut writes = c.benchmark_group("apply");
    writes.bench_function("mark_read", |b| {
        b.iter_batched(
            || Command::MarkRead { user: users[rng.gen_range(0..USERS)], msg: u64::from(rng.gen::<u32>()) },
            |cmd| store.apply(&cmd),
            criterion::BatchSize::SmallInput,
        )
    });
    // Each batch goes to a 20-mark user and is unread again outside the timed section,
    // so every measured batch meets the same starting shape (120 ids stays packed).
    writes.bench_function("mark_batch_100", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let user = users[rng.gen_range(0..USERS)];
                let msgs: Vec<u64> = (0..BATCH).map(|_| u64::from(rng.gen::<u32>())).collect();
                let cmd = Command::MarkBatch { user, msgs };
                let started = Instant::now();
                store.apply(black_box(&cmd));
                timed += started.elapsed();
                let Command::MarkBatch { msgs, .. } = cmd else { unreachable!() };
                for msg in msgs {
                    store.apply(&Command::MarkUnread { user, msg });
                }
            }
            timed
        })
    });
    writes.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench_store
}
criterion_main!(benches);
