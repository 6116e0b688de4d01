//! `GET /api/v1/progress`: one view of the whole migration and fleet, with mongosync's field
//! names plus ours.
//!
//! [`collect`] reads the store (state document, plan, tasks, checkpoints, claims, instances,
//! live progress, leader — one prefix read each, run concurrently) into a [`Snapshot`];
//! [`aggregate`] turns a snapshot into a [`Progress`] without I/O, in one pass over each list,
//! so thousands of tasks cost a few milliseconds. The reads are not one atomic snapshot: a task
//! finishing between two reads can show for a moment as done in one field and running in
//! another, which is fine for a progress report.
//!
//! mongosync's rules kept here: in IDLE every field except `state` and `canCommit` is null;
//! before the copy starts `collectionCopy` is `{estimatedTotalBytes: 1, estimatedCopiedBytes: 0}`;
//! in PAUSED the lag is null.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use clustersync_common::ids::{CollectionId, InstanceId, TaskId};
use clustersync_common::keys::Keys;
use clustersync_common::model::{
    self, CdcStage, CheckpointDetail, ClaimValue, CollectionKind, InstanceInfo, InstanceProgress, LeaderValue, Phase,
    PlannedCollection, Role, SyncState, SyncStateDoc, TaskCheckpoint, TaskSpec, TaskStatus,
};
use clustersync_common::store::{KeyValue, Store};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::control::{ControlError, commit_readiness};

/// Verification phases reported per side.
pub mod verification_phase {
    /// Verification is off for this migration (`verification.enabled: false`).
    pub const DISABLED: &str = "disabled";
    /// No range has been hashed yet (verification runs during commit).
    pub const NOT_STARTED: &str = "not started";
    /// Ranges are being hashed.
    pub const HASHING: &str = "hashing";
    /// Every range and every collection's metadata matched.
    pub const DONE: &str = "done";
    /// A difference was found; the migration fails.
    pub const FAILED: &str = "failed";
}

/// The `progress` object of the reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// `IDLE`, `RUNNING`, `PAUSED`, `COMMITTING`, `COMMITTED`, `REVERSING` or `FAILED`.
    pub state: SyncState,
    /// Whether `/commit` would be accepted now.
    pub can_commit: bool,
    /// Whether the destination may take writes (true once the commit made it consistent).
    pub can_write: Option<bool>,
    /// mongosync's activity text: "collection copy", "change event application", "waiting for
    /// commit to complete", "commit completed".
    pub info: Option<String>,
    /// Seconds between the newest source write and the last applied event (largest over the
    /// fleet's change streams); null when nothing is being applied yet, or in PAUSED.
    pub lag_time_seconds: Option<u64>,
    /// Change events applied so far, over every change stream.
    pub total_events_applied: Option<u64>,
    /// Bytes of the initial copy.
    pub collection_copy: Option<CollectionCopy>,
    /// Which cluster is the source and which the destination.
    pub direction_mapping: Option<DirectionMapping>,
    /// The instance that answered.
    #[serde(rename = "mongosyncID")]
    pub mongosync_id: Option<String>,
    /// The elected coordinator (leader), once known.
    #[serde(rename = "coordinatorID")]
    pub coordinator_id: Option<String>,
    /// The embedded verifier.
    pub verification: Option<Verification>,
    /// Lifecycle phase: `setup`, `snapshot`, `running`, `paused`, `committing`, `completed`,
    /// `failed`.
    pub phase: Option<Phase>,
    /// Error name when FAILED (e.g. `ChangeStreamHistoryLost`, `VerificationFailed`).
    pub error: Option<String>,
    /// What failed, when FAILED.
    pub error_description: Option<String>,
    /// The namespace concerned, when known.
    pub error_namespace: Option<String>,
    /// The `_id` range concerned, when known.
    pub error_range: Option<String>,
    /// Per-collection copy progress, sorted by namespace.
    pub collections: Option<Vec<CollectionProgress>>,
    /// Change-event application over every source shard.
    pub change_stream: Option<ChangeStreamProgress>,
    /// The processes taking part and what each runs.
    pub fleet: Option<Fleet>,
}

/// `collectionCopy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CollectionCopy {
    /// Estimated size of everything to copy, measured before the copy (1 before it starts).
    pub estimated_total_bytes: u64,
    /// Bytes copied so far (may overshoot the estimate).
    pub estimated_copied_bytes: u64,
}

/// `directionMapping`, mongosync's capitalised keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectionMapping {
    /// `"cluster0: host:port"`.
    #[serde(rename = "Source")]
    pub source: String,
    /// `"cluster1: host:port"`.
    #[serde(rename = "Destination")]
    pub destination: String,
}

/// `verification`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    /// The source side.
    pub source: VerificationSide,
    /// The destination side.
    pub destination: VerificationSide,
}

/// One side of `verification`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerificationSide {
    /// One of [`verification_phase`].
    pub phase: String,
    /// Documents hashed on this side.
    pub hashed_document_count: u64,
    /// Documents expected (the planner's estimate of the source).
    pub estimated_document_count: u64,
    /// Collections whose ranges are all hashed.
    pub scanned_collection_count: u64,
    /// Collections to verify.
    pub total_collection_count: u64,
    /// Always null: verification runs after the change streams drained, there is no lag.
    pub lag_time_seconds: Option<u64>,
}

/// One entry of `collections`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CollectionProgress {
    /// `db.collection`.
    pub namespace: String,
    /// The planner's size estimate.
    pub estimated_total_bytes: u64,
    /// Bytes copied so far.
    pub estimated_copied_bytes: u64,
    /// Documents copied so far.
    pub documents_copied: u64,
    /// Documents copied again after a restart or a takeover (found already on the destination
    /// and skipped): bounded by one batch per range in flight at the interruption.
    pub documents_recopied: u64,
    /// Copy tasks (ranges) the collection was split into.
    pub partitions: u32,
    /// Copy tasks finished.
    pub partitions_done: u32,
}

/// `changeStream`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangeStreamProgress {
    /// The least advanced stage over the source shards (`spooling`, `draining`, `live`).
    pub stage: Option<CdcStage>,
    /// Change-stream tasks (one per source shard).
    pub tasks: u32,
    /// Events applied.
    pub events_applied: u64,
    /// Events written to the spool.
    pub events_spooled: u64,
    /// Updates repaired by re-reading the document from the source.
    pub repairs: u64,
}

/// `fleet`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fleet {
    /// The elected coordinator.
    pub leader: Option<String>,
    /// Every live process, sorted by id.
    pub instances: Vec<FleetInstance>,
}

/// One process of `fleet.instances`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetInstance {
    /// Its id.
    pub id: String,
    /// `coordinator`, `worker`.
    pub roles: Vec<Role>,
    /// Its host name, when registered.
    pub hostname: Option<String>,
    /// Its REST API address, for coordinators.
    pub api_address: Option<String>,
    /// The tasks it holds.
    pub tasks: Vec<FleetTask>,
    /// Its change streams' lag, when it applies events.
    pub lag_time_seconds: Option<u64>,
    /// Events it applied since it started.
    pub events_applied: u64,
}

/// One task held by a process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetTask {
    /// The task id.
    pub id: u64,
    /// `copy`, `changeStream`, `verify`, `verifyMetadata`.
    pub kind: String,
    /// The namespace, for copy and verify tasks.
    pub namespace: Option<String>,
    /// The source shard, for change-stream tasks.
    pub shard: Option<String>,
    /// Documents processed by the current holder.
    pub documents: u64,
    /// Bytes processed by the current holder.
    pub bytes: u64,
}

impl Progress {
    /// The IDLE reply: every field but `state` and `canCommit` is null.
    pub fn idle() -> Progress {
        Progress {
            state: SyncState::Idle,
            can_commit: false,
            can_write: None,
            info: None,
            lag_time_seconds: None,
            total_events_applied: None,
            collection_copy: None,
            direction_mapping: None,
            mongosync_id: None,
            coordinator_id: None,
            verification: None,
            phase: None,
            error: None,
            error_description: None,
            error_namespace: None,
            error_range: None,
            collections: None,
            change_stream: None,
            fleet: None,
        }
    }
}

/// Everything [`aggregate`] needs, decoded from the store.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The state document.
    pub state: SyncStateDoc,
    /// The planned collections.
    pub collections: Vec<PlannedCollection>,
    /// Every task.
    pub tasks: Vec<(TaskId, TaskSpec)>,
    /// Checkpoints by task.
    pub checkpoints: HashMap<TaskId, TaskCheckpoint>,
    /// Claims by task.
    pub claims: HashMap<TaskId, ClaimValue>,
    /// Registered processes.
    pub instances: Vec<InstanceInfo>,
    /// Live progress by process.
    pub progress: HashMap<InstanceId, InstanceProgress>,
    /// The leader.
    pub leader: Option<LeaderValue>,
}

/// Decodes a store value, logging and skipping what does not decode (another version's value
/// must not take `/progress` down).
fn decode_or_skip<T: DeserializeOwned>(kv: &KeyValue) -> Option<T> {
    match model::decode(&kv.key, &kv.value) {
        Ok(value) => Some(value),
        Err(error) => {
            warn!(key = %kv.key, %error, "skipping an undecodable value in progress");
            None
        }
    }
}

/// Reads everything a progress report needs.
///
/// # Errors
///
/// `StoreUnavailable`; `InternalError` if the state document does not decode.
pub async fn read_snapshot(store: &dyn Store, keys: &Keys) -> Result<Snapshot, ControlError> {
    let state = match store.get(&keys.state()).await? {
        Some(kv) => model::decode(&kv.key, &kv.value)?,
        None => SyncStateDoc::default(),
    };
    if state.state == SyncState::Idle {
        return Ok(Snapshot { state, ..Snapshot::default() });
    }
    let prefixes = [
        keys.planned_collections_prefix(),
        keys.tasks_prefix(),
        keys.checkpoints_prefix(),
        keys.claims_prefix(),
        keys.instances_prefix(),
        keys.progress_prefix(),
    ];
    let leader_key = keys.leader();
    let (plan, tasks, checkpoints, claims, instances, progress, leader) = futures::try_join!(
        store.get_prefix(&prefixes[0]),
        store.get_prefix(&prefixes[1]),
        store.get_prefix(&prefixes[2]),
        store.get_prefix(&prefixes[3]),
        store.get_prefix(&prefixes[4]),
        store.get_prefix(&prefixes[5]),
        store.get(&leader_key),
    )?;
    let by_task = |kvs: &[KeyValue]| -> Vec<(TaskId, KeyValue)> {
        kvs.iter().filter_map(|kv| keys.task_id_of(&kv.key).map(|id| (id, kv.clone()))).collect()
    };
    Ok(Snapshot {
        state,
        collections: plan.0.iter().filter_map(decode_or_skip).collect(),
        tasks: by_task(&tasks.0)
            .into_iter()
            .filter_map(|(id, kv)| decode_or_skip(&kv).map(|spec| (id, spec)))
            .collect(),
        checkpoints: by_task(&checkpoints.0)
            .into_iter()
            .filter_map(|(id, kv)| decode_or_skip(&kv).map(|checkpoint| (id, checkpoint)))
            .collect(),
        claims: by_task(&claims.0)
            .into_iter()
            .filter_map(|(id, kv)| decode_or_skip(&kv).map(|claim| (id, claim)))
            .collect(),
        instances: instances.0.iter().filter_map(decode_or_skip).collect(),
        progress: progress
            .0
            .iter()
            .filter_map(|kv| keys.instance_id_of(&kv.key).zip(decode_or_skip::<InstanceProgress>(kv)))
            .collect(),
        leader: leader.as_ref().and_then(decode_or_skip),
    })
}

/// Reads the store and builds the report, answering as `instance`. `hosts` are the host lists
/// of cluster0 and cluster1, used when the state document does not record them.
///
/// # Errors
///
/// See [`read_snapshot`].
pub async fn collect(
    store: &dyn Store,
    keys: &Keys,
    instance: &InstanceId,
    hosts: (String, String),
) -> Result<Progress, ControlError> {
    let snapshot = read_snapshot(store, keys).await?;
    Ok(aggregate(&snapshot, instance, &hosts))
}

fn whole_seconds(seconds: f64) -> u64 {
    if seconds.is_finite() && seconds > 0.0 { seconds.round() as u64 } else { 0 }
}

/// Builds the report from a snapshot (no I/O).
pub fn aggregate(snapshot: &Snapshot, instance: &InstanceId, hosts: &(String, String)) -> Progress {
    let doc = &snapshot.state;
    if doc.state == SyncState::Idle {
        return Progress::idle();
    }
    let options = doc.options.as_ref();

    // Tasks by kind, one pass.
    let mut change_stream_tasks = Vec::new();
    let mut copy_tasks = Vec::new();
    let mut verify_tasks = Vec::new();
    let mut metadata_tasks = Vec::new();
    for (id, spec) in &snapshot.tasks {
        match spec {
            TaskSpec::ChangeStream(_) => change_stream_tasks.push(*id),
            TaskSpec::Copy(task) => copy_tasks.push((*id, task)),
            TaskSpec::Verify(task) => verify_tasks.push((*id, task)),
            TaskSpec::VerifyMetadata(task) => metadata_tasks.push((*id, task)),
        }
    }
    let is_done = |id: &TaskId| snapshot.checkpoints.get(id).is_some_and(|c| c.status == TaskStatus::Done);

    // Live per-task counters (the holder publishes them every second; checkpoints lag a batch).
    let mut live: HashMap<TaskId, (u64, u64)> = HashMap::new();
    for progress in snapshot.progress.values() {
        for task in &progress.tasks {
            live.insert(task.task, (task.documents, task.bytes));
        }
    }

    // Copy progress per collection.
    #[derive(Default)]
    struct CollectionTotals {
        namespace: String,
        estimated_bytes: u64,
        copied_bytes: u64,
        documents: u64,
        recopied: u64,
        partitions: u32,
        partitions_done: u32,
    }
    let mut per_collection: BTreeMap<CollectionId, CollectionTotals> = BTreeMap::new();
    for planned in &snapshot.collections {
        per_collection.insert(
            planned.id,
            CollectionTotals {
                namespace: planned.ns.to_string(),
                estimated_bytes: planned.estimated_bytes,
                partitions: planned.partitions,
                ..Default::default()
            },
        );
    }
    let planned_known = !snapshot.collections.is_empty();
    for (id, task) in &copy_tasks {
        let totals = per_collection
            .entry(task.collection)
            .or_insert_with(|| CollectionTotals { namespace: task.ns.to_string(), ..Default::default() });
        if !planned_known {
            totals.estimated_bytes += task.estimated_bytes;
            totals.partitions += 1;
        }
        let (mut documents, mut bytes) = match snapshot.checkpoints.get(id).map(|c| &c.detail) {
            Some(CheckpointDetail::Copy(copy)) => {
                totals.recopied += copy.documents_recopied;
                (copy.documents_copied, copy.bytes_copied)
            }
            _ => (0, 0),
        };
        if !is_done(id)
            && let Some((live_documents, live_bytes)) = live.get(id)
        {
            documents = documents.max(*live_documents);
            bytes = bytes.max(*live_bytes);
        }
        totals.documents += documents;
        totals.copied_bytes += bytes;
        if is_done(id) {
            totals.partitions_done += 1;
        }
    }
    let collection_copy = if copy_tasks.is_empty() && doc.copy_completed_at_ms.is_none() {
        CollectionCopy { estimated_total_bytes: 1, estimated_copied_bytes: 0 }
    } else {
        CollectionCopy {
            estimated_total_bytes: per_collection.values().map(|c| c.estimated_bytes).sum(),
            estimated_copied_bytes: per_collection.values().map(|c| c.copied_bytes).sum(),
        }
    };
    let mut collections: Vec<CollectionProgress> = per_collection
        .into_values()
        .map(|totals| CollectionProgress {
            namespace: totals.namespace,
            estimated_total_bytes: totals.estimated_bytes,
            estimated_copied_bytes: totals.copied_bytes,
            documents_copied: totals.documents,
            documents_recopied: totals.recopied,
            partitions: totals.partitions,
            partitions_done: totals.partitions_done,
        })
        .collect();
    collections.sort_by(|a, b| a.namespace.cmp(&b.namespace));

    // Change streams.
    let mut change_stream = ChangeStreamProgress {
        stage: None,
        tasks: change_stream_tasks.len() as u32,
        events_applied: 0,
        events_spooled: 0,
        repairs: 0,
    };
    let mut least_stage: Option<CdcStage> = None;
    for id in &change_stream_tasks {
        let stage = match snapshot.checkpoints.get(id).map(|c| &c.detail) {
            Some(CheckpointDetail::ChangeStream(cdc)) => {
                change_stream.events_applied += cdc.events_applied;
                change_stream.events_spooled += cdc.events_spooled;
                change_stream.repairs += cdc.repairs;
                cdc.stage
            }
            _ => CdcStage::Spooling,
        };
        least_stage = Some(least_stage.map_or(stage, |least| stage_min(least, stage)));
    }
    change_stream.stage = least_stage;

    // Lag.
    let fleet_lag = snapshot
        .progress
        .values()
        .filter_map(|p| p.lag_seconds)
        .fold(None, |max: Option<f64>, lag| Some(max.map_or(lag, |max| max.max(lag))));
    let lag_time_seconds = match doc.state {
        SyncState::Running | SyncState::Committing => fleet_lag.map(whole_seconds),
        SyncState::Committed => Some(0),
        _ => None,
    };

    let can_commit = {
        let checkpoints: HashMap<TaskId, TaskCheckpoint> = change_stream_tasks
            .iter()
            .filter_map(|id| snapshot.checkpoints.get(id).map(|c| (*id, c.clone())))
            .collect();
        commit_readiness(doc, &change_stream_tasks, &checkpoints).is_ok()
    };

    let info = match doc.state {
        SyncState::Running => Some(match doc.phase {
            Phase::Running => "change event application",
            _ => "collection copy",
        }),
        SyncState::Committing => Some("waiting for commit to complete"),
        SyncState::Committed => Some("commit completed"),
        _ => None,
    }
    .map(str::to_string);

    let direction_mapping = options.map(|options| {
        let hosts_of = |name: &str, recorded: &Option<String>| {
            let fallback = if name == "cluster0" { &hosts.0 } else { &hosts.1 };
            format!("{name}: {}", recorded.as_deref().unwrap_or(fallback))
        };
        DirectionMapping {
            source: hosts_of(&options.source, &doc.source_hosts),
            destination: hosts_of(&options.destination, &doc.destination_hosts),
        }
    });

    let verification = build_verification(snapshot, &verify_tasks, &metadata_tasks);

    // Fleet.
    let mut fleet_ids: BTreeSet<InstanceId> = snapshot.instances.iter().map(|info| info.id.clone()).collect();
    fleet_ids.extend(snapshot.progress.keys().cloned());
    fleet_ids.extend(snapshot.claims.values().map(|claim| claim.holder.clone()));
    let specs: HashMap<TaskId, &TaskSpec> = snapshot.tasks.iter().map(|(id, spec)| (*id, spec)).collect();
    let mut tasks_by_holder: HashMap<&InstanceId, Vec<FleetTask>> = HashMap::new();
    let mut claimed: Vec<(&TaskId, &ClaimValue)> = snapshot.claims.iter().collect();
    claimed.sort_by_key(|(id, _)| **id);
    for (id, claim) in claimed {
        let spec = specs.get(id);
        let (documents, bytes) = live.get(id).copied().unwrap_or_default();
        tasks_by_holder.entry(&claim.holder).or_default().push(FleetTask {
            id: id.0,
            kind: spec.map_or("unknown", |spec| spec.kind_name()).to_string(),
            namespace: spec.and_then(|spec| match spec {
                TaskSpec::Copy(task) => Some(task.ns.to_string()),
                TaskSpec::Verify(task) => Some(task.ns.to_string()),
                TaskSpec::VerifyMetadata(task) => Some(task.ns.to_string()),
                TaskSpec::ChangeStream(_) => None,
            }),
            shard: spec.and_then(|spec| match spec {
                TaskSpec::ChangeStream(task) => Some(task.shard.to_string()),
                _ => None,
            }),
            documents,
            bytes,
        });
    }
    let infos: HashMap<&InstanceId, &InstanceInfo> = snapshot.instances.iter().map(|info| (&info.id, info)).collect();
    let instances = fleet_ids
        .iter()
        .map(|id| {
            let info = infos.get(id);
            let progress = snapshot.progress.get(id);
            FleetInstance {
                id: id.to_string(),
                roles: info.map(|info| info.roles.clone()).unwrap_or_default(),
                hostname: info.map(|info| info.hostname.clone()),
                api_address: info.and_then(|info| info.api_address.clone()),
                tasks: tasks_by_holder.remove(id).unwrap_or_default(),
                lag_time_seconds: progress.and_then(|p| p.lag_seconds).map(whole_seconds),
                events_applied: progress.map_or(0, |p| p.events_applied),
            }
        })
        .collect();
    let leader = snapshot.leader.as_ref().map(|leader| leader.instance.to_string());

    let failure = doc.failure.as_ref();
    Progress {
        state: doc.state,
        can_commit,
        can_write: Some(doc.can_write),
        info,
        lag_time_seconds,
        total_events_applied: Some(change_stream.events_applied),
        collection_copy: Some(collection_copy),
        direction_mapping,
        mongosync_id: Some(instance.to_string()),
        coordinator_id: leader.clone(),
        verification: Some(verification),
        phase: Some(doc.phase),
        error: failure.map(|f| f.error.clone()),
        error_description: failure.map(|f| f.description.clone()),
        error_namespace: failure.and_then(|f| f.namespace.clone()),
        error_range: failure.and_then(|f| f.range.clone()),
        collections: Some(collections),
        change_stream: Some(change_stream),
        fleet: Some(Fleet { leader, instances }),
    }
}

fn stage_rank(stage: CdcStage) -> u8 {
    match stage {
        CdcStage::Spooling => 0,
        CdcStage::Draining => 1,
        CdcStage::Live => 2,
    }
}

fn stage_min(a: CdcStage, b: CdcStage) -> CdcStage {
    if stage_rank(a) <= stage_rank(b) { a } else { b }
}

fn build_verification(
    snapshot: &Snapshot,
    verify_tasks: &[(TaskId, &clustersync_common::model::VerifyTask)],
    metadata_tasks: &[(TaskId, &clustersync_common::model::VerifyMetadataTask)],
) -> Verification {
    let doc = &snapshot.state;
    let enabled = doc.options.as_ref().is_none_or(|options| options.verification.enabled);
    let planned: Vec<&PlannedCollection> =
        snapshot.collections.iter().filter(|c| c.kind == CollectionKind::Collection).collect();
    let estimated_document_count: u64 = planned.iter().map(|c| c.estimated_documents).sum();

    let mut hashed_source = 0;
    let mut hashed_destination = 0;
    let mut differences = false;
    // Per namespace: (tasks, tasks done).
    let mut namespaces: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    let mut all_done = true;
    for (id, task) in verify_tasks {
        let entry = namespaces.entry(task.ns.to_string()).or_default();
        entry.0 += 1;
        let checkpoint = snapshot.checkpoints.get(id);
        if let Some(CheckpointDetail::Verify(result)) = checkpoint.map(|c| &c.detail) {
            hashed_source += result.source.documents;
            hashed_destination += result.destination.documents;
            differences |= !result.differences.is_empty();
        }
        match checkpoint.map(|c| &c.status) {
            Some(TaskStatus::Done) => entry.1 += 1,
            Some(TaskStatus::Failed { .. }) => {
                differences = true;
                all_done = false;
            }
            _ => all_done = false,
        }
    }
    for (id, _) in metadata_tasks {
        let checkpoint = snapshot.checkpoints.get(id);
        if let Some(CheckpointDetail::VerifyMetadata(result)) = checkpoint.map(|c| &c.detail) {
            differences |= !result.differences.is_empty();
        }
        match checkpoint.map(|c| &c.status) {
            Some(TaskStatus::Done) => {}
            Some(TaskStatus::Failed { .. }) => differences = true,
            _ => all_done = false,
        }
    }
    let verification_failed = doc.failure.as_ref().is_some_and(|failure| failure.error == "VerificationFailed");
    let phase = if !enabled {
        verification_phase::DISABLED
    } else if differences || verification_failed {
        verification_phase::FAILED
    } else if verify_tasks.is_empty() && metadata_tasks.is_empty() {
        verification_phase::NOT_STARTED
    } else if all_done {
        verification_phase::DONE
    } else {
        verification_phase::HASHING
    };
    let total_collection_count = if namespaces.is_empty() { planned.len() as u64 } else { namespaces.len() as u64 };
    let scanned_collection_count = namespaces.values().filter(|(tasks, done)| tasks == done).count() as u64;
    let side = |hashed| VerificationSide {
        phase: phase.to_string(),
        hashed_document_count: hashed,
        estimated_document_count,
        scanned_collection_count,
        total_collection_count,
        lag_time_seconds: None,
    };
    Verification { source: side(hashed_source), destination: side(hashed_destination) }
}

#[cfg(test)]
mod tests {
    use clustersync_common::extjson::ExtDoc;
    use clustersync_common::ids::ShardId;
    use clustersync_common::model::{
        CdcCheckpoint, ChangeStreamTask, CopyCheckpoint, CopyTask, Failure, IdRange, RangeDigest, StartOptions,
        TaskProgress, VerifyCheckpoint, VerifyTask,
    };
    use clustersync_common::namespace::Namespace;
    use serde_json::json;

    use super::*;

    fn holder() -> InstanceId {
        InstanceId::new("w1").unwrap()
    }

    fn running(phase: Phase) -> SyncStateDoc {
        SyncStateDoc {
            state: SyncState::Running,
            phase,
            options: Some(
                serde_json::from_value::<StartOptions>(json!({"source": "cluster1", "destination": "cluster0"}))
                    .unwrap(),
            ),
            source_hosts: Some("h1:27017".into()),
            ..Default::default()
        }
    }

    fn copy_task(collection: u64, ns: &str, bytes: u64) -> TaskSpec {
        TaskSpec::Copy(CopyTask {
            collection: CollectionId(collection),
            ns: Namespace::parse(ns).unwrap(),
            range: IdRange::whole_collection(),
            natural_order: false,
            estimated_documents: bytes / 100,
            estimated_bytes: bytes,
        })
    }

    fn checkpoint(status: TaskStatus, detail: CheckpointDetail) -> TaskCheckpoint {
        TaskCheckpoint { status, detail, holder: holder(), updated_at_ms: 1 }
    }

    fn copied(documents: u64, bytes: u64) -> CheckpointDetail {
        CheckpointDetail::Copy(CopyCheckpoint {
            documents_copied: documents,
            bytes_copied: bytes,
            ..Default::default()
        })
    }

    #[test]
    fn idle_reports_only_state_and_can_commit() {
        let progress = aggregate(&Snapshot::default(), &holder(), &("a".into(), "b".into()));
        let value = serde_json::to_value(&progress).unwrap();
        let object = value.as_object().unwrap();
        assert_eq!(value["state"], "IDLE");
        assert_eq!(value["canCommit"], false);
        for (field, value) in object {
            if field != "state" && field != "canCommit" {
                assert!(value.is_null(), "{field} should be null in IDLE, is {value}");
            }
        }
        for field in [
            "canWrite",
            "info",
            "lagTimeSeconds",
            "collectionCopy",
            "directionMapping",
            "mongosyncID",
            "coordinatorID",
            "verification",
        ] {
            assert!(object.contains_key(field), "{field} missing");
        }
    }

    #[test]
    fn before_the_copy_total_is_one_and_copied_zero() {
        let snapshot = Snapshot { state: running(Phase::Setup), ..Default::default() };
        let progress = aggregate(&snapshot, &holder(), &("c0:1".into(), "c1:1".into()));
        assert_eq!(
            progress.collection_copy,
            Some(CollectionCopy { estimated_total_bytes: 1, estimated_copied_bytes: 0 })
        );
        assert_eq!(progress.info.as_deref(), Some("collection copy"));
        assert!(!progress.can_commit);
        assert_eq!(progress.can_write, Some(false));
        let mapping = progress.direction_mapping.unwrap();
        assert_eq!(mapping.source, "cluster1: h1:27017", "recorded hosts win");
        assert_eq!(mapping.destination, "cluster0: c0:1", "falls back to the configured hosts");
        assert_eq!(progress.mongosync_id.as_deref(), Some("w1"));
        assert_eq!(progress.verification.unwrap().source.phase, "not started");
    }

    #[test]
    fn copy_progress_adds_up_per_collection_and_overall() {
        let snapshot = Snapshot {
            state: running(Phase::Snapshot),
            tasks: vec![
                (TaskId(1000), copy_task(1, "db.a", 1000)),
                (TaskId(1001), copy_task(1, "db.a", 1000)),
                (TaskId(1002), copy_task(2, "db.b", 500)),
            ],
            checkpoints: HashMap::from([
                (TaskId(1000), checkpoint(TaskStatus::Done, copied(10, 1000))),
                (TaskId(1001), checkpoint(TaskStatus::Running, copied(3, 300))),
            ]),
            progress: HashMap::from([(
                holder(),
                InstanceProgress {
                    tasks: vec![
                        TaskProgress { task: TaskId(1001), kind: "copy".into(), ns: None, documents: 4, bytes: 400 },
                        TaskProgress { task: TaskId(1002), kind: "copy".into(), ns: None, documents: 1, bytes: 100 },
                    ],
                    ..Default::default()
                },
            )]),
            claims: HashMap::from([(TaskId(1001), ClaimValue { holder: holder(), claimed_at_ms: 1 })]),
            ..Default::default()
        };
        let progress = aggregate(&snapshot, &holder(), &("a".into(), "b".into()));
        assert_eq!(
            progress.collection_copy,
            Some(CollectionCopy { estimated_total_bytes: 2500, estimated_copied_bytes: 1500 })
        );
        let collections = progress.collections.unwrap();
        assert_eq!(collections.len(), 2);
        assert_eq!(collections[0].namespace, "db.a");
        assert_eq!((collections[0].partitions, collections[0].partitions_done), (2, 1));
        assert_eq!(collections[0].documents_copied, 14, "live counters beat an older checkpoint");
        assert_eq!(collections[1].estimated_copied_bytes, 100);
        let fleet = progress.fleet.unwrap();
        assert_eq!(fleet.instances.len(), 1);
        assert_eq!(fleet.instances[0].tasks[0].id, 1001);
        assert_eq!(fleet.instances[0].tasks[0].namespace.as_deref(), Some("db.a"));
    }

    #[test]
    fn planned_collections_give_the_estimates() {
        let snapshot = Snapshot {
            state: running(Phase::Snapshot),
            collections: vec![PlannedCollection {
                id: CollectionId(1),
                ns: Namespace::parse("db.a").unwrap(),
                kind: CollectionKind::Collection,
                options: ExtDoc::default(),
                source_uuid: None,
                estimated_documents: 100,
                estimated_bytes: 7000,
                partitions: 3,
            }],
            tasks: vec![(TaskId(1000), copy_task(1, "db.a", 1))],
            ..Default::default()
        };
        let progress = aggregate(&snapshot, &holder(), &("a".into(), "b".into()));
        assert_eq!(progress.collection_copy.unwrap().estimated_total_bytes, 7000);
        let collection = &progress.collections.unwrap()[0];
        assert_eq!(collection.partitions, 3);
        assert_eq!(progress.verification.unwrap().destination.estimated_document_count, 100);
    }

    #[test]
    fn change_streams_report_the_least_advanced_stage_and_can_commit_when_live() {
        let cdc = |stage, applied| {
            checkpoint(
                TaskStatus::Running,
                CheckpointDetail::ChangeStream(CdcCheckpoint {
                    stage,
                    events_applied: applied,
                    repairs: 1,
                    ..Default::default()
                }),
            )
        };
        let stream = |shard: &str| {
            TaskSpec::ChangeStream(ChangeStreamTask {
                shard: ShardId::new(shard).unwrap(),
                start_at: Default::default(),
            })
        };
        let mut snapshot = Snapshot {
            state: SyncStateDoc { copy_completed_at_ms: Some(1), ..running(Phase::Running) },
            tasks: vec![(TaskId(1), stream("a")), (TaskId(2), stream("b"))],
            checkpoints: HashMap::from([(TaskId(1), cdc(CdcStage::Live, 5)), (TaskId(2), cdc(CdcStage::Draining, 7))]),
            progress: HashMap::from([
                (holder(), InstanceProgress { lag_seconds: Some(2.4), ..Default::default() }),
                (InstanceId::new("w2").unwrap(), InstanceProgress { lag_seconds: Some(6.6), ..Default::default() }),
            ]),
            leader: Some(LeaderValue { instance: InstanceId::new("c1").unwrap(), since_ms: 1 }),
            ..Default::default()
        };
        let progress = aggregate(&snapshot, &holder(), &("a".into(), "b".into()));
        let change_stream = progress.change_stream.unwrap();
        assert_eq!(change_stream.stage, Some(CdcStage::Draining));
        assert_eq!((change_stream.events_applied, change_stream.repairs, change_stream.tasks), (12, 2, 2));
        assert_eq!(progress.total_events_applied, Some(12));
        assert_eq!(progress.lag_time_seconds, Some(7));
        assert_eq!(progress.info.as_deref(), Some("change event application"));
        assert_eq!(progress.coordinator_id.as_deref(), Some("c1"));
        assert!(!progress.can_commit);

        snapshot.checkpoints.insert(TaskId(2), cdc(CdcStage::Live, 7));
        let progress = aggregate(&snapshot, &holder(), &("a".into(), "b".into()));
        assert!(progress.can_commit);
        assert_eq!(progress.change_stream.unwrap().stage, Some(CdcStage::Live));

        snapshot.state.state = SyncState::Paused;
        snapshot.state.phase = Phase::Paused;
        let progress = aggregate(&snapshot, &holder(), &("a".into(), "b".into()));
        assert_eq!(progress.lag_time_seconds, None, "no lag in PAUSED");
        assert!(!progress.can_commit);
        assert_eq!(progress.info, None);
    }

    #[test]
    fn verification_and_failure_are_reported() {
        let verify = |ns: &str| {
            TaskSpec::Verify(VerifyTask { ns: Namespace::parse(ns).unwrap(), range: IdRange::whole_collection() })
        };
        let result = |documents, differences: Vec<String>| {
            CheckpointDetail::Verify(VerifyCheckpoint {
                source: RangeDigest { documents, bytes: 1, hash: "x".into() },
                destination: RangeDigest { documents: documents - 1, bytes: 1, hash: "y".into() },
                differences,
            })
        };
        let mut snapshot = Snapshot {
            state: SyncStateDoc {
                state: SyncState::Committing,
                phase: Phase::Committing,
                ..running(Phase::Committing)
            },
            tasks: vec![(TaskId(1_000_000_000), verify("db.a")), (TaskId(1_000_000_001), verify("db.b"))],
            checkpoints: HashMap::from([(TaskId(1_000_000_000), checkpoint(TaskStatus::Done, result(10, vec![])))]),
            ..Default::default()
        };
        let progress = aggregate(&snapshot, &holder(), &("a".into(), "b".into()));
        let verification = progress.verification.unwrap();
        assert_eq!(verification.source.phase, "hashing");
        assert_eq!(verification.source.hashed_document_count, 10);
        assert_eq!(verification.destination.hashed_document_count, 9);
        assert_eq!((verification.source.scanned_collection_count, verification.source.total_collection_count), (1, 2));
        assert_eq!(progress.info.as_deref(), Some("waiting for commit to complete"));

        snapshot.checkpoints.insert(
            TaskId(1_000_000_001),
            checkpoint(TaskStatus::Done, result(5, vec!["_id 3: missing on destination".into()])),
        );
        snapshot.state.state = SyncState::Failed;
        snapshot.state.phase = Phase::Failed;
        snapshot.state.failure = Some(Failure {
            error: "VerificationFailed".into(),
            description: "documents differ".into(),
            namespace: Some("db.b".into()),
            range: Some("all _id values".into()),
            at_ms: 1,
        });
        let progress = aggregate(&snapshot, &holder(), &("a".into(), "b".into()));
        assert_eq!(progress.verification.unwrap().source.phase, "failed");
        assert_eq!(progress.error.as_deref(), Some("VerificationFailed"));
        assert_eq!(progress.error_namespace.as_deref(), Some("db.b"));
        assert_eq!(progress.error_range.as_deref(), Some("all _id values"));
        assert_eq!(progress.phase, Some(Phase::Failed));
    }

    #[test]
    fn disabled_verification_says_so() {
        let mut state = running(Phase::Snapshot);
        state.options.as_mut().unwrap().verification.enabled = false;
        let progress = aggregate(&Snapshot { state, ..Default::default() }, &holder(), &("a".into(), "b".into()));
        assert_eq!(progress.verification.unwrap().destination.phase, "disabled");
    }
}
