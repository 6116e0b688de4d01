//! Sort order across types, unique indexes, DDL and catalog listings.

mod common;

use bson::{Bson, Document, doc, oid::ObjectId};
use futures::TryStreamExt;
use mongodb::IndexModel;
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::IndexOptions;

fn server_code(e: &mongodb::error::Error) -> Option<i32> {
    match &*e.kind {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        ErrorKind::InsertMany(m) => m.write_errors.as_ref().and_then(|w| w.first()).map(|w| w.code),
        _ => None,
    }
}

#[tokio::test]
async fn sort_order_follows_bson_type_brackets() {
    let s = common::server();
    let c = common::client(&s).await;
    let coll = c.database("db").collection::<Document>("mixed");
    let oid = ObjectId::new();
    let vals: Vec<Bson> = vec![
        Bson::MaxKey,
        Bson::Boolean(true),
        Bson::ObjectId(oid),
        Bson::String("b".into()),
        Bson::Document(doc! {"a": 1}),
        Bson::Int64(3),
        Bson::Double(2.5),
        Bson::Null,
        Bson::Array(vec![Bson::Int32(9)]),
        Bson::DateTime(bson::DateTime::from_millis(5)),
        Bson::MinKey,
        Bson::Int32(1),
        Bson::String("a".into()),
        Bson::Double(f64::NAN),
    ];
    for (i, v) in vals.iter().enumerate() {
        coll.insert_one(doc! {"_id": i as i32, "v": v.clone()}).await.unwrap();
    }
    let sorted: Vec<Document> =
        coll.find(doc! {}).sort(doc! {"v": 1, "_id": 1}).await.unwrap().try_collect().await.unwrap();
    let types: Vec<String> = sorted.iter().map(|d| format!("{:?}", d.get("v").unwrap().element_type())).collect();
    assert_eq!(
        types,
        vec![
            "MinKey",
            "Null",
            "Double",
            "Int32",
            "Double",
            "Int64",
            "Array",
            "String",
            "String",
            "EmbeddedDocument",
            "ObjectId",
            "Boolean",
            "DateTime",
            "MaxKey"
        ],
        "{sorted:?}"
    );
    // the array [9] sorts by its minimum element among numbers, so it lands after 3
    // _id is ordered by MongoDB's order too
    let by_id: Vec<Document> =
        c.database("db").collection::<Document>("ids").find(doc! {}).await.unwrap().try_collect().await.unwrap();
    assert!(by_id.is_empty());
    let ids = c.database("db").collection::<Document>("ids");
    ids.insert_many(vec![doc! {"_id": "s"}, doc! {"_id": 2.5}, doc! {"_id": 1i64}, doc! {"_id": oid}]).await.unwrap();
    let got: Vec<Bson> = ids
        .find(doc! {})
        .sort(doc! {"_id": 1})
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.get("_id").unwrap().clone())
        .collect();
    assert_eq!(got, vec![Bson::Int64(1), Bson::Double(2.5), Bson::String("s".into()), Bson::ObjectId(oid)]);
}

#[tokio::test]
async fn unique_index_reports_e11000() {
    let s = common::server();
    let c = common::client(&s).await;
    let coll = c.database("shop").collection::<Document>("users");
    coll.create_index(
        IndexModel::builder().keys(doc! {"email": 1}).options(IndexOptions::builder().unique(true).build()).build(),
    )
    .await
    .unwrap();
    coll.insert_one(doc! {"_id": 1, "email": "a@x"}).await.unwrap();
    let e = coll.insert_one(doc! {"_id": 2, "email": "a@x"}).await.unwrap_err();
    assert_eq!(server_code(&e), Some(11000));
    let msg = match &*e.kind {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.message.clone(),
        other => panic!("{other:?}"),
    };
    assert!(
        msg.contains("E11000 duplicate key error collection: shop.users index: email_1 dup key: { email: \"a@x\" }"),
        "{msg}"
    );
    // raw reply fields
    let r = c
        .database("shop")
        .run_command(doc! {"insert": "users", "documents": [{"_id": 3, "email": "a@x"}]})
        .await
        .unwrap();
    let we = r.get_array("writeErrors").unwrap()[0].as_document().unwrap().clone();
    assert_eq!(we.get_i32("code").unwrap(), 11000);
    assert_eq!(we.get_document("keyPattern").unwrap(), &doc! {"email": 1});
    assert_eq!(we.get_document("keyValue").unwrap(), &doc! {"email": "a@x"});
    // duplicate _id
    let e = coll.insert_one(doc! {"_id": 1, "email": "b@x"}).await.unwrap_err();
    assert!(
        matches!(&*e.kind, ErrorKind::Write(WriteFailure::WriteError(w)) if w.message.contains("index: _id_ dup key: { _id: 1 }"))
    );
    // unordered insert continues after errors
    let e = coll
        .insert_many(vec![
            doc! {"_id": 10, "email": "c"},
            doc! {"_id": 11, "email": "c"},
            doc! {"_id": 12, "email": "d"},
        ])
        .ordered(false)
        .await
        .unwrap_err();
    assert_eq!(server_code(&e), Some(11000));
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 3);
    // prepareUnique then conversion to unique
    let other = c.database("shop").collection::<Document>("p");
    other.insert_many(vec![doc! {"_id": 1, "x": 1}, doc! {"_id": 2, "x": 1}]).await.unwrap();
    other.create_index(IndexModel::builder().keys(doc! {"x": 1}).build()).await.unwrap();
    c.database("shop")
        .run_command(doc! {"collMod": "p", "index": {"keyPattern": {"x": 1}, "prepareUnique": true}})
        .await
        .unwrap();
    let e = other.insert_one(doc! {"_id": 3, "x": 1}).await.unwrap_err();
    assert_eq!(server_code(&e), Some(11000));
    let e = c
        .database("shop")
        .run_command(doc! {"collMod": "p", "index": {"keyPattern": {"x": 1}, "unique": true}})
        .await
        .unwrap_err();
    match &*e.kind {
        ErrorKind::Command(ce) => {
            assert_eq!(ce.code, 359);
        }
        other => panic!("unexpected {other:?}"),
    }
    let raw =
        c.database("shop").run_command(doc! {"collMod": "p", "index": {"keyPattern": {"x": 1}, "unique": true}}).await;
    assert!(raw.is_err());
}

#[tokio::test]
async fn ddl_and_listings() {
    let s = common::server();
    let c = common::client(&s).await;
    let db = c.database("ddl");
    db.create_collection("capped").capped(true).size(4096).max(3).await.unwrap();
    db.create_collection("val").validator(doc! {"a": {"$type": "int"}}).await.unwrap();
    db.create_collection("imgs")
        .change_stream_pre_and_post_images(
            mongodb::options::ChangeStreamPreAndPostImages::builder().enabled(true).build(),
        )
        .await
        .unwrap();
    db.run_command(doc! {"create": "v1", "viewOn": "capped", "pipeline": [{"$match": {"x": {"$gte": 1}}}]})
        .await
        .unwrap();
    // identical create is ok, different options conflict
    db.run_command(doc! {"create": "capped", "capped": true, "size": 4096, "max": 3}).await.unwrap();
    let e = db.run_command(doc! {"create": "capped"}).await.unwrap_err();
    assert!(matches!(&*e.kind, ErrorKind::Command(ce) if ce.code == 48));
    let capped = db.collection::<Document>("capped");
    for i in 0..5 {
        capped.insert_one(doc! {"_id": i, "x": i}).await.unwrap();
    }
    let left: Vec<Document> = capped.find(doc! {}).await.unwrap().try_collect().await.unwrap();
    assert_eq!(left, vec![doc! {"_id": 2, "x": 2}, doc! {"_id": 3, "x": 3}, doc! {"_id": 4, "x": 4}]);
    let view: Vec<Document> = db.collection::<Document>("v1").find(doc! {}).await.unwrap().try_collect().await.unwrap();
    assert_eq!(view.len(), 3);
    // validator
    let e = db.collection::<Document>("val").insert_one(doc! {"a": "no"}).await.unwrap_err();
    assert_eq!(server_code(&e), Some(121));
    db.collection::<Document>("val").insert_one(doc! {"a": 1}).await.unwrap();
    // listCollections
    let specs: Vec<Document> =
        db.run_cursor_command(doc! {"listCollections": 1}).await.unwrap().try_collect().await.unwrap();
    let names: Vec<&str> = specs.iter().map(|d| d.get_str("name").unwrap()).collect();
    assert_eq!(names, vec!["capped", "imgs", "v1", "val"]);
    let cap = specs.iter().find(|d| d.get_str("name") == Ok("capped")).unwrap();
    assert_eq!(cap.get_str("type").unwrap(), "collection");
    let opts = cap.get_document("options").unwrap();
    assert!(opts.get_bool("capped").unwrap());
    assert_eq!(
        opts.get("size").and_then(Bson::as_i64).or_else(|| opts.get_i32("size").ok().map(i64::from)),
        Some(4096)
    );
    assert!(matches!(cap.get_document("info").unwrap().get("uuid"), Some(Bson::Binary(_))));
    assert_eq!(cap.get_document("idIndex").unwrap(), &doc! {"v": 2, "key": {"_id": 1}, "name": "_id_"});
    let v = specs.iter().find(|d| d.get_str("name") == Ok("v1")).unwrap();
    assert_eq!(v.get_str("type").unwrap(), "view");
    let only: Vec<String> = db.list_collection_names().filter(doc! {"type": "view"}).await.unwrap();
    assert_eq!(only, vec!["v1".to_string()]);
    // indexes
    let coll = db.collection::<Document>("val");
    coll.create_index(
        IndexModel::builder()
            .keys(doc! {"a": -1, "b": 1})
            .options(IndexOptions::builder().sparse(true).name("ab".to_string()).build())
            .build(),
    )
    .await
    .unwrap();
    coll.create_index(IndexModel::builder().keys(doc! {"h": "hashed"}).build()).await.unwrap();
    let r = db
        .run_command(doc! {"createIndexes": "val", "indexes": [{"key": {"a": -1, "b": 1}, "name": "other"}]})
        .await
        .unwrap_err();
    assert!(matches!(&*r.kind, ErrorKind::Command(ce) if ce.code == 85));
    let r =
        db.run_command(doc! {"createIndexes": "val", "indexes": [{"key": {"z": 1}, "name": "ab"}]}).await.unwrap_err();
    assert!(matches!(&*r.kind, ErrorKind::Command(ce) if ce.code == 86));
    let idx: Vec<Document> =
        db.run_cursor_command(doc! {"listIndexes": "val"}).await.unwrap().try_collect().await.unwrap();
    assert_eq!(idx[1], doc! {"v": 2, "key": {"a": -1, "b": 1}, "name": "ab", "sparse": true});
    assert_eq!(idx[2].get_str("name").unwrap(), "h_hashed");
    coll.drop_index("ab").await.unwrap();
    let e = coll.drop_index("nope").await.unwrap_err();
    assert!(matches!(&*e.kind, ErrorKind::Command(ce) if ce.code == 27));
    // hint on a missing index
    let e = coll.find(doc! {}).hint(mongodb::options::Hint::Name("nope".into())).await.unwrap_err();
    assert!(matches!(&*e.kind, ErrorKind::Command(ce) if ce.code == 2), "{e}");
    // rename and drop
    c.database("admin").run_command(doc! {"renameCollection": "ddl.val", "to": "other.val2"}).await.unwrap();
    assert_eq!(c.database("other").collection::<Document>("val2").count_documents(doc! {}).await.unwrap(), 1);
    db.collection::<Document>("nothing").drop().await.unwrap();
    // collStats / $collStats
    let st = db.run_command(doc! {"collStats": "capped"}).await.unwrap();
    assert_eq!(st.get_i64("count").unwrap_or_else(|_| st.get_i32("count").unwrap() as i64), 3);
    assert!(st.get_bool("capped").unwrap());
    let cs: Vec<Document> = capped
        .aggregate(vec![doc! {"$collStats": {"storageStats": {}, "count": {}}}])
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let ss = cs[0].get_document("storageStats").unwrap();
    assert_eq!(ss.get_i64("count").unwrap(), 3);
    assert_eq!(ss.get_i64("max").unwrap(), 3);
    let dbs = c.list_database_names().await.unwrap();
    assert!(dbs.contains(&"ddl".to_string()) && dbs.contains(&"admin".to_string()));
    db.drop().await.unwrap();
    assert!(!c.list_database_names().await.unwrap().contains(&"ddl".to_string()));
}

#[tokio::test]
async fn db_hash_is_order_sensitive_and_deterministic() {
    let s1 = common::server();
    let s2 = common::server();
    let a = common::client(&s1).await;
    let b = common::client(&s2).await;
    for c in [&a, &b] {
        c.database("h")
            .collection::<Document>("x")
            .insert_many(vec![doc! {"_id": 2, "v": 1}, doc! {"_id": 1, "v": 2}])
            .await
            .unwrap();
    }
    let ha = a.database("h").run_command(doc! {"dbHash": 1}).await.unwrap();
    let hb = b.database("h").run_command(doc! {"dbHash": 1}).await.unwrap();
    assert_eq!(ha.get_document("collections").unwrap(), hb.get_document("collections").unwrap());
    assert_eq!(ha.get_str("md5").unwrap().len(), 32);
    b.database("h").collection::<Document>("x").update_one(doc! {"_id": 1}, doc! {"$set": {"v": 3}}).await.unwrap();
    let hb = b.database("h").run_command(doc! {"dbHash": 1, "collections": ["x"]}).await.unwrap();
    assert_ne!(ha.get_document("collections").unwrap(), hb.get_document("collections").unwrap());
}

#[tokio::test]
async fn ttl_indexes_expire_documents_as_replicated_deletes() {
    let s = common::server();
    let c = common::client(&s).await;
    c.database("admin").run_command(doc! {"setParameter": 1, "ttlMonitorSleepSecs": 1}).await.unwrap();
    let coll = c.database("ttl").collection::<Document>("c");
    coll.create_index(
        IndexModel::builder()
            .keys(doc! {"at": 1})
            .options(IndexOptions::builder().expire_after(std::time::Duration::from_secs(60)).build())
            .build(),
    )
    .await
    .unwrap();
    let old = bson::DateTime::from_millis(bson::DateTime::now().timestamp_millis() - 3_600_000);
    let mut cs = coll.watch().await.unwrap();
    coll.insert_many(vec![doc! {"_id": 1, "at": old}, doc! {"_id": 2, "at": bson::DateTime::now()}, doc! {"_id": 3}])
        .await
        .unwrap();
    let mut left = 3;
    for _ in 0..50 {
        left = coll.count_documents(doc! {}).await.unwrap();
        if left == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(left, 2);
    assert!(coll.find_one(doc! {"_id": 1}).await.unwrap().is_none());
    let mut kinds = Vec::new();
    while kinds.len() < 4 {
        let e = tokio::time::timeout(std::time::Duration::from_secs(5), futures::StreamExt::next(&mut cs))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        kinds.push(e.operation_type);
    }
    assert_eq!(kinds.last(), Some(&mongodb::change_stream::event::OperationType::Delete));
}
