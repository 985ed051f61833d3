//! `bitark restore`: a data directory rebuilt from a backup up to a recovery target.
//!
//! Everything is checked before anything is written: the backup's log, each incremental
//! backup that continues it, then the archived log past their end. Then the snapshot is
//! streamed into the new directory and the records up to the target follow it as its
//! log (see [`bitark_infra::restore`]); `bitark` starts on the directory as usual.

use super::catalogue::{archived_records, catalogue};
use super::check::{check_backup, check_streamed};
use super::error::Error;
use super::time::{format_micros, snapshot_micros};
use bitark_common::{Lsn, Record};
use bitark_infra::backup::{FileEntry, Target};
use bitark_infra::restore::Restore;
use bitark_infra::DataDir;
use std::path::PathBuf;

/// What `bitark restore` is asked.
#[derive(Clone, Debug)]
pub struct RestorePlan {
    pub from: String,
    /// A backup id; default the newest full backup that reaches the target.
    pub backup: Option<String>,
    pub target: RecoveryTarget,
    pub data_dir: PathBuf,
}

/// Where a restore stops replaying the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// Everything the target holds.
    End,
    /// Up to and including this LSN.
    Lsn(u64),
    /// Every record committed at or before this time (microseconds since the Unix
    /// epoch), up to the first one committed after it.
    Time(u64),
}

impl RecoveryTarget {
    fn lsn(self) -> Option<u64> {
        match self {
            RecoveryTarget::Lsn(lsn) => Some(lsn),
            _ => None,
        }
    }
}

/// `bitark restore`: builds a data directory from a backup up to the recovery target.
/// Answers the LSN the directory ends at.
pub async fn restore(plan: RestorePlan, mut say: impl FnMut(&str)) -> Result<Lsn, Error> {
    let target = Target::open(&plan.from)?;
    let dir = &plan.data_dir;
    let restoring = Restore::begin(DataDir::new(dir))?;
    let (complete, _) = catalogue(&target).await?;
    let to_lsn = plan.target.lsn();
    let manifest = match (&plan.backup, plan.target) {
        (Some(id), _) => complete
            .iter()
            .find(|m| &m.id == id)
            .ok_or_else(|| Error::NoSuchBackup { target: target.url.clone(), id: id.clone() })?,
        (None, RecoveryTarget::Time(at)) => complete
            .iter()
            .rev()
            .find(|m| m.kind == "full" && snapshot_micros(m).is_some_and(|taken| taken <= at))
            .ok_or_else(|| Error::NoneTakenBy { target: target.url.clone(), at: format_micros(at) })?,
        (None, _) => complete
            .iter()
            .rev()
            .find(|m| m.kind == "full" && to_lsn.is_none_or(|lsn| m.start_lsn <= lsn && lsn <= m.end_lsn))
            .or_else(|| complete.iter().rev().find(|m| m.kind == "full" && to_lsn.is_none_or(|lsn| m.start_lsn <= lsn)))
            .ok_or_else(|| match to_lsn {
                Some(lsn) => Error::NoneStartsBy { target: target.url.clone(), lsn },
                None => Error::NoBackup { target: target.url.clone() },
            })?,
    };
    if manifest.kind != "full" {
        return Err(Error::Incremental { id: manifest.id.clone() });
    }
    if let Some(to) = to_lsn.filter(|to| *to < manifest.start_lsn) {
        return Err(Error::StartsAfter { id: manifest.id.clone(), start: manifest.start_lsn, to });
    }
    if let RecoveryTarget::Time(at) = plan.target {
        match snapshot_micros(manifest) {
            Some(taken) if taken <= at => {}
            Some(taken) => {
                return Err(Error::TakenAfter {
                    id: manifest.id.clone(),
                    taken: format_micros(taken),
                    at: format_micros(at),
                })
            }
            None => return Err(Error::Undated { id: manifest.id.clone() }),
        }
    }
    // Everything is checked before anything is written: the backup's log, each
    // incremental backup that continues it, then the archived log past their end.
    let past_target = |records: &[Record]| match plan.target {
        RecoveryTarget::End => false,
        RecoveryTarget::Lsn(to) => records.last().is_some_and(|r| r.lsn.0 >= to),
        RecoveryTarget::Time(at) => records.last().is_some_and(|r| r.time > at),
    };
    let mut records = check_backup(&target, manifest, false).await?;
    let mut end = manifest.end_lsn;
    let mut last_id = manifest.id.clone();
    while !past_target(&records) {
        let next = complete.iter().find(|m| m.kind == "incremental" && m.parent.as_deref() == Some(last_id.as_str()));
        let Some(next) = next else { break };
        records.extend(check_backup(&target, next, false).await?);
        (end, last_id) = (next.end_lsn, next.id.clone());
        say(&format!("continued by incremental backup {} (to LSN {end})", next.id));
    }
    if !past_target(&records) {
        records.extend(archived_records(&target, Lsn(end + 1), to_lsn).await?);
    }
    let held = records.last().map_or(manifest.start_lsn, |r| r.lsn.0).max(manifest.start_lsn);
    let cut = match plan.target {
        RecoveryTarget::End => records.len(),
        RecoveryTarget::Lsn(to) => {
            if to > held {
                return Err(Error::PastEnd { id: manifest.id.clone(), held, to });
            }
            records.partition_point(|r| r.lsn.0 <= to)
        }
        RecoveryTarget::Time(at) => {
            let cut = records.iter().position(|r| r.time == 0 || r.time > at).unwrap_or(records.len());
            if let Some(undated) = records.get(cut).filter(|r| r.time == 0) {
                return Err(Error::NoCommitTime { lsn: undated.lsn });
            }
            cut
        }
    };
    records.truncate(cut);
    let to = records.last().map_or(manifest.start_lsn, |r| r.lsn.0);

    let snapshot = manifest.snapshot().ok_or_else(|| Error::NoSnapshot { id: manifest.id.clone() })?;
    // Dropped on an error, `restoring` removes what it wrote: the directory was empty.
    write_data_dir(restoring, &target, snapshot, &records).await?;
    say(&format!(
        "restored backup {} into {}: snapshot at LSN {}, {} records replayed from the log, ends at LSN {to}",
        manifest.id,
        dir.display(),
        manifest.start_lsn,
        records.len()
    ));
    if let RecoveryTarget::Time(at) = plan.target {
        match records.last() {
            Some(last) => say(&format!("the last record restored was committed at {}", format_micros(last.time))),
            None => say("no record after the snapshot was committed before the recovery target"),
        }
        if to == held && !records.is_empty() {
            say(&format!(
                "no record held is later than {}: what the node wrote after its last archived record is not in the \
                 target",
                format_micros(at)
            ));
        }
    }
    Ok(Lsn(to))
}

/// Streams the snapshot of the backup into the data directory (checking its crc32 and
/// its contents) and writes `records` as the log after it, every file synced.
async fn write_data_dir(
    restoring: Restore,
    target: &Target,
    snapshot: &FileEntry,
    records: &[Record],
) -> Result<(), Error> {
    let name = snapshot.path.rsplit('/').next().unwrap_or_default();
    let mut file = restoring.snapshot_file(name)?;
    check_streamed(target, snapshot, |piece| file.write(piece)).await?;
    file.finish().map_err(|source| Error::Restored { path: snapshot.path.clone(), source })?;
    restoring.write_log(records)?;
    restoring.finish()?;
    Ok(())
}
