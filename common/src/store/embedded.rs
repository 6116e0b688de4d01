//! The embedded store: a durable, single-process [`Store`] for running everything in one process.
//!
//! # Layout
//!
//! - [`EmbeddedStore`]: the public handle. Every call takes the state mutex, applies itself to
//!   the in-memory map, and (for a mutation) appends an encoded record to the pending buffer.
//! - the maintenance thread (`clustersync-store`): writes pending records to the write-ahead
//!   log and `fdatasync`s them in one go (group commit), compacts the log into a snapshot, and
//!   expires leases on a timer. It is a plain OS thread so that fsyncs never block the async
//!   runtime and the store works whichever runtime (or none) opened it.
//! - `codec`: the on-disk formats of the log and the snapshot.
//!
//! # Durability and visibility
//!
//! A call returns only once everything it observed is on disk: a writer waits until the log is
//! synced past its revision, and so does a reader that saw a not-yet-synced write. Watchers get
//! events only after they are durable. So nothing outside the store ever acts on a state that
//! a crash could take back, exactly as with etcd, where a reply means the raft log is synced.
//!
//! # Files in the store directory
//!
//! - `LOCK`: held with `flock` while the store is open; holds the owner's pid for humans.
//! - `store.wal`: records `[u32 len][u32 crc32][payload]`, each one committed revision. A torn
//!   tail (a crash mid-append) fails its length or CRC check and is truncated on open.
//! - `store.snapshot`: the whole map at one revision, written to `store.snapshot.tmp` and
//!   renamed into place; log records at or below its revision are skipped on replay.
//!
//! # Leases
//!
//! Leases live in memory only. On open, every key that was attached to a lease is deleted in
//! one revision, as if the lease had expired while the process was down; with etcd the same
//! happens once the TTL runs out. Claims therefore never outlive the process that made them.
//! Lease deadlines follow the wall clock (`std::time::Instant`), not tokio's clock, so a test
//! with `tokio::time::pause()` does not freeze them.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use parking_lot::{Condvar, Mutex, MutexGuard};
use tokio::sync::{broadcast, watch};
use tracing::{debug, error, info, warn};

use super::{
    KeyValue, LeaseId, Revision, Store, StoreError, Txn, TxnOp, TxnOpResponse, TxnResponse, WatchEvent, WatchEventKind,
    WatchStream, lease_ttl_seconds,
};

/// How many events the store keeps for watches that start in the past. A watch from an older
/// revision gets [`StoreError::Compacted`] and re-lists, as with a compacted etcd.
const WATCH_HISTORY_EVENTS: usize = 10_000;

/// Capacity of the live event broadcast, in revisions. A watcher that falls further behind
/// catches up from the history (or gets `Compacted` if that is gone too).
const WATCH_BROADCAST_CAPACITY: usize = 4_096;

/// The log is compacted into a snapshot once it is this many times the size of the live data...
const COMPACTION_FACTOR: u64 = 4;

/// ...and at least this big, so a tiny store does not rewrite its snapshot on every write.
const MIN_COMPACTION_BYTES: u64 = 4 * 1024 * 1024;

/// Rough per-key overhead counted in the live-data size, so many tiny keys still count.
const PER_KEY_OVERHEAD: u64 = 48;

const LOCK_FILE: &str = "LOCK";
const WAL_FILE: &str = "store.wal";
const SNAPSHOT_FILE: &str = "store.snapshot";
const SNAPSHOT_TMP_FILE: &str = "store.snapshot.tmp";

/// A durable single-process coordination store. See the module docs.
pub struct EmbeddedStore {
    inner: Arc<Inner>,
    /// The maintenance thread; joined on drop so the last records are synced and the directory
    /// lock is released before `drop` returns (a reopen right after works).
    maintenance: Option<JoinHandle<()>>,
}

/// State shared between the handle, the maintenance thread and (weakly) the watch streams.
struct Inner {
    state: Mutex<State>,
    /// Wakes the maintenance thread: records are pending, a lease was granted, or shutdown.
    wake: Condvar,
    /// The highest revision known to be on disk (or the failure that stopped the log).
    durable: watch::Sender<Durability>,
    /// Whether mutations go through the log (false for [`EmbeddedStore::in_memory`]).
    persistent: bool,
}

#[derive(Debug, Clone)]
struct Durability {
    revision: Revision,
    failure: Option<Failure>,
}

/// Why the log stopped: once a write or fsync fails, the store refuses every later call,
/// because the on-disk state no longer matches memory.
#[derive(Debug, Clone)]
struct Failure {
    path: PathBuf,
    kind: std::io::ErrorKind,
    message: String,
}

impl Failure {
    fn to_error(&self) -> StoreError {
        StoreError::Io {
            path: self.path.clone(),
            source: std::io::Error::new(self.kind, format!("the store stopped after a failed write: {}", self.message)),
        }
    }
}

/// Events committed at one revision.
#[derive(Debug)]
struct EventBatch {
    revision: Revision,
    events: Vec<WatchEvent>,
}

/// A live lease.
#[derive(Debug)]
struct LeaseEntry {
    ttl: Duration,
    expires_at: Instant,
    /// Keys attached to the lease, deleted together when it expires.
    keys: BTreeSet<String>,
}

/// Mutations applied in memory but not yet synced to the log.
#[derive(Debug, Default)]
struct Pending {
    /// Framed log records, ready to append.
    wal: Vec<u8>,
    batches: Vec<Arc<EventBatch>>,
    last_revision: Revision,
}

struct State {
    kvs: BTreeMap<String, KeyValue>,
    /// Last committed revision (applied in memory).
    revision: Revision,
    /// Last revision synced to disk and published to watchers.
    durable_revision: Revision,
    leases: HashMap<LeaseId, LeaseEntry>,
    pending: Pending,
    /// Recent published batches, contiguous up to `durable_revision`.
    history: VecDeque<Arc<EventBatch>>,
    history_events: usize,
    /// The oldest revision a watch can start from.
    history_start: Revision,
    events: broadcast::Sender<Arc<EventBatch>>,
    /// Approximate size of the live data, to decide when to compact the log.
    live_bytes: u64,
    failure: Option<Failure>,
    shutdown: bool,
    persistent: bool,
}

/// The mutations of one revision, collected while a call applies them.
struct Changes {
    revision: Revision,
    record: codec::RecordWriter,
    events: Vec<WatchEvent>,
}

impl Changes {
    fn new(revision: Revision) -> Self {
        Changes { revision, record: codec::RecordWriter::new(revision), events: Vec::new() }
    }
}

fn entry_size(key: &str, value: &[u8]) -> u64 {
    (key.len() + value.len()) as u64 + PER_KEY_OVERHEAD
}

impl State {
    fn new(persistent: bool) -> Self {
        let (events, _) = broadcast::channel(WATCH_BROADCAST_CAPACITY);
        State {
            kvs: BTreeMap::new(),
            revision: 0,
            durable_revision: 0,
            leases: HashMap::new(),
            pending: Pending::default(),
            history: VecDeque::new(),
            history_events: 0,
            history_start: 1,
            events,
            live_bytes: 0,
            failure: None,
            shutdown: false,
            persistent,
        }
    }

    /// Writes `key` at `revision`, keeping the lease index and the size estimate in step.
    fn apply_put(&mut self, key: &str, value: Vec<u8>, lease: Option<LeaseId>, revision: Revision) -> KeyValue {
        let new_size = entry_size(key, &value);
        let kv = match self.kvs.get_mut(key) {
            Some(existing) => {
                self.live_bytes = self.live_bytes.saturating_sub(entry_size(key, &existing.value)) + new_size;
                if existing.lease != lease
                    && let Some(old) = existing.lease
                    && let Some(entry) = self.leases.get_mut(&old)
                {
                    entry.keys.remove(key);
                }
                existing.value = value;
                existing.mod_revision = revision;
                existing.version += 1;
                existing.lease = lease;
                existing.clone()
            }
            None => {
                self.live_bytes += new_size;
                let kv = KeyValue {
                    key: key.to_string(),
                    value,
                    create_revision: revision,
                    mod_revision: revision,
                    version: 1,
                    lease,
                };
                self.kvs.insert(key.to_string(), kv.clone());
                kv
            }
        };
        if let Some(lease) = lease
            && let Some(entry) = self.leases.get_mut(&lease)
        {
            entry.keys.insert(key.to_string());
        }
        kv
    }

    /// Deletes `key`; returns the removed entry.
    fn apply_delete(&mut self, key: &str) -> Option<KeyValue> {
        let removed = self.kvs.remove(key)?;
        self.live_bytes = self.live_bytes.saturating_sub(entry_size(key, &removed.value));
        if let Some(lease) = removed.lease
            && let Some(entry) = self.leases.get_mut(&lease)
        {
            entry.keys.remove(key);
        }
        Some(removed)
    }

    fn record_put(&mut self, changes: &mut Changes, key: &str, value: Vec<u8>, lease: Option<LeaseId>) {
        changes.record.put(key, &value, lease);
        let kv = self.apply_put(key, value, lease, changes.revision);
        changes.events.push(WatchEvent { kind: WatchEventKind::Put, kv });
    }

    fn record_delete(&mut self, changes: &mut Changes, key: &str) -> bool {
        if self.apply_delete(key).is_none() {
            return false;
        }
        changes.record.delete(key);
        changes.events.push(WatchEvent {
            kind: WatchEventKind::Delete,
            kv: KeyValue {
                key: key.to_string(),
                value: Vec::new(),
                create_revision: 0,
                mod_revision: changes.revision,
                version: 0,
                lease: None,
            },
        });
        true
    }

    fn keys_with_prefix(&self, prefix: &str) -> Vec<String> {
        self.range_prefix(prefix).map(|kv| kv.key.clone()).collect()
    }

    fn range_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a KeyValue> + 'a {
        self.kvs
            .range::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
            .take_while(move |(key, _)| key.starts_with(prefix))
            .map(|(_, kv)| kv)
    }

    /// Makes the changes the new committed revision. Nothing to do if nothing changed: like
    /// etcd, a call that mutates nothing does not consume a revision.
    fn commit(&mut self, changes: Changes) {
        if changes.events.is_empty() {
            return;
        }
        debug_assert_eq!(changes.revision, self.revision + 1, "revisions are consecutive");
        self.revision = changes.revision;
        let batch = Arc::new(EventBatch { revision: changes.revision, events: changes.events });
        if self.persistent {
            changes.record.finish_into(&mut self.pending.wal);
            self.pending.batches.push(batch);
            self.pending.last_revision = changes.revision;
        } else {
            self.durable_revision = changes.revision;
            self.publish(batch);
        }
    }

    /// Hands a durable batch to the watchers and keeps it in the bounded history.
    fn publish(&mut self, batch: Arc<EventBatch>) {
        self.history_events += batch.events.len();
        self.history.push_back(batch.clone());
        while self.history_events > WATCH_HISTORY_EVENTS {
            let Some(oldest) = self.history.pop_front() else { break };
            self.history_events -= oldest.events.len();
            self.history_start = oldest.revision + 1;
        }
        // No receivers is fine: nobody is watching.
        let _ = self.events.send(batch);
    }

    /// Deletes the keys of every lease whose TTL ran out, one revision per lease (as etcd
    /// revokes each expired lease separately).
    fn expire_leases(&mut self, now: Instant) {
        if self.failure.is_some() {
            return;
        }
        let mut expired: Vec<(Instant, LeaseId)> = self
            .leases
            .iter()
            .filter(|(_, entry)| entry.expires_at <= now)
            .map(|(id, entry)| (entry.expires_at, *id))
            .collect();
        expired.sort();
        for (_, lease) in expired {
            let keys = self.remove_lease(lease);
            debug!(%lease, keys, "lease expired");
        }
    }

    /// Removes a lease and deletes its keys in one revision; returns how many keys went.
    fn remove_lease(&mut self, lease: LeaseId) -> usize {
        let Some(entry) = self.leases.remove(&lease) else { return 0 };
        let mut changes = Changes::new(self.revision + 1);
        for key in &entry.keys {
            self.record_delete(&mut changes, key);
        }
        let deleted = changes.events.len();
        self.commit(changes);
        deleted
    }

    fn next_lease_expiry(&self) -> Option<Instant> {
        self.leases.values().map(|entry| entry.expires_at).min()
    }

    fn check_open(&self) -> Result<(), StoreError> {
        match &self.failure {
            Some(failure) => Err(failure.to_error()),
            None if self.shutdown => Err(StoreError::Closed),
            None => Ok(()),
        }
    }

    fn apply_txn(&mut self, txn: Txn) -> Result<TxnResponse, StoreError> {
        let succeeded = txn.compares.iter().all(|compare| compare.evaluate(self.kvs.get(&compare.key)));
        let ops = if succeeded { txn.success } else { txn.failure };
        // Check every lease before applying anything, so a txn naming a dead lease has no
        // effect at all (etcd rejects it the same way).
        for op in &ops {
            if let TxnOp::Put { lease: Some(lease), .. } = op
                && !self.leases.contains_key(lease)
            {
                return Err(StoreError::LeaseExpired { lease: *lease });
            }
        }
        let mut changes = Changes::new(self.revision + 1);
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match op {
                TxnOp::Put { key, value, lease } => {
                    self.record_put(&mut changes, &key, value, lease);
                    TxnOpResponse::Put { revision: changes.revision }
                }
                TxnOp::Delete { key } => {
                    let deleted = self.record_delete(&mut changes, &key);
                    TxnOpResponse::Delete { deleted: u64::from(deleted) }
                }
                TxnOp::DeletePrefix { prefix } => {
                    let mut deleted = 0;
                    for key in self.keys_with_prefix(&prefix) {
                        deleted += u64::from(self.record_delete(&mut changes, &key));
                    }
                    TxnOpResponse::Delete { deleted }
                }
                TxnOp::Get { key } => TxnOpResponse::Get { kvs: self.kvs.get(&key).cloned().into_iter().collect() },
                TxnOp::GetPrefix { prefix } => {
                    TxnOpResponse::Get { kvs: self.range_prefix(&prefix).cloned().collect() }
                }
            };
            responses.push(response);
        }
        self.commit(changes);
        Ok(TxnResponse { succeeded, revision: self.revision, responses })
    }
}

impl Inner {
    /// Locks the state for a call: refuses a closed or failed store, and expires due leases
    /// first so every call sees leases as they are now, not as of the last timer tick.
    fn lock_for_call(&self) -> Result<MutexGuard<'_, State>, StoreError> {
        let mut state = self.state.lock();
        state.check_open()?;
        state.expire_leases(Instant::now());
        Ok(state)
    }

    /// Waits until everything up to `revision` is durable (see "durability and visibility").
    async fn settle(&self, revision: Revision) -> Result<(), StoreError> {
        if !self.persistent {
            return Ok(());
        }
        // The maintenance thread may be asleep waiting for a lease deadline.
        self.wake.notify_one();
        let mut durable = self.durable.subscribe();
        let durability = durable
            .wait_for(|durability| durability.revision >= revision || durability.failure.is_some())
            .await
            .map_err(|_| StoreError::Closed)?;
        if durability.revision >= revision {
            return Ok(());
        }
        match &durability.failure {
            Some(failure) => Err(failure.to_error()),
            None => Err(StoreError::Closed),
        }
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir`: takes the directory lock, loads the snapshot,
    /// replays the log (truncating a torn tail), and deletes the keys of leases that did not
    /// survive the restart.
    ///
    /// Blocking file IO (reads the whole log); call it at startup, or from
    /// `spawn_blocking` inside a busy runtime.
    ///
    /// # Errors
    ///
    /// [`StoreError::AlreadyOpen`] if another process (or another handle in this process)
    /// has the directory open; [`StoreError::Io`] / [`StoreError::Corrupt`] for unreadable
    /// files.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let io_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        let lock = acquire_lock(dir)?;

        let snapshot_tmp = dir.join(SNAPSHOT_TMP_FILE);
        if snapshot_tmp.is_file() {
            // A crash while writing a snapshot: the rename never happened, the old snapshot
            // and the full log are still authoritative.
            std::fs::remove_file(&snapshot_tmp).map_err(io_error(&snapshot_tmp))?;
        }

        let mut state = State::new(true);
        let snapshot_path = dir.join(SNAPSHOT_FILE);
        let snapshot_revision = match std::fs::read(&snapshot_path) {
            Ok(bytes) => codec::load_snapshot(&snapshot_path, &bytes, &mut state)?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => 0,
            Err(error) => return Err(StoreError::Io { path: snapshot_path, source: error }),
        };
        state.revision = snapshot_revision;

        let wal_path = dir.join(WAL_FILE);
        let mut wal_file =
            OpenOptions::new().read(true).append(true).create(true).open(&wal_path).map_err(io_error(&wal_path))?;
        let mut wal_bytes = Vec::new();
        wal_file.read_to_end(&mut wal_bytes).map_err(io_error(&wal_path))?;
        let replay = codec::replay_wal(&wal_path, &wal_bytes, snapshot_revision, &mut state)?;
        if replay.valid_len < wal_bytes.len() as u64 {
            warn!(
                path = %wal_path.display(),
                offset = replay.valid_len,
                dropped_bytes = wal_bytes.len() as u64 - replay.valid_len,
                "truncating torn write-ahead log tail"
            );
            wal_file.set_len(replay.valid_len).map_err(io_error(&wal_path))?;
            wal_file.sync_all().map_err(io_error(&wal_path))?;
        }
        let mut wal =
            Wal { wal_path, snapshot_path, dir: dir.to_path_buf(), file: wal_file, len: replay.valid_len, _lock: lock };

        // Leases do not survive a restart: delete every leased key now, in one revision, as if
        // the leases had expired while the process was down. This is what makes a claim held
        // by the previous incarnation claimable again, like with etcd after the TTL.
        let leased: Vec<String> = state.kvs.values().filter(|kv| kv.lease.is_some()).map(|kv| kv.key.clone()).collect();
        if !leased.is_empty() {
            let mut changes = Changes::new(state.revision + 1);
            for key in &leased {
                state.record_delete(&mut changes, key);
            }
            state.commit(changes);
            let pending = std::mem::take(&mut state.pending);
            wal.append(&pending.wal)?;
        }
        state.durable_revision = state.revision;
        state.history_start = state.revision + 1;
        info!(
            dir = %dir.display(),
            revision = state.revision,
            keys = state.kvs.len(),
            replayed_records = replay.records,
            expired_leased_keys = leased.len(),
            "opened embedded store"
        );
        Ok(Self::start(state, Some(wal)))
    }

    /// A store that keeps nothing on disk, for tests and throwaway runs. Same semantics
    /// otherwise (revisions, leases, watches).
    pub fn in_memory() -> Self {
        Self::start(State::new(false), None)
    }

    fn start(state: State, wal: Option<Wal>) -> Self {
        let durable_revision = state.durable_revision;
        let (durable, _) = watch::channel(Durability { revision: durable_revision, failure: None });
        let inner =
            Arc::new(Inner { persistent: state.persistent, state: Mutex::new(state), wake: Condvar::new(), durable });
        let thread_inner = inner.clone();
        let maintenance = std::thread::Builder::new()
            .name("clustersync-store".into())
            .spawn(move || maintenance_loop(&thread_inner, wal))
            .expect("spawning the embedded store maintenance thread");
        EmbeddedStore { inner, maintenance: Some(maintenance) }
    }

    /// The current revision (committed in memory; may be ahead of disk for a moment).
    pub fn revision(&self) -> Revision {
        self.inner.state.lock().revision
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        self.inner.state.lock().shutdown = true;
        self.inner.wake.notify_one();
        if let Some(maintenance) = self.maintenance.take()
            && maintenance.join().is_err()
        {
            error!("embedded store maintenance thread panicked");
        }
    }
}

/// The body of the maintenance thread: sync pending records, compact, expire leases.
fn maintenance_loop(inner: &Inner, mut wal: Option<Wal>) {
    let mut state = inner.state.lock();
    loop {
        state.expire_leases(Instant::now());

        if !state.pending.batches.is_empty() && state.failure.is_none() {
            let pending = std::mem::take(&mut state.pending);
            let image =
                wal.as_ref().filter(|wal| wal.needs_compaction(pending.wal.len() as u64, state.live_bytes)).map(|_| {
                    codec::SnapshotImage { revision: state.revision, entries: state.kvs.values().cloned().collect() }
                });
            // Disk work happens without the lock: callers keep applying (and queueing) new
            // mutations meanwhile, which is what makes the next sync a group commit.
            let result = MutexGuard::unlocked(&mut state, || match (&mut wal, image) {
                (Some(wal), Some(image)) => wal.compact(&image),
                (Some(wal), None) => wal.append(&pending.wal),
                (None, _) => Ok(()),
            });
            match result {
                Ok(()) => {
                    state.durable_revision = pending.last_revision;
                    for batch in pending.batches {
                        state.publish(batch);
                    }
                    inner.durable.send_replace(Durability { revision: pending.last_revision, failure: None });
                }
                Err(store_error) => {
                    error!(error = %store_error, "embedded store write failed; refusing further calls");
                    let failure = match &store_error {
                        StoreError::Io { path, source } => {
                            Failure { path: path.clone(), kind: source.kind(), message: source.to_string() }
                        }
                        other => Failure {
                            path: PathBuf::new(),
                            kind: std::io::ErrorKind::Other,
                            message: other.to_string(),
                        },
                    };
                    state.failure = Some(failure.clone());
                    inner.durable.send_replace(Durability { revision: state.durable_revision, failure: Some(failure) });
                }
            }
            continue;
        }

        if state.shutdown {
            break;
        }
        match state.next_lease_expiry() {
            Some(deadline) => {
                inner.wake.wait_until(&mut state, deadline);
            }
            None => inner.wake.wait(&mut state),
        }
    }
    drop(state);
    // Dropping the log also drops the lock file handle, releasing the directory.
    drop(wal);
}

/// The open log, the snapshot location and the directory lock.
struct Wal {
    dir: PathBuf,
    wal_path: PathBuf,
    snapshot_path: PathBuf,
    file: File,
    /// Current log length in bytes.
    len: u64,
    /// Held for as long as the store is open; `flock` is released when it is closed.
    _lock: File,
}

impl Wal {
    fn io_error(&self, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + use<> {
        let path = path.to_path_buf();
        move |source| StoreError::Io { path, source }
    }

    /// Appends framed records and syncs them.
    fn append(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.file.write_all(bytes).map_err(self.io_error(&self.wal_path))?;
        // fdatasync: the data and the file length, which is all a log append needs.
        self.file.sync_data().map_err(self.io_error(&self.wal_path))?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    fn needs_compaction(&self, incoming: u64, live_bytes: u64) -> bool {
        self.len + incoming > (COMPACTION_FACTOR * live_bytes).max(MIN_COMPACTION_BYTES)
    }

    /// Writes the snapshot atomically (tmp file, fsync, rename, fsync dir), then empties the
    /// log. A crash between the rename and the truncation is harmless: replay skips records
    /// at or below the snapshot revision.
    fn compact(&mut self, image: &codec::SnapshotImage) -> Result<(), StoreError> {
        let started = Instant::now();
        let tmp_path = self.dir.join(SNAPSHOT_TMP_FILE);
        let bytes = codec::encode_snapshot(image);
        let mut tmp = File::create(&tmp_path).map_err(self.io_error(&tmp_path))?;
        tmp.write_all(&bytes).map_err(self.io_error(&tmp_path))?;
        tmp.sync_all().map_err(self.io_error(&tmp_path))?;
        drop(tmp);
        std::fs::rename(&tmp_path, &self.snapshot_path).map_err(self.io_error(&self.snapshot_path))?;
        sync_dir(&self.dir)?;
        let log_len_before = self.len;
        self.file.set_len(0).map_err(self.io_error(&self.wal_path))?;
        self.file.sync_all().map_err(self.io_error(&self.wal_path))?;
        self.len = 0;
        info!(
            revision = image.revision,
            keys = image.entries.len(),
            snapshot_bytes = bytes.len(),
            log_bytes = log_len_before,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "compacted embedded store log into a snapshot"
        );
        Ok(())
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    // Makes the rename itself durable.
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(|source| StoreError::Io { path: dir.to_path_buf(), source })
}

/// Takes an exclusive `flock` on `dir/LOCK`. `flock` is tied to the open file, so it is
/// released however the process ends (no stale lock after `kill -9`), and it also conflicts
/// with a second open of the same directory inside this process.
fn acquire_lock(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|source| StoreError::Io { path: path.clone(), source })?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(errno) if errno == rustix::io::Errno::WOULDBLOCK => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            warn!(dir = %dir.display(), holder_pid = holder.trim(), "store directory is locked");
            return Err(StoreError::AlreadyOpen { dir: dir.to_path_buf() });
        }
        Err(errno) => {
            return Err(StoreError::Io { path, source: std::io::Error::from(errno) });
        }
    }
    // Best effort: the pid is only for a human looking at a locked directory.
    let _ = file.set_len(0).and_then(|()| writeln!(file, "{}", std::process::id()));
    Ok(file)
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let (kv, revision) = {
            let state = self.inner.lock_for_call()?;
            (state.kvs.get(key).cloned(), state.revision)
        };
        self.inner.settle(revision).await?;
        Ok(kv)
    }

    async fn get_prefix(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        let (kvs, revision) = {
            let state = self.inner.lock_for_call()?;
            (state.range_prefix(prefix).cloned().collect::<Vec<_>>(), state.revision)
        };
        self.inner.settle(revision).await?;
        Ok((kvs, revision))
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision, StoreError> {
        let revision = {
            let mut state = self.inner.lock_for_call()?;
            if let Some(lease) = lease
                && !state.leases.contains_key(&lease)
            {
                return Err(StoreError::LeaseExpired { lease });
            }
            let mut changes = Changes::new(state.revision + 1);
            state.record_put(&mut changes, key, value, lease);
            state.commit(changes);
            state.revision
        };
        self.inner.settle(revision).await?;
        Ok(revision)
    }

    async fn delete(&self, key: &str) -> Result<u64, StoreError> {
        let (deleted, revision) = {
            let mut state = self.inner.lock_for_call()?;
            let mut changes = Changes::new(state.revision + 1);
            let deleted = state.record_delete(&mut changes, key);
            state.commit(changes);
            (u64::from(deleted), state.revision)
        };
        self.inner.settle(revision).await?;
        Ok(deleted)
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StoreError> {
        let (deleted, revision) = {
            let mut state = self.inner.lock_for_call()?;
            let mut changes = Changes::new(state.revision + 1);
            let mut deleted = 0;
            for key in state.keys_with_prefix(prefix) {
                deleted += u64::from(state.record_delete(&mut changes, &key));
            }
            state.commit(changes);
            (deleted, state.revision)
        };
        self.inner.settle(revision).await?;
        Ok(deleted)
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        txn.validate()?;
        let response = {
            let mut state = self.inner.lock_for_call()?;
            state.apply_txn(txn)?
        };
        self.inner.settle(response.revision).await?;
        Ok(response)
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let ttl = Duration::from_secs(lease_ttl_seconds(ttl).unsigned_abs());
        let lease = {
            let mut state = self.inner.lock_for_call()?;
            let lease = loop {
                // Random ids, like etcd's, so an id from before a restart is never reissued
                // to someone else while a stale holder might still present it.
                let candidate = LeaseId(rand::random_range(1..i64::MAX));
                if !state.leases.contains_key(&candidate) {
                    break candidate;
                }
            };
            state.leases.insert(lease, LeaseEntry { ttl, expires_at: Instant::now() + ttl, keys: BTreeSet::new() });
            lease
        };
        // The maintenance thread must now wake up by this lease's deadline.
        self.inner.wake.notify_one();
        Ok(lease)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        let mut state = self.inner.lock_for_call()?;
        let entry = state.leases.get_mut(&lease).ok_or(StoreError::LeaseExpired { lease })?;
        entry.expires_at = Instant::now() + entry.ttl;
        Ok(entry.ttl)
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        let revision = {
            let mut state = self.inner.lock_for_call()?;
            if !state.leases.contains_key(&lease) {
                return Err(StoreError::LeaseExpired { lease });
            }
            let keys = state.remove_lease(lease);
            debug!(%lease, keys, "lease revoked");
            state.revision
        };
        self.inner.settle(revision).await
    }

    async fn watch_prefix(&self, prefix: &str, start_revision: Option<Revision>) -> Result<WatchStream, StoreError> {
        let state = self.inner.lock_for_call()?;
        // Like etcd, a start revision of 0 (or below) means "from now".
        let start_revision = start_revision.filter(|revision| *revision > 0);
        let next_revision = start_revision.unwrap_or(state.durable_revision + 1);
        if next_revision < state.history_start {
            return Err(StoreError::Compacted { revision: state.history_start });
        }
        let backlog = state.history.iter().filter(|batch| batch.revision >= next_revision).cloned().collect();
        // Subscribing under the state lock, where batches are also published, means the
        // backlog and the live feed neither overlap nor leave a gap.
        let receiver = state.events.subscribe();
        drop(state);
        let cursor = WatchCursor {
            prefix: prefix.to_string(),
            next_revision,
            backlog,
            receiver,
            inner: Arc::downgrade(&self.inner),
            done: false,
        };
        Ok(futures::stream::unfold(cursor, |mut cursor| async move {
            let item = cursor.next_batch().await?;
            Some((item, cursor))
        })
        .boxed())
    }

    fn kind(&self) -> &'static str {
        "embedded"
    }
}

/// Where one watch stream is: the next revision it owes its consumer.
struct WatchCursor {
    prefix: String,
    next_revision: Revision,
    backlog: VecDeque<Arc<EventBatch>>,
    receiver: broadcast::Receiver<Arc<EventBatch>>,
    /// Weak, so an open watch does not keep a dropped store (and its directory lock) alive.
    inner: Weak<Inner>,
    done: bool,
}

impl WatchCursor {
    async fn next_batch(&mut self) -> Option<Result<Vec<WatchEvent>, StoreError>> {
        if self.done {
            return None;
        }
        loop {
            let batch = match self.backlog.pop_front() {
                Some(batch) => batch,
                None => match self.receiver.recv().await {
                    Ok(batch) => batch,
                    Err(broadcast::error::RecvError::Lagged(skipped)) => {
                        debug!(skipped, next_revision = self.next_revision, "watch lagged; catching up from history");
                        if let Err(error) = self.resync() {
                            self.done = true;
                            return Some(Err(error));
                        }
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        self.done = true;
                        return Some(Err(StoreError::Closed));
                    }
                },
            };
            if batch.revision < self.next_revision {
                continue;
            }
            self.next_revision = batch.revision + 1;
            let events: Vec<WatchEvent> =
                batch.events.iter().filter(|event| event.kv.key.starts_with(&self.prefix)).cloned().collect();
            if !events.is_empty() {
                return Some(Ok(events));
            }
        }
    }

    /// Re-reads what the broadcast dropped from the history and resubscribes.
    fn resync(&mut self) -> Result<(), StoreError> {
        let inner = self.inner.upgrade().ok_or(StoreError::Closed)?;
        let state = inner.state.lock();
        if self.next_revision < state.history_start {
            return Err(StoreError::Compacted { revision: state.history_start });
        }
        self.backlog = state.history.iter().filter(|batch| batch.revision >= self.next_revision).cloned().collect();
        self.receiver = state.events.subscribe();
        Ok(())
    }
}

/// On-disk formats. Integers are little-endian.
///
/// Log frame: `[u32 payload_len][u32 crc32(payload)][payload]`, payload:
/// `[u8 version=1][i64 revision][u32 op_count]` then per op either
/// `[u8 1][str key][bytes value][i64 lease or 0]` (put) or `[u8 2][str key]` (delete),
/// where `str`/`bytes` are `[u32 len][bytes]`.
///
/// Snapshot: `b"CSSNAP01"[u64 body_len][u32 crc32(body)][body]`, body:
/// `[i64 revision][u64 count]` then per key
/// `[str key][bytes value][i64 create][i64 mod][i64 version][i64 lease or 0]`.
mod codec {
    use std::path::Path;

    use super::{KeyValue, LeaseId, Revision, State, StoreError};

    const RECORD_VERSION: u8 = 1;
    const OP_PUT: u8 = 1;
    const OP_DELETE: u8 = 2;
    const FRAME_HEADER: usize = 8;
    /// A length above this cannot be a real record: treat it as a torn or garbage tail.
    const MAX_RECORD_BYTES: usize = 1 << 30;
    const SNAPSHOT_MAGIC: &[u8; 8] = b"CSSNAP01";

    /// Encodes the mutations of one revision.
    pub(super) struct RecordWriter {
        payload: Vec<u8>,
        op_count: u32,
    }

    impl RecordWriter {
        pub(super) fn new(revision: Revision) -> Self {
            let mut payload = Vec::with_capacity(64);
            payload.push(RECORD_VERSION);
            payload.extend_from_slice(&revision.to_le_bytes());
            payload.extend_from_slice(&0u32.to_le_bytes());
            RecordWriter { payload, op_count: 0 }
        }

        pub(super) fn put(&mut self, key: &str, value: &[u8], lease: Option<LeaseId>) {
            self.payload.push(OP_PUT);
            put_bytes(&mut self.payload, key.as_bytes());
            put_bytes(&mut self.payload, value);
            self.payload.extend_from_slice(&lease.map_or(0, |lease| lease.0).to_le_bytes());
            self.op_count += 1;
        }

        pub(super) fn delete(&mut self, key: &str) {
            self.payload.push(OP_DELETE);
            put_bytes(&mut self.payload, key.as_bytes());
            self.op_count += 1;
        }

        /// Frames the record and appends it to `out`.
        pub(super) fn finish_into(mut self, out: &mut Vec<u8>) {
            self.payload[9..13].copy_from_slice(&self.op_count.to_le_bytes());
            out.extend_from_slice(&(self.payload.len() as u32).to_le_bytes());
            out.extend_from_slice(&crc32fast::hash(&self.payload).to_le_bytes());
            out.extend_from_slice(&self.payload);
        }
    }

    fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
    }

    /// Bounds-checked reader over a decoded payload.
    struct Reader<'a> {
        bytes: &'a [u8],
        position: usize,
    }

    impl<'a> Reader<'a> {
        fn take(&mut self, len: usize) -> Result<&'a [u8], String> {
            let end = self.position.checked_add(len).filter(|end| *end <= self.bytes.len());
            let end = end.ok_or_else(|| format!("truncated field at byte {}", self.position))?;
            let slice = &self.bytes[self.position..end];
            self.position = end;
            Ok(slice)
        }

        fn u8(&mut self) -> Result<u8, String> {
            Ok(self.take(1)?[0])
        }

        fn u32(&mut self) -> Result<u32, String> {
            Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
        }

        fn u64(&mut self) -> Result<u64, String> {
            Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
        }

        fn i64(&mut self) -> Result<i64, String> {
            Ok(i64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
        }

        fn bytes(&mut self) -> Result<Vec<u8>, String> {
            let len = self.u32()? as usize;
            Ok(self.take(len)?.to_vec())
        }

        fn string(&mut self) -> Result<String, String> {
            String::from_utf8(self.bytes()?).map_err(|_| "key is not utf-8".to_string())
        }

        fn finished(&self) -> bool {
            self.position == self.bytes.len()
        }
    }

    fn lease_of(raw: i64) -> Option<LeaseId> {
        (raw != 0).then_some(LeaseId(raw))
    }

    /// What replaying the log found.
    pub(super) struct Replay {
        /// Length of the valid prefix of the log; anything after is a torn tail.
        pub(super) valid_len: u64,
        pub(super) records: u64,
    }

    /// Applies every valid log record above `snapshot_revision` to `state`.
    ///
    /// A frame whose length or CRC does not check out ends the replay: with appends synced
    /// batch by batch, only the last, unacknowledged batch can be torn.
    pub(super) fn replay_wal(
        path: &Path,
        bytes: &[u8],
        snapshot_revision: Revision,
        state: &mut State,
    ) -> Result<Replay, StoreError> {
        let corrupt = |offset: usize, reason: String| StoreError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("record at byte {offset}: {reason}"),
        };
        let mut offset = 0;
        let mut records = 0;
        while bytes.len() - offset >= FRAME_HEADER {
            let len = u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes")) as usize;
            let crc = u32::from_le_bytes(bytes[offset + 4..offset + 8].try_into().expect("4 bytes"));
            let start = offset + FRAME_HEADER;
            if len > MAX_RECORD_BYTES || bytes.len() - start < len {
                break;
            }
            let payload = &bytes[start..start + len];
            if crc32fast::hash(payload) != crc {
                break;
            }
            // From here on the CRC matched: a record that does not decode is real damage, not
            // a torn write, and must not be silently dropped.
            let mut reader = Reader { bytes: payload, position: 0 };
            let version = reader.u8().map_err(|reason| corrupt(offset, reason))?;
            if version != RECORD_VERSION {
                return Err(corrupt(offset, format!("unknown record version {version}")));
            }
            let revision = reader.i64().map_err(|reason| corrupt(offset, reason))?;
            let op_count = reader.u32().map_err(|reason| corrupt(offset, reason))?;
            let apply = revision > snapshot_revision;
            if apply && revision <= state.revision {
                return Err(corrupt(offset, format!("revision {revision} does not follow {}", state.revision)));
            }
            for _ in 0..op_count {
                let tag = reader.u8().map_err(|reason| corrupt(offset, reason))?;
                let key = reader.string().map_err(|reason| corrupt(offset, reason))?;
                match tag {
                    OP_PUT => {
                        let value = reader.bytes().map_err(|reason| corrupt(offset, reason))?;
                        let lease = reader.i64().map_err(|reason| corrupt(offset, reason))?;
                        if apply {
                            state.apply_put(&key, value, lease_of(lease), revision);
                        }
                    }
                    OP_DELETE => {
                        if apply {
                            state.apply_delete(&key);
                        }
                    }
                    other => return Err(corrupt(offset, format!("unknown op tag {other}"))),
                }
            }
            if !reader.finished() {
                return Err(corrupt(offset, "trailing bytes after the last op".into()));
            }
            if apply {
                state.revision = revision;
                records += 1;
            }
            offset = start + len;
        }
        Ok(Replay { valid_len: offset as u64, records })
    }

    /// The whole map at one revision.
    pub(super) struct SnapshotImage {
        pub(super) revision: Revision,
        pub(super) entries: Vec<KeyValue>,
    }

    pub(super) fn encode_snapshot(image: &SnapshotImage) -> Vec<u8> {
        let mut body = Vec::with_capacity(16 + image.entries.len() * 64);
        body.extend_from_slice(&image.revision.to_le_bytes());
        body.extend_from_slice(&(image.entries.len() as u64).to_le_bytes());
        for kv in &image.entries {
            put_bytes(&mut body, kv.key.as_bytes());
            put_bytes(&mut body, &kv.value);
            body.extend_from_slice(&kv.create_revision.to_le_bytes());
            body.extend_from_slice(&kv.mod_revision.to_le_bytes());
            body.extend_from_slice(&kv.version.to_le_bytes());
            body.extend_from_slice(&kv.lease.map_or(0, |lease| lease.0).to_le_bytes());
        }
        let mut out = Vec::with_capacity(body.len() + 20);
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Loads a snapshot into an empty `state`; returns its revision. The snapshot is renamed
    /// into place whole, so any mismatch is corruption, not a torn write.
    pub(super) fn load_snapshot(path: &Path, bytes: &[u8], state: &mut State) -> Result<Revision, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt { path: path.to_path_buf(), reason };
        let mut header = Reader { bytes, position: 0 };
        if header.take(8).map_err(corrupt)? != SNAPSHOT_MAGIC {
            return Err(corrupt("not a clustersync snapshot (bad magic)".into()));
        }
        let body_len = header.u64().map_err(corrupt)? as usize;
        let crc = header.u32().map_err(corrupt)?;
        let body = header.take(body_len).map_err(corrupt)?;
        if !header.finished() || crc32fast::hash(body) != crc {
            return Err(corrupt("checksum or length mismatch".into()));
        }
        let mut reader = Reader { bytes: body, position: 0 };
        let revision = reader.i64().map_err(corrupt)?;
        let count = reader.u64().map_err(corrupt)?;
        for _ in 0..count {
            let key = reader.string().map_err(corrupt)?;
            let value = reader.bytes().map_err(corrupt)?;
            let create_revision = reader.i64().map_err(corrupt)?;
            let mod_revision = reader.i64().map_err(corrupt)?;
            let version = reader.i64().map_err(corrupt)?;
            let lease = lease_of(reader.i64().map_err(corrupt)?);
            state.live_bytes += super::entry_size(&key, &value);
            state.kvs.insert(key.clone(), KeyValue { key, value, create_revision, mod_revision, version, lease });
        }
        if !reader.finished() {
            return Err(corrupt("trailing bytes after the last key".into()));
        }
        Ok(revision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_with_record(revision: Revision, build: impl FnOnce(&mut codec::RecordWriter)) -> Vec<u8> {
        let mut record = codec::RecordWriter::new(revision);
        build(&mut record);
        let mut out = Vec::new();
        record.finish_into(&mut out);
        out
    }

    #[test]
    fn wal_records_round_trip_and_torn_tails_stop_replay() {
        let mut log = state_with_record(1, |record| record.put("a", b"1", None));
        log.extend(state_with_record(2, |record| {
            record.put("b", b"2", Some(LeaseId(9)));
            record.delete("a");
        }));
        let valid_len = log.len() as u64;
        let mut third = state_with_record(3, |record| record.put("c", b"3", None));
        third.truncate(third.len() - 1);
        log.extend(third);

        let mut state = State::new(true);
        let replay = codec::replay_wal(Path::new("wal"), &log, 0, &mut state).unwrap();
        assert_eq!(replay.valid_len, valid_len);
        assert_eq!(replay.records, 2);
        assert_eq!(state.revision, 2);
        assert!(!state.kvs.contains_key("a"));
        let b = state.kvs.get("b").unwrap();
        assert_eq!((b.create_revision, b.version, b.lease), (2, 1, Some(LeaseId(9))));
    }

    #[test]
    fn wal_crc_mismatch_is_a_torn_tail() {
        let mut log = state_with_record(1, |record| record.put("a", b"1", None));
        let good = log.len() as u64;
        let mut bad = state_with_record(2, |record| record.put("a", b"2", None));
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        log.extend(bad);
        let mut state = State::new(true);
        let replay = codec::replay_wal(Path::new("wal"), &log, 0, &mut state).unwrap();
        assert_eq!(replay.valid_len, good);
        assert_eq!(state.kvs["a"].value, b"1");
    }

    #[test]
    fn wal_records_at_or_below_the_snapshot_are_skipped() {
        let mut log = state_with_record(5, |record| record.put("a", b"old", None));
        log.extend(state_with_record(6, |record| record.put("a", b"new", None)));
        let mut state = State::new(true);
        state.revision = 5;
        let replay = codec::replay_wal(Path::new("wal"), &log, 5, &mut state).unwrap();
        assert_eq!(replay.records, 1);
        assert_eq!(state.kvs["a"].value, b"new");
    }

    #[test]
    fn snapshot_round_trips_and_detects_damage() {
        let image = codec::SnapshotImage {
            revision: 42,
            entries: vec![KeyValue {
                key: "k".into(),
                value: b"v".to_vec(),
                create_revision: 3,
                mod_revision: 40,
                version: 7,
                lease: None,
            }],
        };
        let bytes = codec::encode_snapshot(&image);
        let mut state = State::new(true);
        assert_eq!(codec::load_snapshot(Path::new("snap"), &bytes, &mut state).unwrap(), 42);
        assert_eq!(state.kvs["k"], image.entries[0]);

        let mut damaged = bytes.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        let mut state = State::new(true);
        assert!(matches!(
            codec::load_snapshot(Path::new("snap"), &damaged, &mut state),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[tokio::test]
    async fn log_is_compacted_into_a_snapshot_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let value = vec![7u8; 64 * 1024];
        {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            // ~6 MiB of log for 64 KiB of live data: past the compaction threshold.
            for round in 0..100 {
                store.put("big", value.clone(), None).await.unwrap();
                store.put(&format!("small/{round}"), b"x".to_vec(), None).await.unwrap();
            }
            assert!(dir.path().join(SNAPSHOT_FILE).is_file());
            let wal_len = std::fs::metadata(dir.path().join(WAL_FILE)).unwrap().len();
            assert!(wal_len < MIN_COMPACTION_BYTES, "log was emptied by compaction: {wal_len}");
        }
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(store.revision(), 200);
        let big = store.get("big").await.unwrap().unwrap();
        assert_eq!((big.version, big.value.len()), (100, value.len()));
        assert_eq!(store.get_prefix("small/").await.unwrap().0.len(), 100);
    }

    #[tokio::test]
    async fn in_memory_lease_expiry_is_driven_by_the_timer() {
        let store = EmbeddedStore::in_memory();
        let lease = store.grant_lease(Duration::from_secs(1)).await.unwrap();
        store.put("k", b"v".to_vec(), Some(lease)).await.unwrap();
        let mut watch = store.watch_prefix("k", None).await.unwrap();
        // No call touches the store meanwhile: only the maintenance thread can expire it.
        let events = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("lease expiry delete event")
            .unwrap()
            .unwrap();
        assert_eq!(events[0].kind, WatchEventKind::Delete);
        assert_eq!(events[0].kv.key, "k");
    }
}
