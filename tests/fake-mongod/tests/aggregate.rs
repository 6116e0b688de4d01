//! Aggregation through the driver: the stages a sync engine and the spec tests use.

mod common;

use bson::{Document, doc};
use futures::TryStreamExt;

#[tokio::test]
async fn stages_sample_bucket_lookup_out_merge() {
    let s = common::server();
    let c = common::client(&s).await;
    let db = c.database("agg");
    let orders = db.collection::<Document>("orders");
    orders
        .insert_many((0..100).map(|i| doc! {"_id": i, "cust": i % 4, "items": [i, i + 1], "amount": i as f64 * 1.5}))
        .await
        .unwrap();
    db.collection::<Document>("customers")
        .insert_many((0..4).map(|i| doc! {"_id": i, "name": format!("c{i}")}))
        .await
        .unwrap();

    let sample: Vec<Document> = orders
        .aggregate(vec![doc! {"$sample": {"size": 5}}, doc! {"$project": {"_id": 1}}])
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(sample.len(), 5);
    let mut ids: Vec<i32> = sample.iter().map(|d| d.get_i32("_id").unwrap()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 5);
    assert!(sample.iter().all(|d| d.len() == 1));

    let buckets: Vec<Document> = orders
        .aggregate(vec![doc! {"$bucketAuto": {"groupBy": "$_id", "buckets": 4}}])
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(buckets.len(), 4);
    assert_eq!(buckets[0].get_document("_id").unwrap().get_i32("min").unwrap(), 0);
    assert_eq!(buckets.iter().map(|b| b.get_i32("count").unwrap()).sum::<i32>(), 100);

    let grouped: Vec<Document> = orders
        .aggregate(vec![
            doc! {"$unwind": "$items"},
            doc! {"$group": {"_id": "$cust", "n": {"$sum": 1}, "total": {"$sum": "$amount"}, "first": {"$first": "$_id"}}},
            doc! {"$sort": {"_id": 1}},
            doc! {"$lookup": {"from": "customers", "localField": "_id", "foreignField": "_id", "as": "who"}},
            doc! {"$set": {"name": {"$arrayElemAt": ["$who.name", 0]}}},
            doc! {"$unset": "who"},
        ])
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(grouped.len(), 4);
    assert_eq!(
        grouped[1],
        doc! {"_id": 1, "n": 50, "total": 2.0 * (0..25).map(|k| (4 * k + 1) as f64 * 1.5).sum::<f64>(), "first": 1, "name": "c1"}
    );

    orders
        .aggregate(vec![doc! {"$match": {"cust": 2}}, doc! {"$project": {"amount": 1}}, doc! {"$out": "big_spenders"}])
        .await
        .unwrap();
    assert_eq!(db.collection::<Document>("big_spenders").count_documents(doc! {}).await.unwrap(), 25);
    orders
        .aggregate(vec![
            doc! {"$match": {"cust": 3}},
            doc! {"$project": {"amount": 1}},
            doc! {"$merge": {"into": "big_spenders"}},
        ])
        .await
        .unwrap();
    assert_eq!(db.collection::<Document>("big_spenders").count_documents(doc! {}).await.unwrap(), 50);

    let docs: Vec<Document> = db
        .aggregate(vec![doc! {"$documents": [{"x": 1}, {"x": 2}]}, doc! {"$match": {"x": {"$gt": 1}}}])
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(docs, vec![doc! {"x": 2}]);

    let counted: Vec<Document> = orders
        .aggregate(vec![doc! {"$match": {"amount": {"$gte": 100.0}}}, doc! {"$count": "n"}])
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(counted, vec![doc! {"n": 33}]);
}

#[tokio::test]
async fn malformed_expressions_fail_cleanly() {
    let s = common::server();
    let c = common::client(&s).await;
    let coll = c.database("bad").collection::<Document>("c");
    coll.insert_one(doc! {"_id": 1, "a": 1}).await.unwrap();
    for expr in [
        doc! {"$abs": []},
        doc! {"$arrayElemAt": []},
        doc! {"$divide": [1]},
        doc! {"$in": [1]},
        doc! {"$subtract": [1]},
    ] {
        let r = coll.aggregate(vec![doc! {"$project": {"x": expr.clone()}}]).await;
        assert!(r.is_err(), "{expr} should fail");
    }
    // the connection and the server are still fine
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 1);
}
