//! The write path: validation, proposing to the group-commit writer, waiting for the
//! acknowledgements an ack mode asks, and records replicated from a master.

use super::Node;
use crate::config::AckMode;
use crate::error::{InvalidCommand, ReplicateError, WriteError};
use crate::limits::admit_marks;
use crate::replication::ack::AckShortfall;
use crate::replication::MasterHub;
use bitark_common::{Command, Lsn, Record};
use bitark_infra::wal::{AppendOutcome, ProposeError};
use std::sync::atomic::Ordering;
use std::sync::PoisonError;

/// A write handed to the log, answered once it is durable and applied.
pub(super) type Pending = tokio::sync::oneshot::Receiver<Result<Lsn, ProposeError>>;

impl Node {
    /// Checks a command against the configured limits.
    pub fn validate(&self, command: &Command) -> Result<(), InvalidCommand> {
        match command {
            Command::MarkBatch { msgs, .. } => self.validate_batch_len(msgs.len()),
            Command::MarkRange { from, to, .. } => self.validate_range(*from, *to),
            _ => Ok(()),
        }
    }

    /// Checks a `from..=to` range against `limits.max-range`.
    pub fn validate_range(&self, from: u64, to: u64) -> Result<(), InvalidCommand> {
        let max = self.inner.config.load().limits.max_range;
        if from > to {
            Err(InvalidCommand::InvertedRange { from, to })
        } else if to - from >= max {
            Err(InvalidCommand::RangeTooLarge { from, to, max })
        } else {
            Ok(())
        }
    }

    /// Checks a batch size against `limits.max-batch`.
    pub fn validate_batch_len(&self, len: usize) -> Result<(), InvalidCommand> {
        let max = self.inner.config.load().limits.max_batch;
        if len == 0 {
            Err(InvalidCommand::EmptyBatch)
        } else if len > max {
            Err(InvalidCommand::BatchTooLarge { len, max })
        } else {
            Ok(())
        }
    }

    /// Logs, fsyncs and applies `command`; answers its LSN once it is durable (under
    /// the configured fsync policy) and visible to readers.
    pub async fn write(&self, command: Command) -> Result<Lsn, WriteError> {
        self.admit_write()?;
        self.validate(&command)?;
        let metrics = &self.inner.state.metrics;
        let admitted = self.inner.memory.admit(&command).and_then(|()| {
            admit_marks(&self.inner.state.store, self.inner.config.load().limits.max_marks_per_user, &command)
        });
        if let Err(e) = admitted {
            let reason = if matches!(e, WriteError::MemoryLimit(_)) { "memory-limit" } else { "mark-limit" };
            metrics.writes_rejected.with_label_values(&[reason]).inc();
            return Err(e);
        }
        let pending = {
            // Checked and proposed under one shared hold of the gate (see `ownership.rs`).
            let _gate = self.inner.ownership_gate.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(user) = command.user() {
                self.write_refusal(user).inspect_err(|e| {
                    let reason = if matches!(e, WriteError::RangeFrozen(_)) { "range-frozen" } else { "wrong-shard" };
                    metrics.writes_rejected.with_label_values(&[reason]).inc();
                })?;
            }
            self.propose(command)?
        };
        self.finish_write(pending).await
    }

    /// Refuses a write on a slave or on a master a newer epoch fenced.
    pub(crate) fn admit_write(&self) -> Result<(), WriteError> {
        if self.is_slave() {
            return Err(WriteError::NotMaster { master_url: self.master_url() });
        }
        if self.inner.wal.is_fenced() {
            return Err(self.fenced_error());
        }
        Ok(())
    }

    /// Hands `command` to the group-commit writer, in the order of the calls.
    pub(super) fn propose(&self, command: Command) -> Result<Pending, WriteError> {
        let metrics = &self.inner.state.metrics;
        Ok(self.inner.wal.propose(command).inspect_err(|e| {
            metrics.writes_rejected.with_label_values(&[reject_reason(e)]).inc();
        })?)
    }

    /// Waits for a proposed write to be durable and applied.
    pub(super) async fn finish_write(&self, pending: Pending) -> Result<Lsn, WriteError> {
        match pending.await {
            Ok(Err(ProposeError::Fenced)) => Err(self.fenced_error()),
            Ok(result) => Ok(result?),
            // The writer dropped the reply: it stopped (shutdown or a crash).
            Err(_) => Err(self.inner.wal.stopped_error().into()),
        }
    }

    /// Logs `command` like [`Node::write`], then, under `semi` or `all` (the configured
    /// `replication.ack`, or the stricter `ack` the write asks for), waits for the
    /// slaves that mode needs to hold it durably. Without enough ALIVE slaves it fails
    /// before logging anything (unless `ack-wait-for-replicas`).
    pub async fn write_acked(&self, command: Command, ack: Option<AckMode>) -> Result<Lsn, WriteError> {
        let mode = self.ack_mode(ack);
        let Some(hub) = self.admit_acked(mode)? else {
            return self.write(command).await;
        };
        let lsn = self.write(command).await?;
        self.confirm_acked(&hub, lsn, mode).await
    }

    /// Before a write under `mode` is logged: the master hub whose slaves must confirm it
    /// (`None` under `async`), refused on a slave or without the ALIVE slaves it needs.
    pub(super) fn admit_acked(&self, mode: AckMode) -> Result<Option<MasterHub>, WriteError> {
        if mode == AckMode::Async {
            return Ok(None);
        }
        if self.is_slave() {
            return Err(WriteError::NotMaster { master_url: self.master_url() });
        }
        let required = self.required_acks(mode);
        let Some(hub) = self.hub() else {
            return Err(WriteError::NotEnoughReplicas { ack: mode, alive: 0, required });
        };
        if let Err(AckShortfall::NotEnoughReplicas { alive, .. }) = hub.admit_ack(mode) {
            self.inner.state.metrics.writes_rejected.with_label_values(&["not-enough-replicas"]).inc();
            return Err(WriteError::NotEnoughReplicas { ack: mode, alive, required });
        }
        Ok(Some(hub))
    }

    /// Slave acknowledgements `mode` needs.
    fn required_acks(&self, mode: AckMode) -> usize {
        if mode == AckMode::Semi {
            self.inner.config.load().replication.min_acks
        } else {
            1
        }
    }

    /// After a write at `lsn` is durable here: waits for the slaves `mode` needs to hold
    /// it durably (and, under failover, for the floor in etcd).
    pub(crate) async fn confirm_acked(&self, hub: &MasterHub, lsn: Lsn, mode: AckMode) -> Result<Lsn, WriteError> {
        match hub.wait_for_acks(lsn, mode).await {
            Ok(_) if self.inner.config.load().failover() => self.record_floor(lsn, mode).await.map(|()| lsn),
            Ok(_) => Ok(lsn),
            Err(AckShortfall::TimedOut(count)) => Err(WriteError::ReplicationTimeout {
                lsn: lsn.0,
                epoch: self.epoch().0,
                ack: mode,
                acked: count.acked,
                required: count.required,
                timeout_ms: self.inner.config.load().replication.ack_timeout.as_millis() as u64,
            }),
            Err(AckShortfall::NotEnoughReplicas { alive, .. }) => {
                Err(WriteError::NotEnoughReplicas { ack: mode, alive, required: self.required_acks(mode) })
            }
        }
    }

    /// Under failover: before a `semi`/`all` write at `lsn` is answered, the coordination
    /// records it in etcd as the floor no new master may lack, and the lease must still
    /// hold. Otherwise the write (durable here and on the slaves that confirmed it) is not
    /// acknowledged.
    pub(super) async fn record_floor(&self, lsn: Lsn, mode: AckMode) -> Result<(), WriteError> {
        if !self.floor_recorded_in_time(lsn).await {
            self.inner.state.metrics.writes_rejected.with_label_values(&["lease-lapsed"]).inc();
            return Err(WriteError::LeaseLapsed(format!(
                "LSN {lsn} is durable here and on the slaves ack={} needed, but this master could not record it in \
                 etcd as acknowledged within {} ms (or its leader lease lapsed); this write was not acknowledged",
                mode.as_str(),
                self.inner.config.load().replication.ack_timeout.as_millis()
            )));
        }
        Ok(())
    }

    /// Under failover: whether `lsn` was recorded in etcd as the floor within
    /// `replication.ack-timeout`, with the leader lease still holding.
    pub(super) async fn floor_recorded_in_time(&self, lsn: Lsn) -> bool {
        self.inner.acked.fetch_max(lsn.0, Ordering::AcqRel);
        self.inner.floor_wanted.notify_one();
        let mut recorded = self.inner.floor_recorded.subscribe();
        let timeout = self.inner.config.load().replication.ack_timeout;
        let waited = tokio::time::timeout(timeout, recorded.wait_for(|floor| *floor >= lsn.0)).await;
        matches!(waited, Ok(Ok(_))) && !self.lease_lapsed()
    }

    /// Under failover: the highest LSN of a `semi`/`all` write waiting to be recorded in
    /// etcd (or recorded).
    pub fn acked_lsn(&self) -> Lsn {
        Lsn(self.inner.acked.load(Ordering::Acquire))
    }

    /// Resolves when a `semi`/`all` write waits for its floor to be recorded.
    pub async fn floor_wanted(&self) {
        self.inner.floor_wanted.notified().await;
    }

    /// The coordination recorded the floor up to `lsn` in etcd.
    pub fn floor_recorded(&self, lsn: Lsn) {
        self.inner.floor_recorded.send_if_modified(|floor| {
            let moved = lsn.0 > *floor;
            *floor = (*floor).max(lsn.0);
            moved
        });
    }

    /// The acknowledgement mode of a write that asks for `requested`: the stricter of
    /// it and `replication.ack`; `async` unless `ack-modes` is on.
    pub fn ack_mode(&self, requested: Option<AckMode>) -> AckMode {
        let replication = &self.inner.config.load().replication;
        if !self.features().ack_modes {
            return AckMode::Async;
        }
        requested.map_or(replication.ack, |r| r.max(replication.ack))
    }

    /// The answer to a write on a node that saw a newer epoch.
    pub(super) fn fenced_error(&self) -> WriteError {
        self.inner.state.metrics.writes_rejected.with_label_values(&["fenced"]).inc();
        let epochs = self.epochs();
        let url = Some(epochs.seen_master_url).filter(|u| !u.is_empty());
        WriteError::Fenced { epoch: epochs.seen.max(epochs.history.current().0), master_url: url }
    }

    /// Logs and applies records from the master, which carry their LSNs (slave only).
    /// Records this node already holds are skipped; the rest must continue its log.
    /// Every record is checked as the public API checks a command (limits, epoch)
    /// first; one that fails refuses the whole batch.
    pub async fn replicate(&self, records: Vec<Record>) -> Result<AppendOutcome, ReplicateError> {
        self.replicate_from(records, self.fencing()).await
    }

    /// [`Node::replicate`], checking each record's epoch against the epoch history only
    /// when `check_epochs` (the master and this slave use fencing together: a master
    /// without it keeps no history to check against).
    pub(crate) async fn replicate_from(
        &self,
        records: Vec<Record>,
        check_epochs: bool,
    ) -> Result<AppendOutcome, ReplicateError> {
        if !self.is_slave() {
            return Err(ReplicateError::NotSlave);
        }
        if self.is_replacing() {
            // A full sync is replacing the log and the store: a record now would land in
            // the new log but miss the store being loaded.
            return Err(ReplicateError::Write(WriteError::Overloaded));
        }
        for record in &records {
            let invalid = |reason: String| ReplicateError::InvalidRecord { lsn: record.lsn.0, reason };
            if record.lsn == Lsn::ZERO || record.lsn == Lsn(u64::MAX) {
                return Err(invalid("LSNs run from 1 to 2^64 - 2".into()));
            }
            if let Some(expected) = self.expected_epoch(record.lsn).filter(|_| check_epochs) {
                if record.epoch != expected {
                    return Err(invalid(format!(
                        "carries epoch {}, but this node's epoch history gives LSN {} to epoch {expected}",
                        record.epoch, record.lsn
                    )));
                }
            }
            self.validate(&record.command).map_err(|e| invalid(e.to_string()))?;
        }
        let received = records.len() as u64;
        let pending = self.inner.wal.append(records).map_err(|e| ReplicateError::Write(e.into()))?;
        match pending.await {
            Ok(Ok(outcome)) => {
                self.inner.state.metrics.replication_received_records.inc_by(received - outcome.skipped);
                Ok(outcome)
            }
            Ok(Err(ProposeError::Gap { expected, .. })) => Err(ReplicateError::Gap { expected: expected.0 }),
            Ok(Err(e)) => Err(ReplicateError::Write(e.into())),
            Err(_) => Err(ReplicateError::Write(self.inner.wal.stopped_error().into())),
        }
    }
}

pub(super) fn reject_reason(e: &ProposeError) -> &'static str {
    match e {
        ProposeError::Overloaded => "overloaded",
        ProposeError::Closed => "shutting-down",
        ProposeError::NoSpace(_) | ProposeError::Io(_) | ProposeError::Unknown(_) | ProposeError::Failed(_) => {
            "wal-failed"
        }
        ProposeError::Gap { .. } => "gap",
        ProposeError::Fenced => "fenced",
        ProposeError::LeaseLapsed => "lease-lapsed",
    }
}
