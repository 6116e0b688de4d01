//! Listener, connections, shared server state and fault controls (drop connections,
//! step-down, oplog truncation), plus the in-process handle [`FakeMongod`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU16, Ordering};
use std::time::{Duration, Instant};

use bson::oid::ObjectId;
use bson::{Document, doc};
use parking_lot::{Mutex, MutexGuard};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

use crate::commands;
use crate::commands::cursor::Cursor;
use crate::failpoint::FailPoints;
use crate::oplog::{Kind, Oplog, Pending};
use crate::session::Sessions;
use crate::storage::Catalog;
use crate::wire;

/// Server options.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Listen address (default "127.0.0.1").
    pub host: String,
    /// Port (0 = any free port).
    pub port: u16,
    /// Replica set name (default "rs0").
    pub repl_set_name: String,
    /// Oplog size bound in MB (default 192).
    pub oplog_size_mb: u64,
    /// Client application names treated as holding `bypassWriteBlockingMode`.
    pub write_block_bypass_app_names: Vec<String>,
    /// Interval of the idle no-op writer (default 10 s).
    pub noop_interval: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            host: "127.0.0.1".into(),
            port: 0,
            repl_set_name: "rs0".into(),
            oplog_size_mb: 192,
            write_block_bypass_app_names: vec!["clustersync".into()],
            noop_interval: Duration::from_secs(10),
        }
    }
}

/// Mutable server state, guarded by one mutex that is never held across I/O.
///
/// Long commands hold it for as long as they run, so async code never waits for it on a
/// runtime worker thread ([`Shared::lock_state`]), and `hello` and reply headers read the
/// few fields they need from a [`StateView`] instead of waiting ([`Shared::view`]).
pub struct State {
    /// Databases and collections.
    pub catalog: Catalog,
    /// The oplog.
    pub oplog: Oplog,
    /// Open cursors by id.
    pub cursors: HashMap<i64, Cursor>,
    /// Next cursor id.
    pub next_cursor_id: i64,
    /// Sessions and transactions.
    pub sessions: Sessions,
    /// `setUserWriteBlockMode` state.
    pub write_blocked: bool,
    /// While set and in the future, the node is a secondary.
    pub stepped_down_until: Option<Instant>,
    /// topologyVersion counter.
    pub topology_counter: i64,
    /// Current election id.
    pub election_id: ObjectId,
    /// Election term.
    pub term: i64,
    /// Last time anything was written to the oplog.
    pub last_write: Instant,
    /// Until then, awaitable hellos answer at once (after a state-change error, so drivers
    /// that marked the server Unknown rediscover it without waiting for `maxAwaitTimeMS`).
    pub fast_hello_until: Option<Instant>,
    /// TTL monitor interval (`setParameter: {ttlMonitorSleepSecs}`; 60 s like mongod).
    pub ttl_interval: Duration,
    /// Last TTL pass.
    pub last_ttl: Instant,
}

impl State {
    /// True while stepped down.
    pub fn is_secondary(&self) -> bool {
        self.stepped_down_until.is_some_and(|t| Instant::now() < t)
    }
}

/// The fields of [`State`] that `hello` and every reply's `$clusterTime` need.
#[derive(Debug, Clone)]
pub struct StateView {
    /// See [`State::stepped_down_until`].
    pub stepped_down_until: Option<Instant>,
    /// The last optime.
    pub last_ts: bson::Timestamp,
    /// Election term.
    pub term: i64,
    /// topologyVersion counter.
    pub topology_counter: i64,
    /// Current election id.
    pub election_id: ObjectId,
    /// See [`State::fast_hello_until`].
    pub fast_hello_until: Option<Instant>,
}

impl StateView {
    /// The view of the current state.
    pub fn of(st: &State) -> StateView {
        StateView {
            stepped_down_until: st.stepped_down_until,
            last_ts: st.oplog.last_ts(),
            term: st.term,
            topology_counter: st.topology_counter,
            election_id: st.election_id,
            fast_hello_until: st.fast_hello_until,
        }
    }

    /// True while stepped down.
    pub fn is_secondary(&self) -> bool {
        self.stepped_down_until.is_some_and(|t| Instant::now() < t)
    }
}

/// Runs blocking work (waiting for the state lock, or a long command) so that the runtime's
/// worker threads keep serving other connections meanwhile: on a multi-threaded runtime the
/// worker hands its other tasks to a fresh thread for the duration. Elsewhere it just runs.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Clears the published view when dropped (before the state guard it was published for).
struct Published<'a>(&'a Mutex<Option<StateView>>);

impl Drop for Published<'_> {
    fn drop(&mut self) {
        *self.0.lock() = None;
    }
}

/// Everything shared by connections.
pub struct Shared {
    /// Options.
    pub opts: ServerOptions,
    /// Bound port.
    pub port: AtomicU16,
    /// State.
    pub state: Mutex<State>,
    /// The view of the state at the time the current holder of the state lock took it, while
    /// that holder is a command (which changes none of the view's fields but the optime, and
    /// that only as its own writes are applied). See [`Shared::view`].
    pub busy_view: Mutex<Option<StateView>>,
    /// Fail points (outside the state so that checking them never waits for a long command).
    pub failpoints: Mutex<FailPoints>,
    /// Woken on every oplog append.
    pub oplog_notify: Notify,
    /// Topology version counter changes.
    pub topology_tx: watch::Sender<i64>,
    /// Bumped to drop every connection.
    pub kill_tx: watch::Sender<u64>,
    /// Server process id (topologyVersion.processId).
    pub process_id: ObjectId,
    /// Connection id counter.
    pub next_conn_id: AtomicI64,
    /// Server start.
    pub started: Instant,
    /// Shutdown signal.
    pub shutdown: Notify,
}

impl Shared {
    /// Creates the shared state.
    pub fn new(opts: ServerOptions) -> Arc<Shared> {
        let mut oplog = Oplog::new((opts.oplog_size_mb.max(1) * 1024 * 1024) as usize);
        oplog.append(
            vec![Pending {
                db: "".into(),
                coll: "".into(),
                uuid: None,
                kind: Kind::Noop { msg: doc! {"msg": "initiating set"} },
            }],
            None,
        );
        let (topology_tx, _) = watch::channel(0);
        let (kill_tx, _) = watch::channel(0);
        Arc::new(Shared {
            opts,
            port: AtomicU16::new(0),
            state: Mutex::new(State {
                catalog: Catalog::default(),
                oplog,
                cursors: HashMap::new(),
                next_cursor_id: 1,
                sessions: Sessions::default(),
                write_blocked: false,
                stepped_down_until: None,
                topology_counter: 0,
                election_id: ObjectId::new(),
                term: 1,
                last_write: Instant::now(),
                fast_hello_until: None,
                ttl_interval: Duration::from_secs(60),
                last_ttl: Instant::now(),
            }),
            busy_view: Mutex::new(None),
            failpoints: Mutex::new(FailPoints::default()),
            oplog_notify: Notify::new(),
            topology_tx,
            kill_tx,
            process_id: ObjectId::new(),
            next_conn_id: AtomicI64::new(1),
            started: Instant::now(),
            shutdown: Notify::new(),
        })
    }

    /// Locks the state; if it is busy, waits without taking a runtime worker out of service.
    pub fn lock_state(&self) -> MutexGuard<'_, State> {
        match self.state.try_lock() {
            Some(g) => g,
            None => blocking(|| self.state.lock()),
        }
    }

    /// Runs `f` under the state lock (see [`Shared::lock_state`]), on a thread that may block
    /// for as long as `f` runs, with the view of the state published for [`Shared::view`].
    pub fn with_state<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        blocking(|| {
            let mut guard = self.state.lock();
            *self.busy_view.lock() = Some(StateView::of(&guard));
            let _published = Published(&self.busy_view);
            f(&mut guard)
        })
    }

    /// The current [`StateView`]. When a command holds the state lock this is the view it
    /// published (nothing in it changes while the command runs, except the optime of its own
    /// unacknowledged writes), so `hello` answers at once during long queries.
    pub fn view(&self) -> StateView {
        if let Some(g) = self.state.try_lock() {
            return StateView::of(&g);
        }
        if let Some(v) = self.busy_view.lock().clone() {
            return v;
        }
        blocking(|| {
            // the holder may be about to publish its view, or be a short internal task
            for _ in 0..20 {
                if let Some(g) = self.state.try_lock_for(Duration::from_millis(1)) {
                    return StateView::of(&g);
                }
                if let Some(v) = self.busy_view.lock().clone() {
                    return v;
                }
            }
            StateView::of(&self.state.lock())
        })
    }

    /// "host:port" of this member.
    pub fn host_port(&self) -> String {
        format!("{}:{}", self.opts.host, self.port.load(Ordering::Relaxed))
    }

    /// Closes every open connection.
    pub fn drop_all_connections(&self) {
        self.kill_tx.send_modify(|g| *g += 1);
        tracing::info!("dropping all connections");
    }

    /// Bumps the topology version and wakes awaitable hellos.
    pub fn bump_topology(&self, st: &mut State) {
        st.topology_counter += 1;
        let c = st.topology_counter;
        self.topology_tx.send_replace(c);
    }

    /// Steps down for `d`, then becomes primary again.
    pub fn step_down(self: &Arc<Self>, d: Duration) {
        {
            let mut st = self.lock_state();
            st.stepped_down_until = Some(Instant::now() + d);
            self.bump_topology(&mut st);
        }
        tracing::info!(secs = d.as_secs_f64(), "stepping down");
        self.drop_all_connections();
        let me = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            let mut st = me.lock_state();
            if st.stepped_down_until.is_some_and(|t| Instant::now() >= t) {
                st.stepped_down_until = None;
                st.election_id = ObjectId::new();
                st.term += 1;
                me.bump_topology(&mut st);
                tracing::info!("primary again");
            }
        });
    }

    /// Keeps only the newest oplog entry.
    pub fn truncate_oplog(&self) {
        self.lock_state().oplog.truncate();
        tracing::info!("oplog truncated");
    }

    /// Appends pending operations (one optime each) and wakes change streams.
    pub fn notify_oplog(&self) {
        self.oplog_notify.notify_waiters();
    }
}

/// Per-connection information.
#[derive(Debug, Clone, Default)]
pub struct ConnInfo {
    /// Connection id.
    pub id: i64,
    /// Peer address.
    pub peer: String,
    /// `client.application.name` from the handshake.
    pub app_name: Option<String>,
    /// Compressors negotiated in the handshake.
    pub compressors: Vec<String>,
    /// True if the connection may write while user writes are blocked.
    pub bypass_write_block: bool,
}

async fn serve_conn(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let mut rd = tokio::io::BufReader::with_capacity(64 * 1024, &mut rd);
    let mut kill = shared.kill_tx.subscribe();
    let mut conn = ConnInfo {
        id: shared.next_conn_id.fetch_add(1, Ordering::Relaxed),
        peer: peer.to_string(),
        ..Default::default()
    };
    tracing::debug!(conn = conn.id, peer = %peer, "connection accepted");
    let mut msg = Vec::new();
    loop {
        tokio::select! {
            _ = kill.changed() => break,
            r = wire::read_message_into(&mut rd, &mut msg) => match r {
                Ok(true) => {}
                _ => break,
            },
        }
        if msg.capacity() > 8 * 1024 * 1024 && msg.len() < 1024 * 1024 {
            msg.shrink_to(1024 * 1024);
        }
        let out = tokio::select! {
            _ = kill.changed() => break,
            o = commands::handle_message(&shared, &mut conn, &msg) => o,
        };
        match out {
            commands::Outcome::Reply(bytes) => {
                if wr.write_all(&bytes).await.is_err() {
                    break;
                }
            }
            commands::Outcome::NoReply => {}
            commands::Outcome::Close => break,
        }
    }
    tracing::debug!(conn = conn.id, "connection closed");
}

async fn noop_writer(shared: Arc<Shared>) {
    let interval = shared.opts.noop_interval.max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(interval).await;
        let wrote = {
            let mut st = shared.lock_state();
            if st.last_write.elapsed() >= interval && !st.is_secondary() {
                st.oplog.append(
                    vec![Pending {
                        db: "".into(),
                        coll: "".into(),
                        uuid: None,
                        kind: Kind::Noop { msg: doc! {"msg": "periodic noop"} },
                    }],
                    None,
                );
                st.last_write = Instant::now();
                true
            } else {
                false
            }
        };
        if wrote {
            shared.notify_oplog();
        }
    }
}

/// Removes cursors idle for 10 minutes and aborts transactions idle for 60 seconds
/// (`transactionLifetimeLimitSeconds`), like mongod's reapers.
async fn reaper(shared: Arc<Shared>) {
    let mut ticks: u64 = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        ticks += 1;
        let ttl_due = {
            let st = shared.lock_state();
            st.last_ttl.elapsed() >= st.ttl_interval
        };
        if ttl_due {
            let removed = shared.with_state(|st| {
                st.last_ttl = Instant::now();
                crate::ttl::run_pass(st)
            });
            if removed > 0 {
                tracing::debug!(removed, "ttl monitor removed expired documents");
                shared.notify_oplog();
            }
        }
        if !ticks.is_multiple_of(10) {
            continue;
        }
        let mut st = shared.lock_state();
        let before = st.cursors.len();
        st.cursors.retain(|_, c| c.no_timeout || c.last_used.elapsed() < Duration::from_secs(600));
        let reaped = before - st.cursors.len();
        let mut aborted = 0;
        for s in st.sessions.iter_mut() {
            if s.state == crate::session::TxnState::InProgress && s.last_use.elapsed() > Duration::from_secs(60) {
                s.state = crate::session::TxnState::Aborted;
                s.txn = None;
                aborted += 1;
            }
        }
        if reaped > 0 || aborted > 0 {
            tracing::debug!(reaped, aborted, "reaped idle cursors and transactions");
        }
    }
}

/// Binds and runs the server until `shared.shutdown` is notified.
pub async fn run(shared: Arc<Shared>, listener: TcpListener) {
    let noop = tokio::spawn(noop_writer(Arc::clone(&shared)));
    let reap = tokio::spawn(reaper(Arc::clone(&shared)));
    loop {
        tokio::select! {
            _ = shared.shutdown.notified() => break,
            r = listener.accept() => match r {
                Ok((s, peer)) => {
                    tokio::spawn(serve_conn(Arc::clone(&shared), s, peer));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
    noop.abort();
    reap.abort();
    shared.drop_all_connections();
}

/// A running in-process server. Dropping it shuts the server down.
pub struct FakeMongod {
    shared: Arc<Shared>,
    port: u16,
    rt: Option<tokio::runtime::Runtime>,
}

impl FakeMongod {
    /// Starts the server on its own multi-threaded runtime in background threads.
    pub fn start(opts: ServerOptions) -> std::io::Result<FakeMongod> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fake-mongod")
            .enable_all()
            .build()?;
        let addr = format!("{}:{}", opts.host, opts.port);
        let std_listener = std::net::TcpListener::bind(&addr)?;
        std_listener.set_nonblocking(true)?;
        let port = std_listener.local_addr()?.port();
        let shared = Shared::new(opts);
        shared.port.store(port, Ordering::Relaxed);
        let s2 = Arc::clone(&shared);
        rt.spawn(async move {
            match TcpListener::from_std(std_listener) {
                Ok(l) => run(s2, l).await,
                Err(e) => tracing::error!(error = %e, "cannot register listener"),
            }
        });
        Ok(FakeMongod { shared, port, rt: Some(rt) })
    }

    /// Starts `rs0` on 127.0.0.1 with a free port.
    pub fn start_default() -> std::io::Result<FakeMongod> {
        Self::start(ServerOptions::default())
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `mongodb://127.0.0.1:PORT/?replicaSet=rs0`.
    pub fn uri(&self) -> String {
        format!("mongodb://{}:{}/?replicaSet={}", self.shared.opts.host, self.port, self.shared.opts.repl_set_name)
    }

    /// `mongodb://127.0.0.1:PORT/?directConnection=true`.
    pub fn direct_uri(&self) -> String {
        format!("mongodb://{}:{}/?directConnection=true", self.shared.opts.host, self.port)
    }

    /// Closes every open connection now.
    pub fn drop_all_connections(&self) {
        self.shared.drop_all_connections();
    }

    /// Steps down for a while (writes fail with NotWritablePrimary), then becomes primary again.
    pub fn step_down(&self, for_how_long: Duration) {
        if let Some(rt) = &self.rt {
            let s = Arc::clone(&self.shared);
            let _g = rt.enter();
            s.step_down(for_how_long);
        }
    }

    /// Keeps only the newest oplog entry.
    pub fn truncate_oplog(&self) {
        self.shared.truncate_oplog();
    }

    /// Shared state (for white-box tests).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stops the server.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.shared.shutdown.notify_waiters();
        self.shared.drop_all_connections();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for FakeMongod {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Helper for replies that need the current time as a BSON date.
pub fn now_date() -> bson::DateTime {
    bson::DateTime::now()
}

/// The empty document (used in a few replies).
pub fn empty() -> Document {
    Document::new()
}
