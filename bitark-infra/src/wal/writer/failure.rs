//! What a failed write does to the log, on the writer thread.
//!
//! The answer to a failed write always says whether it is in the log:
//! - **Not logged** ([`ProposeError::NoSpace`], [`ProposeError::Io`]): the space for the
//!   batch could not be reserved (a full disk or quota shows up here, before anything is
//!   written), or the `write` itself failed, in which case whatever part of the batch
//!   reached the file is overwritten with zeros and synced before anyone is answered. The
//!   log is intact; the writer is [`WalHealth::Degraded`] and tries again with every new
//!   batch and every `wal.retry-interval`, so writes resume by themselves once space is
//!   back.
//! - **Outcome unknown** ([`ProposeError::Unknown`]): the batch was written but its
//!   `fsync` failed. After a failed fsync the kernel may have dropped the pages it could
//!   not write, so nothing tells whether the batch (or anything written since the last
//!   good fsync) will be there after a restart. The writer stops for good
//!   ([`WalHealth::Failed`]) and every later write is refused until the node restarts and
//!   recovery reads what the disk really holds.
//! - The writer thread dying (a panic) also leaves the log [`WalHealth::Failed`]
//!   ([`CrashGuard`]).

use super::{Applier, Writer};
use crate::metrics::Metrics;
use crate::wal::handle::Shared;
use crate::wal::health::{ProposeError, WalHealth, CRASHED};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Marks the log failed if the writer thread ends other than by `shutdown` (a panic).
pub(super) struct CrashGuard(pub(super) Arc<Shared>, pub(super) Metrics);

impl Drop for CrashGuard {
    fn drop(&mut self) {
        if !self.0.stopping.load(Ordering::Acquire) || std::thread::panicking() {
            // Lets a test hold the report back, as a slow unwind would.
            fail::fail_point!("wal::before-crash-report");
            tracing::error!("the WAL writer thread stopped unexpectedly; writes are refused until restart");
            self.1.wal_failures.with_label_values(&["crash"]).inc();
            self.0.set_health(WalHealth::Failed { reason: CRASHED.into() }, &self.1);
        }
    }
}

impl<A: Applier> Writer<A> {
    pub(super) fn is_degraded(&self) -> bool {
        matches!(self.shared.health(), WalHealth::Degraded { .. })
    }

    /// The error for a batch that cannot be attempted now, or `None` to go ahead.
    pub(super) fn refusal(&mut self) -> Option<ProposeError> {
        match self.shared.health() {
            WalHealth::Healthy => None,
            WalHealth::Failed { reason } => Some(ProposeError::Failed(reason)),
            WalHealth::Degraded { .. } => {
                // Every batch is a retry: writes resume as soon as the cause is gone.
                self.recover_if_possible();
                match self.shared.health() {
                    WalHealth::Degraded { reason, no_space: true } => Some(ProposeError::NoSpace(reason)),
                    WalHealth::Degraded { reason, no_space: false } => Some(ProposeError::Io(reason)),
                    _ => None,
                }
            }
        }
    }

    /// A batch that did not make it into the log: erases whatever part of it reached
    /// the file, degrades the log, and describes the failure. Answers `Unknown` (and
    /// fails the log) if the erasure itself cannot be made durable.
    pub(super) fn not_logged(&mut self, error: std::io::Error, written: usize, probe: Probe) -> ProposeError {
        self.probe = Some(probe);
        if let Err(erase) = self.active.erase_after_end(written) {
            return self
                .fail(format!("a write of the log failed ({error}) and what it left could not be erased ({erase})"));
        }
        let no_space = matches!(error.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT));
        // Logged once per episode: a full disk under load fails every batch.
        if self.shared.health() == WalHealth::Healthy {
            tracing::error!(
                segment = %self.active.path.display(), error = %error,
                "cannot write the WAL; the write was not logged, writes are refused until this clears"
            );
        } else {
            tracing::debug!(error = %error, "WAL still cannot be written");
        }
        let reason = if no_space {
            self.metrics.wal_failures.with_label_values(&["no_space"]).inc();
            format!("the disk holding the write-ahead log is full ({error}); the write was not logged")
        } else {
            self.metrics.wal_failures.with_label_values(&["write"]).inc();
            format!("writing the write-ahead log failed ({error}); the write was not logged")
        };
        self.shared.set_health(WalHealth::Degraded { reason: reason.clone(), no_space }, &self.metrics);
        if no_space {
            ProposeError::NoSpace(reason)
        } else {
            ProposeError::Io(reason)
        }
    }

    /// Stops the log for good after a failure whose outcome is unknown.
    pub(super) fn fail(&mut self, reason: String) -> ProposeError {
        tracing::error!(segment = %self.active.path.display(), %reason, "the write-ahead log stopped; restart the node");
        self.metrics.wal_failures.with_label_values(&["fsync"]).inc();
        let reason = format!("{reason}; whether the write is in the log is unknown until the node restarts");
        self.shared.set_health(WalHealth::Failed { reason: reason.clone() }, &self.metrics);
        ProposeError::Unknown(reason)
    }

    /// Tries again what failed last time: the same reservation, or a write (of zeros,
    /// after the end of the log, synced); healthy again once it works.
    pub(super) fn recover_if_possible(&mut self) {
        self.metrics.wal_retries.inc();
        let result = match self.probe {
            Some(Probe::Reserve(bytes)) => self.active.reserve(bytes),
            Some(Probe::Write) | None => injected_write_failure()
                .and_then(|()| self.active.reserve(PROBE_BYTES as u64))
                .and_then(|()| self.active.write_zeros_after_end(PROBE_BYTES)),
        };
        match result {
            Ok(()) => {
                tracing::info!("the write-ahead log accepts writes again");
                self.probe = None;
                self.shared.set_health(WalHealth::Healthy, &self.metrics);
            }
            Err(e) => tracing::debug!(error = %e, "the write-ahead log still cannot be written"),
        }
    }
}

/// Bytes a retry writes (zeros, after the end of the log) to see whether writing works.
const PROBE_BYTES: usize = 4096;

/// What a degraded log tries, to find out whether it can write again.
#[derive(Clone, Copy, Debug)]
pub(super) enum Probe {
    /// The reservation of this many bytes failed (a full disk or quota).
    Reserve(u64),
    /// A write failed.
    Write,
}

/// The failure `wal::before-write` injects, if it is configured.
pub(super) fn injected_write_failure() -> std::io::Result<()> {
    fail::fail_point!("wal::before-write", |arg| Err(injected(arg, "wal::before-write")));
    Ok(())
}

/// The error a failpoint injects: `return(enospc)` gives `ENOSPC`, plain `return` an
/// I/O error.
#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
pub(super) fn injected(arg: Option<String>, point: &str) -> std::io::Error {
    match arg.as_deref() {
        Some("enospc") => std::io::Error::from_raw_os_error(libc::ENOSPC),
        _ => std::io::Error::other(format!("injected failure at {point}")),
    }
}
