//! The elected coordinator: it drives a migration through its lifecycle.
//!
//! Exactly one coordinator leads at a time (an election over the coordination store). The leader
//! does the work that must happen once: setup (write blocking, the change-stream start point,
//! planning and creating the destination collections), noticing that the copy is complete,
//! and the commit (source blocking, the commit marker, index restore, verification, unblocking).
//! Everything else — copying, applying change events, verifying ranges — is done by workers
//! through claimable tasks.
//!
//! Each step is idempotent and its completion is recorded in the state document with a
//! compare-and-swap that also checks that we still hold the leader key (its create revision is
//! our term's fencing token). A deposed leader's writes therefore fail, and a new leader simply
//! resumes at the recorded step: redoing a step whose effect happened but whose record did not
//! is harmless.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use bson::{Document, doc};
use clustersync_common::claim::FencingToken;
use clustersync_common::election::Election;
use clustersync_common::extjson::{ExtDoc, OpTime};
use clustersync_common::ids::{CollectionId, InstanceId, MigrationId, ShardId, TaskId};
use clustersync_common::keys::Keys;
use clustersync_common::lease::LeaseHandle;
use clustersync_common::model::{
    self, ChangeStreamTask, CheckpointDetail, CollectionKind, CommitStep, CopyTask, Failure, LeaderValue, Phase,
    PlannedCollection, SetupStep, SyncState, SyncStateDoc, TaskCheckpoint, TaskSpec, TaskStatus, VerifyMetadataTask,
    VerifyTask,
};
use clustersync_common::namespace::{INTERNAL_DATABASE, Namespace, NamespaceFilter};
use clustersync_common::state_watch::{self, Versioned};
use clustersync_common::store::{Compare, CompareOp, Store, Txn, TxnOp, TxnResponse};
use clustersync_common::time_constants;
use clustersync_worker::error::WorkerError;
use clustersync_worker::mongo::Clusters;
use clustersync_worker::runtime::{ClusterUris, LeaseBound};
use clustersync_worker::settings::WorkerSettings;
use clustersync_worker::{partition, schema};
use futures::TryStreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// First id of copy tasks; change-stream tasks take the ids below it (one per source shard).
pub const FIRST_COPY_TASK: u64 = 1_000;
/// First id of verification tasks; copy tasks take the ids below it.
pub const FIRST_VERIFY_TASK: u64 = 1_000_000_000;

/// Errors of the leader loop.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The store failed; retry.
    #[error("coordination store: {0}")]
    Store(String),
    /// Someone else changed the state document (an API call, another leader): re-read and redo.
    #[error("state changed concurrently")]
    Conflict,
    /// A step failed in a way that may pass on retry (network, election on a cluster).
    #[error("{0}")]
    Transient(String),
    /// The migration cannot be correct: it goes FAILED with this.
    #[error("{name}: {description}")]
    Fatal { name: String, description: String, namespace: Option<String>, range: Option<String> },
}

impl LeaderError {
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Self::Fatal { .. })
    }

    fn fatal(name: &str, description: impl Into<String>) -> Self {
        Self::Fatal { name: name.into(), description: description.into(), namespace: None, range: None }
    }
}

impl From<clustersync_common::store::StoreError> for LeaderError {
    fn from(e: clustersync_common::store::StoreError) -> Self {
        Self::Store(e.to_string())
    }
}

impl From<WorkerError> for LeaderError {
    fn from(e: WorkerError) -> Self {
        match e {
            WorkerError::Fatal { name, description } => Self::Fatal { name, description, namespace: None, range: None },
            other if other.is_retryable() => Self::Transient(other.to_string()),
            other => Self::fatal("SetupFailed", other.to_string()),
        }
    }
}

/// The leader of one migration.
pub struct Leader {
    pub store: Arc<dyn Store>,
    pub keys: Keys,
    pub migration: MigrationId,
    pub instance: InstanceId,
    pub uris: ClusterUris,
    pub settings: Arc<WorkerSettings>,
}

struct Term<'a> {
    leader: &'a Leader,
    token: FencingToken,
    clusters: Option<Arc<Clusters>>,
    /// Consecutive transient failures of the current step (for logging only).
    transient_failures: u32,
    /// `mod_revision` of the last state document this term wrote. The state watch delivers our
    /// own writes a little later (etcd's watch lags the txn reply); until it has, the watched
    /// document is older than what we know and must not be acted upon.
    written_revision: AtomicI64,
}

impl Leader {
    /// Campaigns, then leads until the lease is lost or `shutdown` fires. Returns `Ok` on
    /// shutdown; an error when the lease is lost (the caller restarts with a new lease).
    pub async fn run(&self, lease: LeaseHandle, shutdown: CancellationToken) -> Result<(), LeaderError> {
        let value = model::encode(&LeaderValue { instance: self.instance.clone(), since_ms: model::now_ms() });
        let election = Election::new(self.store.clone(), self.keys.leader(), value, lease.clone());
        let lost = lease.cancellation_token();
        let token = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = lost.cancelled() => return Err(LeaderError::Store("lease lost before winning the election".into())),
            result = election.campaign() => result.map_err(|e| LeaderError::Store(e.to_string()))?,
        };
        info!(instance = %self.instance, %token, "leading the migration");
        let stop = CancellationToken::new();
        let mut state_rx =
            state_watch::watch_value::<SyncStateDoc>(self.store.clone(), self.keys.state(), stop.clone()).await;
        let mut term =
            Term { leader: self, token, clusters: None, transient_failures: 0, written_revision: AtomicI64::new(0) };
        let mut tick = tokio::time::interval(time_constants::LEADER_TICK);
        let result = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                _ = lost.cancelled() => break Err(LeaderError::Store("leader lease lost".into())),
                changed = state_rx.changed() => if changed.is_err() { break Ok(()) },
                _ = tick.tick() => {}
            }
            if !election.is_leader() {
                break Err(LeaderError::Store("lost the leadership".into()));
            }
            let current = state_rx.borrow_and_update().clone();
            if current.mod_revision < term.written_revision.load(Ordering::SeqCst) {
                // Our last write has not reached the watch yet. Driving from the older document
                // would redo the step we just recorded as done — and a step is idempotent only
                // against the state it was computed from: planning twice samples new range
                // bounds and rewrites copy tasks that workers already claimed, so ranges would
                // be lost. The watch's next event (or re-read) wakes us again.
                continue;
            }
            // A step's MongoDB side effects (write blocking, the commit marker, index builds)
            // are not fenced like its store writes: never let a step run on past the lease
            // deadline, e.g. in a process thawed after the leadership passed to another.
            // Shutdown interrupts a step too: a step can retry MongoDB reads for minutes (planning
            // against a busy source), and every step is idempotent, so the next leader redoes it.
            let step = tokio::select! {
                step = LeaseBound::new(lease.clone(), term.drive(&current)) => step,
                _ = shutdown.cancelled() => break Ok(()),
            };
            let Some(outcome) = step else {
                break Err(LeaderError::Store("leader lease expired during a step".into()));
            };
            match outcome {
                Ok(()) => term.transient_failures = 0,
                Err(LeaderError::Conflict) => {
                    debug!(
                        revision = current.mod_revision,
                        "the state moved on (or the leadership) while a step ran; redoing it from the new state"
                    );
                }
                Err(LeaderError::Fatal { name, description, namespace, range }) => {
                    warn!(error = %name, %description, "migration failed");
                    let failure = Failure { error: name, description, namespace, range, at_ms: model::now_ms() };
                    if let Err(error) = term.fail(&current, failure).await {
                        warn!(%error, "could not record the failure; will retry");
                    }
                }
                Err(error) => {
                    term.transient_failures += 1;
                    warn!(%error, attempt = term.transient_failures, "leader step failed; retrying");
                }
            }
        };
        stop.cancel();
        if result.is_ok() {
            let _ = election.resign().await;
        }
        result
    }
}

impl Term<'_> {
    fn keys(&self) -> &Keys {
        &self.leader.keys
    }

    fn store(&self) -> &dyn Store {
        self.leader.store.as_ref()
    }

    /// Writes the state document, only if it is unchanged since `current` and we still lead.
    async fn save_state(&self, current: &Versioned<SyncStateDoc>, mut next: SyncStateDoc) -> Result<(), LeaderError> {
        self.save_state_with(current, &mut next, Vec::new()).await
    }

    async fn save_state_with(
        &self,
        current: &Versioned<SyncStateDoc>,
        next: &mut SyncStateDoc,
        mut extra: Vec<TxnOp>,
    ) -> Result<(), LeaderError> {
        next.updated_at_ms = model::now_ms();
        let state_key = self.keys().state();
        extra.push(TxnOp::put(state_key.clone(), model::encode(next), None));
        let txn = Txn::new()
            .when([
                Compare::create_revision(self.keys().leader(), CompareOp::Equal, self.token.0),
                Compare::mod_revision(state_key, CompareOp::Equal, current.mod_revision),
            ])
            .and_then(extra)
            .or_else(self.conflict_probe());
        let response = self.store().txn(txn).await?;
        if !response.succeeded {
            return Err(self.conflict(current, &response));
        }
        // The txn wrote the state key, so its revision is the document's new mod_revision.
        self.written_revision.fetch_max(response.revision, Ordering::SeqCst);
        Ok(())
    }

    /// Writes plan entries and tasks, in chunks the store accepts, only while we lead and the
    /// state document is still the one the step was computed from (`current`).
    ///
    /// The state guard is what makes planning safe to retry: copy tasks become claimable the
    /// moment the state says `Planned`, so a plan computed from an older document (a stale
    /// read, an API call racing the leader) must never overwrite them. The chunks themselves
    /// do not touch the state key, so the guard holds for every chunk of one step.
    async fn put_fenced(&self, current: &Versioned<SyncStateDoc>, ops: Vec<TxnOp>) -> Result<(), LeaderError> {
        // Two slots of every txn go to the compares' companion budget.
        for chunk in ops.chunks(clustersync_common::store::MAX_TXN_OPS - 2) {
            let txn = Txn::new()
                .when([
                    Compare::create_revision(self.keys().leader(), CompareOp::Equal, self.token.0),
                    Compare::mod_revision(self.keys().state(), CompareOp::Equal, current.mod_revision),
                ])
                .and_then(chunk.to_vec())
                .or_else(self.conflict_probe());
            let response = self.store().txn(txn).await?;
            if !response.succeeded {
                // Lost the leadership (the loop notices) or the state moved on: re-read, redo.
                return Err(self.conflict(current, &response));
            }
        }
        Ok(())
    }

    /// The failure branch of a fenced txn: reads the leader key and the state document, so a
    /// conflict can say which of the two moved.
    fn conflict_probe(&self) -> [TxnOp; 2] {
        [TxnOp::get(self.keys().leader()), TxnOp::get(self.keys().state())]
    }

    /// Logs what a fenced txn found instead of what the step was computed from, and returns
    /// [`LeaderError::Conflict`]. Why at info: a conflict makes the leader redo a step (planning
    /// again, for one), which costs time on big clusters; the log says who moved the state.
    fn conflict(&self, current: &Versioned<SyncStateDoc>, response: &TxnResponse) -> LeaderError {
        let leader = response.kvs(0).and_then(|kvs| kvs.first());
        let state = response.kvs(1).and_then(|kvs| kvs.first());
        let found: Option<SyncStateDoc> = state.and_then(|kv| model::decode(&kv.key, &kv.value).ok());
        info!(
            expected_token = %self.token,
            leader_create_revision = leader.map(|kv| kv.create_revision),
            expected_state_revision = current.mod_revision,
            state_revision = state.map(|kv| kv.mod_revision),
            expected = ?(current.value.state, current.value.phase, current.value.setup_step),
            found = ?found.as_ref().map(|doc| (doc.state, doc.phase, doc.setup_step)),
            "fenced write refused: the leadership or the state document moved since the step read it"
        );
        LeaderError::Conflict
    }

    async fn fail(&self, current: &Versioned<SyncStateDoc>, failure: Failure) -> Result<(), LeaderError> {
        if matches!(current.value.state, SyncState::Failed | SyncState::Committed | SyncState::Idle) {
            return Ok(());
        }
        let mut next = current.value.clone();
        next.state = SyncState::Failed;
        next.phase = Phase::Failed;
        next.failure = Some(failure);
        self.save_state(current, next).await
    }

    async fn clusters(&mut self, state: &SyncStateDoc) -> Result<Arc<Clusters>, LeaderError> {
        if let Some(clusters) = &self.clusters {
            return Ok(clusters.clone());
        }
        let options = state.options.as_ref().ok_or_else(|| LeaderError::fatal("InvalidState", "no start options"))?;
        let clusters = self
            .leader
            .uris
            .connect(options, &self.leader.settings)
            .await
            .map_err(|e| LeaderError::fatal("InvalidOption", e))?;
        let clusters = Arc::new(clusters);
        self.clusters = Some(clusters.clone());
        Ok(clusters)
    }

    /// One step of the lifecycle for the current state.
    async fn drive(&mut self, current: &Versioned<SyncStateDoc>) -> Result<(), LeaderError> {
        let state = &current.value;
        match state.state {
            SyncState::Running if state.setup_step < SetupStep::Planned => self.setup(current).await,
            SyncState::Running => {
                self.check_task_failures().await?;
                if state.copy_completed_at_ms.is_none() { self.watch_copy(current).await } else { Ok(()) }
            }
            SyncState::Committing => {
                self.check_task_failures().await?;
                self.commit(current).await
            }
            _ => Ok(()),
        }
    }

    // ------------------------------------------------------------------------------------------
    // setup
    // ------------------------------------------------------------------------------------------

    async fn setup(&mut self, current: &Versioned<SyncStateDoc>) -> Result<(), LeaderError> {
        let state = &current.value;
        let options = state.options.clone().ok_or_else(|| LeaderError::fatal("InvalidState", "no start options"))?;
        let clusters = self.clusters(state).await?;
        match state.setup_step {
            SetupStep::Start => {
                let mut next = state.clone();
                next.source_hosts = Some(clusters.source_hosts.clone());
                next.destination_hosts = Some(clusters.destination_hosts.clone());
                if options.enable_user_write_blocking.blocks_destination() {
                    schema::set_user_write_blocking(&clusters.destination, true).await?;
                    next.destination_writes_blocked = true;
                    info!("destination user writes blocked");
                }
                next.setup_step = SetupStep::WritesBlocked;
                self.save_state(current, next).await
            }
            SetupStep::WritesBlocked => {
                // The start point comes first: every change after it is read by the change
                // stream, and the copy that follows only reads data at least this new.
                let (set_name, start) = source_start_point(&clusters).await?;
                let shard = ShardId::new(set_name.clone())
                    .map_err(|e| LeaderError::fatal("UnsupportedTopology", format!("source replica set name: {e}")))?;
                let task = TaskSpec::ChangeStream(ChangeStreamTask { shard: shard.clone(), start_at: start });
                let mut next = state.clone();
                next.change_stream_start = Some(start);
                next.source_shards = vec![shard];
                next.setup_step = SetupStep::StreamStartRecorded;
                info!(start = %start, replica_set = %set_name, "change stream start point recorded");
                let put_task = TaskOp::put_task(self.keys(), TaskId(1), &task);
                self.save_state_with(current, &mut next, vec![put_task]).await
            }
            SetupStep::StreamStartRecorded => self.plan(current, &options, &clusters).await,
            SetupStep::Planned => Ok(()),
        }
    }

    async fn plan(
        &mut self,
        current: &Versioned<SyncStateDoc>,
        options: &model::StartOptions,
        clusters: &Clusters,
    ) -> Result<(), LeaderError> {
        let filter = NamespaceFilter::new(&options.include_namespaces, &options.exclude_namespaces)
            .map_err(|e| LeaderError::fatal("InvalidNamespaceFilter", e))?;
        // A previous leader may have died half-way through planning: its copy tasks were never
        // claimable (workers wait for `Planned`), so they are simply replaced.
        self.clear_plan(current).await?;
        let namespaces = list_source_namespaces(clusters, &filter).await?;
        info!(collections = namespaces.len(), "planning the copy");

        let mut planned = Vec::new();
        let mut copy_tasks: Vec<CopyTask> = Vec::new();
        for (index, (ns, info)) in namespaces.into_iter().enumerate() {
            let id = CollectionId(index as u64 + 1);
            let kind = match info.get_str("type").unwrap_or("collection") {
                "view" => CollectionKind::View,
                "timeseries" => CollectionKind::Timeseries,
                _ => CollectionKind::Collection,
            };
            let collection_options = info.get_document("options").cloned().unwrap_or_default();
            let source_uuid = info.get_document("info").ok().and_then(|i| i.get("uuid")).and_then(|u| match u {
                bson::Bson::Binary(b) => Some(b.bytes.iter().map(|byte| format!("{byte:02x}")).collect()),
                _ => None,
            });
            if kind != CollectionKind::View && !schema::destination_namespace_is_empty(clusters, &ns).await? {
                return Err(LeaderError::Fatal {
                    name: "DestinationNotEmpty".into(),
                    description: format!(
                        "destination collection {ns} already holds documents; the destination must be empty"
                    ),
                    namespace: Some(ns.to_string()),
                    range: None,
                });
            }
            if !options.verification.enabled
                || options.build_indexes.builds_secondary_indexes()
                || kind == CollectionKind::View
            {
                // TTL + never + verifier is only a problem in the combination below.
            } else if has_ttl_index(clusters, &ns).await? {
                return Err(LeaderError::Fatal {
                    name: "InvalidOption".into(),
                    description: format!(
                        "collection {ns} has a TTL index: with buildIndexes \"never\" the verifier would see \
                         documents expire on one side only; start with verification disabled"
                    ),
                    namespace: Some(ns.to_string()),
                    range: None,
                });
            }
            let (documents, bytes, partitions) = if kind == CollectionKind::View {
                let entry = PlannedCollection {
                    id,
                    ns: ns.clone(),
                    kind,
                    options: ExtDoc(collection_options),
                    source_uuid,
                    estimated_documents: 0,
                    estimated_bytes: 0,
                    partitions: 0,
                };
                schema::create_collection_for_sync(clusters, &entry).await?;
                planned.push(entry);
                continue;
            } else {
                let stats = partition::collection_stats(clusters, &ns).await?;
                // Capped collections are copied in insertion order: that order is their meaning.
                // (Collated collections need nothing special: the planner keeps their string
                // and object brackets whole, so `_id` order stays correct and resumable.)
                let natural_order = stats.capped;
                let ranges =
                    partition::plan_ranges_estimated(clusters, &ns, &stats, &self.leader.settings, natural_order)
                        .await?;
                for planned_range in &ranges {
                    copy_tasks.push(CopyTask {
                        collection: id,
                        ns: ns.clone(),
                        range: planned_range.range.clone(),
                        natural_order,
                        estimated_documents: planned_range.estimated_documents,
                        estimated_bytes: planned_range.estimated_bytes,
                    });
                }
                (stats.documents, stats.bytes, ranges.len() as u32)
            };
            let entry = PlannedCollection {
                id,
                ns: ns.clone(),
                kind,
                options: ExtDoc(collection_options),
                source_uuid,
                estimated_documents: documents,
                estimated_bytes: bytes,
                partitions,
            };
            schema::create_collection_for_sync(clusters, &entry).await?;
            if !options.build_indexes.builds_after_copy() {
                schema::build_indexes_for_sync(clusters, &ns, options.build_indexes).await?;
            }
            planned.push(entry);
        }

        // The biggest ranges first, so the longest copies start early (no long tail).
        copy_tasks.sort_by_key(|task| std::cmp::Reverse(task.estimated_bytes));
        let mut ops: Vec<TxnOp> = planned
            .iter()
            .map(|entry| TxnOp::put(self.keys().planned_collection(entry.id), model::encode(entry), None))
            .collect();
        for (offset, task) in copy_tasks.into_iter().enumerate() {
            ops.push(TaskOp::put_task(self.keys(), TaskId(FIRST_COPY_TASK + offset as u64), &TaskSpec::Copy(task)));
        }
        let task_count = ops.len() - planned.len();
        self.put_fenced(current, ops).await?;
        let mut next = current.value.clone();
        next.setup_step = SetupStep::Planned;
        next.phase = Phase::Snapshot;
        info!(collections = planned.len(), copy_tasks = task_count, "plan written; copy starting");
        self.save_state(current, next).await
    }

    async fn clear_plan(&self, current: &Versioned<SyncStateDoc>) -> Result<(), LeaderError> {
        let (tasks, _) = self.store().get_prefix(&self.keys().tasks_prefix()).await?;
        let mut ops: Vec<TxnOp> = tasks
            .iter()
            .filter(|kv| self.keys().task_id_of(&kv.key).is_some_and(|id| id.0 >= FIRST_COPY_TASK))
            .map(|kv| TxnOp::delete(kv.key.clone()))
            .collect();
        ops.push(TxnOp::delete_prefix(self.keys().planned_collections_prefix()));
        self.put_fenced(current, ops).await
    }

    // ------------------------------------------------------------------------------------------
    // snapshot → CDC
    // ------------------------------------------------------------------------------------------

    /// Reads every task with its checkpoint.
    async fn tasks_with_checkpoints(&self) -> Result<Vec<(TaskId, TaskSpec, Option<TaskCheckpoint>)>, LeaderError> {
        let (tasks, _) = self.store().get_prefix(&self.keys().tasks_prefix()).await?;
        let (checkpoints, _) = self.store().get_prefix(&self.keys().checkpoints_prefix()).await?;
        let mut by_id: HashMap<TaskId, TaskCheckpoint> = HashMap::new();
        for kv in checkpoints {
            if let (Some(id), Ok(checkpoint)) =
                (self.keys().task_id_of(&kv.key), model::decode::<TaskCheckpoint>(&kv.key, &kv.value))
            {
                by_id.insert(id, checkpoint);
            }
        }
        let mut out = Vec::new();
        for kv in tasks {
            let Some(id) = self.keys().task_id_of(&kv.key) else { continue };
            let spec: TaskSpec = model::decode(&kv.key, &kv.value).map_err(|e| LeaderError::Store(e.to_string()))?;
            out.push((id, spec, by_id.remove(&id)));
        }
        Ok(out)
    }

    async fn check_task_failures(&self) -> Result<(), LeaderError> {
        for (id, spec, checkpoint) in self.tasks_with_checkpoints().await? {
            if let Some(TaskCheckpoint { status: TaskStatus::Failed { error, description }, .. }) = checkpoint {
                let (namespace, range) = match &spec {
                    TaskSpec::Copy(copy) => (Some(copy.ns.to_string()), Some(copy.range.to_string())),
                    TaskSpec::Verify(verify) => (Some(verify.ns.to_string()), Some(verify.range.to_string())),
                    TaskSpec::VerifyMetadata(verify) => (Some(verify.ns.to_string()), None),
                    TaskSpec::ChangeStream(_) => (None, None),
                };
                return Err(LeaderError::Fatal {
                    name: error,
                    description: format!("task {id} ({}): {description}", spec.kind_name()),
                    namespace,
                    range,
                });
            }
        }
        Ok(())
    }

    async fn watch_copy(&mut self, current: &Versioned<SyncStateDoc>) -> Result<(), LeaderError> {
        let tasks = self.tasks_with_checkpoints().await?;
        let all_done = tasks
            .iter()
            .filter(|(_, spec, _)| matches!(spec, TaskSpec::Copy(_)))
            .all(|(_, _, checkpoint)| checkpoint.as_ref().is_some_and(|c| c.status == TaskStatus::Done));
        if !all_done {
            return Ok(());
        }
        let state = &current.value;
        let clusters = self.clusters(state).await?;
        let options = state.options.clone().ok_or_else(|| LeaderError::fatal("InvalidState", "no start options"))?;
        let mut next = state.clone();
        if options.build_indexes.builds_after_copy() && !state.after_copy_indexes_built {
            let (planned, _) = self.store().get_prefix(&self.keys().planned_collections_prefix()).await?;
            for kv in planned {
                let entry: PlannedCollection =
                    model::decode(&kv.key, &kv.value).map_err(|e| LeaderError::Store(e.to_string()))?;
                if entry.kind == CollectionKind::View {
                    continue;
                }
                // The collection may have been dropped or renamed since: indexes of the current
                // source collections are built; change events take care of the rest.
                schema::build_indexes_for_sync(&clusters, &entry.ns, options.build_indexes).await?;
            }
            next.after_copy_indexes_built = true;
            info!("indexes built after the copy");
        }
        let (_, copy_end) = source_start_point(&clusters).await?;
        next.copy_completed_at_ms = Some(model::now_ms());
        next.copy_completed_time = Some(copy_end);
        next.phase = Phase::Running;
        info!(copy_completed_time = %copy_end, "collection copy complete; applying change events");
        self.save_state(current, next).await
    }

    // ------------------------------------------------------------------------------------------
    // commit
    // ------------------------------------------------------------------------------------------

    async fn commit(&mut self, current: &Versioned<SyncStateDoc>) -> Result<(), LeaderError> {
        let state = &current.value;
        let options = state.options.clone().ok_or_else(|| LeaderError::fatal("InvalidState", "no start options"))?;
        let clusters = self.clusters(state).await?;
        let Some(commit) = state.commit.clone() else {
            return Err(LeaderError::fatal("InvalidState", "committing without commit progress"));
        };
        let mut next = state.clone();
        let mut next_commit = commit.clone();
        match commit.step {
            CommitStep::Requested => {
                if options.enable_user_write_blocking.blocks_source() {
                    schema::set_user_write_blocking(&clusters.source, true).await?;
                    next.source_writes_blocked = true;
                    info!("source user writes blocked for the commit");
                }
                next_commit.step = CommitStep::SourceBlocked;
            }
            CommitStep::SourceBlocked => {
                // The marker is an ordinary insert on the source: once a change stream has applied
                // it, it has applied every write that came before the commit.
                let marker_time = write_commit_marker(&clusters, &self.leader.migration, &commit.marker_id).await?;
                next_commit.marker_time = Some(marker_time);
                next_commit.step = CommitStep::MarkerWritten;
                info!(marker = %commit.marker_id, time = %marker_time, "commit marker written on the source");
            }
            CommitStep::MarkerWritten => {
                let tasks = self.tasks_with_checkpoints().await?;
                let drained = tasks.iter().filter(|(_, spec, _)| matches!(spec, TaskSpec::ChangeStream(_))).all(
                    |(_, _, checkpoint)| match checkpoint.as_ref().map(|c| &c.detail) {
                        Some(CheckpointDetail::ChangeStream(cdc)) => {
                            cdc.drained_marker.as_deref() == Some(commit.marker_id.as_str())
                        }
                        _ => false,
                    },
                );
                if !drained {
                    return Ok(());
                }
                info!("change events drained up to the commit marker");
                next_commit.step = CommitStep::Drained;
            }
            CommitStep::Drained => {
                let filter = NamespaceFilter::new(&options.include_namespaces, &options.exclude_namespaces)
                    .map_err(|e| LeaderError::fatal("InvalidNamespaceFilter", e))?;
                for (ns, info) in list_source_namespaces(&clusters, &filter).await? {
                    if info.get_str("type").unwrap_or("collection") == "view" {
                        continue;
                    }
                    schema::restore_collection_at_commit(&clusters, &ns, options.build_indexes).await?;
                }
                info!("indexes and collection options restored on the destination");
                next_commit.step = CommitStep::IndexesRestored;
            }
            CommitStep::IndexesRestored => {
                if options.verification.enabled {
                    self.write_verify_tasks(current, &clusters, &options).await?;
                    next_commit.step = CommitStep::Verifying;
                } else {
                    next_commit.step = CommitStep::Done;
                }
            }
            CommitStep::Verifying => {
                let tasks = self.tasks_with_checkpoints().await?;
                let mut pending = 0;
                for (_, spec, checkpoint) in &tasks {
                    let (ns, range) = match spec {
                        TaskSpec::Verify(v) => (v.ns.to_string(), Some(v.range.to_string())),
                        TaskSpec::VerifyMetadata(v) => (v.ns.to_string(), None),
                        _ => continue,
                    };
                    let Some(checkpoint) = checkpoint.as_ref().filter(|c| c.status == TaskStatus::Done) else {
                        pending += 1;
                        continue;
                    };
                    let differences = match &checkpoint.detail {
                        CheckpointDetail::Verify(v) | CheckpointDetail::VerifyMetadata(v) => &v.differences,
                        _ => continue,
                    };
                    if !differences.is_empty() {
                        return Err(LeaderError::Fatal {
                            name: "VerificationFailed".into(),
                            description: format!(
                                "source and destination differ in {ns}{}: {}",
                                range.as_ref().map(|r| format!(" ({r})")).unwrap_or_default(),
                                differences.join("; ")
                            ),
                            namespace: Some(ns),
                            range,
                        });
                    }
                }
                if pending > 0 {
                    return Ok(());
                }
                info!("verification passed");
                next_commit.step = CommitStep::Done;
            }
            CommitStep::Done => {
                if state.destination_writes_blocked {
                    schema::set_user_write_blocking(&clusters.destination, false).await?;
                    next.destination_writes_blocked = false;
                }
                next.can_write = true;
                next.state = SyncState::Committed;
                next.phase = Phase::Completed;
                info!("migration committed");
            }
        }
        next.commit = Some(next_commit);
        self.save_state(current, next).await
    }

    async fn write_verify_tasks(
        &self,
        current: &Versioned<SyncStateDoc>,
        clusters: &Clusters,
        options: &model::StartOptions,
    ) -> Result<(), LeaderError> {
        let filter = NamespaceFilter::new(&options.include_namespaces, &options.exclude_namespaces)
            .map_err(|e| LeaderError::fatal("InvalidNamespaceFilter", e))?;
        let mut ops = Vec::new();
        let mut next_id = FIRST_VERIFY_TASK;
        let mut add = |spec: TaskSpec, ops: &mut Vec<TxnOp>| {
            ops.push(TaskOp::put_task(self.keys(), TaskId(next_id), &spec));
            next_id += 1;
        };
        for (ns, info) in list_source_namespaces(clusters, &filter).await? {
            if info.get_str("type").unwrap_or("collection") == "view" {
                continue;
            }
            let stats = partition::collection_stats(clusters, &ns).await?;
            // A capped collection's roll-over deletions never reach the change stream, so its
            // documents are not compared (as mongosync's verifier does); its metadata is.
            if !stats.capped {
                for range in partition::plan_ranges(clusters, &ns, &stats, &self.leader.settings, false).await? {
                    add(TaskSpec::Verify(VerifyTask { ns: ns.clone(), range }), &mut ops);
                }
            }
            add(TaskSpec::VerifyMetadata(VerifyMetadataTask { ns }), &mut ops);
        }
        // Verify tasks of an earlier attempt of this step (a conflict or a new leader between
        // its txns) are replaced: ids the new set reuses are overwritten by their put (a txn may
        // not both delete and put one key), the rest deleted. Workers claim verification tasks
        // only once the step is `Verifying`, so none of these has run; stale checkpoints go too.
        let written = next_id - FIRST_VERIFY_TASK;
        let (existing, _) = self.store().get_prefix(&self.keys().tasks_prefix()).await?;
        let mut all: Vec<TxnOp> = existing
            .iter()
            .filter_map(|kv| self.keys().task_id_of(&kv.key).filter(|id| id.0 >= FIRST_VERIFY_TASK))
            .flat_map(|id| {
                let stale_task = (id.0 >= next_id).then(|| TxnOp::delete(self.keys().task(id)));
                stale_task.into_iter().chain([TxnOp::delete(self.keys().checkpoint(id))])
            })
            .collect();
        all.extend(ops);
        info!(tasks = written, "verification tasks written");
        self.put_fenced(current, all).await
    }
}

/// Helpers to build task writes.
struct TaskOp;

impl TaskOp {
    fn put_task(keys: &Keys, id: TaskId, spec: &TaskSpec) -> TxnOp {
        TxnOp::put(keys.task(id), model::encode(spec), None)
    }
}

/// The source's replica-set name and its majority-committed operation time.
///
/// Starting the change stream at the majority commit point is safe: any write not yet majority
/// committed has a later time and will be seen by the stream.
async fn source_start_point(clusters: &Clusters) -> Result<(String, OpTime), LeaderError> {
    let hello = clusters
        .source
        .database("admin")
        .run_command(doc! {"hello": 1})
        .await
        .map_err(|e| LeaderError::from(WorkerError::mongo("reading the source's operation time", e)))?;
    if hello.get_str("msg").ok() == Some("isdbgrid") {
        return Err(LeaderError::fatal("UnsupportedTopology", "sharded source clusters are not supported yet"));
    }
    let set_name = hello.get_str("setName").map_err(|_| {
        LeaderError::fatal("UnsupportedTopology", "the source is not a replica set: change streams need one")
    })?;
    let last_write = hello
        .get_document("lastWrite")
        .map_err(|_| LeaderError::Transient("the source's hello reply has no lastWrite".into()))?;
    let ts = last_write
        .get_document("majorityOpTime")
        .ok()
        .and_then(|t| t.get_timestamp("ts").ok())
        .or_else(|| last_write.get_document("opTime").ok().and_then(|t| t.get_timestamp("ts").ok()))
        .ok_or_else(|| LeaderError::Transient("the source's hello reply has no majority operation time".into()))?;
    Ok((set_name.to_string(), ts.into()))
}

/// Inserts the commit marker on the source and returns its operation time.
async fn write_commit_marker(
    clusters: &Clusters,
    migration: &MigrationId,
    marker_id: &str,
) -> Result<OpTime, LeaderError> {
    let collection = clusters.source.database(INTERNAL_DATABASE).collection::<Document>(&marker_collection(migration));
    let mut session = clusters
        .source
        .start_session()
        .await
        .map_err(|e| LeaderError::from(WorkerError::mongo("starting a source session", e)))?;
    let marker = doc! {"_id": marker_id, "at": bson::DateTime::now()};
    match collection.insert_one(marker).session(&mut session).await {
        Ok(_) => {}
        // A retry of a marker that was written already: its time is what a re-read gives.
        Err(e) if clustersync_worker::error::server_code(&e) == Some(clustersync_worker::error::DUPLICATE_KEY) => {
            collection
                .find_one(doc! {"_id": marker_id})
                .session(&mut session)
                .await
                .map_err(|e| LeaderError::from(WorkerError::mongo("reading the commit marker", e)))?;
        }
        Err(e) => return Err(WorkerError::mongo("writing the commit marker on the source", e).into()),
    }
    let time = session
        .operation_time()
        .ok_or_else(|| LeaderError::Transient("the marker write returned no operation time".into()))?;
    Ok(time.into())
}

/// Name of the commit-marker collection of a migration (in the internal database).
pub fn marker_collection(migration: &MigrationId) -> String {
    format!("markers.{migration}")
}

/// Every source namespace the filter includes, sorted, with its `listCollections` entry.
async fn list_source_namespaces(
    clusters: &Clusters,
    filter: &NamespaceFilter,
) -> Result<Vec<(Namespace, Document)>, LeaderError> {
    let databases = clusters
        .source
        .list_database_names()
        .await
        .map_err(|e| LeaderError::from(WorkerError::mongo("listing source databases", e)))?;
    let mut out = Vec::new();
    for db in databases {
        if !filter.may_include_database(&db) {
            continue;
        }
        let mut cursor = clusters
            .source
            .database(&db)
            .run_cursor_command(doc! {"listCollections": 1})
            .await
            .map_err(|e| LeaderError::from(WorkerError::mongo(format!("listing collections of {db}"), e)))?;
        while let Some(entry) = cursor
            .try_next()
            .await
            .map_err(|e| LeaderError::from(WorkerError::mongo(format!("listing collections of {db}"), e)))?
        {
            let Ok(name) = entry.get_str("name") else { continue };
            let ns = Namespace::new(db.clone(), name);
            if filter.includes(&ns) {
                out.push((ns, entry));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

async fn has_ttl_index(clusters: &Clusters, ns: &Namespace) -> Result<bool, LeaderError> {
    let indexes = clusters
        .source
        .database(&ns.db)
        .collection::<Document>(&ns.coll)
        .list_indexes()
        .await
        .map_err(|e| LeaderError::from(WorkerError::mongo(format!("listing indexes of {ns}"), e)))?;
    let indexes: Vec<_> = indexes
        .try_collect()
        .await
        .map_err(|e| LeaderError::from(WorkerError::mongo(format!("listing indexes of {ns}"), e)))?;
    Ok(indexes.iter().any(|index| index.options.as_ref().is_some_and(|o| o.expire_after.is_some())))
}

/// Returns within `timeout` whether `predicate` became true (for tests and tools).
pub async fn wait_for_state(
    store: &Arc<dyn Store>,
    keys: &Keys,
    timeout: Duration,
    predicate: impl Fn(&SyncStateDoc) -> bool,
) -> Option<SyncStateDoc> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Ok(Some(kv)) = store.get(&keys.state()).await
            && let Ok(doc) = model::decode::<SyncStateDoc>(&kv.key, &kv.value)
            && predicate(&doc)
        {
            return Some(doc);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
