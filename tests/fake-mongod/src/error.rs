//! Server errors carrying MongoDB error codes, code names and labels.

use bson::{Document, doc};

/// Result alias used by command handlers.
pub type Result<T> = std::result::Result<T, Error>;

/// The details of a command failure.
#[derive(Debug, Clone)]
pub struct CommandError {
    /// MongoDB error code.
    pub code: i32,
    /// Code name.
    pub code_name: String,
    /// Message.
    pub msg: String,
    /// Error labels.
    pub labels: Vec<String>,
    /// Extra fields merged into the error reply (e.g. `keyPattern`, `keyValue`).
    pub extra: Document,
}

/// An error returned to the client as `{ok: 0, errmsg, code, codeName}`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// A command failure with a MongoDB error code.
    #[error("{} (code {} {})", .0.msg, .0.code, .0.code_name)]
    Command(Box<CommandError>),
    /// The connection must be closed without a reply (fail point `closeConnection`).
    #[error("connection closed by fail point")]
    CloseConnection,
}

/// Returns the canonical code name for the MongoDB error codes this server uses.
pub fn code_name(code: i32) -> &'static str {
    match code {
        1 => "InternalError",
        2 => "BadValue",
        4 => "NoSuchKey",
        6 => "HostUnreachable",
        7 => "HostNotFound",
        9 => "FailedToParse",
        11 => "UserNotFound",
        13 => "Unauthorized",
        14 => "TypeMismatch",
        20 => "IllegalOperation",
        24 => "LockTimeout",
        26 => "NamespaceNotFound",
        27 => "IndexNotFound",
        28 => "PathNotViable",
        40 => "ConflictingUpdateOperators",
        43 => "CursorNotFound",
        48 => "NamespaceExists",
        50 => "MaxTimeMSExpired",
        52 => "DollarPrefixedFieldName",
        59 => "CommandNotFound",
        64 => "WriteConcernFailed",
        66 => "ImmutableField",
        67 => "CannotCreateIndex",
        72 => "InvalidOptions",
        73 => "InvalidNamespace",
        85 => "IndexOptionsConflict",
        86 => "IndexKeySpecsConflict",
        89 => "NetworkTimeout",
        91 => "ShutdownInProgress",
        96 => "OperationFailed",
        100 => "UnsatisfiableWriteConcern",
        112 => "WriteConflict",
        115 => "CommandNotSupported",
        121 => "DocumentValidationFailure",
        125 => "CommandFailed",
        166 => "CommandNotSupportedOnView",
        189 => "PrimarySteppedDown",
        197 => "InvalidIndexSpecificationOption",
        224 => "QueryFeatureNotAllowed",
        225 => "TransactionTooOld",
        236 => "InvalidUUID",
        244 => "TransactionAborted",
        251 => "NoSuchTransaction",
        256 => "TransactionCommitted",
        260 => "InvalidResumeToken",
        262 => "ExceededTimeLimit",
        263 => "OperationNotSupportedInTransaction",
        276 => "IndexBuildAborted",
        280 => "ChangeStreamFatalError",
        286 => "ChangeStreamHistoryLost",
        292 => "QueryExceededMemoryLimitNoDiskUseAllowed",
        359 => "CannotConvertIndexToUnique",
        9001 => "SocketException",
        10107 => "NotWritablePrimary",
        11000 => "DuplicateKey",
        11600 => "InterruptedAtShutdown",
        11601 => "Interrupted",
        11602 => "InterruptedDueToReplStateChange",
        13435 => "NotPrimaryNoSecondaryOk",
        13436 => "NotPrimaryOrSecondary",
        _ => "UnknownError",
    }
}

impl Error {
    /// Builds an error with the canonical code name for `code`.
    pub fn new(code: i32, msg: impl Into<String>) -> Self {
        Error::Command(Box::new(CommandError {
            code,
            code_name: code_name(code).to_string(),
            msg: msg.into(),
            labels: Vec::new(),
            extra: Document::new(),
        }))
    }

    /// BadValue (2).
    pub fn bad_value(msg: impl Into<String>) -> Self {
        Self::new(2, msg)
    }

    /// FailedToParse (9).
    pub fn parse(msg: impl Into<String>) -> Self {
        Self::new(9, msg)
    }

    /// TypeMismatch (14).
    pub fn type_mismatch(msg: impl Into<String>) -> Self {
        Self::new(14, msg)
    }

    /// Adds an error label.
    pub fn with_label(mut self, label: &str) -> Self {
        if let Error::Command(c) = &mut self
            && !c.labels.iter().any(|l| l == label)
        {
            c.labels.push(label.to_string());
        }
        self
    }

    /// Adds extra reply fields.
    pub fn with_extra(mut self, more: Document) -> Self {
        if let Error::Command(c) = &mut self {
            c.extra.extend(more);
        }
        self
    }

    /// The numeric code (0 for connection closes).
    pub fn code(&self) -> i32 {
        match self {
            Error::Command(c) => c.code,
            Error::CloseConnection => 0,
        }
    }

    /// The message text.
    pub fn message(&self) -> String {
        match self {
            Error::Command(c) => c.msg.clone(),
            Error::CloseConnection => "connection closed".into(),
        }
    }

    /// True if the error carries `label`.
    pub fn has_label(&self, label: &str) -> bool {
        matches!(self, Error::Command(c) if c.labels.iter().any(|l| l == label))
    }

    /// Renders the error as a command reply body (without `$clusterTime`).
    pub fn to_reply(&self) -> Document {
        match self {
            Error::Command(c) => {
                let mut d =
                    doc! { "ok": 0.0, "errmsg": c.msg.clone(), "code": c.code, "codeName": c.code_name.clone() };
                for (k, v) in &c.extra {
                    d.insert(k.clone(), v.clone());
                }
                if !c.labels.is_empty() {
                    d.insert("errorLabels", c.labels.clone());
                }
                d
            }
            Error::CloseConnection => doc! { "ok": 0.0, "errmsg": "connection closed" },
        }
    }

    /// Renders the error as a `writeErrors` entry.
    pub fn to_write_error(&self, index: usize) -> Document {
        let mut d = doc! { "index": index as i32, "code": self.code() };
        if let Error::Command(c) = self {
            d.insert("codeName", c.code_name.clone());
            for (k, v) in &c.extra {
                d.insert(k.clone(), v.clone());
            }
        }
        d.insert("errmsg", self.message());
        d
    }
}

impl From<bson::raw::Error> for Error {
    fn from(e: bson::raw::Error) -> Self {
        Error::new(22, format!("invalid BSON: {e}"))
    }
}

impl From<bson::ser::Error> for Error {
    fn from(e: bson::ser::Error) -> Self {
        Error::new(22, format!("cannot encode BSON: {e}"))
    }
}

impl From<bson::de::Error> for Error {
    fn from(e: bson::de::Error) -> Self {
        Error::new(22, format!("cannot decode BSON: {e}"))
    }
}
