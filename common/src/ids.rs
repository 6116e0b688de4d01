//! Newtype identifiers used across the coordination store and the APIs.
//!
//! Numeric ids that appear inside store keys are zero-padded to 20 digits so that the
//! lexical order of keys equals the numeric order (a prefix scan returns tasks in id order).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Errors from parsing an id out of a string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: {reason}")]
pub struct IdParseError {
    pub kind: &'static str,
    pub value: String,
    pub reason: &'static str,
}

/// Characters allowed in name-like ids (migration names, worker ids): they become key segments,
/// so `/` and whitespace are forbidden.
fn check_name(kind: &'static str, value: &str) -> Result<(), IdParseError> {
    let error = |reason| IdParseError { kind, value: value.to_string(), reason };
    if value.is_empty() {
        return Err(error("must not be empty"));
    }
    if value.len() > 128 {
        return Err(error("must be at most 128 characters"));
    }
    if !value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        return Err(error("may only contain ASCII letters, digits, '-', '_' and '.'"));
    }
    Ok(())
}

macro_rules! name_id {
    ($(#[$meta:meta])* $name:ident, $kind:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Builds the id after checking it is a valid key segment.
            pub fn new(value: impl Into<String>) -> Result<Self, IdParseError> {
                let value = value.into();
                check_name($kind, &value)?;
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdParseError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }
    };
}

name_id!(
    /// The name of one migration. Several migrations can share one etcd; each lives under
    /// `/{root}/{migration}/`.
    MigrationId,
    "migration id"
);

name_id!(
    /// Identity of one clustersync process (coordinator, worker or both). Reported as
    /// `mongosyncID` in `/progress`. Defaults to a random id per process start.
    InstanceId,
    "instance id"
);

name_id!(
    /// A source shard. A replica-set source is one shard, named after its replica set.
    ShardId,
    "shard id"
);

impl InstanceId {
    /// A fresh random id, e.g. `node-3f2a9c1b`.
    pub fn random(prefix: &str) -> Self {
        let uuid = uuid::Uuid::new_v4().simple().to_string();
        Self(format!("{prefix}-{}", &uuid[..8]))
    }
}

macro_rules! numeric_id {
    ($(#[$meta:meta])* $name:ident, $kind:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl $name {
            /// The zero-padded form used inside store keys.
            pub fn to_key_segment(self) -> String {
                format!("{:020}", self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.parse::<u64>().map(Self).map_err(|_| IdParseError {
                    kind: $kind,
                    value: s.to_string(),
                    reason: "must be an unsigned integer",
                })
            }
        }
    };
}

numeric_id!(
    /// One unit of claimable work: a copy partition, a shard's change stream, a verify range.
    TaskId,
    "task id"
);

numeric_id!(
    /// A planned source collection (namespaces are not safe as key segments, so they get ids).
    CollectionId,
    "collection id"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_ids_reject_key_unsafe_values() {
        assert!(MigrationId::new("default").is_ok());
        assert!(MigrationId::new("prod_2024.v1-a").is_ok());
        let err = MigrationId::new("a/b").unwrap_err();
        assert_eq!(err.kind, "migration id");
        assert!(MigrationId::new("").is_err());
        assert!(InstanceId::new("has space").is_err());
    }

    #[test]
    fn numeric_ids_sort_lexically_in_keys() {
        let a = TaskId(9).to_key_segment();
        let b = TaskId(10).to_key_segment();
        assert_eq!(a, "00000000000000000009");
        assert!(a < b);
        assert_eq!("42".parse::<TaskId>().unwrap(), TaskId(42));
        assert!("x".parse::<TaskId>().is_err());
    }

    #[test]
    fn ids_round_trip_through_serde() {
        let id = InstanceId::new("worker-1").unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"worker-1\"");
        let back: InstanceId = serde_json::from_str(&json).unwrap();
        assert_eq!(back, id);
        assert!(serde_json::from_str::<InstanceId>("\"a b\"").is_err());
        assert!(InstanceId::random("node").as_str().starts_with("node-"));
    }
}
