//! Verification against the test server: equal ranges pass with equal digests, and a missing,
//! an extra and a changed document are each detected and named; metadata verification after
//! the commit-time restore.

mod support;

use bson::{Document, doc};
use clustersync_common::extjson::ExtDoc;
use clustersync_common::ids::{CollectionId, TaskId};
use clustersync_common::model::{
    BuildIndexes, CheckpointDetail, CollectionKind, IdBracket, IdRange, PlannedCollection, TaskStatus,
    VerifyCheckpoint, VerifyMetadataTask, VerifyTask,
};
use clustersync_common::namespace::Namespace;
use clustersync_worker::{schema, verify};
use support::{Coordination, World, collection_options, insert, small_batches};

fn verify_result(checkpoint: &clustersync_common::model::TaskCheckpoint) -> VerifyCheckpoint {
    assert_eq!(checkpoint.status, TaskStatus::Done);
    match &checkpoint.detail {
        CheckpointDetail::Verify(result) | CheckpointDetail::VerifyMetadata(result) => result.clone(),
        other => panic!("not a verify checkpoint: {other:?}"),
    }
}

fn documents() -> Vec<Document> {
    let mut documents: Vec<Document> = (0..400).map(|i| doc! {"_id": i, "v": i, "s": "x".repeat(50)}).collect();
    documents.extend((0..100).map(|i| doc! {"_id": format!("k{i:03}"), "v": i}));
    documents
}

async fn verify_range(
    world: &World,
    coordination: &Coordination,
    task: TaskId,
    ns: &Namespace,
    range: IdRange,
) -> VerifyCheckpoint {
    let ctx = coordination.context(world, task, small_batches(64)).await;
    verify::run_verify(&ctx, &VerifyTask { ns: ns.clone(), range }).await.expect("verify runs");
    verify_result(&coordination.checkpoint(task).await.expect("checkpoint"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_sides_verify_with_equal_digests() {
    let world = World::start().await;
    world.reset("same").await;
    let ns = Namespace::new("same", "c");
    insert(world.source(), &ns, documents()).await;
    insert(world.destination(), &ns, documents()).await;
    let coordination = Coordination::new().await;
    let result = verify_range(&world, &coordination, TaskId(1), &ns, IdRange::whole_collection()).await;
    assert!(result.differences.is_empty(), "{:?}", result.differences);
    assert_eq!(result.source, result.destination);
    assert_eq!(result.source.documents, 500);
    assert_eq!(result.source.hash.len(), 32);
    // A bracket range covers only its own type.
    let numbers = IdRange { bracket: IdBracket::Number, lower: None, upper: None };
    let result = verify_range(&world, &coordination, TaskId(2), &ns, numbers).await;
    assert!(result.differences.is_empty());
    assert_eq!(result.source.documents, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_an_extra_and_a_changed_document_are_named() {
    let world = World::start().await;
    world.reset("diff").await;
    let ns = Namespace::new("diff", "c");
    insert(world.source(), &ns, documents()).await;
    insert(world.destination(), &ns, documents()).await;
    let destination = world.destination().database("diff").collection::<Document>("c");
    destination.delete_one(doc! {"_id": 17}).await.expect("delete");
    destination.insert_one(doc! {"_id": 1000, "v": "extra"}).await.expect("insert");
    destination.update_one(doc! {"_id": "k042"}, doc! {"$set": {"v": -1}}).await.expect("update");
    // The same fields in another order are a difference too.
    destination.replace_one(doc! {"_id": 300}, doc! {"s": "x".repeat(50), "v": 300}).await.expect("replace");

    let coordination = Coordination::new().await;
    let result = verify_range(&world, &coordination, TaskId(1), &ns, IdRange::whole_collection()).await;
    assert_eq!(
        result.differences,
        vec![
            "_id 17: missing on destination".to_string(),
            "_id 300: differs (same fields in another order)".to_string(),
            "_id 1000: extra on destination".to_string(),
            "_id \"k042\": differs".to_string(),
        ]
    );
    assert_ne!(result.source.hash, result.destination.hash);
    assert_eq!(result.source.documents, 500);
    assert_eq!(result.destination.documents, 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_stops_after_ten_differences_but_the_digests_cover_everything() {
    let world = World::start().await;
    world.reset("many").await;
    let ns = Namespace::new("many", "c");
    insert(world.source(), &ns, documents()).await;
    // The destination lacks half of the numbers.
    insert(
        world.destination(),
        &ns,
        documents().into_iter().filter(|d| d.get_i32("_id").map_or(true, |i| i % 2 == 0)).collect(),
    )
    .await;
    let coordination = Coordination::new().await;
    let result = verify_range(&world, &coordination, TaskId(1), &ns, IdRange::whole_collection()).await;
    assert_eq!(result.differences.len(), 11, "{:?}", result.differences);
    assert_eq!(result.differences[0], "_id 1: missing on destination");
    assert!(result.differences[10].starts_with("listing stopped"));
    assert_eq!(result.source.documents, 500);
    assert_eq!(result.destination.documents, 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_matches_after_the_restore_and_differences_are_named() {
    let world = World::start().await;
    world.reset("meta").await;
    let ns = Namespace::new("meta", "c");
    insert(world.source(), &ns, vec![doc! {"_id": 1, "a": 1, "b": 1}]).await;
    world
        .source()
        .database("meta")
        .run_command(doc! {"createIndexes": "c", "indexes": [
            {"key": {"a": 1}, "name": "a_1", "unique": true},
            {"key": {"b": 1}, "name": "b_1", "expireAfterSeconds": 60},
        ]})
        .await
        .expect("source indexes");
    let options = collection_options(world.source(), &ns).await.expect("exists");
    let plan = PlannedCollection {
        id: CollectionId(1),
        ns: ns.clone(),
        kind: CollectionKind::Collection,
        options: ExtDoc(options),
        source_uuid: None,
        estimated_documents: 1,
        estimated_bytes: 0,
        partitions: 1,
    };
    schema::create_collection_for_sync(&world.clusters, &plan).await.expect("create");
    schema::build_indexes_for_sync(&world.clusters, &ns, BuildIndexes::BeforeDataCopy).await.expect("build");
    insert(world.destination(), &ns, vec![doc! {"_id": 1, "a": 1, "b": 1}]).await;

    let coordination = Coordination::new().await;
    // Before the restore the relaxed indexes differ.
    let ctx = coordination.context(&world, TaskId(1), small_batches(10)).await;
    verify::run_verify_metadata(&ctx, &VerifyMetadataTask { ns: ns.clone() }).await.expect("verify metadata");
    let before = verify_result(&coordination.checkpoint(TaskId(1)).await.expect("checkpoint"));
    assert_eq!(before.differences.len(), 2, "{:?}", before.differences);
    assert!(before.differences.iter().any(|d| d.starts_with("index a_1: differs")));
    assert!(before.differences.iter().any(|d| d.starts_with("index b_1: differs")));

    schema::restore_collection_at_commit(&world.clusters, &ns, BuildIndexes::BeforeDataCopy).await.expect("restore");
    let ctx = coordination.context(&world, TaskId(2), small_batches(10)).await;
    verify::run_verify_metadata(&ctx, &VerifyMetadataTask { ns: ns.clone() }).await.expect("verify metadata");
    let after = verify_result(&coordination.checkpoint(TaskId(2)).await.expect("checkpoint"));
    assert!(after.differences.is_empty(), "{:?}", after.differences);

    // An index only the destination has is named.
    world
        .destination()
        .database("meta")
        .run_command(doc! {"createIndexes": "c", "indexes": [{"key": {"z": 1}, "name": "z_1"}]})
        .await
        .expect("extra index");
    let ctx = coordination.context(&world, TaskId(3), small_batches(10)).await;
    verify::run_verify_metadata(&ctx, &VerifyMetadataTask { ns: ns.clone() }).await.expect("verify metadata");
    let extra = verify_result(&coordination.checkpoint(TaskId(3)).await.expect("checkpoint"));
    assert_eq!(extra.differences, vec!["index z_1: extra on destination".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_ranges_are_the_copy_planner_ranges() {
    let world = World::start().await;
    world.reset("vranges").await;
    let ns = Namespace::new("vranges", "c");
    insert(world.source(), &ns, documents()).await;
    let settings = clustersync_worker::settings::WorkerSettings { partition_bytes: 5_000, ..small_batches(64) };
    let ranges = verify::plan_verify_ranges(&world.clusters, &ns, &settings).await.expect("plan");
    assert!(ranges.len() > 3, "{ranges:?}");
    // Verifying every range of an identical destination finds nothing and covers every document.
    insert(world.destination(), &ns, documents()).await;
    let coordination = Coordination::new().await;
    let mut total = 0;
    for (i, range) in ranges.into_iter().enumerate() {
        let result = verify_range(&world, &coordination, TaskId(10 + i as u64), &ns, range).await;
        assert!(result.differences.is_empty(), "{:?}", result.differences);
        total += result.source.documents;
    }
    assert_eq!(total, 500);
}
