//! The shard map: which replication group owns which users.
//!
//! A user id is hashed by the map's [`Partitioner`] into a 64-bit space, and the space is
//! cut into half-open [`HashRange`]s, each owned by one group. Hashing first spreads new
//! sequential user ids over every group instead of filling the last range. The
//! partitioner's name is part of the map, so a map can never be read with another hash.
//!
//! The map lives in etcd (see the engine's `sharding`) and is changed only by
//! compare-and-swap; every change raises its `version`, and every range it touches gets
//! that version as its own. A group's [`Ownership`] is the part of one map version it
//! serves; its master writes it into its own log, so its slaves and any promoted master
//! inherit it.
//!
//! In JSON, range bounds are hex strings (`"0x8000000000000000"`): 64-bit numbers do not
//! survive JSON parsers that read numbers as doubles. The end of the whole space, 2^64,
//! is `"0x10000000000000000"`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// One past the last hash: ranges end at most here.
pub const SPACE_END: u128 = 1 << 64;

/// How a user id becomes a position in the hash space.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Partitioner {
    /// The SplitMix64 finalizer (Steele, Lea and Flood, 2014): a bijection of `u64`, so
    /// no two users collide, and consecutive ids land far apart.
    #[default]
    #[serde(rename = "splitmix64")]
    SplitMix64,
}

impl Partitioner {
    /// The position of `user` in the hash space.
    pub fn hash(self, user: u64) -> u64 {
        match self {
            Partitioner::SplitMix64 => {
                let mut z = user.wrapping_add(0x9e37_79b9_7f4a_7c15);
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                z ^ (z >> 31)
            }
        }
    }

    /// The partitioner's name, as the map spells it.
    pub fn name(self) -> &'static str {
        match self {
            Partitioner::SplitMix64 => "splitmix64",
        }
    }

    /// The partitioner's byte in log records.
    pub fn byte(self) -> u8 {
        match self {
            Partitioner::SplitMix64 => 1,
        }
    }

    /// The partitioner a log record's byte names.
    pub fn of_byte(byte: u8) -> Option<Partitioner> {
        (byte == 1).then_some(Partitioner::SplitMix64)
    }
}

/// A half-open range `[start, end)` of the hash space, `end` at most [`SPACE_END`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HashRange {
    pub start: u64,
    pub end: u128,
}

impl HashRange {
    /// The whole hash space.
    pub const ALL: HashRange = HashRange { start: 0, end: SPACE_END };

    /// `[start, end)`, refused when empty or past the space.
    pub fn new(start: u64, end: u128) -> Result<HashRange, ShardMapError> {
        let range = HashRange { start, end };
        if end > SPACE_END || u128::from(start) >= end {
            return Err(ShardMapError::EmptyRange(range));
        }
        Ok(range)
    }

    /// Whether `hash` falls inside.
    pub fn contains(&self, hash: u64) -> bool {
        hash >= self.start && u128::from(hash) < self.end
    }

    /// Whether the two share a hash.
    pub fn overlaps(&self, other: &HashRange) -> bool {
        u128::from(self.start) < other.end && u128::from(other.start) < self.end
    }

    /// The hashes of the range, as a fraction of the space (for display).
    pub fn share(&self) -> f64 {
        (self.end - u128::from(self.start)) as f64 / SPACE_END as f64
    }
}

impl fmt::Display for HashRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#018x}..{:#018x}", self.start, self.end)
    }
}

impl std::str::FromStr for HashRange {
    type Err = ShardMapError;

    /// `START..END` in hex (`0x` optional); `END` may be `end` for 2^64.
    fn from_str(s: &str) -> Result<HashRange, ShardMapError> {
        let bad = || ShardMapError::BadRange(s.to_string());
        let (start, end) = s.split_once("..").ok_or_else(bad)?;
        let start = parse_hex(start).filter(|v| *v < SPACE_END).ok_or_else(bad)? as u64;
        let end = if end.trim() == "end" { SPACE_END } else { parse_hex(end).ok_or_else(bad)? };
        HashRange::new(start, end)
    }
}

/// A hash in hex (`0x` optional), as range bounds are written.
pub fn parse_hash(s: &str) -> Result<u64, ShardMapError> {
    parse_hex(s).and_then(|v| u64::try_from(v).ok()).ok_or_else(|| ShardMapError::BadHash(s.to_string()))
}

fn parse_hex(s: &str) -> Option<u128> {
    let s = s.trim();
    let digits = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")).unwrap_or(s);
    if digits.is_empty() || digits.len() > 17 {
        return None;
    }
    u128::from_str_radix(digits, 16).ok()
}

/// A bound in JSON: a hex string.
fn hex<S: Serializer>(value: &u128, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{value:#x}"))
}

fn unhex<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
    let text = String::deserialize(d)?;
    parse_hex(&text)
        .ok_or_else(|| serde::de::Error::custom(format!("`{text}` is not a hex bound like 0x8000000000000000")))
}

impl Serialize for HashRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Wire {
            #[serde(serialize_with = "hex")]
            start: u128,
            #[serde(serialize_with = "hex")]
            end: u128,
        }
        Wire { start: self.start.into(), end: self.end }.serialize(s)
    }
}

impl<'de> Deserialize<'de> for HashRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<HashRange, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Wire {
            #[serde(deserialize_with = "unhex")]
            start: u128,
            #[serde(deserialize_with = "unhex")]
            end: u128,
        }
        let w = Wire::deserialize(d)?;
        if w.start >= SPACE_END {
            return Err(serde::de::Error::custom(format!("range start {:#x} is past the hash space", w.start)));
        }
        HashRange::new(w.start as u64, w.end).map_err(serde::de::Error::custom)
    }
}

/// The name of a replication group (`cluster.group`): 1 to 32 of `a-z`, `0-9` and `-`,
/// starting with a letter or digit. It appears in etcd keys and in write tokens
/// (`<group>:<epoch>:<lsn>`), hence no `:` or `/`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct GroupId(String);

impl GroupId {
    pub fn new(name: &str) -> Result<GroupId, ShardMapError> {
        let ok = (1..=32).contains(&name.len())
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !name.starts_with('-');
        if ok {
            Ok(GroupId(name.to_string()))
        } else {
            Err(ShardMapError::BadGroup(name.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for GroupId {
    type Error = ShardMapError;

    fn try_from(name: String) -> Result<GroupId, ShardMapError> {
        GroupId::new(&name)
    }
}

impl From<GroupId> for String {
    fn from(g: GroupId) -> String {
        g.0
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One range of the map and the group that owns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RangeOwnerWire", into = "RangeOwnerWire")]
pub struct RangeOwner {
    pub range: HashRange,
    pub group: GroupId,
    /// The map version that last changed this range.
    pub version: u64,
}

/// A [`RangeOwner`] in JSON: `{"start", "end", "group", "version"}`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RangeOwnerWire {
    #[serde(serialize_with = "hex", deserialize_with = "unhex")]
    start: u128,
    #[serde(serialize_with = "hex", deserialize_with = "unhex")]
    end: u128,
    group: GroupId,
    version: u64,
}

impl TryFrom<RangeOwnerWire> for RangeOwner {
    type Error = ShardMapError;

    fn try_from(w: RangeOwnerWire) -> Result<RangeOwner, ShardMapError> {
        let start =
            u64::try_from(w.start).map_err(|_| ShardMapError::BadRange(format!("{:#x}..{:#x}", w.start, w.end)))?;
        Ok(RangeOwner { range: HashRange::new(start, w.end)?, group: w.group, version: w.version })
    }
}

impl From<RangeOwner> for RangeOwnerWire {
    fn from(r: RangeOwner) -> RangeOwnerWire {
        RangeOwnerWire { start: r.range.start.into(), end: r.range.end, group: r.group, version: r.version }
    }
}

/// Every range of the hash space and its owner, at one version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardMap {
    /// Raised by every change.
    pub version: u64,
    pub partitioner: Partitioner,
    /// Sorted, contiguous, covering the whole space ([`ShardMap::check`]).
    pub ranges: Vec<RangeOwner>,
}

/// Why a shard map, range or group name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardMapError {
    #[error("`{0}` is no group name: 1 to 32 of a-z, 0-9 and -, not starting with -")]
    BadGroup(String),
    #[error("`{0}` is no hash range: expected START..END in hex, END at most 0x10000000000000000 or `end`")]
    BadRange(String),
    #[error("the range {0} is empty or reaches past the hash space")]
    EmptyRange(HashRange),
    #[error("the map has no ranges")]
    NoRanges,
    #[error("hashes {from:#x}..{to:#x} belong to no range")]
    Missing { from: u128, to: u128 },
    #[error("ranges {0} and {1} overlap")]
    Overlap(HashRange, HashRange),
    #[error("{0} is not a range of the map (bitark shards show lists them)")]
    NotARange(HashRange),
    #[error("{at:#x} does not cut {range} in two: a split point lies strictly inside the range")]
    BadSplit { range: HashRange, at: u64 },
    #[error("`{0}` is no hash: expected a 64-bit number in hex, such as 0xc000000000000000")]
    BadHash(String),
    #[error("no group given")]
    NoGroups,
    #[error("group `{0}` is named twice")]
    DuplicateGroup(GroupId),
}

impl ShardMap {
    /// Version 1: the space cut into `groups.len()` nearly equal ranges, in the given order.
    pub fn even(groups: &[GroupId]) -> Result<ShardMap, ShardMapError> {
        if groups.is_empty() {
            return Err(ShardMapError::NoGroups);
        }
        for (i, g) in groups.iter().enumerate() {
            if groups[..i].contains(g) {
                return Err(ShardMapError::DuplicateGroup(g.clone()));
            }
        }
        let n = groups.len() as u128;
        let ranges = groups
            .iter()
            .enumerate()
            .map(|(i, group)| {
                let (i, start) = (i as u128, SPACE_END * i as u128 / n);
                let range = HashRange { start: start as u64, end: SPACE_END * (i + 1) / n };
                RangeOwner { range, group: group.clone(), version: 1 }
            })
            .collect();
        Ok(ShardMap { version: 1, partitioner: Partitioner::SplitMix64, ranges })
    }

    /// Whether the ranges cover the space once: sorted, no gap, no overlap.
    pub fn check(&self) -> Result<(), ShardMapError> {
        let mut sorted: Vec<&RangeOwner> = self.ranges.iter().collect();
        sorted.sort_by_key(|r| r.range);
        let mut at: u128 = 0;
        let mut previous: Option<HashRange> = None;
        for r in &sorted {
            let start = u128::from(r.range.start);
            if start < at {
                return Err(ShardMapError::Overlap(previous.unwrap_or(r.range), r.range));
            }
            if start > at {
                return Err(ShardMapError::Missing { from: at, to: start });
            }
            at = r.range.end;
            previous = Some(r.range);
        }
        match sorted.is_empty() {
            true => Err(ShardMapError::NoRanges),
            false if at < SPACE_END => Err(ShardMapError::Missing { from: at, to: SPACE_END }),
            false => Ok(()),
        }
    }

    /// The range that holds `user`. The map must have passed [`ShardMap::check`] and be
    /// sorted (every map this module builds is).
    pub fn owner_of(&self, user: u64) -> &RangeOwner {
        let hash = self.partitioner.hash(user);
        let i = self.ranges.partition_point(|r| r.range.start <= hash);
        &self.ranges[i.saturating_sub(1)]
    }

    /// The group that owns `range` as one of the map's ranges.
    pub fn owner_of_range(&self, range: HashRange) -> Option<&GroupId> {
        self.ranges.iter().find(|r| r.range == range).map(|r| &r.group)
    }

    /// The groups that own a range, each once, in the order of their first range.
    pub fn groups(&self) -> Vec<GroupId> {
        let mut out: Vec<GroupId> = Vec::new();
        for r in &self.ranges {
            if !out.contains(&r.group) {
                out.push(r.group.clone());
            }
        }
        out
    }

    /// The next version: `range` owned by `group`, the ranges it cuts split at its
    /// bounds. Every piece that changes owner takes the new version; the rest keep theirs.
    pub fn assign(&self, range: HashRange, group: &GroupId) -> Result<ShardMap, ShardMapError> {
        self.check()?;
        let version = self.version + 1;
        let mut ranges = Vec::with_capacity(self.ranges.len() + 2);
        for r in &self.ranges {
            if !r.range.overlaps(&range) {
                ranges.push(r.clone());
                continue;
            }
            if r.range.start < range.start {
                ranges.push(RangeOwner { range: HashRange { end: range.start.into(), ..r.range }, ..r.clone() });
            }
            let inside = HashRange { start: r.range.start.max(range.start), end: r.range.end.min(range.end) };
            let changed = &r.group != group;
            ranges.push(RangeOwner {
                range: inside,
                group: group.clone(),
                version: if changed { version } else { r.version },
            });
            if r.range.end > range.end {
                ranges.push(RangeOwner { range: HashRange { start: range.end as u64, ..r.range }, ..r.clone() });
            }
        }
        let map = ShardMap { version, partitioner: self.partitioner, ranges };
        map.check()?;
        Ok(map)
    }

    /// The next version: the range `range` (one of the map's, exactly) cut in two at
    /// `at` (its midpoint when `None`), both halves still its group's and both at the
    /// new version. Metadata only: the group serves the same users as before.
    pub fn split(&self, range: HashRange, at: Option<u64>) -> Result<ShardMap, ShardMapError> {
        self.check()?;
        let i = self.ranges.iter().position(|r| r.range == range).ok_or(ShardMapError::NotARange(range))?;
        let at = at.unwrap_or_else(|| ((u128::from(range.start) + range.end) / 2) as u64);
        if at <= range.start || u128::from(at) >= range.end {
            return Err(ShardMapError::BadSplit { range, at });
        }
        let version = self.version + 1;
        let whole = &self.ranges[i];
        let halves = [HashRange { end: at.into(), ..range }, HashRange { start: at, ..range }]
            .map(|range| RangeOwner { range, group: whole.group.clone(), version });
        let mut ranges = self.ranges.clone();
        ranges.splice(i..=i, halves);
        let map = ShardMap { version, partitioner: self.partitioner, ranges };
        map.check()?;
        Ok(map)
    }

    /// Sorts the ranges by start (a map read from JSON may list them in any order).
    pub fn sorted(mut self) -> ShardMap {
        self.ranges.sort_by_key(|r| r.range);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn g(name: &str) -> GroupId {
        GroupId::new(name).unwrap()
    }

    #[test]
    fn the_partitioner_is_pinned_to_its_published_values() {
        // SplitMix64's reference outputs for the seeds 0 and 1 after one step: a change
        // of the function would move every user to another group.
        assert_eq!(Partitioner::SplitMix64.hash(0), 0xe220_a839_7b1d_cdaf);
        assert_eq!(Partitioner::SplitMix64.hash(1), 0x910a_2dec_8902_5cc1);
    }

    #[test]
    fn sequential_users_spread_over_every_group() {
        let map = ShardMap::even(&[g("a"), g("b"), g("c"), g("d")]).unwrap();
        let mut counts = std::collections::HashMap::new();
        for user in 1..=40_000u64 {
            *counts.entry(map.owner_of(user).group.clone()).or_insert(0u32) += 1;
        }
        for group in map.groups() {
            let n = counts[&group];
            assert!((9_000..11_000).contains(&n), "{group} got {n} of 40000");
        }
    }

    #[test]
    fn an_even_map_covers_the_space_once() {
        for n in 1..=7 {
            let groups: Vec<_> = (0..n).map(|i| g(&format!("g{i}"))).collect();
            let map = ShardMap::even(&groups).unwrap();
            map.check().unwrap();
            assert_eq!(map.ranges.len(), n);
            assert_eq!(map.ranges.last().unwrap().range.end, SPACE_END);
        }
        assert_eq!(ShardMap::even(&[]), Err(ShardMapError::NoGroups));
        assert_eq!(ShardMap::even(&[g("a"), g("a")]), Err(ShardMapError::DuplicateGroup(g("a"))));
    }

    #[test]
    fn gaps_and_overlaps_are_refused_by_name() {
        let mut map = ShardMap::even(&[g("a"), g("b")]).unwrap();
        map.ranges[1].range.start += 1;
        assert!(matches!(map.check(), Err(ShardMapError::Missing { .. })), "{:?}", map.check());
        map.ranges[1].range.start -= 2;
        let e = map.check().unwrap_err();
        assert!(matches!(e, ShardMapError::Overlap(..)), "{e}");
        assert!(e.to_string().contains("overlap"));
        map.ranges[1].range.start += 1;
        map.ranges[1].range.end -= 1;
        assert_eq!(map.check(), Err(ShardMapError::Missing { from: SPACE_END - 1, to: SPACE_END }));
        map.ranges.clear();
        assert_eq!(map.check(), Err(ShardMapError::NoRanges));
    }

    #[test]
    fn split_cuts_one_range_in_two_for_the_same_group_and_nothing_else() {
        let map = ShardMap::even(&[g("a"), g("b")]).unwrap();
        let half = 1u64 << 63;
        let upper = map.ranges[1].range;
        let next = map.split(upper, None).unwrap();
        assert_eq!(next.version, 2);
        let summary: Vec<_> = next.ranges.iter().map(|r| (r.range.start, r.group.as_str(), r.version)).collect();
        assert_eq!(summary, vec![(0, "a", 1), (half, "b", 2), (half + (1 << 62), "b", 2)]);
        assert_eq!(next.ranges[2].range.end, SPACE_END);
        for user in 0..2_000u64 {
            assert_eq!(map.owner_of(user).group, next.owner_of(user).group, "user {user} changed group");
        }
        let at = next.split(next.ranges[0].range, Some(7)).unwrap();
        assert_eq!((at.ranges[0].range.end, at.ranges[1].range.start), (7, 7));
        // Only a range of the map, and only strictly inside it.
        let not_one = HashRange::new(0, 5).unwrap();
        assert_eq!(map.split(not_one, None), Err(ShardMapError::NotARange(not_one)));
        let lower = map.ranges[0].range;
        assert_eq!(map.split(lower, Some(0)), Err(ShardMapError::BadSplit { range: lower, at: 0 }));
        assert_eq!(map.split(lower, Some(half)), Err(ShardMapError::BadSplit { range: lower, at: half }));
        let tiny = ShardMap::even(&[g("a")]).unwrap().assign(HashRange::new(0, 1).unwrap(), &g("b")).unwrap();
        assert!(matches!(tiny.split(tiny.ranges[0].range, None), Err(ShardMapError::BadSplit { .. })), "one hash");
    }

    #[test]
    fn assign_splits_the_ranges_it_cuts_and_versions_only_what_changed() {
        let map = ShardMap::even(&[g("a"), g("b")]).unwrap();
        let quarter = 1u64 << 62;
        let next = map.assign(HashRange::new(quarter, 3 * u128::from(quarter)).unwrap(), &g("c")).unwrap();
        assert_eq!(next.version, 2);
        let summary: Vec<_> = next.ranges.iter().map(|r| (r.range.start, r.group.as_str(), r.version)).collect();
        assert_eq!(summary, vec![(0, "a", 1), (quarter, "c", 2), (2 * quarter, "c", 2), (3 * quarter, "b", 1)]);
        // Giving a group what it owns already changes no range's version.
        let same = next.assign(HashRange::new(0, quarter.into()).unwrap(), &g("a")).unwrap();
        assert_eq!(same.ranges[0].version, 1);
    }

    #[test]
    fn ranges_parse_from_hex_and_refuse_nonsense() {
        assert_eq!("0..end".parse::<HashRange>().unwrap(), HashRange::ALL);
        assert_eq!("0x10..0x8000000000000000".parse::<HashRange>().unwrap(), HashRange { start: 16, end: 1 << 63 });
        for bad in ["", "10", "5..5", "6..5", "0..0x20000000000000000", "x..y", "0..10000000000000001"] {
            assert!(bad.parse::<HashRange>().is_err(), "{bad}");
        }
    }

    #[test]
    fn group_names_are_short_and_plain() {
        for ok in ["a", "eu-1", "0", "g23456789012345678901234567890ab"] {
            GroupId::new(ok).unwrap();
        }
        for bad in ["", "-a", "A", "a:b", "a/b", "g234567890123456789012345678901ab"] {
            assert_eq!(GroupId::new(bad), Err(ShardMapError::BadGroup(bad.into())), "{bad}");
        }
    }

    #[test]
    fn the_json_form_uses_hex_bounds_and_reads_back() {
        let map = ShardMap::even(&[g("a"), g("b")]).unwrap();
        let text = serde_json::to_string(&map).unwrap();
        assert!(text.contains(r#""end":"0x10000000000000000""#), "{text}");
        assert!(text.contains(r#""partitioner":"splitmix64""#), "{text}");
        assert_eq!(serde_json::from_str::<ShardMap>(&text).unwrap(), map);
        let other = text.replace("splitmix64", "crc32");
        assert!(serde_json::from_str::<ShardMap>(&other).is_err());
        let extra = text.replace(r#""version":1,"partitioner""#, r#""version":1,"owner":"x","partitioner""#);
        assert!(serde_json::from_str::<ShardMap>(&extra).unwrap_err().to_string().contains("owner"));
        let extra = text.replace(r#""group":"a""#, r#""group":"a","weight":2"#);
        assert!(serde_json::from_str::<ShardMap>(&extra).unwrap_err().to_string().contains("weight"));
        let bad_group = text.replace(r#""group":"a""#, r#""group":"A:1""#);
        assert!(serde_json::from_str::<ShardMap>(&bad_group).unwrap_err().to_string().contains("A:1"));
    }

    proptest! {
        #[test]
        fn every_user_has_exactly_one_owner_after_any_assignments(
            cuts in proptest::collection::vec((any::<u64>(), any::<u64>(), 0usize..3), 0..8),
            users in proptest::collection::vec(any::<u64>(), 1..50),
        ) {
            let groups = [g("a"), g("b"), g("c")];
            let mut map = ShardMap::even(&groups[..2]).unwrap();
            for (x, y, who) in cuts {
                let (lo, hi) = (x.min(y), x.max(y));
                if lo == hi { continue; }
                map = map.assign(HashRange::new(lo, hi.into()).unwrap(), &groups[who]).unwrap();
            }
            map.check().unwrap();
            for user in users {
                let owner = &map.owner_of(user).group;
                let claims = groups.iter().filter(|grp| map.ownership(grp).owns(user)).count();
                prop_assert_eq!(claims, 1);
                prop_assert!(map.ownership(owner).owns(user));
            }
        }
    }
}
