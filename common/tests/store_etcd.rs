//! The etcd store against a real `etcd` (one server per test): the shared conformance suite,
//! plus etcd-only behaviour: compaction, restarts, unreachable endpoints.
//!
//! These tests need the `etcd` binary (`apt-get install -y etcd-server`); without it they fail
//! with that instruction, they never skip.

use std::sync::Arc;
use std::time::Duration;

use clustersync_common::lease::LeaseKeeper;
use clustersync_common::store::{EtcdStore, EtcdStoreOptions, Store, StoreError, WatchEvent};
use clustersync_common::testing::{EtcdServer, unique_prefix, wait_until};
use futures::StreamExt;

async fn etcd() -> (Arc<dyn Store>, EtcdServer) {
    let server = EtcdServer::start().await;
    let store = server.store().await;
    (Arc::new(store), server)
}

clustersync_common::store_conformance_tests!(etcd);

async fn next_batch(watch: &mut clustersync_common::store::WatchStream) -> Result<Vec<WatchEvent>, StoreError> {
    tokio::time::timeout(Duration::from_secs(30), watch.next())
        .await
        .expect("timed out waiting for a watch item")
        .expect("watch stream ended")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_a_compacted_revision_reports_compacted() {
    let server = EtcdServer::start().await;
    let store = server.store().await;
    let prefix = unique_prefix("compacted");
    let first = store.put(&format!("{prefix}a"), b"1".to_vec(), None).await.unwrap();
    let last = store.put(&format!("{prefix}a"), b"2".to_vec(), None).await.unwrap();
    store.client().kv_client().compact(last, None).await.unwrap();

    // etcd reports compaction asynchronously: from the call or as the first stream item.
    let error = match store.watch_prefix(&prefix, Some(first)).await {
        Err(error) => error,
        Ok(mut watch) => next_batch(&mut watch).await.expect_err("history before the compaction is gone"),
    };
    match error {
        StoreError::Compacted { revision } => assert_eq!(revision, last),
        other => panic!("expected compacted, got {other}"),
    }
    // From the compaction revision on, history is still there.
    let mut watch = store.watch_prefix(&prefix, Some(last)).await.unwrap();
    assert_eq!(next_batch(&mut watch).await.unwrap()[0].kv.mod_revision, last);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_fail_retryably_while_etcd_is_down_and_recover_after() {
    let mut server = EtcdServer::start().await;
    let store = server.store().await;
    let prefix = unique_prefix("down");
    store.put(&format!("{prefix}k"), b"before".to_vec(), None).await.unwrap();

    server.stop();
    let error = store.get(&format!("{prefix}k")).await.expect_err("etcd is down");
    assert!(matches!(error, StoreError::Unavailable { .. }), "{error}");
    assert!(error.is_retryable());
    let error = store.put(&format!("{prefix}k"), b"x".to_vec(), None).await.expect_err("etcd is down");
    assert!(error.is_retryable(), "{error}");

    server.start_again().await;
    wait_until("the same store handle works again", Duration::from_secs(30), || {
        let store = &store;
        let key = format!("{prefix}k");
        async move { store.get(&key).await.is_ok() }
    })
    .await;
    assert_eq!(store.get(&format!("{prefix}k")).await.unwrap().unwrap().value, b"before");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_across_an_etcd_restart_without_gaps() {
    let mut server = EtcdServer::start().await;
    let store = server.store().await;
    let prefix = unique_prefix("restart");
    let mut watch = store.watch_prefix(&prefix, None).await.unwrap();
    let first = store.put(&format!("{prefix}1"), b"a".to_vec(), None).await.unwrap();
    assert_eq!(next_batch(&mut watch).await.unwrap()[0].kv.mod_revision, first);

    server.stop();
    server.start_again().await;
    // A second client writes while the first one's watch is still reconnecting.
    let writer = server.store().await;
    let second = writer.put(&format!("{prefix}2"), b"b".to_vec(), None).await.unwrap();
    let third = writer.put(&format!("{prefix}3"), b"c".to_vec(), None).await.unwrap();

    let mut revisions = Vec::new();
    while revisions.len() < 2 {
        let batch = next_batch(&mut watch).await.expect("the watch resumes, not fails");
        revisions.extend(batch.iter().map(|event| event.kv.mod_revision));
    }
    assert_eq!(revisions, [second, third], "nothing missed, nothing repeated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_keeper_rides_out_a_short_etcd_restart() {
    let mut server = EtcdServer::start().await;
    let store: Arc<dyn Store> = Arc::new(server.store().await);
    let keeper = LeaseKeeper::start(store.clone(), Duration::from_secs(10)).await.unwrap();
    let prefix = unique_prefix("keeper-restart");
    store.put(&format!("{prefix}alive"), b"v".to_vec(), Some(keeper.lease_id())).await.unwrap();

    server.stop();
    server.start_again().await;
    // etcd persists leases and refreshes their TTL when a new leader takes over.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(keeper.state().is_alive(), "lease survived: {:?}", keeper.state());
    assert!(store.get(&format!("{prefix}alive")).await.unwrap().is_some());
    keeper.revoke().await.unwrap();
}

#[tokio::test]
async fn connecting_to_nothing_is_unavailable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let endpoints = vec![format!("http://127.0.0.1:{port}")];
    let error =
        EtcdStore::connect(&endpoints, EtcdStoreOptions::for_test()).await.err().expect("nothing listens there");
    assert!(error.is_retryable(), "{error}");
    assert!(error.to_string().contains(&endpoints[0]), "names the endpoint: {error}");
}
