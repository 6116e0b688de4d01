//! The control operations of a migration — start, pause, resume, commit, reverse, progress —
//! shared by the REST API ([`crate::api`]) and the gRPC API.
//!
//! Every operation is one compare-and-swap of the state document (`{m}/state`) on the
//! `mod_revision` it was read at, so any number of coordinator instances can serve API calls:
//! when two race, exactly one wins and the other re-reads the document and answers from the new
//! state (usually [`ControlError::InvalidState`]). A CAS that fails only because the leader
//! updated the document meanwhile (a phase change) is retried against the new revision. An
//! operation only records the request; the elected leader carries it out.
//!
//! Every rejected call leaves the store unchanged: all checks happen before the single write.
//!
//! # Error names
//!
//! [`ControlError::name`] is the `error` field of a failed REST reply; the names are stable.
//!
//! | name | HTTP | when |
//! |---|---|---|
//! | `InvalidRequest` | 400 | malformed JSON, a body that is not an object, unknown fields, wrong types, missing required fields |
//! | `InvalidOption` | 400 | a value or a combination of `/start` options that is not allowed (including options that do not fit the clusters' topology) |
//! | `InvalidNamespaceFilter` | 400 | an `includeNamespaces` / `excludeNamespaces` entry that is malformed or has a bad regex |
//! | `UnsupportedTopology` | 400 | a cluster cannot take part in a sync (standalone server, MongoDB older than 6.0) |
//! | `InvalidState` | 409 | the operation is not allowed in the current state |
//! | `CommitNotReady` | 409 | `/commit` in RUNNING before `canCommit` is true; the description says what is missing |
//! | `NotSupported` | 501 | the operation is not implemented (`/reverse`) |
//! | `ClusterUnavailable` | 503 | a cluster could not be probed (unreachable, timed out, refused the commands) |
//! | `StoreUnavailable` | 503 | the coordination store did not answer; the call may be retried |
//! | `Busy` | 503 | the state document kept changing under the operation; retry |
//! | `InternalError` | 500 | a bug or a corrupt stored value |
//!
//! The REST layer adds `NotFound` (404) and `MethodNotAllowed` (405) for unknown routes, and
//! `PayloadTooLarge` (413) for oversized bodies.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use clustersync_common::ids::{InstanceId, TaskId};
use clustersync_common::keys::Keys;
use clustersync_common::model::{
    self, BuildIndexes, CdcStage, CheckpointDetail, CommitProgress, CommitStep, Phase, SetupStep, StartOptions,
    SyncState, SyncStateDoc, TaskCheckpoint, TaskSpec, WriteBlocking,
};
use clustersync_common::namespace::{Namespace, NamespaceFilter, validate_database_name};
use clustersync_common::store::{Compare, CompareOp, KeyValue, Revision, Store, StoreError, Txn, TxnOp};
use tracing::{debug, info};

use crate::progress::{self, Progress};
use crate::topology::{ClusterName, ClusterProbe, Topology};

/// Default bound on probing a cluster during `/start`.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(15);

/// How many times a transition re-reads and retries when the state document changed under it
/// but the transition is still allowed (the leader writes the document a few times per phase).
const MAX_CAS_ATTEMPTS: usize = 20;

/// Every error name [`ControlError::name`] can return.
pub const ERROR_NAMES: [&str; 11] = [
    "InvalidRequest",
    "InvalidOption",
    "InvalidNamespaceFilter",
    "UnsupportedTopology",
    "InvalidState",
    "CommitNotReady",
    "NotSupported",
    "ClusterUnavailable",
    "StoreUnavailable",
    "Busy",
    "InternalError",
];

/// Why a control operation was refused or failed. See the module docs for names and statuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// The request itself is malformed (syntax, shape, types, unknown or missing fields).
    #[error("{reason}")]
    InvalidRequest {
        /// What is wrong, naming the field.
        reason: String,
    },
    /// An option value or combination is not allowed.
    #[error("{reason}")]
    InvalidOption {
        /// What is wrong, naming the option.
        reason: String,
    },
    /// A namespace filter entry is invalid.
    #[error("{reason}")]
    InvalidNamespaceFilter {
        /// What is wrong, naming the entry (`includeNamespaces[1]: ...`).
        reason: String,
    },
    /// A cluster cannot take part in a sync.
    #[error("{reason}")]
    UnsupportedTopology {
        /// Why, naming the cluster.
        reason: String,
    },
    /// The operation is not allowed in the current state.
    #[error("cannot {action} while the migration is {}: {reason}", state.as_str())]
    InvalidState {
        /// The operation (`start`, `pause`, ...).
        action: &'static str,
        /// The state the migration is in.
        state: SyncState,
        /// When the operation is allowed, or what to do instead.
        reason: String,
    },
    /// `/commit` before `canCommit`.
    #[error("cannot commit yet: {reason}")]
    CommitNotReady {
        /// What is still missing.
        reason: String,
    },
    /// The operation is not implemented.
    #[error("{reason}")]
    NotSupported {
        /// What is not supported.
        reason: String,
    },
    /// A cluster could not be probed.
    #[error("cannot reach {cluster}: {reason}")]
    ClusterUnavailable {
        /// `cluster0 (the source)`, ...
        cluster: String,
        /// The driver's message, without credentials.
        reason: String,
    },
    /// The coordination store did not answer.
    #[error("coordination store unavailable: {reason}")]
    StoreUnavailable {
        /// What failed.
        reason: String,
    },
    /// The state document kept changing under the operation.
    #[error("the migration state changed {attempts} times while {action} was being applied; try again")]
    Busy {
        /// The operation.
        action: &'static str,
        /// How many times it was tried.
        attempts: usize,
    },
    /// A bug or a corrupt stored value.
    #[error("internal error: {reason}")]
    Internal {
        /// What went wrong.
        reason: String,
    },
}

impl ControlError {
    /// The stable error name (the `error` field of a REST reply).
    pub fn name(&self) -> &'static str {
        match self {
            ControlError::InvalidRequest { .. } => "InvalidRequest",
            ControlError::InvalidOption { .. } => "InvalidOption",
            ControlError::InvalidNamespaceFilter { .. } => "InvalidNamespaceFilter",
            ControlError::UnsupportedTopology { .. } => "UnsupportedTopology",
            ControlError::InvalidState { .. } => "InvalidState",
            ControlError::CommitNotReady { .. } => "CommitNotReady",
            ControlError::NotSupported { .. } => "NotSupported",
            ControlError::ClusterUnavailable { .. } => "ClusterUnavailable",
            ControlError::StoreUnavailable { .. } => "StoreUnavailable",
            ControlError::Busy { .. } => "Busy",
            ControlError::Internal { .. } => "InternalError",
        }
    }

    /// The HTTP status of a REST reply carrying this error.
    pub fn http_status(&self) -> u16 {
        match self {
            ControlError::InvalidRequest { .. }
            | ControlError::InvalidOption { .. }
            | ControlError::InvalidNamespaceFilter { .. }
            | ControlError::UnsupportedTopology { .. } => 400,
            ControlError::InvalidState { .. } | ControlError::CommitNotReady { .. } => 409,
            ControlError::NotSupported { .. } => 501,
            ControlError::ClusterUnavailable { .. }
            | ControlError::StoreUnavailable { .. }
            | ControlError::Busy { .. } => 503,
            ControlError::Internal { .. } => 500,
        }
    }

    /// Whether the same call may succeed later without changing it.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ControlError::ClusterUnavailable { .. }
                | ControlError::StoreUnavailable { .. }
                | ControlError::Busy { .. }
                | ControlError::CommitNotReady { .. }
        )
    }

    /// Shorthand for [`ControlError::InvalidRequest`].
    pub fn invalid_request(reason: impl Into<String>) -> Self {
        ControlError::InvalidRequest { reason: reason.into() }
    }

    /// Shorthand for [`ControlError::InvalidOption`].
    pub fn invalid_option(reason: impl Into<String>) -> Self {
        ControlError::InvalidOption { reason: reason.into() }
    }
}

impl From<StoreError> for ControlError {
    fn from(error: StoreError) -> Self {
        if error.is_retryable() || matches!(error, StoreError::Closed) {
            ControlError::StoreUnavailable { reason: error.to_string() }
        } else {
            ControlError::Internal { reason: error.to_string() }
        }
    }
}

impl From<model::DecodeError> for ControlError {
    fn from(error: model::DecodeError) -> Self {
        ControlError::Internal { reason: error.to_string() }
    }
}

/// The control operations of one migration, over the coordination store.
pub struct Control {
    store: Arc<dyn Store>,
    keys: Keys,
    instance: InstanceId,
    clusters: Arc<dyn ClusterProbe>,
    probe_timeout: Duration,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("store", &self.store.kind())
            .field("keys", &self.keys)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl Control {
    /// Control of the migration whose keys are `keys`, answering as `instance` (reported as
    /// `mongosyncID`), probing the clusters through `clusters`.
    pub fn new(store: Arc<dyn Store>, keys: Keys, instance: InstanceId, clusters: Arc<dyn ClusterProbe>) -> Control {
        Control { store, keys, instance, clusters, probe_timeout: DEFAULT_PROBE_TIMEOUT }
    }

    /// Changes the bound on probing a cluster during `/start`.
    pub fn with_probe_timeout(mut self, timeout: Duration) -> Control {
        self.probe_timeout = timeout;
        self
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The key space of the migration.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// This instance's id.
    pub fn instance(&self) -> &InstanceId {
        &self.instance
    }

    /// Reads the state document and its `mod_revision` (a missing key is IDLE at revision 0).
    ///
    /// # Errors
    ///
    /// `StoreUnavailable` or `InternalError` (the stored value does not decode).
    pub async fn read_state(&self) -> Result<(SyncStateDoc, Revision), ControlError> {
        let current = self.store.get(&self.keys.state()).await?;
        decode_state(current.as_ref())
    }

    /// `POST /start`: checks the options and the clusters, then moves IDLE → RUNNING in the
    /// `setup` phase. The leader does the setup.
    ///
    /// # Errors
    ///
    /// `InvalidOption` / `InvalidNamespaceFilter` for options that are not allowed (alone, in
    /// combination, or for these clusters), `UnsupportedTopology`, `InvalidState` unless IDLE,
    /// `ClusterUnavailable` if a cluster cannot be probed; store errors.
    pub async fn start(&self, options: StartOptions) -> Result<SyncStateDoc, ControlError> {
        validate_start_options(&options)?;
        let (current, _) = self.read_state().await?;
        require_state(&current, "start", &[SyncState::Idle])?;

        let source = cluster_name(&options.source)?;
        let destination = cluster_name(&options.destination)?;
        let (source_topology, destination_topology) =
            futures::future::join(self.probe(source, "source"), self.probe(destination, "destination")).await;
        let (source_topology, destination_topology) = (source_topology?, destination_topology?);
        check_topologies(&options, source, &source_topology, destination, &destination_topology)?;

        let source_hosts = self.clusters.hosts(source);
        let destination_hosts = self.clusters.hosts(destination);
        let started = self
            .transition("start", |doc| {
                require_state(doc, "start", &[SyncState::Idle])?;
                Ok(SyncStateDoc {
                    state: SyncState::Running,
                    phase: Phase::Setup,
                    options: Some(options.clone()),
                    started_at_ms: Some(model::now_ms()),
                    setup_step: SetupStep::Start,
                    source_hosts: Some(source_hosts.clone()),
                    destination_hosts: Some(destination_hosts.clone()),
                    ..SyncStateDoc::default()
                })
            })
            .await?;
        info!(
            source = %options.source,
            destination = %options.destination,
            source_topology = %source_topology.describe(),
            destination_topology = %destination_topology.describe(),
            build_indexes = ?options.build_indexes,
            write_blocking = options.enable_user_write_blocking.as_str(),
            verification = options.verification.enabled,
            "migration started"
        );
        Ok(started)
    }

    /// `POST /pause`: RUNNING → PAUSED, remembering the phase to resume.
    ///
    /// # Errors
    ///
    /// `InvalidState` unless RUNNING; store errors.
    pub async fn pause(&self) -> Result<SyncStateDoc, ControlError> {
        let paused = self
            .transition("pause", |doc| {
                require_state(doc, "pause", &[SyncState::Running])?;
                Ok(SyncStateDoc {
                    state: SyncState::Paused,
                    paused_phase: Some(doc.phase),
                    phase: Phase::Paused,
                    ..doc.clone()
                })
            })
            .await?;
        info!(paused_phase = ?paused.paused_phase, "migration paused");
        Ok(paused)
    }

    /// `POST /resume`: PAUSED → RUNNING, back in the phase it was paused in.
    ///
    /// # Errors
    ///
    /// `InvalidState` unless PAUSED; store errors.
    pub async fn resume(&self) -> Result<SyncStateDoc, ControlError> {
        let resumed = self
            .transition("resume", |doc| {
                require_state(doc, "resume", &[SyncState::Paused])?;
                let phase = doc.paused_phase.unwrap_or(if doc.copy_completed_at_ms.is_some() {
                    Phase::Running
                } else if doc.setup_step == SetupStep::Planned {
                    Phase::Snapshot
                } else {
                    Phase::Setup
                });
                Ok(SyncStateDoc { state: SyncState::Running, phase, paused_phase: None, ..doc.clone() })
            })
            .await?;
        info!(phase = ?resumed.phase, "migration resumed");
        Ok(resumed)
    }

    /// `POST /commit`: RUNNING → COMMITTING once `canCommit` holds; the leader then drains the
    /// change streams up to a marker, restores indexes, verifies and unblocks writes.
    ///
    /// # Errors
    ///
    /// `InvalidState` unless RUNNING, `CommitNotReady` (saying what is missing) until the copy
    /// is done, after-copy indexes are built and every change stream applies events live;
    /// store errors.
    pub async fn commit(&self) -> Result<SyncStateDoc, ControlError> {
        let (current, _) = self.read_state().await?;
        require_state(&current, "commit", &[SyncState::Running])?;
        let (tasks, checkpoints) = self.read_change_stream_tasks().await?;
        let marker_id = uuid::Uuid::new_v4().to_string();
        let committing = self
            .transition("commit", |doc| {
                require_state(doc, "commit", &[SyncState::Running])?;
                commit_readiness(doc, &tasks, &checkpoints)
                    .map_err(|reason| ControlError::CommitNotReady { reason })?;
                Ok(SyncStateDoc {
                    state: SyncState::Committing,
                    phase: Phase::Committing,
                    commit: Some(CommitProgress {
                        requested_at_ms: model::now_ms(),
                        step: CommitStep::Requested,
                        marker_id: marker_id.clone(),
                        marker_time: None,
                    }),
                    ..doc.clone()
                })
            })
            .await?;
        info!(marker_id = %marker_id, "commit requested");
        Ok(committing)
    }

    /// `POST /reverse`: not supported yet. Refused with `InvalidState` outside COMMITTED (and
    /// for a migration not started with `reversible: true`), `NotSupported` otherwise.
    ///
    /// # Errors
    ///
    /// Always: `InvalidState` or `NotSupported`; store errors.
    pub async fn reverse(&self) -> Result<SyncStateDoc, ControlError> {
        let (current, _) = self.read_state().await?;
        require_state(&current, "reverse", &[SyncState::Committed])?;
        if !current.options.as_ref().is_some_and(|options| options.reversible) {
            return Err(ControlError::InvalidState {
                action: "reverse",
                state: current.state,
                reason: "the migration was not started with \"reversible\": true and \"enableUserWriteBlocking\": \
                         \"sourceAndDestination\""
                    .into(),
            });
        }
        Err(ControlError::NotSupported { reason: "reverse sync is not supported yet".into() })
    }

    /// `GET /progress`: one view of the whole fleet, aggregated from the store.
    ///
    /// # Errors
    ///
    /// `StoreUnavailable`, or `InternalError` if the state document does not decode (other
    /// undecodable values are skipped and logged).
    pub async fn progress(&self) -> Result<Progress, ControlError> {
        let hosts = (self.clusters.hosts(ClusterName::Cluster0), self.clusters.hosts(ClusterName::Cluster1));
        progress::collect(self.store.as_ref(), &self.keys, &self.instance, hosts).await
    }

    /// Whether `/commit` would be accepted now, and if not why.
    ///
    /// # Errors
    ///
    /// Store errors.
    pub async fn can_commit(&self) -> Result<Result<(), String>, ControlError> {
        let (current, _) = self.read_state().await?;
        if current.state != SyncState::Running {
            return Ok(Err(format!("the migration is {}", current.state.as_str())));
        }
        let (tasks, checkpoints) = self.read_change_stream_tasks().await?;
        Ok(commit_readiness(&current, &tasks, &checkpoints))
    }

    async fn probe(&self, cluster: ClusterName, role: &str) -> Result<Topology, ControlError> {
        let label = format!("{cluster} (the {role})");
        match tokio::time::timeout(self.probe_timeout, self.clusters.probe(cluster)).await {
            Ok(Ok(topology)) => Ok(topology),
            Ok(Err(error)) => Err(ControlError::ClusterUnavailable { cluster: label, reason: error.to_string() }),
            Err(_) => Err(ControlError::ClusterUnavailable {
                cluster: label,
                reason: format!("no answer within {}s", self.probe_timeout.as_secs_f64()),
            }),
        }
    }

    /// The change-stream tasks and the checkpoints of every task (commit readiness needs the
    /// former's stages).
    async fn read_change_stream_tasks(&self) -> Result<(Vec<TaskId>, HashMap<TaskId, TaskCheckpoint>), ControlError> {
        let (tasks, checkpoints) = futures::future::try_join(
            self.store.get_prefix(&self.keys.tasks_prefix()),
            self.store.get_prefix(&self.keys.checkpoints_prefix()),
        )
        .await?;
        let mut stream_tasks = Vec::new();
        for kv in &tasks.0 {
            let spec: TaskSpec = model::decode(&kv.key, &kv.value)?;
            if let (TaskSpec::ChangeStream(_), Some(id)) = (&spec, self.keys.task_id_of(&kv.key)) {
                stream_tasks.push(id);
            }
        }
        let wanted: BTreeSet<TaskId> = stream_tasks.iter().copied().collect();
        let mut by_task = HashMap::new();
        for kv in &checkpoints.0 {
            if let Some(id) = self.keys.task_id_of(&kv.key).filter(|id| wanted.contains(id)) {
                by_task.insert(id, model::decode::<TaskCheckpoint>(&kv.key, &kv.value)?);
            }
        }
        Ok((stream_tasks, by_task))
    }

    /// Reads the state document, applies `apply` and writes the result if the document has not
    /// changed since the read; on a concurrent change, starts over from the new document.
    async fn transition<F>(&self, action: &'static str, mut apply: F) -> Result<SyncStateDoc, ControlError>
    where
        F: FnMut(&SyncStateDoc) -> Result<SyncStateDoc, ControlError>,
    {
        let key = self.keys.state();
        let mut current = self.store.get(&key).await?;
        for attempt in 1..=MAX_CAS_ATTEMPTS {
            let (doc, revision) = decode_state(current.as_ref())?;
            let mut next = apply(&doc)?;
            next.updated_at_ms = model::now_ms();
            let txn = Txn::new()
                .when([Compare::mod_revision(key.clone(), CompareOp::Equal, revision)])
                .and_then([TxnOp::put(key.clone(), model::encode(&next), None)])
                .or_else([TxnOp::get(key.clone())]);
            let response = self.store.txn(txn).await?;
            if response.succeeded {
                return Ok(next);
            }
            debug!(action, attempt, revision, "state document changed under a transition, re-evaluating");
            current = response.kvs(0).and_then(|kvs| kvs.first()).cloned();
        }
        Err(ControlError::Busy { action, attempts: MAX_CAS_ATTEMPTS })
    }
}

/// Decodes the state document (a missing key is a default, IDLE document at revision 0).
fn decode_state(current: Option<&KeyValue>) -> Result<(SyncStateDoc, Revision), ControlError> {
    match current {
        Some(kv) => Ok((model::decode(&kv.key, &kv.value)?, kv.mod_revision)),
        None => Ok((SyncStateDoc::default(), 0)),
    }
}

fn cluster_name(name: &str) -> Result<ClusterName, ControlError> {
    ClusterName::parse(name).ok_or_else(|| {
        ControlError::invalid_option(format!("unknown cluster {name:?}: expected \"cluster0\" or \"cluster1\""))
    })
}

/// Checks the state is one of `allowed`; the error says where the operation is allowed and,
/// for a failed migration, why it failed.
fn require_state(doc: &SyncStateDoc, action: &'static str, allowed: &[SyncState]) -> Result<(), ControlError> {
    if allowed.contains(&doc.state) {
        return Ok(());
    }
    let allowed_names: Vec<&str> = allowed.iter().map(|state| state.as_str()).collect();
    let mut reason = format!("/{action} is only allowed in {}", allowed_names.join(" or "));
    match (doc.state, action) {
        (SyncState::Failed, _) => {
            if let Some(failure) = &doc.failure {
                reason.push_str(&format!("; the migration failed with {}: {}", failure.error, failure.description));
            }
        }
        (SyncState::Paused, "commit" | "pause") => reason.push_str("; call /resume first"),
        (SyncState::Committing, "commit") => reason.push_str("; the commit is already in progress"),
        (SyncState::Running | SyncState::Paused | SyncState::Committing | SyncState::Committed, "start") => {
            reason.push_str("; a migration has already been started")
        }
        _ => {}
    }
    Err(ControlError::InvalidState { action, state: doc.state, reason })
}

/// Whether a RUNNING migration can commit: the copy is complete, after-copy indexes are built
/// (when asked for), and every change-stream task applies events live. `Err` says what is
/// missing.
pub fn commit_readiness(
    doc: &SyncStateDoc,
    change_stream_tasks: &[TaskId],
    checkpoints: &HashMap<TaskId, TaskCheckpoint>,
) -> Result<(), String> {
    if doc.state != SyncState::Running {
        return Err(format!("the migration is {}, not RUNNING", doc.state.as_str()));
    }
    if doc.copy_completed_at_ms.is_none() {
        return Err(match doc.phase {
            Phase::Setup => "the migration is still being set up; the initial copy has not started".into(),
            _ => "the initial collection copy is not finished; watch collectionCopy in /progress".into(),
        });
    }
    let builds_after_copy = doc.options.as_ref().is_some_and(|options| options.build_indexes.builds_after_copy());
    if builds_after_copy && !doc.after_copy_indexes_built {
        return Err("indexes are still being built after the copy (buildIndexes: afterDataCopy)".into());
    }
    if change_stream_tasks.is_empty() {
        return Err("no change stream is running yet".into());
    }
    let mut behind = Vec::new();
    for id in change_stream_tasks {
        let stage = checkpoints.get(id).and_then(|checkpoint| match &checkpoint.detail {
            CheckpointDetail::ChangeStream(cdc) => Some(cdc.stage),
            _ => None,
        });
        match stage {
            Some(CdcStage::Live) => {}
            Some(CdcStage::Draining) => {
                behind.push(format!("task {id} is applying the events spooled during the copy"))
            }
            Some(CdcStage::Spooling) | None => behind.push(format!("task {id} has not started applying events")),
        }
    }
    if !behind.is_empty() {
        let shown = behind.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
        let more = behind.len().saturating_sub(3);
        let more = if more > 0 { format!(" and {more} more") } else { String::new() };
        return Err(format!("change event application is still catching up: {shown}{more}"));
    }
    Ok(())
}

/// Checks `/start` options on their own, without the clusters: cluster names, the namespace
/// filters, the combinations mongosync refuses, the sharding entries.
///
/// # Errors
///
/// `InvalidOption` or `InvalidNamespaceFilter` naming the option.
pub fn validate_start_options(options: &StartOptions) -> Result<NamespaceFilter, ControlError> {
    for (field, value) in [("source", &options.source), ("destination", &options.destination)] {
        if ClusterName::parse(value).is_none() {
            return Err(ControlError::invalid_option(format!(
                "{field} must be \"cluster0\" or \"cluster1\", got {value:?}"
            )));
        }
    }
    if options.source == options.destination {
        return Err(ControlError::invalid_option(format!(
            "source and destination are both {:?}; one must be \"cluster0\" and the other \"cluster1\"",
            options.source
        )));
    }
    let filter = NamespaceFilter::new(&options.include_namespaces, &options.exclude_namespaces)
        .map_err(|reason| ControlError::InvalidNamespaceFilter { reason })?;

    if options.reversible {
        if options.build_indexes == BuildIndexes::Never {
            return Err(ControlError::invalid_option(
                "reversible: true cannot be combined with buildIndexes: \"never\" (a reversed sync needs the indexes)",
            ));
        }
        if options.enable_user_write_blocking != WriteBlocking::SourceAndDestination {
            return Err(ControlError::invalid_option(format!(
                "reversible: true needs enableUserWriteBlocking: \"sourceAndDestination\" (or true), got {:?}",
                options.enable_user_write_blocking.as_str()
            )));
        }
        if !filter.is_unfiltered() {
            return Err(ControlError::invalid_option(
                "reversible: true cannot be combined with includeNamespaces or excludeNamespaces (filtered syncs are not reversible)",
            ));
        }
    }

    if let Some(sharding) = &options.sharding {
        let mut seen = BTreeSet::new();
        for (index, entry) in sharding.sharding_entries.iter().enumerate() {
            let at =
                |reason: String| ControlError::invalid_option(format!("sharding.shardingEntries[{index}]: {reason}"));
            validate_database_name(&entry.database).map_err(at)?;
            if entry.collection.is_empty() {
                return Err(at("collection is empty".into()));
            }
            if entry.collection.contains(['$', '\0']) {
                return Err(at(format!("collection {:?} contains '$' or a NUL character", entry.collection)));
            }
            let ns = Namespace::new(&entry.database, &entry.collection);
            if ns.is_never_copied() {
                return Err(at(format!("{ns} is an internal or system namespace and is never synced")));
            }
            if !filter.includes(&ns) {
                return Err(at(format!("{ns} is not included by the namespace filters")));
            }
            if !seen.insert(ns.clone()) {
                return Err(at(format!("{ns} is listed more than once")));
            }
            validate_shard_key(&entry.shard_collection.key).map_err(at)?;
        }
    }
    Ok(filter)
}

/// A shard key is a non-empty list of one-field documents `{field: 1}` or `{field: "hashed"}`,
/// with at most one hashed field and no field twice.
fn validate_shard_key(key: &[clustersync_common::extjson::ExtDoc]) -> Result<(), String> {
    if key.is_empty() {
        return Err("shardCollection.key is empty".into());
    }
    let mut fields = BTreeSet::new();
    let mut hashed = 0;
    for (position, part) in key.iter().enumerate() {
        let mut entries = part.0.iter();
        let (Some((field, value)), None) = (entries.next(), entries.next()) else {
            return Err(format!("shardCollection.key[{position}] must be a document with exactly one field"));
        };
        if field.is_empty() || field.starts_with('$') {
            return Err(format!("shardCollection.key[{position}]: invalid field name {field:?}"));
        }
        let is_one = match value {
            bson::Bson::Int32(1) | bson::Bson::Int64(1) => true,
            bson::Bson::Double(number) => *number == 1.0,
            _ => false,
        };
        if value.as_str() == Some("hashed") {
            hashed += 1;
        } else if !is_one {
            return Err(format!("shardCollection.key[{position}]: {field} must be 1 or \"hashed\", got {value}"));
        }
        if !fields.insert(field.clone()) {
            return Err(format!("shardCollection.key: field {field} appears twice"));
        }
    }
    if hashed > 1 {
        return Err("shardCollection.key may have at most one hashed field".into());
    }
    Ok(())
}

/// Checks the options against what the clusters are.
fn check_topologies(
    options: &StartOptions,
    source: ClusterName,
    source_topology: &Topology,
    destination: ClusterName,
    destination_topology: &Topology,
) -> Result<(), ControlError> {
    let source_label = format!("{source} (the source)");
    let destination_label = format!("{destination} (the destination)");
    source_topology.check_supported(&source_label).map_err(|reason| ControlError::UnsupportedTopology { reason })?;
    destination_topology
        .check_supported(&destination_label)
        .map_err(|reason| ControlError::UnsupportedTopology { reason })?;

    match &options.sharding {
        Some(_) if source_topology.is_sharded() => {
            return Err(ControlError::invalid_option(format!(
                "the sharding option is only for syncing a replica set to a sharded cluster, but the source {source} is a \
                 {} (sharded collections keep their shard keys); remove the sharding option",
                source_topology.describe()
            )));
        }
        Some(_) if !destination_topology.is_sharded() => {
            return Err(ControlError::invalid_option(format!(
                "the sharding option is only for syncing to a sharded cluster, but the destination {destination} is a {}; \
                 remove the sharding option",
                destination_topology.describe()
            )));
        }
        None if source_topology.is_replica_set() && destination_topology.is_sharded() => {
            return Err(ControlError::invalid_option(format!(
                "syncing a replica set to a sharded cluster needs the sharding option: the destination {destination} is a \
                 {}; list the collections to shard in sharding.shardingEntries (an empty list shards none)",
                destination_topology.describe()
            )));
        }
        _ => {}
    }

    if options.reversible {
        let same_shape = source_topology.is_sharded() == destination_topology.is_sharded()
            && source_topology.shard_count() == destination_topology.shard_count();
        if !same_shape {
            return Err(ControlError::invalid_option(format!(
                "reversible: true needs two clusters of the same shape, but the source is a {} and the destination a {}",
                source_topology.describe(),
                destination_topology.describe()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clustersync_common::model::{CdcCheckpoint, TaskStatus};
    use serde_json::json;

    use super::*;

    fn options(value: serde_json::Value) -> StartOptions {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn error_names_statuses_and_retryability_are_stable() {
        let cases = [
            (ControlError::invalid_request("x"), "InvalidRequest", 400, false),
            (ControlError::invalid_option("x"), "InvalidOption", 400, false),
            (ControlError::InvalidNamespaceFilter { reason: "x".into() }, "InvalidNamespaceFilter", 400, false),
            (ControlError::UnsupportedTopology { reason: "x".into() }, "UnsupportedTopology", 400, false),
            (
                ControlError::InvalidState { action: "pause", state: SyncState::Idle, reason: "x".into() },
                "InvalidState",
                409,
                false,
            ),
            (ControlError::CommitNotReady { reason: "x".into() }, "CommitNotReady", 409, true),
            (ControlError::NotSupported { reason: "x".into() }, "NotSupported", 501, false),
            (
                ControlError::ClusterUnavailable { cluster: "c".into(), reason: "x".into() },
                "ClusterUnavailable",
                503,
                true,
            ),
            (ControlError::StoreUnavailable { reason: "x".into() }, "StoreUnavailable", 503, true),
            (ControlError::Busy { action: "pause", attempts: 3 }, "Busy", 503, true),
            (ControlError::Internal { reason: "x".into() }, "InternalError", 500, false),
        ];
        assert_eq!(cases.len(), ERROR_NAMES.len());
        for (error, name, status, retryable) in cases {
            assert_eq!(error.name(), name);
            assert!(ERROR_NAMES.contains(&name));
            assert_eq!(error.http_status(), status, "{name}");
            assert_eq!(error.is_retryable(), retryable, "{name}");
        }
        let from_store: ControlError = StoreError::unavailable("timeout").into();
        assert_eq!(from_store.name(), "StoreUnavailable");
        let from_store: ControlError = StoreError::invalid_request("bad").into();
        assert_eq!(from_store.name(), "InternalError");
    }

    #[test]
    fn invalid_state_messages_say_where_the_operation_is_allowed() {
        let doc = SyncStateDoc { state: SyncState::Paused, ..Default::default() };
        let error = require_state(&doc, "commit", &[SyncState::Running]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "cannot commit while the migration is PAUSED: /commit is only allowed in RUNNING; call /resume first"
        );
        let failed = SyncStateDoc {
            state: SyncState::Failed,
            failure: Some(model::Failure {
                error: "ChangeStreamHistoryLost".into(),
                description: "the resume point left the oplog".into(),
                namespace: None,
                range: None,
                at_ms: 1,
            }),
            ..Default::default()
        };
        let message = require_state(&failed, "pause", &[SyncState::Running]).unwrap_err().to_string();
        assert!(message.contains("ChangeStreamHistoryLost"), "{message}");
    }

    #[test]
    fn static_option_rules() {
        let base = json!({"source": "cluster0", "destination": "cluster1"});
        validate_start_options(&options(base.clone())).unwrap();
        let reject = |value: serde_json::Value, name: &str, text: &str| {
            let error = validate_start_options(&options(value.clone())).unwrap_err();
            assert_eq!(error.name(), name, "{value}: {error}");
            assert!(error.to_string().contains(text), "{value}: {error}");
        };
        reject(json!({"source": "cluster2", "destination": "cluster1"}), "InvalidOption", "source must be");
        reject(json!({"source": "cluster0", "destination": "Cluster1"}), "InvalidOption", "destination must be");
        reject(json!({"source": "cluster1", "destination": "cluster1"}), "InvalidOption", "both");
        reject(
            json!({"source": "cluster0", "destination": "cluster1", "reversible": true, "enableUserWriteBlocking": true, "buildIndexes": "never"}),
            "InvalidOption",
            "buildIndexes",
        );
        reject(
            json!({"source": "cluster0", "destination": "cluster1", "reversible": true}),
            "InvalidOption",
            "sourceAndDestination",
        );
        reject(
            json!({"source": "cluster0", "destination": "cluster1", "reversible": true, "enableUserWriteBlocking": "none"}),
            "InvalidOption",
            "\"none\"",
        );
        reject(
            json!({"source": "cluster0", "destination": "cluster1", "reversible": true, "enableUserWriteBlocking": true,
                   "excludeNamespaces": [{"database": "x"}]}),
            "InvalidOption",
            "filtered",
        );
        reject(
            json!({"source": "cluster0", "destination": "cluster1", "includeNamespaces": [{"database": "a", "collectionsRegex": {"pattern": "("}}]}),
            "InvalidNamespaceFilter",
            "includeNamespaces[0]",
        );
        // verification with buildIndexes: never is allowed (the TTL rule is enforced later).
        validate_start_options(&options(
            json!({"source": "cluster1", "destination": "cluster0", "buildIndexes": "never", "verification": {"enabled": true}}),
        ))
        .unwrap();
        validate_start_options(&options(
            json!({"source": "cluster0", "destination": "cluster1", "reversible": true, "enableUserWriteBlocking": "sourceAndDestination"}),
        ))
        .unwrap();
    }

    #[test]
    fn sharding_entries_are_checked() {
        let with_entries = |entries: serde_json::Value| {
            options(json!({"source": "cluster0", "destination": "cluster1", "sharding": {"shardingEntries": entries}}))
        };
        validate_start_options(&with_entries(json!([
            {"database": "a", "collection": "b", "shardCollection": {"key": [{"x": 1}, {"y": "hashed"}]}}
        ])))
        .unwrap();
        validate_start_options(&with_entries(json!([]))).unwrap();
        let reject = |entries: serde_json::Value, text: &str| {
            let error = validate_start_options(&with_entries(entries.clone())).unwrap_err();
            assert_eq!(error.name(), "InvalidOption");
            assert!(error.to_string().contains(text), "{entries}: {error}");
            assert!(error.to_string().contains("sharding.shardingEntries["), "{error}");
        };
        reject(json!([{"database": "a", "collection": "b", "shardCollection": {"key": []}}]), "key is empty");
        reject(json!([{"database": "a", "collection": "b", "shardCollection": {"key": [{"x": -1}]}}]), "must be 1 or");
        reject(
            json!([{"database": "a", "collection": "b", "shardCollection": {"key": [{"x": 1, "y": 1}]}}]),
            "exactly one field",
        );
        reject(
            json!([{"database": "a", "collection": "b", "shardCollection": {"key": [{"x": "hashed"}, {"y": "hashed"}]}}]),
            "at most one hashed",
        );
        reject(
            json!([{"database": "a.b", "collection": "c", "shardCollection": {"key": [{"x": 1}]}}]),
            "forbidden character",
        );
        reject(
            json!([{"database": "admin", "collection": "c", "shardCollection": {"key": [{"x": 1}]}}]),
            "never synced",
        );
        reject(
            json!([{"database": "a", "collection": "b", "shardCollection": {"key": [{"x": 1}]}},
                   {"database": "a", "collection": "b", "shardCollection": {"key": [{"y": 1}]}}]),
            "more than once",
        );
    }

    #[test]
    fn topology_rules() {
        let rs = Topology::replica_set("rs", "7.0.0");
        let sharded2 = Topology::sharded(&["a", "b"], "7.0.0");
        let sharded3 = Topology::sharded(&["a", "b", "c"], "7.0.0");
        let c0 = ClusterName::Cluster0;
        let c1 = ClusterName::Cluster1;
        let plain = options(json!({"source": "cluster0", "destination": "cluster1"}));
        let sharding =
            options(json!({"source": "cluster0", "destination": "cluster1", "sharding": {"shardingEntries": []}}));
        let reversible = options(
            json!({"source": "cluster0", "destination": "cluster1", "reversible": true, "enableUserWriteBlocking": true}),
        );

        check_topologies(&plain, c0, &rs, c1, &rs).unwrap();
        check_topologies(&plain, c0, &sharded2, c1, &sharded3).unwrap();
        check_topologies(&sharding, c0, &rs, c1, &sharded2).unwrap();
        check_topologies(&reversible, c0, &sharded2, c1, &sharded2).unwrap();

        let error = check_topologies(&sharding, c0, &rs, c1, &rs).unwrap_err();
        assert!(error.to_string().contains("destination cluster1 is a replica set"), "{error}");
        let error = check_topologies(&sharding, c0, &sharded2, c1, &sharded2).unwrap_err();
        assert!(error.to_string().contains("source cluster0 is a sharded cluster"), "{error}");
        let error = check_topologies(&plain, c0, &rs, c1, &sharded2).unwrap_err();
        assert!(error.to_string().contains("needs the sharding option"), "{error}");
        let error = check_topologies(&reversible, c0, &sharded2, c1, &sharded3).unwrap_err();
        assert!(error.to_string().contains("same shape"), "{error}");
        let reversible_to_sharded =
            options(json!({"source": "cluster0", "destination": "cluster1", "reversible": true,
            "enableUserWriteBlocking": true, "sharding": {"shardingEntries": []}}));
        assert!(check_topologies(&reversible_to_sharded, c0, &rs, c1, &sharded2).is_err());

        let old = Topology::replica_set("rs", "5.0.0");
        let error = check_topologies(&plain, c0, &rs, c1, &old).unwrap_err();
        assert_eq!(error.name(), "UnsupportedTopology");
        assert!(error.to_string().contains("cluster1 (the destination)"), "{error}");
    }

    fn cdc_checkpoint(stage: CdcStage) -> TaskCheckpoint {
        TaskCheckpoint {
            status: TaskStatus::Running,
            detail: CheckpointDetail::ChangeStream(CdcCheckpoint { stage, ..Default::default() }),
            holder: InstanceId::new("w1").unwrap(),
            updated_at_ms: 1,
        }
    }

    #[test]
    fn commit_readiness_names_what_is_missing() {
        let mut doc = SyncStateDoc {
            state: SyncState::Running,
            phase: Phase::Snapshot,
            options: Some(options(
                json!({"source": "cluster0", "destination": "cluster1", "buildIndexes": "afterDataCopy"}),
            )),
            ..Default::default()
        };
        let tasks = [TaskId(1), TaskId(2)];
        let mut checkpoints = HashMap::new();
        assert!(commit_readiness(&doc, &tasks, &checkpoints).unwrap_err().contains("copy is not finished"));
        doc.copy_completed_at_ms = Some(5);
        doc.phase = Phase::Running;
        assert!(commit_readiness(&doc, &tasks, &checkpoints).unwrap_err().contains("afterDataCopy"));
        doc.after_copy_indexes_built = true;
        assert!(commit_readiness(&doc, &[], &checkpoints).unwrap_err().contains("no change stream"));
        checkpoints.insert(TaskId(1), cdc_checkpoint(CdcStage::Live));
        checkpoints.insert(TaskId(2), cdc_checkpoint(CdcStage::Draining));
        let reason = commit_readiness(&doc, &tasks, &checkpoints).unwrap_err();
        assert!(reason.contains("task 2") && !reason.contains("task 1"), "{reason}");
        checkpoints.insert(TaskId(2), cdc_checkpoint(CdcStage::Live));
        commit_readiness(&doc, &tasks, &checkpoints).unwrap();
        doc.state = SyncState::Paused;
        assert!(commit_readiness(&doc, &tasks, &checkpoints).is_err());
    }
}
