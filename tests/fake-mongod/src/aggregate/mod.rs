//! Aggregation pipelines over decoded documents: `$match $project $addFields $set $unset
//! $sort $skip $limit $group $count $sample $bucketAuto $unwind $replaceRoot $replaceWith
//! $lookup $unionWith $facet $sortByCount $documents`. `$out`/`$merge`, `$collStats` and
//! `$changeStream` are handled by the command layer.

pub mod expr;

use std::cmp::Ordering;

use bson::{Bson, Document, doc};

use crate::bson_order::{as_i64, compare, values_equal};
use crate::error::{Error, Result};
use crate::projection::Projection;
use crate::query;
use expr::{MISSING, Vars, eval};

/// Access to other collections for `$lookup` / `$unionWith`.
pub trait Source {
    /// All documents of `db.coll` (empty if missing; views resolved).
    fn read(&self, db: &str, coll: &str) -> Result<Vec<Document>>;
}

/// A source with no collections.
pub struct NoSource;

impl Source for NoSource {
    fn read(&self, _db: &str, _coll: &str) -> Result<Vec<Document>> {
        Ok(Vec::new())
    }
}

/// Pipeline context.
pub struct Env<'a> {
    /// The database the pipeline runs in.
    pub db: &'a str,
    /// Other collections.
    pub source: &'a dyn Source,
    /// Variables (`let`).
    pub vars: Vars,
}

fn stage_name(st: &Document) -> Result<(&str, &Bson)> {
    if st.len() != 1 {
        return Err(Error::new(40323, "A pipeline stage specification object must contain exactly one field."));
    }
    let (k, v) = st.iter().next().ok_or_else(|| Error::new(40323, "empty stage"))?;
    Ok((k.as_str(), v))
}

/// Sort key extraction with array semantics (min element ascending, max descending).
pub fn sort_key(doc: &Document, path: &str, asc: bool) -> Bson {
    let cands = query::candidates(doc, path);
    let mut best: Option<Bson> = None;
    let mut any_array = false;
    for c in &cands {
        let Some(v) = c.v else { continue };
        if let Bson::Array(a) = v {
            any_array = true;
            if a.is_empty() && best.is_none() {
                best = Some(Bson::Undefined);
            }
            continue;
        }
        best = Some(match best {
            None | Some(Bson::Undefined) => v.clone(),
            Some(b) => {
                let o = compare(v, &b);
                if (asc && o == Ordering::Less) || (!asc && o == Ordering::Greater) { v.clone() } else { b }
            }
        });
    }
    let _ = any_array;
    match best {
        Some(Bson::Undefined) => Bson::Undefined,
        Some(v) => v,
        None => Bson::Null,
    }
}

/// A parsed sort specification.
pub type SortSpec = Vec<(String, bool)>;

/// Parses `{a: 1, b: -1}`.
pub fn parse_sort(spec: &Document) -> Result<SortSpec> {
    let mut out = Vec::new();
    for (k, v) in spec {
        let asc = match v {
            Bson::Document(d) if d.contains_key("$meta") => true,
            other => match as_i64(other) {
                Some(1) => true,
                Some(-1) => false,
                _ => {
                    return Err(Error::bad_value(
                        "$sort key ordering must be 1 (for ascending) or -1 (for descending)",
                    ));
                }
            },
        };
        out.push((k.clone(), asc));
    }
    Ok(out)
}

fn cmp_sort_keys(a: &[Bson], b: &[Bson], spec: &SortSpec) -> Ordering {
    for (i, (_, asc)) in spec.iter().enumerate() {
        let (x, y) = (&a[i], &b[i]);
        // empty arrays (Undefined marker) sort before null
        let o = match (x, y) {
            (Bson::Undefined, Bson::Undefined) => Ordering::Equal,
            (Bson::Undefined, _) => Ordering::Less,
            (_, Bson::Undefined) => Ordering::Greater,
            _ => compare(x, y),
        };
        let o = if *asc { o } else { o.reverse() };
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}

/// Sorts items by a spec, using `get` to reach each item's document (stable).
pub fn sort_by<T>(items: &mut Vec<T>, spec: &SortSpec, get: impl Fn(&T) -> Document) {
    let mut keyed: Vec<(Vec<Bson>, T)> = items
        .drain(..)
        .map(|it| {
            let d = get(&it);
            (spec.iter().map(|(p, asc)| sort_key(&d, p, *asc)).collect(), it)
        })
        .collect();
    keyed.sort_by(|a, b| cmp_sort_keys(&a.0, &b.0, spec));
    items.extend(keyed.into_iter().map(|(_, it)| it));
}

/// Runs a stage that needs no other collections (used by pipeline updates and change streams).
pub fn run_simple_stage(st: &Document, docs: Vec<Document>, vars: &Vars) -> Result<Vec<Document>> {
    let env = Env { db: "", source: &NoSource, vars: vars.clone() };
    run_stage(st, docs, &env)
}

/// Runs a whole pipeline.
pub fn run(docs: Vec<Document>, stages: &[Document], env: &Env) -> Result<Vec<Document>> {
    let mut docs = docs;
    for st in stages {
        docs = run_stage(st, docs, env)?;
    }
    Ok(docs)
}

fn set_path(d: &mut Document, path: &str, v: Bson) {
    let mut parts = path.splitn(2, '.');
    let head = parts.next().unwrap_or("");
    match parts.next() {
        None => {
            d.insert(head, v);
        }
        Some(rest) => {
            let mut sub = match d.get(head) {
                Some(Bson::Document(s)) => s.clone(),
                _ => Document::new(),
            };
            set_path(&mut sub, rest, v);
            d.insert(head, sub);
        }
    }
}

fn add_fields(d: Document, spec: &Document, vars: &Vars) -> Result<Document> {
    let root = Bson::Document(d.clone());
    let mut out = d;
    for (k, e) in spec {
        let v = eval(e, &root, vars)?;
        if matches!(v, Bson::Undefined) {
            let parts: Vec<&str> = k.split('.').collect();
            if parts.len() == 1 {
                out.remove(k);
            }
            continue;
        }
        match (e, out.get(k)) {
            (Bson::Document(ed), Some(Bson::Document(existing)))
                if !ed.keys().next().is_some_and(|x| x.starts_with('$')) =>
            {
                let mut merged = existing.clone();
                if let Bson::Document(vd) = v {
                    for (kk, vv) in vd {
                        merged.insert(kk, vv);
                    }
                }
                out.insert(k.clone(), merged);
            }
            _ => set_path(&mut out, k, v),
        }
    }
    Ok(out)
}

struct Acc {
    op: String,
    expr: Bson,
    vals: Vec<Bson>,
    first: Option<Bson>,
    last: Option<Bson>,
    count: i64,
}

fn run_stage(st: &Document, docs: Vec<Document>, env: &Env) -> Result<Vec<Document>> {
    let (name, arg) = stage_name(st)?;
    let vars = &env.vars;
    Ok(match name {
        "$match" => {
            let f = arg
                .as_document()
                .ok_or_else(|| Error::new(15959, "the match filter must be an expression in an object"))?;
            let node = query::compile(f)?;
            docs.into_iter().filter(|d| node.matches(d, vars)).collect()
        }
        "$project" => {
            let spec =
                arg.as_document().ok_or_else(|| Error::new(15969, "$project specification must be an object"))?;
            if spec.is_empty() {
                return Err(Error::new(
                    51272,
                    "Invalid $project :: caused by :: projection specification must have at least one field",
                ));
            }
            let p = Projection::compile(spec, false)?;
            docs.iter().map(|d| p.apply(d, None, vars)).collect::<Result<_>>()?
        }
        "$addFields" | "$set" => {
            let spec = arg
                .as_document()
                .ok_or_else(|| Error::new(40272, format!("{name} specification stage must be an object")))?;
            docs.into_iter().map(|d| add_fields(d, spec, vars)).collect::<Result<_>>()?
        }
        "$unset" => {
            let fields: Vec<String> = match arg {
                Bson::String(s) => vec![s.clone()],
                Bson::Array(a) => a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect(),
                _ => return Err(Error::new(31002, "$unset specification must be a string or an array")),
            };
            let mut spec = Document::new();
            for f in fields {
                spec.insert(f, 0);
            }
            let p = Projection::compile(&spec, false)?;
            docs.iter().map(|d| p.apply(d, None, vars)).collect::<Result<_>>()?
        }
        "$replaceRoot" | "$replaceWith" => {
            let e = if name == "$replaceRoot" {
                arg.as_document()
                    .and_then(|d| d.get("newRoot"))
                    .cloned()
                    .ok_or_else(|| Error::new(40231, "no newRoot specified for the $replaceRoot stage"))?
            } else {
                arg.clone()
            };
            let mut out = Vec::new();
            for d in docs {
                match eval(&e, &Bson::Document(d.clone()), vars)? {
                    Bson::Document(nd) => out.push(nd),
                    other => {
                        return Err(Error::new(
                            40228,
                            format!(
                                "'newRoot' expression must evaluate to an object, but resulting value was: {}. Type of resulting value: '{}'. Input document: {}",
                                crate::storage::shell_fmt(&other),
                                if matches!(other, Bson::Undefined) {
                                    "missing"
                                } else {
                                    crate::bson_order::type_alias(&other)
                                },
                                crate::storage::shell_fmt(&Bson::Document(d))
                            ),
                        ));
                    }
                }
            }
            out
        }
        "$sort" => {
            let spec = parse_sort(
                arg.as_document().ok_or_else(|| Error::new(15973, "the $sort key specification must be an object"))?,
            )?;
            let mut docs = docs;
            sort_by(&mut docs, &spec, |d| d.clone());
            docs
        }
        "$skip" => {
            let n =
                as_i64(arg).filter(|n| *n >= 0).ok_or_else(|| Error::new(15956, "invalid argument to $skip stage"))?;
            docs.into_iter().skip(n as usize).collect()
        }
        "$limit" => {
            let n = as_i64(arg).filter(|n| *n > 0).ok_or_else(|| Error::new(15958, "the limit must be positive"))?;
            docs.into_iter().take(n as usize).collect()
        }
        "$count" => {
            let f = arg.as_str().ok_or_else(|| Error::new(40156, "the count field must be a non-empty string"))?;
            if docs.is_empty() { Vec::new() } else { vec![doc! { f: docs.len() as i32 }] }
        }
        "$sample" => {
            let n = arg
                .as_document()
                .and_then(|d| d.get("size"))
                .and_then(as_i64)
                .ok_or_else(|| Error::new(28749, "no size specified to $sample"))?;
            let mut docs = docs;
            use rand::seq::SliceRandom;
            docs.shuffle(&mut rand::rng());
            docs.truncate(n.max(0) as usize);
            docs
        }
        "$unwind" => {
            let (path, idx_field, preserve) = match arg {
                Bson::String(s) => (s.clone(), None, false),
                Bson::Document(d) => (
                    d.get_str("path").map_err(|_| Error::new(28812, "no path specified to $unwind stage"))?.to_string(),
                    d.get_str("includeArrayIndex").ok().map(str::to_string),
                    d.get_bool("preserveNullAndEmptyArrays").unwrap_or(false),
                ),
                _ => {
                    return Err(Error::new(
                        15981,
                        "expected either a string or an object as specification for $unwind stage",
                    ));
                }
            };
            let path = path
                .strip_prefix('$')
                .ok_or_else(|| Error::new(28818, "path option to $unwind stage should be prefixed with a '$'"))?
                .to_string();
            let mut out = Vec::new();
            for d in docs {
                match query::get_path(&d, &path).cloned() {
                    Some(Bson::Array(a)) if !a.is_empty() => {
                        for (i, e) in a.into_iter().enumerate() {
                            let mut nd = d.clone();
                            set_path(&mut nd, &path, e);
                            if let Some(f) = &idx_field {
                                nd.insert(f.clone(), i as i64);
                            }
                            out.push(nd);
                        }
                    }
                    Some(Bson::Array(_)) | None | Some(Bson::Null) if preserve => {
                        let mut nd = d.clone();
                        if matches!(query::get_path(&d, &path), Some(Bson::Array(_))) {
                            let mut parts: Vec<&str> = path.split('.').collect();
                            if parts.len() == 1 {
                                nd.remove(parts.remove(0));
                            }
                        }
                        if let Some(f) = &idx_field {
                            nd.insert(f.clone(), Bson::Null);
                        }
                        out.push(nd);
                    }
                    Some(Bson::Array(_)) | None | Some(Bson::Null) => {}
                    Some(_) => {
                        let mut nd = d.clone();
                        if let Some(f) = &idx_field {
                            nd.insert(f.clone(), Bson::Null);
                        }
                        out.push(nd);
                    }
                }
            }
            out
        }
        "$group" => group(docs, arg, vars)?,
        "$sortByCount" => {
            let g = doc! {"$group": {"_id": arg.clone(), "count": {"$sum": 1}}};
            let grouped = run_stage(&g, docs, env)?;
            run_stage(&doc! {"$sort": {"count": -1}}, grouped, env)?
        }
        "$bucketAuto" => bucket_auto(docs, arg, vars)?,
        "$bucket" => bucket(docs, arg, vars)?,
        "$lookup" => lookup(docs, arg, env)?,
        "$unionWith" => {
            let (coll, pipeline) = match arg {
                Bson::String(s) => (s.clone(), Vec::new()),
                Bson::Document(d) => (
                    d.get_str("coll").unwrap_or("").to_string(),
                    d.get_array("pipeline")
                        .map(|a| a.iter().filter_map(|x| x.as_document().cloned()).collect())
                        .unwrap_or_default(),
                ),
                _ => return Err(Error::bad_value("$unionWith needs a string or an object")),
            };
            let mut docs = docs;
            let other = env.source.read(env.db, &coll)?;
            docs.extend(run(other, &pipeline, env)?);
            docs
        }
        "$facet" => {
            let spec = arg.as_document().ok_or_else(|| Error::new(15955, "$facet needs an object"))?;
            let mut out = Document::new();
            for (k, p) in spec {
                let stages: Vec<Document> = p
                    .as_array()
                    .map(|a| a.iter().filter_map(|x| x.as_document().cloned()).collect())
                    .unwrap_or_default();
                let r = run(docs.clone(), &stages, env)?;
                out.insert(k.clone(), r.into_iter().map(Bson::Document).collect::<Vec<_>>());
            }
            vec![out]
        }
        "$documents" => {
            let v = eval(arg, &Bson::Document(Document::new()), vars)?;
            let arr = v
                .as_array()
                .ok_or_else(|| Error::new(5858203, "error during $documents: must evaluate to an array"))?;
            arr.iter().filter_map(|x| x.as_document().cloned()).collect()
        }
        "$redact" => {
            // top-level decision only: $$KEEP and $$DESCEND keep the document, $$PRUNE drops it
            let mut v2 = vars.clone();
            for k in ["KEEP", "PRUNE", "DESCEND"] {
                v2.0.insert(k.to_string(), Bson::String(k.to_string()));
            }
            let mut out = Vec::new();
            for d in docs {
                match eval(arg, &Bson::Document(d.clone()), &v2)? {
                    Bson::String(s) if s == "PRUNE" => {}
                    Bson::String(s) if s == "KEEP" || s == "DESCEND" => out.push(d),
                    _ => {
                        return Err(Error::new(
                            17053,
                            "$redact's expression should not return anything aside from the variables $$KEEP, $$DESCEND, and $$PRUNE",
                        ));
                    }
                }
            }
            out
        }
        "$indexStats" | "$planCacheStats" => Vec::new(),
        "$listSearchIndexes" | "$search" | "$searchMeta" | "$vectorSearch" => {
            return Err(Error::new(31082, format!("{name} stage is only allowed on MongoDB Atlas")));
        }
        "$out" | "$merge" => {
            return Err(Error::new(40601, format!("{name} can only be the final stage in the pipeline")));
        }
        "$changeStream" => {
            return Err(Error::new(40602, "$changeStream is only valid as the first stage in a pipeline"));
        }
        "$collStats" => return Err(Error::new(40602, "$collStats is only valid as the first stage in a pipeline")),
        other => return Err(Error::new(40324, format!("Unrecognized pipeline stage name: '{other}'"))),
    })
}

fn group(docs: Vec<Document>, arg: &Bson, vars: &Vars) -> Result<Vec<Document>> {
    let spec = arg.as_document().ok_or_else(|| Error::new(15947, "a group's fields must be specified in an object"))?;
    let id_expr =
        spec.get("_id").cloned().ok_or_else(|| Error::new(15955, "a group specification must include an _id"))?;
    let mut accs_spec: Vec<(String, String, Bson)> = Vec::new();
    for (k, v) in spec {
        if k == "_id" {
            continue;
        }
        let d = v
            .as_document()
            .filter(|d| d.len() == 1)
            .ok_or_else(|| Error::new(40234, format!("The field '{k}' must be an accumulator object")))?;
        let (op, e) = d.iter().next().ok_or_else(|| Error::new(40234, "empty accumulator"))?;
        if !matches!(
            op.as_str(),
            "$sum"
                | "$avg"
                | "$min"
                | "$max"
                | "$first"
                | "$last"
                | "$push"
                | "$addToSet"
                | "$count"
                | "$mergeObjects"
                | "$stdDevPop"
                | "$stdDevSamp"
        ) {
            return Err(Error::new(15952, format!("unknown group operator '{op}'")));
        }
        accs_spec.push((k.clone(), op.clone(), e.clone()));
    }
    let mut groups: Vec<(Bson, Vec<Acc>)> = Vec::new();
    let mut index: std::collections::BTreeMap<crate::bson_order::Key, usize> = std::collections::BTreeMap::new();
    for d in docs {
        let root = Bson::Document(d);
        let mut key = eval(&id_expr, &root, vars)?;
        if matches!(key, Bson::Undefined) {
            key = Bson::Null;
        }
        let gi = match index.get(&crate::bson_order::Key(key.clone())) {
            Some(i) => *i,
            None => {
                groups.push((
                    key.clone(),
                    accs_spec
                        .iter()
                        .map(|(_, op, e)| Acc {
                            op: op.clone(),
                            expr: e.clone(),
                            vals: Vec::new(),
                            first: None,
                            last: None,
                            count: 0,
                        })
                        .collect(),
                ));
                index.insert(crate::bson_order::Key(key), groups.len() - 1);
                groups.len() - 1
            }
        };
        for acc in &mut groups[gi].1 {
            let v = if acc.op == "$count" { Bson::Int32(1) } else { eval(&acc.expr, &root, vars)? };
            acc.count += 1;
            if acc.first.is_none() {
                acc.first = Some(v.clone());
            }
            acc.last = Some(v.clone());
            match acc.op.as_str() {
                "$first" | "$last" => {}
                "$addToSet" => {
                    if !matches!(v, Bson::Undefined) && !acc.vals.iter().any(|x| values_equal(x, &v)) {
                        acc.vals.push(v);
                    }
                }
                "$push" => {
                    if !matches!(v, Bson::Undefined) {
                        acc.vals.push(v);
                    }
                }
                _ => acc.vals.push(v),
            }
        }
    }
    let mut out = Vec::new();
    for (key, accs) in groups {
        let mut d = doc! {"_id": key};
        for ((name, _, _), acc) in accs_spec.iter().zip(accs) {
            let v = match acc.op.as_str() {
                "$sum" | "$avg" | "$min" | "$max" => expr::accumulate_simple(&acc.op, &acc.vals),
                "$count" => Bson::Int32(acc.count as i32),
                "$first" => {
                    acc.first.map(|v| if matches!(v, Bson::Undefined) { Bson::Null } else { v }).unwrap_or(Bson::Null)
                }
                "$last" => {
                    acc.last.map(|v| if matches!(v, Bson::Undefined) { Bson::Null } else { v }).unwrap_or(Bson::Null)
                }
                "$push" | "$addToSet" => Bson::Array(acc.vals),
                "$mergeObjects" => {
                    let mut m = Document::new();
                    for v in acc.vals {
                        if let Bson::Document(x) = v {
                            m.extend(x);
                        }
                    }
                    Bson::Document(m)
                }
                _ => {
                    let nums: Vec<f64> = acc.vals.iter().filter_map(crate::bson_order::as_f64).collect();
                    let n = nums.len() as f64;
                    if nums.is_empty() || (acc.op == "$stdDevSamp" && nums.len() < 2) {
                        Bson::Null
                    } else {
                        let mean = nums.iter().sum::<f64>() / n;
                        let var = nums.iter().map(|x| (x - mean).powi(2)).sum::<f64>()
                            / if acc.op == "$stdDevSamp" { n - 1.0 } else { n };
                        Bson::Double(var.sqrt())
                    }
                }
            };
            d.insert(name.clone(), v);
        }
        out.push(d);
    }
    Ok(out)
}

fn bucket_auto(docs: Vec<Document>, arg: &Bson, vars: &Vars) -> Result<Vec<Document>> {
    let spec = arg.as_document().ok_or_else(|| Error::new(40240, "$bucketAuto needs an object"))?;
    let group_by = spec
        .get("groupBy")
        .cloned()
        .ok_or_else(|| Error::new(40246, "$bucketAuto requires 'groupBy' and 'buckets' to be specified"))?;
    let n = spec
        .get("buckets")
        .and_then(as_i64)
        .filter(|n| *n > 0)
        .ok_or_else(|| Error::new(40246, "$bucketAuto requires 'groupBy' and 'buckets' to be specified"))?
        as usize;
    let mut keyed: Vec<(Bson, Document)> = docs
        .into_iter()
        .map(|d| {
            let k = eval(&group_by, &Bson::Document(d.clone()), vars).unwrap_or(Bson::Null);
            (if matches!(k, Bson::Undefined) { Bson::Null } else { k }, d)
        })
        .collect();
    keyed.sort_by(|a, b| compare(&a.0, &b.0));
    let total = keyed.len();
    if total == 0 {
        return Ok(Vec::new());
    }
    let per = total.div_ceil(n).max(1);
    let mut buckets: Vec<Vec<(Bson, Document)>> = Vec::new();
    let mut cur: Vec<(Bson, Document)> = Vec::new();
    for item in keyed {
        if cur.len() >= per && !values_equal(&cur[cur.len() - 1].0, &item.0) && buckets.len() + 1 < n {
            buckets.push(std::mem::take(&mut cur));
        }
        cur.push(item);
    }
    if !cur.is_empty() {
        buckets.push(cur);
    }
    let output = spec.get_document("output").ok().cloned();
    let mut out = Vec::new();
    for i in 0..buckets.len() {
        let min = buckets[i][0].0.clone();
        let max = if i + 1 < buckets.len() {
            buckets[i + 1][0].0.clone()
        } else {
            buckets[i][buckets[i].len() - 1].0.clone()
        };
        let docs: Vec<Document> = buckets[i].iter().map(|(_, d)| d.clone()).collect();
        let mut d = doc! {"_id": {"min": min, "max": max}};
        match &output {
            None => {
                d.insert("count", docs.len() as i32);
            }
            Some(o) => {
                let mut gspec = o.clone();
                gspec.insert("_id", Bson::Null);
                let g = group(docs, &Bson::Document(gspec), vars)?;
                if let Some(first) = g.into_iter().next() {
                    for (k, v) in first {
                        if k != "_id" {
                            d.insert(k, v);
                        }
                    }
                }
            }
        }
        out.push(d);
    }
    Ok(out)
}

fn bucket(docs: Vec<Document>, arg: &Bson, vars: &Vars) -> Result<Vec<Document>> {
    let spec = arg.as_document().ok_or_else(|| Error::new(40201, "Argument to $bucket stage must be an object"))?;
    let group_by = spec
        .get("groupBy")
        .cloned()
        .ok_or_else(|| Error::new(40198, "$bucket requires 'groupBy' and 'boundaries' to be specified"))?;
    let bounds = spec
        .get_array("boundaries")
        .map_err(|_| Error::new(40198, "$bucket requires 'groupBy' and 'boundaries' to be specified"))?
        .clone();
    if bounds.len() < 2 || bounds.windows(2).any(|w| compare(&w[0], &w[1]) != Ordering::Less) {
        return Err(Error::new(
            40194,
            "The 'boundaries' option to $bucket must be sorted in ascending order and have at least 2 values",
        ));
    }
    let default = spec.get("default").cloned();
    let mut buckets: Vec<Vec<Document>> = vec![Vec::new(); bounds.len()];
    for d in docs {
        let v = eval(&group_by, &Bson::Document(d.clone()), vars)?;
        let v = if matches!(v, Bson::Undefined) { Bson::Null } else { v };
        match bounds
            .windows(2)
            .position(|w| compare(&v, &w[0]) != Ordering::Less && compare(&v, &w[1]) == Ordering::Less)
        {
            Some(i) => buckets[i].push(d),
            None if default.is_some() => buckets[bounds.len() - 1].push(d),
            None => {
                return Err(Error::new(
                    40066,
                    "$switch could not find a matching branch for an input, and no default was specified.",
                ));
            }
        }
    }
    let output = spec.get_document("output").ok().cloned();
    let mut out = Vec::new();
    for (i, docs) in buckets.into_iter().enumerate() {
        if docs.is_empty() {
            continue;
        }
        let id = if i == bounds.len() - 1 { default.clone().unwrap_or(Bson::Null) } else { bounds[i].clone() };
        let mut d = doc! {"_id": id};
        match &output {
            None => {
                d.insert("count", docs.len() as i32);
            }
            Some(o) => {
                let mut gspec = o.clone();
                gspec.insert("_id", Bson::Null);
                if let Some(first) = group(docs, &Bson::Document(gspec), vars)?.into_iter().next() {
                    for (k, v) in first {
                        if k != "_id" {
                            d.insert(k, v);
                        }
                    }
                }
            }
        }
        out.push(d);
    }
    Ok(out)
}

fn lookup(docs: Vec<Document>, arg: &Bson, env: &Env) -> Result<Vec<Document>> {
    let spec = arg.as_document().ok_or_else(|| Error::new(9, "the $lookup specification must be an Object"))?;
    let (from_db, from) = match spec.get("from") {
        Some(Bson::String(s)) => (env.db.to_string(), s.clone()),
        Some(Bson::Document(d)) => {
            (d.get_str("db").unwrap_or(env.db).to_string(), d.get_str("coll").unwrap_or("").to_string())
        }
        _ => (env.db.to_string(), String::new()),
    };
    let as_field = spec.get_str("as").map_err(|_| Error::parse("must specify 'as' field for a $lookup"))?.to_string();
    let foreign = if from.is_empty() { Vec::new() } else { env.source.read(&from_db, &from)? };
    let pipeline: Vec<Document> = spec
        .get_array("pipeline")
        .map(|a| a.iter().filter_map(|x| x.as_document().cloned()).collect())
        .unwrap_or_default();
    let let_spec = spec.get_document("let").ok().cloned();
    let local = spec.get_str("localField").ok();
    let foreign_f = spec.get_str("foreignField").ok();
    let mut out = Vec::new();
    for mut d in docs {
        let mut matched: Vec<Document> = match (local, foreign_f) {
            (Some(l), Some(f)) => {
                let lv = expr::path_get(&Bson::Document(d.clone()), &l.split('.').collect::<Vec<_>>());
                let lvals: Vec<Bson> = match lv {
                    Bson::Array(a) => a,
                    Bson::Undefined => vec![Bson::Null],
                    other => vec![other],
                };
                foreign
                    .iter()
                    .filter(|fd| {
                        let cands = query::candidates(fd, f);
                        lvals.iter().any(|lv| {
                            cands.iter().any(|c| match c.v {
                                Some(v) => values_equal(v, lv),
                                None => matches!(lv, Bson::Null),
                            })
                        })
                    })
                    .cloned()
                    .collect()
            }
            _ => foreign.clone(),
        };
        if !pipeline.is_empty() {
            let mut vars = env.vars.clone();
            if let Some(ls) = &let_spec {
                for (k, e) in ls {
                    let v = eval(e, &Bson::Document(d.clone()), &env.vars)?;
                    vars.0.insert(k.clone(), if matches!(v, MISSING) { Bson::Null } else { v });
                }
            }
            let sub = Env { db: env.db, source: env.source, vars };
            matched = run(matched, &pipeline, &sub)?;
        }
        set_path(&mut d, &as_field, Bson::Array(matched.into_iter().map(Bson::Document).collect()));
        out.push(d);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_by_boundaries() {
        let docs = vec![doc! {"p": 1}, doc! {"p": 5}, doc! {"p": 12}, doc! {"p": "x"}];
        let env = Env { db: "db", source: &NoSource, vars: Vars::default() };
        let out =
            run(docs, &[doc! {"$bucket": {"groupBy": "$p", "boundaries": [0, 10, 20], "default": "other"}}], &env)
                .unwrap();
        assert_eq!(
            out,
            vec![doc! {"_id": 0, "count": 2}, doc! {"_id": 10, "count": 1}, doc! {"_id": "other", "count": 1}]
        );
    }

    #[test]
    fn group_and_sort() {
        let docs = vec![doc! {"k": "a", "v": 1}, doc! {"k": "b", "v": 2}, doc! {"k": "a", "v": 3}];
        let env = Env { db: "db", source: &NoSource, vars: Vars::default() };
        let out = run(
            docs,
            &[
                doc! {"$group": {"_id": "$k", "total": {"$sum": "$v"}, "n": {"$count": {}}}},
                doc! {"$sort": {"total": -1}},
            ],
            &env,
        )
        .unwrap();
        assert_eq!(out, vec![doc! {"_id": "a", "total": 4, "n": 2}, doc! {"_id": "b", "total": 2, "n": 1}]);
    }
}
