//! Conversions between the gRPC messages of `clustersync.v1` and the domain types.
//!
//! - Inbound requests: [`start_options_from_pb`]. Only what the wire
//!   format itself cannot guarantee is checked here (required fields, enum values, shard key
//!   field types), with the same error names as the REST body parser: a missing field is
//!   `InvalidRequest`, a value outside its set is `InvalidOption`. Every rule about values and
//!   their combinations is [`Control::start`](crate::control::Control::start)'s, shared with
//!   REST. Field paths in messages use the proto field names (`sharding.sharding_entries[0]`).
//! - Outbound reports: `From<&Progress>` for [`PbProgress`], and the state reached by a
//!   transition ([`state_and_phase`]).
//! - The client side (`clustersync ctl`): [`start_request_to_pb`] (refusing what the messages
//!   cannot carry rather than changing its meaning) and `TryFrom<PbProgress>` for [`Progress`],
//!   whose JSON is then exactly the REST report.
//!
//! [`StartOptions`], [`SyncState`] and [`Phase`] belong to `clustersync-common` and the messages
//! to `clustersync-proto`, so the orphan rule forbids `From`/`TryFrom` impls between them here:
//! those conversions are plain functions. Proto types are imported with a `Pb` prefix.

use bson::Bson;
use clustersync_common::extjson::ExtDoc;
use clustersync_common::model::{
    BuildIndexes, CdcStage, Phase, Role, ShardCollectionSpec, ShardingEntry, ShardingOptions, StartOptions, SyncState,
    SyncStateDoc, VerificationOptions, WriteBlocking,
};
use clustersync_common::namespace::{NamespaceFilterSpec, RegexSpec};
use clustersync_proto::v1::{
    BuildIndexes as PbBuildIndexes, ChangeStreamProgress as PbChangeStreamProgress,
    ChangeStreamStage as PbChangeStreamStage, Cluster as PbCluster, CollectionCopy as PbCollectionCopy,
    CollectionProgress as PbCollectionProgress, DirectionMapping as PbDirectionMapping, Fleet as PbFleet,
    FleetInstance as PbFleetInstance, FleetTask as PbFleetTask, NamespaceFilter as PbNamespaceFilter, Phase as PbPhase,
    Progress as PbProgress, RegexSpec as PbRegexSpec, Role as PbRole, ShardCollection as PbShardCollection,
    ShardKeyField as PbShardKeyField, ShardKeyType as PbShardKeyType, ShardingEntry as PbShardingEntry,
    ShardingOptions as PbShardingOptions, StartRequest as PbStartRequest, SyncState as PbSyncState,
    TaskKind as PbTaskKind, Verification as PbVerification, VerificationOptions as PbVerificationOptions,
    VerificationPhase as PbVerificationPhase, VerificationSide as PbVerificationSide, WriteBlocking as PbWriteBlocking,
};

use crate::control::ControlError;
use crate::progress::{
    ChangeStreamProgress, CollectionCopy, CollectionProgress, DirectionMapping, Fleet, FleetInstance, FleetTask,
    Progress, Verification, VerificationSide, verification_phase,
};

// ---------------------------------------------------------------------------------------------
// Start: inbound
// ---------------------------------------------------------------------------------------------

/// The options of a `Start` request.
///
/// # Errors
///
/// `InvalidRequest` for a missing field, `InvalidOption` for an unknown enum value, each naming
/// the field.
pub fn start_options_from_pb(request: PbStartRequest) -> Result<StartOptions, ControlError> {
    let source = cluster_from_pb("source", request.source)?;
    let destination = cluster_from_pb("destination", request.destination)?;
    let build_indexes = match PbBuildIndexes::try_from(request.build_indexes) {
        Ok(PbBuildIndexes::Unspecified | PbBuildIndexes::BeforeDataCopy) => BuildIndexes::BeforeDataCopy,
        Ok(PbBuildIndexes::AfterDataCopy) => BuildIndexes::AfterDataCopy,
        Ok(PbBuildIndexes::ExcludeHashed) => BuildIndexes::ExcludeHashed,
        Ok(PbBuildIndexes::ExcludeHashedAfterCopy) => BuildIndexes::ExcludeHashedAfterCopy,
        Ok(PbBuildIndexes::Never) => BuildIndexes::Never,
        Err(_) => return Err(unknown_enum_value("build_indexes", request.build_indexes, "BuildIndexes")),
    };
    let enable_user_write_blocking = match PbWriteBlocking::try_from(request.enable_user_write_blocking) {
        Ok(PbWriteBlocking::Unspecified | PbWriteBlocking::DestinationOnly) => WriteBlocking::DestinationOnly,
        Ok(PbWriteBlocking::SourceAndDestination) => WriteBlocking::SourceAndDestination,
        Ok(PbWriteBlocking::None) => WriteBlocking::None,
        Err(_) => {
            return Err(unknown_enum_value(
                "enable_user_write_blocking",
                request.enable_user_write_blocking,
                "WriteBlocking",
            ));
        }
    };
    let sharding = request.sharding.map(sharding_from_pb).transpose()?;
    let verification = VerificationOptions {
        enabled: request.verification.and_then(|verification| verification.enabled).unwrap_or(true),
    };
    Ok(StartOptions {
        source: source.to_string(),
        destination: destination.to_string(),
        build_indexes,
        enable_user_write_blocking,
        include_namespaces: request.include_namespaces.into_iter().map(filter_from_pb).collect(),
        exclude_namespaces: request.exclude_namespaces.into_iter().map(filter_from_pb).collect(),
        reversible: request.reversible,
        sharding,
        verification,
    })
}

fn cluster_from_pb(field: &str, value: i32) -> Result<&'static str, ControlError> {
    match PbCluster::try_from(value) {
        Ok(PbCluster::Cluster0) => Ok("cluster0"),
        Ok(PbCluster::Cluster1) => Ok("cluster1"),
        Ok(PbCluster::Unspecified) => Err(ControlError::invalid_request(format!(
            "missing required field {field} (CLUSTER_CLUSTER0 or CLUSTER_CLUSTER1)"
        ))),
        Err(_) => Err(ControlError::invalid_option(format!(
            "{field} must be \"cluster0\" or \"cluster1\" (CLUSTER_CLUSTER0 or CLUSTER_CLUSTER1), got the unknown value {value}"
        ))),
    }
}

fn unknown_enum_value(field: &str, value: i32, enumeration: &str) -> ControlError {
    ControlError::invalid_option(format!("{field}: unknown {enumeration} value {value}"))
}

fn filter_from_pb(filter: PbNamespaceFilter) -> NamespaceFilterSpec {
    NamespaceFilterSpec {
        database: filter.database,
        database_regex: filter.database_regex.map(regex_from_pb),
        collections: (!filter.collections.is_empty()).then_some(filter.collections),
        collections_regex: filter.collections_regex.map(regex_from_pb),
    }
}

fn regex_from_pb(regex: PbRegexSpec) -> RegexSpec {
    RegexSpec { pattern: regex.pattern, options: regex.options }
}

fn sharding_from_pb(sharding: PbShardingOptions) -> Result<ShardingOptions, ControlError> {
    let sharding_entries = sharding
        .sharding_entries
        .into_iter()
        .enumerate()
        .map(|(index, entry)| {
            let at = format!("sharding.sharding_entries[{index}]");
            let shard_collection = entry.shard_collection.ok_or_else(|| {
                ControlError::invalid_request(format!("missing required field {at}.shard_collection"))
            })?;
            let key = shard_collection
                .key
                .into_iter()
                .enumerate()
                .map(|(position, field)| {
                    shard_key_field_from_pb(&format!("{at}.shard_collection.key[{position}]"), field)
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(ShardingEntry {
                database: entry.database,
                collection: entry.collection,
                shard_collection: ShardCollectionSpec { key },
            })
        })
        .collect::<Result<Vec<_>, ControlError>>()?;
    Ok(ShardingOptions { create_supporting_indexes: sharding.create_supporting_indexes, sharding_entries })
}

fn shard_key_field_from_pb(at: &str, field: PbShardKeyField) -> Result<ExtDoc, ControlError> {
    let value = match PbShardKeyType::try_from(field.r#type) {
        Ok(PbShardKeyType::Ascending) => Bson::Int32(1),
        Ok(PbShardKeyType::Hashed) => Bson::String("hashed".into()),
        Ok(PbShardKeyType::Unspecified) => {
            return Err(ControlError::invalid_request(format!(
                "missing required field {at}.type (SHARD_KEY_TYPE_ASCENDING or SHARD_KEY_TYPE_HASHED)"
            )));
        }
        Err(_) => return Err(unknown_enum_value(&format!("{at}.type"), field.r#type, "ShardKeyType")),
    };
    let mut document = bson::Document::new();
    document.insert(field.field, value);
    Ok(ExtDoc(document))
}

// ---------------------------------------------------------------------------------------------
// Start: outbound (the client)
// ---------------------------------------------------------------------------------------------

/// The `Start` request carrying `options`.
///
/// # Errors
///
/// Refuses, with the REST error names, what the messages cannot carry: a cluster name other
/// than `cluster0` / `cluster1` (`InvalidOption`), an empty `collections` list, which proto3
/// would read as "every collection" (`InvalidNamespaceFilter`), a shard key value other than
/// `1` or `"hashed"` (`InvalidOption`).
pub fn start_request_to_pb(options: &StartOptions) -> Result<PbStartRequest, ControlError> {
    let cluster = |field: &str, name: &str| match name {
        "cluster0" => Ok(PbCluster::Cluster0 as i32),
        "cluster1" => Ok(PbCluster::Cluster1 as i32),
        other => {
            Err(ControlError::invalid_option(format!("{field} must be \"cluster0\" or \"cluster1\", got {other:?}")))
        }
    };
    let filters = |field: &str, specs: &[NamespaceFilterSpec]| {
        specs
            .iter()
            .enumerate()
            .map(|(index, spec)| filter_to_pb(&format!("{field}[{index}]"), spec))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(PbStartRequest {
        source: cluster("source", &options.source)?,
        destination: cluster("destination", &options.destination)?,
        build_indexes: match options.build_indexes {
            BuildIndexes::BeforeDataCopy => PbBuildIndexes::BeforeDataCopy,
            BuildIndexes::AfterDataCopy => PbBuildIndexes::AfterDataCopy,
            BuildIndexes::ExcludeHashed => PbBuildIndexes::ExcludeHashed,
            BuildIndexes::ExcludeHashedAfterCopy => PbBuildIndexes::ExcludeHashedAfterCopy,
            BuildIndexes::Never => PbBuildIndexes::Never,
        } as i32,
        enable_user_write_blocking: match options.enable_user_write_blocking {
            WriteBlocking::DestinationOnly => PbWriteBlocking::DestinationOnly,
            WriteBlocking::SourceAndDestination => PbWriteBlocking::SourceAndDestination,
            WriteBlocking::None => PbWriteBlocking::None,
        } as i32,
        include_namespaces: filters("includeNamespaces", &options.include_namespaces)?,
        exclude_namespaces: filters("excludeNamespaces", &options.exclude_namespaces)?,
        reversible: options.reversible,
        sharding: options.sharding.as_ref().map(sharding_to_pb).transpose()?,
        verification: Some(PbVerificationOptions { enabled: Some(options.verification.enabled) }),
    })
}

fn filter_to_pb(at: &str, spec: &NamespaceFilterSpec) -> Result<PbNamespaceFilter, ControlError> {
    if spec.collections.as_ref().is_some_and(Vec::is_empty) {
        return Err(ControlError::InvalidNamespaceFilter {
            reason: format!("{at}: \"collections\" must not be empty when given"),
        });
    }
    let regex = |regex: &RegexSpec| PbRegexSpec { pattern: regex.pattern.clone(), options: regex.options.clone() };
    Ok(PbNamespaceFilter {
        database: spec.database.clone(),
        database_regex: spec.database_regex.as_ref().map(regex),
        collections: spec.collections.clone().unwrap_or_default(),
        collections_regex: spec.collections_regex.as_ref().map(regex),
    })
}

fn sharding_to_pb(sharding: &ShardingOptions) -> Result<PbShardingOptions, ControlError> {
    let sharding_entries = sharding
        .sharding_entries
        .iter()
        .enumerate()
        .map(|(index, entry)| {
            let key = entry
                .shard_collection
                .key
                .iter()
                .enumerate()
                .map(|(position, part)| {
                    let at = format!("sharding.shardingEntries[{index}]: shardCollection.key[{position}]");
                    let mut fields = part.0.iter();
                    let (Some((field, value)), None) = (fields.next(), fields.next()) else {
                        return Err(ControlError::invalid_option(format!(
                            "{at} must be a document with exactly one field"
                        )));
                    };
                    let kind = match value {
                        Bson::String(text) if text == "hashed" => PbShardKeyType::Hashed,
                        Bson::Int32(1) | Bson::Int64(1) => PbShardKeyType::Ascending,
                        Bson::Double(number) if *number == 1.0 => PbShardKeyType::Ascending,
                        other => {
                            return Err(ControlError::invalid_option(format!(
                                "{at}: {field} must be 1 or \"hashed\", got {other}"
                            )));
                        }
                    };
                    Ok(PbShardKeyField { field: field.clone(), r#type: kind as i32 })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(PbShardingEntry {
                database: entry.database.clone(),
                collection: entry.collection.clone(),
                shard_collection: Some(PbShardCollection { key }),
            })
        })
        .collect::<Result<Vec<_>, ControlError>>()?;
    Ok(PbShardingOptions { create_supporting_indexes: sharding.create_supporting_indexes, sharding_entries })
}

// ---------------------------------------------------------------------------------------------
// State and phase
// ---------------------------------------------------------------------------------------------

/// The wire form of a state.
pub fn state_to_pb(state: SyncState) -> PbSyncState {
    match state {
        SyncState::Idle => PbSyncState::Idle,
        SyncState::Running => PbSyncState::Running,
        SyncState::Paused => PbSyncState::Paused,
        SyncState::Committing => PbSyncState::Committing,
        SyncState::Committed => PbSyncState::Committed,
        SyncState::Reversing => PbSyncState::Reversing,
        SyncState::Failed => PbSyncState::Failed,
    }
}

/// The wire form of a phase.
pub fn phase_to_pb(phase: Phase) -> PbPhase {
    match phase {
        Phase::Idle => PbPhase::Idle,
        Phase::Setup => PbPhase::Setup,
        Phase::Snapshot => PbPhase::Snapshot,
        Phase::Running => PbPhase::Running,
        Phase::Paused => PbPhase::Paused,
        Phase::Committing => PbPhase::Committing,
        Phase::Completed => PbPhase::Completed,
        Phase::Failed => PbPhase::Failed,
    }
}

/// The state and phase of a state document, as the `state` and `phase` fields of a transition's
/// response.
pub fn state_and_phase(doc: &SyncStateDoc) -> (i32, i32) {
    (state_to_pb(doc.state) as i32, phase_to_pb(doc.phase) as i32)
}

/// The state of a transition's response (`None` for UNSPECIFIED or an unknown value).
pub fn state_from_pb(value: i32) -> Option<SyncState> {
    match PbSyncState::try_from(value).ok()? {
        PbSyncState::Unspecified => None,
        PbSyncState::Idle => Some(SyncState::Idle),
        PbSyncState::Running => Some(SyncState::Running),
        PbSyncState::Paused => Some(SyncState::Paused),
        PbSyncState::Committing => Some(SyncState::Committing),
        PbSyncState::Committed => Some(SyncState::Committed),
        PbSyncState::Reversing => Some(SyncState::Reversing),
        PbSyncState::Failed => Some(SyncState::Failed),
    }
}

/// The phase of a transition's response (`None` for UNSPECIFIED or an unknown value).
pub fn phase_from_pb(value: i32) -> Option<Phase> {
    match PbPhase::try_from(value).ok()? {
        PbPhase::Unspecified => None,
        PbPhase::Idle => Some(Phase::Idle),
        PbPhase::Setup => Some(Phase::Setup),
        PbPhase::Snapshot => Some(Phase::Snapshot),
        PbPhase::Running => Some(Phase::Running),
        PbPhase::Paused => Some(Phase::Paused),
        PbPhase::Committing => Some(Phase::Committing),
        PbPhase::Completed => Some(Phase::Completed),
        PbPhase::Failed => Some(Phase::Failed),
    }
}

// ---------------------------------------------------------------------------------------------
// Progress: outbound
// ---------------------------------------------------------------------------------------------

impl From<&Progress> for PbProgress {
    fn from(progress: &Progress) -> Self {
        PbProgress {
            state: state_to_pb(progress.state) as i32,
            can_commit: progress.can_commit,
            can_write: progress.can_write,
            info: progress.info.clone(),
            lag_time_seconds: progress.lag_time_seconds,
            total_events_applied: progress.total_events_applied,
            collection_copy: progress.collection_copy.map(|copy| PbCollectionCopy {
                estimated_total_bytes: copy.estimated_total_bytes,
                estimated_copied_bytes: copy.estimated_copied_bytes,
            }),
            direction_mapping: progress.direction_mapping.as_ref().map(|mapping| PbDirectionMapping {
                source: mapping.source.clone(),
                destination: mapping.destination.clone(),
            }),
            mongosync_id: progress.mongosync_id.clone(),
            coordinator_id: progress.coordinator_id.clone(),
            verification: progress.verification.as_ref().map(|verification| PbVerification {
                source: Some(verification_side_to_pb(&verification.source)),
                destination: Some(verification_side_to_pb(&verification.destination)),
            }),
            phase: progress.phase.map_or(PbPhase::Unspecified, phase_to_pb) as i32,
            error: progress.error.clone(),
            error_description: progress.error_description.clone(),
            error_namespace: progress.error_namespace.clone(),
            error_range: progress.error_range.clone(),
            collections: progress
                .collections
                .iter()
                .flatten()
                .map(|collection| PbCollectionProgress {
                    namespace: collection.namespace.clone(),
                    estimated_total_bytes: collection.estimated_total_bytes,
                    estimated_copied_bytes: collection.estimated_copied_bytes,
                    documents_copied: collection.documents_copied,
                    documents_recopied: collection.documents_recopied,
                    partitions: collection.partitions,
                    partitions_done: collection.partitions_done,
                })
                .collect(),
            change_stream: progress.change_stream.as_ref().map(|stream| PbChangeStreamProgress {
                stage: stream.stage.map_or(PbChangeStreamStage::Unspecified, stage_to_pb) as i32,
                tasks: stream.tasks,
                events_applied: stream.events_applied,
                events_spooled: stream.events_spooled,
                repairs: stream.repairs,
            }),
            fleet: progress.fleet.as_ref().map(|fleet| PbFleet {
                leader: fleet.leader.clone(),
                instances: fleet.instances.iter().map(fleet_instance_to_pb).collect(),
            }),
        }
    }
}

fn stage_to_pb(stage: CdcStage) -> PbChangeStreamStage {
    match stage {
        CdcStage::Spooling => PbChangeStreamStage::Spooling,
        CdcStage::Draining => PbChangeStreamStage::Draining,
        CdcStage::Live => PbChangeStreamStage::Live,
    }
}

fn verification_side_to_pb(side: &VerificationSide) -> PbVerificationSide {
    let phase = match side.phase.as_str() {
        verification_phase::DISABLED => PbVerificationPhase::Disabled,
        verification_phase::NOT_STARTED => PbVerificationPhase::NotStarted,
        verification_phase::HASHING => PbVerificationPhase::Hashing,
        verification_phase::DONE => PbVerificationPhase::Done,
        verification_phase::FAILED => PbVerificationPhase::Failed,
        _ => PbVerificationPhase::Unspecified,
    };
    PbVerificationSide {
        phase: phase as i32,
        hashed_document_count: side.hashed_document_count,
        estimated_document_count: side.estimated_document_count,
        scanned_collection_count: side.scanned_collection_count,
        total_collection_count: side.total_collection_count,
        lag_time_seconds: side.lag_time_seconds,
    }
}

fn fleet_instance_to_pb(instance: &FleetInstance) -> PbFleetInstance {
    PbFleetInstance {
        id: instance.id.clone(),
        roles: instance
            .roles
            .iter()
            .map(|role| match role {
                Role::Coordinator => PbRole::Coordinator as i32,
                Role::Worker => PbRole::Worker as i32,
            })
            .collect(),
        hostname: instance.hostname.clone(),
        api_address: instance.api_address.clone(),
        tasks: instance
            .tasks
            .iter()
            .map(|task| PbFleetTask {
                id: task.id,
                kind: match task.kind.as_str() {
                    "copy" => PbTaskKind::Copy,
                    "changeStream" => PbTaskKind::ChangeStream,
                    "verify" => PbTaskKind::Verify,
                    "verifyMetadata" => PbTaskKind::VerifyMetadata,
                    _ => PbTaskKind::Unspecified,
                } as i32,
                namespace: task.namespace.clone(),
                shard: task.shard.clone(),
                documents: task.documents,
                bytes: task.bytes,
            })
            .collect(),
        lag_time_seconds: instance.lag_time_seconds,
        events_applied: instance.events_applied,
    }
}

// ---------------------------------------------------------------------------------------------
// Progress: inbound (the client)
// ---------------------------------------------------------------------------------------------

impl TryFrom<PbProgress> for Progress {
    type Error = ControlError;

    /// The report as REST shows it. In IDLE everything but `state` and `can_commit` is null;
    /// outside IDLE the lists are present even when empty (as REST reports them).
    ///
    /// # Errors
    ///
    /// `InternalError` for a state the client does not know (a newer server).
    fn try_from(progress: PbProgress) -> Result<Self, Self::Error> {
        let state = state_from_pb(progress.state).ok_or_else(|| ControlError::Internal {
            reason: format!("the server reported an unknown state {}", progress.state),
        })?;
        if state == SyncState::Idle {
            return Ok(Progress { can_commit: progress.can_commit, ..Progress::idle() });
        }
        Ok(Progress {
            state,
            can_commit: progress.can_commit,
            can_write: progress.can_write,
            info: progress.info,
            lag_time_seconds: progress.lag_time_seconds,
            total_events_applied: progress.total_events_applied,
            collection_copy: progress.collection_copy.map(|copy| CollectionCopy {
                estimated_total_bytes: copy.estimated_total_bytes,
                estimated_copied_bytes: copy.estimated_copied_bytes,
            }),
            direction_mapping: progress
                .direction_mapping
                .map(|mapping| DirectionMapping { source: mapping.source, destination: mapping.destination }),
            mongosync_id: progress.mongosync_id,
            coordinator_id: progress.coordinator_id,
            verification: progress.verification.map(|verification| Verification {
                source: verification_side_from_pb(verification.source.unwrap_or_default()),
                destination: verification_side_from_pb(verification.destination.unwrap_or_default()),
            }),
            phase: phase_from_pb(progress.phase),
            error: progress.error,
            error_description: progress.error_description,
            error_namespace: progress.error_namespace,
            error_range: progress.error_range,
            collections: Some(
                progress
                    .collections
                    .into_iter()
                    .map(|collection| CollectionProgress {
                        namespace: collection.namespace,
                        estimated_total_bytes: collection.estimated_total_bytes,
                        estimated_copied_bytes: collection.estimated_copied_bytes,
                        documents_copied: collection.documents_copied,
                        documents_recopied: collection.documents_recopied,
                        partitions: collection.partitions,
                        partitions_done: collection.partitions_done,
                    })
                    .collect(),
            ),
            change_stream: progress.change_stream.map(|stream| ChangeStreamProgress {
                stage: match PbChangeStreamStage::try_from(stream.stage) {
                    Ok(PbChangeStreamStage::Spooling) => Some(CdcStage::Spooling),
                    Ok(PbChangeStreamStage::Draining) => Some(CdcStage::Draining),
                    Ok(PbChangeStreamStage::Live) => Some(CdcStage::Live),
                    Ok(PbChangeStreamStage::Unspecified) | Err(_) => None,
                },
                tasks: stream.tasks,
                events_applied: stream.events_applied,
                events_spooled: stream.events_spooled,
                repairs: stream.repairs,
            }),
            fleet: progress.fleet.map(|fleet| Fleet {
                leader: fleet.leader,
                instances: fleet.instances.into_iter().map(fleet_instance_from_pb).collect(),
            }),
        })
    }
}

fn verification_side_from_pb(side: PbVerificationSide) -> VerificationSide {
    let phase = match PbVerificationPhase::try_from(side.phase) {
        Ok(PbVerificationPhase::Disabled) => verification_phase::DISABLED,
        Ok(PbVerificationPhase::NotStarted) => verification_phase::NOT_STARTED,
        Ok(PbVerificationPhase::Hashing) => verification_phase::HASHING,
        Ok(PbVerificationPhase::Done) => verification_phase::DONE,
        Ok(PbVerificationPhase::Failed) => verification_phase::FAILED,
        Ok(PbVerificationPhase::Unspecified) | Err(_) => "unknown",
    };
    VerificationSide {
        phase: phase.to_string(),
        hashed_document_count: side.hashed_document_count,
        estimated_document_count: side.estimated_document_count,
        scanned_collection_count: side.scanned_collection_count,
        total_collection_count: side.total_collection_count,
        lag_time_seconds: side.lag_time_seconds,
    }
}

fn fleet_instance_from_pb(instance: PbFleetInstance) -> FleetInstance {
    FleetInstance {
        id: instance.id,
        roles: instance
            .roles
            .into_iter()
            .filter_map(|role| match PbRole::try_from(role) {
                Ok(PbRole::Coordinator) => Some(Role::Coordinator),
                Ok(PbRole::Worker) => Some(Role::Worker),
                Ok(PbRole::Unspecified) | Err(_) => None,
            })
            .collect(),
        hostname: instance.hostname,
        api_address: instance.api_address,
        tasks: instance
            .tasks
            .into_iter()
            .map(|task| FleetTask {
                id: task.id,
                kind: match PbTaskKind::try_from(task.kind) {
                    Ok(PbTaskKind::Copy) => "copy",
                    Ok(PbTaskKind::ChangeStream) => "changeStream",
                    Ok(PbTaskKind::Verify) => "verify",
                    Ok(PbTaskKind::VerifyMetadata) => "verifyMetadata",
                    Ok(PbTaskKind::Unspecified) | Err(_) => "unknown",
                }
                .to_string(),
                namespace: task.namespace,
                shard: task.shard,
                documents: task.documents,
                bytes: task.bytes,
            })
            .collect(),
        lag_time_seconds: instance.lag_time_seconds,
        events_applied: instance.events_applied,
    }
}

#[cfg(test)]
mod tests {
    use clustersync_common::model::Role;
    use serde_json::json;

    use super::*;

    fn options(value: serde_json::Value) -> StartOptions {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn start_options_round_trip_through_the_request() {
        let cases = [
            json!({"source": "cluster0", "destination": "cluster1"}),
            json!({"source": "cluster1", "destination": "cluster0", "buildIndexes": "excludeHashedAfterCopy",
                   "enableUserWriteBlocking": "none", "verification": {"enabled": false}}),
            json!({"source": "cluster0", "destination": "cluster1", "reversible": true,
                   "enableUserWriteBlocking": true, "buildIndexes": "afterDataCopy"}),
            json!({"source": "cluster0", "destination": "cluster1",
                   "includeNamespaces": [
                       {"database": "sales", "collectionsRegex": {"pattern": "^accounts_.+$", "options": "i"}},
                       {"database": "marketing", "collections": ["a", "b"]},
                       {"databaseRegex": {"pattern": "^x"}}],
                   "excludeNamespaces": [{"database": "sales", "collections": ["tmp"]}]}),
            json!({"source": "cluster0", "destination": "cluster1", "buildIndexes": "never",
                   "sharding": {"createSupportingIndexes": true, "shardingEntries": [
                       {"database": "a", "collection": "b",
                        "shardCollection": {"key": [{"location": 1}, {"region": "hashed"}]}}]}}),
            json!({"source": "cluster0", "destination": "cluster1", "buildIndexes": "excludeHashed",
                   "sharding": {"shardingEntries": []}}),
        ];
        for case in cases {
            let original = options(case.clone());
            let request = start_request_to_pb(&original).unwrap();
            let back = start_options_from_pb(request).unwrap();
            // Shard key values come back as int32 1; compare through JSON, as REST would.
            assert_eq!(serde_json::to_value(&back).unwrap(), serde_json::to_value(&original).unwrap(), "{case}");
        }
    }

    #[test]
    fn inbound_defaults_follow_rest() {
        let request = PbStartRequest {
            source: PbCluster::Cluster0 as i32,
            destination: PbCluster::Cluster1 as i32,
            verification: Some(PbVerificationOptions { enabled: None }),
            ..Default::default()
        };
        let options = start_options_from_pb(request).unwrap();
        assert_eq!(options.build_indexes, BuildIndexes::BeforeDataCopy);
        assert_eq!(options.enable_user_write_blocking, WriteBlocking::DestinationOnly);
        assert!(options.verification.enabled, "an empty verification message keeps the verifier on");
        assert!(options.sharding.is_none() && options.include_namespaces.is_empty());
    }

    #[test]
    fn inbound_errors_name_the_field_like_rest() {
        let base = || PbStartRequest {
            source: PbCluster::Cluster0 as i32,
            destination: PbCluster::Cluster1 as i32,
            ..Default::default()
        };
        let error = |request: PbStartRequest| start_options_from_pb(request).unwrap_err();

        let missing = error(PbStartRequest { source: 0, ..base() });
        assert_eq!(missing.name(), "InvalidRequest");
        assert!(missing.to_string().contains("missing required field source"), "{missing}");
        let missing = error(PbStartRequest { destination: 0, ..base() });
        assert!(missing.to_string().contains("missing required field destination"), "{missing}");
        let unknown = error(PbStartRequest { source: 9, ..base() });
        assert_eq!(unknown.name(), "InvalidOption");
        assert!(unknown.to_string().contains("source must be"), "{unknown}");
        let unknown = error(PbStartRequest { build_indexes: 42, ..base() });
        assert_eq!(unknown.name(), "InvalidOption");
        assert!(unknown.to_string().contains("build_indexes"), "{unknown}");
        let unknown = error(PbStartRequest { enable_user_write_blocking: -1, ..base() });
        assert!(unknown.to_string().contains("enable_user_write_blocking"), "{unknown}");

        let entry = |shard_collection| PbShardingOptions {
            create_supporting_indexes: false,
            sharding_entries: vec![PbShardingEntry { database: "a".into(), collection: "b".into(), shard_collection }],
        };
        let missing = error(PbStartRequest { sharding: Some(entry(None)), ..base() });
        assert_eq!(missing.name(), "InvalidRequest");
        assert!(missing.to_string().contains("sharding.sharding_entries[0].shard_collection"), "{missing}");
        let untyped = PbShardCollection {
            key: vec![
                PbShardKeyField { field: "x".into(), r#type: PbShardKeyType::Ascending as i32 },
                PbShardKeyField { field: "y".into(), r#type: 0 },
            ],
        };
        let missing = error(PbStartRequest { sharding: Some(entry(Some(untyped))), ..base() });
        assert_eq!(missing.name(), "InvalidRequest");
        assert!(missing.to_string().contains("shard_collection.key[1].type"), "{missing}");
    }

    #[test]
    fn outbound_refuses_what_proto_cannot_carry() {
        let error =
            start_request_to_pb(&options(json!({"source": "cluster2", "destination": "cluster1"}))).unwrap_err();
        assert_eq!(error.name(), "InvalidOption");
        let error = start_request_to_pb(&options(json!({"source": "cluster0", "destination": "cluster1",
            "excludeNamespaces": [{"database": "a"}, {"database": "b", "collections": []}]})))
        .unwrap_err();
        assert_eq!(error.name(), "InvalidNamespaceFilter");
        assert!(error.to_string().contains("excludeNamespaces[1]"), "{error}");
        let error = start_request_to_pb(&options(json!({"source": "cluster0", "destination": "cluster1",
            "sharding": {"shardingEntries": [{"database": "a", "collection": "b", "shardCollection": {"key": [{"x": -1}]}}]}})))
        .unwrap_err();
        assert_eq!(error.name(), "InvalidOption");
        assert!(error.to_string().contains("must be 1 or \"hashed\""), "{error}");
    }

    fn full_progress() -> Progress {
        Progress {
            state: SyncState::Running,
            can_commit: true,
            can_write: Some(false),
            info: Some("change event application".into()),
            lag_time_seconds: Some(3),
            total_events_applied: Some(12),
            collection_copy: Some(CollectionCopy { estimated_total_bytes: 4000, estimated_copied_bytes: 4100 }),
            direction_mapping: Some(DirectionMapping {
                source: "cluster0: a:1".into(),
                destination: "cluster1: b:1".into(),
            }),
            mongosync_id: Some("node-a".into()),
            coordinator_id: Some("node-b".into()),
            verification: Some(Verification {
                source: VerificationSide {
                    phase: "hashing".into(),
                    hashed_document_count: 4,
                    estimated_document_count: 40,
                    scanned_collection_count: 1,
                    total_collection_count: 2,
                    lag_time_seconds: None,
                },
                destination: VerificationSide {
                    phase: "hashing".into(),
                    hashed_document_count: 3,
                    estimated_document_count: 40,
                    scanned_collection_count: 0,
                    total_collection_count: 2,
                    lag_time_seconds: None,
                },
            }),
            phase: Some(Phase::Running),
            error: None,
            error_description: None,
            error_namespace: None,
            error_range: None,
            collections: Some(vec![CollectionProgress {
                namespace: "shop.orders".into(),
                estimated_total_bytes: 3000,
                estimated_copied_bytes: 2100,
                documents_copied: 21,
                documents_recopied: 3,
                partitions: 2,
                partitions_done: 1,
            }]),
            change_stream: Some(ChangeStreamProgress {
                stage: Some(CdcStage::Draining),
                tasks: 2,
                events_applied: 12,
                events_spooled: 30,
                repairs: 1,
            }),
            fleet: Some(Fleet {
                leader: Some("node-b".into()),
                instances: vec![FleetInstance {
                    id: "node-a".into(),
                    roles: vec![Role::Coordinator, Role::Worker],
                    hostname: Some("vm-1".into()),
                    api_address: Some("127.0.0.1:27182".into()),
                    tasks: vec![
                        FleetTask {
                            id: 1001,
                            kind: "copy".into(),
                            namespace: Some("shop.orders".into()),
                            shard: None,
                            documents: 6,
                            bytes: 600,
                        },
                        FleetTask {
                            id: 1,
                            kind: "changeStream".into(),
                            namespace: None,
                            shard: Some("rs0".into()),
                            documents: 0,
                            bytes: 0,
                        },
                    ],
                    lag_time_seconds: Some(3),
                    events_applied: 12,
                }],
            }),
        }
    }

    #[test]
    fn progress_round_trips_to_the_same_rest_json() {
        let progress = full_progress();
        let back = Progress::try_from(PbProgress::from(&progress)).unwrap();
        assert_eq!(back, progress);

        let failed = Progress {
            state: SyncState::Failed,
            phase: Some(Phase::Failed),
            error: Some("VerificationFailed".into()),
            error_description: Some("documents differ".into()),
            error_namespace: Some("db.b".into()),
            error_range: Some("all _id values".into()),
            collections: Some(Vec::new()),
            fleet: Some(Fleet { leader: None, instances: Vec::new() }),
            ..full_progress()
        };
        assert_eq!(Progress::try_from(PbProgress::from(&failed)).unwrap(), failed);

        let idle = Progress::idle();
        let back = Progress::try_from(PbProgress::from(&idle)).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), serde_json::to_value(&idle).unwrap());
    }

    #[test]
    fn unknown_states_from_a_newer_server_are_internal_errors() {
        let error = Progress::try_from(PbProgress { state: 99, ..Default::default() }).unwrap_err();
        assert_eq!(error.name(), "InternalError");
        assert_eq!(state_from_pb(PbSyncState::Paused as i32), Some(SyncState::Paused));
        assert_eq!(phase_from_pb(0), None);
    }
}
