//! The gRPC API over the embedded in-memory store, driven by a real tonic client, next to the
//! REST API over the same `Control`: both accept and refuse the same requests with the same error
//! names (and, where the rule is `Control`'s, the same descriptions); progress reads the same;
//! `WatchProgress` follows state changes and keeps a heartbeat; racing pauses and resumes on two
//! instances leave a consistent state.

use std::sync::Arc;
use std::time::Duration;

use clustersync_common::ids::{InstanceId, MigrationId, ShardId, TaskId};
use clustersync_common::keys::Keys;
use clustersync_common::model::{
    self, CdcCheckpoint, CdcStage, ChangeStreamTask, CheckpointDetail, Phase, StartOptions, SyncState, SyncStateDoc,
    TaskCheckpoint, TaskSpec, TaskStatus,
};
use clustersync_common::store::{EmbeddedStore, Revision, Store};
use clustersync_coordinator::control::Control;
use clustersync_coordinator::grpc::{self, convert};
use clustersync_coordinator::progress::Progress;
use clustersync_coordinator::topology::{StaticClusters, Topology, TopologyError};
use clustersync_coordinator::{api, cli};
use clustersync_proto::v1::control_client::ControlClient as PbControlClient;
use clustersync_proto::v1::{
    BuildIndexes as PbBuildIndexes, Cluster as PbCluster, CommitRequest as PbCommitRequest,
    NamespaceFilter as PbNamespaceFilter, PauseRequest as PbPauseRequest, Phase as PbPhase,
    ProgressRequest as PbProgressRequest, RegexSpec as PbRegexSpec, ResumeRequest as PbResumeRequest,
    ReverseRequest as PbReverseRequest, ShardCollection as PbShardCollection, ShardKeyField as PbShardKeyField,
    ShardKeyType as PbShardKeyType, ShardingEntry as PbShardingEntry, ShardingOptions as PbShardingOptions,
    StartRequest as PbStartRequest, SyncState as PbSyncState, VerificationOptions as PbVerificationOptions,
    WatchProgressRequest as PbWatchProgressRequest, WriteBlocking as PbWriteBlocking,
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;

/// One instance: a `Control` served over REST and gRPC on free ports.
struct Instance {
    rest: String,
    grpc: PbControlClient<Channel>,
    store: Arc<dyn Store>,
    keys: Keys,
    http: reqwest::Client,
    shutdown: CancellationToken,
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn keys() -> Keys {
    Keys::new("/test", &MigrationId::new("m").unwrap()).unwrap()
}

async fn serve(store: Arc<dyn Store>, clusters: StaticClusters, id: &str) -> Instance {
    let control = Arc::new(
        Control::new(store.clone(), keys(), InstanceId::new(id).unwrap(), Arc::new(clusters))
            .with_probe_timeout(Duration::from_secs(2)),
    );
    let shutdown = CancellationToken::new();
    let rest_listener = api::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let rest = format!("http://{}/api/v1", rest_listener.local_addr().unwrap());
    tokio::spawn(api::serve(rest_listener, control.clone(), shutdown.clone()));
    let grpc_listener = grpc::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let grpc_address = format!("http://{}", grpc_listener.local_addr().unwrap());
    tokio::spawn(grpc::serve(grpc_listener, control, shutdown.clone()));
    let grpc = PbControlClient::connect(grpc_address).await.unwrap();
    Instance { rest, grpc, store, keys: keys(), http: reqwest::Client::new(), shutdown }
}

async fn spawn_with(clusters: StaticClusters) -> Instance {
    serve(Arc::new(EmbeddedStore::in_memory()), clusters, "node-a").await
}

async fn spawn() -> Instance {
    spawn_with(StaticClusters::replica_sets()).await
}

fn plain_start() -> PbStartRequest {
    PbStartRequest { source: PbCluster::Cluster0 as i32, destination: PbCluster::Cluster1 as i32, ..Default::default() }
}

/// A refusal as both APIs report it: the error name and the description.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Refusal {
    name: String,
    description: String,
}

impl Instance {
    async fn rest_start(&self, body: &str) -> Result<(), Refusal> {
        let response = self.http.post(format!("{}/start", self.rest)).body(body.to_string()).send().await.unwrap();
        let body: Value = response.json().await.unwrap();
        if body["success"] == true {
            return Ok(());
        }
        Err(Refusal {
            name: body["error"].as_str().unwrap().to_string(),
            description: body["errorDescription"].as_str().unwrap().to_string(),
        })
    }

    async fn rest_progress(&self) -> Value {
        let body: Value = self.http.get(format!("{}/progress", self.rest)).send().await.unwrap().json().await.unwrap();
        body["progress"].clone()
    }

    async fn grpc_progress(&self) -> Progress {
        let reply = self.grpc.clone().progress(PbProgressRequest {}).await.unwrap().into_inner();
        Progress::try_from(reply.progress.unwrap()).unwrap()
    }

    async fn raw_state(&self) -> Option<(Vec<u8>, Revision)> {
        self.store.get(&self.keys.state()).await.unwrap().map(|kv| (kv.value, kv.mod_revision))
    }

    async fn state(&self) -> SyncStateDoc {
        match self.store.get(&self.keys.state()).await.unwrap() {
            Some(kv) => model::decode(&kv.key, &kv.value).unwrap(),
            None => SyncStateDoc::default(),
        }
    }

    async fn put<T: serde::Serialize>(&self, key: String, value: &T) {
        self.store.put(&key, model::encode(value), None).await.unwrap();
    }
}

/// The status of a refused call, checked for its code and error header.
fn refusal(status: &tonic::Status, code: Code) -> Refusal {
    assert_eq!(status.code(), code, "{status:?}");
    let name = grpc::error_name(status).unwrap_or_else(|| panic!("no {} header: {status:?}", grpc::ERROR_HEADER));
    Refusal { name: name.to_string(), description: status.message().to_string() }
}

fn code_of(name: &str) -> Code {
    match name {
        "InvalidRequest" | "InvalidOption" | "InvalidNamespaceFilter" | "UnsupportedTopology" => Code::InvalidArgument,
        "InvalidState" | "CommitNotReady" => Code::FailedPrecondition,
        "NotSupported" => Code::Unimplemented,
        "ClusterUnavailable" | "StoreUnavailable" | "Busy" => Code::Unavailable,
        _ => Code::Internal,
    }
}

/// The gRPC request carrying a REST body, built the way `clustersync ctl start --json` does.
fn request_of(body: &str) -> PbStartRequest {
    let options = api::body::parse_start(body.as_bytes()).unwrap();
    convert::start_request_to_pb(&options).unwrap()
}

#[tokio::test]
async fn start_records_the_same_options_as_rest() {
    let body = r#"{"source": "cluster1", "destination": "cluster0", "buildIndexes": "afterDataCopy",
        "enableUserWriteBlocking": "sourceAndDestination",
        "includeNamespaces": [{"database": "sales", "collectionsRegex": {"pattern": "^acc", "options": "i"}},
                              {"database": "marketing", "collections": ["a", "b"]}],
        "excludeNamespaces": [{"databaseRegex": {"pattern": "^tmp"}}],
        "verification": {"enabled": false}}"#;
    let by_rest = spawn().await;
    by_rest.rest_start(body).await.unwrap();
    let by_grpc = spawn().await;
    let request = PbStartRequest {
        source: PbCluster::Cluster1 as i32,
        destination: PbCluster::Cluster0 as i32,
        build_indexes: PbBuildIndexes::AfterDataCopy as i32,
        enable_user_write_blocking: PbWriteBlocking::SourceAndDestination as i32,
        include_namespaces: vec![
            PbNamespaceFilter {
                database: Some("sales".into()),
                collections_regex: Some(PbRegexSpec { pattern: "^acc".into(), options: "i".into() }),
                ..Default::default()
            },
            PbNamespaceFilter {
                database: Some("marketing".into()),
                collections: vec!["a".into(), "b".into()],
                ..Default::default()
            },
        ],
        exclude_namespaces: vec![PbNamespaceFilter {
            database_regex: Some(PbRegexSpec { pattern: "^tmp".into(), options: String::new() }),
            ..Default::default()
        }],
        reversible: false,
        sharding: None,
        verification: Some(PbVerificationOptions { enabled: Some(false) }),
    };
    let reply = by_grpc.grpc.clone().start(request).await.unwrap().into_inner();
    assert_eq!((reply.state, reply.phase), (PbSyncState::Running as i32, PbPhase::Setup as i32));

    let (rest_doc, grpc_doc) = (by_rest.state().await, by_grpc.state().await);
    assert_eq!(grpc_doc.state, SyncState::Running);
    assert_eq!(grpc_doc.options, rest_doc.options);
    assert_eq!(grpc_doc.source_hosts, rest_doc.source_hosts);

    // A second start is refused the same way by both APIs.
    let again = by_grpc.grpc.clone().start(plain_start()).await.unwrap_err();
    let rest_again = by_rest.rest_start(r#"{"source": "cluster0", "destination": "cluster1"}"#).await.unwrap_err();
    assert_eq!(refusal(&again, Code::FailedPrecondition), rest_again);
    assert_eq!(rest_again.name, "InvalidState");
}

#[tokio::test]
async fn sharding_options_reach_the_destination_topology_rules() {
    let clusters = StaticClusters::new(Topology::replica_set("rs0", "7.0.0"), Topology::sharded(&["a", "b"], "7.0.0"));
    let api = spawn_with(clusters).await;
    // Replica set -> sharded without the sharding option: refused as by REST.
    let missing = api.grpc.clone().start(plain_start()).await.unwrap_err();
    let rest_missing = api.rest_start(r#"{"source": "cluster0", "destination": "cluster1"}"#).await.unwrap_err();
    assert_eq!(refusal(&missing, Code::InvalidArgument), rest_missing);

    let request = PbStartRequest {
        sharding: Some(PbShardingOptions {
            create_supporting_indexes: true,
            sharding_entries: vec![PbShardingEntry {
                database: "accounts".into(),
                collection: "us_east".into(),
                shard_collection: Some(PbShardCollection {
                    key: vec![
                        PbShardKeyField { field: "location".into(), r#type: PbShardKeyType::Ascending as i32 },
                        PbShardKeyField { field: "region".into(), r#type: PbShardKeyType::Hashed as i32 },
                    ],
                }),
            }],
        }),
        ..plain_start()
    };
    api.grpc.clone().start(request).await.unwrap();
    let options = api.state().await.options.unwrap();
    let expected: StartOptions = serde_json::from_value(json!({"source": "cluster0", "destination": "cluster1",
        "sharding": {"createSupportingIndexes": true, "shardingEntries": [{"database": "accounts", "collection": "us_east",
        "shardCollection": {"key": [{"location": 1}, {"region": "hashed"}]}}]}}))
    .unwrap();
    assert_eq!(serde_json::to_value(&options).unwrap(), serde_json::to_value(&expected).unwrap());
}

#[tokio::test]
async fn invalid_starts_get_the_rest_error_names_and_change_nothing() {
    let api = spawn().await;
    // Rules of `Control`: the same name and the same description over both APIs.
    let same_description = [
        r#"{"source": "cluster0", "destination": "cluster0"}"#,
        r#"{"source": "cluster0", "destination": "cluster1", "reversible": true}"#,
        r#"{"source": "cluster0", "destination": "cluster1", "reversible": true, "enableUserWriteBlocking": true, "buildIndexes": "never"}"#,
        r#"{"source": "cluster0", "destination": "cluster1", "reversible": true, "enableUserWriteBlocking": true, "includeNamespaces": [{"database": "a"}]}"#,
        r#"{"source": "cluster0", "destination": "cluster1", "includeNamespaces": [{"database": "a", "collectionsRegex": {"pattern": "(["}}]}"#,
        r#"{"source": "cluster0", "destination": "cluster1", "includeNamespaces": [{"collections": ["a"]}]}"#,
        r#"{"source": "cluster0", "destination": "cluster1", "excludeNamespaces": [{"database": "admin"}]}"#,
        r#"{"source": "cluster0", "destination": "cluster1", "includeNamespaces": [{"database": "a", "databaseRegex": {"pattern": "b"}}]}"#,
        r#"{"source": "cluster0", "destination": "cluster1", "includeNamespaces": [{"database": "a", "collectionsRegex": {"pattern": "b", "options": "q"}}]}"#,
        r#"{"source": "cluster0", "destination": "cluster1", "sharding": {"shardingEntries": []}}"#,
        r#"{"source": "cluster0", "destination": "cluster1", "sharding": {"shardingEntries": [{"database": "a.b", "collection": "c", "shardCollection": {"key": [{"x": 1}]}}]}}"#,
        r#"{"source": "cluster0", "destination": "cluster1", "sharding": {"shardingEntries": [{"database": "a", "collection": "c", "shardCollection": {"key": []}}]}}"#,
        r#"{"source": "cluster0", "destination": "cluster1", "sharding": {"shardingEntries": [{"database": "a", "collection": "c", "shardCollection": {"key": [{"x": "hashed"}, {"y": "hashed"}]}}]}}"#,
    ];
    for body in same_description {
        let rest = api.rest_start(body).await.unwrap_err();
        let status = api.grpc.clone().start(request_of(body)).await.unwrap_err();
        let grpc = refusal(&status, code_of(&rest.name));
        assert_eq!(grpc, rest, "{body}");
    }

    // What the wire format checks itself: the same names, the fields named the proto way.
    let pb_entry = |shard_collection| PbShardingOptions {
        create_supporting_indexes: false,
        sharding_entries: vec![PbShardingEntry { database: "a".into(), collection: "b".into(), shard_collection }],
    };
    let same_name: Vec<(&str, PbStartRequest, &str)> = vec![
        (
            r#"{"destination": "cluster1"}"#,
            PbStartRequest { source: 0, ..plain_start() },
            "missing required field source",
        ),
        (
            r#"{"source": "cluster0"}"#,
            PbStartRequest { destination: 0, ..plain_start() },
            "missing required field destination",
        ),
        (
            r#"{"source": "cluster7", "destination": "cluster1"}"#,
            PbStartRequest { source: 7, ..plain_start() },
            "source must be",
        ),
        (
            r#"{"source": "cluster0", "destination": "cluster1", "buildIndexes": "later"}"#,
            PbStartRequest { build_indexes: 42, ..plain_start() },
            "build_indexes",
        ),
        (
            r#"{"source": "cluster0", "destination": "cluster1", "enableUserWriteBlocking": "always"}"#,
            PbStartRequest { enable_user_write_blocking: 9, ..plain_start() },
            "enable_user_write_blocking",
        ),
        (
            r#"{"source": "cluster0", "destination": "cluster1", "sharding": {"shardingEntries": [{"database": "a", "collection": "b"}]}}"#,
            PbStartRequest { sharding: Some(pb_entry(None)), ..plain_start() },
            "sharding.sharding_entries[0].shard_collection",
        ),
        (
            r#"{"source": "cluster0", "destination": "cluster1", "sharding": {"shardingEntries": [{"database": "a", "collection": "b", "shardCollection": {"key": [{"x": -1}]}}]}}"#,
            PbStartRequest {
                sharding: Some(pb_entry(Some(PbShardCollection {
                    key: vec![PbShardKeyField { field: "x".into(), r#type: 5 }],
                }))),
                ..plain_start()
            },
            "key[0].type",
        ),
    ];
    for (body, request, text) in same_name {
        let rest = api.rest_start(body).await.unwrap_err();
        let status = api.grpc.clone().start(request).await.unwrap_err();
        let grpc = refusal(&status, code_of(&rest.name));
        assert_eq!(grpc.name, rest.name, "{body}: {grpc:?} vs {rest:?}");
        assert!(grpc.description.contains(text), "{:?} should name {text:?}", grpc.description);
    }
    assert_eq!(api.raw_state().await, None, "no refused start wrote anything");
}

#[tokio::test]
async fn unsupported_and_unreachable_clusters_are_refused_like_rest() {
    let api =
        spawn_with(StaticClusters::new(Topology::replica_set("rs0", "7.0.0"), Topology::replica_set("rs1", "5.0.9")))
            .await;
    let status = api.grpc.clone().start(plain_start()).await.unwrap_err();
    let rest = api.rest_start(r#"{"source": "cluster0", "destination": "cluster1"}"#).await.unwrap_err();
    assert_eq!(refusal(&status, Code::InvalidArgument), rest);
    assert_eq!(rest.name, "UnsupportedTopology");

    let mut unreachable = StaticClusters::replica_sets();
    unreachable.cluster1 =
        Err(TopologyError::Command { command: "hello", reason: "server selection timeout".into(), retryable: true });
    let api = spawn_with(unreachable).await;
    let status = api.grpc.clone().start(plain_start()).await.unwrap_err();
    let refused = refusal(&status, Code::Unavailable);
    assert_eq!(refused.name, "ClusterUnavailable");
    assert!(refused.description.contains("cluster1 (the destination)"), "{refused:?}");
    assert_eq!(api.raw_state().await, None);
}

#[tokio::test]
async fn lifecycle_and_wrong_states_over_grpc() {
    let api = spawn().await;
    let mut client = api.grpc.clone();
    let status = client.pause(PbPauseRequest {}).await.unwrap_err();
    let refused = refusal(&status, Code::FailedPrecondition);
    assert_eq!(refused.name, "InvalidState");
    assert!(refused.description.contains("cannot pause while the migration is IDLE"), "{refused:?}");
    assert_eq!(
        refusal(&client.commit(PbCommitRequest {}).await.unwrap_err(), Code::FailedPrecondition).name,
        "InvalidState"
    );

    client.start(plain_start()).await.unwrap();
    let reply = client.pause(PbPauseRequest {}).await.unwrap().into_inner();
    assert_eq!((reply.state, reply.phase), (PbSyncState::Paused as i32, PbPhase::Paused as i32));
    let refused = refusal(&client.commit(PbCommitRequest {}).await.unwrap_err(), Code::FailedPrecondition);
    assert!(refused.description.contains("call /resume first"), "{refused:?}");
    let reply = client.resume(PbResumeRequest {}).await.unwrap().into_inner();
    assert_eq!((reply.state, reply.phase), (PbSyncState::Running as i32, PbPhase::Setup as i32));

    let not_ready = refusal(&client.commit(PbCommitRequest {}).await.unwrap_err(), Code::FailedPrecondition);
    assert_eq!(not_ready.name, "CommitNotReady");

    // Ready: copy done, the change stream live.
    let mut doc = api.state().await;
    doc.phase = Phase::Running;
    doc.copy_completed_at_ms = Some(model::now_ms());
    api.put(api.keys.state(), &doc).await;
    api.put(
        api.keys.task(TaskId(1)),
        &TaskSpec::ChangeStream(ChangeStreamTask { shard: ShardId::new("rs0").unwrap(), start_at: Default::default() }),
    )
    .await;
    api.put(
        api.keys.checkpoint(TaskId(1)),
        &TaskCheckpoint {
            status: TaskStatus::Running,
            detail: CheckpointDetail::ChangeStream(CdcCheckpoint {
                stage: CdcStage::Live,
                events_applied: 5,
                ..Default::default()
            }),
            holder: InstanceId::new("w1").unwrap(),
            updated_at_ms: model::now_ms(),
        },
    )
    .await;
    assert!(api.grpc_progress().await.can_commit);
    let reply = client.commit(PbCommitRequest {}).await.unwrap().into_inner();
    assert_eq!((reply.state, reply.phase), (PbSyncState::Committing as i32, PbPhase::Committing as i32));

    let refused = refusal(&client.reverse(PbReverseRequest {}).await.unwrap_err(), Code::FailedPrecondition);
    assert_eq!(refused.name, "InvalidState");
    let committed = SyncStateDoc {
        state: SyncState::Committed,
        phase: Phase::Completed,
        options: Some(
            serde_json::from_value(json!({"source": "cluster0", "destination": "cluster1", "reversible": true,
                "enableUserWriteBlocking": true}))
            .unwrap(),
        ),
        ..Default::default()
    };
    api.put(api.keys.state(), &committed).await;
    let refused = refusal(&client.reverse(PbReverseRequest {}).await.unwrap_err(), Code::Unimplemented);
    assert_eq!(refused.name, "NotSupported");
}

#[tokio::test]
async fn progress_reads_the_same_over_both_apis() {
    let api = spawn().await;
    let idle = api.grpc_progress().await;
    assert_eq!(serde_json::to_value(&idle).unwrap(), api.rest_progress().await);

    api.grpc.clone().start(plain_start()).await.unwrap();
    api.put(
        api.keys.task(TaskId(1)),
        &TaskSpec::ChangeStream(ChangeStreamTask { shard: ShardId::new("rs0").unwrap(), start_at: Default::default() }),
    )
    .await;
    api.put(
        api.keys.checkpoint(TaskId(1)),
        &TaskCheckpoint {
            status: TaskStatus::Running,
            detail: CheckpointDetail::ChangeStream(CdcCheckpoint {
                stage: CdcStage::Spooling,
                events_spooled: 9,
                ..Default::default()
            }),
            holder: InstanceId::new("w1").unwrap(),
            updated_at_ms: model::now_ms(),
        },
    )
    .await;
    let progress = api.grpc_progress().await;
    assert_eq!(progress.state, SyncState::Running);
    assert_eq!(progress.change_stream.as_ref().unwrap().events_spooled, 9);
    assert_eq!(progress.mongosync_id.as_deref(), Some("node-a"));
    assert_eq!(serde_json::to_value(&progress).unwrap(), api.rest_progress().await);
}

/// Waits for the next report of a watch, with a deadline.
async fn next_report(stream: &mut tonic::Streaming<clustersync_proto::v1::WatchProgressResponse>) -> Progress {
    let reply = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a report within 10 s")
        .expect("no stream error")
        .expect("the stream is still open");
    Progress::try_from(reply.progress.expect("a report")).unwrap()
}

#[tokio::test]
async fn watch_progress_follows_state_changes_and_keeps_a_heartbeat() {
    let api = spawn().await;
    // A long heartbeat: every report after the first one is caused by a change.
    let mut stream =
        api.grpc.clone().watch_progress(PbWatchProgressRequest { interval_ms: 60_000 }).await.unwrap().into_inner();
    assert_eq!(next_report(&mut stream).await.state, SyncState::Idle, "the first report comes at once");

    let started_at = tokio::time::Instant::now();
    api.grpc.clone().start(plain_start()).await.unwrap();
    let report = next_report(&mut stream).await;
    assert_eq!(report.state, SyncState::Running);
    assert_eq!(report.phase, Some(Phase::Setup));
    assert!(started_at.elapsed() < Duration::from_secs(5), "a change is reported promptly: {:?}", started_at.elapsed());

    api.grpc.clone().pause(PbPauseRequest {}).await.unwrap();
    assert_eq!(next_report(&mut stream).await.state, SyncState::Paused);
    api.grpc.clone().resume(PbResumeRequest {}).await.unwrap();
    assert_eq!(next_report(&mut stream).await.state, SyncState::Running);

    // Nothing changes: with a 60 s heartbeat, nothing is sent.
    let quiet = tokio::time::timeout(Duration::from_millis(800), stream.message()).await;
    assert!(quiet.is_err(), "no report without a change: {quiet:?}");

    // A short heartbeat sends the same report again and again.
    let mut heartbeat =
        api.grpc.clone().watch_progress(PbWatchProgressRequest { interval_ms: 150 }).await.unwrap().into_inner();
    let first = next_report(&mut heartbeat).await;
    let begin = tokio::time::Instant::now();
    for _ in 0..3 {
        assert_eq!(next_report(&mut heartbeat).await, first);
    }
    assert!(begin.elapsed() < Duration::from_secs(3), "three heartbeats took {:?}", begin.elapsed());

    // The server shutting down ends the streams instead of hanging them.
    api.shutdown.cancel();
    let end =
        tokio::time::timeout(Duration::from_secs(10), async { while let Ok(Some(_)) = stream.message().await {} })
            .await;
    assert!(end.is_ok(), "the watch ended with the server");
}

#[tokio::test]
async fn racing_pauses_and_resumes_on_two_instances_stay_consistent() {
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::in_memory());
    // Two coordinators over one store.
    let first = serve(store.clone(), StaticClusters::replica_sets(), "node-a").await;
    let second = serve(store, StaticClusters::replica_sets(), "node-b").await;
    first.grpc.clone().start(plain_start()).await.unwrap();

    for round in 0..3 {
        let pauses = futures::future::join_all((0..8).map(|i| {
            let mut client = if i % 2 == 0 { first.grpc.clone() } else { second.grpc.clone() };
            async move { client.pause(PbPauseRequest {}).await }
        }))
        .await;
        assert_eq!(pauses.iter().filter(|reply| reply.is_ok()).count(), 1, "round {round}: one pause wins");
        for status in pauses.iter().filter_map(|reply| reply.as_ref().err()) {
            let refused = refusal(status, Code::FailedPrecondition);
            assert_eq!(refused.name, "InvalidState");
            assert!(refused.description.contains("PAUSED"), "{refused:?}");
        }
        assert_eq!(second.state().await.state, SyncState::Paused);

        let resumes = futures::future::join_all((0..8).map(|i| {
            let mut client = if i % 2 == 0 { second.grpc.clone() } else { first.grpc.clone() };
            async move { client.resume(PbResumeRequest {}).await }
        }))
        .await;
        assert_eq!(resumes.iter().filter(|reply| reply.is_ok()).count(), 1, "round {round}: one resume wins");
        assert_eq!(first.state().await.state, SyncState::Running);
    }

    // Pauses and resumes at once: every success flips the state, so the successes alternate and
    // the final state follows from their counts.
    for round in 0..5 {
        let calls = futures::future::join_all((0..10).map(|i| {
            let mut client = if i % 3 == 0 { first.grpc.clone() } else { second.grpc.clone() };
            async move {
                if i % 2 == 0 {
                    ("pause", client.pause(PbPauseRequest {}).await.map(|_| ()))
                } else {
                    ("resume", client.resume(PbResumeRequest {}).await.map(|_| ()))
                }
            }
        }))
        .await;
        let wins = |kind: &str| calls.iter().filter(|(call, result)| *call == kind && result.is_ok()).count();
        let (pauses, resumes) = (wins("pause"), wins("resume"));
        for (_, result) in &calls {
            if let Err(status) = result {
                assert_eq!(refusal(status, Code::FailedPrecondition).name, "InvalidState", "round {round}");
            }
        }
        let state = first.state().await.state;
        let expected = match state {
            SyncState::Paused => resumes + 1,
            SyncState::Running => resumes,
            other => panic!("round {round}: unexpected state {other:?}"),
        };
        assert_eq!(pauses, expected, "round {round}: {pauses} pauses, {resumes} resumes, ended {state:?}");
        if state == SyncState::Paused {
            first.grpc.clone().resume(PbResumeRequest {}).await.unwrap();
        }
    }
    let progress = second.grpc_progress().await;
    assert_eq!(progress.mongosync_id.as_deref(), Some("node-b"));
    assert_eq!(progress.state, SyncState::Running);
}

#[test]
fn the_ctl_default_address_is_the_default_grpc_port() {
    assert_eq!(
        cli::DEFAULT_CTL_ADDRESS,
        format!("http://127.0.0.1:{}", clustersync_coordinator::config::DEFAULT_GRPC_PORT)
    );
}
