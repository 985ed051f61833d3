//! Nodes under automatic failover (`replication.features.failover`), as real `bitark`
//! processes around a real etcd, each wired through [`Proxy`]s:
//!
//! ```text
//!   node-i ──▶ to_etcd[i] ──▶ etcd
//!   peers  ──▶ inbound[i] ──▶ node-i      (node-i's replication.self-url)
//! ```
//!
//! Cutting `to_etcd[i]` parts node i from etcd; cutting `inbound[i]` parts it from the
//! peers that would reach it. Every node starts as a slave of nobody: the election
//! names the master. `nodes[i]` is `node-{i + 1}`.

use super::cluster::{quick, CLUSTER_TOKEN};
use super::epochs::{mark, Acked};
use super::etcd::Etcd;
use super::proxy::{Mode, Proxy};
use super::{poll_until, Node, NodeBuilder};
use reqwest::StatusCode;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest an election may take in these tests: far above the failover target, so a
/// slow machine does not fail them.
pub const ELECT_WITHIN: Duration = Duration::from_secs(30);

pub fn node_id(index: usize) -> String {
    format!("node-{}", index + 1)
}

pub struct Failover {
    pub etcd: Etcd,
    pub nodes: Vec<Node>,
    pub inbound: Vec<Proxy>,
    pub to_etcd: Vec<Proxy>,
}

/// Fast registration, retries and DEAD detection, and the failover settings.
fn configure(builder: NodeBuilder, index: usize, inbound: &Proxy, to_etcd: &Proxy) -> NodeBuilder {
    quick(builder)
        .env("BITARK_NODE__ID", node_id(index))
        .env("BITARK_NODE__ROLE", "slave")
        .env("BITARK_SECURITY__CLUSTER_TOKEN", CLUSTER_TOKEN)
        .env("BITARK_REPLICATION__STAGE", "7")
        .env("BITARK_REPLICATION__FEATURES__FAILOVER", "true")
        .env("BITARK_REPLICATION__SELF_URL", inbound.url())
        .env("BITARK_COORDINATION__ETCD__ENDPOINTS", format!("[\"{}\"]", to_etcd.url()))
        .env("BITARK_COORDINATION__ETCD__PREFIX", "/bitark-test")
}

impl Failover {
    /// Starts etcd and `count` nodes; `adjust(i, builder)` may add settings to node i.
    /// Waits until one of them is elected. `None` when etcd is not installed (the test
    /// is skipped; see [`super::etcd::available`]).
    pub async fn start(count: usize, adjust: impl Fn(usize, NodeBuilder) -> NodeBuilder) -> Option<Failover> {
        if !super::etcd::available() {
            return None;
        }
        let etcd = Etcd::start().await;
        let mut cluster = Failover { etcd, nodes: Vec::new(), inbound: Vec::new(), to_etcd: Vec::new() };
        for index in 0..count {
            let (inbound, to_etcd) = (Proxy::start().await, Proxy::start().await);
            to_etcd.set_upstream(cluster.etcd.addr());
            let builder = adjust(index, configure(Node::builder(), index, &inbound, &to_etcd));
            let mut node = builder.spawn();
            inbound.set_upstream(node.wait_listening().await);
            cluster.nodes.push(node);
            cluster.inbound.push(inbound);
            cluster.to_etcd.push(to_etcd);
        }
        cluster.master(ELECT_WITHIN, None).await;
        Some(cluster)
    }

    /// Waits until a node other than `not` is master holding the leader lease, and
    /// answers its index.
    pub async fn master(&self, timeout: Duration, not: Option<usize>) -> usize {
        let mut found = None;
        let elected = poll_until(timeout, async || {
            for (index, node) in self.nodes.iter().enumerate() {
                if Some(index) == not || node.addr().is_none() {
                    continue;
                }
                if let Ok(status) = node.api().replication_status().await {
                    if status["role"] == "master" && status["coordination"]["leading"] == true {
                        found = Some(index);
                        return true;
                    }
                }
            }
            false
        })
        .await;
        assert!(elected, "no master was elected within {timeout:?}:\n{}", self.report().await);
        found.expect("elected")
    }

    /// Restarts node `index` (stopped or killed) on its data directory.
    pub async fn respawn(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        node.respawn();
        self.inbound[index].set_upstream(node.wait_listening().await);
    }

    /// Stops node `index` gracefully and starts it again with `key=value` set.
    pub async fn restart_with(&mut self, index: usize, key: &str, value: &str) {
        let node = &mut self.nodes[index];
        node.stop().await;
        node.set_env(key, value);
        self.respawn(index).await;
    }

    /// Sets every inbound proxy to `mode`: with [`Mode::Cut`] no node reaches another.
    pub fn set_inbound(&self, mode: Mode) {
        for proxy in &self.inbound {
            proxy.set_mode(mode);
        }
    }

    /// Each node's `/actuator/replication`, for a failure message.
    pub async fn report(&self) -> String {
        let mut out = String::new();
        for (index, node) in self.nodes.iter().enumerate() {
            let status = match node.addr() {
                Some(_) => node.api().replication_status().await.map_or_else(|e| e.to_string(), |v| v.to_string()),
                None => "not listening".into(),
            };
            out += &format!("{}: {status}\n", node_id(index));
        }
        out
    }
}

/// One acknowledged write, with the node that took it and when its answer came.
#[derive(Clone, Debug)]
pub struct Taken {
    pub node: usize,
    pub acked: Acked,
    pub at: Instant,
}

/// Writers, one per node, each marking its own user's next message over and over
/// until stopped; every acknowledgement is kept.
pub struct Writers {
    stop: Arc<AtomicBool>,
    taken: Arc<Mutex<Vec<Taken>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    /// Starts a writer against each running node, with `query` on each write
    /// (`?ack=all`, or empty).
    pub fn start(cluster: &Failover, query: &'static str) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let taken = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (index, node) in cluster.nodes.iter().enumerate() {
            let Some(addr) = node.addr() else { continue };
            let (stop, taken) = (stop.clone(), taken.clone());
            let url = format!("http://{addr}");
            tasks.push(tokio::spawn(async move {
                let user = 1000 + index as u64;
                let mut msg = 0u64;
                while !stop.load(Ordering::Acquire) {
                    msg += 1;
                    match mark_at(&url, user, msg, query).await {
                        Some(acked) => taken.lock().unwrap().push(Taken { node: index, acked, at: Instant::now() }),
                        // Refused or unreachable: pace the retries (not a synchronisation).
                        None => tokio::time::sleep(Duration::from_millis(5)).await,
                    }
                }
            }));
        }
        Writers { stop, taken, tasks }
    }

    /// Everything acknowledged so far.
    pub fn taken(&self) -> Vec<Taken> {
        self.taken.lock().unwrap().clone()
    }

    /// Waits until `node` has acknowledged `count` writes in an epoch above `above`.
    pub async fn wait_for(&self, node: usize, above: u64, count: usize) {
        let done = poll_until(Duration::from_secs(30), async || {
            self.taken().iter().filter(|t| t.node == node && t.acked.epoch > above).count() >= count
        })
        .await;
        assert!(done, "{} did not acknowledge {count} writes in an epoch above {above}", node_id(node));
    }

    /// Stops every writer and answers what they got acknowledged.
    pub async fn stop(self) -> Vec<Taken> {
        self.stop.store(true, Ordering::Release);
        for task in self.tasks {
            let _ = task.await;
        }
        self.taken.lock().unwrap().clone()
    }
}

async fn mark_at(node: &str, user: u64, msg: u64, query: &str) -> Option<Acked> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().ok()?;
    let url = format!("{node}/api/v1/users/{user}/reads/{msg}{query}");
    let response = client.put(&url).send().await.ok()?;
    if response.status() != StatusCode::OK {
        return None;
    }
    let body: Value = response.json().await.ok()?;
    let (lsn, epoch) = (body["lsn"].as_u64()?, body["epoch"].as_u64()?);
    Some(Acked { user, msg, lsn, epoch, token: body["token"].as_str()?.to_string() })
}

/// No epoch had writes acknowledged by two nodes.
pub fn assert_one_writer_per_epoch(taken: &[Taken]) {
    let mut by_epoch: std::collections::BTreeMap<u64, std::collections::BTreeSet<usize>> = Default::default();
    for t in taken {
        by_epoch.entry(t.acked.epoch).or_default().insert(t.node);
    }
    for (epoch, nodes) in &by_epoch {
        assert_eq!(nodes.len(), 1, "epoch {epoch} had writes acknowledged by nodes {nodes:?}");
    }
}

/// Marks `msgs` of `user` on `node` one by one (panics on a refusal).
pub async fn write_some(node: &Node, user: u64, msgs: std::ops::Range<u64>) -> Vec<Acked> {
    let mut out = Vec::new();
    for msg in msgs {
        out.push(mark(node, user, msg, "").await.unwrap_or_else(|e| panic!("write {user}/{msg}: {e:?}")));
    }
    out
}
