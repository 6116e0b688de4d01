//! Projections for `find` / `findAndModify` (inclusion, exclusion, `$slice`, `$elemMatch`,
//! positional `field.$`, computed fields) and the `$project` stage.

use bson::{Bson, Document};

use crate::aggregate::expr::{Vars, eval};
use crate::bson_order::as_i64;
use crate::error::{Error, Result};
use crate::query::{self, Node};

#[derive(Debug, Clone)]
enum P {
    Include,
    Exclude,
    Sub(Vec<(String, P)>),
    Expr(Bson),
    Slice(i64, Option<i64>),
    ElemMatch(Box<Node>),
    Positional,
}

/// A compiled projection.
#[derive(Debug, Clone)]
pub struct Projection {
    tree: Vec<(String, P)>,
    inclusion: bool,
    include_id: bool,
}

fn insert(tree: &mut Vec<(String, P)>, path: &[&str], node: P) -> Result<()> {
    let head = path[0].to_string();
    if path.len() == 1 {
        if let Some(existing) = tree.iter().find(|(k, _)| *k == head)
            && (!matches!(existing.1, P::Sub(_)) || !matches!(node, P::Sub(_)))
        {
            return Err(Error::new(31250, format!("Path collision at {head}")));
        }
        tree.push((head, node));
        return Ok(());
    }
    if let Some(pos) = tree.iter().position(|(k, _)| *k == head) {
        match &mut tree[pos].1 {
            P::Sub(sub) => return insert(sub, &path[1..], node),
            _ => return Err(Error::new(31249, format!("Path collision at {}", path.join(".")))),
        }
    }
    let mut sub = Vec::new();
    insert(&mut sub, &path[1..], node)?;
    tree.push((head, P::Sub(sub)));
    Ok(())
}

fn is_bool_like(v: &Bson) -> Option<bool> {
    match v {
        Bson::Boolean(b) => Some(*b),
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => Some(crate::bson_order::truthy(v)),
        _ => None,
    }
}

impl Projection {
    /// Compiles a projection. `find` enables `$slice`/`$elemMatch`/positional forms.
    pub fn compile(spec: &Document, find: bool) -> Result<Projection> {
        let mut tree = Vec::new();
        let mut inclusion: Option<bool> = None;
        let mut include_id = true;
        let mut saw_special = false;
        for (k, v) in spec {
            if k == "_id"
                && let Some(b) = is_bool_like(v)
            {
                include_id = b;
                continue;
            }
            let (path, node) = if let Some(stripped) = k.strip_suffix(".$") {
                if !find {
                    return Err(Error::new(31324, "Cannot use positional projection in aggregation projection"));
                }
                inclusion = Some(true);
                (stripped.to_string(), P::Positional)
            } else if let Some(b) = is_bool_like(v) {
                if let Some(prev) = inclusion
                    && prev != b
                {
                    return Err(Error::new(
                        31254,
                        if b {
                            format!("Cannot do inclusion on field {k} in exclusion projection")
                        } else {
                            format!("Cannot do exclusion on field {k} in inclusion projection")
                        },
                    ));
                }
                inclusion = Some(b);
                (k.clone(), if b { P::Include } else { P::Exclude })
            } else {
                match v {
                    Bson::Document(d) if find && d.contains_key("$slice") => {
                        saw_special = true;
                        let (skip, lim) = match d.get("$slice") {
                            Some(Bson::Array(a)) if a.len() == 2 => {
                                (as_i64(&a[0]).unwrap_or(0), Some(as_i64(&a[1]).unwrap_or(0)))
                            }
                            Some(x) => (
                                as_i64(x).ok_or_else(|| {
                                    Error::bad_value("$slice only supports numbers and [skip, limit] arrays")
                                })?,
                                None,
                            ),
                            None => (0, None),
                        };
                        (k.clone(), P::Slice(skip, lim))
                    }
                    Bson::Document(d) if find && d.contains_key("$elemMatch") => {
                        saw_special = true;
                        if inclusion.is_none() {
                            inclusion = Some(true);
                        }
                        let f = d
                            .get_document("$elemMatch")
                            .map_err(|_| Error::bad_value("elemMatch: Invalid argument, object required."))?;
                        (k.clone(), P::ElemMatch(Box::new(query::compile(f)?)))
                    }
                    Bson::Document(d) if d.keys().next().is_some_and(|x| !x.starts_with('$')) => {
                        // nested projection spec
                        let sub = Projection::compile(d, find)?;
                        if let Some(prev) = inclusion
                            && prev != sub.inclusion
                            && !sub.tree.is_empty()
                        {
                            return Err(Error::new(31254, format!("Cannot mix inclusion and exclusion in {k}")));
                        }
                        if !sub.tree.is_empty() {
                            inclusion = Some(sub.inclusion);
                        }
                        (k.clone(), P::Sub(sub.tree))
                    }
                    Bson::Document(d) if d.get("$meta").is_some() => continue,
                    other => {
                        if inclusion == Some(false) {
                            return Err(Error::new(
                                31252,
                                "Cannot use expression other than $meta in exclusion projection",
                            ));
                        }
                        inclusion = Some(true);
                        (k.clone(), P::Expr(other.clone()))
                    }
                }
            };
            let parts: Vec<&str> = path.split('.').collect();
            insert(&mut tree, &parts, node)?;
        }
        let _ = saw_special;
        // `{_id: 1}` alone is an inclusion projection
        let id_only_inclusion = include_id && spec.get("_id").and_then(is_bool_like) == Some(true);
        let inclusion = inclusion.unwrap_or(id_only_inclusion);
        Ok(Projection { tree, inclusion, include_id })
    }

    /// True if the projection only excludes `_id` / nothing (used by fast paths).
    pub fn is_identity(&self) -> bool {
        self.tree.is_empty() && self.include_id
    }

    /// Applies the projection.
    pub fn apply(&self, doc: &Document, pos: Option<usize>, vars: &Vars) -> Result<Document> {
        let root = Bson::Document(doc.clone());
        let mut out = if self.inclusion {
            let mut o = Document::new();
            if self.include_id
                && let Some(id) = doc.get("_id")
            {
                o.insert("_id", id.clone());
            }
            include(doc, &self.tree, &mut o, pos, &root, vars)?;
            o
        } else {
            exclude(doc, &self.tree, pos, vars)?
        };
        if !self.include_id {
            out.remove("_id");
        }
        Ok(out)
    }
}

fn slice_arr(a: &[Bson], skip: i64, lim: Option<i64>) -> Vec<Bson> {
    let n = a.len() as i64;
    match lim {
        None => {
            if skip >= 0 {
                a.iter().take(skip as usize).cloned().collect()
            } else {
                a.iter().skip((n + skip).max(0) as usize).cloned().collect()
            }
        }
        Some(l) => {
            let start = if skip >= 0 { skip.min(n) } else { (n + skip).max(0) };
            a.iter().skip(start as usize).take(l.max(0) as usize).cloned().collect()
        }
    }
}

fn special(v: &Bson, node: &P, pos: Option<usize>, vars: &Vars) -> Option<Bson> {
    match node {
        P::Slice(s, l) => match v {
            Bson::Array(a) => Some(Bson::Array(slice_arr(a, *s, *l))),
            other => Some(other.clone()),
        },
        P::ElemMatch(f) => match v {
            Bson::Array(a) => a
                .iter()
                .find(|e| matches!(e, Bson::Document(d) if f.matches(d, vars)))
                .map(|e| Bson::Array(vec![e.clone()])),
            _ => None,
        },
        P::Positional => match (v, pos) {
            (Bson::Array(a), Some(i)) => a.get(i).map(|e| Bson::Array(vec![e.clone()])),
            _ => Some(v.clone()),
        },
        _ => None,
    }
}

fn include(
    src: &Document,
    tree: &[(String, P)],
    out: &mut Document,
    pos: Option<usize>,
    root: &Bson,
    vars: &Vars,
) -> Result<()> {
    for (k, v) in src {
        let Some((_, node)) = tree.iter().find(|(n, _)| n == k) else { continue };
        match node {
            P::Include => {
                out.insert(k.clone(), v.clone());
            }
            P::Sub(sub) => match v {
                Bson::Document(d) => {
                    let mut o = Document::new();
                    include(d, sub, &mut o, pos, root, vars)?;
                    add_exprs(sub, &mut o, root, vars, true)?;
                    out.insert(k.clone(), o);
                }
                Bson::Array(a) => {
                    let mut arr = Vec::new();
                    for e in a {
                        if let Bson::Document(d) = e {
                            let mut o = Document::new();
                            include(d, sub, &mut o, pos, root, vars)?;
                            add_exprs(sub, &mut o, root, vars, true)?;
                            arr.push(Bson::Document(o));
                        }
                    }
                    out.insert(k.clone(), arr);
                }
                _ => {}
            },
            P::Expr(_) => {}
            other => {
                if let Some(x) = special(v, other, pos, vars) {
                    out.insert(k.clone(), x);
                }
            }
        }
    }
    add_exprs(tree, out, root, vars, false)?;
    Ok(())
}

fn add_exprs(tree: &[(String, P)], out: &mut Document, root: &Bson, vars: &Vars, nested_only: bool) -> Result<()> {
    for (k, node) in tree {
        match node {
            P::Expr(e) => {
                let v = eval(e, root, vars)?;
                if !matches!(v, Bson::Undefined) {
                    out.insert(k.clone(), v);
                }
            }
            P::Sub(sub) if !nested_only && !out.contains_key(k) && has_expr(sub) => {
                let mut o = Document::new();
                add_exprs(sub, &mut o, root, vars, false)?;
                out.insert(k.clone(), o);
            }
            _ => {}
        }
    }
    Ok(())
}

fn has_expr(tree: &[(String, P)]) -> bool {
    tree.iter().any(|(_, n)| matches!(n, P::Expr(_)) || matches!(n, P::Sub(s) if has_expr(s)))
}

fn exclude(src: &Document, tree: &[(String, P)], pos: Option<usize>, vars: &Vars) -> Result<Document> {
    let mut out = Document::new();
    for (k, v) in src {
        match tree.iter().find(|(n, _)| n == k).map(|(_, p)| p) {
            None => {
                out.insert(k.clone(), v.clone());
            }
            Some(P::Exclude) => {}
            Some(P::Sub(sub)) => match v {
                Bson::Document(d) => {
                    out.insert(k.clone(), exclude(d, sub, pos, vars)?);
                }
                Bson::Array(a) => {
                    let mut arr = Vec::new();
                    for e in a {
                        match e {
                            Bson::Document(d) => arr.push(Bson::Document(exclude(d, sub, pos, vars)?)),
                            other => arr.push(other.clone()),
                        }
                    }
                    out.insert(k.clone(), arr);
                }
                other => {
                    out.insert(k.clone(), other.clone());
                }
            },
            Some(other) => {
                if let Some(x) = special(v, other, pos, vars) {
                    out.insert(k.clone(), x);
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn projections() {
        let d = doc! {"_id": 1, "a": 1, "b": {"c": 2, "d": 3}, "arr": [1, 2, 3, 4]};
        let v = Vars::default();
        let p = Projection::compile(&doc! {"a": 1, "b.c": 1}, true).unwrap();
        assert_eq!(p.apply(&d, None, &v).unwrap(), doc! {"_id": 1, "a": 1, "b": {"c": 2}});
        let p = Projection::compile(&doc! {"b": 0, "_id": 0}, true).unwrap();
        assert_eq!(p.apply(&d, None, &v).unwrap(), doc! {"a": 1, "arr": [1, 2, 3, 4]});
        let p = Projection::compile(&doc! {"arr": {"$slice": -2}, "a": 0}, true).unwrap();
        assert_eq!(p.apply(&d, None, &v).unwrap(), doc! {"_id": 1, "b": {"c": 2, "d": 3}, "arr": [3, 4]});
        let p = Projection::compile(&doc! {"_id": 1}, false).unwrap();
        assert_eq!(p.apply(&d, None, &v).unwrap(), doc! {"_id": 1});
        let p = Projection::compile(&doc! {"x": {"$add": ["$a", 1]}}, true).unwrap();
        assert_eq!(p.apply(&d, None, &v).unwrap(), doc! {"_id": 1, "x": 2});
    }
}
