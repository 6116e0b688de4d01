//! Test support (feature `testing`): a real etcd server per test, and waiting helpers.
//!
//! # Layout
//!
//! - [`EtcdServer`]: runs the `etcd` binary on two free loopback ports with a temporary data
//!   directory; stop it and start it again on the same ports and data to test restarts.
//! - [`wait_until`]: polls an async predicate until it holds or a timeout panics.
//! - [`unique_prefix`]: a key prefix no other test uses.
//! - [`TxnHookStore`]: the embedded store with a [`BeforeTxn`] hook run before every txn, for
//!   tests that count, fence or interfere with the writes of the code under test.
//!
//! The etcd tests never skip: without the binary, [`EtcdServer::start`] panics and says how
//! to install it.

use std::fs::File;
use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::error::StoreError;
use crate::store::{
    EmbeddedStore, EtcdStore, EtcdStoreOptions, KeyValue, LeaseId, Revision, Store, Txn, TxnResponse, WatchStream,
};

/// How long etcd gets to start answering.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// A throwaway etcd server on loopback ports. Killed on drop.
pub struct EtcdServer {
    binary: PathBuf,
    client_port: u16,
    peer_port: u16,
    /// Holds the data directory and the log file; deleted on drop.
    root: tempfile::TempDir,
    child: Option<Child>,
}

impl EtcdServer {
    /// Starts etcd and waits until a client can talk to it.
    ///
    /// # Panics
    ///
    /// If the `etcd` binary is missing (with install instructions), or if etcd does not come
    /// up within 30 s (with the tail of its log).
    pub async fn start() -> EtcdServer {
        let binary = find_etcd_binary();
        let root = tempfile::Builder::new()
            .prefix("clustersync-etcd-")
            .tempdir()
            .expect("creating a temporary directory for etcd");
        let mut server = EtcdServer { binary, client_port: free_port(), peer_port: free_port(), root, child: None };
        server.spawn_and_wait().await;
        server
    }

    /// The client URL, e.g. `http://127.0.0.1:41234`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The client URLs, ready for [`EtcdStore::connect`].
    pub fn endpoints(&self) -> Vec<String> {
        vec![self.endpoint()]
    }

    /// Connects an [`EtcdStore`] with [`EtcdStoreOptions::for_test`].
    ///
    /// # Panics
    ///
    /// If the connection fails.
    pub async fn store(&self) -> EtcdStore {
        EtcdStore::connect(&self.endpoints(), EtcdStoreOptions::for_test())
            .await
            .unwrap_or_else(|error| panic!("connecting to the test etcd at {}: {error}", self.endpoint()))
    }

    /// The data directory (kept across [`stop`](Self::stop) and
    /// [`start_again`](Self::start_again)).
    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.root.path().join("etcd.log")
    }

    /// Kills etcd (like a crash: no graceful shutdown), keeping the data directory.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same ports and data directory, and waits until it answers.
    ///
    /// # Panics
    ///
    /// As [`start`](Self::start).
    pub async fn start_again(&mut self) {
        self.stop();
        self.spawn_and_wait().await;
    }

    async fn spawn_and_wait(&mut self) {
        let name = "clustersync-test";
        let client_url = self.endpoint();
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        let log = File::options().create(true).append(true).open(self.log_path()).expect("creating the etcd log file");
        let child = Command::new(&self.binary)
            .arg("--name")
            .arg(name)
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--listen-client-urls")
            .arg(&client_url)
            .arg("--advertise-client-urls")
            .arg(&client_url)
            .arg("--listen-peer-urls")
            .arg(&peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer_url)
            .arg("--initial-cluster")
            .arg(format!("{name}={peer_url}"))
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--initial-cluster-token")
            .arg(format!("clustersync-test-{}", self.client_port))
            // Debian's etcd 3.4 refuses to start on some architectures without this; harmless
            // elsewhere.
            .env("ETCD_UNSUPPORTED_ARCH", std::env::consts::ARCH)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("duplicating the etcd log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("starting {}: {error}", self.binary.display()));
        self.child = Some(child);

        let started = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "etcd exited during startup with {status}; log {}:\n{}",
                    self.log_path().display(),
                    log_tail(&self.log_path())
                );
            }
            let attempt = tokio::time::timeout(
                Duration::from_secs(2),
                EtcdStore::connect(&self.endpoints(), EtcdStoreOptions::for_test()),
            )
            .await;
            if let Ok(Ok(store)) = attempt
                && store.get("/clustersync-test-probe").await.is_ok()
            {
                return;
            }
            if started.elapsed() > STARTUP_TIMEOUT {
                panic!(
                    "etcd did not answer on {} within {STARTUP_TIMEOUT:?}; log {}:\n{}",
                    self.endpoint(),
                    self.log_path().display(),
                    log_tail(&self.log_path())
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Finds `etcd`: `$ETCD_BIN`, then `PATH`, then `/usr/bin/etcd`. Panics with install
/// instructions if it is nowhere, so etcd tests fail loudly rather than skip.
fn find_etcd_binary() -> PathBuf {
    if let Some(explicit) = std::env::var_os("ETCD_BIN") {
        let explicit = PathBuf::from(explicit);
        assert!(explicit.is_file(), "ETCD_BIN points to {}, which is not a file", explicit.display());
        return explicit;
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("etcd"))
        .chain([PathBuf::from("/usr/bin/etcd")])
        .find(|candidate| candidate.is_file());
    on_path.unwrap_or_else(|| {
        panic!(
            "the etcd binary was not found (looked at $ETCD_BIN, PATH and /usr/bin/etcd). \
             The etcd store tests need a real etcd server and never skip: install it with \
             `apt-get install -y etcd-server` (Debian/Ubuntu), or set ETCD_BIN to an etcd binary"
        )
    })
}

/// A free loopback port: bind port 0, read the port, release it. Racy in theory (another
/// process could take it before etcd binds), fine for tests.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a free loopback port");
    listener.local_addr().expect("reading the bound address").port()
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Polls `predicate` every 50 ms until it returns true.
///
/// # Panics
///
/// If it is still false after `timeout`, naming `what` was awaited.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut predicate: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if predicate().await {
            return;
        }
        if started.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A key prefix unique to one test: `/clustersync-test/{name}-{random}/`.
pub fn unique_prefix(name: &str) -> String {
    format!("/clustersync-test/{name}-{}/", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// What a [`TxnHookStore`] runs before every txn it forwards.
#[async_trait]
pub trait BeforeTxn: Send + Sync + 'static {
    /// Runs before `txn` reaches `inner`; an error is returned instead of the txn's outcome.
    async fn before_txn(&self, inner: &EmbeddedStore, txn: &Txn) -> Result<(), StoreError>;
}

/// An in-memory embedded store that runs `hook` before every txn and forwards everything else
/// unchanged.
pub struct TxnHookStore<H> {
    inner: EmbeddedStore,
    pub hook: H,
}

impl<H: BeforeTxn> TxnHookStore<H> {
    pub fn in_memory(hook: H) -> Self {
        Self { inner: EmbeddedStore::in_memory(), hook }
    }
}

#[async_trait]
impl<H: BeforeTxn> Store for TxnHookStore<H> {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.inner.get(key).await
    }
    async fn get_prefix(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        self.inner.get_prefix(prefix).await
    }
    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision, StoreError> {
        self.inner.put(key, value, lease).await
    }
    async fn delete(&self, key: &str) -> Result<u64, StoreError> {
        self.inner.delete(key).await
    }
    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StoreError> {
        self.inner.delete_prefix(prefix).await
    }
    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        self.hook.before_txn(&self.inner, &txn).await?;
        self.inner.txn(txn).await
    }
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        self.inner.grant_lease(ttl).await
    }
    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        self.inner.keep_alive(lease).await
    }
    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.inner.revoke_lease(lease).await
    }
    async fn watch_prefix(&self, prefix: &str, start: Option<Revision>) -> Result<WatchStream, StoreError> {
        self.inner.watch_prefix(prefix, start).await
    }
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
}
