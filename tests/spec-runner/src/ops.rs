//! Operations on entities: CRUD, cursors, change streams, DDL helpers,
//! `runCommand`, sessions and transactions. Each operation maps onto the
//! official driver's API; arguments the driver cannot express make the test a
//! skip. `modifyCollection` and `rename` have no driver helper and are sent as
//! `collMod` and `renameCollection` through `runCommand`, as other drivers'
//! runners do.

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use bson::{Bson, Document, doc};
use futures::TryStreamExt;
use mongodb::options::{
    AggregateOptions, ChangeStreamOptions, CountOptions, CreateCollectionOptions, DeleteOptions, DistinctOptions,
    EstimatedDocumentCountOptions, FindOneAndDeleteOptions, FindOneAndReplaceOptions, FindOneAndUpdateOptions,
    FindOneOptions, FindOptions, FullDocumentBeforeChangeType, FullDocumentType, Hint, IndexOptions, InsertManyOptions,
    InsertOneOptions, ListCollectionsOptions, ReplaceOptions, ReturnDocument, RunCursorCommandOptions,
    UpdateModifications, UpdateOptions,
};
use mongodb::{IndexModel, SearchIndexModel};

use crate::emulated;
use crate::entities::{CursorEntity, Entities, Entity, read_preference, transaction_options};
use crate::skip;

/// What a successful operation produced.
pub enum Output {
    None,
    Value(Bson),
    ChangeStream(Box<mongodb::change_stream::ChangeStream<Document>>),
    Cursor(Box<CursorEntity>),
    /// A collection (from `createCollection`) and its client's id.
    Collection(mongodb::Collection<Document>, String),
}

/// The driver's answer: a value or the error `expectError` is checked against.
pub type OpResult = std::result::Result<Output, mongodb::error::Error>;

/// How long `iterateUntilDocumentOrError` waits before failing the test.
pub const ITERATE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long `iterateOnce` on a cursor may block before the test is skipped
/// (the driver's cursor has no `tryNext`).
pub const TRY_NEXT_WAIT: Duration = Duration::from_secs(2);

pub fn as_i64(b: &Bson) -> Option<i64> {
    match b {
        Bson::Int32(v) => Some(i64::from(*v)),
        Bson::Int64(v) => Some(*v),
        #[allow(clippy::cast_possible_truncation)]
        Bson::Double(v) if v.fract() == 0.0 => Some(*v as i64),
        _ => None,
    }
}

/// The arguments of one operation; keys left unread make the test a skip.
pub struct Args {
    pub(crate) op: String,
    pub(crate) doc: Document,
    used: Vec<String>,
}

impl Args {
    pub fn new(op: &str, doc: Document) -> Self {
        Args { op: op.to_string(), doc, used: Vec::new() }
    }
    pub fn get(&mut self, key: &str) -> Option<Bson> {
        self.used.push(key.to_string());
        self.doc.get(key).cloned()
    }
    pub fn req(&mut self, key: &str) -> Result<Bson> {
        self.get(key).ok_or_else(|| anyhow!("{}: missing argument {key}", self.op))
    }
    pub fn doc(&mut self, key: &str) -> Result<Option<Document>> {
        match self.get(key) {
            None => Ok(None),
            Some(Bson::Document(d)) => Ok(Some(d)),
            Some(other) => Err(anyhow!("{}: {key} is not a document: {other}", self.op)),
        }
    }
    pub fn req_doc(&mut self, key: &str) -> Result<Document> {
        self.doc(key)?.ok_or_else(|| anyhow!("{}: missing argument {key}", self.op))
    }
    pub fn string(&mut self, key: &str) -> Result<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(Bson::String(s)) => Ok(Some(s)),
            Some(other) => Err(anyhow!("{}: {key} is not a string: {other}", self.op)),
        }
    }
    pub fn req_string(&mut self, key: &str) -> Result<String> {
        self.string(key)?.ok_or_else(|| anyhow!("{}: missing argument {key}", self.op))
    }
    pub fn bool(&mut self, key: &str) -> Option<bool> {
        self.get(key).and_then(|b| b.as_bool())
    }
    pub fn int(&mut self, key: &str) -> Result<Option<i64>> {
        match self.get(key) {
            None => Ok(None),
            Some(b) => as_i64(&b).map(Some).ok_or_else(|| anyhow!("{}: {key} is not an integer", self.op)),
        }
    }
    pub fn u64(&mut self, key: &str) -> Result<Option<u64>> {
        Ok(self.int(key)?.map(|v| u64::try_from(v).unwrap_or(0)))
    }
    pub fn u32(&mut self, key: &str) -> Result<Option<u32>> {
        Ok(self.int(key)?.map(|v| u32::try_from(v).unwrap_or(0)))
    }
    pub fn millis(&mut self, key: &str) -> Result<Option<Duration>> {
        Ok(self.u64(key)?.map(Duration::from_millis))
    }
    pub fn docs(&mut self, key: &str) -> Result<Option<Vec<Document>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Bson::Array(items)) => items
                .into_iter()
                .map(|i| match i {
                    Bson::Document(d) => Ok(d),
                    other => Err(anyhow!("{}: {key} holds a non-document {other}", self.op)),
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(other) => Err(anyhow!("{}: {key} is not an array: {other}", self.op)),
        }
    }
    pub fn hint(&mut self) -> Result<Option<Hint>> {
        Ok(match self.get("hint") {
            None => None,
            Some(Bson::String(s)) => Some(Hint::Name(s)),
            Some(Bson::Document(d)) => Some(Hint::Keys(d)),
            Some(other) => return Err(anyhow!("{}: bad hint {other}", self.op)),
        })
    }
    pub fn collation(&mut self) -> Result<Option<mongodb::options::Collation>> {
        match self.get("collation") {
            None => Ok(None),
            Some(b) => Ok(Some(bson::from_bson(b).context("bad collation")?)),
        }
    }
    /// Fails with a skip if any argument was not consumed.
    pub fn done(&self) -> Result<()> {
        for key in self.doc.keys() {
            if !self.used.iter().any(|u| u == key) {
                skip!("argument {key} of {} is not supported by the rust driver runner", self.op);
            }
        }
        Ok(())
    }
}

fn docs_to_bson(docs: Vec<Document>) -> Bson {
    Bson::Array(docs.into_iter().map(Bson::Document).collect())
}

fn update_result(r: &mongodb::results::UpdateResult) -> Bson {
    let mut d = doc! {
        "matchedCount": i64::try_from(r.matched_count).unwrap_or(i64::MAX),
        "modifiedCount": i64::try_from(r.modified_count).unwrap_or(i64::MAX),
        "upsertedCount": i32::from(r.upserted_id.is_some()),
    };
    if let Some(id) = &r.upserted_id {
        d.insert("upsertedId", id.clone());
    }
    Bson::Document(d)
}

fn update_modifications(b: Bson) -> Result<UpdateModifications> {
    Ok(match b {
        Bson::Document(d) => UpdateModifications::Document(d),
        Bson::Array(items) => UpdateModifications::Pipeline(
            items
                .into_iter()
                .map(|i| match i {
                    Bson::Document(d) => Ok(d),
                    other => Err(anyhow!("pipeline stage is not a document: {other}")),
                })
                .collect::<Result<_>>()?,
        ),
        other => return Err(anyhow!("invalid update {other}")),
    })
}

fn return_document(s: Option<String>) -> Result<Option<ReturnDocument>> {
    Ok(match s.as_deref() {
        None => None,
        Some("Before") => Some(ReturnDocument::Before),
        Some("After") => Some(ReturnDocument::After),
        Some(other) => return Err(anyhow!("bad returnDocument {other}")),
    })
}

/// Runs an action with the optional session entity given by `$sid`.
macro_rules! with_session {
    ($ents:expr, $sid:expr, $action:expr) => {
        match &$sid {
            Some(id) => {
                let s = &mut $ents.session_mut(id)?.session;
                $action.session(s).await
            }
            None => $action.await,
        }
    };
}

/// Collects a find/aggregate result with or without a session.
macro_rules! collect_cursor {
    ($ents:expr, $sid:expr, $action:expr) => {
        match &$sid {
            Some(id) => {
                let s = &mut $ents.session_mut(id)?.session;
                match $action.session(&mut *s).await {
                    Ok(mut c) => {
                        c.stream(s).try_collect::<Vec<Document>>().await.map(|d| Output::Value(docs_to_bson(d)))
                    }
                    Err(e) => Err(e),
                }
            }
            None => match $action.await {
                Ok(c) => c.try_collect::<Vec<Document>>().await.map(|d| Output::Value(docs_to_bson(d))),
                Err(e) => Err(e),
            },
        }
    };
}

fn value<T, F: FnOnce(T) -> Bson>(r: std::result::Result<T, mongodb::error::Error>, f: F) -> OpResult {
    r.map(|v| Output::Value(f(v)))
}

fn unit<T>(r: std::result::Result<T, mongodb::error::Error>) -> OpResult {
    r.map(|_| Output::None)
}

fn u64_bson(v: u64) -> Bson {
    Bson::Int64(i64::try_from(v).unwrap_or(i64::MAX))
}

/// Rejects arguments no driver API here can express.
fn reject(args: &mut Args, keys: &[&str]) -> Result<()> {
    for k in keys {
        if args.doc.contains_key(*k) {
            skip!("argument {k} of {} is not supported by the rust driver", args.op);
        }
    }
    Ok(())
}

/// `rawData` is for servers 8.2 and later; drivers leave it out for older
/// ones, which is what the `*-rawdata.json` tests check. The driver has no
/// option for it, so on newer servers the test is a skip.
fn raw_data(ents: &Entities, a: &mut Args) -> Result<()> {
    if a.doc.contains_key("rawData") && emulated::raw_data_supported(ents) {
        skip!("argument rawData of {} is not supported by the rust driver", a.op);
    }
    let _ = a.get("rawData");
    Ok(())
}

/// Writes that go through [`emulated::unacknowledged_write`] when the
/// collection's write concern is `w: 0`.
const WRITES: &[&str] = &[
    "insertOne",
    "insertMany",
    "updateOne",
    "updateMany",
    "replaceOne",
    "deleteOne",
    "deleteMany",
    "findOneAndUpdate",
    "findOneAndReplace",
    "findOneAndDelete",
];

pub async fn collection_op(ents: &mut Entities, coll_id: &str, name: &str, mut a: Args) -> Result<OpResult> {
    let coll = ents.collection(coll_id)?;
    reject(&mut a, &["timeoutMS"])?;
    let sid = a.string("session")?;
    match name {
        "bulkWrite" => return emulated::bulk_write(ents, &coll, &sid, a).await,
        "count" => return emulated::count_command(ents, &coll, &sid, a).await,
        // inside a transaction the collection's write concern does not apply
        _ if WRITES.contains(&name) && emulated::unacknowledged(&coll) && !emulated::in_transaction(ents, &sid) => {
            return emulated::unacknowledged_write(ents, &coll, &sid, name, a).await;
        }
        _ => {}
    }
    raw_data(ents, &mut a)?;
    Ok(match name {
        "insertOne" => {
            let document = a.req_doc("document")?;
            let mut o = InsertOneOptions::default();
            o.bypass_document_validation = a.bool("bypassDocumentValidation");
            o.comment = a.get("comment");
            a.done()?;
            let r = with_session!(ents, sid, coll.insert_one(document).with_options(o));
            value(r, |r| Bson::Document(doc! {"insertedId": r.inserted_id}))
        }
        "insertMany" => {
            let documents = a.docs("documents")?.unwrap_or_default();
            let mut o = InsertManyOptions::default();
            o.bypass_document_validation = a.bool("bypassDocumentValidation");
            o.ordered = a.bool("ordered");
            o.comment = a.get("comment");
            a.done()?;
            let (n, ordered) = (documents.len(), o.ordered.unwrap_or(true));
            let r = with_session!(ents, sid, coll.insert_many(documents).with_options(o))
                .map_err(|e| emulated::insert_many_partial(e, n, ordered));
            value(r, |r| {
                let mut ids: Vec<_> = r.inserted_ids.into_iter().collect();
                ids.sort_by_key(|(i, _)| *i);
                let d: Document = ids.into_iter().map(|(i, v)| (i.to_string(), v)).collect();
                Bson::Document(doc! {"insertedIds": d})
            })
        }
        "updateOne" | "updateMany" | "replaceOne" => {
            let filter = a.req_doc("filter")?;
            if name == "replaceOne" {
                let replacement = a.req_doc("replacement")?;
                let mut o = ReplaceOptions::default();
                o.bypass_document_validation = a.bool("bypassDocumentValidation");
                o.upsert = a.bool("upsert");
                o.collation = a.collation()?;
                o.hint = a.hint()?;
                o.let_vars = a.doc("let")?;
                o.comment = a.get("comment");
                o.sort = a.doc("sort")?;
                a.done()?;
                let r = with_session!(ents, sid, coll.replace_one(filter, replacement).with_options(o));
                value(r, |r| update_result(&r))
            } else {
                let update = update_modifications(a.req("update")?)?;
                let mut o = UpdateOptions::default();
                o.array_filters = a.docs("arrayFilters")?;
                o.bypass_document_validation = a.bool("bypassDocumentValidation");
                o.upsert = a.bool("upsert");
                o.collation = a.collation()?;
                o.hint = a.hint()?;
                o.let_vars = a.doc("let")?;
                o.comment = a.get("comment");
                if name == "updateOne" {
                    o.sort = a.doc("sort")?;
                }
                a.done()?;
                let r = if name == "updateOne" {
                    with_session!(ents, sid, coll.update_one(filter, update).with_options(o))
                } else {
                    with_session!(ents, sid, coll.update_many(filter, update).with_options(o))
                };
                value(r, |r| update_result(&r))
            }
        }
        "deleteOne" | "deleteMany" => {
            let filter = a.req_doc("filter")?;
            let mut o = DeleteOptions::default();
            o.collation = a.collation()?;
            o.hint = a.hint()?;
            o.let_vars = a.doc("let")?;
            o.comment = a.get("comment");
            a.done()?;
            let r = if name == "deleteOne" {
                with_session!(ents, sid, coll.delete_one(filter).with_options(o))
            } else {
                with_session!(ents, sid, coll.delete_many(filter).with_options(o))
            };
            value(r, |r| Bson::Document(doc! {"deletedCount": u64_bson(r.deleted_count)}))
        }
        "find" | "createFindCursor" => {
            let filter = a.doc("filter")?.unwrap_or_default();
            let o = find_options(&mut a)?;
            a.done()?;
            if name == "createFindCursor" {
                match &sid {
                    Some(id) => {
                        let id = id.clone();
                        let s = &mut ents.session_mut(&id)?.session;
                        coll.find(filter)
                            .with_options(o)
                            .session(s)
                            .await
                            .map(|c| Output::Cursor(Box::new(CursorEntity::WithSession(c, id))))
                    }
                    None => coll
                        .find(filter)
                        .with_options(o)
                        .await
                        .map(|c| Output::Cursor(Box::new(CursorEntity::Plain(c)))),
                }
            } else {
                collect_cursor!(ents, sid, coll.find(filter).with_options(o))
            }
        }
        "findOne" => {
            let filter = a.doc("filter")?.unwrap_or_default();
            let mut o = FindOneOptions::default();
            o.sort = a.doc("sort")?;
            o.skip = a.u64("skip")?;
            o.projection = a.doc("projection")?;
            o.comment = a.get("comment");
            o.hint = a.hint()?;
            o.collation = a.collation()?;
            o.let_vars = a.doc("let")?;
            o.max_time = a.millis("maxTimeMS")?;
            a.done()?;
            let r = with_session!(ents, sid, coll.find_one(filter).with_options(o));
            value(r, |d| d.map_or(Bson::Null, Bson::Document))
        }
        "findOneAndUpdate" | "findOneAndReplace" | "findOneAndDelete" => {
            let filter = a.req_doc("filter")?;
            let r = match name {
                "findOneAndUpdate" => {
                    let update = update_modifications(a.req("update")?)?;
                    let mut o = FindOneAndUpdateOptions::default();
                    o.array_filters = a.docs("arrayFilters")?;
                    o.bypass_document_validation = a.bool("bypassDocumentValidation");
                    o.max_time = a.millis("maxTimeMS")?;
                    o.projection = a.doc("projection")?;
                    o.return_document = return_document(a.string("returnDocument")?)?;
                    o.sort = a.doc("sort")?;
                    o.upsert = a.bool("upsert");
                    o.collation = a.collation()?;
                    o.hint = a.hint()?;
                    o.let_vars = a.doc("let")?;
                    o.comment = a.get("comment");
                    a.done()?;
                    with_session!(ents, sid, coll.find_one_and_update(filter, update).with_options(o))
                }
                "findOneAndReplace" => {
                    let replacement = a.req_doc("replacement")?;
                    let mut o = FindOneAndReplaceOptions::default();
                    o.bypass_document_validation = a.bool("bypassDocumentValidation");
                    o.max_time = a.millis("maxTimeMS")?;
                    o.projection = a.doc("projection")?;
                    o.return_document = return_document(a.string("returnDocument")?)?;
                    o.sort = a.doc("sort")?;
                    o.upsert = a.bool("upsert");
                    o.collation = a.collation()?;
                    o.hint = a.hint()?;
                    o.let_vars = a.doc("let")?;
                    o.comment = a.get("comment");
                    a.done()?;
                    with_session!(ents, sid, coll.find_one_and_replace(filter, replacement).with_options(o))
                }
                _ => {
                    let mut o = FindOneAndDeleteOptions::default();
                    o.max_time = a.millis("maxTimeMS")?;
                    o.projection = a.doc("projection")?;
                    o.sort = a.doc("sort")?;
                    o.collation = a.collation()?;
                    o.hint = a.hint()?;
                    o.let_vars = a.doc("let")?;
                    o.comment = a.get("comment");
                    a.done()?;
                    with_session!(ents, sid, coll.find_one_and_delete(filter).with_options(o))
                }
            };
            value(r, |d| d.map_or(Bson::Null, Bson::Document))
        }
        "aggregate" => {
            let pipeline = a.docs("pipeline")?.unwrap_or_default();
            let o = aggregate_options(&mut a)?;
            a.done()?;
            collect_cursor!(ents, sid, coll.aggregate(pipeline).with_options(o))
        }
        "countDocuments" => {
            let filter = a.req_doc("filter")?;
            let mut o = CountOptions::default();
            o.hint = a.hint()?;
            o.limit = a.u64("limit")?;
            o.skip = a.u64("skip")?;
            o.max_time = a.millis("maxTimeMS")?;
            o.collation = a.collation()?;
            o.comment = a.get("comment");
            a.done()?;
            let r = with_session!(ents, sid, coll.count_documents(filter).with_options(o));
            value(r, u64_bson)
        }
        "estimatedDocumentCount" => {
            let mut o = EstimatedDocumentCountOptions::default();
            o.max_time = a.millis("maxTimeMS")?;
            o.comment = a.get("comment");
            a.done()?;
            if sid.is_some() {
                skip!("estimatedDocumentCount with a session is not supported by the rust driver");
            }
            value(coll.estimated_document_count().with_options(o).await, u64_bson)
        }
        "distinct" => {
            let field = a.req_string("fieldName")?;
            let filter = a.doc("filter")?.unwrap_or_default();
            let mut o = DistinctOptions::default();
            o.max_time = a.millis("maxTimeMS")?;
            o.collation = a.collation()?;
            o.comment = a.get("comment");
            o.hint = a.hint()?;
            a.done()?;
            let r = with_session!(ents, sid, coll.distinct(field, filter).with_options(o));
            value(r, Bson::Array)
        }
        "createIndex" => {
            let keys = a.req_doc("keys")?;
            let mut io = IndexOptions::default();
            io.name = a.string("name")?;
            io.unique = a.bool("unique");
            io.sparse = a.bool("sparse");
            io.expire_after = a.u64("expireAfterSeconds")?.map(Duration::from_secs);
            a.done()?;
            let model = IndexModel::builder().keys(keys).options(io).build();
            let r = with_session!(ents, sid, coll.create_index(model));
            value(r, |r| Bson::String(r.index_name))
        }
        "dropIndex" => {
            let idx = a.req_string("name")?;
            a.done()?;
            unit(with_session!(ents, sid, coll.drop_index(idx)))
        }
        "dropIndexes" => {
            a.done()?;
            unit(with_session!(ents, sid, coll.drop_indexes()))
        }
        "listIndexes" | "listIndexNames" => {
            let batch = a.u32("batchSize")?;
            a.done()?;
            if name == "listIndexNames" {
                let r = with_session!(ents, sid, coll.list_index_names());
                value(r, |n| Bson::Array(n.into_iter().map(Bson::String).collect()))
            } else {
                let mut o = mongodb::options::ListIndexesOptions::default();
                o.batch_size = batch;
                match &sid {
                    Some(id) => {
                        let s = &mut ents.session_mut(id)?.session;
                        match coll.list_indexes().with_options(o).session(&mut *s).await {
                            Ok(c) => c
                                .with_type::<Document>()
                                .stream(s)
                                .try_collect::<Vec<_>>()
                                .await
                                .map(|d| Output::Value(docs_to_bson(d))),
                            Err(e) => Err(e),
                        }
                    }
                    None => match coll.list_indexes().with_options(o).await {
                        Ok(c) => c
                            .with_type::<Document>()
                            .try_collect::<Vec<_>>()
                            .await
                            .map(|d| Output::Value(docs_to_bson(d))),
                        Err(e) => Err(e),
                    },
                }
            }
        }
        "drop" => {
            a.done()?;
            unit(with_session!(ents, sid, coll.drop()))
        }
        "rename" => {
            let to = a.req_string("to")?;
            let drop_target = a.bool("dropTarget");
            a.done()?;
            let ns = coll.namespace();
            let mut cmd = doc! {
                "renameCollection": format!("{}.{}", ns.db, ns.coll),
                "to": format!("{}.{}", ns.db, to),
            };
            if let Some(d) = drop_target {
                cmd.insert("dropTarget", d);
            }
            let admin = coll.client().database("admin");
            unit(with_session!(ents, sid, admin.run_command(cmd)))
        }
        "createChangeStream" => {
            let pipeline = a.docs("pipeline")?.unwrap_or_default();
            let o = change_stream_options(&mut a)?;
            let comment = a.get("comment");
            a.done()?;
            if sid.is_some() {
                skip!("change streams with an explicit session are not supported by this runner");
            }
            if let Some(c) = comment {
                let db = coll.client().database(coll.namespace().db.as_str());
                return Ok(change_stream_with_comment(db, coll.name().into(), false, pipeline, o, c).await);
            }
            coll.watch()
                .pipeline(pipeline)
                .with_options(o)
                .await
                .map(|cs| Output::ChangeStream(Box::new(cs.with_type::<Document>())))
        }
        "createSearchIndex" | "createSearchIndexes" => {
            let models: Vec<Document> = if name == "createSearchIndex" {
                vec![a.req_doc("model")?]
            } else {
                a.docs("models")?.unwrap_or_default()
            };
            a.done()?;
            let models = models.into_iter().map(search_index_model).collect::<Result<Vec<_>>>()?;
            if name == "createSearchIndex" {
                let m = models.into_iter().next().ok_or_else(|| anyhow!("no model"))?;
                value(coll.create_search_index(m).await, Bson::String)
            } else {
                value(coll.create_search_indexes(models).await, |n| {
                    Bson::Array(n.into_iter().map(Bson::String).collect())
                })
            }
        }
        "dropSearchIndex" => {
            let idx = a.req_string("name")?;
            a.done()?;
            unit(coll.drop_search_index(idx).await)
        }
        "updateSearchIndex" => {
            let idx = a.req_string("name")?;
            let definition = a.req_doc("definition")?;
            a.done()?;
            unit(coll.update_search_index(idx, definition).await)
        }
        "listSearchIndexes" => {
            let idx = a.string("name")?;
            let agg = a.doc("aggregationOptions")?;
            a.done()?;
            let mut action = coll.list_search_indexes();
            if let Some(n) = idx {
                action = action.name(n);
            }
            if let Some(agg) = agg {
                let mut sub = Args::new("aggregationOptions", agg);
                let o = aggregate_options(&mut sub)?;
                sub.done()?;
                action = action.aggregate_options(o);
            }
            match action.await {
                Ok(c) => c.try_collect::<Vec<_>>().await.map(|d| Output::Value(docs_to_bson(d))),
                Err(e) => Err(e),
            }
        }
        other => skip!("collection operation {other} is not supported"),
    })
}

fn search_index_model(d: Document) -> Result<SearchIndexModel> {
    let mut a = Args::new("search index model", d);
    let definition = a.req_doc("definition")?;
    let name = a.string("name")?;
    let kind = a.string("type")?;
    a.done()?;
    let mut m = SearchIndexModel::builder().definition(definition).build();
    m.name = name;
    m.index_type = match kind.as_deref() {
        None => None,
        Some("search") => Some(mongodb::SearchIndexType::Search),
        Some("vectorSearch") => Some(mongodb::SearchIndexType::VectorSearch),
        Some(other) => skip!("search index type {other} is not supported"),
    };
    Ok(m)
}

fn find_options(a: &mut Args) -> Result<FindOptions> {
    let mut o = FindOptions::default();
    o.allow_disk_use = a.bool("allowDiskUse");
    o.allow_partial_results = a.bool("allowPartialResults");
    o.batch_size = a.u32("batchSize")?;
    o.comment = a.get("comment");
    o.hint = a.hint()?;
    o.limit = a.int("limit")?;
    o.max = a.doc("max")?;
    o.min = a.doc("min")?;
    o.max_time = a.millis("maxTimeMS")?;
    o.no_cursor_timeout = a.bool("noCursorTimeout");
    o.projection = a.doc("projection")?;
    o.return_key = a.bool("returnKey");
    o.show_record_id = a.bool("showRecordId");
    o.skip = a.u64("skip")?;
    o.sort = a.doc("sort")?;
    o.collation = a.collation()?;
    o.let_vars = a.doc("let")?;
    if let Some(rp) = a.get("readPreference") {
        o.selection_criteria = Some(read_preference(&rp)?);
    }
    Ok(o)
}

fn aggregate_options(a: &mut Args) -> Result<AggregateOptions> {
    let mut o = AggregateOptions::default();
    o.allow_disk_use = a.bool("allowDiskUse");
    o.batch_size = a.u32("batchSize")?;
    o.bypass_document_validation = a.bool("bypassDocumentValidation");
    o.collation = a.collation()?;
    o.comment = a.get("comment");
    o.hint = a.hint()?;
    o.max_time = a.millis("maxTimeMS")?;
    o.max_await_time = a.millis("maxAwaitTimeMS")?;
    o.let_vars = a.doc("let")?;
    Ok(o)
}

fn change_stream_options(a: &mut Args) -> Result<ChangeStreamOptions> {
    let mut o = ChangeStreamOptions::default();
    o.full_document = match a.string("fullDocument")?.as_deref() {
        None => None,
        Some("default") => Some(FullDocumentType::Other("default".into())),
        Some("updateLookup") => Some(FullDocumentType::UpdateLookup),
        Some("whenAvailable") => Some(FullDocumentType::WhenAvailable),
        Some("required") => Some(FullDocumentType::Required),
        Some(other) => Some(FullDocumentType::Other(other.to_string())),
    };
    o.full_document_before_change = match a.string("fullDocumentBeforeChange")?.as_deref() {
        None => None,
        Some("off") => Some(FullDocumentBeforeChangeType::Off),
        Some("whenAvailable") => Some(FullDocumentBeforeChangeType::WhenAvailable),
        Some("required") => Some(FullDocumentBeforeChangeType::Required),
        Some(other) => Some(FullDocumentBeforeChangeType::Other(other.to_string())),
    };
    if let Some(t) = a.get("resumeAfter") {
        o.resume_after = Some(bson::from_bson(t)?);
    }
    if let Some(t) = a.get("startAfter") {
        o.start_after = Some(bson::from_bson(t)?);
    }
    if let Some(Bson::Timestamp(ts)) = a.get("startAtOperationTime") {
        o.start_at_operation_time = Some(ts);
    }
    o.batch_size = a.u32("batchSize")?;
    o.max_await_time = a.millis("maxAwaitTimeMS")?;
    o.collation = a.collation()?;
    o.show_expanded_events = a.bool("showExpandedEvents");
    Ok(o)
}

/// Opens a change stream whose arguments carry a `comment`. The driver's
/// `watch` would also put the comment inside `$changeStream` (servers reject
/// that with 40415), so the stream is opened as the `aggregate` command a
/// driver sends, with the comment at the top level and on every `getMore`,
/// and iterated as a tailable cursor. Such a stream does not resume after
/// errors; the tests that use a comment do not need it to.
async fn change_stream_with_comment(
    db: mongodb::Database,
    target: Bson,
    cluster: bool,
    pipeline: Vec<Document>,
    o: ChangeStreamOptions,
    comment: Bson,
) -> OpResult {
    let stage = match bson::to_document(&o) {
        Ok(d) => d,
        Err(e) => {
            return Err(mongodb::error::Error::custom(emulated::OpFailure {
                client_error: true,
                message: format!("change stream options: {e}"),
                ..emulated::OpFailure::default()
            }));
        }
    };
    let mut stage: Document = stage.into_iter().filter(|(k, v)| k != "comment" && *v != Bson::Null).collect();
    if cluster {
        stage.insert("allChangesForCluster", true);
    }
    let mut stages = vec![Bson::Document(doc! {"$changeStream": stage})];
    stages.extend(pipeline.into_iter().map(Bson::Document));
    let mut cursor = Document::new();
    if let Some(n) = o.batch_size {
        cursor.insert("batchSize", i64::from(n));
    }
    let mut cmd = doc! {"aggregate": target, "pipeline": stages, "cursor": cursor, "comment": comment.clone()};
    if let Some(c) = &o.collation {
        cmd.insert("collation", bson::to_bson(c).unwrap_or(Bson::Null));
    }
    let mut ro = RunCursorCommandOptions::default();
    ro.cursor_type = Some(mongodb::options::CursorType::TailableAwait);
    ro.comment = Some(comment);
    ro.max_time = o.max_await_time;
    ro.batch_size = o.batch_size;
    db.run_cursor_command(cmd).with_options(ro).await.map(|c| Output::Cursor(Box::new(CursorEntity::Plain(c))))
}

pub async fn database_op(ents: &mut Entities, db_id: &str, name: &str, mut a: Args) -> Result<OpResult> {
    let db = ents.database(db_id)?;
    reject(&mut a, &["timeoutMS"])?;
    raw_data(ents, &mut a)?;
    let sid = a.string("session")?;
    Ok(match name {
        "runCommand" => {
            let command = a.req_doc("command")?;
            let _ = a.string("commandName")?;
            let rp = a.get("readPreference");
            a.done()?;
            let mut action = db.run_command(command);
            if let Some(rp) = rp {
                action = action.selection_criteria(read_preference(&rp)?);
            }
            value(with_session!(ents, sid, action), Bson::Document)
        }
        "runCursorCommand" | "createCommandCursor" => {
            let command = a.req_doc("command")?;
            let _ = a.string("commandName")?;
            let mut o = RunCursorCommandOptions::default();
            o.batch_size = a.u32("batchSize")?;
            o.max_time = a.millis("maxTimeMS")?;
            o.comment = a.get("comment");
            o.cursor_type = match a.string("cursorType")?.as_deref() {
                None => None,
                Some("tailable") => Some(mongodb::options::CursorType::Tailable),
                Some("tailableAwait") => Some(mongodb::options::CursorType::TailableAwait),
                Some("nonTailable") => Some(mongodb::options::CursorType::NonTailable),
                Some(other) => skip!("cursorType {other} is not supported"),
            };
            if let Some(rp) = a.get("readPreference") {
                o.selection_criteria = Some(read_preference(&rp)?);
            }
            a.done()?;
            if name == "createCommandCursor" {
                match &sid {
                    Some(id) => {
                        let id = id.clone();
                        let s = &mut ents.session_mut(&id)?.session;
                        db.run_cursor_command(command)
                            .with_options(o)
                            .session(s)
                            .await
                            .map(|c| Output::Cursor(Box::new(CursorEntity::WithSession(c, id))))
                    }
                    None => db
                        .run_cursor_command(command)
                        .with_options(o)
                        .await
                        .map(|c| Output::Cursor(Box::new(CursorEntity::Plain(c)))),
                }
            } else {
                collect_cursor!(ents, sid, db.run_cursor_command(command).with_options(o))
            }
        }
        "createCollection" => {
            let coll = a.req_string("collection")?;
            let mut o = CreateCollectionOptions::default();
            o.capped = a.bool("capped");
            o.size = a.u64("size")?;
            o.max = a.u64("max")?;
            o.validator = a.doc("validator")?;
            o.view_on = a.string("viewOn")?;
            o.pipeline = a.docs("pipeline")?;
            o.collation = a.collation()?;
            o.comment = a.get("comment");
            o.expire_after_seconds = a.u64("expireAfterSeconds")?.map(Duration::from_secs);
            if let Some(t) = a.get("timeseries") {
                o.timeseries = Some(bson::from_bson(t).context("bad timeseries")?);
            }
            if let Some(c) = a.get("clusteredIndex") {
                o.clustered_index = Some(bson::from_bson(c).context("bad clusteredIndex")?);
            }
            if let Some(c) = a.get("changeStreamPreAndPostImages") {
                o.change_stream_pre_and_post_images =
                    Some(bson::from_bson(c).context("bad changeStreamPreAndPostImages")?);
            }
            a.done()?;
            let client_id = ents.client_of(db_id).unwrap_or_default();
            with_session!(ents, sid, db.create_collection(&coll).with_options(o))
                .map(|()| Output::Collection(db.collection(&coll), client_id))
        }
        "dropCollection" => {
            let coll = a.req_string("collection")?;
            a.done()?;
            let c = db.collection::<Document>(&coll);
            unit(with_session!(ents, sid, c.drop()))
        }
        "listCollections" | "listCollectionNames" => {
            let mut o = ListCollectionsOptions::default();
            o.filter = a.doc("filter")?;
            o.batch_size = a.u32("batchSize")?;
            a.done()?;
            if name == "listCollectionNames" {
                let r = with_session!(ents, sid, db.list_collection_names().with_options(o));
                value(r, |n| Bson::Array(n.into_iter().map(Bson::String).collect()))
            } else {
                match &sid {
                    Some(id) => {
                        let s = &mut ents.session_mut(id)?.session;
                        match db.list_collections().with_options(o).session(&mut *s).await {
                            Ok(c) => c
                                .with_type::<Document>()
                                .stream(s)
                                .try_collect::<Vec<_>>()
                                .await
                                .map(|d| Output::Value(docs_to_bson(d))),
                            Err(e) => Err(e),
                        }
                    }
                    None => match db.list_collections().with_options(o).await {
                        Ok(c) => c
                            .with_type::<Document>()
                            .try_collect::<Vec<_>>()
                            .await
                            .map(|d| Output::Value(docs_to_bson(d))),
                        Err(e) => Err(e),
                    },
                }
            }
        }
        "aggregate" => {
            let pipeline = a.docs("pipeline")?.unwrap_or_default();
            let o = aggregate_options(&mut a)?;
            a.done()?;
            collect_cursor!(ents, sid, db.aggregate(pipeline).with_options(o))
        }
        "createChangeStream" => {
            let pipeline = a.docs("pipeline")?.unwrap_or_default();
            let o = change_stream_options(&mut a)?;
            let comment = a.get("comment");
            a.done()?;
            if sid.is_some() {
                skip!("change streams with an explicit session are not supported by this runner");
            }
            if let Some(c) = comment {
                return Ok(change_stream_with_comment(db, Bson::Int32(1), false, pipeline, o, c).await);
            }
            db.watch()
                .pipeline(pipeline)
                .with_options(o)
                .await
                .map(|cs| Output::ChangeStream(Box::new(cs.with_type::<Document>())))
        }
        "modifyCollection" => {
            let coll = a.req_string("collection")?;
            let mut cmd = doc! {"collMod": coll};
            for key in [
                "index",
                "validator",
                "validationLevel",
                "validationAction",
                "changeStreamPreAndPostImages",
                "expireAfterSeconds",
                "viewOn",
                "pipeline",
                "timeseries",
            ] {
                if let Some(v) = a.get(key) {
                    cmd.insert(key, v);
                }
            }
            a.done()?;
            value(with_session!(ents, sid, db.run_command(cmd)), Bson::Document)
        }
        "drop" => {
            a.done()?;
            unit(with_session!(ents, sid, db.drop()))
        }
        other => skip!("database operation {other} is not supported"),
    })
}

pub async fn client_op(ents: &mut Entities, client_id: &str, name: &str, mut a: Args) -> Result<OpResult> {
    let client = ents.client(client_id)?.client.clone();
    reject(&mut a, &["timeoutMS"])?;
    raw_data(ents, &mut a)?;
    let sid = a.string("session")?;
    Ok(match name {
        "listDatabases" | "listDatabaseNames" => {
            let filter = a.doc("filter")?;
            a.done()?;
            if name == "listDatabaseNames" {
                let mut action = client.list_database_names();
                if let Some(f) = filter {
                    action = action.filter(f);
                }
                let r = with_session!(ents, sid, action);
                value(r, |n| Bson::Array(n.into_iter().map(Bson::String).collect()))
            } else {
                let mut action = client.list_databases();
                if let Some(f) = filter {
                    action = action.filter(f);
                }
                let r = with_session!(ents, sid, action);
                match r {
                    Ok(specs) => {
                        let mut out = Vec::new();
                        for s in specs {
                            out.push(bson::to_bson(&s)?);
                        }
                        Ok(Output::Value(Bson::Array(out)))
                    }
                    Err(e) => Err(e),
                }
            }
        }
        "createChangeStream" => {
            let pipeline = a.docs("pipeline")?.unwrap_or_default();
            let o = change_stream_options(&mut a)?;
            let comment = a.get("comment");
            a.done()?;
            if sid.is_some() {
                skip!("change streams with an explicit session are not supported by this runner");
            }
            if let Some(c) = comment {
                let admin = client.database("admin");
                return Ok(change_stream_with_comment(admin, Bson::Int32(1), true, pipeline, o, c).await);
            }
            client
                .watch()
                .pipeline(pipeline)
                .with_options(o)
                .await
                .map(|cs| Output::ChangeStream(Box::new(cs.with_type::<Document>())))
        }
        "clientBulkWrite" => skip!("clientBulkWrite is not supported by this runner"),
        other => skip!("client operation {other} is not supported"),
    })
}

pub async fn session_op(ents: &mut Entities, session_id: &str, name: &str, mut a: Args) -> Result<OpResult> {
    Ok(match name {
        "startTransaction" => {
            let opts = transaction_options(&a.doc.clone())?;
            a.used.extend(a.doc.keys().cloned());
            a.done()?;
            let s = ents.session_mut(session_id)?;
            let r = s.session.start_transaction().with_options(opts).await;
            s.in_transaction = r.is_ok();
            unit(r)
        }
        "commitTransaction" => {
            a.done()?;
            let s = ents.session_mut(session_id)?;
            s.in_transaction = false;
            unit(s.session.commit_transaction().await)
        }
        "abortTransaction" => {
            a.done()?;
            let s = ents.session_mut(session_id)?;
            s.in_transaction = false;
            unit(s.session.abort_transaction().await)
        }
        "endSession" => {
            a.done()?;
            // dropping the session returns it to the pool, as endSession does
            ents.map.remove(session_id);
            Ok(Output::None)
        }
        "getSnapshotTime" => {
            a.done()?;
            let s = &mut ents.session_mut(session_id)?.session;
            match s.snapshot_time() {
                Some(ts) => Ok(Output::Value(Bson::Timestamp(ts))),
                None => Ok(Output::Value(Bson::Null)),
            }
        }
        other => skip!("session operation {other} is not supported"),
    })
}

/// `iterateUntilDocumentOrError`, `iterateOnce` and `close` on a saved change
/// stream or cursor.
pub async fn iterate_op(ents: &mut Entities, id: &str, name: &str, a: Args) -> Result<OpResult> {
    a.done()?;
    if name == "close" {
        ents.map.remove(id);
        return Ok(Ok(Output::None));
    }
    let once = match name {
        "iterateUntilDocumentOrError" => false,
        "iterateOnce" => true,
        other => skip!("cursor operation {other} is not supported"),
    };
    let entity = ents.map.remove(id).ok_or_else(|| anyhow!("no cursor or change stream {id:?}"))?;
    let (entity, result) = match entity {
        Entity::ChangeStream(mut cs) => {
            let r = if once {
                cs.next_if_any().await.map(|d| d.map(Bson::Document))
            } else {
                match tokio::time::timeout(ITERATE_TIMEOUT, async {
                    loop {
                        match cs.next_if_any().await {
                            Ok(Some(d)) => return Ok(Some(Bson::Document(d))),
                            Ok(None) if !cs.is_alive() => return Ok(None),
                            Ok(None) => {}
                            Err(e) => return Err(e),
                        }
                    }
                })
                .await
                {
                    Ok(r) => r,
                    Err(_) => {
                        return Err(anyhow!("change stream {id} returned no event within {ITERATE_TIMEOUT:?}"));
                    }
                }
            };
            (Entity::ChangeStream(cs), r)
        }
        Entity::Cursor(mut c) => {
            let r = match c.as_mut() {
                CursorEntity::Plain(cursor) => {
                    let fut = cursor.advance();
                    let limit = if once { TRY_NEXT_WAIT } else { ITERATE_TIMEOUT };
                    match tokio::time::timeout(limit, fut).await {
                        Ok(Ok(true)) => cursor.deserialize_current().map(|d| Some(Bson::Document(d))),
                        Ok(Ok(false)) => Ok(None),
                        Ok(Err(e)) => Err(e),
                        Err(_) if once => skip!(
                            "the rust driver's cursor has no tryNext: iterateOnce blocks on an empty tailable batch"
                        ),
                        Err(_) => return Err(anyhow!("cursor {id} returned nothing in time")),
                    }
                }
                CursorEntity::WithSession(cursor, sid) => {
                    let sid = sid.clone();
                    let s = &mut ents.session_mut(&sid)?.session;
                    match tokio::time::timeout(ITERATE_TIMEOUT, cursor.advance(s)).await {
                        Ok(Ok(true)) => cursor.deserialize_current().map(|d| Some(Bson::Document(d))),
                        Ok(Ok(false)) => Ok(None),
                        Ok(Err(e)) => Err(e),
                        Err(_) => return Err(anyhow!("cursor {id} returned nothing in time")),
                    }
                }
            };
            (Entity::Cursor(c), r)
        }
        other => {
            ents.map.insert(id.to_string(), other);
            return Err(anyhow!("{id} is not a cursor or change stream"));
        }
    };
    ents.map.insert(id.to_string(), entity);
    Ok(match result {
        Ok(Some(v)) => Ok(Output::Value(v)),
        Ok(None) if once => Ok(Output::None),
        Ok(None) => return Err(anyhow!("{id} was exhausted before returning a document")),
        Err(e) => Err(e),
    })
}
