//! Every metric family BitArk exports, registered on a registry the application
//! context passes in (no process-wide globals, so tests can run several nodes in one
//! process).
//!
//! [`Metrics`] is the one handle every crate holds; its fields name each family and say
//! what it measures. Each family is defined (name, help text, labels, buckets) in the
//! file of its subsystem:
//! - `http`: request latency and counts, connections.
//! - `wal`: the write-ahead log: batches, fsyncs, the durable LSN, segments, health.
//! - `store`: the read store: the applied LSN, users and marks, reads waiting, writes
//!   refused.
//! - `snapshot`: snapshots and the start-up recovery.
//! - `resources`: resident memory and its limit, the data directory's disk.
//! - `backup`: the WAL archive of continuous backup.
//! - `config`: configuration refreshes.
//! - `replication`: streaming to slaves and receiving from a master: states, lag, send
//!   buffers, batches, heartbeats, GC headroom, write acknowledgement.
//! - `full_sync`: full syncs and resyncs after local corruption.
//! - `failover`: epochs, fencing, role changes and etcd coordination.
//! - `shard`: a sharded node's ownership and the users of other groups it refused.

mod backup;
mod config;
mod failover;
mod full_sync;
mod http;
mod replication;
mod resources;
mod shard;
mod snapshot;
mod store;
mod wal;

pub use http::Connections;

use prometheus::{
    exponential_buckets, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Registry,
};

/// Cheap-to-clone handle on the metric families; each field is itself an `Arc`.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,

    // HTTP serving (`http.rs`)
    /// `bitark_http_request_duration_seconds{route,method,status}`: latency of every
    /// request; its `_count` series is the request count by route, method and status
    /// (one family instead of two halves the per-request bookkeeping).
    pub http_requests: HistogramVec,
    /// `bitark_http_connections_open`: connections open now.
    pub http_connections_open: IntGauge,
    /// `bitark_http_connections_refused_total`: connections over `server.max-connections`,
    /// answered 503 and closed.
    pub http_connections_refused: IntCounter,
    /// `bitark_http_connections_expired_total{reason="idle|header_timeout"}`: connections
    /// closed for overstaying.
    pub http_connections_expired: IntCounterVec,

    // The write-ahead log (`wal.rs`)
    /// `bitark_wal_append_seconds`: time of the `write` of one group-commit batch.
    pub wal_append_seconds: Histogram,
    /// `bitark_wal_fsync_seconds`
    pub wal_fsync_seconds: Histogram,
    /// `bitark_wal_bytes_written_total`
    pub wal_bytes_written: IntCounter,
    /// `bitark_group_commit_batch_records`: records per group-commit batch.
    pub group_commit_batch_records: Histogram,
    /// `bitark_lsn_durable`: highest LSN on stable storage.
    pub lsn_durable: IntGauge,
    /// `bitark_wal_segments`: segment files on disk.
    pub wal_segments: IntGauge,
    /// `bitark_wal_segments_deleted_total`: segments removed by WAL GC.
    pub wal_segments_deleted: IntCounter,
    /// `bitark_wal_writable`: 1 while the log accepts writes, 0 while it is degraded
    /// (e.g. a full disk) or failed.
    pub wal_writable: IntGauge,
    /// `bitark_wal_failures_total{kind="no_space|write|fsync|crash"}`: write-path failures.
    pub wal_failures: IntCounterVec,
    /// `bitark_wal_retries_total`: tries of a degraded log to write again.
    pub wal_retries: IntCounter,

    // The read store (`store.rs`)
    /// `bitark_lsn_applied`: highest LSN visible to readers.
    pub lsn_applied: IntGauge,
    /// `bitark_store_users`
    pub store_users: IntGauge,
    /// `bitark_store_marks`
    pub store_marks: IntGauge,
    /// `bitark_reads_waiting_for_lsn`: reads waiting for their `minLsn` to be applied.
    pub reads_waiting_for_lsn: IntGauge,
    /// `bitark_writes_rejected_total{reason}`: writes refused before logging.
    pub writes_rejected: IntCounterVec,

    // A sharded node (`shard.rs`)
    /// `bitark_shard_map_version`: the map version of the ownership served (0: none).
    pub shard_map_version: IntGauge,
    /// `bitark_shard_owned_ranges`: ranges the group owns.
    pub shard_owned_ranges: IntGauge,
    /// `bitark_shard_frozen_ranges`: owned ranges frozen for a move.
    pub shard_frozen_ranges: IntGauge,
    /// `bitark_shard_owned_fraction`: the share of the hash space it owns.
    pub shard_owned_fraction: prometheus::Gauge,
    /// `bitark_shard_wrong_shard_total{kind="read|write"}`: users of other groups refused.
    pub shard_wrong_shard: IntCounterVec,
    /// `bitark_shard_range_users{range}`: users in each owned range (counted every
    /// `cluster.range-stats-every`).
    pub shard_range_users: IntGaugeVec,
    /// `bitark_shard_range_marks{range}`: marks in each owned range.
    pub shard_range_marks: IntGaugeVec,
    /// `bitark_shard_unowned_users`: users held outside the owned ranges.
    pub shard_unowned_users: IntGauge,
    /// `bitark_shard_range_requests_total{range, kind="read|write"}`: requests served
    /// for users of each owned range.
    pub shard_range_requests: IntCounterVec,

    // Snapshots and the start-up recovery that reads them back (`snapshot.rs`)
    /// `bitark_snapshot_duration_seconds`
    pub snapshot_duration_seconds: Histogram,
    /// `bitark_snapshot_size_bytes`: size of the newest snapshot.
    pub snapshot_size_bytes: IntGauge,
    /// `bitark_snapshot_last_lsn`
    pub snapshot_last_lsn: IntGauge,
    /// `bitark_snapshots_total{result="ok|error"}`
    pub snapshots: IntCounterVec,
    /// `bitark_recovery_duration_seconds`: time of the last start-up recovery.
    pub recovery_duration_seconds: prometheus::Gauge,
    /// `bitark_recovery_records_replayed`
    pub recovery_records_replayed: IntGauge,

    // The process's resources (`resources.rs`)
    /// `bitark_memory_resident_bytes`: resident memory of the process, as the memory
    /// guard last sampled it.
    pub memory_resident_bytes: IntGauge,
    /// `bitark_memory_limit_bytes`: `limits.max-memory` (0 when off).
    pub memory_limit_bytes: IntGauge,
    /// `bitark_disk_free_bytes`: free space of the data directory's file system, as of
    /// the last scrape.
    pub disk_free_bytes: IntGauge,
    /// `bitark_disk_total_bytes`: size of that file system.
    pub disk_total_bytes: IntGauge,

    // The backup archive (`backup.rs`)
    /// `bitark_backup_archive_pending_segments`: sealed WAL segments not archived yet.
    pub archive_pending_segments: IntGauge,
    /// `bitark_backup_archive_pending_bytes`: their bytes.
    pub archive_pending_bytes: IntGauge,
    /// `bitark_backup_archived_segments_total`
    pub archived_segments: IntCounter,
    /// `bitark_backup_archive_failures_total`: uploads that failed (and are retried).
    pub archive_failures: IntCounter,
    /// `bitark_backup_archive_given_up_segments_total`: segments past
    /// `backup.archive.max-pending`, never archived: the archive has a gap.
    pub archive_given_up: IntCounter,
    /// `bitark_backup_archive_last_success_timestamp_seconds`
    pub archive_last_success: IntGauge,

    // Configuration refreshes (`config.rs`)
    /// `bitark_config_refreshes_total{outcome="applied|unchanged|refused"}`: configuration
    /// refreshes (`POST /actuator/refresh`, SIGHUP).
    pub config_refreshes: IntCounterVec,
    /// `bitark_config_last_refresh_timestamp_seconds`: when a refresh last changed the
    /// configuration in force (0: never since start).
    pub config_last_refresh: IntGauge,

    // Streaming replication (`replication.rs`)
    /// `bitark_replication_feature{feature}`: 1 for each replication flag in force.
    pub replication_feature: IntGaugeVec,
    /// `bitark_replication_slave_state{slave,state}`: 1 for the state a slave is in.
    pub replication_slave_state: IntGaugeVec,
    /// `bitark_replication_slave_ack_lsn{slave}`
    pub replication_ack_lsn: IntGaugeVec,
    /// `bitark_replication_slave_lag_records{slave}`
    pub replication_lag_records: IntGaugeVec,
    /// `bitark_replication_slave_lag_bytes{slave}`: bytes of records sent but not acknowledged or still queued.
    pub replication_lag_bytes: IntGaugeVec,
    /// `bitark_replication_slave_lag_seconds{slave}`: age of the oldest record the slave has not acknowledged.
    pub replication_lag_seconds: GaugeVec,
    /// `bitark_replication_buffer_depth{slave}`: records waiting in the send buffer.
    pub replication_buffer_depth: IntGaugeVec,
    /// `bitark_replication_buffer_bytes{slave}`: bytes waiting in the send buffer.
    pub replication_buffer_bytes: IntGaugeVec,
    /// `bitark_replication_buffers_bytes`: bytes in all send buffers together.
    pub replication_buffered_bytes: IntGauge,
    /// `bitark_replication_send_failures_total{slave}`: batch sends that failed or were refused.
    pub replication_send_failures: IntCounterVec,
    /// `bitark_replication_registrations_refused_total{reason}` (master).
    pub replication_registrations_refused: IntCounterVec,
    /// `bitark_replication_appends_refused_total{reason}` (slave): batches refused before
    /// being logged (`not_registered`, `wrong_master`, `invalid_record`).
    pub replication_appends_refused: IntCounterVec,
    /// `bitark_replication_heartbeat_age_seconds{slave}`: time since the slave last
    /// answered (stage 4).
    pub replication_heartbeat_age: GaugeVec,
    /// `bitark_replication_dead_detections_total{slave}`: times the slave was found DEAD.
    pub replication_dead_detections: IntCounterVec,
    /// `bitark_replication_headroom_bytes{slave}`: bytes of log a slave may still fall
    /// behind before it is OUTDATED (stage 6, bounded GC).
    pub replication_headroom_bytes: IntGaugeVec,
    /// `bitark_replication_headroom_seconds{slave}`: the same at the current write rate.
    pub replication_headroom_seconds: GaugeVec,
    /// `bitark_replication_retries_total{slave}`
    pub replication_retries: IntCounterVec,
    /// `bitark_replication_sent_batches_total{slave}`
    pub replication_sent_batches: IntCounterVec,
    /// `bitark_replication_sent_records_total{slave}`
    pub replication_sent_records: IntCounterVec,
    /// `bitark_replication_acked_batches_total{slave}`
    pub replication_acked_batches: IntCounterVec,
    /// `bitark_replication_acked_records_total{slave}`
    pub replication_acked_records: IntCounterVec,
    /// `bitark_replication_caught_up_records_total{slave}`: records read back from the WAL for a slave that fell behind.
    pub replication_catchup_records: IntCounterVec,
    /// `bitark_replication_send_seconds{slave}`: time of one batch send, answer included.
    pub replication_send_seconds: HistogramVec,
    /// `bitark_replication_lag_at_ack_seconds{slave}`: for each record sent from the
    /// buffer, the time from its commit on the master to the slave's acknowledgement.
    pub replication_ack_lag_seconds: HistogramVec,
    /// `bitark_replication_ack_wait_seconds{ack}`: how long `semi`/`all` writes waited for
    /// slaves after the master's own fsync.
    pub replication_ack_wait_seconds: HistogramVec,
    /// `bitark_replication_ack_timeouts_total{ack}`: writes answered 504 `replication_timeout`.
    pub replication_ack_timeouts: IntCounterVec,
    /// `bitark_replication_duplicates_skipped_total` (slave): records received again and skipped.
    pub replication_duplicates_skipped: IntCounter,
    /// `bitark_replication_crc_failures_total` (slave): batches refused for a bad checksum.
    pub replication_crc_failures: IntCounter,
    /// `bitark_replication_received_records_total` (slave): records logged and applied from the master.
    pub replication_received_records: IntCounter,

    // Full syncs, stage 5 (`full_sync.rs`)
    /// `bitark_full_sync_bytes_total`: snapshot bytes sent (master) or received (slave).
    pub full_sync_bytes: IntCounter,
    /// `bitark_full_syncs_total{outcome="started|completed|failed|resumed"}`.
    pub full_syncs: IntCounterVec,
    /// `bitark_resyncs_on_corruption_total`: start-ups that discarded a damaged local state.
    pub resyncs_on_corruption: IntCounter,

    // Epochs and failover, stage 7 (`failover.rs`)
    /// `bitark_replication_epoch`: the highest epoch this node knows (stage 7).
    pub replication_epoch: IntGauge,
    /// `bitark_replication_stale_epoch_refusals_total`: requests refused for a lower epoch.
    pub replication_stale_epoch_refusals: IntCounter,
    /// `bitark_replication_truncated_records_total`: records cut from the log on stepping
    /// down (the new master never had them; kept in a side file).
    pub replication_truncated_records: IntCounter,
    /// `bitark_replication_role_changes_total{to}`: promotions (`master`) and step-downs
    /// (`slave`).
    pub replication_role_changes: IntCounterVec,
    /// `bitark_coordination_leader`: 1 while this node holds the leader lease in etcd
    /// (failover).
    pub coordination_leader: IntGauge,
    /// `bitark_coordination_etcd_up`: 1 while the last etcd call answered (failover).
    pub coordination_etcd_up: IntGauge,
    /// `bitark_coordination_lease_renewals_total{result}`: `ok`, `error` (etcd did not
    /// answer in time) and `expired` (the lease was gone).
    pub coordination_lease_renewals: IntCounterVec,
    /// `bitark_coordination_elections_total{result}`: campaigns this node `won` or `lost`.
    pub coordination_elections: IntCounterVec,
}

fn latency_buckets() -> Vec<f64> {
    // 10 µs .. ~10 s
    exponential_buckets(0.000_01, 2.0, 21).expect("valid buckets")
}

impl Metrics {
    /// The families of connections to the HTTP server.
    pub fn connections(&self) -> Connections {
        Connections {
            open: self.http_connections_open.clone(),
            refused: self.http_connections_refused.clone(),
            expired: self.http_connections_expired.clone(),
        }
    }

    /// Creates every family and registers it on `registry`.
    pub fn new(registry: Registry) -> Result<Self, prometheus::Error> {
        let r = &registry;
        let m = Metrics {
            http_requests: http::requests(r)?,
            http_connections_open: http::connections_open(r)?,
            http_connections_refused: http::connections_refused(r)?,
            http_connections_expired: http::connections_expired(r)?,
            wal_append_seconds: wal::append_seconds(r)?,
            wal_fsync_seconds: wal::fsync_seconds(r)?,
            wal_bytes_written: wal::bytes_written(r)?,
            group_commit_batch_records: wal::group_commit_batch_records(r)?,
            lsn_durable: wal::lsn_durable(r)?,
            wal_segments: wal::segments(r)?,
            wal_segments_deleted: wal::segments_deleted(r)?,
            wal_writable: wal::writable(r)?,
            wal_failures: wal::failures(r)?,
            wal_retries: wal::retries(r)?,
            lsn_applied: store::lsn_applied(r)?,
            store_users: store::users(r)?,
            store_marks: store::marks(r)?,
            reads_waiting_for_lsn: store::reads_waiting_for_lsn(r)?,
            writes_rejected: store::writes_rejected(r)?,
            shard_map_version: shard::map_version(r)?,
            shard_owned_ranges: shard::owned_ranges(r)?,
            shard_frozen_ranges: shard::frozen_ranges(r)?,
            shard_owned_fraction: shard::owned_fraction(r)?,
            shard_wrong_shard: shard::wrong_shard(r)?,
            shard_range_users: shard::range_users(r)?,
            shard_range_marks: shard::range_marks(r)?,
            shard_unowned_users: shard::unowned_users(r)?,
            shard_range_requests: shard::range_requests(r)?,
            snapshot_duration_seconds: snapshot::duration_seconds(r)?,
            snapshot_size_bytes: snapshot::size_bytes(r)?,
            snapshot_last_lsn: snapshot::last_lsn(r)?,
            snapshots: snapshot::snapshots(r)?,
            recovery_duration_seconds: snapshot::recovery_duration_seconds(r)?,
            recovery_records_replayed: snapshot::recovery_records_replayed(r)?,
            memory_resident_bytes: resources::memory_resident_bytes(r)?,
            memory_limit_bytes: resources::memory_limit_bytes(r)?,
            disk_free_bytes: resources::disk_free_bytes(r)?,
            disk_total_bytes: resources::disk_total_bytes(r)?,
            archive_pending_segments: backup::pending_segments(r)?,
            archive_pending_bytes: backup::pending_bytes(r)?,
            archived_segments: backup::archived_segments(r)?,
            archive_failures: backup::failures(r)?,
            archive_given_up: backup::given_up(r)?,
            archive_last_success: backup::last_success(r)?,
            config_refreshes: config::refreshes(r)?,
            config_last_refresh: config::last_refresh(r)?,
            replication_feature: replication::feature(r)?,
            replication_slave_state: replication::slave_state(r)?,
            replication_ack_lsn: replication::ack_lsn(r)?,
            replication_lag_records: replication::lag_records(r)?,
            replication_lag_bytes: replication::lag_bytes(r)?,
            replication_lag_seconds: replication::lag_seconds(r)?,
            replication_buffer_depth: replication::buffer_depth(r)?,
            replication_buffer_bytes: replication::buffer_bytes(r)?,
            replication_buffered_bytes: replication::buffered_bytes(r)?,
            replication_send_failures: replication::send_failures(r)?,
            replication_registrations_refused: replication::registrations_refused(r)?,
            replication_appends_refused: replication::appends_refused(r)?,
            replication_heartbeat_age: replication::heartbeat_age(r)?,
            replication_dead_detections: replication::dead_detections(r)?,
            replication_headroom_bytes: replication::headroom_bytes(r)?,
            replication_headroom_seconds: replication::headroom_seconds(r)?,
            replication_retries: replication::retries(r)?,
            replication_sent_batches: replication::sent_batches(r)?,
            replication_sent_records: replication::sent_records(r)?,
            replication_acked_batches: replication::acked_batches(r)?,
            replication_acked_records: replication::acked_records(r)?,
            replication_catchup_records: replication::catchup_records(r)?,
            replication_send_seconds: replication::send_seconds(r)?,
            replication_ack_lag_seconds: replication::ack_lag_seconds(r)?,
            replication_ack_wait_seconds: replication::ack_wait_seconds(r)?,
            replication_ack_timeouts: replication::ack_timeouts(r)?,
            replication_duplicates_skipped: replication::duplicates_skipped(r)?,
            replication_crc_failures: replication::crc_failures(r)?,
            replication_received_records: replication::received_records(r)?,
            full_sync_bytes: full_sync::bytes(r)?,
            full_syncs: full_sync::full_syncs(r)?,
            resyncs_on_corruption: full_sync::resyncs_on_corruption(r)?,
            replication_epoch: failover::epoch(r)?,
            replication_stale_epoch_refusals: failover::stale_epoch_refusals(r)?,
            replication_truncated_records: failover::truncated_records(r)?,
            replication_role_changes: failover::role_changes(r)?,
            coordination_leader: failover::leader(r)?,
            coordination_etcd_up: failover::etcd_up(r)?,
            coordination_lease_renewals: failover::lease_renewals(r)?,
            coordination_elections: failover::elections(r)?,
            registry,
        };
        Ok(m)
    }

    /// A fresh registry with every family; for tests and tools.
    pub fn standalone() -> Self {
        Metrics::new(Registry::new()).expect("metric families are valid")
    }

    /// The registry in Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&self.registry.gather(), &mut out)
            .expect("text encoding of gathered metrics");
        out
    }
}

fn histogram(name: &str, help: &str, buckets: Vec<f64>) -> Result<Histogram, prometheus::Error> {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
}

fn reg<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> Result<C, prometheus::Error> {
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}
