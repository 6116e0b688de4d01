//! Leader election over any [`Store`], for the coordinator.
//!
//! # Protocol
//!
//! - **Campaign**: claim the leader key with [`try_claim`](crate::claim::try_claim)
//!   (put-if-absent, bound to the candidate's lease). A loser watches the key from just after
//!   the revision it read and tries again once it is deleted (resign, revoke or lease expiry).
//!   No polling, and no missed deletion between the read and the watch; if that history is
//!   gone (compacted), it re-reads the key and watches from the read's revision.
//! - **Leadership** lasts while the leader key is the one we created *and* our lease keeper
//!   says the lease is alive. The second condition flips first when the store becomes
//!   unreachable: the keeper self-fences a margin before the deadline, so an old leader stops
//!   acting before the store can let a new one in.
//! - **Fencing**: the key's create revision is the term's [`FencingToken`]; a leader guards
//!   its writes with it like any claim ([`fenced_txn`](crate::claim::fenced_txn)).
//! - **Resign** flips "is leader" off first, then deletes the key if it is still ours.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::claim::{self, ClaimOutcome, FencingToken};
use crate::lease::{LeaseHandle, LeaseLostReason};
use crate::store::{KeyValue, Revision, Store, StoreError, WatchEventKind};

/// Pause before re-reading the leader key after its watch broke (store unreachable).
const MONITOR_RETRY: Duration = Duration::from_millis(500);

/// Errors of [`Election::campaign`].
#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    /// The candidate's lease was lost: it cannot become (or stay) leader with it. Start a new
    /// lease keeper and a new election.
    #[error("lease {lease} lost while campaigning for {leader_key}: {reason}")]
    LeaseLost {
        /// The leader key.
        leader_key: String,
        /// The candidate's lease.
        lease: crate::store::LeaseId,
        /// Why the lease was lost.
        reason: LeaseLostReason,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ElectionError {
    /// Whether campaigning again (with the same lease) may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ElectionError::LeaseLost { .. } => false,
            ElectionError::Store(error) => error.is_retryable(),
        }
    }
}

/// One won term.
#[derive(Debug)]
struct Term {
    /// Distinguishes terms, so a monitor of an ended term cannot end a newer one.
    id: u64,
    token: FencingToken,
    /// Stops the term's monitor task.
    stop: CancellationToken,
}

#[derive(Debug)]
struct Shared {
    is_leader: watch::Sender<bool>,
    term: Mutex<Option<Term>>,
}

impl Shared {
    /// Ends term `id` if it is still the current one.
    fn end_term(&self, id: u64, why: &str, leader_key: &str) {
        let mut term = self.term.lock();
        if term.as_ref().is_some_and(|term| term.id == id) {
            let ended = term.take().expect("checked above");
            ended.stop.cancel();
            self.is_leader.send_replace(false);
            warn!(leader_key, token = %ended.token, why, "leadership lost");
        }
    }
}

/// A candidate in the election for one leader key.
#[derive(Debug)]
pub struct Election {
    store: Arc<dyn Store>,
    leader_key: String,
    candidate_value: Vec<u8>,
    lease: LeaseHandle,
    shared: Arc<Shared>,
    next_term_id: Mutex<u64>,
}

impl Election {
    /// A candidate for `leader_key`, announcing `candidate_value` while leader, bound to
    /// `lease`.
    pub fn new(
        store: Arc<dyn Store>,
        leader_key: impl Into<String>,
        candidate_value: Vec<u8>,
        lease: LeaseHandle,
    ) -> Self {
        let (is_leader, _) = watch::channel(false);
        Election {
            store,
            leader_key: leader_key.into(),
            candidate_value,
            lease,
            shared: Arc::new(Shared { is_leader, term: Mutex::new(None) }),
            next_term_id: Mutex::new(0),
        }
    }

    /// Resolves once this candidate is the leader, with the term's fencing token. Returns at
    /// once if it already is.
    ///
    /// # Errors
    ///
    /// [`ElectionError::LeaseLost`] if the lease is lost meanwhile; store errors as they come
    /// (retry on [`ElectionError::is_retryable`]).
    pub async fn campaign(&self) -> Result<FencingToken, ElectionError> {
        let lease_id = self.lease.lease_id();
        loop {
            if let Some(token) = self.token() {
                return Ok(token);
            }
            if let crate::lease::LeaseState::Lost(reason) = self.lease.state() {
                return Err(self.lease_lost(reason));
            }
            let outcome = tokio::select! {
                reason = self.lease.lost() => return Err(self.lease_lost(reason)),
                outcome = claim::try_claim(&*self.store, &self.leader_key, self.candidate_value.clone(), lease_id) => outcome,
            };
            let holder = match outcome {
                Ok(ClaimOutcome::Claimed(token)) => return Ok(self.become_leader(token)),
                Ok(ClaimOutcome::HeldBy(holder)) => holder,
                Err(StoreError::LeaseExpired { .. }) => {
                    return Err(self.lease_lost(LeaseLostReason::Expired));
                }
                Err(error) => return Err(error.into()),
            };
            if holder.lease == Some(lease_id) && holder.value == self.candidate_value {
                // Our own key from an earlier campaign whose reply was lost.
                return Ok(self.become_leader(FencingToken(holder.create_revision)));
            }
            info!(
                leader_key = %self.leader_key,
                leader_lease = ?holder.lease.map(|lease| lease.to_string()),
                "another candidate leads; waiting for it to step down"
            );
            tokio::select! {
                reason = self.lease.lost() => return Err(self.lease_lost(reason)),
                vacancy = self.wait_for_vacancy(&holder) => vacancy?,
            }
        }
    }

    /// Whether this candidate is the leader now.
    pub fn is_leader(&self) -> bool {
        *self.shared.is_leader.borrow()
    }

    /// A receiver of "is leader", flipping to false when leadership is lost or resigned.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.shared.is_leader.subscribe()
    }

    /// The fencing token of the current term, if leader.
    pub fn token(&self) -> Option<FencingToken> {
        self.shared.term.lock().as_ref().map(|term| term.token)
    }

    /// The current leader's key-value (its value is the leader's `candidate_value`), if any.
    ///
    /// # Errors
    ///
    /// Store errors.
    pub async fn leader(&self) -> Result<Option<KeyValue>, StoreError> {
        self.store.get(&self.leader_key).await
    }

    /// Steps down: "is leader" flips to false first, then the leader key is deleted if it is
    /// still ours, so another candidate can take over at once. Returns whether we were leader.
    ///
    /// # Errors
    ///
    /// Store errors from the delete; leadership has ended anyway and the key goes with the
    /// lease.
    pub async fn resign(&self) -> Result<bool, StoreError> {
        let Some(term) = self.shared.term.lock().take() else { return Ok(false) };
        term.stop.cancel();
        // Stop acting as leader before anyone else can become one.
        self.shared.is_leader.send_replace(false);
        let released = claim::release(&*self.store, &self.leader_key, term.token).await?;
        info!(leader_key = %self.leader_key, token = %term.token, released, "resigned leadership");
        Ok(true)
    }

    fn lease_lost(&self, reason: LeaseLostReason) -> ElectionError {
        ElectionError::LeaseLost { leader_key: self.leader_key.clone(), lease: self.lease.lease_id(), reason }
    }

    fn become_leader(&self, token: FencingToken) -> FencingToken {
        let id = {
            let mut next = self.next_term_id.lock();
            *next += 1;
            *next
        };
        let stop = CancellationToken::new();
        *self.shared.term.lock() = Some(Term { id, token, stop: stop.clone() });
        self.shared.is_leader.send_replace(true);
        info!(leader_key = %self.leader_key, %token, lease = %self.lease.lease_id(), "became leader");
        tokio::spawn(monitor_term(
            self.store.clone(),
            self.leader_key.clone(),
            token,
            id,
            self.lease.clone(),
            self.shared.clone(),
            stop,
        ));
        token
    }

    /// Returns once `holder`'s key has been deleted or replaced.
    async fn wait_for_vacancy(&self, holder: &KeyValue) -> Result<(), StoreError> {
        // From just after the revision we saw: a delete that happened since is delivered.
        let mut from = holder.mod_revision + 1;
        loop {
            match self.store.watch_prefix(&self.leader_key, Some(from)).await {
                Ok(mut events) => {
                    while let Some(batch) = events.next().await {
                        match batch {
                            Ok(batch) => {
                                let vacated = batch.iter().any(|event| {
                                    event.kv.key == self.leader_key && event.kind == WatchEventKind::Delete
                                });
                                if vacated {
                                    debug!(leader_key = %self.leader_key, "leader key deleted; campaigning");
                                    return Ok(());
                                }
                            }
                            Err(StoreError::Compacted { .. }) => break,
                            Err(error) => return Err(error),
                        }
                    }
                }
                // History from `from` is gone: re-read below and watch from there.
                Err(StoreError::Compacted { .. }) => {}
                Err(error) => return Err(error),
            }
            // The watch could not be served or ended: look at the key itself. Without this a
            // compacted history would make the caller spin between claim and watch.
            let (kvs, revision) = self.store.get_prefix(&self.leader_key).await?;
            let still_held =
                kvs.iter().any(|kv| kv.key == self.leader_key && kv.create_revision == holder.create_revision);
            if !still_held {
                return Ok(());
            }
            from = revision + 1;
        }
    }
}

impl Drop for Election {
    fn drop(&mut self) {
        if let Some(term) = self.shared.term.lock().take() {
            term.stop.cancel();
            self.shared.is_leader.send_replace(false);
        }
    }
}

/// Ends the term when the lease is lost or the leader key stops being ours.
async fn monitor_term(
    store: Arc<dyn Store>,
    leader_key: String,
    token: FencingToken,
    term_id: u64,
    lease: LeaseHandle,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let why = tokio::select! {
        () = stop.cancelled() => return,
        reason = lease.lost() => format!("lease lost: {reason}"),
        () = wait_until_key_is_not_ours(&*store, &leader_key, token) => "leader key deleted or replaced".to_string(),
    };
    shared.end_term(term_id, &why, &leader_key);
}

/// Returns when the leader key is deleted or recreated by someone else. Survives watch
/// failures by re-reading the key; an unreachable store alone does not end the term (the
/// lease keeper decides that, on time).
async fn wait_until_key_is_not_ours(store: &dyn Store, leader_key: &str, token: FencingToken) {
    let mut from: Revision = token.0 + 1;
    loop {
        if let Ok(mut events) = store.watch_prefix(leader_key, Some(from)).await {
            while let Some(Ok(batch)) = events.next().await {
                for event in &batch {
                    if event.kv.key == leader_key
                        && (event.kind == WatchEventKind::Delete || event.kv.create_revision != token.0)
                    {
                        return;
                    }
                    from = event.revision() + 1;
                }
            }
        }
        // The watch failed or ended: check the key directly, then watch again from there.
        tokio::time::sleep(MONITOR_RETRY).await;
        match store.get_prefix(leader_key).await {
            Ok((kvs, revision)) => {
                let ours = kvs.iter().any(|kv| kv.key == leader_key && kv.create_revision == token.0);
                if !ours {
                    return;
                }
                from = revision + 1;
            }
            Err(error) => debug!(leader_key, %error, "cannot read the leader key; retrying"),
        }
    }
}
