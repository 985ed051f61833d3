//! [`ReadStore`]: every user's read set in memory, sharded by user.
//!
//! # Layout
//! 256 shards, each behind its own `RwLock`. A shard keeps two tables, and a user is in
//! at most one of them:
//! - `packed`: a `hashbrown::HashTable<EntryRef>` of packed entries (see
//!   [`crate::readset`]), which live back to back in the shard's [`pages`](self::pages).
//!   The key sits inside the entry, so a slot is a 4-byte reference; hashbrown runs at
//!   44–88% load, which makes slot size a large share of a small user's cost.
//! - `roaring`: `(user, RoaringTreemap)` pairs for the few users past the packed limit.
//!
//! A table that outgrows itself is rehashed under its shard's write lock, reading every
//! entry's key; at 10^8 users that stalls 1/256 of users for tens of milliseconds, the
//! price of not keeping keys in the slots. `examples/memory.rs` measures the footprint.
//!
//! - [`keys`](self::keys): the id hashing that picks a user's shard and its entry key.
//! - [`pages`](self::pages): where a shard's packed entries are held.
//! - [`digest`](self::digest): the order-independent digest of the contents.
//! - [`snapshot`](self::snapshot): a shard's entries as snapshot chunks, and back.
//!
//! # Whole-store walks
//! Snapshots and the digest visit every user. The single writer thread applies every
//! write in LSN order, so whatever holds a shard's lock holds up all writes, not only
//! that shard's. [`ReadStore::walk_shard`] therefore never holds a lock for a whole
//! shard: it lists the shard's users under the lock (a copy of their keys), then visits
//! them [`WALK_CHUNK`] at a time, taking the read lock again for each chunk, and encodes
//! large sets from a copy taken under the lock. Each user is seen at one instant, which
//! is all a fuzzy snapshot needs (every command changes one user); users that arrive
//! after the listing came with records after the walk began, which the log replays.
//!
//! # Counts
//! `user_count` and `mark_count` read two atomics. Each shard also keeps its own counts
//! under its lock, so that `clear` subtracts exactly what it drops.

mod digest;
mod keys;
mod pages;
mod ranges;
mod snapshot;

pub(crate) use snapshot::LoadError;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bitark_common::{Command, Ownership};
use hashbrown::HashTable;
use roaring::RoaringTreemap;

use self::digest::DigestSum;
pub use self::digest::StoreDigest;
use self::keys::{key_of_entry, table_hash, Slot, SHARDS};
use self::pages::{EntryRef, Pages};
pub use self::snapshot::EncodedChunk;
pub use crate::readset::SetView;
use crate::readset::{self, Edit, NewForm, Outcome, PACKED_MAX};

/// The read state of every user: who has read which message ids.
pub struct ReadStore {
    /// Critical sections are short and synchronous and reads far outnumber writes, so a
    /// std `RwLock` per shard; no call holds two of them or holds one across an await.
    shards: Box<[RwLock<Shard>]>,
    /// Sum of the shards' `users`, kept so that the total is O(1) to read.
    users: AtomicU64,
    /// Sum of the shards' `marks`.
    marks: AtomicU64,
    /// The ranges of the shard map this node's group serves, as its log last set them;
    /// `None` on a node that is not sharded. Read on every request, set by the log.
    ownership: arc_swap::ArcSwapOption<Ownership>,
}

#[derive(Default)]
struct Shard {
    /// Where each packed user's entry sits in `pages`.
    packed: HashTable<EntryRef>,
    pages: Pages,
    roaring: HashTable<(u64, RoaringTreemap)>,
    users: u64,
    marks: u64,
}

/// Users visited under one hold of a shard's read lock by [`ReadStore::walk_shard`].
pub const WALK_CHUNK: usize = 32;

/// How one operation changed a shard's counts.
#[derive(Default)]
struct Delta {
    users: i64,
    added: u64,
    removed: u64,
}

impl Delta {
    fn of(existed: bool, outcome: &Outcome) -> Self {
        let users = match (&outcome.form, existed) {
            (NewForm::Empty, true) => -1,
            (NewForm::Packed(_) | NewForm::Roaring(_), false) => 1,
            _ => 0,
        };
        Delta { users, added: outcome.added, removed: outcome.removed }
    }
}

/// What [`ReadStore::count_by_range`] found: (users, marks) per range, and of the users
/// in no range.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeCounts {
    pub ranges: Vec<(u64, u64)>,
    pub outside: (u64, u64),
}

/// Whether the ownership the log set covers a user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owned {
    /// The log set no ownership.
    Unset,
    /// In the owned range at `index` of the ownership of `map_version` (with `ranges`
    /// ranges), which takes no writes when `frozen`.
    Range { index: usize, map_version: u64, ranges: usize, frozen: bool },
    /// In no owned range.
    Outside,
}

impl ReadStore {
    pub fn new() -> Self {
        ReadStore {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            users: AtomicU64::new(0),
            marks: AtomicU64::new(0),
            ownership: arc_swap::ArcSwapOption::empty(),
        }
    }

    /// The ownership the log last set, if any.
    pub fn ownership(&self) -> Option<Arc<Ownership>> {
        self.ownership.load_full()
    }

    /// Whether, and in which range, the ownership in force covers `user`.
    pub fn owned(&self, user: u64) -> Owned {
        match self.ownership.load().as_ref() {
            None => Owned::Unset,
            Some(own) => match own.range_of(user) {
                Some(index) => Owned::Range {
                    index,
                    map_version: own.map_version,
                    ranges: own.ranges.len(),
                    frozen: own.is_frozen(index),
                },
                None => Owned::Outside,
            },
        }
    }

    /// Whether the log set an ownership.
    pub fn has_ownership(&self) -> bool {
        self.ownership.load().is_some()
    }

    /// Applies one command. Unreading an id that is not read changes nothing, and a user
    /// left with no read ids is removed.
    pub fn apply(&self, cmd: &Command) {
        let (user, edit) = match cmd {
            Command::MarkRead { user, msg } => (*user, Edit::Insert(*msg)),
            Command::MarkUnread { user, msg } => (*user, Edit::Remove(*msg)),
            Command::MarkBatch { user, msgs } => (*user, Edit::InsertMany(msgs)),
            Command::MarkRange { user, from, to } => (*user, Edit::InsertRange { from: *from, to: *to }),
            Command::SetOwnership(own) => {
                self.ownership.store(Some(Arc::new(own.clone())));
                return;
            }
            Command::DropRange { partitioner, range } => {
                self.drop_range(*partitioner, *range, |_| true);
                return;
            }
        };
        let slot = Slot::of(user);
        let mut shard = self.write(slot.shard);
        let delta = shard.edit(slot, user, edit);
        self.account(&mut shard, delta);
    }

    pub fn is_read(&self, user: u64, msg: u64) -> bool {
        let slot = Slot::of(user);
        self.read(slot.shard).view(slot, user).is_some_and(|set| set.contains(msg))
    }

    /// Whether `user` has read each of `msgs`, in the same order, under one lock.
    pub fn check(&self, user: u64, msgs: &[u64]) -> Vec<bool> {
        let slot = Slot::of(user);
        match self.read(slot.shard).view(slot, user) {
            Some(set) => set.check(msgs),
            None => vec![false; msgs.len()],
        }
    }

    /// Number of ids in `from..=to` that `user` has read.
    pub fn count_read(&self, user: u64, from: u64, to: u64) -> u64 {
        let slot = Slot::of(user);
        self.read(slot.shard).view(slot, user).map_or(0, |set| set.count_in(from, to))
    }

    /// Number of users with at least one read id.
    pub fn user_count(&self) -> u64 {
        self.users.load(Ordering::Relaxed)
    }

    /// Number of (user, msg) pairs.
    pub fn mark_count(&self) -> u64 {
        self.marks.load(Ordering::Relaxed)
    }

    /// Digest of every (user, msg) pair, taken one shard at a time: exact when no write
    /// runs concurrently. Hashing runs on a copy of each shard, outside its lock.
    pub fn digest(&self) -> StoreDigest {
        let mut digest = DigestSum::default();
        for shard in 0..SHARDS {
            self.walk_shard(shard, |user, set| digest.add(user, set));
        }
        digest.finish()
    }

    pub fn shard_count(&self) -> usize {
        SHARDS
    }

    /// The shard holding `user` (below [`Self::shard_count`]). Commands on users of
    /// different shards touch disjoint state, so they may be applied in any order.
    pub fn shard_of(&self, user: u64) -> usize {
        Slot::of(user).shard
    }

    /// Calls `f` for every user in `shard` (below [`Self::shard_count`]) that is there when
    /// the walk starts and still there when its turn comes, with its set as it is then.
    /// The lock is taken [`WALK_CHUNK`] users at a time: small (packed) sets are handed to
    /// `f` under it, large (roaring) ones are cloned under it and handed over after, so a
    /// user with millions of marks costs the writer a memcpy, not an encoding.
    pub fn walk_shard(&self, shard: usize, mut f: impl FnMut(u64, &SetView<'_>)) {
        let users = self.users_in_shard(shard);
        let mut large = Vec::new();
        for chunk in users.chunks(WALK_CHUNK) {
            {
                let guard = self.read(shard);
                for &user in chunk {
                    let slot = Slot::of(user);
                    if let Some(entry) = guard.packed_entry(slot) {
                        f(user, &SetView::packed(readset::entry_body(entry)));
                    } else if let Some((_, set)) = guard.roaring.find(slot.hash(), |(u, _)| *u == user) {
                        large.push((user, set.clone()));
                    }
                }
            }
            for (user, set) in large.drain(..) {
                f(user, &SetView::roaring(&set));
            }
        }
    }

    /// The users `shard` holds now.
    fn users_in_shard(&self, shard: usize) -> Vec<u64> {
        let guard = self.read(shard);
        let packed = guard.packed.iter().map(|&at| Slot::user(shard, key_of_entry(guard.pages.entry(at))));
        packed.chain(guard.roaring.iter().map(|(user, _)| *user)).collect()
    }

    /// Replaces `user`'s set with `set`; an empty set removes the user.
    pub fn insert_user_set(&self, user: u64, set: RoaringTreemap) {
        let slot = Slot::of(user);
        let mut shard = self.write(slot.shard);
        let mut delta = shard.remove_user(slot, user);
        let len = set.len();
        if len > 0 {
            let form = if len <= PACKED_MAX {
                NewForm::Packed(readset::encode(&slot.key_bytes(), &set.iter().collect::<Vec<_>>()))
            } else {
                NewForm::Roaring(set)
            };
            shard.install(slot, user, form);
            delta.users += 1;
            delta.added += len;
        }
        self.account(&mut shard, delta);
    }

    /// Removes every user, and the ownership.
    pub fn clear(&self) {
        self.ownership.store(None);
        for lock in self.shards.iter() {
            // The old tables are dropped after the lock is released, so readers of this
            // shard do not wait while millions of entries are freed.
            let old = std::mem::take(&mut *lock.write().unwrap_or_else(PoisonError::into_inner));
            self.users.fetch_sub(old.users, Ordering::Relaxed);
            self.marks.fetch_sub(old.marks, Ordering::Relaxed);
        }
    }

    // A panic while a shard lock is held cannot leave a half-edited set: every edit builds
    // the new form before touching the tables. A poisoned shard is therefore still sound
    // and is used as it is rather than failing every later call for its users.
    fn read(&self, shard: usize) -> RwLockReadGuard<'_, Shard> {
        self.shards[shard].read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self, shard: usize) -> RwLockWriteGuard<'_, Shard> {
        self.shards[shard].write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records `delta` in the shard, whose lock the caller holds, and in the totals.
    fn account(&self, shard: &mut Shard, delta: Delta) {
        shard.users = shard.users.wrapping_add_signed(delta.users);
        shard.marks = shard.marks + delta.added - delta.removed;
        match delta.users {
            0 => 0,
            n if n > 0 => self.users.fetch_add(n as u64, Ordering::Relaxed),
            n => self.users.fetch_sub(n.unsigned_abs(), Ordering::Relaxed),
        };
        if delta.added > 0 {
            self.marks.fetch_add(delta.added, Ordering::Relaxed);
        }
        if delta.removed > 0 {
            self.marks.fetch_sub(delta.removed, Ordering::Relaxed);
        }
    }
}

impl Default for ReadStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ReadStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadStore")
            .field("users", &self.user_count())
            .field("marks", &self.mark_count())
            .finish_non_exhaustive()
    }
}

/// Whether the packed entry at `at` carries `key`.
fn carries(pages: &Pages, at: EntryRef, key: &[u8]) -> bool {
    readset::entry_key(pages.entry(at)) == key
}

/// The packed table's hash of the entry at `at`.
fn hash_at(pages: &Pages, at: EntryRef) -> u64 {
    table_hash(key_of_entry(pages.entry(at)))
}

impl Shard {
    fn view(&self, slot: Slot, user: u64) -> Option<SetView<'_>> {
        if let Some(entry) = self.packed_entry(slot) {
            return Some(SetView::packed(readset::entry_body(entry)));
        }
        self.roaring.find(slot.hash(), |(u, _)| *u == user).map(|(_, set)| SetView::roaring(set))
    }

    /// The packed entry of the user in `slot`, if it has one.
    fn packed_entry(&self, slot: Slot) -> Option<&[u8]> {
        let key = slot.key_bytes();
        let at = self.packed.find(slot.hash(), |&at| carries(&self.pages, at, &key))?;
        Some(self.pages.entry(*at))
    }

    fn edit(&mut self, slot: Slot, user: u64, edit: Edit<'_>) -> Delta {
        let key = slot.key_bytes();
        let pages = &mut self.pages;
        if let Ok(mut entry) = self.packed.find_entry(slot.hash(), |&at| carries(pages, at, &key)) {
            let old = *entry.get();
            let outcome = readset::edit_packed(&key, readset::entry_body(pages.entry(old)), edit);
            let delta = Delta::of(true, &outcome);
            match outcome.form {
                NewForm::Kept => return delta,
                // The common case: point the slot at the new entry without touching the
                // table.
                NewForm::Packed(new) => *entry.get_mut() = pages.push(&new),
                other => {
                    entry.remove();
                    self.install(slot, user, other);
                }
            }
            self.release(old);
            return delta;
        }
        if let Ok(mut entry) = self.roaring.find_entry(slot.hash(), |(u, _)| *u == user) {
            let outcome = readset::edit_roaring(&key, &mut entry.get_mut().1, edit);
            let delta = Delta::of(true, &outcome);
            if !matches!(outcome.form, NewForm::Kept) {
                entry.remove();
                self.install(slot, user, outcome.form);
            }
            return delta;
        }
        let outcome = readset::edit_packed(&key, &[], edit);
        let delta = Delta::of(false, &outcome);
        self.install(slot, user, outcome.form);
        delta
    }

    /// Puts a user who is in neither table into the table for `form`.
    fn install(&mut self, slot: Slot, user: u64, form: NewForm) {
        match form {
            NewForm::Packed(entry) => self.install_packed(slot, &entry),
            NewForm::Roaring(set) => {
                self.roaring.insert_unique(slot.hash(), (user, set), |(u, _)| Slot::of(*u).hash());
            }
            NewForm::Kept | NewForm::Empty => {}
        }
    }

    /// Puts a user who is in neither table into the packed one, with `entry`.
    fn install_packed(&mut self, slot: Slot, entry: &[u8]) {
        let at = self.pages.push(entry);
        let pages = &self.pages;
        self.packed.insert_unique(slot.hash(), at, |&at| hash_at(pages, at));
    }

    /// Puts `entry` into the packed table unless the user in `slot` is in either table
    /// already, in one probe of the packed table. Answers whether it did.
    fn install_new_packed(&mut self, slot: Slot, user: u64, entry: &[u8]) -> bool {
        if self.roaring.find(slot.hash(), |(u, _)| *u == user).is_some() {
            return false;
        }
        let key = slot.key_bytes();
        let pages = &self.pages;
        let found = self.packed.entry(slot.hash(), |&at| carries(pages, at, &key), |&at| hash_at(pages, at));
        match found {
            hashbrown::hash_table::Entry::Occupied(_) => false,
            hashbrown::hash_table::Entry::Vacant(vacant) => {
                vacant.insert(self.pages.push(entry));
                true
            }
        }
    }

    /// Room for `more` packed users without growing the table.
    fn reserve_packed(&mut self, more: usize) {
        let pages = &self.pages;
        self.packed.reserve(more, |&at| hash_at(pages, at));
    }

    /// Lets go of the packed entry at `old`, which no slot points at any more, and
    /// evacuates pages while too much of them is dead.
    fn release(&mut self, old: EntryRef) {
        self.pages.release(old);
        while let Some(page) = self.pages.due_for_evacuation() {
            for at in self.pages.refs_in(page) {
                let hash = hash_at(&self.pages, at);
                // An entry is live when a slot points at it; the dead ones are left behind.
                if let Some(slot) = self.packed.find_mut(hash, |&live| live == at) {
                    *slot = self.pages.copy(at);
                }
            }
            self.pages.empty(page);
        }
    }

    fn remove_user(&mut self, slot: Slot, user: u64) -> Delta {
        let key = slot.key_bytes();
        let pages = &self.pages;
        let removed = if let Ok(entry) = self.packed.find_entry(slot.hash(), |&at| carries(pages, at, &key)) {
            let (at, _) = entry.remove();
            let removed = readset::packed_len(readset::entry_body(self.pages.entry(at)));
            self.release(at);
            removed
        } else if let Ok(entry) = self.roaring.find_entry(slot.hash(), |(u, _)| *u == user) {
            let ((_, set), _) = entry.remove();
            set.len()
        } else {
            return Delta::default();
        };
        Delta { users: -1, added: 0, removed }
    }
}

#[cfg(test)]
mod tests {
    use super::keys::KEY_MASK;
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    type Model = BTreeMap<u64, BTreeSet<u64>>;

    const USERS: [u64; 4] = [0, 7, (1 << 63) + 5, u64::MAX];
    /// Ids come from three windows, at the bottom, middle and top of `u64`, narrow enough
    /// that reads and unreads of the same ids meet often.
    const WINDOW: u64 = 256;
    const BASES: [u64; 3] = [0, 1 << 63, u64::MAX - (WINDOW - 1)];
    /// How far past its window a generated range may reach.
    const RANGE_MAX: u64 = 300;

    fn apply_model(model: &mut Model, cmd: &Command) {
        match cmd {
            Command::MarkRead { user, msg } => {
                model.entry(*user).or_default().insert(*msg);
            }
            Command::MarkUnread { user, msg } => {
                if let Some(set) = model.get_mut(user) {
                    set.remove(msg);
                    if set.is_empty() {
                        model.remove(user);
                    }
                }
            }
            Command::MarkBatch { user, msgs } if !msgs.is_empty() => {
                model.entry(*user).or_default().extend(msgs);
            }
            Command::MarkRange { user, from, to } if from <= to => {
                model.entry(*user).or_default().extend(*from..=*to);
            }
            _ => {}
        }
    }

    fn user() -> impl Strategy<Value = u64> {
        prop::sample::select(USERS.to_vec())
    }

    fn msg() -> impl Strategy<Value = u64> {
        (0..BASES.len(), 0..WINDOW).prop_map(|(window, offset)| BASES[window] + offset)
    }

    fn commands() -> impl Strategy<Value = Vec<Command>> {
        let op = prop_oneof![
            4 => (user(), msg()).prop_map(|(user, msg)| vec![Command::MarkRead { user, msg }]),
            3 => (user(), msg()).prop_map(|(user, msg)| vec![Command::MarkUnread { user, msg }]),
            2 => (user(), vec(msg(), 0..100))
                .prop_map(|(user, msgs)| vec![Command::MarkBatch { user, msgs }]),
            2 => (user(), msg(), 0..RANGE_MAX).prop_map(|(user, from, len)| {
                vec![Command::MarkRange { user, from, to: from.saturating_add(len) }]
            }),
            // A run of unreads is what shrinks a roaring set back into packed form.
            2 => (user(), msg(), 1..WINDOW + RANGE_MAX).prop_map(|(user, from, len)| {
                (from..=from.saturating_add(len)).map(|msg| Command::MarkUnread { user, msg }).collect()
            }),
            // Grow past the packed limit, then shrink back through both limits.
            1 => (user(), msg(), PACKED_MAX..RANGE_MAX, 0..RANGE_MAX).prop_map(|(user, from, len, keep)| {
                let to = from.saturating_add(len);
                let unread = (from..=to).skip(keep as usize).map(move |msg| Command::MarkUnread { user, msg });
                std::iter::once(Command::MarkRange { user, from, to }).chain(unread).collect()
            }),
        ];
        vec(op, 1..60).prop_map(|ops| ops.into_iter().flatten().collect())
    }

    /// Every id a generated command can touch.
    fn reachable_ids() -> Vec<u64> {
        BASES.iter().flat_map(|&base| (0..WINDOW + RANGE_MAX).filter_map(move |o| base.checked_add(o))).collect()
    }

    fn store_from(model: &Model) -> ReadStore {
        let store = ReadStore::new();
        for (&user, ids) in model {
            store.insert_user_set(user, RoaringTreemap::from_sorted_iter(ids.iter().copied()).unwrap());
        }
        store
    }

    fn contents(store: &ReadStore) -> Model {
        let mut seen = Model::new();
        for shard in 0..store.shard_count() {
            store.walk_shard(shard, |user, set| {
                let ids: BTreeSet<u64> = set.iter().collect();
                assert_eq!(set.len(), ids.len() as u64, "len of user {user}");
                assert!(seen.insert(user, ids).is_none(), "user {user} visited twice");
            });
        }
        seen
    }

    /// Which table holds `user`, if any.
    fn form_of(store: &ReadStore, user: u64) -> Option<&'static str> {
        let slot = Slot::of(user);
        let shard = store.read(slot.shard);
        if shard.packed_entry(slot).is_some() {
            Some("packed")
        } else if shard.roaring.find(slot.hash(), |(u, _)| *u == user).is_some() {
            Some("roaring")
        } else {
            None
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn store_matches_a_model_under_any_command_sequence(
            cmds in commands(),
            windows in vec((user(), msg(), msg()), 1..20),
        ) {
            let store = ReadStore::new();
            let mut model = Model::new();
            for cmd in &cmds {
                store.apply(cmd);
                apply_model(&mut model, cmd);
                prop_assert_eq!(store.user_count(), model.len() as u64, "after {:?}", cmd);
                prop_assert_eq!(store.mark_count(), model.values().map(|s| s.len() as u64).sum::<u64>(), "after {:?}", cmd);
            }

            let ids = reachable_ids();
            for &user in &USERS {
                let expected: Vec<bool> = ids.iter().map(|id| model.get(&user).is_some_and(|s| s.contains(id))).collect();
                prop_assert_eq!(&store.check(user, &ids), &expected, "check for user {}", user);
                let single: Vec<bool> = ids.iter().map(|&id| store.is_read(user, id)).collect();
                prop_assert_eq!(&single, &expected, "is_read for user {}", user);
                let all = model.get(&user).map_or(0, |s| s.len() as u64);
                prop_assert_eq!(store.count_read(user, 0, u64::MAX), all);
            }
            for (user, a, b) in windows {
                let (from, to) = (a.min(b), a.max(b));
                let expected = model.get(&user).map_or(0, |s| s.range(from..=to).count() as u64);
                prop_assert_eq!(store.count_read(user, from, to), expected, "user {} in {}..={}", user, from, to);
            }

            prop_assert_eq!(&contents(&store), &model);
            let digest = store.digest();
            prop_assert_eq!(digest.users, model.len() as u64);
            prop_assert_eq!(digest.marks, store.mark_count());
            prop_assert_eq!(&digest, &store_from(&model).digest());
        }
    }

    #[test]
    fn a_user_turns_roaring_past_the_limit_and_packed_again_only_below_the_lower_limit() {
        let store = ReadStore::new();
        let user = 42;
        for msg in 0..PACKED_MAX {
            store.apply(&Command::MarkRead { user, msg: msg * 3 });
        }
        assert_eq!(form_of(&store, user), Some("packed"));
        store.apply(&Command::MarkRead { user, msg: 1 });
        assert_eq!(form_of(&store, user), Some("roaring"));

        let mut left = PACKED_MAX + 1;
        for msg in (0..PACKED_MAX).map(|m| m * 3) {
            store.apply(&Command::MarkUnread { user, msg });
            left -= 1;
            let expected = if left >= readset::ROARING_MIN { "roaring" } else { "packed" };
            assert_eq!(form_of(&store, user), Some(expected), "{left} ids left");
            assert_eq!(store.mark_count(), left);
        }
        assert!(store.is_read(user, 1));
        store.apply(&Command::MarkUnread { user, msg: 1 });
        assert_eq!(form_of(&store, user), None);
        assert_eq!((store.user_count(), store.mark_count()), (0, 0));
    }

    #[test]
    fn a_large_range_is_held_as_roaring_and_counted_exactly() {
        let store = ReadStore::new();
        let user = u64::MAX;
        store.apply(&Command::MarkRange { user, from: u64::MAX - 999_999, to: u64::MAX });
        assert_eq!(form_of(&store, user), Some("roaring"));
        assert_eq!(store.mark_count(), 1_000_000);
        assert_eq!(store.count_read(user, u64::MAX - 9, u64::MAX), 10);
        assert!(store.is_read(user, u64::MAX) && !store.is_read(user, u64::MAX - 1_000_000));
    }

    #[test]
    fn unreading_what_is_not_read_changes_nothing() {
        let store = ReadStore::new();
        store.apply(&Command::MarkUnread { user: 1, msg: 1 });
        store.apply(&Command::MarkBatch { user: 1, msgs: vec![] });
        store.apply(&Command::MarkRange { user: 1, from: 9, to: 8 });
        assert_eq!((store.user_count(), store.mark_count()), (0, 0));
        assert_eq!(form_of(&store, 1), None);

        store.apply(&Command::MarkRead { user: 1, msg: 5 });
        store.apply(&Command::MarkUnread { user: 1, msg: 6 });
        assert_eq!((store.user_count(), store.mark_count()), (1, 1));
        assert!(store.is_read(1, 5));
    }

    #[test]
    fn insert_user_set_replaces_the_old_set_and_an_empty_set_removes_the_user() {
        let store = ReadStore::new();
        store.apply(&Command::MarkBatch { user: 9, msgs: vec![1, 2, 3] });
        let big = RoaringTreemap::from_sorted_iter(1000..2000).unwrap();
        store.insert_user_set(9, big);
        assert!(!store.is_read(9, 1) && store.is_read(9, 1999));
        assert_eq!((store.user_count(), store.mark_count()), (1, 1000));
        assert_eq!(form_of(&store, 9), Some("roaring"));

        store.insert_user_set(9, RoaringTreemap::from_sorted_iter([u64::MAX]).unwrap());
        assert_eq!(store.check(9, &[1500, u64::MAX]), [false, true]);
        assert_eq!((store.user_count(), store.mark_count()), (1, 1));
        assert_eq!(form_of(&store, 9), Some("packed"));

        store.insert_user_set(9, RoaringTreemap::new());
        assert_eq!(form_of(&store, 9), None);
        assert_eq!((store.user_count(), store.mark_count()), (0, 0));
    }

    #[test]
    fn users_and_marks_are_counted_by_hash_range() {
        use bitark_common::{HashRange, Partitioner};
        let store = ReadStore::new();
        for user in 0..500u64 {
            store.apply(&Command::MarkRange { user, from: 0, to: user % 7 });
        }
        let p = Partitioner::SplitMix64;
        let ranges = [HashRange::new(0, 1 << 62).unwrap(), HashRange::new(1 << 63, 3 << 62).unwrap()];
        let counts = store.count_by_range(p, &ranges);
        let mut expected = RangeCounts { ranges: vec![(0, 0); 2], outside: (0, 0) };
        for user in 0..500u64 {
            let h = p.hash(user);
            let slot = match ranges.iter().position(|r| r.contains(h)) {
                Some(i) => &mut expected.ranges[i],
                None => &mut expected.outside,
            };
            slot.0 += 1;
            slot.1 += user % 7 + 1;
        }
        assert_eq!(counts, expected);
        assert!(counts.ranges.iter().all(|(users, _)| *users > 0) && counts.outside.0 > 0);
    }

    #[test]
    fn clear_removes_every_user_and_zeroes_the_counts() {
        let store = ReadStore::new();
        for user in 0..1000 {
            store.apply(&Command::MarkRange { user, from: 0, to: user % 300 });
        }
        store.clear();
        assert_eq!((store.user_count(), store.mark_count()), (0, 0));
        assert!((0..1000).all(|user| !store.is_read(user, 0)));
        assert_eq!(store.digest(), ReadStore::new().digest());
        store.apply(&Command::MarkRead { user: 3, msg: 3 });
        assert_eq!((store.user_count(), store.mark_count()), (1, 1));
    }

    #[test]
    fn digest_depends_on_contents_not_on_history_or_form() {
        let by_range = ReadStore::new();
        by_range.apply(&Command::MarkRange { user: 5, from: 0, to: 199 });
        for msg in 100..200 {
            by_range.apply(&Command::MarkUnread { user: 5, msg });
        }
        let by_batch = ReadStore::new();
        by_batch.apply(&Command::MarkBatch { user: 5, msgs: (0..100).rev().collect() });
        assert_eq!(form_of(&by_range, 5), Some("roaring"));
        assert_eq!(form_of(&by_batch, 5), Some("packed"));
        assert_eq!(by_range.digest(), by_batch.digest());
    }

    #[test]
    fn digest_changes_when_pairs_change_even_if_counts_do_not() {
        let digest_of = |pairs: &[(u64, u64)]| {
            let store = ReadStore::new();
            pairs.iter().for_each(|&(user, msg)| store.apply(&Command::MarkRead { user, msg }));
            store.digest()
        };
        let base = digest_of(&[(1, 1), (2, 2)]);
        assert_eq!(base.digest.len(), 32);
        assert!(base.digest.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)));
        for other in [[(1, 2), (2, 1)], [(1, 1), (2, 3)], [(1, 1), (3, 2)]] {
            let changed = digest_of(&other);
            assert_eq!((changed.users, changed.marks), (2, 2));
            // Each 64-bit lane must notice the change on its own.
            assert_ne!(changed.digest[..16], base.digest[..16], "first lane, {other:?}");
            assert_ne!(changed.digest[16..], base.digest[16..], "second lane, {other:?}");
        }
    }

    #[test]
    fn churn_keeps_every_set_and_at_most_a_quarter_of_the_pages_dead() {
        // Users of one shard, so that its entries fill many pages and edits empty them.
        let users: Vec<u64> = (0..).filter(|&u| Slot::of(u).shard == 0).take(2_000).collect();
        let (store, mut model) = (ReadStore::new(), Model::new());
        let mut seed = 1u64;
        let mut next = move || {
            seed = keys::mix(seed.wrapping_add(0x9e37_79b9_7f4a_7c15));
            seed
        };
        for round in 0..40 {
            for &user in &users {
                let msg = next() % (1 << 32);
                let cmd = match next() % 8 {
                    // Unread an id the user has, now and then, so that sets shrink too.
                    0 => match model.get(&user).and_then(|s| s.iter().nth(round % s.len())) {
                        Some(&msg) => Command::MarkUnread { user, msg },
                        None => Command::MarkRead { user, msg },
                    },
                    1 => Command::MarkBatch { user, msgs: vec![msg, msg / 3, msg / 7] },
                    _ => Command::MarkRead { user, msg },
                };
                store.apply(&cmd);
                apply_model(&mut model, &cmd);
            }
        }
        assert_eq!(contents(&store), model);

        let shard = store.read(0);
        let in_table: usize = shard.packed.iter().map(|&at| Pages::footprint(shard.pages.entry(at).len())).sum();
        assert_eq!(shard.pages.live_bytes(), in_table, "every byte not dead belongs to an entry");
        let most = in_table * pages::DEAD_SHARE / (pages::DEAD_SHARE - 1) + 4 * pages::PAGE;
        assert!(shard.pages.held_bytes() < most, "{} bytes held", shard.pages.held_bytes());

        drop(shard);
        for user in users {
            store.insert_user_set(user, RoaringTreemap::new());
        }
        assert_eq!(store.read(0).pages.live_bytes(), 0);
    }

    #[test]
    fn visiting_shards_yields_every_user_id_unchanged() {
        let mut users: Vec<u64> = (0..2000u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).collect();
        users.extend([0, 1, u64::MAX, 1 << 63, KEY_MASK, !KEY_MASK]);
        let store = ReadStore::new();
        for &user in &users {
            store.apply(&Command::MarkRead { user, msg: user });
        }
        let seen = contents(&store);
        let expected: Model = users.iter().map(|&u| (u, BTreeSet::from([u]))).collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn sequential_user_ids_spread_over_all_shards() {
        let mut per_shard = [0u32; SHARDS];
        for user in 0..(SHARDS as u64 * 100) {
            per_shard[Slot::of(user).shard] += 1;
        }
        assert!(per_shard.iter().all(|&n| (50..=150).contains(&n)), "{per_shard:?}");
    }

    #[test]
    fn read_store_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<ReadStore>();
    }
}
