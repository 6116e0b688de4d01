//! The `_id` planner (key-only matching and index range walks) against the general path
//! (every document decoded and matched in full): same documents, same order.

use std::str::FromStr;
use std::sync::Arc;

use bson::oid::ObjectId;
use bson::{Bson, Document, RawDocumentBuf, doc};

use super::crud::{ScanOpts, scan};
use crate::bson_order::{compare, with_collation};
use crate::storage::Collection;

fn decimal(s: &str) -> Bson {
    Bson::Decimal128(bson::Decimal128::from_str(s).unwrap())
}

/// `_id`s of every bracket, inserted out of order.
fn ids() -> Vec<Bson> {
    vec![
        Bson::String("b".into()),
        Bson::Int32(7),
        Bson::MaxKey,
        Bson::Double(f64::NAN),
        Bson::Int64(10),
        Bson::ObjectId(ObjectId::from_bytes([0; 12])),
        Bson::DateTime(bson::DateTime::from_millis(-5)),
        Bson::Document(doc! {"a": 1}),
        Bson::Int32(-5),
        Bson::Double(f64::NEG_INFINITY),
        Bson::String("".into()),
        Bson::MinKey,
        Bson::Null,
        Bson::Double(2.5),
        Bson::Int64(i64::MAX),
        decimal("4.5"),
        Bson::String("B".into()),
        Bson::String("a".into()),
        Bson::String("zz".into()),
        Bson::Symbol("sym".into()),
        Bson::ObjectId(ObjectId::parse_str("65a0b0c0d0e0f00000000001").unwrap()),
        Bson::ObjectId(ObjectId::parse_str("65a0b0c0d0e0f00000000002").unwrap()),
        Bson::DateTime(bson::DateTime::from_millis(0)),
        Bson::DateTime(bson::DateTime::from_millis(1_700_000_000_000)),
        Bson::Document(doc! {}),
        Bson::Document(doc! {"a": "x"}),
        Bson::Document(doc! {"b": {"c": 1}}),
        Bson::Document(doc! {"a": "X"}),
        Bson::Boolean(false),
        Bson::Boolean(true),
        Bson::Timestamp(bson::Timestamp { time: 5, increment: 1 }),
        Bson::Binary(bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![1, 2] }),
        Bson::JavaScriptCode("f()".into()),
        Bson::Int32(0),
        Bson::Int64(5),
        Bson::Double(-0.5),
        Bson::Int32(3),
    ]
}

fn collection() -> Collection {
    let mut c = Collection::new(Document::new());
    for (i, id) in ids().into_iter().enumerate() {
        let d = RawDocumentBuf::from_document(&doc! {"_id": id, "i": i as i32}).unwrap();
        c.insert("db.c", Arc::new(d)).unwrap();
    }
    c
}

/// [`collection`] plus enough strings of mixed case and numbers of mixed types that the
/// `_id` index has inner nodes (seeks, not just a scan of one leaf).
fn big_collection() -> Collection {
    let mut c = collection();
    for i in 0..200 {
        let id = match i % 4 {
            0 => Bson::String(format!("k{i}")),
            1 => Bson::String(format!("K{i}")),
            2 => Bson::Int64(100 + i),
            _ => Bson::Double(100.5 + i as f64),
        };
        let d = RawDocumentBuf::from_document(&doc! {"_id": id, "i": 1000 + i as i32}).unwrap();
        c.insert("db.c", Arc::new(d)).unwrap();
    }
    c
}

const NUMBERS: [&str; 4] = ["double", "int", "long", "decimal"];

/// Comparison targets of every bracket.
fn targets() -> Vec<Bson> {
    vec![
        Bson::Int32(5),
        Bson::Int64(7),
        Bson::Double(2.5),
        Bson::Double(f64::NAN),
        Bson::Double(f64::INFINITY),
        decimal("4.5"),
        Bson::String("a".into()),
        Bson::String("B".into()),
        Bson::String("k13".into()),
        Bson::String("K4".into()),
        Bson::Int64(130),
        Bson::Null,
        Bson::MinKey,
        Bson::MaxKey,
        Bson::Document(doc! {"a": 1}),
        Bson::ObjectId(ObjectId::parse_str("65a0b0c0d0e0f00000000001").unwrap()),
        Bson::DateTime(bson::DateTime::from_millis(0)),
        Bson::Boolean(false),
    ]
}

/// `_id` conditions: what clustersync's range filters and planner probes look like, and
/// every other operator shape on `_id`.
fn conditions() -> Vec<Bson> {
    let mut out: Vec<Bson> = vec![
        Bson::Document(doc! {"$type": "string"}),
        Bson::Document(doc! {"$type": "number"}),
        Bson::Document(doc! {"$type": 16}),
        Bson::Document(doc! {"$type": 2.0}),
        Bson::Document(doc! {"$type": ["string", "symbol"]}),
        Bson::Document(doc! {"$type": ["objectId"]}),
        Bson::Document(doc! {"$type": ["minKey", "maxKey", "null"]}),
        Bson::Document(doc! {"$type": ["undefined", "null"]}),
        Bson::Document(doc! {"$type": ["object", "date", "bool", "timestamp", "binData", "javascript"]}),
        Bson::Document(doc! {"$type": NUMBERS.to_vec()}),
        Bson::Document(doc! {"$type": [1, 18]}),
        Bson::Document(doc! {"$type": 0}),
        Bson::Document(doc! {"$type": NUMBERS.to_vec(), "$gte": 0, "$lt": 10}),
        Bson::Document(doc! {"$type": NUMBERS.to_vec(), "$gte": 5_i64}),
        Bson::Document(doc! {"$type": NUMBERS.to_vec(), "$not": {"$gte": 5}}),
        Bson::Document(doc! {"$type": NUMBERS.to_vec(), "$not": {"$gte": 2.5}}),
        Bson::Document(doc! {"$type": NUMBERS.to_vec(), "$gt": 3, "$lt": 10}),
        Bson::Document(doc! {"$type": NUMBERS.to_vec(), "$ne": f64::NAN}),
        Bson::Document(doc! {"$type": ["string", "symbol"], "$gte": "B", "$lt": "b"}),
        Bson::Document(doc! {"$type": ["string", "symbol"], "$not": {"$gte": "a"}}),
        Bson::Document(doc! {"$type": ["string", "symbol"], "$gte": "k1", "$lt": "K3"}),
        Bson::Document(doc! {"$in": ["k21", "K21", "K8", "zz", "ZZ"]}),
        Bson::Document(doc! {"$type": NUMBERS.to_vec(), "$gte": 110, "$lt": 140.5}),
        Bson::Document(doc! {"$type": ["objectId"], "$gt": ObjectId::from_bytes([0; 12])}),
        Bson::Document(doc! {"$type": ["date"], "$gte": bson::DateTime::from_millis(0)}),
        Bson::Document(doc! {"$type": ["object"], "$lt": {"a": "x"}}),
        Bson::Document(
            doc! {"$not": {"$type": NUMBERS.iter().chain(["string", "symbol", "objectId"].iter()).copied().collect::<Vec<_>>()}},
        ),
        Bson::Document(doc! {"$not": {"$type": "number", "$gte": 5}}),
        Bson::Document(doc! {"$not": {"$lt": 5}}),
        Bson::Document(doc! {"$not": {"$lte": Bson::Null}}),
        Bson::Document(doc! {"$not": {"$gt": Bson::MinKey}}),
        Bson::Document(doc! {"$not": {"$eq": 7}}),
        Bson::Document(doc! {"$not": {"$in": [7, "a", Bson::Null]}}),
        Bson::Document(doc! {"$in": [7, 7.0, "a", Bson::Null, {"a": 1}, 10_i64, "missing", f64::NAN]}),
        Bson::Document(doc! {"$in": [bson::Regex { pattern: "^b".into(), options: "i".into() }, 3]}),
        Bson::Document(doc! {"$nin": [7, "a"]}),
        Bson::Document(doc! {"$ne": Bson::Null}),
        Bson::Document(doc! {"$eq": Bson::Null}),
        Bson::Document(doc! {"$eq": Bson::Undefined}),
        Bson::Document(doc! {"$exists": true}),
        Bson::Document(doc! {"$exists": false}),
        Bson::Document(doc! {"$regex": "^[ab]"}),
        Bson::Document(doc! {"$mod": [2, 1]}),
        Bson::Document(doc! {"$all": [7]}),
        Bson::Document(doc! {"$size": 0}),
        Bson::Document(doc! {"$elemMatch": {"$gt": 1}}),
        Bson::Document(doc! {"$gte": 5, "$lte": 5.0}),
        Bson::Document(doc! {"$gt": 10, "$lt": 5}),
        Bson::Document(doc! {"a": 1}),
        Bson::Int64(7),
        Bson::String("B".into()),
        Bson::RegularExpression(bson::Regex { pattern: "z".into(), options: "".into() }),
    ];
    for t in targets() {
        for op in ["$eq", "$gt", "$gte", "$lt", "$lte"] {
            out.push(Bson::Document(doc! {op: t.clone()}));
            out.push(Bson::Document(doc! {"$not": {op: t.clone()}}));
        }
    }
    out
}

/// Whole filters: `{_id: condition}` and combinations of them.
fn filters() -> Vec<Document> {
    let mut out: Vec<Document> = conditions().into_iter().map(|c| doc! {"_id": c}).collect();
    out.extend([
        doc! {"$or": [{"_id": {"$gt": 7}}, {"_id": {"$type": ["objectId", "date"]}}]},
        doc! {"$and": [{"_id": {"$type": NUMBERS.to_vec(), "$gte": 0}}, {"_id": {"$lt": 7}}]},
        doc! {"$nor": [{"_id": {"$type": "number"}}, {"_id": {"$type": "string"}}]},
        doc! {"_id.a": 1},
        doc! {"_id.a": {"$exists": true}},
        doc! {"_id.b.c": {"$gte": 1}},
        doc! {"_id": {"$gte": 0}, "$comment": "c"},
    ]);
    out
}

/// An `_id` compared exactly: same type and same value (NaN equals NaN).
#[derive(Debug, Clone)]
struct Id(Bson);

impl PartialEq for Id {
    fn eq(&self, other: &Id) -> bool {
        format!("{:?}", self.0) == format!("{:?}", other.0)
    }
}

fn exact(ids: Vec<Bson>) -> Vec<Id> {
    ids.into_iter().map(Id).collect()
}

fn run(c: &Collection, filter: &Document, sort: Option<&Document>, skip: usize, limit: usize) -> Vec<(Id, i32)> {
    let hits = scan(c, &ScanOpts { filter: Some(filter), sort, skip, limit, ..Default::default() }).unwrap();
    hits.iter()
        .map(|h| {
            let d = h.doc.to_document().unwrap();
            (Id(d.get("_id").cloned().unwrap()), d.get_i32("i").unwrap())
        })
        .collect()
}

/// The same filter, made opaque to the `_id` planner (`$expr` needs the whole document).
fn general(filter: &Document) -> Document {
    doc! {"$and": [filter.clone(), {"$expr": true}]}
}

fn check_all(c: &Collection) {
    let simple_order = !crate::bson_order::case_insensitive();
    let sorts = [doc! {"_id": 1}, doc! {"_id": -1}];
    for filter in filters() {
        // no sort: the same documents
        let mut fast = run(c, &filter, None, 0, 0);
        let mut slow = run(c, &general(&filter), None, 0, 0);
        fast.sort_by_key(|x| x.1);
        slow.sort_by_key(|x| x.1);
        assert_eq!(fast, slow, "{filter}");
        // the oracle: every document decoded and matched
        let node = crate::query::compile(&filter).unwrap();
        let mut oracle: Vec<i32> = c
            .records
            .values()
            .map(|d| d.to_document().unwrap())
            .filter(|d| node.matches(d, &Default::default()))
            .map(|d| d.get_i32("i").unwrap())
            .collect();
        oracle.sort();
        assert_eq!(fast.iter().map(|x| x.1).collect::<Vec<_>>(), oracle, "{filter}");
        for sort in &sorts {
            for (skip, limit) in [(0, 0), (0, 1), (2, 3), (1, 0), (0, 100)] {
                let fast = run(c, &filter, Some(sort), skip, limit);
                let slow = run(c, &general(&filter), Some(sort), skip, limit);
                assert_eq!(fast, slow, "{filter} sort {sort} skip {skip} limit {limit}");
            }
            // ordered like MongoDB's _id order (strings in simple order: the index keeps that)
            if !simple_order {
                continue;
            }
            let all = run(c, &filter, Some(sort), 0, 0);
            for w in all.windows(2) {
                let o = compare(&w[0].0.0, &w[1].0.0);
                let want =
                    if sort.get_i32("_id") == Ok(1) { std::cmp::Ordering::Less } else { std::cmp::Ordering::Greater };
                assert_eq!(o, want, "{filter} {sort}: {:?} then {:?}", w[0].0, w[1].0);
            }
        }
        // another sort after an `_id` filter
        let by_i = doc! {"i": -1};
        assert_eq!(run(c, &filter, Some(&by_i), 1, 2), run(c, &general(&filter), Some(&by_i), 1, 2), "{filter}");
    }
}

#[test]
fn id_planner_matches_the_general_path() {
    check_all(&big_collection());
}

#[test]
fn id_planner_matches_the_general_path_under_a_case_insensitive_collation() {
    let c = big_collection();
    with_collation(Some(&doc! {"locale": "en", "strength": 2}), || check_all(&c));
}

#[test]
fn id_planner_keeps_mongodb_semantics() {
    let c = collection();
    let ids = |filter: Document| -> Vec<Id> {
        run(&c, &filter, Some(&doc! {"_id": 1}), 0, 0).into_iter().map(|(id, _)| id).collect()
    };
    // comparisons stay in their bracket: numbers compare by value across types
    assert_eq!(
        ids(doc! {"_id": {"$gte": 5}}),
        exact(vec![Bson::Int64(5), Bson::Int32(7), Bson::Int64(10), Bson::Int64(i64::MAX)])
    );
    assert_eq!(
        ids(doc! {"_id": {"$type": NUMBERS.to_vec(), "$gte": 2.5, "$lt": 5_i64}}),
        exact(vec![Bson::Double(2.5), Bson::Int32(3), decimal("4.5")])
    );
    // the first number range keeps NaN (it sorts below every number)
    assert_eq!(
        ids(doc! {"_id": {"$type": NUMBERS.to_vec(), "$not": {"$gte": 0}}}),
        exact(vec![Bson::Double(f64::NAN), Bson::Double(f64::NEG_INFINITY), Bson::Int32(-5), Bson::Double(-0.5)])
    );
    assert_eq!(
        ids(doc! {"_id": {"$lt": 0}}),
        exact(vec![Bson::Double(f64::NEG_INFINITY), Bson::Int32(-5), Bson::Double(-0.5)])
    );
    // `$type` names one type, "number" and numeric codes
    assert_eq!(
        ids(doc! {"_id": {"$type": "string"}}),
        exact(["", "B", "a", "b", "zz"].iter().map(|s| Bson::String(s.to_string())).collect())
    );
    assert_eq!(ids(doc! {"_id": {"$type": "symbol"}}), exact(vec![Bson::Symbol("sym".into())]));
    assert_eq!(ids(doc! {"_id": {"$type": 18}}), exact(vec![Bson::Int64(5), Bson::Int64(10), Bson::Int64(i64::MAX)]));
    assert_eq!(ids(doc! {"_id": {"$type": "number"}}).len(), 12);
    assert_eq!(ids(doc! {"_id": {"$type": ["minKey", "maxKey"]}}), exact(vec![Bson::MinKey, Bson::MaxKey]));
    assert!(ids(doc! {"_id": {"$type": "array"}}).is_empty());
    // strings never match numeric bounds and the other way round
    assert!(ids(doc! {"_id": {"$type": "string", "$gte": 0}}).is_empty());
    assert_eq!(
        ids(doc! {"_id": {"$gt": "a"}}),
        exact(vec![Bson::String("b".into()), Bson::Symbol("sym".into()), Bson::String("zz".into())])
    );
    // the residual bracket
    let typed: Vec<&str> = NUMBERS.iter().chain(["string", "symbol", "objectId"].iter()).copied().collect();
    let other = ids(doc! {"_id": {"$not": {"$type": typed}}});
    assert_eq!(other.first().map(|x| x.0.clone()), Some(Bson::MinKey));
    assert_eq!(other.last().map(|x| x.0.clone()), Some(Bson::MaxKey));
    assert_eq!(other.len(), 16);
    // a descending walk from the top of a bracket
    let desc = run(&c, &doc! {"_id": {"$type": "objectId"}}, Some(&doc! {"_id": -1}), 0, 1);
    assert_eq!(desc[0].0.0, Bson::ObjectId(ObjectId::parse_str("65a0b0c0d0e0f00000000002").unwrap()));
    // case-insensitive string ranges
    let ci =
        with_collation(Some(&doc! {"locale": "en", "strength": 2}), || ids(doc! {"_id": {"$gte": "a", "$lte": "b"}}));
    assert_eq!(ci, exact(["B", "a", "b"].iter().map(|s| Bson::String(s.to_string())).collect()));
}

#[test]
fn natural_order_is_kept_for_natural_sorts_and_hints() {
    let c = collection();
    let filter = doc! {"_id": {"$type": "number"}};
    let natural = run(&c, &filter, Some(&doc! {"$natural": 1}), 0, 0);
    let is: Vec<i32> = natural.iter().map(|x| x.1).collect();
    let mut sorted = is.clone();
    sorted.sort();
    assert_eq!(is, sorted);
    let back = run(&c, &filter, Some(&doc! {"$natural": -1}), 0, 2);
    assert_eq!(back.iter().map(|x| x.1).collect::<Vec<_>>(), vec![sorted[sorted.len() - 1], sorted[sorted.len() - 2]]);
}
