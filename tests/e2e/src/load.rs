//! Live writes on the source while a sync runs: every kind of write, and DDL.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bson::{Bson, doc};
use mongodb::{Client, IndexModel};
use rand::Rng;
use tokio::task::JoinHandle;

use crate::data::every_type_document;

/// What the writer did (for assertion messages and to prove it did something).
#[derive(Debug, Default)]
pub struct LoadCounts {
    pub inserts: AtomicU64,
    pub updates: AtomicU64,
    pub replaces: AtomicU64,
    pub deletes: AtomicU64,
    pub ddl: AtomicU64,
}

/// A running writer; stop it with [`LiveWriter::stop`].
pub struct LiveWriter {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
    pub counts: Arc<LoadCounts>,
}

impl LiveWriter {
    /// Writes into `db.coll` (documents with integer `_id`s `0..id_space`) and, with `ddl`,
    /// creates/renames/drops side collections and indexes in `db`.
    pub fn start(client: Client, db: String, coll: String, id_space: i64, ddl: bool) -> LiveWriter {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(LoadCounts::default());
        let handle = tokio::spawn(run(client, db, coll, id_space, ddl, stop.clone(), counts.clone()));
        LiveWriter { stop, handle, counts }
    }

    /// Stops the writer and waits for its last write to finish.
    pub async fn stop(self) -> Arc<LoadCounts> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.await.expect("writer task");
        self.counts
    }
}

async fn run(
    client: Client,
    db_name: String,
    coll_name: String,
    id_space: i64,
    ddl: bool,
    stop: Arc<AtomicBool>,
    counts: Arc<LoadCounts>,
) {
    let db = client.database(&db_name);
    let coll = db.collection::<bson::Document>(&coll_name);
    let mut round: u64 = 0;
    while !stop.load(Ordering::SeqCst) {
        round += 1;
        let (op, id, n) = {
            let mut rng = rand::rng();
            (rng.random_range(0..100), rng.random_range(0..id_space), rng.random_range(0..1000_i64))
        };
        let filter = doc! {"_id": id};
        let result = match op {
            0..=19 => {
                counts.inserts.fetch_add(1, Ordering::Relaxed);
                let mut document = every_type_document(id);
                document.insert("round", round as i64);
                coll.replace_one(filter, document).upsert(true).await.map(|_| ())
            }
            20..=34 => {
                counts.updates.fetch_add(1, Ordering::Relaxed);
                coll.update_one(
                    filter,
                    doc! {"$set": {"doc.b.c.2.d": format!("changed {n}"), "doc.new": n}, "$inc": {"int32": 1}},
                )
                .await
                .map(|_| ())
            }
            35..=44 => {
                counts.updates.fetch_add(1, Ordering::Relaxed);
                coll.update_one(filter, doc! {"$push": {"array": n}, "$unset": {"null": ""}}).await.map(|_| ())
            }
            45..=52 => {
                // Shrinks arrays: reported as truncatedArrays by the change stream.
                counts.updates.fetch_add(1, Ordering::Relaxed);
                coll.update_one(filter, doc! {"$pop": {"array": 1}}).await.map(|_| ())
            }
            53..=58 => {
                counts.updates.fetch_add(1, Ordering::Relaxed);
                coll.update_one(
                    filter,
                    doc! {"$pull": {"array": {"$in": [1, "two"]}}, "$rename": {"string": "renamed"}},
                )
                .await
                .map(|_| ())
            }
            59..=64 => {
                counts.updates.fetch_add(1, Ordering::Relaxed);
                coll.update_many(
                    doc! {"_id": {"$gte": id, "$lt": id + 5}},
                    doc! {"$set": {"bulk": n}, "$max": {"int64": n}},
                )
                .await
                .map(|_| ())
            }
            65..=74 => {
                counts.replaces.fetch_add(1, Ordering::Relaxed);
                coll.replace_one(filter, doc! {"replaced": true, "n": n, "nested": {"x": [n, n + 1]}}).await.map(|_| ())
            }
            75..=84 => {
                counts.deletes.fetch_add(1, Ordering::Relaxed);
                coll.delete_one(filter).await.map(|_| ())
            }
            85..=89 => {
                counts.updates.fetch_add(1, Ordering::Relaxed);
                coll.update_one(filter, doc! {"$set": {"array": [n]}, "$setOnInsert": {"created": true}})
                    .upsert(true)
                    .await
                    .map(|_| ())
            }
            _ if ddl => {
                counts.ddl.fetch_add(1, Ordering::Relaxed);
                ddl_step(&client, &db_name, round).await
            }
            _ => Ok(()),
        };
        if let Err(error) = result {
            // Expected now and then (e.g. a rename racing a drop); anything else shows in the
            // final comparison.
            tracing::debug!(%error, "live write failed");
        }
        if round.is_multiple_of(50) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

async fn ddl_step(client: &Client, db_name: &str, round: u64) -> mongodb::error::Result<()> {
    let db = client.database(db_name);
    let side = format!("side_{}", round % 3);
    match round % 5 {
        0 => {
            db.create_collection(&side).await.ok();
            db.collection::<bson::Document>(&side)
                .insert_many((0..20).map(|i| doc! {"_id": i, "round": round as i64, "v": Bson::Int64(i)}))
                .await
                .map(|_| ())
        }
        1 => db
            .collection::<bson::Document>(&side)
            .create_index(IndexModel::builder().keys(doc! {"v": -1, "round": 1}).build())
            .await
            .map(|_| ()),
        2 => db.collection::<bson::Document>(&side).drop_index("v_-1_round_1").await,
        3 => {
            let target = format!("renamed_{}", round % 2);
            client
                .database("admin")
                .run_command(doc! {
                    "renameCollection": format!("{db_name}.{side}"),
                    "to": format!("{db_name}.{target}"),
                    "dropTarget": true,
                })
                .await
                .map(|_| ())
        }
        _ => db.collection::<bson::Document>(&side).drop().await,
    }
}
