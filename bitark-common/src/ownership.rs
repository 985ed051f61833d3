//! A group's [`Ownership`]: the ranges of one shard map version it serves, and which of
//! them are frozen for a move. Its master logs it, so its slaves and any promoted master
//! inherit both.
//!
//! A frozen range is still owned and still read, but takes no write: it is the source's
//! side of a move's cutover, set by one logged record whose LSN is the freeze point (every
//! write to the range lies below it) and lifted by another, or by a map version that gives
//! the range away.

use crate::shard::{GroupId, HashRange, Partitioner, ShardMap};
use serde::{Deserialize, Serialize};

/// The ranges one group serves, at one map version: what its master logs and checks
/// every request against.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ownership {
    pub group: GroupId,
    pub map_version: u64,
    pub partitioner: Partitioner,
    /// Each owned range with its own version, sorted by start.
    pub ranges: Vec<(HashRange, u64)>,
    /// The owned ranges that take no writes (each one of `ranges`), sorted by start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub frozen: Vec<HashRange>,
}

impl Ownership {
    /// The log record's payload (little endian): `group_len u8 | group | map_version u64
    /// | partitioner u8 | count u32 | count × (start u64 | last u64 | version u64)`, where
    /// `last` is the range's last hash (its end minus one, so 2^64 fits); then, only when
    /// a range is frozen, `frozen u32 | frozen × (start u64 | last u64)`. A record without
    /// the frozen part is one of no frozen range, as every record before freezing was.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.group.as_str().len() as u8);
        out.extend_from_slice(self.group.as_str().as_bytes());
        out.extend_from_slice(&self.map_version.to_le_bytes());
        out.push(self.partitioner.byte());
        out.extend_from_slice(&(self.ranges.len() as u32).to_le_bytes());
        for (range, version) in &self.ranges {
            out.extend_from_slice(&range.start.to_le_bytes());
            out.extend_from_slice(&((range.end - 1) as u64).to_le_bytes());
            out.extend_from_slice(&version.to_le_bytes());
        }
        if !self.frozen.is_empty() {
            out.extend_from_slice(&(self.frozen.len() as u32).to_le_bytes());
            for range in &self.frozen {
                out.extend_from_slice(&range.start.to_le_bytes());
                out.extend_from_slice(&((range.end - 1) as u64).to_le_bytes());
            }
        }
    }

    /// Bytes of [`Ownership::encode`]'s payload.
    pub fn encoded_len(&self) -> usize {
        let frozen = if self.frozen.is_empty() { 0 } else { 4 + 16 * self.frozen.len() };
        1 + self.group.as_str().len() + 8 + 1 + 4 + 24 * self.ranges.len() + frozen
    }

    /// Reads [`Ownership::encode`]'s payload; the reason when it is not one.
    pub fn decode(payload: &[u8]) -> Result<Ownership, &'static str> {
        let n = *payload.first().ok_or("empty")? as usize;
        let fixed = 1 + n + 8 + 1 + 4;
        if payload.len() < fixed {
            return Err("shorter than its header");
        }
        let name = std::str::from_utf8(&payload[1..1 + n]).map_err(|_| "group name is not UTF-8")?;
        let group = GroupId::new(name).map_err(|_| "not a group name")?;
        let word = |i: usize| u64::from_le_bytes(payload[i..i + 8].try_into().expect("slice of 8"));
        let count_at = |i: usize| u32::from_le_bytes(payload[i..i + 4].try_into().expect("slice of 4")) as usize;
        let map_version = word(1 + n);
        let partitioner = Partitioner::of_byte(payload[1 + n + 8]).ok_or("unknown partitioner")?;
        let count = count_at(fixed - 4);
        let ranges_end = fixed.checked_add(count.checked_mul(24).ok_or("range count too large")?);
        let ranges_end = ranges_end.filter(|end| *end <= payload.len()).ok_or("range count disagrees with length")?;
        let mut ranges = Vec::with_capacity(count);
        for i in 0..count {
            let at = fixed + 24 * i;
            let (start, last) = (word(at), word(at + 8));
            if start > last || ranges.last().is_some_and(|(r, _): &(HashRange, u64)| r.end > u128::from(start)) {
                return Err("ranges out of order");
            }
            ranges.push((HashRange { start, end: u128::from(last) + 1 }, word(at + 16)));
        }
        let mut frozen = Vec::new();
        if payload.len() > ranges_end {
            if payload.len() < ranges_end + 4 {
                return Err("range count disagrees with length");
            }
            let count = count_at(ranges_end);
            if count == 0 || payload.len() != ranges_end + 4 + 16 * count {
                return Err("frozen range count disagrees with length");
            }
            for i in 0..count {
                let at = ranges_end + 4 + 16 * i;
                let range = HashRange { start: word(at), end: u128::from(word(at + 8)) + 1 };
                if !ranges.iter().any(|(r, _)| *r == range) {
                    return Err("a frozen range is not an owned range");
                }
                if frozen.last().is_some_and(|before: &HashRange| before.start >= range.start) {
                    return Err("frozen ranges out of order");
                }
                frozen.push(range);
            }
        }
        Ok(Ownership { group, map_version, partitioner, ranges, frozen })
    }

    /// Whether `user` falls in an owned range.
    pub fn owns(&self, user: u64) -> bool {
        self.range_of(user).is_some()
    }

    /// The index in `ranges` of the owned range `user` falls in.
    pub fn range_of(&self, user: u64) -> Option<usize> {
        let hash = self.partitioner.hash(user);
        let i = self.ranges.partition_point(|(r, _)| r.start <= hash);
        (i > 0 && self.ranges[i - 1].0.contains(hash)).then(|| i - 1)
    }

    /// Whether the owned range at `index` is frozen.
    pub fn is_frozen(&self, index: usize) -> bool {
        !self.frozen.is_empty() && self.ranges.get(index).is_some_and(|(r, _)| self.frozen.contains(r))
    }

    /// This ownership with the owned range `range` frozen (`freeze`) or not; `None` when
    /// `range` is not one of its ranges.
    pub fn with_frozen(&self, range: HashRange, freeze: bool) -> Option<Ownership> {
        self.ranges.iter().any(|(r, _)| *r == range).then(|| {
            let mut next = self.clone();
            next.frozen.retain(|r| *r != range);
            if freeze {
                next.frozen.push(range);
                next.frozen.sort();
            }
            next
        })
    }

    /// This ownership (of a newer map) with the freezes of `before` kept: every owned
    /// range inside a range `before` froze stays frozen, so a split of a frozen range
    /// freezes both halves. A range given away takes its freeze with it.
    pub fn keeping_frozen(mut self, before: &Ownership) -> Ownership {
        self.frozen = self
            .ranges
            .iter()
            .map(|(r, _)| *r)
            .filter(|r| before.frozen.iter().any(|f| f.start <= r.start && r.end <= f.end))
            .collect();
        self
    }
}

impl ShardMap {
    /// What `group` owns in this map, nothing frozen.
    pub fn ownership(&self, group: &GroupId) -> Ownership {
        let ranges = self.ranges.iter().filter(|r| &r.group == group).map(|r| (r.range, r.version)).collect();
        Ownership {
            group: group.clone(),
            map_version: self.version,
            partitioner: self.partitioner,
            ranges,
            frozen: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::{ShardMap, SPACE_END};

    fn g(name: &str) -> GroupId {
        GroupId::new(name).unwrap()
    }

    #[test]
    fn an_ownership_record_reads_back_and_refuses_damage() {
        let map = ShardMap::even(&[g("a"), g("eu-2"), g("a")][..2]).unwrap();
        let map = map.assign(HashRange::new(1 << 62, SPACE_END).unwrap(), &g("a")).unwrap();
        let own = map.ownership(&g("a"));
        assert_eq!(own.ranges.last().unwrap().0.end, SPACE_END);
        let mut bytes = Vec::new();
        own.encode(&mut bytes);
        assert_eq!(bytes.len(), own.encoded_len());
        assert_eq!(Ownership::decode(&bytes), Ok(own.clone()));
        assert_eq!(Ownership::decode(&bytes[..bytes.len() - 1]), Err("range count disagrees with length"));
        assert_eq!(Ownership::decode(&[]), Err("empty"));
        let mut bad = bytes.clone();
        bad[1] = b'A';
        assert_eq!(Ownership::decode(&bad), Err("not a group name"));
        let none = ShardMap::even(&[g("b")]).unwrap().ownership(&g("a"));
        let mut bytes = Vec::new();
        none.encode(&mut bytes);
        assert_eq!(Ownership::decode(&bytes), Ok(none.clone()));
        assert!(!none.owns(7));
    }

    #[test]
    fn a_frozen_range_reads_back_and_a_record_without_one_is_unchanged() {
        let map = ShardMap::even(&[g("a"), g("b"), g("c"), g("d")])
            .unwrap()
            .assign(HashRange::new(1 << 63, SPACE_END).unwrap(), &g("a"));
        let own = map.unwrap().ownership(&g("a"));
        let (first, last) = (own.ranges[0].0, own.ranges[1].0);
        let mut plain = Vec::new();
        own.encode(&mut plain);
        let frozen = own.with_frozen(last, true).unwrap().with_frozen(first, true).unwrap();
        assert_eq!(frozen.frozen, vec![first, last], "sorted by start");
        let mut bytes = Vec::new();
        frozen.encode(&mut bytes);
        assert_eq!(bytes.len(), frozen.encoded_len());
        assert_eq!(&bytes[..plain.len()], &plain[..], "the frozen part is a trailer");
        assert_eq!(Ownership::decode(&bytes), Ok(frozen.clone()));
        assert!(frozen.is_frozen(0) && frozen.is_frozen(1) && !own.is_frozen(0));
        assert_eq!(Ownership::decode(&bytes[..bytes.len() - 1]), Err("frozen range count disagrees with length"));
        assert_eq!(Ownership::decode(&bytes[..plain.len() + 2]), Err("range count disagrees with length"));
        // A frozen range that is no owned range, such as half of one, is damage.
        let mut half = bytes.clone();
        half[plain.len() + 4] ^= 1;
        assert_eq!(Ownership::decode(&half), Err("a frozen range is not an owned range"));
        // Thawing both gives back the record of no frozen range, byte for byte.
        let thawed = frozen.with_frozen(first, false).unwrap().with_frozen(last, false).unwrap();
        let mut again = Vec::new();
        thawed.encode(&mut again);
        assert_eq!((thawed, again), (own.clone(), plain));
        assert_eq!(own.with_frozen(HashRange::new(1, 2).unwrap(), true), None, "not an owned range");
    }

    #[test]
    fn a_newer_map_keeps_the_freezes_of_the_ranges_still_owned() {
        let map = ShardMap::even(&[g("a"), g("b")]).unwrap();
        let upper = map.ownership(&g("b")).ranges[0].0;
        let before = map.ownership(&g("b")).with_frozen(upper, true).unwrap();
        // A split of the frozen range: both halves stay frozen.
        let split = map.split(upper, Some(0xc000_0000_0000_0000)).unwrap();
        let after = split.ownership(&g("b")).keeping_frozen(&before);
        assert_eq!(after.frozen, after.ranges.iter().map(|(r, _)| *r).collect::<Vec<_>>());
        // One half given away: only the other stays frozen.
        let moved = split.assign(after.ranges[1].0, &g("a")).unwrap();
        let after = moved.ownership(&g("b")).keeping_frozen(&before);
        assert_eq!(after.frozen, vec![after.ranges[0].0]);
        // Nothing frozen before: nothing frozen after.
        let none = moved.ownership(&g("b")).keeping_frozen(&map.ownership(&g("b")));
        assert!(none.frozen.is_empty());
    }
}
