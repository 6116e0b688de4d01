//! The benchmark's data set: documents of about 1 KB in four collections of database `bench`,
//! `c0` holding 60 % of them and `c1`..`c3` the rest in equal parts. `_id`s are `i64`s,
//! unique over the whole data set (`c0` holds `0..0.6 n`, then `c1`, `c2`, `c3`), so a change
//! event's `_id` alone names the document.
//!
//! Every document carries `seq` and `t` (0 in the initial data): the load generator sets them to
//! the write's sequence number and send time, which is how the lag probe recognises each write
//! on the destination (see [`crate::load`]).

use std::ops::Range;
use std::sync::OnceLock;

use bson::{DateTime, RawDocumentBuf, rawdoc};
use mongodb::Client;
use rand::Rng;

/// The database every benchmark collection lives in.
pub const DATABASE: &str = "bench";

/// Target size of one document, in bytes of BSON.
pub const DOCUMENT_BYTES: usize = 1024;

/// Documents per insert batch when loading (and in the baseline copier and raw insert probe).
pub const BATCH_DOCUMENTS: usize = 1000;

/// The collections of a data set of `n` documents and their `_id` ranges.
#[derive(Debug, Clone)]
pub struct Layout {
    /// `(name, _id range)`, `c0` first.
    pub collections: Vec<(String, Range<i64>)>,
}

impl Layout {
    /// `n` documents: 60 % in `c0`, the rest split between `c1`, `c2` and `c3`.
    pub fn new(n: u64) -> Layout {
        let n = n as i64;
        let big = n * 6 / 10;
        let rest = n - big;
        let mut bounds = vec![0, big, big + rest / 3, big + 2 * rest / 3, n];
        bounds.dedup();
        let collections = (0..4)
            .map(|i| (format!("c{i}"), bounds.get(i).copied().unwrap_or(n)..bounds.get(i + 1).copied().unwrap_or(n)))
            .collect();
        Layout { collections }
    }

    /// Total documents.
    pub fn documents(&self) -> u64 {
        self.collections.iter().map(|(_, ids)| (ids.end - ids.start) as u64).sum()
    }

    /// Picks a collection with the data set's weights (60 % `c0`).
    pub fn weighted_collection(&self, rng: &mut impl Rng) -> usize {
        let total = self.documents().max(1);
        let mut pick = rng.random_range(0..total) as i64;
        for (index, (_, ids)) in self.collections.iter().enumerate() {
            let len = ids.end - ids.start;
            if pick < len {
                return index;
            }
            pick -= len;
        }
        0
    }
}

/// Random lower-case text with spaces, shared by every document (slices at random offsets).
fn text_pool() -> &'static str {
    static POOL: OnceLock<String> = OnceLock::new();
    POOL.get_or_init(|| {
        let mut rng = rand::rng();
        (0..64 * 1024)
            .map(|_| {
                let c = rng.random_range(0..27u8);
                if c == 26 { ' ' } else { (b'a' + c) as char }
            })
            .collect()
    })
}

fn text(rng: &mut impl Rng, len: usize) -> &'static str {
    let pool = text_pool();
    let start = rng.random_range(0..pool.len() - len);
    &pool[start..start + len]
}

/// One document of about [`DOCUMENT_BYTES`]: a few typed fields, a nested document, an array
/// and random text.
pub fn document(id: i64, seq: i64, t: i64, rng: &mut impl Rng) -> RawDocumentBuf {
    let mut document = rawdoc! {
        "_id": id,
        "seq": seq,
        "t": t,
        "n": 0_i32,
        "v": rng.random::<i64>(),
        "name": format!("user {id}"),
        "email": format!("user{id}@example.com"),
        "active": id % 3 != 0,
        "score": rng.random::<f64>() * 100.0,
        "created": DateTime::from_millis(1_700_000_000_000 + id),
        "tags": [text(rng, 8), text(rng, 12), text(rng, 6)],
        "address": { "street": text(rng, 24), "city": text(rng, 10), "zip": format!("{:05}", id % 100_000) },
    };
    // The `pad` element costs 1 (type) + 4 ("pad\0") + 4 (length) + 1 (NUL) bytes besides its text.
    let pad = DOCUMENT_BYTES.saturating_sub(document.as_bytes().len() + 10);
    document.append("pad", text(rng, pad.max(1)));
    document
}

/// The initial documents of one collection, in insert batches.
pub fn batches(ids: Range<i64>) -> Vec<Vec<RawDocumentBuf>> {
    let mut rng = rand::rng();
    let ids: Vec<i64> = ids.collect();
    ids.chunks(BATCH_DOCUMENTS).map(|chunk| chunk.iter().map(|&id| document(id, 0, 0, &mut rng)).collect()).collect()
}

/// The whole data set, per collection, in insert batches.
pub fn generate(layout: &Layout) -> Vec<(String, Vec<Vec<RawDocumentBuf>>)> {
    layout.collections.iter().map(|(name, ids)| (name.clone(), batches(ids.clone()))).collect()
}

/// Bytes of BSON in a generated data set.
pub fn bytes_of(data: &[(String, Vec<Vec<RawDocumentBuf>>)]) -> u64 {
    data.iter().flat_map(|(_, batches)| batches.iter().flatten()).map(|d| d.as_bytes().len() as u64).sum()
}

/// Inserts a generated data set with one client, one batch at a time; returns the seconds spent.
pub async fn insert_all(
    client: &Client,
    database: &str,
    data: &[(String, Vec<Vec<RawDocumentBuf>>)],
) -> anyhow::Result<f64> {
    let db = client.database(database);
    let start = std::time::Instant::now();
    for (name, batches) in data {
        let collection = db.collection::<RawDocumentBuf>(name);
        for batch in batches {
            collection.insert_many(batch).await?;
        }
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Documents in the data set's collections on a server (exact counts).
pub async fn count(client: &Client, layout: &Layout) -> anyhow::Result<u64> {
    let db = client.database(DATABASE);
    let mut total = 0;
    for (name, _) in &layout.collections {
        total += db.collection::<RawDocumentBuf>(name).count_documents(bson::doc! {}).await?;
    }
    Ok(total)
}

/// Documents and bytes of BSON in the data set's collections on a server, from `collStats`
/// (after a load changed the data set).
pub async fn stats(client: &Client, layout: &Layout) -> anyhow::Result<(u64, u64)> {
    let db = client.database(DATABASE);
    let (mut documents, mut bytes) = (0u64, 0u64);
    for (name, _) in &layout.collections {
        let reply = db.run_command(bson::doc! {"collStats": name}).await?;
        let number = |key: &str| match reply.get(key) {
            Some(bson::Bson::Int32(v)) => *v as u64,
            Some(bson::Bson::Int64(v)) => *v as u64,
            Some(bson::Bson::Double(v)) => *v as u64,
            _ => 0,
        };
        documents += number("count");
        bytes += number("size");
    }
    Ok((documents, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_splits_sixty_percent_into_c0() {
        let layout = Layout::new(1000);
        assert_eq!(layout.documents(), 1000);
        assert_eq!(layout.collections[0].1, 0..600);
        assert_eq!(layout.collections[3].1.end, 1000);
        assert_eq!(layout.collections[1].1, 600..733);
    }

    #[test]
    fn documents_are_about_one_kilobyte() {
        let mut rng = rand::rng();
        for id in [0, 7, 123_456_789] {
            let size = document(id, 1, 2, &mut rng).as_bytes().len();
            assert!((DOCUMENT_BYTES - 2..=DOCUMENT_BYTES + 2).contains(&size), "{size}");
        }
    }
}
