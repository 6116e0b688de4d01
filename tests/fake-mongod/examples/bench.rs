//! Raw insert and scan rates of fake-mongod with one client (official Rust driver).
//!
//! `cargo run --release -p fake-mongod --example bench -- [DOCS]`

use std::time::Instant;

use bson::{Document, doc};
use futures::TryStreamExt;
use mongodb::Client;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let total: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let server =
        fake_mongod::FakeMongod::start(fake_mongod::ServerOptions { oplog_size_mb: 1024, ..Default::default() })?;
    let client = Client::with_uri_str(server.uri()).await?;
    let coll = client.database("bench").collection::<Document>("docs");
    let pad = "x".repeat(900);
    let batches: Vec<Vec<Document>> = (0..total / 1000)
        .map(|b| {
            (0..1000)
                .map(|i| doc! {"_id": (b * 1000 + i) as i64, "n": i as i32, "tag": "bench", "pad": pad.clone()})
                .collect()
        })
        .collect();
    let stream_start = client.database("admin").run_command(doc! {"ping": 1}).await?.get_timestamp("operationTime")?;
    let start = Instant::now();
    for batch in batches {
        coll.insert_many(batch).await?;
    }
    let secs = start.elapsed().as_secs_f64();
    let inserted = (total / 1000) * 1000;
    println!("insert: {inserted} docs in {secs:.2}s = {:.0} docs/s", inserted as f64 / secs);
    for round in 0..2 {
        let start = Instant::now();
        let mut cursor = coll.find(doc! {}).await?;
        let mut n = 0usize;
        while cursor.advance().await? {
            n += 1;
        }
        let secs = start.elapsed().as_secs_f64();
        println!("scan#{round}: {n} docs in {secs:.2}s = {:.0} docs/s", n as f64 / secs);
    }
    let start = Instant::now();
    let docs: Vec<Document> =
        coll.find(doc! {"_id": {"$gte": 1000i64, "$lt": 51_000i64}}).sort(doc! {"_id": 1}).await?.try_collect().await?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "range scan (decoded by the client): {} docs in {secs:.2}s = {:.0} docs/s",
        docs.len(),
        docs.len() as f64 / secs
    );
    // replacement upserts of existing documents, as a sync engine re-copies them
    let start = Instant::now();
    let db = client.database("bench");
    for b in 0..(total / 1000) {
        let updates: Vec<Document> = (0..1000)
            .map(|i| {
                let id = (b * 1000 + i) as i64;
                doc! {"q": {"_id": id}, "u": {"_id": id, "n": i as i32 + 1, "tag": "bench", "pad": pad.clone()}, "upsert": true}
            })
            .collect();
        db.run_command(doc! {"update": "docs", "updates": updates, "ordered": false}).await?;
    }
    let secs = start.elapsed().as_secs_f64();
    println!("replacement upserts: {inserted} docs in {secs:.2}s = {:.0} docs/s", inserted as f64 / secs);
    let start = Instant::now();
    let mut stream = coll.watch().start_at_operation_time(stream_start).await?.with_type::<bson::RawDocumentBuf>();
    let mut events = 0usize;
    while events < 2 * inserted {
        if stream.next_if_any().await?.is_some() {
            events += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!("change stream: {events} insert and replace events in {secs:.2}s = {:.0} events/s", events as f64 / secs);
    server.shutdown();
    Ok(())
}
