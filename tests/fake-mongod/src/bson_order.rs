//! MongoDB's BSON comparison order (type brackets, numeric comparison across types)
//! and small value helpers shared by the matcher, sorter and indexes.

use std::cmp::Ordering;

use bson::{Bson, Document};

/// The canonical type bracket of a value: values of different brackets compare by bracket.
pub fn type_rank(v: &Bson) -> u8 {
    match v {
        Bson::MinKey => 1,
        Bson::Undefined => 2,
        Bson::Null => 3,
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => 10,
        Bson::String(_) | Bson::Symbol(_) => 15,
        Bson::Document(_) => 20,
        Bson::Array(_) => 25,
        Bson::Binary(_) => 30,
        Bson::ObjectId(_) => 35,
        Bson::Boolean(_) => 40,
        Bson::DateTime(_) => 45,
        Bson::Timestamp(_) => 47,
        Bson::RegularExpression(_) => 50,
        Bson::DbPointer(_) => 55,
        Bson::JavaScriptCode(_) => 60,
        Bson::JavaScriptCodeWithScope(_) => 65,
        Bson::MaxKey => 127,
    }
}

/// Null and undefined share the "null" bracket for comparisons.
fn bracket(v: &Bson) -> u8 {
    match type_rank(v) {
        2 => 3,
        r => r,
    }
}

/// The comparison bracket of a value (its [`type_rank`], with undefined in the null
/// bracket): values of different brackets compare by bracket alone.
pub fn bracket_of(v: &Bson) -> u8 {
    bracket(v)
}

/// Every comparison bracket, lowest first.
pub const BRACKETS: [u8; 16] = [1, 3, 10, 15, 20, 25, 30, 35, 40, 45, 47, 50, 55, 60, 65, 127];

/// The bracket after `b` (None after MaxKey's).
pub fn next_bracket(b: u8) -> Option<u8> {
    BRACKETS.iter().copied().find(|x| *x > b)
}

/// The smallest value of a bracket (every value of the bracket compares greater or equal,
/// under any collation). `b` must be one of [`BRACKETS`].
pub fn bracket_floor(b: u8) -> Bson {
    match b {
        1 => Bson::MinKey,
        3 => Bson::Null,
        10 => Bson::Double(f64::NAN),
        15 => Bson::String(String::new()),
        20 => Bson::Document(Document::new()),
        25 => Bson::Array(Vec::new()),
        30 => Bson::Binary(bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: Vec::new() }),
        35 => Bson::ObjectId(bson::oid::ObjectId::from_bytes([0; 12])),
        40 => Bson::Boolean(false),
        45 => Bson::DateTime(bson::DateTime::from_millis(i64::MIN)),
        47 => Bson::Timestamp(bson::Timestamp { time: 0, increment: 0 }),
        50 => Bson::RegularExpression(bson::Regex { pattern: String::new(), options: String::new() }),
        55 => db_pointer(),
        60 => Bson::JavaScriptCode(String::new()),
        65 => {
            Bson::JavaScriptCodeWithScope(bson::JavaScriptCodeWithScope { code: String::new(), scope: Document::new() })
        }
        _ => Bson::MaxKey,
    }
}

/// A DBPointer (they all compare equal); the type has no public constructor, so it is
/// decoded from its BSON bytes.
fn db_pointer() -> Bson {
    // {p: DBPointer("", ObjectId("000000000000000000000000"))}
    let mut body = vec![0x0C, b'p', 0];
    body.extend(1i32.to_le_bytes());
    body.push(0);
    body.extend([0u8; 12]);
    let mut bytes = ((body.len() + 5) as i32).to_le_bytes().to_vec();
    bytes.extend(body);
    bytes.push(0);
    bson::RawDocumentBuf::from_bytes(bytes)
        .ok()
        .and_then(|d| d.to_document().ok())
        .and_then(|mut d| d.remove("p"))
        .unwrap_or(Bson::MaxKey)
}

/// True for int, long, double and decimal.
pub fn is_number(v: &Bson) -> bool {
    matches!(v, Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_))
}

/// Converts a decimal to f64 through its string form (NaN if unparsable).
pub fn decimal_to_f64(d: &bson::Decimal128) -> f64 {
    let s = d.to_string();
    match s.as_str() {
        "Infinity" => f64::INFINITY,
        "-Infinity" => f64::NEG_INFINITY,
        _ => s.parse::<f64>().unwrap_or(f64::NAN),
    }
}

/// Numeric value as f64 (None for non-numbers).
pub fn as_f64(v: &Bson) -> Option<f64> {
    match v {
        Bson::Int32(i) => Some(*i as f64),
        Bson::Int64(i) => Some(*i as f64),
        Bson::Double(d) => Some(*d),
        Bson::Decimal128(d) => Some(decimal_to_f64(d)),
        _ => None,
    }
}

/// Numeric value as i64 when it is integral (None otherwise).
pub fn as_i64(v: &Bson) -> Option<i64> {
    match v {
        Bson::Int32(i) => Some(*i as i64),
        Bson::Int64(i) => Some(*i),
        Bson::Double(d) if d.fract() == 0.0 && d.is_finite() => Some(*d as i64),
        Bson::Decimal128(d) => {
            let f = decimal_to_f64(d);
            (f.fract() == 0.0 && f.is_finite()).then_some(f as i64)
        }
        _ => None,
    }
}

fn cmp_i64_f64(i: i64, f: f64) -> Ordering {
    if f.is_nan() {
        return Ordering::Greater;
    }
    if f >= 9.223_372_036_854_776e18 {
        return Ordering::Less;
    }
    if f < -9.223_372_036_854_776e18 {
        return Ordering::Greater;
    }
    let t = f.trunc() as i64;
    match i.cmp(&t) {
        Ordering::Equal => {
            let fr = f - f.trunc();
            if fr > 0.0 {
                Ordering::Less
            } else if fr < 0.0 {
                Ordering::Greater
            } else {
                Ordering::Equal
            }
        }
        o => o,
    }
}

fn cmp_f64(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        _ => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

/// Compares two numbers by value (NaN lowest, NaN == NaN).
pub fn cmp_numbers(a: &Bson, b: &Bson) -> Ordering {
    let ai = match a {
        Bson::Int32(i) => Some(*i as i64),
        Bson::Int64(i) => Some(*i),
        _ => None,
    };
    let bi = match b {
        Bson::Int32(i) => Some(*i as i64),
        Bson::Int64(i) => Some(*i),
        _ => None,
    };
    match (ai, bi) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(x), None) => cmp_i64_f64(x, as_f64(b).unwrap_or(f64::NAN)),
        (None, Some(y)) => cmp_i64_f64(y, as_f64(a).unwrap_or(f64::NAN)).reverse(),
        (None, None) => cmp_f64(as_f64(a).unwrap_or(f64::NAN), as_f64(b).unwrap_or(f64::NAN)),
    }
}

/// Compares two documents element by element (type, then name, then value).
pub fn cmp_docs(a: &Document, b: &Document) -> Ordering {
    let mut ia = a.iter();
    let mut ib = b.iter();
    loop {
        match (ia.next(), ib.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some((ka, va)), Some((kb, vb))) => {
                let o = bracket(va).cmp(&bracket(vb)).then_with(|| ka.cmp(kb)).then_with(|| compare(va, vb));
                if o != Ordering::Equal {
                    return o;
                }
            }
        }
    }
}

fn cmp_arrays(a: &[Bson], b: &[Bson]) -> Ordering {
    for (x, y) in a.iter().zip(b.iter()) {
        let o = bracket(x).cmp(&bracket(y)).then_with(|| compare(x, y));
        if o != Ordering::Equal {
            return o;
        }
    }
    a.len().cmp(&b.len())
}

thread_local! {
    static CASE_INSENSITIVE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with string comparisons made case-insensitive (collation strength 1 or 2).
pub fn with_collation<T>(collation: Option<&Document>, f: impl FnOnce() -> T) -> T {
    let ci = collation.is_some_and(|c| {
        c.get_str("locale").is_ok_and(|l| l != "simple") && c.get("strength").and_then(as_i64).is_some_and(|s| s <= 2)
    });
    if !ci {
        return f();
    }
    let prev = CASE_INSENSITIVE.with(|c| c.replace(true));
    let out = f();
    CASE_INSENSITIVE.with(|c| c.set(prev));
    out
}

/// Runs `f` with exactly this collation: case-insensitive for strength 1 or 2, simple otherwise.
pub fn with_statement_collation<T>(collation: Option<&Document>, f: impl FnOnce() -> T) -> T {
    let ci = collation.is_some_and(|c| {
        c.get_str("locale").is_ok_and(|l| l != "simple") && c.get("strength").and_then(as_i64).is_some_and(|s| s <= 2)
    });
    let prev = CASE_INSENSITIVE.with(|c| c.replace(ci));
    let out = f();
    CASE_INSENSITIVE.with(|c| c.set(prev));
    out
}

/// True while string comparisons are case-insensitive (see [`with_collation`]): `_id`
/// keys are stored in simple order, so string bounds cannot be used to seek them then.
pub fn case_insensitive() -> bool {
    CASE_INSENSITIVE.with(|c| c.get())
}

fn cmp_strings(x: &str, y: &str) -> Ordering {
    if CASE_INSENSITIVE.with(|c| c.get()) {
        x.to_lowercase().cmp(&y.to_lowercase())
    } else {
        x.as_bytes().cmp(y.as_bytes())
    }
}

/// MongoDB's total order over BSON values (simple collation unless a case-insensitive
/// collation is active, see [`with_collation`]).
pub fn compare(a: &Bson, b: &Bson) -> Ordering {
    let (ra, rb) = (bracket(a), bracket(b));
    if ra != rb {
        return ra.cmp(&rb);
    }
    match (a, b) {
        _ if ra == 10 => cmp_numbers(a, b),
        (Bson::String(x) | Bson::Symbol(x), Bson::String(y) | Bson::Symbol(y)) => cmp_strings(x, y),
        (Bson::Document(x), Bson::Document(y)) => cmp_docs(x, y),
        (Bson::Array(x), Bson::Array(y)) => cmp_arrays(x, y),
        (Bson::Binary(x), Bson::Binary(y)) => x
            .bytes
            .len()
            .cmp(&y.bytes.len())
            .then_with(|| u8::from(x.subtype).cmp(&u8::from(y.subtype)))
            .then_with(|| x.bytes.cmp(&y.bytes)),
        (Bson::ObjectId(x), Bson::ObjectId(y)) => x.bytes().cmp(&y.bytes()),
        (Bson::Boolean(x), Bson::Boolean(y)) => x.cmp(y),
        (Bson::DateTime(x), Bson::DateTime(y)) => x.timestamp_millis().cmp(&y.timestamp_millis()),
        (Bson::Timestamp(x), Bson::Timestamp(y)) => (x.time, x.increment).cmp(&(y.time, y.increment)),
        (Bson::RegularExpression(x), Bson::RegularExpression(y)) => {
            x.pattern.cmp(&y.pattern).then_with(|| x.options.cmp(&y.options))
        }
        (Bson::DbPointer(_), Bson::DbPointer(_)) => Ordering::Equal,
        (Bson::JavaScriptCode(x), Bson::JavaScriptCode(y)) => x.cmp(y),
        (Bson::JavaScriptCodeWithScope(x), Bson::JavaScriptCodeWithScope(y)) => {
            x.code.cmp(&y.code).then_with(|| cmp_docs(&x.scope, &y.scope))
        }
        _ => Ordering::Equal,
    }
}

/// Equality under MongoDB's comparison (1 == 1.0 == NumberLong(1)).
pub fn values_equal(a: &Bson, b: &Bson) -> bool {
    compare(a, b) == Ordering::Equal
}

/// A BSON value ordered by MongoDB's order: used as `_id` keys and index keys.
#[derive(Debug, Clone)]
pub struct Key(pub Bson);

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        compare(&self.0, &other.0) == Ordering::Equal
    }
}
impl Eq for Key {}
impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        compare(&self.0, &other.0)
    }
}

/// A compound key (one value per indexed field), ordered field by field.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct CompoundKey(pub Vec<Key>);

/// The `$type` alias of a value ("double", "string", ...).
pub fn type_alias(v: &Bson) -> &'static str {
    match v {
        Bson::Double(_) => "double",
        Bson::String(_) => "string",
        Bson::Document(_) => "object",
        Bson::Array(_) => "array",
        Bson::Binary(_) => "binData",
        Bson::Undefined => "undefined",
        Bson::ObjectId(_) => "objectId",
        Bson::Boolean(_) => "bool",
        Bson::DateTime(_) => "date",
        Bson::Null => "null",
        Bson::RegularExpression(_) => "regex",
        Bson::DbPointer(_) => "dbPointer",
        Bson::JavaScriptCode(_) => "javascript",
        Bson::Symbol(_) => "symbol",
        Bson::JavaScriptCodeWithScope(_) => "javascriptWithScope",
        Bson::Int32(_) => "int",
        Bson::Timestamp(_) => "timestamp",
        Bson::Int64(_) => "long",
        Bson::Decimal128(_) => "decimal",
        Bson::MinKey => "minKey",
        Bson::MaxKey => "maxKey",
    }
}

/// The numeric BSON type code of a value (`$type` numbers).
pub fn type_code(v: &Bson) -> i32 {
    match v {
        Bson::Double(_) => 1,
        Bson::String(_) => 2,
        Bson::Document(_) => 3,
        Bson::Array(_) => 4,
        Bson::Binary(_) => 5,
        Bson::Undefined => 6,
        Bson::ObjectId(_) => 7,
        Bson::Boolean(_) => 8,
        Bson::DateTime(_) => 9,
        Bson::Null => 10,
        Bson::RegularExpression(_) => 11,
        Bson::DbPointer(_) => 12,
        Bson::JavaScriptCode(_) => 13,
        Bson::Symbol(_) => 14,
        Bson::JavaScriptCodeWithScope(_) => 15,
        Bson::Int32(_) => 16,
        Bson::Timestamp(_) => 17,
        Bson::Int64(_) => 18,
        Bson::Decimal128(_) => 19,
        Bson::MinKey => -1,
        Bson::MaxKey => 127,
    }
}

/// Truthiness in aggregation expressions.
pub fn truthy(v: &Bson) -> bool {
    match v {
        Bson::Boolean(b) => *b,
        Bson::Null | Bson::Undefined => false,
        Bson::Int32(i) => *i != 0,
        Bson::Int64(i) => *i != 0,
        Bson::Double(d) => *d != 0.0,
        Bson::Decimal128(d) => decimal_to_f64(d) != 0.0,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::oid::ObjectId;

    #[test]
    fn brackets_order() {
        let vals = [
            Bson::MinKey,
            Bson::Null,
            Bson::Double(f64::NAN),
            Bson::Int32(1),
            Bson::Double(1.5),
            Bson::Int64(2),
            Bson::String("a".into()),
            Bson::Document(Document::new()),
            Bson::Array(vec![]),
            Bson::Binary(bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![] }),
            Bson::ObjectId(ObjectId::new()),
            Bson::Boolean(false),
            Bson::DateTime(bson::DateTime::from_millis(0)),
            Bson::Timestamp(bson::Timestamp { time: 0, increment: 0 }),
            Bson::RegularExpression(bson::Regex { pattern: "a".into(), options: "".into() }),
            Bson::MaxKey,
        ];
        for w in vals.windows(2) {
            assert_eq!(compare(&w[0], &w[1]), Ordering::Less, "{:?} < {:?}", w[0], w[1]);
        }
        for w in vals.windows(2) {
            let (a, b) = (bracket_of(&w[0]), bracket_of(&w[1]));
            if a != b {
                // the floor of a bracket sorts above everything before it and at or below its values
                assert_eq!(compare(&w[0], &bracket_floor(b)), Ordering::Less, "{:?}", w[0]);
                assert_ne!(compare(&bracket_floor(b), &w[1]), Ordering::Greater, "{:?}", w[1]);
            }
        }
        for b in BRACKETS {
            assert_eq!(bracket_of(&bracket_floor(b)), b);
            if let Some(n) = next_bracket(b) {
                assert_eq!(compare(&bracket_floor(b), &bracket_floor(n)), Ordering::Less);
            }
        }
        assert!(matches!(bracket_floor(55), Bson::DbPointer(_)));
        assert_eq!(next_bracket(127), None);
        assert!(values_equal(&Bson::Int32(1), &Bson::Double(1.0)));
        assert!(values_equal(&Bson::Int64(3), &Bson::Int32(3)));
        assert_eq!(compare(&Bson::Int64(i64::MAX), &Bson::Double(9.3e18)), Ordering::Less);
    }
}
