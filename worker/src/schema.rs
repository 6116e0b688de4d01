//! Collections and indexes on the destination, following mongosync's rules.
//!
//! # During the sync
//!
//! The destination must accept every document the source holds, whatever happened to the
//! source's constraints meanwhile, and must not delete anything on its own:
//!
//! - unique indexes are built non-unique (a change applied out of order may transiently
//!   duplicate a key), `prepareUnique` is dropped;
//! - TTL indexes get `expireAfterSeconds: i32::MAX` (the destination must not expire documents
//!   the source still has); collection-level `expireAfterSeconds` (clustered, time series) is
//!   removed;
//! - hidden indexes are built visible;
//! - capped collections stay capped but with a 1 PB size and no document limit (the source's
//!   deletions by size are not in the change stream; the limits come back at commit);
//! - validators are removed (a validator added later on the source must not reject documents
//!   the source kept);
//! - legacy index key values (`0`, `""`, NaN, non-numbers) become `1` and options MongoDB 7.0 no
//!   longer accepts are dropped, as mongosync does.
//!
//! # At commit
//!
//! [`restore_collection_at_commit`] makes each destination collection match the source's
//! *current* definition: unique (`collMod` `prepareUnique` then `unique`), TTL, hidden, capped
//! limits, validator, collection TTL, and the index set itself (indexes dropped on the source
//! are dropped, missing ones built). Every step is idempotent so a new leader can run it again.
//!
//! # Change-stream DDL
//!
//! The `apply_*` functions apply the DDL events of the change stream on the destination with
//! the same rules; each is idempotent (an event applied twice after a restart is harmless) and
//! returns classified [`WorkerError`]s.
//!
//! Every command that writes carries `writeConcern: {w: "majority", j: true}` itself:
//! `runCommand` does not add the client's default write concern.

use std::cmp::Ordering;
use std::time::Duration;

use bson::{Bson, Document, doc};
use clustersync_common::model::{BuildIndexes, CollectionKind, PlannedCollection};
use clustersync_common::namespace::{self, Namespace};
use futures::TryStreamExt;
use mongodb::{Client, Database};
use tokio_util::sync::CancellationToken;

use crate::bson_order;
use crate::error::{DUPLICATE_KEY, WorkerError};
use crate::mongo::{self, Clusters};

/// Capped collection size on the destination during the sync: 1 PB, MongoDB's maximum.
pub const SYNC_CAPPED_SIZE: i64 = 1_125_899_906_842_624;
/// `expireAfterSeconds` of TTL indexes on the destination during the sync: never expires.
pub const SYNC_TTL_SECONDS: i32 = i32::MAX;
/// Retry budget of DDL commands.
const DDL_RETRY_BUDGET: Duration = mongo::DEFAULT_RETRY_BUDGET;

// Server error codes.
const NAMESPACE_NOT_FOUND: i32 = 26;
const INDEX_NOT_FOUND: i32 = 27;
const NAMESPACE_EXISTS: i32 = 48;
const INDEX_ALREADY_EXISTS: i32 = 68;
const INDEX_OPTIONS_CONFLICT: i32 = 85;
const INDEX_KEY_SPECS_CONFLICT: i32 = 86;
const COMMAND_NOT_SUPPORTED_ON_VIEW: i32 = 166;
const CANNOT_CONVERT_INDEX_TO_UNIQUE: i32 = 359;

/// Index options `createIndexes` accepts on MongoDB 7.0 and that we carry over. Anything else
/// in a source spec (`v`, `ns`, `background`, `dropDups`, `bucketSize`, internal fields, or
/// garbage an old server accepted) is dropped.
const KEPT_INDEX_OPTIONS: &[&str] = &[
    "unique",
    "prepareUnique",
    "sparse",
    "partialFilterExpression",
    "expireAfterSeconds",
    "hidden",
    "collation",
    "storageEngine",
    "wildcardProjection",
    "columnstoreProjection",
    // text
    "weights",
    "default_language",
    "language_override",
    "textIndexVersion",
    // 2dsphere
    "2dsphereIndexVersion",
    "coarsestIndexedLevel",
    "finestIndexedLevel",
    // 2d
    "bits",
    "min",
    "max",
];

/// Index options that `collMod` changes in place at commit; every other option difference
/// means the index must be rebuilt.
const MODIFIABLE_INDEX_OPTIONS: &[&str] = &["unique", "prepareUnique", "expireAfterSeconds", "hidden"];

/// Collection options `create` accepts on MongoDB 7.0 (from `listCollections` or a `create`
/// event). Others (`uuid`, `autoIndexId`, `flags`, `idIndex`, …) are not options of `create`.
const CREATE_OPTIONS: &[&str] = &[
    "capped",
    "size",
    "max",
    "storageEngine",
    "validator",
    "validationLevel",
    "validationAction",
    "indexOptionDefaults",
    "viewOn",
    "pipeline",
    "collation",
    "changeStreamPreAndPostImages",
    "timeseries",
    "clusteredIndex",
    "expireAfterSeconds",
    "encryptedFields",
];

/// `collMod` options deferred to the commit (restored from the source then), never applied
/// from a `modify` event during the sync.
const DEFERRED_MODIFY_OPTIONS: &[&str] = &[
    "index",
    "validator",
    "validationLevel",
    "validationAction",
    "cappedSize",
    "cappedMax",
    "expireAfterSeconds",
    "unique",
    "prepareUnique",
    "dryRun",
];

/// Fields of a `modify` event's description that are not `collMod` options.
const MODIFY_EVENT_METADATA: &[&str] = &["collMod", "writeConcern", "comment", "$db", "lsid", "txnNumber"];

fn majority() -> Document {
    doc! {"w": "majority", "j": true}
}

fn never_cancelled() -> CancellationToken {
    CancellationToken::new()
}

/// Runs a command with retries on transient errors.
async fn run(db: &Database, command: Document, what: &str) -> Result<Document, WorkerError> {
    mongo::retry(what, &never_cancelled(), DDL_RETRY_BUDGET, || {
        let db = db.clone();
        let command = command.clone();
        let what = what.to_string();
        async move { db.run_command(command).await.map_err(|e| WorkerError::mongo(what, e)) }
    })
    .await
}

/// Runs a cursor command with retries and collects every document.
async fn run_cursor(db: &Database, command: Document, what: &str) -> Result<Vec<Document>, WorkerError> {
    mongo::retry(what, &never_cancelled(), DDL_RETRY_BUDGET, || {
        let db = db.clone();
        let command = command.clone();
        let what = what.to_string();
        async move {
            let cursor = db.run_cursor_command(command).await.map_err(|e| WorkerError::mongo(what.clone(), e))?;
            cursor.try_collect().await.map_err(|e| WorkerError::mongo(what, e))
        }
    })
    .await
}

/// The `listCollections` entry of a namespace (`{name, type, options, info, idIndex}`), or
/// `None` if it does not exist.
pub async fn list_collection_spec(client: &Client, ns: &Namespace) -> Result<Option<Document>, WorkerError> {
    let db = client.database(&ns.db);
    let entries =
        run_cursor(&db, doc! {"listCollections": 1, "filter": {"name": &ns.coll}}, &format!("listing collection {ns}"))
            .await?;
    Ok(entries.into_iter().find(|entry| entry.get_str("name").is_ok_and(|name| name == ns.coll)))
}

/// The `listIndexes` specs of a collection, or `None` if it does not exist (or is a view).
pub async fn list_index_specs(client: &Client, ns: &Namespace) -> Result<Option<Vec<Document>>, WorkerError> {
    let db = client.database(&ns.db);
    match run_cursor(&db, doc! {"listIndexes": &ns.coll}, &format!("listing indexes of {ns}")).await {
        Ok(specs) => Ok(Some(specs)),
        Err(e) if matches!(e.code(), Some(NAMESPACE_NOT_FOUND | COMMAND_NOT_SUPPORTED_ON_VIEW)) => Ok(None),
        Err(e) => Err(e),
    }
}

// ---------------------------------------------------------------------------------------------
// index specs
// ---------------------------------------------------------------------------------------------

/// True for a hashed index (any key value `"hashed"`).
pub fn is_hashed(spec: &Document) -> bool {
    spec.get_document("key").is_ok_and(|key| key.values().any(|v| v.as_str() == Some("hashed")))
}

/// A key value as MongoDB 7.0 accepts it. Before 3.4 any value that was not a negative number
/// or a plugin name meant ascending; 3.4+ rejects 0, NaN, `""` and non-numbers, so those become 1
/// (what the old server did with them). Other numbers and plugin names are kept.
fn modern_key_value(value: &Bson) -> Bson {
    match value {
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => {
            if bson_order::is_nan(value) || bson_order::compare(value, &Bson::Int32(0)) == Ordering::Equal {
                Bson::Int32(1)
            } else {
                value.clone()
            }
        }
        Bson::String(name) if !name.is_empty() => value.clone(),
        _ => Bson::Int32(1),
    }
}

/// The source index as it must finally exist on the destination (legacy key values fixed,
/// unaccepted options dropped, `v` dropped), or `None` for the `_id` index and a clustered
/// collection's clustered index (both come with the collection) and for a malformed spec.
pub fn index_for_commit(source_spec: &Document) -> Option<Document> {
    let name = source_spec.get_str("name").ok()?;
    if name == "_id_" || source_spec.get_bool("clustered").unwrap_or(false) {
        return None;
    }
    let key = source_spec.get_document("key").ok()?;
    let mut modern_key = Document::new();
    for (field, value) in key {
        modern_key.insert(field.clone(), modern_key_value(value));
    }
    let mut spec = doc! {"key": modern_key, "name": name};
    for (option, value) in source_spec {
        if KEPT_INDEX_OPTIONS.contains(&option.as_str()) {
            spec.insert(option.clone(), value.clone());
        } else if !matches!(option.as_str(), "key" | "name" | "v" | "ns" | "background") {
            tracing::debug!(
                index = name,
                option = option.as_str(),
                "dropping an index option mongodb no longer accepts"
            );
        }
    }
    Some(spec)
}

/// The index to create on the destination during the sync for a source index spec, or `None`
/// if it is not built (`_id`, clustered, `never`, hashed with `excludeHashed*`).
pub fn index_for_sync(source_spec: &Document, build: BuildIndexes) -> Option<Document> {
    if !build.builds_secondary_indexes() {
        return None;
    }
    let mut spec = index_for_commit(source_spec)?;
    if build.excludes_hashed() && is_hashed(&spec) {
        return None;
    }
    spec.remove("unique");
    spec.remove("prepareUnique");
    spec.remove("hidden");
    if spec.contains_key("expireAfterSeconds") {
        spec.insert("expireAfterSeconds", SYNC_TTL_SECONDS);
    }
    Some(spec)
}

fn truthy(value: Option<&Bson>) -> bool {
    match value {
        Some(Bson::Boolean(b)) => *b,
        Some(Bson::Int32(n)) => *n != 0,
        Some(Bson::Int64(n)) => *n != 0,
        Some(Bson::Double(n)) => *n != 0.0,
        _ => false,
    }
}

/// An index spec reduced to what defines it, for comparisons: modern key, kept options with
/// booleans normalised (`unique: 1` = `unique: true`, `false` = absent), no `v`/`ns`.
pub(crate) fn comparable_index(spec: &Document) -> Option<Document> {
    let mut spec = index_for_commit(spec)?;
    for flag in ["unique", "prepareUnique", "sparse", "hidden"] {
        if truthy(spec.get(flag)) {
            spec.insert(flag, true);
        } else {
            spec.remove(flag);
        }
    }
    // `prepareUnique` only matters while an index is not unique yet.
    if spec.contains_key("unique") {
        spec.remove("prepareUnique");
    }
    // `storageEngine` options are a physical detail of each server.
    spec.remove("storageEngine");
    Some(spec)
}

/// Whether two documents are equal with numbers compared by value (1 == 1.0 == 1L) and
/// fields in any order.
pub(crate) fn same_values(a: &Document, b: &Document) -> bool {
    a.len() == b.len()
        && a.iter().all(|(k, va)| {
            b.get(k).is_some_and(|vb| match (va, vb) {
                (Bson::Document(x), Bson::Document(y)) if k != "key" => same_values(x, y),
                _ => bson_order::compare(va, vb) == Ordering::Equal,
            })
        })
}

/// Same key and same non-modifiable options (ignoring unique/prepareUnique/TTL/hidden).
fn same_shape(desired: &Document, existing: &Document) -> bool {
    let strip = |spec: &Document| {
        let mut spec = spec.clone();
        for option in MODIFIABLE_INDEX_OPTIONS {
            spec.remove(*option);
        }
        spec
    };
    same_values(&strip(desired), &strip(existing))
}

// ---------------------------------------------------------------------------------------------
// collections
// ---------------------------------------------------------------------------------------------

/// The `create` options for a collection during the sync (see the module doc).
pub fn collection_options_for_sync(options: &Document) -> Document {
    let mut out = Document::new();
    for (option, value) in options {
        if CREATE_OPTIONS.contains(&option.as_str()) {
            out.insert(option.clone(), value.clone());
        } else {
            tracing::debug!(option = option.as_str(), "not a create option, not carried over");
        }
    }
    if truthy(out.get("capped")) {
        out.insert("capped", true);
        out.insert("size", SYNC_CAPPED_SIZE);
        out.remove("max");
    } else {
        out.remove("size");
        out.remove("max");
    }
    for option in ["validator", "validationLevel", "validationAction", "expireAfterSeconds"] {
        out.remove(option);
    }
    // listCollections reports a granularity together with its derived bucket spans; `create`
    // refuses both at once.
    if let Ok(timeseries) = out.get_document_mut("timeseries")
        && timeseries.contains_key("granularity")
    {
        timeseries.remove("bucketMaxSpanSeconds");
        timeseries.remove("bucketRoundingSeconds");
    }
    out
}

fn is_view_spec(entry: &Document) -> bool {
    entry.get_str("type").is_ok_and(|t| t == "view")
}

/// Creates a collection (or view) on the destination with `options` unless it exists.
async fn create_if_missing(client: &Client, ns: &Namespace, options: Document, view: bool) -> Result<(), WorkerError> {
    if let Some(existing) = list_collection_spec(client, ns).await? {
        if is_view_spec(&existing) != view {
            return Err(WorkerError::fatal(
                "DestinationNamespaceConflict",
                format!(
                    "{ns} exists on the destination as a {} but the source has a {}",
                    if view { "collection" } else { "view" },
                    if view { "view" } else { "collection" }
                ),
            ));
        }
        return Ok(());
    }
    let mut command = doc! {"create": &ns.coll};
    command.extend(options);
    command.insert("writeConcern", majority());
    match run(&client.database(&ns.db), command, &format!("creating {ns} on the destination")).await {
        Ok(_) => Ok(()),
        // A retry after a lost reply, or a concurrent creation.
        Err(e) if e.code() == Some(NAMESPACE_EXISTS) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates a planned collection on the destination with the sync-time options (see the module
/// doc). Views are created with `viewOn`/`pipeline`/`collation`. Idempotent.
pub async fn create_collection_for_sync(clusters: &Clusters, planned: &PlannedCollection) -> Result<(), WorkerError> {
    let ns = &planned.ns;
    let options = &planned.options.0;
    match planned.kind {
        CollectionKind::View => {
            let mut view = Document::new();
            for option in ["viewOn", "pipeline", "collation"] {
                if let Some(value) = options.get(option) {
                    view.insert(option, value.clone());
                }
            }
            create_if_missing(&clusters.destination, ns, view, true).await
        }
        CollectionKind::Collection | CollectionKind::Timeseries => {
            create_if_missing(&clusters.destination, ns, collection_options_for_sync(options), false).await
        }
    }
}

/// True if the destination namespace does not exist or holds no document: a migration must not
/// start over existing data.
pub async fn destination_namespace_is_empty(clusters: &Clusters, ns: &Namespace) -> Result<bool, WorkerError> {
    let Some(entry) = list_collection_spec(&clusters.destination, ns).await? else {
        return Ok(true);
    };
    if is_view_spec(&entry) {
        return Ok(true);
    }
    let collection = clusters.destination_db(&ns.db).collection::<Document>(&ns.coll);
    let what = format!("checking whether {ns} is empty on the destination");
    let found = mongo::retry(&what, &never_cancelled(), DDL_RETRY_BUDGET, || {
        let collection = collection.clone();
        let what = what.clone();
        async move {
            collection.find_one(doc! {}).projection(doc! {"_id": 1}).await.map_err(|e| WorkerError::mongo(what, e))
        }
    })
    .await?;
    Ok(found.is_none())
}

/// Up to `limit` destination namespaces holding user documents (every database but `admin`,
/// `local`, `config` and clustersync's own; `system.*` collections and views are skipped).
pub async fn destination_user_data_namespaces(
    clusters: &Clusters,
    limit: usize,
) -> Result<Vec<Namespace>, WorkerError> {
    let admin = clusters.destination.database("admin");
    let reply = run(&admin, doc! {"listDatabases": 1, "nameOnly": true}, "listing destination databases").await?;
    let mut found = Vec::new();
    let databases =
        reply.get_array("databases").map_err(|e| WorkerError::InvalidData(format!("listDatabases: {e}")))?;
    for database in databases {
        let Some(db) = database.as_document().and_then(|d| d.get_str("name").ok()) else {
            continue;
        };
        if namespace::is_never_copied_database(db) {
            continue;
        }
        let entries = run_cursor(
            &clusters.destination.database(db),
            doc! {"listCollections": 1, "nameOnly": true},
            &format!("listing collections of {db} on the destination"),
        )
        .await?;
        for entry in entries {
            let Ok(name) = entry.get_str("name") else { continue };
            let ns = Namespace::new(db, name);
            if ns.is_system_collection() || is_view_spec(&entry) {
                continue;
            }
            if !destination_namespace_is_empty(clusters, &ns).await? {
                found.push(ns);
                if found.len() >= limit {
                    return Ok(found);
                }
            }
        }
    }
    Ok(found)
}

/// True when no destination collection outside the internal databases holds a document.
pub async fn destination_is_empty_of_user_data(clusters: &Clusters) -> Result<bool, WorkerError> {
    Ok(destination_user_data_namespaces(clusters, 1).await?.is_empty())
}

// ---------------------------------------------------------------------------------------------
// indexes
// ---------------------------------------------------------------------------------------------

/// Creates `specs` on the destination collection: one batched `createIndexes`; an identical
/// existing index is success; a conflicting one is an error naming the index.
async fn create_indexes(client: &Client, ns: &Namespace, specs: Vec<Document>) -> Result<(), WorkerError> {
    if specs.is_empty() {
        return Ok(());
    }
    let db = client.database(&ns.db);
    let command = doc! {"createIndexes": &ns.coll, "indexes": specs.clone(), "writeConcern": majority()};
    match run(&db, command, &format!("creating indexes on {ns}")).await {
        Ok(_) => Ok(()),
        Err(e)
            if matches!(e.code(), Some(INDEX_OPTIONS_CONFLICT | INDEX_KEY_SPECS_CONFLICT | INDEX_ALREADY_EXISTS)) =>
        {
            // Some index exists in another shape: find which, one index at a time.
            for spec in specs {
                create_one_index(client, ns, spec).await?;
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

async fn create_one_index(client: &Client, ns: &Namespace, spec: Document) -> Result<(), WorkerError> {
    let db = client.database(&ns.db);
    let name = spec.get_str("name").unwrap_or_default().to_string();
    let command = doc! {"createIndexes": &ns.coll, "indexes": [spec.clone()], "writeConcern": majority()};
    match run(&db, command, &format!("creating index {name} on {ns}")).await {
        Ok(_) => Ok(()),
        Err(e)
            if matches!(e.code(), Some(INDEX_OPTIONS_CONFLICT | INDEX_KEY_SPECS_CONFLICT | INDEX_ALREADY_EXISTS)) =>
        {
            let existing = list_index_specs(client, ns).await?.unwrap_or_default();
            let wanted = comparable_index(&spec);
            let same = existing.iter().any(|other| {
                other.get_str("name").is_ok_and(|n| n == name)
                    && wanted.as_ref().zip(comparable_index(other)).is_some_and(|(w, o)| same_values(w, &o))
            });
            if same {
                return Ok(());
            }
            let conflicting = existing
                .iter()
                .find(|other| {
                    other.get_str("name").is_ok_and(|n| n == name)
                        || other.get_document("key").ok() == spec.get_document("key").ok()
                })
                .map(|other| other.to_string())
                .unwrap_or_else(|| "unknown".into());
            Err(WorkerError::fatal(
                "IndexConflict",
                format!(
                    "index {name} {spec} cannot be created on {ns}: the destination has a conflicting index {conflicting} ({e})"
                ),
            ))
        }
        Err(e) => Err(e),
    }
}

/// Builds the source's indexes on the destination collection, transformed for the sync
/// ([`index_for_sync`]). Returns how many index specs were requested. A source collection that
/// no longer exists (or a view) has no index to build.
pub async fn build_indexes_for_sync(
    clusters: &Clusters,
    ns: &Namespace,
    build: BuildIndexes,
) -> Result<usize, WorkerError> {
    if !build.builds_secondary_indexes() {
        return Ok(0);
    }
    let Some(source_specs) = list_index_specs(&clusters.source, ns).await? else {
        return Ok(0);
    };
    let specs: Vec<Document> = source_specs.iter().filter_map(|spec| index_for_sync(spec, build)).collect();
    if specs.is_empty() {
        return Ok(0);
    }
    if list_collection_spec(&clusters.destination, ns).await?.is_none() {
        // createIndexes would create the collection implicitly, without its options.
        tracing::warn!(namespace = %ns, "destination collection missing, indexes not built");
        return Ok(0);
    }
    let count = specs.len();
    create_indexes(&clusters.destination, ns, specs).await?;
    tracing::info!(namespace = %ns, indexes = count, "built indexes on the destination");
    Ok(count)
}

async fn coll_mod_index(client: &Client, ns: &Namespace, index: Document) -> Result<(), WorkerError> {
    let name = index.get_str("name").unwrap_or_default().to_string();
    let command = doc! {"collMod": &ns.coll, "index": index, "writeConcern": majority()};
    run(&client.database(&ns.db), command, &format!("modifying index {name} of {ns}")).await.map(|_| ())
}

async fn drop_index(client: &Client, ns: &Namespace, name: &str) -> Result<(), WorkerError> {
    let command = doc! {"dropIndexes": &ns.coll, "index": name, "writeConcern": majority()};
    match run(&client.database(&ns.db), command, &format!("dropping index {name} of {ns}")).await {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.code(), Some(INDEX_NOT_FOUND | NAMESPACE_NOT_FOUND)) => Ok(()),
        Err(e) => Err(e),
    }
}

fn unique_failure(ns: &Namespace, spec: &Document, error: &WorkerError) -> WorkerError {
    let name = spec.get_str("name").unwrap_or_default();
    let keys = spec.get_document("key").map(|k| k.to_string()).unwrap_or_default();
    WorkerError::fatal(
        "CannotConvertIndexToUnique",
        format!("cannot make index {name} {keys} of {ns} unique on the destination: it holds duplicate keys ({error})"),
    )
}

/// Makes one destination index match its source definition (`desired`, from [`index_for_commit`]).
async fn restore_index(
    client: &Client,
    ns: &Namespace,
    desired: &Document,
    existing: Option<&Document>,
) -> Result<(), WorkerError> {
    let name = desired.get_str("name").unwrap_or_default();
    let wanted = comparable_index(desired).unwrap_or_else(|| desired.clone());
    let current = existing.and_then(comparable_index);
    let rebuild = match &current {
        None => true,
        Some(current) => {
            !same_shape(&wanted, current)
                // collMod cannot make a unique index non-unique or remove a TTL.
                || (current.contains_key("unique") && !wanted.contains_key("unique"))
                || (current.contains_key("expireAfterSeconds") && !wanted.contains_key("expireAfterSeconds"))
        }
    };
    if rebuild {
        if existing.is_some() {
            drop_index(client, ns, name).await?;
        }
        return match create_one_index(client, ns, desired.clone()).await {
            Err(e) if e.code() == Some(DUPLICATE_KEY) => Err(unique_failure(ns, desired, &e)),
            other => other,
        };
    }
    let current = current.unwrap_or_default();
    if let Some(ttl) = wanted.get("expireAfterSeconds")
        && current.get("expireAfterSeconds").is_none_or(|c| bson_order::compare(c, ttl) != Ordering::Equal)
    {
        coll_mod_index(client, ns, doc! {"name": name, "expireAfterSeconds": ttl.clone()}).await?;
    }
    let hidden = wanted.contains_key("hidden");
    if hidden != current.contains_key("hidden") {
        coll_mod_index(client, ns, doc! {"name": name, "hidden": hidden}).await?;
    }
    if wanted.contains_key("unique") && !current.contains_key("unique") {
        // prepareUnique first: from then on the destination rejects new duplicates, so the
        // conversion's scan cannot race with a writer.
        coll_mod_index(client, ns, doc! {"name": name, "prepareUnique": true}).await?;
        match coll_mod_index(client, ns, doc! {"name": name, "unique": true}).await {
            Err(e) if matches!(e.code(), Some(CANNOT_CONVERT_INDEX_TO_UNIQUE | DUPLICATE_KEY)) => {
                return Err(unique_failure(ns, desired, &e));
            }
            other => other?,
        }
    } else if wanted.contains_key("prepareUnique") && !current.contains_key("prepareUnique") {
        coll_mod_index(client, ns, doc! {"name": name, "prepareUnique": true}).await?;
    }
    Ok(())
}

/// Makes the destination collection match the source's current definition (see the module
/// doc). With `build: never` only collection options are restored. A collection the source no
/// longer has is left to the change stream (which drops it). Idempotent.
pub async fn restore_collection_at_commit(
    clusters: &Clusters,
    ns: &Namespace,
    build: BuildIndexes,
) -> Result<(), WorkerError> {
    let Some(source) = list_collection_spec(&clusters.source, ns).await? else {
        tracing::info!(namespace = %ns, "collection no longer on the source, nothing to restore");
        return Ok(());
    };
    let Some(destination) = list_collection_spec(&clusters.destination, ns).await? else {
        return Err(WorkerError::fatal(
            "DestinationCollectionMissing",
            format!("{ns} exists on the source but not on the destination at commit"),
        ));
    };
    let empty = Document::new();
    let source_options = source.get_document("options").unwrap_or(&empty);
    let destination_options = destination.get_document("options").unwrap_or(&empty);
    if is_view_spec(&source) {
        return restore_view(clusters, ns, source_options, destination_options).await;
    }
    if build.builds_secondary_indexes() {
        restore_indexes(clusters, ns, build).await?;
    }
    restore_options(clusters, ns, source_options, destination_options).await?;
    tracing::info!(namespace = %ns, "restored collection definition at commit");
    Ok(())
}

async fn restore_view(
    clusters: &Clusters,
    ns: &Namespace,
    source: &Document,
    destination: &Document,
) -> Result<(), WorkerError> {
    let same = |field: &str| match (source.get(field), destination.get(field)) {
        (Some(a), Some(b)) => bson_order::compare(a, b) == Ordering::Equal,
        (None, None) => true,
        _ => false,
    };
    if same("viewOn") && same("pipeline") {
        return Ok(());
    }
    let mut command = doc! {"collMod": &ns.coll};
    for field in ["viewOn", "pipeline"] {
        if let Some(value) = source.get(field) {
            command.insert(field, value.clone());
        }
    }
    command.insert("writeConcern", majority());
    run(&clusters.destination_db(&ns.db), command, &format!("restoring view {ns}")).await.map(|_| ())
}

async fn restore_indexes(clusters: &Clusters, ns: &Namespace, build: BuildIndexes) -> Result<(), WorkerError> {
    let source_specs = list_index_specs(&clusters.source, ns).await?.unwrap_or_default();
    let destination_specs = list_index_specs(&clusters.destination, ns).await?.unwrap_or_default();
    let desired: Vec<Document> = source_specs
        .iter()
        .filter_map(index_for_commit)
        .filter(|spec| !(build.excludes_hashed() && is_hashed(spec)))
        .collect();
    let name_of = |spec: &Document| spec.get_str("name").unwrap_or_default().to_string();
    for existing in &destination_specs {
        let name = name_of(existing);
        if index_for_commit(existing).is_none() || desired.iter().any(|d| name_of(d) == name) {
            continue;
        }
        match drop_index(&clusters.destination, ns, &name).await {
            Ok(()) => {
                tracing::info!(namespace = %ns, index = name.as_str(), "dropped an index the source no longer has")
            }
            // The index a sharded destination needs for its shard key cannot be dropped: it is
            // the supporting index mongosync also keeps.
            Err(e) if e.to_string().contains("shard key") => {
                tracing::info!(namespace = %ns, index = name.as_str(), "kept the shard key index");
            }
            Err(e) => return Err(e),
        }
    }
    for spec in &desired {
        let name = name_of(spec);
        let existing = destination_specs.iter().find(|d| name_of(d) == name);
        restore_index(&clusters.destination, ns, spec, existing).await?;
    }
    Ok(())
}

fn option_equal(a: Option<&Bson>, b: Option<&Bson>) -> bool {
    match (a, b) {
        (Some(x), Some(y)) => bson_order::compare(x, y) == Ordering::Equal,
        (None, None) => true,
        _ => false,
    }
}

async fn restore_options(
    clusters: &Clusters,
    ns: &Namespace,
    source: &Document,
    destination: &Document,
) -> Result<(), WorkerError> {
    let db = clusters.destination_db(&ns.db);
    let mut changes = Document::new();
    if truthy(source.get("capped")) {
        let size = source.get("size").cloned().unwrap_or(Bson::Int64(SYNC_CAPPED_SIZE));
        if !option_equal(Some(&size), destination.get("size")) {
            changes.insert("cappedSize", size);
        }
        let max = source.get("max").filter(|m| positive(m)).cloned();
        let current_max = destination.get("max").filter(|m| positive(m)).cloned();
        if !option_equal(max.as_ref(), current_max.as_ref()) {
            // cappedMax 0 means no document limit.
            changes.insert("cappedMax", max.unwrap_or(Bson::Int64(0)));
        }
    }
    let validation_differs = ["validator", "validationLevel", "validationAction"]
        .iter()
        .any(|field| !option_equal(source.get(*field), destination.get(*field)));
    if validation_differs {
        changes.insert("validator", source.get("validator").cloned().unwrap_or(Bson::Document(Document::new())));
        changes
            .insert("validationLevel", source.get("validationLevel").cloned().unwrap_or(Bson::String("strict".into())));
        changes.insert(
            "validationAction",
            source.get("validationAction").cloned().unwrap_or(Bson::String("error".into())),
        );
    }
    if !option_equal(source.get("expireAfterSeconds"), destination.get("expireAfterSeconds")) {
        changes.insert(
            "expireAfterSeconds",
            source.get("expireAfterSeconds").cloned().unwrap_or(Bson::String("off".into())),
        );
    }
    if !option_equal(source.get("changeStreamPreAndPostImages"), destination.get("changeStreamPreAndPostImages"))
        && let Some(images) = source.get("changeStreamPreAndPostImages")
    {
        changes.insert("changeStreamPreAndPostImages", images.clone());
    }
    if changes.is_empty() {
        return Ok(());
    }
    let changed: Vec<String> = changes.keys().cloned().collect();
    let mut command = doc! {"collMod": &ns.coll};
    command.extend(changes);
    command.insert("writeConcern", majority());
    run(&db, command, &format!("restoring options of {ns}")).await?;
    tracing::info!(namespace = %ns, options = ?changed, "restored collection options");
    Ok(())
}

fn positive(value: &Bson) -> bool {
    crate::partition::as_i64(Some(value)).is_some_and(|v| v > 0)
}

// ---------------------------------------------------------------------------------------------
// change-stream DDL
// ---------------------------------------------------------------------------------------------

/// Applies a `create` event: the collection (or view) with the sync-time options. Idempotent.
pub async fn apply_create(
    clusters: &Clusters,
    ns: &Namespace,
    operation_description: &Document,
) -> Result<(), WorkerError> {
    if operation_description.contains_key("viewOn") {
        let mut view = Document::new();
        for option in ["viewOn", "pipeline", "collation"] {
            if let Some(value) = operation_description.get(option) {
                view.insert(option, value.clone());
            }
        }
        return create_if_missing(&clusters.destination, ns, view, true).await;
    }
    create_if_missing(&clusters.destination, ns, collection_options_for_sync(operation_description), false).await
}

/// Applies a `drop` event (collection or view). Idempotent.
pub async fn apply_drop(clusters: &Clusters, ns: &Namespace) -> Result<(), WorkerError> {
    let command = doc! {"drop": &ns.coll, "writeConcern": majority()};
    match run(&clusters.destination_db(&ns.db), command, &format!("dropping {ns} on the destination")).await {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(NAMESPACE_NOT_FOUND) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Applies a `dropDatabase` event like mongosync: drops the user collections and views of the
/// database and leaves its `system.*` collections. Idempotent.
pub async fn apply_drop_database(clusters: &Clusters, db: &str) -> Result<(), WorkerError> {
    let entries = run_cursor(
        &clusters.destination_db(db),
        doc! {"listCollections": 1, "nameOnly": true},
        &format!("listing collections of {db} on the destination"),
    )
    .await?;
    // Views first: a view may depend on a collection of the same database.
    let mut names: Vec<(bool, String)> = entries
        .iter()
        .filter_map(|entry| Some((!is_view_spec(entry), entry.get_str("name").ok()?.to_string())))
        .filter(|(_, name)| !name.starts_with("system."))
        .collect();
    names.sort();
    for (_, name) in names {
        apply_drop(clusters, &Namespace::new(db, name)).await?;
    }
    Ok(())
}

/// Applies a `rename` event. Idempotent: a rename already applied (the source gone, the
/// target present) is success.
pub async fn apply_rename(
    clusters: &Clusters,
    from: &Namespace,
    to: &Namespace,
    drop_target: bool,
) -> Result<(), WorkerError> {
    let command = doc! {
        "renameCollection": from.to_string(),
        "to": to.to_string(),
        "dropTarget": drop_target,
        "writeConcern": majority(),
    };
    let what = format!("renaming {from} to {to} on the destination");
    match run(&clusters.destination.database("admin"), command, &what).await {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.code(), Some(NAMESPACE_NOT_FOUND | NAMESPACE_EXISTS)) => {
            let from_exists = list_collection_spec(&clusters.destination, from).await?.is_some();
            let to_exists = list_collection_spec(&clusters.destination, to).await?.is_some();
            if !from_exists {
                if !to_exists {
                    tracing::warn!(from = %from, to = %to, "rename source missing on the destination, nothing to rename");
                }
                Ok(())
            } else {
                Err(e)
            }
        }
        Err(e) => Err(e),
    }
}

/// Applies a `createIndexes` event: the indexes transformed by [`index_for_sync`] (none with
/// `never`). Idempotent.
pub async fn apply_create_indexes(
    clusters: &Clusters,
    ns: &Namespace,
    indexes: &[Document],
    build: BuildIndexes,
) -> Result<(), WorkerError> {
    let specs: Vec<Document> = indexes.iter().filter_map(|spec| index_for_sync(spec, build)).collect();
    create_indexes(&clusters.destination, ns, specs).await
}

/// The index names of a `createIndexes`/`dropIndexes` event's `operationDescription`
/// (`{indexes: [{name, key, …}]}`).
pub fn index_names_of(operation_description: &Document) -> Vec<String> {
    operation_description
        .get_array("indexes")
        .map(|indexes| {
            indexes
                .iter()
                .filter_map(|spec| spec.as_document().and_then(|d| d.get_str("name").ok()).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Applies a `dropIndexes` event. Missing indexes or collections are fine. Idempotent.
pub async fn apply_drop_indexes(clusters: &Clusters, ns: &Namespace, names: &[String]) -> Result<(), WorkerError> {
    for name in names.iter().filter(|name| name.as_str() != "_id_") {
        drop_index(&clusters.destination, ns, name).await?;
    }
    Ok(())
}

/// Applies a `modify` (collMod) event. Index changes (hidden, TTL, unique), validators,
/// capped limits and collection TTL are not applied during the sync — the commit restores
/// them from the source; the rest (e.g. `changeStreamPreAndPostImages`, a view's pipeline,
/// time-series granularity) is.
pub async fn apply_modify(
    clusters: &Clusters,
    ns: &Namespace,
    operation_description: &Document,
) -> Result<(), WorkerError> {
    let mut changes = Document::new();
    for (option, value) in operation_description {
        if DEFERRED_MODIFY_OPTIONS.contains(&option.as_str()) || MODIFY_EVENT_METADATA.contains(&option.as_str()) {
            continue;
        }
        changes.insert(option.clone(), value.clone());
    }
    if changes.is_empty() {
        return Ok(());
    }
    let mut command = doc! {"collMod": &ns.coll};
    command.extend(changes);
    command.insert("writeConcern", majority());
    match run(&clusters.destination_db(&ns.db), command, &format!("modifying {ns} on the destination")).await {
        Ok(_) => Ok(()),
        // Dropped later in the stream: the drop event follows.
        Err(e) if e.code() == Some(NAMESPACE_NOT_FOUND) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Blocks or unblocks user writes on a whole cluster (`setUserWriteBlockMode`). Users with the
/// `bypassWriteBlockingMode` privilege (clustersync's own) can still write.
pub async fn set_user_write_blocking(client: &Client, blocked: bool) -> Result<(), WorkerError> {
    let command = doc! {"setUserWriteBlockMode": 1, "global": blocked, "writeConcern": majority()};
    let what = if blocked { "blocking user writes" } else { "unblocking user writes" };
    run(&client.database("admin"), command, what).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_ttl_and_hidden_are_relaxed_for_the_sync() {
        let source = doc! {
            "v": 2, "key": {"email": 1}, "name": "email_1", "unique": true, "prepareUnique": true,
            "hidden": true, "expireAfterSeconds": 3600, "sparse": true, "ns": "db.c", "background": true,
        };
        let spec = index_for_sync(&source, BuildIndexes::BeforeDataCopy).unwrap();
        assert_eq!(
            spec,
            doc! {"key": {"email": 1}, "name": "email_1", "expireAfterSeconds": SYNC_TTL_SECONDS, "sparse": true}
        );
        // At commit the source's flags come back, without the dropped options.
        let commit = index_for_commit(&source).unwrap();
        assert_eq!(commit.get_bool("unique"), Ok(true));
        assert_eq!(commit.get_bool("hidden"), Ok(true));
        assert_eq!(commit.get_i32("expireAfterSeconds"), Ok(3600));
        assert!(!commit.contains_key("v") && !commit.contains_key("ns") && !commit.contains_key("background"));
    }

    #[test]
    fn legacy_key_values_become_one() {
        let source = doc! {
            "key": {"a": 0, "b": "", "c": -1, "d": 0.0, "e": -0.0, "f": f64::NAN, "g": true, "h": {"x": 1},
                    "i": Bson::Decimal128("0.00".parse().unwrap()), "j": 2.5, "k": Bson::Null, "l": 0_i64},
            "name": "legacy",
        };
        let spec = index_for_sync(&source, BuildIndexes::BeforeDataCopy).unwrap();
        let key = spec.get_document("key").unwrap();
        for field in ["a", "b", "d", "e", "f", "g", "h", "i", "k", "l"] {
            assert_eq!(key.get(field), Some(&Bson::Int32(1)), "{field}");
        }
        assert_eq!(key.get("c"), Some(&Bson::Int32(-1)));
        assert_eq!(key.get("j"), Some(&Bson::Double(2.5)));
        // Field order is the index's meaning: kept.
        assert_eq!(
            key.keys().cloned().collect::<Vec<_>>(),
            vec!["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l"]
        );
        // Plugin names stay.
        let text = doc! {"key": {"_fts": "text", "_ftsx": 1}, "name": "t", "weights": {"a": 1}, "textIndexVersion": 3};
        assert_eq!(
            index_for_sync(&text, BuildIndexes::BeforeDataCopy).unwrap().get_document("key").unwrap(),
            &doc! {"_fts": "text", "_ftsx": 1}
        );
    }

    #[test]
    fn invalid_options_are_dropped_and_valid_ones_kept() {
        let source = doc! {
            "key": {"loc": "2dsphere"}, "name": "loc", "v": 1, "2dsphereIndexVersion": 3, "dropDups": true,
            "bucketSize": 5, "safe": true, "w": 1, "collation": {"locale": "fr"},
            "partialFilterExpression": {"a": {"$gt": 1}}, "storageEngine": {"wiredTiger": {}},
        };
        let spec = index_for_sync(&source, BuildIndexes::BeforeDataCopy).unwrap();
        let kept: Vec<&str> = spec.keys().map(String::as_str).collect();
        assert_eq!(
            kept,
            vec!["key", "name", "2dsphereIndexVersion", "collation", "partialFilterExpression", "storageEngine"]
        );
    }

    #[test]
    fn id_clustered_hashed_and_never_are_excluded() {
        let id = doc! {"v": 2, "key": {"_id": 1}, "name": "_id_"};
        assert_eq!(index_for_sync(&id, BuildIndexes::BeforeDataCopy), None);
        let clustered = doc! {"v": 2, "key": {"_id": 1}, "name": "by_id", "unique": true, "clustered": true};
        assert_eq!(index_for_sync(&clustered, BuildIndexes::BeforeDataCopy), None);
        let hashed = doc! {"key": {"h": "hashed"}, "name": "h_hashed"};
        assert!(index_for_sync(&hashed, BuildIndexes::BeforeDataCopy).is_some());
        assert!(index_for_sync(&hashed, BuildIndexes::AfterDataCopy).is_some());
        assert_eq!(index_for_sync(&hashed, BuildIndexes::ExcludeHashed), None);
        assert_eq!(index_for_sync(&hashed, BuildIndexes::ExcludeHashedAfterCopy), None);
        let plain = doc! {"key": {"a": 1}, "name": "a_1"};
        assert_eq!(index_for_sync(&plain, BuildIndexes::Never), None);
        assert!(index_for_sync(&plain, BuildIndexes::ExcludeHashed).is_some());
        assert_eq!(index_for_sync(&doc! {"name": "no_key"}, BuildIndexes::BeforeDataCopy), None);
    }

    #[test]
    fn collection_options_are_relaxed_for_the_sync() {
        let capped = doc! {"capped": true, "size": 4096, "max": 10, "validator": {"a": {"$exists": true}},
        "validationLevel": "moderate", "validationAction": "warn", "uuid": "x", "flags": 1};
        assert_eq!(collection_options_for_sync(&capped), doc! {"capped": true, "size": SYNC_CAPPED_SIZE});
        let clustered = doc! {"clusteredIndex": {"v": 2, "key": {"_id": 1}, "name": "_id_", "unique": true},
        "expireAfterSeconds": 60_i64, "collation": {"locale": "fr"},
        "changeStreamPreAndPostImages": {"enabled": true}};
        let relaxed = collection_options_for_sync(&clustered);
        assert!(!relaxed.contains_key("expireAfterSeconds"));
        assert!(relaxed.contains_key("clusteredIndex") && relaxed.contains_key("collation"));
        assert!(relaxed.contains_key("changeStreamPreAndPostImages"));
        let ts = doc! {"timeseries": {"timeField": "t", "metaField": "m", "granularity": "seconds", "bucketMaxSpanSeconds": 3600}};
        assert_eq!(
            collection_options_for_sync(&ts),
            doc! {"timeseries": {"timeField": "t", "metaField": "m", "granularity": "seconds"}}
        );
        let custom = doc! {"timeseries": {"timeField": "t", "bucketMaxSpanSeconds": 100, "bucketRoundingSeconds": 100}};
        assert_eq!(collection_options_for_sync(&custom), custom);
    }

    #[test]
    fn index_comparisons_ignore_representation() {
        let a = doc! {"v": 2, "key": {"a": 1}, "name": "a_1", "unique": true, "prepareUnique": true};
        let b = doc! {"key": {"a": 1.0}, "name": "a_1", "unique": 1, "v": 1};
        assert!(same_values(&comparable_index(&a).unwrap(), &comparable_index(&b).unwrap()));
        let c = doc! {"key": {"a": -1}, "name": "a_1"};
        assert!(!same_values(&comparable_index(&a).unwrap(), &comparable_index(&c).unwrap()));
        // Key order matters, option order does not.
        let k1 = doc! {"key": {"a": 1, "b": 1}, "name": "ab", "sparse": true, "hidden": false};
        let k2 = doc! {"name": "ab", "sparse": true, "key": {"a": 1, "b": 1}};
        let k3 = doc! {"key": {"b": 1, "a": 1}, "name": "ab", "sparse": true};
        assert!(same_values(&comparable_index(&k1).unwrap(), &comparable_index(&k2).unwrap()));
        assert!(!same_values(&comparable_index(&k1).unwrap(), &comparable_index(&k3).unwrap()));
        // Shape ignores what collMod can change.
        let ttl = doc! {"key": {"t": 1}, "name": "t_1", "expireAfterSeconds": 5, "hidden": true};
        let relaxed = index_for_sync(&ttl, BuildIndexes::BeforeDataCopy).unwrap();
        assert!(same_shape(&comparable_index(&ttl).unwrap(), &comparable_index(&relaxed).unwrap()));
    }

    #[test]
    fn index_names_come_from_the_event() {
        let description =
            doc! {"indexes": [{"v": 2, "key": {"a": 1}, "name": "a_1"}, {"key": {"b": 1}, "name": "b_1"}]};
        assert_eq!(index_names_of(&description), vec!["a_1".to_string(), "b_1".to_string()]);
        assert!(index_names_of(&doc! {}).is_empty());
    }
}
