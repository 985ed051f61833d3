//! The ownership check every request of a sharded node pays: [`ReadStore::owned`] (one
//! hash of the user id and a search of the owned ranges) and the per-range request
//! counter, against the same call on a node that is not sharded.
//!
//! ```text
//! cargo bench -p bitark-engine --bench ownership
//! ```
//!
//! `ranges_N` is a group owning N of 2N equal ranges (every other one), so half of the
//! users fall outside and the search runs to its end for them too.

use std::hint::black_box;

use bitark_common::{Command, GroupId, HashRange, Ownership, Partitioner};
use bitark_engine::store::{Owned, ReadStore};
use criterion::{criterion_group, criterion_main, Criterion};
use prometheus::{IntCounter, IntCounterVec, Opts};

/// Users the check cycles over: enough that the branch predictor cannot learn them.
const USERS: u64 = 4096;

fn owning(ranges: usize) -> ReadStore {
    let store = ReadStore::new();
    let width = (1u128 << 64) / (2 * ranges as u128);
    let owned = (0..ranges)
        .map(|i| {
            let start = 2 * i as u128 * width;
            (HashRange::new(start as u64, start + width).expect("a range"), 1)
        })
        .collect();
    let group = GroupId::new("a").expect("a group name");
    store.apply(&Command::SetOwnership(Ownership {
        group,
        map_version: 1,
        partitioner: Partitioner::SplitMix64,
        ranges: owned,
        frozen: Vec::new(),
    }));
    store
}

fn counters(ranges: usize) -> Vec<IntCounter> {
    let family = IntCounterVec::new(Opts::new("range_requests_total", "requests by range"), &["range"])
        .expect("a counter family");
    (0..ranges).map(|i| family.with_label_values(&[&i.to_string()])).collect()
}

fn bench_owned(c: &mut Criterion) {
    let mut group = c.benchmark_group("owned");
    let plain = ReadStore::new();
    group.bench_function("unsharded", |b| {
        let mut user = 0u64;
        b.iter(|| {
            user = (user + 1) % USERS;
            black_box(plain.owned(black_box(user)))
        })
    });
    for ranges in [1usize, 8, 128] {
        let store = owning(ranges);
        let counted = counters(ranges);
        group.bench_function(format!("ranges_{ranges}"), |b| {
            let mut user = 0u64;
            b.iter(|| {
                user = (user + 1) % USERS;
                let owned = store.owned(black_box(user));
                if let Owned::Range { index, .. } = owned {
                    counted[index].inc();
                }
                black_box(owned)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_owned);
criterion_main!(benches);
