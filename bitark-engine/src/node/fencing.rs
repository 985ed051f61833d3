//! Stage 7, `fencing`, on the node: promotion to a new epoch, stepping down, adopting a
//! master's epoch history (cutting back the records it does not hold) and write tokens.

use super::{Node, RoleState};
use crate::config::Role;
use crate::error::RoleError;
use crate::recovery::recover;
use crate::replication::fencing::divergence;
use bitark_common::{Epoch, EpochHistory, Lsn, TokenCheck, WriteToken};
use bitark_infra::fsutil::remove_durable;
use bitark_infra::snapshot::{list_snapshots, read_snapshot};
use bitark_infra::wal::{cut_after, list_segments, remove_all, CutReport};
use bitark_infra::StorageError;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

impl Node {
    /// What a write token names, as this node's epoch history sees it.
    pub fn check_token(&self, token: WriteToken) -> TokenCheck {
        self.inner.state.history().check(token)
    }

    /// A peer showed `epoch`, and maybe where its master is. Under fencing, an epoch
    /// above every one known is recorded durably, and a master stops taking writes at
    /// once. Answers whether this node is a master that must now step down. Blocking
    /// (a small file is written when the epoch is new).
    pub fn observe_epoch(&self, epoch: Epoch, master_url: Option<&str>) -> bool {
        if !self.fencing() {
            return false;
        }
        let mut state = self.epochs();
        let new_epoch = epoch > state.highest();
        let new_url = epoch == state.highest()
            && epoch > state.history.current()
            && master_url.is_some_and(|u| u != state.seen_master_url);
        if !new_epoch && !new_url {
            return false;
        }
        let master = self.role().role == Role::Master;
        if master && epoch > state.history.current() {
            // First: no write of this node's own is acknowledged from here on.
            self.inner.wal.set_fenced(true);
        }
        state.seen = state.seen.max(epoch.0);
        if let Some(url) = master_url {
            state.seen_master_url = url.to_string();
        }
        tracing::warn!(
            %epoch, own = %state.history.current(), master = ?master_url, role = ?self.role().role,
            "a newer epoch exists{}", if master { ": this master takes no more writes and steps down" } else { "" }
        );
        if let Err(e) = self.store_epochs(state) {
            // The fence holds in memory; a restart before the next contact relearns it.
            tracing::error!(error = %e, "cannot record the newer epoch in epoch.bin");
        }
        master && epoch > self.epoch()
    }

    /// Makes this slave master in a new epoch (`epoch`, which must be above every epoch
    /// known, or the next one): the epoch is recorded durably at the next LSN before any
    /// write of it is taken. The caller stops the follower first and starts the master
    /// side after. Blocking.
    pub fn promote(&self, self_url: &str, epoch: Option<Epoch>) -> Result<(Epoch, Lsn), RoleError> {
        if !self.fencing() {
            return Err(RoleError::FencingOff);
        }
        if !self.is_slave() {
            return Err(RoleError::WrongRole("this node is master already".into()));
        }
        if self.is_replacing() {
            return Err(RoleError::Busy("a full sync is replacing this node's state; promote it afterwards".into()));
        }
        let highest = self.epochs().highest();
        let epoch = epoch.unwrap_or(Epoch(highest.0 + 1));
        if epoch <= highest {
            return Err(RoleError::WrongRole(format!("epoch {epoch} is not above epoch {highest}, which exists")));
        }
        let node = self.clone();
        let self_url = self_url.to_string();
        let start = self.inner.wal.begin_epoch(
            epoch,
            Box::new(move |start| {
                let mut state = node.epochs();
                state
                    .history
                    .begin(epoch, start)
                    .map_err(|e| StorageError::corruption(node.config().node.dir().epoch_file(), 0, e.to_string()))?;
                state.master_id = node.config().node.id.clone();
                state.seen = epoch.0;
                state.seen_master_url = self_url;
                node.store_epochs(state)
            }),
        )?;
        self.set_role(RoleState { role: Role::Master, master_url: String::new() });
        self.inner.wal.set_fenced(false);
        self.inner.state.metrics.replication_role_changes.with_label_values(&["master"]).inc();
        tracing::warn!(%epoch, %start, "PROMOTED: this node is master of epoch {epoch}, from LSN {start} on");
        Ok((epoch, start))
    }

    /// Makes this node a slave of `master_url`: its own writes stop at once. The caller
    /// stops the master side and starts a follower, whose registration brings the
    /// master's history (and cuts this node's divergent tail).
    pub fn demote(&self, master_url: &str) {
        self.inner.wal.set_fenced(true);
        let was = self.role().role;
        self.set_role(RoleState { role: Role::Slave, master_url: master_url.to_string() });
        if was == Role::Master {
            self.inner.state.metrics.replication_role_changes.with_label_values(&["slave"]).inc();
            tracing::warn!(master = %master_url, "STEPPED DOWN: this node is a slave now");
        }
        let mut state = self.epochs();
        let own_id = &self.config().node.id;
        if state.seen_master_url != master_url || state.master_id == *own_id {
            // Until the new master's history arrives, this node is master of nothing:
            // a restart before then follows `master_url` too.
            state.seen_master_url = master_url.to_string();
            if state.master_id == *own_id {
                state.master_id.clear();
            }
            if let Err(e) = self.store_epochs(state) {
                tracing::error!(error = %e, "cannot record the new master in epoch.bin");
            }
        }
    }

    /// Adopts the epoch history of the master `master_id` this slave follows: records
    /// of this node's own past the point where the two histories agree are cut (kept in
    /// a side file) and the state rebuilt without them. Answers what was cut. Refuses a
    /// master whose epoch is below one this node has seen. Blocking.
    pub fn adopt_history(
        &self,
        theirs: &EpochHistory,
        master_id: &str,
        master_url: &str,
    ) -> Result<Option<CutReport>, RoleError> {
        let ours = self.epochs();
        if theirs.current() < ours.highest() {
            return Err(RoleError::WrongRole(format!(
                "master `{master_id}` is in epoch {}, but epoch {} exists: it is a stale master and is not followed",
                theirs.current(),
                ours.highest()
            )));
        }
        let applied = self.applied_lsn();
        let point = divergence(&ours.history, theirs, applied);
        let cut = if point < applied { Some(self.cut_to(point, ours.history.epoch_at(applied))?) } else { None };
        let mut state = ours;
        state.history = theirs.clone();
        state.master_id = master_id.to_string();
        state.seen = state.seen.max(theirs.current().0);
        state.seen_master_url = master_url.to_string();
        self.store_epochs(state)?;
        Ok(cut)
    }

    /// Cuts the log back to `point` and rebuilds the state from what is left: the
    /// newest snapshot at or below it and the log up to it, or, when the log no longer
    /// reaches back to such a snapshot, an empty state that the master fills again.
    fn cut_to(&self, point: Lsn, epoch: Option<Epoch>) -> Result<CutReport, RoleError> {
        let state = &self.inner.state;
        let layout = self.config().node.dir();
        let data_dir = layout.root().to_path_buf();
        let (wal_dir, snapshot_dir) = (layout.wal(), layout.snapshots());
        let _replacing = state.replacing.write().unwrap_or_else(PoisonError::into_inner);
        state.installing.store(true, Ordering::Release);
        let base = list_snapshots(&snapshot_dir)?.into_iter().map(|(lsn, _)| lsn).filter(|lsn| *lsn <= point).max();
        let base = base.unwrap_or(Lsn::ZERO);
        let first_wal = list_segments(&wal_dir)?.first().map(|s| s.first_lsn);
        let rebuildable = point == base || first_wal.is_some_and(|first| first <= base.next());
        let next = if rebuildable { point.next() } else { Lsn(1) };
        let label = format!("epoch-{}", epoch.unwrap_or(Epoch(0)));
        let report = Arc::new(Mutex::new(CutReport::default()));
        let (shared, slot) = (state.clone(), report.clone());
        let work = Box::new(move || {
            let cut = cut_after(&wal_dir, point, &layout.diverged(), &label)?;
            for (lsn, path) in list_snapshots(&snapshot_dir)? {
                if lsn > point || !rebuildable {
                    remove_durable(&path)?;
                }
            }
            if !rebuildable {
                remove_all(&wal_dir)?;
            }
            shared.store.clear();
            let rebuilt = recover(&shared.store, &wal_dir, &snapshot_dir, &data_dir)?;
            if rebuilt.applied.next() != next {
                return Err(StorageError::corruption(
                    &wal_dir,
                    0,
                    format!("after cutting the log back to LSN {point} it ends at LSN {}", rebuilt.applied),
                ));
            }
            *slot.lock().unwrap_or_else(PoisonError::into_inner) = cut;
            Ok(())
        });
        let result = self.inner.wal.reset(next, work);
        let applied = Lsn(next.0 - 1);
        state.since_snapshot.store(0, Ordering::Relaxed);
        state.durable.send_replace(applied);
        state.publish_applied(applied);
        state.installing.store(false, Ordering::Release);
        result?;
        let newest = list_snapshots(&self.config().node.dir().snapshots())?.pop();
        let info = newest.and_then(|(_, path)| read_snapshot(&path, |_| Ok(())).ok());
        state.snapshots.replaced(info);
        let report = report.lock().unwrap_or_else(PoisonError::into_inner).clone();
        state.metrics.replication_truncated_records.inc_by(report.records);
        if report.records > 0 {
            tracing::error!(
                records = report.records,
                first = ?report.first,
                last = ?report.last,
                side_file = ?report.side_file,
                kept_to = %applied,
                "DIVERGENT TAIL CUT: these records were never on the new master; they are kept in the side file for an operator"
            );
        }
        if !rebuildable {
            tracing::warn!("the log did not reach back to a snapshot before the cut: starting empty, the master sends everything again");
        }
        Ok(report)
    }
}
