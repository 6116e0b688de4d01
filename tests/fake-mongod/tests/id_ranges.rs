//! `_id` range queries through the driver (the shapes a sync engine's copy ranges use),
//! checked against the same filters made opaque to the `_id` planner; and `hello` while a
//! command holds the server state.

mod common;

use std::time::Duration;

use bson::oid::ObjectId;
use bson::{Bson, Document, doc};
use futures::TryStreamExt;

const NUMBERS: [&str; 4] = ["double", "int", "long", "decimal"];

fn id_of(i: i64) -> Bson {
    match i % 6 {
        0 => Bson::Int32(i as i32),
        1 => Bson::Int64(i * 1000),
        2 => Bson::Double(i as f64 + 0.5),
        3 => Bson::String(format!("s{:04}", i)),
        4 => Bson::ObjectId(ObjectId::from_bytes([(i % 251) as u8; 12])),
        _ => Bson::DateTime(bson::DateTime::from_millis(i * 3_600_000)),
    }
}

async fn ids(coll: &mongodb::Collection<Document>, filter: Document, sort: i32, skip: u64, limit: i64) -> Vec<String> {
    let docs: Vec<Document> = coll
        .find(filter)
        .sort(doc! {"_id": sort})
        .skip(skip)
        .limit(limit)
        .batch_size(7)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    docs.iter().map(|d| format!("{:?}", d.get("_id").unwrap())).collect()
}

#[tokio::test]
async fn copy_range_filters_match_the_general_path() {
    let s = common::server();
    let c = common::client(&s).await;
    let coll = c.database("db").collection::<Document>("c");
    let mut docs: Vec<Document> = (0..600).map(|i| doc! {"_id": id_of(i), "i": i}).collect();
    docs.extend([
        doc! {"_id": f64::NAN},
        doc! {"_id": Bson::MinKey},
        doc! {"_id": Bson::MaxKey},
        doc! {"_id": {"k": 1}},
        doc! {"_id": true},
    ]);
    coll.insert_many(docs).await.unwrap();
    let filters = [
        doc! {"_id": {"$type": NUMBERS.to_vec()}},
        doc! {"_id": {"$type": "string"}},
        doc! {"_id": {"$type": ["objectId"]}},
        doc! {"_id": {"$type": "timestamp"}},
        doc! {"_id": {"$type": NUMBERS.to_vec(), "$not": {"$gte": 100}}},
        doc! {"_id": {"$type": NUMBERS.to_vec(), "$gte": 100, "$lt": 50_000_i64}},
        doc! {"_id": {"$type": NUMBERS.to_vec(), "$gte": 50_000_i64}},
        doc! {"_id": {"$type": NUMBERS.to_vec(), "$gt": 97.5, "$lt": 50_000_i64}},
        doc! {"_id": {"$type": ["string", "symbol"], "$gte": "s0100", "$lt": "s0400"}},
        doc! {"_id": {"$type": ["date"], "$lt": bson::DateTime::from_millis(300 * 3_600_000)}},
        doc! {"_id": {"$not": {"$type": NUMBERS.iter().chain(["string", "symbol", "objectId", "date"].iter()).copied().collect::<Vec<_>>()}}},
        doc! {"$or": [{"_id": {"$gt": "s0590"}}, {"_id": {"$type": ["objectId", "date"]}}]},
        doc! {"_id": {"$gte": 100}},
    ];
    for filter in filters {
        let general = doc! {"$and": [filter.clone(), {"$expr": true}]};
        for sort in [1, -1] {
            for (skip, limit) in [(0, 0), (3, 10), (0, 1)] {
                let fast = ids(&coll, filter.clone(), sort, skip, limit).await;
                let slow = ids(&coll, general.clone(), sort, skip, limit).await;
                assert_eq!(fast, slow, "{filter} sort {sort} skip {skip} limit {limit}");
            }
        }
    }
    // a planner probe of an absent bracket, and of a present one
    assert!(coll.find_one(doc! {"_id": {"$type": "binData"}}).await.unwrap().is_none());
    let first = coll.find_one(doc! {"_id": {"$type": "string"}}).sort(doc! {"_id": 1}).await.unwrap().unwrap();
    assert_eq!(first.get_str("_id").unwrap(), "s0003");
    let n = coll.count_documents(doc! {"_id": {"$type": NUMBERS.to_vec(), "$not": {"$gte": 0}}}).await.unwrap();
    assert_eq!(n, 1, "only NaN sorts below 0");
}

#[test]
fn hello_answers_while_a_command_holds_the_state() {
    let s = common::server();
    let uri = s.direct_uri();
    let (tx, rx) = std::sync::mpsc::channel();
    // the server state is held as a long command would hold it
    s.shared()
        .with_state(|_| {
            let client_thread = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async {
                    let c = common::client_uri(&uri).await;
                    let r = c.database("admin").run_command(doc! {"hello": 1}).await;
                    tx.send(r.map(|d| d.get_bool("isWritablePrimary").unwrap_or(false))).unwrap();
                });
            });
            let answer = rx.recv_timeout(Duration::from_secs(60)).expect("hello answered while the state was held");
            assert!(answer.unwrap());
            client_thread
        })
        .join()
        .unwrap();
}
