//! Connection and basic CRUD through the official driver.

mod common;

use bson::{Bson, Document, doc};
use futures::TryStreamExt;

#[tokio::test]
async fn connects_direct_and_replica_set() {
    let s = common::server();
    for uri in [s.uri(), s.direct_uri()] {
        let c = common::client_uri(&uri).await;
        let r = c.database("admin").run_command(doc! {"ping": 1}).await.unwrap();
        assert_eq!(r.get_f64("ok").unwrap(), 1.0);
        let hello = c.database("admin").run_command(doc! {"hello": 1}).await.unwrap();
        assert!(hello.get_bool("isWritablePrimary").unwrap());
        assert_eq!(hello.get_str("setName").unwrap(), "rs0");
        assert_eq!(hello.get_i32("maxWireVersion").unwrap(), 21);
        assert!(hello.get_document("$clusterTime").is_ok() || hello.contains_key("operationTime"));
        let bi = c.database("admin").run_command(doc! {"buildInfo": 1}).await.unwrap();
        assert_eq!(bi.get_str("version").unwrap(), "7.0.12");
    }
}

#[tokio::test]
async fn insert_find_update_delete() {
    let s = common::server();
    let c = common::client(&s).await;
    let coll = c.database("db").collection::<Document>("c");
    coll.insert_many((0..250).map(|i| doc! {"_id": i, "v": i % 7, "s": format!("x{i}")})).await.unwrap();
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 250);
    assert_eq!(coll.estimated_document_count().await.unwrap(), 250);
    let docs: Vec<Document> =
        coll.find(doc! {"v": 3}).sort(doc! {"_id": -1}).await.unwrap().try_collect().await.unwrap();
    assert_eq!(docs.len(), 36);
    assert_eq!(docs[0].get_i32("_id").unwrap(), 248);
    // cursor across batches
    let all: Vec<Document> = coll.find(doc! {}).batch_size(10).await.unwrap().try_collect().await.unwrap();
    assert_eq!(all.len(), 250);
    let r = coll.update_many(doc! {"v": 0}, doc! {"$inc": {"n": 1}, "$set": {"t": true}}).await.unwrap();
    assert_eq!(r.matched_count, 36);
    assert_eq!(r.modified_count, 36);
    let one = coll.find_one(doc! {"_id": 7}).await.unwrap().unwrap();
    assert_eq!(one, doc! {"_id": 7, "v": 0, "s": "x7", "n": 1, "t": true});
    let r = coll.update_one(doc! {"_id": 1000}, doc! {"$set": {"a": 1}}).upsert(true).await.unwrap();
    assert_eq!(r.upserted_id, Some(Bson::Int32(1000)));
    let r = coll.delete_many(doc! {"v": {"$gte": 5}}).await.unwrap();
    assert_eq!(r.deleted_count, 70);
    let d = coll
        .find_one_and_update(doc! {"_id": 2}, doc! {"$set": {"z": 1}})
        .return_document(mongodb::options::ReturnDocument::After)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.get_i32("z").unwrap(), 1);
    let vals = coll.distinct("v", doc! {}).await.unwrap();
    assert_eq!(vals.len(), 5);
    let p: Vec<Document> = coll
        .find(doc! {"_id": {"$lt": 3}})
        .projection(doc! {"s": 1, "_id": 0})
        .sort(doc! {"_id": 1})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(p, vec![doc! {"s": "x0"}, doc! {"s": "x1"}, doc! {"s": "x2"}]);
}
