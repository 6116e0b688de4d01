//! What clustersync's initial copy is compared with: the servers' raw limits with one client
//! (insert only, scan only) and a baseline copier — the simplest fast copier one would write
//! with the same driver: one task per collection, a cursor read in the server's default batches,
//! `insert_many` of every [`BATCH_DOCUMENTS`] documents read.

use std::time::Instant;

use bson::{RawDocumentBuf, doc};
use mongodb::Client;
use serde::Serialize;

use crate::data::{BATCH_DOCUMENTS, DATABASE, Layout};

/// Documents and bytes moved in some seconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Rate {
    /// Documents.
    pub documents: u64,
    /// Bytes of BSON.
    pub bytes: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

impl Rate {
    /// Documents per second.
    pub fn docs_per_sec(&self) -> f64 {
        if self.seconds > 0.0 { self.documents as f64 / self.seconds } else { 0.0 }
    }

    /// MiB per second.
    pub fn mib_per_sec(&self) -> f64 {
        if self.seconds > 0.0 { self.bytes as f64 / (1024.0 * 1024.0) / self.seconds } else { 0.0 }
    }
}

/// Reads every document of the data set with one client, one collection after the other,
/// without decoding anything.
pub async fn raw_scan(client: &Client, layout: &Layout) -> anyhow::Result<Rate> {
    let db = client.database(DATABASE);
    let mut rate = Rate::default();
    let start = Instant::now();
    for (name, _) in &layout.collections {
        let mut cursor = db.collection::<RawDocumentBuf>(name).find(doc! {}).await?;
        while cursor.advance().await? {
            rate.documents += 1;
            rate.bytes += cursor.current().as_bytes().len() as u64;
        }
    }
    rate.seconds = start.elapsed().as_secs_f64();
    Ok(rate)
}

/// The baseline copier: one task per collection, cursor read → `insert_many` (unordered).
pub async fn baseline(source: &Client, destination: &Client, layout: &Layout) -> anyhow::Result<Rate> {
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (name, _) in &layout.collections {
        let from = source.database(DATABASE).collection::<RawDocumentBuf>(name);
        let to = destination.database(DATABASE).collection::<RawDocumentBuf>(name);
        tasks.spawn(async move {
            let mut cursor = from.find(doc! {}).await?;
            let (mut documents, mut bytes) = (0u64, 0u64);
            let mut batch = Vec::with_capacity(BATCH_DOCUMENTS);
            loop {
                let more = cursor.advance().await?;
                if more {
                    let document = cursor.current().to_raw_document_buf();
                    bytes += document.as_bytes().len() as u64;
                    batch.push(document);
                }
                if batch.len() == BATCH_DOCUMENTS || (!more && !batch.is_empty()) {
                    documents += batch.len() as u64;
                    to.insert_many(std::mem::take(&mut batch)).ordered(false).await?;
                    batch.reserve(BATCH_DOCUMENTS);
                }
                if !more {
                    break;
                }
            }
            anyhow::Ok((documents, bytes))
        });
    }
    let mut rate = Rate::default();
    while let Some(done) = tasks.join_next().await {
        let (documents, bytes) = done??;
        rate.documents += documents;
        rate.bytes += bytes;
    }
    rate.seconds = start.elapsed().as_secs_f64();
    Ok(rate)
}
