//! Query matcher: compiles a filter document once and matches decoded documents with
//! MongoDB semantics (implicit array traversal, numeric path components, type brackets).

use std::cmp::Ordering;

use bson::{Bson, Document};

use crate::aggregate::expr::{Vars, eval};
use crate::bson_order::{Key, as_f64, as_i64, compare, is_number, type_alias, type_code, values_equal};
use crate::error::{Error, Result};
use crate::keyset::KeySet;

/// A value found at a path (None = the path is missing).
#[derive(Debug, Clone, Copy)]
pub struct Cand<'a> {
    /// The value, or None when missing.
    pub v: Option<&'a Bson>,
    /// True when the value is an element of an array found at the leaf.
    pub expanded: bool,
    /// Index within the first array traversed (for the positional operator).
    pub idx: Option<usize>,
}

fn walk<'a>(cur: &'a Bson, parts: &[&str], out: &mut Vec<Cand<'a>>, idx: Option<usize>) {
    if parts.is_empty() {
        out.push(Cand { v: Some(cur), expanded: false, idx });
        if let Bson::Array(a) = cur {
            for (i, e) in a.iter().enumerate() {
                out.push(Cand { v: Some(e), expanded: true, idx: idx.or(Some(i)) });
            }
        }
        return;
    }
    match cur {
        Bson::Document(d) => match d.get(parts[0]) {
            Some(v) => walk(v, &parts[1..], out, idx),
            None => out.push(Cand { v: None, expanded: false, idx }),
        },
        Bson::Array(a) => {
            if let Ok(n) = parts[0].parse::<usize>()
                && parts[0].bytes().all(|b| b.is_ascii_digit())
                && let Some(e) = a.get(n)
            {
                walk(e, &parts[1..], out, idx.or(Some(n)));
            }
            for (i, e) in a.iter().enumerate() {
                if let Bson::Document(_) = e {
                    walk(e, parts, out, idx.or(Some(i)));
                }
            }
        }
        _ => out.push(Cand { v: None, expanded: false, idx }),
    }
}

/// Every value at a dotted path, MongoDB-style.
pub fn candidates<'a>(doc: &'a Document, path: &str) -> Vec<Cand<'a>> {
    let parts: Vec<&str> = path.split('.').collect();
    match doc.get(parts[0]) {
        Some(v) => candidates_below(v, &parts[1..]),
        None => vec![Cand { v: None, expanded: false, idx: None }],
    }
}

/// Every value at the path `parts` below the top-level value `v`.
fn candidates_below<'a>(v: &'a Bson, parts: &[&str]) -> Vec<Cand<'a>> {
    let mut out = Vec::new();
    walk(v, parts, &mut out, None);
    if out.is_empty() {
        out.push(Cand { v: None, expanded: false, idx: None });
    }
    out
}

/// Looks up a dotted path without array traversal except numeric indexes (None if missing).
pub fn get_path<'a>(doc: &'a Document, path: &str) -> Option<&'a Bson> {
    let mut parts = path.split('.');
    let mut cur = doc.get(parts.next()?)?;
    for p in parts {
        cur = match cur {
            Bson::Document(d) => d.get(p)?,
            Bson::Array(a) => a.get(p.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// `$type` selector.
#[derive(Debug, Clone)]
enum TypeSel {
    Code(i32),
    Number,
}

#[derive(Debug, Clone)]
enum Op {
    Eq(Bson),
    Gt(Bson),
    Gte(Bson),
    Lt(Bson),
    Lte(Bson),
    In(Vec<Bson>, Vec<regex::Regex>),
    Exists(bool),
    Type(Vec<TypeSel>),
    Size(i64),
    Mod(f64, f64),
    Regex(regex::Regex),
    ElemMatchValue(Vec<Op>),
    ElemMatchDoc(Box<Node>),
    All(Vec<Bson>),
    AllElemMatch(Vec<Node>),
    BitsAllSet(i64),
    BitsAnySet(i64),
    BitsAllClear(i64),
    BitsAnyClear(i64),
    /// Negation of the conjunction of the inner operators (`$ne`, `$nin`, `$not`).
    Not(Vec<Op>),
}

/// A compiled filter node.
#[derive(Debug, Clone)]
pub enum Node {
    /// All children match.
    And(Vec<Node>),
    /// Any child matches.
    Or(Vec<Node>),
    /// No child matches.
    Nor(Vec<Node>),
    /// A condition on a path.
    Field(String, FieldOps),
    /// `$expr`.
    Expr(Bson),
    /// `$jsonSchema`.
    Schema(Document),
    /// Constant.
    Const(bool),
}

/// Opaque list of operators on one path.
#[derive(Debug, Clone)]
pub struct FieldOps(Vec<Op>);

/// Builds a Rust regex from a MongoDB pattern and options.
pub fn build_regex(pattern: &str, options: &str) -> Result<regex::Regex> {
    let mut flags = String::new();
    for c in options.chars() {
        match c {
            'i' | 'm' | 's' | 'x' => flags.push(c),
            'u' | 'l' => {}
            other => return Err(Error::new(51108, format!("invalid flag in regex options: {other}"))),
        }
    }
    let p = if flags.is_empty() { pattern.to_string() } else { format!("(?{flags}){pattern}") };
    regex::Regex::new(&p).map_err(|e| Error::new(51091, format!("Regular expression is invalid: {e}")))
}

fn parse_type_sel(v: &Bson) -> Result<TypeSel> {
    match v {
        Bson::String(s) => Ok(match s.as_str() {
            "number" => TypeSel::Number,
            "double" => TypeSel::Code(1),
            "string" => TypeSel::Code(2),
            "object" => TypeSel::Code(3),
            "array" => TypeSel::Code(4),
            "binData" => TypeSel::Code(5),
            "undefined" => TypeSel::Code(6),
            "objectId" => TypeSel::Code(7),
            "bool" => TypeSel::Code(8),
            "date" => TypeSel::Code(9),
            "null" => TypeSel::Code(10),
            "regex" => TypeSel::Code(11),
            "dbPointer" => TypeSel::Code(12),
            "javascript" => TypeSel::Code(13),
            "symbol" => TypeSel::Code(14),
            "javascriptWithScope" => TypeSel::Code(15),
            "int" => TypeSel::Code(16),
            "timestamp" => TypeSel::Code(17),
            "long" => TypeSel::Code(18),
            "decimal" => TypeSel::Code(19),
            "minKey" => TypeSel::Code(-1),
            "maxKey" => TypeSel::Code(127),
            other => return Err(Error::bad_value(format!("Unknown type name alias: {other}"))),
        }),
        n if is_number(n) => Ok(TypeSel::Code(as_i64(n).unwrap_or(0) as i32)),
        _ => Err(Error::type_mismatch("type must be represented as a number or a string")),
    }
}

fn regex_of(v: &Bson) -> Result<Option<regex::Regex>> {
    match v {
        Bson::RegularExpression(r) => Ok(Some(build_regex(&r.pattern, &r.options)?)),
        _ => Ok(None),
    }
}

fn bits_mask(v: &Bson) -> Result<i64> {
    match v {
        Bson::Array(a) => {
            let mut m = 0i64;
            for b in a {
                let p = as_i64(b).ok_or_else(|| Error::bad_value("bit positions must be integers"))?;
                if (0..64).contains(&p) {
                    m |= 1 << p;
                }
            }
            Ok(m)
        }
        other => as_i64(other).ok_or_else(|| Error::bad_value("bitmask must be a number")),
    }
}

fn is_operator_doc(d: &Document) -> bool {
    d.keys().next().is_some_and(|k| k.starts_with('$'))
}

fn compile_ops(spec: &Document) -> Result<Vec<Op>> {
    let mut ops = Vec::new();
    let options = spec.get_str("$options").unwrap_or("");
    for (k, v) in spec {
        let op = match k.as_str() {
            "$eq" => Op::Eq(v.clone()),
            "$ne" => Op::Not(vec![Op::Eq(v.clone())]),
            "$gt" => Op::Gt(v.clone()),
            "$gte" => Op::Gte(v.clone()),
            "$lt" => Op::Lt(v.clone()),
            "$lte" => Op::Lte(v.clone()),
            "$in" | "$nin" => {
                let arr = v.as_array().ok_or_else(|| Error::bad_value(format!("{k} needs an array")))?;
                let mut res = Vec::new();
                for e in arr {
                    if let Some(r) = regex_of(e)? {
                        res.push(r);
                    }
                }
                let inop = Op::In(arr.clone(), res);
                if k == "$in" { inop } else { Op::Not(vec![inop]) }
            }
            "$exists" => Op::Exists(crate::bson_order::truthy(v)),
            "$type" => match v {
                Bson::Array(a) => Op::Type(a.iter().map(parse_type_sel).collect::<Result<_>>()?),
                other => Op::Type(vec![parse_type_sel(other)?]),
            },
            "$size" => Op::Size(as_i64(v).ok_or_else(|| Error::bad_value("$size needs a number"))?),
            "$mod" => {
                let a = v
                    .as_array()
                    .filter(|a| a.len() == 2)
                    .ok_or_else(|| Error::bad_value("malformed mod, needs to be an array of two numbers"))?;
                let d = as_f64(&a[0]).ok_or_else(|| Error::bad_value("malformed mod, divisor not a number"))?;
                let r = as_f64(&a[1]).ok_or_else(|| Error::bad_value("malformed mod, remainder not a number"))?;
                if d.trunc() == 0.0 {
                    return Err(Error::bad_value("divisor cannot be 0"));
                }
                Op::Mod(d.trunc(), r.trunc())
            }
            "$regex" => match v {
                Bson::String(s) => Op::Regex(build_regex(s, options)?),
                Bson::RegularExpression(r) => {
                    let o = if options.is_empty() { r.options.as_str() } else { options };
                    Op::Regex(build_regex(&r.pattern, o)?)
                }
                _ => return Err(Error::bad_value("$regex has to be a string")),
            },
            "$options" => {
                if !spec.contains_key("$regex") {
                    return Err(Error::bad_value("$options needs a $regex"));
                }
                continue;
            }
            "$elemMatch" => {
                let d = v.as_document().ok_or_else(|| Error::bad_value("$elemMatch needs an Object"))?;
                let value_form = d.keys().next().is_some_and(|k| {
                    k.starts_with('$') && !matches!(k.as_str(), "$and" | "$or" | "$nor" | "$expr" | "$where")
                });
                if value_form { Op::ElemMatchValue(compile_ops(d)?) } else { Op::ElemMatchDoc(Box::new(compile(d)?)) }
            }
            "$all" => {
                let a = v.as_array().ok_or_else(|| Error::bad_value("$all needs an array"))?;
                if !a.is_empty() && a.iter().all(|e| e.as_document().is_some_and(|d| d.contains_key("$elemMatch"))) {
                    let mut nodes = Vec::new();
                    for e in a {
                        let d = e.as_document().unwrap_or(spec);
                        nodes.push(Node::Field(String::new(), FieldOps(compile_ops(d)?)));
                    }
                    Op::AllElemMatch(nodes)
                } else {
                    Op::All(a.clone())
                }
            }
            "$not" => match v {
                Bson::Document(d) => {
                    if d.is_empty() {
                        return Err(Error::bad_value("$not cannot be empty"));
                    }
                    Op::Not(compile_ops(d)?)
                }
                Bson::RegularExpression(r) => Op::Not(vec![Op::Regex(build_regex(&r.pattern, &r.options)?)]),
                _ => return Err(Error::bad_value("$not needs a regex or a document")),
            },
            "$bitsAllSet" => Op::BitsAllSet(bits_mask(v)?),
            "$bitsAnySet" => Op::BitsAnySet(bits_mask(v)?),
            "$bitsAllClear" => Op::BitsAllClear(bits_mask(v)?),
            "$bitsAnyClear" => Op::BitsAnyClear(bits_mask(v)?),
            "$comment" => continue,
            other => return Err(Error::bad_value(format!("unknown operator: {other}"))),
        };
        ops.push(op);
    }
    Ok(ops)
}

/// Compiles a filter document.
pub fn compile(filter: &Document) -> Result<Node> {
    let mut nodes = Vec::new();
    for (k, v) in filter {
        let n = match k.as_str() {
            "$and" | "$or" | "$nor" => {
                let arr = v
                    .as_array()
                    .filter(|a| !a.is_empty())
                    .ok_or_else(|| Error::bad_value(format!("{k} argument must be a non-empty array")))?;
                let mut subs = Vec::new();
                for e in arr {
                    let d = e
                        .as_document()
                        .ok_or_else(|| Error::bad_value(format!("{k} argument's entries must be objects")))?;
                    subs.push(compile(d)?);
                }
                match k.as_str() {
                    "$and" => Node::And(subs),
                    "$or" => Node::Or(subs),
                    _ => Node::Nor(subs),
                }
            }
            "$expr" => Node::Expr(v.clone()),
            "$jsonSchema" => Node::Schema(
                v.as_document().ok_or_else(|| Error::type_mismatch("$jsonSchema must be an object"))?.clone(),
            ),
            "$comment" => continue,
            "$alwaysTrue" => Node::Const(true),
            "$alwaysFalse" => Node::Const(false),
            "$where" => return Err(Error::new(2, "$where is not supported by this server")),
            "$text" => return Err(Error::new(27, "text index required for $text query")),
            other if other.starts_with('$') => {
                return Err(Error::bad_value(format!("unknown top level operator: {other}")));
            }
            path => {
                let ops = match v {
                    Bson::Document(d) if is_operator_doc(d) => compile_ops(d)?,
                    Bson::RegularExpression(r) => vec![Op::Regex(build_regex(&r.pattern, &r.options)?)],
                    other => vec![Op::Eq(other.clone())],
                };
                Node::Field(path.to_string(), FieldOps(ops))
            }
        };
        nodes.push(n);
    }
    Ok(if nodes.len() == 1 { nodes.pop().unwrap_or(Node::Const(true)) } else { Node::And(nodes) })
}

fn cmp_op(c: &Bson, target: &Bson, pred: fn(Ordering) -> bool) -> bool {
    let cross = matches!(target, Bson::MinKey | Bson::MaxKey);
    if !cross && crate::bson_order::type_rank(c).max(3) != crate::bson_order::type_rank(target).max(3) {
        // null and undefined share a bracket
        let both_nullish = matches!(c, Bson::Null | Bson::Undefined) && matches!(target, Bson::Null | Bson::Undefined);
        if !(both_nullish || is_number(c) && is_number(target)) {
            return false;
        }
    }
    if matches!(c, Bson::Double(f) if f.is_nan()) || matches!(target, Bson::Double(f) if f.is_nan()) {
        let both = matches!(c, Bson::Double(f) if f.is_nan()) && matches!(target, Bson::Double(f) if f.is_nan());
        return both && pred(Ordering::Equal);
    }
    pred(compare(c, target))
}

fn eq_value(c: Option<&Bson>, target: &Bson) -> bool {
    match (c, target) {
        (None, Bson::Null) => true,
        (None, _) => false,
        (Some(Bson::Undefined), Bson::Null) => true,
        (Some(v), t) => {
            crate::bson_order::type_rank(v) == crate::bson_order::type_rank(t) && values_equal(v, t)
                || (is_number(v) && is_number(t) && values_equal(v, t))
        }
    }
}

fn type_matches(v: &Bson, sels: &[TypeSel]) -> bool {
    sels.iter().any(|s| match s {
        TypeSel::Number => is_number(v),
        TypeSel::Code(c) => type_code(v) == *c,
    })
}

fn bits_of(v: &Bson) -> Option<i64> {
    match v {
        Bson::Int32(i) => Some(*i as i64),
        Bson::Int64(i) => Some(*i),
        Bson::Double(d) if d.fract() == 0.0 => Some(*d as i64),
        _ => None,
    }
}

/// Matching context (variables for `$expr`, positional index tracking).
pub struct Ctx<'v> {
    /// Variables from `let`.
    pub vars: &'v Vars,
    /// First array index matched by a field condition (positional `$`).
    pub pos: Option<usize>,
}

impl Node {
    /// Matches a document.
    pub fn matches(&self, doc: &Document, vars: &Vars) -> bool {
        let mut ctx = Ctx { vars, pos: None };
        self.matches_ctx(doc, &mut ctx)
    }

    /// Matches a document and reports the first matched array position (for `$`).
    pub fn matches_pos(&self, doc: &Document, vars: &Vars) -> (bool, Option<usize>) {
        let mut ctx = Ctx { vars, pos: None };
        let m = self.matches_ctx(doc, &mut ctx);
        (m, ctx.pos)
    }

    fn matches_ctx(&self, doc: &Document, ctx: &mut Ctx) -> bool {
        match self {
            Node::Const(b) => *b,
            Node::And(ns) => ns.iter().all(|n| n.matches_ctx(doc, ctx)),
            Node::Or(ns) => ns.iter().any(|n| n.matches_ctx(doc, ctx)),
            Node::Nor(ns) => !ns.iter().any(|n| n.matches_ctx(doc, ctx)),
            Node::Expr(e) => {
                let root = Bson::Document(doc.clone());
                eval(e, &root, ctx.vars).map(|v| crate::bson_order::truthy(&v)).unwrap_or(false)
            }
            Node::Schema(s) => crate::query::schema_matches(s, &Bson::Document(doc.clone())),
            Node::Field(path, FieldOps(ops)) => {
                let cands = candidates(doc, path);
                ops.iter().all(|op| op_matches(op, &cands, ctx))
            }
        }
    }

    /// True when only the document's `_id` decides the match: every condition is on `_id`
    /// or a path below it (see [`Node::matches_id`]).
    pub fn id_only(&self) -> bool {
        match self {
            Node::Field(path, _) => id_path(path).is_some(),
            Node::And(ns) | Node::Or(ns) | Node::Nor(ns) => ns.iter().all(Node::id_only),
            Node::Const(_) => true,
            Node::Expr(_) | Node::Schema(_) => false,
        }
    }

    /// Matches a document by its `_id` value alone; the same answer as [`Node::matches`] on
    /// the whole document for [`Node::id_only`] nodes.
    pub fn matches_id(&self, id: &Bson, vars: &Vars) -> bool {
        match self {
            Node::Const(b) => *b,
            Node::And(ns) => ns.iter().all(|n| n.matches_id(id, vars)),
            Node::Or(ns) => ns.iter().any(|n| n.matches_id(id, vars)),
            Node::Nor(ns) => !ns.iter().any(|n| n.matches_id(id, vars)),
            Node::Field(path, FieldOps(ops)) => {
                let Some(rest) = id_path(path) else { return false };
                let cands = candidates_below(id, &rest);
                let mut ctx = Ctx { vars, pos: None };
                ops.iter().all(|op| op_matches(op, &cands, &mut ctx))
            }
            Node::Expr(_) | Node::Schema(_) => false,
        }
    }

    /// The `_id` keys an [`Node::id_only`] node can match: a superset of them, as ranges of
    /// the `_id` index (tight for comparisons, `$in`, `$type` and `$not` of those).
    pub fn id_keys(&self) -> KeySet {
        self.keys(Approx::Over)
    }

    fn keys(&self, mode: Approx) -> KeySet {
        match self {
            Node::Const(true) => KeySet::all(),
            Node::Const(false) => KeySet::empty(),
            Node::And(ns) => ns.iter().fold(KeySet::all(), |acc, n| acc.intersect(&n.keys(mode))),
            Node::Or(ns) => KeySet::union_all(ns.iter().map(|n| n.keys(mode))),
            Node::Nor(ns) => KeySet::union_all(ns.iter().map(|n| n.keys(mode.flip()))).complement(),
            Node::Field(path, FieldOps(ops)) if path == "_id" => ops_keys(ops, mode),
            _ => mode.unknown(),
        }
    }

    /// Matches a bare value (used by `$elemMatch` on scalars and `$pull` conditions).
    pub fn matches_value(&self, v: &Bson, vars: &Vars) -> bool {
        match v {
            Bson::Document(d) => self.matches(d, vars),
            _ => false,
        }
    }
}

/// The path below `_id` of a path on `_id` (empty for `_id` itself).
fn id_path(path: &str) -> Option<Vec<&str>> {
    let mut parts = path.split('.');
    (parts.next() == Some("_id")).then(|| parts.collect())
}

/// Which side a key set errs on: `Over` may hold keys that do not match, `Under` holds only
/// matching keys (what the complement of `$not` / `$nor` needs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Approx {
    Over,
    Under,
}

impl Approx {
    fn flip(self) -> Approx {
        match self {
            Approx::Over => Approx::Under,
            Approx::Under => Approx::Over,
        }
    }

    /// The set when nothing is known.
    fn unknown(self) -> KeySet {
        match self {
            Approx::Over => KeySet::all(),
            Approx::Under => KeySet::empty(),
        }
    }

    /// The set of `known` keys when over-approximating, nothing otherwise.
    fn only_over(self, known: impl FnOnce() -> KeySet) -> KeySet {
        match self {
            Approx::Over => known(),
            Approx::Under => KeySet::empty(),
        }
    }
}

/// Under a case-insensitive collation, values of these brackets (strings, and documents,
/// arrays and code with scope that may hold strings) compare in another order than the
/// `_id` index keeps, so only whole brackets can be sought.
fn collation_sensitive(bracket: u8) -> bool {
    matches!(bracket, 15 | 20 | 25 | 65) && crate::bson_order::case_insensitive()
}

fn is_nan_number(v: &Bson) -> bool {
    is_number(v) && as_f64(v).is_some_and(f64::is_nan)
}

/// The `$type` codes of each comparison bracket.
fn bracket_codes(bracket: u8) -> &'static [i32] {
    match bracket {
        1 => &[-1],
        3 => &[6, 10],
        10 => &[1, 16, 18, 19],
        15 => &[2, 14],
        20 => &[3],
        25 => &[4],
        30 => &[5],
        35 => &[7],
        40 => &[8],
        45 => &[9],
        47 => &[17],
        50 => &[11],
        55 => &[12],
        60 => &[13],
        65 => &[15],
        127 => &[127],
        _ => &[],
    }
}

fn sel_has_code(sel: &TypeSel, code: i32) -> bool {
    match sel {
        TypeSel::Number => matches!(code, 1 | 16 | 18 | 19),
        TypeSel::Code(c) => *c == code,
    }
}

fn ops_keys(ops: &[Op], mode: Approx) -> KeySet {
    ops.iter().fold(KeySet::all(), |acc, op| if acc.is_empty() { acc } else { acc.intersect(&op_keys(op, mode)) })
}

/// The keys equal to `t` (`$eq` on `_id`).
fn eq_keys(t: &Bson, mode: Approx) -> KeySet {
    let b = crate::bson_order::bracket_of(t);
    match mode {
        Approx::Over if collation_sensitive(b) => KeySet::bracket(b),
        Approx::Over => KeySet::point(t),
        // `$eq: undefined` does not match a null `_id`, which has the same key
        Approx::Under if collation_sensitive(b) || matches!(t, Bson::Undefined | Bson::Array(_)) => KeySet::empty(),
        Approx::Under => KeySet::point(t),
    }
}

/// The keys `$gt`/`$gte` (`up`) or `$lt`/`$lte` compared with `t` can match (see `cmp_op`).
fn cmp_keys(t: &Bson, up: bool, strict: bool, mode: Approx) -> KeySet {
    use std::ops::Bound::{Excluded, Included, Unbounded};
    let at = if strict { Excluded(Key(t.clone())) } else { Included(Key(t.clone())) };
    if matches!(t, Bson::MinKey | Bson::MaxKey) {
        // compared across brackets
        return match mode {
            Approx::Over if up => KeySet::range(at, Unbounded),
            Approx::Over => KeySet::range(Unbounded, at),
            Approx::Under => KeySet::empty(),
        };
    }
    let b = crate::bson_order::bracket_of(t);
    if collation_sensitive(b) {
        return mode.only_over(|| KeySet::bracket(b));
    }
    if mode == Approx::Under && is_nan_number(t) {
        return KeySet::empty();
    }
    if up {
        return KeySet::range(at, KeySet::bracket_end(b));
    }
    let lo = match (b, mode) {
        // MinKey passes the bracket check against null (ranks below null count as null)
        (3, Approx::Over) => Unbounded,
        // NaN matches no comparison with a number
        (10, Approx::Under) => Excluded(Key(Bson::Double(f64::NAN))),
        _ => Included(Key(crate::bson_order::bracket_floor(b))),
    };
    KeySet::range(lo, at)
}

/// The keys a single operator on `_id` can match (`Over`) or surely matches (`Under`).
/// `_id` values are never arrays, so array-only operators match nothing beyond the array
/// bracket.
fn op_keys(op: &Op, mode: Approx) -> KeySet {
    match op {
        Op::Eq(t) => eq_keys(t, mode),
        Op::In(vals, _) => KeySet::union_all(vals.iter().map(|t| match t {
            // a regex matches strings, and equal regexes
            Bson::RegularExpression(_) => mode.only_over(|| KeySet::bracket(15).union(&KeySet::bracket(50))),
            t => eq_keys(t, mode),
        })),
        Op::Gt(t) => cmp_keys(t, true, true, mode),
        Op::Gte(t) => cmp_keys(t, true, false, mode),
        Op::Lt(t) => cmp_keys(t, false, true, mode),
        Op::Lte(t) => cmp_keys(t, false, false, mode),
        Op::Exists(true) => KeySet::all(),
        Op::Exists(false) => KeySet::empty(),
        Op::Type(sels) => {
            let keep = |b: &u8| match mode {
                Approx::Over => bracket_codes(*b).iter().any(|c| sels.iter().any(|s| sel_has_code(s, *c))),
                Approx::Under => bracket_codes(*b).iter().all(|c| sels.iter().any(|s| sel_has_code(s, *c))),
            };
            KeySet::union_all(crate::bson_order::BRACKETS.iter().filter(|b| keep(b)).map(|b| KeySet::bracket(*b)))
        }
        Op::Size(_) | Op::ElemMatchValue(_) | Op::ElemMatchDoc(_) | Op::AllElemMatch(_) => {
            mode.only_over(|| KeySet::bracket(25))
        }
        Op::Mod(..) | Op::BitsAllSet(_) | Op::BitsAnySet(_) | Op::BitsAllClear(_) | Op::BitsAnyClear(_) => {
            mode.only_over(|| KeySet::bracket(10))
        }
        Op::Regex(_) => mode.only_over(|| KeySet::bracket(15).union(&KeySet::bracket(50))),
        Op::All(vals) if vals.is_empty() => KeySet::empty(),
        Op::All(_) => mode.unknown(),
        Op::Not(inner) => ops_keys(inner, mode.flip()).complement(),
    }
}

fn op_matches(op: &Op, cands: &[Cand], ctx: &mut Ctx) -> bool {
    let hit = |ctx: &mut Ctx, c: &Cand| {
        if ctx.pos.is_none() {
            ctx.pos = c.idx;
        }
        true
    };
    match op {
        Op::Eq(t) => cands.iter().any(|c| eq_value(c.v, t) && hit(ctx, c)),
        Op::Gt(t) => cands.iter().any(|c| c.v.is_some_and(|v| cmp_op(v, t, |o| o == Ordering::Greater)) && hit(ctx, c)),
        Op::Gte(t) => cands.iter().any(|c| {
            (match c.v {
                Some(v) => cmp_op(v, t, |o| o != Ordering::Less),
                None => matches!(t, Bson::Null | Bson::MinKey),
            }) && hit(ctx, c)
        }),
        Op::Lt(t) => cands.iter().any(|c| c.v.is_some_and(|v| cmp_op(v, t, |o| o == Ordering::Less)) && hit(ctx, c)),
        Op::Lte(t) => cands.iter().any(|c| {
            (match c.v {
                Some(v) => cmp_op(v, t, |o| o != Ordering::Greater),
                None => matches!(t, Bson::Null | Bson::MaxKey),
            }) && hit(ctx, c)
        }),
        Op::In(vals, res) => cands.iter().any(|c| {
            (vals.iter().any(|t| !matches!(t, Bson::RegularExpression(_)) && eq_value(c.v, t))
                || res.iter().any(|r| matches!(c.v, Some(Bson::String(s)) if r.is_match(s)))
                || vals.iter().any(|t| matches!((t, c.v), (Bson::RegularExpression(_), Some(v)) if values_equal(t, v))))
                && hit(ctx, c)
        }),
        Op::Exists(want) => {
            let any = cands.iter().any(|c| c.v.is_some());
            any == *want
        }
        Op::Type(sels) => cands.iter().any(|c| c.v.is_some_and(|v| type_matches(v, sels)) && hit(ctx, c)),
        Op::Size(n) => cands.iter().any(|c| !c.expanded && matches!(c.v, Some(Bson::Array(a)) if a.len() as i64 == *n)),
        Op::Mod(d, r) => cands.iter().any(|c| {
            c.v.filter(|v| is_number(v))
                .and_then(as_f64)
                .is_some_and(|x| x.is_finite() && ((x.trunc() as i64) % (*d as i64)) == *r as i64)
                && hit(ctx, c)
        }),
        Op::Regex(re) => cands.iter().any(|c| {
            (match c.v {
                Some(Bson::String(s)) | Some(Bson::Symbol(s)) => re.is_match(s),
                Some(Bson::RegularExpression(r)) => re.as_str().ends_with(&r.pattern),
                _ => false,
            }) && hit(ctx, c)
        }),
        Op::ElemMatchValue(inner) => cands.iter().any(|c| {
            if c.expanded {
                return false;
            }
            let Some(Bson::Array(a)) = c.v else { return false };
            a.iter().enumerate().any(|(i, e)| {
                let one = [Cand { v: Some(e), expanded: false, idx: None }];
                let mut sub = Ctx { vars: ctx.vars, pos: None };
                let ok = inner.iter().all(|op| op_matches(op, &one, &mut sub));
                if ok && ctx.pos.is_none() {
                    ctx.pos = c.idx.or(Some(i));
                }
                ok
            })
        }),
        Op::ElemMatchDoc(node) => cands.iter().any(|c| {
            if c.expanded {
                return false;
            }
            let Some(Bson::Array(a)) = c.v else { return false };
            a.iter().enumerate().any(|(i, e)| {
                let ok = match e {
                    Bson::Document(d) => node.matches(d, ctx.vars),
                    _ => false,
                };
                if ok && ctx.pos.is_none() {
                    ctx.pos = c.idx.or(Some(i));
                }
                ok
            })
        }),
        Op::All(vals) => {
            if vals.is_empty() {
                return false;
            }
            vals.iter().all(|t| match t {
                Bson::RegularExpression(r) => build_regex(&r.pattern, &r.options)
                    .map(|re| cands.iter().any(|c| matches!(c.v, Some(Bson::String(s)) if re.is_match(s))))
                    .unwrap_or(false),
                _ => cands.iter().any(|c| eq_value(c.v, t)),
            })
        }
        Op::AllElemMatch(nodes) => nodes.iter().all(|n| match n {
            Node::Field(_, FieldOps(ops)) => ops.iter().all(|op| op_matches(op, cands, ctx)),
            _ => false,
        }),
        Op::BitsAllSet(m) => cands.iter().any(|c| c.v.and_then(bits_of).is_some_and(|x| x & m == *m)),
        Op::BitsAnySet(m) => cands.iter().any(|c| c.v.and_then(bits_of).is_some_and(|x| x & m != 0)),
        Op::BitsAllClear(m) => cands.iter().any(|c| c.v.and_then(bits_of).is_some_and(|x| x & m == 0)),
        Op::BitsAnyClear(m) => cands.iter().any(|c| c.v.and_then(bits_of).is_some_and(|x| x & m != *m)),
        Op::Not(inner) => {
            let mut sub = Ctx { vars: ctx.vars, pos: None };
            !inner.iter().all(|op| op_matches(op, cands, &mut sub))
        }
    }
}

fn bson_type_names(v: &Bson) -> Vec<&'static str> {
    let mut names = vec![type_alias(v)];
    if is_number(v) {
        names.push("number");
    }
    names
}

fn json_type_ok(v: &Bson, t: &str) -> bool {
    match t {
        "object" => matches!(v, Bson::Document(_)),
        "array" => matches!(v, Bson::Array(_)),
        "string" => matches!(v, Bson::String(_)),
        "number" => is_number(v),
        "boolean" => matches!(v, Bson::Boolean(_)),
        "null" => matches!(v, Bson::Null),
        "integer" => as_i64(v).is_some(),
        _ => false,
    }
}

fn one_or_many(v: &Bson) -> Vec<String> {
    match v {
        Bson::String(s) => vec![s.clone()],
        Bson::Array(a) => a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect(),
        _ => vec![],
    }
}

/// Validates a value against a (basic) `$jsonSchema`.
pub fn schema_matches(schema: &Document, v: &Bson) -> bool {
    for (k, s) in schema {
        let ok = match k.as_str() {
            "bsonType" => {
                let names = bson_type_names(v);
                one_or_many(s)
                    .iter()
                    .any(|t| names.contains(&t.as_str()) || (t == "int" && matches!(v, Bson::Int32(_))))
            }
            "type" => one_or_many(s).iter().any(|t| json_type_ok(v, t)),
            "required" => match v {
                Bson::Document(d) => one_or_many(s).iter().all(|f| d.contains_key(f)),
                _ => true,
            },
            "properties" => match (v, s) {
                (Bson::Document(d), Bson::Document(props)) => props.iter().all(|(pk, ps)| match (d.get(pk), ps) {
                    (Some(pv), Bson::Document(psd)) => schema_matches(psd, pv),
                    _ => true,
                }),
                _ => true,
            },
            "additionalProperties" => match (v, s) {
                (Bson::Document(d), Bson::Boolean(false)) => {
                    let props = schema.get_document("properties").ok();
                    d.keys().all(|key| props.is_some_and(|p| p.contains_key(key)))
                }
                _ => true,
            },
            "minimum" => as_f64(v).is_none_or(|x| as_f64(s).is_none_or(|m| x >= m)),
            "maximum" => as_f64(v).is_none_or(|x| as_f64(s).is_none_or(|m| x <= m)),
            "exclusiveMinimum" | "exclusiveMaximum" => true,
            "minLength" => v.as_str().is_none_or(|x| as_i64(s).is_none_or(|m| x.chars().count() as i64 >= m)),
            "maxLength" => v.as_str().is_none_or(|x| as_i64(s).is_none_or(|m| x.chars().count() as i64 <= m)),
            "pattern" => v
                .as_str()
                .is_none_or(|x| s.as_str().and_then(|p| regex::Regex::new(p).ok()).is_none_or(|re| re.is_match(x))),
            "enum" => s.as_array().is_none_or(|a| a.iter().any(|e| values_equal(e, v))),
            "items" => match (v, s) {
                (Bson::Array(a), Bson::Document(is)) => a.iter().all(|e| schema_matches(is, e)),
                _ => true,
            },
            "minItems" => v.as_array().is_none_or(|a| as_i64(s).is_none_or(|m| a.len() as i64 >= m)),
            "maxItems" => v.as_array().is_none_or(|a| as_i64(s).is_none_or(|m| a.len() as i64 <= m)),
            "anyOf" => {
                s.as_array().is_none_or(|a| a.iter().any(|x| x.as_document().is_some_and(|d| schema_matches(d, v))))
            }
            "allOf" => {
                s.as_array().is_none_or(|a| a.iter().all(|x| x.as_document().is_some_and(|d| schema_matches(d, v))))
            }
            "oneOf" => s.as_array().is_none_or(|a| {
                a.iter().filter(|x| x.as_document().is_some_and(|d| schema_matches(d, v))).count() == 1
            }),
            "not" => s.as_document().is_none_or(|d| !schema_matches(d, v)),
            _ => true,
        };
        if !ok {
            return false;
        }
    }
    true
}

/// Compiles and matches in one step (convenience for tests and rare paths).
pub fn matches(filter: &Document, doc: &Document) -> Result<bool> {
    Ok(compile(filter)?.matches(doc, &Vars::default()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn m(f: Document, d: Document) -> bool {
        matches(&f, &d).unwrap()
    }

    #[test]
    fn array_semantics() {
        assert!(m(doc! {"a": 2}, doc! {"a": [1, 2, 3]}));
        assert!(m(doc! {"a": [1, 2, 3]}, doc! {"a": [1, 2, 3]}));
        assert!(m(doc! {"a.b": 1}, doc! {"a": [{"b": 0}, {"b": 1}]}));
        assert!(m(doc! {"a.1": 2}, doc! {"a": [1, 2]}));
        assert!(!m(doc! {"a": {"$ne": 2}}, doc! {"a": [1, 2]}));
        assert!(m(doc! {"a": {"$gt": 1, "$lt": 3}}, doc! {"a": [0, 5]}));
        assert!(!m(doc! {"a": {"$elemMatch": {"$gt": 1, "$lt": 3}}}, doc! {"a": [0, 5]}));
        assert!(m(doc! {"a": null}, doc! {"b": 1}));
        assert!(!m(doc! {"a": {"$gt": "a"}}, doc! {"a": 5}));
        assert!(m(doc! {"a": {"$type": "number"}}, doc! {"a": 5i64}));
        assert!(m(doc! {"a": {"$regex": "^AB", "$options": "i"}}, doc! {"a": "abc"}));
        assert!(m(doc! {"a": {"$size": 2}}, doc! {"a": [1, [2]]}));
        assert!(m(doc! {"a": {"$all": [1, 2]}}, doc! {"a": [2, 1, 3]}));
        assert!(m(doc! {"$or": [{"a": 1}, {"b": 2}]}, doc! {"b": 2}));
        assert!(m(doc! {"a": {"$exists": false}}, doc! {"b": 2}));
        assert!(m(doc! {"a": {"$mod": [4, 1]}}, doc! {"a": 9}));
        assert!(m(doc! {"a": {"$not": {"$gt": 5}}}, doc! {"a": 3}));
        assert!(m(doc! {"a": {"$in": [1, 9]}}, doc! {"a": 1.0}));
    }
}
