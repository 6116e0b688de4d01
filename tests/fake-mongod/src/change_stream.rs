//! Change streams over the oplog: collection, database and cluster scope; resume tokens;
//! `fullDocument` / `fullDocumentBeforeChange`; expanded DDL events; invalidate; the
//! post-batch resume token (high-water mark); `ChangeStreamHistoryLost`.
//!
//! Resume token layout (`_id._data`, upper-case hex, 44 characters):
//! `82`, then the optime as big-endian u64 (`secs << 32 | inc`, 16 hex), then txnOpIndex
//! (u32, 8 hex), then the oplog sequence number (u64, 16 hex), then the kind (u8, 2 hex:
//! 00 event or high-water mark, 01 invalidate, 0x80 + n fragment n of a split event).
//! Tokens compare as strings in stream order.
//! The first 18 characters match real MongoDB tokens, so the optime can be read back.

use std::collections::VecDeque;

use bson::{Bson, Document, Timestamp, doc};

use crate::aggregate::{self, expr::Vars};
use crate::error::{Error, Result};
use crate::oplog::{Entry, Kind, Oplog};
use crate::storage::Catalog;

/// A decoded resume token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    /// Optime.
    pub ts: Timestamp,
    /// Position within a transaction.
    pub txn_op_index: u32,
    /// Oplog sequence number.
    pub seq: u64,
    /// 0 = event or high-water mark, 1 = invalidate.
    pub kind: u8,
}

impl Token {
    /// Encodes as `{_data: "<hex>"}`.
    pub fn to_doc(&self) -> Document {
        let t = ((self.ts.time as u64) << 32) | self.ts.increment as u64;
        doc! {"_data": format!("82{t:016X}{:08X}{:016X}{:02X}", self.txn_op_index, self.seq, self.kind)}
    }

    /// Decodes a token document.
    pub fn parse(d: &Document) -> Result<Token> {
        let bad = || Error::new(260, "Bad resume token: _data of missing or of wrong type");
        let s = d.get_str("_data").map_err(|_| bad())?;
        if s.len() != 44 || !s.starts_with("82") {
            return Err(bad());
        }
        let hex = |a: usize, b: usize| u64::from_str_radix(&s[a..b], 16).map_err(|_| bad());
        let t = hex(2, 18)?;
        Ok(Token {
            ts: Timestamp { time: (t >> 32) as u32, increment: t as u32 },
            txn_op_index: hex(18, 26)? as u32,
            seq: hex(26, 42)?,
            kind: hex(42, 44)? as u8,
        })
    }
}

/// What the stream watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// One collection.
    Coll(String, String),
    /// One database.
    Db(String),
    /// All databases.
    Cluster,
}

/// An open change stream (the state behind a change stream cursor).
#[derive(Debug, Clone)]
pub struct ChangeStream {
    /// Scope.
    pub scope: Scope,
    full_document: String,
    before_change: String,
    show_expanded: bool,
    pipeline: Vec<Document>,
    /// Next oplog sequence number to scan.
    pub next_seq: u64,
    /// The current post-batch resume token.
    pub pbrt: Document,
    /// Events produced but not yet returned.
    pending: VecDeque<Document>,
    /// Set once an invalidate was returned: the cursor closes.
    pub invalidated: bool,
    /// Resume position inside an entry: skip its events up to this kind.
    skip_until: Option<(u64, u8)>,
    /// Events that went through the pipeline, with their tokens, not yet returned.
    ready: VecDeque<(crate::storage::Doc, Document)>,
    /// `$changeStreamSplitLargeEvent` was given.
    split_large: bool,
    /// Resuming inside a split event: skip its fragments up to this one.
    skip_fragments: Option<(u64, u8)>,
}

const KNOWN_STAGES: [&str; 27] = [
    "$changeStreamSplitLargeEvent",
    "$match",
    "$project",
    "$addFields",
    "$set",
    "$unset",
    "$replaceRoot",
    "$replaceWith",
    "$redact",
    "$sort",
    "$skip",
    "$limit",
    "$group",
    "$count",
    "$sample",
    "$bucketAuto",
    "$bucket",
    "$unwind",
    "$lookup",
    "$unionWith",
    "$facet",
    "$sortByCount",
    "$out",
    "$merge",
    "$documents",
    "$collStats",
    "$changeStream",
];

fn internal_db(db: &str) -> bool {
    matches!(db, "admin" | "config" | "local")
}

impl ChangeStream {
    /// Opens a stream from the `$changeStream` stage options.
    pub fn open(scope: Scope, spec: &Document, mut pipeline: Vec<Document>, oplog: &Oplog) -> Result<ChangeStream> {
        let mut split_large = false;
        if let Some(i) = pipeline.iter().position(|st| st.contains_key("$changeStreamSplitLargeEvent")) {
            if i + 1 != pipeline.len() {
                return Err(Error::new(7182802, "$changeStreamSplitLargeEvent must be the last stage in the pipeline"));
            }
            pipeline.pop();
            split_large = true;
        }
        for (k, _) in spec {
            if !matches!(
                k.as_str(),
                "fullDocument"
                    | "fullDocumentBeforeChange"
                    | "resumeAfter"
                    | "startAfter"
                    | "startAtOperationTime"
                    | "allChangesForCluster"
                    | "showExpandedEvents"
                    | "allowToRunOnConfigDB"
                    | "allowToRunOnSystemNS"
                    | "showSystemEvents"
                    | "showMigrationEvents"
                    | "showRawUpdateDescription"
            ) {
                return Err(Error::new(40415, format!("BSON field '$changeStream.{k}' is an unknown field.")));
            }
        }
        for st in &pipeline {
            let name = st.keys().next().map(String::as_str).unwrap_or("");
            if !name.is_empty() && !KNOWN_STAGES.contains(&name) {
                return Err(Error::new(40324, format!("Unrecognized pipeline stage name: '{name}'")));
            }
            if !matches!(
                name,
                "$match" | "$project" | "$addFields" | "$set" | "$unset" | "$replaceRoot" | "$replaceWith" | "$redact"
            ) {
                return Err(Error::new(5_187_201, format!("{name} is not permitted in a $changeStream pipeline")));
            }
        }
        let full_document = spec.get_str("fullDocument").unwrap_or("default").to_string();
        if !matches!(full_document.as_str(), "default" | "updateLookup" | "whenAvailable" | "required") {
            return Err(Error::bad_value(format!("'{full_document}' is not a valid value for fullDocument")));
        }
        let before_change = spec.get_str("fullDocumentBeforeChange").unwrap_or("off").to_string();
        if !matches!(before_change.as_str(), "off" | "whenAvailable" | "required") {
            return Err(Error::bad_value(format!(
                "'{before_change}' is not a valid value for fullDocumentBeforeChange"
            )));
        }
        let resume_after = spec.get_document("resumeAfter").ok();
        let start_after = spec.get_document("startAfter").ok();
        let start_at = spec.get_timestamp("startAtOperationTime").ok();
        if [resume_after.is_some(), start_after.is_some(), start_at.is_some()].iter().filter(|b| **b).count() > 1 {
            return Err(Error::new(40674, "Only one type of resume option is allowed, but multiple were found."));
        }
        let mut skip_until = None;
        let mut skip_fragments = None;
        let (next_seq, pbrt) = if let Some(tok) = resume_after.or(start_after) {
            let t = Token::parse(tok)?;
            if t.kind == 1 && resume_after.is_some() {
                return Err(Error::new(
                    260,
                    "Attempting to resume a change stream using 'resumeAfter' is not allowed from an invalidate notification.",
                ));
            }
            if let Some(first) = oplog.first_ts()
                && (first.time, first.increment) > (t.ts.time, t.ts.increment)
            {
                return Err(history_lost());
            }
            if t.kind & 0x80 != 0 {
                // resume inside a split event: its later fragments still follow
                if !split_large {
                    return Err(Error::new(
                        7182803,
                        "To resume from a split event, the $changeStream pipeline must include a $changeStreamSplitLargeEvent stage",
                    ));
                }
                skip_until = Some((t.seq, t.kind));
                skip_fragments = Some((t.seq, t.kind));
                (t.seq, tok.clone())
            } else if t.kind == 0 {
                // resume after the event: events of the same entry with a higher kind still follow
                skip_until = Some((t.seq, 0));
                (t.seq, tok.clone())
            } else {
                (t.seq + 1, tok.clone())
            }
        } else if let Some(ts) = start_at {
            if let Some(first) = oplog.first_ts()
                && (first.time, first.increment) > (ts.time, ts.increment)
            {
                return Err(history_lost());
            }
            let seq = oplog.seq_at_or_after(ts);
            let hwm = Token {
                ts: Timestamp { time: ts.time, increment: ts.increment.saturating_sub(1) },
                txn_op_index: 0,
                seq: seq.saturating_sub(1),
                kind: 0,
            };
            (seq, hwm.to_doc())
        } else {
            let last = oplog.last_seq();
            (last + 1, Token { ts: oplog.last_ts(), txn_op_index: 0, seq: last, kind: 0 }.to_doc())
        };
        Ok(ChangeStream {
            scope,
            full_document,
            before_change,
            show_expanded: spec.get_bool("showExpandedEvents").unwrap_or(false),
            pipeline,
            next_seq,
            pbrt,
            pending: VecDeque::new(),
            invalidated: false,
            skip_until,
            ready: VecDeque::new(),
            split_large,
            skip_fragments,
        })
    }

    fn in_scope(&self, e: &Entry) -> bool {
        match &self.scope {
            Scope::Coll(db, coll) => e.db == *db && e.coll == *coll,
            Scope::Db(db) => e.db == *db && !e.coll.starts_with("system."),
            Scope::Cluster => !internal_db(&e.db) && !e.coll.starts_with("system."),
        }
    }

    fn base_event(&self, e: &Entry, op: &str, kind: u8) -> Document {
        let mut d = doc! {
            "_id": Token { ts: e.ts, txn_op_index: e.txn_op_index, seq: e.seq, kind }.to_doc(),
            "operationType": op,
            "clusterTime": e.ts,
            "wallTime": e.wall,
        };
        if self.show_expanded
            && let Some(u) = e.uuid
            && op != "invalidate"
            && op != "dropDatabase"
        {
            d.insert("collectionUUID", u);
        }
        d
    }

    fn finish(&self, mut d: Document, e: &Entry) -> Document {
        if let (Some(lsid), Some(n)) = (&e.lsid, e.txn_number) {
            d.insert("lsid", lsid.clone());
            d.insert("txnNumber", n);
        }
        d
    }

    fn events_for(&self, e: &Entry, catalog: &Catalog) -> Result<Vec<Document>> {
        let mut out = Vec::new();
        if !self.in_scope(e) {
            return Ok(out);
        }
        let ns = doc! {"db": e.db.clone(), "coll": e.coll.clone()};
        let pre_field = |d: &mut Document, pre: &Option<crate::storage::Doc>| -> Result<()> {
            match self.before_change.as_str() {
                "whenAvailable" => {
                    d.insert(
                        "fullDocumentBeforeChange",
                        match pre {
                            Some(p) => Bson::Document(p.to_document()?),
                            None => Bson::Null,
                        },
                    );
                }
                "required" => match pre {
                    Some(p) => {
                        d.insert("fullDocumentBeforeChange", p.to_document()?);
                    }
                    None => {
                        return Err(Error::new(
                            280,
                            format!(
                                "Change stream was configured to require a pre-image for all update, delete and replace events, but the pre-image was not found for event at {:?}",
                                e.ts
                            ),
                        ));
                    }
                },
                _ => {}
            }
            Ok(())
        };
        match &e.kind {
            Kind::Insert { doc } => {
                let full = doc.to_document()?;
                let mut d = self.base_event(e, "insert", 0);
                let key = doc! {"_id": full.get("_id").cloned().unwrap_or(Bson::Null)};
                d.insert("fullDocument", full);
                d.insert("ns", ns);
                d.insert("documentKey", key);
                out.push(self.finish(d, e));
            }
            Kind::Update { id, desc, pre, post, images, .. } => {
                let mut d = self.base_event(e, "update", 0);
                d.insert("ns", ns);
                d.insert("documentKey", doc! {"_id": id.clone()});
                let mut desc = desc.clone();
                if !self.show_expanded || desc.get_document("disambiguatedPaths").is_ok_and(|x| x.is_empty()) {
                    desc.remove("disambiguatedPaths");
                }
                d.insert("updateDescription", desc);
                match self.full_document.as_str() {
                    "updateLookup" => {
                        let cur = catalog
                            .coll(&e.db, &e.coll)
                            .and_then(|c| c.get_by_id(id))
                            .map(|(_, x)| x.to_document())
                            .transpose()?;
                        d.insert("fullDocument", cur.map(Bson::Document).unwrap_or(Bson::Null));
                    }
                    "whenAvailable" => {
                        d.insert(
                            "fullDocument",
                            if *images { Bson::Document(post.to_document()?) } else { Bson::Null },
                        );
                    }
                    "required" => match images {
                        true => {
                            d.insert("fullDocument", post.to_document()?);
                        }
                        false => {
                            return Err(Error::new(
                                280,
                                "Change stream was configured to require a post-image for all update events, but the post-image was not found",
                            ));
                        }
                    },
                    _ => {}
                }
                pre_field(&mut d, pre)?;
                out.push(self.finish(d, e));
            }
            Kind::Replace { id, doc, pre, .. } => {
                let mut d = self.base_event(e, "replace", 0);
                d.insert("fullDocument", doc.to_document()?);
                d.insert("ns", ns);
                d.insert("documentKey", doc! {"_id": id.clone()});
                pre_field(&mut d, pre)?;
                out.push(self.finish(d, e));
            }
            Kind::Delete { id, pre, .. } => {
                let mut d = self.base_event(e, "delete", 0);
                d.insert("ns", ns);
                d.insert("documentKey", doc! {"_id": id.clone()});
                pre_field(&mut d, pre)?;
                out.push(self.finish(d, e));
            }
            Kind::Noop { .. } => {}
            Kind::Create { desc } if self.show_expanded => {
                let mut d = self.base_event(e, "create", 0);
                d.insert("ns", ns);
                d.insert("operationDescription", desc.clone());
                out.push(self.finish(d, e));
            }
            Kind::CreateIndexes { indexes } if self.show_expanded => {
                let mut d = self.base_event(e, "createIndexes", 0);
                d.insert("ns", ns);
                d.insert("operationDescription", doc! {"indexes": indexes.clone()});
                out.push(self.finish(d, e));
            }
            Kind::DropIndexes { indexes } if self.show_expanded => {
                let mut d = self.base_event(e, "dropIndexes", 0);
                d.insert("ns", ns);
                d.insert("operationDescription", doc! {"indexes": indexes.clone()});
                out.push(self.finish(d, e));
            }
            Kind::Modify { desc, before } if self.show_expanded => {
                let mut d = self.base_event(e, "modify", 0);
                d.insert("ns", ns);
                d.insert("operationDescription", desc.clone());
                d.insert("stateBeforeChange", doc! {"collectionOptions": before.clone()});
                out.push(self.finish(d, e));
            }
            Kind::Create { .. } | Kind::CreateIndexes { .. } | Kind::DropIndexes { .. } | Kind::Modify { .. } => {}
            Kind::Rename { to_db, to_coll, drop_target } => {
                let mut d = self.base_event(e, "rename", 0);
                d.insert("ns", ns);
                let to = doc! {"db": to_db.clone(), "coll": to_coll.clone()};
                d.insert("to", to.clone());
                if self.show_expanded {
                    let mut od = doc! {"to": to};
                    if let Some(u) = drop_target {
                        od.insert("dropTarget", *u);
                    }
                    d.insert("operationDescription", od);
                }
                out.push(self.finish(d, e));
                if matches!(self.scope, Scope::Coll(..)) {
                    out.push(self.base_event(e, "invalidate", 1));
                }
            }
            Kind::Drop => {
                let mut d = self.base_event(e, "drop", 0);
                d.insert("ns", ns);
                out.push(self.finish(d, e));
                if matches!(self.scope, Scope::Coll(..)) {
                    out.push(self.base_event(e, "invalidate", 1));
                }
            }
            Kind::DropDatabase => {
                if !matches!(self.scope, Scope::Coll(..)) {
                    let mut d = self.base_event(e, "dropDatabase", 0);
                    d.insert("ns", doc! {"db": e.db.clone()});
                    out.push(self.finish(d, e));
                    if matches!(self.scope, Scope::Db(_)) {
                        out.push(self.base_event(e, "invalidate", 1));
                    }
                }
            }
        }
        Ok(out)
    }

    fn apply_pipeline(&self, ev: Document) -> Result<Option<Document>> {
        if self.pipeline.is_empty() {
            return Ok(Some(ev));
        }
        let id = ev.get("_id").cloned();
        let mut docs = vec![ev];
        for st in &self.pipeline {
            docs = aggregate::run_simple_stage(st, docs, &Vars::default())?;
            if docs.is_empty() {
                return Ok(None);
            }
        }
        let out = docs.pop();
        if let Some(d) = &out
            && d.get("_id") != id.as_ref()
        {
            return Err(Error::new(
                280,
                "Encountered an event whose _id field, which contains the resume token, was modified by the pipeline. Modifying the _id field of an event makes it impossible to resume the stream from that point. Only transformations that retain the unmodified _id field are allowed.",
            ));
        }
        Ok(out)
    }

    /// Splits an oversized event into `splitEvent` fragments (`$changeStreamSplitLargeEvent`).
    fn split(&self, ev: &Document) -> Result<Vec<(crate::storage::Doc, Document)>> {
        // fragments stay within 16 MB; a single field alone may use the internal BSON limit
        // (16 MB + 16 KB)
        const LIMIT: usize = 16 * 1024 * 1024;
        const INTERNAL_LIMIT: usize = 16 * 1024 * 1024 + 16 * 1024;
        let token = ev
            .get_document("_id")
            .ok()
            .and_then(|t| Token::parse(t).ok())
            .ok_or_else(|| Error::new(1, "event without a token"))?;
        let mut groups: Vec<Document> = vec![Document::new()];
        let mut size = 200usize;
        for (k, v) in ev {
            if k == "_id" {
                continue;
            }
            let one = crate::wire::doc_bytes(&doc! {k.clone(): v.clone()}).len();
            if one + 200 > INTERNAL_LIMIT {
                return Err(too_large(one));
            }
            if size > 200 && size + one > LIMIT {
                groups.push(Document::new());
                size = 200;
            }
            size += one;
            if let Some(g) = groups.last_mut() {
                g.insert(k.clone(), v.clone());
            }
        }
        let of = groups.len() as i32;
        let mut out = Vec::new();
        for (i, g) in groups.into_iter().enumerate() {
            let t = Token { kind: 0x80 | (i as u8 + 1), ..token }.to_doc();
            let mut d = doc! {"_id": t.clone(), "splitEvent": {"fragment": i as i32 + 1, "of": of}};
            d.extend(g);
            out.push((std::sync::Arc::new(bson::RawDocumentBuf::from_document(&d)?), t));
        }
        Ok(out)
    }

    /// Produces the next batch (at most `max` events) and advances the high-water mark.
    pub fn next_batch(&mut self, oplog: &Oplog, catalog: &Catalog, max: usize) -> Result<Vec<crate::storage::Doc>> {
        const MAX_BYTES: usize = 15 * 1024 * 1024;
        let mut out: Vec<crate::storage::Doc> = Vec::new();
        let mut bytes = 0usize;
        if self.invalidated {
            return Ok(out);
        }
        if self.next_seq < oplog.first_seq() && self.pending.is_empty() && self.ready.is_empty() {
            return Err(history_lost());
        }
        loop {
            // hand out ready (post-pipeline) events
            while out.len() < max {
                let Some((raw, _)) = self.ready.front() else { break };
                let len = raw.as_bytes().len();
                if !out.is_empty() && bytes + len > MAX_BYTES {
                    return Ok(out);
                }
                let Some((raw, token)) = self.ready.pop_front() else { break };
                bytes += len;
                out.push(raw);
                self.pbrt = token;
            }
            if out.len() >= max || bytes >= MAX_BYTES {
                return Ok(out);
            }
            // run the next pending event through the pipeline
            if let Some(ev) = self.pending.pop_front() {
                let token_doc = ev.get_document("_id").ok().cloned().unwrap_or_default();
                if ev.get_str("operationType") == Ok("invalidate") {
                    out.push(std::sync::Arc::new(bson::RawDocumentBuf::from_document(&ev)?));
                    self.pbrt = token_doc;
                    self.invalidated = true;
                    self.pending.clear();
                    self.ready.clear();
                    return Ok(out);
                }
                match self.apply_pipeline(ev)? {
                    None => self.pbrt = token_doc,
                    Some(ev) => {
                        let raw = bson::RawDocumentBuf::from_document(&ev)?;
                        if raw.as_bytes().len() <= 16 * 1024 * 1024 {
                            self.ready.push_back((std::sync::Arc::new(raw), token_doc));
                        } else if self.split_large {
                            let mut frags = self.split(&ev)?;
                            if let Some((seq, k)) = self.skip_fragments.take()
                                && Token::parse(&token_doc).is_ok_and(|t| t.seq == seq)
                            {
                                frags.retain(|(_, t)| Token::parse(t).is_ok_and(|t| t.kind > k));
                            }
                            self.ready.extend(frags);
                        } else {
                            return Err(too_large(raw.as_bytes().len()));
                        }
                    }
                }
                continue;
            }
            let entries = oplog.read_from(self.next_seq, 256);
            if entries.is_empty() {
                return Ok(out);
            }
            for e in entries {
                self.next_seq = e.seq + 1;
                let mut evs = self.events_for(&e, catalog)?;
                if let Some((seq, kind)) = self.skip_until {
                    if e.seq == seq {
                        let keep_event = kind & 0x80 != 0;
                        evs.retain(|ev| {
                            ev.get_document("_id")
                                .ok()
                                .and_then(|t| Token::parse(t).ok())
                                .is_some_and(|t| t.kind > kind || (keep_event && t.kind == 0))
                        });
                    }
                    if e.seq >= seq {
                        self.skip_until = None;
                    }
                }
                if evs.is_empty() {
                    self.pbrt = Token { ts: e.ts, txn_op_index: e.txn_op_index, seq: e.seq, kind: 0 }.to_doc();
                } else {
                    self.pending.extend(evs);
                    break;
                }
            }
        }
    }

    /// True when the stream has buffered events ready.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty() || !self.ready.is_empty()
    }
}

fn too_large(n: usize) -> Error {
    Error::new(10334, format!("BSONObj size: {n} (0x{n:X}) is invalid. Size must be between 0 and 16793600(16MB)"))
}

/// The ChangeStreamHistoryLost (286) error.
pub fn history_lost() -> Error {
    Error::new(
        286,
        "Executor error during getMore :: caused by :: Resume of change stream was not possible, as the resume point may no longer be in the oplog.",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trip_and_order() {
        let a = Token { ts: Timestamp { time: 10, increment: 2 }, txn_op_index: 0, seq: 5, kind: 0 };
        let b = Token { ts: Timestamp { time: 10, increment: 2 }, txn_op_index: 1, seq: 6, kind: 0 };
        let c = Token { ts: Timestamp { time: 11, increment: 1 }, txn_op_index: 0, seq: 7, kind: 1 };
        assert_eq!(Token::parse(&a.to_doc()).unwrap(), a);
        let s = |t: &Token| t.to_doc().get_str("_data").unwrap().to_string();
        assert!(s(&a) < s(&b) && s(&b) < s(&c));
    }
}
