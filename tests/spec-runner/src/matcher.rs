//! Value matching as the unified test format defines it.
//!
//! * Root-level documents (an operation result, each document of an array
//!   result, a command in a `commandStartedEvent`) may carry extra keys; nested
//!   documents may not.
//! * int32, int64 and double compare by numeric value.
//! * Special operators: `$$exists`, `$$type`, `$$unsetOrMatches`,
//!   `$$matchesEntity`, `$$matchesHexBytes`, `$$sessionLsid`, `$$lte`,
//!   `$$matchAsDocument` and `$$matchAsRoot`.

use bson::{Bson, Document};

/// Looks up values the special operators refer to (`$$matchesEntity`,
/// `$$sessionLsid`).
pub trait EntityLookup {
    /// The BSON value saved under `id`, if that entity is a plain value.
    fn entity_value(&self, id: &str) -> Option<Bson>;
    /// The `lsid` document of the session entity `id`.
    fn session_lsid(&self, id: &str) -> Option<Document>;
}

/// A lookup that knows no entities (used for outcome checks and tests).
pub struct NoEntities;

impl EntityLookup for NoEntities {
    fn entity_value(&self, _id: &str) -> Option<Bson> {
        None
    }
    fn session_lsid(&self, _id: &str) -> Option<Document> {
        None
    }
}

/// Checks `actual` against `expected` with the unified-format rules.
/// `actual` is `None` when the value is absent. The error names the path of
/// the first mismatch.
pub fn matches(expected: &Bson, actual: Option<&Bson>, root: bool, entities: &dyn EntityLookup) -> Result<(), String> {
    match_at(expected, actual, root, entities, "")
}

/// Exact comparison as used for `outcome`: same keys, same types and values
/// everywhere; only the key order of documents may differ. No special
/// operators and no numeric equivalence.
pub fn matches_exactly(expected: &Bson, actual: &Bson) -> Result<(), String> {
    exact_at(expected, actual, "")
}

fn exact_at(expected: &Bson, actual: &Bson, path: &str) -> Result<(), String> {
    let here = show_path(path);
    match (expected, actual) {
        (Bson::Document(e), Bson::Document(a)) => {
            for (key, value) in e {
                let sub = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                match a.get(key) {
                    Some(v) => exact_at(value, v, &sub)?,
                    None => return Err(format!("{sub}: expected {value}, but the key is absent")),
                }
            }
            if let Some(extra) = a.keys().find(|k| !e.contains_key(*k)) {
                return Err(format!("{here}: unexpected key {extra:?} in {actual}"));
            }
            Ok(())
        }
        (Bson::Array(e), Bson::Array(a)) => {
            if e.len() != a.len() {
                return Err(format!(
                    "{here}: expected {} elements, got {}: expected {expected}, got {actual}",
                    e.len(),
                    a.len()
                ));
            }
            for (i, (x, y)) in e.iter().zip(a).enumerate() {
                exact_at(x, y, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        _ if expected == actual => Ok(()),
        _ => {
            Err(format!("{here}: expected {expected} ({}), got {actual} ({})", type_name(expected), type_name(actual)))
        }
    }
}

fn show_path(path: &str) -> &str {
    if path.is_empty() { "<root>" } else { path }
}

fn special_operator(doc: &Document) -> Option<(&str, &Bson)> {
    if doc.len() != 1 {
        return None;
    }
    let (key, value) = doc.iter().next()?;
    key.starts_with("$$").then_some((key.as_str(), value))
}

fn match_at(
    expected: &Bson,
    actual: Option<&Bson>,
    root: bool,
    entities: &dyn EntityLookup,
    path: &str,
) -> Result<(), String> {
    if let Bson::Document(doc) = expected
        && let Some((op, arg)) = special_operator(doc)
    {
        return match_operator(op, arg, actual, root, entities, path);
    }
    let Some(actual) = actual else {
        return Err(format!("{}: expected {expected}, but the value is absent", show_path(path)));
    };
    match expected {
        Bson::Document(exp) => {
            let Bson::Document(act) = actual else {
                return Err(format!("{}: expected a document {expected}, got {actual}", show_path(path)));
            };
            for (key, value) in exp {
                let sub = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                match_at(value, act.get(key), false, entities, &sub)?;
            }
            if !root {
                for key in act.keys() {
                    if !exp.contains_key(key) {
                        return Err(format!(
                            "{}: unexpected extra key {key:?} in nested document {actual}",
                            show_path(path)
                        ));
                    }
                }
            }
            Ok(())
        }
        Bson::Array(exp) => {
            let Bson::Array(act) = actual else {
                return Err(format!("{}: expected an array {expected}, got {actual}", show_path(path)));
            };
            if exp.len() != act.len() {
                return Err(format!(
                    "{}: expected {} elements, got {}: expected {expected}, got {actual}",
                    show_path(path),
                    exp.len(),
                    act.len()
                ));
            }
            for (i, (e, a)) in exp.iter().zip(act).enumerate() {
                // documents of a root-level array (e.g. find results) are root-level
                match_at(e, Some(a), root, entities, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        _ => {
            if values_equal(expected, actual) {
                Ok(())
            } else {
                Err(format!(
                    "{}: expected {expected} ({}), got {actual} ({})",
                    show_path(path),
                    type_name(expected),
                    type_name(actual)
                ))
            }
        }
    }
}

fn match_operator(
    op: &str,
    arg: &Bson,
    actual: Option<&Bson>,
    root: bool,
    entities: &dyn EntityLookup,
    path: &str,
) -> Result<(), String> {
    let here = show_path(path);
    match op {
        "$$exists" => {
            let want = arg.as_bool().ok_or_else(|| format!("{here}: $$exists takes a boolean"))?;
            if actual.is_some() == want {
                Ok(())
            } else if want {
                Err(format!("{here}: expected the key to exist"))
            } else {
                Err(format!(
                    "{here}: expected the key to be absent, found {}",
                    actual.map(ToString::to_string).unwrap_or_default()
                ))
            }
        }
        "$$type" => {
            let Some(actual) = actual else {
                return Err(format!("{here}: expected a value of type {arg}, absent"));
            };
            let names: Vec<&str> = match arg {
                Bson::String(s) => vec![s.as_str()],
                Bson::Array(items) => items.iter().filter_map(Bson::as_str).collect(),
                _ => return Err(format!("{here}: $$type takes a string or array")),
            };
            let actual_type = type_name(actual);
            let ok = names.iter().any(|n| {
                *n == actual_type
                    || (*n == "number" && matches!(actual, Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_)))
                    || (*n == "number" && matches!(actual, Bson::Decimal128(_)))
            });
            if ok { Ok(()) } else { Err(format!("{here}: expected type {arg}, got {actual_type} ({actual})")) }
        }
        "$$unsetOrMatches" => match actual {
            None => Ok(()),
            Some(a) => match_at(arg, Some(a), root, entities, path),
        },
        "$$matchesEntity" => {
            let id = arg.as_str().ok_or_else(|| format!("{here}: $$matchesEntity takes a string"))?;
            let value = entities.entity_value(id).ok_or_else(|| format!("{here}: no value entity {id:?}"))?;
            match_at(&value, actual, root, entities, path)
        }
        "$$sessionLsid" => {
            let id = arg.as_str().ok_or_else(|| format!("{here}: $$sessionLsid takes a string"))?;
            let lsid = entities.session_lsid(id).ok_or_else(|| format!("{here}: no session entity {id:?}"))?;
            match actual {
                Some(a) if values_equal(&Bson::Document(lsid.clone()), a) => Ok(()),
                Some(a) => Err(format!("{here}: expected the lsid of {id} ({lsid}), got {a}")),
                None => Err(format!("{here}: expected the lsid of {id}, absent")),
            }
        }
        "$$matchesHexBytes" => {
            let hex = arg.as_str().ok_or_else(|| format!("{here}: $$matchesHexBytes takes a string"))?;
            let want = decode_hex(hex).ok_or_else(|| format!("{here}: invalid hex {hex:?}"))?;
            match actual {
                Some(Bson::Binary(b)) if b.bytes == want => Ok(()),
                other => Err(format!(
                    "{here}: expected bytes {hex}, got {}",
                    other.map(ToString::to_string).unwrap_or("absent".into())
                )),
            }
        }
        "$$lte" => {
            let limit = as_f64(arg).ok_or_else(|| format!("{here}: $$lte takes a number"))?;
            match actual.and_then(as_f64) {
                Some(v) if v <= limit => Ok(()),
                _ => Err(format!(
                    "{here}: expected a number <= {arg}, got {}",
                    actual.map(ToString::to_string).unwrap_or("absent".into())
                )),
            }
        }
        "$$matchAsDocument" | "$$matchAsRoot" => {
            let as_root = op == "$$matchAsRoot";
            let actual = match actual {
                Some(Bson::String(s)) if !as_root => {
                    let json: serde_json::Value =
                        serde_json::from_str(s).map_err(|e| format!("{here}: value is not JSON: {e}"))?;
                    Bson::try_from(json).map_err(|e| format!("{here}: {e}"))?
                }
                Some(other) => other.clone(),
                None => return Err(format!("{here}: expected a value, absent")),
            };
            match_at(arg, Some(&actual), as_root, entities, path)
        }
        other => Err(format!("{here}: unsupported special operator {other}")),
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

fn as_f64(b: &Bson) -> Option<f64> {
    match b {
        Bson::Int32(v) => Some(f64::from(*v)),
        // precision loss is irrelevant for the values in test files
        #[allow(clippy::cast_precision_loss)]
        Bson::Int64(v) => Some(*v as f64),
        Bson::Double(v) => Some(*v),
        _ => None,
    }
}

/// Equality with numeric equivalence across int32, int64 and double.
pub fn values_equal(a: &Bson, b: &Bson) -> bool {
    match (a, b) {
        (Bson::Int32(x), Bson::Int32(y)) => x == y,
        (Bson::Int64(x), Bson::Int64(y)) => x == y,
        (Bson::Int32(x), Bson::Int64(y)) | (Bson::Int64(y), Bson::Int32(x)) => i64::from(*x) == *y,
        (Bson::Double(_), Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_))
        | (Bson::Int32(_) | Bson::Int64(_), Bson::Double(_)) => as_f64(a) == as_f64(b),
        (Bson::Document(x), Bson::Document(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| values_equal(v, w)))
        }
        (Bson::Array(x), Bson::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(v, w)| values_equal(v, w)),
        _ => a == b,
    }
}

/// The unified-format (and `$type`) name of a BSON value's type.
pub fn type_name(b: &Bson) -> &'static str {
    match b {
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

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{bson, doc};

    fn m(expected: Bson, actual: Bson, root: bool) -> Result<(), String> {
        matches(&expected, Some(&actual), root, &NoEntities)
    }

    #[test]
    fn exists_true_and_false() {
        let exp = bson!({ "a": { "$$exists": true }, "b": { "$$exists": false } });
        assert!(m(exp.clone(), bson!({ "a": 1 }), true).is_ok());
        assert!(m(exp.clone(), bson!({ "b": 1, "a": 1 }), true).is_err());
        assert!(m(exp, bson!({ "c": 1 }), true).is_err());
    }

    #[test]
    fn unset_or_matches() {
        let exp = bson!({ "insertedId": { "$$unsetOrMatches": 1 } });
        assert!(m(exp.clone(), bson!({}), true).is_ok());
        assert!(m(exp.clone(), bson!({ "insertedId": 1_i64 }), true).is_ok());
        assert!(m(exp, bson!({ "insertedId": 2 }), true).is_err());
        // at the top level an absent result matches
        let top = bson!({ "$$unsetOrMatches": { "insertedId": 1 } });
        assert!(matches(&top, None, true, &NoEntities).is_ok());
        assert!(m(top, bson!({ "insertedId": 1, "extra": true }), true).is_ok());
    }

    #[test]
    fn numeric_equivalence() {
        assert!(m(Bson::Int32(1), Bson::Int64(1), false).is_ok());
        assert!(m(Bson::Int64(3), Bson::Double(3.0), false).is_ok());
        assert!(m(Bson::Double(2.5), Bson::Int32(2), false).is_err());
        assert!(m(Bson::Int32(1), Bson::String("1".into()), false).is_err());
        assert!(values_equal(&bson!({ "x": [1, 2] }), &bson!({ "x": [1_i64, 2.0] })));
    }

    #[test]
    fn root_allows_extra_keys_nested_does_not() {
        let exp = bson!({ "_id": 1, "x": { "y": 1 } });
        assert!(m(exp.clone(), bson!({ "_id": 1, "x": { "y": 1 }, "z": 0 }), true).is_ok());
        let err = m(exp.clone(), bson!({ "_id": 1, "x": { "y": 1, "w": 2 } }), true).unwrap_err();
        assert!(err.contains("extra key"), "{err}");
        assert!(m(exp, bson!({ "_id": 1, "x": { "y": 1 }, "z": 0 }), false).is_err());
    }

    #[test]
    fn array_documents_at_root_are_root_level() {
        let exp = bson!([{ "_id": 1 }, { "_id": 2 }]);
        assert!(m(exp.clone(), bson!([{ "_id": 1, "x": 1 }, { "_id": 2 }]), true).is_ok());
        assert!(m(exp.clone(), bson!([{ "_id": 1 }]), true).is_err());
        assert!(m(exp, bson!([{ "_id": 1, "x": 1 }, { "_id": 2 }]), false).is_err());
    }

    #[test]
    fn type_operator() {
        let exp = bson!({ "$$type": ["int", "long"] });
        assert!(m(exp.clone(), Bson::Int64(4), false).is_ok());
        assert!(m(exp, Bson::Double(4.0), false).is_err());
        assert!(m(bson!({ "$$type": "number" }), Bson::Double(1.5), false).is_ok());
        assert!(m(bson!({ "$$type": "object" }), bson!({ "a": 1 }), false).is_ok());
    }

    struct OneSession;
    impl EntityLookup for OneSession {
        fn entity_value(&self, id: &str) -> Option<Bson> {
            (id == "v").then(|| Bson::Int32(7))
        }
        fn session_lsid(&self, id: &str) -> Option<Document> {
            (id == "s").then(|| doc! { "id": 1 })
        }
    }

    #[test]
    fn session_lsid_and_entities() {
        let exp = bson!({ "lsid": { "$$sessionLsid": "s" }, "v": { "$$matchesEntity": "v" } });
        let act = bson!({ "lsid": { "id": 1 }, "v": 7_i64 });
        assert!(matches(&exp, Some(&act), true, &OneSession).is_ok());
        let bad = bson!({ "lsid": { "id": 2 }, "v": 7 });
        assert!(matches(&exp, Some(&bad), true, &OneSession).is_err());
    }

    #[test]
    fn lte_and_hex_bytes() {
        assert!(m(bson!({ "$$lte": 5 }), Bson::Int32(5), false).is_ok());
        assert!(m(bson!({ "$$lte": 5 }), Bson::Int32(6), false).is_err());
        let bin = Bson::Binary(bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![0xab, 0x01] });
        assert!(m(bson!({ "$$matchesHexBytes": "AB01" }), bin, false).is_ok());
    }

    #[test]
    fn exact_compare_is_type_strict() {
        assert!(matches_exactly(&bson!({ "x": 1 }), &bson!({ "x": 1_i64 })).is_err());
        assert!(matches_exactly(&bson!({ "x": [1, { "y": 2.5 }] }), &bson!({ "x": [1, { "y": 2.5 }] })).is_ok());
        assert!(matches_exactly(&bson!({ "x": { "$$exists": true } }), &bson!({ "x": 1 })).is_err());
    }

    #[test]
    fn exact_compare_for_outcome() {
        assert!(matches_exactly(&bson!({ "_id": 1, "x": 2 }), &bson!({ "x": 2, "_id": 1 })).is_ok());
        assert!(matches_exactly(&bson!({ "_id": 1 }), &bson!({ "_id": 1, "x": 2 })).is_err());
    }
}
