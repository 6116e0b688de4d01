//! What each cluster is: a replica set, a sharded cluster (through mongos) or a standalone
//! server, and which MongoDB version it runs. `/start` checks the options against it (e.g.
//! `sharding` only for replica set → sharded cluster) and refuses what cannot work (a
//! standalone has no change streams; servers before 6.0 lack what the sync relies on).
//!
//! [`probe`] asks a server with `hello` (plus `listShards` on mongos) and `buildInfo`.
//! [`ClusterProbe`] is how [`crate::control::Control`] reaches the two clusters: the real
//! [`MongoClusters`], or [`StaticClusters`] in tests and wherever the topology is known.

use std::time::Duration;

use async_trait::async_trait;
use bson::{Document, doc};
use clustersync_worker::error::is_retryable_mongo;
use clustersync_worker::mongo::{client_options, redact_text};
use mongodb::Client;

/// Oldest supported server version (major, minor).
pub const MIN_SERVER_VERSION: (u32, u32) = (6, 0);

/// How long a server may take to be found before a probe gives up.
pub const PROBE_SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// The two clusters of the REST API, by their mongosync names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClusterName {
    /// `cluster0` (`--cluster0`).
    Cluster0,
    /// `cluster1` (`--cluster1`).
    Cluster1,
}

impl ClusterName {
    /// `cluster0` or `cluster1`.
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterName::Cluster0 => "cluster0",
            ClusterName::Cluster1 => "cluster1",
        }
    }

    /// Parses `cluster0` / `cluster1` (exactly, as mongosync).
    pub fn parse(name: &str) -> Option<ClusterName> {
        match name {
            "cluster0" => Some(ClusterName::Cluster0),
            "cluster1" => Some(ClusterName::Cluster1),
            _ => None,
        }
    }
}

impl std::fmt::Display for ClusterName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The shape of a deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopologyKind {
    /// A replica set.
    ReplicaSet {
        /// Its name (`setName`).
        set_name: String,
    },
    /// A sharded cluster, reached through mongos.
    Sharded {
        /// Shard ids from `listShards`.
        shards: Vec<String>,
    },
    /// A single server without replication: no oplog, so no change streams.
    Standalone,
}

/// What [`probe`] learned about a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Replica set, sharded or standalone.
    pub kind: TopologyKind,
    /// Server version (`buildInfo.version`), e.g. `7.0.12`.
    pub version: String,
}

impl Topology {
    /// A replica set (tests, static set-ups).
    pub fn replica_set(set_name: &str, version: &str) -> Topology {
        Topology { kind: TopologyKind::ReplicaSet { set_name: set_name.to_string() }, version: version.to_string() }
    }

    /// A sharded cluster (tests, static set-ups).
    pub fn sharded(shards: &[&str], version: &str) -> Topology {
        Topology {
            kind: TopologyKind::Sharded { shards: shards.iter().map(|shard| shard.to_string()).collect() },
            version: version.to_string(),
        }
    }

    /// Whether the cluster is sharded.
    pub fn is_sharded(&self) -> bool {
        matches!(self.kind, TopologyKind::Sharded { .. })
    }

    /// Whether the cluster is a replica set.
    pub fn is_replica_set(&self) -> bool {
        matches!(self.kind, TopologyKind::ReplicaSet { .. })
    }

    /// Number of shards (1 for a replica set).
    pub fn shard_count(&self) -> usize {
        match &self.kind {
            TopologyKind::Sharded { shards } => shards.len(),
            TopologyKind::ReplicaSet { .. } | TopologyKind::Standalone => 1,
        }
    }

    /// A short description for messages: `replica set rs0`, `sharded cluster with 3 shards`.
    pub fn describe(&self) -> String {
        match &self.kind {
            TopologyKind::ReplicaSet { set_name } => format!("replica set {set_name}"),
            TopologyKind::Sharded { shards } => format!("sharded cluster with {} shards", shards.len()),
            TopologyKind::Standalone => "standalone server".to_string(),
        }
    }

    /// `(major, minor, patch)` of [`Topology::version`], if it parses.
    pub fn version_tuple(&self) -> Option<(u32, u32, u32)> {
        parse_version(&self.version)
    }

    /// Checks the cluster can take part in a sync: not standalone, version 6.0 or newer.
    ///
    /// # Errors
    ///
    /// A lowercase reason naming `cluster` (e.g. `cluster0 (the source)`).
    pub fn check_supported(&self, cluster: &str) -> Result<(), String> {
        if self.kind == TopologyKind::Standalone {
            return Err(format!(
                "{cluster} is a standalone server: change streams need a replica set or a sharded cluster \
                 (a single-node replica set works)"
            ));
        }
        match self.version_tuple() {
            Some((major, minor, _)) if (major, minor) >= MIN_SERVER_VERSION => Ok(()),
            Some(_) => Err(format!(
                "{cluster} runs MongoDB {}; clustersync needs {}.{} or newer",
                self.version, MIN_SERVER_VERSION.0, MIN_SERVER_VERSION.1
            )),
            None => Err(format!("{cluster} reports the unrecognised server version {:?}", self.version)),
        }
    }
}

/// Parses `7.0.12`, `8.0.0-rc1`, `6.0` into `(major, minor, patch)`.
pub fn parse_version(version: &str) -> Option<(u32, u32, u32)> {
    let core = version.split(['-', '+', ' ']).next()?;
    let mut parts = core.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let patch = parts.next().map_or(Some(0), |patch| patch.parse().ok())?;
    Some((major, minor, patch))
}

/// A probe that failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TopologyError {
    /// A command failed or the server could not be reached.
    #[error("{command} failed: {reason}")]
    Command {
        /// `hello`, `listShards` or `buildInfo`.
        command: &'static str,
        /// The driver's message (credentials removed).
        reason: String,
        /// Whether trying again later can succeed (network trouble, elections).
        retryable: bool,
    },
    /// The reply did not have the expected shape.
    #[error("unexpected {command} reply: {reason}")]
    Unexpected {
        /// The command.
        command: &'static str,
        /// What was missing or wrong.
        reason: String,
    },
    /// The client could not be set up (bad connection string).
    #[error("{0}")]
    Client(String),
}

impl TopologyError {
    /// Whether the same probe may succeed later.
    pub fn is_retryable(&self) -> bool {
        match self {
            TopologyError::Command { retryable, .. } => *retryable,
            TopologyError::Unexpected { .. } | TopologyError::Client(_) => false,
        }
    }
}

async fn run_admin(client: &Client, command: &'static str, body: Document) -> Result<Document, TopologyError> {
    client.database("admin").run_command(body).await.map_err(|error| TopologyError::Command {
        command,
        retryable: is_retryable_mongo(&error),
        reason: error.to_string(),
    })
}

/// Asks a cluster what it is: `hello` (mongos answers `msg: "isdbgrid"`, a replica-set member
/// `setName`), `listShards` on mongos, and `buildInfo` for the version.
///
/// # Errors
///
/// [`TopologyError`] if a command fails or a reply lacks a field.
pub async fn probe(client: &Client) -> Result<Topology, TopologyError> {
    let hello = run_admin(client, "hello", doc! { "hello": 1 }).await?;
    let kind = if hello.get_str("msg").is_ok_and(|msg| msg == "isdbgrid") {
        let reply = run_admin(client, "listShards", doc! { "listShards": 1 }).await?;
        let shards = reply
            .get_array("shards")
            .map_err(|_| TopologyError::Unexpected { command: "listShards", reason: "no shards array".into() })?
            .iter()
            .filter_map(|shard| shard.as_document().and_then(|shard| shard.get_str("_id").ok()).map(str::to_string))
            .collect();
        TopologyKind::Sharded { shards }
    } else if let Ok(set_name) = hello.get_str("setName") {
        TopologyKind::ReplicaSet { set_name: set_name.to_string() }
    } else {
        TopologyKind::Standalone
    };
    let build_info = run_admin(client, "buildInfo", doc! { "buildInfo": 1 }).await?;
    let version = build_info
        .get_str("version")
        .map_err(|_| TopologyError::Unexpected { command: "buildInfo", reason: "no version string".into() })?
        .to_string();
    Ok(Topology { kind, version })
}

/// How [`Control`](crate::control::Control) reaches the clusters.
#[async_trait]
pub trait ClusterProbe: Send + Sync + 'static {
    /// `host:port,...` of the cluster, without credentials (for `directionMapping`).
    fn hosts(&self, cluster: ClusterName) -> String;

    /// Probes the cluster now.
    async fn probe(&self, cluster: ClusterName) -> Result<Topology, TopologyError>;
}

/// Both clusters through the MongoDB driver.
pub struct MongoClusters {
    cluster0: Client,
    cluster1: Client,
    hosts0: String,
    hosts1: String,
}

impl MongoClusters {
    /// Builds clients for both connection strings (no connection is made until a probe).
    ///
    /// # Errors
    ///
    /// [`TopologyError::Client`] naming the cluster, without credentials.
    pub async fn connect(cluster0_uri: &str, cluster1_uri: &str) -> Result<MongoClusters, TopologyError> {
        let (cluster0, hosts0) = Self::client(cluster0_uri, "cluster0").await?;
        let (cluster1, hosts1) = Self::client(cluster1_uri, "cluster1").await?;
        Ok(MongoClusters { cluster0, cluster1, hosts0, hosts1 })
    }

    async fn client(uri: &str, name: &str) -> Result<(Client, String), TopologyError> {
        let mut options = client_options(uri, name).await.map_err(TopologyError::Client)?;
        // A timeout given in the URI wins; otherwise do not wait the driver's 30 s default.
        options.server_selection_timeout.get_or_insert(PROBE_SERVER_SELECTION_TIMEOUT);
        let hosts = options.hosts.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
        let client = Client::with_options(options)
            .map_err(|error| TopologyError::Client(format!("{name}: {}", redact_text(&error.to_string(), uri))))?;
        Ok((client, hosts))
    }

    /// The client of a cluster.
    pub fn client_of(&self, cluster: ClusterName) -> &Client {
        match cluster {
            ClusterName::Cluster0 => &self.cluster0,
            ClusterName::Cluster1 => &self.cluster1,
        }
    }
}

#[async_trait]
impl ClusterProbe for MongoClusters {
    fn hosts(&self, cluster: ClusterName) -> String {
        match cluster {
            ClusterName::Cluster0 => self.hosts0.clone(),
            ClusterName::Cluster1 => self.hosts1.clone(),
        }
    }

    async fn probe(&self, cluster: ClusterName) -> Result<Topology, TopologyError> {
        probe(self.client_of(cluster)).await
    }
}

/// Clusters whose topology is fixed in advance (tests; a probe never touches the network).
#[derive(Debug, Clone)]
pub struct StaticClusters {
    /// What `cluster0` reports.
    pub cluster0: Result<Topology, TopologyError>,
    /// What `cluster1` reports.
    pub cluster1: Result<Topology, TopologyError>,
    /// Hosts of `cluster0`.
    pub hosts0: String,
    /// Hosts of `cluster1`.
    pub hosts1: String,
}

impl StaticClusters {
    /// Two clusters of the given shapes, on `c0.example:27017` and `c1.example:27017`.
    pub fn new(cluster0: Topology, cluster1: Topology) -> StaticClusters {
        StaticClusters {
            cluster0: Ok(cluster0),
            cluster1: Ok(cluster1),
            hosts0: "c0.example:27017".into(),
            hosts1: "c1.example:27017".into(),
        }
    }

    /// Two 7.0 replica sets, `rs0` and `rs1`.
    pub fn replica_sets() -> StaticClusters {
        StaticClusters::new(Topology::replica_set("rs0", "7.0.12"), Topology::replica_set("rs1", "7.0.12"))
    }
}

#[async_trait]
impl ClusterProbe for StaticClusters {
    fn hosts(&self, cluster: ClusterName) -> String {
        match cluster {
            ClusterName::Cluster0 => self.hosts0.clone(),
            ClusterName::Cluster1 => self.hosts1.clone(),
        }
    }

    async fn probe(&self, cluster: ClusterName) -> Result<Topology, TopologyError> {
        match cluster {
            ClusterName::Cluster0 => self.cluster0.clone(),
            ClusterName::Cluster1 => self.cluster1.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_with_suffixes() {
        assert_eq!(parse_version("7.0.12"), Some((7, 0, 12)));
        assert_eq!(parse_version("8.0.0-rc1"), Some((8, 0, 0)));
        assert_eq!(parse_version("6.0"), Some((6, 0, 0)));
        assert_eq!(parse_version("seven"), None);
        assert_eq!(parse_version("7.x.1"), None);
    }

    #[test]
    fn standalone_and_old_servers_are_refused() {
        let standalone = Topology { kind: TopologyKind::Standalone, version: "7.0.0".into() };
        let error = standalone.check_supported("cluster0 (the source)").unwrap_err();
        assert!(error.contains("standalone") && error.contains("change streams"), "{error}");
        let old = Topology::replica_set("rs0", "5.0.26");
        let error = old.check_supported("cluster1").unwrap_err();
        assert!(error.contains("5.0.26") && error.contains("6.0"), "{error}");
        Topology::replica_set("rs0", "6.0.0").check_supported("cluster0").unwrap();
        Topology::sharded(&["a", "b"], "8.0.1").check_supported("cluster0").unwrap();
        assert!(Topology::replica_set("rs0", "").check_supported("cluster0").is_err());
    }

    #[test]
    fn shapes_describe_themselves() {
        assert_eq!(Topology::sharded(&["a", "b", "c"], "7.0.0").describe(), "sharded cluster with 3 shards");
        assert_eq!(Topology::replica_set("rs0", "7.0.0").shard_count(), 1);
        assert_eq!(ClusterName::parse("cluster1"), Some(ClusterName::Cluster1));
        assert_eq!(ClusterName::parse("Cluster1"), None);
    }
}
