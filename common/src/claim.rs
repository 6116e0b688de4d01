//! Claims on keys, with fencing tokens, over any [`Store`].
//!
//! # Protocol
//!
//! - **Claim**: one txn, `if create_revision(claim) == 0 then put(claim, owner, lease) else
//!   get(claim)`. The winner learns its token from the same round trip; a loser learns who
//!   holds the claim. The claim key is attached to the claimer's lease, so it disappears when
//!   the claimer dies and the lease expires.
//! - **Fencing token**: the claim key's `create_revision`, which is the claim txn's revision.
//!   It is unique per incarnation of the claim: a key deleted and claimed again gets a larger
//!   create revision, never the old one.
//! - **Fenced write**: every durable write made on behalf of a claim (checkpoints, resume
//!   tokens, task state) is a txn guarded by `create_revision(claim) == token`. A worker whose
//!   lease lapsed, even one paused for a minute by a GC or a VM migration that never noticed,
//!   gets [`ClaimError::Fenced`] instead of overwriting the new holder's progress.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tracing::debug;

use crate::store::{Compare, CompareOp, KeyValue, LeaseId, Store, StoreError, Txn, TxnOp};

/// Proof of holding a claim: the claim key's create revision.
///
/// Tokens of successive holders of one claim strictly increase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FencingToken(pub i64);

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Error from parsing a [`FencingToken`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid fencing token {value:?}: expected a positive integer")]
pub struct FencingTokenParseError {
    /// The text that did not parse.
    pub value: String,
}

impl FromStr for FencingToken {
    type Err = FencingTokenParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.parse::<i64>() {
            Ok(token) if token > 0 => Ok(FencingToken(token)),
            _ => Err(FencingTokenParseError { value: text.to_string() }),
        }
    }
}

/// The result of [`try_claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// We hold the claim now.
    Claimed(FencingToken),
    /// Someone holds it: the current claim key, with the holder's value and lease.
    ///
    /// If `kv.lease` is our own lease, the claim is ours from an earlier call whose reply was
    /// lost (a timeout after the txn applied); `kv.create_revision` is then our token.
    HeldBy(KeyValue),
}

/// Errors of fenced operations.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// The claim is no longer ours (expired, released, or claimed by someone else since): the
    /// write was not applied. Stop working on the claimed item; retrying cannot succeed.
    #[error("claim {claim_key} with fencing token {token} is no longer held; write rejected")]
    Fenced {
        /// The claim key.
        claim_key: String,
        /// The token the write presented.
        token: FencingToken,
    },
    /// The store failed; whether the write applied is unknown if the error is retryable (a
    /// fenced write may be retried as is: it applies at most once per token).
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ClaimError {
    /// Whether retrying the same call may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClaimError::Fenced { .. } => false,
            ClaimError::Store(error) => error.is_retryable(),
        }
    }

    /// Whether the claim is lost (the caller must stop its work).
    pub fn is_fenced(&self) -> bool {
        matches!(self, ClaimError::Fenced { .. })
    }
}

/// The guard of every fenced txn.
fn still_held(claim_key: &str, token: FencingToken) -> Compare {
    Compare::create_revision(claim_key, CompareOp::Equal, token.0)
}

/// Claims `claim_key` for `owner_value`, attached to `lease`, if nobody holds it.
///
/// # Errors
///
/// [`StoreError::LeaseExpired`] if `lease` is gone; any other store error.
pub async fn try_claim(
    store: &dyn Store,
    claim_key: &str,
    owner_value: Vec<u8>,
    lease: LeaseId,
) -> Result<ClaimOutcome, StoreError> {
    let txn = Txn::new()
        .when([Compare::create_revision(claim_key, CompareOp::Equal, 0)])
        .and_then([TxnOp::put(claim_key, owner_value, Some(lease))])
        .or_else([TxnOp::get(claim_key)]);
    let response = store.txn(txn).await?;
    if response.succeeded {
        // The claim key was created by this txn, so its create revision is the txn revision.
        let token = FencingToken(response.revision);
        debug!(claim_key, %token, %lease, "claimed");
        return Ok(ClaimOutcome::Claimed(token));
    }
    match response.kvs(0).and_then(|kvs| kvs.first()) {
        Some(holder) => Ok(ClaimOutcome::HeldBy(holder.clone())),
        // The compare saw the key and the get in the same txn did not: impossible in one
        // atomic txn, so the backend is broken.
        None => {
            Err(StoreError::invalid_request(format!("claim txn on {claim_key} failed its compare but read no holder")))
        }
    }
}

/// Applies `ops` only if the claim is still held with `token`.
///
/// # Errors
///
/// [`ClaimError::Fenced`] if the claim is not ours any more (nothing applied);
/// [`ClaimError::Store`] for store errors.
pub async fn fenced_txn(
    store: &dyn Store,
    claim_key: &str,
    token: FencingToken,
    ops: Vec<TxnOp>,
) -> Result<(), ClaimError> {
    let txn = Txn::new().when([still_held(claim_key, token)]).and_then(ops);
    let response = store.txn(txn).await?;
    if response.succeeded {
        Ok(())
    } else {
        debug!(claim_key, %token, "fenced write rejected: claim no longer held");
        Err(ClaimError::Fenced { claim_key: claim_key.to_string(), token })
    }
}

/// Writes `key` only if the claim is still held with `token`.
///
/// # Errors
///
/// As [`fenced_txn`].
pub async fn fenced_put(
    store: &dyn Store,
    claim_key: &str,
    token: FencingToken,
    key: &str,
    value: Vec<u8>,
) -> Result<(), ClaimError> {
    fenced_txn(store, claim_key, token, vec![TxnOp::put(key, value, None)]).await
}

/// Checks that the claim is still held with `token`, without writing.
///
/// # Errors
///
/// As [`fenced_txn`].
pub async fn check_claim(store: &dyn Store, claim_key: &str, token: FencingToken) -> Result<(), ClaimError> {
    match store.get(claim_key).await? {
        Some(kv) if kv.create_revision == token.0 => Ok(()),
        _ => Err(ClaimError::Fenced { claim_key: claim_key.to_string(), token }),
    }
}

/// Deletes the claim if it is still ours; returns whether it was.
///
/// # Errors
///
/// Store errors only: a claim that is already gone or held by someone else is `Ok(false)`.
pub async fn release(store: &dyn Store, claim_key: &str, token: FencingToken) -> Result<bool, StoreError> {
    let txn = Txn::new().when([still_held(claim_key, token)]).and_then([TxnOp::delete(claim_key)]);
    let released = store.txn(txn).await?.succeeded;
    debug!(claim_key, %token, released, "claim release");
    Ok(released)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::store::EmbeddedStore;

    #[test]
    fn fencing_tokens_round_trip() {
        let token = FencingToken(1234);
        assert_eq!(token.to_string().parse::<FencingToken>().unwrap(), token);
        assert_eq!(serde_json::to_string(&token).unwrap(), "1234");
        assert!("0".parse::<FencingToken>().is_err());
        assert!("abc".parse::<FencingToken>().is_err());
    }

    #[tokio::test]
    async fn claim_fence_and_release_on_the_embedded_store() {
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::in_memory());
        let lease = store.grant_lease(Duration::from_secs(30)).await.unwrap();
        let ClaimOutcome::Claimed(token) = try_claim(&*store, "c/1", b"me".to_vec(), lease).await.unwrap() else {
            panic!("first claim must win");
        };
        let ClaimOutcome::HeldBy(holder) = try_claim(&*store, "c/1", b"you".to_vec(), lease).await.unwrap() else {
            panic!("second claim must lose");
        };
        assert_eq!((holder.value.as_slice(), holder.create_revision), (&b"me"[..], token.0));

        fenced_put(&*store, "c/1", token, "cp/1", b"1".to_vec()).await.unwrap();
        check_claim(&*store, "c/1", token).await.unwrap();
        assert!(release(&*store, "c/1", token).await.unwrap());
        assert!(!release(&*store, "c/1", token).await.unwrap());
        let error = fenced_put(&*store, "c/1", token, "cp/1", b"2".to_vec()).await.unwrap_err();
        assert!(error.is_fenced() && !error.is_retryable());
        assert_eq!(store.get("cp/1").await.unwrap().unwrap().value, b"1");
    }
}
