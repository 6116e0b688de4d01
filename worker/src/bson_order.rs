//! MongoDB's order of BSON values, and the `_id` type bracket of a value.
//!
//! The copy and the verifier read `_id` ranges sorted by the server; whenever the worker itself
//! has to order `_id` values (picking partition bounds from a sample, aligning the source and
//! destination streams of a verified range) it must agree with the server, or bounds come out
//! of order and the merge-join reports documents that are in fact present. This module is the
//! one implementation of that order:
//!
//! - values of different types compare by canonical type rank: MinKey < undefined < null <
//!   numbers < string/symbol < object < array < binData < ObjectId < bool < date < timestamp <
//!   regex < DBPointer < JavaScript < JavaScript with scope < MaxKey;
//! - numbers (int32, int64, double, decimal128) compare by value across types, NaN below every
//!   other number, `-0.0 == 0`;
//! - strings and symbols compare as bytes (the simple collation);
//! - objects compare field by field: canonical type, then field name, then value; a prefix is
//!   smaller; arrays compare element by element the same way;
//! - binData compares by length, then subtype, then bytes.

use std::cmp::Ordering;

use bson::{Binary, Bson, Decimal128, Document, spec::BinarySubtype};
use clustersync_common::model::IdBracket;

/// The canonical type rank MongoDB sorts different types by (`canonicalizeBSONType`).
pub fn type_rank(value: &Bson) -> i32 {
    match value {
        Bson::MinKey => -1,
        Bson::Undefined => 0,
        Bson::Null => 5,
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

/// The `_id` bracket a value belongs to (the bracket whose `$type` aliases match it).
///
/// Types no typed bracket lists (JavaScript, DBPointer, arrays) are [`IdBracket::Other`]:
/// the residual range of every collection catches them.
pub fn bracket_of(value: &Bson) -> IdBracket {
    match value {
        Bson::MinKey => IdBracket::MinKey,
        Bson::Undefined | Bson::Null => IdBracket::Null,
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => IdBracket::Number,
        Bson::String(_) | Bson::Symbol(_) => IdBracket::String,
        Bson::Document(_) => IdBracket::Object,
        Bson::Binary(_) => IdBracket::BinData,
        Bson::ObjectId(_) => IdBracket::ObjectId,
        Bson::Boolean(_) => IdBracket::Bool,
        Bson::DateTime(_) => IdBracket::Date,
        Bson::Timestamp(_) => IdBracket::Timestamp,
        Bson::RegularExpression(_) => IdBracket::Regex,
        Bson::MaxKey => IdBracket::MaxKey,
        Bson::Array(_) | Bson::DbPointer(_) | Bson::JavaScriptCode(_) | Bson::JavaScriptCodeWithScope(_) => {
            IdBracket::Other
        }
    }
}

/// True for a double or decimal NaN. MongoDB's comparison operators never match NaN except
/// by equality (`{$lt: 5}` does not match a NaN `_id`), so ranges must treat it apart.
pub fn is_nan(value: &Bson) -> bool {
    match value {
        Bson::Double(d) => d.is_nan(),
        Bson::Decimal128(d) => matches!(Number::from_decimal(d), Number::NaN),
        _ => false,
    }
}

/// Compares two values in MongoDB's order.
pub fn compare(a: &Bson, b: &Bson) -> Ordering {
    let by_rank = type_rank(a).cmp(&type_rank(b));
    if by_rank != Ordering::Equal {
        return by_rank;
    }
    match (a, b) {
        (Bson::String(x) | Bson::Symbol(x), Bson::String(y) | Bson::Symbol(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Bson::Document(x), Bson::Document(y)) => compare_documents(x, y),
        (Bson::Array(x), Bson::Array(y)) => compare_arrays(x, y),
        (Bson::Binary(x), Bson::Binary(y)) => compare_binaries(x, y),
        (Bson::ObjectId(x), Bson::ObjectId(y)) => x.bytes().cmp(&y.bytes()),
        (Bson::Boolean(x), Bson::Boolean(y)) => x.cmp(y),
        (Bson::DateTime(x), Bson::DateTime(y)) => x.timestamp_millis().cmp(&y.timestamp_millis()),
        // A timestamp is one unsigned 64-bit value: seconds in the high half.
        (Bson::Timestamp(x), Bson::Timestamp(y)) => (x.time, x.increment).cmp(&(y.time, y.increment)),
        (Bson::RegularExpression(x), Bson::RegularExpression(y)) => {
            x.pattern.as_bytes().cmp(y.pattern.as_bytes()).then_with(|| x.options.as_bytes().cmp(y.options.as_bytes()))
        }
        (Bson::JavaScriptCode(x), Bson::JavaScriptCode(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Bson::JavaScriptCodeWithScope(x), Bson::JavaScriptCodeWithScope(y)) => {
            x.code.as_bytes().cmp(y.code.as_bytes()).then_with(|| compare_documents(&x.scope, &y.scope))
        }
        // The driver keeps a DBPointer's parts private: compare its encoded value the way the
        // server does (size first, then bytes).
        (Bson::DbPointer(_), Bson::DbPointer(_)) => {
            let (x, y) = (encoded_value(a), encoded_value(b));
            x.len().cmp(&y.len()).then_with(|| x.cmp(&y))
        }
        _ => match (Number::of(a), Number::of(b)) {
            (Some(x), Some(y)) => x.cmp(&y),
            // Same rank and not a number: MinKey, MaxKey, null, undefined — one value each.
            _ => Ordering::Equal,
        },
    }
}

/// Compares two documents field by field (type rank, then name, then value).
pub fn compare_documents(a: &Document, b: &Document) -> Ordering {
    let mut left = a.iter();
    let mut right = b.iter();
    loop {
        match (left.next(), right.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some((ka, va)), Some((kb, vb))) => {
                let order = type_rank(va)
                    .cmp(&type_rank(vb))
                    .then_with(|| ka.as_bytes().cmp(kb.as_bytes()))
                    .then_with(|| compare(va, vb));
                if order != Ordering::Equal {
                    return order;
                }
            }
        }
    }
}

fn compare_arrays(a: &[Bson], b: &[Bson]) -> Ordering {
    // Arrays are documents keyed "0", "1", …: at the same position the names are equal, so
    // only the type rank and the value decide.
    for (va, vb) in a.iter().zip(b.iter()) {
        let order = type_rank(va).cmp(&type_rank(vb)).then_with(|| compare(va, vb));
        if order != Ordering::Equal {
            return order;
        }
    }
    a.len().cmp(&b.len())
}

fn compare_binaries(a: &Binary, b: &Binary) -> Ordering {
    // The server compares the encoded length, then subtype and bytes in one memcmp. The driver
    // strips the inner length prefix of the old binary subtype (2): put it back.
    let encoded = |bin: &Binary| -> Vec<u8> {
        if bin.subtype == BinarySubtype::BinaryOld {
            let mut bytes = (bin.bytes.len() as i32).to_le_bytes().to_vec();
            bytes.extend_from_slice(&bin.bytes);
            bytes
        } else {
            bin.bytes.clone()
        }
    };
    let (x, y) = (encoded(a), encoded(b));
    x.len().cmp(&y.len()).then_with(|| u8::from(a.subtype).cmp(&u8::from(b.subtype))).then_with(|| x.cmp(&y))
}

/// The encoded bytes of one value (without type byte and name).
fn encoded_value(value: &Bson) -> Vec<u8> {
    let mut doc = Document::new();
    doc.insert("", value.clone());
    match bson::to_vec(&doc) {
        // Layout: i32 total length, type byte, "" name (one NUL), value, trailing NUL.
        Ok(bytes) if bytes.len() > 7 => bytes[6..bytes.len() - 1].to_vec(),
        _ => Vec::new(),
    }
}

/// A number reduced to a totally ordered form: NaN < -inf < finite < +inf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Number {
    NaN,
    NegInfinity,
    /// `(-1)^negative × coefficient × 10^exponent`, with zero always non-negative.
    Finite {
        negative: bool,
        coefficient: u128,
        exponent: i32,
    },
    PosInfinity,
}

/// Largest canonical decimal128 coefficient (34 nines).
const MAX_DECIMAL_COEFFICIENT: u128 = 10u128.pow(34) - 1;

impl Number {
    fn of(value: &Bson) -> Option<Number> {
        match value {
            Bson::Int32(i) => Some(Self::from_i128(*i as i128)),
            Bson::Int64(i) => Some(Self::from_i128(*i as i128)),
            Bson::Double(d) => Some(Self::from_f64(*d)),
            Bson::Decimal128(d) => Some(Self::from_decimal(d)),
            _ => None,
        }
    }

    fn from_i128(value: i128) -> Number {
        Number::Finite { negative: value < 0, coefficient: value.unsigned_abs(), exponent: 0 }
    }

    /// A double as a decimal rounded to 34 significant digits, as the server does to compare a
    /// double with a decimal. Exact for every double that is an integer of at most 34 digits,
    /// and never rounds a non-integer onto an integer, so long/double comparisons stay exact.
    fn from_f64(value: f64) -> Number {
        if value.is_nan() {
            return Number::NaN;
        }
        if value.is_infinite() {
            return if value > 0.0 { Number::PosInfinity } else { Number::NegInfinity };
        }
        if value == 0.0 {
            return Number::Finite { negative: false, coefficient: 0, exponent: 0 };
        }
        // `{:.33e}` is correctly rounded: "d.ddd…e±x" with 34 significant digits.
        let text = format!("{:.33e}", value.abs());
        let Some((mantissa, exponent)) = text.split_once('e') else {
            return Number::NaN;
        };
        let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
        let (Ok(coefficient), Ok(exponent)) = (digits.parse::<u128>(), exponent.parse::<i32>()) else {
            return Number::NaN;
        };
        Number::Finite { negative: value < 0.0, coefficient, exponent: exponent - 33 }
    }

    /// Decodes the IEEE 754-2008 BID encoding of a decimal128.
    fn from_decimal(value: &Decimal128) -> Number {
        let bytes = value.bytes();
        let low = u64::from_le_bytes(bytes[0..8].try_into().unwrap_or_default());
        let high = u64::from_le_bytes(bytes[8..16].try_into().unwrap_or_default());
        let negative = high >> 63 == 1;
        let combination = (high >> 58) & 0x1f;
        if combination == 0x1f {
            return Number::NaN;
        }
        if combination == 0x1e {
            return if negative { Number::NegInfinity } else { Number::PosInfinity };
        }
        let (exponent_bits, coefficient) = if (high >> 61) & 0b11 == 0b11 {
            // The "11" form implies a coefficient above 2^113: never canonical, read as zero.
            ((high >> 47) & 0x3fff, 0u128)
        } else {
            ((high >> 49) & 0x3fff, ((high & 0x1_ffff_ffff_ffff) as u128) << 64 | low as u128)
        };
        let coefficient = if coefficient > MAX_DECIMAL_COEFFICIENT { 0 } else { coefficient };
        let exponent = exponent_bits as i32 - 6176;
        if coefficient == 0 {
            return Number::Finite { negative: false, coefficient: 0, exponent: 0 };
        }
        Number::Finite { negative, coefficient, exponent }
    }

    fn rank(&self) -> u8 {
        match self {
            Number::NaN => 0,
            Number::NegInfinity => 1,
            Number::Finite { .. } => 2,
            Number::PosInfinity => 3,
        }
    }
}

impl Ord for Number {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (
                Number::Finite { negative: na, coefficient: ca, exponent: ea },
                Number::Finite { negative: nb, coefficient: cb, exponent: eb },
            ) => {
                let (za, zb) = (*ca == 0, *cb == 0);
                // Sign classes: negative < zero < positive.
                let class = |negative: bool, zero: bool| {
                    if zero {
                        1
                    } else if negative {
                        0
                    } else {
                        2
                    }
                };
                let by_class = class(*na, za).cmp(&class(*nb, zb));
                if by_class != Ordering::Equal || za {
                    return by_class;
                }
                let magnitude = compare_magnitudes(*ca, *ea, *cb, *eb);
                if *na { magnitude.reverse() } else { magnitude }
            }
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

impl PartialOrd for Number {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Compares `ca × 10^ea` with `cb × 10^eb` exactly (both coefficients non-zero).
fn compare_magnitudes(ca: u128, ea: i32, cb: u128, eb: i32) -> Ordering {
    // Scale the operand with the larger exponent down to the other exponent; once it exceeds
    // what a u128 holds it is necessarily larger (the other coefficient is below 10^35).
    let scale = |coefficient: u128, steps: i32| -> Option<u128> {
        let mut value = coefficient;
        for _ in 0..steps {
            value = value.checked_mul(10)?;
        }
        Some(value)
    };
    match ea.cmp(&eb) {
        Ordering::Equal => ca.cmp(&cb),
        Ordering::Greater => match scale(ca, ea - eb) {
            Some(scaled) => scaled.cmp(&cb),
            None => Ordering::Greater,
        },
        Ordering::Less => match scale(cb, eb - ea) {
            Some(scaled) => ca.cmp(&scaled),
            None => Ordering::Less,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::oid::ObjectId;
    use bson::{DateTime, JavaScriptCodeWithScope, Regex, Timestamp, doc};

    fn dec(text: &str) -> Bson {
        Bson::Decimal128(text.parse().expect("valid decimal"))
    }

    /// One value of every type, in MongoDB's order (strictly increasing).
    fn ladder() -> Vec<Bson> {
        vec![
            Bson::MinKey,
            Bson::Undefined,
            Bson::Null,
            Bson::Double(f64::NAN),
            Bson::Double(f64::NEG_INFINITY),
            dec("-1E+400"),
            Bson::Int64(i64::MIN),
            Bson::Double(-1.5),
            Bson::Int32(-1),
            Bson::Int32(0),
            dec("0.1"),
            Bson::Double(0.5),
            Bson::Int32(1),
            dec("1.0000000000000000000000000000001"),
            Bson::Double(1.5),
            Bson::Int64(2),
            Bson::Int64(i64::MAX),
            Bson::Double(1e300),
            dec("1E+400"),
            Bson::Double(f64::INFINITY),
            Bson::String(String::new()),
            Bson::String("A".into()),
            Bson::Symbol("a".into()),
            Bson::String("ab".into()),
            Bson::String("b".into()),
            Bson::Document(doc! {}),
            Bson::Document(doc! {"a": 1}),
            Bson::Document(doc! {"a": 1, "b": 1}),
            Bson::Document(doc! {"a": 2}),
            // The type rank of a field comes before its name: {b: 0} < {a: "x"}.
            Bson::Document(doc! {"b": 0}),
            Bson::Document(doc! {"a": "x"}),
            Bson::Array(vec![]),
            Bson::Array(vec![Bson::Int32(1)]),
            Bson::Array(vec![Bson::Int32(1), Bson::Int32(0)]),
            Bson::Array(vec![Bson::Int32(2)]),
            Bson::Binary(Binary { subtype: BinarySubtype::UserDefined(0x80), bytes: vec![] }),
            Bson::Binary(Binary { subtype: BinarySubtype::Generic, bytes: vec![9] }),
            Bson::Binary(Binary { subtype: BinarySubtype::Function, bytes: vec![0] }),
            Bson::Binary(Binary { subtype: BinarySubtype::Generic, bytes: vec![0, 0] }),
            Bson::ObjectId(ObjectId::from_bytes([0; 12])),
            Bson::ObjectId(ObjectId::from_bytes([0xff; 12])),
            Bson::Boolean(false),
            Bson::Boolean(true),
            Bson::DateTime(DateTime::from_millis(-5)),
            Bson::DateTime(DateTime::from_millis(5)),
            Bson::Timestamp(Timestamp { time: 1, increment: 9 }),
            Bson::Timestamp(Timestamp { time: 2, increment: 0 }),
            Bson::RegularExpression(Regex { pattern: "a".into(), options: "i".into() }),
            Bson::RegularExpression(Regex { pattern: "b".into(), options: String::new() }),
            Bson::JavaScriptCode("a".into()),
            Bson::JavaScriptCode("b".into()),
            Bson::JavaScriptCodeWithScope(JavaScriptCodeWithScope { code: "a".into(), scope: doc! {"x": 1} }),
            Bson::MaxKey,
        ]
    }

    #[test]
    fn the_ladder_is_strictly_increasing_and_the_order_is_total() {
        let values = ladder();
        for (i, a) in values.iter().enumerate() {
            assert_eq!(compare(a, a), Ordering::Equal, "reflexive: {a:?}");
            for (j, b) in values.iter().enumerate() {
                let expected = i.cmp(&j);
                assert_eq!(compare(a, b), expected, "{a:?} vs {b:?}");
                // Antisymmetry.
                assert_eq!(compare(b, a), expected.reverse(), "{b:?} vs {a:?}");
            }
        }
    }

    #[test]
    fn sorting_a_shuffled_ladder_restores_it() {
        let expected = ladder();
        let mut shuffled = expected.clone();
        // A deterministic shuffle: reverse, then interleave.
        shuffled.reverse();
        let (front, back) = shuffled.split_at(shuffled.len() / 2);
        let mut mixed: Vec<Bson> = back.iter().zip(front.iter()).flat_map(|(x, y)| [x.clone(), y.clone()]).collect();
        if shuffled.len() % 2 == 1 {
            mixed.push(back[back.len() - 1].clone());
        }
        mixed.sort_by(compare);
        assert_eq!(mixed.len(), expected.len());
        for (got, want) in mixed.iter().zip(expected.iter()) {
            assert_eq!(compare(got, want), Ordering::Equal, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn numbers_compare_by_value_across_types() {
        let equal = [
            (Bson::Int32(1), Bson::Int64(1)),
            (Bson::Int32(1), Bson::Double(1.0)),
            (Bson::Int64(1), dec("1.000")),
            (Bson::Double(0.5), dec("0.50")),
            (Bson::Double(-0.0), Bson::Int32(0)),
            (dec("-0"), Bson::Double(0.0)),
            (dec("0E+10"), dec("-0E-3")),
            (Bson::Double(f64::NAN), dec("NaN")),
            (Bson::Double(f64::INFINITY), dec("Infinity")),
            (Bson::Int64(1 << 53), Bson::Double(9007199254740992.0)),
        ];
        for (a, b) in equal {
            assert_eq!(compare(&a, &b), Ordering::Equal, "{a:?} == {b:?}");
            assert_eq!(compare(&b, &a), Ordering::Equal, "{b:?} == {a:?}");
        }
        // 2^53 + 1 is not representable as a double: the long is larger than the double 2^53.
        assert_eq!(compare(&Bson::Int64((1 << 53) + 1), &Bson::Double(9007199254740992.0)), Ordering::Greater);
        // 0.1 as a double is slightly above the decimal 0.1.
        assert_eq!(compare(&Bson::Double(0.1), &dec("0.1")), Ordering::Greater);
        assert_eq!(compare(&dec("-2"), &Bson::Int32(-1)), Ordering::Less);
        assert_eq!(compare(&dec("12345678901234567890123456789012E+100"), &Bson::Double(1e300)), Ordering::Less);
        assert_eq!(compare(&Bson::Double(f64::NAN), &Bson::Double(f64::NEG_INFINITY)), Ordering::Less);
        // The largest coefficient (34 nines) is canonical, not read as zero.
        assert_eq!(compare(&dec("9999999999999999999999999999999999"), &dec("1E+33")), Ordering::Greater);
        assert_eq!(compare(&dec("-9999999999999999999999999999999999"), &Bson::Int32(0)), Ordering::Less);
    }

    #[test]
    fn nan_and_brackets_are_recognised() {
        assert!(is_nan(&Bson::Double(f64::NAN)));
        assert!(is_nan(&dec("NaN")));
        assert!(!is_nan(&Bson::Double(1.0)));
        assert!(!is_nan(&Bson::Null));
        for value in ladder() {
            let bracket = bracket_of(&value);
            // Every value of a typed bracket is matched by one of that bracket's $type aliases.
            let alias = match &value {
                Bson::MinKey => "minKey",
                Bson::Undefined => "undefined",
                Bson::Null => "null",
                Bson::Int32(_) => "int",
                Bson::Int64(_) => "long",
                Bson::Double(_) => "double",
                Bson::Decimal128(_) => "decimal",
                Bson::String(_) => "string",
                Bson::Symbol(_) => "symbol",
                Bson::Document(_) => "object",
                Bson::Binary(_) => "binData",
                Bson::ObjectId(_) => "objectId",
                Bson::Boolean(_) => "bool",
                Bson::DateTime(_) => "date",
                Bson::Timestamp(_) => "timestamp",
                Bson::RegularExpression(_) => "regex",
                Bson::MaxKey => "maxKey",
                _ => {
                    assert_eq!(bracket, IdBracket::Other, "{value:?}");
                    continue;
                }
            };
            assert!(bracket.type_aliases().contains(&alias), "{value:?} in {bracket:?}");
        }
    }

    #[test]
    fn brackets_follow_the_order() {
        // Values of a lower bracket sort below values of a higher one.
        let values = ladder();
        for a in &values {
            for b in &values {
                let (ba, bb) = (bracket_of(a), bracket_of(b));
                if ba != bb && ba != IdBracket::Other && bb != IdBracket::Other {
                    assert_eq!(compare(a, b), ba.cmp(&bb), "{a:?} vs {b:?}");
                }
            }
        }
    }

    #[test]
    fn old_binary_subtype_compares_with_its_inner_length() {
        let old = Bson::Binary(Binary { subtype: BinarySubtype::BinaryOld, bytes: vec![1] });
        let generic_five = Bson::Binary(Binary { subtype: BinarySubtype::Generic, bytes: vec![0; 5] });
        let generic_four = Bson::Binary(Binary { subtype: BinarySubtype::Generic, bytes: vec![0; 4] });
        // Encoded length 5 (4-byte prefix + 1): above 4, and at 5 the subtype (0 < 2) decides.
        assert_eq!(compare(&old, &generic_four), Ordering::Greater);
        assert_eq!(compare(&old, &generic_five), Ordering::Greater);
    }

    #[test]
    fn db_pointers_compare_by_size_then_bytes() {
        let pointer = |ns: &str, byte: u8| {
            // Build a DBPointer through its extended JSON form: the type has no public constructor.
            let json = serde_json::json!({"$dbPointer": {"$ref": ns, "$id": {"$oid": hex(byte)}}});
            Bson::try_from(json).expect("valid dbPointer")
        };
        fn hex(byte: u8) -> String {
            format!("{byte:02x}").repeat(12)
        }
        assert_eq!(compare(&pointer("a.b", 1), &pointer("a.b", 1)), Ordering::Equal);
        assert_eq!(compare(&pointer("a.b", 1), &pointer("a.b", 2)), Ordering::Less);
        assert_eq!(compare(&pointer("a.bc", 0), &pointer("a.b", 9)), Ordering::Greater);
        assert_eq!(bracket_of(&pointer("a.b", 1)), IdBracket::Other);
    }
}
