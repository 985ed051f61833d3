//! Stage 7, `fencing`: epochs on the node's side. Promotion begins a new epoch,
//! durably, before the new master takes a write; a node that sees a higher epoch stops
//! taking writes at once; a node that follows a master adopts the master's epoch
//! history, first cutting back the records of its own that the history does not hold
//! (they go to a side file in `<data-dir>/diverged/`).

use bitark_common::{EpochHistory, Lsn};

/// The last LSN at which this node's log agrees with `theirs`: where `ours` and `theirs`
/// give the record the same epoch (at or below `applied`, this node's log end).
pub fn divergence(ours: &EpochHistory, theirs: &EpochHistory, applied: Lsn) -> Lsn {
    let mut point = applied;
    while point > Lsn::ZERO {
        let mine = ours.epoch_at(point);
        if theirs.epoch_at(point) == mine {
            return point;
        }
        let Some(mine) = mine else { return Lsn::ZERO };
        // Back to where `theirs` ended our epoch, or at least before our epoch began.
        let before_ours = Lsn(ours
            .entries()
            .iter()
            .rev()
            .find(|e| e.epoch == mine.0)
            .map_or(point.0, |e| e.start_lsn)
            .saturating_sub(1));
        point = match theirs.end_of(mine) {
            bitark_common::EpochEnd::At(end) if end < point => end,
            _ => before_ours,
        };
    }
    Lsn::ZERO
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitark_common::EpochStart;

    fn history(entries: &[(u64, u64)]) -> EpochHistory {
        EpochHistory::new(entries.iter().map(|&(epoch, start_lsn)| EpochStart { epoch, start_lsn }).collect()).unwrap()
    }

    #[test]
    fn an_old_master_agrees_with_the_new_one_up_to_where_its_epoch_ended_there() {
        let theirs = history(&[(1, 1), (2, 101)]);
        let ours = history(&[(1, 1)]);
        assert_eq!(divergence(&ours, &theirs, Lsn(130)), Lsn(100));
        assert_eq!(divergence(&ours, &theirs, Lsn(100)), Lsn(100));
        assert_eq!(divergence(&ours, &theirs, Lsn(90)), Lsn(90), "behind: nothing to cut");
    }

    #[test]
    fn a_node_of_an_epoch_the_master_never_knew_goes_back_before_it() {
        // This node was promoted to epoch 2 at 51 while the master of epoch 3 came
        // from epoch 1 at 81.
        let ours = history(&[(1, 1), (2, 51)]);
        let theirs = history(&[(1, 1), (3, 81)]);
        assert_eq!(divergence(&ours, &theirs, Lsn(70)), Lsn(50));
        assert_eq!(divergence(&ours, &theirs, Lsn(40)), Lsn(40));
        let same = history(&[(1, 1), (2, 51)]);
        assert_eq!(divergence(&ours, &same, Lsn(70)), Lsn(70));
    }
}
