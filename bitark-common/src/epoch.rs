//! [`EpochHistory`]: for every epoch a node has known, the LSN at which it began, as
//! Kafka's leader-epoch checkpoint or PostgreSQL's timeline history keep it; and the
//! [`WriteToken`] a write answers with, `"<epoch>:<lsn>"`.
//!
//! Two nodes agree on a record exactly when their histories give its LSN the same
//! epoch. A promotion begins a new epoch at the next LSN; the records an old master
//! wrote past that LSN in its own epoch were never on the new master and are lost.

use crate::ids::{Epoch, Lsn};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// One epoch and the first LSN written in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EpochStart {
    pub epoch: u64,
    pub start_lsn: u64,
}

/// Every epoch a node has known, ascending, each with the LSN it began at. Never
/// empty: a fresh cluster is in epoch 1 from LSN 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<EpochStart>", into = "Vec<EpochStart>")]
pub struct EpochHistory {
    entries: Vec<EpochStart>,
}

/// Why a list of epochs is not a history.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    #[error("an epoch history holds at least one epoch")]
    Empty,
    #[error("epoch {epoch} follows epoch {previous}: epochs must rise")]
    EpochNotRising { epoch: u64, previous: u64 },
    #[error("epoch {epoch} starts at LSN {start}, before epoch {previous} at LSN {previous_start}")]
    StartGoesBack { epoch: u64, start: u64, previous: u64, previous_start: u64 },
    #[error("epoch 0 and LSN 0 are not used")]
    Zero,
}

impl Default for EpochHistory {
    fn default() -> Self {
        EpochHistory { entries: vec![EpochStart { epoch: Epoch::INITIAL.0, start_lsn: 1 }] }
    }
}

/// Where an epoch ended, as a history knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EpochEnd {
    /// A later epoch began after this LSN: records of the epoch asked about past it
    /// are not in this history.
    At(Lsn),
    /// The epoch is the newest this history knows: it has not ended.
    Open,
}

/// What a history says about a write token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenCheck {
    /// The record the token names is part of this history (once its LSN is reached).
    Holds,
    /// The token names an epoch newer than this history knows: the node is behind.
    Ahead,
    /// Another epoch owns that LSN here: the write the token names was lost in a
    /// failover.
    Lost { owner: Epoch },
}

impl EpochHistory {
    /// A history from its entries, checked.
    pub fn new(entries: Vec<EpochStart>) -> Result<EpochHistory, HistoryError> {
        if entries.is_empty() {
            return Err(HistoryError::Empty);
        }
        for (i, e) in entries.iter().enumerate() {
            if e.epoch == 0 || e.start_lsn == 0 {
                return Err(HistoryError::Zero);
            }
            if let Some(p) = i.checked_sub(1).map(|j| entries[j]) {
                if e.epoch <= p.epoch {
                    return Err(HistoryError::EpochNotRising { epoch: e.epoch, previous: p.epoch });
                }
                if e.start_lsn < p.start_lsn {
                    return Err(HistoryError::StartGoesBack {
                        epoch: e.epoch,
                        start: e.start_lsn,
                        previous: p.epoch,
                        previous_start: p.start_lsn,
                    });
                }
            }
        }
        Ok(EpochHistory { entries })
    }

    pub fn entries(&self) -> &[EpochStart] {
        &self.entries
    }

    /// The newest epoch known.
    pub fn current(&self) -> Epoch {
        Epoch(self.entries.last().expect("a history is never empty").epoch)
    }

    /// Where the newest epoch began.
    pub fn current_start(&self) -> Lsn {
        Lsn(self.entries.last().expect("a history is never empty").start_lsn)
    }

    /// The epoch that wrote LSN `lsn` in this history (`None` for LSN 0, or an LSN
    /// before the first epoch known).
    pub fn epoch_at(&self, lsn: Lsn) -> Option<Epoch> {
        self.entries.iter().rev().find(|e| e.start_lsn <= lsn.0).map(|e| Epoch(e.epoch))
    }

    /// Where `epoch` ended here: the largest epoch known at or below it ends where
    /// the next one began (Kafka's `OffsetForLeaderEpoch`). An epoch below the first one
    /// known ended before LSN 1 of it.
    pub fn end_of(&self, epoch: Epoch) -> EpochEnd {
        let next = self.entries.iter().find(|e| e.epoch > epoch.0);
        match next {
            None => EpochEnd::Open,
            Some(n) => EpochEnd::At(Lsn(n.start_lsn - 1)),
        }
    }

    /// Begins `epoch` at `start`: it must be newer than every epoch known and not start
    /// before the newest one did.
    pub fn begin(&mut self, epoch: Epoch, start: Lsn) -> Result<(), HistoryError> {
        let mut entries = self.entries.clone();
        entries.push(EpochStart { epoch: epoch.0, start_lsn: start.0 });
        *self = EpochHistory::new(entries)?;
        Ok(())
    }

    /// Drops every epoch that began after `lsn` (the log was cut back to it).
    pub fn truncate_after(&mut self, lsn: Lsn) {
        let keep = self.entries.iter().filter(|e| e.start_lsn <= lsn.0.max(1)).count().max(1);
        self.entries.truncate(keep);
    }

    /// What this history says about the write named by `token`.
    pub fn check(&self, token: WriteToken) -> TokenCheck {
        if token.epoch > self.current() {
            return TokenCheck::Ahead;
        }
        match self.epoch_at(token.lsn) {
            Some(owner) if owner == token.epoch => TokenCheck::Holds,
            Some(owner) => TokenCheck::Lost { owner },
            None => TokenCheck::Lost { owner: Epoch(0) },
        }
    }
}

impl TryFrom<Vec<EpochStart>> for EpochHistory {
    type Error = HistoryError;

    fn try_from(entries: Vec<EpochStart>) -> Result<Self, Self::Error> {
        EpochHistory::new(entries)
    }
}

impl From<EpochHistory> for Vec<EpochStart> {
    fn from(history: EpochHistory) -> Self {
        history.entries
    }
}

/// The position of a write, `"<epoch>:<lsn>"`: reads on any node can ask for it and
/// learn if it was lost in a failover.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteToken {
    pub epoch: Epoch,
    pub lsn: Lsn,
}

impl fmt::Display for WriteToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.lsn)
    }
}

impl FromStr for WriteToken {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{text}` is not a write token `<epoch>:<lsn>` of two decimal integers");
        let (epoch, lsn) = text.split_once(':').ok_or_else(bad)?;
        let number = |s: &str| {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            s.parse::<u64>().map_err(|_| bad())
        };
        let (epoch, lsn) = (number(epoch)?, number(lsn)?);
        if epoch == 0 {
            return Err(format!("`{text}`: epochs start at 1"));
        }
        Ok(WriteToken { epoch: Epoch(epoch), lsn: Lsn(lsn) })
    }
}

/// A write token with the group that gave it: `<group>:<epoch>:<lsn>` from a sharded
/// node, the two-part `<epoch>:<lsn>` (no group) from a node that is not sharded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScopedToken {
    pub group: Option<crate::shard::GroupId>,
    pub token: WriteToken,
}

impl fmt::Display for ScopedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.group {
            Some(group) => write!(f, "{group}:{}", self.token),
            None => self.token.fmt(f),
        }
    }
}

impl FromStr for ScopedToken {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.bytes().filter(|b| *b == b':').count() != 2 {
            return text.parse().map(|token| ScopedToken { group: None, token });
        }
        let (group, rest) = text.split_once(':').expect("two colons");
        let group = crate::shard::GroupId::new(group).map_err(|e| format!("`{text}`: {e}"))?;
        let token = rest.parse::<WriteToken>().map_err(|_| {
            format!("`{text}` is not a write token `<group>:<epoch>:<lsn>` (or `<epoch>:<lsn>`) of decimal integers")
        })?;
        Ok(ScopedToken { group: Some(group), token })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(entries: &[(u64, u64)]) -> EpochHistory {
        EpochHistory::new(entries.iter().map(|&(epoch, start_lsn)| EpochStart { epoch, start_lsn }).collect()).unwrap()
    }

    #[test]
    fn a_token_names_its_group_when_it_has_one() {
        let scoped: ScopedToken = "eu-2:3:42".parse().unwrap();
        assert_eq!(scoped.group.as_ref().map(|g| g.as_str()), Some("eu-2"));
        assert_eq!(scoped.token, WriteToken { epoch: Epoch(3), lsn: Lsn(42) });
        assert_eq!(scoped.to_string(), "eu-2:3:42");
        let plain: ScopedToken = "3:42".parse().unwrap();
        assert_eq!((plain.to_string(), plain.group), ("3:42".to_string(), None));
        for bad in ["EU:3:42", "a:b:c", "a:0:1", "a:1:2:3", ":1:2", "1:2:"] {
            assert!(bad.parse::<ScopedToken>().is_err(), "{bad}");
        }
    }

    #[test]
    fn each_lsn_belongs_to_the_epoch_that_began_last_before_it() {
        let h = history(&[(1, 1), (2, 101), (4, 101), (5, 300)]);
        assert_eq!(h.epoch_at(Lsn(0)), None);
        assert_eq!(h.epoch_at(Lsn(100)), Some(Epoch(1)));
        assert_eq!(h.epoch_at(Lsn(101)), Some(Epoch(4)), "epoch 2 wrote nothing");
        assert_eq!(h.epoch_at(Lsn(10_000)), Some(Epoch(5)));
        assert_eq!(h.current(), Epoch(5));
    }

    #[test]
    fn an_epoch_ends_where_the_next_known_one_began() {
        let h = history(&[(1, 1), (3, 101), (4, 250)]);
        assert_eq!(h.end_of(Epoch(1)), EpochEnd::At(Lsn(100)));
        assert_eq!(h.end_of(Epoch(2)), EpochEnd::At(Lsn(100)), "unknown epoch 2: as the largest known below it");
        assert_eq!(h.end_of(Epoch(3)), EpochEnd::At(Lsn(249)));
        assert_eq!(h.end_of(Epoch(4)), EpochEnd::Open);
        assert_eq!(h.end_of(Epoch(9)), EpochEnd::Open);
    }

    #[test]
    fn tokens_of_lost_writes_are_told_apart_from_writes_not_reached() {
        let h = history(&[(1, 1), (2, 101)]);
        let token = |e, l| WriteToken { epoch: Epoch(e), lsn: Lsn(l) };
        assert_eq!(h.check(token(1, 100)), TokenCheck::Holds);
        assert_eq!(h.check(token(1, 105)), TokenCheck::Lost { owner: Epoch(2) });
        assert_eq!(h.check(token(2, 105)), TokenCheck::Holds);
        assert_eq!(h.check(token(2, 50)), TokenCheck::Lost { owner: Epoch(1) });
        assert_eq!(h.check(token(3, 5)), TokenCheck::Ahead);
    }

    #[test]
    fn histories_only_grow_forward_and_cut_back_to_the_log() {
        let mut h = EpochHistory::default();
        assert!(h.begin(Epoch(1), Lsn(5)).is_err());
        h.begin(Epoch(2), Lsn(10)).unwrap();
        assert!(h.begin(Epoch(3), Lsn(9)).is_err());
        h.begin(Epoch(3), Lsn(20)).unwrap();
        h.truncate_after(Lsn(15));
        assert_eq!(h, history(&[(1, 1), (2, 10)]));
        h.truncate_after(Lsn(0));
        assert_eq!(h, EpochHistory::default());
        assert!(EpochHistory::new(vec![]).is_err());
    }

    #[test]
    fn tokens_parse_strictly() {
        assert_eq!("3:18446744073709551615".parse::<WriteToken>().unwrap().lsn, Lsn(u64::MAX));
        assert_eq!("2:7".parse::<WriteToken>().unwrap().to_string(), "2:7");
        for bad in ["", "3", ":5", "3:", "0:5", "-1:5", "3:+5", "3:5:1", "a:b", "3:99999999999999999999"] {
            assert!(bad.parse::<WriteToken>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_history_travels_as_a_list_and_is_checked_on_the_way_in() {
        let json = serde_json::to_string(&history(&[(1, 1), (2, 9)])).unwrap();
        assert_eq!(json, r#"[{"epoch":1,"startLsn":1},{"epoch":2,"startLsn":9}]"#);
        assert!(serde_json::from_str::<EpochHistory>(r#"[{"epoch":2,"startLsn":1},{"epoch":1,"startLsn":9}]"#).is_err());
    }
}
