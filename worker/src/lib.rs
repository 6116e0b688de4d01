//! The clustersync data plane: everything that reads from or writes to MongoDB.
//!
//! A worker claims tasks from the coordination store and runs them; every durable progress
//! record it writes is fenced on its claim (see [`context`]).
//!
//! # Layout
//!
//! - [`error`]: the worker error type and the classification of MongoDB errors.
//! - [`mongo`]: connections to both clusters, URI redaction, retry with backoff.
//! - [`settings`]: data-plane tunables.
//! - [`context`]: what an executor gets — clusters, fenced checkpoint writer, state, cancellation.
//! - [`cdc`]: change streams — spool during the copy, apply in parallel by document, DDL barriers.
//! - [`runtime`]: the worker process loop — claim tasks, run them, settle their claims.
//! - [`bson_order`]: MongoDB's order of BSON values and the `_id` type brackets.
//! - [`partition`]: collection statistics and the `_id` ranges a collection is copied in,
//!   type bracket by type bracket.
//! - [`schema`]: destination collections and indexes — relaxed during the sync, restored at
//!   commit — the change-stream DDL appliers, and write blocking.
//! - [`copy`]: the copy executor (raw, batched, checkpointed, resumable) and whole-collection
//!   re-copies.
//! - [`verify`]: constant-memory range verification and index/option verification.

pub mod bson_order;
pub mod cdc;
pub mod context;
pub mod copy;
pub mod error;
pub mod mongo;
pub mod partition;
pub mod runtime;
pub mod schema;
pub mod settings;
pub mod verify;
