//! The worker's error type and the classification of MongoDB errors into retryable or not.

use clustersync_common::ids::TaskId;

/// Server error codes that mean "try again": network trouble, elections, killed cursors.
const RETRYABLE_CODES: &[i32] = &[
    6,     // HostUnreachable
    7,     // HostNotFound
    43,    // CursorNotFound (killed by a restart, a failover or killAllSessions)
    64,    // WriteConcernFailed (timed out waiting for majority)
    89,    // NetworkTimeout
    91,    // ShutdownInProgress
    134,   // ReadConcernMajorityNotAvailableYet
    189,   // PrimarySteppedDown
    237,   // CursorKilled
    262,   // ExceededTimeLimit
    9001,  // SocketException
    10107, // NotWritablePrimary
    11600, // InterruptedAtShutdown
    11601, // Interrupted
    11602, // InterruptedDueToReplStateChange
    13435, // NotPrimaryNoSecondaryOk
    13436, // NotPrimaryOrSecondary
];

/// Error code of a lost change-stream history (the resume point left the oplog).
pub const CHANGE_STREAM_HISTORY_LOST: i32 = 286;
/// Error code of a duplicate key.
pub const DUPLICATE_KEY: i32 = 11000;

/// Errors of the data plane.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A MongoDB operation failed; `context` says what we were doing (lowercase, with namespace).
    #[error("{context}: {source}")]
    Mongo {
        context: String,
        #[source]
        source: mongodb::error::Error,
    },
    /// The coordination store failed.
    #[error("coordination store: {0}")]
    Store(String),
    /// Our claim on the task is gone (lease expired, task reassigned): stop without writing.
    #[error("task {task} was fenced: another holder owns it now")]
    Fenced { task: TaskId },
    /// The task was cancelled (pause, release, shutdown, lease about to expire).
    #[error("task cancelled")]
    Cancelled,
    /// The migration cannot be correct; the leader will fail it with this error name.
    #[error("{name}: {description}")]
    Fatal { name: String, description: String },
    /// A document or event we cannot handle.
    #[error("invalid data: {0}")]
    InvalidData(String),
}

impl WorkerError {
    /// Wraps a driver error with what we were doing.
    pub fn mongo(context: impl Into<String>, source: mongodb::error::Error) -> Self {
        Self::Mongo { context: context.into(), source }
    }

    pub fn fatal(name: impl Into<String>, description: impl Into<String>) -> Self {
        Self::Fatal { name: name.into(), description: description.into() }
    }

    /// Whether retrying the same operation (with backoff) can succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Mongo { source, .. } => is_retryable_mongo(source),
            Self::Store(_) => true,
            Self::Fenced { .. } | Self::Cancelled | Self::Fatal { .. } | Self::InvalidData(_) => false,
        }
    }

    /// The server error code, if this is a server error.
    pub fn code(&self) -> Option<i32> {
        match self {
            Self::Mongo { source, .. } => server_code(source),
            _ => None,
        }
    }
}

/// The server error code of a driver error (command error, or the first write error).
pub fn server_code(error: &mongodb::error::Error) -> Option<i32> {
    use mongodb::error::{ErrorKind, WriteFailure};
    match error.kind.as_ref() {
        ErrorKind::Command(command) => Some(command.code),
        ErrorKind::Write(WriteFailure::WriteError(write)) => Some(write.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(wc)) => Some(wc.code),
        ErrorKind::InsertMany(insert_many) => insert_many
            .write_errors
            .as_ref()
            .and_then(|errors| errors.first().map(|e| e.code))
            .or_else(|| insert_many.write_concern_error.as_ref().map(|wc| wc.code)),
        ErrorKind::BulkWrite(bulk) => bulk
            .write_errors
            .values()
            .next()
            .map(|e| e.code)
            .or_else(|| bulk.write_concern_errors.first().map(|wc| wc.code)),
        _ => None,
    }
}

/// Whether a server error code means "try again" (see [`RETRYABLE_CODES`]).
pub fn is_retryable_code(code: i32) -> bool {
    RETRYABLE_CODES.contains(&code)
}

/// Whether a driver error is transient: network, election, killed cursor, retryable labels.
pub fn is_retryable_mongo(error: &mongodb::error::Error) -> bool {
    use mongodb::error::ErrorKind;
    if error.contains_label("RetryableWriteError")
        || error.contains_label("TransientTransactionError")
        || error.contains_label("ResumableChangeStreamError")
    {
        return true;
    }
    match error.kind.as_ref() {
        ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::ServerSelection { .. }
        | ErrorKind::DnsResolve { .. } => true,
        _ => server_code(error).is_some_and(is_retryable_code),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_mongo_errors_classify() {
        assert!(WorkerError::Store("down".into()).is_retryable());
        assert!(!WorkerError::Fenced { task: TaskId(1) }.is_retryable());
        assert!(!WorkerError::fatal("ChangeStreamHistoryLost", "gone").is_retryable());
        assert_eq!(
            WorkerError::fatal("ChangeStreamHistoryLost", "resume point left the oplog").to_string(),
            "ChangeStreamHistoryLost: resume point left the oplog"
        );
    }
}
