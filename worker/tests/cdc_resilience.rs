//! Crashes, takeovers and faults lose nothing; a lost change-stream history fails the task
//! with the reason instead of skipping events.

mod cdc_support;

use std::time::Duration;

use bson::{Timestamp, doc};
use cdc_support::{Harness, test_settings};
use clustersync_common::model::{CdcStage, TaskStatus};
use clustersync_worker::error::WorkerError;

async fn burst(harness: &Harness, from: i32, count: i32) {
    let coll = harness.source_coll("app", "load");
    coll.insert_many((from..from + count).map(|i| doc! {"_id": i, "n": 0, "list": [1, 2, 3]})).await.unwrap();
    for i in (from..from + count).step_by(3) {
        coll.update_one(doc! {"_id": i}, doc! {"$inc": {"n": 1}, "$pop": {"list": 1}}).await.unwrap();
    }
    for i in (from..from + count).step_by(7) {
        coll.delete_one(doc! {"_id": i}).await.unwrap();
    }
}

/// A spool entry a crashed holder wrote after its last checkpoint, which a new holder would
/// apply if it did not remove it.
fn leftover_entry(seq: u64) -> bson::Document {
    doc! {
        "_id": seq as i64,
        "ts": Timestamp { time: 1, increment: 1 },
        "ev": {
            "_id": {"_data": "00"}, "operationType": "insert", "clusterTime": Timestamp { time: 1, increment: 1 },
            "ns": {"db": "app", "coll": "load"}, "documentKey": {"_id": "leftover"},
            "fullDocument": {"_id": "leftover"},
        },
    }
}

#[tokio::test]
async fn a_takeover_while_spooling_resumes_from_the_checkpoint() {
    let harness = Harness::start().await;
    let first = harness.run().await;
    burst(&harness, 0, 200).await;
    let before = harness.wait_cdc("some events spooled", |c| c.events_spooled >= 100).await;
    first.crash().await;
    let checkpoint = harness.cdc().await;
    assert!(checkpoint.next_spool_seq >= before.next_spool_seq);
    harness.spool().insert_one(leftover_entry(checkpoint.next_spool_seq)).await.unwrap();

    burst(&harness, 1000, 100).await;
    let second = harness.run().await;
    harness.copy(&[("app", "load")]).await;
    harness.complete_copy().await;
    harness.wait_live().await;
    harness.wait_converged("after a takeover while spooling").await;
    assert_eq!(
        harness.destination_coll("app", "load").count_documents(doc! {"_id": "leftover"}).await.unwrap(),
        0,
        "entries written after the last checkpoint are removed before spooling continues"
    );
    second.stop().await.unwrap_err();
}

#[tokio::test]
async fn a_takeover_while_draining_converges() {
    let settings = clustersync_worker::settings::WorkerSettings { apply_batch_events: 5, ..test_settings() };
    let harness = Harness::start_with(cdc_support::options(serde_json::json!({})), settings).await;
    let first = harness.run().await;
    burst(&harness, 0, 600).await;
    harness.wait_cdc("everything spooled", |c| c.events_spooled >= 600 + 200 + 86).await;
    harness.copy(&[("app", "load")]).await;
    // Slow the destination down so the drain is caught half-way.
    harness
        .destination_fail_point(
            bson::Bson::String("alwaysOn".into()),
            doc! {"failCommands": ["update", "delete"], "blockConnection": true, "blockTimeMS": 20},
        )
        .await;
    harness.complete_copy().await;
    let mid = harness.wait_cdc("the drain half-way", |c| c.stage == CdcStage::Draining && c.next_apply_seq > 50).await;
    assert!(mid.next_apply_seq < mid.next_spool_seq, "{mid:?}");
    first.crash().await;
    let checkpoint = harness.cdc().await;
    harness.spool().insert_one(leftover_entry(checkpoint.next_spool_seq)).await.unwrap();
    harness.destination_fail_point(bson::Bson::String("off".into()), doc! {}).await;

    burst(&harness, 5000, 50).await;
    let second = harness.run().await;
    harness.wait_live().await;
    harness.wait_converged("after a takeover while draining").await;
    let live = harness.cdc().await;
    assert!(live.events_applied >= checkpoint.events_applied);
    second.stop().await.unwrap_err();
}

#[tokio::test]
async fn a_stale_holder_is_fenced() {
    let harness = Harness::start().await;
    let stale = harness.run().await;
    harness.complete_copy().await;
    harness.wait_live().await;
    // Another worker takes the task over while the first one still runs (its lease lapsed).
    let current = harness.run().await;
    harness.source_coll("app", "x").insert_one(doc! {"_id": 1}).await.unwrap();
    let result = stale.finished().await;
    assert!(matches!(result, Err(WorkerError::Fenced { .. })), "{result:?}");
    harness.wait_converged("the new holder applies").await;
    current.stop().await.unwrap_err();
}

#[tokio::test]
async fn transient_faults_lose_nothing() {
    let harness = Harness::start().await;
    let (source, destination) = harness.servers.fake();
    let running = harness.run().await;
    burst(&harness, 0, 100).await;
    source.drop_all_connections();
    burst(&harness, 100, 100).await;
    harness.copy(&[("app", "load")]).await;
    harness.complete_copy().await;
    destination.drop_all_connections();
    harness.wait_live().await;

    // Live, under load: connections dropped on both sides, a source election, destination
    // errors and write concern errors on applier writes.
    let writer = {
        let user = harness.user.clone();
        tokio::spawn(async move {
            let coll = user.database("app").collection::<bson::Document>("live");
            for i in 0..300 {
                // Retryable writes ride through the faults on the application side.
                while coll.insert_one(doc! {"_id": i, "v": i}).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                while coll.update_one(doc! {"_id": i / 2}, doc! {"$set": {"v": -i}}).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    source.drop_all_connections();
    harness
        .destination_fail_point(
            bson::Bson::Document(doc! {"times": 3}),
            doc! {"failCommands": ["update"], "errorCode": 11602, "errorLabels": ["RetryableWriteError"]},
        )
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    source.step_down(Duration::from_millis(500));
    tokio::time::sleep(Duration::from_millis(200)).await;
    destination.drop_all_connections();
    harness
        .destination_fail_point(
            bson::Bson::Document(doc! {"times": 2}),
            doc! {"failCommands": ["update"], "writeConcernError": {"code": 91, "errmsg": "shutting down"}},
        )
        .await;
    writer.await.unwrap();

    harness.wait_converged("after faults").await;
    let checkpoint = harness.checkpoint().await.unwrap();
    assert_eq!(checkpoint.status, TaskStatus::Running);
    assert!(!running.handle.is_finished(), "transient faults do not stop the task");
    running.stop().await.unwrap_err();
}

#[tokio::test]
async fn a_lost_history_fails_with_change_stream_history_lost() {
    let harness = Harness::start().await;
    let (source, _) = harness.servers.fake();
    // The start point falls out of the oplog before the stream could read it (a copy that took
    // longer than the oplog window, with no spool yet).
    burst(&harness, 0, 20).await;
    source.truncate_oplog();
    let running = harness.run().await;
    let result = running.finished().await;
    let Err(WorkerError::Fatal { name, description }) = result else { panic!("expected a fatal error: {result:?}") };
    assert_eq!(name, "ChangeStreamHistoryLost");
    assert!(description.contains("resync"), "{description}");
    let checkpoint = harness.checkpoint().await.unwrap();
    let TaskStatus::Failed { error, description } = checkpoint.status else {
        panic!("the failure is recorded: {checkpoint:?}")
    };
    assert_eq!(error, "ChangeStreamHistoryLost");
    assert!(description.contains("oplog no longer holds the resume point"), "{description}");
}

#[tokio::test]
async fn a_lost_history_after_a_pause_fails_too() {
    let harness = Harness::start().await;
    let (source, _) = harness.servers.fake();
    let running = harness.run().await;
    burst(&harness, 0, 20).await;
    harness.wait_cdc("events spooled", |c| c.events_spooled >= 20).await;
    running.stop().await.unwrap_err();
    // A long pause: the checkpointed resume token leaves the oplog.
    burst(&harness, 100, 20).await;
    source.truncate_oplog();
    let resumed = harness.run().await;
    let result = resumed.finished().await;
    assert!(matches!(&result, Err(WorkerError::Fatal { name, .. }) if name == "ChangeStreamHistoryLost"), "{result:?}");
    assert!(matches!(harness.checkpoint().await.unwrap().status, TaskStatus::Failed { .. }));
}

#[tokio::test]
async fn a_pause_while_live_resumes_after_the_last_applied_event() {
    let harness = Harness::start().await;
    let running = harness.run().await;
    harness.complete_copy().await;
    harness.wait_live().await;
    burst(&harness, 0, 100).await;
    harness.wait_converged("before the pause").await;
    let paused = running.stop().await;
    assert!(matches!(paused, Err(WorkerError::Cancelled)), "{paused:?}");
    let at_pause = harness.cdc().await;
    assert_eq!(at_pause.stage, CdcStage::Live);

    // Writes while paused are applied after the resume: nothing is skipped or lost.
    burst(&harness, 1000, 100).await;
    harness.source_coll("app", "load").update_many(doc! {}, doc! {"$set": {"paused": true}}).await.unwrap();
    let resumed = harness.run().await;
    harness.wait_converged("after the resume").await;
    let after = harness.wait_cdc("progress saved", |c| c.events_applied > at_pause.events_applied).await;
    assert_eq!(after.stage, CdcStage::Live);
    resumed.stop().await.unwrap_err();
}

#[tokio::test]
async fn a_tight_memory_budget_slows_the_pipeline_but_never_stalls_it() {
    let harness = Harness::start().await;
    // Room for about a dozen of the documents below at a time, on each path.
    let running = harness.run_with_budget(Some(256 * 1024)).await;
    let coll = harness.source_coll("app", "wide");
    let blob = "b".repeat(20 * 1024);
    let write = |from: i32| {
        let coll = coll.clone();
        let blob = blob.clone();
        async move {
            for i in from..from + 60 {
                coll.insert_one(doc! {"_id": i, "blob": &blob}).await.unwrap();
                coll.update_one(doc! {"_id": i}, doc! {"$set": {"n": i}}).await.unwrap();
            }
        }
    };
    write(0).await;
    harness.wait_cdc("spooled", |c| c.events_spooled >= 120).await;
    harness.complete_copy().await;
    // Writes keep coming while the spool drains and the intake switches to live.
    write(1000).await;
    harness.wait_live().await;
    write(2000).await;
    harness.wait_converged("under a tight memory budget").await;
    running.stop().await.unwrap_err();
}
