//! Keeping a store lease alive, and stopping our own work before it can lapse.
//!
//! # Layout
//!
//! - [`LeaseKeeperOptions`]: TTL, per-renewal timeout and self-fence margin, derived from the
//!   TTL by [`time_constants`] and validated.
//! - [`LeaseKeeper`]: grants a lease and renews it in a background task; owns the lease.
//! - [`LeaseHandle`]: a cheap clone for the components whose work depends on the lease (task
//!   runners, the election): its state, its deadline, a cancellation token.
//!
//! # Timing
//!
//! ```text
//!  sent ──────────── ttl/3 ──────────── next renewal ─ ... ─ fence point ── margin ── deadline
//!   │  each renewal bounded by the rpc timeout        retries if it failed       │
//!   └─ deadline = send time + ttl (not reply time)                               └─ Lost
//! ```
//!
//! The deadline is measured from the moment a keepalive was *sent*: the store resets the TTL
//! when it *processes* the request, which is later, so `sent + ttl` is never after the real
//! expiry however slow the reply was. Measuring from the reply (as HoraeDB does) would let a
//! slow reply push our idea of the deadline past the store's.
//!
//! The state flips to [`LeaseState::Lost`] at `deadline - margin` if no renewal succeeded by
//! then, or at once when the store says the lease is gone. Workers cancel their copy and CDC
//! work on that signal, so they have stopped before the store can hand their tasks to someone
//! else. The fenced writes of [`claim`](crate::claim) are the backstop if they have not.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::store::{LeaseId, Store, StoreError};
use crate::time_constants;

/// Smallest per-renewal timeout accepted: below this, a healthy store round trip under load
/// would already count as a failure.
pub const MIN_RPC_TIMEOUT: Duration = Duration::from_millis(50);

/// Errors from starting a [`LeaseKeeper`].
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The timing options cannot work (see [`LeaseKeeperOptions::validate`]).
    #[error("invalid lease timing: {reason}")]
    InvalidTiming {
        /// Which rule was broken, with the values.
        reason: String,
    },
    /// The store did not grant the lease.
    #[error("granting a lease of {ttl:?} failed: {source}")]
    Grant {
        /// The TTL asked for.
        ttl: Duration,
        /// The store's error.
        #[source]
        source: StoreError,
    },
}

impl LeaseError {
    /// Whether starting again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            LeaseError::InvalidTiming { .. } => false,
            LeaseError::Grant { source, .. } => source.is_retryable(),
        }
    }
}

/// Timing of a [`LeaseKeeper`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseKeeperOptions {
    /// Lease time-to-live (rounded up to whole seconds by the store).
    pub ttl: Duration,
    /// Bound on one keepalive round trip. A renewal that has not answered by then counts as
    /// failed and is retried, so one hung call cannot eat the whole TTL.
    pub rpc_timeout: Duration,
    /// How long before the deadline the lease is declared lost when renewals keep failing:
    /// the time our own work gets to stop before the store may expire the lease.
    pub self_fence_margin: Duration,
}

impl LeaseKeeperOptions {
    /// Options derived from `ttl` by [`time_constants`].
    pub fn new(ttl: Duration) -> Self {
        LeaseKeeperOptions {
            ttl,
            rpc_timeout: time_constants::rpc_timeout(ttl),
            self_fence_margin: time_constants::self_fence_margin(ttl),
        }
    }

    /// Interval between renewals: ttl/3, so two renewals can fail before the lease expires.
    pub fn keepalive_interval(&self) -> Duration {
        time_constants::keepalive_interval(self.ttl)
    }

    /// Delay before retrying a failed renewal: soon, because the deadline is now closer, but
    /// not in a tight loop against a store that is down.
    pub fn retry_interval(&self) -> Duration {
        (self.rpc_timeout / 2).max(MIN_RPC_TIMEOUT)
    }

    /// Checks that the timings leave room to renew before the self-fence point.
    ///
    /// # Errors
    ///
    /// [`LeaseError::InvalidTiming`] if the TTL is below
    /// [`MIN_LEASE_TTL`](time_constants::MIN_LEASE_TTL), the rpc timeout is below
    /// [`MIN_RPC_TIMEOUT`], or `interval + 2 × rpc_timeout + margin > ttl` (a renewal and one
    /// retry, each taking the full timeout, must both fit before the fence point).
    pub fn validate(&self) -> Result<(), LeaseError> {
        let invalid = |reason: String| Err(LeaseError::InvalidTiming { reason });
        if self.ttl < time_constants::MIN_LEASE_TTL {
            return invalid(format!(
                "lease ttl {:?} is below the minimum of {:?}",
                self.ttl,
                time_constants::MIN_LEASE_TTL
            ));
        }
        if self.rpc_timeout < MIN_RPC_TIMEOUT {
            return invalid(format!(
                "keepalive rpc timeout {:?} is below the minimum of {MIN_RPC_TIMEOUT:?}",
                self.rpc_timeout
            ));
        }
        let needed = self.keepalive_interval() + self.rpc_timeout * 2 + self.self_fence_margin;
        if needed > self.ttl {
            return invalid(format!(
                "lease ttl {:?} is too short for a keepalive interval of {:?}, an rpc timeout of \
                 {:?} (twice: one renewal and one retry) and a self-fence margin of {:?}; \
                 raise the ttl or lower the rpc timeout",
                self.ttl,
                self.keepalive_interval(),
                self.rpc_timeout,
                self.self_fence_margin
            ));
        }
        Ok(())
    }
}

/// Whether the lease can still be relied on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// Renewed recently enough; the deadline is ahead.
    Alive,
    /// Not any more; stop all work that depends on the lease. Final.
    Lost(LeaseLostReason),
}

impl LeaseState {
    /// Whether the state is [`LeaseState::Alive`].
    pub fn is_alive(&self) -> bool {
        matches!(self, LeaseState::Alive)
    }
}

/// Why a lease was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseLostReason {
    /// The store said the lease no longer exists (expired or revoked by someone else).
    Expired,
    /// Renewals kept failing until the self-fence point (`deadline - margin`).
    RenewalTimedOut,
    /// We revoked it ([`LeaseKeeper::revoke`]).
    Revoked,
    /// The keeper was dropped, so nobody renews it any more.
    Stopped,
}

impl std::fmt::Display for LeaseLostReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LeaseLostReason::Expired => "the store expired the lease",
            LeaseLostReason::RenewalTimedOut => "renewals failed until the self-fence deadline",
            LeaseLostReason::Revoked => "the lease was revoked",
            LeaseLostReason::Stopped => "the lease keeper stopped",
        })
    }
}

/// State shared by the keeper's task and the handles.
#[derive(Debug)]
struct Shared {
    lease_id: LeaseId,
    state: watch::Sender<LeaseState>,
    /// Latest known lower bound of the store-side expiry.
    deadline: Mutex<Instant>,
    /// Cancelled when the lease is lost; handles give out child tokens.
    lost: CancellationToken,
}

impl Shared {
    /// Flips to `Lost` once (the first reason wins) and cancels the token.
    fn mark_lost(&self, reason: LeaseLostReason) {
        let changed = self.state.send_if_modified(|state| {
            // Cancelled while the state is write-locked, so whoever sees one signal and then
            // looks at the other never finds them disagreeing.
            self.lost.cancel();
            if state.is_alive() {
                *state = LeaseState::Lost(reason);
                true
            } else {
                false
            }
        });
        if changed {
            match reason {
                LeaseLostReason::Revoked | LeaseLostReason::Stopped => {
                    info!(lease = %self.lease_id, %reason, "lease released")
                }
                LeaseLostReason::Expired | LeaseLostReason::RenewalTimedOut => {
                    warn!(lease = %self.lease_id, %reason, "lease lost; stopping dependent work")
                }
            }
        }
    }
}

/// A view of a kept lease for the components whose work depends on it.
#[derive(Debug, Clone)]
pub struct LeaseHandle {
    shared: Arc<Shared>,
    state: watch::Receiver<LeaseState>,
}

impl LeaseHandle {
    /// The lease id, to attach keys to.
    pub fn lease_id(&self) -> LeaseId {
        self.shared.lease_id
    }

    /// The store-side expiry as far as we can tell (a lower bound: last successful keepalive's
    /// send time + TTL). Work must be finished before it.
    pub fn deadline(&self) -> Instant {
        *self.shared.deadline.lock()
    }

    /// The current state.
    pub fn state(&self) -> LeaseState {
        *self.state.borrow()
    }

    /// Whether the lease is alive *and* its deadline is still ahead.
    pub fn is_alive(&self) -> bool {
        self.state().is_alive() && Instant::now() < self.deadline()
    }

    /// A receiver that sees the flip to [`LeaseState::Lost`].
    pub fn subscribe(&self) -> watch::Receiver<LeaseState> {
        self.state.clone()
    }

    /// A token cancelled when the lease is lost. A child token: cancelling it does not affect
    /// the lease or other holders.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.shared.lost.child_token()
    }

    /// Resolves when the lease is lost, with the reason.
    pub async fn lost(&self) -> LeaseLostReason {
        let mut state = self.state.clone();
        let result = state.wait_for(|state| !state.is_alive()).await.map(|state| *state);
        match result {
            Ok(LeaseState::Lost(reason)) => reason,
            // The keeper is gone (sender dropped) without a recorded reason.
            Ok(LeaseState::Alive) | Err(_) => LeaseLostReason::Stopped,
        }
    }
}

/// Grants a lease and keeps it alive until dropped or revoked. See the module docs.
#[derive(Debug)]
pub struct LeaseKeeper {
    handle: LeaseHandle,
    store: Arc<dyn Store>,
    /// Stops the renewal task (on drop or revoke).
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl LeaseKeeper {
    /// Grants a lease of `ttl` with the derived timings and starts renewing it.
    ///
    /// # Errors
    ///
    /// [`LeaseError::InvalidTiming`] for a TTL the timings do not fit in;
    /// [`LeaseError::Grant`] if the store refuses or cannot be reached.
    pub async fn start(store: Arc<dyn Store>, ttl: Duration) -> Result<Self, LeaseError> {
        Self::start_with(store, LeaseKeeperOptions::new(ttl)).await
    }

    /// Like [`LeaseKeeper::start`], with explicit timings.
    ///
    /// # Errors
    ///
    /// As [`LeaseKeeper::start`].
    pub async fn start_with(store: Arc<dyn Store>, options: LeaseKeeperOptions) -> Result<Self, LeaseError> {
        options.validate()?;
        let ttl = options.ttl;
        // The grant is the first round trip: its send time starts the first deadline.
        let sent_at = Instant::now();
        let lease_id = match tokio::time::timeout(options.rpc_timeout, store.grant_lease(ttl)).await {
            Ok(Ok(lease_id)) => lease_id,
            Ok(Err(source)) => return Err(LeaseError::Grant { ttl, source }),
            Err(_) => {
                let source = StoreError::unavailable(format!("lease grant timed out after {:?}", options.rpc_timeout));
                return Err(LeaseError::Grant { ttl, source });
            }
        };
        let (state, state_receiver) = watch::channel(LeaseState::Alive);
        let shared = Arc::new(Shared {
            lease_id,
            state,
            // The store rounds the TTL up, never down, so the requested TTL is a safe bound.
            deadline: Mutex::new(sent_at + ttl),
            lost: CancellationToken::new(),
        });
        let stop = CancellationToken::new();
        let task = tokio::spawn(renew_loop(store.clone(), options, shared.clone(), stop.clone(), sent_at));
        info!(lease = %lease_id, ttl_ms = ttl.as_millis() as u64, store = store.kind(), "lease granted");
        Ok(LeaseKeeper { handle: LeaseHandle { shared, state: state_receiver }, store, stop, task: Some(task) })
    }

    /// The lease id.
    pub fn lease_id(&self) -> LeaseId {
        self.handle.lease_id()
    }

    /// See [`LeaseHandle::deadline`].
    pub fn deadline(&self) -> Instant {
        self.handle.deadline()
    }

    /// The current state.
    pub fn state(&self) -> LeaseState {
        self.handle.state()
    }

    /// A handle for components that depend on the lease.
    pub fn handle(&self) -> LeaseHandle {
        self.handle.clone()
    }

    /// See [`LeaseHandle::subscribe`].
    pub fn subscribe(&self) -> watch::Receiver<LeaseState> {
        self.handle.subscribe()
    }

    /// See [`LeaseHandle::cancellation_token`].
    pub fn cancellation_token(&self) -> CancellationToken {
        self.handle.cancellation_token()
    }

    /// Stops renewing and revokes the lease, so keys attached to it (claims, leadership) go
    /// away now instead of after the TTL. Dependent work sees
    /// [`LeaseLostReason::Revoked`] *before* the revoke is sent.
    ///
    /// # Errors
    ///
    /// The store's error if the revoke failed for a reason other than the lease being gone
    /// already; the lease then expires on its own after the TTL.
    pub async fn revoke(mut self) -> Result<(), StoreError> {
        self.handle.shared.mark_lost(LeaseLostReason::Revoked);
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        match self.store.revoke_lease(self.lease_id()).await {
            Ok(()) | Err(StoreError::LeaseExpired { .. }) => Ok(()),
            Err(error) => Err(error),
        }
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        // Nobody renews the lease any more: tell dependents now rather than at the deadline.
        self.handle.shared.mark_lost(LeaseLostReason::Stopped);
        self.stop.cancel();
    }
}

/// The renewal task. See the module docs for the timing.
async fn renew_loop(
    store: Arc<dyn Store>,
    options: LeaseKeeperOptions,
    shared: Arc<Shared>,
    stop: CancellationToken,
    granted_at: Instant,
) {
    let lease = shared.lease_id;
    let interval = options.keepalive_interval();
    let mut next_renewal = granted_at + interval;
    loop {
        let fence_at = *shared.deadline.lock() - options.self_fence_margin;
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            // Only reachable after failed renewals pushed the next attempt past the fence.
            () = tokio::time::sleep_until(fence_at) => {
                shared.mark_lost(LeaseLostReason::RenewalTimedOut);
                return;
            }
            () = tokio::time::sleep_until(next_renewal) => {}
        }

        let sent_at = Instant::now();
        if sent_at >= fence_at {
            shared.mark_lost(LeaseLostReason::RenewalTimedOut);
            return;
        }
        // Never wait past the fence point for an answer: the flip to Lost must happen on time
        // even if the store hangs.
        let attempt_timeout = options.rpc_timeout.min(fence_at - sent_at);
        let outcome = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            outcome = tokio::time::timeout(attempt_timeout, store.keep_alive(lease)) => outcome,
        };
        match outcome {
            Ok(Ok(ttl)) => {
                // Send time, not reply time: see the module docs.
                *shared.deadline.lock() = sent_at + ttl;
                next_renewal = sent_at + interval;
                debug!(%lease, ttl_ms = ttl.as_millis() as u64, rtt_ms = sent_at.elapsed().as_millis() as u64, "lease renewed");
            }
            Ok(Err(StoreError::LeaseExpired { .. })) => {
                shared.mark_lost(LeaseLostReason::Expired);
                return;
            }
            Ok(Err(error)) => {
                let remaining = fence_at.saturating_duration_since(Instant::now());
                warn!(%lease, %error, remaining_ms = remaining.as_millis() as u64, "lease renewal failed; retrying");
                next_renewal = Instant::now() + options.retry_interval();
            }
            Err(_) => {
                let remaining = fence_at.saturating_duration_since(Instant::now());
                warn!(%lease, timeout_ms = attempt_timeout.as_millis() as u64, remaining_ms = remaining.as_millis() as u64, "lease renewal timed out; retrying");
                next_renewal = Instant::now() + options.retry_interval();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::store::{KeyValue, Revision, Txn, TxnResponse, WatchStream};

    /// What the scripted store does on a keepalive.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Behaviour {
        Answer,
        Hang,
        Refuse,
        Expired,
    }

    /// A store that only grants and renews leases, as scripted. Runs on paused tokio time.
    struct ScriptedStore {
        behaviour: Mutex<Behaviour>,
        keepalives: AtomicU32,
        /// How long a keepalive takes before answering.
        latency: Duration,
    }

    impl ScriptedStore {
        fn new(latency: Duration) -> Arc<Self> {
            Arc::new(ScriptedStore { behaviour: Mutex::new(Behaviour::Answer), keepalives: AtomicU32::new(0), latency })
        }

        fn set(&self, behaviour: Behaviour) {
            *self.behaviour.lock() = behaviour;
        }
    }

    #[async_trait]
    impl Store for ScriptedStore {
        async fn get(&self, _key: &str) -> Result<Option<KeyValue>, StoreError> {
            Err(StoreError::Closed)
        }
        async fn get_prefix(&self, _prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
            Err(StoreError::Closed)
        }
        async fn put(&self, _key: &str, _value: Vec<u8>, _lease: Option<LeaseId>) -> Result<Revision, StoreError> {
            Err(StoreError::Closed)
        }
        async fn delete(&self, _key: &str) -> Result<u64, StoreError> {
            Err(StoreError::Closed)
        }
        async fn delete_prefix(&self, _prefix: &str) -> Result<u64, StoreError> {
            Err(StoreError::Closed)
        }
        async fn txn(&self, _txn: Txn) -> Result<TxnResponse, StoreError> {
            Err(StoreError::Closed)
        }
        async fn grant_lease(&self, _ttl: Duration) -> Result<LeaseId, StoreError> {
            Ok(LeaseId(1))
        }
        async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError> {
            self.keepalives.fetch_add(1, Ordering::SeqCst);
            let behaviour = *self.behaviour.lock();
            tokio::time::sleep(self.latency).await;
            match behaviour {
                Behaviour::Answer => Ok(Duration::from_secs(6)),
                Behaviour::Hang => std::future::pending().await,
                Behaviour::Refuse => Err(StoreError::unavailable("connection refused")),
                Behaviour::Expired => Err(StoreError::LeaseExpired { lease }),
            }
        }
        async fn revoke_lease(&self, _lease: LeaseId) -> Result<(), StoreError> {
            Ok(())
        }
        async fn watch_prefix(&self, _prefix: &str, _start: Option<Revision>) -> Result<WatchStream, StoreError> {
            Err(StoreError::Closed)
        }
        fn kind(&self) -> &'static str {
            "scripted"
        }
    }

    const TTL: Duration = Duration::from_secs(6);

    #[test]
    fn validation_rejects_short_ttls_and_slow_rpcs() {
        LeaseKeeperOptions::new(Duration::from_secs(2)).validate().unwrap();
        LeaseKeeperOptions::new(Duration::from_secs(10)).validate().unwrap();
        let error = LeaseKeeperOptions::new(Duration::from_millis(1500)).validate().unwrap_err();
        assert!(error.to_string().contains("below the minimum"), "{error}");
        let slow = LeaseKeeperOptions { rpc_timeout: Duration::from_secs(3), ..LeaseKeeperOptions::new(TTL) };
        let error = slow.validate().unwrap_err();
        assert!(error.to_string().contains("too short"), "{error}");
        assert!(!error.is_retryable());
    }

    #[tokio::test(start_paused = true)]
    async fn renews_every_third_of_the_ttl_and_measures_from_the_send_time() {
        let latency = Duration::from_millis(300);
        let store = ScriptedStore::new(latency);
        let started = Instant::now();
        let keeper = LeaseKeeper::start(store.clone(), TTL).await.unwrap();
        assert_eq!(keeper.deadline(), started + TTL);

        tokio::time::sleep(TTL * 2 + Duration::from_millis(500)).await;
        // Renewals at 2s, 4s, ..., 12s; each one answered 300ms later.
        assert_eq!(store.keepalives.load(Ordering::SeqCst), 6);
        assert!(keeper.state().is_alive());
        // The last renewal was sent at 12s: the deadline counts from then, not from 12.3s.
        assert_eq!(keeper.deadline(), started + TTL / 3 * 6 + TTL);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_store_flips_to_lost_before_the_deadline() {
        let store = ScriptedStore::new(Duration::ZERO);
        let keeper = LeaseKeeper::start(store.clone(), TTL).await.unwrap();
        let handle = keeper.handle();
        let token = keeper.cancellation_token();
        tokio::time::sleep(TTL / 3 + Duration::from_millis(10)).await;
        let deadline = keeper.deadline();
        store.set(Behaviour::Hang);

        let reason = handle.lost().await;
        assert_eq!(reason, LeaseLostReason::RenewalTimedOut);
        assert!(token.is_cancelled());
        let margin = LeaseKeeperOptions::new(TTL).self_fence_margin;
        assert!(Instant::now() <= deadline - margin, "lost at the fence point, not later");
        assert!(store.keepalives.load(Ordering::SeqCst) >= 2, "the failed renewal was retried");
    }

    #[tokio::test(start_paused = true)]
    async fn refused_renewals_are_retried_and_recover() {
        let store = ScriptedStore::new(Duration::ZERO);
        let keeper = LeaseKeeper::start(store.clone(), TTL).await.unwrap();
        store.set(Behaviour::Refuse);
        tokio::time::sleep(TTL / 3 + Duration::from_millis(600)).await;
        assert!(store.keepalives.load(Ordering::SeqCst) >= 2);
        store.set(Behaviour::Answer);
        tokio::time::sleep(TTL * 2).await;
        assert!(keeper.state().is_alive());
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_lease_is_lost_at_once() {
        let store = ScriptedStore::new(Duration::ZERO);
        let keeper = LeaseKeeper::start(store.clone(), TTL).await.unwrap();
        store.set(Behaviour::Expired);
        let mut state = keeper.subscribe();
        let lost = state.wait_for(|state| !state.is_alive()).await.map(|state| *state).unwrap();
        assert_eq!(lost, LeaseState::Lost(LeaseLostReason::Expired));
        assert!(Instant::now() < keeper.deadline());
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_or_revoking_the_keeper_marks_the_lease_lost() {
        let store = ScriptedStore::new(Duration::ZERO);
        let keeper = LeaseKeeper::start(store.clone(), TTL).await.unwrap();
        let handle = keeper.handle();
        drop(keeper);
        assert_eq!(handle.state(), LeaseState::Lost(LeaseLostReason::Stopped));

        let keeper = LeaseKeeper::start(store.clone(), TTL).await.unwrap();
        let handle = keeper.handle();
        keeper.revoke().await.unwrap();
        assert_eq!(handle.lost().await, LeaseLostReason::Revoked);
    }
}
