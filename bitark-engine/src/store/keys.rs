//! Where a user lives: the id hashing that picks a shard and the 56-bit key an entry
//! carries.
//!
//! `mix` (the murmur3 64-bit finalizer) is a bijection on `u64`. The top 8 bits of
//! `mix(user)` choose the shard, so an entry stores only the remaining 56 bits, a fixed
//! 7 bytes, and the user is recovered by inverting `mix`. The obvious alternative, the
//! user id as a varint, takes 9–10 bytes for random or snowflake-style 64-bit ids: 7
//! bytes save 2–3 bytes of every such entry and make the key test a fixed-width
//! compare. Small sequential ids pay for it, 7 bytes where a varint would take 3–4.

use crate::readset::{self, KEY_LEN};

pub(super) const SHARD_BITS: u32 = 8;
pub(super) const SHARDS: usize = 1 << SHARD_BITS;
const KEY_BITS: u32 = 64 - SHARD_BITS;
pub(super) const KEY_MASK: u64 = (1 << KEY_BITS) - 1;
const _: () = assert!(KEY_BITS as usize == 8 * KEY_LEN, "an entry key holds exactly the bits the shard does not imply");

/// Where a user lives: its shard, and the 56-bit key its entry carries.
#[derive(Clone, Copy)]
pub(super) struct Slot {
    pub(super) shard: usize,
    pub(super) key: u64,
}

impl Slot {
    pub(super) fn of(user: u64) -> Self {
        let mixed = mix(user);
        Slot { shard: (mixed >> KEY_BITS) as usize, key: mixed & KEY_MASK }
    }

    /// The user whose entry in `shard` carries `key`.
    pub(super) fn user(shard: usize, key: u64) -> u64 {
        unmix((shard as u64) << KEY_BITS | key)
    }

    pub(super) fn key_bytes(self) -> [u8; KEY_LEN] {
        let bytes = self.key.to_le_bytes();
        bytes[..KEY_LEN].try_into().expect("KEY_LEN is below 8")
    }

    pub(super) fn hash(self) -> u64 {
        table_hash(self.key)
    }
}

/// The hash the shard tables use. hashbrown picks the bucket from the low bits and a
/// 7-bit tag from the top bits; a key's top 8 bits are always zero, so rotating brings
/// 8 varying bits, independent of the bucket bits, up to where the tag is read.
pub(super) fn table_hash(key: u64) -> u64 {
    key.rotate_right(SHARD_BITS)
}

pub(super) fn key_of_entry(entry: &[u8]) -> u64 {
    let mut bytes = [0; 8];
    bytes[..KEY_LEN].copy_from_slice(readset::entry_key(entry));
    u64::from_le_bytes(bytes)
}

const MIX_1: u64 = 0xff51_afd7_ed55_8ccd;
const MIX_2: u64 = 0xc4ce_b9fe_1a85_ec53;

/// murmur3's 64-bit finalizer: every step is invertible, so distinct inputs never collide.
pub(super) fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(MIX_1);
    x ^= x >> 33;
    x = x.wrapping_mul(MIX_2);
    x ^ (x >> 33)
}

/// The inverse of [`mix`]. A shift of 33 is at least half the width, so `x ^= x >> 33`
/// undoes itself; the multiplications are undone by the modular inverses.
fn unmix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(inverse(MIX_2));
    x ^= x >> 33;
    x = x.wrapping_mul(inverse(MIX_1));
    x ^ (x >> 33)
}

/// Inverse of an odd number modulo 2^64 by Newton's iteration; each step doubles the
/// number of correct low bits, starting from 3.
const fn inverse(odd: u64) -> u64 {
    let mut x = odd;
    let mut step = 0;
    while step < 5 {
        x = x.wrapping_mul(2u64.wrapping_sub(odd.wrapping_mul(x)));
        step += 1;
    }
    x
}
