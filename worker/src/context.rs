//! What a task executor is given: the clusters, its fenced checkpoint writer, the migration's
//! state, cancellation and live counters.
//!
//! Executors (copy, change stream, verify) never touch the coordination store directly: they
//! save checkpoints through [`CheckpointWriter`], whose every write is a transaction that only
//! succeeds while our claim on the task — identified by its fencing token — still exists. A
//! holder whose lease expired therefore cannot overwrite the progress of the task's new holder.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use clustersync_common::claim::{self, ClaimError, FencingToken};
use clustersync_common::ids::{InstanceId, TaskId};
use clustersync_common::keys::Keys;
use clustersync_common::lease::LeaseHandle;
use clustersync_common::model::{self, CheckpointDetail, StartOptions, SyncStateDoc, TaskCheckpoint, TaskStatus};
use clustersync_common::namespace::NamespaceFilter;
use clustersync_common::store::Store;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::error::WorkerError;
use crate::mongo::Clusters;
use crate::settings::WorkerSettings;

/// Writes a task's checkpoint, fenced on the task's claim.
#[derive(Clone)]
pub struct CheckpointWriter {
    store: Arc<dyn Store>,
    keys: Keys,
    task: TaskId,
    token: FencingToken,
    holder: InstanceId,
    /// The lease the claim hangs on (set by the runtime), for [`TaskContext::lease_bound`].
    lease: Option<LeaseHandle>,
}

impl CheckpointWriter {
    pub fn new(store: Arc<dyn Store>, keys: Keys, task: TaskId, token: FencingToken, holder: InstanceId) -> Self {
        Self { store, keys, task, token, holder, lease: None }
    }

    /// Binds the writer to the lease its claim is attached to.
    pub fn with_lease(mut self, lease: LeaseHandle) -> Self {
        self.lease = Some(lease);
        self
    }

    /// Saves a checkpoint. `WorkerError::Fenced` if the claim is no longer ours (stop at once).
    pub async fn save(&self, status: TaskStatus, detail: CheckpointDetail) -> Result<(), WorkerError> {
        let checkpoint = TaskCheckpoint { status, detail, holder: self.holder.clone(), updated_at_ms: model::now_ms() };
        let result = claim::fenced_put(
            self.store.as_ref(),
            &self.keys.claim(self.task),
            self.token,
            &self.keys.checkpoint(self.task),
            model::encode(&checkpoint),
        )
        .await;
        match result {
            Ok(()) => Ok(()),
            Err(ClaimError::Fenced { .. }) => Err(WorkerError::Fenced { task: self.task }),
            Err(other) => Err(WorkerError::Store(other.to_string())),
        }
    }

    pub fn task(&self) -> TaskId {
        self.task
    }
}

/// Live counters of one running task, read by the progress publisher.
#[derive(Debug, Default)]
pub struct TaskCounters {
    pub documents: AtomicU64,
    pub bytes: AtomicU64,
    /// Change events applied by this task since it was claimed.
    pub events_applied: AtomicU64,
    /// Lag in milliseconds (change-stream tasks), `u64::MAX` when unknown.
    pub lag_ms: AtomicU64,
    /// `CdcStage` as a number (0 spooling, 1 draining, 2 live), `u64::MAX` when not applicable.
    pub cdc_stage: AtomicU64,
}

impl TaskCounters {
    pub fn new() -> Self {
        Self { lag_ms: AtomicU64::new(u64::MAX), cdc_stage: AtomicU64::new(u64::MAX), ..Default::default() }
    }

    pub fn add(&self, documents: u64, bytes: u64) {
        self.documents.fetch_add(documents, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// Everything an executor needs to run one claimed task.
#[derive(Clone)]
pub struct TaskContext {
    pub task: TaskId,
    pub clusters: Arc<Clusters>,
    pub checkpoints: CheckpointWriter,
    /// The checkpoint the previous holder left, if any: resume from it.
    pub previous: Option<TaskCheckpoint>,
    /// The migration's state document, kept current by the runtime (copy completion, commit
    /// marker, pause). Executors `changed().await` on it.
    pub state: watch::Receiver<SyncStateDoc>,
    /// Fires when the task must stop: pause, release, shutdown, or our lease nearing expiry.
    pub cancel: CancellationToken,
    pub counters: Arc<TaskCounters>,
    pub options: Arc<StartOptions>,
    pub filter: Arc<NamespaceFilter>,
    pub settings: Arc<WorkerSettings>,
    /// Name used for the internal spool/marker collections of this migration.
    pub migration: String,
}

impl TaskContext {
    /// The current state document.
    pub fn state_now(&self) -> SyncStateDoc {
        self.state.borrow().clone()
    }

    /// Returns `Cancelled` if the task must stop.
    pub fn check_cancelled(&self) -> Result<(), WorkerError> {
        if self.cancel.is_cancelled() { Err(WorkerError::Cancelled) } else { Ok(()) }
    }

    /// Guards a future the executor spawns as a task of its own (a change stream's reader,
    /// appliers...): it is never polled once the lease of our claim has passed its deadline,
    /// and then ends with `Cancelled`.
    ///
    /// The runtime guards the executor's own future that way (see
    /// [`LeaseBound`](crate::runtime::LeaseBound)), but a spawned task is polled on its own:
    /// in a process thawed after a freeze longer than the lease it may run before the lease
    /// keeper has cancelled anything, and write to the destination after another worker took
    /// the task over. Without a lease (tests that build a context by hand) the future runs as is.
    pub fn lease_bound<T: Send + 'static>(
        &self,
        future: impl Future<Output = Result<T, WorkerError>> + Send + 'static,
    ) -> impl Future<Output = Result<T, WorkerError>> + Send + 'static {
        let lease = self.checkpoints.lease.clone();
        async move {
            match lease {
                Some(lease) => {
                    crate::runtime::LeaseBound::new(lease, future).await.unwrap_or(Err(WorkerError::Cancelled))
                }
                None => future.await,
            }
        }
    }
}
