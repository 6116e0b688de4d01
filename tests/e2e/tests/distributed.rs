//! End-to-end, distributed mode: a real etcd, `clustersync coordinator` and `clustersync worker`
//! processes, and the failures the design promises to survive — a worker killed in the middle of
//! the copy or of change-data capture, the leading coordinator killed or frozen, etcd restarted,
//! a worker (copying, or holding the change stream) frozen past its lease and thawed — plus a
//! worker added mid-copy, a task taken back with a release key, and one command fanning out to
//! the fleet. Every test ends with a commit and a document-for-document comparison of the two
//! sides.
//!
//! The processes run with a short lease TTL (`etcd.leaseTtl`), small copy partitions and small
//! copy batches (`worker.partitionBytes`, `worker.copyBatchDocuments`), so takeovers happen
//! within seconds and the copy is cut into many claimable tasks.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bson::doc;
use clustersync_common::ids::TaskId;
use clustersync_common::model::{
    CdcCheckpoint, CheckpointDetail, CopyCheckpoint, TaskCheckpoint, TaskSpec, TaskStatus,
};
use clustersync_e2e::data::{self, assert_snapshots_equal, every_type_document};
use clustersync_e2e::load::LiveWriter;
use clustersync_e2e::{Fleet, FleetOptions, TestClusters};
use serde_json::{Value, json};

/// Bound on every wait; a healthy run takes a fraction of it.
const TIMEOUT: Duration = Duration::from_secs(150);

/// Size of the padding of a bulk document: about 1 KiB per document.
const PADDING: usize = 1000;

/// Inserts `count` documents of about 1 KiB with integer `_id`s into `db.coll` on the source.
async fn load_bulk(clusters: &TestClusters, db: &str, coll: &str, count: i64) {
    let collection = clusters.source.client.database(&clusters.db(db)).collection::<bson::Document>(coll);
    let padding = "p".repeat(PADDING);
    let mut next = 0;
    while next < count {
        let end = (next + 2000).min(count);
        collection
            .insert_many((next..end).map(|i| doc! {"_id": i, "n": i, "group": i % 7, "pad": &padding}))
            .await
            .expect("insert bulk documents");
        next = end;
    }
}

/// The body of `/start`: this test's databases only.
fn start_body(clusters: &TestClusters) -> Value {
    json!({"source": "cluster0", "destination": "cluster1", "includeNamespaces": clusters.include_filter()})
}

/// Copy checkpoints by task.
fn copy_checkpoints(checkpoints: &BTreeMap<TaskId, TaskCheckpoint>) -> BTreeMap<TaskId, (TaskStatus, CopyCheckpoint)> {
    checkpoints
        .iter()
        .filter_map(|(id, checkpoint)| match &checkpoint.detail {
            CheckpointDetail::Copy(copy) => Some((*id, (checkpoint.status.clone(), copy.clone()))),
            _ => None,
        })
        .collect()
}

/// Ids of the copy tasks.
async fn copy_task_ids(fleet: &Fleet) -> BTreeSet<TaskId> {
    fleet.tasks().await.into_iter().filter(|(_, spec)| matches!(spec, TaskSpec::Copy(_))).map(|(id, _)| id).collect()
}

/// Ids of the change-stream tasks.
async fn change_stream_task_ids(fleet: &Fleet) -> BTreeSet<TaskId> {
    fleet
        .tasks()
        .await
        .into_iter()
        .filter(|(_, spec)| matches!(spec, TaskSpec::ChangeStream(_)))
        .map(|(id, _)| id)
        .collect()
}

/// Waits for `canCommit`, commits through coordinator `via`, waits for COMMITTED, and compares
/// every database of the test on both sides.
async fn commit_and_compare(fleet: &mut Fleet, via: usize, clusters: &TestClusters) -> Value {
    fleet.wait_progress(via, "canCommit", TIMEOUT, |p| p["canCommit"] == true).await;
    fleet.step("canCommit; committing");
    fleet.coordinators[via].post_ok("commit", json!({})).await;
    let committed = fleet.wait_state(via, "COMMITTED", TIMEOUT).await;
    fleet.step("committed");
    assert_eq!(committed["canWrite"], true, "{committed:#}");
    let databases = clusters.test_databases(&clusters.source.client).await;
    assert!(!databases.is_empty(), "the test loaded no data");
    let source = data::snapshot(&clusters.source.client, &databases).await;
    let destination = data::snapshot(&clusters.destination.client, &databases).await;
    assert_snapshots_equal(&source, &destination);
    committed
}

/// The documents of every collection of `db` (by collection name, raw, in `_id` order).
async fn documents_of(client: &mongodb::Client, db: &str) -> BTreeMap<String, Vec<Vec<u8>>> {
    data::snapshot(client, &[db.to_string()])
        .await
        .into_iter()
        .flat_map(|(_, collections)| collections)
        .map(|collection| (collection.name, collection.documents))
        .collect()
}

/// The `_id`s whose documents differ between `source` and `destination` (a handful, for
/// assertion messages).
fn differing_ids(source: &BTreeMap<String, Vec<Vec<u8>>>, destination: &BTreeMap<String, Vec<Vec<u8>>>) -> Vec<String> {
    let id = |raw: &Vec<u8>| {
        bson::RawDocumentBuf::from_bytes(raw.clone())
            .ok()
            .and_then(|d| d.get("_id").ok().flatten().map(|id| format!("{id:?}")))
            .unwrap_or_default()
    };
    let mut out = BTreeSet::new();
    for (name, docs) in source {
        let other = destination.get(name).cloned().unwrap_or_default();
        let ours: BTreeSet<(String, &Vec<u8>)> = docs.iter().map(|d| (id(d), d)).collect();
        let theirs: BTreeSet<(String, &Vec<u8>)> = other.iter().map(|d| (id(d), d)).collect();
        out.extend(ours.symmetric_difference(&theirs).map(|(id, _)| format!("{name} _id {id}")));
    }
    out.into_iter().take(10).collect()
}

/// Starts the migration through coordinator `via` and waits until the copy tasks are planned.
async fn start_and_wait_for_copy(fleet: &mut Fleet, via: usize, clusters: &TestClusters) {
    fleet.coordinators[via].post_ok("start", start_body(clusters)).await;
    fleet.step("started");
    fleet.wait_progress(via, "the snapshot phase", TIMEOUT, |p| p["phase"] == "snapshot").await;
    fleet.step("copying");
}

/// Kill -9 of a worker in the middle of the copy: the other worker takes its tasks over from
/// their last checkpoints, so each of them copies again at most the one batch that was in
/// flight; the destination equals the source at commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_mid_copy_is_taken_over_from_its_checkpoints() {
    let clusters = TestClusters::start().await;
    let documents = 20_000;
    load_bulk(&clusters, "bulk", "items", documents).await;
    let options = FleetOptions {
        worker: json!({"taskSlots": 2, "copyBatchDocuments": 50, "partitionBytes": 1024 * 1024}),
        ..FleetOptions::default()
    };
    let batch = options.copy_batch_documents();
    let mut fleet = Fleet::start(&clusters, options).await;
    start_and_wait_for_copy(&mut fleet, 0, &clusters).await;
    let copy_tasks = copy_task_ids(&fleet).await;
    assert!(copy_tasks.len() >= 10, "expected many copy partitions, got {}\n{}", copy_tasks.len(), fleet.all_logs());

    // Kill the victim in the middle of the copy (a few partitions done), once it holds a copy
    // task with at least two batches durably copied: a restart from scratch would then copy
    // at least two batches again, a resume at most one.
    let victim = fleet.workers[1].id.clone();
    let mut held_at_kill: BTreeMap<TaskId, CopyCheckpoint> = BTreeMap::new();
    fleet
        .wait_until("the victim has copied two batches of a partition mid-copy", TIMEOUT, || async {
            let claims = fleet.claims().await;
            let checkpoints = copy_checkpoints(&fleet.checkpoints().await);
            let done = checkpoints.values().filter(|(status, _)| *status == TaskStatus::Done).count();
            done >= 3
                && checkpoints.iter().any(|(id, (status, copy))| {
                    claims.get(id) == Some(&victim)
                        && *status == TaskStatus::Running
                        && copy.documents_copied >= 2 * batch
                })
        })
        .await;
    fleet.workers[1].kill9();
    fleet.step("victim killed");
    let claims = fleet.claims().await;
    let checkpoints = copy_checkpoints(&fleet.checkpoints().await);
    for (id, holder) in &claims {
        // A task the victim finished just before the kill keeps its claim until the lease
        // expires, but there is nothing left to take over.
        let finished = checkpoints.get(id).is_some_and(|(status, _)| *status == TaskStatus::Done);
        if *holder == victim && copy_tasks.contains(id) && !finished {
            held_at_kill.insert(*id, checkpoints.get(id).map(|(_, copy)| copy.clone()).unwrap_or_default());
        }
    }
    assert!(!held_at_kill.is_empty(), "the victim held no copy task when killed: {claims:?}");

    commit_and_compare(&mut fleet, 0, &clusters).await;

    let checkpoints = copy_checkpoints(&fleet.checkpoints().await);
    let survivor = fleet.workers[0].id.clone();
    for (id, at_kill) in &held_at_kill {
        let final_checkpoint = fleet.checkpoints().await.get(id).cloned().expect("checkpoint of a finished task");
        assert_eq!(final_checkpoint.status, TaskStatus::Done, "task {id}");
        assert_eq!(final_checkpoint.holder.to_string(), survivor, "task {id} was finished by the survivor");
        let (_, copy) = &checkpoints[id];
        assert!(
            copy.documents_recopied <= batch,
            "task {id}: {} documents copied again after the takeover (checkpoint at the kill: {at_kill:?}); \
             at most one batch ({batch}) may be",
            copy.documents_recopied
        );
        assert!(copy.documents_copied >= at_kill.documents_copied, "task {id} went backwards: {copy:?} < {at_kill:?}");
    }
    let recopied: u64 = checkpoints.values().map(|(_, copy)| copy.documents_recopied).sum();
    assert!(
        recopied <= batch * held_at_kill.len() as u64,
        "{recopied} documents copied again in total; at most one batch per partition in flight at the kill \
         ({} partitions × {batch}) may be",
        held_at_kill.len()
    );
    let copied: u64 = checkpoints.values().map(|(_, copy)| copy.documents_copied).sum();
    assert_eq!(copied, documents as u64, "the copy checkpoints account for every document exactly once");
    let resumed = fleet.node(&survivor).logs().matches("resume_after=Some").count();
    assert!(resumed >= 1, "the survivor never resumed a copy from a checkpoint:\n{}", fleet.all_logs());
}

/// The change-stream task of the test's source (one replica set: one task).
async fn change_stream_task(fleet: &Fleet) -> TaskId {
    let ids = change_stream_task_ids(fleet).await;
    assert_eq!(ids.len(), 1, "one change-stream task per source replica set: {ids:?}");
    *ids.first().expect("checked above")
}

/// The change-stream checkpoint of `task`.
async fn cdc_checkpoint(fleet: &Fleet, task: TaskId) -> Option<(String, CdcCheckpoint)> {
    let checkpoint = fleet.checkpoints().await.remove(&task)?;
    match checkpoint.detail {
        CheckpointDetail::ChangeStream(cdc) => Some((checkpoint.holder.to_string(), cdc)),
        other => panic!("task {task} has a checkpoint of another kind: {other:?}"),
    }
}

/// Kill -9 of the worker holding the change-stream task while change events are applied live
/// and the source keeps taking writes: the other worker takes the stream over from its
/// checkpoint; nothing is lost, the commit drains everything, the sides are equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_change_stream_holder_mid_cdc_loses_nothing() {
    let clusters = TestClusters::start().await;
    load_bulk(&clusters, "bulk", "items", 3000).await;
    let live = clusters.source.client.database(&clusters.db("live")).collection::<bson::Document>("people");
    live.insert_many((0..1000).map(every_type_document)).await.expect("insert live documents");
    let mut fleet = Fleet::start(&clusters, FleetOptions::default()).await;
    let writer =
        LiveWriter::start(clusters.source.user_client().await, clusters.db("live"), "people".into(), 1500, false);
    fleet.coordinators[0].post_ok("start", start_body(&clusters)).await;
    fleet.step("started with live writes");
    fleet.wait_progress(0, "change events applied live", TIMEOUT, |p| p["canCommit"] == true).await;
    fleet.step("applying change events live");
    let stream = change_stream_task(&fleet).await;
    let holder = fleet.claims().await.get(&stream).cloned().expect("the change stream is claimed while live");
    // Let the holder apply live events for a moment, then kill it in the middle of that.
    let before = cdc_checkpoint(&fleet, stream).await.map(|(_, cdc)| cdc.events_applied).unwrap_or(0);
    fleet
        .wait_until("the holder applies live events", TIMEOUT, || async {
            cdc_checkpoint(&fleet, stream).await.is_some_and(|(_, cdc)| cdc.events_applied > before)
        })
        .await;
    let (_, at_kill) = cdc_checkpoint(&fleet, stream).await.expect("checkpoint");
    fleet.node_mut(&holder).kill9();
    fleet.step(&format!("killed {holder}, the change-stream holder"));
    let survivor = fleet.workers.iter().map(|w| w.id.clone()).find(|id| *id != holder).expect("two workers");
    fleet
        .wait_until("the survivor takes the change stream over", TIMEOUT, || async {
            fleet.claims().await.get(&stream) == Some(&survivor)
        })
        .await;
    fleet.step("change stream taken over");
    fleet
        .wait_until("the survivor applies events past the killed holder's checkpoint", TIMEOUT, || async {
            cdc_checkpoint(&fleet, stream)
                .await
                .is_some_and(|(holder, cdc)| holder == survivor && cdc.events_applied > at_kill.events_applied)
        })
        .await;
    fleet.wait_progress(0, "canCommit after the takeover", TIMEOUT, |p| p["canCommit"] == true).await;
    let counts = writer.stop().await;
    fleet.step("writes stopped");
    assert!(counts.inserts.load(Ordering::Relaxed) > 0, "the writer wrote nothing: {counts:?}");
    assert!(counts.deletes.load(Ordering::Relaxed) > 0, "the writer deleted nothing: {counts:?}");

    let committed = commit_and_compare(&mut fleet, 0, &clusters).await;
    assert!(committed["totalEventsApplied"].as_u64().unwrap_or(0) > 0, "{committed:#}");
    let (final_holder, cdc) = cdc_checkpoint(&fleet, stream).await.expect("checkpoint");
    assert_eq!(final_holder, survivor, "the change stream ended with the survivor");
    assert!(cdc.events_applied > at_kill.events_applied, "{cdc:?} vs {at_kill:?}");
}

/// Kill -9 of the leading coordinator (two coordinators) during the copy: the other one is
/// elected, the migration goes on, and it commits through the survivor's API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_leading_coordinator_hands_over_to_the_other() {
    let clusters = TestClusters::start().await;
    load_bulk(&clusters, "bulk", "items", 10_000).await;
    let options = FleetOptions { coordinators: 2, ..FleetOptions::default() };
    let mut fleet = Fleet::start(&clusters, options).await;
    let leader = fleet.wait_for_value("a coordinator to lead", TIMEOUT, || fleet.leader()).await;
    let leader_index = fleet.coordinators.iter().position(|c| c.id == leader).expect("the leader is ours");
    let survivor_index = 1 - leader_index;
    let survivor = fleet.coordinators[survivor_index].id.clone();
    let progress = fleet.coordinators[survivor_index].progress().await;
    assert_eq!(progress["state"], "IDLE", "{progress:#}");

    start_and_wait_for_copy(&mut fleet, leader_index, &clusters).await;
    fleet
        .wait_until("the copy is under way", TIMEOUT, || async {
            copy_checkpoints(&fleet.checkpoints().await).values().any(|(_, copy)| copy.documents_copied > 0)
        })
        .await;
    fleet.coordinators[leader_index].kill9();
    fleet.step(&format!("killed the leader {leader}"));

    fleet
        .wait_until("the survivor is elected", TIMEOUT, || async { fleet.leader().await.as_deref() == Some(&survivor) })
        .await;
    fleet.step("survivor elected");
    let progress = fleet
        .wait_progress(survivor_index, "the survivor reported as leader", TIMEOUT, |p| p["fleet"]["leader"] == survivor)
        .await;
    let instances: Vec<&str> =
        progress["fleet"]["instances"].as_array().expect("instances").iter().filter_map(|i| i["id"].as_str()).collect();
    assert!(!instances.contains(&leader.as_str()), "the dead coordinator is still listed: {instances:?}");

    commit_and_compare(&mut fleet, survivor_index, &clusters).await;
    let logs = fleet.coordinators[survivor_index].logs();
    assert!(logs.contains("leading the migration"), "the survivor never led:\n{logs}");
    assert!(logs.contains("migration committed"), "the survivor did not drive the commit:\n{logs}");
}

/// etcd is killed in the middle of the copy, with writes going on at the source, and started
/// again after every lease has run out: the processes stop their work (their leases are lost),
/// stay up, reclaim the work once etcd is back, and the migration completes correctly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_restart_mid_sync_pauses_and_resumes_the_fleet() {
    let clusters = TestClusters::start().await;
    load_bulk(&clusters, "bulk", "items", 20_000).await;
    let live = clusters.source.client.database(&clusters.db("live")).collection::<bson::Document>("people");
    live.insert_many((0..500).map(every_type_document)).await.expect("insert live documents");
    let options = FleetOptions {
        worker: json!({"taskSlots": 2, "copyBatchDocuments": 50, "partitionBytes": 1024 * 1024}),
        ..FleetOptions::default()
    };
    let lease_ttl = options.lease_ttl;
    let mut fleet = Fleet::start(&clusters, options).await;
    let writer =
        LiveWriter::start(clusters.source.user_client().await, clusters.db("live"), "people".into(), 800, false);
    start_and_wait_for_copy(&mut fleet, 0, &clusters).await;
    let copy_tasks = copy_task_ids(&fleet).await;
    fleet
        .wait_until("a few partitions are copied", TIMEOUT, || async {
            let done = copy_checkpoints(&fleet.checkpoints().await)
                .values()
                .filter(|(status, _)| *status == TaskStatus::Done)
                .count();
            done >= 2
        })
        .await;
    let done_before: BTreeSet<TaskId> = copy_checkpoints(&fleet.checkpoints().await)
        .into_iter()
        .filter(|(_, (status, _))| *status == TaskStatus::Done)
        .map(|(id, _)| id)
        .collect();
    assert!(done_before.len() < copy_tasks.len(), "the copy finished before etcd could be stopped");

    fleet.etcd.stop();
    fleet.step("etcd stopped");
    tokio::time::sleep(lease_ttl * 2).await;
    for node in fleet.coordinators.iter_mut().chain(fleet.workers.iter_mut()) {
        assert!(node.is_running(), "{} exited while etcd was down:\n{}", node.id, node.log_tail(60));
    }
    fleet.etcd.start_again().await;
    fleet.step("etcd started again");

    fleet.wait_progress(0, "canCommit after the etcd restart", TIMEOUT, |p| p["canCommit"] == true).await;
    let counts = writer.stop().await;
    assert!(counts.inserts.load(Ordering::Relaxed) > 0, "the writer wrote nothing: {counts:?}");
    commit_and_compare(&mut fleet, 0, &clusters).await;

    for node in fleet.coordinators.iter().chain(&fleet.workers) {
        let logs = node.logs();
        assert!(
            logs.contains("lease lost; stopping dependent work"),
            "{} never noticed that its lease ran out while etcd was down:\n{}",
            node.id,
            node.log_tail(60)
        );
    }
    let finished_after: Vec<TaskId> = copy_checkpoints(&fleet.checkpoints().await)
        .into_iter()
        .filter(|(id, (status, _))| *status == TaskStatus::Done && !done_before.contains(id))
        .map(|(id, _)| id)
        .collect();
    assert!(!finished_after.is_empty(), "no partition was copied after the restart");
}

/// A worker frozen with SIGSTOP past its lease TTL and then thawed writes nothing: its tasks
/// are taken over, and from the moment its lease expired every checkpoint of the store is
/// written by someone else until the frozen process has started over with a new lease; it logs
/// that it lost its lease; the destination still equals the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_worker_past_its_lease_writes_nothing_after_thawing() {
    let clusters = TestClusters::start().await;
    load_bulk(&clusters, "bulk", "items", 20_000).await;
    let options = FleetOptions {
        worker: json!({"taskSlots": 2, "copyBatchDocuments": 50, "partitionBytes": 1024 * 1024}),
        ..FleetOptions::default()
    };
    let mut fleet = Fleet::start(&clusters, options).await;
    start_and_wait_for_copy(&mut fleet, 0, &clusters).await;
    let victim = fleet.workers[1].id.clone();
    let survivor = fleet.workers[0].id.clone();
    fleet
        .wait_until("the victim copies mid-copy", TIMEOUT, || async {
            let claims = fleet.claims().await;
            let checkpoints = copy_checkpoints(&fleet.checkpoints().await);
            let done = checkpoints.values().filter(|(status, _)| *status == TaskStatus::Done).count();
            done >= 2
                && checkpoints.iter().any(|(id, (status, copy))| {
                    claims.get(id) == Some(&victim) && *status == TaskStatus::Running && copy.documents_copied > 0
                })
        })
        .await;
    fleet.workers[1].freeze();
    fleet.step("victim frozen");
    let held: BTreeSet<TaskId> =
        fleet.claims().await.into_iter().filter(|(_, holder)| *holder == victim).map(|(id, _)| id).collect();
    assert!(!held.is_empty(), "the victim held nothing when frozen");

    // Its lease runs out in etcd: its claims and registration disappear.
    fleet
        .wait_until("the frozen worker's lease expires", TIMEOUT, || async {
            !fleet.claims().await.values().any(|holder| *holder == victim)
                && !fleet.instances().await.contains_key(&victim)
        })
        .await;
    let expired_at = fleet.revision().await;
    fleet.step("victim's lease expired");
    let recorder = fleet.record_checkpoints(expired_at).await;
    // The survivor takes a task of the victim over and checkpoints it while the victim is still
    // frozen with its executors mid-batch.
    fleet
        .wait_until("the survivor checkpoints a task the victim held", TIMEOUT, || async {
            recorder.writes().iter().any(|w| held.contains(&w.task) && w.checkpoint.holder.to_string() == survivor)
        })
        .await;
    fleet.workers[1].thaw();
    fleet.step("victim thawed");

    // The thawed process notices, drops everything, and starts over with a new lease.
    let instance_key = fleet.keys.instance(&Fleet::instance_id(&victim));
    let registered_again = fleet
        .wait_for_value("the thawed worker to register again with a new lease", TIMEOUT, || async {
            fleet.store.get(&instance_key).await.ok().flatten().map(|kv| kv.create_revision)
        })
        .await;
    assert!(registered_again > expired_at);
    fleet.step("victim registered again");
    let logs = fleet.workers[1].logs();
    assert!(
        logs.contains("lease lost; stopping dependent work"),
        "the thawed worker did not log its lease loss:\n{logs}"
    );
    assert!(logs.contains("with a new lease"), "the thawed worker did not start over:\n{logs}");
    assert!(fleet.workers[1].is_running(), "the thawed worker exited:\n{logs}");

    commit_and_compare(&mut fleet, 0, &clusters).await;

    let writes = recorder.writes();
    let stale: Vec<_> =
        writes.iter().filter(|w| w.revision < registered_again && w.checkpoint.holder.to_string() == victim).collect();
    assert!(stale.is_empty(), "the frozen worker wrote checkpoints after its lease expired: {stale:#?}");
    let taken_over: BTreeSet<TaskId> = writes.iter().filter(|w| held.contains(&w.task)).map(|w| w.task).collect();
    assert!(!taken_over.is_empty(), "no task of the frozen worker was checkpointed by another worker");
    for write in writes.iter().filter(|w| held.contains(&w.task) && w.revision < registered_again) {
        assert_eq!(write.checkpoint.holder.to_string(), survivor, "task {} written by {write:?}", write.task);
    }
}

/// A worker added in the middle of the copy gets work, even when the first worker has claimed
/// every partition (enough task slots for all of them): the first one hands back what is above
/// its fair share, the newcomer claims it, and the migration completes correctly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_added_mid_copy_claims_tasks() {
    let clusters = TestClusters::start().await;
    load_bulk(&clusters, "bulk", "items", 30_000).await;
    // Every batch of clustersync's copy reads waits 100 ms on the source until the newcomer
    // copies, so the copy (50 to 260 batches per partition) outlasts the newcomer's start
    // whatever the machine's speed; without it a fast machine finished the copy in two seconds,
    // before the first poll saw every partition claimed.
    let slow_reads = |mode: Value| {
        bson::to_document(&json!({
            "configureFailPoint": "failCommand",
            "mode": mode,
            "data": {"failCommands": ["getMore"], "blockConnection": true, "blockTimeMS": 100, "appName": "clustersync"},
        }))
        .expect("fail point")
    };
    clusters.source.admin(slow_reads(json!("alwaysOn"))).await.expect("slow the source's reads");
    let options = FleetOptions {
        workers: 1,
        // Slots for every partition: the first worker claims them all before the newcomer.
        // Small batches keep the copy going (a checkpoint each) well past the newcomer's start.
        worker: json!({"taskSlots": 64, "copyBatchDocuments": 10, "partitionBytes": 1024 * 1024}),
        ..FleetOptions::default()
    };
    let mut fleet = Fleet::start(&clusters, options).await;
    start_and_wait_for_copy(&mut fleet, 0, &clusters).await;
    let copy_tasks = copy_task_ids(&fleet).await;
    let first = fleet.workers[0].id.clone();
    fleet
        .wait_until("the first worker has claimed every partition", TIMEOUT, || async {
            // A partition the first worker already finished counts as claimed by it: the range
            // of `_id`s of other types is empty here and is done (and its claim released)
            // within milliseconds of being claimed.
            let claims = fleet.claims().await;
            let checkpoints = fleet.checkpoints().await;
            copy_tasks.iter().all(|id| {
                claims.get(id) == Some(&first)
                    || checkpoints
                        .get(id)
                        .is_some_and(|c| c.status == TaskStatus::Done && c.holder.to_string() == first)
            })
        })
        .await;
    fleet.step("every partition claimed by the first worker");
    let index = fleet.add_worker().await;
    let newcomer = fleet.workers[index].id.clone();
    fleet.step("second worker added");

    let progress = fleet
        .wait_progress(0, "the newcomer runs copy tasks", TIMEOUT, |p| {
            p["fleet"]["instances"].as_array().is_some_and(|instances| {
                instances.iter().any(|i| {
                    i["id"] == newcomer.as_str()
                        && i["tasks"].as_array().is_some_and(|tasks| tasks.iter().any(|t| t["kind"] == "copy"))
                })
            })
        })
        .await;
    fleet.step("the newcomer copies");
    assert_eq!(progress["phase"], "snapshot", "the newcomer got work during the copy: {progress:#}");
    clusters.source.admin(slow_reads(json!("off"))).await.expect("source reads at full speed again");

    commit_and_compare(&mut fleet, 0, &clusters).await;
    let checkpoints = fleet.checkpoints().await;
    let by_newcomer = copy_tasks
        .iter()
        .filter(|id| {
            checkpoints.get(id).is_some_and(|c| c.status == TaskStatus::Done && c.holder.to_string() == newcomer)
        })
        .count();
    assert!(by_newcomer > 0, "the newcomer finished no partition");
}

/// `/pause` sent to one coordinator stops every worker (no task stays or gets claimed while
/// PAUSED, no checkpoint is written); `/resume` sent to the other coordinator sets them going
/// again; the migration completes correctly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_fan_out_from_any_coordinator() {
    let clusters = TestClusters::start().await;
    load_bulk(&clusters, "bulk", "items", 20_000).await;
    let options = FleetOptions {
        coordinators: 2,
        worker: json!({"taskSlots": 2, "copyBatchDocuments": 50, "partitionBytes": 1024 * 1024}),
        ..FleetOptions::default()
    };
    let mut fleet = Fleet::start(&clusters, options).await;
    start_and_wait_for_copy(&mut fleet, 0, &clusters).await;
    fleet
        .wait_until("the copy is under way", TIMEOUT, || async {
            copy_checkpoints(&fleet.checkpoints().await).values().any(|(status, _)| *status == TaskStatus::Done)
        })
        .await;

    fleet.coordinators[1].post_ok("pause", json!({})).await;
    fleet.step("paused through coordinator 1");
    fleet.wait_state(0, "PAUSED", TIMEOUT).await;
    fleet.wait_until("every worker hands its tasks back", TIMEOUT, || async { fleet.claims().await.is_empty() }).await;
    fleet.step("no claims left");
    let quiet_from = fleet.revision().await;
    let recorder = fleet.record_checkpoints(quiet_from).await;
    // Several scan intervals of the workers: nothing may be claimed or written meanwhile.
    let watch_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < watch_until {
        let claims = fleet.claims().await;
        assert!(claims.is_empty(), "a task was claimed while PAUSED: {claims:?}\n{}", fleet.all_logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let written = recorder.writes();
    assert!(written.is_empty(), "checkpoints written while PAUSED: {written:#?}");
    let progress = fleet.coordinators[0].progress().await;
    assert_eq!(progress["state"], "PAUSED");
    let busy: Vec<&Value> = progress["fleet"]["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .filter(|i| i["tasks"].as_array().is_some_and(|tasks| !tasks.is_empty()))
        .collect();
    assert!(busy.is_empty(), "processes still report tasks while PAUSED: {busy:#?}");
    let copied_while_paused = copy_checkpoints(&fleet.checkpoints().await);

    fleet.coordinators[0].post_ok("resume", json!({})).await;
    fleet.step("resumed through coordinator 0");
    fleet.wait_state(1, "RUNNING", TIMEOUT).await;
    fleet.wait_until("workers claim again", TIMEOUT, || async { !fleet.claims().await.is_empty() }).await;
    commit_and_compare(&mut fleet, 1, &clusters).await;
    let after = copy_checkpoints(&fleet.checkpoints().await);
    let resumed = copied_while_paused
        .iter()
        .filter(|(id, (status, copy))| {
            *status == TaskStatus::Running && copy.documents_copied > 0 && after[*id].0 == TaskStatus::Done
        })
        .count();
    let never_started = after.keys().filter(|id| !copied_while_paused.contains_key(id)).count();
    assert!(resumed + never_started > 0, "nothing was left to copy after the pause");
}

/// The worker holding the change stream is frozen past its lease while events are applied live
/// and the source keeps taking writes, then thawed once the other worker has taken the stream
/// over and applied everything: the thawed one writes no checkpoint before it has started over
/// with a new lease, and nothing it still had in flight when it froze may reach the
/// destination afterwards (no write follows on the source that could hide a stale apply).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_change_stream_holder_applies_nothing_stale_after_thawing() {
    let clusters = TestClusters::start().await;
    load_bulk(&clusters, "bulk", "items", 2000).await;
    let live = clusters.source.client.database(&clusters.db("live")).collection::<bson::Document>("people");
    live.insert_many((0..1000).map(every_type_document)).await.expect("insert live documents");
    let mut fleet = Fleet::start(&clusters, FleetOptions::default()).await;
    let writer =
        LiveWriter::start(clusters.source.user_client().await, clusters.db("live"), "people".into(), 300, false);
    fleet.coordinators[0].post_ok("start", start_body(&clusters)).await;
    fleet.wait_progress(0, "change events applied live", TIMEOUT, |p| p["canCommit"] == true).await;
    let stream = change_stream_task(&fleet).await;
    let holder = fleet.claims().await.get(&stream).cloned().expect("the change stream is claimed while live");
    let survivor = fleet.workers.iter().map(|w| w.id.clone()).find(|id| *id != holder).expect("two workers");
    let before = cdc_checkpoint(&fleet, stream).await.map(|(_, cdc)| cdc.events_applied).unwrap_or(0);
    fleet
        .wait_until("the holder applies live events", TIMEOUT, || async {
            cdc_checkpoint(&fleet, stream).await.is_some_and(|(_, cdc)| cdc.events_applied > before)
        })
        .await;
    // Frozen in the middle of applying a stream of writes: its appliers hold events.
    fleet.node_mut(&holder).freeze();
    fleet.step(&format!("froze {holder}, the change-stream holder"));
    fleet
        .wait_until("the frozen holder's lease expires", TIMEOUT, || async {
            !fleet.instances().await.contains_key(&holder)
        })
        .await;
    let expired_at = fleet.revision().await;
    let recorder = fleet.record_checkpoints(expired_at).await;
    fleet
        .wait_until("the survivor applies the stream", TIMEOUT, || async {
            recorder.writes().iter().any(|w| w.task == stream && w.checkpoint.holder.to_string() == survivor)
        })
        .await;
    fleet.step("stream taken over");
    let counts = writer.stop().await;
    assert!(counts.updates.load(Ordering::Relaxed) > 0, "the writer updated nothing: {counts:?}");
    // Everything written is applied by the survivor before the holder wakes up: whatever the
    // holder would still apply is older than what the destination has.
    let live_db = clusters.db("live");
    let source_documents = documents_of(&clusters.source.client, &live_db).await;
    let mut converged = false;
    for _ in 0..300 {
        if documents_of(&clusters.destination.client, &live_db).await == source_documents {
            converged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let destination_documents = documents_of(&clusters.destination.client, &live_db).await;
    assert!(
        converged,
        "the survivor never applied every change of the stream it took over; differing: {:?}\n{}",
        differing_ids(&source_documents, &destination_documents),
        fleet.all_logs()
    );
    fleet.step("the survivor applied everything");
    fleet.node_mut(&holder).thaw();
    fleet.step("holder thawed");
    let instance_key = fleet.keys.instance(&Fleet::instance_id(&holder));
    let registered_again = fleet
        .wait_for_value("the thawed worker to register again", TIMEOUT, || async {
            fleet.store.get(&instance_key).await.ok().flatten().map(|kv| kv.create_revision)
        })
        .await;
    fleet.step("holder registered again");
    // Whatever the thawed process still had in flight would have landed by now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_thaw = documents_of(&clusters.destination.client, &live_db).await;
    assert!(
        after_thaw == source_documents,
        "the thawed worker changed the destination after its lease expired; differing: {:?}\n{}",
        differing_ids(&source_documents, &after_thaw),
        fleet.all_logs()
    );

    commit_and_compare(&mut fleet, 0, &clusters).await;
    let stale: Vec<_> = recorder
        .writes()
        .into_iter()
        .filter(|w| w.revision < registered_again && w.checkpoint.holder.to_string() == holder)
        .collect();
    assert!(stale.is_empty(), "the frozen holder wrote checkpoints after its lease expired: {stale:#?}");
}

/// The leading coordinator is frozen past its lease during the copy and thawed once the other
/// coordinator leads: the thawed one gives up (it logs the lost lease and campaigns again
/// behind the new leader), and the migration commits through either API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_leader_is_replaced_and_steps_down_after_thawing() {
    let clusters = TestClusters::start().await;
    load_bulk(&clusters, "bulk", "items", 10_000).await;
    let options = FleetOptions { coordinators: 2, ..FleetOptions::default() };
    let mut fleet = Fleet::start(&clusters, options).await;
    let leader = fleet.wait_for_value("a coordinator to lead", TIMEOUT, || fleet.leader()).await;
    let leader_index = fleet.coordinators.iter().position(|c| c.id == leader).expect("the leader is ours");
    let other_index = 1 - leader_index;
    let other = fleet.coordinators[other_index].id.clone();
    start_and_wait_for_copy(&mut fleet, other_index, &clusters).await;
    fleet.coordinators[leader_index].freeze();
    fleet.step(&format!("froze the leader {leader}"));
    fleet
        .wait_until("the other coordinator is elected", TIMEOUT, || async {
            fleet.leader().await.as_deref() == Some(other.as_str())
        })
        .await;
    fleet.step("other coordinator elected");
    fleet.coordinators[leader_index].thaw();
    fleet.step("old leader thawed");
    fleet.wait_api(leader_index).await;
    let progress = fleet
        .wait_progress(leader_index, "the thawed coordinator to report the new leader", TIMEOUT, |p| {
            p["fleet"]["leader"] == other.as_str()
        })
        .await;
    assert_ne!(progress["state"], "FAILED", "{progress:#}");

    commit_and_compare(&mut fleet, leader_index, &clusters).await;
    let logs = fleet.coordinators[leader_index].logs();
    // Whichever notices first after the thaw: the lease keeper's timer, or the leader's own
    // lease-bound step (which then hands the lease back before the keeper's timer fires).
    let noticed = [
        "lease lost; stopping dependent work",
        "leader lease expired during a step",
        "leader lease lost",
        "lost the leadership",
    ];
    assert!(noticed.iter().any(|line| logs.contains(line)), "the thawed leader did not notice:\n{logs}");
    assert!(!logs.contains("migration committed"), "the deposed leader drove the commit:\n{logs}");
    assert_eq!(fleet.leader().await.as_deref(), Some(other.as_str()), "leadership changed hands again");
    let logs = fleet.coordinators[other_index].logs();
    assert!(logs.contains("migration committed"), "the new leader did not drive the commit:\n{logs}");
}

/// A `{m}/release/{task}` key (what a leader writes to take a task away from its holder) makes
/// the holder hand the task back: the claim goes, the key is deleted with it, the task is
/// claimed again and resumed from its checkpoint; the migration completes correctly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_key_makes_the_holder_hand_a_task_back() {
    let clusters = TestClusters::start().await;
    load_bulk(&clusters, "bulk", "items", 20_000).await;
    let options = FleetOptions {
        worker: json!({"taskSlots": 2, "copyBatchDocuments": 20, "partitionBytes": 1024 * 1024}),
        ..FleetOptions::default()
    };
    let mut fleet = Fleet::start(&clusters, options).await;
    start_and_wait_for_copy(&mut fleet, 0, &clusters).await;
    let copy_tasks = copy_task_ids(&fleet).await;
    let task = fleet
        .wait_for_value("a copy task under way", TIMEOUT, || async {
            let claims = fleet.claims().await;
            let checkpoints = copy_checkpoints(&fleet.checkpoints().await);
            checkpoints
                .iter()
                .find(|(id, (status, copy))| {
                    copy_tasks.contains(id)
                        && claims.contains_key(id)
                        && *status == TaskStatus::Running
                        && copy.documents_copied > 0
                })
                .map(|(id, _)| *id)
        })
        .await;
    let claim_key = fleet.keys.claim(task);
    let first_claim = fleet.store.get(&claim_key).await.expect("read the claim").expect("the task is claimed");
    let release_key = fleet.keys.release(task);
    fleet.store.put(&release_key, Vec::new(), None).await.expect("write the release key");
    fleet.step(&format!("release of task {task} requested"));

    fleet
        .wait_until("the holder hands the task back and deletes the release key", TIMEOUT, || async {
            let claim = fleet.store.get(&claim_key).await.expect("read the claim");
            let release = fleet.store.get(&release_key).await.expect("read the release key");
            release.is_none() && claim.is_none_or(|claim| claim.create_revision != first_claim.create_revision)
        })
        .await;
    fleet.step("handed back");
    fleet
        .wait_until("the task is finished", TIMEOUT, || async {
            fleet.checkpoints().await.get(&task).is_some_and(|c| c.status == TaskStatus::Done)
        })
        .await;
    commit_and_compare(&mut fleet, 0, &clusters).await;
    let copy = copy_checkpoints(&fleet.checkpoints().await).remove(&task).expect("checkpoint").1;
    assert!(
        copy.documents_recopied <= fleet.options.copy_batch_documents(),
        "the task was not resumed from its checkpoint after the hand-back: {copy:?}"
    );
}
