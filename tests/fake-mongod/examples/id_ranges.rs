//! Timings of the `_id` range queries a sync engine issues while planning and copying
//! (`$type` brackets, ranges with `$type`, the `$not: {$gte}` form), and of `hello`
//! round trips while a long collection scan runs.
//!
//! `cargo run --release -p fake-mongod --example id_ranges -- [DOCS]`

use std::time::{Duration, Instant};

use bson::{Document, doc};
use mongodb::Client;

const NUMBERS: [&str; 4] = ["double", "int", "long", "decimal"];

async fn time_find(
    coll: &mongodb::Collection<bson::RawDocumentBuf>,
    what: &str,
    filter: Document,
    sort: Option<Document>,
) -> Result<(), Box<dyn std::error::Error>> {
    let start = Instant::now();
    let mut find = coll.find(filter).batch_size(1000);
    if let Some(s) = sort {
        find = find.sort(s);
    }
    let mut cursor = find.await?;
    let mut n = 0usize;
    let mut first = None;
    while cursor.advance().await? {
        if first.is_none() {
            first = Some(start.elapsed());
        }
        n += 1;
    }
    let total = start.elapsed();
    let first = first.map(|f| format!("{:.1} ms", f.as_secs_f64() * 1000.0)).unwrap_or_else(|| "-".into());
    println!("{what}: {n} docs, first batch {first}, all {:.1} ms", total.as_secs_f64() * 1000.0);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let total: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(600_000);
    let server =
        fake_mongod::FakeMongod::start(fake_mongod::ServerOptions { oplog_size_mb: 2048, ..Default::default() })?;
    let client = Client::with_uri_str(server.uri()).await?;
    let coll = client.database("bench").collection::<Document>("docs");
    let pad = "x".repeat(900);
    let start = Instant::now();
    for b in 0..total / 1000 {
        let batch: Vec<Document> = (0..1000)
            .map(|i| doc! {"_id": (b * 1000 + i) as i64, "n": i as i32, "tag": "bench", "pad": pad.clone()})
            .collect();
        coll.insert_many(batch).await?;
    }
    println!("inserted {} docs in {:.1} s", (total / 1000) * 1000, start.elapsed().as_secs_f64());
    let raw = coll.clone_with_type::<bson::RawDocumentBuf>();

    for (what, filter) in [
        ("find_one {$type: string} (absent bracket)", doc! {"_id": {"$type": "string"}}),
        ("find_one {$type: numbers} (present bracket)", doc! {"_id": {"$type": NUMBERS.to_vec()}}),
    ] {
        let start = Instant::now();
        let found = raw.find_one(filter).projection(doc! {"_id": 1}).await?;
        println!("{what}: found {}, {:.1} ms", found.is_some(), start.elapsed().as_secs_f64() * 1000.0);
    }
    let (lo, hi) = (total as i64 / 2, total as i64 / 2 + total as i64 / 10);
    let id_sort = Some(doc! {"_id": 1});
    time_find(
        &raw,
        "range with $type, sorted by _id",
        doc! {"_id": {"$type": NUMBERS.to_vec(), "$gte": lo, "$lt": hi}},
        id_sort.clone(),
    )
    .await?;
    time_find(&raw, "range without $type, sorted by _id", doc! {"_id": {"$gte": lo, "$lt": hi}}, id_sort.clone())
        .await?;
    time_find(
        &raw,
        "first range ({$not: {$gte}}) with $type, sorted by _id",
        doc! {"_id": {"$type": NUMBERS.to_vec(), "$not": {"$gte": total as i64 / 10}}},
        id_sort.clone(),
    )
    .await?;
    time_find(
        &raw,
        "range with $type, sorted by _id descending",
        doc! {"_id": {"$type": NUMBERS.to_vec(), "$gte": lo, "$lt": hi}},
        Some(doc! {"_id": -1}),
    )
    .await?;

    // small commands one after another (per-command overhead)
    let start = Instant::now();
    let lookups = 5000;
    for i in 0..lookups {
        raw.find_one(doc! {"_id": (i * 97 % total) as i64}).await?;
    }
    let secs = start.elapsed().as_secs_f64();
    println!("point lookups: {lookups} find_one by _id in {:.2} s = {:.0}/s", secs, lookups as f64 / secs);

    // hello round trips while a scan that decodes every document runs
    let scanner = {
        let raw = raw.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let n = raw.count_documents(doc! {"n": -1}).await;
            (n.map_err(|e| e.to_string()), start.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let admin = client.database("admin");
    let mut worst = Duration::ZERO;
    let mut hellos = 0;
    while !scanner.is_finished() {
        let start = Instant::now();
        admin.run_command(doc! {"hello": 1}).await?;
        worst = worst.max(start.elapsed());
        hellos += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (n, scan) = scanner.await?;
    println!(
        "full scan decoding every document ({n:?} matches) took {:.1} ms; {hellos} hellos during it, slowest {:.1} ms",
        scan.as_secs_f64() * 1000.0,
        worst.as_secs_f64() * 1000.0
    );
    server.shutdown();
    Ok(())
}
