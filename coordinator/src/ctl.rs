//! `clustersync ctl`: the command-line client of the gRPC control API.
//!
//! `clustersync ctl [--address URL] start|progress|pause|resume|commit|reverse` connects to any
//! coordinator's gRPC API (`http://127.0.0.1:27183` by default) and runs one command. It is not
//! a process of the fleet: it needs no cluster URIs, no configuration file and no disclaimer.
//!
//! - `start` builds the REST `/start` body from its flags (or reads it with `--json FILE|-`),
//!   parses it with the REST API's own parser, and sends it as a typed `StartRequest`; so a
//!   body is accepted or refused exactly as REST would.
//! - `progress` prints a readable summary, or with `--json` the REST `/progress` body; with
//!   `--watch` it follows `WatchProgress` with live progress bars until COMMITTED or FAILED.
//! - `pause`, `resume`, `commit`, `reverse` print the state reached.
//!
//! Every failure is a [`CtlError`], whose [`CtlError::exit_code`] is the process's exit code.
//!
//! # Layout
//!
//! - this file: the commands, the connection and the errors.
//! - [`render`]: the progress summary and the live display.

pub mod render;

use std::io::Read;
use std::time::Duration;

use clustersync_common::model::{StartOptions, SyncState};
use clustersync_proto::v1::control_client::ControlClient as PbControlClient;
use clustersync_proto::v1::{
    CommitRequest as PbCommitRequest, PauseRequest as PbPauseRequest, ProgressRequest as PbProgressRequest,
    ResumeRequest as PbResumeRequest, ReverseRequest as PbReverseRequest, StartRequest as PbStartRequest,
    WatchProgressRequest as PbWatchProgressRequest,
};
use serde_json::{Map, Value, json};
use tonic::transport::{Channel, Endpoint};

use crate::cli::{CtlArgs, CtlCommand, CtlProgressArgs, CtlStartArgs};
use crate::control::ControlError;
use crate::grpc::{self, convert};
use crate::progress::Progress;

/// Exit code: the server refused or failed the command.
pub const EXIT_REFUSED: u8 = 1;
/// Exit code: bad command line or `--json` body.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the gRPC API could not be reached.
pub const EXIT_UNREACHABLE: u8 = 3;
/// Exit code: the migration FAILED (seen by `progress --watch`).
pub const EXIT_MIGRATION_FAILED: u8 = 4;
/// Exit code: interrupted by Ctrl-C.
pub const EXIT_INTERRUPTED: u8 = 130;

/// Why a `ctl` command did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The command line cannot be used (an address that is not a URL, an unreadable file).
    #[error("{reason}")]
    Usage {
        /// What is wrong.
        reason: String,
    },
    /// The `start` body was refused before sending it, with the REST error name.
    #[error("{name}: {reason}")]
    InvalidBody {
        /// `InvalidRequest`, `InvalidOption`, `InvalidNamespaceFilter`.
        name: &'static str,
        /// What is wrong, naming the field.
        reason: String,
    },
    /// No answer from the address: nothing listens there, or it is not a clustersync gRPC API.
    #[error(
        "cannot reach the clustersync grpc api at {address}: {reason} (is a coordinator running there? its port is --grpcPort, 27183 by default)"
    )]
    Unreachable {
        /// The address tried.
        address: String,
        /// The transport's message.
        reason: String,
    },
    /// The server refused or failed the command.
    #[error("{name}: {message}")]
    Refused {
        /// The REST error name (`InvalidState`, ...), or the gRPC code when the server sent none.
        name: String,
        /// The error description.
        message: String,
        /// The gRPC code.
        code: tonic::Code,
    },
    /// The server's answer cannot be understood (a different version).
    #[error("cannot read the server's answer: {reason}")]
    BadReply {
        /// What is wrong with it.
        reason: String,
    },
    /// The progress stream ended before the migration finished.
    #[error("the progress stream from {address} ended before the migration finished (the coordinator stopped?)")]
    StreamEnded {
        /// The address watched.
        address: String,
    },
    /// `progress --watch` saw the migration fail.
    #[error("the migration FAILED: {0}")]
    MigrationFailed(String),
    /// Ctrl-C.
    #[error("interrupted")]
    Interrupted,
    /// Writing the output failed.
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

impl CtlError {
    /// The process exit code for this error (see [`crate::cli::CtlArgs`]'s help).
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Usage { .. } | CtlError::InvalidBody { .. } => EXIT_USAGE,
            CtlError::Unreachable { .. } | CtlError::StreamEnded { .. } => EXIT_UNREACHABLE,
            CtlError::Refused { .. } | CtlError::BadReply { .. } | CtlError::Output(_) => EXIT_REFUSED,
            CtlError::MigrationFailed(_) => EXIT_MIGRATION_FAILED,
            CtlError::Interrupted => EXIT_INTERRUPTED,
        }
    }

    /// Whether the same command may succeed if run again unchanged.
    pub fn is_retryable(&self) -> bool {
        match self {
            CtlError::Unreachable { .. } | CtlError::StreamEnded { .. } => true,
            CtlError::Refused { code, name, .. } => {
                *code == tonic::Code::Unavailable || *code == tonic::Code::DeadlineExceeded || name == "CommitNotReady"
            }
            _ => false,
        }
    }

    fn from_status(address: &str, status: &tonic::Status) -> CtlError {
        match grpc::error_name(status) {
            Some(name) => {
                CtlError::Refused { name: name.to_string(), message: status.message().to_string(), code: status.code() }
            }
            // No error name: the call never reached our service (connection refused or reset,
            // a proxy, another server).
            None if matches!(status.code(), tonic::Code::Unavailable | tonic::Code::Unknown) => {
                CtlError::Unreachable { address: address.to_string(), reason: status.message().to_string() }
            }
            None => CtlError::Refused {
                name: format!("{:?}", status.code()),
                message: status.message().to_string(),
                code: status.code(),
            },
        }
    }

    fn from_body(error: ControlError) -> CtlError {
        CtlError::InvalidBody { name: error.name(), reason: error.to_string() }
    }
}

/// Runs one `ctl` command; the caller prints the error and exits with its code.
///
/// # Errors
///
/// See [`CtlError`].
pub async fn run(args: &CtlArgs) -> Result<(), CtlError> {
    let address = normalize_address(&args.address)?;
    let timeout = Duration::from_secs(args.timeout_seconds.max(1));
    // Check what can be checked locally before connecting.
    let start_request = match &args.command {
        CtlCommand::Start(start) => Some(start_request(start)?),
        _ => None,
    };
    let mut client = connect(&address, timeout).await?;
    let status = |status: tonic::Status| CtlError::from_status(&address, &status);
    match &args.command {
        CtlCommand::Start(_) => {
            let request = start_request.unwrap_or_default();
            let reply = unary(&address, timeout, client.start(request)).await?.map_err(status)?.into_inner();
            print_transition("started", reply.state, reply.phase);
        }
        CtlCommand::Pause => {
            let reply = unary(&address, timeout, client.pause(PbPauseRequest {})).await?.map_err(status)?.into_inner();
            print_transition("paused", reply.state, reply.phase);
        }
        CtlCommand::Resume => {
            let reply =
                unary(&address, timeout, client.resume(PbResumeRequest {})).await?.map_err(status)?.into_inner();
            print_transition("resumed", reply.state, reply.phase);
        }
        CtlCommand::Commit => {
            let reply =
                unary(&address, timeout, client.commit(PbCommitRequest {})).await?.map_err(status)?.into_inner();
            print_transition("commit requested", reply.state, reply.phase);
        }
        CtlCommand::Reverse => {
            let reply =
                unary(&address, timeout, client.reverse(PbReverseRequest {})).await?.map_err(status)?.into_inner();
            print_transition("reversing", reply.state, reply.phase);
        }
        CtlCommand::Progress(progress_args) if progress_args.watch => {
            watch(&mut client, &address, progress_args).await?;
        }
        CtlCommand::Progress(progress_args) => {
            let reply =
                unary(&address, timeout, client.progress(PbProgressRequest {})).await?.map_err(status)?.into_inner();
            let progress = decode_progress(reply.progress)?;
            if progress_args.json {
                println!("{}", rest_progress_body(&progress, true));
            } else {
                print!("{}", render::summary(&progress));
            }
        }
    }
    Ok(())
}

/// Adds `http://` to a bare `host:port` and checks the result is a URL tonic can dial.
///
/// # Errors
///
/// [`CtlError::Usage`] naming the address.
pub fn normalize_address(address: &str) -> Result<String, CtlError> {
    let address = address.trim();
    let url = if address.contains("://") { address.to_string() } else { format!("http://{address}") };
    Endpoint::from_shared(url.clone())
        .map_err(|error| CtlError::Usage { reason: format!("invalid --address {address:?}: {error}") })?;
    Ok(url)
}

async fn connect(address: &str, timeout: Duration) -> Result<PbControlClient<Channel>, CtlError> {
    let endpoint = Endpoint::from_shared(address.to_string())
        .map_err(|error| CtlError::Usage { reason: format!("invalid --address {address:?}: {error}") })?
        .connect_timeout(timeout)
        .tcp_nodelay(true);
    let channel = endpoint
        .connect()
        .await
        .map_err(|error| CtlError::Unreachable { address: address.to_string(), reason: error_chain(&error) })?;
    Ok(PbControlClient::new(channel))
}

/// A transport error with its causes (tonic's own message is only "transport error").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// Bounds a unary call by `timeout`.
async fn unary<T>(
    address: &str,
    timeout: Duration,
    call: impl Future<Output = Result<T, tonic::Status>>,
) -> Result<Result<T, tonic::Status>, CtlError> {
    tokio::time::timeout(timeout, call).await.map_err(|_| CtlError::Unreachable {
        address: address.to_string(),
        reason: format!("no reply within {}s (--timeout)", timeout.as_secs()),
    })
}

fn print_transition(what: &str, state: i32, phase: i32) {
    let state = convert::state_from_pb(state).map_or("UNKNOWN", SyncState::as_str);
    match convert::phase_from_pb(phase) {
        Some(phase) => println!("{what}: the migration is {state} (phase {})", render::phase_name(phase)),
        None => println!("{what}: the migration is {state}"),
    }
}

fn decode_progress(progress: Option<clustersync_proto::v1::Progress>) -> Result<Progress, CtlError> {
    let progress = progress.ok_or_else(|| CtlError::BadReply { reason: "the reply has no progress".into() })?;
    Progress::try_from(progress).map_err(|error| CtlError::BadReply { reason: error.to_string() })
}

/// The REST `/progress` body: `{"success": true, "progress": {...}}`.
pub fn rest_progress_body(progress: &Progress, pretty: bool) -> String {
    let body = json!({ "success": true, "progress": progress });
    if pretty { serde_json::to_string_pretty(&body).unwrap_or_default() } else { body.to_string() }
}

/// `progress --watch`: follows the stream until COMMITTED, FAILED, the end of the stream or
/// Ctrl-C.
async fn watch(client: &mut PbControlClient<Channel>, address: &str, args: &CtlProgressArgs) -> Result<(), CtlError> {
    let request = PbWatchProgressRequest { interval_ms: args.interval_ms };
    let mut stream =
        client.watch_progress(request).await.map_err(|status| CtlError::from_status(address, &status))?.into_inner();
    let mut display = (!args.json).then(render::WatchDisplay::new);
    let interrupted = interrupt_signal();
    tokio::pin!(interrupted);
    let outcome = loop {
        let message = tokio::select! {
            _ = &mut interrupted => break Err(CtlError::Interrupted),
            message = stream.message() => message,
        };
        let progress = match message {
            Ok(Some(reply)) => match decode_progress(reply.progress) {
                Ok(progress) => progress,
                Err(error) => break Err(error),
            },
            Ok(None) => break Err(CtlError::StreamEnded { address: address.to_string() }),
            Err(status) => break Err(CtlError::from_status(address, &status)),
        };
        match &mut display {
            Some(display) => display.update(&progress),
            None => println!("{}", rest_progress_body(&progress, false)),
        }
        match progress.state {
            SyncState::Committed => break Ok(()),
            SyncState::Failed => break Err(CtlError::MigrationFailed(render::failure(&progress))),
            _ => {}
        }
    };
    if let Some(display) = display {
        display.finish(outcome.as_ref().err());
    }
    outcome
}

/// Resolves on Ctrl-C (SIGINT). The handler is installed by this call, not on the first poll,
/// so an interrupt is caught even before the returned future is first polled.
fn interrupt_signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    {
        let signal = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt());
        async move {
            match signal {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                // Without a handler the default action (terminate) applies.
                Err(_) => std::future::pending::<()>().await,
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// start
// ---------------------------------------------------------------------------------------------

/// The `StartRequest` of `ctl start`: the REST body from `--json` or from the flags, parsed by
/// the REST parser, then converted.
///
/// # Errors
///
/// [`CtlError::Usage`] for an unreadable file or a malformed `--include` / `--exclude`,
/// [`CtlError::InvalidBody`] for a body REST would refuse.
pub fn start_request(args: &CtlStartArgs) -> Result<PbStartRequest, CtlError> {
    let body = match &args.json {
        Some(path) => read_body(path)?,
        None => {
            serde_json::to_vec(&start_body(args)?).map_err(|error| CtlError::Usage { reason: error.to_string() })?
        }
    };
    let options: StartOptions = crate::api::body::parse_start(&body).map_err(CtlError::from_body)?;
    convert::start_request_to_pb(&options).map_err(CtlError::from_body)
}

fn read_body(path: &str) -> Result<Vec<u8>, CtlError> {
    let mut body = Vec::new();
    let result = if path == "-" {
        std::io::stdin().lock().read_to_end(&mut body).map(|_| ())
    } else {
        std::fs::File::open(path).and_then(|mut file| file.read_to_end(&mut body)).map(|_| ())
    };
    result.map_err(|error| CtlError::Usage {
        reason: format!("cannot read the /start body from {}: {error}", if path == "-" { "stdin" } else { path }),
    })?;
    Ok(body)
}

/// The REST `/start` body the flags describe.
///
/// # Errors
///
/// [`CtlError::Usage`] for a malformed `--include` / `--exclude`.
pub fn start_body(args: &CtlStartArgs) -> Result<Value, CtlError> {
    let other = |cluster: &str| if cluster == "cluster0" { "cluster1" } else { "cluster0" };
    let (source, destination) = match (&args.source, &args.destination) {
        (Some(source), Some(destination)) => (source.clone(), destination.clone()),
        (Some(source), None) => (source.clone(), other(source).to_string()),
        (None, Some(destination)) => (other(destination).to_string(), destination.clone()),
        (None, None) => ("cluster0".to_string(), "cluster1".to_string()),
    };
    let mut body = Map::new();
    body.insert("source".into(), source.into());
    body.insert("destination".into(), destination.into());
    if let Some(build_indexes) = &args.build_indexes {
        body.insert("buildIndexes".into(), build_indexes.clone().into());
    }
    if let Some(write_blocking) = &args.write_blocking {
        body.insert("enableUserWriteBlocking".into(), write_blocking.clone().into());
    }
    if !args.include.is_empty() {
        body.insert("includeNamespaces".into(), namespace_filters("--include", &args.include)?.into());
    }
    if !args.exclude.is_empty() {
        body.insert("excludeNamespaces".into(), namespace_filters("--exclude", &args.exclude)?.into());
    }
    if args.reversible {
        body.insert("reversible".into(), true.into());
    }
    if args.no_verification {
        body.insert("verification".into(), json!({ "enabled": false }));
    }
    Ok(Value::Object(body))
}

/// A database or collection part of a namespace argument.
#[derive(Debug, Clone, PartialEq, Eq)]
enum NamePart {
    Name(String),
    Regex { pattern: String, options: String },
}

impl NamePart {
    fn regex_json(pattern: &str, options: &str) -> Value {
        json!({ "pattern": pattern, "options": options })
    }
}

/// Turns `--include` / `--exclude` values into filter entries. `db` is a whole database,
/// `db.coll` one collection (several collections of one database are merged into one entry),
/// `db./regex/options` the collections matching a regex, `/regex/options` the databases matching
/// a regex (optionally followed by `.coll` or `./regex/`).
///
/// # Errors
///
/// [`CtlError::Usage`] naming the flag and the value.
pub fn namespace_filters(flag: &str, values: &[String]) -> Result<Vec<Value>, CtlError> {
    /// One filter entry being built.
    struct Entry {
        database: NamePart,
        /// `None`: every collection (or only those of `collections_regex`).
        collections: Option<Vec<String>>,
        /// `(pattern, options)`.
        collections_regex: Option<(String, String)>,
    }
    // Entries in the order their database first appears; whole-database entries absorb the
    // collections of the same database.
    let mut entries: Vec<Entry> = Vec::new();
    for value in values {
        let (database, collection) = parse_namespace(value)
            .map_err(|reason| CtlError::Usage { reason: format!("invalid {flag} {value:?}: {reason}") })?;
        let same_database = |entry: &Entry| entry.database == database && entry.collections_regex.is_none();
        match collection {
            None => {
                entries.retain(|entry| !same_database(entry));
                entries.push(Entry { database, collections: None, collections_regex: None });
            }
            Some(NamePart::Name(collection)) => match entries.iter_mut().find(|entry| same_database(entry)) {
                // The whole database is already in.
                Some(Entry { collections: None, .. }) => {}
                Some(Entry { collections: Some(collections), .. }) => {
                    if !collections.contains(&collection) {
                        collections.push(collection);
                    }
                }
                None => entries.push(Entry { database, collections: Some(vec![collection]), collections_regex: None }),
            },
            Some(NamePart::Regex { pattern, options }) => {
                entries.push(Entry { database, collections: None, collections_regex: Some((pattern, options)) })
            }
        }
    }
    Ok(entries
        .into_iter()
        .map(|entry| {
            let mut object = Map::new();
            match entry.database {
                NamePart::Name(name) => object.insert("database".into(), name.into()),
                NamePart::Regex { pattern, options } => {
                    object.insert("databaseRegex".into(), NamePart::regex_json(&pattern, &options))
                }
            };
            if let Some(collections) = entry.collections {
                object.insert("collections".into(), collections.into());
            }
            if let Some((pattern, options)) = entry.collections_regex {
                object.insert("collectionsRegex".into(), NamePart::regex_json(&pattern, &options));
            }
            Value::Object(object)
        })
        .collect())
}

/// Splits a namespace argument into its database and optional collection parts.
fn parse_namespace(value: &str) -> Result<(NamePart, Option<NamePart>), String> {
    if value.is_empty() {
        return Err("empty namespace".into());
    }
    let (database, rest) = if let Some(after_slash) = value.strip_prefix('/') {
        // `/regex/options[.collection]`: the pattern ends at the first unescaped '/'.
        let mut end = None;
        let mut escaped = false;
        for (index, character) in after_slash.char_indices() {
            match character {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '/' => {
                    end = Some(index);
                    break;
                }
                _ => {}
            }
        }
        let end = end.ok_or("a database regex must end with '/' (e.g. /^sales_/i)")?;
        let pattern = &after_slash[..end];
        let tail = &after_slash[end + 1..];
        let options_len = tail.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(tail.len());
        let (options, rest) = tail.split_at(options_len);
        let rest = match rest {
            "" => None,
            _ => Some(rest.strip_prefix('.').ok_or("expected '.' after the database regex")?),
        };
        (NamePart::Regex { pattern: pattern.to_string(), options: options.to_string() }, rest)
    } else {
        match value.split_once('.') {
            Some((database, rest)) => (NamePart::Name(database.to_string()), Some(rest)),
            None => (NamePart::Name(value.to_string()), None),
        }
    };
    if database == NamePart::Name(String::new()) {
        return Err("empty database name".into());
    }
    let collection = match rest {
        None => None,
        Some("") => return Err("empty collection name after '.'".into()),
        Some(rest) => Some(match rest.strip_prefix('/').and_then(|inner| inner.rsplit_once('/')) {
            Some((pattern, options)) if options.chars().all(|c| c.is_ascii_alphabetic()) => {
                NamePart::Regex { pattern: pattern.to_string(), options: options.to_string() }
            }
            _ => NamePart::Name(rest.to_string()),
        }),
    };
    Ok((database, collection))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(values: &[&str]) -> Vec<String> {
        values.iter().map(|value| value.to_string()).collect()
    }

    #[test]
    fn namespace_arguments_become_rest_filters() {
        let filters = namespace_filters(
            "--include",
            &strings(&["sales.EMEA", "sales.APAC", "marketing", "marketing.x", "sales.EMEA", "hr./^pay_.+$/i"]),
        )
        .unwrap();
        assert_eq!(
            Value::Array(filters),
            json!([
                {"database": "sales", "collections": ["EMEA", "APAC"]},
                {"database": "marketing"},
                {"database": "hr", "collectionsRegex": {"pattern": "^pay_.+$", "options": "i"}},
            ])
        );
        let filters = namespace_filters("--include", &strings(&["a.b", "a"])).unwrap();
        assert_eq!(Value::Array(filters), json!([{"database": "a"}]), "the whole database absorbs its collections");
        let filters = namespace_filters("--exclude", &strings(&["/^tmp_\\/x/", "/^log/i.events", "db.a.b"])).unwrap();
        assert_eq!(
            Value::Array(filters),
            json!([
                {"databaseRegex": {"pattern": "^tmp_\\/x", "options": ""}},
                {"databaseRegex": {"pattern": "^log", "options": "i"}, "collections": ["events"]},
                {"database": "db", "collections": ["a.b"]},
            ])
        );
        for bad in ["", ".coll", "db.", "/unterminated", "/x/i-coll"] {
            let error = namespace_filters("--include", &strings(&[bad])).unwrap_err();
            assert_eq!(error.exit_code(), EXIT_USAGE);
            assert!(error.to_string().contains("--include"), "{error}");
        }
    }

    #[test]
    fn start_flags_build_the_rest_body() {
        let body = start_body(&CtlStartArgs::default()).unwrap();
        assert_eq!(body, json!({"source": "cluster0", "destination": "cluster1"}));
        let body = start_body(&CtlStartArgs { destination: Some("cluster0".into()), ..Default::default() }).unwrap();
        assert_eq!(body, json!({"source": "cluster1", "destination": "cluster0"}));
        let args = CtlStartArgs {
            source: Some("cluster1".into()),
            build_indexes: Some("afterDataCopy".into()),
            write_blocking: Some("sourceAndDestination".into()),
            include: strings(&["db.a"]),
            exclude: strings(&["other"]),
            reversible: true,
            no_verification: true,
            ..Default::default()
        };
        assert_eq!(
            start_body(&args).unwrap(),
            json!({"source": "cluster1", "destination": "cluster0", "buildIndexes": "afterDataCopy",
                   "enableUserWriteBlocking": "sourceAndDestination",
                   "includeNamespaces": [{"database": "db", "collections": ["a"]}],
                   "excludeNamespaces": [{"database": "other"}],
                   "reversible": true, "verification": {"enabled": false}})
        );
        start_request(&args).unwrap();
    }

    #[test]
    fn json_bodies_are_checked_like_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("start.json");
        std::fs::write(&path, r#"{"source": "cluster0", "destination": "cluster1", "loadLevel": 3,}"#).unwrap();
        let args = CtlStartArgs { json: Some(path.display().to_string()), ..Default::default() };
        let error = start_request(&args).unwrap_err();
        assert!(matches!(error, CtlError::InvalidBody { name: "InvalidRequest", .. }), "{error}");
        assert!(error.to_string().contains("loadLevel"), "{error}");
        assert_eq!(error.exit_code(), EXIT_USAGE);

        std::fs::write(
            &path,
            r#"{"source": "cluster0", "destination": "cluster1",
                "sharding": {"shardingEntries": [{"database": "a", "collection": "b",
                  "shardCollection": {"key": [{"x": 1}, {"y": "hashed"}, ]}}]}}"#,
        )
        .unwrap();
        let request = start_request(&args).unwrap();
        assert_eq!(request.sharding.unwrap().sharding_entries[0].shard_collection.as_ref().unwrap().key.len(), 2);

        let missing = CtlStartArgs { json: Some("/nonexistent/start.json".into()), ..Default::default() };
        let error = start_request(&missing).unwrap_err();
        assert!(matches!(error, CtlError::Usage { .. }) && error.to_string().contains("/nonexistent"), "{error}");
    }

    #[test]
    fn addresses_get_a_scheme_and_are_checked() {
        assert_eq!(normalize_address("127.0.0.1:27183").unwrap(), "http://127.0.0.1:27183");
        assert_eq!(normalize_address(" http://h:1 ").unwrap(), "http://h:1");
        assert_eq!(normalize_address("not a url").unwrap_err().exit_code(), EXIT_USAGE);
    }

    #[test]
    fn statuses_become_named_errors_with_exit_codes() {
        let refused = CtlError::from_status(
            "http://a",
            &tonic::Status::from(ControlError::CommitNotReady { reason: "copy".into() }),
        );
        assert_eq!(refused.to_string(), "CommitNotReady: cannot commit yet: copy");
        assert_eq!(refused.exit_code(), EXIT_REFUSED);
        assert!(refused.is_retryable());
        let unreachable = CtlError::from_status("http://a", &tonic::Status::unavailable("connection refused"));
        assert!(matches!(unreachable, CtlError::Unreachable { .. }));
        assert_eq!(unreachable.exit_code(), EXIT_UNREACHABLE);
        assert!(unreachable.to_string().contains("--grpcPort"), "{unreachable}");
        let other = CtlError::from_status("http://a", &tonic::Status::permission_denied("no"));
        assert_eq!(other.to_string(), "PermissionDenied: no");
        assert_eq!(CtlError::MigrationFailed("x".into()).exit_code(), EXIT_MIGRATION_FAILED);
        assert_eq!(CtlError::Interrupted.exit_code(), EXIT_INTERRUPTED);
    }
}
