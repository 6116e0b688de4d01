//! End-to-end: restarts, faults, lost history, divergence, pause/resume and write blocking, with
//! one `clustersync` process over its embedded store.

use std::time::Duration;

use bson::doc;
use clustersync_e2e::data::{self, assert_snapshots_equal};
use clustersync_e2e::load::LiveWriter;
use clustersync_e2e::{SyncProcess, TestClusters};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(180);

/// Small batches and ranges, so a modest data set makes many checkpoints and several ranges.
const SMALL_BATCHES: &str = "worker:\n  copyBatchDocuments: 200\n  partitionBytes: 1048576\n  taskSlots: 2\n";

fn write_config(dir: &tempfile::TempDir, yaml: &str) -> String {
    let path = dir.path().join("clustersync.yaml");
    std::fs::write(&path, yaml).expect("write config");
    path.display().to_string()
}

async fn load(clusters: &TestClusters, db: &str, collections: &[(&str, i64)]) {
    let database = clusters.source.client.database(&clusters.db(db));
    for (name, count) in collections {
        let coll = database.collection::<bson::Document>(name);
        let ids: Vec<i64> = (0..*count).collect();
        for chunk in ids.chunks(10_000) {
            coll.insert_many(chunk.iter().map(|&i| doc! {"_id": i, "payload": "p".repeat(200), "n": i % 97}))
                .await
                .expect("load");
        }
    }
}

fn start_body(clusters: &TestClusters, extra: Value) -> Value {
    let mut body =
        json!({"source": "cluster0", "destination": "cluster1", "includeNamespaces": clusters.include_filter()});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        for (key, value) in extra {
            body.insert(key.clone(), value.clone());
        }
    }
    body
}

async fn assert_equal(clusters: &TestClusters) {
    let databases = clusters.test_databases(&clusters.source.client).await;
    assert!(!databases.is_empty(), "no test databases on the source");
    let source = data::snapshot(&clusters.source.client, &databases).await;
    let destination = data::snapshot(&clusters.destination.client, &databases).await;
    assert_snapshots_equal(&source, &destination);
}

async fn commit_and_check(sync: &mut SyncProcess, clusters: &TestClusters) -> Value {
    sync.wait_for("canCommit", TIMEOUT, |p| p["canCommit"] == true).await;
    sync.post_ok("commit", json!({})).await;
    let committed = sync.wait_state("COMMITTED", TIMEOUT).await;
    assert_eq!(committed["canWrite"], true);
    assert_equal(clusters).await;
    committed
}

fn copied_bytes(progress: &Value) -> u64 {
    progress["collectionCopy"]["estimatedCopiedBytes"].as_u64().unwrap_or(0)
}

fn total_bytes(progress: &Value) -> u64 {
    progress["collectionCopy"]["estimatedTotalBytes"].as_u64().unwrap_or(0)
}

fn recopied(progress: &Value) -> u64 {
    progress["collections"]
        .as_array()
        .map(|c| c.iter().map(|c| c["documentsRecopied"].as_u64().unwrap_or(0)).sum())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_in_the_middle_of_the_copy_resumes_from_checkpoints() {
    let clusters = TestClusters::start().await;
    load(&clusters, "big", &[("a", 60_000), ("b", 40_000)]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(&dir, SMALL_BATCHES);
    let mut sync = SyncProcess::start(&clusters.source.uri, &clusters.destination.uri, &["--config", &config]);
    sync.wait_ready().await;
    sync.post_ok("start", start_body(&clusters, json!({}))).await;

    let before = sync
        .wait_for("a third of the copy", TIMEOUT, |p| {
            let total = total_bytes(p);
            total > 1 && copied_bytes(p) * 3 >= total
        })
        .await;
    sync.kill9();
    let copied_before = copied_bytes(&before);
    assert!(copied_before < total_bytes(&before), "the copy finished before the kill: {before:#}");

    sync.restart();
    sync.wait_ready().await;
    // Right after the restart, the durable progress is still there: the copy did not start over.
    let resumed = sync.progress().await;
    assert_eq!(resumed["state"], "RUNNING", "{resumed:#}");
    // Each range in flight may lose the batch whose checkpoint was not written yet.
    let slack = 2 * 200 * 300;
    assert!(
        copied_bytes(&resumed) + slack >= copied_before,
        "copy progress went back after the restart: {} before, {} after",
        copied_before,
        copied_bytes(&resumed)
    );

    let done = sync.wait_for("the copy to complete", TIMEOUT, |p| p["canCommit"] == true).await;
    // Re-copied documents are bounded by one batch per range in flight (2 task slots × 200).
    assert!(recopied(&done) <= 2 * 200, "re-copied {} documents after the restart: {done:#}", recopied(&done));
    commit_and_check(&mut sync, &clusters).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_faults_during_copy_and_cdc_lose_nothing() {
    let clusters = TestClusters::start().await;
    load(&clusters, "faults", &[("c", 20_000)]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(&dir, SMALL_BATCHES);
    let mut sync = SyncProcess::start(&clusters.source.uri, &clusters.destination.uri, &["--config", &config]);
    sync.wait_ready().await;

    // Dropped connections and failover errors on both sides, for clustersync's connections only.
    let fail = |commands: Value, data: Value, times: i32| {
        let mut data = data.as_object().cloned().unwrap_or_default();
        data.insert("failCommands".into(), commands);
        data.insert("appName".into(), json!("clustersync"));
        bson::to_document(&json!({"configureFailPoint": "failCommand", "mode": {"times": times}, "data": data}))
            .expect("fail point")
    };
    clusters
        .destination
        .admin(fail(json!(["insert"]), json!({"closeConnection": true}), 3))
        .await
        .expect("destination fail point");
    clusters
        .source
        .admin(fail(
            json!(["find", "getMore"]),
            json!({"errorCode": 11602, "errorLabels": ["ResumableChangeStreamError"]}),
            4,
        ))
        .await
        .expect("source fail point");
    sync.post_ok("start", start_body(&clusters, json!({}))).await;
    sync.wait_for("canCommit", TIMEOUT, |p| p["canCommit"] == true).await;

    // During change application: writes on the source while the destination drops connections
    // and reports a step-down on updates, and the source's change stream is interrupted.
    clusters
        .destination
        .admin(fail(
            json!(["update", "delete", "insert"]),
            json!({"errorCode": 10107, "errorLabels": ["RetryableWriteError"]}),
            5,
        ))
        .await
        .expect("destination fail point");
    clusters
        .source
        .admin(fail(json!(["getMore"]), json!({"closeConnection": true}), 2))
        .await
        .expect("source fail point");
    let writer =
        LiveWriter::start(clusters.source.user_client().await, clusters.db("faults"), "c".into(), 25_000, false);
    tokio::time::sleep(Duration::from_secs(4)).await;
    writer.stop().await;
    commit_and_check(&mut sync, &clusters).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_only_step_down_and_dropped_connections_lose_nothing() {
    let clusters = TestClusters::start().await;
    load(&clusters, "failover", &[("c", 20_000)]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(&dir, SMALL_BATCHES);
    let mut sync = SyncProcess::start(&clusters.source.uri, &clusters.destination.uri, &["--config", &config]);
    sync.wait_ready().await;
    sync.post_ok("start", start_body(&clusters, json!({}))).await;
    sync.wait_for("the copy to start", TIMEOUT, |p| copied_bytes(p) > 0).await;
    clusters.destination.fake().step_down(Duration::from_secs(2));
    clusters.source.fake().drop_all_connections();
    sync.wait_for("canCommit", TIMEOUT, |p| p["canCommit"] == true).await;

    let writer =
        LiveWriter::start(clusters.source.user_client().await, clusters.db("failover"), "c".into(), 25_000, false);
    tokio::time::sleep(Duration::from_secs(1)).await;
    clusters.source.fake().step_down(Duration::from_secs(2));
    tokio::time::sleep(Duration::from_secs(1)).await;
    clusters.destination.fake().drop_all_connections();
    tokio::time::sleep(Duration::from_secs(3)).await;
    writer.stop().await;
    commit_and_check(&mut sync, &clusters).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_only_lost_change_stream_history_fails_the_migration() {
    let clusters = TestClusters::start().await;
    load(&clusters, "history", &[("c", 2_000)]).await;
    let mut sync = SyncProcess::start(&clusters.source.uri, &clusters.destination.uri, &[]);
    sync.wait_ready().await;
    sync.post_ok("start", start_body(&clusters, json!({}))).await;
    sync.wait_for("canCommit", TIMEOUT, |p| p["canCommit"] == true).await;
    sync.post_ok("pause", json!({})).await;
    sync.wait_for("workers to stop", TIMEOUT, |p| p["state"] == "PAUSED").await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // While paused the source keeps writing, then its oplog loses everything but the newest entry.
    let coll = clusters.source.client.database(&clusters.db("history")).collection::<bson::Document>("c");
    coll.insert_many((10_000..10_100).map(|i| doc! {"_id": i})).await.expect("writes while paused");
    clusters.source.fake().truncate_oplog();
    coll.insert_one(doc! {"_id": 20_000}).await.expect("one more write");

    sync.post_ok("resume", json!({})).await;
    let failed = sync.wait_state("FAILED", TIMEOUT).await;
    assert_eq!(failed["error"], "ChangeStreamHistoryLost", "{failed:#}");
    let description = failed["errorDescription"].as_str().unwrap_or_default();
    assert!(description.contains("oplog"), "the reason should name the oplog: {description}");
    assert_eq!(failed["canWrite"], false);
    // Failed means no commit.
    let (status, reply) = sync.post("commit", json!({})).await;
    assert_eq!(status, 409, "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_names_the_namespace_and_range_that_differ() {
    let clusters = TestClusters::start().await;
    load(&clusters, "verify", &[("c", 3_000)]).await;
    let mut sync = SyncProcess::start(&clusters.source.uri, &clusters.destination.uri, &[]);
    sync.wait_ready().await;
    sync.post_ok("start", start_body(&clusters, json!({}))).await;
    sync.wait_for("canCommit", TIMEOUT, |p| p["canCommit"] == true).await;

    // Someone writes to the destination behind clustersync's back (with the bypass privilege).
    let tamper = clusters.destination.bypass_client().await;
    let coll = tamper.database(&clusters.db("verify")).collection::<bson::Document>("c");
    coll.update_one(doc! {"_id": 1234}, doc! {"$set": {"payload": "tampered"}}).await.expect("tamper");

    sync.post_ok("commit", json!({})).await;
    let failed = sync.wait_state("FAILED", TIMEOUT).await;
    assert_eq!(failed["error"], "VerificationFailed", "{failed:#}");
    let namespace = format!("{}.c", clusters.db("verify"));
    assert_eq!(failed["errorNamespace"], json!(namespace), "{failed:#}");
    assert!(failed["errorRange"].is_string(), "the failure names the _id range: {failed:#}");
    let description = failed["errorDescription"].as_str().unwrap_or_default();
    assert!(description.contains("1234"), "the difference names the document: {description}");
    assert_eq!(failed["canWrite"], false, "a failed verification never opens the destination");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_during_the_copy() {
    let clusters = TestClusters::start().await;
    load(&clusters, "pause", &[("c", 60_000)]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(&dir, SMALL_BATCHES);
    let mut sync = SyncProcess::start(&clusters.source.uri, &clusters.destination.uri, &["--config", &config]);
    sync.wait_ready().await;
    sync.post_ok("start", start_body(&clusters, json!({}))).await;
    sync.wait_for("the copy to start", TIMEOUT, |p| copied_bytes(p) > 0).await;

    sync.post_ok("pause", json!({})).await;
    let paused = sync.wait_state("PAUSED", TIMEOUT).await;
    assert_eq!(paused["phase"], "paused");
    // Wait for in-flight batches to land, then nothing moves while paused.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let first = data::count_documents(&clusters.destination.client, &[clusters.db("pause")]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = data::count_documents(&clusters.destination.client, &[clusters.db("pause")]).await;
    assert_eq!(first, second, "documents were copied while PAUSED");
    let (status, reply) = sync.post("pause", json!({})).await;
    assert_eq!((status, reply["error"].clone()), (409, json!("InvalidState")), "{reply}");

    // Source writes while paused are applied after resume.
    let coll = clusters.source.client.database(&clusters.db("pause")).collection::<bson::Document>("c");
    coll.delete_many(doc! {"_id": {"$lt": 100}}).await.expect("delete while paused");
    coll.insert_one(doc! {"_id": -1, "while": "paused"}).await.expect("insert while paused");

    sync.post_ok("resume", json!({})).await;
    sync.wait_state("RUNNING", TIMEOUT).await;
    commit_and_check(&mut sync, &clusters).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_and_change_nothing() {
    let clusters = TestClusters::start().await;
    load(&clusters, "api", &[("c", 100)]).await;
    let mut sync = SyncProcess::start(&clusters.source.uri, &clusters.destination.uri, &[]);
    sync.wait_ready().await;
    let cases: Vec<(&str, String, &str)> = vec![
        ("start", "{\"source\": \"cluster0\",".into(), "InvalidRequest"),
        ("start", json!({"source": "cluster0", "destination": "cluster1", "bogus": 1}).to_string(), "InvalidRequest"),
        ("start", json!({"source": "cluster0", "destination": 1}).to_string(), "InvalidRequest"),
        ("start", json!({"source": "cluster0", "destination": "cluster0"}).to_string(), "InvalidOption"),
        (
            "start",
            json!({"source": "cluster0", "destination": "cluster1", "buildIndexes": "never", "reversible": true, "enableUserWriteBlocking": true}).to_string(),
            "InvalidOption",
        ),
        ("start", json!({"source": "cluster0", "destination": "cluster1", "reversible": true}).to_string(), "InvalidOption"),
        (
            "start",
            json!({"source": "cluster0", "destination": "cluster1", "includeNamespaces": [{"database": "a", "collectionsRegex": {"pattern": "(", "options": ""}}]}).to_string(),
            "InvalidNamespaceFilter",
        ),
        (
            "start",
            json!({"source": "cluster0", "destination": "cluster1", "sharding": {"shardingEntries": []}}).to_string(),
            "InvalidOption",
        ),
        ("commit", "{}".into(), "InvalidState"),
        ("pause", "{}".into(), "InvalidState"),
        ("resume", "{}".into(), "InvalidState"),
    ];
    for (endpoint, body, error) in cases {
        let (status, reply) = sync.post_raw(endpoint, &body).await;
        assert!((400..500).contains(&status), "{endpoint} {body}: status {status}, {reply}");
        assert_eq!(reply["success"], false, "{endpoint} {body}: {reply}");
        assert_eq!(reply["error"], error, "{endpoint} {body}: {reply}");
        assert!(reply["errorDescription"].as_str().is_some_and(|d| !d.is_empty()), "{reply}");
        let progress = sync.progress().await;
        assert_eq!(progress["state"], "IDLE", "state changed after a refused {endpoint}: {progress:#}");
    }
    // Nothing was written to the destination either.
    assert!(clusters.test_databases(&clusters.destination.client).await.is_empty());

    sync.post_ok("start", start_body(&clusters, json!({}))).await;
    let (status, reply) = sync.post("start", start_body(&clusters, json!({}))).await;
    assert_eq!((status, reply["error"].clone()), (409, json!("InvalidState")), "{reply}");
    commit_and_check(&mut sync, &clusters).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_and_source_write_blocking() {
    let clusters = TestClusters::start().await;
    load(&clusters, "keep", &[("a", 500), ("b", 500), ("skip_me", 500)]).await;
    load(&clusters, "drop", &[("x", 500)]).await;
    let mut sync = SyncProcess::start(&clusters.source.uri, &clusters.destination.uri, &[]);
    sync.wait_ready().await;
    let body = json!({
        "source": "cluster0",
        "destination": "cluster1",
        "enableUserWriteBlocking": "sourceAndDestination",
        "includeNamespaces": [{"database": clusters.db("keep")}],
        "excludeNamespaces": [{"database": clusters.db("keep"), "collections": ["skip_me"]}],
    });
    sync.post_ok("start", body).await;
    sync.wait_for("canCommit", TIMEOUT, |p| p["canCommit"] == true).await;
    let coll = clusters.source.user_client().await.database(&clusters.db("keep")).collection::<bson::Document>("a");
    coll.insert_one(doc! {"_id": "during"}).await.expect("source writable during the sync");
    sync.post_ok("commit", json!({})).await;
    sync.wait_state("COMMITTED", TIMEOUT).await;

    let destination_dbs = clusters.test_databases(&clusters.destination.client).await;
    assert_eq!(destination_dbs, vec![clusters.db("keep")], "only the included database is synced");
    let names = clusters.destination.client.database(&clusters.db("keep")).list_collection_names().await.expect("list");
    let mut names: Vec<_> = names.into_iter().filter(|n| !n.starts_with("system.")).collect();
    names.sort();
    assert_eq!(names, vec!["a".to_string(), "b".to_string()], "excluded collection must not be synced");
    let copied = clusters.destination.client.database(&clusters.db("keep")).collection::<bson::Document>("a");
    assert_eq!(copied.count_documents(doc! {}).await.expect("count"), 501);

    // sourceAndDestination: after commit the source refuses user writes, the destination takes them.
    let refused = coll.insert_one(doc! {"_id": "after"}).await;
    assert!(refused.is_err(), "the source must block user writes after commit");
    clusters
        .destination
        .user_client()
        .await
        .database(&clusters.db("keep"))
        .collection::<bson::Document>("a")
        .insert_one(doc! {"_id": "after"})
        .await
        .expect("destination writable after commit");
    // Leave the source writable for whoever shares it.
    clusters.source.admin(doc! {"setUserWriteBlockMode": 1, "global": false}).await.expect("unblock source");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_indexes_after_copy_and_never() {
    for (mode, expect_secondary) in [("afterDataCopy", true), ("never", false)] {
        let clusters = TestClusters::start().await;
        load(&clusters, "idx", &[("c", 2_000)]).await;
        let coll = clusters.source.client.database(&clusters.db("idx")).collection::<bson::Document>("c");
        coll.create_index(mongodb::IndexModel::builder().keys(doc! {"n": 1}).build()).await.expect("index");
        let mut sync = SyncProcess::start(&clusters.source.uri, &clusters.destination.uri, &[]);
        sync.wait_ready().await;
        sync.post_ok("start", start_body(&clusters, json!({"buildIndexes": mode}))).await;
        sync.wait_for("canCommit", TIMEOUT, |p| p["canCommit"] == true).await;
        sync.post_ok("commit", json!({})).await;
        sync.wait_state("COMMITTED", TIMEOUT).await;
        let names = clusters
            .destination
            .client
            .database(&clusters.db("idx"))
            .collection::<bson::Document>("c")
            .list_index_names()
            .await
            .expect("indexes");
        assert_eq!(names.contains(&"n_1".to_string()), expect_secondary, "buildIndexes {mode}: {names:?}");
        assert!(names.contains(&"_id_".to_string()));
        let count = clusters
            .destination
            .client
            .database(&clusters.db("idx"))
            .collection::<bson::Document>("c")
            .count_documents(doc! {})
            .await
            .expect("count");
        assert_eq!(count, 2_000, "buildIndexes {mode}");
    }
}
