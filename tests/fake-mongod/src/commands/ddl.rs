//! DDL commands: create (collections, capped, clustered, time-series, views), drop,
//! dropDatabase, renameCollection, collMod, createIndexes, dropIndexes, listCollections,
//! listIndexes, convertToCapped.

use std::collections::VecDeque;
use std::sync::Arc;

use bson::{Bson, Document, RawDocumentBuf, doc};

use super::{Ctx, CursorReply, Reply, check_ns, with_scope};
use crate::bson_order::as_i64;
use crate::error::{Error, Result};
use crate::oplog::{Kind, Pending};
use crate::server::State;
use crate::storage::{Collection, Index};

const NON_OPTION_FIELDS: [&str; 17] = [
    "create",
    "writeConcern",
    "lsid",
    "$db",
    "$clusterTime",
    "txnNumber",
    "autocommit",
    "startTransaction",
    "comment",
    "apiVersion",
    "apiStrict",
    "apiDeprecationErrors",
    "$readPreference",
    "readConcern",
    "maxTimeMS",
    "idIndex",
    "autoIndexId",
];

fn id_index() -> Document {
    doc! {"v": 2, "key": {"_id": 1}, "name": "_id_"}
}

fn options_from(cmd: &Document) -> Result<Document> {
    let mut o = Document::new();
    for (k, v) in cmd {
        if NON_OPTION_FIELDS.contains(&k.as_str()) {
            continue;
        }
        match k.as_str() {
            "clusteredIndex" => {
                let ci = v.as_document().ok_or_else(|| Error::type_mismatch("clusteredIndex must be an object"))?;
                if ci.get_document("key").ok() != Some(&doc! {"_id": 1}) {
                    return Err(Error::new(5979701, "The clusteredIndex option requires 'key' to be {_id: 1}"));
                }
                if !ci.get_bool("unique").unwrap_or(false) {
                    return Err(Error::new(5979702, "The clusteredIndex option requires 'unique' to be true"));
                }
                let mut spec =
                    doc! {"v": 2, "key": {"_id": 1}, "name": ci.get_str("name").unwrap_or("_id_"), "unique": true};
                for (kk, vv) in ci {
                    if !matches!(kk.as_str(), "key" | "unique" | "name" | "v") {
                        spec.insert(kk.clone(), vv.clone());
                    }
                }
                o.insert("clusteredIndex", spec);
            }
            "capped" => {
                o.insert("capped", crate::bson_order::truthy(v));
            }
            "timeseries" => {
                let ts = v.as_document().ok_or_else(|| Error::type_mismatch("timeseries must be an object"))?;
                if ts.get_str("timeField").is_err() {
                    return Err(Error::new(40414, "BSON field 'timeseries.timeField' is missing but a required field"));
                }
                let mut t = ts.clone();
                if !t.contains_key("granularity") && !t.contains_key("bucketMaxSpanSeconds") {
                    t.insert("granularity", "seconds");
                }
                if !t.contains_key("bucketMaxSpanSeconds") {
                    let secs = match t.get_str("granularity").unwrap_or("seconds") {
                        "minutes" => 86400,
                        "hours" => 2_592_000,
                        _ => 3600,
                    };
                    t.insert("bucketMaxSpanSeconds", secs);
                }
                o.insert("timeseries", t);
            }
            _ => {
                o.insert(k.clone(), v.clone());
            }
        }
    }
    if o.get_bool("capped").unwrap_or(false) {
        let size = o
            .get("size")
            .and_then(as_i64)
            .ok_or_else(|| Error::new(72, "the 'size' field is required when 'capped' is true"))?;
        if size <= 0 {
            return Err(Error::new(72, "the 'size' field must be positive"));
        }
    }
    Ok(o)
}

/// `create`.
pub fn create(ctx: &mut Ctx, st: &mut State) -> Result<Reply> {
    let name = ctx.target()?;
    check_ns(&ctx.db, &name)?;
    let options = options_from(&ctx.cmd)?;
    let db = ctx.db.clone();
    let ns = ctx.ns(&name);
    with_scope(ctx, st, |sc| {
        if let Some(existing) = sc.coll(&db, &name) {
            let same = crate::bson_order::cmp_docs(&existing.options, &options) == std::cmp::Ordering::Equal;
            if same {
                return Ok(Reply::Doc(doc! {}));
            }
            return Err(Error::new(48, format!("Collection {ns} already exists.")));
        }
        let (coll, desc) = if let Some(view_on) = options.get("viewOn") {
            let view_on =
                view_on.as_str().ok_or_else(|| Error::type_mismatch("'viewOn' option must be a string"))?.to_string();
            let pipeline: Vec<Document> = match options.get("pipeline") {
                Some(Bson::Array(a)) => a
                    .iter()
                    .map(|x| {
                        x.as_document().cloned().ok_or_else(|| Error::type_mismatch("pipeline entries must be objects"))
                    })
                    .collect::<Result<_>>()?,
                None => Vec::new(),
                _ => return Err(Error::type_mismatch("'pipeline' option must be specified as an array")),
            };
            let mut o = doc! {"viewOn": view_on.clone(), "pipeline": pipeline.iter().cloned().map(Bson::Document).collect::<Vec<_>>()};
            if let Some(c) = options.get("collation") {
                o.insert("collation", c.clone());
            }
            (Collection::new_view(view_on, pipeline, o.clone()), o)
        } else {
            let c = Collection::new(options.clone());
            let mut desc = Document::new();
            if !options.contains_key("clusteredIndex") {
                desc.insert("idIndex", id_index());
            }
            desc.extend(options.clone());
            (c, desc)
        };
        let uuid = if coll.view.is_some() { None } else { Some(coll.uuid) };
        sc.cat.dbs.entry(db.clone()).or_default().colls.insert(name.clone(), coll);
        sc.ops.push(Pending { db: db.clone(), coll: name.clone(), uuid, kind: Kind::Create { desc } });
        tracing::debug!(ns = %ns, "collection created");
        Ok(Reply::Doc(doc! {}))
    })
}

/// `drop`.
pub fn drop(ctx: &mut Ctx, st: &mut State) -> Result<Reply> {
    let name = ctx.target()?;
    let db = ctx.db.clone();
    let ns = ctx.ns(&name);
    let Some(c) = st.catalog.dbs.get_mut(&db).and_then(|d| d.colls.remove(&name)) else {
        return Ok(Reply::Doc(doc! {"ns": ns}));
    };
    let n = c.indexes.len() as i32;
    let uuid = if c.view.is_some() { None } else { Some(c.uuid) };
    st.oplog.append(vec![Pending { db, coll: name, uuid, kind: Kind::Drop }], None);
    st.last_write = std::time::Instant::now();
    Ok(Reply::Doc(doc! {"ns": ns, "nIndexesWas": n}))
}

/// `dropDatabase`.
pub fn drop_database(ctx: &mut Ctx, st: &mut State) -> Result<Reply> {
    let db = ctx.db.clone();
    let Some(d) = st.catalog.dbs.remove(&db) else { return Ok(Reply::Doc(doc! {})) };
    for (name, c) in d.colls {
        let uuid = if c.view.is_some() { None } else { Some(c.uuid) };
        st.oplog.append(vec![Pending { db: db.clone(), coll: name, uuid, kind: Kind::Drop }], None);
    }
    st.oplog.append(vec![Pending { db: db.clone(), coll: String::new(), uuid: None, kind: Kind::DropDatabase }], None);
    st.last_write = std::time::Instant::now();
    Ok(Reply::Doc(doc! {"dropped": db}))
}

fn split_ns(ns: &str) -> Result<(String, String)> {
    let (d, c) = ns.split_once('.').ok_or_else(|| Error::new(73, format!("Invalid namespace specified '{ns}'")))?;
    Ok((d.to_string(), c.to_string()))
}

/// `renameCollection`.
pub fn rename(ctx: &mut Ctx, st: &mut State) -> Result<Reply> {
    if ctx.db != "admin" {
        return Err(Error::new(13, "renameCollection may only be run against the admin database."));
    }
    let from = ctx.target()?;
    let to = ctx
        .cmd
        .get_str("to")
        .map_err(|_| Error::new(40414, "BSON field 'renameCollection.to' is missing but a required field"))?
        .to_string();
    let drop_target = ctx.cmd.get_bool("dropTarget").unwrap_or(false);
    let (fdb, fcoll) = split_ns(&from)?;
    let (tdb, tcoll) = split_ns(&to)?;
    check_ns(&tdb, &tcoll)?;
    if from == to {
        return Err(Error::new(20, "Can't rename a collection to itself"));
    }
    let source = st
        .catalog
        .coll(&fdb, &fcoll)
        .ok_or_else(|| Error::new(26, format!("Source collection {from} does not exist")))?;
    if source.view.is_some() {
        return Err(Error::new(166, format!("cannot rename view: {from}")));
    }
    let mut dropped = None;
    if let Some(t) = st.catalog.coll(&tdb, &tcoll) {
        if !drop_target {
            return Err(Error::new(48, "target namespace exists"));
        }
        dropped = Some(t.uuid);
    }
    if let Some(d) = st.catalog.dbs.get_mut(&tdb) {
        d.colls.remove(&tcoll);
    }
    let c = st
        .catalog
        .dbs
        .get_mut(&fdb)
        .and_then(|d| d.colls.remove(&fcoll))
        .ok_or_else(|| Error::new(26, "source vanished"))?;
    let uuid = c.uuid;
    st.catalog.dbs.entry(tdb.clone()).or_default().colls.insert(tcoll.clone(), c);
    st.oplog.append(
        vec![Pending {
            db: fdb,
            coll: fcoll,
            uuid: Some(uuid),
            kind: Kind::Rename { to_db: tdb, to_coll: tcoll, drop_target: dropped },
        }],
        None,
    );
    st.last_write = std::time::Instant::now();
    Ok(Reply::Doc(doc! {}))
}

fn index_name(key: &Document) -> String {
    key.iter()
        .map(|(k, v)| {
            let vs = match v {
                Bson::String(s) => s.clone(),
                Bson::Int32(i) => i.to_string(),
                Bson::Int64(i) => i.to_string(),
                Bson::Double(d) if d.fract() == 0.0 => (*d as i64).to_string(),
                other => other.to_string(),
            };
            format!("{k}_{vs}")
        })
        .collect::<Vec<_>>()
        .join("_")
}

fn validate_key(key: &Document) -> Result<()> {
    if key.is_empty() {
        return Err(Error::new(67, "Index keys cannot be empty."));
    }
    for (k, v) in key {
        match v {
            Bson::String(s)
                if matches!(s.as_str(), "hashed" | "text" | "2dsphere" | "2d" | "geoHaystack" | "columnstore") => {}
            Bson::String(s) => return Err(Error::new(67, format!("Unknown index plugin '{s}'"))),
            n if crate::bson_order::is_number(n) => {
                if crate::bson_order::as_f64(n) == Some(0.0) {
                    return Err(Error::new(67, format!("Values in the index key pattern can't be all zero: {k}")));
                }
            }
            _ => return Err(Error::new(67, format!("Values in index key pattern must be numeric or strings: {k}"))),
        }
    }
    Ok(())
}

fn comparable_options(spec: &Document) -> Document {
    spec.iter()
        .filter(|(k, _)| !matches!(k.as_str(), "v" | "name" | "key" | "background" | "hidden" | "expireAfterSeconds"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// `createIndexes`.
pub fn create_indexes(ctx: &mut Ctx, st: &mut State) -> Result<Reply> {
    let coll = ctx.target()?;
    let specs = ctx
        .cmd
        .get_array("indexes")
        .map_err(|_| Error::new(40414, "BSON field 'createIndexes.indexes' is missing but a required field"))?
        .clone();
    if specs.is_empty() {
        return Err(Error::bad_value("Must specify at least one index to create"));
    }
    let db = ctx.db.clone();
    let ns = ctx.ns(&coll);
    with_scope(ctx, st, |sc| {
        let created_auto = sc.coll(&db, &coll).is_none();
        let c = sc.coll_for_write(&db, &coll)?;
        let before = c.indexes.len() as i32;
        let mut created = Vec::new();
        for s in &specs {
            let s = s.as_document().ok_or_else(|| Error::type_mismatch("index specification must be an object"))?;
            let key = s
                .get_document("key")
                .map_err(|_| Error::new(9, "The 'key' field is a required property of an index specification"))?
                .clone();
            validate_key(&key)?;
            let name = s.get_str("name").map(str::to_string).unwrap_or_else(|_| index_name(&key));
            let mut spec = doc! {"v": 2, "key": key.clone(), "name": name.clone()};
            for (k, v) in s {
                if !matches!(k.as_str(), "key" | "name" | "v" | "ns" | "background") {
                    spec.insert(k.clone(), v.clone());
                }
            }
            if spec.get_bool("unique") == Ok(false) {
                spec.remove("unique");
            }
            if spec.get_bool("sparse") == Ok(false) {
                spec.remove("sparse");
            }
            if let Some(existing) = c.index_by_name(&name) {
                if existing.key != key {
                    return Err(Error::new(
                        86,
                        format!(
                            "An existing index has the same name as the requested index. When index names are not specified, they are auto generated and can cause conflicts. Please refer to our documentation. Requested index: {}, existing index: {}",
                            crate::storage::shell_fmt(&Bson::Document(spec.clone())),
                            crate::storage::shell_fmt(&Bson::Document(existing.spec.clone()))
                        ),
                    ));
                }
                if comparable_options(&existing.spec) != comparable_options(&spec) {
                    return Err(Error::new(
                        85,
                        format!(
                            "An equivalent index already exists with the same name but different options. Requested index: {}, existing index: {}",
                            crate::storage::shell_fmt(&Bson::Document(spec.clone())),
                            crate::storage::shell_fmt(&Bson::Document(existing.spec.clone()))
                        ),
                    ));
                }
                continue;
            }
            if let Some(existing) = c.indexes.iter().find(|i| {
                i.key == key
                    && comparable_options(&i.spec).get("collation") == comparable_options(&spec).get("collation")
                    && i.spec.get("partialFilterExpression") == spec.get("partialFilterExpression")
            }) {
                return Err(Error::new(85, format!("Index already exists with a different name: {}", existing.name)));
            }
            if name == "_id_" {
                return Err(Error::new(197, "cannot create an index named _id_"));
            }
            let ix = Index::from_spec(spec.clone())?;
            c.add_index(&ns, ix)?;
            created.push(spec);
        }
        let after = c.indexes.len() as i32;
        let uuid = c.uuid;
        for spec in &created {
            sc.ops.push(Pending {
                db: db.clone(),
                coll: coll.clone(),
                uuid: Some(uuid),
                kind: Kind::CreateIndexes { indexes: vec![spec.clone()] },
            });
        }
        let mut d =
            doc! {"numIndexesBefore": before, "numIndexesAfter": after, "createdCollectionAutomatically": created_auto};
        if created.is_empty() {
            d.insert("note", "all indexes already exist");
        }
        Ok(Reply::Doc(d))
    })
}

/// `dropIndexes`.
pub fn drop_indexes(ctx: &mut Ctx, st: &mut State) -> Result<Reply> {
    let coll = ctx.target()?;
    let ns = ctx.ns(&coll);
    let which = ctx
        .cmd
        .get("index")
        .cloned()
        .ok_or_else(|| Error::new(40414, "BSON field 'dropIndexes.index' is missing but a required field"))?;
    let c = st.catalog.coll_mut(&ctx.db, &coll).ok_or_else(|| Error::new(26, format!("ns not found {ns}")))?;
    let was = c.indexes.len() as i32;
    let names: Vec<String> = match &which {
        Bson::String(s) if s == "*" => c.indexes.iter().filter(|i| i.name != "_id_").map(|i| i.name.clone()).collect(),
        Bson::String(s) => vec![s.clone()],
        Bson::Array(a) => a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect(),
        Bson::Document(k) => match c.index_by_key(k) {
            Some(i) => vec![i.name.clone()],
            None => {
                return Err(Error::new(
                    27,
                    format!("can't find index with key: {}", crate::storage::shell_fmt(&which)),
                ));
            }
        },
        _ => return Err(Error::type_mismatch("index must be a string, an array or an object")),
    };
    for n in &names {
        if n == "_id_" {
            return Err(Error::new(72, "cannot drop _id index"));
        }
        if c.index_by_name(n).is_none() {
            return Err(Error::new(27, format!("index not found with name [{n}]")));
        }
    }
    let mut dropped = Vec::new();
    c.indexes.retain(|i| {
        if names.contains(&i.name) {
            dropped.push(i.spec.clone());
            false
        } else {
            true
        }
    });
    let uuid = c.uuid;
    for spec in dropped {
        st.oplog.append(
            vec![Pending {
                db: ctx.db.clone(),
                coll: coll.clone(),
                uuid: Some(uuid),
                kind: Kind::DropIndexes { indexes: vec![spec] },
            }],
            None,
        );
    }
    st.last_write = std::time::Instant::now();
    Ok(Reply::Doc(doc! {"nIndexesWas": was}))
}

fn entry_for(name: &str, c: &Collection) -> Document {
    match &c.view {
        Some(_) => doc! {"name": name, "type": "view", "options": c.options.clone(), "info": {"readOnly": true}},
        None => {
            let ty = if c.options.contains_key("timeseries") { "timeseries" } else { "collection" };
            let mut d = doc! {"name": name, "type": ty, "options": c.options.clone(), "info": {"readOnly": false, "uuid": c.uuid}};
            if !c.options.contains_key("clusteredIndex") && ty == "collection" {
                d.insert("idIndex", id_index());
            }
            d
        }
    }
}

fn raw(d: &Document) -> Result<crate::storage::Doc> {
    Ok(Arc::new(RawDocumentBuf::from_document(d)?))
}

fn cursor_reply(st: &mut State, ctx: &Ctx, ns: String, docs: Vec<Document>) -> Result<Reply> {
    let bs = ctx
        .cmd
        .get_document("cursor")
        .ok()
        .and_then(|c| c.get("batchSize"))
        .and_then(as_i64)
        .map(|b| b.max(0) as usize);
    let mut q: VecDeque<crate::storage::Doc> = docs.iter().map(raw).collect::<Result<_>>()?;
    let n = bs.unwrap_or(usize::MAX);
    let mut batch = Vec::new();
    while batch.len() < n {
        match q.pop_front() {
            Some(d) => batch.push(d),
            None => break,
        }
    }
    let id = if q.is_empty() {
        0
    } else {
        let id = st.next_cursor_id;
        st.next_cursor_id += 1;
        st.cursors.insert(
            id,
            super::cursor::Cursor {
                ns: ns.clone(),
                kind: super::cursor::CursorKind::Docs(q),
                lsid: ctx.lsid.clone(),
                last_used: std::time::Instant::now(),
                no_timeout: false,
            },
        );
        id
    };
    Ok(Reply::Cursor(CursorReply { id, ns, first: true, batch, ..Default::default() }))
}

/// `listCollections`.
pub fn list_collections(ctx: &mut Ctx, st: &mut State) -> Result<Reply> {
    let name_only = ctx.cmd.get_bool("nameOnly").unwrap_or(false);
    let filter = match ctx.cmd.get_document("filter") {
        Ok(f) if !f.is_empty() => Some(crate::query::compile(f)?),
        _ => None,
    };
    let mut out = Vec::new();
    if let Some(d) = st.catalog.dbs.get(&ctx.db) {
        for (name, c) in &d.colls {
            let e = entry_for(name, c);
            if let Some(f) = &filter
                && !f.matches(&e, &Default::default())
            {
                continue;
            }
            out.push(if name_only {
                doc! {"name": name.clone(), "type": e.get_str("type").unwrap_or("collection")}
            } else {
                e
            });
        }
    }
    let ns = format!("{}.$cmd.listCollections", ctx.db);
    cursor_reply(st, ctx, ns, out)
}

/// `listIndexes`.
pub fn list_indexes(ctx: &mut Ctx, st: &mut State) -> Result<Reply> {
    let coll = ctx.target()?;
    let ns = ctx.ns(&coll);
    let db = ctx.db.clone();
    let docs = with_scope(ctx, st, |sc| {
        let c = sc.coll(&db, &coll).ok_or_else(|| Error::new(26, format!("ns does not exist: {ns}")))?;
        if c.view.is_some() {
            return Err(Error::new(166, format!("Namespace {ns} is a view, not a collection")));
        }
        let mut docs: Vec<Document> = Vec::new();
        if let Ok(ci) = c.options.get_document("clusteredIndex") {
            let mut d = ci.clone();
            d.insert("clustered", true);
            docs.push(d);
        }
        docs.extend(c.indexes.iter().map(|i| i.spec.clone()));
        Ok(docs)
    })?;
    cursor_reply(st, ctx, ctx.ns(&coll), docs)
}

/// `collMod`.
pub fn coll_mod(ctx: &mut Ctx, st: &mut State) -> Result<Reply> {
    let coll = ctx.target()?;
    let ns = ctx.ns(&coll);
    let cmd = ctx.cmd.clone();
    let c = st.catalog.coll_mut(&ctx.db, &coll).ok_or_else(|| Error::new(26, format!("ns does not exist: {ns}")))?;
    let before = c.options.clone();
    let mut reply = Document::new();
    let mut desc = Document::new();
    for (k, v) in &cmd {
        if NON_OPTION_FIELDS.contains(&k.as_str()) || k == "collMod" || k == "dryRun" {
            continue;
        }
        desc.insert(k.clone(), v.clone());
        match k.as_str() {
            "validator"
            | "validationLevel"
            | "validationAction"
            | "changeStreamPreAndPostImages"
            | "expireAfterSeconds"
            | "collation" => {
                c.options.insert(k.clone(), v.clone());
            }
            "cappedSize" => {
                c.options.insert("size", v.clone());
            }
            "cappedMax" => {
                c.options.insert("max", v.clone());
            }
            "viewOn" | "pipeline" => {
                if c.view.is_none() {
                    return Err(Error::new(72, format!("option not supported on a non-view collection: {k}")));
                }
                c.options.insert(k.clone(), v.clone());
                if let Some(view) = c.view.as_mut() {
                    if k == "viewOn" {
                        view.view_on = v.as_str().unwrap_or("").to_string();
                    } else {
                        view.pipeline = v
                            .as_array()
                            .map(|a| a.iter().filter_map(|x| x.as_document().cloned()).collect())
                            .unwrap_or_default();
                    }
                }
            }
            "timeseries" => {
                if let (Bson::Document(t), Ok(cur)) = (v, c.options.get_document_mut("timeseries")) {
                    for (tk, tv) in t {
                        cur.insert(tk.clone(), tv.clone());
                    }
                }
            }
            "index" => {
                let spec = v.as_document().ok_or_else(|| Error::type_mismatch("index must be an object"))?;
                let pos = if let Ok(name) = spec.get_str("name") {
                    c.indexes.iter().position(|i| i.name == name)
                } else if let Ok(kp) = spec.get_document("keyPattern") {
                    c.indexes.iter().position(|i| &i.key == kp)
                } else {
                    return Err(Error::new(72, "must specify either index name or key pattern"));
                };
                let i = pos.ok_or_else(|| {
                    Error::new(27, format!("cannot find index {} for ns {ns}", crate::storage::shell_fmt(v)))
                })?;
                let mut ixspec = c.indexes[i].spec.clone();
                for (opt, val) in spec {
                    match opt.as_str() {
                        "name" | "keyPattern" => {}
                        "hidden" | "prepareUnique" => {
                            let old = ixspec.get_bool(opt).unwrap_or(false);
                            let new = crate::bson_order::truthy(val);
                            if old != new {
                                reply.insert(format!("{opt}_old"), old);
                                reply.insert(format!("{opt}_new"), new);
                            }
                            if new {
                                ixspec.insert(opt.clone(), true);
                            } else {
                                ixspec.remove(opt);
                            }
                        }
                        "expireAfterSeconds" => {
                            if let Some(old) = ixspec.get("expireAfterSeconds") {
                                reply.insert("expireAfterSeconds_old", old.clone());
                            }
                            reply.insert("expireAfterSeconds_new", val.clone());
                            ixspec.insert("expireAfterSeconds", val.clone());
                        }
                        "unique" => {
                            if !crate::bson_order::truthy(val) {
                                return Err(Error::bad_value("Cannot make index non-unique"));
                            }
                            if !ixspec.get_bool("unique").unwrap_or(false) {
                                let dups = c.duplicate_keys(i)?;
                                if !dups.is_empty() {
                                    let mut violations = Vec::new();
                                    for (_, rids) in dups {
                                        let ids: Vec<Bson> = rids
                                            .iter()
                                            .filter_map(|r| c.records.get(r))
                                            .filter_map(|d| {
                                                d.get("_id")
                                                    .ok()
                                                    .flatten()
                                                    .and_then(|v| Bson::try_from(v.to_raw_bson()).ok())
                                            })
                                            .collect();
                                        violations.push(Bson::Document(doc! {"ids": ids}));
                                    }
                                    return Err(Error::new(359, "Cannot convert the index to unique. Please resolve conflicting documents before running collMod again.").with_extra(doc! {"violations": violations}));
                                }
                                ixspec.insert("unique", true);
                                ixspec.remove("prepareUnique");
                                reply.insert("unique_new", true);
                            }
                        }
                        other => return Err(Error::new(72, format!("unknown index option for collMod: {other}"))),
                    }
                }
                c.indexes[i].spec = ixspec;
                c.rebuild_index(i)?;
            }
            other => return Err(Error::new(72, format!("unknown option to collMod: {other}"))),
        }
    }
    let uuid = c.uuid;
    st.oplog.append(
        vec![Pending { db: ctx.db.clone(), coll, uuid: Some(uuid), kind: Kind::Modify { desc, before } }],
        None,
    );
    st.last_write = std::time::Instant::now();
    Ok(Reply::Doc(reply))
}

/// `convertToCapped`.
pub fn convert_to_capped(ctx: &mut Ctx, st: &mut State) -> Result<Reply> {
    let coll = ctx.target()?;
    let ns = ctx.ns(&coll);
    let size = ctx
        .cmd
        .get("size")
        .and_then(as_i64)
        .ok_or_else(|| Error::new(40414, "BSON field 'convertToCapped.size' is missing but a required field"))?;
    let c = st
        .catalog
        .coll_mut(&ctx.db, &coll)
        .ok_or_else(|| Error::new(26, format!("source collection {ns} does not exist")))?;
    if c.view.is_some() {
        return Err(Error::new(166, format!("Namespace {ns} is a view, not a collection")));
    }
    c.options.insert("capped", true);
    c.options.insert("size", size);
    if let Some(m) = ctx.cmd.get("max") {
        c.options.insert("max", m.clone());
    }
    // evict oldest while over the new limits
    let (sz, max) = c.capped_limits();
    while c.records.len() > 1 && (c.data_size > sz || max.is_some_and(|m| c.records.len() as u64 > m)) {
        let Some((&rid, _)) = c.records.iter().next() else { break };
        c.remove_rid(rid)?;
    }
    Ok(Reply::Doc(doc! {}))
}
