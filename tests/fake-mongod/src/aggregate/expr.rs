//! Aggregation expressions (`$add`, `$cond`, `$concat`, field paths, `$$variables` ...).
//! A missing value is represented internally by `Bson::Undefined`.

use std::collections::HashMap;

use bson::{Bson, Document, doc};

use crate::bson_order::{as_f64, as_i64, compare, is_number, truthy, type_alias, values_equal};
use crate::error::{Error, Result};

/// The internal "missing" marker.
pub const MISSING: Bson = Bson::Undefined;

/// Expression variables (`$$name`).
#[derive(Debug, Clone, Default)]
pub struct Vars(pub HashMap<String, Bson>);

impl Vars {
    /// Variables from a `let` document (values are evaluated as constants/expressions without a root).
    pub fn from_let(let_doc: Option<&Document>) -> Result<Vars> {
        let mut v = Vars::default();
        if let Some(d) = let_doc {
            for (k, e) in d {
                let val = eval(e, &Bson::Document(Document::new()), &v)?;
                v.0.insert(k.clone(), val);
            }
        }
        Ok(v)
    }
}

fn is_missing(v: &Bson) -> bool {
    matches!(v, Bson::Undefined)
}

/// Walks a dotted path inside a value, mapping over arrays like MongoDB expressions do.
pub fn path_get(v: &Bson, parts: &[&str]) -> Bson {
    if parts.is_empty() {
        return v.clone();
    }
    match v {
        Bson::Document(d) => match d.get(parts[0]) {
            Some(x) => path_get(x, &parts[1..]),
            None => MISSING,
        },
        Bson::Array(a) => Bson::Array(a.iter().map(|e| path_get(e, parts)).filter(|x| !is_missing(x)).collect()),
        _ => MISSING,
    }
}

fn field_ref(s: &str, root: &Bson, vars: &Vars) -> Result<Bson> {
    if let Some(rest) = s.strip_prefix("$$") {
        let mut parts = rest.split('.');
        let name = parts.next().unwrap_or("");
        let rest: Vec<&str> = parts.collect();
        let base = match name {
            "ROOT" | "CURRENT" => vars.0.get(name).cloned().unwrap_or_else(|| root.clone()),
            "REMOVE" => MISSING,
            "NOW" => Bson::DateTime(bson::DateTime::now()),
            "CLUSTER_TIME" => vars.0.get("CLUSTER_TIME").cloned().unwrap_or(Bson::Null),
            other => vars
                .0
                .get(other)
                .cloned()
                .ok_or_else(|| Error::new(17276, format!("Use of undefined variable: {other}")))?,
        };
        Ok(path_get(&base, &rest))
    } else {
        let path = &s[1..];
        let parts: Vec<&str> = path.split('.').collect();
        let cur = vars.0.get("CURRENT").unwrap_or(root);
        Ok(path_get(cur, &parts))
    }
}

fn num_result_f(f: f64) -> Bson {
    Bson::Double(f)
}

fn int_result(i: i64, prefer32: bool) -> Bson {
    if prefer32 && i >= i32::MIN as i64 && i <= i32::MAX as i64 { Bson::Int32(i as i32) } else { Bson::Int64(i) }
}

/// Adds two numbers with MongoDB's type promotion.
pub fn add_nums(a: &Bson, b: &Bson) -> Bson {
    match (a, b) {
        (Bson::Int32(x), Bson::Int32(y)) => int_result(*x as i64 + *y as i64, true),
        (Bson::Int32(_) | Bson::Int64(_), Bson::Int32(_) | Bson::Int64(_)) => {
            let (x, y) = (as_i64(a).unwrap_or(0), as_i64(b).unwrap_or(0));
            match x.checked_add(y) {
                Some(s) => Bson::Int64(s),
                None => Bson::Double(x as f64 + y as f64),
            }
        }
        (Bson::Decimal128(_), _) | (_, Bson::Decimal128(_)) => {
            decimal_from_f64(as_f64(a).unwrap_or(0.0) + as_f64(b).unwrap_or(0.0))
        }
        _ => num_result_f(as_f64(a).unwrap_or(0.0) + as_f64(b).unwrap_or(0.0)),
    }
}

/// Multiplies two numbers with type promotion.
pub fn mul_nums(a: &Bson, b: &Bson) -> Bson {
    match (a, b) {
        (Bson::Int32(x), Bson::Int32(y)) => int_result(*x as i64 * *y as i64, true),
        (Bson::Int32(_) | Bson::Int64(_), Bson::Int32(_) | Bson::Int64(_)) => {
            let (x, y) = (as_i64(a).unwrap_or(0), as_i64(b).unwrap_or(0));
            match x.checked_mul(y) {
                Some(s) => Bson::Int64(s),
                None => Bson::Double(x as f64 * y as f64),
            }
        }
        (Bson::Decimal128(_), _) | (_, Bson::Decimal128(_)) => {
            decimal_from_f64(as_f64(a).unwrap_or(0.0) * as_f64(b).unwrap_or(0.0))
        }
        _ => num_result_f(as_f64(a).unwrap_or(0.0) * as_f64(b).unwrap_or(0.0)),
    }
}

/// Builds a Decimal128 from an f64 (through its string form).
pub fn decimal_from_f64(f: f64) -> Bson {
    match f.to_string().parse::<bson::Decimal128>() {
        Ok(d) => Bson::Decimal128(d),
        Err(_) => Bson::Double(f),
    }
}

fn args(v: &Bson) -> Vec<Bson> {
    match v {
        Bson::Array(a) => a.clone(),
        other => vec![other.clone()],
    }
}

fn eval_args(v: &Bson, root: &Bson, vars: &Vars) -> Result<Vec<Bson>> {
    args(v).iter().map(|a| eval(a, root, vars)).collect()
}

fn nullish(v: &Bson) -> bool {
    matches!(v, Bson::Null | Bson::Undefined)
}

/// Converts a value to its `$toString` form.
pub fn to_string_value(v: &Bson) -> Result<Bson> {
    Ok(match v {
        Bson::Null | Bson::Undefined => Bson::Null,
        Bson::String(s) => Bson::String(s.clone()),
        Bson::Int32(i) => Bson::String(i.to_string()),
        Bson::Int64(i) => Bson::String(i.to_string()),
        Bson::Double(d) => {
            Bson::String(if d.fract() == 0.0 && d.is_finite() { format!("{}", *d as i64) } else { d.to_string() })
        }
        Bson::Decimal128(d) => Bson::String(d.to_string()),
        Bson::Boolean(b) => Bson::String(b.to_string()),
        Bson::ObjectId(o) => Bson::String(o.to_hex()),
        Bson::DateTime(d) => Bson::String(d.try_to_rfc3339_string().unwrap_or_default()),
        other => {
            return Err(Error::new(241, format!("Unsupported conversion from {} to string", type_alias(other))));
        }
    })
}

fn convert(v: &Bson, to: &str) -> Result<Bson> {
    if nullish(v) {
        return Ok(Bson::Null);
    }
    let fail = || Error::new(241, format!("Unsupported conversion from {} to {to}", type_alias(v)));
    Ok(match to {
        "string" => to_string_value(v)?,
        "int" => match v {
            Bson::String(s) => Bson::Int32(s.trim().parse().map_err(|_| fail())?),
            Bson::Boolean(b) => Bson::Int32(*b as i32),
            n if is_number(n) => Bson::Int32(as_f64(n).ok_or_else(fail)?.trunc() as i32),
            _ => return Err(fail()),
        },
        "long" => match v {
            Bson::String(s) => Bson::Int64(s.trim().parse().map_err(|_| fail())?),
            Bson::Boolean(b) => Bson::Int64(*b as i64),
            Bson::DateTime(d) => Bson::Int64(d.timestamp_millis()),
            n if is_number(n) => Bson::Int64(as_f64(n).ok_or_else(fail)?.trunc() as i64),
            _ => return Err(fail()),
        },
        "double" => match v {
            Bson::String(s) => Bson::Double(s.trim().parse().map_err(|_| fail())?),
            Bson::Boolean(b) => Bson::Double(*b as i64 as f64),
            Bson::DateTime(d) => Bson::Double(d.timestamp_millis() as f64),
            n if is_number(n) => Bson::Double(as_f64(n).ok_or_else(fail)?),
            _ => return Err(fail()),
        },
        "decimal" => match v {
            Bson::String(s) => Bson::Decimal128(s.parse().map_err(|_| fail())?),
            n if is_number(n) => decimal_from_f64(as_f64(n).ok_or_else(fail)?),
            _ => return Err(fail()),
        },
        "bool" => Bson::Boolean(truthy(v)),
        "objectId" => match v {
            Bson::ObjectId(o) => Bson::ObjectId(*o),
            Bson::String(s) => Bson::ObjectId(bson::oid::ObjectId::parse_str(s).map_err(|_| fail())?),
            _ => return Err(fail()),
        },
        "date" => match v {
            Bson::DateTime(d) => Bson::DateTime(*d),
            Bson::ObjectId(o) => Bson::DateTime(o.timestamp()),
            n if is_number(n) => Bson::DateTime(bson::DateTime::from_millis(as_i64(n).ok_or_else(fail)?)),
            Bson::String(s) => Bson::DateTime(bson::DateTime::parse_rfc3339_str(s).map_err(|_| fail())?),
            _ => return Err(fail()),
        },
        _ => return Err(Error::bad_value(format!("unknown $convert target type {to}"))),
    })
}

fn num_arg(v: &Bson, op: &str) -> Result<Option<f64>> {
    if nullish(v) {
        return Ok(None);
    }
    as_f64(v)
        .map(Some)
        .ok_or_else(|| Error::new(28765, format!("{op} only supports numeric types, not {}", type_alias(v))))
}

fn array_arg(v: &Bson, op: &str) -> Result<Option<Vec<Bson>>> {
    match v {
        Bson::Array(a) => Ok(Some(a.clone())),
        x if nullish(x) => Ok(None),
        x => Err(Error::new(28689, format!("{op}'s argument must be an array, but is {}", type_alias(x)))),
    }
}

/// Evaluates an aggregation expression against `root`.
pub fn eval(expr: &Bson, root: &Bson, vars: &Vars) -> Result<Bson> {
    match expr {
        Bson::String(s) if s.starts_with('$') => field_ref(s, root, vars),
        Bson::Array(a) => Ok(Bson::Array(
            a.iter()
                .map(|e| eval(e, root, vars).map(|v| if is_missing(&v) { Bson::Null } else { v }))
                .collect::<Result<_>>()?,
        )),
        Bson::Document(d) => {
            if let Some((k, v)) = d.iter().next()
                && k.starts_with('$')
            {
                if d.len() != 1 {
                    return Err(Error::new(15983, "an expression specification must contain exactly one field"));
                }
                return eval_op(k, v, root, vars);
            }
            let mut out = Document::new();
            for (k, v) in d {
                let r = eval(v, root, vars)?;
                if !is_missing(&r) {
                    out.insert(k.clone(), r);
                }
            }
            Ok(Bson::Document(out))
        }
        other => Ok(other.clone()),
    }
}

fn arity(op: &str) -> Option<usize> {
    Some(match op {
        "$abs" | "$ceil" | "$floor" | "$sqrt" | "$exp" | "$ln" | "$log10" | "$not" | "$size" | "$isArray"
        | "$reverseArray" | "$toString" | "$toInt" | "$toLong" | "$toDouble" | "$toDecimal" | "$toBool"
        | "$toObjectId" | "$toDate" | "$type" | "$objectToArray" | "$arrayToObject" | "$strLenCP" | "$strLenBytes"
        | "$toUpper" | "$toLower" | "$isNumber" | "$allElementsTrue" | "$anyElementTrue" => 1,
        "$divide" | "$mod" | "$pow" | "$in" | "$arrayElemAt" | "$split" | "$eq" | "$ne" | "$gt" | "$gte" | "$lt"
        | "$lte" | "$cmp" | "$subtract" | "$setDifference" | "$setIsSubset" => 2,
        _ => return None,
    })
}

fn eval_op(op: &str, v: &Bson, root: &Bson, vars: &Vars) -> Result<Bson> {
    if let Some(n) = arity(op) {
        let count = match v {
            Bson::Array(a) => a.len(),
            _ => 1,
        };
        if count != n {
            return Err(Error::new(
                16020,
                format!("Expression {op} takes exactly {n} arguments. {count} were passed in."),
            ));
        }
    }
    let a = || eval_args(v, root, vars);
    Ok(match op {
        "$literal" => v.clone(),
        "$add" => {
            let xs = a()?;
            let mut acc = Bson::Int32(0);
            let mut date: Option<i64> = None;
            for x in &xs {
                match x {
                    x if nullish(x) => return Ok(Bson::Null),
                    Bson::DateTime(d) => date = Some(d.timestamp_millis()),
                    n if is_number(n) => acc = add_nums(&acc, n),
                    other => {
                        return Err(Error::new(
                            16554,
                            format!("$add only supports numeric or date types, not {}", type_alias(other)),
                        ));
                    }
                }
            }
            match date {
                Some(ms) => Bson::DateTime(bson::DateTime::from_millis(ms + as_f64(&acc).unwrap_or(0.0) as i64)),
                None => acc,
            }
        }
        "$subtract" => {
            let xs = a()?;
            if xs.len() != 2 {
                return Err(Error::new(16020, "Expression $subtract takes exactly 2 arguments"));
            }
            match (&xs[0], &xs[1]) {
                (x, y) if nullish(x) || nullish(y) => Bson::Null,
                (Bson::DateTime(x), Bson::DateTime(y)) => Bson::Int64(x.timestamp_millis() - y.timestamp_millis()),
                (Bson::DateTime(x), n) if is_number(n) => {
                    Bson::DateTime(bson::DateTime::from_millis(x.timestamp_millis() - as_f64(n).unwrap_or(0.0) as i64))
                }
                (x, y) if is_number(x) && is_number(y) => add_nums(x, &mul_nums(y, &Bson::Int32(-1))),
                _ => return Err(Error::new(16556, "cant $subtract non-numbers")),
            }
        }
        "$multiply" => {
            let mut acc = Bson::Int32(1);
            for x in a()? {
                if nullish(&x) {
                    return Ok(Bson::Null);
                }
                if !is_number(&x) {
                    return Err(Error::new(16555, "$multiply only supports numeric types"));
                }
                acc = mul_nums(&acc, &x);
            }
            acc
        }
        "$divide" => {
            let xs = a()?;
            let (Some(x), Some(y)) = (num_arg(&xs[0], op)?, num_arg(xs.get(1).unwrap_or(&Bson::Null), op)?) else {
                return Ok(Bson::Null);
            };
            if y == 0.0 {
                return Err(Error::new(2, "can't $divide by zero"));
            }
            Bson::Double(x / y)
        }
        "$mod" => {
            let xs = a()?;
            match (&xs[0], xs.get(1).unwrap_or(&Bson::Null)) {
                (x, y) if nullish(x) || nullish(y) => Bson::Null,
                (Bson::Int32(x), Bson::Int32(y)) if *y != 0 => Bson::Int32(x % y),
                (x, y)
                    if as_i64(x).is_some()
                        && as_i64(y).is_some()
                        && !matches!(x, Bson::Double(_))
                        && !matches!(y, Bson::Double(_)) =>
                {
                    let d = as_i64(y).unwrap_or(1);
                    if d == 0 {
                        return Err(Error::new(16610, "can't $mod by zero"));
                    }
                    Bson::Int64(as_i64(x).unwrap_or(0) % d)
                }
                (x, y) => Bson::Double(as_f64(x).unwrap_or(f64::NAN) % as_f64(y).unwrap_or(f64::NAN)),
            }
        }
        "$abs" | "$ceil" | "$floor" | "$sqrt" | "$exp" | "$ln" | "$log10" => {
            let x = eval(&args(v)[0], root, vars)?;
            if nullish(&x) {
                return Ok(Bson::Null);
            }
            match (op, &x) {
                ("$abs", Bson::Int32(i)) => int_result((*i as i64).abs(), true),
                ("$abs", Bson::Int64(i)) => Bson::Int64(i.abs()),
                ("$ceil" | "$floor", Bson::Int32(_) | Bson::Int64(_)) => x.clone(),
                _ => {
                    let f = num_arg(&x, op)?.unwrap_or(0.0);
                    Bson::Double(match op {
                        "$abs" => f.abs(),
                        "$ceil" => f.ceil(),
                        "$floor" => f.floor(),
                        "$sqrt" => f.sqrt(),
                        "$exp" => f.exp(),
                        "$ln" => f.ln(),
                        _ => f.log10(),
                    })
                }
            }
        }
        "$pow" => {
            let xs = a()?;
            match (num_arg(&xs[0], op)?, num_arg(&xs[1], op)?) {
                (Some(b), Some(e)) => {
                    let r = b.powf(e);
                    if matches!(xs[0], Bson::Int32(_) | Bson::Int64(_))
                        && matches!(xs[1], Bson::Int32(_) | Bson::Int64(_))
                        && e >= 0.0
                        && r.abs() < 9e15
                    {
                        int_result(r as i64, matches!((&xs[0], &xs[1]), (Bson::Int32(_), Bson::Int32(_))))
                    } else {
                        Bson::Double(r)
                    }
                }
                _ => Bson::Null,
            }
        }
        "$round" | "$trunc" => {
            let xs = a()?;
            let place = xs.get(1).and_then(as_i64).unwrap_or(0);
            match &xs[0] {
                x if nullish(x) => Bson::Null,
                Bson::Int32(_) | Bson::Int64(_) if place >= 0 => xs[0].clone(),
                x => {
                    let f = num_arg(x, op)?.unwrap_or(0.0);
                    let m = 10f64.powi(place as i32);
                    let r = if op == "$trunc" {
                        (f * m).trunc() / m
                    } else {
                        let y = f * m;
                        let r = y.round();
                        let r = if (y - y.trunc()).abs() == 0.5 && r % 2.0 != 0.0 { r - y.signum() } else { r };
                        r / m
                    };
                    Bson::Double(r)
                }
            }
        }
        "$concat" => {
            let mut s = String::new();
            for x in a()? {
                match x {
                    Bson::String(t) => s.push_str(&t),
                    x if nullish(&x) => return Ok(Bson::Null),
                    other => {
                        return Err(Error::new(
                            16702,
                            format!("$concat only supports strings, not {}", type_alias(&other)),
                        ));
                    }
                }
            }
            Bson::String(s)
        }
        "$toUpper" | "$toLower" => {
            let x = eval(&args(v)[0], root, vars)?;
            let s = match x {
                Bson::String(s) => s,
                x if nullish(&x) => String::new(),
                other => match to_string_value(&other)? {
                    Bson::String(s) => s,
                    _ => String::new(),
                },
            };
            Bson::String(if op == "$toUpper" { s.to_uppercase() } else { s.to_lowercase() })
        }
        "$substr" | "$substrBytes" | "$substrCP" => {
            let xs = a()?;
            let s = match &xs[0] {
                Bson::String(s) => s.clone(),
                x if nullish(x) => String::new(),
                other => match to_string_value(other)? {
                    Bson::String(s) => s,
                    _ => String::new(),
                },
            };
            let start = xs.get(1).and_then(as_i64).unwrap_or(0).max(0) as usize;
            let len = xs.get(2).and_then(as_i64).unwrap_or(-1);
            if op == "$substrCP" {
                let chars: Vec<char> = s.chars().collect();
                let end = if len < 0 { chars.len() } else { (start + len as usize).min(chars.len()) };
                Bson::String(
                    chars
                        .get(start.min(chars.len())..end.max(start.min(chars.len())))
                        .map(|c| c.iter().collect())
                        .unwrap_or_default(),
                )
            } else {
                let b = s.as_bytes();
                let st = start.min(b.len());
                let end = if len < 0 { b.len() } else { (st + len as usize).min(b.len()) };
                Bson::String(String::from_utf8_lossy(&b[st..end]).into_owned())
            }
        }
        "$strLenCP" | "$strLenBytes" => match eval(&args(v)[0], root, vars)? {
            Bson::String(s) => Bson::Int32(if op == "$strLenCP" { s.chars().count() } else { s.len() } as i32),
            _ => return Err(Error::new(34471, format!("{op} requires a string argument"))),
        },
        "$split" => {
            let xs = a()?;
            match (&xs[0], &xs[1]) {
                (Bson::String(s), Bson::String(d)) => {
                    Bson::Array(s.split(d.as_str()).map(|p| Bson::String(p.into())).collect())
                }
                (x, _) if nullish(x) => Bson::Null,
                _ => return Err(Error::new(40085, "$split requires strings")),
            }
        }
        "$trim" | "$ltrim" | "$rtrim" => {
            let d = v.as_document().ok_or_else(|| Error::bad_value(format!("{op} needs an object")))?;
            let input = eval(d.get("input").unwrap_or(&Bson::Null), root, vars)?;
            let Bson::String(s) = input else { return Ok(Bson::Null) };
            let chars: Option<Vec<char>> = match d.get("chars") {
                Some(c) => match eval(c, root, vars)? {
                    Bson::String(c) => Some(c.chars().collect()),
                    _ => None,
                },
                None => None,
            };
            let pred = |c: char| match &chars {
                Some(cs) => cs.contains(&c),
                None => c.is_whitespace(),
            };
            Bson::String(match op {
                "$trim" => s.trim_matches(pred).to_string(),
                "$ltrim" => s.trim_start_matches(pred).to_string(),
                _ => s.trim_end_matches(pred).to_string(),
            })
        }
        "$regexMatch" => {
            let d = v.as_document().ok_or_else(|| Error::bad_value("$regexMatch needs an object"))?;
            let input = eval(d.get("input").unwrap_or(&Bson::Null), root, vars)?;
            let (pat, opts) = match eval(d.get("regex").unwrap_or(&Bson::Null), root, vars)? {
                Bson::String(s) => (s, String::new()),
                Bson::RegularExpression(r) => (r.pattern, r.options),
                _ => return Ok(Bson::Boolean(false)),
            };
            let opts = match d.get("options") {
                Some(o) => eval(o, root, vars)?.as_str().map(str::to_string).unwrap_or(opts),
                None => opts,
            };
            let re = crate::query::build_regex(&pat, &opts)?;
            Bson::Boolean(matches!(input, Bson::String(s) if re.is_match(&s)))
        }
        "$eq" | "$ne" | "$gt" | "$gte" | "$lt" | "$lte" | "$cmp" => {
            let xs = a()?;
            if xs.len() != 2 {
                return Err(Error::new(16020, format!("Expression {op} takes exactly 2 arguments")));
            }
            let (x, y) = (
                if is_missing(&xs[0]) { Bson::Null } else { xs[0].clone() },
                if is_missing(&xs[1]) { Bson::Null } else { xs[1].clone() },
            );
            let o = compare(&x, &y);
            use std::cmp::Ordering::*;
            match op {
                "$eq" => Bson::Boolean(o == Equal),
                "$ne" => Bson::Boolean(o != Equal),
                "$gt" => Bson::Boolean(o == Greater),
                "$gte" => Bson::Boolean(o != Less),
                "$lt" => Bson::Boolean(o == Less),
                "$lte" => Bson::Boolean(o != Greater),
                _ => Bson::Int32(match o {
                    Less => -1,
                    Equal => 0,
                    Greater => 1,
                }),
            }
        }
        "$and" => {
            for x in args(v) {
                if !truthy(&eval(&x, root, vars)?) {
                    return Ok(Bson::Boolean(false));
                }
            }
            Bson::Boolean(true)
        }
        "$or" => {
            for x in args(v) {
                if truthy(&eval(&x, root, vars)?) {
                    return Ok(Bson::Boolean(true));
                }
            }
            Bson::Boolean(false)
        }
        "$not" => Bson::Boolean(!truthy(&eval(&args(v)[0], root, vars)?)),
        "$cond" => {
            let (c, t, e) = match v {
                Bson::Document(d) => (
                    d.get("if").cloned().unwrap_or(Bson::Null),
                    d.get("then").cloned().unwrap_or(Bson::Null),
                    d.get("else").cloned().unwrap_or(Bson::Null),
                ),
                Bson::Array(a) if a.len() == 3 => (a[0].clone(), a[1].clone(), a[2].clone()),
                _ => return Err(Error::bad_value("$cond needs if/then/else")),
            };
            if truthy(&eval(&c, root, vars)?) { eval(&t, root, vars)? } else { eval(&e, root, vars)? }
        }
        "$ifNull" => {
            let xs = args(v);
            for (i, x) in xs.iter().enumerate() {
                let r = eval(x, root, vars)?;
                if !nullish(&r) || i == xs.len() - 1 {
                    return Ok(r);
                }
            }
            Bson::Null
        }
        "$switch" => {
            let d = v.as_document().ok_or_else(|| Error::bad_value("$switch needs an object"))?;
            if let Ok(branches) = d.get_array("branches") {
                for b in branches {
                    if let Bson::Document(bd) = b
                        && truthy(&eval(bd.get("case").unwrap_or(&Bson::Null), root, vars)?)
                    {
                        return eval(bd.get("then").unwrap_or(&Bson::Null), root, vars);
                    }
                }
            }
            match d.get("default") {
                Some(x) => eval(x, root, vars)?,
                None => {
                    return Err(Error::new(
                        40066,
                        "$switch could not find a matching branch for an input, and no default was specified.",
                    ));
                }
            }
        }
        "$in" => {
            let xs = a()?;
            let arr = array_arg(&xs[1], "$in")?
                .ok_or_else(|| Error::new(40081, "$in requires an array as a second argument"))?;
            Bson::Boolean(arr.iter().any(|e| values_equal(e, &xs[0])))
        }
        "$size" => match eval(&args(v)[0], root, vars)? {
            Bson::Array(arr) => Bson::Int32(arr.len() as i32),
            other => {
                return Err(Error::new(
                    17124,
                    format!(
                        "The argument to $size must be an array. Type of the argument was {}",
                        if is_missing(&other) { "missing" } else { type_alias(&other) }
                    ),
                ));
            }
        },
        "$arrayElemAt" => {
            let xs = a()?;
            let Some(arr) = array_arg(&xs[0], op)? else { return Ok(Bson::Null) };
            let i = as_i64(&xs[1])
                .ok_or_else(|| Error::new(28690, "$arrayElemAt's second argument must be a numeric value"))?;
            let idx = if i < 0 { arr.len() as i64 + i } else { i };
            if idx < 0 { MISSING } else { arr.get(idx as usize).cloned().unwrap_or(MISSING) }
        }
        "$first" | "$last" => {
            let x = eval(&args(v)[0], root, vars)?;
            let Some(arr) = array_arg(&x, op)? else { return Ok(Bson::Null) };
            let r = if op == "$first" { arr.first() } else { arr.last() };
            r.cloned().unwrap_or(MISSING)
        }
        "$concatArrays" => {
            let mut out = Vec::new();
            for x in a()? {
                match array_arg(&x, op)? {
                    Some(arr) => out.extend(arr),
                    None => return Ok(Bson::Null),
                }
            }
            Bson::Array(out)
        }
        "$reverseArray" => match array_arg(&eval(&args(v)[0], root, vars)?, op)? {
            Some(mut arr) => {
                arr.reverse();
                Bson::Array(arr)
            }
            None => Bson::Null,
        },
        "$isArray" => Bson::Boolean(matches!(eval(&args(v)[0], root, vars)?, Bson::Array(_))),
        "$isNumber" => Bson::Boolean(is_number(&eval(&args(v)[0], root, vars)?)),
        "$slice" => {
            let xs = a()?;
            let Some(arr) = array_arg(&xs[0], op)? else { return Ok(Bson::Null) };
            let n = arr.len() as i64;
            let (start, count) = if xs.len() == 2 {
                let c = as_i64(&xs[1]).unwrap_or(0);
                if c >= 0 { (0, c) } else { ((n + c).max(0), -c) }
            } else {
                let p = as_i64(&xs[1]).unwrap_or(0);
                let p = if p < 0 { (n + p).max(0) } else { p.min(n) };
                (p, as_i64(&xs[2]).unwrap_or(0))
            };
            Bson::Array(arr.into_iter().skip(start as usize).take(count.max(0) as usize).collect())
        }
        "$indexOfArray" => {
            let xs = a()?;
            let Some(arr) = array_arg(&xs[0], op)? else { return Ok(Bson::Null) };
            Bson::Int32(arr.iter().position(|e| values_equal(e, &xs[1])).map(|p| p as i32).unwrap_or(-1))
        }
        "$range" => {
            let xs = a()?;
            let (s, e) = (as_i64(&xs[0]).unwrap_or(0), as_i64(&xs[1]).unwrap_or(0));
            let step = xs.get(2).and_then(as_i64).unwrap_or(1);
            if step == 0 {
                return Err(Error::new(34449, "$range requires a non-zero step value"));
            }
            let mut out = Vec::new();
            let mut i = s;
            while (step > 0 && i < e) || (step < 0 && i > e) {
                out.push(Bson::Int32(i as i32));
                i += step;
            }
            Bson::Array(out)
        }
        "$filter" | "$map" => {
            let d = v.as_document().ok_or_else(|| Error::bad_value(format!("{op} needs an object")))?;
            let input = eval(d.get("input").unwrap_or(&Bson::Null), root, vars)?;
            let Some(arr) = array_arg(&input, op)? else { return Ok(Bson::Null) };
            let name = d.get_str("as").unwrap_or("this").to_string();
            let mut out = Vec::new();
            let limit = match d.get("limit") {
                Some(l) => as_i64(&eval(l, root, vars)?),
                None => None,
            };
            for e in arr {
                let mut vv = vars.clone();
                vv.0.insert(name.clone(), e.clone());
                if op == "$filter" {
                    if truthy(&eval(d.get("cond").unwrap_or(&Bson::Boolean(true)), root, &vv)?) {
                        out.push(e);
                        if limit.is_some_and(|l| out.len() as i64 >= l) {
                            break;
                        }
                    }
                } else {
                    let r = eval(d.get("in").unwrap_or(&Bson::Null), root, &vv)?;
                    out.push(if is_missing(&r) { Bson::Null } else { r });
                }
            }
            Bson::Array(out)
        }
        "$reduce" => {
            let d = v.as_document().ok_or_else(|| Error::bad_value("$reduce needs an object"))?;
            let input = eval(d.get("input").unwrap_or(&Bson::Null), root, vars)?;
            let Some(arr) = array_arg(&input, op)? else { return Ok(Bson::Null) };
            let mut acc = eval(d.get("initialValue").unwrap_or(&Bson::Null), root, vars)?;
            for e in arr {
                let mut vv = vars.clone();
                vv.0.insert("this".into(), e);
                vv.0.insert("value".into(), acc);
                acc = eval(d.get("in").unwrap_or(&Bson::Null), root, &vv)?;
            }
            acc
        }
        "$let" => {
            let d = v.as_document().ok_or_else(|| Error::bad_value("$let needs an object"))?;
            let mut vv = vars.clone();
            if let Ok(defs) = d.get_document("vars") {
                for (k, e) in defs {
                    vv.0.insert(k.clone(), eval(e, root, vars)?);
                }
            }
            eval(d.get("in").unwrap_or(&Bson::Null), root, &vv)?
        }
        "$type" => {
            let x = eval(&args(v)[0], root, vars)?;
            Bson::String(if is_missing(&x) { "missing".into() } else { type_alias(&x).into() })
        }
        "$toString" => to_string_value(&eval(&args(v)[0], root, vars)?)?,
        "$toInt" => convert(&eval(&args(v)[0], root, vars)?, "int")?,
        "$toLong" => convert(&eval(&args(v)[0], root, vars)?, "long")?,
        "$toDouble" => convert(&eval(&args(v)[0], root, vars)?, "double")?,
        "$toDecimal" => convert(&eval(&args(v)[0], root, vars)?, "decimal")?,
        "$toBool" => convert(&eval(&args(v)[0], root, vars)?, "bool")?,
        "$toObjectId" => convert(&eval(&args(v)[0], root, vars)?, "objectId")?,
        "$toDate" => convert(&eval(&args(v)[0], root, vars)?, "date")?,
        "$convert" => {
            let d = v.as_document().ok_or_else(|| Error::bad_value("$convert needs an object"))?;
            let input = eval(d.get("input").unwrap_or(&Bson::Null), root, vars)?;
            if nullish(&input) {
                if let Some(n) = d.get("onNull") {
                    return eval(n, root, vars);
                }
                return Ok(Bson::Null);
            }
            let to = match eval(d.get("to").unwrap_or(&Bson::Null), root, vars)? {
                Bson::String(s) => s,
                n => match as_i64(&n) {
                    Some(1) => "double".into(),
                    Some(2) => "string".into(),
                    Some(7) => "objectId".into(),
                    Some(8) => "bool".into(),
                    Some(9) => "date".into(),
                    Some(16) => "int".into(),
                    Some(18) => "long".into(),
                    Some(19) => "decimal".into(),
                    _ => return Err(Error::bad_value("unknown $convert target")),
                },
            };
            match convert(&input, &to) {
                Ok(r) => r,
                Err(e) => match d.get("onError") {
                    Some(x) => eval(x, root, vars)?,
                    None => return Err(e),
                },
            }
        }
        "$objectToArray" => match eval(&args(v)[0], root, vars)? {
            Bson::Document(d) => {
                Bson::Array(d.into_iter().map(|(k, v)| Bson::Document(doc! {"k": k, "v": v})).collect())
            }
            x if nullish(&x) => Bson::Null,
            _ => return Err(Error::new(40390, "$objectToArray requires a document input")),
        },
        "$arrayToObject" => {
            let x = eval(&args(v)[0], root, vars)?;
            let Some(arr) = array_arg(&x, op)? else { return Ok(Bson::Null) };
            let mut out = Document::new();
            for e in arr {
                match e {
                    Bson::Document(d) => {
                        if let (Ok(k), Some(v)) = (d.get_str("k"), d.get("v")) {
                            out.insert(k, v.clone());
                        }
                    }
                    Bson::Array(kv) if kv.len() == 2 => {
                        if let Bson::String(k) = &kv[0] {
                            out.insert(k.clone(), kv[1].clone());
                        }
                    }
                    _ => return Err(Error::new(40398, "$arrayToObject requires k/v pairs")),
                }
            }
            Bson::Document(out)
        }
        "$mergeObjects" => {
            let mut out = Document::new();
            for x in a()? {
                if let Bson::Document(d) = x {
                    for (k, v) in d {
                        out.insert(k, v);
                    }
                }
            }
            Bson::Document(out)
        }
        "$getField" => {
            let (field, input) = match v {
                Bson::Document(d) if d.contains_key("field") => (
                    eval(d.get("field").unwrap_or(&Bson::Null), root, vars)?,
                    match d.get("input") {
                        Some(i) => eval(i, root, vars)?,
                        None => vars.0.get("CURRENT").cloned().unwrap_or_else(|| root.clone()),
                    },
                ),
                other => (eval(other, root, vars)?, root.clone()),
            };
            match (field, input) {
                (Bson::String(f), Bson::Document(d)) => d.get(&f).cloned().unwrap_or(MISSING),
                _ => MISSING,
            }
        }
        "$setField" | "$unsetField" => {
            let d = v
                .as_document()
                .ok_or_else(|| Error::new(4161100, format!("{op} only supports an object as its argument")))?;
            let field = match eval(d.get("field").unwrap_or(&Bson::Null), root, vars)? {
                Bson::String(s) => s,
                _ => return Err(Error::new(4161106, format!("{op} requires 'field' to evaluate to type String"))),
            };
            let input = eval(d.get("input").unwrap_or(&Bson::Null), root, vars)?;
            let mut out = match input {
                Bson::Document(doc) => doc,
                x if nullish(&x) => return Ok(Bson::Null),
                _ => return Err(Error::new(4161105, format!("{op} requires 'input' to evaluate to type Object"))),
            };
            let value =
                if op == "$setField" { eval(d.get("value").unwrap_or(&Bson::Null), root, vars)? } else { MISSING };
            if is_missing(&value) {
                out.remove(&field);
            } else {
                out.insert(field, value);
            }
            Bson::Document(out)
        }
        "$max" | "$min" | "$sum" | "$avg" => {
            let xs = a()?;
            let flat: Vec<Bson> = if xs.len() == 1 {
                match &xs[0] {
                    Bson::Array(arr) => arr.clone(),
                    other => vec![other.clone()],
                }
            } else {
                xs
            };
            accumulate_simple(op, &flat)
        }
        "$allElementsTrue" | "$anyElementTrue" => {
            let x = eval(&args(v)[0], root, vars)?;
            let arr = array_arg(&x, op)?.unwrap_or_default();
            Bson::Boolean(if op == "$allElementsTrue" { arr.iter().all(truthy) } else { arr.iter().any(truthy) })
        }
        "$setUnion" | "$setIntersection" | "$setDifference" | "$setEquals" | "$setIsSubset" => {
            let xs = a()?;
            let sets: Vec<Vec<Bson>> = xs.iter().map(|x| x.as_array().cloned().unwrap_or_default()).collect();
            let dedup = |v: Vec<Bson>| {
                let mut out: Vec<Bson> = Vec::new();
                for e in v {
                    if !out.iter().any(|o| values_equal(o, &e)) {
                        out.push(e);
                    }
                }
                out
            };
            let contains = |s: &[Bson], e: &Bson| s.iter().any(|o| values_equal(o, e));
            match op {
                "$setUnion" => Bson::Array(dedup(sets.concat())),
                "$setIntersection" => {
                    let first = sets.first().cloned().unwrap_or_default();
                    Bson::Array(dedup(first.into_iter().filter(|e| sets.iter().all(|s| contains(s, e))).collect()))
                }
                "$setDifference" => {
                    let empty = Vec::new();
                    let b = sets.get(1).unwrap_or(&empty);
                    Bson::Array(dedup(
                        sets.first().cloned().unwrap_or_default().into_iter().filter(|e| !contains(b, e)).collect(),
                    ))
                }
                "$setEquals" => Bson::Boolean(
                    sets.windows(2)
                        .all(|w| w[0].iter().all(|e| contains(&w[1], e)) && w[1].iter().all(|e| contains(&w[0], e))),
                ),
                _ => Bson::Boolean(sets.len() == 2 && sets[0].iter().all(|e| contains(&sets[1], e))),
            }
        }
        "$year" | "$month" | "$dayOfMonth" | "$hour" | "$minute" | "$second" | "$millisecond" => {
            let x = eval(&args(v)[0], root, vars)?;
            let Bson::DateTime(d) = x else { return Ok(Bson::Null) };
            let ms = d.timestamp_millis();
            let days = ms.div_euclid(86_400_000);
            let rem = ms.rem_euclid(86_400_000);
            let (y, m, dd) = civil_from_days(days);
            Bson::Int32(match op {
                "$year" => y as i32,
                "$month" => m as i32,
                "$dayOfMonth" => dd as i32,
                "$hour" => (rem / 3_600_000) as i32,
                "$minute" => (rem / 60_000 % 60) as i32,
                "$second" => (rem / 1000 % 60) as i32,
                _ => (rem % 1000) as i32,
            })
        }
        "$dateToString" => {
            let d = v.as_document().ok_or_else(|| Error::bad_value("$dateToString needs an object"))?;
            match eval(d.get("date").unwrap_or(&Bson::Null), root, vars)? {
                Bson::DateTime(dt) => Bson::String(dt.try_to_rfc3339_string().unwrap_or_default()),
                _ => Bson::Null,
            }
        }
        "$toHashedIndexKey" => Bson::Int64(0),
        "$rand" => Bson::Double(rand::random::<f64>()),
        "$meta" => Bson::Null,
        other => {
            return Err(Error::new(168, format!("Unrecognized expression '{other}'")));
        }
    })
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = (z - era * 146_097) as u64;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe as i64 + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `$sum`/`$avg`/`$min`/`$max` over a list of values (non-numbers ignored for sum/avg).
pub fn accumulate_simple(op: &str, vals: &[Bson]) -> Bson {
    match op {
        "$sum" => {
            let mut acc = Bson::Int32(0);
            for x in vals.iter().filter(|x| is_number(x)) {
                acc = add_nums(&acc, x);
            }
            acc
        }
        "$avg" => {
            let nums: Vec<f64> = vals.iter().filter(|x| is_number(x)).filter_map(as_f64).collect();
            if nums.is_empty() { Bson::Null } else { Bson::Double(nums.iter().sum::<f64>() / nums.len() as f64) }
        }
        "$max" => vals.iter().filter(|x| !nullish(x)).max_by(|a, b| compare(a, b)).cloned().unwrap_or(Bson::Null),
        _ => vals.iter().filter(|x| !nullish(x)).min_by(|a, b| compare(a, b)).cloned().unwrap_or(Bson::Null),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_expressions() {
        let root = Bson::Document(doc! {"a": 2, "b": {"c": "x"}, "arr": [1, 2, 3]});
        let v = Vars::default();
        assert_eq!(eval(&Bson::Document(doc! {"$add": ["$a", 3]}), &root, &v).unwrap(), Bson::Int32(5));
        assert_eq!(
            eval(&Bson::Document(doc! {"$concat": ["$b.c", "y"]}), &root, &v).unwrap(),
            Bson::String("xy".into())
        );
        assert_eq!(eval(&Bson::Document(doc! {"$size": "$arr"}), &root, &v).unwrap(), Bson::Int32(3));
        assert_eq!(
            eval(&Bson::Document(doc! {"$cond": [{"$gt": ["$a", 1]}, "big", "small"]}), &root, &v).unwrap(),
            Bson::String("big".into())
        );
        assert_eq!(eval(&Bson::Document(doc! {"$ifNull": ["$zz", 7]}), &root, &v).unwrap(), Bson::Int32(7));
    }
}
