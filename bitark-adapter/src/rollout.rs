//! `bitark rollout`: moves a running cluster to another roadmap stage, node by node,
//! through `PUT /admin/replication/features`, with no restart.
//!
//! The slaves come from the master's `/actuator/replication`. Raising, each step goes to
//! the slaves first and then to the master; lowering, to the master first: a link always
//! runs the flags both of its ends have, so traffic keeps flowing at every step. After
//! each step the master must show every slave ALIVE at the step's flags; a step that does
//! not converge in time aborts the rollout, saying where it stopped.

use bitark_common::replication::Features;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// What to roll, and how.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The master's base URL.
    pub cluster: String,
    pub to_stage: f64,
    /// The admin token, when the nodes have one.
    pub token: Option<String>,
    /// Pause after each converged step.
    pub step_pause: Duration,
    /// Longest a step may take to converge.
    pub step_timeout: Duration,
    /// When the nodes serve `/actuator` and `/admin` on a port of their own
    /// (`management.server.port`): that port, on the host of each slave's URL. `cluster`
    /// is then the master's management URL.
    pub management_port: Option<u16>,
}

/// Where `/actuator` and `/admin` of the node at `url` are: `url` itself, or the same
/// host on `management_port`.
pub fn management_url(url: &str, management_port: Option<u16>) -> Result<String, RolloutError> {
    let Some(port) = management_port else { return Ok(url.to_string()) };
    let mut parsed =
        reqwest::Url::parse(url).map_err(|e| RolloutError::NotAUrl { url: url.to_string(), source: Box::new(e) })?;
    parsed.set_port(Some(port)).map_err(|()| RolloutError::NoPort { url: url.to_string() })?;
    Ok(parsed.as_str().trim_end_matches('/').to_string())
}

/// Why a rollout stopped.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("{0} is not a stage; use one of {1}")]
    NoSuchStage(f64, String),
    #[error("{url}: {message}")]
    Node { url: String, message: String },
    #[error("stage {stage} did not converge within {timeout:?}: {detail}")]
    NotConverged { stage: f64, timeout: Duration, detail: String },
    /// A node's URL (from `--cluster` or the master's list of slaves) does not parse.
    #[error("{url}: `{url}` is not a URL: {source}")]
    NotAUrl {
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A node's URL cannot take `--management-port` (it has no host).
    #[error("{url}: `{url}` cannot take a port")]
    NoPort { url: String },
}

/// The stages from `from` to `to`, both included, in the order they are taken.
pub fn steps(from: f64, to: f64) -> Vec<f64> {
    let stages: Vec<f64> = Features::STAGES.iter().map(|(s, _)| *s).collect();
    let mut out: Vec<f64> = if to >= from {
        stages.into_iter().filter(|s| *s > from && *s <= to).collect()
    } else {
        stages.into_iter().rev().filter(|s| *s < from && *s >= to).collect()
    };
    out.dedup();
    out
}

struct Cluster {
    http: reqwest::Client,
    plan: Plan,
}

impl Cluster {
    fn node_error(url: &str, message: impl ToString) -> RolloutError {
        RolloutError::Node { url: url.to_string(), message: message.to_string() }
    }

    async fn status(&self, url: &str) -> Result<Value, RolloutError> {
        let response =
            self.http.get(format!("{url}/actuator/replication")).send().await.map_err(|e| Self::node_error(url, e))?;
        if !response.status().is_success() {
            return Err(Self::node_error(url, format!("/actuator/replication answered {}", response.status())));
        }
        response.json().await.map_err(|e| Self::node_error(url, e))
    }

    async fn set_stage(&self, url: &str, stage: f64) -> Result<Value, RolloutError> {
        let mut request =
            self.http.put(format!("{url}/admin/replication/features")).json(&json!({ "stage": stage.to_string() }));
        if let Some(token) = &self.plan.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| Self::node_error(url, e))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            return Err(Self::node_error(url, format!("refused ({status}): {}", body["message"])));
        }
        Ok(body)
    }

    /// Why the cluster is not yet at `stage` on every node and link, or `None`.
    async fn unconverged(&self, slaves: &[(String, String)], stage: f64) -> Result<Option<String>, RolloutError> {
        let want = serde_json::to_value(stage_features(stage)).expect("flags serialize");
        let master = self.status(&self.plan.cluster).await?;
        let mut why = String::new();
        if master["features"] != want {
            let _ = write!(why, "master runs {}; ", master["features"]);
        }
        for (url, admin) in slaves {
            let status = self.status(admin).await?;
            if status["features"] != want {
                let _ = write!(why, "{url} runs {}; ", status["features"]);
            }
            let link = master["slaves"].as_array().and_then(|links| links.iter().find(|l| l["url"] == url.as_str()));
            match link {
                Some(link) if link["state"] == "ALIVE" && link["features"] == want => {}
                Some(link) => {
                    let _ = write!(why, "link to {url} is {} at {}; ", link["state"], link["features"]);
                }
                None => {
                    let _ = write!(why, "the master does not list {url}; ");
                }
            }
        }
        Ok((!why.is_empty()).then_some(why))
    }
}

/// The flags of `stage` (failover is never part of a stage).
fn stage_features(stage: f64) -> Features {
    Features::up_to_stage(stage).unwrap_or_default()
}

/// Runs the rollout, printing each step with `say`.
pub async fn run(plan: Plan, mut say: impl FnMut(&str)) -> Result<(), RolloutError> {
    if Features::up_to_stage(plan.to_stage).is_none() {
        let stages: Vec<String> = Features::STAGES.iter().map(|(s, _)| s.to_string()).collect();
        return Err(RolloutError::NoSuchStage(plan.to_stage, stages.join(", ")));
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| Cluster::node_error(&plan.cluster, e))?;
    let cluster = Cluster { http, plan: Plan { cluster: plan.cluster.trim_end_matches('/').to_string(), ..plan } };
    let plan = &cluster.plan;
    let master = cluster.status(&plan.cluster).await?;
    if master["role"] != "master" {
        return Err(Cluster::node_error(&plan.cluster, "is not a master; point --cluster at the master"));
    }
    let from = serde_json::from_value::<Features>(master["features"].clone())
        .map_err(|e| Cluster::node_error(&plan.cluster, format!("unreadable flags: {e}")))?
        .stage();
    let mut slaves: Vec<(String, String)> = Vec::new();
    for url in master["slaves"].as_array().into_iter().flatten().filter_map(|l| l["url"].as_str()) {
        let admin = management_url(url, plan.management_port)?;
        slaves.push((url.to_string(), admin));
    }
    say(&format!(
        "cluster at stage {from} (master {}, {} slaves); rolling to stage {}",
        plan.cluster,
        slaves.len(),
        plan.to_stage
    ));
    let raising = plan.to_stage > from;
    for stage in steps(from, plan.to_stage) {
        let mut order: Vec<&str> = slaves.iter().map(|(_, admin)| admin.as_str()).collect();
        if raising {
            order.push(&plan.cluster);
        } else {
            order.insert(0, &plan.cluster);
        }
        for url in &order {
            cluster.set_stage(url, stage).await?;
            say(&format!("  stage {stage}: {url} set"));
        }
        let started = Instant::now();
        loop {
            match cluster.unconverged(&slaves, stage).await? {
                None => break,
                Some(detail) if started.elapsed() >= plan.step_timeout => {
                    return Err(RolloutError::NotConverged { stage, timeout: plan.step_timeout, detail });
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        say(&format!("stage {stage}: every node and link converged in {:?}", started.elapsed()));
        if stage != plan.to_stage {
            tokio::time::sleep(plan.step_pause).await;
        }
    }
    say(&format!("cluster at stage {}", plan.to_stage));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rollout_takes_every_stage_between_in_order_either_way() {
        assert_eq!(steps(1.0, 3.0), vec![2.0, 2.5, 3.0]);
        assert_eq!(steps(7.0, 5.0), vec![6.0, 5.0]);
        assert_eq!(steps(3.0, 3.0), Vec::<f64>::new());
        assert_eq!(steps(0.0, 1.0), vec![1.0]);
    }

    #[test]
    fn the_management_port_replaces_the_port_of_each_slave_url() {
        assert_eq!(management_url("http://10.0.0.2:8080", None).unwrap(), "http://10.0.0.2:8080");
        assert_eq!(management_url("http://10.0.0.2:8080", Some(9090)).unwrap(), "http://10.0.0.2:9090");
        assert_eq!(management_url("https://node-3.internal/", Some(9090)).unwrap(), "https://node-3.internal:9090");
        assert!(management_url("not a url", Some(9090)).is_err());
    }
}
