//! Every metric family BitArk exports, registered on a registry the application
//! context passes in (no process-wide globals, so tests can run several nodes in one
//! process).

use prometheus::{
    exponential_buckets, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

/// Cheap-to-clone handle on the metric families; each field is itself an `Arc`.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
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
    /// `bitark_wal_append_seconds`: time of the `write` of one group-commit batch.
    pub wal_append_seconds: Histogram,
    /// `bitark_wal_fsync_seconds`
    pub wal_fsync_seconds: Histogram,
    /// `bitark_wal_bytes_written_total`
    pub wal_bytes_written: IntCounter,
    /// `bitark_group_commit_batch_records`: records per group-commit batch.
    pub group_commit_batch_records: Histogram,
    /// `bitark_lsn_applied`: highest LSN visible to readers.
    pub lsn_applied: IntGauge,
    /// `bitark_lsn_durable`: highest LSN on stable storage.
    pub lsn_durable: IntGauge,
    /// `bitark_store_users`
    pub store_users: IntGauge,
    /// `bitark_store_marks`
    pub store_marks: IntGauge,
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
    /// `bitark_writes_rejected_total{reason}`: writes refused before logging.
    pub writes_rejected: IntCounterVec,
    /// `bitark_replication_feature{feature}`: 1 for each replication flag in force.
    pub replication_feature: IntGaugeVec,
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
    /// `bitark_config_refreshes_total{outcome="applied|unchanged|refused"}`: configuration
    /// refreshes (`POST /actuator/refresh`, SIGHUP).
    pub config_refreshes: IntCounterVec,
    /// `bitark_config_last_refresh_timestamp_seconds`: when a refresh last changed the
    /// configuration in force (0: never since start).
    pub config_last_refresh: IntGauge,
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
    /// `bitark_reads_waiting_for_lsn`: reads waiting for their `minLsn` to be applied.
    pub reads_waiting_for_lsn: IntGauge,
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
    /// `bitark_full_sync_bytes_total`: snapshot bytes sent (master) or received (slave).
    pub full_sync_bytes: IntCounter,
    /// `bitark_full_syncs_total{outcome="started|completed|failed|resumed"}`.
    pub full_syncs: IntCounterVec,
    /// `bitark_resyncs_on_corruption_total`: start-ups that discarded a damaged local state.
    pub resyncs_on_corruption: IntCounter,
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
    /// `bitark_replication_duplicates_skipped_total` (slave): records received again and skipped.
    pub replication_duplicates_skipped: IntCounter,
    /// `bitark_replication_crc_failures_total` (slave): batches refused for a bad checksum.
    pub replication_crc_failures: IntCounter,
    /// `bitark_replication_received_records_total` (slave): records logged and applied from the master.
    pub replication_received_records: IntCounter,
    /// `bitark_replication_epoch`: the highest epoch this node knows (stage 7).
    pub replication_epoch: IntGauge,
    /// `bitark_replication_stale_epoch_refusals_total`: requests refused for a lower epoch.
    pub replication_stale_epoch_refusals: IntCounter,
    /// `bitark_replication_truncated_records_total`: records cut from the log on stepping
    /// down (the new master never had them; kept in a side file).
    pub replication_truncated_records: IntCounter,
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
    /// `bitark_replication_role_changes_total{to}`: promotions (`master`) and step-downs
    /// (`slave`).
    pub replication_role_changes: IntCounterVec,
    /// `bitark_replication_ack_wait_seconds{ack}`: how long `semi`/`all` writes waited for
    /// slaves after the master's own fsync.
    pub replication_ack_wait_seconds: HistogramVec,
    /// `bitark_replication_ack_timeouts_total{ack}`: writes answered 504 `replication_timeout`.
    pub replication_ack_timeouts: IntCounterVec,
}

fn latency_buckets() -> Vec<f64> {
    // 10 µs .. ~10 s
    exponential_buckets(0.000_01, 2.0, 21).expect("valid buckets")
}

impl Metrics {
    /// Creates every family and registers it on `registry`.
    pub fn new(registry: Registry) -> Result<Self, prometheus::Error> {
        let r = &registry;
        let m = Metrics {
            http_requests: reg(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "bitark_http_request_duration_seconds",
                        "HTTP request latency by route, method and status",
                    )
                    .buckets(latency_buckets()),
                    &["route", "method", "status"],
                )?,
            )?,
            http_connections_open: reg(r, IntGauge::new("bitark_http_connections_open", "HTTP connections open")?)?,
            http_connections_refused: reg(
                r,
                IntCounter::new(
                    "bitark_http_connections_refused_total",
                    "HTTP connections refused over server.max-connections",
                )?,
            )?,
            http_connections_expired: reg(
                r,
                IntCounterVec::new(
                    Opts::new("bitark_http_connections_expired_total", "HTTP connections closed for overstaying"),
                    &["reason"],
                )?,
            )?,
            wal_append_seconds: reg(
                r,
                histogram("bitark_wal_append_seconds", "Time to write one group-commit batch", latency_buckets())?,
            )?,
            wal_fsync_seconds: reg(r, histogram("bitark_wal_fsync_seconds", "WAL fsync latency", latency_buckets())?)?,
            wal_bytes_written: reg(r, IntCounter::new("bitark_wal_bytes_written_total", "Bytes appended to the WAL")?)?,
            group_commit_batch_records: reg(
                r,
                histogram(
                    "bitark_group_commit_batch_records",
                    "Records per group-commit batch",
                    exponential_buckets(1.0, 2.0, 14).expect("valid buckets"),
                )?,
            )?,
            lsn_applied: reg(r, IntGauge::new("bitark_lsn_applied", "Highest LSN visible to readers")?)?,
            lsn_durable: reg(r, IntGauge::new("bitark_lsn_durable", "Highest LSN on stable storage")?)?,
            store_users: reg(r, IntGauge::new("bitark_store_users", "Users with at least one read mark")?)?,
            store_marks: reg(r, IntGauge::new("bitark_store_marks", "Read marks held in memory")?)?,
            snapshot_duration_seconds: reg(
                r,
                histogram(
                    "bitark_snapshot_duration_seconds",
                    "Time to write one snapshot",
                    exponential_buckets(0.001, 2.0, 20).expect("valid buckets"),
                )?,
            )?,
            snapshot_size_bytes: reg(r, IntGauge::new("bitark_snapshot_size_bytes", "Size of the newest snapshot")?)?,
            snapshot_last_lsn: reg(
                r,
                IntGauge::new("bitark_snapshot_last_lsn", "LSN covered by the newest snapshot")?,
            )?,
            snapshots: reg(
                r,
                IntCounterVec::new(Opts::new("bitark_snapshots_total", "Snapshots attempted by result"), &["result"])?,
            )?,
            recovery_duration_seconds: reg(
                r,
                prometheus::Gauge::new("bitark_recovery_duration_seconds", "Duration of the last start-up recovery")?,
            )?,
            recovery_records_replayed: reg(
                r,
                IntGauge::new(
                    "bitark_recovery_records_replayed",
                    "WAL records replayed by the last start-up recovery",
                )?,
            )?,
            wal_segments: reg(r, IntGauge::new("bitark_wal_segments", "WAL segment files on disk")?)?,
            wal_segments_deleted: reg(
                r,
                IntCounter::new("bitark_wal_segments_deleted_total", "WAL segments deleted by garbage collection")?,
            )?,
            wal_writable: reg(r, IntGauge::new("bitark_wal_writable", "1 while the write-ahead log accepts writes")?)?,
            wal_retries: reg(
                r,
                IntCounter::new("bitark_wal_retries_total", "Tries of a degraded write-ahead log to write again")?,
            )?,
            wal_failures: reg(
                r,
                IntCounterVec::new(
                    Opts::new("bitark_wal_failures_total", "Write-ahead log failures by kind"),
                    &["kind"],
                )?,
            )?,
            disk_free_bytes: reg(
                r,
                IntGauge::new("bitark_disk_free_bytes", "Free space of the data directory's file system")?,
            )?,
            disk_total_bytes: reg(
                r,
                IntGauge::new("bitark_disk_total_bytes", "Size of the data directory's file system")?,
            )?,
            memory_resident_bytes: reg(
                r,
                IntGauge::new("bitark_memory_resident_bytes", "Resident memory of the process")?,
            )?,
            memory_limit_bytes: reg(
                r,
                IntGauge::new("bitark_memory_limit_bytes", "limits.max-memory; 0 when the guard is off")?,
            )?,
            writes_rejected: reg(
                r,
                IntCounterVec::new(
                    Opts::new("bitark_writes_rejected_total", "Writes refused before reaching the WAL"),
                    &["reason"],
                )?,
            )?,
            replication_feature: reg(
                r,
                IntGaugeVec::new(
                    Opts::new("bitark_replication_feature", "1 for each replication flag in force"),
                    &["feature"],
                )?,
            )?,
            archive_pending_segments: reg(
                r,
                IntGauge::new("bitark_backup_archive_pending_segments", "Sealed WAL segments not archived yet")?,
            )?,
            archive_pending_bytes: reg(
                r,
                IntGauge::new("bitark_backup_archive_pending_bytes", "Bytes of sealed WAL segments not archived yet")?,
            )?,
            archived_segments: reg(
                r,
                IntCounter::new("bitark_backup_archived_segments_total", "WAL segments uploaded to the archive")?,
            )?,
            archive_failures: reg(
                r,
                IntCounter::new("bitark_backup_archive_failures_total", "WAL segment uploads that failed")?,
            )?,
            archive_given_up: reg(
                r,
                IntCounter::new(
                    "bitark_backup_archive_given_up_segments_total",
                    "WAL segments past backup.archive.max-pending that were never archived",
                )?,
            )?,
            archive_last_success: reg(
                r,
                IntGauge::new(
                    "bitark_backup_archive_last_success_timestamp_seconds",
                    "Unix time of the last segment archived",
                )?,
            )?,
            config_refreshes: reg(
                r,
                IntCounterVec::new(
                    Opts::new("bitark_config_refreshes_total", "Configuration refreshes by outcome"),
                    &["outcome"],
                )?,
            )?,
            config_last_refresh: reg(
                r,
                IntGauge::new(
                    "bitark_config_last_refresh_timestamp_seconds",
                    "Unix time a refresh last changed the configuration in force",
                )?,
            )?,
            replication_slave_state: reg(
                r,
                IntGaugeVec::new(
                    Opts::new("bitark_replication_slave_state", "1 for the state each slave is in"),
                    &["slave", "state"],
                )?,
            )?,
            replication_ack_lsn: reg(
                r,
                IntGaugeVec::new(
                    Opts::new("bitark_replication_slave_ack_lsn", "Last LSN each slave acknowledged"),
                    &["slave"],
                )?,
            )?,
            replication_lag_records: reg(
                r,
                IntGaugeVec::new(
                    Opts::new("bitark_replication_slave_lag_records", "Records each slave has not acknowledged"),
                    &["slave"],
                )?,
            )?,
            replication_lag_bytes: reg(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "bitark_replication_slave_lag_bytes",
                        "Bytes of records each slave has not acknowledged, where known",
                    ),
                    &["slave"],
                )?,
            )?,
            replication_lag_seconds: reg(
                r,
                GaugeVec::new(
                    Opts::new(
                        "bitark_replication_slave_lag_seconds",
                        "Age of the oldest record each slave has not acknowledged",
                    ),
                    &["slave"],
                )?,
            )?,
            replication_buffer_depth: reg(
                r,
                IntGaugeVec::new(
                    Opts::new("bitark_replication_buffer_depth", "Records waiting in each slave's send buffer"),
                    &["slave"],
                )?,
            )?,
            replication_buffer_bytes: reg(
                r,
                IntGaugeVec::new(
                    Opts::new("bitark_replication_buffer_bytes", "Bytes waiting in each slave's send buffer"),
                    &["slave"],
                )?,
            )?,
            replication_buffered_bytes: reg(
                r,
                IntGauge::new("bitark_replication_buffers_bytes", "Bytes in all send buffers together")?,
            )?,
            replication_send_failures: reg(
                r,
                IntCounterVec::new(
                    Opts::new("bitark_replication_send_failures_total", "Batch sends that failed or were refused"),
                    &["slave"],
                )?,
            )?,
            replication_registrations_refused: reg(
                r,
                IntCounterVec::new(
                    Opts::new("bitark_replication_registrations_refused_total", "Slave registrations refused"),
                    &["reason"],
                )?,
            )?,
            replication_appends_refused: reg(
                r,
                IntCounterVec::new(
                    Opts::new("bitark_replication_appends_refused_total", "Replication batches refused before logging"),
                    &["reason"],
                )?,
            )?,
            reads_waiting_for_lsn: reg(
                r,
                IntGauge::new("bitark_reads_waiting_for_lsn", "Reads waiting for their minLsn to be applied")?,
            )?,
            replication_heartbeat_age: reg(
                r,
                GaugeVec::new(
                    Opts::new("bitark_replication_heartbeat_age_seconds", "Time since each slave last answered"),
                    &["slave"],
                )?,
            )?,
            replication_dead_detections: reg(
                r,
                IntCounterVec::new(
                    Opts::new("bitark_replication_dead_detections_total", "Times each slave was found DEAD"),
                    &["slave"],
                )?,
            )?,
            replication_headroom_bytes: reg(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "bitark_replication_headroom_bytes",
                        "Bytes of log each slave may still fall behind before it is OUTDATED",
                    ),
                    &["slave"],
                )?,
            )?,
            replication_headroom_seconds: reg(
                r,
                GaugeVec::new(
                    Opts::new(
                        "bitark_replication_headroom_seconds",
                        "Seconds at the current write rate before each slave is OUTDATED",
                    ),
                    &["slave"],
                )?,
            )?,
            full_sync_bytes: reg(
                r,
                IntCounter::new("bitark_full_sync_bytes_total", "Snapshot bytes sent or received by full syncs")?,
            )?,
            full_syncs: reg(
                r,
                IntCounterVec::new(Opts::new("bitark_full_syncs_total", "Full syncs by outcome"), &["outcome"])?,
            )?,
            resyncs_on_corruption: reg(
                r,
                IntCounter::new(
                    "bitark_resyncs_on_corruption_total",
                    "Start-ups that discarded a damaged local state to resync from the master",
                )?,
            )?,
            replication_retries: reg(
                r,
                IntCounterVec::new(Opts::new("bitark_replication_retries_total", "Batch sends retried"), &["slave"])?,
            )?,
            replication_sent_batches: reg(
                r,
                IntCounterVec::new(Opts::new("bitark_replication_sent_batches_total", "Batches sent"), &["slave"])?,
            )?,
            replication_sent_records: reg(
                r,
                IntCounterVec::new(Opts::new("bitark_replication_sent_records_total", "Records sent"), &["slave"])?,
            )?,
            replication_acked_batches: reg(
                r,
                IntCounterVec::new(
                    Opts::new("bitark_replication_acked_batches_total", "Batches acknowledged"),
                    &["slave"],
                )?,
            )?,
            replication_acked_records: reg(
                r,
                IntCounterVec::new(
                    Opts::new("bitark_replication_acked_records_total", "Records acknowledged"),
                    &["slave"],
                )?,
            )?,
            replication_catchup_records: reg(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "bitark_replication_caught_up_records_total",
                        "Records read back from the WAL to catch a slave up",
                    ),
                    &["slave"],
                )?,
            )?,
            replication_send_seconds: reg(
                r,
                HistogramVec::new(
                    HistogramOpts::new("bitark_replication_send_seconds", "Time of one batch send, answer included")
                        .buckets(latency_buckets()),
                    &["slave"],
                )?,
            )?,
            replication_ack_lag_seconds: reg(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "bitark_replication_lag_at_ack_seconds",
                        "Time from a record's commit on the master to its acknowledgement by a slave",
                    )
                    // Finer than the other latency families: 0.1 ms to ~13 s in steps of 1.5x.
                    .buckets(exponential_buckets(0.000_1, 1.5, 30).expect("valid buckets")),
                    &["slave"],
                )?,
            )?,
            replication_epoch: reg(
                r,
                IntGauge::new("bitark_replication_epoch", "Highest replication epoch this node knows")?,
            )?,
            replication_stale_epoch_refusals: reg(
                r,
                IntCounter::new(
                    "bitark_replication_stale_epoch_refusals_total",
                    "Replication requests refused because they came from a lower epoch",
                )?,
            )?,
            replication_truncated_records: reg(
                r,
                IntCounter::new(
                    "bitark_replication_truncated_records_total",
                    "Records cut from the log on stepping down, kept in a side file",
                )?,
            )?,
            coordination_leader: reg(
                r,
                IntGauge::new("bitark_coordination_leader", "1 while this node holds the leader lease in etcd")?,
            )?,
            coordination_etcd_up: reg(
                r,
                IntGauge::new("bitark_coordination_etcd_up", "1 while the last call to etcd answered")?,
            )?,
            coordination_lease_renewals: reg(
                r,
                IntCounterVec::new(
                    Opts::new("bitark_coordination_lease_renewals_total", "Lease renewals in etcd, by result"),
                    &["result"],
                )?,
            )?,
            coordination_elections: reg(
                r,
                IntCounterVec::new(
                    Opts::new("bitark_coordination_elections_total", "Campaigns for the leader key, by result"),
                    &["result"],
                )?,
            )?,
            replication_role_changes: reg(
                r,
                IntCounterVec::new(
                    Opts::new("bitark_replication_role_changes_total", "Promotions and step-downs, by the new role"),
                    &["to"],
                )?,
            )?,
            replication_ack_wait_seconds: reg(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "bitark_replication_ack_wait_seconds",
                        "Time semi and all writes waited for slave acknowledgements after the master's fsync",
                    )
                    .buckets(exponential_buckets(0.000_1, 1.5, 30).expect("valid buckets")),
                    &["ack"],
                )?,
            )?,
            replication_ack_timeouts: reg(
                r,
                IntCounterVec::new(
                    Opts::new("bitark_replication_ack_timeouts_total", "Writes answered 504 replication_timeout"),
                    &["ack"],
                )?,
            )?,
            replication_duplicates_skipped: reg(
                r,
                IntCounter::new(
                    "bitark_replication_duplicates_skipped_total",
                    "Replicated records received again and skipped",
                )?,
            )?,
            replication_crc_failures: reg(
                r,
                IntCounter::new(
                    "bitark_replication_crc_failures_total",
                    "Replicated batches refused for a bad checksum",
                )?,
            )?,
            replication_received_records: reg(
                r,
                IntCounter::new(
                    "bitark_replication_received_records_total",
                    "Records logged and applied from the master",
                )?,
            )?,
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
