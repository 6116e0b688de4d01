//! Shared pieces of clustersync, used by both the coordinator and the workers.
//!
//! # Layout
//!
//! - [`ids`]: newtype identifiers (migration, instance, task, collection, shard).
//! - [`keys`]: the one catalogue of coordination-store keys, under a validated root prefix.
//! - [`model`]: the values stored under those keys — state document, plan, tasks, checkpoints,
//!   progress — and the `/start` options. The whole coordinator/worker contract.
//! - [`namespace`]: namespaces and the include/exclude filters.
//! - [`extjson`]: lossless BSON inside JSON values; operation times.
//! - [`time_constants`]: every lease and timing interval, derived from the lease TTL.
//! - [`store`]: the coordination-store trait, with the embedded (single process, durable) and
//!   etcd implementations.
//! - [`lease`], [`claim`], [`election`]: keepalive with self-fencing, fenced task claims and
//!   leader election, written once over the store trait.
//! - [`error`]: the store error type.
//! - [`state_watch`]: a local, always-current copy of one store value (the state document).

pub mod extjson;
pub mod ids;
pub mod keys;
pub mod model;
pub mod namespace;
pub mod state_watch;
pub mod time_constants;

// Coordination store layer.
pub mod claim;
pub mod election;
pub mod error;
pub mod lease;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
