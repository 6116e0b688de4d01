//! CRUD commands: insert, update, delete, findAndModify, count, distinct, plus the
//! shared query planner (`_id` fast paths, natural order scan, sort, skip, limit).

use std::sync::Arc;

use bson::{Bson, Document, RawDocumentBuf, doc, oid::ObjectId};

use super::{Ctx, Reply, Scope, with_scope};
use crate::aggregate::{self, expr::Vars};
use crate::bson_order::{Key, as_i64, compare, values_equal};
use crate::error::{Error, Result};
use crate::oplog::{Kind, Pending};
use crate::query::{self, Node};
use crate::server::State;
use crate::storage::{Collection, Doc};
use crate::update::{self, UpdateKind};

/// A document found by a scan.
pub struct Hit {
    /// Record id.
    pub rid: u64,
    /// Stored bytes.
    pub doc: Doc,
    /// Decoded form (when the filter needed it).
    pub decoded: Option<Document>,
    /// Positional match index.
    pub pos: Option<usize>,
}

/// Scan parameters.
#[derive(Default)]
pub struct ScanOpts<'a> {
    /// Filter.
    pub filter: Option<&'a Document>,
    /// Sort spec.
    pub sort: Option<&'a Document>,
    /// Skip.
    pub skip: usize,
    /// Limit (0 = none).
    pub limit: usize,
    /// Variables.
    pub vars: Option<&'a Vars>,
    /// Index hint.
    pub hint: Option<&'a Bson>,
    /// `min` / `max` bounds on `_id`.
    pub min: Option<&'a Document>,
    /// Upper bound.
    pub max: Option<&'a Document>,
    /// Keep the decoded documents in the hits (callers that read them anyway).
    pub keep_decoded: bool,
}

/// The `_id` of a stored document, read without decoding the rest.
fn raw_id(d: &Doc) -> Option<Bson> {
    d.get("_id").ok().flatten().and_then(|v| Bson::try_from(v.to_raw_bson()).ok())
}

/// Validates an index hint.
pub fn check_hint(c: Option<&Collection>, hint: Option<&Bson>) -> Result<()> {
    let Some(h) = hint else { return Ok(()) };
    let ok = match h {
        Bson::String(name) => c.is_some_and(|c| c.index_by_name(name).is_some()),
        Bson::Document(k) if k.contains_key("$natural") => true,
        Bson::Document(k) if k.is_empty() => true,
        Bson::Document(k) => c.is_some_and(|c| {
            c.index_by_key(k).is_some() || (k == &doc! {"_id": 1} && c.options.contains_key("clusteredIndex"))
        }),
        _ => false,
    };
    if !ok {
        return Err(Error::bad_value(
            "error processing query: planner returned error :: caused by :: hint provided does not correspond to an existing index",
        ));
    }
    Ok(())
}

/// Runs a query over a collection.
///
/// A filter that only looks at `_id` (see [`Node::id_only`]) is matched on the `_id` value
/// alone, without decoding documents, and on collections with an `_id` index only the key
/// ranges it can match are walked ([`Node::id_keys`]), in `_id` order (descending for a
/// descending `_id` sort), stopping after `skip + limit` hits unless another sort follows.
pub fn scan(c: &Collection, o: &ScanOpts) -> Result<Vec<Hit>> {
    check_hint(Some(c), o.hint)?;
    let default_vars = Vars::default();
    let vars = o.vars.unwrap_or(&default_vars);
    let filter = o.filter.filter(|f| !f.is_empty());
    let sort_spec = match o.sort.filter(|s| !s.is_empty()) {
        Some(s) => Some(aggregate::parse_sort(s)?),
        None => None,
    };
    let id_sort = sort_spec
        .as_ref()
        .and_then(|s| if s.len() == 1 && s[0].0 == "_id" && c.id_indexed() { Some(s[0].1) } else { None });
    let node: Option<Node> = match filter {
        Some(f) => Some(query::compile(f)?),
        None => None,
    };
    let id_node = node.as_ref().filter(|n| n.id_only());
    let natural = sort_spec.as_ref().is_some_and(|s| s.len() == 1 && s[0].0 == "$natural")
        || matches!(o.hint, Some(Bson::Document(h)) if h.contains_key("$natural"));
    let limit_early = if sort_spec.is_none() || id_sort.is_some() {
        if o.limit > 0 { Some(o.skip + o.limit) } else { None }
    } else {
        None
    };
    let mut hits: Vec<Hit> = Vec::new();
    let want = |hits: &Vec<Hit>| limit_early.is_none_or(|l| hits.len() < l);
    let consider = |rid: u64, d: &Doc, hits: &mut Vec<Hit>| -> Result<()> {
        match &node {
            None => hits.push(Hit { rid, doc: Arc::clone(d), decoded: None, pos: None }),
            Some(n) => {
                if let Some(id) = id_node.and_then(|_| raw_id(d)) {
                    if n.matches_id(&id, vars) {
                        hits.push(Hit { rid, doc: Arc::clone(d), decoded: None, pos: None });
                    }
                    return Ok(());
                }
                let dec = d.to_document()?;
                let (m, pos) = n.matches_pos(&dec, vars);
                if m {
                    hits.push(Hit { rid, doc: Arc::clone(d), decoded: Some(dec), pos });
                }
            }
        }
        Ok(())
    };
    let bounds_ok = |id: &Bson| -> bool {
        if let Some(m) = o.min.and_then(|m| m.get("_id"))
            && compare(id, m) == std::cmp::Ordering::Less
        {
            return false;
        }
        if let Some(m) = o.max.and_then(|m| m.get("_id"))
            && compare(id, m) != std::cmp::Ordering::Less
        {
            return false;
        }
        true
    };
    let id_walk = c.id_indexed() && !natural && id_node.is_some();
    let use_ids = c.id_indexed() && (id_sort.is_some() || o.min.is_some() || o.max.is_some());
    if let (true, Some(n)) = (id_walk, id_node) {
        for (k, rid) in n.id_keys().walk(&c.ids, id_sort == Some(false)) {
            if !want(&hits) {
                break;
            }
            if bounds_ok(&k.0)
                && n.matches_id(&k.0, vars)
                && let Some(d) = c.records.get(rid)
            {
                hits.push(Hit { rid: *rid, doc: Arc::clone(d), decoded: None, pos: None });
            }
        }
    } else if use_ids {
        let iter: Box<dyn Iterator<Item = (&Key, &u64)>> =
            if id_sort == Some(false) { Box::new(c.ids.iter().rev()) } else { Box::new(c.ids.iter()) };
        for (k, rid) in iter {
            if !want(&hits) {
                break;
            }
            if !bounds_ok(&k.0) {
                continue;
            }
            if let Some(d) = c.records.get(rid) {
                consider(*rid, d, &mut hits)?;
            }
        }
    } else {
        let natural_rev = matches!(o.sort.and_then(|s| s.get("$natural")).and_then(as_i64), Some(-1))
            || matches!(o.hint, Some(Bson::Document(h)) if h.get("$natural").and_then(as_i64) == Some(-1));
        let iter: Box<dyn Iterator<Item = (&u64, &Doc)>> =
            if natural_rev { Box::new(c.records.iter().rev()) } else { Box::new(c.records.iter()) };
        for (rid, d) in iter {
            if !want(&hits) {
                break;
            }
            consider(*rid, d, &mut hits)?;
        }
    }
    if let Some(spec) = &sort_spec
        && id_sort.is_none()
        && !(spec.len() == 1 && spec[0].0 == "$natural")
    {
        aggregate::sort_by(&mut hits, spec, |h| match &h.decoded {
            Some(d) => d.clone(),
            None => h.doc.to_document().unwrap_or_default(),
        });
    }
    let mut hits: Vec<Hit> = hits.into_iter().skip(o.skip).collect();
    if !o.keep_decoded {
        for h in &mut hits {
            h.decoded = None;
        }
    }
    Ok(if o.limit > 0 { hits.into_iter().take(o.limit).collect() } else { hits })
}

/// Gets the documents to insert from the command (document sequence or array).
fn docs_arg(ctx: &mut Ctx, field: &str) -> Result<Vec<RawDocumentBuf>> {
    if let Some(v) = ctx.seqs.remove(field) {
        return Ok(v);
    }
    match ctx.cmd.get(field) {
        Some(Bson::Array(a)) => a
            .iter()
            .map(|d| match d {
                Bson::Document(d) => Ok(RawDocumentBuf::from_document(d)?),
                _ => Err(Error::type_mismatch(format!("{field} entries must be objects"))),
            })
            .collect(),
        _ => Err(Error::new(40414, format!("BSON field '{}.{field}' is missing but a required field", ctx.name))),
    }
}

fn ops_arg(ctx: &mut Ctx, field: &str) -> Result<Vec<Document>> {
    if let Some(v) = ctx.seqs.remove(field) {
        return v.iter().map(|d| Ok(d.to_document()?)).collect();
    }
    match ctx.cmd.remove(field) {
        Some(Bson::Array(a)) => a
            .into_iter()
            .map(|d| match d {
                Bson::Document(d) => Ok(d),
                _ => Err(Error::type_mismatch("entries must be objects")),
            })
            .collect(),
        _ => Err(Error::new(40414, format!("BSON field '{}.{field}' is missing but a required field", ctx.name))),
    }
}

fn ensure_id(doc: RawDocumentBuf) -> Result<RawDocumentBuf> {
    match doc.get("_id")? {
        Some(bson::RawBsonRef::Document(d)) => {
            for el in d.iter() {
                let (k, _) = el?;
                if k.starts_with('$') {
                    return Err(Error::new(
                        52,
                        format!("_id fields may not contain '$'-prefixed fields: {k} is not valid for storage."),
                    ));
                }
            }
            Ok(doc)
        }
        Some(bson::RawBsonRef::Array(_)) => Err(Error::new(53, "The '_id' value cannot be of type array")),
        Some(bson::RawBsonRef::RegularExpression(_)) => Err(Error::new(53, "can't use a regex for _id")),
        Some(_) => Ok(doc),
        None => {
            let mut out = RawDocumentBuf::new();
            out.append("_id", ObjectId::new());
            for el in doc.iter() {
                let (k, v) = el?;
                out.append_ref(k, v);
            }
            Ok(out)
        }
    }
}

fn validate(c: &Collection, doc: &Document, bypass: bool, old: Option<&Document>) -> Result<()> {
    if bypass {
        return Ok(());
    }
    let Ok(validator) = c.options.get_document("validator") else { return Ok(()) };
    if validator.is_empty() {
        return Ok(());
    }
    let level = c.options.get_str("validationLevel").unwrap_or("strict");
    let action = c.options.get_str("validationAction").unwrap_or("error");
    if level == "off" || action == "warn" {
        return Ok(());
    }
    let node = query::compile(validator)?;
    if level == "moderate"
        && let Some(o) = old
        && !node.matches(o, &Vars::default())
    {
        return Ok(());
    }
    if node.matches(doc, &Vars::default()) {
        return Ok(());
    }
    Err(Error::new(121, "Document failed validation").with_extra(doc! {"errInfo": {"failingDocumentId": doc.get("_id").cloned().unwrap_or(Bson::Null), "details": {"operatorName": "$jsonSchema", "schemaRulesNotSatisfied": []}}}))
}

fn images_enabled(c: &Collection) -> bool {
    c.options
        .get_document("changeStreamPreAndPostImages")
        .ok()
        .and_then(|d| d.get_bool("enabled").ok())
        .unwrap_or(false)
}

/// Inserts one document through a scope (implicit create, validation, oplog op).
pub fn insert_one(sc: &mut Scope, db: &str, coll: &str, doc: RawDocumentBuf, bypass: bool) -> Result<Bson> {
    let doc = ensure_id(doc)?;
    if doc.as_bytes().len() > 16 * 1024 * 1024 {
        return Err(Error::new(
            10334,
            format!("object to insert too large. size in bytes: {}, max size: 16777216", doc.as_bytes().len()),
        ));
    }
    let ns = format!("{db}.{coll}");
    let c = sc.coll_for_write(db, coll)?;
    if c.options.contains_key("validator") && !bypass {
        validate(c, &doc.to_document()?, bypass, None)?;
    }
    let arc = Arc::new(doc);
    let uuid = c.uuid;
    c.insert(&ns, Arc::clone(&arc))?;
    let id = arc
        .get("_id")?
        .map(|v| Bson::try_from(v.to_raw_bson()))
        .transpose()
        .map_err(|e| Error::new(22, e.to_string()))?
        .unwrap_or(Bson::Null);
    sc.ops.push(Pending { db: db.into(), coll: coll.into(), uuid: Some(uuid), kind: Kind::Insert { doc: arc } });
    Ok(id)
}

/// `insert`.
pub fn insert(ctx: &mut Ctx, st: &mut State) -> Result<Reply> {
    let coll = ctx.target()?;
    let docs = docs_arg(ctx, "documents")?;
    let ordered = ctx.cmd.get_bool("ordered").unwrap_or(true);
    let bypass = ctx.cmd.get_bool("bypassDocumentValidation").unwrap_or(false);
    let db = ctx.db.clone();
    let (n, errors) = with_scope(ctx, st, |sc| {
        let mut n = 0;
        let mut errors = Vec::new();
        for (i, d) in docs.into_iter().enumerate() {
            match insert_one(sc, &db, &coll, d, bypass) {
                Ok(_) => n += 1,
                Err(e) => {
                    if matches!(e.code(), 166 | 73) {
                        return Err(e);
                    }
                    errors.push(Bson::Document(e.to_write_error(i)));
                    if ordered {
                        break;
                    }
                }
            }
        }
        Ok((n, errors))
    })?;
    let mut d = doc! {"n": n};
    if !errors.is_empty() {
        d.insert("writeErrors", errors);
    }
    Ok(Reply::Doc(d))
}

/// Outcome of applying one update statement.
pub struct UpdateResult {
    /// Matched count.
    pub n: i64,
    /// Modified count.
    pub modified: i64,
    /// Upserted `_id`.
    pub upserted: Option<Bson>,
    /// Documents before the change (findAndModify).
    pub before: Option<Document>,
    /// Documents after the change (findAndModify).
    pub after: Option<Document>,
}

/// Parameters of one update statement.
pub struct UpdateSpec<'a> {
    /// Filter.
    pub q: &'a Document,
    /// The update.
    pub u: &'a UpdateKind,
    /// Update all matches.
    pub multi: bool,
    /// Insert when nothing matches.
    pub upsert: bool,
    /// Array filters.
    pub af: &'a update::ArrayFilters,
    /// Hint.
    pub hint: Option<&'a Bson>,
    /// Sort (findAndModify / updateOne with sort).
    pub sort: Option<&'a Document>,
    /// Skip validation.
    pub bypass: bool,
    /// Variables.
    pub vars: &'a Vars,
}

/// Applies one update statement.
pub fn update_one_stmt(sc: &mut Scope, db: &str, coll: &str, s: &UpdateSpec) -> Result<UpdateResult> {
    let ns = format!("{db}.{coll}");
    if let UpdateKind::Replace(_) = s.u
        && s.multi
    {
        return Err(Error::parse("multi update is not supported for replacement-style update"));
    }
    let hits = match sc.coll(db, coll) {
        Some(c) => {
            if c.view.is_some() {
                return Err(Error::new(166, format!("Namespace {ns} is a view, not a collection")));
            }
            scan(
                c,
                &ScanOpts {
                    filter: Some(s.q),
                    sort: s.sort,
                    limit: if s.multi { 0 } else { 1 },
                    vars: Some(s.vars),
                    hint: s.hint,
                    keep_decoded: true,
                    ..Default::default()
                },
            )?
        }
        None => {
            check_hint(None, s.hint)?;
            Vec::new()
        }
    };
    let mut res = UpdateResult { n: 0, modified: 0, upserted: None, before: None, after: None };
    if hits.is_empty() {
        if !s.upsert {
            return Ok(res);
        }
        let seed = match s.u {
            UpdateKind::Replace(_) => {
                let mut d = Document::new();
                if let Some(id) = update::upsert_seed(s.q)?.get("_id") {
                    d.insert("_id", id.clone());
                }
                d
            }
            _ => update::upsert_seed(s.q)?,
        };
        let (mut newdoc, _) = update::apply(&seed, s.u, true, None, s.af, s.vars)?;
        if let UpdateKind::Replace(r) = s.u {
            newdoc = Document::new();
            if let Some(id) = seed.get("_id").or(r.get("_id")) {
                newdoc.insert("_id", id.clone());
            }
            for (k, v) in r {
                if k != "_id" {
                    newdoc.insert(k.clone(), v.clone());
                }
            }
        }
        if !newdoc.contains_key("_id") {
            let mut d = doc! {"_id": ObjectId::new()};
            d.extend(newdoc);
            newdoc = d;
        } else if newdoc.keys().next().map(String::as_str) != Some("_id") {
            let id = newdoc.remove("_id").unwrap_or(Bson::Null);
            let mut d = doc! {"_id": id};
            d.extend(newdoc);
            newdoc = d;
        }
        if let Some(c) = sc.cat.coll(db, coll) {
            validate(c, &newdoc, s.bypass, None)?;
        }
        let id = insert_one(sc, db, coll, RawDocumentBuf::from_document(&newdoc)?, true)?;
        res.upserted = Some(id);
        res.after = Some(newdoc);
        return Ok(res);
    }
    for h in hits {
        let old = match h.decoded {
            Some(d) => d,
            None => h.doc.to_document()?,
        };
        res.n += 1;
        let (newdoc, tracker) = update::apply(&old, s.u, false, h.pos, s.af, s.vars)?;
        let new_raw = RawDocumentBuf::from_document(&newdoc)?;
        if new_raw.as_bytes() == h.doc.as_bytes() {
            if res.before.is_none() {
                res.before = Some(old);
                res.after = Some(newdoc);
            }
            continue;
        }
        if new_raw.as_bytes().len() > 16 * 1024 * 1024 {
            return Err(Error::new(17419, "Resulting document after update is larger than 16777216"));
        }
        let c = sc.coll_for_write(db, coll)?;
        validate(c, &newdoc, s.bypass, Some(&old))?;
        let images = images_enabled(c);
        let uuid = c.uuid;
        let arc = Arc::new(new_raw);
        let prev = c.replace(&ns, h.rid, Arc::clone(&arc))?;
        let id = old.get("_id").cloned().unwrap_or(Bson::Null);
        let pre = if images { Some(Arc::clone(&prev)) } else { None };
        let kind = match s.u {
            UpdateKind::Replace(_) => Kind::Replace { id, doc: Arc::clone(&arc), pre, before: prev },
            _ => Kind::Update {
                id,
                desc: tracker.description(&newdoc, true),
                pre,
                post: Arc::clone(&arc),
                images,
                before: prev,
            },
        };
        sc.ops.push(Pending { db: db.into(), coll: coll.into(), uuid: Some(uuid), kind });
        res.modified += 1;
        if res.before.is_none() {
            res.before = Some(old);
            res.after = Some(newdoc);
        }
    }
    Ok(res)
}

/// `update`.
pub fn update(ctx: &mut Ctx, st: &mut State) -> Result<Reply> {
    let coll = ctx.target()?;
    let stmts = ops_arg(ctx, "updates")?;
    let ordered = ctx.cmd.get_bool("ordered").unwrap_or(true);
    let bypass = ctx.cmd.get_bool("bypassDocumentValidation").unwrap_or(false);
    let vars = Vars::from_let(ctx.cmd.get_document("let").ok())?;
    if stmts.iter().any(|s| s.contains_key("sort")) {
        return Err(Error::new(40415, "BSON field 'update.updates.sort' is an unknown field."));
    }
    let db = ctx.db.clone();
    let (n, nmod, upserted, errors) = with_scope(ctx, st, |sc| {
        let (mut n, mut nmod) = (0i64, 0i64);
        let mut upserted = Vec::new();
        let mut errors = Vec::new();
        for (i, mut stmt) in stmts.into_iter().enumerate() {
            let u_value = stmt.remove("u");
            let r = (|| -> Result<UpdateResult> {
                let q = stmt
                    .get_document("q")
                    .map_err(|_| Error::new(40414, "BSON field 'update.updates.q' is missing but a required field"))?;
                let u = UpdateKind::parse_owned(u_value.ok_or_else(|| {
                    Error::new(40414, "BSON field 'update.updates.u' is missing but a required field")
                })?)?;
                let af = update::compile_array_filters(stmt.get_array("arrayFilters").ok())?;
                let mut vars = vars.clone();
                if let Ok(c) = stmt.get_document("c") {
                    for (k, v) in c {
                        vars.0.insert(k.clone(), v.clone());
                    }
                }
                let collation = stmt.get_document("collation").ok();
                let run = |sc: &mut Scope| {
                    update_one_stmt(
                        sc,
                        &db,
                        &coll,
                        &UpdateSpec {
                            q,
                            u: &u,
                            multi: stmt.get_bool("multi").unwrap_or(false),
                            upsert: stmt.get_bool("upsert").unwrap_or(false),
                            af: &af,
                            hint: stmt.get("hint"),
                            sort: stmt.get_document("sort").ok(),
                            bypass,
                            vars: &vars,
                        },
                    )
                };
                if collation.is_some() {
                    crate::bson_order::with_statement_collation(collation, || run(sc))
                } else {
                    run(sc)
                }
            })();
            match r {
                Ok(r) => {
                    n += r.n;
                    nmod += r.modified;
                    if let Some(id) = r.upserted {
                        n += 1;
                        upserted.push(Bson::Document(doc! {"index": i as i32, "_id": id}));
                    }
                }
                Err(e) => {
                    if matches!(e.code(), 166) {
                        return Err(e);
                    }
                    errors.push(Bson::Document(e.to_write_error(i)));
                    if ordered {
                        break;
                    }
                }
            }
        }
        Ok((n, nmod, upserted, errors))
    })?;
    let mut d = doc! {"n": n as i32, "nModified": nmod as i32};
    if !upserted.is_empty() {
        d.insert("upserted", upserted);
    }
    if !errors.is_empty() {
        d.insert("writeErrors", errors);
    }
    Ok(Reply::Doc(d))
}

/// Deletes matching documents.
#[allow(clippy::too_many_arguments)]
pub fn delete_stmt(
    sc: &mut Scope,
    db: &str,
    coll: &str,
    q: &Document,
    limit_one: bool,
    hint: Option<&Bson>,
    sort: Option<&Document>,
    vars: &Vars,
) -> Result<Vec<Document>> {
    let ns = format!("{db}.{coll}");
    let hits = match sc.coll(db, coll) {
        Some(c) => {
            if c.view.is_some() {
                return Err(Error::new(166, format!("Namespace {ns} is a view, not a collection")));
            }
            scan(
                c,
                &ScanOpts {
                    filter: Some(q),
                    sort,
                    limit: if limit_one { 1 } else { 0 },
                    vars: Some(vars),
                    hint,
                    keep_decoded: true,
                    ..Default::default()
                },
            )?
        }
        None => {
            check_hint(None, hint)?;
            return Ok(Vec::new());
        }
    };
    let mut removed = Vec::new();
    if hits.is_empty() {
        return Ok(removed);
    }
    let c = sc.coll_for_write(db, coll)?;
    if c.capped() {
        return Err(Error::new(20, format!("cannot remove from a capped collection: {ns}")).with_extra(doc! {}));
    }
    let images = images_enabled(c);
    let uuid = c.uuid;
    let mut ops = Vec::new();
    for h in hits {
        if let Some(old) = c.remove_rid(h.rid)? {
            let dec = match h.decoded {
                Some(d) => d,
                None => old.to_document()?,
            };
            let id = dec.get("_id").cloned().unwrap_or(Bson::Null);
            ops.push(Pending {
                db: db.into(),
                coll: coll.into(),
                uuid: Some(uuid),
                kind: Kind::Delete { id, pre: if images { Some(Arc::clone(&old)) } else { None }, before: old },
            });
            removed.push(dec);
        }
    }
    sc.ops.extend(ops);
    Ok(removed)
}

/// `delete`.
pub fn delete(ctx: &mut Ctx, st: &mut State) -> Result<Reply> {
    let coll = ctx.target()?;
    let stmts = ops_arg(ctx, "deletes")?;
    let ordered = ctx.cmd.get_bool("ordered").unwrap_or(true);
    let vars = Vars::from_let(ctx.cmd.get_document("let").ok())?;
    let db = ctx.db.clone();
    let (n, errors) = with_scope(ctx, st, |sc| {
        let mut n = 0i64;
        let mut errors = Vec::new();
        for (i, stmt) in stmts.iter().enumerate() {
            let r = (|| -> Result<usize> {
                let q = stmt
                    .get_document("q")
                    .map_err(|_| Error::new(40414, "BSON field 'delete.deletes.q' is missing but a required field"))?;
                let limit = stmt.get("limit").and_then(as_i64).ok_or_else(|| {
                    Error::new(40414, "BSON field 'delete.deletes.limit' is missing but a required field")
                })?;
                if limit != 0 && limit != 1 {
                    return Err(Error::new(
                        9,
                        format!("The limit field in delete objects must be 0 or 1. Got {limit}"),
                    ));
                }
                let collation = stmt.get_document("collation").ok();
                let run = |sc: &mut Scope| delete_stmt(sc, &db, &coll, q, limit == 1, stmt.get("hint"), None, &vars);
                let removed = if collation.is_some() {
                    crate::bson_order::with_statement_collation(collation, || run(sc))?
                } else {
                    run(sc)?
                };
                Ok(removed.len())
            })();
            match r {
                Ok(k) => n += k as i64,
                Err(e) => {
                    errors.push(Bson::Document(e.to_write_error(i)));
                    if ordered {
                        break;
                    }
                }
            }
        }
        Ok((n, errors))
    })?;
    let mut d = doc! {"n": n as i32};
    if !errors.is_empty() {
        d.insert("writeErrors", errors);
    }
    Ok(Reply::Doc(d))
}

/// `findAndModify`.
pub fn find_and_modify(ctx: &mut Ctx, st: &mut State) -> Result<Reply> {
    let coll = ctx.target()?;
    let cmd = ctx.cmd.clone();
    let q = cmd.get_document("query").cloned().unwrap_or_default();
    let sort = cmd.get_document("sort").ok().cloned();
    let remove = cmd.get_bool("remove").unwrap_or(false);
    let new = cmd.get_bool("new").unwrap_or(false);
    let upsert = cmd.get_bool("upsert").unwrap_or(false);
    let fields = cmd.get_document("fields").ok().cloned();
    let bypass = cmd.get_bool("bypassDocumentValidation").unwrap_or(false);
    let vars = Vars::from_let(cmd.get_document("let").ok())?;
    let hint = cmd.get("hint").cloned();
    if remove && (cmd.contains_key("update") || upsert || new) {
        return Err(Error::parse("Cannot specify both an update and remove=true"));
    }
    if !remove && !cmd.contains_key("update") {
        return Err(Error::parse("Either an update or remove=true must be specified"));
    }
    let db = ctx.db.clone();
    let proj = match &fields {
        Some(f) if !f.is_empty() => Some(crate::projection::Projection::compile(f, true)?),
        _ => None,
    };
    let (value, leo) = with_scope(ctx, st, |sc| {
        if remove {
            let removed = delete_stmt(sc, &db, &coll, &q, true, hint.as_ref(), sort.as_ref(), &vars)?;
            let n = removed.len() as i32;
            Ok((removed.into_iter().next(), doc! {"n": n}))
        } else {
            let u = UpdateKind::parse(cmd.get("update").unwrap_or(&Bson::Null))?;
            let af = update::compile_array_filters(cmd.get_array("arrayFilters").ok())?;
            let r = update_one_stmt(
                sc,
                &db,
                &coll,
                &UpdateSpec {
                    q: &q,
                    u: &u,
                    multi: false,
                    upsert,
                    af: &af,
                    hint: hint.as_ref(),
                    sort: sort.as_ref(),
                    bypass,
                    vars: &vars,
                },
            )?;
            let mut leo = doc! {"n": (r.n + r.upserted.is_some() as i64) as i32, "updatedExisting": r.n > 0};
            if let Some(id) = &r.upserted {
                leo.insert("upserted", id.clone());
            }
            let v = if new {
                r.after
            } else if r.upserted.is_some() {
                None
            } else {
                r.before
            };
            Ok((v, leo))
        }
    })?;
    let value = match (value, &proj) {
        (Some(v), Some(p)) => Bson::Document(p.apply(&v, None, &vars)?),
        (Some(v), None) => Bson::Document(v),
        (None, _) => Bson::Null,
    };
    Ok(Reply::Doc(doc! {"lastErrorObject": leo, "value": value}))
}

/// Documents of a collection or view, decoded (views run their pipeline).
pub fn read_all(st_cat: &crate::storage::Catalog, db: &str, coll: &str, depth: usize) -> Result<Vec<Document>> {
    let Some(c) = st_cat.coll(db, coll) else { return Ok(Vec::new()) };
    if let Some(v) = &c.view {
        if depth > 20 {
            return Err(Error::new(1, "view recursion too deep"));
        }
        let base = read_all(st_cat, db, &v.view_on, depth + 1)?;
        let src = CatalogSource(st_cat);
        let env = aggregate::Env { db, source: &src, vars: Vars::default() };
        return aggregate::run(base, &v.pipeline, &env);
    }
    c.records.values().map(|d| Ok(d.to_document()?)).collect()
}

/// `$lookup` source over a catalog.
pub struct CatalogSource<'a>(pub &'a crate::storage::Catalog);

impl aggregate::Source for CatalogSource<'_> {
    fn read(&self, db: &str, coll: &str) -> Result<Vec<Document>> {
        read_all(self.0, db, coll, 0)
    }
}

/// `count`.
pub fn count(ctx: &mut Ctx, st: &mut State) -> Result<Reply> {
    let coll = ctx.target()?;
    let q = ctx.cmd.get_document("query").cloned().unwrap_or_default();
    let skip = ctx.cmd.get("skip").and_then(as_i64).unwrap_or(0).max(0) as usize;
    let limit = ctx.cmd.get("limit").and_then(as_i64).unwrap_or(0).unsigned_abs() as usize;
    let hint = ctx.cmd.get("hint").cloned();
    let db = ctx.db.clone();
    let n = with_scope(ctx, st, |sc| {
        let Some(c) = sc.coll(&db, &coll) else {
            check_hint(None, hint.as_ref()).ok();
            return Ok(0usize);
        };
        if c.view.is_some() {
            let cat = &*sc.cat;
            let docs = read_all(cat, &db, &coll, 0)?;
            let node = query::compile(&q)?;
            let n = docs.iter().filter(|d| node.matches(d, &Vars::default())).count();
            return Ok(n.saturating_sub(skip).min(if limit > 0 { limit } else { usize::MAX }));
        }
        if q.is_empty() && hint.is_none() {
            let n = c.count().saturating_sub(skip);
            return Ok(if limit > 0 { n.min(limit) } else { n });
        }
        Ok(scan(c, &ScanOpts { filter: Some(&q), skip, limit, hint: hint.as_ref(), ..Default::default() })?.len())
    })?;
    Ok(Reply::Doc(doc! {"n": n as i32}))
}

/// `distinct`.
pub fn distinct(ctx: &mut Ctx, st: &mut State) -> Result<Reply> {
    let coll = ctx.target()?;
    let key = ctx
        .cmd
        .get_str("key")
        .map_err(|_| Error::new(40414, "BSON field 'distinct.key' is missing but a required field"))?
        .to_string();
    let q = ctx.cmd.get_document("query").cloned().unwrap_or_default();
    let hint = ctx.cmd.get("hint").cloned();
    let db = ctx.db.clone();
    let values = with_scope(ctx, st, |sc| {
        let docs: Vec<Document> = match sc.coll(&db, &coll) {
            None => Vec::new(),
            Some(c) if c.view.is_some() => {
                let cat = &*sc.cat;
                let node = query::compile(&q)?;
                read_all(cat, &db, &coll, 0)?.into_iter().filter(|d| node.matches(d, &Vars::default())).collect()
            }
            Some(c) => {
                scan(c, &ScanOpts { filter: Some(&q), hint: hint.as_ref(), keep_decoded: true, ..Default::default() })?
                    .into_iter()
                    .map(|h| h.decoded.map(Ok).unwrap_or_else(|| h.doc.to_document().map_err(Error::from)))
                    .collect::<Result<_>>()?
            }
        };
        let mut out: Vec<Bson> = Vec::new();
        for d in &docs {
            for c in query::candidates(d, &key) {
                let Some(v) = c.v else { continue };
                if matches!(v, Bson::Array(_)) && !c.expanded {
                    continue;
                }
                if !out
                    .iter()
                    .any(|o| values_equal(o, v) && crate::bson_order::type_rank(o) == crate::bson_order::type_rank(v))
                {
                    out.push(v.clone());
                }
            }
        }
        out.sort_by(compare);
        Ok(out)
    })?;
    Ok(Reply::Doc(doc! {"values": values}))
}
