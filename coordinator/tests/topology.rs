//! Topology probing and `/start` against real wire-protocol servers (fake-mongod replica sets).

use std::sync::Arc;
use std::time::Duration;

use clustersync_common::ids::{InstanceId, MigrationId};
use clustersync_common::keys::Keys;
use clustersync_common::model::{self, Phase, SyncState, SyncStateDoc};
use clustersync_common::store::{EmbeddedStore, Store};
use clustersync_coordinator::control::Control;
use clustersync_coordinator::topology::{self, ClusterName, ClusterProbe, MongoClusters, TopologyKind};
use fake_mongod::FakeMongod;

#[tokio::test]
async fn a_replica_set_reports_its_name_and_version() {
    let server = FakeMongod::start_default().unwrap();
    let clusters = MongoClusters::connect(&server.uri(), &server.uri()).await.unwrap();
    let found = topology::probe(clusters.client_of(ClusterName::Cluster0)).await.unwrap();
    assert_eq!(found.kind, TopologyKind::ReplicaSet { set_name: "rs0".into() });
    let (major, _, _) = found.version_tuple().expect("a parsable version");
    assert!(major >= 6, "{}", found.version);
    found.check_supported("cluster0").unwrap();
    assert_eq!(clusters.hosts(ClusterName::Cluster1), format!("127.0.0.1:{}", server.port()));
}

#[tokio::test]
async fn an_unreachable_cluster_fails_the_probe_as_retryable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let uri = format!("mongodb://127.0.0.1:{port}/?replicaSet=rs0&serverSelectionTimeoutMS=500");
    let clusters = MongoClusters::connect(&uri, &uri).await.unwrap();
    let started = std::time::Instant::now();
    let error = clusters.probe(ClusterName::Cluster0).await.unwrap_err();
    assert!(error.to_string().contains("hello failed"), "{error}");
    assert!(error.is_retryable(), "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(8), "the uri's serverSelectionTimeoutMS is honoured");
}

#[tokio::test]
async fn start_against_two_live_replica_sets() {
    let source = FakeMongod::start_default().unwrap();
    let destination = FakeMongod::start_default().unwrap();
    let clusters = MongoClusters::connect(&source.uri(), &destination.uri()).await.unwrap();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::in_memory());
    let keys = Keys::new("/t", &MigrationId::new("m").unwrap()).unwrap();
    let control = Control::new(store.clone(), keys.clone(), InstanceId::new("n").unwrap(), Arc::new(clusters));
    let options = serde_json::from_value(serde_json::json!({"source": "cluster0", "destination": "cluster1"})).unwrap();
    control.start(options).await.unwrap();
    let kv = store.get(&keys.state()).await.unwrap().unwrap();
    let doc: SyncStateDoc = model::decode(&kv.key, &kv.value).unwrap();
    assert_eq!((doc.state, doc.phase), (SyncState::Running, Phase::Setup));
    assert_eq!(doc.destination_hosts, Some(format!("127.0.0.1:{}", destination.port())));

    // With sharding for a replica-set destination: refused on the probed topology.
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::in_memory());
    let clusters = MongoClusters::connect(&source.uri(), &destination.uri()).await.unwrap();
    let control = Control::new(store.clone(), keys.clone(), InstanceId::new("n").unwrap(), Arc::new(clusters));
    let options = serde_json::from_value(serde_json::json!({"source": "cluster0", "destination": "cluster1",
        "sharding": {"shardingEntries": []}}))
    .unwrap();
    let error = control.start(options).await.unwrap_err();
    assert_eq!(error.name(), "InvalidOption");
    assert!(error.to_string().contains("destination cluster1 is a replica set"), "{error}");
    assert!(store.get(&keys.state()).await.unwrap().is_none());
}
