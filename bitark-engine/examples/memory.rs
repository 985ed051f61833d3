//! How much memory `ReadStore` takes per mark and per user.
//!
//! ```text
//! cargo run --release -p bitark-engine --example memory
//! ```
//!
//! Each case runs in a fresh child process of this same binary, so memory one case
//! frees cannot flatter the next. A case builds a store of 1,000,000 users with random
//! 64-bit ids and reports the growth of the resident set (`VmRSS`) across the build. The
//! allocator is mimalloc, as in the server. Ids come from a seeded generator as they are
//! needed, so the input itself occupies no memory.
//!
//! Every case is measured twice. *After build* is the growth the moment the last command
//! is applied; it still counts the hash-table arrays the shards outgrew, which mimalloc
//! keeps for reuse and returns to the OS only after its purge delay (1 s by default, and
//! only once later allocator activity notices). *Settled* runs the same build with
//! `MIMALLOC_PURGE_DELAY=0`, so freed pages go back at once: the footprint a running
//! server has a moment later.

use std::process::Command as Process;
use std::time::Instant;

use bitark_common::Command;
use bitark_engine::store::ReadStore;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USERS: u64 = 1_000_000;

struct Case {
    name: &'static str,
    marks_per_user: usize,
    /// Message ids are drawn uniformly below this.
    msg_below: u64,
    /// How the marks arrive.
    arrival: Arrival,
    /// The most bytes per mark the store may take, where there is a target.
    budget: Option<f64>,
}

#[derive(Clone, Copy, PartialEq)]
enum Arrival {
    /// Each user's marks as one `MarkBatch`.
    Batch,
    /// Single `MarkRead`s, every user in turn, round after round.
    Rounds,
    /// Single `MarkRead`s, each for a user drawn at random: the order live traffic has,
    /// in which users end up with about, not exactly, `marks_per_user` marks.
    RandomUsers,
}

const CASES: [Case; 6] = [
    Case {
        name: "random<2^32 x20",
        marks_per_user: 20,
        msg_below: 1 << 32,
        arrival: Arrival::Batch,
        budget: Some(6.0),
    },
    Case {
        name: "dense<100000 x20",
        marks_per_user: 20,
        msg_below: 100_000,
        arrival: Arrival::Batch,
        budget: Some(5.0),
    },
    Case { name: "random<2^32 x1", marks_per_user: 1, msg_below: 1 << 32, arrival: Arrival::Batch, budget: None },
    Case { name: "random<2^32 x2", marks_per_user: 2, msg_below: 1 << 32, arrival: Arrival::Batch, budget: None },
    Case {
        name: "random<2^32 x20 in rounds",
        marks_per_user: 20,
        msg_below: 1 << 32,
        arrival: Arrival::Rounds,
        budget: Some(8.0),
    },
    Case {
        name: "random<2^32 ~20 random users",
        marks_per_user: 20,
        msg_below: 1 << 32,
        arrival: Arrival::RandomUsers,
        budget: Some(8.0),
    },
];

fn main() {
    match std::env::args().nth(1) {
        Some(index) => run_case(&CASES[index.parse::<usize>().expect("case index")]),
        None => report(),
    }
}

/// Runs every case in child processes and prints one table.
fn report() {
    println!("bytes per mark and per user: right after the build | settled (see the module doc)");
    println!(
        "{:<30} {:>9} {:>10} | {:>10} {:>10} | {:>10} {:>10} | {:>6} {:>7}",
        "case", "users", "marks", "B/mark", "B/user", "B/mark", "B/user", "target", "build s"
    );
    for (index, case) in CASES.iter().enumerate() {
        let now = run_child(index, case, false);
        let settled = run_child(index, case, true);
        assert_eq!((now.users, now.marks), (settled.users, settled.marks), "both runs build the same store");
        let target = case.budget.map_or("-".to_string(), |b| format!("<= {b}"));
        println!(
            "{:<30} {:>9} {:>10} | {:>10.2} {:>10.1} | {:>10.2} {:>10.1} | {:>6} {:>7.1}",
            case.name,
            now.users,
            now.marks,
            now.bytes / now.marks as f64,
            now.bytes / now.users as f64,
            settled.bytes / settled.marks as f64,
            settled.bytes / settled.users as f64,
            target,
            now.secs
        );
    }
}

struct Measured {
    users: u64,
    marks: u64,
    bytes: f64,
    secs: f64,
}

/// Runs case `index` in a child process, with freed pages returned at once if `settle`.
fn run_child(index: usize, case: &Case, settle: bool) -> Measured {
    let exe = std::env::current_exe().expect("path of this example");
    let mut child = Process::new(exe);
    child.arg(index.to_string());
    if settle {
        child.env("MIMALLOC_PURGE_DELAY", "0");
    }
    let out = child.output().expect("run a case");
    assert!(out.status.success(), "case {} failed: {}", case.name, String::from_utf8_lossy(&out.stderr));
    let line = String::from_utf8(out.stdout).expect("utf-8 output");
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [users, marks, bytes, secs] = fields[..] else { panic!("unexpected output {line:?}") };
    Measured {
        users: users.parse().expect("users"),
        marks: marks.parse().expect("marks"),
        bytes: bytes.parse().expect("bytes"),
        secs: secs.parse().expect("seconds"),
    }
}

/// Builds one case's store and prints `users marks rss_growth_bytes build_seconds`.
fn run_case(case: &Case) {
    let store = ReadStore::new();
    let mut rng = StdRng::seed_from_u64(7);
    let before = resident_bytes();
    let started = Instant::now();
    match case.arrival {
        Arrival::Batch => {
            for index in 0..USERS {
                let msgs = (0..case.marks_per_user).map(|_| rng.gen_range(0..case.msg_below)).collect();
                store.apply(&Command::MarkBatch { user: user_id(index), msgs });
            }
        }
        Arrival::Rounds => {
            for _ in 0..case.marks_per_user {
                for index in 0..USERS {
                    let msg = rng.gen_range(0..case.msg_below);
                    store.apply(&Command::MarkRead { user: user_id(index), msg });
                }
            }
        }
        Arrival::RandomUsers => {
            for _ in 0..USERS * case.marks_per_user as u64 {
                let (index, msg) = (rng.gen_range(0..USERS), rng.gen_range(0..case.msg_below));
                store.apply(&Command::MarkRead { user: user_id(index), msg });
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let grown = resident_bytes().saturating_sub(before);
    println!("{} {} {} {secs}", store.user_count(), store.mark_count(), grown);
}

/// A random-looking 64-bit user id for each index (splitmix64), recomputed rather than
/// stored so that no id list counts against the store.
fn user_id(index: u64) -> u64 {
    let mut z = index.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The resident set size of this process, from `/proc/self/status`.
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("a VmRSS line");
    let kib: u64 = line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("VmRSS in kB");
    kib * 1024
}
