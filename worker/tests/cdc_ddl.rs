//! DDL during the sync: applied in stream order (as barriers), renames that overlapped the copy
//! copy the collection again, renames across the namespace filter, and DDL that cannot be
//! applied correctly fails the task with the reason.

mod cdc_support;

use bson::doc;
use cdc_support::{Harness, options, test_settings};
use clustersync_common::model::TaskStatus;
use clustersync_worker::error::WorkerError;

#[tokio::test]
async fn ddl_is_applied_in_stream_order() {
    let harness = Harness::start().await;
    let running = harness.run().await;
    harness.complete_copy().await;
    harness.wait_live().await;

    let app = harness.user.database("app");
    app.create_collection("c1").await.unwrap();
    harness.source_coll("app", "c1").insert_many((0..10).map(|i| doc! {"_id": i, "x": i, "y": i % 3})).await.unwrap();
    harness
        .source_command(
            "app",
            doc! {"createIndexes": "c1", "indexes": [
                {"key": {"x": 1}, "name": "x_1", "unique": true},
                {"key": {"y": -1}, "name": "y_-1"},
            ]},
        )
        .await;
    harness.source_command("app", doc! {"dropIndexes": "c1", "index": "y_-1"}).await;
    // Writes between DDL events land on the right side of each barrier.
    harness.source_coll("app", "c1").update_many(doc! {}, doc! {"$set": {"z": 1}}).await.unwrap();
    harness.source_command("admin", doc! {"renameCollection": "app.c1", "to": "app.c2"}).await;
    harness.source_coll("app", "c2").insert_one(doc! {"_id": 100, "after": "rename"}).await.unwrap();
    harness.source_command("admin", doc! {"renameCollection": "app.c2", "to": "other.c3"}).await;
    harness.source_coll("other", "c3").delete_one(doc! {"_id": 0}).await.unwrap();
    harness.source_command("other", doc! {"collMod": "c3", "validator": {"x": {"$exists": true}}}).await;
    // A collection created, filled and dropped; a database created and dropped.
    harness.source_coll("app", "short").insert_one(doc! {"_id": 1}).await.unwrap();
    harness.source_coll("app", "short").drop().await.unwrap();
    harness.source_coll("temp", "a").insert_one(doc! {"_id": 1}).await.unwrap();
    harness.source_coll("temp", "b").insert_one(doc! {"_id": 1}).await.unwrap();
    harness.user.database("temp").drop().await.unwrap();
    // A rename over an existing collection (dropTarget).
    harness.source_coll("app", "target").insert_one(doc! {"_id": "old"}).await.unwrap();
    harness.source_coll("app", "replacement").insert_one(doc! {"_id": "new"}).await.unwrap();
    harness
        .source_command("admin", doc! {"renameCollection": "app.replacement", "to": "app.target", "dropTarget": true})
        .await;

    harness.wait_converged("after ddl").await;
    assert_eq!(harness.destination_indexes("other", "c3").await, vec!["_id_".to_string(), "x_1".to_string()]);
    let destination_dbs = harness.check.list_database_names().await.unwrap();
    assert!(
        !destination_dbs.contains(&"temp".to_string()) || {
            harness.check.database("temp").list_collection_names().await.unwrap().is_empty()
        }
    );
    let target: Vec<_> = {
        use futures::TryStreamExt;
        harness.destination_coll("app", "target").find(doc! {}).await.unwrap().try_collect().await.unwrap()
    };
    assert_eq!(target, vec![doc! {"_id": "new"}]);
    running.stop().await.unwrap_err();
}

#[tokio::test]
async fn a_rename_that_overlapped_the_copy_copies_the_collection_again() {
    let mut harness = Harness::start().await;
    let source = harness.source_coll("app", "a");
    source.insert_many((0..50).map(|i| doc! {"_id": i, "v": i})).await.unwrap();
    harness.task.start_at = harness.source_time().await;
    let running = harness.run().await;

    // The copy of app.a got through ten documents when app.a was renamed away under it.
    harness.destination_coll("app", "a").insert_many((0..10).map(|i| doc! {"_id": i, "v": i})).await.unwrap();
    harness.source_command("admin", doc! {"renameCollection": "app.a", "to": "app.b"}).await;
    harness.source_coll("app", "b").insert_one(doc! {"_id": 50, "v": 50}).await.unwrap();
    harness.source_coll("app", "b").update_one(doc! {"_id": 20}, doc! {"$set": {"v": -20}}).await.unwrap();
    harness.wait_cdc("the rename spooled", |c| c.events_spooled >= 3).await;
    harness.complete_copy().await;

    harness.wait_live().await;
    harness.wait_converged("after the re-copy").await;
    assert_eq!(harness.destination_coll("app", "b").count_documents(doc! {}).await.unwrap(), 51);
    running.stop().await.unwrap_err();
}

#[tokio::test]
async fn renames_across_the_filter_create_or_drop() {
    let options = options(serde_json::json!({
        "includeNamespaces": [{"database": "app", "collections": ["kept", "incoming"]}],
    }));
    let mut harness = Harness::start_with(options, test_settings()).await;
    harness.source_coll("app", "outside").insert_many((0..5).map(|i| doc! {"_id": i})).await.unwrap();
    harness
        .source_command("app", doc! {"createIndexes": "outside", "indexes": [{"key": {"k": 1}, "name": "k_1"}]})
        .await;
    harness.source_coll("app", "kept").insert_many((0..3).map(|i| doc! {"_id": i})).await.unwrap();
    harness.task.start_at = harness.source_time().await;
    let running = harness.run().await;
    harness.copy(&[("app", "kept")]).await;
    harness.complete_copy().await;
    harness.wait_live().await;

    // Excluded → included: created as on the source (with its indexes) and copied.
    harness.source_command("admin", doc! {"renameCollection": "app.outside", "to": "app.incoming"}).await;
    // Included → excluded: gone from the destination.
    harness.source_command("admin", doc! {"renameCollection": "app.kept", "to": "app.gone"}).await;
    // Writes to an excluded collection are never applied.
    harness.source_coll("app", "gone").insert_one(doc! {"_id": 99}).await.unwrap();

    harness.wait_converged("renames across the filter").await;
    assert_eq!(harness.destination_coll("app", "incoming").count_documents(doc! {}).await.unwrap(), 5);
    assert_eq!(harness.destination_indexes("app", "incoming").await, vec!["_id_".to_string(), "k_1".to_string()]);
    let names = harness.check.database("app").list_collection_names().await.unwrap();
    assert!(!names.contains(&"gone".to_string()) && !names.contains(&"kept".to_string()), "{names:?}");
    running.stop().await.unwrap_err();
}

#[tokio::test]
async fn convert_to_capped_fails_the_task_with_the_reason() {
    let harness = Harness::start().await;
    let running = harness.run().await;
    harness.complete_copy().await;
    harness.wait_live().await;
    harness.source_coll("app", "orders").insert_one(doc! {"_id": 1}).await.unwrap();
    // What MongoDB 7.0 writes for `convertToCapped`: a temporary capped copy renamed over the
    // original (`tmp<5 random>.convertToCapped.<name>`, dropTarget).
    harness
        .source_command("app", doc! {"create": "tmpQ7x2K.convertToCapped.orders", "capped": true, "size": 4096})
        .await;
    harness.source_coll("app", "tmpQ7x2K.convertToCapped.orders").insert_one(doc! {"_id": 1}).await.unwrap();
    harness
        .source_command(
            "admin",
            doc! {"renameCollection": "app.tmpQ7x2K.convertToCapped.orders", "to": "app.orders", "dropTarget": true},
        )
        .await;

    let result = running.finished().await;
    let Err(WorkerError::Fatal { name, description }) = result else { panic!("expected a fatal error: {result:?}") };
    assert_eq!(name, "UnsupportedDdl");
    assert!(description.contains("convertToCapped of app.orders"), "{description}");
    let checkpoint = harness.checkpoint().await.unwrap();
    let TaskStatus::Failed { error, description } = checkpoint.status else {
        panic!("the failure is recorded: {checkpoint:?}")
    };
    assert_eq!(error, "UnsupportedDdl");
    assert!(description.contains("start a new migration"), "{description}");
    // Everything before the conversion was applied, nothing after.
    assert_eq!(harness.destination_coll("app", "orders").count_documents(doc! {}).await.unwrap(), 1);
}

#[tokio::test]
async fn a_repair_after_the_collection_was_renamed_away_is_settled_by_the_rename() {
    let harness = Harness::start().await;
    let running = harness.run().await;
    harness.complete_copy().await;
    harness.wait_live().await;

    // The destination is slow, so the source is ahead: by the time the ambiguous update below
    // (which is repaired by lookup) is applied, app.a is already called app.b on the source.
    harness
        .destination_fail_point(
            bson::Bson::String("alwaysOn".into()),
            doc! {"failCommands": ["update"], "blockConnection": true, "blockTimeMS": 300},
        )
        .await;
    let a = harness.source_coll("app", "a");
    a.insert_one(doc! {"_id": 1, "byYear": {"2024": 1}}).await.unwrap();
    a.update_one(doc! {"_id": 1}, doc! {"$set": {"byYear.2024": 2}}).await.unwrap();
    harness.source_command("admin", doc! {"renameCollection": "app.a", "to": "app.b"}).await;
    harness.source_coll("app", "b").insert_one(doc! {"_id": 2}).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    harness.destination_fail_point(bson::Bson::String("off".into()), doc! {}).await;

    harness.wait_converged("after the deferred repair").await;
    let b: Vec<_> = {
        use futures::TryStreamExt;
        harness
            .destination_coll("app", "b")
            .find(doc! {})
            .sort(doc! {"_id": 1})
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap()
    };
    assert_eq!(b, vec![doc! {"_id": 1, "byYear": {"2024": 2}}, doc! {"_id": 2}]);
    harness.wait_cdc("the repair counted", |c| c.repairs >= 1).await;
    running.stop().await.unwrap_err();
}
