//! `bitark backup prune`: the retention of a target. Deletes the full backups past the
//! newest `keep_full`, the incremental ones that continue them, backups cut short, and
//! archived WAL that no kept backup needs and that is older than `keep_wal`.

use super::catalogue::catalogue;
use super::error::Error;
use bitark_infra::backup::{Manifest, Target, MANIFEST};
use std::time::{Duration, SystemTime};

/// What `bitark backup prune` is asked.
#[derive(Clone, Debug)]
pub struct PrunePlan {
    pub target: String,
    /// Full backups kept, newest first (at least 1).
    pub keep_full: usize,
    /// Archived WAL younger than this is kept even when no kept backup needs it.
    pub keep_wal: Duration,
    /// Say what would go, delete nothing.
    pub dry_run: bool,
}

/// A directory without a manifest this long after its newest file is a backup that was
/// cut short, not one still being written.
const ABANDONED_AFTER: Duration = Duration::from_secs(3600);

/// `bitark backup prune`: deletes the full backups past the newest `keep_full`, the
/// incremental ones that continue them, backups cut short, and archived WAL that no
/// kept backup needs and that is older than `keep_wal`. Nothing a kept backup needs to
/// be restored goes.
pub async fn prune(plan: PrunePlan, mut say: impl FnMut(&str)) -> Result<(), Error> {
    if plan.keep_full == 0 {
        return Err(Error::KeepNoFull);
    }
    let target = Target::open(&plan.target)?;
    let (complete, partial) = catalogue(&target).await?;
    let fulls: Vec<&Manifest> = complete.iter().filter(|m| m.kind == "full").collect();
    let kept: Vec<&str> = fulls.iter().rev().take(plan.keep_full).map(|m| m.id.as_str()).collect();
    let Some(oldest_kept) = fulls.get(fulls.len().saturating_sub(plan.keep_full)).copied() else {
        say("no full backup: nothing to prune");
        return Ok(());
    };
    // The full backups not kept, and the incremental ones that continue no kept backup.
    let doomed: Vec<&Manifest> = complete
        .iter()
        .filter(|m| !kept.contains(&m.id.as_str()))
        .filter(|m| m.kind == "full" || m.end_lsn <= oldest_kept.end_lsn)
        .collect();
    let now = SystemTime::now();
    let listing = target.list_dated("base").await?;
    let mut deletions: Vec<String> = Vec::new();
    let deleted = if plan.dry_run { "would be deleted" } else { "deleted" };
    for manifest in &doomed {
        let dir = format!("{}/", Manifest::dir(&manifest.id));
        // The manifest first: a backup deleted part way is then one cut short.
        deletions.push(format!("{dir}{MANIFEST}"));
        deletions.extend(
            listing.iter().map(|(p, _, _)| p).filter(|p| p.starts_with(&dir) && !p.ends_with(MANIFEST)).cloned(),
        );
        say(&format!("backup {}: {deleted} (LSN {}..={})", manifest.id, manifest.start_lsn, manifest.end_lsn));
    }
    for id in &partial {
        let dir = format!("{}/", Manifest::dir(id));
        let files: Vec<_> = listing.iter().filter(|(p, _, _)| p.starts_with(&dir)).collect();
        let newest = files.iter().map(|(_, _, at)| *at).max().unwrap_or(now);
        if now.duration_since(newest).unwrap_or_default() >= ABANDONED_AFTER {
            deletions.extend(files.iter().map(|(p, _, _)| p.clone()));
            say(&format!("{id}: {deleted} (a backup cut short)"));
        }
    }
    // Archived WAL wholly before the oldest kept backup's snapshot, and old enough.
    let archive = target.list_dated("wal").await?;
    let firsts: Vec<Option<u64>> =
        archive.iter().map(|(p, _, _)| p.rsplit('/').next()?.strip_suffix(".wal")?.parse().ok()).collect();
    let mut wal_deleted = 0;
    for (i, (path, _, at)) in archive.iter().enumerate() {
        let next_first = firsts.get(i + 1).copied().flatten();
        let before_kept = next_first.is_some_and(|next| next <= oldest_kept.start_lsn + 1);
        let old = now.duration_since(*at).unwrap_or_default() >= plan.keep_wal;
        if before_kept && old {
            deletions.push(path.clone());
            wal_deleted += 1;
        }
    }
    if wal_deleted > 0 {
        say(&format!("wal/: {wal_deleted} archived segments before LSN {} {deleted}", oldest_kept.start_lsn + 1));
    }
    if plan.dry_run {
        say(&format!("dry run: {} files would be deleted", deletions.len()));
        return Ok(());
    }
    for path in &deletions {
        target.delete(path).await?;
    }
    say(&format!(
        "{} files deleted; {} full backups kept, the oldest from LSN {}",
        deletions.len(),
        plan.keep_full.min(fulls.len()),
        oldest_kept.start_lsn
    ));
    Ok(())
}
