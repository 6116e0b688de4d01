//! The clustersync control plane and the `clustersync` binary's building blocks.
//!
//! # Layout
//!
//! - [`cli`]: the command line (mongosync's flag names, the `coordinator` / `worker`
//!   subcommands) and the verifier disclaimer prompt.
//! - [`config`]: flags, `CLUSTERSYNC_*` environment variables and the `--config` YAML file,
//!   merged (flag > env > file > default) and validated.
//! - [`logging`]: stderr and JSON-file logging at mongosync's verbosity levels.
//! - [`topology`]: what each cluster is (replica set, sharded, standalone) and its version.
//! - [`control`]: start, pause, resume, commit, reverse — compare-and-swap transitions of the
//!   state document, shared by the REST and gRPC APIs — and the error names of the API.
//! - [`progress`]: the `/progress` report, aggregated from the store over the whole fleet.
//! - [`api`]: the mongosync-compatible REST API over [`control::Control`].
//! - [`grpc`]: the gRPC control API (`clustersync.v1.Control`) over the same [`control::Control`].
//! - [`ctl`]: `clustersync ctl`, the command-line client of the gRPC API.
//! - [`leader`]: the elected coordinator — setup, planning, copy completion, commit, failure.
//! - [`node`]: one process with its roles (coordinator, worker, or both).

pub mod api;
pub mod cli;
pub mod config;
pub mod control;
pub mod ctl;
pub mod grpc;
pub mod leader;
pub mod logging;
pub mod node;
pub mod progress;
pub mod topology;
