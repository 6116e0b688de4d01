//! Verification at commit, in constant memory.
//!
//! # Data ([`run_verify`])
//!
//! Both sides of one `_id` range are streamed in `_id` order as raw documents, each side hashed
//! on its own (xxh3-128 over the documents' bytes, streaming) and counted. Memory is two cursor
//! batches, whatever the range's size — mongosync's verifier needs ~0.5 GB per million
//! documents, this one none.
//!
//! In the same pass the two streams are aligned to name the first differences: byte-identical
//! heads advance together; heads with the same `_id` and different bytes are `differs`; heads
//! with different `_id`s are resolved by point lookups on the other side (`missing on
//! destination` / `extra on destination`). Point lookups instead of comparing the two `_id`s
//! keep the alignment right for collections whose collation orders strings differently from
//! the binary order. At most [`MAX_LISTED_DIFFERENCES`] are named; the digests still cover the
//! whole range. A document with the same fields in another order is a difference too: field
//! order is part of a document.
//!
//! # Metadata ([`run_verify_metadata`])
//!
//! After the commit-time restore, the index set (name, key, unique, sparse, partial filter,
//! TTL, hidden, collation, text and geo options) and the collection options (capped size and
//! limit, validator, collation, clustered index, time series, view definition, collection TTL)
//! must be equal on both sides.
//!
//! Both executors save a `Done` checkpoint; non-empty `differences` is a mismatch, on which the
//! leader fails the migration naming the namespace and range.

use std::cmp::Ordering;

use bson::{Bson, Document, RawDocumentBuf, doc};
use clustersync_common::model::{
    BuildIndexes, CheckpointDetail, IdRange, RangeDigest, TaskStatus, VerifyCheckpoint, VerifyMetadataTask, VerifyTask,
};
use clustersync_common::namespace::Namespace;
use futures::TryStreamExt;
use mongodb::options::{Hint, ReadConcern, SelectionCriteria};
use mongodb::{Collection, Cursor};
use xxhash_rust::xxh3::Xxh3Default;

use crate::bson_order;
use crate::context::TaskContext;
use crate::error::{self, WorkerError};
use crate::mongo::{self, Clusters};
use crate::partition::{self, CollectionStats};
use crate::schema;
use crate::settings::WorkerSettings;

/// Most differences named per range or collection.
pub const MAX_LISTED_DIFFERENCES: usize = 10;
/// Documents between two progress updates and cancellation checks.
const PROGRESS_EVERY: u64 = 1000;
/// `BadValue`: a hint naming an index the collection does not have.
const BAD_VALUE: i32 = 2;

/// Plans the verification ranges of a collection: the copy planner's ranges, in `_id` order.
pub async fn plan_verify_ranges(
    clusters: &Clusters,
    ns: &Namespace,
    settings: &WorkerSettings,
) -> Result<Vec<IdRange>, WorkerError> {
    let stats: CollectionStats = partition::collection_stats(clusters, ns).await?;
    partition::plan_ranges(clusters, ns, &stats, settings, false).await
}

/// One side of a verified range: its cursor, running digest and current head.
struct Side {
    cursor: Cursor<RawDocumentBuf>,
    hasher: Xxh3Default,
    documents: u64,
    bytes: u64,
    head: Option<RawDocumentBuf>,
    name: &'static str,
    ns: Namespace,
}

impl Side {
    async fn open(
        collection: Collection<RawDocumentBuf>,
        filter: Document,
        selection: SelectionCriteria,
        name: &'static str,
        ns: &Namespace,
        batch_size: u32,
    ) -> Result<Side, WorkerError> {
        let open = |hint: bool| {
            let mut find = collection
                .find(filter.clone())
                .sort(doc! {"_id": 1})
                .batch_size(batch_size)
                .read_concern(ReadConcern::majority())
                .selection_criteria(selection.clone());
            if hint {
                find = find.hint(Hint::Keys(doc! {"_id": 1}));
            }
            find
        };
        let cursor = match open(true).await {
            Ok(cursor) => cursor,
            // No `{_id: 1}` index (clustered collection): the sort alone gives `_id` order.
            Err(e) if error::server_code(&e) == Some(BAD_VALUE) => open(false)
                .await
                .map_err(|e| WorkerError::mongo(format!("reading {ns} on the {name} for verification"), e))?,
            Err(e) => return Err(WorkerError::mongo(format!("reading {ns} on the {name} for verification"), e)),
        };
        let mut side =
            Side { cursor, hasher: Xxh3Default::new(), documents: 0, bytes: 0, head: None, name, ns: ns.clone() };
        side.advance().await?;
        Ok(side)
    }

    /// Moves to the next document, adding it to the digest.
    async fn advance(&mut self) -> Result<(), WorkerError> {
        self.head =
            self.cursor.try_next().await.map_err(|e| {
                WorkerError::mongo(format!("reading {} on the {} for verification", self.ns, self.name), e)
            })?;
        if let Some(document) = &self.head {
            self.hasher.update(document.as_bytes());
            self.documents += 1;
            self.bytes += document.as_bytes().len() as u64;
        }
        Ok(())
    }

    fn digest(&self) -> RangeDigest {
        RangeDigest { documents: self.documents, bytes: self.bytes, hash: format!("{:032x}", self.hasher.digest128()) }
    }
}

fn id_of(document: &RawDocumentBuf) -> Result<Bson, WorkerError> {
    match document.get("_id") {
        Ok(Some(id)) => Bson::try_from(id).map_err(|e| WorkerError::InvalidData(format!("unreadable _id: {e}"))),
        Ok(None) => Err(WorkerError::InvalidData("a document has no _id".into())),
        Err(e) => Err(WorkerError::InvalidData(format!("malformed document: {e}"))),
    }
}

/// Whether a document with this `_id` exists on one side.
async fn exists(collection: &Collection<RawDocumentBuf>, id: &Bson, what: &str) -> Result<bool, WorkerError> {
    let found = collection
        .find_one(doc! {"_id": id.clone()})
        .projection(doc! {"_id": 1})
        .read_concern(ReadConcern::majority())
        .await
        .map_err(|e| WorkerError::mongo(what.to_string(), e))?;
    Ok(found.is_some())
}

/// Describes how two documents with the same `_id` differ.
fn describe_difference(id: &Bson, source: &RawDocumentBuf, destination: &RawDocumentBuf) -> String {
    let fields = |document: &RawDocumentBuf| -> Vec<String> {
        document.iter().filter_map(|element| element.ok().map(|(key, _)| key.to_string())).collect()
    };
    let (mut source_fields, mut destination_fields) = (fields(source), fields(destination));
    let reordered = source_fields != destination_fields && {
        source_fields.sort();
        destination_fields.sort();
        source_fields == destination_fields
            && source
                .to_document()
                .ok()
                .zip(destination.to_document().ok())
                .is_some_and(|(a, b)| a.iter().all(|(key, value)| b.get(key).is_some_and(|other| other == value)))
    };
    if reordered { format!("_id {id}: differs (same fields in another order)") } else { format!("_id {id}: differs") }
}

/// Streams and compares one range of both sides (see the module doc).
async fn compare_range(
    clusters: &Clusters,
    settings: &WorkerSettings,
    ns: &Namespace,
    range: &IdRange,
    counters: &crate::context::TaskCounters,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<VerifyCheckpoint, WorkerError> {
    let filter = partition::range_filter(range);
    let batch_size = settings.copy_batch_documents.min(u32::MAX as usize) as u32;
    let source_collection: Collection<RawDocumentBuf> = clusters.source_db(&ns.db).collection(&ns.coll);
    let destination_collection: Collection<RawDocumentBuf> = clusters.destination_db(&ns.db).collection(&ns.coll);
    let mut source = Side::open(
        source_collection.clone(),
        filter.clone(),
        clusters.copy_read_preference.selection_criteria(),
        "source",
        ns,
        batch_size,
    )
    .await?;
    let mut destination = Side::open(
        destination_collection.clone(),
        filter,
        SelectionCriteria::ReadPreference(mongodb::options::ReadPreference::Primary),
        "destination",
        ns,
        batch_size,
    )
    .await?;
    let mut differences: Vec<String> = Vec::new();
    let mut reported = 0u64;
    loop {
        if source.documents / PROGRESS_EVERY != reported {
            reported = source.documents / PROGRESS_EVERY;
            counters.add(PROGRESS_EVERY, 0);
            if cancel.is_cancelled() {
                return Err(WorkerError::Cancelled);
            }
        }
        if differences.len() >= MAX_LISTED_DIFFERENCES {
            // Enough named: only the digests are still needed.
            match (&source.head, &destination.head) {
                (None, None) => break,
                (Some(_), _) => source.advance().await?,
                (None, Some(_)) => destination.advance().await?,
            }
            continue;
        }
        match (&source.head, &destination.head) {
            (None, None) => break,
            (Some(document), None) => {
                differences.push(format!("_id {}: missing on destination", id_of(document)?));
                source.advance().await?;
            }
            (None, Some(document)) => {
                differences.push(format!("_id {}: extra on destination", id_of(document)?));
                destination.advance().await?;
            }
            (Some(a), Some(b)) if a.as_bytes() == b.as_bytes() => {
                source.advance().await?;
                destination.advance().await?;
            }
            (Some(a), Some(b)) => {
                let (source_id, destination_id) = (id_of(a)?, id_of(b)?);
                if bson_order::compare(&source_id, &destination_id) == Ordering::Equal {
                    differences.push(describe_difference(&source_id, a, b));
                    source.advance().await?;
                    destination.advance().await?;
                } else if !exists(
                    &destination_collection,
                    &source_id,
                    &format!("looking up a document of {ns} on the destination"),
                )
                .await?
                {
                    differences.push(format!("_id {source_id}: missing on destination"));
                    source.advance().await?;
                } else if !exists(
                    &source_collection,
                    &destination_id,
                    &format!("looking up a document of {ns} on the source"),
                )
                .await?
                {
                    differences.push(format!("_id {destination_id}: extra on destination"));
                    destination.advance().await?;
                } else {
                    // Both documents exist on both sides, yet the streams disagree on their order.
                    differences.push(format!(
                        "_id {source_id} and _id {destination_id}: the source and destination return them in different orders"
                    ));
                    source.advance().await?;
                    destination.advance().await?;
                }
            }
        }
    }
    counters.add(source.documents % PROGRESS_EVERY, source.bytes);
    let (source_digest, destination_digest) = (source.digest(), destination.digest());
    if differences.len() >= MAX_LISTED_DIFFERENCES {
        differences.push(format!("listing stopped after {MAX_LISTED_DIFFERENCES} differences"));
    }
    if differences.is_empty() && source_digest != destination_digest {
        // Cannot happen with byte-identical streams; never let a digest mismatch pass unnamed.
        differences.push(format!(
            "range digests differ: source {} documents {} bytes {}, destination {} documents {} bytes {}",
            source_digest.documents,
            source_digest.bytes,
            source_digest.hash,
            destination_digest.documents,
            destination_digest.bytes,
            destination_digest.hash
        ));
    }
    Ok(VerifyCheckpoint { source: source_digest, destination: destination_digest, differences })
}

/// Verifies one range (see the module doc) and saves a `Done` checkpoint with the result.
///
/// # Errors
///
/// `Fenced`, `Cancelled`, or a transient error that outlasted the retry budget; a mismatch is
/// not an error (it is in the checkpoint's `differences`).
pub async fn run_verify(ctx: &TaskContext, task: &VerifyTask) -> Result<(), WorkerError> {
    if let Some(previous) = &ctx.previous
        && previous.status == TaskStatus::Done
        && let CheckpointDetail::Verify(done) = &previous.detail
    {
        return ctx.checkpoints.save(TaskStatus::Done, CheckpointDetail::Verify(done.clone())).await;
    }
    let what = format!("verifying {} {}", task.ns, task.range);
    let result = mongo::retry(&what, &ctx.cancel, ctx.settings.retry_budget, || {
        compare_range(&ctx.clusters, &ctx.settings, &task.ns, &task.range, &ctx.counters, &ctx.cancel)
    })
    .await?;
    if result.differences.is_empty() {
        tracing::info!(task = %ctx.task, namespace = %task.ns, range = %task.range, documents = result.source.documents, "range verified");
    } else {
        tracing::warn!(
            task = %ctx.task,
            namespace = %task.ns,
            range = %task.range,
            differences = ?result.differences,
            "range differs between source and destination"
        );
    }
    ctx.checkpoints.save(TaskStatus::Done, CheckpointDetail::Verify(result)).await
}

// ---------------------------------------------------------------------------------------------
// metadata
// ---------------------------------------------------------------------------------------------

/// Collection options compared by the metadata verification, with their default when absent.
const COMPARED_OPTIONS: &[(&str, Option<&str>)] = &[
    ("validator", None),
    ("validationLevel", Some("strict")),
    ("validationAction", Some("error")),
    ("collation", None),
    ("clusteredIndex", None),
    ("timeseries", None),
    ("viewOn", None),
    ("pipeline", None),
    ("expireAfterSeconds", None),
];

fn render(value: Option<&Bson>) -> String {
    value.map_or_else(|| "absent".to_string(), |v| v.to_string())
}

/// Differences between the collection options of both sides.
fn option_differences(source: &Document, destination: &Document) -> Vec<String> {
    let mut differences = Vec::new();
    let same = |a: Option<&Bson>, b: Option<&Bson>| match (a, b) {
        (Some(Bson::Document(x)), Some(Bson::Document(y))) => schema::same_values(x, y),
        (Some(x), Some(y)) => bson_order::compare(x, y) == Ordering::Equal,
        (None, None) => true,
        _ => false,
    };
    let capped = |options: &Document| matches!(options.get("capped"), Some(Bson::Boolean(true)));
    if capped(source) != capped(destination) {
        differences.push(format!("capped: source {}, destination {}", capped(source), capped(destination)));
    } else if capped(source) {
        if !same(source.get("size"), destination.get("size")) {
            differences.push(format!(
                "capped size: source {}, destination {}",
                render(source.get("size")),
                render(destination.get("size"))
            ));
        }
        let max = |options: &Document| partition::as_i64(options.get("max")).filter(|m| *m > 0);
        if max(source) != max(destination) {
            differences.push(format!("capped max: source {:?}, destination {:?}", max(source), max(destination)));
        }
    }
    for (option, default) in COMPARED_OPTIONS {
        let default = default.map(|d| Bson::String(d.to_string()));
        let a = source.get(*option).or(default.as_ref());
        let b = destination.get(*option).or(default.as_ref());
        if !same(a, b) {
            differences.push(format!("option {option}: source {}, destination {}", render(a), render(b)));
        }
    }
    differences
}

/// Differences between the index sets of both sides.
fn index_differences(source: &[Document], destination: &[Document], build: BuildIndexes) -> Vec<String> {
    let name_of = |spec: &Document| spec.get_str("name").unwrap_or_default().to_string();
    let keep = |spec: &Document| !(build.excludes_hashed() && schema::is_hashed(spec));
    let wanted: Vec<Document> = source.iter().filter_map(schema::comparable_index).filter(keep).collect();
    let present: Vec<Document> = destination.iter().filter_map(schema::comparable_index).collect();
    let mut differences = Vec::new();
    for spec in &wanted {
        let name = name_of(spec);
        match present.iter().find(|other| name_of(other) == name) {
            None => differences.push(format!("index {name}: missing on destination")),
            Some(other) if !schema::same_values(spec, other) => {
                differences.push(format!("index {name}: differs (source {spec}, destination {other})"));
            }
            Some(_) => {}
        }
    }
    for other in &present {
        let name = name_of(other);
        if !wanted.iter().any(|spec| name_of(spec) == name) {
            differences.push(format!("index {name}: extra on destination"));
        }
    }
    differences
}

/// Compares one collection's definition on both sides.
async fn compare_metadata(
    clusters: &Clusters,
    ns: &Namespace,
    build: BuildIndexes,
) -> Result<Vec<String>, WorkerError> {
    let source = schema::list_collection_spec(&clusters.source, ns).await?;
    let destination = schema::list_collection_spec(&clusters.destination, ns).await?;
    let (source, destination) = match (source, destination) {
        (None, None) => return Ok(Vec::new()),
        (Some(_), None) => return Ok(vec![format!("{ns}: missing on destination")]),
        (None, Some(_)) => return Ok(vec![format!("{ns}: extra on destination")]),
        (Some(s), Some(d)) => (s, d),
    };
    let kind = |entry: &Document| entry.get_str("type").unwrap_or("collection").to_string();
    if kind(&source) != kind(&destination) {
        return Ok(vec![format!(
            "{ns}: a {} on the source, a {} on the destination",
            kind(&source),
            kind(&destination)
        )]);
    }
    let empty = Document::new();
    let mut differences = option_differences(
        source.get_document("options").unwrap_or(&empty),
        destination.get_document("options").unwrap_or(&empty),
    );
    if kind(&source) != "view" && build.builds_secondary_indexes() {
        let source_indexes = schema::list_index_specs(&clusters.source, ns).await?.unwrap_or_default();
        let destination_indexes = schema::list_index_specs(&clusters.destination, ns).await?.unwrap_or_default();
        differences.extend(index_differences(&source_indexes, &destination_indexes, build));
    }
    if differences.len() > MAX_LISTED_DIFFERENCES {
        let more = differences.len() - MAX_LISTED_DIFFERENCES;
        differences.truncate(MAX_LISTED_DIFFERENCES);
        differences.push(format!("and {more} more differences"));
    }
    Ok(differences)
}

/// Verifies one collection's indexes and options (see the module doc) and saves a `Done`
/// checkpoint with the differences.
pub async fn run_verify_metadata(ctx: &TaskContext, task: &VerifyMetadataTask) -> Result<(), WorkerError> {
    let build = ctx.options.build_indexes;
    let what = format!("verifying the definition of {}", task.ns);
    let differences = mongo::retry(&what, &ctx.cancel, ctx.settings.retry_budget, || {
        compare_metadata(&ctx.clusters, &task.ns, build)
    })
    .await?;
    if differences.is_empty() {
        tracing::info!(task = %ctx.task, namespace = %task.ns, "collection definition verified");
    } else {
        tracing::warn!(task = %ctx.task, namespace = %task.ns, differences = ?differences, "collection definition differs");
    }
    let result = VerifyCheckpoint { differences, ..Default::default() };
    ctx.checkpoints.save(TaskStatus::Done, CheckpointDetail::VerifyMetadata(result)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_differences_use_defaults_and_value_equality() {
        let source = doc! {"capped": true, "size": 4096_i64, "max": 10, "validator": {"a": {"$type": "int"}}};
        let same = doc! {"capped": true, "size": 4096, "max": 10_i64, "validator": {"a": {"$type": "int"}},
        "validationLevel": "strict", "validationAction": "error"};
        assert!(option_differences(&source, &same).is_empty(), "{:?}", option_differences(&source, &same));
        let relaxed = doc! {"capped": true, "size": schema::SYNC_CAPPED_SIZE};
        let differences = option_differences(&source, &relaxed);
        assert_eq!(differences.len(), 3, "{differences:?}");
        assert!(differences[0].starts_with("capped size"));
        assert!(differences[1].starts_with("capped max"));
        assert!(differences[2].starts_with("option validator"));
        assert_eq!(
            option_differences(&doc! {"capped": true, "size": 1}, &doc! {}),
            vec!["capped: source true, destination false"]
        );
    }

    #[test]
    fn index_differences_name_missing_extra_and_changed_indexes() {
        let id = doc! {"v": 2, "key": {"_id": 1}, "name": "_id_"};
        let source = vec![
            id.clone(),
            doc! {"v": 2, "key": {"a": 1}, "name": "a_1", "unique": true},
            doc! {"v": 2, "key": {"b": 1}, "name": "b_1"},
            doc! {"v": 2, "key": {"t": 1}, "name": "t_1", "expireAfterSeconds": 60},
            doc! {"v": 2, "key": {"h": "hashed"}, "name": "h_hashed"},
        ];
        let destination = vec![
            id,
            doc! {"v": 2, "key": {"a": 1.0}, "name": "a_1", "unique": true, "prepareUnique": true},
            doc! {"v": 2, "key": {"t": 1}, "name": "t_1", "expireAfterSeconds": i32::MAX},
            doc! {"v": 2, "key": {"z": 1}, "name": "z_1"},
        ];
        let differences = index_differences(&source, &destination, BuildIndexes::BeforeDataCopy);
        assert_eq!(differences.len(), 4, "{differences:?}");
        assert_eq!(differences[0], "index b_1: missing on destination");
        assert!(differences[1].starts_with("index t_1: differs"));
        assert_eq!(differences[2], "index h_hashed: missing on destination");
        assert_eq!(differences[3], "index z_1: extra on destination");
        // Hashed indexes are not expected when they were excluded.
        let differences = index_differences(&source, &destination, BuildIndexes::ExcludeHashed);
        assert!(!differences.iter().any(|d| d.contains("h_hashed")), "{differences:?}");
    }

    #[test]
    fn reordered_fields_are_named_as_such() {
        let a = RawDocumentBuf::from_document(&doc! {"_id": 1, "x": 1, "y": 2}).unwrap();
        let b = RawDocumentBuf::from_document(&doc! {"_id": 1, "y": 2, "x": 1}).unwrap();
        let c = RawDocumentBuf::from_document(&doc! {"_id": 1, "x": 1, "y": 3}).unwrap();
        assert_eq!(describe_difference(&Bson::Int32(1), &a, &b), "_id 1: differs (same fields in another order)");
        assert_eq!(describe_difference(&Bson::Int32(1), &a, &c), "_id 1: differs");
    }
}
