//! A distributed clustersync deployment under test: a real etcd, N `clustersync coordinator`
//! processes and M `clustersync worker` processes, each with its own id, port and log file.
//!
//! Any process can be killed with SIGKILL, frozen with SIGSTOP, thawed with SIGCONT, restarted
//! with the same flags, or added while the migration runs; etcd itself can be stopped and
//! started again ([`Fleet::etcd`]). The test reads the coordination store directly
//! ([`Fleet::store`], [`Fleet::keys`]) to see claims, checkpoints and the leader, and drives the
//! migration through any coordinator's REST API.
//!
//! The processes' logs are printed when a test fails (or always, with `CLUSTERSYNC_E2E_SHOW_LOGS`
//! set); [`Fleet::step`] notes the test's own steps with timestamps.
//!
//! Every process shares one YAML configuration (`--config`): the migration name, the lease TTL
//! (short, so takeovers happen within seconds) and the worker settings of [`FleetOptions`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use clustersync_common::ids::{InstanceId, MigrationId, TaskId};
use clustersync_common::keys::Keys;
use clustersync_common::model::{self, ClaimValue, InstanceInfo, LeaderValue, SyncStateDoc, TaskCheckpoint, TaskSpec};
use clustersync_common::store::{Revision, Store, WatchEventKind};
use clustersync_common::testing::EtcdServer;
use futures::StreamExt;
use serde_json::{Value, json};

use crate::clusters::TestClusters;
use crate::process::{binary, free_port};

/// Set this environment variable to print every process's log when a fleet is dropped, also
/// after a passing test (they are always printed after a failure).
pub const SHOW_LOGS_VAR: &str = "CLUSTERSYNC_E2E_SHOW_LOGS";

/// Name of the migration every fleet runs.
pub const MIGRATION: &str = "e2e";

/// Shape of a fleet.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// Coordinator processes started at once.
    pub coordinators: usize,
    /// Worker processes started at once.
    pub workers: usize,
    /// `etcd.leaseTtl` of every process.
    pub lease_ttl: Duration,
    /// The `worker:` section of the configuration (camelCase keys, as in the YAML file).
    pub worker: Value,
}

impl Default for FleetOptions {
    fn default() -> Self {
        FleetOptions {
            coordinators: 1,
            workers: 2,
            lease_ttl: Duration::from_secs(3),
            worker: json!({
                "taskSlots": 2,
                "copyBatchDocuments": 100,
                "partitionBytes": 1024 * 1024,
            }),
        }
    }
}

impl FleetOptions {
    /// `worker.copyBatchDocuments`: the checkpoint granularity of a copy.
    pub fn copy_batch_documents(&self) -> u64 {
        self.worker["copyBatchDocuments"].as_u64().unwrap_or(1000)
    }
}

/// Which subcommand a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeRole {
    /// `clustersync coordinator`: REST API and leader election.
    Coordinator,
    /// `clustersync worker`: claims and runs tasks.
    Worker,
}

impl NodeRole {
    fn subcommand(self) -> &'static str {
        match self {
            NodeRole::Coordinator => "coordinator",
            NodeRole::Worker => "worker",
        }
    }
}

/// One `clustersync` process of the fleet.
pub struct Node {
    /// Its `--id`.
    pub id: String,
    /// Coordinator or worker.
    pub role: NodeRole,
    /// REST API port (coordinators).
    pub port: u16,
    args: Vec<String>,
    log_path: PathBuf,
    child: Option<Child>,
    frozen: bool,
    http: reqwest::Client,
}

impl Node {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap_or_else(|e| panic!("opening {}: {e}", self.log_path.display()));
        let child = Command::new(binary())
            .args(&self.args)
            // Plain text logs: the tests search them.
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {} {}: {e}", self.role.subcommand(), self.id));
        self.child = Some(child);
        self.frozen = false;
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is alive (a frozen process is alive).
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// SIGKILL: no shutdown hook runs, the lease is left to expire.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.frozen = false;
    }

    /// Starts the process again with the same flags (after [`Node::kill9`]).
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// SIGSTOP: the process stops dead, with its connections open, until [`Node::thaw`].
    pub fn freeze(&mut self) {
        self.signal("-STOP");
        self.frozen = true;
    }

    /// SIGCONT after [`Node::freeze`].
    pub fn thaw(&mut self) {
        self.signal("-CONT");
        self.frozen = false;
    }

    /// Whether the process is stopped by [`Node::freeze`].
    pub fn is_frozen(&self) -> bool {
        self.frozen
    }

    fn signal(&self, signal: &str) {
        let pid = self.pid().unwrap_or_else(|| panic!("{} is not running", self.id));
        let status = Command::new("kill")
            .arg(signal)
            .arg(pid.to_string())
            .status()
            .unwrap_or_else(|e| panic!("running kill {signal} {pid}: {e}"));
        assert!(status.success(), "kill {signal} {pid} ({}) failed: {status}", self.id);
    }

    /// The process's log (stderr) so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let logs = self.logs();
        let all: Vec<&str> = logs.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn url(&self, endpoint: &str) -> String {
        format!("http://127.0.0.1:{}/api/v1/{endpoint}", self.port)
    }

    /// `POST /api/v1/<endpoint>` with a JSON body; the HTTP status and the JSON reply.
    pub async fn post(&self, endpoint: &str, body: Value) -> (u16, Value) {
        assert_eq!(self.role, NodeRole::Coordinator, "{} serves no API", self.id);
        let response = self
            .http
            .post(self.url(endpoint))
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {endpoint} to {}: {e}", self.id));
        let status = response.status().as_u16();
        let text = response.text().await.expect("reply body");
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("POST {endpoint} to {} replied non-JSON {text:?}: {e}", self.id));
        (status, value)
    }

    /// `POST` that must succeed.
    pub async fn post_ok(&self, endpoint: &str, body: Value) {
        let (status, reply) = self.post(endpoint, body).await;
        assert_eq!(
            reply["success"],
            json!(true),
            "POST {endpoint} to {} failed with {status}: {reply}\n{}",
            self.id,
            self.log_tail(40)
        );
    }

    /// `GET /api/v1/progress` → the `progress` object, or why there is none.
    pub async fn try_progress(&self) -> Result<Value, String> {
        let response = self.http.get(self.url("progress")).send().await.map_err(|e| e.to_string())?;
        let value: Value = response.json().await.map_err(|e| e.to_string())?;
        if value["success"] == json!(true) { Ok(value["progress"].clone()) } else { Err(value.to_string()) }
    }

    /// `GET /api/v1/progress` that must succeed.
    pub async fn progress(&self) -> Value {
        self.try_progress().await.unwrap_or_else(|e| panic!("progress from {}: {e}", self.id))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // SIGKILL also ends a stopped process.
        self.kill9();
    }
}

/// One checkpoint write seen by a [`CheckpointRecorder`].
#[derive(Debug, Clone)]
pub struct CheckpointWrite {
    /// The store revision of the write.
    pub revision: Revision,
    /// The task.
    pub task: TaskId,
    /// The value written.
    pub checkpoint: TaskCheckpoint,
}

/// Records every checkpoint write from a revision on (a watch on `{m}/checkpoints/`).
pub struct CheckpointRecorder {
    writes: Arc<Mutex<Vec<CheckpointWrite>>>,
    handle: tokio::task::JoinHandle<()>,
}

impl CheckpointRecorder {
    /// Every write recorded so far, in revision order.
    pub fn writes(&self) -> Vec<CheckpointWrite> {
        lock(&self.writes).clone()
    }
}

/// Locks, ignoring poisoning: a panicking test thread must not hide what was recorded.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Drop for CheckpointRecorder {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// etcd, the coordinators and the workers of one test.
pub struct Fleet {
    /// The etcd server (stop and start it again to test an etcd restart).
    pub etcd: EtcdServer,
    /// A client of that etcd, for the test's own reads.
    pub store: Arc<dyn Store>,
    /// The migration's keys.
    pub keys: Keys,
    /// The options the fleet was started with.
    pub options: FleetOptions,
    /// Coordinator processes, in start order.
    pub coordinators: Vec<Node>,
    /// Worker processes, in start order.
    pub workers: Vec<Node>,
    cluster0: String,
    cluster1: String,
    config_path: PathBuf,
    dir: tempfile::TempDir,
    http: reqwest::Client,
    started: Instant,
}

impl Fleet {
    /// Starts etcd, then the coordinators and workers of `options` against `clusters`
    /// (cluster0 = source, cluster1 = destination), and waits until every coordinator's API
    /// answers and every process is registered.
    pub async fn start(clusters: &TestClusters, options: FleetOptions) -> Fleet {
        let etcd = EtcdServer::start().await;
        let store: Arc<dyn Store> = Arc::new(etcd.store().await);
        let keys = Keys::new(clustersync_common::keys::DEFAULT_ROOT, &MigrationId::new(MIGRATION).expect("valid"))
            .expect("valid root");
        let dir = tempfile::Builder::new().prefix("clustersync-fleet-").tempdir().expect("tempdir");
        let config_path = dir.path().join("clustersync.yaml");
        // YAML is a superset of JSON.
        let config = json!({
            "acceptDisclaimer": true,
            "migrationName": MIGRATION,
            "verbosity": "INFO",
            "etcd": { "leaseTtl": format!("{}ms", options.lease_ttl.as_millis()) },
            "worker": options.worker,
        });
        std::fs::write(&config_path, serde_json::to_string_pretty(&config).expect("json")).expect("write config");
        let mut fleet = Fleet {
            etcd,
            store,
            keys,
            options: options.clone(),
            coordinators: Vec::new(),
            workers: Vec::new(),
            cluster0: clusters.source.uri.clone(),
            cluster1: clusters.destination.uri.clone(),
            config_path,
            dir,
            http: reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("http client"),
            started: Instant::now(),
        };
        for _ in 0..options.coordinators {
            fleet.add(NodeRole::Coordinator);
        }
        for _ in 0..options.workers {
            fleet.add(NodeRole::Worker);
        }
        for index in 0..fleet.coordinators.len() {
            fleet.wait_api(index).await;
        }
        let ids: Vec<String> = fleet.coordinators.iter().chain(&fleet.workers).map(|n| n.id.clone()).collect();
        for id in ids {
            fleet.wait_registered(&id).await;
        }
        fleet
    }

    /// Notes a step of the test on stderr with the time since the fleet started (shown for
    /// failing tests, and with `--no-capture`).
    pub fn step(&self, what: &str) {
        eprintln!("[{:>7.2}s] {what}", self.started.elapsed().as_secs_f64());
    }

    /// Starts one more process of `role`; returns its index among the processes of that role.
    pub fn add(&mut self, role: NodeRole) -> usize {
        let list = match role {
            NodeRole::Coordinator => &self.coordinators,
            NodeRole::Worker => &self.workers,
        };
        let index = list.len();
        let id = format!("{}-{index}", role.subcommand());
        let port = free_port();
        let mut args: Vec<String> = vec![
            role.subcommand().into(),
            "--etcd".into(),
            self.etcd.endpoint(),
            "--cluster0".into(),
            self.cluster0.clone(),
            "--cluster1".into(),
            self.cluster1.clone(),
            "--id".into(),
            id.clone(),
            "--port".into(),
            port.to_string(),
            "--config".into(),
            self.config_path.display().to_string(),
        ];
        if role == NodeRole::Coordinator {
            // Every coordinator serves the gRPC API too: on a free port each, not the default.
            args.extend(["--grpcPort".to_string(), "0".to_string()]);
        }
        let mut node = Node {
            id: id.clone(),
            role,
            port,
            args,
            log_path: self.dir.path().join(format!("{id}.log")),
            child: None,
            frozen: false,
            http: self.http.clone(),
        };
        node.spawn();
        match role {
            NodeRole::Coordinator => self.coordinators.push(node),
            NodeRole::Worker => self.workers.push(node),
        }
        index
    }

    /// Adds a worker while the migration runs and waits until it is registered.
    pub async fn add_worker(&mut self) -> usize {
        let index = self.add(NodeRole::Worker);
        let id = self.workers[index].id.clone();
        self.wait_registered(&id).await;
        index
    }

    /// Waits until coordinator `index` answers `/progress`.
    pub async fn wait_api(&mut self, index: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let node = &mut self.coordinators[index];
            if node.try_progress().await.is_ok() {
                return;
            }
            assert!(node.is_running(), "{} exited early:\n{}", node.id, node.log_tail(60));
            assert!(Instant::now() < deadline, "{} API did not come up:\n{}", node.id, node.log_tail(60));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `{m}/instances/{id}` exists.
    pub async fn wait_registered(&self, id: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.instances().await.contains_key(id) {
            assert!(Instant::now() < deadline, "{id} never registered:\n{}", self.all_logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The node with this id.
    pub fn node(&self, id: &str) -> &Node {
        self.coordinators.iter().chain(&self.workers).find(|n| n.id == id).unwrap_or_else(|| panic!("no node {id}"))
    }

    /// The node with this id, mutably.
    pub fn node_mut(&mut self, id: &str) -> &mut Node {
        self.coordinators
            .iter_mut()
            .chain(self.workers.iter_mut())
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    /// The tail of every process's log, for assertion messages.
    pub fn all_logs(&self) -> String {
        let mut out = String::new();
        for node in self.coordinators.iter().chain(&self.workers) {
            out.push_str(&format!("\n===== {} =====\n{}\n", node.id, node.log_tail(40)));
        }
        out
    }

    // -----------------------------------------------------------------------------------------
    // the coordination store, as the test sees it
    // -----------------------------------------------------------------------------------------

    async fn read_prefix<T: serde::de::DeserializeOwned>(&self, prefix: &str) -> Vec<(String, T)> {
        let (kvs, _) = self.store.get_prefix(prefix).await.unwrap_or_else(|e| panic!("reading {prefix}: {e}"));
        kvs.into_iter()
            .map(|kv| {
                let value = model::decode::<T>(&kv.key, &kv.value).unwrap_or_else(|e| panic!("{e}"));
                (kv.key, value)
            })
            .collect()
    }

    /// The state document.
    pub async fn state(&self) -> SyncStateDoc {
        match self.store.get(&self.keys.state()).await.expect("reading the state") {
            Some(kv) => model::decode(&kv.key, &kv.value).expect("state decodes"),
            None => SyncStateDoc::default(),
        }
    }

    /// Every task.
    pub async fn tasks(&self) -> BTreeMap<TaskId, TaskSpec> {
        let prefix = self.keys.tasks_prefix();
        self.read_prefix::<TaskSpec>(&prefix)
            .await
            .into_iter()
            .filter_map(|(key, spec)| Some((self.keys.task_id_of(&key)?, spec)))
            .collect()
    }

    /// Every claim: task → holder.
    pub async fn claims(&self) -> BTreeMap<TaskId, String> {
        let prefix = self.keys.claims_prefix();
        self.read_prefix::<ClaimValue>(&prefix)
            .await
            .into_iter()
            .filter_map(|(key, claim)| Some((self.keys.task_id_of(&key)?, claim.holder.to_string())))
            .collect()
    }

    /// Every checkpoint.
    pub async fn checkpoints(&self) -> BTreeMap<TaskId, TaskCheckpoint> {
        let prefix = self.keys.checkpoints_prefix();
        self.read_prefix::<TaskCheckpoint>(&prefix)
            .await
            .into_iter()
            .filter_map(|(key, checkpoint)| Some((self.keys.task_id_of(&key)?, checkpoint)))
            .collect()
    }

    /// Every registered process: id → registration.
    pub async fn instances(&self) -> BTreeMap<String, InstanceInfo> {
        let prefix = self.keys.instances_prefix();
        self.read_prefix::<InstanceInfo>(&prefix)
            .await
            .into_iter()
            .map(|(_, info)| (info.id.to_string(), info))
            .collect()
    }

    /// The elected coordinator, from `{m}/leader`.
    pub async fn leader(&self) -> Option<String> {
        let kv = self.store.get(&self.keys.leader()).await.expect("reading the leader key")?;
        let value: LeaderValue = model::decode(&kv.key, &kv.value).expect("leader value decodes");
        Some(value.instance.to_string())
    }

    /// The current store revision.
    pub async fn revision(&self) -> Revision {
        let (_, revision) = self.store.get_prefix(&self.keys.state()).await.expect("reading the revision");
        revision
    }

    /// Starts recording every checkpoint write after `after` (a revision).
    pub async fn record_checkpoints(&self, after: Revision) -> CheckpointRecorder {
        let writes = Arc::new(Mutex::new(Vec::new()));
        let prefix = self.keys.checkpoints_prefix();
        let mut stream = self.store.watch_prefix(&prefix, Some(after + 1)).await.expect("watching checkpoints");
        let keys = self.keys.clone();
        let sink = writes.clone();
        let handle = tokio::spawn(async move {
            while let Some(Ok(batch)) = stream.next().await {
                for event in batch {
                    if event.kind != WatchEventKind::Put {
                        continue;
                    }
                    let (Some(task), Ok(checkpoint)) = (
                        keys.task_id_of(&event.kv.key),
                        model::decode::<TaskCheckpoint>(&event.kv.key, &event.kv.value),
                    ) else {
                        continue;
                    };
                    lock(&sink).push(CheckpointWrite { revision: event.kv.mod_revision, task, checkpoint });
                }
            }
        });
        CheckpointRecorder { writes, handle }
    }

    // -----------------------------------------------------------------------------------------
    // waiting
    // -----------------------------------------------------------------------------------------

    /// Polls `/progress` on coordinator `via` until `predicate` holds; panics after `timeout`
    /// (or at once if the migration goes FAILED) with the last reply and every process's log.
    /// Failed requests (etcd down, a coordinator restarting) are retried until the timeout.
    pub async fn wait_progress(
        &mut self,
        via: usize,
        what: &str,
        timeout: Duration,
        predicate: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.coordinators[via].try_progress().await {
                Ok(progress) => {
                    if predicate(&progress) {
                        return progress;
                    }
                    if progress["state"] == "FAILED" {
                        panic!("migration FAILED while waiting for {what}: {progress:#}\n{}", self.all_logs());
                    }
                    progress
                }
                Err(error) => json!({ "unavailable": error }),
            };
            if !self.coordinators[via].is_running() {
                panic!("{} exited while waiting for {what}:\n{}", self.coordinators[via].id, self.all_logs());
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; last progress: {last:#}\n{}",
                self.all_logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits for `state` (through coordinator `via`).
    pub async fn wait_state(&mut self, via: usize, state: &str, timeout: Duration) -> Value {
        self.wait_progress(via, &format!("state {state}"), timeout, |p| p["state"] == state).await
    }

    /// Polls the store until `predicate` holds over the fleet; panics after `timeout`.
    pub async fn wait_until<F, Fut>(&self, what: &str, timeout: Duration, mut predicate: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + timeout;
        while !predicate().await {
            assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting until {what}\n{}", self.all_logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls the store until `probe` returns a value; panics after `timeout`.
    pub async fn wait_for_value<T, F, Fut>(&self, what: &str, timeout: Duration, mut probe: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = probe().await {
                return value;
            }
            assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}\n{}", self.all_logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The id of an instance as the store spells it.
    pub fn instance_id(id: &str) -> InstanceId {
        InstanceId::new(id).expect("valid instance id")
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os(SHOW_LOGS_VAR).is_some() {
            // The log files go with the temporary directory: show what the processes said.
            let mut out = String::new();
            for node in self.coordinators.iter().chain(&self.workers) {
                out.push_str(&format!("\n===== {} (full log) =====\n{}\n", node.id, node.logs()));
            }
            eprintln!("{out}");
        }
    }
}
