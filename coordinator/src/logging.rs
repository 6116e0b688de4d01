//! Logging set-up: human-readable lines on stderr and, with `--logPath DIR`, JSON lines in
//! `DIR/clustersync.log` written by a background thread (a slow disk never blocks the runtime).
//!
//! `--verbosity` sets the level of clustersync's own crates; other crates (the MongoDB driver,
//! the HTTP and gRPC stacks, etcd's client) log at WARN unless the level is TRACE. `RUST_LOG`,
//! when set, replaces this filter entirely (for debugging).
//!
//! Connection strings are never logged: code logs hosts (`Clusters::source_hosts`) or
//! [`redact_uri`](clustersync_worker::mongo::redact_uri) output, never a configured URI.

use std::path::{Path, PathBuf};

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::Verbosity;

/// Name of the log file inside `--logPath`.
pub const LOG_FILE_NAME: &str = "clustersync.log";

/// Our crates, whose level `--verbosity` sets.
const OWN_TARGETS: [&str; 4] = ["clustersync", "clustersync_coordinator", "clustersync_worker", "clustersync_common"];

/// Keeps the file writer alive; dropping it flushes the remaining lines. Hold it until exit.
#[must_use = "dropping the guard stops the log file writer"]
pub struct LoggingGuard {
    _file: Option<WorkerGuard>,
    /// The log file, if any.
    pub file: Option<PathBuf>,
}

/// Errors setting logging up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// The log directory cannot be created or the file cannot be opened.
    #[error("cannot open log file {}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A global subscriber was already installed.
    #[error("logging is already initialised: {0}")]
    AlreadyInitialised(String),
}

/// The filter directives for a verbosity: our crates at the level, everything else at WARN
/// (TRACE shows everything).
pub fn filter_directives(verbosity: Verbosity) -> String {
    let level = verbosity.level().as_str().to_ascii_lowercase();
    if verbosity == Verbosity::Trace {
        return "trace".to_string();
    }
    let mut directives = vec!["warn".to_string()];
    directives.extend(OWN_TARGETS.iter().map(|target| format!("{target}={level}")));
    directives.join(",")
}

fn filter(verbosity: Verbosity) -> EnvFilter {
    match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::new(directives),
        _ => EnvFilter::new(filter_directives(verbosity)),
    }
}

/// Installs the global subscriber: stderr always, JSON lines in `log_dir/clustersync.log` when
/// a directory is given (created if missing; lines are appended).
///
/// # Errors
///
/// [`LoggingError::File`] if the directory or file cannot be opened;
/// [`LoggingError::AlreadyInitialised`] if called twice.
pub fn init(verbosity: Verbosity, log_dir: Option<&Path>) -> Result<LoggingGuard, LoggingError> {
    let stderr_layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false);
    let (file_layer, guard, file) = match log_dir {
        Some(dir) => {
            let path = dir.join(LOG_FILE_NAME);
            std::fs::create_dir_all(dir).map_err(|source| LoggingError::File { path: path.clone(), source })?;
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|source| LoggingError::File { path: path.clone(), source })?;
            let (writer, guard) = tracing_appender::non_blocking(file);
            let layer = tracing_subscriber::fmt::layer()
                .json()
                .with_writer(writer)
                .with_current_span(true)
                .with_span_list(false)
                .with_ansi(false);
            (Some(layer), Some(guard), Some(path))
        }
        None => (None, None, None),
    };
    tracing_subscriber::registry()
        .with(filter(verbosity))
        .with(stderr_layer)
        .with(file_layer)
        .try_init()
        .map_err(|error| LoggingError::AlreadyInitialised(error.to_string()))?;
    Ok(LoggingGuard { _file: guard, file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbosity_sets_our_crates_and_keeps_others_at_warn() {
        let directives = filter_directives(Verbosity::Debug);
        assert!(directives.starts_with("warn,"), "{directives}");
        assert!(directives.contains("clustersync_coordinator=debug"), "{directives}");
        assert!(filter_directives(Verbosity::Fatal).contains("clustersync_worker=error"));
        assert_eq!(filter_directives(Verbosity::Trace), "trace");
        for verbosity in Verbosity::ALL {
            EnvFilter::try_new(filter_directives(verbosity)).unwrap();
        }
    }
}
