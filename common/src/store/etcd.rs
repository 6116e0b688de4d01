//! The etcd v3 backend of [`Store`], on `etcd-client`.
//!
//! # Layout
//!
//! - [`EtcdStoreOptions`]: endpoints-independent connection settings (timeouts, HTTP/2
//!   keepalive, credentials), serde-friendly for the config file.
//! - [`EtcdStore`]: maps every trait call onto one etcd RPC, each bounded by
//!   `request_timeout`, and maps errors onto [`StoreError`] (`Unavailable` for anything that
//!   a retry could fix).
//! - keepalive: one request/response round per call on a per-lease bidirectional stream
//!   that is kept open between calls and rebuilt when it breaks.
//! - watch: a background task per watch that owns the etcd watch stream and, when the
//!   connection drops, recreates it from the last delivered revision + 1, so the consumer sees
//!   an uninterrupted, duplicate-free sequence (or `Compacted` if etcd no longer has it).

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{Client, ConnectOptions, DeleteOptions, EventType, GetOptions, PutOptions, WatchOptions};
use futures::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{
    Compare, CompareOp, CompareTarget, KeyValue, LeaseId, Revision, Store, StoreError, Txn, TxnOp, TxnOpResponse,
    TxnResponse, WatchEvent, WatchEventKind, WatchStream, lease_ttl_seconds,
};

/// Largest gRPC message we accept from etcd. The tonic default (4 MiB) is below what one
/// watch response for a large `delete_prefix` can reach (prefix reads are paged).
const MAX_DECODING_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// Keys per page of a prefix read (see `get_prefix`). Values are at most a few KiB, so a page
/// stays around a megabyte; a plan of 100k partitions is read in a hundred round trips.
const PREFIX_PAGE_KEYS: i64 = 1000;

/// First delay before re-creating a broken watch; doubles up to [`WATCH_RETRY_MAX`].
const WATCH_RETRY_MIN: Duration = Duration::from_millis(100);
const WATCH_RETRY_MAX: Duration = Duration::from_secs(2);

/// Connection settings for [`EtcdStore::connect`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EtcdStoreOptions {
    /// Bound on establishing a connection to an endpoint.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Bound on every unary call (get, put, txn, lease calls, one keepalive round). Past it the
    /// call fails with `Unavailable`. Keep it well under the lease TTL: the lease keeper bounds
    /// its own renewals by TTL/6 anyway.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// HTTP/2 ping interval. Pings are what notice a dead connection (etcd host gone without a
    /// TCP reset) while only a watch is open.
    #[serde(with = "humantime_serde")]
    pub keep_alive_interval: Duration,
    /// How long a ping may go unanswered before the connection is dropped.
    #[serde(with = "humantime_serde")]
    pub keep_alive_timeout: Duration,
    /// etcd user, if authentication is enabled.
    pub username: Option<String>,
    /// Password of `username`.
    pub password: Option<String>,
}

impl Default for EtcdStoreOptions {
    fn default() -> Self {
        EtcdStoreOptions {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            keep_alive_interval: Duration::from_secs(5),
            keep_alive_timeout: Duration::from_secs(5),
            username: None,
            password: None,
        }
    }
}

impl EtcdStoreOptions {
    /// Shorter timeouts for tests, so failure cases do not wait for production bounds.
    pub fn for_test() -> Self {
        EtcdStoreOptions {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(2),
            keep_alive_interval: Duration::from_secs(1),
            keep_alive_timeout: Duration::from_secs(2),
            ..EtcdStoreOptions::default()
        }
    }
}

/// A [`Store`] on an etcd v3 cluster.
pub struct EtcdStore {
    client: Client,
    options: EtcdStoreOptions,
    endpoints: Vec<String>,
    /// Open keepalive streams by lease. A stream is taken out for the duration of one round and
    /// put back only after a complete request/response, so a round cancelled half-way (timeout,
    /// dropped future) never leaves a stale reply behind for the next caller to read.
    keepalives: Mutex<HashMap<LeaseId, KeepAliveChannel>>,
}

type KeepAliveChannel = (etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream);

impl EtcdStore {
    /// Connects to etcd and checks that it answers.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] if no endpoint answers within the connect and request
    /// timeouts; [`StoreError::InvalidRequest`] for malformed endpoints or bad credentials.
    pub async fn connect(endpoints: &[String], options: EtcdStoreOptions) -> Result<Self, StoreError> {
        if endpoints.is_empty() {
            return Err(StoreError::invalid_request("no etcd endpoints given"));
        }
        let mut connect_options = ConnectOptions::new()
            .with_connect_timeout(options.connect_timeout)
            .with_keep_alive(options.keep_alive_interval, options.keep_alive_timeout)
            .with_keep_alive_while_idle(true)
            // A member cut off from its cluster answers "no leader" at once instead of hanging
            // until our timeout; a partitioned worker then notices quickly and self-fences.
            .with_require_leader(true);
        if let (Some(user), Some(password)) = (&options.username, &options.password) {
            connect_options = connect_options.with_user(user.clone(), password.clone());
        }
        let joined = endpoints.join(",");
        let client = with_timeout(
            options.connect_timeout + options.request_timeout,
            "connect",
            Client::connect(endpoints, Some(connect_options)),
        )
        .await?
        .map_err(|error| map_error(&format!("connect to {joined}"), error))?;
        let store =
            EtcdStore { client, options, endpoints: endpoints.to_vec(), keepalives: Mutex::new(HashMap::new()) };
        // The client connects lazily; one real round trip proves the endpoints work now.
        let mut maintenance = store.client.maintenance_client();
        let status =
            store.call("status", async move { maintenance.status().await }).await.map_err(|error| match error {
                StoreError::Unavailable { reason } => {
                    StoreError::unavailable(format!("etcd at {joined} did not answer: {reason}"))
                }
                other => other,
            })?;
        info!(endpoints = %joined, version = status.version(), "connected to etcd");
        Ok(store)
    }

    /// The endpoints this store was connected with.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The underlying client, for administrative calls the trait does not cover (tests use it
    /// to compact history).
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn kv(&self) -> etcd_client::KvClient {
        self.client.kv_client().max_decoding_message_size(MAX_DECODING_MESSAGE_BYTES)
    }

    /// Runs one etcd call under the request timeout, mapping its error.
    async fn call<T>(
        &self,
        operation: &str,
        future: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        with_timeout(self.options.request_timeout, operation, future)
            .await?
            .map_err(|error| map_error(operation, error))
    }

    /// One attempt of [`Store::get_prefix`]: every key under `prefix`, in pages of
    /// [`PREFIX_PAGE_KEYS`], all read at the first page's revision.
    async fn get_prefix_paged(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        let mut kv = self.kv();
        let end = prefix_range_end(prefix);
        let mut kvs = Vec::new();
        let mut from = prefix.as_bytes().to_vec();
        // Why pages: one range over tens of thousands of tasks or checkpoints is a response
        // of many megabytes that etcd builds in memory at once and that stalls its other
        // requests meanwhile; etcd's guidance is to page large ranges. Every page after the
        // first reads at the first page's revision, so the pages form one consistent
        // snapshot (a key written meanwhile is in none of them), as a single range would.
        let mut revision: Option<Revision> = None;
        loop {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(PREFIX_PAGE_KEYS);
            if let Some(revision) = revision {
                options = options.with_revision(revision);
            }
            // etcd sorts a range by key, ascending, by default.
            let response = self.call("get prefix", kv.get(from.clone(), Some(options))).await?;
            let at = *revision.get_or_insert_with(|| header_revision(response.header()));
            kvs.extend(convert_kvs(response.kvs())?);
            match kvs.last() {
                Some(last) if response.more() => {
                    // The next page starts right after the last key read.
                    from = [last.key.as_bytes(), &[0]].concat();
                }
                _ => return Ok((kvs, at)),
            }
        }
    }

    /// One keepalive round on `channel`: send a request, read the reply.
    async fn keep_alive_round(channel: &mut KeepAliveChannel, lease: LeaseId) -> Result<i64, StoreError> {
        let (keeper, stream) = channel;
        keeper.keep_alive().await.map_err(|error| map_error("lease keepalive", error))?;
        match stream.message().await {
            Ok(Some(response)) => Ok(response.ttl()),
            Ok(None) => Err(StoreError::unavailable(format!("keepalive stream of lease {lease} closed by etcd"))),
            Err(error) => Err(map_error("lease keepalive", error)),
        }
    }
}

async fn with_timeout<T>(timeout: Duration, operation: &str, future: impl Future<Output = T>) -> Result<T, StoreError> {
    tokio::time::timeout(timeout, future)
        .await
        .map_err(|_| StoreError::unavailable(format!("etcd {operation} timed out after {timeout:?}")))
}

/// Maps an `etcd-client` error: anything a retry could fix becomes `Unavailable`.
fn map_error(operation: &str, error: etcd_client::Error) -> StoreError {
    use etcd_client::Error;
    use tonic::Code;
    match error {
        Error::GRpcStatus(status) => {
            let message = status.message();
            match status.code() {
                // "etcdserver: request timed out", "no leader", "leader changed", connection
                // resets surfacing as Unknown/Internal from the transport, load shedding.
                Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Cancelled
                | Code::Aborted
                | Code::ResourceExhausted
                | Code::Unknown
                | Code::Internal => StoreError::unavailable(format!("etcd {operation} failed: {message}")),
                Code::OutOfRange if message.contains("compacted") => {
                    // The compact revision is not in the status; 0 means "unknown, re-list".
                    StoreError::Compacted { revision: 0 }
                }
                code => StoreError::invalid_request(format!("etcd {operation} rejected ({code:?}): {message}")),
            }
        }
        Error::TransportError(error) => StoreError::unavailable(format!("etcd {operation} transport error: {error}")),
        Error::IoError(error) => StoreError::unavailable(format!("etcd {operation} io error: {error}")),
        Error::WatchError(message) | Error::LeaseKeepAliveError(message) => {
            StoreError::unavailable(format!("etcd {operation} stream error: {message}"))
        }
        Error::Utf8Error(error) => StoreError::Encoding {
            key: String::new(),
            reason: format!("etcd {operation} returned non-utf-8 data: {error}"),
        },
        other => StoreError::invalid_request(format!("etcd {operation} failed: {other}")),
    }
}

/// `NotFound` on a lease call (or a put naming a lease) means the lease is gone.
fn map_lease_error(operation: &str, lease: LeaseId, error: etcd_client::Error) -> StoreError {
    match &error {
        etcd_client::Error::GRpcStatus(status)
            if status.code() == tonic::Code::NotFound || status.message().contains("lease not found") =>
        {
            StoreError::LeaseExpired { lease }
        }
        etcd_client::Error::LeaseKeepAliveError(message) if message.contains("not found") => {
            StoreError::LeaseExpired { lease }
        }
        _ => map_error(operation, error),
    }
}

fn convert_kv(kv: &etcd_client::KeyValue) -> Result<KeyValue, StoreError> {
    let key = kv.key_str().map_err(|error| StoreError::Encoding {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        reason: format!("etcd key is not utf-8: {error}"),
    })?;
    Ok(KeyValue {
        key: key.to_string(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
        lease: (kv.lease() != 0).then_some(LeaseId(kv.lease())),
    })
}

fn convert_kvs(kvs: &[etcd_client::KeyValue]) -> Result<Vec<KeyValue>, StoreError> {
    kvs.iter().map(convert_kv).collect()
}

/// The end of etcd's range for every key starting with `prefix`: the prefix with its last byte
/// incremented (trailing 0xff bytes dropped first); `\0` (every key) for an empty or all-0xff
/// prefix, as etcd's own clients do.
fn prefix_range_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Revision {
    header.map_or(0, |header| header.revision())
}

fn convert_compare(compare: Compare) -> etcd_client::Compare {
    let op = match compare.op {
        CompareOp::Equal => etcd_client::CompareOp::Equal,
        CompareOp::NotEqual => etcd_client::CompareOp::NotEqual,
        CompareOp::Greater => etcd_client::CompareOp::Greater,
        CompareOp::Less => etcd_client::CompareOp::Less,
    };
    match compare.target {
        CompareTarget::CreateRevision(revision) => etcd_client::Compare::create_revision(compare.key, op, revision),
        CompareTarget::ModRevision(revision) => etcd_client::Compare::mod_revision(compare.key, op, revision),
        CompareTarget::Version(version) => etcd_client::Compare::version(compare.key, op, version),
        CompareTarget::Value(value) => etcd_client::Compare::value(compare.key, op, value),
    }
}

fn convert_op(op: TxnOp) -> etcd_client::TxnOp {
    match op {
        TxnOp::Put { key, value, lease } => {
            etcd_client::TxnOp::put(key, value, lease.map(|lease| PutOptions::new().with_lease(lease.0)))
        }
        TxnOp::Delete { key } => etcd_client::TxnOp::delete(key, None),
        TxnOp::DeletePrefix { prefix } => etcd_client::TxnOp::delete(prefix, Some(DeleteOptions::new().with_prefix())),
        TxnOp::Get { key } => etcd_client::TxnOp::get(key, None),
        TxnOp::GetPrefix { prefix } => etcd_client::TxnOp::get(prefix, Some(GetOptions::new().with_prefix())),
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let mut kv = self.kv();
        let response = self.call("get", kv.get(key, None)).await?;
        response.kvs().first().map(convert_kv).transpose()
    }

    async fn get_prefix(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        // Why start over: the pages after the first read at the first page's revision, which
        // etcd's auto-compaction may remove between two pages; the listing is then retaken at
        // the newest revision. Compactions are minutes apart, so a second attempt succeeds.
        let mut attempts = 0;
        loop {
            match self.get_prefix_paged(prefix).await {
                Err(StoreError::Compacted { .. }) if attempts < 3 => {
                    attempts += 1;
                    debug!(prefix, attempts, "prefix read outlived its revision (compacted); reading again");
                }
                result => return result,
            }
        }
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision, StoreError> {
        let mut kv = self.kv();
        let options = lease.map(|lease| PutOptions::new().with_lease(lease.0));
        let response =
            with_timeout(self.options.request_timeout, "put", kv.put(key, value, options)).await?.map_err(|error| {
                match lease {
                    Some(lease) => map_lease_error("put", lease, error),
                    None => map_error("put", error),
                }
            })?;
        Ok(header_revision(response.header()))
    }

    async fn delete(&self, key: &str) -> Result<u64, StoreError> {
        let mut kv = self.kv();
        let response = self.call("delete", kv.delete(key, None)).await?;
        Ok(response.deleted().unsigned_abs())
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StoreError> {
        let mut kv = self.kv();
        let response = self.call("delete prefix", kv.delete(prefix, Some(DeleteOptions::new().with_prefix()))).await?;
        Ok(response.deleted().unsigned_abs())
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        // Same rules as the embedded store, checked here too so the error is identical.
        txn.validate()?;
        let first_lease = txn.success.iter().chain(&txn.failure).find_map(|op| match op {
            TxnOp::Put { lease: Some(lease), .. } => Some(*lease),
            _ => None,
        });
        let request = etcd_client::Txn::new()
            .when(txn.compares.into_iter().map(convert_compare).collect::<Vec<_>>())
            .and_then(txn.success.into_iter().map(convert_op).collect::<Vec<_>>())
            .or_else(txn.failure.into_iter().map(convert_op).collect::<Vec<_>>());
        let mut kv = self.kv();
        let response =
            with_timeout(self.options.request_timeout, "txn", kv.txn(request)).await?.map_err(
                |error| match first_lease {
                    Some(lease) => map_lease_error("txn", lease, error),
                    None => map_error("txn", error),
                },
            )?;
        let revision = header_revision(response.header());
        let responses = response
            .op_responses()
            .into_iter()
            .map(|op| match op {
                // Every write of one txn shares the txn's revision.
                etcd_client::TxnOpResponse::Put(_) => Ok(TxnOpResponse::Put { revision }),
                etcd_client::TxnOpResponse::Delete(delete) => {
                    Ok(TxnOpResponse::Delete { deleted: delete.deleted().unsigned_abs() })
                }
                etcd_client::TxnOpResponse::Get(get) => Ok(TxnOpResponse::Get { kvs: convert_kvs(get.kvs())? }),
                etcd_client::TxnOpResponse::Txn(_) => {
                    Err(StoreError::invalid_request("nested txn responses are not supported"))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TxnResponse { succeeded: response.succeeded(), revision, responses })
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let mut lease_client = self.client.lease_client();
        let response = self.call("lease grant", lease_client.grant(lease_ttl_seconds(ttl), None)).await?;
        if !response.error().is_empty() {
            return Err(StoreError::invalid_request(format!("etcd lease grant failed: {}", response.error())));
        }
        Ok(LeaseId(response.id()))
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        let cached = self.keepalives.lock().remove(&lease);
        let client = self.client.clone();
        let round = async move {
            if let Some(mut channel) = cached {
                match Self::keep_alive_round(&mut channel, lease).await {
                    Ok(ttl) => return Ok((channel, ttl)),
                    // A stream broken by an etcd restart or a dropped connection: fall through
                    // and open a fresh one within the same call.
                    Err(error) => debug!(%lease, %error, "cached keepalive stream failed; reopening"),
                }
            }
            let mut lease_client = client.lease_client();
            // Opening the stream already renews once (and fails with "lease not found" if the
            // lease is gone), but its reply is swallowed by the client; a second round gives us
            // the TTL.
            let mut channel = lease_client
                .keep_alive(lease.0)
                .await
                .map_err(|error| map_lease_error("lease keepalive", lease, error))?;
            let ttl = Self::keep_alive_round(&mut channel, lease).await?;
            Ok::<_, StoreError>((channel, ttl))
        };
        let (channel, ttl) = with_timeout(self.options.request_timeout, "lease keepalive", round).await??;
        if ttl <= 0 {
            return Err(StoreError::LeaseExpired { lease });
        }
        self.keepalives.lock().insert(lease, channel);
        Ok(Duration::from_secs(ttl.unsigned_abs()))
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.keepalives.lock().remove(&lease);
        let mut lease_client = self.client.lease_client();
        with_timeout(self.options.request_timeout, "lease revoke", lease_client.revoke(lease.0))
            .await?
            .map_err(|error| map_lease_error("lease revoke", lease, error))?;
        Ok(())
    }

    async fn watch_prefix(&self, prefix: &str, start_revision: Option<Revision>) -> Result<WatchStream, StoreError> {
        let (stream, next_revision) =
            open_watch(&self.client, prefix, start_revision, self.options.request_timeout).await?;
        let (sender, receiver) = mpsc::channel(64);
        let task = WatchTask {
            client: self.client.clone(),
            prefix: prefix.to_string(),
            next_revision,
            request_timeout: self.options.request_timeout,
            sender,
        };
        tokio::spawn(task.run(stream));
        Ok(futures::stream::unfold(receiver, |mut receiver| async move {
            let item = receiver.recv().await?;
            Some((item, receiver))
        })
        .boxed())
    }

    fn kind(&self) -> &'static str {
        "etcd"
    }
}

/// Creates an etcd watch and waits for its `created` reply; returns the stream and the first
/// revision it will deliver.
async fn open_watch(
    client: &Client,
    prefix: &str,
    start_revision: Option<Revision>,
    timeout: Duration,
) -> Result<(etcd_client::WatchStream, Revision), StoreError> {
    let mut watch_client = client.watch_client().max_decoding_message_size(MAX_DECODING_MESSAGE_BYTES);
    // etcd reads a start revision of 0 as "from now"; normalise so the resume point is right.
    let start_revision = start_revision.filter(|revision| *revision > 0);
    let mut options = WatchOptions::new().with_prefix().with_progress_notify();
    if let Some(revision) = start_revision {
        options = options.with_start_revision(revision);
    }
    let open = async {
        let mut stream = watch_client.watch(prefix, Some(options)).await.map_err(|error| map_error("watch", error))?;
        let created = stream
            .message()
            .await
            .map_err(|error| map_error("watch", error))?
            .ok_or_else(|| StoreError::unavailable("etcd closed the watch stream before creating it"))?;
        if created.compact_revision() > 0 {
            return Err(StoreError::Compacted { revision: created.compact_revision() });
        }
        if created.canceled() {
            return Err(StoreError::invalid_request(format!("etcd refused the watch: {}", created.cancel_reason())));
        }
        // "From now" means after the revision etcd was at when it created the watch.
        let next_revision = start_revision.unwrap_or_else(|| header_revision(created.header()) + 1);
        Ok((stream, next_revision))
    };
    with_timeout(timeout, "watch", open).await?
}

/// Owns one etcd watch and forwards its events, re-creating it across connection drops.
struct WatchTask {
    client: Client,
    prefix: String,
    /// The first revision not yet delivered: where a re-created watch starts.
    next_revision: Revision,
    request_timeout: Duration,
    sender: mpsc::Sender<Result<Vec<WatchEvent>, StoreError>>,
}

/// What to do after one message of the watch stream.
enum Step {
    Continue,
    Reconnect,
    Stop,
}

impl WatchTask {
    async fn run(mut self, mut stream: etcd_client::WatchStream) {
        loop {
            let message = tokio::select! {
                // The consumer dropped the stream: stop watching.
                () = self.sender.closed() => return,
                message = stream.message() => message,
            };
            let step = match message {
                Ok(Some(response)) => self.handle(response).await,
                Ok(None) => {
                    debug!(prefix = %self.prefix, "etcd closed the watch stream");
                    Step::Reconnect
                }
                Err(error) => {
                    debug!(prefix = %self.prefix, %error, "etcd watch stream failed");
                    Step::Reconnect
                }
            };
            match step {
                Step::Continue => {}
                Step::Stop => return,
                Step::Reconnect => match self.reconnect().await {
                    Some(new_stream) => stream = new_stream,
                    None => return,
                },
            }
        }
    }

    async fn handle(&mut self, response: etcd_client::WatchResponse) -> Step {
        if response.compact_revision() > 0 {
            let error = StoreError::Compacted { revision: response.compact_revision() };
            let _ = self.sender.send(Err(error)).await;
            return Step::Stop;
        }
        if response.canceled() {
            // Cancelled for another reason (e.g. "no leader" with require-leader): resume.
            debug!(prefix = %self.prefix, reason = response.cancel_reason(), "etcd cancelled the watch");
            return Step::Reconnect;
        }
        let mut events = Vec::with_capacity(response.events().len());
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let converted = match convert_kv(kv) {
                Ok(converted) => converted,
                Err(error) => {
                    let _ = self.sender.send(Err(error)).await;
                    return Step::Stop;
                }
            };
            let (kind, kv) = match event.event_type() {
                EventType::Put => (WatchEventKind::Put, converted),
                EventType::Delete => (
                    WatchEventKind::Delete,
                    KeyValue {
                        key: converted.key,
                        value: Vec::new(),
                        create_revision: 0,
                        mod_revision: converted.mod_revision,
                        version: 0,
                        lease: None,
                    },
                ),
            };
            events.push(WatchEvent { kind, kv });
        }
        match events.last() {
            Some(last) => {
                self.next_revision = last.kv.mod_revision + 1;
                if self.sender.send(Ok(events)).await.is_err() {
                    return Step::Stop;
                }
            }
            None => {
                // A progress notification: etcd has sent everything up to its header revision,
                // so a re-created watch may start after it.
                let revision = header_revision(response.header());
                if !response.created() && revision >= self.next_revision {
                    self.next_revision = revision + 1;
                }
            }
        }
        Step::Continue
    }

    /// Re-creates the watch from `next_revision`, retrying with backoff until it works, the
    /// history is gone (`Compacted` is delivered) or the consumer goes away.
    async fn reconnect(&mut self) -> Option<etcd_client::WatchStream> {
        let mut delay = WATCH_RETRY_MIN;
        let mut attempts: u32 = 0;
        loop {
            tokio::select! {
                () = self.sender.closed() => return None,
                () = tokio::time::sleep(delay) => {}
            }
            attempts += 1;
            match open_watch(&self.client, &self.prefix, Some(self.next_revision), self.request_timeout).await {
                Ok((stream, _)) => {
                    info!(prefix = %self.prefix, next_revision = self.next_revision, attempts, "etcd watch resumed");
                    return Some(stream);
                }
                Err(error @ StoreError::Compacted { .. }) => {
                    let _ = self.sender.send(Err(error)).await;
                    return None;
                }
                Err(error) => {
                    // Workers keep their own lease deadline, so a long outage here is noticed
                    // there; the watch itself just keeps trying.
                    if attempts == 1 || attempts.is_multiple_of(10) {
                        warn!(prefix = %self.prefix, next_revision = self.next_revision, attempts, %error, "etcd watch reconnect failed; retrying");
                    }
                    delay = (delay * 2).min(WATCH_RETRY_MAX);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_humantime_and_reject_unknown_fields() {
        let options: EtcdStoreOptions = serde_json::from_str(r#"{"request_timeout": "750ms"}"#).unwrap();
        assert_eq!(options.request_timeout, Duration::from_millis(750));
        assert_eq!(options.connect_timeout, EtcdStoreOptions::default().connect_timeout);
        assert!(serde_json::from_str::<EtcdStoreOptions>(r#"{"timeout": "1s"}"#).is_err());
    }

    #[test]
    fn prefix_range_end_increments_the_last_byte() {
        assert_eq!(prefix_range_end("/clustersync/m/tasks/"), b"/clustersync/m/tasks0".to_vec());
        assert_eq!(prefix_range_end("a"), b"b".to_vec());
        assert_eq!(prefix_range_end("a\u{7f}"), b"a\x80".to_vec());
        assert_eq!(prefix_range_end(""), vec![0]);
    }

    #[test]
    fn grpc_errors_map_to_store_errors() {
        let unavailable = etcd_client::Error::GRpcStatus(tonic::Status::unavailable("etcdserver: no leader"));
        assert!(map_error("get", unavailable).is_retryable());
        let too_many = etcd_client::Error::GRpcStatus(tonic::Status::invalid_argument(
            "etcdserver: too many operations in txn request",
        ));
        assert!(matches!(map_error("txn", too_many), StoreError::InvalidRequest { .. }));
        let lease_gone =
            etcd_client::Error::GRpcStatus(tonic::Status::not_found("etcdserver: requested lease not found"));
        assert!(matches!(
            map_lease_error("put", LeaseId(3), lease_gone),
            StoreError::LeaseExpired { lease: LeaseId(3) }
        ));
    }
}
