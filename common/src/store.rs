//! The coordination store: the only channel between the coordinator and the workers.
//!
//! # Layout
//!
//! - this file: the [`Store`] trait and its value types ([`KeyValue`], [`Txn`], [`Compare`],
//!   [`WatchEvent`], [`LeaseId`]), modelled on the etcd v3 API so both backends mean the same
//!   thing by a revision, a lease or a compare.
//! - [`embedded`]: a durable single-process store (in-memory map + write-ahead log), used when
//!   one process runs the coordinator and the workers.
//! - [`etcd`]: the etcd v3 backend, used in distributed mode.
//! - [`conformance`] (tests and the `testing` feature): one suite of cases that every backend
//!   must pass.
//!
//! # Semantics shared by both backends
//!
//! - Revisions are store-wide and strictly increasing. A call that changes nothing (a delete of
//!   a missing key, a txn that only reads) does not consume a revision; every mutation of one
//!   call (one txn, one lease expiry) shares one revision.
//! - A missing key has `create_revision`, `mod_revision` and `version` 0. A `Value` compare on a
//!   missing key is always false, whatever the operator (as in etcd).
//! - Reads inside a txn see the writes made earlier in the same txn.
//! - A txn branch may hold at most [`MAX_TXN_OPS`] operations and may not write a key twice
//!   (etcd's defaults; the embedded store enforces the same rules so code tested on one works
//!   on the other).
//! - Lease TTLs have whole-second granularity (rounded up), as in etcd.
//! - Keys attached to a lease are deleted, in one revision, when the lease expires or is
//!   revoked; watchers see one `Delete` event per key.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use crate::error::StoreError;

#[cfg(any(test, feature = "testing"))]
pub mod conformance;
pub mod embedded;
pub mod etcd;

pub use embedded::EmbeddedStore;
pub use etcd::{EtcdStore, EtcdStoreOptions};

/// A store-wide revision: strictly increasing, bumped once per mutating call.
pub type Revision = i64;

/// Most operations one txn branch may hold (etcd's default `--max-txn-ops`).
pub const MAX_TXN_OPS: usize = 128;

/// Identifier of a store lease.
///
/// Displayed as 16 hex digits, the form `etcdctl lease list` prints, so an id in our logs can
/// be pasted into `etcdctl lease timetolive`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LeaseId(pub i64);

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Error from parsing a [`LeaseId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid lease id {value:?}: expected up to 16 hex digits")]
pub struct LeaseIdParseError {
    /// The text that did not parse.
    pub value: String,
}

impl FromStr for LeaseId {
    type Err = LeaseIdParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let digits = text.strip_prefix("0x").unwrap_or(text);
        u64::from_str_radix(digits, 16)
            // Lease ids are i64 on the wire; the hex form is the two's-complement bit pattern.
            .map(|bits| LeaseId(bits as i64))
            .map_err(|_| LeaseIdParseError { value: text.to_string() })
    }
}

/// One key with its value and metadata, as etcd reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The full key.
    pub key: String,
    /// The value bytes (empty in a `Delete` watch event).
    pub value: Vec<u8>,
    /// Revision at which the key was (last) created. Stable across updates; a fresh value after
    /// a delete. Used as the fencing token of a claim.
    pub create_revision: Revision,
    /// Revision of the last change to the key (for a `Delete` event: the revision of the delete).
    pub mod_revision: Revision,
    /// Number of writes since the key was created (1 after the creating put).
    pub version: i64,
    /// The lease the key is attached to, if any.
    pub lease: Option<LeaseId>,
}

impl KeyValue {
    /// The value as UTF-8 text.
    ///
    /// # Errors
    ///
    /// [`StoreError::Encoding`] if the value is not UTF-8.
    pub fn value_str(&self) -> Result<&str, StoreError> {
        std::str::from_utf8(&self.value).map_err(|error| StoreError::Encoding {
            key: self.key.clone(),
            reason: format!("value is not utf-8: {error}"),
        })
    }
}

/// What a [`Compare`] looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompareTarget {
    /// The key's create revision (0 if missing).
    CreateRevision(Revision),
    /// The key's last modification revision (0 if missing).
    ModRevision(Revision),
    /// The key's version (0 if missing).
    Version(i64),
    /// The key's value, compared bytewise. Always false for a missing key.
    Value(Vec<u8>),
}

/// How a [`Compare`] relates the key's field to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    /// field == target
    Equal,
    /// field != target
    NotEqual,
    /// field > target
    Greater,
    /// field < target
    Less,
}

impl CompareOp {
    /// Applies the operator to `field` (the key's) and `target` (the compare's).
    pub fn holds<T: Ord + ?Sized>(self, field: &T, target: &T) -> bool {
        match self {
            CompareOp::Equal => field == target,
            CompareOp::NotEqual => field != target,
            CompareOp::Greater => field > target,
            CompareOp::Less => field < target,
        }
    }
}

/// One condition of a txn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    /// The key whose field is compared.
    pub key: String,
    /// The field and the value it is compared with.
    pub target: CompareTarget,
    /// The relation that must hold.
    pub op: CompareOp,
}

impl Compare {
    /// Compares the key's create revision; `create_revision(key, Equal, 0)` means "key absent".
    pub fn create_revision(key: impl Into<String>, op: CompareOp, revision: Revision) -> Self {
        Compare { key: key.into(), target: CompareTarget::CreateRevision(revision), op }
    }

    /// Compares the key's last modification revision (compare-and-swap on a read).
    pub fn mod_revision(key: impl Into<String>, op: CompareOp, revision: Revision) -> Self {
        Compare { key: key.into(), target: CompareTarget::ModRevision(revision), op }
    }

    /// Compares the key's version.
    pub fn version(key: impl Into<String>, op: CompareOp, version: i64) -> Self {
        Compare { key: key.into(), target: CompareTarget::Version(version), op }
    }

    /// Compares the key's value bytewise. False for a missing key.
    pub fn value(key: impl Into<String>, op: CompareOp, value: impl Into<Vec<u8>>) -> Self {
        Compare { key: key.into(), target: CompareTarget::Value(value.into()), op }
    }

    /// Evaluates the compare against the key's current state (`None` = missing).
    pub fn evaluate(&self, current: Option<&KeyValue>) -> bool {
        match (&self.target, current) {
            // etcd: "always fail if comparing a value on a key that doesn't exist".
            (CompareTarget::Value(_), None) => false,
            (CompareTarget::Value(target), Some(kv)) => self.op.holds(kv.value.as_slice(), target.as_slice()),
            (CompareTarget::CreateRevision(target), kv) => {
                self.op.holds(&kv.map_or(0, |kv| kv.create_revision), target)
            }
            (CompareTarget::ModRevision(target), kv) => self.op.holds(&kv.map_or(0, |kv| kv.mod_revision), target),
            (CompareTarget::Version(target), kv) => self.op.holds(&kv.map_or(0, |kv| kv.version), target),
        }
    }
}

/// One operation of a txn branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    /// Write `value` under `key`, attached to `lease` if given.
    Put {
        /// The key.
        key: String,
        /// The new value.
        value: Vec<u8>,
        /// The lease to attach the key to; `None` detaches it from any previous lease.
        lease: Option<LeaseId>,
    },
    /// Delete one key.
    Delete {
        /// The key.
        key: String,
    },
    /// Delete every key starting with `prefix`.
    DeletePrefix {
        /// The prefix.
        prefix: String,
    },
    /// Read one key.
    Get {
        /// The key.
        key: String,
    },
    /// Read every key starting with `prefix`, sorted by key.
    GetPrefix {
        /// The prefix.
        prefix: String,
    },
}

impl TxnOp {
    /// A [`TxnOp::Put`].
    pub fn put(key: impl Into<String>, value: impl Into<Vec<u8>>, lease: Option<LeaseId>) -> Self {
        TxnOp::Put { key: key.into(), value: value.into(), lease }
    }

    /// A [`TxnOp::Delete`].
    pub fn delete(key: impl Into<String>) -> Self {
        TxnOp::Delete { key: key.into() }
    }

    /// A [`TxnOp::DeletePrefix`].
    pub fn delete_prefix(prefix: impl Into<String>) -> Self {
        TxnOp::DeletePrefix { prefix: prefix.into() }
    }

    /// A [`TxnOp::Get`].
    pub fn get(key: impl Into<String>) -> Self {
        TxnOp::Get { key: key.into() }
    }

    /// A [`TxnOp::GetPrefix`].
    pub fn get_prefix(prefix: impl Into<String>) -> Self {
        TxnOp::GetPrefix { prefix: prefix.into() }
    }

    /// Whether the operation writes.
    pub fn is_write(&self) -> bool {
        matches!(self, TxnOp::Put { .. } | TxnOp::Delete { .. } | TxnOp::DeletePrefix { .. })
    }
}

/// A transaction: if every compare holds, run `success`, otherwise run `failure`; atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    /// Conditions, all of which must hold for `success` to run.
    pub compares: Vec<Compare>,
    /// Operations run when every compare holds.
    pub success: Vec<TxnOp>,
    /// Operations run otherwise.
    pub failure: Vec<TxnOp>,
}

impl Txn {
    /// An empty txn (no compares: `success` always runs).
    pub fn new() -> Self {
        Txn::default()
    }

    /// Adds compares.
    pub fn when(mut self, compares: impl IntoIterator<Item = Compare>) -> Self {
        self.compares.extend(compares);
        self
    }

    /// Adds operations to the success branch.
    pub fn and_then(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.success.extend(ops);
        self
    }

    /// Adds operations to the failure branch.
    pub fn or_else(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.failure.extend(ops);
        self
    }

    /// Checks the rules both backends enforce on a branch: at most [`MAX_TXN_OPS`]
    /// operations, no key written twice, no delete covering a key the branch also puts.
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidRequest`] naming the broken rule.
    pub fn validate(&self) -> Result<(), StoreError> {
        let ops_count = self.compares.len().max(self.success.len()).max(self.failure.len());
        if ops_count > MAX_TXN_OPS {
            return Err(StoreError::invalid_request(format!(
                "too many operations in txn request: {ops_count} > {MAX_TXN_OPS}"
            )));
        }
        for branch in [&self.success, &self.failure] {
            validate_branch(branch)?;
        }
        Ok(())
    }
}

fn validate_branch(ops: &[TxnOp]) -> Result<(), StoreError> {
    let mut put_keys = std::collections::HashSet::new();
    for op in ops {
        if let TxnOp::Put { key, .. } = op
            && !put_keys.insert(key.as_str())
        {
            return Err(StoreError::invalid_request(format!("duplicate key {key:?} given in txn request")));
        }
    }
    for op in ops {
        let covered = match op {
            TxnOp::Delete { key } => put_keys.contains(key.as_str()),
            TxnOp::DeletePrefix { prefix } => put_keys.iter().any(|key| key.starts_with(prefix)),
            _ => false,
        };
        if covered {
            return Err(StoreError::invalid_request(
                "a txn branch may not delete a key it also puts (duplicate key given in txn request)",
            ));
        }
    }
    Ok(())
}

/// The result of one [`TxnOp`], in the same position as the op.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOpResponse {
    /// A put; `revision` is the txn's revision.
    Put {
        /// Revision of the write.
        revision: Revision,
    },
    /// A delete or delete-prefix.
    Delete {
        /// How many keys were deleted.
        deleted: u64,
    },
    /// A get or get-prefix (sorted by key; empty if nothing matched).
    Get {
        /// The keys read.
        kvs: Vec<KeyValue>,
    },
}

/// The result of a [`Txn`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResponse {
    /// Whether every compare held (so `success` ran).
    pub succeeded: bool,
    /// The store revision after the txn (its own revision if it wrote).
    pub revision: Revision,
    /// One response per operation of the branch that ran.
    pub responses: Vec<TxnOpResponse>,
}

impl TxnResponse {
    /// The keys read by the `index`-th op, if it was a get.
    pub fn kvs(&self, index: usize) -> Option<&[KeyValue]> {
        match self.responses.get(index) {
            Some(TxnOpResponse::Get { kvs }) => Some(kvs),
            _ => None,
        }
    }
}

/// Kind of a [`WatchEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchEventKind {
    /// The key was created or updated.
    Put,
    /// The key was deleted (explicitly, or because its lease expired).
    Delete,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// Put or delete.
    pub kind: WatchEventKind,
    /// For a put: the new key-value. For a delete: the key, with `mod_revision` set to the
    /// revision of the delete and every other field zero/empty.
    pub kv: KeyValue,
}

impl WatchEvent {
    /// The revision at which the change happened.
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}

/// A stream of watch events, in revision order, batched as the backend delivers them.
///
/// An `Err` item ends the stream: [`StoreError::Compacted`] when the backend cannot resume
/// from where the watcher was (the caller re-lists and watches again), [`StoreError::Closed`]
/// when the store shut down.
pub type WatchStream = futures::stream::BoxStream<'static, Result<Vec<WatchEvent>, StoreError>>;

/// A coordination store: an etcd-like key-value store with revisions, txns, leases and watches.
///
/// Used as `Arc<dyn Store>`; the embedded and etcd implementations pass the same
/// [`conformance`] suite.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reads one key.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Every key starting with `prefix`, sorted by key, and the store revision the read was
    /// taken at.
    async fn get_prefix(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError>;

    /// Writes one key, attached to `lease` if given; returns the revision of the write.
    ///
    /// # Errors
    ///
    /// [`StoreError::LeaseExpired`] if the lease does not exist.
    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision, StoreError>;

    /// Deletes one key; returns how many keys were deleted (0 or 1).
    async fn delete(&self, key: &str) -> Result<u64, StoreError>;

    /// Deletes every key starting with `prefix`; returns how many were deleted.
    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StoreError>;

    /// Runs a transaction atomically.
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidRequest`] if the txn breaks [`Txn::validate`];
    /// [`StoreError::LeaseExpired`] if a put of the branch that runs names a missing lease
    /// (then nothing is applied).
    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError>;

    /// Grants a lease of (at least) `ttl`, rounded up to whole seconds.
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError>;

    /// One keepalive round trip; returns the remaining TTL; `StoreError::LeaseExpired` if the
    /// lease is gone.
    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError>;

    /// Revokes a lease, deleting the keys attached to it.
    ///
    /// # Errors
    ///
    /// [`StoreError::LeaseExpired`] if the lease was already gone.
    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError>;

    /// Events for keys under `prefix` with revision >= `start_revision` (None = from now).
    /// `StoreError::Compacted` if history is gone (the caller re-lists); it may come from this
    /// call or as the first item of the stream.
    async fn watch_prefix(&self, prefix: &str, start_revision: Option<Revision>) -> Result<WatchStream, StoreError>;

    /// Human-readable name for logs/progress: "embedded" or "etcd".
    fn kind(&self) -> &'static str;
}

impl fmt::Debug for dyn Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Store({})", self.kind())
    }
}

/// Rounds a lease TTL up to whole seconds (at least one), the granularity etcd works in.
pub(crate) fn lease_ttl_seconds(ttl: Duration) -> i64 {
    let seconds = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i64::try_from(seconds.max(1)).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(value: &[u8], create_revision: Revision) -> KeyValue {
        KeyValue {
            key: "k".into(),
            value: value.to_vec(),
            create_revision,
            mod_revision: create_revision + 1,
            version: 2,
            lease: None,
        }
    }

    #[test]
    fn lease_id_round_trips_through_hex() {
        for id in [LeaseId(1), LeaseId(0x694d_7c3a_8c5a_0a0b), LeaseId(-5)] {
            assert_eq!(id.to_string().parse::<LeaseId>().unwrap(), id);
        }
        assert_eq!(LeaseId(255).to_string(), "00000000000000ff");
        assert_eq!("0xff".parse::<LeaseId>().unwrap(), LeaseId(255));
        assert!("lease".parse::<LeaseId>().is_err());
        assert_eq!(serde_json::to_string(&LeaseId(12)).unwrap(), "12");
    }

    #[test]
    fn compares_on_missing_keys_use_zero_and_value_always_fails() {
        let absent = Compare::create_revision("k", CompareOp::Equal, 0);
        assert!(absent.evaluate(None));
        assert!(!absent.evaluate(Some(&kv(b"v", 5))));
        assert!(Compare::version("k", CompareOp::Less, 1).evaluate(None));
        assert!(!Compare::value("k", CompareOp::NotEqual, b"x".to_vec()).evaluate(None));
        assert!(Compare::value("k", CompareOp::Greater, b"a".to_vec()).evaluate(Some(&kv(b"b", 1))));
        assert!(Compare::mod_revision("k", CompareOp::Equal, 6).evaluate(Some(&kv(b"b", 5))));
    }

    #[test]
    fn validate_rejects_duplicate_writes_and_oversized_branches() {
        let duplicate = Txn::new().and_then([TxnOp::put("a", "1", None), TxnOp::put("a", "2", None)]);
        assert!(matches!(duplicate.validate(), Err(StoreError::InvalidRequest { .. })));
        let covered = Txn::new().or_else([TxnOp::put("a/1", "1", None), TxnOp::delete_prefix("a/")]);
        assert!(covered.validate().is_err());
        let reads = Txn::new().and_then([TxnOp::get("a"), TxnOp::get("a"), TxnOp::put("a", "", None)]);
        assert!(reads.validate().is_ok());
        let oversized = Txn::new().and_then((0..=MAX_TXN_OPS).map(|i| TxnOp::get(format!("k{i}"))));
        assert!(oversized.validate().is_err());
    }

    #[test]
    fn ttl_rounds_up_to_whole_seconds() {
        assert_eq!(lease_ttl_seconds(Duration::from_millis(1)), 1);
        assert_eq!(lease_ttl_seconds(Duration::from_millis(2000)), 2);
        assert_eq!(lease_ttl_seconds(Duration::from_millis(2001)), 3);
        assert_eq!(lease_ttl_seconds(Duration::ZERO), 1);
    }
}
