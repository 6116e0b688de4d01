//! The copy executor: one `_id` range of one collection, source to destination.
//!
//! # Pipeline
//!
//! A reader streams the range from the source as raw documents (no decode, no re-encode),
//! sorted and hinted on `_id`, with majority read concern and the configured read preference,
//! and cuts it into batches of at most `copy_batch_documents` documents and `copy_batch_bytes`
//! bytes (a document larger than that goes alone). An inserter writes each batch with an
//! unordered `insert_many` (`w: majority, j: true`). The two are joined by a one-slot channel
//! and the reader reserves the slot *before* filling a batch, so at most two batches of a task
//! are in memory: the one being inserted and the next one.
//!
//! # Durability and resumption
//!
//! After every acknowledged batch the task's checkpoint is saved, fenced on the claim, with the
//! batch's last `_id`. A restart (another worker, or a retry after a transient error) reopens
//! the cursor strictly after that `_id` ([`partition::range_filter_after`]), so at most the one
//! batch in flight is inserted again — and re-inserting is harmless: duplicate-key errors on
//! `_id` are skipped and counted as `documents_recopied`. A natural-order copy (capped
//! collections) has no `_id` position and restarts from its beginning, like mongosync.
//!
//! `documents_copied` counts the range's documents known to be on the destination, whether
//! this pass inserted them or found them there (a duplicate after the last durable position
//! was never counted); `documents_recopied` counts the duplicates.
//!
//! A destination that does not reject duplicate `_id`s (a time-series collection) cannot skip
//! them: there every pass first deletes, on the destination, what its filter is about to copy
//! (what an interrupted attempt left past the durable position), so resuming stays exact.
//!
//! A fenced checkpoint write stops the copy at once, without another write. Transient errors
//! (network, elections, killed cursors) reopen the cursor from the last durable position with
//! backoff; the backoff restarts whenever a pass made progress. A source collection that
//! disappears (dropped or renamed during the copy) ends the copy successfully: the change
//! stream carries the drop or rename.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use backon::BackoffBuilder;
use bson::{Bson, Document, RawDocumentBuf, doc};
use clustersync_common::extjson::ExtBson;
use clustersync_common::model::{CheckpointDetail, CopyCheckpoint, CopyTask, TaskStatus};
use clustersync_common::namespace::Namespace;
use futures::TryStreamExt;
use mongodb::error::{ErrorKind, IndexedWriteError};
use mongodb::options::{Acknowledgment, Hint, ReadConcern, WriteConcern};
use mongodb::{Collection, Cursor};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::context::TaskContext;
use crate::error::{self, DUPLICATE_KEY, WorkerError};
use crate::mongo::{self, Clusters};
use crate::partition;
use crate::settings::WorkerSettings;

/// Server error codes that end a cursor when its collection is dropped or renamed.
const QUERY_PLAN_KILLED: i32 = 175;
const NAMESPACE_NOT_FOUND: i32 = 26;
/// `BadValue`: among others, a hint naming an index the collection does not have.
const BAD_VALUE: i32 = 2;

/// A batch read from the source.
struct Batch {
    documents: Vec<RawDocumentBuf>,
    bytes: u64,
    /// `_id` of the last document (the largest, in `_id` order).
    last_id: Option<Bson>,
}

/// Why one pass of the copy stopped.
struct PassFailure {
    error: WorkerError,
    /// Reopening the cursor from the last durable position can succeed.
    transient: bool,
}

impl PassFailure {
    fn of(error: WorkerError) -> Self {
        let transient = error.is_retryable();
        Self { error, transient }
    }
}

/// How a pass ended.
enum PassEnd {
    /// The range is copied.
    Finished,
    /// The source collection no longer exists.
    SourceGone,
}

fn w_majority() -> WriteConcern {
    WriteConcern::builder().w(Acknowledgment::Majority).journal(true).build()
}

/// Copies one range (see the module doc). Ends with a `Done` checkpoint.
///
/// # Errors
///
/// `Fenced` (stop, another holder owns the task), `Cancelled`, a `Fatal` write error naming
/// the namespace and `_id`, or a transient error that outlasted the retry budget.
pub async fn run_copy(ctx: &TaskContext, task: &CopyTask) -> Result<(), WorkerError> {
    let (previous_status, previous) = match &ctx.previous {
        Some(checkpoint) => match &checkpoint.detail {
            CheckpointDetail::Copy(copy) => (Some(checkpoint.status.clone()), copy.clone()),
            other => {
                return Err(WorkerError::InvalidData(format!(
                    "copy task {} has a checkpoint of another kind: {other:?}",
                    ctx.task
                )));
            }
        },
        None => (None, CopyCheckpoint::default()),
    };
    if previous_status == Some(TaskStatus::Done) {
        ctx.checkpoints.save(TaskStatus::Done, CheckpointDetail::Copy(previous)).await?;
        return Ok(());
    }
    let mut start = previous;
    if task.natural_order {
        // Natural order has no resumable position: start over, duplicates are skipped.
        start.last_id = None;
    }
    tracing::info!(
        task = %ctx.task,
        namespace = %task.ns,
        range = %task.range,
        natural_order = task.natural_order,
        resume_after = ?start.last_id.as_ref().map(|id| id.0.to_string()),
        "copy starting"
    );
    let exact = mongo::retry("checking the destination's _id index", &ctx.cancel, ctx.settings.retry_budget, || {
        destination_rejects_duplicate_ids(&ctx.clusters, &task.ns)
    })
    .await
    .map(|rejects| !rejects)?;
    let durable = Mutex::new(start);
    // Batches acknowledged so far: a pass that moved it made progress, and the backoff restarts.
    let acknowledged = AtomicU64::new(0);
    let mut use_hint = true;
    let mut delays = mongo::backoff(ctx.settings.retry_budget).build();
    loop {
        let before = acknowledged.load(Ordering::Relaxed);
        let outcome = copy_pass(ctx, task, &durable, &acknowledged, exact, &mut use_hint).await;
        match outcome {
            Ok(end) => {
                if matches!(end, PassEnd::SourceGone) {
                    tracing::info!(task = %ctx.task, namespace = %task.ns, "source collection gone, copy ends here");
                }
                let done = lock(&durable).clone();
                ctx.checkpoints.save(TaskStatus::Done, CheckpointDetail::Copy(done.clone())).await?;
                tracing::info!(
                    task = %ctx.task,
                    namespace = %task.ns,
                    documents = done.documents_copied,
                    bytes = done.bytes_copied,
                    recopied = done.documents_recopied,
                    "copy done"
                );
                return Ok(());
            }
            Err(failure) if failure.transient => {
                let after = acknowledged.load(Ordering::Relaxed);
                if after > before {
                    delays = mongo::backoff(ctx.settings.retry_budget).build();
                }
                let Some(delay) = delays.next() else {
                    return Err(failure.error);
                };
                tracing::warn!(
                    task = %ctx.task,
                    namespace = %task.ns,
                    error = %failure.error,
                    retry_in_ms = delay.as_millis() as u64,
                    "copy interrupted, reopening the cursor after the last durable _id"
                );
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = ctx.cancel.cancelled() => return Err(WorkerError::Cancelled),
                }
            }
            Err(failure) => return Err(failure.error),
        }
    }
}

fn lock(durable: &Mutex<CopyCheckpoint>) -> std::sync::MutexGuard<'_, CopyCheckpoint> {
    // A poisoned lock only means a panic elsewhere; the checkpoint value itself is consistent.
    durable.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Opens the source cursor of a range, after `after` (`_id` order) or from the start.
async fn open_cursor(
    clusters: &Clusters,
    settings: &WorkerSettings,
    ns: &Namespace,
    filter: Document,
    natural_order: bool,
    use_hint: &mut bool,
) -> Result<Cursor<RawDocumentBuf>, WorkerError> {
    let collection: Collection<RawDocumentBuf> = clusters.source_db(&ns.db).collection(&ns.coll);
    loop {
        let mut find = collection
            .find(filter.clone())
            .batch_size(settings.copy_batch_documents.min(u32::MAX as usize) as u32)
            .read_concern(ReadConcern::majority())
            .selection_criteria(clusters.copy_read_preference.selection_criteria());
        if natural_order {
            find = find.hint(Hint::Keys(doc! {"$natural": 1}));
        } else {
            find = find.sort(doc! {"_id": 1});
            if *use_hint {
                find = find.hint(Hint::Keys(doc! {"_id": 1}));
            }
        }
        match find.await {
            Ok(cursor) => return Ok(cursor),
            // A collection without an `{_id: 1}` index (clustered, or an old capped one): the
            // sort alone still reads in `_id` order.
            Err(e) if *use_hint && !natural_order && error::server_code(&e) == Some(BAD_VALUE) => {
                tracing::debug!(namespace = %ns, error = %e, "no {{_id: 1}} index to hint, reading without a hint");
                *use_hint = false;
            }
            Err(e) => return Err(WorkerError::mongo(format!("reading {ns} from the source"), e)),
        }
    }
}

/// Whether inserting a document whose `_id` is already on the destination fails (an `_id` index
/// or a clustered collection). Time-series collections have neither: a copy into one must not
/// rely on duplicate-key errors to skip what an earlier attempt inserted. A missing collection
/// is created by the first insert with an `_id` index.
async fn destination_rejects_duplicate_ids(clusters: &Clusters, ns: &Namespace) -> Result<bool, WorkerError> {
    let Some(spec) = crate::schema::list_collection_spec(&clusters.destination, ns).await? else {
        return Ok(true);
    };
    if spec.get_str("type").is_ok_and(|kind| kind == "timeseries") {
        return Ok(false);
    }
    let indexes = crate::schema::list_index_specs(&clusters.destination, ns).await?.unwrap_or_default();
    Ok(indexes.iter().any(|index| {
        let on_id = index.get_document("key").is_ok_and(|key| key.len() == 1 && key.contains_key("_id"));
        let unique = index.get_str("name").is_ok_and(|name| name == "_id_")
            || matches!(index.get("unique"), Some(Bson::Boolean(true)))
            || matches!(index.get("clustered"), Some(Bson::Boolean(true)));
        on_id && unique
    }))
}

/// Whether the source collection exists (after a cursor died with a namespace error).
async fn source_exists(clusters: &Clusters, ns: &Namespace) -> Result<bool, WorkerError> {
    Ok(crate::schema::list_collection_spec(&clusters.source, ns).await?.is_some())
}

/// Maps a read error: a vanished collection ends the copy, anything else is classified.
async fn read_failure(clusters: &Clusters, ns: &Namespace, error: WorkerError) -> Result<PassEnd, PassFailure> {
    if matches!(error.code(), Some(QUERY_PLAN_KILLED | NAMESPACE_NOT_FOUND)) {
        return match source_exists(clusters, ns).await {
            Ok(false) => Ok(PassEnd::SourceGone),
            // The collection is back (or still there): read it again.
            Ok(true) => Err(PassFailure { error, transient: true }),
            Err(e) => Err(PassFailure::of(e)),
        };
    }
    Err(PassFailure::of(error))
}

/// One pass: read from the durable position to the end of the range, inserting batch by batch.
async fn copy_pass(
    ctx: &TaskContext,
    task: &CopyTask,
    durable: &Mutex<CopyCheckpoint>,
    acknowledged: &AtomicU64,
    exact: bool,
    use_hint: &mut bool,
) -> Result<PassEnd, PassFailure> {
    ctx.check_cancelled().map_err(PassFailure::of)?;
    let filter = if task.natural_order {
        // The pass reads the whole collection again: it counts every document again.
        let mut state = lock(durable);
        state.documents_copied = 0;
        state.bytes_copied = 0;
        drop(state);
        partition::range_filter(&task.range)
    } else {
        let after = lock(durable).last_id.clone();
        partition::range_filter_after(&task.range, after.as_ref().map(|id| &id.0))
    };
    if exact {
        // Nothing rejects a second copy of a document here (a time-series collection): remove
        // whatever an earlier attempt left past the durable position before copying it again.
        let destination: Collection<Document> = ctx.clusters.destination_db(&task.ns.db).collection(&task.ns.coll);
        let removed = destination.delete_many(filter.clone()).write_concern(w_majority()).await.map_err(|e| {
            PassFailure::of(WorkerError::mongo(format!("clearing the rest of the range on {}", task.ns), e))
        })?;
        if removed.deleted_count > 0 {
            tracing::info!(task = %ctx.task, namespace = %task.ns, removed = removed.deleted_count, "removed documents of an interrupted attempt");
            lock(durable).documents_recopied += removed.deleted_count;
        }
    }
    let cursor = match open_cursor(&ctx.clusters, &ctx.settings, &task.ns, filter, task.natural_order, use_hint).await {
        Ok(cursor) => cursor,
        Err(e) => return read_failure(&ctx.clusters, &task.ns, e).await,
    };
    let (sender, receiver) = mpsc::channel::<Batch>(1);
    let reader = read_batches(cursor, sender, &ctx.settings, &task.ns);
    let inserter = insert_batches(ctx, task, receiver, durable, acknowledged);
    // Whichever side fails first ends the pass; the other is dropped with it (an insert in
    // flight may still land: the next pass re-inserts it and skips the duplicates). A
    // cancellation (pause, lease about to expire) does not wait for a slow cursor or insert:
    // stopping anywhere is safe, the checkpoint only ever names acknowledged batches.
    let joined = tokio::select! {
        joined = futures::future::try_join(reader, inserter) => joined,
        _ = ctx.cancel.cancelled() => return Err(PassFailure::of(WorkerError::Cancelled)),
    };
    match joined {
        Ok(_) => Ok(PassEnd::Finished),
        Err(PassOrRead::Pass(failure)) => Err(failure),
        Err(PassOrRead::Read(error)) => read_failure(&ctx.clusters, &task.ns, error).await,
    }
}

enum PassOrRead {
    Pass(PassFailure),
    Read(WorkerError),
}

async fn read_batches(
    mut cursor: Cursor<RawDocumentBuf>,
    sender: mpsc::Sender<Batch>,
    settings: &WorkerSettings,
    ns: &Namespace,
) -> Result<(), PassOrRead> {
    let read_error = |e| PassOrRead::Read(WorkerError::mongo(format!("reading {ns} from the source"), e));
    let mut carried: Option<RawDocumentBuf> = None;
    loop {
        // Reserve the slot before filling the batch: memory stays at two batches.
        let Ok(permit) = sender.reserve().await else {
            // The inserter is gone (it failed); its error ends the pass.
            return Ok(());
        };
        let mut batch = Batch { documents: Vec::new(), bytes: 0, last_id: None };
        if let Some(document) = carried.take() {
            batch.bytes += document.as_bytes().len() as u64;
            batch.documents.push(document);
        }
        let mut exhausted = false;
        while batch.documents.len() < settings.copy_batch_documents {
            let Some(document) = cursor.try_next().await.map_err(read_error)? else {
                exhausted = true;
                break;
            };
            let size = document.as_bytes().len() as u64;
            // A document that does not fit starts the next batch (alone if it is huge).
            if !batch.documents.is_empty() && batch.bytes + size > settings.copy_batch_bytes as u64 {
                carried = Some(document);
                break;
            }
            batch.bytes += size;
            batch.documents.push(document);
        }
        if batch.documents.is_empty() {
            return Ok(());
        }
        if let Some(last) = batch.documents.last() {
            batch.last_id = Some(id_of(last).map_err(PassOrRead::Read)?);
        }
        permit.send(batch);
        if exhausted {
            return Ok(());
        }
    }
}

/// The `_id` of a raw document.
fn id_of(document: &RawDocumentBuf) -> Result<Bson, WorkerError> {
    match document.get("_id") {
        Ok(Some(id)) => Bson::try_from(id).map_err(|e| WorkerError::InvalidData(format!("unreadable _id: {e}"))),
        Ok(None) => Err(WorkerError::InvalidData("a source document has no _id".into())),
        Err(e) => Err(WorkerError::InvalidData(format!("malformed source document: {e}"))),
    }
}

/// Whether a write error is a duplicate key on `_id` (the document is already there).
fn is_duplicate_id(error: &IndexedWriteError) -> bool {
    if error.code != DUPLICATE_KEY {
        return false;
    }
    // "E11000 duplicate key error collection: db.c index: _id_ dup key: { _id: 1 }". During the
    // copy `_id` is the only unique index (the others are built non-unique); a message naming
    // another index must not be mistaken for an already-copied document.
    match error.message.split_once("index: ") {
        Some((_, rest)) => rest.starts_with("_id_ ") || rest.starts_with("_id_\n") || rest == "_id_",
        None => true,
    }
}

/// Inserts batches as they come, saving a checkpoint after each.
async fn insert_batches(
    ctx: &TaskContext,
    task: &CopyTask,
    mut receiver: mpsc::Receiver<Batch>,
    durable: &Mutex<CopyCheckpoint>,
    acknowledged: &AtomicU64,
) -> Result<(), PassOrRead> {
    let collection: Collection<RawDocumentBuf> = ctx.clusters.destination_db(&task.ns.db).collection(&task.ns.coll);
    while let Some(batch) = receiver.recv().await {
        ctx.check_cancelled().map_err(|e| PassOrRead::Pass(PassFailure::of(e)))?;
        let duplicates = insert_batch(&collection, &task.ns, &batch).await.map_err(PassOrRead::Pass)?;
        let documents = batch.documents.len() as u64;
        let checkpoint = {
            let mut state = lock(durable);
            if !task.natural_order {
                state.last_id = batch.last_id.clone().map(ExtBson);
            }
            // A duplicate is a document of this range already on the destination that no
            // durable checkpoint counted yet (it is after the last durable `_id`, or a natural
            // pass counts from zero): it is copied, and also counted as re-copied.
            state.documents_copied += documents;
            state.bytes_copied += batch.bytes;
            state.documents_recopied += duplicates;
            state.clone()
        };
        // Fenced: stop without writing anything more. A store error is transient: the pass
        // restarts from the previous durable position and re-inserts this batch as duplicates.
        ctx.checkpoints
            .save(TaskStatus::Running, CheckpointDetail::Copy(checkpoint))
            .await
            .map_err(|e| PassOrRead::Pass(PassFailure::of(e)))?;
        acknowledged.fetch_add(1, Ordering::Relaxed);
        ctx.counters.add(documents, batch.bytes);
        if duplicates > 0 {
            tracing::debug!(task = %ctx.task, namespace = %task.ns, duplicates, "skipped documents already on the destination");
        }
    }
    Ok(())
}

/// Inserts one batch; returns how many documents were already on the destination.
async fn insert_batch(
    collection: &Collection<RawDocumentBuf>,
    ns: &Namespace,
    batch: &Batch,
) -> Result<u64, PassFailure> {
    let result = collection.insert_many(&batch.documents).ordered(false).write_concern(w_majority()).await;
    let error = match result {
        Ok(_) => return Ok(0),
        Err(error) => error,
    };
    let ErrorKind::InsertMany(failure) = error.kind.as_ref() else {
        return Err(PassFailure::of(WorkerError::mongo(format!("inserting into {ns}"), error)));
    };
    if let Some(concern) = &failure.write_concern_error {
        // The writes happened but are not known to be majority-durable: redo the batch.
        return Err(PassFailure {
            transient: true,
            error: WorkerError::InvalidData(format!(
                "write concern not satisfied inserting into {ns}: {} ({})",
                concern.message, concern.code
            )),
        });
    }
    let mut duplicates = 0u64;
    for write_error in failure.write_errors.iter().flatten() {
        if is_duplicate_id(write_error) {
            duplicates += 1;
            continue;
        }
        let id = batch
            .documents
            .get(write_error.index)
            .and_then(|d| id_of(d).ok())
            .map(|id| id.to_string())
            .unwrap_or_else(|| "unknown".into());
        let transient = error::is_retryable_code(write_error.code);
        let description =
            format!("inserting _id {id} into {ns} failed: {} (code {})", write_error.message, write_error.code);
        return Err(if transient {
            PassFailure { error: WorkerError::InvalidData(description), transient: true }
        } else {
            PassFailure { error: WorkerError::fatal("CopyWriteFailed", description), transient: false }
        });
    }
    Ok(duplicates)
}

/// Copies a whole source collection again with replacement upserts by `_id` (after a rename
/// that overlapped the copy). Transient errors resume after the last upserted `_id`.
pub async fn recopy_collection(
    clusters: &Clusters,
    ns: &Namespace,
    cancel: &CancellationToken,
) -> Result<(), WorkerError> {
    let settings = WorkerSettings::default();
    let range = clustersync_common::model::IdRange::whole_collection();
    let mut last_id: Option<Bson> = None;
    let mut upserted = 0u64;
    let mut use_hint = true;
    let mut delays = mongo::backoff(settings.retry_budget).build();
    loop {
        let before = upserted;
        let pass =
            recopy_pass(clusters, &settings, ns, &range, cancel, &mut last_id, &mut upserted, &mut use_hint).await;
        match pass {
            Ok(_) => {
                tracing::info!(namespace = %ns, documents = upserted, "collection copied again");
                return Ok(());
            }
            Err(failure) if failure.transient => {
                if upserted > before {
                    delays = mongo::backoff(settings.retry_budget).build();
                }
                let Some(delay) = delays.next() else {
                    return Err(failure.error);
                };
                tracing::warn!(namespace = %ns, error = %failure.error, retry_in_ms = delay.as_millis() as u64, "recopy interrupted, resuming");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = cancel.cancelled() => return Err(WorkerError::Cancelled),
                }
            }
            Err(failure) => return Err(failure.error),
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn recopy_pass(
    clusters: &Clusters,
    settings: &WorkerSettings,
    ns: &Namespace,
    range: &clustersync_common::model::IdRange,
    cancel: &CancellationToken,
    last_id: &mut Option<Bson>,
    upserted: &mut u64,
    use_hint: &mut bool,
) -> Result<PassEnd, PassFailure> {
    let filter = partition::range_filter_after(range, last_id.as_ref());
    let mut cursor = match open_cursor(clusters, settings, ns, filter, false, use_hint).await {
        Ok(cursor) => cursor,
        Err(e) => return read_failure(clusters, ns, e).await,
    };
    let db = clusters.destination_db(&ns.db);
    let mut updates: Vec<Document> = Vec::new();
    let mut bytes = 0usize;
    let mut batch_last: Option<Bson> = None;
    loop {
        if cancel.is_cancelled() {
            return Err(PassFailure::of(WorkerError::Cancelled));
        }
        let next = match cursor.try_next().await {
            Ok(next) => next,
            Err(e) => {
                return read_failure(clusters, ns, WorkerError::mongo(format!("reading {ns} from the source"), e))
                    .await;
            }
        };
        let flush = match &next {
            None => !updates.is_empty(),
            Some(document) => {
                !updates.is_empty()
                    && (updates.len() >= settings.copy_batch_documents
                        || bytes + document.as_bytes().len() > settings.copy_batch_bytes)
            }
        };
        if flush {
            let count = updates.len() as u64;
            upsert_batch(&db, ns, std::mem::take(&mut updates)).await?;
            *upserted += count;
            *last_id = batch_last.take();
            bytes = 0;
        }
        let Some(document) = next else {
            return Ok(PassEnd::Finished);
        };
        let id = id_of(&document).map_err(PassFailure::of)?;
        let replacement = document.to_document().map_err(|e| {
            PassFailure::of(WorkerError::InvalidData(format!("malformed source document in {ns}: {e}")))
        })?;
        bytes += document.as_bytes().len();
        updates.push(doc! {"q": {"_id": id.clone()}, "u": replacement, "upsert": true});
        batch_last = Some(id);
    }
}

/// Sends one `update` command of replacement upserts and checks its write errors.
async fn upsert_batch(db: &mongodb::Database, ns: &Namespace, updates: Vec<Document>) -> Result<(), PassFailure> {
    let command = doc! {
        "update": &ns.coll,
        "updates": updates,
        "ordered": false,
        "writeConcern": {"w": "majority", "j": true},
    };
    let reply = db
        .run_command(command)
        .await
        .map_err(|e| PassFailure::of(WorkerError::mongo(format!("upserting into {ns}"), e)))?;
    if let Ok(concern) = reply.get_document("writeConcernError") {
        return Err(PassFailure {
            transient: true,
            error: WorkerError::InvalidData(format!("write concern not satisfied upserting into {ns}: {concern}")),
        });
    }
    if let Ok(errors) = reply.get_array("writeErrors")
        && let Some(first) = errors.first().and_then(Bson::as_document)
    {
        let code = first.get_i32("code").unwrap_or_default();
        let description = format!("upserting into {ns} failed: {first}");
        return Err(if error::is_retryable_code(code) {
            PassFailure { error: WorkerError::InvalidData(description), transient: true }
        } else {
            PassFailure { error: WorkerError::fatal("CopyWriteFailed", description), transient: false }
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_error(code: i32, message: &str) -> IndexedWriteError {
        let json = serde_json::json!({"index": 0, "code": code, "errmsg": message});
        serde_json::from_value(json).expect("valid write error")
    }

    #[test]
    fn only_duplicates_on_id_are_skipped() {
        assert!(is_duplicate_id(&write_error(
            11000,
            "E11000 duplicate key error collection: db.c index: _id_ dup key: { _id: 1 }"
        )));
        assert!(is_duplicate_id(&write_error(11000, "E11000 duplicate key error collection: db.c")));
        assert!(!is_duplicate_id(&write_error(
            11000,
            "E11000 duplicate key error collection: db.c index: email_1 dup key: { email: \"a\" }"
        )));
        assert!(!is_duplicate_id(&write_error(
            11000,
            "E11000 duplicate key error collection: db.c index: _id_other dup key: { x: 1 }"
        )));
        assert!(!is_duplicate_id(&write_error(121, "Document failed validation")));
    }
}
