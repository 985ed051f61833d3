//! The monitoring kit in `ops/`: the Grafana dashboard and the Prometheus alert rules.
//!
//! - Read as files: every dashboard panel queries the `datasource` variable and keeps to
//!   the instances of the `instance` variable, and every metric the dashboard and the
//!   rules name is a family `bitark-infra/src/metrics/` (a node's) or
//!   `bitark-adapter/src/router/metrics.rs` (a router's) registers.
//! - Against a real Prometheus (Debian's `prometheus`) that scrapes a master and a slave
//!   every second, and, where etcd is installed, a node under failover and two sharded
//!   groups with a router in front, and loads `ops/prometheus/alerts.yml`: once traffic
//!   has gone through, every dashboard query returns data, the rules load, and every
//!   alert expression evaluates. A renamed metric or label therefore fails here.
//!
//! Without `prometheus` the live test is skipped, loudly, unless
//! `TESTS_REQUIRE_PROMETHEUS` is set (as `.ci/run` does).

mod support;

use reqwest::StatusCode;
use serde_json::Value;
use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::cluster::{Cluster, Role, CONVERGE_WITHIN};
use support::failover::Failover;
use support::proxy::Mode;
use support::sharded::Sharded;
use support::{counter, poll_until, wait_until, CallError, Node, NodeBuilder, PROCESS_TIMEOUT};
use tempfile::TempDir;

/// Set (as `.ci/run` does) to fail, rather than skip, the live test when Prometheus is
/// not installed.
const REQUIRE: &str = "TESTS_REQUIRE_PROMETHEUS";

/// Families that only have series on a node under failover (they count etcd calls):
/// without etcd, no node of the test runs failover and their panels stay empty.
const FAILOVER_ONLY: [&str; 2] = ["bitark_coordination_lease_renewals_total", "bitark_coordination_elections_total"];

/// Prefixes of the sharding families: a router's, and a sharded node's ownership and
/// refusals. Without etcd no group and no router runs, so the router's series and the
/// refusals do not exist, and the shard panels, which keep to the nodes that serve an
/// ownership, may stay empty.
const SHARDED_ONLY: [&str; 2] = ["bitark_shard_", "bitark_router_"];

/// The router's families, beside the nodes' in `bitark-infra/src/metrics/`.
const ROUTER_METRICS: &str = "src/router/metrics.rs";

/// `limits.max-marks-per-user` of the test cluster, so that one write can be refused.
const MARK_LIMIT: u64 = 1000;

/// Longest Prometheus may take to scrape what the traffic left in every family.
const SCRAPED_WITHIN: Duration = Duration::from_secs(30);

fn ops_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../ops").join(relative)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn dashboard() -> Value {
    let path = ops_path("grafana/bitark-dashboard.json");
    serde_json::from_str(&read(&path)).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// The `instance` variable's query, `label_values(<series selector>, instance)`.
fn instance_definition(dashboard: &Value) -> &str {
    let mut variables = dashboard["templating"]["list"].as_array().into_iter().flatten();
    let instance = variables.find(|v| v["name"] == "instance").expect("an `instance` variable");
    instance["definition"].as_str().expect("the `instance` variable has a definition")
}

fn alert_rules_text() -> String {
    read(&ops_path("prometheus/alerts.yml"))
}

/// The panels of the dashboard, rows left out, those inside collapsed rows included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn collect<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in list.as_array().into_iter().flatten() {
            if panel["type"] == "row" {
                collect(&panel["panels"], out);
            } else {
                out.push(panel);
            }
        }
    }
    let mut out = Vec::new();
    collect(&dashboard["panels"], &mut out);
    out
}

/// One PromQL expression of a panel, as the dashboard holds it.
struct Query {
    panel: String,
    expr: String,
}

fn queries(dashboard: &Value) -> Vec<Query> {
    let mut out = Vec::new();
    for panel in panels(dashboard) {
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_else(|| panic!("a target of `{title}` has no expr"));
            out.push(Query { panel: title.to_owned(), expr: expr.to_owned() });
        }
    }
    out
}

/// The metric names in `text`: each `bitark_…` word.
fn metric_names(text: &str) -> Vec<&str> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("bitark_") {
        let preceded = rest[..start].chars().next_back().is_some_and(word);
        let tail = &rest[start..];
        let len = tail.find(|c: char| !word(c)).unwrap_or(tail.len());
        if !preceded {
            names.push(&tail[..len]);
        }
        rest = &tail[len..];
    }
    names
}

/// The matchers between the braces that follow each `bitark_…` name of `expr`; `None`
/// for a name with no braces.
fn selectors(expr: &str) -> Vec<(&str, Option<&str>)> {
    metric_names(expr)
        .into_iter()
        .scan(0, |from, name| {
            let at = *from + expr[*from..].find(name).expect("the name is in the expression");
            *from = at + name.len();
            let after = &expr[*from..];
            let matchers = after.strip_prefix('{').and_then(|inner| inner.find('}').map(|end| &inner[..end]));
            Some((name, matchers))
        })
        .collect()
}

/// Whether `name` is a family of [`SHARDED_ONLY`].
fn sharded_only(name: &str) -> bool {
    SHARDED_ONLY.iter().any(|prefix| name.starts_with(prefix))
}

/// Every sample name the families in `bitark-infra/src/metrics/` (each of its files
/// defines the families of one subsystem of a node) and in [`ROUTER_METRICS`] export:
/// each registered name, and for a histogram its `_bucket`, `_sum` and `_count` series.
fn registered_names() -> BTreeSet<String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bitark-infra/src/metrics");
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    let mut sources: Vec<PathBuf> = entries
        .map(|entry| entry.unwrap_or_else(|e| panic!("read {}: {e}", dir.display())).path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "rs"))
        .collect();
    sources.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(ROUTER_METRICS));
    let mut names = BTreeSet::new();
    for path in sources {
        let source = read(&path);
        for (at, _) in source.match_indices("\"bitark_") {
            let name = &source[at + 1..];
            let name = &name[..name.find('"').expect("a closed string literal")];
            let before = source[..at].trim_end();
            if before.ends_with("histogram(") || before.ends_with("HistogramOpts::new(") {
                names.extend(["_bucket", "_sum", "_count"].map(|suffix| format!("{name}{suffix}")));
            } else {
                names.insert(name.to_owned());
            }
        }
    }
    assert!(names.len() > 50, "found only {} metric names in {}", names.len(), dir.display());
    assert!(names.contains("bitark_router_map_version"), "no router family found in {ROUTER_METRICS}");
    names
}

/// Each alert rule's name, in file order.
fn alert_names(rules: &str) -> Vec<String> {
    rules.lines().filter_map(|line| line.trim().strip_prefix("- alert:")).map(|name| name.trim().to_owned()).collect()
}

/// `expr` with the dashboard variables replaced as Grafana would for every node: all
/// nodes for `$instance`, one minute for `$__rate_interval`.
fn substitute(expr: &str) -> String {
    let mut out = expr.to_owned();
    for (variable, value) in [
        ("${instance}", ".*"),
        ("$instance", ".*"),
        ("${__rate_interval}", "1m"),
        ("$__rate_interval", "1m"),
        ("${__interval}", "5s"),
        ("$__interval", "5s"),
        ("${__range}", "1h"),
        ("$__range", "1h"),
    ] {
        out = out.replace(variable, value);
    }
    assert!(!out.contains('$'), "`{expr}` uses a variable the dashboard does not define");
    out
}

#[test]
fn every_dashboard_panel_queries_the_chosen_data_source_and_keeps_to_the_chosen_nodes() {
    let dashboard = dashboard();
    let variables = dashboard["templating"]["list"].as_array().expect("the dashboard has variables");
    let variable =
        |name: &str| variables.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("no `{name}` variable"));
    let datasource = variable("datasource");
    assert_eq!((&datasource["type"], &datasource["query"]), (&Value::from("datasource"), &Value::from("prometheus")));
    let instance = variable("instance");
    assert_eq!(instance["type"], "query");
    assert_eq!(instance["datasource"]["uid"], "${datasource}", "the `instance` variable's data source");
    let definition = instance_definition(&dashboard);
    assert!(
        definition.starts_with("label_values(") && definition.ends_with(", instance)"),
        "the `instance` variable lists the values of `instance`: {definition}"
    );
    let families = metric_names(definition);
    assert!(
        families.iter().any(|n| !sharded_only(n)) && families.iter().any(|n| n.starts_with("bitark_router_")),
        "the `instance` variable lists the instances of a node family and of a router family: {definition}"
    );

    let panels = panels(&dashboard);
    assert!(panels.len() >= 20, "only {} panels", panels.len());
    for panel in panels {
        let title = panel["title"].as_str().expect("every panel has a title");
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "the data source of `{title}`");
        let targets = panel["targets"].as_array().filter(|t| !t.is_empty());
        for target in targets.unwrap_or_else(|| panic!("`{title}` has no query")) {
            assert_eq!(target["datasource"]["uid"], "${datasource}", "the data source of a query of `{title}`");
            let expr = target["expr"].as_str().unwrap_or_else(|| panic!("a query of `{title}` has no expr"));
            let selectors = selectors(expr);
            assert!(!selectors.is_empty(), "`{title}` queries no BitArk metric: {expr}");
            for (name, matchers) in selectors {
                let filtered = matchers.is_some_and(|m| m.split(',').any(|m| m.trim() == "instance=~\"$instance\""));
                assert!(filtered, "`{title}`: {name} is not filtered on instance=~\"$instance\" in {expr}");
            }
        }
    }
}

#[test]
fn the_dashboard_and_the_alert_rules_name_only_metrics_bitark_registers() {
    let registered = registered_names();
    let dashboard = dashboard();
    let mut unknown = Vec::new();
    for query in queries(&dashboard) {
        for name in metric_names(&query.expr) {
            if !registered.contains(name) {
                unknown.push(format!("dashboard panel `{}`: {name}", query.panel));
            }
        }
    }
    let definition = instance_definition(&dashboard);
    unknown.extend(
        metric_names(definition).into_iter().filter(|n| !registered.contains(*n)).map(|n| format!("variable: {n}")),
    );
    let rules = alert_rules_text();
    assert!(alert_names(&rules).len() >= 10, "alerts.yml holds only {:?}", alert_names(&rules));
    unknown.extend(
        metric_names(&rules).into_iter().filter(|n| !registered.contains(*n)).map(|n| format!("alerts.yml: {n}")),
    );
    assert!(
        unknown.is_empty(),
        "names no family of bitark-infra/src/metrics/ or {ROUTER_METRICS} exports:\n{}",
        unknown.join("\n")
    );
}

#[tokio::test]
async fn every_dashboard_query_returns_data_and_every_alert_rule_evaluates_on_prometheus_scraping_a_cluster() {
    if !prometheus_available() {
        return;
    }
    let cluster = Cluster::start_with(1, "6", |role, _, builder| configure(role, builder)).await;
    // A node under failover, for the coordination families; only where etcd runs.
    let failover = Failover::start(1, |_, builder| builder).await;
    // Two groups, each a master, and a router in front; only where etcd runs.
    let sharded = Sharded::start(&["a", "b"], 0).await;
    let router = match &sharded {
        Some(sharded) => Some(sharded.router().await),
        None => None,
    };
    let mut jobs = vec![("bitark".to_owned(), vec![address(&cluster.master), address(&cluster.slaves[0])])];
    if let Some(failover) = &failover {
        jobs.push(("bitark-failover".to_owned(), vec![address(&failover.nodes[0])]));
    } else {
        eprintln!("NOTE: without etcd the {FAILOVER_ONLY:?} panels are not checked for data");
    }
    if let (Some(sharded), Some(router)) = (&sharded, &router) {
        for (name, group) in sharded.names.iter().zip(&sharded.groups) {
            jobs.push((format!("bitark-{name}"), vec![address(&group.master)]));
        }
        jobs.push(("bitark-router".to_owned(), vec![address(router)]));
    } else {
        eprintln!("NOTE: without etcd the shard and router panels and alerts are not checked for data");
    }
    let prometheus = Prometheus::start(&jobs).await;
    let targets: Vec<SocketAddr> = jobs.iter().flat_map(|(_, targets)| targets.clone()).collect();
    wait_until(SCRAPED_WITHIN, "Prometheus to scrape every node", async || {
        let up = prometheus.query("up == 1").await.expect("`up` runs");
        up["result"].as_array().is_some_and(|series| series.len() == targets.len())
    })
    .await;

    drive_traffic(&cluster).await;
    if let (Some(sharded), Some(router)) = (&sharded, &router) {
        drive_sharded_traffic(sharded, router).await;
    }

    // Every dashboard query parses at once; each then returns data once Prometheus has
    // scraped what the traffic did and its rate windows hold two samples.
    let dashboard = dashboard();
    let queries = queries(&dashboard);
    let may_be_empty = |query: &Query| {
        let names = metric_names(&query.expr);
        (failover.is_none() && names.iter().any(|n| FAILOVER_ONLY.contains(n)))
            || (sharded.is_none() && names.iter().any(|n| sharded_only(n)))
    };
    let mut empty = Vec::new();
    let complete = poll_until(SCRAPED_WITHIN, async || {
        empty.clear();
        for query in &queries {
            let expr = substitute(&query.expr);
            match prometheus.query(&expr).await {
                Ok(data) if has_data(&data) => {}
                Ok(_) if may_be_empty(query) => {}
                Ok(_) => empty.push(format!("`{}`: {expr}", query.panel)),
                Err(error) => panic!("the query of `{}` does not run: {error}\n{expr}", query.panel),
            }
        }
        empty.is_empty()
    })
    .await;
    assert!(complete, "dashboard queries without data after {SCRAPED_WITHIN:?}:\n{}", empty.join("\n"));

    // The `instance` variable lists every node and router scraped.
    let definition = instance_definition(&dashboard);
    let selector = definition.strip_prefix("label_values(").and_then(|d| d.strip_suffix(", instance)"));
    let listed = prometheus.instances_of(selector.expect("a series selector")).await;
    for target in &targets {
        assert!(listed.contains(&target.to_string()), "`{definition}` lists {listed:?}, not {target}");
    }

    // The rules load, all of them, and evaluate without error. Each series selector of
    // each rule matched series during the test (those of the sharding families where
    // groups and a router ran): a renamed metric, label or label value would leave an
    // alert that can never fire.
    let names = alert_names(&alert_rules_text());
    let mut rules = Vec::new();
    wait_until(SCRAPED_WITHIN, "every alert rule to be evaluated", async || {
        rules = prometheus.alert_rules().await;
        rules.len() == names.len() && rules.iter().all(|rule| rule["health"] != "unknown")
    })
    .await;
    let loaded: BTreeSet<&str> = rules.iter().filter_map(|rule| rule["name"].as_str()).collect();
    assert_eq!(loaded, names.iter().map(String::as_str).collect(), "the alert rules Prometheus loaded");
    for rule in &rules {
        assert_eq!(rule["health"], "ok", "alert rule {}: {}", rule["name"], rule["lastError"]);
        let expr = rule["query"].as_str().expect("a rule has its query");
        if let Err(error) = prometheus.query(expr).await {
            panic!("the expression of alert {} does not run: {error}\n{expr}", rule["name"]);
        }
        for (name, matchers) in selectors(expr) {
            if sharded.is_none() && sharded_only(name) {
                continue;
            }
            let selector = format!("{name}{{{}}}", matchers.unwrap_or_default());
            let seen = prometheus.query(&format!("last_over_time({selector}[10m])")).await;
            let seen = seen.unwrap_or_else(|error| panic!("alert {}: {selector}: {error}", rule["name"]));
            assert!(has_data(&seen), "alert {}: {selector} matched no series of the cluster\n{expr}", rule["name"]);
        }
    }
}

/// Fast replication, a mark limit to refuse one write against, and on the master one
/// injected full disk: its first write finds no space, and the log recovers by itself.
fn configure(role: Role, builder: NodeBuilder) -> NodeBuilder {
    let builder = builder
        .env("BITARK_LIMITS__MAX_MARKS_PER_USER", MARK_LIMIT)
        .env("BITARK_REPLICATION__REGISTER_INTERVAL", "100ms")
        .env("BITARK_REPLICATION__HEARTBEAT_INTERVAL", "100ms")
        .env("BITARK_REPLICATION__RETRY__INITIAL_BACKOFF", "20ms")
        .env("BITARK_REPLICATION__RETRY__MAX_BACKOFF", "200ms");
    match role {
        Role::Master => builder.env("FAILPOINTS", "wal::before-write=1*return(enospc)"),
        Role::Slave => builder,
    }
}

fn address(node: &Node) -> SocketAddr {
    node.addr().expect("the node listens")
}

/// Writes of every kind, reads on both nodes, a refused and a malformed write, a lost
/// acknowledgement the master retries, and a snapshot on each node.
async fn drive_traffic(cluster: &Cluster) {
    let (master, slave) = (cluster.master.api(), cluster.slaves[0].api());
    wait_until(CONVERGE_WITHIN, "the master's log to take writes after the injected full disk", async || {
        master.mark_read(1, 1).await.is_ok()
    })
    .await;
    let no_space = counter(&cluster.master, "bitark_wal_failures_total", &[("kind", "no_space")]).await;
    // FAILPOINTS works in the `bitark` that `cargo test` builds (bitark-infra's
    // `failpoints` feature); a plain `cargo build` of it leaves the failure out.
    assert_eq!(no_space, 1, "the master's log met the injected full disk once");
    for user in 1..=20 {
        for msg in 1..=5 {
            master.mark_read(user, msg).await.expect("mark");
        }
        master.mark_batch(user, &[100, 101, 102, 103]).await.expect("batch mark");
        master.mark_range(user, 200, 299).await.expect("range mark");
        master.mark_unread(user, 1).await.expect("unmark");
    }
    let refused = master.mark_range(99, 1, MARK_LIMIT + 1).await;
    assert!(matches!(refused, Err(CallError::Status(StatusCode::CONFLICT, _))), "past the mark limit: {refused:?}");
    let malformed = reqwest::Client::new().put(format!("{}/api/v1/users/nobody/reads/1", cluster.master.url())).send();
    assert_eq!(malformed.await.expect("an answer").status(), StatusCode::BAD_REQUEST);

    // One acknowledgement from the slave is lost on its way: the master sends again.
    let proxy = &cluster.proxies[0];
    let mut msg = 1000;
    wait_until(CONVERGE_WITHIN, "the master to retry a send to the slave", async || {
        if proxy.mode() == Mode::Pass {
            proxy.set_mode(Mode::DropNext(1));
        }
        msg += 1;
        master.mark_read(500, msg).await.expect("mark");
        counter(&cluster.master, "bitark_replication_retries_total", &[("slave", "slave-1")]).await > 0
    })
    .await;
    proxy.set_mode(Mode::Pass);
    cluster.wait_for_convergence(CONVERGE_WITHIN).await;

    for api in [&master, &slave] {
        let read = api.check(1, &[1, 2, 100, 250, 999]).await.expect("check");
        assert_eq!(read, [false, true, true, true, false]);
        api.snapshot().await.expect("snapshot");
    }
}

/// Writes and reads of users of both groups through the router, and one write of a user
/// of group a sent straight to group b's master, which refuses it (`wrong_shard`).
async fn drive_sharded_traffic(sharded: &Sharded, router: &Node) {
    let via = router.api();
    for group in 0..sharded.groups.len() {
        for user in sharded.users_of(group, 10) {
            via.mark_read(user, 1).await.expect("a write through the router");
            let read = via.check(user, &[1, 2]).await.expect("a read through the router");
            assert_eq!(read, [true, false], "user {user} through the router");
        }
    }
    let user = sharded.users_of(0, 1)[0];
    let refused = sharded.groups[1].master.api().mark_read(user, 2).await;
    assert!(
        matches!(&refused, Err(CallError::Status(StatusCode::CONFLICT, body)) if body.contains("wrong_shard")),
        "group b's master on a user of group a: {refused:?}"
    );
}

fn prometheus_binary() -> String {
    std::env::var("PROMETHEUS_BIN").unwrap_or_else(|_| "prometheus".into())
}

/// Whether Prometheus can be run here. Without it the live test is skipped, loudly,
/// unless [`REQUIRE`] is set.
fn prometheus_available() -> bool {
    let found = Command::new(prometheus_binary()).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    if found.is_ok_and(|status| status.success()) {
        return true;
    }
    assert!(std::env::var_os(REQUIRE).is_none(), "{REQUIRE} is set but `{}` cannot be run", prometheus_binary());
    eprintln!("SKIPPED: `{}` is not installed (Debian: apt-get install prometheus)", prometheus_binary());
    false
}

/// Whether a query's `data` holds anything: a non-empty vector or matrix, or a scalar.
fn has_data(data: &Value) -> bool {
    match data["result"].as_array() {
        Some(series) => !series.is_empty(),
        None => !data["result"].is_null(),
    }
}

/// A Prometheus process on a free port of 127.0.0.1, scraping `/actuator/prometheus`
/// every second and evaluating `ops/prometheus/alerts.yml` every second; its data in a
/// temporary directory; killed on drop.
struct Prometheus {
    child: Child,
    dir: TempDir,
    url: String,
    http: reqwest::Client,
}

impl Prometheus {
    /// Starts it with one scrape job per `(name, targets)` and waits until it is ready.
    async fn start(jobs: &[(String, Vec<SocketAddr>)]) -> Prometheus {
        let dir = tempfile::tempdir().expect("Prometheus directory");
        let rules = ops_path("prometheus/alerts.yml").canonicalize().expect("alerts.yml");
        let mut config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules:?}\nscrape_configs:\n"
        );
        for (name, targets) in jobs {
            let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
            config.push_str(&format!(
                "  - job_name: {name}\n    metrics_path: /actuator/prometheus\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ));
        }
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config).expect("write prometheus.yml");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("Prometheus log");
        let port = TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("address").port();
        let child = Command::new(prometheus_binary())
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{}`: {e}", prometheus_binary()));
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("HTTP client");
        let mut prometheus = Prometheus { child, dir, url: format!("http://127.0.0.1:{port}"), http };
        let ready = format!("{}/-/ready", prometheus.url);
        let up = poll_until(PROCESS_TIMEOUT, async || {
            if let Some(status) = prometheus.child.try_wait().expect("query the Prometheus process") {
                panic!("Prometheus exited ({status}) before it was ready:\n{}", prometheus.log());
            }
            let answer = prometheus.http.get(&ready).send().await;
            answer.is_ok_and(|response| response.status() == StatusCode::OK)
        })
        .await;
        assert!(up, "Prometheus was not ready within {PROCESS_TIMEOUT:?}:\n{}", prometheus.log());
        prometheus
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/query`: the answer's `data`, or Prometheus' error.
    async fn query(&self, expr: &str) -> Result<Value, String> {
        let answer = self.get("/api/v1/query", &[("query", expr)]).await;
        match answer["status"].as_str() {
            Some("success") => Ok(answer["data"].clone()),
            _ => Err(format!("{}: {}", answer["errorType"], answer["error"])),
        }
    }

    /// The values of the `instance` label on the series `selector` matches.
    async fn instances_of(&self, selector: &str) -> Vec<String> {
        let answer = self.get("/api/v1/label/instance/values", &[("match[]", selector)]).await;
        let values = answer["data"].as_array().unwrap_or_else(|| panic!("label values of {selector}: {answer}"));
        values.iter().filter_map(|value| value.as_str().map(str::to_owned)).collect()
    }

    /// The alerting rules of every group, from `/api/v1/rules`.
    async fn alert_rules(&self) -> Vec<Value> {
        let answer = self.get("/api/v1/rules", &[("type", "alert")]).await;
        let groups = answer["data"]["groups"].as_array().unwrap_or_else(|| panic!("rule groups: {answer}"));
        groups.iter().flat_map(|group| group["rules"].as_array().cloned().unwrap_or_default()).collect()
    }

    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let url = format!("{}{path}", self.url);
        let response = self.http.get(&url).query(query).send().await;
        let response = response.unwrap_or_else(|e| panic!("GET {url}: {e}\n{}", self.log()));
        response.json().await.unwrap_or_else(|e| panic!("GET {url}: not JSON: {e}"))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
