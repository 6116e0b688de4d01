//! `fake-mongod`: an in-memory MongoDB-compatible server speaking the real wire protocol,
//! answering as the primary of a one-member MongoDB 7.0 replica set. Every MongoDB-facing
//! test of clustersync runs against it.
//!
//! Module map:
//! - [`wire`]: message framing, OP_MSG / OP_QUERY / OP_REPLY / OP_COMPRESSED, CRC-32C,
//!   zlib and snappy, and a raw BSON writer for replies.
//! - [`bson_order`]: MongoDB's BSON comparison order and value helpers.
//! - [`storage`]: databases, collections (raw documents keyed by `_id`), indexes with
//!   unique enforcement, capped collections, views.
//! - [`keyset`]: ranges of `_id` keys the planner walks instead of whole collections.
//! - [`query`]: the filter matcher (query operators, array / dotted path semantics).
//! - [`update`]: update operators, pipeline updates, and change stream `updateDescription`.
//! - [`projection`]: find projections and `$project`.
//! - [`aggregate`]: pipeline stages and expression operators.
//! - [`oplog`]: optimes and the bounded oplog.
//! - [`change_stream`]: change stream events, resume tokens, invalidation, history loss.
//! - [`session`]: sessions, retryable-write results, transaction state.
//! - [`snapshot`]: point-in-time collection views for snapshot reads.
//! - [`failpoint`]: `configureFailPoint` (`failCommand`, `failGetMoreAfterCursorCheckout`).
//! - [`commands`]: dispatch by command name (admin, DDL, CRUD, cursors, transactions).
//! - [`ttl`]: the TTL monitor (expired documents become replicated deletes).
//! - [`server`]: listener, connections, fault controls and the [`FakeMongod`] handle.
//! - [`error`]: errors with MongoDB codes, code names and labels.

pub mod aggregate;
pub mod bson_order;
pub mod change_stream;
pub mod commands;
pub mod error;
pub mod failpoint;
pub mod keyset;
pub mod oplog;
pub mod projection;
pub mod query;
pub mod server;
pub mod session;
pub mod snapshot;
pub mod storage;
pub mod ttl;
pub mod update;
pub mod wire;

pub use error::{Error, Result};
pub use server::{FakeMongod, ServerOptions};
