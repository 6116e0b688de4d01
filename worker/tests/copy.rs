//! The copy executor against the test server: mixed `_id` types, huge documents, resuming
//! from a checkpoint, fencing, dropped connections and elections, vanished collections,
//! natural-order copies and re-copies.

mod support;

use std::time::Duration;

use bson::oid::ObjectId;
use bson::spec::BinarySubtype;
use bson::{Binary, Bson, DateTime, Document, JavaScriptCodeWithScope, Timestamp, doc};
use clustersync_common::ids::{CollectionId, TaskId};
use clustersync_common::model::{CheckpointDetail, CopyCheckpoint, CopyTask, IdRange, TaskStatus};
use clustersync_common::namespace::Namespace;
use clustersync_worker::error::WorkerError;
use clustersync_worker::{copy, partition};
use support::{Coordination, HookAction, World, insert, raw_documents, small_batches};

fn copy_task(ns: &Namespace, range: IdRange, natural_order: bool) -> CopyTask {
    CopyTask {
        collection: CollectionId(1),
        ns: ns.clone(),
        range,
        natural_order,
        estimated_documents: 0,
        estimated_bytes: 0,
    }
}

fn copy_checkpoint(checkpoint: &clustersync_common::model::TaskCheckpoint) -> CopyCheckpoint {
    match &checkpoint.detail {
        CheckpointDetail::Copy(copy) => copy.clone(),
        other => panic!("not a copy checkpoint: {other:?}"),
    }
}

/// One document per `_id` type MongoDB allows, plus many of the splittable types.
fn mixed_documents() -> Vec<Document> {
    let mut ids: Vec<Bson> = vec![
        Bson::MinKey,
        Bson::Null,
        Bson::Double(f64::NAN),
        Bson::Double(-0.5),
        Bson::Int64(1 << 40),
        Bson::Decimal128("12.75".parse().expect("decimal")),
        Bson::Double(f64::INFINITY),
        Bson::Symbol("a symbol".into()),
        Bson::Document(doc! {"a": 1, "b": "x"}),
        Bson::Document(doc! {"a": 2}),
        Bson::Binary(Binary { subtype: BinarySubtype::Generic, bytes: vec![1, 2, 3] }),
        Bson::Binary(Binary { subtype: BinarySubtype::Uuid, bytes: vec![7; 16] }),
        Bson::Boolean(false),
        Bson::Boolean(true),
        Bson::DateTime(DateTime::from_millis(1_700_000_000_000)),
        Bson::Timestamp(Timestamp { time: 5, increment: 1 }),
        Bson::JavaScriptCode("function() {}".into()),
        Bson::JavaScriptCodeWithScope(JavaScriptCodeWithScope { code: "x".into(), scope: doc! {"x": 1} }),
        Bson::MaxKey,
    ];
    ids.extend((0..300).map(Bson::Int32));
    ids.extend((0..300).map(|i| Bson::String(format!("key-{i:05}"))));
    ids.extend((0..300u32).map(|i| {
        let mut bytes = [0u8; 12];
        bytes[8..].copy_from_slice(&i.to_be_bytes());
        Bson::ObjectId(ObjectId::from_bytes(bytes))
    }));
    ids.into_iter().enumerate().map(|(i, id)| doc! {"_id": id, "n": i as i64, "pad": "p".repeat(200)}).collect()
}

async fn assert_same_documents(world: &World, ns: &Namespace) {
    let source = raw_documents(world.source(), ns).await;
    let destination = raw_documents(world.destination(), ns).await;
    assert_eq!(source.len(), destination.len(), "document counts of {ns}");
    for (a, b) in source.iter().zip(destination.iter()) {
        assert_eq!(a.as_bytes(), b.as_bytes(), "documents differ: {a:?} vs {b:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_id_type_in_one_collection_is_copied_exactly_once_across_planned_ranges() {
    let world = World::start().await;
    world.reset("mixed").await;
    let ns = Namespace::new("mixed", "ids");
    let documents = mixed_documents();
    let total = documents.len() as u64;
    insert(world.source(), &ns, documents).await;
    world.destination().database("mixed").create_collection("ids").await.expect("create destination");

    // Tiny partitions force a split of every splittable bracket.
    let settings = clustersync_worker::settings::WorkerSettings { partition_bytes: 20_000, ..small_batches(64) };
    let stats = partition::collection_stats(&world.clusters, &ns).await.expect("stats");
    assert_eq!(stats.documents, total);
    let ranges = partition::plan_ranges(&world.clusters, &ns, &stats, &settings, false).await.expect("plan");
    assert!(ranges.len() > 6, "expected a split collection, got {ranges:?}");
    assert_eq!(ranges.last().map(|r| r.bracket), Some(clustersync_common::model::IdBracket::Other));

    let coordination = Coordination::new().await;
    let mut copied = 0;
    let mut recopied = 0;
    for (i, range) in ranges.iter().enumerate() {
        let task = TaskId(100 + i as u64);
        let ctx = coordination.context(&world, task, settings.clone()).await;
        copy::run_copy(&ctx, &copy_task(&ns, range.clone(), false)).await.expect("copy range");
        let checkpoint = coordination.checkpoint(task).await.expect("checkpoint");
        assert_eq!(checkpoint.status, TaskStatus::Done, "range {range}");
        let detail = copy_checkpoint(&checkpoint);
        copied += detail.documents_copied;
        recopied += detail.documents_recopied;
    }
    // Exactly once: every document copied by one range, none inserted twice.
    assert_eq!(copied, total, "documents copied over all ranges");
    assert_eq!(recopied, 0, "ranges must not overlap");
    assert_same_documents(&world, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_of_almost_16_mb_is_copied_alone() {
    let world = World::start().await;
    world.reset("big").await;
    let ns = Namespace::new("big", "docs");
    let huge = "h".repeat(16 * 1024 * 1024 - 200);
    insert(world.source(), &ns, vec![doc! {"_id": 1, "s": "small"}]).await;
    insert(world.source(), &ns, vec![doc! {"_id": 2, "blob": huge}]).await;
    insert(world.source(), &ns, vec![doc! {"_id": 3, "s": "small"}]).await;
    world.destination().database("big").create_collection("docs").await.expect("create destination");

    let coordination = Coordination::new().await;
    let ctx = coordination.context(&world, TaskId(1), small_batches(100)).await;
    copy::run_copy(&ctx, &copy_task(&ns, IdRange::whole_collection(), false)).await.expect("copy");
    // Batches: [1], [2] (too big to join), [3]: one checkpoint each plus the final one.
    assert_eq!(coordination.store.hook.checkpoint_writes(), 4);
    let detail = copy_checkpoint(&coordination.checkpoint(TaskId(1)).await.expect("checkpoint"));
    assert_eq!(detail.documents_copied, 3);
    assert!(detail.bytes_copied > 16_000_000, "{}", detail.bytes_copied);
    assert_same_documents(&world, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_copy_stops_at_once_and_the_next_holder_recopies_at_most_one_batch() {
    let world = World::start().await;
    world.reset("resume").await;
    let ns = Namespace::new("resume", "c");
    // Mixed types so resuming a whole-collection copy after a number must still reach strings.
    let mut documents: Vec<Document> = (0..500).map(|i| doc! {"_id": i, "v": i}).collect();
    documents.extend((0..500).map(|i| doc! {"_id": format!("s{i:04}"), "v": i}));
    insert(world.source(), &ns, documents).await;
    world.destination().database("resume").create_collection("c").await.expect("create destination");

    let coordination = Coordination::new().await;
    // The 4th checkpoint write finds the claim gone: batch 4 is on the destination, its
    // checkpoint is not.
    coordination
        .store
        .hook
        .on_checkpoint(Box::new(|n| if n == 4 { HookAction::FenceBefore } else { HookAction::Pass }));
    let task = TaskId(7);
    let first = coordination.context(&world, task, small_batches(100)).await;
    let error = copy::run_copy(&first, &copy_task(&ns, IdRange::whole_collection(), false))
        .await
        .expect_err("the copy must stop when fenced");
    assert!(matches!(error, WorkerError::Fenced { .. }), "{error}");
    // Stopped at once: nothing after batch 4 was inserted, no write after the fence.
    let destination_count = world
        .destination()
        .database("resume")
        .collection::<Document>("c")
        .count_documents(doc! {})
        .await
        .expect("count");
    assert_eq!(destination_count, 400);
    assert_eq!(coordination.store.hook.checkpoint_writes(), 4);
    let stored = copy_checkpoint(&coordination.checkpoint(task).await.expect("checkpoint"));
    assert_eq!(stored.documents_copied, 300);
    assert_eq!(stored.last_id.as_ref().map(|id| id.0.clone()), Some(Bson::Int32(299)));

    // Another holder takes over from the checkpoint.
    let second = coordination.context(&world, task, small_batches(100)).await;
    assert!(second.previous.is_some());
    copy::run_copy(&second, &copy_task(&ns, IdRange::whole_collection(), false)).await.expect("resumed copy");
    let done = coordination.checkpoint(task).await.expect("checkpoint");
    assert_eq!(done.status, TaskStatus::Done);
    let detail = copy_checkpoint(&done);
    assert_eq!(detail.documents_copied, 1000, "every document counted once");
    assert!(detail.documents_recopied <= 100, "re-copied more than one batch: {}", detail.documents_recopied);
    assert_eq!(detail.documents_recopied, 100, "batch 4 was on the destination without its checkpoint");
    assert_same_documents(&world, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_and_a_step_down_mid_copy_lose_nothing() {
    let world = World::start().await;
    world.reset("faults").await;
    let ns = Namespace::new("faults", "c");
    insert(world.source(), &ns, (0..3000).map(|i| doc! {"_id": i, "payload": "x".repeat(100)}).collect()).await;
    world.destination().database("faults").create_collection("c").await.expect("create destination");

    let coordination = Coordination::new().await;
    let source = world.source_server();
    let destination = world.destination_server();
    coordination.store.hook.on_checkpoint(Box::new(move |n| {
        match n {
            3 => source.drop_all_connections(),
            6 => destination.step_down(Duration::from_millis(300)),
            9 => destination.drop_all_connections(),
            _ => {}
        }
        HookAction::Pass
    }));
    let ctx = coordination.context(&world, TaskId(3), small_batches(200)).await;
    copy::run_copy(&ctx, &copy_task(&ns, IdRange::whole_collection(), false)).await.expect("copy through faults");
    let detail = copy_checkpoint(&coordination.checkpoint(TaskId(3)).await.expect("checkpoint"));
    assert_eq!(detail.documents_copied, 3000);
    assert!(detail.documents_recopied <= 600, "{}", detail.documents_recopied);
    assert_same_documents(&world, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_source_collection_is_an_empty_successful_copy() {
    let world = World::start().await;
    world.reset("gone").await;
    let ns = Namespace::new("gone", "never");
    let coordination = Coordination::new().await;
    let ctx = coordination.context(&world, TaskId(4), small_batches(10)).await;
    copy::run_copy(&ctx, &copy_task(&ns, IdRange::whole_collection(), false)).await.expect("empty copy");
    let checkpoint = coordination.checkpoint(TaskId(4)).await.expect("checkpoint");
    assert_eq!(checkpoint.status, TaskStatus::Done);
    assert_eq!(copy_checkpoint(&checkpoint).documents_copied, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_copy_returns_cancelled_and_a_done_task_is_not_copied_again() {
    let world = World::start().await;
    world.reset("cancel").await;
    let ns = Namespace::new("cancel", "c");
    insert(world.source(), &ns, (0..50).map(|i| doc! {"_id": i}).collect()).await;
    let coordination = Coordination::new().await;
    let ctx = coordination.context(&world, TaskId(5), small_batches(10)).await;
    ctx.cancel.cancel();
    let error = copy::run_copy(&ctx, &copy_task(&ns, IdRange::whole_collection(), false)).await.expect_err("cancelled");
    assert!(matches!(error, WorkerError::Cancelled), "{error}");

    coordination.release(TaskId(5)).await;
    let ctx = coordination.context(&world, TaskId(5), small_batches(10)).await;
    copy::run_copy(&ctx, &copy_task(&ns, IdRange::whole_collection(), false)).await.expect("copy");
    coordination.release(TaskId(5)).await;
    let writes = coordination.store.hook.checkpoint_writes();
    // A second run of a finished task only confirms the Done checkpoint.
    let ctx = coordination.context(&world, TaskId(5), small_batches(10)).await;
    copy::run_copy(&ctx, &copy_task(&ns, IdRange::whole_collection(), false)).await.expect("done again");
    assert_eq!(coordination.store.hook.checkpoint_writes(), writes + 1);
    let detail = copy_checkpoint(&coordination.checkpoint(TaskId(5)).await.expect("checkpoint"));
    assert_eq!((detail.documents_copied, detail.documents_recopied), (50, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_natural_order_copy_restarts_from_the_beginning_and_skips_duplicates() {
    let world = World::start().await;
    world.reset("natural").await;
    let ns = Namespace::new("natural", "capped");
    world
        .source()
        .database("natural")
        .run_command(doc! {"create": "capped", "capped": true, "size": 1_000_000})
        .await
        .expect("create capped");
    // Inserted in an order unrelated to `_id`.
    insert(world.source(), &ns, (0..250).map(|i| doc! {"_id": (i * 7919) % 1000, "i": i}).collect()).await;
    world
        .destination()
        .database("natural")
        .run_command(doc! {"create": "capped", "capped": true, "size": 1_000_000})
        .await
        .expect("create destination capped");

    let coordination = Coordination::new().await;
    coordination
        .store
        .hook
        .on_checkpoint(Box::new(|n| if n == 2 { HookAction::FenceBefore } else { HookAction::Pass }));
    let task = TaskId(9);
    let first = coordination.context(&world, task, small_batches(50)).await;
    let error = copy::run_copy(&first, &copy_task(&ns, IdRange::whole_collection(), true)).await.expect_err("fenced");
    assert!(matches!(error, WorkerError::Fenced { .. }), "{error}");

    let second = coordination.context(&world, task, small_batches(50)).await;
    copy::run_copy(&second, &copy_task(&ns, IdRange::whole_collection(), true)).await.expect("restarted copy");
    let detail = copy_checkpoint(&coordination.checkpoint(task).await.expect("checkpoint"));
    assert_eq!(detail.documents_copied, 250);
    assert_eq!(detail.documents_recopied, 100, "the two batches inserted before the fence are skipped");
    assert!(detail.last_id.is_none());
    // Natural order is preserved on the destination.
    let order = |client: mongodb::Client| async move {
        use futures::TryStreamExt;
        client
            .database("natural")
            .collection::<Document>("capped")
            .find(doc! {})
            .await
            .expect("find")
            .try_collect::<Vec<Document>>()
            .await
            .expect("read")
            .into_iter()
            .map(|d| d.get_i32("i").expect("i"))
            .collect::<Vec<_>>()
    };
    assert_eq!(order(world.source().clone()).await, order(world.destination().clone()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recopy_replaces_and_adds_documents_by_id() {
    let world = World::start().await;
    world.reset("recopy").await;
    let ns = Namespace::new("recopy", "c");
    insert(world.source(), &ns, (0..1500).map(|i| doc! {"_id": i, "v": i}).collect()).await;
    // The destination has a stale half of the collection.
    insert(world.destination(), &ns, (0..700).map(|i| doc! {"_id": i, "v": -1}).collect()).await;
    let cancel = tokio_util::sync::CancellationToken::new();
    copy::recopy_collection(&world.clusters, &ns, &cancel).await.expect("recopy");
    assert_same_documents(&world, &ns).await;
    // Idempotent.
    copy::recopy_collection(&world.clusters, &ns, &cancel).await.expect("recopy again");
    assert_same_documents(&world, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_copy_into_a_time_series_collection_does_not_duplicate_measurements() {
    let world = World::start().await;
    world.reset("series").await;
    let ns = Namespace::new("series", "m");
    for client in [world.source(), world.destination()] {
        client
            .database("series")
            .run_command(doc! {"create": "m", "timeseries": {"timeField": "t", "metaField": "sensor"}})
            .await
            .expect("create time series");
    }
    let start = 1_700_000_000_000_i64;
    insert(
        world.source(),
        &ns,
        (0..300).map(|i| doc! {"_id": i, "t": DateTime::from_millis(start + i), "sensor": i % 4, "v": i}).collect(),
    )
    .await;

    let coordination = Coordination::new().await;
    // Batch 3 lands without its checkpoint; the time-series collection would accept it twice.
    coordination
        .store
        .hook
        .on_checkpoint(Box::new(|n| if n == 3 { HookAction::FenceBefore } else { HookAction::Pass }));
    let task = TaskId(11);
    let first = coordination.context(&world, task, small_batches(50)).await;
    let error = copy::run_copy(&first, &copy_task(&ns, IdRange::whole_collection(), false)).await.expect_err("fenced");
    assert!(matches!(error, WorkerError::Fenced { .. }), "{error}");
    let count = || async {
        world
            .destination()
            .database("series")
            .collection::<Document>("m")
            .count_documents(doc! {})
            .await
            .expect("count")
    };
    assert_eq!(count().await, 150);

    let second = coordination.context(&world, task, small_batches(50)).await;
    copy::run_copy(&second, &copy_task(&ns, IdRange::whole_collection(), false)).await.expect("resumed copy");
    assert_eq!(count().await, 300, "no measurement copied twice");
    let detail = copy_checkpoint(&coordination.checkpoint(task).await.expect("checkpoint"));
    assert_eq!(detail.documents_copied, 300);
    assert_eq!(detail.documents_recopied, 50, "the unacknowledged batch was removed and copied again");
    assert_same_documents(&world, &ns).await;
}
