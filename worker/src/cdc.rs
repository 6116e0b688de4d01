//! The change-stream engine: one task per source shard, running for the whole migration.
//!
//! # Stages
//!
//! 1. **Spooling** (the copy runs). The source's cluster-wide change stream, started at the
//!    task's start point (taken before any document was copied), is written durably into the
//!    spool on the destination, so the copy may outlast the source's oplog window. The checkpoint
//!    records `{resume_token, next_spool_seq}`: everything up to the token is in the spool below
//!    that sequence number.
//! 2. **Draining** (the copy is complete, and after-copy indexes are built). Spooled events are
//!    applied in order from `next_apply_seq` while new ones are still spooled.
//! 3. **Live**. Once the drain reaches the end of the spool, the intake stops spooling and feeds
//!    events straight to the appliers; the checkpoint holds the token of the last event applied
//!    in order.
//!
//! # Pipeline
//!
//! ```text
//! reader ─▶ intake ─┬─▶ spool ─▶ drainer ─┐
//!                   └──────(live)─────────┴─▶ dispatcher ─▶ appliers (by document) ─▶ destination
//!                                                 │ DDL: barrier, then schema appliers
//!                                                 └─▶ watermark ─▶ checkpoint (fenced)
//! ```
//!
//! Every stage hands on through a bounded channel (backpressure up to the stream), and events
//! hold their bytes of a memory budget until spooled or applied, so large documents cannot
//! exhaust memory. Checkpoints
//! only ever cover what is durably spooled or applied in order, so a crash anywhere loses nothing
//! and re-applies a little, harmlessly (every write is idempotent). Layout:
//!
//! - [`reader`]: the change stream, resume, history loss.
//! - [`intake`]: spool or hand on live; the switch to live.
//! - [`spool`]: the spool collection and the drainer.
//! - [`dispatch`]: routing to appliers, DDL barriers.
//! - [`apply`]: event → idempotent writes, the appliers, repair by lookup.
//! - [`ddl`]: what DDL events mean for the destination.
//! - [`watermark`]: the applied-in-order position.
//! - [`event`]: change events, relevance, routing keys, fragments, the memory budget.

pub mod apply;
pub mod ddl;
pub mod dispatch;
pub mod event;
pub mod intake;
pub mod reader;
pub mod spool;
pub mod watermark;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bson::{Bson, doc};
use clustersync_common::extjson::{ExtDoc, OpTime};
use clustersync_common::model::{
    CdcCheckpoint, CdcStage, ChangeStreamTask, CheckpointDetail, StartOptions, SyncStateDoc, TaskStatus,
};
use clustersync_common::namespace::Namespace;
use clustersync_common::time_constants::CDC_CHECKPOINT_INTERVAL;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::cdc::apply::{ApplierShared, Tainted, run_applier};
use crate::cdc::ddl::{DdlExecutor, DestinationDdl, SchemaDdl};
use crate::cdc::dispatch::{DispatchItem, Dispatcher};
use crate::cdc::event::MemoryBudget;
use crate::cdc::intake::Intake;
use crate::cdc::reader::{Reader, StartAt};
use crate::cdc::spool::{Drainer, Spool, SpoolPos};
use crate::cdc::watermark::{SharedWatermark, Watermark};
use crate::context::TaskContext;
use crate::error::WorkerError;

/// How often the source's latest write time is read for the lag.
const LAG_INTERVAL: Duration = Duration::from_secs(1);
/// Bytes of change events one task holds in memory between reading and spooling or applying,
/// per path (stream and spool drain).
pub const MEMORY_BUDGET_BYTES: usize = 128 * 1024 * 1024;
/// How long a cancelled task spends on its last checkpoint.
const FINAL_SAVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs the change-stream task of one source shard until cancelled (pause, release, shutdown,
/// end of the migration) or failed.
///
/// # Errors
///
/// - [`WorkerError::Cancelled`] when `ctx.cancel` fires; the checkpoint covers what is applied.
/// - [`WorkerError::Fenced`] as soon as a checkpoint write finds the claim gone.
/// - [`WorkerError::Fatal`] when the migration cannot be correct (`ChangeStreamHistoryLost`,
///   an unsupported DDL or event, a document the destination refuses); a `Failed` checkpoint
///   naming the reason is saved first.
/// - Any other error for a task attempt that may be retried from the checkpoint.
pub async fn run_change_stream(ctx: &TaskContext, task: &ChangeStreamTask) -> Result<(), WorkerError> {
    run_change_stream_with(ctx, task, EngineOptions::new(ctx)).await
}

/// What [`run_change_stream_with`] may change from the defaults.
pub struct EngineOptions {
    /// The destination's DDL appliers ([`SchemaDdl`] by default; tests may watch the calls).
    pub ddl: Arc<dyn DestinationDdl>,
    /// Bytes of events held in memory per path ([`MEMORY_BUDGET_BYTES`] by default).
    pub memory_budget_bytes: usize,
}

impl EngineOptions {
    pub fn new(ctx: &TaskContext) -> Self {
        Self { ddl: Arc::new(SchemaDdl::new(ctx.clusters.clone())), memory_budget_bytes: MEMORY_BUDGET_BYTES }
    }
}

/// [`run_change_stream`] with [`EngineOptions`].
pub async fn run_change_stream_with(
    ctx: &TaskContext,
    task: &ChangeStreamTask,
    options: EngineOptions,
) -> Result<(), WorkerError> {
    let (status, checkpoint) = match &ctx.previous {
        None => (TaskStatus::Running, CdcCheckpoint::default()),
        Some(previous) => match &previous.detail {
            CheckpointDetail::ChangeStream(checkpoint) => (previous.status.clone(), checkpoint.clone()),
            other => {
                return Err(WorkerError::InvalidData(format!(
                    "task {} has a checkpoint of another kind: {other:?}",
                    ctx.task
                )));
            }
        },
    };
    match status {
        TaskStatus::Failed { error, description } => return Err(WorkerError::fatal(error, description)),
        TaskStatus::Done => return Ok(()),
        TaskStatus::Running => {}
    }
    let mut engine = Engine::new(ctx, task, checkpoint, options);
    let result = engine.run().await;
    // Stop every stage before anything else: nothing may be applied after the checkpoint below.
    engine.tasks.shutdown().await;
    match result {
        Err(WorkerError::Fatal { name, description }) => {
            warn!(task = %ctx.task, error = %name, description = %description, "change stream failed");
            let detail = CheckpointDetail::ChangeStream(engine.compose());
            let status = TaskStatus::Failed { error: name.clone(), description: description.clone() };
            match ctx.checkpoints.save(status, detail).await {
                Err(WorkerError::Fenced { task }) => Err(WorkerError::Fenced { task }),
                Err(error) => {
                    warn!(task = %ctx.task, error = %error, "could not record the change stream failure");
                    Err(WorkerError::Fatal { name, description })
                }
                Ok(()) => Err(WorkerError::Fatal { name, description }),
            }
        }
        Err(WorkerError::Cancelled) => {
            // Pause or release: record what is applied so the next holder repeats less. Best
            // effort — the checkpoint from the last tick is just as correct, only older.
            let checkpoint = engine.compose();
            if checkpoint != engine.saved {
                let save = ctx.checkpoints.save(TaskStatus::Running, CheckpointDetail::ChangeStream(checkpoint));
                if let Ok(Err(WorkerError::Fenced { task })) = tokio::time::timeout(FINAL_SAVE_TIMEOUT, save).await {
                    return Err(WorkerError::Fenced { task });
                }
            }
            Err(WorkerError::Cancelled)
        }
        other => other,
    }
}

/// Whether change events may be applied: the copy is complete (and after-copy indexes exist).
pub fn copy_complete(state: &SyncStateDoc, options: &StartOptions) -> bool {
    state.copy_completed_at_ms.is_some()
        && (!options.build_indexes.builds_after_copy() || state.after_copy_indexes_built)
}

fn stage_number(stage: CdcStage) -> u64 {
    match stage {
        CdcStage::Spooling => 0,
        CdcStage::Draining => 1,
        CdcStage::Live => 2,
    }
}

/// The destination shard key fields of collections sharded by the sync (`shardingEntries`).
fn shard_keys(options: &StartOptions) -> HashMap<Namespace, Vec<String>> {
    let Some(sharding) = &options.sharding else { return HashMap::new() };
    sharding
        .sharding_entries
        .iter()
        .map(|entry| {
            let fields = entry.shard_collection.key.iter().flat_map(|part| part.0.keys().cloned()).collect();
            (Namespace::new(entry.database.clone(), entry.collection.clone()), fields)
        })
        .collect()
}

type StageResult = (&'static str, Result<(), WorkerError>);

struct Engine {
    ctx: TaskContext,
    task: ChangeStreamTask,
    ddl: Arc<dyn DestinationDdl>,
    /// The stage as last checkpointed.
    stage: CdcStage,
    /// The checkpoint as last saved (or resumed from).
    saved: CdcCheckpoint,
    spool: Spool,
    watermark: SharedWatermark,
    repairs: Arc<AtomicU64>,
    positions: watch::Receiver<SpoolPos>,
    live_from: watch::Receiver<Option<u64>>,
    draining: watch::Sender<bool>,
    /// Kept until the drainer starts, which takes them.
    drainer_parts: Option<(watch::Sender<u64>, mpsc::Sender<DispatchItem>)>,
    tasks: JoinSet<StageResult>,
    /// Spool entries below this are deleted.
    trimmed_below: u64,
    /// The source's latest majority-committed write time, polled for the lag.
    source_time: Option<OpTime>,
    /// Memory held by events in flight (see [`event::MemoryBudget`]), one budget per path: the
    /// intake waits for the drainer when it switches to live, so if both paths shared one budget
    /// the stream's events could hold all of it while the drainer needs some.
    read_budget: MemoryBudget,
    drain_budget: MemoryBudget,
    /// Events applied and repairs made by earlier holders (this run counts its own).
    base_applied: u64,
    base_repairs: u64,
}

impl Engine {
    fn new(ctx: &TaskContext, task: &ChangeStreamTask, checkpoint: CdcCheckpoint, options: EngineOptions) -> Self {
        let spool = Spool::new(
            &ctx.clusters,
            &ctx.migration,
            task.shard.as_str(),
            ctx.cancel.clone(),
            ctx.settings.retry_budget,
        );
        let token = checkpoint.resume_token.as_ref().map(|t| t.0.clone());
        // Live, the checkpointed token is where everything is applied; before, applying starts
        // from the spool at `next_apply_seq` and tokens belong to the spool side only.
        let watermark = if checkpoint.stage == CdcStage::Live {
            Watermark::new(checkpoint.next_spool_seq, checkpoint.applied_through, token.clone())
        } else {
            Watermark::new(checkpoint.next_apply_seq, checkpoint.applied_through, None)
        };
        let (_, positions) = watch::channel(SpoolPos::default());
        let (_, live_from) = watch::channel(None);
        let (draining, _) = watch::channel(false);
        Self {
            ctx: ctx.clone(),
            task: task.clone(),
            ddl: options.ddl,
            stage: checkpoint.stage,
            trimmed_below: checkpoint.next_apply_seq,
            read_budget: MemoryBudget::new(options.memory_budget_bytes),
            drain_budget: MemoryBudget::new(options.memory_budget_bytes),
            base_applied: checkpoint.events_applied,
            base_repairs: checkpoint.repairs,
            saved: checkpoint,
            spool,
            watermark: SharedWatermark::new(watermark),
            repairs: Arc::new(AtomicU64::new(0)),
            positions,
            live_from,
            draining,
            drainer_parts: None,
            tasks: JoinSet::new(),
            source_time: None,
        }
    }

    async fn run(&mut self) -> Result<(), WorkerError> {
        let ctx = self.ctx.clone();
        info!(
            task = %ctx.task, shard = %self.task.shard, stage = ?self.stage,
            next_spool_seq = self.saved.next_spool_seq, next_apply_seq = self.saved.next_apply_seq,
            resuming = self.saved.resume_token.is_some(), "change stream starting"
        );
        self.ctx.counters.cdc_stage.store(stage_number(self.stage), Ordering::Relaxed);
        if self.stage == CdcStage::Live {
            // Everything spooled was applied before the switch; a previous holder may not have
            // got round to dropping the spool.
            self.spool.drop().await?;
        } else {
            // Entries at or above `next_spool_seq` were written after the last checkpoint by a
            // holder that stopped; the stream is re-read from the checkpointed token and spools
            // them again, so they must go first (and sequence numbers stay dense).
            let removed = self.spool.delete_from(self.saved.next_spool_seq).await?;
            if removed > 0 {
                info!(
                    removed,
                    from = self.saved.next_spool_seq,
                    "removed spool entries written after the last checkpoint"
                );
            }
            if self.saved.next_apply_seq > 0 {
                self.spool.delete_below(self.saved.next_apply_seq).await?;
            }
        }
        self.start_stages();
        self.on_state().await?;

        let mut checkpoint_tick = tokio::time::interval(CDC_CHECKPOINT_INTERVAL);
        checkpoint_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut lag_tick = tokio::time::interval(LAG_INTERVAL);
        lag_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut state = ctx.state.clone();
        let mut state_alive = true;
        loop {
            tokio::select! {
                _ = ctx.cancel.cancelled() => return Err(WorkerError::Cancelled),
                joined = self.tasks.join_next() => match joined {
                    None => return Err(WorkerError::InvalidData("every change stream stage stopped".into())),
                    Some(Ok((_, Err(error)))) => return Err(error),
                    Some(Ok((name, Ok(())))) => {
                        // Only the drainer ends normally; any other stage ends because a stage
                        // next to it failed, whose error arrives next.
                        if name != "drainer" {
                            info!(stage = name, "change stream stage ended");
                        }
                    }
                    Some(Err(join_error)) if join_error.is_cancelled() => return Err(WorkerError::Cancelled),
                    Some(Err(join_error)) => {
                        return Err(WorkerError::InvalidData(format!("change stream stage panicked: {join_error}")));
                    }
                },
                changed = state.changed(), if state_alive => {
                    if changed.is_err() {
                        state_alive = false;
                    } else {
                        self.on_state().await?;
                    }
                }
                _ = checkpoint_tick.tick() => self.checkpoint(false).await?,
                _ = lag_tick.tick() => self.update_lag().await,
            }
        }
    }

    /// Spawns reader, intake, dispatcher and appliers (and the drainer when resuming a drain).
    fn start_stages(&mut self) {
        let ctx = self.ctx.clone();
        let settings = ctx.settings.clone();
        let saved = self.saved.clone();
        let token = saved.resume_token.as_ref().map(|t| t.0.clone());
        let live = saved.stage == CdcStage::Live;

        let (positions_tx, positions_rx) = watch::channel(SpoolPos {
            next_seq: saved.next_spool_seq,
            token: token.clone(),
            read_through: saved.read_through,
            events_spooled: saved.events_spooled,
            idle: false,
            handed_out: saved.next_spool_seq,
        });
        let (live_from_tx, live_from_rx) = watch::channel(live.then_some(saved.next_spool_seq));
        let (draining_tx, draining_rx) = watch::channel(saved.stage == CdcStage::Draining);
        let (dispatched_tx, dispatched_rx) = watch::channel(saved.next_apply_seq);
        self.positions = positions_rx.clone();
        self.live_from = live_from_rx.clone();
        self.draining = draining_tx;

        let queue = settings.apply_batch_events.max(1) * 2;
        let (reader_tx, reader_rx) = mpsc::channel(settings.spool_batch_events.max(1) * 2);
        let (dispatch_tx, dispatch_rx) = mpsc::channel(queue);

        let reader = Reader {
            client: ctx.clusters.source.clone(),
            budget: self.read_budget.clone(),
            migration: ctx.migration.clone(),
            filter: ctx.filter.clone(),
            out: reader_tx,
            cancel: ctx.cancel.clone(),
            retry_budget: settings.retry_budget,
        };
        // The first run starts at the task's start point (inclusive); every later run right after
        // the checkpointed token, whose meaning the stage gives.
        let start = match token {
            Some(token) => StartAt::After(token),
            None => StartAt::Time(self.task.start_at),
        };
        self.spawn_stage("reader", async move { reader.run(start).await });

        let intake = Intake {
            input: reader_rx,
            spool: self.spool.clone(),
            live,
            next_seq: saved.next_spool_seq,
            positions: positions_tx,
            dispatch: dispatch_tx.clone(),
            draining: draining_rx,
            dispatched: dispatched_rx,
            live_from: live_from_tx,
            batch_events: settings.spool_batch_events.max(1),
        };
        self.spawn_stage("intake", intake.run());

        let tainted = Tainted::default();
        let shared = Arc::new(ApplierShared {
            clusters: ctx.clusters.clone(),
            watermark: self.watermark.clone(),
            repairs: self.repairs.clone(),
            counters: ctx.counters.clone(),
            cancel: ctx.cancel.clone(),
            retry_budget: settings.retry_budget,
            batch_events: settings.apply_batch_events.max(1),
            shard_keys: shard_keys(&ctx.options),
            tainted: tainted.clone(),
        });
        let mut appliers = Vec::with_capacity(settings.appliers.max(1));
        for index in 0..settings.appliers.max(1) {
            let (tx, rx) = mpsc::channel(queue);
            appliers.push(tx);
            let shared = shared.clone();
            self.spawn_stage("applier", run_applier(index, rx, shared));
        }
        let dispatcher = Dispatcher {
            queue: dispatch_rx,
            appliers,
            watermark: self.watermark.clone(),
            ddl: DdlExecutor {
                target: self.ddl.clone(),
                tainted,
                source: ctx.clusters.source.clone(),
                build_indexes: ctx.options.build_indexes,
                cancel: ctx.cancel.clone(),
            },
            filter: ctx.filter.clone(),
            migration: ctx.migration.clone(),
            state: ctx.state.clone(),
        };
        self.spawn_stage("dispatcher", dispatcher.run());

        self.drainer_parts = Some((dispatched_tx, dispatch_tx));
        if saved.stage == CdcStage::Draining {
            self.start_drainer();
        }
    }

    /// Spawns one stage, lease-bound: a holder frozen past its lease must not issue one more
    /// read, spool write or destination write once it thaws (another holder owns the stream).
    fn spawn_stage(
        &mut self,
        name: &'static str,
        stage: impl std::future::Future<Output = Result<(), WorkerError>> + Send + 'static,
    ) {
        let guarded = self.ctx.lease_bound(stage);
        self.tasks.spawn(async move { (name, guarded.await) });
    }

    fn start_drainer(&mut self) {
        let Some((dispatched, dispatch)) = self.drainer_parts.take() else { return };
        let drainer = Drainer {
            spool: self.spool.clone(),
            next: self.saved.next_apply_seq,
            positions: self.positions.clone(),
            live_from: self.live_from.clone(),
            dispatched,
            dispatch,
            batch: self.ctx.settings.apply_batch_events.max(1),
            budget: self.drain_budget.clone(),
        };
        self.spawn_stage("drainer", drainer.run());
        self.draining.send_replace(true);
    }

    /// Reacts to the migration's state: start draining once the copy is complete.
    async fn on_state(&mut self) -> Result<(), WorkerError> {
        let complete = copy_complete(&self.ctx.state.borrow(), &self.ctx.options);
        if self.stage == CdcStage::Spooling && complete {
            info!(task = %self.ctx.task, "copy complete: applying spooled change events");
            self.stage = CdcStage::Draining;
            self.start_drainer();
            self.checkpoint(true).await?;
        }
        // The commit marker is picked up by the next checkpoint (it must be applied first).
        Ok(())
    }

    /// The checkpoint of what is durable now.
    fn compose(&self) -> CdcCheckpoint {
        let pos = self.positions.borrow().clone();
        let applied = self.watermark.applied();
        let live_from = *self.live_from.borrow();
        let stage = match (self.stage, live_from) {
            (CdcStage::Live, _) => CdcStage::Live,
            // Live only once every spooled event is applied: resuming live after the spool's
            // end must not skip a spooled event still in flight.
            (_, Some(from)) if applied.next_seq >= from => CdcStage::Live,
            (stage, _) => stage,
        };
        let (resume_token, next_apply_seq) = if stage == CdcStage::Live {
            (applied.token.or(pos.token), pos.next_seq)
        } else {
            (pos.token, applied.next_seq.min(pos.next_seq))
        };
        let drained_marker = {
            let state = self.ctx.state.borrow();
            // Drained when the marker's insert passed the watermark, or — the insert may lie
            // behind a checkpoint taken before the leader published the marker, and is then
            // never read again — when an event at or after the marker's time is applied in order.
            state
                .commit
                .as_ref()
                .filter(|commit| {
                    applied.markers.contains(&commit.marker_id)
                        || commit.marker_time.zip(applied.cluster_time).is_some_and(|(marker, done)| done >= marker)
                })
                .map(|commit| commit.marker_id.clone())
                .or_else(|| self.saved.drained_marker.clone())
        };
        CdcCheckpoint {
            stage,
            resume_token: resume_token.map(ExtDoc),
            next_spool_seq: pos.next_seq,
            next_apply_seq,
            read_through: pos.read_through,
            applied_through: applied.cluster_time,
            events_spooled: pos.events_spooled,
            events_applied: self.base_applied + applied.events,
            repairs: self.base_repairs + self.repairs.load(Ordering::Relaxed),
            drained_marker,
        }
    }

    /// Saves the checkpoint if it changed (or `force`), then trims or drops the spool.
    async fn checkpoint(&mut self, force: bool) -> Result<(), WorkerError> {
        let checkpoint = self.compose();
        if !force && checkpoint == self.saved {
            return Ok(());
        }
        match self.ctx.checkpoints.save(TaskStatus::Running, CheckpointDetail::ChangeStream(checkpoint.clone())).await {
            Ok(()) => {}
            // The store is briefly unavailable: the next tick tries again (if it stays away,
            // the lease lapses and the runtime cancels us).
            Err(WorkerError::Store(error)) => {
                warn!(task = %self.ctx.task, error = %error, "change stream checkpoint not saved, retrying");
                return Ok(());
            }
            Err(error) => return Err(error),
        }
        let became_live = checkpoint.stage == CdcStage::Live && self.stage != CdcStage::Live;
        let stage_changed = checkpoint.stage != self.saved.stage;
        if checkpoint.drained_marker.is_some() && checkpoint.drained_marker != self.saved.drained_marker {
            info!(task = %self.ctx.task, marker = ?checkpoint.drained_marker, "applied everything up to the commit marker");
        }
        self.stage = checkpoint.stage;
        self.saved = checkpoint;
        self.ctx.counters.cdc_stage.store(stage_number(self.stage), Ordering::Relaxed);
        if stage_changed {
            // Why now: the lag is null while spooling and would stay null until the next lag
            // tick, up to a second after the stage changed; computed now, the runtime's next
            // progress publication carries it, so `/progress` shows a lag from the moment
            // events are applied rather than a null next to `canCommit: true`.
            self.update_lag().await;
        }
        if became_live {
            info!(task = %self.ctx.task, "spool applied: change stream is live");
            // The Live checkpoint is durable, so the spool is no longer needed by anyone.
            if let Err(error) = self.spool.drop().await {
                warn!(error = %error, "could not drop the applied spool; the next holder will");
            }
        } else if self.stage == CdcStage::Draining
            && self.saved.next_apply_seq >= self.trimmed_below + 4 * self.ctx.settings.spool_batch_events as u64
        {
            // Only below a checkpointed `next_apply_seq`: a takeover never needs those entries.
            match self.spool.delete_below(self.saved.next_apply_seq).await {
                Ok(_) => self.trimmed_below = self.saved.next_apply_seq,
                Err(error) => warn!(error = %error, "could not trim the spool; will try again"),
            }
        }
        Ok(())
    }

    /// Updates the lag counter: 0 when everything read is applied and the stream is idle,
    /// otherwise the source's latest write time minus the last applied event's time.
    async fn update_lag(&mut self) {
        let counters = &self.ctx.counters;
        if self.stage == CdcStage::Spooling {
            counters.lag_ms.store(u64::MAX, Ordering::Relaxed);
            return;
        }
        let pos = self.positions.borrow().clone();
        let applied = self.watermark.applied();
        if pos.idle && applied.next_seq >= pos.handed_out && self.watermark.pending() == 0 {
            counters.lag_ms.store(0, Ordering::Relaxed);
            return;
        }
        if let Some(time) = self.poll_source_time().await {
            self.source_time = Some(time);
        }
        let applied_time = applied.cluster_time.unwrap_or(self.task.start_at);
        let lag_ms = match self.source_time {
            Some(source) => u64::from(source.t.saturating_sub(applied_time.t)) * 1000,
            None => {
                let now_s = u64::try_from(clustersync_common::model::now_ms() / 1000).unwrap_or_default();
                now_s.saturating_sub(u64::from(applied_time.t)) * 1000
            }
        };
        counters.lag_ms.store(lag_ms, Ordering::Relaxed);
    }

    /// The source's latest majority-committed write time (`hello.lastWrite.majorityOpTime`),
    /// or its operation time.
    async fn poll_source_time(&self) -> Option<OpTime> {
        let admin = self.ctx.clusters.source.database("admin");
        let reply = tokio::time::timeout(LAG_INTERVAL, admin.run_command(doc! {"hello": 1})).await.ok()?.ok()?;
        let majority = reply
            .get_document("lastWrite")
            .ok()
            .and_then(|last| last.get_document("majorityOpTime").ok())
            .and_then(|optime| optime.get_timestamp("ts").ok());
        let operation_time = match reply.get("operationTime") {
            Some(Bson::Timestamp(ts)) => Some(*ts),
            _ => None,
        };
        majority.or(operation_time).map(OpTime::from)
    }
}
