//! Cursor commands: find, aggregate (including `$changeStream`, `$collStats`, `$out`,
//! `$merge`, `$documents`, views), getMore (with awaitData for change streams and tailable
//! cursors), killCursors and explain.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::{Bson, Document, RawDocumentBuf, doc};

use super::crud::{self, CatalogSource, ScanOpts, read_all, scan};
use super::{Ctx, CursorReply, Reply, Scope, with_scope};
use crate::aggregate::{self, expr::Vars};
use crate::bson_order::as_i64;
use crate::change_stream::{ChangeStream, Scope as CsScope};
use crate::error::{Error, Result};
use crate::projection::Projection;
use crate::server::State;
use crate::storage::Doc;

/// What a cursor iterates.
pub enum CursorKind {
    /// Buffered results.
    Docs(VecDeque<Doc>),
    /// A change stream.
    Change(Box<ChangeStream>),
    /// A tailable cursor on a capped collection: last record id returned.
    Tailable {
        /// Database.
        db: String,
        /// Collection.
        coll: String,
        /// Last record id returned.
        last_rid: u64,
        /// Whether getMore waits for data.
        await_data: bool,
    },
}

/// An open cursor.
pub struct Cursor {
    /// Namespace `db.coll`.
    pub ns: String,
    /// Contents.
    pub kind: CursorKind,
    /// Session that opened it.
    pub lsid: Option<Document>,
    /// Last use (idle cursors are reaped after 10 minutes).
    pub last_used: Instant,
    /// `noCursorTimeout`: never reaped.
    pub no_timeout: bool,
}

const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

fn take_batch(q: &mut VecDeque<Doc>, n: usize) -> Vec<Doc> {
    let mut out = Vec::new();
    let mut bytes = 0;
    while out.len() < n {
        let Some(len) = q.front().map(|d| d.as_bytes().len()) else { break };
        if !out.is_empty() && bytes + len > MAX_BATCH_BYTES {
            break;
        }
        bytes += len;
        if let Some(d) = q.pop_front() {
            out.push(d);
        }
    }
    out
}

fn register(st: &mut State, ns: String, kind: CursorKind, lsid: Option<Document>) -> i64 {
    let id = st.next_cursor_id;
    st.next_cursor_id += 1;
    st.cursors.insert(id, Cursor { ns, kind, lsid, last_used: Instant::now(), no_timeout: false });
    id
}

fn batch_size(v: Option<&Bson>) -> Result<Option<usize>> {
    match v {
        None => Ok(None),
        Some(b) => {
            let n = as_i64(b).ok_or_else(|| Error::type_mismatch("batchSize must be a number"))?;
            if n < 0 {
                return Err(Error::bad_value("BatchSize value must be non-negative"));
            }
            Ok(Some(n as usize))
        }
    }
}

fn to_raw(d: &Document) -> Result<Doc> {
    Ok(Arc::new(RawDocumentBuf::from_document(d)?))
}

/// Builds the first batch reply and registers a cursor for the rest.
fn first_batch(
    st: &mut State,
    ctx: &Ctx,
    ns: String,
    mut docs: VecDeque<Doc>,
    bs: Option<usize>,
    single: bool,
) -> Reply {
    let n = match bs {
        Some(b) => b,
        None if single => usize::MAX,
        None => 101,
    };
    let batch = take_batch(&mut docs, n);
    let id =
        if docs.is_empty() || single { 0 } else { register(st, ns.clone(), CursorKind::Docs(docs), ctx.lsid.clone()) };
    Reply::Cursor(CursorReply { id, ns, first: true, batch, ..Default::default() })
}

fn projected(
    hits: Vec<crud::Hit>,
    proj: Option<&Projection>,
    vars: &Vars,
    show_record_id: bool,
    return_key: bool,
) -> Result<VecDeque<Doc>> {
    let mut out = VecDeque::with_capacity(hits.len());
    for h in hits {
        if return_key {
            out.push_back(to_raw(&Document::new())?);
            continue;
        }
        match (proj, show_record_id) {
            (None, false) => out.push_back(h.doc),
            _ => {
                let dec = match h.decoded {
                    Some(d) => d,
                    None => h.doc.to_document()?,
                };
                let mut d = match proj {
                    Some(p) => p.apply(&dec, h.pos, vars)?,
                    None => dec,
                };
                if show_record_id {
                    d.insert("$recordId", h.rid as i64);
                }
                out.push_back(to_raw(&d)?);
            }
        }
    }
    Ok(out)
}

/// `find`.
pub fn find(ctx: &mut Ctx, st: &mut State) -> Result<Reply> {
    let coll = ctx.target()?;
    let cmd = ctx.cmd.clone();
    let filter = match cmd.get("filter") {
        None | Some(Bson::Null) => Document::new(),
        Some(Bson::Document(d)) => d.clone(),
        Some(_) => {
            return Err(Error::type_mismatch(
                "BSON field 'FindCommandRequest.filter' is the wrong type, expected type 'object'",
            ));
        }
    };
    let sort = cmd.get_document("sort").ok().cloned();
    let proj_spec = cmd.get_document("projection").ok().cloned();
    let skip = cmd.get("skip").and_then(as_i64).unwrap_or(0);
    if skip < 0 {
        return Err(Error::bad_value("skip value must be non-negative"));
    }
    let limit = cmd.get("limit").and_then(as_i64).unwrap_or(0);
    if limit < 0 {
        return Err(Error::bad_value("limit value must be non-negative"));
    }
    let bs = batch_size(cmd.get("batchSize"))?;
    let single = cmd.get_bool("singleBatch").unwrap_or(false);
    let vars = Vars::from_let(cmd.get_document("let").ok())?;
    let hint = cmd.get("hint").cloned();
    let min = cmd.get_document("min").ok().cloned();
    let max = cmd.get_document("max").ok().cloned();
    let show_record_id = cmd.get_bool("showRecordId").unwrap_or(false);
    let return_key = cmd.get_bool("returnKey").unwrap_or(false);
    let tailable = cmd.get_bool("tailable").unwrap_or(false);
    let await_data = cmd.get_bool("awaitData").unwrap_or(false);
    let proj = match &proj_spec {
        Some(p) if !p.is_empty() => Some(Projection::compile(p, true)?),
        _ => None,
    };
    let db = ctx.db.clone();
    let ns = ctx.ns(&coll);
    let (docs, last_rid, capped) = with_scope(ctx, st, |sc: &mut Scope| {
        let Some(c) = sc.coll(&db, &coll) else {
            crud::check_hint(None, hint.as_ref()).ok();
            return Ok((VecDeque::new(), 0, false));
        };
        if c.view.is_some() {
            let cat = &*sc.cat;
            let mut pipeline = vec![doc! {"$match": filter.clone()}];
            if let Some(s) = &sort {
                pipeline.push(doc! {"$sort": s.clone()});
            }
            if skip > 0 {
                pipeline.push(doc! {"$skip": skip});
            }
            if limit > 0 {
                pipeline.push(doc! {"$limit": limit});
            }
            let src = CatalogSource(cat);
            let env = aggregate::Env { db: &db, source: &src, vars: vars.clone() };
            let docs = aggregate::run(read_all(cat, &db, &coll, 0)?, &pipeline, &env)?;
            let mut out = VecDeque::new();
            for d in docs {
                let d = match &proj {
                    Some(p) => p.apply(&d, None, &vars)?,
                    None => d,
                };
                out.push_back(to_raw(&d)?);
            }
            return Ok((out, 0, false));
        }
        let capped = c.capped();
        let hits = scan(
            c,
            &ScanOpts {
                filter: Some(&filter),
                sort: sort.as_ref(),
                skip: skip as usize,
                limit: limit as usize,
                vars: Some(&vars),
                hint: hint.as_ref(),
                min: min.as_ref(),
                max: max.as_ref(),
                keep_decoded: proj.is_some() || show_record_id,
            },
        )?;
        let last_rid = hits.last().map(|h| h.rid).unwrap_or(0);
        Ok((projected(hits, proj.as_ref(), &vars, show_record_id, return_key)?, last_rid, capped))
    })?;
    if tailable {
        if !capped {
            return Err(Error::bad_value(format!(
                "error processing query: {ns} tailable cursor requested on non capped collection"
            )));
        }
        let mut docs = docs;
        let batch = take_batch(&mut docs, usize::MAX);
        let id = register(
            st,
            ns.clone(),
            CursorKind::Tailable { db: ctx.db.clone(), coll, last_rid, await_data },
            ctx.lsid.clone(),
        );
        return Ok(Reply::Cursor(CursorReply { id, ns, first: true, batch, ..Default::default() }));
    }
    let single = single || (limit > 0 && bs.is_some_and(|b| b >= limit as usize));
    let reply = first_batch(st, ctx, ns, docs, bs, single);
    if cmd.get_bool("noCursorTimeout").unwrap_or(false)
        && let Reply::Cursor(c) = &reply
        && let Some(cur) = st.cursors.get_mut(&c.id)
    {
        cur.no_timeout = true;
    }
    Ok(reply)
}

/// `killCursors`.
pub fn kill_cursors(ctx: &mut Ctx, st: &mut State) -> Result<Reply> {
    let ids = ctx
        .cmd
        .get_array("cursors")
        .map_err(|_| Error::new(40414, "BSON field 'killCursors.cursors' is missing but a required field"))?;
    let (mut killed, mut not_found) = (Vec::new(), Vec::new());
    for id in ids {
        let Some(i) = as_i64(id) else { continue };
        if st.cursors.remove(&i).is_some() {
            killed.push(Bson::Int64(i));
        } else {
            not_found.push(Bson::Int64(i));
        }
    }
    Ok(Reply::Doc(
        doc! {"cursorsKilled": killed, "cursorsNotFound": not_found, "cursorsAlive": [], "cursorsUnknown": []},
    ))
}

fn coll_stats_stage(ctx: &Ctx, st: &State, coll: &str, spec: &Document) -> Result<Document> {
    let c = st.catalog.coll(&ctx.db, coll).filter(|c| c.view.is_none());
    let mut d = doc! {"ns": ctx.ns(coll), "host": ctx.shared.host_port(), "localTime": bson::DateTime::now()};
    if let Ok(ss) = spec.get_document("storageStats") {
        let scale = ss.get("scale").and_then(as_i64).unwrap_or(1).max(1);
        match c {
            Some(c) => {
                d.insert("storageStats", super::admin::storage_stats(c, scale));
            }
            None => {
                return Err(Error::new(
                    26,
                    format!(
                        "Unable to retrieve storageStats in $collStats stage :: caused by :: Collection [{}] not found.",
                        ctx.ns(coll)
                    ),
                ));
            }
        }
    }
    if spec.contains_key("count") {
        match c {
            Some(c) => {
                d.insert("count", c.count() as i64);
            }
            None => {
                return Err(Error::new(
                    26,
                    format!(
                        "Unable to retrieve count in $collStats stage :: caused by :: Collection [{}] not found.",
                        ctx.ns(coll)
                    ),
                ));
            }
        }
    }
    if spec.contains_key("latencyStats") {
        d.insert("latencyStats", doc! {"reads": {"latency": 0i64, "ops": 0i64}, "writes": {"latency": 0i64, "ops": 0i64}, "commands": {"latency": 0i64, "ops": 0i64}, "transactions": {"latency": 0i64, "ops": 0i64}});
    }
    Ok(d)
}

fn write_out(ctx: &Ctx, st: &mut State, last: &Document, docs: Vec<Document>) -> Result<()> {
    let (name, arg) = last.iter().next().ok_or_else(|| Error::bad_value("empty stage"))?;
    let (tdb, tcoll) = match arg {
        Bson::String(s) => (ctx.db.clone(), s.clone()),
        Bson::Document(d) if name == "$out" => {
            (d.get_str("db").unwrap_or(&ctx.db).to_string(), d.get_str("coll").unwrap_or("").to_string())
        }
        Bson::Document(d) => match d.get("into") {
            Some(Bson::String(s)) => (ctx.db.clone(), s.clone()),
            Some(Bson::Document(i)) => {
                (i.get_str("db").unwrap_or(&ctx.db).to_string(), i.get_str("coll").unwrap_or("").to_string())
            }
            _ => return Err(Error::new(51178, "$merge 'into' field must be either a string or an object")),
        },
        _ => return Err(Error::bad_value(format!("{name} needs a target"))),
    };
    let spec = arg.as_document().cloned().unwrap_or_default();
    with_scope(ctx, st, |sc| {
        if name == "$out" {
            let existing: Vec<Document> = match sc.coll(&tdb, &tcoll) {
                Some(c) => c.records.values().map(|d| d.to_document()).collect::<std::result::Result<_, _>>()?,
                None => Vec::new(),
            };
            for d in existing {
                let id = d.get("_id").cloned().unwrap_or(Bson::Null);
                crud::delete_stmt(sc, &tdb, &tcoll, &doc! {"_id": id}, true, None, None, &Vars::default())?;
            }
            sc.coll_for_write(&tdb, &tcoll)?;
            for d in docs {
                crud::insert_one(sc, &tdb, &tcoll, RawDocumentBuf::from_document(&d)?, true)?;
            }
            return Ok(());
        }
        let on: Vec<String> = match spec.get("on") {
            Some(Bson::String(s)) => vec![s.clone()],
            Some(Bson::Array(a)) => a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect(),
            _ => vec!["_id".into()],
        };
        let when_matched = spec.get("whenMatched").cloned().unwrap_or(Bson::String("merge".into()));
        let when_not = spec.get_str("whenNotMatched").unwrap_or("insert").to_string();
        sc.coll_for_write(&tdb, &tcoll)?;
        for d in docs {
            let mut q = Document::new();
            for f in &on {
                q.insert(f.clone(), crate::query::get_path(&d, f).cloned().unwrap_or(Bson::Null));
            }
            let exists = sc
                .coll(&tdb, &tcoll)
                .map(|c| scan(c, &ScanOpts { filter: Some(&q), limit: 1, ..Default::default() }))
                .transpose()?
                .is_some_and(|h| !h.is_empty());
            if exists {
                let u = match &when_matched {
                    Bson::String(s) if s == "merge" => {
                        let mut set = d.clone();
                        set.remove("_id");
                        if set.is_empty() {
                            continue;
                        }
                        crate::update::UpdateKind::Ops(doc! {"$set": set})
                    }
                    Bson::String(s) if s == "replace" => {
                        let mut r = d.clone();
                        r.remove("_id");
                        crate::update::UpdateKind::Replace(r)
                    }
                    Bson::String(s) if s == "keepExisting" => continue,
                    Bson::String(s) if s == "fail" => {
                        let mut key_pattern = Document::new();
                        let mut parts = Vec::new();
                        for (k, v) in &q {
                            key_pattern.insert(k.clone(), 1);
                            parts.push(format!("{k}: {}", crate::storage::shell_fmt(v)));
                        }
                        return Err(Error::new(
                            11000,
                            format!(
                                "E11000 duplicate key error collection: {tdb}.{tcoll} index: _id_ dup key: {{ {} }}",
                                parts.join(", ")
                            ),
                        )
                        .with_extra(doc! {"keyPattern": key_pattern, "keyValue": q.clone()}));
                    }
                    Bson::Array(p) => {
                        crate::update::UpdateKind::Pipeline(p.iter().filter_map(|x| x.as_document().cloned()).collect())
                    }
                    _ => return Err(Error::bad_value("invalid whenMatched")),
                };
                let mut vars = Vars::default();
                vars.0.insert("new".into(), Bson::Document(d.clone()));
                crud::update_one_stmt(
                    sc,
                    &tdb,
                    &tcoll,
                    &crud::UpdateSpec {
                        q: &q,
                        u: &u,
                        multi: false,
                        upsert: false,
                        af: &Default::default(),
                        hint: None,
                        sort: None,
                        bypass: true,
                        vars: &vars,
                    },
                )?;
            } else {
                match when_not.as_str() {
                    "insert" => {
                        crud::insert_one(sc, &tdb, &tcoll, RawDocumentBuf::from_document(&d)?, true)?;
                    }
                    "discard" => {}
                    _ => {
                        return Err(Error::new(
                            13113,
                            "$merge could not find a matching document in the target collection for at least one document in the source collection",
                        ));
                    }
                }
            }
        }
        Ok(())
    })
}

/// `aggregate`.
pub fn aggregate(ctx: &mut Ctx, st: &mut State) -> Result<Reply> {
    let cmd = ctx.cmd.clone();
    let pipeline: Vec<Document> = cmd
        .get_array("pipeline")
        .map_err(|_| Error::new(40414, "BSON field 'aggregate.pipeline' is missing but a required field"))?
        .iter()
        .map(|s| {
            s.as_document()
                .cloned()
                .ok_or_else(|| Error::type_mismatch("Each element of the 'pipeline' array must be an object"))
        })
        .collect::<Result<_>>()?;
    let db_level = matches!(cmd.get("aggregate"), Some(b) if as_i64(b) == Some(1));
    let coll = if db_level { "$cmd.aggregate".to_string() } else { ctx.target()? };
    let ns = ctx.ns(&coll);
    let cursor_opts = cmd.get_document("cursor").ok().cloned();
    if cursor_opts.is_none() && !cmd.get_bool("explain").unwrap_or(false) {
        return Err(Error::new(9, "The 'cursor' option is required, except for aggregate with the explain argument"));
    }
    let bs = batch_size(cursor_opts.as_ref().and_then(|c| c.get("batchSize")))?;
    let vars = Vars::from_let(cmd.get_document("let").ok())?;
    if cmd.get_bool("explain").unwrap_or(false) {
        return Ok(Reply::Doc(
            doc! {"explainVersion": "1", "stages": pipeline.iter().map(|s| Bson::Document(s.clone())).collect::<Vec<_>>(), "serverInfo": {"host": ctx.shared.host_port(), "version": "7.0.12"}},
        ));
    }
    let first_name = pipeline.first().and_then(|s| s.keys().next().cloned()).unwrap_or_default();
    for (i, s) in pipeline.iter().enumerate() {
        let n = s.keys().next().map(String::as_str).unwrap_or("");
        if matches!(n, "$out" | "$merge") && i + 1 != pipeline.len() {
            return Err(Error::new(40601, format!("{n} can only be the final stage in the pipeline")));
        }
        if n == "$changeStream" && i != 0 {
            return Err(Error::new(40602, "$changeStream is only valid as the first stage in a pipeline"));
        }
    }
    // change streams
    if first_name == "$changeStream" {
        if ctx.in_txn {
            return Err(Error::new(263, "Operation not permitted in transaction: $changeStream"));
        }
        let spec = pipeline[0]
            .get_document("$changeStream")
            .map_err(|_| Error::type_mismatch("$changeStream stage expects a document"))?
            .clone();
        let scope = if db_level {
            if spec.get_bool("allChangesForCluster").unwrap_or(false) {
                if ctx.db != "admin" {
                    return Err(Error::new(73, "$changeStream may not be opened on the internal admin database"));
                }
                CsScope::Cluster
            } else {
                if matches!(ctx.db.as_str(), "admin" | "config" | "local") {
                    return Err(Error::new(
                        73,
                        format!("$changeStream may not be opened on the internal {} database", ctx.db),
                    ));
                }
                CsScope::Db(ctx.db.clone())
            }
        } else {
            if let Some(c) = st.catalog.coll(&ctx.db, &coll)
                && c.view.is_some()
            {
                return Err(Error::new(166, format!("Namespace {ns} is a view, not a collection")));
            }
            CsScope::Coll(ctx.db.clone(), coll.clone())
        };
        let mut cs = ChangeStream::open(scope, &spec, pipeline[1..].to_vec(), &st.oplog)?;
        let events = if bs == Some(0) { Vec::new() } else { cs.next_batch(&st.oplog, &st.catalog, bs.unwrap_or(101))? };
        let batch = events;
        let pbrt = cs.pbrt.clone();
        let id = if cs.invalidated {
            0
        } else {
            register(st, ns.clone(), CursorKind::Change(Box::new(cs)), ctx.lsid.clone())
        };
        return Ok(Reply::Cursor(CursorReply {
            id,
            ns,
            first: true,
            batch,
            cursor_extra: doc! {"postBatchResumeToken": pbrt},
            ..Default::default()
        }));
    }
    if pipeline.last().and_then(|s| s.keys().next()).is_some_and(|n| n == "$out" || n == "$merge")
        && cmd.get_document("readConcern").ok().and_then(|r| r.get_str("level").ok()) == Some("linearizable")
    {
        return Err(Error::new(
            72,
            "{aggregate: ...} with a $out or $merge stage does not support readConcern level linearizable",
        ));
    }
    let (mut stages, out_stage) = match pipeline.last().and_then(|s| s.keys().next()).map(String::as_str) {
        Some("$out") | Some("$merge") => (pipeline[..pipeline.len() - 1].to_vec(), pipeline.last().cloned()),
        _ => (pipeline.clone(), None),
    };
    let db = ctx.db.clone();
    let docs = if first_name == "$collStats" {
        let spec = stages.remove(0).get_document("$collStats").cloned().unwrap_or_default();
        vec![coll_stats_stage(ctx, st, &coll, &spec)?]
    } else if db_level {
        if !matches!(first_name.as_str(), "$documents" | "$currentOp" | "$listLocalSessions") {
            return Err(Error::new(
                73,
                format!("{{aggregate: 1}} is not valid for '{first_name}'; a collection is required."),
            ));
        }
        if first_name == "$listLocalSessions" {
            stages.remove(0);
            let mut docs = Vec::new();
            if let Some(l) = &ctx.lsid {
                docs.push(doc! {"_id": {"id": l.get("id").cloned().unwrap_or(Bson::Null), "uid": bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![0u8; 32] }}, "lastUse": bson::DateTime::now()});
            }
            docs
        } else {
            if first_name != "$documents" {
                stages.remove(0);
            }
            Vec::new()
        }
    } else {
        // leading $match uses the planner
        let leading: Option<Document> = stages.first().and_then(|s| s.get_document("$match").ok()).cloned();
        let hint = cmd.get("hint").cloned();
        let leading_sample: Option<usize> = stages
            .first()
            .and_then(|s| s.get_document("$sample").ok())
            .and_then(|s| s.get("size").and_then(as_i64))
            .map(|n| n.max(0) as usize);
        let res = with_scope(ctx, st, |sc| {
            let Some(c) = sc.coll(&db, &coll) else {
                crud::check_hint(None, hint.as_ref()).ok();
                return Ok(None);
            };
            if c.view.is_some() {
                return Ok(Some((read_all(&*sc.cat, &db, &coll, 0)?, false)));
            }
            if let Some(size) = leading_sample {
                // $sample first: pick records before decoding anything
                use rand::seq::SliceRandom;
                let mut all: Vec<&crate::storage::Doc> = c.records.values().collect();
                all.shuffle(&mut rand::rng());
                all.truncate(size);
                return Ok(Some((
                    all.into_iter().map(|d| d.to_document().map_err(Error::from)).collect::<Result<Vec<_>>>()?,
                    true,
                )));
            }
            let hits = scan(
                c,
                &ScanOpts {
                    filter: leading.as_ref(),
                    vars: Some(&vars),
                    hint: hint.as_ref(),
                    keep_decoded: true,
                    ..Default::default()
                },
            )?;
            Ok(Some((
                hits.into_iter()
                    .map(|h| h.decoded.map(Ok).unwrap_or_else(|| h.doc.to_document().map_err(Error::from)))
                    .collect::<Result<Vec<_>>>()?,
                true,
            )))
        })?;
        match res {
            Some((docs, planned)) => {
                if planned && (leading.is_some() || leading_sample.is_some()) {
                    stages.remove(0);
                }
                docs
            }
            None => Vec::new(),
        }
    };
    let out = {
        let src = CatalogSource(&st.catalog);
        let env = aggregate::Env { db: &db, source: &src, vars: vars.clone() };
        aggregate::run(docs, &stages, &env)?
    };
    if let Some(last) = out_stage {
        write_out(ctx, st, &last, out)?;
        return Ok(Reply::Cursor(CursorReply { id: 0, ns, first: true, batch: Vec::new(), ..Default::default() }));
    }
    let docs = out.iter().map(to_raw).collect::<Result<VecDeque<_>>>()?;
    Ok(first_batch(st, ctx, ns, docs, bs, false))
}

/// `explain` (a minimal plan).
pub fn explain(ctx: &mut Ctx, _st: &mut State) -> Result<Reply> {
    let inner =
        ctx.cmd.get_document("explain").map_err(|_| Error::type_mismatch("explain needs a command document"))?;
    let name = inner.keys().next().cloned().unwrap_or_default();
    let coll = inner.get_str(&name).unwrap_or("").to_string();
    Ok(Reply::Doc(doc! {
        "explainVersion": "1",
        "queryPlanner": {"namespace": ctx.ns(&coll), "parsedQuery": inner.get_document("filter").cloned().unwrap_or_default(), "winningPlan": {"stage": "COLLSCAN"}, "rejectedPlans": []},
        "command": inner.clone(),
        "serverInfo": {"host": ctx.shared.host_port(), "version": "7.0.12"},
    }))
}

const RESUMABLE: [i32; 17] =
    [6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436, 63, 150, 13388, 234, 133];

/// `getMore`.
pub async fn get_more(ctx: &mut Ctx<'_>) -> Result<Reply> {
    let id = ctx
        .cmd
        .get("getMore")
        .and_then(as_i64)
        .ok_or_else(|| Error::type_mismatch("getMore cursor id must be a long"))?;
    let coll = ctx
        .cmd
        .get_str("collection")
        .map_err(|_| Error::new(40414, "BSON field 'getMore.collection' is missing but a required field"))?
        .to_string();
    let ns = ctx.ns(&coll);
    let bs = batch_size(ctx.cmd.get("batchSize"))?.filter(|b| *b > 0);
    let max_wait = ctx.cmd.get("maxTimeMS").and_then(as_i64).map(|m| m.max(0) as u64).unwrap_or(1000);
    let deadline = Instant::now() + Duration::from_millis(max_wait);
    let shared = Arc::clone(ctx.shared);
    let action = shared.failpoints.lock().check_get_more();
    if let Some(a) = action
        && let Some(code) = a.error_code
    {
        let mut e = Error::new(code, "Failing getMore via 'failGetMoreAfterCursorCheckout' failpoint");
        match a.error_labels {
            Some(ls) => {
                for l in ls {
                    e = e.with_label(&l);
                }
            }
            None => {
                let st = shared.lock_state();
                let is_cs = st.cursors.get(&id).is_some_and(|c| matches!(c.kind, CursorKind::Change(_)));
                if is_cs && RESUMABLE.contains(&code) {
                    e = e.with_label("ResumableChangeStreamError");
                }
            }
        }
        return Err(e);
    }
    loop {
        let notified = shared.oplog_notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let done = shared.with_state(|st| -> Option<Result<Reply>> {
            let ns = ns.clone();
            let Some(cur) = st.cursors.get_mut(&id) else {
                return Some(Err(Error::new(43, format!("cursor id {id} not found"))));
            };
            cur.last_used = Instant::now();
            if cur.ns != ns {
                return Some(Err(Error::new(
                    13,
                    format!(
                        "Requested getMore on namespace '{ns}', but cursor belongs to a different namespace {}",
                        cur.ns
                    ),
                )));
            }
            if let (Some(a), Some(b)) = (&cur.lsid, &ctx.lsid)
                && crate::session::lsid_key(a) != crate::session::lsid_key(b)
            {
                return Some(Err(Error::new(
                    50738,
                    "Cannot run getMore on cursor, which was created in session, in a different session",
                )));
            }
            match &mut cur.kind {
                CursorKind::Docs(q) => {
                    let batch = take_batch(q, bs.unwrap_or(usize::MAX));
                    let done = q.is_empty();
                    if done {
                        st.cursors.remove(&id);
                    }
                    return Some(Ok(Reply::Cursor(CursorReply {
                        id: if done { 0 } else { id },
                        ns,
                        first: false,
                        batch,
                        ..Default::default()
                    })));
                }
                CursorKind::Change(cs) => {
                    let events = match cs.next_batch(&st.oplog, &st.catalog, bs.unwrap_or(10_000)) {
                        Ok(e) => e,
                        Err(e) => {
                            st.cursors.remove(&id);
                            return Some(Err(e));
                        }
                    };
                    if !events.is_empty() || cs.invalidated || Instant::now() >= deadline {
                        let pbrt = cs.pbrt.clone();
                        let inval = cs.invalidated;
                        if inval {
                            st.cursors.remove(&id);
                        }
                        let batch = events;
                        return Some(Ok(Reply::Cursor(CursorReply {
                            id: if inval { 0 } else { id },
                            ns,
                            first: false,
                            batch,
                            cursor_extra: doc! {"postBatchResumeToken": pbrt},
                            ..Default::default()
                        })));
                    }
                }
                CursorKind::Tailable { db, coll, last_rid, await_data } => {
                    let (db, cname) = (db.clone(), coll.clone());
                    let mut batch = Vec::new();
                    if let Some(c) = st.catalog.coll(&db, &cname) {
                        for (rid, d) in c.records.range(*last_rid + 1..) {
                            batch.push(Arc::clone(d));
                            *last_rid = *rid;
                            if bs.is_some_and(|b| batch.len() >= b) {
                                break;
                            }
                        }
                    } else {
                        st.cursors.remove(&id);
                        return Some(Ok(Reply::Cursor(CursorReply {
                            id: 0,
                            ns,
                            first: false,
                            batch,
                            ..Default::default()
                        })));
                    }
                    if !batch.is_empty() || !*await_data || Instant::now() >= deadline {
                        return Some(Ok(Reply::Cursor(CursorReply {
                            id,
                            ns,
                            first: false,
                            batch,
                            ..Default::default()
                        })));
                    }
                }
            }
            None
        });
        if let Some(r) = done {
            return r;
        }
        let now = Instant::now();
        if now >= deadline {
            continue;
        }
        let _ = tokio::time::timeout(deadline - now, notified).await;
    }
}
