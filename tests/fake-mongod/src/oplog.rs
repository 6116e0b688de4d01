//! The oplog: strictly increasing `Timestamp(secs, inc)` optimes, entries kept in memory
//! (sharing document bytes with storage) and bounded by total size.

use std::collections::VecDeque;
use std::sync::Arc;

use bson::{Bson, Document, Timestamp};

use crate::storage::Doc;

/// What an oplog entry records.
#[derive(Debug, Clone)]
pub enum Kind {
    /// Document insert.
    Insert { doc: Doc },
    /// Modifier or pipeline update (delta described by `desc`). `post` is the new document;
    /// `images` tells whether pre/post images were recorded for change streams.
    /// `before` is the previous version (kept for snapshot reads).
    Update { id: Bson, desc: Document, pre: Option<Doc>, post: Doc, images: bool, before: Doc },
    /// Full-document replacement.
    Replace { id: Bson, doc: Doc, pre: Option<Doc>, before: Doc },
    /// Delete.
    Delete { id: Bson, pre: Option<Doc>, before: Doc },
    /// No-op (`appendOplogNote`, periodic no-op writer).
    Noop { msg: Document },
    /// Collection or view creation.
    Create { desc: Document },
    /// Index creation.
    CreateIndexes { indexes: Vec<Document> },
    /// Index drop.
    DropIndexes { indexes: Vec<Document> },
    /// collMod.
    Modify { desc: Document, before: Document },
    /// Rename to another namespace.
    Rename { to_db: String, to_coll: String, drop_target: Option<bson::Uuid> },
    /// Collection drop.
    Drop,
    /// Database drop.
    DropDatabase,
}

/// One oplog entry.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Position (monotonic, never reused).
    pub seq: u64,
    /// Optime.
    pub ts: Timestamp,
    /// Wall clock time.
    pub wall: bson::DateTime,
    /// Index within a transaction (0 otherwise).
    pub txn_op_index: u32,
    /// Database.
    pub db: String,
    /// Collection (empty for database-level entries).
    pub coll: String,
    /// Collection UUID.
    pub uuid: Option<bson::Uuid>,
    /// The operation.
    pub kind: Kind,
    /// Session id for transaction entries.
    pub lsid: Option<Document>,
    /// Transaction number for transaction entries.
    pub txn_number: Option<i64>,
    /// Accounted size in bytes.
    pub size: usize,
}

/// An entry before it gets its optime.
#[derive(Debug, Clone)]
pub struct Pending {
    /// Database.
    pub db: String,
    /// Collection.
    pub coll: String,
    /// Collection UUID.
    pub uuid: Option<bson::Uuid>,
    /// The operation.
    pub kind: Kind,
}

/// The bounded oplog.
#[derive(Debug)]
pub struct Oplog {
    entries: VecDeque<Arc<Entry>>,
    total: usize,
    cap: usize,
    next_seq: u64,
    last_ts: Timestamp,
}

fn entry_size(kind: &Kind) -> usize {
    100 + match kind {
        Kind::Insert { doc } => doc.as_bytes().len(),
        Kind::Update { desc, .. } => crate::wire::doc_bytes(desc).len(),
        Kind::Replace { doc, .. } => doc.as_bytes().len(),
        _ => 64,
    }
}

impl Oplog {
    /// A new oplog bounded to `cap_bytes`.
    pub fn new(cap_bytes: usize) -> Oplog {
        Oplog {
            entries: VecDeque::new(),
            total: 0,
            cap: cap_bytes.max(1024),
            next_seq: 1,
            last_ts: Timestamp { time: 0, increment: 0 },
        }
    }

    /// Allocates the next optime (strictly increasing, wall-clock seconds).
    pub fn next_ts(&mut self) -> Timestamp {
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs() as u32;
        let ts = if now > self.last_ts.time {
            Timestamp { time: now, increment: 1 }
        } else {
            Timestamp { time: self.last_ts.time, increment: self.last_ts.increment + 1 }
        };
        self.last_ts = ts;
        ts
    }

    /// The latest optime (the cluster time).
    pub fn last_ts(&self) -> Timestamp {
        self.last_ts
    }

    /// Sequence number of the newest entry (0 if none ever written).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Sequence number of the oldest retained entry.
    pub fn first_seq(&self) -> u64 {
        self.entries.front().map(|e| e.seq).unwrap_or(self.next_seq)
    }

    /// Optime of the oldest retained entry.
    pub fn first_ts(&self) -> Option<Timestamp> {
        self.entries.front().map(|e| e.ts)
    }

    /// Appends entries sharing one optime (one write, or one committed transaction).
    pub fn append(&mut self, ops: Vec<Pending>, txn: Option<(Document, i64)>) -> Timestamp {
        let ts = self.next_ts();
        let wall = bson::DateTime::now();
        let in_txn = txn.is_some();
        for (i, p) in ops.into_iter().enumerate() {
            let size = entry_size(&p.kind);
            let e = Entry {
                seq: self.next_seq,
                ts,
                wall,
                txn_op_index: if in_txn { i as u32 } else { 0 },
                db: p.db,
                coll: p.coll,
                uuid: p.uuid,
                kind: p.kind,
                lsid: txn.as_ref().map(|t| t.0.clone()),
                txn_number: txn.as_ref().map(|t| t.1),
                size,
            };
            self.next_seq += 1;
            self.total += size;
            self.entries.push_back(Arc::new(e));
        }
        while self.total > self.cap && self.entries.len() > 1 {
            if let Some(old) = self.entries.pop_front() {
                self.total -= old.size;
            }
        }
        ts
    }

    /// Appends a sequence of single-op writes, each with its own optime (fast path for batches).
    pub fn append_each(&mut self, ops: Vec<Pending>) -> Timestamp {
        let mut ts = self.last_ts;
        for p in ops {
            ts = self.append(vec![p], None);
        }
        ts
    }

    /// Keeps only the newest entry.
    pub fn truncate(&mut self) {
        while self.entries.len() > 1 {
            if let Some(old) = self.entries.pop_front() {
                self.total -= old.size;
            }
        }
    }

    /// Entries with `seq >= from`, at most `max`.
    pub fn read_from(&self, from: u64, max: usize) -> Vec<Arc<Entry>> {
        let first = self.first_seq();
        let start = from.saturating_sub(first) as usize;
        self.entries.iter().skip(start).take(max).cloned().collect()
    }

    /// The first retained entry with `ts >= t`, as a sequence number (next_seq if none).
    pub fn seq_at_or_after(&self, t: Timestamp) -> u64 {
        let idx = self.entries.partition_point(|e| (e.ts.time, e.ts.increment) < (t.time, t.increment));
        self.entries.get(idx).map(|e| e.seq).unwrap_or(self.next_seq)
    }

    /// The entry with this sequence number, if retained.
    pub fn get(&self, seq: u64) -> Option<Arc<Entry>> {
        let first = self.first_seq();
        if seq < first {
            return None;
        }
        self.entries.get((seq - first) as usize).cloned()
    }

    /// Retained entries with an optime after `t`, newest first.
    pub fn newer_than(&self, t: Timestamp) -> Vec<Arc<Entry>> {
        self.entries.iter().rev().take_while(|e| (e.ts.time, e.ts.increment) > (t.time, t.increment)).cloned().collect()
    }

    /// Number of retained entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Total accounted size.
    pub fn size_bytes(&self) -> usize {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn optimes_increase_and_eviction() {
        let mut o = Oplog::new(2048);
        let mut last = Timestamp { time: 0, increment: 0 };
        for _ in 0..100 {
            let ts = o.append(
                vec![Pending { db: "d".into(), coll: "c".into(), uuid: None, kind: Kind::Noop { msg: doc! {} } }],
                None,
            );
            assert!((ts.time, ts.increment) > (last.time, last.increment));
            last = ts;
        }
        assert!(o.size_bytes() <= 2048);
        assert!(o.first_seq() > 1);
        o.truncate();
        assert_eq!(o.len(), 1);
        assert_eq!(o.first_seq(), 100);
    }
}
