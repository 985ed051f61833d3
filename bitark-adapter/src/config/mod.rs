//! The application configuration, the `@ConfigurationProperties` of BitArk.
//!
//! Sources, later ones overriding earlier ones:
//! 1. the `application.yml` embedded in the binary (the defaults, documented key by key);
//! 2. `./application.yml` if present, or the file given with `--config` (which must exist);
//! 3. `application-{profile}.yml` beside it, for the profile from `--profile` or
//!    `BITARK_PROFILE` (must exist when a profile is asked for);
//! 4. environment variables `BITARK_<SECTION>__<KEY>`, `__` separating levels and `_`
//!    standing for `-` (`BITARK_WAL__SEGMENT_SIZE=16MiB` sets `wal.segment-size`);
//! 5. command-line flags `--port`, `--bind`, `--data-dir`.
//!
//! Each crate owns the structs of its sections and says under which key each sits
//! (`EngineConfig::from_sections` for the engine's); [`AppConfig`] composes them, and
//! `sections.rs` walks the composed tree section by section: to parse it, to know its
//! keys, to describe it in the OpenAPI document. Unknown keys and bad values stop
//! start-up with a message naming the key and the file it came from;
//! [`AppConfig::problems`] then lists every invalid value at once.

mod sections;

use bitark_engine::config::Sections;
use bitark_engine::EngineConfig;
use figment::providers::{Env, Format, Serialized, Yaml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The defaults, compiled in.
pub const EMBEDDED_DEFAULTS: &str = include_str!("../../../application.yml");

/// The whole configuration tree: the adapter's sections around the engine's, all of them
/// at the top level. [`AppConfig::from_sections`] says which key holds which; loading
/// parses the tree through it, section by section, rather than through a `Deserialize` of
/// this struct, which would stop at the first bad section.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct AppConfig {
    pub server: ServerConfig,
    /// The sections the engine declares, each at the top level beside the adapter's.
    #[serde(flatten)]
    pub engine: EngineConfig,
    pub security: SecurityConfig,
    pub management: ManagementConfig,
    pub logging: LoggingConfig,
}

/// `management.*`: where the actuator and admin endpoints listen.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct ManagementConfig {
    pub server: ManagementServerConfig,
}

/// `management.server.*`: a listener of their own for `/actuator/*` and `/admin/*`, as
/// Spring Boot's `management.server.port`; the public port then serves only the API.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct ManagementServerConfig {
    /// TCP port of the management listener (`0` picks a free one); unset serves them on
    /// `server.port`. Default unset.
    pub port: Option<u16>,
    /// Address of the management listener; unset uses `server.bind`. Default unset.
    #[schema(value_type = Option<String>)]
    pub bind: Option<IpAddr>,
}

/// `logging.*`: what is logged, and how.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// Levels per target, `RUST_LOG` style: `info`, or `warn,bitark_engine=debug`. The
    /// `BITARK_LOG` environment variable, when set, wins. Default `info`.
    pub level: String,
    /// `text` (one line per event) or `json` (one JSON object per line). Default `text`.
    pub format: LogFormat,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig { level: "info".into(), format: LogFormat::Text }
    }
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `server.*`: the HTTP listener and what it allows a connection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct ServerConfig {
    /// TCP port; `0` picks a free one. Default `8080`.
    pub port: u16,
    /// Address to listen on. Default `127.0.0.1`.
    #[schema(value_type = String)]
    pub bind: IpAddr,
    /// Longest a graceful shutdown waits for in-flight requests. Default `30s`.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    pub shutdown_timeout: Duration,
    /// Most connections open at once; more are answered 503 and closed. Lowered at
    /// start-up, with a warning, to what the open-files limit leaves after a reserve
    /// for the log, snapshots and replication. Default `4096`, minimum `1`.
    pub max_connections: usize,
    /// Longest from the first byte of a request to the end of its headers; the
    /// connection is closed after it. Default `10s`.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    pub header_read_timeout: Duration,
    /// Longest a connection may stay open without a byte moving either way between
    /// requests; it is closed after it. Default `60s`.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    pub idle_timeout: Duration,
    /// Longest to receive a request once its headers are in, body included; the
    /// request is answered 408 after it. Default `30s`.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    pub request_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            port: 8080,
            bind: IpAddr::from([127, 0, 0, 1]),
            shutdown_timeout: Duration::from_secs(30),
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
        }
    }
}

impl ServerConfig {
    fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.max_connections == 0 {
            out.push("server.max-connections: must be at least 1".to_string());
        }
        for (key, value) in [
            ("server.header-read-timeout", self.header_read_timeout),
            ("server.idle-timeout", self.idle_timeout),
            ("server.request-timeout", self.request_timeout),
        ] {
            if value.is_zero() {
                out.push(format!("{key}: must be greater than zero"));
            }
        }
        out
    }
}

/// `security.*`: bearer tokens. Empty means the endpoints are open.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// Token required by `/admin/*`. Default empty (open; a node bound to a
    /// non-loopback address warns about it at start-up).
    #[schema(value_type = String)]
    pub admin_token: Secret,
    /// Token required by `/internal/*` (replication). A node that replicates refuses to
    /// start without one unless `allow-insecure-cluster` is set. Default empty.
    #[schema(value_type = String)]
    pub cluster_token: Secret,
    /// Lets a node replicate without a cluster token, e.g. on a private test network;
    /// it then warns at every start. Default `false`.
    pub allow_insecure_cluster: bool,
}

/// A secret value: printed and serialized as `******`, never in clear.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value, when one is set.
    pub fn expose(&self) -> Option<&str> {
        (!self.0.is_empty()).then_some(self.0.as_str())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"******\"" })
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.0.is_empty() { "" } else { "******" })
    }
}

/// Where configuration comes from, as given on the command line.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    /// `--config FILE`.
    pub config_file: Option<PathBuf>,
    /// `--profile NAME` or `BITARK_PROFILE`.
    pub profile: Option<String>,
    /// Flag overrides.
    pub port: Option<u16>,
    pub bind: Option<IpAddr>,
    pub data_dir: Option<PathBuf>,
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Problems(Vec<String>),
}

impl AppConfig {
    /// Loads, merges and validates the configuration from every source.
    pub fn load(sources: &Sources) -> Result<AppConfig, ConfigError> {
        Self::load_with_env(sources, Env::prefixed("BITARK_"))
    }

    fn load_with_env(sources: &Sources, env: Env) -> Result<AppConfig, ConfigError> {
        let mut figment = Figment::new().merge(Yaml::string(EMBEDDED_DEFAULTS));
        let base = match &sources.config_file {
            Some(file) if !file.is_file() => return Err(ConfigError::MissingFile(file.clone())),
            Some(file) => Some(file.clone()),
            None => Some(PathBuf::from("application.yml")).filter(|p| p.is_file()),
        };
        if let Some(file) = &base {
            figment = figment.merge(Yaml::file_exact(file));
        }
        if let Some(profile) = sources.profile.as_deref().filter(|p| !p.is_empty()) {
            let dir = base.as_deref().and_then(Path::parent).unwrap_or(Path::new(""));
            let file = dir.join(format!("application-{profile}.yml"));
            if !file.is_file() {
                return Err(ConfigError::MissingFile(file));
            }
            figment = figment.merge(Yaml::file_exact(file));
        }
        let env = env
            .ignore(&["PROFILE", "CONFIG", "LOG"])
            .map(|key| key.as_str().replace("__", ".").replace('_', "-").into())
            .split(".");
        figment = figment.merge(env);
        if let Some(port) = sources.port {
            figment = figment.merge(Serialized::default("server.port", port));
        }
        if let Some(bind) = sources.bind {
            figment = figment.merge(Serialized::default("server.bind", bind.to_string()));
        }
        if let Some(dir) = &sources.data_dir {
            figment = figment.merge(Serialized::default("node.data-dir", dir));
        }
        let problems = match sections::parse(&figment) {
            Ok(config) => match config.problems() {
                problems if problems.is_empty() => return Ok(config),
                problems => problems,
            },
            Err(problems) => problems,
        };
        Err(ConfigError::Problems(problems))
    }

    /// Every section, each taken from `sections` under its key, in the order
    /// `application.yml` documents them: the adapter's here, the engine's where the engine
    /// says.
    fn from_sections(sections: &mut impl Sections) -> AppConfig {
        AppConfig {
            server: sections.section("server"),
            engine: EngineConfig::from_sections(sections),
            security: sections.section("security"),
            management: sections.section("management"),
            logging: sections.section("logging"),
        }
    }

    /// Every invalid value, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut out = self.server.problems();
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.logging.level) {
            out.push(format!("logging.level: `{}` is not a list of levels ({e})", self.logging.level));
        }
        if self.management.server.port.is_some_and(|p| p != 0 && p == self.server.port) {
            out.push("management.server.port: must differ from server.port (leave it unset to share it)".into());
        }
        out.extend(self.engine.problems());
        if self.replicates() && self.security.cluster_token.expose().is_none() && !self.security.allow_insecure_cluster
        {
            out.push(
                "security.cluster-token: a node that replicates needs a cluster token, shared by every node of the \
                 cluster, so that no one else can register as a slave or send a slave log records \
                 (set security.allow-insecure-cluster: true to run without one on a private network)"
                    .into(),
            );
        }
        out
    }

    /// True when this node takes part in replication (a slave, or a master with it on).
    pub fn replicates(&self) -> bool {
        self.engine.node.role == bitark_engine::Role::Slave || self.engine.replication.effective_features().any()
    }

    /// Whether the dotted `key` takes effect on a refresh (`POST /actuator/refresh`,
    /// SIGHUP) without a restart: `logging.level` and the engine's reloadable keys
    /// ([`EngineConfig::RELOADABLE`]). `application.yml` marks each such key
    /// `(reloadable)`.
    pub fn is_reloadable(key: &str) -> bool {
        key == "logging.level" || EngineConfig::is_reloadable(key)
    }

    /// This configuration with the reloadable keys of `new`: what runs after a refresh.
    pub fn with_reloaded(&self, new: &AppConfig) -> AppConfig {
        AppConfig {
            engine: self.engine.with_reloaded(&new.engine),
            logging: LoggingConfig { level: new.logging.level.clone(), ..self.logging.clone() },
            ..self.clone()
        }
    }

    /// Every key whose value differs between `self` and `other`, in dotted form (secrets
    /// compared by value but never shown).
    pub fn differences(&self, other: &AppConfig) -> Vec<(String, serde_json::Value, serde_json::Value)> {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        flatten("", &serde_json::to_value(self).unwrap_or_default(), &mut a);
        flatten("", &serde_json::to_value(other).unwrap_or_default(), &mut b);
        let b: std::collections::BTreeMap<String, serde_json::Value> = b.into_iter().collect();
        let mut out: Vec<_> = a
            .into_iter()
            .filter(|(key, _)| !key.starts_with("security.") || !key.ends_with("-token"))
            .filter_map(|(key, from)| {
                let to = b.get(&key).cloned().unwrap_or(serde_json::Value::Null);
                (from != to).then_some((key, from, to))
            })
            .collect();
        for (key, mine, theirs) in [
            ("security.admin-token", &self.security.admin_token, &other.security.admin_token),
            ("security.cluster-token", &self.security.cluster_token, &other.security.cluster_token),
        ] {
            if mine != theirs {
                out.push((key.to_string(), serde_json::to_value(mine).unwrap_or_default(), "(changed)".into()));
            }
        }
        out.sort_by(|x, y| x.0.cmp(&y.0));
        out
    }
}

/// The leaves of `value` as (dotted key, value); a list is one leaf.
fn flatten(prefix: &str, value: &serde_json::Value, out: &mut Vec<(String, serde_json::Value)>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, inner) in map {
                let dotted = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                flatten(&dotted, inner, out);
            }
        }
        leaf => out.push((prefix.to_string(), leaf.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn no_env() -> Env {
        Env::prefixed("BITARK_TEST_NOTHING_")
    }

    fn load_in(dir: &Path, sources: Sources) -> Result<AppConfig, ConfigError> {
        let mut sources = sources;
        if sources.config_file.is_none() {
            sources.config_file = Some(dir.join("application.yml"));
        }
        AppConfig::load_with_env(&sources, no_env())
    }

    #[test]
    fn embedded_defaults_parse_to_the_documented_defaults() {
        let config = sections::parse(&Figment::new().merge(Yaml::string(EMBEDDED_DEFAULTS))).unwrap();
        let mut expected = AppConfig::default();
        expected.engine.node.data_dir = PathBuf::from("./data");
        assert_eq!(config, expected, "application.yml and the Default impls must agree");
    }

    #[test]
    fn a_bad_log_level_and_a_management_port_equal_to_the_server_port_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = "logging:\n  level: \"info,bitark=loud\"\n  format: json\nmanagement:\n  server:\n    port: 8080\n";
        fs::write(dir.path().join("application.yml"), yaml).unwrap();
        let Err(ConfigError::Problems(found)) = load_in(dir.path(), Sources::default()) else { panic!("accepted") };
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].starts_with("logging.level: `info,bitark=loud`"), "{found:?}");
        assert!(found[1].starts_with("management.server.port: must differ"), "{found:?}");
    }

    #[test]
    fn file_then_profile_then_flags_override_in_order() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("application.yml"), "server:\n  port: 9000\nwal:\n  segment-size: 1MiB\n").unwrap();
        fs::write(dir.path().join("application-prod.yml"), "server:\n  port: 9100\nreads:\n  min-lsn-wait: 250ms\n")
            .unwrap();
        let config = load_in(
            dir.path(),
            Sources { profile: Some("prod".into()), data_dir: Some("/tmp/x".into()), ..Sources::default() },
        )
        .unwrap();
        assert_eq!(config.server.port, 9100);
        assert_eq!(config.engine.wal.segment_size, bytesize::ByteSize::mib(1));
        assert_eq!(config.engine.reads.min_lsn_wait, Duration::from_millis(250));
        assert_eq!(config.engine.node.data_dir, PathBuf::from("/tmp/x"));
        let flagged = load_in(dir.path(), Sources { port: Some(1234), ..Sources::default() }).unwrap();
        assert_eq!(flagged.server.port, 1234);
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail closure returns figment::Error
    fn environment_variables_override_files() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("application.yml"), "server:\n  port: 9000\n").unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("BITARK_ENVTEST_SERVER__PORT", "7000");
            jail.set_env("BITARK_ENVTEST_WAL__SEGMENT_SIZE", "2MiB");
            let sources = Sources { config_file: Some(dir.path().join("application.yml")), ..Sources::default() };
            let config = AppConfig::load_with_env(&sources, Env::prefixed("BITARK_ENVTEST_")).unwrap();
            assert_eq!(config.server.port, 7000);
            assert_eq!(config.engine.wal.segment_size, bytesize::ByteSize::mib(2));
            Ok(())
        });
    }

    #[test]
    fn unknown_key_is_named_with_its_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("application.yml"), "wal:\n  segmnt-size: 1MiB\n").unwrap();
        let err = load_in(dir.path(), Sources::default()).unwrap_err().to_string();
        assert!(err.contains("segmnt-size"), "{err}");
        assert!(err.contains("application.yml"), "{err}");
    }

    #[test]
    fn every_unknown_section_is_named_with_its_file_beside_the_other_problems() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("application.yml"), "servr:\n  port: 1\nwall: {}\nnode:\n  role: boss\n").unwrap();
        let Err(ConfigError::Problems(found)) = load_in(dir.path(), Sources::default()) else { panic!("accepted") };
        assert_eq!(found.len(), 3, "{found:?}");
        for (line, key) in found.iter().zip(["servr:", "wall:", "node.role:"]) {
            assert!(line.starts_with(key) && line.ends_with("application.yml)"), "{found:?}");
        }
        assert!(found[0].contains("`server`, `node`, `wal`"), "the known sections in order: {found:?}");
    }

    #[test]
    fn bad_value_is_named_with_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("application.yml"), "server:\n  port: lots\n").unwrap();
        let err = load_in(dir.path(), Sources::default()).unwrap_err().to_string();
        assert!(err.contains("server.port"), "{err}");
        assert!(err.contains("application.yml"), "{err}");
    }

    #[test]
    fn every_invalid_value_is_listed_together() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("application.yml"),
            "wal:\n  segment-size: 1KiB\nlimits:\n  max-batch: 0\nsnapshot:\n  keep: 0\n",
        )
        .unwrap();
        let err = load_in(dir.path(), Sources::default()).unwrap_err().to_string();
        for key in ["wal.segment-size", "limits.max-batch", "snapshot.keep"] {
            assert!(err.contains(key), "{key} missing from: {err}");
        }
    }

    #[test]
    fn type_errors_and_range_errors_are_listed_together() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("application.yml"),
            "replication:\n  stage: banana\nlimits:\n  max-batch: 0\nserver:\n  port: lots\nsnapshot:\n  keep: 0\n",
        )
        .unwrap();
        let err = load_in(dir.path(), Sources::default()).unwrap_err().to_string();
        for key in ["replication.stage", "server.port", "limits.max-batch", "snapshot.keep", "application.yml"] {
            assert!(err.contains(key), "{key} missing from: {err}");
        }
        // A section that does not parse is not checked with its defaults as well.
        assert_eq!(err.matches("server.").count(), 1, "{err}");
    }

    #[test]
    fn missing_requested_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.yml");
        let err =
            load_in(dir.path(), Sources { config_file: Some(missing.clone()), ..Sources::default() }).unwrap_err();
        assert!(err.to_string().contains("nope.yml"));
        fs::write(dir.path().join("application.yml"), "").unwrap();
        let err = load_in(dir.path(), Sources { profile: Some("qa".into()), ..Sources::default() }).unwrap_err();
        assert!(err.to_string().contains("application-qa.yml"), "{err}");
    }

    /// Every leaf key of `application.yml` with whether its comment says `(reloadable)`.
    fn documented_keys() -> Vec<(String, bool)> {
        let mut stack: Vec<(usize, String)> = Vec::new();
        let (mut out, mut previous) = (Vec::new(), "");
        for line in EMBEDDED_DEFAULTS.lines() {
            let trimmed = line.trim_start();
            let indent = line.len() - trimmed.len();
            if let Some((key, value)) = trimmed.split_once(':').filter(|_| !trimmed.starts_with('#')) {
                while stack.last().is_some_and(|(i, _)| *i >= indent) {
                    stack.pop();
                }
                let dotted = stack.iter().map(|(_, k)| k.as_str()).chain([key]).collect::<Vec<_>>().join(".");
                if value.trim().is_empty() {
                    stack.push((indent, key.to_string()));
                } else {
                    let marked = previous.trim_start().starts_with('#') && previous.contains("(reloadable)");
                    out.push((dotted, marked));
                }
            }
            previous = line;
        }
        out
    }

    #[test]
    fn application_yml_marks_exactly_the_reloadable_keys() {
        let keys = documented_keys();
        assert!(keys.len() > 70, "{keys:?}");
        let wrong: Vec<_> = keys.iter().filter(|(key, marked)| *marked != AppConfig::is_reloadable(key)).collect();
        assert!(
            wrong.is_empty(),
            "marked (reloadable) in application.yml but not reloadable, or the reverse: {wrong:?}"
        );
        // The documented keys are the configuration's keys.
        let mut flattened = Vec::new();
        flatten("", &serde_json::to_value(AppConfig::default()).unwrap(), &mut flattened);
        let mut documented: Vec<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
        let mut actual: Vec<&str> = flattened.iter().map(|(k, _)| k.as_str()).collect();
        documented.sort_unstable();
        actual.sort_unstable();
        assert_eq!(documented, actual);
    }

    #[test]
    fn a_refresh_takes_exactly_the_reloadable_keys() {
        let running = AppConfig::default();
        let mut new = AppConfig::default();
        new.server.port = 9999;
        new.engine.node.id = "other".into();
        new.engine.wal.queue_capacity = 7;
        new.engine.snapshot.keep = 5;
        new.engine.limits.max_batch = 3;
        new.engine.reads.min_lsn_wait = Duration::from_millis(5);
        new.engine.replication.stage = 3.0;
        new.engine.replication.features.failover = true;
        new.engine.replication.master_url = "http://x:1".into();
        new.engine.replication.buffer.max_records = 9;
        new.engine.replication.retry.max_backoff = Duration::from_secs(9);
        new.engine.replication.full_sync.chunk_size = bytesize::ByteSize::mib(1);
        new.engine.replication.max_lag.records = 4;
        new.engine.replication.ack_timeout = Duration::from_secs(1);
        new.engine.replication.request_timeout = Duration::from_secs(1);
        new.engine.coordination.lease_ttl = Duration::from_secs(4);
        new.security.admin_token = Secret::new("s3cret");
        new.logging.level = "debug".into();
        new.logging.format = LogFormat::Json;
        let changed: Vec<String> = running.differences(&new).into_iter().map(|(k, _, _)| k).collect();
        assert_eq!(changed.len(), 19, "{changed:?}");
        let next = running.with_reloaded(&new);
        let left: Vec<String> = next.differences(&new).into_iter().map(|(k, _, _)| k).collect();
        let restart: Vec<String> = changed.iter().filter(|k| !AppConfig::is_reloadable(k)).cloned().collect();
        assert_eq!(left, restart, "what a refresh leaves behind is exactly what needs a restart");
        assert!(restart.contains(&"replication.features.failover".to_string()), "{restart:?}");
        assert!(restart.contains(&"security.admin-token".to_string()), "{restart:?}");
        let shown = serde_json::to_string(&running.differences(&new)).unwrap();
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn secrets_are_masked_in_debug_and_serialized_output() {
        let mut config = AppConfig::default();
        config.security.admin_token = Secret::new("hunter2");
        assert!(!format!("{config:?}").contains("hunter2"));
        assert!(!serde_json::to_string(&config).unwrap().contains("hunter2"));
        assert_eq!(config.security.admin_token.expose(), Some("hunter2"));
    }
}
