//! The worker process loop: claim tasks from the coordination store, run them, hand them back.
//!
//! A worker owns nothing durable. It holds one lease; every claim it makes is attached to that
//! lease, so when the process dies (or is frozen past its TTL) the claims vanish and any other
//! worker may take the tasks over from their last checkpoint. Every checkpoint write is fenced
//! on the claim (see [`crate::context`]), and the runtime cancels all its executors as soon as
//! the lease keeper reports the lease lost — before the store's deadline — so a stale worker
//! neither writes progress nor keeps copying after someone else took over.
//!
//! Which tasks may be claimed follows the migration's state: copy tasks while RUNNING (once
//! planning is complete), change-stream tasks while RUNNING or COMMITTING, verification tasks
//! while COMMITTING. PAUSED, FAILED, COMMITTED and IDLE stop everything.
//!
//! # Sharing the work
//!
//! A worker holds at most its fair share of the unfinished tasks, `ceil(unfinished / live
//! workers)` (and never more than its task slots), so a worker that joins finds unclaimed work.
//! When there is none left — everything is claimed, typically because a worker with many slots
//! took every partition before the newcomer arrived — a worker holding more than its share
//! hands the excess copy tasks back while another live worker has room below its own share;
//! the newcomer claims them and resumes them from their checkpoints (at most one batch is
//! copied again). Change streams are never handed back for balance: restarting one costs more
//! than it saves. The leader may also ask for a task back with a `{m}/release/{task}` key; the
//! holder honours keys written after its claim and deletes the key with the claim.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use clustersync_common::claim::{self, ClaimOutcome, FencingToken};
use clustersync_common::ids::{InstanceId, MigrationId, TaskId};
use clustersync_common::keys::Keys;
use clustersync_common::lease::LeaseHandle;
use clustersync_common::model::{
    self, CheckpointDetail, ClaimValue, InstanceProgress, SetupStep, StartOptions, SyncState, SyncStateDoc, Task,
    TaskCheckpoint, TaskProgress, TaskSpec, TaskStatus,
};
use clustersync_common::namespace::NamespaceFilter;
use clustersync_common::state_watch::{self, Versioned};
use clustersync_common::store::{Store, TxnOp};
use clustersync_common::time_constants;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::context::{CheckpointWriter, TaskContext, TaskCounters};
use crate::error::WorkerError;
use crate::mongo::{self, Clusters};
use crate::settings::WorkerSettings;

/// Failed attempts of one task on this worker before it is marked failed for good.
const MAX_ATTEMPTS: u32 = 5;

/// How often the runtime looks for work when nothing wakes it earlier.
const SCAN_INTERVAL: Duration = Duration::from_millis(500);

/// The URIs of the two clusters as the user named them.
#[derive(Clone)]
pub struct ClusterUris {
    pub cluster0: String,
    pub cluster1: String,
}

impl std::fmt::Debug for ClusterUris {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterUris")
            .field("cluster0", &mongo::redact_uri(&self.cluster0))
            .field("cluster1", &mongo::redact_uri(&self.cluster1))
            .finish()
    }
}

impl ClusterUris {
    /// Connects in the direction the `/start` options give.
    pub async fn connect(&self, options: &StartOptions, settings: &WorkerSettings) -> Result<Clusters, String> {
        let (source_uri, destination_uri) = if options.source_is_cluster0() {
            (&self.cluster0, &self.cluster1)
        } else {
            (&self.cluster1, &self.cluster0)
        };
        mongo::connect(
            source_uri,
            &options.source,
            destination_uri,
            &options.destination,
            settings.copy_read_preference,
        )
        .await
    }
}

/// Everything a worker process needs.
pub struct WorkerRuntime {
    pub store: Arc<dyn Store>,
    pub keys: Keys,
    pub migration: MigrationId,
    pub instance: InstanceId,
    pub lease: LeaseHandle,
    pub settings: Arc<WorkerSettings>,
    pub uris: ClusterUris,
}

/// Why a task's executor ended.
type ExecutorResult = Result<(), WorkerError>;

struct Running {
    spec: TaskSpec,
    token: FencingToken,
    cancel: CancellationToken,
    counters: Arc<TaskCounters>,
    handle: JoinHandle<ExecutorResult>,
    writer: CheckpointWriter,
    last_detail: Option<CheckpointDetail>,
}

/// The pieces derived from the `/start` options, built once they are known.
struct Migration {
    options: Arc<StartOptions>,
    filter: Arc<NamespaceFilter>,
    clusters: Arc<Clusters>,
}

impl WorkerRuntime {
    /// Runs until `shutdown` fires (returns `Ok`) or the lease is lost (returns
    /// `WorkerError::Fenced`-like `Store` error so the caller restarts with a new lease).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let lease_lost = self.lease.cancellation_token();
        let stop = CancellationToken::new();
        let state_rx =
            state_watch::watch_value::<SyncStateDoc>(self.store.clone(), self.keys.state(), stop.clone()).await;
        let (doc_tx, doc_rx) = watch::channel(state_rx.borrow().value.clone());
        let executor_ended = Arc::new(Notify::new());
        let mut loop_state = LoopState {
            runtime: &self,
            running: HashMap::new(),
            attempts: HashMap::new(),
            cooldown: HashMap::new(),
            migration: None,
            events_applied_done: 0,
            doc_rx,
            executor_ended: executor_ended.clone(),
        };
        let mut state_changes = state_rx.clone();
        let mut progress_tick = tokio::time::interval(time_constants::PROGRESS_INTERVAL);
        let mut scan_tick = tokio::time::interval(SCAN_INTERVAL);
        info!(instance = %self.instance, migration = %self.migration, "worker started");
        let outcome = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                _ = lease_lost.cancelled() => break Err(WorkerError::Store("worker lease lost".into())),
                changed = state_changes.changed() => {
                    if changed.is_err() { break Err(WorkerError::Store("state watch stopped".into())); }
                    let doc = state_changes.borrow_and_update().value.clone();
                    doc_tx.send_replace(doc);
                    loop_state.step().await;
                }
                _ = scan_tick.tick() => loop_state.step().await,
                // Settle a finished task and claim the next one now, not at the next scan: a
                // worker busy with short tasks (verification ranges) would otherwise idle for
                // up to a scan interval after each.
                _ = executor_ended.notified() => loop_state.step().await,
                _ = progress_tick.tick() => loop_state.publish_progress().await,
            }
        };
        // Stop every executor. On shutdown, hand the claims back so another worker can continue at
        // once instead of waiting for our lease to expire; on lease loss they are gone already.
        let release = outcome.is_ok();
        loop_state.stop_all(release).await;
        stop.cancel();
        info!(instance = %self.instance, "worker stopped");
        outcome
    }
}

struct LoopState<'a> {
    runtime: &'a WorkerRuntime,
    running: HashMap<TaskId, Running>,
    attempts: HashMap<TaskId, u32>,
    cooldown: HashMap<TaskId, Instant>,
    migration: Option<Migration>,
    /// Events applied by executors that have finished (for the process-wide counter).
    events_applied_done: u64,
    doc_rx: watch::Receiver<SyncStateDoc>,
    /// Signalled by every executor as it ends, so the loop settles it at once.
    executor_ended: Arc<Notify>,
}

impl LoopState<'_> {
    fn state(&self) -> SyncStateDoc {
        self.doc_rx.borrow().clone()
    }

    /// One pass: reap finished executors, stop what must stop, claim what we may.
    async fn step(&mut self) {
        self.reap().await;
        let state = self.state();
        if !state.state.workers_active() {
            if !self.running.is_empty() {
                info!(state = state.state.as_str(), "migration not active, stopping tasks");
                self.stop_all(true).await;
            }
            return;
        }
        if let Err(error) = self.ensure_migration(&state).await {
            warn!(%error, "cannot prepare the migration's connections yet");
            return;
        }
        if let Err(error) = self.claim_work(&state).await {
            debug!(%error, "task scan failed; retrying");
        }
    }

    async fn ensure_migration(&mut self, state: &SyncStateDoc) -> Result<(), String> {
        if self.migration.is_some() {
            return Ok(());
        }
        let Some(options) = state.options.clone() else {
            return Err("the state document has no start options".into());
        };
        let filter = NamespaceFilter::new(&options.include_namespaces, &options.exclude_namespaces)?;
        let clusters = self.runtime.uris.connect(&options, &self.runtime.settings).await?;
        self.migration =
            Some(Migration { options: Arc::new(options), filter: Arc::new(filter), clusters: Arc::new(clusters) });
        Ok(())
    }

    /// Whether a task kind may run in the current state.
    fn allowed(spec: &TaskSpec, state: &SyncStateDoc) -> bool {
        match spec {
            TaskSpec::Copy(_) => state.state == SyncState::Running && state.setup_step >= SetupStep::Planned,
            TaskSpec::ChangeStream(_) => matches!(state.state, SyncState::Running | SyncState::Committing),
            // Verification tasks are written in several txns and may be rewritten until the
            // leader records `Verifying`: only then is the set final and safe to run.
            TaskSpec::Verify(_) | TaskSpec::VerifyMetadata(_) => {
                state.state == SyncState::Committing
                    && state.commit.as_ref().is_some_and(|commit| commit.step >= model::CommitStep::Verifying)
            }
        }
    }

    async fn claim_work(&mut self, state: &SyncStateDoc) -> Result<(), WorkerError> {
        let store = self.runtime.store.as_ref();
        let keys = &self.runtime.keys;
        let store_err = |e: clustersync_common::store::StoreError| WorkerError::Store(e.to_string());
        let (task_kvs, _) = store.get_prefix(&keys.tasks_prefix()).await.map_err(store_err)?;
        let (checkpoint_kvs, _) = store.get_prefix(&keys.checkpoints_prefix()).await.map_err(store_err)?;
        let (claim_kvs, _) = store.get_prefix(&keys.claims_prefix()).await.map_err(store_err)?;
        let (release_kvs, _) = store.get_prefix(&keys.releases_prefix()).await.map_err(store_err)?;
        let (instance_kvs, _) = store.get_prefix(&keys.instances_prefix()).await.map_err(store_err)?;

        let finished: HashSet<TaskId> = checkpoint_kvs
            .iter()
            .filter_map(|kv| {
                let id = keys.task_id_of(&kv.key)?;
                let checkpoint: TaskCheckpoint = model::decode(&kv.key, &kv.value).ok()?;
                (checkpoint.status != TaskStatus::Running).then_some(id)
            })
            .collect();
        let claimed: HashSet<TaskId> = claim_kvs.iter().filter_map(|kv| keys.task_id_of(&kv.key)).collect();

        // Hand back tasks the leader asked for (rebalancing), and tasks the state no longer
        // allows. A release key is addressed to the holder at the time it was written: one
        // older than our claim (its revision below our fencing token, the claim's create
        // revision) was meant for an earlier holder and is ignored; we delete it with our claim.
        let releases: HashMap<TaskId, i64> =
            release_kvs.iter().filter_map(|kv| Some((keys.task_id_of(&kv.key)?, kv.create_revision))).collect();
        let to_stop: Vec<TaskId> = self
            .running
            .iter()
            .filter(|(id, running)| {
                releases.get(id).is_some_and(|revision| *revision > running.token.0)
                    || !Self::allowed(&running.spec, state)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in to_stop {
            if let Some(running) = self.running.get(&id)
                && !running.cancel.is_cancelled()
            {
                info!(task = %id, "handing task back");
                running.cancel.cancel();
            }
        }

        let tasks: Vec<Task> = task_kvs
            .iter()
            .filter_map(|kv| {
                let id = keys.task_id_of(&kv.key)?;
                match model::decode::<TaskSpec>(&kv.key, &kv.value) {
                    Ok(spec) => Some(Task { id, spec }),
                    Err(error) => {
                        warn!(%error, "skipping undecodable task");
                        None
                    }
                }
            })
            .collect();
        let unfinished = tasks.iter().filter(|t| !finished.contains(&t.id) && Self::allowed(&t.spec, state)).count();
        let live_workers: Vec<model::InstanceInfo> = instance_kvs
            .iter()
            .filter_map(|kv| model::decode::<model::InstanceInfo>(&kv.key, &kv.value).ok())
            .filter(|info| info.roles.contains(&model::Role::Worker))
            .collect();
        let workers = live_workers.len().max(1);
        // Fair share: with more workers than slots' worth of work, no worker hoards tasks a
        // newcomer could run. Rounded up so every task finds a holder.
        let quota = unfinished.div_ceil(workers).max(1);
        let slots = self.runtime.settings.task_slots as usize;
        let limit = slots.min(quota);
        let unclaimed = tasks.iter().any(|t| {
            !finished.contains(&t.id)
                && !claimed.contains(&t.id)
                && !self.running.contains_key(&t.id)
                && Self::allowed(&t.spec, state)
        });
        if !unclaimed {
            self.hand_back_above_share(quota, &live_workers, &claim_kvs);
        }
        if self.running.len() >= limit {
            return Ok(());
        }
        let now = Instant::now();
        let mut candidates: Vec<&Task> = tasks
            .iter()
            .filter(|t| {
                !finished.contains(&t.id)
                    && !claimed.contains(&t.id)
                    && !self.running.contains_key(&t.id)
                    && Self::allowed(&t.spec, state)
                    && self.cooldown.get(&t.id).is_none_or(|until| *until <= now)
            })
            .collect();
        // Change streams first: they must be reading before the source oplog moves on.
        candidates.sort_by_key(|t| (!matches!(t.spec, TaskSpec::ChangeStream(_)), t.id));
        for task in candidates {
            if self.running.len() >= limit {
                break;
            }
            self.try_start(task.clone()).await?;
        }
        Ok(())
    }

    /// Rebalancing when every task is claimed: hands back the copy tasks this worker runs
    /// above its fair share `quota`, as many as the other live workers have room for below
    /// theirs (`min(their slots, quota)` minus what they hold). The tasks with the least
    /// progress go first: they have the most left to copy. A handed-back copy resumes from its
    /// checkpoint on the next holder, so the cost is at most the batch in flight.
    ///
    /// Without this, a worker that claimed everything (many task slots, or alone at the start)
    /// would keep a newcomer idle until its own tasks finish. Only the worker above its share
    /// gives anything up, and it never claims beyond its share itself, so tasks do not bounce
    /// back and forth.
    fn hand_back_above_share(
        &mut self,
        quota: usize,
        live_workers: &[model::InstanceInfo],
        claim_kvs: &[clustersync_common::store::KeyValue],
    ) {
        let me = &self.runtime.instance;
        // Tasks being handed back already (cancelled, not yet settled) no longer count.
        let active = self.running.values().filter(|r| !r.cancel.is_cancelled()).count();
        let excess = active.saturating_sub(quota);
        if excess == 0 {
            return;
        }
        let mut held: HashMap<&InstanceId, usize> = HashMap::new();
        let holders: Vec<InstanceId> = claim_kvs
            .iter()
            .filter_map(|kv| model::decode::<ClaimValue>(&kv.key, &kv.value).ok())
            .map(|claim| claim.holder)
            .collect();
        for holder in &holders {
            *held.entry(holder).or_default() += 1;
        }
        let room: usize = live_workers
            .iter()
            .filter(|info| info.id != *me)
            .map(|info| (info.task_slots as usize).min(quota).saturating_sub(held.get(&info.id).copied().unwrap_or(0)))
            .sum();
        let count = excess.min(room);
        if count == 0 {
            return;
        }
        let mut movable: Vec<(u64, TaskId)> = self
            .running
            .iter()
            .filter(|(_, r)| matches!(r.spec, TaskSpec::Copy(_)) && !r.cancel.is_cancelled())
            .map(|(id, r)| (r.counters.documents.load(Ordering::Relaxed), *id))
            .collect();
        movable.sort();
        for (_, id) in movable.into_iter().take(count) {
            if let Some(running) = self.running.get(&id) {
                info!(task = %id, held = active, fair_share = quota, "handing a copy task back to a worker with room");
                running.cancel.cancel();
            }
        }
    }

    async fn try_start(&mut self, task: Task) -> Result<(), WorkerError> {
        let runtime = self.runtime;
        let keys = &runtime.keys;
        let claim_value =
            model::encode(&ClaimValue { holder: runtime.instance.clone(), claimed_at_ms: model::now_ms() });
        let outcome =
            claim::try_claim(runtime.store.as_ref(), &keys.claim(task.id), claim_value, runtime.lease.lease_id())
                .await
                .map_err(|e| WorkerError::Store(e.to_string()))?;
        let token = match outcome {
            ClaimOutcome::Claimed(token) => token,
            // Our own claim from a call whose reply was lost.
            ClaimOutcome::HeldBy(kv) if kv.lease == Some(runtime.lease.lease_id()) => FencingToken(kv.create_revision),
            ClaimOutcome::HeldBy(_) => return Ok(()),
        };
        let previous = match runtime.store.get(&keys.checkpoint(task.id)).await {
            Ok(Some(kv)) => match model::decode::<TaskCheckpoint>(&kv.key, &kv.value) {
                Ok(checkpoint) => Some(checkpoint),
                Err(error) => {
                    warn!(task = %task.id, %error, "ignoring undecodable checkpoint");
                    None
                }
            },
            Ok(None) => None,
            Err(error) => {
                let _ = claim::release(runtime.store.as_ref(), &keys.claim(task.id), token).await;
                return Err(WorkerError::Store(error.to_string()));
            }
        };
        if previous.as_ref().is_some_and(|c| c.status != TaskStatus::Running) {
            // Finished between our scan and our claim.
            let _ = claim::release(runtime.store.as_ref(), &keys.claim(task.id), token).await;
            return Ok(());
        }
        let Some(migration) = &self.migration else {
            let _ = claim::release(runtime.store.as_ref(), &keys.claim(task.id), token).await;
            return Ok(());
        };
        let writer =
            CheckpointWriter::new(runtime.store.clone(), keys.clone(), task.id, token, runtime.instance.clone())
                .with_lease(runtime.lease.clone());
        // Executors stop when the task is cancelled or when the lease is about to be lost.
        let cancel = runtime.lease.cancellation_token().child_token();
        let counters = Arc::new(TaskCounters::new());
        let last_detail = previous.as_ref().map(|c| c.detail.clone());
        let context = TaskContext {
            task: task.id,
            clusters: migration.clusters.clone(),
            checkpoints: writer.clone(),
            previous,
            state: self.doc_rx.clone(),
            cancel: cancel.clone(),
            counters: counters.clone(),
            options: migration.options.clone(),
            filter: migration.filter.clone(),
            settings: runtime.settings.clone(),
            migration: runtime.migration.to_string(),
        };
        info!(task = %task.id, kind = task.spec.kind_name(), %token, "task claimed");
        let spec = task.spec.clone();
        let guarded = LeaseBound::new(runtime.lease.clone(), execute(context, spec));
        let ended = self.executor_ended.clone();
        let handle = tokio::spawn(async move {
            // Past the lease deadline the executor is dropped unpolled: see `LeaseBound`.
            let result = guarded.await.unwrap_or(Err(WorkerError::Cancelled));
            ended.notify_one();
            result
        });
        self.running.insert(task.id, Running { spec: task.spec, token, cancel, counters, handle, writer, last_detail });
        Ok(())
    }

    /// Collects finished executors and settles their claims.
    async fn reap(&mut self) {
        let finished: Vec<TaskId> =
            self.running.iter().filter(|(_, r)| r.handle.is_finished()).map(|(id, _)| *id).collect();
        for id in finished {
            let Some(running) = self.running.remove(&id) else { continue };
            self.events_applied_done += running.counters.events_applied.load(Ordering::Relaxed);
            let result = match running.handle.await {
                Ok(result) => result,
                Err(join_error) => Err(WorkerError::InvalidData(format!("task executor panicked: {join_error}"))),
            };
            self.settle(id, running.spec, running.token, running.writer, running.last_detail, result).await;
        }
    }

    async fn settle(
        &mut self,
        id: TaskId,
        spec: TaskSpec,
        token: FencingToken,
        writer: CheckpointWriter,
        last_detail: Option<CheckpointDetail>,
        result: ExecutorResult,
    ) {
        let store = self.runtime.store.clone();
        let claim_key = self.runtime.keys.claim(id);
        let fail = |error: String, description: String| TaskStatus::Failed { error, description };
        let failure = match result {
            Ok(()) => {
                info!(task = %id, kind = spec.kind_name(), "task finished");
                self.attempts.remove(&id);
                None
            }
            Err(WorkerError::Cancelled) => None,
            Err(WorkerError::Fenced { .. }) => {
                warn!(task = %id, "task fenced: another worker holds it now");
                return;
            }
            Err(WorkerError::Fatal { name, description }) => Some(fail(name, description)),
            Err(other) => {
                let attempts = self.attempts.entry(id).or_default();
                *attempts += 1;
                warn!(task = %id, attempt = *attempts, error = %other, "task attempt failed");
                if *attempts >= MAX_ATTEMPTS {
                    Some(fail("TaskFailed".into(), format!("task {id} failed {MAX_ATTEMPTS} times, last: {other}")))
                } else {
                    // Back off before this worker tries the task again; others may take it meanwhile.
                    let backoff = Duration::from_secs(1 << (*attempts).min(5));
                    self.cooldown.insert(id, Instant::now() + backoff);
                    None
                }
            }
        };
        if let Some(status) = failure {
            let detail = last_detail.unwrap_or_else(|| default_detail(&spec));
            match writer.save(status, detail).await {
                Ok(()) => warn!(task = %id, "task marked failed"),
                Err(error) => warn!(task = %id, %error, "could not record the task failure"),
            }
        }
        // A release request, if any, is answered by this hand-back: delete it with the claim,
        // in one fenced txn, so the task is claimable again as soon as the claim is gone.
        let release_key = self.runtime.keys.release(id);
        let ops = vec![TxnOp::delete(release_key), TxnOp::delete(claim_key.clone())];
        if let Err(error) = claim::fenced_txn(store.as_ref(), &claim_key, token, ops).await {
            // Fenced: not ours any more. Otherwise the claim dies with our lease anyway.
            debug!(task = %id, %error, "claim release failed");
        }
    }

    /// Cancels every executor, waits for them, and settles their claims.
    async fn stop_all(&mut self, release: bool) {
        for running in self.running.values() {
            running.cancel.cancel();
        }
        let ids: Vec<TaskId> = self.running.keys().copied().collect();
        for id in ids {
            let Some(running) = self.running.remove(&id) else { continue };
            self.events_applied_done += running.counters.events_applied.load(Ordering::Relaxed);
            let result = match tokio::time::timeout(Duration::from_secs(30), running.handle).await {
                Ok(Ok(result)) => result,
                Ok(Err(join_error)) => Err(WorkerError::InvalidData(format!("task executor panicked: {join_error}"))),
                Err(_) => {
                    warn!(task = %id, "task did not stop within 30 s");
                    Err(WorkerError::Cancelled)
                }
            };
            if release {
                self.settle(id, running.spec, running.token, running.writer, running.last_detail, result).await;
            }
        }
    }

    async fn publish_progress(&mut self) {
        let mut events_applied = self.events_applied_done;
        let mut lag_seconds = None;
        let mut cdc_stage = None;
        let tasks = self
            .running
            .iter()
            .map(|(id, running)| {
                let counters = &running.counters;
                events_applied += counters.events_applied.load(Ordering::Relaxed);
                let lag = counters.lag_ms.load(Ordering::Relaxed);
                if lag != u64::MAX {
                    let lag = lag as f64 / 1000.0;
                    lag_seconds = Some(lag_seconds.map_or(lag, |l: f64| l.max(lag)));
                }
                cdc_stage = match counters.cdc_stage.load(Ordering::Relaxed) {
                    0 => Some(model::CdcStage::Spooling),
                    1 => Some(model::CdcStage::Draining),
                    2 => Some(model::CdcStage::Live),
                    _ => cdc_stage,
                };
                let ns = match &running.spec {
                    TaskSpec::Copy(copy) => Some(copy.ns.to_string()),
                    TaskSpec::Verify(verify) => Some(verify.ns.to_string()),
                    TaskSpec::VerifyMetadata(verify) => Some(verify.ns.to_string()),
                    TaskSpec::ChangeStream(_) => None,
                };
                TaskProgress {
                    task: *id,
                    kind: running.spec.kind_name().to_string(),
                    ns,
                    documents: counters.documents.load(Ordering::Relaxed),
                    bytes: counters.bytes.load(Ordering::Relaxed),
                }
            })
            .collect();
        let progress =
            InstanceProgress { tasks, events_applied, lag_seconds, cdc_stage, updated_at_ms: model::now_ms() };
        let key = self.runtime.keys.progress(&self.runtime.instance);
        if let Err(error) =
            self.runtime.store.put(&key, model::encode(&progress), Some(self.runtime.lease.lease_id())).await
        {
            debug!(%error, "progress publish failed");
        }
    }
}

/// The checkpoint detail to record a failure with when the task never saved one.
fn default_detail(spec: &TaskSpec) -> CheckpointDetail {
    match spec {
        TaskSpec::Copy(_) => CheckpointDetail::Copy(Default::default()),
        TaskSpec::ChangeStream(_) => CheckpointDetail::ChangeStream(Default::default()),
        TaskSpec::Verify(_) => CheckpointDetail::Verify(Default::default()),
        TaskSpec::VerifyMetadata(_) => CheckpointDetail::VerifyMetadata(Default::default()),
    }
}

/// A future that is never polled again once the lease's deadline has passed: it then resolves
/// to `None` (and its inner future is dropped by the caller).
///
/// The lease keeper cancels lease-bound work before the deadline, but only when it gets to
/// run. A process frozen past its TTL (SIGSTOP, a VM pause, a long stall) wakes up with the
/// keeper's timer and the work's I/O ready at the same instant, in no guaranteed order: a task
/// executor (or the leader's step) could send one more MongoDB write after the store has
/// already handed its task (or the leadership) to another process. Store writes are fenced,
/// MongoDB writes are not; so the work is never polled again once the deadline has passed —
/// every driver operation runs inside the caller's poll, and none can start after this check
/// fails. Until the deadline the claim is still ours in the store (the store expires the lease
/// no earlier than `deadline`, see the lease module).
///
/// Only the wrapped future is guarded: tasks it spawns (the change stream's reader and
/// appliers) are polled on their own and must be wrapped too
/// ([`TaskContext::lease_bound`](crate::context::TaskContext::lease_bound)).
pub struct LeaseBound<'a, T> {
    inner: Pin<Box<dyn Future<Output = T> + Send + 'a>>,
    lease: LeaseHandle,
}

impl<'a, T> LeaseBound<'a, T> {
    /// Guards `future` with `lease`.
    pub fn new(lease: LeaseHandle, future: impl Future<Output = T> + Send + 'a) -> Self {
        LeaseBound { inner: Box::pin(future), lease }
    }
}

impl<T> Future for LeaseBound<'_, T> {
    type Output = Option<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        if !self.lease.is_alive() {
            return Poll::Ready(None);
        }
        self.inner.as_mut().poll(cx).map(Some)
    }
}

/// Runs one task to its end.
async fn execute(context: TaskContext, spec: TaskSpec) -> ExecutorResult {
    match &spec {
        TaskSpec::Copy(task) => crate::copy::run_copy(&context, task).await,
        TaskSpec::ChangeStream(task) => crate::cdc::run_change_stream(&context, task).await,
        TaskSpec::Verify(task) => crate::verify::run_verify(&context, task).await,
        TaskSpec::VerifyMetadata(task) => crate::verify::run_verify_metadata(&context, task).await,
    }
}

/// The `Versioned` state type re-exported for callers that build a runtime by hand.
pub type StateVersion = Versioned<SyncStateDoc>;
