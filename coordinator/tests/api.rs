//! The REST API over the embedded in-memory store, driven by a real HTTP client: every invalid
//! input gets its error name and status and leaves the state unchanged; the transitions work;
//! concurrent calls race safely; `/progress` aggregates what the store holds.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use clustersync_common::extjson::ExtDoc;
use clustersync_common::ids::{CollectionId, InstanceId, MigrationId, ShardId, TaskId};
use clustersync_common::keys::Keys;
use clustersync_common::model::{
    self, CdcCheckpoint, CdcStage, ChangeStreamTask, CheckpointDetail, ClaimValue, CollectionKind, CopyCheckpoint,
    CopyTask, Failure, IdRange, InstanceInfo, InstanceProgress, LeaderValue, Phase, PlannedCollection, Role,
    StartOptions, SyncState, SyncStateDoc, TaskCheckpoint, TaskProgress, TaskSpec, TaskStatus,
};
use clustersync_common::namespace::Namespace;
use clustersync_common::store::{
    EmbeddedStore, KeyValue, LeaseId, Revision, Store, StoreError, Txn, TxnResponse, WatchStream,
};
use clustersync_common::testing::{BeforeTxn, TxnHookStore};
use clustersync_coordinator::api;
use clustersync_coordinator::control::{Control, ERROR_NAMES};
use clustersync_coordinator::topology::{StaticClusters, Topology, TopologyError, TopologyKind};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// One API server on a free port over `store`.
struct TestApi {
    base: String,
    store: Arc<dyn Store>,
    keys: Keys,
    http: reqwest::Client,
    shutdown: CancellationToken,
}

impl Drop for TestApi {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn keys() -> Keys {
    Keys::new("/test", &MigrationId::new("m").unwrap()).unwrap()
}

async fn serve(store: Arc<dyn Store>, clusters: StaticClusters, instance: &str) -> TestApi {
    let control = Control::new(store.clone(), keys(), InstanceId::new(instance).unwrap(), Arc::new(clusters))
        .with_probe_timeout(Duration::from_secs(2));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    tokio::spawn(api::serve(listener, Arc::new(control), shutdown.clone()));
    TestApi { base, store, keys: keys(), http: reqwest::Client::new(), shutdown }
}

async fn spawn_with(clusters: StaticClusters) -> TestApi {
    serve(Arc::new(EmbeddedStore::in_memory()), clusters, "node-a").await
}

async fn spawn() -> TestApi {
    spawn_with(StaticClusters::replica_sets()).await
}

/// A reply: status and JSON body.
#[derive(Debug)]
struct Reply {
    status: u16,
    body: Value,
}

impl Reply {
    fn assert_ok(&self) {
        assert_eq!(self.status, 200, "{:?}", self.body);
        assert_eq!(self.body, json!({"success": true}));
    }

    fn assert_error(&self, status: u16, name: &str, text: &str) {
        assert_eq!(self.status, status, "{:?}", self.body);
        assert_eq!(self.body["success"], false, "{:?}", self.body);
        assert_eq!(self.body["error"], name, "{:?}", self.body);
        let description = self.body["errorDescription"].as_str().unwrap_or_default();
        assert!(description.contains(text), "{description:?} should contain {text:?}");
        assert_eq!(self.body.as_object().unwrap().len(), 3, "only success, error, errorDescription: {:?}", self.body);
    }
}

impl TestApi {
    /// POSTs `body` the way `curl --data` does (form content type).
    async fn post(&self, endpoint: &str, body: &str) -> Reply {
        let response = self
            .http
            .post(format!("{}/api/v1/{endpoint}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        Reply { status, body: response.json().await.unwrap() }
    }

    async fn progress(&self) -> Value {
        let response = self.http.get(format!("{}/api/v1/progress", self.base)).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["success"], true, "{body}");
        body["progress"].clone()
    }

    /// The raw state key: bytes and mod revision (None when absent).
    async fn raw_state(&self) -> Option<(Vec<u8>, Revision)> {
        self.store.get(&self.keys.state()).await.unwrap().map(|kv| (kv.value, kv.mod_revision))
    }

    async fn state(&self) -> SyncStateDoc {
        match self.store.get(&self.keys.state()).await.unwrap() {
            Some(kv) => model::decode(&kv.key, &kv.value).unwrap(),
            None => SyncStateDoc::default(),
        }
    }

    async fn put_state(&self, doc: &SyncStateDoc) {
        self.store.put(&self.keys.state(), model::encode(doc), None).await.unwrap();
    }

    async fn put<T: serde::Serialize>(&self, key: String, value: &T) {
        self.store.put(&key, model::encode(value), None).await.unwrap();
    }

    /// Makes the migration ready to commit: copy complete, one change stream live.
    async fn make_commit_ready(&self) {
        let mut doc = self.state().await;
        doc.phase = Phase::Running;
        doc.copy_completed_at_ms = Some(model::now_ms());
        self.put_state(&doc).await;
        self.put(self.keys.task(TaskId(1)), &change_stream_task("rs0")).await;
        self.put(self.keys.checkpoint(TaskId(1)), &cdc_checkpoint(CdcStage::Live, 42)).await;
    }
}

const START: &str = r#"{"source": "cluster0", "destination": "cluster1"}"#;

fn change_stream_task(shard: &str) -> TaskSpec {
    TaskSpec::ChangeStream(ChangeStreamTask { shard: ShardId::new(shard).unwrap(), start_at: Default::default() })
}

fn cdc_checkpoint(stage: CdcStage, applied: u64) -> TaskCheckpoint {
    TaskCheckpoint {
        status: TaskStatus::Running,
        detail: CheckpointDetail::ChangeStream(CdcCheckpoint {
            stage,
            events_applied: applied,
            events_spooled: applied + 1,
            repairs: 2,
            ..Default::default()
        }),
        holder: InstanceId::new("worker-1").unwrap(),
        updated_at_ms: model::now_ms(),
    }
}

#[tokio::test]
async fn progress_in_idle_is_null_but_state_and_can_commit() {
    let api = spawn().await;
    let progress = api.progress().await;
    assert_eq!(progress["state"], "IDLE");
    assert_eq!(progress["canCommit"], false);
    for (field, value) in progress.as_object().unwrap() {
        if field != "state" && field != "canCommit" {
            assert!(value.is_null(), "{field} is {value} in IDLE");
        }
    }
    for field in ["canWrite", "info", "lagTimeSeconds", "collectionCopy", "directionMapping", "mongosyncID"] {
        assert!(progress.get(field).is_some(), "{field} must be present (as null)");
    }
    assert_eq!(api.raw_state().await, None, "reading progress writes nothing");
}

#[tokio::test]
async fn start_records_the_options_and_enters_setup() {
    let api = spawn().await;
    api.post(
        "start",
        r#"{"source": "cluster0", "destination": "cluster1", "buildIndexes": "afterDataCopy",
            "includeNamespaces": [{"database": "sales", "collections": ["EMEA", "APAC"]}, {"database": "marketing"}],
            "verification": {"enabled": false}}"#,
    )
    .await
    .assert_ok();
    let doc = api.state().await;
    assert_eq!(doc.state, SyncState::Running);
    assert_eq!(doc.phase, Phase::Setup);
    assert_eq!(doc.setup_step, model::SetupStep::Start);
    assert!(doc.started_at_ms.is_some());
    let options = doc.options.unwrap();
    assert!(options.build_indexes.builds_after_copy());
    assert_eq!(options.include_namespaces.len(), 2);
    assert!(!options.verification.enabled);
    assert_eq!(doc.source_hosts.as_deref(), Some("c0.example:27017"));

    let progress = api.progress().await;
    assert_eq!(progress["state"], "RUNNING");
    assert_eq!(progress["phase"], "setup");
    assert_eq!(progress["info"], "collection copy");
    assert_eq!(progress["canCommit"], false);
    assert_eq!(progress["canWrite"], false);
    assert_eq!(progress["collectionCopy"], json!({"estimatedTotalBytes": 1, "estimatedCopiedBytes": 0}));
    assert_eq!(
        progress["directionMapping"],
        json!({"Source": "cluster0: c0.example:27017", "Destination": "cluster1: c1.example:27017"})
    );
    assert_eq!(progress["mongosyncID"], "node-a");
    assert_eq!(progress["verification"]["source"]["phase"], "disabled");
}

#[tokio::test]
async fn start_in_the_reverse_direction_maps_clusters_accordingly() {
    let api = spawn().await;
    api.post("start", r#"{"source": "cluster1", "destination": "cluster0"}"#).await.assert_ok();
    let progress = api.progress().await;
    assert_eq!(progress["directionMapping"]["Source"], "cluster1: c1.example:27017");
    assert_eq!(progress["directionMapping"]["Destination"], "cluster0: c0.example:27017");
}

#[tokio::test]
async fn every_invalid_start_is_refused_and_changes_nothing() {
    let api = spawn().await;
    let cases: &[(&str, u16, &str, &str)] = &[
        // Syntax and shape.
        (r#"{"source": "cluster0", "destination": "cluster1""#, 400, "InvalidRequest", "line 1 column"),
        ("", 400, "InvalidRequest", "body is empty"),
        ("[]", 400, "InvalidRequest", "must be a JSON object"),
        ("source=cluster0&destination=cluster1", 400, "InvalidRequest", "not valid JSON"),
        (
            r#"{"source": "cluster0", "destination": "cluster1", "loadLevel": 3}"#,
            400,
            "InvalidRequest",
            "\"loadLevel\"",
        ),
        (r#"{"destination": "cluster1"}"#, 400, "InvalidRequest", "missing required field \"source\""),
        (r#"{"source": "cluster0"}"#, 400, "InvalidRequest", "missing required field \"destination\""),
        (r#"{"source": 0, "destination": "cluster1"}"#, 400, "InvalidRequest", "\"source\" must be a string"),
        (
            r#"{"source": "cluster0", "destination": "cluster1", "reversible": "true"}"#,
            400,
            "InvalidRequest",
            "\"reversible\" must be a boolean",
        ),
        (
            r#"{"source": "cluster0", "destination": "cluster1", "verification": {"enabled": 1}}"#,
            400,
            "InvalidRequest",
            "verification.enabled",
        ),
        (
            r#"{"source": "cluster0", "destination": "cluster1", "verification": {"enable": false}}"#,
            400,
            "InvalidRequest",
            "enable",
        ),
        (
            r#"{"source": "cluster0", "destination": "cluster1", "sharding": []}"#,
            400,
            "InvalidRequest",
            "\"sharding\" must be an object",
        ),
        // Values.
        (
            r#"{"source": "cluster3", "destination": "cluster1"}"#,
            400,
            "InvalidOption",
            "source must be \"cluster0\" or \"cluster1\"",
        ),
        (r#"{"source": "cluster0", "destination": "Cluster1"}"#, 400, "InvalidOption", "destination must be"),
        (r#"{"source": "cluster0", "destination": "cluster0"}"#, 400, "InvalidOption", "both \"cluster0\""),
        (
            r#"{"source": "cluster0", "destination": "cluster1", "buildIndexes": "later"}"#,
            400,
            "InvalidOption",
            "buildIndexes must be one of",
        ),
        (
            r#"{"source": "cluster0", "destination": "cluster1", "enableUserWriteBlocking": "always"}"#,
            400,
            "InvalidOption",
            "enableUserWriteBlocking must be one of",
        ),
        (
            r#"{"source": "cluster0", "destination": "cluster1", "enableUserWriteBlocking": 1}"#,
            400,
            "InvalidRequest",
            "a string or a boolean",
        ),
        // Filters.
        (
            r#"{"source": "cluster0", "destination": "cluster1", "includeNamespaces": [{"database": "a", "collectionsRegex": {"pattern": "([", "options": ""}}]}"#,
            400,
            "InvalidNamespaceFilter",
            "includeNamespaces[0]",
        ),
        (
            r#"{"source": "cluster0", "destination": "cluster1", "excludeNamespaces": [{"collections": ["x"]}]}"#,
            400,
            "InvalidNamespaceFilter",
            "excludeNamespaces[0]",
        ),
        (
            r#"{"source": "cluster0", "destination": "cluster1", "includeNamespaces": [{"database": "a", "colections": ["x"]}]}"#,
            400,
            "InvalidNamespaceFilter",
            "colections",
        ),
        (
            r#"{"source": "cluster0", "destination": "cluster1", "includeNamespaces": [{"database": "a", "collectionsRegex": {"pattern": "x", "options": "g"}}]}"#,
            400,
            "InvalidNamespaceFilter",
            "unsupported regex option",
        ),
        // Combinations.
        (
            r#"{"source": "cluster0", "destination": "cluster1", "buildIndexes": "never", "reversible": true, "enableUserWriteBlocking": true}"#,
            400,
            "InvalidOption",
            "buildIndexes: \"never\"",
        ),
        (
            r#"{"source": "cluster0", "destination": "cluster1", "reversible": true}"#,
            400,
            "InvalidOption",
            "sourceAndDestination",
        ),
        (
            r#"{"source": "cluster0", "destination": "cluster1", "reversible": true, "enableUserWriteBlocking": false}"#,
            400,
            "InvalidOption",
            "sourceAndDestination",
        ),
        (
            r#"{"source": "cluster0", "destination": "cluster1", "reversible": true, "enableUserWriteBlocking": "sourceAndDestination", "includeNamespaces": [{"database": "a"}]}"#,
            400,
            "InvalidOption",
            "includeNamespaces or excludeNamespaces",
        ),
        // Topology: both clusters are replica sets here.
        (
            r#"{"source": "cluster0", "destination": "cluster1", "sharding": {"shardingEntries": [{"database": "a", "collection": "b", "shardCollection": {"key": [{"x": 1}]}}]}}"#,
            400,
            "InvalidOption",
            "destination cluster1 is a replica set",
        ),
        (
            r#"{"source": "cluster0", "destination": "cluster1", "sharding": {"shardingEntries": [{"database": "a", "collection": "b", "shardCollection": {"key": [{"x": 2}]}}]}}"#,
            400,
            "InvalidOption",
            "must be 1 or \"hashed\"",
        ),
    ];
    for (body, status, name, text) in cases {
        let reply = api.post("start", body).await;
        assert_eq!(reply.status, *status, "{body}: {:?}", reply.body);
        reply.assert_error(*status, name, text);
        assert!(ERROR_NAMES.contains(name));
        assert_eq!(api.raw_state().await, None, "{body} must leave the state unchanged");
    }
    // And a valid start still works afterwards.
    api.post("start", START).await.assert_ok();
}

#[tokio::test]
async fn verification_with_build_indexes_never_is_accepted() {
    let api = spawn().await;
    api.post("start", r#"{"source": "cluster0", "destination": "cluster1", "buildIndexes": "never", "verification": {"enabled": true}}"#)
        .await
        .assert_ok();
    assert_eq!(api.state().await.options.unwrap().build_indexes, model::BuildIndexes::Never);
}

#[tokio::test]
async fn sharding_follows_the_clusters_topology() {
    let sharding = r#"{"source": "cluster0", "destination": "cluster1", "sharding": {"createSupportingIndexes": true,
        "shardingEntries": [{"database": "accounts", "collection": "us_east", "shardCollection": {"key": [{"location": 1}, {"region": 1}]}}]}}"#;

    // Replica set → sharded: the option is required, and accepted.
    let to_sharded =
        StaticClusters::new(Topology::replica_set("rs0", "7.0.12"), Topology::sharded(&["s0", "s1", "s2"], "7.0.12"));
    let api = spawn_with(to_sharded.clone()).await;
    api.post("start", START).await.assert_error(400, "InvalidOption", "needs the sharding option");
    assert_eq!(api.raw_state().await, None);
    api.post(
        "start",
        r#"{"source": "cluster0", "destination": "cluster1", "reversible": true, "enableUserWriteBlocking": true,
        "sharding": {"shardingEntries": []}}"#,
    )
    .await
    .assert_error(400, "InvalidOption", "same shape");
    assert_eq!(api.raw_state().await, None);
    api.post("start", sharding).await.assert_ok();
    let options = api.state().await.options.unwrap();
    assert!(options.sharding.unwrap().create_supporting_indexes);

    // Sharded → sharded: the option is an error.
    let api =
        spawn_with(StaticClusters::new(Topology::sharded(&["a"], "7.0.0"), Topology::sharded(&["b"], "7.0.0"))).await;
    api.post("start", sharding).await.assert_error(400, "InvalidOption", "source cluster0 is a sharded cluster");
    assert_eq!(api.raw_state().await, None);
    api.post("start", START).await.assert_ok();

    // Sharded → replica set (from cluster1 to cluster0): the option is an error too.
    let api = spawn_with(to_sharded).await;
    let reverse_direction = sharding.replace(
        "\"source\": \"cluster0\", \"destination\": \"cluster1\"",
        "\"source\": \"cluster1\", \"destination\": \"cluster0\"",
    );
    api.post("start", &reverse_direction).await.assert_error(
        400,
        "InvalidOption",
        "source cluster1 is a sharded cluster",
    );
    assert_eq!(api.raw_state().await, None);
}

#[tokio::test]
async fn unsupported_or_unreachable_clusters_are_refused() {
    let standalone = Topology { kind: TopologyKind::Standalone, version: "7.0.0".into() };
    let api = spawn_with(StaticClusters::new(standalone, Topology::replica_set("rs1", "7.0.0"))).await;
    api.post("start", START).await.assert_error(400, "UnsupportedTopology", "change streams need a replica set");
    assert_eq!(api.raw_state().await, None);

    let api =
        spawn_with(StaticClusters::new(Topology::replica_set("rs0", "7.0.0"), Topology::replica_set("rs1", "5.0.9")))
            .await;
    api.post("start", START).await.assert_error(
        400,
        "UnsupportedTopology",
        "cluster1 (the destination) runs MongoDB 5.0.9",
    );
    assert_eq!(api.raw_state().await, None);

    let mut unreachable = StaticClusters::replica_sets();
    unreachable.cluster1 =
        Err(TopologyError::Command { command: "hello", reason: "server selection timeout".into(), retryable: true });
    let api = spawn_with(unreachable).await;
    api.post("start", START).await.assert_error(503, "ClusterUnavailable", "cluster1 (the destination)");
    assert_eq!(api.raw_state().await, None);
}

#[tokio::test]
async fn lifecycle_start_pause_resume_commit() {
    let api = spawn().await;
    api.post("start", START).await.assert_ok();
    api.post("start", START).await.assert_error(409, "InvalidState", "already been started");

    let mut doc = api.state().await;
    doc.phase = Phase::Snapshot;
    doc.setup_step = model::SetupStep::Planned;
    api.put_state(&doc).await;

    api.post("pause", "").await.assert_ok();
    let doc = api.state().await;
    assert_eq!((doc.state, doc.phase, doc.paused_phase), (SyncState::Paused, Phase::Paused, Some(Phase::Snapshot)));
    let progress = api.progress().await;
    assert_eq!(progress["state"], "PAUSED");
    assert_eq!(progress["phase"], "paused");
    assert!(progress["lagTimeSeconds"].is_null());

    api.post("pause", "{}").await.assert_error(409, "InvalidState", "only allowed in RUNNING");
    api.post("commit", "{}").await.assert_error(409, "InvalidState", "call /resume first");
    api.post("resume", "{}").await.assert_ok();
    let doc = api.state().await;
    assert_eq!((doc.state, doc.phase, doc.paused_phase), (SyncState::Running, Phase::Snapshot, None));
    api.post("resume", "{}").await.assert_error(409, "InvalidState", "only allowed in PAUSED");

    // Not ready: the copy is still running.
    let before = api.raw_state().await;
    api.post("commit", "{}").await.assert_error(409, "CommitNotReady", "copy is not finished");
    assert_eq!(api.raw_state().await, before);

    // Copy complete but the change stream is still draining its spool.
    api.make_commit_ready().await;
    api.put(api.keys.checkpoint(TaskId(1)), &cdc_checkpoint(CdcStage::Draining, 1)).await;
    let before = api.raw_state().await;
    api.post("commit", "{}").await.assert_error(409, "CommitNotReady", "task 1 is applying the events spooled");
    assert_eq!(api.raw_state().await, before);
    assert_eq!(api.progress().await["canCommit"], false);

    api.put(api.keys.checkpoint(TaskId(1)), &cdc_checkpoint(CdcStage::Live, 7)).await;
    let progress = api.progress().await;
    assert_eq!(progress["canCommit"], true);
    assert_eq!(progress["info"], "change event application");
    api.post("commit", "").await.assert_ok();
    let doc = api.state().await;
    assert_eq!((doc.state, doc.phase), (SyncState::Committing, Phase::Committing));
    let commit = doc.commit.unwrap();
    assert_eq!(commit.step, model::CommitStep::Requested);
    assert!(uuid::Uuid::parse_str(&commit.marker_id).is_ok(), "{}", commit.marker_id);
    assert_eq!(api.progress().await["info"], "waiting for commit to complete");

    api.post("commit", "{}").await.assert_error(409, "InvalidState", "commit is already in progress");
    api.post("pause", "{}").await.assert_error(409, "InvalidState", "COMMITTING");
    api.post("reverse", "{}").await.assert_error(409, "InvalidState", "only allowed in COMMITTED");
}

#[tokio::test]
async fn operations_in_the_wrong_state_are_refused_without_a_write() {
    let api = spawn().await;
    for endpoint in ["pause", "resume", "commit", "reverse"] {
        api.post(endpoint, "{}").await.assert_error(409, "InvalidState", "while the migration is IDLE");
        assert_eq!(api.raw_state().await, None, "{endpoint}");
    }
    let failed = SyncStateDoc {
        state: SyncState::Failed,
        phase: Phase::Failed,
        failure: Some(Failure {
            error: "ChangeStreamHistoryLost".into(),
            description: "the resume point is no longer in the oplog of shard rs0".into(),
            namespace: None,
            range: None,
            at_ms: 1,
        }),
        ..Default::default()
    };
    api.put_state(&failed).await;
    let before = api.raw_state().await;
    for endpoint in ["pause", "resume", "commit", "start"] {
        let body = if endpoint == "start" { START } else { "{}" };
        api.post(endpoint, body).await.assert_error(409, "InvalidState", "ChangeStreamHistoryLost");
        assert_eq!(api.raw_state().await, before, "{endpoint}");
    }
    let progress = api.progress().await;
    assert_eq!(progress["state"], "FAILED");
    assert_eq!(progress["error"], "ChangeStreamHistoryLost");
    assert!(progress["errorDescription"].as_str().unwrap().contains("shard rs0"));
}

#[tokio::test]
async fn bodies_of_parameterless_endpoints_are_checked_before_the_state() {
    let api = spawn().await;
    api.post("start", START).await.assert_ok();
    let before = api.raw_state().await;
    api.post("pause", r#"{"now": true}"#).await.assert_error(400, "InvalidRequest", "/pause takes no parameters");
    api.post("pause", "{").await.assert_error(400, "InvalidRequest", "not valid JSON");
    api.post("pause", "[]").await.assert_error(400, "InvalidRequest", "must be a JSON object");
    assert_eq!(api.raw_state().await, before);
    api.post("pause", "{ }").await.assert_ok();
}

#[tokio::test]
async fn reverse_is_not_supported_yet() {
    let api = spawn().await;
    let committed = |reversible: bool| SyncStateDoc {
        state: SyncState::Committed,
        phase: Phase::Completed,
        can_write: true,
        options: Some(
            serde_json::from_value::<StartOptions>(json!({"source": "cluster0", "destination": "cluster1",
                "reversible": reversible, "enableUserWriteBlocking": reversible}))
            .unwrap(),
        ),
        ..Default::default()
    };
    api.put_state(&committed(true)).await;
    let before = api.raw_state().await;
    api.post("reverse", "{}").await.assert_error(501, "NotSupported", "reverse sync is not supported yet");
    assert_eq!(api.raw_state().await, before);
    let progress = api.progress().await;
    assert_eq!(progress["info"], "commit completed");
    assert_eq!(progress["canWrite"], true);
    assert_eq!(progress["lagTimeSeconds"], 0);

    api.put_state(&committed(false)).await;
    api.post("reverse", "").await.assert_error(409, "InvalidState", "reversible");
}

#[tokio::test]
async fn concurrent_pauses_have_exactly_one_winner() {
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::in_memory());
    // Two instances over one store, as two coordinators over one etcd.
    let first = serve(store.clone(), StaticClusters::replica_sets(), "node-a").await;
    let second = serve(store.clone(), StaticClusters::replica_sets(), "node-b").await;
    first.post("start", START).await.assert_ok();

    for round in 0..3 {
        let calls = (0..8).map(|i| {
            let api = if i % 2 == 0 { &first } else { &second };
            api.post("pause", "{}")
        });
        let replies = futures::future::join_all(calls).await;
        let winners = replies.iter().filter(|reply| reply.status == 200).count();
        assert_eq!(winners, 1, "round {round}: {replies:?}");
        for reply in replies.iter().filter(|reply| reply.status != 200) {
            reply.assert_error(409, "InvalidState", "PAUSED");
        }
        assert_eq!(first.state().await.state, SyncState::Paused);

        let replies = futures::future::join_all((0..8).map(|i| {
            let api = if i % 2 == 0 { &first } else { &second };
            api.post("resume", "{}")
        }))
        .await;
        assert_eq!(replies.iter().filter(|reply| reply.status == 200).count(), 1, "{replies:?}");
        assert_eq!(second.state().await.state, SyncState::Running);
    }

    let second_progress = second.progress().await;
    assert_eq!(second_progress["mongosyncID"], "node-b");
    assert_eq!(second_progress["state"], "RUNNING");
}

#[tokio::test]
async fn concurrent_starts_have_exactly_one_winner() {
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::in_memory());
    let first = serve(store.clone(), StaticClusters::replica_sets(), "node-a").await;
    let second = serve(store, StaticClusters::replica_sets(), "node-b").await;
    let bodies = [START, r#"{"source": "cluster1", "destination": "cluster0"}"#];
    let replies = futures::future::join_all((0..6).map(|i| {
        let api = if i % 2 == 0 { &first } else { &second };
        api.post("start", bodies[i % 2])
    }))
    .await;
    assert_eq!(replies.iter().filter(|reply| reply.status == 200).count(), 1, "{replies:?}");
    for reply in replies.iter().filter(|reply| reply.status != 200) {
        reply.assert_error(409, "InvalidState", "already been started");
    }
}

#[tokio::test]
async fn progress_aggregates_plan_tasks_checkpoints_and_fleet() {
    let api = spawn().await;
    let keys = &api.keys;
    let worker = InstanceId::new("worker-1").unwrap();
    let coordinator = InstanceId::new("node-a").unwrap();
    let mut doc = SyncStateDoc {
        state: SyncState::Running,
        phase: Phase::Snapshot,
        options: Some(serde_json::from_value(json!({"source": "cluster0", "destination": "cluster1"})).unwrap()),
        setup_step: model::SetupStep::Planned,
        source_hosts: Some("src1:27017,src2:27017".into()),
        destination_hosts: Some("dst:27017".into()),
        ..Default::default()
    };
    api.put_state(&doc).await;
    for (id, ns, bytes, documents) in [(1, "shop.orders", 3000, 30), (2, "shop.users", 1000, 10)] {
        api.put(
            keys.planned_collection(CollectionId(id)),
            &PlannedCollection {
                id: CollectionId(id),
                ns: Namespace::parse(ns).unwrap(),
                kind: CollectionKind::Collection,
                options: ExtDoc::default(),
                source_uuid: None,
                estimated_documents: documents,
                estimated_bytes: bytes,
                partitions: if id == 1 { 2 } else { 1 },
            },
        )
        .await;
    }
    let copy = |collection: u64, ns: &str, bytes: u64| {
        TaskSpec::Copy(CopyTask {
            collection: CollectionId(collection),
            ns: Namespace::parse(ns).unwrap(),
            range: IdRange::whole_collection(),
            natural_order: false,
            estimated_documents: bytes / 100,
            estimated_bytes: bytes,
        })
    };
    api.put(keys.task(TaskId(1)), &change_stream_task("rs0")).await;
    api.put(keys.task(TaskId(1000)), &copy(1, "shop.orders", 1500)).await;
    api.put(keys.task(TaskId(1001)), &copy(1, "shop.orders", 1500)).await;
    api.put(keys.task(TaskId(1002)), &copy(2, "shop.users", 1000)).await;
    let copied = |status, documents, bytes| TaskCheckpoint {
        status,
        detail: CheckpointDetail::Copy(CopyCheckpoint {
            documents_copied: documents,
            bytes_copied: bytes,
            ..Default::default()
        }),
        holder: worker.clone(),
        updated_at_ms: 1,
    };
    api.put(keys.checkpoint(TaskId(1000)), &copied(TaskStatus::Done, 15, 1500)).await;
    api.put(keys.checkpoint(TaskId(1001)), &copied(TaskStatus::Running, 5, 500)).await;
    api.put(keys.checkpoint(TaskId(1)), &cdc_checkpoint(CdcStage::Spooling, 0)).await;
    api.put(keys.claim(TaskId(1001)), &ClaimValue { holder: worker.clone(), claimed_at_ms: 1 }).await;
    api.put(keys.claim(TaskId(1)), &ClaimValue { holder: worker.clone(), claimed_at_ms: 1 }).await;
    api.put(
        keys.instance(&worker),
        &InstanceInfo {
            id: worker.clone(),
            roles: vec![Role::Worker],
            api_address: None,
            grpc_address: None,
            hostname: "vm-7".into(),
            pid: 42,
            version: "0.1.0".into(),
            started_at_ms: 1,
            task_slots: 4,
        },
    )
    .await;
    api.put(
        keys.instance(&coordinator),
        &InstanceInfo {
            id: coordinator.clone(),
            roles: vec![Role::Coordinator],
            api_address: Some("127.0.0.1:27182".into()),
            grpc_address: None,
            hostname: "vm-1".into(),
            pid: 7,
            version: "0.1.0".into(),
            started_at_ms: 1,
            task_slots: 0,
        },
    )
    .await;
    api.put(
        keys.progress(&worker),
        &InstanceProgress {
            tasks: vec![TaskProgress {
                task: TaskId(1001),
                kind: "copy".into(),
                ns: Some("shop.orders".into()),
                documents: 6,
                bytes: 600,
            }],
            events_applied: 0,
            lag_seconds: Some(3.2),
            cdc_stage: Some(CdcStage::Spooling),
            updated_at_ms: 1,
        },
    )
    .await;
    api.put(keys.leader(), &LeaderValue { instance: coordinator.clone(), since_ms: 1 }).await;
    // A value another version wrote is skipped, not fatal.
    api.store.put(&keys.task(TaskId(1003)), b"{not json".to_vec(), None).await.unwrap();

    let progress = api.progress().await;
    assert_eq!(progress["state"], "RUNNING");
    assert_eq!(progress["phase"], "snapshot");
    assert_eq!(progress["info"], "collection copy");
    assert_eq!(progress["collectionCopy"], json!({"estimatedTotalBytes": 4000, "estimatedCopiedBytes": 2100}));
    assert_eq!(progress["coordinatorID"], "node-a");
    assert_eq!(progress["mongosyncID"], "node-a");
    assert_eq!(progress["lagTimeSeconds"], 3);
    assert_eq!(progress["directionMapping"]["Source"], "cluster0: src1:27017,src2:27017");
    assert_eq!(
        progress["collections"],
        json!([
            {"namespace": "shop.orders", "estimatedTotalBytes": 3000, "estimatedCopiedBytes": 2100, "documentsCopied": 21, "documentsRecopied": 0, "partitions": 2, "partitionsDone": 1},
            {"namespace": "shop.users", "estimatedTotalBytes": 1000, "estimatedCopiedBytes": 0, "documentsCopied": 0, "documentsRecopied": 0, "partitions": 1, "partitionsDone": 0}
        ])
    );
    assert_eq!(progress["changeStream"]["stage"], "spooling");
    assert_eq!(progress["verification"]["source"]["phase"], "not started");
    assert_eq!(progress["verification"]["source"]["estimatedDocumentCount"], 40);
    assert_eq!(progress["verification"]["source"]["totalCollectionCount"], 2);
    let fleet = &progress["fleet"];
    assert_eq!(fleet["leader"], "node-a");
    let instances = fleet["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 2);
    assert_eq!(instances[0]["id"], "node-a");
    assert_eq!(instances[0]["roles"], json!(["coordinator"]));
    assert_eq!(instances[0]["apiAddress"], "127.0.0.1:27182");
    assert_eq!(instances[1]["id"], "worker-1");
    assert_eq!(instances[1]["hostname"], "vm-7");
    assert_eq!(instances[1]["lagTimeSeconds"], 3);
    let tasks = instances[1]["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 2);
    assert_eq!(tasks[0]["kind"], "changeStream");
    assert_eq!(tasks[0]["shard"], "rs0");
    assert!(tasks[0]["namespace"].is_null());
    assert_eq!(
        tasks[1],
        json!({"id": 1001, "kind": "copy", "namespace": "shop.orders", "shard": null, "documents": 6, "bytes": 600})
    );

    // Copy complete, stream live: can commit; events and repairs add up.
    doc.phase = Phase::Running;
    doc.copy_completed_at_ms = Some(1);
    api.put_state(&doc).await;
    api.put(keys.checkpoint(TaskId(1)), &cdc_checkpoint(CdcStage::Live, 99)).await;
    let progress = api.progress().await;
    assert_eq!(progress["canCommit"], true);
    assert_eq!(progress["totalEventsApplied"], 99);
    assert_eq!(
        progress["changeStream"],
        json!({"stage": "live", "tasks": 1, "eventsApplied": 99, "eventsSpooled": 100, "repairs": 2})
    );
}

#[tokio::test]
async fn progress_stays_cheap_with_thousands_of_tasks() {
    let api = spawn().await;
    let doc = SyncStateDoc {
        state: SyncState::Running,
        phase: Phase::Snapshot,
        options: Some(serde_json::from_value(json!({"source": "cluster0", "destination": "cluster1"})).unwrap()),
        ..Default::default()
    };
    api.put_state(&doc).await;
    let worker = InstanceId::new("w").unwrap();
    for id in 0..3000u64 {
        let task = TaskSpec::Copy(CopyTask {
            collection: CollectionId(id % 10),
            ns: Namespace::new("db", format!("c{}", id % 10)),
            range: IdRange::whole_collection(),
            natural_order: false,
            estimated_documents: 10,
            estimated_bytes: 1000,
        });
        api.put(api.keys.task(TaskId(1000 + id)), &task).await;
        let checkpoint = TaskCheckpoint {
            status: if (id / 10) % 2 == 0 { TaskStatus::Done } else { TaskStatus::Running },
            detail: CheckpointDetail::Copy(CopyCheckpoint {
                documents_copied: 10,
                bytes_copied: 1000,
                ..Default::default()
            }),
            holder: worker.clone(),
            updated_at_ms: 1,
        };
        api.put(api.keys.checkpoint(TaskId(1000 + id)), &checkpoint).await;
    }
    let started = std::time::Instant::now();
    let progress = api.progress().await;
    let elapsed = started.elapsed();
    assert_eq!(progress["collectionCopy"]["estimatedTotalBytes"], 3_000_000);
    assert_eq!(progress["collectionCopy"]["estimatedCopiedBytes"], 3_000_000);
    let collections = progress["collections"].as_array().unwrap();
    assert_eq!(collections.len(), 10);
    assert_eq!(collections[0]["partitions"], 300);
    assert_eq!(collections[0]["partitionsDone"], 150);
    assert!(elapsed < Duration::from_secs(5), "progress over 6000 keys took {elapsed:?}");
}

#[tokio::test]
async fn unknown_routes_and_methods_get_json_errors() {
    let api = spawn().await;
    let response = api.http.get(format!("{}/api/v1/status", api.base)).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "NotFound");
    assert!(body["errorDescription"].as_str().unwrap().contains("/api/v1/status"));

    let response = api.http.get(format!("{}/api/v1/start", api.base)).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 405);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "MethodNotAllowed");
    assert!(body["errorDescription"].as_str().unwrap().contains("use POST"));

    let response = api.http.post(format!("{}/api/v1/progress", api.base)).body("{}").send().await.unwrap();
    assert_eq!(response.status().as_u16(), 405);

    let big = format!("{{\"source\": \"{}\"}}", "x".repeat(2 * 1024 * 1024));
    let reply = api.post("start", &big).await;
    reply.assert_error(413, "PayloadTooLarge", "larger than");
    assert_eq!(api.raw_state().await, None);
}

#[tokio::test]
async fn a_corrupt_state_document_is_an_internal_error() {
    let api = spawn().await;
    api.store.put(&api.keys.state(), b"{\"state\": \"SLEEPING\"}".to_vec(), None).await.unwrap();
    api.post("pause", "{}").await.assert_error(500, "InternalError", "/test/m/state");
    let response = api.http.get(format!("{}/api/v1/progress", api.base)).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 500);
}

/// A store that fails every call, as an unreachable etcd.
struct DownStore;

#[async_trait]
impl Store for DownStore {
    async fn get(&self, _: &str) -> Result<Option<KeyValue>, StoreError> {
        Err(StoreError::unavailable("etcd at 127.0.0.1:1 did not answer"))
    }
    async fn get_prefix(&self, _: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        Err(StoreError::unavailable("down"))
    }
    async fn put(&self, _: &str, _: Vec<u8>, _: Option<LeaseId>) -> Result<Revision, StoreError> {
        Err(StoreError::unavailable("down"))
    }
    async fn delete(&self, _: &str) -> Result<u64, StoreError> {
        Err(StoreError::unavailable("down"))
    }
    async fn delete_prefix(&self, _: &str) -> Result<u64, StoreError> {
        Err(StoreError::unavailable("down"))
    }
    async fn txn(&self, _: Txn) -> Result<TxnResponse, StoreError> {
        Err(StoreError::unavailable("down"))
    }
    async fn grant_lease(&self, _: Duration) -> Result<LeaseId, StoreError> {
        Err(StoreError::unavailable("down"))
    }
    async fn keep_alive(&self, _: LeaseId) -> Result<Duration, StoreError> {
        Err(StoreError::unavailable("down"))
    }
    async fn revoke_lease(&self, _: LeaseId) -> Result<(), StoreError> {
        Err(StoreError::unavailable("down"))
    }
    async fn watch_prefix(&self, _: &str, _: Option<Revision>) -> Result<WatchStream, StoreError> {
        Err(StoreError::unavailable("down"))
    }
    fn kind(&self) -> &'static str {
        "down"
    }
}

#[tokio::test]
async fn an_unavailable_store_is_a_503() {
    let api = serve(Arc::new(DownStore), StaticClusters::replica_sets(), "node-a").await;
    api.post("start", START).await.assert_error(503, "StoreUnavailable", "did not answer");
    api.post("pause", "{}").await.assert_error(503, "StoreUnavailable", "coordination store unavailable");
    let response = api.http.get(format!("{}/api/v1/progress", api.base)).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "StoreUnavailable");
}

/// Once armed, writes `interference` to the state key just before the next txn: what the
/// leader does when it moves the phase on while an API call is in flight.
struct Interference {
    state_key: String,
    value: Mutex<Option<Vec<u8>>>,
    armed: AtomicBool,
}

#[async_trait]
impl BeforeTxn for Interference {
    async fn before_txn(&self, inner: &EmbeddedStore, _: &Txn) -> Result<(), StoreError> {
        if self.armed.swap(false, Ordering::SeqCst) {
            let value = self.value.lock().unwrap().take();
            if let Some(value) = value {
                inner.put(&self.state_key, value, None).await?;
            }
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_concurrent_leader_write_is_retried_or_refused_on_the_new_state() {
    let interfering = Arc::new(TxnHookStore::in_memory(Interference {
        state_key: keys().state(),
        value: Default::default(),
        armed: AtomicBool::new(false),
    }));
    let api = serve(interfering.clone(), StaticClusters::replica_sets(), "node-a").await;
    api.post("start", START).await.assert_ok();

    // The leader moves setup → snapshot while /pause is in flight: the pause is re-evaluated on
    // the new document and still applies, remembering the new phase.
    let mut moved = api.state().await;
    moved.phase = Phase::Snapshot;
    moved.setup_step = model::SetupStep::Planned;
    *interfering.hook.value.lock().unwrap() = Some(model::encode(&moved));
    interfering.hook.armed.store(true, Ordering::SeqCst);
    api.post("pause", "{}").await.assert_ok();
    let doc = api.state().await;
    assert_eq!(
        (doc.state, doc.paused_phase, doc.setup_step),
        (SyncState::Paused, Some(Phase::Snapshot), model::SetupStep::Planned)
    );

    // The migration fails while /resume is in flight: refused on the new state, nothing written.
    let failed = SyncStateDoc {
        state: SyncState::Failed,
        phase: Phase::Failed,
        failure: Some(Failure { error: "X".into(), description: "y".into(), namespace: None, range: None, at_ms: 1 }),
        ..doc.clone()
    };
    *interfering.hook.value.lock().unwrap() = Some(model::encode(&failed));
    interfering.hook.armed.store(true, Ordering::SeqCst);
    api.post("resume", "{}").await.assert_error(409, "InvalidState", "FAILED");
    assert_eq!(api.state().await, failed);
}

#[tokio::test]
async fn every_error_name_is_documented() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/API.md")).unwrap();
    for name in ERROR_NAMES.iter().chain(&["NotFound", "MethodNotAllowed", "PayloadTooLarge"]) {
        assert!(doc.contains(&format!("`{name}`")), "docs/API.md does not list {name}");
    }
}
