//! Applying change events to the destination: translation of events into idempotent writes,
//! the parallel appliers that batch them into raw `update` / `delete` commands, and repair by
//! lookup.
//!
//! # Idempotence
//!
//! Every write can be applied twice — after a retry, a crash, or a takeover from an older
//! checkpoint — with the same result: inserts and replaces are replace-by-`_id` upserts,
//! deletes delete by `_id`, and updates `$set` the *new values* the update description reports
//! (never increments) and `$unset` removed fields.
//!
//! # Repair by lookup
//!
//! An update that cannot be applied as described — its paths are ambiguous (`disambiguatedPaths`,
//! field names with dots or dollars), conflict with each other, fail on the destination (path
//! conflict, type mismatch), or match no document (it overlaps the copy) — is repaired by reading
//! the document from the source (majority) and replacing it on the destination, or deleting it
//! if it is gone. This is correct because the source is ahead of the event being applied and
//! every later change of the document still follows in the stream: the document converges.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bson::raw::ValueAccessErrorKind;
use bson::{Bson, Document, RawArrayBuf, RawBson, RawBsonRef, RawDocument, RawDocumentBuf, doc};
use clustersync_common::namespace::Namespace;
use futures::TryStreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::cdc::event::{ChangeEvent, OpType};
use crate::cdc::watermark::SharedWatermark;
use crate::context::TaskCounters;
use crate::error::WorkerError;
use crate::mongo::{self, Clusters};

/// Largest update statement (`u`) sent as such; MongoDB accepts commands of 16 MB + 16 KB, and
/// the rest of the statement must fit in that margin. Larger updates are repaired by lookup.
const MAX_STATEMENT_BYTES: usize = 16 * 1024 * 1024 - 16 * 1024;

/// Most bytes of statements in one command, leaving room for a lone maximal statement.
const MAX_COMMAND_BYTES: usize = 12 * 1024 * 1024;

/// Most statements in one command (the server's `maxWriteBatchSize`).
const MAX_COMMAND_STATEMENTS: usize = 100_000;

/// The error name a migration fails with when a document cannot be written to the destination.
pub const CHANGE_APPLY_FAILED: &str = "ChangeApplyFailed";

/// One destination write derived from an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// An `update` statement `{q: filter, u: update, upsert}`.
    Update { filter: RawDocumentBuf, update: RawDocumentBuf, upsert: bool },
    /// A `delete` statement `{q: filter, limit: 1}`.
    Delete { filter: RawDocumentBuf },
    /// Read the document from the source and replace (or delete) it on the destination.
    Lookup { reason: String },
}

/// What an `updateDescription` becomes.
#[derive(Debug, Clone, PartialEq)]
pub enum UpdateTranslation {
    /// Update documents (`u`) to apply in order: array truncations first, then `$set`/`$unset`.
    Statements(Vec<RawDocumentBuf>),
    /// The description cannot be applied as is; repair by lookup, for this reason.
    Repair(String),
    /// Nothing changes.
    Noop,
}

fn invalid(what: &str, error: impl std::fmt::Display) -> WorkerError {
    WorkerError::InvalidData(format!("{what}: {error}"))
}

fn optional<T>(result: bson::raw::ValueAccessResult<T>, what: &str) -> Result<Option<T>, WorkerError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(error) if matches!(error.kind, ValueAccessErrorKind::NotPresent) => Ok(None),
        Err(error) => Err(invalid(what, error)),
    }
}

/// Whether a reported path can be used as an update path as is: no empty component and no
/// component starting with `$` (operators would read it as one).
fn expressible(path: &str) -> bool {
    !path.is_empty() && path.split('.').all(|part| !part.is_empty() && !part.starts_with('$'))
}

/// The first pair of paths where one is the other or a prefix of it (MongoDB refuses such
/// updates with a path conflict).
fn conflict<'a>(paths: &[&'a str]) -> Option<(&'a str, &'a str)> {
    let mut seen: HashMap<&str, &str> = HashMap::with_capacity(paths.len());
    for path in paths {
        if let Some(previous) = seen.insert(path, path) {
            return Some((previous, path));
        }
    }
    for path in paths {
        let mut end = 0;
        while let Some(dot) = path[end..].find('.') {
            let prefix = &path[..end + dot];
            if let Some(other) = seen.get(prefix) {
                return Some((other, path));
            }
            end += dot + 1;
        }
    }
    None
}

/// Translates an `updateDescription` into update statements.
pub fn translate_update(description: &RawDocument) -> Result<UpdateTranslation, WorkerError> {
    if let Some(disambiguated) = optional(description.get_document("disambiguatedPaths"), "disambiguatedPaths")?
        && !disambiguated.is_empty()
    {
        return Ok(UpdateTranslation::Repair("the update has ambiguous field paths".into()));
    }
    let updated = optional(description.get_document("updatedFields"), "updatedFields")?;
    let mut removed = Vec::new();
    if let Some(array) = optional(description.get_array("removedFields"), "removedFields")? {
        for value in array {
            let value = value.map_err(|e| invalid("removedFields", e))?;
            removed.push(value.as_str().ok_or_else(|| invalid("removedFields", "not a string"))?);
        }
    }
    let mut truncated = Vec::new();
    if let Some(array) = optional(description.get_array("truncatedArrays"), "truncatedArrays")? {
        for value in array {
            let entry = value
                .map_err(|e| invalid("truncatedArrays", e))?
                .as_document()
                .ok_or_else(|| invalid("truncatedArrays", "entry is not a document"))?;
            let field = entry.get_str("field").map_err(|e| invalid("truncatedArrays.field", e))?;
            let new_size = match entry.get("newSize").map_err(|e| invalid("truncatedArrays.newSize", e))? {
                Some(RawBsonRef::Int32(n)) => i64::from(n),
                Some(RawBsonRef::Int64(n)) => n,
                _ => return Err(invalid("truncatedArrays.newSize", "not an integer")),
            };
            truncated.push((field, new_size));
        }
    }

    let mut updated_paths = Vec::new();
    if let Some(updated) = updated {
        for element in updated.iter() {
            updated_paths.push(element.map_err(|e| invalid("updatedFields", e))?.0);
        }
    }
    let all_paths: Vec<&str> = updated_paths.iter().chain(removed.iter()).copied().collect();
    if let Some(path) = all_paths.iter().chain(truncated.iter().map(|(field, _)| field)).find(|p| !expressible(p)) {
        return Ok(UpdateTranslation::Repair(format!("field path {path:?} cannot be expressed as an update path")));
    }
    if let Some((a, b)) = conflict(&all_paths) {
        return Ok(UpdateTranslation::Repair(format!("field paths {a:?} and {b:?} conflict")));
    }

    let mut statements = Vec::new();
    // Truncations come first, as separate statements: the reported updates of elements refer to
    // the truncated array, and `$push` on a path that is also `$set` would conflict.
    let truncated_fields: Vec<&str> = truncated.iter().map(|(field, _)| *field).collect();
    let push_statement = |entries: &[(&str, i64)]| {
        let mut push = RawDocumentBuf::new();
        for (field, new_size) in entries {
            let mut each = RawDocumentBuf::new();
            each.append("$each", RawArrayBuf::new());
            each.append("$slice", *new_size);
            push.append(*field, each);
        }
        let mut statement = RawDocumentBuf::new();
        statement.append("$push", push);
        statement
    };
    if conflict(&truncated_fields).is_some() {
        for entry in &truncated {
            statements.push(push_statement(std::slice::from_ref(entry)));
        }
    } else if !truncated.is_empty() {
        statements.push(push_statement(&truncated));
    }
    if !all_paths.is_empty() {
        let mut statement = RawDocumentBuf::new();
        if let Some(updated) = updated.filter(|u| !u.is_empty()) {
            statement.append("$set", updated.to_raw_document_buf());
        }
        if !removed.is_empty() {
            let mut unset = RawDocumentBuf::new();
            for field in &removed {
                unset.append(*field, "");
            }
            statement.append("$unset", unset);
        }
        if statement.as_bytes().len() > MAX_STATEMENT_BYTES {
            return Ok(UpdateTranslation::Repair("the update is too large to send as one statement".into()));
        }
        statements.push(statement);
    }
    if statements.is_empty() { Ok(UpdateTranslation::Noop) } else { Ok(UpdateTranslation::Statements(statements)) }
}

/// `{_id: <the _id of key>}`.
pub fn id_filter(key: &RawDocument) -> Result<RawDocumentBuf, WorkerError> {
    let id = key.get("_id").map_err(|e| invalid("_id", e))?.ok_or_else(|| invalid("document key", "no _id"))?;
    let mut filter = RawDocumentBuf::new();
    filter.append_ref("_id", id);
    Ok(filter)
}

/// The value at a dotted path of a document (through embedded documents only).
fn value_at<'a>(document: &'a RawDocument, path: &str) -> Option<RawBsonRef<'a>> {
    let mut current = document;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        let value = current.get(part).ok().flatten()?;
        if parts.peek().is_none() {
            return Some(value);
        }
        current = value.as_document()?;
    }
    None
}

/// The filter of an upsert of `document`: its `_id` plus the destination's shard key fields
/// (`key_fields`), which a sharded destination needs to route an upsert.
pub fn upsert_filter(document: &RawDocument, key_fields: &[String]) -> Result<RawDocumentBuf, WorkerError> {
    let mut filter = id_filter(document)?;
    for field in key_fields {
        if field != "_id"
            && let Some(value) = value_at(document, field)
        {
            filter.append_ref(field, value);
        }
    }
    Ok(filter)
}

/// The writes an event becomes. `key_fields` are the shard key fields to put in upsert filters.
pub fn plan_writes(event: &ChangeEvent, key_fields: &[String]) -> Result<Vec<Write>, WorkerError> {
    if event.lookup_only {
        return Ok(vec![Write::Lookup { reason: "the event was too large to spool".into() }]);
    }
    let key = event
        .document_key
        .as_ref()
        .ok_or_else(|| invalid(&format!("{} event on {}", event.op.as_str(), event.ns_display()), "no documentKey"))?;
    match event.op {
        OpType::Insert | OpType::Replace => match optional(event.raw.get_document("fullDocument"), "fullDocument")? {
            Some(document) => Ok(vec![Write::Update {
                filter: upsert_filter(document, key_fields)?,
                update: document.to_raw_document_buf(),
                upsert: true,
            }]),
            None => Ok(vec![Write::Lookup { reason: "the event has no full document".into() }]),
        },
        OpType::Delete => Ok(vec![Write::Delete { filter: id_filter(key)? }]),
        OpType::Update => {
            let description = event
                .raw
                .get_document("updateDescription")
                .map_err(|e| invalid(&format!("update event on {}", event.ns_display()), e))?;
            Ok(match translate_update(description)? {
                UpdateTranslation::Statements(statements) => {
                    let filter = id_filter(key)?;
                    statements
                        .into_iter()
                        .map(|update| Write::Update { filter: filter.clone(), update, upsert: false })
                        .collect()
                }
                UpdateTranslation::Repair(reason) => vec![Write::Lookup { reason }],
                UpdateTranslation::Noop => Vec::new(),
            })
        }
        _ => Err(WorkerError::InvalidData(format!(
            "{} event on {} reached an applier",
            event.op.as_str(),
            event.ns_display()
        ))),
    }
}

/// An event handed to an applier, with its sequence number.
#[derive(Debug)]
pub struct ApplyItem {
    pub seq: u64,
    pub event: ChangeEvent,
}

/// Namespaces whose source collection turned out to be another incarnation than the one their
/// events were about (renamed away, or dropped and maybe recreated, after the event): a lookup
/// there says nothing about the event's document. The rename or drop that explains it follows
/// in the stream; a rename of a tainted namespace copies its target again, a drop clears it.
#[derive(Debug, Clone, Default)]
pub struct Tainted(Arc<Mutex<HashSet<Namespace>>>);

impl Tainted {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<Namespace>> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn insert(&self, ns: Namespace) {
        self.lock().insert(ns);
    }

    /// Removes `ns`; returns whether it was tainted.
    pub fn take(&self, ns: &Namespace) -> bool {
        self.lock().remove(ns)
    }

    /// Removes every namespace of `db`.
    pub fn clear_database(&self, db: &str) {
        self.lock().retain(|ns| ns.db != db);
    }

    pub fn contains(&self, ns: &Namespace) -> bool {
        self.lock().contains(ns)
    }
}

/// What every applier of one change stream shares.
pub struct ApplierShared {
    pub clusters: Arc<Clusters>,
    pub watermark: SharedWatermark,
    /// Repairs made by this run (added to the checkpoint's count).
    pub repairs: Arc<AtomicU64>,
    pub counters: Arc<TaskCounters>,
    pub cancel: CancellationToken,
    pub retry_budget: Duration,
    pub batch_events: usize,
    /// Shard key fields of the destination collections that are sharded by the sync
    /// (`sharding.shardingEntries`), for upsert filters.
    pub shard_keys: HashMap<Namespace, Vec<String>>,
    pub tainted: Tainted,
}

/// One write of a batch, with where it comes from.
struct Op<'a> {
    ns: Namespace,
    key: &'a RawDocument,
    /// `collectionUUID` of the event.
    uuid: Option<&'a [u8]>,
    key_fields: Vec<String>,
    write: Write,
}

/// The parsed reply of an `update` or `delete` command.
#[derive(Debug, Default)]
struct WriteReply {
    /// Documents matched (or upserted, or deleted).
    n: i64,
    /// The first write error: statement index, code, message.
    first_error: Option<(usize, i32, String)>,
}

impl WriteReply {
    fn parse(reply: &Document) -> Result<Self, WorkerError> {
        let n = match reply.get("n") {
            Some(Bson::Int32(n)) => i64::from(*n),
            Some(Bson::Int64(n)) => *n,
            _ => 0,
        };
        let first_error = match reply.get_array("writeErrors") {
            Ok(errors) => errors
                .iter()
                .filter_map(Bson::as_document)
                .min_by_key(|e| e.get_i32("index").unwrap_or(0))
                .map(|error| {
                    let index = error.get_i32("index").unwrap_or(0).max(0) as usize;
                    (index, error.get_i32("code").unwrap_or(0), error.get_str("errmsg").unwrap_or_default().to_string())
                }),
            Err(_) => None,
        };
        Ok(Self { n, first_error })
    }
}

/// A `writeConcernError` in an otherwise successful reply, as a driver error (so it is
/// classified like any other: a step-down or shutdown is retried).
fn write_concern_error(reply: &Document) -> Option<mongodb::error::Error> {
    let error = reply.get_document("writeConcernError").ok()?;
    let parsed: mongodb::error::WriteConcernError = bson::from_document(error.clone()).ok()?;
    Some(mongodb::error::Error::from(mongodb::error::ErrorKind::Write(
        mongodb::error::WriteFailure::WriteConcernError(parsed),
    )))
}

impl ApplierShared {
    /// Runs a write command on the destination, retrying transient errors.
    async fn run_destination(&self, ns: &Namespace, command: RawDocumentBuf) -> Result<Document, WorkerError> {
        let database = self.clusters.destination.database(&ns.db);
        let context = format!("apply change events to {ns}");
        mongo::retry(&context, &self.cancel, self.retry_budget, || {
            let command = command.clone();
            let database = &database;
            let context = &context;
            async move {
                let reply = database.run_raw_command(command).await.map_err(|e| WorkerError::mongo(context, e))?;
                match write_concern_error(&reply) {
                    Some(error) => Err(WorkerError::mongo(context, error)),
                    None => Ok(reply),
                }
            }
        })
        .await
    }

    /// Whether `ns` on the source is still the collection `uuid` identifies: `Some(false)` when
    /// it is gone or another one, `None` when the source does not say.
    async fn same_source_collection(&self, ns: &Namespace, uuid: &[u8]) -> Result<Option<bool>, WorkerError> {
        let Some(spec) = crate::schema::list_collection_spec(&self.clusters.source, ns).await? else {
            return Ok(Some(false));
        };
        Ok(match spec.get_document("info").ok().and_then(|info| info.get("uuid")) {
            Some(Bson::Binary(current)) => Some(current.bytes == uuid),
            _ => None,
        })
    }

    /// Re-reads a document from the source and replaces it on the destination (or deletes it).
    /// When the event names its collection's incarnation, the source collection must still be it.
    async fn repair(&self, ns: &Namespace, op: &Op<'_>, reason: &str) -> Result<(), WorkerError> {
        let (key, key_fields) = (op.key, op.key_fields.as_slice());
        let id = key.get("_id").map_err(|e| invalid("_id", e))?.ok_or_else(|| invalid("document key", "no _id"))?;
        let id_bson = Bson::try_from(id.to_raw_bson()).map_err(|e| invalid("_id", e))?;
        debug!(ns = %ns, id = %id_bson, reason, "repairing a document by lookup");
        let source = self.clusters.source.database(&ns.db).collection::<RawDocumentBuf>(&ns.coll);
        let context = format!("look up a document of {ns} on the source");
        let found = mongo::retry(&context, &self.cancel, self.retry_budget, || {
            let source = &source;
            let filter = doc! {"_id": id_bson.clone()};
            let context = &context;
            async move { source.find_one(filter).await.map_err(|e| WorkerError::mongo(context, e)) }
        })
        .await?;
        if let Some(expected) = op.uuid
            && self.same_source_collection(ns, expected).await? == Some(false)
        {
            // Whatever the name holds now is not the collection the event is about, so it
            // says nothing about this document: leave it to the rename or drop that follows.
            warn!(ns = %ns, id = %id_bson, "collection renamed or dropped since the event, repair deferred to it");
            self.tainted.insert(ns.clone());
            self.repairs.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let command = match &found {
            Some(document) => update_command(ns, &[(upsert_filter(document, key_fields)?, document.clone(), true)]),
            None => delete_command(ns, &[id_filter(key)?]),
        };
        let reply = WriteReply::parse(&self.run_destination(ns, command).await?)?;
        if let Some((_, code, message)) = reply.first_error {
            return Err(WorkerError::fatal(
                CHANGE_APPLY_FAILED,
                format!(
                    "document _id {id_bson} of {ns} cannot be written to the destination as it is on the source \
                     (error {code}: {message})"
                ),
            ));
        }
        self.repairs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Repairs the documents of `ops` (non-upsert updates) that are missing on the destination:
    /// their update matched nothing.
    async fn repair_missing(&self, ns: &Namespace, ops: &[&Op<'_>]) -> Result<(), WorkerError> {
        let mut wanted: Vec<(RawBson, &Op<'_>)> = Vec::new();
        for op in ops {
            if let Write::Update { upsert: false, .. } = op.write {
                let id = op.key.get("_id").map_err(|e| invalid("_id", e))?.ok_or_else(|| invalid("key", "no _id"))?;
                let id = id.to_raw_bson();
                if !wanted.iter().any(|(seen, _)| *seen == id) {
                    wanted.push((id, op));
                }
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let ids = wanted
            .iter()
            .map(|(id, _)| Bson::try_from(id.clone()).map_err(|e| invalid("_id", e)))
            .collect::<Result<Vec<_>, _>>()?;
        let destination = self.clusters.destination.database(&ns.db).collection::<RawDocumentBuf>(&ns.coll);
        let context = format!("check documents of {ns} on the destination");
        let present: HashSet<Vec<u8>> = mongo::retry(&context, &self.cancel, self.retry_budget, || {
            let filter = doc! {"_id": {"$in": ids.clone()}};
            let destination = &destination;
            let context = &context;
            async move {
                let cursor = destination
                    .find(filter)
                    .projection(doc! {"_id": 1})
                    .await
                    .map_err(|e| WorkerError::mongo(context, e))?;
                let found: Vec<RawDocumentBuf> =
                    cursor.try_collect().await.map_err(|e| WorkerError::mongo(context, e))?;
                Ok(found.iter().filter_map(|d| id_filter(d).ok()).map(RawDocumentBuf::into_bytes).collect())
            }
        })
        .await?;
        for (_, op) in wanted {
            if !present.contains(id_filter(op.key)?.as_bytes()) {
                self.repair(ns, op, "the update matched no document").await?;
            }
        }
        Ok(())
    }

    /// Applies a run of update statements on one namespace, repairing failed statements.
    async fn exec_updates(&self, ns: &Namespace, ops: &[&Op<'_>]) -> Result<(), WorkerError> {
        let mut start = 0;
        while start < ops.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < ops.len() && end - start < MAX_COMMAND_STATEMENTS {
                let Write::Update { filter, update, .. } = &ops[end].write else { break };
                let size = filter.as_bytes().len() + update.as_bytes().len();
                if end > start && bytes + size > MAX_COMMAND_BYTES {
                    break;
                }
                bytes += size;
                end += 1;
            }
            let statements: Vec<(RawDocumentBuf, RawDocumentBuf, bool)> = ops[start..end]
                .iter()
                .filter_map(|op| match &op.write {
                    Write::Update { filter, update, upsert } => Some((filter.clone(), update.clone(), *upsert)),
                    _ => None,
                })
                .collect();
            let reply = WriteReply::parse(&self.run_destination(ns, update_command(ns, &statements)).await?)?;
            let applied_end = match &reply.first_error {
                Some((index, _, _)) => start + (*index).min(end - start),
                None => end,
            };
            // `n` counts matched and upserted documents; anything less than one per statement
            // means an update found no document.
            if reply.n < (applied_end - start) as i64 {
                self.repair_missing(ns, &ops[start..applied_end]).await?;
            }
            match reply.first_error {
                Some((_, code, message)) if applied_end < end => {
                    let failed = ops[applied_end];
                    let reason = format!("the update failed on the destination (error {code}: {message})");
                    self.repair(ns, failed, &reason).await?;
                    start = applied_end + 1;
                }
                Some((index, code, message)) => {
                    return Err(WorkerError::InvalidData(format!(
                        "write error {code} at statement {index} of {} on {ns}: {message}",
                        end - start
                    )));
                }
                None => start = end,
            }
        }
        Ok(())
    }

    /// Applies a run of delete statements on one namespace.
    async fn exec_deletes(&self, ns: &Namespace, ops: &[&Op<'_>]) -> Result<(), WorkerError> {
        for chunk in ops.chunks(MAX_COMMAND_STATEMENTS) {
            let filters: Vec<RawDocumentBuf> = chunk
                .iter()
                .filter_map(|op| match &op.write {
                    Write::Delete { filter } => Some(filter.clone()),
                    _ => None,
                })
                .collect();
            let reply = WriteReply::parse(&self.run_destination(ns, delete_command(ns, &filters)).await?)?;
            if let Some((index, code, message)) = reply.first_error {
                return Err(WorkerError::fatal(
                    CHANGE_APPLY_FAILED,
                    format!(
                        "a delete on {ns} failed on the destination at statement {index} (error {code}: {message})"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Applies one applier batch, in order.
    async fn apply_batch(&self, items: &[ApplyItem]) -> Result<(), WorkerError> {
        let mut ops = Vec::with_capacity(items.len());
        for item in items {
            let event = &item.event;
            let (Some(ns), Some(key)) = (event.ns(), event.document_key.as_deref()) else {
                return Err(WorkerError::InvalidData(format!(
                    "{} event on {} without a collection or document key",
                    event.op.as_str(),
                    event.ns_display()
                )));
            };
            let mut key_fields: Vec<String> = self.shard_keys.get(&ns).cloned().unwrap_or_default();
            // The source's document key holds the source shard key, which a sharded destination
            // keeps (mongosync preserves shard keys).
            for element in key.iter().flatten() {
                if element.0 != "_id" && !key_fields.iter().any(|f| f == element.0) {
                    key_fields.push(element.0.to_string());
                }
            }
            for write in plan_writes(event, &key_fields)? {
                ops.push(Op {
                    ns: ns.clone(),
                    key,
                    uuid: event.collection_uuid.as_deref(),
                    key_fields: key_fields.clone(),
                    write,
                });
            }
        }
        let kind = |write: &Write| match write {
            Write::Update { .. } => 0,
            Write::Delete { .. } => 1,
            Write::Lookup { .. } => 2,
        };
        let mut start = 0;
        while start < ops.len() {
            let mut end = start + 1;
            while end < ops.len() && ops[end].ns == ops[start].ns && kind(&ops[end].write) == kind(&ops[start].write) {
                end += 1;
            }
            let run: Vec<&Op<'_>> = ops[start..end].iter().collect();
            let ns = &ops[start].ns;
            match &ops[start].write {
                Write::Update { .. } => self.exec_updates(ns, &run).await?,
                Write::Delete { .. } => self.exec_deletes(ns, &run).await?,
                Write::Lookup { .. } => {
                    for op in run {
                        if let Write::Lookup { reason } = &op.write {
                            self.repair(ns, op, reason).await?;
                        }
                    }
                }
            }
            start = end;
        }
        Ok(())
    }
}

/// `{update: coll, updates: [...], ordered: true, writeConcern: majority+j}`.
fn update_command(ns: &Namespace, statements: &[(RawDocumentBuf, RawDocumentBuf, bool)]) -> RawDocumentBuf {
    let mut updates = RawArrayBuf::new();
    for (filter, update, upsert) in statements {
        let mut statement = RawDocumentBuf::new();
        statement.append("q", filter.clone());
        statement.append("u", update.clone());
        statement.append("upsert", *upsert);
        statement.append("multi", false);
        updates.push(statement);
    }
    let mut command = RawDocumentBuf::new();
    command.append("update", ns.coll.as_str());
    command.append("updates", updates);
    // Ordered: statements of one document must apply in stream order; the first failure stops
    // the command so the failed document can be repaired before anything after it.
    command.append("ordered", true);
    command.append("writeConcern", write_concern());
    command
}

/// `{delete: coll, deletes: [{q, limit: 1}...], ordered: true, writeConcern: majority+j}`.
fn delete_command(ns: &Namespace, filters: &[RawDocumentBuf]) -> RawDocumentBuf {
    let mut deletes = RawArrayBuf::new();
    for filter in filters {
        let mut statement = RawDocumentBuf::new();
        statement.append("q", filter.clone());
        statement.append("limit", 1);
        deletes.push(statement);
    }
    let mut command = RawDocumentBuf::new();
    command.append("delete", ns.coll.as_str());
    command.append("deletes", deletes);
    command.append("ordered", true);
    command.append("writeConcern", write_concern());
    command
}

/// `{w: "majority", j: true}`: an applied event is only counted once it cannot be rolled back.
fn write_concern() -> RawDocumentBuf {
    let mut concern = RawDocumentBuf::new();
    concern.append("w", "majority");
    concern.append("j", true);
    concern
}

/// One applier: takes events from its queue in order, applies them in batches, and marks them
/// applied in the watermark only once the destination acknowledged them.
pub async fn run_applier(
    index: usize,
    mut queue: mpsc::Receiver<ApplyItem>,
    shared: Arc<ApplierShared>,
) -> Result<(), WorkerError> {
    let mut items = Vec::with_capacity(shared.batch_events);
    while let Some(first) = queue.recv().await {
        items.push(first);
        while items.len() < shared.batch_events {
            match queue.try_recv() {
                Ok(item) => items.push(item),
                Err(_) => break,
            }
        }
        if let Err(error) = shared.apply_batch(&items).await {
            if !matches!(error, WorkerError::Cancelled) {
                warn!(applier = index, error = %error, "applier failed");
            }
            return Err(error);
        }
        let seqs: Vec<u64> = items.iter().map(|item| item.seq).collect();
        shared.watermark.complete(&seqs)?;
        shared.counters.events_applied.fetch_add(items.len() as u64, Ordering::Relaxed);
        // Applied events give their memory back now, not when the next one arrives: the reader
        // may be waiting for it.
        items.clear();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use bson::{Timestamp, rawdoc};

    use super::*;

    fn statements(description: RawDocumentBuf) -> Vec<Document> {
        match translate_update(&description).unwrap() {
            UpdateTranslation::Statements(statements) => {
                statements.into_iter().map(|s| s.to_document().unwrap()).collect()
            }
            other => panic!("expected statements, got {other:?}"),
        }
    }

    fn repair_reason(description: RawDocumentBuf) -> String {
        match translate_update(&description).unwrap() {
            UpdateTranslation::Repair(reason) => reason,
            other => panic!("expected a repair, got {other:?}"),
        }
    }

    #[test]
    fn set_and_unset_translate_to_one_statement() {
        let got = statements(rawdoc! {
            "updatedFields": {"a.b": 1, "c": {"d": [1, 2]}, "list.3": "x"},
            "removedFields": ["old", "nested.gone"],
            "truncatedArrays": [],
        });
        assert_eq!(
            got,
            vec![
                doc! {"$set": {"a.b": 1, "c": {"d": [1, 2]}, "list.3": "x"}, "$unset": {"old": "", "nested.gone": ""}}
            ]
        );
        assert_eq!(statements(rawdoc! {"updatedFields": {}, "removedFields": ["x"]}), vec![doc! {"$unset": {"x": ""}}]);
        assert_eq!(
            translate_update(&rawdoc! {"updatedFields": {}, "removedFields": []}).unwrap(),
            UpdateTranslation::Noop
        );
    }

    #[test]
    fn truncations_come_first_as_their_own_statement() {
        let got = statements(rawdoc! {
            "updatedFields": {"arr.1.b": 3},
            "removedFields": [],
            "truncatedArrays": [{"field": "arr", "newSize": 2}, {"field": "other", "newSize": 0_i64}],
        });
        assert_eq!(
            got,
            vec![
                doc! {"$push": {"arr": {"$each": [], "$slice": 2_i64}, "other": {"$each": [], "$slice": 0_i64}}},
                doc! {"$set": {"arr.1.b": 3}},
            ]
        );
        // Nested truncated arrays cannot share one `$push`.
        let got = statements(rawdoc! {
            "updatedFields": {}, "removedFields": [],
            "truncatedArrays": [{"field": "a", "newSize": 1}, {"field": "a.0.b", "newSize": 1}],
        });
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn ambiguous_or_conflicting_updates_are_repaired() {
        let reason = repair_reason(rawdoc! {
            "updatedFields": {"a.0": 1}, "removedFields": [], "disambiguatedPaths": {"a.0": ["a", "0"]},
        });
        assert!(reason.contains("ambiguous"), "{reason}");
        // An empty disambiguatedPaths is not ambiguous.
        assert_eq!(
            statements(rawdoc! {"updatedFields": {"a": 1}, "removedFields": [], "disambiguatedPaths": {}}),
            vec![doc! {"$set": {"a": 1}}]
        );
        assert!(
            repair_reason(rawdoc! {"updatedFields": {"a.$b": 1}, "removedFields": []}).contains("cannot be expressed")
        );
        assert!(
            repair_reason(rawdoc! {"updatedFields": {"a..b": 1}, "removedFields": []}).contains("cannot be expressed")
        );
        let reason = repair_reason(rawdoc! {"updatedFields": {"a": {"b": 1}}, "removedFields": ["a.c"]});
        assert!(reason.contains("conflict"), "{reason}");
        assert!(repair_reason(rawdoc! {"updatedFields": {"a": 1}, "removedFields": ["a"]}).contains("conflict"));
        // Siblings that share a textual prefix do not conflict.
        assert_eq!(statements(rawdoc! {"updatedFields": {"ab": 1, "a.c": 2}, "removedFields": ["a.cd"]}).len(), 1);
    }

    #[test]
    fn conflict_detection_is_exact() {
        assert_eq!(conflict(&["a", "a.b"]), Some(("a", "a.b")));
        assert_eq!(conflict(&["x.y.z", "x.y"]), Some(("x.y", "x.y.z")));
        assert_eq!(conflict(&["a.b", "a.c", "ab", "b"]), None);
        assert_eq!(conflict(&["q", "q"]), Some(("q", "q")));
    }

    fn event(document: Document) -> ChangeEvent {
        ChangeEvent::from_raw(RawDocumentBuf::from_document(&document).unwrap()).unwrap()
    }

    #[test]
    fn events_become_idempotent_writes() {
        let insert = event(doc! {
            "_id": {"_data": "1"}, "operationType": "insert", "clusterTime": Timestamp { time: 1, increment: 1 },
            "ns": {"db": "d", "coll": "c"}, "documentKey": {"_id": 7},
            "fullDocument": {"_id": 7, "region": {"code": "eu"}, "x": 1},
        });
        let writes = plan_writes(&insert, &["region.code".to_string()]).unwrap();
        let [Write::Update { filter, update, upsert: true }] = writes.as_slice() else { panic!("{writes:?}") };
        assert_eq!(filter.to_document().unwrap(), doc! {"_id": 7, "region.code": "eu"});
        assert_eq!(update.to_document().unwrap(), doc! {"_id": 7, "region": {"code": "eu"}, "x": 1});

        let delete = event(doc! {
            "_id": {"_data": "2"}, "operationType": "delete", "ns": {"db": "d", "coll": "c"}, "documentKey": {"_id": 7},
        });
        assert_eq!(plan_writes(&delete, &[]).unwrap(), vec![Write::Delete { filter: rawdoc! {"_id": 7} }]);

        let update = event(doc! {
            "_id": {"_data": "3"}, "operationType": "update", "ns": {"db": "d", "coll": "c"}, "documentKey": {"_id": 7},
            "updateDescription": {"updatedFields": {"x": 2}, "removedFields": [], "truncatedArrays": []},
        });
        assert_eq!(
            plan_writes(&update, &[]).unwrap(),
            vec![Write::Update { filter: rawdoc! {"_id": 7}, update: rawdoc! {"$set": {"x": 2}}, upsert: false }]
        );

        let ambiguous = event(doc! {
            "_id": {"_data": "4"}, "operationType": "update", "ns": {"db": "d", "coll": "c"}, "documentKey": {"_id": 7},
            "updateDescription": {"updatedFields": {"m.1": 2}, "removedFields": [], "disambiguatedPaths": {"m.1": ["m", "1"]}},
        });
        assert!(matches!(plan_writes(&ambiguous, &[]).unwrap().as_slice(), [Write::Lookup { .. }]));

        let reference = ChangeEvent::lookup(OpType::Insert, Namespace::new("d", "c"), rawdoc! {"_id": 7}, None, None);
        assert!(matches!(plan_writes(&reference, &[]).unwrap().as_slice(), [Write::Lookup { .. }]));

        let ddl = event(doc! {"_id": {"_data": "5"}, "operationType": "drop", "ns": {"db": "d", "coll": "c"},
        "documentKey": {"_id": 1}});
        assert!(plan_writes(&ddl, &[]).is_err());
    }

    #[test]
    fn write_replies_are_read_exactly() {
        let reply = WriteReply::parse(&doc! {
            "n": 3, "ok": 1,
            "writeErrors": [{"index": 4, "code": 40, "errmsg": "conflict"}, {"index": 3, "code": 2, "errmsg": "bad"}],
        })
        .unwrap();
        assert_eq!(reply.n, 3);
        assert_eq!(reply.first_error, Some((3, 2, "bad".to_string())));
        assert!(write_concern_error(&doc! {"ok": 1}).is_none());
        let error =
            write_concern_error(&doc! {"ok": 1, "writeConcernError": {"code": 91, "errmsg": "shutting down"}}).unwrap();
        assert!(crate::error::is_retryable_mongo(&error));
    }

    #[test]
    fn commands_are_ordered_and_durable() {
        let command =
            update_command(&Namespace::new("d", "c"), &[(rawdoc! {"_id": 1}, rawdoc! {"$set": {"a": 1}}, false)]);
        assert_eq!(
            command.to_document().unwrap(),
            doc! {
                "update": "c",
                "updates": [{"q": {"_id": 1}, "u": {"$set": {"a": 1}}, "upsert": false, "multi": false}],
                "ordered": true,
                "writeConcern": {"w": "majority", "j": true},
            }
        );
        let command = delete_command(&Namespace::new("d", "c"), &[rawdoc! {"_id": 1}]);
        assert_eq!(command.to_document().unwrap().get_array("deletes").unwrap().len(), 1);
    }
}
