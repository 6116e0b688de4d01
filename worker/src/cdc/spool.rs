//! The durable event spool on the destination (`__clustersync.spool.<migration>.<shard>`) and
//! the drainer that replays it into the appliers.
//!
//! While the copy runs, change events are written here instead of being applied, so the source
//! oplog window no longer bounds how long the copy may take. Entries are
//! `{_id: seq, ts: clusterTime, ev: <raw event>}` with dense sequence numbers from 0; an event too
//! large to wrap under the 16 MB document limit is stored as `{_id, ts, ref: {op, ns, documentKey}}`
//! and applied by re-reading the document from the source.
//!
//! The sequence number an event gets is a function of the stream alone (the n-th relevant event
//! after the start point), so a spool entry written twice — a retried insert, or a stale holder
//! racing the new one after a takeover — always holds the same event: a duplicate key on `_id`
//! means "already spooled".

use std::time::Duration;

use bson::raw::ValueAccessErrorKind;
use bson::{Document, RawBsonRef, RawDocumentBuf, doc};
use clustersync_common::extjson::OpTime;
use clustersync_common::namespace::{INTERNAL_DATABASE, Namespace};
use futures::StreamExt;
use mongodb::Collection;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::cdc::dispatch::DispatchItem;
use crate::cdc::event::{ChangeEvent, MemoryBudget, OpType};
use crate::error::{DUPLICATE_KEY, WorkerError};
use crate::mongo::{self, Clusters};

/// Largest spool entry: MongoDB's document limit. Bigger events are spooled as references.
const MAX_ENTRY_BYTES: usize = 16 * 1024 * 1024;
/// Room for the `{_id, ts, ev}` wrapper around a raw event.
const WRAPPER_BYTES: usize = 64;
/// Most bytes read from the spool in one go (entries may be up to 16 MB each).
const MAX_READ_BYTES: usize = 32 * 1024 * 1024;
/// How often a read that finds a hole in the spool is tried again before giving up (a majority
/// read may trail a just-acknowledged majority write by a moment).
const HOLE_RETRIES: u32 = 20;

/// The spool collection's name in [`INTERNAL_DATABASE`].
pub fn spool_collection(migration: &str, shard: &str) -> String {
    format!("spool.{migration}.{shard}")
}

/// Where the spool (and the stream) stands, published by the intake after every durable write.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpoolPos {
    /// Next sequence number to spool; everything below is durably in the spool.
    pub next_seq: u64,
    /// Resume the stream after this token to continue right after the spooled events.
    pub token: Option<Document>,
    /// Cluster time of the last event read from the stream.
    pub read_through: Option<OpTime>,
    /// Events spooled in total (all holders).
    pub events_spooled: u64,
    /// The stream had nothing more to give at the last read.
    pub idle: bool,
    /// Next sequence number the intake hands out (spooled, or dispatched live): when everything
    /// below it is applied and the stream is idle, nothing is pending.
    pub handed_out: u64,
}

/// Encodes an event as a spool entry.
pub fn entry(seq: u64, event: &ChangeEvent) -> Result<RawDocumentBuf, WorkerError> {
    let mut document = RawDocumentBuf::new();
    document.append("_id", seq_i64(seq)?);
    document.append(
        "ts",
        event.cluster_time.map(bson::Timestamp::from).unwrap_or(bson::Timestamp { time: 0, increment: 0 }),
    );
    if event.size() + WRAPPER_BYTES <= MAX_ENTRY_BYTES && !event.lookup_only {
        document.append("ev", event.raw.clone());
        return Ok(document);
    }
    // Too large to wrap: keep what is needed to re-read the document from the source. Only data
    // events carry documents big enough for this.
    let (Some(coll), Some(key)) = (&event.coll, &event.document_key) else {
        return Err(WorkerError::InvalidData(format!(
            "{} event on {} of {} bytes cannot be spooled",
            event.op.as_str(),
            event.ns_display(),
            event.size()
        )));
    };
    let mut ns = RawDocumentBuf::new();
    ns.append("db", event.db.as_str());
    ns.append("coll", coll.as_str());
    let mut reference = RawDocumentBuf::new();
    reference.append("op", event.op.as_str());
    reference.append("ns", ns);
    reference.append("documentKey", key.clone());
    if let Some(uuid) = &event.collection_uuid {
        reference.append("uuid", bson::Binary { subtype: bson::spec::BinarySubtype::Uuid, bytes: uuid.clone() });
    }
    document.append("ref", reference);
    debug!(seq, ns = %event.ns_display(), bytes = event.size(), "event too large to spool, spooled as a reference");
    Ok(document)
}

fn seq_i64(seq: u64) -> Result<i64, WorkerError> {
    i64::try_from(seq).map_err(|_| WorkerError::InvalidData(format!("spool sequence number {seq} overflows")))
}

/// Decodes a spool entry into its sequence number and event.
pub fn parse_entry(entry: &RawDocumentBuf) -> Result<(u64, ChangeEvent), WorkerError> {
    let bad = |e: &dyn std::fmt::Display| WorkerError::InvalidData(format!("spool entry: {e}"));
    let seq = match entry.get("_id").map_err(|e| bad(&e))? {
        Some(RawBsonRef::Int64(seq)) if seq >= 0 => seq as u64,
        other => return Err(bad(&format!("_id {other:?} is not a sequence number"))),
    };
    match entry.get_document("ev") {
        Ok(event) => return Ok((seq, ChangeEvent::from_raw(event.to_raw_document_buf())?)),
        Err(error) if matches!(error.kind, ValueAccessErrorKind::NotPresent) => {}
        Err(error) => return Err(bad(&error)),
    }
    let reference = entry.get_document("ref").map_err(|e| bad(&format!("entry {seq} has neither ev nor ref: {e}")))?;
    let op = OpType::parse(reference.get_str("op").map_err(|e| bad(&e))?);
    let ns = reference.get_document("ns").map_err(|e| bad(&e))?;
    let ns = Namespace::new(ns.get_str("db").map_err(|e| bad(&e))?, ns.get_str("coll").map_err(|e| bad(&e))?);
    let key = reference.get_document("documentKey").map_err(|e| bad(&e))?.to_raw_document_buf();
    let uuid = reference.get_binary("uuid").ok().map(|b| b.bytes.to_vec());
    let cluster_time = entry.get_timestamp("ts").ok().map(OpTime::from);
    Ok((seq, ChangeEvent::lookup(op, ns, key, uuid, cluster_time)))
}

/// The spool collection of one change-stream task.
#[derive(Clone)]
pub struct Spool {
    collection: Collection<RawDocumentBuf>,
    name: String,
    cancel: CancellationToken,
    retry_budget: Duration,
}

impl Spool {
    pub fn new(
        clusters: &Clusters,
        migration: &str,
        shard: &str,
        cancel: CancellationToken,
        retry_budget: Duration,
    ) -> Self {
        let name = spool_collection(migration, shard);
        let collection = clusters.destination.database(INTERNAL_DATABASE).collection(&name);
        Self { collection, name, cancel, retry_budget }
    }

    fn context(&self, what: &str) -> String {
        format!("{what} spool {INTERNAL_DATABASE}.{}", self.name)
    }

    /// Writes entries durably (`w: majority, j: true`, the client's write concern).
    pub async fn write(&self, entries: &[RawDocumentBuf]) -> Result<(), WorkerError> {
        if entries.is_empty() {
            return Ok(());
        }
        let context = self.context("write to");
        mongo::retry(&context, &self.cancel, self.retry_budget, || async {
            // Unordered: after a partial failure, the retry inserts what is missing and the
            // duplicates are the very same entries (see the module documentation).
            match self.collection.insert_many(entries).ordered(false).await {
                Ok(_) => Ok(()),
                Err(error) if only_duplicates(&error) => Ok(()),
                Err(error) => Err(WorkerError::mongo(&context, error)),
            }
        })
        .await
    }

    /// Reads the entries `[from, to)` in order, at most 32 MB of them (always at least one).
    pub async fn read(&self, from: u64, to: u64, limit: usize) -> Result<Vec<(u64, ChangeEvent)>, WorkerError> {
        let context = self.context("read from");
        let mut attempts = 0;
        loop {
            let entries = mongo::retry(&context, &self.cancel, self.retry_budget, || async {
                let filter = doc! {"_id": {"$gte": seq_i64(from)?, "$lt": seq_i64(to)?}};
                let mut cursor = self
                    .collection
                    .find(filter)
                    .sort(doc! {"_id": 1})
                    .limit(limit as i64)
                    .await
                    .map_err(|e| WorkerError::mongo(&context, e))?;
                let mut entries = Vec::new();
                let mut bytes = 0;
                while let Some(entry) = cursor.next().await {
                    let entry = entry.map_err(|e| WorkerError::mongo(&context, e))?;
                    bytes += entry.as_bytes().len();
                    entries.push(entry);
                    if bytes >= MAX_READ_BYTES {
                        break;
                    }
                }
                Ok(entries)
            })
            .await?;
            let mut parsed = Vec::with_capacity(entries.len());
            for (expected, entry) in (from..).zip(entries.iter()) {
                let (seq, event) = parse_entry(entry)?;
                if seq != expected {
                    break;
                }
                parsed.push((seq, event));
            }
            if !parsed.is_empty() {
                return Ok(parsed);
            }
            // Entries below `to` were acknowledged as durably written, so a hole is either a
            // read racing the write's visibility or a damaged spool: retry a little, then fail
            // rather than skip events.
            attempts += 1;
            if attempts >= HOLE_RETRIES {
                return Err(WorkerError::InvalidData(format!(
                    "spool {INTERNAL_DATABASE}.{} has no entry {from} although entries up to {} were written",
                    self.name,
                    to.saturating_sub(1)
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Deletes entries at or above `seq`: written by a holder that crashed before checkpointing them.
    pub async fn delete_from(&self, seq: u64) -> Result<u64, WorkerError> {
        self.delete(doc! {"_id": {"$gte": seq_i64(seq)?}}, "remove leftovers from").await
    }

    /// Deletes entries below `seq` (applied and checkpointed).
    pub async fn delete_below(&self, seq: u64) -> Result<u64, WorkerError> {
        self.delete(doc! {"_id": {"$lt": seq_i64(seq)?}}, "trim").await
    }

    async fn delete(&self, filter: Document, what: &str) -> Result<u64, WorkerError> {
        let context = self.context(what);
        mongo::retry(&context, &self.cancel, self.retry_budget, || async {
            let result =
                self.collection.delete_many(filter.clone()).await.map_err(|e| WorkerError::mongo(&context, e))?;
            Ok(result.deleted_count)
        })
        .await
    }

    /// Drops the spool (everything in it is applied and checkpointed).
    pub async fn drop(&self) -> Result<(), WorkerError> {
        let context = self.context("drop");
        mongo::retry(&context, &self.cancel, self.retry_budget, || async {
            self.collection.drop().await.map_err(|e| WorkerError::mongo(&context, e))
        })
        .await
    }

    /// Number of entries (tests and diagnostics).
    pub async fn count(&self) -> Result<u64, WorkerError> {
        let context = self.context("count");
        self.collection.count_documents(doc! {}).await.map_err(|e| WorkerError::mongo(context, e))
    }
}

/// Whether an insert error consists only of duplicate keys.
fn only_duplicates(error: &mongodb::error::Error) -> bool {
    use mongodb::error::ErrorKind;
    match error.kind.as_ref() {
        ErrorKind::InsertMany(failure) => {
            failure.write_concern_error.is_none()
                && failure.write_errors.as_ref().is_some_and(|errors| errors.iter().all(|e| e.code == DUPLICATE_KEY))
        }
        _ => false,
    }
}

/// Replays the spool into the dispatcher, from `next` on, following the intake as it appends;
/// ends when the intake has switched to live and everything spooled was handed out.
pub struct Drainer {
    pub spool: Spool,
    pub next: u64,
    pub positions: watch::Receiver<SpoolPos>,
    pub live_from: watch::Receiver<Option<u64>>,
    /// Everything below this has been handed to the dispatcher.
    pub dispatched: watch::Sender<u64>,
    pub dispatch: mpsc::Sender<DispatchItem>,
    pub batch: usize,
    pub budget: MemoryBudget,
}

impl Drainer {
    pub async fn run(mut self) -> Result<(), WorkerError> {
        info!(from = self.next, "draining the spool");
        loop {
            let end = self.positions.borrow_and_update().next_seq;
            if self.next < end {
                let entries = self.spool.read(self.next, end, self.batch).await?;
                for (seq, mut event) in entries {
                    event.held = Some(self.budget.hold(event.size()).await?);
                    self.dispatch
                        .send(DispatchItem::Event { seq, event: Box::new(event), live: false })
                        .await
                        .map_err(|_| WorkerError::InvalidData("change stream dispatcher stopped".into()))?;
                    self.next = seq + 1;
                    self.dispatched.send_replace(self.next);
                }
                continue;
            }
            if self.live_from.borrow_and_update().is_some() {
                // The intake switched only once it saw everything spooled handed out.
                info!(through = self.next, "spool drained");
                return Ok(());
            }
            tokio::select! {
                changed = self.positions.changed() => {
                    changed.map_err(|_| WorkerError::InvalidData("change stream intake stopped".into()))?;
                }
                changed = self.live_from.changed() => {
                    changed.map_err(|_| WorkerError::InvalidData("change stream intake stopped".into()))?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bson::{Timestamp, rawdoc};

    use super::*;

    fn insert_event(size: usize) -> ChangeEvent {
        let payload = "x".repeat(size);
        ChangeEvent::from_raw(rawdoc! {
            "_id": {"_data": "82AA"}, "operationType": "insert", "clusterTime": Timestamp { time: 9, increment: 1 },
            "ns": {"db": "app", "coll": "big"}, "documentKey": {"_id": 1}, "fullDocument": {"_id": 1, "p": payload},
            "collectionUUID": bson::Binary { subtype: bson::spec::BinarySubtype::Uuid, bytes: vec![7; 16] },
        })
        .unwrap()
    }

    #[test]
    fn entries_round_trip() {
        let event = insert_event(10);
        let spooled = entry(42, &event).unwrap();
        let document = spooled.to_document().unwrap();
        assert_eq!(document.get_i64("_id").unwrap(), 42);
        assert_eq!(document.get_timestamp("ts").unwrap(), Timestamp { time: 9, increment: 1 });
        let (seq, back) = parse_entry(&spooled).unwrap();
        assert_eq!(seq, 42);
        assert_eq!(back.raw, event.raw);
        assert!(!back.lookup_only);
    }

    #[test]
    fn events_too_large_to_wrap_become_references() {
        let event = insert_event(MAX_ENTRY_BYTES - 100);
        assert!(event.size() + WRAPPER_BYTES > MAX_ENTRY_BYTES);
        let spooled = entry(7, &event).unwrap();
        assert!(spooled.as_bytes().len() < 1024);
        let (seq, back) = parse_entry(&spooled).unwrap();
        assert_eq!(seq, 7);
        assert!(back.lookup_only);
        assert_eq!(back.op, OpType::Insert);
        assert_eq!(back.ns(), Some(Namespace::new("app", "big")));
        assert_eq!(back.document_key.unwrap().to_document().unwrap(), doc! {"_id": 1});
        assert_eq!(back.cluster_time, Some(OpTime { t: 9, i: 1 }));
        assert_eq!(back.collection_uuid, Some(vec![7; 16]), "the reference keeps the collection incarnation");
    }

    #[test]
    fn malformed_entries_are_errors() {
        assert!(parse_entry(&rawdoc! {"_id": 1_i64}).is_err());
        assert!(parse_entry(&rawdoc! {"_id": "x", "ev": {}}).is_err());
        assert_eq!(spool_collection("m1", "rs0"), "spool.m1.rs0");
    }
}
