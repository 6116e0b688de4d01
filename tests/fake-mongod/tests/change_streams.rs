//! Change streams through the official driver and raw commands.

mod common;

use std::time::Duration;

use bson::{Bson, Document, doc};
use futures::StreamExt;
use mongodb::change_stream::event::{ChangeStreamEvent, OperationType};
use mongodb::error::ErrorKind;
use mongodb::options::FullDocumentType;

type Stream = mongodb::change_stream::ChangeStream<ChangeStreamEvent<Document>>;

async fn next(cs: &mut Stream) -> ChangeStreamEvent<Document> {
    tokio::time::timeout(Duration::from_secs(10), cs.next())
        .await
        .expect("event in time")
        .expect("stream open")
        .expect("event ok")
}

#[tokio::test]
async fn crud_events_and_update_descriptions() {
    let s = common::server();
    let c = common::client(&s).await;
    let coll = c.database("cs").collection::<Document>("c");
    coll.insert_one(doc! {"_id": 0}).await.unwrap();
    let mut cs = coll.watch().full_document(FullDocumentType::UpdateLookup).await.unwrap();
    coll.insert_one(doc! {"_id": 1, "a": 1, "arr": [1, 2, 3], "o": {"x": 1}}).await.unwrap();
    coll.update_one(doc! {"_id": 1}, doc! {"$set": {"a": 2, "o.y": 5}, "$push": {"arr": 4}, "$unset": {"zz": ""}})
        .await
        .unwrap();
    coll.update_one(doc! {"_id": 1}, doc! {"$pop": {"arr": 1}, "$unset": {"a": ""}}).await.unwrap();
    coll.replace_one(doc! {"_id": 1}, doc! {"b": 1}).await.unwrap();
    coll.delete_one(doc! {"_id": 1}).await.unwrap();
    let e = next(&mut cs).await;
    assert_eq!(e.operation_type, OperationType::Insert);
    assert_eq!(e.document_key, Some(doc! {"_id": 1}));
    assert_eq!(e.full_document.unwrap().get_i32("a").unwrap(), 1);
    assert_eq!(e.ns.as_ref().unwrap().coll.as_deref(), Some("c"));
    assert!(e.cluster_time.is_some() && e.wall_time.is_some());
    let e = next(&mut cs).await;
    assert_eq!(e.operation_type, OperationType::Update);
    let ud = e.update_description.unwrap();
    assert_eq!(ud.updated_fields, doc! {"a": 2, "arr.3": 4, "o.y": 5});
    assert!(ud.removed_fields.is_empty());
    // updateLookup reads the current document (already replaced/deleted later, so may be null)
    let e = next(&mut cs).await;
    let ud = e.update_description.unwrap();
    assert_eq!(ud.removed_fields, vec!["a".to_string()]);
    let tr = ud.truncated_arrays.unwrap();
    assert_eq!(tr[0].field, "arr");
    assert_eq!(tr[0].new_size, 3);
    let e = next(&mut cs).await;
    assert_eq!(e.operation_type, OperationType::Replace);
    assert_eq!(e.full_document, Some(doc! {"_id": 1, "b": 1}));
    let e = next(&mut cs).await;
    assert_eq!(e.operation_type, OperationType::Delete);
    assert_eq!(e.document_key, Some(doc! {"_id": 1}));
}

#[tokio::test]
async fn ddl_events_invalidate_and_start_after() {
    let s = common::server();
    let c = common::client(&s).await;
    let db = c.database("ddlcs");
    let mut dbs = db.watch().show_expanded_events(true).await.unwrap();
    db.create_collection("a").await.unwrap();
    let coll = db.collection::<Document>("a");
    let mut cs = coll.watch().await.unwrap();
    coll.create_index(mongodb::IndexModel::builder().keys(doc! {"k": 1}).build()).await.unwrap();
    db.run_command(doc! {"collMod": "a", "validator": {"k": {"$exists": true}}}).await.unwrap();
    coll.drop_index("k_1").await.unwrap();
    coll.insert_one(doc! {"_id": 1, "k": 1}).await.unwrap();
    c.database("admin").run_command(doc! {"renameCollection": "ddlcs.a", "to": "ddlcs.b"}).await.unwrap();
    db.collection::<Document>("b").drop().await.unwrap();
    let kinds: Vec<OperationType> = {
        let mut v = Vec::new();
        for _ in 0..7 {
            v.push(next(&mut dbs).await.operation_type);
        }
        v
    };
    assert_eq!(
        kinds,
        vec![
            OperationType::Other("create".into()),
            OperationType::Other("createIndexes".into()),
            OperationType::Other("modify".into()),
            OperationType::Other("dropIndexes".into()),
            OperationType::Insert,
            OperationType::Rename,
            OperationType::Drop
        ]
    );
    // the collection stream sees the insert, then rename + invalidate
    let e = next(&mut cs).await;
    assert_eq!(e.operation_type, OperationType::Insert);
    let e = next(&mut cs).await;
    assert_eq!(e.operation_type, OperationType::Rename);
    assert_eq!(e.to.unwrap().coll.as_deref(), Some("b"));
    let inv = next(&mut cs).await;
    assert_eq!(inv.operation_type, OperationType::Invalidate);
    // startAfter the invalidate token works; resumeAfter does not
    let tok = inv.id.clone();
    let mut again = coll.watch().start_after(tok.clone()).await.unwrap();
    coll.insert_one(doc! {"_id": 2}).await.unwrap();
    let e = next(&mut again).await;
    assert_eq!(e.operation_type, OperationType::Insert);
    assert_eq!(e.document_key, Some(doc! {"_id": 2}));
    let err = coll.watch().resume_after(tok).await.unwrap_err();
    assert!(matches!(&*err.kind, ErrorKind::Command(ce) if ce.code == 260), "{err}");
    // dropDatabase on a database stream
    let mut dbs2 = db.watch().await.unwrap();
    db.drop().await.unwrap();
    let mut seen = Vec::new();
    loop {
        let e = next(&mut dbs2).await;
        seen.push(e.operation_type.clone());
        if e.operation_type == OperationType::Invalidate {
            break;
        }
    }
    assert_eq!(seen.last(), Some(&OperationType::Invalidate));
    assert!(seen.contains(&OperationType::DropDatabase));
}

#[tokio::test]
async fn resume_start_at_operation_time_and_history_lost() {
    let s = common::server();
    let c = common::client(&s).await;
    let coll = c.database("r").collection::<Document>("c");
    let mut cs = coll.watch().await.unwrap();
    coll.insert_one(doc! {"_id": 1}).await.unwrap();
    let first = next(&mut cs).await;
    let t1 = first.cluster_time.unwrap();
    coll.insert_one(doc! {"_id": 2}).await.unwrap();
    coll.insert_one(doc! {"_id": 3}).await.unwrap();
    // resumeAfter the first event yields the next ones in order
    let mut r = coll.watch().resume_after(first.id.clone()).await.unwrap();
    assert_eq!(next(&mut r).await.document_key, Some(doc! {"_id": 2}));
    assert_eq!(next(&mut r).await.document_key, Some(doc! {"_id": 3}));
    // startAtOperationTime includes the event at that time
    let mut at = coll.watch().start_at_operation_time(t1).await.unwrap();
    assert_eq!(next(&mut at).await.document_key, Some(doc! {"_id": 1}));
    // a cluster-wide stream sees other databases
    let mut all = c.watch().await.unwrap();
    c.database("zz").collection::<Document>("k").insert_one(doc! {"_id": "z"}).await.unwrap();
    let e = next(&mut all).await;
    assert_eq!(e.ns.unwrap().db, "zz");
    // after truncation, resuming from an old point fails with 286
    s.truncate_oplog();
    let err = coll.watch().resume_after(first.id.clone()).await.unwrap_err();
    assert!(matches!(&*err.kind, ErrorKind::Command(ce) if ce.code == 286), "{err}");
    let err = coll.watch().start_at_operation_time(t1).await.unwrap_err();
    assert!(matches!(&*err.kind, ErrorKind::Command(ce) if ce.code == 286), "{err}");
}

#[tokio::test]
async fn lagging_cursor_gets_history_lost_on_get_more() {
    let s = common::server_with(fake_mongod::ServerOptions { oplog_size_mb: 1, ..Default::default() });
    let c = common::client(&s).await;
    let db = c.database("lag");
    let r = db
        .run_command(doc! {"aggregate": "c", "pipeline": [{"$changeStream": {}}], "cursor": {"batchSize": 0}})
        .await
        .unwrap();
    let id = r.get_document("cursor").unwrap().get_i64("id").unwrap();
    let big = "x".repeat(10_000);
    let coll = db.collection::<Document>("c");
    for i in 0..300 {
        coll.insert_one(doc! {"_id": i, "pad": big.clone()}).await.unwrap();
    }
    let e = db.run_command(doc! {"getMore": id, "collection": "c"}).await.unwrap_err();
    assert!(matches!(&*e.kind, ErrorKind::Command(ce) if ce.code == 286), "{e}");
}

#[tokio::test]
async fn post_batch_resume_token_advances_with_noops() {
    let s = common::server();
    let c = common::client(&s).await;
    let db = c.database("pb");
    let r = db.run_command(doc! {"aggregate": "c", "pipeline": [{"$changeStream": {}}], "cursor": {}}).await.unwrap();
    let cur = r.get_document("cursor").unwrap();
    let id = cur.get_i64("id").unwrap();
    let t0 = cur.get_document("postBatchResumeToken").unwrap().get_str("_data").unwrap().to_string();
    c.database("admin").run_command(doc! {"appendOplogNote": 1, "data": {"msg": "hi"}}).await.unwrap();
    let r = db.run_command(doc! {"getMore": id, "collection": "c", "maxTimeMS": 100}).await.unwrap();
    let cur = r.get_document("cursor").unwrap();
    assert!(cur.get_array("nextBatch").unwrap().is_empty());
    let t1 = cur.get_document("postBatchResumeToken").unwrap().get_str("_data").unwrap().to_string();
    assert!(t1 > t0, "{t1} > {t0}");
    // writes to another collection also advance it
    c.database("pb").collection::<Document>("other").insert_one(doc! {"x": 1}).await.unwrap();
    let r = db.run_command(doc! {"getMore": id, "collection": "c", "maxTimeMS": 100}).await.unwrap();
    let t2 = r
        .get_document("cursor")
        .unwrap()
        .get_document("postBatchResumeToken")
        .unwrap()
        .get_str("_data")
        .unwrap()
        .to_string();
    assert!(t2 > t1);
    // an awaitData getMore is woken early by a matching write
    let db2 = db.clone();
    let waiter = tokio::spawn(async move {
        let start = std::time::Instant::now();
        let r = db2.run_command(doc! {"getMore": id, "collection": "c", "maxTimeMS": 5000}).await.unwrap();
        (start.elapsed(), r.get_document("cursor").unwrap().get_array("nextBatch").unwrap().len())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    db.collection::<Document>("c").insert_one(doc! {"_id": 1}).await.unwrap();
    let (took, n) = waiter.await.unwrap();
    assert_eq!(n, 1);
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[tokio::test]
async fn periodic_noop_writer_advances_the_oplog() {
    let s = common::server_with(fake_mongod::ServerOptions {
        noop_interval: Duration::from_millis(100),
        ..Default::default()
    });
    let c = common::client(&s).await;
    let db = c.database("noop");
    let r = db.run_command(doc! {"aggregate": "c", "pipeline": [{"$changeStream": {}}], "cursor": {}}).await.unwrap();
    let cur = r.get_document("cursor").unwrap();
    let id = cur.get_i64("id").unwrap();
    let t0 = cur.get_document("postBatchResumeToken").unwrap().get_str("_data").unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = db.run_command(doc! {"getMore": id, "collection": "c", "maxTimeMS": 10}).await.unwrap();
    let t1 = r
        .get_document("cursor")
        .unwrap()
        .get_document("postBatchResumeToken")
        .unwrap()
        .get_str("_data")
        .unwrap()
        .to_string();
    assert!(t1 > t0);
}

#[tokio::test]
async fn pre_and_post_images() {
    let s = common::server();
    let c = common::client(&s).await;
    let db = c.database("img");
    db.run_command(doc! {"create": "c", "changeStreamPreAndPostImages": {"enabled": true}}).await.unwrap();
    let coll = db.collection::<Document>("c");
    coll.insert_one(doc! {"_id": 1, "x": 0}).await.unwrap();
    let mut cs = coll
        .watch()
        .full_document(FullDocumentType::Required)
        .full_document_before_change(mongodb::options::FullDocumentBeforeChangeType::Required)
        .await
        .unwrap();
    coll.update_one(doc! {"_id": 1}, doc! {"$inc": {"x": 1}}).await.unwrap();
    let e = next(&mut cs).await;
    assert_eq!(e.full_document, Some(doc! {"_id": 1, "x": 1}));
    assert_eq!(e.full_document_before_change, Some(doc! {"_id": 1, "x": 0}));
    // without images enabled, whenAvailable gives null and required fails
    let plain = db.collection::<Document>("plain");
    plain.insert_one(doc! {"_id": 1}).await.unwrap();
    let mut cs = plain.watch().full_document(FullDocumentType::WhenAvailable).await.unwrap();
    plain.update_one(doc! {"_id": 1}, doc! {"$set": {"y": 1}}).await.unwrap();
    let e = next(&mut cs).await;
    assert_eq!(e.full_document, None);
    let mut cs = plain.watch().full_document(FullDocumentType::Required).await.unwrap();
    plain.update_one(doc! {"_id": 1}, doc! {"$set": {"y": 2}}).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), cs.next()).await.unwrap().unwrap();
    assert!(r.is_err());
}

#[tokio::test]
async fn pipeline_stages_apply_to_events() {
    let s = common::server();
    let c = common::client(&s).await;
    let coll = c.database("p").collection::<Document>("c");
    let mut cs = coll
        .watch()
        .pipeline(vec![
            doc! {"$match": {"operationType": "insert", "fullDocument.keep": true}},
            doc! {"$project": {"fullDocument.secret": 0}},
        ])
        .await
        .unwrap();
    coll.insert_one(doc! {"_id": 1, "keep": false}).await.unwrap();
    coll.insert_one(doc! {"_id": 2, "keep": true, "secret": "s"}).await.unwrap();
    let e = next(&mut cs).await;
    assert_eq!(e.full_document, Some(doc! {"_id": 2, "keep": true}));
    let tok: Bson = Bson::Document(bson::to_document(&e.id).unwrap());
    assert!(tok.as_document().unwrap().get_str("_data").unwrap().starts_with("82"));
}

#[tokio::test]
async fn large_events_are_split_across_batches() {
    let s = common::server();
    let c = common::client(&s).await;
    let db = c.database("big");
    let r = db
        .run_command(doc! {"aggregate": "c", "pipeline": [{"$changeStream": {}}], "cursor": {"batchSize": 0}})
        .await
        .unwrap();
    let id = r.get_document("cursor").unwrap().get_i64("id").unwrap();
    let coll = db.collection::<Document>("c");
    let pad = "y".repeat(1024 * 1024);
    for i in 0..40 {
        coll.insert_one(doc! {"_id": i, "pad": pad.clone()}).await.unwrap();
    }
    let mut seen = 0;
    let mut batches = 0;
    while seen < 40 {
        let r = db.run_command(doc! {"getMore": id, "collection": "c", "maxTimeMS": 100}).await.unwrap();
        let batch = r.get_document("cursor").unwrap().get_array("nextBatch").unwrap().clone();
        let ids: Vec<i32> = batch
            .iter()
            .map(|e| e.as_document().unwrap().get_document("documentKey").unwrap().get_i32("_id").unwrap())
            .collect();
        assert_eq!(ids, (seen..seen + ids.len() as i32).collect::<Vec<_>>());
        seen += ids.len() as i32;
        batches += 1;
        assert!(batches < 10);
    }
    assert!(batches >= 3, "{batches} batches");
}

#[tokio::test]
async fn split_large_event_fragments_and_resume_inside() {
    let s = common::server();
    let c = common::client(&s).await;
    let db = c.database("split");
    let open = |extra: Document| {
        let mut spec = doc! {};
        spec.extend(extra);
        doc! {"aggregate": "c", "pipeline": [{"$changeStream": spec}, {"$changeStreamSplitLargeEvent": {}}], "cursor": {"batchSize": 0}}
    };
    let r = db.run_command(open(doc! {})).await.unwrap();
    let id = r.get_document("cursor").unwrap().get_i64("id").unwrap();
    let coll = db.collection::<Document>("c");
    coll.insert_one(doc! {"_id": 1, "payload": "x".repeat(16 * 1024 * 1024 - 100)}).await.unwrap();
    coll.insert_one(doc! {"_id": 2}).await.unwrap();
    let mut got: Vec<Document> = Vec::new();
    for _ in 0..10 {
        let r = db.run_command(doc! {"getMore": id, "collection": "c", "maxTimeMS": 100}).await.unwrap();
        let nb = r.get_document("cursor").unwrap().get_array("nextBatch").unwrap().clone();
        got.extend(nb.iter().map(|e| e.as_document().unwrap().clone()));
        if got.len() >= 4 {
            break;
        }
    }
    assert_eq!(got.len(), 4);
    for (i, g) in got[..3].iter().enumerate() {
        assert_eq!(g.get_document("splitEvent").unwrap(), &doc! {"fragment": i as i32 + 1, "of": 3});
    }
    assert_eq!(got[0].get_str("operationType").unwrap(), "insert");
    assert!(got[1].get_document("fullDocument").is_ok());
    assert_eq!(got[2].get_document("documentKey").unwrap(), &doc! {"_id": 1});
    assert!(got[3].get_document("splitEvent").is_err());
    // resuming after the first fragment yields the second one, then the next event
    let tok = got[0].get_document("_id").unwrap().clone();
    let r = db.run_command(open(doc! {"resumeAfter": tok.clone()})).await.unwrap();
    let id2 = r.get_document("cursor").unwrap().get_i64("id").unwrap();
    let r = db.run_command(doc! {"getMore": id2, "collection": "c", "maxTimeMS": 100}).await.unwrap();
    let batch = r.get_document("cursor").unwrap().get_array("nextBatch").unwrap().clone();
    assert_eq!(batch[0].as_document().unwrap().get_document("splitEvent").unwrap(), &doc! {"fragment": 2, "of": 3});
    // without the stage the oversized event fails with BSONObjectTooLarge
    let r = db
        .run_command(
            doc! {"aggregate": "c", "pipeline": [{"$changeStream": {"resumeAfter": tok}}], "cursor": {"batchSize": 0}},
        )
        .await;
    assert!(r.is_err(), "resuming a split token without the stage is refused");
    let plain = db.run_command(doc! {"aggregate": "c", "pipeline": [{"$changeStream": {"startAtOperationTime": got[0].get_timestamp("clusterTime").unwrap()}}], "cursor": {"batchSize": 0}}).await.unwrap();
    let id3 = plain.get_document("cursor").unwrap().get_i64("id").unwrap();
    let e = db.run_command(doc! {"getMore": id3, "collection": "c", "maxTimeMS": 100}).await.unwrap_err();
    assert!(matches!(&*e.kind, ErrorKind::Command(ce) if ce.code == 10334), "{e}");
}
