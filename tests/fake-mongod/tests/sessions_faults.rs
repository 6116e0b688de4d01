//! Sessions, retryable writes, transactions, fail points, step-down, write blocking and
//! compression.

mod common;

use std::time::Duration;

use bson::{Document, doc};
use futures::TryStreamExt;
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::ClientOptions;

fn code(e: &mongodb::error::Error) -> Option<i32> {
    match &*e.kind {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        _ => None,
    }
}

#[tokio::test]
async fn transactions_commit_abort_and_events() {
    let s = common::server();
    let c = common::client(&s).await;
    let coll = c.database("tx").collection::<Document>("c");
    coll.insert_one(doc! {"_id": 0, "n": 0}).await.unwrap();
    let mut cs = coll.watch().await.unwrap();
    let mut sess = c.start_session().await.unwrap();
    sess.start_transaction().await.unwrap();
    coll.insert_one(doc! {"_id": 1}).session(&mut sess).await.unwrap();
    coll.update_one(doc! {"_id": 0}, doc! {"$inc": {"n": 1}}).session(&mut sess).await.unwrap();
    // not visible outside before commit, visible inside
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 1);
    assert_eq!(coll.count_documents(doc! {}).session(&mut sess).await.unwrap(), 2);
    sess.commit_transaction().await.unwrap();
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 2);
    assert_eq!(coll.find_one(doc! {"_id": 0}).await.unwrap().unwrap().get_i32("n").unwrap(), 1);
    // events share the commit time and carry lsid/txnNumber
    let e1 = tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut cs))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let e2 = tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut cs))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(e1.cluster_time, e2.cluster_time);
    assert!(e1.lsid.is_some() && e1.txn_number.is_some());
    // abort discards
    sess.start_transaction().await.unwrap();
    coll.insert_one(doc! {"_id": 2}).session(&mut sess).await.unwrap();
    sess.abort_transaction().await.unwrap();
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 2);
    // a duplicate key inside a transaction aborts it; the next statement gets NoSuchTransaction
    sess.start_transaction().await.unwrap();
    let e = coll.insert_one(doc! {"_id": 1}).session(&mut sess).await.unwrap_err();
    assert_eq!(code(&e), Some(11000));
    assert!(!e.contains_label("TransientTransactionError"));
    let e = coll.insert_one(doc! {"_id": 9}).session(&mut sess).await.unwrap_err();
    assert_eq!(code(&e), Some(251));
    assert!(e.contains_label("TransientTransactionError"));
    let _ = sess.abort_transaction().await;
}

#[tokio::test]
async fn write_conflict_between_transactions() {
    let s = common::server();
    let c = common::client(&s).await;
    let coll = c.database("wc").collection::<Document>("c");
    coll.insert_one(doc! {"_id": 1, "v": 0}).await.unwrap();
    let mut a = c.start_session().await.unwrap();
    a.start_transaction().await.unwrap();
    coll.update_one(doc! {"_id": 1}, doc! {"$set": {"v": 1}}).session(&mut a).await.unwrap();
    coll.update_one(doc! {"_id": 1}, doc! {"$set": {"v": 2}}).await.unwrap();
    let e = a.commit_transaction().await.unwrap_err();
    assert_eq!(code(&e), Some(112));
    assert!(e.contains_label("TransientTransactionError"));
    assert_eq!(coll.find_one(doc! {"_id": 1}).await.unwrap().unwrap().get_i32("v").unwrap(), 2);
}

#[tokio::test]
async fn retryable_writes_are_applied_once() {
    let s = common::server();
    let c = common::client(&s).await;
    let db = c.database("rw");
    let lsid = doc! {"id": bson::Binary { subtype: bson::spec::BinarySubtype::Uuid, bytes: vec![7u8; 16] }};
    let cmd = doc! {"update": "c", "updates": [{"q": {"_id": 1}, "u": {"$inc": {"n": 1}}, "upsert": true}], "lsid": lsid.clone(), "txnNumber": 5i64};
    let r1 = db.run_command(cmd.clone()).await.unwrap();
    let r2 = db.run_command(cmd.clone()).await.unwrap();
    assert_eq!(r1.get_array("upserted").unwrap(), r2.get_array("upserted").unwrap());
    let d = db.collection::<Document>("c").find_one(doc! {"_id": 1}).await.unwrap().unwrap();
    assert_eq!(d.get_i32("n").unwrap(), 1);
    // an older txnNumber is rejected
    let mut old = cmd.clone();
    old.insert("txnNumber", 4i64);
    let e = db.run_command(old).await.unwrap_err();
    assert_eq!(code(&e), Some(225));
    // the driver retries after a network error injected by a fail point, and the write lands once
    let c = common::client(&s).await;
    let db = c.database("rw");
    c.database("admin")
        .run_command(doc! {"configureFailPoint": "failCommand", "mode": {"times": 1}, "data": {"failCommands": ["insert"], "closeConnection": true}})
        .await
        .unwrap();
    db.collection::<Document>("c").insert_one(doc! {"_id": 2}).await.unwrap();
    assert_eq!(db.collection::<Document>("c").count_documents(doc! {}).await.unwrap(), 2);
}

#[tokio::test]
async fn fail_points_inject_errors_and_labels() {
    let s = common::server();
    let c = common::client(&s).await;
    let admin = c.database("admin");
    let coll = c.database("fp").collection::<Document>("c");
    admin
        .run_command(doc! {"configureFailPoint": "failCommand", "mode": {"times": 2}, "data": {"failCommands": ["find"], "errorCode": 2, "appName": "nobody"}})
        .await
        .unwrap();
    // appName filter: not us
    coll.find_one(doc! {}).await.unwrap();
    admin.run_command(doc! {"configureFailPoint": "failCommand", "mode": "alwaysOn", "data": {"failCommands": ["find"], "errorCode": 50}}).await.unwrap();
    let e = coll.find_one(doc! {}).await.unwrap_err();
    assert_eq!(code(&e), Some(50));
    admin.run_command(doc! {"configureFailPoint": "failCommand", "mode": "off"}).await.unwrap();
    coll.find_one(doc! {}).await.unwrap();
    // retryable code on a retryable write gets RetryableWriteError from the server (raw command)
    admin.run_command(doc! {"configureFailPoint": "failCommand", "mode": {"times": 1}, "data": {"failCommands": ["insert"], "errorCode": 91}}).await.unwrap();
    let lsid = doc! {"id": bson::Binary { subtype: bson::spec::BinarySubtype::Uuid, bytes: vec![1u8; 16] }};
    let e = c
        .database("fp")
        .run_command(doc! {"insert": "c", "documents": [{"_id": 1}], "lsid": lsid, "txnNumber": 1i64})
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(91));
    assert!(e.contains_label("RetryableWriteError"));
    // skip mode + explicit labels
    admin
        .run_command(doc! {"configureFailPoint": "failCommand", "mode": {"skip": 1}, "data": {"failCommands": ["ping"], "errorCode": 6, "errorLabels": ["Custom"]}})
        .await
        .unwrap();
    admin.run_command(doc! {"ping": 1}).await.unwrap();
    let e = admin.run_command(doc! {"ping": 1}).await.unwrap_err();
    assert!(e.contains_label("Custom"));
    admin.run_command(doc! {"configureFailPoint": "failCommand", "mode": "off"}).await.unwrap();
    // blockConnection delays the command
    admin
        .run_command(doc! {"configureFailPoint": "failCommand", "mode": {"times": 1}, "data": {"failCommands": ["aggregate"], "blockConnection": true, "blockTimeMS": 300}})
        .await
        .unwrap();
    let t = std::time::Instant::now();
    coll.count_documents(doc! {}).await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(290));
    // writeConcernError is attached to a successful write
    admin
        .run_command(doc! {"configureFailPoint": "failCommand", "mode": {"times": 1}, "data": {"failCommands": ["insert"], "writeConcernError": {"code": 100, "errmsg": "no"}}})
        .await
        .unwrap();
    let r = c.database("fp").run_command(doc! {"insert": "c", "documents": [{"_id": 77}]}).await.unwrap();
    assert_eq!(r.get_document("writeConcernError").unwrap().get_i32("code").unwrap(), 100);
}

#[tokio::test]
async fn step_down_and_drop_connections() {
    let s = common::server();
    let c = common::client(&s).await;
    let coll = c.database("sd").collection::<Document>("c");
    coll.insert_one(doc! {"_id": 1}).await.unwrap();
    s.drop_all_connections();
    // the driver reconnects transparently (retryable read)
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 1);
    // a raw command during step-down fails with NotWritablePrimary
    let direct = common::client_uri(&s.direct_uri()).await;
    direct.database("admin").run_command(doc! {"ping": 1}).await.unwrap();
    s.step_down(Duration::from_millis(1500));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let hello = direct.database("admin").run_command(doc! {"hello": 1}).await.unwrap();
    assert!(!hello.get_bool("isWritablePrimary").unwrap());
    assert!(hello.get_bool("secondary").unwrap());
    let e = direct.database("sd").run_command(doc! {"insert": "c", "documents": [{"_id": 5}]}).await.unwrap_err();
    assert_eq!(code(&e), Some(10107));
    // a direct connection reads from the secondary (primaryPreferred, so secondaryOk)
    assert_eq!(direct.database("sd").collection::<Document>("c").count_documents(doc! {}).await.unwrap(), 1);
    // a replica-set client waits for the primary to come back and its retryable write succeeds
    let t = std::time::Instant::now();
    coll.insert_one(doc! {"_id": 2}).await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(500));
    let hello = direct.database("admin").run_command(doc! {"hello": 1}).await.unwrap();
    assert!(hello.get_bool("isWritablePrimary").unwrap());
    // admin command form of the fault controls
    let r = direct.database("admin").run_command(doc! {"fakeMongodTruncateOplog": 1}).await.unwrap();
    assert_eq!(r.get_f64("ok").unwrap(), 1.0);
}

#[tokio::test]
async fn user_write_blocking_with_app_name_bypass() {
    let s = common::server();
    let c = common::client(&s).await;
    let mut o = ClientOptions::parse(s.uri()).await.unwrap();
    o.app_name = Some("clustersync".into());
    let privileged = mongodb::Client::with_options(o).unwrap();
    c.database("admin").run_command(doc! {"setUserWriteBlockMode": 1, "global": true}).await.unwrap();
    let e = c.database("wb").collection::<Document>("c").insert_one(doc! {"_id": 1}).await.unwrap_err();
    assert_eq!(code(&e), Some(96));
    let e = c.database("wb").create_collection("x").await.unwrap_err();
    assert_eq!(code(&e), Some(96));
    privileged.database("wb").collection::<Document>("c").insert_one(doc! {"_id": 1}).await.unwrap();
    // reads still work
    assert_eq!(c.database("wb").collection::<Document>("c").count_documents(doc! {}).await.unwrap(), 1);
    c.database("admin").run_command(doc! {"setUserWriteBlockMode": 1, "global": false}).await.unwrap();
    c.database("wb").collection::<Document>("c").insert_one(doc! {"_id": 2}).await.unwrap();
}

#[tokio::test]
async fn compression_zlib_and_snappy() {
    let s = common::server();
    for comp in ["zlib", "snappy"] {
        let uri = format!("{}&compressors={comp}", s.uri());
        let c = common::client_uri(&uri).await;
        let coll = c.database("z").collection::<Document>(comp);
        let big = "abc".repeat(5000);
        coll.insert_many((0..50).map(|i| doc! {"_id": i, "s": big.clone()})).await.unwrap();
        let docs: Vec<Document> = coll.find(doc! {}).await.unwrap().try_collect().await.unwrap();
        assert_eq!(docs.len(), 50);
        let hello = c.database("admin").run_command(doc! {"hello": 1, "compression": [comp]}).await.unwrap();
        assert_eq!(hello.get_array("compression").unwrap()[0].as_str(), Some(comp));
    }
}

#[tokio::test]
async fn get_parameter_and_status_commands() {
    let s = common::server();
    let c = common::client(&s).await;
    let admin = c.database("admin");
    let r = admin.run_command(doc! {"getParameter": 1, "featureCompatibilityVersion": 1}).await.unwrap();
    assert_eq!(r.get_document("featureCompatibilityVersion").unwrap().get_str("version").unwrap(), "7.0");
    let r = admin.run_command(doc! {"replSetGetStatus": 1}).await.unwrap();
    let m = r.get_array("members").unwrap()[0].as_document().unwrap().clone();
    assert_eq!(m.get_str("stateStr").unwrap(), "PRIMARY");
    assert!(m.get_document("optime").unwrap().get_timestamp("ts").is_ok());
    for cmd in ["serverStatus", "hostInfo", "connectionStatus", "whatsmyuri", "getCmdLineOpts", "listDatabases"] {
        admin.run_command(doc! {cmd: 1}).await.unwrap_or_else(|e| panic!("{cmd}: {e}"));
    }
    let r = admin.run_command(doc! {"ping": 1}).await.unwrap();
    let ct = r.get_document("$clusterTime").unwrap();
    assert_eq!(ct.get_document("signature").unwrap().get_i64("keyId").unwrap(), 0);
    assert!(r.get_timestamp("operationTime").is_ok());
}

#[tokio::test]
async fn not_primary_errors_are_recovered_quickly() {
    let s = common::server();
    let c = common::client(&s).await;
    let coll = c.database("np").collection::<Document>("c");
    coll.insert_one(doc! {"_id": 1}).await.unwrap();
    c.database("admin")
        .run_command(doc! {"configureFailPoint": "failCommand", "mode": {"times": 1}, "data": {"failCommands": ["find"], "errorCode": 10107}})
        .await
        .unwrap();
    let t = std::time::Instant::now();
    // the driver marks the server Unknown, rediscovers it and retries the read
    assert!(coll.find_one(doc! {}).await.unwrap().is_some());
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

#[tokio::test]
async fn snapshot_reads_see_a_point_in_time() {
    let s = common::server();
    let c = common::client(&s).await;
    let coll = c.database("snap").collection::<Document>("c");
    coll.insert_many(vec![doc! {"_id": 1, "x": 11}, doc! {"_id": 2, "x": 22}]).await.unwrap();
    let mut sess = c.start_session().snapshot(true).await.unwrap();
    let first: Vec<Document> =
        coll.find(doc! {}).session(&mut sess).await.unwrap().stream(&mut sess).try_collect().await.unwrap();
    assert_eq!(first.len(), 2);
    coll.update_one(doc! {"_id": 1}, doc! {"$set": {"x": 13}}).await.unwrap();
    coll.delete_one(doc! {"_id": 2}).await.unwrap();
    coll.insert_one(doc! {"_id": 3}).await.unwrap();
    let again: Vec<Document> =
        coll.find(doc! {}).session(&mut sess).await.unwrap().stream(&mut sess).try_collect().await.unwrap();
    assert_eq!(again, vec![doc! {"_id": 1, "x": 11}, doc! {"_id": 2, "x": 22}]);
    // raw form: atClusterTime is reported and honoured
    let r = c.database("snap").run_command(doc! {"find": "c", "readConcern": {"level": "snapshot"}}).await.unwrap();
    let at = r.get_document("cursor").unwrap().get_timestamp("atClusterTime").unwrap();
    coll.insert_one(doc! {"_id": 4}).await.unwrap();
    let r = c
        .database("snap")
        .run_command(doc! {"find": "c", "readConcern": {"level": "snapshot", "atClusterTime": at}})
        .await
        .unwrap();
    assert_eq!(r.get_document("cursor").unwrap().get_array("firstBatch").unwrap().len(), 2);
    // writes with snapshot read concern are refused outside transactions
    let e = c
        .database("snap")
        .run_command(doc! {"insert": "c", "documents": [{"_id": 9}], "readConcern": {"level": "snapshot"}})
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(72));
}
