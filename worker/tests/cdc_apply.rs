//! Change events during the copy are spooled, applied in order once the copy is complete, and
//! then applied live: the destination ends up equal to the source, document for document.

mod cdc_support;

use std::sync::atomic::Ordering;

use bson::{Document, doc};
use cdc_support::Harness;
use clustersync_common::model::{CdcStage, TaskStatus};

/// Updates of every shape the update description can take.
async fn mixed_writes(harness: &Harness, round: i32) {
    let users = harness.source_coll("app", "users");
    let base = round * 100;
    users
        .insert_many((0..20).map(|i| {
            doc! {"_id": base + i, "name": format!("u{i}"), "tags": ["a", "b", "c", "d"], "profile": {"age": i, "city": "x"}}
        }))
        .await
        .unwrap();
    // Nested and dotted paths, new fields, increments (reported as the new value).
    users
        .update_one(doc! {"_id": base + 1}, doc! {"$set": {"profile.city": "paris", "profile.geo.lat": 1.5}})
        .await
        .unwrap();
    users.update_one(doc! {"_id": base + 2}, doc! {"$inc": {"profile.age": 10}, "$set": {"score": 7}}).await.unwrap();
    // Removed fields.
    users.update_one(doc! {"_id": base + 3}, doc! {"$unset": {"profile.city": "", "name": ""}}).await.unwrap();
    // Array truncations and element updates.
    users.update_one(doc! {"_id": base + 4}, doc! {"$pop": {"tags": 1}}).await.unwrap();
    users.update_one(doc! {"_id": base + 5}, doc! {"$pull": {"tags": "b"}}).await.unwrap();
    users.update_one(doc! {"_id": base + 6}, doc! {"$push": {"tags": "e"}}).await.unwrap();
    users.update_one(doc! {"_id": base + 7}, doc! {"$set": {"tags.1": "B"}}).await.unwrap();
    users.update_one(doc! {"_id": base + 7}, doc! {"$pop": {"tags": -1}}).await.unwrap();
    // A field name made of digits inside an object: the path is ambiguous and is repaired.
    users.update_one(doc! {"_id": base + 8}, doc! {"$set": {"byYear": {"2024": 1}}}).await.unwrap();
    users.update_one(doc! {"_id": base + 8}, doc! {"$set": {"byYear.2024": 2}}).await.unwrap();
    // Replace, delete, delete-then-reinsert, many updates of one document.
    users.replace_one(doc! {"_id": base + 9}, doc! {"replaced": true, "n": round}).await.unwrap();
    users.delete_one(doc! {"_id": base + 10}).await.unwrap();
    users.delete_one(doc! {"_id": base + 11}).await.unwrap();
    users.insert_one(doc! {"_id": base + 11, "again": true}).await.unwrap();
    for n in 0..30 {
        users.update_one(doc! {"_id": base + 12}, doc! {"$set": {"counter": n}}).await.unwrap();
    }
    // A second collection and a second database.
    harness.source_coll("app", "orders").insert_one(doc! {"_id": format!("o{round}"), "total": 3}).await.unwrap();
    harness.source_coll("shop", "items").insert_one(doc! {"_id": round, "sku": "x"}).await.unwrap();
}

#[tokio::test]
async fn events_are_spooled_during_the_copy_then_applied_in_order() {
    let harness = Harness::start().await;
    // Data that exists before the start point is only brought over by the copy.
    harness.source_coll("app", "users").insert_one(doc! {"_id": -1, "old": true}).await.unwrap();
    let harness = {
        // The start point is taken after the pre-existing data, like the leader does.
        let mut harness = harness;
        harness.task.start_at = harness.source_time().await;
        harness
    };
    let running = harness.run().await;

    mixed_writes(&harness, 0).await;
    // The copy reads the source while events flow; here it runs half-way through the writes.
    harness.copy(&[("app", "users")]).await;
    mixed_writes(&harness, 1).await;

    let spooling = harness.wait_cdc("events spooled", |c| c.events_spooled >= 60).await;
    assert_eq!(spooling.stage, CdcStage::Spooling);
    assert_eq!(spooling.next_apply_seq, 0, "nothing is applied while the copy runs");
    assert!(spooling.resume_token.is_some());
    let spooled = harness.spool().count_documents(doc! {}).await.unwrap();
    assert!(spooled >= 60, "the spool holds the events: {spooled}");
    assert_eq!(
        harness.destination_coll("app", "orders").count_documents(doc! {}).await.unwrap(),
        0,
        "spooled events are not applied before the copy completes"
    );

    harness.copy(&[("app", "orders"), ("shop", "items")]).await;
    harness.complete_copy().await;
    harness.wait_live().await;
    harness.wait_converged("after draining the spool").await;
    let live = harness.cdc().await;
    assert_eq!(live.next_apply_seq, live.next_spool_seq);
    assert!(live.repairs >= 1, "the ambiguous update was repaired by lookup: {live:?}");
    assert!(!harness.spool_exists().await, "the spool is dropped once applied");

    // Live: events are applied as they arrive.
    mixed_writes(&harness, 2).await;
    harness.wait_converged("live").await;
    let applied_before = running.counters.events_applied.load(Ordering::Relaxed);
    assert!(applied_before > 100, "events applied: {applied_before}");
    let idle = harness
        .wait_checkpoint("an idle, caught-up stream", |_| running.counters.lag_ms.load(Ordering::Relaxed) == 0)
        .await;
    assert_eq!(idle.status, TaskStatus::Running);
    assert_eq!(running.counters.cdc_stage.load(Ordering::Relaxed), 2);

    let result = running.stop().await;
    assert!(matches!(result, Err(clustersync_worker::error::WorkerError::Cancelled)), "{result:?}");
}

#[tokio::test]
async fn documents_with_awkward_shapes_converge() {
    let harness = Harness::start().await;
    let running = harness.run().await;
    harness.copy(&[]).await;
    harness.complete_copy().await;
    harness.wait_live().await;

    let coll = harness.source_coll("app", "shapes");
    let ids = [
        bson::Bson::Int32(1),
        bson::Bson::Int64(2),
        bson::Bson::Double(3.5),
        bson::Bson::String("s".into()),
        bson::Bson::Document(doc! {"a": 1, "b": "x"}),
        bson::Bson::ObjectId(bson::oid::ObjectId::new()),
    ];
    for id in &ids {
        coll.insert_one(doc! {"_id": id.clone(), "v": 1, "nested": {"deep": {"x": [1, {"y": 2}]}}}).await.unwrap();
        coll.update_one(doc! {"_id": id.clone()}, doc! {"$set": {"nested.deep.x.1.y": 3, "w": null}}).await.unwrap();
        coll.update_one(doc! {"_id": id.clone()}, doc! {"$unset": {"v": ""}, "$push": {"nested.deep.x": 4}})
            .await
            .unwrap();
    }
    // Updating a field to an object and then a field inside it, in quick succession.
    coll.update_one(doc! {"_id": 1}, doc! {"$set": {"obj": {"k": 1}}}).await.unwrap();
    coll.update_one(doc! {"_id": 1}, doc! {"$set": {"obj.k2": 2}}).await.unwrap();
    // Pipeline updates report truncated arrays.
    coll.update_one(
        doc! {"_id": 2},
        vec![doc! {"$set": {"nested.deep.x": {"$slice": ["$nested.deep.x", 1]}, "p": {"$literal": 1}}}],
    )
    .await
    .unwrap();
    harness.wait_converged("awkward shapes").await;
    let documents: Vec<Document> = {
        use futures::TryStreamExt;
        harness.destination_coll("app", "shapes").find(doc! {}).await.unwrap().try_collect().await.unwrap()
    };
    assert_eq!(documents.len(), ids.len());
    running.stop().await.unwrap_err();
}

/// The size of an insert event of `{_id: <i32>, payload: <string of n bytes>}` into app.big,
/// minus `n`: measured on a change stream of the source.
async fn insert_event_overhead(harness: &Harness) -> usize {
    let coll = harness.source_coll("app", "probe");
    let mut stream = coll.watch().show_expanded_events(true).await.unwrap().with_type::<bson::RawDocumentBuf>();
    coll.insert_one(doc! {"_id": 0, "payload": "x"}).await.unwrap();
    let event = loop {
        if let Some(event) = stream.next_if_any().await.unwrap()
            && event.get_str("operationType").unwrap() == "insert"
        {
            break event;
        }
    };
    coll.drop().await.unwrap();
    // Same layout in app.big as in app.probe, bar the collection name's length (in `ns`).
    event.as_bytes().len() - 1 + "big".len() - "probe".len()
}

#[tokio::test]
async fn events_too_large_to_wrap_are_spooled_as_references() {
    let mut harness = Harness::start().await;
    let overhead = insert_event_overhead(&harness).await;
    // The probe's own events are not part of this test's stream.
    harness.task.start_at = harness.source_time().await;
    let running = harness.run().await;
    let coll = harness.source_coll("app", "big");
    // An event just under the 16 MB limit: deliverable, but not with a spool entry around it.
    let payload = "x".repeat(16 * 1024 * 1024 - 16 - overhead);
    coll.insert_one(doc! {"_id": 1, "payload": payload.clone()}).await.unwrap();
    coll.insert_one(doc! {"_id": 2, "small": true}).await.unwrap();
    // app.big's create and both inserts.
    let spooled = harness.wait_cdc("both events spooled", |c| c.events_spooled >= 3).await;
    assert_eq!(spooled.stage, CdcStage::Spooling);
    let reference = harness.spool().find_one(doc! {"ref": {"$exists": true}}).await.unwrap();
    let reference = reference.expect("the large event is spooled as a reference");
    assert_eq!(reference.get_document("ref").unwrap().get_document("documentKey").unwrap(), &doc! {"_id": 1});
    let wrapped = doc! {"ev.ns.coll": "big", "ev.documentKey._id": 1};
    assert_eq!(harness.spool().count_documents(wrapped).await.unwrap(), 0);

    harness.complete_copy().await;
    harness.wait_live().await;
    harness.wait_converged("large documents").await;
    // Live, large events go straight to the appliers.
    coll.update_one(doc! {"_id": 1}, doc! {"$set": {"small": 1}}).await.unwrap();
    coll.replace_one(doc! {"_id": 2}, doc! {"payload": &payload[..payload.len() - 100]}).await.unwrap();
    harness.wait_converged("large documents, live").await;
    running.stop().await.unwrap_err();
}

#[tokio::test]
async fn events_over_16_mb_arrive_in_fragments_and_are_applied() {
    let harness = Harness::start().await;
    let running = harness.run().await;
    // The insert event of a document just under 16 MB is over 16 MB: the server splits it into
    // fragments (`$changeStreamSplitLargeEvent`), which are reassembled, spooled as a reference
    // (too large for a spool entry) and applied by reading the document from the source.
    let payload = "x".repeat(16 * 1024 * 1024 - 100);
    let coll = harness.source_coll("app", "big");
    coll.insert_one(doc! {"_id": 1, "payload": payload.clone()}).await.unwrap();
    coll.insert_one(doc! {"_id": 2, "after": true}).await.unwrap();
    harness.wait_cdc("the split event spooled", |c| c.events_spooled >= 2).await;
    let reference = harness.spool().find_one(doc! {"ref.documentKey._id": 1}).await.unwrap();
    assert!(reference.is_some(), "the reassembled event is spooled as a reference");
    harness.complete_copy().await;
    harness.wait_live().await;
    harness.wait_converged("an event split by the server").await;
    // Live, the reassembled event goes to the appliers as is.
    coll.replace_one(doc! {"_id": 2}, doc! {"payload": payload}).await.unwrap();
    harness.wait_converged("a split event applied live").await;
    running.stop().await.unwrap_err();
}
