//! Packed entries held back to back in pages of [`PAGE`] bytes, so that an entry costs
//! its own bytes plus a 2-byte length, and a table slot is a 4-byte [`EntryRef`].
//!
//! One allocation per entry (a `Box<[u8]>`) costs a 16-byte fat pointer in every table
//! slot, which hashbrown multiplies by its 1.1–2.3 slots per entry, and the rounding up
//! to the allocator's size class: together about 40 of a 20-id user's 140 bytes.
//!
//! In a page an entry is `[len: u16 LE][key | body]`. An edit appends the new entry to
//! the tail page and leaves the old bytes dead where they are. A page all of whose
//! entries are dead is reused at once. When more than a [`DEAD_SHARE`]th of the bytes
//! written to a shard's pages is dead outside the tail page, the page with the most dead
//! bytes is evacuated:
//! its live entries are copied to the tail and the page is reused. Only the table knows
//! which entries are live (a slot points at them), so [`super::Shard`] drives evacuation
//! with [`Pages::refs_in`] and [`Pages::copy`]. An evacuation copies at most one page
//! under the shard's write lock: a pause of microseconds, not a walk of the shard.
//!
//! Evacuating the emptiest page rather than any page past a mark matters for the order
//! live traffic has. When every user gains a mark in turn, each page dies from one end
//! to the other and is reused with nothing to copy; a fixed per-page mark would move
//! the rest of each page ahead of its users' own edits, only for those copies to die
//! one by one and drag the pages they landed in past the mark too.
//!
//! An `EntryRef` holds the page in its top 17 bits and the offset in its low 15, so a
//! shard holds at most 4 GiB of packed entries: 1 TiB over all shards, about a hundred
//! times the 10^10 marks BitArk is built for.

use crate::readset::{KEY_LEN, PACKED_MAX};

/// Bytes in a page.
pub(super) const PAGE: usize = 1 << OFFSET_BITS;
const OFFSET_BITS: u32 = 15;
const MAX_PAGES: usize = 1 << (32 - OFFSET_BITS);
const HEADER: usize = 2;
/// The longest entry: a key and `PACKED_MAX` varints of at most 10 bytes.
const MAX_ENTRY: usize = KEY_LEN + 10 * PACKED_MAX as usize;
const _: () = assert!(HEADER + MAX_ENTRY <= PAGE && MAX_ENTRY <= u16::MAX as usize);

/// Pages are evacuated while more than `1 / DEAD_SHARE` of the bytes written to them
/// is dead.
pub(super) const DEAD_SHARE: usize = 4;

/// Emptied pages that keep their memory for reuse; past these, an emptied page's memory
/// is freed.
const SPARE_PAGES: usize = 2;

/// Where an entry sits in its shard's [`Pages`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct EntryRef(u32);

impl EntryRef {
    fn new(page: usize, offset: usize) -> Self {
        debug_assert!(page < MAX_PAGES && offset < PAGE);
        EntryRef((page << OFFSET_BITS | offset) as u32)
    }

    fn page(self) -> usize {
        (self.0 >> OFFSET_BITS) as usize
    }

    fn offset(self) -> usize {
        self.0 as usize & (PAGE - 1)
    }
}

/// One shard's packed entries.
#[derive(Default)]
pub(super) struct Pages {
    /// Page memory by page number; `None` for an emptied page whose memory was freed.
    memory: Vec<Option<Box<[u8; PAGE]>>>,
    /// Bytes written to and bytes dead in each page, by page number.
    usage: Vec<Usage>,
    /// The page new entries go to; `None` until the first entry.
    tail: Option<usize>,
    /// Emptied pages, reused before new ones are added.
    spare: Vec<usize>,
    /// Sums of `usage` over all pages.
    used: usize,
    dead: usize,
}

#[derive(Clone, Copy, Default)]
struct Usage {
    used: u16,
    dead: u16,
}

impl Pages {
    /// The entry (`key | body`) at `at`.
    #[inline]
    pub(super) fn entry(&self, at: EntryRef) -> &[u8] {
        let page = self.memory[at.page()].as_deref().expect("a live entry's page has memory");
        let start = at.offset() + HEADER;
        let len = u16::from_le_bytes([page[start - 2], page[start - 1]]) as usize;
        &page[start..start + len]
    }

    /// Appends `entry` to the tail page, starting a new tail when it does not fit.
    pub(super) fn push(&mut self, entry: &[u8]) -> EntryRef {
        assert!(entry.len() <= MAX_ENTRY, "a packed entry of {} bytes; the most is {MAX_ENTRY}", entry.len());
        let need = HEADER + entry.len();
        let page = match self.tail {
            Some(tail) if self.usage[tail].used as usize + need <= PAGE => tail,
            _ => self.new_tail(),
        };
        let offset = self.usage[page].used as usize;
        let memory = self.memory[page].as_deref_mut().expect("the tail page has memory");
        memory[offset..offset + HEADER].copy_from_slice(&(entry.len() as u16).to_le_bytes());
        memory[offset + HEADER..offset + need].copy_from_slice(entry);
        self.usage[page].used += need as u16;
        self.used += need;
        EntryRef::new(page, offset)
    }

    /// Appends a copy of the entry at `at`, which stays where it is until its page is
    /// emptied.
    pub(super) fn copy(&mut self, at: EntryRef) -> EntryRef {
        let mut buffer = [0; MAX_ENTRY];
        let entry = self.entry(at);
        let len = entry.len();
        buffer[..len].copy_from_slice(entry);
        self.push(&buffer[..len])
    }

    /// Marks the entry at `at` dead, and empties its page if that was the page's last
    /// live entry.
    pub(super) fn release(&mut self, at: EntryRef) {
        let page = at.page();
        let size = HEADER + self.entry(at).len();
        let usage = &mut self.usage[page];
        usage.dead += size as u16;
        self.dead += size;
        debug_assert!(usage.dead <= usage.used);
        if usage.dead == usage.used && self.tail != Some(page) {
            self.empty(page);
        }
    }

    /// The page to evacuate next, while too much of the written bytes is dead outside
    /// the tail: the page with the most dead bytes, never the tail, which evacuation
    /// could not empty. The caller moves its live entries with [`Self::copy`], then
    /// calls [`Self::empty`].
    pub(super) fn due_for_evacuation(&self) -> Option<usize> {
        let in_tail = self.tail.map_or(0, |tail| self.usage[tail].dead as usize);
        if (self.dead - in_tail) * DEAD_SHARE <= self.used {
            return None;
        }
        let candidates = self.usage.iter().enumerate().filter(|&(page, u)| u.dead > 0 && self.tail != Some(page));
        candidates.max_by_key(|(_, u)| u.dead).map(|(page, _)| page)
    }

    /// Every entry ever written to `page` since it was last emptied, dead ones included.
    pub(super) fn refs_in(&self, page: usize) -> Vec<EntryRef> {
        let mut refs = Vec::new();
        let mut offset = 0;
        while offset < self.usage[page].used as usize {
            let at = EntryRef::new(page, offset);
            refs.push(at);
            offset += HEADER + self.entry(at).len();
        }
        refs
    }

    /// Makes `page`, none of whose entries is referenced any more, free for reuse.
    pub(super) fn empty(&mut self, page: usize) {
        debug_assert_ne!(self.tail, Some(page));
        let usage = std::mem::take(&mut self.usage[page]);
        self.used -= usage.used as usize;
        self.dead -= usage.dead as usize;
        if self.spare.len() >= SPARE_PAGES {
            self.memory[page] = None;
        }
        self.spare.push(page);
    }

    fn new_tail(&mut self) -> usize {
        let page = match self.spare.pop() {
            Some(page) => page,
            None => {
                assert!(self.memory.len() < MAX_PAGES, "a shard holds {MAX_PAGES} pages of packed entries, its most");
                self.memory.push(None);
                self.usage.push(Usage::default());
                self.memory.len() - 1
            }
        };
        if self.memory[page].is_none() {
            let zeroed = vec![0; PAGE].into_boxed_slice().try_into().expect("a vector of PAGE bytes");
            self.memory[page] = Some(zeroed);
        }
        self.tail = Some(page);
        page
    }

    /// Bytes of page memory held, live, dead or not yet written.
    #[cfg(test)]
    pub(super) fn held_bytes(&self) -> usize {
        self.memory.iter().flatten().count() * PAGE
    }

    /// Bytes written and not dead, headers included, after checking the sums and that
    /// no more than a [`DEAD_SHARE`]th of the written bytes is dead outside the tail.
    #[cfg(test)]
    pub(super) fn live_bytes(&self) -> usize {
        let used: usize = self.usage.iter().map(|u| u.used as usize).sum();
        let dead: usize = self.usage.iter().map(|u| u.dead as usize).sum();
        assert_eq!((used, dead), (self.used, self.dead), "the sums match the pages");
        let in_tail = self.tail.map_or(0, |tail| self.usage[tail].dead as usize);
        assert!((dead - in_tail) * DEAD_SHARE <= used, "{dead} of {used} written bytes are dead");
        used - dead
    }

    /// Bytes an entry of `len` bytes takes in a page.
    #[cfg(test)]
    pub(super) fn footprint(len: usize) -> usize {
        HEADER + len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seed: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| seed.wrapping_add(i as u8)).collect()
    }

    #[test]
    fn entries_read_back_as_written_across_pages() {
        let mut pages = Pages::default();
        let written: Vec<(EntryRef, Vec<u8>)> = (0..2_000)
            .map(|i| {
                let e = entry(i as u8, KEY_LEN + i % MAX_ENTRY.min(300));
                (pages.push(&e), e)
            })
            .collect();
        assert!(pages.memory.len() > 5, "the entries span several pages");
        for (at, e) in &written {
            assert_eq!(pages.entry(*at), e.as_slice());
        }
        let longest = entry(9, MAX_ENTRY);
        let at = pages.push(&longest);
        assert_eq!(pages.entry(at), longest.as_slice());
    }

    #[test]
    fn the_page_with_the_most_dead_bytes_is_evacuated_once_a_quarter_is_dead() {
        let mut pages = Pages::default();
        let size = 100;
        let per_page = PAGE / (HEADER + size);
        let count = 3 * per_page + per_page / 4;
        let refs: Vec<EntryRef> = (0..count).map(|i| pages.push(&entry(i as u8, size))).collect();
        let on = |page| refs.iter().copied().filter(move |r| r.page() == page);
        // A few entries of page 2, then page 1 from its start: a quarter of all written
        // bytes is dead only once page 1 has lost most of its entries.
        for at in on(2).take(4) {
            pages.release(at);
        }
        let mut released = 0;
        for at in on(1) {
            assert_eq!(pages.due_for_evacuation(), None, "after {released} of page 1");
            pages.release(at);
            released += 1;
            if pages.dead * DEAD_SHARE > pages.used {
                break;
            }
        }
        assert!((per_page / 2..per_page).contains(&released), "{released} of {per_page}");
        assert_eq!(pages.due_for_evacuation(), Some(1), "page 1 has more dead bytes than page 2");

        assert_eq!(pages.refs_in(1), on(1).collect::<Vec<_>>());
        for at in on(1).skip(released) {
            let moved = pages.copy(at);
            assert_eq!(pages.entry(moved), pages.entry(at));
            assert_eq!(moved.page(), 3, "copies go to the tail");
        }
        pages.empty(1);
        assert!(pages.refs_in(1).is_empty());
        assert_eq!(pages.spare, [1]);
        assert_eq!(pages.due_for_evacuation(), None);
    }

    #[test]
    fn a_page_whose_entries_all_die_is_reused_without_evacuation_but_the_tail_is_kept() {
        let mut pages = Pages::default();
        let size = 1000;
        let count = 2 * (PAGE / (HEADER + size));
        let refs: Vec<EntryRef> = (0..count).map(|i| pages.push(&entry(i as u8, size))).collect();
        for &at in &refs {
            pages.release(at);
        }
        assert_eq!(pages.spare, [0], "page 0 emptied itself");
        assert_eq!(pages.tail, Some(1));
        assert_eq!(pages.due_for_evacuation(), None, "only the tail holds dead bytes");
        assert_eq!(pages.live_bytes(), 0);
        let at = pages.push(&entry(1, 100));
        assert_eq!(at.page(), 1, "the tail still takes what fits");
        let at = pages.push(&entry(1, size));
        assert_eq!(at.page(), 0, "a full tail gives way to a spare page");
    }

    #[test]
    fn dead_bytes_in_the_tail_do_not_make_other_pages_due() {
        // One user edited over and over: each edit leaves its previous entry dead in
        // the tail, which evacuating other pages would not help.
        let mut pages = Pages::default();
        let size = 100;
        let first: Vec<EntryRef> = (0..PAGE / (HEADER + size)).map(|i| pages.push(&entry(i as u8, size))).collect();
        pages.release(first[0]);
        let mut hot = pages.push(&entry(0, size));
        assert_eq!(hot.page(), 1);
        for _ in 0..PAGE / (HEADER + size) / 2 {
            let next = pages.push(&entry(1, size));
            pages.release(hot);
            hot = next;
        }
        assert!(pages.dead * DEAD_SHARE > pages.used, "most dead bytes are in the tail");
        assert_eq!(pages.due_for_evacuation(), None);
    }

    #[test]
    fn emptied_pages_are_reused_and_only_a_few_keep_their_memory() {
        let mut pages = Pages::default();
        let size = 1000;
        let count = 10 * PAGE / (HEADER + size);
        let refs: Vec<EntryRef> = (0..count).map(|i| pages.push(&entry(i as u8, size))).collect();
        let before = pages.memory.len();
        let tail = pages.tail.unwrap();
        for page in (0..before).filter(|&p| p != tail) {
            pages.empty(page);
        }
        assert_eq!(pages.held_bytes(), (SPARE_PAGES + 1) * PAGE);
        for i in 0..count / 2 {
            pages.push(&entry(i as u8, size));
        }
        assert_eq!(pages.memory.len(), before, "no page was added while spare ones were left");
        assert!(refs.iter().all(|r| r.page() < before));
    }
}
