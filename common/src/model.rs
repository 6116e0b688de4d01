//! The values stored under the keys of [`crate::keys`]: the migration's state document, its
//! plan, the claimable tasks, their fenced checkpoints, and live per-process progress.
//!
//! Every value is JSON (see [`encode`] / [`decode`]); BSON values inside use canonical Extended
//! JSON ([`crate::extjson`]). These types are the whole contract between the coordinator and the
//! workers: they never call each other, they only read and write these.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::extjson::{ExtBson, ExtDoc, OpTime};
use crate::ids::{CollectionId, InstanceId, ShardId, TaskId};
use crate::namespace::{Namespace, NamespaceFilterSpec};

/// Encodes a store value.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("store values always serialize to JSON")
}

/// Decodes a store value; the error names the key.
pub fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, DecodeError> {
    serde_json::from_slice(bytes).map_err(|e| DecodeError { key: key.to_string(), reason: e.to_string() })
}

/// A store value that does not parse: another version wrote it, or it was edited by hand.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot decode the value of {key}: {reason}")]
pub struct DecodeError {
    pub key: String,
    pub reason: String,
}

/// Milliseconds since the Unix epoch, for timestamps in store values.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// /start options
// ---------------------------------------------------------------------------------------------

/// `buildIndexes` of `/start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum BuildIndexes {
    /// Indexes exist on the destination before the copy starts (the default).
    #[default]
    BeforeDataCopy,
    /// Indexes are built once the copy has finished, before change events are applied.
    AfterDataCopy,
    /// Like `beforeDataCopy`, without hashed indexes.
    ExcludeHashed,
    /// Like `afterDataCopy`, without hashed indexes.
    ExcludeHashedAfterCopy,
    /// Only `_id` (and what sharding needs).
    Never,
}

impl BuildIndexes {
    pub fn builds_secondary_indexes(self) -> bool {
        self != Self::Never
    }
    pub fn builds_after_copy(self) -> bool {
        matches!(self, Self::AfterDataCopy | Self::ExcludeHashedAfterCopy)
    }
    pub fn excludes_hashed(self) -> bool {
        matches!(self, Self::ExcludeHashed | Self::ExcludeHashedAfterCopy)
    }
}

/// `enableUserWriteBlocking` of `/start`: a string, or `true`/`false` for compatibility.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriteBlocking {
    /// Destination writes blocked until `canWrite` (the default).
    #[default]
    DestinationOnly,
    /// Destination blocked during the sync, source blocked from `/commit` on (`true`).
    SourceAndDestination,
    /// No write blocking (`false`).
    None,
}

impl WriteBlocking {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DestinationOnly => "destinationOnly",
            Self::SourceAndDestination => "sourceAndDestination",
            Self::None => "none",
        }
    }
    pub fn blocks_destination(self) -> bool {
        self != Self::None
    }
    pub fn blocks_source(self) -> bool {
        self == Self::SourceAndDestination
    }
}

impl Serialize for WriteBlocking {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for WriteBlocking {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Str(String),
        }
        match Raw::deserialize(deserializer).map_err(|_| {
            serde::de::Error::custom(
                "enableUserWriteBlocking must be \"sourceAndDestination\", \"destinationOnly\", \"none\", true or false",
            )
        })? {
            Raw::Bool(true) => Ok(Self::SourceAndDestination),
            Raw::Bool(false) => Ok(Self::None),
            Raw::Str(s) => match s.as_str() {
                "sourceAndDestination" => Ok(Self::SourceAndDestination),
                "destinationOnly" => Ok(Self::DestinationOnly),
                "none" => Ok(Self::None),
                other => Err(serde::de::Error::custom(format!(
                    "unknown enableUserWriteBlocking value {other:?} (expected \"sourceAndDestination\", \"destinationOnly\" or \"none\")"
                ))),
            },
        }
    }
}

/// `sharding.shardingEntries[]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ShardingEntry {
    pub database: String,
    pub collection: String,
    pub shard_collection: ShardCollectionSpec,
}

/// `sharding.shardingEntries[].shardCollection`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardCollectionSpec {
    /// The shard key, as a list of one-field documents (`[{location: 1}, {region: 1}]`).
    pub key: Vec<ExtDoc>,
}

/// `sharding` of `/start` (replica set → sharded cluster only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ShardingOptions {
    #[serde(default)]
    pub create_supporting_indexes: bool,
    pub sharding_entries: Vec<ShardingEntry>,
}

/// `verification` of `/start`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VerificationOptions {
    #[serde(default = "default_true")]
    pub enabled: bool,
}

impl Default for VerificationOptions {
    fn default() -> Self {
        Self { enabled: true }
    }
}

fn default_true() -> bool {
    true
}

/// The validated body of `POST /api/v1/start`, kept in the state document for the whole migration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StartOptions {
    /// Name of the source cluster: `cluster0` or `cluster1`.
    pub source: String,
    /// Name of the destination cluster: the other one.
    pub destination: String,
    #[serde(default)]
    pub build_indexes: BuildIndexes,
    #[serde(default)]
    pub enable_user_write_blocking: WriteBlocking,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include_namespaces: Vec<NamespaceFilterSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_namespaces: Vec<NamespaceFilterSpec>,
    #[serde(default)]
    pub reversible: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sharding: Option<ShardingOptions>,
    #[serde(default)]
    pub verification: VerificationOptions,
}

impl StartOptions {
    /// True when `source` is `cluster0` (the usual direction).
    pub fn source_is_cluster0(&self) -> bool {
        self.source == "cluster0"
    }
}

// ---------------------------------------------------------------------------------------------
// state document
// ---------------------------------------------------------------------------------------------

/// mongosync's states, plus FAILED.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SyncState {
    #[default]
    Idle,
    Running,
    Paused,
    Committing,
    Committed,
    Reversing,
    /// A migration that cannot be correct: the reason is in [`SyncStateDoc::failure`].
    Failed,
}

impl SyncState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "IDLE",
            Self::Running => "RUNNING",
            Self::Paused => "PAUSED",
            Self::Committing => "COMMITTING",
            Self::Committed => "COMMITTED",
            Self::Reversing => "REVERSING",
            Self::Failed => "FAILED",
        }
    }
    /// States in which workers do data work (copy, change application, verification).
    pub fn workers_active(self) -> bool {
        matches!(self, Self::Running | Self::Committing)
    }
}

/// The lifecycle phase (setup → snapshot → running → paused → completed / failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum Phase {
    #[default]
    Idle,
    /// Checking the clusters, taking the change-stream start point, planning, creating collections.
    Setup,
    /// The initial copy (change events are spooled meanwhile).
    Snapshot,
    /// Change data capture: spooled then live events are applied.
    Running,
    Paused,
    /// Commit in progress (drain, index restore, verification).
    Committing,
    Completed,
    Failed,
}

/// Steps of the setup phase; each is idempotent, so a new leader resumes at the recorded step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum SetupStep {
    /// Nothing done yet.
    #[default]
    Start,
    /// Destination writes are blocked (when the options ask for it).
    WritesBlocked,
    /// The change-stream start point is recorded and the change-stream tasks exist.
    StreamStartRecorded,
    /// Collections planned, created on the destination (with indexes if `beforeDataCopy`), copy tasks written.
    Planned,
}

/// Steps of `/commit`, in order; each is idempotent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum CommitStep {
    /// Commit requested.
    #[default]
    Requested,
    /// Source writes blocked (when `sourceAndDestination`).
    SourceBlocked,
    /// The commit marker is written on the source; change streams drain up to it.
    MarkerWritten,
    /// Every change-stream task has applied everything up to the marker.
    Drained,
    /// Indexes, TTLs, hidden flags, unique constraints and capped limits are back as on the source.
    IndexesRestored,
    /// Verification tasks are written and running (skipped when verification is off).
    Verifying,
    /// Verification passed (or was off); destination writes unblocked, `canWrite` is true.
    Done,
}

/// Why a migration failed, as shown by `/progress`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    /// A stable error name, e.g. `ChangeStreamHistoryLost`, `VerificationFailed`.
    pub error: String,
    /// What happened, lowercase, with the namespace and range when known.
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The `_id` range concerned, rendered as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<String>,
    pub at_ms: i64,
}

/// Commit progress kept in the state document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommitProgress {
    pub requested_at_ms: i64,
    pub step: CommitStep,
    /// Id of the marker document written on the source; change-stream tasks report it drained.
    pub marker_id: String,
    /// The marker's operation time on the source, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marker_time: Option<OpTime>,
}

/// The one state document of a migration (`{m}/state`). Every change is a compare-and-swap on
/// its `mod_revision`, so concurrent API calls on different instances cannot both win.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct SyncStateDoc {
    pub state: SyncState,
    pub phase: Phase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<StartOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<i64>,
    #[serde(default)]
    pub setup_step: SetupStep,
    /// Where every change stream starts: taken before any document is copied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_stream_start: Option<OpTime>,
    /// Set when every copy task is done; change events may be applied from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_completed_at_ms: Option<i64>,
    /// Source operation time when the copy completed: events up to here overlap the copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_completed_time: Option<OpTime>,
    /// `afterDataCopy`: indexes built once the copy completed.
    #[serde(default)]
    pub after_copy_indexes_built: bool,
    /// Destination writes are blocked by us (to be undone at `canWrite`).
    #[serde(default)]
    pub destination_writes_blocked: bool,
    /// Source writes are blocked by us (`sourceAndDestination`, from commit on).
    #[serde(default)]
    pub source_writes_blocked: bool,
    #[serde(default)]
    pub can_write: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<CommitProgress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// Phase to go back to on `/resume`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_phase: Option<Phase>,
    /// `host:port` lists of the clusters (no credentials), for `directionMapping`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_hosts: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_hosts: Option<String>,
    /// The source shards (a replica set is one shard).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_shards: Vec<ShardId>,
    pub updated_at_ms: i64,
}

// ---------------------------------------------------------------------------------------------
// plan
// ---------------------------------------------------------------------------------------------

/// What kind of namespace a planned entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CollectionKind {
    Collection,
    View,
    Timeseries,
}

/// One source namespace in the plan (`{m}/plan/collections/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedCollection {
    pub id: CollectionId,
    pub ns: Namespace,
    pub kind: CollectionKind,
    /// `listCollections` options on the source, as they were at planning time.
    pub options: ExtDoc,
    /// Source collection UUID (hex), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_uuid: Option<String>,
    pub estimated_documents: u64,
    pub estimated_bytes: u64,
    /// Number of copy tasks the collection was split into.
    pub partitions: u32,
}

// ---------------------------------------------------------------------------------------------
// tasks
// ---------------------------------------------------------------------------------------------

/// BSON type brackets of `_id` values. MongoDB's comparison operators only match values of the
/// same bracket as their operand ("type bracketing"), so a copy range never spans two brackets;
/// each bracket present in a collection is split on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum IdBracket {
    MinKey,
    Null,
    Number,
    String,
    Object,
    BinData,
    ObjectId,
    Bool,
    Date,
    Timestamp,
    Regex,
    MaxKey,
    /// Every `_id` whose type is in none of the brackets above (e.g. JavaScript code).
    Other,
    /// The whole collection, no `_id` condition (small collections, natural-order copies).
    All,
}

impl IdBracket {
    /// The brackets listed by type (everything but `Other` and `All`), in BSON order.
    pub const TYPED: [IdBracket; 12] = [
        IdBracket::MinKey,
        IdBracket::Null,
        IdBracket::Number,
        IdBracket::String,
        IdBracket::Object,
        IdBracket::BinData,
        IdBracket::ObjectId,
        IdBracket::Bool,
        IdBracket::Date,
        IdBracket::Timestamp,
        IdBracket::Regex,
        IdBracket::MaxKey,
    ];

    /// The `$type` aliases of a typed bracket.
    pub fn type_aliases(self) -> &'static [&'static str] {
        match self {
            Self::MinKey => &["minKey"],
            Self::Null => &["null", "undefined"],
            Self::Number => &["double", "int", "long", "decimal"],
            Self::String => &["string", "symbol"],
            Self::Object => &["object"],
            Self::BinData => &["binData"],
            Self::ObjectId => &["objectId"],
            Self::Bool => &["bool"],
            Self::Date => &["date"],
            Self::Timestamp => &["timestamp"],
            Self::Regex => &["regex"],
            Self::MaxKey => &["maxKey"],
            Self::Other | Self::All => &[],
        }
    }
}

/// A range of `_id` values within one bracket: `lower <= _id < upper`; a missing bound is open.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdRange {
    pub bracket: IdBracket,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lower: Option<ExtBson>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upper: Option<ExtBson>,
}

impl IdRange {
    pub fn whole_collection() -> Self {
        Self { bracket: IdBracket::All, lower: None, upper: None }
    }
}

impl std::fmt::Display for IdRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bound = |b: &Option<ExtBson>| match b {
            Some(v) => v.0.clone().into_relaxed_extjson().to_string(),
            None => "open".to_string(),
        };
        match self.bracket {
            IdBracket::All => write!(f, "all _id values"),
            IdBracket::Other => write!(f, "_id of other types"),
            bracket => write!(f, "{bracket:?} _id in [{}, {})", bound(&self.lower), bound(&self.upper)),
        }
    }
}

/// Copy one `_id` range of one collection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CopyTask {
    pub collection: CollectionId,
    pub ns: Namespace,
    pub range: IdRange,
    /// Copy in natural (insertion) order instead of `_id` order: capped collections, whose
    /// order is their meaning. Such a task is the only one of its collection.
    #[serde(default)]
    pub natural_order: bool,
    pub estimated_documents: u64,
    pub estimated_bytes: u64,
}

/// Read one source shard's change stream: spool during the copy, apply afterwards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangeStreamTask {
    pub shard: ShardId,
    /// Start point (inclusive), taken before the copy began.
    pub start_at: OpTime,
}

/// Hash one `_id` range on both sides and compare (at commit).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyTask {
    pub ns: Namespace,
    pub range: IdRange,
}

/// Check that a collection's indexes and options match on both sides (at commit).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyMetadataTask {
    pub ns: Namespace,
}

/// A unit of claimable work (`{m}/tasks/{id}`); immutable once written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum TaskSpec {
    Copy(CopyTask),
    ChangeStream(ChangeStreamTask),
    Verify(VerifyTask),
    VerifyMetadata(VerifyMetadataTask),
}

impl TaskSpec {
    pub fn kind_name(&self) -> &'static str {
        match self {
            Self::Copy(_) => "copy",
            Self::ChangeStream(_) => "changeStream",
            Self::Verify(_) => "verify",
            Self::VerifyMetadata(_) => "verifyMetadata",
        }
    }
}

/// A stored task with its id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: TaskId,
    pub spec: TaskSpec,
}

/// `{m}/claims/{id}`: who holds a task. The key's create revision is the holder's fencing token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimValue {
    pub holder: InstanceId,
    pub claimed_at_ms: i64,
}

// ---------------------------------------------------------------------------------------------
// checkpoints
// ---------------------------------------------------------------------------------------------

/// Where a task stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", tag = "status")]
pub enum TaskStatus {
    #[default]
    Running,
    Done,
    /// The task cannot be completed correctly; the leader fails the migration with this reason.
    Failed {
        error: String,
        description: String,
    },
}

/// Progress of a copy task. A restart resumes after `last_id`, so at most the batch in flight
/// at the crash is copied again (and re-inserting it is harmless: duplicates are skipped).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct CopyCheckpoint {
    /// The last `_id` whose batch is durably on the destination (`_id`-order copies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_id: Option<ExtBson>,
    /// Documents durably copied (natural-order copies resume by skipping this many).
    pub documents_copied: u64,
    pub bytes_copied: u64,
    /// Documents inserted again after a restart or retry (duplicates skipped).
    #[serde(default)]
    pub documents_recopied: u64,
}

/// Stages of a change-stream task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum CdcStage {
    /// The copy is running: events go to the durable spool on the destination.
    #[default]
    Spooling,
    /// The copy is done: spooled events are applied while new ones are still spooled.
    Draining,
    /// The spool is empty: events are applied as they arrive.
    Live,
}

/// Progress of a change-stream task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct CdcCheckpoint {
    pub stage: CdcStage,
    /// Resume the stream after this token. In `Spooling`/`Draining` everything up to it is in
    /// the spool; in `Live` everything up to it is applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_token: Option<ExtDoc>,
    /// Next sequence number to write into the spool (spool entries at or above it are leftovers of a
    /// crashed holder and are discarded on takeover).
    pub next_spool_seq: u64,
    /// Next spool entry to apply (everything below is applied).
    pub next_apply_seq: u64,
    /// Cluster time of the last event read from the stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_through: Option<OpTime>,
    /// Cluster time of the last event applied in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_through: Option<OpTime>,
    pub events_spooled: u64,
    pub events_applied: u64,
    /// Updates that could not be applied as described and were repaired by re-reading the
    /// document from the source (expected while the events overlap the copy).
    #[serde(default)]
    pub repairs: u64,
    /// The commit marker this task has applied everything up to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drained_marker: Option<String>,
}

/// Digest of one side of a verified range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct RangeDigest {
    pub documents: u64,
    pub bytes: u64,
    /// xxh3-128 over the documents' raw BSON in `_id` order, hex.
    pub hash: String,
}

/// Result of a verify task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct VerifyCheckpoint {
    pub source: RangeDigest,
    pub destination: RangeDigest,
    /// Empty when both sides match; otherwise a description of the first differences
    /// (e.g. `_id 5: missing on destination`), at most a handful.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub differences: Vec<String>,
}

/// Per-kind checkpoint payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum CheckpointDetail {
    Copy(CopyCheckpoint),
    ChangeStream(CdcCheckpoint),
    Verify(VerifyCheckpoint),
    VerifyMetadata(VerifyCheckpoint),
}

/// `{m}/checkpoints/{id}`, written only through a txn fenced on the task's claim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskCheckpoint {
    #[serde(flatten)]
    pub status: TaskStatus,
    pub detail: CheckpointDetail,
    /// The instance that wrote it.
    pub holder: InstanceId,
    pub updated_at_ms: i64,
}

// ---------------------------------------------------------------------------------------------
// processes
// ---------------------------------------------------------------------------------------------

/// Roles a process plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Role {
    Coordinator,
    Worker,
}

/// `{m}/instances/{id}`: one live process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceInfo {
    pub id: InstanceId,
    pub roles: Vec<Role>,
    /// REST API address (`host:port`) for coordinators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_address: Option<String>,
    /// gRPC address for coordinators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_address: Option<String>,
    pub hostname: String,
    pub pid: u32,
    pub version: String,
    pub started_at_ms: i64,
    /// How many tasks this worker runs at once.
    #[serde(default)]
    pub task_slots: u32,
}

/// `{m}/leader`: the elected coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaderValue {
    pub instance: InstanceId,
    pub since_ms: i64,
}

/// Live progress of one task on one process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskProgress {
    pub task: TaskId,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ns: Option<String>,
    pub documents: u64,
    pub bytes: u64,
}

/// `{m}/progress/{instance}`: counters that are not worth a durable write (rates, lag).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct InstanceProgress {
    pub tasks: Vec<TaskProgress>,
    /// Events applied by this process since it started (not persisted, like mongosync's).
    pub events_applied: u64,
    /// Seconds between the newest source write and the last applied event, when applying.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cdc_stage: Option<CdcStage>,
    pub updated_at_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn write_blocking_accepts_strings_and_booleans() {
        let parse = |v: serde_json::Value| serde_json::from_value::<WriteBlocking>(v);
        assert_eq!(parse(json!(true)).unwrap(), WriteBlocking::SourceAndDestination);
        assert_eq!(parse(json!(false)).unwrap(), WriteBlocking::None);
        assert_eq!(parse(json!("destinationOnly")).unwrap(), WriteBlocking::DestinationOnly);
        assert!(parse(json!("sometimes")).unwrap_err().to_string().contains("sometimes"));
        assert!(parse(json!(3)).is_err());
        assert_eq!(serde_json::to_value(WriteBlocking::None).unwrap(), json!("none"));
    }

    #[test]
    fn start_options_follow_the_api_and_default_like_mongosync() {
        let options: StartOptions =
            serde_json::from_value(json!({"source": "cluster0", "destination": "cluster1"})).unwrap();
        assert_eq!(options.build_indexes, BuildIndexes::BeforeDataCopy);
        assert_eq!(options.enable_user_write_blocking, WriteBlocking::DestinationOnly);
        assert!(options.verification.enabled);
        assert!(!options.reversible);
        let err = serde_json::from_value::<StartOptions>(
            json!({"source": "cluster0", "destination": "cluster1", "unknown": 1}),
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown"));
        let full: StartOptions = serde_json::from_value(json!({
            "source": "cluster0", "destination": "cluster1", "buildIndexes": "afterDataCopy",
            "enableUserWriteBlocking": true, "reversible": true, "verification": {"enabled": false},
            "includeNamespaces": [{"database": "a"}],
            "sharding": {"createSupportingIndexes": true, "shardingEntries": [
                {"database": "a", "collection": "b", "shardCollection": {"key": [{"x": 1}]}}]}
        }))
        .unwrap();
        assert!(full.build_indexes.builds_after_copy());
        assert!(!full.verification.enabled);
        let round: StartOptions = serde_json::from_slice(&encode(&full)).unwrap();
        assert_eq!(round, full);
    }

    #[test]
    fn store_values_round_trip() {
        let task = Task {
            id: TaskId(3),
            spec: TaskSpec::Copy(CopyTask {
                collection: CollectionId(1),
                ns: Namespace::new("db", "c"),
                range: IdRange { bracket: IdBracket::Number, lower: Some(ExtBson(bson::Bson::Int64(10))), upper: None },
                natural_order: false,
                estimated_documents: 5,
                estimated_bytes: 500,
            }),
        };
        let back: Task = decode("k", &encode(&task)).unwrap();
        assert_eq!(back, task);

        let checkpoint = TaskCheckpoint {
            status: TaskStatus::Failed { error: "X".into(), description: "y".into() },
            detail: CheckpointDetail::ChangeStream(CdcCheckpoint::default()),
            holder: InstanceId::new("w1").unwrap(),
            updated_at_ms: 1,
        };
        let back: TaskCheckpoint = decode("k", &encode(&checkpoint)).unwrap();
        assert_eq!(back, checkpoint);
        let err = decode::<Task>("/x/tasks/1", b"{").unwrap_err();
        assert!(err.to_string().contains("/x/tasks/1"));

        let state = SyncStateDoc { state: SyncState::Running, phase: Phase::Snapshot, ..Default::default() };
        let json = serde_json::to_value(&state).unwrap();
        assert_eq!(json["state"], "RUNNING");
        assert_eq!(json["phase"], "snapshot");
    }

    #[test]
    fn ranges_render_for_humans() {
        let range = IdRange {
            bracket: IdBracket::Number,
            lower: Some(ExtBson(bson::Bson::Int32(1))),
            upper: Some(ExtBson(bson::Bson::Int32(9))),
        };
        assert_eq!(range.to_string(), "Number _id in [1, 9)");
        assert_eq!(IdRange::whole_collection().to_string(), "all _id values");
    }
}
