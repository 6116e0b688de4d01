//! Test data (every BSON type, mixed `_id` types, a document near 16 MB) and the comparison of
//! source and destination: document for document, index for index, options for options.

use bson::oid::ObjectId;
use bson::spec::BinarySubtype;
use bson::{Binary, Bson, DateTime, Decimal128, Document, JavaScriptCodeWithScope, Regex, Timestamp, doc};
use futures::TryStreamExt;
use mongodb::Client;

/// A document holding a value of every BSON type, nested documents and arrays.
pub fn every_type_document(i: i64) -> Document {
    doc! {
        "_id": i,
        "double": 1.5 + i as f64,
        "string": format!("string {i} ✓ ünïcode"),
        "doc": { "a": i, "b": { "c": [1, 2, { "d": "deep" }] } },
        "array": [1_i32, "two", 3.0, { "four": 4 }, [5, 6], Bson::Null],
        "binary": Binary { subtype: BinarySubtype::Generic, bytes: vec![0, 1, 2, 255] },
        "uuid": Binary { subtype: BinarySubtype::Uuid, bytes: vec![7; 16] },
        "objectId": ObjectId::from_bytes([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, (i % 256) as u8]),
        "bool": i % 2 == 0,
        "date": DateTime::from_millis(1_700_000_000_000 + i),
        "null": Bson::Null,
        "undefined": Bson::Undefined,
        "regex": Regex { pattern: "^ab+c$".into(), options: "i".into() },
        "dbPointer": Bson::DbPointer(bson_db_pointer()),
        "javascript": Bson::JavaScriptCode("function() { return 1; }".into()),
        "symbol": Bson::Symbol("sym".into()),
        "codeWithScope": Bson::JavaScriptCodeWithScope(JavaScriptCodeWithScope {
            code: "function() { return x; }".into(),
            scope: doc! { "x": 1 },
        }),
        "int32": i as i32,
        "timestamp": Timestamp { time: 1_700_000_000, increment: i as u32 },
        "int64": i64::MAX - i,
        "decimal": "1234.5678".parse::<Decimal128>().expect("decimal"),
        "minKey": Bson::MinKey,
        "maxKey": Bson::MaxKey,
        "empty": {},
        "emptyArray": [],
    }
}

fn bson_db_pointer() -> bson::DbPointer {
    // DbPointer has no public constructor; round-trip one through extended JSON.
    let json = serde_json::json!({"$dbPointer": {"$ref": "db.coll", "$id": {"$oid": "57e193d7a9cc81b4027498b5"}}});
    match Bson::try_from(json).expect("dbPointer parses") {
        Bson::DbPointer(pointer) => pointer,
        other => panic!("expected a dbPointer, got {other:?}"),
    }
}

/// `_id` values of many types (every type allowed as `_id`), for one collection.
pub fn mixed_ids() -> Vec<Bson> {
    vec![
        Bson::MinKey,
        Bson::Null,
        Bson::Int32(-5),
        Bson::Int64(7),
        Bson::Double(2.5),
        Bson::Double(-0.25),
        Bson::Decimal128("99.5".parse().expect("decimal")),
        Bson::String("alpha".into()),
        Bson::String("".into()),
        Bson::Symbol("symbol-id".into()),
        Bson::Document(doc! {"a": 1, "b": "x"}),
        Bson::Document(doc! {}),
        Bson::Binary(Binary { subtype: BinarySubtype::Generic, bytes: vec![1, 2, 3] }),
        Bson::Binary(Binary { subtype: BinarySubtype::Uuid, bytes: vec![9; 16] }),
        Bson::ObjectId(ObjectId::from_bytes([0xAB; 12])),
        Bson::Boolean(false),
        Bson::Boolean(true),
        Bson::DateTime(DateTime::from_millis(-1)),
        Bson::DateTime(DateTime::from_millis(1_700_000_000_000)),
        Bson::Timestamp(Timestamp { time: 5, increment: 1 }),
        Bson::JavaScriptCode("code-id".into()),
        Bson::MaxKey,
    ]
}

/// A document of about `bytes` bytes (a single large string field plus a few small ones).
pub fn large_document(id: &str, bytes: usize) -> Document {
    doc! { "_id": id, "kind": "large", "payload": "x".repeat(bytes.saturating_sub(64)) }
}

/// Everything about one collection that must be equal on both sides.
#[derive(Debug, PartialEq)]
pub struct CollectionSnapshot {
    pub name: String,
    pub kind: String,
    pub options: Document,
    /// Index specs without `v` and `ns`, sorted by name.
    pub indexes: Vec<Document>,
    /// Raw documents in `_id` order (as BSON bytes: field order and types must match).
    pub documents: Vec<Vec<u8>>,
}

/// Reads every collection of the given databases.
pub async fn snapshot(client: &Client, databases: &[String]) -> Vec<(String, Vec<CollectionSnapshot>)> {
    let mut out = Vec::new();
    for db_name in databases {
        let db = client.database(db_name);
        let mut cursor = db.run_cursor_command(doc! {"listCollections": 1}).await.expect("listCollections");
        let mut collections = Vec::new();
        while let Some(entry) = cursor.try_next().await.expect("listCollections cursor") {
            let name = entry.get_str("name").expect("name").to_string();
            if name.starts_with("system.") {
                continue;
            }
            let kind = entry.get_str("type").unwrap_or("collection").to_string();
            let options = entry.get_document("options").cloned().unwrap_or_default();
            let (indexes, documents) = if kind == "view" {
                (Vec::new(), Vec::new())
            } else {
                let coll = db.collection::<bson::RawDocumentBuf>(&name);
                let mut indexes: Vec<Document> = db
                    .run_cursor_command(doc! {"listIndexes": &name})
                    .await
                    .expect("listIndexes")
                    .try_collect::<Vec<_>>()
                    .await
                    .expect("listIndexes cursor")
                    .into_iter()
                    .map(|mut spec| {
                        spec.remove("v");
                        spec.remove("ns");
                        spec
                    })
                    .collect();
                indexes.sort_by(|a, b| a.get_str("name").unwrap_or("").cmp(b.get_str("name").unwrap_or("")));
                let documents: Vec<Vec<u8>> = coll
                    .find(doc! {})
                    .sort(doc! {"_id": 1})
                    .await
                    .expect("find")
                    .try_collect::<Vec<_>>()
                    .await
                    .expect("find cursor")
                    .into_iter()
                    .map(|raw| raw.into_bytes())
                    .collect();
                (indexes, documents)
            };
            collections.push(CollectionSnapshot { name, kind, options, indexes, documents });
        }
        collections.sort_by(|a, b| a.name.cmp(&b.name));
        out.push((db_name.clone(), collections));
    }
    out
}

/// Asserts that both sides hold the same collections, documents, indexes and options.
pub fn assert_snapshots_equal(
    source: &[(String, Vec<CollectionSnapshot>)],
    destination: &[(String, Vec<CollectionSnapshot>)],
) {
    let names = |s: &[(String, Vec<CollectionSnapshot>)]| {
        s.iter()
            .filter(|(_, collections)| !collections.is_empty())
            .map(|(db, collections)| (db.clone(), collections.iter().map(|c| c.name.clone()).collect::<Vec<_>>()))
            .collect::<Vec<_>>()
    };
    assert_eq!(names(source), names(destination), "the two sides hold different collections");
    for ((db, source_collections), (_, destination_collections)) in
        source.iter().filter(|(_, c)| !c.is_empty()).zip(destination.iter().filter(|(_, c)| !c.is_empty()))
    {
        for (s, d) in source_collections.iter().zip(destination_collections) {
            let ns = format!("{db}.{}", s.name);
            assert_eq!(s.kind, d.kind, "{ns}: collection type differs");
            assert_eq!(strip_uuid(&s.options), strip_uuid(&d.options), "{ns}: collection options differ");
            assert_eq!(s.indexes, d.indexes, "{ns}: indexes differ");
            assert_eq!(
                s.documents.len(),
                d.documents.len(),
                "{ns}: document counts differ (source {}, destination {})",
                s.documents.len(),
                d.documents.len()
            );
            for (index, (a, b)) in s.documents.iter().zip(&d.documents).enumerate() {
                if a != b {
                    let a = bson::RawDocumentBuf::from_bytes(a.clone()).map(|r| r.to_document());
                    let b = bson::RawDocumentBuf::from_bytes(b.clone()).map(|r| r.to_document());
                    panic!("{ns}: document #{index} differs:\n source      {a:?}\n destination {b:?}");
                }
            }
        }
    }
}

fn strip_uuid(options: &Document) -> Document {
    let mut options = options.clone();
    options.remove("uuid");
    options
}

/// Total documents in the given databases.
pub async fn count_documents(client: &Client, databases: &[String]) -> u64 {
    let mut total = 0;
    for (_, collections) in snapshot(client, databases).await {
        total += collections.iter().map(|c| c.documents.len() as u64).sum::<u64>();
    }
    total
}
