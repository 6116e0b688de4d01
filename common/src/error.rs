//! The coordination-store error type.
//!
//! [`StoreError`] is what every [`Store`](crate::store::Store) call returns, whichever backend
//! (embedded or etcd) is behind it. Callers decide what to do with [`StoreError::is_retryable`]:
//! a retryable error means "the store could not be reached or did not answer in time, the same
//! call may succeed later"; everything else is a definite answer that retrying will not change.

use std::path::PathBuf;

use crate::store::{LeaseId, Revision};

/// An error from the coordination store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or did not answer in time (connection refused, timeout,
    /// no etcd leader). The call may or may not have been applied; retrying is safe for reads
    /// and for txns guarded by compares.
    #[error("coordination store unavailable: {reason}")]
    Unavailable {
        /// What failed, with the operation and endpoint where known.
        reason: String,
    },

    /// The lease does not exist any more: it expired, was revoked, or never existed.
    #[error("lease {lease} expired or was not found")]
    LeaseExpired {
        /// The lease the call referred to.
        lease: LeaseId,
    },

    /// The requested revision is older than the history the store keeps. The caller re-lists
    /// with `get_prefix` and watches again from the revision of that read.
    #[error("revision history was compacted; the oldest revision still available is {revision}")]
    Compacted {
        /// The oldest revision from which a watch can still start.
        revision: Revision,
    },

    /// A file of the embedded store could not be read or written.
    #[error("io error on {}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A file of the embedded store holds data that does not decode (not a torn tail, which is
    /// truncated on open, but damage in the middle of the data).
    #[error("corrupt store file {}: {reason}", path.display())]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// The embedded store directory is already open, in this process or another.
    #[error(
        "store directory {} is already in use by another process or store instance",
        dir.display()
    )]
    AlreadyOpen {
        /// The directory whose lock file is held.
        dir: PathBuf,
    },

    /// A key or value could not be encoded or decoded (a non-UTF-8 key from etcd, a value that
    /// is not the expected JSON).
    #[error("cannot encode or decode key {key:?}: {reason}")]
    Encoding {
        /// The key involved.
        key: String,
        /// What went wrong.
        reason: String,
    },

    /// The request breaks a rule of the store (too many operations in one txn, the same key
    /// written twice in one txn, permission denied). Retrying the same request fails again.
    #[error("invalid store request: {reason}")]
    InvalidRequest {
        /// Which rule was broken.
        reason: String,
    },

    /// The store was closed (or failed and stopped accepting calls).
    #[error("coordination store is closed")]
    Closed,
}

impl StoreError {
    /// Whether the same call may succeed if retried later.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Unavailable { .. } => true,
            StoreError::LeaseExpired { .. }
            | StoreError::Compacted { .. }
            | StoreError::Io { .. }
            | StoreError::Corrupt { .. }
            | StoreError::AlreadyOpen { .. }
            | StoreError::Encoding { .. }
            | StoreError::InvalidRequest { .. }
            | StoreError::Closed => false,
        }
    }

    /// Shorthand for [`StoreError::Unavailable`].
    pub fn unavailable(reason: impl Into<String>) -> Self {
        StoreError::Unavailable { reason: reason.into() }
    }

    /// Shorthand for [`StoreError::InvalidRequest`].
    pub fn invalid_request(reason: impl Into<String>) -> Self {
        StoreError::InvalidRequest { reason: reason.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unavailable_is_retryable() {
        assert!(StoreError::unavailable("connection refused").is_retryable());
        assert!(!StoreError::LeaseExpired { lease: LeaseId(7) }.is_retryable());
        assert!(!StoreError::Compacted { revision: 3 }.is_retryable());
        assert!(!StoreError::Closed.is_retryable());
        assert!(!StoreError::invalid_request("too many operations").is_retryable());
    }

    #[test]
    fn messages_are_lowercase_and_carry_context() {
        let error = StoreError::AlreadyOpen { dir: PathBuf::from("/var/lib/cs") };
        assert_eq!(
            error.to_string(),
            "store directory /var/lib/cs is already in use by another process or store instance"
        );
        let error = StoreError::LeaseExpired { lease: LeaseId(255) };
        assert_eq!(error.to_string(), "lease 00000000000000ff expired or was not found");
    }
}
