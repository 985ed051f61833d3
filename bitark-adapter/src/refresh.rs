//! Refreshing the configuration of a running node: `POST /actuator/refresh` and SIGHUP,
//! the `@RefreshScope` of BitArk.
//!
//! A refresh re-reads every source the node started from (the embedded defaults, the
//! file, the profile, the environment, the command-line flags) and compares the result
//! with the configuration in force, key by key:
//! - an invalid new configuration is refused as a whole, every problem named, and the
//!   running configuration stays;
//! - the reloadable keys ([`AppConfig::is_reloadable`], marked `(reloadable)` in
//!   `application.yml`) take effect at once: the node, its hub or follower and its
//!   background threads read them where they use them, and a change of the replication
//!   flags renegotiates every link as `PUT /admin/replication/features` does;
//! - every other changed key is reported as needing a restart and keeps its running
//!   value.
//!
//! Requests in flight finish under the values they started with.

use crate::app::AppState;
use crate::config::{AppConfig, ConfigError};
use bitark_common::replication::Features;
use serde::Serialize;
use std::time::SystemTime;
use utoipa::ToSchema;

/// One key whose value in the sources differs from the value that was in force.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyChange {
    /// Dotted key, e.g. `limits.max-batch`.
    pub key: String,
    /// The value in force before (secrets masked).
    pub from: serde_json::Value,
    /// The value the sources give now (secrets masked).
    pub to: serde_json::Value,
    /// Whether it took effect without a restart.
    pub reloadable: bool,
}

/// What a refresh found and did.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RefreshReport {
    /// Every key whose value in the sources differs from the value that was in force.
    pub changed: Vec<KeyChange>,
    /// The changed keys now in force.
    pub applied: Vec<String>,
    /// The changed keys that take effect only with a restart; they keep their running
    /// values until then.
    pub restart_required: Vec<String>,
    /// The replication flags in force after the refresh.
    pub features: Features,
    pub message: String,
}

/// Why a refresh changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// The node was started without sources to re-read.
    #[error("this node was not started from configuration sources it can re-read")]
    Unavailable,
    /// The new configuration is invalid (400 `invalid_config`).
    #[error("the new configuration is refused and the running one stays: {}", .0.join("; "))]
    Invalid(Vec<String>),
    /// The node cannot run the new replication flags now (409 `wrong_role`).
    #[error("the new configuration is refused and the running one stays: {0}")]
    Refused(String),
    /// The node is starting, stopping or replacing its state (503).
    #[error("{0}")]
    Busy(String),
}

/// Re-reads every configuration source and puts the reloadable changes in force.
pub async fn refresh(state: &AppState) -> Result<RefreshReport, RefreshError> {
    let outcome = refresh_once(state).await;
    let label = match &outcome {
        Ok(report) if report.applied.is_empty() => "unchanged",
        Ok(_) => "applied",
        Err(_) => "refused",
    };
    state.metrics().config_refreshes.with_label_values(&[label]).inc();
    match &outcome {
        Ok(report) if !report.changed.is_empty() => tracing::warn!(
            applied = ?report.applied,
            restart_required = ?report.restart_required,
            "configuration refreshed"
        ),
        Ok(_) => tracing::info!("configuration refreshed: no key changed"),
        Err(e) => tracing::error!(error = %e, "configuration refresh refused"),
    }
    outcome
}

async fn refresh_once(state: &AppState) -> Result<RefreshReport, RefreshError> {
    let reloader = state.reloader().ok_or(RefreshError::Unavailable)?;
    let _one_at_a_time = reloader.one_at_a_time().await;
    let node = state.node().map_err(|e| RefreshError::Busy(e.to_string()))?.clone();
    let sources = reloader.sources().clone();
    let loaded = tokio::task::spawn_blocking(move || AppConfig::load(&sources))
        .await
        .map_err(|e| RefreshError::Busy(format!("reading the configuration stopped: {e}")))?;
    let new = loaded.map_err(|e| match e {
        ConfigError::Problems(problems) => RefreshError::Invalid(problems),
        other => RefreshError::Invalid(vec![other.to_string()]),
    })?;
    let running = AppConfig::clone(&state.config());
    let next = running.with_reloaded(&new);
    let problems = next.problems();
    if !problems.is_empty() {
        return Err(RefreshError::Invalid(problems));
    }
    let changed: Vec<KeyChange> = running
        .differences(&new)
        .into_iter()
        .map(|(key, from, to)| KeyChange { reloadable: AppConfig::is_reloadable(&key), key, from, to })
        .collect();
    let (applied, restart_required): (Vec<&KeyChange>, Vec<&KeyChange>) = changed.iter().partition(|c| c.reloadable);
    let applied: Vec<String> = applied.into_iter().map(|c| c.key.clone()).collect();
    let restart_required: Vec<String> = restart_required.into_iter().map(|c| c.key.clone()).collect();

    // The flags change only when the configuration's flags changed: an override made
    // with PUT /admin/replication/features stays otherwise.
    let live = node.live_features();
    let configured = next.engine.replication.effective_features();
    let flags = (configured != running.engine.replication.effective_features())
        .then_some(Features { failover: live.features.failover, ..configured });
    node.check_features(flags.unwrap_or(live.features), next.engine.replication.ack)
        .map_err(|e| RefreshError::Refused(e.to_string()))?;

    let before = node.config();
    node.reconfigure(&next.engine);
    if let Some(flags) = flags.filter(|f| *f != live.features) {
        if let Err(e) = crate::roles::change_features(state, flags).await {
            node.reconfigure(&before);
            return Err(match e {
                bitark_engine::RoleError::Busy(message) => RefreshError::Busy(message),
                other => RefreshError::Refused(other.to_string()),
            });
        }
    }
    let mut notes = Vec::new();
    if next.logging.level != running.logging.level {
        match reloader.log_level_setter() {
            Some(set) => {
                if let Err(e) = set(&next.logging.level) {
                    notes.push(format!("logging.level was not applied: {e}"));
                }
            }
            None => notes.push("BITARK_LOG is set and keeps deciding the log levels".into()),
        }
    }
    if !applied.is_empty() {
        state.set_config(next);
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
        state.metrics().config_last_refresh.set(now as i64);
    }
    let mut message = match (applied.len(), restart_required.len()) {
        (0, 0) => "no key changed".to_string(),
        (a, 0) => format!("{a} key(s) in force now"),
        (a, r) => format!(
            "{a} key(s) in force now; {r} need a restart and keep their running values until then: {}",
            restart_required.join(", ")
        ),
    };
    for note in notes {
        message.push_str("; ");
        message.push_str(&note);
    }
    Ok(RefreshReport { changed, applied, restart_required, features: node.features(), message })
}
