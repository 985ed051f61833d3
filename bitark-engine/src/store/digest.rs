//! The order-independent digest of a store's contents.
//!
//! It sums a 128-bit hash of every (user, msg) pair, so it depends on contents only,
//! never on history, form or iteration order: two nodes holding the same pairs have the
//! same digest, whatever path their writes took.

use super::keys::mix;
use crate::readset::SetView;

/// Order-independent summary of a store's contents; equal contents give equal digests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreDigest {
    pub users: u64,
    pub marks: u64,
    /// 32 lowercase hex digits: two independent 64-bit lanes.
    pub digest: String,
}

/// Running sum of the pair hashes, one per lane. Addition makes the result independent
/// of visiting order; two lanes with unrelated seeds make the digest 128 bits.
#[derive(Default)]
pub(super) struct DigestSum {
    users: u64,
    marks: u64,
    lanes: [u64; 2],
}

const LANE_SEEDS: [u64; 2] = [0x243f_6a88_85a3_08d3, 0x1319_8a2e_0370_7344];

impl DigestSum {
    pub(super) fn add(&mut self, user: u64, set: &SetView<'_>) {
        self.users += 1;
        let [a, b] = LANE_SEEDS.map(|seed| mix(user ^ seed));
        for msg in set.iter() {
            self.marks += 1;
            self.lanes[0] = self.lanes[0].wrapping_add(mix(a ^ msg));
            self.lanes[1] = self.lanes[1].wrapping_add(mix(b.wrapping_add(msg)));
        }
    }

    pub(super) fn finish(self) -> StoreDigest {
        let [a, b] = self.lanes;
        StoreDigest { users: self.users, marks: self.marks, digest: format!("{a:016x}{b:016x}") }
    }
}
