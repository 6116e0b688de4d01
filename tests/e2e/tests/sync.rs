//! End-to-end: a replica set synced to a replica set by one `clustersync` process, with every
//! BSON type, mixed `_id` types, a document near 16 MB, several databases, indexes of every
//! kind, a capped collection and a view; writes of every kind and DDL during the copy and during
//! change application; commit; then the destination must equal the source document for document,
//! index for index, options for options.

use std::time::Duration;

use bson::{Bson, doc};
use clustersync_e2e::data::{self, assert_snapshots_equal, every_type_document, large_document, mixed_ids};
use clustersync_e2e::load::LiveWriter;
use clustersync_e2e::{SyncProcess, TestClusters};
use mongodb::IndexModel;
use mongodb::options::IndexOptions;
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(180);

/// Loads the source with the data every sync test starts from.
async fn load_source(clusters: &TestClusters) {
    let client = &clusters.source.client;
    let app = client.database(&clusters.db("app"));

    let people = app.collection::<bson::Document>("people");
    people.insert_many((0..3000).map(every_type_document)).await.expect("insert people");
    people
        .create_indexes([
            IndexModel::builder()
                .keys(doc! {"string": 1})
                .options(IndexOptions::builder().unique(true).sparse(true).name("unique_string".to_string()).build())
                .build(),
            IndexModel::builder()
                .keys(doc! {"date": 1})
                .options(IndexOptions::builder().expire_after(Duration::from_secs(3600 * 24 * 365 * 100)).build())
                .build(),
            IndexModel::builder()
                .keys(doc! {"int32": -1, "double": 1})
                .options(IndexOptions::builder().hidden(true).build())
                .build(),
            IndexModel::builder()
                .keys(doc! {"doc.a": 1})
                .options(IndexOptions::builder().partial_filter_expression(doc! {"int32": {"$gt": 10}}).build())
                .build(),
            IndexModel::builder()
                .keys(doc! {"objectId": 1})
                .options(IndexOptions::builder().sparse(true).build())
                .build(),
        ])
        .await
        .expect("create indexes");

    let mixed = app.collection::<bson::Document>("mixed_ids");
    let ids = mixed_ids();
    mixed
        .insert_many(ids.iter().enumerate().map(|(n, id)| doc! {"_id": id.clone(), "n": n as i32}))
        .await
        .expect("insert mixed ids");

    let big = app.collection::<bson::Document>("big");
    big.insert_one(large_document("near-16mb", 16 * 1024 * 1024 - 4096)).await.expect("insert large document");
    big.insert_many((0..10).map(|i| doc! {"_id": format!("small-{i}"), "v": i})).await.expect("insert small");

    app.create_collection("capped").capped(true).size(64 * 1024).max(100).await.expect("create capped");
    app.collection::<bson::Document>("capped")
        .insert_many((0..50).map(|i| doc! {"_id": i, "line": format!("log {i}")}))
        .await
        .expect("insert capped");

    app.create_collection("people_view")
        .view_on("people".to_string())
        .pipeline(vec![doc! {"$match": {"bool": true}}])
        .await
        .expect("create view");

    let other = client.database(&clusters.db("other"));
    for name in ["a", "b"] {
        other
            .collection::<bson::Document>(name)
            .insert_many((0..500).map(|i| doc! {"_id": bson::oid::ObjectId::new(), "i": i, "name": name}))
            .await
            .expect("insert other");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_set_to_replica_set_with_live_writes_and_ddl() {
    let clusters = TestClusters::start().await;
    load_source(&clusters).await;

    let mut sync = SyncProcess::start(&clusters.source.uri, &clusters.destination.uri, &[]);
    sync.wait_ready().await;
    let idle = sync.progress().await;
    assert_eq!(idle["state"], "IDLE");

    // Writes of every kind and DDL start before /start, so they overlap the copy.
    let writer =
        LiveWriter::start(clusters.source.user_client().await, clusters.db("app"), "people".into(), 3500, true);
    sync.post_ok(
        "start",
        json!({"source": "cluster0", "destination": "cluster1", "includeNamespaces": clusters.include_filter()}),
    )
    .await;

    // Once setup is past (the leader blocks destination writes during setup), user writes on the
    // destination are rejected for the rest of the sync.
    sync.wait_for("the end of setup", TIMEOUT, |p| p["phase"] != "setup" && p["phase"] != "idle").await;
    let blocked = clusters
        .destination
        .user_client()
        .await
        .database(&clusters.db("app"))
        .collection::<bson::Document>("people")
        .insert_one(doc! {"_id": "user-write"})
        .await;
    assert!(blocked.is_err(), "a user write on the destination must be blocked during the sync");

    let progress = sync.wait_for("change event application", TIMEOUT, |p| p["canCommit"] == true).await;
    assert_eq!(progress["state"], "RUNNING");
    assert_eq!(progress["canWrite"], false);

    // Keep writing a little while events are applied live, then stop writes and commit.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let counts = writer.stop().await;
    assert!(counts.inserts.load(std::sync::atomic::Ordering::Relaxed) > 0, "the writer wrote nothing: {counts:?}");
    assert!(counts.ddl.load(std::sync::atomic::Ordering::Relaxed) > 0, "the writer ran no DDL: {counts:?}");

    sync.post_ok("commit", json!({})).await;
    let committed = sync.wait_state("COMMITTED", TIMEOUT).await;
    assert_eq!(committed["canWrite"], true);
    assert!(committed["totalEventsApplied"].as_u64().unwrap_or(0) > 0, "no change events applied: {committed:#}");

    let databases = clusters.test_databases(&clusters.source.client).await;
    assert_eq!(databases.len(), 2, "source databases: {databases:?}");
    let source = data::snapshot(&clusters.source.client, &databases).await;
    let destination = data::snapshot(&clusters.destination.client, &databases).await;
    assert_snapshots_equal(&source, &destination);

    // After commit the destination accepts user writes again.
    clusters
        .destination
        .user_client()
        .await
        .database(&clusters.db("app"))
        .collection::<bson::Document>("people")
        .insert_one(doc! {"_id": "after-commit", "v": Bson::Int32(1)})
        .await
        .expect("destination writable after commit");
}
