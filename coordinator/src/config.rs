//! Configuration of one `clustersync` process.
//!
//! Values come from four layers, highest precedence first: command-line flags
//! ([`crate::cli::RunArgs`]), environment variables (`CLUSTERSYNC_*`, see [`env`]), the YAML
//! file given with `--config` ([`FileConfig`], keys named like the flags) and the defaults.
//! [`Config::load`] merges the layers and parses each value (an error names the field and the
//! layer it came from); [`Config::validate`] then checks what needs more than a parse: the
//! connection strings (through the same code the workers connect with), the etcd settings,
//! the worker settings and the paths.
//!
//! Connection strings carry credentials: nothing in this module prints one unredacted, not the
//! `Debug` output of [`Config`] and not any [`ConfigError`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clustersync_common::ids::{InstanceId, MigrationId};
use clustersync_common::{keys, time_constants};
use clustersync_worker::mongo::{client_options, redact_text, redact_uri};
use clustersync_worker::settings::WorkerSettings;
use serde::Deserialize;

use crate::cli::{Mode, RunArgs};

/// Default port of the REST API (mongosync's).
pub const DEFAULT_PORT: u16 = 27182;

/// Default port of the gRPC API.
pub const DEFAULT_GRPC_PORT: u16 = 27183;

/// Default address of the REST API: localhost only, as mongosync (the API has no authentication).
pub const DEFAULT_BIND_ADDRESS: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Default migration name.
pub const DEFAULT_MIGRATION_NAME: &str = "default";

/// Directory under which the default state directory (`<this>/<migrationName>`) is created.
pub const DEFAULT_STATE_ROOT: &str = "clustersync-state";

/// Default log level.
///
/// mongosync defaults to DEBUG (since 1.5). Ours is INFO: at DEBUG every copy batch, spool write
/// and store round trip is logged, which drowns the lines an operator needs on stderr.
pub const DEFAULT_VERBOSITY: Verbosity = Verbosity::Info;

/// Names of the environment variables read by [`Config::load`].
pub mod env {
    /// `--cluster0`.
    pub const CLUSTER0: &str = "CLUSTERSYNC_CLUSTER0";
    /// `--cluster1`.
    pub const CLUSTER1: &str = "CLUSTERSYNC_CLUSTER1";
    /// `--port`.
    pub const PORT: &str = "CLUSTERSYNC_PORT";
    /// `--grpcPort`.
    pub const GRPC_PORT: &str = "CLUSTERSYNC_GRPC_PORT";
    /// `--id`.
    pub const ID: &str = "CLUSTERSYNC_ID";
    /// `--verbosity`.
    pub const VERBOSITY: &str = "CLUSTERSYNC_VERBOSITY";
    /// `--stateDir`.
    pub const STATE_DIR: &str = "CLUSTERSYNC_STATE_DIR";
    /// `--etcd`, comma-separated.
    pub const ETCD_ENDPOINTS: &str = "CLUSTERSYNC_ETCD_ENDPOINTS";
}

/// Reads a variable from the process environment (empty counts as unset).
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

/// Log levels, mongosync's names. FATAL and PANIC log as ERROR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    /// Everything, including the drivers' internals.
    Trace,
    /// Per-batch and per-round-trip detail.
    Debug,
    /// Lifecycle events and progress (the default).
    Info,
    /// Retried errors and anomalies.
    Warn,
    /// Failures only.
    Error,
    /// As ERROR.
    Fatal,
    /// As ERROR.
    Panic,
}

impl Verbosity {
    /// Every level, most verbose first.
    pub const ALL: [Verbosity; 7] = [
        Verbosity::Trace,
        Verbosity::Debug,
        Verbosity::Info,
        Verbosity::Warn,
        Verbosity::Error,
        Verbosity::Fatal,
        Verbosity::Panic,
    ];

    /// The name, upper case.
    pub fn as_str(self) -> &'static str {
        match self {
            Verbosity::Trace => "TRACE",
            Verbosity::Debug => "DEBUG",
            Verbosity::Info => "INFO",
            Verbosity::Warn => "WARN",
            Verbosity::Error => "ERROR",
            Verbosity::Fatal => "FATAL",
            Verbosity::Panic => "PANIC",
        }
    }

    /// The tracing level it maps to.
    pub fn level(self) -> tracing::Level {
        match self {
            Verbosity::Trace => tracing::Level::TRACE,
            Verbosity::Debug => tracing::Level::DEBUG,
            Verbosity::Info => tracing::Level::INFO,
            Verbosity::Warn => tracing::Level::WARN,
            Verbosity::Error | Verbosity::Fatal | Verbosity::Panic => tracing::Level::ERROR,
        }
    }
}

impl fmt::Display for Verbosity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Verbosity {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Verbosity::ALL.into_iter().find(|level| level.as_str().eq_ignore_ascii_case(text.trim())).ok_or_else(|| {
            format!("unknown level {text:?} (expected one of TRACE, DEBUG, INFO, WARN, ERROR, FATAL, PANIC)")
        })
    }
}

/// The `--config` YAML file. Keys are the flag names; unknown keys are an error.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FileConfig {
    /// `--cluster0`.
    pub cluster0: Option<String>,
    /// `--cluster1`.
    pub cluster1: Option<String>,
    /// `--port` (wider than `u16` so an out-of-range value gets our message, not serde's).
    pub port: Option<i64>,
    /// `--grpcPort` (wider than `u16`, as `port`).
    pub grpc_port: Option<i64>,
    /// `--bindAddress`.
    pub bind_address: Option<String>,
    /// `--id`.
    pub id: Option<String>,
    /// `--logPath`.
    pub log_path: Option<PathBuf>,
    /// `--verbosity`.
    pub verbosity: Option<String>,
    /// `--acceptDisclaimer`.
    pub accept_disclaimer: Option<bool>,
    /// `--stateDir`.
    pub state_dir: Option<PathBuf>,
    /// `--migrationName`.
    pub migration_name: Option<String>,
    /// Data-plane tunables.
    pub worker: Option<WorkerSettings>,
    /// Distributed mode: where etcd is and how keys and leases are laid out.
    pub etcd: Option<EtcdFileConfig>,
}

/// The `etcd:` section of the YAML file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EtcdFileConfig {
    /// Endpoints (`http://host:2379` or `host:2379`).
    pub endpoints: Option<Vec<String>>,
    /// Prefix of every key (default `/clustersync`).
    pub root_prefix: Option<String>,
    /// TTL of each process's lease (default 10s), e.g. `15s`.
    #[serde(default, with = "humantime_serde")]
    pub lease_ttl: Option<Duration>,
    /// etcd user, when authentication is on.
    pub username: Option<String>,
    /// Password of `username`.
    pub password: Option<String>,
}

/// The resolved etcd settings.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Endpoints; empty means "no etcd": the single-process mode uses the embedded store.
    pub endpoints: Vec<String>,
    /// Prefix of every key.
    pub root_prefix: String,
    /// TTL of each process's lease.
    pub lease_ttl: Duration,
    /// etcd user.
    pub username: Option<String>,
    /// Password of `username` (never printed).
    pub password: Option<String>,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: Vec::new(),
            root_prefix: keys::DEFAULT_ROOT.to_string(),
            lease_ttl: time_constants::DEFAULT_LEASE_TTL,
            username: None,
            password: None,
        }
    }
}

impl fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("root_prefix", &self.root_prefix)
            .field("lease_ttl", &self.lease_ttl)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Where a value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A command-line flag (`--port`).
    Flag(&'static str),
    /// An environment variable.
    Env(&'static str),
    /// A key of the config file.
    File {
        /// The key, with its section (`etcd.rootPrefix`).
        key: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// The built-in default.
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(flag) => write!(f, "{flag}"),
            Origin::Env(name) => write!(f, "{name}"),
            Origin::File { key, path } => write!(f, "{key} in {}", path.display()),
            Origin::Default => write!(f, "the default"),
        }
    }
}

/// A configuration that cannot be used. Messages name the field and where its value came from,
/// and never contain credentials.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The `--config` file cannot be read.
    #[error("cannot read config file {}: {source}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The `--config` file is not valid YAML for [`FileConfig`] (unknown key, wrong type).
    #[error("invalid config file {}: {reason}", path.display())]
    ParseFile {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key.
        reason: String,
    },
    /// A required value was given nowhere.
    #[error("{field} is required: {hint}")]
    Missing {
        /// The field (`cluster0`).
        field: &'static str,
        /// How to give it.
        hint: String,
    },
    /// A value is invalid.
    #[error("invalid {field} (from {origin}): {reason}")]
    Invalid {
        /// The field, named like the flag / YAML key (`port`, `etcd.leaseTtl`).
        field: &'static str,
        /// Where the value came from.
        origin: Origin,
        /// What is wrong with it.
        reason: String,
    },
}

/// The resolved configuration of one process.
#[derive(Clone)]
pub struct Config {
    /// Which roles the process runs.
    pub mode: Mode,
    /// Connection string of cluster0 (holds credentials: print only through [`redact_uri`]).
    pub cluster0: String,
    /// Connection string of cluster1 (holds credentials: print only through [`redact_uri`]).
    pub cluster1: String,
    /// REST API port; 0 picks a free port (tests).
    pub port: u16,
    /// gRPC API port, on `bind_address`; 0 picks a free port.
    pub grpc_port: u16,
    /// REST API address.
    pub bind_address: IpAddr,
    /// This process's identity (`mongosyncID`).
    pub id: InstanceId,
    /// The migration's name: its keys live under `{etcd.rootPrefix}/{migrationName}/`.
    pub migration_name: MigrationId,
    /// Directory of the JSON log file, if any.
    pub log_path: Option<PathBuf>,
    /// Log level.
    pub verbosity: Verbosity,
    /// Whether the verifier disclaimer is accepted without a prompt.
    pub accept_disclaimer: bool,
    /// Directory of the embedded store (used when `etcd.endpoints` is empty).
    pub state_dir: PathBuf,
    /// Data-plane tunables.
    pub worker: WorkerSettings,
    /// etcd settings.
    pub etcd: EtcdConfig,
    /// The `--config` file, if one was given.
    pub config_file: Option<PathBuf>,
    /// Where each value came from, keyed by field name, for error messages.
    origins: BTreeMap<&'static str, Origin>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("mode", &self.mode)
            .field("cluster0", &redact_uri(&self.cluster0))
            .field("cluster1", &redact_uri(&self.cluster1))
            .field("port", &self.port)
            .field("grpc_port", &self.grpc_port)
            .field("bind_address", &self.bind_address)
            .field("id", &self.id)
            .field("migration_name", &self.migration_name)
            .field("log_path", &self.log_path)
            .field("verbosity", &self.verbosity)
            .field("accept_disclaimer", &self.accept_disclaimer)
            .field("state_dir", &self.state_dir)
            .field("worker", &self.worker)
            .field("etcd", &self.etcd)
            .field("config_file", &self.config_file)
            .finish()
    }
}

/// One value and where it came from.
struct Sourced<T> {
    value: T,
    origin: Origin,
}

/// Picks the first layer that has a value: flag, then env, then file.
fn pick<T>(
    flag: Option<(T, &'static str)>,
    env: Option<(T, &'static str)>,
    file: Option<(T, &'static str)>,
    file_path: Option<&Path>,
) -> Option<Sourced<T>> {
    if let Some((value, flag)) = flag {
        return Some(Sourced { value, origin: Origin::Flag(flag) });
    }
    if let Some((value, name)) = env {
        return Some(Sourced { value, origin: Origin::Env(name) });
    }
    file.map(|(value, key)| Sourced {
        value,
        origin: Origin::File { key, path: file_path.map(Path::to_path_buf).unwrap_or_default() },
    })
}

impl Config {
    /// Merges flags, environment (`env` returns a variable's value, `None` if unset), the config
    /// file named by `--config` and the defaults, and parses every value.
    ///
    /// `etcd_flag` holds the endpoints of `--etcd` (distributed subcommands only).
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the field: the file cannot be read or has an unknown key or a
    /// wrong type, a required URI is missing, a value does not parse (port, verbosity, ids,
    /// bind address).
    pub fn load(
        mode: Mode,
        args: &RunArgs,
        etcd_flag: &[String],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file_config(path)?,
            None => FileConfig::default(),
        };
        let file_path = args.config.as_deref();
        let mut origins = BTreeMap::new();
        let env = |name: &'static str| env(name).filter(|value| !value.is_empty()).map(|value| (value, name));

        let mut required_uri = |field: &'static str, flag: &Option<String>, env_name, file_value: &Option<String>| {
            let hint = format!("pass --{field} URI, set {env_name} or put `{field}` in the config file");
            let sourced = pick(
                flag.clone().map(|v| (v, if field == "cluster0" { "--cluster0" } else { "--cluster1" })),
                env(env_name),
                file_value.clone().map(|v| (v, field)),
                file_path,
            )
            .ok_or(ConfigError::Missing { field, hint })?;
            origins.insert(field, sourced.origin);
            Ok::<_, ConfigError>(sourced.value)
        };
        let cluster0 = required_uri("cluster0", &args.cluster0, env::CLUSTER0, &file.cluster0)?;
        let cluster1 = required_uri("cluster1", &args.cluster1, env::CLUSTER1, &file.cluster1)?;

        let port = match pick(
            args.port.map(|port| (i64::from(port), "--port")),
            env(env::PORT)
                .map(|(text, name)| {
                    text.trim().parse::<i64>().map(|port| (port, name)).map_err(|_| ConfigError::Invalid {
                        field: "port",
                        origin: Origin::Env(name),
                        reason: format!("expected an integer between 1 and 65535, got {text:?}"),
                    })
                })
                .transpose()?,
            file.port.map(|port| (port, "port")),
            file_path,
        ) {
            Some(Sourced { value, origin }) => {
                let port = u16::try_from(value).map_err(|_| ConfigError::Invalid {
                    field: "port",
                    origin: origin.clone(),
                    reason: format!("expected an integer between 1 and 65535, got {value}"),
                })?;
                origins.insert("port", origin);
                port
            }
            None => DEFAULT_PORT,
        };

        let grpc_port = match pick(
            args.grpc_port.map(|port| (i64::from(port), "--grpcPort")),
            env(env::GRPC_PORT)
                .map(|(text, name)| {
                    text.trim().parse::<i64>().map(|port| (port, name)).map_err(|_| ConfigError::Invalid {
                        field: "grpcPort",
                        origin: Origin::Env(name),
                        reason: format!("expected an integer between 0 and 65535, got {text:?}"),
                    })
                })
                .transpose()?,
            file.grpc_port.map(|port| (port, "grpcPort")),
            file_path,
        ) {
            Some(Sourced { value, origin }) => {
                let port = u16::try_from(value).map_err(|_| ConfigError::Invalid {
                    field: "grpcPort",
                    origin: origin.clone(),
                    reason: format!("expected an integer between 0 and 65535 (0 picks a free port), got {value}"),
                })?;
                origins.insert("grpcPort", origin);
                port
            }
            None => DEFAULT_GRPC_PORT,
        };

        let bind_address = match pick(
            args.bind_address.clone().map(|v| (v, "--bindAddress")),
            None,
            file.bind_address.clone().map(|v| (v, "bindAddress")),
            file_path,
        ) {
            Some(Sourced { value, origin }) => {
                let address = value.trim().parse::<IpAddr>().map_err(|_| ConfigError::Invalid {
                    field: "bindAddress",
                    origin: origin.clone(),
                    reason: format!("expected an IP address such as 127.0.0.1 or ::1, got {value:?}"),
                })?;
                origins.insert("bindAddress", origin);
                address
            }
            None => DEFAULT_BIND_ADDRESS,
        };

        let id = match pick(
            args.id.clone().map(|v| (v, "--id")),
            env(env::ID),
            file.id.clone().map(|v| (v, "id")),
            file_path,
        ) {
            Some(Sourced { value, origin }) => {
                let id = InstanceId::new(value).map_err(|error| ConfigError::Invalid {
                    field: "id",
                    origin: origin.clone(),
                    reason: error.to_string(),
                })?;
                origins.insert("id", origin);
                id
            }
            None => InstanceId::random(match mode {
                Mode::Single => "node",
                Mode::Coordinator => "coordinator",
                Mode::Worker => "worker",
            }),
        };

        let migration_name = match pick(
            args.migration_name.clone().map(|v| (v, "--migrationName")),
            None,
            file.migration_name.clone().map(|v| (v, "migrationName")),
            file_path,
        ) {
            Some(Sourced { value, origin }) => {
                let name = MigrationId::new(value).map_err(|error| ConfigError::Invalid {
                    field: "migrationName",
                    origin: origin.clone(),
                    reason: error.to_string(),
                })?;
                origins.insert("migrationName", origin);
                name
            }
            None => MigrationId::new(DEFAULT_MIGRATION_NAME).expect("the default migration name is valid"),
        };

        let verbosity = match pick(
            args.verbosity.clone().map(|v| (v, "--verbosity")),
            env(env::VERBOSITY),
            file.verbosity.clone().map(|v| (v, "verbosity")),
            file_path,
        ) {
            Some(Sourced { value, origin }) => {
                let level = value.parse::<Verbosity>().map_err(|reason| ConfigError::Invalid {
                    field: "verbosity",
                    origin: origin.clone(),
                    reason,
                })?;
                origins.insert("verbosity", origin);
                level
            }
            None => DEFAULT_VERBOSITY,
        };

        let log_path = pick(
            args.log_path.clone().map(|v| (v, "--logPath")),
            None,
            file.log_path.clone().map(|v| (v, "logPath")),
            file_path,
        )
        .map(|Sourced { value, origin }| {
            origins.insert("logPath", origin);
            value
        });

        let state_dir = pick(
            args.state_dir.clone().map(|v| (v, "--stateDir")),
            env(env::STATE_DIR).map(|(v, name)| (PathBuf::from(v), name)),
            file.state_dir.clone().map(|v| (v, "stateDir")),
            file_path,
        )
        .map(|Sourced { value, origin }| {
            origins.insert("stateDir", origin);
            value
        })
        .unwrap_or_else(|| Path::new(DEFAULT_STATE_ROOT).join(migration_name.as_str()));

        let accept_disclaimer = args.accept_disclaimer || file.accept_disclaimer.unwrap_or(false);

        let file_etcd = file.etcd.clone().unwrap_or_default();
        let defaults = EtcdConfig::default();
        let endpoints = pick(
            (!etcd_flag.is_empty()).then(|| (etcd_flag.to_vec(), "--etcd")),
            env(env::ETCD_ENDPOINTS).map(|(text, name)| (split_endpoints(&text), name)),
            file_etcd.endpoints.clone().map(|v| (v, "etcd.endpoints")),
            file_path,
        )
        .map(|Sourced { value, origin }| {
            origins.insert("etcd.endpoints", origin);
            value
        })
        .unwrap_or_default();
        let mut from_file = |key: &'static str| {
            if let Some(path) = file_path {
                origins.insert(key, Origin::File { key, path: path.to_path_buf() });
            }
        };
        if file_etcd.root_prefix.is_some() {
            from_file("etcd.rootPrefix");
        }
        if file_etcd.lease_ttl.is_some() {
            from_file("etcd.leaseTtl");
        }
        if file.worker.is_some() {
            from_file("worker");
        }
        let etcd = EtcdConfig {
            endpoints,
            root_prefix: file_etcd.root_prefix.unwrap_or(defaults.root_prefix),
            lease_ttl: file_etcd.lease_ttl.unwrap_or(defaults.lease_ttl),
            username: file_etcd.username,
            password: file_etcd.password,
        };

        Ok(Config {
            mode,
            cluster0,
            cluster1,
            port,
            grpc_port,
            bind_address,
            id,
            migration_name,
            log_path,
            verbosity,
            accept_disclaimer,
            state_dir,
            worker: file.worker.unwrap_or_default(),
            etcd,
            config_file: args.config.clone(),
            origins,
        })
    }

    /// A configuration for tests: the given URIs, a free port, an in-tree state directory,
    /// every other value at its default.
    pub fn for_test(cluster0: &str, cluster1: &str) -> Config {
        Config {
            mode: Mode::Single,
            cluster0: cluster0.to_string(),
            cluster1: cluster1.to_string(),
            port: 0,
            grpc_port: 0,
            bind_address: DEFAULT_BIND_ADDRESS,
            id: InstanceId::random("test"),
            migration_name: MigrationId::new(DEFAULT_MIGRATION_NAME).expect("valid"),
            log_path: None,
            verbosity: DEFAULT_VERBOSITY,
            accept_disclaimer: true,
            state_dir: std::env::temp_dir().join(DEFAULT_STATE_ROOT).join(InstanceId::random("state").as_str()),
            worker: WorkerSettings::default(),
            etcd: EtcdConfig::default(),
            config_file: None,
            origins: BTreeMap::new(),
        }
    }

    /// Where the value of `field` came from.
    pub fn origin(&self, field: &str) -> Origin {
        self.origins.get(field).cloned().unwrap_or(Origin::Default)
    }

    /// Whether the coordination store is etcd (otherwise the embedded store in `state_dir`).
    pub fn uses_etcd(&self) -> bool {
        !self.etcd.endpoints.is_empty()
    }

    fn invalid(&self, field: &'static str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid { field, origin: self.origin(field), reason: reason.into() }
    }

    /// Checks everything a parse cannot: both connection strings (with the workers' own
    /// [`client_options`]: scheme, syntax, majority read and write concerns, no
    /// `socketTimeoutMS`), that they differ, that the REST and gRPC ports differ, the etcd
    /// endpoints (required by the `coordinator` and `worker` subcommands), root prefix and
    /// lease TTL, the worker settings, and that the paths are usable directories.
    ///
    /// # Errors
    ///
    /// The first problem found, as [`ConfigError::Invalid`] or [`ConfigError::Missing`].
    pub async fn validate(&self) -> Result<(), ConfigError> {
        for (field, uri) in [("cluster0", &self.cluster0), ("cluster1", &self.cluster1)] {
            client_options(uri, field).await.map_err(|reason| self.invalid(field, redact_text(&reason, uri)))?;
        }
        if self.cluster0.trim() == self.cluster1.trim() {
            return Err(self.invalid(
                "cluster1",
                "cluster0 and cluster1 are the same connection string; the source and the destination must be different clusters",
            ));
        }

        if self.mode.runs_coordinator() && self.port != 0 && self.port == self.grpc_port {
            return Err(self.invalid(
                "grpcPort",
                format!(
                    "the gRPC API cannot share port {} with the REST API (port); choose another grpcPort",
                    self.port
                ),
            ));
        }

        match self.mode {
            Mode::Coordinator | Mode::Worker if self.etcd.endpoints.is_empty() => {
                return Err(ConfigError::Missing {
                    field: "etcd.endpoints",
                    hint: format!(
                        "the {} subcommand runs against etcd: pass --etcd ENDPOINTS, set {} or put etcd.endpoints in the config file",
                        self.mode.as_str(),
                        env::ETCD_ENDPOINTS
                    ),
                });
            }
            _ => {}
        }
        for endpoint in &self.etcd.endpoints {
            validate_endpoint(endpoint).map_err(|reason| self.invalid("etcd.endpoints", reason))?;
        }
        keys::validate_root(&self.etcd.root_prefix)
            .map_err(|error| self.invalid("etcd.rootPrefix", error.to_string()))?;
        time_constants::validate_lease_ttl(self.etcd.lease_ttl)
            .map_err(|reason| self.invalid("etcd.leaseTtl", reason))?;
        if self.etcd.password.is_some() && self.etcd.username.is_none() {
            return Err(self.invalid("etcd.username", "etcd.password is set but etcd.username is not"));
        }

        self.worker.validate().map_err(|reason| self.invalid("worker", reason))?;

        if let Some(dir) = &self.log_path {
            not_a_file(dir).map_err(|reason| self.invalid("logPath", reason))?;
        }
        if !self.uses_etcd() {
            not_a_file(&self.state_dir).map_err(|reason| self.invalid("stateDir", reason))?;
        }
        Ok(())
    }
}

fn split_endpoints(text: &str) -> Vec<String> {
    text.split(',').map(str::trim).filter(|endpoint| !endpoint.is_empty()).map(str::to_string).collect()
}

/// An endpoint is `http(s)://host:port` or `host:port`.
fn validate_endpoint(endpoint: &str) -> Result<(), String> {
    if endpoint.is_empty() || endpoint.chars().any(char::is_whitespace) {
        return Err(format!("endpoint {endpoint:?} is empty or contains whitespace"));
    }
    let authority = match endpoint.split_once("://") {
        Some(("http" | "https", rest)) => rest,
        Some((scheme, _)) => {
            return Err(format!("endpoint {endpoint:?} has the scheme {scheme:?}; use http:// or https://"));
        }
        None => endpoint,
    };
    let authority = authority.trim_end_matches('/');
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|port| port > 0) => Ok(()),
        _ => Err(format!("endpoint {endpoint:?} must be host:port, e.g. http://127.0.0.1:2379")),
    }
}

fn not_a_file(path: &Path) -> Result<(), String> {
    if path.is_file() {
        return Err(format!("{} is a file, not a directory", path.display()));
    }
    Ok(())
}

/// Reads and parses the YAML file; errors name the offending key with its path
/// (`worker.taskSlots`) and position.
fn read_file_config(path: &Path) -> Result<FileConfig, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile { path: path.to_path_buf(), source })?;
    parse_file_config(path, &text)
}

/// Parses the text of a config file (an empty file is an empty configuration).
pub fn parse_file_config(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
    let parse_error = |reason: String| ConfigError::ParseFile { path: path.to_path_buf(), reason };
    if text.lines().all(|line| line.trim().is_empty() || line.trim_start().starts_with('#')) {
        return Ok(FileConfig::default());
    }
    let deserializer = serde_yaml_ng::Deserializer::from_str(text);
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let path = error.path().to_string();
        // Nothing read from the file is echoed back except key names: a malformed value may be
        // a connection string with a password in it.
        let reason = scrub_values(&error.inner().to_string());
        if path.is_empty() || path == "." { parse_error(reason) } else { parse_error(format!("at `{path}`: {reason}")) }
    })
}

/// Removes quoted values a YAML error may echo (`invalid type: string "mongodb://u:p@h"`).
fn scrub_values(message: &str) -> String {
    match message.find("invalid type: string \"") {
        Some(start) => {
            let value_start = start + "invalid type: string ".len();
            let rest = &message[value_start + 1..];
            match rest.find('"') {
                Some(end) => format!("{}a string{}", &message[..value_start], &rest[end + 1..]),
                None => message[..value_start].to_string() + "a string",
            }
        }
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const URI0: &str = "mongodb://alice:s3cret@h0:27017/?replicaSet=rs0";
    const URI1: &str = "mongodb://h1:27017/?replicaSet=rs1";

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name: &str| vars.get(name).cloned()
    }

    fn args(flags: &[&str]) -> RunArgs {
        use clap::Parser;
        crate::cli::Cli::try_parse_from(std::iter::once("clustersync").chain(flags.iter().copied())).unwrap().run
    }

    fn write_file(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let path = dir.path().join("clustersync.yaml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn defaults_apply_when_nothing_else_is_given() {
        let config =
            Config::load(Mode::Single, &args(&["--cluster0", URI0, "--cluster1", URI1]), &[], &env_of(&[])).unwrap();
        assert_eq!(config.port, DEFAULT_PORT);
        assert_eq!(config.bind_address, DEFAULT_BIND_ADDRESS);
        assert_eq!(config.verbosity, Verbosity::Info);
        assert_eq!(config.migration_name.as_str(), "default");
        assert_eq!(config.state_dir, PathBuf::from("clustersync-state/default"));
        assert!(config.id.as_str().starts_with("node-"));
        assert!(!config.accept_disclaimer);
        assert!(!config.uses_etcd());
        assert_eq!(config.etcd.root_prefix, "/clustersync");
        assert_eq!(config.origin("port"), Origin::Default);
    }

    #[test]
    fn flags_beat_env_which_beats_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = write_file(
            &dir,
            &format!(
                "cluster0: {URI0}\ncluster1: {URI1}\nport: 1111\nverbosity: warn\nid: from-file\nstateDir: /file/state\nmigrationName: m-file\nacceptDisclaimer: true\n"
            ),
        );
        let file_arg = file.to_str().unwrap();
        let env = env_of(&[(env::PORT, "2222"), (env::VERBOSITY, "error"), (env::ID, "from-env")]);

        let config = Config::load(Mode::Single, &args(&["--config", file_arg]), &[], &env).unwrap();
        assert_eq!(config.port, 2222, "env beats the file");
        assert_eq!(config.verbosity, Verbosity::Error);
        assert_eq!(config.id.as_str(), "from-env");
        assert_eq!(config.origin("port"), Origin::Env(env::PORT));
        assert_eq!(config.state_dir, PathBuf::from("/file/state"), "the file beats the default");
        assert_eq!(config.migration_name.as_str(), "m-file");
        assert!(config.accept_disclaimer);
        assert_eq!(config.cluster0, URI0);

        let config = Config::load(
            Mode::Single,
            &args(&["--config", file_arg, "--port", "3333", "--verbosity", "TRACE", "--id", "from-flag"]),
            &[],
            &env,
        )
        .unwrap();
        assert_eq!(config.port, 3333, "the flag beats env");
        assert_eq!(config.verbosity, Verbosity::Trace);
        assert_eq!(config.id.as_str(), "from-flag");
        assert_eq!(config.origin("port"), Origin::Flag("--port"));

        let config = Config::load(
            Mode::Single,
            &args(&["--config", file_arg]),
            &[],
            &env_of(&[(env::CLUSTER0, "mongodb://envhost/?replicaSet=x")]),
        )
        .unwrap();
        assert_eq!(config.cluster0, "mongodb://envhost/?replicaSet=x");
        assert_eq!(config.port, 1111);
    }

    #[test]
    fn state_dir_defaults_under_the_migration_name() {
        let config = Config::load(
            Mode::Single,
            &args(&["--cluster0", URI0, "--cluster1", URI1, "--migrationName", "orders"]),
            &[],
            &env_of(&[]),
        )
        .unwrap();
        assert_eq!(config.state_dir, PathBuf::from("clustersync-state/orders"));
        let config = Config::load(
            Mode::Single,
            &args(&["--cluster0", URI0, "--cluster1", URI1]),
            &[],
            &env_of(&[(env::STATE_DIR, "/env/state")]),
        )
        .unwrap();
        assert_eq!(config.state_dir, PathBuf::from("/env/state"));
    }

    #[test]
    fn unknown_yaml_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = write_file(&dir, "cluster0: mongodb://a\nloadLevel: 3\n");
        let error =
            Config::load(Mode::Single, &args(&["--config", file.to_str().unwrap()]), &[], &env_of(&[])).unwrap_err();
        let message = error.to_string();
        assert!(matches!(error, ConfigError::ParseFile { .. }));
        assert!(message.contains("loadLevel"), "{message}");

        let file = write_file(&dir, "worker:\n  taskSlot: 3\n");
        let message = Config::load(Mode::Single, &args(&["--config", file.to_str().unwrap()]), &[], &env_of(&[]))
            .unwrap_err()
            .to_string();
        assert!(message.contains("taskSlot") && message.contains("worker"), "{message}");

        let file = write_file(&dir, "etcd:\n  rootprefix: /x\n");
        let message = Config::load(Mode::Single, &args(&["--config", file.to_str().unwrap()]), &[], &env_of(&[]))
            .unwrap_err()
            .to_string();
        assert!(message.contains("rootprefix") && message.contains("etcd"), "{message}");
    }

    #[test]
    fn yaml_type_errors_name_the_key_and_hide_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let file = write_file(
            &dir,
            "cluster0: mongodb://a\ncluster1: mongodb://b\nacceptDisclaimer: \"mongodb://u:hunter2@h\"\n",
        );
        let message = Config::load(Mode::Single, &args(&["--config", file.to_str().unwrap()]), &[], &env_of(&[]))
            .unwrap_err()
            .to_string();
        assert!(message.contains("acceptDisclaimer"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
    }

    #[test]
    fn missing_uris_say_how_to_give_them() {
        let error = Config::load(Mode::Single, &args(&["--cluster0", URI0]), &[], &env_of(&[])).unwrap_err();
        let message = error.to_string();
        assert!(message.starts_with("cluster1 is required"), "{message}");
        assert!(message.contains("--cluster1") && message.contains(env::CLUSTER1), "{message}");
    }

    #[test]
    fn parse_errors_name_the_field_and_its_origin() {
        let base = ["--cluster0", URI0, "--cluster1", URI1];
        let load = |extra: &[&str], env: &[(&str, &str)]| {
            let flags: Vec<&str> = base.iter().chain(extra).copied().collect();
            Config::load(Mode::Single, &args(&flags), &[], &env_of(env)).unwrap_err().to_string()
        };
        let message = load(&[], &[(env::PORT, "http")]);
        assert!(message.contains("port") && message.contains(env::PORT), "{message}");
        let message = load(&[], &[(env::PORT, "70000")]);
        assert!(message.contains("between 1 and 65535"), "{message}");
        let message = load(&["--verbosity", "LOUD"], &[]);
        assert!(
            message.contains("verbosity") && message.contains("--verbosity") && message.contains("PANIC"),
            "{message}"
        );
        let message = load(&["--id", "a/b"], &[]);
        assert!(message.contains("invalid id"), "{message}");
        let message = load(&["--migrationName", "x y"], &[]);
        assert!(message.contains("migrationName"), "{message}");
        let message = load(&["--bindAddress", "localhost"], &[]);
        assert!(message.contains("bindAddress"), "{message}");

        let dir = tempfile::tempdir().unwrap();
        let file = write_file(&dir, "port: -1\n");
        let flags = ["--cluster0", URI0, "--cluster1", URI1, "--config", file.to_str().unwrap()];
        let message = Config::load(Mode::Single, &args(&flags), &[], &env_of(&[])).unwrap_err().to_string();
        assert!(message.contains("port in") && message.contains("clustersync.yaml"), "{message}");
    }

    #[test]
    fn verbosity_is_case_insensitive_and_maps_fatal_to_error() {
        assert_eq!("fatal".parse::<Verbosity>().unwrap().level(), tracing::Level::ERROR);
        assert_eq!("Panic".parse::<Verbosity>().unwrap().level(), tracing::Level::ERROR);
        assert_eq!("debug".parse::<Verbosity>().unwrap(), Verbosity::Debug);
        assert!("verbose".parse::<Verbosity>().is_err());
    }

    #[tokio::test]
    async fn validation_checks_uris_without_leaking_credentials() {
        let mut config = Config::for_test("mongodb://alice:s3cret@h0/?readConcernLevel=local", URI1);
        let message = config.validate().await.unwrap_err().to_string();
        assert!(message.contains("cluster0") && message.contains("read concern must be majority"), "{message}");
        assert!(!message.contains("s3cret"), "{message}");

        config.cluster0 = "http://alice:s3cret@h0".into();
        let message = config.validate().await.unwrap_err().to_string();
        assert!(message.contains("mongodb://") && !message.contains("s3cret"), "{message}");

        config.cluster0 = "mongodb://alice:s3cret@[bad".into();
        let message = config.validate().await.unwrap_err().to_string();
        assert!(message.contains("cluster0") && !message.contains("s3cret"), "{message}");

        config.cluster0 = URI1.into();
        let message = config.validate().await.unwrap_err().to_string();
        assert!(message.contains("same connection string"), "{message}");

        config.cluster0 = URI0.into();
        config.validate().await.unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("s3cret") && debug.contains("***@h0"), "{debug}");
    }

    #[tokio::test]
    async fn validation_checks_etcd_worker_and_paths() {
        let base = Config::for_test(URI0, URI1);

        let mut config = base.clone();
        config.mode = Mode::Coordinator;
        let message = config.validate().await.unwrap_err().to_string();
        assert!(message.contains("etcd.endpoints is required") && message.contains("--etcd"), "{message}");
        config.etcd.endpoints = vec!["http://127.0.0.1:2379".into(), "e2:2379".into()];
        config.validate().await.unwrap();
        config.etcd.endpoints = vec!["ftp://e:1".into()];
        assert!(config.validate().await.unwrap_err().to_string().contains("scheme"));
        config.etcd.endpoints = vec!["nohost".into()];
        assert!(config.validate().await.unwrap_err().to_string().contains("host:port"));

        let mut config = base.clone();
        config.etcd.root_prefix = "clustersync/".into();
        let message = config.validate().await.unwrap_err().to_string();
        assert!(message.contains("etcd.rootPrefix") && message.contains("must start with '/'"), "{message}");

        let mut config = base.clone();
        config.etcd.lease_ttl = Duration::from_millis(500);
        assert!(config.validate().await.unwrap_err().to_string().contains("etcd.leaseTtl"));

        let mut config = base.clone();
        config.etcd.password = Some("pw".into());
        let message = config.validate().await.unwrap_err().to_string();
        assert!(message.contains("etcd.username") && !message.contains("pw\""), "{message}");
        assert!(!format!("{config:?}").contains("\"pw\""));

        let mut config = base.clone();
        config.worker.task_slots = 0;
        assert!(config.validate().await.unwrap_err().to_string().contains("taskSlots"));

        let dir = tempfile::tempdir().unwrap();
        let file = write_file(&dir, "");
        let mut config = base.clone();
        config.log_path = Some(file.clone());
        assert!(config.validate().await.unwrap_err().to_string().contains("logPath"));
        let mut config = base;
        config.state_dir = file;
        assert!(config.validate().await.unwrap_err().to_string().contains("stateDir"));
    }

    #[test]
    fn etcd_endpoints_follow_the_same_precedence() {
        let dir = tempfile::tempdir().unwrap();
        let file = write_file(
            &dir,
            &format!(
                "cluster0: {URI0}\ncluster1: {URI1}\netcd:\n  endpoints: [\"file:2379\"]\n  rootPrefix: /cs\n  leaseTtl: 15s\n"
            ),
        );
        let flags = args(&["--config", file.to_str().unwrap()]);
        let config = Config::load(Mode::Worker, &flags, &[], &env_of(&[])).unwrap();
        assert_eq!(config.etcd.endpoints, ["file:2379"]);
        assert_eq!(config.etcd.root_prefix, "/cs");
        assert_eq!(config.etcd.lease_ttl, Duration::from_secs(15));
        assert!(config.id.as_str().starts_with("worker-"));
        let env = env_of(&[(env::ETCD_ENDPOINTS, "env1:2379, env2:2379")]);
        let config = Config::load(Mode::Worker, &flags, &[], &env).unwrap();
        assert_eq!(config.etcd.endpoints, ["env1:2379", "env2:2379"]);
        let config = Config::load(Mode::Worker, &flags, &["flag:2379".to_string()], &env).unwrap();
        assert_eq!(config.etcd.endpoints, ["flag:2379"]);
        assert_eq!(config.origin("etcd.endpoints"), Origin::Flag("--etcd"));
    }

    #[tokio::test]
    async fn the_grpc_port_follows_the_same_precedence_and_differs_from_the_rest_port() {
        let dir = tempfile::tempdir().unwrap();
        let file = write_file(&dir, &format!("cluster0: {URI0}\ncluster1: {URI1}\ngrpcPort: 4444\n"));
        let file_arg = file.to_str().unwrap();
        let config =
            Config::load(Mode::Single, &args(&["--cluster0", URI0, "--cluster1", URI1]), &[], &env_of(&[])).unwrap();
        assert_eq!(config.grpc_port, DEFAULT_GRPC_PORT);
        assert_eq!(config.origin("grpcPort"), Origin::Default);
        let config = Config::load(Mode::Single, &args(&["--config", file_arg]), &[], &env_of(&[])).unwrap();
        assert_eq!(config.grpc_port, 4444);
        let env = env_of(&[(env::GRPC_PORT, "0")]);
        let config = Config::load(Mode::Single, &args(&["--config", file_arg]), &[], &env).unwrap();
        assert_eq!(config.grpc_port, 0, "env beats the file; 0 picks a free port");
        assert_eq!(config.origin("grpcPort"), Origin::Env(env::GRPC_PORT));
        let config =
            Config::load(Mode::Single, &args(&["--config", file_arg, "--grpcPort", "5555"]), &[], &env).unwrap();
        assert_eq!(config.grpc_port, 5555);
        assert_eq!(config.origin("grpcPort"), Origin::Flag("--grpcPort"));

        let message =
            Config::load(Mode::Single, &args(&["--config", file_arg]), &[], &env_of(&[(env::GRPC_PORT, "x")]))
                .unwrap_err()
                .to_string();
        assert!(message.contains("grpcPort") && message.contains(env::GRPC_PORT), "{message}");
        let file = write_file(&dir, &format!("cluster0: {URI0}\ncluster1: {URI1}\ngrpcPort: 70000\n"));
        let message = Config::load(Mode::Single, &args(&["--config", file.to_str().unwrap()]), &[], &env_of(&[]))
            .unwrap_err()
            .to_string();
        assert!(message.contains("grpcPort in") && message.contains("70000"), "{message}");

        let mut config = Config::for_test(URI0, URI1);
        config.port = 27182;
        config.grpc_port = 27182;
        let message = config.validate().await.unwrap_err().to_string();
        assert!(message.contains("grpcPort") && message.contains("share port 27182"), "{message}");
        config.mode = Mode::Worker;
        config.etcd.endpoints = vec!["e:2379".into()];
        config.validate().await.unwrap();
    }

    /// The example files under `deploy/config/` load and validate, commented-out keys included.
    #[tokio::test]
    async fn the_deploy_examples_load_and_validate() {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config");
        let uris = [(env::CLUSTER0, URI0), (env::CLUSTER1, URI1)];
        let dir = tempfile::tempdir().unwrap();
        for (name, mode) in [
            ("single-process.example.yaml", Mode::Single),
            ("coordinator.example.yaml", Mode::Coordinator),
            ("worker.example.yaml", Mode::Worker),
        ] {
            let path = examples.join(name);
            let text = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
            // Also check the keys that are commented out (credentials): uncomment them.
            let uncommented: String = text
                .lines()
                .map(|line| {
                    let trimmed = line.trim_start();
                    let indent = &line[..line.len() - trimmed.len()];
                    match trimmed.strip_prefix("# ") {
                        Some(rest)
                            if ["cluster0:", "cluster1:", "username:", "password:"]
                                .iter()
                                .any(|key| rest.starts_with(key)) =>
                        {
                            format!("{indent}{rest}\n")
                        }
                        _ => format!("{line}\n"),
                    }
                })
                .collect();
            for (variant, text) in [("as shipped", text.clone()), ("uncommented", uncommented)] {
                let copy = dir.path().join(name);
                // Paths in the examples are absolute production paths; point them at the tempdir.
                let text = text.replace("/var/log/clustersync", &dir.path().join("logs").display().to_string());
                std::fs::write(&copy, &text).unwrap();
                // Uncommented, the URIs must come from the file itself (the environment would win).
                let env = if variant == "uncommented" { env_of(&[]) } else { env_of(&uris) };
                let config = Config::load(mode, &args(&["--config", copy.to_str().unwrap()]), &[], &env)
                    .unwrap_or_else(|error| panic!("{name} ({variant}): {error}"));
                config.validate().await.unwrap_or_else(|error| panic!("{name} ({variant}): {error}"));
                assert_eq!(config.port, DEFAULT_PORT, "{name}");
                assert_eq!(config.grpc_port, DEFAULT_GRPC_PORT, "{name}");
                assert_eq!(config.worker.partition_bytes, WorkerSettings::default().partition_bytes, "{name}");
                if mode == Mode::Single {
                    assert!(!config.uses_etcd(), "{name}");
                    assert_eq!(config.worker, WorkerSettings::default(), "{name}: the documented defaults");
                } else {
                    assert_eq!(config.etcd.endpoints.len(), 3, "{name}");
                    assert_eq!(config.etcd.lease_ttl, time_constants::DEFAULT_LEASE_TTL, "{name}");
                }
                if mode == Mode::Worker {
                    assert_eq!(config.worker, WorkerSettings::default(), "{name}: the documented defaults");
                }
                if variant == "uncommented" && mode != Mode::Single {
                    assert!(config.cluster0.contains("password@"), "{name}: the commented URIs were checked");
                    assert_eq!(config.etcd.username.as_deref(), Some("clustersync"), "{name}");
                }
            }
        }
    }

    /// The configurations in the Kubernetes ConfigMap (`deploy/kubernetes/configmap.yaml`) load
    /// and validate too.
    #[tokio::test]
    async fn the_kubernetes_configmap_loads_and_validates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/configmap.yaml");
        let manifest: serde_yaml_ng::Value = serde_yaml_ng::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let env = env_of(&[(env::CLUSTER0, URI0), (env::CLUSTER1, URI1), (env::ID, "clustersync-worker-5d9f-abcde")]);
        for (key, mode) in [("coordinator.yaml", Mode::Coordinator), ("worker.yaml", Mode::Worker)] {
            let text = manifest["data"][key].as_str().unwrap_or_else(|| panic!("{key} missing from the ConfigMap"));
            let file = dir.path().join(key);
            std::fs::write(&file, text).unwrap();
            let config = Config::load(mode, &args(&["--config", file.to_str().unwrap()]), &[], &env)
                .unwrap_or_else(|error| panic!("{key}: {error}"));
            config.validate().await.unwrap_or_else(|error| panic!("{key}: {error}"));
            assert_eq!(config.etcd.endpoints.len(), 3, "{key}");
            assert!(config.log_path.is_none(), "{key}: logs go to stderr in a pod");
        }
    }

    #[test]
    fn an_empty_file_is_an_empty_configuration() {
        let config = parse_file_config(Path::new("x.yaml"), "# nothing here\n\n").unwrap();
        assert!(config.cluster0.is_none() && config.worker.is_none());
    }
}
