//! One user's read set, kept in whichever of two forms costs less for its size.
//!
//! Most users have read only a handful of messages, so at 10^8 users the fixed cost per
//! user, not the payload per mark, decides memory. A `RoaringTreemap` spends a `BTreeMap`
//! node plus one container allocation per 2^16-wide block of ids: tens of bytes per mark
//! when ids are scattered. A set therefore starts in *packed* form, one run of bytes:
//!
//! ```text
//! [ key: KEY_LEN bytes ][ varint(id0) ][ varint(id1 - id0) ] ... [ varint(idN - idN-1) ]
//! ```
//!
//! Ids are ascending and distinct, and every varint is LEB128, so the number of ids is
//! the number of body bytes with the high bit clear and needs no field of its own. The key
//! belongs to the store, which finds entries by it (see [`crate::store`]); keeping it
//! inside the entry lets a table slot be nothing but a 4-byte reference to the entry.
//!
//! A packed set holds at most [`PACKED_MAX`] ids, which bounds both the scan behind
//! `is_read` and the copy behind every edit. Past that the set becomes roaring, which
//! copes with any size. A range insert whose result would not fit goes to roaring
//! directly rather than being expanded id by id. A roaring set returns to packed form
//! only when it falls below [`ROARING_MIN`]; the gap between the two limits stops a user
//! hovering at the limit from converting back and forth on every command.
//!
//! [`Edit`] is a command with its user already resolved; [`edit_packed`] and
//! [`edit_roaring`] apply one and report what the store must install. [`SetView`] is the
//! read-only face of either form.

use roaring::RoaringTreemap;

/// Bytes of store key at the front of every packed entry.
pub(crate) const KEY_LEN: usize = 7;

/// The most ids a packed set holds.
pub(crate) const PACKED_MAX: u64 = 128;

/// A roaring set with fewer ids than this goes back to packed form.
pub(crate) const ROARING_MIN: u64 = 64;

/// A change to one user's set.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Edit<'a> {
    Insert(u64),
    Remove(u64),
    /// Unsorted, duplicates allowed.
    InsertMany(&'a [u64]),
    /// Every id in `from..=to`; nothing when `from > to`.
    InsertRange {
        from: u64,
        to: u64,
    },
}

/// What the store must hold for the user after an edit.
#[derive(Debug)]
pub(crate) enum NewForm {
    /// Nothing to install: the set did not change, or a roaring set changed in place.
    Kept,
    Packed(Box<[u8]>),
    Roaring(RoaringTreemap),
    /// No ids are left; the user must go.
    Empty,
}

/// The result of one edit: the form to install and how many ids came and went.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) form: NewForm,
    pub(crate) added: u64,
    pub(crate) removed: u64,
}

impl Outcome {
    fn kept() -> Self {
        Outcome { form: NewForm::Kept, added: 0, removed: 0 }
    }

    fn added(form: NewForm, added: u64) -> Self {
        Outcome { form, added, removed: 0 }
    }
}

/// The key part of a packed entry.
pub(crate) fn entry_key(entry: &[u8]) -> &[u8] {
    &entry[..KEY_LEN]
}

/// The ids part of a packed entry.
pub(crate) fn entry_body(entry: &[u8]) -> &[u8] {
    &entry[KEY_LEN..]
}

/// Number of ids in a packed body: one varint ends at each byte with the high bit clear.
pub(crate) fn packed_len(body: &[u8]) -> u64 {
    body.iter().filter(|&&b| b < 0x80).count() as u64
}

/// Builds a packed entry from ascending, distinct ids, allocating exactly once.
pub(crate) fn encode(key: &[u8], ids: &[u64]) -> Box<[u8]> {
    debug_assert_eq!(key.len(), KEY_LEN);
    let gaps = ids.iter().scan(0, |prev, &id| Some(id - std::mem::replace(prev, id)));
    let len = KEY_LEN + gaps.clone().map(varint_len).sum::<usize>();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(key);
    gaps.for_each(|gap| put_varint(&mut out, gap));
    out.into_boxed_slice()
}

/// Applies `edit` to a packed set; `body` is empty for a user who has no set yet.
pub(crate) fn edit_packed(key: &[u8], body: &[u8], edit: Edit<'_>) -> Outcome {
    match edit {
        Edit::Insert(id) => insert_one(key, body, id),
        Edit::Remove(id) => remove_one(key, body, id),
        Edit::InsertMany(ids) => {
            let mut add = ids.to_vec();
            add.sort_unstable();
            add.dedup();
            merge(key, body, &add)
        }
        Edit::InsertRange { from, to } => insert_range(key, body, from, to),
    }
}

/// Applies `edit` to a roaring set in place; `key` is needed only if the set shrinks
/// enough to go back to packed form.
pub(crate) fn edit_roaring(key: &[u8], set: &mut RoaringTreemap, edit: Edit<'_>) -> Outcome {
    let added = match edit {
        Edit::Insert(id) => u64::from(set.insert(id)),
        Edit::InsertMany(ids) => ids.iter().filter(|&&id| set.insert(id)).count() as u64,
        Edit::InsertRange { from, to } if from <= to => set.insert_range(from..=to),
        Edit::InsertRange { .. } => 0,
        Edit::Remove(id) => {
            if !set.remove(id) {
                return Outcome::kept();
            }
            // Counting at most ROARING_MIN ids keeps this check cheap for huge sets,
            // where `len()` would walk every container.
            let form = if set.iter().nth(ROARING_MIN as usize - 1).is_some() {
                NewForm::Kept
            } else if set.is_empty() {
                NewForm::Empty
            } else {
                NewForm::Packed(encode(key, &set.iter().collect::<Vec<_>>()))
            };
            return Outcome { form, added: 0, removed: 1 };
        }
    };
    Outcome::added(NewForm::Kept, added)
}

/// Where an id belongs in a packed body.
struct Spot {
    /// Offset of the first varint whose id is `>=` the one sought, or the body length.
    at: usize,
    /// The id just before `at`; 0 at the front, which is the encoding's implicit base.
    prev: u64,
    /// The id at `at` and the offset just past its varint.
    next: Option<(u64, usize)>,
}

fn locate(body: &[u8], id: u64) -> Spot {
    let mut ids = Ids::new(body);
    let (mut at, mut prev) = (0, 0);
    while let Some(cur) = ids.next() {
        if cur >= id {
            return Spot { at, prev, next: Some((cur, ids.pos)) };
        }
        at = ids.pos;
        prev = cur;
    }
    Spot { at, prev, next: None }
}

/// A new entry: `key`, the body up to `at`, the given gaps, then `rest` unchanged.
///
/// Every edit of one id only touches the gaps around it, so the bytes before and after
/// are copied verbatim instead of being decoded and re-encoded.
fn splice(key: &[u8], body: &[u8], at: usize, gaps: &[u64], rest: &[u8]) -> Box<[u8]> {
    let len = KEY_LEN + at + gaps.iter().copied().map(varint_len).sum::<usize>() + rest.len();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(key);
    out.extend_from_slice(&body[..at]);
    gaps.iter().for_each(|&gap| put_varint(&mut out, gap));
    out.extend_from_slice(rest);
    out.into_boxed_slice()
}

fn insert_one(key: &[u8], body: &[u8], id: u64) -> Outcome {
    let spot = locate(body, id);
    let entry = match spot.next {
        Some((cur, _)) if cur == id => return Outcome::kept(),
        _ if packed_len(body) >= PACKED_MAX => {
            let mut set = to_treemap(body);
            set.insert(id);
            return Outcome::added(NewForm::Roaring(set), 1);
        }
        Some((next, end)) => splice(key, body, spot.at, &[id - spot.prev, next - id], &body[end..]),
        None => splice(key, body, spot.at, &[id - spot.prev], &[]),
    };
    Outcome::added(NewForm::Packed(entry), 1)
}

fn remove_one(key: &[u8], body: &[u8], id: u64) -> Outcome {
    let spot = locate(body, id);
    let end = match spot.next {
        Some((cur, end)) if cur == id => end,
        _ => return Outcome::kept(),
    };
    let form = if spot.at == 0 && end == body.len() {
        NewForm::Empty
    } else if end == body.len() {
        NewForm::Packed(splice(key, body, spot.at, &[], &[]))
    } else {
        // The following id is now measured from the one before the removed id.
        let (gap, after) = read_varint(body, end);
        let merged_gap = id - spot.prev + gap;
        NewForm::Packed(splice(key, body, spot.at, &[merged_gap], &body[after..]))
    };
    Outcome { form, added: 0, removed: 1 }
}

/// Merges ascending, distinct `add` into a packed body with one decode and one encode.
fn merge(key: &[u8], body: &[u8], add: &[u64]) -> Outcome {
    if add.is_empty() {
        return Outcome::kept();
    }
    let old: Vec<u64> = Ids::new(body).collect();
    let mut merged = Vec::with_capacity(old.len() + add.len());
    let (mut i, mut j) = (0, 0);
    while i < old.len() && j < add.len() {
        let (a, b) = (old[i], add[j]);
        merged.push(a.min(b));
        i += usize::from(a <= b);
        j += usize::from(b <= a);
    }
    merged.extend_from_slice(&old[i..]);
    merged.extend_from_slice(&add[j..]);
    let added = (merged.len() - old.len()) as u64;
    if added == 0 {
        return Outcome::kept();
    }
    let form = if merged.len() as u64 > PACKED_MAX {
        NewForm::Roaring(RoaringTreemap::from_sorted_iter(merged).expect("merged ids are ascending"))
    } else {
        NewForm::Packed(encode(key, &merged))
    };
    Outcome::added(form, added)
}

fn insert_range(key: &[u8], body: &[u8], from: u64, to: u64) -> Outcome {
    if from > to {
        return Outcome::kept();
    }
    let width = (to - from).saturating_add(1);
    let overlap = Ids::new(body).filter(|id| (from..=to).contains(id)).count() as u64;
    let union = packed_len(body).saturating_add(width) - overlap;
    if union <= PACKED_MAX {
        return merge(key, body, &(from..=to).collect::<Vec<_>>());
    }
    let mut set = to_treemap(body);
    let added = set.insert_range(from..=to);
    Outcome::added(NewForm::Roaring(set), added)
}

fn to_treemap(body: &[u8]) -> RoaringTreemap {
    RoaringTreemap::from_sorted_iter(Ids::new(body)).expect("packed ids are ascending")
}

fn varint_len(value: u64) -> usize {
    let bits = 64 - (value | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// The varint at the front of `bytes` and its length, or `None` when `bytes` ends
/// inside it or it does not fit in 64 bits: for bytes not known to be well formed.
pub(crate) fn read_varint_checked(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, &byte) in bytes.iter().enumerate().take(10) {
        let part = u64::from(byte & 0x7f);
        if i == 9 && part > 1 {
            return None;
        }
        value |= part << (7 * i);
        if byte < 0x80 {
            return Some((value, i + 1));
        }
    }
    None
}

/// What is wrong with a packed body read from a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PackedError {
    #[error("an empty set")]
    Empty,
    #[error("a packed set of {0} ids, more than the {PACKED_MAX} it may hold")]
    TooMany(u64),
    #[error("a packed set ends inside an id")]
    EndsInsideId,
    #[error("a packed set repeats an id")]
    RepeatsId,
    #[error("a packed set's ids run past 2^64")]
    PastU64,
}

/// Checks that `body` is a well-formed packed body, as one read from a file must be
/// before the store takes it: 1 to [`PACKED_MAX`] varints of strictly ascending ids.
/// Answers the number of ids.
pub(crate) fn check_packed(body: &[u8]) -> Result<u64, PackedError> {
    // The common case, in one pass that decodes nothing: the body ends on a whole varint,
    // no byte after the first is 0 (so no gap is 0, however encoded), and no varint is
    // longer than 8 bytes, so each gap is below 2^56 and 128 of them cannot overflow.
    let (count, longest_below_8, zero) = count_varints(body);
    let whole = body.last().is_some_and(|&b| b < 0x80);
    if whole && !zero && longest_below_8 && (1..=PACKED_MAX).contains(&count) {
        return Ok(count);
    }
    check_packed_exactly(body)
}

/// The number of varint ends (bytes below 0x80) in `bytes`, whether no run of
/// continuation bytes is 8 or longer, and whether a byte after the first is 0.
///
/// Eight bytes at a time: in each word the flags of the ending bytes give the count, and
/// the run into the word's first end plus the run carried from the words before must
/// stay below 8. Whether a byte ends a varint is as good as random, so a byte-by-byte
/// loop would pay a mispredicted branch or a serial dependency on almost every byte.
fn count_varints(bytes: &[u8]) -> (u64, bool, bool) {
    let mut scan = VarintScan { ends: 0, carried: 0, short: true, zero: false };
    let mut words = bytes.chunks_exact(8);
    // The first byte may be 0 (a first id of 0): its low bit is set before the zero test.
    let mut first = 1;
    for word in words.by_ref() {
        scan.word(u64::from_le_bytes(word.try_into().expect("8 bytes")), first);
        first = 0;
    }
    let tail = words.remainder();
    let t = tail.len();
    if t == 0 {
        return (scan.ends, scan.short, scan.zero);
    }
    // The tail as the low bytes of a word, read without a copy through memory (a byte
    // copy then a word load stalls store forwarding): the body's last eight bytes,
    // shifted down past those counted already, or, in a body shorter than a word, its
    // bytes one by one. Padding bytes of 1 above it end varints (the count takes them
    // back below) and are not 0.
    let low = match bytes.len().checked_sub(8) {
        Some(from) => u64::from_le_bytes(bytes[from..].try_into().expect("8 bytes")) >> (8 * (8 - t)),
        None => tail.iter().rev().fold(0, |word, &b| (word << 8) | u64::from(b)),
    };
    scan.word(low | (0x0101_0101_0101_0101 << (8 * t)), first);
    (scan.ends - (8 - t as u64), scan.short, scan.zero)
}

/// What [`count_varints`] has seen so far.
struct VarintScan {
    ends: u64,
    /// Continuation bytes at the end of the words so far: the run into the next word.
    carried: u32,
    short: bool,
    zero: bool,
}

impl VarintScan {
    /// Takes the next eight bytes; `first` is 1 for the word holding the body's first byte.
    #[inline(always)]
    fn word(&mut self, word: u64, first: u64) {
        const LOW: u64 = 0x0101_0101_0101_0101;
        const HIGH: u64 = 0x8080_8080_8080_8080;
        let flags = !(word >> 7) & LOW;
        // Each byte of `flags` is 0 or 1: their sum gathers in the top byte of the
        // product, without the bit-by-bit steps `count_ones` takes where the build may
        // not use a popcount instruction.
        self.ends += flags.wrapping_mul(LOW) >> 56;
        self.short &= flags != 0 && self.carried + flags.trailing_zeros() / 8 < 8;
        self.carried = flags.leading_zeros() / 8;
        let word = word | first;
        self.zero |= word.wrapping_sub(LOW) & !word & HIGH != 0;
    }
}

/// [`check_packed`] decoding every id: for the bodies its quick pass cannot vouch for.
fn check_packed_exactly(body: &[u8]) -> Result<u64, PackedError> {
    let (mut pos, mut count, mut last) = (0, 0u64, 0u64);
    while pos < body.len() {
        let (gap, len) = read_varint_checked(&body[pos..]).ok_or(PackedError::EndsInsideId)?;
        if count > 0 && gap == 0 {
            return Err(PackedError::RepeatsId);
        }
        last = last.checked_add(gap).ok_or(PackedError::PastU64)?;
        pos += len;
        count += 1;
    }
    match count {
        0 => Err(PackedError::Empty),
        n if n > PACKED_MAX => Err(PackedError::TooMany(n)),
        n => Ok(n),
    }
}

/// Reads the varint at `pos`, returning its value and the offset just past it.
fn read_varint(bytes: &[u8], mut pos: usize) -> (u64, usize) {
    let mut value = 0;
    let mut shift = 0;
    loop {
        let byte = bytes[pos];
        pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return (value, pos);
        }
        shift += 7;
    }
}

/// The ids of a packed body, ascending.
#[derive(Clone, Debug)]
struct Ids<'a> {
    body: &'a [u8],
    pos: usize,
    last: u64,
}

impl<'a> Ids<'a> {
    fn new(body: &'a [u8]) -> Self {
        Ids { body, pos: 0, last: 0 }
    }
}

impl Iterator for Ids<'_> {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        if self.pos == self.body.len() {
            return None;
        }
        let (gap, pos) = read_varint(self.body, self.pos);
        self.pos = pos;
        self.last += gap;
        Some(self.last)
    }
}

/// A borrowed, read-only view of one user's set, whatever its form.
#[derive(Clone, Copy, Debug)]
pub struct SetView<'a> {
    form: Form<'a>,
}

#[derive(Clone, Copy, Debug)]
enum Form<'a> {
    /// The body of a packed entry, key already stripped.
    Packed(&'a [u8]),
    Roaring(&'a RoaringTreemap),
}

impl<'a> SetView<'a> {
    pub(crate) fn packed(body: &'a [u8]) -> Self {
        SetView { form: Form::Packed(body) }
    }

    pub(crate) fn roaring(set: &'a RoaringTreemap) -> Self {
        SetView { form: Form::Roaring(set) }
    }

    /// Number of read ids.
    pub fn len(&self) -> u64 {
        match self.form {
            Form::Packed(body) => packed_len(body),
            Form::Roaring(set) => set.len(),
        }
    }

    /// The packed body (key stripped), when the set is in packed form.
    pub(crate) fn packed_body(&self) -> Option<&'a [u8]> {
        match self.form {
            Form::Packed(body) => Some(body),
            Form::Roaring(_) => None,
        }
    }

    /// Whether no id is read; never true for a set held by the store.
    pub fn is_empty(&self) -> bool {
        match self.form {
            Form::Packed(body) => body.is_empty(),
            Form::Roaring(set) => set.is_empty(),
        }
    }

    /// Whether `msg` is read.
    pub fn contains(&self, msg: u64) -> bool {
        match self.form {
            Form::Packed(body) => Ids::new(body).find(|&id| id >= msg) == Some(msg),
            Form::Roaring(set) => set.contains(msg),
        }
    }

    /// Whether each of `msgs` is read, in the same order.
    pub fn check(&self, msgs: &[u64]) -> Vec<bool> {
        match self.form {
            Form::Packed(body) => {
                // One decode, then a binary search per id, instead of a scan per id.
                let ids: Vec<u64> = Ids::new(body).collect();
                msgs.iter().map(|msg| ids.binary_search(msg).is_ok()).collect()
            }
            Form::Roaring(set) => msgs.iter().map(|&msg| set.contains(msg)).collect(),
        }
    }

    /// Number of read ids in `from..=to`.
    pub fn count_in(&self, from: u64, to: u64) -> u64 {
        if from > to {
            return 0;
        }
        match self.form {
            Form::Packed(body) => Ids::new(body).take_while(|&id| id <= to).filter(|&id| id >= from).count() as u64,
            Form::Roaring(set) => {
                let below = if from == 0 { 0 } else { set.rank(from - 1) };
                set.rank(to) - below
            }
        }
    }

    /// The read ids, ascending.
    pub fn iter(&self) -> SetIter<'a> {
        SetIter {
            inner: match self.form {
                Form::Packed(body) => IterForm::Packed(Ids::new(body)),
                Form::Roaring(set) => IterForm::Roaring(set.iter()),
            },
        }
    }

    /// Appends the portable 64-bit roaring serialization of this set
    /// (`RoaringTreemap::serialize_into`), the same bytes whichever form it is in.
    pub fn serialize_portable(&self, out: &mut Vec<u8>) {
        let written = match self.form {
            Form::Packed(body) => to_treemap(body).serialize_into(&mut *out),
            Form::Roaring(set) => set.serialize_into(&mut *out),
        };
        written.expect("writing to a Vec cannot fail");
    }
}

/// Iterator over the ids of a [`SetView`], ascending.
pub struct SetIter<'a> {
    inner: IterForm<'a>,
}

// Iterators live briefly on the stack; boxing the roaring one would cost an allocation
// per call to save stack space nobody is short of.
#[allow(clippy::large_enum_variant)]
enum IterForm<'a> {
    Packed(Ids<'a>),
    Roaring(roaring::treemap::Iter<'a>),
}

impl Iterator for SetIter<'_> {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        match &mut self.inner {
            IterForm::Packed(ids) => ids.next(),
            IterForm::Roaring(ids) => ids.next(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    const KEY: [u8; KEY_LEN] = [7, 6, 5, 4, 3, 2, 1];

    /// Applies edits starting from no set, following every form change like the store.
    fn run(edits: &[Edit<'_>]) -> Holder {
        let mut holder = Holder::None;
        for &edit in edits {
            holder = holder.apply(edit);
        }
        holder
    }

    #[derive(Debug)]
    enum Holder {
        None,
        Packed(Box<[u8]>),
        Roaring(RoaringTreemap),
    }

    impl Holder {
        fn apply(self, edit: Edit<'_>) -> Holder {
            let (outcome, before) = match self {
                Holder::None => (edit_packed(&KEY, &[], edit), Holder::None),
                Holder::Packed(entry) => {
                    assert_eq!(entry_key(&entry), KEY);
                    (edit_packed(&KEY, entry_body(&entry), edit), Holder::Packed(entry))
                }
                Holder::Roaring(mut set) => (edit_roaring(&KEY, &mut set, edit), Holder::Roaring(set)),
            };
            match outcome.form {
                NewForm::Kept => before,
                NewForm::Packed(entry) => Holder::Packed(entry),
                NewForm::Roaring(set) => Holder::Roaring(set),
                NewForm::Empty => Holder::None,
            }
        }

        fn ids(&self) -> Vec<u64> {
            match self {
                Holder::None => Vec::new(),
                Holder::Packed(entry) => SetView::packed(entry_body(entry)).iter().collect(),
                Holder::Roaring(set) => SetView::roaring(set).iter().collect(),
            }
        }
    }

    #[test]
    fn varints_round_trip_at_every_width_boundary() {
        let mut values = vec![0, 1, u64::MAX, u64::MAX - 1];
        for bits in (7..64).step_by(7) {
            values.extend([(1u64 << bits) - 1, 1u64 << bits]);
        }
        for value in values {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            assert_eq!(out.len(), varint_len(value), "length of {value}");
            assert_eq!(read_varint(&out, 0), (value, out.len()), "value {value}");
        }
    }

    #[test]
    fn single_inserts_keep_ids_ascending_and_distinct_at_both_ends_of_u64() {
        let ids = [500, 0, u64::MAX, 1 << 63, 499, 501, u64::MAX - 1, 500, 0, u64::MAX];
        let edits: Vec<_> = ids.iter().map(|&id| Edit::Insert(id)).collect();
        let expected: Vec<u64> = ids.iter().copied().collect::<BTreeSet<_>>().into_iter().collect();
        let holder = run(&edits);
        assert!(matches!(holder, Holder::Packed(_)));
        assert_eq!(holder.ids(), expected);
    }

    #[test]
    fn inserting_a_present_id_or_removing_an_absent_one_changes_nothing() {
        let entry = encode(&KEY, &[3, 9]);
        for edit in [Edit::Insert(9), Edit::Remove(4), Edit::Remove(10), Edit::InsertMany(&[3, 9])] {
            let outcome = edit_packed(&KEY, entry_body(&entry), edit);
            assert!(matches!(outcome.form, NewForm::Kept), "{edit:?}");
            assert_eq!((outcome.added, outcome.removed), (0, 0), "{edit:?}");
        }
    }

    #[test]
    fn removing_an_id_rebases_the_next_gap_on_the_previous_id() {
        for (gone, left) in [(0, vec![200, u64::MAX]), (200, vec![0, u64::MAX]), (u64::MAX, vec![0, 200])] {
            let holder = run(&[Edit::InsertMany(&[0, 200, u64::MAX]), Edit::Remove(gone)]);
            assert_eq!(holder.ids(), left, "after removing {gone}");
        }
    }

    #[test]
    fn removing_the_last_id_empties_the_set() {
        let outcome = edit_packed(&KEY, entry_body(&encode(&KEY, &[42])), Edit::Remove(42));
        assert!(matches!(outcome.form, NewForm::Empty));
        assert_eq!(outcome.removed, 1);
    }

    #[test]
    fn a_set_past_packed_max_becomes_roaring_whether_by_insert_or_batch() {
        let full: Vec<u64> = (0..PACKED_MAX).map(|i| i * 1000).collect();
        let by_insert = run(&[Edit::InsertMany(&full), Edit::Insert(7)]);
        assert!(matches!(by_insert, Holder::Roaring(_)));
        assert_eq!(by_insert.ids().len() as u64, PACKED_MAX + 1);

        let at_limit = run(&[Edit::InsertMany(&full)]);
        assert!(matches!(at_limit, Holder::Packed(_)));
        let more: Vec<u64> = (1..30).collect();
        let by_batch = run(&[Edit::InsertMany(&full[..100]), Edit::InsertMany(&more)]);
        assert!(matches!(by_batch, Holder::Roaring(_)));
        assert_eq!(by_batch.ids().len(), 129);
    }

    #[test]
    fn a_range_stays_packed_only_while_the_union_fits() {
        // 100 even ids; 100..=156 adds its 28 odd ids, reaching exactly PACKED_MAX.
        let start: Vec<u64> = (0..100).map(|i| i * 2).collect();
        let fits = run(&[Edit::InsertMany(&start), Edit::InsertRange { from: 100, to: 156 }]);
        assert!(matches!(fits, Holder::Packed(_)));
        assert_eq!(fits.ids().len() as u64, PACKED_MAX);

        let over = run(&[Edit::InsertMany(&start), Edit::InsertRange { from: 100, to: 157 }]);
        assert!(matches!(over, Holder::Roaring(_)));
        assert_eq!(over.ids().len() as u64, PACKED_MAX + 1);
    }

    #[test]
    fn a_huge_range_goes_to_roaring_without_expanding() {
        let outcome = edit_packed(&KEY, &[], Edit::InsertRange { from: u64::MAX - 999_999, to: u64::MAX });
        assert_eq!(outcome.added, 1_000_000);
        let NewForm::Roaring(set) = outcome.form else { panic!("expected roaring") };
        assert_eq!(set.len(), 1_000_000);
        assert!(set.contains(u64::MAX));
    }

    #[test]
    fn a_reversed_range_is_empty() {
        let outcome = edit_packed(&KEY, &[], Edit::InsertRange { from: 5, to: 4 });
        assert!(matches!(outcome.form, NewForm::Kept));
        let mut set = RoaringTreemap::new();
        assert_eq!(edit_roaring(&KEY, &mut set, Edit::InsertRange { from: 5, to: 4 }).added, 0);
    }

    #[test]
    fn roaring_returns_to_packed_only_below_roaring_min() {
        let ids: Vec<u64> = (0..=PACKED_MAX).map(|i| i << 40).collect();
        let mut holder = run(&[Edit::InsertMany(&ids)]);
        for (removed, &id) in ids.iter().enumerate().map(|(i, id)| (i as u64 + 1, id)) {
            holder = holder.apply(Edit::Remove(id));
            let left = PACKED_MAX + 1 - removed;
            let expect_packed = left < ROARING_MIN;
            match holder {
                Holder::Roaring(_) if !expect_packed && left > 0 => {}
                Holder::Packed(_) if expect_packed && left > 0 => {}
                Holder::None if left == 0 => {}
                ref other => panic!("{left} ids left, held as {other:?}"),
            }
            assert_eq!(holder.ids(), &ids[removed as usize..], "{left} ids left");
        }
    }

    #[test]
    fn views_agree_on_membership_and_counts_in_both_forms() {
        let ids: Vec<u64> = vec![0, 1, 1000, 1 << 63, u64::MAX - 1, u64::MAX];
        let entry = encode(&KEY, &ids);
        let set = RoaringTreemap::from_sorted_iter(ids.iter().copied()).unwrap();
        let probes = [0, 2, 1000, 1 << 63, u64::MAX];
        for view in [SetView::packed(entry_body(&entry)), SetView::roaring(&set)] {
            assert_eq!(view.len(), 6);
            assert_eq!(view.iter().collect::<Vec<_>>(), ids);
            assert_eq!(view.check(&probes), [true, false, true, true, true]);
            assert!(probes.iter().all(|&p| view.contains(p) == ids.contains(&p)));
            assert_eq!(view.count_in(0, u64::MAX), 6);
            assert_eq!(view.count_in(1, 1000), 2);
            assert_eq!(view.count_in(2, 999), 0);
            assert_eq!(view.count_in(u64::MAX, u64::MAX), 1);
            assert_eq!(view.count_in(1 << 63, u64::MAX - 1), 2);
        }
    }

    #[test]
    fn serialize_portable_round_trips_through_roaring_for_both_forms() {
        let small: Vec<u64> = vec![0, 5, 1 << 32, (1 << 63) + 5, u64::MAX];
        let large: Vec<u64> = (0..1000).map(|i| i * 7919).chain([u64::MAX]).collect();
        let entry = encode(&KEY, &small);
        let set = RoaringTreemap::from_sorted_iter(large.iter().copied()).unwrap();
        for (view, ids) in [(SetView::packed(entry_body(&entry)), &small), (SetView::roaring(&set), &large)] {
            let mut out = vec![0xAA];
            view.serialize_portable(&mut out);
            assert_eq!(out[0], 0xAA, "appends rather than overwrites");
            let back = RoaringTreemap::deserialize_from(&out[1..]).unwrap();
            assert_eq!(back.iter().collect::<Vec<_>>(), *ids);
        }
    }

    #[test]
    fn varints_are_counted_a_word_at_a_time_as_byte_by_byte() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..80 {
            for _ in 0..200 {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        // Mostly continuation bytes, so that long runs occur.
                        match (rng >> 33) % 9 {
                            0 => 0,
                            1 | 2 => (rng >> 40) as u8 & 0x7f,
                            _ => 0x80 | (rng >> 40) as u8,
                        }
                    })
                    .collect();
                let ends = bytes.iter().filter(|&&b| b < 0x80).count() as u64;
                let longest = bytes.split(|&b| b < 0x80).map(<[u8]>::len).max().unwrap_or(0);
                let zero = bytes.get(1..).is_some_and(|rest| rest.contains(&0));
                assert_eq!(count_varints(&bytes), (ends, longest < 8, zero), "{bytes:02x?}");
            }
        }
    }

    #[test]
    fn packed_bodies_read_from_a_file_are_checked() {
        let entry = encode(&KEY, &[0, 5, 1 << 40, u64::MAX]);
        assert_eq!(check_packed(entry_body(&entry)), Ok(4));
        assert_eq!(check_packed(&[]), Err(PackedError::Empty));
        assert_eq!(check_packed(&[0x85]), Err(PackedError::EndsInsideId));
        assert_eq!(check_packed(&[3, 0]), Err(PackedError::RepeatsId));
        // Ten bytes whose value needs 65 bits.
        let too_wide = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x03];
        assert_eq!(check_packed(&too_wide), Err(PackedError::EndsInsideId));
        let overflow = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0x01];
        assert_eq!(check_packed(&overflow), Err(PackedError::PastU64));
        let many = encode(&KEY, &(0..=PACKED_MAX).collect::<Vec<_>>());
        assert!(check_packed(entry_body(&many)).unwrap_err().to_string().contains("more than the 128"));
    }
}
