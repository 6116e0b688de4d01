//! Range planning against the test server: statistics, and planned ranges whose filters match
//! every document exactly once, whatever the mix of `_id` types.

mod support;

use std::collections::HashMap;

use bson::oid::ObjectId;
use bson::{Bson, Document, doc};
use clustersync_common::model::{IdBracket, IdRange};
use clustersync_common::namespace::Namespace;
use clustersync_worker::partition::{self, CollectionStats};
use clustersync_worker::settings::WorkerSettings;
use futures::TryStreamExt;
use support::{World, insert};

async fn ids_matching(world: &World, ns: &Namespace, filter: Document) -> Vec<Bson> {
    world
        .source()
        .database(&ns.db)
        .collection::<Document>(&ns.coll)
        .find(filter)
        .sort(doc! {"_id": 1})
        .await
        .expect("find")
        .try_collect::<Vec<Document>>()
        .await
        .expect("read")
        .into_iter()
        .filter_map(|mut d| d.remove("_id"))
        .collect()
}

fn mixed() -> Vec<Document> {
    let mut ids: Vec<Bson> = vec![
        Bson::MinKey,
        Bson::Null,
        Bson::Double(f64::NAN),
        Bson::Decimal128("-7.5".parse().expect("decimal")),
        Bson::Boolean(true),
        Bson::Document(doc! {"k": 1}),
        Bson::DateTime(bson::DateTime::from_millis(0)),
        Bson::JavaScriptCode("code".into()),
        Bson::MaxKey,
    ];
    ids.extend((0..400).map(|i| Bson::Int64(i * 3)));
    ids.extend((0..200).map(|i| Bson::String(format!("s{i:04}"))));
    ids.extend((0..200u32).map(|i| {
        let mut bytes = [9u8; 12];
        bytes[8..].copy_from_slice(&i.to_be_bytes());
        Bson::ObjectId(ObjectId::from_bytes(bytes))
    }));
    ids.into_iter().map(|id| doc! {"_id": id, "pad": "p".repeat(100)}).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_ranges_match_every_document_exactly_once() {
    let world = World::start().await;
    world.reset("plan").await;
    let ns = Namespace::new("plan", "mixed");
    let documents = mixed();
    let total = documents.len();
    insert(world.source(), &ns, documents).await;

    let stats = partition::collection_stats(&world.clusters, &ns).await.expect("stats");
    assert_eq!(stats.documents, total as u64);
    assert!(stats.from_storage_stats);
    assert!(stats.bytes > 100 * total as u64, "{stats:?}");
    let settings = WorkerSettings { partition_bytes: 10_000, ..Default::default() };
    let planned = partition::plan_ranges_estimated(&world.clusters, &ns, &stats, &settings, false).await.expect("plan");
    let ranges: Vec<IdRange> = planned.iter().map(|p| p.range.clone()).collect();
    let count = |bracket| ranges.iter().filter(|r| r.bracket == bracket).count();
    assert!(
        count(IdBracket::Number) > 1 && count(IdBracket::String) > 1 && count(IdBracket::ObjectId) > 1,
        "{ranges:?}"
    );
    for bracket in [
        IdBracket::MinKey,
        IdBracket::Null,
        IdBracket::Bool,
        IdBracket::Object,
        IdBracket::Date,
        IdBracket::MaxKey,
        IdBracket::Other,
    ] {
        assert_eq!(count(bracket), 1, "{bracket:?} in {ranges:?}");
    }
    assert_eq!(count(IdBracket::Regex), 0, "absent brackets get no range");
    assert!(planned.iter().map(|p| p.estimated_documents).sum::<u64>() > 0);

    let mut seen: HashMap<String, usize> = HashMap::new();
    for range in &ranges {
        for id in ids_matching(&world, &ns, partition::range_filter(range)).await {
            *seen.entry(format!("{id:?}")).or_default() += 1;
        }
    }
    assert_eq!(seen.len(), total, "every document matched by some range");
    let repeated: Vec<_> = seen.iter().filter(|(_, n)| **n != 1).collect();
    assert!(repeated.is_empty(), "matched by more than one range: {repeated:?}");
    assert!(seen.contains_key(&format!("{:?}", Bson::Double(f64::NAN))), "the NaN _id is in a range");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_filters_match_exactly_the_documents_after_the_last_id() {
    let world = World::start().await;
    world.reset("after").await;
    let ns = Namespace::new("after", "mixed");
    insert(world.source(), &ns, mixed()).await;
    let all = ids_matching(&world, &ns, doc! {}).await;
    // From every position of the whole-collection scan, the resume filter returns the rest.
    for (i, last) in all.iter().enumerate().step_by(37).chain(all.iter().enumerate().take(4)) {
        let rest =
            ids_matching(&world, &ns, partition::range_filter_after(&IdRange::whole_collection(), Some(last))).await;
        assert_eq!(rest.len(), all.len() - i - 1, "after {last:?}");
    }
    // After the last one, nothing.
    let last = all.last().expect("documents");
    assert!(
        ids_matching(&world, &ns, partition::range_filter_after(&IdRange::whole_collection(), Some(last)))
            .await
            .is_empty()
    );
    // Inside a bracket range the upper bound still holds.
    let range = IdRange {
        bracket: IdBracket::Number,
        lower: Some(clustersync_common::extjson::ExtBson(Bson::Int64(30))),
        upper: Some(clustersync_common::extjson::ExtBson(Bson::Int64(60))),
    };
    let rest = ids_matching(&world, &ns, partition::range_filter_after(&range, Some(&Bson::Int64(45)))).await;
    assert_eq!(rest, vec![Bson::Int64(48), Bson::Int64(51), Bson::Int64(54), Bson::Int64(57)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_natural_missing_and_view_collections() {
    let world = World::start().await;
    world.reset("stats").await;
    let ns = Namespace::new("stats", "small");
    insert(world.source(), &ns, (0..10).map(|i| doc! {"_id": i}).collect()).await;
    let settings = WorkerSettings::default();
    let stats = partition::collection_stats(&world.clusters, &ns).await.expect("stats");
    assert_eq!(stats.documents, 10);
    let ranges = partition::plan_ranges(&world.clusters, &ns, &stats, &settings, false).await.expect("plan");
    assert_eq!(ranges, vec![IdRange::whole_collection()]);
    // Natural order is one range whatever the size.
    let huge = CollectionStats { documents: 1_000_000, bytes: 1 << 40, ..stats.clone() };
    let ranges = partition::plan_ranges(&world.clusters, &ns, &huge, &settings, true).await.expect("plan");
    assert_eq!(ranges, vec![IdRange::whole_collection()]);

    let missing =
        partition::collection_stats(&world.clusters, &Namespace::new("stats", "missing")).await.expect("stats");
    assert_eq!(missing, CollectionStats::default());

    world
        .source()
        .database("stats")
        .run_command(doc! {"create": "evens", "viewOn": "small", "pipeline": [{"$match": {"_id": {"$mod": [2, 0]}}}]})
        .await
        .expect("create view");
    let view =
        partition::collection_stats(&world.clusters, &Namespace::new("stats", "evens")).await.expect("view stats");
    assert_eq!(view.documents, 5);
    assert!(!view.from_storage_stats);

    world
        .source()
        .database("stats")
        .run_command(doc! {"create": "capped", "capped": true, "size": 100_000, "max": 50})
        .await
        .expect("create capped");
    let capped = partition::collection_stats(&world.clusters, &Namespace::new("stats", "capped")).await.expect("stats");
    assert!(capped.capped);
    assert_eq!(capped.capped_max_documents, Some(50));
}
