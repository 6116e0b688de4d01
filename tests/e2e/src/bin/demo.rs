//! The demo: two local test replica sets, sample data, a sync with live writes going on, the
//! commit, and the verification — what a user does with mongosync, end to end, in a minute.
//!
//! Run it with `scripts/demo.sh` (which builds the release binaries first). Against real
//! deployments, set `CLUSTERSYNC_TEST_SOURCE_URI` and `CLUSTERSYNC_TEST_DESTINATION_URI`: the
//! demo then only touches databases named `cs<random>_…`.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bson::doc;
use clustersync_e2e::data::{self, every_type_document};
use clustersync_e2e::load::LiveWriter;
use clustersync_e2e::{SyncProcess, TestClusters};
use mongodb::IndexModel;
use mongodb::options::IndexOptions;
use serde_json::{Value, json};

fn say(line: impl AsRef<str>) {
    println!("{}", line.as_ref());
}

#[tokio::main]
async fn main() {
    let started = Instant::now();
    say("== clustersync demo");
    let clusters = TestClusters::start().await;
    say(format!(
        "source      {} ({})",
        clusters.source.uri,
        if clusters.real { "real MongoDB" } else { "fake-mongod replica set" }
    ));
    say(format!("destination {}", clusters.destination.uri));

    // Sample data: a shop with orders (every BSON type), customers and an audit log.
    let shop = clusters.source.client.database(&clusters.db("shop"));
    let orders = shop.collection::<bson::Document>("orders");
    for chunk in (0..60_000).collect::<Vec<i64>>().chunks(5_000) {
        orders.insert_many(chunk.iter().map(|&i| every_type_document(i))).await.expect("load orders");
    }
    orders
        .create_indexes([
            IndexModel::builder()
                .keys(doc! {"string": 1})
                .options(IndexOptions::builder().unique(true).sparse(true).build())
                .build(),
            IndexModel::builder().keys(doc! {"date": -1, "int32": 1}).build(),
        ])
        .await
        .expect("order indexes");
    let customers = shop.collection::<bson::Document>("customers");
    customers
        .insert_many(
            (0..5_000)
                .map(|i| doc! {"_id": bson::oid::ObjectId::new(), "name": format!("customer {i}"), "tier": i % 3}),
        )
        .await
        .expect("load customers");
    let audit = clusters.source.client.database(&clusters.db("audit"));
    audit.create_collection("log").capped(true).size(1 << 20).await.expect("capped log");
    audit
        .collection::<bson::Document>("log")
        .insert_many((0..1_000).map(|i| doc! {"_id": i, "event": "login", "at": bson::DateTime::now()}))
        .await
        .expect("load log");
    let databases = clusters.test_databases(&clusters.source.client).await;
    let loaded = data::count_documents(&clusters.source.client, &databases).await;
    say(format!("loaded {loaded} documents into {} databases", databases.len()));

    let mut sync = SyncProcess::start(&clusters.source.uri, &clusters.destination.uri, &[]);
    sync.wait_ready().await;
    say(format!("clustersync is up: REST API on 127.0.0.1:{}", sync.port));

    let writer =
        LiveWriter::start(clusters.source.user_client().await, clusters.db("shop"), "orders".into(), 70_000, true);
    say("live writes started on the source (inserts, updates, replaces, deletes, DDL)");
    let body = json!({"source": "cluster0", "destination": "cluster1", "includeNamespaces": clusters.include_filter()});
    say(format!("POST /api/v1/start {body}"));
    sync.post_ok("start", body).await;

    let mut last_line = String::new();
    let ready = loop {
        let progress = sync.progress().await;
        let line = progress_line(&progress);
        if line != last_line {
            say(format!("  {line}"));
            last_line = line;
        }
        if progress["canCommit"] == true {
            break progress;
        }
        if progress["state"] == "FAILED" {
            panic!("the migration failed: {progress:#}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    say(format!("canCommit is true ({})", progress_line(&ready)));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let counts = writer.stop().await;
    say(format!(
        "live writes stopped: {} inserts, {} updates, {} replaces, {} deletes, {} DDL",
        counts.inserts.load(Ordering::Relaxed),
        counts.updates.load(Ordering::Relaxed),
        counts.replaces.load(Ordering::Relaxed),
        counts.deletes.load(Ordering::Relaxed),
        counts.ddl.load(Ordering::Relaxed)
    ));

    say("POST /api/v1/commit {}");
    sync.post_ok("commit", json!({})).await;
    let committed = sync.wait_state("COMMITTED", Duration::from_secs(600)).await;
    say(format!("  {}", progress_line(&committed)));
    let verification = &committed["verification"];
    // Capped collections are compared by their options and indexes only: their documents can
    // age out on either side independently, so they are not hashed.
    say(format!(
        "verification: source {} documents hashed ({}), destination {} documents hashed ({}); capped collections \
         compared by options and indexes",
        verification["source"]["hashedDocumentCount"],
        verification["source"]["phase"],
        verification["destination"]["hashedDocumentCount"],
        verification["destination"]["phase"]
    ));

    // An independent check, outside clustersync: read both sides in full and compare.
    let databases = clusters.test_databases(&clusters.source.client).await;
    let source = data::snapshot(&clusters.source.client, &databases).await;
    let destination = data::snapshot(&clusters.destination.client, &databases).await;
    data::assert_snapshots_equal(&source, &destination);
    let (collections, documents, indexes) = source
        .iter()
        .flat_map(|(_, c)| c)
        .fold((0, 0, 0), |acc, c| (acc.0 + 1, acc.1 + c.documents.len(), acc.2 + c.indexes.len()));
    say(format!(
        "independent comparison: destination equals source — {collections} collections, {documents} documents, \
         {indexes} indexes, options and index properties restored"
    ));
    say(format!("demo finished in {:.1} s", started.elapsed().as_secs_f64()));
}

fn progress_line(progress: &Value) -> String {
    let copy = &progress["collectionCopy"];
    let total = copy["estimatedTotalBytes"].as_f64().unwrap_or(0.0);
    let copied = copy["estimatedCopiedBytes"].as_f64().unwrap_or(0.0);
    let percent = if total > 0.0 { (copied / total * 100.0).min(100.0) } else { 0.0 };
    format!(
        "state={} phase={} copied={:.0}% canCommit={} canWrite={} lag={} eventsApplied={}",
        progress["state"].as_str().unwrap_or("?"),
        progress["phase"].as_str().unwrap_or("-"),
        percent,
        progress["canCommit"],
        progress["canWrite"],
        progress["lagTimeSeconds"].as_u64().map_or_else(|| "-".to_string(), |lag| format!("{lag}s")),
        progress["totalEventsApplied"]
    )
}
