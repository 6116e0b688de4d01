//! Shared pieces of the worker's integration tests: two test servers (source and destination),
//! the connections clustersync uses to them, and task contexts with real fenced checkpoint
//! writers over the embedded store.
//!
//! Every test runs against the in-process `fake-mongod`; `CLUSTERSYNC_TEST_SOURCE_URI` and
//! `CLUSTERSYNC_TEST_DESTINATION_URI` point them at real deployments instead (each test works
//! in databases of its own name, which it drops first).

#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use bson::{Document, RawDocumentBuf, doc};
use clustersync_common::claim::{self, ClaimOutcome, FencingToken};
use clustersync_common::ids::{InstanceId, MigrationId, TaskId};
use clustersync_common::keys::Keys;
use clustersync_common::model::{self, StartOptions, SyncStateDoc, TaskCheckpoint};
use clustersync_common::namespace::{Namespace, NamespaceFilter};
use clustersync_common::store::embedded::EmbeddedStore;
use clustersync_common::store::{LeaseId, Store, StoreError, Txn, TxnOp};
use clustersync_common::testing::{BeforeTxn, TxnHookStore};
use clustersync_worker::context::{CheckpointWriter, TaskContext, TaskCounters};
use clustersync_worker::mongo::{self, Clusters, CopyReadPreference};
use clustersync_worker::settings::WorkerSettings;
use fake_mongod::FakeMongod;
use futures::TryStreamExt;
use mongodb::Client;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A source and a destination server with clustersync's connections to them.
pub struct World {
    pub source_server: Option<Arc<FakeMongod>>,
    pub destination_server: Option<Arc<FakeMongod>>,
    pub clusters: Arc<Clusters>,
}

impl World {
    /// Starts two fresh test servers (or uses the deployments named by the environment).
    pub async fn start() -> World {
        let from_env =
            (std::env::var("CLUSTERSYNC_TEST_SOURCE_URI").ok(), std::env::var("CLUSTERSYNC_TEST_DESTINATION_URI").ok());
        let (source_server, destination_server, source_uri, destination_uri) = match from_env {
            (Some(source), Some(destination)) => (None, None, source, destination),
            _ => {
                let source = Arc::new(FakeMongod::start_default().expect("start the source test server"));
                let destination = Arc::new(FakeMongod::start_default().expect("start the destination test server"));
                let (s, d) = (source.uri(), destination.uri());
                (Some(source), Some(destination), s, d)
            }
        };
        let clusters =
            mongo::connect(&source_uri, "cluster0", &destination_uri, "cluster1", CopyReadPreference::Primary)
                .await
                .expect("connect to the test servers");
        World { source_server, destination_server, clusters: Arc::new(clusters) }
    }

    pub fn source(&self) -> &Client {
        &self.clusters.source
    }

    pub fn destination(&self) -> &Client {
        &self.clusters.destination
    }

    /// The source test server (only with the in-process servers).
    pub fn source_server(&self) -> Arc<FakeMongod> {
        self.source_server.clone().expect("this test needs the in-process test servers")
    }

    pub fn destination_server(&self) -> Arc<FakeMongod> {
        self.destination_server.clone().expect("this test needs the in-process test servers")
    }

    /// Drops `db` on both sides (a clean start on real deployments).
    pub async fn reset(&self, db: &str) {
        self.source().database(db).drop().await.expect("drop source database");
        self.destination().database(db).drop().await.expect("drop destination database");
    }
}

/// Every document of a collection, in `_id` order, as raw bytes.
pub async fn raw_documents(client: &Client, ns: &Namespace) -> Vec<RawDocumentBuf> {
    client
        .database(&ns.db)
        .collection::<RawDocumentBuf>(&ns.coll)
        .find(doc! {})
        .sort(doc! {"_id": 1})
        .await
        .expect("find")
        .try_collect()
        .await
        .expect("read documents")
}

/// Inserts documents on the source in batches.
pub async fn insert(client: &Client, ns: &Namespace, documents: Vec<Document>) {
    let collection = client.database(&ns.db).collection::<Document>(&ns.coll);
    for chunk in documents.chunks(500) {
        collection.insert_many(chunk.to_vec()).await.expect("insert test documents");
    }
}

/// The `listIndexes` specs of a collection, by name.
pub async fn indexes(client: &Client, ns: &Namespace) -> Vec<Document> {
    let reply = client.database(&ns.db).run_command(doc! {"listIndexes": &ns.coll}).await.expect("listIndexes");
    reply
        .get_document("cursor")
        .and_then(|c| c.get_array("firstBatch"))
        .expect("listIndexes cursor")
        .iter()
        .filter_map(|spec| spec.as_document().cloned())
        .collect()
}

pub fn index_named<'a>(specs: &'a [Document], name: &str) -> Option<&'a Document> {
    specs.iter().find(|spec| spec.get_str("name").is_ok_and(|n| n == name))
}

/// The `options` of a collection from `listCollections`.
pub async fn collection_options(client: &Client, ns: &Namespace) -> Option<Document> {
    let reply = client
        .database(&ns.db)
        .run_command(doc! {"listCollections": 1, "filter": {"name": &ns.coll}})
        .await
        .expect("listCollections");
    reply
        .get_document("cursor")
        .and_then(|c| c.get_array("firstBatch"))
        .expect("listCollections cursor")
        .first()
        .and_then(|entry| entry.as_document())
        .map(|entry| entry.get_document("options").cloned().unwrap_or_default())
}

/// What the store wrapper does on a checkpoint write.
pub type CheckpointHook = Box<dyn Fn(u64) -> HookAction + Send + Sync>;

/// The effect of a [`CheckpointHook`] on the n-th checkpoint write (counted from 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookAction {
    /// Let it through.
    Pass,
    /// Delete the task's claim first, as if our lease had expired: the write is fenced.
    FenceBefore,
}

/// Counts checkpoint writes and runs the test's [`CheckpointHook`] on each.
#[derive(Default)]
pub struct CheckpointHooks {
    checkpoint_writes: AtomicU64,
    /// Set once, before the task runs.
    hook: OnceLock<CheckpointHook>,
}

impl CheckpointHooks {
    /// Sets the hook run on every checkpoint write.
    pub fn on_checkpoint(&self, hook: CheckpointHook) {
        assert!(self.hook.set(hook).is_ok(), "hook already set");
    }

    pub fn checkpoint_writes(&self) -> u64 {
        self.checkpoint_writes.load(Ordering::SeqCst)
    }
}

fn checkpoint_put(txn: &Txn) -> bool {
    txn.success.iter().any(|op| matches!(op, TxnOp::Put { key, .. } if key.contains("/checkpoints/")))
}

fn claim_compare_key(txn: &Txn) -> Option<String> {
    txn.compares.first().map(|compare| compare.key.clone())
}

#[async_trait]
impl BeforeTxn for CheckpointHooks {
    async fn before_txn(&self, inner: &EmbeddedStore, txn: &Txn) -> Result<(), StoreError> {
        if checkpoint_put(txn) {
            let n = self.checkpoint_writes.fetch_add(1, Ordering::SeqCst) + 1;
            let action = self.hook.get().map_or(HookAction::Pass, |hook| hook(n));
            if action == HookAction::FenceBefore
                && let Some(claim_key) = claim_compare_key(txn)
            {
                inner.delete(&claim_key).await?;
            }
        }
        Ok(())
    }
}

/// The embedded store, letting a test act on checkpoint writes (`store.hook`).
pub type HookedStore = TxnHookStore<CheckpointHooks>;

/// The coordination side of a test: a store, a lease and the migration's keys.
pub struct Coordination {
    pub store: Arc<HookedStore>,
    pub keys: Keys,
    pub lease: LeaseId,
    pub holder: InstanceId,
}

impl Coordination {
    pub async fn new() -> Coordination {
        let store = Arc::new(HookedStore::in_memory(CheckpointHooks::default()));
        let lease = store.grant_lease(Duration::from_secs(600)).await.expect("grant a lease");
        let keys = Keys::new("/clustersync-test", &MigrationId::new("m1").expect("migration id")).expect("keys");
        Coordination { store, keys, lease, holder: InstanceId::new("worker-1").expect("instance id") }
    }

    /// Claims a task; panics if someone else holds it.
    pub async fn claim(&self, task: TaskId) -> FencingToken {
        let value = model::encode(&model::ClaimValue { holder: self.holder.clone(), claimed_at_ms: model::now_ms() });
        match claim::try_claim(self.store.as_ref(), &self.keys.claim(task), value, self.lease).await.expect("claim") {
            ClaimOutcome::Claimed(token) => token,
            ClaimOutcome::HeldBy(kv) => panic!("task {task} already claimed: {kv:?}"),
        }
    }

    /// The stored checkpoint of a task.
    pub async fn checkpoint(&self, task: TaskId) -> Option<TaskCheckpoint> {
        let key = self.keys.checkpoint(task);
        self.store.get(&key).await.expect("read checkpoint").map(|kv| model::decode(&key, &kv.value).expect("decode"))
    }

    /// A context for a freshly claimed task, resuming from its stored checkpoint.
    pub async fn context(&self, world: &World, task: TaskId, settings: WorkerSettings) -> TaskContext {
        self.context_with(
            world,
            task,
            settings,
            StartOptions {
                source: "cluster0".into(),
                destination: "cluster1".into(),
                build_indexes: Default::default(),
                enable_user_write_blocking: Default::default(),
                include_namespaces: Vec::new(),
                exclude_namespaces: Vec::new(),
                reversible: false,
                sharding: None,
                verification: Default::default(),
            },
        )
        .await
    }

    pub async fn context_with(
        &self,
        world: &World,
        task: TaskId,
        settings: WorkerSettings,
        options: StartOptions,
    ) -> TaskContext {
        let token = self.claim(task).await;
        let previous = self.checkpoint(task).await;
        let store: Arc<dyn Store> = self.store.clone();
        let (_sender, state) = watch::channel(SyncStateDoc::default());
        TaskContext {
            task,
            clusters: world.clusters.clone(),
            checkpoints: CheckpointWriter::new(store, self.keys.clone(), task, token, self.holder.clone()),
            previous,
            state,
            cancel: CancellationToken::new(),
            counters: Arc::new(TaskCounters::new()),
            options: Arc::new(options),
            filter: Arc::new(NamespaceFilter::new(&[], &[]).expect("empty filter")),
            settings: Arc::new(settings),
            migration: "m1".into(),
        }
    }

    /// Releases a task's claim (as the runtime does after an attempt).
    pub async fn release(&self, task: TaskId) {
        self.store.delete(&self.keys.claim(task)).await.expect("release claim");
    }
}

/// Settings for tests: small batches, so batching and checkpoints are exercised.
pub fn small_batches(documents: usize) -> WorkerSettings {
    WorkerSettings { copy_batch_documents: documents, retry_budget: Duration::from_secs(30), ..Default::default() }
}
