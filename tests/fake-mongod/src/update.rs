//! Update operators (`$set`, `$inc`, `$push` ...), replacement and pipeline updates,
//! positional paths, and the change stream `updateDescription` mongod would report.

use std::collections::HashMap;

use bson::{Bson, Document, doc};

use crate::aggregate::expr::Vars;
use crate::bson_order::{as_f64, as_i64, compare, is_number, type_alias, values_equal};
use crate::error::{Error, Result};
use crate::query::{self, Node};

/// One component of a concrete path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Comp {
    /// A document field.
    Field(String),
    /// An array index.
    Index(usize),
}

fn path_str(p: &[Comp]) -> String {
    p.iter()
        .map(|c| match c {
            Comp::Field(f) => f.clone(),
            Comp::Index(i) => i.to_string(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// What an update did, for `updateDescription`.
#[derive(Debug, Default, Clone)]
pub struct Tracker {
    sets: Vec<Vec<Comp>>,
    unsets: Vec<Vec<Comp>>,
    appends: Vec<(Vec<Comp>, usize)>,
    truncs: Vec<(Vec<Comp>, usize)>,
}

/// The kind of update.
#[derive(Debug, Clone)]
pub enum UpdateKind {
    /// A replacement document.
    Replace(Document),
    /// Operator document.
    Ops(Document),
    /// Aggregation pipeline.
    Pipeline(Vec<Document>),
}

impl UpdateKind {
    /// Classifies an owned update value without copying it.
    pub fn parse_owned(u: Bson) -> Result<UpdateKind> {
        match u {
            Bson::Document(d) if d.keys().next().is_none_or(|k| !k.starts_with('$')) => {
                if let Some(k) = d.keys().find(|k| k.starts_with('$')) {
                    return Err(Error::new(
                        52,
                        format!(
                            "The dollar ($) prefixed field '{k}' in '{k}' is not allowed in the context of an update's replacement document. Consider using an aggregation pipeline with $replaceWith."
                        ),
                    ));
                }
                Ok(UpdateKind::Replace(d))
            }
            other => UpdateKind::parse(&other),
        }
    }

    /// Classifies an update value (`u`).
    pub fn parse(u: &Bson) -> Result<UpdateKind> {
        match u {
            Bson::Document(d) => {
                let first = d.keys().next();
                if first.is_some_and(|k| k.starts_with('$')) {
                    for k in d.keys() {
                        if !k.starts_with('$') {
                            return Err(Error::parse(format!(
                                "Unknown modifier: {k}. Expected a valid update modifier or pipeline-style update specified as an array"
                            )));
                        }
                    }
                    Ok(UpdateKind::Ops(d.clone()))
                } else {
                    for k in d.keys() {
                        if k.starts_with('$') {
                            return Err(Error::new(
                                52,
                                format!(
                                    "The dollar ($) prefixed field '{k}' in '{k}' is not allowed in the context of an update's replacement document. Consider using an aggregation pipeline with $replaceWith."
                                ),
                            ));
                        }
                    }
                    Ok(UpdateKind::Replace(d.clone()))
                }
            }
            Bson::Array(a) => Ok(UpdateKind::Pipeline(
                a.iter()
                    .map(|s| {
                        s.as_document().cloned().ok_or_else(|| Error::type_mismatch("pipeline stages must be objects"))
                    })
                    .collect::<Result<_>>()?,
            )),
            _ => Err(Error::new(14, "Update argument must be either an object or an array")),
        }
    }
}

fn get_comp<'a>(v: &'a Bson, c: &Comp) -> Option<&'a Bson> {
    match (v, c) {
        (Bson::Document(d), Comp::Field(f)) => d.get(f),
        (Bson::Array(a), Comp::Index(i)) => a.get(*i),
        (Bson::Array(a), Comp::Field(f)) => f.parse::<usize>().ok().and_then(|i| a.get(i)),
        (Bson::Document(d), Comp::Index(i)) => d.get(i.to_string()),
        _ => None,
    }
}

/// Gets the value at a concrete path.
pub fn get_at<'a>(root: &'a Bson, p: &[Comp]) -> Option<&'a Bson> {
    let mut cur = root;
    for c in p {
        cur = get_comp(cur, c)?;
    }
    Some(cur)
}

fn get_at_mut<'a>(root: &'a mut Bson, p: &[Comp]) -> Option<&'a mut Bson> {
    let mut cur = root;
    for c in p {
        cur = match (cur, c) {
            (Bson::Document(d), Comp::Field(f)) => d.get_mut(f)?,
            (Bson::Document(d), Comp::Index(i)) => d.get_mut(i.to_string())?,
            (Bson::Array(a), Comp::Index(i)) => a.get_mut(*i)?,
            (Bson::Array(a), Comp::Field(f)) => a.get_mut(f.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn describe(v: &Bson) -> String {
    match v {
        Bson::Document(d) => crate::storage::shell_fmt(&Bson::Document(d.clone())),
        other => crate::storage::shell_fmt(other),
    }
}

/// Sets a value, creating intermediate documents (and padding arrays with nulls).
fn set_at(root: &mut Bson, p: &[Comp], v: Bson) -> Result<()> {
    let (last, parents) = p.split_last().ok_or_else(|| Error::bad_value("empty path"))?;
    let mut cur = root;
    for (i, c) in parents.iter().enumerate() {
        let exists = get_comp(cur, c).is_some();
        if !exists {
            match cur {
                Bson::Document(d) => {
                    let name = match c {
                        Comp::Field(f) => f.clone(),
                        Comp::Index(i) => i.to_string(),
                    };
                    d.insert(name, Bson::Document(Document::new()));
                }
                Bson::Array(a) => {
                    let idx = match c {
                        Comp::Index(i) => *i,
                        Comp::Field(f) => f.parse::<usize>().map_err(|_| {
                            Error::new(
                                28,
                                format!(
                                    "Cannot create field '{f}' in element {{{}: {}}}",
                                    path_str(&p[..i]),
                                    describe(&Bson::Array(a.clone()))
                                ),
                            )
                        })?,
                    };
                    while a.len() < idx {
                        a.push(Bson::Null);
                    }
                    a.push(Bson::Document(Document::new()));
                }
                other => {
                    return Err(Error::new(
                        28,
                        format!(
                            "Cannot create field '{}' in element {{{}: {}}}",
                            path_str(std::slice::from_ref(c)),
                            path_str(&p[..i]),
                            describe(other)
                        ),
                    ));
                }
            }
        }
        cur = get_at_mut(cur, std::slice::from_ref(c)).ok_or_else(|| Error::new(28, "path not viable"))?;
    }
    match cur {
        Bson::Document(d) => {
            let name = match last {
                Comp::Field(f) => f.clone(),
                Comp::Index(i) => i.to_string(),
            };
            d.insert(name, v);
            Ok(())
        }
        Bson::Array(a) => {
            let idx = match last {
                Comp::Index(i) => *i,
                Comp::Field(f) => f.parse::<usize>().map_err(|_| {
                    Error::new(
                        28,
                        format!(
                            "Cannot create field '{f}' in element {{{}: {}}}",
                            path_str(parents),
                            describe(&Bson::Array(a.clone()))
                        ),
                    )
                })?,
            };
            while a.len() <= idx {
                a.push(Bson::Null);
            }
            a[idx] = v;
            Ok(())
        }
        other => Err(Error::new(
            28,
            format!(
                "Cannot create field '{}' in element {{{}: {}}}",
                path_str(std::slice::from_ref(last)),
                path_str(parents),
                describe(other)
            ),
        )),
    }
}

fn unset_at(root: &mut Bson, p: &[Comp]) -> bool {
    let Some((last, parents)) = p.split_last() else { return false };
    let Some(parent) = get_at_mut(root, parents) else { return false };
    match (parent, last) {
        (Bson::Document(d), c) => {
            let name = match c {
                Comp::Field(f) => f.clone(),
                Comp::Index(i) => i.to_string(),
            };
            d.remove(&name).is_some()
        }
        (Bson::Array(a), c) => {
            let idx = match c {
                Comp::Index(i) => Some(*i),
                Comp::Field(f) => f.parse::<usize>().ok(),
            };
            match idx {
                Some(i) if i < a.len() => {
                    a[i] = Bson::Null;
                    true
                }
                _ => false,
            }
        }
        _ => false,
    }
}

/// Array filters by identifier.
pub type ArrayFilters = HashMap<String, (Node, bool)>;

/// Compiles `arrayFilters`.
pub fn compile_array_filters(af: Option<&Vec<Bson>>) -> Result<ArrayFilters> {
    let mut out = HashMap::new();
    for f in af.into_iter().flatten() {
        let d = f.as_document().ok_or_else(|| Error::type_mismatch("arrayFilters entries must be objects"))?;
        let first = d
            .keys()
            .next()
            .ok_or_else(|| Error::parse("Cannot use an expression without a top-level field name in arrayFilters"))?;
        let ident = first.split('.').next().unwrap_or("").to_string();
        // rewrite "ident.x" -> "x" on a wrapper, and "ident" -> the element itself
        let mut wrapped = Document::new();
        let mut whole = false;
        for (k, v) in d {
            if k == &ident {
                whole = true;
                wrapped.insert("__elem", v.clone());
            } else if let Some(rest) = k.strip_prefix(&format!("{ident}.")) {
                wrapped.insert(format!("__elem.{rest}"), v.clone());
            } else if k.starts_with('$') {
                wrapped.insert(k.clone(), v.clone());
            } else {
                return Err(Error::parse(format!(
                    "Error parsing array filter :: caused by :: Expected a single top-level field name, found '{ident}' and '{}'",
                    k.split('.').next().unwrap_or("")
                )));
            }
        }
        if out.contains_key(&ident) {
            return Err(Error::parse(format!(
                "Found multiple array filters with the same top-level field name {ident}"
            )));
        }
        out.insert(ident, (query::compile(&wrapped)?, whole));
    }
    Ok(out)
}

fn elem_matches(filter: &Node, e: &Bson) -> bool {
    let d = doc! {"__elem": e.clone()};
    filter.matches(&d, &Vars::default())
}

/// Expands `$`, `$[]` and `$[id]` in a dotted path into concrete paths.
fn expand(
    root: &Bson,
    path: &str,
    pos: Option<usize>,
    af: &ArrayFilters,
    used: &mut Vec<String>,
) -> Result<Vec<Vec<Comp>>> {
    let parts: Vec<&str> = path.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(Error::bad_value(format!(
            "The update path '{path}' contains an empty field name, which is not allowed."
        )));
    }
    let mut out: Vec<Vec<Comp>> = vec![Vec::new()];
    for part in parts {
        let mut next = Vec::new();
        for prefix in out {
            let cur = get_at(root, &prefix);
            match part {
                "$" => {
                    let i = pos.ok_or_else(|| {
                        Error::bad_value("The positional operator did not find the match needed from the query.")
                    })?;
                    let mut p = prefix.clone();
                    p.push(Comp::Index(i));
                    next.push(p);
                }
                "$[]" => match cur {
                    Some(Bson::Array(a)) => {
                        for i in 0..a.len() {
                            let mut p = prefix.clone();
                            p.push(Comp::Index(i));
                            next.push(p);
                        }
                    }
                    _ => {
                        return Err(Error::bad_value(format!(
                            "The path '{}' must exist in the document in order to apply array updates.",
                            path_str(&prefix)
                        )));
                    }
                },
                p if p.starts_with("$[") && p.ends_with(']') => {
                    let ident = &p[2..p.len() - 1];
                    let (f, _) = af.get(ident).ok_or_else(|| {
                        Error::bad_value(format!("No array filter found for identifier '{ident}' in path '{path}'"))
                    })?;
                    if !used.iter().any(|u| u == ident) {
                        used.push(ident.to_string());
                    }
                    match cur {
                        Some(Bson::Array(a)) => {
                            for (i, e) in a.iter().enumerate() {
                                if elem_matches(f, e) {
                                    let mut p = prefix.clone();
                                    p.push(Comp::Index(i));
                                    next.push(p);
                                }
                            }
                        }
                        _ => {
                            return Err(Error::bad_value(format!(
                                "The path '{}' must exist in the document in order to apply array updates.",
                                path_str(&prefix)
                            )));
                        }
                    }
                }
                p => {
                    let comp = match cur {
                        Some(Bson::Array(_)) => match p.parse::<usize>() {
                            Ok(i) => Comp::Index(i),
                            Err(_) => Comp::Field(p.to_string()),
                        },
                        _ => Comp::Field(p.to_string()),
                    };
                    let mut pp = prefix.clone();
                    pp.push(comp);
                    next.push(pp);
                }
            }
        }
        out = next;
    }
    Ok(out)
}

fn is_prefix(a: &[Comp], b: &[Comp]) -> bool {
    a.len() <= b.len() && path_str(a).split('.').zip(path_str(b).split('.')).all(|(x, y)| x == y)
}

fn numeric_type_err(op: &str, id: &Bson, path: &str, v: &Bson) -> Error {
    Error::new(
        14,
        format!(
            "Cannot apply {op} to a value of non-numeric type. {{_id: {}}} has the field '{path}' of non-numeric type {}",
            crate::storage::shell_fmt(id),
            type_alias(v)
        ),
    )
}

fn sort_values(vals: &mut [Bson], spec: &Bson) {
    match spec {
        Bson::Document(sd) => {
            let keys: Vec<(String, i64)> = sd.iter().map(|(k, v)| (k.clone(), as_i64(v).unwrap_or(1))).collect();
            vals.sort_by(|a, b| {
                for (k, dir) in &keys {
                    let av = match a {
                        Bson::Document(d) => query::get_path(d, k).cloned().unwrap_or(Bson::Null),
                        _ => Bson::Null,
                    };
                    let bv = match b {
                        Bson::Document(d) => query::get_path(d, k).cloned().unwrap_or(Bson::Null),
                        _ => Bson::Null,
                    };
                    let o = compare(&av, &bv);
                    if o != std::cmp::Ordering::Equal {
                        return if *dir < 0 { o.reverse() } else { o };
                    }
                }
                std::cmp::Ordering::Equal
            });
        }
        other => {
            let dir = as_i64(other).unwrap_or(1);
            vals.sort_by(|a, b| if dir < 0 { compare(b, a) } else { compare(a, b) });
        }
    }
}

fn pull_matches(cond: &Bson, e: &Bson) -> bool {
    match cond {
        Bson::Document(cd) => {
            let is_ops = cd.keys().next().is_some_and(|k| k.starts_with('$'));
            if is_ops {
                let d = doc! {"__elem": e.clone()};
                let f = doc! {"__elem": cond.clone()};
                query::compile(&f).map(|n| n.matches(&d, &Vars::default())).unwrap_or(false)
            } else if let Bson::Document(ed) = e {
                query::compile(cd).map(|n| n.matches(ed, &Vars::default())).unwrap_or(false)
            } else {
                false
            }
        }
        other => values_equal(other, e),
    }
}

/// Applies an update to `doc`. Returns the new document and what changed.
#[allow(clippy::too_many_arguments)]
pub fn apply(
    doc: &Document,
    kind: &UpdateKind,
    inserting: bool,
    pos: Option<usize>,
    af: &ArrayFilters,
    vars: &Vars,
) -> Result<(Document, Tracker)> {
    let id = doc.get("_id").cloned();
    match kind {
        UpdateKind::Replace(r) => {
            let mut out = Document::new();
            if let Some(idv) = &id {
                if let Some(rid) = r.get("_id")
                    && !values_equal(rid, idv)
                {
                    return Err(Error::new(
                        66,
                        format!(
                            "After applying the update, the (immutable) field '_id' was found to have been altered to _id: {}",
                            crate::storage::shell_fmt(rid)
                        ),
                    ));
                }
                out.insert("_id", idv.clone());
            }
            for (k, v) in r {
                if k != "_id" || id.is_none() {
                    out.insert(k.clone(), v.clone());
                }
            }
            Ok((out, Tracker::default()))
        }
        UpdateKind::Pipeline(stages) => {
            let mut docs = vec![doc.clone()];
            for st in stages {
                let name = st.keys().next().map(String::as_str).unwrap_or("");
                if !matches!(name, "$addFields" | "$set" | "$project" | "$unset" | "$replaceRoot" | "$replaceWith") {
                    return Err(Error::new(72, format!("{name} is not allowed to be used within an update")));
                }
                docs = crate::aggregate::run_simple_stage(st, docs, vars)?;
            }
            let mut out = docs.pop().unwrap_or_default();
            if let Some(idv) = &id {
                match out.get("_id") {
                    Some(n) if !values_equal(n, idv) => {
                        return Err(Error::new(
                            66,
                            "After applying the update, the (immutable) field '_id' was found to have been altered",
                        ));
                    }
                    Some(_) => {}
                    None => {
                        let mut o2 = doc! {"_id": idv.clone()};
                        o2.extend(out);
                        out = o2;
                    }
                }
            }
            let t = diff_tracker(doc, &out);
            Ok((out, t))
        }
        UpdateKind::Ops(ops) => apply_ops(doc, ops, inserting, pos, af, id),
    }
}

fn diff_into(old: &Bson, new: &Bson, prefix: &mut Vec<Comp>, t: &mut Tracker) {
    match (old, new) {
        (Bson::Document(o), Bson::Document(n)) => {
            for (k, ov) in o {
                prefix.push(Comp::Field(k.clone()));
                match n.get(k) {
                    None => t.unsets.push(prefix.clone()),
                    Some(nv) => {
                        if ov != nv {
                            diff_into(ov, nv, prefix, t)
                        }
                    }
                }
                prefix.pop();
            }
            for (k, nv) in n {
                if !o.contains_key(k) {
                    prefix.push(Comp::Field(k.clone()));
                    let _ = nv;
                    t.sets.push(prefix.clone());
                    prefix.pop();
                }
            }
        }
        (Bson::Array(o), Bson::Array(n)) if !prefix.is_empty() => {
            let common = o.len().min(n.len());
            if o[..common] == n[..common] {
                if n.len() > o.len() {
                    t.appends.push((prefix.clone(), o.len()));
                } else {
                    t.truncs.push((prefix.clone(), n.len()));
                }
            } else {
                t.sets.push(prefix.clone());
            }
        }
        _ => t.sets.push(prefix.clone()),
    }
}

fn diff_tracker(old: &Document, new: &Document) -> Tracker {
    let mut t = Tracker::default();
    diff_into(&Bson::Document(old.clone()), &Bson::Document(new.clone()), &mut Vec::new(), &mut t);
    t
}

#[allow(clippy::collapsible_match)]
fn apply_ops(
    doc: &Document,
    ops: &Document,
    inserting: bool,
    pos: Option<usize>,
    af: &ArrayFilters,
    id: Option<Bson>,
) -> Result<(Document, Tracker)> {
    let mut root = Bson::Document(doc.clone());
    let mut t = Tracker::default();
    let idv = id.clone().unwrap_or(Bson::Null);
    // collect (op, concrete path, arg, original path)
    let mut work: Vec<(String, Vec<Comp>, Bson, String)> = Vec::new();
    let mut used = Vec::new();
    for (op, spec) in ops {
        let spec = spec.as_document().ok_or_else(|| {
            Error::parse(format!("Modifiers operate on fields but we found type {} instead. For example: {{$mod: {{<field>: ...}}}} not {{{op}: {}}}", type_alias(spec), crate::storage::shell_fmt(spec)))
        })?;
        if !matches!(
            op.as_str(),
            "$set"
                | "$unset"
                | "$inc"
                | "$mul"
                | "$min"
                | "$max"
                | "$rename"
                | "$setOnInsert"
                | "$push"
                | "$addToSet"
                | "$pop"
                | "$pull"
                | "$pullAll"
                | "$currentDate"
                | "$bit"
        ) {
            return Err(Error::parse(format!(
                "Unknown modifier: {op}. Expected a valid update modifier or pipeline-style update specified as an array"
            )));
        }
        for (path, arg) in spec {
            if op == "$setOnInsert" && !inserting {
                continue;
            }
            if op == "$rename" {
                let to = arg.as_str().ok_or_else(|| {
                    Error::bad_value(format!("The 'to' field for $rename must be a string: {path}: {arg}"))
                })?;
                if path == to {
                    return Err(Error::bad_value(format!(
                        "The source and target field for $rename must differ: {path}: \"{to}\""
                    )));
                }
                if path.contains('$') || to.contains('$') {
                    return Err(Error::bad_value("The source field for $rename may not be dynamic"));
                }
                let from_p = expand(&root, path, pos, af, &mut used)?;
                let to_p = expand(&root, to, pos, af, &mut used)?;
                work.push(("$rename".into(), from_p[0].clone(), Bson::Document(doc! {"to": to}), path.clone()));
                work.push(("$renameTo".into(), to_p[0].clone(), Bson::Null, to.to_string()));
                continue;
            }
            for p in expand(&root, path, pos, af, &mut used)? {
                work.push((op.clone(), p, arg.clone(), path.clone()));
            }
        }
    }
    for ident in af.keys() {
        if !used.iter().any(|u| u == ident) {
            return Err(Error::parse(format!(
                "The array filter for identifier '{ident}' was not used in the update {}",
                crate::storage::shell_fmt(&Bson::Document(ops.clone()))
            )));
        }
    }
    // conflicts
    for i in 0..work.len() {
        for j in (i + 1)..work.len() {
            if (is_prefix(&work[i].1, &work[j].1) || is_prefix(&work[j].1, &work[i].1))
                && !(work[i].0 == "$rename" && work[j].0 == "$renameTo")
            {
                return Err(Error::new(
                    40,
                    format!(
                        "Updating the path '{}' would create a conflict at '{}'",
                        work[j].3,
                        work[i].3.split('.').take(work[i].1.len().min(work[j].1.len())).collect::<Vec<_>>().join(".")
                    ),
                ));
            }
        }
    }
    for (_, p, _, orig) in &work {
        if matches!(p.first(), Some(Comp::Field(f)) if f == "_id") && !inserting {
            let _ = orig;
        }
    }
    // apply in path order so new fields appear in lexicographic order
    let mut order: Vec<usize> = (0..work.len()).collect();
    order.sort_by(|a, b| path_str(&work[*a].1).cmp(&path_str(&work[*b].1)));
    let mut rename_vals: HashMap<String, Option<Bson>> = HashMap::new();
    // renames read their source first
    for (op, p, arg, _) in &work {
        if op == "$rename" {
            let to = arg.as_document().and_then(|d| d.get_str("to").ok()).unwrap_or("").to_string();
            rename_vals.insert(to, get_at(&root, p).cloned());
        }
    }
    for i in order {
        let (op, p, arg, orig) = &work[i];
        let ps = path_str(p);
        let cur = get_at(&root, p).cloned();
        let track = set_track(&root, p);
        match op.as_str() {
            "$set" | "$setOnInsert" => {
                if cur.as_ref() != Some(arg) || cur.as_ref().map(type_alias) != Some(type_alias(arg)) {
                    set_at(&mut root, p, arg.clone())?;
                    t.record_set(&track, p);
                }
            }
            "$unset" => {
                if unset_at(&mut root, p) {
                    t.unsets.push(p.clone());
                }
            }
            "$inc" | "$mul" => {
                if !is_number(arg) {
                    return Err(Error::type_mismatch(format!(
                        "Cannot {} with non-numeric argument: {{{orig}: {}}}",
                        if op == "$inc" { "increment" } else { "multiply" },
                        crate::storage::shell_fmt(arg)
                    )));
                }
                let newv = match &cur {
                    None => {
                        if op == "$inc" {
                            arg.clone()
                        } else {
                            crate::aggregate::expr::mul_nums(&Bson::Int32(0), arg)
                        }
                    }
                    Some(c) if is_number(c) => {
                        if op == "$inc" {
                            crate::aggregate::expr::add_nums(c, arg)
                        } else {
                            crate::aggregate::expr::mul_nums(c, arg)
                        }
                    }
                    Some(c) => return Err(numeric_type_err(op, &idv, &ps, c)),
                };
                if cur.as_ref() != Some(&newv) {
                    set_at(&mut root, p, newv)?;
                    t.record_set(&track, p);
                }
            }
            "$min" | "$max" => {
                let replace = match &cur {
                    None => true,
                    Some(c) => {
                        let o = compare(arg, c);
                        if op == "$min" { o == std::cmp::Ordering::Less } else { o == std::cmp::Ordering::Greater }
                    }
                };
                if replace {
                    set_at(&mut root, p, arg.clone())?;
                    t.record_set(&track, p);
                }
            }
            "$currentDate" => {
                let ts = matches!(arg, Bson::Document(d) if d.get_str("$type") == Ok("timestamp"));
                let v = if ts {
                    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                    Bson::Timestamp(bson::Timestamp { time: now.as_secs() as u32, increment: 1 })
                } else {
                    Bson::DateTime(bson::DateTime::now())
                };
                set_at(&mut root, p, v)?;
                t.record_set(&track, p);
            }
            "$bit" => {
                let d = arg.as_document().ok_or_else(|| Error::bad_value("$bit needs an object"))?;
                let base = cur.clone().unwrap_or(Bson::Int32(0));
                if !matches!(base, Bson::Int32(_) | Bson::Int64(_)) {
                    return Err(Error::bad_value(format!(
                        "Cannot apply $bit to a value of non-integral type.{{_id: {}}} has the field {ps} of non-integer type {}",
                        crate::storage::shell_fmt(&idv),
                        type_alias(&base)
                    )));
                }
                let mut acc = as_i64(&base).unwrap_or(0);
                let mut long = matches!(base, Bson::Int64(_));
                for (bop, bv) in d {
                    long |= matches!(bv, Bson::Int64(_));
                    let x = as_i64(bv).ok_or_else(|| Error::bad_value("$bit operand must be an integer"))?;
                    acc = match bop.as_str() {
                        "and" => acc & x,
                        "or" => acc | x,
                        "xor" => acc ^ x,
                        other => {
                            return Err(Error::bad_value(format!(
                                "The $bit modifier only supports 'and', 'or', and 'xor', not '{other}'"
                            )));
                        }
                    };
                }
                let nv = if long { Bson::Int64(acc) } else { Bson::Int32(acc as i32) };
                if cur.as_ref() != Some(&nv) {
                    set_at(&mut root, p, nv)?;
                    t.record_set(&track, p);
                }
            }
            "$rename" => {
                if unset_at(&mut root, p) {
                    t.unsets.push(p.clone());
                }
            }
            "$renameTo" => {
                if let Some(Some(v)) = rename_vals.get(orig) {
                    set_at(&mut root, p, v.clone())?;
                    t.record_set(&track, p);
                }
            }
            "$push" | "$addToSet" => {
                let (items, modifiers) = match arg {
                    Bson::Document(d) if d.contains_key("$each") => (
                        d.get_array("$each")
                            .map_err(|_| {
                                Error::bad_value(format!(
                                    "The argument to $each in {op} must be an array but it was of type: {}",
                                    type_alias(d.get("$each").unwrap_or(&Bson::Null))
                                ))
                            })?
                            .clone(),
                        Some(d.clone()),
                    ),
                    other => (vec![other.clone()], None),
                };
                let existing = match &cur {
                    None => None,
                    Some(Bson::Array(a)) => Some(a.clone()),
                    Some(other) => {
                        return Err(Error::bad_value(format!(
                            "The field '{ps}' must be an array but is of type {} in document {{_id: {}}}",
                            type_alias(other),
                            crate::storage::shell_fmt(&idv)
                        )));
                    }
                };
                let old_len = existing.as_ref().map(|a| a.len());
                let mut arr = existing.unwrap_or_default();
                let mut simple_append = true;
                if op == "$addToSet" {
                    for it in items {
                        if !arr.iter().any(|e| values_equal(e, &it) && type_alias(e) == type_alias(&it)) {
                            arr.push(it);
                        }
                    }
                } else {
                    let m = modifiers.unwrap_or_default();
                    for k in m.keys() {
                        if !matches!(k.as_str(), "$each" | "$slice" | "$sort" | "$position") {
                            return Err(Error::bad_value(format!("Unrecognized clause in $push: {k}")));
                        }
                    }
                    match m.get("$position").and_then(as_i64) {
                        Some(pidx) => {
                            let n = arr.len() as i64;
                            let at = if pidx < 0 { (n + pidx).max(0) } else { pidx.min(n) } as usize;
                            if at != arr.len() {
                                simple_append = false;
                            }
                            for (k, it) in items.into_iter().enumerate() {
                                arr.insert(at + k, it);
                            }
                        }
                        None => arr.extend(items),
                    }
                    if let Some(s) = m.get("$sort") {
                        sort_values(&mut arr, s);
                        simple_append = false;
                    }
                    if let Some(sl) = m.get("$slice").and_then(as_i64) {
                        let n = arr.len() as i64;
                        if sl >= 0 {
                            if (sl as usize) < arr.len() {
                                arr.truncate(sl as usize);
                                simple_append = false;
                            }
                        } else if -sl < n {
                            arr = arr.split_off((n + sl) as usize);
                            simple_append = false;
                        }
                    }
                }
                let changed = old_len != Some(arr.len()) || cur.as_ref() != Some(&Bson::Array(arr.clone()));
                if changed {
                    set_at(&mut root, p, Bson::Array(arr))?;
                    match old_len {
                        Some(n) if simple_append => t.appends.push((p.clone(), n)),
                        _ => t.sets.push(p.clone()),
                    }
                }
            }
            "$pop" => {
                let dir = as_i64(arg).ok_or_else(|| Error::bad_value("$pop expects 1 or -1"))?;
                match &cur {
                    None => {}
                    Some(Bson::Array(a)) => {
                        if !a.is_empty() {
                            let mut a = a.clone();
                            if dir >= 0 {
                                a.pop();
                                let n = a.len();
                                set_at(&mut root, p, Bson::Array(a))?;
                                t.truncs.push((p.clone(), n));
                            } else {
                                a.remove(0);
                                set_at(&mut root, p, Bson::Array(a))?;
                                t.record_set(&track, p);
                            }
                        }
                    }
                    Some(other) => {
                        return Err(Error::type_mismatch(format!(
                            "Path '{ps}' contains an element of non-array type '{}'",
                            type_alias(other)
                        )));
                    }
                }
            }
            "$pull" | "$pullAll" => match &cur {
                None => {}
                Some(Bson::Array(a)) => {
                    let kept: Vec<Bson> = if op == "$pull" {
                        a.iter().filter(|e| !pull_matches(arg, e)).cloned().collect()
                    } else {
                        let vals = arg.as_array().ok_or_else(|| {
                            Error::bad_value(format!(
                                "$pullAll requires an array argument but was given a {}",
                                type_alias(arg)
                            ))
                        })?;
                        a.iter().filter(|e| !vals.iter().any(|v| values_equal(v, e))).cloned().collect()
                    };
                    if kept.len() != a.len() {
                        set_at(&mut root, p, Bson::Array(kept))?;
                        t.record_set(&track, p);
                    }
                }
                Some(_) => return Err(Error::bad_value("Cannot apply $pull to a non-array value")),
            },
            _ => {}
        }
    }
    let Bson::Document(mut out) = root else { return Err(Error::new(1, "update produced a non-document")) };
    if let Some(idv) = &id {
        match out.get("_id") {
            Some(n) if !(values_equal(n, idv) && type_alias(n) == type_alias(idv)) => {
                return Err(Error::new(
                    66,
                    "Performing an update on the path '_id' would modify the immutable field '_id'",
                ));
            }
            None => {
                return Err(Error::new(
                    66,
                    "Performing an update on the path '_id' would modify the immutable field '_id'",
                ));
            }
            _ => {}
        }
        // keep _id first
        if out.keys().next().map(String::as_str) != Some("_id") {
            let v = out.remove("_id").unwrap_or(Bson::Null);
            let mut o2 = doc! {"_id": v};
            o2.extend(out);
            out = o2;
        }
    }
    Ok((out, t))
}

/// How a set at a path shows up in `updateDescription`.
enum SetTrack {
    /// The path itself.
    Plain,
    /// A missing ancestor is created: it is reported whole.
    Prefix(Vec<Comp>),
    /// An array grows (padding with nulls): its new elements are reported.
    Pad(Vec<Comp>, usize),
}

fn set_track(root: &Bson, p: &[Comp]) -> SetTrack {
    for i in 1..p.len() {
        match get_at(root, &p[..i]) {
            None => return SetTrack::Prefix(p[..i].to_vec()),
            Some(Bson::Array(a)) => {
                if let Comp::Index(j) = p[i]
                    && j >= a.len()
                {
                    return SetTrack::Pad(p[..i].to_vec(), a.len());
                }
            }
            _ => {}
        }
    }
    SetTrack::Plain
}

impl Tracker {
    fn record_set(&mut self, track: &SetTrack, p: &[Comp]) {
        match track {
            SetTrack::Plain => self.sets.push(p.to_vec()),
            SetTrack::Prefix(q) => self.sets.push(q.clone()),
            SetTrack::Pad(parent, old) => {
                if !self.appends.iter().any(|(a, _)| a == parent) {
                    self.appends.push((parent.clone(), *old));
                }
            }
        }
    }
}

fn ambiguous(p: &[Comp]) -> bool {
    p.iter().any(
        |c| matches!(c, Comp::Field(f) if f.contains('.') || (!f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()))),
    )
}

fn disamb_entry(p: &[Comp]) -> Bson {
    Bson::Array(
        p.iter()
            .map(|c| match c {
                Comp::Field(f) => Bson::String(f.clone()),
                Comp::Index(i) => Bson::Int32(*i as i32),
            })
            .collect(),
    )
}

impl Tracker {
    /// Builds the change-stream `updateDescription` from the tracked changes.
    pub fn description(&self, new_doc: &Document, show_expanded: bool) -> Document {
        let root = Bson::Document(new_doc.clone());
        let mut sets: Vec<Vec<Comp>> = Vec::new();
        for s in &self.sets {
            if self.sets.iter().any(|o| o.len() < s.len() && is_prefix(o, s)) {
                continue;
            }
            if !sets.contains(s) {
                sets.push(s.clone());
            }
        }
        let mut updated = Document::new();
        let mut disamb = Document::new();
        for s in &sets {
            if let Some(v) = get_at(&root, s) {
                updated.insert(path_str(s), v.clone());
                if ambiguous(s) {
                    disamb.insert(path_str(s), disamb_entry(s));
                }
            }
        }
        for (p, old_len) in &self.appends {
            if sets.iter().any(|o| is_prefix(o, p)) {
                continue;
            }
            if let Some(Bson::Array(a)) = get_at(&root, p) {
                for (i, v) in a.iter().enumerate().skip(*old_len) {
                    let mut pp = p.clone();
                    pp.push(Comp::Index(i));
                    updated.insert(path_str(&pp), v.clone());
                    if ambiguous(&pp) {
                        disamb.insert(path_str(&pp), disamb_entry(&pp));
                    }
                }
            }
        }
        let mut removed = Vec::new();
        for u in &self.unsets {
            removed.push(Bson::String(path_str(u)));
            if ambiguous(u) {
                disamb.insert(path_str(u), disamb_entry(u));
            }
        }
        let truncated: Vec<Bson> = self
            .truncs
            .iter()
            .filter(|(p, _)| !sets.iter().any(|o| is_prefix(o, p)))
            .map(|(p, n)| Bson::Document(doc! {"field": path_str(p), "newSize": *n as i32}))
            .collect();
        let mut d = doc! {"updatedFields": updated, "removedFields": removed, "truncatedArrays": truncated};
        if show_expanded {
            d.insert("disambiguatedPaths", disamb);
        }
        d
    }
}

/// Builds the document inserted by an upsert: equality fields from the query, then the update.
pub fn upsert_seed(filter: &Document) -> Result<Document> {
    let mut root = Bson::Document(Document::new());
    fn collect(f: &Document, root: &mut Bson) -> Result<()> {
        for (k, v) in f {
            match k.as_str() {
                "$and" => {
                    for sub in v.as_array().into_iter().flatten() {
                        if let Bson::Document(sd) = sub {
                            collect(sd, root)?;
                        }
                    }
                }
                k if k.starts_with('$') => {}
                path => {
                    let val = match v {
                        Bson::Document(d) if d.keys().next().is_some_and(|k| k.starts_with('$')) => {
                            match d.get("$eq") {
                                Some(e) => Some(e.clone()),
                                None => match d.get("$in") {
                                    Some(Bson::Array(a)) if a.len() == 1 => Some(a[0].clone()),
                                    _ => None,
                                },
                            }
                        }
                        Bson::RegularExpression(_) => None,
                        other => Some(other.clone()),
                    };
                    if let Some(val) = val {
                        let comps: Vec<Comp> = path.split('.').map(|s| Comp::Field(s.to_string())).collect();
                        set_at(root, &comps, val)?;
                    }
                }
            }
        }
        Ok(())
    }
    collect(filter, &mut root)?;
    match root {
        Bson::Document(d) => Ok(d),
        _ => Ok(Document::new()),
    }
}

/// Returns f64 for tests.
pub fn num(v: &Bson) -> f64 {
    as_f64(v).unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(d: Document, u: Document) -> (Document, Document) {
        let (n, t) = apply(
            &d,
            &UpdateKind::parse(&Bson::Document(u)).unwrap(),
            false,
            None,
            &ArrayFilters::new(),
            &Vars::default(),
        )
        .unwrap();
        let desc = t.description(&n, false);
        (n, desc)
    }

    #[test]
    fn operators_and_descriptions() {
        let (n, d) = up(doc! {"_id": 1, "arr": [1, 2]}, doc! {"$push": {"arr": 3}, "$set": {"b": 1, "a": 2}});
        assert_eq!(n, doc! {"_id": 1, "arr": [1, 2, 3], "a": 2, "b": 1});
        assert_eq!(d.get_document("updatedFields").unwrap(), &doc! {"a": 2, "arr.2": 3, "b": 1});
        let (_, d) = up(doc! {"_id": 1}, doc! {"$set": {"a.b.c": 1}});
        assert_eq!(d.get_document("updatedFields").unwrap(), &doc! {"a": {"b": {"c": 1}}});
        let (_, d) = up(doc! {"_id": 1, "arr": [0]}, doc! {"$set": {"arr.2": 5}});
        assert_eq!(d.get_document("updatedFields").unwrap(), &doc! {"arr.1": null, "arr.2": 5});
        let (_, d) = up(doc! {"_id": 1, "arr": [1, 2, 3]}, doc! {"$pop": {"arr": 1}});
        assert_eq!(d.get_array("truncatedArrays").unwrap()[0], Bson::Document(doc! {"field": "arr", "newSize": 2}));
        let (n, d) = up(doc! {"_id": 1, "a": {"b": 1}}, doc! {"$inc": {"a.b": 2}, "$unset": {"c": ""}});
        assert_eq!(n, doc! {"_id": 1, "a": {"b": 3}});
        assert_eq!(d.get_document("updatedFields").unwrap(), &doc! {"a.b": 3});
        let e = apply(
            &doc! {"_id": 1},
            &UpdateKind::parse(&Bson::Document(doc! {"$set": {"_id": 2}})).unwrap(),
            false,
            None,
            &ArrayFilters::new(),
            &Vars::default(),
        )
        .unwrap_err();
        assert_eq!(e.code(), 66);
        let af = compile_array_filters(Some(&vec![Bson::Document(doc! {"x.v": {"$gt": 1}})])).unwrap();
        let (n, _) = apply(
            &doc! {"_id": 1, "a": [{"v": 1}, {"v": 2}]},
            &UpdateKind::parse(&Bson::Document(doc! {"$set": {"a.$[x].v": 9}})).unwrap(),
            false,
            None,
            &af,
            &Vars::default(),
        )
        .unwrap();
        assert_eq!(n, doc! {"_id": 1, "a": [{"v": 1}, {"v": 9}]});
    }
}
