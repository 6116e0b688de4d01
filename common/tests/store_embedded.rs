//! The embedded store: the shared conformance suite (on disk and in memory), plus what only
//! the embedded store has: reopening, the write-ahead log, the directory lock.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clustersync_common::claim::{self, ClaimOutcome};
use clustersync_common::store::{EmbeddedStore, Store, StoreError, Txn};
use clustersync_common::testing::{BeforeTxn, TxnHookStore};
use futures::StreamExt;

async fn on_disk() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    (Arc::new(store), dir)
}

async fn in_memory() -> (Arc<dyn Store>, ()) {
    (Arc::new(EmbeddedStore::in_memory()), ())
}

mod durable {
    use super::*;
    clustersync_common::store_conformance_tests!(on_disk);
}

mod memory {
    use super::*;
    clustersync_common::store_conformance_tests!(in_memory);
}

fn wal_path(dir: &Path) -> std::path::PathBuf {
    dir.join("store.wal")
}

#[tokio::test]
async fn reopen_after_drop_keeps_data_and_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let last = {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store.put("a", b"1".to_vec(), None).await.unwrap();
        store.put("a", b"2".to_vec(), None).await.unwrap();
        store.put("b", b"3".to_vec(), None).await.unwrap();
        store.delete("b").await.unwrap();
        store.put("c", b"4".to_vec(), None).await.unwrap()
    };
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let (kvs, revision) = store.get_prefix("").await.unwrap();
    assert_eq!(revision, last);
    let a = store.get("a").await.unwrap().unwrap();
    assert_eq!((a.value.as_slice(), a.create_revision, a.version), (&b"2"[..], 1, 2));
    assert_eq!(store.get("b").await.unwrap(), None);
    assert_eq!(kvs.len(), 2);
    assert_eq!(store.put("d", b"5".to_vec(), None).await.unwrap(), last + 1, "revisions continue");
}

#[tokio::test]
async fn leased_keys_are_gone_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (claim_token, last) = {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let lease = store.grant_lease(Duration::from_secs(3600)).await.unwrap();
        store.put("plain", b"p".to_vec(), None).await.unwrap();
        store.put("leased/1", b"l".to_vec(), Some(lease)).await.unwrap();
        let ClaimOutcome::Claimed(token) =
            claim::try_claim(&store, "claims/1", b"old-process".to_vec(), lease).await.unwrap()
        else {
            panic!("claim must win on an empty store");
        };
        (token, store.revision())
    };
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(store.get("leased/1").await.unwrap(), None);
    assert_eq!(store.get("claims/1").await.unwrap(), None);
    assert_eq!(store.get("plain").await.unwrap().unwrap().value, b"p");
    assert_eq!(store.revision(), last + 1, "the lease cleanup is one revision");

    // The previous incarnation's claim is free again, with a larger token.
    let lease = store.grant_lease(Duration::from_secs(60)).await.unwrap();
    let ClaimOutcome::Claimed(token) =
        claim::try_claim(&store, "claims/1", b"new-process".to_vec(), lease).await.unwrap()
    else {
        panic!("claim of the dead process must be free");
    };
    assert!(token > claim_token);

    // The cleanup itself was durable, and the new claim (leased too) goes the same way.
    drop(store);
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(store.get("claims/1").await.unwrap(), None);
    assert_eq!(store.get("plain").await.unwrap().unwrap().value, b"p");
    assert_eq!(store.revision(), last + 3, "cleanup, new claim, cleanup");
}

#[tokio::test]
async fn a_torn_wal_tail_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store.put("kept", b"1".to_vec(), None).await.unwrap();
        store.put("torn", b"2".to_vec(), None).await.unwrap();
    }
    let wal = wal_path(dir.path());
    let full_len = std::fs::metadata(&wal).unwrap().len();
    // Cut the last record in half, as a crash in the middle of an append would.
    std::fs::OpenOptions::new().write(true).open(&wal).unwrap().set_len(full_len - 3).unwrap();

    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(store.get("kept").await.unwrap().unwrap().value, b"1");
    assert_eq!(store.get("torn").await.unwrap(), None);
    assert_eq!(store.revision(), 1);
    let truncated_len = std::fs::metadata(&wal).unwrap().len();
    assert!(truncated_len < full_len - 3, "the partial record was cut off");

    // New writes go after the truncation point and survive another reopen.
    store.put("after", b"3".to_vec(), None).await.unwrap();
    drop(store);
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(store.get("after").await.unwrap().unwrap().mod_revision, 2);
}

#[tokio::test]
async fn garbage_after_the_last_record_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store.put("k", b"v".to_vec(), None).await.unwrap();
    }
    let wal = wal_path(dir.path());
    let good_len = std::fs::metadata(&wal).unwrap().len();
    let mut file = std::fs::OpenOptions::new().append(true).open(&wal).unwrap();
    // A plausible-looking header whose CRC does not match its payload.
    file.write_all(&[12, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]).unwrap();
    drop(file);

    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(store.get("k").await.unwrap().unwrap().value, b"v");
    assert_eq!(std::fs::metadata(&wal).unwrap().len(), good_len);
}

#[tokio::test]
async fn a_second_open_of_the_same_dir_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let error = EmbeddedStore::open(dir.path()).err().expect("second open must fail");
    assert!(matches!(&error, StoreError::AlreadyOpen { dir: locked } if locked == dir.path()));
    let message = error.to_string();
    assert!(message.contains(&dir.path().display().to_string()), "names the dir: {message}");
    assert!(!error.is_retryable());

    drop(store);
    EmbeddedStore::open(dir.path()).expect("the lock is released when the store is dropped");
}

#[tokio::test]
async fn watch_from_before_the_kept_history_is_compacted() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store.put("w/a", b"1".to_vec(), None).await.unwrap();
        store.put("w/b", b"2".to_vec(), None).await.unwrap();
    }
    // History is in memory only: after a reopen, only watches from now on can be served.
    let store = EmbeddedStore::open(dir.path()).unwrap();
    match store.watch_prefix("w/", Some(1)).await {
        Err(StoreError::Compacted { revision }) => assert_eq!(revision, 3),
        Ok(_) => panic!("a watch from before the reopen must be compacted"),
        Err(other) => panic!("unexpected error {other}"),
    }
    let mut watch = store.watch_prefix("w/", Some(3)).await.unwrap();
    store.put("w/c", b"3".to_vec(), None).await.unwrap();
    let events = watch.next().await.unwrap().unwrap();
    assert_eq!(events[0].kv.key, "w/c");

    // In memory, the bounded history drops the oldest revisions.
    let store = EmbeddedStore::in_memory();
    for index in 0..10_050 {
        store.put(&format!("h/{}", index % 10), b"x".to_vec(), None).await.unwrap();
    }
    assert!(matches!(store.watch_prefix("h/", Some(1)).await, Err(StoreError::Compacted { .. })));
    let mut recent = store.watch_prefix("h/", Some(10_000)).await.unwrap();
    assert_eq!(recent.next().await.unwrap().unwrap()[0].kv.mod_revision, 10_000);
}

#[tokio::test]
async fn a_slow_watcher_catches_up_from_history() {
    let store = EmbeddedStore::in_memory();
    let mut watch = store.watch_prefix("s/", None).await.unwrap();
    // More revisions than the live broadcast holds, while the watcher reads nothing.
    for index in 0..5_000 {
        store.put(&format!("s/{index}"), b"x".to_vec(), None).await.unwrap();
    }
    let mut seen = 0;
    while seen < 5_000 {
        let batch = watch.next().await.unwrap().unwrap();
        for event in batch {
            seen += 1;
            assert_eq!(event.kv.mod_revision, seen, "no gap, no duplicate");
        }
    }
}

#[tokio::test]
async fn concurrent_writes_are_all_durable() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let mut writers = Vec::new();
        for writer in 0..16 {
            let store = store.clone();
            writers.push(tokio::spawn(async move {
                for index in 0..50 {
                    store.put(&format!("c/{writer:02}/{index:02}"), vec![7; 100], None).await.unwrap();
                }
            }));
        }
        for writer in writers {
            writer.await.unwrap();
        }
    }
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let (kvs, revision) = store.get_prefix("c/").await.unwrap();
    assert_eq!((kvs.len(), revision), (800, 800));
}

/// Env var that turns the test binary into the writer process of the crash test.
const CRASH_CHILD_DIR: &str = "CLUSTERSYNC_CRASH_CHILD_DIR";

/// The child half of [`acknowledged_writes_survive_kill_9`]: writes keys forever, printing
/// each index once `put` has returned. Does nothing when run as a normal test.
#[tokio::test]
async fn crash_child_writer() {
    let Some(dir) = std::env::var_os(CRASH_CHILD_DIR) else { return };
    let store = EmbeddedStore::open(Path::new(&dir)).unwrap();
    let mut stdout = std::io::stdout();
    for index in 0u64.. {
        store.put(&format!("crash/{index:08}"), vec![1; 64], None).await.unwrap();
        writeln!(stdout, "acked {index}").unwrap();
        stdout.flush().unwrap();
    }
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child_writer", "--nocapture", "--test-threads=1"])
        .env(CRASH_CHILD_DIR, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let started = Instant::now();
    let mut acked = None;
    while let Some(Ok(line)) = lines.next() {
        if let Some(index) = line.strip_prefix("acked ") {
            acked = Some(index.parse::<u64>().unwrap());
            if acked >= Some(200) {
                break;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(60), "child writer too slow");
    }
    // SIGKILL mid-stream: whatever append was in flight is torn.
    child.kill().unwrap();
    child.wait().unwrap();
    let acked = acked.expect("the child acknowledged writes");

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let (kvs, _) = store.get_prefix("crash/").await.unwrap();
        assert!(kvs.len() as u64 > acked, "every acknowledged write survived: {} <= {acked}", kvs.len());
        for (index, kv) in kvs.iter().enumerate() {
            assert_eq!(kv.key, format!("crash/{index:08}"), "no gaps");
        }
    });
}

/// Not an assertion: prints how many fenced writes per second the durable embedded store
/// takes from concurrent writers on this machine (each write a txn guarded by a claim).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn measure_fenced_write_rate() {
    const WRITERS: usize = 64;
    const WRITES_PER_WRITER: usize = 60;
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let lease = store.grant_lease(Duration::from_secs(60)).await.unwrap();
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let claim_key = format!("claims/{writer:04}");
        let ClaimOutcome::Claimed(token) = claim::try_claim(&*store, &claim_key, b"me".to_vec(), lease).await.unwrap()
        else {
            panic!("fresh claim");
        };
        let store = store.clone();
        writers.push(async move {
            for index in 0..WRITES_PER_WRITER {
                let value = format!("{{\"resume_token\":\"{index:016}\",\"copied_docs\":{index}}}");
                claim::fenced_put(&*store, &claim_key, token, &format!("checkpoints/{writer:04}"), value.into_bytes())
                    .await
                    .unwrap();
            }
        });
    }
    let started = Instant::now();
    futures::future::join_all(writers).await;
    let elapsed = started.elapsed();
    let total = WRITERS * WRITES_PER_WRITER;
    let concurrent_rate = total as f64 / elapsed.as_secs_f64();

    let started = Instant::now();
    let sequential = 200;
    for index in 0..sequential {
        let claim_key = "claims/0000";
        let token = match store.get(claim_key).await.unwrap() {
            Some(kv) => claim::FencingToken(kv.create_revision),
            None => panic!("claim exists"),
        };
        claim::fenced_put(&*store, claim_key, token, "checkpoints/seq", index.to_string().into_bytes()).await.unwrap();
    }
    let sequential_rate = f64::from(sequential) / started.elapsed().as_secs_f64();
    eprintln!(
        "embedded store (durable): {concurrent_rate:.0} fenced puts/s with {WRITERS} concurrent writers, \
         {sequential_rate:.0} fenced puts/s from one sequential writer"
    );
}

/// Counts txns, to tell a waiting candidate from a spinning one.
#[derive(Default)]
struct CountTxns(std::sync::atomic::AtomicU64);

#[async_trait::async_trait]
impl BeforeTxn for CountTxns {
    async fn before_txn(&self, _: &EmbeddedStore, _: &Txn) -> Result<(), StoreError> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_waits_quietly_when_the_leader_key_history_is_compacted() {
    use clustersync_common::election::Election;
    use clustersync_common::lease::LeaseKeeper;

    let counting = Arc::new(TxnHookStore::in_memory(CountTxns::default()));
    let store: Arc<dyn Store> = counting.clone();
    let keeper_a = LeaseKeeper::start(store.clone(), Duration::from_secs(30)).await.unwrap();
    let keeper_b = LeaseKeeper::start(store.clone(), Duration::from_secs(30)).await.unwrap();
    let a = Election::new(store.clone(), "leader", b"a".to_vec(), keeper_a.handle());
    let b = Arc::new(Election::new(store.clone(), "leader", b"b".to_vec(), keeper_b.handle()));
    a.campaign().await.unwrap();
    // Push the leader key's revision out of the kept watch history.
    for index in 0..10_100 {
        store.put(&format!("noise/{}", index % 7), b"x".to_vec(), None).await.unwrap();
    }
    let b_campaign = tokio::spawn({
        let b = b.clone();
        async move { b.campaign().await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!b_campaign.is_finished(), "b waits for a");
    let txns_while_waiting = counting.hook.0.load(std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        counting.hook.0.load(std::sync::atomic::Ordering::SeqCst),
        txns_while_waiting,
        "a waiting candidate watches; it does not retry its claim in a loop"
    );
    assert!(a.resign().await.unwrap());
    tokio::time::timeout(Duration::from_secs(10), b_campaign).await.unwrap().unwrap().unwrap();
    assert!(b.is_leader());
}
