//! The commit drain: once the leader has written a commit marker on the source, the task reports
//! `drained_marker` only when every event before the marker is applied on the destination.

mod cdc_support;

use bson::doc;
use cdc_support::Harness;
use clustersync_common::model::{self, CommitProgress, CommitStep};
use clustersync_common::namespace::INTERNAL_DATABASE;

#[tokio::test]
async fn the_commit_marker_is_reported_once_everything_before_it_is_applied() {
    let harness = Harness::start().await;
    let running = harness.run().await;
    harness.complete_copy().await;
    harness.wait_live().await;

    let coll = harness.source_coll("app", "orders");
    coll.insert_many((0..300).map(|i| doc! {"_id": i, "state": "new"})).await.unwrap();
    coll.update_many(doc! {"_id": {"$lt": 150}}, doc! {"$set": {"state": "paid"}}).await.unwrap();
    coll.delete_many(doc! {"_id": {"$gte": 290}}).await.unwrap();

    let markers = harness.user.database(INTERNAL_DATABASE);
    // Another migration's marker is not ours.
    markers.collection::<bson::Document>("markers.other").insert_one(doc! {"_id": "commit-1"}).await.unwrap();
    // The leader writes the marker, then records it in the state document.
    markers
        .collection::<bson::Document>(&format!("markers.{}", harness.migration))
        .insert_one(doc! {"_id": "commit-1"})
        .await
        .unwrap();
    harness.state.send_modify(|state| {
        state.commit = Some(CommitProgress {
            requested_at_ms: model::now_ms(),
            step: CommitStep::MarkerWritten,
            marker_id: "commit-1".into(),
            marker_time: None,
        });
    });

    let drained = harness.wait_cdc("the marker drained", |c| c.drained_marker.as_deref() == Some("commit-1")).await;
    // Everything before the marker is on the destination at the moment it is reported.
    let source = Harness::snapshot(&harness.user, &harness.filter).await;
    let destination = Harness::snapshot(&harness.check, &Default::default()).await;
    assert_eq!(source, destination, "the drain is reported before every earlier event was applied");
    assert!(drained.events_applied >= 300 + 150 + 10);

    // Applying goes on after the marker until the task is cancelled.
    coll.insert_one(doc! {"_id": "late"}).await.unwrap();
    harness.wait_converged("after the marker").await;
    assert_eq!(harness.cdc().await.drained_marker.as_deref(), Some("commit-1"));
    running.stop().await.unwrap_err();
}

#[tokio::test]
async fn a_marker_behind_the_checkpoint_is_recognised_by_its_time() {
    let harness = Harness::start().await;
    let first = harness.run().await;
    harness.complete_copy().await;
    harness.wait_live().await;
    harness.source_coll("app", "orders").insert_many((0..50).map(|i| doc! {"_id": i})).await.unwrap();
    // The leader inserted the marker, but stopped before recording it; meanwhile the task applied
    // and checkpointed past it, then crashed.
    let reply = harness
        .source_command(
            INTERNAL_DATABASE,
            doc! {"insert": format!("markers.{}", harness.migration), "documents": [{"_id": "commit-2"}]},
        )
        .await;
    let marker_time = reply.get_timestamp("operationTime").expect("the insert reports its operation time");
    harness.source_coll("app", "orders").insert_one(doc! {"_id": "after"}).await.unwrap();
    harness.wait_cdc("past the marker", |c| c.events_applied >= 52).await;
    first.crash().await;
    assert_eq!(harness.cdc().await.drained_marker, None);

    harness.state.send_modify(|state| {
        state.commit = Some(CommitProgress {
            requested_at_ms: model::now_ms(),
            step: CommitStep::MarkerWritten,
            marker_id: "commit-2".into(),
            marker_time: Some(marker_time.into()),
        });
    });
    let second = harness.run().await;
    harness.wait_cdc("the marker drained", |c| c.drained_marker.as_deref() == Some("commit-2")).await;
    harness.wait_converged("after the takeover").await;
    second.stop().await.unwrap_err();
}
