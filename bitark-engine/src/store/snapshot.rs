//! The store's side of a snapshot in format 2: each shard's entries as they are held in
//! memory, so that loading one is a copy per user into a table sized once.
//!
//! A chunk body (see `bitark_infra::snapshot`) is a run of entries, all of one shard:
//!
//! ```text
//! varint(len << 1 | roaring) | key, KEY_LEN bytes | len bytes
//! ```
//! - packed (flag 0): the bytes are the packed body, so `key | body` is the entry
//!   itself, copied into the shard's pages;
//! - roaring (flag 1): the bytes are the portable roaring serialization of the set.
//!
//! The user is not stored: the shard and the key give it back (see [`super::keys`]). A
//! 20-id user takes 1 + 7 + ~80 bytes, less than its entry and table slot in memory.

use bitark_infra::snapshot::{Chunk, CHUNK_MAX};
use roaring::RoaringTreemap;

use super::keys::{Slot, SHARDS};
use super::{Delta, ReadStore};
use crate::readset::PackedError;

/// What is wrong with the snapshot state being loaded. Recovery reports it as corruption
/// of the snapshot file, at the chunk's offset.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoadError {
    #[error("a chunk of shard {0}; the store has {SHARDS}")]
    NoSuchShard(usize),
    #[error("a bad entry header at byte {0} of the chunk")]
    BadHeader(usize),
    #[error("an entry that runs past the chunk at byte {0} of the chunk")]
    PastChunk(usize),
    #[error("user {user}: {reason}")]
    Packed { user: u64, reason: PackedError },
    #[error("user {0} appears twice")]
    Twice(u64),
    #[error("user {user}: bad roaring set: {reason}")]
    Roaring { user: u64, reason: std::io::Error },
    #[error("user {0}: an empty set")]
    EmptySet(u64),
    #[error("the chunk header says {said_users} users and {said_marks} marks, its entries hold {users} and {marks}")]
    Counts { said_users: u64, said_marks: u64, users: u64, marks: u64 },
    #[error("user {user}: entry says {said} marks, set holds {held}")]
    Marks { user: u64, said: u64, held: u64 },
    #[error("a metadata chunk: {0}")]
    Meta(&'static str),
    #[error("snapshot worker panicked")]
    WorkerPanicked,
}
use crate::readset::{self, NewForm, KEY_LEN, PACKED_MAX};

/// The first byte of a metadata chunk: what it holds.
const META_OWNERSHIP: u8 = 1;

impl ReadStore {
    /// The snapshot's metadata chunk, for `SnapshotWriter::add_meta`: `kind u8 |
    /// payload`, today only the ownership (`1 |` [`bitark_common::Ownership::encode`]).
    /// `None` on a node that is not sharded, whose snapshots then keep format 2.
    pub fn encode_meta(&self) -> Option<Vec<u8>> {
        let own = self.ownership()?;
        let mut body = Vec::with_capacity(1 + own.encoded_len());
        body.push(META_OWNERSHIP);
        own.encode(&mut body);
        Some(body)
    }

    /// Takes a snapshot's metadata chunk back.
    pub(crate) fn load_meta(&self, body: &[u8]) -> Result<(), LoadError> {
        match body.split_first() {
            Some((&META_OWNERSHIP, payload)) => {
                let own = bitark_common::Ownership::decode(payload).map_err(LoadError::Meta)?;
                self.apply(&bitark_common::Command::SetOwnership(own));
                Ok(())
            }
            Some(_) => Err(LoadError::Meta("unknown kind")),
            None => Err(LoadError::Meta("empty")),
        }
    }
}

/// One chunk of a shard's entries, ready for `SnapshotWriter::add_chunk`.
#[derive(Debug, Default)]
pub struct EncodedChunk {
    pub users: u32,
    pub marks: u64,
    pub body: Vec<u8>,
}

impl ReadStore {
    /// Encodes the users of `shard` (as [`Self::walk_shard`] sees them) into chunks of
    /// about `CHUNK_MAX` bytes, appended to `chunks`. Answers the shard's user count.
    pub fn encode_shard(&self, shard: usize, chunks: &mut Vec<EncodedChunk>) -> u64 {
        let mut users = 0;
        let mut current = EncodedChunk::default();
        let mut portable = Vec::new();
        self.walk_shard(shard, |user, set| {
            let key = Slot::of(user).key_bytes();
            let (flag, payload) = match set.packed_body() {
                Some(body) => (0, body),
                None => {
                    portable.clear();
                    set.serialize_portable(&mut portable);
                    (1, portable.as_slice())
                }
            };
            readset::put_varint(&mut current.body, (payload.len() as u64) << 1 | flag);
            current.body.extend_from_slice(&key);
            current.body.extend_from_slice(payload);
            current.users += 1;
            current.marks += set.len();
            users += 1;
            if current.body.len() >= CHUNK_MAX {
                chunks.push(std::mem::take(&mut current));
            }
        });
        if current.users > 0 {
            chunks.push(current);
        }
        users
    }

    /// Loads one snapshot chunk into its shard, which must not hold any of its users
    /// yet, under one hold of the shard's lock. The table is sized for the whole shard
    /// on its first chunk. Every entry is checked; an error names the user or the byte
    /// of the chunk body it is about, and leaves whatever was loaded in place (the
    /// caller discards the whole load).
    pub(crate) fn load_chunk(&self, chunk: &Chunk) -> Result<(), LoadError> {
        let shard_no = chunk.shard as usize;
        if shard_no >= SHARDS {
            return Err(LoadError::NoSuchShard(shard_no));
        }
        let mut shard = self.write(shard_no);
        // Bounded, so that a damaged count cannot ask for an absurd table.
        let want = (chunk.shard_users as usize).min(1 << 26).saturating_sub(shard.packed.len());
        if want > 0 {
            shard.reserve_packed(want);
        }
        let body = &chunk.body;
        let (mut pos, mut users, mut marks) = (0, 0u64, 0u64);
        let result = (|| {
            while pos < body.len() {
                let (tag, n) = readset::read_varint_checked(&body[pos..]).ok_or(LoadError::BadHeader(pos))?;
                let end = (tag >> 1)
                    .try_into()
                    .ok()
                    .and_then(|len: usize| (pos + n).checked_add(KEY_LEN + len))
                    .filter(|&end| end <= body.len())
                    .ok_or(LoadError::PastChunk(pos))?;
                let entry = &body[pos + n..end];
                let slot = Slot { shard: shard_no, key: super::key_of_entry(entry) };
                let user = Slot::user(shard_no, slot.key);
                let payload = &entry[KEY_LEN..];
                let count = if tag & 1 == 0 {
                    // A checked body holds at most PACKED_MAX varints of at most 10 bytes,
                    // so it fits a page.
                    let count = readset::check_packed(payload).map_err(|reason| LoadError::Packed { user, reason })?;
                    if !shard.install_new_packed(slot, user, entry) {
                        return Err(LoadError::Twice(user));
                    }
                    count
                } else {
                    if shard.view(slot, user).is_some() {
                        return Err(LoadError::Twice(user));
                    }
                    let set = RoaringTreemap::deserialize_from(payload)
                        .map_err(|reason| LoadError::Roaring { user, reason })?;
                    let (count, form) = match set.len() {
                        0 => return Err(LoadError::EmptySet(user)),
                        n if n <= PACKED_MAX => {
                            let ids: Vec<u64> = set.iter().collect();
                            (n, NewForm::Packed(readset::encode(&slot.key_bytes(), &ids)))
                        }
                        n => (n, NewForm::Roaring(set)),
                    };
                    shard.install(slot, user, form);
                    count
                };
                users += 1;
                marks += count;
                pos = end;
            }
            if (users, marks) != (chunk.users as u64, chunk.marks) {
                return Err(LoadError::Counts {
                    said_users: chunk.users as u64,
                    said_marks: chunk.marks,
                    users,
                    marks,
                });
            }
            Ok(())
        })();
        self.account(&mut shard, Delta { users: users as i64, added: marks, removed: 0 });
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitark_common::Command;

    fn chunks_of(store: &ReadStore) -> Vec<Chunk> {
        let mut out = Vec::new();
        for shard in 0..store.shard_count() {
            let mut encoded = Vec::new();
            let shard_users = store.encode_shard(shard, &mut encoded);
            out.extend(encoded.into_iter().map(|c| Chunk {
                shard: shard as u32,
                users: c.users,
                marks: c.marks,
                shard_users,
                offset: 0,
                body: c.body,
            }));
        }
        out
    }

    fn sample() -> ReadStore {
        let store = ReadStore::new();
        for user in 0..2_000u64 {
            store.apply(&Command::MarkBatch {
                user: user * 7919,
                msgs: (0..user % 30 + 1).map(|i| i * 1_000_003).collect(),
            });
        }
        // Two large sets, one of them a range: the roaring form.
        store.apply(&Command::MarkRange { user: 5, from: 10, to: 1_000_000 });
        store.apply(&Command::MarkBatch { user: u64::MAX, msgs: (0..500).map(|i| i << 40).collect() });
        store
    }

    #[test]
    fn chunks_load_back_into_the_same_contents() {
        let store = sample();
        let loaded = ReadStore::new();
        for chunk in chunks_of(&store) {
            loaded.load_chunk(&chunk).unwrap();
        }
        assert_eq!(loaded.digest(), store.digest());
        assert_eq!((loaded.user_count(), loaded.mark_count()), (store.user_count(), store.mark_count()));
        assert!(loaded.is_read(5, 999_999) && !loaded.is_read(5, 9));
    }

    #[test]
    fn a_chunk_whose_entries_do_not_add_up_is_refused() {
        let store = sample();
        let mut chunk = chunks_of(&store).into_iter().next().unwrap();
        chunk.marks += 1;
        let error = ReadStore::new().load_chunk(&chunk).unwrap_err().to_string();
        assert!(error.contains("the chunk header says"), "{error}");

        let mut chunk = chunks_of(&store).into_iter().next().unwrap();
        chunk.body.truncate(chunk.body.len() - 1);
        let error = ReadStore::new().load_chunk(&chunk).unwrap_err().to_string();
        assert!(error.contains("runs past the chunk"), "{error}");
    }

    #[test]
    fn a_user_given_twice_is_refused() {
        let store = sample();
        let chunk = chunks_of(&store).into_iter().next().unwrap();
        let loaded = ReadStore::new();
        loaded.load_chunk(&chunk).unwrap();
        assert!(loaded.load_chunk(&chunk).unwrap_err().to_string().contains("appears twice"));
    }

    #[test]
    fn a_malformed_packed_set_is_refused() {
        let store = ReadStore::new();
        store.apply(&Command::MarkBatch { user: 1, msgs: vec![3, 4] });
        let mut chunk = chunks_of(&store).pop().unwrap();
        // The second gap (1) becomes 0: the same id twice.
        let last = chunk.body.len() - 1;
        chunk.body[last] = 0;
        assert!(ReadStore::new().load_chunk(&chunk).unwrap_err().to_string().contains("repeats an id"));
    }
}
