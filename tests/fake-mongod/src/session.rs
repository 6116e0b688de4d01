//! Logical sessions: retryable-write results keyed by `(lsid, txnNumber)` and
//! single-replica-set transactions (a private copy of the touched collections and a
//! list of pending oplog operations, applied atomically at commit).

use std::collections::HashMap;
use std::time::Instant;

use bson::{Bson, Document};

use crate::oplog::Pending;
use crate::storage::{Catalog, Collection};

/// State of the session's latest transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnState {
    /// No transaction was ever started.
    None,
    /// Statements are running.
    InProgress,
    /// Committed (a retried commit returns the stored result).
    Committed,
    /// Aborted.
    Aborted,
}

/// A running transaction.
#[derive(Debug, Default)]
pub struct Txn {
    /// Private copies of the collections touched so far (namespace -> collection or None if it did not exist).
    pub overlay: Catalog,
    /// Namespaces copied into the overlay (with their state when copied).
    pub snapshots: HashMap<(String, String), Option<Collection>>,
    /// Operations to apply at commit.
    pub ops: Vec<Pending>,
    /// Read concern given by the first statement.
    pub read_concern: Option<Document>,
}

/// One logical session.
#[derive(Debug)]
pub struct Session {
    /// Last time the session was used.
    pub last_use: Instant,
    /// Highest transaction number seen.
    pub txn_number: i64,
    /// State of the transaction with `txn_number`.
    pub state: TxnState,
    /// The running transaction.
    pub txn: Option<Txn>,
    /// Stored replies of retryable writes by transaction number.
    pub retry_results: HashMap<i64, Document>,
    /// Stored commit reply for a retried commitTransaction.
    pub commit_result: Option<Document>,
}

impl Session {
    fn new() -> Self {
        Session {
            last_use: Instant::now(),
            txn_number: -1,
            state: TxnState::None,
            txn: None,
            retry_results: HashMap::new(),
            commit_result: None,
        }
    }
}

/// The session table.
#[derive(Debug, Default)]
pub struct Sessions {
    map: HashMap<Vec<u8>, Session>,
}

/// The key of an `lsid` document (its `id` bytes).
pub fn lsid_key(lsid: &Document) -> Vec<u8> {
    match lsid.get("id") {
        Some(Bson::Binary(b)) => b.bytes.clone(),
        _ => crate::wire::doc_bytes(lsid),
    }
}

impl Sessions {
    /// Gets or creates a session.
    pub fn get(&mut self, lsid: &Document) -> &mut Session {
        let s = self.map.entry(lsid_key(lsid)).or_insert_with(Session::new);
        s.last_use = Instant::now();
        s
    }

    /// Looks up a session without creating it.
    pub fn find(&mut self, lsid: &Document) -> Option<&mut Session> {
        self.map.get_mut(&lsid_key(lsid))
    }

    /// Ends sessions (aborting their transactions).
    pub fn end(&mut self, lsid: &Document) {
        self.map.remove(&lsid_key(lsid));
    }

    /// Aborts every open transaction and forgets every session.
    pub fn kill_all(&mut self) {
        self.map.clear();
    }

    /// Number of known sessions.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when no session is known.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// True if another session's open transaction has a pending write to one of `keys`.
    pub fn others_wrote(&self, me: &Document, keys: &[(String, String, Bson)]) -> bool {
        let mine = lsid_key(me);
        self.map.iter().filter(|(k, s)| **k != mine && s.state == TxnState::InProgress).any(|(_, s)| {
            s.txn.as_ref().is_some_and(|t| {
                t.ops.iter().filter_map(op_key).any(|(d, c, id)| {
                    keys.iter().any(|(kd, kc, kid)| *kd == d && *kc == c && crate::bson_order::values_equal(kid, &id))
                })
            })
        })
    }

    /// Iterates sessions mutably.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Session> {
        self.map.values_mut()
    }
}

/// The document a pending write touches: `(db, coll, _id)`.
pub fn op_key(p: &Pending) -> Option<(String, String, Bson)> {
    use crate::oplog::Kind;
    let id = match &p.kind {
        Kind::Insert { doc } => doc.get("_id").ok().flatten().and_then(|v| Bson::try_from(v.to_raw_bson()).ok())?,
        Kind::Update { id, .. } | Kind::Replace { id, .. } | Kind::Delete { id, .. } => id.clone(),
        _ => return None,
    };
    Some((p.db.clone(), p.coll.clone(), id))
}
