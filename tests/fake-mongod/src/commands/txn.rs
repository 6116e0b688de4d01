//! Transactions: statement admission (`startTransaction`, `autocommit: false`),
//! `commitTransaction` (atomic apply of the private write set with write-conflict checks,
//! one optime for every operation) and `abortTransaction`.

use std::collections::HashMap;
use std::sync::Arc;

use bson::doc;

use super::{Ctx, Reply};
use crate::bson_order::Key;
use crate::error::{Error, Result};
use crate::oplog::{Kind, Pending};
use crate::server::State;
use crate::session::{Txn, TxnState};
use crate::storage::Collection;

fn no_such(n: i64) -> Error {
    Error::new(251, format!("Given transaction number {n} does not match any in-progress transactions. The active transaction number is -1"))
        .with_label("TransientTransactionError")
}

/// Admits a statement of a transaction (starting it when asked).
pub fn begin_statement(ctx: &Ctx, st: &mut State) -> Result<()> {
    let lsid = ctx.lsid.as_ref().ok_or_else(|| Error::new(50768, "Transaction requires a session ID"))?;
    let n = ctx
        .txn_number
        .ok_or_else(|| Error::bad_value("'autocommit' field requires a transaction number to also be specified"))?;
    let start = ctx.cmd.get_bool("startTransaction").unwrap_or(false);
    let sess = st.sessions.get(lsid);
    if n < sess.txn_number {
        return Err(Error::new(
            225,
            format!(
                "Cannot start transaction {n} on session because a newer transaction {} has already started",
                sess.txn_number
            ),
        ));
    }
    if start {
        if n == sess.txn_number && sess.state != TxnState::None {
            return Err(Error::new(
                256.min(if sess.state == TxnState::Committed { 256 } else { 251 }),
                format!("Transaction with txnNumber {n} has already been started"),
            ));
        }
        if allowed_in_transaction(&ctx.name) {
            sess.txn_number = n;
            sess.state = TxnState::InProgress;
            sess.commit_result = None;
            sess.txn =
                Some(Txn { read_concern: ctx.cmd.get_document("readConcern").ok().cloned(), ..Default::default() });
            return Ok(());
        }
        return Err(Error::new(263, format!("Cannot run '{}' in a multi-document transaction.", ctx.name)));
    }
    if n != sess.txn_number {
        return Err(no_such(n));
    }
    match sess.state {
        TxnState::InProgress => {
            if !allowed_in_transaction(&ctx.name) {
                return Err(Error::new(263, format!("Cannot run '{}' in a multi-document transaction.", ctx.name)));
            }
            Ok(())
        }
        TxnState::Committed => Err(Error::new(256, format!("Transaction {n} has been committed."))),
        TxnState::Aborted => Err(Error::new(251, format!("Transaction with txnNumber {n} has been aborted."))
            .with_label("TransientTransactionError")),
        TxnState::None => Err(no_such(n)),
    }
}

/// The commands a transaction may run, as in MongoDB 7.0; anything else
/// (`count`, `listCollections`, DDL other than `create`/`createIndexes`)
/// fails with 263 OperationNotSupportedInTransaction.
fn allowed_in_transaction(name: &str) -> bool {
    matches!(
        name,
        "find"
            | "getMore"
            | "killCursors"
            | "insert"
            | "update"
            | "delete"
            | "findAndModify"
            | "findandmodify"
            | "aggregate"
            | "distinct"
            | "create"
            | "createIndexes"
            | "commitTransaction"
            | "abortTransaction"
            | "prepareTransaction"
            | "coordinateCommitTransaction"
            | "dbHash"
    )
}

fn ptr_eq(a: Option<&crate::storage::Doc>, b: Option<&crate::storage::Doc>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(x), Some(y)) => Arc::ptr_eq(x, y),
        _ => false,
    }
}

fn apply_txn(st: &mut State, txn: Txn, lsid: &bson::Document, n: i64) -> Result<()> {
    // working copies of every touched collection in the base catalog
    let mut work: HashMap<(String, String), Option<Collection>> = HashMap::new();
    for key in txn.snapshots.keys() {
        work.insert(key.clone(), st.catalog.coll(&key.0, &key.1).cloned());
    }
    let conflict = || {
        Error::new(112, "Write conflict during plan execution and yielding is disabled. :: Please retry your operation or multi-document transaction.").with_label("TransientTransactionError")
    };
    for op in &txn.ops {
        let key = (op.db.clone(), op.coll.clone());
        let snap = txn.snapshots.get(&key).cloned().flatten();
        let slot = work.entry(key.clone()).or_insert_with(|| st.catalog.coll(&op.db, &op.coll).cloned());
        let ns = format!("{}.{}", op.db, op.coll);
        match &op.kind {
            Kind::Create { .. } => {
                if slot.is_some() && snap.is_none() {
                    return Err(conflict());
                }
                if slot.is_none() {
                    let mut c = txn
                        .overlay
                        .coll(&op.db, &op.coll)
                        .cloned()
                        .unwrap_or_else(|| Collection::new(Default::default()));
                    c.records.clear();
                    c.ids.clear();
                    c.data_size = 0;
                    for ix in &mut c.indexes {
                        if let Some(e) = ix.entries.as_mut() {
                            e.clear();
                        }
                    }
                    *slot = Some(c);
                }
            }
            Kind::Insert { doc } => {
                let c = slot.as_mut().ok_or_else(conflict)?;
                c.insert(&ns, doc.clone()).map_err(|e| if e.code() == 11000 { conflict() } else { e })?;
            }
            Kind::Update { id, post, .. } | Kind::Replace { id, doc: post, .. } => {
                let c = slot.as_mut().ok_or_else(conflict)?;
                let base = c.get_by_id(id).map(|(r, d)| (r, d.clone()));
                let snap_doc = snap.as_ref().and_then(|s| s.get_by_id(id).map(|(_, d)| d.clone()));
                let Some((rid, cur)) = base else { return Err(conflict()) };
                if !ptr_eq(Some(&cur), snap_doc.as_ref()) && !txn_touched_before(&txn, op, id) {
                    return Err(conflict());
                }
                c.replace(&ns, rid, post.clone())?;
            }
            Kind::Delete { id, .. } => {
                let c = slot.as_mut().ok_or_else(conflict)?;
                let base = c.get_by_id(id).map(|(r, d)| (r, d.clone()));
                let snap_doc = snap.as_ref().and_then(|s| s.get_by_id(id).map(|(_, d)| d.clone()));
                let Some((rid, cur)) = base else { return Err(conflict()) };
                if !ptr_eq(Some(&cur), snap_doc.as_ref()) && !txn_touched_before(&txn, op, id) {
                    return Err(conflict());
                }
                c.remove_rid(rid)?;
            }
            Kind::CreateIndexes { .. } => {
                if let (Some(c), Some(o)) = (slot.as_mut(), txn.overlay.coll(&op.db, &op.coll)) {
                    c.indexes = o.indexes.clone();
                    for i in 0..c.indexes.len() {
                        c.rebuild_index(i)?;
                    }
                }
            }
            _ => {}
        }
    }
    for ((db, coll), c) in work {
        if let Some(c) = c {
            st.catalog.dbs.entry(db).or_default().colls.insert(coll, c);
        }
    }
    if !txn.ops.is_empty() {
        st.oplog.append(txn.ops, Some((lsid.clone(), n)));
        st.last_write = std::time::Instant::now();
    }
    Ok(())
}

fn txn_touched_before(txn: &Txn, op: &Pending, id: &bson::Bson) -> bool {
    let key = Key(id.clone());
    for o in &txn.ops {
        if std::ptr::eq(o, op) {
            return false;
        }
        if o.db == op.db && o.coll == op.coll {
            let oid = match &o.kind {
                Kind::Insert { doc } => {
                    doc.get("_id").ok().flatten().and_then(|v| bson::Bson::try_from(v.to_raw_bson()).ok())
                }
                Kind::Update { id, .. } | Kind::Replace { id, .. } | Kind::Delete { id, .. } => Some(id.clone()),
                _ => None,
            };
            if oid.is_some_and(|x| Key(x) == key) {
                return true;
            }
        }
    }
    false
}

/// `commitTransaction`.
pub fn commit(ctx: &Ctx, st: &mut State) -> Result<Reply> {
    let lsid = ctx.lsid.clone().ok_or_else(|| Error::new(50768, "commitTransaction requires a session"))?;
    let n = ctx.txn_number.ok_or_else(|| Error::bad_value("commitTransaction requires a txnNumber"))?;
    let sess = st.sessions.get(&lsid);
    if n < sess.txn_number {
        return Err(Error::new(
            225,
            format!("Cannot commit transaction {n}: a newer transaction {} has started", sess.txn_number),
        ));
    }
    if n > sess.txn_number {
        return Err(no_such(n));
    }
    match sess.state {
        TxnState::Committed => return Ok(Reply::Doc(sess.commit_result.clone().unwrap_or_default())),
        TxnState::Aborted | TxnState::None => {
            return Err(Error::new(251, format!("Transaction with txnNumber {n} has been aborted."))
                .with_label("TransientTransactionError"));
        }
        TxnState::InProgress => {}
    }
    let txn = sess.txn.take().unwrap_or_default();
    match apply_txn(st, txn, &lsid, n) {
        Ok(()) => {
            let sess = st.sessions.get(&lsid);
            sess.state = TxnState::Committed;
            sess.commit_result = Some(doc! {});
            tracing::debug!(txn_number = n, "transaction committed");
            Ok(Reply::Doc(doc! {}))
        }
        Err(e) => {
            let sess = st.sessions.get(&lsid);
            sess.state = TxnState::Aborted;
            Err(e)
        }
    }
}

/// `abortTransaction`.
pub fn abort(ctx: &Ctx, st: &mut State) -> Result<Reply> {
    let lsid = ctx.lsid.clone().ok_or_else(|| Error::new(50768, "abortTransaction requires a session"))?;
    let n = ctx.txn_number.ok_or_else(|| Error::bad_value("abortTransaction requires a txnNumber"))?;
    let sess = st.sessions.get(&lsid);
    if n < sess.txn_number {
        return Err(Error::new(225, "transaction too old"));
    }
    if n > sess.txn_number {
        return Err(no_such(n));
    }
    match sess.state {
        TxnState::InProgress => {
            sess.state = TxnState::Aborted;
            sess.txn = None;
            Ok(Reply::Doc(doc! {}))
        }
        TxnState::Committed => Err(Error::new(256, format!("Transaction {n} has been committed."))),
        _ => Err(Error::new(251, format!("Transaction with txnNumber {n} has been aborted."))
            .with_label("TransientTransactionError")),
    }
}
