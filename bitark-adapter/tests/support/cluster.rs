//! A master and its slaves as real `bitark` processes, wired through [`Proxy`]s so a
//! test can cut, slow down or lose the traffic between them.
//!
//! ```text
//!   slave-1 ─┐                           ┌─ proxies[0] ─▶ slave-1
//!            ├─▶ master_proxy ─▶ master ─┤
//!   slave-2 ─┘                           └─ proxies[1] ─▶ slave-2
//! ```
//!
//! - Every slave's `replication.master-url` is the master proxy, whose URL stays the
//!   same when the master restarts on a new port.
//! - Every slave's `replication.self-url`, the address it registers with the master, is
//!   its own proxy, so the master reaches `slaves[i]` through `proxies[i]`, which is
//!   re-pointed when that slave restarts.
//! - Node ids are `master`, `slave-1`, `slave-2`, …: `slaves[i]` is `slave-{i + 1}`.
//! - Tests talk to each node directly (`node.api()`), not through the proxies.
//! - Every node shares the cluster token [`CLUSTER_TOKEN`].

use super::proxy::Proxy;
use super::{metric, wait_until, Api, Node, NodeBuilder, POLL};
use serde_json::Value;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// What a node is in the cluster, as `node.role` spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Master,
    Slave,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Master => "master",
            Role::Slave => "slave",
        }
    }
}

/// Longest the cluster helpers wait for a state to show.
pub const CONVERGE_WITHIN: Duration = Duration::from_secs(30);

/// The `security.cluster-token` every node of a [`Cluster`] gets unless `configure`
/// sets another.
pub const CLUSTER_TOKEN: &str = "test-cluster-token";

/// Fast registration, retries and DEAD detection, so that each scenario takes seconds.
pub fn quick(builder: NodeBuilder) -> NodeBuilder {
    builder
        .env("BITARK_REPLICATION__REGISTER_INTERVAL", "100ms")
        .env("BITARK_REPLICATION__RETRY__INITIAL_BACKOFF", "20ms")
        .env("BITARK_REPLICATION__RETRY__MAX_BACKOFF", "200ms")
        .env("BITARK_REPLICATION__HEARTBEAT_INTERVAL", "100ms")
        .env("BITARK_REPLICATION__DEAD_AFTER", "1s")
}

/// The id of `slaves[index]`.
pub fn slave_id(index: usize) -> String {
    format!("slave-{}", index + 1)
}

type Configure = Box<dyn FnMut(Role, usize, NodeBuilder) -> NodeBuilder + Send>;

/// How to start a [`Cluster`].
pub struct ClusterBuilder {
    slaves: usize,
    stage: Option<String>,
    configure: Configure,
}

impl ClusterBuilder {
    /// How many slaves. Default none.
    pub fn slaves(mut self, slaves: usize) -> Self {
        self.slaves = slaves;
        self
    }

    /// Sets `replication.stage` on every node (`0`, `1`, `2`, `2.5` or `3`). Default
    /// unset: no `replication.*` key is passed unless `configure` adds one.
    pub fn stage(mut self, stage: &str) -> Self {
        self.stage = Some(stage.to_owned());
        self
    }

    /// Adjusts each node's builder after the cluster's own settings, which it may
    /// override: called with `(Role::Master, 0, ..)` and `(Role::Slave, i, ..)` for
    /// `slaves[i]`.
    pub fn configure(
        mut self,
        configure: impl FnMut(Role, usize, NodeBuilder) -> NodeBuilder + Send + 'static,
    ) -> Self {
        self.configure = Box::new(configure);
        self
    }

    /// Starts the master, then each slave in turn, each ready to serve.
    pub async fn start(mut self) -> Cluster {
        let master_proxy = Proxy::start().await;
        let master = self.node(Role::Master, 0, Node::builder().env("BITARK_NODE__ID", "master"));
        let master = start_behind(master.spawn(), &master_proxy).await;
        let (mut slaves, mut proxies) = (Vec::with_capacity(self.slaves), Vec::with_capacity(self.slaves));
        for index in 0..self.slaves {
            let proxy = Proxy::start().await;
            let slave = Node::builder()
                .env("BITARK_NODE__ID", slave_id(index))
                .env("BITARK_REPLICATION__MASTER_URL", master_proxy.url())
                .env("BITARK_REPLICATION__SELF_URL", proxy.url());
            let slave = self.node(Role::Slave, index, slave);
            slaves.push(start_behind(slave.spawn(), &proxy).await);
            proxies.push(proxy);
        }
        Cluster { master, slaves, proxies, master_proxy }
    }

    fn node(&mut self, role: Role, index: usize, builder: NodeBuilder) -> NodeBuilder {
        let mut builder =
            builder.env("BITARK_NODE__ROLE", role.as_str()).env("BITARK_SECURITY__CLUSTER_TOKEN", CLUSTER_TOKEN);
        if let Some(stage) = &self.stage {
            builder = builder.env("BITARK_REPLICATION__STAGE", stage);
        }
        (self.configure)(role, index, builder)
    }
}

/// A running master and its slaves, each on its own temporary data directory.
pub struct Cluster {
    pub master: Node,
    pub slaves: Vec<Node>,
    /// `proxies[i]` carries master → `slaves[i]` traffic.
    pub proxies: Vec<Proxy>,
    /// Carries slave → master traffic, for every slave.
    pub master_proxy: Proxy,
}

impl Cluster {
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder { slaves: 0, stage: None, configure: Box::new(|_, _, builder| builder) }
    }

    /// A master and `slaves` slaves at replication `stage`.
    pub async fn start(slaves: usize, stage: &str) -> Cluster {
        Cluster::builder().slaves(slaves).stage(stage).start().await
    }

    /// As [`Cluster::start`], with `configure` adjusting each node (see
    /// [`ClusterBuilder::configure`]).
    pub async fn start_with(
        slaves: usize,
        stage: &str,
        configure: impl FnMut(Role, usize, NodeBuilder) -> NodeBuilder + Send + 'static,
    ) -> Cluster {
        Cluster::builder().slaves(slaves).stage(stage).configure(configure).start().await
    }

    /// Starts one more slave, `slaves[index]` (with id `slave-{index + 1}`), from
    /// `builder`, behind a proxy of its own, and answers its index once it listens: it
    /// may not be ready for a while (a full sync).
    pub async fn add_slave(&mut self, builder: NodeBuilder) -> usize {
        let index = self.slaves.len();
        let proxy = Proxy::start().await;
        let slave = builder
            .env("BITARK_NODE__ID", slave_id(index))
            .env("BITARK_NODE__ROLE", Role::Slave.as_str())
            .env("BITARK_SECURITY__CLUSTER_TOKEN", CLUSTER_TOKEN)
            .env("BITARK_REPLICATION__MASTER_URL", self.master_proxy.url())
            .env("BITARK_REPLICATION__SELF_URL", proxy.url());
        let mut slave = slave.spawn();
        proxy.set_upstream(slave.wait_listening().await);
        self.slaves.push(slave);
        self.proxies.push(proxy);
        index
    }

    /// Starts `slaves[index]` again after it stopped, without waiting for it to be
    /// ready, and points its proxy at it once it listens.
    pub async fn respawn_slave(&mut self, index: usize) {
        let slave = &mut self.slaves[index];
        slave.respawn();
        self.proxies[index].set_upstream(slave.wait_listening().await);
    }

    /// Stops the master gracefully if it still runs, starts it again on its data
    /// directory and points the master proxy at its new port.
    pub async fn restart_master(&mut self) {
        restart_behind(&mut self.master, &self.master_proxy).await;
    }

    /// Stops `slaves[index]` gracefully if it still runs, starts it again on its data
    /// directory and points its proxy at its new port.
    pub async fn restart_slave(&mut self, index: usize) {
        restart_behind(&mut self.slaves[index], &self.proxies[index]).await;
    }

    /// See [`wait_for_convergence`].
    pub async fn wait_for_convergence(&self, timeout: Duration) {
        wait_for_convergence(&self.master, &self.slaves, timeout).await;
    }
}

/// Points `proxy` at `node` as soon as it listens, then waits until it is ready: a node
/// may be reached through its proxy while it starts (a slave registering itself).
async fn start_behind(mut node: Node, proxy: &Proxy) -> Node {
    proxy.set_upstream(node.wait_listening().await);
    node.wait_ready().await;
    node
}

async fn restart_behind(node: &mut Node, proxy: &Proxy) {
    if node.try_exit().is_none() {
        node.stop().await;
    }
    node.respawn();
    proxy.set_upstream(node.wait_listening().await);
    node.wait_ready().await;
}

/// `GET /actuator/replication` of `node`; panics naming the node if it does not answer.
pub async fn replication_status(node: &Node) -> Value {
    match node.api().replication_status().await {
        Ok(status) => status,
        Err(error) => panic!("GET {}/actuator/replication: {error}", node.url()),
    }
}

/// Waits until every slave holds what the master holds: the same `appliedLsn` and
/// digest, with the master's unchanged since the previous poll. Panics on timeout with
/// what each node last showed.
pub async fn wait_for_convergence(master: &Node, slaves: &[Node], timeout: Duration) {
    if let Err(report) = converge(master, slaves, timeout).await {
        panic!("{report}");
    }
}

/// [`wait_for_convergence`] without the panic: `Err` holds the timeout report.
pub async fn converge(master: &Node, slaves: &[Node], timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let (master_api, slave_apis) = (master.api(), slaves.iter().map(Node::api).collect::<Vec<_>>());
    let mut previous: Option<Observed> = None;
    loop {
        let now = observe(&master_api).await;
        let mut replicas = Vec::with_capacity(slaves.len());
        for api in &slave_apis {
            replicas.push(observe(api).await);
        }
        let stable = now.is_ok() && previous.as_ref() == Some(&now);
        if stable && replicas.iter().all(|replica| *replica == now) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let mut report = format!("slaves did not converge with the master within {timeout:?}:\n");
            let _ = writeln!(report, "  master    {} {}", master.url(), show(&now));
            for (index, (slave, replica)) in slaves.iter().zip(&replicas).enumerate() {
                let _ = writeln!(report, "  slaves[{index}] {} {}", slave.url(), show(replica));
            }
            return Err(report);
        }
        previous = Some(now);
        tokio::time::sleep(POLL).await;
    }
}

/// A node's `(appliedLsn, digest)`, or why it could not be read.
type Observed = Result<(u64, String), String>;

async fn observe(api: &Api) -> Observed {
    let digest = api.digest().await.map_err(|error| error.to_string())?;
    Ok((digest.applied_lsn, digest.digest))
}

fn show(observed: &Observed) -> String {
    match observed {
        Ok((applied_lsn, digest)) => format!("appliedLsn={applied_lsn} digest={digest}"),
        Err(error) => format!("no digest: {error}"),
    }
}

/// The master's entry for `slaves[index]` in its `/actuator/replication`, if it lists it.
pub async fn slave_entry(master: &Node, index: usize) -> Option<Value> {
    let status = replication_status(master).await;
    status["slaves"].as_array()?.iter().find(|slave| slave["id"] == slave_id(index).as_str()).cloned()
}

/// The ids of the slaves the master lists.
pub async fn listed_slaves(master: &Node) -> Vec<String> {
    let status = replication_status(master).await;
    let slaves = status["slaves"].as_array().expect("a master lists its slaves").iter();
    slaves.map(|slave| slave["id"].as_str().expect("slave id").to_owned()).collect()
}

/// Waits until the master shows `slaves[index]` in `state`, in `/actuator/replication`
/// and in `bitark_replication_slave_state`.
pub async fn wait_state(master: &Node, index: usize, state: &str) {
    let what = format!("the master to show {} as {state}", slave_id(index));
    let slave = slave_id(index);
    wait_until(CONVERGE_WITHIN, &what, async || {
        let shown = slave_entry(master, index).await.is_some_and(|entry| entry["state"] == state);
        let gauge = metric(master, "bitark_replication_slave_state", &[("slave", &slave), ("state", state)]).await;
        shown && gauge == Some(1.0)
    })
    .await;
}
