//! Operations the Rust driver has no API for, sent as the commands other
//! drivers send for them: collection-level `bulkWrite`, the deprecated
//! `count`, and writes with an unacknowledged (`w: 0`) write concern, which
//! the Rust driver refuses client-side.
//!
//! The server sees exactly what a driver with those helpers would send
//! (`insert`, `update`, `delete`, `findAndModify`, `count` through the
//! driver's `runCommand`, with the session, `lsid` and transaction fields the
//! driver attaches), and the runner builds the driver's result from the
//! reply the way the CRUD specification describes it. What is being checked
//! is the server's answer, not a driver's helper.
//!
//! Errors that do not come from the driver itself (client-side validation,
//! write errors inside an `ok: 1` reply) are reported as an [`OpFailure`]
//! wrapped in `mongodb::error::Error::custom`, so `expectError` can check
//! them like any other error.

use anyhow::{Result, anyhow};
use bson::oid::ObjectId;
use bson::{Bson, Document, doc};
use mongodb::Collection;
use mongodb::error::{Error, ErrorKind};

use crate::entities::Entities;
use crate::ops::{Args, OpResult, Output, as_i64};
use crate::skip;

/// The most operations one write command carries (the server's
/// `maxWriteBatchSize`); larger bulk writes are split as drivers split them.
const MAX_WRITE_BATCH: usize = 100_000;

/// An operation error in one shape, whether the driver raised it or the
/// runner built it from a reply.
#[derive(Debug, Clone, Default)]
pub struct OpFailure {
    /// The driver rejected the operation before sending it.
    pub client_error: bool,
    /// The server's error code and code name.
    pub server: Option<(i32, String)>,
    pub message: String,
    pub labels: Vec<String>,
    /// The server reply the error came from.
    pub response: Option<Document>,
    /// The partial result a driver reports with a bulk write error.
    pub partial_result: Option<Bson>,
}

impl OpFailure {
    /// The view of any error the operations return.
    pub fn of(e: &Error) -> OpFailure {
        if let Some(f) = e.get_custom::<OpFailure>() {
            return f.clone();
        }
        if let Some(p) = e.get_custom::<WithPartialResult>() {
            let mut f = OpFailure::of(&p.error);
            f.partial_result = Some(p.result.clone());
            return f;
        }
        let server = crate::runner::server_error(e);
        let response = e.server_response().and_then(|raw| Document::try_from(raw.as_ref()).ok());
        OpFailure {
            client_error: server.is_none() && response.is_none(),
            server,
            message: crate::runner::error_message(e),
            labels: e.labels().iter().cloned().collect(),
            response,
            partial_result: None,
        }
    }

    pub fn contains_label(&self, label: &str) -> bool {
        self.labels.iter().any(|l| l == label)
    }

    fn client(message: impl Into<String>) -> Error {
        Error::custom(OpFailure { client_error: true, message: message.into(), ..OpFailure::default() })
    }
}

impl std::fmt::Display for OpFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.server {
            Some((code, name)) => write!(f, "server error {code} ({name}): {}", self.message),
            None => write!(f, "client error: {}", self.message),
        }
    }
}

/// A driver error together with the partial result of the operation.
#[derive(Debug)]
pub struct WithPartialResult {
    pub error: Error,
    pub result: Bson,
}

/// Whether writes through this collection are unacknowledged (`w: 0`).
pub fn unacknowledged(coll: &Collection<Document>) -> bool {
    coll.write_concern()
        .is_some_and(|wc| wc.w == Some(mongodb::options::Acknowledgment::Nodes(0)) && wc.journal != Some(true))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Insert,
    Update,
    Delete,
}

impl Kind {
    fn command(self) -> (&'static str, &'static str) {
        match self {
            Kind::Insert => ("insert", "documents"),
            Kind::Update => ("update", "updates"),
            Kind::Delete => ("delete", "deletes"),
        }
    }
}

/// One write of a bulk, in its wire form.
struct Request {
    kind: Kind,
    /// Its index in the caller's list.
    index: usize,
    body: Document,
}

/// Options that apply to every command of one bulk write.
#[derive(Default)]
struct BulkOptions {
    ordered: bool,
    bypass_document_validation: Option<bool>,
    comment: Option<Bson>,
    let_vars: Option<Document>,
    raw_data: bool,
}

/// Is the first key an update operator? Drivers check only the first key.
fn first_key_is_operator(d: &Document) -> bool {
    d.keys().next().is_some_and(|k| k.starts_with('$'))
}

fn update_body(b: &Bson) -> Result<std::result::Result<Bson, Error>> {
    Ok(match b {
        Bson::Document(d) if d.is_empty() || !first_key_is_operator(d) => {
            Err(OpFailure::client("update document must contain only atomic modifiers"))
        }
        Bson::Document(_) | Bson::Array(_) => Ok(b.clone()),
        other => return Err(anyhow!("invalid update {other}")),
    })
}

/// Turns one spec request (`{"updateOne": {...}}`) into its wire form, or a
/// client-side error where a driver would refuse it.
fn parse_request(index: usize, model: &Document) -> Result<std::result::Result<Request, Error>> {
    let (name, args) = model.iter().next().ok_or_else(|| anyhow!("empty bulk write request"))?;
    let args = args.as_document().ok_or_else(|| anyhow!("request {name} is not a document"))?.clone();
    let mut a = Args::new(name, args);
    let (kind, body) = match name.as_str() {
        "insertOne" => {
            let mut document = a.req_doc("document")?;
            if !document.contains_key("_id") {
                // drivers generate the _id client-side and put it first
                let mut with_id = doc! {"_id": ObjectId::new()};
                with_id.extend(document);
                document = with_id;
            }
            (Kind::Insert, document)
        }
        "updateOne" | "updateMany" | "replaceOne" => {
            let q = a.req_doc("filter")?;
            let u = if name == "replaceOne" {
                let r = a.req_doc("replacement")?;
                if first_key_is_operator(&r) {
                    return Ok(Err(OpFailure::client("replacement document must not contain update operators")));
                }
                Bson::Document(r)
            } else {
                match update_body(&a.req("update")?)? {
                    Ok(u) => u,
                    Err(e) => return Ok(Err(e)),
                }
            };
            let mut body = doc! {"q": q, "u": u};
            if name == "updateMany" {
                body.insert("multi", true);
            }
            for key in ["upsert", "arrayFilters", "collation", "hint", "sort"] {
                if key == "arrayFilters" && name == "replaceOne" || key == "sort" && name == "updateMany" {
                    continue;
                }
                if let Some(v) = a.get(key) {
                    body.insert(key, v);
                }
            }
            (Kind::Update, body)
        }
        "deleteOne" | "deleteMany" => {
            let mut body = doc! {"q": a.req_doc("filter")?, "limit": i32::from(name == "deleteOne")};
            for key in ["collation", "hint"] {
                if let Some(v) = a.get(key) {
                    body.insert(key, v);
                }
            }
            (Kind::Delete, body)
        }
        other => skip!("bulk write request {other} is not supported"),
    };
    a.done()?;
    Ok(Ok(Request { kind, index, body }))
}

/// Splits the requests into commands: runs of one kind when ordered; one
/// group per kind (inserts, updates, deletes) when unordered, as drivers do.
fn batches(requests: Vec<Request>, ordered: bool) -> Vec<Vec<Request>> {
    let mut out: Vec<Vec<Request>> = Vec::new();
    if ordered {
        for r in requests {
            match out.last_mut() {
                Some(last) if last[0].kind == r.kind && last.len() < MAX_WRITE_BATCH => last.push(r),
                _ => out.push(vec![r]),
            }
        }
    } else {
        for kind in [Kind::Insert, Kind::Update, Kind::Delete] {
            let mut group: Vec<Request> = Vec::new();
            for r in requests.iter().filter(|r| r.kind == kind) {
                if group.len() == MAX_WRITE_BATCH {
                    out.push(std::mem::take(&mut group));
                }
                group.push(Request { kind: r.kind, index: r.index, body: r.body.clone() });
            }
            if !group.is_empty() {
                out.push(group);
            }
        }
    }
    out
}

/// Runs a command through the driver, in the test's session if it names one.
async fn run(
    ents: &mut Entities,
    coll: &Collection<Document>,
    sid: &Option<String>,
    cmd: Document,
) -> Result<mongodb::error::Result<Document>> {
    let db = coll.client().database(coll.namespace().db.as_str());
    Ok(match sid {
        Some(id) => {
            let s = &mut ents.session_mut(id)?.session;
            db.run_command(cmd).session(s).await
        }
        None => db.run_command(cmd).await,
    })
}

pub fn in_transaction(ents: &Entities, sid: &Option<String>) -> bool {
    sid.as_ref().and_then(|id| ents.session(id).ok()).is_some_and(|s| s.in_transaction)
}

/// The collection's write concern as a command field, unless a transaction
/// owns it.
fn write_concern(ents: &Entities, coll: &Collection<Document>, sid: &Option<String>) -> Result<Option<Document>> {
    if in_transaction(ents, sid) {
        return Ok(None);
    }
    coll.write_concern().map(|wc| bson::to_document(wc).map_err(|e| anyhow!("write concern: {e}"))).transpose()
}

/// The counts of a bulk write so far, as the CRUD spec's BulkWriteResult.
#[derive(Default)]
struct Tally {
    inserted: i64,
    matched: i64,
    modified: i64,
    deleted: i64,
    upserted: Document,
    inserted_ids: Document,
}

impl Tally {
    fn result(&self) -> Bson {
        Bson::Document(doc! {
            "insertedCount": self.inserted,
            "matchedCount": self.matched,
            "modifiedCount": self.modified,
            "deletedCount": self.deleted,
            "upsertedCount": i64::try_from(self.upserted.len()).unwrap_or(i64::MAX),
            "upsertedIds": self.upserted.clone(),
            "insertedIds": self.inserted_ids.clone(),
        })
    }
}

fn count(reply: &Document, key: &str) -> i64 {
    reply.get(key).and_then(as_i64).unwrap_or(0)
}

/// Reads one command's reply into the tally; returns the write errors with
/// their indexes mapped back to the caller's list.
fn absorb(tally: &mut Tally, batch: &[Request], reply: &Document, ordered: bool) -> Vec<Document> {
    let mut errors = Vec::new();
    if let Ok(list) = reply.get_array("writeErrors") {
        for e in list.iter().filter_map(Bson::as_document) {
            let mut e = e.clone();
            if let Some(r) =
                e.get("index").and_then(as_i64).and_then(|i| usize::try_from(i).ok()).and_then(|i| batch.get(i))
            {
                e.insert("index", i64::try_from(r.index).unwrap_or(i64::MAX));
            }
            errors.push(e);
        }
    }
    let failed: Vec<i64> = errors.iter().filter_map(|e| e.get("index").and_then(as_i64)).collect();
    let n = count(reply, "n");
    match batch[0].kind {
        Kind::Insert => {
            tally.inserted += n;
            // an ordered batch stops at its first error: later documents
            // were not written either
            let stop = failed.iter().min().copied();
            for r in batch {
                let i = i64::try_from(r.index).unwrap_or(i64::MAX);
                if failed.contains(&i) || ordered && stop.is_some_and(|s| i > s) {
                    continue;
                }
                if let Some(id) = r.body.get("_id") {
                    tally.inserted_ids.insert(r.index.to_string(), id.clone());
                }
            }
        }
        Kind::Update => {
            let mut upserts = 0;
            if let Ok(list) = reply.get_array("upserted") {
                for u in list.iter().filter_map(Bson::as_document) {
                    let idx = u.get("index").and_then(as_i64).and_then(|i| usize::try_from(i).ok());
                    if let (Some(r), Some(id)) = (idx.and_then(|i| batch.get(i)), u.get("_id")) {
                        tally.upserted.insert(r.index.to_string(), id.clone());
                        upserts += 1;
                    }
                }
            }
            tally.matched += n - upserts;
            tally.modified += count(reply, "nModified");
        }
        Kind::Delete => tally.deleted += n,
    }
    errors
}

/// Sends the batches and builds the result. `Ok(None)` for unacknowledged
/// writes, whose replies say nothing.
async fn execute(
    ents: &mut Entities,
    coll: &Collection<Document>,
    sid: &Option<String>,
    requests: Vec<Request>,
    o: &BulkOptions,
) -> Result<mongodb::error::Result<Option<Bson>>> {
    let wc = write_concern(ents, coll, sid)?;
    let acknowledged = !unacknowledged(coll) || in_transaction(ents, sid);
    let mut tally = Tally::default();
    let mut write_errors: Vec<Document> = Vec::new();
    let mut wc_error: Option<Document> = None;
    for batch in batches(requests, o.ordered) {
        let (name, field) = batch[0].kind.command();
        let mut cmd = doc! {
            name: coll.name(),
            field: batch.iter().map(|r| Bson::Document(r.body.clone())).collect::<Vec<_>>(),
            "ordered": o.ordered,
        };
        if let (true, Some(b)) = (batch[0].kind != Kind::Delete, o.bypass_document_validation) {
            cmd.insert("bypassDocumentValidation", b);
        }
        if let (true, Some(l)) = (batch[0].kind != Kind::Insert, &o.let_vars) {
            cmd.insert("let", l.clone());
        }
        if let Some(c) = &o.comment {
            cmd.insert("comment", c.clone());
        }
        if let Some(wc) = &wc {
            cmd.insert("writeConcern", wc.clone());
        }
        if o.raw_data {
            cmd.insert("rawData", true);
        }
        let reply = match run(ents, coll, sid, cmd).await? {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        if !acknowledged {
            continue;
        }
        let errors = absorb(&mut tally, &batch, &reply, o.ordered);
        let stop = o.ordered && !errors.is_empty();
        write_errors.extend(errors);
        if let Ok(wce) = reply.get_document("writeConcernError") {
            wc_error = Some(wce.clone());
        }
        if stop {
            break;
        }
    }
    if !acknowledged {
        return Ok(Ok(None));
    }
    let result = tally.result();
    if write_errors.is_empty() && wc_error.is_none() {
        return Ok(Ok(Some(result)));
    }
    let first = write_errors.first().or(wc_error.as_ref()).cloned().unwrap_or_default();
    let code = first.get("code").and_then(as_i64).and_then(|c| i32::try_from(c).ok()).unwrap_or(0);
    let labels = wc_error
        .as_ref()
        .and_then(|w| w.get_array("errorLabels").ok())
        .map(|l| l.iter().filter_map(Bson::as_str).map(str::to_string).collect())
        .unwrap_or_default();
    let mut response = doc! {"ok": 1};
    if !write_errors.is_empty() {
        response.insert("writeErrors", write_errors.into_iter().map(Bson::Document).collect::<Vec<_>>());
    }
    if let Some(w) = wc_error {
        response.insert("writeConcernError", w);
    }
    Ok(Err(Error::custom(OpFailure {
        client_error: false,
        server: Some((code, first.get_str("codeName").unwrap_or_default().to_string())),
        message: first.get_str("errmsg").unwrap_or_default().to_string(),
        labels,
        response: Some(response),
        partial_result: Some(result),
    })))
}

/// Whether the server takes `rawData` (8.2 and later); older servers never
/// see it, as the CRUD spec tells drivers.
pub fn raw_data_supported(ents: &Entities) -> bool {
    crate::spec::compare_versions(&ents.server_version, &[8, 2]) != std::cmp::Ordering::Less
}

fn unacknowledged_result() -> OpResult {
    Ok(Output::Value(Bson::Document(doc! {"acknowledged": false})))
}

/// Collection-level `bulkWrite`.
pub async fn bulk_write(
    ents: &mut Entities,
    coll: &Collection<Document>,
    sid: &Option<String>,
    mut a: Args,
) -> Result<OpResult> {
    let models = a.docs("requests")?.unwrap_or_default();
    let mut o = BulkOptions {
        ordered: a.bool("ordered").unwrap_or(true),
        bypass_document_validation: a.bool("bypassDocumentValidation"),
        comment: a.get("comment"),
        let_vars: a.doc("let")?,
        raw_data: a.bool("rawData").unwrap_or(false),
    };
    o.raw_data &= raw_data_supported(ents);
    a.done()?;
    if models.is_empty() {
        return Ok(Err(OpFailure::client("a bulk write needs at least one request")));
    }
    let mut requests = Vec::with_capacity(models.len());
    for (i, m) in models.iter().enumerate() {
        match parse_request(i, m)? {
            Ok(r) => requests.push(r),
            Err(e) => return Ok(Err(e)),
        }
    }
    Ok(match execute(ents, coll, sid, requests, &o).await? {
        Ok(Some(r)) => Ok(Output::Value(r)),
        Ok(None) => unacknowledged_result(),
        Err(e) => Err(e),
    })
}

/// An unacknowledged single write (`insertOne`, `updateOne`, `deleteMany`,
/// `findOneAndUpdate`, …) on a collection whose write concern is `w: 0`.
pub async fn unacknowledged_write(
    ents: &mut Entities,
    coll: &Collection<Document>,
    sid: &Option<String>,
    name: &str,
    mut a: Args,
) -> Result<OpResult> {
    if name.starts_with("findOneAnd") {
        return find_and_modify(ents, coll, sid, name, a).await;
    }
    let mut o = BulkOptions {
        ordered: true,
        bypass_document_validation: a.bool("bypassDocumentValidation"),
        comment: a.get("comment"),
        let_vars: a.doc("let")?,
        raw_data: false,
    };
    o.raw_data = a.bool("rawData").unwrap_or(false) && raw_data_supported(ents);
    let mut requests = Vec::new();
    if name == "insertMany" {
        o.ordered = a.bool("ordered").unwrap_or(true);
        for (i, d) in a.docs("documents")?.unwrap_or_default().into_iter().enumerate() {
            match parse_request(i, &doc! {"insertOne": {"document": d}})? {
                Ok(r) => requests.push(r),
                Err(e) => return Ok(Err(e)),
            }
        }
    } else {
        let keys: &[&str] = match name {
            "insertOne" => &["document"],
            "updateOne" | "updateMany" => &["filter", "update", "upsert", "arrayFilters", "collation", "hint", "sort"],
            "replaceOne" => &["filter", "replacement", "upsert", "collation", "hint", "sort"],
            "deleteOne" | "deleteMany" => &["filter", "collation", "hint"],
            other => skip!("unacknowledged {other} is not supported by this runner"),
        };
        let mut model = Document::new();
        for k in keys {
            if let Some(v) = a.get(k) {
                model.insert(*k, v);
            }
        }
        match parse_request(0, &doc! {name: model})? {
            Ok(r) => requests.push(r),
            Err(e) => return Ok(Err(e)),
        }
    }
    a.done()?;
    Ok(match execute(ents, coll, sid, requests, &o).await? {
        Ok(_) => unacknowledged_result(),
        Err(e) => Err(e),
    })
}

/// `findOneAndUpdate`/`Replace`/`Delete` sent as `findAndModify` (used for
/// unacknowledged writes, which the driver refuses).
async fn find_and_modify(
    ents: &mut Entities,
    coll: &Collection<Document>,
    sid: &Option<String>,
    name: &str,
    mut a: Args,
) -> Result<OpResult> {
    let mut cmd = doc! {"findAndModify": coll.name(), "query": a.req_doc("filter")?};
    match name {
        "findOneAndDelete" => {
            cmd.insert("remove", true);
        }
        "findOneAndReplace" => {
            let r = a.req_doc("replacement")?;
            if first_key_is_operator(&r) {
                return Ok(Err(OpFailure::client("replacement document must not contain update operators")));
            }
            cmd.insert("update", r);
        }
        _ => match update_body(&a.req("update")?)? {
            Ok(u) => {
                cmd.insert("update", u);
            }
            Err(e) => return Ok(Err(e)),
        },
    }
    if let Some(rd) = a.string("returnDocument")? {
        cmd.insert("new", rd == "After");
    }
    for (arg, field) in [
        ("projection", "fields"),
        ("sort", "sort"),
        ("upsert", "upsert"),
        ("arrayFilters", "arrayFilters"),
        ("collation", "collation"),
        ("hint", "hint"),
        ("bypassDocumentValidation", "bypassDocumentValidation"),
        ("let", "let"),
        ("comment", "comment"),
        ("maxTimeMS", "maxTimeMS"),
    ] {
        if let Some(v) = a.get(arg) {
            cmd.insert(field, v);
        }
    }
    if a.bool("rawData").unwrap_or(false) && raw_data_supported(ents) {
        cmd.insert("rawData", true);
    }
    a.done()?;
    if let Some(wc) = write_concern(ents, coll, sid)? {
        cmd.insert("writeConcern", wc);
    }
    let acknowledged = !unacknowledged(coll) || in_transaction(ents, sid);
    Ok(match run(ents, coll, sid, cmd).await? {
        Ok(_) if !acknowledged => Ok(Output::None),
        Ok(reply) => Ok(Output::Value(reply.get("value").cloned().unwrap_or(Bson::Null))),
        Err(e) => Err(e),
    })
}

/// The deprecated `count` helper, sent as the `count` command.
pub async fn count_command(
    ents: &mut Entities,
    coll: &Collection<Document>,
    sid: &Option<String>,
    mut a: Args,
) -> Result<OpResult> {
    let mut cmd = doc! {"count": coll.name(), "query": a.doc("filter")?.unwrap_or_default()};
    for key in ["skip", "limit", "hint", "collation", "comment", "maxTimeMS"] {
        if let Some(v) = a.get(key) {
            cmd.insert(key, v);
        }
    }
    if a.bool("rawData").unwrap_or(false) && raw_data_supported(ents) {
        cmd.insert("rawData", true);
    }
    a.done()?;
    if let (false, Some(rc)) = (in_transaction(ents, sid), coll.read_concern()) {
        cmd.insert("readConcern", bson::to_document(rc).map_err(|e| anyhow!("read concern: {e}"))?);
    }
    Ok(match run(ents, coll, sid, cmd).await? {
        Ok(reply) => Ok(Output::Value(Bson::Int64(count(&reply, "n")))),
        Err(e) => Err(e),
    })
}

/// The partial result of a failed `insertMany`, in BulkWriteResult form, as
/// drivers attach it to the error.
pub fn insert_many_partial(e: Error, documents: usize, ordered: bool) -> Error {
    let ErrorKind::InsertMany(im) = e.kind.as_ref() else {
        return e;
    };
    let failed: Vec<usize> = im.write_errors.iter().flatten().map(|w| w.index).collect();
    let inserted = if ordered { failed.iter().min().copied().unwrap_or(documents) } else { documents - failed.len() };
    let result = Bson::Document(doc! {
        "insertedCount": i64::try_from(inserted).unwrap_or(i64::MAX),
        "matchedCount": 0_i64,
        "modifiedCount": 0_i64,
        "deletedCount": 0_i64,
        "upsertedCount": 0_i64,
        "upsertedIds": {},
    });
    Error::custom(WithPartialResult { error: e, result })
}
