//! Shared harness of the change-stream tests: two fake-mongod servers (source and destination),
//! an in-memory coordination store with a real fenced claim, and a state channel the test drives
//! the way the leader would (copy completion, commit marker).
//!
//! Every test can also run against real deployments: set `CLUSTERSYNC_TEST_SOURCE_URI` and
//! `CLUSTERSYNC_TEST_DESTINATION_URI` to two replica sets (they are written to and dropped).
//! The fault-injection tests need fake-mongod and say so when given real URIs.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::{Document, Timestamp, doc};
use clustersync_common::claim::{self, ClaimOutcome, FencingToken};
use clustersync_common::extjson::OpTime;
use clustersync_common::ids::{InstanceId, MigrationId, ShardId, TaskId};
use clustersync_common::keys::Keys;
use clustersync_common::model::{
    self, CdcCheckpoint, CdcStage, ChangeStreamTask, CheckpointDetail, ClaimValue, Phase, StartOptions, SyncState,
    SyncStateDoc, TaskCheckpoint,
};
use clustersync_common::namespace::{INTERNAL_DATABASE, NamespaceFilter};
use clustersync_common::store::{EmbeddedStore, LeaseId, Store};
use clustersync_worker::context::{CheckpointWriter, TaskContext, TaskCounters};
use clustersync_worker::error::WorkerError;
use clustersync_worker::mongo::{self, Clusters, CopyReadPreference};
use clustersync_worker::settings::WorkerSettings;
use fake_mongod::FakeMongod;
use futures::TryStreamExt;
use mongodb::Client;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a test waits for the engine to reach a condition.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The two clusters under test: in-process fake-mongod servers, or real ones from the environment.
pub enum Servers {
    Fake { source: FakeMongod, destination: FakeMongod },
    Real { source: String, destination: String },
}

impl Servers {
    fn start() -> Servers {
        match (std::env::var("CLUSTERSYNC_TEST_SOURCE_URI"), std::env::var("CLUSTERSYNC_TEST_DESTINATION_URI")) {
            (Ok(source), Ok(destination)) => Servers::Real { source, destination },
            _ => Servers::Fake {
                source: FakeMongod::start_default().expect("start the source fake-mongod"),
                destination: FakeMongod::start_default().expect("start the destination fake-mongod"),
            },
        }
    }

    pub fn source_uri(&self) -> String {
        match self {
            Servers::Fake { source, .. } => source.uri(),
            Servers::Real { source, .. } => source.clone(),
        }
    }

    pub fn destination_uri(&self) -> String {
        match self {
            Servers::Fake { destination, .. } => destination.uri(),
            Servers::Real { destination, .. } => destination.clone(),
        }
    }

    /// The fake servers, for fault injection. Tests that need faults fail loudly on real servers.
    pub fn fake(&self) -> (&FakeMongod, &FakeMongod) {
        match self {
            Servers::Fake { source, destination } => (source, destination),
            Servers::Real { .. } => {
                panic!("this test injects faults and needs fake-mongod (unset the *_URI variables)")
            }
        }
    }
}

/// One change-stream task under test.
pub struct Harness {
    pub servers: Servers,
    /// A plain client on the source: the application whose writes are synced.
    pub user: Client,
    /// A plain client on the destination, for checks.
    pub check: Client,
    pub clusters: Arc<Clusters>,
    pub store: Arc<dyn Store>,
    pub keys: Keys,
    pub lease: LeaseId,
    pub state: watch::Sender<SyncStateDoc>,
    pub task: ChangeStreamTask,
    pub task_id: TaskId,
    pub options: StartOptions,
    pub filter: Arc<NamespaceFilter>,
    pub settings: WorkerSettings,
    pub migration: String,
    /// The claim of the current run (the previous one is released at takeover).
    token: std::sync::Mutex<Option<FencingToken>>,
}

/// A running change-stream task.
pub struct Running {
    pub handle: JoinHandle<Result<(), WorkerError>>,
    pub cancel: CancellationToken,
    pub counters: Arc<TaskCounters>,
}

impl Running {
    /// Cancels the task (pause / release) and returns its result.
    pub async fn stop(self) -> Result<(), WorkerError> {
        self.cancel.cancel();
        tokio::time::timeout(PATIENCE, self.handle).await.expect("the task stops when cancelled").expect("no panic")
    }

    /// Kills the task as a crash would: nothing more is written, not even a final checkpoint.
    pub async fn crash(self) {
        self.handle.abort();
        let _ = self.handle.await;
    }

    /// Waits for the task to end on its own (a failure).
    pub async fn finished(self) -> Result<(), WorkerError> {
        tokio::time::timeout(PATIENCE, self.handle).await.expect("the task ends").expect("no panic")
    }
}

pub fn options(json: serde_json::Value) -> StartOptions {
    let mut base = serde_json::json!({"source": "cluster0", "destination": "cluster1"});
    if let (Some(base), Some(extra)) = (base.as_object_mut(), json.as_object()) {
        base.extend(extra.clone());
    }
    serde_json::from_value(base).expect("valid start options")
}

/// Small batches and few appliers, so tests exercise batch boundaries and interleaving.
pub fn test_settings() -> WorkerSettings {
    WorkerSettings {
        appliers: 3,
        spool_batch_events: 50,
        apply_batch_events: 20,
        retry_budget: Duration::from_secs(60),
        ..WorkerSettings::default()
    }
}

impl Harness {
    pub async fn start() -> Harness {
        Self::start_with(options(serde_json::json!({})), test_settings()).await
    }

    pub async fn start_with(options: StartOptions, settings: WorkerSettings) -> Harness {
        let servers = Servers::start();
        let user = Client::with_uri_str(servers.source_uri()).await.expect("source client");
        let check = Client::with_uri_str(servers.destination_uri()).await.expect("destination client");
        let clusters = mongo::connect(
            &servers.source_uri(),
            "cluster0",
            &servers.destination_uri(),
            "cluster1",
            CopyReadPreference::Primary,
        )
        .await
        .expect("connect both clusters");
        let migration = format!("m{}", std::process::id() % 100_000);
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::in_memory());
        let keys = Keys::new("/clustersync", &MigrationId::new(migration.clone()).unwrap()).unwrap();
        let lease = store.grant_lease(Duration::from_secs(3600)).await.unwrap();
        let filter =
            Arc::new(NamespaceFilter::new(&options.include_namespaces, &options.exclude_namespaces).expect("filter"));
        let harness = Harness {
            servers,
            user,
            check,
            clusters: Arc::new(clusters),
            store,
            keys,
            lease,
            state: watch::channel(SyncStateDoc::default()).0,
            task: ChangeStreamTask { shard: ShardId::new("rs0").unwrap(), start_at: OpTime::default() },
            task_id: TaskId(1),
            options: options.clone(),
            filter,
            settings,
            migration,
            token: std::sync::Mutex::new(None),
        };
        harness.clean().await;
        let start_at = harness.source_time().await;
        let mut harness = harness;
        harness.task.start_at = start_at;
        harness.state.send_replace(SyncStateDoc {
            state: SyncState::Running,
            phase: Phase::Snapshot,
            options: Some(options),
            change_stream_start: Some(start_at),
            updated_at_ms: model::now_ms(),
            ..Default::default()
        });
        harness
    }

    /// Drops every user database on both sides (real servers are reused between tests).
    async fn clean(&self) {
        for client in [&self.user, &self.check] {
            for name in client.list_database_names().await.expect("list databases") {
                if !matches!(name.as_str(), "admin" | "config" | "local") {
                    client.database(&name).drop().await.expect("drop database");
                }
            }
        }
    }

    /// The source's current operation time (the next write is at or after it).
    pub async fn source_time(&self) -> OpTime {
        let reply = self.user.database("admin").run_command(doc! {"hello": 1}).await.expect("hello");
        let ts = reply
            .get_document("lastWrite")
            .and_then(|last| last.get_document("opTime"))
            .and_then(|optime| optime.get_timestamp("ts"))
            .or_else(|_| reply.get_timestamp("operationTime"))
            .expect("the source reports its last write time");
        OpTime::from(Timestamp { time: ts.time, increment: ts.increment + 1 })
    }

    /// Claims the task (taking it over from any previous holder) and runs it from the stored
    /// checkpoint.
    pub async fn run(&self) -> Running {
        self.run_with_budget(None).await
    }

    /// [`Harness::run`] with a memory budget other than the default.
    pub async fn run_with_budget(&self, memory_budget_bytes: Option<usize>) -> Running {
        let claim_key = self.keys.claim(self.task_id);
        let previous = self.token.lock().unwrap().take();
        if let Some(old) = previous {
            // What a lease expiry does to the previous holder's claim.
            claim::release(&*self.store, &claim_key, old).await.unwrap();
        }
        let value =
            model::encode(&ClaimValue { holder: InstanceId::new("w1").unwrap(), claimed_at_ms: model::now_ms() });
        let ClaimOutcome::Claimed(token) = claim::try_claim(&*self.store, &claim_key, value, self.lease).await.unwrap()
        else {
            panic!("the task is free to claim");
        };
        *self.token.lock().unwrap() = Some(token);
        let counters = Arc::new(TaskCounters::new());
        let cancel = CancellationToken::new();
        let context = TaskContext {
            task: self.task_id,
            clusters: self.clusters.clone(),
            checkpoints: CheckpointWriter::new(
                self.store.clone(),
                self.keys.clone(),
                self.task_id,
                token,
                InstanceId::new("w1").unwrap(),
            ),
            previous: self.checkpoint().await,
            state: self.state.subscribe(),
            cancel: cancel.clone(),
            counters: counters.clone(),
            options: Arc::new(self.options.clone()),
            filter: self.filter.clone(),
            settings: Arc::new(self.settings.clone()),
            migration: self.migration.clone(),
        };
        let task = self.task.clone();
        let handle = tokio::spawn(async move {
            let mut options = clustersync_worker::cdc::EngineOptions::new(&context);
            if let Some(bytes) = memory_budget_bytes {
                options.memory_budget_bytes = bytes;
            }
            clustersync_worker::cdc::run_change_stream_with(&context, &task, options).await
        });
        Running { handle, cancel, counters }
    }

    pub async fn checkpoint(&self) -> Option<TaskCheckpoint> {
        let key = self.keys.checkpoint(self.task_id);
        let kv = self.store.get(&key).await.unwrap()?;
        Some(model::decode(&key, &kv.value).unwrap())
    }

    pub async fn cdc(&self) -> CdcCheckpoint {
        match self.checkpoint().await.map(|c| c.detail) {
            Some(CheckpointDetail::ChangeStream(cdc)) => cdc,
            other => panic!("no change stream checkpoint: {other:?}"),
        }
    }

    /// Polls the stored checkpoint until `condition` holds.
    pub async fn wait_checkpoint(&self, what: &str, condition: impl Fn(&TaskCheckpoint) -> bool) -> TaskCheckpoint {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let checkpoint = self.checkpoint().await;
            if let Some(checkpoint) = checkpoint.as_ref().filter(|c| condition(c)) {
                return checkpoint.clone();
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; last checkpoint: {checkpoint:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls the change-stream checkpoint until `condition` holds.
    pub async fn wait_cdc(&self, what: &str, condition: impl Fn(&CdcCheckpoint) -> bool) -> CdcCheckpoint {
        let checkpoint = self
            .wait_checkpoint(what, |c| matches!(&c.detail, CheckpointDetail::ChangeStream(cdc) if condition(cdc)))
            .await;
        match checkpoint.detail {
            CheckpointDetail::ChangeStream(cdc) => cdc,
            _ => unreachable!(),
        }
    }

    pub async fn wait_live(&self) -> CdcCheckpoint {
        self.wait_cdc("the live stage", |c| c.stage == CdcStage::Live).await
    }

    /// What the leader does when every copy task is done.
    pub async fn complete_copy(&self) {
        let time = self.source_time().await;
        self.state.send_modify(|state| {
            state.copy_completed_at_ms = Some(model::now_ms());
            state.copy_completed_time = Some(time);
            state.phase = Phase::Running;
        });
    }

    /// Copies collections the way the copy tasks do (idempotent upserts of the current documents).
    pub async fn copy(&self, namespaces: &[(&str, &str)]) {
        for (db, coll) in namespaces {
            let ns = clustersync_common::namespace::Namespace::new(*db, *coll);
            clustersync_worker::copy::recopy_collection(&self.clusters, &ns, &CancellationToken::new())
                .await
                .expect("copy");
        }
    }

    /// Every synced collection (and its documents in `_id` order) of one side.
    pub async fn snapshot(client: &Client, filter: &NamespaceFilter) -> BTreeMap<String, Vec<Document>> {
        let mut out = BTreeMap::new();
        for db_name in client.list_database_names().await.expect("list databases") {
            if matches!(db_name.as_str(), "admin" | "config" | "local") || db_name == INTERNAL_DATABASE {
                continue;
            }
            let db = client.database(&db_name);
            for coll in db.list_collection_names().await.expect("list collections") {
                if !filter.includes(&clustersync_common::namespace::Namespace::new(db_name.clone(), coll.clone())) {
                    continue;
                }
                let documents: Vec<Document> = db
                    .collection::<Document>(&coll)
                    .find(doc! {})
                    .sort(doc! {"_id": 1})
                    .await
                    .expect("find")
                    .try_collect()
                    .await
                    .expect("read documents");
                out.insert(format!("{db_name}.{coll}"), documents);
            }
        }
        out
    }

    /// Waits until the destination holds exactly the source's user data.
    pub async fn wait_converged(&self, what: &str) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let source = Self::snapshot(&self.user, &self.filter).await;
            let destination = Self::snapshot(&self.check, &NamespaceFilter::default()).await;
            if source == destination {
                return;
            }
            if Instant::now() > deadline {
                let differences: Vec<String> = source
                    .keys()
                    .chain(destination.keys())
                    .filter(|ns| source.get(*ns) != destination.get(*ns))
                    .map(|ns| format!("{ns}: source {:?}\n  destination {:?}", source.get(ns), destination.get(ns)))
                    .collect();
                panic!("{what}: destination never converged with the source:\n{}", differences.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The spool collection of this task on the destination.
    pub fn spool(&self) -> mongodb::Collection<Document> {
        self.check
            .database(INTERNAL_DATABASE)
            .collection(&clustersync_worker::cdc::spool::spool_collection(&self.migration, "rs0"))
    }

    pub async fn spool_exists(&self) -> bool {
        let name = clustersync_worker::cdc::spool::spool_collection(&self.migration, "rs0");
        self.check.database(INTERNAL_DATABASE).list_collection_names().await.unwrap().contains(&name)
    }

    pub fn source_coll(&self, db: &str, coll: &str) -> mongodb::Collection<Document> {
        self.user.database(db).collection(coll)
    }

    pub fn destination_coll(&self, db: &str, coll: &str) -> mongodb::Collection<Document> {
        self.check.database(db).collection(coll)
    }

    /// Index names of a destination collection, sorted.
    pub async fn destination_indexes(&self, db: &str, coll: &str) -> Vec<String> {
        let mut names = self.destination_coll(db, coll).list_index_names().await.unwrap_or_default();
        names.sort();
        names
    }

    /// Runs a command on the source as the application would.
    pub async fn source_command(&self, db: &str, command: Document) -> Document {
        self.user.database(db).run_command(command).await.expect("source command")
    }

    /// Sets `failCommand` on the destination for clustersync's connections.
    pub async fn destination_fail_point(&self, mode: bson::Bson, data: Document) {
        let mut data = data;
        data.insert("appName", mongo::APP_NAME);
        let command = doc! {"configureFailPoint": "failCommand", "mode": mode, "data": data};
        // The test's own connections may just have been dropped by a fault of the test.
        for attempt in 0.. {
            match self.check.database("admin").run_command(command.clone()).await {
                Ok(_) => return,
                Err(error) if attempt < 5 => eprintln!("configure the fail point, retrying: {error}"),
                Err(error) => panic!("configure the fail point: {error}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
