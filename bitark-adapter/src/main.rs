//! `bitark`: the read-status server.

use bitark_adapter::app::{Reloader, SetLogLevel};
use bitark_adapter::config::{AppConfig, LogFormat, LoggingConfig, Sources};
use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// BitArk: has user U read message M? Runs the embedded `application.yml` by default.
#[derive(Parser)]
#[command(name = "bitark", version)]
struct Cli {
    /// Configuration file (instead of ./application.yml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Profile: also load application-{profile}.yml beside the configuration file.
    #[arg(long, env = "BITARK_PROFILE")]
    profile: Option<String>,
    /// Overrides server.port.
    #[arg(long)]
    port: Option<u16>,
    /// Overrides server.bind.
    #[arg(long)]
    bind: Option<IpAddr>,
    /// Overrides node.data-dir.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Take an online base backup of a running node into a target (a directory,
    /// file://, or s3://bucket/prefix), or check the backups of a target.
    #[command(args_conflicts_with_subcommands = true)]
    Backup {
        #[command(subcommand)]
        action: Option<BackupAction>,
        /// The node's base URL (its management URL when it has one).
        #[arg(long)]
        from: Option<String>,
        /// Where the backup goes: a path, file://path, or s3://bucket/prefix.
        #[arg(long)]
        to: Option<String>,
        /// The node's admin token (security.admin-token), when it has one.
        #[arg(long, env = "BITARK_ADMIN_TOKEN")]
        token: Option<String>,
        /// Begin from a snapshot taken now, not the node's newest (a shorter log to
        /// replay on restore, but no earlier point to restore to).
        #[arg(long)]
        fresh_snapshot: bool,
        /// Store only the log since the end of the newest backup in the target.
        #[arg(long, conflicts_with = "fresh_snapshot")]
        incremental: bool,
    },
    /// Build a data directory from a backup, up to a recovery target; then start
    /// `bitark --data-dir D` as usual.
    Restore {
        /// The backup target.
        #[arg(long)]
        from: String,
        /// The backup to restore; default the newest full backup that reaches the target.
        #[arg(long)]
        backup: Option<String>,
        /// Stop after this LSN (point-in-time recovery); default the end of what the
        /// target holds. A batch is one record: its LSN is the smallest unit.
        #[arg(long, conflicts_with = "to_time")]
        to_lsn: Option<u64>,
        /// Stop after the last record committed at or before this RFC 3339 time
        /// (2026-12-02T10:00:00Z, 2026-12-02T11:00:00.5+01:00).
        #[arg(long, value_parser = bitark_adapter::backups::parse_time)]
        to_time: Option<u64>,
        /// The new, empty data directory.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
    },
    /// Read or change the shard map in etcd: which replication group owns which users.
    Shards {
        #[command(subcommand)]
        action: ShardsAction,
        #[command(flatten)]
        etcd: EtcdArgs,
    },
    /// Run a router: the public API of every group behind one address, sending each
    /// request to the group that owns its user (stateless; run as many as you like).
    Router {
        #[command(flatten)]
        etcd: EtcdArgs,
        /// Longest a request waits for its group to have a master (during a failover)
        /// before it is answered 503.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        failover_wait: std::time::Duration,
        /// Longest one request to a node may take.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        node_timeout: std::time::Duration,
        /// Longest a write to a range frozen for a move (its cutover's pause) is held
        /// before the node's `503 range_frozen` is passed on.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        frozen_hold: std::time::Duration,
        /// Connections per node that carry plain reads pipelined (0: none, each read
        /// on a connection of its own as writes are).
        #[arg(long, default_value_t = 4)]
        node_pipelines: usize,
    },
    /// Print the OpenAPI document and exit.
    Openapi,
    /// Print the effective configuration (secrets masked) and exit.
    Config,
    /// Move a running cluster to another replication stage, node by node, without a
    /// restart: slaves first when raising, the master first when lowering.
    Rollout {
        /// The master's base URL, e.g. http://10.0.0.1:8080.
        #[arg(long)]
        cluster: String,
        /// The stage to reach: 0, 1, 2, 2.5, 3, 4, 5, 6 or 7.
        #[arg(long)]
        to_stage: f64,
        /// The nodes' admin token (security.admin-token), when they have one.
        #[arg(long, env = "BITARK_ADMIN_TOKEN")]
        token: Option<String>,
        /// Pause after each converged step.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        step_pause: std::time::Duration,
        /// Longest a step may take to converge before the rollout stops.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        step_timeout: std::time::Duration,
        /// The nodes' management.server.port, when they have one: /actuator and /admin
        /// are reached on it, on the host of each slave's URL (--cluster is then the
        /// master's management URL).
        #[arg(long)]
        management_port: Option<u16>,
    },
}

/// Where a command finds the shard map: etcd and the key prefix (default from the
/// configuration's coordination.etcd.*).
#[derive(clap::Args)]
struct EtcdArgs {
    /// etcd client URL (repeat for several members).
    #[arg(long = "etcd", value_name = "URL", global = true)]
    endpoints: Vec<String>,
    /// Key prefix (coordination.etcd.prefix).
    #[arg(long, global = true)]
    prefix: Option<String>,
}

#[derive(Subcommand)]
enum ShardsAction {
    /// Write the first shard map: the hash space cut evenly over the groups, in order.
    Init {
        /// Group names, comma separated: a,b,c.
        #[arg(long, value_delimiter = ',', required = true)]
        groups: Vec<String>,
    },
    /// Print the shard map and each group's master.
    Show {
        /// The map as JSON, as etcd holds it.
        #[arg(long)]
        json: bool,
    },
    /// Give a hash range to a group in the next map version (ownership only: the data
    /// of users already in the range is not moved).
    Assign {
        /// START..END in hex, END exclusive; `end` for the end of the space:
        /// 0x8000000000000000..end.
        range: String,
        /// The group that owns it from now on.
        group: String,
        /// Refuse unless the map is still at this version.
        #[arg(long)]
        expect_version: Option<u64>,
    },
    /// Cut one range of the map in two, both halves still its group's, in the next map
    /// version (metadata only: no data is copied, the group serves the same users).
    Split {
        /// The range, exactly as `bitark shards show` lists it: START..END in hex.
        range: String,
        /// Where the second half starts (a hash in hex); the midpoint by default.
        #[arg(long)]
        at: Option<String>,
        /// Refuse unless the map is still at this version.
        #[arg(long)]
        expect_version: Option<u64>,
    },
    /// Move one range of the map, with its users, to another group while writes go on:
    /// copy, catch up, a short pause of the range's writes, one transaction in etcd.
    Move {
        /// The range, exactly as `bitark shards show` lists it.
        range: String,
        /// The group that takes it.
        #[arg(long)]
        to: String,
        #[command(flatten)]
        pause: MoveArgs,
    },
    /// Abort a move that has not committed: the source takes the range's writes again.
    Abort { range: String },
    /// Move a range a finished move took back to the group it came from.
    Rollback {
        range: String,
        #[command(flatten)]
        pause: MoveArgs,
    },
    /// Print every recorded move and its phase.
    Status,
}

#[derive(clap::Args)]
struct MoveArgs {
    /// Longest the range's writes may pause; past it the move aborts.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    max_pause: std::time::Duration,
    /// Source records still to replay at which the cutover starts.
    #[arg(long, default_value_t = 1000)]
    max_lag: u64,
    /// The controller's lease in etcd: how soon another controller may take over the
    /// move once this one is gone.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    claim_ttl: std::time::Duration,
}

impl MoveArgs {
    fn options(&self) -> bitark_engine::sharding::controller::MoveOptions {
        let defaults = bitark_engine::sharding::controller::MoveOptions::default();
        bitark_engine::sharding::controller::MoveOptions {
            max_pause: self.max_pause,
            max_lag: self.max_lag,
            ..defaults
        }
    }
}

#[derive(Subcommand)]
enum BackupAction {
    /// Check every checksum of one backup (or of every backup) and that its WAL chain
    /// has no gap.
    Verify {
        /// The backup target.
        target: String,
        /// One backup's id; default every backup of the target.
        id: Option<String>,
    },
    /// Delete the full backups past the newest --keep-full (with the incremental ones
    /// that continue them), backups cut short, and archived WAL no kept backup needs
    /// and older than --keep-wal.
    Prune {
        /// The backup target; default backup.archive.target of the configuration.
        target: Option<String>,
        /// Full backups kept, newest first; default backup.retention.keep-full.
        #[arg(long)]
        keep_full: Option<usize>,
        /// Archived WAL younger than this is kept in any case; default
        /// backup.retention.keep-wal.
        #[arg(long, value_parser = humantime::parse_duration)]
        keep_wal: Option<std::time::Duration>,
        /// Say what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

fn main() -> ExitCode {
    // Named fault points answer the FAILPOINTS variable in test builds; in a release
    // build they do not exist and this does nothing.
    let _failpoints = fail::FailScenario::setup();
    let cli = Cli::parse();
    if let Some(Command::Openapi) = cli.command {
        print!("{}", bitark_adapter::openapi::document());
        return ExitCode::SUCCESS;
    }
    if let Some(Command::Rollout { cluster, to_stage, token, step_pause, step_timeout, management_port }) = cli.command
    {
        let plan =
            bitark_adapter::rollout::Plan { cluster, to_stage, token, step_pause, step_timeout, management_port };
        return rollout(plan);
    }
    match cli.command {
        Some(Command::Backup { action: Some(BackupAction::Verify { target, id }), .. }) => {
            return offline("backup verify", bitark_adapter::backups::verify(&target, id.as_deref(), say));
        }
        Some(Command::Backup { action: None, from, to, token, fresh_snapshot, incremental }) => {
            let (Some(from), Some(to)) = (from, to) else {
                eprintln!("bitark backup: give --from <node URL> and --to <target>");
                return ExitCode::from(2);
            };
            let plan = bitark_adapter::backups::BackupPlan { from, to, token, fresh: fresh_snapshot, incremental };
            return offline("backup", async move { bitark_adapter::backups::backup(plan, say).await.map(|_| ()) });
        }
        Some(Command::Restore { from, backup, to_lsn, to_time, data_dir }) => {
            use bitark_adapter::backups::RecoveryTarget;
            let target = match (to_lsn, to_time) {
                (Some(lsn), _) => RecoveryTarget::Lsn(lsn),
                (None, Some(at)) => RecoveryTarget::Time(at),
                (None, None) => RecoveryTarget::End,
            };
            let plan = bitark_adapter::backups::RestorePlan { from, backup, target, data_dir };
            return offline("restore", async move { bitark_adapter::backups::restore(plan, say).await.map(|_| ()) });
        }
        _ => {}
    }
    let sources = Sources {
        config_file: cli.config,
        profile: cli.profile,
        port: cli.port,
        bind: cli.bind,
        data_dir: cli.data_dir,
    };
    let config = match AppConfig::load(&sources) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("bitark: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::Backup {
        action: Some(BackupAction::Prune { target, keep_full, keep_wal, dry_run }), ..
    }) = cli.command
    {
        let retention = &config.engine.backup.retention;
        let Some(target) =
            target.or_else(|| Some(config.engine.backup.archive.target.clone()).filter(|t| !t.is_empty()))
        else {
            eprintln!("bitark backup prune: give the target (backup.archive.target is not set)");
            return ExitCode::from(2);
        };
        let plan = bitark_adapter::backups::PrunePlan {
            target,
            keep_full: keep_full.unwrap_or(retention.keep_full),
            keep_wal: keep_wal.unwrap_or(retention.keep_wal),
            dry_run,
        };
        return offline("backup prune", bitark_adapter::backups::prune(plan, say));
    }
    let etcd_place = |etcd: &EtcdArgs| bitark_adapter::shards::Place {
        endpoints: if etcd.endpoints.is_empty() {
            config.engine.coordination.etcd.endpoints.clone()
        } else {
            etcd.endpoints.clone()
        },
        prefix: etcd.prefix.clone().unwrap_or_else(|| config.engine.coordination.etcd.prefix.clone()),
        timeout: config.engine.coordination.etcd.timeout.max(std::time::Duration::from_secs(2)),
        admin_token: config.security.admin_token.expose().map(str::to_string),
    };
    if let Some(Command::Shards { action, etcd }) = &cli.command {
        use bitark_adapter::shards::Action;
        let action = match action {
            ShardsAction::Init { groups } => Action::Init { groups: groups.clone() },
            ShardsAction::Show { json } => Action::Show { json: *json },
            ShardsAction::Assign { range, group, expect_version } => {
                Action::Assign { range: range.clone(), group: group.clone(), expect_version: *expect_version }
            }
            ShardsAction::Split { range, at, expect_version } => {
                Action::Split { range: range.clone(), at: at.clone(), expect_version: *expect_version }
            }
            ShardsAction::Move { range, to, pause } => {
                Action::Move { range: range.clone(), to: to.clone(), options: pause.options() }
            }
            ShardsAction::Rollback { range, pause } => {
                Action::Rollback { range: range.clone(), options: pause.options() }
            }
            ShardsAction::Abort { range } => Action::Abort { range: range.clone() },
            ShardsAction::Status => Action::Status,
        };
        let place = etcd_place(etcd);
        return offline("shards", async move { bitark_adapter::shards::run(place, action, say).await });
    }
    if let Some(Command::Router { etcd, failover_wait, node_timeout, frozen_hold, node_pipelines }) = &cli.command {
        init_logging(&config.logging);
        raise_open_files_limit();
        let options = bitark_adapter::router::RouterOptions {
            place: etcd_place(etcd),
            failover_wait: *failover_wait,
            node_timeout: *node_timeout,
            frozen_hold: *frozen_hold,
            pipelines: *node_pipelines,
            refresh: config.engine.cluster.refresh,
            limits: bitark_adapter::server::Limits::of(&config.server, 2),
            drain: config.server.shutdown_timeout,
        };
        let addr = SocketAddr::new(config.server.bind, config.server.port);
        return serve_router(addr, options);
    }
    if let Some(Command::Config) = cli.command {
        println!("{}", serde_json::to_string_pretty(&config).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    let set_log_level = init_logging(&config.logging);
    raise_open_files_limit();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bitark: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let reloader = Reloader::new(sources, set_log_level);
    match runtime.block_on(serve(config, reloader)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("bitark: {e}");
            ExitCode::FAILURE
        }
    }
}

fn say(line: &str) {
    println!("{line}");
}

/// Connections, log segments and snapshots all take descriptors: use what is allowed.
fn raise_open_files_limit() {
    match bitark_infra::process::raise_open_files_limit() {
        Ok((before, (soft, hard))) if before < soft => {
            tracing::info!(from = before, to = soft, hard, "raised the open-files limit to its hard limit")
        }
        Ok((_, (soft, hard))) => tracing::info!(soft, hard, "open-files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-files limit"),
    }
}

/// Runs a command that needs no server of its own to the end.
fn offline<E: std::fmt::Display>(name: &str, work: impl std::future::Future<Output = Result<(), E>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bitark {name}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(work) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bitark {name}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve_router(addr: SocketAddr, options: bitark_adapter::router::RouterOptions) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bitark router: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let served = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let shutdown = async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        bitark_adapter::router::run(listener, options, shutdown).await
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bitark router: {e}");
            ExitCode::FAILURE
        }
    }
}

fn rollout(plan: bitark_adapter::rollout::Plan) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bitark: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bitark_adapter::rollout::run(plan, |line| println!("{line}"))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bitark rollout: stopped: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `logging.level` (or `BITARK_LOG`) and `logging.format`, to stderr. Answers what
/// changes the levels of the running process, unless `BITARK_LOG` pins them.
fn init_logging(logging: &LoggingConfig) -> Option<SetLogLevel> {
    let pinned = tracing_subscriber::EnvFilter::try_from_env("BITARK_LOG").ok();
    let by_config = pinned.is_none();
    let filter = pinned.unwrap_or_else(|| tracing_subscriber::EnvFilter::new(&logging.level));
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter);
    fn setter<S: 'static>(handle: tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, S>) -> SetLogLevel {
        Box::new(move |level: &str| {
            let filter = tracing_subscriber::EnvFilter::try_new(level)?;
            Ok(handle.reload(filter)?)
        })
    }
    let set = match logging.format {
        LogFormat::Json => {
            let builder = builder.json().with_current_span(true).with_span_list(false).with_filter_reloading();
            let set = setter(builder.reload_handle());
            builder.init();
            set
        }
        LogFormat::Text => {
            let builder = builder.with_ansi(std::io::stderr().is_terminal()).with_filter_reloading();
            let set = setter(builder.reload_handle());
            builder.init();
            set
        }
    };
    by_config.then_some(set)
}

async fn serve(config: AppConfig, reloader: Reloader) -> Result<(), Box<dyn std::error::Error>> {
    let addr = SocketAddr::new(config.server.bind, config.server.port);
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    tracing::info!(
        node = %config.engine.node.id,
        data_dir = %config.engine.node.data_dir.display(),
        fsync = ?config.engine.wal.fsync,
        "listening on http://{}",
        listener.local_addr()?
    );
    let management = match config.management.server.port {
        Some(port) => {
            let addr = SocketAddr::new(config.management.server.bind.unwrap_or(config.server.bind), port);
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("management.server: cannot listen on {addr}: {e}"))?;
            tracing::info!("management (actuator, admin) listening on http://{}", listener.local_addr()?);
            Some(listener)
        }
        None => None,
    };
    bitark_adapter::run(listener, management, config, Some(reloader), shutdown_signal()).await?;
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
