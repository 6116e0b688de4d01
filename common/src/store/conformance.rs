//! The store conformance suite: what every [`Store`] backend must do, written once.
//!
//! Each case is a `pub async fn (Arc<dyn Store>, prefix)` that touches only keys under its
//! prefix and asserts relative revisions only, so cases can share one store.
//! [`store_conformance_tests!`](crate::store_conformance_tests) expands to one `#[tokio::test]`
//! per case for a backend; `common/tests/store_embedded.rs` and `common/tests/store_etcd.rs`
//! use it, so both backends run exactly the same list.
//!
//! Lease cases use TTLs of a few seconds (etcd's effective minimum is 2 s) and wait with
//! generous timeouts; nothing asserts how fast a backend is.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use crate::claim::{self, ClaimError, ClaimOutcome};
use crate::election::{Election, ElectionError};
use crate::lease::{LeaseKeeper, LeaseLostReason, LeaseState};
use crate::store::{
    Compare, CompareOp, KeyValue, MAX_TXN_OPS, Revision, Store, StoreError, Txn, TxnOp, TxnOpResponse, WatchEvent,
    WatchEventKind, WatchStream,
};

/// Short lease TTL for the lease cases.
const SHORT_TTL: Duration = Duration::from_secs(2);
/// TTL for leases that must outlive a case.
const LONG_TTL: Duration = Duration::from_secs(60);
/// Upper bound for anything the cases wait for (lease expiry, failover, events).
const PATIENCE: Duration = Duration::from_secs(20);

/// Expands to one `#[tokio::test]` per conformance case. `$setup` is an async fn returning
/// `(Arc<dyn Store>, guard)`; the guard (temp dir, etcd server) lives for the test.
#[macro_export]
macro_rules! store_conformance_tests {
    ($setup:path) => {
        $crate::store_conformance_tests!(@cases $setup;
            get_put_delete,
            prefix_reads_are_sorted_and_bounded,
            revisions_and_versions,
            txn_compares_every_target_and_op,
            txn_multi_op_responses,
            txn_rules_are_enforced,
            lease_keepalive_keeps_keys,
            lease_expiry_deletes_attached_keys,
            lease_revoke_deletes_attached_keys,
            watch_from_now,
            watch_from_past_revision,
            claims_fence_old_holders,
            election_fails_over_when_the_leader_lease_dies,
            election_resign_hands_over,
            lease_keeper_keeps_and_loses_leases,
            concurrent_cas_increments_lose_nothing,
            large_prefix_reads_are_one_snapshot,
        );
    };
    (@cases $setup:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (store, _guard) = $setup().await;
                let prefix = $crate::testing::unique_prefix(stringify!($case));
                $crate::store::conformance::$case(store, &prefix).await;
            }
        )*
    };
}

fn bytes(text: &str) -> Vec<u8> {
    text.as_bytes().to_vec()
}

/// Reads the next `count` events of a watch (across batches), or panics after [`PATIENCE`].
async fn next_events(stream: &mut WatchStream, count: usize) -> Vec<WatchEvent> {
    let mut events = Vec::new();
    while events.len() < count {
        let batch = tokio::time::timeout(PATIENCE, stream.next())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for watch events; got {events:?}"))
            .expect("watch stream ended")
            .expect("watch stream failed");
        events.extend(batch);
    }
    assert_eq!(events.len(), count, "more events than expected: {events:?}");
    events
}

async fn current_revision(store: &dyn Store, prefix: &str) -> Revision {
    store.get_prefix(prefix).await.unwrap().1
}

/// get / put / delete of single keys.
pub async fn get_put_delete(store: Arc<dyn Store>, prefix: &str) {
    let key = format!("{prefix}a");
    assert_eq!(store.get(&key).await.unwrap(), None);

    let revision = store.put(&key, bytes("one"), None).await.unwrap();
    let kv = store.get(&key).await.unwrap().expect("key after put");
    assert_eq!(
        kv,
        KeyValue {
            key: key.clone(),
            value: bytes("one"),
            create_revision: revision,
            mod_revision: revision,
            version: 1,
            lease: None,
        }
    );

    store.put(&key, Vec::new(), None).await.unwrap();
    assert_eq!(store.get(&key).await.unwrap().unwrap().value, Vec::<u8>::new(), "empty values are values");

    assert_eq!(store.delete(&key).await.unwrap(), 1);
    assert_eq!(store.get(&key).await.unwrap(), None);
    assert_eq!(store.delete(&key).await.unwrap(), 0, "deleting a missing key deletes nothing");
    assert_eq!(store.kind(), store.kind().to_lowercase());
}

/// Prefix reads return exactly the keys under the prefix, sorted; prefix deletes count.
pub async fn prefix_reads_are_sorted_and_bounded(store: Arc<dyn Store>, prefix: &str) {
    for name in ["b", "a/2", "c", "a/10", "a/1", "a"] {
        store.put(&format!("{prefix}{name}"), bytes(name), None).await.unwrap();
    }
    // Siblings that share the textual prefix but are outside the `a/` prefix.
    let sibling = format!("{}x", prefix.trim_end_matches('/'));
    store.put(&sibling, bytes("outside"), None).await.unwrap();

    let (kvs, revision) = store.get_prefix(prefix).await.unwrap();
    let keys: Vec<&str> = kvs.iter().map(|kv| &kv.key[prefix.len()..]).collect();
    assert_eq!(keys, ["a", "a/1", "a/10", "a/2", "b", "c"]);
    assert!(revision >= kvs.iter().map(|kv| kv.mod_revision).max().unwrap());

    let (under_a, _) = store.get_prefix(&format!("{prefix}a/")).await.unwrap();
    assert_eq!(under_a.len(), 3);
    assert_eq!(store.get_prefix(&format!("{prefix}zz")).await.unwrap().0, Vec::new());

    assert_eq!(store.delete_prefix(&format!("{prefix}a/")).await.unwrap(), 3);
    assert_eq!(store.delete_prefix(&format!("{prefix}a/")).await.unwrap(), 0);
    assert_eq!(store.delete_prefix(prefix).await.unwrap(), 3);
    assert_eq!(store.get(&sibling).await.unwrap().unwrap().value, bytes("outside"));
    store.delete(&sibling).await.unwrap();
}

/// Revisions strictly increase, only mutations consume them, and create/mod/version follow
/// etcd's rules (a recreated key starts over).
pub async fn revisions_and_versions(store: Arc<dyn Store>, prefix: &str) {
    let key = format!("{prefix}k");
    let first = store.put(&key, bytes("1"), None).await.unwrap();
    let second = store.put(&key, bytes("2"), None).await.unwrap();
    let other = store.put(&format!("{prefix}other"), bytes("x"), None).await.unwrap();
    assert!(first < second && second < other);

    let kv = store.get(&key).await.unwrap().unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (first, second, 2));

    let before_reads = current_revision(&*store, prefix).await;
    store.get(&key).await.unwrap();
    store.delete(&format!("{prefix}missing")).await.unwrap();
    store.txn(Txn::new().and_then([TxnOp::get(&key)])).await.unwrap();
    assert_eq!(current_revision(&*store, prefix).await, before_reads, "reads consume no revision");

    let delete = store.txn(Txn::new().and_then([TxnOp::delete(&key)])).await.unwrap();
    assert!(delete.revision > other);
    let recreated = store.put(&key, bytes("3"), None).await.unwrap();
    assert!(recreated > delete.revision);
    let kv = store.get(&key).await.unwrap().unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (recreated, recreated, 1));
}

/// Every compare target and operator, on a present and on a missing key.
pub async fn txn_compares_every_target_and_op(store: Arc<dyn Store>, prefix: &str) {
    let key = format!("{prefix}present");
    let missing = format!("{prefix}missing");
    let created = store.put(&key, bytes("a"), None).await.unwrap();
    let modified = store.put(&key, bytes("b"), None).await.unwrap();

    use CompareOp::{Equal, Greater, Less, NotEqual};
    let cases: Vec<(Compare, bool)> = vec![
        (Compare::create_revision(&key, Equal, created), true),
        (Compare::create_revision(&key, NotEqual, created), false),
        (Compare::create_revision(&key, Greater, created - 1), true),
        (Compare::create_revision(&key, Greater, created), false),
        (Compare::create_revision(&key, Less, created + 1), true),
        (Compare::create_revision(&key, Less, created), false),
        (Compare::mod_revision(&key, Equal, modified), true),
        (Compare::mod_revision(&key, NotEqual, created), true),
        (Compare::mod_revision(&key, Greater, created), true),
        (Compare::mod_revision(&key, Less, modified), false),
        (Compare::version(&key, Equal, 2), true),
        (Compare::version(&key, NotEqual, 2), false),
        (Compare::version(&key, Greater, 1), true),
        (Compare::version(&key, Less, 2), false),
        (Compare::value(&key, Equal, bytes("b")), true),
        (Compare::value(&key, NotEqual, bytes("b")), false),
        (Compare::value(&key, NotEqual, bytes("a")), true),
        (Compare::value(&key, Greater, bytes("a")), true),
        (Compare::value(&key, Less, bytes("c")), true),
        (Compare::value(&key, Less, bytes("a")), false),
        // A missing key has revisions and version 0...
        (Compare::create_revision(&missing, Equal, 0), true),
        (Compare::create_revision(&missing, Greater, 0), false),
        (Compare::mod_revision(&missing, Less, 1), true),
        (Compare::mod_revision(&missing, NotEqual, 0), false),
        (Compare::version(&missing, Equal, 0), true),
        (Compare::version(&missing, Greater, 0), false),
        // ...and no value: every value compare on it fails, whatever the operator.
        (Compare::value(&missing, Equal, Vec::new()), false),
        (Compare::value(&missing, NotEqual, bytes("x")), false),
        (Compare::value(&missing, Less, bytes("z")), false),
    ];
    for (compare, expected) in cases {
        let response = store.txn(Txn::new().when([compare.clone()])).await.unwrap();
        assert_eq!(response.succeeded, expected, "{compare:?}");
    }

    // Several compares must all hold.
    let both = Txn::new().when([Compare::version(&key, Equal, 2), Compare::create_revision(&missing, Equal, 0)]);
    assert!(store.txn(both).await.unwrap().succeeded);
    let one_fails = Txn::new().when([Compare::version(&key, Equal, 2), Compare::version(&missing, Equal, 1)]);
    assert!(!store.txn(one_fails).await.unwrap().succeeded);
}

/// A txn applies its branch atomically at one revision, answers each op in order, and its
/// reads see its own earlier writes.
pub async fn txn_multi_op_responses(store: Arc<dyn Store>, prefix: &str) {
    let a = format!("{prefix}a");
    let b = format!("{prefix}b");
    let gone = format!("{prefix}gone");
    let dir = format!("{prefix}dir/");
    store.put(&gone, bytes("x"), None).await.unwrap();
    store.put(&format!("{dir}1"), bytes("1"), None).await.unwrap();
    store.put(&format!("{dir}2"), bytes("2"), None).await.unwrap();

    let txn = Txn::new()
        .when([Compare::create_revision(&a, CompareOp::Equal, 0)])
        .and_then([
            TxnOp::put(&a, bytes("A"), None),
            TxnOp::put(&b, bytes("B"), None),
            TxnOp::get(&a),
            TxnOp::delete(&gone),
            TxnOp::delete_prefix(&dir),
            TxnOp::get_prefix(prefix),
            TxnOp::get(&gone),
        ])
        .or_else([TxnOp::get(&a)]);
    let response = store.txn(txn.clone()).await.unwrap();
    assert!(response.succeeded);
    let revision = response.revision;
    assert_eq!(response.responses.len(), 7);
    assert_eq!(response.responses[0], TxnOpResponse::Put { revision });
    assert_eq!(response.responses[1], TxnOpResponse::Put { revision });
    let read_a = response.kvs(2).unwrap();
    assert_eq!((read_a[0].value.as_slice(), read_a[0].create_revision), (&b"A"[..], revision));
    assert_eq!(response.responses[3], TxnOpResponse::Delete { deleted: 1 });
    assert_eq!(response.responses[4], TxnOpResponse::Delete { deleted: 2 });
    let listed: Vec<&str> = response.kvs(5).unwrap().iter().map(|kv| &kv.key[prefix.len()..]).collect();
    assert_eq!(listed, ["a", "b"]);
    assert_eq!(response.kvs(6).unwrap(), &[] as &[KeyValue]);

    // Everything happened at one revision.
    let kv_b = store.get(&b).await.unwrap().unwrap();
    assert_eq!(kv_b.mod_revision, revision);
    assert_eq!(current_revision(&*store, prefix).await, revision);

    // Run again: the compare fails, the failure branch runs, nothing is written.
    let response = store.txn(txn).await.unwrap();
    assert!(!response.succeeded);
    assert_eq!(response.revision, revision, "a failed txn with only reads writes nothing");
    assert_eq!(response.kvs(0).unwrap()[0].value, bytes("A"));

    // An empty txn succeeds and changes nothing.
    let empty = store.txn(Txn::new()).await.unwrap();
    assert!(empty.succeeded && empty.responses.is_empty());
}

/// Both backends refuse the same malformed txns, and a txn naming a dead lease applies
/// nothing.
pub async fn txn_rules_are_enforced(store: Arc<dyn Store>, prefix: &str) {
    let key = format!("{prefix}k");
    let too_many = Txn::new().and_then((0..=MAX_TXN_OPS).map(|i| TxnOp::get(format!("{prefix}{i}"))));
    assert!(matches!(store.txn(too_many).await, Err(StoreError::InvalidRequest { .. })));
    let at_limit = Txn::new().and_then((0..MAX_TXN_OPS).map(|i| TxnOp::get(format!("{prefix}{i}"))));
    assert!(store.txn(at_limit).await.unwrap().succeeded);

    let twice = Txn::new().and_then([TxnOp::put(&key, bytes("1"), None), TxnOp::put(&key, bytes("2"), None)]);
    assert!(matches!(store.txn(twice).await, Err(StoreError::InvalidRequest { .. })));

    let lease = store.grant_lease(SHORT_TTL).await.unwrap();
    store.revoke_lease(lease).await.unwrap();
    let dead_lease = Txn::new().and_then([
        TxnOp::put(format!("{prefix}plain"), bytes("p"), None),
        TxnOp::put(&key, bytes("leased"), Some(lease)),
    ]);
    assert!(matches!(store.txn(dead_lease).await, Err(StoreError::LeaseExpired { lease: l }) if l == lease));
    assert!(matches!(store.put(&key, bytes("v"), Some(lease)).await, Err(StoreError::LeaseExpired { .. })));
    assert_eq!(store.get_prefix(prefix).await.unwrap().0, Vec::new(), "nothing was applied");
}

/// Keepalives keep a lease (and its keys) past several TTLs.
pub async fn lease_keepalive_keeps_keys(store: Arc<dyn Store>, prefix: &str) {
    let key = format!("{prefix}leased");
    let lease = store.grant_lease(SHORT_TTL).await.unwrap();
    store.put(&key, bytes("v"), Some(lease)).await.unwrap();
    assert_eq!(store.get(&key).await.unwrap().unwrap().lease, Some(lease));
    for _ in 0..6 {
        tokio::time::sleep(SHORT_TTL / 3).await;
        let ttl = store.keep_alive(lease).await.unwrap();
        assert!(ttl >= Duration::from_secs(1), "keepalive reports the ttl: {ttl:?}");
    }
    assert!(store.get(&key).await.unwrap().is_some(), "kept alive for two ttls");
    store.revoke_lease(lease).await.unwrap();
}

/// An expired lease takes its keys with it in one revision, watchers see the deletes, and the
/// lease is gone for every later call.
pub async fn lease_expiry_deletes_attached_keys(store: Arc<dyn Store>, prefix: &str) {
    let lease = store.grant_lease(SHORT_TTL).await.unwrap();
    let leased = [format!("{prefix}leased/1"), format!("{prefix}leased/2")];
    for key in &leased {
        store.put(key, bytes("v"), Some(lease)).await.unwrap();
    }
    let plain = format!("{prefix}plain");
    store.put(&plain, bytes("stays"), None).await.unwrap();
    let mut watch = store.watch_prefix(prefix, None).await.unwrap();

    let events = next_events(&mut watch, 2).await;
    assert!(events.iter().all(|event| event.kind == WatchEventKind::Delete));
    let mut keys: Vec<&str> = events.iter().map(|event| event.kv.key.as_str()).collect();
    keys.sort();
    assert_eq!(keys, [leased[0].as_str(), leased[1].as_str()]);
    assert_eq!(events[0].revision(), events[1].revision(), "one revision for the whole lease");

    for key in &leased {
        assert_eq!(store.get(key).await.unwrap(), None);
    }
    assert_eq!(store.get(&plain).await.unwrap().unwrap().value, bytes("stays"));
    assert!(matches!(store.keep_alive(lease).await, Err(StoreError::LeaseExpired { lease: l }) if l == lease));
    assert!(matches!(store.put(&plain, bytes("x"), Some(lease)).await, Err(StoreError::LeaseExpired { .. })));
    assert!(matches!(store.revoke_lease(lease).await, Err(StoreError::LeaseExpired { .. })));
}

/// Revoking a lease deletes its keys at once, in one revision.
pub async fn lease_revoke_deletes_attached_keys(store: Arc<dyn Store>, prefix: &str) {
    let lease = store.grant_lease(LONG_TTL).await.unwrap();
    let other = store.grant_lease(LONG_TTL).await.unwrap();
    for index in 0..3 {
        store.put(&format!("{prefix}mine/{index}"), bytes("v"), Some(lease)).await.unwrap();
    }
    store.put(&format!("{prefix}theirs"), bytes("v"), Some(other)).await.unwrap();
    // Re-putting a key without a lease detaches it from the lease.
    store.put(&format!("{prefix}mine/0"), bytes("detached"), None).await.unwrap();
    let mut watch = store.watch_prefix(prefix, None).await.unwrap();

    store.revoke_lease(lease).await.unwrap();
    let (left, _) = store.get_prefix(prefix).await.unwrap();
    let left: Vec<&str> = left.iter().map(|kv| &kv.key[prefix.len()..]).collect();
    assert_eq!(left, ["mine/0", "theirs"]);

    let events = next_events(&mut watch, 2).await;
    assert!(events.iter().all(|event| event.kind == WatchEventKind::Delete));
    assert_eq!(events[0].revision(), events[1].revision());
    assert!(matches!(store.keep_alive(lease).await, Err(StoreError::LeaseExpired { .. })));
    store.keep_alive(other).await.unwrap();
    store.revoke_lease(other).await.unwrap();
}

/// A watch from now sees later puts and deletes under its prefix, in order, and nothing else.
pub async fn watch_from_now(store: Arc<dyn Store>, prefix: &str) {
    let before = store.put(&format!("{prefix}before"), bytes("old"), None).await.unwrap();
    let mut watch = store.watch_prefix(&format!("{prefix}w/"), None).await.unwrap();
    // Start revision 0 means "from now" too, as in etcd.
    let mut watch_zero = store.watch_prefix(&format!("{prefix}w/"), Some(0)).await.unwrap();

    let first = store.put(&format!("{prefix}w/a"), bytes("1"), None).await.unwrap();
    store.put(&format!("{prefix}outside"), bytes("x"), None).await.unwrap();
    let second = store.put(&format!("{prefix}w/a"), bytes("2"), None).await.unwrap();
    let deleted = store.txn(Txn::new().and_then([TxnOp::delete(format!("{prefix}w/a"))])).await.unwrap();
    let last = store.put(&format!("{prefix}w/b"), bytes("3"), None).await.unwrap();

    let events = next_events(&mut watch, 4).await;
    assert_eq!(next_events(&mut watch_zero, 4).await, events);
    assert!(events[0].revision() > before);
    let summary: Vec<(WatchEventKind, &str, Revision)> =
        events.iter().map(|event| (event.kind, &event.kv.key[prefix.len()..], event.revision())).collect();
    assert_eq!(
        summary,
        [
            (WatchEventKind::Put, "w/a", first),
            (WatchEventKind::Put, "w/a", second),
            (WatchEventKind::Delete, "w/a", deleted.revision),
            (WatchEventKind::Put, "w/b", last),
        ]
    );
    let update = &events[1].kv;
    assert_eq!((update.value.as_slice(), update.create_revision, update.version), (&b"2"[..], first, 2));
    let delete = &events[2].kv;
    assert!(delete.value.is_empty() && delete.version == 0 && delete.lease.is_none());
}

/// A watch from a past revision replays history from there on, then continues live.
pub async fn watch_from_past_revision(store: Arc<dyn Store>, prefix: &str) {
    let first = store.put(&format!("{prefix}1"), bytes("a"), None).await.unwrap();
    let second = store.put(&format!("{prefix}2"), bytes("b"), None).await.unwrap();
    let deleted = store.txn(Txn::new().and_then([TxnOp::delete(format!("{prefix}1"))])).await.unwrap();

    let mut watch = store.watch_prefix(prefix, Some(second)).await.unwrap();
    let history = next_events(&mut watch, 2).await;
    assert_eq!(history[0].kind, WatchEventKind::Put);
    assert_eq!((history[0].kv.key.as_str(), history[0].revision()), (format!("{prefix}2").as_str(), second));
    assert_eq!(history[1].kind, WatchEventKind::Delete);
    assert_eq!(history[1].revision(), deleted.revision);
    assert!(history[0].revision() > first);

    let live = store.put(&format!("{prefix}3"), bytes("c"), None).await.unwrap();
    let events = next_events(&mut watch, 1).await;
    assert_eq!(events[0].revision(), live);

    // A watch from the current revision + 1 (the usual "list, then watch" pattern) sees only
    // what comes after the list.
    let (_, listed_at) = store.get_prefix(prefix).await.unwrap();
    let mut after_list = store.watch_prefix(prefix, Some(listed_at + 1)).await.unwrap();
    let next = store.put(&format!("{prefix}4"), bytes("d"), None).await.unwrap();
    assert_eq!(next_events(&mut after_list, 1).await[0].revision(), next);
}

/// Two claimers, one wins; after the winner's lease expires the other claims with a larger
/// token, and the old holder's fenced writes fail.
pub async fn claims_fence_old_holders(store: Arc<dyn Store>, prefix: &str) {
    let claim_key = format!("{prefix}claims/task-1");
    let checkpoint = format!("{prefix}checkpoints/task-1");
    let first_lease = store.grant_lease(SHORT_TTL).await.unwrap();
    let second_lease = store.grant_lease(LONG_TTL).await.unwrap();

    let ClaimOutcome::Claimed(first_token) =
        claim::try_claim(&*store, &claim_key, bytes("worker-1"), first_lease).await.unwrap()
    else {
        panic!("the first claimer must win");
    };
    match claim::try_claim(&*store, &claim_key, bytes("worker-2"), second_lease).await.unwrap() {
        ClaimOutcome::HeldBy(holder) => {
            assert_eq!(holder.value, bytes("worker-1"));
            assert_eq!(holder.lease, Some(first_lease));
            assert_eq!(holder.create_revision, first_token.0);
        }
        other => panic!("the second claimer must lose, got {other:?}"),
    }
    claim::fenced_put(&*store, &claim_key, first_token, &checkpoint, bytes("from-1")).await.unwrap();

    // Worker 1 stops renewing (crash, partition): its lease runs out and worker 2 gets in.
    let waiting_since = std::time::Instant::now();
    let second_token = loop {
        match claim::try_claim(&*store, &claim_key, bytes("worker-2"), second_lease).await.unwrap() {
            ClaimOutcome::Claimed(token) => break token,
            ClaimOutcome::HeldBy(_) => {
                assert!(
                    waiting_since.elapsed() < PATIENCE,
                    "the first lease never expired, so the second claimer never got in"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert!(second_token > first_token, "tokens increase: {second_token} > {first_token}");

    claim::fenced_put(&*store, &claim_key, second_token, &checkpoint, bytes("from-2")).await.unwrap();
    let stale = claim::fenced_put(&*store, &claim_key, first_token, &checkpoint, bytes("stale")).await;
    match stale {
        Err(ClaimError::Fenced { claim_key: key, token }) => {
            assert_eq!((key.as_str(), token), (claim_key.as_str(), first_token));
        }
        other => panic!("the old holder must be fenced, got {other:?}"),
    }
    assert_eq!(store.get(&checkpoint).await.unwrap().unwrap().value, bytes("from-2"));
    assert!(claim::check_claim(&*store, &claim_key, first_token).await.unwrap_err().is_fenced());
    assert!(!claim::release(&*store, &claim_key, first_token).await.unwrap(), "not ours any more");
    assert!(claim::release(&*store, &claim_key, second_token).await.unwrap());
    assert_eq!(store.get(&claim_key).await.unwrap(), None);
    store.revoke_lease(second_lease).await.unwrap();
}

/// Two candidates; the leader's lease dies; the other takes over and the old one knows it is
/// not leader any more.
pub async fn election_fails_over_when_the_leader_lease_dies(store: Arc<dyn Store>, prefix: &str) {
    let leader_key = format!("{prefix}leader");
    let keeper_a = LeaseKeeper::start(store.clone(), SHORT_TTL).await.unwrap();
    let keeper_b = LeaseKeeper::start(store.clone(), SHORT_TTL).await.unwrap();
    let a = Election::new(store.clone(), &leader_key, bytes("a"), keeper_a.handle());
    let b = Arc::new(Election::new(store.clone(), &leader_key, bytes("b"), keeper_b.handle()));

    let token_a = a.campaign().await.unwrap();
    assert!(a.is_leader());
    assert_eq!(a.token(), Some(token_a));
    assert_eq!(a.campaign().await.unwrap(), token_a, "campaigning again as leader is a no-op");
    let mut a_is_leader = a.subscribe();

    let b_campaign = tokio::spawn({
        let b = b.clone();
        async move { b.campaign().await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!b.is_leader() && !b_campaign.is_finished(), "b waits while a leads");
    assert_eq!(b.leader().await.unwrap().unwrap().value, bytes("a"));

    // A's lease dies (as if its process froze and the store expired it).
    store.revoke_lease(keeper_a.lease_id()).await.unwrap();

    let token_b = tokio::time::timeout(PATIENCE, b_campaign).await.expect("b takes over").unwrap().unwrap();
    assert!(token_b > token_a);
    assert!(b.is_leader());
    assert_eq!(a.leader().await.unwrap().unwrap().value, bytes("b"));
    tokio::time::timeout(PATIENCE, a_is_leader.wait_for(|leader| !leader))
        .await
        .expect("a learns it lost leadership")
        .unwrap();
    assert!(!a.is_leader());

    // A's keeper learns the lease is gone at its next renewal; campaigning with it then fails.
    let mut state_a = keeper_a.subscribe();
    tokio::time::timeout(PATIENCE, state_a.wait_for(|state| !state.is_alive())).await.unwrap().unwrap();
    assert!(matches!(a.campaign().await, Err(ElectionError::LeaseLost { .. })));

    assert!(b.resign().await.unwrap());
    keeper_b.revoke().await.unwrap();
}

/// A leader that resigns hands over at once, and resigning when not leader is a no-op.
pub async fn election_resign_hands_over(store: Arc<dyn Store>, prefix: &str) {
    let leader_key = format!("{prefix}leader");
    let keeper_a = LeaseKeeper::start(store.clone(), LONG_TTL).await.unwrap();
    let keeper_b = LeaseKeeper::start(store.clone(), LONG_TTL).await.unwrap();
    let a = Election::new(store.clone(), &leader_key, bytes("a"), keeper_a.handle());
    let b = Arc::new(Election::new(store.clone(), &leader_key, bytes("b"), keeper_b.handle()));
    assert!(!b.resign().await.unwrap(), "not leader: nothing to resign");

    a.campaign().await.unwrap();
    let b_campaign = tokio::spawn({
        let b = b.clone();
        async move { b.campaign().await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(a.resign().await.unwrap());
    assert!(!a.is_leader());
    tokio::time::timeout(PATIENCE, b_campaign).await.expect("b takes over").unwrap().unwrap();
    assert!(b.is_leader());
    assert_eq!(b.leader().await.unwrap().unwrap().value, bytes("b"));
    assert!(b.resign().await.unwrap());
    assert_eq!(b.leader().await.unwrap(), None);
    keeper_a.revoke().await.unwrap();
    keeper_b.revoke().await.unwrap();
}

/// The lease keeper keeps a short lease alive well past its TTL, and flips to `Lost` when the
/// store drops the lease.
pub async fn lease_keeper_keeps_and_loses_leases(store: Arc<dyn Store>, prefix: &str) {
    let key = format!("{prefix}alive");
    let keeper = LeaseKeeper::start(store.clone(), SHORT_TTL).await.unwrap();
    store.put(&key, bytes("v"), Some(keeper.lease_id())).await.unwrap();
    let token = keeper.cancellation_token();
    tokio::time::sleep(SHORT_TTL * 2).await;
    assert_eq!(keeper.state(), LeaseState::Alive);
    assert!(keeper.handle().is_alive());
    assert!(store.get(&key).await.unwrap().is_some(), "renewed past two ttls");

    store.revoke_lease(keeper.lease_id()).await.unwrap();
    let reason = tokio::time::timeout(PATIENCE, keeper.handle().lost()).await.expect("keeper notices");
    assert_eq!(reason, LeaseLostReason::Expired);
    assert!(token.is_cancelled());
    assert_eq!(store.get(&key).await.unwrap(), None);
}

/// Tasks racing compare-and-swap increments on one counter lose no update.
pub async fn concurrent_cas_increments_lose_nothing(store: Arc<dyn Store>, prefix: &str) {
    const TASKS: u64 = 8;
    const INCREMENTS: u64 = 20;
    let counter = format!("{prefix}counter");
    let mut handles = Vec::new();
    for _ in 0..TASKS {
        let store = store.clone();
        let counter = counter.clone();
        handles.push(tokio::spawn(async move {
            let mut conflicts = 0u64;
            for _ in 0..INCREMENTS {
                loop {
                    let current = store.get(&counter).await.unwrap();
                    let (value, guard) = match &current {
                        Some(kv) => (
                            kv.value_str().unwrap().parse::<u64>().unwrap(),
                            Compare::mod_revision(&counter, CompareOp::Equal, kv.mod_revision),
                        ),
                        None => (0, Compare::create_revision(&counter, CompareOp::Equal, 0)),
                    };
                    let txn = Txn::new().when([guard]).and_then([TxnOp::put(&counter, (value + 1).to_string(), None)]);
                    if store.txn(txn).await.unwrap().succeeded {
                        break;
                    }
                    conflicts += 1;
                }
            }
            conflicts
        }));
    }
    for handle in handles {
        handle.await.unwrap();
    }
    let kv = store.get(&counter).await.unwrap().unwrap();
    assert_eq!(kv.value_str().unwrap(), (TASKS * INCREMENTS).to_string());
    assert_eq!(kv.version, (TASKS * INCREMENTS) as i64, "one successful write per increment");
}

/// A prefix read of thousands of keys (several of etcd's pages) returns every key once, in
/// order, as one snapshot at the revision it reports, while another task keeps writing under
/// the prefix: exactly the concurrent writes at or below that revision are in it.
pub async fn large_prefix_reads_are_one_snapshot(store: Arc<dyn Store>, prefix: &str) {
    const BULK: usize = 2500;
    let value = "v".repeat(512);
    for chunk in (0..BULK).collect::<Vec<_>>().chunks(100) {
        let ops = chunk.iter().map(|i| TxnOp::put(format!("{prefix}bulk/{i:05}"), format!("{i}:{value}"), None));
        assert!(store.txn(Txn::new().and_then(ops)).await.unwrap().succeeded);
    }

    // The writer puts `w/00000`, `w/00001`, ... and records the revision of each put.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (store, stop, prefix) = (store.clone(), stop.clone(), prefix.to_string());
        tokio::spawn(async move {
            let mut revisions = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || revisions.len() < 10 {
                let key = format!("{prefix}w/{:05}", revisions.len());
                revisions.push(store.put(&key, bytes("w"), None).await.unwrap());
            }
            revisions
        })
    };
    let mut reads = Vec::new();
    for _ in 0..5 {
        reads.push(store.get_prefix(prefix).await.unwrap());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.await.unwrap();

    for (kvs, revision) in reads {
        let keys: Vec<&str> = kvs.iter().map(|kv| kv.key.as_str()).collect();
        assert!(keys.windows(2).all(|pair| pair[0] < pair[1]), "keys sorted and unique");
        let bulk: Vec<&KeyValue> = kvs.iter().filter(|kv| kv.key.starts_with(&format!("{prefix}bulk/"))).collect();
        assert_eq!(bulk.len(), BULK, "every bulk key is read");
        for (i, kv) in bulk.iter().enumerate() {
            assert_eq!(kv.key, format!("{prefix}bulk/{i:05}"));
            assert_eq!(kv.value_str().unwrap(), format!("{i}:{value}"));
        }
        assert!(kvs.iter().all(|kv| kv.mod_revision <= revision), "a key newer than the read's revision {revision}");
        let concurrent = kvs.iter().filter(|kv| kv.key.starts_with(&format!("{prefix}w/"))).count();
        let expected = written.iter().filter(|put| **put <= revision).count();
        assert_eq!(concurrent, expected, "the concurrent writes at or below revision {revision}");
    }
    assert_eq!(store.delete_prefix(prefix).await.unwrap(), (BULK + written.len()) as u64);
}
