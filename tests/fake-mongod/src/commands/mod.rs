//! Command dispatch: parses a message, applies fail points, routes transactions and
//! retryable writes, runs the handler by command name, and encodes the reply with
//! `$clusterTime` / `operationTime` and MongoDB's error labels.

pub mod admin;
pub mod crud;
pub mod cursor;
pub mod ddl;
#[cfg(test)]
mod id_scan_tests;
pub mod txn;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bson::{Bson, Document, RawDocumentBuf, doc};

use crate::error::{Error, Result};
use crate::oplog::{Kind, Pending};
use crate::server::{ConnInfo, Shared, State};
use crate::session::TxnState;
use crate::storage::{Catalog, Collection, Doc};
use crate::wire::{self, RawWriter, RequestKind};

/// What to send back on the connection.
pub enum Outcome {
    /// Reply bytes.
    Reply(Vec<u8>),
    /// Nothing (moreToCome requests).
    NoReply,
    /// Close the connection.
    Close,
}

/// A cursor batch reply.
#[derive(Debug, Default)]
pub struct CursorReply {
    /// Cursor id (0 when exhausted).
    pub id: i64,
    /// Namespace.
    pub ns: String,
    /// `firstBatch` (true) or `nextBatch`.
    pub first: bool,
    /// Documents (raw, shared with storage where possible).
    pub batch: Vec<Doc>,
    /// Extra fields inside `cursor` (e.g. `postBatchResumeToken`).
    pub cursor_extra: Document,
    /// Extra top-level fields.
    pub top_extra: Document,
}

/// A successful handler result.
pub enum Reply {
    /// A plain document (`ok: 1` is added).
    Doc(Document),
    /// A cursor reply.
    Cursor(CursorReply),
}

/// One command being executed.
pub struct Ctx<'a> {
    /// Shared server.
    pub shared: &'a Arc<Shared>,
    /// The connection.
    pub conn: &'a mut ConnInfo,
    /// `$db`.
    pub db: String,
    /// Command name (first key).
    pub name: String,
    /// The command body.
    pub cmd: Document,
    /// Kind-1 document sequences.
    pub seqs: HashMap<String, Vec<RawDocumentBuf>>,
    /// Session id.
    pub lsid: Option<Document>,
    /// Transaction number.
    pub txn_number: Option<i64>,
    /// True for statements of a multi-document transaction.
    pub in_txn: bool,
    /// OP_MSG flags.
    pub flags: u32,
}

impl Ctx<'_> {
    /// The command's main argument as a string (usually the collection name).
    pub fn target(&self) -> Result<String> {
        match self.cmd.get(&self.name) {
            Some(Bson::String(s)) => Ok(s.clone()),
            _ => Err(Error::new(
                73,
                format!(
                    "collection name has invalid type {}",
                    self.cmd.get(&self.name).map(crate::bson_order::type_alias).unwrap_or("missing")
                ),
            )),
        }
    }

    /// `db.coll`.
    pub fn ns(&self, coll: &str) -> String {
        format!("{}.{}", self.db, coll)
    }
}

/// Writable view over either the real catalog or a transaction's private copy.
pub struct Scope<'s> {
    /// The catalog written to.
    pub cat: &'s mut Catalog,
    /// Base catalog (transactions only: copied on first touch).
    pub base: Option<&'s Catalog>,
    /// Snapshots of touched namespaces (transactions only).
    pub snapshots: Option<&'s mut HashMap<(String, String), Option<Collection>>>,
    /// Pending oplog operations.
    pub ops: &'s mut Vec<Pending>,
}

impl Scope<'_> {
    /// Copies a namespace into the transaction overlay on first touch.
    pub fn touch(&mut self, db: &str, coll: &str) {
        let (Some(base), Some(snaps)) = (self.base, self.snapshots.as_deref_mut()) else { return };
        let key = (db.to_string(), coll.to_string());
        if snaps.contains_key(&key) {
            return;
        }
        let c = base.coll(db, coll).cloned();
        if let Some(c) = &c {
            self.cat.dbs.entry(db.to_string()).or_default().colls.insert(coll.to_string(), c.clone());
        }
        snaps.insert(key, c);
    }

    /// True inside a transaction.
    pub fn in_txn(&self) -> bool {
        self.base.is_some()
    }

    /// Reads a collection.
    pub fn coll(&mut self, db: &str, coll: &str) -> Option<&Collection> {
        self.touch(db, coll);
        self.cat.coll(db, coll)
    }

    /// Gets a collection for writing, creating it implicitly.
    pub fn coll_for_write(&mut self, db: &str, coll: &str) -> Result<&mut Collection> {
        self.touch(db, coll);
        if self.cat.coll(db, coll).is_none() {
            check_ns(db, coll)?;
            let c = Collection::new(Document::new());
            let uuid = c.uuid;
            self.cat.dbs.entry(db.to_string()).or_default().colls.insert(coll.to_string(), c);
            self.ops.push(Pending {
                db: db.into(),
                coll: coll.into(),
                uuid: Some(uuid),
                kind: Kind::Create { desc: doc! {"idIndex": {"v": 2, "key": {"_id": 1}, "name": "_id_"}} },
            });
        }
        let c = self.cat.coll_mut(db, coll).ok_or_else(|| Error::new(26, "ns not found"))?;
        if c.view.is_some() {
            return Err(Error::new(166, format!("Namespace {db}.{coll} is a view, not a collection")));
        }
        Ok(c)
    }
}

/// Validates a namespace for creation.
pub fn check_ns(db: &str, coll: &str) -> Result<()> {
    if db.is_empty() || db.contains(['/', '\\', '.', ' ', '"', '$', '\0']) {
        return Err(Error::new(73, format!("Invalid database name: '{db}'")));
    }
    if coll.is_empty() || coll.contains('$') || coll.contains('\0') {
        return Err(Error::new(73, format!("Invalid collection name: {coll}")));
    }
    Ok(())
}

/// Runs `f` against the right catalog: the transaction's overlay or the real one, then
/// records the pending oplog operations (in the transaction or in the oplog).
pub fn with_scope<T>(ctx: &Ctx, st: &mut State, f: impl FnOnce(&mut Scope) -> Result<T>) -> Result<T> {
    if ctx.in_txn {
        let State { catalog, sessions, .. } = st;
        let lsid = ctx.lsid.as_ref().ok_or_else(|| Error::new(50768, "transaction without a session"))?;
        let sess = sessions.get(lsid);
        let txn = sess.txn.as_mut().ok_or_else(|| Error::new(251, "transaction is not in progress"))?;
        let crate::session::Txn { overlay, snapshots, ops, .. } = txn;
        let before = ops.len();
        let mut sc = Scope { cat: overlay, base: Some(catalog), snapshots: Some(snapshots), ops };
        let r = f(&mut sc)?;
        let keys: Vec<(String, String, Bson)> = sc.ops[before..].iter().filter_map(crate::session::op_key).collect();
        if !keys.is_empty() && sessions.others_wrote(lsid, &keys) {
            return Err(Error::new(112, "Write conflict during plan execution and yielding is disabled. :: Please retry your operation or multi-document transaction.")
                .with_label("TransientTransactionError"));
        }
        Ok(r)
    } else {
        let mut ops = Vec::new();
        let r = {
            let mut sc = Scope { cat: &mut st.catalog, base: None, snapshots: None, ops: &mut ops };
            f(&mut sc)
        };
        if !ops.is_empty() {
            st.oplog.append_each(ops);
            st.last_write = std::time::Instant::now();
        }
        r
    }
}

const RETRYABLE_CODES: [i32; 13] = [6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436, 134];

fn is_write_cmd(name: &str) -> bool {
    matches!(name, "insert" | "update" | "delete" | "findAndModify" | "findandmodify")
}

fn is_retryable_write(ctx: &Ctx) -> bool {
    (is_write_cmd(&ctx.name) && ctx.txn_number.is_some() && !ctx.in_txn)
        || matches!(ctx.name.as_str(), "commitTransaction" | "abortTransaction")
}

/// Adds the labels mongod would add to an error.
fn add_labels(ctx: &Ctx, mut e: Error) -> Error {
    let code = e.code();
    let txn_end = matches!(ctx.name.as_str(), "commitTransaction" | "abortTransaction");
    if ctx.in_txn && !txn_end {
        if matches!(code, 112 | 24 | 251) || RETRYABLE_CODES.contains(&code) {
            e = e.with_label("TransientTransactionError");
        }
    } else if txn_end && code == 251 {
        e = e.with_label("TransientTransactionError");
    }
    if is_retryable_write(ctx) && RETRYABLE_CODES.contains(&code) {
        e = e.with_label("RetryableWriteError");
    }
    if txn_end && ctx.name == "commitTransaction" && matches!(code, 50) {
        e = e.with_label("UnknownTransactionCommitResult");
    }
    e
}

fn is_handshake(name: &str) -> bool {
    matches!(
        name.to_ascii_lowercase().as_str(),
        "hello"
            | "ismaster"
            | "saslstart"
            | "saslcontinue"
            | "getnonce"
            | "authenticate"
            | "createuser"
            | "updateuser"
            | "copydbsaslstart"
            | "copydbgetnonce"
            | "copydb"
    )
}

fn encode_reply(st_ts: bson::Timestamp, r: std::result::Result<Reply, Document>) -> Vec<u8> {
    let tail = doc! {
        "$clusterTime": {"clusterTime": st_ts, "signature": {"hash": bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![0u8; 20] }, "keyId": 0i64}},
        "operationTime": st_ts,
    };
    match r {
        Ok(Reply::Doc(mut d)) => {
            if !d.contains_key("ok") {
                d.insert("ok", 1.0);
            }
            let mut w = RawWriter::new();
            w.fields(&d);
            w.fields(&tail);
            w.finish()
        }
        Ok(Reply::Cursor(c)) => {
            let cap = c.batch.iter().map(|d| d.as_bytes().len() + 8).sum::<usize>() + 512;
            let mut w = RawWriter::with_capacity(cap);
            w.begin_doc("cursor");
            w.begin_array(if c.first { "firstBatch" } else { "nextBatch" });
            let mut key = String::new();
            for (i, d) in c.batch.iter().enumerate() {
                key.clear();
                use std::fmt::Write;
                let _ = write!(key, "{i}");
                w.raw_doc(&key, d.as_bytes());
            }
            w.end();
            w.fields(&c.cursor_extra);
            w.fields(&doc! {"id": c.id, "ns": c.ns});
            w.end();
            w.fields(&c.top_extra);
            w.fields(&doc! {"ok": 1.0});
            w.fields(&tail);
            w.finish()
        }
        Err(mut d) => {
            d.extend(tail);
            wire::doc_bytes(&d)
        }
    }
}

/// Handles one framed message from a client.
pub async fn handle_message(shared: &Arc<Shared>, conn: &mut ConnInfo, msg: &[u8]) -> Outcome {
    let req = match wire::parse_message(msg) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, conn = conn.id, "bad message");
            return Outcome::Close;
        }
    };
    let flags = match req.kind {
        RequestKind::Msg(f) => f,
        RequestKind::Query => 0,
    };
    let more_to_come = flags & wire::FLAG_MORE_TO_COME != 0;
    let name = req.body.keys().next().cloned().unwrap_or_default();
    let db = match (&req.kind, req.body.get_str("$db")) {
        (_, Ok(d)) => d.to_string(),
        (RequestKind::Query, _) => {
            req.query_ns.as_deref().and_then(|n| n.split('.').next()).unwrap_or("admin").to_string()
        }
        _ => "admin".to_string(),
    };
    let compressor = if is_handshake(&name) { None } else { req.compressor };
    let lsid = req.body.get_document("lsid").ok().cloned();
    let txn_number = req.body.get("txnNumber").and_then(crate::bson_order::as_i64);
    let in_txn = req.body.get_bool("autocommit") == Ok(false);
    let mut ctx = Ctx { shared, conn, db, name, cmd: req.body, seqs: req.sequences, lsid, txn_number, in_txn, flags };
    let result = execute(&mut ctx).await;
    let result = match result {
        Err(Error::CloseConnection) => return Outcome::Close,
        Err(mut e) => {
            let fixed = NoMoreLabels::take(&mut e);
            let mut e = if fixed { e } else { add_labels(&ctx, e) };
            if e.code() == 280 {
                e = e.with_label("NonResumableChangeStreamError");
            }
            if STATE_CHANGE_CODES.contains(&e.code()) {
                e = e.with_extra(state_change(shared));
            }
            tracing::debug!(cmd = %ctx.name, code = e.code(), error = %e.message(), "command failed");
            Err(e.to_reply())
        }
        Ok((r, wce)) => match wce.or_else(|| write_concern_error(&ctx)) {
            None => Ok(r),
            Some((wce, labels)) => match r {
                Reply::Doc(mut d) => {
                    let code = wce.get("code").and_then(crate::bson_order::as_i64).unwrap_or(0) as i32;
                    if STATE_CHANGE_CODES.contains(&code) {
                        state_change(shared);
                    }
                    d.insert("writeConcernError", wce);
                    if !labels.is_empty() {
                        d.insert("errorLabels", labels);
                    }
                    Ok(Reply::Doc(d))
                }
                other => Ok(other),
            },
        },
    };
    let ts = shared.view().last_ts;
    if more_to_come {
        return Outcome::NoReply;
    }
    let body = encode_reply(ts, result);
    Outcome::Reply(wire::encode_reply(req.kind, next_request_id(), req.request_id, &body, compressor, false))
}

/// Error codes of the NotPrimary and shutdown categories: drivers mark the server Unknown.
const STATE_CHANGE_CODES: [i32; 7] = [10107, 13435, 13436, 11602, 189, 91, 11600];

/// Bumps the topology version (waking awaitable hellos so drivers rediscover the primary at once)
/// and returns the `topologyVersion` field to attach to the error.
fn state_change(shared: &Arc<Shared>) -> Document {
    let mut st = shared.lock_state();
    shared.bump_topology(&mut st);
    st.fast_hello_until = Some(std::time::Instant::now() + Duration::from_millis(500));
    doc! {"topologyVersion": {"processId": shared.process_id, "counter": st.topology_counter}}
}

/// A write concern error for write concerns a one-member set cannot satisfy.
fn write_concern_error(ctx: &Ctx) -> Option<(Document, Vec<String>)> {
    if !(is_write_cmd(&ctx.name)
        || is_ddl(&ctx.name)
        || ctx.name == "commitTransaction"
        || ctx.name == "abortTransaction")
    {
        return None;
    }
    let wc = ctx.cmd.get_document("writeConcern").ok()?;
    match wc.get("w") {
        Some(Bson::String(m)) if m != "majority" => Some((
            doc! {"code": 79, "codeName": "UnknownReplWriteConcern", "errmsg": format!("No write concern mode named '{m}' found in replica set configuration")},
            Vec::new(),
        )),
        Some(n) if crate::bson_order::as_i64(n).is_some_and(|n| n > 1) => Some((
            doc! {"code": 100, "codeName": "UnsatisfiableWriteConcern", "errmsg": "Not enough data-bearing nodes"},
            Vec::new(),
        )),
        _ => None,
    }
}

fn next_request_id() -> i32 {
    use std::sync::atomic::{AtomicI32, Ordering};
    static NEXT: AtomicI32 = AtomicI32::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

type WceInfo = Option<(Document, Vec<String>)>;

async fn execute(ctx: &mut Ctx<'_>) -> Result<(Reply, WceInfo)> {
    let shared = Arc::clone(ctx.shared);
    // fail points
    let lname = ctx.name.to_ascii_lowercase();
    let mut wce: WceInfo = None;
    if lname != "configurefailpoint" {
        let action = shared.failpoints.lock().check_command(&ctx.name, ctx.conn.app_name.as_deref());
        if let Some(a) = action {
            if let Some(ms) = a.block_ms {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            if a.close_connection {
                return Err(Error::CloseConnection);
            }
            if let Some(code) = a.error_code {
                let mut e = Error::new(code, "Failing command via 'failCommand' failpoint");
                if let Some(labels) = &a.error_labels {
                    for l in labels {
                        e = e.with_label(l);
                    }
                    // explicit labels: do not let the server add more
                    return Err(NoMoreLabels::wrap(e, labels.is_empty()));
                }
                return Err(e);
            }
            if let Some(w) = a.write_concern_error {
                let mut labels = a.error_labels.clone().unwrap_or_default();
                if a.error_labels.is_none() {
                    let code = w.get("code").and_then(crate::bson_order::as_i64).unwrap_or(0) as i32;
                    if is_retryable_write(ctx) && RETRYABLE_CODES.contains(&code) {
                        labels.push("RetryableWriteError".into());
                    }
                }
                wce = Some((w, labels));
            }
        }
    }
    let r = dispatch(ctx).await?;
    if let Some((w, _)) = &wce {
        let code = w.get("code").and_then(crate::bson_order::as_i64).unwrap_or(0) as i32;
        if STATE_CHANGE_CODES.contains(&code) {
            state_change(ctx.shared);
        }
    }
    Ok((r, wce))
}

/// Marks errors whose labels were given explicitly by a fail point.
struct NoMoreLabels;

const FIXED_LABELS: &str = "$fixedLabels";

impl NoMoreLabels {
    fn wrap(e: Error, _empty: bool) -> Error {
        e.with_extra(doc! {FIXED_LABELS: true})
    }

    fn take(e: &mut Error) -> bool {
        match e {
            Error::Command(c) => c.extra.remove(FIXED_LABELS).is_some(),
            Error::CloseConnection => false,
        }
    }
}

async fn dispatch(ctx: &mut Ctx<'_>) -> Result<Reply> {
    let name = ctx.name.clone();
    match name.as_str() {
        "hello" | "isMaster" | "ismaster" => return admin::hello(ctx).await,
        "getMore" => return cursor::get_more(ctx).await,
        "fakeMongodStepDown" | "replSetStepDown" => return admin::step_down(ctx),
        "fakeMongodDropConnections" => {
            ctx.shared.drop_all_connections();
            return Ok(Reply::Doc(doc! {}));
        }
        _ => {}
    }
    let shared = Arc::clone(ctx.shared);
    // long commands run on a thread that may block (the runtime keeps serving `hello`)
    let r = shared.with_state(|st| dispatch_locked(ctx, st, &name));
    if is_write_cmd(&name)
        || is_ddl(&name)
        || matches!(name.as_str(), "commitTransaction" | "appendOplogNote" | "aggregate")
    {
        shared.notify_oplog();
    }
    r
}

/// The part of [`dispatch`] that runs under the state lock.
fn dispatch_locked(ctx: &mut Ctx<'_>, st: &mut State, name: &str) -> Result<Reply> {
    let name = name.to_string();
    // replica state checks
    if st.is_secondary() && !is_admin_like(&name) {
        // reads with a non-primary read preference (secondaryOk) are served, like a secondary
        let secondary_ok = ctx
            .cmd
            .get_document("$readPreference")
            .ok()
            .and_then(|r| r.get_str("mode").ok())
            .is_some_and(|m| m != "primary");
        let writes = is_write_cmd(&name)
            || is_ddl(&name)
            || matches!(name.as_str(), "commitTransaction" | "abortTransaction" | "appendOplogNote");
        let out_stage = name == "aggregate"
            && ctx.cmd.get_array("pipeline").is_ok_and(|p| {
                p.iter().any(|s| s.as_document().is_some_and(|d| d.contains_key("$out") || d.contains_key("$merge")))
            });
        if writes || out_stage {
            return Err(Error::new(10107, "not primary"));
        }
        if !secondary_ok {
            return Err(Error::new(13435, "not primary and secondaryOk=false"));
        }
    }
    if (is_write_cmd(&name) || is_ddl(&name))
        && st.write_blocked
        && !ctx.conn.bypass_write_block
        && !matches!(ctx.db.as_str(), "admin" | "config" | "local")
    {
        return Err(Error::new(96, "User writes blocked"));
    }
    // transactions
    if ctx.in_txn && !matches!(name.as_str(), "commitTransaction" | "abortTransaction") {
        txn::begin_statement(ctx, st)?;
    }
    // retryable writes
    let retry_key = if is_write_cmd(&name) && !ctx.in_txn {
        match (&ctx.lsid, ctx.txn_number) {
            (Some(l), Some(n)) => {
                let sess = st.sessions.get(l);
                if n < sess.txn_number {
                    return Err(Error::new(
                        225,
                        format!(
                            "Retryable write with txnNumber {n} is prohibited on session because a newer retryable write with txnNumber {} has already started on this session.",
                            sess.txn_number
                        ),
                    ));
                }
                if let Some(prev) = sess.retry_results.get(&n) {
                    return Ok(Reply::Doc(prev.clone()));
                }
                sess.txn_number = n;
                sess.state = TxnState::None;
                Some((l.clone(), n))
            }
            _ => None,
        }
    } else {
        None
    };
    if !ctx.in_txn
        && ctx.cmd.get_document("readConcern").ok().and_then(|r| r.get_str("level").ok()) == Some("snapshot")
        && !matches!(name.as_str(), "find" | "aggregate" | "distinct" | "getMore" | "explain")
    {
        return Err(Error::new(
            72,
            format!("Command {name} does not support {{ readConcern: {{ level: \"snapshot\" }} }}"),
        ));
    }
    let collation = command_collation(&ctx.cmd, &ctx.seqs, st, &ctx.db);
    let snapshot_read = !ctx.in_txn
        && matches!(name.as_str(), "find" | "aggregate" | "distinct")
        && ctx.cmd.get_document("readConcern").ok().and_then(|r| r.get_str("level").ok()) == Some("snapshot");
    // a bug in a handler must not take the connection down: report it as InternalError
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        if snapshot_read {
            snapshot_read_cmd(ctx, st, &name, collation.as_ref())
        } else {
            crate::bson_order::with_collation(collation.as_ref(), || run_sync(ctx, st, &name))
        }
    }))
    .unwrap_or_else(|p| {
        let what = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!(cmd = %name, panic = %what, "command handler panicked");
        Err(Error::new(1, format!("internal error in fake-mongod while running {name}: {what}")))
    });
    if ctx.in_txn && !matches!(name.as_str(), "commitTransaction" | "abortTransaction") {
        let failed = match &r {
            Err(_) => true,
            Ok(Reply::Doc(d)) => d.contains_key("writeErrors"),
            _ => false,
        };
        if failed && let Some(l) = &ctx.lsid {
            let sess = st.sessions.get(l);
            if sess.txn_number == ctx.txn_number.unwrap_or(-1) && sess.state == TxnState::InProgress {
                sess.state = TxnState::Aborted;
                sess.txn = None;
            }
        }
    }
    if let (Some((l, n)), Ok(Reply::Doc(d))) = (&retry_key, &r) {
        st.sessions.get(l).retry_results.insert(*n, d.clone());
    }
    r
}

/// Runs a read at a snapshot: the target collection is swapped for its past version while
/// the command runs (the state lock is held throughout), and `atClusterTime` is reported.
fn snapshot_read_cmd(ctx: &mut Ctx, st: &mut State, name: &str, collation: Option<&Document>) -> Result<Reply> {
    let t = ctx
        .cmd
        .get_document("readConcern")
        .ok()
        .and_then(|r| r.get_timestamp("atClusterTime").ok())
        .unwrap_or_else(|| st.oplog.last_ts());
    let coll = ctx.cmd.get_str(name).ok().map(str::to_string);
    let mut swapped = None;
    if let Some(coll) = &coll {
        let past = crate::snapshot::collection_at(&st.catalog, &st.oplog, &ctx.db, coll, t)?;
        let db = st.catalog.dbs.entry(ctx.db.clone()).or_default();
        let current = match past {
            Some(p) => db.colls.insert(coll.clone(), p),
            None => db.colls.remove(coll),
        };
        swapped = Some((coll.clone(), current));
    }
    let r = crate::bson_order::with_collation(collation, || run_sync(ctx, st, name));
    if let Some((coll, current)) = swapped {
        let db = st.catalog.dbs.entry(ctx.db.clone()).or_default();
        match current {
            Some(c) => {
                db.colls.insert(coll, c);
            }
            None => {
                db.colls.remove(&coll);
            }
        }
    }
    Ok(match r? {
        Reply::Cursor(mut c) => {
            c.cursor_extra.insert("atClusterTime", t);
            Reply::Cursor(c)
        }
        Reply::Doc(mut d) => {
            d.insert("atClusterTime", t);
            Reply::Doc(d)
        }
    })
}

/// The collation a command asks for (command-level, first statement, or the collection default).
fn command_collation(
    cmd: &Document,
    seqs: &HashMap<String, Vec<RawDocumentBuf>>,
    st: &State,
    db: &str,
) -> Option<Document> {
    if let Ok(c) = cmd.get_document("collation") {
        return Some(c.clone());
    }
    for field in ["updates", "deletes"] {
        if let Some(first) = seqs.get(field).and_then(|v| v.first())
            && let Ok(Some(bson::RawBsonRef::Document(c))) = first.get("collation")
        {
            return Document::try_from(c).ok();
        }
        if let Ok(a) = cmd.get_array(field)
            && let Some(Bson::Document(first)) = a.first()
            && let Ok(c) = first.get_document("collation")
        {
            return Some(c.clone());
        }
    }
    let coll = cmd.iter().next().and_then(|(_, v)| v.as_str())?;
    st.catalog.coll(db, coll).and_then(|c| c.options.get_document("collation").ok().cloned())
}

fn is_admin_like(name: &str) -> bool {
    matches!(
        name,
        "ping"
            | "buildInfo"
            | "buildinfo"
            | "getParameter"
            | "serverStatus"
            | "hostInfo"
            | "replSetGetStatus"
            | "replSetGetConfig"
            | "endSessions"
            | "killAllSessions"
            | "connectionStatus"
            | "whatsmyuri"
            | "getCmdLineOpts"
            | "configureFailPoint"
            | "fakeMongodTruncateOplog"
            | "killCursors"
            | "listCommands"
            | "getLog"
            | "setUserWriteBlockMode"
    )
}

fn is_ddl(name: &str) -> bool {
    matches!(
        name,
        "create"
            | "drop"
            | "dropDatabase"
            | "renameCollection"
            | "collMod"
            | "createIndexes"
            | "dropIndexes"
            | "deleteIndexes"
            | "convertToCapped"
    )
}

fn run_sync(ctx: &mut Ctx, st: &mut State, name: &str) -> Result<Reply> {
    match name {
        "ping" => Ok(Reply::Doc(doc! {})),
        "buildInfo" | "buildinfo" => Ok(Reply::Doc(admin::build_info())),
        "getParameter" => admin::get_parameter(ctx),
        "setParameter" => {
            if let Some(secs) = ctx.cmd.get("ttlMonitorSleepSecs").and_then(crate::bson_order::as_f64) {
                let was = st.ttl_interval.as_secs_f64();
                st.ttl_interval = Duration::from_secs_f64(secs.max(0.1));
                return Ok(Reply::Doc(doc! {"was": was}));
            }
            Ok(Reply::Doc(doc! {"was": Bson::Null}))
        }
        "serverStatus" => admin::server_status(ctx, st),
        "hostInfo" => Ok(Reply::Doc(admin::host_info())),
        "replSetGetStatus" => admin::repl_set_get_status(ctx, st),
        "replSetGetConfig" => admin::repl_set_get_config(ctx, st),
        "listDatabases" => admin::list_databases(ctx, st),
        "killAllSessions" | "killAllSessionsByPattern" => {
            st.sessions.kill_all();
            Ok(Reply::Doc(doc! {}))
        }
        "endSessions" => {
            if let Ok(a) = ctx.cmd.get_array("endSessions") {
                for l in a {
                    if let Bson::Document(d) = l {
                        st.sessions.end(d);
                    }
                }
            }
            Ok(Reply::Doc(doc! {}))
        }
        "refreshSessions" | "startSession" => Ok(Reply::Doc(
            doc! {"id": {"id": bson::Binary { subtype: bson::spec::BinarySubtype::Uuid, bytes: uuid::Uuid::new_v4().as_bytes().to_vec() }}, "timeoutMinutes": 30},
        )),
        "connectionStatus" => {
            Ok(Reply::Doc(doc! {"authInfo": {"authenticatedUsers": [], "authenticatedUserRoles": []}}))
        }
        "whatsmyuri" => Ok(Reply::Doc(doc! {"you": ctx.conn.peer.clone()})),
        "getCmdLineOpts" => Ok(Reply::Doc(admin::cmd_line_opts(ctx))),
        "appendOplogNote" => admin::append_oplog_note(ctx, st),
        "setUserWriteBlockMode" => {
            st.write_blocked =
                ctx.cmd.get_bool("global").map_err(|_| Error::bad_value("setUserWriteBlockMode needs 'global'"))?;
            tracing::info!(blocked = st.write_blocked, "user write block mode changed");
            Ok(Reply::Doc(doc! {}))
        }
        "configureFailPoint" => {
            if ctx.db != "admin" {
                return Err(Error::new(13, "configureFailPoint may only be run against the admin database."));
            }
            ctx.shared.failpoints.lock().configure(&ctx.cmd)?;
            Ok(Reply::Doc(doc! {"count": 0}))
        }
        "fakeMongodTruncateOplog" => {
            st.oplog.truncate();
            Ok(Reply::Doc(doc! {}))
        }
        "getLog" => Ok(Reply::Doc(doc! {"totalLinesWritten": 0, "log": []})),
        "getDefaultRWConcern" => Ok(Reply::Doc(
            doc! {"defaultReadConcern": {"level": "local"}, "defaultWriteConcern": {"w": "majority", "wtimeout": 0}, "defaultReadConcernSource": "implicit", "defaultWriteConcernSource": "implicit"},
        )),
        "setDefaultRWConcern"
        | "setFeatureCompatibilityVersion"
        | "logRotate"
        | "fsync"
        | "compact"
        | "setProfilingLevel"
        | "profile"
        | "dropConnections"
        | "reIndex"
        | "cleanupOrphaned"
        | "logout" => Ok(Reply::Doc(doc! {})),
        "features" => Ok(Reply::Doc(doc! {"oidMachine": 0})),
        "listCommands" => Ok(Reply::Doc(doc! {"commands": {}})),
        "currentOp" => Ok(Reply::Doc(doc! {"inprog": []})),
        "lockInfo" => Ok(Reply::Doc(doc! {"lockInfo": []})),
        "top" => Ok(Reply::Doc(doc! {"totals": {}})),
        "getShardMap" => Err(Error::new(59, "no such command: 'getShardMap'")),
        "saslStart" | "saslContinue" | "authenticate" => {
            Err(Error::new(18, "Authentication failed: this server has no users"))
        }
        "dbStats" => admin::db_stats(ctx, st),
        "dbHash" | "dbhash" => admin::db_hash(ctx, st),
        "collStats" => admin::coll_stats_cmd(ctx, st),
        "validate" => Ok(Reply::Doc(doc! {"valid": true, "ns": ctx.ns(&ctx.target()?), "errors": [], "warnings": []})),
        "explain" => cursor::explain(ctx, st),
        // DDL
        "create" => ddl::create(ctx, st),
        "drop" => ddl::drop(ctx, st),
        "dropDatabase" => ddl::drop_database(ctx, st),
        "renameCollection" => ddl::rename(ctx, st),
        "collMod" => ddl::coll_mod(ctx, st),
        "createIndexes" => ddl::create_indexes(ctx, st),
        "dropIndexes" | "deleteIndexes" => ddl::drop_indexes(ctx, st),
        "listCollections" => ddl::list_collections(ctx, st),
        "listIndexes" => ddl::list_indexes(ctx, st),
        "convertToCapped" => ddl::convert_to_capped(ctx, st),
        // CRUD
        "insert" => crud::insert(ctx, st),
        "update" => crud::update(ctx, st),
        "delete" => crud::delete(ctx, st),
        "findAndModify" | "findandmodify" => crud::find_and_modify(ctx, st),
        "count" => crud::count(ctx, st),
        "distinct" => crud::distinct(ctx, st),
        "find" => cursor::find(ctx, st),
        "aggregate" => cursor::aggregate(ctx, st),
        "killCursors" => cursor::kill_cursors(ctx, st),
        // transactions
        "commitTransaction" => txn::commit(ctx, st),
        "abortTransaction" => txn::abort(ctx, st),
        "createSearchIndexes" | "updateSearchIndex" | "dropSearchIndex" | "listSearchIndexes" => {
            Err(Error::new(115, "Search index commands are only supported with Atlas"))
        }
        "bulkWrite" => Err(Error::new(59, "no such command: 'bulkWrite'")),
        other => Err(Error::new(59, format!("no such command: '{other}'"))),
    }
}
